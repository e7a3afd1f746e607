//! The update agent (`fragments/update-agent`, Rust) built from source by ksbuild: the
//! `rust` environment (Debian's Rust 1.63 and crates, with the arm64 standard library
//! locked as data next to the amd64 one), `update-agent` natively and `update-agent-arm64`
//! cross-compiled, both static executables of their machine that rebuild bit for bit; the
//! x86_64 one runs; every rootfs carries the agent and the trusted public keys, and refuses
//! an agent of another machine, a secret key and a malformed key. The builds share the
//! store of the kernel and image tests (the environment, 214 `.deb`s, is fetched and
//! unpacked once per run).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::common::{kernel_store, key_pair, ksbuild, run, run_ok, scratch};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// What `readelf` says about an ELF file: its machine, and whether it asks for a loader or
/// shared libraries.
struct Elf {
    machine: String,
    interpreter: Option<String>,
    needed: Vec<String>,
}

fn readelf(path: &Path) -> Elf {
    let header = run_ok(Command::new("readelf").arg("-h").arg(path));
    let machine = header
        .lines()
        .find_map(|l| l.trim().strip_prefix("Machine:"))
        .unwrap_or_else(|| panic!("{}: no machine in\n{header}", path.display()))
        .trim()
        .to_string();
    let dynamic = run_ok(Command::new("readelf").args(["-l", "-d"]).arg(path));
    let interpreter = dynamic.lines().find_map(|l| {
        l.split_once("program interpreter: ")
            .map(|(_, p)| p.trim_end_matches(']').to_string())
    });
    let needed = dynamic
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .map(|l| {
            l.rsplit('[')
                .next()
                .unwrap()
                .trim_end_matches(']')
                .to_string()
        })
        .collect();
    Elf {
        machine,
        interpreter,
        needed,
    }
}

/// `ksbuild` on the shared store for the project `proj`.
fn ks(proj: &Path) -> Command {
    let mut c = ksbuild(&kernel_store());
    c.arg("--project").arg(proj);
    c
}

/// The output directory of `target` of `proj` in the shared store (built if needed); `None`
/// when the Debian archive is unreachable and the network is not required.
fn realise(proj: &Path, target: &str) -> Option<PathBuf> {
    let out = run(ks(proj).args(["realise", "--no-link", "-j2", target]));
    if crate::common::skip_as_archive_unreachable(&out) {
        return None;
    }
    assert!(
        out.status.success(),
        "realise {target}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The build times, for the record (nothing when the output was already there).
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        if line.starts_with("built `") {
            eprintln!("{line}");
        }
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Some(kernel_store().join(path.trim_start_matches('/')))
}

/// The lock mixes architectures as the environment asks: the amd64 toolchain with its
/// closure, and the arm64 standard library alone (data: no arm64 dependency comes along).
#[test]
fn the_rust_lock_holds_both_standard_libraries_and_only_that_arm64_package() {
    let lock = fs::read_to_string(repo().join("sandboxes/rust.lock")).unwrap();
    let lock: toml::Value = toml::from_str(&lock).unwrap();
    let debs = lock["deb"].as_array().unwrap();
    let find = |name: &str, arch: &str| {
        debs.iter()
            .find(|d| d["name"].as_str() == Some(name) && d["architecture"].as_str() == Some(arch))
            .unwrap_or_else(|| panic!("{name}:{arch} is not in sandboxes/rust.lock"))
    };
    let native = find("libstd-rust-dev", "amd64");
    let cross = find("libstd-rust-dev", "arm64");
    // The same rustc for both: Rust refuses a standard library of another compiler version.
    assert_eq!(native["version"], cross["version"]);
    assert_eq!(find("rustc", "amd64")["version"], native["version"]);
    assert!(native["version"].as_str().unwrap().starts_with("1.63."));
    for (name, version) in [("librust-ring-dev", "0.16."), ("librust-sha2-dev", "0.10.")] {
        assert!(find(name, "amd64")["version"]
            .as_str()
            .unwrap()
            .starts_with(version));
    }
    // The cross toolchain's libraries are `Architecture: all` packages of the amd64 archive.
    for (name, arch) in [
        ("cargo", "amd64"),
        ("gcc", "amd64"),
        ("libc6-dev", "amd64"),
        ("gcc-aarch64-linux-gnu", "amd64"),
        ("libc6-dev-arm64-cross", "all"),
    ] {
        find(name, arch);
    }
    let arm64: Vec<&str> = debs
        .iter()
        .filter(|d| d["architecture"].as_str() == Some("arm64"))
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(arm64, ["libstd-rust-dev"]);
}

/// Both agents build (timed), are static executables of their machine, rebuild bit for bit
/// under every variation `check` makes, and the x86_64 one runs; cargo resolved Debian's
/// crates offline (the Cargo.lock it wrote is in the output).
#[test]
fn update_agents_are_static_for_their_machine_run_and_rebuild_bit_for_bit() {
    let targets = ["update-agent", "update-agent-arm64"];
    let start = Instant::now();
    let mut outs = Vec::new();
    for target in targets {
        let Some(out) = realise(repo(), target) else {
            return;
        };
        outs.push(out);
    }
    eprintln!(
        "update-agent + update-agent-arm64 realised in {:.1}s (including the rust environment, \
         unless already in the store)",
        start.elapsed().as_secs_f64()
    );
    crate::common::publish_to_ci_cache(repo(), &targets);
    for (out, machine) in outs
        .iter()
        .zip(["Advanced Micro Devices X86-64", "AArch64"])
    {
        let bin = out.join("bin/kubesolo-update");
        let elf = readelf(&bin);
        assert_eq!(elf.machine, machine, "{}", bin.display());
        assert_eq!(elf.interpreter, None, "{} is not static", bin.display());
        assert!(
            elf.needed.is_empty(),
            "{} needs {:?}",
            bin.display(),
            elf.needed
        );
        let lock = fs::read_to_string(out.join("share/kubesolo-update/Cargo.lock")).unwrap();
        for krate in [
            "name = \"ring\"\nversion = \"0.16.",
            "name = \"sha2\"\nversion = \"0.10.",
        ] {
            assert!(lock.contains(krate), "{krate} not resolved:\n{lock}");
        }
    }
    let help = run(Command::new(outs[0].join("bin/kubesolo-update")).arg("--help"));
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.status.success() && text.contains("kubesolo-update"),
        "kubesolo-update --help: {}\n{text}{}",
        help.status,
        String::from_utf8_lossy(&help.stderr)
    );
    let start = Instant::now();
    let out = run(ks(repo())
        .args(["check", "--json", "--vary", "all", "-j2"])
        .args(targets));
    eprintln!(
        "check: both agents built once more in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for d in verdict["derivations"].as_array().unwrap() {
        assert_eq!(d["reproducible"], true, "{verdict}");
        assert!(d["builds"].as_u64().unwrap() >= 2, "{verdict}");
        let o = &d["outputs"][0];
        assert_eq!(o["builds"][0], o["builds"][1], "{verdict}");
    }
}

