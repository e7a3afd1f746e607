//! NAR listings: the `<hashpart>.ls` files a binary cache holds beside a NAR when Nix writes
//! with `write-nar-listing=1` — a JSON index of the tree with each regular file's size and
//! byte offset inside the (uncompressed) NAR. Pure: reads a NAR from any `Read`.
//!
//! The text is what Nix 2.8's `listNar` writes: `{"version":1,"root":NODE}` with no
//! spaces, where NODE is `{"type":"regular","size":N[,"executable":true],"narOffset":O}`,
//! `{"type":"symlink","target":"…"}` or `{"type":"directory","entries":{"name":NODE,…}}`
//! (entries in NAR order, i.e. sorted by bytes). Strings are escaped as Nix's `toJSON`
//! escapes them: `\"`, `\\`, `\n`, `\r`, `\t`, other control bytes as `\u00XX`, and every
//! other byte as is.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

use super::nar::{read_nar, NarError, NarSink};

/// Counts the bytes read through it, shared with the sink so that it knows where a file's
/// contents start.
struct Counting<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

/// Builds the JSON text as the NAR is read.
struct ListingSink {
    out: Vec<u8>,
    offset: Rc<Cell<u64>>,
    /// Per open directory: whether an entry was written already (a comma is due).
    open: Vec<bool>,
}

impl ListingSink {
    /// Writes `"name":` for an entry (with the comma before it), nothing for the root.
    fn key(&mut self, path: &[Vec<u8>]) {
        let Some(name) = path.last() else { return };
        if let Some(comma) = self.open.last_mut() {
            if *comma {
                self.out.push(b',');
            }
            *comma = true;
        }
        json_string(&mut self.out, name);
        self.out.push(b':');
    }
}

impl NarSink for ListingSink {
    fn regular(
        &mut self,
        path: &[Vec<u8>],
        executable: bool,
        size: u64,
        _contents: &mut dyn Read,
    ) -> io::Result<()> {
        let at = self.offset.get();
        self.key(path);
        self.out
            .extend_from_slice(format!("{{\"type\":\"regular\",\"size\":{size}").as_bytes());
        if executable {
            self.out.extend_from_slice(b",\"executable\":true");
        }
        self.out
            .extend_from_slice(format!(",\"narOffset\":{at}}}").as_bytes());
        Ok(())
    }

    fn symlink(&mut self, path: &[Vec<u8>], target: &[u8]) -> io::Result<()> {
        self.key(path);
        self.out
            .extend_from_slice(b"{\"type\":\"symlink\",\"target\":");
        json_string(&mut self.out, target);
        self.out.push(b'}');
        Ok(())
    }

    fn directory(&mut self, path: &[Vec<u8>]) -> io::Result<()> {
        self.key(path);
        self.out
            .extend_from_slice(b"{\"type\":\"directory\",\"entries\":{");
        self.open.push(false);
        Ok(())
    }

    fn end_directory(&mut self, _path: &[Vec<u8>]) -> io::Result<()> {
        self.open.pop();
        self.out.extend_from_slice(b"}}");
        Ok(())
    }
}

/// Appends `s` as a JSON string, escaped as Nix 2.8's `toJSON` does.
fn json_string(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=31 => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ]),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// The listing (`.ls` text, no trailing newline) of the NAR read from `nar`. Reads it to
/// the end (file contents are skipped, never held); pass a buffered reader.
pub fn nar_listing(nar: impl Read) -> Result<Vec<u8>, NarError> {
    let offset = Rc::new(Cell::new(0));
    let mut sink = ListingSink {
        out: b"{\"version\":1,\"root\":".to_vec(),
        offset: offset.clone(),
        open: Vec::new(),
    };
    read_nar(
        Counting {
            inner: nar,
            count: offset,
        },
        &mut sink,
    )?;
    sink.out.push(b'}');
    Ok(sink.out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compat::nar::Node;

    fn file(contents: &[u8], executable: bool) -> Node {
        Node::Regular {
            executable,
            contents: contents.to_vec(),
        }
    }

    #[test]
    fn single_file_matches_nix() {
        // Observed with Nix 2.8 (`nix copy --to 'file://…?write-nar-listing=1'` of a
        // 17-byte file): the contents start 96 bytes into the NAR.
        let nar = file(b"seventeen bytes!\n", false)
            .write_nar(Vec::new())
            .unwrap();
        assert_eq!(
            String::from_utf8(nar_listing(&nar[..]).unwrap()).unwrap(),
            r#"{"version":1,"root":{"type":"regular","size":17,"narOffset":96}}"#
        );
    }

    #[test]
    fn offsets_point_at_the_contents_and_names_are_escaped() {
        let tree = Node::Directory(vec![
            (b"z-exe".to_vec(), file(b"#!/bin/sh\n", true)),
            (
                b"a \"q\"\n\x01".to_vec(),
                Node::Symlink {
                    target: b"t\\x".to_vec(),
                },
            ),
            (
                b"sub".to_vec(),
                Node::Directory(vec![
                    (b"one".to_vec(), file(b"1", false)),
                    (b"two".to_vec(), file(b"", false)),
                    (b"empty".to_vec(), Node::Directory(vec![])),
                ]),
            ),
        ]);
        let nar = tree.write_nar(Vec::new()).unwrap();
        let listing = String::from_utf8(nar_listing(&nar[..]).unwrap()).unwrap();
        assert!(
            listing.starts_with(
                r#"{"version":1,"root":{"type":"directory","entries":{"a \"q\"\n\u0001":{"type":"symlink","target":"t\\x"},"sub":{"type":"directory","entries":{"empty":{"type":"directory","entries":{}},"one":{"type":"regular","size":1,"narOffset":"#
            ),
            "{listing}"
        );
        let json: serde_json::Value = serde_json::from_str(&listing).unwrap();
        let exe = &json["root"]["entries"]["z-exe"];
        assert_eq!(exe["executable"], true);
        let at = exe["narOffset"].as_u64().unwrap() as usize;
        assert_eq!(&nar[at..at + 10], b"#!/bin/sh\n");
        let one = &json["root"]["entries"]["sub"]["entries"]["one"];
        let at = one["narOffset"].as_u64().unwrap() as usize;
        assert_eq!(nar[at], b'1');
        assert!(json["root"]["entries"]["sub"]["entries"]["two"]["narOffset"].is_u64());
    }

    #[test]
    fn a_damaged_nar_is_an_error() {
        let nar = file(b"x", false).write_nar(Vec::new()).unwrap();
        assert!(nar_listing(&nar[..nar.len() - 8]).is_err());
    }
}
