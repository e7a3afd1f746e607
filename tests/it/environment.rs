//! Build environments end to end: `ksbuild lock` a small Debian environment, realise its
//! tree from the locked `.deb`s with the static busybox, and run a derivation inside it. The
//! build sees only the environment (no host gcc, os-release or PATH entries), cannot write to
//! the tree, and the tree's NAR hash is unchanged afterwards (python would write `.pyc`
//! files into a writable tree). A tampered `.deb` hash is refused before anything is built.

use std::fs;
use std::path::Path;

use crate::common::{ksbuild, run, run_ok, scratch};

const PROBE: &str = r#"environment = "probe"
builder = "/bin/sh"
args = ["-c", """
mkdir -p $out
{
  echo "gcc: $(ls /usr/bin/gcc 2>&1)"
  echo "os-release: $(cat /etc/os-release 2>&1)"
  echo "path: $PATH"
  for d in $(echo $PATH | tr ':' ' '); do [ -d $d ] && echo "dir $d: $(ls $d | wc -l)"; done
  echo "store: $(ls /nix/store | wc -l)"
  echo "write: $(touch /usr/bin/EVIL 2>&1)"
  echo "python: $(python3 -c 'import os, re; print(os.getcwd())' 2>&1)"
  echo "pwd: $(pwd)"
} > $out/report
"""]
"#;

/// A project in `dir/proj` holding `files` of this repository.
fn project_with(dir: &Path, files: &[&str]) -> std::path::PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let proj = dir.join("proj");
    fs::create_dir_all(proj.join("derivations")).unwrap();
    fs::create_dir_all(proj.join("sandboxes")).unwrap();
    for f in files {
        fs::copy(root.join(f), proj.join(f)).unwrap();
    }
    proj
}

#[test]
fn builds_run_inside_the_locked_environment_and_cannot_change_it() {
    let tmp = scratch();
    let proj = project_with(
        tmp.path(),
        &[
            "derivations/_project.toml",
            "derivations/busybox-static.toml",
            "sandboxes/probe.toml",
        ],
    );
    fs::write(proj.join("derivations/probe-env.toml"), PROBE).unwrap();
    let store = tmp.path().join("s");
    let ks = || {
        let mut c = ksbuild(&store);
        c.arg("--project").arg(&proj);
        c
    };
    let locked = run(ks().args(["lock", "probe"]));
    if !locked.status.success() && std::env::var_os("KSBUILD_REQUIRE_NETWORK").is_none() {
        eprintln!(
            "SKIP: cannot lock against the Debian archive here: {}",
            String::from_utf8_lossy(&locked.stderr)
        );
        return;
    }
    assert!(
        locked.status.success(),
        "{}",
        String::from_utf8_lossy(&locked.stderr)
    );
    let out = run_ok(ks().args(["realise", "--no-link", "probe-env"]));
    let report = fs::read_to_string(
        store
            .join(out.trim().trim_start_matches('/'))
            .join("report"),
    )
    .unwrap();
    let line = |key: &str| {
        report
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("{key} in {report}"))
            .to_string()
    };
    // Nothing of the host: no gcc (the host has one), no os-release (base-files is not in this environment).
    assert!(line("gcc:").contains("No such file"), "{report}");
    assert!(line("os-release:").contains("No such file"), "{report}");
    // Every PATH directory is the tree's: their sizes match the tree seen from outside.
    let tree = fs::read_dir(store.join("nix/store"))
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.to_string_lossy().ends_with("-environment-probe"))
        .expect("the environment tree is a store path");
    for l in report.lines().filter(|l| l.starts_with("dir ")) {
        let (dir, count) = l.trim_start_matches("dir ").split_once(": ").unwrap();
        let outside = fs::read_dir(tree.join(dir.trim_start_matches('/')))
            .unwrap()
            .count();
        assert_eq!(
            count.trim().parse::<usize>().unwrap(),
            outside,
            "{dir}: {report}"
        );
    }
    // Only the build's closure is in the store: busybox, the enter script and the tree (+ $out).
    assert_eq!(line("store:"), "store: 4", "{report}");
    assert!(line("write:").contains("Read-only file system"), "{report}");
    assert_eq!(line("python:"), "python: /build", "{report}");
    assert_eq!(line("pwd:"), "pwd: /build", "{report}");
    // python tried to write .pyc files: the tree must still hash as registered.
    run_ok(ks().args(["store", "verify", "--check-contents"]));

    // Changing the lock changes every hash downstream, and a wrong hash is refused before
    // anything is built.
    let before = run_ok(ks().args(["instantiate", "probe-env"]));
    let lock_file = proj.join("sandboxes/probe.lock");
    let text = fs::read_to_string(&lock_file).unwrap();
    let first_sum = text
        .lines()
        .find_map(|l| l.strip_prefix("sha256 = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    let forged = "0".repeat(64);
    fs::write(&lock_file, text.replacen(&first_sum, &forged, 1)).unwrap();
    let after = run_ok(ks().args(["instantiate", "probe-env"]));
    assert_ne!(before, after, "a changed lock must change the derivation");
    let out = run(ks().args(["realise", "--no-link", "probe-env"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hash mismatch") && err.contains("nothing was built"),
        "{err}"
    );
    // The hash is the lock's, and so is the fix.
    assert!(
        err.contains("`sandboxes/probe.lock`") && err.contains("`ksbuild lock probe`"),
        "{err}"
    );
}

/// An environment tree of another architecture (arm64 packages, unpacked as data) is built
/// by the static busybox of the build machine: its `system` is the project's, where that
/// busybox runs, not the packages' architecture. Offline: only lowering.
#[test]
fn an_environment_tree_is_for_the_system_its_builder_runs_on() {
    let tmp = scratch();
    let proj = project_with(
        tmp.path(),
        &[
            "derivations/_project.toml",
            "derivations/busybox-static.toml",
            "sandboxes/userland-arm64.toml",
            "sandboxes/userland-arm64.lock",
        ],
    );
    fs::write(
        proj.join("derivations/uses-arm64.toml"),
        "builder = \"${bb}/bin/busybox\"\nargs = [\"sh\", \"-c\", \"ls ${pkgs} > $out\"]\n[inputs]\nbb = \"busybox-static\"\npkgs = { environment = \"userland-arm64\" }\n",
    )
    .unwrap();
    let project: toml::Value =
        toml::from_str(&fs::read_to_string(proj.join("derivations/_project.toml")).unwrap())
            .unwrap();
    let system = project["system"].as_str().unwrap();
    let store = tmp.path().join("s");
    let shown = run_ok(ksbuild(&store).arg("--project").arg(&proj).args([
        "show-derivation",
        "-r",
        "uses-arm64",
    ]));
    let drvs: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&shown).unwrap();
    let by_name = |name: &str| {
        drvs.values()
            .find(|d| d["env"]["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` in {shown}"))
    };
    let busybox = by_name("busybox-static");
    let tree = by_name("environment-userland-arm64");
    assert_eq!(
        tree["builder"].as_str().unwrap(),
        format!(
            "{}/bin/busybox",
            busybox["outputs"]["out"]["path"].as_str().unwrap()
        )
    );
    assert_eq!(tree["system"], system, "{tree}");
    assert_eq!(tree["env"]["system"], system, "{tree}");
    // Every build of the closure runs where the project's builds run; downloads are builtin.
    for (path, d) in &drvs {
        let s = d["system"].as_str().unwrap();
        assert!(s == system || s == "builtin", "{path}: `{s}`");
    }
}
