//! The immutable store: layout, path metadata, locks, adding and registering paths,
//! verification, GC roots and garbage collection. Does filesystem I/O.
//!
//! Layout under the physical root (default `store/` of the project):
//!
//! ```text
//! <root>/nix/store/<hash>-<name>          the paths themselves (0444/0555, mtime 1)
//! <root>/nix/var/ksbuild/db/<hash>.json   one metadata record per valid path
//! <root>/nix/var/ksbuild/locks/           per-path locks and the GC lock
//! <root>/nix/var/ksbuild/tmp/             staging of paths being added
//! <root>/nix/var/ksbuild/gcroots/         direct roots; `auto/` holds indirect roots
//! ```
//!
//! A path is *valid* exactly when its metadata record exists. The record is written last,
//! by an atomic rename, after the contents are complete and canonical; so a killed process
//! leaves at worst an unregistered directory or a staging directory, which the next
//! process that finds the store idle sweeps away (see [`Store::open`]).

mod cache;
pub mod compression;
mod dump;
mod fsutil;
mod gc;
pub mod history;
pub(crate) mod import_cache;
mod lock;
mod metadata;
pub mod pipe;
mod verify;

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

pub use cache::{
    push_to_binary_cache, CacheTransport, CacheUrl, PushOptions, PushReport, Uploaded, UrlParams,
};
pub use compression::Compression;
pub use dump::{
    dump_path, hash_file, nar_hash_path, nar_hash_path_with as dump_nar_hash, restore_nar,
    restore_nar_prefix, RestoreMode,
};
pub use fsutil::{
    append_to_log, append_whole, disk_usage, is_out_of_space, megabytes, move_sealed, write_atomic,
    FilesystemSpace,
};
pub use fsutil::{remove_tree, write_sparse, Staging};
pub use gc::GcReport;
pub use lock::{FileLock, LockKind};
pub use metadata::{PathInfoJson, ValidPathInfo};
pub use verify::{Damage, VerifyReport};

use crate::compat::nar::NarError;
use crate::compat::store_path::StorePathError;
use crate::compat::{FileIngestionMethod, Hash, HashAlgo, StoreDir, StorePath};

/// Everything that can go wrong in the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("cannot {action} `{path}`")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file of a type the store cannot hold.
    #[error("`{path}` is a {kind}; the store holds only regular files, directories and symlinks")]
    UnsupportedFileType { path: PathBuf, kind: &'static str },
    /// A name or path that is not a store path.
    #[error(transparent)]
    StorePath(#[from] StorePathError),
    /// A NAR could not be written or read.
    #[error("NAR error while processing `{path}`")]
    Nar {
        path: PathBuf,
        #[source]
        source: NarError,
    },
    /// The path is not valid in this store.
    #[error("`{path}` is not valid in the store at `{root}`")]
    NotValid { path: String, root: PathBuf },
    /// A metadata record could not be parsed.
    #[error("metadata record `{path}` is corrupt: {reason}")]
    CorruptMetadata { path: PathBuf, reason: String },
    /// A name could not be derived from a source path.
    #[error("cannot name a store path after `{0}`")]
    NoName(PathBuf),
    /// A flat add of something that is not a regular file.
    #[error(
        "`{0}` is not a regular file; flat hashing needs one (use `--recursive` for directories)"
    )]
    FlatNotRegular(PathBuf),
    /// A path references something that is not valid.
    #[error("`{path}` references `{reference}`, which is not valid in the store")]
    MissingReference { path: String, reference: String },
    /// The operation was refused for safety.
    #[error("{0}")]
    Refused(String),
    /// A binary cache URL ksbuild cannot use.
    #[error("cannot use the binary cache `{url}`: {reason}")]
    BadCacheUrl { url: String, reason: String },
    /// An HTTP request to a binary cache failed (after retries, for transient failures).
    #[error("{method} `{url}` failed: {}{}", status.map_or("no response".to_string(), |s| format!("HTTP {s}")), if detail.is_empty() { String::new() } else { format!(" ({detail})") })]
    Http {
        method: &'static str,
        url: String,
        status: Option<u16>,
        detail: String,
    },
}

impl StoreError {
    /// A short suggestion of what to do, where one helps.
    pub fn hint(&self) -> Option<String> {
        match self {
            StoreError::UnsupportedFileType { .. } => {
                Some("remove the special file (socket, FIFO or device node) from the tree, or add a folder without it".into())
            }
            StoreError::NotValid { .. } => Some("add it with `ksbuild store add`, or check `--store`/`KSBUILD_STORE`".into()),
            StoreError::CorruptMetadata { .. } => {
                Some("run `ksbuild store verify` to list damage; delete the record to make the path invalid".into())
            }
            StoreError::NoName(_) => Some("pass `--name NAME`".into()),
            StoreError::StorePath(StorePathError::BadName { .. }) => {
                Some("pass `--name NAME` with letters, digits and `+-._?=` only".into())
            }
            StoreError::Http { method: "PUT", status: Some(405 | 501), .. } => Some(
                "the server does not accept uploads: enable WebDAV PUT (nginx: `dav_methods PUT; create_full_put_path on;`), or push to a `file://` directory it serves".into(),
            ),
            StoreError::Http { status: Some(401 | 403 | 407), .. } => Some(
                "the server refused access: check its permissions for this client (ksbuild sends no credentials)".into(),
            ),
            StoreError::Http { status: Some(409), .. } => Some(
                "the server could not create the file's folder: enable `create_full_put_path on;` (nginx) or create `nar/` and `log/` on the server".into(),
            ),
            StoreError::Http { status: Some(413), .. } => Some(
                "the NAR is larger than the server accepts: raise its limit (nginx: `client_max_body_size 0;`)".into(),
            ),
            StoreError::Http { status: None, .. } => {
                Some("check that the server is running and the URL (host, port, scheme) is right".into())
            }
            StoreError::Io { source, .. } if source.kind() == io::ErrorKind::PermissionDenied => {
                Some("check the permissions of the store root (`--store`, `KSBUILD_STORE`)".into())
            }
            _ => None,
        }
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.into();
        move |source| StoreError::Io {
            action,
            path,
            source,
        }
    }
}

/// Result type of the store layer.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What the store tells its user about while it works. Only the CLI implements this;
/// the default methods say nothing.
pub trait Observer: Send + Sync {
    /// About to block on a lock held by another process.
    fn waiting_for_lock(&self, _what: &str, _lock: &Path) {}
    /// A leftover of an interrupted operation was removed.
    fn recovered(&self, _what: &Path) {}
    /// A path is being deleted by the garbage collector.
    fn deleting(&self, _path: &str) {}
}

/// An observer that says nothing.
pub struct Silent;
impl Observer for Silent {}

