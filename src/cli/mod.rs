//! The command line: clap definitions, output and exit codes. Every command is a thin
//! function over library operations. stdout carries data only (paths, hashes, JSON);
//! messages go to stderr; errors are rendered by miette here and nowhere else.

mod bundle_cmd;
mod cache_cmd;
mod check_cmd;
mod drv_cmd;
mod errors;
mod graph_cmd;
mod hash_cmd;
mod key_cmd;
mod progress;
mod provenance_cmd;
mod realise_cmd;
mod sbom_cmd;
mod serve_cmd;
mod store_cmd;
mod vm_cmd;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

pub use errors::CliError;

use crate::compat::StoreDir;
use crate::store::{Observer, Store};

/// ksbuild: hermetic, Nix-compatible builds of KubeSolo OS.
#[derive(Debug, Parser)]
#[command(name = "ksbuild", version, about, max_term_width = 100)]
pub struct Cli {
    /// Physical store root [default: `store/` of the ksbuild project around the current
    /// directory; with `--serve` outside a project, `$XDG_DATA_HOME/ksbuild/store`, i.e.
    /// `~/.local/share/ksbuild/store`].
    #[arg(long, global = true, env = "KSBUILD_STORE", value_name = "DIR")]
    store: Option<PathBuf>,
    /// Logical store directory hashed into every path.
    #[arg(
        long,
        global = true,
        env = "KSBUILD_STORE_DIR",
        default_value = "/nix/store",
        value_name = "PATH"
    )]
    store_dir: String,
    /// The ksbuild project [default: the nearest directory holding `derivations/`].
    #[arg(long, global = true, env = "KSBUILD_PROJECT", value_name = "DIR")]
    project: Option<PathBuf>,
    /// Print nothing but data and errors.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Speak Nix's serve protocol on stdin and stdout (what `nix-store --serve` speaks):
    /// makes this machine a remote builder for Nix (`builders = ssh://HOST?remote-program=ksbuild`)
    /// and ksbuild. Takes no command.
    #[arg(long)]
    serve: bool,
    /// With `--serve`: allow the client to add paths and build.
    #[arg(long, requires = "serve")]
    write: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Lower targets to `.drv` files in the store; prints their paths (`nix-instantiate`).
    Instantiate {
        /// Targets (files of `derivations/`, without `.toml`).
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Build targets in the sandbox; prints their output paths and makes `result` links.
    #[command(visible_alias = "build")]
    Realise(realise_cmd::RealiseArgs),
    /// Build targets again in fresh sandboxes and compare the outputs bit for bit, with
    /// each other and with `derivations/outputs.lock`; exit 104 on a difference.
    Check(check_cmd::CheckArgs),
    /// Compare two outputs (store paths, `result` links, files or trees): the first
    /// differing files, and inside disk images the partition, filesystem, file and line.
    Diff {
        /// Print the differences as JSON.
        #[arg(long)]
        json: bool,
        /// Hand each differing file pair (members of images and archives extracted) to
        /// `diffoscope`, at most 60 s each, and show what it says (16 KiB at most).
        #[arg(long)]
        diffoscope: bool,
        /// The first.
        a: PathBuf,
        /// The second.
        b: PathBuf,
    },
    /// Explain what changed in a target since its last realisation.
    WhyRebuild {
        /// Print the verdict as JSON.
        #[arg(long)]
        json: bool,
        /// The target.
        target: String,
    },
    /// Draw targets' derivation graph (DOT, SVG or JSON): each node coloured by state (valid,
    /// to build, to fetch) with its last build time, each environment's downloads as one
    /// node; `--changed-since RESULT` outlines what an edit makes rebuild.
    Graph(graph_cmd::GraphArgs),
    /// Resolve build environments (`sandboxes/NAME.toml`) to exact `.deb`s; writes `NAME.lock`.
    Lock {
        /// Environments [default: all in `sandboxes/`].
        names: Vec<String>,
    },
    /// Pin a download declared without a hash: from FILE (obtained elsewhere) or its URL.
    Pin {
        /// The download: a `[fetch]` target, or `TARGET.INPUT` for an input.
        key: String,
        /// The file its URL serves [default: fetch the URL].
        file: Option<PathBuf>,
    },
    /// Print the log of a target's last build.
    Log {
        /// The target.
        target: String,
        /// Instead of the log, its build history in this store: when each build of the
        /// target finished, how long it took and how many log lines it printed (the
        /// estimates `realise` shows come from it). With `--json`, as JSON.
        #[arg(long)]
        stats: bool,
        /// With `--stats`: JSON.
        #[arg(long, requires = "stats")]
        json: bool,
    },
    /// Print targets' derivations as JSON (`nix show-derivation`).
    ShowDerivation {
        /// Also show every derivation they depend on.
        #[arg(long, short)]
        recursive: bool,
        /// Targets.
        #[arg(required = true)]
        targets: Vec<String>,
    },
    /// Publish to Nix binary caches.
    #[command(subcommand)]
    Cache(cache_cmd::CacheCommand),
    /// Work with the store: add, inspect, verify, collect garbage.
    #[command(subcommand)]
    Store(store_cmd::StoreCommand),
    /// Compute and convert hashes, as `nix hash` does.
    #[command(subcommand)]
    Hash(hash_cmd::HashCommand),
    /// Generate signing keys for binary caches.
    #[command(subcommand)]
    Key(key_cmd::KeyCommand),
    /// Sign and check KubeSolo OS update bundles (`update-bundle*` outputs).
    #[command(subcommand)]
    Bundle(bundle_cmd::BundleCommand),
    /// Boot a target's image under QEMU (realised first) on a writable copy, its serial
    /// console on the terminal: `disk-image` (OVMF), `disk-image-arm64` (AAVMF),
    /// `rpi-image@small` (raspi3b), `iso` (SeaBIOS or OVMF).
    Vm(vm_cmd::VmArgs),
    /// SLSA v1 build provenance of a realised target (an in-toto statement in a DSSE
    /// envelope signed with a Nix key); `provenance verify FILE --key PUB` checks one.
    Provenance(provenance_cmd::ProvenanceArgs),
    /// An SBOM of what ships in a realised target (SPDX 2.3 or CycloneDX 1.5 JSON): its
    /// Debian packages (from the locks, those whose files are in the output), kernel,
    /// firmware, downloads and ksbuild's own files, with how they contain each other.
    Sbom(sbom_cmd::SbomArgs),
}

