//! Fixed-output downloads: ksbuild fetches them itself (no build ever has network), from
//! the first mirror that works, verifies the hash and registers the result; a mismatch
//! registers nothing. Does network and file I/O.

pub mod debian;
pub mod debian_version;
pub mod lock;
mod mirrors;
mod unpack;

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use mirrors::{apt_mirrors, Mirrors};
pub use unpack::{
    deb_files, strip_single_top_directory, unpack_deb, unpack_tar, DebFile, UnpackError,
};

use crate::compat::{FileIngestionMethod, Hash, HashAlgo};
use crate::model::{HashFrom, Node, Unpack};
use crate::store::{self, Store, StoreError, ValidPathInfo};

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// `mirror://NAME/…` with no mirrors configured for `NAME`.
    #[error("no mirrors are known for `mirror://{name}/` (needed by `{url}`)")]
    NoMirror { name: String, url: String },
    /// Every URL failed.
    #[error("cannot fetch `{what}`: {}", failures(what, attempts))]
    AllFailed {
        what: String,
        attempts: Vec<(String, String)>,
        /// Where the expected hash is written (none while pinning: it is not known yet).
        from: Option<HashFrom>,
    },
    /// The content does not have the declared hash.
    #[error("hash mismatch for `{url}`:\n  expected: {expected}\n       got: {actual}")]
    HashMismatch {
        url: String,
        expected: String,
        actual: String,
        /// Where the expected hash is written.
        from: HashFrom,
    },
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FetchError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            FetchError::NoMirror { name, .. } => Some(format!(
                "set `KSBUILD_MIRROR_{}=\"http://…\"`, or list it in `~/.config/ksbuild/mirrors.toml`",
                name.to_ascii_uppercase().replace('-', "_")
            )),
            // An upstream-only download is provided as it was pinned, with `ksbuild pin`.
            FetchError::AllFailed {
                what,
                from: Some(HashFrom::Pinned { key, .. }),
                ..
            } => Some(format!(
                "download it elsewhere and provide it: `{}`",
                crate::model::pins::pin_command(key, what)
            )),
            FetchError::AllFailed { .. } => Some(
                "if the file cannot be downloaded here, provide it with `ksbuild store add-fixed` (flat downloads) or \
                 `ksbuild store add-fixed --recursive` (unpacked trees) and it will not be fetched"
                    .into(),
            ),
            FetchError::HashMismatch { from, .. } => Some(match from {
                HashFrom::Declared { at } => format!(
                    "nothing was registered; if the new content is right, update `hash` at `{at}`"
                ),
                HashFrom::Pinned { at, key } => format!(
                    "nothing was registered; the hash is pinned at `{at}`: if the new content is right, \
                     pin it again with `ksbuild pin {key}` (or `ksbuild pin {key} FILE`)"
                ),
                HashFrom::Locked { environment } => format!(
                    "nothing was registered; the hash comes from `sandboxes/{environment}.lock`: if the \
                     archive changed, lock it again with `ksbuild lock {environment}`"
                ),
            }),
            FetchError::Store(e) => e.hint(),
        }
    }
}

