//! ext2/3/4 read in place, in Rust, for image diffs: the superblock, the group descriptors,
//! inodes, extent trees (any depth) and the old block map, directories (linear; an htree
//! directory reads linearly, its index blocks looking like one empty entry), inline data
//! and symlinks (fast and slow). No mount, no privilege, no external tool. Reads only what
//! is asked for, bounded; the layout arithmetic (which structure holds a byte) is pure.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::explain::Cause;

fn le16(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 2)
        .map_or(0, |x| u64::from(u16::from_le_bytes([x[0], x[1]])))
}
fn le32(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 4).map_or(0, |x| {
        u64::from(u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
    })
}

/// `s_feature_incompat`: directory entries carry a file type.
const INCOMPAT_FILETYPE: u64 = 0x2;
/// `s_feature_incompat`: group descriptors are spread over the disk (not read here).
const INCOMPAT_META_BG: u64 = 0x10;
/// `s_feature_incompat`: files are mapped by extents.
const INCOMPAT_EXTENTS: u64 = 0x40;
/// `s_feature_incompat`: block numbers are 64-bit, and so may be group descriptors.
const INCOMPAT_64BIT: u64 = 0x80;
/// `s_feature_ro_compat`: superblock backups only in groups 0, 1 and powers of 3, 5, 7.
const RO_COMPAT_SPARSE_SUPER: u64 = 0x1;
/// `i_flags`: the inode's `i_block` holds an extent tree.
const EXT4_EXTENTS_FL: u64 = 0x80000;
/// `i_flags`: the inode's data is inline (in `i_block` and the `system.data` xattr).
const EXT4_INLINE_DATA_FL: u64 = 0x1000_0000;
/// The magic number of an extent tree node (`eh_magic`).
const EXT4_EXT_MAGIC: u64 = 0xF30A;
/// The root directory's inode.
pub const ROOT_INODE: u32 = 2;
/// Directories larger than this are not read (a bound, not a format limit).
const MAX_DIRECTORY: u64 = 64 << 20;
/// At most this many inodes are walked per filesystem.
const MAX_FILES: usize = 1 << 20;

/// An ext2/3/4 filesystem inside an image, read in place.
pub struct Ext4<'f> {
    file: &'f File,
    start: u64,
    size: u64,
    /// `ext4`, `ext3` or `ext2`, from the features.
    pub kind: &'static str,
    /// The volume label (`s_volume_name`).
    pub label: String,
    /// The block size in bytes.
    pub block_size: u64,
    /// The superblock's 1024 bytes.
    pub superblock: Vec<u8>,
    descriptors: Vec<u8>,
    desc_size: u64,
    groups: u64,
    first_data_block: u64,
    blocks_per_group: u64,
    inodes_per_group: u64,
    inode_size: u64,
    incompat: u64,
    ro_compat: u64,
}

/// The kind of an inode, from `i_mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link.
    Symlink,
    /// A device, FIFO or socket.
    Special,
}

impl Kind {
    /// Its name in a difference.
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Directory => "directory",
            Kind::Symlink => "symlink",
            Kind::Special => "special file",
        }
    }
}

/// An inode, with the fields a diff compares.
#[derive(Debug, Clone)]
pub struct Inode {
    /// Its number.
    pub number: u32,
    /// `i_mode`: type and permission bits.
    pub mode: u16,
    /// The owner (`i_uid` with its high half).
    pub uid: u32,
    /// The group (`i_gid` with its high half).
    pub gid: u32,
    /// The size in bytes.
    pub size: u64,
    /// `i_mtime` in seconds, and the nanoseconds of `i_mtime_extra` (0 without).
    pub mtime: (u64, u64),
    flags: u64,
    raw: Vec<u8>,
}

impl Inode {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self.mode & 0o170000 {
            0o100000 => Kind::File,
            0o040000 => Kind::Directory,
            0o120000 => Kind::Symlink,
            _ => Kind::Special,
        }
    }

    /// `i_block`: 60 bytes of block map, extent tree root, inline data or symlink target.
    fn block(&self) -> &[u8] {
        &self.raw[0x28..0x28 + 60]
    }
}

