//! `derivations/*.toml` lowered by ksbuild give the same `.drv` paths and JSON as the same
//! derivations written in Nix and instantiated by real Nix 2.8; bad input gets errors that
//! point into the TOML.

use std::fs;
use std::path::Path;

use crate::common::{ksbuild, nix, run, run_ok, scratch, skip_without_nix};

/// Writes a small project: sources, fetches (flat, recursive, inline, unpacked), multiple
/// outputs (with required system features) and a dependency on a non-default output.
fn write_project(dir: &Path) {
    fs::create_dir_all(dir.join("derivations/sub")).unwrap();
    fs::create_dir_all(dir.join("fragments/conf")).unwrap();
    fs::write(
        dir.join("fragments/script.sh"),
        "#!/bin/sh\necho \"script ran with $1\"\n",
    )
    .unwrap();
    run_ok(
        std::process::Command::new("chmod")
            .arg("755")
            .arg(dir.join("fragments/script.sh")),
    );
    fs::write(dir.join("fragments/conf/a.fragment"), "CONFIG_A=y\n").unwrap();
    let files = [
        ("_project.toml", "system = \"x86_64-linux\"\n[env]\nSOURCE_DATE_EPOCH = \"1700000000\"\n"),
        (
            "simple.toml",
            "builder = \"/bin/sh\"\nargs = [\"-c\", \"echo hi > $out\"]\nenv = { FOO = \"bar\", QUOTE = \"has \\\"quotes\\\" and \\\\ backslash\\nand newline\\ttab é\" }\n",
        ),
        (
            "hello-src.toml",
            "[fetch]\nurl = \"mirror://debian/pool/main/h/hello/hello_2.10.orig.tar.gz\"\nhash = \"sha256-MeBmE3qWJnbon2nRtlOC3pWn732RS4y5VvQepy4PUWs=\"\n",
        ),
        (
            "sub/multi.toml",
            "builder = \"/bin/sh\"\noutputs = [\"out\", \"dev\"]\nrequired-system-features = [\"big-parallel\", \"kvm\"]\nargs = [\"-c\", \"echo out > $out; echo dev > $dev; cat ${conf}/a.fragment\"]\n[inputs]\nconf = { path = \"fragments/conf\" }\n",
        ),
        (
            "dependent.toml",
            concat!(
                "builder = \"/bin/sh\"\n",
                "args = [\"-c\", \"cat ${simple} ${src} ${dev} > $out; sh $script x; literal $${HOME}\"]\n",
                "env = { script = \"${script}\", DEB = \"${deb}\" }\n",
                "[inputs]\n",
                "simple = \"simple\"\n",
                "src = \"hello-src\"\n",
                "dev = { drv = \"multi\", output = \"dev\" }\n",
                "script = { path = \"fragments/script.sh\" }\n",
                "deb = { url = \"https://example.org/pool/b/busybox-static_1.35.0-4_amd64.deb\", hash = \"0h2cvvd5bkprq91zyak0149xwqr6p5hc0vw1xrshlzfg6z8dlk29\", unpack = \"deb\" }\n",
            ),
        ),
    ];
    for (name, text) in files {
        fs::write(dir.join("derivations").join(name), text).unwrap();
    }
    // The same derivations, written in Nix.
    fs::write(
        dir.join("default.nix"),
        r#"rec {
  simple = derivation { name = "simple"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "echo hi > $out"]; FOO = "bar"; QUOTE = "has \"quotes\" and \\ backslash\nand newline\ttab é"; SOURCE_DATE_EPOCH = "1700000000"; };
  src = derivation { name = "hello-src"; system = "builtin"; builder = "builtin:fetchurl"; url = "mirror://debian/pool/main/h/hello/hello_2.10.orig.tar.gz"; outputHash = "sha256-MeBmE3qWJnbon2nRtlOC3pWn732RS4y5VvQepy4PUWs="; outputHashAlgo = "sha256"; outputHashMode = "flat"; };
  multi = derivation { name = "multi"; system = "x86_64-linux"; builder = "/bin/sh"; outputs = ["out" "dev"]; requiredSystemFeatures = ["big-parallel" "kvm"]; args = ["-c" "echo out > $out; echo dev > $dev; cat ${./fragments/conf}/a.fragment"]; SOURCE_DATE_EPOCH = "1700000000"; };
  deb = derivation { name = "busybox-static_1.35.0-4_amd64"; system = "builtin"; builder = "builtin:fetchurl"; url = "https://example.org/pool/b/busybox-static_1.35.0-4_amd64.deb"; outputHash = "0h2cvvd5bkprq91zyak0149xwqr6p5hc0vw1xrshlzfg6z8dlk29"; outputHashAlgo = "sha256"; outputHashMode = "recursive"; ksbuildUnpack = "deb"; };
  dependent = derivation { name = "dependent"; system = "x86_64-linux"; builder = "/bin/sh"; args = ["-c" "cat ${simple} ${src} ${multi.dev} > $out; sh $script x; literal \${HOME}"]; script = ./fragments/script.sh; DEB = "${deb}"; SOURCE_DATE_EPOCH = "1700000000"; };
}
"#,
    )
    .unwrap();
}

