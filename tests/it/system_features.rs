//! System features end to end: a derivation requiring a feature this machine does not offer
//! is refused before anything is fetched or built, naming the feature and the settings that
//! lift the refusal; `--system-features`, `KSBUILD_SYSTEM_FEATURES`, ksbuild's
//! `config.toml` and `nix.conf` (`extra-system-features`) each lift it, in that order of
//! precedence; `--max-jobs 0` builds nothing here.

use std::fs;
use std::process::{Command, Output};

use crate::common::{run, run_ok};
use crate::realise::{skip_without_busybox, Project};

/// A feature no machine offers by default.
const FEATURE: &str = "ksbuild-test-feature";

/// `ksbuild` on store `s` of `p`, with configuration directories of the test's own:
/// `XDG_CONFIG_HOME` (ksbuild's `config.toml`) and `NIX_CONF_DIR` (`nix.conf`), both empty
/// unless written, and no `KSBUILD_SYSTEM_FEATURES`.
fn ks(p: &Project) -> Command {
    let mut c = p.ks("s");
    c.env("XDG_CONFIG_HOME", p.scratch.join("config"))
        .env("NIX_CONF_DIR", p.scratch.join("nix"))
        .env_remove("KSBUILD_SYSTEM_FEATURES");
    c
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Whether `target`'s `out` is valid in store `s`.
fn valid(p: &Project, target: &str) -> bool {
    let shown = run_ok(ks(p).args(["show-derivation", target]));
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    let path = v.as_object().unwrap().values().next().unwrap()["outputs"]["out"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    run(ks(p).args(["store", "path-info", &path]))
        .status
        .success()
}

#[test]
fn a_derivation_requiring_a_missing_feature_is_refused_before_anything_runs() {
    if skip_without_busybox() {
        return;
    }
    let p = Project::new(&[]);
    for d in ["config/ksbuild", "nix"] {
        fs::create_dir_all(p.scratch.join(d)).unwrap();
    }
    let payload = p.scratch.join("payload.txt");
    fs::write(&payload, "payload\n").unwrap();
    let hash = "sha256-".to_string() + &ksbuild::compat::Hash::sha256(b"payload\n").to_base64();
    let files = [
        (
            "download.toml",
            format!("[fetch]\nurl = \"file://{}\"\nhash = \"{hash}\"\n", payload.display()),
        ),
        (
            "plain.toml",
            "builder = \"${bb}/bin/busybox\"\nargs = [\"sh\", \"-c\", \"echo plain > $out\"]\n[inputs]\nbb = { path = \"tools/busybox\" }\n".to_string(),
        ),
        // The builder sees the features it requires in its environment, as in Nix.
        (
            "needs.toml",
            format!(
                "builder = \"${{bb}}/bin/busybox\"\nargs = [\"sh\", \"-c\", \"cat ${{n}} ${{d}} > $out; echo $requiredSystemFeatures >> $out\"]\nrequired-system-features = [\"big-parallel\", \"{FEATURE}\"]\n[inputs]\nbb = {{ path = \"tools/busybox\" }}\nn = \"plain\"\nd = \"download\"\n"
            ),
        ),
    ];
    for (name, text) in &files {
        fs::write(p.dir.join("derivations").join(name), text).unwrap();
    }
    let drv = run_ok(ks(&p).args(["instantiate", "needs"]));
    let realise = |cmd: &mut Command, extra: &[&str]| {
        run(cmd.args(["realise", "--no-link"]).args(extra).arg("needs"))
    };

    // Refused before the download and the dependency run.
    let out = realise(&mut ks(&p), &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // `big-parallel`, one of Nix's default features, is not missing.
    for wanted in [
        format!(
            "`needs` (`{}`) requires the system feature(s) `{FEATURE}`, which this machine does not offer (its features: ",
            drv.trim()
        ),
        "`--builders`".to_string(),
        "`--system-features \"".to_string(),
        format!("{FEATURE}\"`"),
        "KSBUILD_SYSTEM_FEATURES".to_string(),
        "nothing was fetched or built".to_string(),
    ] {
        assert!(err.contains(&wanted), "`{wanted}` missing in:\n{err}");
    }
    assert!(!valid(&p, "download") && !valid(&p, "plain"), "{err}");

    // The option lifts it (replacing the defaults: `big-parallel` must be listed too).
    let out = realise(&mut ks(&p), &["--system-features", FEATURE]);
    assert!(
        !out.status.success() && stderr(&out).contains("feature(s) `big-parallel`,"),
        "{}",
        stderr(&out)
    );
    let both = format!("big-parallel,{FEATURE}");
    let out = realise(&mut ks(&p), &["--system-features", &both]);
    assert!(out.status.success(), "{}", stderr(&out));
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let built = fs::read_to_string(p.scratch.join("s").join(path.trim_start_matches('/'))).unwrap();
    assert_eq!(built, format!("plain\npayload\nbig-parallel {FEATURE}\n"));

    // A valid output needs no builder: realising it again needs no feature; rebuilding it
    // (`--check`) does, and the sandbox's executor refuses it too.
    let out = realise(&mut ks(&p), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let check = |cmd: &mut Command| realise(cmd, &["--check"]);
    let out = check(&mut ks(&p));
    assert!(
        !out.status.success() && stderr(&out).contains(&format!("feature(s) `{FEATURE}`")),
        "{}",
        stderr(&out)
    );
    // `nix.conf`'s `extra-system-features` adds to Nix's default features.
    fs::write(
        p.scratch.join("nix/nix.conf"),
        format!("extra-system-features = {FEATURE}\n"),
    )
    .unwrap();
    let out = check(&mut ks(&p));
    assert!(out.status.success(), "nix.conf: {}", stderr(&out));
    // ksbuild's `config.toml` comes before `nix.conf`…
    fs::write(
        p.scratch.join("config/ksbuild/config.toml"),
        "system-features = [\"big-parallel\"]\n",
    )
    .unwrap();
    let out = check(&mut ks(&p));
    assert!(
        !out.status.success() && stderr(&out).contains(&format!("feature(s) `{FEATURE}`")),
        "config.toml over nix.conf: {}",
        stderr(&out)
    );
    // …and the environment variable before both.
    let out = check(ks(&p).env("KSBUILD_SYSTEM_FEATURES", format!("big-parallel {FEATURE}")));
    assert!(
        out.status.success(),
        "KSBUILD_SYSTEM_FEATURES: {}",
        stderr(&out)
    );
}

#[test]
fn max_jobs_zero_builds_nothing_here() {
    if skip_without_busybox() {
        return;
    }
    let p = Project::new(&[(
        "derivations/plain.toml",
        "builder = \"${bb}/bin/busybox\"\nargs = [\"sh\", \"-c\", \"echo plain > $out\"]\n[inputs]\nbb = { path = \"tools/busybox\" }\n",
    )]);
    for flag in ["--max-jobs", "-j"] {
        let out = run(ks(&p).args(["realise", "--no-link", flag, "0", "plain"]));
        let err = stderr(&out);
        assert!(
            !out.status.success()
                && err.contains("--max-jobs 0 builds nothing locally; give --builders"),
            "{flag} 0: {err}"
        );
        assert!(!valid(&p, "plain"), "{flag} 0 built: {err}");
    }
    // With remote builders (here one that cannot be reached), no build runs here either.
    let out = run(ks(&p).args([
        "realise",
        "--no-link",
        "--max-jobs",
        "0",
        "--builders",
        "ssh://nowhere.invalid x86_64-linux",
        "plain",
    ]));
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(!valid(&p, "plain"), "{err}");
    // `check` rebuilds here: it refuses at once.
    let out = run(ks(&p).args(["check", "-j", "0", "plain"]));
    assert!(
        !out.status.success() && stderr(&out).contains("`check` rebuilds here"),
        "{}",
        stderr(&out)
    );
    // `--max-jobs` is `-j`: `auto` and numbers build here.
    for n in ["auto", "2"] {
        let out = run(ks(&p).args(["realise", "--no-link", "--max-jobs", n, "plain"]));
        assert!(out.status.success(), "--max-jobs {n}: {}", stderr(&out));
    }
    let out = run(ks(&p).args(["realise", "--no-link", "--max-jobs", "many", "plain"]));
    assert!(
        !out.status.success() && stderr(&out).contains("`many` is not a number of builds"),
        "{}",
        stderr(&out)
    );
}
