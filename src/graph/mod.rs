//! The build graph: deciding what a realisation needs, running downloads first and builds
//! after in dependency order with `-j N` workers, and reporting events. Runs builds through
//! an [`Executor`]; the scheduling itself is the pure [`queue::ReadyQueue`].

pub mod build;
pub mod picture;
pub mod queue;
pub mod why;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::compat::StorePath;
use crate::fetch::{self, FetchError, Mirrors};
use crate::model::{Lowered, Node};
use crate::store::{history, Store, StoreError};
use crate::substitute::{self, Found, Substituters, Unavailable};
use queue::ReadyQueue;

/// Something that happened during a realisation. Serialised as one JSON object per event
/// (`{"event": "build-finished", …}`) by `ksbuild realise --json`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// The plan: how many paths will be substituted (and their download and unpacked
    /// sizes), how many downloads and builds will run, and how many targets are valid. A
    /// substitution that fails is followed by a new plan, which builds instead.
    Plan {
        substitutes: usize,
        substitute_download_bytes: u64,
        substitute_nar_bytes: u64,
        fetches: usize,
        /// The size of the downloads whose size is known (the locked `.deb`s).
        fetch_bytes: u64,
        builds: usize,
        cached: usize,
        /// The paths to substitute, as printed.
        to_substitute: Vec<String>,
        /// The downloads to fetch (their keys).
        to_fetch: Vec<String>,
        /// The builds to run, every one after what it needs, with the expected time of
        /// each from the store's build history.
        to_build: Vec<PlannedBuild>,
    },
    /// The download of a path from a binary cache started.
    SubstituteStarted {
        path: String,
        substituter: String,
        /// Bytes to download.
        bytes: u64,
    },
    /// A path was downloaded from a binary cache, checked and registered.
    SubstituteFinished {
        path: String,
        seconds: f64,
        /// Bytes downloaded.
        bytes: u64,
        /// Size of its NAR (what was unpacked).
        nar_bytes: u64,
    },
    /// A path could not be substituted; what needs it is built instead.
    SubstituteFailed {
        path: String,
        substituter: String,
        error: String,
    },
    /// A node's outputs were already valid.
    Cached { target: String },
    /// A download started.
    FetchStarted { target: String, url: String },
    /// A download finished and was registered.
    FetchFinished {
        target: String,
        seconds: f64,
        path: String,
        /// The size of what was stored (its NAR).
        bytes: u64,
    },
    /// A build started: here, or on the remote builder `machine` (its store URI), chosen
    /// when the builders ran `loads` builds (by URI; this one not counted).
    BuildStarted {
        target: String,
        drv: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        machine: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        loads: Option<BTreeMap<String, u32>>,
        /// Its expected duration in seconds, from the last build of the same `.drv` or
        /// target (the store's build history).
        #[serde(skip_serializing_if = "Option::is_none")]
        eta: Option<f64>,
        /// The number of log lines that build printed.
        #[serde(skip_serializing_if = "Option::is_none")]
        expected_lines: Option<u64>,
    },
    /// Another process is building the node (it holds the lock of an output): this one
    /// waits for it, and then reports the node [`Event::Cached`] (or builds it, if the
    /// other process failed).
    BuildWaiting { target: String, drv: String },
    /// A build finished; its outputs are valid.
    BuildFinished {
        target: String,
        seconds: f64,
        outputs: BTreeMap<String, String>,
    },
    /// A download or build failed.
    Failed {
        target: String,
        seconds: f64,
        error: String,
        log: Option<String>,
    },
    /// A node was skipped because something it needs failed.
    Skipped { target: String, because: String },
    /// A target of the command and its output paths, at the end of a realisation that
    /// succeeded: also for targets that were valid already (emitted by the CLI).
    Result {
        target: String,
        outputs: BTreeMap<String, String>,
    },
}

/// A build of the plan.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PlannedBuild {
    pub target: String,
    pub drv: String,
    /// The expected duration in seconds, from the build history, if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta: Option<f64>,
    /// The number of log lines of that earlier build.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_lines: Option<u64>,
    /// The builds of the plan it waits for.
    pub needs: Vec<String>,
}

