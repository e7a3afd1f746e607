//! ksbuild's side of a sandboxed build: plan it, start it (through a zygote's PID 1, or an
//! `exec`ed init process), stream the builder's output to the log file and the caller,
//! enforce `timeout` and `max_silent_time`, and make sure no process of the build outlives
//! [`Sandbox::run`]. Does I/O and starts processes; the namespaces themselves are made by
//! the zygote or the init process.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::error::SandboxError;
use super::init::INIT_ARG;
use super::plan::Plan;
use super::plan::{self, InputKind, StoreLayout};
use super::protocol::StatusMessage;
use super::step::{Step, StepContext};
use super::sys;
use super::user_ns::HostIds;
use super::views::{StoreView, StoreViews};
use super::zygote::{ORIGIN_LEN, ZYGOTE_ARG};
use super::{BuildOutcome, SandboxSpec, TimeoutKind};
use crate::timing;

/// How long the init process gets to kill and reap the build once asked, before ksbuild
/// kills the init process itself (PID 1 then dies of its parent-death signal).
const KILL_GRACE: Duration = Duration::from_secs(30);

/// How long the zygote may take to answer a request before it is given up.
const ZYGOTE_ANSWER_LIMIT: Duration = Duration::from_secs(10);

/// Longest log line handed to the callback in one piece; longer lines are split.
const MAX_LINE: usize = 1 << 20;

/// Runs builds; holds the program that serves as the init process, and the zygotes that
/// start builds, if any were started ([`Sandbox::with_zygotes`]).
#[derive(Debug, Clone)]
pub struct Sandbox {
    init_program: PathBuf,
    zygotes: Vec<Arc<Mutex<Zygote>>>,
    views: Option<Arc<StoreViews>>,
}

/// A running zygote (see `zygote.rs`): ksbuild's end of its socket, and the process.
#[derive(Debug)]
struct Zygote {
    socket: Option<OwnedFd>,
    process: Child,
}

