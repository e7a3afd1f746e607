//! Disk images opened, not hex-dumped: two images (GPT or MBR) are compared partition table
//! → partition → filesystem → file → line, so a difference reads
//! `sdcard.img › p1 KSOBOOTA (FAT) › /config.txt: line 3`. FAT12/16/32 is read here and
//! ext2/3/4 in [`super::ext4`], in Rust, with no mount and no privilege; another
//! filesystem is located to its first differing block. Holes of sparse images are skipped (`SEEK_DATA`). Reads the images.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::explain::{
    classify, same_in_another_order, Cause, Difference, Options, MAX_DIFFERENCES,
};
use super::ext4::{Ext4, Kind, SUPERBLOCK_FIELDS};

/// A partition: its number (from 1), where it is, and what names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Its number, from 1.
    pub number: usize,
    /// Its first byte.
    pub start: u64,
    /// Its size in bytes.
    pub size: u64,
    /// The partition type (a GUID or an MBR type byte, as text).
    pub kind: String,
    /// Its GPT name, or empty.
    pub name: String,
    /// Its unique GUID (GPT), or empty.
    pub guid: String,
}

/// An image's partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// `GPT` or `MBR`.
    pub scheme: &'static str,
    /// The disk GUID (GPT) or the MBR disk signature, as text.
    pub disk_id: String,
    /// The partitions, in table order.
    pub partitions: Vec<Partition>,
}

fn le16(b: &[u8], at: usize) -> u64 {
    u64::from(u16::from_le_bytes([b[at], b[at + 1]]))
}
fn le32(b: &[u8], at: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

fn guid(b: &[u8]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        le32(b, 0),
        le16(b, 4),
        le16(b, 6),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<String>()
    )
}

/// Reads the partition table of the image at `path`, if it has one (pure over the bytes
/// read: the first sectors and the GPT entries).
pub fn read_table(file: &File) -> Option<Table> {
    let mut mbr = [0u8; 512];
    file.read_exact_at(&mut mbr, 0).ok()?;
    if mbr[510] != 0x55 || mbr[511] != 0xAA {
        return None;
    }
    let entries: Vec<&[u8]> = (0..4).map(|i| &mbr[446 + 16 * i..462 + 16 * i]).collect();
    if entries.iter().any(|e| e[4] == 0xEE) {
        let mut header = [0u8; 92];
        file.read_exact_at(&mut header, 512).ok()?;
        if &header[0..8] != b"EFI PART" {
            return None;
        }
        let (lba, count, size) = (le64(&header, 72), le32(&header, 80), le32(&header, 84));
        if !(128..=4096).contains(&size) || count > 1024 {
            return None;
        }
        let mut table = vec![0u8; (count * size) as usize];
        file.read_exact_at(&mut table, lba * 512).ok()?;
        let partitions = table
            .chunks(size as usize)
            .enumerate()
            .filter(|(_, e)| e[0..16].iter().any(|&b| b != 0))
            .map(|(i, e)| {
                let name: Vec<u16> = e[56..128]
                    .chunks(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .take_while(|&c| c != 0)
                    .collect();
                Partition {
                    number: i + 1,
                    start: le64(e, 32) * 512,
                    size: (le64(e, 40) + 1).saturating_sub(le64(e, 32)) * 512,
                    kind: guid(&e[0..16]),
                    name: String::from_utf16_lossy(&name),
                    guid: guid(&e[16..32]),
                }
            })
            .collect();
        return Some(Table {
            scheme: "GPT",
            disk_id: guid(&header[56..72]),
            partitions,
        });
    }
    let partitions = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e[4] != 0)
        .map(|(i, e)| Partition {
            number: i + 1,
            start: le32(e, 8) * 512,
            size: le32(e, 12) * 512,
            kind: format!("0x{:02x}", e[4]),
            name: String::new(),
            guid: String::new(),
        })
        .collect();
    Some(Table {
        scheme: "MBR",
        disk_id: format!("0x{:08x}", le32(&mbr, 440)),
        partitions,
    })
}

/// The differences between two disk images, located partition › filesystem › file ›
/// line; `None` when either is not a partitioned image (the caller compares bytes).
/// `label` names the image in the paths (`sdcard.img`).
pub fn diff_images(
    a: &Path,
    b: &Path,
    label: &str,
    options: &Options,
) -> std::io::Result<Option<Vec<Difference>>> {
    let (fa, fb) = (File::open(a)?, File::open(b)?);
    let (Some(ta), Some(tb)) = (read_table(&fa), read_table(&fb)) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    let note = |path: String, what: String| Difference {
        path,
        what,
        sizes: None,
        offset: None,
        cause: Cause::Other,
        excerpts: None,
        diffoscope: None,
    };
    let table_path = format!("{label} › partition table ({})", ta.scheme);
    if ta.scheme != tb.scheme {
        out.push(note(table_path, format!("{} vs {}", ta.scheme, tb.scheme)));
        return Ok(Some(out));
    }
    if ta.disk_id != tb.disk_id {
        let mut d = note(
            table_path.clone(),
            format!("disk identifier {} vs {}", ta.disk_id, tb.disk_id),
        );
        d.cause = Cause::Random;
        out.push(d);
    }
    for (pa, pb) in ta.partitions.iter().zip(&tb.partitions) {
        let name = partition_name(&fa, pa);
        for (what, x, y) in [
            ("start", pa.start.to_string(), pb.start.to_string()),
            ("size", pa.size.to_string(), pb.size.to_string()),
            ("type", pa.kind.clone(), pb.kind.clone()),
            ("name", pa.name.clone(), pb.name.clone()),
            ("unique GUID", pa.guid.clone(), pb.guid.clone()),
        ] {
            if x != y {
                let mut d = note(
                    format!("{table_path} › p{} {name}", pa.number),
                    format!("{what}: {x} vs {y}"),
                );
                if what == "unique GUID" {
                    d.cause = Cause::Random;
                }
                out.push(d);
            }
        }
        if pa.start != pb.start || pa.size != pb.size {
            continue;
        }
        if let Some(at) = first_difference(&fa, &fb, pa.start, pa.size)? {
            let path = format!("{label} › p{} {name}", pa.number);
            let fs_a = Fat::open(&fa, pa.start, pa.size);
            let fs_b = Fat::open(&fb, pb.start, pb.size);
            let ext_a = Ext4::open(&fa, pa.start, pa.size);
            let ext_b = Ext4::open(&fb, pb.start, pb.size);
            match (fs_a, fs_b, ext_a, ext_b) {
                (Some(x), Some(y), _, _) => {
                    diff_fat(&x, &y, &format!("{path} ({})", x.kind), &mut out, options)?
                }
                (_, _, Some(x), Some(y)) => {
                    let before = out.len();
                    let read = diff_ext4(
                        &x,
                        &y,
                        &format!("{path} ({})", x.kind),
                        at - pa.start,
                        &mut out,
                        options,
                    );
                    match read {
                        Ok(()) => {}
                        // A filesystem this reader cannot follow (corrupt, or a feature it
                        // lacks) is located to its first differing byte, saying why.
                        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                            out.truncate(before);
                            let mut d = unread(&path, x.kind, at - pa.start, pa.size, pb.size);
                            d.what = format!("{} (the filesystem could not be read: {e})", d.what);
                            out.push(d);
                        }
                        Err(e) => return Err(e),
                    }
                }
                _ => {
                    let kind = filesystem_kind(&fa, pa.start);
                    out.push(unread(&path, kind, at - pa.start, pa.size, pb.size));
                }
            }
        }
    }
    if ta.partitions.len() != tb.partitions.len() {
        out.push(note(
            table_path,
            format!(
                "{} partitions vs {}",
                ta.partitions.len(),
                tb.partitions.len()
            ),
        ));
    }
    // Bytes outside every partition (the table itself, gaps) are compared last.
    if out.is_empty() {
        if let Some(at) =
            first_difference(&fa, &fb, 0, fa.metadata()?.len().max(fb.metadata()?.len()))?
        {
            out.push(Difference {
                path: format!("{label} › outside the partitions"),
                what: format!("content from byte {at}"),
                sizes: None,
                offset: Some(at),
                cause: Cause::Other,
                excerpts: None,
                diffoscope: None,
            });
        }
    }
    Ok(Some(out))
}

