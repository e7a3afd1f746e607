//! The sandbox's one narrow syscall layer: every system call the sandbox makes goes through
//! a function here, which names the C call, links its man page and returns the kernel's
//! `errno`. The only `unsafe` of the crate lives in this file (clone, the loopback ioctl,
//! signal dispositions, `close_range`, `keyctl`, the seccomp filter), each block with its
//! `SAFETY:` argument.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::stat::Mode;
use nix::sys::statvfs::FsFlags;
use nix::unistd::{Gid, Pid, Uid};

use super::seccomp;
use super::step::RemountFlags;

/// The `errno` of an `std::io::Error` (`EIO` if it carries none).
pub(crate) fn io_errno(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO))
}

fn rustix_errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

// ---- files (host side) --------------------------------------------------------------

/// [`mkdir(2)`](https://man7.org/linux/man-pages/man2/mkdir.2.html) then
/// [`chmod(2)`](https://man7.org/linux/man-pages/man2/chmod.2.html), so that the mode is
/// exact whatever the umask (mkdir may drop the sticky bit).
pub(crate) fn create_directory(path: &Path, mode: u32) -> Result<(), Errno> {
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(|e| io_errno(&e))?;
    chmod(path, mode)
}

/// Creates an empty file or directory at `target`, the same kind as `source` (after
/// following symlinks, as the bind mount will): the mount point of an input. One that an
/// earlier build left there is kept if it is of that kind and empty (`EEXIST` otherwise).
/// [`stat(2)`](https://man7.org/linux/man-pages/man2/stat.2.html), then `mkdir` or `open`.
pub(crate) fn create_mount_point(source: &Path, target: &Path) -> Result<(), Errno> {
    let meta = fs::metadata(source).map_err(|e| io_errno(&e))?;
    let created = if meta.is_dir() {
        create_directory(target, 0o755)
    } else {
        create_empty_file(target)
    };
    match created {
        Err(Errno::EEXIST) if is_empty_mount_point(target, meta.is_dir()) => Ok(()),
        other => other,
    }
}

/// Whether `path` is an empty directory (or, for `dir == false`, an empty regular file),
/// not a symlink: what a mount point looks like once its bind mount is gone.
pub(crate) fn is_empty_mount_point(path: &Path, dir: bool) -> bool {
    match fs::symlink_metadata(path) {
        Ok(m) if dir && m.is_dir() => fs::read_dir(path).is_ok_and(|mut d| d.next().is_none()),
        Ok(m) if !dir && m.is_file() => m.len() == 0,
        _ => false,
    }
}

/// Creates an empty file, failing if it exists
/// ([`open(2)`](https://man7.org/linux/man-pages/man2/open.2.html) with `O_CREAT|O_EXCL`).
pub(crate) fn create_empty_file(path: &Path) -> Result<(), Errno> {
    write_new_file(path, 0o644, b"")
}

/// Creates a new file with exactly `mode` and `contents`
/// ([`open(2)`](https://man7.org/linux/man-pages/man2/open.2.html) `O_CREAT|O_EXCL`,
/// [`write(2)`](https://man7.org/linux/man-pages/man2/write.2.html),
/// [`fchmod(2)`](https://man7.org/linux/man-pages/man2/fchmod.2.html)).
pub(crate) fn write_new_file(path: &Path, mode: u32, contents: &[u8]) -> Result<(), Errno> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io_errno(&e))?;
    file.write_all(contents).map_err(|e| io_errno(&e))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| io_errno(&e))
}

/// [`symlink(2)`](https://man7.org/linux/man-pages/man2/symlink.2.html).
pub(crate) fn symlink(target: &Path, path: &Path) -> Result<(), Errno> {
    std::os::unix::fs::symlink(target, path).map_err(|e| io_errno(&e))
}

/// [`lchown(2)`](https://man7.org/linux/man-pages/man2/lchown.2.html).
pub(crate) fn lchown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<(), Errno> {
    std::os::unix::fs::lchown(path, uid, gid).map_err(|e| io_errno(&e))
}

/// [`chmod(2)`](https://man7.org/linux/man-pages/man2/chmod.2.html).
pub(crate) fn chmod(path: &Path, mode: u32) -> Result<(), Errno> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| io_errno(&e))
}

/// Writes a `/proc/<pid>/{uid_map,gid_map,setgroups}` file in one
/// [`write(2)`](https://man7.org/linux/man-pages/man2/write.2.html), as
/// [`user_namespaces(7)`](https://man7.org/linux/man-pages/man7/user_namespaces.7.html)
/// requires.
pub(crate) fn write_proc_file(path: &Path, contents: &str) -> Result<(), Errno> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io_errno(&e))?;
    let n = file.write(contents.as_bytes()).map_err(|e| io_errno(&e))?;
    if n != contents.len() {
        return Err(Errno::EIO);
    }
    Ok(())
}

/// [`umask(2)`](https://man7.org/linux/man-pages/man2/umask.2.html).
pub(crate) fn set_umask(mask: u32) {
    nix::sys::stat::umask(Mode::from_bits_truncate(mask));
}

// ---- processes ------------------------------------------------------------------------

/// [`clone(2)`](https://man7.org/linux/man-pages/man2/clone.2.html) into new user, mount,
/// PID, IPC, UTS, network and cgroup namespaces, with `SIGCHLD` as the exit signal. The
/// child runs `child` on a stack of its own and exits with what it returns.
///
/// Must only be called from a single-threaded process (the init process is one).
pub(crate) fn clone_into_namespaces(child: &mut dyn FnMut() -> isize) -> Result<Pid, Errno> {
    const STACK_SIZE: usize = 1 << 20;
    let flags = CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWCGROUP;
    // The stack is a fresh anonymous mapping, unmapped here once the child has its copy:
    // the child faults in only the pages it uses, and this process never writes to them.
    // (A heap buffer would be zeroed on every call once the allocator recycles it — a
    // thousand-odd page writes, each a copy-on-write fault while earlier children still
    // share this address space.)
    // SAFETY: an anonymous private mapping of fresh memory, aliased by nothing.
    let base = unsafe {
        rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            STACK_SIZE,
            rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
            rustix::mm::MapFlags::PRIVATE | rustix::mm::MapFlags::STACK,
        )
    }
    .map_err(rustix_errno)?;
    // SAFETY: `base` is a mapping of STACK_SIZE writable bytes that only this slice uses
    // until it is unmapped below.
    let stack = unsafe { std::slice::from_raw_parts_mut(base.cast::<u8>(), STACK_SIZE) };
    let callback: nix::sched::CloneCb<'_> = Box::new(child);
    // SAFETY: without CLONE_VM the child gets a copy of this address space, so the stack
    // mapping and everything `child` borrows stay valid in it; the caller is
    // single-threaded (the init process or the zygote), so no lock (the allocator's,
    // stdio's) can be held by another thread at the moment of the copy, and the child may
    // allocate and use std. The 1 MiB stack is far more than the setup steps use (no
    // recursion, small frames).
    let cloned = unsafe { nix::sched::clone(callback, stack, flags, Some(nix::libc::SIGCHLD)) };
    // SAFETY: the slice is not used after this; the child has its own copy of the mapping.
    let _ = unsafe { rustix::mm::munmap(base, STACK_SIZE) };
    cloned
}