impl Drop for Zygote {
    fn drop(&mut self) {
        // No build is running (each holds the sandbox), so nothing depends on the zygote
        // any more: closing the socket would end it, but it may still be starting up, so
        // it is killed and reaped at once.
        self.socket = None;
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

impl Sandbox {
    /// A sandbox whose init process is the running executable (`/proc/self/exe`), which
    /// must call [`super::init_main`] when its first argument is `__sandbox-init` — as the
    /// `ksbuild` binary does.
    pub fn new() -> Sandbox {
        Sandbox::with_init_program("/proc/self/exe")
    }

    /// A sandbox whose init process is `program` (a `ksbuild` binary): for callers that
    /// are not `ksbuild` themselves, such as test binaries.
    pub fn with_init_program(program: impl Into<PathBuf>) -> Sandbox {
        Sandbox {
            init_program: program.into(),
            zygotes: Vec::new(),
            views: None,
        }
    }

    /// The same sandbox, with one zygote: see [`Sandbox::with_zygotes`].
    pub fn with_zygote(self) -> Sandbox {
        self.with_zygotes(1)
    }

    /// The same sandbox, with `count` zygotes (see `zygote.rs`), each of which makes a
    /// build's namespaces ahead of time and starts the build in them. One per build that
    /// runs at once: each makes the next PID 1 while its last build runs. They die with
    /// the calling *thread* (`PR_SET_PDEATHSIG`), and every build with them: call this
    /// from a thread that outlives the builds, such as the main thread. If a zygote cannot
    /// be started, or dies, builds go to the others, or start an init process by `exec`.
    pub fn with_zygotes(mut self, count: usize) -> Sandbox {
        for _ in 0..count {
            if let Some(z) = self.start_zygote() {
                self.zygotes.push(Arc::new(Mutex::new(z)));
            }
        }
        self
    }

    /// The same sandbox, with a store views' keeper (see `views.rs`) for a series of builds
    /// whose closures are large and mostly shared — unless `KSBUILD_SANDBOX_NO_VIEWS=1`.
    /// It dies with the calling thread, as the zygotes do. Views are handed to builds
    /// through a zygote: start those too.
    pub fn with_store_views(mut self) -> Sandbox {
        if std::env::var_os("KSBUILD_SANDBOX_NO_VIEWS").is_none_or(|v| v != "1") {
            self.views = StoreViews::start(&self.init_program).map(Arc::new);
        }
        self
    }

    /// The store views' keeper, if there is one.
    pub fn store_views(&self) -> Option<&StoreViews> {
        self.views.as_deref()
    }

    /// Whether a zygote starts builds (only then can a build be handed a store view).
    pub fn has_zygote(&self) -> bool {
        self.zygote_socket_open()
    }

    fn start_zygote(&self) -> Option<Zygote> {
        let (ours, theirs) = sys::seqpacket_pair().ok()?;
        // It answers in about a millisecond; one that does not answer at all (stopped,
        // say) is given up, and builds `exec` their init process.
        sys::set_receive_timeout(ours.as_fd(), ZYGOTE_ANSWER_LIMIT).ok()?;
        let process = spawn_helper(&self.init_program, ZYGOTE_ARG, theirs)?;
        Some(Zygote {
            socket: Some(ours),
            process,
        })
    }

    /// The pid of the first zygote, while it is in use.
    pub fn zygote_pid(&self) -> Option<u32> {
        let zygote = self.zygotes.first()?;
        let zygote = zygote.lock().unwrap_or_else(|p| p.into_inner());
        zygote.socket.as_ref()?;
        Some(zygote.process.id())
    }

    /// Runs one build hermetically; see [`super::run`].
    pub fn run(
        &self,
        spec: &SandboxSpec,
        on_log_line: &mut dyn FnMut(&[u8]),
    ) -> Result<BuildOutcome, SandboxError> {
        self.run_when(spec, &|| {}, on_log_line)
    }

    /// Runs one build hermetically, as [`Sandbox::run`]; everything up to starting the
    /// build (the plan, the log, the terminal, the host's side of the root) is done first,
    /// then `ready` is called — it may wait for one of the `-j` slots —, then the build
    /// starts. Its time limits count from then.
    pub fn run_when(
        &self,
        spec: &SandboxSpec,
        ready: &dyn Fn(),
        on_log_line: &mut dyn FnMut(&[u8]),
    ) -> Result<BuildOutcome, SandboxError> {
        let overlay = spec.work_dir.is_some() && overlay_allowed();
        match self.attempt(spec, overlay, Some(ready), on_log_line) {
            // The kernel refused the overlay before the builder ran (nothing was written
            // in `root_dir`): this build and every later one in this process create the
            // mount points on disk instead.
            Err(SandboxError::Step {
                step: Step::MountOverlay { .. },
                errno,
            }) if overlay && OVERLAY_REFUSALS.contains(&errno) => {
                OVERLAY_REFUSED.store(true, Ordering::Relaxed);
                if timing::enabled() {
                    eprintln!("sandbox: overlayfs refused ({errno}): mount points on disk");
                }
                self.attempt(spec, false, None, on_log_line)
            }
            other => other,
        }
    }

    /// One attempt of [`Sandbox::run_when`], with or without the store directory's
    /// overlay; `ready` is called if given (a retry has its slot already).
    fn attempt(
        &self,
        spec: &SandboxSpec,
        overlay: bool,
        ready: Option<&dyn Fn()>,
        on_log_line: &mut dyn FnMut(&[u8]),
    ) -> Result<BuildOutcome, SandboxError> {
        let t0 = Instant::now();
        let ids = HostIds::resolve(spec.build_user)?;
        let zygote = self.zygote_socket_open();
        let layout = match (&spec.store_view, overlay) {
            (Some(_), _) if !zygote => return Err(view_not_handed()),
            (Some(_), _) => StoreLayout::View,
            (None, true) => StoreLayout::Overlay,
            (None, false) => StoreLayout::OnDisk,
        };
        check_directories(spec, layout)?;
        let devpts = Path::new("/dev/pts/ptmx").exists();
        let mut plan = plan::plan(spec, &ids, &mut input_inspector(), devpts, layout)?;
        if std::env::var_os("KSBUILD_SANDBOX_NO_MOUNT_SETATTR").is_some_and(|v| v == "1") {
            // As on a kernel without `mount_setattr` (before 5.12), and where inputs cannot
            // be restricted at their source: remount each input.
            for step in &mut plan.namespace {
                match step {
                    Step::AttachTrees {
                        restrict_detached, ..
                    } => *restrict_detached = false,
                    Step::DetachTrees { restrict, .. } => *restrict = None,
                    _ => {}
                }
            }
        }
        timing::report("sandbox: plan", t0);
        let t0 = Instant::now();

        // Opened on the first output: a silent build creates no file.
        let mut log = LazyLog {
            path: &spec.log,
            file: None,
        };
        let (master, slave) = sys::open_raw_pty().map_err(|e| SandboxError::Supervise {
            action: "open a pseudo-terminal for the build log",
            source: e.into(),
        })?;
        if zygote {
            // The zygote's PID 1s expect the host steps done: they are plain file
            // operations as the invoking user, done here (the zygote itself has cleared
            // root's supplementary groups). Only that step is left for an init process, in
            // case the zygote fails.
            let mut ctx = StepContext::new(None);
            for step in &plan.host {
                if *step != Step::ClearSupplementaryGroups {
                    step.apply(&mut ctx).map_err(|errno| SandboxError::Step {
                        step: step.clone(),
                        errno,
                    })?;
                }
            }
            plan.host.retain(|s| *s == Step::ClearSupplementaryGroups);
        }
        let request = serialise(&plan)?;
        timing::report("sandbox: log and pty", t0);
        if let Some(ready) = ready {
            ready();
        }
        let origin = timing::epoch_micros();
        // Through a zygote if there is one, else by `exec`ing an init process. Either way
        // ksbuild's copy of the terminal's slave end is closed once the build has started,
        // so that the end of output means that no process of the build is left.
        let zygote_run = match zygote {
            true => self.ask_zygote(
                &slave,
                &request,
                &plan.id_maps,
                origin,
                spec.store_view.as_ref(),
            ),
            false => None,
        };
        let mut running = match zygote_run {
            Some(running) => {
                drop(slave);
                running
            }
            None if spec.store_view.is_some() => return Err(view_not_handed()),
            None => self.exec_init(slave, &request, origin)?,
        };
        if timing::enabled() {
            eprintln!("{}", timing::line_after("sandbox: init spawned", origin));
        }
        let (status_bytes, timed_out) =
            pump(spec, &mut running, master.as_fd(), &mut log, on_log_line)?;
        if timing::enabled() {
            eprintln!(
                "{}",
                timing::line_after("sandbox: output and status closed", origin)
            );
        }
        let exit = running.wait().map_err(|source| SandboxError::Supervise {
            action: "wait for the init process",
            source,
        })?;
        if timing::enabled() {
            eprintln!("{}", timing::line_after("sandbox: init reaped", origin));
        }
        let duration = running.started.elapsed();
        log.flush()?;
        interpret(&status_bytes, exit, duration, timed_out)
    }

    /// Whether there is a zygote to ask.
    fn zygote_socket_open(&self) -> bool {
        // A zygote another build is asking right now is in use: no need to wait for it.
        self.zygotes.iter().any(|z| match z.try_lock() {
            Ok(guard) => guard.socket.is_some(),
            Err(std::sync::TryLockError::WouldBlock) => true,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().socket.is_some(),
        })
    }

    /// A zygote in use that no other build is asking, else the first one in use (waiting
    /// for it).
    fn pick_zygote(&self) -> Option<std::sync::MutexGuard<'_, Zygote>> {
        for z in &self.zygotes {
            if let Ok(guard) = z.try_lock() {
                if guard.socket.is_some() {
                    return Some(guard);
                }
            }
        }
        self.zygotes
            .iter()
            .map(|z| z.lock().unwrap_or_else(|p| p.into_inner()))
            .find(|g| g.socket.is_some())
    }

    /// Asks the zygote to start the build in a PID 1 of its own; `None` if there is no
    /// zygote or it failed (then it is not asked again). A plan that fits in the pipe is
    /// sent ahead, so that PID 1 finds it at once.
    fn ask_zygote(
        &self,
        slave: &OwnedFd,
        request: &[u8],
        id_maps: &[(String, String)],
        origin: u128,
        view: Option<&StoreView>,
    ) -> Option<Running> {
        let mut zygote = self.pick_zygote()?;
        let socket = zygote.socket.as_ref()?;
        let (control_read, control_write) = sys::pipe().ok()?;
        let mut control_write = File::from(control_write);
        // Linux pipes hold 64 KiB; a larger plan is written once the reader runs.
        let sent = request.len() <= 32 * 1024 && control_write.write_all(request).is_ok();
        let (status_read, status_write) = sys::pipe().ok()?;
        let started = Instant::now();
        // 0: no timings (an `exec`ed init process gets no variable).
        let origin = if timing::enabled() { origin } else { 0 };
        let mut message = origin.to_le_bytes()[..ORIGIN_LEN].to_vec();
        message.extend(serde_json::to_vec(id_maps).ok()?);
        let mut fds = vec![control_read.as_fd(), slave.as_fd(), status_write.as_fd()];
        fds.extend(view.map(StoreView::tree));
        let asked = sys::send_with_fds(socket.as_fd(), &message, &fds);
        let mut answer = [0u8; 4];
        let answered = asked.and_then(|()| sys::recv_with_fds(socket.as_fd(), &mut answer));
        match answered {
            Ok((4, mut fds)) if answer == [0; 4] && (1..=2).contains(&fds.len()) => {
                let mount_ns = (fds.len() == 2).then(|| fds.remove(1));
                if !sent {
                    // A failure means PID 1 is already gone; its status (or its absence)
                    // says why.
                    let _ = control_write.write_all(request);
                }
                Some(Running {
                    control: Some(control_write),
                    status: Some(status_read),
                    init: InitProcess::ZygotePid1(fds.remove(0)),
                    mount_ns,
                    started,
                    reaped: false,
                })
            }
            // The zygote could not clone (say, namespaces are not allowed): an `exec`ed
            // init process fails the same way, and says which step and why.
            Ok((4, _)) => None,
            // The zygote is gone, confused or stuck: stop using it, and make sure it does
            // not serve this request late (a PID 1 it cloned dies with it).
            _ => {
                zygote.socket = None;
                let _ = zygote.process.kill();
                let _ = zygote.process.wait();
                None
            }
        }
    }

    /// Starts the init process by `exec`ing the init program, and sends it the plan.
    fn exec_init(
        &self,
        slave: OwnedFd,
        request: &[u8],
        origin: u128,
    ) -> Result<Running, SandboxError> {
        let mut command = Command::new(&self.init_program);
        command
            .arg(INIT_ARG)
            .arg(std::process::id().to_string())
            .env_clear();
        if timing::enabled() {
            command.env(timing::ENV, origin.to_string());
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::from(slave))
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|source| SandboxError::SpawnInit {
            program: self.init_program.clone(),
            source,
        })?;
        // The command holds ksbuild's copy of the terminal's slave end: close it, so that
        // the end of output means that no process of the build is left.
        drop(command);
        let started = Instant::now();
        let mut control = child.stdin.take().map(|c| File::from(OwnedFd::from(c)));
        if let Some(control) = control.as_mut() {
            // A failure means the init process is already gone; its status (or its
            // absence) says why.
            let _ = control.write_all(request);
        }
        let status = child.stderr.take().map(OwnedFd::from);
        Ok(Running {
            control,
            status,
            init: InitProcess::Spawned(child),
            started,
            reaped: false,
            mount_ns: None,
        })
    }
}