/// A run of a file's blocks: `len` blocks from `logical` in the file are at `physical`;
/// an uninitialised extent (`zeroed`) reads as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// The first block in the file.
    pub logical: u64,
    /// Its block on the disk.
    pub physical: u64,
    /// How many blocks.
    pub len: u64,
    /// Whether it is allocated but not yet written (reads as zeros).
    pub zeroed: bool,
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl<'f> Ext4<'f> {
    /// Opens the ext2/3/4 filesystem at `start` of `file` (`size` bytes long), if there is
    /// one this reader understands (`meta_bg` is not).
    pub fn open(file: &'f File, start: u64, size: u64) -> Option<Ext4<'f>> {
        let mut sb = vec![0u8; 1024];
        file.read_exact_at(&mut sb, start + 1024).ok()?;
        if le16(&sb, 0x38) != 0xEF53 {
            return None;
        }
        let log = le32(&sb, 0x18);
        if log > 6 {
            return None;
        }
        let block_size = 1024u64 << log;
        let incompat = le32(&sb, 0x60);
        let ro_compat = le32(&sb, 0x64);
        let compat = le32(&sb, 0x5C);
        if incompat & INCOMPAT_META_BG != 0 {
            return None;
        }
        let blocks = le32(&sb, 0x4)
            | if incompat & INCOMPAT_64BIT != 0 {
                le32(&sb, 0x150) << 32
            } else {
                0
            };
        let first_data_block = le32(&sb, 0x14);
        let blocks_per_group = le32(&sb, 0x20);
        let inodes_per_group = le32(&sb, 0x28);
        let inode_size = if le32(&sb, 0x4C) == 0 {
            128
        } else {
            le16(&sb, 0x58)
        };
        let desc_size = if incompat & INCOMPAT_64BIT != 0 {
            le16(&sb, 0xFE).max(32)
        } else {
            32
        };
        if blocks_per_group == 0
            || inodes_per_group == 0
            || !(128..=block_size).contains(&inode_size)
            || blocks.saturating_mul(block_size) > size.saturating_mul(2).max(1 << 20)
        {
            return None;
        }
        let groups = blocks
            .saturating_sub(first_data_block)
            .div_ceil(blocks_per_group);
        let mut descriptors = vec![0u8; (groups * desc_size) as usize];
        file.read_exact_at(
            &mut descriptors,
            start + (first_data_block + 1) * block_size,
        )
        .ok()?;
        let kind = if incompat & INCOMPAT_EXTENTS != 0 || incompat & INCOMPAT_64BIT != 0 {
            "ext4"
        } else if compat & 0x4 != 0 {
            "ext3"
        } else {
            "ext2"
        };
        let label = String::from_utf8_lossy(&sb[0x78..0x88])
            .trim_end_matches('\0')
            .to_string();
        Some(Ext4 {
            file,
            start,
            size,
            kind,
            label,
            block_size,
            superblock: sb,
            descriptors,
            desc_size,
            groups,
            first_data_block,
            blocks_per_group,
            inodes_per_group,
            inode_size,
            incompat,
            ro_compat,
        })
    }

    /// The image it is read from.
    pub fn file(&self) -> &'f File {
        self.file
    }

    /// Where it starts in the image, in bytes.
    pub fn start(&self) -> u64 {
        self.start
    }

    /// The partition's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// A field of group `g`'s descriptor: `lo` and, with 64-bit descriptors, `hi`.
    fn descriptor(&self, g: u64, lo: usize, hi: usize) -> u64 {
        let d = &self.descriptors[(g * self.desc_size) as usize..][..self.desc_size as usize];
        le32(d, lo)
            | if self.desc_size >= 64 {
                le32(d, hi) << 32
            } else {
                0
            }
    }

    /// Group `g`'s inode table, block bitmap and inode bitmap (block numbers).
    fn group_tables(&self, g: u64) -> (u64, u64, u64) {
        (
            self.descriptor(g, 0x8, 0x28),
            self.descriptor(g, 0x0, 0x20),
            self.descriptor(g, 0x4, 0x24),
        )
    }

    /// Reads inode `number`.
    pub fn inode(&self, number: u32) -> io::Result<Inode> {
        let index = u64::from(number)
            .checked_sub(1)
            .ok_or_else(|| invalid("inode 0".into()))?;
        let group = index / self.inodes_per_group;
        if group >= self.groups {
            return Err(invalid(format!("inode {number} is beyond the last group")));
        }
        let (table, _, _) = self.group_tables(group);
        let at = table * self.block_size + (index % self.inodes_per_group) * self.inode_size;
        let mut raw = vec![0u8; self.inode_size as usize];
        self.file.read_exact_at(&mut raw, self.start + at)?;
        let extra = if self.inode_size > 128 {
            le16(&raw, 0x80)
        } else {
            0
        };
        Ok(Inode {
            number,
            mode: le16(&raw, 0x0) as u16,
            uid: (le16(&raw, 0x2) | le16(&raw, 0x78) << 16) as u32,
            gid: (le16(&raw, 0x18) | le16(&raw, 0x7A) << 16) as u32,
            size: le32(&raw, 0x4) | le32(&raw, 0x6C) << 32,
            mtime: (
                le32(&raw, 0x10),
                if extra >= 0x0C {
                    le32(&raw, 0x88) >> 2
                } else {
                    0
                },
            ),
            flags: le32(&raw, 0x20),
            raw,
        })
    }

    fn read_block(&self, block: u64) -> io::Result<Vec<u8>> {
        let mut b = vec![0u8; self.block_size as usize];
        self.file
            .read_exact_at(&mut b, self.start + block * self.block_size)?;
        Ok(b)
    }

    /// Where an inode's blocks are (empty for inline data and fast symlinks), in file
    /// order; holes are absent.
    pub fn extents(&self, inode: &Inode) -> io::Result<Vec<Extent>> {
        let blocks = inode.size.div_ceil(self.block_size);
        let mut out = Vec::new();
        if inode.flags & EXT4_INLINE_DATA_FL != 0 {
            return Ok(out);
        }
        if inode.flags & EXT4_EXTENTS_FL != 0 {
            self.extent_node(inode.block(), 0, blocks, &mut out)?;
        } else {
            // The old block map: 12 direct blocks, then single, double and triple indirect.
            let b = inode.block();
            let mut logical = 0u64;
            for i in 0..12 {
                push_block(&mut out, logical, le32(b, 4 * i));
                logical += 1;
            }
            for (i, level) in [(12, 1), (13, 2), (14, 3)] {
                if logical >= blocks {
                    break;
                }
                self.indirect(le32(b, 4 * i), level, &mut logical, blocks, &mut out)?;
            }
        }
        out.retain(|e| e.logical < blocks);
        Ok(out)
    }

    /// One node of an extent tree, `depth` levels below the root (at most 5).
    fn extent_node(
        &self,
        node: &[u8],
        level: u32,
        blocks: u64,
        out: &mut Vec<Extent>,
    ) -> io::Result<()> {
        if le16(node, 0) != EXT4_EXT_MAGIC || level > 5 {
            return Err(invalid("a corrupt extent tree".into()));
        }
        let entries = le16(node, 2) as usize;
        let depth = le16(node, 6);
        for i in 0..entries.min((node.len() - 12) / 12) {
            let e = &node[12 + 12 * i..24 + 12 * i];
            if depth == 0 {
                let len = le16(e, 4);
                out.push(Extent {
                    logical: le32(e, 0),
                    physical: le16(e, 6) << 32 | le32(e, 8),
                    len: if len > 32768 { len - 32768 } else { len },
                    zeroed: len > 32768,
                });
            } else {
                let child = le16(e, 8) << 32 | le32(e, 4);
                self.extent_node(&self.read_block(child)?, level + 1, blocks, out)?;
            }
            if out.len() > (blocks as usize).saturating_add(16) {
                return Err(invalid(
                    "an extent tree with more extents than blocks".into(),
                ));
            }
        }
        Ok(())
    }

    /// One indirect block of the old block map (`level` 1: it lists data blocks).
    fn indirect(
        &self,
        block: u64,
        level: u32,
        logical: &mut u64,
        blocks: u64,
        out: &mut Vec<Extent>,
    ) -> io::Result<()> {
        let per = self.block_size / 4;
        let span = per.pow(level);
        if block == 0 {
            *logical += span;
            return Ok(());
        }
        let b = self.read_block(block)?;
        for i in 0..per as usize {
            if *logical >= blocks {
                break;
            }
            if level == 1 {
                push_block(out, *logical, le32(&b, 4 * i));
                *logical += 1;
            } else {
                self.indirect(le32(&b, 4 * i), level - 1, logical, blocks, out)?;
            }
        }
        Ok(())
    }

    /// The bytes `[offset, offset + len)` of an inode's data (holes read as zeros).
    pub fn read_range(&self, inode: &Inode, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let end = inode.size.min(offset.saturating_add(len));
        let mut out = vec![0u8; end.saturating_sub(offset) as usize];
        if out.is_empty() {
            return Ok(out);
        }
        if inode.flags & EXT4_INLINE_DATA_FL != 0 {
            let inline = self.inline_data(inode);
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = inline.get(offset as usize + i).copied().unwrap_or(0);
            }
            return Ok(out);
        }
        let bs = self.block_size;
        for e in self.extents(inode)? {
            let (from, to) = (e.logical * bs, (e.logical + e.len) * bs);
            let (s, t) = (from.max(offset), to.min(end));
            if s >= t || e.zeroed {
                continue;
            }
            let disk = self.start + e.physical * bs + (s - from);
            self.file
                .read_exact_at(&mut out[(s - offset) as usize..(t - offset) as usize], disk)?;
        }
        Ok(out)
    }

    /// The whole of an inode's data, at most `limit` bytes of it.
    pub fn read(&self, inode: &Inode, limit: u64) -> io::Result<Vec<u8>> {
        self.read_range(inode, 0, limit)
    }

    /// Inline data: `i_block`'s 60 bytes, then the `system.data` extended attribute kept in
    /// the inode's extra space.
    fn inline_data(&self, inode: &Inode) -> Vec<u8> {
        let mut out = inode.block().to_vec();
        let raw = &inode.raw;
        let extra = if raw.len() > 128 { le16(raw, 0x80) } else { 0 } as usize;
        let header = 128 + extra;
        if le32(raw, header) == 0xEA02_0000 {
            let first = header + 4;
            let mut at = first;
            while at + 16 <= raw.len() && le32(raw, at) != 0 {
                let name_len = raw[at] as usize;
                let index = raw[at + 1];
                let value_at = first + le16(raw, at + 2) as usize;
                let value_len = le32(raw, at + 8) as usize;
                let name = raw.get(at + 16..at + 16 + name_len).unwrap_or_default();
                if index == 7 && name == b"data" {
                    if let Some(v) = raw.get(value_at..value_at + value_len) {
                        out.extend_from_slice(v);
                    }
                    break;
                }
                at += (16 + name_len + 3) & !3;
            }
        }
        out.truncate(inode.size as usize);
        out
    }

    /// A symlink's target: in `i_block` when short (a fast symlink), else in its data.
    pub fn symlink_target(&self, inode: &Inode) -> io::Result<Vec<u8>> {
        if inode.flags & (EXT4_EXTENTS_FL | EXT4_INLINE_DATA_FL) == 0 && inode.size < 60 {
            return Ok(inode.block()[..inode.size as usize].to_vec());
        }
        self.read(inode, 1 << 16)
    }

    /// A directory's entries (`.` and `..` left out): name and inode.
    pub fn directory(&self, inode: &Inode) -> io::Result<Vec<(String, u32)>> {
        let mut out = Vec::new();
        let filetype = self.incompat & INCOMPAT_FILETYPE != 0;
        if inode.flags & EXT4_INLINE_DATA_FL != 0 {
            // The parent's inode, then entries in the rest of `i_block`, then in the xattr.
            let data = self.inline_data(inode);
            let split = data.len().min(60);
            dirents(data.get(4..split).unwrap_or_default(), filetype, &mut out);
            dirents(data.get(split..).unwrap_or_default(), filetype, &mut out);
            return Ok(out);
        }
        if inode.size > MAX_DIRECTORY {
            return Err(invalid(format!(
                "directory inode {} is {} bytes long",
                inode.number, inode.size
            )));
        }
        let data = self.read(inode, MAX_DIRECTORY)?;
        for block in data.chunks(self.block_size as usize) {
            dirents(block, filetype, &mut out);
        }
        Ok(out)
    }

    /// Every inode reachable from the root, by path (`/` the root), walking at most
    /// [`MAX_FILES`] entries and 64 levels deep.
    pub fn tree(&self) -> io::Result<BTreeMap<String, Inode>> {
        let mut out = BTreeMap::new();
        let root = self.inode(ROOT_INODE)?;
        let mut todo = vec![(String::new(), root, 0usize)];
        while let Some((path, dir, depth)) = todo.pop() {
            let entries = self.directory(&dir)?;
            out.insert(
                if path.is_empty() {
                    "/".into()
                } else {
                    path.clone()
                },
                dir,
            );
            for (name, number) in entries {
                if out.len() + todo.len() >= MAX_FILES {
                    return Err(invalid(format!("more than {MAX_FILES} files")));
                }
                let child = self.inode(number)?;
                let p = format!("{path}/{name}");
                if child.kind() == Kind::Directory && depth < 64 {
                    todo.push((p, child, depth + 1));
                } else {
                    out.insert(p, child);
                }
            }
        }
        Ok(out)
    }

    /// Whether group `g` holds a backup of the superblock and descriptors.
    fn has_super(&self, g: u64) -> bool {
        if self.ro_compat & RO_COMPAT_SPARSE_SUPER == 0 || g <= 1 {
            return true;
        }
        [3u64, 5, 7].iter().any(|&p| {
            let mut x = p;
            while x < g {
                x *= p;
            }
            x == g
        })
    }

    /// Which structure holds byte `offset` of the filesystem, and the likely cause of a
    /// difference there: the superblock (by field), a group descriptor, a bitmap, an
    /// inode (by field; `paths` names it), the journal, a directory's blocks or a file's.
    pub fn locate(
        &self,
        offset: u64,
        paths: &BTreeMap<String, Inode>,
    ) -> io::Result<(String, Cause)> {
        let bs = self.block_size;
        if (1024..2048).contains(&offset) {
            let (field, cause) = superblock_field((offset - 1024) as usize);
            return Ok((format!("the superblock's {field}"), cause));
        }
        let block = offset / bs;
        let desc_blocks = (self.groups * self.desc_size).div_ceil(bs);
        for g in 0..self.groups {
            let first = self.first_data_block + g * self.blocks_per_group;
            if self.has_super(g) && block >= first && block <= first + desc_blocks {
                let what = if block == first && g > 0 {
                    format!("the backup superblock of group {g}")
                } else {
                    let d = (offset - (first + 1) * bs) / self.desc_size;
                    format!("the group descriptors (group {d}: free counts, flags, checksum)")
                };
                return Ok((what, Cause::Other));
            }
            let (table, block_bitmap, inode_bitmap) = self.group_tables(g);
            if block == block_bitmap {
                return Ok((format!("the block bitmap of group {g}"), Cause::Other));
            }
            if block == inode_bitmap {
                return Ok((format!("the inode bitmap of group {g}"), Cause::Other));
            }
            let table_bytes = self.inodes_per_group * self.inode_size;
            if (table * bs..table * bs + table_bytes).contains(&offset) {
                let rel = offset - table * bs;
                let number = g * self.inodes_per_group + rel / self.inode_size + 1;
                let (field, cause) = inode_field((rel % self.inode_size) as usize);
                let named = paths
                    .iter()
                    .find(|(_, i)| u64::from(i.number) == number)
                    .map(|(p, _)| format!(" ({p})"))
                    .unwrap_or_default();
                return Ok((
                    format!("the inode table: inode {number}{named}, {field}"),
                    cause,
                ));
            }
        }
        let journal = le32(&self.superblock, 0xE0) as u32;
        if journal != 0 {
            if let Ok(inode) = self.inode(journal) {
                if self.extents(&inode)?.iter().any(|e| contains(e, block)) {
                    return Ok((format!("the journal (inode {journal})"), Cause::Other));
                }
            }
        }
        for (path, inode) in paths {
            if inode.kind() == Kind::Symlink && inode.size < 60 {
                continue;
            }
            if self.extents(inode)?.iter().any(|e| contains(e, block)) {
                return Ok(if inode.kind() == Kind::Directory {
                    (
                        format!("the entries of directory {path} (their order or hash index)"),
                        Cause::Ordering,
                    )
                } else {
                    (format!("the blocks of {path}"), Cause::Other)
                });
            }
        }
        Ok((format!("block {block}, used by no file"), Cause::Other))
    }
}