/// Opens `/proc/<pid>/ns/<kind>`: a reference that keeps the namespace alive after its
/// last process is gone, until the descriptor is closed.
pub(crate) fn open_namespace(pid: Pid, kind: &str) -> Result<OwnedFd, Errno> {
    let file = OpenOptions::new()
        .read(true)
        .open(format!("/proc/{pid}/ns/{kind}"))
        .map_err(|e| io_errno(&e))?;
    Ok(OwnedFd::from(file))
}

/// [`pidfd_open(2)`](https://man7.org/linux/man-pages/man2/pidfd_open.2.html).
pub(crate) fn pidfd_open(pid: Pid) -> Result<OwnedFd, Errno> {
    let pid = rustix::process::Pid::from_raw(pid.as_raw()).ok_or(Errno::ESRCH)?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).map_err(rustix_errno)
}

/// [`kill(2)`](https://man7.org/linux/man-pages/man2/kill.2.html) with `SIGKILL`.
pub(crate) fn kill(pid: Pid) -> Result<(), Errno> {
    nix::sys::signal::kill(pid, Signal::SIGKILL)
}

/// [`waitpid(2)`](https://man7.org/linux/man-pages/man2/waitpid.2.html), retried on `EINTR`.
pub(crate) fn wait(pid: Pid) -> Result<nix::sys::wait::WaitStatus, Errno> {
    loop {
        match nix::sys::wait::waitpid(pid, None) {
            Err(Errno::EINTR) => continue,
            other => return other,
        }
    }
}

/// [`pipe2(2)`](https://man7.org/linux/man-pages/man2/pipe2.2.html) with `O_CLOEXEC`:
/// `(read end, write end)`.
pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd), Errno> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
}

/// [`poll(2)`](https://man7.org/linux/man-pages/man2/poll.2.html) on `fds` for input or
/// hang-up, retried on `EINTR`; `timeout_ms` < 0 waits forever. Returns, per fd, whether
/// it is ready (readable, hung up or in error); `None` entries are skipped.
pub(crate) fn poll_readable(
    fds: &[Option<BorrowedFd<'_>>],
    timeout_ms: i32,
) -> Result<Vec<bool>, Errno> {
    use rustix::event::{PollFd, PollFlags};
    let mut polls: Vec<PollFd<'_>> = fds
        .iter()
        .flatten()
        .map(|fd| PollFd::from_borrowed_fd(*fd, PollFlags::IN))
        .collect();
    loop {
        match rustix::event::poll(&mut polls, timeout_ms) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(rustix_errno(e)),
            Ok(_) => break,
        }
    }
    let mut ready = polls.iter().map(|p| !p.revents().is_empty());
    Ok(fds
        .iter()
        .map(|fd| fd.is_some() && ready.next().unwrap_or(false))
        .collect())
}

/// Whether the other end of the pipe `fd` has hung up, without waiting
/// ([`poll(2)`](https://man7.org/linux/man-pages/man2/poll.2.html) with timeout 0).
pub(crate) fn hung_up(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    use rustix::event::{PollFd, PollFlags};
    let mut polls = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
    loop {
        match rustix::event::poll(&mut polls, 0) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(rustix_errno(e)),
            Ok(_) => break,
        }
    }
    Ok(polls[0].revents().contains(PollFlags::HUP))
}

/// [`read(2)`](https://man7.org/linux/man-pages/man2/read.2.html), retried on `EINTR`.
pub(crate) fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, Errno> {
    loop {
        match rustix::io::read(fd, &mut *buf) {
            Err(rustix::io::Errno::INTR) => continue,
            other => return other.map_err(rustix_errno),
        }
    }
}

/// [`write(2)`](https://man7.org/linux/man-pages/man2/write.2.html) of all of `buf`,
/// retried on `EINTR`.
pub(crate) fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        match rustix::io::write(fd, buf) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(rustix_errno(e)),
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => buf = &buf[n..],
        }
    }
    Ok(())
}

/// [`fcntl(2)`](https://man7.org/linux/man-pages/man2/fcntl.2.html) `F_DUPFD_CLOEXEC`: a
/// copy of `fd` numbered 3 or more that `execve` will close.
pub(crate) fn dup_cloexec(fd: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    rustix::io::fcntl_dupfd_cloexec(fd, 3).map_err(rustix_errno)
}

/// Replaces `target` (0, 1 or 2) with a copy of `fd`
/// ([`dup2(2)`](https://man7.org/linux/man-pages/man2/dup2.2.html)).
pub(crate) fn dup_onto(fd: BorrowedFd<'_>, target: i32) -> Result<(), Errno> {
    nix::unistd::dup2(fd.as_raw_fd(), target).map(|_| ())
}

/// Closes every file descriptor from 3 up
/// ([`close_range(2)`](https://man7.org/linux/man-pages/man2/close_range.2.html)): the
/// init process starts with only stdin, stdout and stderr, whatever ksbuild or the
/// libraries it links may have leaked without `O_CLOEXEC`.
pub(crate) fn close_fds_from_3() -> Result<(), Errno> {
    // SAFETY: a raw syscall with integer arguments; it touches no memory. It is called at
    // the very start of the init process, before any Rust object owns a descriptor above
    // 2, so no `OwnedFd` is invalidated.
    let r = unsafe { nix::libc::syscall(nix::libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    Errno::result(r).map(|_| ())
}

/// Closes every file descriptor from 3 up but `keep`
/// ([`close_range(2)`](https://man7.org/linux/man-pages/man2/close_range.2.html)): a PID 1
/// cloned by the zygote keeps only its request channel of the zygote's descriptors.
pub(crate) fn close_fds_from_3_except(keep: BorrowedFd<'_>) -> Result<(), Errno> {
    let keep = keep.as_raw_fd() as u32;
    let ranges = [
        (3u32, keep.checked_sub(1)),
        (keep.saturating_add(1), Some(u32::MAX)),
    ];
    for (first, last) in ranges {
        let Some(last) = last.filter(|l| *l >= first) else {
            continue;
        };
        // SAFETY: a raw syscall with integer arguments; it touches no memory. It is called
        // first thing in a freshly cloned PID 1, whose only `OwnedFd`-backed descriptor it
        // uses afterwards is `keep`, which stays open.
        let r = unsafe { nix::libc::syscall(nix::libc::SYS_close_range, first, last, 0u32) };
        Errno::result(r)?;
    }
    Ok(())
}

/// Whether this process's effective uid is 0.
pub(crate) fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// [`close(2)`](https://man7.org/linux/man-pages/man2/close.2.html) of a descriptor number
/// that no Rust object owns in this process (PID 1's copy of the init process's end of a
/// pipe, inherited through `clone`).
pub(crate) fn close_unowned(fd: std::os::fd::RawFd) -> Result<(), Errno> {
    nix::unistd::close(fd)
}

/// [`prctl(2)`](https://man7.org/linux/man-pages/man2/prctl.2.html) `PR_SET_PDEATHSIG`
/// with `SIGKILL`.
pub(crate) fn set_parent_death_signal() -> Result<(), Errno> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
}

/// `prctl(PR_SET_NAME)`: the name `ps` and `perf` show for this process (at most 15
/// bytes; it says which part of the sandbox a process is until the builder replaces it).
pub(crate) fn set_process_name(name: &std::ffi::CStr) {
    let _ = nix::sys::prctl::set_name(name);
}

/// [`getppid(2)`](https://man7.org/linux/man-pages/man2/getppid.2.html).
pub(crate) fn parent_pid() -> i32 {
    nix::unistd::getppid().as_raw()
}

/// [`setsid(2)`](https://man7.org/linux/man-pages/man2/setsid.2.html).
pub(crate) fn new_session() -> Result<(), Errno> {
    nix::unistd::setsid().map(|_| ())
}

/// stdin from `/dev/null` and stderr a copy of stdout
/// ([`open(2)`](https://man7.org/linux/man-pages/man2/open.2.html),
/// [`dup2(2)`](https://man7.org/linux/man-pages/man2/dup2.2.html)).
pub(crate) fn redirect_stdio() -> Result<(), Errno> {
    let null = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| io_errno(&e))?;
    dup_onto(null.as_fd(), 0)?;
    nix::unistd::dup2(1, 2).map(|_| ())
}

