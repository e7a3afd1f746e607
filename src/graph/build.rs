//! One build of one derivation in the sandbox: assembling the input closure, the build
//! directories and the log, running the builder, and registering the outputs; and which
//! derivations this machine builds ([`Platforms`]: its systems and system features),
//! checked before a realisation fetches anything and again before each builder runs.
//! Does I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{
    output_paths, outputs_valid, BuildFailure, BuildOutcome, Event, Executor, Reporter, Slot,
};
use crate::compat::derivation::Derivation;
use crate::compat::refscan::{Candidates, RefScanner};
use crate::compat::StorePath;
use crate::model::Node;
use crate::sandbox::{self, SandboxSpec};
use crate::store::{self, FileLock, Store, StoreError};
use crate::timing;

/// Settings of every build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// `NIX_BUILD_CORES`.
    pub cores: u32,
    /// Kill a build that runs longer.
    pub timeout: Option<Duration>,
    /// Kill a build that prints nothing for this long.
    pub max_silent_time: Option<Duration>,
    /// At most this many processes (threads included) of one build at once
    /// ([`SandboxSpec::max_processes`]; [`sandbox::DEFAULT_MAX_PROCESSES`] by default).
    pub max_processes: u64,
    /// Keep `/build` of failed builds.
    pub keep_failed: bool,
    /// How many builds run here at once (`-j`, `--max-jobs`). 0: none (Nix's
    /// `max-jobs = 0`): derivations are built by remote builders only, downloads still run
    /// here.
    pub jobs: usize,
    /// The systems and system features this machine builds for.
    pub platforms: Platforms,
}

/// The derivations this machine builds: for Nix's `system` setting (the machine's own) and
/// `extra-platforms` (others it can run programs of, e.g. 32-bit x86 on x86_64, or any
/// system with `binfmt_misc` and QEMU), and requiring only features among its
/// `system-features`. A derivation's `system` is where its builder runs; Nix refuses to
/// build one for a system not listed here, or one requiring a feature the machine lacks
/// (`requiredSystemFeatures`, e.g. `kvm`, `big-parallel`), and so does ksbuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platforms {
    /// This machine's system, e.g. `x86_64-linux`.
    pub system: String,
    /// The other systems it builds for.
    pub extra: BTreeSet<String>,
    /// Its system features (Nix's `system-features`).
    pub features: BTreeSet<String>,
}

/// Nix's default `system-features` (2.8, `Settings::getDefaultSystemFeatures`) but `kvm`:
/// features Nixpkgs uses to route builds that need nothing special of a machine.
pub const DEFAULT_SYSTEM_FEATURES: [&str; 3] = ["nixos-test", "benchmark", "big-parallel"];

/// Nix's default `system-features` on this machine: [`DEFAULT_SYSTEM_FEATURES`], and `kvm`
/// when this user may read and write `/dev/kvm` (as Nix decides, with
/// [access(2)](https://man7.org/linux/man-pages/man2/access.2.html)). Reads the filesystem.
pub fn default_system_features() -> BTreeSet<String> {
    let mut features: BTreeSet<String> = DEFAULT_SYSTEM_FEATURES
        .iter()
        .map(|f| f.to_string())
        .collect();
    let kvm = rustix::fs::access(
        "/dev/kvm",
        rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
    );
    if kvm.is_ok() {
        features.insert("kvm".into());
    }
    features
}

impl Platforms {
    /// The system ksbuild was compiled for, as Nix names it (Nix's `SYSTEM`, also a
    /// compile-time constant), with Nix's default `extra-platforms` and `system-features`
    /// ([`default_system_features`]: reads whether `/dev/kvm` is usable).
    pub fn host() -> Platforms {
        let cpu = match std::env::consts::ARCH {
            "x86" => "i686",
            // Rust does not tell ARMv6 from ARMv7; Debian's armhf (what ksbuild would run
            // on) is ARMv7.
            "arm" => "armv7l",
            "powerpc64" if cfg!(target_endian = "little") => "powerpc64le",
            other => other,
        };
        Platforms::with_default_extra(format!("{cpu}-{}", std::env::consts::OS))
            .with_features(default_system_features())
    }

    /// `system` with Nix's default `extra-platforms`: `i686-linux` on `x86_64-linux` (whose
    /// kernels run 32-bit programs), nothing elsewhere; and [`DEFAULT_SYSTEM_FEATURES`].
    pub fn with_default_extra(system: String) -> Platforms {
        let extra = if system == "x86_64-linux" {
            BTreeSet::from(["i686-linux".to_string()])
        } else {
            BTreeSet::new()
        };
        let features = DEFAULT_SYSTEM_FEATURES
            .iter()
            .map(|f| f.to_string())
            .collect();
        Platforms {
            system,
            extra,
            features,
        }
    }

    /// Replaces the system features (as Nix's `system-features` setting replaces its
    /// default).
    pub fn with_features(mut self, features: impl IntoIterator<Item = String>) -> Platforms {
        self.features = features.into_iter().collect();
        self
    }

    /// Replaces the extra platforms (as Nix's `extra-platforms` setting replaces its
    /// default) by the systems listed in `list`, separated by spaces or commas.
    pub fn with_extra(mut self, list: &str) -> Platforms {
        self.extra = list
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        self
    }

    /// Whether a derivation for `system` can be built here: this machine's system, an
    /// extra platform, or `builtin` (downloads, which ksbuild itself performs).
    pub fn can_build(&self, system: &str) -> bool {
        system == "builtin" || system == self.system || self.extra.contains(system)
    }

    /// The features `drv` requires ([`Derivation::required_system_features`]) that this
    /// machine does not offer.
    pub fn missing_features(&self, drv: &Derivation) -> BTreeSet<String> {
        drv.required_system_features()
            .into_iter()
            .filter(|f| !self.features.contains(f))
            .collect()
    }

    /// Whether `drv` can be built here (Nix's `ParsedDerivation::canBuildLocally`, but
    /// for `max-jobs`, which [`BuildOptions::jobs`] holds): its system is one this machine
    /// builds for, and every feature it requires is one of this machine's.
    pub fn can_build_locally(&self, drv: &Derivation) -> bool {
        self.can_build(&drv.system) && self.missing_features(drv).is_empty()
    }

    /// `` `a`, `b` `` — or `none` — for messages.
    fn feature_list(features: &BTreeSet<String>) -> String {
        if features.is_empty() {
            return "none".into();
        }
        let quoted: Vec<String> = features.iter().map(|f| format!("`{f}`")).collect();
        quoted.join(", ")
    }
}

impl std::fmt::Display for Platforms {
    /// `x86_64-linux (extra platforms: i686-linux)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`", self.system)?;
        if self.extra.is_empty() {
            write!(f, " (no extra platforms)")
        } else {
            let extra: Vec<String> = self.extra.iter().map(|s| format!("`{s}`")).collect();
            write!(f, " (extra platforms: {})", extra.join(", "))
        }
    }
}

/// A derivation that must be built for a system this machine does not build for.
#[derive(Debug, Clone, thiserror::Error)]
#[error("`{target}` is for `{system}` (`{drv}`), but this machine builds for {platforms}")]
pub struct UnsupportedSystem {
    /// The target (node key).
    pub target: String,
    /// Its `.drv` path, as printed.
    pub drv: String,
    /// Its `system`.
    pub system: String,
    /// What this machine builds for.
    pub platforms: Platforms,
}

impl UnsupportedSystem {
    /// What to do about it.
    pub fn hint(&self) -> String {
        let s = &self.system;
        let mut extra: Vec<&str> = self.platforms.extra.iter().map(String::as_str).collect();
        extra.push(s);
        let list = extra.join(",");
        format!(
            "a derivation's `system` is where its builder runs: build `{}` on a `{s}` machine, \
             or, if this one can run `{s}` programs (e.g. QEMU registered with binfmt_misc's \
             `F` flag), list it with `--extra-platforms {list}` or `KSBUILD_EXTRA_PLATFORMS={list}`",
            self.target
        )
    }
}

/// A derivation that requires system features this machine does not offer.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "`{target}` (`{drv}`) requires the system feature(s) {}, which this machine does not offer (its features: {})",
    Platforms::feature_list(.missing),
    Platforms::feature_list(.features)
)]
pub struct MissingFeatures {
    /// The target (node key).
    pub target: String,
    /// Its `.drv` path, as printed.
    pub drv: String,
    /// The features it requires that this machine lacks.
    pub missing: BTreeSet<String>,
    /// This machine's features.
    pub features: BTreeSet<String>,
}

