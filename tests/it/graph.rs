//! `ksbuild graph` end to end: the states of a small graph before and after a realise (and
//! after a collection leaves a dependency not needed), what an edit makes rebuild compared
//! with `why-rebuild`, SVG rendered by Graphviz's `dot` checked node by node (fill colour
//! per state, red outline per change), an environment's downloads grouped into one node,
//! and the picture of `rpi-image@small` on the shared kernel store (lowered only: nothing is
//! built).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::common::{command_available, kernel_store, ksbuild, run, run_ok, scratch};
use crate::realise::{skip_without_busybox, Project, GRAPH};

/// The fill colour of each state, as the picture's legend says.
fn colour(state: &str) -> &'static str {
    match state {
        "valid" => "#b7e1a1",
        "to-build" => "#ffc966",
        "to-fetch" => "#a6cee3",
        "not-needed" => "#e0e0e0",
        other => panic!("unknown state {other}"),
    }
}

const CHANGED: &str = "#d62728";

/// Whether Graphviz's `dot` is here; in CI (`KSBUILD_REQUIRE_GRAPHVIZ`) it must be.
fn skip_without_dot() -> bool {
    if command_available("dot") {
        return false;
    }
    assert!(
        std::env::var_os("KSBUILD_REQUIRE_GRAPHVIZ").is_none(),
        "Graphviz's `dot` is required (KSBUILD_REQUIRE_GRAPHVIZ is set): apt-get install graphviz"
    );
    eprintln!("SKIP: Graphviz's `dot` is not installed");
    true
}

/// The JSON picture.
fn json(cmd: &mut Command) -> Value {
    serde_json::from_str(&run_ok(cmd.args(["--format", "json"]))).unwrap()
}

