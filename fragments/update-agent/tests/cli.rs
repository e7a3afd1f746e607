//! The binary's edge: exit codes, `--help`, the `kubesolo-update: ` prefix, and
//! `status --json` on stdout, against a GRUB system in a temp dir (KUBESOLO_UPDATE_ROOT).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Root(PathBuf);

impl Drop for Root {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

fn grub_root(name: &str) -> Root {
    let root = std::env::temp_dir().join(format!(
        "kubesolo-update-cli-{}-{}",
        std::process::id(),
        name
    ));
    let _ = fs::remove_dir_all(&root);
    write(&root, "proc/cmdline", b"console=ttyS0 kubesolo.slot=A\n");
    write(&root, "etc/os-release", b"VERSION_ID=\"2026.1\"\n");
    write(
        &root,
        "slots/esp/EFI/BOOT/grubenv",
        include_bytes!("../src/testdata/image.grubenv"),
    );
    fs::create_dir_all(root.join("slots/A")).unwrap();
    fs::create_dir_all(root.join("slots/B")).unwrap();
    Root(root)
}

fn run(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubesolo-update"))
        .args(args)
        .env("KUBESOLO_UPDATE_ROOT", root)
        .output()
        .unwrap()
}

#[test]
fn status_json_goes_to_stdout() {
    let root = grub_root("json");
    let out = run(&root.0, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(text.starts_with("{\"boot\":\"grub\""), "{}", text);
    assert!(
        text.contains(
            "\"running_version\":\"2026.1\",\"booted\":\"A\",\"active\":\"A\",\"tentative\":false"
        ),
        "{}",
        text
    );
    assert!(
        text.contains(
            "\"grub\":{\"active_slot\":\"A\",\"boot_counter\":\"3\",\"boot_success\":\"1\"}"
        ),
        "{}",
        text
    );
    assert!(text.contains("\"pending\":null"), "{}", text);
    assert!(text.contains("\"problems\":[]"), "{}", text);
}

#[test]
fn exit_codes_help_and_prefix() {
    let root = grub_root("usage");
    let r = &root.0;
    for bad in [
        &["frobnicate"][..],
        &["apply"],
        &["status", "--bogus"],
        &[],
        &["rollback", "x"],
    ] {
        let out = run(r, bad);
        assert_eq!(out.status.code(), Some(2), "{:?}", bad);
        assert!(
            String::from_utf8_lossy(&out.stderr).starts_with("kubesolo-update: "),
            "{:?}",
            bad
        );
    }
    for c in ["status", "apply", "healthcheck", "rollback", "reboot"] {
        let out = run(r, &[c, "--help"]);
        assert_eq!(out.status.code(), Some(0));
        assert!(String::from_utf8_lossy(&out.stdout)
            .starts_with(&format!("usage: kubesolo-update {}", c)));
        let out = run(r, &["help", c]);
        assert_eq!(out.status.code(), Some(0));
    }
    let out = run(r, &["apply", "/nonexistent.tar"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("kubesolo-update: error: ") && err.contains("/nonexistent.tar"),
        "{}",
        err
    );
    let out = run(r, &["status"]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().count() >= 5 && text.lines().all(|l| l.starts_with("kubesolo-update: ")),
        "{}",
        text
    );
    // No kubesolo process in this root: unhealthy, not on trial, so no reboot.
    write(r, "etc/kubesolo/update.conf", b"health-timeout = 0\n");
    let out = run(r, &["healthcheck"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unhealthy: no process `kubesolo`"));
    assert!(!r.join("reboot-requested").exists());
}

/// Two agents at once (the init's health check and an apply from KubeSolo) would mount the
/// same partitions at the same places: the second waits for the first's lock, saying so.
/// Here a `rollback` starts while another process (a `flock` holding the lock for 1.5 s)
/// has it: it waits, then does its work.
#[test]
fn a_second_agent_waits_for_the_first() {
    let root = grub_root("lock");
    fs::create_dir_all(root.0.join("run/kubesolo-update")).unwrap();
    let lock = root.0.join("run/kubesolo-update/lock");
    let mut holder = Command::new("flock")
        .arg(&lock)
        .args(["sleep", "1.5"])
        .spawn()
        .expect("flock(1) from util-linux");
    // Until flock holds it.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let start = std::time::Instant::now();
    let out = run(&root.0, &["rollback"]);
    let waited = start.elapsed();
    holder.wait().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("waiting for another kubesolo-update"),
        "{}",
        text
    );
    assert!(
        waited >= std::time::Duration::from_millis(900),
        "{:?}",
        waited
    );
}