#[test]
fn toml_and_nix_give_the_same_derivations() {
    if skip_without_nix() {
        return;
    }
    let tmp = scratch();
    let proj = tmp.path().join("proj");
    write_project(&proj);
    let store = tmp.path().join("ks");
    let targets = ["simple", "hello-src", "multi", "dependent"];
    let ours = run_ok(
        ksbuild(&store)
            .arg("--project")
            .arg(&proj)
            .arg("instantiate")
            .args(targets),
    );
    let nix_root = tmp.path().join("nixroot");
    let theirs = run_ok(
        nix("nix-instantiate")
            .arg("--store")
            .arg(&nix_root)
            .arg(proj.join("default.nix"))
            .args([
                "-A",
                "simple",
                "-A",
                "src",
                "-A",
                "multi",
                "-A",
                "dependent",
            ]),
    );
    let theirs: Vec<&str> = theirs
        .lines()
        .map(|l| l.split('!').next().unwrap())
        .collect();
    assert_eq!(ours.lines().collect::<Vec<_>>(), theirs);
    // The .drv files are byte-identical, and show-derivation agrees with Nix's.
    for drv in &theirs {
        let rel = drv.trim_start_matches('/');
        assert_eq!(
            fs::read(store.join(rel)).unwrap(),
            fs::read(nix_root.join(rel)).unwrap(),
            "{drv}"
        );
    }
    let ours: serde_json::Value =
        serde_json::from_str(&run_ok(ksbuild(&store).arg("--project").arg(&proj).args([
            "show-derivation",
            "--recursive",
            "dependent",
        ])))
        .unwrap();
    let theirs: serde_json::Value = serde_json::from_str(&run_ok(
        nix("nix")
            .args(["show-derivation", "--recursive", "--store"])
            .arg(&nix_root)
            .arg(theirs[3]),
    ))
    .unwrap();
    assert_eq!(ours, theirs);
}

#[test]
fn editing_a_fragment_changes_exactly_what_depends_on_it() {
    let tmp = scratch();
    let proj = tmp.path().join("proj");
    write_project(&proj);
    let store = tmp.path().join("ks");
    let targets = ["simple", "hello-src", "multi", "dependent"];
    let instantiate = || -> Vec<String> { crate::common::drv_paths(&store, &proj, &targets) };
    let before = instantiate();
    fs::write(proj.join("fragments/conf/a.fragment"), "CONFIG_A=m\n").unwrap();
    let after = instantiate();
    let changed: Vec<&str> = targets
        .iter()
        .zip(before.iter().zip(&after))
        .filter(|(_, (b, a))| b != a)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(changed, ["multi", "dependent"]);
}

