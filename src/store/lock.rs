//! Advisory file locks (`flock(2)`) between ksbuild processes sharing a store. Does I/O.
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
