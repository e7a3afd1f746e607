//! The project's `flake.nix` with real Nix 2.8, offline: it evaluates, and its pure-Nix
//! lowering (`fragments/lower.nix`) gives every target and variant of `derivations/` the
//! `.drv` path `ksbuild instantiate` gives it — for the repository as it is and after random
//! edits of its TOML. Targets are enumerated from the files here, independently of both
//! lowerings, so a new target is covered without editing this test.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{ksbuild, nix, run, run_ok, scratch, skip_without_nix};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A copy of what the flake reads (`path:` flakes copy their directory: not `target/`, not
/// `store/`) in `dir/project`.
fn copy_project(dir: &Path) -> PathBuf {
    let proj = dir.join("project");
    fs::create_dir_all(&proj).unwrap();
    for item in [
        "flake.nix",
        "Cargo.toml",
        "derivations",
        "fragments",
        "sandboxes",
    ] {
        run_ok(
            Command::new("cp")
                .arg("-r")
                .arg(repo().join(item))
                .arg(&proj),
        );
    }
    proj
}

/// The derivation files of `proj`, as ksbuild finds them: `derivations/**.toml` but `_*`
/// and `.*` files; each with its target name (the file's stem) and parsed contents.
fn derivation_files(proj: &Path) -> Vec<(String, PathBuf, toml::Table)> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(proj.join("derivations")).sort_by_file_name() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_file()
            && name.ends_with(".toml")
            && !name.starts_with('_')
            && !name.starts_with('.')
        {
            let text = fs::read_to_string(entry.path()).unwrap();
            let table: toml::Table =
                toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", entry.path().display()));
            let stem = name.trim_end_matches(".toml").to_string();
            files.push((stem, entry.path().to_path_buf(), table));
        }
    }
    files
}

/// Every target: each file's, and `FILE@VARIANT` for each of its `[variants]`.
fn targets(proj: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for (name, _, table) in derivation_files(proj) {
        if let Some(variants) = table.get("variants").and_then(|v| v.as_table()) {
            names.extend(variants.keys().map(|v| format!("{name}@{v}")));
        }
        names.push(name);
    }
    names.sort();
    names
}

/// Downloads declared without `hash` (upstream-only): `(pin key, target, unpack)` — a
/// `[fetch]` file's key is its target, an inline download's `TARGET.INPUT`.
fn unpinned_downloads(proj: &Path) -> Vec<(String, String, Option<String>)> {
    let unhashed = |t: &toml::Table| !t.contains_key("hash");
    let unpack = |t: &toml::Table| t.get("unpack").and_then(|u| u.as_str()).map(String::from);
    let mut found = Vec::new();
    for (name, _, table) in derivation_files(proj) {
        if let Some(fetch) = table.get("fetch").and_then(|f| f.as_table()) {
            if unhashed(fetch) {
                found.push((name.clone(), name.clone(), unpack(fetch)));
            }
        }
        let mut scopes = vec![(name.clone(), table.get("inputs"))];
        if let Some(variants) = table.get("variants").and_then(|v| v.as_table()) {
            for (v, spec) in variants {
                scopes.push((format!("{name}@{v}"), spec.get("inputs")));
            }
        }
        for (target, inputs) in scopes {
            for (input, spec) in inputs.and_then(|i| i.as_table()).into_iter().flatten() {
                if let Some(t) = spec.as_table().filter(|t| t.contains_key("url")) {
                    if unhashed(t) {
                        found.push((format!("{target}.{input}"), target.clone(), unpack(t)));
                    }
                }
            }
        }
    }
    found
}

