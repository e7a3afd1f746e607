//! Why a target would be rebuilt: each realisation records what went into every node it
//! built or fetched; `why-rebuild` compares the current lowering with that record.
//!
//! The records are lines of one log, `<store>/nix/var/ksbuild/realisations.log`, each
//! `{"target":…,"record":…}`, appended with one `write` per realisation to a file opened
//! `O_APPEND` (processes sharing a store never interleave), the last line of a target
//! winning. A file per target cost an inode per build: on an unjournaled ext4, 150 ms for
//! 1,000 trivial builds that took 2 s in all. Past [`COMPACT_BYTES`] the log is rewritten
//! with the last record of each target (a record appended by another process meanwhile is
//! lost: it explains, it decides nothing). Records of the earlier form, a file per target in
//! `realisations/`, are still read where the log has none. Reads and writes those records, and
//! reads the `.drv` files an earlier output was built from (`graph --changed-since`), which
//! are compared the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::compat::derivation::Derivation;
use crate::compat::StorePath;
use crate::model::{Lowered, Node};
use crate::store::{Store, StoreError};

/// What went into one node when it was last realised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The `.drv` path.
    pub drv_path: String,
    /// Inputs by name → store path.
    pub inputs: BTreeMap<String, String>,
    /// Input nodes by input name → target, for following a change upstream.
    pub input_targets: BTreeMap<String, String>,
    /// The builder.
    pub builder: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// The environment (output paths included).
    pub env: BTreeMap<String, String>,
}

impl Record {
    /// The record of `node` as lowered now; `producers` maps printed output paths to the
    /// nodes that make them ([`producers`] of at least the node's dependencies).
    pub fn of(store: &Store, producers: &BTreeMap<String, String>, node: &Node) -> Record {
        let input_targets = node
            .inputs
            .iter()
            .filter_map(|(name, path)| producers.get(path).map(|key| (name.clone(), key.clone())))
            .collect();
        Record {
            drv_path: store.print(&node.drv_path),
            inputs: node.inputs.clone(),
            input_targets,
            builder: node.drv.builder.clone(),
            args: node.drv.args.clone(),
            env: node.drv.env.clone(),
        }
    }
}

/// Printed output path → key of the node producing it, for the nodes `keys`. (Each
/// node's derivation is parsed for its outputs: a record needs those of its node's
/// dependencies only, not of the whole graph.)
pub fn producers<'a>(
    store: &Store,
    lowered: &Lowered,
    keys: impl IntoIterator<Item = &'a String>,
) -> BTreeMap<String, String> {
    keys.into_iter()
        .filter_map(|k| lowered.nodes.get(k))
        .flat_map(|n| {
            n.drv
                .outputs
                .values()
                .filter_map(|o| o.path.as_ref())
                .map(|p| (store.print(p), n.key.clone()))
        })
        .collect()
}

/// The log's size past which it is compacted (about 16,000 records).
pub const COMPACT_BYTES: u64 = 8 << 20;

/// A line of the log.
#[derive(Serialize, Deserialize)]
struct Line {
    target: String,
    record: Record,
}

fn log_file(store: &Store) -> PathBuf {
    store.var_dir().join("realisations.log")
}

/// Where the earlier form kept the record of `key`.
fn record_file(store: &Store, key: &str) -> PathBuf {
    store
        .var_dir()
        .join("realisations")
        .join(format!("{key}.json"))
}

/// How each line of `key` starts (the target is serialised first).
fn line_prefix(key: &str) -> String {
    let target = serde_json::to_string(key).unwrap_or_default();
    format!("{{\"target\":{target},")
}

/// Records what went into the nodes `keys` (those a realisation just built or fetched:
/// cached nodes keep the record of the realisation that built them, so a no-op
/// realisation writes nothing).
pub fn save<'a>(
    store: &Store,
    lowered: &Lowered,
    keys: impl IntoIterator<Item = &'a String>,
) -> Result<(), StoreError> {
    let nodes: Vec<_> = keys
        .into_iter()
        .filter_map(|k| lowered.nodes.get(k))
        .collect();
    if nodes.is_empty() {
        return Ok(());
    }
    let producers = producers(store, lowered, nodes.iter().flat_map(|n| &n.deps));
    let mut lines = Vec::new();
    for node in nodes {
        let line = Line {
            target: node.key.clone(),
            record: Record::of(store, &producers, node),
        };
        serde_json::to_writer(&mut lines, &line).map_err(|e| StoreError::Refused(e.to_string()))?;
        lines.push(b'\n');
    }
    let file = log_file(store);
    fold_in_earlier_form(store, &file)?;
    crate::store::append_to_log(&file, &lines, COMPACT_BYTES, compacted)
}