/// Receives events and build output. Only the CLI implements it.
pub trait Reporter: Sync {
    /// An event.
    fn event(&self, event: &Event);
    /// A line of a running build's output.
    fn log_line(&self, _target: &str, _line: &[u8]) {}
    /// Something the user should know that is not an event (a substituter skipped, a
    /// narinfo refused).
    fn warning(&self, _text: &str) {}
    /// `bytes` of the download of `path` (printed) have arrived.
    fn substitute_progress(&self, _path: &str, _bytes: u64) {}
}

/// The graph's reporter, as the substituters' observer.
struct SubstituteObserver<'a> {
    reporter: &'a dyn Reporter,
    store: &'a Store,
}

impl substitute::Observer for SubstituteObserver<'_> {
    fn warning(&self, text: &str) {
        self.reporter.warning(text);
    }
    fn progress(&self, path: &StorePath, bytes: u64) {
        self.reporter
            .substitute_progress(&self.store.print(path), bytes);
    }
}

/// A reporter that counts the log lines passing through it to `inner`.
struct CountLines<'a> {
    inner: &'a dyn Reporter,
    lines: std::sync::atomic::AtomicU64,
}

impl Reporter for CountLines<'_> {
    fn event(&self, event: &Event) {
        self.inner.event(event);
    }
    fn log_line(&self, target: &str, line: &[u8]) {
        self.lines
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.inner.log_line(target, line);
    }
    fn warning(&self, text: &str) {
        self.inner.warning(text);
    }
    fn substitute_progress(&self, path: &str, bytes: u64) {
        self.inner.substitute_progress(path, bytes);
    }
}

/// A reporter that ignores everything.
pub struct NoReport;
impl Reporter for NoReport {
    fn event(&self, _: &Event) {}
}

/// Why a build failed.
#[derive(Debug)]
pub struct BuildFailure {
    /// What went wrong, in one line.
    pub message: String,
    /// The build log, if there is one.
    pub log: Option<std::path::PathBuf>,
    /// The last lines of the log.
    pub tail: Vec<String>,
}

/// How a build ended well.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildOutcome {
    /// This process built the node.
    Built,
    /// The outputs became valid without this process building them (another process
    /// built them while this one waited for their locks).
    AlreadyValid,
}

/// Runs one build of a node whose inputs are all valid; on success every output is valid.
pub trait Executor: Sync {
    /// Builds `node`, holding one of the `-j` slots from `slot.acquire()` — called once
    /// all is ready to start the builder — to `slot.release()` — called once the builder
    /// and every process it started are gone, before the outputs are registered. So the
    /// next build prepares while this one runs, and starts while this one registers.
    /// A build whose outputs turn out valid without it (built by another process) takes
    /// no slot and returns [`BuildOutcome::AlreadyValid`].
    fn build(
        &self,
        node: &Node,
        reporter: &dyn Reporter,
        slot: &Slot<'_>,
    ) -> Result<BuildOutcome, BuildFailure>;

    /// Called on the thread that drives the realisation, before anything is fetched, when
    /// there is something to build (`builds` derivations): a chance to start what builds
    /// will need.
    fn prepare(&self, _builds: usize) {}

    /// How many builds it runs at once beyond the `-j` slots (on remote builders).
    fn capacity(&self) -> usize {
        0
    }
}

