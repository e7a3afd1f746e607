//! End-to-end tests of the sandbox (`ksbuild::sandbox`): a fake store with Debian's static
//! busybox as the only input, builders `busybox sh -c '…'`. Every namespace change happens
//! in the `ksbuild __sandbox-init` subprocess, never in the test runner.
//!
//! Needs user namespaces and `/bin/busybox` (Debian `busybox-static`). Where they are
//! missing the tests say so and skip; with `KSBUILD_REQUIRE_SANDBOX=1` (set by `.ci/run`)
//! they fail instead.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ksbuild::compat::{Hash, HashAlgo, StoreDir};
use ksbuild::sandbox::{
    BuildOutcome, BuildUser, BuilderStatus, Sandbox, SandboxError, SandboxSpec, Step, TimeoutKind,
};

use crate::common;

const BUSYBOX: &str = "/bin/busybox";

/// A store path name with a valid-looking hash: `<hash>-<name>`.
fn store_base_name(name: &str) -> String {
    let dir = StoreDir::default();
    let hash = Hash::digest(HashAlgo::Sha256, name.as_bytes());
    let path = dir
        .make_text_path(name, &hash, &BTreeSet::new())
        .expect("valid store path");
    path.to_string()
}

/// A scratch store with busybox in it, and a fresh root and build dir per build.
struct Fixture {
    dir: tempfile::TempDir,
    busybox_physical: PathBuf,
    busybox_logical: String,
    builds: AtomicUsize,
}

/// Where a build happens and what it produced.
struct Build {
    spec: SandboxSpec,
    out_logical: String,
}

impl Build {
    /// `$out` as seen from the host, under the root directory.
    fn out(&self) -> PathBuf {
        self.spec
            .root_dir
            .join(self.out_logical.trim_start_matches('/'))
    }

    fn run(&self) -> Result<BuildOutcome, SandboxError> {
        self.run_with_lines(&mut |_| {})
    }

    fn run_with_lines(&self, on_line: &mut dyn FnMut(&[u8])) -> Result<BuildOutcome, SandboxError> {
        Sandbox::with_init_program(common::ksbuild_bin()).run(&self.spec, on_line)
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.spec.log).unwrap_or_default()
    }

    fn output_text(&self) -> String {
        fs::read_to_string(self.out()).unwrap_or_else(|e| {
            panic!(
                "no output at {} ({e}); log:\n{}",
                self.out().display(),
                self.log()
            )
        })
    }
}

impl Fixture {
    fn new() -> Fixture {
        let dir = common::scratch();
        let base = store_base_name("busybox");
        let busybox_physical = dir.path().join("store/nix/store").join(&base);
        fs::create_dir_all(busybox_physical.join("bin")).unwrap();
        let bin = busybox_physical.join("bin/busybox");
        fs::copy(BUSYBOX, &bin).unwrap();
        fs::set_permissions(&bin, fs::Permissions::from_mode(0o555)).unwrap();
        fs::set_permissions(
            busybox_physical.join("bin"),
            fs::Permissions::from_mode(0o555),
        )
        .unwrap();
        fs::set_permissions(&busybox_physical, fs::Permissions::from_mode(0o555)).unwrap();
        Fixture {
            busybox_logical: format!("/nix/store/{base}"),
            busybox_physical,
            dir,
            builds: AtomicUsize::new(0),
        }
    }

    fn busybox(&self) -> String {
        format!("{}/bin/busybox", self.busybox_logical)
    }

