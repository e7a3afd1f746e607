//! `ksbuild lock` against the Debian archive (reachable from CI: it is where apt gets
//! nix-bin): the closure agrees with apt's own simulation into an empty system over the
//! same index, and a tampered release file or index is refused.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use crate::common::{ksbuild, run, run_ok, scratch};

/// Skips when the archive is unreachable, unless CI requires the network.
fn skip_without_archive(out: &std::process::Output) -> bool {
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success()
        && err.contains("cannot download")
        && std::env::var_os("KSBUILD_REQUIRE_NETWORK").is_none()
    {
        eprintln!("SKIP: the Debian archive is unreachable here: {err}");
        return true;
    }
    false
}

fn project(dir: &Path, env: &str) {
    fs::create_dir_all(dir.join("derivations")).unwrap();
    fs::create_dir_all(dir.join("sandboxes")).unwrap();
    fs::write(dir.join("sandboxes/small.toml"), env).unwrap();
}

const SMALL: &str = "suites = [\"bookworm\", \"bookworm-updates\"]\nsecurity = \"bookworm-security\"\npackages = [\"usr-is-merged\", \"bc\", \"make\", \"xz-utils\"]\n";

#[test]
fn the_closure_agrees_with_apt() {
    if Command::new("apt-get").arg("--version").output().is_err() {
        eprintln!("SKIP: apt-get is not installed");
        return;
    }
    let tmp = scratch();
    let proj = tmp.path().join("proj");
    project(&proj, SMALL);
    // apt's view: a private state (so the host is untouched) with an empty dpkg status,
    // updated from the host's sources right before ksbuild reads the same archive.
    let apt = tmp.path().join("apt");
    for d in ["state/lists/partial", "cache/archives/partial", "status"] {
        fs::create_dir_all(apt.join(d)).unwrap();
    }
    fs::write(apt.join("status/status"), "").unwrap();
    let conf = apt.join("apt.conf");
    fs::write(
        &conf,
        format!(
            "Dir::State \"{a}/state\";\nDir::State::Lists \"{a}/state/lists\";\nDir::State::status \"{a}/status/status\";\nDir::Cache \"{a}/cache\";\nAPT::Architecture \"amd64\";\nAPT::Architectures {{ \"amd64\"; }};\nAcquire::Languages \"none\";\nAPT::Sandbox::User \"root\";\n",
            a = apt.display()
        ),
    )
    .unwrap();
    let apt_cmd = |program: &str| {
        let mut c = Command::new(program);
        c.env("APT_CONFIG", &conf);
        c
    };
    let update = run(apt_cmd("apt-get").arg("update"));
    if !update.status.success() {
        assert!(
            std::env::var_os("KSBUILD_REQUIRE_NETWORK").is_none(),
            "apt-get update failed: {}",
            String::from_utf8_lossy(&update.stderr)
        );
        eprintln!("SKIP: apt-get update failed here");
        return;
    }
    let out = run(ksbuild(&tmp.path().join("s"))
        .args(["--project"])
        .arg(&proj)
        .args(["lock", "small"]));
    if skip_without_archive(&out) {
        return;
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lock: toml::Value =
        toml::from_str(&fs::read_to_string(proj.join("sandboxes/small.lock")).unwrap()).unwrap();
    assert_eq!(
        lock["signature_checked"].as_bool(),
        Some(Path::new("/usr/share/keyrings/debian-archive-keyring.gpg").exists())
    );
    let ours: BTreeSet<(String, String)> = lock["deb"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap().to_string(),
                d["version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // Essential packages, as mmdebstrap lists them for an empty status.
    let dump = run_ok(apt_cmd("apt-cache").arg("dumpavail"));
    let mut essential = BTreeSet::new();
    for stanza in dump.split("\n\n") {
        if stanza.lines().any(|l| l == "Essential: yes") {
            if let Some(name) = stanza.lines().find_map(|l| l.strip_prefix("Package: ")) {
                essential.insert(name.to_string());
            }
        }
    }
    assert!(essential.len() > 15, "{essential:?}");
    let sim = run_ok(
        apt_cmd("apt-get")
            .args([
                "-s",
                "--no-install-recommends",
                "install",
                "usr-is-merged",
                "bc",
                "make",
                "xz-utils",
            ])
            .args(&essential),
    );
    let theirs: BTreeSet<(String, String)> = sim
        .lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next().unwrap().to_string();
            let version = words.next().unwrap().trim_start_matches('(').to_string();
            (name, version)
        })
        .collect();
    assert_eq!(
        ours, theirs,
        "ksbuild's closure (left) differs from apt's simulation (right)"
    );
    // Every entry names its pool path, size and a SHA-256.
    for d in lock["deb"].as_array().unwrap() {
        assert!(d["path"].as_str().unwrap().starts_with("pool/"));
        assert_eq!(d["sha256"].as_str().unwrap().len(), 64);
    }
}

#[test]
fn tampered_release_files_and_indexes_are_refused() {
    if !Path::new("/usr/share/keyrings/debian-archive-keyring.gpg").exists()
        || Command::new("gpgv").arg("--version").output().is_err()
    {
        eprintln!("SKIP: gpgv and the Debian keyring are needed to check signatures");
        return;
    }
    let lists = Path::new("/var/lib/apt/lists");
    let Some(in_release) = fs::read_dir(lists)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.to_string_lossy()
                .ends_with("_debian_dists_bookworm_InRelease")
        })
    else {
        eprintln!("SKIP: no apt lists of bookworm on this host (run apt-get update)");
        return;
    };
    let tmp = scratch();
    let proj = tmp.path().join("proj");
    project(&proj, "suites = [\"bookworm\"]\npackages = [\"bc\"]\n");
    let mirror = tmp.path().join("mirror");
    let dists = mirror.join("dists/bookworm");
    fs::create_dir_all(dists.join("main/binary-amd64")).unwrap();
    let genuine = fs::read(&in_release).unwrap();
    // A genuine release with a forged index: the checksum catches it.
    fs::write(dists.join("InRelease"), &genuine).unwrap();
    fs::write(dists.join("main/binary-amd64/Packages.xz"), b"forged index").unwrap();
    let lock = |m: &Path| {
        run(ksbuild(&tmp.path().join("s"))
            .env("KSBUILD_MIRROR_DEBIAN", format!("file://{}", m.display()))
            .arg("--project")
            .arg(&proj)
            .args(["lock", "small"]))
    };
    let out = lock(&mirror);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("does not match its checksum"),
        "{err}"
    );
    // A release whose signed text was altered: the signature check refuses it.
    let text =
        String::from_utf8_lossy(&genuine).replacen("Codename: bookworm", "Codename: bookw0rm", 1);
    assert!(
        text.as_bytes() != genuine.as_slice(),
        "the release text should have been altered"
    );
    fs::write(dists.join("InRelease"), text).unwrap();
    let out = lock(&mirror);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("does not verify"),
        "{err}"
    );
    assert!(
        !proj.join("sandboxes/small.lock").exists(),
        "nothing is written on failure"
    );
}
