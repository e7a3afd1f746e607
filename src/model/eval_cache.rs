//! The evaluation cache: a lowered graph kept to be used again while nothing it was
//! computed from has changed (Nix keeps one for flakes). A project of thousands of
//! derivations is parsed and lowered in half a second; read back, it takes a fraction.
//!
//! One entry per project, store directory and list of targets, in a file of the cache
//! directory named after their hash. An entry records what lowering read but the path
//! inputs: every file, folder and symlink under `derivations/` and `sandboxes/`, and the
//! ksbuild executable itself (device, inode, size and modification time: another build of
//! ksbuild may lower differently). It also holds each path input as written, where it led
//! and the store path of its contents, which the caller checks again (a path input may be
//! any file of the project).
//!
//! Files are recognised as the store's stat cache of source imports recognises them, as
//! git's index does: by a digest of every entry's type, mode, size, inode, and modification
//! and change times to the nanosecond (any write changes the change time, which no one can
//! set), a symlink with what it leads to. An entry written within a second of the newest
//! change is "racy" (a second write in the same clock tick could hide) and answers nothing.
//!
//! Never trusted: an entry is written only when the digest after lowering equals the one
//! before it (so nothing changed in between), and any entry that cannot be read or
//! parsed is a miss.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Fetch, HashFrom, LazyDrv, Lowered, Node, Unpack};
use crate::compat::derivation::FixedOutputHash;
use crate::compat::hash::{Hash, HashAlgo, Hasher};
use crate::compat::{FileIngestionMethod, StoreDir, StorePath};
use crate::store::import_cache;

/// Bumped when the entry's format changes.
const FORMAT: u32 = 4;

/// The first bytes of an entry.
const MAGIC: &[u8] = b"ksbuild evaluation cache\n";

/// Where an entry lives, and which ksbuild writes and reads it.
#[derive(Debug, Clone)]
pub struct Key {
    file: PathBuf,
    exe: String,
}

impl Key {
    /// The key of lowering `targets` of the project at `root` for `store_dir`, with the
    /// cache in `dir`.
    pub fn new(
        dir: &Path,
        root: &Path,
        store_dir: &StoreDir,
        targets: &[String],
    ) -> io::Result<Key> {
        let root = std::fs::canonicalize(root)?;
        let mut name = Hasher::new(HashAlgo::Sha256);
        for part in [root.display().to_string(), store_dir.to_string()]
            .iter()
            .chain(targets)
        {
            name.update(part.as_bytes());
            name.update(b"\0");
        }
        let name = name.finish().to_hex();
        let exe = std::fs::metadata("/proc/self/exe")?;
        Ok(Key {
            file: dir.join(&name[..32]),
            exe: format!(
                "{FORMAT}:{}:{}:{}:{}.{}",
                exe.dev(),
                exe.ino(),
                exe.len(),
                exe.mtime(),
                exe.mtime_nsec()
            ),
        })
    }
}

/// The project's definitions as they were when lowering started: the digest of their
/// status, and when it was taken.
pub struct Snapshot {
    digest: String,
    taken_ns: i128,
}

/// The digest of the status of every entry under `derivations/` and `sandboxes/` of
/// `root` (the store's stat digest of source imports), and the newest change in it.
fn definitions(root: &Path) -> io::Result<(String, i128)> {
    let mut h = Hasher::new(HashAlgo::Sha256);
    let mut newest = 0;
    for dir in ["derivations", "sandboxes"] {
        let top = root.join(dir);
        h.update(dir.as_bytes());
        if top.exists() {
            let (digest, changed) = import_cache::stat_digest(&top).map_err(io::Error::other)?;
            h.update(digest.digest_bytes());
            newest = newest.max(changed);
        }
        h.update(b"\0");
    }
    Ok((h.finish().to_hex(), newest))
}