/// Why a realisation failed.
#[derive(Debug, thiserror::Error)]
pub enum RealiseError {
    /// Downloads failed; nothing was built.
    #[error("{} download(s) failed; nothing was built", .0.len())]
    Fetch(Vec<(String, FetchError)>),
    /// Builds failed.
    #[error("{} build(s) failed{}", failed.len(), if skipped.is_empty() { String::new() } else { format!(", {} skipped", skipped.len()) })]
    Build {
        failed: Vec<(String, BuildFailure)>,
        skipped: Vec<String>,
    },
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a realisation did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Realisation {
    /// Targets fetched.
    pub fetched: Vec<String>,
    /// Targets built.
    pub built: Vec<String>,
    /// Targets whose outputs were already valid.
    pub cached: Vec<String>,
    /// Targets whose outputs were substituted from binary caches.
    pub substituted: Vec<String>,
}

/// Whether every output of `node` is valid.
pub fn outputs_valid(store: &Store, node: &Node) -> Result<bool, StoreError> {
    for o in node.drv.outputs.values() {
        match &o.path {
            Some(p) if store.is_valid(p)? => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

/// The output paths of `node` by output name.
pub fn output_paths(node: &Node) -> BTreeMap<String, StorePath> {
    node.drv
        .outputs
        .iter()
        .filter_map(|(n, o)| o.path.clone().map(|p| (n.clone(), p)))
        .collect()
}

/// The downloads (fixed-output nodes) anywhere below `targets`, themselves included, in
/// the order a breadth-first walk meets them: what a build of the targets fetches, and
/// what a later offline build (or Nix, from a cache) needs besides the built inputs.
pub fn downloads_below(lowered: &Lowered, targets: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut found = Vec::new();
    let mut todo: std::collections::VecDeque<&String> = targets.iter().collect();
    while let Some(key) = todo.pop_front() {
        if !seen.insert(key) {
            continue;
        }
        let node = &lowered.nodes[key];
        if node.fetch.is_some() {
            found.push(key.clone());
        }
        todo.extend(node.deps.iter());
    }
    found
}

/// The outcome of a pool: keys that failed with their errors, and keys skipped (with the
/// failed key that made them unreachable).
struct PoolOutcome<E> {
    failed: Vec<(String, E)>,
    skipped: Vec<(String, String)>,
}

/// A key's hold on one of a pool's slots (`-j`): taken at most once, given back at most
/// once (and in any case when the key's work returns).
pub struct Slot<'a> {
    acquire: &'a dyn Fn(),
    try_acquire: &'a dyn Fn() -> bool,
    release: &'a dyn Fn(),
    start: &'a dyn Fn(Option<RemoteStart<'_>>),
}

/// A remote build's machine (its URI) and the builders' loads it was chosen by.
type RemoteStart<'a> = (&'a str, &'a BTreeMap<String, u32>);

impl Slot<'_> {
    /// A slot that is always free: for work outside a pool.
    pub const FREE: Slot<'static> = Slot {
        acquire: &|| {},
        try_acquire: &|| true,
        release: &|| {},
        start: &|_| {},
    };

    /// Waits for a free slot and takes it; nothing if this key holds one already.
    pub fn acquire(&self) {
        (self.acquire)()
    }

    /// Takes a free slot if there is one (or this key holds one already); never waits.
    pub fn try_acquire(&self) -> bool {
        (self.try_acquire)()
    }

    /// Marks the work started without a slot of this pool: a build that runs on a remote
    /// builder (`machine`, its URI) instead of here, chosen when the builders ran `loads`.
    pub fn start_remote(&self, machine: &str, loads: &BTreeMap<String, u32>) {
        (self.start)(Some((machine, loads)))
    }

    /// Gives the slot back, if this key holds it.
    pub fn release(&self) {
        (self.release)()
    }
}

/// The work of a pool on one key.
type PoolWork<'a, E> = dyn Fn(&str, &Slot<'_>) -> Result<(), E> + Sync + 'a;

