//! Reading an uncompressed ustar archive as a stream, member by member, in constant memory.
//! Pure over any `io::Read`: no files are opened here.

use std::io::{self, Read};

const BLOCK: usize = 512;

/// One member's header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The member's path (ustar `prefix/name`).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// The type flag (`b'0'` or `0` for a regular file).
    pub typeflag: u8,
}

/// A ustar reader: call [`TarReader::next_header`], then read exactly the member's bytes
/// through [`TarReader::member`], then the next header.
pub struct TarReader<R: Read> {
    inner: R,
    /// Bytes of the current member not yet read, and its padding after them.
    remaining: u64,
    padding: u64,
    offset: u64,
}

/// Why an archive could not be read.
#[derive(Debug)]
pub enum TarError {
    /// The input failed.
    Io(io::Error),
    /// The archive ended in the middle of a header or member.
    Truncated { offset: u64 },
    /// A header that is not a valid ustar header.
    BadHeader { offset: u64, why: String },
}

impl std::fmt::Display for TarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TarError::Io(e) => write!(f, "{}", e),
            TarError::Truncated { offset } => {
                write!(f, "the archive is truncated (it ends at byte {})", offset)
            }
            TarError::BadHeader { offset, why } => {
                write!(f, "bad tar header at byte {}: {}", offset, why)
            }
        }
    }
}

impl<R: Read> TarReader<R> {
    /// Reads the archive from `inner`.
    pub fn new(inner: R) -> TarReader<R> {
        TarReader {
            inner,
            remaining: 0,
            padding: 0,
            offset: 0,
        }
    }

    fn read_full(&mut self, buf: &mut [u8]) -> Result<(), TarError> {
        let mut done = 0;
        while done < buf.len() {
            match self.inner.read(&mut buf[done..]) {
                Ok(0) => {
                    return Err(TarError::Truncated {
                        offset: self.offset,
                    })
                }
                Ok(n) => {
                    done += n;
                    self.offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Io(e)),
            }
        }
        Ok(())
    }

    /// Skips what is left of the current member, then reads the next header; `None` at the
    /// end-of-archive marker (a zero block).
    pub fn next_header(&mut self) -> Result<Option<Header>, TarError> {
        let mut skip = [0u8; BLOCK];
        let mut left = self.remaining + self.padding;
        while left > 0 {
            let n = left.min(BLOCK as u64) as usize;
            self.read_full(&mut skip[..n])?;
            left -= n as u64;
        }
        self.remaining = 0;
        self.padding = 0;
        let at = self.offset;
        let mut block = [0u8; BLOCK];
        self.read_full(&mut block)?;
        if block.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let bad = |why: String| TarError::BadHeader { offset: at, why };
        let stored =
            parse_octal(&block[148..156]).map_err(|w| bad(format!("checksum field: {}", w)))?;
        let sum: u64 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    u64::from(b' ')
                } else {
                    u64::from(b)
                }
            })
            .sum();
        if stored != sum {
            return Err(bad(format!(
                "checksum {} does not match the header's {}",
                stored, sum
            )));
        }
        if &block[257..262] != b"ustar" {
            return Err(bad("not a ustar header".to_string()));
        }
        let size = parse_size(&block[124..136]).map_err(|w| bad(format!("size field: {}", w)))?;
        let name = field(&block[0..100]);
        let prefix = field(&block[345..500]);
        let full = if prefix.is_empty() {
            name
        } else {
            format!("{}/{}", prefix, name)
        };
        self.remaining = size;
        self.padding = (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64;
        Ok(Some(Header {
            name: full,
            size,
            typeflag: block[156],
        }))
    }

    /// The current member's bytes (reads end at its end).
    pub fn member(&mut self) -> Member<'_, R> {
        Member { tar: self }
    }
}

/// The bytes of one member; a read past its end returns 0, an early end of the archive is an
/// `UnexpectedEof` error.
pub struct Member<'a, R: Read> {
    tar: &'a mut TarReader<R>,
}

