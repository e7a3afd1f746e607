//! The health check: the configured process is alive (a `/proc/<pid>/comm` match, not a
//! zombie), and the configured TCP port on 127.0.0.1 and unix socket accept a connection.
//! Reads /proc, connects; writes nothing.

use crate::paths::Paths;
use crate::state::Config;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Whether a process named `name` runs (comm is cut at 15 bytes by the kernel).
pub fn process_alive(paths: &Paths, name: &str) -> bool {
    let want: String = name.chars().take(15).collect();
    let entries = match fs::read_dir(paths.path("/proc")) {
        Ok(e) => e,
        Err(_) => return false,
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let pid = file_name.to_string_lossy();
        if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let comm = match fs::read_to_string(entry.path().join("comm")) {
            Ok(c) => c,
            Err(_) => continue,
        };
        if comm.trim_end_matches('\n') != want {
            continue;
        }
        // `pid (comm) S ...`: a zombie is not alive.
        if let Ok(stat) = fs::read_to_string(entry.path().join("stat")) {
            if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r.trim_start()) {
                if rest.starts_with('Z') || rest.starts_with('X') {
                    continue;
                }
            }
        }
        return true;
    }
    false
}

/// One round of checks; `Err` names the first that failed.
pub fn check_once(paths: &Paths, config: &Config) -> Result<(), String> {
    if !process_alive(paths, &config.health_process) {
        return Err(format!("no process `{}` is running", config.health_process));
    }
    if let Some(port) = config.health_port {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .map_err(|e| format!("127.0.0.1:{} does not accept: {}", port, e))?;
    }
    if let Some(socket) = &config.health_socket {
        let path = paths.path(socket);
        UnixStream::connect(&path)
            .map_err(|e| format!("the socket `{}` does not accept: {}", socket, e))?;
    }
    Ok(())
}

/// Checks until all pass or `health-timeout` seconds have gone (at least one round); every
/// failed round's reason goes to `progress` when it changes.
pub fn wait_healthy(
    paths: &Paths,
    config: &Config,
    progress: &mut dyn FnMut(&str),
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(config.health_timeout);
    let mut last = String::new();
    loop {
        match check_once(paths, config) {
            Ok(()) => return Ok(()),
            Err(why) => {
                if Instant::now() >= deadline {
                    return Err(format!("{} (after {} s)", why, config.health_timeout));
                }
                if why != last {
                    progress(&format!("waiting: {}", why));
                    last = why;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn fake_proc(root: &std::path::Path, pid: u32, comm: &str, state: char) {
        let dir = root.join(format!("proc/{}", pid));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("comm"), format!("{}\n", comm)).unwrap();
        fs::write(
            dir.join("stat"),
            format!("{} ({}) {} 1 1", pid, comm, state),
        )
        .unwrap();
    }

    #[test]
    fn process_and_port_checks() {
        let tmp = crate::testutil::TempDir::new("health");
        let paths = Paths::under(tmp.path());
        let mut config = Config {
            health_timeout: 0,
            ..Config::default()
        };
        assert!(check_once(&paths, &config)
            .unwrap_err()
            .contains("no process `kubesolo`"));
        fake_proc(tmp.path(), 7, "kubesolo", 'Z');
        assert!(
            check_once(&paths, &config).is_err(),
            "a zombie is not alive"
        );
        fake_proc(tmp.path(), 8, "kubesolo", 'S');
        check_once(&paths, &config).unwrap();
        // Names longer than 15 bytes match the kernel's cut comm.
        fake_proc(tmp.path(), 9, "a-very-long-pro", 'R');
        config.health_process = "a-very-long-process".to_string();
        check_once(&paths, &config).unwrap();
        config.health_process = "kubesolo".to_string();

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        config.health_port = Some(port);
        check_once(&paths, &config).unwrap();
        drop(listener);
        let err = check_once(&paths, &config).unwrap_err();
        assert!(
            err.contains(&format!("127.0.0.1:{} does not accept", port)),
            "{}",
            err
        );

        config.health_port = None;
        config.health_socket = Some("/run/api.sock".to_string());
        assert!(check_once(&paths, &config)
            .unwrap_err()
            .contains("/run/api.sock"));
        fs::create_dir_all(tmp.path().join("run")).unwrap();
        let _sock =
            std::os::unix::net::UnixListener::bind(tmp.path().join("run/api.sock")).unwrap();
        check_once(&paths, &config).unwrap();
    }

    #[test]
    fn waiting_gives_up_after_the_timeout() {
        let tmp = crate::testutil::TempDir::new("health-wait");
        let paths = Paths::under(tmp.path());
        let config = Config {
            health_timeout: 1,
            ..Config::default()
        };
        let start = Instant::now();
        let mut said = Vec::new();
        let err = wait_healthy(&paths, &config, &mut |m| said.push(m.to_string())).unwrap_err();
        assert!(err.contains("after 1 s"), "{}", err);
        assert!(start.elapsed() >= Duration::from_secs(1));
        assert_eq!(said.len(), 1, "one message per distinct reason: {:?}", said);
    }
}
