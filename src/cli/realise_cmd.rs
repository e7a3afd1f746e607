//! `ksbuild realise` (alias `build`) and `ksbuild log`: building targets, progress, result
//! links, and build logs.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::drv_cmd::instantiate;
pub(super) use super::progress::Progress;
use super::{out, out_line, CliError, Context};
use crate::fetch::Mirrors;
use crate::graph::build::{unsupported_systems, BuildOptions, Platforms, SandboxExecutor};
use crate::graph::{self, output_paths, Event, RealiseError, Reporter};
use crate::remote::dispatch::Dispatcher;
use crate::substitute::config::Layer;
use crate::substitute::{Settings, Substituters};

/// Options of `ksbuild realise`.
#[derive(Debug, Args)]
pub struct RealiseArgs {
    /// Targets (files of `derivations/`, without `.toml`).
    #[arg(required = true)]
    targets: Vec<String>,
    /// How builds run.
    #[command(flatten)]
    build: BuildArgs,
    /// Keep `/build` of failed builds for inspection.
    #[arg(long, short = 'K')]
    keep_failed: bool,
    /// Do not create `result` links.
    #[arg(long)]
    no_link: bool,
    /// Base name of the result links.
    #[arg(long, short = 'o', default_value = "result")]
    out_link: PathBuf,
    /// Rebuild the targets (whose outputs must be valid) and compare; exit 104 on a difference.
    #[arg(long)]
    check: bool,
    /// Emit the event stream as JSON lines on stdout instead of output paths.
    #[arg(long)]
    json: bool,
    /// Print what would be substituted, fetched and built (with the expected time of each
    /// build from the store's history), and do nothing. With `--json`, the `plan` event
    /// the realisation would begin with.
    #[arg(long, conflicts_with = "check")]
    dry_run: bool,
    /// Fetch only the downloads the targets' builds need (every fixed-output path below
    /// them, from a binary cache or its URL), build nothing, and print their paths: for a
    /// later offline build, or a `cache push` from which Nix can build the targets.
    #[arg(long, conflicts_with = "check")]
    fetch_only: bool,
}

/// The options of every command that builds (`realise`, `check`).
#[derive(Debug, Args)]
pub(super) struct BuildArgs {
    /// Builds to run here at once; `auto`: one per CPU. 0 builds nothing here (remote
    /// builders only, `--builders`); downloads still run.
    #[arg(long, short = 'j', visible_alias = "max-jobs", value_name = "N",
          default_value = "1", value_parser = parse_jobs)]
    pub(super) jobs: usize,
    /// `NIX_BUILD_CORES` of each build [default: the number of CPUs].
    #[arg(long)]
    cores: Option<u32>,
    /// Kill a build after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<u64>,
    /// Kill a build that prints nothing for this many seconds.
    #[arg(long, value_name = "SECONDS")]
    max_silent_time: Option<u64>,
    /// At most this many processes (threads included) of one build at once; beyond it the
    /// build's `fork` fails with `EAGAIN`.
    #[arg(long, value_name = "N", default_value_t = crate::sandbox::DEFAULT_MAX_PROCESSES,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_processes: u64,
    /// Print build output on stderr as it comes.
    #[arg(long, short = 'L')]
    pub(super) print_build_logs: bool,
    /// Systems besides this machine's own whose derivations are built here (their builders
    /// must run here, e.g. through binfmt_misc), separated by spaces or commas. Replaces the
    /// default, as Nix's `extra-platforms` does [default: `i686-linux` on `x86_64-linux`].
    #[arg(long, env = "KSBUILD_EXTRA_PLATFORMS", value_name = "SYSTEMS")]
    extra_platforms: Option<String>,
    /// This machine's system features, which derivations' `required-system-features` must
    /// be among, separated by spaces or commas. Replaces `system-features` of `config.toml`
    /// and of `nix.conf` [default: Nix's: `benchmark big-parallel nixos-test`, and `kvm`
    /// if /dev/kvm is usable].
    #[arg(long, env = "KSBUILD_SYSTEM_FEATURES", value_name = "FEATURES")]
    system_features: Option<String>,
    /// Remote builders, in Nix's `builders` syntax (`ssh://user@host systems key maxJobs
    /// speedFactor supportedFeatures mandatoryFeatures hostKey`, `;`- or newline-separated,
    /// or `@FILE`). Replaces `builders` of `config.toml` and of `nix.conf`.
    #[arg(long, value_name = "SPEC")]
    builders: Option<String>,
    /// Binary caches to substitute from before building, separated by spaces
    /// (`file:///dir`, `http(s)://…`). Replaces `substituters` of
    /// `~/.config/ksbuild/config.toml` and of `nix.conf` [default: none].
    #[arg(long, value_name = "URLS")]
    substituters: Option<String>,
    /// Keys whose signatures make a cache's paths trusted (`name:base64…`, separated by
    /// spaces). Replaces `trusted-public-keys` of `config.toml` and of `nix.conf`.
    #[arg(long, value_name = "KEYS")]
    trusted_public_keys: Option<String>,
    /// Build everything here: ask no binary cache.
    #[arg(long, conflicts_with = "substituters")]
    no_substitute: bool,
}

