//! Cross-check of `compat::narinfo` and `compat::signing` against real Nix 2.8: a
//! `file://` binary cache written by hand with our narinfo writer and keys must be
//! verified and imported by `nix store verify` / `nix copy`, a tampered signature must
//! be refused, and the narinfo files Nix itself writes must round-trip byte for byte.
//!
//! NAR bytes come from `nix-store --dump` (ksbuild's own NAR writer is tested elsewhere).
//! Everything happens in scratch dirs: `file://` caches and chroot stores, never `/nix`.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use ksbuild::compat::narinfo::{ContentAddress, NarInfo};
use ksbuild::compat::signing::{PublicKey, SecretKey};
use ksbuild::compat::{FileIngestionMethod, Hash, StoreDir, StorePath};

use crate::common::{nix, run, run_ok, scratch, skip_without_nix};

/// A path to publish: its narinfo and its uncompressed NAR.
#[derive(Clone)]
struct Entry {
    info: NarInfo,
    nar: Vec<u8>,
}

/// Nix commands for this test, with their own `~/.cache/nix` (Nix caches narinfo lookups
/// per cache URL there; keep them out of the user's cache).
struct Nix {
    xdg_cache: PathBuf,
}

impl Nix {
    fn cmd(&self, program: &str) -> Command {
        let mut c = nix(program);
        c.env("XDG_CACHE_HOME", &self.xdg_cache);
        c
    }

    /// `nix-store --dump path`: the NAR bytes.
    fn dump(&self, path: &Path) -> Vec<u8> {
        let out = run(self.cmd("nix-store").arg("--dump").arg(path));
        assert!(
            out.status.success(),
            "nix-store --dump {path:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// `nix path-info --json` of `path` in the chroot store `root`, as one JSON object.
    fn path_info(&self, root: &Path, path: &str) -> serde_json::Value {
        let json = run_ok(
            self.cmd("nix")
                .args(["path-info", "--json", "--store"])
                .arg(root)
                .arg(path),
        );
        let v: serde_json::Value = serde_json::from_str(&json).expect("path-info prints JSON");
        v.as_array()
            .and_then(|a| a.first())
            .cloned()
            .unwrap_or_else(|| panic!("no path info in {json}"))
    }
}

/// A narinfo for an uncompressed NAR, as `nix copy --to 'file://…?compression=none'` makes.
fn entry(store_path: StorePath, nar: Vec<u8>, references: BTreeSet<StorePath>) -> Entry {
    let nar_hash = Hash::sha256(&nar);
    let info = NarInfo {
        store_path,
        url: format!("nar/{}.nar", nar_hash.to_nix32()),
        compression: "none".to_string(),
        file_hash: Some(nar_hash.clone()),
        file_size: Some(nar.len() as u64),
        nar_hash,
        nar_size: nar.len() as u64,
        references,
        deriver: None,
        system: None,
        signatures: Vec::new(),
        ca: None,
    };
    Entry { info, nar }
}

/// Writes a `file://` binary cache by hand: `nix-cache-info`, `nar/…`, `<hash>.narinfo`.
fn write_cache(dir: &Path, entries: &[Entry]) -> String {
    let sd = StoreDir::default();
    fs::create_dir_all(dir.join("nar")).unwrap();
    fs::write(dir.join("nix-cache-info"), "StoreDir: /nix/store\n").unwrap();
    for e in entries {
        fs::write(dir.join(&e.info.url), &e.nar).unwrap();
        let name = format!("{}.narinfo", e.info.store_path.hash_part());
        fs::write(dir.join(name), e.info.to_text(&sd)).unwrap();
    }
    format!("file://{}", dir.display())
}

/// Reads every narinfo of a cache Nix wrote, checking each round-trips byte for byte.
fn read_nix_cache(dir: &Path) -> Vec<(String, NarInfo)> {
    let sd = StoreDir::default();
    assert_eq!(
        fs::read_to_string(dir.join("nix-cache-info")).unwrap(),
        "StoreDir: /nix/store\n"
    );
    let mut out = Vec::new();
    for item in fs::read_dir(dir).unwrap() {
        let path = item.unwrap().path();
        if path.extension().is_some_and(|e| e == "narinfo") {
            let text = fs::read_to_string(&path).unwrap();
            let info =
                NarInfo::parse(&sd, &text).unwrap_or_else(|e| panic!("{path:?}: {e}\n{text}"));
            assert_eq!(info.to_text(&sd), text, "{path:?} does not round-trip");
            let nar = fs::read(dir.join(&info.url)).unwrap();
            assert_eq!(
                Hash::sha256(&nar),
                info.nar_hash,
                "{path:?}: NAR does not match NarHash"
            );
            out.push((text, info));
        }
    }
    out.sort_by(|a, b| a.1.store_path.cmp(&b.1.store_path));
    out
}

/// Our entry for the same store path as `info`.
fn same_path<'a>(entries: &'a [Entry], info: &NarInfo) -> &'a NarInfo {
    let found = entries
        .iter()
        .find(|e| e.info.store_path == info.store_path);
    &found
        .unwrap_or_else(|| panic!("Nix wrote {:?}, which we did not", info.store_path))
        .info
}

