//! Substitution: making store paths valid by downloading them from Nix binary caches
//! instead of building them. Does network and store I/O.
//!
//! A path is taken from a cache only when (see [`trust`]) its narinfo names it, carries a
//! valid signature by a trusted key (or a `CA` field proving the path), its references are
//! valid or substituted first, and its NAR — downloaded, decompressed ([`decompress`]) and
//! restored into a staging directory in one stream — has the narinfo's `NarHash` and
//! `NarSize` (and `FileHash`/`FileSize` when given). It is then registered like any other
//! path: renamed into place, and made valid by its record last. A substituted path is not
//! `ultimate` (not built here), so `ksbuild check` never counts it as a build round.
//!
//! Caches are asked in `Priority` order (lower first, as Nix does); a cache without
//! `WantMassQuery: 1` is asked only about paths already chosen for substitution (the
//! outputs of the targets and the closures of paths found), not about every derivation of
//! the graph. A cache that fails (unreachable, a 5xx after retries, a wrong `StoreDir`) is
//! skipped, with a warning, for the rest of the run.

pub mod config;
pub mod decompress;
pub mod transport;
pub mod trust;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, BufReader, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use config::{ConfigError, Settings};
use transport::{FileTransport, HttpTransport, Transport, TransportError};

use crate::compat::hash::Hasher;
use crate::compat::narinfo::NarInfo;
use crate::compat::signing::PublicKey;
use crate::compat::{Hash, HashAlgo, StoreDir, StorePath};
use crate::store::{restore_nar, RestoreMode, Store, StoreError, ValidPathInfo};

/// Why a path could not be substituted (the caller warns and builds instead).
#[derive(Debug, thiserror::Error)]
pub enum SubstituteError {
    /// Reading from the cache failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The NAR the narinfo points at is not there.
    #[error("its NAR `{url}` is missing from the cache")]
    NarMissing { url: String },
    /// The NAR (after decompression) is malformed or cut short.
    #[error("its NAR `{url}` is damaged")]
    BadNar {
        url: String,
        #[source]
        source: crate::compat::nar::NarError,
    },
    /// The NAR is compressed in a way that cannot be read.
    #[error(transparent)]
    Decompress(#[from] decompress::DecompressError),
    /// The downloaded NAR is not the one the narinfo describes.
    #[error("{what} mismatch: the narinfo says {expected}, the download has {actual}")]
    Mismatch {
        what: &'static str,
        expected: String,
        actual: String,
    },
    /// Restoring or registering failed (a malformed or truncated NAR, a full disk).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the substituters tell their user about while they work. Only the CLI implements it
/// (through the graph's reporter).
pub trait Observer: Sync {
    /// Something the user should know: a cache skipped, a narinfo refused.
    fn warning(&self, _text: &str) {}
    /// `bytes` of the download of `path` have arrived.
    fn progress(&self, _path: &StorePath, _bytes: u64) {}
}

/// An observer that says nothing.
pub struct Quiet;
impl Observer for Quiet {}

/// One opened cache.
struct Cache {
    url: String,
    transport: Box<dyn Transport>,
    priority: i64,
    want_mass_query: bool,
    /// Set when the cache failed: it is not asked again in this run.
    disabled: AtomicBool,
}

/// Where a path can be substituted from.
#[derive(Debug, Clone)]
pub struct Found {
    /// The cache's URL.
    pub substituter: String,
    cache: usize,
    /// Its believed narinfo.
    pub info: Arc<NarInfo>,
}

impl Found {
    /// The bytes to download (`FileSize`, else `NarSize`).
    pub fn download_size(&self) -> u64 {
        self.info.file_size.unwrap_or(self.info.nar_size)
    }
}

/// Why the closure of a path cannot be substituted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unavailable {
    /// No cache has the path itself (the usual case for what has never been built).
    Absent(StorePath),
    /// The path (or one in its closure) failed to substitute earlier in this run (and
    /// was reported then).
    Failed(StorePath),
    /// A cache has the path, but a path it references is in none.
    MissingReference {
        path: StorePath,
        reference: StorePath,
    },
}

/// Default `Priority` of a cache whose `nix-cache-info` gives none.
const DEFAULT_PRIORITY: i64 = 50;

/// The configured substituters, opened on first use.
pub struct Substituters {
    urls: Vec<String>,
    trusted: Vec<PublicKey>,
    store_dir: StoreDir,
    caches: OnceLock<Vec<Cache>>,
    /// Lookups so far: the result, and whether every cache was asked.
    lookups: Mutex<HashMap<StorePath, (Option<Found>, bool)>>,
    /// Paths whose substitution failed in this run: not offered again.
    failed: Mutex<BTreeSet<StorePath>>,
}

impl Substituters {
    /// Substituters of `settings` for a store of `store_dir`; nothing is read yet.
    pub fn new(settings: &Settings, store_dir: &StoreDir) -> Substituters {
        Substituters {
            urls: settings
                .substituters
                .iter()
                .map(|o| o.value.clone())
                .collect(),
            trusted: settings.trusted_public_keys.clone(),
            store_dir: store_dir.clone(),
            caches: OnceLock::new(),
            lookups: Mutex::new(HashMap::new()),
            failed: Mutex::new(BTreeSet::new()),
        }
    }