/// Runs `work` over a DAG on twice as many workers as slots, plus `extra` workers for
/// work that needs no slot (builds on remote builders): at most `jobs` keys hold a slot at
/// once (see [`Slot`]), so a key's work before it takes its slot and after it gives it back
/// overlaps the keys holding slots.
fn run_pool<E: Send>(
    graph: &BTreeMap<String, BTreeSet<String>>,
    jobs: usize,
    extra: usize,
    work: &PoolWork<'_, E>,
) -> PoolOutcome<E> {
    struct State<E> {
        queue: ReadyQueue,
        /// Keys being worked on.
        running: usize,
        /// Keys holding a slot.
        slots: usize,
        failed: Vec<(String, E)>,
        skipped: Vec<(String, String)>,
    }
    let jobs = jobs.max(1);
    let workers = (2 * jobs + extra).min(graph.len());
    let state = Mutex::new(State {
        queue: ReadyQueue::new(graph),
        running: 0,
        slots: 0,
        failed: Vec::new(),
        skipped: Vec::new(),
    });
    let wake = Condvar::new();
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let key = {
                    let mut s = lock();
                    loop {
                        if let Some(k) = s.queue.pop() {
                            s.running += 1;
                            break Some(k);
                        }
                        if s.running == 0 {
                            break None;
                        }
                        s = wake.wait(s).unwrap_or_else(|p| p.into_inner());
                    }
                };
                let Some(key) = key else {
                    wake.notify_all();
                    return;
                };
                let held = std::sync::atomic::AtomicBool::new(false);
                let acquire = || {
                    if held.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    let mut s = lock();
                    while s.slots >= jobs {
                        s = wake.wait(s).unwrap_or_else(|p| p.into_inner());
                    }
                    s.slots += 1;
                    held.store(true, std::sync::atomic::Ordering::SeqCst);
                };
                let try_acquire = || {
                    if held.load(std::sync::atomic::Ordering::SeqCst) {
                        return true;
                    }
                    let mut s = lock();
                    if s.slots >= jobs {
                        return false;
                    }
                    s.slots += 1;
                    held.store(true, std::sync::atomic::Ordering::SeqCst);
                    true
                };
                let release = || {
                    if held.swap(false, std::sync::atomic::Ordering::SeqCst) {
                        lock().slots -= 1;
                        wake.notify_all();
                    }
                };
                let result = work(
                    &key,
                    &Slot {
                        acquire: &acquire,
                        try_acquire: &try_acquire,
                        release: &release,
                        start: &|_| {},
                    },
                );
                release();
                let mut s = lock();
                s.running -= 1;
                match result {
                    Ok(()) => s.queue.done(&key),
                    Err(e) => {
                        for lost in s.queue.failed(&key) {
                            s.skipped.push((lost, key.clone()));
                        }
                        s.failed.push((key, e));
                    }
                }
                wake.notify_all();
            });
        }
    });
    let s = state.into_inner().unwrap_or_else(|p| p.into_inner());
    PoolOutcome {
        failed: s.failed,
        skipped: s.skipped,
    }
}

/// What a realisation will do, as planned from the store and the substituters.
struct Plan {
    /// Keys whose outputs are valid.
    cached: Vec<String>,
    /// Keys whose outputs (with their closures) will be substituted.
    substituted: Vec<String>,
    /// The paths to download, with where from.
    downloads: BTreeMap<StorePath, Found>,
    /// Keys to fetch or build, with their dependencies.
    needed: BTreeMap<String, BTreeSet<String>>,
}

/// The build history of the derivations of a graph, read when first needed (a realisation
/// with nothing to build never reads it).
struct LazyHistory<'a> {
    store: &'a Store,
    lowered: &'a Lowered,
    history: std::sync::OnceLock<history::History>,
}

impl<'a> LazyHistory<'a> {
    fn new(store: &'a Store, lowered: &'a Lowered) -> Self {
        LazyHistory {
            store,
            lowered,
            history: std::sync::OnceLock::new(),
        }
    }
    fn get(&self) -> &history::History {
        self.history.get_or_init(|| {
            history::load_of(self.store, |name| self.lowered.nodes.contains_key(name))
        })
    }
}

/// The [`Event::Plan`] of `p` (its aliases merged).
fn plan_event(store: &Store, lowered: &Lowered, p: &Plan, history: &LazyHistory<'_>) -> Event {
    let is_fetch = |k: &str| lowered.nodes[k].fetch.is_some();
    let to_fetch: Vec<String> = p.needed.keys().filter(|k| is_fetch(k)).cloned().collect();
    let fetch_bytes = to_fetch
        .iter()
        .filter_map(|k| lowered.nodes[k].fetch.as_ref().and_then(|f| f.size))
        .sum();
    let to_build: Vec<PlannedBuild> = lowered
        .order
        .iter()
        .filter(|k| p.needed.contains_key(*k) && !is_fetch(k))
        .map(|k| {
            let drv = store.print(&lowered.nodes[k].drv_path);
            let last = history.get().estimate(k, &drv);
            PlannedBuild {
                target: k.clone(),
                eta: last.map(|r| r.seconds),
                expected_lines: last.map(|r| r.lines),
                drv,
                needs: p.needed[k]
                    .iter()
                    .filter(|d| p.needed.contains_key(*d) && !is_fetch(d))
                    .cloned()
                    .collect(),
            }
        })
        .collect();
    Event::Plan {
        substitutes: p.downloads.len(),
        substitute_download_bytes: p.downloads.values().map(Found::download_size).sum(),
        substitute_nar_bytes: p.downloads.values().map(|f| f.info.nar_size).sum(),
        fetches: to_fetch.len(),
        fetch_bytes,
        builds: to_build.len(),
        cached: p.cached.len(),
        to_substitute: p.downloads.keys().map(|d| store.print(d)).collect(),
        to_fetch,
        to_build,
    }
}

