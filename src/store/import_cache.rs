//! A stat cache for source imports, in the spirit of git's index: the NAR hash of a
//! repository file or tree is reused while every entry's type, mode, size, inode, mtime and
//! ctime are unchanged, so re-evaluating a project does not re-read its sources. Entries
//! modified within a second of the cache being written are "racily clean" and never
//! trusted ([`RACY_NS`]). The evaluation cache recognises a project's definitions the same
//! way ([`stat_digest`]). Does I/O (`<root>/nix/var/ksbuild/imports/`).

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{nar_hash_path, Result, Store, StoreError};
use crate::compat::hash::Hasher;
use crate::compat::{Hash, HashAlgo};

#[derive(Serialize, Deserialize)]
struct Entry {
    stat_digest: String,
    nar_hash: String,
    written_ns: i128,
}

/// A digest of the stat data of every entry of `path` (sorted walk), and the newest
/// mtime/ctime seen, in nanoseconds. A symlink counts with the file or folder it leads to
/// (where it leads anywhere): whoever reads through it sees that one change.
pub(crate) fn stat_digest(path: &Path) -> Result<(Hash, i128)> {
    let mut h = Hasher::new(HashAlgo::Sha256);
    let mut newest: i128 = 0;
    for entry in walkdir::WalkDir::new(path)
        .follow_links(false)
        .sort_by(|a, b| a.file_name().as_bytes().cmp(b.file_name().as_bytes()))
    {
        let entry = entry.map_err(|e| StoreError::Io {
            action: "read",
            path: path.to_path_buf(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("walk failed")),
        })?;
        let m = entry.metadata().map_err(|e| StoreError::Io {
            action: "inspect",
            path: entry.path().to_path_buf(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("stat failed")),
        })?;
        h.update(entry.path().as_os_str().as_bytes());
        h.update(&[0]);
        let target = entry
            .path_is_symlink()
            .then(|| std::fs::metadata(entry.path()).ok())
            .flatten();
        for m in std::iter::once(&m).chain(&target) {
            let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
            let ctime = i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec());
            newest = newest.max(mtime).max(ctime);
            for n in [u64::from(m.mode()), m.size(), m.ino(), m.dev()] {
                h.update(&n.to_le_bytes());
            }
            h.update(&mtime.to_le_bytes());
            h.update(&ctime.to_le_bytes());
        }
    }
    Ok((h.finish(), newest))
}

/// How long after a change an entry's status may still miss a second change in the same
/// clock tick: a cache written sooner after it does not answer for it.
pub(crate) const RACY_NS: i128 = 1_000_000_000;

pub(crate) fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// The NAR hash (SHA-256) of `source`, from the cache when its entries are unchanged.
pub fn nar_hash(store: &Store, source: &Path) -> Result<Hash> {
    let absolute = std::fs::canonicalize(source).map_err(StoreError::io("resolve", source))?;
    let dir = store.root().join("nix/var/ksbuild/imports");
    let file = dir.join(format!(
        "{}.json",
        &Hash::sha256(absolute.as_os_str().as_bytes()).to_nix32()[..32]
    ));
    let (digest, newest) = stat_digest(&absolute)?;
    if let Ok(text) = std::fs::read(&file) {
        if let Ok(e) = serde_json::from_slice::<Entry>(&text) {
            let racy = newest + RACY_NS >= e.written_ns;
            if !racy && e.stat_digest == digest.to_nix32() {
                if let Ok(h) = Hash::parse(&e.nar_hash) {
                    return Ok(h);
                }
            }
        }
    }
    let written_ns = now_ns();
    let (hash, _) = nar_hash_path(&absolute)?;
    // A change during hashing shows in a second stat walk; then nothing is cached.
    let (after, _) = stat_digest(&absolute)?;
    if after == digest {
        let entry = Entry {
            stat_digest: digest.to_nix32(),
            nar_hash: hash.to_sri(),
            written_ns,
        };
        if std::fs::create_dir_all(&dir).is_ok() {
            if let Ok(json) = serde_json::to_vec(&entry) {
                // The cache is an optimisation: failing to write it loses nothing.
                let _ = super::fsutil::write_atomic(&file, &json);
            }
        }
    }
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::compat::StoreDir;
    use crate::store::Silent;

    #[test]
    fn reuses_hashes_only_while_nothing_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(
            &tmp.path().join("root"),
            StoreDir::default(),
            Arc::new(Silent),
        )
        .unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), b"one").unwrap();
        let first = nar_hash(&store, &src).unwrap();
        assert_eq!(first, nar_hash_path(&src).unwrap().0);
        // Racily clean: just written, so not cached yet; pretend time has passed.
        let cache_dir = tmp.path().join("root/nix/var/ksbuild/imports");
        let cached = std::fs::read_dir(&cache_dir).unwrap().count();
        assert_eq!(cached, 1);
        for e in std::fs::read_dir(&cache_dir).unwrap() {
            let p = e.unwrap().path();
            let mut entry: Entry = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            entry.written_ns += 10_000_000_000;
            entry.nar_hash = Hash::sha256(b"planted").to_sri();
            std::fs::write(&p, serde_json::to_vec(&entry).unwrap()).unwrap();
        }
        // Unchanged tree: the (planted) cached hash is used, proving no re-read.
        assert_eq!(nar_hash(&store, &src).unwrap(), Hash::sha256(b"planted"));
        // Any change (same size, new content) invalidates it.
        std::fs::write(src.join("f"), b"two").unwrap();
        assert_eq!(
            nar_hash(&store, &src).unwrap(),
            nar_hash_path(&src).unwrap().0
        );
    }
}