/// [`setgroups(2)`](https://man7.org/linux/man-pages/man2/setgroups.2.html) with an empty
/// list.
pub(crate) fn clear_supplementary_groups() -> Result<(), Errno> {
    nix::unistd::setgroups(&[])
}

/// [`setfsgid(2)`](https://man7.org/linux/man-pages/man2/setfsgid.2.html) and
/// [`setfsuid(2)`](https://man7.org/linux/man-pages/man2/setfsuid.2.html). Neither reports
/// failure, so each is called twice: the second call returns the value the first set.
pub(crate) fn set_filesystem_ids(uid: u32, gid: u32) -> Result<(), Errno> {
    let (u, g) = (Uid::from_raw(uid), Gid::from_raw(gid));
    nix::unistd::setfsgid(g);
    if nix::unistd::setfsgid(g) != g {
        return Err(Errno::EPERM);
    }
    nix::unistd::setfsuid(u);
    if nix::unistd::setfsuid(u) != u {
        return Err(Errno::EPERM);
    }
    Ok(())
}

/// [`setresgid(2)`](https://man7.org/linux/man-pages/man2/setresgid.2.html).
pub(crate) fn set_group_id(gid: u32) -> Result<(), Errno> {
    let g = Gid::from_raw(gid);
    nix::unistd::setresgid(g, g, g)
}

/// [`setresuid(2)`](https://man7.org/linux/man-pages/man2/setresuid.2.html).
pub(crate) fn set_user_id(uid: u32) -> Result<(), Errno> {
    let u = Uid::from_raw(uid);
    nix::unistd::setresuid(u, u, u)
}

/// [`keyctl(2)`](https://man7.org/linux/man-pages/man2/keyctl.2.html)
/// `KEYCTL_JOIN_SESSION_KEYRING` with no name: a new, empty, anonymous session keyring, so
/// that the build does not possess ksbuild's (a login session's keyring may hold secrets).
/// A kernel without keys (`ENOSYS`) has nothing to leak.
pub(crate) fn new_session_keyring() -> Result<(), Errno> {
    const KEYCTL_JOIN_SESSION_KEYRING: nix::libc::c_long = 1;
    // SAFETY: keyctl(2) with a null name pointer, which the kernel accepts as "anonymous";
    // no other memory is passed.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<nix::libc::c_char>(),
        )
    };
    match Errno::result(r) {
        Ok(_) | Err(Errno::ENOSYS) => Ok(()),
        Err(e) => Err(e),
    }
}

/// [`prctl(2)`](https://man7.org/linux/man-pages/man2/prctl.2.html)
/// `PR_SET_NO_NEW_PRIVS`.
pub(crate) fn set_no_new_privs() -> Result<(), Errno> {
    nix::sys::prctl::set_no_new_privs()
}

/// [`prctl(2)`](https://man7.org/linux/man-pages/man2/prctl.2.html)
/// `PR_SET_SECCOMP, SECCOMP_MODE_FILTER` with `program` (see
/// [`seccomp(2)`](https://man7.org/linux/man-pages/man2/seccomp.2.html)); needs
/// `no_new_privs`.
pub(crate) fn install_seccomp_filter(program: &[seccomp::Instruction]) -> Result<(), Errno> {
    use nix::libc;
    let mut filter: Vec<libc::sock_filter> = program
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let len = u16::try_from(filter.len()).map_err(|_| Errno::E2BIG)?;
    let prog = libc::sock_fprog {
        len,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `filter`, `len` valid `sock_filter`s that stay alive for the
    // whole call; the kernel copies the program and keeps no pointer to it.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog,
        )
    };
    Errno::result(r).map(|_| ())
}

/// [`unshare(2)`](https://man7.org/linux/man-pages/man2/unshare.2.html) `CLONE_NEWTIME`,
/// then the monotonic and boot clocks of the new time namespace set `seconds` ahead
/// (`/proc/self/timens_offsets`, [`time_namespaces(7)`](https://man7.org/linux/man-pages/man7/time_namespaces.7.html)),
/// then [`setns(2)`](https://man7.org/linux/man-pages/man2/setns.2.html) into it through
/// `/proc/self/ns/time_for_children`: `unshare` moves only the children, and PID 1 becomes
/// the builder itself. The offsets can be written only before a process enters. Needs
/// `CAP_SYS_ADMIN` and `CAP_SYS_TIME` in the user namespace, and a kernel with
/// `CONFIG_TIME_NS` (5.6 and later; `ENOENT` without).
pub(crate) fn enter_time_namespace(seconds: u64) -> Result<(), Errno> {
    use rustix::thread::{move_into_link_name_space, unshare, LinkNameSpaceType, UnshareFlags};
    if !Path::new("/proc/self/ns/time").exists() {
        return Err(Errno::ENOENT);
    }
    unshare(UnshareFlags::NEWTIME).map_err(rustix_errno)?;
    let mut offsets = OpenOptions::new()
        .write(true)
        .open("/proc/self/timens_offsets")
        .map_err(|e| io_errno(&e))?;
    offsets
        .write_all(format!("monotonic {seconds} 0\nboottime {seconds} 0\n").as_bytes())
        .map_err(|e| io_errno(&e))?;
    let ns = fs::File::open("/proc/self/ns/time_for_children").map_err(|e| io_errno(&e))?;
    move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Time)).map_err(rustix_errno)
}

/// [`personality(2)`](https://man7.org/linux/man-pages/man2/personality.2.html): the
/// current persona plus `ADDR_NO_RANDOMIZE`.
pub(crate) fn disable_address_randomisation() -> Result<(), Errno> {
    use nix::sys::personality::{self, Persona};
    let current = personality::get()?;
    personality::set(current | Persona::ADDR_NO_RANDOMIZE).map(|_| ())
}

/// [`personality(2)`](https://man7.org/linux/man-pages/man2/personality.2.html): the
/// current persona plus `UNAME26`, so that `uname(2)` reports a 2.6 release.
pub(crate) fn report_old_kernel_release() -> Result<(), Errno> {
    use nix::sys::personality::{self, Persona};
    let current = personality::get()?;
    personality::set(current | Persona::UNAME26).map(|_| ())
}

