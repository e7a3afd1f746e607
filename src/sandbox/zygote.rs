//! The zygote (`ksbuild __sandbox-zygote <ksbuild pid>`): a small, single-threaded process
//! that clones the sandboxes' PID 1s — ahead of time, so that a build finds its namespaces
//! already made — and reaps them. Does syscalls.
//!
//! Making a build's seven namespaces is the largest fixed cost of a sandbox (about 1 ms
//! here, most of it the network namespace), and much of it is spent waiting on locks the
//! kernel's clean-up of earlier namespaces holds. Without the zygote, each build pays it,
//! plus starting an init process, on its critical path. With it, the next build's PID 1 is
//! cloned while the current build runs.
//!
//! ksbuild starts it once per executor, from a thread that outlives every build (the
//! zygote dies of `PR_SET_PDEATHSIG` with that thread, and its PID 1s with it). Its stdin
//! is one end of a `SOCK_SEQPACKET` pair. Each request is one message: ksbuild's start
//! time for timings (16 bytes, little-endian micros; 0 for none), then the id maps as JSON
//! (`[[file, contents], …]`), with three descriptors — what PID 1 gets as stdin (the pipe
//! that carries the plan), stdout (the build's terminal) and the status pipe —, and a
//! fourth, the store view (see `views.rs`), if the plan attaches one. ksbuild has already
//! done the plan's host steps. The zygote:
//!
//! 1. takes the waiting PID 1 if it has one with the same id maps, else clones one: PID 1
//!    of new user, mount, PID, IPC, UTS, network and cgroup namespaces, whose id maps the
//!    zygote writes from outside, as the init process would ([`super::init`]);
//! 2. hands it the start time and the three descriptors over a `SOCK_SEQPACKET` pair of
//!    their own — PID 1 then reads the plan and goes on as in [`super::pid1`];
//! 3. answers ksbuild with 4 bytes (0, or the `errno` of what failed) and, on success, a
//!    pidfd of PID 1, with which ksbuild kills the build on a time limit, and a descriptor
//!    of PID 1's mount namespace (see `supervisor.rs`);
//! 4. from the second request on, clones the next PID 1, to wait for the next request;
//! 5. when a PID 1 ends, reaps it and reports [`StatusMessage::Finished`] on its status
//!    pipe, as the init process would — the kernel has killed every other process of its
//!    PID namespace before it reports PID 1's death.
//!
//! The zygote exits when ksbuild closes its end, killing the waiting PID 1. A waiting PID 1
//! holds no host path, descriptor or mount of any build: everything it will touch comes
//! with the request.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::pid1;
use super::protocol::StatusMessage;
use super::sys;
use super::BuilderStatus;

/// The argument that makes the `ksbuild` binary run [`zygote_main`].
pub const ZYGOTE_ARG: &str = "__sandbox-zygote";

/// Size of the start time at the head of a request (and of what PID 1 is handed).
pub(crate) const ORIGIN_LEN: usize = 16;

/// The id maps of a PID 1: `(file under /proc/<pid>/, contents)`, in writing order.
pub(crate) type IdMaps = Vec<(String, String)>;

/// Entry point of the zygote; `main` calls it when `argv[1]` is [`ZYGOTE_ARG`]. Never
/// returns.
pub fn zygote_main() -> ! {
    let code = match serve() {
        Ok(()) => 0,
        Err(_) => 1,
    };
    std::process::exit(code)
}

/// A PID 1 cloned by the zygote.
struct Pid1 {
    pid: Pid,
    pidfd: OwnedFd,
    /// The zygote's end of the pair PID 1 gets its request on; it also tells PID 1 that
    /// the zygote is alive, so it is kept until PID 1 is reaped.
    channel: OwnedFd,
    /// PID 1's mount namespace (`/proc/<pid>/ns/mnt`), handed to ksbuild with the pidfd:
    /// see [`super::supervisor`] for why ksbuild, not PID 1's exit, tears it down.
    mount_ns: Option<OwnedFd>,
    maps: IdMaps,
}

impl Pid1 {
    /// Clones a PID 1 into new namespaces and writes its id maps; it waits for a request.
    fn spawn(maps: &IdMaps) -> Result<Pid1, Errno> {
        let (ours, theirs) = sys::seqpacket_pair()?;
        let pid = {
            let mut child = || pid1::waiting_main(theirs.as_fd());
            sys::clone_into_namespaces(&mut child)
        }?;
        drop(theirs);
        let reap = |e: Errno| {
            let _ = sys::kill(pid);
            let _ = sys::wait(pid);
            e
        };
        for (file, contents) in maps {
            let path = format!("/proc/{pid}/{file}");
            sys::write_proc_file(path.as_ref(), contents).map_err(reap)?;
        }
        let pidfd = sys::pidfd_open(pid).map_err(reap)?;
        let mount_ns = sys::open_namespace(pid, "mnt").ok();
        Ok(Pid1 {
            pid,
            pidfd,
            channel: ours,
            mount_ns,
            maps: maps.clone(),
        })
    }

    /// Kills and reaps a PID 1 that will not be used.
    fn discard(self) {
        let _ = sys::kill(self.pid);
        let _ = sys::wait(self.pid);
    }
}

/// A PID 1 running a build, and the status pipe to report its end on.
struct Running {
    pid1: Pid1,
    status: OwnedFd,
}

