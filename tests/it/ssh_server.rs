//! A real SSH server for the remote-builder tests: Debian's `sshd` (openssh-server) on
//! 127.0.0.1, started by the test as the current user with a host key, a client key and a
//! configuration it generates, and an `ssh_config` for the client side, so that
//! `NIX_SSHOPTS="-F <ssh_config>"` makes both Nix's and ksbuild's `ssh` reach it by its alias.
//!
//! Everything (keys, configurations, pid file, log) lives in a temp dir. sshd runs in the
//! foreground (`-D`) as the caller: as root it can log in root; as an ordinary user only that
//! user, which is all the tests need. [`Sshd::kill`] stops it and every process it started
//! (the sessions and the commands they run), as if the machine went away; so does [`Drop`].

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long sshd may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The host alias the client configuration defines.
pub(crate) const ALIAS: &str = "ksbuild-test-builder";

/// A running sshd that logs in the current user with a test key; stopped on drop.
pub(crate) struct Sshd {
    child: Child,
    port: u16,
    user: String,
    /// Keys, configurations, pid file and log.
    state: tempfile::TempDir,
    /// The host's public key line, `ssh-ed25519 AAAA…`.
    host_public_key: String,
}

/// `program` in `PATH` or in the sbin directories (which are not on every user's `PATH`).
fn find_program(program: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/usr/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

impl Sshd {
    /// Starts sshd, or returns `None` when openssh is not installed and the network tests
    /// are not required (`KSBUILD_REQUIRE_NETWORK` unset): the test then skips, saying why.
    pub fn start_or_skip() -> Option<Sshd> {
        let missing: Vec<&str> = ["sshd", "ssh", "ssh-keygen"]
            .into_iter()
            .filter(|p| find_program(p).is_none())
            .collect();
        if !missing.is_empty() {
            if std::env::var_os("KSBUILD_REQUIRE_NETWORK").is_some() {
                panic!("{missing:?} required (KSBUILD_REQUIRE_NETWORK is set) but not installed; `apt-get install openssh-server openssh-client` (see .ci/install-nix)");
            }
            eprintln!("SKIP: {missing:?} not installed (apt-get install openssh-server openssh-client); this test runs a real sshd on loopback");
            return None;
        }
        Some(Sshd::start())
    }

    /// Starts sshd; panics (with sshd's log) if it cannot. Tries a few free ports, since
    /// another process may take the one picked before sshd binds it.
    pub fn start() -> Sshd {
        let sshd =
            find_program("sshd").expect("sshd is not installed (apt-get install openssh-server)");
        let user = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .unwrap_or_else(|| {
                panic!(
                    "uid {} has no passwd entry: sshd can only log in a user it can look up",
                    nix::unistd::getuid()
                )
            });
        if nix::unistd::geteuid().is_root() {
            // sshd as root insists on its privilege separation directory, which Debian's
            // service creates (`RuntimeDirectory`); with the service disabled it may be absent.
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let mut last_error = String::new();
        for _ in 0..5 {
            match Sshd::try_start(&sshd, &user) {
                Ok(s) => return s,
                Err(e) => last_error = e,
            }
        }
        panic!("cannot start sshd: {last_error}");
    }

    fn try_start(sshd: &Path, user: &nix::unistd::User) -> Result<Sshd, String> {
        let state = tempfile::Builder::new()
            .prefix("ksbuild-sshd-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        let dir = state.path();
        for key in ["host_key", "client_key"] {
            let out = Command::new(find_program("ssh-keygen").expect("ssh-keygen"))
                .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
                .arg(dir.join(key))
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("cannot run ssh-keygen: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "ssh-keygen failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        let read = |name: &str| {
            std::fs::read_to_string(dir.join(name)).map_err(|e| format!("read {name}: {e}"))
        };
        // `ssh-ed25519 AAAA… comment` → the first two fields.
        let host_public_key = read("host_key.pub")?
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        std::fs::write(dir.join("authorized_keys"), read("client_key.pub")?)
            .map_err(|e| format!("write authorized_keys: {e}"))?;
        // The client looks the host key up under the alias (`HostKeyAlias`), whatever the port.
        std::fs::write(
            dir.join("known_hosts"),
            format!("{ALIAS} {host_public_key}\n"),
        )
        .map_err(|e| format!("write known_hosts: {e}"))?;
        let port = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let d = dir.display();
        let name = &user.name;
        std::fs::write(
            dir.join("sshd_config"),
            format!(
                "ListenAddress 127.0.0.1
Port {port}
HostKey {d}/host_key
AuthorizedKeysFile {d}/authorized_keys
AllowUsers {name}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
HostbasedAuthentication no
UsePAM no
StrictModes no
PermitUserEnvironment no
X11Forwarding no
AllowTcpForwarding no
PrintMotd no
PidFile {d}/sshd.pid
LogLevel VERBOSE
"
            ),
        )
        .map_err(|e| format!("write sshd_config: {e}"))?;
        std::fs::write(
            dir.join("ssh_config"),
            format!(
                "Host {ALIAS}
  HostName 127.0.0.1
  Port {port}
  User {name}
  IdentityFile {d}/client_key
  IdentitiesOnly yes
  HostKeyAlias {ALIAS}
  UserKnownHostsFile {d}/known_hosts
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 10
  LogLevel ERROR
"
            ),
        )
        .map_err(|e| format!("write ssh_config: {e}"))?;
        let mut child = Command::new(sshd)
            // Foreground, log to the file named by -E.
            .args(["-D", "-f"])
            .arg(dir.join("sshd_config"))
            .arg("-E")
            .arg(dir.join("sshd.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", sshd.display()))?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
                return Err(format!("sshd exited ({status}):\n{log}"));
            }
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                return Ok(Sshd {
                    child,
                    port,
                    user: name.clone(),
                    state,
                    host_public_key,
                });
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
                return Err(format!(
                    "sshd did not accept connections on 127.0.0.1:{port} within {START_TIMEOUT:?}:\n{log}"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The store URI of this machine for Nix and ksbuild: `ssh://USER@ALIAS` (the alias
    /// resolves through [`Sshd::nix_sshopts`]).
    pub fn uri(&self) -> String {
        format!("ssh://{}@{ALIAS}", self.user)
    }

    /// The user it logs in (the current one).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The host alias, `ksbuild-test-builder`.
    pub fn alias(&self) -> &str {
        ALIAS
    }

    /// The port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The client configuration (`ssh -F`): the alias, port, user, key and known host.
    pub fn ssh_config(&self) -> PathBuf {
        self.state.path().join("ssh_config")
    }

    /// The value of `NIX_SSHOPTS` that makes `ssh` use [`Sshd::ssh_config`].
    pub fn nix_sshopts(&self) -> String {
        format!("-F {}", self.ssh_config().display())
    }

    /// The client's private key (authorised on this server).
    pub fn client_key(&self) -> PathBuf {
        self.state.path().join("client_key")
    }

    /// The known-hosts file (the host key under the alias).
    pub fn known_hosts(&self) -> PathBuf {
        self.state.path().join("known_hosts")
    }

    /// The host's public key line, `ssh-ed25519 AAAA…`.
    pub fn host_public_key(&self) -> &str {
        &self.host_public_key
    }

    /// The host's public key line in base64, as the 8th field of Nix's `builders` and the
    /// `base64-ssh-public-host-key` URI parameter take it (`base64 -w0 host_key.pub`).
    pub fn host_public_key_base64(&self) -> String {
        ksbuild::compat::base64::encode(format!("{}\n", self.host_public_key).as_bytes())
    }

    /// sshd's log so far (`Accepted publickey for …`, disconnections).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.path().join("sshd.log")).unwrap_or_default()
    }

    /// An `ssh` command to this server (`ssh -F ssh_config ALIAS`): append the remote command.
    pub fn ssh(&self) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-F").arg(self.ssh_config()).arg(ALIAS);
        c
    }

    /// Stops sshd and every process it started — the connections' sshd processes, and the
    /// remote commands under them — as if the machine went away: clients see their
    /// connection drop and new connections are refused. Idempotent.
    pub fn kill(&mut self) {
        kill_tree(self.child.id() as i32);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether sshd still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The parent pid of every process in `/proc`.
fn parents() -> Vec<(i32, i32)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            out.push((pid, ppid));
        }
    }
    out
}

/// SIGKILLs `root` and all its descendants. They are stopped first (SIGSTOP, repeated until
/// no new one appears) so that none can fork, or be reparented out of sight, in between.
fn kill_tree(root: i32) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let mut tree = vec![root];
    for _ in 0..50 {
        let _ = kill(Pid::from_raw(root), Signal::SIGSTOP);
        let mut grew = false;
        for (pid, ppid) in parents() {
            if tree.contains(&ppid) && !tree.contains(&pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
                tree.push(pid);
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    for pid in tree {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

#[test]
fn sshd_runs_commands_with_the_test_key_and_can_be_killed() {
    let Some(mut server) = Sshd::start_or_skip() else {
        return;
    };
    let out = crate::common::run_ok(server.ssh().arg("echo hello; id -un"));
    assert_eq!(out, format!("hello\n{}\n", server.user()));
    assert!(
        server.log().contains("Accepted publickey"),
        "{}",
        server.log()
    );
    // Without the configuration, the key is not offered and the host is unknown.
    let denied = crate::common::run(
        Command::new("ssh")
            .args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"])
            .args(["-o", "UserKnownHostsFile=/dev/null", "-p"])
            .arg(server.port().to_string())
            .arg(format!("{}@127.0.0.1", server.user()))
            .arg("true"),
    );
    assert!(!denied.status.success());
    // A session in progress is cut when the server is killed, and no new one starts.
    let mut long = server
        .ssh()
        .arg("echo started; sleep 60")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = [0u8; 8];
    std::io::Read::read_exact(long.stdout.as_mut().unwrap(), &mut first).unwrap();
    assert_eq!(&first, b"started\n");
    let t0 = Instant::now();
    server.kill();
    let status = long.wait().unwrap();
    assert!(!status.success());
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert!(!server.running());
    let after = crate::common::run(server.ssh().arg("true"));
    assert!(!after.status.success());
}