/// A difference in a partition whose filesystem is not read: its first differing byte.
fn unread(path: &str, kind: &str, at: u64, size_a: u64, size_b: u64) -> Difference {
    Difference {
        path: format!("{path} ({kind})"),
        what: format!(
            "content from byte {at} of the partition (block {} of 4096 bytes)",
            at / 4096
        ),
        sizes: Some((size_a, size_b)),
        offset: Some(at),
        cause: Cause::Other,
        excerpts: None,
        diffoscope: None,
    }
}

/// "KSOBOOTA" for a partition: its GPT name, else its FAT label, else nothing.
fn partition_name(file: &File, p: &Partition) -> String {
    if !p.name.is_empty() {
        return p.name.clone();
    }
    Fat::open(file, p.start, p.size)
        .map(|f| f.label)
        .or_else(|| Ext4::open(file, p.start, p.size).map(|f| f.label))
        .unwrap_or_default()
}

/// The filesystem in a partition, by its magic numbers.
fn filesystem_kind(file: &File, start: u64) -> &'static str {
    let mut sb = [0u8; 2];
    if file.read_exact_at(&mut sb, start + 1024 + 56).is_ok() && sb == [0x53, 0xEF] {
        return "ext4";
    }
    "data"
}

/// The first byte in `[start, start + len)` where the two files differ, reading only the
/// extents that hold data in either (sparse images are mostly holes).
fn first_difference(fa: &File, fb: &File, start: u64, len: u64) -> std::io::Result<Option<u64>> {
    const CHUNK: usize = 1 << 20;
    let end = start + len;
    let (mut ba, mut bb) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut at = start;
    while at < end {
        // Skip to the next byte that holds data in either file.
        let next = next_data(fa, at).min(next_data(fb, at));
        if next >= end {
            return Ok(None);
        }
        at = next.max(at);
        let n = ((end - at) as usize).min(CHUNK);
        let ra = read_at_most(fa, &mut ba[..n], at)?;
        let rb = read_at_most(fb, &mut bb[..n], at)?;
        if let Some(i) = (0..n).find(|&i| {
            ba[..ra].get(i).copied().unwrap_or(0) != bb[..rb].get(i).copied().unwrap_or(0)
        }) {
            return Ok(Some(at + i as u64));
        }
        at += n as u64;
    }
    Ok(None)
}

/// Where the next data at or after `at` is (`lseek(SEEK_DATA)`); the end of the file if
/// there is none; `at` itself where the filesystem cannot tell.
fn next_data(file: &File, at: u64) -> u64 {
    match rustix::fs::seek(
        file,
        rustix::fs::SeekFrom::Data(at.min(i64::MAX as u64) as i64),
    ) {
        Ok(pos) => pos,
        Err(rustix::io::Errno::NXIO) => u64::MAX,
        Err(_) => at,
    }
}

fn read_at_most(file: &File, buf: &mut [u8], at: u64) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], at + n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    buf[n..].fill(0);
    Ok(n)
}

/// A FAT12/16/32 filesystem inside an image, read in place.
pub struct Fat<'f> {
    file: &'f File,
    start: u64,
    /// `FAT12`, `FAT16` or `FAT32`.
    pub kind: &'static str,
    /// The volume label.
    pub label: String,
    cluster_size: u64,
    fat_offset: u64,
    root_offset: u64,
    root_entries: u64,
    data_offset: u64,
    root_cluster: u64,
    clusters: u64,
}

/// A file or directory of a FAT filesystem.
struct Entry {
    name: String,
    dir: bool,
    cluster: u64,
    size: u64,
}

