//! The derivation graph as a picture (`ksbuild graph`): each node with its state (valid, to
//! build, to fetch), its last build time and, against an earlier realisation, what changed;
//! an environment's `.deb` downloads grouped into one node. Rendered as Graphviz DOT or as
//! JSON. Pure: the store's answers (which nodes are valid, the build history, what
//! changed) come in as values, and the renderings write to any `io::Write`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};

use serde::Serialize;

use super::why::{Change, Changed};
use crate::compat::StoreDir;
use crate::model::{HashFrom, Lowered, Node};
use crate::store::history::History;

/// Where a node stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Every output is valid in the store.
    Valid,
    /// A realisation of the targets would build it.
    ToBuild,
    /// A realisation of the targets would download it.
    ToFetch,
    /// Not valid, but not needed either: everything that uses it is valid.
    NotNeeded,
}

impl State {
    /// In words.
    pub fn words(self) -> &'static str {
        match self {
            State::Valid => "valid",
            State::ToBuild => "to build",
            State::ToFetch => "to fetch",
            State::NotNeeded => "not needed",
        }
    }

    /// The fill colour of its nodes.
    pub fn colour(self) -> &'static str {
        match self {
            State::Valid => "#b7e1a1",
            State::ToBuild => "#ffc966",
            State::ToFetch => "#a6cee3",
            State::NotNeeded => "#e0e0e0",
        }
    }

    const ALL: [State; 4] = [
        State::Valid,
        State::ToBuild,
        State::ToFetch,
        State::NotNeeded,
    ];
}

/// The outline colour of the nodes changed since an earlier realisation.
pub const CHANGED_COLOUR: &str = "#d62728";

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A build.
    Build,
    /// A download.
    Fetch,
    /// An environment's tree (its `.deb`s unpacked).
    Environment,
    /// An environment's `.deb` downloads, as one node.
    Downloads,
}

/// The last build of a node (from the store's build history).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastBuild {
    /// How long it took.
    pub seconds: f64,
    /// How many lines its log has.
    pub lines: u64,
    /// Whether it built this very `.drv` (else an earlier one of the same target).
    pub this_drv: bool,
}

/// An environment's downloads, grouped.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Downloads {
    /// How many.
    pub count: usize,
    /// Their size in bytes (as locked).
    pub bytes: u64,
    /// How many are valid.
    pub valid: usize,
    /// How many a realisation would download.
    pub to_fetch: usize,
    /// How many changed since the earlier realisation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<usize>,
    /// Their keys.
    pub keys: Vec<String>,
}

/// One node of the picture.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Vertex {
    /// The node's key (for grouped downloads, `environment-NAME.downloads`).
    pub key: String,
    /// What it is.
    pub kind: Kind,
    /// Where it stands.
    pub state: State,
    /// Whether it is one of the targets drawn.
    pub target: bool,
    /// The environment it belongs to (its tree and its downloads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// Its `.drv` (none for grouped downloads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drv: Option<String>,
    /// Its last build, if it was ever built with this store.
    pub last_build: Option<LastBuild>,
    /// For grouped downloads: how many, how large, how many valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub downloads: Option<Downloads>,
    /// With `--changed-since`: whether its `.drv` is none of those the earlier outputs were
    /// built from (for grouped downloads: whether any is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<bool>,
    /// With `--changed-since`, for a changed node: its `.drv` then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drv_before: Option<String>,
    /// With `--changed-since`, for a changed node: what changed (as `why-rebuild` says).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
}

/// An edge: `to` needs `from`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Edge {
    /// The dependency.
    pub from: String,
    /// What needs it.
    pub to: String,
}

/// The picture: nodes sorted by key, edges sorted.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Picture {
    /// The targets drawn.
    pub targets: Vec<String>,
    /// The earlier outputs compared with (`--changed-since`), as printed store paths.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changed_since: Vec<String>,
    /// The nodes.
    pub nodes: Vec<Vertex>,
    /// The edges.
    pub edges: Vec<Edge>,
}

/// The key of the node that stands for environment `name`'s downloads.
pub fn downloads_key(environment: &str) -> String {
    format!("environment-{environment}.downloads")
}

/// The environment whose lock gave `node` (an environment's `.deb`), if any.
fn locked_by(node: &Node) -> Option<&str> {
    match node.fetch.as_ref().map(|f| &f.hash_from) {
        Some(HashFrom::Locked { environment }) => Some(environment),
        _ => None,
    }
}

