//! Remote build machines as Nix's `builders` setting describes them, and Nix's rules for
//! which machines may build a derivation and which one does (Nix 2.8's `machines.cc` and
//! `build-remote.cc`). Pure but for reading `@file` includes.

use std::collections::BTreeSet;
use std::path::Path;

/// One line of the `builders` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// The store URI, `ssh://` prepended to a bare host name as Nix does.
    pub uri: String,
    /// The systems it builds for.
    pub systems: Vec<String>,
    /// The SSH identity file, if one is named.
    pub ssh_key: Option<String>,
    /// Builds it runs at once.
    pub max_jobs: u32,
    /// How much faster than a machine of speed factor 1 (at least 1).
    pub speed_factor: u32,
    /// Features it supports.
    pub supported_features: BTreeSet<String>,
    /// Features a derivation must require to be built there.
    pub mandatory_features: BTreeSet<String>,
    /// Its SSH host key (base64 of a `known_hosts` key), if one is named.
    pub host_key: Option<String>,
}

/// Why the `builders` setting could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachinesError {
    /// A field that is not what its column holds.
    #[error("bad machine specification `{line}`: column {column} ({what}) is `{value}`, which is not {expected}")]
    Field {
        line: String,
        column: usize,
        what: &'static str,
        value: String,
        expected: &'static str,
    },
    /// An include that cannot be read (a missing file is no machines, as in Nix).
    #[error("cannot read the machines file `{path}`: {message}")]
    Include { path: String, message: String },
}

impl MachinesError {
    /// What to do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            MachinesError::Field { .. } => {
                "each machine is `URI SYSTEMS SSH-KEY MAX-JOBS SPEED-FACTOR SUPPORTED-FEATURES \
                 MANDATORY-FEATURES HOST-KEY`, whitespace-separated, `-` for a default; machines \
                 are separated by `;` or new lines (Nix's `builders` syntax)"
            }
            MachinesError::Include { .. } => {
                "`@FILE` includes a machines file: make it readable, or name another"
            }
        }
    }
}

/// The machines `spec` lists (Nix's `builders` syntax: machines separated by `;` or new
/// lines, `#` comments, `@FILE` includes; a missing include file lists no machines).
/// `this_system` is the default of the systems column.
pub fn parse(spec: &str, this_system: &str) -> Result<Vec<Machine>, MachinesError> {
    let mut lines = Vec::new();
    expand(spec, &mut lines, 0)?;
    lines.iter().map(|l| parse_line(l, this_system)).collect()
}

/// The lines of `spec` with includes expanded.
fn expand(spec: &str, out: &mut Vec<String>, depth: usize) -> Result<(), MachinesError> {
    for line in spec.split(['\n', ';']) {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if let Some(path) = line.strip_prefix('@') {
            let path = path.trim();
            if depth > 16 {
                return Err(MachinesError::Include {
                    path: path.to_string(),
                    message: "includes nest more than 16 deep (does it include itself?)".into(),
                });
            }
            match std::fs::read_to_string(Path::new(path)) {
                Ok(text) => expand(&text, out, depth + 1)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(MachinesError::Include {
                        path: path.to_string(),
                        message: e.to_string(),
                    })
                }
            }
            continue;
        }
        out.push(line.to_string());
    }
    Ok(())
}

