//! Filesystem helpers of the store: staging directories, canonical files, removal of
//! read-only trees and in-place canonicalisation. Does I/O.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Timespec, Timestamps};

use super::{Result, StoreError};

/// The mtime of every store file: 1 second after the epoch, as Nix sets it.
pub const CANONICAL_MTIME: i64 = 1;

fn canonical_times() -> Timestamps {
    let t = Timespec {
        tv_sec: CANONICAL_MTIME,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Sets the mtime (and atime) of an open file to the canonical time.
pub fn set_canonical_time_fd(file: &File, path: &Path) -> Result<()> {
    rustix::fs::futimens(file, &canonical_times()).map_err(|e| StoreError::Io {
        action: "set the mtime of",
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// Sets the mtime of `path` without following a final symlink.
pub fn set_canonical_time(path: &Path) -> Result<()> {
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &canonical_times(),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| StoreError::Io {
        action: "set the mtime of",
        path: path.to_path_buf(),
        source: e.into(),
    })
}

/// The canonical mode of a regular file: 0555 if the owner may execute it, else 0444.
pub fn canonical_file_mode(executable: bool) -> u32 {
    if executable {
        0o555
    } else {
        0o444
    }
}

/// Creates a new file at `path` with canonical mode; the caller writes to it and then
/// calls [`set_canonical_time_fd`].
pub fn create_canonical_file(path: &Path, executable: bool) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(canonical_file_mode(executable))
        .open(path)
        .map_err(StoreError::io("create", path))
}

/// Writes a complete canonical file.
pub fn write_canonical_file(path: &Path, contents: &[u8], executable: bool) -> Result<()> {
    let mut f = create_canonical_file(path, executable)?;
    f.write_all(contents)
        .map_err(StoreError::io("write", path))?;
    // The creation mode is masked by the umask; set it exactly.
    f.set_permissions(fs::Permissions::from_mode(canonical_file_mode(executable)))
        .map_err(StoreError::io("chmod", path))?;
    set_canonical_time_fd(&f, path)
}

/// Appends `content` to `path` (created if missing) in one `write` to a file opened
/// `O_APPEND`: what other processes append lands before or after it, never inside. The
/// logs of the store's metadata (build history, `why-rebuild`'s records) are written so.
/// Returns the file's length after it, from the open file.
pub fn append_whole(path: &Path, content: &[u8]) -> std::io::Result<u64> {
    let mut f = OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(content)?;
    Ok(f.metadata()?.len())
}

/// How a compacted log's first line starts: the length the compaction left follows. It is
/// not a record, and the readers of the logs skip it as they skip any line they cannot parse.
const COMPACTED: &[u8] = b"# compacted to ";

/// Appends `content` to the log `path` ([`append_whole`]) and compacts it when it has
/// grown past `threshold` and to more than twice the length its last compaction left:
/// the log is then replaced (atomically) with `compact` of its text, headed by a line
/// giving that length. A log whose live records alone pass the threshold (a store with more
/// distinct builds than the threshold holds) is so compacted each time it doubles, not
/// rewritten whole on every append. A record another process appends between the read and
/// the rename is lost: the logs hold estimates and explanations, never a build's input.
pub fn append_to_log(
    path: &Path,
    content: &[u8],
    threshold: u64,
    compact: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Result<()> {
    let length = append_whole(path, content).map_err(StoreError::io("append to", path))?;
    if length <= threshold || length <= 2 * compacted_length(path) {
        return Ok(());
    }
    let text = fs::read(path).map_err(StoreError::io("read", path))?;
    let body = compact(&text);
    let mut out = COMPACTED.to_vec();
    out.extend_from_slice(format!("{}\n", body.len()).as_bytes());
    out.extend_from_slice(&body);
    write_atomic(path, &out)
}

/// The length the last compaction of the log `path` left (0 if none is recorded): from
/// its first line, reading no more of it.
fn compacted_length(path: &Path) -> u64 {
    let mut head = [0u8; 64];
    let read = fs::File::open(path).and_then(|mut f| std::io::Read::read(&mut f, &mut head));
    let head = &head[..read.unwrap_or(0)];
    head.strip_prefix(COMPACTED)
        .and_then(|rest| rest.split(|b| *b == b'\n').next())
        .and_then(|n| std::str::from_utf8(n).ok()?.parse().ok())
        .unwrap_or(0)
}

/// Replaces `path` with `content` atomically: a uniquely named temporary file beside it
/// (so concurrent writers, in this process or others, never share one), renamed over it.
/// The file gets mode 0644.
pub fn write_atomic(path: &Path, content: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(StoreError::io("create a file in", dir))?;
    tmp.write_all(content)
        .map_err(StoreError::io("write", path))?;
    tmp.persist(path).map_err(|e| StoreError::Io {
        action: "write",
        path: path.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// Finishes a directory whose children are complete: mode 0555, canonical mtime.
pub fn seal_directory(path: &Path) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(0o555))
        .map_err(StoreError::io("chmod", path))?;
    set_canonical_time(path)
}

/// Moves a canonical file or tree `from` to `to` (same filesystem), keeping it canonical.
///
/// Moving a directory to another parent rewrites its `..` entry, which needs write
/// permission on the directory itself; a sealed (0555) tree therefore cannot be moved by
/// its owner unless it is opened up for the rename and sealed again after it. (Root's
/// `CAP_DAC_OVERRIDE` hides this; an ordinary user meets `EACCES`.)
pub fn move_sealed(from: &Path, to: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(from).map_err(StoreError::io("inspect", from))?;
    let open_up = meta.is_dir() && meta.mode() & 0o200 == 0;
    if open_up {
        fs::set_permissions(from, fs::Permissions::from_mode(0o755))
            .map_err(StoreError::io("chmod", from))?;
    }
    fs::rename(from, to).map_err(StoreError::io("move into the store", to))?;
    if open_up {
        seal_directory(to)?;
    }
    Ok(())
}

/// Removes a tree even if its directories are read-only (as store paths are).
pub fn remove_tree(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(StoreError::Io {
                action: "inspect",
                path: path.to_path_buf(),
                source: e,
            })
        }
    };
    if meta.is_dir() {
        if meta.mode() & 0o700 != 0o700 {
            fs::set_permissions(path, fs::Permissions::from_mode(0o755))
                .map_err(StoreError::io("chmod", path))?;
        }
        for entry in fs::read_dir(path).map_err(StoreError::io("list", path))? {
            let entry = entry.map_err(StoreError::io("list", path))?;
            remove_tree(&entry.path())?;
        }
        fs::remove_dir(path).map_err(StoreError::io("remove", path))
    } else {
        fs::remove_file(path).map_err(StoreError::io("remove", path))
    }
}

/// A staging directory for a path being added, removed on drop. It is created inside the
/// store's `tmp/`, on the same filesystem as the store, so the finished tree can be
/// renamed into place. One made by [`Store::staging`](super::Store::staging) also holds
/// the store's GC lock shared, so that no other process sweeps it away as a leftover.
pub struct Staging {
    dir: PathBuf,
    // Dropped after `drop` has removed the directory.
    _gc: Option<super::GcShared>,
}

impl Staging {
    /// Creates a fresh staging directory under `tmp`.
    pub fn new(tmp: &Path) -> Result<Staging> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("stage-{}-", std::process::id()))
            .tempdir_in(tmp)
            .map_err(StoreError::io("create a staging directory in", tmp))?
            .keep();
        Ok(Staging { dir, _gc: None })
    }

    /// Creates a fresh staging directory under `tmp`, kept safe from sweeps by `gc`.
    pub fn locked(tmp: &Path, gc: super::GcShared) -> Result<Staging> {
        let mut staging = Staging::new(tmp)?;
        staging._gc = Some(gc);
        Ok(staging)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Best effort: a failure leaves garbage that the next idle open sweeps away.
        let _ = remove_tree(&self.dir);
    }
}

/// Kind of a file, in words, for errors about unsupported types.
pub fn kind_of(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// Canonicalises a tree in place, as build outputs are before registration: regular files
/// become 0444 or 0555 (by the owner-x bit), directories 0555, no setuid/setgid/sticky
/// bits, no extended attributes, mtime 1, owned by the store's owner. Anything but regular files, directories and
/// symlinks is refused, naming the file.
pub fn canonicalise_in_place(path: &Path) -> Result<()> {
    let meta = fs::symlink_metadata(path).map_err(StoreError::io("inspect", path))?;
    let t = meta.file_type();
    // Builds run as a separate build user when ksbuild is root: give the files to the
    // store's owner, as Nix does (a non-root ksbuild's builds already write as itself).
    let (uid, gid) = (rustix::process::geteuid(), rustix::process::getegid());
    if meta.uid() != uid.as_raw() || meta.gid() != gid.as_raw() {
        rustix::fs::chownat(
            rustix::fs::CWD,
            path,
            Some(uid),
            Some(gid),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| StoreError::Io {
            action: "change the owner of",
            path: path.to_path_buf(),
            source: e.into(),
        })?;
    }
    if t.is_symlink() {
        return set_canonical_time(path);
    }
    if !t.is_file() && !t.is_dir() {
        return Err(StoreError::UnsupportedFileType {
            path: path.to_path_buf(),
            kind: kind_of(&meta),
        });
    }
    remove_xattrs(path)?;
    if t.is_dir() {
        // Make sure we can descend and modify children, then seal after them.
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .map_err(StoreError::io("chmod", path))?;
        for entry in fs::read_dir(path).map_err(StoreError::io("list", path))? {
            let entry = entry.map_err(StoreError::io("list", path))?;
            canonicalise_in_place(&entry.path())?;
        }
        seal_directory(path)
    } else {
        let mode = canonical_file_mode(meta.mode() & 0o100 != 0);
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(StoreError::io("chmod", path))?;
        set_canonical_time(path)
    }
}

/// Removes every extended attribute of `path` (not following symlinks).
fn remove_xattrs(path: &Path) -> Result<()> {
    let err = |action, e: rustix::io::Errno| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source: e.into(),
    };
    let mut buf = vec![0u8; 4096];
    let len = match rustix::fs::llistxattr(path, &mut buf) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(()),
        Err(rustix::io::Errno::RANGE) => {
            buf.resize(65536, 0);
            rustix::fs::llistxattr(path, &mut buf)
                .map_err(|e| err("list the extended attributes of", e))?
        }
        Err(e) => return Err(err("list the extended attributes of", e)),
    };
    for name in buf[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name = std::ffi::OsStr::from_bytes(name);
        rustix::fs::lremovexattr(path, name)
            .map_err(|e| err("remove an extended attribute of", e))?;
    }
    Ok(())
}

