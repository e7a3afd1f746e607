//! The client side of the serve protocol: a connection to `nix-store --serve --write` (or
//! `ksbuild --serve --write`) on a remote machine through the system's `ssh` (the user's
//! keys, `known_hosts` and `ssh_config`; `NIX_SSHOPTS` as Nix reads it), and the
//! operations a remote build needs: which paths the remote has, sending the ones it lacks,
//! building a derivation while its log streams back, and fetching outputs — hashed and
//! scanned here as they arrive, never trusted.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::machines::Machine;
use super::wire::{self, BuildResult, BuildSettings, WireError};
use crate::compat::derivation::Derivation;
use crate::compat::{Hash, StoreDir, StorePath};
use crate::store::{self, pipe::NarDigests, RestoreMode, Store, StoreError};

/// How to reach a machine's store: the `ssh` destination and the program to run there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The URI, as the user wrote it (for messages).
    pub uri: String,
    /// `[user@]host`.
    pub host: String,
    /// A port other than ssh's default (`ssh://host:port`, a ksbuild extension; Nix 2.8
    /// takes ports from `ssh_config` or `NIX_SSHOPTS`, which work here too).
    pub port: Option<u16>,
    /// The identity file (`ssh-key=` or the machine's column).
    pub ssh_key: Option<String>,
    /// The host's public key, base64 (`base64-ssh-public-host-key=` or the column).
    pub host_key: Option<String>,
    /// `ssh -C` (`compress=true`).
    pub compress: bool,
    /// The program run there with `--serve --write` (`remote-program=`, `nix-store` by
    /// default).
    pub remote_program: String,
    /// Its store (`remote-store=`, passed as `--store`).
    pub remote_store: Option<String>,
}

/// Why a remote operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The URI is not one this client speaks.
    #[error("builder `{uri}`: {message}")]
    Uri { uri: String, message: String },
    /// `ssh` could not be started, or the far side did not answer as a serve server.
    #[error("cannot connect to `{uri}`: {message}{}", stderr_suffix(.stderr))]
    Connect {
        uri: String,
        message: String,
        stderr: Vec<String>,
    },
    /// The connection broke (the machine, its `sshd` or the server went away).
    #[error("the connection to `{uri}` was lost while {during}: {message}{}", stderr_suffix(.stderr))]
    Lost {
        uri: String,
        during: String,
        message: String,
        stderr: Vec<String>,
    },
    /// The far side sent what the protocol does not allow.
    #[error("`{uri}` broke the serve protocol while {during}: {message}")]
    Protocol {
        uri: String,
        during: String,
        message: String,
    },
    /// The store here refused something.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn stderr_suffix(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!(" (it said: {})", lines.join(" / "))
    }
}

impl RemoteError {
    /// Whether the machine itself failed (unreachable, gone): skip it for a while and
    /// build elsewhere.
    pub fn machine_failed(&self) -> bool {
        matches!(
            self,
            RemoteError::Connect { .. } | RemoteError::Lost { .. } | RemoteError::Protocol { .. }
        )
    }
}

type Result<T> = std::result::Result<T, RemoteError>;

