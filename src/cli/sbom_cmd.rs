//! `ksbuild sbom TARGET`: an SBOM of what ships in a realised target, from its derivation
//! closure, the outputs in the store and the environments' locks. Gathers the facts (reads
//! the store, the `.deb`s, the locks); [`crate::attest::sbom`] writes the documents.
//!
//! What counts as shipping: the target and every derivation it is built from, but for build
//! environments (`environment-*` trees and their `.deb`s) and the build machine's busybox
//! (`busybox-static`), which are tools. A derivation that takes an environment as an *input*
//! (the rootfs's `pkgs = { environment = "userland-arm64" }`) ships the locked packages whose
//! files are in its output: each regular file of the output is matched by SHA-256 against
//! the files of the environment's `.deb`s. A derivation with `FIRMWARE` in its environment
//! ships `raspi-firmware` of its build environment's lock (the Pi's boot firmware, copied
//! as it is). A kernel (an output with `config` and `lib/modules/VERSION`) is described by
//! its version, base configuration, fragments and `.config` hash, and is generated from its
//! downloads. Repository folders given as inputs (the init, the update keys, the agent's
//! sources) are listed file by file, the derivation GENERATED_FROM each; single-file inputs
//! are build scripts and lists, and are left out.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use super::provenance_cmd::{closure_keys, json_error, write_document};
use super::{CliError, Context};
use crate::attest::sbom::{self, Bill, Component, File, Kind, Relation};
use crate::compat::{FileIngestionMethod, HashAlgo, StorePath};
use crate::model::sandbox::{lock_path, LockFile, LockedDeb};
use crate::model::{HashFrom, Lowered, Node, ENVIRONMENT_BUSYBOX};
use crate::store::Store;

/// The document format.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    /// SPDX 2.3, JSON.
    SpdxJson,
    /// CycloneDX 1.5, JSON.
    CyclonedxJson,
}

#[derive(Debug, Args)]
pub struct SbomArgs {
    /// The target (realised first with `ksbuild realise TARGET`).
    target: String,
    /// The format.
    #[arg(long, value_enum, default_value = "spdx-json")]
    format: Format,
    /// Write the document here [default: stdout].
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
}

/// Where a download comes from, for the document: its URL as declared, except `mirror://`
/// URLs (the `.deb`s), which name no host — the archive a machine uses is its own
/// configuration, and the document must not depend on the machine — so they have none
/// (`NOASSERTION`); the package's purl and SHA-256 identify it.
fn download_url(url: &str) -> Option<String> {
    if url.starts_with("file://") || url.starts_with("mirror://") {
        return None;
    }
    Some(url.to_string())
}

pub fn run(ctx: &Context, args: SbomArgs) -> Result<ExitCode, CliError> {
    let store = ctx.open_store()?;
    let (project, lowered) =
        super::drv_cmd::instantiate(ctx, &store, std::slice::from_ref(&args.target))?;
    let bill = gather(&store, &project.root, &lowered, &args.target)?;
    let text = match args.format {
        Format::SpdxJson => sbom::spdx_json(&bill),
        Format::CyclonedxJson => {
            let doc = sbom::to_cyclonedx(&bill);
            serde_json::to_string_pretty(&doc).map_err(json_error)? + "\n"
        }
    };
    let debs = bill
        .components
        .iter()
        .filter(|c| matches!(c.kind, Kind::Debian | Kind::Firmware))
        .count();
    write_document(
        ctx,
        args.output.as_deref(),
        &text,
        &format!(
            "SBOM of `{}`: {} components ({debs} Debian packages), {} files",
            args.target,
            bill.components.len(),
            bill.files.len()
        ),
    )?;
    Ok(ExitCode::SUCCESS)
}

fn is_tool(key: &str) -> bool {
    key.starts_with("environment-") || key == ENVIRONMENT_BUSYBOX
}

/// The output `out` of `node`, which must be valid.
fn valid_out(store: &Store, node: &Node, target: &str) -> Result<StorePath, CliError> {
    let path = node
        .drv
        .outputs
        .get("out")
        .and_then(|o| o.path.clone())
        .ok_or_else(|| CliError::Failed(format!("`{}` has no output `out`", node.key)))?;
    if !store.is_valid(&path)? {
        return Err(CliError::Usage {
            message: format!(
                "`{}` (`{}`), which `{target}` is built from, is not in the store",
                node.key,
                store.print(&path)
            ),
            hint: Some(format!("build it first: `ksbuild realise {target}`")),
        });
    }
    Ok(path)
}

