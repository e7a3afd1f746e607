//! Cross-checks of `ksbuild hash` and `ksbuild store` against real Nix 2.8 on generated
//! trees (see `trees`): NAR hashes in every form, flat hashes, `--add` and `--add-fixed`
//! store paths, `path-info --json`, NAR dumps restored by the other tool, the canonical
//! form of store copies, and refusal of special files. Nix runs offline with a private
//! chroot store (`--store <scratch>/nixroot`), never `/nix`. Does I/O and runs processes.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{ksbuild, nix, run, run_ok, skip_without_nix};
use crate::trees::{self, Kind, Scratch, TreeOptions};

/// Runs `ksbuild hash …` and `nix hash …` with the same arguments and compares.
fn same_hash_output(store: &Path, args: &[&str], paths: &[PathBuf]) {
    let ours = run_ok(ksbuild(store).arg("hash").args(args).args(paths));
    let theirs = run_ok(nix("nix").arg("hash").args(args).args(paths));
    assert_eq!(
        ours.lines().count(),
        paths.len(),
        "one line per path for `hash {}`",
        args.join(" ")
    );
    for ((o, t), p) in ours.lines().zip(theirs.lines()).zip(paths) {
        assert_eq!(
            o,
            t,
            "`hash {}` of {} differs from Nix",
            args.join(" "),
            p.display()
        );
    }
    assert_eq!(ours, theirs);
}

/// `nix-store` on the private chroot store at `nix_root`.
fn nix_store(nix_root: &Path) -> Command {
    let mut c = nix("nix-store");
    c.arg("--store").arg(nix_root);
    c
}

/// `producer | consumer`, both must succeed.
fn pipe(producer: &mut Command, consumer: &mut Command) {
    let mut p = producer
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {producer:?}: {e}"));
    let stdout = p.stdout.take().expect("piped stdout");
    let out = consumer
        .stdin(Stdio::from(stdout))
        .output()
        .unwrap_or_else(|e| panic!("run {consumer:?}: {e}"));
    let status = p.wait().expect("wait for producer");
    assert!(status.success(), "{producer:?} failed: {status}");
    assert!(
        out.status.success(),
        "{consumer:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `path-info --json` array keyed by path.
fn json_by_path(text: &str) -> BTreeMap<String, serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("bad JSON {text}: {e}"));
    v.as_array()
        .expect("a JSON array")
        .iter()
        .map(|o| (o["path"].as_str().expect("path").to_string(), o.clone()))
        .collect()
}

/// Where a logical `/nix/store/…` path lives under a physical root.
fn physical(root: &Path, logical: &str) -> PathBuf {
    root.join(logical.trim_start_matches('/'))
}

/// Compares every entry's type, mode and mtime between two store copies.
fn same_store_metadata(ours: &Path, theirs: &Path) {
    let (a, b) = (trees::walk(ours), trees::walk(theirs));
    assert_eq!(
        a.len(),
        b.len(),
        "entry counts of {} and {}",
        ours.display(),
        theirs.display()
    );
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.relative, y.relative);
        assert_eq!(x.kind, y.kind, "`{}`", x.relative.display());
        if !matches!(x.kind, Kind::Symlink(_)) {
            assert_eq!(
                x.meta.mode() & 0o7777,
                y.meta.mode() & 0o7777,
                "mode of `{}` (ours vs Nix)",
                x.relative.display()
            );
        }
        assert_eq!(
            x.meta.mtime(),
            y.meta.mtime(),
            "mtime of `{}` (ours vs Nix)",
            x.relative.display()
        );
    }
}

