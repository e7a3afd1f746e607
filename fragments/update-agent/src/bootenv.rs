//! The boot-environment abstraction: which slot booted, which one boots next, whether this
//! boot is an uncommitted trial, and the three edits (try a slot, commit, roll back), for
//! GRUB (`grubenv` on the ESP, rewritten in place) and the Raspberry Pi (`autoboot.txt` on the
//! control partition, replaced atomically; the firmware's one-shot tryboot). Does I/O.

use crate::autoboot::AutoBoot;
use crate::grubenv::{EnvBlock, BLOCK_SIZE};
use crate::json::Json;
use crate::paths::Paths;
use crate::slot::{self, Locator, Target};
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};

/// A system slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// Slot A (GRUB partition 2 `KSOLOA`; Pi partition 2).
    A,
    /// Slot B (GRUB partition 3 `KSOLOB`; Pi partition 3).
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

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// From `A`/`B`.
    pub fn parse(text: &str) -> Option<Slot> {
        match text {
            "A" => Some(Slot::A),
            "B" => Some(Slot::B),
            _ => None,
        }
    }

    /// Its partition number (both layouts put A at 2 and B at 3).
    pub fn partition(self) -> u32 {
        match self {
            Slot::A => 2,
            Slot::B => 3,
        }
    }

    /// The slot of a partition number.
    pub fn from_partition(n: u32) -> Option<Slot> {
        match n {
            2 => Some(Slot::A),
            3 => Some(Slot::B),
            _ => None,
        }
    }
}

/// A boot environment.
pub trait BootEnv {
    /// `grub` or `rpi` (the manifest's `boot=`).
    fn kind(&self) -> &'static str;
    /// The slot this system booted from.
    fn booted(&self) -> Result<Slot, String>;
    /// The slot a normal boot takes next.
    fn active(&self) -> Result<Slot, String>;
    /// Whether this boot of `booted` is a trial not yet committed.
    fn tentative(&self, booted: Slot) -> Result<bool, String>;
    /// Makes the next boot a trial of `new` (GRUB: counted; Pi: with `reboot "0 tryboot"`).
    fn mark_try(&self, new: Slot) -> Result<(), String>;
    /// Commits the booted slot (after a healthy trial).
    fn commit(&self, booted: Slot) -> Result<(), String>;
    /// Makes `to` the slot of the next normal boot, committed.
    fn rollback(&self, to: Slot) -> Result<(), String>;
    /// The partition of a slot.
    fn slot_target(&self, slot: Slot) -> Target;
    /// The reboot(2) argument that starts a trial (`0 tryboot` on the Pi).
    fn trial_reboot_arg(&self) -> Option<&'static str>;
    /// The boot environment's own values, for `status`.
    fn details(&self) -> Result<Vec<(String, Json)>, String>;
}

/// The boot environment of this system: the Pi when its firmware left
/// `/proc/device-tree/chosen/bootloader`, GRUB otherwise.
pub fn detect(paths: &Paths) -> Box<dyn BootEnv> {
    if paths.path("/proc/device-tree/chosen/bootloader").is_dir() {
        Box::new(RaspberryPi {
            paths: paths.clone(),
        })
    } else {
        Box::new(Grub {
            paths: paths.clone(),
        })
    }
}

/// `kubesolo.slot=` of the kernel command line.
pub fn cmdline_slot(paths: &Paths) -> Result<Slot, String> {
    let path = paths.path("/proc/cmdline");
    let text = fs::read_to_string(&path)
        .map_err(|e| format!("cannot read `{}`: {}", path.display(), e))?;
    let word = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("kubesolo.slot="))
        .ok_or_else(|| format!("the kernel command line (`{}`) has no `kubesolo.slot=`: not booted from an A/B slot", path.display()))?;
    Slot::parse(word).ok_or_else(|| {
        format!(
            "the kernel command line says `kubesolo.slot={}`, not A or B",
            word
        )
    })
}

/// GRUB: `EFI/BOOT/grubenv` on the ESP (label `KSOLOEFI`).
pub struct Grub {
    paths: Paths,
}

const GRUBENV: &str = "EFI/BOOT/grubenv";
const ESP: Target = Target {
    name: "esp",
    locator: Locator::Label("KSOLOEFI"),
    fstype: "vfat",
};

impl Grub {
    fn read(&self) -> Result<EnvBlock, String> {
        let esp = slot::mount(&self.paths, &ESP)?;
        let path = esp.dir().join(GRUBENV);
        let bytes =
            fs::read(&path).map_err(|e| format!("cannot read `{}`: {}", path.display(), e))?;
        let block = EnvBlock::from_bytes(&bytes).map_err(|e| {
            format!(
                "`{}` {}: recreate it with `grub-editenv FILE create`",
                path.display(),
                e
            )
        })?;
        esp.finish()?;
        Ok(block)
    }