/// How to add a path.
#[derive(Debug, Clone)]
pub struct AddOptions {
    /// Store name; defaults to the source's file name.
    pub name: Option<String>,
    /// Flat (a single file's bytes) or recursive (NAR).
    pub method: FileIngestionMethod,
    /// Hash algorithm of the content address.
    pub algo: HashAlgo,
}

impl Default for AddOptions {
    fn default() -> Self {
        AddOptions {
            name: None,
            method: FileIngestionMethod::Recursive,
            algo: HashAlgo::Sha256,
        }
    }
}

/// A store: a logical store directory and the physical root holding it.
#[derive(Clone)]
pub struct Store {
    root: PathBuf,
    store_dir: StoreDir,
    observer: Arc<dyn Observer>,
    /// The GC lock held shared, while any [`GcShared`] of this store (or a clone) lives.
    gc_shared: Arc<Mutex<Weak<FileLock>>>,
}

/// The store's GC lock held shared (see [`Store::lock_gc_shared`]). Every guard of a
/// store in this process holds the same lock: one `flock` for ten thousand `.drv` files
/// added in a row, not one each.
#[derive(Clone)]
pub struct GcShared(#[allow(dead_code)] Arc<FileLock>);

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.root)
            .field("store_dir", &self.store_dir)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store at physical root `root`. If no other process
    /// is using the store, leftovers of interrupted operations are swept away first.
    pub fn open(root: &Path, store_dir: StoreDir, observer: Arc<dyn Observer>) -> Result<Store> {
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(StoreError::io("read", "."))?
                .join(root)
        };
        let store = Store {
            root,
            store_dir,
            observer,
            gc_shared: Arc::new(Mutex::new(Weak::new())),
        };
        store.refuse_foreign_store()?;
        for dir in [
            store.real_store_dir(),
            store.db_dir(),
            store.locks_dir(),
            store.tmp_dir(),
            store.gcroots_dir().join("auto"),
            store.builds_dir(),
            store.pending_dir(),
            store.failed_builds_dir(),
            store.check_dir(),
            store.var_dir().join("logs"),
        ] {
            std::fs::create_dir_all(&dir).map_err(StoreError::io("create", &dir))?;
        }
        if let Some(_idle) = store.try_lock_gc_exclusive()? {
            gc::sweep_leftovers(&store)?;
        }
        Ok(store)
    }

    /// Refuses to adopt a store directory that has contents but no ksbuild metadata (for
    /// example a real Nix store): sweeping it would delete paths ksbuild never registered.
    fn refuse_foreign_store(&self) -> Result<()> {
        if self.var_dir().exists() {
            return Ok(());
        }
        let real = self.real_store_dir();
        let occupied = std::fs::read_dir(&real)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if occupied {
            return Err(StoreError::Refused(format!(
                "`{}` holds paths but no ksbuild metadata (`{}`); it looks like a store ksbuild did not create, \
                 and ksbuild will not adopt it. Point `--store` at a new directory",
                real.display(),
                self.var_dir().display()
            )));
        }
        Ok(())
    }

    /// The physical root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The logical store directory.
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// The observer.
    pub fn observer(&self) -> &dyn Observer {
        self.observer.as_ref()
    }

    /// Where the logical store directory physically is: `<root><store_dir>`.
    pub fn real_store_dir(&self) -> PathBuf {
        self.root
            .join(self.store_dir.as_str().trim_start_matches('/'))
    }

    pub(crate) fn var_dir(&self) -> PathBuf {
        self.root.join("nix/var/ksbuild")
    }
    fn db_dir(&self) -> PathBuf {
        self.var_dir().join("db")
    }
    pub(crate) fn locks_dir(&self) -> PathBuf {
        self.var_dir().join("locks")
    }
    pub(crate) fn tmp_dir(&self) -> PathBuf {
        self.var_dir().join("tmp")
    }
    /// Directory of GC roots: symlinks to store paths, and `auto/` with indirect roots.
    pub fn gcroots_dir(&self) -> PathBuf {
        self.var_dir().join("gcroots")
    }

    /// The physical location of `path`.
    pub fn physical_path(&self, path: &StorePath) -> PathBuf {
        self.real_store_dir().join(path.to_string())
    }

    /// The logical (printed) form of `path`.
    pub fn print(&self, path: &StorePath) -> String {
        self.store_dir.display(path)
    }

    /// Parses a path given by a user: a logical store path, a physical one, or a path
    /// beneath either (e.g. a `result` symlink is followed first).
    pub fn parse_user_path(&self, text: &Path) -> Result<StorePath> {
        let s = text.to_string_lossy();
        if let Ok((p, _)) = self.store_dir.parse_path_prefix(&s) {
            return Ok(p);
        }
        let real = self.real_store_dir();
        let resolved = std::fs::canonicalize(text).unwrap_or_else(|_| text.to_path_buf());
        let real_canon = std::fs::canonicalize(&real).unwrap_or(real);
        for candidate in [text.to_path_buf(), resolved] {
            if let Ok(rest) = candidate.strip_prefix(&real_canon) {
                if let Some(first) = rest.components().next() {
                    return Ok(StorePath::from_base_name(
                        &first.as_os_str().to_string_lossy(),
                    )?);
                }
            }
        }
        Err(StoreError::StorePath(StorePathError::NotInStore {
            path: s.into_owned(),
            store_dir: self.store_dir.to_string(),
        }))
    }

    /// Locks `path` against concurrent registration or deletion: one byte of
    /// `locks/paths.lock`, at an offset taken from the path's hash (63 bits of it: two
    /// paths that share one wait for each other, which only costs time), so that locking
    /// creates no file per path.
    pub fn lock_path(&self, path: &StorePath) -> Result<FileLock> {
        lock::lock_byte(
            &self.locks_dir().join("paths.lock"),
            path_lock_offset(path),
            self.observer(),
            &self.print(path),
        )
    }

    /// [`Store::lock_path`] if the lock is free now; `None` if another process (or thread)
    /// holds it, i.e. is registering or building the path.
    pub fn try_lock_path(&self, path: &StorePath) -> Result<Option<FileLock>> {
        lock::try_lock_byte(&self.locks_dir().join("paths.lock"), path_lock_offset(path))
    }

    /// [`Store::lock_path`] without announcing a wait, for a caller that reports it.
    pub fn lock_path_quietly(&self, path: &StorePath) -> Result<FileLock> {
        lock::lock_byte_quietly(&self.locks_dir().join("paths.lock"), path_lock_offset(path))
    }

    /// Takes the GC lock shared: held by every operation that adds paths or uses them
    /// (builds), so the collector never deletes what they work with.
    pub fn lock_gc_shared(&self) -> Result<GcShared> {
        let mut held = self.gc_shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lock) = held.upgrade() {
            return Ok(GcShared(lock));
        }
        let lock = Arc::new(lock::lock(
            &self.locks_dir().join("gc.lock"),
            LockKind::Shared,
            self.observer(),
            "the store (held alone by `store gc`, or by the clean-up of an interrupted \
             operation)",
        )?);
        *held = Arc::downgrade(&lock);
        Ok(GcShared(lock))
    }

    fn lock_gc_exclusive(&self) -> Result<FileLock> {
        lock::lock(
            &self.locks_dir().join("gc.lock"),
            LockKind::Exclusive,
            self.observer(),
            "the store (other ksbuild processes are adding or building)",
        )
    }

    fn try_lock_gc_exclusive(&self) -> Result<Option<FileLock>> {
        lock::try_lock(&self.locks_dir().join("gc.lock"), LockKind::Exclusive)
    }

    /// Metadata of `path` if it is valid.
    pub fn query_path_info(&self, path: &StorePath) -> Result<Option<ValidPathInfo>> {
        metadata::read(self, path)
    }

    /// Metadata of `path`, or an error naming it if it is not valid.
    pub fn path_info(&self, path: &StorePath) -> Result<ValidPathInfo> {
        self.query_path_info(path)?
            .ok_or_else(|| StoreError::NotValid {
                path: self.print(path),
                root: self.root.clone(),
            })
    }

    /// Where builds run: scratch directories on the store's filesystem.
    pub fn builds_dir(&self) -> PathBuf {
        self.var_dir().join("builds")
    }

    /// Where `--keep-failed` keeps the directories of failed builds.
    pub fn failed_builds_dir(&self) -> PathBuf {
        self.var_dir().join("failed")
    }

    /// Where `realise --check` keeps rebuilds that differ.
    pub fn check_dir(&self) -> PathBuf {
        self.var_dir().join("check")
    }

    /// The build log of the derivation `drv`.
    pub fn log_path(&self, drv: &StorePath) -> PathBuf {
        self.var_dir().join("logs").join(format!("{drv}.log"))
    }

    /// Whether `path` is valid: its record exists (one `stat`; `verify` reads the records).
    pub fn is_valid(&self, path: &StorePath) -> Result<bool> {
        metadata::exists(self, path)
    }

    /// Every valid path, sorted.
    pub fn valid_paths(&self) -> Result<Vec<StorePath>> {
        metadata::list(self)
    }

    /// The closure of `paths` under references (including themselves).
    pub fn closure(
        &self,
        paths: impl IntoIterator<Item = StorePath>,
    ) -> Result<BTreeSet<StorePath>> {
        self.closure_cached(paths, &ReferenceCache::default())
    }

    /// [`Store::closure`], reading the references of each path from `cache`, and into it
    /// the first time: the closures of many builds in one process read each record once.
    /// The walk is over the cache's numbers for the paths (no path is copied or compared
    /// but those of the result, sorted once): a build's closure of a thousand paths costs
    /// a tenth of a millisecond, not half a millisecond.
    pub fn closure_cached(
        &self,
        paths: impl IntoIterator<Item = StorePath>,
        cache: &ReferenceCache,
    ) -> Result<BTreeSet<StorePath>> {
        let mut known = cache.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut todo: Vec<u32> = paths.into_iter().map(|p| known.number(p)).collect();
        let mut seen = vec![false; known.paths.len()];
        let mut found = Vec::new();
        let mut reader = None;
        while let Some(n) = todo.pop() {
            let i = n as usize;
            if seen.len() <= i {
                seen.resize(known.paths.len(), false);
            }
            if std::mem::replace(&mut seen[i], true) {
                continue;
            }
            found.push(n);
            let references = match &known.references[i] {
                Some(references) => references.clone(),
                None => {
                    let reader = match &mut reader {
                        Some(reader) => reader,
                        None => reader.insert(metadata::ReferenceReader::new(self)?),
                    };
                    let path = known.paths[i].clone();
                    let read =
                        reader
                            .references(self, &path)?
                            .ok_or_else(|| StoreError::NotValid {
                                path: self.print(&path),
                                root: self.root.clone(),
                            })?;
                    let references: Arc<[u32]> =
                        read.into_iter().map(|r| known.number(r)).collect();
                    known.references[i] = Some(references.clone());
                    references
                }
            };
            todo.extend(
                references
                    .iter()
                    .filter(|r| !seen.get(**r as usize).copied().unwrap_or(false)),
            );
        }
        let mut closure: Vec<StorePath> = found
            .into_iter()
            .map(|n| known.paths[n as usize].clone())
            .collect();
        closure.sort_unstable();
        Ok(closure.into_iter().collect())
    }

    /// Adds a file or tree to the store, as `nix-store --add` / `--add-fixed` do: one
    /// traversal copies it into staging (canonical modes and mtimes), NAR-hashes it and,
    /// for flat adds, hashes the file. The result is registered atomically.
    pub fn add_path(&self, source: &Path, options: &AddOptions) -> Result<ValidPathInfo> {
        let name = match &options.name {
            Some(n) => n.clone(),
            None => source
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| StoreError::NoName(source.to_path_buf()))?,
        };
        crate::compat::store_path::validate_name(&name)?;
        let _gc = self.lock_gc_shared()?;
        let staging = fsutil::Staging::new(&self.tmp_dir())?;
        let target = staging.path().join("x");
        let flat = options.method == FileIngestionMethod::Flat;
        let meta = std::fs::symlink_metadata(source).map_err(StoreError::io("read", source))?;
        if flat && !meta.is_file() {
            return Err(StoreError::FlatNotRegular(source.to_path_buf()));
        }
        let nar_algo = (options.method == FileIngestionMethod::Recursive
            && options.algo != HashAlgo::Sha256)
            .then_some(options.algo);
        let out = dump::copy_and_hash(source, &target, flat.then_some(options.algo), nar_algo)?;
        let ca_hash = if flat {
            out.flat_hash
                .clone()
                .ok_or_else(|| StoreError::Refused("flat hash missing".into()))?
        } else {
            out.nar_other_hash
                .clone()
                .unwrap_or_else(|| out.nar_hash.clone())
        };
        let path = self.store_dir.make_fixed_output_path(
            options.method,
            &ca_hash,
            &name,
            &BTreeSet::new(),
            false,
        )?;
        let info = ValidPathInfo {
            path: path.clone(),
            nar_hash: out.nar_hash,
            nar_size: out.nar_size,
            references: BTreeSet::new(),
            deriver: None,
            ca: Some(content_address(options.method, &ca_hash)),
            registration_time: 0,
            signatures: Vec::new(),
            ultimate: true,
        };
        self.register_staged(&target, info)
    }

    /// A fresh staging directory on the store's filesystem, removed when dropped; trees
    /// built in it can be registered with [`Store::register_output`]. It holds the GC lock
    /// shared while it lives: another process opening an idle store sweeps `tmp/`.
    pub fn staging(&self) -> Result<Staging> {
        Staging::locked(&self.tmp_dir(), self.lock_gc_shared()?)
    }

    /// Imports a repository file or tree as a source path, as Nix imports a path literal:
    /// it is hashed first, and copied only if the store does not hold it yet, so that
    /// re-evaluating a project costs one read of each source and no writes.
    ///
    /// A symlink at `source` itself is followed (the hash and the copy are of what it leads
    /// to); symlinks inside a tree are kept. A tree that holds this store's root is refused:
    /// it would be copied into itself.
    pub fn import_source(&self, source: &Path, name: &str) -> Result<StorePath> {
        let path = self.source_path(source, name)?;
        self.copy_source(source, name, path)
    }

    /// Copies `source` into the store as `name`, given the path [`Store::source_path`]
    /// computed for it (nothing is copied if it is valid): the second half of
    /// [`Store::import_source`], for a caller that hashed the source already.
    pub fn copy_source(&self, source: &Path, name: &str, path: StorePath) -> Result<StorePath> {
        if self.is_valid(&path)? {
            return Ok(path);
        }
        let source = std::fs::canonicalize(source).map_err(StoreError::io("resolve", source))?;
        let options = AddOptions {
            name: Some(name.to_string()),
            ..AddOptions::default()
        };
        let info = self.add_path(&source, &options)?;
        if info.path != path {
            return Err(StoreError::Refused(format!(
                "`{}` changed while it was being imported; try again",
                source.display()
            )));
        }
        Ok(path)
    }

    /// The store path [`Store::import_source`] gives `source` under `name`, computed
    /// without writing to the store (but for its stat cache of source hashes).
    pub fn source_path(&self, source: &Path, name: &str) -> Result<StorePath> {
        let resolved = std::fs::canonicalize(source).map_err(StoreError::io("resolve", source))?;
        if let Ok(root) = std::fs::canonicalize(&self.root) {
            if root.starts_with(&resolved) {
                return Err(StoreError::Refused(format!(
                    "`{}` holds the store root `{}`: importing it would copy the store into \
                     itself; import a folder beside the store instead",
                    source.display(),
                    root.display()
                )));
            }
        }
        let nar_hash = import_cache::nar_hash(self, &resolved)?;
        Ok(self.store_dir.make_fixed_output_path(
            FileIngestionMethod::Recursive,
            &nar_hash,
            name,
            &BTreeSet::new(),
            false,
        )?)
    }

    /// Adds `contents` as a text path (how `.drv` files and `builtins.toFile` are stored).
    pub fn add_text(
        &self,
        name: &str,
        contents: &[u8],
        references: &BTreeSet<StorePath>,
    ) -> Result<ValidPathInfo> {
        self.add_text_as(name, contents, references, false)
    }

    /// Adds the `.drv` file `name`, the text `aterm` of a derivation whose references are
    /// `references`: [`Store::add_text`], with a linked record ([`metadata::link`]), which
    /// costs no inode. (A text that is not such a derivation's would read as a damaged
    /// record, never as other metadata: reading a linked record checks it.)
    pub fn add_derivation(
        &self,
        name: &str,
        aterm: &[u8],
        references: &BTreeSet<StorePath>,
    ) -> Result<ValidPathInfo> {
        debug_assert!(name.ends_with(".drv") && aterm.starts_with(b"Derive("));
        self.add_text_as(name, aterm, references, true)
    }

    fn add_text_as(
        &self,
        name: &str,
        contents: &[u8],
        references: &BTreeSet<StorePath>,
        linked: bool,
    ) -> Result<ValidPathInfo> {
        let hash = Hash::sha256(contents);
        let path = self.store_dir.make_text_path(name, &hash, references)?;
        if let Some(info) = self.query_path_info(&path)? {
            return Ok(info);
        }
        // (The references are checked once, under the path's lock, before it is valid.)
        let _gc = self.lock_gc_shared()?;
        let info = metadata::text_info(path, contents, references.clone(), 0);
        let lock = self.lock_path(&info.path)?;
        // Written in place, not staged and renamed: under the path's lock and its pending
        // marker, a file cut short by a kill is a leftover like any other (one directory
        // entry less to make and remove, and no rename across directories).
        let place = |dest: &Path| fsutil::write_canonical_file(dest, contents, false);
        self.register_locked(info, linked, &lock, place)
    }

    /// Registers a canonical tree at `staged` (on the store's filesystem) as `info.path`:
    /// takes the path's lock, keeps an existing valid copy if there is one, otherwise
    /// replaces any unregistered leftover, renames the tree into place and then writes the
    /// metadata record — the step that makes the path valid.
    pub fn register_staged(&self, staged: &Path, info: ValidPathInfo) -> Result<ValidPathInfo> {
        let lock = self.lock_path(&info.path)?;
        self.register_staged_locked(staged, info, &lock)
    }

    /// [`Store::register_staged`] for a caller that already holds the path's lock
    /// (from [`Store::lock_path`]), such as a build that locked its outputs before starting.
    pub fn register_staged_locked(
        &self,
        staged: &Path,
        info: ValidPathInfo,
        lock: &FileLock,
    ) -> Result<ValidPathInfo> {
        self.register_locked(info, false, lock, |dest| fsutil::move_sealed(staged, dest))
    }

    /// [`Store::register_staged_locked`], where `place` puts the contents at the store
    /// entry it is given; with a linked record if `linked` (a `.drv` file from
    /// [`Store::add_derivation`]) and one can be made.
    fn register_locked(
        &self,
        mut info: ValidPathInfo,
        linked: bool,
        _lock: &FileLock,
        place: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<ValidPathInfo> {
        if let Some(existing) = self.query_path_info(&info.path)? {
            return Ok(existing);
        }
        for r in &info.references {
            if r != &info.path && !self.is_valid(r)? {
                return Err(StoreError::MissingReference {
                    path: self.print(&info.path),
                    reference: self.print(r),
                });
            }
        }
        let dest = self.physical_path(&info.path);
        // The marker names the store entry until its record exists, so that a process killed
        // in between leaves something the next idle open can find without a full scan.
        let marker = self.mark_pending(&info.path)?;
        if std::fs::symlink_metadata(&dest).is_ok() {
            fsutil::remove_tree(&dest)?;
            self.observer.recovered(&dest);
        }
        if let Err(e) = place(&dest) {
            // Nothing half-placed is kept (it is invalid, but why wait for a sweep).
            let _ = fsutil::remove_tree(&dest);
            let _ = std::fs::remove_file(&marker);
            return Err(e);
        }
        if info.registration_time == 0 {
            info.registration_time = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
        }
        if !(linked && metadata::link(self, &info.path)) {
            metadata::write(self, &info)?;
        }
        std::fs::remove_file(&marker).map_err(StoreError::io("remove", &marker))?;
        Ok(info)
    }

    /// Marks the store entry of `path` as in transition (being registered or deleted).
    ///
    /// The marker is a hard link to one empty file (`pending-marker` beside `pending/`):
    /// it costs a directory entry, not an inode. (On ext4, each inode allocated and freed
    /// makes later allocations slower for a while, and a build registers several paths.)
    pub(crate) fn mark_pending(&self, path: &StorePath) -> Result<PathBuf> {
        let marker = self.pending_dir().join(path.to_string());
        let template = self.var_dir().join("pending-marker");
        for _ in 0..2 {
            match std::fs::hard_link(&template, &marker) {
                Ok(()) => return Ok(marker),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(marker),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // Not created yet (or removed): create it, without truncating a
                    // concurrent process's.
                    let _ = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&template);
                }
                Err(_) => break,
            }
        }
        // A filesystem without hard links: a file of its own.
        std::fs::File::create(&marker).map_err(StoreError::io("create", &marker))?;
        Ok(marker)
    }

    /// Markers of store entries in transition.
    pub(crate) fn pending_dir(&self) -> PathBuf {
        self.var_dir().join("pending")
    }

    /// Prepares a tree that a build wrote at `staged` (on the store's filesystem) for
    /// registration as `path`: canonicalises it in place, NAR-hashes it and scans it with
    /// `references`, looking for the hash parts of its candidates (the build's input
    /// closure and its own outputs).
    pub fn prepare_output(
        &self,
        staged: &Path,
        path: &StorePath,
        references: crate::compat::refscan::RefScanner,
        deriver: Option<&StorePath>,
        ca: Option<String>,
    ) -> Result<ValidPathInfo> {
        fsutil::canonicalise_in_place(staged)?;
        let pipe = dump_path(staged, pipe::DigestPipe::with_scanner(None, references))?;
        let d = pipe.finish().map_err(StoreError::io("hash", staged))?;
        Ok(ValidPathInfo {
            path: path.clone(),
            nar_hash: d.sha256,
            nar_size: d.size,
            references: d.references,
            deriver: deriver.cloned(),
            ca,
            registration_time: 0,
            signatures: Vec::new(),
            ultimate: true,
        })
    }

    /// [`Store::prepare_output`] and [`Store::register_staged`] in one.
    pub fn register_output(
        &self,
        staged: &Path,
        path: &StorePath,
        candidates: &BTreeSet<StorePath>,
        deriver: Option<&StorePath>,
        ca: Option<String>,
    ) -> Result<ValidPathInfo> {
        let _gc = self.lock_gc_shared()?;
        let references = crate::compat::refscan::RefScanner::new(candidates);
        let info = self.prepare_output(staged, path, references, deriver, ca)?;
        self.register_staged(staged, info)
    }

    /// Makes `link` (e.g. `./result`) a symlink to `path` and registers it as an indirect
    /// GC root: the path stays alive as long as the link exists and points to it.
    pub fn add_indirect_root(&self, link: &Path, path: &StorePath) -> Result<()> {
        gc::add_indirect_root(self, link, path)
    }

    /// Deletes every valid path not reachable from a root (or only lists them with
    /// `dry_run`). Waits until no other process is adding or building.
    pub fn collect_garbage(&self, dry_run: bool) -> Result<GcReport> {
        gc::collect(self, dry_run)
    }

    /// Checks every valid path: presence, references, and with `check_contents` the NAR
    /// hash and size.
    pub fn verify(&self, check_contents: bool) -> Result<VerifyReport> {
        verify::verify(self, check_contents)
    }
}