/// Everything the issue asks of one generated tree.
fn cross_check(seed: u64, options: &TreeOptions) {
    let s = Scratch::new();
    let name = format!("tree-{seed}");
    let src = s.path().join(&name);
    trees::generate(&src, seed, options);
    let ks = s.path().join("ks");
    let nix_root = s.path().join("nixroot");
    let entries = trees::walk(&src);

    // NAR hashes: the whole tree and a sample of subtrees, files and symlinks, in every form.
    let mut hash_paths = vec![src.clone()];
    hash_paths.extend(
        [
            "exec-0744.sh",
            "group-x-0654",
            "ro-exec-0555",
            "empty",
            "empty-dir",
            "rel-link",
            "non-utf8-target",
            "ord",
            "deep",
        ]
        .iter()
        .map(|n| src.join(n)),
    );
    hash_paths.extend(
        entries
            .iter()
            .filter(|e| e.relative.to_str().is_none())
            .take(5)
            .map(|e| e.path.clone()),
    );
    for args in [
        &[][..],
        &["--base32"],
        &["--base16"],
        &["--base64"],
        &["--sri"],
        &["--type", "sha1", "--base32"],
        &["--type", "sha512"],
    ] {
        let mut a = vec!["path"];
        a.extend_from_slice(args);
        same_hash_output(&ks, &a, &hash_paths);
    }

    // Flat hashes of every regular file, names that are not UTF-8 included.
    let files: Vec<PathBuf> = entries
        .iter()
        .filter(|e| matches!(e.kind, Kind::File { .. }))
        .map(|e| e.path.clone())
        .collect();
    assert!(files.len() > 50, "enough files: {}", files.len());
    for args in [
        &["file"][..],
        &["file", "--base32"],
        &["file", "--type", "sha1", "--base16"],
        &["file", "--type", "md5"],
    ] {
        same_hash_output(&ks, args, &files);
    }

    // `store add` and `--add-fixed --recursive` of the tree.
    let mut added = Vec::new();
    let ours = run_ok(ksbuild(&ks).args(["store", "add"]).arg(&src));
    let theirs = run_ok(nix_store(&nix_root).arg("--add").arg(&src));
    assert_eq!(ours, theirs, "`store add` of seed {seed}");
    let tree_path = ours.trim().to_string();
    added.push(tree_path.clone());
    for algo in ["sha1", "sha256", "sha512"] {
        let ours = run_ok(
            ksbuild(&ks)
                .args(["store", "add-fixed", "--recursive", algo])
                .arg(&src),
        );
        let theirs = run_ok(
            nix_store(&nix_root)
                .args(["--add-fixed", "--recursive", algo])
                .arg(&src),
        );
        assert_eq!(
            ours, theirs,
            "`add-fixed --recursive {algo}` of seed {seed}"
        );
        added.push(ours.trim().to_string());
    }
    assert_eq!(
        added[0], added[2],
        "--recursive sha256 is the same path as --add"
    );

    // Flat `--add-fixed` of files whose names are store names (executable ones included).
    let flat: Vec<&PathBuf> = files
        .iter()
        .filter(|p| p.file_name().is_some_and(trees::is_store_name))
        .take(16)
        .collect();
    assert!(flat.len() >= 5, "files to add flat: {flat:?}");
    for algo in ["md5", "sha1", "sha256", "sha512"] {
        let ours = run_ok(ksbuild(&ks).args(["store", "add-fixed", algo]).args(&flat));
        let theirs = run_ok(nix_store(&nix_root).args(["--add-fixed", algo]).args(&flat));
        assert_eq!(ours, theirs, "flat `add-fixed {algo}` of seed {seed}");
        added.extend(ours.lines().map(str::to_string));
    }
    // And the same files through `store add` (recursive: a one-file NAR).
    let ours = run_ok(ksbuild(&ks).args(["store", "add"]).args(&flat));
    let theirs = run_ok(nix_store(&nix_root).arg("--add").args(&flat));
    assert_eq!(ours, theirs, "`store add` of single files");
    added.extend(ours.lines().map(str::to_string));
    added.sort();
    added.dedup();

    // path-info: NAR hash and size, content address, no references.
    let ours = json_by_path(&run_ok(
        ksbuild(&ks)
            .args(["store", "path-info", "--json"])
            .args(&added),
    ));
    let theirs = json_by_path(&run_ok(
        nix("nix")
            .args(["path-info", "--json", "--store"])
            .arg(&nix_root)
            .args(&added),
    ));
    assert_eq!(ours.len(), added.len());
    for p in &added {
        let (o, t) = (&ours[p], &theirs[p]);
        for field in ["narHash", "narSize", "ca", "references"] {
            assert_eq!(o[field], t[field], "`{field}` of {p} (ours vs Nix)");
        }
    }

    // The store copies are canonical, identical to Nix's down to modes and mtimes, and
    // hold the tree.
    let ks_copy = physical(&ks, &tree_path);
    let nix_copy = physical(&nix_root, &tree_path);
    trees::assert_canonical(&ks_copy);
    trees::compare_trees(&src, &ks_copy)
        .unwrap_or_else(|e| panic!("store copy of seed {seed}: {e}"));
    same_store_metadata(&ks_copy, &nix_copy);
    for p in &added {
        trees::assert_canonical(&physical(&ks, p));
        same_store_metadata(&physical(&ks, p), &physical(&nix_root, p));
    }
    let ours = run_ok(ksbuild(&ks).args(["store", "verify", "--check-contents"]));
    assert_eq!(ours, "", "no damage");

    // NARs: byte-identical dumps, and each tool restores the other's NAR to the same tree.
    let our_nar = ksbuild(&ks)
        .args(["store", "dump"])
        .arg(&tree_path)
        .output()
        .expect("run ksbuild store dump");
    assert!(
        our_nar.status.success(),
        "store dump: {}",
        String::from_utf8_lossy(&our_nar.stderr)
    );
    let their_nar = nix("nix-store")
        .arg("--dump")
        .arg(&src)
        .output()
        .expect("run nix-store --dump");
    assert!(their_nar.status.success());
    assert!(
        our_nar.stdout == their_nar.stdout,
        "NAR of seed {seed} differs from `nix-store --dump`"
    );
    drop((our_nar, their_nar));

    // A path beneath a store path.
    let sub = ksbuild(&ks)
        .args(["store", "dump"])
        .arg(format!("{tree_path}/ord"))
        .output()
        .expect("run store dump");
    assert!(
        sub.status.success(),
        "store dump of a subpath: {}",
        String::from_utf8_lossy(&sub.stderr)
    );
    assert!(
        sub.stdout
            == nix("nix-store")
                .arg("--dump")
                .arg(src.join("ord"))
                .output()
                .expect("nix-store --dump")
                .stdout
    );

    let by_nix = s.path().join("restored-by-nix");
    pipe(
        ksbuild(&ks).args(["store", "dump"]).arg(&tree_path),
        nix("nix-store").arg("--restore").arg(&by_nix),
    );
    trees::compare_trees(&src, &by_nix)
        .unwrap_or_else(|e| panic!("ksbuild dump | nix-store --restore, seed {seed}: {e}"));
    let by_us = s.path().join("restored-by-ksbuild");
    pipe(
        nix("nix-store").arg("--dump").arg(&src),
        ksbuild(&ks).args(["store", "restore"]).arg(&by_us),
    );
    trees::compare_trees(&src, &by_us)
        .unwrap_or_else(|e| panic!("nix-store --dump | ksbuild store restore, seed {seed}: {e}"));
    same_hash_output(
        &ks,
        &["path", "--base32"],
        &[src.clone(), by_nix, by_us, ks_copy],
    );
}