    /// A build running `busybox sh -c script` with `$out` and `$B` (busybox) set.
    fn build(&self, script: &str) -> Build {
        let n = self.builds.fetch_add(1, Ordering::SeqCst);
        let root_dir = self
            .dir
            .path()
            .join(format!("store/nix/var/ksbuild/roots/{n}"));
        let build_dir = self.dir.path().join(format!("build-{n}"));
        fs::create_dir_all(&root_dir).unwrap();
        fs::create_dir_all(&build_dir).unwrap();
        let out_logical = format!("/nix/store/{}", store_base_name(&format!("out-{n}")));
        let env = BTreeMap::from([
            ("out".to_string(), out_logical.clone()),
            ("B".to_string(), self.busybox()),
            ("name".to_string(), format!("out-{n}")),
            ("system".to_string(), "x86_64-linux".to_string()),
            ("builder".to_string(), self.busybox()),
        ]);
        Build {
            spec: SandboxSpec {
                builder: self.busybox(),
                args: vec!["sh".into(), "-c".into(), script.into()],
                env,
                store_dir: "/nix/store".into(),
                inputs: vec![(self.busybox_physical.clone(), self.busybox_logical.clone())],
                root_dir,
                build_dir,
                cores: 2,
                timeout: Some(Duration::from_secs(60)),
                max_silent_time: None,
                max_processes: None,
                build_user: BuildUser::Auto,
                log: self.dir.path().join(format!("log-{n}")),
            },
            out_logical,
        }
    }
}

/// Whether the sandbox tests can run here; prints why not, or panics under
/// `KSBUILD_REQUIRE_SANDBOX`.
fn skip_without_sandbox() -> bool {
    let why = if !Path::new(BUSYBOX).exists() {
        Some(format!(
            "{BUSYBOX} is missing (apt-get install busybox-static)"
        ))
    } else {
        let f = Fixture::new();
        match f.build("exit 0").run() {
            Ok(_) => None,
            Err(e) => Some(format!(
                "the sandbox cannot start here: {e}{}",
                e.hint()
                    .map(|h| format!(" (hint: {h})"))
                    .unwrap_or_default()
            )),
        }
    };
    match why {
        None => false,
        Some(why) if std::env::var_os("KSBUILD_REQUIRE_SANDBOX").is_some() => {
            panic!("the sandbox is required (KSBUILD_REQUIRE_SANDBOX is set): {why}")
        }
        Some(why) => {
            eprintln!("SKIP: {why}");
            true
        }
    }
}

fn assert_success(build: &Build, outcome: &BuildOutcome) {
    assert!(
        outcome.success(),
        "build failed: {outcome:?}; log:\n{}",
        build.log()
    );
}