/// The state of every node: a walk from `roots` that stops at valid nodes (as a
/// realisation does) finds what is to build or fetch; the rest is valid or not needed.
pub fn states(
    lowered: &Lowered,
    roots: &[String],
    valid: &BTreeSet<String>,
) -> BTreeMap<String, State> {
    let mut needed = BTreeSet::new();
    let mut stack: Vec<&String> = roots.iter().collect();
    while let Some(key) = stack.pop() {
        if valid.contains(key) || !needed.insert(key.clone()) {
            continue;
        }
        if let Some(node) = lowered.nodes.get(key) {
            stack.extend(&node.deps);
        }
    }
    lowered
        .nodes
        .iter()
        .map(|(key, node)| {
            let state = if valid.contains(key) {
                State::Valid
            } else if !needed.contains(key) {
                State::NotNeeded
            } else if node.fetch.is_some() {
                State::ToFetch
            } else {
                State::ToBuild
            };
            (key.clone(), state)
        })
        .collect()
}

impl Picture {
    /// Draws `lowered` (lowered from `roots`): `valid` holds the keys whose outputs are all
    /// valid, `history` the store's build history, `changed` (with `--changed-since`) the
    /// earlier outputs compared with and the nodes changed since ([`super::why::changed_since`]).
    pub fn draw(
        lowered: &Lowered,
        roots: &[String],
        store_dir: &StoreDir,
        valid: &BTreeSet<String>,
        history: &History,
        changed: Option<(&[String], &BTreeMap<String, Changed>)>,
    ) -> Picture {
        let states = states(lowered, roots, valid);
        // Each environment's downloads become one node.
        let group_of = |key: &str| -> String {
            match lowered.nodes.get(key).and_then(locked_by) {
                Some(env) => downloads_key(env),
                None => key.to_string(),
            }
        };
        let mut groups: BTreeMap<String, (String, Vec<&Node>)> = BTreeMap::new();
        for node in lowered.nodes.values() {
            if let Some(env) = locked_by(node) {
                groups
                    .entry(downloads_key(env))
                    .or_insert_with(|| (env.to_string(), Vec::new()))
                    .1
                    .push(node);
            }
        }
        let environments: BTreeSet<&str> = groups.values().map(|(e, _)| e.as_str()).collect();
        let mut nodes = Vec::new();
        for (key, node) in &lowered.nodes {
            if locked_by(node).is_some() {
                continue;
            }
            let drv = store_dir.display(&node.drv_path);
            let environment = key
                .strip_prefix("environment-")
                .filter(|e| environments.contains(e))
                .map(str::to_string);
            let kind = match (&environment, &node.fetch) {
                (Some(_), _) => Kind::Environment,
                (None, Some(_)) => Kind::Fetch,
                (None, None) => Kind::Build,
            };
            let last_build = history.estimate(key, &drv).map(|r| LastBuild {
                seconds: r.seconds,
                lines: r.lines,
                this_drv: r.drv == drv,
            });
            let mut vertex = Vertex {
                key: key.clone(),
                kind,
                state: states[key],
                target: roots.contains(key),
                environment,
                drv: Some(drv),
                last_build,
                downloads: None,
                changed: None,
                drv_before: None,
                changes: Vec::new(),
            };
            if let Some((_, changed)) = changed {
                let c = changed.get(key);
                vertex.changed = Some(c.is_some());
                if let Some(c) = c {
                    vertex.drv_before = c.drv_before.clone();
                    vertex.changes = c.changes.clone();
                }
            }
            nodes.push(vertex);
        }
        for (key, (env, members)) in &groups {
            let count = |s: State| members.iter().filter(|n| states[&n.key] == s).count();
            let (valid, to_fetch) = (count(State::Valid), count(State::ToFetch));
            let state = if to_fetch > 0 {
                State::ToFetch
            } else if valid == members.len() {
                State::Valid
            } else {
                State::NotNeeded
            };
            let changed_count =
                changed.map(|(_, c)| members.iter().filter(|n| c.contains_key(&n.key)).count());
            nodes.push(Vertex {
                key: key.clone(),
                kind: Kind::Downloads,
                state,
                target: false,
                environment: Some(env.clone()),
                drv: None,
                last_build: None,
                downloads: Some(Downloads {
                    count: members.len(),
                    bytes: members
                        .iter()
                        .filter_map(|n| n.fetch.as_ref().and_then(|f| f.size))
                        .sum(),
                    valid,
                    to_fetch,
                    changed: changed_count,
                    keys: members.iter().map(|n| n.key.clone()).collect(),
                }),
                changed: changed_count.map(|n| n > 0),
                drv_before: None,
                changes: Vec::new(),
            });
        }
        nodes.sort_by(|a, b| a.key.cmp(&b.key));
        let edges: BTreeSet<Edge> = lowered
            .nodes
            .values()
            .filter(|n| locked_by(n).is_none())
            .flat_map(|n| {
                n.deps.iter().map(|d| Edge {
                    from: group_of(d),
                    to: n.key.clone(),
                })
            })
            .collect();
        Picture {
            targets: roots.to_vec(),
            changed_since: changed.map(|(o, _)| o.to_vec()).unwrap_or_default(),
            nodes,
            edges: edges.into_iter().collect(),
        }
    }

