//! The typed setup steps of a sandbox ([`Step`]) and how each is applied. A plan is two
//! lists of steps, applied in one loop each (host side in the init process, namespace side
//! in PID 1); the names double as the error labels. Does syscalls, through [`super::sys`].

use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

use super::sys;

/// Extra flags for a bind remount. The flags the mount already has are kept (the kernel
/// refuses to clear flags that are locked because the mount came from a more privileged
/// mount namespace), so these can only add restrictions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RemountFlags {
    /// `MS_RDONLY`.
    pub read_only: bool,
    /// `MS_NOSUID`.
    pub nosuid: bool,
    /// `MS_NODEV`.
    pub nodev: bool,
    /// `MS_NOEXEC`.
    pub noexec: bool,
}

impl fmt::Display for RemountFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = vec![if self.read_only { "ro" } else { "rw" }];
        if self.nosuid {
            names.push("nosuid");
        }
        if self.nodev {
            names.push("nodev");
        }
        if self.noexec {
            names.push("noexec");
        }
        f.write_str(&names.join(","))
    }
}

/// One setup step of the sandbox. Paths are host paths until the new root is mounted; from
/// the `chdir` into it they are relative to it, and after [`Step::PivotRoot`] absolute
/// paths inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Step {
    // ---- checked by ksbuild while planning -------------------------------------------
    /// `lstat` an input's physical path, to know what kind of mount point it needs.
    InspectInput {
        /// The physical path.
        path: PathBuf,
    },

    // ---- on the host, in the init process, before the namespaces exist ----------------
    /// `close_range(3, ~0U, 0)`: the init process keeps only stdin, stdout and stderr of
    /// what it inherited (a leaked directory descriptor would be a way out of any root).
    /// Done by the init process itself, first; never listed in a plan.
    CloseInheritedDescriptors,
    /// `setgroups(0, NULL)`: drop root's supplementary groups (only when ksbuild is root).
    ClearSupplementaryGroups,
    /// `mkdir` with an exact mode.
    CreateDirectory {
        /// The directory.
        path: PathBuf,
        /// Its mode (the umask is 0 in the init process).
        mode: u32,
    },
    /// Create the mount point of an input: an empty directory or file, the same kind as
    /// `source`.
    CreateMountPoint {
        /// The input's physical path.
        source: PathBuf,
        /// The mount point under the new root.
        target: PathBuf,
    },
    /// Create an empty file (the mount point of a device node).
    CreateFile {
        /// The file.
        path: PathBuf,
    },
    /// Write a generated file (`/etc/passwd`, `/etc/group`, `/etc/hosts`).
    WriteFile {
        /// The file.
        path: PathBuf,
        /// Its mode.
        mode: u32,
        /// Its contents.
        contents: String,
    },
    /// `symlink(target, path)`.
    CreateSymlink {
        /// What the link points to.
        target: PathBuf,
        /// The link.
        path: PathBuf,
    },
    /// `lchown`.
    SetOwner {
        /// The file.
        path: PathBuf,
        /// New owner, if it changes.
        uid: Option<u32>,
        /// New group, if it changes.
        gid: Option<u32>,
    },
    /// `chmod`.
    SetMode {
        /// The file.
        path: PathBuf,
        /// The mode.
        mode: u32,
    },

    // ---- creating the namespaces (init process) ---------------------------------------
    /// `clone(CLONE_NEWUSER|CLONE_NEWNS|CLONE_NEWPID|CLONE_NEWIPC|CLONE_NEWUTS|CLONE_NEWNET|
    /// CLONE_NEWCGROUP)`: the child is PID 1 of the new PID namespace.
    CreateNamespaces,
    /// Write `/proc/<child>/{setgroups,uid_map,gid_map}`.
    WriteIdMap {
        /// The file under `/proc/<child>/`.
        file: String,
        /// What was written.
        contents: String,
    },
    /// `pidfd_open(2)` on PID 1, to wait for it and for ksbuild at the same time.
    WatchChild,

    // ---- in PID 1, inside the namespaces -----------------------------------------------
    /// `mount(NULL, "/", NULL, MS_REC|MS_PRIVATE)`: nothing propagates back to the host.
    MakeMountsPrivate,
    /// `open_tree(source, OPEN_TREE_CLONE)`: a detached bind mount of a host path (not
    /// recursive: no submount comes along), taken while host paths can still be reached,
    /// to be attached inside the new root by [`Step::AttachTree`].
    DetachTree {
        /// The host path.
        source: PathBuf,
    },
    /// `move_mount` of the tree detached from `source` onto `target`.
    AttachTree {
        /// The host path the tree was taken from.
        source: PathBuf,
        /// The mount point (relative to the new root).
        target: PathBuf,
    },
    /// [`Step::DetachTree`] of each `dir/name`, with `dir` looked up once
    /// (`open_tree(dirfd, name, OPEN_TREE_CLONE)`): the inputs of a store directory,
    /// whose closure may hold thousands of paths. With `restrict`, taken from a bind of
    /// `dir` onto itself remounted with those flags, so that each comes restricted and
    /// [`Step::AttachTrees`] has none to restrict; where that bind cannot be made (mounts
    /// beneath `dir`), taken from `dir` as it is, and restricted one by one.
    DetachTrees {
        /// The host directory.
        dir: PathBuf,
        /// The entries of `dir` to take.
        names: Vec<String>,
        /// The restrictions to give them at the source.
        restrict: Option<RemountFlags>,
    },
    /// The mount points of the trees of [`Step::DetachTrees`]: in `dir` (relative to the
    /// new root), for each `(name, is_directory)` an empty directory or file, created
    /// with `dir` looked up once. Their modes do not matter: the mounts hide them.
    CreateMountPoints {
        /// The directory (relative to the new root).
        dir: PathBuf,
        /// The names, and whether each is a directory.
        entries: Vec<(String, bool)>,
    },
    /// [`Step::AttachTree`] of each tree [`Step::DetachTrees`] took from `source` onto
    /// the same name in `target`, each restricted with `flags` (added to the flags it came
    /// with; a failure is reported as the [`Step::Remount`] of that mount point) unless it
    /// came restricted: `target` looked up once.
    AttachTrees {
        /// The host directory the trees were taken from.
        source: PathBuf,
        /// The directory of their mount points (relative to the new root).
        target: PathBuf,
        /// The restrictions to add to each.
        flags: RemountFlags,
        /// Whether to restrict each tree before it is attached (`mount_setattr`, Linux
        /// 5.12); else, or where the kernel has no `mount_setattr` (`ENOSYS`), each is
        /// remounted after it is attached, keeping the flags it came with (`fstatvfs`).
        restrict_detached: bool,
    },
    /// Attaches the store view handed to PID 1 with its request (see `views.rs`: a detached
    /// clone of the root directory with every input bound in it) at `target` (relative to
    /// the new root), with one `move_mount`.
    AttachView {
        /// The store directory (relative to the new root).
        target: PathBuf,
    },
    /// `setfsgid(2)`, `setfsuid(2)`: files created from here on (the skeleton of the new
    /// root) belong to the build user, as in Nix; capabilities are kept.
    SetFilesystemIds {
        /// The uid inside the namespace.
        uid: u32,
        /// The gid inside the namespace.
        gid: u32,
    },
    /// `mount(NULL, target, NULL, MS_REMOUNT|MS_BIND|flags)`, keeping the flags it has.
    Remount {
        /// The mount point.
        target: PathBuf,
        /// The restrictions to add.
        flags: RemountFlags,
    },
    /// Copy the tree detached from `source` into `target` (a fresh `tmpfs`), each
    /// directory's entries created in a shuffled order (a check's variation: the build
    /// sees its inputs and `/build` listed in another directory order).
    CopyTree {
        /// The host path the tree was taken from.
        source: PathBuf,
        /// The directory it is copied into (relative to the new root).
        target: PathBuf,
    },
    /// `unshare(CLONE_NEWTIME)`, the monotonic and boot clocks set ahead, and `setns`
    /// into it (a check's variation: the build's uptime is not the host's).
    EnterTimeNamespace {
        /// How far ahead, in seconds.
        seconds: u64,
    },
    /// Mount a fresh `tmpfs` (`/dev/shm`).
    MountTmpfs {
        /// The mount point.
        target: PathBuf,
        /// Mount data, e.g. `mode=1777`.
        options: String,
    },
    /// Mount an overlayfs (`userxattr`, `nosuid,nodev`) at `target`: the store directory,
    /// made of a `tmpfs` skeleton holding the inputs' mount points (`lower`) and `root_dir`
    /// on disk (`upper`), so that mount points cost no disk metadata and outputs land on
    /// disk. Linux 5.11 or later for an unprivileged overlay.
    MountOverlay {
        /// The mount point (relative to the new root).
        target: PathBuf,
        /// The read-only layer: the skeleton.
        lower: PathBuf,
        /// The writable layer: `root_dir`, reached through a bind of its parent.
        upper: PathBuf,
        /// overlayfs's work directory, on the same mount as `upper`.
        work: PathBuf,
    },
    /// `umount2(target, MNT_DETACH)`: a mount needed only while setting up.
    DetachMount {
        /// The mount point.
        target: PathBuf,
    },
    /// `rmdir(2)`.
    RemoveDirectory {
        /// The directory.
        path: PathBuf,
    },
    /// Mount a private `devpts` instance (`/dev/pts`).
    MountDevpts {
        /// The mount point.
        target: PathBuf,
        /// Mount data.
        options: String,
    },
    /// Mount a fresh `proc` for the new PID namespace.
    MountProc {
        /// The mount point.
        target: PathBuf,
    },
    /// `chdir(new_root); pivot_root(".", ".")`: the new root becomes `/`, the old one is
    /// stacked on top of it.
    PivotRoot {
        /// The new root (a mount point: it was bound onto itself).
        new_root: PathBuf,
    },
    /// `umount2(".", MNT_DETACH); chdir("/")`: the host's root is gone from the namespace.
    DetachOldRoot,
    /// `ioctl(SIOCSIFFLAGS)`: bring up `lo`, the only interface of the new network namespace.
    LoopbackUp,
    /// `sethostname(2)`.
    SetHostname {
        /// The name (`localhost`).
        name: String,
    },
    /// `setdomainname(2)`.
    SetDomainname {
        /// The name (`(none)`).
        name: String,
    },
    /// `setsid(2)`: no terminal signals reach the build.
    NewSession,
    /// stdin from `/dev/null`; stderr onto stdout (the log pty).
    RedirectStdio,
    /// `setresgid(2)` to the build group (100).
    SetGroupId {
        /// The gid inside the namespace.
        gid: u32,
    },
    /// `setresuid(2)` to the build user (1000).
    SetUserId {
        /// The uid inside the namespace.
        uid: u32,
    },
    /// `keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)`: a new anonymous session keyring, owned
    /// by the build user, instead of ksbuild's.
    NewSessionKeyring,
    /// `prctl(PR_SET_PDEATHSIG, SIGKILL)`, (re)armed after the credential change cleared
    /// it, then a check that the init process is still there.
    ParentDeathSignal,
    /// `prctl(PR_SET_NO_NEW_PRIVS, 1)`.
    NoNewPrivileges,
    /// Install Nix's seccomp filter (`seccomp.rs`): no setuid/setgid bits, no extended
    /// attributes, no system calls of foreign architectures.
    SeccompFilter,
    /// `personality(ADDR_NO_RANDOMIZE)`: ASLR off, as in Nix.
    DisableAddressRandomisation,
    /// `personality(UNAME26)`: `uname` reports a 2.6 release (a check's variation).
    ReportOldKernelRelease,
    /// `sched_setaffinity`: the first `count` CPUs of those allowed (a check's variation).
    RestrictCpus {
        /// How many.
        count: u32,
    },
    /// `setrlimit(RLIMIT_CORE)` soft limit 0, as in Nix.
    LimitCoreDumps,
    /// `setrlimit(RLIMIT_NPROC)`, soft and hard: at most this many processes (threads
    /// included) of the build user; a `fork` beyond it fails with `EAGAIN`. Since Linux
    /// 5.14 the kernel counts them per user namespace and uid (`ucounts`), and the build's
    /// namespace holds this build alone: the limit bounds neither the host user's other
    /// processes nor the other builds (before 5.14 it counted every process of the host
    /// uid). Its exemptions never apply: `CAP_SYS_RESOURCE`/`CAP_SYS_ADMIN` count only in
    /// the initial user namespace, where the builder has none, and the builder's kernel uid
    /// is never 0. The caller's own limit still holds over its processes, the build's
    /// included (a namespace keeps its creator's `RLIMIT_NPROC` unless that is root).
    LimitProcesses {
        /// The limit.
        max: u64,
    },
    /// `umask(2)`.
    SetUmask {
        /// The mask (`022`).
        mask: u32,
    },
    /// `chdir(2)`.
    ChangeDirectory {
        /// The directory (`/build`).
        path: PathBuf,
    },
    /// Every signal back to its default action and an empty signal mask (the Rust runtime
    /// of the init process ignores `SIGPIPE`, and ignored signals survive `execve`).
    ResetSignals,
    /// Clear the effective, permitted, inheritable and ambient capability sets.
    DropCapabilities,
    /// `execve(2)` of the builder.
    Exec {
        /// The builder, as seen inside the sandbox.
        path: String,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::InspectInput { path } => write!(f, "inspect input `{}`", path.display()),
            Step::CloseInheritedDescriptors => {
                f.write_str("close inherited file descriptors (close_range)")
            }
            Step::ClearSupplementaryGroups => f.write_str("clear supplementary groups"),
            Step::CreateDirectory { path, mode } => {
                write!(f, "create directory `{}` (mode {mode:o})", path.display())
            }
            Step::CreateMountPoint { source, target } => write!(
                f,
                "create mount point `{}` for `{}`",
                target.display(),
                source.display()
            ),
            Step::CreateFile { path } => write!(f, "create file `{}`", path.display()),
            Step::WriteFile { path, .. } => write!(f, "write `{}`", path.display()),
            Step::CreateSymlink { target, path } => write!(
                f,
                "create symlink `{}` -> `{}`",
                path.display(),
                target.display()
            ),
            Step::SetOwner { path, uid, gid } => write!(
                f,
                "chown `{}` to {}:{}",
                path.display(),
                uid.map_or("-".to_string(), |u| u.to_string()),
                gid.map_or("-".to_string(), |g| g.to_string())
            ),
            Step::SetMode { path, mode } => write!(f, "chmod {mode:o} `{}`", path.display()),
            Step::CreateNamespaces => f.write_str(
                "create the namespaces (clone with CLONE_NEWUSER|NEWNS|NEWPID|NEWIPC|NEWUTS|\
                 NEWNET|NEWCGROUP)",
            ),
            Step::WriteIdMap { file, contents } => {
                write!(f, "write `{}` to /proc/<pid>/{file}", contents.trim_end())
            }
            Step::WatchChild => f.write_str("pidfd_open the sandbox's PID 1"),
            Step::MakeMountsPrivate => f.write_str("make every mount private (MS_REC|MS_PRIVATE)"),
            Step::DetachTree { source } => {
                write!(
                    f,
                    "clone a bind mount of `{}` (open_tree)",
                    source.display()
                )
            }
            Step::AttachTree { source, target } => write!(
                f,
                "bind `{}` onto `{}` (move_mount)",
                source.display(),
                target.display()
            ),
            Step::DetachTrees {
                dir,
                names,
                restrict,
            } => {
                write!(
                    f,
                    "clone bind mounts of {} entries of `{}` (open_tree)",
                    names.len(),
                    dir.display()
                )?;
                match restrict {
                    Some(flags) => write!(f, ", {flags} at the source (a bind of it onto itself)"),
                    None => Ok(()),
                }
            }
            Step::AttachView { target } => write!(
                f,
                "attach the kept view of the inputs at `{}` (move_mount)",
                target.display()
            ),
            Step::CreateMountPoints { dir, entries } => write!(
                f,
                "create {} mount points in `{}`",
                entries.len(),
                dir.display()
            ),
            Step::AttachTrees {
                source,
                target,
                flags,
                restrict_detached,
            } => write!(
                f,
                "bind the entries taken from `{}` onto `{}` {flags} ({}, unless restricted at the source)",
                source.display(),
                target.display(),
                match restrict_detached {
                    true => "mount_setattr, move_mount",
                    false => "move_mount, remount",
                }
            ),
            Step::SetFilesystemIds { uid, gid } => write!(f, "setfsgid {gid}, setfsuid {uid}"),
            Step::Remount { target, flags } => {
                write!(f, "remount `{}` {flags}", target.display())
            }
            Step::MountTmpfs { target, options } => {
                write!(f, "mount tmpfs on `{}` ({options})", target.display())
            }
            Step::CopyTree { source, target } => write!(
                f,
                "copy `{}` onto `{}` in shuffled order",
                source.display(),
                target.display()
            ),
            Step::EnterTimeNamespace { seconds } => write!(
                f,
                "enter a time namespace {seconds} s ahead (CLONE_NEWTIME; the kernel needs \
                 CONFIG_TIME_NS)"
            ),
            Step::MountOverlay {
                target,
                lower,
                upper,
                work,
            } => write!(
                f,
                "mount overlayfs on `{}` (lowerdir `{}`, upperdir `{}`, workdir `{}`, \
                 userxattr; the kernel needs 5.11 or later)",
                target.display(),
                lower.display(),
                upper.display(),
                work.display()
            ),
            Step::DetachMount { target } => {
                write!(f, "detach `{}` (umount2 MNT_DETACH)", target.display())
            }
            Step::RemoveDirectory { path } => write!(f, "remove directory `{}`", path.display()),
            Step::MountDevpts { target, options } => {
                write!(f, "mount devpts on `{}` ({options})", target.display())
            }
            Step::MountProc { target } => write!(f, "mount proc on `{}`", target.display()),
            Step::PivotRoot { new_root } => write!(f, "pivot_root into `{}`", new_root.display()),
            Step::DetachOldRoot => f.write_str("detach the old root (umount2 MNT_DETACH)"),
            Step::LoopbackUp => f.write_str("bring up the loopback interface `lo`"),
            Step::SetHostname { name } => write!(f, "sethostname `{name}`"),
            Step::SetDomainname { name } => write!(f, "setdomainname `{name}`"),
            Step::NewSession => f.write_str("setsid"),
            Step::RedirectStdio => {
                f.write_str("redirect stdin from /dev/null and stderr to stdout")
            }
            Step::SetGroupId { gid } => write!(f, "setresgid {gid}"),
            Step::SetUserId { uid } => write!(f, "setresuid {uid}"),
            Step::NewSessionKeyring => f.write_str("join a new session keyring"),
            Step::ParentDeathSignal => f.write_str("arm PR_SET_PDEATHSIG"),
            Step::NoNewPrivileges => f.write_str("set PR_SET_NO_NEW_PRIVS"),
            Step::SeccompFilter => f.write_str("install the seccomp filter"),
            Step::DisableAddressRandomisation => f.write_str("personality(ADDR_NO_RANDOMIZE)"),
            Step::ReportOldKernelRelease => f.write_str("personality(UNAME26)"),
            Step::RestrictCpus { count } => write!(f, "sched_setaffinity to {count} CPU(s)"),
            Step::LimitCoreDumps => f.write_str("setrlimit RLIMIT_CORE 0"),
            Step::LimitProcesses { max } => write!(f, "setrlimit RLIMIT_NPROC {max}"),
            Step::SetUmask { mask } => write!(f, "umask {mask:03o}"),
            Step::ChangeDirectory { path } => write!(f, "chdir `{}`", path.display()),
            Step::ResetSignals => f.write_str("reset signal dispositions and mask"),
            Step::DropCapabilities => f.write_str("drop all capabilities"),
            Step::Exec { path } => write!(f, "exec the builder `{path}`"),
        }
    }
}

