//! NAR ("Nix ARchive") serialisation: a streaming writer and a strict streaming reader.
//! Pure: the writer writes to any `io::Write`, the reader reads any `io::Read` and reports
//! what it finds to a [`NarSink`]; neither touches the filesystem.
//!
//! Grammar (every token is `u64 LE length ‖ bytes ‖ zero padding to 8`):
//! `"nix-archive-1" node`, where node = `"(" "type" T … ")"` and
//! - regular = `"type" "regular" ["executable" ""] "contents" <data>`,
//! - symlink = `"type" "symlink" "target" <target>`,
//! - directory = `"type" "directory" ("entry" "(" "name" <n> "node" <node> ")")*`.
//!
//! Directory entries are strictly ascending by raw bytes; names are non-empty and contain
//! neither `/` nor NUL and are not `.` or `..`. Only the owner-x bit makes a file executable
//! (Nix checks `S_IXUSR`; that is the caller's business when it builds a NAR from a tree).

use std::io::{self, Read, Write};

/// The NAR magic string.
pub const MAGIC: &[u8] = b"nix-archive-1";
/// Longest entry name accepted (Linux's `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;
/// Longest symlink target accepted (Linux's `PATH_MAX` minus the NUL).
pub const MAX_TARGET_LEN: usize = 4095;
/// Deepest directory nesting the reader accepts.
pub const MAX_DEPTH: usize = 2048;