/// What [`realise`] would do first, and nothing else: the [`Event::Plan`] of `roots`
/// (substituters are asked what they hold; nothing is downloaded or built).
pub fn dry_run(
    store: &Store,
    lowered: &Lowered,
    roots: &[String],
    substituters: &Substituters,
    reporter: &dyn Reporter,
) -> Result<Event, StoreError> {
    let observer = SubstituteObserver { reporter, store };
    let mut p = plan(store, lowered, roots, substituters, &observer)?;
    merge_aliases(lowered, &mut p.needed);
    Ok(plan_event(
        store,
        lowered,
        &p,
        &LazyHistory::new(store, lowered),
    ))
}

/// Walks the graph from `roots`: a node whose outputs are valid is cached, one whose
/// outputs' closures the substituters hold is substituted, and neither prunes its
/// subtree; the rest is needed. The nodes of each level of the walk are looked up in
/// parallel (lookups wait on the network); the targets' own outputs are asked of every
/// cache, deeper nodes only of the caches that want mass queries.
fn plan(
    store: &Store,
    lowered: &Lowered,
    roots: &[String],
    substituters: &Substituters,
    observer: &SubstituteObserver<'_>,
) -> Result<Plan, StoreError> {
    let mut plan = Plan {
        cached: Vec::new(),
        substituted: Vec::new(),
        downloads: BTreeMap::new(),
        needed: BTreeMap::new(),
    };
    let mut seen = BTreeSet::new();
    let mut level: Vec<&str> = roots.iter().map(String::as_str).collect();
    let mut depth = 0;
    while !level.is_empty() {
        let mut candidates = Vec::new();
        for key in level.drain(..) {
            if !seen.insert(key) {
                continue;
            }
            if outputs_valid(store, &lowered.nodes[key])? {
                plan.cached.push(key.to_string());
            } else {
                candidates.push(key);
            }
        }
        let mass = depth > 0;
        let lookups: Vec<Option<BTreeMap<StorePath, Found>>> = if substituters.is_empty() {
            candidates.iter().map(|_| None).collect()
        } else {
            lookup_parallel(&candidates, |key| {
                let node = &lowered.nodes[*key];
                let outputs: Option<Vec<StorePath>> =
                    node.drv.outputs.values().map(|o| o.path.clone()).collect();
                match substituters.plan_closure(store, &outputs?, mass, observer) {
                    Ok(downloads) => Some(downloads),
                    Err(Unavailable::MissingReference { path, reference }) => {
                        observer.reporter.warning(&format!(
                            "not substituting `{key}`: `{}` is in a binary cache, but `{}`, which it references, is in none; building it",
                            store.print(&path),
                            store.print(&reference)
                        ));
                        None
                    }
                    Err(Unavailable::Absent(_) | Unavailable::Failed(_)) => None,
                }
            })
        };
        for (key, found) in candidates.into_iter().zip(lookups) {
            let node = &lowered.nodes[key];
            match found {
                Some(downloads) => {
                    plan.substituted.push(key.to_string());
                    plan.downloads.extend(downloads);
                }
                None => {
                    plan.needed.insert(key.to_string(), node.deps.clone());
                    level.extend(node.deps.iter().map(String::as_str));
                }
            }
        }
        depth += 1;
    }
    Ok(plan)
}

/// `f` of each item on up to 8 threads (lookups wait on the network, not the CPU).
fn lookup_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(8);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}

