//! Helpers shared by the integration tests: the `ksbuild` binary, real Nix, scratch dirs.

#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of the `ksbuild` binary under test.
pub fn ksbuild_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ksbuild"))
}

/// A `ksbuild` command using the physical store root `store`. On the shared kernel store it
/// substitutes from the CI cache, when there is one ([`ci_cache`]).
pub fn ksbuild(store: &Path) -> Command {
    let mut c = Command::new(ksbuild_bin());
    c.env("KSBUILD_STORE", store)
        .env("NO_COLOR", "1")
        .env_remove(ksbuild::timing::ENV);
    if store == kernel_store_path() {
        if let Some(cache) = ci_cache() {
            c.env("XDG_CONFIG_HOME", &cache.config_home);
        }
    }
    c
}

/// The binary cache CI keeps on the machine between runs: the directory
/// `KSBUILD_CI_CACHE` names (`.ci/run` sets it, outside the clone). The shared kernel store
/// substitutes from it (its `~/.config/ksbuild/config.toml` names the cache and its key) and
/// [`publish_to_ci_cache`] puts there what the tests built, so a later run on the machine
/// downloads and unpacks nothing again. A check still builds: a substituted output is not
/// `ultimate`, so it never counts as one of a check's builds.
pub struct CiCache {
    /// `file://…` of the cache.
    pub url: String,
    /// Where `ksbuild/config.toml` is (an `XDG_CONFIG_HOME`).
    pub config_home: PathBuf,
    /// The key the cache is signed with (made on the first run).
    pub secret_key: PathBuf,
}

/// The CI cache, if `KSBUILD_CI_CACHE` is set; its key pair and configuration are made on
/// first use.
pub fn ci_cache() -> Option<&'static CiCache> {
    static CACHE: std::sync::OnceLock<Option<CiCache>> = std::sync::OnceLock::new();
    CACHE
        .get_or_init(|| {
            let dir = PathBuf::from(std::env::var_os("KSBUILD_CI_CACHE")?);
            let config_home = dir.join("config");
            std::fs::create_dir_all(config_home.join("ksbuild"))
                .unwrap_or_else(|e| panic!("KSBUILD_CI_CACHE `{}`: {e}", dir.display()));
            let (secret_key, public_key) = (dir.join("key.sec"), dir.join("key.pub"));
            if !secret_key.exists() {
                run_ok(
                    Command::new(ksbuild_bin())
                        .args(["key", "generate", "ksbuild-ci-1"])
                        .arg(&secret_key)
                        .arg(&public_key),
                );
            }
            let url = format!("file://{}", dir.join("cache").display());
            let key = std::fs::read_to_string(&public_key).expect("the CI cache's public key");
            std::fs::write(
                config_home.join("ksbuild/config.toml"),
                format!(
                    "substituters = [{url:?}]\ntrusted-public-keys = [{:?}]\n",
                    key.trim()
                ),
            )
            .expect("the CI cache's configuration");
            Some(CiCache {
                url,
                config_home,
                secret_key,
            })
        })
        .as_ref()
}

/// Publishes `targets` of `proj`, built in the shared kernel store, with their closures to
/// the CI cache (zstd: fast; paths already there are skipped). Nothing without a CI cache.
pub fn publish_to_ci_cache(proj: &Path, targets: &[&str]) {
    let Some(cache) = ci_cache() else {
        return;
    };
    push_signed(
        &kernel_store(),
        proj,
        &cache.url,
        &cache.secret_key,
        targets,
    );
}

/// `ksbuild cache push --no-build --compression zstd` of `what` (targets of `proj`, or store
/// paths) and their closures from `store` to `url`, signed with `secret_key`.
pub fn push_signed<S: AsRef<std::ffi::OsStr>>(
    store: &Path,
    proj: &Path,
    url: &str,
    secret_key: &Path,
    what: &[S],
) {
    run_ok(
        ksbuild(store)
            .arg("--project")
            .arg(proj)
            .args(["cache", "push", "--no-build", "--compression", "zstd"])
            .arg("--secret-key-file")
            .arg(secret_key)
            .args(["--to", url])
            .args(what),
    );
}

/// A fresh key pair `dir/key.sec`, `dir/key.pub` (`ksbuild key generate`); returns the
/// secret key's path and the public key's text.
pub fn key_pair(dir: &Path) -> (PathBuf, String) {
    key_pair_named(dir, "test-cache-1")
}

/// [`key_pair`] with the key name `name`, in `dir` (created).
pub fn key_pair_named(dir: &Path, name: &str) -> (PathBuf, String) {
    std::fs::create_dir_all(dir).expect("the key directory");
    let (secret, public) = (dir.join("key.sec"), dir.join("key.pub"));
    run_ok(
        Command::new(ksbuild_bin())
            .args(["key", "generate", name])
            .arg(&secret)
            .arg(&public),
    );
    let text = std::fs::read_to_string(&public).expect("the public key");
    (secret, text.trim().to_string())
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
///
/// Store paths inside it are sealed (0555), which an ordinary user cannot remove: the
/// directory is unsealed before it is removed, or every run as `ksbuild-ci` would leave
/// gigabytes behind in `/tmp`.
pub fn scratch() -> Scratch {
    Scratch(Some(
        tempfile::Builder::new()
            .prefix("ksbuild-it-")
            .tempdir()
            .expect("create scratch dir"),
    ))
}

/// A scratch directory that is unsealed before it is removed.
pub struct Scratch(Option<tempfile::TempDir>);

impl Scratch {
    /// A fresh scratch directory.
    pub fn new() -> Scratch {
        scratch()
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.0.as_ref().map(|d| d.path()).expect("scratch dir")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            unseal(d.path());
        }
    }
}

