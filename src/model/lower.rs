//! Lowering: the targets of a [`Project`] become Nix [`Derivation`]s, with their output
//! paths and `.drv` paths computed exactly as Nix would. Pure: repository files are
//! imported into the store through a closure the caller provides.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use toml::Spanned;

use super::schema::{FetchSpec, InputSpec};
use super::{did_you_mean, ModelError, Project, SourceFile, Target};
use crate::compat::derivation::{Derivation, DerivationError, FixedOutputHash, Output};
use crate::compat::hash::HashError;
use crate::compat::store_path::validate_name;
use crate::compat::{FileIngestionMethod, Hash, HashAlgo, StoreDir, StorePath};

/// How a download is unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Unpack {
    /// A Debian package: its `data.tar` becomes the tree.
    Deb,
    /// A tarball (optionally gzip/xz/zstd-compressed).
    Tar,
}

/// Where a download's expected hash is written: what to change if it is wrong.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HashFrom {
    /// `hash` in the derivation file, at `path:line`.
    Declared { at: String },
    /// `derivations/pins.lock`, at `path:line`; `ksbuild pin KEY` changes it.
    Pinned { at: String, key: String },
    /// The lock of an environment (`sandboxes/NAME.lock`); `ksbuild lock NAME` changes it.
    Locked { environment: String },
}

/// What ksbuild must download for a fixed-output node.
#[derive(Debug, Clone)]
pub struct Fetch {
    /// The URL as written (`mirror://…` is resolved at fetch time).
    pub url: String,
    /// The expected hash.
    pub hash: FixedOutputHash,
    /// Unpacking, if any.
    pub unpack: Option<Unpack>,
    /// Whether the downloaded file is made executable.
    pub executable: bool,
    /// Where the download is declared: `path:line` of its `url` (for an environment's
    /// packages, of the `environment` that needs them).
    pub declared_at: String,
    /// Where its hash is written.
    pub hash_from: HashFrom,
    /// Its size in bytes, where a lock says (the `.deb`s of environments).
    pub size: Option<u64>,
}

/// One lowered derivation.
#[derive(Debug, Clone)]
pub struct Node {
    /// The target name, or `target.input` for an inline download.
    pub key: String,
    /// The derivation, output paths filled in.
    pub drv: LazyDrv,
    /// Its `.drv` store path.
    pub drv_path: StorePath,
    /// For downloads: what to fetch.
    pub fetch: Option<Fetch>,
    /// Keys of the nodes it depends on.
    pub deps: BTreeSet<String>,
    /// Its inputs by name: the store path each `${name}` stands for.
    pub inputs: BTreeMap<String, String>,
}

/// A node's derivation: lowered here, or the `.drv` text the evaluation cache kept, parsed
/// when first used (a no-op realisation of thousands of nodes looks at a few).
#[derive(Debug, Clone)]
pub struct LazyDrv {
    parsed: std::sync::OnceLock<Derivation>,
    text: Option<(String, std::sync::Arc<StoreDir>)>,
}

impl LazyDrv {
    /// The `.drv` text `text` (as [`Derivation::to_aterm`] wrote it) of the store `store_dir`.
    pub fn from_aterm(text: String, store_dir: std::sync::Arc<StoreDir>) -> LazyDrv {
        LazyDrv {
            parsed: std::sync::OnceLock::new(),
            text: Some((text, store_dir)),
        }
    }
}

impl From<Derivation> for LazyDrv {
    fn from(drv: Derivation) -> LazyDrv {
        LazyDrv {
            parsed: drv.into(),
            text: None,
        }
    }
}

impl std::ops::Deref for LazyDrv {
    type Target = Derivation;
    fn deref(&self) -> &Derivation {
        self.parsed.get_or_init(|| {
            let (text, store_dir) = self
                .text
                .as_ref()
                .expect("a LazyDrv has a text or a derivation");
            // The text was written by `to_aterm` of this very executable (the cache checks
            // which one wrote it): failing to parse it means the file was damaged.
            Derivation::from_aterm(text.as_bytes(), store_dir).unwrap_or_else(|e| {
                panic!(
                    "a derivation in the evaluation cache (nix/var/ksbuild/eval) is damaged ({e}); \
                     delete that folder and run the command again"
                )
            })
        })
    }
}

/// The lowered graph.
#[derive(Debug, Default)]
pub struct Lowered {
    /// Nodes by key.
    pub nodes: BTreeMap<String, Node>,
    /// Keys in dependency order (every node after its dependencies).
    pub order: Vec<String>,
    /// Repository files imported as sources.
    pub sources: BTreeSet<StorePath>,
    /// Text files ksbuild itself provides (environment scripts), to add to the store
    /// before the `.drv` files that use them.
    pub texts: BTreeMap<StorePath, String>,
    /// Each path input as written (`tools/busybox`) and where it led (every symlink on
    /// the way followed): what the evaluation cache checks again before it is used.
    pub path_inputs: BTreeMap<String, std::path::PathBuf>,
}

/// The target whose `out` is the static busybox that unpacks and enters environments.
pub const ENVIRONMENT_BUSYBOX: &str = "busybox-static";
/// The script that unpacks an environment's `.deb`s into its tree.
pub const UNPACK_SCRIPT: &str = include_str!("../../fragments/environment-unpack.sh");
/// The script that runs a builder inside an environment's tree.
pub const ENTER_SCRIPT: &str = include_str!("../../fragments/environment-enter.sh");
/// The name of the store path of [`ENTER_SCRIPT`] (after its hash).
pub const ENTER_SCRIPT_NAME: &str = "environment-enter.sh";

/// Environment keys a derivation may not set: those ksbuild derives from its keys, and those
/// Nix's `derivation` interprets itself (the arguments, a fixed output, structured
/// attributes), which as plain environment would give the flake's lowering
/// (`fragments/lower.nix`) another `.drv`; and `requiredSystemFeatures`, which has its own
/// key (`required-system-features`). Output names are reserved too.
pub const RESERVED_ENV: [&str; 13] = [
    "name",
    "system",
    "builder",
    "outputs",
    "args",
    "__structuredAttrs",
    "__ignoreNulls",
    "__contentAddressed",
    "__impure",
    "outputHash",
    "outputHashAlgo",
    "outputHashMode",
    "requiredSystemFeatures",
];

/// What a derivation that names an environment needs.
struct Entered {
    tree_key: String,
    tree_drv: StorePath,
    tree_path: String,
    busybox_drv: StorePath,
    busybox_path: String,
    enter_script: StorePath,
}

