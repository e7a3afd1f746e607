//! Why a target would be rebuilt: each realisation records what went into every node of
//! its graph (`<store>/nix/var/ksbuild/realisations/<target>.json`); `why-rebuild`
//! compares the current lowering with that record. Reads and writes those records.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
    /// nodes that make them ([`producers`]).
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

/// Printed output path → key of the node producing it.
pub fn producers(store: &Store, lowered: &Lowered) -> BTreeMap<String, String> {
    lowered
        .nodes
        .values()
        .flat_map(|n| {
            n.drv
                .outputs
                .values()
                .filter_map(|o| o.path.as_ref())
                .map(|p| (store.print(p), n.key.clone()))
        })
        .collect()
}

fn record_file(store: &Store, key: &str) -> PathBuf {
    store
        .root()
        .join("nix/var/ksbuild/realisations")
        .join(format!("{key}.json"))
}

/// Records what went into the nodes `keys` (those a realisation just built or fetched:
/// cached nodes keep the record of the realisation that built them, so a no-op
/// realisation writes nothing).
pub fn save<'a>(
    store: &Store,
    lowered: &Lowered,
    keys: impl IntoIterator<Item = &'a String>,
) -> Result<(), StoreError> {
    let dir = store.root().join("nix/var/ksbuild/realisations");
    std::fs::create_dir_all(&dir).map_err(StoreError::io("create", &dir))?;
    let producers = producers(store, lowered);
    for node in keys.into_iter().filter_map(|k| lowered.nodes.get(k)) {
        let file = record_file(store, &node.key);
        let json = serde_json::to_vec_pretty(&Record::of(store, &producers, node))
            .map_err(|e| StoreError::Refused(e.to_string()))?;
        crate::store::write_atomic(&file, &json)?;
    }
    Ok(())
}

/// The last record of `key`, if any.
pub fn load(store: &Store, key: &str) -> Option<Record> {
    serde_json::from_slice(&std::fs::read(record_file(store, key)).ok()?).ok()
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
    let now = Record::of(store, &producers(store, lowered), node);
    let before = load(store, &node.key);
    let mut changes = Vec::new();
    if let Some(b) = &before {
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
        let keys: std::collections::BTreeSet<&String> =
            b.env.keys().chain(now.env.keys()).collect();
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
    }
    Verdict {
        target: node.key.clone(),
        up_to_date,
        recorded: before.is_some(),
        drv_before: before.map(|b| b.drv_path),
        drv_now: now.drv_path,
        changes,
    }
}