fn hash_file(path: &Path, algo: HashAlgo) -> Result<String, CliError> {
    Ok(crate::store::hash_file(path, algo)?.to_hex())
}

/// SHA-256 of every non-empty regular file under `dir`.
fn content_hashes(dir: &Path) -> Result<BTreeSet<String>, CliError> {
    let mut out = BTreeSet::new();
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.map_err(|e| CliError::Io {
            action: "read an output",
            source: e.into(),
        })?;
        if entry.file_type().is_file() && entry.metadata().map(|m| m.len() > 0).unwrap_or(false) {
            out.insert(hash_file(entry.path(), HashAlgo::Sha256)?);
        }
    }
    Ok(out)
}

fn lock(root: &Path, env: &str) -> Result<LockFile, CliError> {
    LockFile::load(&lock_path(root, env)).map_err(|e| CliError::Usage {
        message: format!("cannot read the lock of environment `{env}`: {e}"),
        hint: Some(format!("run `ksbuild lock {env}`")),
    })
}

fn deb_component(deb: &LockedDeb, kind: Kind) -> Component {
    sbom::debian_component(
        &deb.name,
        &deb.version,
        &deb.architecture,
        &deb.sha256,
        kind,
    )
}

/// The `.deb` store path of a locked package of `env`, from the lowered graph.
fn deb_path(lowered: &Lowered, env: &str, deb: &LockedDeb) -> Option<StorePath> {
    let node = lowered.nodes.get(&format!(
        "environment-{env}.{}-{}",
        deb.name, deb.architecture
    ))?;
    node.drv.outputs.get("out")?.path.clone()
}

