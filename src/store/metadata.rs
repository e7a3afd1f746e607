//! Metadata records of valid paths: one JSON file per path, in the shape of
//! `nix path-info --json`, written atomically (temporary file, rename). Does I/O.
//!
//! A `.drv` file that `instantiate` adds gets a *linked* record instead: a hard link to
//! its own file in the store ([`link`]). Everything its JSON record would say follows from
//! that text and its path, which is the hash of the text and of the references the text
//! names: the references are parsed from it, the NAR hash computed, and the path computed
//! again from both, so a damaged text or a text that is not the path's reads as a damaged
//! record, never as other metadata. It costs a directory entry where a JSON record costs
//! an inode: a fresh 10,000-node graph writes 10,000 files, not 20,000. (On ext4 each
//! inode allocated costs more than everything else about a `.drv`.)
//!
//! Records are not `fsync`ed, as Nix's database is not on each registration (SQLite in
//! WAL mode with `synchronous = NORMAL`): a killed process never leaves a partial record
//! (the rename is atomic), and a power loss may forget the latest registrations but
//! leaves the others intact. A record such a crash left empty (its data never reached the
//! disk) reads as absent: the path is not valid, and is built or added again. An `fsync`
//! costs 1 to 3 ms here, which would be most of the cost of registering a small path.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{Result, Store, StoreError};
use crate::compat::{Hash, StorePath};

/// What the store knows of a valid path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPathInfo {
    /// The path.
    pub path: StorePath,
    /// SHA-256 of its NAR serialisation.
    pub nar_hash: Hash,
    /// Size of the NAR serialisation.
    pub nar_size: u64,
    /// Store paths its contents mention (may include itself).
    pub references: BTreeSet<StorePath>,
    /// The `.drv` that built it, if any.
    pub deriver: Option<StorePath>,
    /// Content address (`fixed:r:sha256:…`, `text:sha256:…`) for content-addressed paths.
    pub ca: Option<String>,
    /// Seconds since the epoch when it became valid.
    pub registration_time: u64,
    /// Signatures (`key:base64`).
    pub signatures: Vec<String>,
    /// Whether it was built or added here (rather than substituted).
    pub ultimate: bool,
}

/// The JSON form, field for field `nix path-info --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PathInfoJson {
    /// Full logical path.
    pub path: String,
    /// SRI NAR hash.
    pub nar_hash: String,
    /// NAR size.
    pub nar_size: u64,
    /// Full logical paths of references.
    pub references: Vec<String>,
    /// Content address.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub ca: Option<String>,
    /// Full logical path of the deriver.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub deriver: Option<String>,
    /// Registration time.
    pub registration_time: u64,
    /// Built or added locally.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub ultimate: bool,
    /// Signatures.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub signatures: Vec<String>,
}

impl ValidPathInfo {
    /// The JSON form for `store`.
    pub fn to_json(&self, store: &Store) -> PathInfoJson {
        PathInfoJson {
            path: store.print(&self.path),
            nar_hash: self.nar_hash.to_sri(),
            nar_size: self.nar_size,
            references: self.references.iter().map(|r| store.print(r)).collect(),
            ca: self.ca.clone(),
            deriver: self.deriver.as_ref().map(|d| store.print(d)),
            registration_time: self.registration_time,
            ultimate: self.ultimate,
            signatures: self.signatures.clone(),
        }
    }

    fn from_json(store: &Store, json: PathInfoJson) -> std::result::Result<ValidPathInfo, String> {
        let sd = store.store_dir();
        let parse = |p: &str| sd.parse_path(p).map_err(|e| e.to_string());
        Ok(ValidPathInfo {
            path: parse(&json.path)?,
            nar_hash: Hash::parse(&json.nar_hash).map_err(|e| e.to_string())?,
            nar_size: json.nar_size,
            references: json
                .references
                .iter()
                .map(|r| parse(r))
                .collect::<std::result::Result<_, _>>()?,
            deriver: json.deriver.as_deref().map(parse).transpose()?,
            ca: json.ca,
            registration_time: json.registration_time,
            signatures: json.signatures,
            ultimate: json.ultimate,
        })
    }
}

