//! Where the agent's files are: every absolute path goes through [`Paths`], which prefixes it
//! with `KUBESOLO_UPDATE_ROOT` in test mode. No I/O.
//!
//! Test mode (`KUBESOLO_UPDATE_ROOT=/some/dir`) lets tests run without root on the host:
//! `<root>/proc/cmdline`, `<root>/proc/device-tree/chosen/bootloader/{partition,tryboot}`
//! (a Pi when present), `<root>/proc/sys/kernel/random/boot_id`, `<root>/proc/sys/kernel/arch`
//! (overrides the compiled-in architecture), `<root>/proc/<pid>/comm` (health process),
//! `<root>/etc/os-release`, `<root>/etc/kubesolo/update.conf`,
//! `<root>/usr/share/kubesolo-update/keys/`, `<root>/mnt/data/var/lib/kubesolo-update/state`;
//! nothing is mounted: slot A/B are the directories `<root>/slots/A` and `<root>/slots/B`, the
//! GRUB ESP is `<root>/slots/esp` (`EFI/BOOT/grubenv`) and the Pi control partition is
//! `<root>/slots/control` (`autoboot.txt`); rebooting writes `<root>/reboot-requested`
//! (holding the reboot argument, e.g. `0 tryboot`, or nothing).

use std::path::{Path, PathBuf};

/// The environment variable that turns on test mode.
pub const ROOT_ENV: &str = "KUBESOLO_UPDATE_ROOT";

/// The file-system root the agent works under.
#[derive(Clone, Debug)]
pub struct Paths {
    root: Option<PathBuf>,
}

impl Paths {
    /// The real system (`/`).
    pub fn system() -> Paths {
        Paths { root: None }
    }

    /// Test mode under `root`.
    pub fn under(root: &Path) -> Paths {
        Paths {
            root: Some(root.to_path_buf()),
        }
    }

    /// From the environment: test mode when `KUBESOLO_UPDATE_ROOT` is set and not empty.
    pub fn from_env() -> Paths {
        match std::env::var_os(ROOT_ENV) {
            Some(root) if !root.is_empty() => Paths::under(Path::new(&root)),
            _ => Paths::system(),
        }
    }

    /// Whether this is test mode (no mounts, no reboots).
    pub fn test_mode(&self) -> bool {
        self.root.is_some()
    }

    /// The path of the absolute path `abs` (`/etc/...`) here.
    pub fn path(&self, abs: &str) -> PathBuf {
        match &self.root {
            Some(root) => root.join(abs.trim_start_matches('/')),
            None => PathBuf::from(abs),
        }
    }
}