#[test]
fn nix_accepts_our_binary_cache_and_we_reproduce_its() {
    if skip_without_nix() {
        return;
    }
    let tmp = scratch();
    let t = tmp.path();
    let nix = Nix {
        xdg_cache: t.join("xdg-cache"),
    };
    let sd = StoreDir::default();

    // The hand-made tree of nix-formats.md §8, and a text file that refers to it.
    let tree = t.join("tree");
    fs::create_dir_all(tree.join("d")).unwrap();
    fs::write(tree.join("d/x"), "handmade\n").unwrap();
    symlink("d/x", tree.join("l")).unwrap();
    fs::write(tree.join("e"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(tree.join("e"), fs::Permissions::from_mode(0o755)).unwrap();
    let tree_nar = nix.dump(&tree);
    let tree_hash = Hash::sha256(&tree_nar);
    let no_refs = BTreeSet::new();
    let tree_path = sd
        .make_fixed_output_path(
            FileIngestionMethod::Recursive,
            &tree_hash,
            "tree",
            &no_refs,
            false,
        )
        .unwrap();
    // Same tree, same path and hash as the doc recorded.
    assert_eq!(
        sd.display(&tree_path),
        "/nix/store/6spg5rc3cg4j6plgx7v5r2zz93x8yz7a-tree"
    );
    assert_eq!(
        tree_hash.to_nix32_prefixed(),
        "sha256:0ckp46626jq21yvmkdxgix9h6kxy3jvz6ssddhj4v8qlqd67pdhq"
    );

    let ref_text = format!("uses {}\n", sd.display(&tree_path));
    fs::write(t.join("ref.txt"), &ref_text).unwrap();
    let ref_nar = nix.dump(&t.join("ref.txt"));
    let ref_refs = BTreeSet::from([tree_path.clone()]);
    let ref_path = sd
        .make_text_path("ref.txt", &Hash::sha256(ref_text.as_bytes()), &ref_refs)
        .unwrap();

    let mut tree_entry = entry(tree_path.clone(), tree_nar, no_refs);
    let mut ref_entry = entry(ref_path.clone(), ref_nar, ref_refs);
    // Any deriver will do: Nix records it and writes it back out.
    ref_entry.info.deriver =
        Some(StorePath::from_base_name("k90zqjs5x29993rk2ik6nhzcy2i8pyrm-ref.txt.drv").unwrap());
    let tree_full = sd.display(&tree_path);
    let ref_full = sd.display(&ref_path);

    // A fresh key, from a fixed seed so that failures reproduce.
    let seed: [u8; 32] = Hash::sha256(b"ksbuild tests/it/nix_narinfo.rs key")
        .digest_bytes()
        .try_into()
        .unwrap();
    let sk = SecretKey::from_seed("ksbuild-it-1", seed).unwrap();
    let pk = sk.to_public();
    let pk_text = pk.to_key_file();
    fs::write(t.join("sk.key"), sk.to_key_file()).unwrap();
    let other_pk = SecretKey::from_seed("ksbuild-it-1", [3; 32])
        .unwrap()
        .to_public()
        .to_key_file();

    // 1. Signed, no CA.
    let mut signed = [tree_entry.clone(), ref_entry.clone()];
    for e in &mut signed {
        e.info.sign(&sd, &sk).unwrap();
        assert!(e.info.verify(&sd, std::slice::from_ref(&pk)));
        assert!(!e.info.is_content_addressed(&sd));
    }
    let signed_url = write_cache(&t.join("signed"), &signed);

    let verify = |store: &str, key: &str| {
        run(nix.cmd("nix").args([
            "store",
            "verify",
            "-r",
            "--store",
            store,
            "--trusted-public-keys",
            key,
            &ref_full,
        ]))
    };
    let ok = verify(&signed_url, &pk_text);
    assert!(
        ok.status.success(),
        "nix store verify failed:\n{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let untrusted = verify(&signed_url, &other_pk);
    assert!(
        !untrusted.status.success(),
        "nix store verify trusted a signature from an unknown key"
    );
    assert!(
        String::from_utf8_lossy(&untrusted.stderr).contains("untrusted"),
        "{untrusted:?}"
    );

    let copy = |from: &str, to: &Path, key: &str, path: &str| {
        run(nix
            .cmd("nix")
            .args(["copy", "--from", from, "--to"])
            .arg(to)
            .args(["--option", "trusted-public-keys", key, path]))
    };
    let root1 = t.join("root1");
    let out = copy(&signed_url, &root1, &pk_text, &ref_full);
    assert!(
        out.status.success(),
        "nix copy from the signed cache failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for e in &signed {
        let full = sd.display(&e.info.store_path);
        let info = nix.path_info(&root1, &full);
        assert_eq!(info["narHash"], e.info.nar_hash.to_sri(), "{info}");
        assert_eq!(info["narSize"], e.info.nar_size, "{info}");
        let refs: Vec<String> = e.info.references.iter().map(|r| sd.display(r)).collect();
        assert_eq!(info["references"], serde_json::json!(refs), "{info}");
        assert_eq!(
            info["signatures"],
            serde_json::json!([e.info.signatures[0].to_string()]),
            "{info}"
        );
    }
    assert_eq!(
        nix.path_info(&root1, &ref_full)["deriver"],
        "/nix/store/k90zqjs5x29993rk2ik6nhzcy2i8pyrm-ref.txt.drv"
    );

    // 2. A signature with one bit flipped is refused; so is no signature at all (which
    //    shows that `require-sigs` is really on for the CA case below).
    let mut tampered = signed[0].clone();
    let sig_text = tampered.info.signatures[0].to_string();
    let flip = sig_text.len() - 10;
    let flipped_char = if &sig_text[flip..=flip] == "A" {
        "B"
    } else {
        "A"
    };
    let bad_sig = format!(
        "{}{}{}",
        &sig_text[..flip],
        flipped_char,
        &sig_text[flip + 1..]
    );
    tampered.info.signatures = vec![ksbuild::compat::signing::Signature::parse(&bad_sig).unwrap()];
    assert!(!tampered.info.verify(&sd, std::slice::from_ref(&pk)));
    let tampered_url = write_cache(&t.join("tampered"), &[tampered]);
    let out = copy(&tampered_url, &t.join("root2"), &pk_text, &tree_full);
    assert!(
        !out.status.success(),
        "nix copy accepted a tampered signature"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lacks a valid signature"),
        "{out:?}"
    );

    let unsigned_url = write_cache(&t.join("unsigned"), &[tree_entry.clone()]);
    let out = copy(&unsigned_url, &t.join("root3"), &pk_text, &tree_full);
    assert!(
        !out.status.success(),
        "nix copy accepted an unsigned, non-CA path"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lacks a valid signature"),
        "{out:?}"
    );

    // 3. Unsigned but content-addressed: Nix trusts it without any key.
    tree_entry.info.ca = Some(ContentAddress::Fixed {
        method: FileIngestionMethod::Recursive,
        hash: tree_hash.clone(),
    });
    ref_entry.info.ca = Some(ContentAddress::Text {
        hash: Hash::sha256(ref_text.as_bytes()),
    });
    ref_entry.info.deriver = None;
    let ca = [tree_entry, ref_entry];
    for e in &ca {
        assert!(e.info.is_content_addressed(&sd), "{}", e.info.to_text(&sd));
        assert!(e.info.signatures.is_empty());
    }
    let ca_url = write_cache(&t.join("ca"), &ca);
    let root4 = t.join("root4");
    let out = copy(&ca_url, &root4, &other_pk, &ref_full);
    assert!(
        out.status.success(),
        "nix copy from the CA cache failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for e in &ca {
        let info = nix.path_info(&root4, &sd.display(&e.info.store_path));
        assert_eq!(info["narHash"], e.info.nar_hash.to_sri(), "{info}");
        assert_eq!(
            info["ca"],
            e.info.ca.as_ref().unwrap().to_string(),
            "{info}"
        );
    }

    // 4. What Nix writes when it uploads (uncompressed, signing with our key file): every
    //    narinfo round-trips, and is exactly what our writer produced for the same path.
    let sk_arg = format!("secret-key={}", t.join("sk.key").display());
    let upload = |from: &Path, dir: &Path| {
        let to = format!("file://{}?compression=none&{sk_arg}", dir.display());
        run_ok(
            nix.cmd("nix")
                .args(["copy", "--from"])
                .arg(from)
                .args(["--to", &to, &ref_full]),
        );
        read_nix_cache(dir)
    };
    let from_signed = upload(&root1, &t.join("out1"));
    assert_eq!(from_signed.len(), 2);
    for (text, info) in &from_signed {
        let ours = same_path(&signed, info);
        assert_eq!(text, &ours.to_text(&sd));
        assert!(info.verify(&sd, std::slice::from_ref(&pk)));
    }
    let from_ca = upload(&root4, &t.join("out2"));
    assert_eq!(from_ca.len(), 2);
    for (text, info) in &from_ca {
        let mut ours = same_path(&ca, info).clone();
        ours.sign(&sd, &sk).unwrap();
        assert_eq!(text, &ours.to_text(&sd));
        assert!(text.contains("\nCA: "), "{text}");
        assert!(info.verify(&sd, std::slice::from_ref(&pk)) && info.is_content_addressed(&sd));
    }
    // Keys parse back from the files Nix would read.
    assert_eq!(PublicKey::parse(&pk_text).unwrap(), pk);
}
