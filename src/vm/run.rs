//! One QEMU run: started (ended by `SIGTERM` if ksbuild dies: `PR_SET_PDEATHSIG`), its
//! serial console relayed to a writer while it is watched for the expected texts, stopped
//! at the first of: every text seen (its line finished), the timeout, a signal to
//! ksbuild; or ended by the guest. Runs QEMU, threads and a signal watcher.
//!
//! Signals: [`Session::start`] blocks `SIGINT`, `SIGTERM` and `SIGHUP` in the calling
//! thread (so in the threads it starts after) and takes them on a thread of its own
//! (`sigwait`), so that ksbuild, interrupted, stops QEMU, restores the terminal and removes
//! its temporary folder before it exits. QEMU starts with an empty signal mask (set in the
//! child by [`crate::sandbox::terminate_with_parent`]: `std::process` would leave it ours).

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, SigmaskHow, Signal};

use super::{Machine, Result, VmError};

/// How long a finished expectation waits for the end of its line.
const LINE_GRACE: Duration = Duration::from_secs(2);
/// How long QEMU has to end after `SIGTERM` before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long the console is read after QEMU ended (what it wrote last).
const DRAIN: Duration = Duration::from_secs(1);

/// What the run waits for.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Texts the console must print, in this order; QEMU is stopped once the last one's
    /// line is complete.
    pub expect: Vec<String>,
    /// QEMU is stopped after this long.
    pub timeout: Option<Duration>,
}

/// How a run ended.
#[derive(Debug)]
pub enum Outcome {
    /// QEMU ended by itself (the guest powered off, or rebooted: `-no-reboot`), with
    /// `unmet` the first expected text not seen, if any.
    Ended {
        /// QEMU's exit status.
        status: ExitStatus,
        /// The first expected text the console did not print.
        unmet: Option<String>,
    },
    /// Every expected text was printed; QEMU was stopped.
    Expected {
        /// The time from QEMU's start.
        after: Duration,
    },
    /// The timeout passed; QEMU was stopped.
    TimedOut {
        /// The first expected text the console did not print.
        unmet: Option<String>,
    },
    /// ksbuild received a signal; QEMU was stopped.
    Interrupted {
        /// The signal's number.
        signal: i32,
    },
}

/// Watches a console for texts in order (pure over the bytes fed).
#[derive(Debug)]
pub struct Expectations {
    texts: Vec<Vec<u8>>,
    next: usize,
    /// Output not yet searched past: the tail that could begin the next text, or, once
    /// every text is seen, what follows the last one.
    window: Vec<u8>,
}

/// Where an [`Expectations`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A text is still awaited.
    Waiting,
    /// Every text is seen; the last one's line is not finished.
    LineOpen,
    /// Every text is seen, the last one's line finished.
    Done,
}

impl Expectations {
    /// Watches for `texts`, in order.
    pub fn new(texts: &[String]) -> Expectations {
        Expectations {
            texts: texts.iter().map(|t| t.as_bytes().to_vec()).collect(),
            next: 0,
            window: Vec::new(),
        }
    }

    /// The first text not seen yet.
    pub fn unmet(&self) -> Option<String> {
        self.texts
            .get(self.next)
            .map(|t| String::from_utf8_lossy(t).into_owned())
    }

    /// Whether anything is watched for.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }

    /// Takes more console output.
    pub fn feed(&mut self, bytes: &[u8]) -> Progress {
        self.window.extend_from_slice(bytes);
        while let Some(text) = self.texts.get(self.next) {
            match find(&self.window, text) {
                Some(at) => {
                    self.window.drain(..at + text.len());
                    self.next += 1;
                }
                None => {
                    let keep = text.len().saturating_sub(1).min(self.window.len());
                    self.window.drain(..self.window.len() - keep);
                    return Progress::Waiting;
                }
            }
        }
        if self.window.contains(&b'\n') || self.window.contains(&b'\r') {
            Progress::Done
        } else {
            Progress::LineOpen
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// What the watcher threads tell the run.
enum Event {
    Output(Vec<u8>),
    OutputEnd,
    Stderr(String),
    Signal(i32),
}

/// The signals that stop a run.
fn stopping_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set
}

/// A VM session: the signal watcher, then one QEMU run.
pub struct Session {
    tx: Sender<Event>,
    rx: Receiver<Event>,
    old_mask: SigSet,
}

impl Session {
    /// Blocks the stopping signals in this thread and starts their watcher.
    pub fn start() -> Result<Session> {
        let mut old_mask = SigSet::empty();
        nix::sys::signal::pthread_sigmask(
            SigmaskHow::SIG_BLOCK,
            Some(&stopping_signals()),
            Some(&mut old_mask),
        )
        .map_err(|e| VmError::Spawn {
            program: "the signal watcher".into(),
            source: e.into(),
        })?;
        let (tx, rx) = mpsc::channel();
        let signals = tx.clone();
        std::thread::Builder::new()
            .name("vm-signals".into())
            .spawn(move || {
                while let Ok(signal) = stopping_signals().wait() {
                    if signals.send(Event::Signal(signal as i32)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| VmError::Spawn {
                program: "the signal watcher".into(),
                source: e,
            })?;
        Ok(Session { tx, rx, old_mask })
    }

    /// The signal received before the run, if any (the caller then stops, cleaning up).
    pub fn interrupted(&self) -> Option<i32> {
        loop {
            match self.rx.try_recv() {
                Ok(Event::Signal(n)) => return Some(n),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Runs `machine` until it ends or is stopped, its console written to `console`.
    /// `stdin` is QEMU's (the terminal, for an interactive console).
    pub fn run(
        &self,
        machine: &Machine,
        options: &RunOptions,
        console: &mut dyn Write,
    ) -> Result<Outcome> {
        let program = machine.program();
        let mut command = Command::new(program);
        command
            .args(machine.args())
            .stdin(Stdio::inherit())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        crate::sandbox::terminate_with_parent(&mut command);
        let terminal = Terminal::save();
        let mut child = command.spawn().map_err(|source| VmError::Spawn {
            program: program.into(),
            source,
        })?;
        let start = Instant::now();
        if let Some(out) = child.stdout.take() {
            relay_stdout(out, self.tx.clone());
        }
        if let Some(err) = child.stderr.take() {
            let tx = self.tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                    if tx.send(Event::Stderr(line)).is_err() {
                        break;
                    }
                }
            });
        }
        let mut expect = Expectations::new(&options.expect);
        let mut line_open_since: Option<Instant> = None;
        let mut output_ended = false;
        let outcome = loop {
            let event = self.rx.recv_timeout(Duration::from_millis(100));
            match event {
                Ok(Event::Output(bytes)) => {
                    let _ = console.write_all(&bytes);
                    let _ = console.flush();
                    if !expect.is_empty() {
                        match expect.feed(&bytes) {
                            Progress::Done => {
                                break Outcome::Expected {
                                    after: start.elapsed(),
                                }
                            }
                            Progress::LineOpen => {
                                line_open_since.get_or_insert_with(Instant::now);
                            }
                            Progress::Waiting => {}
                        }
                    }
                }
                Ok(Event::OutputEnd) => output_ended = true,
                Ok(Event::Stderr(line)) => eprintln!("{line}"),
                Ok(Event::Signal(signal)) => break Outcome::Interrupted { signal },
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => output_ended = true,
            }
            if line_open_since.is_some_and(|t| t.elapsed() > LINE_GRACE) {
                break Outcome::Expected {
                    after: start.elapsed(),
                };
            }
            if let Some(status) = child.try_wait().map_err(|source| VmError::Spawn {
                program: program.into(),
                source,
            })? {
                // What QEMU wrote last.
                let until = Instant::now() + DRAIN;
                while !output_ended && Instant::now() < until {
                    match self.rx.recv_timeout(Duration::from_millis(50)) {
                        Ok(Event::Output(bytes)) => {
                            let _ = console.write_all(&bytes);
                            let _ = console.flush();
                            expect.feed(&bytes);
                        }
                        Ok(Event::OutputEnd) => output_ended = true,
                        Ok(Event::Stderr(line)) => eprintln!("{line}"),
                        Ok(Event::Signal(_)) | Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                let unmet = expect.unmet();
                if unmet.is_none() && !expect.is_empty() {
                    break Outcome::Expected {
                        after: start.elapsed(),
                    };
                }
                break Outcome::Ended { status, unmet };
            }
            if options.timeout.is_some_and(|t| start.elapsed() >= t) {
                break Outcome::TimedOut {
                    unmet: expect.unmet(),
                };
            }
        };
        stop(&mut child);
        // QEMU restores the terminal it made raw when it ends by SIGTERM; not when killed.
        terminal.restore();
        let _ = console.flush();
        Ok(outcome)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ =
            nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.old_mask), None);
    }
}

/// Relays QEMU's console as it comes, in chunks.
fn relay_stdout(mut out: ChildStdout, tx: Sender<Event>) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 << 10];
        loop {
            match out.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(Event::Output(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(Event::OutputEnd);
    });
}

/// Ends QEMU if it still runs: `SIGTERM` (it then restores the terminal), then `SIGKILL`
/// after [`STOP_GRACE`].
fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, Signal::SIGTERM);
    let until = Instant::now() + STOP_GRACE;
    while Instant::now() < until {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The terminal settings of stdin, when it is a terminal, to restore after QEMU.
struct Terminal(Option<rustix::termios::Termios>);

impl Terminal {
    fn save() -> Terminal {
        let stdin = std::io::stdin();
        Terminal(
            rustix::termios::isatty(&stdin)
                .then(|| rustix::termios::tcgetattr(&stdin).ok())
                .flatten(),
        )
    }

    fn restore(&self) {
        if let Some(t) = &self.0 {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                t,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_found_in_order_across_chunks_and_their_line_finished() {
        let mut e = Expectations::new(&["BOOT OK".into(), "STANDIN".into()]);
        assert_eq!(e.feed(b"STANDIN early, then BO"), Progress::Waiting);
        assert_eq!(e.unmet().as_deref(), Some("BOOT OK"));
        assert_eq!(e.feed(b"OT OK arch=x86_64\r\n"), Progress::Waiting);
        assert_eq!(e.unmet().as_deref(), Some("STANDIN"));
        assert_eq!(e.feed(b"KUBESOLO-STAND"), Progress::Waiting);
        assert_eq!(e.feed(b"IN running: ipt"), Progress::LineOpen);
        assert_eq!(e.unmet(), None);
        assert_eq!(e.feed(b"ables=ok\r\n"), Progress::Done);
    }

    #[test]
    fn nothing_expected_is_never_done() {
        let mut e = Expectations::new(&[]);
        assert!(e.is_empty());
        assert_eq!(e.unmet(), None);
        assert_eq!(e.feed(b"x\n"), Progress::Done);
    }
}