/// The references of valid paths already read, for [`Store::closure_cached`]. Sound only
/// while nothing can delete those paths — a path's references never change while it is
/// valid — so its holder holds the store's GC lock (as a build executor does for its
/// lifetime); a path made invalid and valid again could have other references.
#[derive(Default)]
pub struct ReferenceCache(Mutex<NumberedPaths>);

/// Paths numbered in the order first met, with the references of those read so far.
#[derive(Default)]
pub struct NumberedPaths {
    numbers: std::collections::HashMap<StorePath, u32>,
    paths: Vec<StorePath>,
    references: Vec<Option<Arc<[u32]>>>,
}

impl NumberedPaths {
    /// The number of `path`, given it now if it has none.
    fn number(&mut self, path: StorePath) -> u32 {
        if let Some(n) = self.numbers.get(&path) {
            return *n;
        }
        let n = self.paths.len() as u32;
        self.numbers.insert(path.clone(), n);
        self.paths.push(path);
        self.references.push(None);
        n
    }
}

/// The byte of `locks/paths.lock` that locks `path`: the hash part is already uniformly
/// distributed, so its first 8 bytes will do.
fn path_lock_offset(path: &StorePath) -> u64 {
    let mut offset = [0u8; 8];
    if let Ok(digest) = crate::compat::nixbase32::decode(path.hash_part().as_bytes(), 20) {
        offset.copy_from_slice(&digest[..8]);
    }
    u64::from_le_bytes(offset)
}

