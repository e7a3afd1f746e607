//! Substitution from binary caches: a cache written by real Nix 2.8 (`nix copy --to
//! file://…`, signed) substitutes into a fresh ksbuild store instead of building, with
//! Nix's path-info; each kind of bad cache entry is refused with a clear message, nothing
//! of it is registered, and the build falls back to building; a SIGKILL mid-download
//! leaves a store that verifies and a rerun completes; `check` never counts a substituted
//! output as a build.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{nix, run, run_ok, skip_without_nix};
use crate::http_server::Nginx;
use crate::realise::{skip_without_busybox, Project, GRAPH, GRAPH_NIX};

/// The events of a `--json` realisation.
fn events(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn kinds(events: &[serde_json::Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect()
}

/// The `path-info --json` record of `path` in the ksbuild store `store` of `p`.
fn path_info(p: &Project, store: &str, path: &str) -> serde_json::Value {
    let json = run_ok(p.ks(store).args(["store", "path-info", "--json", path]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    v[0].clone()
}

/// `ksbuild realise --json c` into `store` with one substituter and one trusted key.
fn realise_with(p: &Project, store: &str, cache: &str, key: &str, target: &str) -> Command {
    let mut c = p.ks(store);
    c.args(["realise", "--no-link", "--json", "--substituters", cache])
        .args(["--trusted-public-keys", key, target])
        // Neither the host's nix.conf nor a user's config may add caches to the test's.
        .env("NIX_CONF_DIR", p.scratch.join("no-nix-conf"))
        .env("XDG_CONFIG_HOME", p.scratch.join("no-config"));
    c
}

#[test]
fn a_cache_written_by_nix_substitutes_instead_of_building() {
    if skip_without_busybox() || skip_without_nix() {
        return;
    }
    let p = Project::new(GRAPH);
    fs::write(p.dir.join("default.nix"), GRAPH_NIX).unwrap();
    let t = &p.scratch;
    let nix_root = t.join("nixroot");
    let c_path = run_ok(
        nix("nix-build")
            .arg("--store")
            .arg(&nix_root)
            .arg("--no-out-link")
            .arg(p.dir.join("default.nix"))
            .args(["-A", "c"]),
    )
    .trim()
    .to_string();
    run_ok(
        // With the test's store: without one, an ordinary user's Nix would set up /nix/var.
        nix("nix-store")
            .arg("--store")
            .arg(&nix_root)
            .args(["--generate-binary-cache-key", "nix-test-1"])
            .arg(t.join("sk"))
            .arg(t.join("pk")),
    );
    let pk = fs::read_to_string(t.join("pk")).unwrap();
    let cache = t.join("cache");
    let cache_url = format!("file://{}", cache.display());
    run_ok(
        nix("nix")
            .env("XDG_CACHE_HOME", t.join("xdg"))
            .args(["copy", "--from"])
            .arg(&nix_root)
            .arg("--to")
            .arg(format!("{cache_url}?secret-key={}", t.join("sk").display()))
            .arg(&c_path),
    );
    let out = run_ok(&mut realise_with(&p, "ks", &cache_url, &pk, "c"));
    let ev = events(&out);
    let k = kinds(&ev);
    assert!(!k.contains(&"build-started"), "built instead: {out}");
    let substituted: Vec<&str> = ev
        .iter()
        .filter(|e| e["event"] == "substitute-finished")
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(substituted.contains(&c_path.as_str()), "{out}");
    // c's closure (c, a and b's dev output): nothing else.
    let closure = run_ok(
        nix("nix-store")
            .arg("--store")
            .arg(&nix_root)
            .args(["-qR", &c_path]),
    );
    assert_eq!(substituted.len(), closure.lines().count(), "{out}");
    let plan = &ev[k.iter().position(|k| *k == "plan").unwrap()];
    assert_eq!(plan["substitutes"], closure.lines().count(), "{out}");
    assert_eq!(plan["builds"], 0, "{out}");
    run_ok(p.ks("ks").args(["store", "verify", "--check-contents"]));
    for path in closure.lines() {
        let ours = path_info(&p, "ks", path);
        let json = run_ok(
            nix("nix")
                .args(["path-info", "--json", "--store"])
                .arg(&nix_root)
                .arg(path),
        );
        let theirs: serde_json::Value = serde_json::from_str(&json).unwrap();
        for field in ["path", "narHash", "narSize", "references", "deriver", "ca"] {
            assert_eq!(ours[field], theirs[0][field], "{path}: {field}");
        }
        // Downloaded, not built here: signed by the cache's key, and not `ultimate`.
        assert_eq!(ours["ultimate"], serde_json::Value::Null, "{path}");
        let sigs = ours["signatures"].as_array().unwrap();
        assert!(
            sigs[0].as_str().unwrap().starts_with("nix-test-1:"),
            "{ours}"
        );
    }
    // A second realisation finds it all valid.
    let again = run_ok(&mut realise_with(&p, "ks", &cache_url, &pk, "c"));
    assert_eq!(
        kinds(&events(&again)),
        ["cached", "plan", "result", "summary"],
        "{again}"
    );

    // The same closure, zstd-compressed by Nix, served by a real HTTP server.
    let served = t.join("served");
    run_ok(
        nix("nix")
            .env("XDG_CACHE_HOME", t.join("xdg"))
            .args(["copy", "--from"])
            .arg(&nix_root)
            .arg("--to")
            .arg(format!(
                "file://{}?compression=zstd&secret-key={}",
                served.display(),
                t.join("sk").display()
            ))
            .arg(&c_path),
    );
    let Some(server) = Nginx::start_or_skip(&served) else {
        return;
    };
    let out = run_ok(&mut realise_with(&p, "ks-http", &server.url(), &pk, "c"));
    let ev = events(&out);
    assert!(!kinds(&ev).contains(&"build-started"), "{out}");
    let over_http = ev
        .iter()
        .filter(|e| e["event"] == "substitute-finished")
        .count();
    assert_eq!(over_http, closure.lines().count(), "{out}");
    let log = server.access_log();
    assert!(log.contains("GET /nix-cache-info"), "{log}");
    assert!(log.contains(".nar.zst HTTP"), "{log}");
    run_ok(
        p.ks("ks-http")
            .args(["store", "verify", "--check-contents"]),
    );
    for path in closure.lines() {
        assert_eq!(
            path_info(&p, "ks-http", path)["narHash"],
            path_info(&p, "ks", path)["narHash"]
        );
    }
}

/// A project built once into `src` and pushed, signed and uncompressed (so that the tests
/// can damage NARs byte by byte), to a `file://` cache.
struct Exported {
    p: Project,
    cache: PathBuf,
    pk: String,
    /// Store paths by name (`a`, `c`).
    paths: std::collections::BTreeMap<String, String>,
}

fn export_graph() -> Exported {
    let p = Project::new(GRAPH);
    let c = run_ok(p.ks("src").args(["realise", "--no-link", "c"]))
        .trim()
        .to_string();
    let t = p.scratch.clone();
    run_ok(
        p.ks("src")
            .args(["key", "generate", "test-1"])
            .arg(t.join("sk"))
            .arg(t.join("pk")),
    );
    let cache = t.join("cache");
    let written = run_ok(
        p.ks("src")
            .args(["cache", "push", "--compression", "none", "--to"])
            .arg(format!("file://{}", cache.display()))
            .arg("--secret-key-file")
            .arg(t.join("sk"))
            .arg(&c),
    );
    let paths = written
        .lines()
        .map(|l| (l.split_once('-').unwrap().1.to_string(), l.to_string()))
        .collect();
    Exported {
        pk: fs::read_to_string(t.join("pk")).unwrap(),
        p,
        cache,
        paths,
    }
}

impl Exported {
    fn narinfo(&self, cache: &Path, name: &str) -> PathBuf {
        let base = self.paths[name].trim_start_matches("/nix/store/");
        cache.join(format!("{}.narinfo", &base[..32]))
    }

    fn nar(&self, cache: &Path, name: &str) -> PathBuf {
        let text = fs::read_to_string(self.narinfo(cache, name)).unwrap();
        let url = text.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
        cache.join(url)
    }

    /// A copy of the cache, for one case to damage.
    fn copy_cache(&self, name: &str) -> PathBuf {
        let dir = self.p.scratch.join(name);
        run_ok(Command::new("cp").arg("-a").arg(&self.cache).arg(&dir));
        dir
    }
}

#[test]
fn bad_cache_entries_are_refused_and_built_instead() {
    if skip_without_busybox() {
        return;
    }
    let x = export_graph();
    // c references a (and not b, whose output it only reads).
    assert_eq!(x.paths.len(), 2, "{:?}", x.paths);
    let other = x.p.scratch.join("other");
    run_ok(
        x.p.ks("src")
            .args(["key", "generate", "other-1"])
            .arg(other.with_extension("sk"))
            .arg(other.with_extension("pk")),
    );
    let other_pk = fs::read_to_string(other.with_extension("pk")).unwrap();
    type Damage = fn(&Exported, &Path);
    let cases: &[(&str, Damage, bool, &str)] = &[
        (
            "unsigned",
            |x, cache| {
                for name in ["a", "c"] {
                    let f = x.narinfo(cache, name);
                    let text = fs::read_to_string(&f).unwrap();
                    let kept: String = text
                        .lines()
                        .filter(|l| !l.starts_with("Sig: "))
                        .map(|l| format!("{l}\n"))
                        .collect();
                    fs::write(&f, kept).unwrap();
                }
            },
            true,
            "is not signed",
        ),
        (
            "untrusted-key",
            |_, _| {},
            false,
            "signed only by untrusted keys (test-1)",
        ),
        (
            "bad-signature",
            |x, cache| {
                let f = x.narinfo(cache, "c");
                let text = fs::read_to_string(&f).unwrap();
                let sig_at = text.find("Sig: test-1:").unwrap() + 20;
                let mut bytes = text.into_bytes();
                bytes[sig_at] = if bytes[sig_at] == b'A' { b'B' } else { b'A' };
                fs::write(&f, bytes).unwrap();
            },
            true,
            "its signature by `test-1` is invalid",
        ),
        (
            "nar-hash-mismatch",
            |x, cache| {
                let f = x.nar(cache, "c");
                let mut bytes = fs::read(&f).unwrap();
                let at = bytes.windows(4).position(|w| w == b"pwd=").unwrap();
                bytes[at] = b'P';
                fs::write(&f, bytes).unwrap();
            },
            true,
            "NarHash mismatch",
        ),
        (
            "truncated-nar",
            |x, cache| {
                let f = x.nar(cache, "c");
                let bytes = fs::read(&f).unwrap();
                fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
            },
            true,
            ".nar` is damaged: NAR is truncated",
        ),
        (
            "wrong-store-path",
            |x, cache| {
                fs::copy(x.narinfo(cache, "a"), x.narinfo(cache, "c")).unwrap();
            },
            true,
            "its narinfo describes",
        ),
        (
            "missing-reference",
            |x, cache| fs::remove_file(x.narinfo(cache, "a")).unwrap(),
            true,
            "which it references, is in none",
        ),
    ];
    let c = x.paths["c"].clone();
    for (name, damage, trust_ours, message) in cases {
        let cache = x.copy_cache(name);
        damage(&x, &cache);
        let key = if *trust_ours { &x.pk } else { &other_pk };
        let store = format!("st-{name}");
        let out = run(&mut realise_with(
            &x.p,
            &store,
            &format!("file://{}", cache.display()),
            key,
            "c",
        ));
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        assert!(
            stderr.contains(message),
            "{name}: wanted `{message}` in:\n{stderr}"
        );
        // A failed download is not then called a reference missing from the cache.
        if *name != "missing-reference" {
            assert!(!stderr.contains("is in none"), "{name}: {stderr}");
        }
        let ev = events(&stdout);
        assert!(
            ev.iter()
                .any(|e| e["event"] == "build-started" && e["target"] == "c"),
            "{name}: c was not built: {stdout}"
        );
        // The refused path is the one built here, never the cache's.
        let info = path_info(&x.p, &store, &c);
        assert_eq!(info["ultimate"], true, "{name}: {info}");
        assert_eq!(
            info["signatures"],
            serde_json::Value::Null,
            "{name}: {info}"
        );
        run_ok(x.p.ks(&store).args(["store", "verify", "--check-contents"]));
    }
}

#[test]
fn a_killed_download_leaves_a_usable_store() {
    if skip_without_busybox() {
        return;
    }
    let x = export_graph();
    let cache = x.copy_cache("slow");
    // The NAR of c becomes a pipe that delivers half of it, then nothing: the download is
    // certainly under way, and certainly unfinished, when the process is killed.
    let nar = x.nar(&cache, "c");
    let bytes = fs::read(&nar).unwrap();
    fs::remove_file(&nar).unwrap();
    nix::unistd::mkfifo(&nar, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let writer = {
        let nar = nar.clone();
        let half = bytes[..bytes.len() / 2].to_vec();
        std::thread::spawn(move || {
            let mut pipe = fs::OpenOptions::new().write(true).open(&nar).unwrap();
            pipe.write_all(&half).unwrap();
            let _ = stop_rx.recv();
        })
    };
    let url = format!("file://{}", cache.display());
    let mut child = realise_with(&x.p, "st", &url, &x.pk, "c")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let c = x.paths["c"].clone();
    for line in stdout.lines() {
        let line = line.unwrap();
        if line.contains("substitute-started") && line.contains(&c) {
            break;
        }
    }
    // Give it time to read what the pipe holds.
    std::thread::sleep(std::time::Duration::from_millis(300));
    child.kill().unwrap();
    child.wait().unwrap();
    stop_tx.send(()).unwrap();
    writer.join().unwrap();
    let staged = fs::read_dir(x.p.scratch.join("st/nix/var/ksbuild/tmp"))
        .unwrap()
        .count();
    assert!(staged > 0, "the kill came after the download ended");
    let verified = run_ok(x.p.ks("st").args(["store", "verify", "--check-contents"]));
    let _ = verified;
    let info = run(x.p.ks("st").args(["store", "path-info", &c]));
    assert!(!info.status.success(), "c is valid after a killed download");
    // The pipe is replaced by the NAR: the rerun substitutes c.
    fs::remove_file(&nar).unwrap();
    fs::write(&nar, &bytes).unwrap();
    let out = run_ok(&mut realise_with(&x.p, "st", &url, &x.pk, "c"));
    let ev = events(&out);
    assert!(
        ev.iter()
            .any(|e| e["event"] == "substitute-finished" && e["path"] == c.as_str()),
        "{out}"
    );
    assert!(!kinds(&ev).contains(&"build-started"), "{out}");
    run_ok(x.p.ks("st").args(["store", "verify", "--check-contents"]));
}

#[test]
fn check_builds_every_round_of_a_substituted_output() {
    if skip_without_busybox() {
        return;
    }
    let x = export_graph();
    let url = format!("file://{}", x.cache.display());
    let out = run_ok(
        x.p.ks("st")
            .args(["check", "--json", "--rounds", "2", "--substituters", &url])
            .args(["--trusted-public-keys", &x.pk, "c"])
            .env("NIX_CONF_DIR", x.p.scratch.join("no-nix-conf"))
            .env("XDG_CONFIG_HOME", x.p.scratch.join("no-config")),
    );
    // c was substituted (not ultimate), so both rounds are builds of its own.
    let info = path_info(&x.p, "st", &x.paths["c"]);
    assert_eq!(info["ultimate"], serde_json::Value::Null, "{info}");
    let v: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let text = v.to_string();
    assert_eq!(v["derivations"][0]["rebuilt"], 2, "{text}");
    let builds = &v["derivations"][0]["outputs"][0]["builds"];
    assert_eq!(builds.as_array().map(Vec::len), Some(2), "{text}");
}

/// An ordinary user (no `CAP_DAC_OVERRIDE`) substitutes into a store of their own: the
/// sealed (0555) trees restored from NARs move into place and verify.
#[test]
fn an_ordinary_user_substitutes() {
    if skip_without_busybox() {
        return;
    }
    let x = export_graph();
    let url = format!("file://{}", x.cache.display());
    let out = run_ok(
        x.p.ks_ordinary("mine")
            .args(["realise", "--no-link", "--json", "--substituters", &url])
            .args(["--trusted-public-keys", &x.pk, "c"])
            .env("NIX_CONF_DIR", x.p.scratch.join("no-nix-conf"))
            .env("XDG_CONFIG_HOME", x.p.scratch.join("no-config")),
    );
    let ev = events(&out);
    assert!(!kinds(&ev).contains(&"build-started"), "{out}");
    assert_eq!(
        ev.iter()
            .filter(|e| e["event"] == "substitute-finished")
            .count(),
        2,
        "{out}"
    );
    run_ok(
        x.p.ks_ordinary("mine")
            .args(["store", "verify", "--check-contents"]),
    );
}

/// ksbuild → ksbuild over HTTP: `cache push` (xz, by PUT) to a real nginx, then a fresh
/// store substitutes the whole closure from it, builds nothing, and holds the same bytes.
#[test]
fn a_pushed_cache_substitutes_over_http() {
    if skip_without_busybox() {
        return;
    }
    let p = Project::new(GRAPH);
    let c = run_ok(p.ks("src").args(["realise", "--no-link", "c"]))
        .trim()
        .to_string();
    let t = p.scratch.clone();
    run_ok(
        p.ks("src")
            .args(["key", "generate", "http-1"])
            .arg(t.join("sk"))
            .arg(t.join("pk")),
    );
    let pk = fs::read_to_string(t.join("pk")).unwrap();
    let served = t.join("served");
    fs::create_dir_all(&served).unwrap();
    let Some(server) = Nginx::start_or_skip(&served) else {
        return;
    };
    run_ok(
        p.ks("src")
            .args(["cache", "push", "--to", &server.url(), "--secret-key-file"])
            .arg(t.join("sk"))
            .arg(&c),
    );
    let out = run_ok(&mut realise_with(&p, "dst", &server.url(), &pk, "c"));
    let ev = events(&out);
    assert!(!kinds(&ev).contains(&"build-started"), "{out}");
    let log = server.access_log();
    assert!(log.contains(".nar.xz HTTP"), "{log}");
    for path in run_ok(p.ks("src").args(["store", "path-info", "-r", &c])).lines() {
        let (ours, theirs) = (path_info(&p, "dst", path), path_info(&p, "src", path));
        assert_eq!(ours["narHash"], theirs["narHash"], "{path}");
        assert_eq!(ours["references"], theirs["references"], "{path}");
    }
    run_ok(p.ks("dst").args(["store", "verify", "--check-contents"]));
}

/// Where the settings come from: `config.toml` over `nix.conf`, the command line over
/// both, and `--no-substitute` over everything.
#[test]
fn settings_come_from_the_command_line_then_config_toml_then_nix_conf() {
    if skip_without_busybox() {
        return;
    }
    let x = export_graph();
    let t = &x.p.scratch;
    let good = format!("file://{}", x.cache.display());
    let config = t.join("config");
    let nix_conf = t.join("nix-conf");
    fs::create_dir_all(config.join("ksbuild")).unwrap();
    fs::create_dir_all(&nix_conf).unwrap();
    let realise = |store: &str, extra: &[&str]| {
        let mut c = x.p.ks(store);
        c.args(["realise", "--no-link", "--json"])
            .args(extra)
            .arg("c")
            .env("XDG_CONFIG_HOME", &config)
            .env("NIX_CONF_DIR", &nix_conf);
        let out = run(&mut c);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ev = events(&String::from_utf8_lossy(&out.stdout));
        let substituted = ev.iter().any(|e| e["event"] == "substitute-finished");
        (
            substituted,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // nix.conf alone (with an extra- key) is read.
    fs::write(
        nix_conf.join("nix.conf"),
        format!(
            "substituters = {good}\nextra-trusted-public-keys = {}\n",
            x.pk
        ),
    )
    .unwrap();
    assert!(realise("s1", &[]).0, "nix.conf's substituter was not used");
    // config.toml's substituters replace nix.conf's (keys still from nix.conf).
    fs::write(
        config.join("ksbuild/config.toml"),
        "substituters = [\"file:///nonexistent-cache\"]\n",
    )
    .unwrap();
    let (substituted, stderr) = realise("s2", &[]);
    assert!(!substituted, "nix.conf's substituter was used: {stderr}");
    assert!(stderr.contains("file:///nonexistent-cache"), "{stderr}");
    // The command line replaces both; `--no-substitute` turns them all off.
    assert!(realise("s3", &["--substituters", &good]).0);
    assert!(!realise("s4", &["--no-substitute"]).0);
}