/// Streams the build's output to the log and the callback and collects the status
/// messages until both the terminal and the status pipe are closed, enforcing the time
/// limits on the way. Returns the status bytes and which limit, if any, stopped the build.
fn pump(
    spec: &SandboxSpec,
    running: &mut Running,
    master: BorrowedFd<'_>,
    log: &mut LazyLog<'_>,
    on_log_line: &mut dyn FnMut(&[u8]),
) -> Result<(Vec<u8>, Option<TimeoutKind>), SandboxError> {
    let status_pipe = running.status.take().ok_or_else(|| SandboxError::Init {
        message: "no status pipe".to_string(),
    })?;
    let start = running.started;
    let mut lines = LineSplitter::default();
    let mut status_bytes = Vec::new();
    let mut output_open = true;
    let mut status_open = true;
    let mut last_output = start;
    let mut timed_out = None;
    let mut kill_requested: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];
    while output_open || status_open {
        let now = Instant::now();
        if timed_out.is_none() {
            timed_out = match (spec.timeout, spec.max_silent_time) {
                (Some(t), _) if now >= start + t => Some(TimeoutKind::Timeout),
                (_, Some(s)) if now >= last_output + s => Some(TimeoutKind::MaxSilentTime),
                _ => None,
            };
            if timed_out.is_some() {
                running.request_kill();
                kill_requested = Some(now);
            }
        }
        if !status_open && kill_requested.is_none() {
            // The init process is gone, so is PID 1; the terminal closes as soon as the
            // kernel has torn the namespace down. Do not wait for ever if it does not.
            kill_requested = Some(now);
        }
        if let Some(at) = kill_requested {
            if now >= at + KILL_GRACE {
                if !status_open {
                    break;
                }
                // The init process did not obey: kill it, and PID 1 dies of its
                // parent-death signal.
                running.init.kill();
            }
        }
        let wait_ms = next_wake(now, start, last_output, spec, timed_out, kill_requested);
        let ready = sys::poll_readable(
            &[
                output_open.then_some(master),
                status_open.then(|| status_pipe.as_fd()),
            ],
            wait_ms,
        )
        .map_err(|e| SandboxError::Supervise {
            action: "poll the build's output",
            source: e.into(),
        })?;
        if ready[0] {
            match sys::read(master, &mut buf) {
                // EIO: every slave descriptor is closed.
                Ok(0) | Err(Errno::EIO) => output_open = false,
                Ok(n) => {
                    last_output = Instant::now();
                    log.write_all(&buf[..n])?;
                    lines.feed(&buf[..n], on_log_line);
                }
                Err(e) => {
                    return Err(SandboxError::Supervise {
                        action: "read the build's output",
                        source: e.into(),
                    })
                }
            }
        }
        if ready[1] {
            match sys::read(status_pipe.as_fd(), &mut buf) {
                Ok(0) => status_open = false,
                Ok(n) => status_bytes.extend_from_slice(&buf[..n]),
                Err(e) => {
                    return Err(SandboxError::Supervise {
                        action: "read the sandbox's status",
                        source: e.into(),
                    })
                }
            }
        }
    }
    lines.finish(on_log_line);
    Ok((status_bytes, timed_out))
}