#[test]
fn generated_tree_seed_1_matches_nix() {
    if skip_without_nix() {
        return;
    }
    cross_check(1, &TreeOptions::default());
}

#[test]
fn generated_tree_seed_2_matches_nix() {
    if skip_without_nix() {
        return;
    }
    cross_check(
        2,
        &TreeOptions {
            random_entries: 300,
            max_file_size: 256 * 1024,
            ..TreeOptions::default()
        },
    );
}

/// One tree with a file of 30 MB (random data with runs of zeros that the store copy
/// writes as holes).
#[test]
fn generated_tree_with_large_file_matches_nix() {
    if skip_without_nix() {
        return;
    }
    cross_check(
        3,
        &TreeOptions {
            random_entries: 60,
            big_file: Some(30 * 1024 * 1024 + 12345),
            ..TreeOptions::default()
        },
    );
}

/// A single file, a symlink and an empty directory as the root of a store path.
#[test]
fn non_directory_roots_match_nix() {
    if skip_without_nix() {
        return;
    }
    let s = Scratch::new();
    let ks = s.path().join("ks");
    let nix_root = s.path().join("nixroot");
    let dir = s.path().join("roots");
    std::fs::create_dir(&dir).expect("mkdir");
    trees::edge_cases(&dir);
    let roots: Vec<PathBuf> = [
        "exec-0744.sh",
        "group-x-0654",
        "other-x-0645",
        "ro-exec-0555",
        "empty",
        "empty-exec",
        "empty-dir",
        "rel-link",
        "abs-link",
        "dangling",
        "self-loop",
        "zeros-one-chunk",
        "setuid-4755",
        "sticky-dir-1777",
        "hard-link-to-exec",
    ]
    .iter()
    .map(|n| dir.join(n))
    .collect();
    same_hash_output(&ks, &["path", "--base32"], &roots);
    let ours = run_ok(ksbuild(&ks).args(["store", "add"]).args(&roots));
    let theirs = run_ok(nix_store(&nix_root).arg("--add").args(&roots));
    assert_eq!(ours, theirs);
    for p in ours.lines() {
        let (a, b) = (physical(&ks, p), physical(&nix_root, p));
        trees::assert_canonical(&a);
        trees::compare_trees(&b, &a).unwrap_or_else(|e| panic!("{p}: {e}"));
        same_store_metadata(&a, &b);
    }
}

