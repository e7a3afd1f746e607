//! PID 1 of the build's namespaces: the cloned child of the init process, which applies
//! the namespace steps of the plan in one loop and then becomes the builder with `execve`.
//! Does syscalls.
//!
//! Order, and why (the steps themselves are listed by `plan.rs`):
//!
//! 1. keep a close-on-exec copy of the status pipe, close its copy of the lifeline's write
//!    end, arm `PR_SET_PDEATHSIG`, and wait for the init process to have written the id
//!    maps (until then this process has every capability in its user namespace but no
//!    mapped uid);
//! 2. **mounts**, while it still has `CAP_SYS_ADMIN` in the namespace and its host
//!    filesystem ids: everything private; then every host path the build needs is taken as a
//!    detached bind mount (`open_tree`): the store directory (`root_dir`), the inputs,
//!    `build_dir`, the device nodes (with the store directory's overlay, `root_dir`'s parent
//!    instead of `root_dir`). Only then a `tmpfs` is mounted over `root_dir` — the new
//!    root — and PID 1 `chdir`s into it and takes the build user's *filesystem* ids
//!    (`setfsuid`), so that the skeleton it creates there (`nix/store`, `build`, `tmp`, `etc`
//!    with `passwd`/`group`/`hosts`, `dev` with its mount points and symlinks, `proc`) belongs
//!    to the build user as in Nix. (When ksbuild is root, PID 1's own uid is not mapped in its
//!    namespace and could not create files on a tmpfs of that namespace.) With the overlay,
//!    the inputs' mount points are created in the tmpfs's store directory (the skeleton, the
//!    overlay's lower layer), the parent of `root_dir` is attached for a moment at
//!    `.ksbuild-layers`, an overlayfs is mounted over the store directory (`userxattr`; upper
//!    layer `root_dir`, work directory beside it — overlayfs wants them on one mount, and
//!    works on them with the build user's filesystem ids, which PID 1 has by then), and the
//!    temporary bind is detached and its mount point removed. With a store view (see
//!    `views.rs`), none of that: the view handed over with the request, every input bound
//!    in it already, is attached at the store directory after step 3. The detached trees
//!    are attached (`move_mount`) read-only — a store directory's inputs restricted before
//!    (`mount_setattr` of each detached tree), the rest remounted after, as are the
//!    devices —, then
//!    `/dev/shm`, `/dev/pts` and a fresh `/proc` for the new PID namespace are mounted;
//! 3. **`pivot_root(".", ".")`** and detach the old root: from here no path leads to the
//!    host's filesystem, and the mounts inherited from the host are locked (then a store
//!    view is attached: the detach walks every mount of the namespace, a view's too);
//! 4. loopback up, hostname `localhost`, domain name `(none)`, a new session, stdin from
//!    `/dev/null` and stderr onto stdout;
//! 5. **privilege drop**: `setresgid(100)`, `setresuid(1000)` (host ids: the build user),
//!    a new anonymous session keyring (not ksbuild's), re-arm the parent-death signal the
//!    credential change cleared, `no_new_privs`, Nix's seccomp filter, ASLR off, no core
//!    dumps, the optional process limit, umask 022, `chdir /build`, default signal
//!    dispositions, and finally every capability cleared;
//! 6. **`execve`** the builder with Nix's environment. On success the status pipe closes
//!    itself (close-on-exec); on any failure the step and `errno` are reported there and
//!    this process exits with 127.

use std::ffi::CString;
use std::os::fd::{AsFd, BorrowedFd, RawFd};

use nix::errno::Errno;

use super::plan::Plan;
use super::protocol::{StatusMessage, Timer};
use super::step::{Step, StepContext};
use super::sys;

/// The exit code of PID 1 when setup failed (like a shell's "command not found").
const SETUP_FAILED: isize = 127;

fn report(status: BorrowedFd<'_>, step: Step, errno: Errno) -> isize {
    StatusMessage::StepFailed {
        step,
        errno: errno as i32,
    }
    .send(status);
    SETUP_FAILED
}

fn c_string(s: &str) -> Result<CString, Errno> {
    CString::new(s).map_err(|_| Errno::EINVAL)
}

/// Runs as PID 1: the clone callback of the init process. Returns only on failure, with
/// the exit code.
pub(crate) fn main(
    plan: &Plan,
    lifeline: BorrowedFd<'_>,
    lifeline_write: RawFd,
    init_status: BorrowedFd<'_>,
    timer: Timer,
) -> isize {
    sys::set_process_name(c"ksbuild-pid1");
    let status = match sys::dup_cloexec(init_status) {
        Ok(fd) => fd,
        Err(_) => return SETUP_FAILED,
    };
    let status = status.as_fd();
    if let Err(e) = sys::close_unowned(lifeline_write) {
        return report(status, Step::CreateNamespaces, e);
    }
    if let Err(e) = sys::set_parent_death_signal() {
        return report(status, Step::ParentDeathSignal, e);
    }
    // Wait for the id maps. EOF means the init process gave up (and said why) or died.
    let mut go = [0u8; 1];
    match sys::read(lifeline, &mut go) {
        Ok(1) => {}
        _ => return SETUP_FAILED,
    }
    become_builder(plan, StepContext::new(Some(lifeline)), &[], status, timer)
}