/// The bytes a tree occupies on disk (allocated blocks, not following symlinks); 0 if it
/// is gone. For messages about space.
pub fn disk_usage(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .follow_links(false)
        .into_iter()
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// Whether `error` or one of its sources is "no space left on device" (`ENOSPC`) or "disk
/// quota exceeded" (`EDQUOT`).
pub fn is_out_of_space(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut e: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cur) = e {
        if let Some(io) = cur.downcast_ref::<std::io::Error>() {
            if matches!(
                io.raw_os_error(),
                Some(nix::libc::ENOSPC | nix::libc::EDQUOT)
            ) {
                return true;
            }
        }
        e = cur.source();
    }
    false
}

/// A filesystem that holds `path`, for messages about space: its mount point, type, size
/// and what an unprivileged writer may still use.
#[derive(Debug, Clone)]
pub struct FilesystemSpace {
    /// The mount point (the highest ancestor of `path` on the same device).
    pub mount_point: PathBuf,
    /// The filesystem type (`ext4`, `tmpfs`, …; hex magic if unknown).
    pub kind: String,
    /// Total size in bytes.
    pub size: u64,
    /// Bytes available to an unprivileged writer.
    pub available: u64,
}

impl FilesystemSpace {
    /// Reads the filesystem holding `path` (or its nearest existing ancestor).
    pub fn of(path: &Path) -> Option<FilesystemSpace> {
        let mut at = path.to_path_buf();
        while fs::symlink_metadata(&at).is_err() {
            at = at.parent()?.to_path_buf();
        }
        let at = fs::canonicalize(&at).ok()?;
        let dev = fs::metadata(&at).ok()?.dev();
        let mut mount_point = at.clone();
        while let Some(parent) = mount_point.parent() {
            match fs::metadata(parent) {
                Ok(m) if m.dev() == dev => mount_point = parent.to_path_buf(),
                _ => break,
            }
        }
        let vfs = rustix::fs::statvfs(&at).ok()?;
        let kind = rustix::fs::statfs(&at)
            .map(|s| filesystem_name(s.f_type))
            .unwrap_or_else(|_| "filesystem".into());
        Some(FilesystemSpace {
            mount_point,
            kind,
            size: vfs.f_blocks * vfs.f_frsize,
            available: vfs.f_bavail * vfs.f_frsize,
        })
    }