impl MissingFeatures {
    /// What to do about it.
    pub fn hint(&self) -> String {
        let all: Vec<&str> = self
            .features
            .iter()
            .chain(&self.missing)
            .map(String::as_str)
            .collect();
        let all = all.join(" ");
        format!(
            "build `{}` on a machine that has them with `--builders` (a remote builder listing \
             them among its supported features), or, if this machine has them, say so with \
             `--system-features \"{all}\"` (or `KSBUILD_SYSTEM_FEATURES`, or `system-features` \
             in ksbuild's `config.toml` or `nix.conf`)",
            self.target
        )
    }
}

/// Why this machine cannot build a derivation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unbuildable {
    /// It is for another system.
    #[error(transparent)]
    System(#[from] UnsupportedSystem),
    /// It requires features this machine lacks.
    #[error(transparent)]
    Features(#[from] MissingFeatures),
}

impl Unbuildable {
    /// The target it is about.
    pub fn target(&self) -> &str {
        match self {
            Unbuildable::System(e) => &e.target,
            Unbuildable::Features(e) => &e.target,
        }
    }

    /// What to do about it.
    pub fn hint(&self) -> String {
        match self {
            Unbuildable::System(e) => e.hint(),
            Unbuildable::Features(e) => e.hint(),
        }
    }

    /// Why `node` cannot be built with `platforms`; `None` if it can (downloads always can:
    /// ksbuild performs them itself).
    pub fn of(store: &Store, node: &Node, platforms: &Platforms) -> Option<Unbuildable> {
        if node.fetch.is_some() {
            return None;
        }
        if !platforms.can_build(&node.drv.system) {
            return Some(Unbuildable::System(UnsupportedSystem {
                target: node.key.clone(),
                drv: store.print(&node.drv_path),
                system: node.drv.system.clone(),
                platforms: platforms.clone(),
            }));
        }
        let missing = platforms.missing_features(&node.drv);
        if !missing.is_empty() {
            return Some(Unbuildable::Features(MissingFeatures {
                target: node.key.clone(),
                drv: store.print(&node.drv_path),
                missing,
                features: platforms.features.clone(),
            }));
        }
        None
    }
}

/// The derivations a realisation of `roots` would build (those whose outputs are not valid,
/// and what they need) that this machine cannot build: for a system `platforms` does not
/// include, or requiring a system feature it lacks. Checked before anything is fetched or
/// built, as Nix checks before it starts a build; a derivation whose outputs are valid
/// needs no builder and passes, whatever its system and features.
pub fn unsupported_systems(
    store: &Store,
    lowered: &crate::model::Lowered,
    roots: &[String],
    platforms: &Platforms,
) -> Result<Vec<Unbuildable>, store::StoreError> {
    // Nothing to build (a no-op: the roots are valid) asks nothing of the derivations, which
    // the evaluation cache parses only when used.
    let mut roots_valid = true;
    for key in roots {
        if let Some(node) = lowered.nodes.get(key) {
            roots_valid &= outputs_valid(store, node)?;
        }
    }
    if roots_valid {
        return Ok(Vec::new());
    }
    // Usually every derivation can be built here: then the store need not be asked.
    if lowered
        .nodes
        .values()
        .all(|n| n.fetch.is_some() || platforms.can_build_locally(&n.drv))
    {
        return Ok(Vec::new());
    }
    let mut unsupported = Vec::new();
    let mut todo: Vec<&str> = roots.iter().map(String::as_str).collect();
    let mut seen = BTreeSet::new();
    while let Some(key) = todo.pop() {
        let Some(node) = lowered.nodes.get(key) else {
            continue;
        };
        if !seen.insert(key) || outputs_valid(store, node)? {
            continue;
        }
        unsupported.extend(Unbuildable::of(store, node, platforms).map(|e| (key, e)));
        todo.extend(node.deps.iter().map(String::as_str));
    }
    unsupported.sort_by(|a, b| a.0.cmp(b.0));
    let unsupported = unsupported.into_iter().map(|(_, e)| e).collect();
    Ok(unsupported)
}

/// Why nothing is built here with `--max-jobs 0`.
pub const NO_LOCAL_BUILDS: &str = "--max-jobs 0 builds nothing locally";
/// What to do about it.
pub const NO_LOCAL_BUILDS_HINT: &str =
    "give --builders (remote builders), or let builds run here with --max-jobs 1 or more";

/// Builds derivations in ksbuild's namespace sandbox.
pub struct SandboxExecutor<'a> {
    /// The store.
    pub store: &'a Store,
    /// Build settings.
    pub options: BuildOptions,
    /// Scratch directories of successful builds, emptied, for the next builds of this
    /// process: reusing them spares two directories created and removed per build.
    spare: std::sync::Arc<Spares>,
    /// The thread that empties them once their build is over (see [`Spares`]), started
    /// with the first.
    recycler: Mutex<
        Option<(
            std::sync::mpsc::Sender<Scratch>,
            std::thread::JoinHandle<()>,
        )>,
    >,
    /// The store's GC lock, shared, for the executor's lifetime: the spare scratch
    /// directories wait in `builds/` between builds, where another process opening an
    /// idle store would sweep them away.
    _gc: crate::store::GcShared,
    /// The sandbox: with a zygote once [`Executor::prepare`] has run, else without.
    sandbox: std::sync::OnceLock<sandbox::Sandbox>,
    /// The references of the input closures' paths, read once (`_gc` keeps them valid).
    references: crate::store::ReferenceCache,
    /// The last few input closures, by their roots, most recent first (`_gc` keeps them
    /// valid): the builds of a series that share their inputs (a toolchain, say) share
    /// one closure rather than each collect and sort its thousand paths again.
    closures: Mutex<Vec<(BTreeSet<StorePath>, Arc<InputClosure>)>>,
}

/// A build's input closure (it dereferences to its paths), with the index of those paths
/// that scanning its outputs for references uses: made at the first output scanned and
/// shared by every build with the same inputs.
pub struct InputClosure {
    paths: BTreeSet<StorePath>,
    candidates: std::sync::OnceLock<Arc<Candidates>>,
}

impl InputClosure {
    /// A scanner for references to the closure's paths and to `outputs`.
    pub(crate) fn scanner<'o>(
        &self,
        outputs: impl IntoIterator<Item = &'o StorePath>,
    ) -> RefScanner {
        let shared = self
            .candidates
            .get_or_init(|| Arc::new(Candidates::new(&self.paths)));
        RefScanner::with_shared(Arc::clone(shared), outputs)
    }

    /// Canonicalises, hashes and scans for references the output `name` of `node` that its
    /// build left at `staged` (`outputs`: all of the node's).
    fn prepare(
        &self,
        store: &Store,
        node: &Node,
        outputs: &BTreeMap<String, StorePath>,
        name: &str,
        staged: &std::path::Path,
    ) -> Result<store::ValidPathInfo, BuildFailure> {
        store
            .prepare_output(
                staged,
                &outputs[name],
                self.scanner(outputs.values()),
                Some(&node.drv_path),
                None,
            )
            .map_err(|e| failure(format!("output `{name}`: {e}")))
    }
}

impl std::ops::Deref for InputClosure {
    type Target = BTreeSet<StorePath>;
    fn deref(&self) -> &BTreeSet<StorePath> {
        &self.paths
    }
}

/// How many input closures [`SandboxExecutor`] keeps: enough for the builds running at
/// once and those being prepared, without holding every closure of a large graph.
const CLOSURES_KEPT: usize = 8;