    /// No substituters at all (`--no-substitute`).
    pub fn none(store_dir: &StoreDir) -> Substituters {
        Substituters::new(&Settings::default(), store_dir)
    }

    /// Whether any substituter is configured.
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// The caches, opened (their `nix-cache-info` read) on first call, in priority order.
    fn caches(&self, obs: &dyn Observer) -> &[Cache] {
        self.caches.get_or_init(|| {
            let mut caches: Vec<Cache> = self
                .urls
                .iter()
                .filter_map(|url| match self.open(url) {
                    Ok(c) => Some(c),
                    Err(why) => {
                        obs.warning(&format!("substituter `{url}` is skipped: {why}"));
                        None
                    }
                })
                .collect();
            caches.sort_by_key(|c| c.priority);
            caches
        })
    }

    /// Opens the cache at `url`: reads and checks its `nix-cache-info`.
    fn open(&self, url: &str) -> Result<Cache, String> {
        let (base, params) = url.split_once('?').unwrap_or((url, ""));
        let transport: Box<dyn Transport> = match base.strip_prefix("file://") {
            Some(dir) => Box::new(FileTransport { dir: dir.into() }),
            None => Box::new(HttpTransport::new(base)),
        };
        let mut text = String::new();
        match transport.get("nix-cache-info").map_err(|e| e.to_string())? {
            None => {
                return Err(
                    "it does not appear to be a binary cache (it has no `nix-cache-info`)".into(),
                )
            }
            Some(mut body) => {
                body.read_to_string(&mut text)
                    .map_err(|e| format!("cannot read its `nix-cache-info`: {e}"))?;
            }
        }
        let mut priority = DEFAULT_PRIORITY;
        let mut want_mass_query = false;
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match key {
                "StoreDir" if value != self.store_dir.as_str() => {
                    return Err(format!(
                        "it holds paths of `{value}`, and this store's directory is `{}`",
                        self.store_dir
                    ))
                }
                "Priority" => priority = value.parse().unwrap_or(priority),
                "WantMassQuery" => want_mass_query = value == "1",
                _ => {}
            }
        }
        // URL parameters override the cache's own defaults, as in Nix.
        for param in params.split('&') {
            match param.split_once('=') {
                Some(("priority", v)) => priority = v.parse().unwrap_or(priority),
                Some(("want-mass-query", v)) => want_mass_query = matches!(v, "1" | "true"),
                _ => {}
            }
        }
        Ok(Cache {
            url: base.trim_end_matches('/').to_string(),
            transport,
            priority,
            want_mass_query,
            disabled: AtomicBool::new(false),
        })
    }