/// A FIFO or a socket anywhere in a tree is refused, naming it; nothing becomes valid and
/// nothing is left behind.
#[test]
fn special_files_are_refused() {
    let s = Scratch::new();
    let ks = s.path().join("ks");
    for (kind, special) in [("FIFO", "the-fifo"), ("socket", "the-socket")] {
        let src = s.path().join(format!("tree-with-{special}"));
        trees::generate(
            &src,
            9,
            &TreeOptions {
                random_entries: 20,
                depth: 20,
                ..TreeOptions::default()
            },
        );
        // Deep enough that the path is longer than a terminal line: the error must still
        // name it in one piece.
        let mut at = src.join("deep");
        (1..=20).for_each(|level| at.push(format!("d{level:02}")));
        at.push(special);
        let _listener;
        if kind == "FIFO" {
            nix::unistd::mkfifo(&at, nix::sys::stat::Mode::from_bits_truncate(0o644))
                .expect("mkfifo");
        } else {
            // A socket path must fit in `sun_path` (108 bytes): bind short, then move it.
            let short = s.path().join("sock");
            _listener = std::os::unix::net::UnixListener::bind(&short).expect("bind a unix socket");
            std::fs::rename(&short, &at).expect("move the socket into the tree");
        }
        for args in [
            &["store", "add"][..],
            &["store", "add-fixed", "--recursive", "sha256"],
            &["hash", "path"],
        ] {
            let out = run(ksbuild(&ks).args(args).arg(&src));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success(),
                "`{}` accepted a tree with a {kind}",
                args.join(" ")
            );
            assert!(
                out.stdout.is_empty(),
                "no path printed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
            assert!(
                stderr.contains(&at.display().to_string()),
                "`{}`: the error names the {kind} `{}`:\n{stderr}",
                args.join(" "),
                at.display()
            );
            assert!(
                stderr.contains(kind),
                "the error says it is a {kind}:\n{stderr}"
            );
        }
        if kind == "FIFO" && !skip_without_nix() {
            // Nix refuses it too.
            let out = run(nix_store(&s.path().join("nixroot")).arg("--add").arg(&src));
            assert!(!out.status.success(), "nix-store --add refuses a FIFO");
        }
    }
    // Nothing valid, nothing staged, nothing in the store directory.
    let listing = |sub: &str| -> Vec<OsString> {
        std::fs::read_dir(ks.join(sub))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect()
    };
    assert_eq!(listing("nix/var/ksbuild/db"), Vec::<OsString>::new());
    assert_eq!(listing("nix/var/ksbuild/tmp"), Vec::<OsString>::new());
    assert_eq!(listing("nix/store"), Vec::<OsString>::new());
    let out = run_ok(ksbuild(&ks).args(["store", "verify", "--check-contents"]));
    assert_eq!(out, "");
}

