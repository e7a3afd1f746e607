//! A partition the agent writes (slot A/B, the GRUB ESP, the Pi control partition): mounted
//! on a temporary mount point for as long as a [`Mounted`] lives (a plain directory under
//! `<root>/slots/` in test mode), and the file operations that keep a power cut harmless:
//! write to a temp name, fsync, rename, fsync the directory.

use crate::blockdev;
use crate::paths::Paths;
use crate::sys;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Temporary files in a slot start with this; bundle names may not.
pub const TEMP_PREFIX: &str = ".kubesolo-update.tmp.";

/// How to find a partition on the real system.
#[derive(Clone, Debug)]
pub enum Locator {
    /// By file-system label (GRUB slots `KSOLOA`/`KSOLOB`, ESP `KSOLOEFI`).
    Label(&'static str),
    /// By partition number on the boot disk (the disk of the data partition): the Pi.
    Number(u32),
}

/// A partition to mount.
#[derive(Clone, Debug)]
pub struct Target {
    /// Its name here: `A`, `B`, `esp`, `control` (the test-mode directory and mount point).
    pub name: &'static str,
    /// How to find it.
    pub locator: Locator,
    /// `ext4` or `vfat`.
    pub fstype: &'static str,
}

/// A mounted partition, unmounted when dropped.
pub struct Mounted {
    dir: PathBuf,
    mounted: bool,
}

impl Mounted {
    /// Its root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Flushes and unmounts now, reporting failure (drop ignores it).
    pub fn finish(mut self) -> Result<(), String> {
        if self.mounted {
            sys::sync_all();
            self.mounted = false;
            sys::unmount(&self.dir)
                .map_err(|e| format!("cannot unmount `{}`: {}", self.dir.display(), e))?;
        }
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if self.mounted {
            sys::sync_all();
            let _ = sys::unmount(&self.dir);
        }
    }
}

/// The disk the boot partitions are on: the one holding `/mnt/data`, else the one with the
/// `KSOLODATA` label.
fn boot_disk(paths: &Paths) -> Option<String> {
    blockdev::disk_of_mount(paths, "/mnt/data").or_else(|| {
        blockdev::find_by_label(paths, "KSOLODATA", None)
            .into_iter()
            .next()
            .map(|p| p.disk)
    })
}

/// Mounts `target` (test mode: uses `<root>/slots/<name>`, which must exist).
pub fn mount(paths: &Paths, target: &Target) -> Result<Mounted, String> {
    if paths.test_mode() {
        let dir = paths.path(&format!("/slots/{}", target.name));
        if !dir.is_dir() {
            return Err(format!(
                "test mode: `{}` (partition {}) does not exist",
                dir.display(),
                target.name
            ));
        }
        return Ok(Mounted {
            dir,
            mounted: false,
        });
    }
    let disk = boot_disk(paths);
    let partition = match &target.locator {
        Locator::Label(label) => blockdev::find_by_label(paths, label, disk.as_deref())
            .into_iter()
            .next()
            .ok_or_else(|| format!("no partition labelled `{}` (looked in /dev/disk/by-label and /sys/class/block)", label))?,
        Locator::Number(n) => {
            let disk = disk.ok_or("cannot tell the boot disk: /mnt/data is not a partition's mount and no partition is labelled KSOLODATA")?;
            blockdev::partitions(paths)
                .into_iter()
                .find(|p| p.disk == disk && p.number == *n)
                .ok_or_else(|| format!("the boot disk `{}` has no partition {}", disk, n))?
        }
    };
    let dir = paths.path(&format!("/run/kubesolo-update/{}", target.name));
    fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create the mount point `{}`: {}", dir.display(), e))?;
    let node = partition.node(paths);
    sys::mount_fs(&node, &dir, target.fstype, sys::MS_NOATIME).map_err(|e| {
        format!(
            "cannot mount `{}` ({} partition {}) on `{}`: {}",
            node.display(),
            target.fstype,
            target.name,
            dir.display(),
            e
        )
    })?;
    Ok(Mounted { dir, mounted: true })
}

/// Removes everything in a slot's root except `lost+found`.
pub fn clear(dir: &Path) -> Result<(), String> {
    let entries =
        fs::read_dir(dir).map_err(|e| format!("cannot list `{}`: {}", dir.display(), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list `{}`: {}", dir.display(), e))?;
        if entry.file_name() == "lost+found" {
            continue;
        }
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| format!("cannot stat `{}`: {}", path.display(), e))?;
        let result = if kind.is_dir() {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        result.map_err(|e| format!("cannot remove the old `{}`: {}", path.display(), e))?;
    }
    sync_dir(dir)
}

/// fsync(2) of a directory, so a rename or removal in it is on disk.
pub fn sync_dir(dir: &Path) -> Result<(), String> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot fsync the directory `{}`: {}", dir.display(), e))
}

/// Writes `reader`'s bytes to `dir/name` through a temp name, checking the size and SHA-256
/// while writing; fsyncs the file, renames it and fsyncs the directory. Constant memory.
pub fn write_verified(
    dir: &Path,
    name: &str,
    reader: &mut dyn Read,
    size: u64,
    sha256: &str,
) -> Result<(), String> {
    let final_path = dir.join(name);
    let parent = final_path.parent().unwrap_or(dir).to_path_buf();
    fs::create_dir_all(&parent)
        .map_err(|e| format!("cannot create `{}`: {}", parent.display(), e))?;
    let base = final_path
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = parent.join(format!("{}{}", TEMP_PREFIX, base));
    let result = (|| {
        let mut file = fs::File::create(&temp)
            .map_err(|e| format!("cannot create `{}`: {}", temp.display(), e))?;
        let (written, digest) = copy_hashing(reader, &mut file)
            .map_err(|e| format!("writing `{}`: {}", final_path.display(), e))?;
        if written != size || digest != sha256 {
            return Err(format!(
                "`{}` changed since it was verified ({} bytes, sha256 {}; the manifest says {} bytes, {})",
                name, written, digest, size, sha256
            ));
        }
        file.sync_all()
            .map_err(|e| format!("cannot fsync `{}`: {}", temp.display(), e))?;
        drop(file);
        fs::rename(&temp, &final_path).map_err(|e| {
            format!(
                "cannot rename `{}` to `{}`: {}",
                temp.display(),
                final_path.display(),
                e
            )
        })?;
        sync_dir(&parent)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// Copies `reader` to `writer`, returning the byte count and the lower-case hex SHA-256.
pub fn copy_hashing(reader: &mut dyn Read, writer: &mut dyn Write) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok((total, hex(&hasher.finalize())))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{:02x}", b)).collect()
}

/// Replaces `path` with `contents` atomically: temp file, fsync, rename, fsync the directory.
pub fn replace_file(path: &Path, contents: &[u8]) -> Result<(), String> {
    let dir = path
        .parent()
        .ok_or_else(|| format!("`{}` has no directory", path.display()))?;
    let base = path
        .file_name()
        .map(|b| b.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!("{}{}", TEMP_PREFIX, base));
    let result = (|| {
        let mut file = fs::File::create(&temp)
            .map_err(|e| format!("cannot create `{}`: {}", temp.display(), e))?;
        file.write_all(contents)
            .map_err(|e| format!("cannot write `{}`: {}", temp.display(), e))?;
        file.sync_all()
            .map_err(|e| format!("cannot fsync `{}`: {}", temp.display(), e))?;
        drop(file);
        fs::rename(&temp, path).map_err(|e| {
            format!(
                "cannot rename `{}` to `{}`: {}",
                temp.display(),
                path.display(),
                e
            )
        })?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

/// The Pi: a bundle is the same for both slots, so its `cmdline.txt` may name the other slot;
/// sets the `kubesolo.slot=` word to the slot it was written to (the console then tells the
/// truth). Nothing else in a bundle's files is changed.
pub fn set_cmdline_slot(dir: &Path, slot: &str) -> Result<(), String> {
    let path = dir.join("cmdline.txt");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read `{}`: {}", path.display(), e)),
    };
    let want = format!("kubesolo.slot={}", slot);
    if !text
        .split_whitespace()
        .any(|w| w.starts_with("kubesolo.slot=") && w != want)
    {
        return Ok(());
    }
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| {
            if w.starts_with("kubesolo.slot=") {
                format!("kubesolo.slot={}", slot)
            } else {
                w.to_string()
            }
        })
        .collect();
    let mut fixed = words.join(" ");
    fixed.push('\n');
    replace_file(&path, fixed.as_bytes())
}
