//! A/B updates end to end under QEMU: an image built by ksbuild boots slot A; an update
//! bundle built by ksbuild (from a project whose os-release says a newer version) and
//! signed by `ksbuild bundle sign` is attached as a second virtio disk; the image's
//! KubeSolo stand-in applies it with `kubesolo-update apply` and reboots; the machine comes
//! up on slot B with the new version, the health check commits it (grubenv read back from
//! the image), and the next boot stays on B. A bundle whose system never gets healthy is
//! tried three times, then GRUB falls back and the old slot reports the failed update.
//! Refused bundles (bad signature, wrong architecture, truncated) change nothing.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use crate::images::{
    boot, get_grubenv, partitions, pin_kubesolo, qemu, realise, uefi, writable_copy, LIMIT,
};
use ksbuild::vm::{Arch, Machine};

/// The stand-in KubeSolo of these tests. Each further disk (`/dev/vdb`, `/dev/vdc`, …: update
/// bundles) it has not tried yet, it applies in turn, and reboots after the first that
/// applies; otherwise it stays up until the update agent's health check has finished, prints
/// `kubesolo-update status` and powers off.
const STANDIN: &str = "#!/bin/sh\n\
echo \"KUBESOLO-STANDIN running: version=$(. /etc/os-release; echo $VERSION_ID)\"\n\
for disk in /dev/vdb /dev/vdc /dev/vdd; do\n\
  [ -b $disk ] || break\n\
  mark=/var/lib/kubesolo/standin-applied-$(head -c 4096 $disk | sha256sum | cut -c1-12)\n\
  [ -e \"$mark\" ] && continue\n\
  : > \"$mark\"; sync\n\
  if kubesolo-update apply $disk; then echo KUBESOLO-STANDIN applied; sync; reboot -f; fi\n\
  echo \"KUBESOLO-STANDIN apply refused: $disk\"\n\
done\n\
i=0\n\
while [ $i -lt 240 ] && [ ! -e /run/kubesolo-update/healthcheck.done ]; do sleep 0.5; i=$((i+1)); done\n\
kubesolo-update status\n\
sync\n\
poweroff -f\n";

/// The stand-in of a broken release: it dies at once, so the system is never healthy.
const BROKEN: &str = "#!/bin/sh\necho KUBESOLO-STANDIN broken, exiting\nexit 1\n";

/// One track under test.
struct Track {
    image: &'static str,
    image_file: &'static str,
    bundle: &'static str,
    kubesolo: &'static str,
    arch: Arch,
}

const X86_64: Track = Track {
    image: "disk-image@small",
    image_file: "disk.img",
    bundle: "update-bundle@small",
    kubesolo: "kubesolo-x86_64",
    arch: Arch::X86_64,
};

const ARM64: Track = Track {
    image: "disk-image-arm64@small",
    image_file: "disk.img",
    bundle: "update-bundle-arm64@small",
    kubesolo: "kubesolo-arm64",
    arch: Arch::Aarch64,
};

/// The Raspberry Pi track: only its bundle is built here (QEMU cannot run the Pi firmware).
const RPI: Track = Track {
    image: "rpi-image@small",
    image_file: "sdcard.img",
    bundle: "update-bundle-rpi@small",
    kubesolo: "kubesolo-arm64",
    arch: Arch::Aarch64,
};

/// The key pair `name` made from a fixed seed, its secret in `dir`: every update test signs
/// with (and bakes into its images) the same key, so the images and bundles they build are
/// the same derivations and are built once per store.
fn test_key(dir: &Path, name: &str, seed: u8) -> (PathBuf, String) {
    let key = ksbuild::compat::signing::SecretKey::from_seed(name, [seed; 32]).unwrap();
    let secret = dir.join(format!("{name}.sec"));
    fs::write(&secret, key.to_key_file()).unwrap();
    (secret, key.to_public().to_key_file())
}

