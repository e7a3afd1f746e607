//! ksbuild as a client of remote builders (`realise --builders`), over a real `sshd` on
//! loopback ([`crate::ssh_server::Sshd`]): a graph built on Nix's `nix-store --serve` with
//! nothing built here; a builder that dies mid-build (the build finishes here, nothing
//! invalid left); a builder whose store sends an output that does not match its own
//! record (rejected, built again); SIGTERM stopping the remote build.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::realise::{skip_without_busybox, Project, GRAPH};
use crate::ssh_server::Sshd;

/// A `remote-program` that runs Nix's `nix-store` with the tests' offline configuration
/// (`ssh` runs it through the login shell, which knows nothing of `NIX_CONFIG`).
fn nix_store_program(dir: &Path) -> PathBuf {
    let path = dir.join("nix-store-offline");
    std::fs::write(
        &path,
        format!("#!/bin/sh\nexport NIX_CONFIG='{NIX_CONFIG}'\nunset NIX_REMOTE\nexec nix-store \"$@\"\n"),
    )
    .unwrap();
    let mut perm = std::fs::metadata(&path).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&path, perm).unwrap();
    path
}

/// A Nix builder on `sshd` with its own chroot store under `dir`: its `builders` line.
fn nix_builder(sshd: &Sshd, dir: &Path, max_jobs: u32) -> (String, PathBuf) {
    let store = dir.join("nix-builder-store");
    let program = nix_store_program(dir);
    let line = format!(
        "{}?remote-program={}&remote-store={} x86_64-linux - {max_jobs} 1",
        sshd.uri(),
        program.display(),
        store.display()
    );
    (line, store)
}

/// `ksbuild realise --no-link --builders BUILDERS ARGS…` in the store `store` of `p`, its
/// `ssh` pointed at `sshd`.
fn realise_on(p: &Project, store: &str, sshd: &Sshd, builders: &str, args: &[&str]) -> Command {
    let mut c = p.ks(store);
    c.args(["realise", "--no-link", "--builders", builders])
        .args(args)
        .env("NIX_SSHOPTS", sshd.nix_sshopts());
    c
}