/// [`sched_setaffinity(2)`](https://man7.org/linux/man-pages/man2/sched_setaffinity.2.html):
/// this process (and what it starts) may run on the first `count` of the CPUs it may run
/// on now.
pub(crate) fn restrict_cpus(count: u32) -> Result<(), Errno> {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let allowed = sched_getaffinity(Pid::from_raw(0))?;
    let mut chosen = CpuSet::new();
    let mut left = count.max(1);
    for cpu in 0..CpuSet::count() {
        if left == 0 {
            break;
        }
        if allowed.is_set(cpu)? {
            chosen.set(cpu)?;
            left -= 1;
        }
    }
    sched_setaffinity(Pid::from_raw(0), &chosen)
}

/// [`setrlimit(2)`](https://man7.org/linux/man-pages/man2/setrlimit.2.html)
/// `RLIMIT_CORE`: soft limit 0, hard limit unchanged (as Nix does).
pub(crate) fn limit_core_dumps() -> Result<(), Errno> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_CORE)?;
    setrlimit(Resource::RLIMIT_CORE, 0, hard)
}

/// [`setrlimit(2)`](https://man7.org/linux/man-pages/man2/setrlimit.2.html)
/// `RLIMIT_NPROC`, soft and hard, so the build cannot raise it again.
pub(crate) fn limit_processes(max: u64) -> Result<(), Errno> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NPROC)?;
    let max = max.min(hard);
    setrlimit(Resource::RLIMIT_NPROC, max, max)
}

/// [`chdir(2)`](https://man7.org/linux/man-pages/man2/chdir.2.html).
pub(crate) fn chdir(path: &Path) -> Result<(), Errno> {
    nix::unistd::chdir(path)
}

/// `rt_sigaction(2)` ([`sigaction(2)`](https://man7.org/linux/man-pages/man2/sigaction.2.html))
/// `SIG_DFL` for every signal from 1 to 64, and an empty mask
/// ([`sigprocmask(2)`](https://man7.org/linux/man-pages/man2/sigprocmask.2.html)). The raw
/// system call is used because glibc refuses to touch the two real-time signals it keeps for
/// itself (32 and 33), and an ignored one would be inherited by the builder (observed: ksbuild's
/// parents may ignore signal 32).
pub(crate) fn reset_signals() -> Result<(), Errno> {
    const SIGRTMAX: i32 = 64;
    // The kernel's `struct sigaction` is at most 32 bytes (x86_64: handler, flags, restorer,
    // mask; the generic layout of aarch64 has no restorer). All zero means: handler
    // `SIG_DFL`, no flags, empty mask.
    let default_action = [0u64; 4];
    for signal in 1..=SIGRTMAX {
        if signal == nix::libc::SIGKILL || signal == nix::libc::SIGSTOP {
            continue;
        }
        // SAFETY: `default_action` is a live, zeroed buffer at least as large as the
        // kernel's `struct sigaction` on every architecture, which the kernel only reads;
        // the old action is not asked for (NULL); the size of the kernel's sigset is 8.
        // `SIG_DFL` installs no handler, so no Rust code can run in signal context.
        let r = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_rt_sigaction,
                signal,
                default_action.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            )
        };
        Errno::result(r)?;
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
}

/// Clears the ambient, inheritable, effective and permitted capability sets
/// ([`capset(2)`](https://man7.org/linux/man-pages/man2/capset.2.html),
/// [`prctl(2)`](https://man7.org/linux/man-pages/man2/prctl.2.html)
/// `PR_CAP_AMBIENT_CLEAR_ALL`). The bounding set is left full, as in Nix: with
/// `no_new_privs` nothing can be gained from it.
pub(crate) fn drop_capabilities() -> Result<(), Errno> {
    use caps::CapSet;
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|_| Errno::EPERM)?;
    }
    Ok(())
}

/// [`execve(2)`](https://man7.org/linux/man-pages/man2/execve.2.html); returns only on
/// failure.
pub(crate) fn exec(path: &CString, argv: &[CString], envp: &[CString]) -> Errno {
    match nix::unistd::execve(path, argv, envp) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

// ---- mounts -----------------------------------------------------------------------------

const NONE: Option<&str> = None;

/// [`mount(2)`](https://man7.org/linux/man-pages/man2/mount.2.html)
/// The namespaces of the store views' keeper (see `views.rs`): a new mount namespace whose
/// mounts are all private (none of its own propagates to the host's), owned by a new user
/// namespace in which this process is root (`0 uid 1`, `0 gid 1`, `setgroups` denied) —
/// unless it is root already, which needs none.
/// ([`unshare(2)`](https://man7.org/linux/man-pages/man2/unshare.2.html),
/// [`user_namespaces(7)`](https://man7.org/linux/man-pages/man7/user_namespaces.7.html)).
pub(crate) fn enter_view_namespaces() -> Result<(), Errno> {
    if is_root() {
        nix::sched::unshare(CloneFlags::CLONE_NEWNS)?;
    } else {
        let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
        nix::sched::unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)?;
        write_proc_file("/proc/self/setgroups".as_ref(), "deny")?;
        write_proc_file("/proc/self/uid_map".as_ref(), &format!("0 {uid} 1\n"))?;
        write_proc_file("/proc/self/gid_map".as_ref(), &format!("0 {gid} 1\n"))?;
    }
    make_mounts_private()
}

/// `open_tree(dir, "", OPEN_TREE_CLONE|AT_RECURSIVE|AT_EMPTY_PATH|OPEN_TREE_CLOEXEC)`
/// ([`open_tree(2)`](https://man7.org/linux/man-pages/man2/open_tree.2.html)): a detached
/// copy of the tree at `dir` (a bind of `dir`, with every mount below it).
pub(crate) fn clone_tree_recursive(dir: BorrowedFd<'_>) -> Result<OwnedFd, Errno> {
    use rustix::mount::OpenTreeFlags;
    rustix::mount::open_tree(
        dir,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_RECURSIVE
            | OpenTreeFlags::AT_EMPTY_PATH,
    )
    .map_err(rustix_errno)
}

/// The name of the empty file, in the directory given to [`reuse_mount_points`], whose hard
/// links are mount points of non-directories.
pub(crate) const MOUNT_POINT_ANCHOR: &str = "mount-point";

