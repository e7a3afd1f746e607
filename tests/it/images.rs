//! KubeSolo OS images from the small kernels: the rootfs library closure, the three images
//! realised twice and compared, their partition tables and files, QEMU boots (OVMF, AAVMF,
//! raspi3b) with the A/B switch and the three-failures fallback, and bad input (a KubeSolo
//! of the wrong architecture, one the booted system cannot run). KubeSolo
//! itself is upstream-only: a stand-in is provided through `ksbuild pin`, as the README
//! tells users without access to GitHub. Shares the kernel tests' store, so each small
//! kernel is compiled once per CI run.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ksbuild::vm::{Arch, Guest, Machine};

use crate::common::{kernel_store, ksbuild, run, run_ok, scratch, tiny_elf, EM_AARCH64, EM_X86_64};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The stand-in for the KubeSolo binary: exercises iptables-nft and nft on the booted
/// system, prints a line, and powers off — unless the console has a shell
/// (`kubesolo.shell`): then it keeps running, as KubeSolo would, for the shell's user.
pub(crate) const STANDIN: &str = "#!/bin/sh\n\
iptables -t nat -A POSTROUTING -s 10.42.0.0/16 -j MASQUERADE && ipt=ok || ipt=failed\n\
nft add table ip kubesolo-masq && nft list tables | grep -q kubesolo-masq && nft=ok || nft=failed\n\
echo \"KUBESOLO-STANDIN running: iptables=$ipt nft=$nft data=$(mount | grep -c ' /var/lib/kubesolo ')\"\n\
grep -qw kubesolo.shell /proc/cmdline && exec sleep 3600\n\
sync\n\
poweroff -f\n";

/// A copy of the project with the stand-in KubeSolo pinned (the repository's own pins, if
/// any, are replaced in the copy only).
pub(crate) fn project(dir: &Path, store: &Path) -> PathBuf {
    let proj = copy_project(dir);
    pin_standins(store, &proj, dir);
    proj
}

/// A copy of the project's derivations, fragments and environments in `dir/project`.
pub(crate) fn copy_project(dir: &Path) -> PathBuf {
    let proj = dir.join("project");
    fs::create_dir_all(&proj).unwrap();
    for d in ["derivations", "fragments", "sandboxes"] {
        run_ok(Command::new("cp").arg("-r").arg(repo().join(d)).arg(&proj));
    }
    proj
}

/// Pins `kubesolo` (the one file of a release tarball, written into `dir`) as `target`.
pub(crate) fn pin_kubesolo(store: &Path, proj: &Path, dir: &Path, target: &str, kubesolo: &[u8]) {
    fs::create_dir_all(dir).unwrap();
    let file = dir.join("kubesolo");
    fs::write(&file, kubesolo).unwrap();
    run_ok(Command::new("chmod").arg("755").arg(&file));
    let tarball = dir.join("kubesolo.tar.gz");
    run_ok(
        Command::new("tar")
            .args(["--owner=0", "--group=0", "--mtime=@0", "-czf"])
            .arg(&tarball)
            .arg("-C")
            .arg(dir)
            .arg("kubesolo"),
    );
    run_ok(
        ksbuild(store)
            .arg("--project")
            .arg(proj)
            .args(["pin", target])
            .arg(&tarball),
    );
}

/// Pins the stand-in KubeSolo tarballs (written into `dir/standin`) in `store`.
pub(crate) fn pin_standins(store: &Path, proj: &Path, dir: &Path) {
    let stage = dir.join("standin");
    fs::create_dir_all(&stage).unwrap();
    let script = stage.join("kubesolo");
    fs::write(&script, STANDIN).unwrap();
    run_ok(Command::new("chmod").arg("755").arg(&script));
    for (target, arch) in [("kubesolo-x86_64", "amd64"), ("kubesolo-arm64", "arm64")] {
        let tarball = stage.join(format!("kubesolo-v1.1.4-linux-{arch}.tar.gz"));
        run_ok(
            Command::new("tar")
                .args(["--owner=0", "--group=0", "--mtime=@0", "-czf"])
                .arg(&tarball)
                .arg("-C")
                .arg(&stage)
                .arg("kubesolo"),
        );
        run_ok(
            ksbuild(store)
                .arg("--project")
                .arg(proj)
                .args(["pin", target])
                .arg(&tarball),
        );
    }
}

/// Realises `target`; returns the output's physical directory. `None` when the Debian
/// archive is unreachable and the network is not required (outside CI).
pub(crate) fn realise(
    store: &Path,
    proj: &Path,
    target: &str,
    shell_env: &[(&str, &str)],
) -> Option<PathBuf> {
    let mut cmd = ksbuild(store);
    cmd.arg("--project")
        .arg(proj)
        .args(["realise", "--no-link", "-j2", target]);
    for (k, v) in shell_env {
        cmd.env(k, v);
    }
    let out = run(&mut cmd);
    if crate::common::skip_as_archive_unreachable(&out) {
        return None;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "realise {target}: {err}");
    if store == crate::common::kernel_store() {
        crate::common::publish_to_ci_cache(proj, &[target]);
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Some(store.join(path.trim_start_matches('/')))
}

/// Whether QEMU is installed; in CI (`KSBUILD_REQUIRE_QEMU`) its absence is a failure.
pub(crate) fn qemu(program: &str) -> bool {
    let found = Command::new(program)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var_os("KSBUILD_REQUIRE_QEMU").is_none(),
            "{program} is required (KSBUILD_REQUIRE_QEMU is set): apt-get install qemu-system-x86 qemu-system-arm ovmf qemu-efi-aarch64"
        );
        eprintln!("SKIP: {program} is not installed");
    }
    found
}