fn gather(store: &Store, root: &Path, lowered: &Lowered, target: &str) -> Result<Bill, CliError> {
    let keys: BTreeSet<String> = closure_keys(lowered, target)
        .into_iter()
        .filter(|k| !is_tool(k))
        .collect();
    let mut components = Vec::new();
    let mut files = Vec::new();
    let mut relationships = Vec::new();
    let id_of = |key: &str| sbom::id(key);
    for key in &keys {
        let node = &lowered.nodes[key];
        let out = valid_out(store, node, target)?;
        let physical = store.physical_path(&out);
        let mut c = sbom::build_component(key, &store.print(&out));
        if let Some(fetch) = &node.fetch {
            c.kind = Kind::Download;
            c.download = download_url(&fetch.url);
            match fetch.hash.method {
                FileIngestionMethod::Flat => c.sha256 = Some(fetch.hash.hash.to_hex()),
                _ => c.notes.push(("narSha256".into(), fetch.hash.hash.to_hex())),
            }
            c.notes.push(("url".into(), fetch.url.clone()));
            c.notes.push((
                "pinned".into(),
                match &fetch.hash_from {
                    HashFrom::Declared { at } => format!("declared at {at}"),
                    HashFrom::Pinned { key, .. } => format!("derivations/pins.lock `{key}`"),
                    HashFrom::Locked { environment } => format!("sandboxes/{environment}.lock"),
                },
            ));
        } else {
            c.notes
                .push(("derivation".into(), store.print(&node.drv_path)));
        }
        // A kernel: `config` and `lib/modules/VERSION`.
        let config = physical.join("config");
        let modules = physical.join("lib/modules");
        let is_kernel = node.fetch.is_none() && config.is_file() && modules.is_dir();
        if is_kernel {
            c.kind = Kind::Kernel;
            let mut versions: Vec<String> = std::fs::read_dir(&modules)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().to_string())
                        .collect()
                })
                .unwrap_or_default();
            versions.sort();
            c.version = versions.first().cloned();
            c.notes
                .push(("configSha256".into(), hash_file(&config, HashAlgo::Sha256)?));
            if let Some(base) = node.drv.env.get("BASE_CONFIG") {
                c.notes.push(("baseConfig".into(), base.clone()));
            }
            if let Some(frags) = node.drv.env.get("FRAGMENTS") {
                let names: Vec<String> = frags
                    .split_whitespace()
                    .map(|p| p.rsplit_once('-').map_or(p, |(_, n)| n).to_string())
                    .collect();
                c.notes.push(("fragments".into(), names.join(" ")));
            }
        }
        components.push(c);
        // Its dependencies that ship.
        for dep in &node.deps {
            if keys.contains(dep) {
                let relation = if is_kernel && lowered.nodes[dep].fetch.is_some() {
                    Relation::GeneratedFrom
                } else {
                    Relation::Contains
                };
                relationships.push((id_of(key), relation, id_of(dep)));
            }
        }
        // Environments given as inputs: the packages whose files are in the output.
        let input_paths: BTreeSet<&String> = node.inputs.values().collect();
        let mut output_hashes = None;
        // (An environment's `.deb`s given as an input, `{ debs = … }`, are downloads.)
        for dep in node.deps.iter().filter(|d| d.starts_with("environment-")) {
            let tree = &lowered.nodes[dep];
            if tree.fetch.is_some() {
                continue;
            }
            let Some(tree_out) = tree.drv.outputs.get("out").and_then(|o| o.path.clone()) else {
                continue;
            };
            let env = dep.trim_start_matches("environment-");
            let lock = lock(root, env)?;
            if !input_paths.contains(&store.print(&tree_out)) {
                // The build environment: only its firmware ships, when the build says so.
                if node
                    .drv
                    .env
                    .get("FIRMWARE")
                    .is_some_and(|f| !f.trim().is_empty())
                {
                    for deb in lock.deb.iter().filter(|d| d.name == "raspi-firmware") {
                        let fw = deb_component(deb, Kind::Firmware);
                        relationships.push((id_of(key), Relation::Contains, fw.id.clone()));
                        components.push(fw);
                    }
                }
                continue;
            }
            if output_hashes.is_none() {
                output_hashes = Some(content_hashes(&physical)?);
            }
            let shipped = output_hashes
                .as_ref()
                .map_or(&BTreeSet::new(), |h| h)
                .clone();
            for deb in &lock.deb {
                let path = deb_path(lowered, env, deb).ok_or_else(|| {
                    CliError::Failed(format!(
                        "`{}` of environment `{env}` is not in the derivation graph",
                        deb.name
                    ))
                })?;
                if !store.is_valid(&path)? {
                    return Err(CliError::Usage {
                        message: format!(
                            "`{}` (`{}`) of environment `{env}` is not in the store",
                            deb.name,
                            store.print(&path)
                        ),
                        hint: Some(format!("fetch it: `ksbuild realise {target}`")),
                    });
                }
                let copyright = format!("usr/share/doc/{}/copyright", deb.name);
                let deb_files =
                    crate::fetch::deb_files(&store.physical_path(&path), |p| p == copyright)
                        .map_err(|e| {
                            CliError::Failed(format!("cannot read `{}`: {e}", store.print(&path)))
                        })?;
                let mut took: Vec<String> = deb_files
                    .iter()
                    .filter(|f| shipped.contains(&f.sha256.to_hex()))
                    .map(|f| f.path.clone())
                    .collect();
                if took.is_empty() {
                    continue;
                }
                took.sort();
                let mut c = deb_component(deb, Kind::Debian);
                c.license = deb_files
                    .iter()
                    .find_map(|f| f.contents.as_deref())
                    .and_then(|t| sbom::debian_license(&String::from_utf8_lossy(t)));
                c.notes.push(("filesShipped".into(), took.join(" ")));
                relationships.push((id_of(key), Relation::Contains, c.id.clone()));
                components.push(c);
            }
        }
        // Repository folders given as inputs: their files.
        for src in &node.drv.input_sources {
            let printed = store.print(src);
            if !input_paths.contains(&printed) {
                continue;
            }
            let dir = store.physical_path(src);
            if !dir.is_dir() {
                continue;
            }
            for entry in walkdir::WalkDir::new(&dir).sort_by_file_name() {
                let entry = entry.map_err(|e| CliError::Io {
                    action: "read a source",
                    source: e.into(),
                })?;
                if !entry.file_type().is_file() {
                    continue;
                }
                let rel = entry.path().strip_prefix(&dir).unwrap_or(entry.path());
                let name = format!("{}/{}", src.name(), rel.display());
                let f = File {
                    id: sbom::id(&format!("file-{}-{name}", src.hash_part())),
                    name,
                    sha1: hash_file(entry.path(), HashAlgo::Sha1)?,
                    sha256: hash_file(entry.path(), HashAlgo::Sha256)?,
                };
                // SPDX: a package whose files were not analysed contains no files; it is
                // generated from them (copied, or compiled).
                relationships.push((id_of(key), Relation::GeneratedFrom, f.id.clone()));
                files.push(f);
            }
        }
    }
    let node = &lowered.nodes[target];
    let created = node
        .drv
        .env
        .get("SOURCE_DATE_EPOCH")
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(Bill {
        target: target.to_string(),
        root: id_of(target),
        drv_hash: node.drv_path.hash_part().to_string(),
        created,
        components,
        files,
        relationships,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
    })
}