impl Running {
    /// Reaps PID 1 (it has ended) and reports how.
    fn finish(self) {
        let message = match sys::wait(self.pid1.pid) {
            Ok(WaitStatus::Exited(_, code)) => StatusMessage::Finished {
                status: BuilderStatus::Exited(code),
            },
            Ok(WaitStatus::Signaled(_, signal, _)) => StatusMessage::Finished {
                status: BuilderStatus::Signaled(signal as i32),
            },
            Ok(other) => StatusMessage::InitFailed {
                message: format!("unexpected wait status {other:?}"),
            },
            Err(e) => StatusMessage::InitFailed {
                message: format!("waitpid: {e}"),
            },
        };
        message.send(self.status.as_fd());
    }
}

/// The start of a helper process of ksbuild (the zygote, the store views' keeper), run as
/// `<binary> <argument> <ksbuild pid>`: names it, closes every descriptor but stdin (its
/// socket) and stdout/stderr, and ties its life to ksbuild's (`PR_SET_PDEATHSIG`), failing
/// if ksbuild is already gone.
pub(crate) fn start_helper(name: &std::ffi::CStr) -> Result<(), Errno> {
    sys::set_process_name(name);
    sys::close_fds_from_3()?;
    let expected_parent: Option<i32> = std::env::args().nth(2).and_then(|a| a.parse().ok());
    sys::set_parent_death_signal()?;
    if Some(sys::parent_pid()) != expected_parent {
        return Err(Errno::ESRCH);
    }
    Ok(())
}

fn serve() -> Result<(), Errno> {
    start_helper(c"ksbuild-zygote")?;
    // As in the init process: exact modes whatever ksbuild's umask, and PID 1s that do not
    // inherit root's supplementary groups.
    sys::set_umask(0);
    if sys::is_root() {
        sys::clear_supplementary_groups()?;
    }
    sys::set_children_reaped_by_kernel(false)?;
    let stdin = std::io::stdin();
    let socket = stdin.as_fd();
    let mut waiting: Option<Pid1> = None;
    let mut running: Vec<Running> = Vec::new();
    let mut served = 0u64;
    loop {
        let mut watched = vec![Some(socket), waiting.as_ref().map(|w| w.pidfd.as_fd())];
        watched.extend(running.iter().map(|r| Some(r.pid1.pidfd.as_fd())));
        let ready = sys::poll_readable(&watched, -1)?;
        drop(watched);
        for i in (0..running.len()).rev() {
            if ready[2 + i] {
                running.swap_remove(i).finish();
            }
        }
        if ready[1] {
            // The waiting PID 1 died (killed from outside): clone another when needed.
            if let Some(w) = waiting.take() {
                w.discard();
            }
        }
        if !ready[0] {
            continue;
        }
        let mut request = [0u8; 16 * 1024];
        let (n, fds) = sys::recv_with_fds(socket, &mut request)?;
        if n == 0 {
            if let Some(w) = waiting.take() {
                w.discard();
            }
            return Ok(());
        }
        let Some((origin, maps, fds)) = parse_request(&request[..n], fds) else {
            reply(socket, Err(Errno::EINVAL));
            continue;
        };
        let pid1 = match waiting.take() {
            Some(w) if w.maps == maps => Ok(w),
            other => {
                if let Some(w) = other {
                    w.discard();
                }
                Pid1::spawn(&maps)
            }
        };
        match pid1.and_then(|p| start(p, origin, fds)) {
            Ok(mut build) => {
                // The zygote's copy of the namespace goes now: the zygote must never be the
                // one that tears it down (that waits for an RCU grace period).
                let mount_ns = build.pid1.mount_ns.take();
                reply(socket, Ok((build.pid1.pidfd.as_fd(), mount_ns.as_ref())));
                drop(mount_ns);
                running.push(build);
                served += 1;
            }
            Err(e) => reply(socket, Err(e)),
        }
        // One request may be all there is (a `--check` of one derivation): the next PID 1
        // is made ahead only once builds come in a series.
        if served >= 2 && waiting.is_none() {
            waiting = Pid1::spawn(&maps).ok();
        }
    }
}

/// Splits a request into its start time, id maps and three or four descriptors.
fn parse_request(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Option<([u8; ORIGIN_LEN], IdMaps, Vec<OwnedFd>)> {
    if !(3..=4).contains(&fds.len()) {
        return None;
    }
    let origin: [u8; ORIGIN_LEN] = bytes.get(..ORIGIN_LEN)?.try_into().ok()?;
    let maps: IdMaps = serde_json::from_slice(&bytes[ORIGIN_LEN..]).ok()?;
    Some((origin, maps, fds))
}

/// Hands a request to `pid1`; the zygote keeps the status pipe to report its end.
fn start(pid1: Pid1, origin: [u8; ORIGIN_LEN], mut fds: Vec<OwnedFd>) -> Result<Running, Errno> {
    let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(|fd| fd.as_fd()).collect();
    let sent = sys::send_with_fds(pid1.channel.as_fd(), &origin, &borrowed);
    drop(borrowed);
    match sent {
        Ok(()) => Ok(Running {
            pid1,
            status: fds.swap_remove(2),
        }),
        Err(e) => {
            pid1.discard();
            Err(e)
        }
    }
}

/// Answers a request; if ksbuild is gone there is nobody to tell.
fn reply(socket: BorrowedFd<'_>, result: Result<(BorrowedFd<'_>, Option<&OwnedFd>), Errno>) {
    let _ = match result {
        Ok((pidfd, None)) => sys::send_with_fds(socket, &0i32.to_le_bytes(), &[pidfd]),
        Ok((pidfd, Some(ns))) => {
            sys::send_with_fds(socket, &0i32.to_le_bytes(), &[pidfd, ns.as_fd()])
        }
        Err(e) => sys::send_with_fds(socket, &(e as i32).to_le_bytes(), &[]),
    };
}