/// Boots `machine` (QEMU's line from `ksbuild::vm`, as `ksbuild vm` runs it) until the guest
/// powers off, halts, panics or fails a stage (or `limit` passes); kills QEMU by its own PID
/// and returns the serial console's text. For boots with a harness of their own (further
/// disks between boots, logs read as they come); the others boot with [`vm_boot`].
pub(crate) fn boot(machine: &Machine, limit: Duration) -> String {
    let program = machine.program();
    let dir = scratch();
    let log = dir.path().join("console.log");
    let mut child = Command::new(program)
        .args(machine.args())
        .stdin(Stdio::null())
        .stdout(fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
    let start = Instant::now();
    let mut text = String::new();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        text.clear();
        let mut bytes = Vec::new();
        fs::File::open(&log)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&bytes));
        let finished = [
            "reboot: Power down",
            "System halted",
            "Kernel panic",
            "kubesolo-os: FAILED",
        ]
        .iter()
        .any(|m| text.contains(m));
        if finished || child.try_wait().unwrap().is_some() || start.elapsed() > limit {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("boot took {:.1}s", start.elapsed().as_secs_f64());
    text
}

/// `ksbuild --project PROJ vm TARGET ARGS…` (stdin closed): its exit code, console
/// (stdout) and messages (stderr).
pub(crate) fn vm(
    store: &Path,
    proj: &Path,
    target: &str,
    args: &[&str],
) -> (Option<i32>, String, String) {
    let start = Instant::now();
    let out = run(ksbuild(store)
        .arg("--project")
        .arg(proj)
        .args(["vm", target])
        .args(args));
    eprintln!(
        "ksbuild vm {target} {args:?} took {:.1}s",
        start.elapsed().as_secs_f64()
    );
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The texts every boot test waits for: the init's announcement, then the stand-in
/// KubeSolo's line (`ksbuild vm` stops QEMU once that line is complete).
pub(crate) const BOOTED: [&str; 4] = [
    "--expect",
    "KUBESOLO-OS BOOT OK",
    "--expect",
    "KUBESOLO-STANDIN running",
];

/// Boots `target` with `ksbuild vm --expect … --timeout 240 ARGS…`, which must exit 0;
/// returns the console.
pub(crate) fn vm_boot(store: &Path, proj: &Path, target: &str, args: &[&str]) -> String {
    let limit = LIMIT.as_secs().to_string();
    let all: Vec<&str> = BOOTED
        .iter()
        .copied()
        .chain(["--timeout", &limit])
        .chain(args.iter().copied())
        .collect();
    let (code, console, err) = vm(store, proj, target, &all);
    assert_eq!(
        code,
        Some(0),
        "ksbuild vm {target}:
{err}
console:
{console}"
    );
    console
}

/// The output `out` is what the store recorded: its NAR hash computed again equals its
/// registered one (a VM never writes the store path).
pub(crate) fn assert_unchanged(store: &Path, out: &Path) {
    let logical = format!("/nix/store/{}", out.file_name().unwrap().to_string_lossy());
    let info: serde_json::Value = serde_json::from_str(&run_ok(ksbuild(store).args([
        "store",
        "path-info",
        "--json",
        &logical,
    ])))
    .unwrap();
    let now = run_ok(
        ksbuild(store)
            .args(["hash", "path", "--type", "sha256"])
            .arg(out),
    );
    assert_eq!(
        info[0]["narHash"].as_str(),
        Some(now.trim()),
        "{logical} changed"
    );
}

pub(crate) fn assert_booted(log: &str, arch: &str, slot: &str, data_dev: &str) {
    let ok = format!("KUBESOLO-OS BOOT OK arch={arch} ");
    let line = log
        .lines()
        .find(|l| l.contains(&ok))
        .unwrap_or_else(|| panic!("no success line for {arch} in:\n{log}"));
    assert!(line.contains(&format!("slot={slot} ")), "{line}");
    assert!(line.contains(&format!("data={data_dev}")), "{line}");
    assert!(
        log.contains("KUBESOLO-STANDIN running: iptables=ok nft=ok data=1"),
        "iptables-nft and nft must run on the booted system:\n{log}"
    );
}

/// Partition offsets from the image's `partitions.txt`: (number, label, offset).
pub(crate) fn partitions(out: &Path) -> Vec<(u32, String, u64)> {
    fs::read_to_string(out.join("partitions.txt"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let n = w.first()?.parse().ok()?;
            let at = w.iter().position(|x| *x == "offset")?;
            Some((n, w[1].to_string(), w[at + 1].parse().ok()?))
        })
        .collect()
}

pub(crate) fn mtools(program: &str, image: &Path, offset: u64) -> Command {
    let mut c = Command::new(program);
    c.env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(format!("{}@@{offset}", image.display()));
    c
}

pub(crate) fn get_grubenv(image: &Path, esp: u64) -> String {
    run_ok(mtools("mtype", image, esp).arg("::/EFI/BOOT/grubenv"))
}

/// A writable sparse copy of an image.
pub(crate) fn writable_copy(image: &Path, dir: &Path) -> PathBuf {
    let copy = dir.join(image.file_name().unwrap());
    run_ok(
        Command::new("cp")
            .arg("--sparse=always")
            .arg(image)
            .arg(&copy),
    );
    run_ok(Command::new("chmod").arg("644").arg(&copy));
    copy
}

/// The machine `ksbuild vm` boots a UEFI disk image of `arch` on: `image` (a writable copy)
/// on virtio, OVMF or AAVMF.
pub(crate) fn uefi(arch: Arch, image: &Path) -> Machine {
    Machine::new(Guest::Uefi {
        arch,
        disk: image.to_path_buf(),
    })
}

pub(crate) const LIMIT: Duration = Duration::from_secs(240);

#[test]
fn rootfs_elfs_resolve_every_needed_library_inside_the_rootfs() {
    let tmp = scratch();
    let store = kernel_store();
    let proj = project(tmp.path(), &store);
    for (target, triplet) in [
        ("rootfs-x86_64", "x86_64-linux-gnu"),
        ("rootfs-arm64", "aarch64-linux-gnu"),
    ] {
        let Some(root) = realise(&store, &proj, target, &[]) else {
            return;
        };
        let mut elfs = 0;
        for entry in walkdir::WalkDir::new(&root) {
            let entry = entry.unwrap();
            if !entry.file_type().is_file() {
                continue;
            }
            let mut magic = [0u8; 4];
            let n = fs::File::open(entry.path())
                .unwrap()
                .read(&mut magic)
                .unwrap();
            if n < 4 || magic != *b"\x7fELF" {
                continue;
            }
            elfs += 1;
            let dynamic = run_ok(
                Command::new("readelf")
                    .arg("-d")
                    .arg("-l")
                    .arg(entry.path()),
            );
            for line in dynamic.lines() {
                let wanted = if let Some(i) = line.find("program interpreter: ") {
                    line[i + 21..].trim_end_matches(']').to_string()
                } else if line.contains("(NEEDED)") {
                    let lib = line.rsplit('[').next().unwrap().trim_end_matches(']');
                    format!("/usr/lib/{triplet}/{lib}")
                } else {
                    continue;
                };
                assert!(
                    resolves_inside(&root, &wanted),
                    "{target}: {} needs {wanted}, which does not resolve inside the rootfs",
                    entry.path().display()
                );
            }
        }
        // busybox, xtables-nft-multi, nft, the loader, libc and the rest of the closure, and
        // the xtables extensions.
        assert!(elfs > 40, "{target}: only {elfs} ELF files");
        for f in [
            "usr/sbin/xtables-nft-multi",
            "usr/sbin/nft",
            "bin/busybox",
            "init",
        ] {
            assert!(root.join(f).is_file(), "{target}: {f} missing");
        }
    }
}

/// KubeSolo of another architecture (an x86_64 ELF pinned as `kubesolo-arm64`) fails the
/// rootfs build — which otherwise gives an image that announces its boot and panics —
/// naming the file, both machines and the `ksbuild pin` that fixes it; an AArch64 one
/// builds. Needs the environments' packages, no kernel.
#[test]
fn a_kubesolo_for_another_architecture_fails_the_rootfs_build() {
    let tmp = scratch();
    let store = kernel_store();
    let proj = copy_project(tmp.path());
    pin_kubesolo(
        &store,
        &proj,
        &tmp.path().join("x86_64"),
        "kubesolo-arm64",
        &tiny_elf(EM_X86_64),
    );
    let out = run(ksbuild(&store).arg("--project").arg(&proj).args([
        "realise",
        "--no-link",
        "-j2",
        "rootfs-arm64",
    ]));
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("cannot fetch") && std::env::var_os("KSBUILD_REQUIRE_NETWORK").is_none() {
        eprintln!("SKIP: the Debian archive is unreachable here");
        return;
    }
    assert_eq!(out.status.code(), Some(100), "{err}");
    for wanted in [
        "rootfs check: usr/local/bin/kubesolo is an ELF for Advanced Micro Devices X86-64, \
         but this rootfs (aarch64-linux-gnu) needs AArch64",
        "the KubeSolo release pinned as `kubesolo-arm64` is for another architecture: \
         pin the aarch64-linux-gnu release with `ksbuild pin kubesolo-arm64 FILE`",
    ] {
        assert!(err.contains(wanted), "`{wanted}` missing in:\n{err}");
    }
    pin_kubesolo(
        &store,
        &proj,
        &tmp.path().join("aarch64"),
        "kubesolo-arm64",
        &tiny_elf(EM_AARCH64),
    );
    let Some(root) = realise(&store, &proj, "rootfs-arm64", &[]) else {
        return;
    };
    assert_eq!(
        fs::read(root.join("usr/local/bin/kubesolo")).unwrap(),
        tiny_elf(EM_AARCH64)
    );
}

/// Whether the absolute path `p` resolves to a file inside `root`, following symlinks as
/// the booted system would (absolute targets relative to `root`).
fn resolves_inside(root: &Path, p: &str) -> bool {
    let mut path = PathBuf::from("/");
    let mut parts: Vec<String> = p
        .split('/')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .rev()
        .collect();
    let mut hops = 0;
    while let Some(part) = parts.pop() {
        if part == ".." {
            path.pop();
            continue;
        }
        let next = path.join(&part);
        let phys = root.join(next.strip_prefix("/").unwrap());
        match fs::symlink_metadata(&phys) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return false;
                }
                let target = fs::read_link(&phys).unwrap();
                let t = target.to_string_lossy().to_string();
                if t.starts_with('/') {
                    path = PathBuf::from("/");
                }
                for seg in t.split('/').filter(|s| !s.is_empty()).rev() {
                    parts.push(seg.to_string());
                }
            }
            Ok(_) => path = next,
            Err(_) => return false,
        }
    }
    root.join(path.strip_prefix("/").unwrap()).is_file()
}