/// The plan as the one JSON line an init process or PID 1 reads.
fn serialise(plan: &Plan) -> Result<Vec<u8>, SandboxError> {
    let mut request = serde_json::to_vec(plan).map_err(|e| SandboxError::InvalidSpec {
        field: "inputs",
        reason: format!("cannot be sent to the init process: {e}"),
    })?;
    request.push(b'\n');
    Ok(request)
}

/// `lstat` of each input's physical path, for the plan: relative to its directory, which
/// is opened once for the inputs that follow each other in it (a closure's, all in the
/// store), rather than looked up again for each.
fn input_inspector() -> impl FnMut(&Path) -> Result<InputKind, Errno> {
    let mut dir: Option<(PathBuf, OwnedFd)> = None;
    move |path| match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            let fd = match &dir {
                Some((p, fd)) if p == parent => fd,
                _ => {
                    &dir.insert((parent.to_path_buf(), sys::open_directory(parent)?))
                        .1
                }
            };
            sys::inspect_entry(fd.as_fd(), name)
        }
        // `/`, or a bare name: relative to the working directory.
        _ => sys::inspect_entry(rustix::fs::CWD, path.as_os_str()),
    }
}

/// Whether `path` is what an input's mount point leaves in a root directory once its
/// build is over: an empty directory or empty regular file (not a symlink) named like a
/// store path. Such entries may stay in a root reused for the next build.
pub fn is_left_mount_point(path: &Path) -> bool {
    let named_like_a_store_path = path.file_name().is_some_and(plan::is_store_path_name);
    named_like_a_store_path
        && match fs::symlink_metadata(path) {
            Ok(m) => sys::is_empty_mount_point(path, m.is_dir()),
            Err(_) => false,
        }
}