/// The JSON events of a `realise --json` run.
fn events(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Target → the machine its build started on (`None`: here).
fn started_on(events: &[serde_json::Value]) -> BTreeMap<String, Option<String>> {
    events
        .iter()
        .filter(|e| e["event"] == "build-started")
        .map(|e| {
            (
                e["target"].as_str().unwrap().to_string(),
                e["machine"].as_str().map(String::from),
            )
        })
        .collect()
}

/// Path → NAR hash of the closure of `path` in the ksbuild store `store` of `p`.
fn closure_hashes(p: &Project, store: &str, path: &str) -> BTreeMap<String, String> {
    let json = run_ok(
        p.ks(store)
            .args(["store", "path-info", "--json", "--recursive", path]),
    );
    let v: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
    v.iter()
        .map(|i| {
            (
                i["path"].as_str().unwrap().to_string(),
                i["narHash"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The output path a `realise` printed for its one target.
fn printed_path(stdout: &str) -> String {
    stdout
        .lines()
        .rfind(|l| l.starts_with("/nix/store/"))
        .unwrap_or_else(|| panic!("no output path printed: {stdout}"))
        .to_string()
}

/// `--max-jobs 0` builds the whole graph (two outputs of one derivation, references
/// between outputs, a self-reference) on Nix's `nix-store --serve` over ssh: every build
/// starts there, the outputs come back with the NAR hashes a local build gives, Nix's store
/// holds them too, and the store here verifies.
#[test]
fn a_graph_builds_on_a_nix_builder_over_ssh_and_nothing_here() {
    if skip_without_busybox() || skip_without_nix() {
        return;
    }
    let Some(sshd) = Sshd::start_or_skip() else {
        return;
    };
    let p = Project::new(GRAPH);
    let (line, nix_store) = nix_builder(&sshd, &p.scratch, 2);
    let out = run(&mut realise_on(
        &p,
        "remote",
        &sshd,
        &line,
        &["--json", "--max-jobs", "0", "c"],
    ));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "remote realise failed: {}\n{stdout}\nsshd: {}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    let evs = events(&stdout);
    let uri = line.split_whitespace().next().unwrap().to_string();
    let expected: BTreeMap<String, Option<String>> = ["a", "b", "c"]
        .iter()
        .map(|t| (t.to_string(), Some(uri.clone())))
        .collect();
    assert_eq!(started_on(&evs), expected, "every build on the builder");
    // The same graph built here gives the same bytes.
    let local = run_ok(p.ks("local").args(["realise", "--no-link", "c"]));
    let c = printed_path(&local);
    let remote_hashes = closure_hashes(&p, "remote", &c);
    assert_eq!(remote_hashes, closure_hashes(&p, "local", &c));
    assert_eq!(remote_hashes.len(), 2, "c and a: {remote_hashes:?}");
    // Nix's store has what it built, and its record agrees.
    let nix_hash = run_ok(
        nix("nix-store")
            .arg("--store")
            .arg(&nix_store)
            .args(["--query", "--hash", &c]),
    );
    assert_eq!(
        ksbuild::compat::Hash::parse(nix_hash.trim())
            .unwrap()
            .to_sri(),
        remote_hashes[&c]
    );
    run_ok(p.ks("remote").args(["store", "verify", "--check-contents"]));
}

const SLOW: &[(&str, &str)] = &[(
    "derivations/slow.toml",
    "builder = \"${bb}/bin/busybox\"\nargs = [\"sh\", \"-c\", \"echo started; sleep 4; echo done > $out\"]\n[inputs]\nbb = { path = \"tools/busybox\" }\n",
)];

/// The builder's sshd (and every session under it) dies while it builds: the derivation is
/// built here instead, with a warning that names the builder, and nothing invalid is left.
#[test]
fn a_builder_that_dies_mid_build_is_skipped_and_the_build_finishes_here() {
    if skip_without_busybox() || skip_without_nix() {
        return;
    }
    let Some(mut sshd) = Sshd::start_or_skip() else {
        return;
    };
    let p = Project::new(SLOW);
    let (line, _) = nix_builder(&sshd, &p.scratch, 1);
    let mut child = realise_on(&p, "store", &sshd, &line, &["--json", "-j", "1", "slow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut l = String::new();
        assert!(
            stdout.read_line(&mut l).unwrap() > 0,
            "realise ended: {seen}"
        );
        seen.push_str(&l);
        if l.contains("\"build-started\"") {
            assert!(l.contains("\"machine\""), "started here, not remotely: {l}");
            break;
        }
        assert!(Instant::now() < deadline, "no build started: {seen}");
    }
    // Let the remote build begin, then take the machine away.
    std::thread::sleep(Duration::from_millis(1500));
    sshd.kill();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{stderr}\n{seen}{rest}");
    assert!(
        stderr.contains("cannot build `slow` on `ssh://")
            && stderr.contains("building `slow` elsewhere"),
        "{stderr}"
    );
    let path = evs_output(&format!("{seen}{rest}"), "slow");
    let physical = p.scratch.join("store").join(path.trim_start_matches('/'));
    assert_eq!(std::fs::read_to_string(physical).unwrap(), "done\n");
    run_ok(p.ks("store").args(["store", "verify", "--check-contents"]));
}

/// The `out` path of `target` from the `build-finished` event.
fn evs_output(stdout: &str, target: &str) -> String {
    events(stdout)
        .iter()
        .find(|e| e["event"] == "build-finished" && e["target"] == target)
        .unwrap_or_else(|| panic!("`{target}` did not finish: {stdout}"))["outputs"]["out"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A builder whose store holds the output, damaged on its disk after it was registered,
/// claims the recorded NAR hash but sends other bytes: the output is rejected (the
/// warning says why), nothing of it registered, and the derivation built here.
#[test]
fn an_output_that_does_not_match_the_builder_s_claim_is_rejected_and_rebuilt() {
    if skip_without_busybox() || skip_without_nix() {
        return;
    }
    let Some(sshd) = Sshd::start_or_skip() else {
        return;
    };
    let p = Project::new(GRAPH);
    let (line, nix_store) = nix_builder(&sshd, &p.scratch, 1);
    let first = run(&mut realise_on(
        &p,
        "first",
        &sshd,
        &line,
        &["--max-jobs", "0", "a"],
    ));
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let a = printed_path(&String::from_utf8_lossy(&first.stdout));
    let honest = closure_hashes(&p, "first", &a)[&a].clone();
    // Damage the builder's copy (an ordinary user's Nix store is the user's files).
    let dir = nix_store.join(a.trim_start_matches('/'));
    let file = dir.join("a");
    for (path, mode) in [(&dir, 0o755), (&file, 0o644)] {
        let mut perm = std::fs::metadata(path).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, mode);
        std::fs::set_permissions(path, perm).unwrap();
    }
    std::fs::write(&file, "b\n").unwrap();
    let out = run(&mut realise_on(
        &p,
        "second",
        &sshd,
        &line,
        &["--json", "-j", "1", "a"],
    ));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("rejected output `out` of `a`") && stderr.contains("its NAR hash is"),
        "{stderr}"
    );
    assert_eq!(closure_hashes(&p, "second", &a)[&a], honest);
    run_ok(p.ks("second").args(["store", "verify", "--check-contents"]));
}

/// SIGTERM to ksbuild while a derivation builds remotely ends the remote build too (its
/// `ssh` dies with ksbuild; the server sees its input close).
#[test]
fn sigterm_stops_the_remote_build() {
    if skip_without_busybox() || skip_without_nix() {
        return;
    }
    let Some(sshd) = Sshd::start_or_skip() else {
        return;
    };
    let marker = format!("ksbuild-remote-sigterm-{}", std::process::id());
    let p = Project::new(&[(
        "derivations/long.toml",
        &format!("builder = \"${{bb}}/bin/busybox\"\nargs = [\"sh\", \"-c\", \"echo {marker}; sleep 300; echo {marker} ended\"]\n[inputs]\nbb = {{ path = \"tools/busybox\" }}\n"),
    )]);
    let (line, _) = nix_builder(&sshd, &p.scratch, 1);
    let mut child = realise_on(
        &p,
        "store",
        &sshd,
        &line,
        &["-L", "--max-jobs", "0", "long"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    // Its log streams here as it comes (`-L`): the marker reaches ksbuild's stderr through
    // Nix's log, `ssh` and ksbuild, some time after the builder starts, so the signal waits
    // for both.
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let log = log.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
    }
    let builds = || {
        let out = Command::new("pgrep")
            .args(["-f", &format!("{marker} ended")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while builds() == 0 || !log.lock().unwrap().contains(&marker) {
        assert!(
            Instant::now() < deadline && child.try_wait().unwrap().is_none(),
            "the remote build never started or its log never streamed here: {}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = child.wait();
    let deadline = Instant::now() + Duration::from_secs(15);
    while builds() > 0 {
        assert!(
            Instant::now() < deadline,
            "the remote build still runs 15 s after ksbuild was terminated"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `builders` line for a ksbuild builder on `sshd`, serving the store at `store`.
fn ksbuild_builder(sshd: &Sshd, store: &Path, rest: &str) -> (String, String) {
    let uri = format!(
        "{}?remote-program={}&remote-store={}",
        sshd.uri(),
        ksbuild_bin().display(),
        store.display()
    );
    (format!("{uri} {rest}"), uri)
}

/// Two ksbuild builders — `a` with two slots, `b` with one and speed factor 2 — build a
/// graph of 50 derivations (49 independent ones and one that needs them all, whose inputs
/// built on the other machine are sent to it), with nothing built here. Each choice
/// follows Nix's rules, checked from the loads each build was chosen with: never on a full
/// machine, and on `a` only while `b` (as idle as `a` per unit of speed, and faster) is
/// full. The result is what a local build gives.
#[test]
fn fifty_derivations_spread_over_two_ksbuild_builders_by_nix_s_rules() {
    if skip_without_busybox() {
        return;
    }
    let Some(sshd) = Sshd::start_or_skip() else {
        return;
    };
    let mut files: Vec<(String, String)> = (0..49)
        .map(|i| {
            (
                format!("derivations/d{i:02}.toml"),
                format!("builder = \"${{bb}}/bin/busybox\"\nargs = [\"sh\", \"-c\", \"sleep 0.2; echo {i} > $out\"]\n[inputs]\nbb = {{ path = \"tools/busybox\" }}\n"),
            )
        })
        .collect();
    let inputs: String = (0..49)
        .map(|i| format!("d{i:02} = \"d{i:02}\"\n"))
        .collect();
    let cats: String = (0..49).map(|i| format!(" ${{d{i:02}}}")).collect();
    files.push((
        "derivations/all.toml".into(),
        format!("builder = \"${{bb}}/bin/busybox\"\nargs = [\"sh\", \"-c\", \"cat{cats} > $out\"]\n[inputs]\nbb = {{ path = \"tools/busybox\" }}\n{inputs}"),
    ));
    let p = Project::of(&files);
    let (a_line, a) = ksbuild_builder(&sshd, &p.scratch.join("builder-a"), "x86_64-linux - 2 1");
    let (b_line, b) = ksbuild_builder(&sshd, &p.scratch.join("builder-b"), "x86_64-linux - 1 2");
    let out = run(p
        .ks("client")
        .args(["realise", "--json", "--no-link", "--max-jobs", "0"])
        .arg("--builders")
        .arg(format!("{a_line}; {b_line}"))
        .arg("all")
        .env("NIX_SSHOPTS", sshd.nix_sshopts()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\nsshd: {}",
        String::from_utf8_lossy(&out.stderr),
        sshd.log()
    );
    let max_jobs = BTreeMap::from([(a.clone(), 2u64), (b.clone(), 1u64)]);
    let mut on = BTreeMap::<String, usize>::new();
    let starts: Vec<serde_json::Value> = events(&stdout)
        .into_iter()
        .filter(|e| e["event"] == "build-started")
        .collect();
    assert_eq!(starts.len(), 50);
    for e in &starts {
        let machine = e["machine"]
            .as_str()
            .unwrap_or_else(|| panic!("built here: {e}"))
            .to_string();
        let load = |m: &str| e["loads"][m].as_u64().unwrap();
        assert!(
            load(&machine) < max_jobs[&machine],
            "chosen while full: {e}"
        );
        if machine == a {
            assert_eq!(load(&b), 1, "`a` chosen while the faster `b` was free: {e}");
        }
        *on.entry(machine).or_default() += 1;
    }
    assert!(
        on.get(&a).is_some_and(|&n| n > 0) && on.get(&b).is_some_and(|&n| n > 0),
        "{on:?}"
    );
    let path = evs_output(&stdout, "all");
    let local = run_ok(
        p.ks("local")
            .args(["realise", "--no-link", "-j", "2", "all"]),
    );
    assert_eq!(printed_path(&local), path);
    assert_eq!(
        closure_hashes(&p, "client", &path),
        closure_hashes(&p, "local", &path)
    );
    run_ok(p.ks("client").args(["store", "verify", "--check-contents"]));
}

/// `store copy --to ssh://…` (`nix copy --to ssh://`) sends a closure to Nix's store over
/// ssh, references first, only what it lacks; Nix's records then match ksbuild's.
#[test]
fn store_copy_sends_a_closure_to_a_nix_store_over_ssh() {
    if skip_without_busybox() || skip_without_nix() {
        return;
    }
    let Some(sshd) = Sshd::start_or_skip() else {
        return;
    };
    let p = Project::new(GRAPH);
    let c = printed_path(&run_ok(p.ks("here").args(["realise", "--no-link", "c"])));
    let (line, nix_store) = nix_builder(&sshd, &p.scratch, 1);
    let uri = line.split_whitespace().next().unwrap();
    let copy = |only: &str| {
        run_ok(
            p.ks("here")
                .args(["store", "copy", "--to", uri, only])
                .env("NIX_SSHOPTS", sshd.nix_sshopts()),
        )
    };
    let hashes = closure_hashes(&p, "here", &c);
    let a = hashes.keys().find(|k| k.ends_with("-a")).unwrap().clone();
    assert_eq!(copy(&a).lines().collect::<Vec<_>>(), [a.as_str()]);
    // The rest of the closure: `a` is there already.
    let sent = copy(&c);
    assert_eq!(sent.lines().count(), hashes.len() - 1, "{sent}");
    for (path, hash) in &hashes {
        let nix_hash = run_ok(
            nix("nix-store")
                .arg("--store")
                .arg(&nix_store)
                .args(["--query", "--hash", path]),
        );
        assert_eq!(
            &ksbuild::compat::Hash::parse(nix_hash.trim())
                .unwrap()
                .to_sri(),
            hash
        );
    }
    run_ok(
        nix("nix-store")
            .arg("--store")
            .arg(&nix_store)
            .args(["--verify", "--check-contents"]),
    );
    assert_eq!(copy(&c), "");
}

/// A builder that cannot be reached (nothing listens on its port) is tried once, skipped
/// for a while with a warning that names it, and every build goes to the builder that
/// answers.
#[test]
fn an_unreachable_builder_is_skipped_and_the_builds_go_elsewhere() {
    if skip_without_busybox() {
        return;
    }
    let Some(sshd) = Sshd::start_or_skip() else {
        return;
    };
    let p = Project::new(GRAPH);
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    // Faster, so chosen first while it is not known to be down.
    let down = format!("ssh://{}@127.0.0.1:{port} x86_64-linux - 4 8", sshd.user());
    let (up_line, _) = ksbuild_builder(&sshd, &p.scratch.join("builder"), "x86_64-linux - 1 1");
    let out = run(p
        .ks("client")
        .args(["realise", "--json", "--no-link", "--max-jobs", "0"])
        .arg("--builders")
        .arg(format!("{down}\n{up_line}"))
        .arg("c")
        .env("NIX_SSHOPTS", sshd.nix_sshopts()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let warnings = stderr
        .matches(&format!("on `ssh://{}@127.0.0.1:{port}`", sshd.user()))
        .count();
    assert_eq!(warnings, 1, "tried once, then skipped:\n{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
    // The first build started on the one that was down; all of them finished on the other.
    let finished = events(&String::from_utf8_lossy(&out.stdout))
        .iter()
        .filter(|e| e["event"] == "build-finished")
        .count();
    assert_eq!(finished, 3);
    run_ok(p.ks("client").args(["store", "verify", "--check-contents"]));
}
