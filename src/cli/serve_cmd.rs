//! `ksbuild --serve [--write]`: Nix's serve protocol on stdin and stdout, for Nix's `ssh://`
//! stores and remote builders. stdout carries the protocol alone; build logs and errors go
//! to stderr, which Nix's client shows (errors as `error: …`, as `nix-store --serve` prints
//! them).

use std::io::{BufReader, Write};
use std::process::ExitCode;

use super::Context;
use crate::graph::build::{with_sources, BuildOptions, Platforms};
use crate::graph::{Event, Reporter};
use crate::remote::server::{self, ServeOptions};

/// Writes build logs on stderr as they come.
struct LogToStderr;

impl Reporter for LogToStderr {
    fn event(&self, _: &Event) {}
    fn log_line(&self, _target: &str, line: &[u8]) {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line).and_then(|()| err.write_all(b"\n"));
    }
    fn warning(&self, text: &str) {
        eprintln!("warning: {text}");
    }
}

/// Serves one session; exits 1 with `error: …` on stderr if it ends in error.
pub fn run(ctx: &Context, write: bool) -> ExitCode {
    let store = match ctx.open_store() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {}", with_sources(&e));
            return ExitCode::from(1);
        }
    };
    let platforms = match std::env::var("KSBUILD_EXTRA_PLATFORMS") {
        Ok(list) => Platforms::host().with_extra(&list),
        Err(_) => Platforms::host(),
    };
    let options = ServeOptions {
        write,
        build: BuildOptions {
            cores: crate::cpus() as u32,
            timeout: None,
            max_silent_time: None,
            max_processes: crate::sandbox::DEFAULT_MAX_PROCESSES,
            keep_failed: false,
            jobs: 1,
            platforms,
        },
    };
    // One buffer for the whole session: NARs are parsed from it, and what follows a NAR
    // stays in it for the next command.
    let mut input = BufReader::with_capacity(256 * 1024, std::io::stdin().lock());
    let mut output = std::io::BufWriter::with_capacity(256 * 1024, std::io::stdout().lock());
    match server::serve(&store, &mut input, &mut output, &options, &LogToStderr) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = output.flush();
            eprintln!("error: {}", with_sources(&e));
            if let Some(hint) = e.hint() {
                eprintln!("hint: {hint}");
            }
            ExitCode::from(1)
        }
    }
}
