//! The agent's persistent state (`key=value` lines on the data partition) and config
//! (`/etc/kubesolo/update.conf`, `key = value`), and the running version (`VERSION_ID` of
//! `/etc/os-release`). Reads and writes files.

use crate::keys::{self, PublicKey};
use crate::paths::Paths;
use crate::slot;
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

/// Where the state lives: `/mnt/data/var/lib/kubesolo-update` when `/mnt/data` is mounted
/// (the init bind-mounts only some of /var/lib), else `/var/lib/kubesolo-update`.
pub fn state_dir(paths: &Paths) -> PathBuf {
    let data = paths.path("/mnt/data");
    let mounted = if paths.test_mode() {
        data.is_dir()
    } else {
        match (fs::metadata(&data), fs::metadata(paths.path("/mnt"))) {
            (Ok(d), Ok(parent)) => d.dev() != parent.dev(),
            _ => false,
        }
    };
    if mounted {
        data.join("var/lib/kubesolo-update")
    } else {
        paths.path("/var/lib/kubesolo-update")
    }
}

/// The state file's keys and values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct State {
    /// `pending-slot`, `pending-version`, `previous-slot`, `previous-version`, `applied-at`,
    /// `applied-boot`, `last-result`, `version-A`, `version-B`.
    pub values: BTreeMap<String, String>,
}

impl State {
    /// Reads the state (empty when there is none yet).
    pub fn load(paths: &Paths) -> Result<State, String> {
        let path = state_dir(paths).join("state");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(State::default()),
            Err(e) => return Err(format!("cannot read the state `{}`: {}", path.display(), e)),
        };
        let mut values = BTreeMap::new();
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                values.insert(k.to_string(), v.to_string());
            }
        }
        Ok(State { values })
    }

    /// Writes the state atomically (temp file, fsync, rename, fsync the directory).
    pub fn save(&self, paths: &Paths) -> Result<(), String> {
        let dir = state_dir(paths);
        fs::create_dir_all(&dir).map_err(|e| {
            format!(
                "cannot create the state directory `{}`: {}",
                dir.display(),
                e
            )
        })?;
        let mut text = String::new();
        for (k, v) in &self.values {
            text.push_str(&format!("{}={}\n", k, v.replace('\n', " ")));
        }
        slot::replace_file(&dir.join("state"), text.as_bytes())
    }

    /// A value.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(|s| s.as_str())
    }

    /// Sets a value.
    pub fn set(&mut self, key: &str, value: &str) {
        self.values.insert(key.to_string(), value.to_string());
    }

    /// Removes a value.
    pub fn remove(&mut self, key: &str) {
        self.values.remove(key);
    }

    /// Forgets the pending update (committed, failed, cancelled or replaced).
    pub fn clear_pending(&mut self) {
        for k in [
            "pending-slot",
            "pending-version",
            "applied-at",
            "applied-boot",
        ] {
            self.remove(k);
        }
    }
}

/// The agent's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `server = URL`.
    pub server: Option<String>,
    /// `channel = NAME`.
    pub channel: Option<String>,
    /// `public-key = name:base64` lines.
    pub public_keys: Vec<String>,
    /// `health-port = N`: a TCP port on 127.0.0.1 that must accept.
    pub health_port: Option<u16>,
    /// `health-socket = PATH`: a unix socket that must accept.
    pub health_socket: Option<String>,
    /// `health-timeout = SECONDS` (default 120).
    pub health_timeout: u64,
    /// `health-process = NAME` (default `kubesolo`).
    pub health_process: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            server: None,
            channel: None,
            public_keys: Vec::new(),
            health_port: None,
            health_socket: None,
            health_timeout: 120,
            health_process: "kubesolo".to_string(),
        }
    }
}

/// The config file.
pub const CONFIG: &str = "/etc/kubesolo/update.conf";

