//! The GRUB environment block (`grubenv`): parse and edit exactly as GRUB 2.06's
//! `grub-core/lib/envblk.c` does, so an edit gives the bytes `grub-editenv set` would. Pure:
//! the file I/O (in place, never truncated) is in `bootenv.rs`.
//!
//! Layout: `# GRUB Environment Block\n`, then `name=value\n` lines and `#` comment lines, then
//! `#` padding to the block's size (1024 bytes as `grub-editenv create` makes it). Values
//! escape `\` as `\\` and a newline as `\` + newline. GRUB's `save_env` overwrites the file's
//! blocks in place, so the size never changes.

/// The first line GRUB checks when it loads a block.
pub const SIGNATURE: &[u8] = b"# GRUB Environment Block\n";
/// The size of every block `grub-editenv create` writes, and the only one accepted here.
pub const BLOCK_SIZE: usize = 1024;

/// An environment block held in memory (always [`BLOCK_SIZE`] bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvBlock {
    buf: Vec<u8>,
}

/// Why a block could not be read or changed.
#[derive(Debug, PartialEq, Eq)]
pub enum GrubEnvError {
    /// The block is not 1024 bytes.
    Size(usize),
    /// The first line is not GRUB's signature.
    Signature,
    /// The padding does not follow a complete line (GRUB calls this "broken").
    Broken,
    /// The new value does not fit ("environment block too small").
    TooSmall { name: String },
    /// A name GRUB could not read back (empty, or with `=`, `\n`, or a leading `#`).
    BadName(String),
}

impl std::fmt::Display for GrubEnvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrubEnvError::Size(n) => write!(
                f,
                "is {} bytes, not the {} of a GRUB environment block",
                n, BLOCK_SIZE
            ),
            GrubEnvError::Signature => write!(f, "does not start with `# GRUB Environment Block`"),
            GrubEnvError::Broken => write!(
                f,
                "is damaged (its padding does not follow a complete line)"
            ),
            GrubEnvError::TooSmall { name } => {
                write!(
                    f,
                    "has no room for `{}` (environment block too small)",
                    name
                )
            }
            GrubEnvError::BadName(name) => write!(f, "cannot hold a variable named {:?}", name),
        }
    }
}