impl Endpoint {
    /// The endpoint of `machine`: its URI's host, port and parameters, its key columns.
    pub fn of(machine: &Machine) -> Result<Endpoint> {
        let uri = machine.uri.clone();
        let bad = |message: String| RemoteError::Uri {
            uri: uri.clone(),
            message,
        };
        let Some(rest) = uri.strip_prefix("ssh://") else {
            let scheme = uri.split("://").next().unwrap_or(&uri);
            return Err(bad(format!(
                "ksbuild builds remotely over `ssh://` (Nix's serve protocol), not `{scheme}`; \
                 write the machine as `ssh://[USER@]HOST`"
            )));
        };
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| bad(format!("`{p}` is not a port")))?;
                (h.to_string(), Some(port))
            }
            _ => (authority.to_string(), None),
        };
        if host.is_empty() || host.starts_with('-') || host.ends_with('@') {
            return Err(bad(format!("`{host}` is not an SSH host name")));
        }
        let mut e = Endpoint {
            uri: uri.clone(),
            host,
            port,
            ssh_key: machine.ssh_key.clone(),
            host_key: machine.host_key.clone(),
            compress: false,
            remote_program: "nix-store".into(),
            remote_store: None,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "remote-program" => e.remote_program = v,
                "remote-store" => e.remote_store = Some(v),
                "ssh-key" => e.ssh_key = Some(v),
                "base64-ssh-public-host-key" => e.host_key = Some(v),
                "compress" => e.compress = v == "true",
                // Nix's, meaningful to Nix's own connection handling only.
                "max-connections"
                | "log-fd"
                | "system-features"
                | "priority"
                | "want-mass-query"
                | "trusted"
                | "path-info-cache-size" => {}
                other => {
                    return Err(bad(format!(
                        "unknown parameter `{other}` (known: remote-program, remote-store, \
                         ssh-key, base64-ssh-public-host-key, compress)"
                    )))
                }
            }
        }
        Ok(e)
    }

    /// The command run on the far side (through its login shell, as `ssh` runs commands).
    pub fn remote_command(&self) -> String {
        let mut cmd = format!("{} --serve --write", self.remote_program);
        if let Some(s) = &self.remote_store {
            cmd.push_str(" --store ");
            cmd.push_str(&shell_quote(s));
        }
        cmd
    }

    /// The `ssh` invocation, as Nix builds it: `ssh HOST -x -a`, then `NIX_SSHOPTS`, the
    /// identity, the pinned host key, compression; then the command.
    fn ssh_command(&self, known_hosts: Option<&Path>) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg(&self.host).args(["-x", "-a"]);
        if let Ok(opts) = std::env::var("NIX_SSHOPTS") {
            cmd.args(opts.split_whitespace());
        }
        if let Some(p) = self.port {
            cmd.arg("-p").arg(p.to_string());
        }
        if let Some(k) = &self.ssh_key {
            cmd.arg("-i").arg(k);
        }
        if let Some(f) = known_hosts {
            cmd.arg(format!("-oUserKnownHostsFile={}", f.display()));
        }
        if self.compress {
            cmd.arg("-C");
        }
        cmd.arg(self.remote_command());
        cmd
    }
}

/// `%XX` escapes of a URI parameter decoded.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `text` quoted for a POSIX shell.
fn shell_quote(text: &str) -> String {
    if !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:@,".contains(&b))
    {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

/// What the far side says of one of its paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePathInfo {
    pub deriver: Option<String>,
    pub references: BTreeSet<StorePath>,
    pub nar_size: u64,
    pub nar_hash: Option<Hash>,
    pub ca: Option<String>,
}

/// Lines of the far side's stderr (its build logs and messages), read on a thread of
/// their own so that the far side never blocks on a full pipe.
struct Stderr {
    lines: Receiver<Vec<u8>>,
    /// The last lines, for error messages.
    recent: Arc<Mutex<VecDeque<String>>>,
}

impl Stderr {
    fn start(pipe: std::process::ChildStderr) -> Stderr {
        let (tx, lines) = mpsc::channel();
        let recent = Arc::new(Mutex::new(VecDeque::new()));
        let keep = recent.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let text = line.strip_suffix(b"\n").unwrap_or(&line).to_vec();
                        {
                            let mut r = keep.lock().unwrap_or_else(|p| p.into_inner());
                            if r.len() == 8 {
                                r.pop_front();
                            }
                            r.push_back(wire::strip_ansi(&String::from_utf8_lossy(&text)));
                        }
                        // The receiver may be gone (the connection dropped): keep draining.
                        let _ = tx.send(text);
                    }
                }
            }
        });
        Stderr { lines, recent }
    }

    /// The last lines, for an error message.
    fn recent(&self) -> Vec<String> {
        // Give the reader thread a moment to read what ssh printed as it exited.
        std::thread::sleep(Duration::from_millis(50));
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|l| !l.trim().is_empty())
            .cloned()
            .collect()
    }

    /// Discards what arrived between operations.
    fn drain(&self) {
        while self.lines.try_recv().is_ok() {}
    }
}

/// An open connection to a serve server.
pub struct Connection {
    endpoint: Endpoint,
    child: Child,
    to: BufWriter<ChildStdin>,
    from: BufReader<ChildStdout>,
    stderr: Stderr,
    /// The server's protocol version.
    pub server_version: u64,
    store_dir: StoreDir,
    /// The pinned host key's `known_hosts` file, for as long as `ssh` runs.
    _known_hosts: Option<tempfile::NamedTempFile>,
}