/// Nodes of a JSON picture by key.
fn nodes(picture: &Value) -> BTreeMap<String, Value> {
    picture["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["key"].as_str().unwrap().to_string(), n.clone()))
        .collect()
}

/// State of each node.
fn states(picture: &Value) -> BTreeMap<String, String> {
    nodes(picture)
        .into_iter()
        .map(|(k, n)| (k, n["state"].as_str().unwrap().to_string()))
        .collect()
}

/// The keys of the nodes marked changed.
fn changed(picture: &Value) -> BTreeSet<String> {
    nodes(picture)
        .into_iter()
        .filter(|(_, n)| n["changed"].as_bool().expect("`changed` on every node"))
        .map(|(k, _)| k)
        .collect()
}

fn edges(picture: &Value) -> BTreeSet<(String, String)> {
    picture["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["from"].as_str().unwrap().to_string(),
                e["to"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// One node of an SVG written by Graphviz.
#[derive(Debug)]
struct SvgNode {
    class: String,
    fill: String,
    stroke: String,
    text: Vec<String>,
}

fn unescape(s: &str) -> String {
    s.replace("&#45;", "-")
        .replace("&#160;", " ")
        .replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let len = text[from..].find(end)?;
    Some(&text[from..from + len])
}

/// The nodes of an SVG by title (the node's key): their class, the fill and outline of
/// their shape, and their text lines.
fn svg_nodes(svg: &str) -> BTreeMap<String, SvgNode> {
    assert!(svg.contains("<svg"), "not an SVG: {svg}");
    svg.split("<g id=\"node")
        .skip(1)
        .map(|chunk| {
            let chunk = chunk.split("</g>\n<!--").next().unwrap();
            let title = unescape(between(chunk, "<title>", "</title>").unwrap());
            let node = SvgNode {
                class: unescape(between(chunk, "class=\"", "\"").unwrap()),
                fill: between(chunk, " fill=\"", "\"").unwrap().to_string(),
                stroke: between(chunk, " stroke=\"", "\"").unwrap().to_string(),
                text: chunk
                    .split("<text ")
                    .skip(1)
                    .filter_map(|t| between(t, ">", "</text>"))
                    .map(unescape)
                    .collect(),
            };
            (title, node)
        })
        .collect()
}

/// Every node of `picture` is in the SVG, filled with the colour of its state and
/// outlined in red exactly when it changed.
fn assert_svg_matches(svg: &str, picture: &Value) {
    let drawn = svg_nodes(svg);
    let nodes = nodes(picture);
    assert_eq!(
        drawn.keys().collect::<Vec<_>>(),
        nodes.keys().collect::<Vec<_>>(),
        "the SVG's nodes"
    );
    for (key, n) in &nodes {
        let d = &drawn[key];
        let state = n["state"].as_str().unwrap();
        assert_eq!(d.fill, colour(state), "fill of {key}: {d:?}");
        assert!(
            d.class
                .contains(&format!("state_{}", state.replace('-', "_"))),
            "{key}: {d:?}"
        );
        let is_changed = n["changed"].as_bool() == Some(true);
        assert_eq!(d.stroke == CHANGED, is_changed, "outline of {key}: {d:?}");
        assert_eq!(d.class.contains("changed"), is_changed, "{key}: {d:?}");
    }
}

#[test]
fn states_before_and_after_a_realise_and_what_an_edit_rebuilds() {
    if skip_without_busybox() {
        return;
    }
    let p = Project::new(GRAPH);
    let graph = || {
        let mut c = p.ks("s");
        c.args(["graph", "c"]);
        c
    };
    // Before: everything to build; the busybox is a repository file, not a node.
    let before = json(&mut graph());
    assert_eq!(before["targets"], serde_json::json!(["c"]));
    let want: BTreeMap<String, String> = [("a", "to-build"), ("b", "to-build"), ("c", "to-build")]
        .into_iter()
        .map(|(k, s)| (k.to_string(), s.to_string()))
        .collect();
    assert_eq!(states(&before), want);
    let edge = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        edges(&before),
        BTreeSet::from([edge("a", "b"), edge("a", "c"), edge("b", "c")])
    );
    for (key, n) in nodes(&before) {
        assert_eq!(n["kind"], "build", "{key}");
        assert_eq!(n["target"], key == "c", "{key}");
        assert!(n["lastBuild"].is_null(), "{key}: never built");
        assert!(n["drv"].as_str().unwrap().ends_with(&format!("-{key}.drv")));
        assert!(n.get("changed").is_none(), "no --changed-since: {n}");
    }
    // The same bytes every time.
    assert_eq!(
        run_ok(graph().args(["--format", "json"])),
        run_ok(graph().args(["--format", "json"]))
    );
    let dot = run_ok(&mut graph());
    assert_eq!(dot, run_ok(&mut graph()));
    assert!(dot.starts_with("digraph \"ksbuild\" {"), "{dot}");
    assert!(
        dot.contains("\"c\" [label=\"c\\nto build\", fillcolor=\"#ffc966\"")
            && dot.contains("peripheries=2")
            && dot.contains("  \"a\" -> \"b\";\n  \"a\" -> \"c\";\n  \"b\" -> \"c\";\n"),
        "{dot}"
    );

    // After a realise: every node valid, with the time of its build.
    let first = run_ok(p.ks("s").args(["realise", "c"]));
    let after = json(&mut graph());
    assert!(states(&after).values().all(|s| s == "valid"), "{after}");
    for (key, n) in nodes(&after) {
        let last = &n["lastBuild"];
        assert_eq!(last["thisDrv"], true, "{key}: {n}");
        assert!(last["seconds"].as_f64().unwrap() >= 0.0, "{key}: {n}");
    }
    let dot = run_ok(&mut graph());
    assert!(
        dot.contains("\"a\" [label=\"a\\nvalid\\nbuilt in ") && !dot.contains("state_to_build"),
        "{dot}"
    );
    // `-o` writes a file, in the format its extension names.
    let file = p.scratch.join("graph.json");
    run_ok(graph().arg("-o").arg(&file));
    let written: Value = serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(written, after);

    // A collection keeps `c` (a GC root) and `a` (which it refers to), not `b`: `b` is
    // missing but not needed.
    run_ok(p.ks("s").args(["store", "gc"]));
    let collected = json(&mut graph());
    assert_eq!(states(&collected)["b"], "not-needed", "{collected}");
    assert_eq!(states(&collected)["c"], "valid", "{collected}");

    // An edit of `c`'s script: only `c` changed since `result`, as `why-rebuild` says.
    fs::write(
        p.dir.join("fragments/c.sh"),
        format!("{}\n# edited\n", GRAPH[3].1),
    )
    .unwrap();
    let why = |key: &str| -> Value {
        serde_json::from_str(&run_ok(p.ks("s").args(["why-rebuild", "--json", key]))).unwrap()
    };
    let since = |result: &str| {
        let mut c = graph();
        c.args(["--changed-since", result]);
        json(&mut c)
    };
    let edited = since("result");
    assert_eq!(changed(&edited), BTreeSet::from(["c".to_string()]));
    // `c` must be built again, and `b` (collected) with it.
    assert_eq!(states(&edited)["c"], "to-build");
    assert_eq!(states(&edited)["b"], "to-build");
    assert_eq!(states(&edited)["a"], "valid");
    let c = &nodes(&edited)["c"];
    assert_eq!(c["changes"], why("c")["changes"], "{c}");
    assert_eq!(c["changes"][0]["name"], "script", "{c}");
    assert_eq!(c["drvBefore"], why("c")["drvBefore"]);
    assert!(edited["changedSince"][0]
        .as_str()
        .unwrap()
        .ends_with(first.trim().rsplit('/').next().unwrap()));

    // The SVG, rendered by Graphviz: a node per key, filled by state, `c` outlined red.
    if !skip_without_dot() {
        let svg = run_ok(graph().args(["--changed-since", "result", "--format", "svg"]));
        assert_svg_matches(&svg, &edited);
        let drawn = svg_nodes(&svg);
        assert!(
            drawn["c"]
                .text
                .iter()
                .any(|t| t == "changed: input `script`"),
            "{:?}",
            drawn["c"]
        );
        assert!(drawn["a"].text.iter().any(|t| t.starts_with("built in ")));
    }
    // Without `dot`, SVG is refused with what to install and what to use instead.
    let mut no_dot = graph();
    no_dot.env("PATH", "/nonexistent").args(["--format", "svg"]);
    let out = run(&mut no_dot);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("graphviz") && err.contains("--format dot"),
        "{err}"
    );

    // An edit of `a`: everything changed, each node as `why-rebuild` says.
    let a = GRAPH[0].1.replace("echo a >", "echo A >");
    fs::write(p.dir.join("derivations/a.toml"), a).unwrap();
    let edited = since("result");
    let rebuilt: BTreeSet<String> = ["a", "b", "c"]
        .into_iter()
        .filter(|k| {
            let w = why(k);
            w["drvBefore"] != w["drvNow"]
        })
        .map(String::from)
        .collect();
    assert_eq!(changed(&edited), rebuilt);
    assert_eq!(rebuilt.len(), 3);
    for (key, n) in nodes(&edited) {
        assert_eq!(n["changes"], why(&key)["changes"], "{key}: {n}");
    }
    assert_eq!(nodes(&edited)["b"]["changes"][0]["upstream"], "a");

    // Realised again: nothing changed since the new `result`; against the first output,
    // the same three, valid now.
    run_ok(p.ks("s").args(["realise", "c"]));
    assert!(changed(&since("result")).is_empty());
    let old = since(first.trim());
    assert_eq!(changed(&old), rebuilt);
    assert!(states(&old).values().all(|s| s == "valid"), "{old}");

    // What is not an earlier output is refused, saying what to give.
    let mut bad = graph();
    bad.args(["--changed-since", "derivations"]);
    let out = run(&mut bad);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--changed-since derivations"),
        "{err}"
    );
    assert!(err.contains("`result` link"), "{err}");
}

/// A project with the repository's `probe` environment (locked) and a derivation in it.
fn probe_project(dir: &Path) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let proj = dir.join("proj");
    fs::create_dir_all(proj.join("derivations")).unwrap();
    fs::create_dir_all(proj.join("sandboxes")).unwrap();
    for f in [
        "derivations/_project.toml",
        "derivations/busybox-static.toml",
        "sandboxes/probe.toml",
        "sandboxes/probe.lock",
    ] {
        fs::copy(root.join(f), proj.join(f)).unwrap();
    }
    fs::write(
        proj.join("derivations/probe-env.toml"),
        "environment = \"probe\"\nbuilder = \"/bin/sh\"\nargs = [\"-c\", \"mkdir $out\"]\n",
    )
    .unwrap();
    proj
}

