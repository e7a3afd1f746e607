//! Advisory file locks between ksbuild processes sharing a store: whole files
//! (`flock(2)`), and single bytes of one file (open file description locks, `fcntl(2)`
//! `F_OFD_SETLK`), so that locking one of many store paths creates no file. Does I/O.
//! A lock that is busy is reported to the [`Observer`] before blocking: never a silent wait.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

use super::{Observer, Result, StoreError};

/// Shared or exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    /// Many holders at once.
    Shared,
    /// One holder.
    Exclusive,
}

/// A held lock; released when dropped (closing the file releases the `flock`).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
    path: PathBuf,
}

impl FileLock {
    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn open(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(StoreError::io("open lock file", path))
}

fn operation(kind: LockKind, blocking: bool) -> FlockOperation {
    match (kind, blocking) {
        (LockKind::Shared, true) => FlockOperation::LockShared,
        (LockKind::Exclusive, true) => FlockOperation::LockExclusive,
        (LockKind::Shared, false) => FlockOperation::NonBlockingLockShared,
        (LockKind::Exclusive, false) => FlockOperation::NonBlockingLockExclusive,
    }
}

/// Takes the lock if it is free now; `None` if another process holds it.
pub fn try_lock(path: &Path, kind: LockKind) -> Result<Option<FileLock>> {
    let file = open(path)?;
    match flock(&file, operation(kind, false)) {
        Ok(()) => Ok(Some(FileLock {
            _file: file,
            path: path.to_path_buf(),
        })),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(StoreError::Io {
            action: "lock",
            path: path.to_path_buf(),
            source: e.into(),
        }),
    }
}

/// Takes the lock, telling `observer` about `what` first if it has to wait.
pub fn lock(path: &Path, kind: LockKind, observer: &dyn Observer, what: &str) -> Result<FileLock> {
    if let Some(held) = try_lock(path, kind)? {
        return Ok(held);
    }
    observer.waiting_for_lock(what, path);
    let file = open(path)?;
    loop {
        match flock(&file, operation(kind, true)) {
            Ok(()) => {
                return Ok(FileLock {
                    _file: file,
                    path: path.to_path_buf(),
                })
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                return Err(StoreError::Io {
                    action: "lock",
                    path: path.to_path_buf(),
                    source: e.into(),
                })
            }
        }
    }
}

/// Takes an exclusive lock on the byte at `offset` of the file `path` (created if
/// missing), telling `observer` about `what` first if it has to wait. Like a `flock`, the
/// lock belongs to the open file: another open of the same file, in this process or
/// another, waits for it; dropping the [`FileLock`] releases it.
pub fn lock_byte(
    path: &Path,
    offset: u64,
    observer: &dyn Observer,
    what: &str,
) -> Result<FileLock> {
    use std::os::fd::AsRawFd;
    let file = open(path)?;
    let range = nix::libc::flock {
        l_type: nix::libc::F_WRLCK as i16,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: (offset & (i64::MAX as u64)) as i64,
        l_len: 1,
        l_pid: 0,
    };
    let failed = |e: nix::errno::Errno| StoreError::Io {
        action: "lock",
        path: path.to_path_buf(),
        source: std::io::Error::from_raw_os_error(e as i32),
    };
    use nix::fcntl::{fcntl, FcntlArg};
    match fcntl(file.as_raw_fd(), FcntlArg::F_OFD_SETLK(&range)) {
        Ok(_) => {}
        Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => {
            observer.waiting_for_lock(what, path);
            loop {
                match fcntl(file.as_raw_fd(), FcntlArg::F_OFD_SETLKW(&range)) {
                    Ok(_) => break,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(failed(e)),
                }
            }
        }
        Err(e) => return Err(failed(e)),
    }
    Ok(FileLock {
        _file: file,
        path: path.to_path_buf(),
    })
}