impl Drop for Connection {
    /// Ends `ssh` (the far side then sees its input close and stops what it runs).
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Connection {
    /// Starts `ssh` to `endpoint` and shakes hands; `store_dir` is the store both sides
    /// name paths in.
    pub fn open(endpoint: &Endpoint, store_dir: &StoreDir) -> Result<Connection> {
        let connect = |message: String, stderr: Vec<String>| RemoteError::Connect {
            uri: endpoint.uri.clone(),
            message,
            stderr,
        };
        let known_hosts = match &endpoint.host_key {
            Some(key) => {
                let decoded = crate::compat::base64::decode(key)
                    .ok_or_else(|| connect("its host key is not base64".into(), vec![]))?;
                let host = endpoint
                    .host
                    .rsplit_once('@')
                    .map_or(endpoint.host.as_str(), |(_, h)| h);
                let host = match endpoint.port {
                    Some(p) => format!("[{host}]:{p}"),
                    None => host.to_string(),
                };
                let mut f = tempfile::NamedTempFile::new()
                    .map_err(|e| connect(format!("cannot write its host key: {e}"), vec![]))?;
                writeln!(f, "{host} {}", String::from_utf8_lossy(&decoded).trim())
                    .map_err(|e| connect(format!("cannot write its host key: {e}"), vec![]))?;
                Some(f)
            }
            None => None,
        };
        let mut cmd = endpoint.ssh_command(known_hosts.as_ref().map(|f| f.path()));
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        crate::sandbox::terminate_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| {
            connect(
                format!(
                    "cannot run `ssh`: {e} (install the OpenSSH client: Debian's `openssh-client`)"
                ),
                vec![],
            )
        })?;
        let to = BufWriter::with_capacity(256 * 1024, child.stdin.take().expect("stdin was piped"));
        let from =
            BufReader::with_capacity(256 * 1024, child.stdout.take().expect("stdout was piped"));
        let stderr = Stderr::start(child.stderr.take().expect("stderr was piped"));
        let mut conn = Connection {
            endpoint: endpoint.clone(),
            child,
            to,
            from,
            stderr,
            server_version: 0,
            store_dir: store_dir.clone(),
            _known_hosts: known_hosts,
        };
        let handshake = (|| -> std::result::Result<u64, WireError> {
            wire::write_u64(&mut conn.to, wire::SERVE_MAGIC_1)?;
            wire::write_u64(&mut conn.to, wire::PROTOCOL_VERSION)?;
            conn.to.flush()?;
            let magic = wire::read_u64(&mut conn.from)?;
            if magic != wire::SERVE_MAGIC_2 {
                return Err(WireError::Protocol(format!(
                    "it answered {magic:#x}, not the serve protocol's magic"
                )));
            }
            wire::read_u64(&mut conn.from)
        })();
        match handshake {
            Ok(v) if wire::compatible(v) => {
                conn.server_version = v;
                Ok(conn)
            }
            Ok(v) => Err(connect(
                format!("it speaks serve protocol {v:#x}; ksbuild speaks 2.x"),
                vec![],
            )),
            Err(e) => {
                let program = &conn.endpoint.remote_program;
                let message = match e {
                    WireError::Eof | WireError::Io(_) => format!(
                        "`ssh {}` ended before `{program} --serve --write` answered",
                        conn.endpoint.host
                    ),
                    WireError::Protocol(m) => m,
                };
                Err(connect(message, conn.stderr.recent()))
            }
        }
    }

