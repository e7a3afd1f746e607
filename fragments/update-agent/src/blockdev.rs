//! Finding partitions: by file-system label (`/dev/disk/by-label`, else every partition in
//! `/sys/class/block` with its ext4 or FAT label read from the device) and by partition number
//! on the disk that holds the data partition. Reads devices; writes nothing.

use crate::paths::Paths;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// A partition of a block device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// The kernel's name (`vda2`, `mmcblk0p3`).
    pub name: String,
    /// The disk it is on (`vda`, `mmcblk0`).
    pub disk: String,
    /// Its number on the disk.
    pub number: u32,
    /// `major:minor`.
    pub dev: String,
}

impl Partition {
    /// Its device node.
    pub fn node(&self, paths: &Paths) -> PathBuf {
        paths.path(&format!("/dev/{}", self.name))
    }
}

/// Every partition the kernel knows, sorted by name.
pub fn partitions(paths: &Paths) -> Vec<Partition> {
    let mut out = Vec::new();
    let dir = paths.path("/sys/class/block");
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(_) => return out,
    };
    for entry in entries.flatten() {
        let sys = entry.path();
        let number = match fs::read_to_string(sys.join("partition")) {
            Ok(n) => match n.trim().parse() {
                Ok(n) => n,
                Err(_) => continue,
            },
            Err(_) => continue,
        };
        // /sys/class/block/vda2 -> ../../devices/.../vda/vda2: the disk is the parent.
        let disk = match fs::canonicalize(&sys) {
            Ok(real) => match real.parent().and_then(|p| p.file_name()) {
                Some(d) => d.to_string_lossy().into_owned(),
                None => continue,
            },
            Err(_) => continue,
        };
        let dev = fs::read_to_string(sys.join("dev"))
            .unwrap_or_default()
            .trim()
            .to_string();
        out.push(Partition {
            name: entry.file_name().to_string_lossy().into_owned(),
            disk,
            number,
            dev,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// The file-system label of a device: ext4 (magic 0xEF53 at 1024+0x38, label at 1024+0x78)
/// or FAT (0x55AA at 510; FAT32 label at 0x47, FAT12/16 at 0x2B).
pub fn read_label(node: &std::path::Path) -> Option<String> {
    let mut buf = vec![0u8; 2048];
    let mut file = fs::File::open(node).ok()?;
    file.read_exact(&mut buf).ok()?;
    label_of(&buf)
}

/// The label in the first 2048 bytes of a file system (pure).
pub fn label_of(buf: &[u8]) -> Option<String> {
    let text = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).trim_end().to_string()
    };
    if buf.len() >= 2048 && buf[1024 + 0x38] == 0x53 && buf[1024 + 0x39] == 0xEF {
        return Some(text(&buf[1024 + 0x78..1024 + 0x88]));
    }
    if buf.len() >= 512 && buf[510] == 0x55 && buf[511] == 0xAA {
        if &buf[0x52..0x57] == b"FAT32" {
            return Some(text(&buf[0x47..0x52]));
        }
        if &buf[0x36..0x39] == b"FAT" {
            return Some(text(&buf[0x2B..0x36]));
        }
    }
    None
}

/// The partitions labelled `label`, those on `prefer_disk` first.
pub fn find_by_label(paths: &Paths, label: &str, prefer_disk: Option<&str>) -> Vec<Partition> {
    let all = partitions(paths);
    let mut found: Vec<Partition> = Vec::new();
    // udev's symlinks, when there is a udev.
    if let Ok(target) = fs::canonicalize(paths.path(&format!("/dev/disk/by-label/{}", label))) {
        if let Some(name) = target.file_name() {
            if let Some(p) = all.iter().find(|p| p.name == name.to_string_lossy()) {
                found.push(p.clone());
            }
        }
    }
    for p in &all {
        if !found.contains(p) && read_label(&p.node(paths)).as_deref() == Some(label) {
            found.push(p.clone());
        }
    }
    found.sort_by_key(|p| Some(p.disk.as_str()) != prefer_disk);
    found
}

/// The disk holding the file system mounted at `mount_point` (e.g. `/mnt/data`).
pub fn disk_of_mount(paths: &Paths, mount_point: &str) -> Option<String> {
    let dev = fs::metadata(paths.path(mount_point)).ok()?.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let want = format!("{}:{}", major, minor);
    partitions(paths)
        .into_iter()
        .find(|p| p.dev == want)
        .map(|p| p.disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_of_ext4_and_fat32() {
        let mut ext4 = vec![0u8; 2048];
        ext4[1024 + 0x38] = 0x53;
        ext4[1024 + 0x39] = 0xEF;
        ext4[1024 + 0x78..1024 + 0x7e].copy_from_slice(b"KSOLOA");
        assert_eq!(label_of(&ext4).as_deref(), Some("KSOLOA"));
        let mut fat = vec![0u8; 2048];
        fat[510] = 0x55;
        fat[511] = 0xAA;
        fat[0x52..0x5a].copy_from_slice(b"FAT32   ");
        fat[0x47..0x52].copy_from_slice(b"KSOLOEFI   ");
        assert_eq!(label_of(&fat).as_deref(), Some("KSOLOEFI"));
        assert_eq!(label_of(&[0u8; 2048]), None);
    }
}
