//! `ksbuild cache push` (and its alias `store copy`): publishing targets and store paths
//! with their closures to a Nix binary cache, realising targets first.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Subcommand};

use super::{out_json, out_line, CliError, Context};
use crate::compat::signing::SecretKey;
use crate::compat::StorePath;
use crate::graph::{output_paths, outputs_valid};
use crate::store::{self, CacheUrl, Compression, PushOptions, Store};

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Publish targets or store paths, with their closures, to a Nix binary cache
    /// (`nix copy --to`); realises targets first; prints the paths uploaded.
    Push(PushArgs),
}

/// Options of `ksbuild cache push` and `ksbuild store copy`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// The cache: `file:///dir` (or a directory), or `http(s)://host/prefix`, written by
    /// HTTP PUT as Nix's `http-binary-cache` does. `?compression=` and
    /// `?write-nar-listing=1` are read as in Nix. Or another machine's store,
    /// `ssh://[USER@]HOST[?remote-program=…&remote-store=…]`, written through Nix's serve
    /// protocol (`nix-store --serve --write` or `ksbuild --serve --write` there).
    #[arg(long, value_name = "URL")]
    to: String,
    /// Sign each narinfo with this Nix secret key file (`name:base64`).
    #[arg(long, value_name = "FILE")]
    secret_key_file: Option<PathBuf>,
    /// NAR compression: `xz` (Nix's default), `zstd`, `bzip2`, `gzip` or `none`
    /// [default: the URL's `compression`, else xz].
    #[arg(long, value_name = "METHOD")]
    compression: Option<Compression>,
    /// Publish only the paths given (and the targets' outputs), not their closures.
    #[arg(long, visible_alias = "no-recursive")]
    no_closure: bool,
    /// Refuse targets whose outputs are not valid instead of realising them.
    #[arg(long)]
    no_build: bool,
    /// Also publish the `.drv` files of the targets (and of the paths given), with their
    /// closures.
    #[arg(long)]
    derivations: bool,
    /// Also write `<hash>.ls` listings of each NAR (Nix's `write-nar-listing`).
    #[arg(long)]
    write_nar_listing: bool,
    /// Paths compressed and uploaded at once [default: the number of CPUs].
    #[arg(long, short = 'j', value_name = "N")]
    jobs: Option<usize>,
    /// `Priority:` of a new cache's `nix-cache-info` (lower is preferred; cache.nixos.org
    /// has 40).
    #[arg(long, value_name = "N")]
    priority: Option<u32>,
    /// `WantMassQuery: 1` in a new cache's `nix-cache-info`.
    #[arg(long)]
    want_mass_query: bool,
    /// Print a JSON report (`uploaded`, `present`) instead of the paths.
    #[arg(long)]
    json: bool,
    /// Targets (files of `derivations/`, without `.toml`) or store paths (logical,
    /// physical, or links to them such as `result`).
    #[arg(required = true, value_name = "TARGET|PATH")]
    items: Vec<String>,
}

/// `ksbuild cache …`.
pub fn run(ctx: &Context, cmd: CacheCommand) -> Result<ExitCode, CliError> {
    match cmd {
        CacheCommand::Push(args) => push(ctx, args),
    }
}

/// Reads a Nix secret key file.
pub(super) fn read_secret_key(file: &Path) -> Result<SecretKey, CliError> {
    let text = std::fs::read_to_string(file).map_err(|e| CliError::Usage {
        message: format!("cannot read the secret key file `{}`: {e}", file.display()),
        hint: Some("create one with `ksbuild key generate NAME SECRET PUBLIC`".into()),
    })?;
    SecretKey::parse(text.trim_end()).map_err(|e| CliError::Usage {
        message: format!("`{}` is not a Nix secret key: {e}", file.display()),
        hint: Some("secret keys look like `name:<base64 of 64 bytes>`".into()),
    })
}