/// An environment's `.deb`s are one node (count and size from the lock) in a cluster with
/// the environment's tree. Offline: lowering only.
#[test]
fn an_environments_downloads_are_one_node() {
    let tmp = scratch();
    let proj = probe_project(tmp.path());
    let store = tmp.path().join("s");
    let graph = || {
        let mut c = ksbuild(&store);
        c.arg("--project").arg(&proj).args(["graph", "probe-env"]);
        c
    };
    let picture = json(&mut graph());
    let lock = fs::read_to_string(proj.join("sandboxes/probe.lock")).unwrap();
    let debs: Vec<(String, String)> = lock
        .split("[[deb]]")
        .skip(1)
        .map(|d| {
            let field = |k: &str| {
                d.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k} = ")))
                    .unwrap()
                    .trim_matches('"')
                    .to_string()
            };
            (
                format!(
                    "environment-probe.{}-{}",
                    field("name"),
                    field("architecture")
                ),
                field("size"),
            )
        })
        .collect();
    assert!(debs.len() > 5, "{lock}");
    let nodes = nodes(&picture);
    assert_eq!(
        nodes.keys().collect::<Vec<_>>(),
        [
            "busybox-static",
            "environment-probe",
            "environment-probe.downloads",
            "probe-env"
        ],
        "{picture}"
    );
    let group = &nodes["environment-probe.downloads"];
    assert_eq!(group["kind"], "downloads");
    assert_eq!(group["environment"], "probe");
    assert_eq!(group["state"], "to-fetch");
    let d = &group["downloads"];
    assert_eq!(d["count"], debs.len());
    assert_eq!(d["toFetch"], debs.len());
    assert_eq!(d["valid"], 0);
    let bytes: u64 = debs.iter().map(|(_, s)| s.parse::<u64>().unwrap()).sum();
    assert_eq!(d["bytes"], bytes);
    let mut keys: Vec<String> = debs.iter().map(|(k, _)| k.clone()).collect();
    keys.sort();
    assert_eq!(d["keys"], serde_json::json!(keys));
    assert_eq!(nodes["environment-probe"]["kind"], "environment");
    assert_eq!(nodes["environment-probe"]["environment"], "probe");
    assert_eq!(nodes["busybox-static"]["kind"], "fetch");
    assert_eq!(nodes["busybox-static"]["state"], "to-fetch");
    assert_eq!(nodes["probe-env"]["state"], "to-build");
    let edge = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        edges(&picture),
        BTreeSet::from([
            edge("busybox-static", "environment-probe"),
            edge("busybox-static", "probe-env"),
            edge("environment-probe", "probe-env"),
            edge("environment-probe.downloads", "environment-probe"),
        ])
    );
    let dot = run_ok(&mut graph());
    let cluster = dot
        .split("subgraph \"cluster_environment-probe\" {")
        .nth(1)
        .expect("a cluster per environment")
        .split("\n  }\n")
        .next()
        .unwrap();
    assert!(
        cluster.contains("label=\"environment `probe`\"")
            && cluster.contains("\"environment-probe\" [")
            && cluster.contains(&format!(
                "\"environment-probe.downloads\" [label=\"{} downloads, {:.1} MB\\n0 valid, {} to fetch\"",
                debs.len(),
                bytes as f64 / 1e6,
                debs.len()
            )),
        "{dot}"
    );
    assert!(!dot.contains("-amd64\""), "no node per .deb: {dot}");
}