/// A KubeSolo the booted system cannot run (here a script whose interpreter is missing: the
/// rootfs build checks ELF machines, not scripts) fails the boot before it is announced, into
/// the init's emergency path — no success line, no PID 1 killed by a failed exec (a kernel
/// panic, with `panic=-1` a reboot loop). Boots the small x86_64 kernel's image from the
/// shared kernel store.
#[test]
fn a_kubesolo_the_system_cannot_run_fails_the_boot_instead_of_killing_init() {
    let tmp = scratch();
    let store = kernel_store();
    let proj = project(tmp.path(), &store);
    pin_kubesolo(
        &store,
        &proj,
        &tmp.path().join("unrunnable"),
        "kubesolo-x86_64",
        b"#!/no/such/sh\necho KUBESOLO-STANDIN running\n",
    );
    let Some(_) = realise(&store, &proj, "disk-image@small", &[]) else {
        return;
    };
    if !qemu("qemu-system-x86_64") {
        return;
    }
    let (code, log, err) = vm(
        &store,
        &proj,
        "disk-image@small",
        &["--expect", "kubesolo-os: FAILED", "--timeout", "240"],
    );
    assert_eq!(code, Some(0), "{err}\n{log}");
    assert!(
        log.contains(
            "KUBESOLO-OS BOOT FAILED: /usr/local/bin/kubesolo is a script for the interpreter \
             /no/such/sh, which is not an executable file"
        ),
        "{log}"
    );
    assert!(
        log.contains("kubesolo-os: FAILED: stage 90-kubesolo failed"),
        "{log}"
    );
    for never in [
        "KUBESOLO-OS BOOT OK",
        "KUBESOLO-STANDIN",
        "Kernel panic",
        "Attempted to kill init",
    ] {
        assert!(!log.contains(never), "`{never}` in:\n{log}");
    }
}

