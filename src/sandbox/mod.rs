//! The sandbox: runs one build hermetically, with Nix 2.8's semantics — the only layer that
//! makes namespace, mount and credential syscalls, and the only one allowed `unsafe`
//! (in `sys.rs` alone).
//!
//! # What a builder sees
//!
//! Exactly what it sees in Nix 2.8's sandbox (`../shared/reference/nix-formats.md` §6):
//! `/` holds `build dev etc nix proc tmp`; the store directory holds the inputs (read-only
//! binds) and whatever the builder creates there (its outputs); uid 1000 (`nixbld`), gid 100,
//! hostname `localhost`, domain name `(none)`; only `lo` in a network namespace of its own;
//! PID 1 of its own PID namespace; generated `/etc/passwd`, `/etc/group`, `/etc/hosts`; a
//! minimal `/dev` (`null zero full random urandom tty`, `shm`, `pts`, `ptmx`, `fd`, `std*`);
//! a fresh `/proc`; stdout and stderr on a raw pseudo-terminal, stdin `/dev/null`; cwd
//! `/build`; umask 022; ASLR off; `no_new_privs`; Nix's seccomp filter (no setuid/setgid
//! bits, no extended attributes); no capabilities; core dumps off; and the
//! environment of [`plan::builder_environment`]. It also gets its own IPC and cgroup
//! namespaces (Nix 2.8 has no cgroup namespace; without one, `/proc/self/cgroup` would leak
//! the host's cgroup path into builds), and a bound on its processes, which Nix 2.8 does not
//! set ([`SandboxSpec::max_processes`]).
//!
//! Two differences of layout, invisible to a build's result: `/` is a `tmpfs` (owned by the
//! build user, mode 0750, like Nix's chroot directory) over `root_dir`, so `/tmp` lives in
//! memory rather than on disk; and only the store directory inside it is on disk
//! (`root_dir` itself, bound there before the tmpfs hides it), so that outputs land on the
//! store's filesystem while the rest of the skeleton costs no disk metadata and vanishes
//! with the namespace. Given a [`SandboxSpec::work_dir`], the store directory is moreover an
//! overlayfs of a `tmpfs` holding the inputs' mount points over `root_dir`: the mount points
//! are not on disk either, so a build's set-up costs the same whatever the size of its
//! closure (a `mkdir` and `rmdir` on ext4 cost about 0.3 and 1 ms each, a `tmpfs` entry a few
//! µs). Where the kernel refuses an unprivileged overlay (before 5.11), the mount points are
//! created on disk, as with `KSBUILD_SANDBOX_NO_OVERLAY=1`.
//!
//! # How
//!
//! ```text
//! ksbuild (any thread)           init process (single-threaded)      PID 1 → the builder
//! ───────────────────────────    ────────────────────────────────    ─────────────────────
//! plan (pure) ─ JSON line ──▶    host steps: store dir on disk,
//! spawn `<exe> __sandbox-init`     mount points, build dir owner
//!                                clone(NEWUSER|NS|PID|IPC|UTS|        waits for the maps
//!                                      NET|CGROUP) ─────────────▶
//!                                write setgroups/uid_map/gid_map
//!                                release PID 1 ─────────────────▶    open_tree host paths,
//! stream the pty → log, callback                                     tmpfs root, skeleton,
//! timeouts: close the control    poll(stdin, pidfd):                 move_mount, proc,
//!   pipe ───────────────────▶      readable/hung up → SIGKILL PID 1  pivot_root, lo, names,
//!                                waitpid(PID 1) — the kernel has     setresgid/setresuid,
//! ◀─────── status JSON line ─    already killed the namespace        no_new_privs, seccomp,
//! waitpid(init)                                                      … caps → execve
//! ```
//!
//! The order of the steps, and why, is documented where each is done: the host side and the
//! namespaces in `init.rs`, the inside in `pid1.rs`; the step list itself in `plan.rs`.
//! Re-executing the binary (rather than forking ksbuild, which has threads) gives a clean,
//! single-threaded process in which `clone` is safe.
//!
//! That is the path of a lone build. `ksbuild realise` starts zygotes (`zygote.rs`), one
//! per `-j` slot: single-threaded processes that clone PID 1 themselves, write its id maps
//! and reap it, so no init process is started per build; from a zygote's second build on,
//! the next PID 1 is cloned while the current build runs, and a build finds its namespaces
//! made. ksbuild then does the host steps itself, hands the zygote the plan's pipe, the
//! terminal and the status pipe, and kills PID 1 through a pidfd on a time limit. If a
//! zygote cannot be used, the build takes the path above.
//!
//! **Fail closed.** Every step either succeeds or stops the build with
//! [`SandboxError::Step`], which names the step and the `errno`, and whose
//! [`SandboxError::hint`] says how to enable it. There is no unsandboxed fallback.
//!
//! **Nothing outlives [`run`].** The builder is PID 1 of its PID namespace; when it dies
//! the kernel kills every other process of the namespace before reporting its death. The
//! init process reports only after reaping it, and `run` returns only after reaping the init
//! process. If the init process is killed, PID 1 dies of `PR_SET_PDEATHSIG`, and with it
//! the namespace; if ksbuild dies, the init process dies of the same signal first. Note that
//! the parent-death signal follows the *thread* that spawned the init process: `run` keeps
//! that thread busy until the end.
//!
//! **Kernel.** Linux 5.9 or later (`close_range`; `open_tree`/`move_mount` are 5.2,
//! `pidfd_open` 5.3), with user namespaces enabled for the invoking user.
//!
//! **The build user on the host.** When ksbuild is not root, uid 1000 inside is ksbuild's
//! own uid. When it is root, it is [`DEFAULT_ROOT_BUILD_ID`] (or [`BuildUser::Ids`]), never
//! 0: see `user_ns.rs` for why mapping to root would let a builder write host sysctls.
//!
//! # Files
//!
//! * `mod.rs` — the public types and [`run`];
//! * `plan.rs` — spec → typed steps, id maps, `argv`, environment (pure);
//! * `step.rs` — [`Step`] and how each is applied;
//! * `sys.rs` — the one narrow syscall layer (and the only `unsafe`);
//! * `seccomp.rs` — Nix's seccomp filter as a BPF program (pure);
//! * `user_ns.rs` — which host ids the build user has, and the map files;
//! * `init.rs` — the init process; `pid1.rs` — PID 1 up to `execve`;
//! * `zygote.rs` — the zygote: PID 1s cloned ahead of time, and reaped;
//! * `views.rs` — the store views' keeper: a series of builds' inputs kept mounted;
//! * `supervisor.rs` — ksbuild's side: [`Sandbox`], log streaming, timeouts;
//! * `protocol.rs` — the status messages; `error.rs` — [`SandboxError`].