/// Runs as a PID 1 cloned ahead of time by the zygote (see `zygote.rs`): keeps only
/// `channel` of the zygote's descriptors, waits on it for a request — the start time and
/// the three descriptors that become stdin (the plan), stdout (the build's terminal) and
/// stderr (the status pipe) —, reads the plan and goes on as [`main`] does. The channel
/// is its lifeline: it hangs up when the zygote is gone. Returns only on failure.
pub(crate) fn waiting_main(channel: BorrowedFd<'_>) -> isize {
    sys::set_process_name(c"ksbuild-pid1");
    if sys::close_fds_from_3_except(channel).is_err() || sys::set_parent_death_signal().is_err() {
        return SETUP_FAILED;
    }
    // The zygote may have died between the clone and the parent-death signal.
    if !matches!(sys::hung_up(channel), Ok(false)) {
        return SETUP_FAILED;
    }
    // What does not depend on the build is done while waiting for one; a failure is
    // reported once there is a status pipe to report it on.
    let mut ctx = StepContext::new(Some(channel));
    let mut done = Vec::new();
    let mut failed = None;
    for step in super::plan::prelude() {
        match step.apply(&mut ctx) {
            Ok(()) => done.push(step),
            Err(e) => {
                failed = Some((step, e));
                break;
            }
        }
    }
    let mut origin = [0u8; super::zygote::ORIGIN_LEN];
    let mut fds = match sys::recv_with_fds(channel, &mut origin) {
        Ok((n, fds)) if n == origin.len() && (3..=4).contains(&fds.len()) => fds,
        _ => return SETUP_FAILED,
    };
    // A fourth descriptor is the store view (see `views.rs`), for `Step::AttachView`.
    ctx.view = fds.get(3).is_some().then(|| fds.remove(3));
    for (fd, target) in fds.iter().zip(0..) {
        if sys::dup_onto(fd.as_fd(), target).is_err() {
            return SETUP_FAILED;
        }
    }
    drop(fds);
    let origin = u128::from_le_bytes(origin);
    let timer = Timer::at((origin != 0).then_some(origin));
    let stderr = std::io::stderr();
    let status = match sys::dup_cloexec(stderr.as_fd()) {
        Ok(fd) => fd,
        Err(_) => return SETUP_FAILED,
    };
    let status = status.as_fd();
    timer.point(status, "pid1: request received");
    if let Some((step, errno)) = failed {
        return report(status, step, errno);
    }
    let stdin = std::io::stdin();
    let plan = match super::init::read_plan(stdin.as_fd()) {
        Ok(plan) => plan,
        Err(message) => {
            message.send(status);
            return SETUP_FAILED;
        }
    };
    become_builder(&plan, ctx, &done, status, timer)
}

/// Applies the plan's namespace steps but those already `done` (once each) and `execve`s
/// the builder; `ctx` holds what the done ones left (detached trees) and the lifeline,
/// which hangs up when this process's parent is gone; `status` is a close-on-exec copy of
/// the status pipe. Returns only on failure, with the exit code.
fn become_builder(
    plan: &Plan,
    mut ctx: StepContext<'_>,
    done: &[Step],
    status: BorrowedFd<'_>,
    timer: Timer,
) -> isize {
    let exec_step = Step::Exec {
        path: plan.exec.path.clone(),
    };
    let prepared = (|| {
        let path = c_string(&plan.exec.path)?;
        let argv = plan
            .exec
            .argv
            .iter()
            .map(|a| c_string(a))
            .collect::<Result<Vec<_>, _>>()?;
        let env = plan
            .exec
            .env
            .iter()
            .map(|a| c_string(a))
            .collect::<Result<Vec<_>, _>>()?;
        Ok::<_, Errno>((path, argv, env))
    })();
    let (path, argv, env) = match prepared {
        Ok(p) => p,
        Err(e) => return report(status, exec_step, e),
    };

    timer.point(status, "pid1: released");
    // Only steps of the plan may have been done ahead (the plan's tests hold it to that).
    if let Some(extra) = done.iter().find(|d| !plan.namespace.contains(d)) {
        return report(status, extra.clone(), Errno::EINVAL);
    }
    let mut skip: Vec<&Step> = done.iter().collect();
    for step in &plan.namespace {
        if let Some(i) = skip.iter().position(|d| *d == step) {
            skip.swap_remove(i);
            continue;
        }
        let t0 = timer.enabled().then(std::time::Instant::now);
        if let Err(e) = step.apply(&mut ctx) {
            let failed = ctx.failed_item.take().unwrap_or_else(|| step.clone());
            return report(status, failed, e);
        }
        let note = ctx.note.take().unwrap_or_default();
        if let Some(t0) = t0 {
            timer.phase(status, &format!("pid1: {step}{note}"), t0);
        }
    }
    timer.point(status, "pid1: exec");
    let errno = sys::exec(&path, &argv, &env);
    report(status, exec_step, errno)
}