    /// Sets `pairs` in grubenv, rewriting its 1024 bytes in place (never truncated, the same
    /// blocks GRUB's save_env overwrites), then fsync.
    fn edit(&self, pairs: &[(&str, &str)]) -> Result<(), String> {
        let esp = slot::mount(&self.paths, &ESP)?;
        let path = esp.dir().join(GRUBENV);
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("cannot open `{}` for writing: {}", path.display(), e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read `{}`: {}", path.display(), e))?;
        let mut block = EnvBlock::from_bytes(&bytes).map_err(|e| {
            format!(
                "`{}` {}: recreate it with `grub-editenv FILE create`",
                path.display(),
                e
            )
        })?;
        block
            .set_all(pairs)
            .map_err(|e| format!("`{}` {}", path.display(), e))?;
        if block.as_bytes() != &bytes[..] {
            file.seek(SeekFrom::Start(0))
                .and_then(|_| file.write_all(block.as_bytes()))
                .and_then(|_| file.sync_all())
                .map_err(|e| format!("cannot write `{}`: {}", path.display(), e))?;
        }
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len != BLOCK_SIZE as u64 {
            return Err(format!(
                "`{}` is {} bytes after writing, not {}",
                path.display(),
                len,
                BLOCK_SIZE
            ));
        }
        drop(file);
        esp.finish()
    }
}

fn grub_active(block: &EnvBlock) -> Slot {
    // grub-ab.cfg: anything but B is A.
    if block.get("active_slot").as_deref() == Some("B") {
        Slot::B
    } else {
        Slot::A
    }
}

impl BootEnv for Grub {
    fn kind(&self) -> &'static str {
        "grub"
    }

    fn booted(&self) -> Result<Slot, String> {
        cmdline_slot(&self.paths)
    }

    fn active(&self) -> Result<Slot, String> {
        Ok(grub_active(&self.read()?))
    }

    fn tentative(&self, booted: Slot) -> Result<bool, String> {
        let block = self.read()?;
        Ok(grub_active(&block) == booted && block.get("boot_success").as_deref() != Some("1"))
    }

    fn mark_try(&self, new: Slot) -> Result<(), String> {
        self.edit(&[
            ("active_slot", new.name()),
            ("boot_counter", "3"),
            ("boot_success", "0"),
        ])
    }

    fn commit(&self, booted: Slot) -> Result<(), String> {
        let block = self.read()?;
        if grub_active(&block) != booted {
            return Err(format!(
                "grubenv's active_slot is {}, not the booted slot {}: nothing to commit",
                grub_active(&block).name(),
                booted.name()
            ));
        }
        self.edit(&[("boot_success", "1"), ("boot_counter", "3")])
    }

    fn rollback(&self, to: Slot) -> Result<(), String> {
        self.edit(&[
            ("active_slot", to.name()),
            ("boot_counter", "3"),
            ("boot_success", "1"),
        ])
    }

    fn slot_target(&self, slot: Slot) -> Target {
        match slot {
            Slot::A => Target {
                name: "A",
                locator: Locator::Label("KSOLOA"),
                fstype: "ext4",
            },
            Slot::B => Target {
                name: "B",
                locator: Locator::Label("KSOLOB"),
                fstype: "ext4",
            },
        }
    }

    fn trial_reboot_arg(&self) -> Option<&'static str> {
        None
    }

    fn details(&self) -> Result<Vec<(String, Json)>, String> {
        let block = self.read()?;
        Ok(["active_slot", "boot_counter", "boot_success"]
            .iter()
            .map(|k| (k.to_string(), Json::opt(block.get(k).as_deref())))
            .collect())
    }
}

/// The Raspberry Pi: `autoboot.txt` on partition 1, slots on partitions 2 and 3.
pub struct RaspberryPi {
    paths: Paths,
}

const CONTROL: Target = Target {
    name: "control",
    locator: Locator::Number(1),
    fstype: "vfat",
};
const AUTOBOOT: &str = "autoboot.txt";