fn contains(e: &Extent, block: u64) -> bool {
    (e.physical..e.physical + e.len).contains(&block)
}

/// Adds data block `physical` (0: a hole) at `logical` to `out`, merging runs.
fn push_block(out: &mut Vec<Extent>, logical: u64, physical: u64) {
    if physical == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.logical + last.len == logical && last.physical + last.len == physical {
            last.len += 1;
            return;
        }
    }
    out.push(Extent {
        logical,
        physical,
        len: 1,
        zeroed: false,
    });
}

/// The entries of one directory block (`ext4_dir_entry_2`, or `ext4_dir_entry` without the
/// `filetype` feature). Empty entries (inode 0) are skipped: deleted entries, an htree's
/// index blocks and the checksum tail.
fn dirents(block: &[u8], filetype: bool, out: &mut Vec<(String, u32)>) {
    let mut at = 0usize;
    while at + 8 <= block.len() {
        let inode = le32(block, at) as u32;
        let rec_len = match le16(block, at + 4) as usize {
            0 | 65535 if block.len() == 65536 => 65536,
            n => n,
        };
        let name_len = if filetype {
            block[at + 6] as usize
        } else {
            le16(block, at + 6) as usize
        };
        if rec_len < 8 || at + rec_len > block.len() {
            break;
        }
        if inode != 0 && 8 + name_len <= rec_len {
            let name = String::from_utf8_lossy(&block[at + 8..at + 8 + name_len]).into_owned();
            if name != "." && name != ".." {
                out.push((name, inode));
            }
        }
        at += rec_len;
    }
}