    /// Where `path` can be substituted from, asking the caches in priority order (with
    /// `mass`, only those that want mass queries). Refused narinfos are warned about and
    /// passed over.
    pub fn lookup(&self, path: &StorePath, mass: bool, obs: &dyn Observer) -> Option<Found> {
        if self.is_empty() || self.lock_failed().contains(path) {
            return None;
        }
        if let Some((found, all)) = self.lock_lookups().get(path) {
            if found.is_some() || *all || mass {
                return found.clone();
            }
        }
        let mut found = None;
        for (i, cache) in self.caches(obs).iter().enumerate() {
            if (mass && !cache.want_mass_query) || cache.disabled.load(Ordering::SeqCst) {
                continue;
            }
            if let Some(info) = self.ask(cache, path, obs) {
                found = Some(Found {
                    substituter: cache.url.clone(),
                    cache: i,
                    info: Arc::new(info),
                });
                break;
            }
        }
        self.lock_lookups()
            .insert(path.clone(), (found.clone(), !mass));
        found
    }

    /// What the first cache that has `path` claims of it, believed or not (a
    /// reproducibility check compares the claim with a build of its own, as Guix's
    /// `challenge` does), and whether a trusted key signed it; `Ok(None)` when no cache
    /// has it. An unreachable cache or a corrupt narinfo is an error, not an absence.
    pub fn claim(&self, path: &StorePath) -> Result<Option<(String, NarInfo, bool)>, String> {
        let caches = self.caches(&Quiet);
        if caches.len() < self.urls.len() {
            return Err(format!(
                "cannot open the binary cache(s) {}",
                self.urls.join(", ")
            ));
        }
        let file = format!("{}.narinfo", path.hash_part());
        for cache in caches {
            let Some(mut body) = cache.transport.get(&file).map_err(|e| e.to_string())? else {
                continue;
            };
            let mut text = String::new();
            body.read_to_string(&mut text)
                .map_err(|e| format!("cannot read `{}/{file}`: {e}", cache.url))?;
            let info = NarInfo::parse(&self.store_dir, &text)
                .map_err(|e| format!("`{}/{file}` is corrupt: {e}", cache.url))?;
            if info.store_path != *path {
                return Err(format!(
                    "`{}/{file}` is the narinfo of `{}`, not of `{}`",
                    cache.url,
                    self.store_dir.display(&info.store_path),
                    self.store_dir.display(path)
                ));
            }
            let trusted = trust::check(&info, path, &self.store_dir, &self.trusted).is_ok();
            return Ok(Some((cache.url.clone(), info, trusted)));
        }
        Ok(None)
    }

    /// The narinfo of `path` in `cache`, if it is there and believed.
    fn ask(&self, cache: &Cache, path: &StorePath, obs: &dyn Observer) -> Option<NarInfo> {
        let file = format!("{}.narinfo", path.hash_part());
        let mut text = String::new();
        let read = cache.transport.get(&file).and_then(|body| match body {
            None => Ok(false),
            Some(mut b) => b
                .read_to_string(&mut text)
                .map(|_| true)
                .map_err(|e| TransportError {
                    url: format!("{}/{file}", cache.url),
                    message: e.to_string(),
                }),
        });
        match read {
            Ok(false) => return None,
            Ok(true) => {}
            Err(e) => {
                if !cache.disabled.swap(true, Ordering::SeqCst) {
                    obs.warning(&format!(
                        "substituter `{}` is skipped for the rest of this run: {e}",
                        cache.url
                    ));
                }
                return None;
            }
        }
        let shown = self.store_dir.display(path);
        let info = match NarInfo::parse(&self.store_dir, &text) {
            Ok(i) => i,
            Err(e) => {
                obs.warning(&format!(
                    "not substituting `{shown}` from `{}`: its narinfo `{file}` is corrupt: {e}",
                    cache.url
                ));
                return None;
            }
        };
        match trust::check(&info, path, &self.store_dir, &self.trusted) {
            Ok(_) => Some(info),
            Err(why) => {
                let hint = match why {
                    trust::Refusal::Unsigned | trust::Refusal::UntrustedKeys { .. } => {
                        "\n  hint: trust the cache's key with `--trusted-public-keys \"name:base64…\"` (or `trusted-public-keys` in `~/.config/ksbuild/config.toml`)"
                    }
                    _ => "",
                };
                obs.warning(&format!(
                    "not substituting `{shown}` from `{}`: {why}{hint}",
                    cache.url
                ));
                None
            }
        }
    }