/// Keys that lower to one derivation (the same `.deb` in two environments) are one piece
/// of work: the first key does it, and the others (returned, with their first key) are
/// reported cached after it. Removes them from `needed`.
fn merge_aliases(
    lowered: &Lowered,
    needed: &mut BTreeMap<String, BTreeSet<String>>,
) -> BTreeMap<String, String> {
    let mut first_of: BTreeMap<&StorePath, &str> = BTreeMap::new();
    let mut aliases: BTreeMap<String, String> = BTreeMap::new();
    for key in needed.keys() {
        let drv = &lowered.nodes[key].drv_path;
        match first_of.get(drv) {
            Some(first) => {
                aliases.insert(key.clone(), first.to_string());
            }
            None => {
                first_of.insert(drv, key);
            }
        }
    }
    for (alias, first) in &aliases {
        needed.remove(alias);
        for deps in needed.values_mut() {
            if deps.remove(alias) {
                deps.insert(first.clone());
            }
        }
    }
    aliases
}

/// Downloads `downloads` from the binary caches, references first, several at a time;
/// returns the paths that failed (each reported, and not offered again).
fn substitute_all(
    store: &Store,
    substituters: &Substituters,
    downloads: &BTreeMap<StorePath, Found>,
    jobs: usize,
    observer: &SubstituteObserver<'_>,
) -> Vec<StorePath> {
    let by_key: BTreeMap<String, &Found> =
        downloads.iter().map(|(p, f)| (p.to_string(), f)).collect();
    let graph: BTreeMap<String, BTreeSet<String>> = downloads
        .iter()
        .map(|(p, f)| {
            let deps = f
                .info
                .references
                .iter()
                .filter(|r| *r != p && downloads.contains_key(*r))
                .map(|r| r.to_string())
                .collect();
            (p.to_string(), deps)
        })
        .collect();
    let reporter = observer.reporter;
    let substitute_one = |key: &str, slot: &Slot<'_>| -> Result<(), ()> {
        let found = by_key[key];
        let path = store.print(&found.info.store_path);
        slot.acquire();
        reporter.event(&Event::SubstituteStarted {
            path: path.clone(),
            substituter: found.substituter.clone(),
            bytes: found.download_size(),
        });
        let start = Instant::now();
        match substituters.substitute(store, found, observer) {
            Ok(info) => {
                reporter.event(&Event::SubstituteFinished {
                    path,
                    seconds: secs(start.elapsed()),
                    bytes: found.download_size(),
                    nar_bytes: info.nar_size,
                });
                Ok(())
            }
            Err(e) => {
                substituters.mark_failed(&found.info.store_path);
                // The whole chain: "NAR error while processing …: unexpected end of file".
                let mut error = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    error.push_str(&format!(": {s}"));
                    source = s.source();
                }
                reporter.event(&Event::SubstituteFailed {
                    path,
                    substituter: found.substituter.clone(),
                    error,
                });
                Err(())
            }
        }
    };
    let outcome = run_pool(&graph, jobs.max(4), 0, &substitute_one);
    let mut failed: Vec<StorePath> = outcome
        .failed
        .iter()
        .map(|(k, _)| by_key[k].info.store_path.clone())
        .collect();
    // What needs a failed path was not tried: it is not offered again either.
    for (k, _) in &outcome.skipped {
        substituters.mark_failed(&by_key[k].info.store_path);
        failed.push(by_key[k].info.store_path.clone());
    }
    failed
}

