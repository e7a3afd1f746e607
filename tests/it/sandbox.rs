//! End-to-end tests of the sandbox (`ksbuild::sandbox`): a fake store with Debian's static
//! busybox as the only input, builders `busybox sh -c '…'`. Every namespace change happens
//! in the `ksbuild __sandbox-init` subprocess, never in the test runner.
//!
//! Needs user namespaces and `/bin/busybox` (Debian `busybox-static`). Where they are
//! missing the tests say so and skip; with `KSBUILD_REQUIRE_SANDBOX=1` (set by `.ci/run`)
//! they fail instead.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
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

/// A scratch store with busybox in it, and a fresh root and build dir per build; builds
/// start their init process through a zygote, as `ksbuild realise` does.
struct Fixture {
    sandbox: Sandbox,
    dir: crate::common::Scratch,
    busybox_physical: PathBuf,
    busybox_logical: String,
    builds: AtomicUsize,
}

/// Where a build happens and what it produced.
struct Build {
    spec: SandboxSpec,
    out_logical: String,
    sandbox: Sandbox,
}

impl Build {
    /// `$out` as seen from the host: in the root directory, which is the store directory
    /// of the sandbox.
    fn out(&self) -> PathBuf {
        self.spec
            .root_dir
            .join(self.out_logical.trim_start_matches("/nix/store/"))
    }

    fn run(&self) -> Result<BuildOutcome, SandboxError> {
        self.run_with_lines(&mut |_| {})
    }

    /// The same build with the inputs' mount points on disk in the root directory (no
    /// overlay at the store directory), as where the kernel refuses an unprivileged one.
    fn without_overlay(mut self) -> Build {
        self.spec.work_dir = None;
        self
    }

    fn run_with_lines(&self, on_line: &mut dyn FnMut(&[u8])) -> Result<BuildOutcome, SandboxError> {
        self.sandbox.run(&self.spec, on_line)
    }

    /// Runs the build with an init process `exec`ed for it, as without a zygote.
    fn run_exec(&self) -> Result<BuildOutcome, SandboxError> {
        Sandbox::with_init_program(common::ksbuild_bin()).run(&self.spec, &mut |_| {})
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
            sandbox: Sandbox::with_init_program(common::ksbuild_bin()).with_zygote(),
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
        let work_dir = root_dir.with_extension("work");
        fs::create_dir_all(&root_dir).unwrap();
        fs::create_dir_all(&work_dir).unwrap();
        fs::create_dir_all(&build_dir).unwrap();
        let out_logical = format!("/nix/store/{}", store_base_name(&format!("out-{n}")));
        let env = BTreeMap::from([
            ("out".to_string(), out_logical.clone()),
            ("B".to_string(), self.busybox()),
            ("name".to_string(), format!("out-{n}")),
            ("system".to_string(), "x86_64-linux".to_string()),
            ("builder".to_string(), self.busybox()),
            (BUILD_TAG.to_string(), build_dir.display().to_string()),
        ]);
        Build {
            spec: SandboxSpec {
                builder: self.busybox(),
                args: vec!["sh".into(), "-c".into(), script.into()],
                env,
                store_dir: "/nix/store".into(),
                inputs: vec![(self.busybox_physical.clone(), self.busybox_logical.clone())],
                root_dir,
                work_dir: Some(work_dir),
                build_dir,
                cores: 2,
                timeout: Some(Duration::from_secs(60)),
                max_silent_time: None,
                max_processes: None,
                variation: Default::default(),
                build_user: BuildUser::Auto,
                log: self.dir.path().join(format!("log-{n}")),
                store_view: None,
            },
            out_logical,
            sandbox: self.sandbox.clone(),
        }
    }
}

