//! One build of one derivation in the sandbox: assembling the input closure, the build
//! directories and the log, running the builder, and registering the outputs. Does I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use super::{output_paths, outputs_valid, BuildFailure, Executor, Reporter, Slot};
use crate::compat::derivation::Derivation;
use crate::compat::StorePath;
use crate::model::Node;
use crate::sandbox::{self, SandboxSpec};
use crate::store::{self, FileLock, Store};
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
    /// How many builds run at once (`-j`).
    pub jobs: usize,
}

/// Builds derivations in ksbuild's namespace sandbox.
pub struct SandboxExecutor<'a> {
    /// The store.
    pub store: &'a Store,
    /// Build settings.
    pub options: BuildOptions,
    /// Scratch directories of successful builds, emptied, for the next builds of this
    /// process: reusing them spares two directories created and removed per build.
    spare: Mutex<Vec<Scratch>>,
    /// The store's GC lock, shared, for the executor's lifetime: the spare scratch
    /// directories wait in `builds/` between builds, where another process opening an
    /// idle store would sweep them away.
    _gc: FileLock,
    /// The sandbox: with a zygote once [`Executor::prepare`] has run, else without.
    sandbox: std::sync::OnceLock<sandbox::Sandbox>,
}

impl<'a> SandboxExecutor<'a> {
    /// An executor building into `store`.
    pub fn new(
        store: &'a Store,
        options: BuildOptions,
    ) -> Result<SandboxExecutor<'a>, crate::store::StoreError> {
        Ok(SandboxExecutor {
            store,
            options,
            spare: Mutex::new(Vec::new()),
            _gc: store.lock_gc_shared()?,
            sandbox: std::sync::OnceLock::new(),
        })
    }

    /// Empties the scratch directories of a successful build and keeps them for the next
    /// build; if they cannot be emptied they are removed (on drop).
    fn recycle(&self, scratch: Scratch) {
        if scratch.empty().is_ok() {
            self.spare
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(scratch);
        }
    }
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
    pub fn input_closure(&self, drv: &Derivation) -> Result<BTreeSet<StorePath>, BuildFailure> {
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
        store
            .closure(roots)
            .map_err(|e| failure(format!("input closure: {e}")))
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
    ) -> Result<(PathBuf, Scratch), BuildFailure> {
        let store = self.store;
        let t0 = std::time::Instant::now();
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
        let spare = self.spare.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let scratch = match spare {
            Some(s) => s,
            None => Scratch {
                root: scratch_dir("")?,
                build: scratch_dir(".build")?,
            },
        };
        let root_dir = scratch.root.path().to_path_buf();
        let build_dir = scratch.build.path().to_path_buf();
        let log = store.log_path(&node.drv_path);
        // Emptied rather than removed: the sandbox appends to it, and reusing the inode
        // spares the filesystem a deletion and a creation per rebuild.
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&log);
        timing::report("build: scratch directories", t0);
        let t0 = std::time::Instant::now();
        let spec = SandboxSpec {
            builder: node.drv.builder.clone(),
            args: node.drv.args.clone(),
            env: node.drv.env.clone(),
            store_dir: store.store_dir().to_string(),
            inputs: closure
                .iter()
                .map(|p| (store.physical_path(p), store.print(p)))
                .collect(),
            root_dir: root_dir.clone(),
            build_dir: build_dir.clone(),
            cores: self.options.cores,
            timeout: self.options.timeout,
            max_silent_time: self.options.max_silent_time,
            max_processes: Some(self.options.max_processes),
            build_user: sandbox::BuildUser::Auto,
            log: log.clone(),
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
        let keep = |scratch: Scratch, message: String| -> BuildFailure {
            let mut f = with_log(message);
            if self.options.keep_failed {
                let kept = store
                    .failed_builds_dir()
                    .join(scratch.build.path().file_name().unwrap_or_default());
                if std::fs::rename(scratch.build.keep(), &kept).is_ok() {
                    f.message.push_str(&format!(" (kept `{}`)", kept.display()));
                }
            }
            f
        };
        match outcome {
            Err(e) => {
                let hint = e.hint().map(|h| format!("; hint: {h}")).unwrap_or_default();
                Err(keep(scratch, format!("sandbox: {e}{hint}")))
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
                Err(keep(scratch, format!("builder of `{}` {how}", node.key)))
            }
            Ok(_) => Ok((root_dir, scratch)),
        }
    }

    /// Registers the outputs a build left in `out_dir`; an output that refers to a sibling
    /// is registered after it (Nix refuses cycles between outputs, and so does this).
    fn register_outputs(
        &self,
        node: &Node,
        out_dir: &std::path::Path,
        closure: &BTreeSet<StorePath>,
        locks: &BTreeMap<StorePath, FileLock>,
    ) -> Result<(), BuildFailure> {
        let store = self.store;
        let outputs = output_paths(node);
        let mut candidates = closure.clone();
        candidates.extend(outputs.values().cloned());
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
            let info = store
                .prepare_output(&staged, path, &candidates, Some(&node.drv_path), None)
                .map_err(|e| failure(format!("output `{name}`: {e}")))?;
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

impl Executor for SandboxExecutor<'_> {
    /// Starts the sandbox's zygotes, one per build that runs at once. They live as long as
    /// the calling thread, which must outlive the builds (the thread driving the
    /// realisation does).
    fn prepare(&self, builds: usize) {
        let zygotes = self.options.jobs.min(builds).max(1);
        self.sandbox
            .get_or_init(|| sandbox::Sandbox::new().with_zygotes(zygotes));
    }

    fn build(
        &self,
        node: &Node,
        reporter: &dyn Reporter,
        slot: &Slot<'_>,
    ) -> Result<(), BuildFailure> {
        let store = self.store;
        // Another process may be building the same derivation: wait for it, then reuse.
        let locks: BTreeMap<StorePath, FileLock> = output_paths(node)
            .into_values()
            .map(|p| store.lock_path(&p).map(|l| (p, l)))
            .collect::<Result<_, _>>()
            .map_err(|e| failure(e.to_string()))?;
        if outputs_valid(store, node).map_err(|e| failure(e.to_string()))? {
            return Ok(());
        }
        let t0 = std::time::Instant::now();
        let closure = self.input_closure(&node.drv)?;
        timing::report("build: input closure", t0);
        let (out_dir, scratch) = self.run_sandboxed(node, &closure, reporter, slot)?;
        let t0 = std::time::Instant::now();
        self.register_outputs(node, &out_dir, &closure, &locks)?;
        timing::report("build: register outputs", t0);
        let t0 = std::time::Instant::now();
        self.recycle(scratch);
        timing::report("build: empty scratch", t0);
        Ok(())
    }
}

