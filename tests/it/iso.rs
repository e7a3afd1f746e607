//! The x86_64 live ISO (`iso@small`) and its data disk (`data-disk`): the hybrid layout (MBR,
//! GPT, ISO 9660, El Torito), and four QEMU boots that cover every path and every entry —
//! SeaBIOS from a CD (the default entry, after its 3 s countdown, onto the data disk; booted
//! by `ksbuild vm iso@small --dir`, which copies `data-disk` there), OVMF
//! from a CD (`kubesolo-nopersist`: the data disk attached but never mounted), OVMF from a
//! disk (`kubesolo-shell`, no data disk: RAM only, and a command typed into the shell),
//! SeaBIOS from a disk (`kubesolo-debug`). Entries are chosen as a user would, by their key in
//! the boot loader's menu on the serial console (isolinux's menu.c32, GRUB), typed only once
//! the menu's countdown is on the console. Bad input to the ISO's build is named. The image
//! tests' stand-in KubeSolo is pinned; the kernel store is shared with them.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{kernel_store, ksbuild, run, run_ok, scratch};
use crate::images::{assert_unchanged, project, qemu, realise, vm, writable_copy, LIMIT};
use ksbuild::vm::{Guest, IsoMedia, Machine};

/// The entries of both boot loaders' menus (the keys that boot them: k, d, s, n).
const ENTRIES: [&str; 4] = [
    "kubesolo",
    "kubesolo-debug",
    "kubesolo-shell",
    "kubesolo-nopersist",
];
/// What each boot loader prints once its menu is drawn and counting down.
const ISOLINUX_COUNTDOWN: &str = "Automatic boot in 3 seconds";
const GRUB_COUNTDOWN: &str = "automatically in 3s";
/// Where the data disk's ext4 starts (`partitions.txt` of `data-disk`).
const DATA_OFFSET: u64 = 1 << 20;

enum Firmware {
    SeaBios,
    Ovmf,
}

/// The ISO and the data disk realised in the shared kernel store from a copy of the project
/// in `dir` (returned third), or `None` (skipped).
fn realise_iso(dir: &Path) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let store = kernel_store();
    let proj = project(dir, &store);
    let iso = realise(&store, &proj, "iso@small", &[])?;
    let data = realise(&store, &proj, "data-disk", &[])?;
    Some((iso.join("kubesolo.iso"), data.join("data.img"), proj))
}

/// QEMU's arguments, as `ksbuild vm` makes them (`ksbuild::vm::Machine`): q35 under TCG,
/// the serial console on stdio, the ISO first in the boot order as a CD (read-only: the
/// store path itself) or as a virtio disk (as a USB stick would be), and the data disk if any.
fn machine(
    firmware: Firmware,
    cd: Option<&Path>,
    disk: Option<&Path>,
    data: Option<&Path>,
) -> Vec<String> {
    let (iso, media) = match (cd, disk) {
        (Some(cd), _) => (cd, IsoMedia::Cdrom),
        (None, Some(disk)) => (disk, IsoMedia::Disk),
        (None, None) => panic!("an ISO as a CD or as a disk"),
    };
    Machine::new(Guest::Iso {
        iso: iso.to_path_buf(),
        media,
        uefi: matches!(firmware, Firmware::Ovmf),
        data_disk: data.map(Path::to_path_buf),
    })
    .args()
}

/// Boots QEMU with `args`, typing on its serial console: for each `(wait, keys)` in turn,
/// `keys` once `wait` has appeared since the previous keys. Stops, as `images::boot` does,
/// when the guest powers off, halts, panics or fails a stage (or `limit` passes); kills QEMU
/// by its own PID. Returns the console's text and how many steps were typed.
fn boot_typing(args: &[String], steps: &[(&str, &str)], limit: Duration) -> (String, usize) {
    let dir = scratch();
    let log = dir.path().join("console.log");
    let mut child = Command::new("qemu-system-x86_64")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start qemu-system-x86_64: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let start = Instant::now();
    let (mut typed, mut from) = (0, 0);
    let text = loop {
        std::thread::sleep(Duration::from_millis(50));
        let mut bytes = Vec::new();
        fs::File::open(&log)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if let Some((wait, keys)) = steps.get(typed) {
            if plain(&String::from_utf8_lossy(&bytes[from..])).contains(wait) {
                stdin.write_all(keys.as_bytes()).unwrap();
                stdin.flush().unwrap();
                eprintln!("typed {keys:?} at {:.1}s", start.elapsed().as_secs_f64());
                from = bytes.len();
                typed += 1;
            }
        }
        let finished = ["reboot: Power down", "Kernel panic", "kubesolo-os: FAILED"]
            .iter()
            .any(|m| text.contains(m));
        if finished || child.try_wait().unwrap().is_some() || start.elapsed() > limit {
            break text;
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("boot took {:.1}s", start.elapsed().as_secs_f64());
    (text, typed)
}

/// The console's text without terminal control: escape sequences (a menu's colours and
/// cursor moves split its words), shift-in/out, carriage returns.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                Some('[') => {
                    for f in chars.by_ref() {
                        if ('@'..='~').contains(&f) {
                            break;
                        }
                    }
                }
                Some('%' | '(' | ')') => {
                    chars.next();
                }
                _ => {}
            },
            '\x0e' | '\x0f' | '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// The line of the init's stage `stage` (e.g. `20-persistent-data`) that contains `what`.