/// Moves the records of the earlier form (a file per target in `realisations/`, which
/// nothing removed) into the log, before its lines (they are older), then removes them and
/// the folder. A store without that folder pays one failed `open`. As in a compaction, a
/// line another process appends between the read and the rename is lost: that costs an
/// explanation, never a build.
fn fold_in_earlier_form(store: &Store, file: &Path) -> Result<(), StoreError> {
    let dir = store.var_dir().join("realisations");
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io("read", &dir)(e)),
    };
    let mut text = Vec::new();
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(StoreError::io("read", &dir))?.path();
        let Some(target) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .map(String::from)
        else {
            continue;
        };
        // One that does not parse answered nothing before either.
        let bytes = std::fs::read(&path).map_err(StoreError::io("read", &path))?;
        if let Ok(record) = serde_json::from_slice::<Record>(&bytes) {
            serde_json::to_writer(&mut text, &Line { target, record })
                .map_err(|e| StoreError::Refused(e.to_string()))?;
            text.push(b'\n');
        }
        files.push(path);
    }
    match std::fs::read(file) {
        Ok(log) => text.extend(log),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io("read", file)(e)),
    }
    crate::store::write_atomic(file, &text)?;
    for path in files {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(StoreError::io("remove", &path)(e))
            }
            _ => {}
        }
    }
    // Anything else left there (not a record) keeps the folder.
    let _ = std::fs::remove_dir(&dir);
    Ok(())
}

/// The log `text` with the last line of each target.
fn compacted(text: &[u8]) -> Vec<u8> {
    let mut last: BTreeMap<String, &[u8]> = BTreeMap::new();
    for line in text.split(|b| *b == b'\n') {
        if let Ok(l) = serde_json::from_slice::<Line>(line) {
            last.insert(l.target, line);
        }
    }
    let mut kept = Vec::with_capacity(text.len());
    for line in last.values() {
        kept.extend_from_slice(line);
        kept.push(b'\n');
    }
    kept
}

/// The last record of `key`, if any: the log's last line of it (a line cut short by a
/// crash is skipped), else a file of the earlier form.
pub fn load(store: &Store, key: &str) -> Option<Record> {
    let prefix = line_prefix(key);
    let in_log = std::fs::read(log_file(store)).ok().and_then(|text| {
        text.split(|b| *b == b'\n')
            .rev()
            .filter(|line| line.starts_with(prefix.as_bytes()))
            .find_map(|line| serde_json::from_slice::<Line>(line).ok())
            .map(|l| l.record)
    });
    in_log.or_else(|| serde_json::from_slice(&std::fs::read(record_file(store, key)).ok()?).ok())
}

/// One reason a target changed.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Change {
    /// An input's store path changed; `upstream` names the target behind it, to ask in turn.
    Input {
        name: String,
        before: Option<String>,
        now: Option<String>,
        upstream: Option<String>,
    },
    /// The builder changed.
    Builder { before: String, now: String },
    /// The arguments changed.
    Args {
        before: Vec<String>,
        now: Vec<String>,
    },
    /// An environment variable changed (output paths are left out: they follow from the rest).
    Env {
        name: String,
        before: Option<String>,
        now: Option<String>,
    },
}

/// The verdict of `why-rebuild`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    /// The target.
    pub target: String,
    /// Whether its outputs are valid in the store now (nothing would be built).
    pub up_to_date: bool,
    /// Whether a previous realisation was recorded.
    pub recorded: bool,
    /// The `.drv` path then and now.
    pub drv_before: Option<String>,
    /// The `.drv` path now.
    pub drv_now: String,
    /// What changed.
    pub changes: Vec<Change>,
}

/// Compares `node` as lowered now with its last record.
pub fn explain(store: &Store, lowered: &Lowered, node: &Node, up_to_date: bool) -> Verdict {
    let now = Record::of(store, &producers(store, lowered, &node.deps), node);
    let before = load(store, &node.key);
    let changes = before
        .as_ref()
        .map(|b| compare(node, b, &now))
        .unwrap_or_default();
    Verdict {
        target: node.key.clone(),
        up_to_date,
        recorded: before.is_some(),
        drv_before: before.map(|b| b.drv_path),
        drv_now: now.drv_path,
        changes,
    }
}