impl<'a> SandboxExecutor<'a> {
    /// An executor building into `store`.
    pub fn new(
        store: &'a Store,
        options: BuildOptions,
    ) -> Result<SandboxExecutor<'a>, crate::store::StoreError> {
        Ok(SandboxExecutor {
            store,
            options,
            spare: Default::default(),
            recycler: Mutex::new(None),
            _gc: store.lock_gc_shared()?,
            sandbox: std::sync::OnceLock::new(),
            references: Default::default(),
            closures: Default::default(),
        })
    }

    /// Empties the scratch directories of a successful build on the recycler thread, and
    /// keeps them for the next build; if they cannot be emptied they are removed.
    fn recycle(&self, scratch: Scratch) {
        let mut recycler = self.recycler.lock().unwrap_or_else(|p| p.into_inner());
        if recycler.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<Scratch>();
            let spares = self.spare.clone();
            let thread = std::thread::Builder::new()
                .name("ksbuild-recycle".into())
                .spawn(move || rx.into_iter().for_each(|s| spares.empty_and_put(s)));
            if let Ok(thread) = thread {
                *recycler = Some((tx, thread));
            }
        }
        self.spare.emptying();
        let sent = match &*recycler {
            Some((tx, _)) => tx.send(scratch).map_err(|e| e.0),
            None => Err(scratch),
        };
        if let Err(scratch) = sent {
            self.spare.empty_and_put(scratch);
        }
    }

    /// `message`, followed by what fills the store's filesystem if it is full or `error`
    /// says it is: its mount point, size and free space, and what the build had written in
    /// `scratch` by then (measured before the scratch is removed).
    fn with_space(
        &self,
        message: String,
        error: Option<&(dyn std::error::Error + 'static)>,
        written: impl FnOnce() -> u64,
        what: &str,
    ) -> String {
        let out_of_space = error.is_some_and(store::is_out_of_space);
        match store::FilesystemSpace::of(&self.store.builds_dir()) {
            Some(fs) if out_of_space || fs.is_full() => format!(
                "{}: {}",
                // The system's words for it are replaced by the filesystem's description.
                message
                    .strip_suffix(": No space left on device (os error 28)")
                    .unwrap_or(&message),
                fs.no_space_left(Some(format!("{what} ~{}", store::megabytes(written()))))
            ),
            _ => message,
        }
    }
}

/// The size of a build log, 0 if there is none.
fn log_size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &std::path::Path, n: usize) -> Vec<String> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let mut lines: std::collections::VecDeque<String> = Default::default();
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        if lines.len() == n {
            lines.pop_front();
        }
        lines.push_back(line);
    }
    lines.into()
}

