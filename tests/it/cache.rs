//! `ksbuild cache push` (publishing side of binary caches) against real Nix 2.8 and a real
//! HTTP server (nginx with WebDAV PUT, `http_server::Nginx`): what ksbuild uploads, Nix
//! takes with `require-sigs`; what Nix writes for the same path, ksbuild writes byte for
//! byte; a second push uploads nothing; narinfos appear after their NARs and after their
//! references' narinfos.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

use crate::common::{ksbuild, nix, run, run_ok, scratch, skip_without_nix};
use crate::http_server::Nginx;
use crate::realise::{skip_without_busybox, Project, GRAPH};

/// A Nix command whose narinfo disk cache lives in `t/xdg` (never the user's).
fn nix_in(t: &Path, program: &str) -> Command {
    let mut c = nix(program);
    c.env("XDG_CACHE_HOME", t.join("xdg"));
    c
}

/// `path -> narHash` of `paths` in a Nix store (`--store DIR`) or ksbuild's (`ks`).
fn nar_hashes(json: &str) -> BTreeMap<String, String> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["path"].as_str().unwrap().to_string(),
                i["narHash"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The project of the HTTP test: `GRAPH` (a ← b ← c, with references) plus a download
/// (`payload`, fixed-output, from a `file://` URL) used by `uses`, whose output does not
/// refer to it and whose build prints a line (so it has a log).
fn project() -> Project {
    let p = Project::new(GRAPH);
    let payload = p.scratch.join("payload.txt");
    fs::write(&payload, "payload\n").unwrap();
    let hash = "sha256-".to_string() + &ksbuild::compat::Hash::sha256(b"payload\n").to_base64();
    fs::write(
        p.dir.join("derivations/payload.toml"),
        format!(
            "[fetch]\nurl = \"file://{}\"\nhash = \"{hash}\"\n",
            payload.display()
        ),
    )
    .unwrap();
    fs::write(
        p.dir.join("derivations/uses.toml"),
        "builder = \"${bb}/bin/busybox\"\nargs = [\"sh\", \"-c\", \"echo using the payload; $builder cp ${payload} $out\"]\n[inputs]\nbb = { path = \"tools/busybox\" }\npayload = \"payload\"\n",
    )
    .unwrap();
    fs::write(
        p.dir.join("derivations/unbuilt.toml"),
        "builder = \"${bb}/bin/busybox\"\nargs = [\"sh\", \"-c\", \"echo never > $out\"]\n[inputs]\nbb = { path = \"tools/busybox\" }\n",
    )
    .unwrap();
    p
}

/// The output paths of `target`, realised already.
fn outputs(p: &Project, target: &str) -> Vec<String> {
    run_ok(p.ks("s").args(["realise", "--no-link", target]))
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn a_push_over_http_is_taken_by_nix_with_require_sigs_and_a_second_push_uploads_nothing() {
    if skip_without_nix() || skip_without_busybox() {
        return;
    }
    let p = project();
    let t = &p.scratch;
    let served = t.join("served");
    fs::create_dir_all(&served).unwrap();
    let Some(server) = Nginx::start_or_skip(&served) else {
        return;
    };
    run_ok(
        p.ks("s")
            .args(["key", "generate", "push-test-1"])
            .arg(t.join("sk"))
            .arg(t.join("pk")),
    );
    let pk = fs::read_to_string(t.join("pk")).unwrap();

    // Nothing is built yet: the push realises `c` and `uses` first.
    let out = run_ok(
        p.ks("s")
            .args([
                "cache",
                "push",
                "--json",
                "--to",
                &server.url(),
                "--secret-key-file",
            ])
            .arg(t.join("sk"))
            .args(["c", "uses"]),
    );
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let uploaded: Vec<String> = report["uploaded"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["path"].as_str().unwrap().to_string())
        .collect();
    let c = outputs(&p, "c");
    let uses = outputs(&p, "uses");
    let payload = outputs(&p, "payload");
    let a = outputs(&p, "a");
    // The runtime closure of `c` (it refers to `a`), `uses`, and the download `uses`
    // needed although its output does not refer to it.
    for want in c.iter().chain(&uses).chain(&payload).chain(&a) {
        assert!(uploaded.contains(want), "{want} not uploaded: {uploaded:?}");
    }
    assert!(report["present"].as_array().unwrap().is_empty(), "{report}");
    for u in report["uploaded"].as_array().unwrap() {
        let url = u["url"].as_str().unwrap();
        assert!(url.starts_with("nar/") && url.ends_with(".nar.xz"), "{u}");
        let nar = served.join(url);
        assert_eq!(
            fs::metadata(&nar).unwrap().len(),
            u["fileSize"].as_u64().unwrap()
        );
    }
    assert_eq!(
        fs::read_to_string(served.join("nix-cache-info")).unwrap(),
        "StoreDir: /nix/store\n"
    );
    // The log of `uses`'s build, under `log/<drv basename>`.
    let uses_drv = run_ok(p.ks("s").args(["instantiate", "uses"]));
    let uses_drv = uses_drv.trim().rsplit('/').next().unwrap().to_string();
    assert_eq!(
        fs::read_to_string(served.join("log").join(&uses_drv)).unwrap(),
        "using the payload\n"
    );

    // Every NAR was PUT before the narinfo that names it, and every narinfo after those of
    // its references.
    let log = server.access_log();
    let puts: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split("\"PUT /").nth(1)?.split(' ').next())
        .collect();
    let at = |name: &str| {
        puts.iter()
            .position(|p| *p == name)
            .unwrap_or_else(|| panic!("`{name}` was not PUT: {puts:?}"))
    };
    for entry in fs::read_dir(&served).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let Some(hash) = name.strip_suffix(".narinfo") else {
            continue;
        };
        let text = fs::read_to_string(served.join(&name)).unwrap();
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .unwrap()
                .to_string()
        };
        assert!(at(&field("URL: ")) < at(&name), "{name}: NAR after narinfo");
        for r in field("References: ").split_whitespace() {
            let r_hash = &r[..32];
            if r_hash != hash {
                assert!(
                    at(&format!("{r_hash}.narinfo")) < at(&name),
                    "{name} before {r}"
                );
            }
        }
        assert!(text.contains("\nSig: push-test-1:"), "{text}");
    }

    // A second push finds every narinfo and uploads nothing.
    let again = run_ok(p.ks("s").args([
        "cache",
        "push",
        "--json",
        "--to",
        &server.url(),
        "c",
        "uses",
    ]));
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["uploaded"], serde_json::json!([]), "{again}");
    assert_eq!(
        again["present"].as_array().unwrap().len(),
        uploaded.len(),
        "{again}"
    );
    assert_eq!(server.access_log().matches("\"PUT /").count(), puts.len());

    // Real Nix takes the paths from the HTTP cache, signatures required and checked.
    let root = t.join("nixroot");
    let wanted: Vec<&String> = c.iter().chain(&uses).chain(&payload).collect();
    let copied = run(nix_in(t, "nix")
        .args(["copy", "--from", &server.url(), "--to"])
        .arg(&root)
        .args(["--option", "require-sigs", "true"])
        .args(["--option", "trusted-public-keys", &pk])
        .args(&wanted));
    assert!(
        copied.status.success(),
        "nix copy --from the HTTP cache failed:\n{}",
        String::from_utf8_lossy(&copied.stderr)
    );
    let theirs = nar_hashes(&run_ok(
        nix_in(t, "nix")
            .args(["path-info", "--json", "--recursive", "--store"])
            .arg(&root)
            .args(&wanted),
    ));
    let ours = nar_hashes(&run_ok(
        p.ks("s")
            .args(["store", "path-info", "--json", "--recursive"])
            .args(&wanted),
    ));
    assert_eq!(theirs, ours);

    // With a key Nix does not trust, it refuses them.
    run_ok(
        p.ks("s")
            .args(["key", "generate", "other-1"])
            .arg(t.join("sk2"))
            .arg(t.join("pk2")),
    );
    let other = fs::read_to_string(t.join("pk2")).unwrap();
    let refused = run(nix_in(t, "nix")
        .args(["copy", "--from", &server.url(), "--to"])
        .arg(t.join("nixroot2"))
        .args(["--option", "require-sigs", "true"])
        .args(["--option", "trusted-public-keys", &other])
        .arg(&c[0]));
    assert!(
        !refused.status.success(),
        "an untrusted signature was accepted"
    );
}