/// The picture of `rpi-image@small` from the shared kernel store (whatever the kernel and
/// image tests have built there so far; nothing is built here), rendered by Graphviz.
#[test]
fn rpi_image_renders_with_graphviz() {
    if skip_without_dot() {
        return;
    }
    let tmp = scratch();
    let store = kernel_store();
    let proj = crate::images::project(tmp.path(), &store);
    let graph = || {
        let mut c = ksbuild(&store);
        c.arg("--project")
            .arg(&proj)
            .args(["graph", "rpi-image@small"]);
        c
    };
    let picture = json(&mut graph());
    let file = tmp.path().join("rpi.svg");
    run_ok(graph().arg("-o").arg(&file));
    // The kernel and image tests may finish builds meanwhile: compare the nodes whose
    // state did not change during the rendering.
    let again = json(&mut graph());
    let svg = fs::read_to_string(&file).unwrap();
    let drawn = svg_nodes(&svg);
    let nodes = nodes(&picture);
    assert_eq!(
        drawn.keys().collect::<Vec<_>>(),
        nodes.keys().collect::<Vec<_>>()
    );
    let (before, after) = (states(&picture), states(&again));
    let mut compared = 0;
    for (key, n) in &nodes {
        if before[key] != after[key] {
            continue;
        }
        assert_eq!(
            drawn[key].fill,
            colour(&before[key]),
            "{key}: {:?}",
            drawn[key]
        );
        compared += 1;
        // A valid build was built with this store, and says how long it took.
        if n["kind"] == "build" && before[key] == "valid" && !n["lastBuild"].is_null() {
            assert!(
                drawn[key]
                    .text
                    .iter()
                    .any(|t| t.starts_with("built in ") || t.starts_with("last build ")),
                "{key}: {:?}",
                drawn[key]
            );
        }
    }
    assert!(compared > 0);
    // The target, its kernel, and the environments' downloads grouped: a few dozen nodes,
    // not hundreds of `.deb`s.
    assert_eq!(nodes["rpi-image@small"]["target"], true);
    assert!(nodes.contains_key("kernel-rpi@small"), "{:?}", nodes.keys());
    let groups: Vec<&Value> = nodes
        .values()
        .filter(|n| n["kind"] == "downloads")
        .collect();
    assert!(
        groups.iter().any(|g| g["environment"] == "kernel"),
        "{:?}",
        nodes.keys()
    );
    let debs: u64 = groups
        .iter()
        .map(|g| g["downloads"]["count"].as_u64().unwrap())
        .sum();
    assert!(
        debs > 100 && nodes.len() < 80,
        "{} nodes, {debs} .debs",
        nodes.len()
    );
    for g in &groups {
        let text = &drawn[g["key"].as_str().unwrap()].text;
        assert!(
            text[0].ends_with(" MB") && text[0].contains(" downloads, "),
            "{text:?}"
        );
    }
    let not_valid: Vec<(&String, &String)> = before.iter().filter(|(_, s)| *s != "valid").collect();
    eprintln!(
        "rpi-image@small: {} nodes ({debs} .debs in {} groups); not valid: {not_valid:?}",
        nodes.len(),
        groups.len(),
    );
}
