//! The compressions of NARs in a binary cache, named as a narinfo's `Compression:` field
//! names them: streaming encoders and decoders over any `Write`/`Read`. No I/O of its own
//! (it only wraps the writer or reader it is given).
//!
//! Nix 2.8 writes `xz` by default, and `zstd`, `bzip2`, `gzip` or `none` on request; a
//! narinfo without a `Compression` line means `bzip2` (its legacy default). NAR file names
//! get the extension Nix gives them: `.xz`, `.zst`, `.bz2`, and none for `gzip` and `none`.

use std::io::{self, BufRead, BufReader, Read, Write};

/// A NAR compression, as in a narinfo's `Compression:` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Stored as is (`none`, or an empty field).
    None,
    /// LZMA2 in an `.xz` container: Nix's default for writing.
    Xz,
    /// Zstandard.
    Zstd,
    /// bzip2: what a narinfo without a `Compression` line means.
    Bzip2,
    /// gzip (Nix writes it without a file extension).
    Gzip,
}

/// A compression name ksbuild does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown compression `{name}`; ksbuild knows `xz`, `zstd`, `bzip2`, `gzip` and `none`")]
pub struct UnknownCompression {
    /// The name as given.
    pub name: String,
}

/// The xz preset Nix (through libarchive) uses: 6.
const XZ_PRESET: u32 = 6;
/// The zstd level Nix (through libarchive) uses: 3.
const ZSTD_LEVEL: i32 = 3;

impl Compression {
    /// Parses a narinfo `Compression:` value or a `--compression` argument. `""` is `none`
    /// (as in Nix); use [`Compression::from_narinfo`] when the field may be absent.
    pub fn parse(name: &str) -> Result<Compression, UnknownCompression> {
        match name {
            "" | "none" => Ok(Compression::None),
            "xz" => Ok(Compression::Xz),
            "zstd" => Ok(Compression::Zstd),
            "bzip2" => Ok(Compression::Bzip2),
            "gzip" => Ok(Compression::Gzip),
            _ => Err(UnknownCompression { name: name.into() }),
        }
    }

    /// The compression of a narinfo whose `Compression:` field is `field`: an absent field
    /// means `bzip2`, Nix's legacy default.
    pub fn from_narinfo(field: Option<&str>) -> Result<Compression, UnknownCompression> {
        field.map_or(Ok(Compression::Bzip2), Compression::parse)
    }

    /// Recognises a compressed stream by its first bytes (magic numbers), as Nix's reader
    /// (libarchive's filter auto-detection) does whatever the label says. `None` when no
    /// magic matches, which for a NAR means it is not compressed.
    pub fn detect(prefix: &[u8]) -> Option<Compression> {
        if prefix.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Some(Compression::Xz)
        } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Some(Compression::Zstd)
        } else if prefix.starts_with(b"BZh") {
            Some(Compression::Bzip2)
        } else if prefix.starts_with(&[0x1f, 0x8b]) {
            Some(Compression::Gzip)
        } else {
            None
        }
    }

    /// The name Nix writes in a narinfo's `Compression:` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::Gzip => "gzip",
        }
    }

    /// The extension Nix appends to `nar/<filehash>.nar` (with its dot; empty for `none`
    /// and `gzip`, as in Nix 2.8).
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None | Compression::Gzip => "",
            Compression::Xz => ".xz",
            Compression::Zstd => ".zst",
            Compression::Bzip2 => ".bz2",
        }
    }

    /// A streaming encoder writing the compressed form of what it is given into `sink`.
    /// xz and zstd use `threads` worker threads (1 for single-threaded; more only pays for
    /// inputs larger than a block, 24 MiB for xz). Call [`Encoder::finish`] at the end:
    /// dropping an encoder loses the stream's tail.
    pub fn encoder<W: Write>(self, sink: W, threads: u32) -> io::Result<Encoder<W>> {
        let threads = threads.max(1);
        Ok(match self {
            Compression::None => Encoder::None(sink),
            Compression::Xz => {
                let stream = if threads > 1 {
                    xz2::stream::MtStreamBuilder::new()
                        .preset(XZ_PRESET)
                        .threads(threads)
                        .check(xz2::stream::Check::Crc64)
                        .encoder()
                } else {
                    xz2::stream::Stream::new_easy_encoder(XZ_PRESET, xz2::stream::Check::Crc64)
                }
                .map_err(io::Error::other)?;
                Encoder::Xz(xz2::write::XzEncoder::new_stream(sink, stream))
            }
            Compression::Zstd => {
                let mut encoder = zstd::Encoder::new(sink, ZSTD_LEVEL)?;
                if threads > 1 {
                    encoder.multithread(threads)?;
                }
                Encoder::Zstd(encoder)
            }
            Compression::Bzip2 => Encoder::Bzip2(bzip2::write::BzEncoder::new(
                sink,
                bzip2::Compression::best(),
            )),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                sink,
                flate2::Compression::default(),
            )),
        })
    }

    /// A streaming decoder reading the uncompressed form of `source`. Concatenated streams
    /// (several xz, bzip2 or gzip members) are read to the end, as Nix does.
    pub fn decoder<'a, R: Read + 'a>(self, source: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(source),
            Compression::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(source)),
            Compression::Zstd => Box::new(zstd::Decoder::new(source)?),
            Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(source)),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(source)),
        })
    }

    /// A decoder for `source` chosen by its magic number ([`Compression::detect`]) rather
    /// than by a label: what Nix does for every label except `none`. Returns the
    /// compression found (`None` for an uncompressed stream) and the decoder.
    pub fn detecting_decoder<'a, R: Read + 'a>(
        source: R,
    ) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
        let mut source = BufReader::with_capacity(64 * 1024, source);
        let found = Compression::detect(source.fill_buf()?).unwrap_or(Compression::None);
        Ok((found, found.decoder(source)?))
    }
}

