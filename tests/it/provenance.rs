//! `ksbuild provenance`: SLSA provenance of a small realised graph (a `file://` download
//! feeding a build with two files), signed, verified, and refused once a subject file, the
//! payload or the key is wrong; two runs give the same bytes.

use std::fs;
use std::path::Path;

use crate::common::{key_pair, key_pair_named, run, run_ok};
use crate::realise::{skip_without_busybox, Project};

fn project() -> Project {
    let p = Project::new(&[]);
    let payload = p.scratch.join("payload.txt");
    fs::write(&payload, "payload\n").unwrap();
    let hash = "sha256-".to_string() + &ksbuild::compat::Hash::sha256(b"payload\n").to_base64();
    fs::write(
        p.dir.join("derivations/dl.toml"),
        format!(
            "[fetch]\nurl = \"file://{}\"\nhash = \"{hash}\"\n",
            payload.display()
        ),
    )
    .unwrap();
    fs::write(
        p.dir.join("derivations/top.toml"),
        "builder = \"${bb}/bin/busybox\"\nargs = [\"sh\", \"-c\", \"$builder mkdir -p $out/sub && cat ${dl} > $out/copy && echo two > $out/sub/two && $builder ln -s copy $out/link\"]\n[inputs]\nbb = { path = \"tools/busybox\" }\ndl = \"dl\"\n",
    )
    .unwrap();
    p
}

fn statement(envelope: &str) -> serde_json::Value {
    let env: serde_json::Value = serde_json::from_str(envelope).unwrap();
    let payload =
        ksbuild::compat::base64::decode(env["payload"].as_str().unwrap()).expect("base64");
    serde_json::from_slice(&payload).unwrap()
}

#[test]
fn provenance_is_signed_verified_and_refused_when_anything_changed() {
    if skip_without_busybox() {
        return;
    }
    let p = project();
    // Before the build: refused, with the fix.
    let out = run(p.ks("s").args(["provenance", "top"]));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ksbuild realise top"), "{err}");

    let out_path = run_ok(p.ks("s").args(["realise", "--no-link", "top"]))
        .trim()
        .to_string();
    let (secret, public) = key_pair(&p.scratch.join("keys"));
    let file = p.scratch.join("top.intoto.json");
    run_ok(
        p.ks("s")
            .args(["provenance", "top", "--sign-key"])
            .arg(&secret)
            .arg("-o")
            .arg(&file),
    );
    let text = fs::read_to_string(&file).unwrap();
    // Deterministic: a second run (to stdout) gives the same bytes.
    let again = run_ok(
        p.ks("s")
            .args(["provenance", "top", "--sign-key"])
            .arg(&secret),
    );
    assert_eq!(text, again);

    // The statement: subjects, the .drv, the download with its digest, the sources.
    let env: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(env["payloadType"], "application/vnd.in-toto+json");
    assert_eq!(env["signatures"][0]["keyid"], "test-cache-1");
    let s = statement(&text);
    assert_eq!(s["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(s["predicateType"], "https://slsa.dev/provenance/v1");
    let subjects: Vec<(String, String)> = s["subject"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["name"].as_str().unwrap().to_string(),
                x["digest"]["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        subjects,
        vec![
            (
                "copy".to_string(),
                ksbuild::compat::Hash::sha256(b"payload\n").to_hex()
            ),
            (
                "sub/two".to_string(),
                ksbuild::compat::Hash::sha256(b"two\n").to_hex()
            ),
        ]
    );
    let def = &s["predicate"]["buildDefinition"];
    assert_eq!(def["externalParameters"]["target"], "top");
    assert_eq!(
        def["externalParameters"]["gitCommit"],
        serde_json::Value::Null
    );
    assert!(def["externalParameters"]["gitCommitNote"].is_string());
    assert_eq!(
        def["internalParameters"]["outputs"]["out"],
        out_path.as_str()
    );
    assert!(def["internalParameters"]["derivation"]
        .as_str()
        .unwrap()
        .ends_with("-top.drv"));
    let deps = def["resolvedDependencies"].as_array().unwrap();
    let download = deps
        .iter()
        .find(|d| d["uri"].as_str().unwrap().starts_with("file://"))
        .expect("the download");
    assert_eq!(
        download["digest"]["sha256"],
        ksbuild::compat::Hash::sha256(b"payload\n").to_hex()
    );
    let source = deps
        .iter()
        .find(|d| d["name"] == "busybox")
        .expect("the busybox source");
    assert_eq!(source["digest"]["nixNarSha256"].as_str().unwrap().len(), 64);

    // Verified against the store.
    let verify = |file: &Path, key: &str, extra: &[&str]| {
        let mut c = p.ks("s");
        c.args(["provenance", "verify"])
            .arg(file)
            .args(["--key", key]);
        c.args(extra);
        run(&mut c)
    };
    let ok = verify(&file, &public, &["--store-check"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stderr).contains("the 2 subjects of `top` match the store"));

    // A copy of the output with one byte of a subject changed.
    let copy = p.scratch.join("copy-of-out");
    let real = p.scratch.join("s").join(out_path.trim_start_matches('/'));
    run_ok(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&real)
            .arg(&copy),
    );
    run_ok(
        std::process::Command::new("chmod")
            .args(["-R", "u+w"])
            .arg(&copy),
    );
    let good = verify(&file, &public, &["--against", copy.to_str().unwrap()]);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    fs::write(copy.join("sub/two"), "twO\n").unwrap();
    let bad = verify(&file, &public, &["--against", copy.to_str().unwrap()]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("subject `sub/two` has sha256"), "{err}");

    // One byte of the payload changed (re-encoded, so the envelope still parses).
    let mut env2 = env.clone();
    let mut payload = ksbuild::compat::base64::decode(env["payload"].as_str().unwrap()).unwrap();
    let at = payload.windows(3).position(|w| w == b"top").unwrap();
    payload[at] = b'T';
    env2["payload"] = ksbuild::compat::base64::encode(&payload).into();
    let tampered = p.scratch.join("tampered.json");
    fs::write(&tampered, serde_json::to_string(&env2).unwrap()).unwrap();
    let bad = verify(&tampered, &public, &[]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("does not verify"), "{err}");

    // Another key of the same name, and a key of another name.
    let (_, other) = key_pair(&p.scratch.join("other"));
    let bad = verify(&file, &other, &[]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("does not verify"));
    // A single-file output: its subject is named after its store path.
    let dl = run_ok(
        p.ks("s")
            .args(["provenance", "dl", "--sign-key"])
            .arg(&secret),
    );
    let s = statement(&dl);
    assert_eq!(s["subject"].as_array().unwrap().len(), 1);
    assert_eq!(s["subject"][0]["name"], "dl");
    let dl_file = p.scratch.join("dl.intoto.json");
    fs::write(&dl_file, &dl).unwrap();
    let ok = verify(&dl_file, &public, &["--store-check"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );

    let (_, stranger) = key_pair_named(&p.scratch.join("stranger"), "someone-else-1");
    let bad = verify(&file, &stranger, &[]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("no signature by a trusted key"), "{err}");
}
