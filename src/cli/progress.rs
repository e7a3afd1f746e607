//! What the user sees while a realisation runs, and after.
//!
//! - On a terminal: a live view redrawn at most ten times a second by a ticker thread — a
//!   header (done/total, running, queued, the ETA along the critical path, downloads) and
//!   one line per running build (elapsed, ETA and progress estimated from the previous build
//!   of the same `.drv` or target in the store's history, the last log line). Every frame is
//!   written in one `write`, each line cut to the terminal's width, so it never flickers or
//!   wraps. Permanent lines (started remotely, built, failed) scroll above it.
//! - Without one (CI logs, `TERM=dumb`): plain lines, never a carriage return — a line when a
//!   build starts and when it ends, and a heartbeat per running build at most once per
//!   interval (60 s; `KSBUILD_HEARTBEAT=SECONDS`), so a long compile is visibly alive.
//! - Both: the plan first, downloads summarised in one line per batch, a summary at the end.
//! - `--json`: the events on stdout, nothing else on stderr but warnings and errors.
//!
//! `NO_COLOR` turns off the little colour the live view uses.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{out_line, Context};
use crate::graph::{Event, PlannedBuild, Reporter};

/// How often the live view may be redrawn.
const FRAME: Duration = Duration::from_millis(100);
/// The default interval of heartbeat lines.
const HEARTBEAT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// A terminal: the live view.
    Live,
    /// Plain lines.
    Lines,
    /// `--quiet` or `--json`: no human output but warnings and errors.
    Silent,
}

/// The progress of a realisation; a [`Reporter`].
pub(super) struct Progress {
    inner: Arc<Inner>,
    ticker: Option<JoinHandle<()>>,
}

struct Inner {
    mode: Mode,
    json: bool,
    quiet: bool,
    print_logs: bool,
    color: bool,
    heartbeat: Duration,
    started: Instant,
    state: Mutex<State>,
    stop: (Mutex<bool>, Condvar),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Build,
    Wait,
    Fetch,
    Substitute,
}

struct Running {
    kind: Kind,
    since: Instant,
    eta: Option<f64>,
    expected_lines: Option<u64>,
    lines: u64,
    last_line: String,
    /// When the next heartbeat line is due (elapsed time).
    next_heartbeat: Duration,
}

#[derive(Default)]
struct State {
    total: usize,
    done: usize,
    running: BTreeMap<String, Running>,
    /// The downloads started: their failures are told once, after the downloads end,
    /// with where each is declared and what to do.
    fetches: BTreeSet<String>,
    /// The builds of the last plan, for the critical path.
    planned: Vec<PlannedBuild>,
    finished: BTreeSet<String>,
    /// Downloads: planned in the batch, fetched, their bytes, when the batch started.
    fetch_planned: usize,
    fetched: usize,
    fetched_bytes: u64,
    fetch_started: Option<Instant>,
    /// Substitutions: count and bytes downloaded; bytes so far of those running.
    substituted: usize,
    substituted_bytes: u64,
    progress: BTreeMap<String, u64>,
    built: Vec<(String, f64)>,
    failed: Vec<String>,
    cached: usize,
    /// Rows of the live frame on the screen now (0: none).
    frame_rows: usize,
    /// The frame last drawn, to draw only what changed.
    frame: String,
}

pub(super) use crate::graph::picture::{duration as human_secs, megabytes};

/// A duration in whole seconds, as the live view shows it (it changes once a second):
/// `42s`, `6m36s`, `1h02m`.
pub(super) fn human(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s < 60 {
        format!("{s}s")
    } else if s < 3600 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    }
}

/// Unix seconds as a UTC date and time (`2026-12-03 11:09:13Z`).
pub(super) fn utc(unix: u64) -> String {
    crate::attest::sbom::utc(unix).replacen('T', " ", 1)
}

/// A build's log line made safe for one terminal row: escape sequences (colours of
/// compilers) and control characters removed, whitespace trimmed.
fn sanitize(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // CSI: ESC [ parameters final-byte; other escapes: ESC and one character.
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
        } else if c == '\t' {
            out.push(' ');
        } else if !c.is_control() {
            out.push(c);
        }
    }
    out.trim().to_string()
}