impl EnvBlock {
    /// Takes a block read from a file, checking its size and signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<EnvBlock, GrubEnvError> {
        if bytes.len() != BLOCK_SIZE {
            return Err(GrubEnvError::Size(bytes.len()));
        }
        if !bytes.starts_with(SIGNATURE) {
            return Err(GrubEnvError::Signature);
        }
        Ok(EnvBlock {
            buf: bytes.to_vec(),
        })
    }

    /// The bytes to write back (always [`BLOCK_SIZE`]).
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The variables in block order, unescaped (`grub_envblk_iterate`).
    pub fn variables(&self) -> Vec<(String, String)> {
        let buf = &self.buf;
        let pend = buf.len();
        let mut out = Vec::new();
        let mut p = SIGNATURE.len();
        while p < pend {
            if buf[p] == b'#' {
                p = next_line(buf, p);
                continue;
            }
            let name_start = p;
            while p < pend && buf[p] != b'=' {
                p += 1;
            }
            if p == pend {
                return out;
            }
            let name_end = p;
            p += 1;
            let value_start = p;
            while p < pend {
                if buf[p] == b'\n' {
                    break;
                } else if buf[p] == b'\\' {
                    p += 1;
                }
                p += 1;
            }
            if p >= pend {
                return out;
            }
            let mut value = Vec::new();
            let mut q = value_start;
            while buf[q] != b'\n' {
                if buf[q] == b'\\' {
                    q += 1;
                }
                value.push(buf[q]);
                q += 1;
            }
            out.push((
                String::from_utf8_lossy(&buf[name_start..name_end]).into_owned(),
                String::from_utf8_lossy(&value).into_owned(),
            ));
            p = next_line(buf, q);
        }
        out
    }

    /// The value of `name`, if set.
    pub fn get(&self, name: &str) -> Option<String> {
        self.variables()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Sets `name=value` (`grub_envblk_set`): an existing value is replaced where it is, the
    /// rest of the block moving up or down; a new variable goes after the last line. Nothing
    /// changes when it does not fit.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), GrubEnvError> {
        if name.is_empty() || name.starts_with('#') || name.contains('=') || name.contains('\n') {
            return Err(GrubEnvError::BadName(name.to_string()));
        }
        let name = name.as_bytes();
        let value = value.as_bytes();
        let nl = name.len();
        let vl = escaped_len(value) + 1;
        let pend = self.buf.len();
        // The free space: the `#` run at the end, after a newline.
        let mut space = pend - 1;
        while self.buf[space] == b'#' {
            if space == 0 {
                return Err(GrubEnvError::Broken);
            }
            space -= 1;
        }
        if self.buf[space] != b'\n' {
            return Err(GrubEnvError::Broken);
        }
        space += 1;
        let mut p = SIGNATURE.len() - 1;
        let mut found = false;
        while p + nl + 1 < space {
            if &self.buf[p..p + nl] == name && self.buf[p + nl] == b'=' {
                p += nl + 1;
                let mut len = 0;
                while p + len < pend && self.buf[p + len] != b'\n' {
                    len += if self.buf[p + len] == b'\\' { 2 } else { 1 };
                }
                if p + len >= pend {
                    return Err(GrubEnvError::Broken);
                }
                // The old value and its newline are `len + 1` bytes; the new ones `vl`.
                let old = len + 1;
                if vl > old && pend - space < vl - old {
                    return Err(GrubEnvError::TooSmall {
                        name: String::from_utf8_lossy(name).into_owned(),
                    });
                }
                if vl < old {
                    self.buf.copy_within(p + old..pend, p + vl);
                    for b in &mut self.buf[pend - (old - vl)..] {
                        *b = b'#';
                    }
                } else {
                    self.buf.copy_within(p + old..pend - (vl - old), p + vl);
                }
                found = true;
                break;
            }
            p = next_line(&self.buf, p);
        }
        if !found {
            if pend - space < nl + 1 + vl {
                return Err(GrubEnvError::TooSmall {
                    name: String::from_utf8_lossy(name).into_owned(),
                });
            }
            self.buf[space..space + nl].copy_from_slice(name);
            p = space + nl;
            self.buf[p] = b'=';
            p += 1;
        }
        for &c in value {
            if c == b'\\' || c == b'\n' {
                self.buf[p] = b'\\';
                p += 1;
            }
            self.buf[p] = c;
            p += 1;
        }
        self.buf[p] = b'\n';
        Ok(())
    }

    /// Sets several variables, all or nothing.
    pub fn set_all(&mut self, pairs: &[(&str, &str)]) -> Result<(), GrubEnvError> {
        let mut edited = self.clone();
        for (name, value) in pairs {
            edited.set(name, value)?;
        }
        *self = edited;
        Ok(())
    }
}

/// The byte after the next unescaped newline from `p` (GRUB's `find_next_line`).
fn next_line(buf: &[u8], mut p: usize) -> usize {
    while p < buf.len() {
        if buf[p] == b'\\' {
            p += 2;
        } else if buf[p] == b'\n' {
            break;
        } else {
            p += 1;
        }
    }
    p + 1
}