/// The evaluation cache answers an instantiation that changes nothing; after any change
/// to what lowering reads — a derivation file, a new file beside them, an environment, a
/// path input's contents, where a symlink on a path input's way leads — or with a damaged
/// entry, the answer is exactly what a store without a cache gives, and then cached again.
#[test]
fn the_evaluation_cache_answers_only_while_nothing_it_read_changed() {
    let tmp = scratch();
    let proj = tmp.path().join("proj");
    write_project(&proj);
    let store = tmp.path().join("ks");
    let targets = ["simple", "hello-src", "multi", "dependent"];
    // The `.drv` paths, and whether the cache answered.
    let cached = || -> (Vec<String>, bool) {
        let out = run(ksbuild(&store)
            .env(ksbuild::timing::ENV, "1")
            .arg("--project")
            .arg(&proj)
            .arg("instantiate")
            .args(targets));
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        let paths = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        (paths, stderr.contains("read the evaluation cache"))
    };
    let fresh = std::cell::Cell::new(0);
    let uncached = || {
        fresh.set(fresh.get() + 1);
        crate::common::drv_paths(
            &tmp.path().join(format!("fresh-{}", fresh.get())),
            &proj,
            &targets,
        )
    };
    // An entry written within a second of a change does not answer for it (a second write
    // in the same clock tick could hide): each step waits that second out.
    let settle = || std::thread::sleep(std::time::Duration::from_millis(1100));
    settle();
    let (first, hit) = cached();
    assert!(!hit, "an empty store has no cache");
    assert_eq!(first, uncached());
    assert_eq!(cached(), (first.clone(), true));

    let conf = proj.join("fragments/conf");
    // What changes, and the change.
    type Change<'a> = (&'static str, Box<dyn Fn() + 'a>);
    let changes: Vec<Change> = vec![
        (
            "a derivation file",
            Box::new(|| {
                fs::write(
                    proj.join("derivations/simple.toml"),
                    "builder = \"/bin/sh\"\nargs = [\"-c\", \"echo changed > $out\"]\n",
                )
                .unwrap()
            }),
        ),
        (
            "a new derivation file",
            Box::new(|| {
                fs::write(
                    proj.join("derivations/sub/extra.toml"),
                    "builder = \"/bin/sh\"\n",
                )
                .unwrap()
            }),
        ),
        (
            "a new environment",
            Box::new(|| {
                fs::create_dir_all(proj.join("sandboxes")).unwrap();
                fs::write(
                    proj.join("sandboxes/empty.toml"),
                    "suites = [\"bookworm\"]\n",
                )
                .unwrap()
            }),
        ),
        // Environments are read through symlinks: what a link leads to counts.
        // The same size, other bytes: only the file's times tell.
        (
            "a derivation file rewritten at the same size",
            Box::new(|| {
                let file = proj.join("derivations/simple.toml");
                let text = fs::read_to_string(&file).unwrap();
                assert!(text.contains("changed"));
                fs::write(&file, text.replace("changed", "CHANGED")).unwrap()
            }),
        ),
        (
            "an environment moved behind a symlink",
            Box::new(|| {
                fs::create_dir_all(proj.join("envs")).unwrap();
                fs::rename(
                    proj.join("sandboxes/empty.toml"),
                    proj.join("envs/empty.toml"),
                )
                .unwrap();
                std::os::unix::fs::symlink("../envs/empty.toml", proj.join("sandboxes/empty.toml"))
                    .unwrap();
            }),
        ),
        (
            "the file a symlinked environment leads to",
            Box::new(|| {
                fs::write(proj.join("envs/empty.toml"), "suites = [\"trixie\"]\n").unwrap()
            }),
        ),
        (
            "a path input's file",
            Box::new(|| fs::write(conf.join("a.fragment"), "CONFIG_A=m\n").unwrap()),
        ),
        (
            "a new file in a path input",
            Box::new(|| fs::write(conf.join("b.fragment"), "CONFIG_B=y\n").unwrap()),
        ),
        (
            "a path input becoming a symlink to a copy",
            Box::new(|| {
                fs::rename(&conf, proj.join("fragments/conf-1")).unwrap();
                fs::create_dir(proj.join("fragments/conf-2")).unwrap();
                fs::write(proj.join("fragments/conf-2/a.fragment"), "CONFIG_A=y\n").unwrap();
                std::os::unix::fs::symlink("conf-2", &conf).unwrap();
            }),
        ),
        // conf-1 holds what conf-2 held before the symlink: only where it leads changed.
        (
            "where the symlink leads",
            Box::new(|| {
                fs::write(proj.join("fragments/conf-2/a.fragment"), "CONFIG_A=n\n").unwrap();
                let _ = cached();
                fs::remove_file(&conf).unwrap();
                std::os::unix::fs::symlink("conf-1", &conf).unwrap();
            }),
        ),
        (
            "a damaged entry",
            Box::new(|| {
                for e in fs::read_dir(store.join("nix/var/ksbuild/eval")).unwrap() {
                    fs::write(e.unwrap().path(), "{ not json").unwrap();
                }
            }),
        ),
    ];
    let mut previous = first;
    for (what, change) in changes {
        change();
        settle();
        let (got, hit) = cached();
        assert!(!hit, "{what}: the cache answered");
        assert_eq!(got, uncached(), "{what}");
        let same = [
            "a new derivation file",
            "a new environment",
            "an environment moved behind a symlink",
            "the file a symlinked environment leads to",
            "a damaged entry",
        ];
        if !same.contains(&what) {
            assert_ne!(got, previous, "{what}: nothing changed");
        }
        assert_eq!(cached(), (got.clone(), true), "{what}: not cached again");
        previous = got;
    }
}

