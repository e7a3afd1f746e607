//! The sandbox's one error type, [`SandboxError`], and the hints that say how to enable a
//! step the kernel refused. No I/O.

use std::path::PathBuf;

use nix::errno::Errno;

use super::step::Step;

/// Everything that can stop a sandboxed build before it reports a builder status.
///
/// A failing build is not an error: [`super::run`] returns a [`super::BuildOutcome`] with
/// the builder's status. These are the cases where the build could not be run at all, or
/// not run safely; there is never an unsandboxed fallback.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The spec cannot be built as given (a relative store dir, a logical input path outside
    /// it, a NUL byte in an argument, a non-empty root directory…).
    #[error("invalid sandbox spec: {field}: {reason}")]
    InvalidSpec {
        /// The field of [`super::SandboxSpec`] at fault.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A setup step failed: the kernel (or the filesystem) refused it with `errno`.
    #[error("sandbox setup step `{step}` failed: {errno}")]
    Step {
        /// The step, with the paths it was working on.
        step: Step,
        /// What the kernel answered.
        errno: Errno,
    },
    /// The init process (`<ksbuild> __sandbox-init`) could not be started.
    #[error("cannot start the sandbox init process `{program}`")]
    SpawnInit {
        /// The program that was executed.
        program: PathBuf,
        /// Why it could not be.
        #[source]
        source: std::io::Error,
    },
    /// The init process broke the protocol: it exited without a report, or sent something
    /// that is not a status message.
    #[error("the sandbox init process failed: {message}")]
    Init {
        /// What went wrong, including anything the process printed.
        message: String,
    },
    /// The build log could not be opened or written.
    #[error("cannot write the build log `{path}`")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// ksbuild's own side of the pipes failed (creating the pty, polling, reading).
    #[error("sandbox supervision failed while trying to {action}")]
    Supervise {
        /// What ksbuild was doing.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

const USERNS_HINT: &str = "user namespaces are disabled or exhausted on this host: check that \
`sysctl user.max_user_namespaces` (and `user.max_pid_namespaces`, `user.max_net_namespaces`, \
`user.max_mnt_namespaces`) are greater than 0, that `kernel.unprivileged_userns_clone=1` \
(older Debian kernels) and `kernel.apparmor_restrict_unprivileged_userns=0` (Ubuntu 24.04 and \
later); inside a container, allow `clone`/`unshare` of namespaces (e.g. Docker's \
`--security-opt seccomp=unconfined`). ksbuild never builds without the sandbox";

impl SandboxError {
    /// A short suggestion of how to fix the cause, when there is one.
    pub fn hint(&self) -> Option<String> {
        match self {
            SandboxError::Step { step, errno } => step_hint(step, *errno),
            SandboxError::SpawnInit { .. } => Some(
                "the sandbox re-executes the ksbuild binary (`/proc/self/exe __sandbox-init`); \
                 is `/proc` mounted?"
                    .to_string(),
            ),
            SandboxError::InvalidSpec { .. }
            | SandboxError::Init { .. }
            | SandboxError::Log { .. }
            | SandboxError::Supervise { .. } => None,
        }
    }
}

fn step_hint(step: &Step, errno: Errno) -> Option<String> {
    let text = match (step, errno) {
        (Step::CreateNamespaces, Errno::EPERM | Errno::ENOSPC | Errno::EINVAL | Errno::EUSERS) => {
            USERNS_HINT.to_string()
        }
        (Step::CreateNamespaces, Errno::ENOMEM) => {
            "out of memory, or the PID namespace of this process is dying".to_string()
        }
        (Step::WriteIdMap { .. }, Errno::EPERM) => {
            "the kernel refused the id map: without root, ksbuild can only map its own uid and \
             gid; as root, check that no LSM forbids writing `/proc/<pid>/uid_map`"
                .to_string()
        }
        (Step::CloseInheritedDescriptors, Errno::ENOSYS | Errno::EINVAL) => {
            "ksbuild needs `close_range(2)`: Linux 5.9 or later".to_string()
        }
        (Step::WatchChild, Errno::ENOSYS) => {
            "ksbuild needs `pidfd_open(2)`: Linux 5.3 or later".to_string()
        }
        (Step::MountProc { .. }, Errno::EPERM | Errno::EACCES) => {
            "a fresh procfs can only be mounted where a fully visible `/proc` exists; this host's \
             `/proc` is partly masked (a container?): run it with an unmasked `/proc` (Docker: \
             `--security-opt systempaths=unconfined`)"
                .to_string()
        }
        (Step::MountDevpts { .. } | Step::MountTmpfs { .. }, Errno::EPERM) => {
            "this kernel or its LSM does not allow this filesystem in a user namespace".to_string()
        }
        (Step::MountOverlay { .. }, _) => "the store directory's overlayfs could not be mounted; \
             `KSBUILD_SANDBOX_NO_OVERLAY=1` creates the inputs' mount points on disk instead"
            .to_string(),
        (Step::DetachTree { .. } | Step::AttachTree { .. }, Errno::ENOSYS) => {
            "ksbuild needs `open_tree(2)` and `move_mount(2)`: Linux 5.2 or later".to_string()
        }
        (
            Step::InspectInput { .. } | Step::DetachTree { .. } | Step::CreateMountPoint { .. },
            Errno::ENOENT,
        ) => "an input of the build is missing from the store's physical root; was it \
              garbage-collected or never realised?"
            .to_string(),
        (Step::SeccompFilter, Errno::ENOSYS) => {
            "ksbuild has no seccomp filter for this architecture (only x86_64 and aarch64)"
                .to_string()
        }
        (Step::SeccompFilter, Errno::EINVAL) => {
            "this kernel was built without CONFIG_SECCOMP_FILTER".to_string()
        }
        (Step::Exec { .. }, Errno::ENOENT) => {
            "the builder does not exist inside the sandbox: is the store path that holds it \
             among the inputs? (an ELF builder also needs its interpreter in the inputs)"
                .to_string()
        }
        (Step::Exec { .. }, Errno::EACCES) => "the builder is not executable".to_string(),
        (Step::Exec { .. }, Errno::ENOEXEC) => {
            "the builder is not a program this kernel can run (wrong architecture?)".to_string()
        }
        (Step::PivotRoot { .. }, Errno::EINVAL) => {
            "pivot_root(2) needs the new root to be a mount point not on a shared mount; \
             is the root directory on a filesystem that allows bind mounts?"
                .to_string()
        }
        _ => return None,
    };
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userns_refusals_explain_the_sysctls() {
        for errno in [Errno::EPERM, Errno::ENOSPC, Errno::EINVAL] {
            let e = SandboxError::Step {
                step: Step::CreateNamespaces,
                errno,
            };
            let hint = e.hint().expect("a hint");
            assert!(hint.contains("user.max_user_namespaces"), "{hint}");
            assert!(
                hint.contains("kernel.unprivileged_userns_clone=1"),
                "{hint}"
            );
            assert!(
                hint.contains("apparmor_restrict_unprivileged_userns=0"),
                "{hint}"
            );
            assert!(e.to_string().contains("create the namespaces"), "{e}");
        }
    }

    #[test]
    fn step_errors_name_the_step_and_the_errno() {
        let e = SandboxError::Step {
            step: Step::DetachTree {
                source: "/s/nix/store/x".into(),
            },
            errno: Errno::ENOENT,
        };
        let text = e.to_string();
        assert!(text.contains("bind mount of `/s/nix/store/x`"), "{text}");
        assert!(text.contains("ENOENT"), "{text}");
        assert!(e.hint().expect("hint").contains("missing"));
    }
}