/// `error` and its sources, `: `-separated (a sandbox error's cause, such as `ENOSPC`, is
/// its source); a source already in the text is not repeated.
pub fn with_sources(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

fn failure(message: impl Into<String>) -> BuildFailure {
    BuildFailure {
        message: message.into(),
        log: None,
        tail: Vec::new(),
    }
}

impl SandboxExecutor<'_> {
    /// The input closure of a derivation: its input sources and the outputs it uses of its
    /// input derivations (read from their `.drv` files), closed under references.
    pub fn input_closure(&self, drv: &Derivation) -> Result<Arc<InputClosure>, BuildFailure> {
        let store = self.store;
        let mut roots: BTreeSet<StorePath> = drv.input_sources.clone();
        for (input_drv, outputs) in &drv.input_derivations {
            let text = std::fs::read(store.physical_path(input_drv))
                .map_err(|e| failure(format!("cannot read `{}`: {e}", store.print(input_drv))))?;
            let parsed = Derivation::from_aterm(&text, store.store_dir())
                .map_err(|e| failure(format!("cannot parse `{}`: {e}", store.print(input_drv))))?;
            for o in outputs {
                let path = parsed
                    .outputs
                    .get(o)
                    .and_then(|x| x.path.clone())
                    .ok_or_else(|| {
                        failure(format!("`{}` has no output `{o}`", store.print(input_drv)))
                    })?;
                roots.insert(path);
            }
        }
        let kept = |closures: &mut Vec<(BTreeSet<StorePath>, _)>| {
            let at = closures.iter().position(|(r, _)| *r == roots)?;
            let entry = closures.remove(at);
            let closure = Arc::clone(&entry.1);
            closures.insert(0, entry);
            Some(closure)
        };
        if let Some(closure) = kept(&mut self.closures.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(closure);
        }
        let closure = Arc::new(InputClosure {
            paths: store
                .closure_cached(roots.iter().cloned(), &self.references)
                .map_err(|e| failure(format!("input closure: {e}")))?,
            candidates: Default::default(),
        });
        let mut closures = self.closures.lock().unwrap_or_else(|p| p.into_inner());
        closures.insert(0, (roots, Arc::clone(&closure)));
        closures.truncate(CLOSURES_KEPT);
        Ok(closure)
    }

    /// Runs the builder of `node` in a fresh sandbox, holding `slot` from when all is
    /// ready to start it until the sandbox is gone. Returns the directory holding the
    /// outputs (the sandbox's root directory) and the scratch directories to remove
    /// afterwards.
    pub fn run_sandboxed(
        &self,
        node: &Node,
        closure: &BTreeSet<StorePath>,
        reporter: &dyn Reporter,
        slot: &Slot<'_>,
        variation: &sandbox::Variation,
    ) -> Result<(PathBuf, Scratch), BuildFailure> {
        let mut with_view = self.wants_view(closure, variation);
        loop {
            let t0 = std::time::Instant::now();
            let (scratch, view) = self.take_scratch(node, closure, with_view)?;
            timing::report("build: scratch directories", t0);
            match self.run_in(node, closure, reporter, slot, variation, scratch, view) {
                // The sandbox failed with a view (its keeper or zygote gone, say): the
                // build is run again the usual way, in a fresh scratch.
                Err(Retry(scratch)) => {
                    self.discard(scratch);
                    with_view = false;
                }
                Ok(result) => return result,
            }
        }
    }

    /// Whether a build of `closure` gets a store view: with a keeper, a default variation
    /// and a closure large enough that binding it costs more than the view's upkeep.
    fn wants_view(&self, closure: &BTreeSet<StorePath>, variation: &sandbox::Variation) -> bool {
        closure.len() >= VIEW_MIN_INPUTS
            && *variation == sandbox::Variation::default()
            && self.views().is_some()
    }

    /// The store views' keeper, if the sandbox has one and a zygote to hand views with.
    fn views(&self) -> Option<&sandbox::StoreViews> {
        let sandbox = self.sandbox.get()?;
        (sandbox.store_views()).filter(|v| v.is_working() && sandbox.has_zygote())
    }

    /// Scratch directories for a build: a spare one — one holding a view if `with_view` —,
    /// else new ones; with the view updated to `closure`. A view the keeper fails to
    /// update is dropped with its scratch, and the build gets new directories and no view.
    fn take_scratch(
        &self,
        node: &Node,
        closure: &BTreeSet<StorePath>,
        with_view: bool,
    ) -> Result<(Scratch, Option<sandbox::StoreView>), BuildFailure> {
        let store = self.store;
        // Two directories side by side, each its own temporary directory: the sandbox's
        // root and its `/build`. (No common parent: every directory created and removed
        // per build costs the filesystem an inode allocation.)
        let scratch_dir = |suffix: &str| {
            tempfile::Builder::new()
                .prefix(&format!("{}-", node.drv_path.hash_part()))
                .suffix(suffix)
                .tempdir_in(store.builds_dir())
                .map_err(|e| failure(format!("cannot create a build directory: {e}")))
        };
        let (spare, failed) = self.spare.take(|spare| {
            spare
                .iter()
                .rposition(|s| s.view.is_some() == with_view)
                .or_else(|| spare.iter().rposition(|s| s.view.is_none()))
        });
        for scratch in failed {
            self.discard(scratch);
        }
        let mut scratch = match spare {
            Some(s) => s,
            None => Scratch {
                root: scratch_dir("")?,
                build: scratch_dir(".build")?,
                work: WorkDir(scratch_dir(".work")?),
                view: None,
            },
        };
        let (Some(views), true) = (self.views(), with_view) else {
            return Ok((scratch, None));
        };
        let source = closure
            .first()
            .and_then(|p| store.physical_path(p).parent().map(PathBuf::from));
        let t0 = std::time::Instant::now();
        if scratch.view.is_none() {
            // A recycled root holds the mount points its last build left on disk: those of
            // other paths go, or this build would see them (the keeper binds on the others).
            scratch
                .remove_all_but(closure)
                .map_err(|e| failure(format!("cannot empty a build directory: {e}")))?;
        }
        let root = scratch.root.path().to_path_buf();
        let kept = scratch.view.get_or_insert_with(|| KeptView {
            id: views.new_view(),
            entries: BTreeSet::new(),
            created: CreatedNames::watch(&root),
        });
        let (remove, add) = view_delta(&kept.entries, closure);
        let updated = match &source {
            // The work directory, unused with a view, holds the file whose links are the
            // view's mount points of files.
            Some(source) => views.update(
                kept.id,
                scratch.root.path(),
                scratch.work.path(),
                source,
                &remove,
                &add,
            ),
            None => Err(nix::errno::Errno::EINVAL),
        };
        if timing::enabled() {
            eprintln!(
                "{}",
                timing::line(
                    &format!("build: store view (-{} +{})", remove.len(), add.len()),
                    t0
                )
            );
        }
        match updated {
            Ok(view) => {
                for name in &remove {
                    kept.entries.remove(name);
                }
                kept.entries.extend(add);
                Ok((scratch, Some(view)))
            }
            Err(e) => {
                if timing::enabled() {
                    eprintln!("build: the store view could not be updated ({e}): no view");
                }
                // The keeper has forgotten the view; its entries on disk go with the
                // directories.
                scratch.view = None;
                scratch.discard();
                self.take_scratch(node, closure, false)
            }
        }
    }

    /// Removes a scratch that will not be used again, and forgets its view.
    fn discard(&self, scratch: Scratch) {
        self.forget_view(&scratch);
        scratch.discard();
    }

    /// Tells the keeper to forget the view of a scratch about to be removed.
    fn forget_view(&self, scratch: &Scratch) {
        let views = self.sandbox.get().and_then(sandbox::Sandbox::store_views);
        if let (Some(kept), Some(views)) = (&scratch.view, views) {
            views.forget(kept.id);
        }
    }

    /// [`SandboxExecutor::run_sandboxed`] in `scratch`, with `view` if given.
    #[allow(clippy::too_many_arguments)]
    fn run_in(
        &self,
        node: &Node,
        closure: &BTreeSet<StorePath>,
        reporter: &dyn Reporter,
        slot: &Slot<'_>,
        variation: &sandbox::Variation,
        scratch: Scratch,
        view: Option<sandbox::StoreView>,
    ) -> Result<Result<(PathBuf, Scratch), BuildFailure>, Retry> {
        let store = self.store;
        let t0 = std::time::Instant::now();
        let root_dir = scratch.root.path().to_path_buf();
        let build_dir = scratch.build.path().to_path_buf();
        let log = store.log_path(&node.drv_path);
        // Emptied rather than removed: the sandbox appends to it, and reusing the inode
        // spares the filesystem a deletion and a creation per rebuild.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&log);
        let spec = SandboxSpec {
            builder: node.drv.builder.clone(),
            args: node.drv.args.clone(),
            env: node.drv.env.clone(),
            store_dir: store.store_dir().to_string(),
            // A view holds the inputs already (a thousand paths' names cost a build
            // about 0.5 ms to make and check).
            inputs: match view.is_some() {
                true => Vec::new(),
                false => closure
                    .iter()
                    .map(|p| (store.physical_path(p), store.print(p)))
                    .collect(),
            },
            root_dir: root_dir.clone(),
            // A few inputs' mount points stay on disk: the next build in this scratch
            // reuses those it shares (most of a small closure, such as a toolchain), and
            // an overlay costs more to mount on a disk than they do (see
            // `OVERLAY_MIN_INPUTS`).
            work_dir: (closure.len() >= OVERLAY_MIN_INPUTS)
                .then(|| scratch.work.path().to_path_buf()),
            build_dir: build_dir.clone(),
            cores: self.options.cores,
            timeout: self.options.timeout,
            max_silent_time: self.options.max_silent_time,
            max_processes: Some(self.options.max_processes),
            variation: variation.clone(),
            build_user: sandbox::BuildUser::Auto,
            log: log.clone(),
            store_view: view,
        };
        let key = node.key.clone();
        let outcome = self.sandbox.get_or_init(sandbox::Sandbox::new).run_when(
            &spec,
            &|| slot.acquire(),
            &mut |line: &[u8]| reporter.log_line(&key, line),
        );
        slot.release();
        timing::report("build: sandbox", t0);
        let with_log = |message: String| BuildFailure {
            message,
            tail: log_tail(&log, 25),
            // A build that printed nothing has no log file.
            log: log.exists().then(|| log.clone()),
        };
        // A failed build's scratch (its outputs, sealed read-only, and `/build`) is removed
        // here, before the error is reported: it must not stay on a full disk.
        let keep = |scratch: Scratch, message: String| -> BuildFailure {
            let mut f = with_log(message);
            self.forget_view(&scratch);
            if self.options.keep_failed {
                let kept = store
                    .failed_builds_dir()
                    .join(scratch.build.path().file_name().unwrap_or_default());
                let _ = store::remove_tree(scratch.root.path());
                let _ = store::remove_tree(scratch.work.path());
                if std::fs::rename(scratch.build.keep(), &kept).is_ok() {
                    f.message.push_str(&format!(" (kept `{}`)", kept.display()));
                }
            } else {
                scratch.discard();
            }
            f
        };
        let written =
            || store::disk_usage(&root_dir) + store::disk_usage(&build_dir) + log_size(&log);
        Ok(match outcome {
            Err(_) if spec.store_view.is_some() => {
                if timing::enabled() {
                    eprintln!("build: the sandbox failed with a store view: again without");
                }
                return Err(Retry(scratch));
            }
            Err(e) => {
                let hint = e.hint().map(|h| format!("; hint: {h}")).unwrap_or_default();
                let message = self.with_space(
                    format!("sandbox: {}", with_sources(&e)),
                    Some(&e),
                    written,
                    "the build had written",
                );
                Err(keep(scratch, format!("{message}{hint}")))
            }
            Ok(o) if !o.success() => {
                let how = match o.timed_out {
                    Some(sandbox::TimeoutKind::Timeout) => format!(
                        "timed out after {:.0}s and was killed",
                        o.duration.as_secs_f64()
                    ),
                    Some(sandbox::TimeoutKind::MaxSilentTime) => {
                        "printed nothing for too long and was killed".to_string()
                    }
                    None => format!("failed with {}", o.status),
                };
                let message = self.with_space(
                    format!("builder of `{}` {how}", node.key),
                    None,
                    written,
                    "the build had written",
                );
                Err(keep(scratch, message))
            }
            Ok(_) => Ok((root_dir, scratch)),
        })
    }

    /// Registers the outputs a build left in `out_dir`; an output that refers to a sibling
    /// is registered after it (Nix refuses cycles between outputs, and so does this).
    fn register_outputs(
        &self,
        node: &Node,
        out_dir: &std::path::Path,
        closure: &InputClosure,
        locks: &BTreeMap<StorePath, FileLock>,
    ) -> Result<(), BuildFailure> {
        let store = self.store;
        let outputs = output_paths(node);
        let mut pending = Vec::new();
        for (name, path) in &outputs {
            let staged = out_dir.join(path.to_string());
            if std::fs::symlink_metadata(&staged).is_err() {
                return Err(failure(format!(
                    "builder of `{}` did not produce its output `{name}` (`{}`)",
                    node.key,
                    store.print(path)
                )));
            }
            let info = closure.prepare(store, node, &outputs, name, &staged)?;
            pending.push((name.clone(), staged, info));
        }
        while !pending.is_empty() {
            let before = pending.len();
            let mut rest = Vec::new();
            for (name, staged, info) in pending {
                let waits = info.references.iter().any(|r| {
                    r != &info.path
                        && outputs.values().any(|o| o == r)
                        && !store.is_valid(r).unwrap_or(false)
                });
                if waits {
                    rest.push((name, staged, info));
                    continue;
                }
                let lock = locks
                    .get(&info.path)
                    .ok_or_else(|| failure("output lock missing"))?;
                store
                    .register_staged_locked(&staged, info, lock)
                    .map_err(|e| failure(format!("cannot register output `{name}`: {e}")))?;
            }
            if rest.len() == before {
                return Err(failure(format!(
                    "outputs of `{}` refer to each other in a cycle",
                    node.key
                )));
            }
            pending = rest;
        }
        Ok(())
    }
}

impl SandboxExecutor<'_> {
    /// Refuses a derivation this machine does not build — for another system, requiring a
    /// feature it lacks, or any at all with `--max-jobs 0` — before its builder is run
    /// (`realise` refuses earlier, before fetching; this covers every build, `--check`
    /// included).
    fn check_system(&self, node: &Node) -> Result<(), BuildFailure> {
        if self.options.jobs == 0 {
            return Err(failure(format!(
                "`{}`: {NO_LOCAL_BUILDS}; hint: {NO_LOCAL_BUILDS_HINT}",
                node.key
            )));
        }
        match Unbuildable::of(self.store, node, &self.options.platforms) {
            None => Ok(()),
            Some(e) => Err(failure(format!("{e}; hint: {}", e.hint()))),
        }
    }
}