/// The `ca` field of a content-addressed path, in Nix's text form.
pub fn content_address(method: FileIngestionMethod, hash: &Hash) -> String {
    let r = if method == FileIngestionMethod::Recursive {
        "r:"
    } else {
        ""
    };
    format!("fixed:{r}{}", hash.to_nix32_prefixed())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn store(dir: &Path) -> Store {
        Store::open(&dir.join("root"), StoreDir::default(), Arc::new(Silent)).unwrap()
    }

    /// A text path `name` whose contents are its name, referring to `refs`.
    fn add_named_text(s: &Store, name: &str, refs: &[&StorePath]) -> StorePath {
        let refs: BTreeSet<StorePath> = refs.iter().map(|r| (*r).clone()).collect();
        s.add_text(name, name.as_bytes(), &refs).unwrap().path
    }

    #[test]
    fn register_output_canonicalises_and_scans_references() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        // A dependency, and an output that mentions it and itself.
        let src = tmp.path().join("dep");
        std::fs::write(&src, b"dep").unwrap();
        let dep = s.add_path(&src, &AddOptions::default()).unwrap().path;
        let out_path = StorePath::from_base_name("9frz7rl3ni9y2yn0qscny8v1iq391zsh-out").unwrap();
        let unrelated = StorePath::from_base_name("70jzzwfcc6lp7w8f91acm19j5q6n839a-t1").unwrap();
        let staging = fsutil::Staging::new(&s.tmp_dir()).unwrap();
        let built = staging.path().join("out");
        std::fs::create_dir(&built).unwrap();
        std::fs::write(
            built.join("script"),
            format!("exec {}/bin/x; me={}", s.print(&dep), s.print(&out_path)),
        )
        .unwrap();
        std::fs::set_permissions(
            built.join("script"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        std::fs::write(built.join("data"), b"plain").unwrap();
        std::fs::set_permissions(built.join("data"), std::fs::Permissions::from_mode(0o2664))
            .unwrap();
        std::fs::set_permissions(&built, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let candidates = BTreeSet::from([dep.clone(), out_path.clone(), unrelated]);
        let info = s
            .register_output(&built, &out_path, &candidates, None, None)
            .unwrap();
        assert_eq!(info.references, BTreeSet::from([dep, out_path.clone()]));
        let physical = s.physical_path(&out_path);
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&physical), 0o555);
        assert_eq!(mode(&physical.join("script")), 0o555);
        assert_eq!(mode(&physical.join("data")), 0o444);
        assert_eq!(
            std::fs::symlink_metadata(physical.join("data"))
                .unwrap()
                .mtime(),
            1
        );
        assert_eq!(nar_hash_path(&physical).unwrap().0, info.nar_hash);
        assert!(s.verify(true).unwrap().damaged.is_empty());
    }

    #[test]
    fn special_files_are_refused_by_name_and_nothing_becomes_valid() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let src = tmp.path().join("tree");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("ok"), b"x").unwrap();
        let sock = src.join("sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        match s.add_path(&src, &AddOptions::default()) {
            Err(StoreError::UnsupportedFileType { path, kind }) => {
                assert_eq!(path, sock);
                assert_eq!(kind, "socket");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(s.valid_paths().unwrap().is_empty());
        assert_eq!(
            std::fs::read_dir(s.tmp_dir()).unwrap().count(),
            0,
            "staging is cleaned up"
        );
    }

    #[test]
    fn damage_is_reported_and_leftovers_are_swept() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let src = tmp.path().join("f");
        std::fs::write(&src, b"content").unwrap();
        let p = s.add_path(&src, &AddOptions::default()).unwrap().path;
        let physical = s.physical_path(&p);
        std::fs::set_permissions(&physical, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&physical, b"CONTENT").unwrap();
        assert!(
            s.verify(false).unwrap().damaged.is_empty(),
            "presence alone looks fine"
        );
        let report = s.verify(true).unwrap();
        assert_eq!(report.damaged.len(), 1);
        assert!(
            report.damaged[0].problem.contains("NAR hash"),
            "{:?}",
            report.damaged
        );
        // An unregistered directory that a killed add leaves (with its pending marker) is
        // swept by the next idle open; one without a marker is someone else's (Nix's, in a
        // shared root): never removed, not even by a full collection, and listed as foreign.
        let leftover = StorePath::from_base_name("ynmvlz3kmhchs4qh2b6w5wdi2mvrnibf-foo").unwrap();
        std::fs::create_dir(s.physical_path(&leftover)).unwrap();
        s.mark_pending(&leftover).unwrap();
        let stray = s
            .real_store_dir()
            .join("70jzzwfcc6lp7w8f91acm19j5q6n839a-t1");
        std::fs::create_dir(&stray).unwrap();
        std::fs::create_dir(s.tmp_dir().join("stage-1-x")).unwrap();
        let old_lock = s.locks_dir().join("70jzzwfcc6lp7w8f91acm19j5q6n839a.lock");
        std::fs::write(&old_lock, b"").unwrap();
        let s2 = store(tmp.path());
        assert!(
            !old_lock.exists(),
            "per-path lock files of earlier versions are swept"
        );
        assert!(!s2.physical_path(&leftover).exists());
        assert_eq!(std::fs::read_dir(s2.pending_dir()).unwrap().count(), 0);
        assert_eq!(std::fs::read_dir(s2.tmp_dir()).unwrap().count(), 0);
        assert!(s2.is_valid(&p).unwrap());
        assert!(stray.exists());
        let links = s2.real_store_dir().join(".links");
        std::fs::create_dir(&links).unwrap();
        let report = s2.collect_garbage(false).unwrap();
        assert!(
            stray.exists() && links.exists(),
            "gc deleted what it did not register"
        );
        assert!(
            report.deleted.iter().all(|d| !d.contains("-t1")),
            "{report:?}"
        );
        let verify = s2.verify(false).unwrap();
        assert!(verify.damaged.is_empty(), "{verify:?}");
        assert_eq!(
            verify.foreign,
            [links.display().to_string(), stray.display().to_string()]
        );
    }

    #[test]
    fn concurrent_atomic_writes_of_one_file_all_succeed() {
        // Realisation records, pins.lock and the import cache are replaced this way by
        // processes and threads at once; a shared temporary name made one of them fail.
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("record.json");
        std::thread::scope(|scope| {
            let writers: Vec<_> = (0..8)
                .map(|i| {
                    let file = &file;
                    scope.spawn(move || {
                        for round in 0..50 {
                            write_atomic(file, format!("{i}/{round}").as_bytes())?;
                        }
                        Ok::<(), StoreError>(())
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap().unwrap();
            }
        });
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            1,
            "no temporary left"
        );
    }

    #[test]
    fn a_lock_held_by_another_thread_of_this_process_is_waited_for_silently() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl Observer for Count {
            fn waiting_for_lock(&self, _what: &str, _lock: &Path) {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let count = Arc::new(Count(Default::default()));
        let s = Store::open(tmp.path(), StoreDir::default(), count.clone()).unwrap();
        let p = StorePath::from_base_name("ynmvlz3kmhchs4qh2b6w5wdi2mvrnibf-foo").unwrap();
        let held = s.lock_path(&p).unwrap();
        assert!(
            s.try_lock_path(&p).unwrap().is_none(),
            "busy for another open"
        );
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| s.lock_path(&p).map(|_| ()));
            std::thread::sleep(std::time::Duration::from_millis(100));
            drop(held);
            waiter.join().unwrap().unwrap();
        });
        assert_eq!(
            count.0.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "a wait on this process's own lock is not announced as another process's"
        );
        let _again = s.try_lock_path(&p).unwrap().expect("free once released");
    }

    #[test]
    fn a_staging_directory_in_use_is_not_swept_by_another_open() {
        // A download being unpacked while another process opens the store (CI lost two
        // fetches this way): the open must not take the store for idle.
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let staging = s.staging().unwrap();
        std::fs::write(staging.path().join("download"), b"half").unwrap();
        let _s2 = store(tmp.path());
        assert!(
            staging.path().join("download").exists(),
            "swept while in use"
        );
        let dir = staging.path().to_path_buf();
        drop(staging);
        assert!(!dir.exists(), "removed when dropped");
        std::fs::create_dir(s.tmp_dir().join("stage-1-x")).unwrap();
        let _s3 = store(tmp.path());
        assert_eq!(
            std::fs::read_dir(s.tmp_dir()).unwrap().count(),
            0,
            "the lock is released with the staging directory"
        );
    }

    #[test]
    fn path_locks_create_no_files_and_do_not_block_other_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let other = store(tmp.path());
        let before = std::fs::read_dir(s.locks_dir()).unwrap().count();
        let a = StorePath::from_base_name("70jzzwfcc6lp7w8f91acm19j5q6n839a-t1").unwrap();
        let b = StorePath::from_base_name("ynmvlz3kmhchs4qh2b6w5wdi2mvrnibf-foo").unwrap();
        let _held = s.lock_path(&a).unwrap();
        // Another open (as another process would) gets a different path's lock at once…
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let got = other.lock_path(&b).map(|_| ());
            tx.send(()).unwrap();
            got
        });
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("locking another path waited");
        waiter.join().unwrap().unwrap();
        let after = std::fs::read_dir(s.locks_dir()).unwrap().count();
        assert!(after <= before + 1, "one lock file for all paths");
    }

    #[test]
    fn a_record_a_power_loss_left_empty_is_absent_and_the_path_can_be_added_again() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let src = tmp.path().join("f");
        std::fs::write(&src, b"content").unwrap();
        let p = s.add_path(&src, &AddOptions::default()).unwrap().path;
        let record = metadata::record_path(&s, &p);
        std::fs::write(&record, b"").unwrap();
        assert!(!s.is_valid(&p).unwrap());
        assert!(s.query_path_info(&p).unwrap().is_none());
        assert!(!s.valid_paths().unwrap().contains(&p));
        let again = s.add_path(&src, &AddOptions::default()).unwrap();
        assert_eq!(again.path, p);
        assert!(s.is_valid(&p).unwrap());
        assert!(s.verify(true).unwrap().damaged.is_empty());
    }

    #[test]
    fn a_busy_lock_is_announced_before_waiting() {
        struct Recorder(std::sync::Mutex<Vec<String>>);
        impl Observer for Recorder {
            fn waiting_for_lock(&self, what: &str, _lock: &Path) {
                self.0.lock().unwrap().push(what.to_string());
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let _s = store(tmp.path());
        let recorder = Arc::new(Recorder(Default::default()));
        let other = Store::open(
            &tmp.path().join("root"),
            StoreDir::default(),
            recorder.clone(),
        )
        .unwrap();
        let p = StorePath::from_base_name("70jzzwfcc6lp7w8f91acm19j5q6n839a-t1").unwrap();
        // Another process's lock: the byte locked on an open of the file that this
        // process's lock registry knows nothing of (as another process's would be).
        let held = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(other.locks_dir().join("paths.lock"))
            .unwrap();
        let range = nix::libc::flock {
            l_type: nix::libc::F_WRLCK as i16,
            l_whence: nix::libc::SEEK_SET as i16,
            l_start: (path_lock_offset(&p) & (i64::MAX as u64)) as i64,
            l_len: 1,
            l_pid: 0,
        };
        use std::os::fd::AsRawFd;
        nix::fcntl::fcntl(held.as_raw_fd(), nix::fcntl::FcntlArg::F_OFD_SETLK(&range)).unwrap();
        let waiter = std::thread::spawn(move || other.lock_path(&p).map(|_| ()));
        let start = std::time::Instant::now();
        while recorder.0.lock().unwrap().is_empty() {
            assert!(
                start.elapsed().as_secs() < 10,
                "the wait was never announced"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!waiter.is_finished(), "the lock is still held");
        drop(held);
        waiter.join().unwrap().unwrap();
        assert_eq!(
            recorder.0.lock().unwrap().as_slice(),
            ["/nix/store/70jzzwfcc6lp7w8f91acm19j5q6n839a-t1"]
        );
    }

    #[test]
    fn a_foreign_store_is_not_adopted() {
        let tmp = tempfile::tempdir().unwrap();
        let nix_store = tmp
            .path()
            .join("root/nix/store/70jzzwfcc6lp7w8f91acm19j5q6n839a-t1");
        std::fs::create_dir_all(&nix_store).unwrap();
        let err = Store::open(
            &tmp.path().join("root"),
            StoreDir::default(),
            Arc::new(Silent),
        )
        .unwrap_err();
        assert!(matches!(err, StoreError::Refused(_)), "{err:?}");
        assert!(nix_store.exists());
    }

    #[test]
    fn a_text_path_with_a_missing_reference_is_refused_and_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let missing = StorePath::from_base_name("70jzzwfcc6lp7w8f91acm19j5q6n839a-t1").unwrap();
        let refs = BTreeSet::from([missing.clone()]);
        let err = s.add_text("a.drv", b"Derive()", &refs).unwrap_err();
        assert!(
            matches!(&err, StoreError::MissingReference { reference, .. } if reference.ends_with("-t1")),
            "{err}"
        );
        let path = s
            .store_dir()
            .make_text_path("a.drv", &Hash::sha256(b"Derive()"), &refs)
            .unwrap();
        assert!(!s.is_valid(&path).unwrap());
        assert!(!s.physical_path(&path).exists(), "nothing in the store");
        let left: Vec<_> = std::fs::read_dir(s.tmp_dir()).unwrap().collect();
        assert!(left.is_empty(), "no staged file left: {left:?}");
        assert_eq!(std::fs::read_dir(s.pending_dir()).unwrap().count(), 0);
    }

    /// A `.drv` text naming `source`, and its references.
    fn derivation_text(s: &Store, source: &StorePath) -> (String, BTreeSet<StorePath>) {
        let text = format!(
            "Derive([(\"out\",\"/nix/store/70jzzwfcc6lp7w8f91acm19j5q6n839a-a\",\"\",\"\")],\
             [],[\"{}\"],\"x86_64-linux\",\"/bin/sh\",[],[(\"name\",\"a\")])",
            s.print(source)
        );
        (text, BTreeSet::from([source.clone()]))
    }

    #[test]
    fn a_derivation_s_record_is_a_link_to_its_file_and_reads_as_its_json_record_would() {
        use std::os::unix::fs::MetadataExt;
        let (tmp, json_tmp) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (s, json_store) = (store(tmp.path()), store(json_tmp.path()));
        let source = s.add_text("src", b"x", &BTreeSet::new()).unwrap().path;
        json_store.add_text("src", b"x", &BTreeSet::new()).unwrap();
        let (text, refs) = derivation_text(&s, &source);
        let added = s.add_derivation("a.drv", text.as_bytes(), &refs).unwrap();
        let path = added.path.clone();
        let record = metadata::record_path(&s, &path);
        let inode = |p: &Path| std::fs::symlink_metadata(p).unwrap().ino();
        assert_eq!(
            inode(&record),
            inode(&s.physical_path(&path)),
            "the record is the file"
        );
        // Everything a JSON record of the same text says, but the time of registration.
        let from_json = json_store
            .add_text("a.drv", text.as_bytes(), &refs)
            .unwrap();
        assert!(std::fs::read(metadata::record_path(&json_store, &path))
            .unwrap()
            .starts_with(b"{"));
        let read = s.query_path_info(&path).unwrap().unwrap();
        let untimed = |i: &ValidPathInfo| ValidPathInfo {
            registration_time: 0,
            ..i.clone()
        };
        assert_eq!(untimed(&read), untimed(&from_json));
        assert_eq!(untimed(&read), untimed(&added));
        assert!(read.registration_time > 0);
        let mut reader = metadata::ReferenceReader::new(&s).unwrap();
        assert_eq!(reader.references(&s, &path).unwrap(), Some(refs.clone()));
        // Changed in place (the record with it): a damaged record, not other metadata.
        let file = s.physical_path(&path);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&file, text.replace("/bin/sh", "/bin/xx")).unwrap();
        for err in [
            s.query_path_info(&path).unwrap_err(),
            reader.references(&s, &path).unwrap_err(),
        ] {
            assert!(
                matches!(&err, StoreError::CorruptMetadata { reason, .. } if reason.contains("not this path's")),
                "{err}"
            );
        }
        // The collector deletes both names of it.
        std::fs::write(&file, &text).unwrap();
        assert!(s.is_valid(&path).unwrap());
        s.collect_garbage(false).unwrap();
        assert!(!s.is_valid(&path).unwrap());
        assert!(!record.exists() && !file.exists());
    }

    #[test]
    fn a_derivation_gets_a_json_record_where_no_link_can_be_made() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let source = s.add_text("src", b"x", &BTreeSet::new()).unwrap().path;
        let (text, refs) = derivation_text(&s, &source);
        let path = s
            .store_dir()
            .make_text_path("a.drv", &Hash::sha256(text.as_bytes()), &refs)
            .unwrap();
        // An empty record, as a power loss can leave: the path is not valid, and the record
        // is in the way of a link.
        let record = metadata::record_path(&s, &path);
        std::fs::write(&record, b"").unwrap();
        assert!(!s.is_valid(&path).unwrap());
        let added = s.add_derivation("a.drv", text.as_bytes(), &refs).unwrap();
        assert_eq!(s.query_path_info(&path).unwrap(), Some(added));
        assert!(std::fs::read(&record).unwrap().starts_with(b"{"));
    }

    #[test]
    fn the_shared_gc_lock_is_one_while_any_guard_lives_and_freed_with_the_last() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let clone = s.clone();
        let first = s.lock_gc_shared().unwrap();
        let second = clone.lock_gc_shared().unwrap();
        assert!(
            Arc::ptr_eq(&first.0, &second.0),
            "one lock for the store and its clone"
        );
        // Another process's (here: another open file's) exclusive lock waits for it.
        assert!(s.try_lock_gc_exclusive().unwrap().is_none());
        drop(first);
        assert!(
            s.try_lock_gc_exclusive().unwrap().is_none(),
            "a guard still lives"
        );
        drop(second);
        let exclusive = s.try_lock_gc_exclusive().unwrap();
        assert!(exclusive.is_some(), "the last guard freed the lock");
        drop(exclusive);
        // A new guard takes the lock again.
        let third = s.lock_gc_shared().unwrap();
        assert!(s.try_lock_gc_exclusive().unwrap().is_none());
        drop(third);
    }

    #[test]
    fn a_cached_closure_equals_the_closure_and_reads_each_record_once() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let add = |name: &str, refs: &[&StorePath]| add_named_text(&s, name, refs);
        let base = add("base", &[]);
        let left = add("left", &[&base]);
        let right = add("right", &[&base]);
        let top = add("top", &[&left, &right]);
        let other = add("other", &[]);
        let cache = ReferenceCache::default();
        for roots in [vec![top.clone()], vec![left.clone(), other.clone()]] {
            assert_eq!(
                s.closure_cached(roots.clone(), &cache).unwrap(),
                s.closure(roots).unwrap()
            );
        }
        assert_eq!(
            s.closure([top.clone()]).unwrap(),
            BTreeSet::from([base.clone(), left, right, top.clone()])
        );
        // With the records gone, the cache still answers for what it has read, and an
        // unread path is still refused as invalid.
        std::fs::rename(s.db_dir(), tmp.path().join("db-away")).unwrap();
        assert_eq!(s.closure_cached([top.clone()], &cache).unwrap().len(), 4);
        assert!(s.closure([top]).is_err());
        let unread = StorePath::from_base_name("70jzzwfcc6lp7w8f91acm19j5q6n839a-t1").unwrap();
        assert!(s.closure_cached([unread], &cache).is_err());
    }

    #[test]
    fn gc_keeps_roots_closures_and_deletes_referrers_first() {
        let tmp = tempfile::tempdir().unwrap();
        let s = store(tmp.path());
        let add = |name: &str, refs: &[&StorePath]| add_named_text(&s, name, refs);
        let base = add("base", &[]);
        let mid = add("mid", &[&base]);
        let top = add("top", &[&mid]);
        let lone = add("lone", &[]);
        let orphan_base = add("orphan-base", &[]);
        let orphan_top = add("orphan-top", &[&orphan_base]);
        let link = tmp.path().join("result");
        s.add_indirect_root(&link, &top).unwrap();
        let dry = s.collect_garbage(true).unwrap();
        assert_eq!(dry.deleted.len(), 3);
        assert!(s.is_valid(&lone).unwrap());
        let report = s.collect_garbage(false).unwrap();
        let pos = |p: &StorePath| {
            report
                .deleted
                .iter()
                .position(|d| d == &s.print(p))
                .unwrap()
        };
        assert!(
            pos(&orphan_top) < pos(&orphan_base),
            "referrers are deleted first"
        );
        for p in [&base, &mid, &top] {
            assert!(s.is_valid(p).unwrap());
        }
        for p in [&lone, &orphan_base, &orphan_top] {
            assert!(!s.is_valid(p).unwrap() && !s.physical_path(p).exists());
        }
        std::fs::remove_file(&link).unwrap();
        assert_eq!(s.collect_garbage(false).unwrap().deleted.len(), 3);
        assert!(s.valid_paths().unwrap().is_empty());
    }
}