/// What changed in `node` from `b` (what went into it before) to `now` (as lowered now):
/// inputs whose store paths changed, the builder, the arguments (with input paths written
/// `${name}`, so that a changed input is not told twice), environment variables (output
/// paths and variables that changed only through an input's path left out).
pub fn compare(node: &Node, b: &Record, now: &Record) -> Vec<Change> {
    let mut changes = Vec::new();
    let names: std::collections::BTreeSet<&String> =
        b.inputs.keys().chain(now.inputs.keys()).collect();
    for name in names {
        let (x, y) = (b.inputs.get(name), now.inputs.get(name));
        if x != y {
            changes.push(Change::Input {
                name: name.clone(),
                before: x.cloned(),
                now: y.cloned(),
                upstream: now.input_targets.get(name).cloned(),
            });
        }
    }
    if b.builder != now.builder && !changes.iter().any(|c| matches!(c, Change::Input { .. })) {
        changes.push(Change::Builder {
            before: b.builder.clone(),
            now: now.builder.clone(),
        });
    }
    let outputs: Vec<&String> = node.drv.outputs.keys().collect();
    let keys: std::collections::BTreeSet<&String> = b.env.keys().chain(now.env.keys()).collect();
    let input_paths: Vec<&String> = b.inputs.values().chain(now.inputs.values()).collect();
    for k in keys {
        if outputs.contains(&k) || k == "builder" {
            continue;
        }
        let (x, y) = (b.env.get(k), now.env.get(k));
        // A variable that only changed because an input's path did is already explained.
        let via_input = |v: Option<&String>| {
            v.is_some_and(|v| input_paths.iter().any(|p| v.contains(p.as_str())))
        };
        if x != y && !(via_input(x) && via_input(y)) {
            changes.push(Change::Env {
                name: k.clone(),
                before: x.cloned(),
                now: y.cloned(),
            });
        }
    }
    let strip = |args: &[String], inputs: &BTreeMap<String, String>| -> Vec<String> {
        args.iter()
            .map(|a| {
                inputs.iter().fold(a.clone(), |acc, (name, path)| {
                    acc.replace(path.as_str(), &format!("${{{name}}}"))
                })
            })
            .collect()
    };
    if strip(&b.args, &b.inputs) != strip(&now.args, &now.inputs) {
        changes.push(Change::Args {
            before: b.args.clone(),
            now: now.args.clone(),
        });
    }
    changes
}

/// Why the derivations an earlier output was built from cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum EarlierError {
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The path is not a valid store path.
    #[error("`{path}` is not valid in the store")]
    NotValid { path: String },
    /// The path was added to the store, not built.
    #[error("`{path}` records no derivation: it was added to the store, not built")]
    NoDeriver { path: String },
    /// A `.drv` of the closure is gone or cannot be parsed.
    #[error("cannot read `{drv}`, a derivation `{path}` was built from: {reason}")]
    Unreadable {
        path: String,
        drv: String,
        reason: String,
    },
}

impl EarlierError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            EarlierError::Store(e) => e.hint(),
            EarlierError::NotValid { .. } | EarlierError::NoDeriver { .. } => Some(
                "give a `result` link or an output path of an earlier `ksbuild realise`".into(),
            ),
            EarlierError::Unreadable { .. } => Some(
                "`ksbuild store gc` keeps the derivations of live outputs: keep a `result` link (a GC root) of the realisation to compare with".into(),
            ),
        }
    }
}

/// What an earlier realisation was built from: the `.drv` of one of its outputs and every
/// derivation that one needs, as they are in the store.
#[derive(Debug, Clone)]
pub struct Earlier {
    /// The output it was named by (printed).
    pub output: String,
    /// The `.drv` that built it.
    pub root: StorePath,
    /// That `.drv` and every one it needs.
    pub derivations: BTreeMap<StorePath, Derivation>,
}

