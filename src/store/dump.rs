//! Between filesystem trees and NARs: dumping a tree as a NAR (optionally copying it
//! canonically at the same time — the one traversal of `store add`), NAR and flat hashes
//! of files, and restoring a NAR onto the filesystem. Does I/O.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::fsutil::{
    self, create_canonical_file, kind_of, seal_directory, set_canonical_time, set_canonical_time_fd,
};
use super::pipe::DigestPipe;
use super::{Result, StoreError};
use crate::compat::hash::Hasher;
use crate::compat::nar::{NarError, NarSink, NarWriter};
use crate::compat::{Hash, HashAlgo};

const READ_BUF: usize = 256 * 1024;

fn nar_err(path: &Path) -> impl FnOnce(NarError) -> StoreError + '_ {
    move |source| match source {
        NarError::Io(e) => StoreError::Io {
            action: "serialise",
            path: path.to_path_buf(),
            source: e,
        },
        source => StoreError::Nar {
            path: path.to_path_buf(),
            source,
        },
    }
}

/// One walk over a source tree that feeds a NAR writer and optionally builds a canonical
/// copy and a flat hash.
struct Walker<'a, W: Write> {
    nar: NarWriter<W>,
    flat: Option<&'a mut Hasher>,
    buf: Vec<u8>,
}

impl<W: Write> Walker<'_, W> {
    fn node(&mut self, src: &Path, copy: Option<&Path>) -> Result<()> {
        let meta = fs::symlink_metadata(src).map_err(StoreError::io("read", src))?;
        let t = meta.file_type();
        if t.is_symlink() {
            let target = fs::read_link(src).map_err(StoreError::io("read the symlink", src))?;
            self.nar
                .symlink(target.as_os_str().as_bytes())
                .map_err(nar_err(src))?;
            if let Some(dst) = copy {
                std::os::unix::fs::symlink(&target, dst)
                    .map_err(StoreError::io("create the symlink", dst))?;
                set_canonical_time(dst)?;
            }
        } else if t.is_file() {
            self.file(src, &meta, copy)?;
        } else if t.is_dir() {
            self.nar.directory().map_err(nar_err(src))?;
            if let Some(dst) = copy {
                fs::create_dir(dst).map_err(StoreError::io("create", dst))?;
            }
            let mut names: Vec<_> = fs::read_dir(src)
                .map_err(StoreError::io("list", src))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<io::Result<_>>()
                .map_err(StoreError::io("list", src))?;
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            for name in names {
                self.nar.entry(name.as_bytes()).map_err(nar_err(src))?;
                let child_dst = copy.map(|d| d.join(&name));
                self.node(&src.join(&name), child_dst.as_deref())?;
            }
            self.nar.end_directory().map_err(nar_err(src))?;
            if let Some(dst) = copy {
                seal_directory(dst)?;
            }
        } else {
            return Err(StoreError::UnsupportedFileType {
                path: src.to_path_buf(),
                kind: kind_of(&meta),
            });
        }
        Ok(())
    }

    fn file(&mut self, src: &Path, meta: &fs::Metadata, copy: Option<&Path>) -> Result<()> {
        let executable = meta.mode() & 0o100 != 0;
        let size = meta.len();
        let mut input = File::open(src).map_err(StoreError::io("open", src))?;
        let mut output = copy
            .map(|d| create_canonical_file(d, executable).map(|f| (f, d)))
            .transpose()?;
        self.nar.regular(executable, size).map_err(nar_err(src))?;
        let mut done = 0u64;
        let mut sparse_tail = false;
        // Holes of sparse files (disk images) are fed as zeros without reading them.
        // (Asking moves the file offset: it is set back to the next data each time.)
        let mut data_at = next_data(&input, 0, size);
        let mut hole_at = next_hole(&input, data_at, size);
        input
            .seek(SeekFrom::Start(data_at))
            .map_err(StoreError::io("read", src))?;
        while done < size {
            if done < data_at {
                let n = READ_BUF.min((data_at - done) as usize);
                let zeros = &ZEROS[..n];
                self.nar.contents(zeros).map_err(nar_err(src))?;
                if let Some(h) = self.flat.as_deref_mut() {
                    h.update(zeros);
                }
                if let Some((out, dst)) = output.as_mut() {
                    out.seek(SeekFrom::Current(n as i64))
                        .map_err(StoreError::io("write", *dst))?;
                    sparse_tail = true;
                }
                done += n as u64;
                continue;
            }
            if done >= hole_at {
                data_at = next_data(&input, done, size);
                hole_at = next_hole(&input, data_at, size);
                input
                    .seek(SeekFrom::Start(data_at))
                    .map_err(StoreError::io("read", src))?;
                continue;
            }
            let want = READ_BUF
                .min((size - done) as usize)
                .min((hole_at - done) as usize);
            let n = match input.read(&mut self.buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(StoreError::Io {
                        action: "read",
                        path: src.to_path_buf(),
                        source: e,
                    })
                }
            };
            let chunk = &self.buf[..n];
            self.nar.contents(chunk).map_err(nar_err(src))?;
            if let Some(h) = self.flat.as_deref_mut() {
                h.update(chunk);
            }
            if let Some((out, dst)) = output.as_mut() {
                // Keep holes: a block of zeros becomes a seek, so sparse images stay sparse.
                if n == READ_BUF && is_zero(chunk) {
                    out.seek(SeekFrom::Current(n as i64))
                        .map_err(StoreError::io("write", *dst))?;
                    sparse_tail = true;
                } else {
                    out.write_all(chunk)
                        .map_err(StoreError::io("write", *dst))?;
                    sparse_tail = false;
                }
            }
            done += n as u64;
        }
        // A file that shrank is caught here; one that grew is read up to the size it had
        // (as Nix does), so the NAR is always self-consistent.
        if done != size {
            return Err(StoreError::Refused(format!(
                "`{}` changed size while it was being read; try again when nothing writes to it",
                src.display()
            )));
        }
        if let Some((out, dst)) = output {
            if sparse_tail {
                out.set_len(size).map_err(StoreError::io("write", dst))?;
            }
            out.set_permissions(fs::Permissions::from_mode(fsutil::canonical_file_mode(
                executable,
            )))
            .map_err(StoreError::io("chmod", dst))?;
            set_canonical_time_fd(&out, dst)?;
        }
        Ok(())
    }
}