/// Creates in `dir` an empty directory or file for each `(name, is_directory)`, as
/// [`create_mount_points`] does, but accepts one that exists already (a mount point left
/// on disk by an earlier build in the same directory). On failure, the name that failed.
///
/// With `anchor` (a directory on the same mount as `dir`), a file's mount point is a hard
/// link to one empty file there, [`MOUNT_POINT_ANCHOR`] (created the first time): a mount
/// is on a name, not on an inode, and a link costs the filesystem no inode. (An inode
/// allocation on an ext4 without a journal skips every inode freed in the last half
/// minute, one read each: after a few thousand builds, 50–200 µs per file, against 8 µs
/// per link.) Where a link cannot be made (another filesystem, too many links), the mount
/// point is a new empty file.
pub(crate) fn reuse_mount_points<'a>(
    dir: BorrowedFd<'_>,
    entries: &'a [(String, bool)],
    anchor: Option<BorrowedFd<'_>>,
) -> Result<(), (&'a str, Errno)> {
    use rustix::fs::{AtFlags, Mode, OFlags};
    let new_file = |name: &str| {
        rustix::fs::openat(
            dir,
            name,
            OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map(drop)
    };
    let mut anchor = anchor;
    for (name, is_dir) in entries {
        let created = match (is_dir, anchor) {
            (true, _) => rustix::fs::mkdirat(dir, name.as_str(), Mode::from_raw_mode(0o755)),
            (false, None) => new_file(name),
            (false, Some(at)) => {
                let link = || {
                    rustix::fs::linkat(at, MOUNT_POINT_ANCHOR, dir, name.as_str(), AtFlags::empty())
                };
                let linked = match link() {
                    Err(rustix::io::Errno::NOENT) => rustix::fs::openat(
                        at,
                        MOUNT_POINT_ANCHOR,
                        OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC,
                        Mode::from_raw_mode(0o444),
                    )
                    .and_then(|_| link()),
                    other => other,
                };
                match linked {
                    Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
                    Err(_) => {
                        anchor = None;
                        new_file(name)
                    }
                }
            }
        };
        match created {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err((name.as_str(), rustix_errno(e))),
        }
    }
    Ok(())
}

/// Removes entry `name` of `dir` (a directory, file or symlink), first detaching what is
/// mounted on it (`umount2(MNT_DETACH)` of `dir_path/name`); one that is not there is
/// no error.
pub(crate) fn remove_mount_point(
    dir: BorrowedFd<'_>,
    dir_path: &Path,
    name: &str,
) -> Result<(), Errno> {
    use rustix::fs::AtFlags;
    match nix::mount::umount2(&dir_path.join(name), MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(e),
    }
    let removed = match rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR) {
        Err(rustix::io::Errno::NOTDIR) => rustix::fs::unlinkat(dir, name, AtFlags::empty()),
        other => other,
    };
    match removed {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(rustix_errno(e)),
    }
}

/// `symlinkat(target, dir, name)`, replacing an entry `name` that is there already.
pub(crate) fn replace_symlink(dir: BorrowedFd<'_>, name: &str, target: &Path) -> Result<(), Errno> {
    use rustix::fs::AtFlags;
    match rustix::fs::symlinkat(target, dir, name) {
        Err(rustix::io::Errno::EXIST) => {
            let _ = rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR);
            let _ = rustix::fs::unlinkat(dir, name, AtFlags::empty());
            rustix::fs::symlinkat(target, dir, name).map_err(rustix_errno)
        }
        other => other.map_err(rustix_errno),
    }
}

/// `MS_REC|MS_PRIVATE` on `/`.
pub(crate) fn make_mounts_private() -> Result<(), Errno> {
    nix::mount::mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE)
}

/// `open_tree(AT_FDCWD, source, OPEN_TREE_CLONE|OPEN_TREE_CLOEXEC)`
/// ([`open_tree(2)`](https://man7.org/linux/man-pages/man2/open_tree.2.html)): a detached,
/// non-recursive bind mount of `source`.
pub(crate) fn detach_tree(source: &Path) -> Result<OwnedFd, Errno> {
    use rustix::mount::OpenTreeFlags;
    rustix::mount::open_tree(
        rustix::fs::CWD,
        source,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )
    .map_err(rustix_errno)
}

/// `move_mount(tree, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH)`
/// ([`move_mount(2)`](https://man7.org/linux/man-pages/man2/move_mount.2.html)): attaches a
/// tree from [`detach_tree`] at `target`.
pub(crate) fn attach_tree(tree: BorrowedFd<'_>, target: &Path) -> Result<(), Errno> {
    attach_tree_at(tree, rustix::fs::CWD, target)
}

/// [`attach_tree`] at `target` looked up from `dir`.
fn attach_tree_at(
    tree: BorrowedFd<'_>,
    dir: BorrowedFd<'_>,
    target: impl rustix::path::Arg,
) -> Result<(), Errno> {
    use rustix::mount::MoveMountFlags;
    rustix::mount::move_mount(
        tree,
        "",
        dir,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(rustix_errno)
}

/// How a step on many entries of one directory failed: the entry (`None`: the directory
/// itself) and the `errno`.
pub(crate) type BatchError<T> = (Option<T>, Errno);

/// `open(dir, O_PATH|O_DIRECTORY|O_CLOEXEC)`: a directory to look its entries up in.
pub(crate) fn open_directory(dir: &Path) -> Result<OwnedFd, Errno> {
    use rustix::fs::{Mode, OFlags};
    rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(rustix_errno)
}

/// What entry `name` of `dir` is, not following a symlink
/// (`statx(dirfd, name, AT_SYMLINK_NOFOLLOW, STATX_TYPE)`), and a symlink's target
/// (`readlinkat`): the kind of mount point an input needs, with its directory looked up
/// once for all its entries.
pub(crate) fn inspect_entry(
    dir: BorrowedFd<'_>,
    name: &std::ffi::OsStr,
) -> Result<super::plan::InputKind, Errno> {
    use rustix::fs::{AtFlags, FileType, StatxFlags};
    use std::os::unix::ffi::OsStringExt;
    let st = rustix::fs::statx(dir, name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::TYPE)
        .map_err(rustix_errno)?;
    Ok(match FileType::from_raw_mode(st.stx_mode.into()) {
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(dir, name, Vec::new()).map_err(rustix_errno)?;
            super::plan::InputKind::Symlink(
                std::ffi::OsString::from_vec(target.into_bytes()).into(),
            )
        }
        FileType::Directory => super::plan::InputKind::Directory,
        _ => super::plan::InputKind::File,
    })
}

/// [`detach_tree`] of each `dir/name`, with `dir` looked up once
/// (`open_tree(dirfd, name, …)`). With `restrict`, the trees are taken from a bind of
/// `dir` onto itself remounted with those flags added ([`restrict_at_source`]), so that each
/// comes restricted (a bind mount keeps the flags of the mount it is taken from): one
/// remount for a directory of a thousand inputs, not a `mount_setattr` of each. Where that
/// bind cannot be made, the trees are taken from `dir` as it is; the second value says
/// whether they came restricted. On failure, the name that failed (`None`: `dir`).
pub(crate) fn detach_trees<'a>(
    dir: &Path,
    names: &'a [String],
    restrict: Option<RemountFlags>,
) -> Result<TreeBatch, BatchError<&'a str>> {
    use rustix::mount::OpenTreeFlags;
    let restricted = restrict.is_some_and(|flags| restrict_at_source(dir, flags).is_ok());
    let dirfd = open_directory(dir).map_err(|e| (None, e))?;
    let trees = names
        .iter()
        .map(|name| {
            rustix::mount::open_tree(
                dirfd.as_fd(),
                name.as_str(),
                OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
            )
            .map(|tree| (name.clone(), tree))
            .map_err(|e| (Some(name.as_str()), rustix_errno(e)))
        })
        .collect::<Result<_, _>>()?;
    Ok(TreeBatch { trees, restricted })
}

/// The trees [`detach_trees`] took, with their names.
pub(crate) struct TreeBatch {
    pub trees: Vec<(String, OwnedFd)>,
    /// Whether they came restricted.
    pub restricted: bool,
}

/// A bind of `dir` onto itself (not recursive), remounted with `flags` added
/// ([`remount`]), in this process's mount namespace: what is taken from `dir` afterwards
/// comes restricted. `Err` where it cannot be made — `EINVAL` where mounts of a more
/// privileged namespace lie beneath `dir` (a bind without them would uncover what they
/// hide) —, and then nothing is left mounted.
fn restrict_at_source(dir: &Path, flags: RemountFlags) -> Result<(), Errno> {
    nix::mount::mount(Some(dir), dir, NONE, MsFlags::MS_BIND, NONE)?;
    remount(dir, flags).inspect_err(|_| {
        let _ = detach_mount(dir);
    })
}