/// The superblock fields a diff names: offset, size, name, likely cause of a difference.
pub const SUPERBLOCK_FIELDS: &[(usize, usize, &str, Cause)] = &[
    (0x0C, 4, "s_free_blocks_count", Cause::Other),
    (0x10, 4, "s_free_inodes_count", Cause::Other),
    (0x2C, 4, "s_mtime (last mount time)", Cause::Timestamp),
    (0x30, 4, "s_wtime (last write time)", Cause::Timestamp),
    (0x34, 2, "s_mnt_count", Cause::Other),
    (0x3A, 2, "s_state", Cause::Other),
    (0x40, 4, "s_lastcheck (last check time)", Cause::Timestamp),
    (0x5C, 12, "the feature flags", Cause::Other),
    (0x68, 16, "s_uuid (the filesystem UUID)", Cause::Random),
    (0x78, 16, "s_volume_name", Cause::Other),
    (0x88, 64, "s_last_mounted", Cause::BuildPath),
    (0xD0, 16, "s_journal_uuid", Cause::Random),
    (
        0xEC,
        16,
        "s_hash_seed (the directory hash seed)",
        Cause::Random,
    ),
    (0x108, 4, "s_mkfs_time (creation time)", Cause::Timestamp),
    (
        0x10C,
        68,
        "s_jnl_blocks (the journal inode's backup)",
        Cause::Other,
    ),
    (0x178, 8, "s_kbytes_written", Cause::Other),
    (0x270, 4, "s_checksum_seed", Cause::Random),
    (0x274, 4, "the high bytes of the times", Cause::Timestamp),
    (0x3FC, 4, "s_checksum", Cause::Other),
];

