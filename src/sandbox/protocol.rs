//! The messages between ksbuild and its init process, one JSON object per line.
//!
//! * ksbuild → init, on the init process's stdin: one [`super::plan::Plan`] line. The pipe
//!   then stays open as the control channel: when ksbuild closes it (a timeout, an error,
//!   or ksbuild dying) the init process kills the sandbox's PID 1 and reports. (A PID 1
//!   cloned by a zygote reads the plan from that pipe itself; ksbuild kills it through a
//!   pidfd, and the zygote reports its end as the init process would.)
//! * init and PID 1 → ksbuild, on the init process's stderr: [`StatusMessage`] lines.
//!   PID 1 writes through a close-on-exec copy, so after a successful `execve` only the init
//!   process can write there; the builder never can.
//!
//! The builder's own output goes to a pseudo-terminal, never here. Writing does I/O on the
//! given descriptor.

use std::os::fd::BorrowedFd;

use serde::{Deserialize, Serialize};

use super::step::Step;
use super::sys;
use super::BuilderStatus;

/// What the init process or PID 1 reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub(crate) enum StatusMessage {
    /// A setup step failed; the build never started (or was stopped).
    StepFailed {
        /// The step.
        step: Step,
        /// The raw `errno`.
        errno: i32,
    },
    /// PID 1 (the builder, once exec'd) ended, and with it every process of the namespace.
    Finished {
        /// How it ended.
        status: BuilderStatus,
    },
    /// The init process could not do its job (an unreadable plan…).
    InitFailed {
        /// What happened.
        message: String,
    },
}

impl StatusMessage {
    /// Writes the message as one line, in one `write` where the pipe allows (messages are
    /// far below `PIPE_BUF` except for unusually long paths). Failures are ignored: if
    /// ksbuild is gone there is nobody to tell.
    pub(crate) fn send(&self, fd: BorrowedFd<'_>) {
        if let Ok(mut line) = serde_json::to_vec(self) {
            line.push(b'\n');
            let _ = sys::write_all(fd, &line);
        }
    }
}

/// Timings of the init process and PID 1 (`KSBUILD_TIMINGS`), sent on the status pipe as
/// lines that are not JSON; ksbuild prints them. The variable's value is when ksbuild
/// started the init process ([`crate::timing::epoch_micros`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timer {
    origin: Option<u128>,
}

impl Timer {
    /// Enabled when ksbuild passed its start time in the environment.
    pub(crate) fn from_env() -> Timer {
        Timer {
            origin: std::env::var(crate::timing::ENV)
                .ok()
                .and_then(|v| v.parse().ok()),
        }
    }

    /// Enabled when `origin` (ksbuild's start of the init process) is given.
    pub(crate) fn at(origin: Option<u128>) -> Timer {
        Timer { origin }
    }

    /// Whether timings are reported.
    pub(crate) fn enabled(&self) -> bool {
        self.origin.is_some()
    }

    /// Reports that `point` is reached, counted from ksbuild's start of the init process.
    pub(crate) fn point(&self, fd: BorrowedFd<'_>, point: &str) {
        if let Some(origin) = self.origin {
            let mut line = crate::timing::line_after(point, origin);
            line.push('\n');
            let _ = sys::write_all(fd, line.as_bytes());
        }
    }

    /// Reports how long `phase` took since `since`.
    pub(crate) fn phase(&self, fd: BorrowedFd<'_>, phase: &str, since: std::time::Instant) {
        if self.enabled() {
            let mut line = crate::timing::line(phase, since);
            line.push('\n');
            let _ = sys::write_all(fd, line.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_as_one_line() {
        for m in [
            StatusMessage::StepFailed {
                step: Step::MountProc {
                    target: "/r/proc".into(),
                },
                errno: 1,
            },
            StatusMessage::Finished {
                status: BuilderStatus::Signaled(9),
            },
            StatusMessage::InitFailed {
                message: "x\ny".into(),
            },
        ] {
            let line = serde_json::to_string(&m).unwrap();
            assert!(!line.contains('\n'));
            assert_eq!(serde_json::from_str::<StatusMessage>(&line).unwrap(), m);
        }
    }
}