/// The x86_64 image's layout, and its boot on slot A under OVMF through `ksbuild vm`, which
/// leaves its store path as it was. Switching to slot B, GRUB's countdown and its fallback
/// are exercised by `update::x86_64_…`, on an image that differs only by the key it trusts
/// (`ksbuild vm --slot B`: `vm::`).
#[test]
fn x86_64_image_has_the_ab_layout_and_boots_slot_a() {
    let tmp = scratch();
    let store = kernel_store();
    let proj = project(tmp.path(), &store);
    let Some(out) = realise(&store, &proj, "disk-image@small", &[]) else {
        return;
    };
    let image = out.join("disk.img");
    assert_eq!(fs::metadata(&image).unwrap().len(), 4 << 30);
    let parts = partitions(&out);
    let labels: Vec<&str> = parts.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(labels, ["KSOLOEFI", "KSOLOA", "KSOLOB", "KSOLODATA"]);
    if !qemu("qemu-system-x86_64") {
        return;
    }
    let log = vm_boot(&store, &proj, "disk-image@small", &[]);
    assert!(log.contains("GRUB: booting slot A"), "{log}");
    assert_booted(&log, "x86_64", "A", "/dev/vda4");
    assert_unchanged(&store, &out);
}

/// The generic arm64 image boots slot A under AAVMF through `ksbuild vm`, which leaves its
/// store path as it was (slot B and the commit: `update::arm64_…`).
#[test]
fn arm64_image_boots_under_aavmf() {
    let tmp = scratch();
    let store = kernel_store();
    let proj = project(tmp.path(), &store);
    let Some(out) = realise(&store, &proj, "disk-image-arm64@small", &[]) else {
        return;
    };
    if !qemu("qemu-system-aarch64") {
        return;
    }
    let log = vm_boot(&store, &proj, "disk-image-arm64@small", &[]);
    assert_booted(&log, "aarch64", "A", "/dev/vda4");
    assert_unchanged(&store, &out);
}

