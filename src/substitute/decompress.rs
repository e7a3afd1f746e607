//! Decompression of downloaded NARs by a narinfo's `Compression`, as Nix 2.8 reads them:
//! `none` (or empty) passes bytes through; every other label is only a hint, and the
//! format is recognised from the data's magic bytes (Nix hands such streams to
//! libarchive's auto-detection, so zstd labelled `xz` substitutes). Uncompressed data with
//! a compressed label is refused, as Nix refuses it. No I/O of its own: readers in,
//! readers out.

use std::io::{self, BufRead, BufReader, Read};

/// A compression this build cannot read.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    /// The data has no known magic number (Nix: "input compression not recognized").
    #[error("input compression not recognized (narinfo says `{label}`)")]
    NotRecognized { label: String },
    /// A known format this build was made without.
    #[error("`{format}` NARs cannot be read by this build of ksbuild")]
    Unsupported { format: &'static str },
    /// Reading the first bytes failed.
    #[error("cannot read the NAR")]
    Io(#[source] io::Error),
}

/// The formats recognised by their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `FD 37 7A 58 5A 00`.
    Xz,
    /// `28 B5 2F FD`.
    Zstd,
    /// `BZh`.
    Bzip2,
    /// `1F 8B`.
    Gzip,
}

impl Format {
    /// The format whose magic number `head` starts with.
    pub fn sniff(head: &[u8]) -> Option<Format> {
        if head.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0]) {
            Some(Format::Xz)
        } else if head.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
            Some(Format::Zstd)
        } else if head.starts_with(b"BZh") {
            Some(Format::Bzip2)
        } else if head.starts_with(&[0x1F, 0x8B]) {
            Some(Format::Gzip)
        } else {
            None
        }
    }
}

/// A reader of the NAR inside `input`, compressed as `label` says (see the module docs).
pub fn decoder<'a>(
    label: &str,
    input: impl Read + Send + 'a,
) -> Result<Box<dyn Read + Send + 'a>, DecompressError> {
    if label.is_empty() || label == "none" {
        return Ok(Box::new(input));
    }
    let mut input = BufReader::with_capacity(256 * 1024, input);
    let head = input.fill_buf().map_err(DecompressError::Io)?;
    match Format::sniff(head) {
        Some(Format::Xz) => Ok(Box::new(xz2::read::XzDecoder::new_multi_decoder(input))),
        Some(Format::Gzip) => Ok(Box::new(flate2::bufread::MultiGzDecoder::new(input))),
        Some(Format::Zstd) => Err(DecompressError::Unsupported { format: "zstd" }),
        Some(Format::Bzip2) => Err(DecompressError::Unsupported { format: "bzip2" }),
        None => Err(DecompressError::NotRecognized {
            label: label.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn xz(data: &[u8]) -> Vec<u8> {
        let mut e = xz2::write::XzEncoder::new(Vec::new(), 6);
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn labels_are_hints_and_data_decides() {
        let nar = b"nix-archive-1 pretend".to_vec();
        let read = |label: &str, bytes: Vec<u8>| -> Result<Vec<u8>, String> {
            let mut out = Vec::new();
            decoder(label, io::Cursor::new(bytes))
                .map_err(|e| e.to_string())?
                .read_to_end(&mut out)
                .map_err(|e| e.to_string())?;
            Ok(out)
        };
        assert_eq!(read("none", nar.clone()).unwrap(), nar);
        assert_eq!(read("", nar.clone()).unwrap(), nar);
        assert_eq!(read("xz", xz(&nar)).unwrap(), nar);
        // Nix reads whatever the data is, whatever the label.
        assert_eq!(read("bzip2", xz(&nar)).unwrap(), nar);
        let e = read("xz", nar.clone()).unwrap_err();
        assert!(e.contains("not recognized"), "{e}");
    }
}
