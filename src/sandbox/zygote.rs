//! The zygote (`ksbuild __sandbox-zygote <ksbuild pid>`): a small, single-threaded process
//! that forks init processes on request, so that a build does not pay for `exec`ing,
//! loading and starting the ksbuild binary (about 2 ms here, most of a trivial build's
//! sandbox overhead). Does syscalls.
//!
//! ksbuild starts it once per executor, from a thread that outlives every build (the
//! zygote dies of `PR_SET_PDEATHSIG` with that thread; its init processes die with it, and
//! their PID 1s with them). Its stdin is one end of a `SOCK_SEQPACKET` pair. Each request
//! is one message: ksbuild's start time for timings (16 bytes, little-endian micros; 0 for
//! none) with three descriptors — what the init process gets as stdin (the control pipe),
//! stdout (the build's terminal) and stderr (the status pipe). The zygote forks; the child
//! becomes the init process ([`super::init`]) exactly as an `exec`ed one would, and the
//! zygote answers with 4 bytes (0, or the `errno` of what failed) and, on success, a pidfd
//! of the child, with which ksbuild watches and, if need be, kills it. The kernel reaps
//! the children (`SIGCHLD` ignored), so the zygote never waits; how an init process ended
//! is in what it reported on its status pipe. The zygote exits when ksbuild closes its end.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;

use super::init;
use super::protocol::Timer;
use super::sys;

/// The argument that makes the `ksbuild` binary run [`zygote_main`].
pub const ZYGOTE_ARG: &str = "__sandbox-zygote";

/// Size of a request's bytes.
pub(crate) const REQUEST_LEN: usize = 16;

/// Entry point of the zygote; `main` calls it when `argv[1]` is [`ZYGOTE_ARG`]. Never
/// returns.
pub fn zygote_main() -> ! {
    let code = match serve() {
        Ok(()) => 0,
        Err(_) => 1,
    };
    std::process::exit(code)
}

fn serve() -> Result<(), Errno> {
    sys::set_process_name(c"ksbuild-zygote");
    sys::close_fds_from_3()?;
    let expected_parent: Option<i32> = std::env::args().nth(2).and_then(|a| a.parse().ok());
    sys::set_parent_death_signal()?;
    if Some(sys::parent_pid()) != expected_parent {
        return Err(Errno::ESRCH);
    }
    sys::set_children_reaped_by_kernel(true)?;
    let me = sys::own_pid();
    let stdin = std::io::stdin();
    let socket = stdin.as_fd();
    loop {
        let mut request = [0u8; REQUEST_LEN + 1];
        let (n, fds) = sys::recv_with_fds(socket, &mut request)?;
        if n == 0 {
            return Ok(());
        }
        let fds: Result<[OwnedFd; 3], _> = fds.try_into();
        let (Ok(fds), REQUEST_LEN) = (fds, n) else {
            reply(socket, Err(Errno::EINVAL));
            continue;
        };
        let mut origin = [0u8; REQUEST_LEN];
        origin.copy_from_slice(&request[..REQUEST_LEN]);
        let origin = u128::from_le_bytes(origin);
        match sys::fork() {
            Ok(sys::Forked::Child) => {
                init::forked_main(fds, Timer::at((origin != 0).then_some(origin)), me)
            }
            Ok(sys::Forked::Parent(pid)) => {
                drop(fds);
                match sys::pidfd_open(pid) {
                    Ok(pidfd) => reply(socket, Ok(pidfd.as_fd())),
                    Err(e) => {
                        let _ = sys::kill(pid);
                        reply(socket, Err(e));
                    }
                }
            }
            Err(e) => reply(socket, Err(e)),
        }
    }
}

/// Answers a request; if ksbuild is gone there is nobody to tell.
fn reply(socket: BorrowedFd<'_>, result: Result<BorrowedFd<'_>, Errno>) {
    let _ = match result {
        Ok(pidfd) => sys::send_with_fds(socket, &0i32.to_le_bytes(), &[pidfd]),
        Err(e) => sys::send_with_fds(socket, &(e as i32).to_le_bytes(), &[]),
    };
}