    /// Writes the picture as Graphviz DOT: nodes filled by state, targets with a double
    /// outline, changed nodes outlined in red, each environment a cluster of its tree and
    /// its downloads, and a legend as the graph's label.
    pub fn to_dot(&self, w: &mut impl Write) -> io::Result<()> {
        writeln!(w, "digraph \"ksbuild\" {{")?;
        let mut legend = format!("ksbuild graph {}\n", self.targets.join(" "));
        for s in State::ALL {
            legend.push_str(&format!("{}: {}   ", colour_name(s), s.words()));
        }
        if !self.changed_since.is_empty() {
            legend.push_str(&format!(
                "red outline: changed since {}",
                self.changed_since.join(", ")
            ));
        }
        writeln!(
            w,
            "  graph [rankdir=LR, fontname=\"Helvetica\", fontsize=11, labelloc=b, labeljust=l, label={}];",
            quote(legend.trim_end())
        )?;
        writeln!(
            w,
            "  node [fontname=\"Helvetica\", fontsize=10, shape=box, style=\"filled,rounded\"];"
        )?;
        writeln!(w, "  edge [color=\"#707070\", arrowsize=0.6];")?;
        let mut clusters: BTreeMap<&str, Vec<&Vertex>> = BTreeMap::new();
        for v in &self.nodes {
            match &v.environment {
                Some(env) => clusters.entry(env).or_default().push(v),
                None => write_vertex(w, "  ", v)?,
            }
        }
        for (env, members) in clusters {
            writeln!(
                w,
                "  subgraph {} {{",
                quote(&format!("cluster_environment-{env}"))
            )?;
            writeln!(
                w,
                "    label={}; style=\"rounded,dashed\"; color=\"#909090\"; fontsize=10;",
                quote(&format!("environment `{env}`"))
            )?;
            for v in members {
                write_vertex(w, "    ", v)?;
            }
            writeln!(w, "  }}")?;
        }
        for e in &self.edges {
            writeln!(w, "  {} -> {};", quote(&e.from), quote(&e.to))?;
        }
        writeln!(w, "}}")
    }

    /// Writes the picture as one JSON object.
    pub fn to_json(&self, w: &mut impl Write) -> io::Result<()> {
        serde_json::to_writer(&mut *w, self)?;
        writeln!(w)
    }
}

fn colour_name(s: State) -> &'static str {
    match s {
        State::Valid => "green",
        State::ToBuild => "orange",
        State::ToFetch => "blue",
        State::NotNeeded => "grey",
    }
}