#![warn(missing_docs)]

mod error;
mod init;
mod pid1;
pub mod plan;
mod protocol;
mod seccomp;
mod step;
mod supervisor;
mod sys;
mod user_ns;
mod views;
mod zygote;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::SandboxError;
pub use init::{init_main, INIT_ARG};
pub use step::{RemountFlags, Step};
pub use supervisor::{is_left_mount_point, Sandbox};
pub use sys::terminate_with_parent;
pub use user_ns::{BuildUser, DEFAULT_ROOT_BUILD_ID};
pub use views::{views_main, StoreView, StoreViews, VIEWS_ARG};
pub use zygote::{zygote_main, ZYGOTE_ARG};

/// The number of processes a build may have at once unless told otherwise
/// ([`SandboxSpec::max_processes`]; `realise --max-processes`).
///
/// Without a limit a build inherits ksbuild's `RLIMIT_NPROC` (for root typically half of
/// `kernel.threads-max`, ~96,000 on a 24 GB machine, more than the default
/// `kernel.pid_max` of 32,768): a fork bomb would take every pid of the machine. Busy real
/// builds stay far below 4096: `make -j N` runs about five processes per job (`make`, `sh`,
/// `gcc`, `cc1`, `as`), so a kernel build at `-j 256` peaks near 1,300, and threads (which
/// count) add tens per multi-threaded compiler or linker. A busybox `sh` fork bomb held at
/// 4096 took about 300 MB, and a few such builds at once stay below `pid_max`.
///
/// The limit is `RLIMIT_NPROC` ([`Step::LimitProcesses`] says why it bounds one build), not
/// a cgroup's `pids.max`: that needs a cgroup delegated to ksbuild, which an ordinary user
/// generally lacks (no systemd delegation, or a cgroup v1 hierarchy that only root writes).
pub const DEFAULT_MAX_PROCESSES: u64 = 4096;