    /// Whether it is full, or nearly (less than 1 MiB or 0.1% left).
    pub fn is_full(&self) -> bool {
        self.available < (1 << 20).max(self.size / 1000)
    }

    /// "no space left on `/mnt` (tmpfs of 20.0 MB, 0.0 MB free; needed ~30.0 MB)", with
    /// `detail` ("needed ~30.0 MB") after the figures.
    pub fn no_space_left(&self, detail: Option<String>) -> String {
        let mb = |b: u64| b as f64 / 1e6;
        let needed = detail.map(|d| format!("; {d}")).unwrap_or_default();
        format!(
            "no space left on `{}` ({} of {:.1} MB, {:.1} MB free{needed})",
            self.mount_point.display(),
            self.kind,
            mb(self.size),
            mb(self.available)
        )
    }
}

/// Megabytes, for messages: "30.0 MB".
pub fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The name of a filesystem type from its `statfs` magic number.
fn filesystem_name(magic: i64) -> String {
    match magic {
        0xEF53 => "ext4",
        0x0102_1994 => "tmpfs",
        0x5846_5342 => "xfs",
        0x9123_683E => "btrfs",
        0x794C_7630 => "overlayfs",
        0x2FC1_2FC1 => "zfs",
        0x6969 => "nfs",
        0xF2F5_2010 => "f2fs",
        _ => return format!("filesystem 0x{magic:x}"),
    }
    .to_string()
}