/// Set once the kernel has refused the store directory's overlay in this process.
static OVERLAY_REFUSED: AtomicBool = AtomicBool::new(false);

/// What `mount` answers when the kernel or a filesystem cannot make the overlay: no
/// unprivileged overlayfs (before 5.11: `EPERM`), no overlayfs at all (`ENODEV`), an upper
/// filesystem without user xattrs or `d_type` (`EINVAL`, `EOPNOTSUPP`), a store's parent
/// directory the build user cannot search (`EACCES`).
const OVERLAY_REFUSALS: [Errno; 5] = [
    Errno::EPERM,
    Errno::ENODEV,
    Errno::EINVAL,
    Errno::EOPNOTSUPP,
    Errno::EACCES,
];

/// Whether builds use the store directory's overlay: not after the kernel refused it,
/// nor with `KSBUILD_SANDBOX_NO_OVERLAY=1` (which forces the mount points on disk).
fn overlay_allowed() -> bool {
    !OVERLAY_REFUSED.load(Ordering::Relaxed)
        && std::env::var_os("KSBUILD_SANDBOX_NO_OVERLAY").is_none_or(|v| v != "1")
}

/// Starts a helper process of the sandbox: `program` (a `ksbuild` binary) with `arg` and
/// ksbuild's pid, its stdin `socket`, nothing else inherited.
pub(crate) fn spawn_helper(program: &Path, arg: &str, socket: OwnedFd) -> Option<Child> {
    Command::new(program)
        .arg(arg)
        .arg(std::process::id().to_string())
        .env_clear()
        .stdin(Stdio::from(socket))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// The check of `root_dir` of [`check_directories`] without a store view.
fn check_root_dir(spec: &SandboxSpec, overlay: bool) -> Result<(), SandboxError> {
    let inputs: std::collections::HashSet<&std::ffi::OsStr> = match overlay {
        true => Default::default(),
        false => spec
            .inputs
            .iter()
            .filter_map(|(_, logical)| Path::new(logical).file_name())
            .collect(),
    };
    let invalid = |field, reason: String| SandboxError::InvalidSpec { field, reason };
    let root = &spec.root_dir;
    let entries = fs::read_dir(root)
        .map_err(|e| invalid("root_dir", format!("`{}`: {e}", root.display())))?;
    let not_empty = || invalid("root_dir", format!("`{}` is not empty", root.display()));
    for entry in entries {
        let entry = entry.map_err(|e| invalid("root_dir", format!("`{}`: {e}", root.display())))?;
        let path = entry.path();
        if !is_left_mount_point(&path) {
            return Err(not_empty());
        }
        if !inputs.contains(entry.file_name().as_os_str()) {
            let removed = fs::remove_dir(&path).or_else(|_| fs::remove_file(&path));
            removed.map_err(|_| not_empty())?;
        }
    }
    Ok(())
}

/// The error of a build given a store view that cannot be handed to it: there is no
/// zygote (any more) to start it with its descriptors.
fn view_not_handed() -> SandboxError {
    SandboxError::InvalidSpec {
        field: "store_view",
        reason: "the sandbox has no zygote to hand the view to the build".to_string(),
    }
}

/// Checks the two directories of the spec. `root_dir` must be empty but for the mount
/// points an earlier build in it left (empty files and directories named like store
/// paths): those of this build's inputs are left for the plan to reuse, the others are
/// removed, so that the builder sees its closure and nothing else in the store directory.
/// With the store directory's overlay, mount points are not on disk: all of them are
/// removed (an earlier build without the overlay may have left them). With a store view,
/// `root_dir` is the view's and is not read: its keeper made its entries exactly the
/// inputs, and the caller removes anything else a build leaves in it (see
/// [`SandboxSpec::store_view`]).
fn check_directories(spec: &SandboxSpec, layout: StoreLayout) -> Result<(), SandboxError> {
    if layout != StoreLayout::View {
        check_root_dir(spec, layout == StoreLayout::Overlay)?;
    }
    let invalid = |field, reason: String| SandboxError::InvalidSpec { field, reason };
    if let Some(work) = &spec.work_dir {
        if !fs::symlink_metadata(work).is_ok_and(|m| m.is_dir()) {
            return Err(invalid(
                "work_dir",
                format!("`{}` is not a directory", work.display()),
            ));
        }
    }
    match fs::symlink_metadata(&spec.build_dir) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(invalid(
            "build_dir",
            format!("`{}` is not a directory", spec.build_dir.display()),
        )),
        Err(e) => Err(invalid(
            "build_dir",
            format!("`{}`: {e}", spec.build_dir.display()),
        )),
    }
}