impl Snapshot {
    /// The project's definitions now.
    pub fn take(root: &Path) -> io::Result<Snapshot> {
        let taken_ns = import_cache::now_ns();
        let (digest, _) = definitions(root)?;
        Ok(Snapshot { digest, taken_ns })
    }

    /// Whether nothing changed since the snapshot was taken.
    pub fn still_holds(&self, root: &Path) -> bool {
        definitions(root).is_ok_and(|(digest, _)| digest == self.digest)
    }
}

/// A repository file or folder that lowering imported: where it is, the name it is stored
/// under, and its store path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub full: PathBuf,
    pub name: String,
    pub path: StorePath,
}

/// A hit: the lowered graph and the sources to check again.
pub struct Hit {
    pub lowered: Lowered,
    pub sources: Vec<Source>,
}

/// The entry of `key`, if there is one written by this ksbuild from the same definitions
/// of the project at `root`.
pub fn load(key: &Key, root: &Path, store_dir: &StoreDir) -> Option<Hit> {
    // The definitions are checked on a thread of their own while the entry is read and
    // parsed: independent, and of a size for a project of 10,000 (about 12 ms and 25 ms).
    std::thread::scope(|s| {
        let checked = s.spawn(|| {
            let t0 = std::time::Instant::now();
            let now = definitions(root);
            crate::timing::report("evaluation cache: check the project's definitions", t0);
            now
        });
        let t0 = std::time::Instant::now();
        let bytes = std::fs::read(&key.file).ok()?;
        let entry = Entry::decode(&bytes).ok()?;
        crate::timing::report("evaluation cache: read the entry", t0);
        // (`decode` refused any other format.)
        if entry.exe != key.exe {
            return None;
        }
        let (then, written_ns) = (entry.digest.clone(), entry.written_ns);
        let t0 = std::time::Instant::now();
        let hit = entry.into_hit(store_dir).ok();
        crate::timing::report("evaluation cache: parse the derivations", t0);
        let (digest, newest) = checked.join().ok()?.ok()?;
        // A definition changed so soon before the entry was written that a second change
        // in the same clock tick could hide: the entry does not answer for it.
        (then == digest && newest + import_cache::RACY_NS < written_ns)
            .then_some(hit)
            .flatten()
    })
}

/// Writes the entry of `key` for a lowering that started with the definitions `before`
/// (atomically: a reader sees the old entry or the new one).
pub fn save(
    key: &Key,
    before: &Snapshot,
    store_dir: &StoreDir,
    lowered: &Lowered,
    sources: &[Source],
) -> io::Result<()> {
    let dir = key.file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let entry = Entry::new(key, before, store_dir, lowered, sources)
        .ok_or_else(|| io::Error::other("a derivation is not UTF-8"))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    io::Write::write_all(tmp.as_file_mut(), &entry.encode()?)?;
    tmp.persist(&key.file).map_err(|e| e.error)?;
    Ok(())
}

/// An entry, written in a binary form of its own ([`Entry::encode`]): a graph of 1,000
/// derivations is about a megabyte of `.drv` text, full of quotes, which JSON escapes and
/// reading had to unescape (3 to 4 ms; 0.5 ms this way).
#[derive(Debug, PartialEq)]
struct Entry {
    format: u32,
    exe: String,
    /// [`Snapshot`]'s digest and time.
    digest: String,
    written_ns: i128,
    order: Vec<String>,
    nodes: Vec<CachedNode>,
    sources: Vec<String>,
    texts: BTreeMap<String, String>,
    path_inputs: BTreeMap<String, PathBuf>,
    imported: Vec<(PathBuf, String, String)>,
}

#[derive(Debug, PartialEq)]
struct CachedNode {
    key: String,
    /// The `.drv` as Nix writes it.
    drv: String,
    drv_path: String,
    fetch: Option<CachedFetch>,
    deps: BTreeSet<String>,
    inputs: BTreeMap<String, String>,
}