/// The scratch space of one build, removed on drop: the sandbox's root directory (which
/// holds the outputs until they are registered) and its `/build`.
pub struct Scratch {
    /// The root directory.
    pub root: tempfile::TempDir,
    /// `/build`.
    pub build: tempfile::TempDir,
}

impl Scratch {
    /// Removes everything in both directories (outputs left over, what the builder left in
    /// `/build`), keeping the directories — and, in the root, the inputs' empty mount
    /// points, which the next build reuses if it has the same inputs (the sandbox removes
    /// the others): on some filesystems, a directory created and removed per build is the
    /// costliest part of a small build (an unjournaled ext4 skips recently freed inodes
    /// when it allocates one, checking each).
    fn empty(&self) -> Result<(), store::StoreError> {
        for dir in [self.root.path(), self.build.path()] {
            let entries = std::fs::read_dir(dir).map_err(store::StoreError::io("list", dir))?;
            for entry in entries {
                let entry = entry.map_err(store::StoreError::io("list", dir))?;
                let path = entry.path();
                if dir == self.root.path() && sandbox::is_left_mount_point(&path) {
                    continue;
                }
                store::remove_tree(&path)?;
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

impl SandboxExecutor<'_> {
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
        let closure = self.input_closure(&node.drv)?;
        timing::report("build: input closure", t0);
        let (out_dir, scratch) = self.run_sandboxed(node, &closure, reporter, &Slot::FREE)?;
        let t0 = std::time::Instant::now();
        let outputs = output_paths(node);
        let mut candidates = closure.clone();
        candidates.extend(outputs.values().cloned());
        let mut mismatches = Vec::new();
        for (name, path) in &outputs {
            let registered = store
                .path_info(path)
                .map_err(|e| failure(format!("`--check` needs valid outputs: {e}")))?;
            let staged = out_dir.join(path.to_string());
            if std::fs::symlink_metadata(&staged).is_err() {
                return Err(failure(format!(
                    "the rebuild of `{}` did not produce its output `{name}`",
                    node.key
                )));
            }
            let rebuilt = store
                .prepare_output(&staged, path, &candidates, Some(&node.drv_path), None)
                .map_err(|e| failure(format!("output `{name}`: {e}")))?;
            if rebuilt.nar_hash != registered.nar_hash {
                let kept = store.check_dir().join(path.to_string());
                let _ = store::remove_tree(&kept);
                std::fs::rename(&staged, &kept)
                    .map_err(|e| failure(format!("cannot keep the rebuild: {e}")))?;
                mismatches.push(CheckMismatch {
                    target: node.key.clone(),
                    output: name.clone(),
                    path: store.print(path),
                    expected: registered.nar_hash.to_sri(),
                    actual: rebuilt.nar_hash.to_sri(),
                    kept: kept.display().to_string(),
                });
            }
        }
        timing::report("check: hash outputs", t0);
        let t0 = std::time::Instant::now();
        self.recycle(scratch);
        timing::report("build: empty scratch", t0);
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

    #[test]
    fn spare_scratch_directories_survive_another_open() {
        let tmp = tempfile::tempdir().unwrap();
        let s = open(tmp.path());
        let options = BuildOptions {
            cores: 1,
            timeout: None,
            max_silent_time: None,
            max_processes: sandbox::DEFAULT_MAX_PROCESSES,
            keep_failed: false,
            jobs: 1,
        };
        let executor = SandboxExecutor::new(&s, options).unwrap();
        let spare = s.builds_dir().join("spare");
        std::fs::create_dir(&spare).unwrap();
        let _other = open(tmp.path());
        assert!(spare.exists(), "swept while the executor lives");
        drop(executor);
        let _idle = open(tmp.path());
        assert!(!spare.exists(), "an idle store is swept");
    }
}