/// `ksbuild cache push` / `ksbuild store copy`.
pub fn push(ctx: &Context, args: PushArgs) -> Result<ExitCode, CliError> {
    // `ssh://`: another machine's store, through the serve protocol (`nix copy --to ssh://`).
    if args.to.starts_with("ssh://") {
        let endpoint = ssh_endpoint(&args)?;
        let store = ctx.open_store()?;
        let paths = paths_to_push(ctx, &store, &args)?;
        return push_ssh(ctx, &store, &endpoint, &paths, args.json);
    }
    let (url, params) = CacheUrl::parse(&args.to)?;
    let key = args
        .secret_key_file
        .as_deref()
        .map(read_secret_key)
        .transpose()?;
    let store = ctx.open_store()?;
    let paths = paths_to_push(ctx, &store, &args)?;
    let compression = args
        .compression
        .or(params.compression)
        .unwrap_or(Compression::Xz);
    let options = PushOptions {
        compression,
        key: key.as_ref(),
        write_nar_listing: args.write_nar_listing || params.write_nar_listing == Some(true),
        jobs: args.jobs.unwrap_or_else(crate::cpus).max(1),
        compression_threads: crate::cpus() as u32,
        priority: args.priority,
        want_mass_query: args.want_mass_query,
    };
    let t0 = Instant::now();
    let quiet = ctx.quiet || args.json;
    let report = store::push_to_binary_cache(&store, &paths, &url, &options, &|up| {
        if !args.json {
            let _ = out_line(&up.path);
        }
        if !quiet {
            eprintln!(
                "uploaded `{}` ({:.1} MiB NAR, {:.1} MiB {compression}{})",
                up.path,
                up.nar_size as f64 / 1048576.0,
                up.file_size as f64 / 1048576.0,
                if up.log { ", with its build log" } else { "" }
            );
        }
    })?;
    let seconds = t0.elapsed().as_secs_f64();
    if args.json {
        out_json(&report)?;
    }
    let nar: u64 = report.uploaded.iter().map(|u| u.nar_size).sum();
    let file: u64 = report.uploaded.iter().map(|u| u.file_size).sum();
    ctx.note(&format!(
        "uploaded {} paths to `{url}` ({:.1} MiB of NAR as {:.1} MiB {compression}, {seconds:.1}s, {:.1} MB/s of NAR); {} already there",
        report.uploaded.len(),
        nar as f64 / 1048576.0,
        file as f64 / 1048576.0,
        nar as f64 / 1e6 / seconds.max(1e-3),
        report.present.len(),
    ));
    Ok(ExitCode::SUCCESS)
}

/// The paths a push publishes: the store paths given (with `--derivations`, their `.drv`
/// files), the targets' roots (realised first unless `--no-build`), and unless
/// `--no-closure` everything they refer to.
fn paths_to_push(
    ctx: &Context,
    store: &Store,
    args: &PushArgs,
) -> Result<BTreeSet<StorePath>, CliError> {
    // A store path (or a link into the store) is a path; anything else names a target.
    let mut roots = BTreeSet::new();
    let mut targets = Vec::new();
    for item in &args.items {
        match store.parse_user_path(Path::new(item)) {
            Ok(path) => {
                let info = store.path_info(&path)?;
                if args.derivations {
                    if let Some(drv) = info.deriver.filter(|d| store.is_valid(d).unwrap_or(false)) {
                        roots.insert(drv);
                    }
                }
                roots.insert(path);
            }
            Err(_) => targets.push(item.clone()),
        }
    }
    if !targets.is_empty() {
        roots.extend(target_roots(ctx, store, &targets, args)?);
    }
    Ok(if args.no_closure {
        roots
    } else {
        store.closure(roots)?
    })
}

