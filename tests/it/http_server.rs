//! A real HTTP server for binary-cache tests: Debian's `nginx` serving a directory on
//! 127.0.0.1 with WebDAV `PUT` (what Nix's `http-binary-cache` upload and `ksbuild cache
//! push` send), started by the test with a config it writes, as the current user.
//!
//! Everything nginx writes (pid, logs, request-body temp files) lives in a temp dir; it runs
//! as one process (`master_process off`, `daemon off`) so it keeps the caller's uid and
//! [`Drop`] stops it by its pid.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long nginx may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// A running nginx serving one directory; stopped on drop.
pub(crate) struct Nginx {
    child: Child,
    port: u16,
    /// Config, pid, logs and temp files.
    state: tempfile::TempDir,
    root: PathBuf,
}

/// Whether nginx is installed (`/usr/sbin` is not on every user's `PATH`).
fn nginx_binary() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

impl Nginx {
    /// Starts nginx serving `root` (GET, HEAD, and PUT that creates missing directories),
    /// or returns `None` when nginx is not installed and the network tests are not required
    /// (`KSBUILD_REQUIRE_NETWORK` unset): the test then skips, saying why.
    pub fn start_or_skip(root: &Path) -> Option<Nginx> {
        if nginx_binary().is_none() {
            if std::env::var_os("KSBUILD_REQUIRE_NETWORK").is_some() {
                panic!("nginx is required (KSBUILD_REQUIRE_NETWORK is set) but not installed; `apt-get install nginx` (see .ci/install-nix)");
            }
            eprintln!("SKIP: nginx is not installed (apt-get install nginx); this test serves a binary cache over HTTP with it");
            return None;
        }
        Some(Nginx::start(root))
    }

    /// Starts nginx serving `root`; panics (with nginx's error log) if it cannot. Tries a
    /// few free ports, since another process may take the one picked before nginx binds it.
    pub fn start(root: &Path) -> Nginx {
        let binary = nginx_binary().expect("nginx is not installed (apt-get install nginx)");
        let mut last_error = String::new();
        for _ in 0..5 {
            match Nginx::try_start(&binary, root) {
                Ok(nginx) => return nginx,
                Err(e) => last_error = e,
            }
        }
        panic!("cannot start nginx: {last_error}");
    }

    fn try_start(binary: &Path, root: &Path) -> Result<Nginx, String> {
        let state = tempfile::Builder::new()
            .prefix("ksbuild-nginx-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let port = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let s = state.path().display();
        let config = format!(
            "daemon off;
master_process off;
worker_processes 1;
pid {s}/nginx.pid;
error_log {s}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {s}/access.log;
    client_body_temp_path {s}/body;
    proxy_temp_path {s}/proxy;
    fastcgi_temp_path {s}/fastcgi;
    uwsgi_temp_path {s}/uwsgi;
    scgi_temp_path {s}/scgi;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        client_max_body_size 0;
        location / {{
            dav_methods PUT;
            create_full_put_path on;
            dav_access user:rw group:r all:r;
        }}
    }}
}}
",
            root = root.display()
        );
        let conf = state.path().join("nginx.conf");
        std::fs::write(&conf, config).map_err(|e| format!("write config: {e}"))?;
        let mut child = Command::new(binary)
            .arg("-p")
            .arg(state.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(state.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log =
                    std::fs::read_to_string(state.path().join("error.log")).unwrap_or_default();
                return Err(format!("nginx exited ({status}):\n{log}"));
            }
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(Nginx {
                    child,
                    port,
                    state,
                    root: root.to_path_buf(),
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "nginx did not accept connections on port {port} within {START_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The base URL, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The directory served.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The access log so far: one line per request (`METHOD /path STATUS` among the fields).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("access.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // Our own child, by its pid: SIGKILL is fine, nginx keeps no state we need.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn nginx_serves_get_head_and_put() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("hello"), "hi\n").unwrap();
    let Some(server) = Nginx::start_or_skip(root.path()) else {
        return;
    };
    let got = ureq::get(&format!("{}/hello", server.url()))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert_eq!(got, "hi\n");
    let status = ureq::put(&format!("{}/deep/er/file", server.url()))
        .send_bytes(b"put")
        .unwrap()
        .status();
    assert_eq!(status, 201);
    assert_eq!(
        std::fs::read(root.path().join("deep/er/file")).unwrap(),
        b"put"
    );
    match ureq::head(&format!("{}/missing", server.url())).call() {
        Err(ureq::Error::Status(404, _)) => {}
        other => panic!("HEAD of a missing file: {other:?}"),
    }
    assert!(server.access_log().contains("\"PUT /deep/er/file"));
}