/// Where the path input `path` (as written in a derivation file) leads: the file or folder
/// it names once every symlink on the way is followed, which must be inside the project
/// root and must not hold the project's own metadata. A symlink *inside* an imported tree is
/// kept as a symlink (as Nix does) and never followed. The error is a message and a hint.
pub fn confine_to_project(root: &Path, path: &str) -> Result<std::path::PathBuf, (String, String)> {
    let relative_hint = || {
        format!(
            "path inputs are files of the project, relative to its root `{}`",
            root.display()
        )
    };
    if Path::new(path).is_absolute() {
        return Err((
            format!("`{path}` is an absolute path"),
            relative_hint() + "; copy the file into the project (or fetch it with a hash)",
        ));
    }
    let full = root.join(path);
    if std::fs::symlink_metadata(&full).is_err() {
        return Err((format!("`{path}` does not exist"), relative_hint()));
    }
    let root = std::fs::canonicalize(root).map_err(|e| {
        (
            format!("cannot resolve the project root `{}`: {e}", root.display()),
            relative_hint(),
        )
    })?;
    let resolved = std::fs::canonicalize(&full).map_err(|e| {
        (
            format!("cannot resolve `{path}`: {e} (a dangling symlink?)"),
            relative_hint(),
        )
    })?;
    if !resolved.starts_with(&root) {
        return Err((
            format!(
                "`{path}` leads to `{}`, outside the project",
                resolved.display()
            ),
            relative_hint() + "; a path input may not leave it (through `..` or a symlink)",
        ));
    }
    // The project's own metadata never goes into the store: the store root (importing it
    // would copy the store into itself), Git's database, Cargo's build tree.
    let held: Vec<&str> =
        [".git", "store", "target", "derivations"]
            .into_iter()
            .filter(|entry| resolved == root && root.join(entry).exists())
            .chain([".git"].into_iter().filter(|entry| {
                resolved != root && resolved.is_dir() && resolved.join(entry).exists()
            }))
            .collect();
    if !held.is_empty() {
        return Err((
            format!(
                "`{path}` holds {}, which ksbuild never imports",
                held.iter()
                    .map(|e| format!("`{e}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "import the folders the build needs (`fragments`, `tools/…`), not the project root or a repository".into(),
        ));
    }
    Ok(resolved)
}

/// Imports a repository file or folder (absolute path, store name) as a source path.
pub type Import<'a> = dyn FnMut(&Path, &str) -> Result<StorePath, String> + 'a;

struct Lowerer<'a, 'b> {
    project: &'a Project,
    store_dir: &'a StoreDir,
    import: &'a mut Import<'b>,
    out: Lowered,
    modulo: BTreeMap<StorePath, Hash>,
    /// [`confine_to_project`] of each path input as written: a graph of thousands of
    /// derivations names the same few tools again and again.
    confined: std::collections::HashMap<String, Result<std::path::PathBuf, (String, String)>>,
    /// The locked `.deb`s of each environment lowered, in the lock's order: package name
    /// and download key (what a `{ debs = … }` input gives).
    env_debs: BTreeMap<String, Vec<(String, String)>>,
}

/// Lowers `roots` and everything they depend on.
pub fn lower(
    project: &Project,
    store_dir: &StoreDir,
    roots: &[String],
    import: &mut Import<'_>,
) -> Result<Lowered, ModelError> {
    let order = topological_order(project, roots)?;
    let mut l = Lowerer {
        project,
        store_dir,
        import,
        out: Lowered::default(),
        modulo: BTreeMap::new(),
        confined: Default::default(),
        env_debs: BTreeMap::new(),
    };
    for name in order {
        let target = project.target(&name)?;
        l.target(target)?;
    }
    l.out.path_inputs = l
        .confined
        .into_iter()
        .filter_map(|(path, full)| Some((path, full.ok()?)))
        .collect();
    Ok(l.out)
}

/// A download declared without `hash` (see [`super::pins`]).
#[derive(Debug, Clone)]
pub struct Unpinned {
    /// Its node key: the target (a `[fetch]` file) or `target.input`.
    pub key: String,
    /// The URL as written.
    pub url: String,
    /// How it is stored ([`super::pins::fetch_mode`]).
    pub mode: &'static str,
    /// Its hash in `derivations/pins.lock`, if pinned.
    pub pinned: Option<String>,
}

/// Every download declared without a hash among `roots` and what they depend on, pinned
/// or not, in dependency order.
pub fn unpinned(project: &Project, roots: &[String]) -> Result<Vec<Unpinned>, ModelError> {
    let mut out = Vec::new();
    let mut add = |key: String, spec: &FetchSpec| {
        if spec.hash.is_none() {
            let mode = super::pins::fetch_mode(spec);
            let url = spec.url.get_ref().clone();
            let pinned = project.pins.get(&url, mode).map(str::to_string);
            out.push(Unpinned {
                key,
                url,
                mode,
                pinned,
            });
        }
    };
    for name in topological_order(project, roots)? {
        let target = project.target(&name)?;
        if let Some(fetch) = &target.spec.fetch {
            add(name.clone(), fetch.get_ref());
        }
        for (input, spec) in &target.spec.inputs {
            if let InputSpec::Fetch(fetch) = spec.get_ref() {
                add(format!("{name}.{input}"), fetch);
            }
        }
    }
    Ok(out)
}

/// Depth-first order of the targets reachable from `roots`; reports unknown inputs and cycles.
fn topological_order(project: &Project, roots: &[String]) -> Result<Vec<String>, ModelError> {
    #[derive(PartialEq)]
    enum Mark {
        Active,
        Done,
    }
    let mut marks: BTreeMap<String, Mark> = BTreeMap::new();
    let mut order = Vec::new();
    for root in roots {
        project.target(root)?;
        // Iterative DFS keeping the path for cycle reports.
        let mut stack: Vec<(String, Vec<String>)> = vec![(root.clone(), Vec::new())];
        let mut path: Vec<String> = Vec::new();
        while let Some((name, pending)) = stack.pop() {
            if pending.is_empty() && !marks.contains_key(&name) {
                marks.insert(name.clone(), Mark::Active);
                path.push(name.clone());
                let target = project.target(&name)?;
                let mut deps = Vec::new();
                for (input, spec) in &target.spec.inputs {
                    if spec.get_ref().names_environment() {
                        deps.push(ENVIRONMENT_BUSYBOX.to_string());
                    }
                    if let InputSpec::Derivation { target: dep, .. } = spec.get_ref() {
                        if !project.targets.contains_key(dep) {
                            return Err(target.source.error(
                                spec.span(),
                                format!("input `{input}` of `{name}` names the unknown derivation `{dep}`"),
                                "no such file in derivations/",
                                did_you_mean(dep, project.targets.keys()),
                            ));
                        }
                        deps.push(dep.clone());
                    }
                }
                let env_span = target
                    .spec
                    .environment
                    .as_ref()
                    .map(|e| e.span())
                    .or_else(|| {
                        target
                            .spec
                            .inputs
                            .values()
                            .find(|i| i.get_ref().names_environment())
                            .map(|i| i.span())
                    });
                if let Some(env_span) = env_span {
                    if !project.targets.contains_key(ENVIRONMENT_BUSYBOX) {
                        return Err(target.source.error(
                            env_span,
                            format!("`{name}` runs in an environment, which needs a `{ENVIRONMENT_BUSYBOX}` derivation"),
                            "this environment",
                            Some(format!("add `derivations/{ENVIRONMENT_BUSYBOX}.toml` (Debian's busybox-static, a `[fetch]` with `unpack = \"deb\"`)")),
                        ));
                    }
                    deps.push(ENVIRONMENT_BUSYBOX.to_string());
                }
                deps.sort();
                deps.dedup();
                stack.push((name, deps));
                continue;
            }
            if marks.get(&name) == Some(&Mark::Done) {
                continue;
            }
            let mut pending = pending;
            match pending.pop() {
                Some(dep) => {
                    stack.push((name, pending));
                    match marks.get(&dep) {
                        Some(Mark::Done) => {}
                        Some(Mark::Active) => {
                            let start = path.iter().position(|p| p == &dep).unwrap_or(0);
                            let mut cycle: Vec<&str> =
                                path[start..].iter().map(String::as_str).collect();
                            cycle.push(&dep);
                            let lines = cycle
                                .windows(2)
                                .filter_map(|pair| dependency_line(project, pair[0], pair[1]))
                                .collect();
                            return Err(ModelError::Cycle {
                                cycle: cycle.join(" -> "),
                                lines,
                            });
                        }
                        None => stack.push((dep, Vec::new())),
                    }
                }
                None => {
                    marks.insert(name.clone(), Mark::Done);
                    path.pop();
                    order.push(name);
                }
            }
        }
    }
    Ok(order)
}

/// Where `target` declares that it needs `dep`: `path:line: the line`, for cycle reports.
fn dependency_line(project: &Project, target: &str, dep: &str) -> Option<String> {
    let t = project.targets.get(target)?;
    let environment = dep == ENVIRONMENT_BUSYBOX;
    let span = t
        .spec
        .inputs
        .values()
        .find(|i| match i.get_ref() {
            InputSpec::Derivation { target, .. } => target == dep,
            InputSpec::Environment { .. } | InputSpec::Debs { .. } => environment,
            _ => false,
        })
        .map(|i| i.span())
        .or_else(|| {
            t.spec
                .environment
                .as_ref()
                .filter(|_| environment)
                .map(|e| e.span())
        })?;
    let file = &t.source;
    Some(format!(
        "{}: {}",
        file.location(span.start),
        file.quote_line(span.start)
    ))
}

/// Parses a download hash: SRI, `algo:digest`, or a bare hex/nix32 digest whose length
/// says the algorithm.
pub fn parse_fetch_hash(text: &str) -> Result<Hash, HashError> {
    match Hash::parse(text) {
        Err(HashError::MissingAlgo(_)) => {
            let algo = HashAlgo::ALL
                .into_iter()
                .find(|a| {
                    text.len() == a.digest_len() * 2
                        || text.len() == crate::compat::nixbase32::encoded_len(a.digest_len())
                })
                .ok_or_else(|| HashError::MissingAlgo(text.to_string()))?;
            Hash::parse_with(text, Some(algo))
        }
        other => other,
    }
}

/// The span of `${name}` inside a string value that starts at `value_span.start` (its quote).
fn inner_span(value: &Spanned<String>, at: usize, len: usize) -> std::ops::Range<usize> {
    let start = value.span().start + 1 + at;
    start..start + len
}

impl Lowerer<'_, '_> {
    fn finish(
        &mut self,
        key: String,
        mut drv: Derivation,
        fetch: Option<Fetch>,
        deps: BTreeSet<String>,
        inputs: BTreeMap<String, String>,
        file: &SourceFile,
    ) -> Result<(), ModelError> {
        let lowering_error = |e: LowerError| {
            file.error(
                0..0,
                format!("cannot lower `{key}`: {e}"),
                "in this file",
                None,
            )
        };
        let modulo = &self.modulo;
        let mut input_hash = |p: &StorePath| -> Result<Hash, LowerError> {
            modulo
                .get(p)
                .cloned()
                .ok_or_else(|| LowerError::Unlowered(p.clone()))
        };
        drv.fill_output_paths(self.store_dir, &mut input_hash)
            .map_err(lowering_error)?;
        let drv_path = drv
            .drv_path(self.store_dir)
            .map_err(|e| lowering_error(e.into()))?;
        let modulo = drv
            .hash_derivation_modulo(self.store_dir, &mut input_hash)
            .map_err(lowering_error)?;
        self.modulo.insert(drv_path.clone(), modulo);
        // A node's dependencies are its input derivations (the writing of `.drv` files
        // relies on it: a valid `.drv` answers for its dependencies').
        for dep in &deps {
            let named = (self.out.nodes.get(dep))
                .is_some_and(|d| drv.input_derivations.contains_key(&d.drv_path));
            if !named {
                return Err(file.error(
                    0..0,
                    format!("cannot lower `{key}`: it depends on `{dep}`, which its derivation does not name (a bug in ksbuild)"),
                    "in this file",
                    None,
                ));
            }
        }
        self.out.order.push(key.clone());
        self.out.nodes.insert(
            key.clone(),
            Node {
                key,
                drv: drv.into(),
                drv_path,
                fetch,
                deps,
                inputs,
            },
        );
        Ok(())
    }

    /// Lowers a download; `environment` names the environment whose lock gave its hash.
    fn fetch_node(
        &mut self,
        key: String,
        default_name: Option<&str>,
        spec: &FetchSpec,
        file: &SourceFile,
        environment: Option<&str>,
    ) -> Result<(), ModelError> {
        let url = spec.url.get_ref();
        let scheme_ok = ["https://", "http://", "file://"]
            .iter()
            .any(|s| url.starts_with(s))
            || url.strip_prefix("mirror://").is_some_and(|rest| {
                rest.split_once('/')
                    .is_some_and(|(m, p)| !m.is_empty() && !p.is_empty())
            });
        if !scheme_ok {
            return Err(file.error(
                spec.url.span(),
                format!("unsupported URL `{url}`"),
                "this URL",
                Some("use `https://`, `http://`, `file://` or `mirror://NAME/path`".into()),
            ));
        }
        let mode = super::pins::fetch_mode(spec);
        let pins = &self.project.pins;
        // The hash, the file that writes it (to point at when it is malformed), and where
        // it comes from.
        let (hash_text, hash_file, hash_from) = match (&spec.hash, pins.find(url, mode)) {
            (Some(h), _) => (
                h.clone(),
                file,
                match environment {
                    Some(e) => HashFrom::Locked {
                        environment: e.to_string(),
                    },
                    None => HashFrom::Declared {
                        at: file.location(h.span().start),
                    },
                },
            ),
            (None, Some(pin)) => match (&pins.source, &pin.hash_span) {
                (Some(lock), Some(span)) => (
                    Spanned::new(span.clone(), pin.hash.clone()),
                    lock,
                    HashFrom::Pinned {
                        at: lock.location(span.start),
                        key: key.clone(),
                    },
                ),
                // Pinned in memory only (not read from the file).
                _ => (
                    Spanned::new(spec.url.span(), pin.hash.clone()),
                    file,
                    HashFrom::Pinned {
                        at: super::pins::pins_path(Path::new("")).display().to_string(),
                        key: key.clone(),
                    },
                ),
            },
            (None, None) => {
                return Err(file.error(
                    spec.url.span(),
                    format!("the download `{url}` (`{key}`) has no hash and is not pinned yet"),
                    "declared without `hash`",
                    Some(format!(
                        "`ksbuild realise` pins it on first fetch; where it cannot be downloaded, provide the file with `ksbuild pin {key} FILE`"
                    )),
                ))
            }
        };
        let hash = parse_fetch_hash(hash_text.get_ref()).map_err(|e| match &hash_from {
            HashFrom::Pinned { .. } => hash_file.error(
                hash_text.span(),
                format!("malformed hash pinned for `{key}` ({url}): {e}"),
                "this hash",
                Some(format!(
                    "`{}` is written by `ksbuild pin`, not by hand: pin it again with `ksbuild pin {key}` (or `ksbuild pin {key} FILE`)",
                    hash_file.path.display()
                )),
            ),
            _ => hash_file.error(
                hash_text.span(),
                format!("malformed hash: {e}"),
                "this hash",
                Some("write it in SRI form (`sha256-<base64>`), or as nix32 or hex (optionally prefixed `sha256:`)".into()),
            ),
        })?;
        let declared_at = file.location(spec.url.span().start);
        let unpack = match spec
            .unpack
            .as_ref()
            .map(|u| (u.get_ref().as_str(), u.span()))
        {
            None => None,
            Some(("deb", _)) => Some(Unpack::Deb),
            Some(("tar", _)) => Some(Unpack::Tar),
            Some((other, span)) => {
                return Err(file.error(
                    span,
                    format!("unknown unpack format `{other}`"),
                    "here",
                    Some("use `deb` or `tar`".into()),
                ))
            }
        };
        if spec.executable && (spec.recursive || unpack.is_some()) {
            return Err(file.error(
                spec.url.span(),
                "`executable` applies only to flat downloads",
                "this download",
                None,
            ));
        }
        let method = if spec.recursive || unpack.is_some() {
            FileIngestionMethod::Recursive
        } else {
            FileIngestionMethod::Flat
        };
        let base = url
            .rsplit('/')
            .next()
            .unwrap_or(url)
            .split(['?', '#'])
            .next()
            .unwrap_or("");
        let derived = match unpack {
            Some(Unpack::Deb) => base.strip_suffix(".deb").unwrap_or(base).to_string(),
            Some(Unpack::Tar) => {
                let mut b = base.to_string();
                for ext in [".tar.gz", ".tgz", ".tar.xz", ".tar.zst", ".tar.bz2", ".tar"] {
                    if let Some(s) = base.strip_suffix(ext) {
                        b = s.to_string();
                        break;
                    }
                }
                b
            }
            None => base.to_string(),
        };
        let (name, name_span) = match (&spec.name, default_name) {
            (Some(n), _) => (n.get_ref().clone(), n.span()),
            (None, Some(d)) => (d.to_string(), spec.url.span()),
            (None, None) => (derived, spec.url.span()),
        };
        validate_name(&name).map_err(|e| {
            file.error(
                name_span,
                format!("`{name}` cannot name a store path: {e}"),
                "store name taken from here",
                Some("set `name = \"…\"`".into()),
            )
        })?;
        let mut env = BTreeMap::new();
        env.insert("builder".into(), "builtin:fetchurl".into());
        env.insert("name".into(), name.clone());
        env.insert("out".into(), String::new());
        env.insert("outputHash".into(), hash_text.get_ref().clone());
        env.insert("outputHashAlgo".into(), hash.algo().name().into());
        env.insert(
            "outputHashMode".into(),
            if method == FileIngestionMethod::Recursive {
                "recursive"
            } else {
                "flat"
            }
            .into(),
        );
        env.insert("system".into(), "builtin".into());
        env.insert("url".into(), url.clone());
        if spec.executable {
            env.insert("executable".into(), "1".into());
        }
        if let Some(u) = unpack {
            env.insert(
                "ksbuildUnpack".into(),
                if u == Unpack::Deb { "deb" } else { "tar" }.into(),
            );
        }
        let fixed = FixedOutputHash { method, hash };
        let drv = Derivation {
            outputs: BTreeMap::from([(
                "out".to_string(),
                Output {
                    path: None,
                    fixed: Some(fixed.clone()),
                },
            )]),
            input_derivations: BTreeMap::new(),
            input_sources: BTreeSet::new(),
            system: "builtin".into(),
            builder: "builtin:fetchurl".into(),
            args: Vec::new(),
            env,
        };
        let fetch = Fetch {
            url: url.clone(),
            hash: fixed,
            unpack,
            executable: spec.executable,
            declared_at,
            hash_from,
            size: None,
        };
        self.finish(
            key,
            drv,
            Some(fetch),
            BTreeSet::new(),
            BTreeMap::new(),
            file,
        )
    }

    /// Lowers environment `name` (once): a download per locked `.deb` and the derivation
    /// that unpacks them into one tree with the static busybox.
    fn environment(
        &mut self,
        name: &Spanned<String>,
        file: &SourceFile,
    ) -> Result<Entered, ModelError> {
        let env_name = name.get_ref();
        let tree_key = format!("environment-{env_name}");
        let busybox = self.out.nodes.get(ENVIRONMENT_BUSYBOX).ok_or_else(|| {
            file.error(
                name.span(),
                format!("`{ENVIRONMENT_BUSYBOX}` was not lowered first"),
                "here",
                None,
            )
        })?;
        let busybox_path = busybox
            .drv
            .outputs
            .get("out")
            .and_then(|o| o.path.clone())
            .ok_or_else(|| {
                file.error(
                    name.span(),
                    format!("`{ENVIRONMENT_BUSYBOX}` has no `out` output"),
                    "here",
                    None,
                )
            })?;
        let busybox_drv = busybox.drv_path.clone();
        let busybox_path = self.store_dir.display(&busybox_path);
        let enter_script = self.text_file(ENTER_SCRIPT_NAME, ENTER_SCRIPT);
        // Each environment is lowered once; later users share its tree.
        if !self.out.nodes.contains_key(&tree_key) {
            let root = self.project.root.clone();
            let declared = crate::model::sandbox::environment_path(&root, env_name);
            if !declared.exists() {
                let known = crate::model::sandbox::environment_names(&root);
                return Err(file.error(
                    name.span(),
                    format!("unknown environment `{env_name}`"),
                    "no such file in sandboxes/",
                    did_you_mean(env_name, &known).or(Some(format!(
                        "environments are `sandboxes/NAME.toml`: {}",
                        known.join(", ")
                    ))),
                ));
            }
            let env = crate::model::sandbox::load_environment(&root, env_name)?;
            let lock_file = crate::model::sandbox::lock_path(&root, env_name);
            let lock = crate::model::sandbox::LockFile::load(&lock_file).map_err(|_| {
                file.error(
                    name.span(),
                    format!(
                        "environment `{env_name}` is not locked (`{}` is missing or unreadable)",
                        lock_file.display()
                    ),
                    "this environment",
                    Some(format!("run `ksbuild lock {env_name}`")),
                )
            })?;
            let mut deb_paths = Vec::new();
            let mut deb_keys = BTreeSet::new();
            let mut locked = Vec::new();
            let mut input_derivations: BTreeMap<StorePath, BTreeSet<String>> = BTreeMap::new();
            for deb in &lock.deb {
                let key = format!("{tree_key}.{}-{}", deb.name, deb.architecture);
                let base = deb.path.rsplit('/').next().unwrap_or(&deb.path);
                let store_name: String = base
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || "+-._?=".contains(c) {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect();
                let spec = FetchSpec {
                    url: Spanned::new(name.span(), format!("mirror://{}/{}", deb.mirror, deb.path)),
                    hash: Some(Spanned::new(name.span(), format!("sha256:{}", deb.sha256))),
                    name: Some(Spanned::new(name.span(), store_name)),
                    recursive: false,
                    unpack: None,
                    executable: false,
                };
                self.fetch_node(key.clone(), None, &spec, file, Some(env_name))?;
                if let Some(f) = self.out.nodes.get_mut(&key).and_then(|n| n.fetch.as_mut()) {
                    f.size = Some(deb.size);
                }
                let node = &self.out.nodes[&key];
                let path = node.drv.outputs["out"].path.clone().ok_or_else(|| {
                    file.error(name.span(), "download without a path", "here", None)
                })?;
                deb_paths.push(self.store_dir.display(&path));
                input_derivations
                    .entry(node.drv_path.clone())
                    .or_default()
                    .insert("out".into());
                locked.push((deb.name.clone(), key.clone()));
                deb_keys.insert(key);
            }
            self.env_debs.insert(env_name.clone(), locked);
            input_derivations
                .entry(busybox_drv.clone())
                .or_default()
                .insert("out".into());
            let unpack_script = self.text_file("environment-unpack.sh", UNPACK_SCRIPT);
            let fixups: Vec<String> = env.fixups.iter().map(|(p, t)| format!("{p} {t}")).collect();
            let builder = format!("{busybox_path}/bin/busybox");
            let mut drv_env = BTreeMap::new();
            if let Some((_, s)) = self.project.settings.as_ref() {
                for (k, v) in &s.env {
                    drv_env.insert(k.clone(), v.get_ref().clone());
                }
            }
            drv_env.insert("builder".into(), builder.clone());
            drv_env.insert("debs".into(), deb_paths.join(" "));
            drv_env.insert("fixups".into(), fixups.join("\n"));
            drv_env.insert("name".into(), tree_key.clone());
            drv_env.insert("out".into(), String::new());
            // The system of a derivation is where its builder runs, not what its output
            // holds: the builder is the static busybox of `busybox-static`, the project's
            // bootstrap builder, which runs where every build of the project runs — the
            // project's `system` (as for the derivations that enter this tree with the same
            // busybox). The packages' `architecture` is only data here: an arm64 tree is
            // unpacked on the build machine like any other. (The busybox's own architecture
            // is not known when lowering: `busybox-static` is a download of any URL, and an
            // `_amd64.deb` file name is a convention, not a declaration.)
            let system = self
                .project
                .settings
                .as_ref()
                .and_then(|(_, s)| s.system.as_ref())
                .ok_or_else(|| {
                    file.error(
                        name.span(),
                        format!(
                            "environment `{env_name}` needs the project's `system`, where its builder (the static busybox of `{ENVIRONMENT_BUSYBOX}`) runs"
                        ),
                        "this environment",
                        Some("add `system = \"x86_64-linux\"` to `derivations/_project.toml`".into()),
                    )
                })?;
            drv_env.insert("system".into(), system.get_ref().clone());
            let mut deps = deb_keys;
            deps.insert(ENVIRONMENT_BUSYBOX.to_string());
            let drv = Derivation {
                outputs: BTreeMap::from([("out".to_string(), Output::default())]),
                input_derivations,
                input_sources: BTreeSet::from([unpack_script.clone()]),
                system: drv_env["system"].clone(),
                builder,
                args: vec![
                    "sh".into(),
                    "-e".into(),
                    self.store_dir.display(&unpack_script),
                ],
                env: drv_env,
            };
            let inputs = BTreeMap::from([("busybox".to_string(), busybox_path.clone())]);
            self.finish(tree_key.clone(), drv, None, deps, inputs, file)?;
        }
        let tree = &self.out.nodes[&tree_key];
        let tree_path = tree.drv.outputs["out"]
            .path
            .as_ref()
            .map(|p| self.store_dir.display(p))
            .unwrap_or_default();
        Ok(Entered {
            tree_key,
            tree_drv: tree.drv_path.clone(),
            tree_path,
            busybox_drv,
            busybox_path,
            enter_script,
        })
    }

    /// A text file in the store (as Nix's `builtins.toFile`), recorded for the caller to add.
    fn text_file(&mut self, name: &str, contents: &str) -> StorePath {
        let path = self
            .store_dir
            .make_text_path(name, &Hash::sha256(contents.as_bytes()), &BTreeSet::new())
            .unwrap_or_else(|_| unreachable!("constant, valid store name"));
        self.out.texts.insert(path.clone(), contents.to_string());
        path
    }

    fn target(&mut self, target: &Target) -> Result<(), ModelError> {
        let spec = &target.spec;
        let file = &target.source;
        if let Some(fetch) = &spec.fetch {
            if spec.builder.is_some()
                || !spec.args.is_empty()
                || !spec.inputs.is_empty()
                || !spec.env.is_empty()
                || spec.outputs.is_some()
                || spec.required_system_features.is_some()
            {
                return Err(file.error(
                    fetch.span(),
                    format!("`{}` has both `[fetch]` and build keys", target.name),
                    "a download",
                    Some("a derivation file is either a download (`[fetch]`) or a build (`builder`, `args`, `inputs`…)".into()),
                ));
            }
            let name = spec
                .name
                .as_ref()
                .map(|n| n.get_ref().as_str())
                .or(Some(target.name.as_str()));
            return self.fetch_node(target.name.clone(), name, fetch.get_ref(), file, None);
        }
        let Some(builder) = &spec.builder else {
            return Err(file.error(
                0..0,
                format!("`{}` has neither `builder` nor `[fetch]`", target.name),
                "in this file",
                Some(
                    "add `builder = \"${busybox}/bin/busybox\"` (and inputs), or a `[fetch]` table"
                        .into(),
                ),
            ));
        };
        let name = spec
            .name
            .as_ref()
            .map(|n| (n.get_ref().clone(), n.span()))
            .unwrap_or((target.name.clone(), 0..0));
        validate_name(&name.0).map_err(|e| {
            file.error(
                name.1.clone(),
                format!("`{}` cannot name a store path: {e}", name.0),
                "this name",
                Some("use letters, digits and `+-._?=`".into()),
            )
        })?;
        let settings = self.project.settings.as_ref();
        let system =
            match (&spec.system, settings.and_then(|(_, s)| s.system.as_ref())) {
                (Some(s), _) | (None, Some(s)) => s.get_ref().clone(),
                (None, None) => return Err(file.error(
                    0..0,
                    format!("`{}` does not say its `system`", target.name),
                    "in this file",
                    Some(
                        "add `system = \"x86_64-linux\"` here or to `derivations/_project.toml`"
                            .into(),
                    ),
                )),
            };
        // Outputs.
        let outputs: Vec<(String, std::ops::Range<usize>)> = match &spec.outputs {
            None => vec![("out".to_string(), 0..0)],
            Some(list) => list
                .get_ref()
                .iter()
                .map(|o| (o.get_ref().clone(), o.span()))
                .collect(),
        };
        let mut seen = BTreeSet::new();
        for (o, span) in &outputs {
            let valid = !o.is_empty()
                && o.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-._?=".contains(c))
                && o != "drv";
            if !valid || !seen.insert(o.clone()) {
                return Err(file.error(
                    span.clone(),
                    format!("invalid or repeated output name `{o}`"),
                    "this output",
                    Some("output names are distinct words like `out`, `dev`, `lib`".into()),
                ));
            }
        }
        if outputs.is_empty() {
            return Err(file.error(
                spec.outputs.as_ref().map(|o| o.span()).unwrap_or(0..0),
                "a derivation needs at least one output",
                "empty",
                None,
            ));
        }
        // Inputs: their values for `${…}` and what they add to the derivation.
        let mut values: BTreeMap<String, String> = BTreeMap::new();
        let mut input_derivations: BTreeMap<StorePath, BTreeSet<String>> = BTreeMap::new();
        let mut input_sources = BTreeSet::new();
        let mut deps = BTreeSet::new();
        for (input, spanned) in &spec.inputs {
            let span = spanned.span();
            match spanned.get_ref() {
                InputSpec::Derivation {
                    target: dep,
                    output,
                } => {
                    // Lowered first by the dependency order, which reports cycles.
                    let node = self.out.nodes.get(dep).ok_or_else(|| {
                        file.error(
                            span.clone(),
                            format!(
                                "input `{input}`: `{dep}` was not lowered before `{}`",
                                target.name
                            ),
                            "this input",
                            None,
                        )
                    })?;
                    let output = output.clone().unwrap_or_else(|| "out".to_string());
                    let Some(path) = node.drv.outputs.get(&output).and_then(|o| o.path.clone())
                    else {
                        let names: Vec<String> = node.drv.outputs.keys().cloned().collect();
                        return Err(file.error(
                            span,
                            format!("`{dep}` has no output `{output}`"),
                            "this input",
                            did_you_mean(&output, &names)
                                .or(Some(format!("its outputs are: {}", names.join(", ")))),
                        ));
                    };
                    values.insert(input.clone(), self.store_dir.display(&path));
                    input_derivations
                        .entry(node.drv_path.clone())
                        .or_default()
                        .insert(output);
                    deps.insert(dep.clone());
                }
                InputSpec::Path { path, name } => {
                    let root = &self.project.root;
                    let full = self
                        .confined
                        .entry(path.clone())
                        .or_insert_with(|| confine_to_project(root, path))
                        .clone()
                        .map_err(|(message, help)| {
                            file.error(
                                span.clone(),
                                format!("input `{input}`: {message}"),
                                "this path",
                                Some(help),
                            )
                        })?;
                    // Named after the path as written (`tools/busybox`), not where a
                    // symlink on the way leads.
                    let store_name = match name {
                        Some(n) => n.clone(),
                        None => Path::new(path)
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    };
                    validate_name(&store_name).map_err(|e| {
                        file.error(
                            span.clone(),
                            format!(
                                "input `{input}`: `{store_name}` cannot name a store path: {e}"
                            ),
                            "this input",
                            Some("set `name = \"…\"` in the input table".into()),
                        )
                    })?;
                    let sp = (self.import)(&full, &store_name).map_err(|e| {
                        file.error(
                            span.clone(),
                            format!("cannot import `{path}`: {e}"),
                            "this input",
                            None,
                        )
                    })?;
                    values.insert(input.clone(), self.store_dir.display(&sp));
                    self.out.sources.insert(sp.clone());
                    input_sources.insert(sp);
                }
                InputSpec::Environment { name: env_name } => {
                    let entered =
                        self.environment(&Spanned::new(span.clone(), env_name.clone()), file)?;
                    values.insert(input.clone(), entered.tree_path.clone());
                    input_derivations
                        .entry(entered.tree_drv.clone())
                        .or_default()
                        .insert("out".into());
                    deps.insert(entered.tree_key.clone());
                }
                InputSpec::Debs {
                    environment: env_name,
                    packages,
                } => {
                    self.environment(&Spanned::new(span.clone(), env_name.clone()), file)?;
                    let locked = &self.env_debs[env_name];
                    if let Some(missing) = packages
                        .iter()
                        .flatten()
                        .find(|w| !locked.iter().any(|(name, _)| name == *w))
                    {
                        return Err(file.error(
                            span.clone(),
                            format!(
                                "input `{input}`: environment `{env_name}` has no locked package `{missing}`"
                            ),
                            "this input",
                            Some(format!(
                                "add it to `sandboxes/{env_name}.toml` and run `ksbuild lock {env_name}`"
                            )),
                        ));
                    }
                    let mut paths = Vec::new();
                    for (name, key) in locked {
                        if packages.as_ref().is_some_and(|w| !w.contains(name)) {
                            continue;
                        }
                        let node = &self.out.nodes[key];
                        let path = node.drv.outputs["out"].path.clone().ok_or_else(|| {
                            file.error(span.clone(), "download without a path", "here", None)
                        })?;
                        paths.push(self.store_dir.display(&path));
                        input_derivations
                            .entry(node.drv_path.clone())
                            .or_default()
                            .insert("out".into());
                        deps.insert(key.clone());
                    }
                    values.insert(input.clone(), paths.join(" "));
                }
                InputSpec::Fetch(fetch) => {
                    let key = format!("{}.{input}", target.name);
                    let mut fetch = (**fetch).clone();
                    if fetch.name.as_ref().is_some_and(|n| n.span() == (0..0)) {
                        // The table's name has no span of its own; point at the input.
                        fetch.name = fetch
                            .name
                            .map(|n| Spanned::new(span.clone(), n.into_inner()));
                    }
                    self.fetch_node(key.clone(), None, &fetch, file, None)?;
                    let node = &self.out.nodes[&key];
                    let path = node.drv.outputs["out"].path.clone().ok_or_else(|| {
                        file.error(
                            span.clone(),
                            "download without an output path",
                            "here",
                            None,
                        )
                    })?;
                    values.insert(input.clone(), self.store_dir.display(&path));
                    input_derivations
                        .entry(node.drv_path.clone())
                        .or_default()
                        .insert("out".into());
                    deps.insert(key);
                }
            }
        }
        let output_names: Vec<String> = outputs.iter().map(|(o, _)| o.clone()).collect();
        let subst = |value: &Spanned<String>| -> Result<String, ModelError> {
            substitute(value, &values, &output_names, file)
        };
        let builder_s = subst(builder)?;
        let args = spec
            .args
            .iter()
            .map(&subst)
            .collect::<Result<Vec<_>, _>>()?;
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        if let Some((project_file, s)) = settings {
            for (k, v) in &s.env {
                if RESERVED_ENV.contains(&k.as_str()) {
                    return Err(project_file.error(
                        v.span(),
                        format!("`env.{k}` is set by ksbuild itself"),
                        "reserved",
                        Some(format!(
                            "`{k}` is derived from each derivation's keys; remove it from `[env]`"
                        )),
                    ));
                }
                env.insert(k.clone(), v.get_ref().clone());
            }
        }
        let reserved: BTreeSet<&str> = RESERVED_ENV
            .into_iter()
            .chain(output_names.iter().map(String::as_str))
            .collect();
        for (k, v) in &spec.env {
            if reserved.contains(k.as_str()) {
                return Err(file.error(
                    v.span(),
                    format!("`env.{k}` is set by ksbuild itself"),
                    "reserved",
                    Some(format!(
                        "`{k}` is derived from the derivation's keys; remove it from `env`"
                    )),
                ));
            }
            env.insert(k.clone(), subst(v)?);
        }
        let (builder_s, args) = match &spec.environment {
            None => (builder_s, args),
            Some(env_name) => {
                let entered = self.environment(env_name, file)?;
                for (drv, out) in [(&entered.busybox_drv, "out"), (&entered.tree_drv, "out")] {
                    input_derivations
                        .entry(drv.clone())
                        .or_default()
                        .insert(out.to_string());
                }
                input_sources.insert(entered.enter_script.clone());
                deps.insert(ENVIRONMENT_BUSYBOX.to_string());
                deps.insert(entered.tree_key.clone());
                let mut wrapped = vec![
                    "sh".to_string(),
                    "-e".to_string(),
                    self.store_dir.display(&entered.enter_script),
                    entered.tree_path.clone(),
                    builder_s,
                ];
                wrapped.extend(args);
                (format!("{}/bin/busybox", entered.busybox_path), wrapped)
            }
        };
        env.insert("name".into(), name.0.clone());
        env.insert("system".into(), system.clone());
        env.insert("builder".into(), builder_s.clone());
        for o in &output_names {
            env.insert(o.clone(), String::new());
        }
        if spec.outputs.is_some() {
            env.insert("outputs".into(), output_names.join(" "));
        }
        if let Some(features) = &spec.required_system_features {
            env.insert(
                "requiredSystemFeatures".into(),
                required_system_features(features, file)?,
            );
        }
        let drv = Derivation {
            outputs: output_names
                .iter()
                .map(|o| (o.clone(), Output::default()))
                .collect(),
            input_derivations,
            input_sources,
            system,
            builder: builder_s,
            args,
            env,
        };
        self.finish(target.name.clone(), drv, None, deps, values, file)
    }
}

/// The value of `requiredSystemFeatures` for the features listed: as Nix's `derivation`
/// writes a list attribute without `__structuredAttrs`, the items joined by single spaces
/// (an empty list gives the empty string). Each item must be one word: Nix splits the value
/// on whitespace when it reads it back.
fn required_system_features(
    features: &Spanned<Vec<Spanned<String>>>,
    file: &SourceFile,
) -> Result<String, ModelError> {
    for feature in features.get_ref() {
        let f = feature.get_ref();
        if f.is_empty() || f.chars().any(char::is_whitespace) {
            return Err(file.error(
                feature.span(),
                format!("`{f}` is not one system feature"),
                "this feature",
                Some("features are single words, such as `big-parallel` or `kvm`: list each as its own string".into()),
            ));
        }
    }
    Ok(features
        .get_ref()
        .iter()
        .map(|f| f.get_ref().as_str())
        .collect::<Vec<_>>()
        .join(" "))
}

/// Errors of hash-modulo computation during lowering.
#[derive(Debug, thiserror::Error)]
enum LowerError {
    #[error(transparent)]
    Derivation(#[from] DerivationError),
    #[error("input derivation `{0}` was not lowered first")]
    Unlowered(StorePath),
}

/// Replaces `${input}` with the input's store path; `$${` stands for a literal `${`.
fn substitute(
    value: &Spanned<String>,
    values: &BTreeMap<String, String>,
    outputs: &[String],
    file: &SourceFile,
) -> Result<String, ModelError> {
    let text = value.get_ref();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let bytes = text.as_bytes();
    while i < bytes.len() {
        if text[i..].starts_with("$${") {
            out.push_str("${");
            i += 3;
        } else if text[i..].starts_with("${") {
            let Some(end) = text[i + 2..].find('}') else {
                return Err(file.error(
                    inner_span(value, i, 2),
                    "unterminated `${`",
                    "opened here",
                    Some("write `$${` for a literal `${`".into()),
                ));
            };
            let name = &text[i + 2..i + 2 + end];
            match values.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    let help = if outputs.iter().any(|o| o == name) {
                        Some(format!("`{name}` is an output: use the shell variable `${name}`, or write `$${{{name}}}`"))
                    } else {
                        let names: Vec<String> = values.keys().cloned().collect();
                        did_you_mean(name, &names).or(Some(if names.is_empty() {
                            "this derivation has no `[inputs]`; write `$${` for a literal `${`"
                                .to_string()
                        } else {
                            format!(
                                "inputs are: {}; write `$${{` for a literal `${{`",
                                names.join(", ")
                            )
                        }))
                    };
                    return Err(file.error(
                        inner_span(value, i, end + 3),
                        format!("unknown input `{name}`"),
                        "not an input",
                        help,
                    ));
                }
            }
            i += end + 3;
        } else {
            let c = text[i..].chars().next().unwrap_or('\0');
            out.push(c);
            i += c.len_utf8();
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lowers target `a` of a project of `_project.toml` (x86_64-linux) and `a.toml` =
    /// `text` (plus `more` files); the error's text if it fails.
    fn lower_a(text: &str, more: &[(&str, &str)]) -> Result<Lowered, String> {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("derivations");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("_project.toml"), "system = \"x86_64-linux\"\n").unwrap();
        std::fs::write(dir.join("a.toml"), text).unwrap();
        for (name, text) in more {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let project = Project::load(tmp.path()).map_err(|e| format!("{e:?}"))?;
        let roots: Vec<String> = project.targets.keys().cloned().collect();
        let mut import = |_: &Path, _: &str| -> Result<StorePath, String> { unreachable!() };
        lower(&project, &StoreDir::default(), &roots, &mut import).map_err(|e| format!("{e:?}"))
    }

    #[test]
    fn required_system_features_are_a_space_joined_env_entry_as_nix_writes_a_list() {
        let cases: &[(&str, Option<&str>)] = &[
            ("", None),
            ("required-system-features = []\n", Some("")),
            (
                "required-system-features = [\"big-parallel\"]\n",
                Some("big-parallel"),
            ),
            // In the order written, repeats kept: the words of Nix's list, as they are.
            (
                "required-system-features = [\"kvm\", \"big-parallel\", \"kvm\"]\n",
                Some("kvm big-parallel kvm"),
            ),
        ];
        for (line, expected) in cases {
            let lowered = lower_a(&format!("builder = \"/bin/sh\"\n{line}"), &[]).unwrap();
            let drv = &lowered.nodes["a"].drv;
            assert_eq!(
                drv.env.get("requiredSystemFeatures").map(String::as_str),
                *expected,
                "{line}"
            );
        }
        // A variant replaces the base's features; the base keeps its own.
        let lowered = lower_a(
            "builder = \"/bin/sh\"\nrequired-system-features = [\"big-parallel\"]\n\
             [variants.small]\nrequired-system-features = []\n[variants.same]\nargs = []\n",
            &[],
        )
        .unwrap();
        let features = |key: &str| {
            lowered.nodes[key]
                .drv
                .required_system_features()
                .into_iter()
                .collect::<Vec<_>>()
        };
        assert_eq!(features("a"), ["big-parallel"]);
        assert_eq!(features("a@small"), Vec::<String>::new());
        assert_eq!(features("a@same"), ["big-parallel"]);
        // The feature is part of the derivation: another `.drv` path.
        let plain = lower_a("builder = \"/bin/sh\"\n", &[]).unwrap();
        assert_ne!(plain.nodes["a"].drv_path, lowered.nodes["a"].drv_path);
    }

    #[test]
    fn bad_required_system_features_are_refused_pointing_at_them() {
        for (text, expected) in [
            (
                "builder = \"/bin/sh\"\nrequired-system-features = [\"big parallel\"]\n",
                "`big parallel` is not one system feature",
            ),
            (
                "builder = \"/bin/sh\"\nrequired-system-features = [\"\"]\n",
                "`` is not one system feature",
            ),
            (
                "builder = \"/bin/sh\"\nrequired-system-features = \"kvm\"\n",
                "expected a sequence",
            ),
            (
                "builder = \"/bin/sh\"\n[env]\nrequiredSystemFeatures = \"kvm\"\n",
                "`env.requiredSystemFeatures` is set by ksbuild itself",
            ),
            (
                "required-system-features = [\"kvm\"]\n[fetch]\nurl = \"https://example.org/x\"\nhash = \"sha256-MeBmE3qWJnbon2nRtlOC3pWn732RS4y5VvQepy4PUWs=\"\n",
                "has both `[fetch]` and build keys",
            ),
        ] {
            let e = lower_a(text, &[]).unwrap_err();
            assert!(e.contains(expected), "{text}: {e}");
        }
    }
}