fn parse_line(line: &str, this_system: &str) -> Result<Machine, MachinesError> {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    let set = |i: usize| {
        tokens
            .get(i)
            .copied()
            .filter(|t| !t.is_empty() && *t != "-")
    };
    let bad = |column: usize, what: &'static str, expected: &'static str| MachinesError::Field {
        line: line.to_string(),
        column: column + 1,
        what,
        value: tokens.get(column).copied().unwrap_or("").to_string(),
        expected,
    };
    let number = |i: usize, what: &'static str| -> Result<u32, MachinesError> {
        match set(i) {
            None => Ok(1),
            Some(t) => t.parse::<u32>().map_err(|_| bad(i, what, "a whole number")),
        }
    };
    let list = |i: usize| -> BTreeSet<String> {
        set(i)
            .map(|t| {
                t.split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    let Some(uri) = set(0) else {
        return Err(bad(0, "store URI", "a store URI"));
    };
    let uri = if uri.contains("://")
        || uri.contains('/')
        || ["auto", "daemon", "local"].contains(&uri)
        || ["auto?", "daemon?", "local?", "?"]
            .iter()
            .any(|p| uri.starts_with(p))
    {
        uri.to_string()
    } else {
        format!("ssh://{uri}")
    };
    let host_key = match set(7) {
        Some(k) => {
            crate::compat::base64::decode(k)
                .ok_or_else(|| bad(7, "SSH host key", "valid base64"))?;
            Some(k.to_string())
        }
        None => None,
    };
    Ok(Machine {
        uri,
        systems: match set(1) {
            Some(t) => t
                .split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            None => vec![this_system.to_string()],
        },
        ssh_key: set(2).map(String::from),
        max_jobs: number(3, "max jobs")?,
        speed_factor: number(4, "speed factor")?.max(1),
        supported_features: list(5),
        mandatory_features: list(6),
        host_key,
    })
}

impl Machine {
    /// Nix's `allSupported`: every required feature is supported or mandatory here.
    pub fn all_supported(&self, required: &BTreeSet<String>) -> bool {
        required
            .iter()
            .all(|f| self.supported_features.contains(f) || self.mandatory_features.contains(f))
    }

    /// Nix's `mandatoryMet`: every mandatory feature is required.
    pub fn mandatory_met(&self, required: &BTreeSet<String>) -> bool {
        self.mandatory_features.iter().all(|f| required.contains(f))
    }

    /// Whether a derivation for `system` requiring `required` may be built here.
    pub fn fits(&self, system: &str, required: &BTreeSet<String>) -> bool {
        (system == "builtin" || self.systems.iter().any(|s| s == system))
            && self.all_supported(required)
            && self.mandatory_met(required)
    }
}

/// Where a derivation goes, by Nix's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// To this machine (an index of the list).
    Remote(usize),
    /// Nowhere yet: machines fit it, none has a free slot, and it cannot build here.
    Postpone,
    /// Not remotely: build it here (or fail, if it cannot be built here either).
    Decline,
}

/// The machine a derivation for `system` requiring `required` goes to, by Nix 2.8's rules
/// (`build-remote.cc`): among the enabled machines that fit it and have a free slot, the
/// least `load / speed_factor` (integer division), then the greater speed factor, then the
/// smaller load; the first listed wins a tie. `loads[i]` is the number of builds machine
/// `i` runs; `enabled[i]` is false for a machine skipped after it could not be reached.
pub fn choose(
    machines: &[Machine],
    loads: &[u32],
    enabled: &[bool],
    system: &str,
    required: &BTreeSet<String>,
    can_build_locally: bool,
) -> Choice {
    let mut right_type = false;
    let mut best: Option<usize> = None;
    for (i, m) in machines.iter().enumerate() {
        if !enabled[i] || !m.fits(system, required) {
            continue;
        }
        right_type = true;
        let load = loads[i];
        if load >= m.max_jobs {
            continue;
        }
        let better = match best {
            None => true,
            Some(b) => {
                let (bm, bl) = (&machines[b], loads[b]);
                let (q, bq) = (load / m.speed_factor, bl / bm.speed_factor);
                q < bq
                    || (q == bq
                        && (m.speed_factor > bm.speed_factor
                            || (m.speed_factor == bm.speed_factor && load < bl)))
            }
        };
        if better {
            best = Some(i);
        }
    }
    match best {
        Some(i) => Choice::Remote(i),
        None if right_type && !can_build_locally => Choice::Postpone,
        None => Choice::Decline,
    }
}

/// Whether any machine (enabled or not) fits a derivation: when none does and it cannot
/// be built here, nothing will ever build it.
pub fn any_fits(machines: &[Machine], system: &str, required: &BTreeSet<String>) -> bool {
    machines.iter().any(|m| m.fits(system, required))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    /// Every column, defaults, `-`, comments, `;` and new lines, bare host names.
    #[test]
    fn the_builders_syntax_is_nix_s() {
        let spec = "ssh://a@one x86_64-linux,aarch64-linux /k 4 2 big-parallel,kvm benchmark c3NoLWVkMjU1MTkgQUFBQQ==\n\
                    # a comment\n\
                    two - - - - ; three   # trailing comment\n\
                    ssh://b@four?remote-program=ksbuild aarch64-linux";
        let m = parse(spec, "x86_64-linux").unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].uri, "ssh://a@one");
        assert_eq!(m[0].systems, ["x86_64-linux", "aarch64-linux"]);
        assert_eq!(m[0].ssh_key.as_deref(), Some("/k"));
        assert_eq!((m[0].max_jobs, m[0].speed_factor), (4, 2));
        assert_eq!(m[0].supported_features, set(&["big-parallel", "kvm"]));
        assert_eq!(m[0].mandatory_features, set(&["benchmark"]));
        assert_eq!(m[0].host_key.as_deref(), Some("c3NoLWVkMjU1MTkgQUFBQQ=="));
        assert_eq!(m[1].uri, "ssh://two");
        assert_eq!(m[1].systems, ["x86_64-linux"]);
        assert_eq!(
            (m[1].max_jobs, m[1].speed_factor, m[1].ssh_key.clone()),
            (1, 1, None)
        );
        assert_eq!(m[2].uri, "ssh://three");
        assert_eq!(m[3].uri, "ssh://b@four?remote-program=ksbuild");
        assert_eq!(m[3].systems, ["aarch64-linux"]);
        // Speed factor 0 is 1; store words and paths are kept as they are.
        let m = parse("local - - 1 0;/some/store;daemon", "x86_64-linux").unwrap();
        assert_eq!(m[0].speed_factor, 1);
        assert_eq!(
            m.iter().map(|m| m.uri.as_str()).collect::<Vec<_>>(),
            ["local", "/some/store", "daemon"]
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let e = parse("host x86_64-linux - four", "x86_64-linux").unwrap_err();
        assert!(
            e.to_string().contains("column 4 (max jobs) is `four`"),
            "{e}"
        );
        let e = parse("host - - 1 1 - - not*base64", "x86_64-linux").unwrap_err();
        assert!(e.to_string().contains("column 8 (SSH host key)"), "{e}");
    }

    /// `@FILE` includes the file's machines; a missing file includes none.
    #[test]
    fn includes_are_expanded() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("machines");
        std::fs::write(&file, "inner1\ninner2 aarch64-linux\n").unwrap();
        let spec = format!(
            "outer; @{} ; @{}/missing",
            file.display(),
            dir.path().display()
        );
        let m = parse(&spec, "x86_64-linux").unwrap();
        let uris: Vec<&str> = m.iter().map(|m| m.uri.as_str()).collect();
        assert_eq!(uris, ["ssh://outer", "ssh://inner1", "ssh://inner2"]);
    }

    fn machine(systems: &[&str], jobs: u32, speed: u32, sup: &[&str], mand: &[&str]) -> Machine {
        Machine {
            uri: "ssh://m".into(),
            systems: systems.iter().map(|s| s.to_string()).collect(),
            ssh_key: None,
            max_jobs: jobs,
            speed_factor: speed,
            supported_features: set(sup),
            mandatory_features: set(mand),
            host_key: None,
        }
    }

    /// All required features supported (or mandatory), all mandatory features required.
    #[test]
    fn features_decide_which_machines_fit() {
        let plain = machine(&["x86_64-linux"], 1, 1, &[], &[]);
        let big = machine(&["x86_64-linux"], 1, 1, &["big-parallel"], &[]);
        let bench = machine(&["x86_64-linux"], 1, 1, &[], &["benchmark"]);
        let x86 = "x86_64-linux";
        assert!(plain.fits(x86, &set(&[])));
        assert!(!plain.fits(x86, &set(&["big-parallel"])));
        assert!(big.fits(x86, &set(&["big-parallel"])));
        assert!(big.fits(x86, &set(&[])));
        assert!(!bench.fits(x86, &set(&[])));
        assert!(bench.fits(x86, &set(&["benchmark"])));
        assert!(!bench.fits(x86, &set(&["benchmark", "kvm"])));
        // The system must be listed; `builtin` goes anywhere.
        assert!(!plain.fits("aarch64-linux", &set(&[])));
        assert!(plain.fits("builtin", &set(&[])));
    }

    /// A native arm64 builder receives `aarch64-linux` derivations, and only it does.
    #[test]
    fn aarch64_derivations_go_to_the_machine_listing_aarch64() {
        let machines = [
            machine(&["x86_64-linux"], 4, 1, &[], &[]),
            machine(&["aarch64-linux"], 1, 1, &[], &[]),
        ];
        let none = set(&[]);
        let on = [true, true];
        assert_eq!(
            choose(&machines, &[0, 0], &on, "aarch64-linux", &none, false),
            Choice::Remote(1)
        );
        assert_eq!(
            choose(&machines, &[0, 0], &on, "x86_64-linux", &none, true),
            Choice::Remote(0)
        );
        // Busy: an aarch64 derivation waits for it (this machine cannot build it)...
        assert_eq!(
            choose(&machines, &[0, 1], &on, "aarch64-linux", &none, false),
            Choice::Postpone
        );
        // ... and when it is disabled nothing fits: declined.
        assert_eq!(
            choose(
                &machines,
                &[0, 0],
                &[true, false],
                "aarch64-linux",
                &none,
                false
            ),
            Choice::Decline
        );
    }

    /// The least load per speed (integer division), then the faster, then the less loaded;
    /// a full machine is skipped; with none free, a derivation this machine can build is
    /// declined (built here), one it cannot is postponed.
    #[test]
    fn the_least_loaded_per_speed_is_chosen() {
        let x86 = "x86_64-linux";
        let none = set(&[]);
        let two_jobs = machine(&[x86], 2, 1, &[], &[]);
        let fast = machine(&[x86], 1, 2, &[], &[]);
        let ms = [two_jobs, fast];
        let on = [true, true];
        // Both idle: 0/1 == 0/2, the faster wins.
        assert_eq!(
            choose(&ms, &[0, 0], &on, x86, &none, true),
            Choice::Remote(1)
        );
        // The fast one full (1 of 1): the other.
        assert_eq!(
            choose(&ms, &[0, 1], &on, x86, &none, true),
            Choice::Remote(0)
        );
        // 1/1 = 1 against the fast one's 0/2 = 0.
        assert_eq!(
            choose(&ms, &[1, 0], &on, x86, &none, true),
            Choice::Remote(1)
        );
        // Both full.
        assert_eq!(choose(&ms, &[2, 1], &on, x86, &none, true), Choice::Decline);
        assert_eq!(
            choose(&ms, &[2, 1], &on, x86, &none, false),
            Choice::Postpone
        );
        // Integer division: loads 3 and 5 on speeds 2 and 3 are both 1: the faster.
        let a = machine(&[x86], 8, 2, &[], &[]);
        let b = machine(&[x86], 8, 3, &[], &[]);
        assert_eq!(
            choose(&[a.clone(), b.clone()], &[3, 5], &on, x86, &none, true),
            Choice::Remote(1)
        );
        // Same quotient and speed: the smaller load.
        assert_eq!(
            choose(&[a.clone(), a], &[3, 2], &on, x86, &none, true),
            Choice::Remote(1)
        );
    }
}