/// `line` cut to `width` columns (one per character), with `…` where it was cut.
fn fit(line: &str, width: usize) -> String {
    if line.chars().count() <= width {
        return line.to_string();
    }
    let mut s: String = line.chars().take(width.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// The terminal's size of stderr (columns, rows), or 80×24.
fn terminal_size() -> (usize, usize) {
    match rustix::termios::tcgetwinsize(std::io::stderr()) {
        Ok(w) if w.ws_col > 0 && w.ws_row > 0 => (w.ws_col as usize, w.ws_row as usize),
        _ => (80, 24),
    }
}

impl Running {
    fn new(kind: Kind, heartbeat: Duration) -> Running {
        Running {
            kind,
            since: Instant::now(),
            eta: None,
            expected_lines: None,
            lines: 0,
            last_line: String::new(),
            next_heartbeat: heartbeat,
        }
    }

    /// The estimated fraction done (below 1 while it runs): the larger of the time and
    /// the log lines, each against the previous build.
    fn fraction(&self) -> Option<f64> {
        let by_time = self
            .eta
            .filter(|e| *e > 0.0)
            .map(|e| self.since.elapsed().as_secs_f64() / e);
        let by_lines = self
            .expected_lines
            .filter(|l| *l > 0)
            .map(|l| self.lines as f64 / l as f64);
        let f = match (by_time, by_lines) {
            (Some(a), Some(b)) => a.max(b),
            (a, b) => a.or(b)?,
        };
        Some(f.min(0.99))
    }

    /// Seconds left, estimated.
    fn left(&self) -> Option<f64> {
        let eta = self.eta?;
        let elapsed = self.since.elapsed().as_secs_f64();
        Some(match self.fraction() {
            Some(f) if f > 0.0 => (elapsed / f - elapsed).max(0.0),
            _ => (eta - elapsed).max(0.0),
        })
    }
}

impl State {
    /// The seconds left along the critical path of the planned builds (running ones count
    /// what they have left, queued ones their previous duration), and whether a build
    /// without history makes it a lower bound. None when no remaining build has history.
    fn critical_path(&self) -> Option<(f64, bool)> {
        let mut end: BTreeMap<&str, f64> = BTreeMap::new();
        let (mut known, mut unknown) = (false, false);
        let mut longest: f64 = 0.0;
        for b in &self.planned {
            if self.finished.contains(&b.target) {
                end.insert(&b.target, 0.0);
                continue;
            }
            let own = match self.running.get(&b.target) {
                Some(r) => r.left(),
                None => b.eta,
            };
            match own {
                Some(_) => known = true,
                None => unknown = true,
            }
            let start = b
                .needs
                .iter()
                .filter_map(|n| end.get(n.as_str()))
                .fold(0.0, |a: f64, b| a.max(*b));
            let e = start + own.unwrap_or(0.0);
            longest = longest.max(e);
            end.insert(&b.target, e);
        }
        known.then_some((longest, unknown))
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn human(&self) -> bool {
        self.mode != Mode::Silent
    }

    /// The escape sequence that erases the frame on the screen, if any.
    fn erase(&self, s: &mut State) -> String {
        let mut e = String::new();
        if s.frame_rows > 0 {
            e.push('\r');
            if s.frame_rows > 1 {
                e.push_str(&format!("\x1b[{}A", s.frame_rows - 1));
            }
            e.push_str("\x1b[J");
            s.frame_rows = 0;
            s.frame.clear();
        }
        e
    }

    /// Prints a permanent line (above the live view, which is drawn again at once).
    fn say(&self, s: &mut State, line: &str) {
        let mut text = self.erase(s);
        text.push_str(line);
        text.push('\n');
        if self.mode == Mode::Live {
            let frame = self.frame(s);
            s.frame_rows = frame.lines().count();
            text.push_str(&frame);
            s.frame = frame;
        }
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(text.as_bytes());
        let _ = err.flush();
    }

    /// The live view's text: a header and a line per running build, cut to the terminal.
    fn frame(&self, s: &State) -> String {
        if s.running.is_empty() && s.fetch_planned == s.fetched {
            return String::new();
        }
        let (width, rows) = terminal_size();
        let width = width.saturating_sub(1).max(10);
        let builds: Vec<(&String, &Running)> = s
            .running
            .iter()
            .filter(|(_, r)| matches!(r.kind, Kind::Build | Kind::Wait | Kind::Substitute))
            .collect();
        let running = builds.len();
        let queued = s.total.saturating_sub(s.done + s.running.len());
        let mut header = format!(
            "[{}/{}] {running} running, {queued} queued",
            s.done, s.total
        );
        if let Some((left, lower_bound)) = s.critical_path() {
            header.push_str(&format!(
                ", ETA {}{}",
                if lower_bound { "≥" } else { "" },
                human(left)
            ));
        }
        let fetching = s.running.values().filter(|r| r.kind == Kind::Fetch).count();
        if fetching > 0 {
            let since = s.fetch_started.map(|t| t.elapsed()).unwrap_or_default();
            let rate = s.fetched_bytes as f64 / since.as_secs_f64().max(0.001);
            header.push_str(&format!(
                " · downloads {}/{}, {} at {}/s",
                s.fetched,
                s.fetch_planned,
                megabytes(s.fetched_bytes),
                megabytes(rate as u64)
            ));
        }
        if !s.progress.is_empty() {
            let bytes: u64 = s.progress.values().sum();
            let oldest = s
                .running
                .values()
                .filter(|r| r.kind == Kind::Substitute)
                .map(|r| r.since.elapsed())
                .max()
                .unwrap_or_default();
            let rate = bytes as f64 / oldest.as_secs_f64().max(0.001);
            header.push_str(&format!(
                " · {} downloaded, {}/s",
                megabytes(bytes),
                megabytes(rate as u64)
            ));
        }
        let mut lines = vec![self.bold(&fit(&header, width), usize::MAX)];
        let room = rows.saturating_sub(2).clamp(1, 20);
        for (i, (name, r)) in builds.iter().enumerate() {
            if i + 1 == room && builds.len() > room {
                lines.push(fit(&format!("  … and {} more", builds.len() - i), width));
                break;
            }
            let elapsed = r.since.elapsed().as_secs_f64();
            let mut line = format!("  {name} {}", human(elapsed));
            if let Some(eta) = r.eta {
                line.push_str(&format!(" / ~{}", human(eta)));
            }
            if let Some(f) = r.fraction() {
                line.push_str(&format!(" {:>2.0}%", f * 100.0));
            }
            match r.kind {
                Kind::Wait => line.push_str(" (another process builds it)"),
                Kind::Substitute => {
                    if let Some(b) = s.progress.get(*name) {
                        line.push_str(&format!(" {}", megabytes(*b)));
                    }
                }
                _ if !r.last_line.is_empty() => {
                    line.push_str("  ");
                    line.push_str(&r.last_line);
                }
                _ => {}
            }
            lines.push(self.bold(&fit(&line, width), name.chars().count() + 2));
        }
        lines.join("\n")
    }

    /// `line` with its first `n` characters in bold, when colour is on.
    fn bold(&self, line: &str, n: usize) -> String {
        if !self.color {
            return line.to_string();
        }
        let n = n.min(line.chars().count());
        let split = line
            .char_indices()
            .nth(n)
            .map(|(i, _)| i)
            .unwrap_or(line.len());
        format!("\x1b[1m{}\x1b[0m{}", &line[..split], &line[split..])
    }

    /// Draws the live view if it changed.
    fn redraw(&self, s: &mut State) {
        let frame = self.frame(s);
        if frame == s.frame {
            return;
        }
        let mut text = self.erase(s);
        s.frame_rows = if frame.is_empty() {
            0
        } else {
            frame.lines().count()
        };
        text.push_str(&frame);
        s.frame = frame;
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(text.as_bytes());
        let _ = err.flush();
    }

    /// Heartbeat lines of the builds running past their next heartbeat.
    fn heartbeats(&self, s: &mut State) {
        let now: Vec<(String, Duration)> = s
            .running
            .iter()
            .filter(|(_, r)| r.kind == Kind::Build && r.since.elapsed() >= r.next_heartbeat)
            .map(|(k, r)| (k.clone(), r.since.elapsed()))
            .collect();
        for (key, elapsed) in now {
            let Some(r) = s.running.get_mut(&key) else {
                continue;
            };
            while r.next_heartbeat <= elapsed {
                r.next_heartbeat += self.heartbeat;
            }
            let mut line = format!("still building `{key}`: {}", human(elapsed.as_secs_f64()));
            if let Some(left) = r.left() {
                line.push_str(&format!(", about {} left", human(left)));
            }
            if let Some(f) = r.fraction() {
                line.push_str(&format!(" ({:.0}%)", f * 100.0));
            }
            line.push_str(&format!(", {} log lines", r.lines));
            if !r.last_line.is_empty() {
                line.push_str(&format!(", last: {}", fit(&r.last_line, 120)));
            }
            self.say(s, &line);
        }
    }

    /// One line for a batch of downloads that ended.
    fn fetch_summary(&self, s: &mut State) {
        if let Some(since) = s.fetch_started.take() {
            if self.human() && s.fetched > 0 {
                let line = format!(
                    "fetched {} download{} ({}) in {:.1}s",
                    s.fetched,
                    if s.fetched == 1 { "" } else { "s" },
                    megabytes(s.fetched_bytes),
                    since.elapsed().as_secs_f64()
                );
                self.say(s, &line);
            }
        }
    }

    fn tick(&self) {
        let mut s = self.lock();
        match self.mode {
            Mode::Live => self.redraw(&mut s),
            Mode::Lines => self.heartbeats(&mut s),
            Mode::Silent => {}
        }
    }
}

impl Progress {
    /// The progress of a command of `ctx`: the live view on a terminal, plain lines
    /// otherwise, JSON events on stdout with `json`, build logs as they come with
    /// `print_logs`.
    pub(super) fn new(ctx: &Context, json: bool, print_logs: bool) -> Progress {
        let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
        let mode = if json || ctx.quiet {
            Mode::Silent
        } else if std::io::stderr().is_terminal() && !dumb {
            Mode::Live
        } else {
            Mode::Lines
        };
        let heartbeat = std::env::var("KSBUILD_HEARTBEAT")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| *v > 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(HEARTBEAT);
        let inner = Arc::new(Inner {
            mode,
            json,
            quiet: ctx.quiet,
            // `-L` prints every line, so there is no live view to keep.
            print_logs,
            color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            heartbeat,
            started: Instant::now(),
            state: Mutex::new(State::default()),
            stop: (Mutex::new(false), Condvar::new()),
        });
        let ticker = (mode != Mode::Silent).then(|| {
            let inner = Arc::clone(&inner);
            let period = if mode == Mode::Live {
                FRAME
            } else {
                Duration::from_secs(1).min(heartbeat)
            };
            std::thread::spawn(move || loop {
                let (lock, cvar) = &inner.stop;
                let stopped = lock.lock().unwrap_or_else(|p| p.into_inner());
                // The flag is looked at before waiting: a stop that came before this
                // thread first waited is not missed (it cost every quick run a second).
                let (stopped, _) = cvar
                    .wait_timeout_while(stopped, period, |stopped| !*stopped)
                    .unwrap_or_else(|p| p.into_inner());
                if *stopped {
                    return;
                }
                drop(stopped);
                inner.tick();
            })
        });
        Progress { inner, ticker }
    }

    /// The summary after the work (on stderr; with `--json`, a `summary` event on stdout).
    pub(super) fn summary(&self) {
        let inner = &self.inner;
        let mut s = inner.lock();
        let erase = inner.erase(&mut s);
        let wall = inner.started.elapsed().as_secs_f64();
        if inner.json {
            let v = serde_json::json!({
                "event": "summary",
                "built": s.built.len(),
                "build_seconds": s.built.iter().fold(0.0, |sum, b| sum + b.1),
                "fetched": s.fetched,
                "fetched_bytes": s.fetched_bytes,
                "substituted": s.substituted,
                "substituted_bytes": s.substituted_bytes,
                "cached": s.cached,
                "failed": s.failed,
                "seconds": wall,
            });
            let _ = out_line(&v.to_string());
            return;
        }
        if !inner.human() {
            return;
        }
        let mut parts = Vec::new();
        if !s.built.is_empty() {
            let total: f64 = s.built.iter().map(|b| b.1).sum();
            let longest = s
                .built
                .iter()
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(k, t)| format!(", longest `{k}` {}", human_secs(*t)))
                .unwrap_or_default();
            parts.push(format!(
                "built {} ({} of building{longest})",
                s.built.len(),
                human(total)
            ));
        }
        if s.fetched > 0 {
            parts.push(format!(
                "fetched {} ({})",
                s.fetched,
                megabytes(s.fetched_bytes)
            ));
        }
        if s.substituted > 0 {
            parts.push(format!(
                "substituted {} ({})",
                s.substituted,
                megabytes(s.substituted_bytes)
            ));
        }
        if s.cached > 0 {
            parts.push(format!("{} valid already", s.cached));
        }
        if !s.failed.is_empty() {
            let logs: Vec<String> = s
                .failed
                .iter()
                .map(|k| format!("`ksbuild log {k}`"))
                .collect();
            parts.push(format!(
                "{} failed (see above; {})",
                s.failed.len(),
                logs.join(", ")
            ));
        }
        // Nothing was built, fetched, substituted or failed: a no-op says nothing, as its
        // plan said nothing (the output paths on stdout are the answer).
        if s.built.is_empty() && s.fetched == 0 && s.substituted == 0 && s.failed.is_empty() {
            if !erase.is_empty() {
                let _ = std::io::stderr().write_all(erase.as_bytes());
            }
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "{erase}{}; {} wall", parts.join(", "), human(wall));
        let _ = err.flush();
    }

    fn stop(&mut self) {
        let (lock, cvar) = &self.inner.stop;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cvar.notify_all();
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        let mut s = self.inner.lock();
        let erase = self.inner.erase(&mut s);
        if !erase.is_empty() {
            let _ = std::io::stderr().write_all(erase.as_bytes());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The plan as people read it: one line, and with `list`, what each part is.
pub(super) fn describe_plan(event: &Event, list: bool) -> Vec<String> {
    let Event::Plan {
        substitutes,
        substitute_download_bytes,
        substitute_nar_bytes,
        fetches,
        fetch_bytes,
        builds,
        cached,
        to_substitute,
        to_fetch,
        to_build,
    } = event
    else {
        return Vec::new();
    };
    let mut parts = Vec::new();
    if *substitutes > 0 {
        parts.push(format!(
            "{substitutes} to substitute ({} download, {} unpacked)",
            megabytes(*substitute_download_bytes),
            megabytes(*substitute_nar_bytes)
        ));
    }
    if *fetches > 0 {
        let size = if *fetch_bytes > 0 {
            format!(" ({}{})", megabytes(*fetch_bytes), {
                let known = to_fetch.len();
                if known == *fetches {
                    ""
                } else {
                    " known"
                }
            })
        } else {
            String::new()
        };
        parts.push(format!("{fetches} to fetch{size}"));
    }
    if *builds > 0 {
        let expected: f64 = to_build.iter().filter_map(|b| b.eta).sum();
        let with = to_build.iter().filter(|b| b.eta.is_some()).count();
        let time = match with {
            0 => String::new(),
            n if n == *builds => format!(" (~{} of building)", human(expected)),
            _ => format!(" (≥{} of building)", human(expected)),
        };
        parts.push(format!("{builds} to build{time}"));
    }
    let mut lines = vec![format!(
        "plan: {}{}{cached} valid already",
        parts.join(", "),
        if parts.is_empty() { "" } else { "; " }
    )];
    if list {
        if !to_build.is_empty() {
            lines.push(format!("these {} will be built:", to_build.len()));
            for b in to_build {
                let eta = b
                    .eta
                    .map(|e| format!(" (~{} last time)", human(e)))
                    .unwrap_or_default();
                lines.push(format!("  {}{eta}", b.target));
            }
        }
        if !to_fetch.is_empty() {
            lines.push(format!("these {} will be fetched:", to_fetch.len()));
            for f in to_fetch {
                lines.push(format!("  {f}"));
            }
        }
        if !to_substitute.is_empty() {
            lines.push(format!(
                "these {} will be substituted:",
                to_substitute.len()
            ));
            for p in to_substitute {
                lines.push(format!("  {p}"));
            }
        }
    }
    lines
}

impl Reporter for Progress {
    fn event(&self, event: &Event) {
        let inner = &self.inner;
        if inner.json {
            if let Ok(text) = serde_json::to_string(event) {
                let _ = out_line(&text);
            }
        }
        let mut s = inner.lock();
        let human = inner.human();
        let heartbeat = inner.heartbeat;
        match event {
            Event::Plan {
                substitutes,
                fetches,
                builds,
                to_build,
                ..
            } => {
                s.total = s.done + substitutes + fetches + builds;
                s.planned = to_build.clone();
                s.fetch_planned = s.fetched + fetches;
                if human && substitutes + fetches + builds > 0 {
                    for line in describe_plan(event, false) {
                        inner.say(&mut s, &line);
                    }
                }
            }
            Event::SubstituteStarted {
                path, substituter, ..
            } => {
                s.running
                    .insert(path.clone(), Running::new(Kind::Substitute, heartbeat));
                if human && inner.mode == Mode::Lines {
                    inner.say(&mut s, &format!("substituting `{path}` from {substituter}"));
                }
            }
            Event::SubstituteFinished {
                path,
                seconds,
                bytes,
                ..
            } => {
                s.running.remove(path);
                s.progress.remove(path);
                s.done += 1;
                s.substituted += 1;
                s.substituted_bytes += bytes;
                if human {
                    let rate = *bytes as f64 / seconds.max(0.001);
                    inner.say(
                        &mut s,
                        &format!(
                            "substituted `{path}` ({} in {seconds:.1}s, {}/s)",
                            megabytes(*bytes),
                            megabytes(rate as u64)
                        ),
                    );
                }
            }
            Event::SubstituteFailed {
                path,
                substituter,
                error,
            } => {
                s.running.remove(path);
                s.progress.remove(path);
                if !inner.quiet {
                    inner.say(
                        &mut s,
                        &format!(
                            "warning: cannot substitute `{path}` from {substituter}: {error}; building what needs it instead"
                        ),
                    );
                }
            }
            Event::Cached { target } => {
                // A build this process waited for, done by another process.
                if let Some(r) = s.running.remove(target) {
                    s.done += 1;
                    s.finished.insert(target.clone());
                    if human {
                        let waited = r.since.elapsed().as_secs_f64();
                        inner.say(
                            &mut s,
                            &format!(
                                "`{target}` was built by another process (waited {waited:.1}s)"
                            ),
                        );
                    }
                } else {
                    s.cached += 1;
                }
            }
            Event::BuildWaiting { target, .. } => {
                s.running
                    .insert(target.clone(), Running::new(Kind::Wait, heartbeat));
                if human {
                    inner.say(
                        &mut s,
                        &format!("waiting for `{target}`: another ksbuild process is building it"),
                    );
                }
            }
            Event::FetchStarted { target, .. } => {
                s.running
                    .insert(target.clone(), Running::new(Kind::Fetch, heartbeat));
                s.fetches.insert(target.clone());
                s.fetch_started.get_or_insert_with(Instant::now);
            }
            Event::FetchFinished { target, bytes, .. } => {
                s.running.remove(target);
                s.done += 1;
                s.fetched += 1;
                s.fetched_bytes += bytes;
                if s.fetched >= s.fetch_planned {
                    inner.fetch_summary(&mut s);
                }
            }
            Event::BuildStarted {
                target,
                machine,
                eta,
                expected_lines,
                ..
            } => {
                // Downloads run before builds: a batch cut short by a failure is told here.
                inner.fetch_summary(&mut s);
                let mut r = Running::new(Kind::Build, heartbeat);
                r.eta = *eta;
                r.expected_lines = *expected_lines;
                s.running.insert(target.clone(), r);
                if human && (machine.is_some() || inner.mode == Mode::Lines) {
                    let mut line = format!("building `{target}`");
                    if let Some(m) = machine {
                        // Where a build goes is worth a line even on a terminal.
                        line.push_str(&format!(" on `{}`", super::realise_cmd::redact(m)));
                    }
                    if let Some(e) = eta {
                        line.push_str(&format!(" (~{} last time)", human_secs(*e)));
                    }
                    inner.say(&mut s, &line);
                }
            }
            Event::BuildFinished {
                target, seconds, ..
            } => {
                s.running.remove(target);
                s.done += 1;
                s.finished.insert(target.clone());
                s.built.push((target.clone(), *seconds));
                if human {
                    inner.say(
                        &mut s,
                        &format!("built `{target}` in {}", human_secs(*seconds)),
                    );
                }
            }
            Event::Failed {
                target,
                seconds,
                error,
                log,
            } => {
                s.running.remove(target);
                s.done += 1;
                s.finished.insert(target.clone());
                if !s.fetches.contains(target) {
                    s.failed.push(target.clone());
                }
                if !inner.json && !s.fetches.contains(target) {
                    let log = log
                        .as_ref()
                        .map(|l| format!("\n  full log: {l}"))
                        .unwrap_or_default();
                    inner.say(
                        &mut s,
                        &format!(
                            "error: `{target}` failed after {}: {error}{log}",
                            human_secs(*seconds)
                        ),
                    );
                }
            }
            Event::Skipped { target, because } => {
                if !inner.json {
                    inner.say(
                        &mut s,
                        &format!("skipped `{target}`: it needs `{because}`, which failed"),
                    );
                }
            }
            Event::Result { .. } => {}
        }
    }

    fn warning(&self, text: &str) {
        if !self.inner.quiet {
            let mut s = self.inner.lock();
            self.inner.say(&mut s, &format!("warning: {text}"));
        }
    }

    fn substitute_progress(&self, path: &str, bytes: u64) {
        let mut s = self.inner.lock();
        s.progress.insert(path.to_string(), bytes);
    }

    fn log_line(&self, target: &str, line: &[u8]) {
        let inner = &self.inner;
        let mut s = inner.lock();
        if inner.print_logs && !inner.json {
            let text = String::from_utf8_lossy(line);
            inner.say(&mut s, &format!("{target}> {}", text.trim_end()));
        }
        if let Some(r) = s.running.get_mut(target) {
            r.lines += 1;
            if inner.mode != Mode::Silent {
                let text = sanitize(line);
                if !text.is_empty() {
                    r.last_line = text;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_lose_escapes_and_control_characters() {
        assert_eq!(
            sanitize(b"\x1b[01;32m  CC\x1b[0m\tkernel/fork.o\r\n"),
            "CC kernel/fork.o"
        );
        assert_eq!(
            sanitize(b"progress 10%\rprogress 20%"),
            "progress 10%progress 20%"
        );
    }

    #[test]
    fn lines_are_cut_to_the_width() {
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abc", 4), "abc");
        assert_eq!(fit("ääää", 3), "ää…");
    }

    #[test]
    fn unix_times_read_as_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(1_704_067_200), "2024-01-01 00:00:00Z");
        assert_eq!(utc(1_709_210_096), "2024-02-29 12:34:56Z");
    }

    #[test]
    fn durations_read_as_people_read_them() {
        assert_eq!(human(42.4), "42s");
        assert_eq!(human(396.0), "6m36s");
        assert_eq!(human(3720.0), "1h02m");
    }

    #[test]
    fn the_critical_path_follows_needs_and_running_builds() {
        let b = |t: &str, eta: Option<f64>, needs: &[&str]| PlannedBuild {
            target: t.into(),
            drv: format!("/nix/store/x-{t}.drv"),
            eta,
            expected_lines: None,
            needs: needs.iter().map(|s| s.to_string()).collect(),
        };
        let mut s = State {
            planned: vec![
                b("kernel", Some(600.0), &[]),
                b("rootfs", Some(30.0), &[]),
                b("image", Some(60.0), &["kernel", "rootfs"]),
            ],
            ..State::default()
        };
        assert_eq!(s.critical_path(), Some((660.0, false)));
        s.finished.insert("kernel".into());
        assert_eq!(s.critical_path(), Some((90.0, false)));
        s.planned.push(b("other", None, &["image"]));
        assert_eq!(s.critical_path(), Some((90.0, true)));
        let s = State {
            planned: vec![b("x", None, &[])],
            ..State::default()
        };
        assert_eq!(s.critical_path(), None);
    }
}