/// Pins every upstream-only download of `proj` to a stand-in file (`ksbuild pin KEY FILE`),
/// as the image tests do: the flake then reads `derivations/pins.lock` as ksbuild does.
fn pin_standins(store: &Path, proj: &Path, dir: &Path) {
    let stage = dir.join("standins");
    fs::create_dir_all(stage.join("tree")).unwrap();
    fs::write(stage.join("tree/standin"), "#!/bin/sh\necho stand-in\n").unwrap();
    run_ok(
        Command::new("tar")
            .args(["--owner=0", "--group=0", "--mtime=@0", "-czf"])
            .arg(stage.join("standin.tar.gz"))
            .arg("-C")
            .arg(&stage)
            .arg("tree"),
    );
    fs::write(stage.join("standin.bin"), "a stand-in download\n").unwrap();
    for (key, _, unpack) in unpinned_downloads(proj) {
        let file = match unpack.as_deref() {
            Some("tar") => stage.join("standin.tar.gz"),
            None => stage.join("standin.bin"),
            Some(other) => panic!("no stand-in for `{key}` (unpack = \"{other}\"); add one here"),
        };
        run_ok(
            ksbuild(store)
                .arg("--project")
                .arg(proj)
                .args(["pin", &key])
                .arg(&file),
        );
    }
}

/// Adds a derivation with `required-system-features` (which the repository's kernels do not
/// use yet) and variants that replace or keep them.
fn add_feature_derivation(proj: &Path) {
    fs::write(
        proj.join("derivations/features.toml"),
        concat!(
            "builder = \"${busybox}/bin/busybox\"\n",
            "args = [\"sh\", \"-c\", \"echo $requiredSystemFeatures > $out\"]\n",
            "required-system-features = [\"big-parallel\", \"kvm\"]\n",
            "[inputs]\nbusybox = \"busybox-static\"\n",
            "[variants.none]\nrequired-system-features = []\n",
            "[variants.same]\nargs = [\"sh\", \"-c\", \"echo same > $out\"]\n",
        ),
    )
    .unwrap();
}

/// `nix` offline, with a store and a cache directory of the test's own.
fn nix_cmd(dir: &Path) -> Command {
    let mut c = nix("nix");
    c.env("XDG_CACHE_HOME", dir.join("xdg-cache"))
        .arg("--store")
        .arg(dir.join("nixroot"));
    c
}

/// The `.drvPath` of every attribute of `packages.x86_64-linux`, in one evaluation.
fn flake_drv_paths(dir: &Path, proj: &Path) -> BTreeMap<String, String> {
    let json = run_ok(
        nix_cmd(dir)
            .args(["eval", "--json"])
            .arg(format!("path:{}#packages.x86_64-linux", proj.display()))
            .args(["--apply", "ps: builtins.mapAttrs (n: p: p.drvPath) ps"]),
    );
    serde_json::from_str(&json).unwrap()
}

