//! QEMU's command lines for the images ksbuild builds: one function gives the program and
//! its arguments for a guest (a UEFI disk image, a Raspberry Pi SD card, an ISO), the
//! writable copy or ISO it boots and the user's extra arguments. The tests boot through
//! these lines too, so there is one copy of them. Pure: no I/O.

use std::path::{Path, PathBuf};

/// The unified OVMF firmware (x86_64 UEFI), used with `-bios`: Debian's `ovmf`.
pub const OVMF: &str = "/usr/share/ovmf/OVMF.fd";
/// The AAVMF firmware (arm64 UEFI) for `virt`, used with `-bios`: Debian's `qemu-efi-aarch64`.
pub const AAVMF: &str = "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd";

/// A guest's processor architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// x86_64: `qemu-system-x86_64`, `q35`.
    X86_64,
    /// AArch64: `qemu-system-aarch64`, `virt` with a Cortex-A72.
    Aarch64,
}

impl Arch {
    /// The QEMU program that emulates it.
    pub fn program(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// The Debian package holding [`Arch::program`].
    pub fn package(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86",
            Arch::Aarch64 => "qemu-system-arm",
        }
    }

    /// Its UEFI firmware and the Debian package holding it.
    pub fn uefi_firmware(self) -> (&'static str, &'static str) {
        match self {
            Arch::X86_64 => (OVMF, "ovmf"),
            Arch::Aarch64 => (AAVMF, "qemu-efi-aarch64"),
        }
    }

    /// Its name in messages (as `uname -m` says it).
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
}

/// A Raspberry Pi boot partition's kernel, device tree and initramfs (copied out of the SD
/// card: QEMU cannot run the Pi's firmware, which would load them) and the kernel command
/// line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectKernel {
    /// `kernel8.img`.
    pub kernel: PathBuf,
    /// `bcm2837-rpi-3-b.dtb`: the tree of the Pi 3 that QEMU's `raspi3b` emulates.
    pub dtb: PathBuf,
    /// `kubesolo-os.gz`.
    pub initrd: PathBuf,
    /// The command line (`-append`).
    pub cmdline: String,
}

/// How an ISO is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsoMedia {
    /// A CD-ROM drive (AHCI on `q35`).
    Cdrom,
    /// A disk (virtio), as a USB stick holding the hybrid ISO would be.
    Disk,
}

/// What QEMU boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Guest {
    /// A GPT disk image (`disk.img`) under UEFI firmware (OVMF or AAVMF), on virtio.
    Uefi {
        /// The image's architecture.
        arch: Arch,
        /// The writable copy booted.
        disk: PathBuf,
    },
    /// A Raspberry Pi SD card (`sdcard.img`) on `raspi3b`, its kernel booted directly.
    RaspberryPi {
        /// The writable copy attached as the SD card.
        sdcard: PathBuf,
        /// The kernel, device tree, initramfs and command line of the slot booted.
        kernel: DirectKernel,
    },
    /// An x86_64 hybrid ISO (`kubesolo.iso`) under SeaBIOS, or OVMF with `uefi`.
    Iso {
        /// The ISO, attached read-only.
        iso: PathBuf,
        /// As a CD-ROM or as a disk.
        media: IsoMedia,
        /// OVMF instead of SeaBIOS.
        uefi: bool,
        /// The persistent data disk (an ext4 filesystem labelled `KSOLODATA`), on virtio.
        data_disk: Option<PathBuf>,
    },
}

/// One QEMU run: the guest and how it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// What is booted.
    pub guest: Guest,
    /// `-accel` (`tcg` by default: this project's machines offer no usable KVM).
    pub accel: String,
    /// Let the guest reboot; by default (`-no-reboot`) QEMU ends when the guest reboots, as
    /// it does when it powers off (a kernel panic reboots: `panic=-1`).
    pub reboot: bool,
    /// Further arguments, after ksbuild's (a later `-m` overrides ksbuild's; `-netdev …
    /// -device …` adds a network).
    pub extra: Vec<String>,
}

/// A path in a `-drive` option, whose commas QEMU reads doubled.
fn drive_path(path: &Path) -> String {
    path.display().to_string().replace(',', ",,")
}