fn escaped_len(value: &[u8]) -> usize {
    value
        .iter()
        .map(|&c| if c == b'\\' || c == b'\n' { 2 } else { 1 })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Golden blocks written by grub-editenv 2.06 (see testdata/README.md).
    const IMAGE: &[u8] = include_bytes!("testdata/image.grubenv");
    const APPLY_B: &[u8] = include_bytes!("testdata/apply-b.grubenv");
    const COMMIT_B: &[u8] = include_bytes!("testdata/commit-b.grubenv");
    const ESCAPED: &[u8] = include_bytes!("testdata/escaped.grubenv");
    const FULL: &[u8] = include_bytes!("testdata/full.grubenv");

    fn pairs(block: &EnvBlock) -> Vec<(String, String)> {
        block.variables()
    }

    #[test]
    fn parses_the_image_block() {
        let block = EnvBlock::from_bytes(IMAGE).unwrap();
        assert_eq!(
            pairs(&block),
            vec![
                ("active_slot".to_string(), "A".to_string()),
                ("boot_counter".to_string(), "3".to_string()),
                ("boot_success".to_string(), "1".to_string()),
            ]
        );
        assert_eq!(block.get("boot_counter").as_deref(), Some("3"));
        assert_eq!(block.get("nope"), None);
    }

    #[test]
    fn edits_are_byte_identical_to_grub_editenv() {
        let mut block = EnvBlock::from_bytes(IMAGE).unwrap();
        block
            .set_all(&[
                ("active_slot", "B"),
                ("boot_counter", "3"),
                ("boot_success", "0"),
            ])
            .unwrap();
        assert_eq!(block.as_bytes(), APPLY_B);
        block
            .set_all(&[("boot_success", "1"), ("boot_counter", "3")])
            .unwrap();
        assert_eq!(block.as_bytes(), COMMIT_B);
        assert_eq!(block.as_bytes().len(), BLOCK_SIZE);
    }

    #[test]
    fn escaping_and_moving_values_match_grub_editenv() {
        let mut block = EnvBlock::from_bytes(IMAGE).unwrap();
        block.set("weird", "a\\b\nc").unwrap();
        block.set("active_slot", "LONGERVALUE").unwrap();
        block.set("active_slot", "B").unwrap();
        assert_eq!(block.as_bytes(), ESCAPED);
        let parsed = EnvBlock::from_bytes(ESCAPED).unwrap();
        assert_eq!(parsed.get("weird").as_deref(), Some("a\\b\nc"));
        assert_eq!(parsed.get("active_slot").as_deref(), Some("B"));
    }

    #[test]
    fn a_full_block_refuses_growth_and_stays_unchanged() {
        let mut block = EnvBlock::from_bytes(IMAGE).unwrap();
        block.set("filler", &"x".repeat(878)).unwrap();
        let before = block.clone();
        assert_eq!(
            block.set("extra", "1"),
            Err(GrubEnvError::TooSmall {
                name: "extra".to_string()
            })
        );
        assert_eq!(block, before);
        assert!(block.set("boot_success", "10").is_err());
        assert_eq!(block, before);
        // All or nothing: the first change fits, the second does not.
        assert!(block
            .set_all(&[("boot_success", "0"), ("extra", "1")])
            .is_err());
        assert_eq!(block, before);
        block.set("boot_success", "0").unwrap();
        assert_eq!(block.as_bytes(), FULL);
    }

    #[test]
    fn wrong_size_or_signature_is_refused() {
        assert_eq!(
            EnvBlock::from_bytes(&IMAGE[..1000]),
            Err(GrubEnvError::Size(1000))
        );
        let mut other = IMAGE.to_vec();
        other[2] = b'X';
        assert_eq!(EnvBlock::from_bytes(&other), Err(GrubEnvError::Signature));
        let mut block = EnvBlock::from_bytes(IMAGE).unwrap();
        assert!(matches!(
            block.set("a=b", "1"),
            Err(GrubEnvError::BadName(_))
        ));
        assert!(matches!(block.set("", "1"), Err(GrubEnvError::BadName(_))));
        // A block whose last line is cut by the padding is "broken" to GRUB too.
        let mut broken = IMAGE.to_vec();
        let last_newline = broken.iter().rposition(|&b| b == b'\n').unwrap();
        broken[last_newline] = b'x';
        let mut block = EnvBlock::from_bytes(&broken).unwrap();
        assert_eq!(block.set("boot_success", "0"), Err(GrubEnvError::Broken));
    }
}
