//! Booting built images under QEMU (`ksbuild vm`): which kind of image an output holds,
//! what the host needs to boot it, the writable copy it boots and the folder that keeps it
//! between runs, the A/B slot chosen, and the run itself with its serial console. Reads
//! and writes image copies, runs QEMU.
//!
//! * `qemu.rs` — [`Machine`]: QEMU's command line per kind of guest (pure).
//! * `grubenv.rs` — GRUB's environment block, read and rewritten (pure).
//! * `state.rs` — [`StateDir`]: the folder of writable copies, sparse copies.
//! * `run.rs` — [`Session`]: QEMU started, its console relayed and watched, stopped.
//!
//! Images are recognised by what they hold, not by their targets' names (variants and
//! renamed targets boot alike): `kubesolo.iso` is an x86_64 hybrid ISO; `disk.img` is a
//! GPT image whose EFI system partition names the architecture by its removable-media
//! loader (`EFI/BOOT/BOOTX64.EFI`, `BOOTAA64.EFI`) — every derivation here is an
//! `x86_64-linux` build, whatever the guest it makes; `sdcard.img` is a Raspberry Pi SD
//! card (MBR, FAT boot partitions `KSOBOOTA` and `KSOBOOTB`).

pub mod grubenv;
pub mod qemu;
pub mod run;
pub mod state;

use std::fs::File;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

pub use qemu::{Arch, DirectKernel, Guest, IsoMedia, Machine};
pub use run::{Outcome, RunOptions, Session};
pub use state::StateDir;

use crate::check::image::{read_table, Fat, Partition};

/// The GPT type of an EFI system partition.
const ESP_TYPE: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// Where the GRUB images keep their A/B state (`fragments/grub-ab.cfg`).
const GRUBENV: &str = "/EFI/BOOT/grubenv";
/// The files of a Pi boot partition that QEMU's `raspi3b` boots directly.
const PI_KERNEL: &str = "kernel8.img";
const PI_DTB: &str = "bcm2837-rpi-3-b.dtb";
const PI_INITRD: &str = "kubesolo-os.gz";

/// What an output holds that `ksbuild vm` can boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `disk.img`: a GPT image with GRUB's A/B slots, under UEFI.
    Uefi(Arch),
    /// `sdcard.img`: a Raspberry Pi SD card with tryboot A/B boot partitions.
    RaspberryPi,
    /// `kubesolo.iso`: an x86_64 hybrid ISO.
    Iso,
}

impl Kind {
    /// For messages: `UEFI x86_64 disk image`, ….
    pub fn describe(self) -> String {
        match self {
            Kind::Uefi(arch) => format!("UEFI {} disk image", arch.name()),
            Kind::RaspberryPi => "Raspberry Pi SD card on QEMU's raspi3b".into(),
            Kind::Iso => "x86_64 ISO".into(),
        }
    }
}

/// A bootable image found in an output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Its kind.
    pub kind: Kind,
    /// The image file (physical path, in the store: never written).
    pub file: PathBuf,
}

/// An A/B slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Slot A.
    A,
    /// Slot B.
    B,
}

impl Slot {
    /// `A` or `B`.
    pub fn name(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }
}

impl std::str::FromStr for Slot {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Slot, String> {
        match s {
            "A" | "a" => Ok(Slot::A),
            "B" | "b" => Ok(Slot::B),
            _ => Err(format!("`{s}` is not a slot: A or B")),
        }
    }
}

/// A host program or file that booting needs, and the Debian package that provides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// The program or file.
    pub what: String,
    /// Its Debian package.
    pub package: &'static str,
}

/// Why a VM cannot be booted.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The output holds no image this command boots.
    #[error("`{target}` (`{path}`) is not a bootable image: it holds {holds}")]
    NotBootable {
        target: String,
        path: String,
        holds: String,
    },
    /// The image is not as its kind must be.
    #[error("`{}`: {message}", path.display())]
    BadImage { path: PathBuf, message: String },
    /// QEMU, its firmware or another tool is not installed.
    #[error("cannot boot the VM here: {} not installed", list_missing(.0))]
    Missing(Vec<Missing>),
    /// The folder holds a copy of another image.
    #[error(
        "`{}` holds a copy of `{held}` (with its data partition and A/B state), not of `{wanted}`, which is what the target is now",
        dir.display()
    )]
    HoldsAnother {
        dir: PathBuf,
        held: String,
        wanted: String,
    },
    /// The folder holds an image copy ksbuild did not record.
    #[error("`{}` holds `{}`, which `ksbuild vm` did not make (no `{}` beside it)", dir.display(), file.display(), state::ORIGIN)]
    Unrecorded { dir: PathBuf, file: PathBuf },
    /// Another `ksbuild vm` uses the folder.
    #[error("another `ksbuild vm` is using `{}`", dir.display())]
    Busy { dir: PathBuf },
    /// `--slot` for an image without slots.
    #[error("the {0} has no A/B slots to choose from")]
    NoSlots(String),
    /// A file operation failed.
    #[error("cannot {action} `{}`", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// QEMU could not be started.
    #[error("cannot start `{program}`")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

