//! Advisory file locks between ksbuild processes sharing a store: whole files
//! (`flock(2)`), and single bytes of one file (open file description locks, `fcntl(2)`
//! `F_OFD_SETLK`), so that locking one of many store paths creates no file. Does I/O.
//! A lock that another process holds is reported to the [`Observer`] before blocking:
//! never a silent wait. One held by another thread of this process is waited for without a
//! word (it is this process's own work, not another process's), and a whole-file lock is
//! announced only when it stays busy for [`ANNOUNCE_AFTER`] (an idle store's clean-up at
//! open holds the GC lock for a few milliseconds).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// How long a busy whole-file lock is retried before the wait is announced.
pub const ANNOUNCE_AFTER: Duration = Duration::from_millis(150);

/// The byte locks this process holds, by file and offset, with how many holders (an OFD
/// lock of one thread conflicts with another thread's; this tells them apart from other
/// processes' locks, which `F_OFD_GETLK` cannot: it reports no pid for OFD locks).
static HELD_HERE: Mutex<BTreeMap<(PathBuf, u64), usize>> = Mutex::new(BTreeMap::new());

fn held_here() -> std::sync::MutexGuard<'static, BTreeMap<(PathBuf, u64), usize>> {
    HELD_HERE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A held lock; released when dropped (closing the file releases the `flock`).
#[derive(Debug)]
pub struct FileLock {
    file: Option<File>,
    path: PathBuf,
    /// For a byte lock, its offset (registered in [`HELD_HERE`]).
    byte: Option<u64>,
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // Release first, then forget: a thread that meets the lock busy in between takes
        // it for this process's (and waits silently), never the reverse.
        drop(self.file.take());
        if let Some(offset) = self.byte {
            let mut held = held_here();
            let key = (self.path.clone(), offset);
            if let Some(n) = held.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    held.remove(&key);
                }
            }
        }
    }
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
            file: Some(file),
            path: path.to_path_buf(),
            byte: None,
        })),
        Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
        Err(e) => Err(StoreError::Io {
            action: "lock",
            path: path.to_path_buf(),
            source: e.into(),
        }),
    }
}

/// Takes the lock, telling `observer` about `what` first if it stays busy for
/// [`ANNOUNCE_AFTER`].
pub fn lock(path: &Path, kind: LockKind, observer: &dyn Observer, what: &str) -> Result<FileLock> {
    let start = Instant::now();
    loop {
        if let Some(held) = try_lock(path, kind)? {
            return Ok(held);
        }
        if start.elapsed() >= ANNOUNCE_AFTER {
            break;
        }
        std::thread::sleep(Duration::from_millis(3));
    }
    observer.waiting_for_lock(what, path);
    let file = open(path)?;
    loop {
        match flock(&file, operation(kind, true)) {
            Ok(()) => {
                return Ok(FileLock {
                    file: Some(file),
                    path: path.to_path_buf(),
                    byte: None,
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
/// missing), telling `observer` about `what` first if another process holds it. Like a
/// `flock`, the lock belongs to the open file: another open of the same file, in this
/// process or another, waits for it; dropping the [`FileLock`] releases it.
pub fn lock_byte(
    path: &Path,
    offset: u64,
    observer: &dyn Observer,
    what: &str,
) -> Result<FileLock> {
    lock_byte_with(path, offset, Blocking::Announce(observer, what))
        .map(|held| held.expect("a blocking lock is always taken"))
}

/// Takes the byte lock of [`lock_byte`] if it is free now; `None` if it is busy.
pub fn try_lock_byte(path: &Path, offset: u64) -> Result<Option<FileLock>> {
    lock_byte_with(path, offset, Blocking::No)
}

/// Takes the byte lock of [`lock_byte`], waiting without a word if it is busy (for a
/// caller that reports the wait in its own terms).
pub fn lock_byte_quietly(path: &Path, offset: u64) -> Result<FileLock> {
    lock_byte_with(path, offset, Blocking::Quiet)
        .map(|held| held.expect("a blocking lock is always taken"))
}

/// What a byte lock does when it is busy.
enum Blocking<'a> {
    /// Returns `None`.
    No,
    /// Waits.
    Quiet,
    /// Waits, telling the observer about the thing locked first if another process holds it.
    Announce(&'a dyn Observer, &'a str),
}

fn lock_byte_with(path: &Path, offset: u64, blocking: Blocking<'_>) -> Result<Option<FileLock>> {
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
            match blocking {
                Blocking::No => return Ok(None),
                Blocking::Quiet => {}
                Blocking::Announce(observer, what) => {
                    let ours = held_here().contains_key(&(path.to_path_buf(), offset));
                    if !ours {
                        observer.waiting_for_lock(what, path);
                    }
                }
            }
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
    *held_here().entry((path.to_path_buf(), offset)).or_default() += 1;
    Ok(Some(FileLock {
        file: Some(file),
        path: path.to_path_buf(),
        byte: Some(offset),
    }))
}