static ZEROS: [u8; READ_BUF] = [0; READ_BUF];

/// The first offset at or after `from` that holds data (`size` if none: a trailing hole).
/// Where the filesystem cannot tell, everything is data.
fn next_data(file: &File, from: u64, size: u64) -> u64 {
    match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(from as i64)) {
        Ok(p) => p.min(size),
        Err(rustix::io::Errno::NXIO) => size,
        Err(_) => from,
    }
}

/// The first offset at or after `from` that is a hole (`size` if none).
fn next_hole(file: &File, from: u64, size: u64) -> u64 {
    if from >= size {
        return size;
    }
    match rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(from as i64)) {
        Ok(p) => p.min(size),
        Err(_) => size,
    }
}

fn is_zero(chunk: &[u8]) -> bool {
    let words = chunk.chunks_exact(8);
    let rest = words.remainder();
    rest.iter().all(|&b| b == 0)
        && words
            .map(|w| u64::from_ne_bytes(w.try_into().unwrap_or([1; 8])))
            .all(|w| w == 0)
}

/// Writes the NAR serialisation of the tree at `path` to `out`.
pub fn dump_path<W: Write>(path: &Path, out: W) -> Result<W> {
    let mut walker = Walker {
        nar: NarWriter::new(out).map_err(nar_err(path))?,
        flat: None,
        buf: vec![0; READ_BUF],
    };
    walker.node(path, None)?;
    walker.nar.finish().map_err(nar_err(path))
}

/// SHA-256 of the NAR serialisation of `path`, and the NAR's size (`nix hash path`).
pub fn nar_hash_path(path: &Path) -> Result<(Hash, u64)> {
    nar_hash_path_with(path, HashAlgo::Sha256).map(|(h, _, size)| (h, size))
}

/// The NAR of `path` hashed with `algo` (and SHA-256), plus its size.
pub fn nar_hash_path_with(path: &Path, algo: HashAlgo) -> Result<(Hash, Hash, u64)> {
    let other = (algo != HashAlgo::Sha256).then_some(algo);
    let pipe = dump_path(path, DigestPipe::new(other, &BTreeSet::new()))?;
    let d = pipe.finish().map_err(StoreError::io("hash", path))?;
    Ok((
        d.other.unwrap_or_else(|| d.sha256.clone()),
        d.sha256,
        d.size,
    ))
}