/// Creates in `dir` an empty directory (`mkdirat`) or file (`openat` `O_CREAT|O_EXCL`)
/// for each `(name, is_directory)`, with `dir` looked up once. Their modes are left to
/// the umask: the mounts hide them. On failure, the entry that failed (`None`: `dir`).
pub(crate) fn create_mount_points<'a>(
    dir: &Path,
    entries: &'a [(String, bool)],
) -> Result<(), BatchError<(&'a str, bool)>> {
    use rustix::fs::{Mode, OFlags};
    let dirfd = open_directory(dir).map_err(|e| (None, e))?;
    for (name, is_dir) in entries {
        let created = match is_dir {
            true => rustix::fs::mkdirat(&dirfd, name.as_str(), Mode::from_raw_mode(0o755)),
            false => rustix::fs::openat(
                &dirfd,
                name.as_str(),
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )
            .map(drop),
        };
        created.map_err(|e| (Some((name.as_str(), *is_dir)), rustix_errno(e)))?;
    }
    Ok(())
}

/// [`attach_tree`] of each `(name, tree)` onto `target/name`, with `target` looked up
/// once, each tree restricted with `flags` unless the batch came restricted from
/// [`detach_trees`]: before it is attached with `restrict_detached`
/// ([`restrict_tree`]: one syscall, on the detached tree, no lookup), else — or once the
/// kernel has answered `ENOSYS` (before Linux 5.12) — after, with [`remount`] keeping the
/// flags it came with (`fstatvfs` of the tree). On failure, the name that failed and
/// whether it was its restriction (`true`) or its attach (`false`) (`None`: `target`).
pub(crate) fn attach_trees<'a>(
    batch: &'a TreeBatch,
    target: &Path,
    flags: RemountFlags,
    restrict_detached: bool,
) -> Result<(), BatchError<(&'a str, bool)>> {
    let dirfd = open_directory(target).map_err(|e| (None, e))?;
    let mut detached = restrict_detached;
    for (name, tree) in &batch.trees {
        let restricting = |e| (Some((name.as_str(), true)), e);
        // A batch restricted at its source has nothing left to restrict.
        if detached && !batch.restricted {
            match restrict_tree(tree.as_fd(), flags) {
                Ok(()) => {}
                Err(Errno::ENOSYS) => detached = false,
                Err(e) => return Err(restricting(e)),
            }
        }
        let current = match batch.restricted || detached {
            true => None,
            false => Some(
                nix::sys::statvfs::fstatvfs(tree)
                    .map_err(restricting)?
                    .flags(),
            ),
        };
        attach_tree_at(tree.as_fd(), dirfd.as_fd(), name.as_str())
            .map_err(|e| (Some((name.as_str(), false)), e))?;
        if let Some(current) = current {
            remount_keeping(&target.join(name), current, flags).map_err(restricting)?;
        }
    }
    Ok(())
}

/// [`mount_setattr(2)`](https://man7.org/linux/man-pages/man2/mount_setattr.2.html) of the
/// mount `tree` (a tree detached by `open_tree`, not yet attached): sets the attributes of
/// `flags` and leaves every other one as it is (a flag locked by a more privileged mount
/// namespace is never dropped, since none is cleared). Linux 5.12 or later.
fn restrict_tree(tree: BorrowedFd<'_>, flags: RemountFlags) -> Result<(), Errno> {
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const MOUNT_ATTR_NOSUID: u64 = 0x2;
    const MOUNT_ATTR_NODEV: u64 = 0x4;
    const MOUNT_ATTR_NOEXEC: u64 = 0x8;
    /// `struct mount_attr` of `<linux/mount.h>` (`MOUNT_ATTR_SIZE_VER0`).
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let mut attr_set = 0;
    for (has, bit) in [
        (flags.read_only, MOUNT_ATTR_RDONLY),
        (flags.nosuid, MOUNT_ATTR_NOSUID),
        (flags.nodev, MOUNT_ATTR_NODEV),
        (flags.noexec, MOUNT_ATTR_NOEXEC),
    ] {
        if has {
            attr_set |= bit;
        }
    }
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr(2) reads `size_of::<MountAttr>()` bytes from a live
    // `MountAttr` laid out as the kernel's `struct mount_attr`; the path is a static empty
    // C string, resolved against `tree` by `AT_EMPTY_PATH`.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            nix::libc::AT_EMPTY_PATH as nix::libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(r).map(drop)
}

/// [`mount(2)`](https://man7.org/linux/man-pages/man2/mount.2.html)
/// `MS_REMOUNT|MS_BIND` with `flags` added to the flags the mount already has
/// ([`statvfs(3)`](https://man7.org/linux/man-pages/man3/statvfs.3.html)): dropping a
/// flag locked by a more privileged mount namespace would be refused with `EPERM`.
pub(crate) fn remount(target: &Path, flags: RemountFlags) -> Result<(), Errno> {
    let current = nix::sys::statvfs::statvfs(target)?.flags();
    remount_keeping(target, current, flags)
}

/// [`remount`] of a mount whose flags are known to be `current`.
fn remount_keeping(target: &Path, current: FsFlags, flags: RemountFlags) -> Result<(), Errno> {
    let mut ms = MsFlags::MS_REMOUNT | MsFlags::MS_BIND;
    for (has, flag) in [
        (current.contains(FsFlags::ST_RDONLY), MsFlags::MS_RDONLY),
        (current.contains(FsFlags::ST_NOSUID), MsFlags::MS_NOSUID),
        (current.contains(FsFlags::ST_NODEV), MsFlags::MS_NODEV),
        (current.contains(FsFlags::ST_NOEXEC), MsFlags::MS_NOEXEC),
        (current.contains(FsFlags::ST_NOATIME), MsFlags::MS_NOATIME),
        (
            current.contains(FsFlags::ST_NODIRATIME),
            MsFlags::MS_NODIRATIME,
        ),
        (current.contains(FsFlags::ST_RELATIME), MsFlags::MS_RELATIME),
        (flags.read_only, MsFlags::MS_RDONLY),
        (flags.nosuid, MsFlags::MS_NOSUID),
        (flags.nodev, MsFlags::MS_NODEV),
        (flags.noexec, MsFlags::MS_NOEXEC),
    ] {
        if has {
            ms |= flag;
        }
    }
    nix::mount::mount(NONE, target, NONE, ms, NONE)
}

/// [`mount(2)`](https://man7.org/linux/man-pages/man2/mount.2.html) of a `tmpfs`,
/// `nosuid,nodev`.
pub(crate) fn mount_tmpfs(target: &Path, options: &str) -> Result<(), Errno> {
    nix::mount::mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options),
    )
}