/// What a reproducibility check changes in a build's world, each thing a reproducible
/// output must not depend on (`ksbuild check --vary`). The default changes nothing: the
/// sandbox Nix gives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Variation {
    /// Host and domain name (instead of `localhost` and `(none)`).
    pub hostname: Option<String>,
    /// The umask (instead of 022).
    pub umask: Option<u32>,
    /// Address-space layout randomisation left on (Nix turns it off).
    pub aslr: bool,
    /// The CPUs the build may use, the first this many of ksbuild's (`sched_setaffinity`),
    /// with `NIX_BUILD_CORES` to match.
    pub cpus: Option<u32>,
    /// `uname -r` reports a 2.6 kernel (`personality(UNAME26)`).
    pub old_kernel_release: bool,
    /// The build user's uid and gid inside the sandbox (instead of 1000 and 100).
    pub ids: Option<(u32, u32)>,
    /// The build directory inside the sandbox (instead of `/build`): `/NAME` or
    /// `/tmp/NAME`, one plain name.
    pub build_dir: Option<String>,
    /// Directory order: each input directory is a copy on a `tmpfs` whose entries were
    /// created in a shuffled order, and `/build` is a `tmpfs` too (its files listed in the
    /// order they are created, unlike on the store's filesystem), holding a shuffled copy
    /// of what the caller put in `build_dir`. Costs a copy of the inputs in memory.
    pub shuffled_order: bool,
    /// The monotonic and boot clocks this many seconds ahead (a time namespace).
    pub clocks_ahead: Option<u64>,
}