/// A copy of the project (stand-in KubeSolo pinned) whose update keys are `keys`
/// (file name, content).
fn project_with_keys(dir: &Path, keys: &[(&str, &str)]) -> PathBuf {
    let proj = crate::images::project(dir, &kernel_store());
    for (name, text) in keys {
        fs::write(proj.join("fragments/update-keys").join(name), text).unwrap();
    }
    proj
}

/// Every rootfs (x86_64; arm64, which the Raspberry Pi track uses too) carries its agent
/// as /usr/bin/kubesolo-update, byte for byte the agent's output, and the public keys of
/// fragments/update-keys (only the `*.pub` files) in /usr/share/kubesolo-update/keys.
#[test]
fn every_rootfs_carries_its_static_agent_and_the_public_update_keys() {
    let tmp = scratch();
    let (_, public) = key_pair(tmp.path());
    let proj = project_with_keys(tmp.path(), &[("test.pub", &format!("{public}\n"))]);
    for (rootfs, agent) in [
        ("rootfs-x86_64", "update-agent"),
        ("rootfs-arm64", "update-agent-arm64"),
    ] {
        let Some(root) = realise(&proj, rootfs) else {
            return;
        };
        let agent = realise(&proj, agent).unwrap();
        let bin = root.join("usr/bin/kubesolo-update");
        assert_eq!(
            fs::read(&bin).unwrap(),
            fs::read(agent.join("bin/kubesolo-update")).unwrap(),
            "{rootfs}: /usr/bin/kubesolo-update is not the agent"
        );
        let keys = root.join("usr/share/kubesolo-update/keys");
        let mut names: Vec<String> = fs::read_dir(&keys)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["test.pub"], "{rootfs}");
        assert_eq!(
            fs::read_to_string(keys.join("test.pub")).unwrap(),
            format!("{public}\n")
        );
        if rootfs == "rootfs-x86_64" {
            let out = run_ok(Command::new(&bin).arg("--help"));
            assert!(out.contains("kubesolo-update"), "{out}");
        }
    }
}

/// The rootfs refuses what the agent could not use or must never carry, naming the file and
/// the fix: an agent of another machine, a secret key (never echoed), a malformed key.
#[test]
fn a_wrong_agent_a_secret_key_or_a_malformed_key_fails_the_rootfs() {
    let tmp = scratch();
    let (secret, _) = key_pair(tmp.path());
    let secret = fs::read_to_string(secret).unwrap();
    let fails = |dir: &str, keys: &[(&str, &str)], edit: &dyn Fn(&Path), target: &str| {
        let proj = project_with_keys(&tmp.path().join(dir), keys);
        edit(&proj);
        let out = run(ks(&proj).args(["realise", "--no-link", "-j2", target]));
        if crate::common::skip_as_archive_unreachable(&out) {
            return None;
        }
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{target} built: {err}");
        Some(err)
    };
    let none = |_: &Path| {};
    let Some(err) = fails(
        "secret",
        &[("release.pub", &secret)],
        &none,
        "rootfs-x86_64",
    ) else {
        return;
    };
    assert!(
        err.contains("rootfs check: fragments/update-keys/release.pub holds a SECRET key"),
        "{err}"
    );
    let secret_b64 = secret.trim().split_once(':').unwrap().1;
    assert!(
        !err.contains(secret_b64),
        "the secret key is in the log: {err}"
    );
    let err = fails(
        "malformed",
        &[("a.pub", "# ok\n\nname:c2hvcnQ=\n")],
        &none,
        "rootfs-x86_64",
    )
    .unwrap();
    assert!(
        err.contains(
            "rootfs check: fragments/update-keys/a.pub line 3 is not an Ed25519 public key"
        ),
        "{err}"
    );
    // The x86_64 agent given to the arm64 rootfs.
    let swap = |proj: &Path| {
        let file = proj.join("derivations/rootfs-arm64.toml");
        let text = fs::read_to_string(&file).unwrap();
        fs::write(
            &file,
            text.replace("agent = \"update-agent-arm64\"", "agent = \"update-agent\""),
        )
        .unwrap();
    };
    let err = fails("swapped", &[], &swap, "rootfs-arm64").unwrap();
    assert!(
        err.contains(
            "rootfs check: usr/bin/kubesolo-update is an ELF for Advanced Micro Devices X86-64, \
             but this rootfs (aarch64-linux-gnu) needs AArch64; the update agent given as \
             `agent` was built for another target"
        ),
        "{err}"
    );
}