impl Config {
    /// Parses config text; bad lines are reported and ignored (a typo must not stop the health
    /// check that commits or rolls back).
    pub fn parse(text: &str) -> (Config, Vec<String>) {
        let mut config = Config::default();
        let mut warnings = Vec::new();
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = match line.split_once('=') {
                Some((k, v)) => (k.trim(), v.trim()),
                None => {
                    warnings.push(format!(
                        "{}:{}: `{}` is not `key = value` (ignored)",
                        CONFIG,
                        n + 1,
                        line
                    ));
                    continue;
                }
            };
            let bad = |what: &str| {
                format!(
                    "{}:{}: {} `{}` is not {} (ignored)",
                    CONFIG,
                    n + 1,
                    key,
                    value,
                    what
                )
            };
            match key {
                "server" => config.server = Some(value.to_string()),
                "channel" => config.channel = Some(value.to_string()),
                "public-key" => config.public_keys.push(value.to_string()),
                "health-port" => match value.parse::<u16>() {
                    Ok(p) if p > 0 => config.health_port = Some(p),
                    _ => warnings.push(bad("a TCP port")),
                },
                "health-socket" => config.health_socket = Some(value.to_string()),
                "health-timeout" => match value.parse() {
                    Ok(t) => config.health_timeout = t,
                    Err(_) => warnings.push(bad("a number of seconds")),
                },
                "health-process" => {
                    if value.is_empty() || value.contains('/') {
                        warnings.push(bad("a process name"));
                    } else {
                        config.health_process = value.to_string();
                    }
                }
                _ => warnings.push(format!(
                    "{}:{}: unknown key `{}` (ignored)",
                    CONFIG,
                    n + 1,
                    key
                )),
            }
        }
        (config, warnings)
    }

    /// Reads the config file (defaults when there is none).
    pub fn load(paths: &Paths) -> (Config, Vec<String>) {
        match fs::read_to_string(paths.path(CONFIG)) {
            Ok(text) => Config::parse(&text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Config::default(), Vec::new()),
            Err(e) => (
                Config::default(),
                vec![format!("cannot read {}: {} (using defaults)", CONFIG, e)],
            ),
        }
    }
}

/// The directory of baked-in public keys.
pub const KEY_DIR: &str = "/usr/share/kubesolo-update/keys";

/// The trusted keys: every file in [`KEY_DIR`] plus the config's `public-key` lines; with a
/// message per unreadable file or bad key.
pub fn trusted_keys(paths: &Paths, config: &Config) -> (Vec<PublicKey>, Vec<String>) {
    let mut all = Vec::new();
    let mut warnings = Vec::new();
    let dir = paths.path(KEY_DIR);
    if let Ok(entries) = fs::read_dir(&dir) {
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for file in files {
            match fs::read_to_string(&file) {
                Ok(text) => {
                    let (k, w) = keys::parse_public_keys(
                        &text,
                        &format!(
                            "{}/{}",
                            KEY_DIR,
                            file.file_name().unwrap_or_default().to_string_lossy()
                        ),
                    );
                    all.extend(k);
                    warnings.extend(w);
                }
                Err(e) => warnings.push(format!("cannot read `{}`: {}", file.display(), e)),
            }
        }
    }
    for line in &config.public_keys {
        let (k, w) = keys::parse_public_keys(line, CONFIG);
        all.extend(k);
        warnings.extend(w);
    }
    (all, warnings)
}

/// `VERSION_ID` of /etc/os-release (quotes removed), if there is one.
pub fn running_version(paths: &Paths) -> Option<String> {
    let text = fs::read_to_string(paths.path("/etc/os-release")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_ID="))
        .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_string())
        .filter(|v| !v.is_empty())
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), to tell "applied, not rebooted yet"
/// from "rebooted and fell back".
pub fn boot_id(paths: &Paths) -> Option<String> {
    fs::read_to_string(paths.path("/proc/sys/kernel/random/boot_id"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `uname -m` of this system (test mode: `<root>/proc/sys/kernel/arch` when present).
pub fn machine(paths: &Paths) -> String {
    if paths.test_mode() {
        if let Ok(text) = fs::read_to_string(paths.path("/proc/sys/kernel/arch")) {
            return text.trim().to_string();
        }
    }
    std::env::consts::ARCH.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_parses_and_reports_bad_lines() {
        let (c, w) = Config::parse("# comment\nserver = http://x/\nchannel=stable\npublic-key = a:b\npublic-key = c:d\nhealth-port = 6443\nhealth-timeout = 5\nhealth-process = k3s\nhealth-socket = /run/k.sock\nhealth-port = 99999\nbogus = 1\nnoequals\n");
        assert_eq!(c.server.as_deref(), Some("http://x/"));
        assert_eq!(c.channel.as_deref(), Some("stable"));
        assert_eq!(c.public_keys, vec!["a:b", "c:d"]);
        assert_eq!(c.health_port, Some(6443));
        assert_eq!(c.health_timeout, 5);
        assert_eq!(c.health_process, "k3s");
        assert_eq!(c.health_socket.as_deref(), Some("/run/k.sock"));
        assert_eq!(w.len(), 3, "{:?}", w);
        let (d, w) = Config::parse("");
        assert_eq!(
            (d.health_timeout, d.health_process.as_str(), w.len()),
            (120, "kubesolo", 0)
        );
    }
}