/// Kept as JSON inside the entry: few nodes are downloads.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct CachedFetch {
    url: String,
    recursive: bool,
    /// SRI.
    hash: String,
    unpack: Option<Unpack>,
    executable: bool,
    declared_at: String,
    hash_from: HashFrom,
    size: Option<u64>,
}

/// Why an entry could not be read back (a miss).
struct Unreadable;

impl<E: std::fmt::Debug> From<E> for Unreadable {
    fn from(_: E) -> Unreadable {
        Unreadable
    }
}

/// Writes an entry: each number little-endian, each string or list preceded by its
/// length (`u32`).
struct Encoder(Vec<u8>);

impl Encoder {
    fn len(&mut self, n: usize) {
        self.0.extend_from_slice(&(n as u32).to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.len(b.len());
        self.0.extend_from_slice(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn path(&mut self, p: &Path) {
        self.bytes(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()));
    }
    fn strs<'a>(&mut self, items: impl ExactSizeIterator<Item = &'a String>) {
        self.len(items.len());
        items.for_each(|s| self.str(s));
    }
}

/// Reads what [`Encoder`] wrote; any shortfall or bad UTF-8 is [`Unreadable`].
struct Decoder<'a>(&'a [u8]);

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Unreadable> {
        if self.0.len() < n {
            return Err(Unreadable);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn len(&mut self) -> Result<usize, Unreadable> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    fn bytes(&mut self) -> Result<&'a [u8], Unreadable> {
        let n = self.len()?;
        self.take(n)
    }
    fn str(&mut self) -> Result<&'a str, Unreadable> {
        Ok(std::str::from_utf8(self.bytes()?)?)
    }
    fn string(&mut self) -> Result<String, Unreadable> {
        self.str().map(str::to_owned)
    }
    fn path(&mut self) -> Result<PathBuf, Unreadable> {
        let b = self.bytes()?;
        Ok(PathBuf::from(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b),
        ))
    }
    /// `count` items read with `item`, the count read first.
    fn list<T>(
        &mut self,
        mut item: impl FnMut(&mut Self) -> Result<T, Unreadable>,
    ) -> Result<Vec<T>, Unreadable> {
        let n = self.len()?;
        // Never trust a count for an allocation: each item takes at least 4 bytes.
        let mut items = Vec::with_capacity(n.min(self.0.len() / 4));
        for _ in 0..n {
            items.push(item(self)?);
        }
        Ok(items)
    }
}

impl Entry {
    fn encode(&self) -> io::Result<Vec<u8>> {
        let mut e = Encoder(Vec::with_capacity(
            1024 + self.nodes.iter().map(|n| n.drv.len() + 512).sum::<usize>(),
        ));
        e.0.extend_from_slice(MAGIC);
        e.0.extend_from_slice(&self.format.to_le_bytes());
        e.str(&self.exe);
        e.str(&self.digest);
        e.0.extend_from_slice(&self.written_ns.to_le_bytes());
        e.strs(self.order.iter());
        e.len(self.nodes.len());
        for n in &self.nodes {
            e.str(&n.key);
            e.str(&n.drv);
            e.str(&n.drv_path);
            match &n.fetch {
                None => e.bytes(b""),
                Some(f) => e.bytes(&serde_json::to_vec(f)?),
            }
            e.strs(n.deps.iter());
            e.len(n.inputs.len());
            for (k, v) in &n.inputs {
                e.str(k);
                e.str(v);
            }
        }
        e.strs(self.sources.iter());
        e.len(self.texts.len());
        for (p, t) in &self.texts {
            e.str(p);
            e.str(t);
        }
        e.len(self.path_inputs.len());
        for (k, p) in &self.path_inputs {
            e.str(k);
            e.path(p);
        }
        e.len(self.imported.len());
        for (full, name, path) in &self.imported {
            e.path(full);
            e.str(name);
            e.str(path);
        }
        Ok(e.0)
    }