impl<'f> Fat<'f> {
    /// Opens the FAT filesystem at `start` of `file`, if there is one.
    pub fn open(file: &'f File, start: u64, size: u64) -> Option<Fat<'f>> {
        let mut bs = [0u8; 512];
        file.read_exact_at(&mut bs, start).ok()?;
        if bs[510] != 0x55 || bs[511] != 0xAA {
            return None;
        }
        let bytes_per_sector = le16(&bs, 11);
        let per_cluster = u64::from(bs[13]);
        if ![512, 1024, 2048, 4096].contains(&bytes_per_sector) || per_cluster == 0 {
            return None;
        }
        let reserved = le16(&bs, 14);
        let fats = u64::from(bs[16]);
        let root_entries = le16(&bs, 17);
        let total = match le16(&bs, 19) {
            0 => le32(&bs, 32),
            n => n,
        };
        let fat_size = match le16(&bs, 22) {
            0 => le32(&bs, 36),
            n => n,
        };
        if fats == 0 || fat_size == 0 || total * bytes_per_sector > size.max(1) * 2 {
            return None;
        }
        let root_sectors = (root_entries * 32).div_ceil(bytes_per_sector);
        let data_sector = reserved + fats * fat_size + root_sectors;
        let clusters = total.saturating_sub(data_sector) / per_cluster;
        let kind = if clusters < 4085 {
            "FAT12"
        } else if clusters < 65525 {
            "FAT16"
        } else {
            "FAT32"
        };
        let label_at = if kind == "FAT32" { 71 } else { 43 };
        let label = String::from_utf8_lossy(&bs[label_at..label_at + 11])
            .trim_end()
            .to_string();
        Some(Fat {
            file,
            start,
            kind,
            label: if label == "NO NAME" {
                String::new()
            } else {
                label
            },
            cluster_size: per_cluster * bytes_per_sector,
            fat_offset: start + reserved * bytes_per_sector,
            root_offset: start + (reserved + fats * fat_size) * bytes_per_sector,
            root_entries,
            data_offset: start + data_sector * bytes_per_sector,
            root_cluster: if kind == "FAT32" { le32(&bs, 44) } else { 0 },
            clusters,
        })
    }

    /// The next cluster of a chain, `None` at its end.
    fn next(&self, cluster: u64) -> std::io::Result<Option<u64>> {
        let (at, bytes) = match self.kind {
            "FAT12" => (cluster + cluster / 2, 2),
            "FAT16" => (cluster * 2, 2),
            _ => (cluster * 4, 4),
        };
        let mut b = [0u8; 4];
        self.file
            .read_exact_at(&mut b[..bytes], self.fat_offset + at)?;
        let raw = u32::from_le_bytes(b);
        let value = match self.kind {
            "FAT12" if cluster % 2 == 1 => raw >> 4,
            "FAT12" => raw & 0xFFF,
            "FAT16" => raw & 0xFFFF,
            _ => raw & 0x0FFF_FFFF,
        };
        let end = match self.kind {
            "FAT12" => 0xFF8,
            "FAT16" => 0xFFF8,
            _ => 0x0FFF_FFF8,
        };
        Ok(
            (value >= 2 && value < end && u64::from(value) < self.clusters + 2)
                .then_some(u64::from(value)),
        )
    }

    /// The bytes of a cluster chain, at most `limit`.
    fn chain(&self, first: u64, limit: u64) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut cluster = (first >= 2).then_some(first);
        let mut steps = 0;
        while let Some(c) = cluster {
            if out.len() as u64 >= limit || steps > self.clusters {
                break;
            }
            let mut buf = vec![0u8; self.cluster_size as usize];
            self.file
                .read_exact_at(&mut buf, self.data_offset + (c - 2) * self.cluster_size)?;
            out.extend_from_slice(&buf);
            cluster = self.next(c)?;
            steps += 1;
        }
        out.truncate(limit.min(out.len() as u64) as usize);
        Ok(out)
    }

    /// The entries of a directory (`cluster` 0: the root).
    fn dir(&self, cluster: u64) -> std::io::Result<Vec<Entry>> {
        let raw = if cluster == 0 && self.kind != "FAT32" {
            let mut b = vec![0u8; (self.root_entries * 32) as usize];
            self.file.read_exact_at(&mut b, self.root_offset)?;
            b
        } else {
            let c = if cluster == 0 {
                self.root_cluster
            } else {
                cluster
            };
            self.chain(c, 1 << 24)?
        };
        let mut out = Vec::new();
        let mut long: Vec<(u8, Vec<u16>)> = Vec::new();
        for e in raw.chunks(32) {
            if e.len() < 32 || e[0] == 0 {
                break;
            }
            if e[0] == 0xE5 {
                long.clear();
                continue;
            }
            if e[11] == 0x0F {
                let mut part = Vec::new();
                for (s, n) in [(1, 5), (14, 6), (28, 2)] {
                    for i in 0..n {
                        part.push(u16::from_le_bytes([e[s + 2 * i], e[s + 2 * i + 1]]));
                    }
                }
                long.push((e[0] & 0x1F, part));
                continue;
            }
            if e[11] & 0x08 != 0 {
                long.clear();
                continue;
            }
            let short = {
                // Byte 12: Windows NT's flags for an all-lowercase base name (0x08) or
                // extension (0x10), which mtools and Linux write instead of a long name.
                let case = |s: String, lower: bool| if lower { s.to_lowercase() } else { s };
                let base = case(
                    String::from_utf8_lossy(&e[0..8]).trim_end().to_string(),
                    e[12] & 0x08 != 0,
                );
                let ext = case(
                    String::from_utf8_lossy(&e[8..11]).trim_end().to_string(),
                    e[12] & 0x10 != 0,
                );
                if ext.is_empty() {
                    base
                } else {
                    format!("{base}.{ext}")
                }
            };
            let name = if long.is_empty() {
                short
            } else {
                long.sort_by_key(|(n, _)| *n);
                let units: Vec<u16> = long
                    .iter()
                    .flat_map(|(_, p)| p.iter().copied())
                    .take_while(|&c| c != 0 && c != 0xFFFF)
                    .collect();
                String::from_utf16_lossy(&units)
            };
            long.clear();
            if name == "." || name == ".." {
                continue;
            }
            out.push(Entry {
                name,
                dir: e[11] & 0x10 != 0,
                cluster: (le16(e, 20) << 16) | le16(e, 26),
                size: le32(e, 28),
            });
        }
        Ok(out)
    }

    /// Every file under the root, by path, with its size and first cluster.
    fn files(&self) -> std::io::Result<std::collections::BTreeMap<String, (u64, u64)>> {
        let mut out = std::collections::BTreeMap::new();
        let mut todo = vec![(String::new(), 0u64, 0usize)];
        while let Some((path, cluster, depth)) = todo.pop() {
            if depth > 32 {
                continue;
            }
            for e in self.dir(cluster)? {
                let p = format!("{path}/{}", e.name);
                if e.dir {
                    todo.push((p, e.cluster, depth + 1));
                } else {
                    out.insert(p, (e.size, e.cluster));
                }
            }
        }
        Ok(out)
    }

    /// A file's contents.
    fn read(&self, size: u64, cluster: u64) -> std::io::Result<Vec<u8>> {
        self.chain(cluster, size)
    }

    /// The file or directory at `path` (`/EFI/BOOT/grubenv`), its names compared without
    /// regard to case, as FAT compares them; `None` if there is none.
    pub fn find(&self, path: &str) -> std::io::Result<Option<FatFile>> {
        let mut found = FatFile {
            size: 0,
            cluster: 0,
            dir: true,
        };
        for name in path.split('/').filter(|s| !s.is_empty()) {
            if !found.dir {
                return Ok(None);
            }
            let Some(e) = self
                .dir(found.cluster)?
                .into_iter()
                .find(|e| e.name.eq_ignore_ascii_case(name))
            else {
                return Ok(None);
            };
            found = FatFile {
                size: e.size,
                cluster: e.cluster,
                dir: e.dir,
            };
        }
        Ok(Some(found))
    }