/// The Pi image's layout (MBR, tryboot A/B, firmware and config per slot), and its Boot A
/// kernel booted on QEMU's raspi3b through `ksbuild vm`, which leaves its store path as it
/// was.
#[test]
fn rpi_image_has_the_tryboot_layout_and_its_kernel_boots_on_raspi3b() {
    let tmp = scratch();
    let store = kernel_store();
    let proj = project(tmp.path(), &store);
    let Some(out) = realise(&store, &proj, "rpi-image@small", &[]) else {
        return;
    };
    let image = out.join("sdcard.img");
    let bytes = {
        let mut b = vec![0u8; 512];
        fs::File::open(&image).unwrap().read_exact(&mut b).unwrap();
        b
    };
    // The MBR: signature, disk id from the output's hash, four partitions c/c/c/83.
    assert_eq!(&bytes[510..], &[0x55, 0xaa]);
    let entry = |i: usize| &bytes[446 + 16 * i..446 + 16 * (i + 1)];
    let types: Vec<u8> = (0..4).map(|i| entry(i)[4]).collect();
    assert_eq!(types, [0x0c, 0x0c, 0x0c, 0x83]);
    let lba = |i: usize| u32::from_le_bytes(entry(i)[8..12].try_into().unwrap()) as u64 * 512;
    let parts = partitions(&out);
    for (i, p) in parts.iter().enumerate() {
        assert_eq!(lba(i), p.2, "partition {} offset", p.0);
    }
    let size = fs::metadata(&image).unwrap().len();
    assert!(
        size.is_power_of_two(),
        "QEMU's raspi machines need a power-of-two SD card"
    );
    let read = |part: usize, file: &str| -> String {
        run_ok(mtools("mtype", &image, parts[part].2).arg(format!("::/{file}")))
    };
    let autoboot = read(0, "autoboot.txt");
    assert_eq!(
        autoboot,
        "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n"
    );
    for (part, slot) in [(1, "A"), (2, "B")] {
        let listing = run_ok(mtools("mdir", &image, parts[part].2).args(["-b", "::/"]));
        for f in [
            "start4.elf",
            "fixup4.dat",
            "kernel8.img",
            "kubesolo-os.gz",
            "bcm2711-rpi-4-b.dtb",
            "config.txt",
            "cmdline.txt",
        ] {
            assert!(
                listing.contains(&format!("::/{f}")),
                "boot {slot} lacks {f}:\n{listing}"
            );
        }
        let config = read(part, "config.txt");
        assert!(
            config.contains("arm_64bit=1")
                && config.contains("initramfs kubesolo-os.gz followkernel"),
            "{config}"
        );
        // Each model's kernel is named in its section. This variant's one mainline 6.12
        // kernel serves both, each with its device trees: the Pi 5's among them.
        assert!(
            config.contains("[pi4]\nkernel=kernel8.img\n[pi5]\nkernel=kernel_2712.img\n[all]\n")
                && config.trim_end().ends_with("upstream_kernel=1")
                && config.matches("[all]").count() == 2,
            "{config}"
        );
        for f in [
            "kernel_2712.img",
            "bcm2712-rpi-5-b.dtb",
            "bcm2837-rpi-3-b.dtb",
        ] {
            assert!(
                listing.contains(&format!("::/{f}")),
                "boot {slot} lacks {f}:\n{listing}"
            );
        }
        let pi5_dtb =
            run(mtools("mtype", &image, parts[part].2).arg("::/bcm2712-rpi-5-b.dtb")).stdout;
        assert_eq!(
            &pi5_dtb[..4],
            &[0xd0, 0x0d, 0xfe, 0xed],
            "a flattened device tree"
        );
        assert!(
            pi5_dtb.windows(22).any(|w| w == b"raspberrypi,5-model-b\0"),
            "the Pi 5 tree names the Pi 5"
        );
        let cmdline = read(part, "cmdline.txt");
        assert!(
            cmdline.contains(&format!("kubesolo.slot={slot} "))
                && cmdline.contains("kubesolo.data=LABEL=KSOLODATA"),
            "{cmdline}"
        );
    }
    if !qemu("qemu-system-aarch64") {
        return;
    }
    // QEMU does not run the VideoCore firmware: `ksbuild vm` boots Boot A's kernel, Pi 3
    // tree and initramfs directly, with the whole SD card attached.
    let log = vm_boot(&store, &proj, "rpi-image@small", &[]);
    assert_booted(&log, "aarch64", "A", "/dev/mmcblk0p4");
    assert_unchanged(&store, &out);
}

