//! Phase timings for profiling: with `KSBUILD_TIMINGS` set, how long each phase took is
//! printed on stderr as `timing: <phase>: <ms> ms`. Does I/O (stderr) only when enabled.
//!
//! The sandbox's init process and PID 1 report through their status pipe (their
//! environment is cleared, so ksbuild tells them with [`ENV`]); ksbuild prints those lines
//! as they are.

use std::sync::OnceLock;
use std::time::Instant;

/// The variable that enables timings.
pub const ENV: &str = "KSBUILD_TIMINGS";

/// The prefix of every timing line.
pub const PREFIX: &str = "timing: ";

/// Whether timings are printed (read once per process).
pub fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os(ENV).is_some())
}

/// The line for a phase that started at `since`.
pub fn line(phase: &str, since: Instant) -> String {
    format!(
        "{PREFIX}{phase}: {:.3} ms",
        since.elapsed().as_secs_f64() * 1000.0
    )
}

/// Prints how long `phase` took since `since`, when enabled.
pub fn report(phase: &str, since: Instant) {
    if enabled() {
        eprintln!("{}", line(phase, since));
    }
}

/// Microseconds since the Unix epoch: comparable between processes (the init process and
/// PID 1 report how long after ksbuild started them they reached a point).
pub fn epoch_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0)
}

/// The line for a point reached `now - origin` microseconds after `origin` (an
/// [`epoch_micros`] of another process).
pub fn line_after(point: &str, origin: u128) -> String {
    let us = epoch_micros().saturating_sub(origin);
    format!("{PREFIX}{point}: +{:.3} ms", us as f64 / 1000.0)
}