    /// The names in a directory found by [`Fat::find`].
    pub fn list(&self, dir: &FatFile) -> std::io::Result<Vec<String>> {
        Ok(self.dir(dir.cluster)?.into_iter().map(|e| e.name).collect())
    }

    /// The contents of a file found by [`Fat::find`].
    pub fn read_file(&self, file: &FatFile) -> std::io::Result<Vec<u8>> {
        self.read(file.size, file.cluster)
    }

    /// Where a file's bytes lie in the image: `(offset, length)` runs in file order, one
    /// per cluster, together `file.size` bytes. Writing the same number of bytes there
    /// changes the file in place, with no change to the FAT or the directory (as GRUB's
    /// `save_env` writes `grubenv`).
    pub fn extents(&self, file: &FatFile) -> std::io::Result<Vec<(u64, u64)>> {
        let mut out = Vec::new();
        let mut left = file.size;
        let mut cluster = (file.cluster >= 2).then_some(file.cluster);
        while let (Some(c), true) = (cluster, left > 0) {
            if out.len() as u64 > self.clusters {
                break;
            }
            let len = left.min(self.cluster_size);
            out.push((self.data_offset + (c - 2) * self.cluster_size, len));
            left -= len;
            cluster = self.next(c)?;
        }
        if left > 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the file's cluster chain is shorter than its size",
            ));
        }
        Ok(out)
    }
}

/// A file or directory of a [`Fat`] filesystem, as [`Fat::find`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatFile {
    /// Its size in bytes (0 for a directory).
    pub size: u64,
    cluster: u64,
    /// Whether it is a directory.
    pub dir: bool,
}

/// The differences between two FAT filesystems, file by file, located to the line.
fn diff_fat(
    a: &Fat<'_>,
    b: &Fat<'_>,
    path: &str,
    out: &mut Vec<Difference>,
    options: &Options,
) -> std::io::Result<()> {
    let (fa, fb) = (a.files()?, b.files()?);
    let before = out.len();
    let names: std::collections::BTreeSet<&String> = fa.keys().chain(fb.keys()).collect();
    for name in names {
        let here = format!("{path} › {name}");
        let (ea, eb) = (fa.get(name), fb.get(name));
        let (Some(&(sa, ca)), Some(&(sb, cb))) = (ea, eb) else {
            out.push(only_in_one(here, ea.is_some()));
            continue;
        };
        let (xa, xb) = (a.read(sa, ca)?, b.read(sb, cb)?);
        if xa != xb {
            out.extend(file_differences(here, &xa, &xb, options));
        }
    }
    if out.len() == before {
        // The files are the same: what differs is the filesystem's own metadata.
        let mut boot = (vec![0u8; 512], vec![0u8; 512]);
        a.file.read_exact_at(&mut boot.0, a.start)?;
        b.file.read_exact_at(&mut boot.1, b.start)?;
        let what = if boot.0[39..43] != boot.1[39..43] || boot.0[67..71] != boot.1[67..71] {
            "the volume serial number"
        } else {
            "the filesystem's metadata (directory entries: times, order)"
        };
        out.push(Difference {
            path: path.to_string(),
            what: what.into(),
            sizes: None,
            offset: None,
            cause: if what.contains("serial") {
                Cause::Random
            } else {
                Cause::Other
            },
            excerpts: None,
            diffoscope: None,
        });
    }
    Ok(())
}