impl<'a, R: Read> Read for Member<'a, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.tar.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = (buf.len() as u64).min(self.tar.remaining) as usize;
        let n = self.tar.inner.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the archive is truncated (it ends at byte {})",
                    self.tar.offset
                ),
            ));
        }
        self.tar.remaining -= n as u64;
        self.tar.offset += n as u64;
        Ok(n)
    }
}

fn field(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

fn parse_octal(bytes: &[u8]) -> Result<u64, String> {
    let text: Vec<u8> = bytes
        .iter()
        .copied()
        .filter(|&b| b != 0 && b != b' ')
        .collect();
    if text.is_empty() {
        return Ok(0);
    }
    let mut n: u64 = 0;
    for b in text {
        if !(b'0'..=b'7').contains(&b) {
            return Err(format!("{:?} is not octal", String::from_utf8_lossy(bytes)));
        }
        n = n
            .checked_mul(8)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or("overflows")?;
    }
    Ok(n)
}

/// Octal, or GNU's base-256 (high bit of the first byte set) for sizes of 8 GiB and more.
fn parse_size(bytes: &[u8]) -> Result<u64, String> {
    if bytes[0] & 0x80 != 0 {
        let mut n: u64 = u64::from(bytes[0] & 0x7f);
        for &b in &bytes[1..] {
            n = n
                .checked_mul(256)
                .and_then(|n| n.checked_add(u64::from(b)))
                .ok_or("overflows")?;
        }
        return Ok(n);
    }
    parse_octal(bytes)
}

/// Writes ustar archives for tests (what the `update-bundle` derivations produce).
#[cfg(test)]
pub mod write {
    /// One member header for a regular file of `size` bytes.
    pub fn header(name: &str, size: u64, typeflag: u8) -> [u8; 512] {
        let mut h = [0u8; 512];
        let (prefix, name) = if name.len() > 100 {
            let cut = name[..=155.min(name.len() - 1)]
                .rfind('/')
                .expect("splittable name");
            (&name[..cut], &name[cut + 1..])
        } else {
            ("", name)
        };
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..107].copy_from_slice(b"0000644");
        h[108..115].copy_from_slice(b"0000000");
        h[116..123].copy_from_slice(b"0000000");
        h[124..135].copy_from_slice(format!("{:011o}", size).as_bytes());
        h[136..147].copy_from_slice(b"00000000000");
        h[156] = typeflag;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..155].copy_from_slice(format!("{:06o}\0", sum).as_bytes());
        h
    }

    /// An archive of `(name, bytes)` members, ended by two zero blocks.
    pub fn archive(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, data) in members {
            out.extend_from_slice(&header(name, data.len() as u64, b'0'));
            out.extend_from_slice(data);
            out.resize((out.len() + 511) / 512 * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_members_in_order() {
        let long = format!("files/{}/x", "d".repeat(120));
        let data = write::archive(&[
            ("manifest", b"hello\n"),
            ("files/a", &[7u8; 1000]),
            (&long, b""),
        ]);
        let mut tar = TarReader::new(&data[..]);
        let h = tar.next_header().unwrap().unwrap();
        assert_eq!((h.name.as_str(), h.size, h.typeflag), ("manifest", 6, b'0'));
        let mut s = String::new();
        tar.member().read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello\n");
        // Not reading a member skips it.
        let h = tar.next_header().unwrap().unwrap();
        assert_eq!(h.size, 1000);
        let h = tar.next_header().unwrap().unwrap();
        assert_eq!(h.name, long);
        assert!(tar.next_header().unwrap().is_none());
    }

    #[test]
    fn truncation_and_bad_checksums_are_errors() {
        let data = write::archive(&[("files/a", &[7u8; 1000])]);
        let cut = &data[..700];
        let mut tar = TarReader::new(cut);
        tar.next_header().unwrap().unwrap();
        let mut sink = Vec::new();
        let err = tar.member().read_to_end(&mut sink).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        let mut tar = TarReader::new(&data[..512 + 1024]);
        tar.next_header().unwrap().unwrap();
        assert!(matches!(tar.next_header(), Err(TarError::Truncated { .. })));
        let mut bad = data.clone();
        bad[0] = b'g';
        assert!(matches!(
            TarReader::new(&bad[..]).next_header(),
            Err(TarError::BadHeader { .. })
        ));
    }
}