fn write_vertex(w: &mut impl Write, indent: &str, v: &Vertex) -> io::Result<()> {
    let mut lines = Vec::new();
    match &v.downloads {
        Some(d) => {
            lines.push(format!(
                "{} download{}, {}",
                d.count,
                if d.count == 1 { "" } else { "s" },
                megabytes(d.bytes)
            ));
            let mut counts = vec![format!("{} valid", d.valid)];
            if d.to_fetch > 0 {
                counts.push(format!("{} to fetch", d.to_fetch));
            }
            let others = d.count - d.valid - d.to_fetch;
            if others > 0 {
                counts.push(format!("{others} not needed"));
            }
            if let Some(n) = d.changed.filter(|n| *n > 0) {
                counts.push(format!("{n} changed"));
            }
            lines.push(counts.join(", "));
        }
        None => {
            lines.push(v.key.clone());
            lines.push(v.state.words().to_string());
        }
    }
    if let Some(b) = &v.last_build {
        lines.push(if b.this_drv {
            format!("built in {}", duration(b.seconds))
        } else {
            format!("last build {} (another .drv)", duration(b.seconds))
        });
    }
    if v.changed == Some(true) && v.downloads.is_none() {
        lines.push(match v.drv_before {
            None => "new since the earlier realisation".to_string(),
            Some(_) if v.changes.is_empty() => "changed".to_string(),
            Some(_) => format!("changed: {}", summary(&v.changes)),
        });
    }
    let mut attrs = vec![
        ("label", quote(&lines.join("\n"))),
        ("fillcolor", quote(v.state.colour())),
        (
            "class",
            quote(&format!(
                "state_{} kind_{}{}",
                v.state.words().replace(' ', "_"),
                kind_word(v.kind),
                if v.changed == Some(true) {
                    " changed"
                } else {
                    ""
                }
            )),
        ),
    ];
    let shape = match v.kind {
        Kind::Build => None,
        Kind::Fetch => Some("note"),
        Kind::Environment => Some("box3d"),
        Kind::Downloads => Some("folder"),
    };
    if let Some(shape) = shape {
        attrs.push(("shape", quote(shape)));
        attrs.push(("style", quote("filled")));
    }
    if v.state == State::NotNeeded {
        let style = if shape.is_some() {
            "filled,dashed"
        } else {
            "filled,rounded,dashed"
        };
        attrs.retain(|(k, _)| *k != "style");
        attrs.push(("style", quote(style)));
    }
    if v.target {
        attrs.push(("peripheries", "2".into()));
    }
    if v.changed == Some(true) {
        attrs.push(("color", quote(CHANGED_COLOUR)));
        attrs.push(("penwidth", "3".into()));
    }
    if let Some(drv) = &v.drv {
        attrs.push(("tooltip", quote(drv)));
    }
    let attrs: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
    writeln!(w, "{indent}{} [{}];", quote(&v.key), attrs.join(", "))
}

fn kind_word(k: Kind) -> &'static str {
    match k {
        Kind::Build => "build",
        Kind::Fetch => "fetch",
        Kind::Environment => "environment",
        Kind::Downloads => "downloads",
    }
}

/// A short account of `changes`: `input `src`, args`.
fn summary(changes: &[Change]) -> String {
    let words: Vec<String> = changes
        .iter()
        .map(|c| match c {
            Change::Input { name, .. } => format!("input `{name}`"),
            Change::Builder { .. } => "builder".into(),
            Change::Args { .. } => "args".into(),
            Change::Env { name, .. } => format!("env `{name}`"),
        })
        .collect();
    words.join(", ")
}

