//! Decompression of downloaded NARs by a narinfo's `Compression`, as Nix 2.8 reads them:
//! `none` (or empty) passes bytes through; every other label is only a hint, and the
//! format is recognised from the data's magic bytes (Nix hands such streams to
//! libarchive's auto-detection, so zstd labelled `xz` substitutes). Uncompressed data with
//! a compressed label is refused, as Nix refuses it. No I/O of its own: readers in,
//! readers out.

use std::io::{self, BufRead, BufReader, Read};

use crate::store::Compression;

/// A NAR that cannot be decompressed.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    /// The data has no known magic number (Nix: "input compression not recognized").
    #[error("input compression not recognized (narinfo says `{label}`)")]
    NotRecognized { label: String },
    /// Reading the first bytes, or starting the decoder, failed.
    #[error("cannot read the NAR")]
    Io(#[source] io::Error),
}

/// A reader of the NAR inside `input`, compressed as `label` says (see the module docs);
/// the decoders are [`Compression`]'s.
pub fn decoder<'a>(
    label: &str,
    input: impl Read + 'a,
) -> Result<Box<dyn Read + 'a>, DecompressError> {
    if label.is_empty() || label == "none" {
        return Ok(Box::new(input));
    }
    let mut input = BufReader::with_capacity(256 * 1024, input);
    let head = input.fill_buf().map_err(DecompressError::Io)?;
    match Compression::detect(head) {
        // zstd reads straight from this buffer (its `Decoder::new` would add another).
        Some(Compression::Zstd) => Ok(Box::new(
            zstd::Decoder::with_buffer(input).map_err(DecompressError::Io)?,
        )),
        Some(found) => found.decoder(input).map_err(DecompressError::Io),
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
        let mut zstd = Vec::new();
        let mut e = Compression::Zstd.encoder(&mut zstd, 1).unwrap();
        e.write_all(&nar).unwrap();
        e.finish().unwrap();
        assert_eq!(read("xz", zstd).unwrap(), nar);
        let e = read("xz", nar.clone()).unwrap_err();
        assert!(e.contains("not recognized"), "{e}");
    }
}