fn init_line<'a>(log: &'a str, stage: &str, what: &str) -> &'a str {
    let tag = format!("kubesolo-os: [{stage}] ");
    log.lines()
        .find(|l| l.contains(&tag) && l.contains(what))
        .unwrap_or_else(|| panic!("no `{tag}…{what}` line in:\n{log}"))
}

/// Every entry is in the menu the console shows.
fn assert_menu(log: &str) {
    for name in ENTRIES {
        assert!(log.contains(name), "the menu lacks `{name}`:\n{log}");
    }
}

/// The ISO's layout, then SeaBIOS boots it from a CD: the menu counts down from 3 s and
/// boots `kubesolo`, which mounts the data disk's `KSOLODATA` partition (the host name the
/// boot generated is on it afterwards).
#[test]
fn iso_from_a_bios_cd_boots_its_default_entry_onto_the_data_disk() {
    let tmp = scratch();
    let Some((iso, data, proj)) = realise_iso(tmp.path()) else {
        return;
    };
    let mut head = vec![0u8; 0x8800 + 64];
    fs::File::open(&iso).unwrap().read_exact(&mut head).unwrap();
    let size = fs::metadata(&iso).unwrap().len();
    assert_eq!(size % 2048, 0, "an ISO is whole 2 KiB sectors");
    // isohybrid MBR: partition 1 the whole ISO (active), partition 2 the EFI system image.
    assert_eq!(&head[510..512], &[0x55, 0xaa]);
    let entry = |i: usize| &head[446 + 16 * i..446 + 16 * (i + 1)];
    assert_eq!((entry(0)[0], entry(0)[4]), (0x80, 0x00));
    assert_eq!(entry(1)[4], 0xef);
    // The GPT Debian's ISOs carry too, and the ISO 9660 volume with its El Torito record.
    assert_eq!(&head[512..520], b"EFI PART");
    assert_eq!(&head[0x8000..0x8006], b"\x01CD001");
    assert_eq!(&head[0x8028..0x8030], b"KUBESOLO");
    assert_eq!(
        &head[0x8800..0x881e],
        b"\x00CD001\x01EL TORITO SPECIFICATION"
    );
    if !qemu("qemu-system-x86_64") {
        return;
    }
    // Through `ksbuild vm`, as a user boots it: the ISO as a CD under SeaBIOS, and the
    // `data-disk` target's disk copied into `--dir` on first use. It runs until the stand-in
    // has synced and powered off (the host name must be on the disk).
    let state = tmp.path().join("vm");
    let limit = LIMIT.as_secs().to_string();
    let (code, log, err) = vm(
        &kernel_store(),
        &proj,
        "iso@small",
        &[
            "--dir",
            state.to_str().unwrap(),
            "--timeout",
            &limit,
            "--expect",
            "KUBESOLO-OS BOOT OK",
            "--expect",
            "reboot: Power down",
        ],
    );
    assert_eq!(
        code,
        Some(0),
        "ksbuild vm iso@small:\n{err}\nconsole:\n{log}"
    );
    let data_copy = state.join("data.img");
    assert!(data_copy.exists(), "{err}");
    // Neither the ISO nor the data disk in the store was written.
    assert_unchanged(&kernel_store(), iso.parent().unwrap());
    assert_unchanged(&kernel_store(), data.parent().unwrap());
    let text = plain(&log);
    assert!(text.contains("ISOLINUX"), "{text}");
    assert!(text.contains(ISOLINUX_COUNTDOWN), "{text}");
    assert_menu(&text);
    init_line(
        &text,
        "10-cmdline",
        "slot=live debug=0 shell=0 nopersist=0 live=1",
    );
    init_line(
        &text,
        "20-persistent-data",
        "persistent data: /dev/vda1 on /mnt/data",
    );
    assert!(
        text.contains("KUBESOLO-OS BOOT OK arch=x86_64 ")
            && text.contains(" slot=live data=/dev/vda1 "),
        "{text}"
    );
    assert!(
        text.contains("KUBESOLO-STANDIN running: iptables=ok nft=ok data=1"),
        "{text}"
    );
    let hostname = init_line(&text, "60-hostname", "(generated)")
        .split_whitespace()
        .nth(3)
        .unwrap()
        .to_string();
    let stored = run_ok(
        Command::new("debugfs")
            .arg("-R")
            .arg("cat /etc/kubesolo/hostname")
            .arg(format!("{}?offset={DATA_OFFSET}", data_copy.display())),
    );
    assert_eq!(
        stored.trim(),
        hostname,
        "the data disk holds this boot's host name"
    );
}