/// `ksbuild instantiate` of `targets`, by target.
fn ksbuild_drv_paths(store: &Path, proj: &Path, targets: &[String]) -> BTreeMap<String, String> {
    let paths = crate::common::drv_paths(
        store,
        proj,
        &targets.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(paths.len(), targets.len(), "one .drv per target");
    targets.iter().cloned().zip(paths).collect()
}

/// Asserts that the flake and ksbuild agree on every target of `proj`, and that the flake's
/// other names (`NAME-VARIANT` aliases, `default`) are those targets; returns the paths.
fn assert_same_drv_paths(dir: &Path, store: &Path, proj: &Path) -> BTreeMap<String, String> {
    let targets = targets(proj);
    let ours = ksbuild_drv_paths(store, proj, &targets);
    let flake = flake_drv_paths(dir, proj);
    let mut mismatches = Vec::new();
    for t in &targets {
        match flake.get(t) {
            Some(p) if p == &ours[t] => {}
            other => mismatches.push(format!("{t}: ksbuild {}, flake {other:?}", ours[t])),
        }
    }
    assert!(
        mismatches.is_empty(),
        "drvPath mismatches:\n{}",
        mismatches.join("\n")
    );
    for (attr, path) in &flake {
        if targets.contains(attr) {
            continue;
        }
        let target = if attr == "default" {
            "rpi-image".to_string()
        } else {
            targets
                .iter()
                .find(|t| t.contains('@') && t.replace('@', "-") == *attr)
                .unwrap_or_else(|| panic!("the flake has a package `{attr}` that is no target"))
                .clone()
        };
        assert_eq!(path, &ours[&target], "`{attr}` is `{target}`");
    }
    ours
}

#[test]
fn flake_evaluates_offline_and_reads_the_project() {
    if skip_without_nix() {
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    // A `path:` flake copies the directory; point it at a copy without `target/`.
    let tmp = scratch();
    let flake = tmp.path().join("flake");
    std::fs::create_dir_all(flake.join("derivations")).unwrap();
    std::fs::create_dir_all(flake.join("fragments")).unwrap();
    for item in ["flake.nix", "Cargo.toml", "fragments/lower.nix"] {
        run_ok(
            std::process::Command::new("cp")
                .arg(format!("{root}/{item}"))
                .arg(flake.join(item)),
        );
    }
    std::fs::write(flake.join("derivations/example.toml"), "").unwrap();
    std::fs::write(flake.join("derivations/_project.toml"), "").unwrap();
    let url = format!("path:{}#lib", flake.display());
    // A store of the test's own: an ordinary user without a Nix daemon cannot use /nix.
    let json = run_ok(
        nix_cmd(tmp.path())
            .args(["eval", "--json", &url, "--apply"])
            .arg("lib: { inherit (lib) version storeDir targets; }"),
    );
    let lib: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(lib["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(lib["storeDir"], "/nix/store");
    assert_eq!(lib["targets"], serde_json::json!(["example"]));
}

#[test]
fn every_target_and_variant_has_the_drv_path_ksbuild_instantiates() {
    if skip_without_nix() {
        return;
    }
    let tmp = scratch();
    let store = tmp.path().join("store");
    let proj = copy_project(tmp.path());
    pin_standins(&store, &proj, tmp.path());
    add_feature_derivation(&proj);
    let paths = assert_same_drv_paths(tmp.path(), &store, &proj);
    // The whole graph, not a toy: images, kernels, environments and their .debs.
    assert!(paths.contains_key("rpi-image@small"), "{paths:?}");
    // The keys the repository's own derivations may not use: in the `.drv` Nix wrote, as
    // Nix writes a list.
    for (target, expected) in [
        ("features", Some("big-parallel kvm")),
        ("features@none", Some("")),
        ("features@same", Some("big-parallel kvm")),
    ] {
        let drv = &paths[target];
        let json = run_ok(
            nix("nix")
                .args(["show-derivation", "--store"])
                .arg(tmp.path().join("nixroot"))
                .arg(drv),
        );
        let json: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            json[drv]["env"]["requiredSystemFeatures"].as_str(),
            expected,
            "{target}: {json}"
        );
    }
    // The .drv Nix wrote is the one ksbuild wrote, byte for byte.
    let drv = &paths["rpi-image@small"];
    let ours = fs::read(store.join(drv.trim_start_matches('/'))).unwrap();
    let theirs = fs::read(tmp.path().join("nixroot").join(drv.trim_start_matches('/'))).unwrap();
    assert!(ours == theirs, "{drv} differs between ksbuild and Nix");
}

#[test]
fn nix_flake_show_and_check_succeed_offline() {
    if skip_without_nix() {
        return;
    }
    let tmp = scratch();
    let store = tmp.path().join("store");
    let proj = copy_project(tmp.path());
    pin_standins(&store, &proj, tmp.path());
    let url = format!("path:{}", proj.display());
    let show = run_ok(nix_cmd(tmp.path()).args(["flake", "show", "--json", &url]));
    let show: serde_json::Value = serde_json::from_str(&show).unwrap();
    let packages = &show["packages"]["x86_64-linux"];
    for t in targets(&proj) {
        assert_eq!(
            packages[&t]["type"], "derivation",
            "`nix flake show` lists `{t}`"
        );
    }
    assert_eq!(packages["default"]["name"], "rpi-image");
    assert_eq!(packages["rpi-image-small"]["name"], "rpi-image-small");
    run_ok(nix_cmd(tmp.path()).args(["flake", "check", "--no-build", &url]));
}

#[test]
fn an_unpinned_download_fails_both_lowerings_naming_the_pin_command() {
    if skip_without_nix() {
        return;
    }
    let tmp = scratch();
    let store = tmp.path().join("store");
    let proj = copy_project(tmp.path());
    let _ = fs::remove_file(proj.join("derivations/pins.lock"));
    // An upstream-only download and a build that uses it, besides the repository's own.
    fs::write(
        proj.join("derivations/upstream-only.toml"),
        "[fetch]\nurl = \"https://upstream.invalid/releases/tool-1.0.tar.gz\"\nunpack = \"tar\"\n",
    )
    .unwrap();
    fs::write(
        proj.join("derivations/uses-upstream.toml"),
        "builder = \"${tool}/bin/tool\"\n[inputs]\ntool = \"upstream-only\"\n",
    )
    .unwrap();
    let unpinned = unpinned_downloads(&proj);
    assert!(unpinned.iter().any(|(k, _, _)| k == "upstream-only"));
    for (key, target, _) in &unpinned {
        let pin = format!("ksbuild pin {key} ");
        let out = run(ksbuild(&store)
            .arg("--project")
            .arg(&proj)
            .args(["instantiate", target]));
        assert!(
            !out.status.success(),
            "ksbuild instantiate {target} succeeded unpinned"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("ksbuild pin {key}")), "{err}");
        let out = run(nix_cmd(tmp.path()).args(["eval", "--raw"]).arg(format!(
            "path:{}#packages.x86_64-linux.\"{target}\".drvPath",
            proj.display()
        )));
        assert!(
            !out.status.success(),
            "nix eval of `{target}` succeeded unpinned"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&pin) && err.contains("not pinned"), "{err}");
    }
    // A dependent fails the same way, naming the download it lacks.
    let out = run(nix_cmd(tmp.path()).args(["eval", "--raw"]).arg(format!(
        "path:{}#packages.x86_64-linux.uses-upstream.drvPath",
        proj.display()
    )));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("ksbuild pin upstream-only /path/to/tool-1.0.tar.gz"),
        "{err}"
    );
}