/// Runs `instantiate` on a project with one extra file and returns stderr.
fn error_for(file: &str, text: &str, target: &str) -> String {
    let tmp = scratch();
    let proj = tmp.path().join("proj");
    write_project(&proj);
    fs::write(proj.join("derivations").join(file), text).unwrap();
    let out = run(ksbuild(&tmp.path().join("ks"))
        .arg("--project")
        .arg(&proj)
        .args(["instantiate", target]));
    assert!(!out.status.success(), "{target} must fail");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn bad_input_points_into_the_toml() {
    let e = error_for("bad.toml", "builder = \"/bin/sh\"\nbogus = 1\n", "bad");
    assert!(
        e.contains("unknown field `bogus`") && e.contains("bad.toml:2:1"),
        "{e}"
    );

    let e = error_for(
        "bad.toml",
        "builder = \"/bin/sh\"\nargs = [\"${simpel}\"]\n[inputs]\nsimple = \"simple\"\n",
        "bad",
    );
    assert!(
        e.contains("unknown input `simpel`")
            && e.contains("did you mean `simple`?")
            && e.contains("bad.toml:2:"),
        "{e}"
    );

    let e = error_for(
        "bad.toml",
        "builder = \"/bin/sh\"\n[inputs]\nx = \"dependnt\"\n",
        "bad",
    );
    assert!(
        e.contains("unknown derivation `dependnt`") && e.contains("did you mean `dependent`?"),
        "{e}"
    );

    let tmp = scratch();
    let proj = tmp.path().join("proj");
    write_project(&proj);
    fs::write(
        proj.join("derivations/a.toml"),
        "builder = \"/bin/sh\"\n[inputs]\nb = \"b\"\n",
    )
    .unwrap();
    fs::write(
        proj.join("derivations/b.toml"),
        "builder = \"/bin/sh\"\n[inputs]\nc = \"c\"\n",
    )
    .unwrap();
    fs::write(
        proj.join("derivations/c.toml"),
        "builder = \"/bin/sh\"\n[inputs]\na = \"a\"\n",
    )
    .unwrap();
    let out = run(ksbuild(&tmp.path().join("ks"))
        .arg("--project")
        .arg(&proj)
        .args(["instantiate", "a"]));
    let e = String::from_utf8(out.stderr).unwrap();
    assert!(e.contains("dependency cycle: a -> b -> c -> a"), "{e}");

    let e = error_for(
        "bad.toml",
        "[fetch]\nurl = \"https://example.org/x.tar\"\nhash = \"sha256-abc\"\n",
        "bad",
    );
    assert!(
        e.contains("malformed hash") && e.contains("bad.toml:3:"),
        "{e}"
    );

    let e = error_for(
        "bad.toml",
        "builder = \"/bin/sh\"\n[inputs]\ns = { path = \"fragments/missing.sh\" }\n",
        "bad",
    );
    assert!(
        e.contains("`fragments/missing.sh` does not exist") && e.contains("bad.toml:3:"),
        "{e}"
    );

    let e = error_for("bad.toml", "[fetch]\nurl = \"ftp://example.org/x\"\nhash = \"sha256-MeBmE3qWJnbon2nRtlOC3pWn732RS4y5VvQepy4PUWs=\"\n", "bad");
    assert!(e.contains("unsupported URL `ftp://example.org/x`"), "{e}");

    let e = error_for("bad.toml", "builder = \"/bin/sh\"\n", "nonexistent");
    assert!(e.contains("unknown target `nonexistent`"), "{e}");
}

/// Runs `instantiate bad` on the project at `proj` with `derivations/bad.toml` = `text`,
/// into a fresh store; returns stderr and the store entries left behind.
fn instantiate_bad(proj: &Path, text: &str) -> (bool, String, Vec<String>) {
    fs::write(proj.join("derivations/bad.toml"), text).unwrap();
    let store = proj.parent().unwrap().join(format!(
        "ks-{}",
        fs::read_dir(proj.parent().unwrap()).unwrap().count()
    ));
    let out = run(ksbuild(&store)
        .arg("--project")
        .arg(proj)
        .args(["instantiate", "bad"]));
    let left = fs::read_dir(store.join("nix/store"))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    (
        out.status.success(),
        String::from_utf8(out.stderr).unwrap(),
        left,
    )
}

/// A path input is a file of the project: absolute paths, `..` and symlinks that lead out
/// are refused with the file and line (a root-only 0600 file once became a 0444 store
/// path); the project root itself (with `store/`, `.git`, `target/`) and a tree holding the
/// store root are refused (the store was once copied into itself until ENAMETOOLONG); a
/// symlink to a folder of the project imports the folder; symlinks inside a tree stay
/// symlinks. A failed evaluation leaves nothing in the store.
#[test]
fn path_inputs_stay_inside_the_project() {
    let tmp = scratch();
    let proj = tmp.path().join("proj");
    write_project(&proj);
    fs::write(tmp.path().join("secret"), "outside\n").unwrap();
    std::os::unix::fs::symlink("../../secret", proj.join("fragments/escape")).unwrap();
    std::os::unix::fs::symlink("/etc", proj.join("fragments/etc")).unwrap();
    std::os::unix::fs::symlink("conf", proj.join("fragments/conf-link")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", proj.join("fragments/conf/passwd-link")).unwrap();
    fs::create_dir_all(proj.join(".git")).unwrap();
    fs::create_dir_all(proj.join("store")).unwrap();
    let bad = |path: &str| {
        format!(
            "builder = \"/bin/sh\"\nargs = [\"${{x}}\"]\n[inputs]\nx = {{ path = \"{path}\" }}\n"
        )
    };
    for (path, why) in [
        ("/etc/passwd", "is an absolute path"),
        ("fragments/../../secret", "outside the project"),
        ("fragments/escape", "outside the project"),
        ("fragments/etc", "outside the project"),
        (".", "which ksbuild never imports"),
        ("", "which ksbuild never imports"),
        ("fragments/..", "which ksbuild never imports"),
    ] {
        let (ok, e, left) = instantiate_bad(&proj, &bad(path));
        assert!(!ok, "`{path}` was accepted");
        assert!(
            e.contains(why) && e.contains("bad.toml:4:") && e.contains("help:"),
            "`{path}`: {e}"
        );
        assert!(
            left.is_empty(),
            "`{path}`: a failed evaluation left {left:?}"
        );
    }
    // A tree holding the store root, which is not the project's `store/`.
    fs::create_dir_all(proj.join("fragments/cache")).unwrap();
    let nested = proj.join("fragments/cache/st");
    fs::write(proj.join("derivations/bad.toml"), bad("fragments/cache")).unwrap();
    let out = run(ksbuild(&nested)
        .arg("--project")
        .arg(&proj)
        .args(["instantiate", "bad"]));
    let e = String::from_utf8(out.stderr).unwrap();
    assert!(
        !out.status.success() && e.contains("holds the store root") && e.contains("bad.toml:4:"),
        "{e}"
    );

    // An evaluation that fails after a path input (an unknown `${…}`) imports nothing.
    let (ok, e, left) = instantiate_bad(
        &proj,
        "builder = \"/bin/sh\"\nargs = [\"${x}\", \"${nope}\"]\n[inputs]\nx = { path = \"fragments/conf\" }\n",
    );
    assert!(!ok && e.contains("unknown input `nope`"), "{e}");
    assert!(left.is_empty(), "a failed evaluation left {left:?}");

    // A symlink to a folder of the project imports the folder, named as written; the
    // symlink inside it is kept, not followed.
    let ks = tmp.path().join("good");
    fs::write(
        proj.join("derivations/bad.toml"),
        bad("fragments/conf-link"),
    )
    .unwrap();
    let drv = run_ok(
        ksbuild(&ks)
            .arg("--project")
            .arg(&proj)
            .args(["instantiate", "bad"]),
    );
    let shown = run_ok(
        ksbuild(&ks)
            .arg("--project")
            .arg(&proj)
            .args(["show-derivation", "bad"]),
    );
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let src = v[drv.trim()]["inputSrcs"][0].as_str().unwrap().to_string();
    assert!(src.ends_with("-conf-link"), "{src}");
    let physical = ks.join(src.trim_start_matches('/'));
    assert_eq!(
        fs::read_to_string(physical.join("a.fragment")).unwrap(),
        "CONFIG_A=y\n"
    );
    let link = physical.join("passwd-link");
    assert!(fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("/etc/passwd"));
}

#[test]
fn a_cycle_names_the_inputs_lines_that_make_it() {
    let tmp = scratch();
    let proj = tmp.path().join("proj");
    write_project(&proj);
    for (name, text) in [
        ("a.toml", "builder = \"/bin/sh\"\n\n[inputs]\nb = \"b\"\n"),
        (
            "b.toml",
            "builder = \"/bin/sh\"\n[inputs]\nz = \"simple\"\nc = \"c@v\"\n",
        ),
        // Through a variant's own inputs.
        (
            "c.toml",
            "builder = \"/bin/sh\"\n[variants.v.inputs]\na = \"a\"\n",
        ),
    ] {
        fs::write(proj.join("derivations").join(name), text).unwrap();
    }
    let out = run(ksbuild(&tmp.path().join("ks"))
        .arg("--project")
        .arg(&proj)
        .args(["instantiate", "a"]));
    let e = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success(), "{e}");
    for want in [
        "dependency cycle: a -> b -> c@v -> a",
        "derivations/a.toml:4: b = \"b\"",
        "derivations/b.toml:4: c = \"c@v\"",
        "derivations/c.toml:3: a = \"a\"",
    ] {
        assert!(e.contains(want), "{want:?} missing from:\n{e}");
    }
}

#[test]
fn an_error_on_a_huge_line_shows_a_window_of_it() {
    let tmp = scratch();
    let proj = tmp.path().join("proj");
    write_project(&proj);
    // 10 MB on one line, and a syntax error near its end.
    let text = format!(
        "builder = \"/bin/sh\"\nenv = {{ A = \"{}\" B = 1 }}\n",
        "x".repeat(10_000_000)
    );
    fs::write(proj.join("derivations/huge.toml"), text).unwrap();
    let out = run(ksbuild(&tmp.path().join("ks"))
        .arg("--project")
        .arg(&proj)
        .args(["instantiate", "huge"]));
    let e = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", &e[..e.len().min(2000)]);
    assert!(
        out.stderr.len() < 4096,
        "{} bytes of stderr",
        out.stderr.len()
    );
    // The place is the file's (line 2, the column of `B`); the window shows it.
    assert!(e.contains("huge.toml:2:10000016"), "{e}");
    assert!(e.contains("…xxxx") && e.contains("\" B = 1 }"), "{e}");
}

/// A path input that is a tree of more directories than ksbuild may have files open
/// (here 400 under a limit of 64) is imported, and recognised again by the evaluation
/// cache: the walk that recognises it keeps one directory open at a time.
#[test]
fn a_tree_of_more_directories_than_open_files_allowed_is_imported_and_recognised() {
    let tmp = scratch();
    let proj = tmp.path().join("proj");
    fs::create_dir_all(proj.join("derivations")).unwrap();
    for d in 0..400 {
        let dir = proj.join(format!("tree/d{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("f"), format!("{d}\n")).unwrap();
    }
    fs::write(
        proj.join("derivations/t.toml"),
        "builder = \"/bin/sh\"\nsystem = \"x86_64-linux\"\n\
         args = [\"-c\", \"cat ${tree}/d399/f > $out\"]\n[inputs]\ntree = { path = \"tree\" }\n",
    )
    .unwrap();
    let store = tmp.path().join("ks");
    let instantiate = || {
        // ksbuild under `ulimit -n 64`, as `ksbuild(&store)` runs it.
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "ulimit -n 64 && exec \"$0\" \"$@\""])
            .arg(crate::common::ksbuild_bin())
            .env("KSBUILD_STORE", &store)
            .env("NO_COLOR", "1")
            .env(ksbuild::timing::ENV, "1")
            .arg("--project")
            .arg(&proj)
            .args(["instantiate", "t"]);
        let out = run(&mut cmd);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stderr}");
        (String::from_utf8(out.stdout).unwrap(), stderr)
    };
    // An entry written within a second of a change does not answer for it: the project
    // settles first.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (first, _) = instantiate();
    assert!(first.trim().ends_with("-t.drv"), "{first}");
    let (again, stderr) = instantiate();
    assert_eq!(again, first);
    assert!(stderr.contains("read the evaluation cache"), "{stderr}");
}
