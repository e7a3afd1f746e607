//! Export of store paths as a Nix binary cache in a local directory (`file://`): NARs
//! under `nar/`, one `<hash>.narinfo` per path, optionally signed, and `nix-cache-info`.
//! Does I/O. Compression is `none`: byte-exact, and what `nix copy --from file://` reads.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::Path;

use super::{dump_path, Result, Store, StoreError};
use crate::compat::hash::Hasher;
use crate::compat::narinfo::{ContentAddress, NarInfo};
use crate::compat::signing::{SecretKey, Signature};
use crate::compat::{HashAlgo, StorePath};

/// Writes bytes to two sinks.
struct Tee<A, B>(A, B);

impl<A: Write, B: Write> Write for Tee<A, B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        self.1.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()?;
        self.1.flush()
    }
}

/// Copies `paths` (callers pass a closure) into the binary cache at `dir`, signing each
/// narinfo with `key` if given. Paths already in the cache are skipped. Each NAR is
/// re-hashed while it is written and must match the store's record, so damage is never
/// published; a NAR is complete before the narinfo that points at it appears.
/// Returns the paths written.
pub fn copy_to_binary_cache(
    store: &Store,
    paths: &BTreeSet<StorePath>,
    dir: &Path,
    key: Option<&SecretKey>,
) -> Result<Vec<StorePath>> {
    let nar_dir = dir.join("nar");
    fs::create_dir_all(&nar_dir).map_err(StoreError::io("create", &nar_dir))?;
    let info_file = dir.join("nix-cache-info");
    if !info_file.exists() {
        super::fsutil::write_atomic(
            &info_file,
            format!("StoreDir: {}\n", store.store_dir()).as_bytes(),
        )?;
    }
    let _gc = store.lock_gc_shared()?;
    let mut written = Vec::new();
    for path in paths {
        let narinfo_file = dir.join(format!("{}.narinfo", path.hash_part()));
        if narinfo_file.exists() {
            continue;
        }
        let info = store.path_info(path)?;
        let physical = store.physical_path(path);
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&nar_dir)
            .map_err(StoreError::io("create a file in", &nar_dir))?;
        let tmp_path = tmp.path().to_path_buf();
        let file_hash = {
            let sink = Tee(
                io::BufWriter::new(tmp.as_file_mut()),
                Hasher::new(HashAlgo::Sha256),
            );
            let Tee(mut file, hasher) = dump_path(&physical, sink)?;
            file.flush().map_err(StoreError::io("write", tmp_path))?;
            hasher.finish()
        };
        if file_hash != info.nar_hash {
            return Err(StoreError::Refused(format!(
                "`{}` is damaged (NAR hash {} differs from its record {}); not publishing it. Run `ksbuild store verify --check-contents`",
                store.print(path),
                file_hash.to_sri(),
                info.nar_hash.to_sri()
            )));
        }
        let url = format!("nar/{}.nar", file_hash.to_nix32());
        let nar_file = dir.join(&url);
        tmp.persist(&nar_file).map_err(|e| StoreError::Io {
            action: "write",
            path: nar_file.clone(),
            source: e.error,
        })?;
        let ca = info
            .ca
            .as_deref()
            .map(ContentAddress::parse)
            .transpose()
            .map_err(|e| StoreError::CorruptMetadata {
                path: physical.clone(),
                reason: e.to_string(),
            })?;
        let signatures = info
            .signatures
            .iter()
            .map(|s| Signature::parse(s))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| StoreError::CorruptMetadata {
                path: physical.clone(),
                reason: e.to_string(),
            })?;
        let mut narinfo = NarInfo {
            store_path: path.clone(),
            url,
            compression: "none".into(),
            file_hash: Some(file_hash),
            file_size: Some(info.nar_size),
            nar_hash: info.nar_hash.clone(),
            nar_size: info.nar_size,
            references: info.references.clone(),
            deriver: info.deriver.clone(),
            system: None,
            signatures,
            ca,
        };
        if let Some(key) = key {
            narinfo.sign(store.store_dir(), key).map_err(|e| {
                StoreError::Refused(format!("cannot sign `{}`: {e}", store.print(path)))
            })?;
        }
        super::fsutil::write_atomic(&narinfo_file, narinfo.to_text(store.store_dir()).as_bytes())?;
        written.push(path.clone());
    }
    Ok(written)
}