#[test]
fn images_are_bit_identical_across_store_roots_umask_and_tz() {
    let tmp = scratch();
    let store = kernel_store();
    let proj = project(tmp.path(), &store);
    let targets = [
        ("disk-image@small", "disk.img"),
        ("disk-image-arm64@small", "disk.img"),
        ("rpi-image@small", "sdcard.img"),
        ("iso@small", "kubesolo.iso"),
        ("data-disk", "data.img"),
    ];
    let mut first = Vec::new();
    for (t, f) in targets {
        let Some(out) = realise(&store, &proj, t, &[]) else {
            return;
        };
        first.push(out.join(f));
    }
    // A second store root, seeded with the kernels only (as a binary cache would): the
    // rootfs, initramfs and images are rebuilt there, from a shell with another umask and TZ.
    let other = tmp.path().join("other-store");
    for k in [
        "kernel-x86_64@small",
        "kernel-arm64@small",
        "kernel-rpi@small",
    ] {
        let out = realise(&store, &proj, k, &[]).unwrap();
        let name = out.file_name().unwrap().to_owned();
        let dst = other.join("nix/store");
        // kernel-arm64@small is kernel-rpi@small: one path, copied once.
        if dst.join(&name).exists() {
            continue;
        }
        fs::create_dir_all(&dst).unwrap();
        fs::create_dir_all(other.join("nix/var/ksbuild/db")).unwrap();
        run_ok(Command::new("cp").arg("-a").arg(&out).arg(&dst));
        let base = name.to_string_lossy().to_string();
        run_ok(
            Command::new("cp")
                .arg(store.join(format!("nix/var/ksbuild/db/{base}.json")))
                .arg(other.join("nix/var/ksbuild/db")),
        );
    }
    // The stand-in is provided to the second store as a user would: `ksbuild pin`.
    pin_standins(&other, &proj, &tmp.path().join("again"));
    for ((t, f), a) in targets.iter().zip(&first) {
        let mut cmd = ksbuild(&other);
        cmd.arg("--project")
            .arg(&proj)
            .args(["realise", "--no-link", "-j2", t])
            .env("TZ", "Asia/Tokyo")
            .env("LANG", "de_DE.UTF-8");
        let out = run(Command::new("sh")
            .arg("-c")
            .arg("umask 077; exec \"$@\"")
            .arg("sh")
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .envs(cmd.get_envs().filter_map(|(k, v)| v.map(|v| (k, v)))));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let b = other.join(path.trim_start_matches('/')).join(f);
        let same = run(Command::new("cmp").arg(a).arg(&b));
        assert!(
            same.status.success(),
            "{t} differs between store roots: {}",
            String::from_utf8_lossy(&same.stdout)
        );
    }
}

#[test]
fn bad_image_input_is_named() {
    let tmp = scratch();
    let store = kernel_store();
    let proj = project(tmp.path(), &store);
    let edit = |file: &str, from: &str, to: &str| {
        let p = proj.join(file);
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "{file} lacks {from}");
        fs::write(&p, text.replacen(from, to, 1)).unwrap();
    };
    let fails = |target: &str, wanted: &str| {
        let out =
            run(ksbuild(&store)
                .arg("--project")
                .arg(&proj)
                .args(["realise", "--no-link", target]));
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("cannot fetch") && std::env::var_os("KSBUILD_REQUIRE_NETWORK").is_none() {
            return;
        }
        assert!(!out.status.success(), "{target} should fail");
        assert!(
            err.contains(wanted),
            "{target}: expected `{wanted}` in:\n{err}"
        );
    };
    // A system partition too small for the kernel and initramfs.
    edit(
        "derivations/disk-image.toml",
        "SYSTEM_MIB = \"512\"",
        "SYSTEM_MIB = \"2\"",
    );
    fails("disk-image@small", "partition KSOLOA is too small");
    // A firmware file the locked package does not have.
    edit(
        "derivations/rpi-image.toml",
        "FIRMWARE = \"start4.elf",
        "FIRMWARE = \"start9.elf start4.elf",
    );
    fails(
        "rpi-image@small",
        "firmware file start9.elf is not in the locked raspi-firmware package",
    );
    // A module the kernel does not have.
    let list = proj.join("fragments/modules-x86_64.list");
    let text = fs::read_to_string(&list).unwrap();
    fs::write(&list, format!("{text}no_such_module\n")).unwrap();
    fails(
        "initramfs-x86_64@small",
        "module `no_such_module` (from modules-x86_64.list) is not in kernel",
    );
}

#[test]
fn a_rootfs_change_rebuilds_no_kernel() {
    let tmp = scratch();
    let store = tmp.path().join("s");
    let proj = project(tmp.path(), &store);
    let targets = [
        "kernel-x86_64@small",
        "kernel-rpi@small",
        "rootfs-x86_64",
        "rootfs-arm64",
        "initramfs-x86_64@small",
        "initramfs-rpi@small",
        "disk-image@small",
        "rpi-image@small",
    ];
    let drvs = || -> Vec<String> { crate::common::drv_paths(&store, &proj, &targets) };
    let before = drvs();
    let stage = proj.join("fragments/kubesolo-init/stages/60-hostname.sh");
    let text = fs::read_to_string(&stage).unwrap();
    fs::write(&stage, format!("{text}# changed\n")).unwrap();
    let after = drvs();
    let changed: Vec<&str> = targets
        .iter()
        .zip(before.iter().zip(&after))
        .filter(|(_, (b, a))| b != a)
        .map(|(t, _)| *t)
        .collect();
    assert_eq!(
        changed,
        [
            "rootfs-x86_64",
            "rootfs-arm64",
            "initramfs-x86_64@small",
            "initramfs-rpi@small",
            "disk-image@small",
            "rpi-image@small"
        ]
    );
}