/// A store root shared with Nix (the same `nix/store` layout, each tool with its own
/// database): ksbuild's gc removes only what ksbuild registered; Nix's path and `.links`
/// stay, Nix still finds its path valid, and `store verify` lists them as foreign.
#[test]
fn gc_leaves_what_nix_added_to_a_shared_root() {
    if skip_without_nix() {
        return;
    }
    let tmp = crate::common::scratch();
    let root = tmp.path().join("shared");
    let (ours, theirs) = (tmp.path().join("ours"), tmp.path().join("theirs"));
    std::fs::write(&ours, "ksbuild's\n").unwrap();
    std::fs::write(&theirs, "Nix's\n").unwrap();
    let ours_path = run_ok(ksbuild(&root).args(["store", "add"]).arg(&ours));
    let theirs_path = run_ok(nix_store(&root).arg("--add").arg(&theirs));
    run_ok(nix_store(&root).arg("--optimise"));
    let store = root.join("nix/store");
    assert!(store.join(".links").is_dir(), "Nix made its .links");
    let verify = run_ok(ksbuild(&root).args(["store", "verify", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&verify).unwrap();
    let foreign: Vec<&str> = v["foreign"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    let theirs_physical = physical(&root, theirs_path.trim());
    assert_eq!(
        foreign,
        [
            store.join(".links").display().to_string(),
            theirs_physical.display().to_string()
        ],
        "{verify}"
    );
    let dry = run_ok(ksbuild(&root).args(["store", "gc", "--dry-run", "--json"]));
    let gc = run_ok(ksbuild(&root).args(["store", "gc", "--json"]));
    for report in [&dry, &gc] {
        let v: serde_json::Value = serde_json::from_str(report).unwrap();
        assert_eq!(v["deleted"].as_array().unwrap().len(), 1, "{report}");
        assert_eq!(
            v["deleted"][0].as_str().unwrap(),
            ours_path.trim(),
            "{report}"
        );
    }
    assert!(!physical(&root, ours_path.trim()).exists());
    assert!(theirs_physical.exists(), "gc deleted Nix's path");
    assert!(store.join(".links").is_dir(), "gc deleted Nix's .links");
    run_ok(
        nix_store(&root)
            .arg("--verify-path")
            .arg(theirs_path.trim()),
    );
}

/// `store restore` takes exactly one NAR: bytes after it are refused (Nix 2.8 ignores
/// them), and a refused restore, like a truncated one, leaves nothing at the target.
#[test]
fn restore_refuses_trailing_bytes_and_leaves_nothing_behind() {
    let s = Scratch::new();
    let ks = s.path().join("ks");
    let src = s.path().join("tree");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("sub/file"), "contents\n").unwrap();
    std::fs::write(src.join("top"), "top\n").unwrap();
    let nar = run(ksbuild(&ks).args(["store", "dump"]).arg(&src));
    assert!(nar.status.success());
    let nar = nar.stdout;
    let restore = |name: &str, bytes: &[u8]| {
        let target = s.path().join(name);
        let mut child = ksbuild(&ks)
            .args(["store", "restore"])
            .arg(&target)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        (out, target)
    };
    let (out, target) = restore("whole", &nar);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_to_string(target.join("sub/file")).unwrap(),
        "contents\n"
    );
    let mut trailing = nar.clone();
    trailing.extend_from_slice(b"trailing garbage");
    for (name, bytes, says) in [
        ("trailing", &trailing[..], "more data after its end"),
        ("truncated", &nar[..nar.len() - 16], "truncated"),
    ] {
        let (out, target) = restore(name, bytes);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: accepted");
        assert!(err.contains(says), "{name}: {err}");
        assert!(
            std::fs::symlink_metadata(&target).is_err(),
            "{name}: a partial tree was left at `{}`",
            target.display()
        );
    }
}