impl Executor for SandboxExecutor<'_> {
    /// Starts the sandbox's zygotes, one per build that runs at once. They live as long as
    /// the calling thread, which must outlive the builds (the thread driving the
    /// realisation does).
    fn prepare(&self, builds: usize) {
        let zygotes = self.options.jobs.min(builds).max(1);
        self.sandbox.get_or_init(|| {
            let sandbox = sandbox::Sandbox::new().with_zygotes(zygotes);
            // Views pay off over a series of builds (see `sandbox::StoreViews`).
            match builds > 1 {
                true => sandbox.with_store_views(),
                false => sandbox,
            }
        });
    }

    fn build(
        &self,
        node: &Node,
        reporter: &dyn Reporter,
        slot: &Slot<'_>,
    ) -> Result<BuildOutcome, BuildFailure> {
        let store = self.store;
        // Another process may be building the same derivation: say so, wait for it, then
        // reuse its outputs (or build them, if it failed).
        let mut locks: BTreeMap<StorePath, FileLock> = BTreeMap::new();
        let mut announced = false;
        for p in output_paths(node).into_values() {
            let lock = match store
                .try_lock_path(&p)
                .map_err(|e| failure(e.to_string()))?
            {
                Some(lock) => lock,
                None => {
                    if !announced {
                        announced = true;
                        reporter.event(&Event::BuildWaiting {
                            target: node.key.clone(),
                            drv: store.print(&node.drv_path),
                        });
                    }
                    store
                        .lock_path_quietly(&p)
                        .map_err(|e| failure(e.to_string()))?
                }
            };
            locks.insert(p, lock);
        }
        if outputs_valid(store, node).map_err(|e| failure(e.to_string()))? {
            return Ok(BuildOutcome::AlreadyValid);
        }
        self.check_system(node)?;
        let t0 = std::time::Instant::now();
        let closure = self.input_closure(&node.drv)?;
        timing::report("build: input closure", t0);
        let (out_dir, scratch) =
            self.run_sandboxed(node, &closure, reporter, slot, &Default::default())?;
        let t0 = std::time::Instant::now();
        if let Err(mut f) = self.register_outputs(node, &out_dir, &closure, &locks) {
            f.message = self.with_space(
                f.message,
                None,
                || store::disk_usage(&out_dir),
                "its outputs take",
            );
            self.discard(scratch);
            return Err(f);
        }
        timing::report("build: register outputs", t0);
        let t0 = std::time::Instant::now();
        self.recycle(scratch);
        timing::report("build: scratch handed to the recycler", t0);
        Ok(BuildOutcome::Built)
    }
}

/// The scratch space of one build, removed on drop: the sandbox's root directory (which
/// holds the outputs until they are registered) and its `/build`.
pub struct Scratch {
    /// The root directory.
    pub root: tempfile::TempDir,
    /// `/build`.
    pub build: tempfile::TempDir,
    /// overlayfs's work directory, beside the root (kept as it is between builds: the
    /// overlay empties it when it is mounted).
    pub work: WorkDir,
    /// The store view kept in the root, if any.
    view: Option<KeptView>,
}

/// A store view kept in a scratch root by the sandbox's keeper (see
/// [`sandbox::StoreViews`]): its number, and the names of its entries (the closure of the
/// last build in it).
struct KeptView {
    id: u64,
    entries: BTreeSet<String>,
    /// The names created in the root since the view was made (see [`CreatedNames`]).
    created: Option<CreatedNames>,
}

/// The names created in a directory, from an inotify watch on it (`IN_CREATE`,
/// `IN_MOVED_TO`): what a view's root may hold besides the view's entries is what was
/// created in it, so emptying it costs a look at each name created rather than a listing
/// of a thousand mount points. Names created inside a new subdirectory are not seen, and
/// need not be: the subdirectory goes whole.
struct CreatedNames(nix::sys::inotify::Inotify);

impl CreatedNames {
    /// A watch on `dir`; `None` where the kernel gives none (too many watches, say).
    fn watch(dir: &std::path::Path) -> Option<CreatedNames> {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).ok()?;
        let flags = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_ONLYDIR
            | AddWatchFlags::IN_DONT_FOLLOW;
        inotify.add_watch(dir, flags).ok()?;
        Some(CreatedNames(inotify))
    }

    /// The names created since the last call; `None` if the kernel dropped some (its queue
    /// overflowed) or cannot say.
    fn take(&self) -> Option<BTreeSet<std::ffi::OsString>> {
        use nix::sys::inotify::AddWatchFlags;
        let mut names = BTreeSet::new();
        loop {
            match self.0.read_events() {
                Ok(events) => {
                    for e in events {
                        if e.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                            return None;
                        }
                        names.extend(e.name);
                    }
                }
                Err(nix::errno::Errno::EAGAIN) => return Some(names),
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return None,
            }
        }
    }
}

/// Closures smaller than this get their mount points on disk, in the root directory, rather
/// than in an overlay's tmpfs: mounting overlayfs on ext4 costs about 3 ms here (it tries
/// its upper filesystem's features by creating files in the work directory), while the
/// mount points of a small closure are made once per scratch and then reused.
const OVERLAY_MIN_INPUTS: usize = 16;

/// Closures smaller than this are bound by each build's PID 1, as usual: a store view's
/// mount points are on disk, and for a few inputs cost more than the binds they spare.
const VIEW_MIN_INPUTS: usize = 64;

/// The names a view holding `held` must lose and gain to hold `closure`: one merge of the
/// two, which are in the same order (a store path sorts as its base name, `<hash>-<name>`,
/// whose hash part has a fixed length), with no name made for a path the view holds.
fn view_delta(
    held: &BTreeSet<String>,
    closure: &BTreeSet<StorePath>,
) -> (Vec<String>, Vec<String>) {
    use std::cmp::Ordering;
    let order = |name: &str, path: &StorePath| match name.split_at_checked(32) {
        Some((hash, rest)) => {
            (hash, rest.strip_prefix('-').unwrap_or(rest)).cmp(&(path.hash_part(), path.name()))
        }
        None => name.cmp(&path.to_string()),
    };
    let (mut remove, mut add) = (Vec::new(), Vec::new());
    let mut held = held.iter().peekable();
    for path in closure {
        loop {
            match held.peek().map(|name| (order(name, path), *name)) {
                Some((Ordering::Less, name)) => {
                    remove.push(name.clone());
                    held.next();
                }
                Some((Ordering::Equal, _)) => {
                    held.next();
                    break;
                }
                _ => {
                    add.push(path.to_string());
                    break;
                }
            }
        }
    }
    remove.extend(held.cloned());
    (remove, add)
}

/// A build to run again, the usual way: the sandbox failed with a store view. Holds the
/// scratch it failed in.
struct Retry(Scratch);

/// overlayfs's work directory of a [`Scratch`], removed on drop even though the overlay
/// leaves a directory of mode 000 in it (which a `TempDir` cannot remove for an ordinary
/// user).
pub struct WorkDir(tempfile::TempDir);

impl WorkDir {
    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = store::remove_tree(self.0.path());
    }
}

impl Scratch {
    /// Removes both directories and everything in them, read-only trees included (which
    /// dropping a `TempDir` cannot remove for an ordinary user).
    fn discard(self) {
        let _ = store::remove_tree(self.root.path());
        let _ = store::remove_tree(self.build.path());
        let _ = store::remove_tree(self.work.path());
    }