/// The SHA-256 NAR hash and the NAR size of a single non-executable regular file holding
/// `contents` (what [`nar_hash_path`] gives for such a file), without touching the disk.
pub fn nar_hash_regular(contents: &[u8]) -> (Hash, u64) {
    struct Counting {
        hasher: Hasher,
        size: u64,
    }
    impl Write for Counting {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.size += buf.len() as u64;
            self.hasher.write_all(buf)?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut counting = Counting {
        hasher: Hasher::new(HashAlgo::Sha256),
        size: 0,
    };
    // Writing to memory cannot fail, and the writer is used as its API requires.
    let written = NarWriter::new(&mut counting).and_then(|mut nar| {
        nar.regular(false, contents.len() as u64)?;
        nar.contents(contents)
    });
    debug_assert!(written.is_ok());
    (counting.hasher.finish(), counting.size)
}

/// Hash of the bytes of the regular file at `path` (`nix hash file`). The holes of a sparse
/// file (the 4 GiB images) are hashed as the zeros they read as, without reading them.
pub fn hash_file(path: &Path, algo: HashAlgo) -> Result<Hash> {
    let meta = fs::metadata(path).map_err(StoreError::io("read", path))?;
    if !meta.is_file() {
        return Err(StoreError::FlatNotRegular(path.to_path_buf()));
    }
    let f = File::open(path).map_err(StoreError::io("open", path))?;
    let mut h = Hasher::new(algo);
    hash_extents(&f, meta.len(), &mut h).map_err(StoreError::io("read", path))?;
    Ok(h.finish())
}

/// Feeds the `size` bytes of `f` to `h`: its data extents read, its holes as zeros.
fn hash_extents(f: &File, size: u64, h: &mut Hasher) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; READ_BUF];
    let mut at = 0u64;
    while at < size {
        let data = next_data(f, at, size);
        while at < data {
            let n = READ_BUF.min((data - at) as usize);
            h.write_all(&ZEROS[..n])?;
            at += n as u64;
        }
        let hole = next_hole(f, at, size);
        while at < hole {
            let want = READ_BUF.min((hole - at) as usize);
            let n = f.read_at(&mut buf[..want], at)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was hashed",
                ));
            }
            h.write_all(&buf[..n])?;
            at += n as u64;
        }
    }
    Ok(())
}

/// What one copying traversal computed.
#[derive(Debug, Clone)]
pub struct CopyDigests {
    /// SHA-256 of the NAR.
    pub nar_hash: Hash,
    /// NAR size.
    pub nar_size: u64,
    /// The NAR hashed with another algorithm, if asked.
    pub nar_other_hash: Option<Hash>,
    /// The flat hash of a single file, if asked.
    pub flat_hash: Option<Hash>,
}

/// Copies `source` to the new path `target` in canonical form while NAR-hashing it, and
/// optionally flat-hashing it (a regular file).
pub fn copy_and_hash(
    source: &Path,
    target: &Path,
    flat_algo: Option<HashAlgo>,
    nar_other_algo: Option<HashAlgo>,
) -> Result<CopyDigests> {
    let mut flat = flat_algo.map(Hasher::new);
    let pipe = DigestPipe::new(nar_other_algo, &BTreeSet::new());
    let mut walker = Walker {
        nar: NarWriter::new(pipe).map_err(nar_err(source))?,
        flat: flat.as_mut(),
        buf: vec![0; READ_BUF],
    };
    walker.node(source, Some(target))?;
    let pipe = walker.nar.finish().map_err(nar_err(source))?;
    let d = pipe.finish().map_err(StoreError::io("hash", source))?;
    Ok(CopyDigests {
        nar_hash: d.sha256,
        nar_size: d.size,
        nar_other_hash: d.other,
        flat_hash: flat.map(Hasher::finish),
    })
}

/// How restored files are finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreMode {
    /// Like `nix-store --restore`: 0644/0755 files, 0755 directories.
    Plain,
    /// As in the store: 0444/0555, mtime 1.
    Canonical,
}

struct RestoreSink {
    root: PathBuf,
    mode: RestoreMode,
    /// The copy buffer of file contents: `io::copy`'s 8 KiB would cost a `write` per 8 KiB
    /// (a 100 MB NAR restored from a binary cache made 13,000 of them).
    buf: Vec<u8>,
}

impl RestoreSink {
    fn at(&self, path: &[Vec<u8>]) -> PathBuf {
        let mut p = self.root.clone();
        for name in path {
            p.push(std::ffi::OsStr::from_bytes(name));
        }
        p
    }
}

fn to_io(e: StoreError) -> io::Error {
    io::Error::other(e)
}