/// What each URL tried answered; just the answer when the one URL tried is `what` itself.
fn failures(what: &str, attempts: &[(String, String)]) -> String {
    match attempts {
        [(url, e)] if url == what => e.clone(),
        _ => attempts
            .iter()
            .map(|(u, e)| format!("{u}: {e}"))
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// Downloads `url` into `dest` (a new file). `file://` reads a local file.
fn download(agent: &ureq::Agent, url: &str, dest: &Path) -> Result<u64, String> {
    // A transient failure (a resolver hiccup, a reset connection, a cut transfer) is tried
    // again twice; an answer such as 404, or a name that does not exist, is final.
    let mut attempt = 0;
    loop {
        attempt += 1;
        match download_once(agent, url, dest) {
            Err((_, true)) if attempt < 3 => {
                std::thread::sleep(Duration::from_secs(attempt));
                let _ = std::fs::remove_file(dest);
            }
            Err((e, _)) => return Err(e),
            Ok(n) => return Ok(n),
        }
    }
}

/// One try; the error says whether it is worth another.
fn download_once(agent: &ureq::Agent, url: &str, dest: &Path) -> Result<u64, (String, bool)> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
        .map_err(|e| (e.to_string(), false))?;
    let mut reader: Box<dyn Read> = if let Some(path) = url.strip_prefix("file://") {
        Box::new(std::fs::File::open(path).map_err(|e| (e.to_string(), false))?)
    } else {
        let response = agent.get(url).call().map_err(|e| match e {
            ureq::Error::Status(code, r) => {
                (format!("HTTP {code} {}", r.status_text()), code >= 500)
            }
            ureq::Error::Transport(t) => {
                // Its Display repeats the URL, which the caller already names.
                let mut text = match t.message() {
                    Some(m) => format!("{}: {m}", t.kind()),
                    None => t.kind().to_string(),
                };
                if let Some(cause) = std::error::Error::source(&t) {
                    text.push_str(&format!(": {cause}"));
                }
                let transient = match t.kind() {
                    ureq::ErrorKind::Dns => text.contains("Temporary failure"),
                    ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Io => true,
                    _ => false,
                };
                (text, transient)
            }
        })?;
        Box::new(response.into_reader())
    };
    let n = io::copy(&mut reader, &mut file).map_err(|e| (e.to_string(), true))?;
    file.flush().map_err(|e| (e.to_string(), false))?;
    Ok(n)
}

/// The HTTP client of every download: bounded connect and read times.
pub(crate) fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(15))
        .timeout_read(Duration::from_secs(120))
        .user_agent(concat!("ksbuild/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Downloads `url` (or copies a `file://` URL) into `staging` and unpacks it as asked:
/// returns the file or tree to register.
fn obtain(
    url: &str,
    staging: &Path,
    unpack: Option<Unpack>,
    executable: bool,
) -> Result<PathBuf, String> {
    let download_file = staging.join("download");
    let tree = staging.join("out");
    let _ = std::fs::remove_file(&download_file);
    let _ = store::remove_tree(&tree);
    download(&agent(), url, &download_file)?;
    let unpacked = match unpack {
        Some(Unpack::Deb) => unpack_deb(&download_file, &tree),
        Some(Unpack::Tar) => std::fs::File::open(&download_file)
            .map_err(UnpackError::from)
            .and_then(|f| unpack_tar(io::BufReader::new(f), &tree, url))
            .and_then(|()| strip_single_top_directory(&tree).map_err(UnpackError::from)),
        None => std::fs::rename(&download_file, &tree)
            .map_err(UnpackError::from)
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                let mode = if executable { 0o755 } else { 0o644 };
                std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(mode))
                    .map_err(UnpackError::from)
            }),
    };
    unpacked.map_err(|e| format!("cannot unpack: {e}"))?;
    Ok(tree)
}

fn hash_tree(tree: &Path, method: FileIngestionMethod, algo: HashAlgo) -> Result<Hash, FetchError> {
    Ok(match method {
        FileIngestionMethod::Flat => store::hash_file(tree, algo)?,
        FileIngestionMethod::Recursive => store::dump_nar_hash(tree, algo)?.0,
    })
}

/// The URLs to try for `url` (`mirror://NAME/…` through the mirrors).
fn resolve(mirrors: &Mirrors, url: &str) -> Result<Vec<String>, FetchError> {
    mirrors.resolve(url).ok_or_else(|| FetchError::NoMirror {
        name: url
            .trim_start_matches("mirror://")
            .split('/')
            .next()
            .unwrap_or("")
            .to_string(),
        url: url.to_string(),
    })
}

/// The `out` path of a download node.
fn out_path(node: &Node) -> Result<crate::compat::StorePath, FetchError> {
    node.drv
        .outputs
        .get("out")
        .and_then(|o| o.path.clone())
        .ok_or_else(|| FetchError::AllFailed {
            what: node.key.clone(),
            attempts: vec![("-".into(), "output path not computed".into())],
            from: None,
        })
}

fn register(
    store: &Store,
    tree: &Path,
    node: &Node,
    method: FileIngestionMethod,
    hash: &Hash,
) -> Result<ValidPathInfo, FetchError> {
    let out = out_path(node)?;
    let ca = store::content_address(method, hash);
    Ok(store.register_output(
        tree,
        &out,
        &Default::default(),
        Some(&node.drv_path),
        Some(ca),
    )?)
}

