//! `ksbuild check`: rounds of fresh builds compared bit for bit, differences explained
//! file by file with a likely cause, and recorded outputs (`derivations/outputs.lock`)
//! that a later check compares with, across machines and time.

use std::fs;

use crate::common::{run, run_ok};
use crate::realise::{skip_without_busybox, Project, GRAPH};

/// The verdict `check --json` printed.
fn verdict(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no verdict ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A reproducible graph passes with two builds each (the realisation's own build counts
/// as one), is recorded, and later compares with its record: as recorded; then a changed
/// fragment makes the record stale (exit 1, with the re-record command — never a silent
/// pass), and a record that disagrees with the build exits 104.
#[test]
fn a_reproducible_graph_passes_is_recorded_and_compares_with_its_record() {
    if skip_without_busybox() {
        return;
    }
    let p = Project::new(GRAPH);
    let out = run(p
        .ks("st")
        .args(["check", "--json", "--depth", "closure", "c"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v = verdict(&out);
    assert_eq!(v["reproducible"], true);
    let checked: Vec<&str> = v["derivations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["target"].as_str().unwrap())
        .collect();
    assert_eq!(checked, ["a", "b", "c"], "the closure, in build order");
    for d in v["derivations"].as_array().unwrap() {
        assert_eq!(d["builds"], 2, "{d}");
        assert_eq!(d["rebuilt"], 1, "the store's own build is the first: {d}");
        for o in d["outputs"].as_array().unwrap() {
            let builds = o["builds"].as_array().unwrap();
            assert_eq!(builds.len(), 2);
            assert_eq!(builds[0], builds[1]);
        }
    }
    // Recorded: the .drv and the NAR hash of each output.
    run_ok(p.ks("st").args(["check", "--record", "c"]));
    let lock = fs::read_to_string(p.dir.join("derivations/outputs.lock")).unwrap();
    let c_hash = v["derivations"][2]["outputs"][0]["builds"][0]
        .as_str()
        .unwrap();
    assert!(lock.contains("[c]") && lock.contains(c_hash), "{lock}");
    // Another store (another machine), one build, compared with the record.
    let out = run(p
        .ks("other")
        .args(["check", "--against-record", "--json", "c"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = verdict(&out);
    assert_eq!(v["derivations"][0]["builds"], 1);
    assert_eq!(v["derivations"][0]["record"]["status"], "matches");
    // A record that disagrees with the build: 104.
    fs::write(
        p.dir.join("derivations/outputs.lock"),
        lock.replace(
            c_hash,
            "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ),
    )
    .unwrap();
    let out = run(p.ks("other").args(["check", "--against-record", "c"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(104), "{stderr}");
    assert!(
        stderr.contains("NOT as recorded") && stderr.contains(c_hash),
        "{stderr}"
    );
    fs::write(p.dir.join("derivations/outputs.lock"), &lock).unwrap();
    // A changed fragment: the record is stale, and says how to re-record.
    let script = p.dir.join("fragments/c.sh");
    fs::write(
        &script,
        fs::read_to_string(&script).unwrap() + "echo changed\n",
    )
    .unwrap();
    let out = run(p.ks("other").args(["check", "--against-record", "c"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the record of `c` is for `/nix/store/")
            && stderr.contains("nothing was built")
            && stderr.contains("re-record with `ksbuild check --record c`"),
        "{stderr}"
    );
    // No record at all.
    let out = run(p.ks("other").args(["check", "--against-record", "a"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ksbuild check --record a"), "{stderr}");
    // A record is written only from builds that agree: one build is refused.
    let out = run(p.ks("st").args(["check", "--record", "--rounds", "1", "a"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("a record needs at least two builds that agree"),
        "{stderr}"
    );
}

/// Non-reproducible builds exit 104; the explanation names the file inside the output,
/// where it parts, and a likely cause; the differing build is kept; a record is refused.
#[test]
fn differences_are_explained_by_file_offset_and_cause() {
    if skip_without_busybox() {
        return;
    }
    let drv = |name: &str, script: &str| {
        (
            format!("derivations/{name}.toml"),
            format!(
                "builder = \"${{bb}}/bin/busybox\"\nargs = [\"sh\", \"-c\", {script:?}]\n[inputs]\nbb = {{ path = \"tools/busybox\" }}\n"
            ),
        )
    };
    let files = [
        drv(
            "clock",
            // The second ticks between builds (busybox's `date` has no `%N`).
            "B=$builder; $B sleep 1; $B mkdir -p $out/share; echo 'version 1' > $out/share/info; $B date -u '+built %Y-%m-%d %H:%M:%S' >> $out/share/info; echo same > $out/same",
        ),
        drv(
            "uuid",
            "echo \"id=$(cat /proc/sys/kernel/random/uuid)\" > $out",
        ),
    ];
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let p = Project::new(&files);
    for (target, file, cause) in [
        ("clock", "/share/info", "timestamp"),
        ("uuid", "/", "random"),
    ] {
        let out = run(p
            .ks("st")
            .args(["check", "--json", "--rounds", "3", target]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(104), "{target}: {stderr}");
        let v = verdict(&out);
        assert_eq!(v["reproducible"], false);
        let o = &v["derivations"][0]["outputs"][0];
        assert_eq!(o["reproducible"], false);
        assert_eq!(o["builds"].as_array().unwrap().len(), 3);
        let d = &o["differences"][0];
        assert_eq!(d["path"], file, "{target}: {o}");
        assert_eq!(d["what"], "content");
        assert_eq!(d["cause"], cause, "{target}: {o}");
        assert!(d["offset"].as_u64().is_some());
        let kept = o["kept"].as_str().unwrap();
        assert!(std::path::Path::new(kept).exists(), "kept at {kept}");
        assert!(
            stderr.contains(&format!(
                "error: `{target}` is not reproducible over 3 build(s)"
            )) && stderr.contains(&format!("{file}: content from byte")),
            "{stderr}"
        );
        let out = run(p.ks("st").args(["check", "--record", target]));
        assert_eq!(out.status.code(), Some(104));
        assert!(
            !p.dir.join("derivations/outputs.lock").exists(),
            "nothing recorded"
        );
    }
    // The report, r13y style.
    let report = p.scratch.join("report.md");
    let out = run(p
        .ks("st")
        .args(["check", "--report"])
        .arg(&report)
        .arg("uuid"));
    assert_eq!(out.status.code(), Some(104));
    let md = fs::read_to_string(&report).unwrap();
    assert!(
        md.contains("**0 of 1 derivations reproducible.**") && md.contains("| `uuid` | 2 |"),
        "{md}"
    );
}

/// Each variation catches a derivation that depends on what it varies (exit 104, the
/// differing file named), and none of them changes a reproducible output: the GRAPH
/// derivations pass under `--vary all`.
#[test]
fn each_variation_catches_what_depends_on_it_and_spares_what_does_not() {
    if skip_without_busybox() {
        return;
    }
    let drv = |name: &str, script: &str| {
        (
            format!("derivations/{name}.toml"),
            format!(
                "builder = \"${{bb}}/bin/busybox\"\nargs = [\"sh\", \"-c\", {script:?}]\n[inputs]\nbb = {{ path = \"tools/busybox\" }}\n"
            ),
        )
    };
    let cases = [
        (
            "time",
            "echo \"built $($builder date -u '+%Y-%m-%d %H:%M:%S')\" > $out",
        ),
        (
            "cores",
            "echo \"cores=$NIX_BUILD_CORES nproc=$($builder nproc)\" > $out",
        ),
        ("hostname", "echo \"host=$($builder hostname)\" > $out"),
        ("umask", "echo \"umask=$(umask)\" > $out"),
        ("aslr", "$builder grep -F '[stack]' /proc/self/maps > $out"),
        ("uname", "echo \"release=$($builder uname -r)\" > $out"),
    ];
    let mut files: Vec<(String, String)> = cases.iter().map(|(n, s)| drv(n, s)).collect();
    files.extend(GRAPH.iter().map(|(a, b)| (a.to_string(), b.to_string())));
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let p = Project::new(&files);
    for (name, _) in cases {
        // Without the variation, two builds agree ...
        if name != "time" {
            let out = run(p.ks("st").args(["check", name]));
            assert!(
                out.status.success(),
                "{name} without --vary: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // ... and with it, they do not.
        let out = run(p.ks("st").args(["check", "--json", "--vary", name, name]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(104), "--vary {name}: {stderr}");
        let v = verdict(&out);
        let d = &v["derivations"][0];
        assert_eq!(d["variations"], serde_json::json!([name]), "{d}");
        assert_eq!(d["outputs"][0]["differences"][0]["path"], "/", "{d}");
    }
    let out = run(p.ks("st").args([
        "check", "--json", "--vary", "all", "--depth", "closure", "c",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "--vary all changed a reproducible output: {stderr}"
    );
    let v = verdict(&out);
    assert_eq!(v["derivations"].as_array().unwrap().len(), 3);
    assert_eq!(
        v["derivations"][0]["variations"],
        serde_json::json!(["time", "cores", "hostname", "umask", "aslr", "uname"])
    );
    let out = run(p.ks("st").args(["check", "--vary", "colour", "c"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown variation `colour`"), "{stderr}");
}