/// OVMF boots the ISO from a CD; `n` in GRUB's menu boots `kubesolo-nopersist`, which keeps
/// its state in RAM although a `KSOLODATA` disk is attached: the disk is byte for byte what
/// `data-disk` built (a mount, even read-only replay aside, would have written it).
#[test]
fn iso_from_a_uefi_cd_boots_nopersist_without_mounting_the_data_disk() {
    let tmp = scratch();
    let Some((iso, data, _)) = realise_iso(tmp.path()) else {
        return;
    };
    if !qemu("qemu-system-x86_64") {
        return;
    }
    let data_copy = writable_copy(&data, tmp.path());
    let args = machine(Firmware::Ovmf, Some(&iso), None, Some(&data_copy));
    let (log, typed) = boot_typing(&args, &[(GRUB_COUNTDOWN, "n")], LIMIT);
    let text = plain(&log);
    assert_eq!(typed, 1, "GRUB's menu never counted down:\n{text}");
    assert!(text.contains("GNU GRUB"), "{text}");
    assert_menu(&text);
    init_line(&text, "10-cmdline", "debug=0 shell=0 nopersist=1 live=1");
    init_line(
        &text,
        "20-persistent-data",
        "persistent data: tmpfs on /mnt/data",
    );
    assert!(
        text.contains(" slot=live data=tmpfs ") && text.contains("KUBESOLO-STANDIN running"),
        "{text}"
    );
    assert!(!text.contains("/dev/vda1"), "{text}");
    let same = run(Command::new("cmp").arg(&data).arg(&data_copy));
    assert!(
        same.status.success(),
        "the data disk was written: {}",
        String::from_utf8_lossy(&same.stdout)
    );
}

/// OVMF boots the ISO written to a disk (a USB stick: the MBR's EFI partition), with no data
/// disk: the live system says its state is in RAM and boots; `s` in GRUB's menu boots
/// `kubesolo-shell`, whose shell on the console runs what is typed into it.
#[test]
fn iso_as_a_uefi_disk_runs_in_ram_and_its_shell_entry_gives_a_shell() {
    let tmp = scratch();
    let Some((iso, _, _)) = realise_iso(tmp.path()) else {
        return;
    };
    if !qemu("qemu-system-x86_64") {
        return;
    }
    let stick = writable_copy(&iso, tmp.path());
    let args = machine(Firmware::Ovmf, None, Some(&stick), None);
    let steps = [
        (GRUB_COUNTDOWN, "s"),
        // KubeSolo (the stand-in, which stays up under kubesolo.shell) runs beside the shell.
        (
            "KUBESOLO-STANDIN running",
            "echo shell-says-$((6*7)); poweroff -f\r",
        ),
    ];
    let (log, typed) = boot_typing(&args, &steps, LIMIT);
    let text = plain(&log);
    assert_eq!(typed, 2, "{text}");
    assert!(
        text.contains("UEFI Misc Device"),
        "not booted as a disk:\n{text}"
    );
    init_line(&text, "10-cmdline", "debug=0 shell=1 nopersist=0 live=1");
    init_line(
        &text,
        "20-persistent-data",
        "live: no data partition LABEL=KSOLODATA after 5 s; state is kept in RAM and lost at power-off",
    );
    init_line(
        &text,
        "20-persistent-data",
        "persistent data: tmpfs on /mnt/data",
    );
    assert!(text.contains("built-in shell (ash)"), "{text}");
    // The shell's answer, not the echo of the typed line.
    assert!(text.lines().any(|l| l == "shell-says-42"), "{text}");
    assert!(text.contains("reboot: Power down"), "{text}");
}

