//! The project model: loading `derivations/*.toml` (and `derivations/_project.toml`) with
//! source spans, and lowering them to Nix derivations ([`lower`]). Reads files; lowering
//! itself is pure and imports repository files through a closure.
//!
//! A target is named after its file (`derivations/kernels/kernel-arm64.toml` is
//! `kernel-arm64`); files whose name starts with `_` are not targets.

pub mod eval_cache;
mod excerpt;
mod lower;
pub mod pins;
pub mod sandbox;
mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::SourceSpan;

pub use lower::{
    confine_to_project, lower, unpinned, Fetch, HashFrom, LazyDrv, Lowered, Node, Unpack, Unpinned,
    ENTER_SCRIPT_NAME, ENVIRONMENT_BUSYBOX,
};
pub use schema::{DerivationFile, FetchSpec, InputSpec, ProjectFile, VariantSpec};

/// A problem at a place in a TOML file.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
#[error("{message}")]
pub struct FileError {
    /// What is wrong.
    pub message: String,
    #[source_code]
    src: excerpt::Excerpt,
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
    #[error("dependency cycle: {cycle}{}", lines.iter().map(|l| format!("\n  {l}")).collect::<String>())]
    #[diagnostic(help(
        "a derivation cannot depend on itself, even through others; remove one of these inputs"
    ))]
    Cycle {
        /// The targets, `a -> b -> a`.
        cycle: String,
        /// The `[inputs]` lines that make it, `path:line: text`.
        lines: Vec<String>,
    },
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
        // Only the lines around the span, long ones clipped: a diagnostic never echoes
        // a whole file, however long its lines.
        let (src, span) = excerpt::Excerpt::new(self.path.display().to_string(), &self.text, span);
        ModelError::InFile(Box::new(FileError {
            message: message.into(),
            src,
            span: (span.start, span.len()).into(),
            label: label.into(),
            help,
        }))
    }

    /// The number (from 1) of the line holding byte `offset`.
    pub fn line_number(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        1 + self.text.as_bytes()[..offset]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
    }

    /// `path:line` of byte `offset`, as compilers name a place.
    pub fn location(&self, offset: usize) -> String {
        format!("{}:{}", self.path.display(), self.line_number(offset))
    }

    /// The line holding byte `offset`, trimmed and clipped around it if long.
    pub fn quote_line(&self, offset: usize) -> String {
        let text = self.text.as_str();
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
        excerpt::clip_line(text, start..end, offset)
            .trim()
            .to_string()
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

/// A parsed derivation file: its target name, text and contents.
type Parsed = (String, SourceFile, DerivationFile);

/// The derivation files of a project, found but not parsed yet.
struct Index {
    root: PathBuf,
    settings: Option<(SourceFile, ProjectFile)>,
    /// Every target file, in path order.
    files: Vec<PathBuf>,
}

impl Index {
    fn new(root: &Path) -> Result<Index, ModelError> {
        let dir = root.join("derivations");
        let settings_file = dir.join("_project.toml");
        let settings = if settings_file.exists() {
            let source = read_source(root, &settings_file)?;
            let parsed: ProjectFile = source.parse()?;
            Some((source, parsed))
        } else {
            None
        };
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
        Ok(Index {
            root: root.to_path_buf(),
            settings,
            files,
        })
    }

    /// Reads and parses `files`; parsing dominates loading a large project, so many files
    /// are spread over the CPUs.
    fn parse(&self, files: &[&PathBuf]) -> Vec<Result<Parsed, ModelError>> {
        crate::map_parallel(files, 16, |path| {
            let source = read_source(&self.root, path)?;
            let spec: DerivationFile = source.parse()?;
            Ok((target_name(path), source, spec))
        })
    }

    fn into_project(self, targets: BTreeMap<String, Target>) -> Result<Project, ModelError> {
        Ok(Project {
            pins: pins::Pins::load(&self.root)?,
            root: self.root,
            settings: self.settings,
            targets,
        })
    }
}

fn read_source(root: &Path, path: &Path) -> Result<SourceFile, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(SourceFile {
        path: path.strip_prefix(root).unwrap_or(path).to_path_buf(),
        text: Arc::new(text),
    })
}

