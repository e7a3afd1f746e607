//! `ksbuild provenance TARGET` and `ksbuild provenance verify`: SLSA v1 provenance of a
//! realised target in a DSSE envelope signed with a Nix key, and its check against the
//! public key and the output (in the store, or a copy). Gathers the facts from the project
//! and the store; the documents are written by [`crate::attest`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{CliError, Context};
use crate::attest::dsse::{Envelope, IN_TOTO_PAYLOAD_TYPE};
use crate::attest::provenance::{self, Dependency, Facts, Revision, Subject};
use crate::compat::{FileIngestionMethod, HashAlgo};
use crate::model::HashFrom;
use crate::model::Lowered;
use crate::store::Store;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct ProvenanceArgs {
    #[command(subcommand)]
    command: Option<ProvenanceCommand>,
    /// The target (realised first with `ksbuild realise TARGET`).
    #[arg(required = true)]
    target: Option<String>,
    /// Sign with this Nix secret key file (`ksbuild key generate NAME SECRET PUBLIC`);
    /// without it the envelope has no signature.
    #[arg(long, value_name = "FILE")]
    sign_key: Option<PathBuf>,
    /// Write the envelope here [default: stdout].
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum ProvenanceCommand {
    /// Check an envelope: its signature against the public keys given, then each subject's
    /// SHA-256 against the output: a copy (`--against`), else the store when the output is
    /// valid there.
    Verify {
        /// The envelope (`ksbuild provenance TARGET -o FILE` wrote it).
        file: PathBuf,
        /// Trusted public keys (`name:base64`), or files holding them.
        #[arg(long = "key", value_name = "KEY|FILE", required = true)]
        keys: Vec<String>,
        /// Fail unless the outputs are valid in the store and match.
        #[arg(long, conflicts_with = "against")]
        store_check: bool,
        /// Check the subjects against this copy of the output (a folder, or the file of a
        /// single-file output) instead of the store.
        #[arg(long, value_name = "PATH")]
        against: Option<PathBuf>,
    },
}

pub fn run(ctx: &Context, args: ProvenanceArgs) -> Result<ExitCode, CliError> {
    match args.command {
        Some(ProvenanceCommand::Verify {
            file,
            keys,
            store_check,
            against,
        }) => verify(ctx, &file, &keys, store_check, against.as_deref()),
        None => {
            let target = args.target.unwrap_or_default();
            let key = args
                .sign_key
                .as_deref()
                .map(super::cache_cmd::read_secret_key)
                .transpose()?;
            let store = ctx.open_store()?;
            let (project, lowered) =
                super::drv_cmd::instantiate(ctx, &store, std::slice::from_ref(&target))?;
            let facts = gather(&store, &project.root, &lowered, &target)?;
            let statement = provenance::statement(&facts);
            let payload = serde_json::to_vec(&statement).map_err(json_error)?;
            let envelope = match &key {
                Some(key) => Envelope::sign(IN_TOTO_PAYLOAD_TYPE, &payload, key),
                None => Envelope {
                    payload: crate::compat::base64::encode(&payload),
                    payload_type: IN_TOTO_PAYLOAD_TYPE.into(),
                    signatures: vec![],
                },
            };
            let mut text = serde_json::to_string_pretty(&envelope).map_err(json_error)?;
            text.push('\n');
            write_document(
                ctx,
                args.output.as_deref(),
                &text,
                &format!(
                    "provenance of `{target}`: {} subjects, {} dependencies{}",
                    facts.subjects.len(),
                    facts.dependencies.len(),
                    key.map(|k| format!(", signed by `{}`", k.name()))
                        .unwrap_or_default()
                ),
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes a document to `output` (or stdout), with a note on stderr.
pub(super) fn write_document(
    ctx: &Context,
    output: Option<&Path>,
    text: &str,
    note: &str,
) -> Result<(), CliError> {
    match output {
        Some(path) => {
            std::fs::write(path, text).map_err(|e| CliError::Io {
                action: "write the document",
                source: std::io::Error::new(e.kind(), format!("`{}`: {e}", path.display())),
            })?;
            ctx.note(&format!("{note}: `{}`", path.display()));
        }
        None => {
            super::out(text.as_bytes())?;
            ctx.note(note);
        }
    }
    Ok(())
}

pub(super) fn json_error(e: serde_json::Error) -> CliError {
    CliError::Io {
        action: "encode JSON",
        source: e.into(),
    }
}

/// The keys of `target` and of everything it depends on.
pub(super) fn closure_keys(lowered: &Lowered, target: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![target.to_string()];
    while let Some(k) = todo.pop() {
        if let Some(node) = lowered.nodes.get(&k) {
            if seen.insert(k.clone()) {
                todo.extend(node.deps.iter().cloned());
            }
        }
    }
    seen
}

/// The facts of `target`'s provenance: its outputs must be valid.
fn gather(store: &Store, root: &Path, lowered: &Lowered, target: &str) -> Result<Facts, CliError> {
    let node = &lowered.nodes[target];
    let outputs = crate::graph::output_paths(node);
    let mut subjects = Vec::new();
    for (name, path) in &outputs {
        if !store.is_valid(path)? {
            return Err(CliError::Usage {
                message: format!(
                    "output `{name}` of `{target}` (`{}`) is not in the store",
                    store.print(path)
                ),
                hint: Some(format!("build it first: `ksbuild realise {target}`")),
            });
        }
        let prefix = (name != "out").then_some(name.as_str());
        subjects.extend(hash_files(&store.physical_path(path), prefix, path.name())?);
    }
    let mut dependencies = Vec::new();
    let mut locks: BTreeMap<String, Option<crate::model::sandbox::LockFile>> = BTreeMap::new();
    let mut sources = BTreeSet::new();
    for key in closure_keys(lowered, target) {
        let n = &lowered.nodes[&key];
        sources.extend(n.drv.input_sources.iter().cloned());
        let Some(fetch) = &n.fetch else { continue };
        let Some(path) = n.drv.outputs.get("out").and_then(|o| o.path.clone()) else {
            continue;
        };
        let mut digest = BTreeMap::new();
        let mut annotations = BTreeMap::new();
        annotations.insert("storePath".to_string(), store.print(&path));
        match fetch.hash.method {
            FileIngestionMethod::Flat => {
                digest.insert(algo_key(fetch.hash.hash.algo()), fetch.hash.hash.to_hex());
            }
            _ => {
                digest.insert(
                    format!("nixNar{}", capitalised(fetch.hash.hash.algo().name())),
                    fetch.hash.hash.to_hex(),
                );
            }
        }
        if let HashFrom::Locked { environment } = &fetch.hash_from {
            annotations.insert("environment".into(), environment.clone());
            let lock = locks.entry(environment.clone()).or_insert_with(|| {
                crate::model::sandbox::LockFile::load(&crate::model::sandbox::lock_path(
                    root,
                    environment,
                ))
                .ok()
            });
            if let Some(deb) = lock.as_ref().and_then(|l| {
                l.deb
                    .iter()
                    .find(|d| format!("mirror://{}/{}", d.mirror, d.path) == fetch.url)
            }) {
                // The `.deb` file's own hash, from the archive's signed index.
                digest.insert("sha256".into(), deb.sha256.clone());
            }
        }
        dependencies.push(Dependency {
            uri: fetch.url.clone(),
            name: path.name().to_string(),
            digest,
            annotations,
        });
    }
    for s in sources {
        let info = store.path_info(&s)?;
        dependencies.push(Dependency {
            uri: store.print(&s),
            name: s.name().to_string(),
            digest: [("nixNarSha256".to_string(), info.nar_hash.to_hex())].into(),
            annotations: BTreeMap::new(),
        });
    }
    let drv_info = store.path_info(&node.drv_path)?;
    Ok(Facts {
        target: target.to_string(),
        revision: revision(root),
        drv_path: store.print(&node.drv_path),
        drv_nar_sha256: drv_info.nar_hash.to_hex(),
        system: node.drv.system.clone(),
        outputs: outputs
            .iter()
            .map(|(n, p)| (n.clone(), store.print(p)))
            .collect(),
        subjects,
        dependencies,
        builder_version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

fn algo_key(algo: HashAlgo) -> String {
    algo.name().to_string()
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

/// The project's Git commit, when it is a clean Git checkout.
fn revision(root: &Path) -> Revision {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--verify", "HEAD"]) {
        None => Revision::Unknown("the project is not a Git checkout (or `git` is missing)".into()),
        Some(commit) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(s) if s.is_empty() => Revision::Clean(commit),
            _ => Revision::Unknown(format!("the checkout at {commit} has uncommitted changes")),
        },
    }
}

/// SHA-256 of every regular file under `path` (or of `path` itself, named `single`), named
/// relative to it with `prefix/` before; symlinks and folders are not subjects.
pub(super) fn hash_files(
    path: &Path,
    prefix: Option<&str>,
    single: &str,
) -> Result<Vec<Subject>, CliError> {
    let io = |e: std::io::Error, p: &Path| CliError::Io {
        action: "hash an output file",
        source: std::io::Error::new(e.kind(), format!("`{}`: {e}", p.display())),
    };
    let mut out = Vec::new();
    let meta = std::fs::symlink_metadata(path).map_err(|e| io(e, path))?;
    if meta.is_file() {
        out.push(Subject {
            name: single.to_string(),
            sha256: sha256_file(path)?,
        });
        return Ok(out);
    }
    for entry in walkdir::WalkDir::new(path).sort_by_file_name() {
        let entry = entry.map_err(|e| io(e.into(), path))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(path)
            .unwrap_or(entry.path())
            .to_string_lossy()
            .to_string();
        out.push(Subject {
            name: match prefix {
                Some(p) => format!("{p}/{rel}"),
                None => rel,
            },
            sha256: sha256_file(entry.path())?,
        });
    }
    Ok(out)
}

fn sha256_file(path: &Path) -> Result<String, CliError> {
    Ok(crate::store::hash_file(path, HashAlgo::Sha256)?.to_hex())
}

fn refused(file: &Path, why: &str) -> CliError {
    CliError::Failed(format!("provenance `{}` is refused: {why}", file.display()))
}

fn verify(
    ctx: &Context,
    file: &Path,
    keys: &[String],
    store_check: bool,
    against: Option<&Path>,
) -> Result<ExitCode, CliError> {
    let trusted = keys
        .iter()
        .map(|k| super::bundle_cmd::read_public_key(k))
        .collect::<Result<Vec<_>, _>>()?;
    let text = std::fs::read(file).map_err(|e| CliError::Usage {
        message: format!("cannot read `{}`: {e}", file.display()),
        hint: None,
    })?;
    let envelope: Envelope = serde_json::from_slice(&text)
        .map_err(|e| refused(file, &format!("it is not a DSSE envelope: {e}")))?;
    if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE {
        return Err(refused(
            file,
            &format!(
                "its payloadType is `{}`, not `{IN_TOTO_PAYLOAD_TYPE}`",
                envelope.payload_type
            ),
        ));
    }
    let (payload, signer) = envelope
        .verify(&trusted)
        .map_err(|e| refused(file, &e.to_string()))?;
    let statement: serde_json::Value = serde_json::from_slice(&payload)
        .map_err(|e| refused(file, &format!("its payload is not JSON: {e}")))?;
    let claims = provenance::claims(&statement).map_err(|e| refused(file, &e))?;
    // Where the files are: a copy given, else the store's outputs when valid.
    let actual: Option<(Vec<Subject>, String)> = match against {
        Some(copy) => {
            let single = claims.subjects.first().map_or("out", |s| s.name.as_str());
            Some((
                hash_files(copy, None, single)?,
                format!("`{}`", copy.display()),
            ))
        }
        None => {
            let store = ctx.open_store()?;
            let mut files = Vec::new();
            let mut all_valid = true;
            for (name, printed) in &claims.outputs {
                let path = store.parse_user_path(Path::new(printed))?;
                if !store.is_valid(&path)? {
                    all_valid = false;
                    if store_check {
                        return Err(refused(
                            file,
                            &format!("output `{name}` (`{printed}`) is not valid in the store"),
                        ));
                    }
                    continue;
                }
                let prefix = (name != "out").then_some(name.as_str());
                files.extend(hash_files(
                    &store.physical_path(&path),
                    prefix,
                    path.name(),
                )?);
            }
            all_valid.then(|| (files, "the store".to_string()))
        }
    };
    match actual {
        Some((files, whence)) => {
            compare(&claims.subjects, &files).map_err(|why| {
                refused(file, &format!("{why} (in {whence})"))
            })?;
            ctx.note(&format!(
                "`{}`: signed by `{signer}`; the {} subjects of `{}` match {whence}",
                file.display(),
                claims.subjects.len(),
                claims.target
            ));
        }
        None => ctx.note(&format!(
            "`{}`: signed by `{signer}`; the outputs are not in this store, so the subjects were not checked (hint: `--against COPY`)",
            file.display()
        )),
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the files found are exactly the subjects; else which differs.
fn compare(subjects: &[Subject], files: &[Subject]) -> Result<(), String> {
    let found: BTreeMap<&str, &str> = files
        .iter()
        .map(|s| (s.name.as_str(), s.sha256.as_str()))
        .collect();
    let claimed: BTreeMap<&str, &str> = subjects
        .iter()
        .map(|s| (s.name.as_str(), s.sha256.as_str()))
        .collect();
    for (name, sha) in &claimed {
        match found.get(name) {
            None => return Err(format!("subject `{name}` is missing")),
            Some(got) if got != sha => {
                return Err(format!(
                    "subject `{name}` has sha256 {got}, the statement says {sha}"
                ))
            }
            _ => {}
        }
    }
    if let Some(extra) = found.keys().find(|n| !claimed.contains_key(*n)) {
        return Err(format!("file `{extra}` is not a subject"));
    }
    Ok(())
}
