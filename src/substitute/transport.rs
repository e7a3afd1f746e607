//! Reading files of a binary cache: `file://` directories and `http(s)://` servers, behind
//! one trait. HTTP answers as Nix's `http-binary-cache` store reads them: 404, 410, 401, 403
//! and 407 mean "absent" (S3 buckets answer 403 for a missing key); 5xx and connection
//! failures are tried again with backoff, a bounded number of times; any other answer is an
//! error. Does network and file I/O.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

/// A failure to read a cache file (not its absence).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{url}: {message}")]
pub struct TransportError {
    /// What was read.
    pub url: String,
    /// What went wrong.
    pub message: String,
}

/// A readable body.
pub type Body = Box<dyn Read + Send>;

/// Reads files of one cache by their path relative to its root.
pub trait Transport: Send + Sync {
    /// The file `rel` (`nix-cache-info`, `<hash>.narinfo`, `nar/…`): `Ok(None)` if the cache
    /// does not have it.
    fn get(&self, rel: &str) -> Result<Option<Body>, TransportError>;
}

/// A cache in a local directory.
pub struct FileTransport {
    /// The cache's root.
    pub dir: PathBuf,
}

impl Transport for FileTransport {
    fn get(&self, rel: &str) -> Result<Option<Body>, TransportError> {
        let path = self.dir.join(rel);
        match std::fs::File::open(&path) {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(TransportError {
                url: format!("file://{}", path.display()),
                message: e.to_string(),
            }),
        }
    }
}

/// How many times a transient failure is tried in all, and the first pause (doubled each
/// time): 0.25 + 0.5 + 1 s at most.
const ATTEMPTS: u32 = 4;
const FIRST_PAUSE: Duration = Duration::from_millis(250);

/// A cache served over HTTP(S).
pub struct HttpTransport {
    /// The cache's root URL, without a trailing `/`.
    pub base: String,
    agent: ureq::Agent,
}

impl HttpTransport {
    /// A transport for the cache at `base`.
    pub fn new(base: &str) -> HttpTransport {
        HttpTransport {
            base: base.trim_end_matches('/').to_string(),
            agent: crate::fetch::agent(),
        }
    }
}

/// Whether an HTTP status means "the cache does not have it" (Nix: NotFound or Forbidden).
pub fn status_means_absent(code: u16) -> bool {
    matches!(code, 401 | 403 | 404 | 407 | 410)
}

impl Transport for HttpTransport {
    fn get(&self, rel: &str) -> Result<Option<Body>, TransportError> {
        let url = format!("{}/{rel}", self.base);
        let mut pause = FIRST_PAUSE;
        let mut attempt = 1;
        loop {
            let (message, transient) = match self.agent.get(&url).call() {
                Ok(r) => return Ok(Some(Box::new(r.into_reader()))),
                Err(ureq::Error::Status(code, _)) if status_means_absent(code) => return Ok(None),
                Err(ureq::Error::Status(code, r)) => {
                    (format!("HTTP {code} {}", r.status_text()), code >= 500)
                }
                Err(ureq::Error::Transport(t)) => {
                    let mut text = match t.message() {
                        Some(m) => format!("{}: {m}", t.kind()),
                        None => t.kind().to_string(),
                    };
                    if let Some(cause) = std::error::Error::source(&t) {
                        text.push_str(&format!(": {cause}"));
                    }
                    let transient = matches!(
                        t.kind(),
                        ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Io
                    );
                    (text, transient)
                }
            };
            if !transient || attempt >= ATTEMPTS {
                let tries = if attempt > 1 {
                    format!(" (after {attempt} attempts)")
                } else {
                    String::new()
                };
                return Err(TransportError {
                    url,
                    message: format!("{message}{tries}"),
                });
            }
            std::thread::sleep(pause);
            pause *= 2;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    /// A loopback server answering every request with `answer`; counts requests.
    fn serve(answer: &'static str) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let mut request = [0u8; 1024];
                let _ = conn.read(&mut request);
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = conn.write_all(answer.as_bytes());
            }
        });
        (base, count)
    }

    #[test]
    fn absent_final_and_retried_answers() {
        for (answer, absent, requests) in [
            (
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                true,
                1,
            ),
            (
                "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                true,
                1,
            ),
            (
                "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                false,
                1,
            ),
            (
                "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                false,
                ATTEMPTS as usize,
            ),
        ] {
            let (base, count) = serve(answer);
            let t = HttpTransport::new(&base);
            match t.get("x.narinfo") {
                Ok(None) => assert!(absent, "{answer}"),
                Ok(Some(_)) => panic!("{answer}: found"),
                Err(e) => {
                    assert!(!absent, "{answer}: {e}");
                    assert!(e.to_string().contains("/x.narinfo"), "{e}");
                }
            }
            assert_eq!(count.load(Ordering::SeqCst), requests, "{answer}");
        }
    }
}
