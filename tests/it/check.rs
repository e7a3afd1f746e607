//! `ksbuild check`: rounds of fresh builds compared bit for bit, differences explained
//! file by file with a likely cause, and recorded outputs (`derivations/outputs.lock`)
//! that a later check compares with, across machines and time.

use std::fs;

use crate::common::{run, run_ok};
use crate::realise::{skip_without_busybox, Project, GRAPH};

/// The verdict `check --json` printed.
fn verdict(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no verdict ({e}):\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A derivation file running `script` with the project's busybox.
fn drv(name: &str, script: &str) -> (String, String) {
    (
        format!("derivations/{name}.toml"),
        format!(
            "builder = \"${{bb}}/bin/busybox\"\nargs = [\"sh\", \"-c\", {script:?}]\n[inputs]\nbb = {{ path = \"tools/busybox\" }}\n"
        ),
    )
}

/// A reproducible graph passes with two builds each (the realisation's own build counts
/// as one), is recorded, and later compares with its record: as recorded; then a changed
/// fragment makes the record stale (exit 1, with the re-record command — never a silent
/// pass), and a record that disagrees with the build exits 104.
#[test]
fn a_reproducible_graph_passes_is_recorded_and_compares_with_its_record() {
    if skip_without_busybox() {
        return;
    }
    let p = Project::new(GRAPH);
    let out = run(p
        .ks("st")
        .args(["check", "--json", "--depth", "closure", "c"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v = verdict(&out);
    assert_eq!(v["reproducible"], true);
    let checked: Vec<&str> = v["derivations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["target"].as_str().unwrap())
        .collect();
    assert_eq!(checked, ["a", "b", "c"], "the closure, in build order");
    for d in v["derivations"].as_array().unwrap() {
        assert_eq!(d["builds"], 2, "{d}");
        assert_eq!(d["rebuilt"], 1, "the store's own build is the first: {d}");
        for o in d["outputs"].as_array().unwrap() {
            let builds = o["builds"].as_array().unwrap();
            assert_eq!(builds.len(), 2);
            assert_eq!(builds[0], builds[1]);
        }
    }
    // Recorded: the .drv and the NAR hash of each output.
    run_ok(p.ks("st").args(["check", "--record", "c"]));
    let lock = fs::read_to_string(p.dir.join("derivations/outputs.lock")).unwrap();
    let c_hash = v["derivations"][2]["outputs"][0]["builds"][0]
        .as_str()
        .unwrap();
    assert!(lock.contains("[c]") && lock.contains(c_hash), "{lock}");
    // Another store (another machine), one build, compared with the record.
    let out = run(p
        .ks("other")
        .args(["check", "--against-record", "--json", "c"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = verdict(&out);
    assert_eq!(v["derivations"][0]["builds"], 1);
    assert_eq!(v["derivations"][0]["record"]["status"], "matches");
    // A record that disagrees with the build: 104.
    fs::write(
        p.dir.join("derivations/outputs.lock"),
        lock.replace(
            c_hash,
            "sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ),
    )
    .unwrap();
    let out = run(p.ks("other").args(["check", "--against-record", "c"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(104), "{stderr}");
    assert!(
        stderr.contains("NOT as recorded") && stderr.contains(c_hash),
        "{stderr}"
    );
    fs::write(p.dir.join("derivations/outputs.lock"), &lock).unwrap();
    // A changed fragment: the record is stale, and says how to re-record.
    let script = p.dir.join("fragments/c.sh");
    fs::write(
        &script,
        fs::read_to_string(&script).unwrap() + "echo changed\n",
    )
    .unwrap();
    let out = run(p.ks("other").args(["check", "--against-record", "c"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the record of `c` is for `/nix/store/")
            && stderr.contains("nothing was built")
            && stderr.contains("re-record with `ksbuild check --record c`"),
        "{stderr}"
    );
    // No record at all.
    let out = run(p.ks("other").args(["check", "--against-record", "a"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("ksbuild check --record a"), "{stderr}");
    // A record is written only from builds that agree: one build is refused.
    let out = run(p.ks("st").args(["check", "--record", "--rounds", "1", "a"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("a record needs at least two builds that agree"),
        "{stderr}"
    );
}

/// Non-reproducible builds exit 104; the explanation names the file inside the output,
/// where it parts, and a likely cause; the differing build is kept; a record is refused.
/// Two targets that lower to one derivation (as `kernel-arm64@small` and `kernel-rpi@small`
/// do) are rebuilt once and recorded under both names.
#[test]
fn targets_that_are_one_derivation_are_checked_once() {
    if skip_without_busybox() {
        return;
    }
    let (file, text) = drv("one", "echo same > $out");
    let twin = format!("name = \"one\"\n{text}");
    let p = Project::new(&[(&file, &text), ("derivations/two.toml", &twin)]);
    let out = run(p
        .ks("st")
        .args(["check", "--record", "--json", "one", "two"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("`two` is the same derivation as `one`: checked once"),
        "{stderr}"
    );
    let v = verdict(&out);
    let targets: Vec<&str> = v["derivations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["one", "two"]);
    assert_eq!(v["derivations"][0]["drv"], v["derivations"][1]["drv"]);
    // One rebuild: the history holds the realisation's build and the check's, whichever
    // name each was recorded under.
    let builds: usize = ["one", "two"]
        .iter()
        .map(|t| {
            let stats = run_ok(p.ks("st").args(["log", "--stats", "--json", t]));
            let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
            v["builds"].as_array().unwrap().len()
        })
        .sum();
    assert_eq!(builds, 2);
    let lock = fs::read_to_string(p.dir.join("derivations/outputs.lock")).unwrap();
    assert!(lock.contains("[one]") && lock.contains("[two]"), "{lock}");
}

#[test]
fn differences_are_explained_by_file_offset_and_cause() {
    if skip_without_busybox() {
        return;
    }
    let files = [
        drv(
            "clock",
            // The second ticks between builds (busybox's `date` has no `%N`).
            "B=$builder; $B sleep 1; $B mkdir -p $out/share; echo 'version 1' > $out/share/info; $B date -u '+built %Y-%m-%d %H:%M:%S' >> $out/share/info; echo same > $out/same",
        ),
        drv(
            "uuid",
            "echo \"id=$(cat /proc/sys/kernel/random/uuid)\" > $out",
        ),
    ];
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let p = Project::new(&files);
    for (target, file, cause) in [
        ("clock", "/share/info", "timestamp"),
        ("uuid", "/", "random"),
    ] {
        let out = run(p
            .ks("st")
            .args(["check", "--json", "--rounds", "3", target]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(104), "{target}: {stderr}");
        let v = verdict(&out);
        assert_eq!(v["reproducible"], false);
        let o = &v["derivations"][0]["outputs"][0];
        assert_eq!(o["reproducible"], false);
        assert_eq!(o["builds"].as_array().unwrap().len(), 3);
        let d = &o["differences"][0];
        assert_eq!(d["path"], file, "{target}: {o}");
        assert_eq!(d["what"], "content");
        assert_eq!(d["cause"], cause, "{target}: {o}");
        assert!(d["offset"].as_u64().is_some());
        let kept = o["kept"].as_str().unwrap();
        assert!(std::path::Path::new(kept).exists(), "kept at {kept}");
        assert!(
            stderr.contains(&format!(
                "error: `{target}` is not reproducible over 3 build(s)"
            )) && stderr.contains(&format!("{file}: content from byte")),
            "{stderr}"
        );
        let out = run(p.ks("st").args(["check", "--record", target]));
        assert_eq!(out.status.code(), Some(104));
        assert!(
            !p.dir.join("derivations/outputs.lock").exists(),
            "nothing recorded"
        );
    }
    // The report, r13y style.
    let report = p.scratch.join("report.md");
    let out = run(p
        .ks("st")
        .args(["check", "--report"])
        .arg(&report)
        .arg("uuid"));
    assert_eq!(out.status.code(), Some(104));
    let md = fs::read_to_string(&report).unwrap();
    assert!(
        md.contains("**0 of 1 derivations reproducible.**") && md.contains("| `uuid` | 2 |"),
        "{md}"
    );
}

/// Each variation catches a derivation that depends on what it varies (exit 104, the
/// differing file named), and none of them changes a reproducible output: the GRAPH
/// derivations pass under `--vary all`.
#[test]
fn each_variation_catches_what_depends_on_it_and_spares_what_does_not() {
    if skip_without_busybox() {
        return;
    }
    let cases = [
        (
            "time",
            "echo \"built $($builder date -u '+%Y-%m-%d %H:%M:%S')\" > $out",
        ),
        (
            "cores",
            "echo \"cores=$NIX_BUILD_CORES nproc=$($builder nproc)\" > $out",
        ),
        ("hostname", "echo \"host=$($builder hostname)\" > $out"),
        (
            "uid",
            "echo \"$($builder id -u):$($builder id -g) $($builder id -un)\" > $out",
        ),
        ("umask", "echo \"umask=$(umask)\" > $out"),
        ("aslr", "$builder grep -F '[stack]' /proc/self/maps > $out"),
        // Unsorted listings: of an input, and of files the build made in /build.
        (
            "order",
            "$builder find $many > $out; for f in q w e r t y u i o p; do : > $f; done; \
             $builder find . >> $out",
        ),
        ("build-dir", "echo \"built in $PWD\" > $out"),
        ("uname", "echo \"release=$($builder uname -r)\" > $out"),
    ];
    let mut files: Vec<(String, String)> = cases.iter().map(|(n, s)| drv(n, s)).collect();
    files
        .iter_mut()
        .find(|(n, _)| n.contains("/order."))
        .unwrap()
        .1 += "many = { path = \"tools/many\" }\n";
    files.extend(GRAPH.iter().map(|(a, b)| (a.to_string(), b.to_string())));
    for f in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"] {
        files.push((format!("tools/many/{f}"), f.to_string()));
    }
    // The monotonic and boot clocks: uptime, far ahead of the host's under `--vary time`.
    files.push(drv("clocks", "$builder cut -d. -f1 /proc/uptime > $out"));
    // A derivation that names /build keeps it: `build-dir` does not apply to it.
    files.push(drv("named", "cd /build && echo \"built in $PWD\" > $out"));
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let p = Project::new(&files);
    for (name, _) in cases {
        // Without the variation, two builds agree ...
        if name != "time" {
            let out = run(p.ks("st").args(["check", name]));
            assert!(
                out.status.success(),
                "{name} without --vary: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // ... and with it, they do not.
        let out = run(p.ks("st").args(["check", "--json", "--vary", name, name]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(104), "--vary {name}: {stderr}");
        let v = verdict(&out);
        let d = &v["derivations"][0];
        assert_eq!(d["variations"], serde_json::json!([name]), "{d}");
        assert_eq!(d["outputs"][0]["differences"][0]["path"], "/", "{d}");
    }
    let host_uptime: u64 = fs::read_to_string("/proc/uptime")
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let out = run(p
        .ks("st")
        .args(["check", "--json", "--vary", "time", "clocks"]));
    let v = verdict(&out);
    let kept = v["derivations"][0]["outputs"][0]["kept"].as_str().unwrap();
    let varied: u64 = fs::read_to_string(kept).unwrap().trim().parse().unwrap();
    assert!(
        varied >= host_uptime + ksbuild::check::CLOCKS_AHEAD,
        "uptime {varied} s in the varied build, {host_uptime} s on the host"
    );
    let out = run(p
        .ks("st")
        .args(["check", "--json", "--vary", "all", "named"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = verdict(&out);
    assert!(
        !v["derivations"][0]["variations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x == "build-dir"),
        "{v}"
    );
    // `c` writes its working directory into `/env`: renaming the build directory shows it.
    let out = run(p
        .ks("st")
        .args(["check", "--json", "--vary", "build-dir", "c"]));
    assert_eq!(out.status.code(), Some(104));
    let d = &verdict(&out)["derivations"][0]["outputs"][0]["differences"][0];
    assert_eq!(
        (&d["path"], &d["cause"]),
        (&"/env".into(), &"build-path".into()),
        "{d}"
    );
    let out = run(p.ks("st").args([
        "check",
        "--json",
        "--vary",
        "all,-build-dir",
        "--depth",
        "closure",
        "c",
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "--vary all,-build-dir changed a reproducible output: {stderr}"
    );
    let v = verdict(&out);
    assert_eq!(v["derivations"].as_array().unwrap().len(), 3);
    assert_eq!(
        v["derivations"][0]["variations"],
        serde_json::json!(["time", "cores", "hostname", "uid", "umask", "aslr", "order", "uname"])
    );
    let out = run(p.ks("st").args(["check", "--vary", "colour", "c"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("unknown variation `colour`"), "{stderr}");
}

/// An 8 MiB sparse disk image with one FAT partition (1 MiB in, 6 MiB long) holding
/// `/config.txt` and `/overlays/README`, partitioned GPT or MBR; made with mtools.
fn disk_image(path: &std::path::Path, gpt: bool, config: &str) {
    use std::os::unix::fs::FileExt;
    let f = fs::File::create(path).unwrap();
    f.set_len(8 << 20).unwrap();
    let (first, last): (u64, u64) = (2048, 2048 + 12288 - 1);
    let mut mbr = [0u8; 512];
    mbr[440..444].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    let entry = &mut mbr[446..462];
    if gpt {
        entry[4] = 0xEE;
        entry[8..12].copy_from_slice(&1u32.to_le_bytes());
        entry[12..16].copy_from_slice(&(16383u32).to_le_bytes());
    } else {
        entry[4] = 0x0C;
        entry[8..12].copy_from_slice(&(first as u32).to_le_bytes());
        entry[12..16].copy_from_slice(&(12288u32).to_le_bytes());
    }
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    f.write_all_at(&mbr, 0).unwrap();
    if gpt {
        let mut header = [0u8; 92];
        header[0..8].copy_from_slice(b"EFI PART");
        header[56..72].copy_from_slice(&[7u8; 16]);
        header[72..80].copy_from_slice(&2u64.to_le_bytes());
        header[80..84].copy_from_slice(&128u32.to_le_bytes());
        header[84..88].copy_from_slice(&128u32.to_le_bytes());
        f.write_all_at(&header, 512).unwrap();
        let mut e = [0u8; 128];
        e[0..16].copy_from_slice(&[
            0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0, 0xa0, 0xc9, 0x3e, 0xc9,
            0x3b,
        ]);
        e[16..32].copy_from_slice(&[9u8; 16]);
        e[32..40].copy_from_slice(&first.to_le_bytes());
        e[40..48].copy_from_slice(&last.to_le_bytes());
        for (i, c) in "KSOBOOTA".encode_utf16().enumerate() {
            e[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
        }
        f.write_all_at(&e, 1024).unwrap();
    }
    drop(f);
    let at = format!("{}@@1M", path.display());
    let mtool = |args: &[&str]| run_ok(std::process::Command::new(args[0]).args(&args[1..]));
    mtool(&[
        "mformat", "-i", &at, "-T", "12288", "-h", "1", "-s", "32", "-v", "KSOBOOTA", "-N",
        "12345678", "::",
    ]);
    let dir = path.parent().unwrap().join(format!(
        "{}-files",
        path.file_name().unwrap().to_string_lossy()
    ));
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("config.txt"), config).unwrap();
    fs::write(dir.join("README"), "overlays go here\n").unwrap();
    let config_file = dir.join("config.txt").display().to_string();
    let readme = dir.join("README").display().to_string();
    mtool(&["mcopy", "-i", &at, &config_file, "::/config.txt"]);
    mtool(&["mmd", "-i", &at, "::/overlays"]);
    mtool(&["mcopy", "-i", &at, &readme, "::/overlays/README"]);
}

/// Two disk images (GPT, then MBR) that differ in one line of one file of a FAT partition:
/// the diff names the partition, the filesystem, the file and the line, not an offset in
/// the image; identical images have no difference.
#[test]
fn an_image_diff_names_the_partition_the_file_and_the_line() {
    if !crate::common::command_available("mformat") {
        if std::env::var_os("KSBUILD_REQUIRE_QEMU").is_some() {
            panic!("mtools is required (.ci/install-nix installs it)");
        }
        eprintln!("SKIP: mtools is not installed");
        return;
    }
    let tmp = crate::common::scratch();
    for gpt in [true, false] {
        let scheme = if gpt { "gpt" } else { "mbr" };
        let dir = tmp.path().join(scheme);
        fs::create_dir_all(dir.join("a")).unwrap();
        fs::create_dir_all(dir.join("b")).unwrap();
        let (a, b) = (dir.join("a/sdcard.img"), dir.join("b/sdcard.img"));
        disk_image(
            &a,
            gpt,
            "arm_64bit=1\nkernel=kernel8.img\nos_prefix=slot-a/\n",
        );
        disk_image(
            &b,
            gpt,
            "arm_64bit=1\nkernel=kernel8.img\nos_prefix=slot-b/\n",
        );
        let out = run(crate::common::ksbuild(&tmp.path().join("st"))
            .args(["diff", "--json"])
            .arg(&a)
            .arg(&b));
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let diffs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let first = &diffs[0];
        // GPT names the partition; on MBR the name is the FAT volume label.
        let name = "p1 KSOBOOTA (FAT12)";
        assert_eq!(
            first["path"],
            format!("sdcard.img › {name} › /config.txt: line 3"),
            "{scheme}: {diffs}"
        );
        assert_eq!(diffs.as_array().unwrap().len(), 1, "{scheme}: {diffs}");
        let text = run(crate::common::ksbuild(&tmp.path().join("st"))
            .arg("diff")
            .arg(&a)
            .arg(&b));
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.starts_with(&format!(
                "sdcard.img › {name} › /config.txt: line 3: content from byte"
            )),
            "{text}"
        );
        let same = run(crate::common::ksbuild(&tmp.path().join("st"))
            .arg("diff")
            .arg(&a)
            .arg(&a));
        assert!(same.status.success() && same.stdout.is_empty());
    }
}

/// Whether diffoscope is installed; in CI (`KSBUILD_REQUIRE_NETWORK`, which installs the
/// Debian packages the tests use) its absence is a failure.
fn skip_without_diffoscope() -> bool {
    if crate::common::command_available("diffoscope") {
        return false;
    }
    if std::env::var_os("KSBUILD_REQUIRE_NETWORK").is_some() {
        panic!("diffoscope is required (KSBUILD_REQUIRE_NETWORK is set): apt-get install diffoscope-minimal (.ci/install-nix installs it)");
    }
    eprintln!("SKIP: diffoscope is not installed (apt-get install diffoscope-minimal)");
    true
}

/// `--diffoscope` without diffoscope is a usage error naming the package; with it, `ksbuild
/// diff` of two differing store outputs and `ksbuild check` of a non-reproducible one
/// carry what diffoscope says of the differing file (in the JSON and the text).
#[test]
fn diffoscope_output_is_attached_to_a_difference() {
    if skip_without_busybox() {
        return;
    }
    let files = [
        drv("one", "echo 'greeting=hello one' > $out"),
        drv("two", "echo 'greeting=hello two' > $out"),
        drv(
            "uuid",
            "echo \"id=$(cat /proc/sys/kernel/random/uuid)\" > $out",
        ),
    ];
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let p = Project::new(&files);
    let paths = run_ok(p.ks("st").args(["realise", "--no-link", "one", "two"]));
    let paths: Vec<&str> = paths.lines().collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    let out = run(p.ks("st").env("PATH", "/nonexistent").args([
        "diff",
        "--diffoscope",
        paths[0],
        paths[1],
    ]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing compared");
    assert!(
        stderr.contains("needs `diffoscope` on PATH")
            && stderr.contains("apt-get install diffoscope-minimal"),
        "{stderr}"
    );
    if skip_without_diffoscope() {
        return;
    }
    let out = run(p
        .ks("st")
        .args(["diff", "--json", "--diffoscope", paths[0], paths[1]]));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = d[0]["diffoscope"].as_str().unwrap_or_else(|| panic!("{d}"));
    // diffoscope's unified diff of the two files: both lines, marked.
    assert!(
        text.contains("-greeting=hello one") && text.contains("+greeting=hello two"),
        "{text}"
    );
    let plain = run(p
        .ks("st")
        .args(["diff", "--diffoscope", paths[0], paths[1]]));
    let plain = String::from_utf8_lossy(&plain.stdout);
    assert!(
        plain.contains("diffoscope:") && plain.contains("+greeting=hello two"),
        "{plain}"
    );
    // Without the flag, no diffoscope key.
    let out = run(p.ks("st").args(["diff", "--json", paths[0], paths[1]]));
    let d: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(d[0].get("diffoscope").is_none(), "{d}");
    let out = run(p.ks("st").args(["check", "--json", "--diffoscope", "uuid"]));
    assert_eq!(out.status.code(), Some(104));
    let v = verdict(&out);
    let text = v["derivations"][0]["outputs"][0]["differences"][0]["diffoscope"]
        .as_str()
        .unwrap_or_else(|| panic!("{v}"));
    assert!(text.contains("-id=") && text.contains("+id="), "{text}");
}

/// `--against URL` compares a build here with what a binary cache says of it (Guix's
/// `challenge`): a reproducible target matches the cache a build elsewhere was pushed to,
/// a non-reproducible one exits 104, and a target the cache lacks fails before building,
/// naming the push command.
#[test]
fn against_a_binary_cache_compares_with_a_build_made_elsewhere() {
    if skip_without_busybox() {
        return;
    }
    let mut files = vec![
        drv(
            "uuid",
            "echo \"id=$(cat /proc/sys/kernel/random/uuid)\" > $out",
        ),
        drv("unpublished", "echo never pushed > $out"),
    ];
    files.extend(GRAPH.iter().map(|(a, b)| (a.to_string(), b.to_string())));
    let files: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let p = Project::new(&files);
    let cache = format!("file://{}", p.scratch.join("cache").display());
    // Built and published from one store ...
    let out = run(p.ks("elsewhere").args([
        "cache",
        "push",
        "--compression",
        "none",
        "--to",
        &cache,
        "c",
        "uuid",
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ... checked from another: one build here, compared with the cache's NarHash.
    let out = run(p
        .ks("here")
        .args(["check", "--json", "--against", &cache, "c"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let d = &verdict(&out)["derivations"][0];
    assert_eq!(d["record"]["status"], "matches", "{d}");
    assert_eq!(d["against"], cache.trim_end_matches('/'), "{d}");
    assert_eq!(d["builds"], 1, "{d}");
    assert!(stderr.contains("not signed by a trusted key"), "{stderr}");
    let out = run(p
        .ks("here")
        .args(["check", "--json", "--against", &cache, "uuid"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(104), "{stderr}");
    let d = &verdict(&out)["derivations"][0];
    assert_eq!(d["record"]["status"], "differs", "{d}");
    assert!(stderr.contains("NOT as `file://"), "{stderr}");
    // What the cache lacks is told before anything is built.
    let out = run(p
        .ks("here")
        .args(["check", "--against", &cache, "unpublished"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("has no narinfo for") && stderr.contains("ksbuild cache push --to"),
        "{stderr}"
    );
    assert!(!stderr.contains("building `unpublished`"), "{stderr}");
}
