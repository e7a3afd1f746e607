//! Publishing store paths to a Nix binary cache, written as Nix 2.8 writes one:
//! `nix-cache-info`, `<hash>.narinfo` (signed if a key is given), `nar/<filehash>.nar<ext>`
//! compressed, optional `<hash>.ls` listings and `log/<drv>` build logs. Does I/O: reads
//! the store, writes a directory (`file://`) or uploads by HTTP `PUT` (`http(s)://`, Nix's
//! `http-binary-cache` protocol), both behind [`CacheTransport`].
//!
//! Each NAR is streamed: dumped from the store, hashed, compressed (on several threads
//! for large NARs) and hashed again into a temporary file, never held in memory; it must
//! match the store's record, so damage is never published. Paths are published in
//! dependency order, several at once: a NAR is complete before its narinfo appears, and a
//! narinfo appears only after those of its references, so an interrupted push never
//! leaves a narinfo pointing at something missing. A path whose narinfo is present is
//! not uploaded again.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use super::compression::Compression;
use super::{dump_path, Result, Store, StoreError};
use crate::compat::hash::Hasher;
use crate::compat::narinfo::{ContentAddress, NarInfo};
use crate::compat::signing::{SecretKey, Signature};
use crate::compat::{Hash, HashAlgo, StoreDir, StorePath};

/// NARs at least this large are compressed on several threads (a multi-threaded xz
/// encoder only splits inputs larger than its 24 MiB blocks).
const PARALLEL_COMPRESSION_MIN: u64 = 32 << 20;

/// Content types of what is uploaded, as Nix's `http-binary-cache` sends them.
const NAR_TYPE: &str = "application/x-nix-nar";
const NARINFO_TYPE: &str = "text/x-nix-narinfo";
const CACHE_INFO_TYPE: &str = "text/x-nix-cache-info";
const LISTING_TYPE: &str = "application/json";
const LOG_TYPE: &str = "text/plain; charset=utf-8";

/// Where a cache lives: a directory, or an HTTP(S) base URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheUrl {
    /// `file:///dir` or a plain directory.
    File(PathBuf),
    /// `http://…` or `https://…`, without a trailing slash.
    Http(String),
}

/// The parameters of a cache URL that ksbuild understands (`?compression=…`, as in
/// Nix's store URLs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlParams {
    /// `compression=`.
    pub compression: Option<Compression>,
    /// `write-nar-listing=1`.
    pub write_nar_listing: Option<bool>,
}

impl CacheUrl {
    /// Parses a cache URL: `file:///abs/dir`, `http(s)://host[:port]/prefix`, or a plain
    /// directory. Query parameters `compression` and `write-nar-listing` are returned;
    /// others are refused rather than ignored.
    pub fn parse(text: &str) -> Result<(CacheUrl, UrlParams)> {
        let refuse = |why: String| StoreError::BadCacheUrl {
            url: text.to_string(),
            reason: why,
        };
        let (base, query) = text.split_once('?').unwrap_or((text, ""));
        let mut params = UrlParams::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "compression" => {
                    params.compression = Some(Compression::parse(value).map_err(|e| refuse(e.to_string()))?)
                }
                "write-nar-listing" => params.write_nar_listing = Some(value == "1" || value == "true"),
                _ => return Err(refuse(format!("unknown parameter `{key}`; ksbuild understands `compression` and `write-nar-listing`"))),
            }
        }
        let url = if let Some(dir) = base.strip_prefix("file://") {
            if !dir.starts_with('/') {
                return Err(refuse(
                    "a `file://` URL needs an absolute path (`file:///dir`)".into(),
                ));
            }
            CacheUrl::File(PathBuf::from(dir))
        } else if base.starts_with("http://") || base.starts_with("https://") {
            CacheUrl::Http(base.trim_end_matches('/').to_string())
        } else if base.contains("://") {
            return Err(refuse(
                "only `file://`, `http://` and `https://` caches are supported (read S3 buckets through their HTTP path-style URL)".into(),
            ));
        } else {
            CacheUrl::File(PathBuf::from(base))
        };
        Ok((url, params))
    }

    /// The transport that writes to this cache.
    pub fn transport(&self) -> Box<dyn CacheTransport> {
        match self {
            CacheUrl::File(dir) => Box::new(LocalCache { dir: dir.clone() }),
            CacheUrl::Http(base) => Box::new(HttpCache::new(base)),
        }
    }
}