/// A DOT quoted string: `"` and `\` escaped (so that none of Graphviz's label escapes such
/// as `\N` or `\l` can appear), line breaks as `\n`, other control characters as spaces.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `bytes` in MB (10^6), with one decimal.
/// `bytes` in MB (10^6), with one decimal.
pub fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// A duration as people write it: `0.04s`, `2.5s`, `14s`, `6m36s`, `1h05m`.
pub fn duration(seconds: f64) -> String {
    if seconds < 1.0 {
        return format!("{seconds:.2}s");
    }
    if seconds < 10.0 {
        return format!("{seconds:.1}s");
    }
    let s = seconds.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compat::derivation::{Derivation, FixedOutputHash};
    use crate::compat::{FileIngestionMethod, Hash, StorePath};
    use crate::model::Fetch;

    fn drv_path(key: &str) -> StorePath {
        let name: String = key
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        StorePath::from_base_name(&format!("{}-{name}.drv", "0".repeat(32))).unwrap()
    }

    /// A node needing `deps`; with `locked`, a `.deb` of that environment, of `size` bytes.
    fn node(key: &str, deps: &[&str], locked: Option<(&str, u64)>) -> Node {
        Node {
            key: key.into(),
            drv: Derivation::default().into(),
            drv_path: drv_path(key),
            fetch: locked.map(|(environment, size)| Fetch {
                url: format!("mirror://debian/{key}.deb"),
                hash: FixedOutputHash {
                    method: FileIngestionMethod::Flat,
                    hash: Hash::sha256(key.as_bytes()),
                },
                unpack: None,
                executable: false,
                declared_at: "here".into(),
                hash_from: HashFrom::Locked {
                    environment: environment.into(),
                },
                size: Some(size),
            }),
            deps: deps.iter().map(|d| d.to_string()).collect(),
            inputs: BTreeMap::new(),
        }
    }

    fn lowered(nodes: Vec<Node>) -> Lowered {
        Lowered {
            order: nodes.iter().map(|n| n.key.clone()).collect(),
            nodes: nodes.into_iter().map(|n| (n.key.clone(), n)).collect(),
            ..Lowered::default()
        }
    }

    /// An environment `env` of three `.deb`s, its tree, and a target built in it on top
    /// of a library.
    fn sample() -> Lowered {
        lowered(vec![
            node("environment-env.x-amd64", &[], Some(("env", 1_000_000))),
            node("environment-env.y-amd64", &[], Some(("env", 2_500_000))),
            node("environment-env.z-amd64", &[], Some(("env", 500_000))),
            node(
                "environment-env",
                &[
                    "environment-env.x-amd64",
                    "environment-env.y-amd64",
                    "environment-env.z-amd64",
                ],
                None,
            ),
            node("lib", &[], None),
            node("app", &["lib", "environment-env"], None),
        ])
    }

    fn set(keys: &[&str]) -> BTreeSet<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    #[test]
    fn states_follow_what_a_realisation_would_do() {
        let l = sample();
        let roots = ["app".to_string()];
        // The tree is valid, two of its `.deb`s too (the third was collected): nothing
        // below the tree is needed; the library is to build.
        let valid = set(&[
            "environment-env",
            "environment-env.x-amd64",
            "environment-env.y-amd64",
        ]);
        let s = states(&l, &roots, &valid);
        assert_eq!(s["app"], State::ToBuild);
        assert_eq!(s["lib"], State::ToBuild);
        assert_eq!(s["environment-env"], State::Valid);
        assert_eq!(s["environment-env.z-amd64"], State::NotNeeded);
        // Without the tree, the missing `.deb` is to fetch.
        let valid = set(&["environment-env.x-amd64", "environment-env.y-amd64"]);
        let s = states(&l, &roots, &valid);
        assert_eq!(s["environment-env"], State::ToBuild);
        assert_eq!(s["environment-env.z-amd64"], State::ToFetch);
        assert_eq!(s["environment-env.x-amd64"], State::Valid);
    }

    #[test]
    fn an_environments_downloads_are_one_node_in_its_cluster() {
        let l = sample();
        let roots = ["app".to_string()];
        let valid = set(&["environment-env.x-amd64", "environment-env.y-amd64"]);
        let p = Picture::draw(
            &l,
            &roots,
            &StoreDir::default(),
            &valid,
            &History::default(),
            None,
        );
        let keys: Vec<&str> = p.nodes.iter().map(|n| n.key.as_str()).collect();
        assert_eq!(
            keys,
            ["app", "environment-env", "environment-env.downloads", "lib"]
        );
        let group = &p.nodes[2];
        assert_eq!(group.kind, Kind::Downloads);
        assert_eq!(group.state, State::ToFetch);
        let d = group.downloads.as_ref().unwrap();
        assert_eq!(
            (d.count, d.bytes, d.valid, d.to_fetch),
            (3, 4_000_000, 2, 1)
        );
        assert_eq!(p.nodes[1].kind, Kind::Environment);
        assert_eq!(p.nodes[1].environment.as_deref(), Some("env"));
        let edges: Vec<(&str, &str)> = p
            .edges
            .iter()
            .map(|e| (e.from.as_str(), e.to.as_str()))
            .collect();
        assert_eq!(
            edges,
            [
                ("environment-env", "app"),
                ("environment-env.downloads", "environment-env"),
                ("lib", "app"),
            ]
        );
        let mut dot = Vec::new();
        p.to_dot(&mut dot).unwrap();
        let dot = String::from_utf8(dot).unwrap();
        assert!(
            dot.contains(
                "  subgraph \"cluster_environment-env\" {\n    label=\"environment `env`\"; "
            ) && dot.contains(
                "    \"environment-env.downloads\" [label=\"3 downloads, 4.0 MB\\n2 valid, 1 to fetch\", fillcolor=\"#a6cee3\""
            ),
            "{dot}"
        );
    }

    #[test]
    fn any_name_is_quoted_for_dot() {
        assert_eq!(quote("plain"), "\"plain\"");
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
        // A trailing backslash cannot escape the closing quote; `\N` stays text.
        assert_eq!(quote("x\\"), "\"x\\\\\"");
        assert_eq!(quote("\\N"), "\"\\\\N\"");
        assert_eq!(quote("two\nlines\ttab"), "\"two\\nlines tab\"");
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(0.042), "0.04s");
        assert_eq!(duration(2.46), "2.5s");
        assert_eq!(duration(14.2), "14s");
        assert_eq!(duration(396.0), "6m36s");
        assert_eq!(duration(3900.0), "1h05m");
    }
}