    /// Removes every entry of the root that is not named like a path of `closure`.
    fn remove_all_but(&self, closure: &BTreeSet<StorePath>) -> Result<(), store::StoreError> {
        let dir = self.root.path();
        for entry in std::fs::read_dir(dir).map_err(store::StoreError::io("list", dir))? {
            let entry = entry.map_err(store::StoreError::io("list", dir))?;
            let name = entry.file_name();
            let path = name
                .to_str()
                .and_then(|n| StorePath::from_base_name(n).ok());
            if !path.is_some_and(|p| closure.contains(&p)) {
                store::remove_tree(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Removes everything in both directories (outputs left over, what the builder left in
    /// `/build`), keeping the directories — and, in the root, the inputs' empty mount
    /// points, which the next build reuses if it has the same inputs (the sandbox removes
    /// the others), or the entries of the store view kept there: on some filesystems, a directory created and removed per build is the
    /// costliest part of a small build (an unjournaled ext4 skips recently freed inodes
    /// when it allocates one, checking each).
    fn empty(&self) -> Result<(), store::StoreError> {
        // A view's root: what was created in it and is not the view's.
        let created = (self.view.as_ref()).and_then(|v| Some((v, v.created.as_ref()?.take()?)));
        if let Some((view, created)) = &created {
            if timing::enabled() {
                eprintln!(
                    "build: a view's root emptied by the {} names created in it",
                    created.len()
                );
            }
            for name in created {
                if name.to_str().is_some_and(|n| view.entries.contains(n)) {
                    continue;
                }
                // (Gone already if it was an output, taken into the store.)
                store::remove_tree(&self.root.path().join(name))?;
            }
        }
        let listed = match created {
            Some(_) => &[self.build.path()][..],
            None => &[self.root.path(), self.build.path()][..],
        };
        for &dir in listed {
            let entries = std::fs::read_dir(dir).map_err(store::StoreError::io("list", dir))?;
            for entry in entries {
                let entry = entry.map_err(store::StoreError::io("list", dir))?;
                // In a view's root, only the view's entries stay: the sandbox does not
                // read it before the next build (see `SandboxSpec::store_view`).
                let kept = dir == self.root.path()
                    && match &self.view {
                        Some(v) => {
                            (entry.file_name().to_str()).is_some_and(|n| v.entries.contains(n))
                        }
                        None => sandbox::is_left_mount_point(&entry.path()),
                    };
                if !kept {
                    store::remove_tree(&entry.path())?;
                }
            }
        }
        Ok(())
    }
}

/// A rebuild of an already valid output that gave different bytes.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckMismatch {
    /// The target.
    pub target: String,
    /// The output name.
    pub output: String,
    /// The registered path.
    pub path: String,
    /// Its registered NAR hash.
    pub expected: String,
    /// The NAR hash of the rebuild.
    pub actual: String,
    /// Where the rebuild was kept for inspection.
    pub kept: String,
}

/// One output of a rebuild: its NAR hash and size, and the tree, canonical, in the
/// rebuild's scratch space (gone when the [`Rebuild`] is dropped, unless kept).
#[derive(Debug)]
pub struct RebuiltOutput {
    /// Its NAR hash.
    pub nar_hash: crate::compat::Hash,
    /// Its NAR size.
    pub nar_size: u64,
    /// The tree.
    pub staged: PathBuf,
}

/// A build of a node in a fresh sandbox whose outputs are hashed but not registered:
/// a round of `check`. The scratch space goes when it is dropped.
pub struct Rebuild<'e, 's> {
    executor: &'e SandboxExecutor<'s>,
    scratch: Option<Scratch>,
    /// The outputs, by name.
    pub outputs: BTreeMap<String, RebuiltOutput>,
}

impl Rebuild<'_, '_> {
    /// Moves output `name` to `dest` (replacing what is there) for inspection.
    pub fn keep(&mut self, name: &str, dest: &std::path::Path) -> Result<(), StoreError> {
        let Some(out) = self.outputs.get_mut(name) else {
            return Ok(());
        };
        store::remove_tree(dest)?;
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(StoreError::io("create", parent))?;
        }
        store::move_sealed(&out.staged, dest)?;
        out.staged = dest.to_path_buf();
        Ok(())
    }
}

impl Drop for SandboxExecutor<'_> {
    /// Waits for the recycler thread, stops the sandbox's helpers, then removes the spare
    /// scratch directories, while the GC lock is still held. The views' keeper goes first:
    /// its mount namespace, with every mount of the views, goes in one teardown, where
    /// detaching a view's thousand mounts one by one (or removing their mount points while
    /// they are mounted) waits for an RCU grace period each; the directories are then plain.
    fn drop(&mut self) {
        let recycler = self.recycler.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some((tx, thread)) = recycler.take() {
            drop(tx);
            let _ = thread.join();
        }
        let (ready, failed) = self.spare.drain();
        drop(self.sandbox.take());
        for scratch in ready.into_iter().chain(failed) {
            scratch.discard();
        }
    }
}

/// The spare scratch directories of an executor: those ready for a build, those that
/// could not be emptied (to discard), and how many are being emptied. A build that finds
/// no spare waits for those being emptied rather than make new ones (and a new view).
#[derive(Default)]
struct Spares {
    state: Mutex<SparesState>,
    changed: std::sync::Condvar,
}

#[derive(Default)]
struct SparesState {
    ready: Vec<Scratch>,
    failed: Vec<Scratch>,
    emptying: usize,
}

impl Spares {
    fn lock(&self) -> std::sync::MutexGuard<'_, SparesState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more scratch is on its way to [`Spares::put`].
    fn emptying(&self) {
        self.lock().emptying += 1;
    }

    /// Empties `scratch` and puts it back. Whatever happens, it is put back: a build
    /// waiting for it must not wait for nothing.
    fn empty_and_put(&self, scratch: Scratch) {
        let emptied =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| scratch.empty().is_ok()));
        self.put(scratch, emptied.unwrap_or(false));
    }

    /// A scratch, emptied (or not).
    fn put(&self, scratch: Scratch, emptied: bool) {
        let mut state = self.lock();
        state.emptying = state.emptying.saturating_sub(1);
        match emptied {
            true => state.ready.push(scratch),
            false => state.failed.push(scratch),
        }
        self.changed.notify_all();
    }