    fn decode(bytes: &[u8]) -> Result<Entry, Unreadable> {
        let mut d = Decoder(bytes);
        if d.take(MAGIC.len())? != MAGIC {
            return Err(Unreadable);
        }
        let format = u32::from_le_bytes(d.take(4)?.try_into()?);
        if format != FORMAT {
            return Err(Unreadable);
        }
        let exe = d.string()?;
        let digest = d.string()?;
        let written_ns = i128::from_le_bytes(d.take(16)?.try_into()?);
        let order = d.list(Decoder::string)?;
        let nodes = d.list(|d| {
            Ok(CachedNode {
                key: d.string()?,
                drv: d.string()?,
                drv_path: d.string()?,
                fetch: match d.bytes()? {
                    b"" => None,
                    json => Some(serde_json::from_slice(json)?),
                },
                deps: d.list(Decoder::string)?.into_iter().collect(),
                inputs: d
                    .list(|d| Ok((d.string()?, d.string()?)))?
                    .into_iter()
                    .collect(),
            })
        })?;
        let sources = d.list(Decoder::string)?;
        let texts = d
            .list(|d| Ok((d.string()?, d.string()?)))?
            .into_iter()
            .collect();
        let path_inputs = d
            .list(|d| Ok((d.string()?, d.path()?)))?
            .into_iter()
            .collect();
        let imported = d.list(|d| Ok((d.path()?, d.string()?, d.string()?)))?;
        if !d.0.is_empty() {
            return Err(Unreadable);
        }
        Ok(Entry {
            format,
            exe,
            digest,
            written_ns,
            order,
            nodes,
            sources,
            texts,
            path_inputs,
            imported,
        })
    }

    fn new(
        key: &Key,
        before: &Snapshot,
        store_dir: &StoreDir,
        lowered: &Lowered,
        sources: &[Source],
    ) -> Option<Entry> {
        let nodes = lowered
            .nodes
            .values()
            .map(|n| {
                Some(CachedNode {
                    key: n.key.clone(),
                    drv: String::from_utf8(n.drv.to_aterm(store_dir)).ok()?,
                    drv_path: n.drv_path.to_string(),
                    fetch: n.fetch.as_ref().map(|f| CachedFetch {
                        url: f.url.clone(),
                        recursive: f.hash.method == FileIngestionMethod::Recursive,
                        hash: f.hash.hash.to_sri(),
                        unpack: f.unpack,
                        executable: f.executable,
                        declared_at: f.declared_at.clone(),
                        hash_from: f.hash_from.clone(),
                        size: f.size,
                    }),
                    deps: n.deps.clone(),
                    inputs: n.inputs.clone(),
                })
            })
            .collect::<Option<_>>()?;
        Some(Entry {
            format: FORMAT,
            exe: key.exe.clone(),
            digest: before.digest.clone(),
            written_ns: before.taken_ns,
            order: lowered.order.clone(),
            nodes,
            sources: lowered.sources.iter().map(|p| p.to_string()).collect(),
            texts: lowered
                .texts
                .iter()
                .map(|(p, t)| (p.to_string(), t.clone()))
                .collect(),
            path_inputs: lowered.path_inputs.clone(),
            imported: sources
                .iter()
                .map(|s| (s.full.clone(), s.name.clone(), s.path.to_string()))
                .collect(),
        })
    }