impl Drop for Fixture {
    /// Makes every directory writable again, so that the scratch directory can be removed
    /// by an unprivileged user too (store paths are read-only).
    fn drop(&mut self) {
        for p in walk(self.dir.path()) {
            if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
                let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o755));
            }
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
            // Only a kernel that refuses an isolation feature is a reason to skip; any other
            // error is a bug and fails the test.
            Err(
                e @ SandboxError::Step {
                    step:
                        Step::CreateNamespaces
                        | Step::WriteIdMap { .. }
                        | Step::MountProc { .. }
                        | Step::MountTmpfs { .. }
                        | Step::MountDevpts { .. }
                        | Step::DetachTree { .. }
                        | Step::WatchChild,
                    errno:
                        nix::errno::Errno::EPERM
                        | nix::errno::Errno::EACCES
                        | nix::errno::Errno::ENOSPC
                        | nix::errno::Errno::EUSERS
                        | nix::errno::Errno::ENOSYS,
                },
            ) => Some(format!(
                "the kernel refuses the sandbox here: {e}{}",
                e.hint()
                    .map(|h| format!(" (hint: {h})"))
                    .unwrap_or_default()
            )),
            Err(e) => panic!("the sandbox is broken: {e}"),
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
    // Both ways of starting the init process: forked by the zygote, and `exec`ed.
    for exec in [false, true] {
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
          echo "rootmode=$($B stat -c '%a %u %g' /)";
          echo "etcmode=$($B stat -c '%a %u %g' /etc/passwd)";
          echo "env:"; $B env | $B sort; } > $out
        "#,
    );
        let outcome = if exec { b.run_exec() } else { b.run() }.expect("sandbox runs");
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
        // Supplementary groups cannot be dropped without privilege (an ordinary user's
        // namespace must deny `setgroups`), so an invoker's groups stay, shown as `nixbld`
        // for its own gid and `nogroup` for the others — as in Nix's sandbox run by an
        // ordinary user. Root drops them all, as Nix does.
        let groups = nix::unistd::getgroups().unwrap();
        let expected_id = if nix::unistd::geteuid().is_root() || groups.is_empty() {
            "uid=1000(nixbld) gid=100(nixbld)".to_string()
        } else {
            let mut names: Vec<&str> = groups
                .iter()
                .map(|g| {
                    if *g == nix::unistd::getegid() {
                        "100(nixbld)"
                    } else {
                        "65534(nogroup)"
                    }
                })
                .collect();
            names.sort();
            names.dedup();
            format!(
                "uid=1000(nixbld) gid=100(nixbld) groups={}",
                names.join(",")
            )
        };
        expect("id", &expected_id);
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
        // Nix 2.8's root and generated files belong to the build user.
        expect("rootmode", "750 1000 100");
        expect("etcmode", "644 1000 100");

        let env: Vec<&str> = text
            .split_once("env:\n")
            .expect("env section")
            .1
            .lines()
            .collect();
        let expected_env = [
            format!("B={}", f.busybox()),
            "HOME=/homeless-shelter".to_string(),
            format!("{BUILD_TAG}={}", b.tag()),
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
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

/// Whether `pid` is a live zygote (a zombie has no command line).
fn is_zygote(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .any(|a| a == ksbuild::sandbox::ZYGOTE_ARG.as_bytes())
}

#[test]
fn a_root_dir_is_reused_with_its_mount_points_and_nothing_else_shows() {
    if skip_without_sandbox() {
        return;
    }
    let f = Fixture::new();
    for overlay in [false, true] {
        let b = f.build("$B ls /nix/store > $out");
        let b = if overlay { b } else { b.without_overlay() };
        reuses_a_root(&f, b, overlay);
    }
    // Anything else in the root is refused, as before.
    let c = f.build("true");
    fs::create_dir_all(c.spec.root_dir.join(store_base_name("x")).join("inner")).unwrap();
    let e = c.run().expect_err("a root with a non-empty directory");
    assert!(e.to_string().contains("is not empty"), "{e}");
}

/// Runs `b` (which lists the store) in a root holding what earlier builds left there.
fn reuses_a_root(f: &Fixture, b: Build, overlay: bool) {
    // What earlier builds in this root left: busybox's mount point, needed again, and the
    // mount points of inputs this build does not have (an empty directory, an empty file).
    // With the overlay (whose mount points are never on disk) all of them are removed.
    let root = &b.spec.root_dir;
    let busybox = f.busybox_logical.trim_start_matches("/nix/store/");
    let (gone_dir, gone_file) = (store_base_name("gone-dir"), store_base_name("gone-file"));
    fs::create_dir(root.join(busybox)).unwrap();
    fs::create_dir(root.join(&gone_dir)).unwrap();
    fs::write(root.join(&gone_file), "").unwrap();
    assert_success(&b, &b.run().expect("sandbox runs"));
    let out = b.out_logical.trim_start_matches("/nix/store/");
    let mut expected = vec![busybox, out];
    expected.sort();
    assert_eq!(b.output_text().lines().collect::<Vec<_>>(), expected);
    assert!(!root.join(&gone_dir).exists() && !root.join(&gone_file).exists());
    assert_eq!(
        root.join(busybox).is_dir(),
        !overlay,
        "the mount point is left for the next build (only without the overlay)"
    );
}

/// The mount namespaces this process holds descriptors of, but its own.
fn held_mount_namespaces() -> Vec<String> {
    let own = fs::read_link("/proc/self/ns/mnt").unwrap();
    fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read_link(e.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("mnt:") && *l != own)
        .map(|l| l.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_build_s_mount_namespace_is_torn_down_by_ksbuild_after_the_build() {
    if skip_without_sandbox() {
        return;
    }
    let f = Fixture::new();
    // Namespace inode numbers are the same seen from anywhere: the builder says its own.
    let b = f.build("$B readlink /proc/self/ns/mnt > $out; $B sleep 1");
    let seen = std::thread::scope(|scope| {
        let running = scope.spawn(|| b.run().expect("sandbox runs"));
        let mut seen = BTreeSet::new();
        while !running.is_finished() {
            seen.extend(held_mount_namespaces());
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_success(&b, &running.join().unwrap());
        seen
    });
    let ns = b.output_text().trim().to_string();
    assert!(ns.starts_with("mnt:["), "{ns}");
    // While it ran, ksbuild held the build's mount namespace (from the zygote)...
    assert!(seen.contains(&ns), "no reference to {ns} among {seen:?}");
    // ...and once it is over, lets it go (on a thread of its own).
    eventually("the build's mount namespace is still held", || {
        !held_mount_namespaces().contains(&ns)
    });
}

/// The children of `pid`, with their names.
fn children_of(pid: u32) -> Vec<(u32, String)> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .map(|c: u32| {
            let name = fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
            (c, name.trim().to_string())
        })
        .collect()
}

/// Waits up to 5 s for `done` to hold.
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A process that has ended (gone, or a zombie).
fn ended(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
        .unwrap_or(true)
}

#[test]
fn the_zygote_makes_the_next_sandbox_ahead_and_it_leaves_with_the_zygote() {
    if skip_without_sandbox() {
        return;
    }
    let f = Fixture::new();
    let zygote = f.sandbox.zygote_pid().expect("a zygote");
    let waiting = || -> Vec<u32> {
        children_of(zygote)
            .into_iter()
            .filter(|(_, name)| name == "ksbuild-pid1")
            .map(|(pid, _)| pid)
            .collect()
    };
    // Each build holds the sandbox, and with it the zygote, until it is dropped.
    let run = |script: &str| {
        let b = f.build(script);
        assert_success(&b, &b.run().expect("sandbox runs"));
        b.output_text()
    };
    run("echo 1 > $out");
    // One build may be all there is: nothing is made ahead for a lone build.
    assert_eq!(waiting(), Vec::<u32>::new());
    run("echo 2 > $out");
    eventually("no PID 1 waits after the second build", || {
        waiting().len() == 1
    });
    let first = waiting()[0];
    // It is made ahead in namespaces of its own.
    for ns in ["net", "mnt", "pid_for_children", "user"] {
        let of = |pid: u32| fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_ne!(of(first), of(zygote), "{ns} namespace of the waiting PID 1");
    }
    assert_eq!(run("echo 3 > $out"), "3\n");
    // The third build ran in it (it is gone), and the next one waits.
    assert!(ended(first), "the waiting PID 1 was not used");
    eventually("no PID 1 waits after the third build", || {
        waiting().len() == 1
    });
    let second = waiting()[0];
    assert_ne!(second, first);
    drop(f);
    eventually("the waiting PID 1 outlived its zygote", || ended(second));
}

#[test]
fn builds_go_on_when_the_zygote_dies_and_it_leaves_with_its_sandbox() {
    if skip_without_sandbox() {
        return;
    }
    let f = Fixture::new();
    let b = f.build("echo first > $out");
    assert_success(&b, &b.run().expect("sandbox runs"));
    let zygote = f.sandbox.zygote_pid().expect("a zygote");
    assert!(is_zygote(zygote));
    signal(zygote, nix::sys::signal::Signal::SIGKILL);
    // The next build finds the zygote gone and starts its init process by `exec`.
    let b = f.build("echo second > $out");
    assert_success(&b, &b.run().expect("sandbox runs without its zygote"));
    assert_eq!(b.output_text(), "second\n");
    assert_eq!(
        f.sandbox.zygote_pid(),
        None,
        "a dead zygote is not asked again"
    );
    // A stuck zygote is given up after a while, and killed so that it cannot serve the
    // request late.
    let h = Fixture::new();
    let b = h.build("echo first > $out");
    assert_success(&b, &b.run().expect("sandbox runs"));
    let zygote = h.sandbox.zygote_pid().expect("a zygote");
    signal(zygote, nix::sys::signal::Signal::SIGSTOP);
    let b = h.build("echo late > $out");
    assert_success(&b, &b.run().expect("sandbox runs past a stuck zygote"));
    assert_eq!(b.output_text(), "late\n");
    assert_eq!(h.sandbox.zygote_pid(), None);
    drop(b);
    drop(h);
    assert!(!is_zygote(zygote), "the stuck zygote was not killed");
    // A zygote ends (and is reaped) when the last copy of its sandbox is dropped.
    let g = Fixture::new();
    let b = g.build("echo third > $out");
    assert_success(&b, &b.run().expect("sandbox runs"));
    let zygote = g.sandbox.zygote_pid().expect("a zygote");
    drop(b);
    drop(g);
    assert!(!is_zygote(zygote), "the zygote outlived its sandbox");
    assert!(
        !std::path::Path::new(&format!("/proc/{zygote}")).exists()
            || !fs::read_to_string(format!("/proc/{zygote}/stat"))
                .unwrap_or_default()
                .contains(") Z "),
        "the zygote was not reaped"
    );
}

fn md5_hex(bytes: &[u8]) -> String {
    Hash::digest(HashAlgo::Md5, bytes).to_hex()
}

/// Runs each attempt of `attempts` (`name command…` lines) inside the sandbox and returns
/// `name → "ok: <stdout>"` or `name → "fail: <stderr>"`.
fn attempt_all(f: &Fixture, setup: &str, attempts: &[(&str, String)]) -> BTreeMap<String, String> {
    let mut script = format!(
        "{setup}\nr() {{ k=$1; shift; if o=$(\"$@\" 2>/tmp/err); then echo \"$k=ok: $o\" | $B tr '\\n' ' '; else echo \"$k=fail: $($B cat /tmp/err)\" | $B tr '\\n' ' '; fi; echo; }}\n{{\n"
    );
    for (name, cmd) in attempts {
        script.push_str(&format!("r {name} {cmd}\n"));
    }
    script.push_str("} > $out\n");
    let b = f.build(&script);
    let outcome = b.run().expect("sandbox runs");
    assert_success(&b, &outcome);
    let text = b.output_text();
    let got: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect();
    for (name, _) in attempts {
        assert!(got.contains_key(*name), "no result for {name}:\n{text}");
    }
    got
}

#[test]
fn escape_attempts_fail_or_see_nothing() {
    if skip_without_sandbox() {
        return;
    }
    let f = Fixture::new();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let host_pid = std::process::id();
    let repo = env!("CARGO_MANIFEST_DIR");
    let input = &f.busybox_logical;
    let attempts: Vec<(&str, String)> = vec![
        // The network: a server on the host's loopback is not this namespace's loopback.
        ("tcp_host", format!("$B nc -w 2 127.0.0.1 {port}")),
        ("tcp6_host", format!("$B nc -w 2 ::1 {port}")),
        ("wget_host", format!("$B wget -q -T 2 -O - http://127.0.0.1:{port}/")),
        // The listener's stdin is a FIFO held open until the end: on a stdin at EOF, busybox
        // nc half-closes the connection, and a client that sees that first exits without
        // sending (seen once, on a loaded machine).
        ("loopback_works", "$B sh -c '$B mkfifo /tmp/hold; $B nc -l -p 7777 -w 10 < /tmp/hold & exec 3> /tmp/hold; for i in 1 2 3 4 5 6 7 8 9 10; do echo hi | $B nc -w 1 127.0.0.1 7777 2>/dev/null && break; $B sleep 0.2; done; exec 3>&-; wait'".to_string()),
        // The host's files.
        ("host_hostname", "$B cat /etc/hostname".to_string()),
        ("host_repo", format!("$B ls {repo}")),
        ("dotdot", "$B ls /../../..".to_string()),
        // The inputs.
        ("write_input", format!("$B touch {input}/new")),
        ("append_input", format!("$B sh -c 'echo x >> {input}/bin/busybox'")),
        ("chmod_input", format!("$B chmod 777 {input}/bin/busybox")),
        ("remount_input", format!("$B mount -o remount,bind,rw {input}")),
        ("hardlink_input", format!("$B ln {input}/bin/busybox /nix/store/hardlink")),
        // A nested user namespace (what the environment shim uses) works, but the
        // mounts it inherits are locked.
        ("nested_userns", "$B unshare -r -m $B id -u".to_string()),
        ("nested_remount", format!("$B unshare -r -m $B mount -o remount,bind,rw {input}")),
        ("nested_umount", format!("$B unshare -r -m $B umount -l {input}")),
        // Processes of the host.
        ("kill_host", format!("$B kill -0 {host_pid}")),
        ("pids", "$B sh -c '$B ls /proc | $B grep -E \"^[0-9]+$\" | $B tr \"\\n\" \" \"'".to_string()),
        // Devices and privileges.
        ("mknod_tmp", "$B mknod /tmp/null c 1 3".to_string()),
        ("mknod_build", "$B mknod /build/null c 1 3".to_string()),
        ("devnull_write", "$B sh -c 'echo x > /dev/null'".to_string()),
        ("devnull_chmod", "$B chmod 777 /dev/null".to_string()),
        ("setuid", "$B sh -c '$B cp $B /build/su && $B chmod u+s /build/su'".to_string()),
        ("setgid", "$B sh -c '$B mkdir /build/d && $B chmod g+s /build/d'".to_string()),
        ("plain_chmod", "$B sh -c '$B cp $B /build/x && $B chmod 700 /build/x && $B chmod +t /tmp && $B stat -c %a /build/x'".to_string()),
        ("seccomp", "$B grep -E '^Seccomp(_filters)?:' /proc/self/status".to_string()),
        ("sysctl_write", "$B sh -c 'v=$($B cat /proc/sys/vm/swappiness); echo $v > /proc/sys/vm/swappiness'".to_string()),
        ("setuid_root", "$B su -c true".to_string()),
    ];
    let got = attempt_all(&f, "", &attempts);
    let report = format!("{got:#?}");
    let fails = |k: &str, why: &str| {
        let v = &got[k];
        assert!(
            v.starts_with("fail") && v.contains(why),
            "{k} should fail with {why:?}, got {v:?}\n{report}"
        );
    };
    let ok = |k: &str, what: &str| {
        let v = &got[k];
        assert!(
            v.starts_with("ok") && v.contains(what),
            "{k} should succeed with {what:?}, got {v:?}\n{report}"
        );
    };
    fails("tcp_host", "");
    fails("tcp6_host", "");
    fails("wget_host", "");
    ok("loopback_works", "hi");
    fails("host_hostname", "No such file");
    fails("host_repo", "No such file");
    ok("dotdot", "build");
    assert_eq!(got["dotdot"], "ok: build dev etc nix proc tmp", "{report}");
    fails("write_input", "Read-only file system");
    fails("append_input", ""); // EACCES (mode 0555) or EROFS
    fails("chmod_input", "Read-only file system");
    fails("remount_input", "ermission");
    fails("hardlink_input", "");
    ok("nested_userns", "0");
    fails("nested_remount", "ermission");
    fails("nested_umount", "");
    fails("kill_host", "No such process");
    fails("mknod_tmp", "ermi");
    fails("mknod_build", "ermi");
    ok("devnull_write", "");
    fails("devnull_chmod", "Read-only file system");
    fails("sysctl_write", "");
    fails("setuid_root", "");
    // Only the sandbox's own processes are visible, with small pids from 1.
    let pids: Vec<u32> = got["pids"]
        .trim_start_matches("ok:")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(pids.contains(&1), "{report}");
    assert!(pids.iter().all(|p| *p < 100), "{report}");
    // Nix's seccomp filter: no setuid/setgid bits, other modes as usual.
    fails("setuid", "Operation not permitted");
    fails("setgid", "Operation not permitted");
    ok("plain_chmod", "700");
    ok("seccomp", "Seccomp:\t2");
    // Nothing connected to the host's server.
    assert_eq!(
        listener.accept().map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::WouldBlock),
        "a build reached the host's loopback"
    );
}

/// The environment variable that tells a build's processes from any other's: its build
/// directory, which no other build of any test shares.
const BUILD_TAG: &str = "KSBUILD_TEST_BUILD";

impl Build {
    /// What [`BUILD_TAG`] holds in this build.
    fn tag(&self) -> &str {
        &self.spec.env[BUILD_TAG]
    }
}

/// Host pids of the processes in the PID namespace `ns` (`pid:[…]`, as
/// `readlink /proc/self/ns/pid` prints it) that may belong to the build tagged `tag`.
///
/// A namespace's number is free again once the namespace is gone, and the kernel hands out
/// the lowest free one: a build of a test running beside this one soon gets the number of a
/// build that has ended. Its processes carry another [`BUILD_TAG`]; a process whose
/// environment cannot be read (a zombie has none) is counted, to be safe.
fn processes_in_pid_namespace(ns: &str, tag: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let in_namespace = fs::read_link(entry.path().join("ns/pid"))
            .is_ok_and(|link| link.to_string_lossy() == ns);
        let someone_elses = fs::read(entry.path().join("environ")).is_ok_and(|env| {
            !env.is_empty()
                && !env
                    .split(|&b| b == 0)
                    .any(|var| var == format!("{BUILD_TAG}={tag}").as_bytes())
        });
        if in_namespace && !someone_elses {
            pids.push(pid);
        }
    }
    pids
}

/// The script prefix that records the build's PID namespace in `$out/ns`.
const RECORD_NS: &str = "$B mkdir $out; $B readlink /proc/self/ns/pid > $out/ns;";

#[test]
fn a_timeout_kills_every_process_of_the_build() {
    if skip_without_sandbox() {
        return;
    }
    let f = Fixture::new();
    let mut b = f.build(&format!(
        "{RECORD_NS} $B sleep 1000 & $B sleep 1000 & $B setsid $B sh -c '$B sleep 1000 & $B sleep 1000' </dev/null >/dev/null 2>&1 & \
         $B sleep 0.2; echo started; wait"
    ));
    b.spec.timeout = Some(Duration::from_secs(2));
    let out = b.out();
    let tag = b.tag().to_string();
    let mut seen_running = Vec::new();
    let mut ns = String::new();
    let outcome = b
        .run_with_lines(&mut |line| {
            if line == b"started" {
                ns = fs::read_to_string(out.join("ns"))
                    .unwrap()
                    .trim()
                    .to_string();
                seen_running = processes_in_pid_namespace(&ns, &tag);
            }
        })
        .expect("sandbox runs");
    assert_eq!(outcome.timed_out, Some(TimeoutKind::Timeout), "{outcome:?}");
    assert_eq!(outcome.status, BuilderStatus::Signaled(9));
    assert!(!outcome.success());
    assert!(
        outcome.duration >= Duration::from_secs(2) && outcome.duration < Duration::from_secs(10),
        "{outcome:?}"
    );
    assert!(
        seen_running.len() >= 3,
        "the scan should have found PID 1 and its sleeps in {ns}: {seen_running:?}"
    );
    let left = processes_in_pid_namespace(&ns, &tag);
    assert!(
        left.is_empty(),
        "processes of the build outlived run(): {left:?}"
    );
    for pid in seen_running {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} survived"
        );
    }
}