/// Reads the derivations the valid path `output` was built from (its deriver's closure).
pub fn earlier(store: &Store, output: &StorePath) -> Result<Earlier, EarlierError> {
    let printed = store.print(output);
    let info = store
        .query_path_info(output)?
        .ok_or_else(|| EarlierError::NotValid {
            path: printed.clone(),
        })?;
    let root = info.deriver.ok_or_else(|| EarlierError::NoDeriver {
        path: printed.clone(),
    })?;
    let mut derivations = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(drv) = stack.pop() {
        if derivations.contains_key(&drv) {
            continue;
        }
        let unreadable = |reason: String| EarlierError::Unreadable {
            path: printed.clone(),
            drv: store.print(&drv),
            reason,
        };
        if !store.is_valid(&drv)? {
            return Err(unreadable("it is no longer in the store".into()));
        }
        let text =
            std::fs::read(store.physical_path(&drv)).map_err(|e| unreadable(e.to_string()))?;
        let parsed = Derivation::from_aterm(&text, store.store_dir())
            .map_err(|e| unreadable(e.to_string()))?;
        stack.extend(parsed.input_derivations.keys().cloned());
        derivations.insert(drv, parsed);
    }
    Ok(Earlier {
        output: printed,
        root,
        derivations,
    })
}

/// A node whose `.drv` is none of those earlier outputs were built from: what an edit since
/// makes rebuild.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Changed {
    /// The `.drv` it was built from then, where one is found in the same place of the graph.
    pub drv_before: Option<String>,
    /// What changed since ([`compare`] with that `.drv`; empty without one).
    pub changes: Vec<Change>,
}

/// The nodes of `lowered` whose `.drv` is none of `earlier`'s, by key, each with what
/// changed since. A node's earlier counterpart is found from the top: a target (among
/// `roots`) is matched with an earlier output's `.drv` by name, and each input `.drv` of a
/// matched `.drv` with the dependency of the same name (the same `.drv`, or else the only
/// input of that name); then a changed node is compared as `why-rebuild` compares it with
/// its last realisation.
pub fn changed_since(
    store: &Store,
    lowered: &Lowered,
    roots: &[String],
    earlier: &[Earlier],
) -> BTreeMap<String, Changed> {
    let old: BTreeMap<&StorePath, &Derivation> =
        earlier.iter().flat_map(|e| &e.derivations).collect();
    let mut counterpart: BTreeMap<&str, &StorePath> = BTreeMap::new();
    for e in earlier {
        let drv = |k: &&String| lowered.nodes.get(*k).map(|n| &n.drv_path);
        let target = roots.iter().find(|k| drv(k) == Some(&e.root)).or_else(|| {
            roots
                .iter()
                .find(|k| drv(k).map(|d| d.name()) == Some(e.root.name()))
        });
        if let Some(k) = target {
            counterpart.entry(k.as_str()).or_insert(&e.root);
        }
    }
    // Dependents before their dependencies: each node's counterpart is known before its
    // dependencies are looked for among that counterpart's inputs.
    for key in lowered.order.iter().rev() {
        let (Some(node), Some(then)) = (lowered.nodes.get(key), counterpart.get(key.as_str()))
        else {
            continue;
        };
        let Some(then) = old.get(*then) else {
            continue;
        };
        for dep in &node.deps {
            let Some(dep_node) = lowered.nodes.get(dep) else {
                continue;
            };
            if counterpart.contains_key(dep.as_str()) {
                continue;
            }
            let inputs = &then.input_derivations;
            let found = inputs
                .get_key_value(&dep_node.drv_path)
                .map(|(k, _)| k)
                .or_else(|| {
                    only(
                        inputs
                            .keys()
                            .filter(|d| d.name() == dep_node.drv_path.name()),
                    )
                });
            if let Some(found) = found {
                counterpart.insert(dep.as_str(), found);
            }
        }
    }
    let producers = producers(store, lowered, lowered.nodes.keys());
    let name_of = |printed: &str| -> String {
        let base = printed.rsplit('/').next().unwrap_or(printed);
        base.split_once('-')
            .map(|(_, n)| n)
            .unwrap_or(base)
            .to_string()
    };
    let mut changed = BTreeMap::new();
    for (key, node) in &lowered.nodes {
        if old.contains_key(&node.drv_path) {
            continue;
        }
        let then = counterpart
            .get(key.as_str())
            .and_then(|d| old.get(*d).map(|drv| (*d, *drv)));
        let Some((then_path, then)) = then else {
            changed.insert(
                key.clone(),
                Changed {
                    drv_before: None,
                    changes: Vec::new(),
                },
            );
            continue;
        };
        // What each input was then: the same output of the dependency's counterpart, or
        // for a repository file, the input source of the same name.
        let inputs = node
            .inputs
            .iter()
            .filter_map(|(name, path)| {
                let before = match producers.get(path) {
                    Some(dep) => {
                        let output = lowered.nodes[dep]
                            .drv
                            .outputs
                            .iter()
                            .find(|(_, o)| {
                                o.path.as_ref().map(|p| store.print(p)).as_ref() == Some(path)
                            })?
                            .0;
                        let dep_then = old.get(*counterpart.get(dep.as_str())?)?;
                        store.print(dep_then.outputs.get(output)?.path.as_ref()?)
                    }
                    None => only(
                        then.input_sources
                            .iter()
                            .map(|s| store.print(s))
                            .filter(|s| name_of(s) == name_of(path)),
                    )?,
                };
                Some((name.clone(), before))
            })
            .collect();
        let before = Record {
            drv_path: store.print(then_path),
            inputs,
            input_targets: BTreeMap::new(),
            builder: then.builder.clone(),
            args: then.args.clone(),
            env: then.env.clone(),
        };
        let now = Record::of(store, &producers, node);
        changed.insert(
            key.clone(),
            Changed {
                drv_before: Some(before.drv_path.clone()),
                changes: compare(node, &before, &now),
            },
        );
    }
    changed
}

