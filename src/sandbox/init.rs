//! The init process (`ksbuild __sandbox-init <ksbuild pid>`): a fresh, single-threaded
//! process that prepares the new root on the host, clones PID 1 into new namespaces,
//! writes its id maps, then waits for it — or kills it when ksbuild asks — and reports
//! how it ended. Does syscalls and I/O.
//!
//! Order, and why:
//!
//! 1. close inherited descriptors; umask 0; `PR_SET_PDEATHSIG` (and check ksbuild is still
//!    its parent, in case it died first);
//! 2. read the plan (one JSON line on stdin);
//! 3. apply the host steps: the store directory, `root_dir` itself (1775, group = the build
//!    group), with the inputs' mount points in it, and `build_dir` given to the build user —
//!    ordinary file operations on the host's filesystem, done here as the invoking user;
//! 4. `clone` with every namespace flag: the child is PID 1 of the new PID namespace, in a
//!    new user namespace where it has all capabilities but no mapped uid yet; it waits on a
//!    pipe;
//! 5. write `/proc/<pid>/setgroups`, `uid_map`, `gid_map` from here, the parent user
//!    namespace (root may map an unprivileged build uid only from outside), then release
//!    PID 1 with one byte; the pipe's write end stays open as PID 1's lifeline;
//! 6. wait on a pidfd of PID 1 and on stdin: if stdin becomes readable or hangs up (a
//!    timeout, or ksbuild is gone), `SIGKILL` PID 1;
//! 7. reap PID 1 and report. The kernel kills every other process of a PID namespace when
//!    its PID 1 dies, *before* that death is reported to the parent, so once `waitpid`
//!    returns nothing of the build is left.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::wait::WaitStatus;

use super::pid1;
use super::plan::Plan;
use super::protocol::{StatusMessage, Timer};
use super::step::{Step, StepContext};
use super::sys;
use super::BuilderStatus;

/// The argument that makes the `ksbuild` binary run [`init_main`].
pub const INIT_ARG: &str = "__sandbox-init";

/// Entry point of the init process; `main` calls it when `argv[1]` is [`INIT_ARG`].
/// Never returns.
pub fn init_main() -> ! {
    let parent = std::env::args().nth(2).and_then(|a| a.parse().ok());
    finish(Timer::from_env(), parent)
}

fn finish(timer: Timer, parent: Option<i32>) -> ! {
    let status = std::io::stderr();
    let code = match run(status.as_fd(), timer, parent) {
        Ok(()) => 0,
        Err(message) => {
            message.send(status.as_fd());
            1
        }
    };
    std::process::exit(code)
}

fn step_failed(step: Step, errno: Errno) -> StatusMessage {
    StatusMessage::StepFailed {
        step,
        errno: errno as i32,
    }
}

fn init_failed(message: impl Into<String>) -> StatusMessage {
    StatusMessage::InitFailed {
        message: message.into(),
    }
}

