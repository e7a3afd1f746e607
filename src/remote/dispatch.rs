//! Builds on remote builders or here: an [`Executor`] that sends each derivation to the
//! machine Nix's rules choose ([`machines::choose`]), or builds it in the local sandbox
//! when no machine takes it and this one can; `--max-jobs 0` builds nothing here. A remote
//! build copies the input closure the machine lacks, builds there with the log streamed
//! back, fetches the outputs and registers them only if their NAR hashes and references,
//! computed here, are what the machine claims. A machine that cannot be reached or breaks
//! off is skipped for a while and the derivation goes elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::client::{Connection, Endpoint, RemoteError};
use super::machines::{self, Choice, Machine};
use super::wire::{self, BuildSettings};
use crate::compat::StorePath;
use crate::graph::build::{log_tail, SandboxExecutor};
use crate::graph::{
    output_paths, outputs_valid, BuildFailure, BuildOutcome, Executor, Reporter, Slot,
};
use crate::model::Node;
use crate::store::{FileLock, Store, ValidPathInfo};

/// How long a machine that failed is left alone.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);

/// The state of the machines, shared by the builds.
struct State {
    /// Builds running on each machine.
    loads: Vec<u32>,
    /// When a machine that failed may be tried again.
    disabled_until: Vec<Option<Instant>>,
    /// Open connections not in use, per machine.
    idle: Vec<Vec<Connection>>,
    /// What failed, per machine (for the error when nothing is left).
    failures: Vec<Option<String>>,
}

/// Remote builders in front of the local sandbox.
pub struct Dispatcher<'a> {
    local: SandboxExecutor<'a>,
    store: &'a Store,
    machines: Vec<Machine>,
    endpoints: Vec<Endpoint>,
    /// Builds this machine runs at once (`--max-jobs`; 0: none).
    local_jobs: usize,
    state: Mutex<State>,
    changed: Condvar,
    /// One upload at a time per machine (as Nix's upload lock): two builds needing the
    /// same inputs do not send them twice.
    uploads: Vec<Mutex<()>>,
}

/// How a remote attempt ended, when not with the outputs registered.
enum Attempt {
    /// The build failed there: final.
    Failed(BuildFailure),
    /// The machine failed (unreachable, gone, or it sent outputs that do not check out):
    /// skip it and try again.
    MachineFailed(String),
}