impl std::fmt::Display for CacheUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheUrl::File(dir) => write!(f, "file://{}", dir.display()),
            CacheUrl::Http(base) => f.write_str(base),
        }
    }
}

/// How files reach a cache. Names are relative to the cache root (`nar/….nar.xz`).
pub trait CacheTransport: Sync {
    /// Whether the file `name` exists.
    fn exists(&self, name: &str) -> Result<bool>;
    /// The contents of a small file, or `None` if it does not exist.
    fn read_small(&self, name: &str) -> Result<Option<Vec<u8>>>;
    /// A temporary file to stream a NAR into before [`CacheTransport::put_file`].
    fn temp_file(&self) -> Result<tempfile::NamedTempFile>;
    /// Publishes the finished temporary file as `name`, atomically where the transport can.
    fn put_file(&self, name: &str, file: tempfile::NamedTempFile, content_type: &str)
        -> Result<()>;
    /// Publishes `bytes` as `name`.
    fn put_bytes(&self, name: &str, bytes: &[u8], content_type: &str) -> Result<()>;
    /// Prepares an empty cache (directories a `file://` cache has).
    fn prepare(&self) -> Result<()> {
        Ok(())
    }
}

/// A cache in a local directory. Every file appears by an atomic rename.
struct LocalCache {
    dir: PathBuf,
}

impl CacheTransport for LocalCache {
    fn exists(&self, name: &str) -> Result<bool> {
        let path = self.dir.join(name);
        match fs::symlink_metadata(&path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::Io {
                action: "look for",
                path,
                source: e,
            }),
        }
    }

    fn read_small(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.dir.join(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::Io {
                action: "read",
                path,
                source: e,
            }),
        }
    }

    fn temp_file(&self) -> Result<tempfile::NamedTempFile> {
        // In `nar/`: the rename that publishes it stays on one filesystem.
        let dir = self.dir.join("nar");
        tempfile::Builder::new()
            .prefix(".tmp-")
            .permissions(fs::Permissions::from_mode(0o644))
            .tempfile_in(&dir)
            .map_err(StoreError::io("create a file in", &dir))
    }

    fn put_file(&self, name: &str, file: tempfile::NamedTempFile, _: &str) -> Result<()> {
        let path = self.dir.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(StoreError::io("create", parent))?;
        }
        file.persist(&path).map_err(|e| StoreError::Io {
            action: "write",
            path,
            source: e.error,
        })?;
        Ok(())
    }

    fn put_bytes(&self, name: &str, bytes: &[u8], _: &str) -> Result<()> {
        let path = self.dir.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(StoreError::io("create", parent))?;
        }
        super::fsutil::write_atomic(&path, bytes)
    }

    fn prepare(&self) -> Result<()> {
        // As `nix copy --to file://` leaves them.
        for sub in ["nar", "log", "realisations"] {
            let d = self.dir.join(sub);
            fs::create_dir_all(&d).map_err(StoreError::io("create", &d))?;
        }
        Ok(())
    }
}

/// A cache behind an HTTP server that accepts `PUT` (WebDAV-style): Nix's
/// `http-binary-cache` upload. Existence is asked with `HEAD`; 404, 410 and 403 mean
/// absent, as in Nix (S3 answers 403 for a missing key of an unlistable bucket).
struct HttpCache {
    base: String,
    agent: ureq::Agent,
}

/// Attempts of one request before a transient failure (5xx, connection) is reported.
const HTTP_ATTEMPTS: u32 = 3;

impl HttpCache {
    fn new(base: &str) -> HttpCache {
        HttpCache {
            base: base.to_string(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(20))
                .timeout_read(Duration::from_secs(300))
                .timeout_write(Duration::from_secs(300))
                .build(),
        }
    }

    fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    /// Runs a request, retrying transient failures with a growing pause. `Ok(Err(status))`
    /// is a "not there" answer (404, 410, 403) to a `HEAD` or `GET`.
    #[allow(clippy::result_large_err)]
    fn call(
        &self,
        method: &'static str,
        name: &str,
        mut send: impl FnMut(ureq::Request) -> std::result::Result<ureq::Response, ureq::Error>,
    ) -> Result<std::result::Result<ureq::Response, u16>> {
        let url = self.url(name);
        let mut attempt = 1;
        loop {
            let request = self.agent.request(method, &url);
            match send(request) {
                Ok(response) => return Ok(Ok(response)),
                Err(ureq::Error::Status(code, response)) => {
                    if code < 500 || attempt >= HTTP_ATTEMPTS {
                        // A short plain-text body says why (S3 and WebDAV servers
                        // explain); an HTML error page says nothing the status does not.
                        let detail = response.into_string().unwrap_or_default();
                        let detail = if detail.trim_start().starts_with('<') {
                            String::new()
                        } else {
                            detail
                        };
                        return match code {
                            404 | 410 | 403 if method != "PUT" => Ok(Err(code)),
                            _ => Err(StoreError::Http {
                                method,
                                url,
                                status: Some(code),
                                detail: detail.trim().chars().take(200).collect(),
                            }),
                        };
                    }
                }
                Err(ureq::Error::Transport(t)) => {
                    if attempt >= HTTP_ATTEMPTS {
                        return Err(StoreError::Http {
                            method,
                            url,
                            status: None,
                            detail: t.to_string(),
                        });
                    }
                }
            }
            // A 5xx or a failed connection: try again after a pause.
            std::thread::sleep(Duration::from_millis(500 << attempt));
            attempt += 1;
        }
    }
}

// The closures return ureq's own `Result`, whose error type is large; boxing it would only
// move the allocation into every request.
#[allow(clippy::result_large_err)]
impl CacheTransport for HttpCache {
    fn exists(&self, name: &str) -> Result<bool> {
        Ok(self.call("HEAD", name, |r| r.call())?.is_ok())
    }

    fn read_small(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match self.call("GET", name, |r| r.call())? {
            Ok(response) => {
                let mut bytes = Vec::new();
                response
                    .into_reader()
                    .take(1 << 20)
                    .read_to_end(&mut bytes)
                    .map_err(|e| StoreError::Http {
                        method: "GET",
                        url: self.url(name),
                        status: None,
                        detail: e.to_string(),
                    })?;
                Ok(Some(bytes))
            }
            Err(_) => Ok(None),
        }
    }

    fn temp_file(&self) -> Result<tempfile::NamedTempFile> {
        let dir = std::env::temp_dir();
        tempfile::Builder::new()
            .prefix("ksbuild-push-")
            .tempfile_in(&dir)
            .map_err(StoreError::io("create a file in", &dir))
    }

    fn put_file(
        &self,
        name: &str,
        file: tempfile::NamedTempFile,
        content_type: &str,
    ) -> Result<()> {
        let len = file
            .as_file()
            .metadata()
            .map_err(StoreError::io("read", file.path()))?
            .len();
        let path = file.path().to_path_buf();
        let handle = file.as_file();
        self.call("PUT", name, |r| {
            // Each attempt reads the file from its start.
            let body = ReadAt {
                file: handle,
                offset: 0,
            };
            r.set("Content-Type", content_type)
                .set("Content-Length", &len.to_string())
                .send(BufReader::with_capacity(1 << 20, body))
        })?
        .map(|_| ())
        .map_err(|code| StoreError::Http {
            method: "PUT",
            url: format!("{} (from `{}`)", self.url(name), path.display()),
            status: Some(code),
            detail: String::new(),
        })
    }

    fn put_bytes(&self, name: &str, bytes: &[u8], content_type: &str) -> Result<()> {
        self.call("PUT", name, |r| {
            r.set("Content-Type", content_type).send_bytes(bytes)
        })?
        .map(|_| ())
        .map_err(|code| StoreError::Http {
            method: "PUT",
            url: self.url(name),
            status: Some(code),
            detail: String::new(),
        })
    }
}

/// Reads a file from an offset with `pread` (no shared file position to rewind).
struct ReadAt<'a> {
    file: &'a File,
    offset: u64,
}

impl Read for ReadAt<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = std::os::unix::fs::FileExt::read_at(self.file, buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// Settings of a push.
#[derive(Debug, Clone)]
pub struct PushOptions<'a> {
    /// How NARs are compressed.
    pub compression: Compression,
    /// The key that signs each narinfo, if any.
    pub key: Option<&'a SecretKey>,
    /// Also write `<hash>.ls` listings.
    pub write_nar_listing: bool,
    /// Paths compressed and uploaded at once (≥ 1).
    pub jobs: usize,
    /// Threads of one compressor for large NARs (≥ 1).
    pub compression_threads: u32,
    /// `Priority:` written into a new cache's `nix-cache-info`.
    pub priority: Option<u32>,
    /// `WantMassQuery: 1` in a new cache's `nix-cache-info`.
    pub want_mass_query: bool,
}