/// `-j`/`--max-jobs`: a number, or `auto` (one per CPU), as Nix's `max-jobs`.
fn parse_jobs(text: &str) -> Result<usize, String> {
    match text {
        "auto" => Ok(crate::cpus()),
        n => n
            .parse()
            .map_err(|_| format!("`{n}` is not a number of builds (or `auto`)")),
    }
}

impl BuildArgs {
    /// The settings in force: the command line over `config.toml` over `nix.conf`.
    pub(super) fn settings(&self) -> Result<Settings, CliError> {
        Settings::discover(self.cli_layer()).map_err(|e| CliError::Usage {
            message: e.to_string(),
            hint: e.hint(),
        })
    }

    /// The settings of the command line.
    fn cli_layer(&self) -> Layer {
        let split = |s: &String| s.split_whitespace().map(String::from).collect();
        Layer {
            origin: "the command line".into(),
            substituters: self.substituters.as_ref().map(split),
            trusted_public_keys: self.trusted_public_keys.as_ref().map(split),
            system_features: self.system_features.as_ref().map(|list| {
                crate::substitute::config::SystemFeatures {
                    base: Some(
                        list.split(|c: char| c.is_whitespace() || c == ',')
                            .filter(|f| !f.is_empty())
                            .map(String::from)
                            .collect(),
                    ),
                    extra: Vec::new(),
                }
            }),
            builders: self.builders.clone(),
            builders_use_substitutes: None,
        }
    }

    /// The platforms builds may be for, and this machine's system features.
    pub(super) fn platforms(&self, settings: &Settings) -> Platforms {
        let host = Platforms::host();
        let features = settings.system_features(&host.features);
        let host = host.with_features(features);
        match &self.extra_platforms {
            Some(list) => host.with_extra(list),
            None => host,
        }
    }

    /// The substituters in force: the command line over `config.toml` over `nix.conf`.
    pub(super) fn substituters(
        &self,
        settings: &Settings,
        store_dir: &crate::compat::StoreDir,
    ) -> Substituters {
        if self.no_substitute {
            return Substituters::none(store_dir);
        }
        Substituters::new(settings, store_dir)
    }

    /// The binary cache at `url` alone, with the trusted keys in force (for `check
    /// --against`: what it claims is compared, whoever signed it).
    pub(super) fn cache_at(
        &self,
        url: &str,
        store_dir: &crate::compat::StoreDir,
    ) -> Result<Substituters, CliError> {
        let cli = Layer {
            substituters: Some(vec![url.to_string()]),
            ..self.cli_layer()
        };
        let settings = Settings::discover(cli).map_err(|e| CliError::Usage {
            message: e.to_string(),
            hint: e.hint(),
        })?;
        Ok(Substituters::new(&settings, store_dir))
    }

    /// The remote builders in force (`builders`: the command line, `config.toml`,
    /// `nix.conf`, else Nix's default machines file if it exists).
    pub(super) fn machines(
        &self,
        settings: &Settings,
        platforms: &Platforms,
    ) -> Result<Vec<crate::remote::machines::Machine>, CliError> {
        crate::remote::machines::parse(settings.builders_spec(), &platforms.system).map_err(|e| {
            CliError::Usage {
                message: format!("builders: {e}"),
                hint: Some(e.hint().into()),
            }
        })
    }