/// Why a NAR could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum NarError {
    /// The underlying reader or writer failed.
    #[error("I/O error in NAR stream")]
    Io(#[from] io::Error),
    /// The stream ended early.
    #[error("NAR is truncated (ended inside {0})")]
    Truncated(&'static str),
    /// A token other than the grammar's.
    #[error("malformed NAR at byte {offset}: expected {expected}, found {found:?}")]
    Unexpected {
        offset: u64,
        expected: &'static str,
        found: String,
    },
    /// Padding bytes were not zero.
    #[error("malformed NAR at byte {offset}: non-zero padding")]
    Padding { offset: u64 },
    /// An entry name breaks the rules.
    #[error("invalid NAR entry name {name:?}: {reason}")]
    BadName { name: String, reason: &'static str },
    /// Entries out of order or repeated.
    #[error("NAR directory entries not strictly sorted: {previous:?} then {name:?}")]
    Unsorted { previous: String, name: String },
    /// A token longer than the reader accepts.
    #[error("NAR {what} at byte {offset} is {len} bytes, more than the limit of {limit}")]
    TooLong {
        what: &'static str,
        offset: u64,
        len: u64,
        limit: u64,
    },
    /// Bytes after the end of the NAR (Nix 2.8's reader ignores them; this one does not:
    /// they mean the stream is not the NAR it seems).
    #[error("malformed NAR: more data after its end at byte {offset}")]
    TrailingData { offset: u64 },
    /// Directories nested deeper than [`MAX_DEPTH`].
    #[error("NAR nests directories deeper than {MAX_DEPTH}")]
    TooDeep,
    /// The writer was driven out of grammar order (a bug in the caller).
    #[error("NAR writer misuse: {0}")]
    Misuse(&'static str),
}

/// Checks a directory entry name.
pub fn validate_name(name: &[u8]) -> Result<(), NarError> {
    let bad = |reason| {
        Err(NarError::BadName {
            name: String::from_utf8_lossy(name).into_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("empty");
    }
    if name == b"." || name == b".." {
        return bad("`.` and `..` are not allowed");
    }
    if name.contains(&b'/') {
        return bad("contains `/`");
    }
    if name.contains(&0) {
        return bad("contains NUL");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("longer than 255 bytes");
    }
    Ok(())
}

fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

/// Writes one token: length, bytes, padding.
fn write_token(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    out.write_all(&(bytes.len() as u64).to_le_bytes())?;
    out.write_all(bytes)?;
    out.write_all(&[0u8; 8][..padding(bytes.len() as u64)])
}

/// State of one open directory in the writer.
struct DirFrame {
    previous: Option<Vec<u8>>,
    in_entry: bool,
}

/// A streaming NAR writer. Drive it in grammar order:
/// [`regular`](Self::regular) + [`contents`](Self::contents) (until `size` bytes),
/// [`symlink`](Self::symlink), or [`directory`](Self::directory) + ([`entry`](Self::entry) +
/// node)* + [`end_directory`](Self::end_directory). Misuse is reported, never silently written.
pub struct NarWriter<W: Write> {
    out: W,
    dirs: Vec<DirFrame>,
    /// Bytes of file contents still owed, and the total for padding.
    pending: Option<(u64, u64)>,
    /// Whether the root node has been completed.
    done: bool,
    expecting_node: bool,
}

impl<W: Write> NarWriter<W> {
    /// Starts a NAR: writes the magic.
    pub fn new(mut out: W) -> Result<Self, NarError> {
        write_token(&mut out, MAGIC)?;
        Ok(NarWriter {
            out,
            dirs: Vec::new(),
            pending: None,
            done: false,
            expecting_node: true,
        })
    }

    fn begin_node(&mut self, kind: &[u8]) -> Result<(), NarError> {
        if !self.expecting_node || self.pending.is_some() {
            return Err(NarError::Misuse("a node is not expected here"));
        }
        self.expecting_node = false;
        write_token(&mut self.out, b"(")?;
        write_token(&mut self.out, b"type")?;
        write_token(&mut self.out, kind)?;
        Ok(())
    }

    fn end_node(&mut self) -> Result<(), NarError> {
        write_token(&mut self.out, b")")?;
        match self.dirs.last_mut() {
            Some(frame) if frame.in_entry => {
                frame.in_entry = false;
                write_token(&mut self.out, b")")?;
            }
            Some(_) => return Err(NarError::Misuse("node closed outside an entry")),
            None => self.done = true,
        }
        Ok(())
    }

    /// Starts a regular file of `size` bytes; follow with [`contents`](Self::contents).
    pub fn regular(&mut self, executable: bool, size: u64) -> Result<(), NarError> {
        self.begin_node(b"regular")?;
        if executable {
            write_token(&mut self.out, b"executable")?;
            write_token(&mut self.out, b"")?;
        }
        write_token(&mut self.out, b"contents")?;
        self.out.write_all(&size.to_le_bytes())?;
        self.pending = Some((size, size));
        if size == 0 {
            self.finish_contents()?;
        }
        Ok(())
    }

    /// Writes file contents; the total must equal the announced size.
    pub fn contents(&mut self, data: &[u8]) -> Result<(), NarError> {
        if data.is_empty() {
            return Ok(());
        }
        let Some((remaining, _)) = self.pending.as_mut() else {
            return Err(NarError::Misuse("contents outside a regular file"));
        };
        if data.len() as u64 > *remaining {
            return Err(NarError::Misuse("more contents than the announced size"));
        }
        *remaining -= data.len() as u64;
        self.out.write_all(data)?;
        if *remaining == 0 {
            self.finish_contents()?;
        }
        Ok(())
    }

    fn finish_contents(&mut self) -> Result<(), NarError> {
        if let Some((_, total)) = self.pending.take() {
            self.out.write_all(&[0u8; 8][..padding(total)])?;
        }
        self.end_node()
    }

    /// Writes a symlink node.
    pub fn symlink(&mut self, target: &[u8]) -> Result<(), NarError> {
        self.begin_node(b"symlink")?;
        write_token(&mut self.out, b"target")?;
        write_token(&mut self.out, target)?;
        self.end_node()
    }

    /// Opens a directory node.
    pub fn directory(&mut self) -> Result<(), NarError> {
        self.begin_node(b"directory")?;
        self.dirs.push(DirFrame {
            previous: None,
            in_entry: false,
        });
        Ok(())
    }

    /// Opens an entry of the current directory; a node must follow. Names must be given
    /// in strictly ascending byte order.
    pub fn entry(&mut self, name: &[u8]) -> Result<(), NarError> {
        validate_name(name)?;
        let frame = self
            .dirs
            .last_mut()
            .ok_or(NarError::Misuse("entry outside a directory"))?;
        if frame.in_entry || self.expecting_node {
            return Err(NarError::Misuse("entry while another entry is open"));
        }
        if let Some(prev) = &frame.previous {
            if prev.as_slice() >= name {
                return Err(NarError::Unsorted {
                    previous: String::from_utf8_lossy(prev).into_owned(),
                    name: String::from_utf8_lossy(name).into_owned(),
                });
            }
        }
        frame.previous = Some(name.to_vec());
        frame.in_entry = true;
        write_token(&mut self.out, b"entry")?;
        write_token(&mut self.out, b"(")?;
        write_token(&mut self.out, b"name")?;
        write_token(&mut self.out, name)?;
        write_token(&mut self.out, b"node")?;
        self.expecting_node = true;
        Ok(())
    }

    /// Closes the current directory.
    pub fn end_directory(&mut self) -> Result<(), NarError> {
        match self.dirs.last() {
            Some(frame) if !frame.in_entry && !self.expecting_node => {}
            _ => {
                return Err(NarError::Misuse(
                    "end_directory with an open entry or no directory",
                ))
            }
        }
        self.dirs.pop();
        self.end_node()
    }

    /// Finishes the NAR and returns the writer; fails if the root node is incomplete.
    pub fn finish(mut self) -> Result<W, NarError> {
        if !self.done {
            return Err(NarError::Misuse("finish before the root node was complete"));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Receives the contents of a NAR from [`read_nar`], in order. `path` is the entry's
/// location relative to the root as a list of names (empty for the root itself).
pub trait NarSink {
    /// A regular file; `contents` yields exactly `size` bytes (reading less is fine: the
    /// reader skips the rest).
    fn regular(
        &mut self,
        path: &[Vec<u8>],
        executable: bool,
        size: u64,
        contents: &mut dyn Read,
    ) -> io::Result<()>;
    /// A symlink.
    fn symlink(&mut self, path: &[Vec<u8>], target: &[u8]) -> io::Result<()>;
    /// A directory, reported before its entries.
    fn directory(&mut self, path: &[Vec<u8>]) -> io::Result<()>;
    /// The end of a directory, after its entries.
    fn end_directory(&mut self, _path: &[Vec<u8>]) -> io::Result<()> {
        Ok(())
    }
}

/// A sink that discards everything (to validate a NAR).
pub struct NullSink;

impl NarSink for NullSink {
    fn regular(&mut self, _: &[Vec<u8>], _: bool, _: u64, _: &mut dyn Read) -> io::Result<()> {
        Ok(())
    }
    fn symlink(&mut self, _: &[Vec<u8>], _: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn directory(&mut self, _: &[Vec<u8>]) -> io::Result<()> {
        Ok(())
    }
}

struct Reader<R: Read> {
    input: R,
    offset: u64,
}

impl<R: Read> Reader<R> {
    fn read_exact(&mut self, buf: &mut [u8], context: &'static str) -> Result<(), NarError> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => NarError::Truncated(context),
            _ => NarError::Io(e),
        })?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn read_u64(&mut self, context: &'static str) -> Result<u64, NarError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b, context)?;
        Ok(u64::from_le_bytes(b))
    }

    fn read_padding(&mut self, len: u64, context: &'static str) -> Result<(), NarError> {
        let pad = padding(len);
        let mut b = [0u8; 8];
        let at = self.offset;
        self.read_exact(&mut b[..pad], context)?;
        if b[..pad].iter().any(|&x| x != 0) {
            return Err(NarError::Padding { offset: at });
        }
        Ok(())
    }

    fn read_token(&mut self, what: &'static str, limit: usize) -> Result<Vec<u8>, NarError> {
        let at = self.offset;
        let len = self.read_u64(what)?;
        if len > limit as u64 {
            return Err(NarError::TooLong {
                what,
                offset: at,
                len,
                limit: limit as u64,
            });
        }
        let mut buf = vec![0u8; len as usize];
        self.read_exact(&mut buf, what)?;
        self.read_padding(len, what)?;
        Ok(buf)
    }

    fn expect(&mut self, want: &'static str) -> Result<(), NarError> {
        let at = self.offset;
        let got = self.read_token(want, 64)?;
        if got != want.as_bytes() {
            return Err(NarError::Unexpected {
                offset: at,
                expected: want,
                found: String::from_utf8_lossy(&got).into_owned(),
            });
        }
        Ok(())
    }

    fn node(&mut self, sink: &mut dyn NarSink, path: &mut Vec<Vec<u8>>) -> Result<(), NarError> {
        if path.len() > MAX_DEPTH {
            return Err(NarError::TooDeep);
        }
        self.expect("(")?;
        self.expect("type")?;
        let at = self.offset;
        let kind = self.read_token("node type", 64)?;
        match kind.as_slice() {
            b"regular" => {
                let at = self.offset;
                let mut tag = self.read_token("`executable` or `contents`", 64)?;
                let executable = tag == b"executable";
                if executable {
                    let at = self.offset;
                    if !self.read_token("executable marker", 64)?.is_empty() {
                        return Err(NarError::Unexpected {
                            offset: at,
                            expected: "empty executable marker",
                            found: "non-empty".into(),
                        });
                    }
                    tag = self.read_token("`contents`", 64)?;
                }
                if tag != b"contents" {
                    return Err(NarError::Unexpected {
                        offset: at,
                        expected: "`executable` or `contents`",
                        found: String::from_utf8_lossy(&tag).into_owned(),
                    });
                }
                let size = self.read_u64("file size")?;
                let mut limited = (&mut self.input).take(size);
                let result = sink.regular(path, executable, size, &mut limited);
                // Skip what the sink did not read, then check we got it all.
                let skipped = io::copy(&mut limited, &mut io::sink());
                let read = size - limited.limit();
                self.offset += read;
                result?;
                skipped?;
                if read != size {
                    return Err(NarError::Truncated("file contents"));
                }
                self.read_padding(size, "file contents padding")?;
                self.expect(")")?;
            }
            b"symlink" => {
                self.expect("target")?;
                let target = self.read_token("symlink target", MAX_TARGET_LEN)?;
                if target.is_empty() || target.contains(&0) {
                    return Err(NarError::Unexpected {
                        offset: at,
                        expected: "a non-empty symlink target without NUL",
                        found: String::from_utf8_lossy(&target).into_owned(),
                    });
                }
                sink.symlink(path, &target)?;
                self.expect(")")?;
            }
            b"directory" => {
                sink.directory(path)?;
                let mut previous: Option<Vec<u8>> = None;
                loop {
                    let at = self.offset;
                    let tag = self.read_token("`entry` or `)`", 64)?;
                    match tag.as_slice() {
                        b")" => break,
                        b"entry" => {}
                        other => {
                            return Err(NarError::Unexpected {
                                offset: at,
                                expected: "`entry` or `)`",
                                found: String::from_utf8_lossy(other).into_owned(),
                            })
                        }
                    }
                    self.expect("(")?;
                    self.expect("name")?;
                    let name = self.read_token("entry name", MAX_NAME_LEN)?;
                    validate_name(&name)?;
                    if let Some(prev) = &previous {
                        if prev >= &name {
                            return Err(NarError::Unsorted {
                                previous: String::from_utf8_lossy(prev).into_owned(),
                                name: String::from_utf8_lossy(&name).into_owned(),
                            });
                        }
                    }
                    self.expect("node")?;
                    path.push(name);
                    self.node(sink, path)?;
                    previous = path.pop();
                    self.expect(")")?;
                }
                sink.end_directory(path)?;
            }
            other => {
                return Err(NarError::Unexpected {
                    offset: at,
                    expected: "`regular`, `symlink` or `directory`",
                    found: String::from_utf8_lossy(other).into_owned(),
                })
            }
        }
        Ok(())
    }
}

/// Reads one NAR from `input`, reporting its contents to `sink`; `input` must end with
/// the root node's closing token. Returns the number of bytes read.
pub fn read_nar(input: impl Read, sink: &mut dyn NarSink) -> Result<u64, NarError> {
    let mut reader = Reader { input, offset: 0 };
    reader.archive(sink)?;
    let mut byte = [0u8; 1];
    loop {
        match reader.input.read(&mut byte) {
            Ok(0) => return Ok(reader.offset),
            Ok(_) => {
                return Err(NarError::TrailingData {
                    offset: reader.offset,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(NarError::Io(e)),
        }
    }
}

/// Reads one NAR from the start of `input` and stops at its end, leaving what follows
/// unread: for a NAR inside a stream with no length in front of it (the serve protocol's
/// `DumpStorePath` and export streams). Returns the number of bytes read.
pub fn read_nar_prefix(input: &mut dyn Read, sink: &mut dyn NarSink) -> Result<u64, NarError> {
    let mut reader = Reader { input, offset: 0 };
    reader.archive(sink)?;
    Ok(reader.offset)
}

impl<R: Read> Reader<R> {
    /// The magic and the root node.
    fn archive(&mut self, sink: &mut dyn NarSink) -> Result<(), NarError> {
        let at = self.offset;
        let magic = self.read_token("magic", 64)?;
        if magic != MAGIC {
            return Err(NarError::Unexpected {
                offset: at,
                expected: "`nix-archive-1`",
                found: String::from_utf8_lossy(&magic).into_owned(),
            });
        }
        self.node(sink, &mut Vec::new())
    }
}

/// An in-memory tree, for building NARs in tests and small tools.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A regular file.
    Regular { executable: bool, contents: Vec<u8> },
    /// A symlink.
    Symlink { target: Vec<u8> },
    /// A directory; entries are sorted when written.
    Directory(Vec<(Vec<u8>, Node)>),
}

impl Node {
    /// Serialises the tree as a NAR.
    pub fn write_nar<W: Write>(&self, out: W) -> Result<W, NarError> {
        let mut w = NarWriter::new(out)?;
        self.write_node(&mut w)?;
        w.finish()
    }

    fn write_node<W: Write>(&self, w: &mut NarWriter<W>) -> Result<(), NarError> {
        match self {
            Node::Regular {
                executable,
                contents,
            } => {
                w.regular(*executable, contents.len() as u64)?;
                w.contents(contents)
            }
            Node::Symlink { target } => w.symlink(target),
            Node::Directory(entries) => {
                w.directory()?;
                let mut sorted: Vec<_> = entries.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                for (name, node) in sorted {
                    w.entry(name)?;
                    node.write_node(w)?;
                }
                w.end_directory()
            }
        }
    }
}

/// A [`NarSink`] that rebuilds a [`Node`] tree in memory.
#[derive(Default)]
pub struct TreeSink {
    root: Option<Node>,
}

impl TreeSink {
    fn place(&mut self, path: &[Vec<u8>], node: Node) -> io::Result<()> {
        let Some((last, parents)) = path.split_last() else {
            self.root = Some(node);
            return Ok(());
        };
        let mut dir = self.root.as_mut();
        for name in parents {
            dir = match dir {
                Some(Node::Directory(entries)) => {
                    entries.iter_mut().find(|(n, _)| n == name).map(|(_, n)| n)
                }
                _ => None,
            };
        }
        match dir {
            Some(Node::Directory(entries)) => {
                entries.push((last.clone(), node));
                Ok(())
            }
            _ => Err(io::Error::other("entry outside a directory")),
        }
    }

    /// The tree read, if any.
    pub fn into_root(self) -> Option<Node> {
        self.root
    }
}

impl NarSink for TreeSink {
    fn regular(
        &mut self,
        path: &[Vec<u8>],
        executable: bool,
        _size: u64,
        contents: &mut dyn Read,
    ) -> io::Result<()> {
        let mut buf = Vec::new();
        contents.read_to_end(&mut buf)?;
        self.place(
            path,
            Node::Regular {
                executable,
                contents: buf,
            },
        )
    }
    fn symlink(&mut self, path: &[Vec<u8>], target: &[u8]) -> io::Result<()> {
        self.place(
            path,
            Node::Symlink {
                target: target.to_vec(),
            },
        )
    }
    fn directory(&mut self, path: &[Vec<u8>]) -> io::Result<()> {
        self.place(path, Node::Directory(Vec::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compat::Hash;

    fn file(contents: &[u8]) -> Node {
        Node::Regular {
            executable: false,
            contents: contents.to_vec(),
        }
    }
    fn dir(entries: Vec<(&[u8], Node)>) -> Node {
        Node::Directory(
            entries
                .into_iter()
                .map(|(n, node)| (n.to_vec(), node))
                .collect(),
        )
    }
    fn nar(node: &Node) -> Vec<u8> {
        node.write_nar(Vec::new()).unwrap()
    }
    fn nix32(node: &Node) -> String {
        Hash::sha256(&nar(node)).to_nix32()
    }
    /// The tree `t1` of nix-formats.md §3.
    fn t1() -> Node {
        dir(vec![
            (b"a.txt", file(b"hello\n")),
            (
                b"run.sh",
                Node::Regular {
                    executable: true,
                    contents: b"#!/bin/sh\necho hi\n".to_vec(),
                },
            ),
            (
                b"link",
                Node::Symlink {
                    target: b"a.txt".to_vec(),
                },
            ),
            (
                b"sub",
                dir(vec![(b"empty", file(b"")), (b"b.txt", file(b"nested\n"))]),
            ),
            (b"emptydir", dir(vec![])),
        ])
    }

    #[test]
    fn single_file_bytes_match_nix_dump() {
        let want: Vec<u8> = [
            &b"\x0d\0\0\0\0\0\0\0nix-archive-1\0\0\0"[..],
            b"\x01\0\0\0\0\0\0\0(\0\0\0\0\0\0\0",
            b"\x04\0\0\0\0\0\0\0type\0\0\0\0",
            b"\x07\0\0\0\0\0\0\0regular\0",
            b"\x08\0\0\0\0\0\0\0contents",
            b"\x06\0\0\0\0\0\0\0hello\n\0\0",
            b"\x01\0\0\0\0\0\0\0)\0\0\0\0\0\0\0",
        ]
        .concat();
        assert_eq!(nar(&file(b"hello\n")), want);
        assert_eq!(want.len(), 120);
    }

    #[test]
    fn golden_hashes_from_nix() {
        let t1 = nar(&t1());
        assert_eq!(t1.len(), 1432);
        assert_eq!(
            Hash::sha256(&t1).to_hex(),
            "38365ac185f583658eaba7af859926cbafc6a06a7bc3f41e3ddd60be1a7ebb90"
        );
        assert_eq!(
            nix32(&file(b"hello\n")),
            "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"
        );
        let run = Node::Regular {
            executable: true,
            contents: b"#!/bin/sh\necho hi\n".to_vec(),
        };
        assert_eq!(
            nix32(&run),
            "183p8jhjfcpk6kac6hxwp4gzp9brkvkibylz27jfbvgd5kqcq2jy"
        );
        assert_eq!(
            nix32(&Node::Symlink {
                target: b"a.txt".to_vec()
            }),
            "10afhdla3fy4d56mfb7b45i291h74jngwakp16wd3r36m37h0g4d"
        );
        assert_eq!(
            nix32(&dir(vec![])),
            "0sjjj9z1dhilhpc8pq4154czrb79z9cm044jvn75kxcjv6v5l2m5"
        );
        assert_eq!(
            nix32(&dir(vec![(b"f", file(b"hello"))])),
            "1mxwk8ndcfriz93lpnpslb928xzxv1w6ki67ck4dkk47khfx2ym1"
        );
        let x = |executable| Node::Regular {
            executable,
            contents: b"x".to_vec(),
        };
        assert_eq!(
            nix32(&x(true)),
            "1qf3k50cfba7m69yyp7n3dj4g3ckiyyaq16qw6nyh4vrpn97nyzh"
        );
        assert_eq!(
            nix32(&x(false)),
            "0rsv7kag23nvdpy4500mv2m0b4sm4c8fkgqrfsrmv1kgk77bi81c"
        );
        assert_eq!(
            nix32(&dir(vec![(b"\xff\xfe", file(b""))])),
            "1sls5irmqv431lwz4gx9c5qgxvxzi4kza5bs44ynpn5cbhljl1g0"
        );
        let names: [&[u8]; 11] = [
            b".hidden",
            b"0",
            b"A",
            b"B",
            b"_x",
            b"a",
            b"a.b",
            b"ab",
            b"b",
            b"z~",
            "é".as_bytes(),
        ];
        let ord = Node::Directory(names.iter().map(|n| (n.to_vec(), file(n))).rev().collect());
        assert_eq!(
            nix32(&ord),
            "1dizcdjllhzif9dd2dn89d8kc551dqb24jmhg6x6pcvlf1aqm5zg"
        );
    }

    #[test]
    fn reader_round_trips() {
        for tree in [
            t1(),
            file(b""),
            Node::Symlink {
                target: b"/x".to_vec(),
            },
            dir(vec![(b"\xff", dir(vec![]))]),
        ] {
            let bytes = nar(&tree);
            let mut sink = TreeSink::default();
            assert_eq!(
                read_nar(bytes.as_slice(), &mut sink).unwrap(),
                bytes.len() as u64
            );
            let back = sink.into_root().unwrap();
            assert_eq!(nar(&back), bytes);
        }
    }

    /// Builds NAR bytes token by token, to craft invalid archives.
    fn tokens(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            write_token(&mut out, p).unwrap();
        }
        out
    }

    fn dir_with(names: &[&[u8]]) -> Vec<u8> {
        let mut parts: Vec<&[u8]> = vec![b"nix-archive-1", b"(", b"type", b"directory"];
        for n in names {
            parts.extend_from_slice(&[
                b"entry", b"(", b"name", n, b"node", b"(", b"type", b"symlink", b"target", b"x",
                b")", b")",
            ]);
        }
        parts.push(b")");
        tokens(&parts)
    }

    fn read_err(bytes: &[u8]) -> NarError {
        read_nar(bytes, &mut NullSink).expect_err("must be rejected")
    }

    #[test]
    fn reader_rejects_bad_archives() {
        assert!(read_nar(dir_with(&[b"a", b"b"]).as_slice(), &mut NullSink).is_ok());
        assert!(matches!(
            read_err(&dir_with(&[b"b", b"a"])),
            NarError::Unsorted { .. }
        ));
        assert!(matches!(
            read_err(&dir_with(&[b"a", b"a"])),
            NarError::Unsorted { .. }
        ));
        for bad in [&b"a/b"[..], b".", b"..", b"a\0b", b""] {
            assert!(
                matches!(read_err(&dir_with(&[bad])), NarError::BadName { .. }),
                "{bad:?}"
            );
        }
        // Truncation anywhere.
        let good = nar(&t1());
        for cut in [0, 7, 8, 100, good.len() / 2, good.len() - 1] {
            assert!(
                matches!(read_err(&good[..cut]), NarError::Truncated(_)),
                "cut at {cut}"
            );
        }
        // Anything after the end, even one zero byte.
        for tail in [&b"\0"[..], b"garbage", &good] {
            let mut longer = good.clone();
            longer.extend_from_slice(tail);
            assert!(
                matches!(read_err(&longer), NarError::TrailingData { offset } if offset == good.len() as u64),
                "{tail:?}"
            );
        }
        // Non-zero padding after "hello\n".
        let mut padded = nar(&file(b"hello\n"));
        padded[0x66] = 1;
        assert!(matches!(read_err(&padded), NarError::Padding { .. }));
        // Wrong magic and wrong node type.
        assert!(matches!(
            read_err(&tokens(&[b"nix-archive-2"])),
            NarError::Unexpected { .. }
        ));
        assert!(matches!(
            read_err(&tokens(&[b"nix-archive-1", b"(", b"type", b"fifo", b")"])),
            NarError::Unexpected { .. }
        ));
        // A huge length is refused before any allocation.
        let mut huge = tokens(&[b"nix-archive-1", b"(", b"type", b"symlink", b"target"]);
        huge.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(read_err(&huge), NarError::TooLong { .. }));
    }

    #[test]
    fn writer_refuses_misuse() {
        let mut w = NarWriter::new(Vec::new()).unwrap();
        w.directory().unwrap();
        w.entry(b"b").unwrap();
        w.symlink(b"x").unwrap();
        assert!(matches!(w.entry(b"a"), Err(NarError::Unsorted { .. })));
        assert!(matches!(w.entry(b"b"), Err(NarError::Unsorted { .. })));
        assert!(matches!(w.entry(b"c/d"), Err(NarError::BadName { .. })));
        w.entry(b"c").unwrap();
        w.regular(false, 3).unwrap();
        assert!(matches!(w.contents(b"abcd"), Err(NarError::Misuse(_))));
        w.contents(b"ab").unwrap();
        w.contents(b"c").unwrap();
        w.end_directory().unwrap();
        assert!(w.finish().is_ok());
        let w = NarWriter::new(Vec::new()).unwrap();
        assert!(matches!(w.finish(), Err(NarError::Misuse(_))));
    }
}