/// A small deterministic generator (xorshift64*), seeded per run and printed, so that a
/// failing edit sequence can be replayed with `KSBUILD_PROPERTY_SEED`.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::env::var("KSBUILD_PROPERTY_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("property seed: KSBUILD_PROPERTY_SEED={seed}");
        Rng(seed)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    /// A value with what escaping must survive: quotes, backslashes, newlines, tabs, a
    /// literal `$${`, shell variables.
    fn value(&mut self) -> String {
        let pieces = [
            "a", "Z9", " ", "\"", "\\", "\n", "\t", "$${lit}", "$out", "é", "-",
        ];
        (0..1 + self.below(6))
            .map(|_| *self.pick(&pieces))
            .collect()
    }
}

/// One random edit of the TOML in `proj`; returns the target it must change.
fn random_edit(rng: &mut Rng, proj: &Path, round: usize) -> String {
    let files = derivation_files(proj);
    let builds: Vec<&(String, PathBuf, toml::Table)> = files
        .iter()
        .filter(|(_, _, t)| t.contains_key("builder"))
        .collect();
    let (name, path, table) = *rng.pick(&builds);
    let mut table = table.clone();
    let sub = |t: &mut toml::Table, key: &str| -> toml::Table {
        t.get(key)
            .and_then(|v| v.as_table())
            .cloned()
            .unwrap_or_default()
    };
    let changed = match rng.below(6) {
        // An environment value.
        0 => {
            let mut env = sub(&mut table, "env");
            env.insert(format!("PROPERTY_{round}"), rng.value().into());
            table.insert("env".into(), env.into());
            name.clone()
        }
        // The arguments.
        1 => {
            let mut args: Vec<toml::Value> = table
                .get("args")
                .and_then(|a| a.as_array())
                .cloned()
                .unwrap_or_default();
            args.insert(rng.below(args.len() + 1), rng.value().into());
            table.insert("args".into(), args.into());
            name.clone()
        }
        // An added input: a derivation, a repository file or folder, used in a string or
        // not (an input the strings never name is still an input of the derivation).
        2 => {
            let mut inputs = sub(&mut table, "inputs");
            let input = format!("extra{round}");
            let fresh = format!("fragments/property-{round}.txt");
            let choice = rng.below(4);
            let spec: toml::Value = if choice == 0 {
                "busybox-static".into()
            } else {
                let file = match choice {
                    1 => "fragments/hello.sh",
                    2 => "fragments/kubesolo-init",
                    _ => {
                        fs::write(proj.join(&fresh), rng.value()).unwrap();
                        &fresh
                    }
                };
                let mut t = toml::Table::new();
                t.insert("path".into(), file.into());
                if rng.below(2) == 0 {
                    t.insert("name".into(), format!("named-{round}").into());
                }
                t.into()
            };
            inputs.insert(input.clone(), spec);
            table.insert("inputs".into(), inputs.into());
            // An input the target may already have changes it only when named.
            if choice != 3 || rng.below(2) == 0 {
                let mut env = sub(&mut table, "env");
                env.insert(format!("USE_{round}"), format!("${{{input}}}/x").into());
                table.insert("env".into(), env.into());
            }
            name.clone()
        }
        // A variant.
        3 => {
            let mut variants = sub(&mut table, "variants");
            let mut v = toml::Table::new();
            let mut env = toml::Table::new();
            env.insert(format!("VARIANT_{round}"), rng.value().into());
            v.insert("env".into(), env.into());
            if rng.below(2) == 0 {
                v.insert("args".into(), vec![toml::Value::from(rng.value())].into());
            }
            variants.insert(format!("prop{round}"), v.into());
            table.insert("variants".into(), variants.into());
            format!("{name}@prop{round}")
        }
        // Required system features: a few of Nix's, and one of this round (so that the
        // list always changes).
        4 => {
            let mut features: Vec<toml::Value> = ["big-parallel", "kvm", "nixos-test", "benchmark"]
                .into_iter()
                .filter(|_| rng.below(2) == 0)
                .map(toml::Value::from)
                .collect();
            features.insert(
                rng.below(features.len() + 1),
                format!("feature-{round}").into(),
            );
            table.insert("required-system-features".into(), features.into());
            name.clone()
        }
        // A second output, and a new target that takes it.
        _ => {
            let mut outputs: Vec<toml::Value> = table
                .get("outputs")
                .and_then(|o| o.as_array())
                .cloned()
                .unwrap_or_else(|| vec!["out".into()]);
            outputs.push(format!("dev{round}").into());
            table.insert("outputs".into(), outputs.into());
            let user = format!(
                "builder = \"${{x}}/bin/sh\"\nargs = [\"${{y}}\"]\n[inputs]\nx = {{ drv = \"{name}\", output = \"dev{round}\" }}\ny = \"{name}\"\n"
            );
            fs::write(proj.join(format!("derivations/uses-dev{round}.toml")), user).unwrap();
            format!("uses-dev{round}")
        }
    };
    fs::write(path, toml::to_string(&table).unwrap()).unwrap();
    changed
}