    /// Refuses `--max-jobs 0` without remote builders: nothing could build.
    pub(super) fn check_jobs(
        &self,
        options: &BuildOptions,
        machines: &[crate::remote::machines::Machine],
    ) -> Result<(), CliError> {
        if options.jobs == 0 && machines.is_empty() {
            return Err(CliError::Usage {
                message: format!("{}; give --builders", crate::graph::build::NO_LOCAL_BUILDS),
                hint: Some(crate::graph::build::NO_LOCAL_BUILDS_HINT.into()),
            });
        }
        Ok(())
    }

    /// The executor's options.
    pub(super) fn options(&self, keep_failed: bool, settings: &Settings) -> BuildOptions {
        BuildOptions {
            cores: self.cores.unwrap_or_else(|| crate::cpus() as u32),
            timeout: self.timeout.map(Duration::from_secs),
            max_silent_time: self.max_silent_time.map(Duration::from_secs),
            max_processes: self.max_processes,
            keep_failed,
            jobs: self.jobs,
            platforms: self.platforms(settings),
        }
    }
}

/// `ksbuild realise`.
pub fn run(ctx: &Context, args: RealiseArgs) -> Result<ExitCode, CliError> {
    run_with(ctx, args, true)
}

/// Realises `targets` as `ksbuild realise --no-link TARGET…` does (substitution, downloads,
/// builds, progress on stderr), but prints nothing on stdout: for commands that use the
/// outputs (`cache push`). Returns realise's exit code.
pub(super) fn realise_quietly(ctx: &Context, targets: &[String]) -> Result<ExitCode, CliError> {
    use clap::Parser;
    /// `RealiseArgs` parsed as the command line would give them, so every option keeps
    /// its default.
    #[derive(Parser)]
    #[command(name = "realise")]
    struct Line {
        #[command(flatten)]
        args: RealiseArgs,
    }
    let line = ["realise", "--no-link", "--"]
        .into_iter()
        .map(String::from)
        .chain(targets.iter().cloned());
    let args = Line::try_parse_from(line)
        .map_err(|e| CliError::Failed(format!("cannot realise {targets:?}: {e}")))?
        .args;
    run_with(ctx, args, false)
}