fn list_missing(missing: &[Missing]) -> String {
    missing
        .iter()
        .map(|m| format!("`{}` (Debian package `{}`)", m.what, m.package))
        .collect::<Vec<_>>()
        .join(", ")
}

impl VmError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            VmError::NotBootable { .. } => "`ksbuild vm` boots outputs holding `disk.img` (GPT, UEFI: `disk-image`, `disk-image-arm64`), `sdcard.img` (Raspberry Pi on QEMU's raspi3b: `rpi-image@small`) or `kubesolo.iso` (`iso`)".into(),
            VmError::Missing(missing) => {
                let mut packages: Vec<&str> = missing.iter().map(|m| m.package).collect();
                packages.dedup();
                format!("install them: `sudo apt-get install {}`", packages.join(" "))
            }
            VmError::HoldsAnother { .. } | VmError::Unrecorded { .. } => "`--fresh` replaces it with a new copy (what the old one holds is lost); to keep it, move it away first or give another `--dir`".into(),
            VmError::Busy { .. } => "wait for it to end, or give another `--dir`".into(),
            VmError::NoSlots(_) => "leave out `--slot`".into(),
            _ => return None,
        })
    }
}

type Result<T> = std::result::Result<T, VmError>;

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> VmError + 'a {
    move |source| VmError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn bad(path: &Path, message: impl Into<String>) -> VmError {
    VmError::BadImage {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The bootable image in the output directory `out` of `target` (`printed`: the output's
/// store path, for messages).
pub fn recognise(target: &str, printed: &str, out: &Path) -> Result<Image> {
    let iso = out.join("kubesolo.iso");
    if iso.is_file() {
        return Ok(Image {
            kind: Kind::Iso,
            file: iso,
        });
    }
    let disk = out.join("disk.img");
    if disk.is_file() {
        let file = File::open(&disk).map_err(io("read", &disk))?;
        let esp = esp(&file, &disk)?;
        let fat = Fat::open(&file, esp.start, esp.size)
            .ok_or_else(|| bad(&disk, "its EFI system partition holds no FAT filesystem"))?;
        let names = match fat.find("/EFI/BOOT").map_err(io("read", &disk))? {
            Some(dir) if dir.dir => fat.list(&dir).map_err(io("read", &disk))?,
            _ => Vec::new(),
        };
        let has = |n: &str| names.iter().any(|x| x.eq_ignore_ascii_case(n));
        let arch = if has("BOOTX64.EFI") {
            Arch::X86_64
        } else if has("BOOTAA64.EFI") {
            Arch::Aarch64
        } else {
            return Err(bad(
                &disk,
                "its EFI system partition has no removable-media loader (`/EFI/BOOT/BOOTX64.EFI` or `BOOTAA64.EFI`) to tell its architecture and boot",
            ));
        };
        return Ok(Image {
            kind: Kind::Uefi(arch),
            file: disk,
        });
    }
    let sdcard = out.join("sdcard.img");
    if sdcard.is_file() {
        return Ok(Image {
            kind: Kind::RaspberryPi,
            file: sdcard,
        });
    }
    let mut names: Vec<String> = std::fs::read_dir(out)
        .map_err(io("list", out))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let holds = match names.len() {
        0 => "nothing".to_string(),
        n if n > 6 => format!(
            "{} and {} more",
            names[..5]
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", "),
            n - 5
        ),
        _ => names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    Err(VmError::NotBootable {
        target: target.to_string(),
        path: printed.to_string(),
        holds,
    })
}

/// The EFI system partition of a GPT disk image.
fn esp(file: &File, path: &Path) -> Result<Partition> {
    let table = read_table(file)
        .filter(|t| t.scheme == "GPT")
        .ok_or_else(|| bad(path, "not a GPT disk image"))?;
    let esp = table
        .partitions
        .iter()
        .find(|p| p.kind == ESP_TYPE)
        .cloned()
        .ok_or_else(|| bad(path, "its GPT has no EFI system partition"))?;
    Ok(esp)
}

/// Whether `program` is an executable file in a directory of `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// What booting an image of `kind` needs that this host lacks: QEMU's program, the
/// firmware (for an ISO, OVMF only with `uefi`: SeaBIOS comes with `qemu-system-x86`).
pub fn missing(kind: Kind, uefi: bool) -> Vec<Missing> {
    let mut out = Vec::new();
    let arch = match kind {
        Kind::Uefi(arch) => arch,
        Kind::RaspberryPi => Arch::Aarch64,
        Kind::Iso => Arch::X86_64,
    };
    if !on_path(arch.program()) {
        out.push(Missing {
            what: arch.program().into(),
            package: arch.package(),
        });
    }
    let firmware = match kind {
        Kind::Uefi(arch) => Some(arch.uefi_firmware()),
        Kind::Iso if uefi => Some(Arch::X86_64.uefi_firmware()),
        _ => None,
    };
    if let Some((file, package)) = firmware {
        if !Path::new(file).is_file() {
            out.push(Missing {
                what: file.into(),
                package,
            });
        }
    }
    out
}

/// The slot GRUB boots next on the GPT image `disk` (`active_slot` of its grubenv; A when
/// unset, as `grub-ab.cfg` reads it).
pub fn grub_slot(disk: &Path) -> Result<Slot> {
    let file = File::open(disk).map_err(io("read", disk))?;
    let (block, _) = grubenv_of(&file, disk)?;
    Ok(match grubenv::get(&block, "active_slot").as_deref() {
        Some("B") => Slot::B,
        _ => Slot::A,
    })
}

/// Byte runs of an image: `(offset, length)`.
type Extents = Vec<(u64, u64)>;

/// The grubenv block of a GPT image, and where its bytes lie in the image.
fn grubenv_of(file: &File, disk: &Path) -> Result<(Vec<u8>, Extents)> {
    let esp = esp(file, disk)?;
    let fat = Fat::open(file, esp.start, esp.size)
        .ok_or_else(|| bad(disk, "its EFI system partition holds no FAT filesystem"))?;
    let found = fat
        .find(GRUBENV)
        .map_err(io("read", disk))?
        .filter(|f| !f.dir)
        .ok_or_else(|| {
            bad(
                disk,
                format!("its EFI system partition has no `{GRUBENV}`: not an A/B GRUB image"),
            )
        })?;
    let block = fat.read_file(&found).map_err(io("read", disk))?;
    let extents = fat.extents(&found).map_err(io("read", disk))?;
    Ok((block, extents))
}

/// Makes GRUB boot `slot` of the writable GPT image `disk`, as a committed slot
/// (`active_slot=<slot>`, `boot_success=1` in its grubenv, rewritten in place as GRUB's
/// `save_env` does: same size, same clusters).
pub fn set_grub_slot(disk: &Path, slot: Slot) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(io("open for writing", disk))?;
    let (block, extents) = grubenv_of(&file, disk)?;
    let new = grubenv::with(
        &block,
        &[("active_slot", slot.name()), ("boot_success", "1")],
    )
    .map_err(|e| bad(disk, format!("{GRUBENV}: {e}")))?;
    let mut at = 0usize;
    for (offset, len) in extents {
        let len = len as usize;
        file.write_all_at(&new[at..at + len], offset)
            .map_err(io("write", disk))?;
        at += len;
    }
    file.sync_all().map_err(io("write", disk))
}

/// The slot the Pi firmware boots normally: the partition `boot_partition=` of the
/// `[all]` section of `autoboot.txt` names (2: Boot A, 3: Boot B), A if it names none.
pub fn pi_default_slot(autoboot: &str) -> Slot {
    let mut section = String::new();
    for line in autoboot.lines().map(str::trim) {
        if line.starts_with('[') {
            section = line.to_string();
        } else if section == "[all]" {
            if let Some(n) = line.strip_prefix("boot_partition=") {
                return if n.trim() == "3" { Slot::B } else { Slot::A };
            }
        }
    }
    Slot::A
}

/// The kernel command line for QEMU's raspi3b from a slot's `cmdline.txt`: its consoles
/// replaced by the PL011 QEMU connects (`ttyAMA0`), and the slot named (the firmware that
/// would tell it does not run).
pub fn pi_cmdline(cmdline_txt: &str, slot: Slot) -> String {
    let mut words = vec!["console=ttyAMA0,115200".to_string()];
    words.extend(
        cmdline_txt
            .split_whitespace()
            .filter(|w| !w.starts_with("console=") && !w.starts_with("kubesolo.slot="))
            .map(String::from),
    );
    words.push(format!("kubesolo.slot={}", slot.name()));
    words.join(" ")
}

/// The Pi SD card `sdcard`'s boot partition of `slot` (else the one `autoboot.txt` boots):
/// its kernel, Pi 3 device tree and initramfs copied into `into`, and the command line.
pub fn pi_kernel(sdcard: &Path, slot: Option<Slot>, into: &Path) -> Result<(DirectKernel, Slot)> {
    let file = File::open(sdcard).map_err(io("read", sdcard))?;
    let table = read_table(&file)
        .filter(|t| t.scheme == "MBR")
        .ok_or_else(|| bad(sdcard, "not an MBR SD card image"))?;
    let fats: Vec<(&Partition, Fat<'_>)> = table
        .partitions
        .iter()
        .filter_map(|p| Some((p, Fat::open(&file, p.start, p.size)?)))
        .collect();
    let read = |fat: &Fat<'_>, name: &str| -> Result<Option<Vec<u8>>> {
        match fat.find(name).map_err(io("read", sdcard))? {
            Some(f) if !f.dir => Ok(Some(fat.read_file(&f).map_err(io("read", sdcard))?)),
            _ => Ok(None),
        }
    };
    let slot = match slot {
        Some(s) => s,
        None => match fats.first() {
            Some((_, control)) => read(control, "autoboot.txt")?
                .map(|t| pi_default_slot(&String::from_utf8_lossy(&t)))
                .unwrap_or(Slot::A),
            None => Slot::A,
        },
    };
    let label = format!("KSOBOOT{}", slot.name());
    let number = if slot == Slot::A { 2 } else { 3 };
    let (part, fat) = fats
        .iter()
        .find(|(_, f)| f.label == label)
        .or_else(|| fats.iter().find(|(p, _)| p.number == number))
        .ok_or_else(|| {
            bad(
                sdcard,
                format!("no FAT boot partition {label} (slot {})", slot.name()),
            )
        })?;
    let mut paths = Vec::new();
    for name in [PI_KERNEL, PI_DTB, PI_INITRD] {
        let bytes = read(fat, name)?.ok_or_else(|| {
            let why = if name == PI_DTB {
                "; QEMU emulates a Raspberry Pi 3 (raspi3b) and needs its tree, which only \
                 `rpi-image@small` (the mainline kernel) carries: boot that variant"
                    .to_string()
            } else {
                String::new()
            };
            bad(
                sdcard,
                format!(
                    "boot partition {} ({label}) has no `{name}`{why}",
                    part.number
                ),
            )
        })?;
        let path = into.join(name);
        std::fs::write(&path, bytes).map_err(io("write", &path))?;
        paths.push(path);
    }
    let cmdline = read(fat, "cmdline.txt")?
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|| "panic=-1 kubesolo.data=LABEL=KSOLODATA".into());
    let [kernel, dtb, initrd] = <[PathBuf; 3]>::try_from(paths).unwrap_or_else(|_| unreachable!());
    Ok((
        DirectKernel {
            kernel,
            dtb,
            initrd,
            cmdline: pi_cmdline(&cmdline, slot),
        },
        slot,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pi_boots_the_partition_autoboot_txt_names_in_all() {
        let initial = "[all]\ntryboot_a_b=1\nboot_partition=2\n[tryboot]\nboot_partition=3\n";
        assert_eq!(pi_default_slot(initial), Slot::A);
        let committed = "[all]\ntryboot_a_b=1\nboot_partition=3\n[tryboot]\nboot_partition=2\n";
        assert_eq!(pi_default_slot(committed), Slot::B);
        assert_eq!(pi_default_slot(""), Slot::A);
    }

    #[test]
    fn the_pi_command_line_gets_qemu_s_console_and_the_slot() {
        let txt = "console=serial0,115200 console=tty1 panic=-1 rootwait kubesolo.slot=A kubesolo.data=LABEL=KSOLODATA\n";
        assert_eq!(
            pi_cmdline(txt, Slot::B),
            "console=ttyAMA0,115200 panic=-1 rootwait kubesolo.data=LABEL=KSOLODATA kubesolo.slot=B"
        );
        // A bundle's cmdline.txt names no slot (the firmware tells it).
        assert_eq!(
            pi_cmdline("panic=-1 kubesolo.data=LABEL=KSOLODATA", Slot::A),
            "console=ttyAMA0,115200 panic=-1 kubesolo.data=LABEL=KSOLODATA kubesolo.slot=A"
        );
    }

    #[test]
    fn slots_parse_in_either_case() {
        assert_eq!("b".parse::<Slot>(), Ok(Slot::B));
        assert_eq!("A".parse::<Slot>(), Ok(Slot::A));
        assert!("C".parse::<Slot>().is_err());
    }

    /// A GPT image with an ESP made by mtools, its grubenv rewritten in place: mtools reads
    /// the new values back; the architecture is told by the loader's name. Needs mtools.
    #[test]
    fn the_grubenv_of_a_gpt_image_is_rewritten_in_place_and_its_arch_recognised() {
        let have = |p: &str| {
            std::process::Command::new(p)
                .arg("--version")
                .output()
                .is_ok()
        };
        if !have("mformat") {
            assert!(
                std::env::var_os("KSBUILD_REQUIRE_QEMU").is_none(),
                "mtools is required"
            );
            eprintln!("SKIP: mtools is not installed");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let disk = out.join("disk.img");
        let esp_at = 1u64 << 20;
        let esp_len = 64u64 << 20;
        {
            let f = File::create(&disk).unwrap();
            f.set_len(esp_at + esp_len + (1 << 20)).unwrap();
            let mut mbr = [0u8; 512];
            mbr[446 + 4] = 0xEE;
            mbr[510] = 0x55;
            mbr[511] = 0xAA;
            f.write_all_at(&mbr, 0).unwrap();
            let mut header = [0u8; 92];
            header[0..8].copy_from_slice(b"EFI PART");
            header[72..80].copy_from_slice(&2u64.to_le_bytes());
            header[80..84].copy_from_slice(&128u32.to_le_bytes());
            header[84..88].copy_from_slice(&128u32.to_le_bytes());
            f.write_all_at(&header, 512).unwrap();
            let mut e = [0u8; 128];
            // c12a7328-f81f-11d2-ba4b-00a0c93ec93b, mixed-endian as GPT stores it.
            e[0..16].copy_from_slice(&[
                0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
                0xc9, 0x3b,
            ]);
            e[16..32].copy_from_slice(&[1; 16]);
            e[32..40].copy_from_slice(&(esp_at / 512).to_le_bytes());
            e[40..48].copy_from_slice(&((esp_at + esp_len) / 512 - 1).to_le_bytes());
            f.write_all_at(&e, 1024).unwrap();
        }
        let at = format!("{}@@{esp_at}", disk.display());
        let mtools = |args: &[&str]| {
            let out = std::process::Command::new(args[0])
                .env("MTOOLS_SKIP_CHECK", "1")
                .args(&args[1..])
                .output()
                .unwrap();
            assert!(out.status.success(), "{args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        mtools(&[
            "mformat", "-i", &at, "-F", "-T", "131072", "-h", "1", "-s", "32", "::",
        ]);
        mtools(&["mmd", "-i", &at, "::/EFI", "::/EFI/BOOT"]);
        let warning = "# WARNING: Do not edit this file by tools other than grub-editenv!!!\n";
        let mut env = format!(
            "{}{warning}active_slot=A\nboot_counter=3\nboot_success=0\n",
            grubenv::HEADER
        )
        .into_bytes();
        env.resize(1024, b'#');
        let env_file = tmp.path().join("grubenv");
        std::fs::write(&env_file, &env).unwrap();
        std::fs::write(tmp.path().join("BOOTAA64.EFI"), b"MZ").unwrap();
        for f in ["grubenv", "BOOTAA64.EFI"] {
            let src = tmp.path().join(f).display().to_string();
            mtools(&["mcopy", "-i", &at, &src, &format!("::/EFI/BOOT/{f}")]);
        }
        let image = recognise("t", "/nix/store/x-t", &out).unwrap();
        assert_eq!(image.kind, Kind::Uefi(Arch::Aarch64));
        assert_eq!(grub_slot(&disk).unwrap(), Slot::A);
        set_grub_slot(&disk, Slot::B).unwrap();
        assert_eq!(grub_slot(&disk).unwrap(), Slot::B);
        let read = mtools(&["mtype", "-i", &at, "::/EFI/BOOT/grubenv"]);
        assert!(
            read.starts_with(&format!(
                "{}{warning}active_slot=B\nboot_counter=3\nboot_success=1\n#",
                grubenv::HEADER
            )) && read.len() == 1024,
            "{read}"
        );
        // An output without an image names what it holds.
        std::fs::remove_file(&disk).unwrap();
        std::fs::write(out.join("bzImage"), b"").unwrap();
        let e = recognise("kernel", "/nix/store/x-kernel", &out).unwrap_err();
        assert_eq!(
            e.to_string(),
            "`kernel` (`/nix/store/x-kernel`) is not a bootable image: it holds `bzImage`"
        );
    }
}
