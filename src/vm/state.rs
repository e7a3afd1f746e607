//! The folder a VM keeps its state in between runs (`--dir`), or a temporary one removed
//! afterwards: the writable sparse copy of the image (data partition, A/B state), the
//! ISO's data disk, and what each was copied from. Does I/O.
//!
//! A copy, not a `qemu-img` overlay: the images are 4 GiB but sparse (tens of MB of data),
//! so a copy that keeps the holes costs about as little as an overlay, needs no
//! `qemu-utils`, and stays a raw image that ksbuild (and mtools, debugfs) can read and
//! write — the A/B slot is chosen by rewriting its grubenv in place — and that no rebuild
//! of the store path can invalidate.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{io, Result, VmError};

/// The file recording what the image copy was made from (one line: the store path of the
/// image file).
pub const ORIGIN: &str = "image.origin";
/// The file recording what the data disk was made from.
const DATA_ORIGIN: &str = "data.origin";
/// The ISO's data disk.
const DATA_DISK: &str = "data.img";
/// The names image copies have (the images' own file names).
const IMAGE_NAMES: [&str; 2] = ["disk.img", "sdcard.img"];
/// Held (`flock`) while a VM uses the folder.
const LOCK: &str = ".ksbuild-vm.lock";

/// A VM's folder, locked for this process.
pub struct StateDir {
    path: PathBuf,
    _lock: File,
    /// Set for a temporary folder: removed when dropped.
    temporary: Option<tempfile::TempDir>,
}

impl StateDir {
    /// `dir` (created if missing), or a new temporary folder when `None`; locked against
    /// another `ksbuild vm`.
    pub fn open(dir: Option<&Path>) -> Result<StateDir> {
        let (path, temporary) = match dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(io("create", d))?;
                (d.to_path_buf(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("ksbuild-vm-")
                    .tempdir()
                    .map_err(io("create", &std::env::temp_dir()))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let lock_path = path.join(LOCK);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("create", &lock_path))?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(VmError::Busy { dir: path }),
            Err(e) => return Err(io("lock", &lock_path)(e.into())),
        }
        Ok(StateDir {
            path,
            _lock: lock,
            temporary,
        })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it is a temporary folder (removed when this is dropped).
    pub fn is_temporary(&self) -> bool {
        self.temporary.is_some()
    }

    /// Removes the copies this command made in the folder (image, data disk, their
    /// records); anything else in it is left alone.
    pub fn clear(&self) -> Result<()> {
        for name in IMAGE_NAMES.iter().chain(&[ORIGIN, DATA_DISK, DATA_ORIGIN]) {
            let p = self.path.join(name);
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(io("remove", &p)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// The writable copy of the image `source` (whose store path is `origin`): made on
    /// first use, kept afterwards. An error, leaving it alone, if the folder holds a copy
    /// of anything else. Returns the copy and whether it was made now.
    pub fn image_copy(&self, source: &Path, origin: &str) -> Result<(PathBuf, bool)> {
        let name = source.file_name().unwrap_or_default();
        let copy = self.path.join(name);
        let record = self.path.join(ORIGIN);
        let held = match std::fs::read_to_string(&record) {
            Ok(held) => Some(held.trim().to_string()),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(io("read", &record)(e)),
        };
        let existing = IMAGE_NAMES
            .iter()
            .map(|n| self.path.join(n))
            .find(|p| p.exists());
        match (existing, held) {
            // No copy yet (or only the record of one interrupted).
            (None, _) => {}
            (Some(file), None) => {
                return Err(VmError::Unrecorded {
                    dir: self.path.clone(),
                    file,
                })
            }
            (Some(file), Some(held)) if file == copy && held == origin => return Ok((copy, false)),
            (Some(_), Some(held)) => {
                return Err(VmError::HoldsAnother {
                    dir: self.path.clone(),
                    held,
                    wanted: origin.to_string(),
                })
            }
        }
        // The record first, then the copy under its name: a copy interrupted midway is
        // never taken for a whole one, and its record names what it will be.
        write_atomically(&record, format!("{origin}\n").as_bytes())?;
        copy_into(source, &copy)?;
        Ok((copy, true))
    }

    /// The data disk: a copy of `source` (whose store path is `origin`) made on first use,
    /// and kept whatever `source` is later (it is the user's data).
    pub fn data_disk(&self, source: &Path, origin: &str) -> Result<(PathBuf, bool)> {
        let disk = self.path.join(DATA_DISK);
        if disk.is_file() {
            return Ok((disk, false));
        }
        write_atomically(
            &self.path.join(DATA_ORIGIN),
            format!("{origin}\n").as_bytes(),
        )?;
        copy_into(source, &disk)?;
        Ok((disk, true))
    }
}

/// Writes `bytes` to `path` through a temporary file renamed over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("write", path))
}

/// Copies `source` to `target` (through `target.partial`, renamed when complete).
fn copy_into(source: &Path, target: &Path) -> Result<()> {
    let partial = target.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    copy_sparse(source, &partial)?;
    std::fs::rename(&partial, target).map_err(io("write", target))
}

/// The block whose zeroes are left as holes.
const BLOCK: usize = 64 << 10;

/// Copies the file `source` to the new file `target` (mode 0644), sparse: a reflink
/// (`FICLONE`) where the filesystem shares blocks; otherwise only the data regions
/// (`lseek(SEEK_DATA/SEEK_HOLE)`) are read, and blocks of zeroes in them are not written
/// either, so an image stored without holes gets them. Returns the bytes written.
pub fn copy_sparse(source: &Path, target: &Path) -> Result<u64> {
    let from = File::open(source).map_err(io("read", source))?;
    let len = from.metadata().map_err(io("read", source))?.len();
    let to = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(target)
        .map_err(io("create", target))?;
    if rustix::fs::ioctl_ficlone(&to, &from).is_ok() {
        return Ok(0);
    }
    let mut written = 0u64;
    let mut buf = vec![0u8; 16 * BLOCK];
    let mut at = 0u64;
    while at < len {
        let data = match rustix::fs::seek(&from, rustix::fs::SeekFrom::Data(at as i64)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            // No SEEK_DATA here: all of it is data.
            Err(_) => at,
        };
        let hole = match rustix::fs::seek(&from, rustix::fs::SeekFrom::Hole(data as i64)) {
            Ok(h) => h,
            Err(_) => len,
        };
        let mut pos = data;
        while pos < hole {
            let n = ((hole - pos) as usize).min(buf.len());
            from.read_exact_at(&mut buf[..n], pos)
                .map_err(io("read", source))?;
            written +=
                crate::store::write_sparse(&to, &buf[..n], pos).map_err(io("write", target))?;
            pos += n as u64;
        }
        at = hole.max(at + 1);
    }
    to.set_len(len).map_err(io("write", target))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_copy_keeps_the_bytes_and_makes_holes_of_zeroes() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src.img");
        let f = File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        f.write_all_at(b"head", 0).unwrap();
        // Written zeroes (no hole in the source) and data far apart.
        f.write_all_at(&vec![0u8; 4 << 20], 8 << 20).unwrap();
        f.write_all_at(b"tail", (64 << 20) - 4).unwrap();
        drop(f);
        let dst = tmp.path().join("dst.img");
        let written = copy_sparse(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&src).unwrap(), std::fs::read(&dst).unwrap());
        // Reflinked (0), or the two data blocks written, not the zeroes.
        assert!(written <= 2 * BLOCK as u64, "{written}");
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&dst).unwrap();
        assert_eq!(m.mode() & 0o777, 0o644);
        assert!(m.blocks() * 512 < 1 << 20, "{} blocks", m.blocks());
        assert!(
            copy_sparse(&src, &dst).is_err(),
            "an existing target is kept"
        );
    }