/// One path uploaded.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Uploaded {
    /// The store path (logical).
    pub path: String,
    /// The NAR's URL relative to the cache.
    pub url: String,
    /// Size of the uncompressed NAR.
    pub nar_size: u64,
    /// Size of the compressed file.
    pub file_size: u64,
    /// Whether its build log was uploaded too.
    pub log: bool,
}

/// What a push did.
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushReport {
    /// The cache.
    pub cache: String,
    /// Paths uploaded, in the order their narinfos appeared.
    pub uploaded: Vec<Uploaded>,
    /// Paths whose narinfo was already in the cache.
    pub present: Vec<String>,
}

/// Sorts `paths` so that every path comes after its references within the set.
fn dependency_order(paths: &BTreeMap<StorePath, BTreeSet<StorePath>>) -> Vec<StorePath> {
    let mut done: BTreeSet<&StorePath> = BTreeSet::new();
    let mut order = Vec::with_capacity(paths.len());
    // Depth-first from each path, references first; iterative to bound the stack.
    for start in paths.keys() {
        let mut stack: Vec<(&StorePath, bool)> = vec![(start, false)];
        while let Some((p, expanded)) = stack.pop() {
            if done.contains(p) {
                continue;
            }
            if expanded {
                done.insert(p);
                order.push(p.clone());
                continue;
            }
            stack.push((p, true));
            for r in &paths[p] {
                if r != p && paths.contains_key(r) && !done.contains(r) {
                    stack.push((r, false));
                }
            }
        }
    }
    order
}

/// Bytes written through it are hashed and counted on their way to `inner`.
struct Hashing<W> {
    inner: W,
    hasher: Hasher,
    bytes: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            hasher: Hasher::new(HashAlgo::Sha256),
            bytes: 0,
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `nix-cache-info` into a new cache, or checks an existing one's `StoreDir`.
fn ensure_cache_info(
    transport: &dyn CacheTransport,
    url: &CacheUrl,
    store_dir: &StoreDir,
    options: &PushOptions<'_>,
) -> Result<()> {
    match transport.read_small("nix-cache-info")? {
        Some(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let theirs = text
                .lines()
                .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim() == "StoreDir"))
                .map(|(_, v)| v.trim().to_string());
            match theirs {
                Some(dir) if dir != store_dir.as_str() => Err(StoreError::Refused(format!(
                    "the cache `{url}` is for the store directory `{dir}`, not `{store_dir}`; Nix would not use these paths from it. Push to another cache, or use `--store-dir {dir}`"
                ))),
                _ => Ok(()),
            }
        }
        None => {
            let mut text = format!("StoreDir: {store_dir}\n");
            if options.want_mass_query {
                text.push_str("WantMassQuery: 1\n");
            }
            if let Some(p) = options.priority {
                text.push_str(&format!("Priority: {p}\n"));
            }
            transport.put_bytes("nix-cache-info", text.as_bytes(), CACHE_INFO_TYPE)
        }
    }
}

/// The paths published so far (or found present), for ordering narinfos.
struct Published {
    done: Mutex<(BTreeSet<StorePath>, bool)>,
    changed: Condvar,
}

