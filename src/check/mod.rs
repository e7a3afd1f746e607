//! Reproducibility checks (`ksbuild check`): builds of a derivation in fresh sandboxes,
//! compared output by output by NAR hash with each other, with the store's own build and
//! with a recorded build (`derivations/outputs.lock`); a difference is explained file by
//! file ([`explain`]). Runs builds through the sandbox executor and reads outputs.
//!
//! Rounds: `rounds` is the number of builds compared. The store's copy of an output counts
//! as one when this store built it (`ultimate`, as Nix calls a path built locally rather
//! than substituted or copied); the check makes the others, each in a fresh sandbox. No
//! output ever stands for two rounds.

pub mod diffoscope;
pub mod elf;
pub mod explain;
pub mod ext4;
pub mod image;
pub mod record;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::graph::build::SandboxExecutor;
use crate::graph::{output_paths, BuildFailure, Reporter};
use crate::model::Node;
use crate::store::Store;
use explain::Difference;
use record::Record;

/// How a derivation's outputs compare with its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "status")]
pub enum RecordStatus {
    /// Every output's NAR hash is the recorded one.
    Matches,
    /// Some output's is not.
    Differs,
    /// The record is for another `.drv` (the derivation changed since): re-record.
    Stale {
        /// The `.drv` the record is for.
        recorded_drv: String,
    },
    /// There is no record of the target.
    Missing,
}

/// One output of a checked derivation.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutputVerdict {
    /// The output's name.
    pub name: String,
    /// Its store path.
    pub path: String,
    /// The NAR hash of each build compared (the store's first when it counts as a build).
    pub builds: Vec<String>,
    /// The NAR hash recorded in `outputs.lock`, when compared with it.
    pub recorded: Option<String>,
    /// Whether every build (and the record) agree.
    pub reproducible: bool,
    /// Where the first differing build is kept, for inspection.
    pub kept: Option<String>,
    /// The first differences between the store's copy and that build.
    pub differences: Vec<Difference>,
}

/// One checked derivation.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DerivationVerdict {
    /// The target.
    pub target: String,
    /// Its `.drv`.
    pub drv: String,
    /// How many builds were compared.
    pub builds: u32,
    /// How many of them this check ran.
    pub rebuilt: u32,
    /// What the varied builds varied.
    pub variations: Vec<Vary>,
    /// Whether every output reproduced (and matched its record, if compared).
    pub reproducible: bool,
    /// The outputs.
    pub outputs: Vec<OutputVerdict>,
    /// The comparison with `outputs.lock`, or with a binary cache (`against`), when asked
    /// for.
    pub record: Option<RecordStatus>,
    /// The binary cache whose narinfos stood for the record (`check --against URL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub against: Option<String>,
}

/// A thing a check varies between builds; each must not change a reproducible output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Vary {
    /// Time: each varied build starts in a later second of wall-clock time than the one
    /// before, and its monotonic and boot clocks run [`CLOCKS_AHEAD`] ahead (a time
    /// namespace: the wall clock cannot be shifted there).
    Time,
    /// The CPUs: one CPU (affinity) and `NIX_BUILD_CORES=1`.
    Cores,
    /// Host and domain name: `ksbuild-check` instead of `localhost` and `(none)`.
    Hostname,
    /// The build user's ids inside the sandbox: [`VARIED_IDS`] (those of Nix's first build
    /// user `nixbld1` outside a sandbox) instead of 1000:100.
    Uid,
    /// The umask: 077 instead of 022.
    Umask,
    /// Address-space layout randomisation on (Nix turns it off).
    Aslr,
    /// Directory order: inputs are copies made in a shuffled order, and `/build` lists
    /// files in the order they were created (a `tmpfs`) rather than the store
    /// filesystem's order.
    Order,
    /// The build directory's name: [`VARIED_BUILD_DIR`] instead of `/build`, unless the
    /// derivation names `/build` itself (in its builder, arguments or environment).
    BuildDir,
    /// The kernel release `uname -r` reports: a 2.6 one (`personality(UNAME26)`).
    Uname,
}