/// What the CLI shows while the library works: on stderr, unless `--quiet`.
struct Terminal {
    quiet: bool,
}

impl Observer for Terminal {
    fn waiting_for_lock(&self, what: &str, lock: &Path) {
        if !self.quiet {
            eprintln!(
                "waiting for the lock on {what}, held by another ksbuild process (`{}`)",
                lock.display()
            );
        }
    }
    fn recovered(&self, what: &Path) {
        if !self.quiet {
            eprintln!(
                "removed `{}`, left over by an interrupted operation",
                what.display()
            );
        }
    }
    fn deleting(&self, path: &str) {
        if !self.quiet {
            eprintln!("deleting `{path}`");
        }
    }
}

/// Global settings every command gets.
pub struct Context {
    project: Option<PathBuf>,
    store_root: PathBuf,
    store_dir: String,
    quiet: bool,
}

impl Context {
    /// Opens the store.
    fn open_store(&self) -> Result<Store, CliError> {
        let t0 = std::time::Instant::now();
        let store_dir = StoreDir::new(&self.store_dir).map_err(crate::store::StoreError::from)?;
        let _timing = Defer(|| self.timing("open the store", t0));
        Ok(Store::open(
            &self.store_root,
            store_dir,
            Arc::new(Terminal { quiet: self.quiet }),
        )?)
    }

    /// With `KSBUILD_TIMINGS=1`, prints how long a phase took (for profiling).
    fn timing(&self, phase: &str, since: std::time::Instant) {
        if std::env::var_os("KSBUILD_TIMINGS").is_some() {
            eprintln!(
                "timing: {phase}: {:.2} ms",
                since.elapsed().as_secs_f64() * 1000.0
            );
        }
    }

    /// Prints a note on stderr unless `--quiet`.
    fn note(&self, message: &str) {
        if !self.quiet {
            eprintln!("{message}");
        }
    }
}