impl Published {
    fn mark(&self, path: &StorePath) {
        let mut g = self.done.lock().unwrap_or_else(|p| p.into_inner());
        g.0.insert(path.clone());
        self.changed.notify_all();
    }
    fn fail(&self) {
        let mut g = self.done.lock().unwrap_or_else(|p| p.into_inner());
        g.1 = true;
        self.changed.notify_all();
    }
    /// Waits until every one of `refs` is published; `false` if the push failed meanwhile.
    fn wait_for(&self, refs: &[&StorePath]) -> bool {
        let mut g = self.done.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if g.1 {
                return false;
            }
            if refs.iter().all(|r| g.0.contains(*r)) {
                return true;
            }
            g = self.changed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Publishes `paths` (callers pass a closure) to the cache at `url`; see the module docs.
/// `on_uploaded` is told of each path as its narinfo appears.
pub fn push_to_binary_cache(
    store: &Store,
    paths: &BTreeSet<StorePath>,
    url: &CacheUrl,
    options: &PushOptions<'_>,
    on_uploaded: &(dyn Fn(&Uploaded) + Sync),
) -> Result<PushReport> {
    let transport = url.transport();
    let transport = transport.as_ref();
    transport.prepare()?;
    ensure_cache_info(transport, url, store.store_dir(), options)?;
    let _gc = store.lock_gc_shared()?;
    let mut graph = BTreeMap::new();
    for p in paths {
        graph.insert(p.clone(), store.path_info(p)?.references);
    }
    let order = dependency_order(&graph);
    let next = Mutex::new(0usize);
    let published = Published {
        done: Mutex::new((BTreeSet::new(), false)),
        changed: Condvar::new(),
    };
    let report = Mutex::new(PushReport {
        cache: url.to_string(),
        ..PushReport::default()
    });
    let first_error: Mutex<Option<StoreError>> = Mutex::new(None);
    let jobs = options.jobs.clamp(1, order.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                let i = {
                    let mut n = next.lock().unwrap_or_else(|p| p.into_inner());
                    let i = *n;
                    *n += 1;
                    i
                };
                let Some(path) = order.get(i) else { return };
                // References outside the push (`--no-closure`) are not waited for.
                let refs: Vec<&StorePath> = graph[path]
                    .iter()
                    .filter(|r| *r != path && graph.contains_key(*r))
                    .collect();
                match push_one(store, transport, path, &refs, options, &published) {
                    Ok(Some(up)) => {
                        on_uploaded(&up);
                        report
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .uploaded
                            .push(up);
                        published.mark(path);
                    }
                    Ok(None) => {
                        report
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .present
                            .push(store.print(path));
                        published.mark(path);
                    }
                    Err(e) => {
                        first_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert(e);
                        published.fail();
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(report.into_inner().unwrap_or_else(|p| p.into_inner()))
}

/// Publishes one path unless its narinfo is present (`None` then).
fn push_one(
    store: &Store,
    transport: &dyn CacheTransport,
    path: &StorePath,
    refs: &[&StorePath],
    options: &PushOptions<'_>,
    published: &Published,
) -> Result<Option<Uploaded>> {
    let narinfo_name = format!("{}.narinfo", path.hash_part());
    if transport.exists(&narinfo_name)? {
        return Ok(None);
    }
    let info = store.path_info(path)?;
    let physical = store.physical_path(path);
    let mut tmp = transport.temp_file()?;
    let tmp_path = tmp.path().to_path_buf();
    let threads = if info.nar_size >= PARALLEL_COMPRESSION_MIN {
        options.compression_threads
    } else {
        1
    };
    let write_err = StoreError::io("write", &tmp_path);
    let (nar_hash, nar_size, file_hash, file_size) = {
        let file = Hashing::new(BufWriter::with_capacity(1 << 20, tmp.as_file_mut()));
        let encoder = options
            .compression
            .encoder(file, threads)
            .map_err(StoreError::io("compress into", &tmp_path))?;
        let nar = dump_path(&physical, Hashing::new(encoder))?;
        let (nar_hash, nar_size) = (nar.hasher.finish(), nar.bytes);
        let mut file = nar.inner.finish().map_err(write_err)?;
        file.flush().map_err(StoreError::io("write", &tmp_path))?;
        (nar_hash, nar_size, file.hasher.finish(), file.bytes)
    };
    if nar_hash != info.nar_hash || nar_size != info.nar_size {
        return Err(StoreError::Refused(format!(
            "`{}` is damaged (NAR hash {} differs from its record {}); not publishing it. Run `ksbuild store verify --check-contents`",
            store.print(path),
            nar_hash.to_sri(),
            info.nar_hash.to_sri()
        )));
    }
    if options.write_nar_listing {
        let listing = listing_of(tmp.as_file_mut(), options.compression, &tmp_path)?;
        transport.put_bytes(&format!("{}.ls", path.hash_part()), &listing, LISTING_TYPE)?;
    }
    let url = format!(
        "nar/{}.nar{}",
        file_hash.to_nix32(),
        options.compression.extension()
    );
    transport.put_file(&url, tmp, NAR_TYPE)?;
    let log = match &info.deriver {
        Some(drv) => upload_log(store, transport, drv)?,
        None => false,
    };
    let narinfo = narinfo_for(store, &info, url.clone(), options, file_hash, file_size)?;
    if !published.wait_for(refs) {
        return Err(StoreError::Refused(format!(
            "not publishing `{}`: the push failed elsewhere",
            store.print(path)
        )));
    }
    transport.put_bytes(
        &narinfo_name,
        narinfo.to_text(store.store_dir()).as_bytes(),
        NARINFO_TYPE,
    )?;
    Ok(Some(Uploaded {
        path: store.print(path),
        url,
        nar_size,
        file_size,
        log,
    }))
}

/// The listing of the NAR compressed into `file`, read back from its start.
fn listing_of(file: &mut File, compression: Compression, path: &Path) -> Result<Vec<u8>> {
    file.rewind().map_err(StoreError::io("read", path))?;
    let decoder = compression
        .decoder(BufReader::with_capacity(1 << 20, &*file))
        .map_err(StoreError::io("decompress", path))?;
    crate::compat::nar_listing::nar_listing(BufReader::new(decoder)).map_err(|source| {
        StoreError::Nar {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Uploads the build log of `drv` as `log/<drv basename>`, if ksbuild has one.
fn upload_log(store: &Store, transport: &dyn CacheTransport, drv: &StorePath) -> Result<bool> {
    let log = store.log_path(drv);
    match fs::read(&log) {
        Ok(text) if !text.is_empty() => {
            transport.put_bytes(&format!("log/{drv}"), &text, LOG_TYPE)?;
            Ok(true)
        }
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::Io {
            action: "read",
            path: log,
            source: e,
        }),
    }
}

/// The narinfo of a path whose NAR was written to `url`.
fn narinfo_for(
    store: &Store,
    info: &super::ValidPathInfo,
    url: String,
    options: &PushOptions<'_>,
    file_hash: Hash,
    file_size: u64,
) -> Result<NarInfo> {
    let physical = store.physical_path(&info.path);
    let corrupt = |reason: String| StoreError::CorruptMetadata {
        path: physical.clone(),
        reason,
    };
    let ca = info
        .ca
        .as_deref()
        .map(ContentAddress::parse)
        .transpose()
        .map_err(|e| corrupt(e.to_string()))?;
    let signatures = info
        .signatures
        .iter()
        .map(|s| Signature::parse(s))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| corrupt(e.to_string()))?;
    let mut narinfo = NarInfo {
        store_path: info.path.clone(),
        url,
        compression: options.compression.as_str().into(),
        file_hash: Some(file_hash),
        file_size: Some(file_size),
        nar_hash: info.nar_hash.clone(),
        nar_size: info.nar_size,
        references: info.references.clone(),
        deriver: info.deriver.clone(),
        system: None,
        signatures,
        ca,
    };
    if let Some(key) = options.key {
        narinfo.sign(store.store_dir(), key).map_err(|e| {
            StoreError::Refused(format!("cannot sign `{}`: {e}", store.print(&info.path)))
        })?;
    }
    Ok(narinfo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(name: &str) -> StorePath {
        let hash = match name {
            "a" => "7rjj86a15146cq1d3qy068lml7n8ykzm",
            "b" => "ffffffffffffffffffffffffffffffff",
            "c" => "00000000000000000000000000000000",
            _ => "11111111111111111111111111111111",
        };
        StorePath::from_base_name(&format!("{hash}-{name}")).unwrap()
    }

    #[test]
    fn references_come_first() {
        // a → b → c, d → a, and self-references.
        let graph: BTreeMap<StorePath, BTreeSet<StorePath>> = [
            (sp("a"), [sp("b"), sp("a")].into()),
            (sp("b"), [sp("c")].into()),
            (sp("c"), [sp("c")].into()),
            (sp("d"), [sp("a")].into()),
        ]
        .into();
        let order = dependency_order(&graph);
        assert_eq!(order.len(), 4);
        let at = |n: &str| order.iter().position(|p| *p == sp(n)).unwrap();
        assert!(at("c") < at("b") && at("b") < at("a") && at("a") < at("d"));
    }

    #[test]
    fn cache_urls() {
        let table = [
            ("file:///srv/cache", CacheUrl::File("/srv/cache".into())),
            ("/srv/cache", CacheUrl::File("/srv/cache".into())),
            (
                "http://127.0.0.1:8080/bucket/",
                CacheUrl::Http("http://127.0.0.1:8080/bucket".into()),
            ),
            (
                "https://c.example",
                CacheUrl::Http("https://c.example".into()),
            ),
        ];
        for (text, want) in table {
            assert_eq!(CacheUrl::parse(text).unwrap().0, want, "{text}");
        }
        let (_, params) =
            CacheUrl::parse("file:///c?compression=zstd&write-nar-listing=1").unwrap();
        assert_eq!(params.compression, Some(Compression::Zstd));
        assert_eq!(params.write_nar_listing, Some(true));
        for bad in ["s3://bucket", "file://relative", "file:///c?priority=3"] {
            assert!(CacheUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