/// SeaBIOS boots the ISO written to a disk (the isohybrid MBR); `d` in isolinux's menu boots
/// `kubesolo-debug`: the kernel's log level and the init's debug lines.
#[test]
fn iso_as_a_bios_disk_boots_the_debug_entry() {
    let tmp = scratch();
    let Some((iso, _, _)) = realise_iso(tmp.path()) else {
        return;
    };
    if !qemu("qemu-system-x86_64") {
        return;
    }
    let stick = writable_copy(&iso, tmp.path());
    let args = machine(Firmware::SeaBios, None, Some(&stick), None);
    let (log, typed) = boot_typing(&args, &[(ISOLINUX_COUNTDOWN, "d")], LIMIT);
    let text = plain(&log);
    // No CD drive: isolinux came from the stick's MBR.
    assert_eq!(typed, 1, "isolinux's menu never counted down:\n{text}");
    assert_menu(&text);
    init_line(&text, "10-cmdline", "debug=1 shell=0 nopersist=0 live=1");
    let debug = init_line(&text, "10-cmdline", "debug: kernel command line: ");
    assert!(
        debug.contains(" kubesolo.debug loglevel=7") && debug.contains(" kubesolo.slot=live "),
        "{debug}"
    );
    assert!(text.contains(" slot=live data=tmpfs "), "{text}");
}

/// What the ISO's build can be given wrong is named, with the fix: a kernel that is not an
/// x86_64 bzImage, an initramfs target without `kubesolo-os.gz`, an EFI image too small for
/// GRUB, an environment without isolinux.
#[test]
fn bad_iso_input_is_named() {
    let tmp = scratch();
    let store = kernel_store();
    let proj = project(tmp.path(), &store);
    let iso_toml = proj.join("derivations/iso.toml");
    let original = fs::read_to_string(&iso_toml).unwrap();
    let fails = |edit: &dyn Fn(&str) -> String, wanted: &str| {
        fs::write(&iso_toml, edit(&original)).unwrap();
        let out = run(ksbuild(&store).arg("--project").arg(&proj).args([
            "realise",
            "--no-link",
            "-j2",
            "iso@small",
        ]));
        let err = String::from_utf8_lossy(&out.stderr);
        if crate::common::skip_as_archive_unreachable(&out) {
            return false;
        }
        assert_eq!(out.status.code(), Some(100), "{err}");
        assert!(err.contains(wanted), "expected `{wanted}` in:\n{err}");
        true
    };
    let swap = |from: &'static str, to: &'static str| {
        move |t: &str| {
            assert!(t.contains(from), "iso.toml lacks {from}");
            t.replacen(from, to, 1)
        }
    };
    if !fails(
        &swap(
            "kernel = \"kernel-x86_64@small\"",
            "kernel = \"kernel-arm64@small\"",
        ),
        "has no bzImage: the iso needs an x86_64 kernel target (kernel-x86_64) as `kernel`",
    ) {
        return;
    }
    fails(
        &swap("initramfs = \"initramfs-x86_64@small\"", "initramfs = \"rootfs-x86_64\""),
        "has no kubesolo-os.gz: the iso needs an initramfs target (initramfs-x86_64) as `initramfs`",
    );
    fails(
        &swap("EFI_KIB = \"2048\"", "EFI_KIB = \"256\""),
        "partition KSOLOISO is too small",
    );
    // The image environment without the isolinux package (its lock entry dropped).
    fs::write(&iso_toml, &original).unwrap();
    let lock = proj.join("sandboxes/image.lock");
    let text = fs::read_to_string(&lock).unwrap();
    let kept: Vec<&str> = text
        .split("\n[[deb]]\n")
        .filter(|d| !d.starts_with("name = \"isolinux\"\n"))
        .collect();
    assert_eq!(
        kept.len() + 1,
        text.split("\n[[deb]]\n").count(),
        "no isolinux in the lock"
    );
    fs::write(&lock, kept.join("\n[[deb]]\n")).unwrap();
    fails(
        &|t: &str| t.to_string(),
        "/usr/lib/ISOLINUX/isolinux.bin is not in the image environment: sandboxes/image.toml \
         needs isolinux, syslinux-common and grub-efi-amd64-bin in `data`",
    );
}