/// A copy of the project in `dir` with `kubesolo` as the track's KubeSolo, the public key
/// `public` trusted by the images, and `version` in os-release.
fn project(
    dir: &Path,
    store: &Path,
    track: &Track,
    kubesolo: &str,
    public: &str,
    version: &str,
) -> PathBuf {
    let proj = crate::images::copy_project(dir);
    pin_kubesolo(
        store,
        &proj,
        &dir.join("standin"),
        track.kubesolo,
        kubesolo.as_bytes(),
    );
    let keys = proj.join("fragments/update-keys");
    fs::create_dir_all(&keys).unwrap();
    fs::write(keys.join("test-update-1.pub"), format!("{public}\n")).unwrap();
    let os_release = proj.join("fragments/kubesolo-init/etc/os-release");
    let text = fs::read_to_string(&os_release).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("VERSION_ID=") {
                format!("VERSION_ID={version}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    fs::write(&os_release, text).unwrap();
    proj
}

/// A signed bundle of `proj`'s track at `dir/NAME.tar`.
fn signed_bundle(
    store: &Path,
    proj: &Path,
    track: &Track,
    secret: &Path,
    dir: &Path,
    name: &str,
) -> Option<PathBuf> {
    let out = realise(store, proj, track.bundle, &[])?;
    let signed = dir.join(format!("{name}.tar"));
    run_ok(
        ksbuild(store)
            .args(["bundle", "sign", "--key"])
            .arg(secret)
            .arg(out.join("bundle.tar"))
            .arg("-o")
            .arg(&signed),
    );
    Some(signed)
}

/// The machine (`ksbuild vm`'s): the image, and the bundle as a second (read-only) virtio
/// disk.
fn args(track: &Track, image: &Path, bundle: Option<&Path>) -> Machine {
    args_with(track, image, bundle.as_slice())
}

/// The machine (`ksbuild vm`'s): the image, and each bundle as a further (read-only) virtio
/// disk, in order.
fn args_with(track: &Track, image: &Path, bundles: &[&Path]) -> Machine {
    uefi(track.arch, image).with_extra(bundles.iter().flat_map(|b| {
        [
            "-drive".to_string(),
            format!("file={},format=raw,if=virtio,readonly=on", b.display()),
        ]
    }))
}

fn booted_line(log: &str) -> &str {
    log.lines()
        .find(|l| l.contains("KUBESOLO-OS BOOT OK"))
        .unwrap_or_else(|| panic!("no success line:\n{log}"))
}

/// `fallback`: also apply a broken release and see GRUB fall back (the boot loader's logic is
/// the same script on every GRUB track; x86_64 runs it, arm64 skips its five boots).
fn update_end_to_end(track: &Track, fallback: bool) {
    let tmp = scratch();
    let store = kernel_store();
    let (secret, public) = test_key(tmp.path(), "test-update-1", 1);
    let v1 = project(
        &tmp.path().join("v1"),
        &store,
        track,
        STANDIN,
        &public,
        "2026.12.0",
    );
    let Some(out) = realise(&store, &v1, track.image, &[]) else {
        return;
    };
    let v2 = project(
        &tmp.path().join("v2"),
        &store,
        track,
        STANDIN,
        &public,
        "2026.12.1",
    );
    let Some(good) = signed_bundle(&store, &v2, track, &secret, tmp.path(), "good") else {
        return;
    };
    if !qemu(track.arch.program()) {
        return;
    }
    let esp = partitions(&out)[0].2;
    let image = writable_copy(&out.join(track.image_file), tmp.path());

    // Slot A applies the bundle and reboots.
    let log = boot(&args(track, &image, Some(&good)), LIMIT);
    assert!(booted_line(&log).contains("slot=A"), "{log}");
    assert!(log.contains("KUBESOLO-STANDIN applied"), "{log}");
    // The cost of apply inside QEMU (TCG), for the record.
    let cost = log
        .lines()
        .find(|l| l.starts_with("kubesolo-update: applied in "))
        .unwrap_or_else(|| panic!("apply reported no cost:\n{log}"));
    eprintln!(
        "{} ({} bytes of bundle): {cost}",
        track.bundle,
        fs::metadata(&good).unwrap().len()
    );
    let env = get_grubenv(&image, esp);
    assert!(
        env.contains("active_slot=B\n")
            && env.contains("boot_counter=3\n")
            && env.contains("boot_success=0\n"),
        "{env}"
    );
    assert_eq!(get_grubenv(&image, esp).len(), 1024);
    // Slot B comes up with the new version, and the health check commits it.
    let log = boot(&args(track, &image, Some(&good)), LIMIT);
    let line = booted_line(&log);
    assert!(
        line.contains("slot=B") && line.contains("version=2026.12.1"),
        "{log}"
    );
    assert!(log.contains("kubesolo-update: committed"), "{log}");
    let env = get_grubenv(&image, esp);
    assert!(
        env.contains("active_slot=B\n") && env.contains("boot_success=1\n"),
        "{env}"
    );
    // And stays there.
    let log = boot(&args(track, &image, None), LIMIT);
    assert!(booted_line(&log).contains("slot=B"), "{log}");

    if !fallback {
        return;
    }
    let v3 = project(
        &tmp.path().join("v3"),
        &store,
        track,
        BROKEN,
        &public,
        "2026.12.2",
    );
    let Some(broken) = signed_bundle(&store, &v3, track, &secret, tmp.path(), "broken") else {
        return;
    };
    // A broken release, applied from B into A: three boots on A, then GRUB falls back to B,
    // which reports the failed update.
    let log = boot(&args(track, &image, Some(&broken)), LIMIT);
    assert!(log.contains("KUBESOLO-STANDIN applied"), "{log}");
    for left in ["2", "1", "0"] {
        let log = boot(&args(track, &image, None), LIMIT);
        assert!(
            log.contains("GRUB: booting slot A") && log.contains(&format!("boot_counter={left} ")),
            "{log}"
        );
        assert!(log.contains("KUBESOLO-STANDIN broken"), "{log}");
    }
    let log = boot(&args(track, &image, None), LIMIT);
    assert!(
        log.contains("GRUB: slot A failed three boots, falling back"),
        "{log}"
    );
    assert!(booted_line(&log).contains("slot=B"), "{log}");
    assert!(
        log.contains("failed") && log.contains("2026.12.2"),
        "status reports the failed update:\n{log}"
    );
}

/// x86_64: update to B, commit, stay; a broken update falls back.
#[test]
fn x86_64_updates_to_slot_b_commits_and_falls_back_from_a_broken_update() {
    update_end_to_end(&X86_64, true);
}

/// Generic arm64 under AAVMF: update to B, commit, stay (the fallback is x86_64's test).
#[test]
fn arm64_updates_to_slot_b_and_commits() {
    update_end_to_end(&ARM64, false);
}

/// Bundles the agent must refuse leave the machine as it was: a bundle signed by a key the
/// image does not trust, one for another architecture, one cut short. Checked on the
/// running system: it applies each, fails, and boots slot A again.
#[test]
fn refused_bundles_change_nothing() {
    let track = &X86_64;
    let tmp = scratch();
    let store = kernel_store();
    let (trusted, public) = test_key(tmp.path(), "test-update-1", 1);
    let (other, _) = test_key(tmp.path(), "test-other", 2);
    let v1 = project(
        &tmp.path().join("v1"),
        &store,
        track,
        STANDIN,
        &public,
        "2026.12.0",
    );
    let Some(out) = realise(&store, &v1, track.image, &[]) else {
        return;
    };
    let v2 = project(
        &tmp.path().join("v2"),
        &store,
        track,
        STANDIN,
        &public,
        "2026.12.1",
    );
    let Some(untrusted) = signed_bundle(&store, &v2, track, &other, tmp.path(), "untrusted") else {
        return;
    };
    // Another architecture's bundle (the Pi's: its small kernel is built for the other tests).
    let v2arm = project(
        &tmp.path().join("v2arm"),
        &store,
        &RPI,
        STANDIN,
        &public,
        "2026.12.1",
    );
    let Some(arm) = signed_bundle(&store, &v2arm, &RPI, &trusted, tmp.path(), "arm") else {
        return;
    };
    let Some(good) = signed_bundle(&store, &v2, track, &trusted, tmp.path(), "good") else {
        return;
    };
    let truncated = tmp.path().join("truncated.tar");
    let bytes = fs::read(&good).unwrap();
    fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).unwrap();
    if !qemu(track.arch.program()) {
        return;
    }
    let esp = partitions(&out)[0].2;
    let image = writable_copy(&out.join(track.image_file), tmp.path());
    let before = get_grubenv(&image, esp);
    let slot_b = partitions(&out)[2].2;
    let slot_b_bytes = |img: &Path| -> Vec<u8> {
        let mut f = fs::File::open(img).unwrap();
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(slot_b)).unwrap();
        let mut b = vec![0u8; 4 << 20];
        std::io::Read::read_exact(&mut f, &mut b).unwrap();
        b
    };
    let b_before = slot_b_bytes(&image);
    // One boot tries all three, in order (`/dev/vdb`, `/dev/vdc`, `/dev/vdd`).
    let refused = [
        (
            &untrusted,
            "is signed by key `test-other`, which is not trusted",
        ),
        (
            &arm,
            "the bundle is for arch `aarch64`, this system is `x86_64`",
        ),
        // Cut inside a file or before one.
        (&truncated, "truncated"),
    ];
    let disks: Vec<&Path> = refused.iter().map(|(b, _)| b.as_path()).collect();
    let log = boot(&args_with(track, &image, &disks), LIMIT);
    assert!(!log.contains("KUBESOLO-STANDIN applied"), "{log}");
    for ((_, why), disk) in refused.iter().zip(["/dev/vdb", "/dev/vdc", "/dev/vdd"]) {
        assert!(
            log.contains(&format!("KUBESOLO-STANDIN apply refused: {disk}")),
            "{why}:\n{log}"
        );
        assert!(
            log.lines()
                .any(|l| l.starts_with("kubesolo-update: ") && l.contains(why)),
            "the refusal names why ({why}):\n{log}"
        );
    }
    assert_eq!(get_grubenv(&image, esp), before, "grubenv changed");
    assert!(slot_b_bytes(&image) == b_before, "slot B was written");
    // And the system still comes up on slot A.
    assert!(booted_line(&log).contains("slot=A"), "{log}");
}