impl std::fmt::Display for Compression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Compression {
    type Err = UnknownCompression;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Compression::parse(s)
    }
}

/// A streaming encoder made by [`Compression::encoder`].
pub enum Encoder<W: Write> {
    /// Passes bytes through.
    None(W),
    /// xz (single- or multi-threaded liblzma stream).
    Xz(xz2::write::XzEncoder<W>),
    /// zstd.
    Zstd(zstd::Encoder<'static, W>),
    /// bzip2.
    Bzip2(bzip2::write::BzEncoder<W>),
    /// gzip.
    Gzip(flate2::write::GzEncoder<W>),
}

impl<W: Write> Encoder<W> {
    /// Writes the end of the compressed stream and returns the sink (not flushed).
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Xz(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Bzip2(e) => e.finish(),
            Encoder::Gzip(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Xz(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Bzip2(e) => e.write(buf),
            Encoder::Gzip(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Xz(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::Bzip2(e) => e.flush(),
            Encoder::Gzip(e) => e.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Xz,
        Compression::Zstd,
        Compression::Bzip2,
        Compression::Gzip,
    ];

    fn sample() -> Vec<u8> {
        // Compressible but not trivial: 1 MiB of a varying counter pattern.
        (0u32..1024 * 1024)
            .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
            .collect()
    }

    #[test]
    fn names_and_extensions_are_nixs() {
        let table = [
            ("none", Compression::None, ""),
            ("xz", Compression::Xz, ".xz"),
            ("zstd", Compression::Zstd, ".zst"),
            ("bzip2", Compression::Bzip2, ".bz2"),
            ("gzip", Compression::Gzip, ""),
        ];
        for (name, compression, ext) in table {
            assert_eq!(Compression::parse(name).unwrap(), compression);
            assert_eq!(compression.as_str(), name);
            assert_eq!(compression.extension(), ext);
        }
        assert_eq!(Compression::parse("").unwrap(), Compression::None);
        assert_eq!(Compression::from_narinfo(None).unwrap(), Compression::Bzip2);
        assert!(Compression::parse("lz4")
            .unwrap_err()
            .to_string()
            .contains("`lz4`"));
    }

    #[test]
    fn every_compression_round_trips_single_and_multi_threaded() {
        let data = sample();
        for compression in ALL {
            for threads in [1, 2] {
                let mut encoder = compression.encoder(Vec::new(), threads).unwrap();
                for chunk in data.chunks(100_000) {
                    encoder.write_all(chunk).unwrap();
                }
                let packed = encoder.finish().unwrap();
                if compression != Compression::None {
                    assert!(
                        packed.len() < data.len() / 2,
                        "{compression} did not compress"
                    );
                    assert_eq!(Compression::detect(&packed), Some(compression));
                }
                let mut unpacked = Vec::new();
                compression
                    .decoder(&packed[..])
                    .unwrap()
                    .read_to_end(&mut unpacked)
                    .unwrap();
                assert!(unpacked == data, "{compression} x{threads} round trip");
                let (found, mut reader) = Compression::detecting_decoder(&packed[..]).unwrap();
                assert_eq!(found, compression);
                let mut detected = Vec::new();
                reader.read_to_end(&mut detected).unwrap();
                assert!(detected == data);
            }
        }
    }

    #[test]
    fn readable_by_the_system_tools() {
        // The streams are the standard formats: the command-line tools (what libarchive
        // links) read them back. Skips a tool that is not installed.
        let data = sample();
        for (compression, tool) in [
            (Compression::Xz, "xz"),
            (Compression::Zstd, "zstd"),
            (Compression::Bzip2, "bzip2"),
        ] {
            let mut encoder = compression.encoder(Vec::new(), 2).unwrap();
            encoder.write_all(&data).unwrap();
            let packed = encoder.finish().unwrap();
            let child = std::process::Command::new(tool)
                .args(["-dc"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn();
            let Ok(mut child) = child else {
                eprintln!("skipping {tool}: not installed");
                continue;
            };
            let mut stdin = child.stdin.take().unwrap();
            let writer = std::thread::spawn(move || stdin.write_all(&packed));
            let out = child.wait_with_output().unwrap();
            writer.join().unwrap().unwrap();
            assert!(out.status.success(), "{tool} -dc failed");
            assert!(out.stdout == data, "{tool} read different bytes");
        }
    }
}