impl Machine {
    /// A machine for `guest`: TCG, no reboot, no extra arguments.
    pub fn new(guest: Guest) -> Machine {
        Machine {
            guest,
            accel: "tcg".into(),
            reboot: false,
            extra: Vec::new(),
        }
    }

    /// The same machine with `extra` after ksbuild's arguments.
    pub fn with_extra<S: Into<String>>(mut self, extra: impl IntoIterator<Item = S>) -> Machine {
        self.extra.extend(extra.into_iter().map(Into::into));
        self
    }

    /// The guest's architecture.
    pub fn arch(&self) -> Arch {
        match &self.guest {
            Guest::Uefi { arch, .. } => *arch,
            Guest::RaspberryPi { .. } => Arch::Aarch64,
            Guest::Iso { .. } => Arch::X86_64,
        }
    }

    /// The QEMU program.
    pub fn program(&self) -> &'static str {
        self.arch().program()
    }

    /// The firmware file the machine needs, with its Debian package (SeaBIOS and the Pi's
    /// direct boot need none: SeaBIOS comes with `qemu-system-x86`).
    pub fn firmware(&self) -> Option<(&'static str, &'static str)> {
        match &self.guest {
            Guest::Uefi { arch, .. } => Some(arch.uefi_firmware()),
            Guest::Iso { uefi: true, .. } => Some(Arch::X86_64.uefi_firmware()),
            _ => None,
        }
    }

    /// QEMU's arguments: no network (`-net none`: no NIC, no PXE detour), the serial
    /// console on stdio (`-nographic`), no reboot; then `extra`.
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["-accel".into(), self.accel.clone()];
        let mut push = |words: &[&str]| a.extend(words.iter().map(|w| w.to_string()));
        match &self.guest {
            Guest::Uefi { arch, disk } => {
                match arch {
                    Arch::X86_64 => push(&["-M", "q35"]),
                    Arch::Aarch64 => push(&["-M", "virt", "-cpu", "cortex-a72"]),
                }
                push(&["-smp", "2", "-m", "1024", "-net", "none", "-nographic"]);
                push(&["-bios", arch.uefi_firmware().0, "-drive"]);
                push(&[&format!("file={},format=raw,if=virtio", drive_path(disk))]);
            }
            Guest::RaspberryPi { sdcard, kernel } => {
                // raspi3b has 1 GiB and four cores, fixed.
                push(&["-M", "raspi3b", "-m", "1G"]);
                let path = |p: &Path| p.display().to_string();
                push(&["-kernel", &path(&kernel.kernel), "-dtb", &path(&kernel.dtb)]);
                push(&["-initrd", &path(&kernel.initrd), "-append", &kernel.cmdline]);
                push(&["-drive"]);
                push(&[&format!("file={},format=raw,if=sd", drive_path(sdcard))]);
                push(&["-net", "none", "-nographic"]);
            }
            Guest::Iso {
                iso,
                media,
                uefi,
                data_disk,
            } => {
                // Not `-nographic`: with it SeaBIOS copies its VGA screen onto the serial
                // port, and isolinux's menu (drawn on both) comes out garbled.
                push(&[
                    "-M",
                    "q35",
                    "-smp",
                    "2",
                    "-m",
                    "1024",
                    "-net",
                    "none",
                    "-display",
                    "none",
                    "-serial",
                    "mon:stdio",
                ]);
                if *uefi {
                    push(&["-bios", OVMF]);
                }
                let cdrom = if *media == IsoMedia::Cdrom {
                    ",media=cdrom"
                } else {
                    ""
                };
                push(&["-drive"]);
                push(&[&format!(
                    "if=none,id=iso,file={},format=raw,readonly=on{cdrom}",
                    drive_path(iso)
                )]);
                // The ISO first in the boot order, whatever the data disk holds.
                let device = match media {
                    IsoMedia::Cdrom => "ide-cd,drive=iso,bootindex=0",
                    IsoMedia::Disk => "virtio-blk-pci,drive=iso,bootindex=0",
                };
                push(&["-device", device]);
                if let Some(data) = data_disk {
                    push(&["-drive"]);
                    push(&[&format!("file={},format=raw,if=virtio", drive_path(data))]);
                }
            }
        }
        if !self.reboot {
            a.push("-no-reboot".into());
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// The whole command line, quoted for a shell where needed (for messages).
    pub fn display(&self) -> String {
        std::iter::once(self.program().to_string())
            .chain(self.args())
            .map(|w| {
                if !w.is_empty()
                    && w.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_./=,:@+%".contains(&b))
                {
                    w
                } else {
                    format!("'{}'", w.replace('\'', r"'\''"))
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_uefi_lines_are_the_boot_tests_lines() {
        let m = Machine::new(Guest::Uefi {
            arch: Arch::X86_64,
            disk: "/tmp/vm/disk.img".into(),
        });
        assert_eq!(m.program(), "qemu-system-x86_64");
        assert_eq!(
            m.args(),
            words(
                "-accel tcg -M q35 -smp 2 -m 1024 -net none -nographic \
                 -bios /usr/share/ovmf/OVMF.fd \
                 -drive file=/tmp/vm/disk.img,format=raw,if=virtio -no-reboot"
            )
        );
        let m = Machine::new(Guest::Uefi {
            arch: Arch::Aarch64,
            disk: "/tmp/a,b/disk.img".into(),
        })
        .with_extra(["-m", "2048"]);
        assert_eq!(m.program(), "qemu-system-aarch64");
        assert_eq!(m.firmware(), Some((AAVMF, "qemu-efi-aarch64")));
        assert_eq!(
            m.args(),
            words(
                "-accel tcg -M virt -cpu cortex-a72 -smp 2 -m 1024 -net none -nographic \
                 -bios /usr/share/qemu-efi-aarch64/QEMU_EFI.fd \
                 -drive file=/tmp/a,,b/disk.img,format=raw,if=virtio -no-reboot -m 2048"
            )
        );
    }

    #[test]
    fn the_pi_boots_its_kernel_directly_with_the_sd_card_attached() {
        let mut m = Machine::new(Guest::RaspberryPi {
            sdcard: "/s/sdcard.img".into(),
            kernel: DirectKernel {
                kernel: "/k/kernel8.img".into(),
                dtb: "/k/bcm2837-rpi-3-b.dtb".into(),
                initrd: "/k/kubesolo-os.gz".into(),
                cmdline: "console=ttyAMA0,115200 panic=-1".into(),
            },
        });
        m.reboot = true;
        let a = m.args();
        assert_eq!(m.firmware(), None);
        assert_eq!(
            a,
            [
                "-accel",
                "tcg",
                "-M",
                "raspi3b",
                "-m",
                "1G",
                "-kernel",
                "/k/kernel8.img",
                "-dtb",
                "/k/bcm2837-rpi-3-b.dtb",
                "-initrd",
                "/k/kubesolo-os.gz",
                "-append",
                "console=ttyAMA0,115200 panic=-1",
                "-drive",
                "file=/s/sdcard.img,format=raw,if=sd",
                "-net",
                "none",
                "-nographic"
            ]
        );
        assert!(m
            .display()
            .contains(" -append 'console=ttyAMA0,115200 panic=-1' "));
    }

    #[test]
    fn the_iso_is_a_read_only_cd_first_in_the_boot_order_with_its_data_disk() {
        let iso = |media, uefi| {
            Machine::new(Guest::Iso {
                iso: "/n/kubesolo.iso".into(),
                media,
                uefi,
                data_disk: Some("/d/data.img".into()),
            })
        };
        let cd = iso(IsoMedia::Cdrom, false);
        assert_eq!(cd.firmware(), None);
        assert_eq!(
            cd.args(),
            words(
                "-accel tcg -M q35 -smp 2 -m 1024 -net none -display none -serial mon:stdio \
                 -drive if=none,id=iso,file=/n/kubesolo.iso,format=raw,readonly=on,media=cdrom \
                 -device ide-cd,drive=iso,bootindex=0 \
                 -drive file=/d/data.img,format=raw,if=virtio -no-reboot"
            )
        );
        let disk = iso(IsoMedia::Disk, true);
        assert_eq!(disk.firmware(), Some((OVMF, "ovmf")));
        let a = disk.args().join(" ");
        assert!(
            a.contains("-bios /usr/share/ovmf/OVMF.fd -drive if=none,id=iso,file=/n/kubesolo.iso,format=raw,readonly=on -device virtio-blk-pci,drive=iso,bootindex=0"),
            "{a}"
        );
    }
}