/// How far ahead [`Vary::Time`] sets the monotonic and boot clocks: ten days.
pub const CLOCKS_AHEAD: u64 = 10 * 24 * 3600;

/// The build user's uid and gid under [`Vary::Uid`].
pub const VARIED_IDS: (u32, u32) = (30001, 30000);

/// The build directory under [`Vary::BuildDir`].
pub const VARIED_BUILD_DIR: &str = "/tmp/nix-build-check";

impl Vary {
    /// Every variation, in the order `--vary all` applies them.
    pub const ALL: [Vary; 9] = [
        Vary::Time,
        Vary::Cores,
        Vary::Hostname,
        Vary::Uid,
        Vary::Umask,
        Vary::Aslr,
        Vary::Order,
        Vary::BuildDir,
        Vary::Uname,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Vary::Time => "time",
            Vary::Cores => "cores",
            Vary::Hostname => "hostname",
            Vary::Umask => "umask",
            Vary::Uid => "uid",
            Vary::Aslr => "aslr",
            Vary::Order => "order",
            Vary::BuildDir => "build-dir",
            Vary::Uname => "uname",
        }
    }

    /// Whether the variation can apply to `drv`: a derivation that names `/build` in its
    /// builder, arguments or environment, or runs in a build environment (whose shim binds
    /// `/build` by name), depends on that name, so its build directory is not renamed.
    pub fn applies_to(self, drv: &crate::compat::derivation::Derivation) -> bool {
        let names_build_dir = |s: &str| {
            s.match_indices(crate::sandbox::plan::BUILD_DIR)
                .any(|(i, m)| {
                    !s[i + m.len()..]
                        .starts_with(|c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                })
        };
        // A build environment's shim (`fragments/environment-enter.sh`) binds `/build` into
        // the environment's tree by that name.
        let in_environment = drv
            .args
            .iter()
            .any(|a| a.ends_with(crate::model::ENTER_SCRIPT_NAME));
        match self {
            Vary::BuildDir => {
                !(in_environment
                    || names_build_dir(&drv.builder)
                    || drv.args.iter().any(|a| names_build_dir(a))
                    || drv.env.values().any(|v| names_build_dir(v)))
            }
            _ => true,
        }
    }

    /// Parses `--vary`: names separated by commas, `all`, and `-NAME` to leave one out
    /// (`all,-build-dir`), applied left to right.
    pub fn parse_list(text: &str) -> Result<Vec<Vary>, String> {
        let find = |name: &str| {
            Vary::ALL
                .iter()
                .copied()
                .find(|v| v.name() == name)
                .ok_or_else(|| {
                    format!(
                        "unknown variation `{name}`: choose from {} or `all` (`-NAME` leaves \
                         one out)",
                        Vary::ALL.map(Vary::name).join(", ")
                    )
                })
        };
        let mut out: Vec<Vary> = Vec::new();
        for item in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if item == "all" {
                out = Vary::ALL.to_vec();
            } else if let Some(name) = item.strip_prefix('-') {
                let v = find(name)?;
                out.retain(|x| *x != v);
            } else {
                let v = find(item)?;
                if !out.contains(&v) {
                    out.push(v);
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

/// The sandbox's variation for `vary` (pure; `cpus` is how many CPUs ksbuild may use).
pub fn variation_of(vary: &[Vary], cpus: usize) -> crate::sandbox::Variation {
    let mut v = crate::sandbox::Variation::default();
    for x in vary {
        match x {
            Vary::Time => v.clocks_ahead = Some(CLOCKS_AHEAD),
            Vary::Cores => v.cpus = (cpus > 1).then_some(1),
            Vary::Hostname => v.hostname = Some("ksbuild-check".into()),
            Vary::Uid => v.ids = Some(VARIED_IDS),
            Vary::Umask => v.umask = Some(0o077),
            Vary::Aslr => v.aslr = true,
            Vary::Order => v.shuffled_order = true,
            Vary::BuildDir => v.build_dir = Some(VARIED_BUILD_DIR.into()),
            Vary::Uname => v.old_kernel_release = true,
        }
    }
    v
}

/// What the check asks for.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The number of builds compared (see the module's documentation).
    pub rounds: u32,
    /// What the builds the check makes vary from the first build compared (which is made
    /// as Nix makes it).
    pub vary: Vec<Vary>,
    /// How far a difference is explained (`--diffoscope`).
    pub diff: explain::Options,
}

/// Checks `node`, whose outputs are valid: makes the builds `options.rounds` asks for,
/// compares them, and compares them with `record` when one is given (`Some(None)`: asked
/// for, but there is none). A differing build is kept under the store's `check/` and
/// explained against the store's copy.
pub fn check_node(
    store: &Store,
    executor: &SandboxExecutor<'_>,
    node: &Node,
    options: CheckOptions,
    record: Option<Option<&Record>>,
    reporter: &dyn Reporter,
) -> Result<DerivationVerdict, BuildFailure> {
    let options = options.clone();
    let fail = |message: String| BuildFailure {
        message,
        log: None,
        tail: Vec::new(),
    };
    let outputs = output_paths(node);
    let mut registered = BTreeMap::new();
    for (name, path) in &outputs {
        let info = store
            .path_info(path)
            .map_err(|e| fail(format!("`{}` must be valid to be checked: {e}", node.key)))?;
        registered.insert(name.clone(), info);
    }
    let counted = registered.values().all(|i| i.ultimate);
    let rebuilds = options.rounds.saturating_sub(u32::from(counted));
    let mut verdicts: BTreeMap<String, OutputVerdict> = outputs
        .iter()
        .map(|(name, path)| {
            let info = &registered[name];
            (
                name.clone(),
                OutputVerdict {
                    name: name.clone(),
                    path: store.print(path),
                    builds: if counted {
                        vec![info.nar_hash.to_sri()]
                    } else {
                        Vec::new()
                    },
                    recorded: None,
                    reproducible: true,
                    kept: None,
                    differences: Vec::new(),
                },
            )
        })
        .collect();
    let applicable: Vec<Vary> = options
        .vary
        .iter()
        .copied()
        .filter(|v| v.applies_to(&node.drv))
        .collect();
    let varied = variation_of(&applicable, crate::cpus());
    let mut variations_applied = Vec::new();
    for round in 0..rebuilds {
        // The first build compared is made as Nix makes it; the others vary.
        let vary = counted || round > 0;
        if vary && options.vary.contains(&Vary::Time) {
            // Later in wall-clock time than the build before, to the second.
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
        if vary {
            variations_applied = applicable.clone();
        }
        let variation = if vary {
            varied.clone()
        } else {
            Default::default()
        };
        let mut rebuild = executor.rebuild(node, reporter, &variation)?;
        for (name, path) in &outputs {
            let info = &registered[name];
            let got = rebuild.outputs[name].nar_hash.clone();
            let v = verdicts.get_mut(name).expect("every output has a verdict");
            v.builds.push(got.to_sri());
            if got != info.nar_hash && v.kept.is_none() {
                let kept = store.check_dir().join(format!(
                    "{}-build-{}",
                    path,
                    round + 1 + u32::from(counted)
                ));
                rebuild
                    .keep(name, &kept)
                    .map_err(|e| fail(format!("cannot keep the differing build: {e}")))?;
                v.differences =
                    explain::diff_trees_with(&store.physical_path(path), &kept, &options.diff)
                        .map_err(|e| fail(format!("cannot compare the builds of `{name}`: {e}")))?;
                v.kept = Some(kept.display().to_string());
            }
        }
    }
    let mut record_status = None;
    if let Some(record) = record {
        let drv = store.print(&node.drv_path);
        record_status = Some(match record {
            None => RecordStatus::Missing,
            Some(r) if r.drv != drv => RecordStatus::Stale {
                recorded_drv: r.drv.clone(),
            },
            Some(r) => {
                let mut status = RecordStatus::Matches;
                for (name, v) in verdicts.iter_mut() {
                    let recorded = r.outputs.get(name).map(|o| o.nar_hash.clone());
                    // Without a build of its own, the store's copy is what is compared.
                    let ours = if v.builds.is_empty() {
                        vec![registered[name].nar_hash.to_sri()]
                    } else {
                        v.builds.clone()
                    };
                    if ours.iter().any(|h| Some(h) != recorded.as_ref()) {
                        status = RecordStatus::Differs;
                        v.reproducible = false;
                    }
                    v.recorded = recorded;
                }
                status
            }
        });
    }
    let mut outputs_verdicts: Vec<OutputVerdict> = verdicts.into_values().collect();
    for v in &mut outputs_verdicts {
        if v.builds.windows(2).any(|w| w[0] != w[1]) {
            v.reproducible = false;
        }
    }
    let reproducible = outputs_verdicts.iter().all(|v| v.reproducible)
        && !matches!(record_status, Some(RecordStatus::Differs));
    Ok(DerivationVerdict {
        target: node.key.clone(),
        drv: store.print(&node.drv_path),
        builds: rebuilds + u32::from(counted),
        rebuilt: rebuilds,
        variations: variations_applied,
        reproducible,
        outputs: outputs_verdicts,
        record: record_status,
        against: None,
    })
}

/// The record of a derivation that a check showed reproducible.
pub fn record_of(verdict: &DerivationVerdict, store: &Store, node: &Node) -> Record {
    let outputs = output_paths(node)
        .into_iter()
        .filter_map(|(name, path)| {
            let info = store.query_path_info(&path).ok()??;
            Some((
                name,
                record::RecordedOutput {
                    path: store.print(&path),
                    nar_hash: info.nar_hash.to_sri(),
                    nar_size: info.nar_size,
                },
            ))
        })
        .collect();
    Record {
        drv: verdict.drv.clone(),
        builds: verdict.builds,
        outputs,
    }
}

/// A reproducibility report in the style of NixOS's r13y: N of M reproducible, a row per
/// derivation, the located differences.
pub fn report_markdown(verdicts: &[DerivationVerdict]) -> String {
    let good = verdicts.iter().filter(|v| v.reproducible).count();
    let mut md = format!(
        "# Reproducibility report\n\n**{good} of {} derivations reproducible.**\n\n\
         | derivation | builds compared | record | verdict |\n|---|---|---|---|\n",
        verdicts.len()
    );
    for v in verdicts {
        let record = match &v.record {
            None => "—".to_string(),
            Some(RecordStatus::Matches) => "matches".into(),
            Some(RecordStatus::Differs) => "**differs**".into(),
            Some(RecordStatus::Stale { .. }) => "stale".into(),
            Some(RecordStatus::Missing) => "none".into(),
        };
        md.push_str(&format!(
            "| `{}` | {} | {record} | {} |\n",
            v.target,
            v.builds,
            if v.reproducible {
                "reproducible"
            } else {
                "**not reproducible**"
            }
        ));
    }
    for v in verdicts.iter().filter(|v| !v.reproducible) {
        md.push_str(&format!("\n## `{}`\n\n", v.target));
        for o in v.outputs.iter().filter(|o| !o.reproducible) {
            md.push_str(&format!(
                "- output `{}` (`{}`): builds {}{}\n",
                o.name,
                o.path,
                o.builds.join(", "),
                o.recorded
                    .as_ref()
                    .map(|r| format!("; recorded {r}"))
                    .unwrap_or_default()
            ));
            for d in &o.differences {
                md.push_str(&format!("  - `{}`: {}\n", d.path, d.what));
            }
        }
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vary_lists_name_add_and_leave_out() {
        assert_eq!(Vary::parse_list("all").unwrap(), Vary::ALL.to_vec());
        assert_eq!(
            Vary::parse_list("uname, time,time").unwrap(),
            [Vary::Time, Vary::Uname]
        );
        let most = Vary::parse_list("all,-build-dir,-order").unwrap();
        assert_eq!(most.len(), Vary::ALL.len() - 2);
        assert!(!most.contains(&Vary::BuildDir) && !most.contains(&Vary::Order));
        let e = Vary::parse_list("all,-colour").unwrap_err();
        assert!(e.contains("unknown variation `colour`"), "{e}");
    }
}