/// One build to run in the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSpec {
    /// The builder program, as seen inside the sandbox (normally a store path of an input).
    pub builder: String,
    /// Its arguments (`argv[0]` is the builder's base name, as Nix passes it).
    pub args: Vec<String>,
    /// The derivation's environment; the sandbox adds Nix's base variables around it (see
    /// [`plan::builder_environment`] for who wins).
    pub env: BTreeMap<String, String>,
    /// The logical store directory, e.g. `/nix/store`.
    pub store_dir: String,
    /// The input closure: `(physical path, logical path)`; each logical path is a store path
    /// directly under `store_dir`, bound read-only (symlink store paths are recreated).
    pub inputs: Vec<(PathBuf, String)>,
    /// An empty directory on the store's filesystem; the sandbox's `/` is mounted over it,
    /// and it is the store directory inside (mode 1775, group = the build group). Outputs
    /// the builder writes in the store directory (`/nix/store/<hash>-<name>`) stay in
    /// `root_dir` (`<root_dir>/<hash>-<name>`) for the caller to register; beside them only
    /// the inputs' empty mount points (and symlinks) are left. The caller may remove them,
    /// or run the next build in the same directory: mount points it needs are reused, the
    /// others removed (anything else in it is refused). When ksbuild is root, outputs
    /// belong to the build user's host uid.
    pub root_dir: PathBuf,
    /// An empty directory beside `root_dir` (in the same directory) for overlayfs's work:
    /// with one, the store directory inside is an overlay of a `tmpfs` holding the inputs'
    /// mount points over `root_dir`, so that a build's set-up costs no disk metadata per
    /// input and leaves nothing in `root_dir` but the outputs. Without one, or where the
    /// kernel refuses an unprivileged overlay (before Linux 5.11; then once per process,
    /// the build is retried and later ones do the same), or with
    /// `KSBUILD_SANDBOX_NO_OVERLAY=1`, the mount points are created in `root_dir` on disk.
    /// It is given to the build user (mode 0700); overlayfs leaves a `work` directory of
    /// mode 000 in it, which the next build reuses.
    pub work_dir: Option<PathBuf>,
    /// A fresh directory that becomes `/build` (the caller keeps it on `--keep-failed`).
    /// It is given to the build user (mode 0700); files the caller puts in it beforehand
    /// must be readable by that user.
    pub build_dir: PathBuf,
    /// `NIX_BUILD_CORES`.
    pub cores: u32,
    /// Kill the build after this long.
    pub timeout: Option<Duration>,
    /// Kill the build after this long without output.
    pub max_silent_time: Option<Duration>,
    /// At most this many processes (threads included) of the build at once: `RLIMIT_NPROC`
    /// of the build user, counted in the build's own user namespace, so it bounds this
    /// build only (see [`DEFAULT_MAX_PROCESSES`]). A `fork` beyond it fails with `EAGAIN`.
    /// Nix sets no such limit; `None` keeps ksbuild's own (inherited, and counted the same
    /// way).
    pub max_processes: Option<u64>,
    /// What a reproducibility check varies (nothing, by default).
    pub variation: Variation,
    /// Which host user the build user is.
    pub build_user: BuildUser,
    /// The builder's stdout and stderr are appended here (the file is created on the first
    /// output: a build that prints nothing leaves none).
    pub log: PathBuf,
    /// A store view (from [`StoreViews::update`]) whose entries are exactly the inputs,
    /// kept in `root_dir`: PID 1 attaches it rather than binding each input (no overlay).
    /// `root_dir` is then not checked: the caller keeping the view removes anything but
    /// the view's entries that a build leaves in it (outputs it has not taken, what the
    /// builder wrote beside them) before the next build in it. `inputs` is not read then
    /// (leave it empty: the view is the inputs). The build must start through a zygote,
    /// which hands the view to PID 1; without one it fails.
    pub store_view: Option<StoreView>,
}

/// How the builder ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuilderStatus {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal.
    Signaled(i32),
}

impl BuilderStatus {
    /// Exit code 0.
    pub fn success(&self) -> bool {
        *self == BuilderStatus::Exited(0)
    }
}

impl std::fmt::Display for BuilderStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuilderStatus::Exited(code) => write!(f, "exit code {code}"),
            BuilderStatus::Signaled(sig) => match nix::sys::signal::Signal::try_from(*sig) {
                Ok(s) => write!(f, "killed by {s}"),
                Err(_) => write!(f, "killed by signal {sig}"),
            },
        }
    }
}

/// Which limit stopped a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeoutKind {
    /// [`SandboxSpec::timeout`].
    Timeout,
    /// [`SandboxSpec::max_silent_time`].
    MaxSilentTime,
}

/// The result of a build that ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildOutcome {
    /// How the builder ended (`SIGKILL` after a timeout).
    pub status: BuilderStatus,
    /// Wall time from starting the init process to its end.
    pub duration: Duration,
    /// Set when ksbuild killed the build for a time limit.
    pub timed_out: Option<TimeoutKind>,
}

impl BuildOutcome {
    /// The builder exited with code 0 within its limits.
    pub fn success(&self) -> bool {
        self.timed_out.is_none() && self.status.success()
    }
}

/// Runs one build hermetically with [`Sandbox::new`] (the init process is this very
/// executable, which must be `ksbuild`). `on_log_line` gets every line of the builder's
/// output (without its newline) as it comes; the output is also appended to
/// [`SandboxSpec::log`]. Returns when the build and every process it started are gone.
pub fn run(
    spec: &SandboxSpec,
    on_log_line: &mut dyn FnMut(&[u8]),
) -> Result<BuildOutcome, SandboxError> {
    Sandbox::new().run(spec, on_log_line)
}