impl NarSink for RestoreSink {
    fn regular(
        &mut self,
        path: &[Vec<u8>],
        executable: bool,
        _size: u64,
        contents: &mut dyn Read,
    ) -> io::Result<()> {
        let p = self.at(path);
        let mode = match self.mode {
            RestoreMode::Canonical => fsutil::canonical_file_mode(executable),
            RestoreMode::Plain if executable => 0o755,
            RestoreMode::Plain => 0o644,
        };
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)?;
        if self.buf.is_empty() {
            self.buf = vec![0; 256 * 1024];
        }
        // Each `write` is of a full buffer (a decompressor hands out a few KiB per read).
        let (mut filled, mut written) = (0, 0u64);
        loop {
            let n = match contents.read(&mut self.buf[filled..]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            filled += n;
            if n == 0 || filled == self.buf.len() {
                fsutil::write_sparse(&f, &self.buf[..filled], written)?;
                written += filled as u64;
                if n == 0 {
                    break;
                }
                filled = 0;
            }
        }
        // A file that ends in zeros ends in a hole.
        f.set_len(written)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        if self.mode == RestoreMode::Canonical {
            set_canonical_time_fd(&f, &p).map_err(to_io)?;
        }
        Ok(())
    }
    fn symlink(&mut self, path: &[Vec<u8>], target: &[u8]) -> io::Result<()> {
        let p = self.at(path);
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &p)?;
        if self.mode == RestoreMode::Canonical {
            set_canonical_time(&p).map_err(to_io)?;
        }
        Ok(())
    }
    fn directory(&mut self, path: &[Vec<u8>]) -> io::Result<()> {
        let p = self.at(path);
        fs::create_dir(&p)?;
        Ok(())
    }
    fn end_directory(&mut self, path: &[Vec<u8>]) -> io::Result<()> {
        if self.mode == RestoreMode::Canonical {
            seal_directory(&self.at(path)).map_err(to_io)?;
        }
        Ok(())
    }
}

/// Restores the NAR read from `input` as a new tree at `target` (which must not exist).
/// Returns the number of NAR bytes read. A NAR that is refused (malformed, truncated,
/// followed by more data) leaves nothing at `target`.
pub fn restore_nar(input: impl Read, target: &Path, mode: RestoreMode) -> Result<u64> {
    restore_with(target, mode, |sink| {
        crate::compat::nar::read_nar(input, sink)
    })
}

/// [`restore_nar`] of a NAR at the start of a stream, leaving what follows it unread
/// ([`crate::compat::nar::read_nar_prefix`]).
pub fn restore_nar_prefix(input: &mut dyn Read, target: &Path, mode: RestoreMode) -> Result<u64> {
    restore_with(target, mode, |sink| {
        crate::compat::nar::read_nar_prefix(input, sink)
    })
}