/// A download fetched before its hash is known (pinning): the staged content and its hash.
pub struct Prefetched {
    _staging: store::Staging,
    tree: PathBuf,
    /// How it is hashed.
    pub method: FileIngestionMethod,
    /// Its SHA-256.
    pub hash: Hash,
}

impl Prefetched {
    /// Registers the content as `node`'s output (`node` lowered with this hash pinned).
    pub fn register(&self, store: &Store, node: &Node) -> Result<ValidPathInfo, FetchError> {
        register(store, &self.tree, node, self.method, &self.hash)
    }
}

/// Fetches a download whose hash is not known yet — from `local` (a file the user
/// provides, as `ksbuild pin` does) or else from `url` through the mirrors — unpacks it
/// as `mode` says and hashes it.
pub fn prefetch(
    store: &Store,
    url: &str,
    mode: &str,
    local: Option<&Path>,
    mirrors: &Mirrors,
) -> Result<Prefetched, FetchError> {
    let (unpack, executable, method) = crate::model::pins::mode_parts(mode);
    let urls = match local {
        Some(path) => {
            let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            vec![format!("file://{}", abs.display())]
        }
        None => resolve(mirrors, url)?,
    };
    let staging = store.staging()?;
    let mut attempts = Vec::new();
    for u in &urls {
        match obtain(u, staging.path(), unpack, executable) {
            Ok(tree) => {
                let hash = hash_tree(&tree, method, HashAlgo::Sha256)?;
                return Ok(Prefetched {
                    _staging: staging,
                    tree,
                    method,
                    hash,
                });
            }
            Err(e) => attempts.push((u.clone(), e)),
        }
    }
    Err(FetchError::AllFailed {
        what: url.to_string(),
        attempts,
        from: None,
    })
}

/// Realises a download node: valid already, or fetched, unpacked, verified and registered.
/// Returns the output's metadata.
pub fn realise(store: &Store, node: &Node, mirrors: &Mirrors) -> Result<ValidPathInfo, FetchError> {
    let Some(fetch) = &node.fetch else {
        return Err(FetchError::AllFailed {
            what: node.key.clone(),
            attempts: vec![("-".into(), "not a download".into())],
            from: None,
        });
    };
    let out = out_path(node)?;
    if let Some(info) = store.query_path_info(&out)? {
        return Ok(info);
    }
    let urls = resolve(mirrors, &fetch.url)?;
    let staging = store.staging()?;
    let mut attempts = Vec::new();
    for url in &urls {
        let tree = match obtain(url, staging.path(), fetch.unpack, fetch.executable) {
            Ok(tree) => tree,
            Err(e) => {
                attempts.push((url.clone(), e));
                continue;
            }
        };
        let expected = &fetch.hash;
        let actual = hash_tree(&tree, expected.method, expected.hash.algo())?;
        if actual != expected.hash {
            return Err(FetchError::HashMismatch {
                url: url.clone(),
                expected: expected.hash.to_sri(),
                actual: actual.to_sri(),
                from: fetch.hash_from.clone(),
            });
        }
        return register(store, &tree, node, expected.method, &actual);
    }
    Err(FetchError::AllFailed {
        what: fetch.url.clone(),
        attempts,
        from: Some(fetch.hash_from.clone()),
    })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;

    /// A loopback HTTP server answering request `n` (from 0) with `answer(n)`, for at
    /// most 10 s; returns its URL and how many requests it got.
    fn serve(answer: fn(usize) -> &'static str) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/file", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        let mut request = [0u8; 1024];
                        let _ = conn.read(&mut request);
                        let n = seen.fetch_add(1, Ordering::SeqCst);
                        let _ = conn.write_all(answer(n).as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        (url, count)
    }

    #[test]
    fn a_transient_failure_is_tried_again_and_a_final_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (url, count) = serve(|n| match n {
            0 => {
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            }
            _ => "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        });
        let dest = dir.path().join("a");
        assert_eq!(download(&agent(), &url, &dest), Ok(5));
        assert_eq!(std::fs::read(&dest).unwrap(), b"hello");
        assert_eq!(count.load(Ordering::SeqCst), 2, "tried again after the 503");

        let (url, count) =
            serve(|_| "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let err = download(&agent(), &url, &dir.path().join("b")).unwrap_err();
        assert!(err.contains("404"), "{err}");
        assert_eq!(count.load(Ordering::SeqCst), 1, "a 404 is final");
    }
}