/// [`mount(2)`](https://man7.org/linux/man-pages/man2/mount.2.html) of an overlayfs,
/// `nosuid,nodev`, with `userxattr` (its own xattrs in the `user.overlay.` namespace, as an
/// unprivileged overlay must) and `uuid=off` (otherwise a new overlay stores its UUID as
/// `user.overlay.uuid` on the upper directory: the build's store directory, reused by the
/// next build). Commas, colons and backslashes in the paths are escaped.
pub(crate) fn mount_overlay(
    target: &Path,
    lower: &Path,
    upper: &Path,
    work: &Path,
) -> Result<(), Errno> {
    let escape = |p: &Path| -> Result<String, Errno> {
        let s = p.to_str().ok_or(Errno::EINVAL)?;
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            if matches!(c, ',' | ':' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
        Ok(out)
    };
    let options = format!(
        "lowerdir={},upperdir={},workdir={},userxattr,uuid=off",
        escape(lower)?,
        escape(upper)?,
        escape(work)?
    );
    nix::mount::mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
}

/// [`umount2(2)`](https://man7.org/linux/man-pages/man2/umount2.2.html) with `MNT_DETACH`.
pub(crate) fn detach_mount(target: &Path) -> Result<(), Errno> {
    nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH)
}

/// [`rmdir(2)`](https://man7.org/linux/man-pages/man2/rmdir.2.html).
pub(crate) fn remove_directory(path: &Path) -> Result<(), Errno> {
    fs::remove_dir(path).map_err(|e| io_errno(&e))
}

/// Copies the tree of `source` (a directory, e.g. a detached bind mount, read through
/// `/proc/self/fd/N`) into the existing, empty directory `target`, creating the entries
/// of every directory in an order unrelated to their names or to the source's directory
/// order ([`shuffled`]): on a `tmpfs`, which lists a directory in creation order, a
/// builder that reads directories unsorted sees another order than on the store's
/// filesystem. Modes and modification times are kept; the copies belong to the caller's
/// filesystem ids. Regular files, directories and symlinks only (a store holds nothing
/// else); `target` gets `source`'s mode last.
pub(crate) fn copy_tree_shuffled(source: &Path, target: &Path) -> Result<(), Errno> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;
    let err = |e: std::io::Error| io_errno(&e);
    let mut entries = fs::read_dir(source)
        .map_err(err)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    entries.sort_by_key(|name| shuffled(name.as_bytes()));
    for name in entries {
        let (from, to) = (source.join(&name), target.join(&name));
        let meta = fs::symlink_metadata(&from).map_err(err)?;
        let kind = meta.file_type();
        if kind.is_dir() {
            fs::create_dir(&to).map_err(err)?;
            copy_tree_shuffled(&from, &to)?;
        } else if kind.is_symlink() {
            symlink(fs::read_link(&from).map_err(err)?, &to).map_err(err)?;
        } else if kind.is_file() {
            // `fs::copy` gives the copy the source's permission bits.
            fs::copy(&from, &to).map_err(err)?;
        } else {
            return Err(Errno::EINVAL);
        }
        set_mtime_of(&to, &meta)?;
    }
    let meta = fs::metadata(source).map_err(err)?;
    fs::set_permissions(target, fs::Permissions::from_mode(meta.mode() & 0o7777)).map_err(err)?;
    set_mtime_of(target, &meta)
}

/// The position of a name in [`copy_tree_shuffled`]'s order: FNV-1a of the name, mixed
/// (a fixed permutation, the same for every build, unlike any listing order).
fn shuffled(name: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name {
        h = (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ (h >> 29)
}

/// [`utimensat(2)`](https://man7.org/linux/man-pages/man2/utimensat.2.html) with
/// `AT_SYMLINK_NOFOLLOW`: `path` gets `meta`'s modification time (and as access time).
fn set_mtime_of(path: &Path, meta: &fs::Metadata) -> Result<(), Errno> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    let mtime = TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    utimensat(None, path, &mtime, &mtime, UtimensatFlags::NoFollowSymlink)
}

/// [`mount(2)`](https://man7.org/linux/man-pages/man2/mount.2.html) of a `devpts`,
/// `nosuid,noexec`.
pub(crate) fn mount_devpts(target: &Path, options: &str) -> Result<(), Errno> {
    nix::mount::mount(
        Some("devpts"),
        target,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(options),
    )
}

/// [`mount(2)`](https://man7.org/linux/man-pages/man2/mount.2.html) of `proc`,
/// `nosuid,nodev,noexec`.
pub(crate) fn mount_proc(target: &Path) -> Result<(), Errno> {
    nix::mount::mount(
        Some("proc"),
        target,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        NONE,
    )
}

/// [`chdir(2)`](https://man7.org/linux/man-pages/man2/chdir.2.html) into `new_root`, then
/// [`pivot_root(2)`](https://man7.org/linux/man-pages/man2/pivot_root.2.html)`(".", ".")`:
/// the old root ends up mounted on top of the new one, ready to be detached.
pub(crate) fn pivot_root_into(new_root: &Path) -> Result<(), Errno> {
    nix::unistd::chdir(new_root)?;
    nix::unistd::pivot_root(".", ".")
}

/// [`umount2(2)`](https://man7.org/linux/man-pages/man2/umount2.2.html)`(".",
/// MNT_DETACH)` then `chdir("/")`.
pub(crate) fn detach_old_root() -> Result<(), Errno> {
    nix::mount::umount2(".", MntFlags::MNT_DETACH)?;
    nix::unistd::chdir("/")
}

// ---- UTS and network ----------------------------------------------------------------------

/// [`sethostname(2)`](https://man7.org/linux/man-pages/man2/sethostname.2.html).
pub(crate) fn set_hostname(name: &str) -> Result<(), Errno> {
    nix::unistd::sethostname(name)
}

/// [`setdomainname(2)`](https://man7.org/linux/man-pages/man2/setdomainname.2.html).
pub(crate) fn set_domainname(name: &str) -> Result<(), Errno> {
    rustix::system::setdomainname(name.as_bytes()).map_err(rustix_errno)
}

/// Brings `lo` up:
/// [`socket(2)`](https://man7.org/linux/man-pages/man2/socket.2.html) `AF_INET`, then
/// [`ioctl(2)`](https://man7.org/linux/man-pages/man2/ioctl.2.html) `SIOCSIFFLAGS` with
/// `IFF_UP|IFF_LOOPBACK|IFF_RUNNING` (see
/// [`netdevice(7)`](https://man7.org/linux/man-pages/man7/netdevice.7.html)).
pub(crate) fn loopback_up() -> Result<(), Errno> {
    use nix::libc;
    // SAFETY: socket(2) takes only integers; the result is checked before it is owned.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    let raw = Errno::result(raw)?;
    // SAFETY: `raw` is a descriptor socket(2) just returned to us and nothing else owns.
    let socket: OwnedFd = unsafe { std::os::fd::FromRawFd::from_raw_fd(raw) };
    // SAFETY: `ifreq` is a plain C struct (arrays and a union of integers), for which all
    // bits zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as i16;
    // SAFETY: SIOCSIFFLAGS reads a `struct ifreq`, and `request` is one, alive and
    // initialised for the whole call; the descriptor is a valid socket.
    let r = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &mut request) };
    Errno::result(r).map(|_| ())
}

// ---- the log terminal (ksbuild's side) ------------------------------------------------------

