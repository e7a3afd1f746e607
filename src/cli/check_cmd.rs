//! `ksbuild check`: realises targets, then builds each selected derivation again in fresh
//! sandboxes and compares the outputs by NAR hash, with each other and with
//! `derivations/outputs.lock`; explains differences; records outputs that reproduced.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::drv_cmd::{ensure_pinned, instantiate_project, project_root};
use super::realise_cmd::{BuildArgs, Progress};
use super::{out_line, CliError, Context};
use crate::check::record::{record_path, Records};
use crate::check::{self, CheckOptions, DerivationVerdict, RecordStatus};
use crate::compat::StorePath;
use crate::fetch::Mirrors;
use crate::graph::build::SandboxExecutor;
use crate::graph::{self, RealiseError};

/// Which derivations a check builds again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Depth {
    /// The named targets.
    Targets,
    /// The targets and every derivation they need (downloads excepted).
    Closure,
}

/// `ksbuild check` options.
#[derive(Debug, Args)]
#[command(after_long_help = "\
Rounds: the number of builds compared per derivation. The store's copy of an output counts as \
one when this store built it (not when it was copied or substituted); the check makes the \
others, each in a fresh sandbox, and never counts one output twice.

Exit codes: 0 every output reproduced (and matched its record); 104 an output differs, \
between builds or from its record (the differing build is kept under the store's `check/` \
and explained: the first differing files, the byte where they part, a likely cause); 1 a \
record is missing or stale, or a build failed.")]
pub struct CheckArgs {
    /// Targets (files of `derivations/`, without `.toml`).
    #[arg(required = true)]
    targets: Vec<String>,
    /// Builds compared per derivation [default: 2; 1 with --against-record].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=16))]
    rounds: Option<u32>,
    /// What the builds the check makes vary (each must not change a reproducible output):
    /// names separated by commas, `all`, and `-NAME` to leave one out (`all,-build-dir`).
    /// `time`: each build starts in a later second,
    /// its monotonic and boot clocks ten days ahead (a time namespace); `cores`: one CPU
    /// (affinity) and `NIX_BUILD_CORES=1`; `hostname`: `ksbuild-check` instead of
    /// `localhost` (and the domain name); `uid`: the build user is 30001:30000 instead of
    /// 1000:100; `umask`: 077 instead of 022; `aslr`: address-space randomisation on;
    /// `order`: inputs are copies (in memory) made in a shuffled order and `/build` lists
    /// files in creation order, so unsorted directory listings differ; `build-dir`:
    /// `/tmp/nix-build-check` instead of `/build`, unless the derivation names `/build`;
    /// `uname`: a 2.6 kernel release (`UNAME26`).
    #[arg(long, value_name = "LIST", value_parser = parse_vary)]
    vary: Option<VaryList>,
    /// Which derivations are built again: the targets, or their whole closure.
    #[arg(long, value_enum, default_value_t = Depth::Targets)]
    depth: Depth,
    /// Compare each target with its record in `derivations/outputs.lock`, across machines
    /// and time: with the store's own build when it made one, so a target is built once.
    #[arg(long)]
    against_record: bool,
    /// Compare each target with what the binary cache at URL says of its outputs (the
    /// `NarHash` of their narinfos, signed or not: Guix's `challenge`): a build here
    /// against one made elsewhere. The store's own build counts, as with a record.
    #[arg(long, value_name = "URL", conflicts_with_all = ["against_record", "record"])]
    against: Option<String>,
    /// Record the targets' outputs in `derivations/outputs.lock` if every output
    /// reproduced over at least two builds.
    #[arg(long)]
    record: bool,
    /// Print the verdict as one JSON object on stdout.
    #[arg(long)]
    json: bool,
    /// Write a reproducibility report (Markdown) to this file.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Hand each differing file pair of a differing output (members of images and
    /// archives extracted) to `diffoscope`, at most 60 s each, and show what it says.
    #[arg(long)]
    diffoscope: bool,
    /// How builds run (`-j`: also how many derivations are checked at once).
    #[command(flatten)]
    build: BuildArgs,
}

/// The variations `--vary` names.
#[derive(Debug, Clone)]
struct VaryList(Vec<crate::check::Vary>);

fn parse_vary(text: &str) -> Result<VaryList, String> {
    crate::check::Vary::parse_list(text).map(VaryList)
}

/// `ksbuild check`.
pub fn run(ctx: &Context, args: CheckArgs) -> Result<ExitCode, CliError> {
    let rounds = args
        .rounds
        .unwrap_or(if args.against_record || args.against.is_some() {
            1
        } else {
            2
        });
    if args.record && rounds < 2 {
        return Err(CliError::Usage {
            message: "a record needs at least two builds that agree".into(),
            hint: Some("use `--rounds 2` (or more) with `--record`".into()),
        });
    }
    let diff_options = diff_options(args.diffoscope)?;
    let store = ctx.open_store()?;
    // A wrong substituter, key or setting is told before the project is evaluated.
    let settings = args.build.settings()?;
    let options = args.build.options(false, &settings);
    if options.jobs == 0 {
        return Err(CliError::Usage {
            message: format!(
                "`check` rebuilds here, and {}",
                crate::graph::build::NO_LOCAL_BUILDS
            ),
            hint: Some("use `-j 1` or more".into()),
        });
    }
    let executor = SandboxExecutor::new(&store, options)?;
    let substituters = args.build.substituters(&settings, store.store_dir());
    let root = project_root(ctx)?;
    let project = ensure_pinned(ctx, &store, &args.targets)?;
    let (_project, lowered) = instantiate_project(ctx, &store, project, &args.targets)?;
    let records = if args.against_record || args.record {
        Records::load(&root).map_err(|e| CliError::Failed(e.to_string()))?
    } else {
        Records::default()
    };
    // A missing or stale record is told before anything is built (a kernel is an hour).
    if args.against_record {
        let mut unusable = Vec::new();
        for t in &args.targets {
            let drv = store.print(&lowered.nodes[t].drv_path);
            match records.0.get(t) {
                Some(r) if r.drv == drv => {}
                Some(r) => {
                    eprintln!(
                        "error: the record of `{t}` is for `{}`, not `{drv}` (the derivation \
                         changed since it was recorded)",
                        r.drv
                    );
                    unusable.push(t.as_str());
                }
                None => {
                    eprintln!(
                        "error: `{t}` has no record in `{}`",
                        record_path(&root).display()
                    );
                    unusable.push(t.as_str());
                }
            }
        }
        if !unusable.is_empty() {
            return Err(CliError::Usage {
                message: format!(
                    "{} target(s) have no usable record; nothing was built",
                    unusable.len()
                ),
                hint: Some(format!(
                    "re-record with `ksbuild check --record {}` (two builds that agree)",
                    unusable.join(" ")
                )),
            });
        }
    }
    // What the cache says of each target's outputs, before anything is built.
    let mut claims: std::collections::BTreeMap<String, crate::check::record::Record> =
        std::collections::BTreeMap::new();
    if let Some(url) = &args.against {
        let cache = args.build.cache_at(url, store.store_dir())?;
        let mut absent = Vec::new();
        for t in &args.targets {
            let node = &lowered.nodes[t];
            let mut record = crate::check::record::Record {
                drv: store.print(&node.drv_path),
                builds: 0,
                outputs: std::collections::BTreeMap::new(),
            };
            for (name, path) in crate::graph::output_paths(node) {
                match cache
                    .claim(&path)
                    .map_err(|e| CliError::Failed(e.to_string()))?
                {
                    Some((_, info, trusted)) => {
                        if !trusted {
                            ctx.note(&format!(
                                "`{t}`: the narinfo of `{}` is not signed by a trusted key; \
                                 its NarHash is compared all the same",
                                store.print(&path)
                            ));
                        }
                        record.outputs.insert(
                            name,
                            crate::check::record::RecordedOutput {
                                path: store.print(&path),
                                nar_hash: info.nar_hash.to_sri(),
                                nar_size: info.nar_size,
                            },
                        );
                    }
                    None => {
                        eprintln!(
                            "error: `{url}` has no narinfo for `{}` (output `{name}` of `{t}`)",
                            store.print(&path)
                        );
                        absent.push(t.as_str());
                    }
                }
            }
            claims.insert(t.clone(), record);
        }
        if !absent.is_empty() {
            absent.dedup();
            return Err(CliError::Usage {
                message: format!(
                    "{} target(s) are not in the binary cache; nothing was built",
                    absent.len()
                ),
                hint: Some(format!(
                    "publish a build there first: `ksbuild cache push --to {url} {}`",
                    absent.join(" ")
                )),
            });
        }
    }
    let selected: Vec<&str> = match args.depth {
        Depth::Targets => args.targets.iter().map(String::as_str).collect(),
        Depth::Closure => {
            let mut keep = std::collections::BTreeSet::new();
            let mut todo: Vec<&str> = args.targets.iter().map(String::as_str).collect();
            while let Some(k) = todo.pop() {
                if keep.insert(k) {
                    todo.extend(lowered.nodes[k].deps.iter().map(String::as_str));
                }
            }
            lowered
                .order
                .iter()
                .map(String::as_str)
                .filter(|k| keep.contains(k) && lowered.nodes[*k].fetch.is_none())
                .collect()
        }
    };
    // Each derivation checked is rebuilt, so its inputs must be valid: they are realised
    // too, even where a substituted output would otherwise make them unneeded.
    let mut roots: std::collections::BTreeSet<String> =
        selected.iter().map(|k| k.to_string()).collect();
    for k in &selected {
        roots.extend(lowered.nodes[*k].deps.iter().cloned());
    }
    let roots: Vec<String> = roots.into_iter().collect();
    let progress = Progress::new(ctx, false, args.build.print_build_logs);
    // Substituted inputs are fine; a substituted target is not `ultimate`, so it never
    // counts as one of the rounds: each round is a build.
    match graph::realise(
        &store,
        &lowered,
        &roots,
        &Mirrors::discover(),
        &substituters,
        &executor,
        args.build.jobs,
        &progress,
    ) {
        Ok(_) => {}
        Err(RealiseError::Store(e)) => return Err(e.into()),
        Err(e) => {
            return Err(CliError::Failed(format!(
                "cannot check what does not build: {e}"
            )))
        }
    }
    // The derivations are checked `-j` at a time (their inputs are all valid now), each
    // verdict told as it comes and kept in the order of `selected`.
    let options = CheckOptions {
        rounds,
        vary: args.vary.clone().map(|v| v.0).unwrap_or_default(),
        diff: diff_options,
    };
    // Keys that lower to one derivation (`kernel-arm64@small` is `kernel-rpi@small`) are
    // checked once, under the first of them.
    let mut first_key: BTreeMap<&StorePath, &str> = BTreeMap::new();
    let checked: Vec<&str> = selected
        .iter()
        .copied()
        .filter(|k| {
            let first = *first_key.entry(&lowered.nodes[*k].drv_path).or_insert(k);
            first == *k
        })
        .collect();
    crate::graph::Executor::prepare(&executor, checked.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: std::sync::Mutex<Vec<Option<Result<DerivationVerdict, CliError>>>> =
        std::sync::Mutex::new((0..checked.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..args.build.jobs.clamp(1, checked.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let Some(key) = checked.get(i) else {
                    return;
                };
                let node = &lowered.nodes[*key];
                let record = if args.against.is_some() {
                    claims.get(*key).map(Some)
                } else {
                    (args.against_record && args.targets.iter().any(|t| t == key))
                        .then(|| records.0.get(*key))
                };
                ctx.note(&format!("checking `{key}`…"));
                let mut verdict =
                    check::check_node(&store, &executor, node, options.clone(), record, &progress)
                        .map_err(|f| {
                            CliError::Failed(format!("cannot check `{key}`: {}", f.message))
                        });
                if let (Ok(v), Some(url)) = (&mut verdict, &args.against) {
                    if v.record.is_some() {
                        v.against = Some(url.clone());
                    }
                }
                if let Ok(v) = &verdict {
                    tell(ctx, v, &root);
                }
                results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(verdict);
            });
        }
    });
    let mut by_key: BTreeMap<&str, DerivationVerdict> = BTreeMap::new();
    for (key, r) in checked
        .iter()
        .zip(results.into_inner().unwrap_or_else(|p| p.into_inner()))
    {
        by_key.insert(key, r.expect("every derivation is checked")?);
    }
    let mut verdicts: Vec<DerivationVerdict> = Vec::new();
    for key in &selected {
        let first = first_key[&lowered.nodes[*key].drv_path];
        let mut v = by_key[first].clone();
        if first != *key {
            ctx.note(&format!(
                "`{key}` is the same derivation as `{first}`: checked once"
            ));
            v.target = key.to_string();
        }
        verdicts.push(v);
    }
    let reproducible = verdicts.iter().all(|v| v.reproducible);
    let unusable: Vec<&DerivationVerdict> = verdicts
        .iter()
        .filter(|v| {
            matches!(
                v.record,
                Some(RecordStatus::Stale { .. } | RecordStatus::Missing)
            )
        })
        .collect();
    if args.json {
        let verdict = serde_json::json!({
            "reproducible": reproducible && unusable.is_empty(),
            "rounds": rounds,
            "derivations": verdicts,
        });
        out_line(&verdict.to_string())?;
    }
    if let Some(file) = &args.report {
        std::fs::File::create(file)
            .and_then(|mut f| f.write_all(check::report_markdown(&verdicts).as_bytes()))
            .map_err(|source| CliError::Io {
                action: "write the report",
                source,
            })?;
    }
    if !reproducible {
        return Ok(ExitCode::from(104));
    }
    if !unusable.is_empty() {
        let targets: Vec<&str> = unusable.iter().map(|v| v.target.as_str()).collect();
        return Err(CliError::Usage {
            message: format!(
                "{} target(s) have no usable record in `{}`",
                targets.len(),
                record_path(&root).display()
            ),
            hint: Some(format!(
                "record them (two builds that agree): `ksbuild check --record {}`",
                targets.join(" ")
            )),
        });
    }
    if args.record {
        // Read again just before writing: another check may have recorded other targets
        // while this one built.
        let mut records = Records::load(&root).map_err(|e| CliError::Failed(e.to_string()))?;
        for key in &args.targets {
            let v = verdicts
                .iter()
                .find(|v| &v.target == key)
                .expect("every target is checked");
            if v.builds < 2 {
                return Err(CliError::Failed(format!(
                    "`{key}` was built {} time(s) only; a record needs two builds that agree",
                    v.builds
                )));
            }
            records.0.insert(
                key.clone(),
                check::record_of(v, &store, &lowered.nodes[key]),
            );
        }
        records
            .save(&root)
            .map_err(|e| CliError::Failed(e.to_string()))?;
        ctx.note(&format!(
            "recorded {} in `{}`",
            args.targets.join(", "),
            record_path(&root).display()
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// Tells one derivation's verdict on stderr.
fn tell(ctx: &Context, v: &DerivationVerdict, root: &std::path::Path) {
    let record = match (&v.record, &v.against) {
        (Some(RecordStatus::Matches), Some(url)) => format!(", as `{url}` has it"),
        (Some(RecordStatus::Differs), Some(url)) => format!(", NOT as `{url}` has it"),
        _ => String::new(),
    };
    let record = match &v.record {
        _ if !record.is_empty() => record,
        None => String::new(),
        Some(RecordStatus::Matches) => ", as recorded".into(),
        Some(RecordStatus::Differs) => ", NOT as recorded".into(),
        Some(RecordStatus::Missing) => format!(
            "; no record in `{}`: record one with `ksbuild check --record {}`",
            record_path(root).display(),
            v.target
        ),
        Some(RecordStatus::Stale { recorded_drv }) => format!(
            "; its record is for `{recorded_drv}`, not `{}` (the derivation changed since): \
             re-record with `ksbuild check --record {}`",
            v.drv, v.target
        ),
    };
    if v.reproducible {
        ctx.note(&format!(
            "`{}`: reproducible over {} build(s){record}",
            v.target, v.builds
        ));
        return;
    }
    eprintln!(
        "error: `{}` is not reproducible over {} build(s){record}",
        v.target, v.builds
    );
    for o in v.outputs.iter().filter(|o| !o.reproducible) {
        eprintln!(
            "  output `{}` ({}): {}",
            o.name,
            o.path,
            o.builds.join(" vs ")
        );
        if let Some(r) = &o.recorded {
            eprintln!("    recorded: {r}");
        }
        if let Some(k) = &o.kept {
            eprintln!("    the differing build is kept at `{k}`");
        }
        for d in &o.differences {
            eprintln!("    {d}");
        }
    }
}

/// `ksbuild diff A B`: the differences between two outputs, as `check` explains them; exit
/// 0 when they are the same, 1 when they differ.
pub fn run_diff(
    ctx: &Context,
    json: bool,
    diffoscope: bool,
    a: PathBuf,
    b: PathBuf,
) -> Result<ExitCode, CliError> {
    let options = diff_options(diffoscope)?;
    let resolve = |p: &PathBuf| -> Result<PathBuf, CliError> {
        std::fs::canonicalize(p).or_else(|source| {
            // A logical store path (`/nix/store/…-x`) of a store kept elsewhere.
            let logical = ctx.open_store().ok().and_then(|store| {
                let path = store.parse_user_path(p).ok()?;
                let rest = p.strip_prefix(store.print(&path)).ok()?;
                let physical = store.physical_path(&path);
                // (`join("")` would add a `/`, which a file does not take.)
                Some(if rest.as_os_str().is_empty() {
                    physical
                } else {
                    physical.join(rest)
                })
            });
            logical
                .and_then(|l| std::fs::canonicalize(l).ok())
                .ok_or_else(|| CliError::Usage {
                    message: format!("cannot read `{}`: {source}", p.display()),
                    hint: Some("give two store paths, `result` links, files or folders".into()),
                })
        })
    };
    let (ra, rb) = (resolve(&a)?, resolve(&b)?);
    let differences =
        crate::check::explain::diff_paths(&ra, &rb, &options).map_err(|source| CliError::Io {
            action: "compare the two",
            source,
        })?;
    if json {
        out_line(&serde_json::to_string(&differences).unwrap_or_default())?;
    } else {
        for d in &differences {
            out_line(&d.to_string())?;
        }
        if differences.is_empty() {
            ctx.note("no differences");
        }
    }
    Ok(if differences.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The diff's options: with `--diffoscope`, diffoscope from `PATH` or a usage error
/// naming the package that has it.
fn diff_options(diffoscope: bool) -> Result<crate::check::explain::Options, CliError> {
    Ok(crate::check::explain::Options {
        diffoscope: if diffoscope {
            Some(
                crate::check::diffoscope::Diffoscope::find().map_err(|e| CliError::Usage {
                    message: e.to_string(),
                    hint: Some("install it: `apt-get install diffoscope-minimal`".into()),
                })?,
            )
        } else {
            None
        },
    })
}