/// The differences between two ext2/3/4 filesystems, inode by inode: files only in one,
/// type, mode, owner, group, mtime, symlink target and content (to the line). When every
/// file agrees, the superblock's differing fields are named, or else the structure that
/// holds the first differing byte (`first`, from the filesystem's start).
fn diff_ext4(
    a: &Ext4<'_>,
    b: &Ext4<'_>,
    path: &str,
    first: u64,
    out: &mut Vec<Difference>,
    options: &Options,
) -> std::io::Result<()> {
    /// Files up to this size are read whole; larger ones in chunks of it.
    const WHOLE: u64 = 1 << 26;
    let (ta, tb) = (a.tree()?, b.tree()?);
    let before = out.len();
    let names: std::collections::BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
    for name in names {
        if out.len() >= MAX_DIFFERENCES {
            return Ok(());
        }
        let here = format!("{path} › {name}");
        let (Some(ia), Some(ib)) = (ta.get(name), tb.get(name)) else {
            out.push(only_in_one(here, ta.contains_key(name)));
            continue;
        };
        if ia.kind() != ib.kind() {
            out.push(metadata_difference(
                &here,
                "type",
                ia.kind().name(),
                ib.kind().name(),
                Cause::Other,
            ));
            continue;
        }
        let mtime = |t: (u64, u64)| {
            if ia.mtime.1 == ib.mtime.1 {
                t.0.to_string()
            } else {
                format!("{}.{:09}", t.0, t.1)
            }
        };
        for (what, x, y, cause) in [
            (
                "mode",
                format!("{:o}", ia.mode & 0o7777),
                format!("{:o}", ib.mode & 0o7777),
                Cause::Other,
            ),
            (
                "owner",
                ia.uid.to_string(),
                ib.uid.to_string(),
                Cause::HostOrUser,
            ),
            (
                "group",
                ia.gid.to_string(),
                ib.gid.to_string(),
                Cause::HostOrUser,
            ),
            ("mtime", mtime(ia.mtime), mtime(ib.mtime), Cause::Timestamp),
        ] {
            if x != y {
                out.push(metadata_difference(&here, what, &x, &y, cause));
            }
        }
        match ia.kind() {
            Kind::Symlink => {
                let (sa, sb) = (a.symlink_target(ia)?, b.symlink_target(ib)?);
                if sa != sb {
                    let (sa, sb) = (
                        String::from_utf8_lossy(&sa).into_owned(),
                        String::from_utf8_lossy(&sb).into_owned(),
                    );
                    out.push(Difference {
                        path: here,
                        what: "symlink target".into(),
                        sizes: None,
                        offset: None,
                        cause: classify(sa.as_bytes(), sb.as_bytes(), 0),
                        excerpts: Some((sa, sb)),
                        diffoscope: None,
                    });
                }
            }
            Kind::File if ia.size <= WHOLE && ib.size <= WHOLE => {
                let (xa, xb) = (a.read(ia, WHOLE)?, b.read(ib, WHOLE)?);
                if xa != xb {
                    out.extend(file_differences(here, &xa, &xb, options));
                }
            }
            Kind::File => {
                // Large files are compared a chunk at a time; the difference is located in
                // the first chunk that differs (no line number: the chunk is not the file).
                let mut offset = 0;
                while offset < ia.size.max(ib.size) {
                    let xa = a.read_range(ia, offset, WHOLE)?;
                    let xb = b.read_range(ib, offset, WHOLE)?;
                    if xa != xb {
                        let mut d = content_difference(here.clone(), &xa, &xb);
                        d.path = here;
                        d.offset = d.offset.map(|o| o + offset);
                        d.sizes = Some((ia.size, ib.size));
                        out.push(d);
                        break;
                    }
                    offset += WHOLE;
                }
            }
            Kind::Directory | Kind::Special => {}
        }
    }
    if out.len() > before {
        return Ok(());
    }
    // Every file agrees: what differs is the filesystem's own metadata. The superblock's
    // differing fields are named (UUID, hash seed, times, counters such as
    // `s_kbytes_written`); then the structure holding the first differing byte past it.
    let fields: Vec<&(usize, usize, &str, Cause)> = SUPERBLOCK_FIELDS
        .iter()
        .filter(|(at, n, _, _)| a.superblock[*at..at + n] != b.superblock[*at..at + n])
        .collect();
    // Every differing field is named but the checksum, which follows from the others.
    let telling: Vec<_> = fields
        .iter()
        .filter(|f| fields.len() == 1 || f.2 != "s_checksum")
        .collect();
    let excerpt = |at: usize, n: usize| {
        let hex = |s: &[u8]| s.iter().map(|x| format!("{x:02x}")).collect::<String>();
        Some((
            hex(&a.superblock[at..at + n]),
            hex(&b.superblock[at..at + n]),
        ))
    };
    for (at, n, name, cause) in telling {
        out.push(Difference {
            path: format!("{path} › superblock"),
            what: format!("{name} differs"),
            sizes: None,
            offset: Some(1024 + *at as u64),
            cause: *cause,
            excerpts: excerpt(*at, *n),
            diffoscope: None,
        });
    }
    // A random field (UUID, hash seed) changes every checksum after it: nothing more to
    // locate. A time does not: the first difference past the superblock is located too.
    if out[before..].iter().any(|d| d.cause == Cause::Random) {
        return Ok(());
    }
    let beyond = if first < 2048 {
        let end = a.block_size.max(2048);
        first_difference(
            a.file(),
            b.file(),
            a.start() + end,
            a.size().saturating_sub(end),
        )?
        .map(|at| at - a.start())
    } else {
        Some(first)
    };
    match beyond {
        Some(at) => {
            let (what, cause) = a.locate(at, &ta)?;
            out.push(Difference {
                path: format!("{path} › metadata"),
                what: format!(
                    "{what} (byte {at} of the filesystem, block {})",
                    at / a.block_size
                ),
                sizes: None,
                offset: Some(at),
                cause,
                excerpts: None,
                diffoscope: None,
            });
        }
        None if out.len() == before => {
            for (at, n, name, cause) in fields {
                out.push(Difference {
                    path: format!("{path} › superblock"),
                    what: format!("{name} differs"),
                    sizes: None,
                    offset: Some(1024 + *at as u64),
                    cause: *cause,
                    excerpts: excerpt(*at, *n),
                    diffoscope: None,
                });
            }
        }
        None => {}
    }
    Ok(())
}

/// `WHAT: X vs Y` of a member.
fn metadata_difference(path: &str, what: &str, x: &str, y: &str, cause: Cause) -> Difference {
    Difference {
        path: path.to_string(),
        what: format!("{what}: {x} vs {y}"),
        sizes: None,
        offset: None,
        cause,
        excerpts: None,
        diffoscope: None,
    }
}

/// A member present in one of the two only.
fn only_in_one(path: String, in_first: bool) -> Difference {
    Difference {
        path,
        what: if in_first {
            "only in the first".into()
        } else {
            "only in the second".into()
        },
        sizes: None,
        offset: None,
        cause: Cause::Other,
        excerpts: None,
        diffoscope: None,
    }
}

/// The differences between two members' differing bytes: by ELF section for ELF files,
/// else where the content parts (to the line for text); with `--diffoscope`, what
/// diffoscope says of the two, on the first.
pub fn file_differences(path: String, a: &[u8], b: &[u8], options: &Options) -> Vec<Difference> {
    let name = path.rsplit(" › ").next().unwrap_or_default().to_string();
    let mut out =
        super::elf::diff_elf(&path, a, b).unwrap_or_else(|| vec![content_difference(path, a, b)]);
    if let (Some(d), Some(first)) = (&options.diffoscope, out.first_mut()) {
        first.diffoscope = Some(d.compare_bytes(&name, a, b));
    }
    out
}

/// A content difference between two files' bytes, located to the line for text.
pub fn content_difference(path: String, a: &[u8], b: &[u8]) -> Difference {
    let at = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let text = |x: &[u8]| !x.contains(&0) && std::str::from_utf8(x).is_ok();
    let line = (text(a) && text(b)).then(|| a[..at].iter().filter(|&&c| c == b'\n').count() + 1);
    // One line of text each, control bytes escaped (as for files of a tree).
    let window = |x: &[u8]| {
        let s = at.saturating_sub(40);
        super::explain::printable(&x[s..(at + 40).min(x.len())])
    };
    let cause = if a.len() == b.len() && same_in_another_order(a, b) {
        Cause::Ordering
    } else {
        classify(
            &a[at.saturating_sub(48)..(at + 64).min(a.len())],
            &b[at.saturating_sub(48)..(at + 64).min(b.len())],
            at - at.saturating_sub(48),
        )
    };
    Difference {
        path: match line {
            Some(l) => format!("{path}: line {l}"),
            None => path,
        },
        what: "content".into(),
        sizes: Some((a.len() as u64, b.len() as u64)),
        offset: Some(at as u64),
        cause,
        excerpts: Some((window(a), window(b))),
        diffoscope: None,
    }
}

/// One member of a newc cpio archive: its header fields that matter, and its data.
struct CpioMember {
    mode: u64,
    uid: u64,
    gid: u64,
    mtime: u64,
    data: Vec<u8>,
}