/// The size of the blocks that [`write_sparse`] leaves as holes when they hold only zeros
/// (a file system block).
pub const HOLE_BLOCK: usize = 4096;

/// Writes `data` at `offset` of `file`, leaving each block-aligned run of zeros as a hole;
/// returns the bytes written. A NAR has no holes: a disk image restored from a binary cache
/// would otherwise take all its 4 GiB on disk instead of the tens of MiB it took where it
/// was built (and `ksbuild vm`'s copy of an image stored without holes gets them).
pub fn write_sparse(file: &std::fs::File, data: &[u8], offset: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let is_zero = |b: &[u8]| b.iter().fold(0u8, |acc, &x| acc | x) == 0;
    let mut run_start = None;
    let mut written = 0;
    for (i, block) in data.chunks(HOLE_BLOCK).enumerate() {
        let at = i * HOLE_BLOCK;
        match (is_zero(block), run_start) {
            (false, None) => run_start = Some(at),
            (true, Some(start)) => {
                file.write_all_at(&data[start..at], offset + start as u64)?;
                written += (at - start) as u64;
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run_start {
        file.write_all_at(&data[start..], offset + start as u64)?;
        written += (data.len() - start) as u64;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_is_compacted_past_the_threshold_and_then_only_when_it_has_doubled() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let compactions = std::cell::Cell::new(0);
        // Every record is live (distinct keys): compaction keeps them all, as a store with
        // more distinct builds than the threshold holds would.
        let keep_records = |text: &[u8]| {
            compactions.set(compactions.get() + 1);
            text.split_inclusive(|b| *b == b'\n')
                .filter(|l| !l.starts_with(COMPACTED))
                .flatten()
                .copied()
                .collect::<Vec<u8>>()
        };
        let record = |i: usize| format!("record {i:04}\n");
        for i in 0..10 {
            append_to_log(&log, record(i).as_bytes(), 100, keep_records).unwrap();
        }
        // 10 records of 12 bytes: the 9th passed 100 bytes and was compacted.
        assert_eq!(compactions.get(), 1);
        for i in 10..200 {
            append_to_log(&log, record(i).as_bytes(), 100, keep_records).unwrap();
        }
        // Each compaction leaves n records and a header; the next comes when the log is
        // twice that: at 9, 17, 33, 65 and 129 records (on every append past 100 bytes,
        // 191 times, if it were only by the threshold).
        assert_eq!(compactions.get(), 5);
        let text = String::from_utf8(std::fs::read(&log).unwrap()).unwrap();
        let (header, body) = text.split_once('\n').unwrap();
        assert_eq!(body.lines().count() + 1, text.lines().count());
        assert!(header.starts_with("# compacted to "), "{header}");
        assert_eq!(
            body.lines().collect::<Vec<_>>(),
            (0..200)
                .map(|i| format!("record {i:04}"))
                .collect::<Vec<_>>()
        );
        // A log that compaction shrinks stays below the threshold's order.
        let small = dir.path().join("small");
        for i in 0..200 {
            append_to_log(&small, record(i % 3).as_bytes(), 100, |text: &[u8]| {
                let mut last: Vec<&[u8]> = Vec::new();
                for l in text.split_inclusive(|b| *b == b'\n') {
                    if !l.starts_with(COMPACTED) && !last.contains(&l) {
                        last.push(l);
                    }
                }
                last.concat()
            })
            .unwrap();
        }
        assert!(std::fs::metadata(&small).unwrap().len() <= 100 + 12);
    }
}