/// The only item of `items`, if there is exactly one.
fn only<T>(mut items: impl Iterator<Item = T>) -> Option<T> {
    match (items.next(), items.next()) {
        (Some(one), None) => Some(one),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(drv: &str) -> Record {
        Record {
            drv_path: drv.into(),
            inputs: BTreeMap::from([("src".to_string(), "/nix/store/x-src".to_string())]),
            input_targets: BTreeMap::new(),
            builder: "/bin/sh".into(),
            args: vec![],
            env: BTreeMap::new(),
        }
    }

    fn line(target: &str, drv: &str) -> Vec<u8> {
        let mut l = serde_json::to_vec(&Line {
            target: target.into(),
            record: record(drv),
        })
        .unwrap();
        l.push(b'\n');
        l
    }

    fn scratch_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            dir.path(),
            crate::compat::StoreDir::default(),
            std::sync::Arc::new(crate::store::Silent),
        )
        .unwrap();
        (dir, store)
    }

    /// Writes a record of `target` in the earlier form.
    fn write_earlier(store: &Store, target: &str, drv: &str) {
        let file = record_file(store, target);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, serde_json::to_vec_pretty(&record(drv)).unwrap()).unwrap();
    }

    #[test]
    fn the_last_whole_line_of_a_target_is_its_record_and_compaction_keeps_it() {
        let (_dir, store) = scratch_store();
        let log = log_file(&store);
        let mut text = [line("t1", "a"), line("t10", "b"), line("t1", "c")].concat();
        // A line cut short by a crash, and another target whose name starts the same.
        let cut = line("t1", "d");
        text.extend_from_slice(&cut[..cut.len() / 2]);
        text.push(b'\n');
        text.extend(line("t10", "e"));
        std::fs::write(&log, &text).unwrap();
        assert_eq!(load(&store, "t1").unwrap().drv_path, "c");
        assert_eq!(load(&store, "t10").unwrap().drv_path, "e");
        assert!(load(&store, "t").is_none());
        // A record of the earlier form answers where the log has none.
        write_earlier(&store, "old", "f");
        assert_eq!(load(&store, "old").unwrap().drv_path, "f");
        let kept = String::from_utf8(compacted(&std::fs::read(&log).unwrap())).unwrap();
        assert_eq!(kept.lines().count(), 2, "{kept}");
        std::fs::write(&log, kept).unwrap();
        assert_eq!(load(&store, "t1").unwrap().drv_path, "c");
        assert_eq!(load(&store, "t10").unwrap().drv_path, "e");
    }

    #[test]
    fn records_of_the_earlier_form_move_into_the_log_before_its_lines_and_are_removed() {
        let (_dir, store) = scratch_store();
        let log = log_file(&store);
        write_earlier(&store, "a", "old-a");
        write_earlier(&store, "b", "old-b");
        let earlier = record_file(&store, "a").parent().unwrap().to_path_buf();
        std::fs::write(earlier.join("damaged.json"), b"{").unwrap();
        // The log already has a newer record of `a`.
        std::fs::write(&log, line("a", "new-a")).unwrap();
        fold_in_earlier_form(&store, &log).unwrap();
        assert!(!earlier.exists(), "the folder of the earlier form is left");
        assert_eq!(load(&store, "a").unwrap().drv_path, "new-a");
        assert_eq!(load(&store, "b").unwrap().drv_path, "old-b");
        assert!(load(&store, "damaged").is_none());
        // Without the folder, nothing changes.
        let before = std::fs::read(&log).unwrap();
        fold_in_earlier_form(&store, &log).unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), before);
    }
}
