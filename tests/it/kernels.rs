//! The kernel tracks: which fragments feed which kernel, and real compiles of the small
//! variants (tinyconfig + the container fragment + what a QEMU boot needs) in the locked
//! `kernel` environment, with the config audit. Each small kernel is compiled once per run
//! and checked bit for bit against its record in `derivations/outputs.lock` (`ksbuild
//! check --against-record`), which two builds that agreed wrote (`ksbuild check --record`):
//! an independent build, on another machine and at another time, for the price of one
//! compile (about 10 minutes each on 2 cores). Kernel builds share one store under Cargo's
//! target directory with the image tests, which reuse these kernels, so the environment
//! (157 `.deb`s) and the sources are fetched and unpacked once.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{drv_paths, ksbuild, run, run_ok, scratch};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn shared_store() -> PathBuf {
    crate::common::kernel_store()
}

/// A copy of the project's derivations, fragments and environments, to edit.
fn project_copy(dir: &Path) {
    for d in ["derivations", "fragments", "sandboxes"] {
        run_ok(Command::new("cp").arg("-r").arg(repo().join(d)).arg(dir));
    }
}

#[test]
fn fragments_change_exactly_the_tracks_that_use_them() {
    let tmp = scratch();
    project_copy(tmp.path());
    let store = tmp.path().join("s");
    // The fork is upstream-only: pin any file in its place (only hashes are compared here).
    let fork = tmp.path().join("fork.tar.gz");
    fs::write(&fork, "not really the fork").unwrap();
    run_ok(
        ksbuild(&store)
            .arg("--project")
            .arg(tmp.path())
            .args(["pin", "linux-rpi"])
            .arg(&fork),
    );
    let targets = [
        "kernel-x86_64",
        "kernel-arm64",
        "kernel-rpi",
        "kernel-x86_64@small",
        "kernel-arm64@small",
        "kernel-rpi@small",
        "kernel-rpi@pi5",
    ];
    let base = drv_paths(&store, tmp.path(), &targets);
    let changed = |file: &str| -> Vec<&str> {
        let path = tmp.path().join("fragments").join(file);
        let original = fs::read_to_string(&path).unwrap();
        fs::write(&path, format!("{original}CONFIG_MAGIC_SYSRQ=y\n")).unwrap();
        let after = drv_paths(&store, tmp.path(), &targets);
        fs::write(&path, original).unwrap();
        targets
            .iter()
            .zip(base.iter().zip(&after))
            .filter(|(_, (b, a))| b != a)
            .map(|(t, _)| *t)
            .collect()
    };
    // CI's one small arm64 kernel: the generic ARM64 and the Pi small variants are one
    // derivation, compiled once.
    assert_eq!(base[4], base[5], "kernel-arm64@small is kernel-rpi@small");
    assert_eq!(
        changed("rpi-kernel-overrides.fragment"),
        [
            "kernel-rpi",
            "kernel-arm64@small",
            "kernel-rpi@small",
            "kernel-rpi@pi5"
        ]
    );
    assert_eq!(
        changed("arm64-virt.fragment"),
        [
            "kernel-arm64",
            "kernel-rpi",
            "kernel-arm64@small",
            "kernel-rpi@small",
            "kernel-rpi@pi5"
        ]
    );
    assert_eq!(changed("kernel-container.fragment"), targets);
    assert_eq!(
        changed("x86_64-virt.fragment"),
        ["kernel-x86_64", "kernel-x86_64@small"]
    );
    assert_eq!(
        changed("kernel-small-x86_64.fragment"),
        ["kernel-x86_64@small"]
    );
    assert_eq!(
        changed("kernel-small-arm64.fragment"),
        ["kernel-arm64@small", "kernel-rpi@small"]
    );
    // The lock is an input too: a different .deb changes every kernel (its size alone does not
    // enter the derivations; its hash and URL do).
    let lock = tmp.path().join("sandboxes/kernel.lock");
    let text = fs::read_to_string(&lock).unwrap();
    let sum = text
        .lines()
        .find_map(|l| l.strip_prefix("sha256 = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_string();
    fs::write(&lock, text.replacen(&sum, &"1".repeat(64), 1)).unwrap();
    let after = drv_paths(&store, tmp.path(), &targets);
    assert!(base.iter().zip(&after).all(|(b, a)| b != a));
}

/// Realises `target` of `proj` in the shared store (once: the image tests reuse it) and
/// compares it bit for bit with its record in `derivations/outputs.lock`.
fn build_and_check_against_record(proj: &Path, target: &str) -> PathBuf {
    let store = shared_store();
    let out = run(ksbuild(&store).arg("--project").arg(proj).args([
        "check",
        "--against-record",
        "--json",
        "-j2",
        target,
    ]));
    if crate::common::skip_as_archive_unreachable(&out) {
        return PathBuf::new();
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{target} does not build to its record: {err}"
    );
    crate::common::publish_to_ci_cache(proj, &[target]);
    let verdict: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("check --json prints its verdict");
    let d = &verdict["derivations"][0];
    assert_eq!(d["record"]["status"], "matches", "{verdict}");
    assert!(d["builds"].as_u64().unwrap() >= 1, "{verdict}");
    let o = &d["outputs"][0];
    assert_eq!(o["builds"][0], o["recorded"], "{verdict}");
    let path = o["path"].as_str().unwrap();
    store.join(path.trim_start_matches('/'))
}

/// A changed kernel fragment makes the record stale: `--against-record` fails before
/// building, naming the command that re-records — never a silent pass.
#[test]
fn a_changed_fragment_makes_the_kernel_record_stale() {
    let tmp = scratch();
    project_copy(tmp.path());
    let fragment = tmp.path().join("fragments/kernel-small-x86_64.fragment");
    let text = fs::read_to_string(&fragment).unwrap();
    fs::write(&fragment, format!("{text}CONFIG_MAGIC_SYSRQ=y\n")).unwrap();
    let out = run(ksbuild(&tmp.path().join("s"))
        .arg("--project")
        .arg(tmp.path())
        .args(["check", "--against-record", "kernel-x86_64@small"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the record of `kernel-x86_64@small` is for `/nix/store/")
            && err.contains("nothing was built")
            && err.contains("ksbuild check --record kernel-x86_64@small"),
        "{err}"
    );
}

#[test]
fn small_x86_64_kernel_builds_bit_for_bit_as_recorded() {
    let out = build_and_check_against_record(repo(), "kernel-x86_64@small");
    if out.as_os_str().is_empty() {
        return;
    }
    assert!(fs::metadata(out.join("bzImage")).unwrap().len() > 500_000);
    let config = fs::read_to_string(out.join("config")).unwrap();
    for opt in [
        "CONFIG_NF_TABLES=y",
        "CONFIG_OVERLAY_FS=y",
        "CONFIG_CGROUPS=y",
        "CONFIG_SERIAL_8250_CONSOLE=y",
    ] {
        assert!(config.lines().any(|l| l == opt), "{opt} missing");
    }
}

#[test]
fn small_arm64_kernel_cross_compiles_bit_for_bit_as_recorded() {
    let out = build_and_check_against_record(repo(), "kernel-arm64@small");
    if out.as_os_str().is_empty() {
        return;
    }
    assert!(fs::metadata(out.join("Image")).unwrap().len() > 1_000_000);
    let config = fs::read_to_string(out.join("config")).unwrap();
    assert!(config
        .lines()
        .any(|l| l == "CONFIG_SERIAL_AMBA_PL011_CONSOLE=y"));
}

#[test]
fn small_rpi_kernel_cross_compiles_with_its_device_trees_bit_for_bit_as_recorded() {
    let out = build_and_check_against_record(repo(), "kernel-rpi@small");
    if out.as_os_str().is_empty() {
        return;
    }
    assert!(fs::metadata(out.join("Image")).unwrap().len() > 1_000_000);
    for dtb in [
        "bcm2711-rpi-4-b.dtb",
        "bcm2837-rpi-3-b.dtb",
        "bcm2712-rpi-5-b.dtb",
    ] {
        assert!(
            out.join("dtbs/broadcom").join(dtb).is_file(),
            "{dtb} missing"
        );
    }
    let config = fs::read_to_string(out.join("config")).unwrap();
    for opt in [
        "CONFIG_ARCH_BCM2835=y",
        "CONFIG_MMC_SDHCI_IPROC=m",
        "CONFIG_REGULATOR_GPIO=m",
    ] {
        assert!(config.lines().any(|l| l == opt), "{opt} missing");
    }
}

#[test]
fn the_config_audit_fails_an_option_kconfig_drops() {
    let tmp = scratch();
    project_copy(tmp.path());
    // An option that cannot hold on x86_64: the audit must name it and stop the build.
    fs::write(
        tmp.path().join("fragments/impossible.fragment"),
        "CONFIG_ARM_AMBA=y\n",
    )
    .unwrap();
    let file = tmp.path().join("derivations/kernel-x86_64.toml");
    let text = fs::read_to_string(&file).unwrap();
    let text = text.replace(
        "FRAGMENTS = \"${small} ${small_arch} ${container} ${virt}\"",
        "FRAGMENTS = \"${small} ${small_arch} ${container} ${virt} ${impossible}\"",
    );
    let text = text.replace(
        "inputs = { small = ",
        "inputs = { impossible = { path = \"fragments/impossible.fragment\" }, small = ",
    );
    fs::write(&file, text).unwrap();
    let out = run(ksbuild(&shared_store())
        .arg("--project")
        .arg(tmp.path())
        .args(["realise", "--no-link", "kernel-x86_64@small"]));
    if crate::common::skip_as_archive_unreachable(&out) {
        return;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(100), "{err}");
    assert!(
        err.contains("config audit: CONFIG_ARM_AMBA wanted y, got n"),
        "{err}"
    );
}