pub(crate) fn record_path(store: &Store, path: &StorePath) -> PathBuf {
    store.db_dir().join(format!("{path}.json"))
}

/// Whether the record of `path` exists (and is not empty).
pub fn exists(store: &Store, path: &StorePath) -> Result<bool> {
    let file = record_path(store, path);
    match std::fs::symlink_metadata(&file) {
        Ok(meta) => Ok(meta.len() > 0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::Io {
            action: "inspect",
            path: file,
            source: e,
        }),
    }
}

/// Reads the record of `path`; `None` if the path is not valid.
pub fn read(store: &Store, path: &StorePath) -> Result<Option<ValidPathInfo>> {
    let file = record_path(store, path);
    let text = match std::fs::read(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::Io {
                action: "read",
                path: file,
                source: e,
            })
        }
    };
    if text.is_empty() {
        return Ok(None);
    }
    let corrupt = |reason: String| StoreError::CorruptMetadata {
        path: file.clone(),
        reason,
    };
    if is_linked(&text) {
        let references = linked_references(store, path, &text).map_err(corrupt)?;
        // Registered when the link was made: the inode's change time (nothing changes a
        // store file's inode after that, but damage).
        let registered = std::fs::symlink_metadata(&file)
            .map_err(StoreError::io("inspect", &file))?
            .ctime();
        let registered = registered.max(0) as u64;
        return Ok(Some(text_info(path.clone(), &text, references, registered)));
    }
    let json: PathInfoJson = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
    let info = ValidPathInfo::from_json(store, json).map_err(corrupt)?;
    if &info.path != path {
        return Err(corrupt(format!(
            "it describes `{}`",
            store.print(&info.path)
        )));
    }
    Ok(Some(info))
}

/// Reads the references of records, for closures: the record directory is looked up
/// once, each record read with `openat` into one buffer, and only the references are
/// decoded (borrowed from the text), not the NAR hash, the deriver or the signatures. A
/// closure of a thousand paths reads a thousand records.
pub struct ReferenceReader {
    dir: std::os::fd::OwnedFd,
    buf: Vec<u8>,
}

impl ReferenceReader {
    /// A reader of `store`'s records.
    pub fn new(store: &Store) -> Result<ReferenceReader> {
        use rustix::fs::{Mode, OFlags};
        let db = store.db_dir();
        let dir = rustix::fs::open(
            &db,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| StoreError::io("open", &db)(e.into()))?;
        Ok(ReferenceReader {
            dir,
            buf: Vec::with_capacity(4096),
        })
    }

    /// The references of `path`; `None` if it is not valid.
    pub fn references(
        &mut self,
        store: &Store,
        path: &StorePath,
    ) -> Result<Option<BTreeSet<StorePath>>> {
        use rustix::fs::{Mode, OFlags};
        // Store paths have no escape to decode: borrowed from the text.
        #[derive(Deserialize)]
        struct References<'a> {
            #[serde(borrow)]
            path: std::borrow::Cow<'a, str>,
            #[serde(borrow)]
            references: Vec<std::borrow::Cow<'a, str>>,
        }
        let name = format!("{path}.json");
        let io = |e: rustix::io::Errno| StoreError::io("read", record_path(store, path))(e.into());
        let file = match rustix::fs::openat(
            &self.dir,
            &name,
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(f) => f,
            Err(rustix::io::Errno::NOENT) => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        self.buf.clear();
        // Through `Take`, not `File::read_to_end`, which would `statx` the file first.
        std::io::Read::take(std::fs::File::from(file), u64::MAX)
            .read_to_end(&mut self.buf)
            .map_err(StoreError::io("read", record_path(store, path)))?;
        if self.buf.is_empty() {
            return Ok(None);
        }
        let corrupt = |reason: String| StoreError::CorruptMetadata {
            path: record_path(store, path),
            reason,
        };
        if is_linked(&self.buf) {
            return linked_references(store, path, &self.buf)
                .map(Some)
                .map_err(corrupt);
        }
        let json: References =
            serde_json::from_slice(&self.buf).map_err(|e| corrupt(e.to_string()))?;
        let sd = store.store_dir();
        let described = sd
            .parse_path(&json.path)
            .map_err(|e| corrupt(e.to_string()))?;
        if &described != path {
            return Err(corrupt(format!("it describes `{}`", json.path)));
        }
        json.references
            .iter()
            .map(|r| sd.parse_path(r).map_err(|e| corrupt(e.to_string())))
            .collect::<Result<_>>()
            .map(Some)
    }
}