/// Realises `roots`: nodes whose outputs are valid are skipped with their whole subtree,
/// and so are nodes whose outputs the substituters hold (their closures are downloaded
/// first; a failed download is reported and what needs it is built instead); every needed
/// download then runs (so a missing input fails before any long build), then builds run
/// in dependency order with `jobs` workers.
#[allow(clippy::too_many_arguments)]
pub fn realise(
    store: &Store,
    lowered: &Lowered,
    roots: &[String],
    mirrors: &Mirrors,
    substituters: &Substituters,
    executor: &dyn Executor,
    jobs: usize,
    reporter: &dyn Reporter,
) -> Result<Realisation, RealiseError> {
    let mut result = Realisation::default();
    let observer = SubstituteObserver { reporter, store };
    let history = LazyHistory::new(store, lowered);
    let mut reported = BTreeSet::new();
    let mut substituted = BTreeSet::new();
    let (needed, aliases, cached) = loop {
        let mut p = plan(store, lowered, roots, substituters, &observer)?;
        for key in &p.cached {
            if !substituted.contains(key) && reported.insert(key.clone()) {
                reporter.event(&Event::Cached {
                    target: key.clone(),
                });
            }
        }
        let aliases = merge_aliases(lowered, &mut p.needed);
        reporter.event(&plan_event(store, lowered, &p, &history));
        if p.downloads.is_empty() {
            break (p.needed, aliases, p.cached);
        }
        let failed = substitute_all(store, substituters, &p.downloads, jobs, &observer);
        for key in &p.substituted {
            if outputs_valid(store, &lowered.nodes[key])? {
                substituted.insert(key.clone());
            }
        }
        if failed.is_empty() {
            break (p.needed, aliases, p.cached);
        }
        // Plan again: what was substituted is valid now, and what failed is built.
    };
    result.substituted = substituted.iter().cloned().collect();
    result.cached = cached
        .into_iter()
        .filter(|k| !substituted.contains(k))
        .collect();
    let (fetches, builds): (BTreeMap<_, _>, BTreeMap<_, _>) = needed
        .into_iter()
        .partition(|(k, _)| lowered.nodes[k].fetch.is_some());
    if !builds.is_empty() {
        executor.prepare(builds.len());
    }

    let fetch_one = |key: &str, slot: &Slot<'_>| -> Result<(), FetchError> {
        slot.acquire();
        let node = &lowered.nodes[key];
        let url = node
            .fetch
            .as_ref()
            .map(|f| f.url.clone())
            .unwrap_or_default();
        reporter.event(&Event::FetchStarted {
            target: key.to_string(),
            url,
        });
        let start = Instant::now();
        match fetch::realise(store, node, mirrors) {
            Ok(info) => {
                reporter.event(&Event::FetchFinished {
                    target: key.to_string(),
                    seconds: secs(start.elapsed()),
                    path: store.print(&info.path),
                    bytes: info.nar_size,
                });
                Ok(())
            }
            Err(e) => {
                reporter.event(&Event::Failed {
                    target: key.to_string(),
                    seconds: secs(start.elapsed()),
                    error: e.to_string(),
                    log: None,
                });
                Err(e)
            }
        }
    };
    let fetch_graph: BTreeMap<String, BTreeSet<String>> = fetches
        .keys()
        .map(|k| (k.clone(), BTreeSet::new()))
        .collect();
    let outcome = run_pool(&fetch_graph, jobs.max(4), 0, &fetch_one);
    if !outcome.failed.is_empty() {
        return Err(RealiseError::Fetch(outcome.failed));
    }
    result.fetched = fetches.into_keys().collect();
    let report_aliases = |done: &[String]| {
        for (alias, first) in &aliases {
            if done.contains(first) {
                reporter.event(&Event::Cached {
                    target: alias.clone(),
                });
            }
        }
    };
    report_aliases(&result.fetched);

    // Nodes another process built while this one waited for their locks.
    let built_elsewhere: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let build_one = |key: &str, slot: &Slot<'_>| -> Result<(), BuildFailure> {
        let node = &lowered.nodes[key];
        // A build starts when it has its slot (or ends without having needed one).
        let start = std::sync::OnceLock::new();
        let started_on = |machine: Option<RemoteStart<'_>>| {
            *start.get_or_init(|| {
                let drv = store.print(&node.drv_path);
                let last = history.get().estimate(key, &drv);
                reporter.event(&Event::BuildStarted {
                    target: key.to_string(),
                    eta: last.map(|r| r.seconds),
                    expected_lines: last.map(|r| r.lines),
                    drv,
                    machine: machine.map(|(m, _)| m.to_string()),
                    loads: machine.map(|(_, l)| l.clone()),
                });
                Instant::now()
            })
        };
        let started = || started_on(None);
        let acquire = || {
            slot.acquire();
            started();
        };
        let try_acquire = || {
            let taken = slot.try_acquire();
            if taken {
                started();
            }
            taken
        };
        let release = || slot.release();
        let start_remote = |machine: Option<RemoteStart<'_>>| {
            started_on(machine);
        };
        // The build's log lines are counted as they pass (for the history), not read again.
        let counted = CountLines {
            inner: reporter,
            lines: std::sync::atomic::AtomicU64::new(0),
        };
        let result = executor.build(
            node,
            &counted,
            &Slot {
                acquire: &acquire,
                try_acquire: &try_acquire,
                release: &release,
                start: &start_remote,
            },
        );
        match result {
            Ok(BuildOutcome::AlreadyValid) => {
                reporter.event(&Event::Cached {
                    target: key.to_string(),
                });
                built_elsewhere
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(key.to_string());
                Ok(())
            }
            Ok(BuildOutcome::Built) => {
                let start = started();
                let seconds = secs(start.elapsed());
                let drv = store.print(&node.drv_path);
                let lines = counted.lines.load(std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = history::record(store, key, &drv, seconds, lines) {
                    reporter.warning(&format!(
                        "cannot record the build of `{key}` in `{}`: {e}",
                        history::path(store).display()
                    ));
                }
                let outputs = output_paths(node)
                    .into_iter()
                    .map(|(n, p)| (n, store.print(&p)))
                    .collect();
                reporter.event(&Event::BuildFinished {
                    target: key.to_string(),
                    seconds,
                    outputs,
                });
                Ok(())
            }
            Err(f) => {
                let start = started();
                reporter.event(&Event::Failed {
                    target: key.to_string(),
                    seconds: secs(start.elapsed()),
                    error: f.message.clone(),
                    log: f.log.as_ref().map(|l| l.display().to_string()),
                });
                Err(f)
            }
        }
    };
    let PoolOutcome { failed, skipped } = run_pool(&builds, jobs, executor.capacity(), &build_one);
    for (k, because) in &skipped {
        reporter.event(&Event::Skipped {
            target: k.clone(),
            because: because.clone(),
        });
    }
    if !failed.is_empty() {
        return Err(RealiseError::Build {
            failed,
            skipped: skipped.into_iter().map(|(k, _)| k).collect(),
        });
    }
    let elsewhere = built_elsewhere
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    result.built = builds
        .into_keys()
        .filter(|k| !elsewhere.contains(k))
        .collect();
    result.cached.extend(elsewhere);
    report_aliases(&result.built);
    result.cached.extend(aliases.into_keys());
    Ok(result)
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Keys hold a slot from acquiring to releasing it; what they do before and after
    /// overlaps the keys holding slots, and dependents still wait for the whole work of
    /// their dependencies.
    #[test]
    fn work_outside_a_slot_overlaps_the_keys_in_slots() {
        let mut graph: BTreeMap<String, BTreeSet<String>> =
            (0..6).map(|i| (format!("k{i}"), BTreeSet::new())).collect();
        graph.insert("last".into(), ["k0".to_string()].into());
        let (in_slot, max_in_slot) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let (running, max_running) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let finished = Mutex::new(BTreeSet::new());
        let work = |key: &str, slot: &Slot<'_>| -> Result<(), ()> {
            if key == "last" {
                assert!(finished.lock().unwrap().contains("k0"));
            }
            max_running.fetch_max(running.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            // Before the slot: long enough for the key in the slot to be there meanwhile.
            std::thread::sleep(Duration::from_millis(10));
            slot.acquire();
            slot.acquire(); // a second call changes nothing
            max_in_slot.fetch_max(in_slot.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(5));
            in_slot.fetch_sub(1, Ordering::SeqCst);
            slot.release();
            slot.release();
            // After the slot: long enough for the next key to take it.
            std::thread::sleep(Duration::from_millis(30));
            running.fetch_sub(1, Ordering::SeqCst);
            finished.lock().unwrap().insert(key.to_string());
            Ok(())
        };
        let outcome = run_pool(&graph, 1, 0, &work);
        assert!(outcome.failed.is_empty() && outcome.skipped.is_empty());
        assert_eq!(finished.lock().unwrap().len(), 7);
        assert_eq!(
            max_in_slot.load(Ordering::SeqCst),
            1,
            "-j1 ran two keys in slots"
        );
        assert_eq!(
            max_running.load(Ordering::SeqCst),
            2,
            "no overlap outside the slot"
        );
    }
}