    fn into_hit(self, store_dir: &StoreDir) -> Result<Hit, Unreadable> {
        let store_dir = std::sync::Arc::new(store_dir.clone());
        let nodes = self.nodes.into_iter().map(|n| -> Result<Node, Unreadable> {
            Ok(Node {
                key: n.key,
                // Parsed when first used.
                drv: LazyDrv::from_aterm(n.drv, store_dir.clone()),
                drv_path: StorePath::from_base_name(&n.drv_path)?,
                fetch: match n.fetch {
                    None => None,
                    Some(f) => Some(Fetch {
                        url: f.url,
                        hash: FixedOutputHash {
                            method: if f.recursive {
                                FileIngestionMethod::Recursive
                            } else {
                                FileIngestionMethod::Flat
                            },
                            hash: Hash::parse(&f.hash)?,
                        },
                        unpack: f.unpack,
                        executable: f.executable,
                        declared_at: f.declared_at,
                        hash_from: f.hash_from,
                        size: f.size,
                    }),
                },
                deps: n.deps,
                inputs: n.inputs,
            })
        });
        let mut lowered = Lowered {
            order: self.order,
            path_inputs: self.path_inputs,
            ..Lowered::default()
        };
        for node in nodes {
            let node = node?;
            lowered.nodes.insert(node.key.clone(), node);
        }
        for p in &self.sources {
            lowered.sources.insert(StorePath::from_base_name(p)?);
        }
        for (p, text) in self.texts {
            lowered.texts.insert(StorePath::from_base_name(&p)?, text);
        }
        let sources = self
            .imported
            .into_iter()
            .map(|(full, name, path)| {
                Ok(Source {
                    full,
                    name,
                    path: StorePath::from_base_name(&path)?,
                })
            })
            .collect::<Result<_, Unreadable>>()?;
        Ok(Hit { lowered, sources })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            format: FORMAT,
            exe: "4:1:2:3:4.5".into(),
            digest: "ab".repeat(32),
            written_ns: -7_000_000_000_123,
            order: vec!["a".into(), "b".into()],
            nodes: vec![
                CachedNode {
                    key: "a".into(),
                    drv:
                        "Derive([(\"out\",\"/nix/store/x-a\",\"\",\"\")],[],[],\"é\",\"\\n\",[],[])"
                            .into(),
                    drv_path: "x-a.drv".into(),
                    fetch: Some(CachedFetch {
                        url: "mirror://debian/a.deb".into(),
                        recursive: true,
                        hash: "sha256-AAAA".into(),
                        unpack: Some(Unpack::Deb),
                        executable: false,
                        declared_at: "derivations/a.toml:3".into(),
                        hash_from: HashFrom::Pinned {
                            at: "derivations/pins.lock:1".into(),
                            key: "a".into(),
                        },
                        size: Some(12),
                    }),
                    deps: BTreeSet::new(),
                    inputs: BTreeMap::new(),
                },
                CachedNode {
                    key: "b".into(),
                    drv: String::new(),
                    drv_path: "y-b.drv".into(),
                    fetch: None,
                    deps: BTreeSet::from(["a".to_string()]),
                    inputs: BTreeMap::from([("src".to_string(), "a".to_string())]),
                },
            ],
            sources: vec!["z-src".into()],
            texts: BTreeMap::from([("t-text".to_string(), "text\0with a NUL".to_string())]),
            path_inputs: BTreeMap::from([("tools/x".to_string(), PathBuf::from("/p/tools/x"))]),
            imported: vec![(PathBuf::from("/p/tools/x"), "x".into(), "z-src".into())],
        }
    }

    #[test]
    fn an_entry_reads_back_as_written_and_any_damage_is_a_miss() {
        let e = entry();
        let bytes = e.encode().unwrap();
        assert!(Entry::decode(&bytes).is_ok_and(|d| d == e));
        // Cut short anywhere, or with a byte more, it is unreadable, never another entry.
        for n in 0..bytes.len() {
            assert!(Entry::decode(&bytes[..n]).is_err(), "cut at {n}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Entry::decode(&longer).is_err());
        // Another format, and a count no entry could hold.
        let mut other = bytes.clone();
        other[MAGIC.len()] ^= 1;
        assert!(Entry::decode(&other).is_err());
        let mut huge = bytes;
        let at = MAGIC.len() + 4;
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Entry::decode(&huge).is_err());
    }
}