    /// What to download to make `paths` valid: every path of their closures that is not
    /// valid, with where it comes from; or why that cannot be done.
    pub fn plan_closure(
        &self,
        store: &Store,
        paths: &[StorePath],
        mass: bool,
        obs: &dyn Observer,
    ) -> Result<BTreeMap<StorePath, Found>, Unavailable> {
        let mut plan = BTreeMap::new();
        let mut todo: Vec<(StorePath, Option<StorePath>)> =
            paths.iter().map(|p| (p.clone(), None)).collect();
        while let Some((path, referrer)) = todo.pop() {
            if plan.contains_key(&path) || store.is_valid(&path).unwrap_or(false) {
                continue;
            }
            if self.lock_failed().contains(&path) {
                return Err(Unavailable::Failed(path));
            }
            // A root's availability is a mass query; a reference of a path found is not.
            let found = self.lookup(&path, mass && referrer.is_none(), obs);
            let Some(found) = found else {
                return Err(match referrer {
                    None => Unavailable::Absent(path),
                    Some(referrer) => Unavailable::MissingReference {
                        path: referrer,
                        reference: path,
                    },
                });
            };
            for r in &found.info.references {
                if r != &path {
                    todo.push((r.clone(), Some(path.clone())));
                }
            }
            plan.insert(path, found);
        }
        Ok(plan)
    }

    /// Remembers that `path` failed to substitute: it is not offered again in this run.
    pub fn mark_failed(&self, path: &StorePath) {
        self.lock_failed().insert(path.clone());
    }