impl<'a> Dispatcher<'a> {
    /// A dispatcher over `machines` (each must be `ssh://`), building locally with `local`
    /// when `local_jobs` > 0.
    pub fn new(
        local: SandboxExecutor<'a>,
        machines: Vec<Machine>,
        local_jobs: usize,
    ) -> Result<Dispatcher<'a>, RemoteError> {
        let endpoints = machines
            .iter()
            .map(Endpoint::of)
            .collect::<Result<Vec<_>, _>>()?;
        let n = machines.len();
        Ok(Dispatcher {
            store: local.store,
            local,
            uploads: (0..n).map(|_| Mutex::new(())).collect(),
            machines,
            endpoints,
            local_jobs,
            state: Mutex::new(State {
                loads: vec![0; n],
                disabled_until: vec![None; n],
                idle: (0..n).map(|_| Vec::new()).collect(),
                failures: vec![None; n],
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this machine builds `node` itself when no remote one takes it.
    fn can_build_locally(&self, node: &Node) -> bool {
        self.local_jobs > 0 && self.local.options.platforms.can_build_locally(&node.drv)
    }

    /// Chooses a machine (counting the build in its load; with the loads it was chosen
    /// by), or declines; waits while it must (`Postpone`).
    fn choose(
        &self,
        node: &Node,
        required: &BTreeSet<String>,
        can_local: bool,
    ) -> (Choice, BTreeMap<String, u32>) {
        let mut st = self.lock();
        loop {
            let now = Instant::now();
            let enabled: Vec<bool> = st
                .disabled_until
                .iter()
                .map(|d| d.is_none_or(|t| t <= now))
                .collect();
            let choice = machines::choose(
                &self.machines,
                &st.loads,
                &enabled,
                &node.drv.system,
                required,
                can_local,
            );
            match choice {
                Choice::Remote(i) => {
                    let loads = self
                        .machines
                        .iter()
                        .zip(&st.loads)
                        .map(|(m, l)| (m.uri.clone(), *l))
                        .collect();
                    st.loads[i] += 1;
                    return (choice, loads);
                }
                Choice::Decline => return (choice, BTreeMap::new()),
                Choice::Postpone => {
                    st = self
                        .changed
                        .wait_timeout(st, Duration::from_secs(1))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }

    /// Gives back machine `i`'s share of a build, and its connection if it is sound.
    fn done_with(&self, i: usize, conn: Option<Connection>) {
        let mut st = self.lock();
        st.loads[i] -= 1;
        if let Some(c) = conn {
            st.idle[i].push(c);
        }
        drop(st);
        self.changed.notify_all();
    }

    /// Skips machine `i` for [`RETRY_AFTER`].
    fn disable(&self, i: usize, why: &str) {
        let mut st = self.lock();
        st.disabled_until[i] = Some(Instant::now() + RETRY_AFTER);
        st.failures[i] = Some(why.to_string());
        drop(st);
        self.changed.notify_all();
    }

    /// An open connection to machine `i`: an idle one whose `ssh` still runs, or a new one.
    fn connect(&self, i: usize) -> Result<Connection, RemoteError> {
        loop {
            let idle = self.lock().idle[i].pop();
            match idle {
                Some(mut c) => {
                    if c.alive() {
                        return Ok(c);
                    }
                }
                None => return Connection::open(&self.endpoints[i], self.store.store_dir()),
            }
        }
    }

    /// Builds `node` on machine `i`.
    fn build_on(
        &self,
        i: usize,
        loads: &BTreeMap<String, u32>,
        node: &Node,
        reporter: &dyn Reporter,
        slot: &Slot<'_>,
    ) -> (Result<BuildOutcome, Attempt>, Option<Connection>) {
        let store = self.store;
        let uri = &self.machines[i].uri;
        let fail = |message: String| Attempt::Failed(failure(message));
        // The outputs' locks, as a local build takes them (another process may build them).
        let mut locks: BTreeMap<StorePath, FileLock> = BTreeMap::new();
        for p in output_paths(node).into_values() {
            match store.lock_path(&p) {
                Ok(l) => {
                    locks.insert(p, l);
                }
                Err(e) => return (Err(fail(e.to_string())), None),
            }
        }
        match outputs_valid(store, node) {
            Ok(true) => return (Ok(BuildOutcome::AlreadyValid), None),
            Ok(false) => {}
            Err(e) => return (Err(fail(e.to_string())), None),
        }
        let closure = match self.local.input_closure(&node.drv) {
            Ok(c) => c,
            Err(f) => return (Err(Attempt::Failed(f)), None),
        };
        // Started when chosen (before `ssh` connects), so that the events order the
        // builds on each machine as its load counts them.
        slot.start_remote(uri, loads);
        let mut conn = match self.connect(i) {
            Ok(c) => c,
            Err(e) => return (Err(Attempt::MachineFailed(e.to_string())), None),
        };
        let sent = {
            let _upload = self.uploads[i].lock().unwrap_or_else(|p| p.into_inner());
            conn.copy_closure(store, &closure)
        };
        if let Err(e) = sent {
            return (Err(classify(e)), None);
        }
        let log_path = store.log_path(&node.drv_path);
        let log_file = Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&log_path)
                .ok(),
        );
        let log = |line: &[u8]| {
            reporter.log_line(&node.key, line);
            if let Some(f) = log_file.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                let _ = f.write_all(line);
                let _ = f.write_all(b"\n");
            }
        };
        let options = &self.local.options;
        let settings = BuildSettings {
            max_silent_time: options.max_silent_time.map_or(0, |d| d.as_secs().max(1)),
            build_timeout: options.timeout.map_or(0, |d| d.as_secs().max(1)),
            ..Default::default()
        };
        let result =
            match conn.build_derivation(&node.drv_path, &node.drv, &closure, &settings, &log) {
                Ok(r) => r,
                Err(e) => return (Err(classify(e)), None),
            };
        drop(log_file);
        if !result.status.success() {
            let error = wire::strip_ansi(&result.error);
            let error = error.trim().trim_start_matches("error: ");
            let f = BuildFailure {
                message: format!(
                    "build of `{}` on `{uri}` failed ({:?}): {error}",
                    node.key, result.status
                ),
                tail: log_tail(&log_path, 25),
                log: log_path.exists().then(|| log_path.clone()),
            };
            return (Err(Attempt::Failed(f)), Some(conn));
        }
        match self.fetch_outputs(&mut conn, node, &closure, &locks) {
            Ok(()) => (Ok(BuildOutcome::Built), Some(conn)),
            Err(e) => (Err(e), None),
        }
    }

    /// Fetches the outputs of `node` from the machine, checks each against what the
    /// machine claims (NAR hash, size, references, found here by hashing and scanning what
    /// arrived) and registers them; an output that refers to a sibling after it.
    fn fetch_outputs(
        &self,
        conn: &mut Connection,
        node: &Node,
        closure: &crate::graph::build::InputClosure,
        locks: &BTreeMap<StorePath, FileLock>,
    ) -> Result<(), Attempt> {
        let store = self.store;
        let uri = conn.endpoint().uri.clone();
        let outputs = output_paths(node);
        let wanted: BTreeSet<StorePath> = outputs.values().cloned().collect();
        let claims = conn.query_path_infos(&wanted).map_err(classify)?;
        let staging = store
            .staging()
            .map_err(|e| Attempt::Failed(failure(e.to_string())))?;
        let mut pending = Vec::new();
        for (name, path) in &outputs {
            let printed = store.print(path);
            let Some(claim) = claims.get(path) else {
                return Err(Attempt::MachineFailed(format!(
                    "`{uri}` reported `{}` built, but does not have its output `{name}` (`{printed}`)",
                    node.key
                )));
            };
            let target = staging.path().join(path.to_string());
            let got = conn
                .fetch(path, &target, closure.scanner(&wanted))
                .map_err(classify)?;
            let mut problems = Vec::new();
            if claim.nar_hash.as_ref().is_some_and(|h| *h != got.sha256) {
                problems.push(format!(
                    "its NAR hash is {}, not the {} `{uri}` claims",
                    got.sha256.to_nix32_prefixed(),
                    claim
                        .nar_hash
                        .as_ref()
                        .map(|h| h.to_nix32_prefixed())
                        .unwrap_or_default()
                ));
            }
            if claim.nar_size != got.size {
                problems.push(format!(
                    "its NAR is {} bytes, not the {} claimed",
                    got.size, claim.nar_size
                ));
            }
            if claim.references != got.references {
                let names = |s: &BTreeSet<StorePath>| {
                    s.iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                problems.push(format!(
                    "it refers to [{}], but `{uri}` claims [{}]",
                    names(&got.references),
                    names(&claim.references)
                ));
            }
            if !problems.is_empty() {
                return Err(Attempt::MachineFailed(format!(
                    "rejected output `{name}` of `{}` (`{printed}`) from `{uri}`: {}",
                    node.key,
                    problems.join("; ")
                )));
            }
            let info = ValidPathInfo {
                path: path.clone(),
                nar_hash: got.sha256,
                nar_size: got.size,
                references: got.references,
                deriver: Some(node.drv_path.clone()),
                ca: None,
                registration_time: 0,
                signatures: Vec::new(),
                // Built elsewhere: never a round of `ksbuild check`.
                ultimate: false,
            };
            pending.push((name.clone(), target, info));
        }
        while !pending.is_empty() {
            let before = pending.len();
            let mut rest = Vec::new();
            for (name, target, info) in pending {
                let waits = info.references.iter().any(|r| {
                    r != &info.path && wanted.contains(r) && !store.is_valid(r).unwrap_or(false)
                });
                if waits {
                    rest.push((name, target, info));
                    continue;
                }
                store
                    .register_staged_locked(&target, info, &locks[&outputs[&name]])
                    .map_err(|e| {
                        Attempt::Failed(failure(format!("cannot register output `{name}`: {e}")))
                    })?;
            }
            if rest.len() == before {
                return Err(Attempt::Failed(failure(format!(
                    "outputs of `{}` refer to each other in a cycle",
                    node.key
                ))));
            }
            pending = rest;
        }
        Ok(())
    }

    /// Why nothing can build `node`: no machine fits it, or every one that does failed.
    fn nowhere(&self, node: &Node, required: &BTreeSet<String>) -> BuildFailure {
        let st = self.lock();
        let fitting: Vec<String> = self
            .machines
            .iter()
            .enumerate()
            .filter(|(_, m)| m.fits(&node.drv.system, required))
            .map(|(i, m)| match &st.failures[i] {
                Some(why) => format!("`{}` failed: {why}", m.uri),
                None => format!("`{}`", m.uri),
            })
            .collect();
        let features = if required.is_empty() {
            String::new()
        } else {
            format!(
                " with features {}",
                required.iter().cloned().collect::<Vec<_>>().join(", ")
            )
        };
        let here = if self.local_jobs == 0 {
            "--max-jobs 0 builds nothing here".to_string()
        } else {
            format!("this machine builds for {}", self.local.options.platforms)
        };
        let machines: Vec<String> = self
            .machines
            .iter()
            .map(|m| {
                format!(
                    "`{}` ({}; features: {})",
                    m.uri,
                    m.systems.join(", "),
                    m.supported_features
                        .union(&m.mandatory_features)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect();
        failure(if fitting.is_empty() {
            format!(
                "no machine can build `{}` (`{}`{features}): {here}, and no builder fits it \
                 (builders: {}); hint: add a builder for `{}`{features}",
                node.key,
                node.drv.system,
                machines.join("; "),
                node.drv.system
            )
        } else {
            format!(
                "no machine can build `{}`: {here}, and every builder that fits it failed: {}",
                node.key,
                fitting.join("; ")
            )
        })
    }
}

fn failure(message: String) -> BuildFailure {
    BuildFailure {
        message,
        log: None,
        tail: Vec::new(),
    }
}

/// A remote error as an attempt's end: the store refusing is final; the rest is the
/// machine's failure.
fn classify(e: RemoteError) -> Attempt {
    match e {
        RemoteError::Store(s) => Attempt::Failed(failure(s.to_string())),
        other => Attempt::MachineFailed(other.to_string()),
    }
}

impl Executor for Dispatcher<'_> {
    fn prepare(&self, builds: usize) {
        if self.local_jobs > 0 {
            self.local.prepare(builds);
        }
    }

    fn capacity(&self) -> usize {
        self.machines.iter().map(|m| m.max_jobs as usize).sum()
    }

    fn build(
        &self,
        node: &Node,
        reporter: &dyn Reporter,
        slot: &Slot<'_>,
    ) -> Result<BuildOutcome, BuildFailure> {
        let required = node.drv.required_system_features();
        let can_local = self.can_build_locally(node);
        // Each machine gets at most two tries per derivation.
        let mut tries = 2 * self.machines.len() + 1;
        loop {
            let (choice, loads) = self.choose(node, &required, can_local);
            match choice {
                Choice::Remote(i) => {
                    let (result, conn) = self.build_on(i, &loads, node, reporter, slot);
                    self.done_with(i, conn);
                    match result {
                        Ok(outcome) => return Ok(outcome),
                        Err(Attempt::Failed(f)) => return Err(f),
                        Err(Attempt::MachineFailed(why)) => {
                            reporter.warning(&format!(
                                "cannot build `{}` on `{}`: {why}; skipping it for {}s and \
                                 building `{}` elsewhere",
                                node.key,
                                self.machines[i].uri,
                                RETRY_AFTER.as_secs(),
                                node.key
                            ));
                            self.disable(i, &why);
                            tries -= 1;
                            if tries == 0 {
                                return Err(failure(format!(
                                    "`{}` failed on every builder tried; the last: {why}",
                                    node.key
                                )));
                            }
                        }
                    }
                }
                Choice::Postpone => unreachable!("choose waits out postponements"),
                Choice::Decline if can_local => {
                    // Here, when a local slot is free; else wait for a slot here or there.
                    if slot.try_acquire() {
                        return self.local.build(node, reporter, slot);
                    }
                    let st = self.lock();
                    let _ = self
                        .changed
                        .wait_timeout(st, Duration::from_millis(50))
                        .unwrap_or_else(|p| p.into_inner());
                }
                Choice::Decline => return Err(self.nowhere(node, &required)),
            }
        }
    }
}