/// Milliseconds until the next deadline (rounded up), or -1 for none.
fn next_wake(
    now: Instant,
    start: Instant,
    last_output: Instant,
    spec: &SandboxSpec,
    timed_out: Option<TimeoutKind>,
    kill_requested: Option<Instant>,
) -> i32 {
    let mut deadlines = Vec::new();
    if timed_out.is_none() {
        deadlines.extend(spec.timeout.map(|t| start + t));
        deadlines.extend(spec.max_silent_time.map(|s| last_output + s));
    }
    deadlines.extend(kill_requested.map(|at| at + KILL_GRACE));
    match deadlines.into_iter().min() {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(now);
            let ms = left.as_millis() + u128::from(left.subsec_nanos() % 1_000_000 != 0);
            i32::try_from(ms).unwrap_or(i32::MAX)
        }
    }
}

/// Turns what the init process reported into the outcome.
fn interpret(
    status_bytes: &[u8],
    exit: String,
    duration: Duration,
    timed_out: Option<TimeoutKind>,
) -> Result<BuildOutcome, SandboxError> {
    let mut failed: Option<SandboxError> = None;
    let mut finished = None;
    let mut noise = Vec::new();
    for line in status_bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
    {
        match serde_json::from_slice::<StatusMessage>(line) {
            Ok(StatusMessage::StepFailed { step, errno }) => {
                failed.get_or_insert(SandboxError::Step {
                    step,
                    errno: Errno::from_raw(errno),
                });
            }
            Ok(StatusMessage::InitFailed { message }) => {
                failed.get_or_insert(SandboxError::Init { message });
            }
            Ok(StatusMessage::Finished { status }) => finished = Some(status),
            Err(_) if line.starts_with(timing::PREFIX.as_bytes()) => {
                eprintln!("{}", String::from_utf8_lossy(line));
            }
            Err(_) => noise.push(String::from_utf8_lossy(line).into_owned()),
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    match finished {
        Some(status) => Ok(BuildOutcome {
            status,
            duration,
            timed_out,
        }),
        None => Err(SandboxError::Init {
            message: format!(
                "it exited ({exit}) without reporting the builder's status{}{}",
                if noise.is_empty() { "" } else { "; it said: " },
                noise.join("\n")
            ),
        }),
    }
}

/// What ksbuild started: an init process, its own child; or a PID 1 of the zygote (known
/// by a pidfd), which the zygote reaps.
enum InitProcess {
    Spawned(Child),
    ZygotePid1(OwnedFd),
}

impl InitProcess {
    fn kill(&mut self) {
        match self {
            InitProcess::Spawned(child) => {
                let _ = child.kill();
            }
            InitProcess::ZygotePid1(pidfd) => {
                let _ = sys::pidfd_kill(pidfd.as_fd());
            }
        }
    }

    /// Waits at most `timeout_ms` (-1: for ever) for it to end; how, if known.
    fn wait(&mut self, timeout_ms: i32) -> std::io::Result<Option<String>> {
        match self {
            InitProcess::Spawned(child) if timeout_ms < 0 => Ok(Some(child.wait()?.to_string())),
            InitProcess::Spawned(child) => {
                // A child has no descriptor to poll: look, wait, look again.
                if let Some(status) = child.try_wait()? {
                    return Ok(Some(status.to_string()));
                }
                std::thread::sleep(Duration::from_millis(timeout_ms as u64));
                Ok(child.try_wait()?.map(|s| s.to_string()))
            }
            InitProcess::ZygotePid1(pidfd) => {
                let ready = sys::poll_readable(&[Some(pidfd.as_fd())], timeout_ms)?;
                // The zygote reaps it: how it ended is in what the zygote reported.
                Ok(ready[0].then(|| "ended".to_string()))
            }
        }
    }
}

/// The running init process; dropping it (on any early return or panic) kills the build
/// and reaps everything.
struct Running {
    /// Its stdin: closing it asks for the build to be killed.
    control: Option<File>,
    /// Its stderr: the status messages.
    status: Option<OwnedFd>,
    init: InitProcess,
    /// When it was started.
    started: Instant,
    reaped: bool,
    /// The mount namespace of a zygote's PID 1 (see [`close_in_background`]).
    mount_ns: Option<OwnedFd>,
}

impl Running {
    /// Kills the build: closes the init process's control pipe, which makes it kill PID 1,
    /// or kills the zygote's PID 1 itself.
    fn request_kill(&mut self) {
        self.control = None;
        if let InitProcess::ZygotePid1(_) = self.init {
            self.init.kill();
        }
    }

    /// Waits for the init process to end; how it ended, if known.
    fn wait(&mut self) -> std::io::Result<String> {
        self.control = None;
        let how = self.init.wait(-1)?.unwrap_or_default();
        self.reaped = true;
        Ok(how)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.reaped {
            self.end();
        }
        if let Some(ns) = self.mount_ns.take() {
            close_in_background(ns);
        }
    }
}

impl Running {
    /// Kills the build and waits for it to end (on an early return or a panic).
    fn end(&mut self) {
        self.request_kill();
        let deadline = Instant::now() + KILL_GRACE;
        while Instant::now() < deadline {
            match self.init.wait(5) {
                Ok(Some(_)) => return,
                Ok(None) => {}
                Err(_) => break,
            }
        }
        self.init.kill();
        let _ = self.init.wait(-1);
    }
}

/// Closes a build's mount namespace on a thread of its own. Once the last reference to a
/// mount namespace goes, the kernel unmounts everything in it and waits for an RCU grace
/// period before it returns: when that reference is PID 1's, its exit — and so the build's
/// end — waits for it. ksbuild holds a reference (from the zygote) until the build has
/// ended, so that the wait happens here, beside the next builds rather than before them.
/// Nothing can use the namespace meanwhile: no process is left in it.
fn close_in_background(ns: OwnedFd) {
    static CLOSER: OnceLock<Option<mpsc::Sender<OwnedFd>>> = OnceLock::new();
    let closer = CLOSER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<OwnedFd>();
        let spawned = std::thread::Builder::new()
            .name("ksbuild-ns-close".into())
            .spawn(move || rx.into_iter().for_each(drop));
        spawned.ok().map(|_| tx)
    });
    match closer {
        Some(tx) => {
            let _ = tx.send(ns);
        }
        None => drop(ns),
    }
}

