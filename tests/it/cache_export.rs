//! `ksbuild store copy --to file://…` writes a binary cache that real Nix 2.8 verifies and
//! imports: signed with a key from `ksbuild key generate`, and unsigned content-addressed.

use std::fs;
use std::process::Command;

use crate::common::{ksbuild, nix, run, run_ok, scratch, skip_without_nix};

fn nix_in(cache_home: &std::path::Path, program: &str) -> Command {
    let mut c = nix(program);
    c.env("XDG_CACHE_HOME", cache_home);
    c
}

#[test]
fn exported_cache_verifies_and_imports_with_nix() {
    if skip_without_nix() {
        return;
    }
    let tmp = scratch();
    let t = tmp.path();
    let store = t.join("ks");
    fs::create_dir_all(t.join("tree/sub")).unwrap();
    fs::write(t.join("tree/sub/file"), b"exported by ksbuild\n").unwrap();
    fs::write(t.join("flat.txt"), b"flat content\n").unwrap();
    let tree = run_ok(ksbuild(&store).args(["store", "add"]).arg(t.join("tree")))
        .trim()
        .to_string();
    let flat = run_ok(
        ksbuild(&store)
            .args(["store", "add-fixed", "sha256"])
            .arg(t.join("flat.txt")),
    )
    .trim()
    .to_string();

    // Signed export.
    run_ok(
        ksbuild(&store)
            .args(["key", "generate", "ksbuild-test-1"])
            .arg(t.join("sk"))
            .arg(t.join("pk")),
    );
    let pk = fs::read_to_string(t.join("pk")).unwrap();
    assert!(pk.starts_with("ksbuild-test-1:") && !pk.ends_with('\n'));
    let signed = t.join("signed");
    let url = format!("file://{}", signed.display());
    let copied = run_ok(
        ksbuild(&store)
            .args(["store", "copy", "--to", &url, "--secret-key-file"])
            .arg(t.join("sk"))
            .args([&tree, &flat]),
    );
    assert_eq!(copied.lines().count(), 2, "{copied}");
    assert_eq!(
        fs::read_to_string(signed.join("nix-cache-info")).unwrap(),
        "StoreDir: /nix/store\n"
    );
    let cache_home = t.join("xdg");
    run_ok(nix_in(&cache_home, "nix").args([
        "store",
        "verify",
        "--store",
        &url,
        "--trusted-public-keys",
        &pk,
        &tree,
        &flat,
    ]));
    let root = t.join("nixroot");
    let root_s = root.to_str().unwrap();
    run_ok(nix_in(&cache_home, "nix").args([
        "copy",
        "--from",
        &url,
        "--to",
        root_s,
        "--option",
        "trusted-public-keys",
        &pk,
        &tree,
    ]));
    let info: serde_json::Value = serde_json::from_str(&run_ok(nix_in(&cache_home, "nix").args([
        "path-info",
        "--json",
        "--store",
        root_s,
        &tree,
    ])))
    .unwrap();
    let ours: serde_json::Value = serde_json::from_str(&run_ok(ksbuild(&store).args([
        "store",
        "path-info",
        "--json",
        &tree,
    ])))
    .unwrap();
    assert_eq!(info[0]["narHash"], ours[0]["narHash"]);
    assert_eq!(info[0]["narSize"], ours[0]["narSize"]);

    // Content-addressed paths verify themselves; drop the `CA:` lines so that only the
    // signature can vouch for the paths. Then the right key verifies and another does not.
    let sig_only = t.join("sig-only");
    run_ok(Command::new("cp").arg("-r").arg(&signed).arg(&sig_only));
    for entry in fs::read_dir(&sig_only).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "narinfo") {
            let text = fs::read_to_string(&p).unwrap();
            assert!(text.contains("\nSig: ksbuild-test-1:"), "{text}");
            let kept: String = text
                .lines()
                .filter(|l| !l.starts_with("CA: "))
                .map(|l| format!("{l}\n"))
                .collect();
            fs::write(&p, kept).unwrap();
        }
    }
    let sig_url = format!("file://{}", sig_only.display());
    let verify = |key: &str| {
        run(nix_in(&cache_home, "nix").args([
            "store",
            "verify",
            "--store",
            &sig_url,
            "--trusted-public-keys",
            key,
            &tree,
        ]))
    };
    assert!(
        verify(&pk).status.success(),
        "{}",
        String::from_utf8_lossy(&verify(&pk).stderr)
    );
    run_ok(
        ksbuild(&store)
            .args(["key", "generate", "other-1"])
            .arg(t.join("sk2"))
            .arg(t.join("pk2")),
    );
    let other = fs::read_to_string(t.join("pk2")).unwrap();
    assert!(
        !verify(&other).status.success(),
        "a signature by an untrusted key must not verify"
    );

    // Unsigned, but content-addressed: Nix accepts the CA line without any key.
    let unsigned = format!("file://{}", t.join("unsigned").display());
    run_ok(ksbuild(&store).args(["store", "copy", "--to", &unsigned, &flat]));
    let root2 = t.join("nixroot2");
    run_ok(nix_in(&cache_home, "nix").args([
        "copy",
        "--from",
        &unsigned,
        "--to",
        root2.to_str().unwrap(),
        &flat,
    ]));
    let imported = root2.join(flat.trim_start_matches('/'));
    assert_eq!(fs::read(imported).unwrap(), b"flat content\n");

    // Copying again writes nothing; a bad key file is a clear error.
    assert_eq!(
        run_ok(ksbuild(&store).args(["store", "copy", "--to", &url, &tree])).trim(),
        ""
    );
    fs::write(t.join("bad"), "nonsense").unwrap();
    let out = run(ksbuild(&store)
        .args(["store", "copy", "--to", &url, "--secret-key-file"])
        .arg(t.join("bad"))
        .arg(&tree));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a Nix secret key"), "{err}");
}