/// `key=value` lines of a probe's output.
fn fields(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn the_builder_sees_what_nix_shows_it() {
    if skip_without_sandbox() {
        return;
    }
    let f = Fixture::new();
    // The probe of nix-formats.md §6, plus what else Nix 2.8 was seen to give a builder.
    let b = f.build(
        r#"
        if $B test -t 1; then T=y; else T=n; fi; if $B test -t 2; then T=${T}y; else T=${T}n; fi
        if $B test -t 0; then T=${T}y; else T=${T}n; fi
        { echo "pwd=$(pwd)"; echo "pid=$$"; echo "id=$($B id)"; echo "hostname=$($B hostname)";
          echo "domainname=$($B cat /proc/sys/kernel/domainname)";
          echo "uid_map=$($B cat /proc/self/uid_map | $B tr -s ' ' | $B cut -d' ' -f2,3,4)";
          echo "setgroups=$($B cat /proc/self/setgroups)";
          echo "ls=$($B ls / | $B tr '\n' ' ')";
          echo "store=$($B ls /nix/store | $B tr '\n' ' ')";
          echo "net=$($B cat /proc/net/dev | $B tail -n +3 | $B cut -d: -f1 | $B tr -d ' ' | $B tr '\n' ' ')";
          echo "dev=$($B ls /dev | $B tr '\n' ' ')";
          echo "umask=$(umask)";
          echo "tty=$T";
          echo "stdin=$($B readlink /proc/self/fd/0)";
          echo "fds=$($B ls /proc/self/fd | $B tr '\n' ' ')";
          echo "personality=$($B cat /proc/self/personality)";
          echo "corelimit=$(ulimit -c)";
          $B grep -E '^(CapInh|CapPrm|CapEff|CapAmb|NoNewPrivs|SigIgn|SigBlk):' /proc/self/status | $B tr -d '\t' | $B sed 's/:/=/';
          echo "passwd=$($B cat /etc/passwd | $B md5sum | $B cut -d' ' -f1)";
          echo "hosts=$($B cat /etc/hosts | $B tr '\n' '|')";
          echo "storemode=$($B stat -c %a /nix/store)";
          echo "buildmode=$($B stat -c '%a %u %g' /build)";
          echo "tmpmode=$($B stat -c %a /tmp)";
          echo "env:"; $B env | $B sort; } > $out
        "#,
    );
    let outcome = b.run().expect("sandbox runs");
    assert_success(&b, &outcome);
    let text = b.output_text();
    let got = fields(&text);
    let expect = |k: &str, v: &str| {
        assert_eq!(
            got.get(k).map(String::as_str),
            Some(v),
            "{k} in the probe's output:\n{text}"
        )
    };
    let out_base = b.out_logical.trim_start_matches("/nix/store/");
    let busybox_base = f.busybox_logical.trim_start_matches("/nix/store/");
    let mut store: Vec<&str> = vec![out_base, busybox_base];
    store.sort();
    let host_uid = if nix::unistd::geteuid().is_root() {
        ksbuild::sandbox::DEFAULT_ROOT_BUILD_ID
    } else {
        nix::unistd::geteuid().as_raw()
    };
    expect("pwd", "/build");
    expect("pid", "1");
    expect("id", "uid=1000(nixbld) gid=100(nixbld)");
    expect("hostname", "localhost");
    expect("domainname", "(none)");
    expect("uid_map", &format!("1000 {host_uid} 1"));
    expect("setgroups", "deny");
    expect("ls", "build dev etc nix proc tmp ");
    expect("store", &format!("{} ", store.join(" ")));
    expect("net", "lo ");
    expect(
        "dev",
        "fd full null ptmx pts random shm stderr stdin stdout tty urandom zero ",
    );
    expect("umask", "0022");
    expect("tty", "yyn");
    expect("stdin", "/dev/null");
    expect("personality", "00040000");
    expect("corelimit", "0");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        expect(cap, "0000000000000000");
    }
    expect("NoNewPrivs", "1");
    expect("SigIgn", "0000000000000000");
    expect("SigBlk", "0000000000000000");
    // md5 of Nix 2.8's /etc/passwd (nix-formats.md §6 probe, printed by real Nix here).
    expect(
        "passwd",
        &md5_hex(ksbuild::sandbox::plan::etc_passwd().as_bytes()),
    );
    expect("hosts", "127.0.0.1 localhost|::1 localhost|");
    expect("storemode", "1775");
    expect("buildmode", "700 1000 100");
    expect("tmpmode", "1777");

    let env: Vec<&str> = text
        .split_once("env:\n")
        .expect("env section")
        .1
        .lines()
        .collect();
    let expected_env = [
        format!("B={}", f.busybox()),
        "HOME=/homeless-shelter".to_string(),
        "NIX_BUILD_CORES=2".to_string(),
        "NIX_BUILD_TOP=/build".to_string(),
        "NIX_LOG_FD=2".to_string(),
        "NIX_STORE=/nix/store".to_string(),
        "PATH=/path-not-set".to_string(),
        "PWD=/build".to_string(),
        "SHLVL=1".to_string(),
        "TEMP=/build".to_string(),
        "TEMPDIR=/build".to_string(),
        "TERM=xterm-256color".to_string(),
        "TMP=/build".to_string(),
        "TMPDIR=/build".to_string(),
        format!("builder={}", f.busybox()),
        format!("name={}", b.spec.env["name"]),
        format!("out={}", b.out_logical),
        "system=x86_64-linux".to_string(),
    ];
    assert_eq!(env, expected_env, "the builder's environment");
}

fn md5_hex(bytes: &[u8]) -> String {
    Hash::digest(HashAlgo::Md5, bytes).to_hex()
}