/// The superblock field at byte `at` of the superblock.
fn superblock_field(at: usize) -> (String, Cause) {
    SUPERBLOCK_FIELDS
        .iter()
        .find(|(o, n, _, _)| (*o..o + n).contains(&at))
        .map(|(_, _, name, cause)| (name.to_string(), *cause))
        .unwrap_or_else(|| (format!("byte {at}"), Cause::Other))
}

/// The inode field at byte `at` of an inode.
fn inode_field(at: usize) -> (String, Cause) {
    #[rustfmt::skip]
    const FIELDS: &[(usize, usize, &str, Cause)] = &[
        (0x00, 2, "i_mode", Cause::Other),
        (0x02, 2, "i_uid", Cause::HostOrUser),
        (0x04, 4, "i_size", Cause::Other),
        (0x08, 4, "i_atime (access time)", Cause::Timestamp),
        (0x0C, 4, "i_ctime (change time)", Cause::Timestamp),
        (0x10, 4, "i_mtime (modification time)", Cause::Timestamp),
        (0x14, 4, "i_dtime (deletion time)", Cause::Timestamp),
        (0x18, 2, "i_gid", Cause::HostOrUser),
        (0x1A, 2, "i_links_count", Cause::Other),
        (0x1C, 4, "i_blocks", Cause::Other),
        (0x20, 4, "i_flags", Cause::Other),
        (0x28, 60, "i_block (where its data is)", Cause::Other),
        (0x64, 4, "i_generation", Cause::Random),
        (0x68, 4, "i_file_acl (its xattr block)", Cause::Other),
        (0x78, 4, "the high halves of i_uid and i_gid", Cause::HostOrUser),
        (0x7C, 2, "i_checksum_lo", Cause::Other),
        (0x82, 2, "i_checksum_hi", Cause::Other),
        (0x84, 12, "the times' nanoseconds (i_*time_extra)", Cause::Timestamp),
        (0x90, 8, "i_crtime (creation time)", Cause::Timestamp),
    ];
    FIELDS
        .iter()
        .find(|(o, n, _, _)| (*o..o + n).contains(&at))
        .map(|(_, _, name, cause)| (name.to_string(), *cause))
        .unwrap_or_else(|| {
            (
                format!("byte {at} (extended attributes or padding)"),
                Cause::Other,
            )
        })
}