    #[test]
    fn a_folder_keeps_its_copy_and_refuses_another_image() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        for (d, byte) in [(&a, b'a'), (&b, b'b')] {
            std::fs::create_dir(d).unwrap();
            std::fs::write(d.join("disk.img"), [byte; 10]).unwrap();
        }
        let dir = tmp.path().join("vm");
        let state = StateDir::open(Some(&dir)).unwrap();
        assert!(matches!(
            StateDir::open(Some(&dir)),
            Err(VmError::Busy { .. })
        ));
        let (copy, made) = state
            .image_copy(&a.join("disk.img"), "/nix/store/a/disk.img")
            .unwrap();
        assert!(made);
        std::fs::write(&copy, b"changed").unwrap();
        let (copy, made) = state
            .image_copy(&a.join("disk.img"), "/nix/store/a/disk.img")
            .unwrap();
        assert!(!made);
        assert_eq!(std::fs::read(&copy).unwrap(), b"changed");
        let e = state
            .image_copy(&b.join("disk.img"), "/nix/store/b/disk.img")
            .unwrap_err();
        assert!(
            matches!(&e, VmError::HoldsAnother { held, .. } if held == "/nix/store/a/disk.img"),
            "{e}"
        );
        assert_eq!(std::fs::read(&copy).unwrap(), b"changed");
        state.clear().unwrap();
        let (copy, made) = state
            .image_copy(&b.join("disk.img"), "/nix/store/b/disk.img")
            .unwrap();
        assert!(made);
        assert_eq!(std::fs::read(&copy).unwrap(), [b'b'; 10]);
        drop(state);
        // A temporary folder goes with its handle.
        let temp = StateDir::open(None).unwrap();
        let path = temp.path().to_path_buf();
        assert!(temp.is_temporary() && path.is_dir());
        drop(temp);
        assert!(!path.exists());
    }
}