/// Parses a newc (`070701`) cpio archive into members by name; `None` if it is not one.
fn parse_cpio(bytes: &[u8]) -> Option<std::collections::BTreeMap<String, CpioMember>> {
    if bytes.len() < 110 || (&bytes[0..6] != b"070701" && &bytes[0..6] != b"070702") {
        return None;
    }
    let mut out = std::collections::BTreeMap::new();
    let mut at = 0usize;
    let field = |h: &[u8], i: usize| -> Option<u64> {
        u64::from_str_radix(std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).ok()?, 16).ok()
    };
    while at + 110 <= bytes.len() {
        let h = &bytes[at..at + 110];
        if &h[0..6] != b"070701" && &h[0..6] != b"070702" {
            return None;
        }
        let (mode, uid, gid, mtime) = (field(h, 1)?, field(h, 2)?, field(h, 3)?, field(h, 5)?);
        let size = field(h, 6)? as usize;
        let name_size = field(h, 11)? as usize;
        let name_at = at + 110;
        let name = bytes.get(name_at..name_at + name_size.saturating_sub(1))?;
        let name = String::from_utf8_lossy(name).into_owned();
        let data_at = (name_at + name_size).div_ceil(4) * 4;
        let data = bytes.get(data_at..data_at + size)?.to_vec();
        at = (data_at + size).div_ceil(4) * 4;
        if name == "TRAILER!!!" {
            return Some(out);
        }
        out.insert(
            name,
            CpioMember {
                mode,
                uid,
                gid,
                mtime,
                data,
            },
        );
    }
    Some(out)
}