/// Writes the record of `info.path` atomically: the moment the path becomes valid.
pub fn write(store: &Store, info: &ValidPathInfo) -> Result<()> {
    let file = record_path(store, &info.path);
    let json =
        serde_json::to_vec(&info.to_json(store)).map_err(|e| StoreError::Refused(e.to_string()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".record-")
        .tempfile_in(store.tmp_dir())
        .map_err(StoreError::io("create a record in", store.tmp_dir()))?;
    tmp.write_all(&json)
        .map_err(StoreError::io("write", tmp.path().to_path_buf()))?;
    tmp.persist(&file).map_err(|e| StoreError::Io {
        action: "write",
        path: file.clone(),
        source: e.error,
    })?;
    Ok(())
}

/// Makes the text path `path`, a `.drv` file just moved into the store, valid with a
/// linked record (see the module's documentation): a hard link to its file, made at once.
/// `Ok(false)` where none can be made (a store and records on different filesystems, a
/// leftover record in the way): the caller writes a JSON record instead, which reports
/// any error that matters.
pub fn link(store: &Store, path: &StorePath) -> bool {
    std::fs::hard_link(store.physical_path(path), record_path(store, path)).is_ok()
}

/// The record of the text path `path` holding `text`: what [`super::Store::add_text`]
/// writes, and what a linked record reads as.
pub(crate) fn text_info(
    path: StorePath,
    text: &[u8],
    references: BTreeSet<StorePath>,
    registration_time: u64,
) -> ValidPathInfo {
    // A text is one regular file: its NAR is hashed from memory.
    let (nar_hash, nar_size) = super::dump::nar_hash_regular(text);
    ValidPathInfo {
        path,
        nar_hash,
        nar_size,
        references,
        deriver: None,
        ca: Some(format!("text:sha256:{}", Hash::sha256(text).to_nix32())),
        registration_time,
        signatures: Vec::new(),
        ultimate: true,
    }
}

/// Whether a record is linked: a `.drv` text, not JSON.
fn is_linked(record: &[u8]) -> bool {
    record.starts_with(b"Derive(")
}

/// The references of the linked record `text` of `path`: those the derivation names,
/// once the path is found to be the text path of this text and these references.
fn linked_references(
    store: &Store,
    path: &StorePath,
    text: &[u8],
) -> std::result::Result<BTreeSet<StorePath>, String> {
    let sd = store.store_dir();
    let drv = crate::compat::derivation::Derivation::from_aterm(text, sd)
        .map_err(|e| format!("a linked record that is not a derivation: {e}"))?;
    let references = drv.references();
    let expected = sd
        .make_text_path(path.name(), &Hash::sha256(text), &references)
        .map_err(|e| e.to_string())?;
    if &expected != path {
        return Err(format!(
            "a linked record whose text is that of `{}`, not this path's",
            store.print(&expected)
        ));
    }
    Ok(references)
}

/// Removes the record of `path`: the moment it stops being valid.
pub fn remove(store: &Store, path: &StorePath) -> Result<()> {
    let file = record_path(store, path);
    match std::fs::remove_file(&file) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Io {
            action: "remove",
            path: file,
            source: e,
        }),
    }
}

/// Every valid path, sorted. Records are named `<hash>-<name>.json`, so the listing
/// needs no read of each record.
pub fn list(store: &Store) -> Result<Vec<StorePath>> {
    let dir = store.db_dir();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(StoreError::io("list", &dir))? {
        let entry = entry.map_err(StoreError::io("list", &dir))?;
        let name = entry.file_name();
        let Some(base) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        if entry.metadata().map(|m| m.len() == 0).unwrap_or(false) {
            continue;
        }
        if let Ok(path) = StorePath::from_base_name(base) {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}
