//! Helpers shared by the integration tests: the `ksbuild` binary, real Nix, scratch dirs.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of the `ksbuild` binary under test.
pub fn ksbuild_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ksbuild"))
}

/// A `ksbuild` command using the physical store root `store`.
pub fn ksbuild(store: &Path) -> Command {
    let mut c = Command::new(ksbuild_bin());
    c.env("KSBUILD_STORE", store)
        .env("NO_COLOR", "1")
        .env_remove(ksbuild::timing::ENV);
    c
}

/// Runs a command, panicking with its stderr if it fails; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("stdout is UTF-8")
}

/// Runs a command and returns its output whatever the status.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Whether real Nix is on `PATH`.
pub fn nix_available() -> bool {
    Command::new("nix")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Returns `true` when the test must be skipped because Nix is missing. In CI
/// (`KSBUILD_REQUIRE_NIX=1`, set by `.ci/run`) a missing Nix is a failure, not a skip.
pub fn skip_without_nix() -> bool {
    if nix_available() {
        return false;
    }
    if std::env::var_os("KSBUILD_REQUIRE_NIX").is_some() {
        panic!("real Nix is required (KSBUILD_REQUIRE_NIX is set) but `nix` is not on PATH; install Debian's nix-bin");
    }
    eprintln!("SKIP: real Nix 2.8 is not installed (apt-get install nix-bin); this test cross-checks against it");
    true
}

/// The Nix configuration used by every test: offline, sandboxed, no substituters.
pub const NIX_CONFIG: &str = "experimental-features = nix-command flakes\nsubstituters =\nbuild-users-group =\nsandbox = true\nsandbox-fallback = false\nrequire-sigs = true\n";

/// A Nix command (`nix`, `nix-store`, `nix-instantiate`, …) configured offline.
/// Pass `--store DIR` yourself to use a private chroot store.
pub fn nix(program: &str) -> Command {
    let mut c = Command::new(program);
    c.env("NIX_CONFIG", NIX_CONFIG).env_remove("NIX_REMOTE");
    c
}

/// A fresh scratch directory, removed on drop.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("ksbuild-it-")
        .tempdir()
        .expect("create scratch dir")
}

/// The store shared by the tests that compile kernels and assemble images (under Cargo's
/// target directory), so that each small kernel is compiled once per run.
pub fn kernel_store() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kernel-store")
}

/// The `.drv` paths `ksbuild instantiate` prints for `targets` of the project `proj`.
pub fn drv_paths(store: &Path, proj: &Path, targets: &[&str]) -> Vec<String> {
    run_ok(
        ksbuild(store)
            .arg("--project")
            .arg(proj)
            .arg("instantiate")
            .args(targets),
    )
    .lines()
    .map(String::from)
    .collect()
}

/// The uid and gid the tests use for an ordinary user when they run as root.
pub const ORDINARY_ID: u32 = 4242;

/// Whether the tests run as root (and so stand in for an ordinary user with
/// [`ORDINARY_ID`]).
pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A `ksbuild` command (as [`ksbuild`]) run by an ordinary user: as root, under `setpriv`
/// as uid/gid [`ORDINARY_ID`] with no supplementary groups and no capabilities, so that
/// root's `CAP_DAC_OVERRIDE` cannot hide a permission bug; otherwise as the caller, who
/// already is one. The files it needs must belong to that user ([`give_to_ordinary_user`]).
pub fn ksbuild_as_ordinary_user(store: &Path) -> Command {
    let mut c = if running_as_root() {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={ORDINARY_ID}"))
            .arg(format!("--regid={ORDINARY_ID}"))
            .args(["--clear-groups", "--inh-caps=-all", "--"])
            .arg(ksbuild_bin());
        c
    } else {
        Command::new(ksbuild_bin())
    };
    c.env("KSBUILD_STORE", store)
        .env("NO_COLOR", "1")
        .env("HOME", "/homeless-shelter")
        .env_remove(ksbuild::timing::ENV);
    c
}

/// Gives `dir` and everything under it to the ordinary user of
/// [`ksbuild_as_ordinary_user`] (as root; a no-op otherwise).
pub fn give_to_ordinary_user(dir: &Path) {
    if !running_as_root() {
        return;
    }
    let id = Some(nix::unistd::Uid::from_raw(ORDINARY_ID));
    let gid = Some(nix::unistd::Gid::from_raw(ORDINARY_ID));
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.expect("walk");
        nix::unistd::fchownat(
            None,
            entry.path(),
            id,
            gid,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .unwrap_or_else(|e| panic!("chown {}: {e}", entry.path().display()));
    }
}