#[test]
fn when_the_builder_exits_its_background_processes_die_with_it() {
    if skip_without_sandbox() {
        return;
    }
    let f = Fixture::new();
    let b = f.build(&format!(
        "{RECORD_NS} $B sleep 1000 & $B setsid $B sleep 1000 </dev/null >/dev/null 2>&1 & $B sleep 0.1; exit 0"
    ));
    let started = Instant::now();
    let outcome = b.run().expect("sandbox runs");
    assert_success(&b, &outcome);
    assert!(started.elapsed() < Duration::from_secs(10), "{outcome:?}");
    let ns = fs::read_to_string(b.out().join("ns")).unwrap();
    assert_eq!(
        processes_in_pid_namespace(ns.trim(), b.tag()),
        Vec::<u32>::new()
    );
}

#[test]
fn max_silent_time_kills_a_silent_build_but_not_a_chatty_one() {
    if skip_without_sandbox() {
        return;
    }
    let f = Fixture::new();
    let mut silent = f.build(&format!("{RECORD_NS} echo hello; $B sleep 1000"));
    silent.spec.max_silent_time = Some(Duration::from_secs(1));
    let mut lines = Vec::new();
    let outcome = silent
        .run_with_lines(&mut |l| lines.push(String::from_utf8_lossy(l).into_owned()))
        .expect("sandbox runs");
    assert_eq!(
        outcome.timed_out,
        Some(TimeoutKind::MaxSilentTime),
        "{outcome:?}"
    );
    assert_eq!(outcome.status, BuilderStatus::Signaled(9));
    assert!(outcome.duration < Duration::from_secs(10), "{outcome:?}");
    assert_eq!(lines, ["hello"]);
    let ns = fs::read_to_string(silent.out().join("ns")).unwrap();
    assert_eq!(
        processes_in_pid_namespace(ns.trim(), silent.tag()),
        Vec::<u32>::new()
    );

    let mut chatty =
        f.build("for i in 1 2 3 4 5 6; do echo tick $i; $B sleep 0.3; done; echo > $out");
    chatty.spec.max_silent_time = Some(Duration::from_secs(1));
    let outcome = chatty.run().expect("sandbox runs");
    assert_success(&chatty, &outcome);
    assert!(
        outcome.duration >= Duration::from_millis(1500),
        "{outcome:?}"
    );
}