/// A pseudo-terminal pair for the builder's output, `(master, slave)`, both close-on-exec,
/// the slave in raw mode (no `\n` → `\r\n`), as Nix gives its builders:
/// [`posix_openpt(3)`](https://man7.org/linux/man-pages/man3/posix_openpt.3.html),
/// [`unlockpt(3)`](https://man7.org/linux/man-pages/man3/unlockpt.3.html),
/// `ioctl(TIOCGPTPEER)` ([`ioctl_tty(2)`](https://man7.org/linux/man-pages/man2/ioctl_tty.2.html)),
/// [`cfmakeraw(3)`](https://man7.org/linux/man-pages/man3/termios.3.html).
pub(crate) fn open_raw_pty() -> Result<(OwnedFd, OwnedFd), Errno> {
    use rustix::pty::{grantpt, ioctl_tiocgptpeer, openpt, unlockpt, OpenptFlags};
    use rustix::termios::{tcgetattr, tcsetattr, OptionalActions};
    let flags = OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC;
    let master = openpt(flags).map_err(rustix_errno)?;
    grantpt(&master).map_err(rustix_errno)?;
    unlockpt(&master).map_err(rustix_errno)?;
    let slave = ioctl_tiocgptpeer(&master, flags).map_err(rustix_errno)?;
    let mut termios = tcgetattr(&slave).map_err(rustix_errno)?;
    termios.make_raw();
    tcsetattr(&slave, OptionalActions::Now, &termios).map_err(rustix_errno)?;
    Ok((master, slave))
}

// ---- the zygote -----------------------------------------------------------------------

/// [`socketpair(2)`](https://man7.org/linux/man-pages/man2/socketpair.2.html):
/// `AF_UNIX`, `SOCK_SEQPACKET` (message boundaries kept), close-on-exec.
pub(crate) fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), Errno> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .map_err(rustix_errno)
}

/// [`setsockopt(2)`](https://man7.org/linux/man-pages/man2/setsockopt.2.html)
/// `SO_RCVTIMEO`: a `recvmsg` on `socket` fails with `EAGAIN` after `limit`.
pub(crate) fn set_receive_timeout(
    socket: BorrowedFd<'_>,
    limit: std::time::Duration,
) -> Result<(), Errno> {
    rustix::net::sockopt::set_socket_timeout(
        socket,
        rustix::net::sockopt::Timeout::Recv,
        Some(limit),
    )
    .map_err(rustix_errno)
}

/// Most descriptors one message carries.
const MAX_FDS: usize = 4;

/// [`sendmsg(2)`](https://man7.org/linux/man-pages/man2/sendmsg.2.html) of `bytes` with
/// `fds` as `SCM_RIGHTS`, retried on `EINTR`.
pub(crate) fn send_with_fds(
    socket: BorrowedFd<'_>,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), Errno> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    let mut space = [0u8; rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(Errno::E2BIG);
    }
    loop {
        match rustix::net::sendmsg(
            socket,
            &[std::io::IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(rustix_errno(e)),
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(_) => return Err(Errno::EMSGSIZE),
        }
    }
}

/// [`recvmsg(2)`](https://man7.org/linux/man-pages/man2/recvmsg.2.html) of one message
/// into `buf`, with the descriptors it carries (close-on-exec); 0 bytes means the peer is
/// gone. Retried on `EINTR`.
pub(crate) fn recv_with_fds(
    socket: BorrowedFd<'_>,
    buf: &mut [u8],
) -> Result<(usize, Vec<OwnedFd>), Errno> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [0u8; rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = loop {
        match rustix::net::recvmsg(
            socket,
            &mut [std::io::IoSliceMut::new(buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(rustix_errno(e)),
            Ok(r) => break r,
        }
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    Ok((received.bytes, fds))
}

/// [`sigaction(2)`](https://man7.org/linux/man-pages/man2/sigaction.2.html) of `SIGCHLD`:
/// `SIG_IGN` (the kernel reaps children at once: the zygote never waits for its
/// children) or `SIG_DFL`.
pub(crate) fn set_children_reaped_by_kernel(reaped: bool) -> Result<(), Errno> {
    use nix::sys::signal::SigHandler;
    let handler = if reaped {
        SigHandler::SigIgn
    } else {
        SigHandler::SigDfl
    };
    // SAFETY: `SIG_IGN` and `SIG_DFL` install no handler, so no code runs in signal
    // context.
    unsafe { nix::sys::signal::signal(Signal::SIGCHLD, handler) }.map(|_| ())
}

/// [`pidfd_send_signal(2)`](https://man7.org/linux/man-pages/man2/pidfd_send_signal.2.html)
/// with `SIGKILL`.
pub(crate) fn pidfd_kill(pidfd: BorrowedFd<'_>) -> Result<(), Errno> {
    rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::Kill).map_err(rustix_errno)
}

/// Makes the child `command` will start receive `SIGTERM` when the thread that starts it
/// ends (`PR_SET_PDEATHSIG`, armed between `fork` and `exec`): a helper process (an `ssh`
/// to a remote builder, QEMU) that must not outlive ksbuild, killed or not. The child also
/// starts with no signal blocked
/// ([`sigprocmask(2)`](https://man7.org/linux/man-pages/man2/sigprocmask.2.html)):
/// `std::process` leaves it the parent thread's mask, and a caller taking signals with
/// `sigwait` blocks them (`ksbuild vm`), which would make QEMU deaf to `SIGTERM`.
pub fn terminate_with_parent(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the forked child before `exec`; it only makes two
    // async-signal-safe system calls (`prctl`, `sigprocmask`) on its own stack and touches
    // no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)?;
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
                .map_err(std::io::Error::from)
        });
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn mount_points_of_files_are_links_to_one_anchor_and_those_there_are_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let (root, anchor) = (tmp.path().join("root"), tmp.path().join("work"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&anchor).unwrap();
        std::fs::write(root.join("kept"), "").unwrap();
        let dir = open_directory(&root).unwrap();
        let at = open_directory(&anchor).unwrap();
        let entries: Vec<(String, bool)> =
            [("a", false), ("b", false), ("d", true), ("kept", false)]
                .iter()
                .map(|(n, d)| (n.to_string(), *d))
                .collect();
        reuse_mount_points(dir.as_fd(), &entries, Some(at.as_fd())).unwrap();
        let ino = |p: &Path| std::fs::symlink_metadata(p).unwrap().ino();
        let anchor_file = anchor.join(MOUNT_POINT_ANCHOR);
        assert_eq!(ino(&root.join("a")), ino(&anchor_file));
        assert_eq!(ino(&root.join("b")), ino(&anchor_file));
        assert_eq!(std::fs::metadata(&anchor_file).unwrap().nlink(), 3);
        assert!(std::fs::metadata(root.join("d")).unwrap().is_dir());
        assert_ne!(ino(&root.join("kept")), ino(&anchor_file));
        // Again: everything is there already.
        reuse_mount_points(dir.as_fd(), &entries, Some(at.as_fd())).unwrap();
        // Without an anchor (or where no link can be made), each file is its own.
        let more = [("c".to_string(), false), ("e".to_string(), false)];
        reuse_mount_points(dir.as_fd(), &more, None).unwrap();
        assert_ne!(ino(&root.join("c")), ino(&root.join("e")));
        assert_ne!(ino(&root.join("c")), ino(&anchor_file));
        // An anchor directory on another mount (here: a directory that is not one) falls
        // back to new files.
        let elsewhere = open_directory(Path::new("/proc/self")).unwrap();
        reuse_mount_points(
            dir.as_fd(),
            &[("f".to_string(), false)],
            Some(elsewhere.as_fd()),
        )
        .unwrap();
        assert!(std::fs::metadata(root.join("f")).unwrap().is_file());
    }
}