#[test]
fn zstd_to_a_directory_derivations_and_no_build() {
    if skip_without_nix() || skip_without_busybox() {
        return;
    }
    let p = project();
    let t = &p.scratch;
    let dir = t.join("cache");
    let url = format!("file://{}", dir.display());
    run_ok(
        p.ks("s")
            .args(["key", "generate", "push-test-2"])
            .arg(t.join("sk"))
            .arg(t.join("pk")),
    );
    let pk = fs::read_to_string(t.join("pk")).unwrap();

    // `--no-build` refuses a target that is not built, and uploads nothing.
    let out = run(p
        .ks("s")
        .args(["cache", "push", "--no-build", "--to", &url, "unbuilt"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`unbuilt`") && err.contains("--no-build"),
        "{err}"
    );
    assert!(!dir.join("nar").exists() || fs::read_dir(dir.join("nar")).unwrap().count() == 0);

    outputs(&p, "c");
    let out = run_ok(
        p.ks("s")
            .args([
                "cache",
                "push",
                "--no-build",
                "--derivations",
                "--compression",
                "zstd",
            ])
            .args(["--write-nar-listing", "--to", &url, "--secret-key-file"])
            .arg(t.join("sk"))
            .arg("c"),
    );
    let c = outputs(&p, "c");
    let c_drv = run_ok(p.ks("s").args(["instantiate", "c"]))
        .trim()
        .to_string();
    let a_drv = run_ok(p.ks("s").args(["instantiate", "a"]))
        .trim()
        .to_string();
    for want in [&c[0], &c_drv, &a_drv] {
        assert!(out.lines().any(|l| l == want), "{want} not pushed:\n{out}");
        let hash = &want["/nix/store/".len()..][..32];
        let info = fs::read_to_string(dir.join(format!("{hash}.narinfo"))).unwrap();
        assert!(info.contains("\nCompression: zstd\n"), "{info}");
        let nar = info.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
        assert!(nar.ends_with(".nar.zst"), "{info}");
        let listing = fs::read_to_string(dir.join(format!("{hash}.ls"))).unwrap();
        assert!(
            listing.starts_with("{\"version\":1,\"root\":{\"type\":"),
            "{listing}"
        );
    }

    // Nix reads the zstd cache: the output and the derivation, signatures required.
    let root = t.join("nixroot");
    // (`--derivation`: a `.drv` installable otherwise stands for its outputs.)
    for args in [vec![c[0].as_str()], vec!["--derivation", c_drv.as_str()]] {
        let copied = run(nix_in(t, "nix")
            .args(["copy", "--from", &url, "--to"])
            .arg(&root)
            .args(["--option", "trusted-public-keys", &pk])
            .args(&args));
        assert!(
            copied.status.success(),
            "{}",
            String::from_utf8_lossy(&copied.stderr)
        );
    }
    assert_eq!(
        fs::read(root.join(c_drv.trim_start_matches('/'))).unwrap(),
        fs::read(t.join("s").join(c_drv.trim_start_matches('/'))).unwrap()
    );
}

#[test]
fn the_cache_is_byte_identical_to_what_nix_copy_writes() {
    if skip_without_nix() {
        return;
    }
    let tmp = scratch();
    let t = tmp.path();
    fs::create_dir_all(t.join("tree/sub")).unwrap();
    fs::write(t.join("tree/sub/file"), "contents\n").unwrap();
    fs::write(t.join("tree/run"), "#!/bin/sh\n").unwrap();
    run_ok(Command::new("chmod").arg("755").arg(t.join("tree/run")));
    std::os::unix::fs::symlink("sub/file", t.join("tree/link")).unwrap();
    let store = t.join("ks");
    let ours = run_ok(ksbuild(&store).args(["store", "add"]).arg(t.join("tree")));
    let path = ours.trim();
    let root = t.join("nixroot");
    let theirs = run_ok(
        nix_in(t, "nix-store")
            .arg("--store")
            .arg(&root)
            .arg("--add")
            .arg(t.join("tree")),
    );
    assert_eq!(theirs.trim(), path);
    run_ok(
        ksbuild(&store)
            .args(["key", "generate", "same-1"])
            .arg(t.join("sk"))
            .arg(t.join("pk")),
    );
    let sk = t.join("sk").display().to_string();
    for compression in ["none", "xz"] {
        let nix_dir = t.join(format!("nix-{compression}"));
        let ks_dir = t.join(format!("ks-{compression}"));
        run_ok(
            nix_in(t, "nix")
                .args(["copy", "--store"])
                .arg(&root)
                .arg("--to")
                .arg(format!(
                    "file://{}?compression={compression}&write-nar-listing=1&secret-key={sk}",
                    nix_dir.display()
                ))
                .arg(path),
        );
        run_ok(
            ksbuild(&store)
                .args([
                    "cache",
                    "push",
                    "--write-nar-listing",
                    "--compression",
                    compression,
                ])
                .arg("--to")
                .arg(format!("file://{}", ks_dir.display()))
                .args(["--secret-key-file", &sk, path]),
        );
        let files = |dir: &Path| -> BTreeMap<String, Vec<u8>> {
            walkdir::WalkDir::new(dir)
                .into_iter()
                .map(|e| e.unwrap())
                .filter(|e| e.file_type().is_file())
                .map(|e| {
                    let rel = e.path().strip_prefix(dir).unwrap().display().to_string();
                    (rel, fs::read(e.path()).unwrap())
                })
                .collect()
        };
        let (n, k) = (files(&nix_dir), files(&ks_dir));
        if compression == "none" {
            // Everything: nix-cache-info, narinfo, listing, NAR, and the same folders.
            assert_eq!(n, k);
            let dirs = |d: &Path| {
                let mut v: Vec<_> = fs::read_dir(d)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                v.sort();
                v
            };
            assert_eq!(dirs(&nix_dir), dirs(&ks_dir));
        } else {
            // The compressors differ (Nix's libarchive, ksbuild's liblzma settings), so the
            // compressed bytes, their hash and size may; every other line is the same.
            let narinfo = |m: &BTreeMap<String, Vec<u8>>| -> Vec<String> {
                let (_, text) = m.iter().find(|(k, _)| k.ends_with(".narinfo")).unwrap();
                String::from_utf8(text.clone())
                    .unwrap()
                    .lines()
                    .filter(|l| !l.starts_with("URL: ") && !l.starts_with("File"))
                    .map(String::from)
                    .collect()
            };
            assert_eq!(narinfo(&n), narinfo(&k));
            assert_eq!(n["nix-cache-info"], k["nix-cache-info"]);
            let ls = |m: &BTreeMap<String, Vec<u8>>| {
                m.iter()
                    .find(|(k, _)| k.ends_with(".ls"))
                    .unwrap()
                    .1
                    .clone()
            };
            assert_eq!(ls(&n), ls(&k));
        }
    }
}

#[test]
fn an_unreachable_cache_is_named_with_a_hint() {
    let tmp = scratch();
    let t = tmp.path();
    fs::write(t.join("f"), "x\n").unwrap();
    let store = t.join("ks");
    let path = run_ok(ksbuild(&store).args(["store", "add"]).arg(t.join("f")));
    // Port 9 (discard) on loopback: nothing listens there in a test machine.
    let out = run(ksbuild(&store).args([
        "cache",
        "push",
        "--to",
        "http://127.0.0.1:9/cache",
        path.trim(),
    ]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("http://127.0.0.1:9/cache/nix-cache-info")
            && err.contains("help: check that the server is running"),
        "{err}"
    );
    let out = run(ksbuild(&store).args(["cache", "push", "--to", "s3://bucket", path.trim()]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("path-style"), "{err}");
}
