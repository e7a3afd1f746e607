//! The project model: loading `derivations/*.toml` (and `derivations/_project.toml`) with
//! source spans, and lowering them to Nix derivations ([`lower`]). Reads files; lowering
//! itself is pure and imports repository files through a closure.
//!
//! A target is named after its file (`derivations/kernels/kernel-arm64.toml` is
//! `kernel-arm64`); files whose name starts with `_` are not targets.

mod lower;
pub mod pins;
pub mod sandbox;
mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{NamedSource, SourceSpan};

pub use lower::{lower, unpinned, Fetch, Lowered, Node, Unpack, Unpinned};
pub use schema::{DerivationFile, FetchSpec, InputSpec, ProjectFile, VariantSpec};

/// A problem at a place in a TOML file.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{message}")]
pub struct FileError {
    /// What is wrong.
    pub message: String,
    #[source_code]
    src: NamedSource<Arc<String>>,
    #[label("{label}")]
    span: SourceSpan,
    label: String,
    /// What to do about it.
    #[help]
    pub help: Option<String>,
}

/// An error in the project's files, pointing into them where it can.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum ModelError {
    /// A problem at a place in a TOML file.
    #[error(transparent)]
    #[diagnostic(transparent)]
    InFile(Box<FileError>),
    /// A file could not be read.
    #[error("cannot read `{path}`")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Derivations depend on each other in a circle.
    #[error("dependency cycle: {0}")]
    #[diagnostic(help(
        "a derivation cannot depend on itself, even through others; remove one of these inputs"
    ))]
    Cycle(String),
    /// A target that no file defines.
    #[error("unknown target `{name}`")]
    UnknownTarget {
        name: String,
        #[help]
        help: Option<String>,
    },
    /// `derivations/pins.lock` cannot be read.
    #[error(transparent)]
    #[diagnostic(help("it is written by ksbuild; restore it from version control, or delete it and fetch or `ksbuild pin` again"))]
    Pins(#[from] pins::PinsError),
    /// Two files define the same target.
    #[error("two files define the target `{name}`: `{first}` and `{second}`")]
    #[diagnostic(help("target names come from file names; rename one of the files"))]
    DuplicateTarget {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
}

/// A loaded TOML file, kept for error reports.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path relative to the project root.
    pub path: PathBuf,
    /// Its text.
    pub text: Arc<String>,
}

impl SourceFile {
    /// An error at `span` of this file.
    pub fn error(
        &self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) -> ModelError {
        ModelError::InFile(Box::new(FileError {
            message: message.into(),
            src: NamedSource::new(self.path.display().to_string(), self.text.clone()),
            span: (span.start, span.end.saturating_sub(span.start)).into(),
            label: label.into(),
            help,
        }))
    }

    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ModelError> {
        toml::from_str(&self.text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            let message = e.message().to_string();
            let help = if message.starts_with("unknown field") {
                Some("see the key reference in README.md, \"The derivation language\"".to_string())
            } else {
                None
            };
            self.error(
                span,
                format!("invalid `{}`: {message}", self.path.display()),
                "here",
                help,
            )
        })
    }
}

/// One target: a derivation file.
#[derive(Debug)]
pub struct Target {
    /// The target name.
    pub name: String,
    /// Its file.
    pub source: SourceFile,
    /// Its contents.
    pub spec: DerivationFile,
}

/// The project: its root, shared settings and targets.
#[derive(Debug)]
pub struct Project {
    /// The project root (holding `derivations/`).
    pub root: PathBuf,
    /// `derivations/_project.toml`, if present.
    pub settings: Option<(SourceFile, ProjectFile)>,
    /// Targets by name.
    pub targets: BTreeMap<String, Target>,
    /// Hashes of downloads declared without one (`derivations/pins.lock`).
    pub pins: pins::Pins,
}

/// The Levenshtein distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The closest of `candidates` to `name`, as a "did you mean" hint.
pub fn did_you_mean<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a String>,
) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (distance(name, c), c))
        .filter(|(d, c)| *d <= (c.len().max(name.len()) / 3).max(2))
        .min()
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