/// The Raspberry Pi's boot environment, which QEMU cannot run (no VideoCore firmware, no
/// tryboot): the agent built for the images runs on the host in its test mode against the
/// partitions of a copy of `rpi-image@small` (slots and control partition copied out with
/// mtools, device-tree stand-ins for the firmware's `partition` and `tryboot` cells). Apply
/// writes Boot B with the signed bundle and points `[tryboot]` at it; a tryboot boot from B
/// that is healthy commits by swapping the partitions; `rollback` points back at A. Each
/// `autoboot.txt` is written back into the image copy and read again from it.
#[test]
fn the_pi_boot_environment_applies_commits_and_rolls_back_on_a_copy_of_rpi_image() {
    let track = &RPI;
    let tmp = scratch();
    let store = kernel_store();
    let (secret, public) = test_key(tmp.path(), "test-update-1", 1);
    let v1 = project(
        &tmp.path().join("v1"),
        &store,
        track,
        STANDIN,
        &public,
        "2026.12.0",
    );
    let Some(out) = realise(&store, &v1, track.image, &[]) else {
        return;
    };
    let Some(agent) = realise(&store, &v1, "update-agent", &[]) else {
        return;
    };
    let agent = agent.join("bin/kubesolo-update");
    let v2 = project(
        &tmp.path().join("v2"),
        &store,
        track,
        STANDIN,
        &public,
        "2026.12.1",
    );
    let Some(bundle) = signed_bundle(&store, &v2, track, &secret, tmp.path(), "rpi") else {
        return;
    };
    let image = writable_copy(&out.join(track.image_file), tmp.path());
    let parts = partitions(&out);
    let root = tmp.path().join("root");
    for (name, part) in [("control", 0), ("A", 1), ("B", 2)] {
        let dir = root.join("slots").join(name);
        fs::create_dir_all(&dir).unwrap();
        run_ok(
            crate::images::mtools("mcopy", &image, parts[part].2)
                .args(["-s", "-n", "::*"])
                .arg(&dir),
        );
    }
    let write = |rel: &str, bytes: &[u8]| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, bytes).unwrap();
    };
    // The machine booted partition 2 (Boot A) normally.
    let firmware = |partition: u32, tryboot: u32, boot: &str, version: &str, cmdline_of: &str| {
        write(
            "proc/device-tree/chosen/bootloader/partition",
            &partition.to_be_bytes(),
        );
        write(
            "proc/device-tree/chosen/bootloader/tryboot",
            &tryboot.to_be_bytes(),
        );
        write("proc/sys/kernel/random/boot_id", boot.as_bytes());
        let cmdline = fs::read(root.join("slots").join(cmdline_of).join("cmdline.txt")).unwrap();
        write("proc/cmdline", &cmdline);
        write(
            "etc/os-release",
            format!("NAME=\"KubeSolo OS\"\nVERSION_ID={version}\n").as_bytes(),
        );
    };
    write("proc/sys/kernel/arch", b"aarch64\n");
    write("proc/4242/comm", b"kubesolo\n");
    write("usr/share/kubesolo-update/keys/test.pub", public.as_bytes());
    write("etc/kubesolo/update.conf", b"health-timeout = 5\n");
    fs::create_dir_all(root.join("mnt/data")).unwrap();
    firmware(2, 0, "boot-1", "2026.12.0", "A");
    let agent_run = |args: &[&str]| {
        let out = run(Command::new(&agent)
            .args(args)
            .env("KUBESOLO_UPDATE_ROOT", &root));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "kubesolo-update {args:?}:\n{text}");
        text
    };
    // autoboot.txt back into the image, then read from the image.
    let autoboot_in_image = || {
        run_ok(
            crate::images::mtools("mcopy", &image, parts[0].2)
                .arg("-o")
                .arg(root.join("slots/control/autoboot.txt"))
                .arg("::/autoboot.txt"),
        );
        run_ok(crate::images::mtools("mtype", &image, parts[0].2).arg("::/autoboot.txt"))
    };
    let initial = "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n";
    assert_eq!(autoboot_in_image(), initial);

    let text = agent_run(&["apply", bundle.to_str().unwrap()]);
    assert!(text.contains("kubesolo-update: "), "{text}");
    // Boot B now holds the bundle's files, its cmdline naming slot B.
    let manifest = run_ok(
        ksbuild(&store)
            .args(["bundle", "verify", "--key", public.trim()])
            .arg(&bundle),
    );
    for line in manifest.lines().filter_map(|l| l.strip_prefix("file=")) {
        let name = line.splitn(3, ' ').nth(2).unwrap();
        assert!(
            root.join("slots/B").join(name).is_file(),
            "slot B lacks {name}"
        );
    }
    // The bundle's cmdline.txt names no slot (the init asks the firmware); never A's.
    let cmdline_b = fs::read_to_string(root.join("slots/B/cmdline.txt")).unwrap();
    assert!(
        cmdline_b.contains("kubesolo.data=LABEL=KSOLODATA")
            && !cmdline_b.contains("kubesolo.slot=A"),
        "{cmdline_b}"
    );
    let after_apply = autoboot_in_image();
    assert!(
        after_apply.contains("[all]\ntryboot_a_b=1\nboot_partition=2\n")
            && after_apply.contains("[tryboot]\nboot_partition=3\n"),
        "{after_apply}"
    );
    agent_run(&["reboot"]);
    assert_eq!(
        fs::read_to_string(root.join("reboot-requested"))
            .unwrap()
            .trim(),
        "0 tryboot"
    );
    // The firmware tried Boot B: healthy, so the agent commits by swapping the partitions.
    firmware(3, 1, "boot-2", "2026.12.1", "B");
    let text = agent_run(&["healthcheck"]);
    assert!(text.contains("committed slot B"), "{text}");
    let committed = autoboot_in_image();
    assert!(
        committed.contains("boot_partition=3\n[tryboot]\nboot_partition=2\n"),
        "{committed}"
    );
    let status = agent_run(&["status", "--json"]);
    assert!(status.contains("2026.12.1"), "{status}");
    // A normal boot of B; rollback makes A the next boot.
    firmware(3, 0, "boot-3", "2026.12.1", "B");
    agent_run(&["rollback"]);
    let rolled = autoboot_in_image();
    assert!(
        rolled.contains("[all]\ntryboot_a_b=1\nboot_partition=2\n"),
        "{rolled}"
    );
}