    fn lock_failed(&self) -> std::sync::MutexGuard<'_, BTreeSet<StorePath>> {
        self.failed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_lookups(&self) -> std::sync::MutexGuard<'_, HashMap<StorePath, (Option<Found>, bool)>> {
        self.lookups.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Downloads, checks and registers the path `found` describes (whose references must
    /// be valid). Nothing is registered unless every check passes; a process killed on the
    /// way leaves only a staging directory, swept away by the next idle open of the store.
    pub fn substitute(
        &self,
        store: &Store,
        found: &Found,
        obs: &dyn Observer,
    ) -> Result<ValidPathInfo, SubstituteError> {
        let info = &found.info;
        let path = &info.store_path;
        let lock = store.lock_path(path)?;
        if let Some(valid) = store.query_path_info(path)? {
            return Ok(valid);
        }
        let cache = &self.caches(obs)[found.cache];
        let body = cache
            .transport
            .get(&info.url)?
            .ok_or_else(|| SubstituteError::NarMissing {
                url: format!("{}/{}", cache.url, info.url),
            })?;
        let staging = store.staging()?;
        let target = staging.path().join("x");
        // Uncompressed, the file is the NAR: hashed once, and its FileHash must be NarHash.
        let plain = matches!(info.compression.as_str(), "" | "none");
        if plain {
            if let Some(fh) = info.file_hash.as_ref().filter(|h| *h != &info.nar_hash) {
                return Err(SubstituteError::Mismatch {
                    what: "FileHash",
                    expected: fh.to_nix32_prefixed(),
                    actual: format!(
                        "an uncompressed NAR, whose hash must be NarHash {}",
                        info.nar_hash.to_nix32_prefixed()
                    ),
                });
            }
        }
        let mut file = Counted::new(
            body,
            (!plain && info.file_hash.is_some()).then(|| Hasher::new(HashAlgo::Sha256)),
            Some((path, obs)),
        );
        let (nar_hash, nar_size) = {
            let decoded = decompress::decoder(&info.compression, &mut file)?;
            let mut nar = Counted::new(decoded, Some(Hasher::new(HashAlgo::Sha256)), None);
            restore_nar(
                BufReader::with_capacity(256 * 1024, &mut nar),
                &target,
                RestoreMode::Canonical,
            )
            .map_err(|e| match e {
                StoreError::Nar { source, .. } => SubstituteError::BadNar {
                    url: format!("{}/{}", cache.url, info.url),
                    source,
                },
                other => other.into(),
            })?;
            nar.finish()
        };
        // What the decompressor left unread still counts for FileHash and FileSize.
        io::copy(&mut file, &mut io::sink()).map_err(|e| TransportError {
            url: format!("{}/{}", cache.url, info.url),
            message: e.to_string(),
        })?;
        let (file_hash, file_size) = file.finish();
        let nar_hash = nar_hash.unwrap_or_else(|| Hash::sha256(b""));
        if nar_hash != info.nar_hash {
            return Err(SubstituteError::Mismatch {
                what: "NarHash",
                expected: info.nar_hash.to_nix32_prefixed(),
                actual: nar_hash.to_nix32_prefixed(),
            });
        }
        if nar_size != info.nar_size {
            return Err(SubstituteError::Mismatch {
                what: "NarSize",
                expected: info.nar_size.to_string(),
                actual: nar_size.to_string(),
            });
        }
        if let (Some(expected), Some(actual)) = (&info.file_hash, &file_hash) {
            if expected != actual {
                return Err(SubstituteError::Mismatch {
                    what: "FileHash",
                    expected: expected.to_nix32_prefixed(),
                    actual: actual.to_nix32_prefixed(),
                });
            }
        }
        if let Some(expected) = info.file_size.filter(|&s| s != file_size) {
            return Err(SubstituteError::Mismatch {
                what: "FileSize",
                expected: expected.to_string(),
                actual: file_size.to_string(),
            });
        }
        let valid = ValidPathInfo {
            path: path.clone(),
            nar_hash,
            nar_size,
            references: info.references.clone(),
            deriver: info.deriver.clone(),
            ca: info.ca.as_ref().map(|c| c.to_string()),
            registration_time: 0,
            signatures: info.signatures.iter().map(|s| s.to_string()).collect(),
            // Downloaded, not built here: never a build round of `ksbuild check`.
            ultimate: false,
        };
        Ok(store.register_staged_locked(&target, valid, &lock)?)
    }
}

/// A reader that counts (and optionally hashes) what passes through, and reports progress.
struct Counted<'a, R> {
    inner: R,
    hasher: Option<Hasher>,
    bytes: u64,
    report: Option<(&'a StorePath, &'a dyn Observer)>,
    last_report: Instant,
}

impl<'a, R: Read> Counted<'a, R> {
    fn new(
        inner: R,
        hasher: Option<Hasher>,
        report: Option<(&'a StorePath, &'a dyn Observer)>,
    ) -> Self {
        Counted {
            inner,
            hasher,
            bytes: 0,
            report,
            last_report: Instant::now(),
        }
    }