/// The init process's work; `expected_parent` is the process that started it (ksbuild,
/// or the zygote).
fn run(
    status: BorrowedFd<'_>,
    timer: Timer,
    expected_parent: Option<i32>,
) -> Result<(), StatusMessage> {
    timer.point(status, "init: main");
    sys::set_process_name(c"ksbuild-init");
    sys::close_fds_from_3().map_err(|e| step_failed(Step::CloseInheritedDescriptors, e))?;
    sys::set_umask(0);
    let expected_parent = expected_parent
        .ok_or_else(|| init_failed(format!("usage: ksbuild {INIT_ARG} <parent pid>")))?;
    sys::set_parent_death_signal().map_err(|e| step_failed(Step::ParentDeathSignal, e))?;
    if sys::parent_pid() != expected_parent {
        return Err(init_failed("ksbuild exited before the sandbox started"));
    }

    let stdin = std::io::stdin();
    let plan = read_plan(stdin.as_fd())?;
    timer.point(status, "init: plan read");

    let mut ctx = StepContext::new(None);
    for step in &plan.host {
        step.apply(&mut ctx)
            .map_err(|e| step_failed(step.clone(), e))?;
    }

    timer.point(status, "init: host steps done");
    let (sync_read, sync_write) =
        sys::pipe().map_err(|e| step_failed(Step::CreateNamespaces, e))?;
    let sync_write_raw = sync_write.as_raw_fd();
    let pid = {
        let mut child = || pid1::main(&plan, sync_read.as_fd(), sync_write_raw, status, timer);
        sys::clone_into_namespaces(&mut child)
    }
    .map_err(|e| step_failed(Step::CreateNamespaces, e))?;
    drop(sync_read);
    timer.point(status, "init: cloned");

    for (file, contents) in &plan.id_maps {
        let path = format!("/proc/{pid}/{file}");
        if let Err(e) = sys::write_proc_file(path.as_ref(), contents) {
            let _ = sys::kill(pid);
            let _ = sys::wait(pid);
            return Err(step_failed(
                Step::WriteIdMap {
                    file: file.clone(),
                    contents: contents.clone(),
                },
                e,
            ));
        }
    }
    // Release PID 1. `sync_write` stays open until this process exits: PID 1 sees it hang
    // up exactly when this process is gone.
    if let Err(e) = sys::write_all(sync_write.as_fd(), b"g") {
        let _ = sys::kill(pid);
        let _ = sys::wait(pid);
        return Err(step_failed(Step::CreateNamespaces, e));
    }

    timer.point(status, "init: id maps written, PID 1 released");
    // This process must not keep the build's output terminal open: ksbuild takes the end
    // of the output as a sign that no process of the build is left.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = sys::dup_onto(null.as_fd(), 1);
    }

    let status_of_pid1 = supervise(pid, stdin.as_fd())?;
    timer.point(status, "init: PID 1 reaped");
    StatusMessage::Finished {
        status: status_of_pid1,
    }
    .send(status);
    drop(sync_write);
    Ok(())
}

/// Reads the plan: bytes up to the first newline on stdin (also PID 1's, when the zygote
/// cloned it).
pub(crate) fn read_plan(stdin: BorrowedFd<'_>) -> Result<Plan, StatusMessage> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = sys::read(stdin, &mut chunk)
            .map_err(|e| init_failed(format!("cannot read the plan: {e}")))?;
        if n == 0 {
            return Err(init_failed("ksbuild closed the pipe before sending a plan"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|b| *b == b'\n') {
            buf.truncate(end);
            break;
        }
    }
    let plan: Plan =
        serde_json::from_slice(&buf).map_err(|e| init_failed(format!("unreadable plan: {e}")))?;
    // Host steps run here, in the host's namespaces with the invoking user's privileges:
    // a plan that would mount or change credentials here is refused.
    if !plan.host.iter().all(Step::is_host_step) {
        return Err(init_failed(
            "the plan has a namespace step among the host steps",
        ));
    }
    Ok(plan)
}

/// Waits for PID 1 to end, killing it as soon as `control` (stdin) becomes readable or
/// hangs up; returns its status once reaped.
fn supervise(
    pid: nix::unistd::Pid,
    control: BorrowedFd<'_>,
) -> Result<BuilderStatus, StatusMessage> {
    let pidfd = match sys::pidfd_open(pid) {
        Ok(fd) => fd,
        Err(e) => {
            let _ = sys::kill(pid);
            let _ = sys::wait(pid);
            return Err(step_failed(Step::WatchChild, e));
        }
    };
    let mut killed = false;
    loop {
        let watch_control = if killed { None } else { Some(control) };
        let ready = sys::poll_readable(&[watch_control, Some(pidfd.as_fd())], -1)
            .map_err(|e| init_failed(format!("poll: {e}")))?;
        if ready[1] {
            break;
        }
        if ready[0] {
            let _ = sys::kill(pid);
            killed = true;
        }
    }
    match sys::wait(pid) {
        Ok(WaitStatus::Exited(_, code)) => Ok(BuilderStatus::Exited(code)),
        Ok(WaitStatus::Signaled(_, signal, _)) => Ok(BuilderStatus::Signaled(signal as i32)),
        Ok(other) => Err(init_failed(format!("unexpected wait status {other:?}"))),
        Err(e) => Err(init_failed(format!("waitpid: {e}"))),
    }
}