/// The store of `--to ssh://…`, refusing the options that only binary caches have.
fn ssh_endpoint(args: &PushArgs) -> Result<crate::remote::client::Endpoint, CliError> {
    let cache_only = [
        ("--secret-key-file", args.secret_key_file.is_some()),
        ("--compression", args.compression.is_some()),
        ("--write-nar-listing", args.write_nar_listing),
        ("--priority", args.priority.is_some()),
    ];
    if let Some((flag, _)) = cache_only.iter().find(|(_, set)| *set) {
        return Err(CliError::Usage {
            message: format!("{flag} is for binary caches; `{}` is a store reached over ssh", args.to),
            hint: Some("leave it out: paths are copied to an ssh store as they are (`nix copy --to ssh://`)".into()),
        });
    }
    let machine = crate::remote::machines::parse(&args.to, "")
        .ok()
        .and_then(|m| m.into_iter().next())
        .ok_or_else(|| CliError::Usage {
            message: format!("`{}` is not a store URI", args.to),
            hint: Some("write `ssh://[USER@]HOST[?remote-program=…&remote-store=…]`".into()),
        })?;
    crate::remote::client::Endpoint::of(&machine).map_err(|e| CliError::Usage {
        message: e.to_string(),
        hint: Some("write `ssh://[USER@]HOST[?remote-program=…&remote-store=…]`".into()),
    })
}

/// Copies `paths` (a closed set) to the store at `endpoint` over ssh: what it lacks,
/// references first; prints the paths sent.
fn push_ssh(
    ctx: &Context,
    store: &Store,
    endpoint: &crate::remote::client::Endpoint,
    paths: &BTreeSet<StorePath>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let t0 = Instant::now();
    let mut conn = crate::remote::client::Connection::open(endpoint, store.store_dir())
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let sent = conn
        .copy_closure(store, paths)
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let printed: Vec<String> = sent.iter().map(|p| store.print(p)).collect();
    if json {
        out_json(&serde_json::json!({ "uploaded": printed, "present": paths.len() - sent.len() }))?;
    } else {
        for p in &printed {
            out_line(p)?;
        }
    }
    let nar: u64 = sent
        .iter()
        .filter_map(|p| store.path_info(p).ok())
        .map(|i| i.nar_size)
        .sum();
    let seconds = t0.elapsed().as_secs_f64();
    ctx.note(&format!(
        "copied {} paths to `{}` ({:.1} MiB of NAR, {seconds:.1}s, {:.1} MB/s); {} already there",
        sent.len(),
        endpoint.uri,
        nar as f64 / 1048576.0,
        nar as f64 / 1e6 / seconds.max(1e-3),
        paths.len() - sent.len()
    ));
    Ok(ExitCode::SUCCESS)
}

/// The paths a push of `targets` starts from: their outputs, the outputs of the downloads
/// they need (fixed-output paths, which their runtime closure may not hold), and with
/// `--derivations` their `.drv` files. Realises the targets first unless `--no-build`.
fn target_roots(
    ctx: &Context,
    store: &Store,
    targets: &[String],
    args: &PushArgs,
) -> Result<BTreeSet<StorePath>, CliError> {
    if !args.no_build {
        let code = super::realise_cmd::realise_quietly(ctx, targets)?;
        if code != ExitCode::SUCCESS {
            return Err(CliError::Failed(format!(
                "cannot push {}: realising failed; nothing was uploaded",
                targets.join(", ")
            )));
        }
    }
    let (_, lowered) = super::drv_cmd::instantiate(ctx, store, targets)?;
    let mut roots = BTreeSet::new();
    let mut not_valid = Vec::new();
    for t in targets {
        let node = &lowered.nodes[t];
        if !outputs_valid(store, node)? {
            not_valid.push(t.clone());
        }
        roots.extend(output_paths(node).into_values());
        if args.derivations {
            roots.insert(node.drv_path.clone());
        }
    }
    if !not_valid.is_empty() {
        return Err(CliError::Usage {
            message: format!(
                "the outputs of {} are not valid, and `--no-build` forbids building them",
                not_valid
                    .iter()
                    .map(|t| format!("`{t}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            hint: Some(format!(
                "`ksbuild realise {}` first, or drop `--no-build`",
                not_valid.join(" ")
            )),
        });
    }
    // The downloads anywhere below the targets.
    for key in crate::graph::downloads_below(&lowered, targets) {
        for path in output_paths(&lowered.nodes[&key]).into_values() {
            if store.is_valid(&path)? {
                roots.insert(path);
            } else {
                ctx.note(&format!(
                    "not pushing the download `{key}`: `{}` is not in the store (`ksbuild realise --fetch-only {}` fetches it)",
                    store.print(&path),
                    targets.join(" ")
                ));
            }
        }
    }
    Ok(roots)
}