#[test]
fn random_toml_edits_change_both_drv_paths_alike() {
    if skip_without_nix() {
        return;
    }
    let tmp = scratch();
    let store = tmp.path().join("store");
    let proj = copy_project(tmp.path());
    pin_standins(&store, &proj, tmp.path());
    let mut rng = Rng::new();
    let mut before = assert_same_drv_paths(tmp.path(), &store, &proj);
    for round in 0..5 {
        let changed = random_edit(&mut rng, &proj, round);
        let after = assert_same_drv_paths(tmp.path(), &store, &proj);
        assert_ne!(
            before.get(&changed),
            after.get(&changed),
            "round {round}: the edit did not change `{changed}`"
        );
        before = after;
    }
}

/// A project of one derivation (`derivations/bad.toml` = `text`) with the flake, for
/// errors both lowerings must give.
fn tiny_project(dir: &Path, project_toml: &str, text: &str) -> PathBuf {
    let proj = dir.join("tiny");
    fs::create_dir_all(proj.join("derivations")).unwrap();
    fs::create_dir_all(proj.join("fragments")).unwrap();
    for item in ["flake.nix", "Cargo.toml", "fragments/lower.nix"] {
        fs::copy(repo().join(item), proj.join(item)).unwrap();
    }
    fs::write(proj.join("derivations/_project.toml"), project_toml).unwrap();
    fs::write(proj.join("derivations/bad.toml"), text).unwrap();
    proj
}