/// Makes every directory under `root` writable again, so a scratch directory holding store
/// copies (0555) can be removed when the tests do not run as root.
pub fn unseal(root: &Path) {
    let Ok(meta) = fs::symlink_metadata(root) else {
        return;
    };
    if meta.is_dir() {
        let _ = fs::set_permissions(root, fs::Permissions::from_mode(0o755));
        if let Ok(entries) = fs::read_dir(root) {
            for e in entries.flatten() {
                unseal(&e.path());
            }
        }
    }
}

/// The store shared by the tests that compile kernels and assemble images (under Cargo's
/// target directory), so that each small kernel is compiled once per run.
///
/// With a CI cache ([`ci_cache`]), where the tests publish what they build, the store is
/// collected once per test process, before its first use, when it takes more than
/// [`KERNEL_STORE_BOUND`] on disk (`store::disk_usage`, allocated blocks: a sparse image
/// counts what it holds), as Nix collects when free space falls below `min-free`. A machine
/// that keeps the target directory between runs would otherwise keep every image and
/// environment of every earlier run (46 GB after a day of CI). A run keeps what the last
/// ones left (a run leaves about 3.3 GB); what is collected comes back from the cache or is
/// built again.
pub fn kernel_store() -> PathBuf {
    static COLLECTED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    let store = kernel_store_path();
    COLLECTED.get_or_init(|| {
        if ci_cache().is_none() || !store.exists() {
            return;
        }
        let used = ksbuild::store::disk_usage(&store);
        if used <= KERNEL_STORE_BOUND {
            eprintln!(
                "the shared kernel store holds {} MiB, not over {} MiB: not collected",
                used >> 20,
                KERNEL_STORE_BOUND >> 20
            );
            return;
        }
        let report = run_ok(
            Command::new(ksbuild_bin())
                .env("KSBUILD_STORE", &store)
                .env("NO_COLOR", "1")
                .args(["store", "gc"]),
        );
        eprintln!(
            "the shared kernel store held {} MiB, is collected: {} paths deleted",
            used >> 20,
            report.lines().count()
        );
    });
    store
}

/// The disk space the shared kernel store may take before a CI run collects it.
const KERNEL_STORE_BOUND: u64 = 12 << 30;

/// Where [`kernel_store`] is, without collecting it.
fn kernel_store_path() -> PathBuf {
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

/// `e_machine` of x86_64 ELF files.
pub const EM_X86_64: u16 = 62;
/// `e_machine` of AArch64 ELF files.
pub const EM_AARCH64: u16 = 183;

/// A minimal static ELF executable for `machine` (64-bit, little-endian, one `PT_LOAD`)
/// that exits with status 42 — on x86_64 and AArch64; for other machines only the header
/// is meaningful. What `readelf -h` and the kernel need, nothing more.
pub fn tiny_elf(machine: u16) -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    const HEADERS: u64 = 64 + 56;
    let code: &[u8] = match machine {
        // mov edi, 42; mov eax, 60 (exit); syscall
        EM_X86_64 => &[0xbf, 42, 0, 0, 0, 0xb8, 60, 0, 0, 0, 0x0f, 0x05],
        // mov x0, #42; mov x8, #93 (exit); svc #0
        EM_AARCH64 => &[
            0x40, 0x05, 0x80, 0xd2, 0xa8, 0x0b, 0x80, 0xd2, 0x01, 0x00, 0x00, 0xd4,
        ],
        _ => &[0; 12],
    };
    let size = HEADERS + code.len() as u64;
    let mut elf = Vec::new();
    // e_ident: magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, System V ABI, padding.
    elf.extend_from_slice(b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00");
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: ET_EXEC
    elf.extend_from_slice(&machine.to_le_bytes());
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&(BASE + HEADERS).to_le_bytes()); // e_entry: the code
    elf.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff: no sections
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for half in [64u16, 56, 1, 64, 0, 0] {
        // e_ehsize, e_phentsize, e_phnum, e_shentsize, e_shnum, e_shstrndx
        elf.extend_from_slice(&half.to_le_bytes());
    }
    // The program header: the whole file loaded at BASE, readable and executable.
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type: PT_LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags: PF_R | PF_X
    for word in [0, BASE, BASE, size, size, 0x1000u64] {
        // p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
        elf.extend_from_slice(&word.to_le_bytes());
    }
    elf.extend_from_slice(code);
    elf
}

/// Whether `program` is on `PATH`.
pub fn command_available(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// Whether a failed `ksbuild` run failed only because the Debian archive cannot be
/// reached, and the network is not required (outside CI): then the test skips, saying so.
/// In CI (`KSBUILD_REQUIRE_NETWORK`) it never skips.
pub fn skip_as_archive_unreachable(out: &Output) -> bool {
    let unreachable = !out.status.success()
        && String::from_utf8_lossy(&out.stderr).contains("cannot fetch")
        && std::env::var_os("KSBUILD_REQUIRE_NETWORK").is_none();
    if unreachable {
        eprintln!("SKIP: the Debian archive is unreachable here");
    }
    unreachable
}