impl Project {
    /// Loads every derivation file under `root/derivations`.
    pub fn load(root: &Path) -> Result<Project, ModelError> {
        let dir = root.join("derivations");
        let read = |path: &Path| -> Result<SourceFile, ModelError> {
            let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            Ok(SourceFile {
                path: path.strip_prefix(root).unwrap_or(path).to_path_buf(),
                text: Arc::new(text),
            })
        };
        let settings_file = dir.join("_project.toml");
        let settings = if settings_file.exists() {
            let source = read(&settings_file)?;
            let parsed: ProjectFile = source.parse()?;
            Some((source, parsed))
        } else {
            None
        };
        let mut targets: BTreeMap<String, Target> = BTreeMap::new();
        let mut files: Vec<PathBuf> = Vec::new();
        for entry in walkdir::WalkDir::new(&dir).sort_by_file_name() {
            let entry = entry.map_err(|e| ModelError::Io {
                path: dir.clone(),
                source: e
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("walk failed")),
            })?;
            let name = entry.file_name().to_string_lossy();
            if entry.file_type().is_file()
                && name.ends_with(".toml")
                && !name.starts_with('_')
                && !name.starts_with('.')
            {
                files.push(entry.into_path());
            }
        }
        // Parsing dominates loading a large project: spread it over the CPUs.
        let parse = |path: &PathBuf| -> Result<(String, SourceFile, DerivationFile), ModelError> {
            let source = read(path)?;
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let spec: DerivationFile = source.parse()?;
            Ok((name, source, spec))
        };
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(8);
        let chunk = files.len().div_ceil(workers).max(16);
        let parsed: Vec<Result<(String, SourceFile, DerivationFile), ModelError>> =
            std::thread::scope(|scope| {
                let handles: Vec<_> = files
                    .chunks(chunk)
                    .map(|part| scope.spawn(move || part.iter().map(parse).collect::<Vec<_>>()))
                    .collect();
                handles
                    .into_iter()
                    .flat_map(|h| {
                        h.join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    })
                    .collect()
            });
        for item in parsed {
            let (name, source, spec) = item?;
            if let Some(existing) = targets.get(&name) {
                return Err(ModelError::DuplicateTarget {
                    name,
                    first: existing.source.path.clone(),
                    second: source.path.clone(),
                });
            }
            for (variant, v) in &spec.variants {
                let v = v.get_ref();
                let mut derived = spec.clone();
                derived.variants.clear();
                let base_name = spec
                    .name
                    .as_ref()
                    .map(|n| n.get_ref().clone())
                    .unwrap_or_else(|| name.clone());
                derived.name = Some(match &v.name {
                    Some(n) => n.clone(),
                    None => toml::Spanned::new(0..0, format!("{base_name}-{variant}")),
                });
                if let Some(args) = &v.args {
                    derived.args = args.clone();
                }
                derived
                    .env
                    .extend(v.env.iter().map(|(k, x)| (k.clone(), x.clone())));
                derived
                    .inputs
                    .extend(v.inputs.iter().map(|(k, x)| (k.clone(), x.clone())));
                let key = format!("{name}@{variant}");
                targets.insert(
                    key.clone(),
                    Target {
                        name: key,
                        source: source.clone(),
                        spec: derived,
                    },
                );
            }
            targets.insert(name.clone(), Target { name, source, spec });
        }
        Ok(Project {
            root: root.to_path_buf(),
            settings,
            targets,
            pins: pins::Pins::load(root)?,
        })
    }

    /// The target called `name`, or an error with a suggestion.
    pub fn target(&self, name: &str) -> Result<&Target, ModelError> {
        self.targets
            .get(name)
            .ok_or_else(|| ModelError::UnknownTarget {
                name: name.to_string(),
                help: did_you_mean(name, self.targets.keys()).or_else(|| {
                    Some(format!(
                        "targets are the files in `{}/derivations/`",
                        self.root.display()
                    ))
                }),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let names = [
            "busybox-static".to_string(),
            "kernel-arm64".to_string(),
            "hello".to_string(),
        ];
        assert_eq!(
            did_you_mean("busybox-statc", &names).as_deref(),
            Some("did you mean `busybox-static`?")
        );
        assert_eq!(
            did_you_mean("kernel-amd64", &names).as_deref(),
            Some("did you mean `kernel-arm64`?")
        );
        assert_eq!(did_you_mean("zzz", &names), None);
    }
}