/// Gunzips `bytes` (at most 1 GiB out); `None` if they are not gzip.
fn gunzip(bytes: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    if bytes.len() < 2 || bytes[0] != 0x1f || bytes[1] != 0x8b {
        return None;
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(bytes)
        .take(1 << 30)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

/// The differences inside two compressed or archived files — gzip, and the newc cpio of an
/// initramfs inside it — located to the member and line (`kubesolo-os.gz › cpio ›
/// /etc/os-release: line 2`); `None` when they are neither.
pub fn diff_archives(path: &str, a: &[u8], b: &[u8], options: &Options) -> Option<Vec<Difference>> {
    let (ua, ub) = (gunzip(a), gunzip(b));
    let (a, b, path) = match (&ua, &ub) {
        (Some(x), Some(y)) => (x.as_slice(), y.as_slice(), format!("{path} › gunzip")),
        _ => (a, b, path.to_string()),
    };
    let (Some(ca), Some(cb)) = (parse_cpio(a), parse_cpio(b)) else {
        return ua.is_some().then(|| vec![content_difference(path, a, b)]);
    };
    let mut out = Vec::new();
    let names: std::collections::BTreeSet<&String> = ca.keys().chain(cb.keys()).collect();
    for name in names {
        let here = format!("{path} › cpio › /{}", name.trim_start_matches("./"));
        let (Some(ma), Some(mb)) = (ca.get(name), cb.get(name)) else {
            out.push(only_in_one(here, ca.contains_key(name)));
            continue;
        };
        if ma.data != mb.data {
            out.extend(file_differences(here.clone(), &ma.data, &mb.data, options));
        }
        for (what, x, y, cause) in [
            (
                "mode",
                format!("{:o}", ma.mode),
                format!("{:o}", mb.mode),
                Cause::Other,
            ),
            (
                "owner",
                ma.uid.to_string(),
                mb.uid.to_string(),
                Cause::HostOrUser,
            ),
            (
                "group",
                ma.gid.to_string(),
                mb.gid.to_string(),
                Cause::HostOrUser,
            ),
            (
                "mtime",
                ma.mtime.to_string(),
                mb.mtime.to_string(),
                Cause::Timestamp,
            ),
        ] {
            if x != y {
                out.push(Difference {
                    path: here.clone(),
                    what: format!("{what}: {x} vs {y}"),
                    sizes: None,
                    offset: None,
                    cause,
                    excerpts: None,
                    diffoscope: None,
                });
            }
        }
        if out.len() >= super::explain::MAX_DIFFERENCES {
            break;
        }
    }
    if out.is_empty() {
        // Same members, in another order (or other padding).
        out.push(Difference {
            path: format!("{path} › cpio"),
            what: "the same members in another order".into(),
            sizes: None,
            offset: None,
            cause: Cause::Ordering,
            excerpts: None,
            diffoscope: None,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A newc cpio archive of `(name, mtime, data)`.
    fn cpio(members: &[(&str, u64, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut add = |name: &str, mtime: u64, data: &[u8]| {
            let fields = [
                1,
                0o100644,
                0,
                0,
                1,
                mtime,
                data.len() as u64,
                0,
                0,
                0,
                0,
                name.len() as u64 + 1,
                0,
            ];
            out.extend_from_slice(b"070701");
            for f in fields {
                out.extend_from_slice(format!("{f:08X}").as_bytes());
            }
            out.extend_from_slice(name.as_bytes());
            out.push(0);
            while out.len() % 4 != 0 {
                out.push(0);
            }
            out.extend_from_slice(data);
            while out.len() % 4 != 0 {
                out.push(0);
            }
        };
        for (n, t, d) in members {
            add(n, *t, d);
        }
        add("TRAILER!!!", 0, b"");
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn an_initramfs_is_diffed_member_by_member_to_the_line() {
        let a = gzip(&cpio(&[
            ("etc/os-release", 1704067200, b"NAME=KubeSolo\nVERSION=1\n"),
            ("init", 1704067200, b"#!/bin/sh\n"),
        ]));
        let b = gzip(&cpio(&[
            ("etc/os-release", 1704067200, b"NAME=KubeSolo\nVERSION=2\n"),
            ("init", 1764700000, b"#!/bin/sh\n"),
        ]));
        let d = diff_archives("/kubesolo-os.gz", &a, &b, &Options::default()).unwrap();
        let got: Vec<(&str, &str, Cause)> = d
            .iter()
            .map(|d| (d.path.as_str(), d.what.as_str(), d.cause))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "/kubesolo-os.gz › gunzip › cpio › /etc/os-release: line 2",
                    "content",
                    Cause::Other
                ),
                (
                    "/kubesolo-os.gz › gunzip › cpio › /init",
                    "mtime: 1704067200 vs 1764700000",
                    Cause::Timestamp
                ),
            ]
        );
        assert!(diff_archives("/x", b"plain", b"other", &Options::default()).is_none());
    }
}

#[cfg(test)]
mod ext4_tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    fn run(cmd: &mut Command) {
        let out = cmd.output().unwrap_or_else(|e| {
            panic!("{cmd:?}: {e} (e2fsprogs is needed: apt-get install e2fsprogs)")
        });
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A source tree for `mke2fs -d`: `/etc/foo` (its third line `third`), a directory of
    /// 400 entries (an htree after `e2fsck -D`), a sparse file of 12 runs (more extents
    /// than an inode holds: a tree of depth 1), a fast and a slow symlink; every mtime
    /// 2023-11-14.
    fn tree(dir: &Path, third: &str) {
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::create_dir_all(dir.join("big")).unwrap();
        std::fs::write(dir.join("etc/foo"), format!("one\ntwo\n{third}\nfour\n")).unwrap();
        for i in 0..400 {
            std::fs::write(dir.join(format!("big/entry-with-a-longish-name-{i}")), "x").unwrap();
        }
        let f = std::fs::File::create(dir.join("blob")).unwrap();
        for i in 0..12u8 {
            f.write_all_at(&[b'A' + i; 3000], u64::from(i) * 20000)
                .unwrap();
        }
        drop(f);
        std::os::unix::fs::symlink("../etc/foo", dir.join("link")).unwrap();
        std::os::unix::fs::symlink(format!("/{}", "x".repeat(100)), dir.join("longlink")).unwrap();
        run(Command::new("touch")
            .args(["-h", "-d", "@1700000000"])
            .args(
                walkdir::WalkDir::new(dir)
                    .into_iter()
                    .map(|e| e.unwrap().into_path()),
            ));
        // Everything read once, so that (`relatime`) the reads of `mke2fs -d` change no
        // access time: two filesystems of this tree get the same times.
        for e in walkdir::WalkDir::new(dir) {
            let p = e.unwrap().into_path();
            if p.is_symlink() {
                std::fs::read_link(&p).unwrap();
            } else if p.is_file() {
                std::fs::read(&p).unwrap();
            }
        }
    }

    /// An 8 MiB filesystem of `src` made by `mke2fs` (`extra`: its options), with fixed
    /// UUID, hash seed and time, its directories indexed by `e2fsck -D`.
    fn filesystem(src: &Path, out: &Path, uuid: &str, extra: &[&str]) {
        run(Command::new("mke2fs")
            .env("E2FSPROGS_FAKE_TIME", "1700000000")
            .args([
                "-q", "-F", "-b", "1024", "-g", "2048", "-N", "512", "-L", "KSODATA",
            ])
            .args(extra)
            .arg("-U")
            .arg(uuid)
            .args([
                "-E",
                "hash_seed=0b1e2f3c-4d5e-6f70-8192-a3b4c5d6e7f8,root_owner=0:0",
            ])
            .arg("-d")
            .arg(src)
            .arg(out)
            .arg("8M"));
        let out = Command::new("e2fsck")
            .env("E2FSCK_TIME", "1700000000")
            .args(["-f", "-y", "-D"])
            .arg(out)
            .output()
            .unwrap();
        // 0: nothing changed, 1: directories optimised.
        assert!(out.status.code().unwrap_or(8) <= 1, "{out:?}");
    }

    /// A 12 MiB GPT disk image: two empty 1 MiB partitions, then `fs` as p3 `KSODATA`.
    fn disk(fs: &Path, out: &Path) {
        let f = std::fs::File::create(out).unwrap();
        f.set_len(12 << 20).unwrap();
        let mut mbr = [0u8; 512];
        mbr[446 + 4] = 0xEE;
        mbr[446 + 8..446 + 12].copy_from_slice(&1u32.to_le_bytes());
        mbr[446 + 12..446 + 16].copy_from_slice(&(24575u32).to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        f.write_all_at(&mbr, 0).unwrap();
        let mut header = [0u8; 92];
        header[0..8].copy_from_slice(b"EFI PART");
        header[56..72].copy_from_slice(&[7u8; 16]);
        header[72..80].copy_from_slice(&2u64.to_le_bytes());
        header[80..84].copy_from_slice(&128u32.to_le_bytes());
        header[84..88].copy_from_slice(&128u32.to_le_bytes());
        f.write_all_at(&header, 512).unwrap();
        let parts: [(&str, u64, u64); 3] = [
            ("KSOBOOTA", 2048, 4095),
            ("KSOBOOTB", 4096, 6143),
            ("KSODATA", 6144, 6144 + 16384 - 1),
        ];
        for (i, (name, first, last)) in parts.iter().enumerate() {
            let mut e = [0u8; 128];
            e[0..16].copy_from_slice(&[0xaf; 16]);
            e[16..32].copy_from_slice(&[i as u8 + 1; 16]);
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            for (j, c) in name.encode_utf16().enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&c.to_le_bytes());
            }
            f.write_all_at(&e, 1024 + 128 * i as u64).unwrap();
        }
        f.write_all_at(&std::fs::read(fs).unwrap(), 6144 * 512)
            .unwrap();
    }

    pub(super) struct Made {
        _tmp: tempfile::TempDir,
        pub(super) a: PathBuf,
        pub(super) b: PathBuf,
    }

    /// Two disk images whose ext4 partitions are made of trees `third_a` and `third_b`
    /// (see [`tree`]), with UUIDs `uuid_a` and `uuid_b`; `then` changes b's filesystem.
    fn pair(third: (&str, &str), uuid: (&str, &str), extra: &[&str], then: &dyn Fn(&Path)) -> Made {
        let tmp = tempfile::tempdir().unwrap();
        let mut images = Vec::new();
        let same = third.0 == third.1;
        for (side, third, uuid) in [("a", third.0, uuid.0), ("b", third.1, uuid.1)] {
            // One source tree when the files agree: mke2fs copies its ctimes too.
            let src = if same {
                tmp.path().join("src")
            } else {
                tmp.path().join(format!("{side}-src"))
            };
            if !src.exists() {
                tree(&src, third);
            }
            let fs = tmp.path().join(format!("{side}.ext4"));
            filesystem(&src, &fs, uuid, extra);
            if side == "b" {
                then(&fs);
            }
            let img = tmp.path().join(side).join("disk.img");
            std::fs::create_dir_all(img.parent().unwrap()).unwrap();
            disk(&fs, &img);
            images.push(img);
        }
        let b = images.pop().unwrap();
        let a = images.pop().unwrap();
        Made { _tmp: tmp, a, b }
    }

    const UUID: &str = "11111111-2222-3333-4444-555555555555";

    /// Two images whose ext4 partitions differ in the third line of `/etc/foo`.
    pub(super) fn pair_for_tests(third: (&str, &str)) -> Made {
        pair(third, (UUID, UUID), &["-t", "ext4"], &|_| {})
    }

    fn summary(d: &[Difference]) -> Vec<(String, String, Cause)> {
        d.iter()
            .map(|d| (d.path.clone(), d.what.clone(), d.cause))
            .collect()
    }

    /// ext4 (extents, an extent tree of depth 1, htree directory, 64-bit descriptors, four
    /// groups), ext4 with inline data, and ext2 (the old block map) are read file by file:
    /// a differing line is named by partition, filesystem, path and line, and nothing else
    /// differs (the reader read every other file the same in both).
    #[test]
    fn an_ext4_partition_is_diffed_file_by_file_to_the_line() {
        for (kind, extra) in [
            ("ext4", &["-t", "ext4"][..]),
            ("ext4", &["-t", "ext4", "-O", "inline_data"][..]),
            ("ext2", &["-t", "ext2"][..]),
        ] {
            let m = pair(("third", "THIRD"), (UUID, UUID), extra, &|_| {});
            let d = diff_images(&m.a, &m.b, "disk.img", &Options::default())
                .unwrap()
                .unwrap();
            assert_eq!(
                summary(&d),
                [(
                    format!("disk.img › p3 KSODATA ({kind}) › /etc/foo: line 3"),
                    "content".to_string(),
                    Cause::Other
                )],
                "{extra:?}"
            );
            // What the reader read is what mke2fs was given.
            let f = File::open(&m.a).unwrap();
            let fs = Ext4::open(&f, 6144 * 512, 8 << 20).unwrap();
            let t = fs.tree().unwrap();
            assert_eq!(
                t.keys().filter(|k| k.starts_with("/big/")).count(),
                400,
                "{extra:?}"
            );
            let blob = fs.read(&t["/blob"], 1 << 20).unwrap();
            assert_eq!(blob.len(), 11 * 20000 + 3000);
            for i in 0..12u8 {
                let at = usize::from(i) * 20000;
                assert!(blob[at..at + 3000].iter().all(|&c| c == b'A' + i));
                assert!(blob[at + 3000..(at + 20000).min(blob.len())]
                    .iter()
                    .all(|&c| c == 0));
            }
            if extra.len() == 2 && kind == "ext4" {
                assert!(
                    fs.extents(&t["/blob"]).unwrap().len() > 4,
                    "a tree of depth > 0"
                );
            }
            assert_eq!(fs.symlink_target(&t["/link"]).unwrap(), b"../etc/foo");
            assert_eq!(
                fs.symlink_target(&t["/longlink"]).unwrap(),
                format!("/{}", "x".repeat(100)).as_bytes()
            );
            assert_eq!(t["/etc/foo"].mtime.0, 1700000000);
        }
    }

    /// Two filesystems of the same files that differ only in their UUID: the superblock's
    /// `s_uuid` is named, classified random.
    #[test]
    fn an_ext4_uuid_difference_is_named_and_random() {
        let m = pair(
            ("third", "third"),
            (UUID, "99999999-8888-7777-6666-555555555555"),
            &["-t", "ext4"],
            &|_| {},
        );
        let d = diff_images(&m.a, &m.b, "disk.img", &Options::default())
            .unwrap()
            .unwrap();
        assert_eq!(
            summary(&d),
            [(
                "disk.img › p3 KSODATA (ext4) › superblock".to_string(),
                "s_uuid (the filesystem UUID) differs".to_string(),
                Cause::Random
            )]
        );
    }

    /// A filesystem the reader cannot follow (an extent tree's magic overwritten) is
    /// located to its first differing byte, saying why, rather than failing the diff.
    #[test]
    fn an_unreadable_ext4_falls_back_to_the_first_differing_byte() {
        let m = pair(("third", "third"), (UUID, UUID), &["-t", "ext4"], &|fs| {
            run(Command::new("debugfs")
                .env("E2FSPROGS_FAKE_TIME", "1700000000")
                .args(["-w", "-R", "set_inode_field /blob block[0] 0"])
                .arg(fs));
        });
        let d = diff_images(&m.a, &m.b, "disk.img", &Options::default())
            .unwrap()
            .unwrap();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].path, "disk.img › p3 KSODATA (ext4)");
        assert!(
            d[0].what.starts_with("content from byte ")
                && d[0]
                    .what
                    .contains("could not be read: a corrupt extent tree"),
            "{}",
            d[0].what
        );
    }

    /// Same files, same superblock, one inode's ctime changed (`debugfs`): the inode table
    /// is named, with the inode, its path and the field, classified a timestamp.
    #[test]
    fn an_ext4_inode_time_difference_is_located_in_the_inode_table() {
        let m = pair(("third", "third"), (UUID, UUID), &["-t", "ext4"], &|fs| {
            run(Command::new("debugfs")
                .env("E2FSPROGS_FAKE_TIME", "1700000000")
                .args(["-w", "-R", "set_inode_field /etc/foo ctime 20200101"])
                .arg(fs));
        });
        let d = diff_images(&m.a, &m.b, "disk.img", &Options::default())
            .unwrap()
            .unwrap();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].path, "disk.img › p3 KSODATA (ext4) › metadata");
        assert!(
            d[0].what.starts_with("the inode table: inode ")
                && d[0].what.contains("(/etc/foo), i_ctime"),
            "{}",
            d[0].what
        );
        assert_eq!(d[0].cause, Cause::Timestamp);
    }
}

#[cfg(test)]
mod diffoscope_tests {
    use super::*;

    /// With `--diffoscope`, a differing file inside an image's ext4 partition is
    /// extracted (both sides) and handed to diffoscope, whose report is attached.
    #[test]
    fn an_image_member_is_extracted_for_diffoscope() {
        let Ok(d) = super::super::diffoscope::Diffoscope::find() else {
            if std::env::var_os("KSBUILD_REQUIRE_NETWORK").is_some() {
                panic!("diffoscope is required: apt-get install diffoscope-minimal");
            }
            eprintln!("SKIP: diffoscope is not installed (apt-get install diffoscope-minimal)");
            return;
        };
        let m = super::ext4_tests::pair_for_tests(("third", "THIRD"));
        let options = Options {
            diffoscope: Some(d),
        };
        let got = diff_images(&m.a, &m.b, "disk.img", &options)
            .unwrap()
            .unwrap();
        let text = got[0].diffoscope.as_deref().unwrap_or_default();
        assert!(
            text.contains("a/foo") && text.contains("-third") && text.contains("+THIRD"),
            "{text}"
        );
    }
}
