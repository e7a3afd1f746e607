//! The system calls std does not offer: mount(2), umount(2), sync(2), flock(2) and reboot(2). The
//! crate's only unsafe code; glibc (linked statically in the images) provides the symbols.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::raw::{c_char, c_int, c_long, c_ulong, c_void};
use std::path::Path;

extern "C" {
    // https://man7.org/linux/man-pages/man2/mount.2.html
    fn mount(
        source: *const c_char,
        target: *const c_char,
        fstype: *const c_char,
        flags: c_ulong,
        data: *const c_void,
    ) -> c_int;
    // https://man7.org/linux/man-pages/man2/umount.2.html
    fn umount(target: *const c_char) -> c_int;
    // https://man7.org/linux/man-pages/man2/sync.2.html
    fn sync();
    // https://man7.org/linux/man-pages/man2/flock.2.html
    fn flock(fd: c_int, operation: c_int) -> c_int;
    // https://man7.org/linux/man-pages/man2/syscall.2.html (glibc's reboot() cannot pass
    // RESTART2's argument, so reboot(2) is called through syscall()).
    fn syscall(number: c_long, ...) -> c_long;
}

/// flock(2) of `file`: an exclusive lock, waiting for it (`LOCK_EX`), or `None` and no wait
/// when `wait` is false and another process holds it (`LOCK_EX | LOCK_NB`). Released when
/// the file is closed.
pub fn lock_exclusive(file: &std::fs::File, wait: bool) -> io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    const LOCK_EX: c_int = 2;
    const LOCK_NB: c_int = 4;
    let op = if wait { LOCK_EX } else { LOCK_EX | LOCK_NB };
    loop {
        // SAFETY: flock on a descriptor this File owns; no memory is passed.
        if unsafe { flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// `MS_NOATIME` from <linux/mount.h>.
pub const MS_NOATIME: c_ulong = 1024;

fn cstring(text: &str) -> io::Result<CString> {
    CString::new(text)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a path"))
}

fn path_cstring(path: &Path) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a path"))
}

/// mount(2): mounts the file system of type `fstype` on `source` at `target`.
pub fn mount_fs(source: &Path, target: &Path, fstype: &str, flags: c_ulong) -> io::Result<()> {
    let source = path_cstring(source)?;
    let target = path_cstring(target)?;
    let fstype = cstring(fstype)?;
    // SAFETY: all three are valid NUL-terminated strings that outlive the call; data is NULL,
    // which mount(2) accepts for ext4 and vfat.
    let rc = unsafe {
        mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// umount(2) of `target`.
pub fn unmount(target: &Path) -> io::Result<()> {
    let target = path_cstring(target)?;
    // SAFETY: a valid NUL-terminated string that outlives the call.
    let rc = unsafe { umount(target.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// sync(2): flushes every file system.
pub fn sync_all() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { sync() }
}

#[cfg(target_arch = "x86_64")]
const SYS_REBOOT: c_long = 169;
#[cfg(target_arch = "aarch64")]
const SYS_REBOOT: c_long = 142;
#[cfg(target_arch = "arm")]
const SYS_REBOOT: c_long = 88;
#[cfg(target_arch = "riscv64")]
const SYS_REBOOT: c_long = 142;

// <linux/reboot.h>
const LINUX_REBOOT_MAGIC1: c_long = 0xfee1_dead;
const LINUX_REBOOT_MAGIC2: c_long = 672_274_793;
const LINUX_REBOOT_CMD_RESTART: c_long = 0x0123_4567;
const LINUX_REBOOT_CMD_RESTART2: c_long = 0xa1b2_c3d4;

/// reboot(2) now (after sync(2)): `LINUX_REBOOT_CMD_RESTART2` with `arg` (e.g. `0 tryboot`,
/// which the Raspberry Pi firmware driver turns into the one-shot tryboot flag), or a plain
/// `LINUX_REBOOT_CMD_RESTART`. Returns only on failure (e.g. without CAP_SYS_BOOT).
pub fn reboot_now(arg: Option<&str>) -> io::Error {
    sync_all();
    let rc = match arg {
        Some(arg) => {
            let arg = match cstring(arg) {
                Ok(a) => a,
                Err(e) => return e,
            };
            // SAFETY: reboot(2) takes two magic numbers, the command and, for RESTART2, a
            // NUL-terminated string that outlives the call.
            unsafe {
                syscall(
                    SYS_REBOOT,
                    LINUX_REBOOT_MAGIC1,
                    LINUX_REBOOT_MAGIC2,
                    LINUX_REBOOT_CMD_RESTART2,
                    arg.as_ptr(),
                )
            }
        }
        None => {
            // SAFETY: as above; the fourth argument is ignored for RESTART.
            unsafe {
                syscall(
                    SYS_REBOOT,
                    LINUX_REBOOT_MAGIC1,
                    LINUX_REBOOT_MAGIC2,
                    LINUX_REBOOT_CMD_RESTART,
                    std::ptr::null::<c_char>(),
                )
            }
        }
    };
    if rc == 0 {
        io::Error::new(io::ErrorKind::Other, "reboot(2) returned")
    } else {
        io::Error::last_os_error()
    }
}