fn restore_with(
    target: &Path,
    mode: RestoreMode,
    read: impl FnOnce(&mut dyn crate::compat::nar::NarSink) -> std::result::Result<u64, NarError>,
) -> Result<u64> {
    if fs::symlink_metadata(target).is_ok() {
        return Err(StoreError::Refused(format!(
            "`{}` already exists; restore into a new path",
            target.display()
        )));
    }
    let mut sink = RestoreSink {
        root: target.to_path_buf(),
        mode,
        buf: Vec::new(),
    };
    read(&mut sink).map_err(|e| {
        // The partial tree is ours (`target` did not exist): remove it.
        let _ = fsutil::remove_tree(target);
        match e {
            NarError::Io(source) => StoreError::Io {
                action: "restore",
                path: target.to_path_buf(),
                source,
            },
            source => StoreError::Nar {
                path: target.to_path_buf(),
                source,
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refused NAR (cut short, or followed by more data) leaves no partial tree.
    #[test]
    fn a_refused_restore_leaves_nothing() {
        use crate::compat::nar::Node;
        let tree = Node::Directory(vec![
            (
                b"a".to_vec(),
                Node::Regular {
                    executable: false,
                    contents: b"first\n".to_vec(),
                },
            ),
            (
                b"b".to_vec(),
                Node::Regular {
                    executable: true,
                    contents: b"second\n".to_vec(),
                },
            ),
        ]);
        let nar = tree.write_nar(Vec::new()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        for mode in [RestoreMode::Plain, RestoreMode::Canonical] {
            let mut trailing = nar.clone();
            trailing.extend_from_slice(b"more");
            for bad in [&nar[..nar.len() - 20], &trailing[..]] {
                let target = dir.path().join("t");
                let err = restore_nar(bad, &target, mode).unwrap_err();
                assert!(matches!(err, StoreError::Nar { .. }), "{err}");
                assert!(fs::symlink_metadata(&target).is_err(), "{err}");
            }
            let target = dir.path().join("good");
            assert_eq!(
                restore_nar(&nar[..], &target, mode).unwrap(),
                nar.len() as u64
            );
            assert_eq!(fs::read(target.join("b")).unwrap(), b"second\n");
            fsutil::remove_tree(&target).unwrap();
        }
    }

    /// A sparse file (holes at the start, between and after data, within and across read
    /// buffers) hashes and copies exactly as the same bytes written densely.
    #[test]
    fn the_nar_hash_of_bytes_is_that_of_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        for contents in [
            &b""[..],
            b"x",
            b"12345678",
            b"Derive([(\"out\",\"/nix/store/a\")])\n",
        ] {
            let file = tmp.path().join("f");
            let _ = fs::remove_file(&file);
            fs::write(&file, contents).unwrap();
            fs::set_permissions(&file, fs::Permissions::from_mode(0o444)).unwrap();
            assert_eq!(nar_hash_regular(contents), nar_hash_path(&file).unwrap());
        }
    }

    /// A restored file leaves its runs of zeros as holes (the NAR has none), at the start,
    /// across the copy buffer's edge and at the end, and reads back as the same bytes.
    #[test]
    fn a_restore_leaves_runs_of_zeros_as_holes() {
        use crate::compat::nar::Node;
        use std::os::unix::fs::MetadataExt;
        let size = 3 * 256 * 1024 + 8 * 1024 * 1024 + 100;
        let mut contents = vec![0u8; size];
        for (at, data) in [
            (70_000, &b"first"[..]),
            (256 * 1024 - 2, b"across the buffer edge"),
            (size - 5_000_000, b"late"),
        ] {
            contents[at..at + data.len()].copy_from_slice(data);
        }
        let nar = Node::Regular {
            executable: false,
            contents: contents.clone(),
        }
        .write_nar(Vec::new())
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("image");
        restore_nar(&nar[..], &target, RestoreMode::Canonical).unwrap();
        assert_eq!(fs::read(&target).unwrap(), contents);
        let allocated = fs::metadata(&target).unwrap().blocks() * 512;
        assert!(
            allocated <= 6 * fsutil::HOLE_BLOCK as u64,
            "{allocated} bytes allocated"
        );
        assert_eq!(nar_hash_path(&target).unwrap(), nar_hash_regular(&contents));
    }

    #[test]
    fn sparse_files_hash_and_copy_as_dense_ones() {
        let dir = tempfile::tempdir().unwrap();
        let sparse = dir.path().join("sparse");
        let dense = dir.path().join("dense");
        let size = 3 * READ_BUF as u64 + 12_345_678;
        let pieces: [(u64, &[u8]); 3] = [
            (READ_BUF as u64 + 17, b"first"),
            (2 * READ_BUF as u64 - 2, b"across the buffer edge"),
            (8_000_000, b"late"),
        ];
        let mut f = File::create(&sparse).unwrap();
        f.set_len(size).unwrap();
        let mut bytes = vec![0u8; size as usize];
        for (at, data) in pieces {
            f.seek(SeekFrom::Start(at)).unwrap();
            f.write_all(data).unwrap();
            bytes[at as usize..at as usize + data.len()].copy_from_slice(data);
        }
        drop(f);
        std::fs::write(&dense, &bytes).unwrap();
        assert_eq!(
            nar_hash_path(&sparse).unwrap(),
            nar_hash_path(&dense).unwrap()
        );
        assert_eq!(
            hash_file(&sparse, HashAlgo::Sha256).unwrap(),
            hash_file(&dense, HashAlgo::Sha256).unwrap()
        );
        let copy = dir.path().join("copy");
        let digests = copy_and_hash(&sparse, &copy, Some(HashAlgo::Sha256), None).unwrap();
        assert_eq!(std::fs::read(&copy).unwrap(), bytes);
        assert_eq!(
            digests.flat_hash,
            Some(hash_file(&dense, HashAlgo::Sha256).unwrap())
        );
        // The copy keeps the holes.
        use std::os::unix::fs::MetadataExt;
        assert!(std::fs::metadata(&copy).unwrap().blocks() * 512 < size / 2);
    }
}