/// What a step may need besides its own data.
pub(crate) struct StepContext<'a> {
    /// The read end of a pipe whose write end only the init process holds: it hangs up
    /// exactly when the init process is gone.
    pub lifeline: Option<BorrowedFd<'a>>,
    /// Trees detached by [`Step::DetachTree`], by source, until attached.
    pub trees: BTreeMap<PathBuf, OwnedFd>,
    /// Trees detached by [`Step::DetachTrees`], by directory.
    pub tree_batches: BTreeMap<PathBuf, sys::TreeBatch>,
    /// The store view handed to PID 1 with its request, until attached.
    pub view: Option<OwnedFd>,
    /// The item of a batch step that failed, as the single step it stands for: what is
    /// reported (a failed batch step names its entry, as the single steps did).
    pub failed_item: Option<Step>,
    /// What a step that succeeded did otherwise than its description says, for its
    /// timing line.
    pub note: Option<&'static str>,
}

impl<'a> StepContext<'a> {
    /// A context with the given lifeline and no detached trees.
    pub(crate) fn new(lifeline: Option<BorrowedFd<'a>>) -> StepContext<'a> {
        StepContext {
            lifeline,
            trees: BTreeMap::new(),
            tree_batches: BTreeMap::new(),
            note: None,
            view: None,
            failed_item: None,
        }
    }
}

impl Step {
    /// Applies the step. The steps performed by the init process or PID 1 themselves
    /// (inspection, clone, id maps, pidfd, exec) never appear in a plan's lists and are
    /// refused here with `EINVAL`.
    pub(crate) fn apply(&self, ctx: &mut StepContext<'_>) -> Result<(), Errno> {
        match self {
            Step::ClearSupplementaryGroups => sys::clear_supplementary_groups(),
            Step::CreateDirectory { path, mode } => sys::create_directory(path, *mode),
            Step::CreateMountPoint { source, target } => sys::create_mount_point(source, target),
            Step::CreateFile { path } => sys::create_empty_file(path),
            Step::WriteFile {
                path,
                mode,
                contents,
            } => sys::write_new_file(path, *mode, contents.as_bytes()),
            Step::CreateSymlink { target, path } => sys::symlink(target, path),
            Step::SetOwner { path, uid, gid } => sys::lchown(path, *uid, *gid),
            Step::SetMode { path, mode } => sys::chmod(path, *mode),
            Step::MakeMountsPrivate => sys::make_mounts_private(),
            Step::DetachTree { source } => {
                let tree = sys::detach_tree(source)?;
                ctx.trees.insert(source.clone(), tree);
                Ok(())
            }
            Step::AttachTree { source, target } => {
                let tree = ctx.trees.remove(source).ok_or(Errno::EBADF)?;
                sys::attach_tree(tree.as_fd(), target)
            }
            Step::AttachView { target } => {
                let tree = ctx.view.take().ok_or(Errno::EBADF)?;
                sys::attach_tree(tree.as_fd(), target)
            }
            Step::DetachTrees {
                dir,
                names,
                restrict,
            } => {
                let batch = sys::detach_trees(dir, names, *restrict).map_err(|(name, errno)| {
                    ctx.failed_item = name.map(|n| Step::DetachTree {
                        source: dir.join(n),
                    });
                    errno
                })?;
                if restrict.is_some() && !batch.restricted {
                    ctx.note = Some(" (not at the source: no bind of it could be made)");
                }
                ctx.tree_batches.insert(dir.clone(), batch);
                Ok(())
            }
            Step::CreateMountPoints { dir, entries } => sys::create_mount_points(dir, entries)
                .map_err(|(name, errno)| {
                    ctx.failed_item = name.map(|(n, is_dir)| match is_dir {
                        true => Step::CreateDirectory {
                            path: dir.join(n),
                            mode: 0o755,
                        },
                        false => Step::CreateFile { path: dir.join(n) },
                    });
                    errno
                }),
            Step::AttachTrees {
                source,
                target,
                flags,
                restrict_detached,
            } => {
                let batch = ctx.tree_batches.remove(source).ok_or(Errno::EBADF)?;
                sys::attach_trees(&batch, target, *flags, *restrict_detached).map_err(
                    |(failure, errno)| {
                        ctx.failed_item = failure.map(|(name, restricting)| match restricting {
                            false => Step::AttachTree {
                                source: source.join(name),
                                target: target.join(name),
                            },
                            true => Step::Remount {
                                target: target.join(name),
                                flags: *flags,
                            },
                        });
                        errno
                    },
                )
            }
            Step::SetFilesystemIds { uid, gid } => sys::set_filesystem_ids(*uid, *gid),
            Step::Remount { target, flags } => sys::remount(target, *flags),
            Step::MountTmpfs { target, options } => sys::mount_tmpfs(target, options),
            Step::CopyTree { source, target } => {
                let tree = ctx.trees.remove(source).ok_or(Errno::EBADF)?;
                let path = PathBuf::from(format!("/proc/self/fd/{}", tree.as_raw_fd()));
                sys::copy_tree_shuffled(&path, target)
            }
            Step::EnterTimeNamespace { seconds } => sys::enter_time_namespace(*seconds),
            Step::MountOverlay {
                target,
                lower,
                upper,
                work,
            } => sys::mount_overlay(target, lower, upper, work),
            Step::DetachMount { target } => sys::detach_mount(target),
            Step::RemoveDirectory { path } => sys::remove_directory(path),
            Step::MountDevpts { target, options } => sys::mount_devpts(target, options),
            Step::MountProc { target } => sys::mount_proc(target),
            Step::PivotRoot { new_root } => sys::pivot_root_into(new_root),
            Step::DetachOldRoot => sys::detach_old_root(),
            Step::LoopbackUp => sys::loopback_up(),
            Step::SetHostname { name } => sys::set_hostname(name),
            Step::SetDomainname { name } => sys::set_domainname(name),
            Step::NewSession => sys::new_session(),
            Step::RedirectStdio => sys::redirect_stdio(),
            Step::SetGroupId { gid } => sys::set_group_id(*gid),
            Step::SetUserId { uid } => sys::set_user_id(*uid),
            Step::ParentDeathSignal => {
                sys::set_parent_death_signal()?;
                match ctx.lifeline {
                    Some(fd) if sys::hung_up(fd)? => Err(Errno::ESRCH),
                    _ => Ok(()),
                }
            }
            Step::NewSessionKeyring => sys::new_session_keyring(),
            Step::NoNewPrivileges => sys::set_no_new_privs(),
            Step::SeccompFilter => {
                if !super::seccomp::supported() {
                    return Err(Errno::ENOSYS);
                }
                sys::install_seccomp_filter(&super::seccomp::program())
            }
            Step::DisableAddressRandomisation => sys::disable_address_randomisation(),
            Step::ReportOldKernelRelease => sys::report_old_kernel_release(),
            Step::RestrictCpus { count } => sys::restrict_cpus(*count),
            Step::LimitCoreDumps => sys::limit_core_dumps(),
            Step::LimitProcesses { max } => sys::limit_processes(*max),
            Step::SetUmask { mask } => {
                sys::set_umask(*mask);
                Ok(())
            }
            Step::ChangeDirectory { path } => sys::chdir(path),
            Step::ResetSignals => sys::reset_signals(),
            Step::DropCapabilities => sys::drop_capabilities(),
            Step::InspectInput { .. }
            | Step::CloseInheritedDescriptors
            | Step::CreateNamespaces
            | Step::WriteIdMap { .. }
            | Step::WatchChild
            | Step::Exec { .. } => Err(Errno::EINVAL),
        }
    }

    /// Whether the step may run in the init process, on the host: plain file operations,
    /// never a mount or a credential change of the host's namespaces.
    pub(crate) fn is_host_step(&self) -> bool {
        matches!(
            self,
            Step::ClearSupplementaryGroups
                | Step::CreateDirectory { .. }
                | Step::CreateMountPoint { .. }
                | Step::CreateFile { .. }
                | Step::WriteFile { .. }
                | Step::CreateSymlink { .. }
                | Step::SetOwner { .. }
                | Step::SetMode { .. }
        )
    }
}