    /// Whether its `ssh` still runs (an idle connection may have been closed by the far
    /// side).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn lost(&self, during: &str, e: WireError) -> RemoteError {
        match e {
            WireError::Protocol(message) => RemoteError::Protocol {
                uri: self.endpoint.uri.clone(),
                during: during.to_string(),
                message,
            },
            other => RemoteError::Lost {
                uri: self.endpoint.uri.clone(),
                during: during.to_string(),
                message: other.to_string(),
                stderr: self.stderr.recent(),
            },
        }
    }

    fn io_lost(&self, during: &str) -> impl Fn(io::Error) -> RemoteError + '_ {
        let during = during.to_string();
        move |e| self.lost(&during, WireError::from(e))
    }

    /// The subset of `paths` that is valid on the far side.
    pub fn query_valid_paths(
        &mut self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeSet<StorePath>> {
        self.stderr.drain();
        let during = "asking which paths it has";
        let sd = self.store_dir.clone();
        let sent = (|| -> io::Result<()> {
            wire::write_u64(&mut self.to, wire::Command::QueryValidPaths as u64)?;
            wire::write_u64(&mut self.to, 0)?; // lock
            wire::write_u64(&mut self.to, 0)?; // substitute
            wire::write_paths(&mut self.to, paths, &sd)?;
            self.to.flush()
        })();
        sent.map_err(self.io_lost(during))?;
        let valid = wire::read_paths(&mut self.from, &sd);
        valid.map_err(|e| self.lost(during, e))
    }

    /// What the far side says of those of `paths` it has.
    pub fn query_path_infos(
        &mut self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeMap<StorePath, RemotePathInfo>> {
        self.stderr.drain();
        let during = "asking for path information";
        let sd = self.store_dir.clone();
        let sent = (|| -> io::Result<()> {
            wire::write_u64(&mut self.to, wire::Command::QueryPathInfos as u64)?;
            wire::write_paths(&mut self.to, paths, &sd)?;
            self.to.flush()
        })();
        sent.map_err(self.io_lost(during))?;
        let minor = wire::minor(self.server_version);
        let read = (|| -> std::result::Result<_, WireError> {
            let mut infos = BTreeMap::new();
            loop {
                let path = wire::read_string(&mut self.from)?;
                if path.is_empty() {
                    return Ok(infos);
                }
                let path = wire::read_path_text(&path, &sd)?;
                let deriver = wire::read_string(&mut self.from)?;
                let references = wire::read_paths(&mut self.from, &sd)?;
                let _download_size = wire::read_u64(&mut self.from)?;
                let nar_size = wire::read_u64(&mut self.from)?;
                let (mut nar_hash, mut ca) = (None, None);
                if minor >= 4 {
                    let h = wire::read_string(&mut self.from)?;
                    nar_hash = Some(Hash::parse(&h).map_err(|e| {
                        WireError::Protocol(format!("NAR hash `{h}` of `{path}`: {e}"))
                    })?);
                    let c = wire::read_string(&mut self.from)?;
                    ca = (!c.is_empty()).then_some(c);
                    let _sigs = wire::read_strings(&mut self.from)?;
                }
                infos.insert(
                    path,
                    RemotePathInfo {
                        deriver: (!deriver.is_empty()).then_some(deriver),
                        references,
                        nar_size,
                        nar_hash,
                        ca,
                    },
                );
            }
        })();
        read.map_err(|e| self.lost(during, e))
    }

    /// Sends the valid path `path` of `store` (`AddToStoreNar`, or `ImportPaths` to a
    /// server older than 2.5); its references must be there already.
    pub fn add_to_store(&mut self, store: &Store, path: &StorePath) -> Result<()> {
        let info = store.path_info(path)?;
        let during = format!("sending `{}`", store.print(path));
        let sd = self.store_dir.clone();
        let physical = store.physical_path(path);
        let print = |p: &StorePath| sd.display(p);
        if wire::minor(self.server_version) >= 5 {
            let sent = (|| -> std::result::Result<(), StoreError> {
                let io = |e| StoreError::io("send", &physical)(e);
                let to: &mut dyn Write = &mut self.to;
                wire::write_u64(to, wire::Command::AddToStoreNar as u64).map_err(io)?;
                wire::write_bytes(to, print(path).as_bytes()).map_err(io)?;
                let deriver = info.deriver.as_ref().map(print).unwrap_or_default();
                wire::write_bytes(to, deriver.as_bytes()).map_err(io)?;
                wire::write_bytes(to, info.nar_hash.to_hex().as_bytes()).map_err(io)?;
                wire::write_paths(to, &info.references, &sd).map_err(io)?;
                wire::write_u64(to, info.registration_time).map_err(io)?;
                wire::write_u64(to, info.nar_size).map_err(io)?;
                wire::write_u64(to, info.ultimate as u64).map_err(io)?;
                wire::write_strings(to, &info.signatures).map_err(io)?;
                wire::write_bytes(to, info.ca.as_deref().unwrap_or("").as_bytes()).map_err(io)?;
                let written = store::dump_path(&physical, CountingWriter { inner: to, n: 0 })?;
                if written.n != info.nar_size {
                    return Err(StoreError::Refused(format!(
                        "the NAR of `{}` is {} bytes, but its record says {}: the store is \
                         damaged; run `ksbuild store verify --check-contents`",
                        store.print(path),
                        written.n,
                        info.nar_size
                    )));
                }
                self.to.flush().map_err(io)
            })();
            sent.map_err(|e| match e {
                StoreError::Io { source, .. } => self.lost(&during, source.into()),
                other => other.into(),
            })?;
        } else {
            let sent = (|| -> std::result::Result<(), StoreError> {
                let io = |e| StoreError::io("send", &physical)(e);
                let to: &mut dyn Write = &mut self.to;
                wire::write_u64(to, wire::Command::ImportPaths as u64).map_err(io)?;
                wire::write_u64(to, 1).map_err(io)?;
                store::dump_path(&physical, &mut *to)?;
                wire::write_u64(to, super::server::EXPORT_MAGIC).map_err(io)?;
                wire::write_bytes(to, print(path).as_bytes()).map_err(io)?;
                wire::write_paths(to, &info.references, &sd).map_err(io)?;
                let deriver = info.deriver.as_ref().map(print).unwrap_or_default();
                wire::write_bytes(to, deriver.as_bytes()).map_err(io)?;
                wire::write_u64(to, 0).map_err(io)?;
                wire::write_u64(to, 0).map_err(io)?;
                self.to.flush().map_err(io)
            })();
            sent.map_err(|e| match e {
                StoreError::Io { source, .. } => self.lost(&during, source.into()),
                other => other.into(),
            })?;
        }
        match wire::read_u64(&mut self.from) {
            Ok(1) => Ok(()),
            Ok(n) => Err(self.lost(
                &during,
                WireError::Protocol(format!("it answered {n}, not 1")),
            )),
            Err(e) => Err(self.lost(&during, e)),
        }
    }

    /// Sends every path of `closure` (a closed set of valid paths here) the far side
    /// lacks, references first. Returns the paths sent.
    pub fn copy_closure(
        &mut self,
        store: &Store,
        closure: &BTreeSet<StorePath>,
    ) -> Result<Vec<StorePath>> {
        let present = self.query_valid_paths(closure)?;
        let missing: BTreeSet<StorePath> = closure.difference(&present).cloned().collect();
        let order = topological(store, &missing)?;
        for path in &order {
            self.add_to_store(store, path)?;
        }
        Ok(order)
    }

    /// Builds `drv` (at `drv_path`) on the far side with `inputs` (its whole input closure,
    /// which the far side must have) as its input sources, as Nix's build hook does;
    /// every line the far side prints meanwhile goes to `log`.
    pub fn build_derivation(
        &mut self,
        drv_path: &StorePath,
        drv: &Derivation,
        inputs: &BTreeSet<StorePath>,
        settings: &BuildSettings,
        log: &(dyn Fn(&[u8]) + Sync),
    ) -> Result<BuildResult> {
        self.stderr.drain();
        let during = format!("building `{}`", self.store_dir.display(drv_path));
        let sd = self.store_dir.clone();
        let sent = (|| -> io::Result<()> {
            wire::write_u64(&mut self.to, wire::Command::BuildDerivation as u64)?;
            wire::write_bytes(&mut self.to, sd.display(drv_path).as_bytes())?;
            wire::write_basic_derivation(&mut self.to, drv, inputs, &sd)?;
            settings.write(&mut self.to)?;
            self.to.flush()
        })();
        sent.map_err(self.io_lost(&during))?;
        let version = self.server_version;
        let from = &mut self.from;
        let lines = &self.stderr.lines;
        let result = std::thread::scope(|scope| {
            let reader = scope.spawn(move || BuildResult::read(from, version));
            // Forward the log until the result is in, then what is left of it.
            while !reader.is_finished() {
                match lines.recv_timeout(Duration::from_millis(100)) {
                    Ok(line) => log(&line),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        // ssh is gone; the reader ends with EOF.
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
            while let Ok(line) = lines.try_recv() {
                log(&line);
            }
            reader
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        });
        result.map_err(|e| self.lost(&during, e))
    }

    /// Fetches `path` from the far side into `target` (a new path on the store's
    /// filesystem), hashing the NAR and scanning it for references with `references` as it
    /// arrives.
    pub fn fetch(
        &mut self,
        path: &StorePath,
        target: &Path,
        references: crate::compat::refscan::RefScanner,
    ) -> Result<NarDigests> {
        self.stderr.drain();
        let during = format!("fetching `{}`", self.store_dir.display(path));
        let sd = self.store_dir.clone();
        let sent = (|| -> io::Result<()> {
            wire::write_u64(&mut self.to, wire::Command::DumpStorePath as u64)?;
            wire::write_bytes(&mut self.to, sd.display(path).as_bytes())?;
            self.to.flush()
        })();
        sent.map_err(self.io_lost(&during))?;
        let mut pipe = store::pipe::DigestPipe::with_scanner(None, references);
        let restored = {
            let mut tee = Tee {
                inner: &mut self.from,
                copy: &mut pipe,
            };
            store::restore_nar_prefix(&mut tee, target, RestoreMode::Canonical)
        };
        match restored {
            Ok(_) => pipe
                .finish()
                .map_err(|e| self.lost(&during, WireError::Io(e))),
            Err(StoreError::Io { source, .. }) => Err(self.lost(&during, source.into())),
            Err(StoreError::Nar { source, .. }) => Err(self.lost(
                &during,
                WireError::Protocol(format!("its NAR is malformed: {source}")),
            )),
            Err(other) => Err(other.into()),
        }
    }
}

/// `paths` ordered references first (by the store's records).
fn topological(store: &Store, paths: &BTreeSet<StorePath>) -> Result<Vec<StorePath>> {
    let mut refs: BTreeMap<&StorePath, BTreeSet<StorePath>> = BTreeMap::new();
    for p in paths {
        let info = store.path_info(p)?;
        refs.insert(
            p,
            info.references
                .into_iter()
                .filter(|r| r != p && paths.contains(r))
                .collect(),
        );
    }
    let mut order = Vec::with_capacity(paths.len());
    let mut done: BTreeSet<StorePath> = BTreeSet::new();
    // Depth-first, iteratively: a path after everything it refers to.
    for start in paths {
        let mut stack: Vec<(&StorePath, bool)> = vec![(start, false)];
        while let Some((p, expanded)) = stack.pop() {
            if done.contains(p) {
                continue;
            }
            if expanded {
                done.insert(p.clone());
                order.push(p.clone());
                continue;
            }
            stack.push((p, true));
            for r in &refs[p] {
                if !done.contains(r) {
                    stack.push((r, false));
                }
            }
        }
    }
    Ok(order)
}

/// A reader that copies what it reads into a writer.
struct Tee<'a> {
    inner: &'a mut dyn Read,
    copy: &'a mut dyn Write,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// A writer that counts the bytes it passes on.
struct CountingWriter<'a> {
    inner: &'a mut dyn Write,
    n: u64,
}

impl Write for CountingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(uri: &str) -> Result<Endpoint> {
        Endpoint::of(&Machine {
            uri: uri.into(),
            systems: vec!["x86_64-linux".into()],
            ssh_key: None,
            max_jobs: 1,
            speed_factor: 1,
            supported_features: BTreeSet::new(),
            mandatory_features: BTreeSet::new(),
            host_key: None,
        })
    }

    /// Host, port and parameters; the command run there, quoted for its shell.
    #[test]
    fn ssh_uris_are_read_as_nix_reads_them() {
        let e = endpoint("ssh://ci@builder?remote-program=/opt/ksbuild/bin/ksbuild&remote-store=/srv/my%20store&ssh-key=/k").unwrap();
        assert_eq!(e.host, "ci@builder");
        assert_eq!(e.port, None);
        assert_eq!(e.ssh_key.as_deref(), Some("/k"));
        assert_eq!(
            e.remote_command(),
            "/opt/ksbuild/bin/ksbuild --serve --write --store '/srv/my store'"
        );
        let e = endpoint("ssh://host:2222").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("host", Some(2222)));
        assert_eq!(e.remote_command(), "nix-store --serve --write");
        for bad in [
            "ssh-ng://host",
            "local",
            "ssh://-oProxyCommand=x",
            "ssh://host?nope=1",
        ] {
            let err = endpoint(bad).unwrap_err().to_string();
            assert!(err.contains(bad.split('?').next().unwrap()), "{err}");
        }
    }
}