/// The build log, created (or appended to) on the first write.
struct LazyLog<'a> {
    path: &'a Path,
    file: Option<File>,
}

impl LazyLog<'_> {
    fn write_all(&mut self, bytes: &[u8]) -> Result<(), SandboxError> {
        let error = |source| SandboxError::Log {
            path: self.path.to_path_buf(),
            source,
        };
        if self.file.is_none() {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o644)
                .open(self.path)
                .map_err(error)?;
            self.file = Some(file);
        }
        match self.file.as_mut() {
            Some(file) => file.write_all(bytes).map_err(error),
            None => Ok(()),
        }
    }

    fn flush(&mut self) -> Result<(), SandboxError> {
        match self.file.as_mut() {
            Some(file) => file.flush().map_err(|source| SandboxError::Log {
                path: self.path.to_path_buf(),
                source,
            }),
            None => Ok(()),
        }
    }
}

/// Cuts a byte stream into lines (without their `\n`); a line longer than [`MAX_LINE`] is
/// handed over in pieces.
#[derive(Default)]
struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    fn feed(&mut self, mut bytes: &[u8], on_line: &mut dyn FnMut(&[u8])) {
        while let Some(i) = bytes.iter().position(|b| *b == b'\n') {
            if self.pending.is_empty() {
                on_line(&bytes[..i]);
            } else {
                self.pending.extend_from_slice(&bytes[..i]);
                on_line(&self.pending);
                self.pending.clear();
            }
            bytes = &bytes[i + 1..];
        }
        self.pending.extend_from_slice(bytes);
        while self.pending.len() >= MAX_LINE {
            let rest = self.pending.split_off(MAX_LINE);
            on_line(&self.pending);
            self.pending = rest;
        }
    }

    fn finish(&mut self, on_line: &mut dyn FnMut(&[u8])) {
        if !self.pending.is_empty() {
            on_line(&self.pending);
            self.pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::Step;

    #[test]
    fn lines_are_split_across_reads() {
        let mut got = Vec::new();
        let mut s = LineSplitter::default();
        let mut cb = |l: &[u8]| got.push(String::from_utf8_lossy(l).into_owned());
        s.feed(b"a\nb", &mut cb);
        s.feed(b"c\n\nd", &mut cb);
        s.finish(&mut cb);
        assert_eq!(got, ["a", "bc", "", "d"]);
    }

    #[test]
    fn long_lines_come_in_pieces() {
        let mut sizes = Vec::new();
        let mut s = LineSplitter::default();
        let mut cb = |l: &[u8]| sizes.push(l.len());
        s.feed(&vec![b'x'; MAX_LINE * 2 + 3], &mut cb);
        s.feed(b"\n", &mut cb);
        assert_eq!(sizes, [MAX_LINE, MAX_LINE, 3]);
    }

    #[test]
    fn a_failed_step_wins_over_the_exit_status() {
        let ok = || "exit status: 0".to_string();
        let bytes = b"{\"type\":\"step-failed\",\"step\":{\"step\":\"mount-proc\",\"target\":\"/r/proc\"},\"errno\":1}\n\
{\"type\":\"finished\",\"status\":{\"exited\":127}}\n";
        match interpret(bytes, ok(), Duration::ZERO, None) {
            Err(SandboxError::Step {
                step: Step::MountProc { .. },
                errno: Errno::EPERM,
            }) => {}
            other => panic!("{other:?}"),
        }
        let e = interpret(b"thread main panicked\n", ok(), Duration::ZERO, None).unwrap_err();
        assert!(e.to_string().contains("init process failed"), "{e}");
        assert!(format!("{e}").contains("panicked"), "{e}");
    }
}