/// A file's target name: its stem.
fn target_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Adds a parsed file to `targets`: the target and one per variant (`NAME@VARIANT`).
fn insert_target(
    targets: &mut BTreeMap<String, Target>,
    (name, source, spec): Parsed,
) -> Result<(), ModelError> {
    if let Some(existing) = targets.get(&name) {
        return Err(ModelError::DuplicateTarget {
            name,
            first: existing.source.path.clone(),
            second: source.path.clone(),
        });
    }
    for (variant, v) in &spec.variants {
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
        if let Some(features) = &v.required_system_features {
            derived.required_system_features = Some(features.clone());
        }
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
    Ok(())
}

/// The targets a derivation depends on by name.
fn dependencies(spec: &DerivationFile) -> impl Iterator<Item = &str> {
    let environment = spec.environment.is_some()
        || spec
            .inputs
            .values()
            .any(|i| i.get_ref().names_environment());
    spec.inputs
        .values()
        .filter_map(|i| match i.get_ref() {
            InputSpec::Derivation { target, .. } => Some(target.as_str()),
            _ => None,
        })
        .chain(environment.then_some(lower::ENVIRONMENT_BUSYBOX))
}

impl Project {
    /// Loads every derivation file under `root/derivations`.
    pub fn load(root: &Path) -> Result<Project, ModelError> {
        let index = Index::new(root)?;
        let mut targets = BTreeMap::new();
        for parsed in index.parse(&index.files.iter().collect::<Vec<_>>()) {
            insert_target(&mut targets, parsed?)?;
        }
        index.into_project(targets)
    }

    /// Loads the derivation files that `roots` need: theirs and those of their
    /// dependencies, level by level, so that building one target of a large project
    /// parses only its closure. Anything unexpected (an unknown name, two files for one
    /// name) loads the whole project instead, whose errors say it best.
    pub fn load_for(root: &Path, roots: &[String]) -> Result<Project, ModelError> {
        if roots.is_empty() {
            return Project::load(root);
        }
        let index = Index::new(root)?;
        let mut by_name: BTreeMap<String, &PathBuf> = BTreeMap::new();
        for path in &index.files {
            if by_name.insert(target_name(path), path).is_some() {
                return Project::load(root);
            }
        }
        let base = |name: &str| name.split('@').next().unwrap_or(name).to_string();
        let mut targets: BTreeMap<String, Target> = BTreeMap::new();
        let mut wanted: Vec<String> = roots.to_vec();
        let mut loaded: std::collections::BTreeSet<String> = Default::default();
        while !wanted.is_empty() {
            let mut files = Vec::new();
            for name in &wanted {
                let file = base(name);
                if loaded.insert(file.clone()) {
                    match by_name.get(&file) {
                        Some(path) => files.push(*path),
                        None => return Project::load(root),
                    }
                }
            }
            let mut next = Vec::new();
            for parsed in index.parse(&files) {
                let parsed = parsed?;
                let name = parsed.0.clone();
                let variants: Vec<String> = parsed.2.variants.keys().cloned().collect();
                insert_target(&mut targets, parsed)?;
                for key in std::iter::once(name.clone())
                    .chain(variants.iter().map(|v| format!("{name}@{v}")))
                {
                    next.extend(dependencies(&targets[&key].spec).map(str::to_string));
                }
            }
            wanted = next;
        }
        let complete = roots.iter().all(|n| targets.contains_key(n))
            && targets
                .values()
                .flat_map(|t| dependencies(&t.spec))
                .all(|n| targets.contains_key(n));
        if !complete {
            return Project::load(root);
        }
        index.into_project(targets)
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

    #[test]
    fn loading_for_targets_parses_their_closure_only() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("derivations");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();
        write("_project.toml", "system = \"x86_64-linux\"\n");
        write(
            "a.toml",
            "builder = \"/b\"\n[inputs]\nb = \"b\"\n[variants.small.inputs]\nc = \"c@x\"\n",
        );
        write("sub/b.toml", "builder = \"/b\"\n");
        write("c.toml", "builder = \"/b\"\n[variants.x]\nargs = []\n");
        write("unrelated.toml", "this is not = toml = at all");
        let keys = |p: &Project| p.targets.keys().cloned().collect::<Vec<_>>();
        let p = Project::load_for(tmp.path(), &["a".into()]).unwrap();
        // A variant's inputs count too: `a@small` needs `c@x`.
        assert_eq!(keys(&p), ["a", "a@small", "b", "c", "c@x"]);
        let p = Project::load_for(tmp.path(), &["sub/b".into(), "b".into()][1..]).unwrap();
        assert_eq!(keys(&p), ["b"]);
        // Whatever the closure cannot resolve loads everything, whose errors say it best.
        let err = Project::load_for(tmp.path(), &["nope".into()]).unwrap_err();
        assert!(err.to_string().contains("unrelated.toml"), "{err}");
        std::fs::remove_file(dir.join("unrelated.toml")).unwrap();
        let p = Project::load_for(tmp.path(), &["nope".into()]).unwrap();
        assert_eq!(keys(&p), ["a", "a@small", "b", "c", "c@x"]);
    }
}