    fn finish(self) -> (Option<Hash>, u64) {
        (self.hasher.map(Hasher::finish), self.bytes)
    }
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        self.bytes += n as u64;
        if let Some((path, obs)) = self.report {
            if self.last_report.elapsed() >= Duration::from_millis(200) {
                self.last_report = Instant::now();
                obs.progress(path, self.bytes);
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use std::path::Path;

    use super::*;
    use crate::compat::nar::Node;
    use crate::compat::signing::SecretKey;
    use crate::store::Silent;

    /// Collects warnings.
    #[derive(Default)]
    struct Warnings(Mutex<Vec<String>>);
    impl Observer for Warnings {
        fn warning(&self, text: &str) {
            self.0.lock().unwrap().push(text.to_string());
        }
    }

    /// A `file://` cache at `dir` holding `path` as the NAR of `contents`, signed by `key`.
    fn cache(dir: &Path, info_file: &str, path: &StorePath, contents: &[u8], key: &SecretKey) {
        std::fs::create_dir_all(dir.join("nar")).unwrap();
        std::fs::write(dir.join("nix-cache-info"), info_file).unwrap();
        let nar = Node::Regular {
            executable: false,
            contents: contents.to_vec(),
        }
        .write_nar(Vec::new())
        .unwrap();
        let hash = Hash::sha256(&nar);
        std::fs::write(dir.join(format!("nar/{}.nar", hash.to_nix32())), &nar).unwrap();
        let mut info = NarInfo {
            store_path: path.clone(),
            url: format!("nar/{}.nar", hash.to_nix32()),
            compression: "none".into(),
            file_hash: Some(hash.clone()),
            file_size: Some(nar.len() as u64),
            nar_hash: hash,
            nar_size: nar.len() as u64,
            references: BTreeSet::new(),
            deriver: None,
            system: None,
            signatures: Vec::new(),
            ca: None,
        };
        let sd = StoreDir::default();
        info.sign(&sd, key).unwrap();
        std::fs::write(
            dir.join(format!("{}.narinfo", path.hash_part())),
            info.to_text(&sd),
        )
        .unwrap();
    }

    #[test]
    fn priority_orders_caches_and_broken_ones_are_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let key = SecretKey::from_seed("k-1", [7; 32]).unwrap();
        let path = StorePath::from_base_name("00000000000000000000000000000000-x").unwrap();
        cache(
            &t.join("slow"),
            "StoreDir: /nix/store\nPriority: 60\n",
            &path,
            b"slow",
            &key,
        );
        cache(
            &t.join("fast"),
            "StoreDir: /nix/store\nPriority: 10\n",
            &path,
            b"fast",
            &key,
        );
        cache(
            &t.join("other"),
            "StoreDir: /gnu/store\n",
            &path,
            b"other",
            &key,
        );
        let url = |name: &str| format!("file://{}", t.join(name).display());
        let settings = Settings::from_layers(&[config::Layer {
            origin: "test".into(),
            substituters: Some(vec![url("missing"), url("other"), url("slow"), url("fast")]),
            trusted_public_keys: Some(vec![key.to_public().to_string()]),
            ..Default::default()
        }])
        .unwrap();
        let subs = Substituters::new(&settings, &StoreDir::default());
        let warnings = Warnings::default();
        let found = subs.lookup(&path, false, &warnings).unwrap();
        assert_eq!(found.substituter, url("fast"));
        let w = warnings.0.lock().unwrap().join("\n");
        assert!(w.contains("does not appear to be a binary cache"), "{w}");
        assert!(w.contains("holds paths of `/gnu/store`"), "{w}");
        // `?priority=` in the URL overrides the cache's own.
        let settings = Settings::from_layers(&[config::Layer {
            origin: "test".into(),
            substituters: Some(vec![format!("{}?priority=1", url("slow")), url("fast")]),
            trusted_public_keys: Some(vec![key.to_public().to_string()]),
            ..Default::default()
        }])
        .unwrap();
        let subs = Substituters::new(&settings, &StoreDir::default());
        let found = subs.lookup(&path, false, &Quiet).unwrap();
        assert_eq!(found.substituter, url("slow"));
        // Neither wants mass queries: a mass lookup asks neither.
        let subs = Substituters::new(&settings, &StoreDir::default());
        assert!(subs.lookup(&path, true, &Quiet).is_none());
        // Substituted: valid, the cache's bytes, not ultimate.
        let store = Store::open(&t.join("root"), StoreDir::default(), Arc::new(Silent)).unwrap();
        let valid = subs.substitute(&store, &found, &Quiet).unwrap();
        assert!(!valid.ultimate);
        assert_eq!(std::fs::read(store.physical_path(&path)).unwrap(), b"slow");
        assert!(store.verify(true).unwrap().damaged.is_empty());
    }
}