#[test]
fn the_compressed_image_decompresses_to_the_image() {
    let tmp = scratch();
    let store = kernel_store();
    let proj = project(tmp.path(), &store);
    let (Some(image), Some(zst)) = (
        realise(&store, &proj, "disk-image@small", &[]),
        realise(&store, &proj, "disk-image-zst@small", &[]),
    ) else {
        return;
    };
    let out = tmp.path().join("disk.img");
    run_ok(
        Command::new("zstd")
            .args(["-q", "-d", "--sparse", "--long=27", "-o"])
            .arg(&out)
            .arg(zst.join("disk.img.zst")),
    );
    let same = run(Command::new("cmp").arg(image.join("disk.img")).arg(&out));
    assert!(
        same.status.success(),
        "{}",
        String::from_utf8_lossy(&same.stdout)
    );
}

/// The rootfs, initramfs, the three `@small` images, the live ISO and its data disk rebuild
/// bit for bit under every variation `check` knows (time and clocks, CPUs, host name, build
/// user ids, umask, ASLR, directory order, build directory name, kernel release), in fresh
/// sandboxes, against the builds the other image tests made (the kernels, compiled once
/// and checked against their record by `kernels::`, are inputs here, not rebuilt).
#[test]
fn images_initramfs_and_rootfs_reproduce_under_every_variation() {
    let tmp = scratch();
    let store = kernel_store();
    let proj = project(tmp.path(), &store);
    let targets = [
        "rootfs-x86_64",
        "rootfs-arm64",
        "initramfs-x86_64@small",
        "initramfs-arm64@small",
        "initramfs-rpi@small",
        "disk-image@small",
        "disk-image-arm64@small",
        "rpi-image@small",
        "iso@small",
        "data-disk",
    ];
    // Beside the kernel store, where `.ci/run` finds it and prints it at its end.
    let report = store.with_file_name("reproducibility.md");
    let out = run(ksbuild(&store)
        .arg("--project")
        .arg(&proj)
        .args(["check", "--vary", "all", "--json", "-j2", "--report"])
        .arg(&report)
        .args(targets));
    if crate::common::skip_as_archive_unreachable(&out) {
        return;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let derivations = verdict["derivations"].as_array().unwrap();
    assert_eq!(derivations.len(), targets.len());
    for d in derivations {
        assert_eq!(d["reproducible"], true, "{d}");
        assert_eq!(d["builds"], 2, "{d}");
        // Every variation; `build-dir` not where a build environment's shim binds `/build`.
        let applied = d["variations"].as_array().unwrap();
        let all = ksbuild::check::Vary::ALL.map(|v| v.name());
        assert!(
            all.iter()
                .all(|v| *v == "build-dir" || applied.iter().any(|x| x == v)),
            "{d}"
        );
    }
    let md = fs::read_to_string(&report).unwrap();
    assert!(
        md.contains("**10 of 10 derivations reproducible.**"),
        "{md}"
    );
}

/// ksbuild → ksbuild through a binary cache: the shared store's `rpi-image@small` and its
/// closure, pushed (signed, zstd) to a cache, are substituted into a fresh store that builds
/// nothing — the `--json` events have no `build-started` — to the same NAR hash.
#[test]
fn a_fresh_store_substitutes_the_rpi_image_from_a_pushed_cache_and_builds_nothing() {
    let tmp = scratch();
    let store = kernel_store();
    let proj = project(tmp.path(), &store);
    let Some(image) = realise(&store, &proj, "rpi-image@small", &[]) else {
        return;
    };
    let (sk, pk) = crate::common::key_pair(tmp.path());
    let cache = format!("file://{}", tmp.path().join("cache").display());
    crate::common::push_signed(&store, &proj, &cache, &sk, &["rpi-image@small"]);
    let fresh = tmp.path().join("fresh");
    let out = run_ok(
        ksbuild(&fresh)
            .arg("--project")
            .arg(&proj)
            .args([
                "realise",
                "--json",
                "--no-link",
                "-j2",
                "--substituters",
                &cache,
            ])
            .arg("--trusted-public-keys")
            .arg(&pk)
            .arg("rpi-image@small"),
    );
    let events: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        !events.iter().any(|e| e["event"] == "build-started"),
        "built instead of substituting: {out}"
    );
    let substituted = events
        .iter()
        .filter(|e| e["event"] == "substitute-finished")
        .count();
    assert!(substituted >= 1, "{out}");
    let image_path = format!(
        "/nix/store/{}",
        image.file_name().unwrap().to_string_lossy()
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "substitute-finished" && e["path"] == image_path.as_str()),
        "{out}"
    );
    let info = |s: &Path, p: &Path| {
        let logical = format!("/nix/store/{}", p.file_name().unwrap().to_string_lossy());
        let json = run_ok(ksbuild(s).args(["store", "path-info", "--json", &logical]));
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        v[0]["narHash"].clone()
    };
    assert_eq!(info(&fresh, &image), info(&store, &image));
    assert!(fresh
        .join("nix/store")
        .join(image.file_name().unwrap())
        .join("sdcard.img")
        .is_file());
}