fn run_with(ctx: &Context, args: RealiseArgs, print_paths: bool) -> Result<ExitCode, CliError> {
    let store = ctx.open_store()?;
    // Created first: a `--check` rebuilds whatever the evaluation gives, so its zygote
    // can start up meanwhile; otherwise it starts once there is something to build.
    // A wrong substituter, key or setting is told before the project is evaluated.
    let settings = args.build.settings()?;
    let options = args.build.options(args.keep_failed, &settings);
    let platforms = options.platforms.clone();
    // `--check` rebuilds here: a rebuild elsewhere would compare another machine's build.
    let machines = if args.check {
        Vec::new()
    } else {
        args.build.machines(&settings, &platforms)?
    };
    args.build.check_jobs(&options, &machines)?;
    let jobs = options.jobs;
    let executor = SandboxExecutor::new(&store, options)?;
    if args.check {
        graph::Executor::prepare(&executor, args.targets.len());
    }
    let dispatcher;
    let builder: &dyn graph::Executor = if machines.is_empty() {
        &executor
    } else {
        dispatcher = Dispatcher::new(
            SandboxExecutor::new(&store, executor.options.clone())?,
            machines.clone(),
            jobs,
        )
        .map_err(|e| CliError::Usage {
            message: e.to_string(),
            hint: Some("see `--builders` in `ksbuild realise --help`".into()),
        })?;
        &dispatcher
    };
    let substituters = args.build.substituters(&settings, store.store_dir());
    let lowered = super::drv_cmd::lower_cached(ctx, &store, &args.targets, || {
        super::drv_cmd::ensure_pinned(ctx, &store, &args.targets)
    })?;
    // Never freed: the process's exit is instant, freeing a large graph is not.
    let lowered = std::mem::ManuallyDrop::new(lowered);
    // A derivation this machine cannot build stops the realisation before anything is
    // fetched or built.
    let mut unsupported = unsupported_systems(&store, &lowered, &args.targets, &platforms)?;
    // What a remote builder fits is built there.
    unsupported.retain(|e| {
        let drv = &lowered.nodes[e.target()].drv;
        !crate::remote::machines::any_fits(&machines, &drv.system, &drv.required_system_features())
    });
    if !unsupported.is_empty() {
        for e in &unsupported {
            eprintln!("error: {e}\n  hint: {}", e.hint());
        }
        return Err(CliError::Failed(format!(
            "{} derivation(s) are for a system or require system features this machine does not build for; nothing was fetched or built",
            unsupported.len()
        )));
    }
    // What is realised: the targets; with `--fetch-only` the downloads below them; with
    // `--check` the targets' inputs too, which must be valid for the rebuild even where
    // the targets' outputs are substituted.
    let downloads = args
        .fetch_only
        .then(|| graph::downloads_below(&lowered, &args.targets));
    let mut roots = downloads.clone().unwrap_or_else(|| args.targets.clone());
    if args.check {
        for t in &args.targets {
            roots.extend(lowered.nodes[t].deps.iter().cloned());
        }
    }
    if args.dry_run {
        let plan = graph::dry_run(&store, &lowered, &roots, &substituters, &graph::NoReport)?;
        if args.json {
            out_line(&serde_json::to_string(&plan).map_err(|e| CliError::Failed(e.to_string()))?)?;
        } else {
            let mut text = String::new();
            for line in super::progress::describe_plan(&plan, true) {
                text.push_str(&line);
                text.push('\n');
            }
            out(text.as_bytes())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let progress = Progress::new(ctx, args.json, args.build.print_build_logs);
    let mirrors = Mirrors::discover();
    let result = graph::realise(
        &store,
        &lowered,
        &roots,
        &mirrors,
        &substituters,
        builder,
        args.build.jobs,
        &progress,
    );
    match result {
        Ok(done) => {
            let t0 = std::time::Instant::now();
            crate::graph::why::save(&store, &lowered, done.built.iter().chain(&done.fetched))?;
            crate::timing::report("record what went into the nodes realised", t0);
        }
        Err(RealiseError::Fetch(failed)) => {
            // Told here only (not as they happen): with where each download is declared.
            for (target, e) in &failed {
                let at = lowered
                    .nodes
                    .get(target)
                    .and_then(|n| n.fetch.as_ref())
                    .map(|f| format!(" ({})", f.declared_at))
                    .unwrap_or_default();
                let hint = e
                    .hint()
                    .map(|h| format!("\n  hint: {h}"))
                    .unwrap_or_default();
                eprintln!("error: download `{target}`{at}: {e}{hint}");
            }
            return Err(CliError::Failed(format!(
                "{} download(s) failed; nothing was built",
                failed.len()
            )));
        }
        Err(RealiseError::Build { failed, skipped }) => {
            for (target, f) in &failed {
                eprintln!("error: `{target}`: {}", f.message);
                if !f.tail.is_empty() {
                    eprintln!("  last lines of the log:");
                    for l in &f.tail {
                        eprintln!("  > {l}");
                    }
                }
                let log = store.log_path(&lowered.nodes[target].drv_path);
                let printed = std::fs::metadata(&log).is_ok_and(|m| m.len() > 0);
                match &f.log {
                    Some(log) if printed => {
                        eprintln!("  full log: {} (or `ksbuild log {target}`)", log.display())
                    }
                    _ => {
                        // A build that printed nothing leaves no log file; a failed one
                        // leaves an empty one, so that `ksbuild log` can tell a silent
                        // failure from a target never built.
                        let _ = std::fs::OpenOptions::new()
                            .append(true)
                            .create(true)
                            .open(&log);
                        eprintln!("  it printed nothing");
                    }
                }
            }
            let _ = skipped;
            progress.summary();
            return Ok(ExitCode::from(100));
        }
        Err(RealiseError::Store(e)) => return Err(e.into()),
    }
    if args.check {
        let mut mismatches = Vec::new();
        for t in &args.targets {
            let node = &lowered.nodes[t];
            match crate::graph::Executor::build(
                &executor,
                node,
                &progress,
                &crate::graph::Slot::FREE,
            )
            .and_then(|_| executor.check(node, &progress))
            {
                Ok(m) => mismatches.extend(m),
                Err(f) => {
                    return Err(CliError::Failed(format!(
                        "`--check` of `{t}` could not rebuild it: {}",
                        f.message
                    )))
                }
            }
        }
        if args.json {
            let verdict = serde_json::json!({ "event": "check", "reproducible": mismatches.is_empty(), "mismatches": mismatches });
            out_line(&verdict.to_string())?;
        }
        if !mismatches.is_empty() {
            for m in &mismatches {
                eprintln!(
                    "error: output `{}` of `{}` is not reproducible: {} was {}, the rebuild is {} (kept at `{}`)",
                    m.output, m.target, m.path, m.expected, m.actual, m.kept
                );
            }
            return Ok(ExitCode::from(104));
        }
        ctx.note(&format!(
            "checked {}: every output rebuilt bit for bit",
            args.targets.join(", ")
        ));
    }
    if let Some(downloads) = downloads {
        let mut paths = String::new();
        for key in &downloads {
            for path in output_paths(&lowered.nodes[key]).into_values() {
                paths.push_str(&store.print(&path));
                paths.push('\n');
            }
        }
        progress.summary();
        if print_paths && !args.json {
            out(paths.as_bytes())?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Result links and output paths (printed in one write).
    let mut printed = BTreeSet::new();
    let mut paths = String::new();
    for (i, t) in args.targets.iter().enumerate() {
        let node = &lowered.nodes[t];
        for (output, path) in output_paths(node) {
            if !args.no_link {
                let mut link = args.out_link.as_os_str().to_owned();
                if i > 0 {
                    link.push(format!("-{}", i + 1));
                }
                if output != "out" {
                    link.push(format!("-{output}"));
                }
                store.add_indirect_root(&PathBuf::from(link), &path)?;
            }
            if !args.json && printed.insert(path.clone()) {
                paths.push_str(&store.print(&path));
                paths.push('\n');
            }
        }
        progress.event(&Event::Result {
            target: t.clone(),
            outputs: output_paths(node)
                .into_iter()
                .map(|(n, p)| (n, store.print(&p)))
                .collect(),
        });
    }
    progress.summary();
    if print_paths {
        out(paths.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `ksbuild log --stats TARGET`: the target's builds in this store's history.
pub fn run_log_stats(ctx: &Context, target: String, json: bool) -> Result<ExitCode, CliError> {
    let store = ctx.open_store()?;
    let (_, lowered) = instantiate(ctx, &store, std::slice::from_ref(&target))?;
    let drv = store.print(&lowered.nodes[&target].drv_path);
    let history = crate::store::history::load_of(&store, |name| name == target);
    let builds = history.builds_of(&target);
    if json {
        let v = serde_json::json!({
            "target": target,
            "drv": drv,
            "estimate": history.estimate(&target, &drv).map(|r| serde_json::json!({
                "seconds": r.seconds, "lines": r.lines, "drv": r.drv,
            })),
            "builds": builds.iter().map(|r| serde_json::json!({
                "finished": r.finished, "drv": r.drv, "seconds": r.seconds, "lines": r.lines,
            })).collect::<Vec<_>>(),
        });
        out_line(&v.to_string())?;
        return Ok(ExitCode::SUCCESS);
    }
    if builds.is_empty() {
        ctx.note(&format!(
            "no build of `{target}` is recorded in this store's history (`{}`)",
            crate::store::history::path(&store).display()
        ));
        return Ok(ExitCode::SUCCESS);
    }
    let mut text = format!("builds of `{target}` (the current .drv is `{drv}`):\n");
    for r in builds {
        let current = if r.drv == drv { "  (current .drv)" } else { "" };
        text.push_str(&format!(
            "  {}  {:>9}  {:>7} log lines  {}{current}\n",
            super::progress::utc(r.finished),
            super::progress::human_secs(r.seconds),
            r.lines,
            r.drv
        ));
    }
    out(text.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// `ksbuild log TARGET`: prints the log of the target's last build.
pub fn run_log(ctx: &Context, target: String) -> Result<ExitCode, CliError> {
    let store = ctx.open_store()?;
    let (_, lowered) = instantiate(ctx, &store, std::slice::from_ref(&target))?;
    let node = &lowered.nodes[&target];
    let drv = &node.drv_path;
    let log = store.log_path(drv);
    let text = std::fs::read(&log).ok();
    if let Some(text) = text.as_ref().filter(|t| !t.is_empty()) {
        out(text)?;
        return Ok(ExitCode::SUCCESS);
    }
    // A build that printed nothing left no log file (or an empty one).
    if node.fetch.is_none() && crate::graph::outputs_valid(&store, node)? {
        return Ok(ExitCode::SUCCESS);
    }
    // A failed build leaves a log file, even an empty one (see `run`).
    Err(match text {
        Some(_) => CliError::Usage {
            message: format!(
                "no build log for `{target}` (`{}`): its last build failed and printed nothing",
                store.print(drv)
            ),
            hint: Some(format!(
                "`ksbuild realise {target}` builds it again and says how it fails"
            )),
        },
        None => CliError::Usage {
            message: format!("no build log for `{target}` (`{}`)", store.print(drv)),
            hint: Some(format!(
                "it has not been built with this store; `ksbuild realise {target}` builds it"
            )),
        },
    })
}

/// `ksbuild why-rebuild TARGET`: what changed since the target's last realisation.
pub fn run_why(ctx: &Context, target: String, json: bool) -> Result<ExitCode, CliError> {
    use crate::graph::why::{explain, Change};
    let store = ctx.open_store()?;
    let (_, lowered) = instantiate(ctx, &store, std::slice::from_ref(&target))?;
    let node = &lowered.nodes[&target];
    let valid = crate::graph::outputs_valid(&store, node)?;
    let verdict = explain(&store, &lowered, node, valid);
    if json {
        let text = serde_json::to_string(&verdict).map_err(|e| CliError::Io {
            action: "encode JSON",
            source: e.into(),
        })?;
        out_line(&text)?;
        return Ok(ExitCode::SUCCESS);
    }
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "(none)".into());
    if valid {
        out_line(&format!(
            "`{target}` is up to date: its outputs are valid ({})",
            verdict.drv_now
        ))?;
    } else if !verdict.recorded {
        out_line(&format!(
            "`{target}` would be built: it has not been realised with this store before ({})",
            verdict.drv_now
        ))?;
    } else if verdict.drv_before.as_deref() == Some(verdict.drv_now.as_str()) {
        out_line(&format!(
            "`{target}` would be built: its derivation is unchanged ({}) but its outputs are no longer valid (garbage-collected?)",
            verdict.drv_now
        ))?;
    } else {
        out_line(&format!(
            "`{target}` would be rebuilt: its derivation changed ({} -> {})",
            show(&verdict.drv_before),
            verdict.drv_now
        ))?;
    }
    for change in &verdict.changes {
        let line = match change {
            Change::Input {
                name,
                before,
                now,
                upstream,
            } => {
                let up = upstream
                    .as_ref()
                    .map(|u| format!(" (from `{u}`: see `ksbuild why-rebuild {u}`)"))
                    .unwrap_or_default();
                format!("  input `{name}`: {} -> {}{up}", show(before), show(now))
            }
            Change::Builder { before, now } => format!("  builder: {before} -> {now}"),
            Change::Args { before, now } => format!("  args: {before:?} -> {now:?}"),
            Change::Env { name, before, now } => {
                format!("  env `{name}`: {} -> {}", show(before), show(now))
            }
        };
        out_line(&line)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// A builder's URI for messages: without its query (`remote-program`, `ssh-key`, … are
/// noise there).
pub(super) fn redact(uri: &str) -> &str {
    uri.split('?').next().unwrap_or(uri)
}
