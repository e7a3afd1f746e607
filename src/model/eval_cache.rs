//! The evaluation cache: a lowered graph kept to be used again while nothing it was
//! computed from has changed (Nix keeps one for flakes). A project of thousands of
//! derivations is parsed and lowered in half a second; read back, it takes a fraction.
//!
//! One entry per project, store directory and list of targets, in a file of the cache
//! directory named after their hash. An entry holds the digest of everything lowering read
//! but the path inputs: every file under `derivations/` and `sandboxes/` (names, kinds and
//! contents) and the ksbuild executable itself (device, inode, size and modification time:
//! another build of ksbuild may lower differently). It also holds each path input as
//! written, where it led and the store path of its contents, which the caller checks again
//! (a path input may be any file of the project).
//!
//! Always correct, never trusted: an entry is used only when its digest equals the one
//! computed from the files as they are now, and written only when the digest computed
//! before lowering equals the one computed after (so no file changed in between). Any
//! entry that cannot be read or parsed is a miss.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Fetch, HashFrom, Lowered, Node, Unpack};
use crate::compat::derivation::{Derivation, FixedOutputHash};
use crate::compat::hash::{Hash, HashAlgo, Hasher};
use crate::compat::{FileIngestionMethod, StoreDir, StorePath};

/// Bumped when the entry's format changes.
const FORMAT: u32 = 1;

/// Where an entry lives and the digest it must carry.
#[derive(Debug, Clone)]
pub struct Key {
    file: PathBuf,
    digest: String,
}

impl Key {
    /// The key of lowering `targets` of the project at `root` for `store_dir`, with the
    /// cache in `dir`; reads every file under `derivations/` and `sandboxes/`.
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
        Ok(Key {
            file: dir.join(&name[..32]),
            digest: digest(&root)?,
        })
    }

    /// The same key with the digest of the files as they are now.
    pub fn again(&self, root: &Path) -> io::Result<Key> {
        Ok(Key {
            file: self.file.clone(),
            digest: digest(&std::fs::canonicalize(root)?)?,
        })
    }

    /// Whether both digests are the same.
    pub fn same_files(&self, other: &Key) -> bool {
        self.digest == other.digest
    }
}

