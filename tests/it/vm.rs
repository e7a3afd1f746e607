//! `ksbuild vm` beyond the boots of `images::` (which boot each image with `--expect`): a
//! slot chosen with `--slot B`, the state kept in `--dir` between runs, `--timeout`'s exit,
//! a folder holding a copy of another image (refused, then replaced with `--fresh`), and
//! what is missing or not bootable named. One boot, of the small x86_64 image from the
//! shared kernel store.

use std::path::Path;
use std::process::Command;

use crate::common::{kernel_store, run, scratch};
use crate::images::{get_grubenv, partitions, project, qemu, realise, vm};

/// A file of the ext4 filesystem at `offset` of `image` (`debugfs`), `None` if missing.
fn ext4_file(image: &Path, offset: u64, path: &str) -> Option<String> {
    let out = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(format!("{}?offset={offset}", image.display())));
    assert!(out.status.success(), "debugfs: {out:?}");
    if String::from_utf8_lossy(&out.stderr).contains("File not found") {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn vm_boots_slot_b_keeps_its_state_in_dir_and_names_what_stops_it() {
    let tmp = scratch();
    let store = kernel_store();
    let proj = project(tmp.path(), &store);
    let (Some(out), Some(arm64)) = (
        realise(&store, &proj, "disk-image@small", &[]),
        realise(&store, &proj, "disk-image-arm64@small", &[]),
    ) else {
        return;
    };
    if !qemu("qemu-system-x86_64") {
        return;
    }
    let parts = partitions(&out);
    let (esp, data) = (parts[0].2, parts[3].2);
    let dir = tmp.path().join("vm");
    let dir_arg = dir.to_str().unwrap();
    let copy = dir.join("disk.img");

    // Slot B, on a copy made in the folder; the stand-in syncs and powers off: exit 0.
    let (code, console, err) = vm(
        &store,
        &proj,
        "disk-image@small",
        &["--dir", dir_arg, "--slot", "B", "--timeout", "240"],
    );
    assert_eq!(code, Some(0), "{err}\n{console}");
    assert!(err.contains("slot B, on a new copy in"), "{err}");
    assert!(console.contains("GRUB: booting slot B"), "{console}");
    crate::images::assert_booted(&console, "x86_64", "B", "/dev/vda4");
    // The host name the first boot generated, kept on the data partition of the copy.
    let line = console
        .lines()
        .find(|l| l.contains("[60-hostname] hostname: ") && l.contains("(generated)"))
        .unwrap_or_else(|| panic!("no generated host name:\n{console}"));
    let name = line
        .split("hostname: ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    assert_eq!(
        ext4_file(&copy, data, "/etc/kubesolo/hostname").as_deref(),
        Some(format!("{name}\n").as_str())
    );
    assert!(get_grubenv(&copy, esp).contains("active_slot=B\n"));

    // A second run in the folder boots the same copy (its slot and data kept) until
    // `--timeout` stops it: exit 124.
    let (code, _, err) = vm(
        &store,
        &proj,
        "disk-image@small",
        &["--dir", dir_arg, "--timeout", "3"],
    );
    assert_eq!(code, Some(124), "{err}");
    assert!(
        err.contains("slot B, on the copy kept in") && err.contains("`--timeout 3` passed"),
        "{err}"
    );
    assert_eq!(
        ext4_file(&copy, data, "/etc/kubesolo/hostname").as_deref(),
        Some(format!("{name}\n").as_str())
    );

    // The folder holds a copy of another image than the target's now: refused, named, and
    // the copy left as it was; `--fresh` replaces it.
    let held = format!(
        "/nix/store/{}/disk.img",
        out.file_name().unwrap().to_string_lossy()
    );
    let wanted = format!(
        "/nix/store/{}/disk.img",
        arm64.file_name().unwrap().to_string_lossy()
    );
    let (code, _, err) = vm(&store, &proj, "disk-image-arm64@small", &["--dir", dir_arg]);
    assert_eq!(code, Some(1), "{err}");
    for want in [held.as_str(), wanted.as_str(), "`--fresh` replaces it"] {
        assert!(err.contains(want), "`{want}` missing in:\n{err}");
    }
    assert!(get_grubenv(&copy, esp).contains("active_slot=B\n"));
    let (code, _, err) = vm(
        &store,
        &proj,
        "disk-image-arm64@small",
        &["--dir", dir_arg, "--fresh", "--timeout", "1"],
    );
    assert_eq!(code, Some(124), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.join("image.origin")).unwrap(),
        format!("{wanted}\n")
    );

    // No QEMU on PATH: the program and its Debian package are named, nothing is copied.
    let empty = tmp.path().join("empty-path");
    std::fs::create_dir(&empty).unwrap();
    let out = run(crate::common::ksbuild(&store)
        .env("PATH", &empty)
        .arg("--project")
        .arg(&proj)
        .args(["vm", "disk-image@small", "--dir"])
        .arg(tmp.path().join("never")));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("`qemu-system-x86_64` (Debian package `qemu-system-x86`) not installed")
            && err.contains("apt-get install qemu-system-x86"),
        "{err}"
    );
    assert!(!tmp.path().join("never").exists());

    // A target that is no image: what is bootable is named.
    let (code, _, err) = vm(&store, &proj, "rootfs-x86_64", &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("`rootfs-x86_64` (`/nix/store/")
            && err.contains("is not a bootable image")
            && err.contains("`disk.img`")
            && err.contains("`kubesolo.iso`"),
        "{err}"
    );
}