#[test]
fn a_fork_bomb_is_bounded_and_cleaned_up() {
    if skip_without_sandbox() {
        return;
    }
    let f = Fixture::new();
    // Up to 2000 background sleeps; the process limit stops it long before. busybox sh
    // gives up on the script at the first failed fork.
    let mut b = f.build(&format!(
        "{RECORD_NS} i=0; while [ $i -lt 2000 ]; do $B sleep 1000 & i=$((i+1)); echo $i > $out/forked; done; echo all 2000 forked"
    ));
    b.spec.max_processes = Some(100);
    b.spec.timeout = Some(Duration::from_secs(30));
    let outcome = b.run().expect("sandbox runs");
    let forked: u32 = fs::read_to_string(b.out().join("forked"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        forked < 100,
        "{forked} processes forked despite the limit of 100"
    );
    assert!(!b.log().contains("all 2000 forked"), "{}", b.log());
    assert!(
        b.log().contains("fork"),
        "the shell should report the failed fork: {}",
        b.log()
    );
    assert!(!outcome.success(), "{outcome:?}");
    assert_eq!(
        outcome.timed_out, None,
        "the bomb ended on its own: {outcome:?}"
    );
    let ns = fs::read_to_string(b.out().join("ns")).unwrap();
    assert_eq!(
        processes_in_pid_namespace(ns.trim(), b.tag()),
        Vec::<u32>::new()
    );
    // The limit is per build: another build right after runs normally.
    let after = f.build("$B true > $out");
    assert_success(&after, &after.run().expect("sandbox runs"));
}

#[test]
fn output_is_streamed_line_by_line_and_logged() {
    if skip_without_sandbox() {
        return;
    }
    let f = Fixture::new();
    let b = f.build("echo one; echo two >&2; printf 'a\\r\\nb\\n'; printf 'no newline'; exit 3");
    let mut lines = Vec::new();
    let outcome = b
        .run_with_lines(&mut |l| lines.push(String::from_utf8_lossy(l).into_owned()))
        .expect("sandbox runs");
    assert_eq!(outcome.status, BuilderStatus::Exited(3));
    assert_eq!(outcome.timed_out, None);
    assert_eq!(lines, ["one", "two", "a\r", "b", "no newline"]);
    // Raw mode: no "\n" → "\r\n" translation, as in Nix.
    assert_eq!(b.log(), "one\ntwo\na\r\nb\nno newline");
}

#[test]
fn a_failing_step_is_named() {
    if skip_without_sandbox() {
        return;
    }
    let f = Fixture::new();
    // An input whose physical path does not exist: refused while planning.
    let mut b = f.build("echo > $out");
    let missing = f
        .dir
        .path()
        .join("store/nix/store/00000000000000000000000000000000-gone");
    b.spec.inputs.push((
        missing.clone(),
        "/nix/store/00000000000000000000000000000000-gone".into(),
    ));
    let e = b.run().unwrap_err();
    match &e {
        SandboxError::Step {
            step: Step::InspectInput { path },
            errno,
        } => {
            assert_eq!(path, &missing);
            assert_eq!(*errno, nix::errno::Errno::ENOENT);
        }
        other => panic!("{other:?}"),
    }
    assert!(e.to_string().contains("inspect input"), "{e}");
    assert!(e.hint().unwrap().contains("missing"), "{:?}", e.hint());

    // A builder that is not in the sandbox: PID 1's exec step fails, reported from inside.
    let mut b = f.build("");
    b.spec.builder = "/nix/store/00000000000000000000000000000000-nope/bin/sh".into();
    let e = b.run().unwrap_err();
    match &e {
        SandboxError::Step {
            step: Step::Exec { path },
            errno,
        } => {
            assert_eq!(path, &b.spec.builder);
            assert_eq!(*errno, nix::errno::Errno::ENOENT);
        }
        other => panic!("{other:?}"),
    }
    eprintln!("error: {e}\nhint: {}", e.hint().unwrap_or_default());

    // A root directory that is not empty is refused before anything runs.
    let b = f.build("echo > $out");
    fs::write(b.spec.root_dir.join("junk"), "").unwrap();
    assert!(matches!(
        b.run(),
        Err(SandboxError::InvalidSpec {
            field: "root_dir",
            ..
        })
    ));
}

#[test]
fn concurrent_builds_do_not_see_each_other() {
    if skip_without_sandbox() {
        return;
    }
    let f = Fixture::new();
    let a = f.build(
        "$B ls /nix/store > $out; $B ls /proc | $B grep -cE '^[0-9]+$' >> $out; $B sleep 0.3",
    );
    let b = f.build(
        "$B ls /nix/store > $out; $B ls /proc | $B grep -cE '^[0-9]+$' >> $out; $B sleep 0.3",
    );
    std::thread::scope(|s| {
        let ta = s.spawn(|| a.run());
        let tb = s.spawn(|| b.run());
        for (build, t) in [(&a, ta), (&b, tb)] {
            let outcome = t.join().unwrap().expect("sandbox runs");
            assert_success(build, &outcome);
        }
    });
    for build in [&a, &b] {
        let text = build.output_text();
        let own = build.out_logical.trim_start_matches("/nix/store/");
        assert!(text.contains(own), "{text}");
        assert_eq!(
            text.lines().count(),
            3,
            "busybox, its own output, a process count: {text}"
        );
    }
}

#[test]
fn outputs_stay_in_the_root_for_the_caller() {
    if skip_without_sandbox() {
        return;
    }
    let f = Fixture::new();
    for overlay in [true, false] {
        let b =
            f.build("$B mkdir -p $out/bin; echo hi > $out/bin/hello; $B ln -s hello $out/bin/link");
        let b = if overlay { b } else { b.without_overlay() };
        outputs_stay_in(&f, &b, overlay);
    }
}

fn outputs_stay_in(f: &Fixture, b: &Build, overlay: bool) {
    assert_success(b, &b.run().expect("sandbox runs"));
    assert_eq!(
        fs::read_to_string(b.out().join("bin/hello")).unwrap(),
        "hi\n"
    );
    assert_eq!(
        fs::read_link(b.out().join("bin/link")).unwrap(),
        Path::new("hello")
    );
    // Without the overlay, the input's mount point is an empty directory on the host once
    // the build is over; with it, the mount point was never on disk.
    let mount_point = b
        .spec
        .root_dir
        .join(f.busybox_logical.trim_start_matches("/nix/store/"));
    if overlay {
        assert!(!mount_point.exists());
        // Nor does the overlay leave its extended attributes on the outputs.
        for path in [
            b.spec.root_dir.clone(),
            b.out(),
            b.out().join("bin"),
            b.out().join("bin/hello"),
        ] {
            assert_eq!(
                user_xattrs(&path),
                Vec::<String>::new(),
                "{}",
                path.display()
            );
        }
    } else {
        assert_eq!(fs::read_dir(mount_point).unwrap().count(), 0);
    }
    // Nothing else of the sandbox's root is left on disk: it was a tmpfs. The root
    // directory is the store directory: only the output and the mount point are there.
    let mut left: Vec<_> = fs::read_dir(&b.spec.root_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut expected = vec![b.out_logical.trim_start_matches("/nix/store/").to_string()];
    if !overlay {
        expected.push(
            f.busybox_logical
                .trim_start_matches("/nix/store/")
                .to_string(),
        );
    }
    expected.sort();
    assert_eq!(left, expected);
    let mode = fs::metadata(&b.spec.root_dir).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o1775, "the store directory's mode");
}

/// The names of the extended attributes of `path` (not following a symlink):
/// [`llistxattr(2)`](https://man7.org/linux/man-pages/man2/listxattr.2.html).
fn user_xattrs(path: &Path) -> Vec<String> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(path, &mut buf).expect("llistxattr");
    buf[..n]
        .split(|b| *b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect()
}

#[test]
fn trivial_build_wall_time() {
    if skip_without_sandbox() {
        return;
    }
    let f = Fixture::new();
    let runs = 30;
    let mut times = Vec::new();
    for _ in 0..runs {
        let mut b = f.build("");
        b.spec.args = vec!["true".into()];
        let started = Instant::now();
        let outcome = b.run().expect("sandbox runs");
        times.push(started.elapsed());
        assert_success(&b, &outcome);
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / runs;
    eprintln!(
        "trivial build (`busybox true`) wall time over {runs} runs: min {:?}, median {:?}, mean {mean:?}, max {:?} ({} build of ksbuild)",
        times[0],
        times[times.len() / 2],
        times[times.len() - 1],
        if cfg!(debug_assertions) { "debug" } else { "release" }
    );
    // Generous bound so a loaded CI machine does not flake; the target is well under 15 ms.
    assert!(
        times[times.len() / 2] < Duration::from_millis(200),
        "{times:?}"
    );
}

/// The same probe, run by an unprivileged user: there the build user is the invoking user
/// itself (`uid_map` `1000 <uid> 1`), and no privilege is needed at all. As root, the test
/// re-runs the probe test of this binary under `setpriv` as uid/gid 4242.
#[test]
fn an_unprivileged_invoker_gets_the_same_sandbox() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: already unprivileged; the other tests cover this case");
        return;
    }
    if skip_without_sandbox() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=4242", "--regid=4242", "--clear-groups"])
        .arg(&exe)
        .args([
            "sandbox::the_builder_sees_what_nix_shows_it",
            "--exact",
            "--test-threads=1",
        ])
        .env("TMPDIR", std::env::temp_dir())
        .env("KSBUILD_REQUIRE_SANDBOX", "1")
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            eprintln!("SKIP: cannot run setpriv (util-linux): {e}");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the probe failed as uid 4242:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn file_and_symlink_inputs_are_visible_read_only() {
    if skip_without_sandbox() {
        return;
    }
    let f = Fixture::new();
    let store = f.dir.path().join("store/nix/store");
    let script = store_base_name("builder.sh");
    fs::write(store.join(&script), "echo from-script > $out\n").unwrap();
    fs::set_permissions(store.join(&script), fs::Permissions::from_mode(0o444)).unwrap();
    let link = store_base_name("link");
    std::os::unix::fs::symlink(&f.busybox_logical, store.join(&link)).unwrap();
    let mut b = f.build("");
    b.spec.args = vec![format!("/nix/store/{script}")];
    b.spec.builder = format!("/nix/store/{link}/bin/busybox");
    b.spec.args.insert(0, "sh".into());
    for name in [&script, &link] {
        b.spec
            .inputs
            .push((store.join(name), format!("/nix/store/{name}")));
    }
    let outcome = b.run().expect("sandbox runs");
    assert_success(&b, &outcome);
    assert_eq!(b.output_text(), "from-script\n");

    let check = f.build(&format!(
        "{{ $B readlink /nix/store/{link}; echo x >> /nix/store/{script} || echo refused; \
         $B grep ' /nix/store/{script} ' /proc/self/mountinfo; }} > $out 2>&1"
    ));
    let mut check = check;
    check
        .spec
        .inputs
        .push((store.join(&script), format!("/nix/store/{script}")));
    check
        .spec
        .inputs
        .push((store.join(&link), format!("/nix/store/{link}")));
    assert_success(&check, &check.run().expect("sandbox runs"));
    let text = check.output_text();
    assert!(
        text.starts_with(&format!("{}\n", f.busybox_logical)),
        "{text}"
    );
    assert!(text.contains("refused"), "{text}");
    // The input's own mount is read-only, nosuid and nodev (whoever owns the file).
    let mount = text
        .lines()
        .find(|l| l.contains(&format!(" /nix/store/{script} ")))
        .unwrap_or_else(|| panic!("no mount of the input: {text}"));
    let options: Vec<&str> = mount.split(' ').nth(5).unwrap().split(',').collect();
    for o in ["ro", "nosuid", "nodev"] {
        assert!(options.contains(&o), "{o} missing: {mount}");
    }
}

/// Set by [`killing_ksbuild_kills_the_build`] for the helper it starts.
const HELPER_GATE: &str = "KSBUILD_TEST_RUN_HELPER";

/// Not a test on its own: the process that [`killing_ksbuild_kills_the_build`] kills
/// while its build runs. The build records its PID namespace in `$out/ns.ready`, after
/// its [`BUILD_TAG`] in `$out/tag`.
#[test]
#[ignore = "helper run by killing_ksbuild_kills_the_build"]
fn helper_long_build() {
    if std::env::var_os(HELPER_GATE).is_none() {
        return;
    }
    let f = Fixture::new();
    let mut b = f.build(&format!(
        "{RECORD_NS} $B sleep 1000 & $B setsid $B sleep 1000 </dev/null >/dev/null 2>&1 & $B sleep 0.2; \
         echo \"${BUILD_TAG}\" > $out/tag; $B cp $out/ns $out/ns.new; $B mv $out/ns.new $out/ns.ready; wait"
    ));
    b.spec.timeout = None;
    let _ = b.run();
}

#[test]
fn killing_ksbuild_kills_the_build() {
    if skip_without_sandbox() {
        return;
    }
    let dir = common::scratch();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "sandbox::helper_long_build",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env(HELPER_GATE, "1")
        .env("TMPDIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Find the build's namespace file: the helper's fixture lives under our TMPDIR. It
    // appears by a rename, whole: a file found while `cp` was still writing it read as
    // empty, and no process is in the namespace "" (the test failed so, once, under load).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (ns, tag) = loop {
        let found = walk(dir.path())
            .into_iter()
            .find(|p| p.file_name().is_some_and(|n| n == "ns.ready"));
        if let Some(p) = found {
            let read = |name| fs::read_to_string(p.with_file_name(name)).unwrap();
            break (
                read("ns.ready").trim().to_string(),
                read("tag").trim().to_string(),
            );
        }
        assert!(Instant::now() < deadline, "the helper build never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Under load the background processes may still be starting: give them a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_in_pid_namespace(&ns, &tag).len() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        processes_in_pid_namespace(&ns, &tag).len() >= 3,
        "the build should be running: {:?}",
        processes_in_pid_namespace(&ns, &tag)
    );
    child.kill().unwrap(); // SIGKILL: no destructor, no cleanup code of ksbuild runs
    child.wait().unwrap();
    // The init process dies of its parent-death signal, PID 1 of its own, and with PID 1
    // the whole namespace; this is asynchronous, so allow a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_in_pid_namespace(&ns, &tag);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "processes of the build outlived ksbuild: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir() && !t.is_symlink()) {
                out.extend(walk(&p));
            }
            out.push(p);
        }
    }
    out
}