/// The digest of the ksbuild executable and of the project's `derivations/` and
/// `sandboxes/` (each entry's path, kind and contents, in name order).
fn digest(root: &Path) -> io::Result<String> {
    enum Kind {
        Dir,
        Link(PathBuf),
        File(PathBuf),
    }
    let exe = std::fs::metadata("/proc/self/exe")?;
    let mut entries: Vec<(String, Kind)> = Vec::new();
    for dir in ["derivations", "sandboxes"] {
        let top = root.join(dir);
        if !top.exists() {
            continue;
        }
        for entry in walkdir::WalkDir::new(&top).sort_by_file_name() {
            let entry = entry.map_err(|e| {
                e.into_io_error()
                    .unwrap_or_else(|| io::Error::other("walk failed"))
            })?;
            let relative = entry
                .path()
                .strip_prefix(root)
                .unwrap_or(entry.path())
                .display()
                .to_string();
            let kind = if entry.file_type().is_symlink() {
                Kind::Link(std::fs::read_link(entry.path())?)
            } else if entry.file_type().is_dir() {
                Kind::Dir
            } else {
                Kind::File(entry.path().to_path_buf())
            };
            entries.push((relative, kind));
        }
    }
    // Reading thousands of small files is most of the work: on every CPU.
    let parts = crate::map_parallel(&entries, 64, |(relative, kind)| -> io::Result<Vec<u8>> {
        let mut part = relative.as_bytes().to_vec();
        match kind {
            Kind::Dir => part.extend_from_slice(b"\0d\0"),
            Kind::Link(target) => {
                part.extend_from_slice(b"\0l\0");
                part.extend_from_slice(target.as_os_str().as_encoded_bytes());
            }
            Kind::File(path) => {
                part.extend_from_slice(b"\0f\0");
                part.extend_from_slice(Hash::sha256(&std::fs::read(path)?).digest_bytes());
            }
        }
        part.push(0);
        Ok(part)
    });
    let mut h = Hasher::new(HashAlgo::Sha256);
    h.update(
        format!(
            "ksbuild eval cache {FORMAT}\0{}:{}:{}:{}.{}\0",
            exe.dev(),
            exe.ino(),
            exe.len(),
            exe.mtime(),
            exe.mtime_nsec()
        )
        .as_bytes(),
    );
    for part in parts {
        h.update(&part?);
    }
    Ok(h.finish().to_hex())
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

/// The entry of `key`, if there is one with the same digest.
pub fn load(key: &Key, store_dir: &StoreDir) -> Option<Hit> {
    let bytes = std::fs::read(&key.file).ok()?;
    let entry: Entry = serde_json::from_slice(&bytes).ok()?;
    if entry.format != FORMAT || entry.digest != key.digest {
        return None;
    }
    entry.into_hit(store_dir).ok()
}

/// Writes the entry of `key` (atomically: a reader sees the old entry or the new one).
pub fn save(
    key: &Key,
    store_dir: &StoreDir,
    lowered: &Lowered,
    sources: &[Source],
) -> io::Result<()> {
    let dir = key.file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let entry = Entry::new(&key.digest, store_dir, lowered, sources)
        .ok_or_else(|| io::Error::other("a derivation is not UTF-8"))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer(io::BufWriter::new(tmp.as_file_mut()), &entry)?;
    tmp.persist(&key.file).map_err(|e| e.error)?;
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct Entry {
    format: u32,
    digest: String,
    order: Vec<String>,
    nodes: Vec<CachedNode>,
    sources: Vec<String>,
    texts: BTreeMap<String, String>,
    path_inputs: BTreeMap<String, PathBuf>,
    imported: Vec<(PathBuf, String, String)>,
}

#[derive(Serialize, Deserialize)]
struct CachedNode {
    key: String,
    /// The `.drv` as Nix writes it.
    drv: String,
    drv_path: String,
    fetch: Option<CachedFetch>,
    deps: BTreeSet<String>,
    inputs: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct CachedFetch {
    url: String,
    recursive: bool,
    /// SRI.
    hash: String,
    unpack: Option<String>,
    executable: bool,
    declared_at: String,
    hash_from: CachedHashFrom,
    size: Option<u64>,
}

#[derive(Serialize, Deserialize)]
enum CachedHashFrom {
    Declared { at: String },
    Pinned { at: String, key: String },
    Locked { environment: String },
}

/// Why an entry could not be read back (a miss).
struct Unreadable;

impl<E: std::fmt::Debug> From<E> for Unreadable {
    fn from(_: E) -> Unreadable {
        Unreadable
    }
}

impl Entry {
    fn new(
        digest: &str,
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
                        unpack: f.unpack.map(|u| {
                            match u {
                                Unpack::Deb => "deb",
                                Unpack::Tar => "tar",
                            }
                            .to_string()
                        }),
                        executable: f.executable,
                        declared_at: f.declared_at.clone(),
                        hash_from: match &f.hash_from {
                            HashFrom::Declared { at } => {
                                CachedHashFrom::Declared { at: at.clone() }
                            }
                            HashFrom::Pinned { at, key } => CachedHashFrom::Pinned {
                                at: at.clone(),
                                key: key.clone(),
                            },
                            HashFrom::Locked { environment } => CachedHashFrom::Locked {
                                environment: environment.clone(),
                            },
                        },
                        size: f.size,
                    }),
                    deps: n.deps.clone(),
                    inputs: n.inputs.clone(),
                })
            })
            .collect::<Option<_>>()?;
        Some(Entry {
            format: FORMAT,
            digest: digest.to_string(),
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
        let nodes = crate::map_parallel(&self.nodes, 256, |n| -> Result<Node, Unreadable> {
            Ok(Node {
                key: n.key.clone(),
                drv: Derivation::from_aterm(n.drv.as_bytes(), store_dir)?,
                drv_path: StorePath::from_base_name(&n.drv_path)?,
                fetch: match &n.fetch {
                    None => None,
                    Some(f) => Some(Fetch {
                        url: f.url.clone(),
                        hash: FixedOutputHash {
                            method: if f.recursive {
                                FileIngestionMethod::Recursive
                            } else {
                                FileIngestionMethod::Flat
                            },
                            hash: Hash::parse(&f.hash)?,
                        },
                        unpack: match f.unpack.as_deref() {
                            None => None,
                            Some("deb") => Some(Unpack::Deb),
                            Some("tar") => Some(Unpack::Tar),
                            Some(_) => return Err(Unreadable),
                        },
                        executable: f.executable,
                        declared_at: f.declared_at.clone(),
                        hash_from: match &f.hash_from {
                            CachedHashFrom::Declared { at } => {
                                HashFrom::Declared { at: at.clone() }
                            }
                            CachedHashFrom::Pinned { at, key } => HashFrom::Pinned {
                                at: at.clone(),
                                key: key.clone(),
                            },
                            CachedHashFrom::Locked { environment } => HashFrom::Locked {
                                environment: environment.clone(),
                            },
                        },
                        size: f.size,
                    }),
                },
                deps: n.deps.clone(),
                inputs: n.inputs.clone(),
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