#[test]
fn env_keys_that_nix_derivation_interprets_are_refused_by_both_lowerings() {
    if skip_without_nix() {
        return;
    }
    // Nix's `derivation` reads these attributes itself (the arguments, a fixed output,
    // structured attributes): as plain environment they would give another .drv in Nix.
    for key in [
        "args",
        "outputHash",
        "outputHashMode",
        "__structuredAttrs",
        "__ignoreNulls",
    ] {
        for (project_toml, text) in [
            (
                "system = \"x86_64-linux\"\n".to_string(),
                format!("builder = \"/bin/sh\"\n[env]\n{key} = \"x\"\n"),
            ),
            (
                format!("system = \"x86_64-linux\"\n[env]\n{key} = \"x\"\n"),
                "builder = \"/bin/sh\"\n".to_string(),
            ),
        ] {
            let tmp = scratch();
            let proj = tiny_project(tmp.path(), &project_toml, &text);
            let out = run(ksbuild(&tmp.path().join("store"))
                .arg("--project")
                .arg(&proj)
                .args(["instantiate", "bad"]));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains(&format!("`env.{key}` is set by")),
                "ksbuild, {key} in {project_toml:?} / {text:?}: {err}"
            );
            let out = run(nix_cmd(tmp.path()).args(["eval", "--raw"]).arg(format!(
                "path:{}#packages.x86_64-linux.bad.drvPath",
                proj.display()
            )));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains(&format!("`env.{key}` is set by")),
                "flake, {key} in {project_toml:?} / {text:?}: {err}"
            );
        }
    }
}

/// `{ debs = ENV, packages = [...] }` gives the store paths of those locked `.deb`s in both
/// lowerings (the same .drv), and a package the lock does not hold is refused by both,
/// naming it and the fix.
#[test]
fn a_debs_input_gives_locked_debs_and_refuses_an_unlocked_package_in_both_lowerings() {
    if skip_without_nix() {
        return;
    }
    let tmp = scratch();
    let proj = copy_project(tmp.path());
    let store = tmp.path().join("store");
    let write = |packages: &str| {
        fs::write(
            proj.join("derivations/debs-probe.toml"),
            format!(
                "builder = \"/bin/sh\"\nargs = [\"-c\", \"echo $debs > $out\"]\n[env]\ndebs = \"${{debs}}\"\n[inputs]\ndebs = {{ debs = \"image\", packages = {packages} }}\n"
            ),
        )
        .unwrap();
    };
    write("[\"raspi-firmware\", \"cpio\"]");
    let ours = crate::common::drv_paths(&store, &proj, &["debs-probe"]);
    let flake = run_ok(nix_cmd(tmp.path()).args(["eval", "--raw"]).arg(format!(
        "path:{}#packages.x86_64-linux.debs-probe.drvPath",
        proj.display()
    )));
    assert_eq!(ours[0], flake);
    let shown: serde_json::Value = serde_json::from_str(&run_ok(
        ksbuild(&store)
            .arg("--project")
            .arg(&proj)
            .args(["show-derivation", "debs-probe"]),
    ))
    .unwrap();
    let debs = shown[&ours[0]]["env"]["debs"].as_str().unwrap().to_string();
    let names: Vec<&str> = debs
        .split(' ')
        .map(|p| p.split_once('-').unwrap().1.split('_').next().unwrap())
        .collect();
    // In the lock's order (cpio comes before raspi-firmware there).
    assert_eq!(names, ["cpio", "raspi-firmware"], "{debs}");

    write("[\"raspi-firmware\", \"no-such-package\"]");
    let out = run(ksbuild(&store)
        .arg("--project")
        .arg(&proj)
        .args(["instantiate", "debs-probe"]));
    let err = String::from_utf8_lossy(&out.stderr);
    let says = "environment `image` has no locked package `no-such-package`";
    assert!(
        !out.status.success() && err.contains(says) && err.contains("ksbuild lock image"),
        "ksbuild: {err}"
    );
    let out = run(nix_cmd(tmp.path()).args(["eval", "--raw"]).arg(format!(
        "path:{}#packages.x86_64-linux.debs-probe.drvPath",
        proj.display()
    )));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(says) && err.contains("ksbuild lock image"),
        "flake: {err}"
    );
}
