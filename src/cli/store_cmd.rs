//! `ksbuild store …`: adding, inspecting, verifying and collecting the store.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::{out_json, out_line, CliError, Context};
use crate::compat::{FileIngestionMethod, HashAlgo, StorePath};
use crate::store::{self, AddOptions, RestoreMode};

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Add files or trees as source paths (`nix-store --add`); prints the store paths.
    Add {
        /// Store name [default: the file name].
        #[arg(long)]
        name: Option<String>,
        /// Files or directories to add.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Add content-addressed paths (`nix-store --add-fixed`); prints the store paths.
    AddFixed {
        /// Hash the NAR serialisation instead of the file's bytes.
        #[arg(long, short)]
        recursive: bool,
        /// Store name [default: the file name].
        #[arg(long)]
        name: Option<String>,
        /// Hash algorithm: md5, sha1, sha256, sha512.
        algo: String,
        /// Files (or trees with `--recursive`).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Show metadata of valid paths (`nix path-info`).
    PathInfo {
        /// Print JSON as `nix path-info --json` does.
        #[arg(long)]
        json: bool,
        /// Include the closure of each path.
        #[arg(long, short)]
        recursive: bool,
        /// Store paths (logical or physical, or links to them).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Check every valid path; exits 1 and lists the damage if any is found.
    Verify {
        /// Also re-hash every path's contents.
        #[arg(long)]
        check_contents: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete paths not reachable from a GC root; prints what was deleted.
    Gc {
        /// Only print what would be deleted.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Make LINK a symlink to a store path and register it as an indirect GC root.
    AddRoot {
        /// The symlink to create (e.g. `result`).
        link: PathBuf,
        /// The store path it keeps alive.
        path: PathBuf,
    },
    /// Write the NAR serialisation of a path to stdout (`nix-store --dump`).
    Dump {
        /// A store path or any file or directory.
        path: PathBuf,
    },
    /// The same as `ksbuild cache push` (`nix copy --to`): publish targets or paths with
    /// their closures to a binary cache; prints the paths uploaded.
    Copy(super::cache_cmd::PushArgs),
    /// Read a NAR from stdin and recreate the tree at PATH (`nix-store --restore`).
    Restore {
        /// Where to create the tree; must not exist.
        path: PathBuf,
    },
}

pub fn run(ctx: &Context, cmd: StoreCommand) -> Result<ExitCode, CliError> {
    match cmd {
        StoreCommand::Add { name, paths } => add(
            ctx,
            name,
            paths,
            AddOptions {
                name: None,
                method: FileIngestionMethod::Recursive,
                algo: HashAlgo::Sha256,
            },
        ),
        StoreCommand::AddFixed {
            recursive,
            name,
            algo,
            paths,
        } => {
            let method = if recursive {
                FileIngestionMethod::Recursive
            } else {
                FileIngestionMethod::Flat
            };
            let algo = HashAlgo::from_name(&algo)?;
            add(
                ctx,
                name,
                paths,
                AddOptions {
                    name: None,
                    method,
                    algo,
                },
            )
        }
        StoreCommand::PathInfo {
            json,
            recursive,
            paths,
        } => path_info(ctx, json, recursive, paths),
        StoreCommand::Verify {
            check_contents,
            json,
        } => {
            let store = ctx.open_store()?;
            let report = store.verify(check_contents)?;
            if json {
                out_json(&report)?;
            } else {
                for d in &report.damaged {
                    out_line(&format!("{}\t{}", d.path, d.problem))?;
                }
                for f in &report.foreign {
                    out_line(&format!(
                        "{f}\tforeign: not registered by ksbuild (left alone)"
                    ))?;
                }
                ctx.note(&format!(
                    "checked {} paths{}: {} damaged{}",
                    report.checked,
                    if check_contents {
                        " and their contents"
                    } else {
                        ""
                    },
                    report.damaged.len(),
                    if report.foreign.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; {} foreign entries in the store directory, which ksbuild leaves alone",
                            report.foreign.len()
                        )
                    }
                ));
            }
            if report.damaged.is_empty() {
                Ok(ExitCode::SUCCESS)
            } else {
                Err(CliError::Failed(format!(
                    "{} damaged paths in the store",
                    report.damaged.len()
                )))
            }
        }
        StoreCommand::Gc { dry_run, json } => {
            let store = ctx.open_store()?;
            let report = store.collect_garbage(dry_run)?;
            if json {
                out_json(&report)?;
            } else {
                for p in &report.deleted {
                    out_line(p)?;
                }
                let verb = if dry_run { "would delete" } else { "deleted" };
                ctx.note(&format!(
                    "{verb} {} paths ({:.1} MiB of NAR), kept {}",
                    report.deleted.len(),
                    report.freed_nar_bytes as f64 / 1048576.0,
                    report.kept
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        StoreCommand::AddRoot { link, path } => {
            let store = ctx.open_store()?;
            let p = store.parse_user_path(&path)?;
            store.path_info(&p)?;
            store.add_indirect_root(&link, &p)?;
            out_line(&link.display().to_string())?;
            Ok(ExitCode::SUCCESS)
        }
        StoreCommand::Dump { path } => {
            let physical = resolve_dump_source(ctx, &path)?;
            let stdout = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
            match store::dump_path(&physical, stdout) {
                Err(store::StoreError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::BrokenPipe => {}
                r => {
                    drop(r?.into_inner().map_err(|e| CliError::Io {
                        action: "write to stdout",
                        source: e.into_error(),
                    })?);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        StoreCommand::Copy(args) => super::cache_cmd::push(ctx, args),
        StoreCommand::Restore { path } => {
            store::restore_nar(std::io::stdin().lock(), &path, RestoreMode::Plain)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn add(
    ctx: &Context,
    name: Option<String>,
    paths: Vec<PathBuf>,
    mut options: AddOptions,
) -> Result<ExitCode, CliError> {
    if name.is_some() && paths.len() > 1 {
        return Err(CliError::Usage {
            message: "`--name` names one path, but several were given".into(),
            hint: Some("add the paths one at a time".into()),
        });
    }
    options.name = name;
    let store = ctx.open_store()?;
    for p in paths {
        let info = store.add_path(&p, &options)?;
        out_line(&store.print(&info.path))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn path_info(
    ctx: &Context,
    json: bool,
    recursive: bool,
    paths: Vec<PathBuf>,
) -> Result<ExitCode, CliError> {
    let store = ctx.open_store()?;
    let mut wanted: Vec<StorePath> = Vec::new();
    for p in &paths {
        let sp = store.parse_user_path(p)?;
        store.path_info(&sp)?;
        wanted.push(sp);
    }
    let list: Vec<StorePath> = if recursive {
        store.closure(wanted)?.into_iter().collect()
    } else {
        wanted
    };
    if json {
        let infos = list
            .iter()
            .map(|p| Ok(store.path_info(p)?.to_json(&store)))
            .collect::<Result<Vec<_>, CliError>>()?;
        out_json(&infos)?;
    } else {
        for p in &list {
            out_line(&store.print(p))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `store dump` accepts a store path (logical or physical) or any filesystem path.
fn resolve_dump_source(ctx: &Context, path: &std::path::Path) -> Result<PathBuf, CliError> {
    let text = path.to_string_lossy();
    if let Ok(sd) = crate::compat::StoreDir::new(&ctx.store_dir) {
        if let Ok((p, rest)) = sd.parse_path_prefix(&text) {
            if std::fs::symlink_metadata(path).is_err() {
                let store = ctx.open_store()?;
                store.path_info(&p)?;
                return Ok(PathBuf::from(format!(
                    "{}{rest}",
                    store.physical_path(&p).display()
                )));
            }
        }
    }
    Ok(path.to_path_buf())
}