/// Nix builds the real product from the flake: with only the fixed-output downloads and the
/// three small kernels available to it (a cache `ksbuild cache push` signed), Nix 2.8 builds
/// the environments (the rust toolchain's included), both update agents, the rootfs,
/// initramfs, the three `@small` images and the live ISO itself, in its own sandbox, to
/// ksbuild's output paths and NAR hashes.
#[test]
fn nix_builds_the_small_images_from_the_flake_to_ksbuild_s_bytes() {
    let targets = [
        "rpi-image@small",
        "disk-image@small",
        "disk-image-arm64@small",
        "iso@small",
    ];
    let tmp = scratch();
    let store = kernel_store();
    let proj = project(tmp.path(), &store);
    let mut images = Vec::new();
    for t in targets {
        let Some(out) = realise(&store, &proj, t, &[]) else {
            return;
        };
        images.push(out);
    }
    if crate::common::skip_without_nix() {
        return;
    }
    // What Nix may take: every fixed-output download of the closures (fetched here: the
    // images may have been substituted without them), and the kernels.
    let fetched = run_ok(
        ksbuild(&store)
            .arg("--project")
            .arg(&proj)
            .args(["realise", "--fetch-only", "-j2"])
            .args(targets),
    );
    let mut given: Vec<String> = fetched.lines().map(str::to_string).collect();
    // The kernels (substituted or built here: the images may have come without them).
    let kernels = [
        "kernel-x86_64@small",
        "kernel-arm64@small",
        "kernel-rpi@small",
    ];
    let kernel_paths = run_ok(
        ksbuild(&store)
            .arg("--project")
            .arg(&proj)
            .args(["realise", "--no-link", "-j2"])
            .args(kernels),
    );
    given.extend(kernel_paths.lines().map(str::to_string));
    let (sk, pk) = crate::common::key_pair(tmp.path());
    let cache = format!("file://{}", tmp.path().join("cache").display());
    crate::common::push_signed(&store, &proj, &cache, &sk, &given);
    let nix_root = tmp.path().join("nixroot");
    fs::copy(repo().join("flake.nix"), proj.join("flake.nix")).unwrap();
    // The flake's .drv files, written into Nix's store by one evaluation ...
    let names: Vec<String> = targets.iter().map(|t| format!("{t:?}")).collect();
    let drvs: Vec<String> = serde_json::from_str(&run_ok(
        crate::common::nix("nix")
            .env("XDG_CACHE_HOME", tmp.path().join("xdg"))
            .arg("--store")
            .arg(&nix_root)
            .args(["eval", "--json"])
            .arg(format!("path:{}#packages.x86_64-linux", proj.display()))
            .args([
                "--apply",
                &format!("ps: map (t: ps.${{t}}.drvPath) [ {} ]", names.join(" ")),
            ]),
    ))
    .unwrap();
    // ... realised by Nix in its sandbox, taking only what the cache holds.
    let out = run_ok(
        crate::common::nix("nix-store")
            .arg("--store")
            .arg(&nix_root)
            .args(["--realise", "--option", "substituters", &cache])
            .args(["--option", "trusted-public-keys", pk.trim()])
            .args(&drvs),
    );
    let built: Vec<&str> = out.lines().collect();
    assert_eq!(built.len(), targets.len(), "{out}");
    for (path, image) in built.iter().zip(&images) {
        assert_eq!(
            *path,
            format!(
                "/nix/store/{}",
                image.file_name().unwrap().to_string_lossy()
            )
        );
    }
    // Every path Nix has, compared with ksbuild's; those not given were built by Nix.
    let nix_info: Vec<serde_json::Value> = serde_json::from_str(&run_ok(
        crate::common::nix("nix")
            .arg("--store")
            .arg(&nix_root)
            .args(["path-info", "--json", "--all"]),
    ))
    .unwrap();
    // Where ksbuild substituted an image, its inputs (environments, rootfs, initramfs) may
    // not be here: those are compared when they are, the images always.
    let (mut built_by_nix, mut compared) = (Vec::new(), Vec::new());
    for info in &nix_info {
        let path = info["path"].as_str().unwrap();
        // The .drv files, what was given, and the flake's own source (Nix's alone).
        if path.ends_with(".drv") || given.iter().any(|g| g == path) {
            continue;
        }
        let ours = run(ksbuild(&store).args(["store", "path-info", "--json", path]));
        let nix_only_source =
            path.ends_with("-source") && info["references"].as_array().is_some_and(Vec::is_empty);
        if !nix_only_source {
            built_by_nix.push(path.to_string());
        }
        if !ours.status.success() {
            continue;
        }
        let ours: serde_json::Value = serde_json::from_slice(&ours.stdout).unwrap();
        assert_eq!(info["narHash"], ours[0]["narHash"], "{path}");
        compared.push(path.to_string());
    }
    eprintln!("built by Nix itself: {built_by_nix:#?}\ncompared with ksbuild's: {compared:#?}");
    for image in &built {
        assert!(
            compared.iter().any(|c| c == image),
            "{image} was not compared"
        );
    }
    for name in [
        "rootfs-arm64",
        "initramfs-rpi-small",
        "rpi-image-small",
        "disk-image-small",
        "iso-small",
    ] {
        assert!(
            built_by_nix.iter().any(|p| p.ends_with(name)),
            "Nix did not build {name}: {built_by_nix:?}"
        );
    }
}