/// Runs a closure when dropped.
struct Defer<F: FnMut()>(F);
impl<F: FnMut()> Drop for Defer<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// The default store root: `store/` of the ksbuild project that contains the current
/// directory (a directory with `derivations/` and `store/`), else of the project this
/// binary was built from — or, for `--serve` (run by `ssh` in a home directory, far from any
/// project), the user's data directory ([`user_store_root`]).
fn default_store_root(serve: bool) -> PathBuf {
    if let Ok(cwd) = std::env::current_dir() {
        for dir in cwd.ancestors() {
            if dir.join("derivations").is_dir() && dir.join("store").is_dir() {
                return dir.join("store");
            }
        }
    }
    if serve {
        if let Some(root) = user_store_root() {
            return root;
        }
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("store")
}

/// `$XDG_DATA_HOME/ksbuild/store`, or `~/.local/share/ksbuild/store` (the XDG default),
/// if either variable is set to an absolute path.
fn user_store_root() -> Option<PathBuf> {
    let absolute = |var: &str| {
        std::env::var_os(var)
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    let data =
        absolute("XDG_DATA_HOME").or_else(|| Some(absolute("HOME")?.join(".local/share")))?;
    Some(data.join("ksbuild/store"))
}

/// Writes data to stdout; a closed pipe ends the program quietly, as `head` expects.
fn out(bytes: &[u8]) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => r.map_err(|e| CliError::Io {
            action: "write to stdout",
            source: e,
        }),
    }
}

/// Writes one line of data to stdout.
fn out_line(line: &str) -> Result<(), CliError> {
    out(format!("{line}\n").as_bytes())
}

/// Writes a value as JSON (one line) to stdout.
fn out_json(value: &impl serde::Serialize) -> Result<(), CliError> {
    let text = serde_json::to_string(value).map_err(|e| CliError::Io {
        action: "encode JSON",
        source: e.into(),
    })?;
    out_line(&text)
}

/// Entry point of the `ksbuild` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = Context {
        project: cli.project.clone(),
        store_root: cli
            .store
            .clone()
            .unwrap_or_else(|| default_store_root(cli.serve)),
        store_dir: cli.store_dir.clone(),
        quiet: cli.quiet,
    };
    use clap::CommandFactory;
    let command = match (cli.serve, cli.command) {
        (true, None) => return serve_cmd::run(&ctx, cli.write),
        (false, Some(command)) => command,
        (true, Some(_)) => Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "`--serve` takes no command: it speaks Nix's serve protocol on stdin and stdout",
            )
            .exit(),
        (false, None) => Cli::command()
            .error(
                clap::error::ErrorKind::MissingSubcommand,
                "a command is required (only `--serve` runs without one); see `ksbuild --help`",
            )
            .exit(),
    };
    let result = match command {
        Command::Instantiate { targets } => drv_cmd::run_instantiate(&ctx, targets),
        Command::ShowDerivation { recursive, targets } => {
            drv_cmd::run_show(&ctx, targets, recursive)
        }
        Command::Realise(args) => realise_cmd::run(&ctx, args),
        Command::Check(args) => check_cmd::run(&ctx, args),
        Command::Diff {
            json,
            diffoscope,
            a,
            b,
        } => check_cmd::run_diff(&ctx, json, diffoscope, a, b),
        Command::Lock { names } => drv_cmd::run_lock(&ctx, names),
        Command::Pin { key, file } => drv_cmd::run_pin(&ctx, key, file),
        Command::Log {
            target,
            stats: true,
            json,
        } => realise_cmd::run_log_stats(&ctx, target, json),
        Command::Log { target, .. } => realise_cmd::run_log(&ctx, target),
        Command::WhyRebuild { json, target } => realise_cmd::run_why(&ctx, target, json),
        Command::Graph(args) => graph_cmd::run(&ctx, args),
        Command::Cache(cmd) => cache_cmd::run(&ctx, cmd),
        Command::Store(cmd) => store_cmd::run(&ctx, cmd),
        Command::Hash(cmd) => hash_cmd::run(&ctx, cmd),
        Command::Key(cmd) => key_cmd::run(&ctx, cmd),
        Command::Bundle(cmd) => bundle_cmd::run(&ctx, cmd),
        Command::Vm(args) => vm_cmd::run(&ctx, args),
        Command::Provenance(args) => provenance_cmd::run(&ctx, args),
        Command::Sbom(args) => sbom_cmd::run(&ctx, args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let code = e.exit_code();
            // No hard wrapping: miette's default wraps at 80 columns and breaks long words,
            // which splits the paths that errors name (`…/d06/` + `│ d07/…`), so they can
            // no longer be copied or searched for. The terminal wraps long lines itself.
            let _ = miette::set_hook(Box::new(|_| {
                Box::new(miette::MietteHandlerOpts::new().wrap_lines(false).build())
            }));
            eprintln!("{:?}", miette::Report::new(e));
            code
        }
    }
}