impl RaspberryPi {
    /// A `/proc/device-tree/chosen/bootloader/` cell (a big-endian u32); `None` if absent.
    fn cell(&self, name: &str) -> Result<Option<u32>, String> {
        let path = self
            .paths
            .path(&format!("/proc/device-tree/chosen/bootloader/{}", name));
        match fs::read(&path) {
            Ok(b) if b.len() == 4 => Ok(Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
            Ok(b) => Err(format!(
                "`{}` is {} bytes, not a 4-byte device-tree cell",
                path.display(),
                b.len()
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read `{}`: {}", path.display(), e)),
        }
    }

    fn booted_partition(&self) -> Result<u32, String> {
        self.cell("partition")?.ok_or_else(|| {
            "the firmware left no /proc/device-tree/chosen/bootloader/partition".to_string()
        })
    }

    fn read(&self) -> Result<AutoBoot, String> {
        let control = slot::mount(&self.paths, &CONTROL)?;
        let path = control.dir().join(AUTOBOOT);
        let text = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read `{}`: {}", path.display(), e))?;
        let autoboot = AutoBoot::parse(&text).map_err(|e| format!("`{}` {}", path.display(), e))?;
        control.finish()?;
        Ok(autoboot)
    }

    fn edit(&self, change: &dyn Fn(&mut AutoBoot)) -> Result<(), String> {
        let control = slot::mount(&self.paths, &CONTROL)?;
        let path = control.dir().join(AUTOBOOT);
        let text = fs::read_to_string(&path)
            .map_err(|e| format!("cannot read `{}`: {}", path.display(), e))?;
        let mut autoboot =
            AutoBoot::parse(&text).map_err(|e| format!("`{}` {}", path.display(), e))?;
        change(&mut autoboot);
        let new = autoboot
            .to_text()
            .map_err(|e| format!("`{}` {}", path.display(), e))?;
        if new != text {
            slot::replace_file(&path, new.as_bytes())?;
        }
        control.finish()
    }
}

fn partition_slot(n: Option<u32>, what: &str) -> Result<Slot, String> {
    match n {
        Some(n) => Slot::from_partition(n)
            .ok_or_else(|| format!("{} is partition {}, not a slot (2 = A, 3 = B)", what, n)),
        None => Err(format!("{} is not set", what)),
    }
}

impl BootEnv for RaspberryPi {
    fn kind(&self) -> &'static str {
        "rpi"
    }

    fn booted(&self) -> Result<Slot, String> {
        // The firmware's word, not cmdline.txt's (a bundle's cmdline.txt is the same for both
        // slots).
        match self.cell("partition")? {
            Some(n) => partition_slot(Some(n), "the booted partition (device tree)"),
            None => cmdline_slot(&self.paths),
        }
    }

    fn active(&self) -> Result<Slot, String> {
        partition_slot(
            self.read()?.boot_partition("all"),
            "autoboot.txt's [all] boot_partition",
        )
    }

    fn tentative(&self, booted: Slot) -> Result<bool, String> {
        let autoboot = self.read()?;
        let tryboot = self.cell("tryboot")?.unwrap_or(0) == 1;
        let part = self.booted_partition()?;
        Ok(tryboot
            && part == booted.partition()
            && autoboot.boot_partition("tryboot") == Some(part)
            && autoboot.boot_partition("all") != Some(part))
    }

    fn mark_try(&self, new: Slot) -> Result<(), String> {
        self.edit(&|a: &mut AutoBoot| {
            if a.get("all", "tryboot_a_b").as_deref() != Some("1") {
                a.set("all", "tryboot_a_b", "1");
            }
            a.set("tryboot", "boot_partition", &new.partition().to_string());
        })
    }

    fn commit(&self, booted: Slot) -> Result<(), String> {
        if !self.tentative(booted)? {
            return Err(format!(
                "slot {} was not booted by tryboot from autoboot.txt's [tryboot] partition: nothing to commit",
                booted.name()
            ));
        }
        self.rollback(booted)
    }

    fn rollback(&self, to: Slot) -> Result<(), String> {
        self.edit(&|a: &mut AutoBoot| {
            a.set("all", "boot_partition", &to.partition().to_string());
            a.set(
                "tryboot",
                "boot_partition",
                &to.other().partition().to_string(),
            );
        })
    }

    fn slot_target(&self, slot: Slot) -> Target {
        match slot {
            Slot::A => Target {
                name: "A",
                locator: Locator::Number(2),
                fstype: "vfat",
            },
            Slot::B => Target {
                name: "B",
                locator: Locator::Number(3),
                fstype: "vfat",
            },
        }
    }

    fn trial_reboot_arg(&self) -> Option<&'static str> {
        Some("0 tryboot")
    }

    fn details(&self) -> Result<Vec<(String, Json)>, String> {
        let autoboot = self.read()?;
        let num = |n: Option<u32>| match n {
            Some(n) => Json::Int(i64::from(n)),
            None => Json::Null,
        };
        Ok(vec![
            (
                "boot_partition".to_string(),
                num(autoboot.boot_partition("all")),
            ),
            (
                "tryboot_partition".to_string(),
                num(autoboot.boot_partition("tryboot")),
            ),
            ("booted_partition".to_string(), num(self.cell("partition")?)),
            ("tryboot".to_string(), num(self.cell("tryboot")?)),
        ])
    }
}