    /// The ready scratch `pick` chooses, waiting for those being emptied if it chooses
    /// none before (for a second at most: a builder may have left a large tree to remove);
    /// and the scratches that could not be emptied, for the caller to discard.
    fn take(&self, pick: impl Fn(&[Scratch]) -> Option<usize>) -> (Option<Scratch>, Vec<Scratch>) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        let mut state = self.lock();
        loop {
            if let Some(at) = pick(&state.ready) {
                let scratch = state.ready.remove(at);
                return (Some(scratch), std::mem::take(&mut state.failed));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if state.emptying == 0 || left.is_zero() {
                return (None, std::mem::take(&mut state.failed));
            }
            state = (self.changed.wait_timeout(state, left))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Every scratch held.
    fn drain(&self) -> (Vec<Scratch>, Vec<Scratch>) {
        let mut state = self.lock();
        (
            std::mem::take(&mut state.ready),
            std::mem::take(&mut state.failed),
        )
    }
}

impl Drop for Rebuild<'_, '_> {
    fn drop(&mut self) {
        if let Some(scratch) = self.scratch.take() {
            self.executor.recycle(scratch);
        }
    }
}

impl<'s> SandboxExecutor<'s> {
    /// Builds `node`, whose inputs must be valid, in a fresh sandbox, and hashes its
    /// outputs (canonicalised as for registration) without registering them: nothing of
    /// an earlier build of it is used.
    pub fn rebuild<'e>(
        &'e self,
        node: &Node,
        reporter: &dyn Reporter,
        variation: &sandbox::Variation,
    ) -> Result<Rebuild<'e, 's>, BuildFailure> {
        let store = self.store;
        self.check_system(node)?;
        let t0 = std::time::Instant::now();
        let closure = self.input_closure(&node.drv)?;
        timing::report("build: input closure", t0);
        // Reported as any build (with the estimate from the history), so that a long
        // rebuild is as visibly alive as the first build was.
        let drv = store.print(&node.drv_path);
        let last = crate::store::history::load_of(store, |name| name == node.key)
            .estimate(&node.key, &drv)
            .cloned();
        reporter.event(&Event::BuildStarted {
            target: node.key.clone(),
            drv: drv.clone(),
            machine: None,
            loads: None,
            eta: last.as_ref().map(|r| r.seconds),
            expected_lines: last.map(|r| r.lines),
        });
        let started = std::time::Instant::now();
        let counted = super::CountLines {
            inner: reporter,
            lines: std::sync::atomic::AtomicU64::new(0),
        };
        let sandboxed = self.run_sandboxed(node, &closure, &counted, &Slot::FREE, variation);
        let seconds = super::secs(started.elapsed());
        let (out_dir, scratch) = match sandboxed {
            Ok(done) => done,
            Err(f) => {
                reporter.event(&Event::Failed {
                    target: node.key.clone(),
                    seconds,
                    error: f.message.clone(),
                    log: f.log.as_ref().map(|l| l.display().to_string()),
                });
                return Err(f);
            }
        };
        let lines = counted.lines.load(std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = crate::store::history::record(store, &node.key, &drv, seconds, lines) {
            reporter.warning(&format!("cannot record the rebuild of `{}`: {e}", node.key));
        }
        reporter.event(&Event::BuildFinished {
            target: node.key.clone(),
            seconds,
            outputs: output_paths(node)
                .into_iter()
                .map(|(n, p)| (n, store.print(&p)))
                .collect(),
        });
        let mut rebuild = Rebuild {
            executor: self,
            scratch: Some(scratch),
            outputs: BTreeMap::new(),
        };
        let outputs = output_paths(node);
        for (name, path) in &outputs {
            let staged = out_dir.join(path.to_string());
            if std::fs::symlink_metadata(&staged).is_err() {
                return Err(failure(format!(
                    "the rebuild of `{}` did not produce its output `{name}`",
                    node.key
                )));
            }
            let info = closure.prepare(store, node, &outputs, name, &staged)?;
            rebuild.outputs.insert(
                name.clone(),
                RebuiltOutput {
                    nar_hash: info.nar_hash,
                    nar_size: info.nar_size,
                    staged,
                },
            );
        }
        Ok(rebuild)
    }

    /// Rebuilds `node`, whose outputs must be valid, in a fresh sandbox and compares every
    /// output's NAR hash with the registered one. Differing rebuilds are kept under the
    /// store's `check/` directory. Returns the mismatches (empty when reproducible).
    pub fn check(
        &self,
        node: &Node,
        reporter: &dyn Reporter,
    ) -> Result<Vec<CheckMismatch>, BuildFailure> {
        let store = self.store;
        let t0 = std::time::Instant::now();
        let mut rebuild = self.rebuild(node, reporter, &Default::default())?;
        timing::report("check: rebuild", t0);
        let mut mismatches = Vec::new();
        for (name, path) in output_paths(node) {
            let registered = store
                .path_info(&path)
                .map_err(|e| failure(format!("`--check` needs valid outputs: {e}")))?;
            let rebuilt = &rebuild.outputs[&name];
            if rebuilt.nar_hash != registered.nar_hash {
                let actual = rebuilt.nar_hash.to_sri();
                let kept = store.check_dir().join(path.to_string());
                rebuild
                    .keep(&name, &kept)
                    .map_err(|e| failure(format!("cannot keep the rebuild: {e}")))?;
                mismatches.push(CheckMismatch {
                    target: node.key.clone(),
                    output: name.clone(),
                    path: store.print(&path),
                    expected: registered.nar_hash.to_sri(),
                    actual,
                    kept: kept.display().to_string(),
                });
            }
        }
        Ok(mismatches)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::compat::StoreDir;
    use crate::store::Silent;

    fn open(dir: &Path) -> Store {
        Store::open(&dir.join("root"), StoreDir::default(), Arc::new(Silent)).unwrap()
    }

    fn options() -> BuildOptions {
        BuildOptions {
            cores: 1,
            timeout: None,
            max_silent_time: None,
            max_processes: sandbox::DEFAULT_MAX_PROCESSES,
            keep_failed: false,
            jobs: 1,
            platforms: Platforms::host(),
        }
    }

    #[test]
    fn a_build_waits_for_a_scratch_being_emptied_but_not_for_ever() {
        let dir = tempfile::tempdir().unwrap();
        let new_dir = || tempfile::tempdir_in(dir.path()).unwrap();
        let scratch = || Scratch {
            root: new_dir(),
            build: new_dir(),
            work: WorkDir(new_dir()),
            view: None,
        };
        let first = |s: &[Scratch]| (!s.is_empty()).then_some(0);
        let spares = Arc::new(Spares::default());
        // None held, none being emptied: no scratch, at once.
        let t0 = std::time::Instant::now();
        assert!(spares.take(first).0.is_none());
        assert!(t0.elapsed() < std::time::Duration::from_millis(500));
        // One being emptied: the build waits for it.
        spares.emptying();
        let (emptier, emptied) = (spares.clone(), scratch());
        let thread = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            emptier.put(emptied, true);
        });
        let (taken, failed) = spares.take(first);
        assert!(taken.is_some() && failed.is_empty());
        thread.join().unwrap();
        // One that could not be emptied is handed to the build to discard.
        spares.emptying();
        spares.put(scratch(), false);
        let (taken, failed) = spares.take(first);
        assert!(taken.is_none());
        assert_eq!(failed.len(), 1);
        // One that never comes: a second, then none.
        spares.emptying();
        let t0 = std::time::Instant::now();
        assert!(spares.take(first).0.is_none());
        let waited = t0.elapsed();
        assert!(waited >= std::time::Duration::from_secs(1), "{waited:?}");
        assert!(waited < std::time::Duration::from_secs(5), "{waited:?}");
    }

    #[test]
    fn a_view_delta_is_what_makes_the_held_names_the_closure() {
        let hashes = [
            "00000000000000000000000000000000",
            "11111111111111111111111111111111",
            "1111111111111111111111111111111a",
            "22222222222222222222222222222222",
            "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
        ];
        let path = |i: usize, name: &str| {
            StorePath::from_base_name(&format!("{}-{name}", hashes[i])).unwrap()
        };
        // Names that sort differently as text and as fields (`a-b` against `a`) included.
        let held: BTreeSet<String> = [path(0, "a"), path(1, "a-b"), path(3, "d"), path(4, "z")]
            .iter()
            .map(StorePath::to_string)
            .collect();
        let closure: BTreeSet<StorePath> =
            [path(1, "a"), path(1, "a-b"), path(2, "c"), path(3, "d")].into();
        let (remove, add) = view_delta(&held, &closure);
        let mut after: BTreeSet<String> = held
            .difference(&remove.iter().cloned().collect())
            .cloned()
            .collect();
        after.extend(add.iter().cloned());
        let expected: BTreeSet<String> = closure.iter().map(StorePath::to_string).collect();
        assert_eq!(after, expected, "remove {remove:?}, add {add:?}");
        assert_eq!(remove, [path(0, "a").to_string(), path(4, "z").to_string()]);
        assert_eq!(add, [path(1, "a").to_string(), path(2, "c").to_string()]);
        assert_eq!(view_delta(&expected, &closure), (vec![], vec![]));
        assert_eq!(
            view_delta(&BTreeSet::new(), &closure).1.len(),
            closure.len()
        );
    }

    #[test]
    fn platforms_build_their_system_extra_platforms_and_builtin_only() {
        let x86 = Platforms::with_default_extra("x86_64-linux".into());
        let arm = Platforms::with_default_extra("aarch64-linux".into());
        let x86_arm = x86.clone().with_extra("aarch64-linux, i686-linux");
        let x86_none = x86.clone().with_extra("");
        #[rustfmt::skip]
        let table: &[(&Platforms, &str, bool)] = &[
            (&x86, "x86_64-linux", true),
            (&x86, "i686-linux", true), // Nix's default extra platform on x86_64-linux
            (&x86, "aarch64-linux", false),
            (&x86, "x86_64-darwin", false),
            (&x86, "builtin", true), // downloads
            (&x86, "", false),
            (&x86, "X86_64-linux", false), // systems are compared exactly, as Nix does
            (&arm, "aarch64-linux", true),
            (&arm, "i686-linux", false), // no default extra platforms elsewhere
            (&arm, "x86_64-linux", false),
            (&x86_arm, "aarch64-linux", true),
            (&x86_arm, "i686-linux", true),
            (&x86_arm, "armv7l-linux", false),
            (&x86_none, "i686-linux", false), // the setting replaces the default
            (&x86_none, "x86_64-linux", true),
        ];
        for (platforms, system, expected) in table {
            assert_eq!(
                platforms.can_build(system),
                *expected,
                "{platforms} building `{system}`"
            );
        }
        assert_eq!(x86_none.extra, BTreeSet::new());
        assert_eq!(
            x86.to_string(),
            "`x86_64-linux` (extra platforms: `i686-linux`)"
        );
        assert_eq!(arm.to_string(), "`aarch64-linux` (no extra platforms)");
    }

    /// A derivation for `system` whose `requiredSystemFeatures` is `features` (absent if
    /// `None`).
    fn requiring(system: &str, features: Option<&str>) -> Derivation {
        let mut env = BTreeMap::new();
        if let Some(f) = features {
            env.insert("requiredSystemFeatures".to_string(), f.to_string());
        }
        Derivation {
            outputs: BTreeMap::new(),
            input_derivations: BTreeMap::new(),
            input_sources: BTreeSet::new(),
            system: system.into(),
            builder: "/bin/sh".into(),
            args: Vec::new(),
            env,
        }
    }

    /// Platforms, a derivation's system and `requiredSystemFeatures`, whether it builds
    /// here, the features missing.
    type Case<'a> = (&'a Platforms, &'a str, Option<&'a str>, bool, &'a [&'a str]);

    #[test]
    fn a_derivation_builds_here_if_its_system_fits_and_it_requires_only_features_offered() {
        let default = Platforms::with_default_extra("x86_64-linux".into());
        let kvm = default
            .clone()
            .with_features(["kvm".to_string(), "big-parallel".to_string()]);
        let none = default.clone().with_features([]);
        #[rustfmt::skip]
        let table: &[Case] = &[
            // Nix's defaults: `benchmark big-parallel nixos-test` (kvm only where /dev/kvm is usable).
            (&default, "x86_64-linux", None, true, &[]),
            (&default, "x86_64-linux", Some(""), true, &[]),
            (&default, "x86_64-linux", Some("big-parallel"), true, &[]),
            (&default, "x86_64-linux", Some("benchmark nixos-test big-parallel"), true, &[]),
            (&default, "x86_64-linux", Some("kvm"), false, &["kvm"]),
            (&default, "x86_64-linux", Some("big-parallel kvm gpu"), false, &["gpu", "kvm"]),
            (&default, "i686-linux", Some("big-parallel"), true, &[]),
            // Every required feature must be offered; offering more is fine.
            (&kvm, "x86_64-linux", Some("kvm"), true, &[]),
            (&kvm, "x86_64-linux", Some("kvm big-parallel"), true, &[]),
            (&kvm, "x86_64-linux", Some("nixos-test"), false, &["nixos-test"]),
            (&none, "x86_64-linux", None, true, &[]),
            (&none, "x86_64-linux", Some("big-parallel"), false, &["big-parallel"]),
            // The system is checked too; the features alone do not make it buildable.
            (&kvm, "aarch64-linux", Some("kvm"), false, &[]),
            (&kvm, "aarch64-linux", None, false, &[]),
            // Features are compared exactly.
            (&kvm, "x86_64-linux", Some("KVM"), false, &["KVM"]),
        ];
        for (platforms, system, features, buildable, missing) in table {
            let drv = requiring(system, *features);
            assert_eq!(
                platforms.can_build_locally(&drv),
                *buildable,
                "{platforms} with features {:?} building `{system}` requiring {features:?}",
                platforms.features
            );
            let missing: BTreeSet<String> = missing.iter().map(|s| s.to_string()).collect();
            assert_eq!(platforms.missing_features(&drv), missing, "{features:?}");
        }
    }

    #[test]
    fn nix_default_system_features_and_kvm() {
        let defaults = default_system_features();
        for f in DEFAULT_SYSTEM_FEATURES {
            assert!(defaults.contains(f), "{defaults:?}");
        }
        let kvm_usable = rustix::fs::access(
            "/dev/kvm",
            rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
        )
        .is_ok();
        assert_eq!(defaults.contains("kvm"), kvm_usable, "{defaults:?}");
        assert_eq!(defaults.len(), 3 + kvm_usable as usize);
        assert_eq!(Platforms::host().features, defaults);
    }

    #[test]
    fn the_refusal_of_missing_features_names_them_and_the_settings() {
        let e = MissingFeatures {
            target: "kernel".into(),
            drv: "/nix/store/00000000000000000000000000000000-kernel.drv".into(),
            missing: ["kvm".to_string()].into(),
            features: ["big-parallel".to_string(), "benchmark".to_string()].into(),
        };
        assert_eq!(
            e.to_string(),
            "`kernel` (`/nix/store/00000000000000000000000000000000-kernel.drv`) requires the \
             system feature(s) `kvm`, which this machine does not offer (its features: \
             `benchmark`, `big-parallel`)"
        );
        let hint = e.hint();
        assert!(
            hint.contains("`--builders`")
                && hint.contains("`--system-features \"benchmark big-parallel kvm\"`")
                && hint.contains("KSBUILD_SYSTEM_FEATURES")
                && hint.contains("nix.conf"),
            "{hint}"
        );
    }

    #[test]
    fn the_host_is_named_as_nix_names_it() {
        let host = Platforms::host();
        let (cpu, os) = host.system.split_once('-').unwrap();
        assert_eq!(os, "linux");
        assert!(
            [
                "x86_64",
                "aarch64",
                "i686",
                "armv7l",
                "riscv64",
                "powerpc64le"
            ]
            .contains(&cpu),
            "{host}"
        );
        assert!(host.can_build(&host.system));
    }

    #[test]
    fn the_refusal_names_the_derivation_the_systems_and_the_setting() {
        let e = UnsupportedSystem {
            target: "rootfs".into(),
            drv: "/nix/store/00000000000000000000000000000000-rootfs.drv".into(),
            system: "aarch64-linux".into(),
            platforms: Platforms::with_default_extra("x86_64-linux".into()),
        };
        assert_eq!(
            e.to_string(),
            "`rootfs` is for `aarch64-linux` (`/nix/store/00000000000000000000000000000000-rootfs.drv`), \
             but this machine builds for `x86_64-linux` (extra platforms: `i686-linux`)"
        );
        let hint = e.hint();
        assert!(
            hint.contains("`--extra-platforms i686-linux,aarch64-linux`")
                && hint.contains("`KSBUILD_EXTRA_PLATFORMS=i686-linux,aarch64-linux`"),
            "{hint}"
        );
    }

    #[test]
    fn spare_scratch_directories_survive_another_open() {
        let tmp = tempfile::tempdir().unwrap();
        let s = open(tmp.path());
        let executor = SandboxExecutor::new(&s, options()).unwrap();
        let spare = s.builds_dir().join("spare");
        std::fs::create_dir(&spare).unwrap();
        let _other = open(tmp.path());
        assert!(spare.exists(), "swept while the executor lives");
        drop(executor);
        let _idle = open(tmp.path());
        assert!(!spare.exists(), "an idle store is swept");
    }

    #[test]
    fn builds_with_the_same_inputs_share_one_closure_and_one_index_of_it() {
        let tmp = tempfile::tempdir().unwrap();
        let s = open(tmp.path());
        let executor = SandboxExecutor::new(&s, options()).unwrap();
        let source = |name: &str| {
            let file = tmp.path().join(name);
            std::fs::write(&file, name).unwrap();
            s.add_path(&file, &store::AddOptions::default())
                .unwrap()
                .path
        };
        let reading = |sources: &[&StorePath]| Derivation {
            input_sources: sources.iter().map(|p| (*p).clone()).collect(),
            ..requiring("x86_64-linux", None)
        };
        let (a, b) = (source("a"), source("b"));
        let first = executor.input_closure(&reading(&[&a])).unwrap();
        let again = executor.input_closure(&reading(&[&a])).unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "the same inputs, another closure"
        );
        assert_eq!(first.paths, BTreeSet::from([a.clone()]));
        let other = executor.input_closure(&reading(&[&b])).unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
        assert_eq!(other.paths, BTreeSet::from([b.clone()]));
        // Every scanner of a closure finds its paths, from one index made once.
        let text = format!("{a} and {b}");
        for _ in 0..2 {
            let mut scanner = first.scanner([&b]);
            scanner.update(text.as_bytes());
            assert_eq!(scanner.into_found(), BTreeSet::from([a.clone(), b.clone()]));
        }
        let index = first.candidates.get().map(Arc::as_ptr);
        let _ = first.scanner([]);
        assert_eq!(first.candidates.get().map(Arc::as_ptr), index);
        // Past CLOSURES_KEPT other root sets, the first is computed again, the same.
        let many: Vec<StorePath> = (0..CLOSURES_KEPT)
            .map(|i| source(&format!("s{i}")))
            .collect();
        for p in &many {
            executor.input_closure(&reading(&[p])).unwrap();
        }
        let later = executor.input_closure(&reading(&[&a])).unwrap();
        assert!(!Arc::ptr_eq(&first, &later));
        assert_eq!(later.paths, first.paths);
    }
}
