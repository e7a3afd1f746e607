//! `mirror://NAME/…` resolution. The project never names a mirror host: mirrors come from
//! the environment (`KSBUILD_MIRROR_<NAME>`), the user's configuration
//! (`$XDG_CONFIG_HOME/ksbuild/mirrors.toml`) or, for `debian` and `debian-security`, the
//! host's apt sources. Reads files and the environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Mirror lists by name, in order of preference. Discovered ones are read on first use,
/// so that a realisation with nothing to fetch reads no configuration.
#[derive(Debug, Clone)]
pub struct Mirrors {
    found: std::sync::OnceLock<Found>,
    given: Option<Found>,
}

#[derive(Debug, Clone, Default)]
struct Found {
    lists: BTreeMap<String, Vec<String>>,
    /// Where each list came from, for messages.
    origins: BTreeMap<String, String>,
}

impl Mirrors {
    /// An explicit set (for tests and configuration).
    pub fn new(lists: BTreeMap<String, Vec<String>>) -> Mirrors {
        let origins = lists
            .keys()
            .map(|k| (k.clone(), "configuration".to_string()))
            .collect();
        Mirrors {
            found: std::sync::OnceLock::new(),
            given: Some(Found { lists, origins }),
        }
    }

    /// Mirrors from the environment, the user's configuration file and the host's apt
    /// sources, read when first needed.
    pub fn discover() -> Mirrors {
        Mirrors {
            found: std::sync::OnceLock::new(),
            given: None,
        }
    }

    fn found(&self) -> &Found {
        match &self.given {
            Some(found) => found,
            None => self.found.get_or_init(discover),
        }
    }

    /// The URLs for `mirror://NAME/rest`, in order; `None` if `NAME` has no mirrors.
    pub fn resolve(&self, url: &str) -> Option<Vec<String>> {
        let Some(rest) = url.strip_prefix("mirror://") else {
            return Some(vec![url.to_string()]);
        };
        let (name, path) = rest.split_once('/')?;
        let list = self.found().lists.get(name)?;
        Some(
            list.iter()
                .map(|base| format!("{}/{}", base.trim_end_matches('/'), path))
                .collect(),
        )
    }

    /// Where the list for `name` came from.
    pub fn origin(&self, name: &str) -> Option<&str> {
        self.found().origins.get(name).map(String::as_str)
    }
}

/// Reads the mirrors from the environment, the configuration file and apt's sources.
fn discover() -> Found {
    let mut m = Found::default();
    for (key, value) in std::env::vars() {
        if let Some(name) = key.strip_prefix("KSBUILD_MIRROR_") {
            let name = name.to_ascii_lowercase().replace('_', "-");
            let urls: Vec<String> = value.split_whitespace().map(String::from).collect();
            if !urls.is_empty() {
                m.origins.insert(name.clone(), format!("`{key}`"));
                m.lists.insert(name, urls);
            }
        }
    }
    let config_dir = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    if let Some(file) = config_dir.map(|d| d.join("ksbuild/mirrors.toml")) {
        if let Ok(text) = std::fs::read_to_string(&file) {
            if let Ok(table) = toml::from_str::<BTreeMap<String, Vec<String>>>(&text) {
                for (name, urls) in table {
                    if !m.lists.contains_key(&name) && !urls.is_empty() {
                        m.origins
                            .insert(name.clone(), format!("`{}`", file.display()));
                        m.lists.insert(name, urls);
                    }
                }
            }
        }
    }
    for (name, urls) in apt_mirrors(Path::new("/etc/apt")) {
        if !m.lists.contains_key(&name) && !urls.is_empty() {
            m.origins
                .insert(name.clone(), "the host's apt sources".to_string());
            m.lists.insert(name, urls);
        }
    }
    m
}

/// `debian` and `debian-security` mirrors from apt's `sources.list` (one-line format) and
/// `sources.list.d/*.sources` (deb822) under `etc_apt`.
pub fn apt_mirrors(etc_apt: &Path) -> BTreeMap<String, Vec<String>> {
    let mut uris: Vec<(String, Vec<String>)> = Vec::new();
    let mut files = vec![etc_apt.join("sources.list")];
    if let Ok(dir) = std::fs::read_dir(etc_apt.join("sources.list.d")) {
        let mut more: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        let name = file.to_string_lossy();
        if name.ends_with(".sources") {
            for stanza in text.split("\n\n") {
                let field = |key: &str| {
                    stanza.lines().find_map(|l| {
                        l.strip_prefix(key)
                            .and_then(|v| v.strip_prefix(':'))
                            .map(|v| v.trim().to_string())
                    })
                };
                let enabled = field("Enabled").is_none_or(|v| v != "no");
                let types = field("Types").unwrap_or_default();
                if !enabled || !types.split_whitespace().any(|t| t == "deb") {
                    continue;
                }
                let suites: Vec<String> = field("Suites")
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(String::from)
                    .collect();
                for uri in field("URIs").unwrap_or_default().split_whitespace() {
                    uris.push((uri.to_string(), suites.clone()));
                }
            }
        } else if name.ends_with(".list") {
            for line in text.lines() {
                let line = line.split('#').next().unwrap_or("").trim();
                let mut words = line.split_whitespace().peekable();
                if words.next() != Some("deb") {
                    continue;
                }
                if words.peek().is_some_and(|w| w.starts_with('[')) {
                    for w in words.by_ref() {
                        if w.ends_with(']') {
                            break;
                        }
                    }
                }
                if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
                    uris.push((uri.to_string(), vec![suite.to_string()]));
                }
            }
        }
    }
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (uri, suites) in uris {
        let uri = uri.trim_end_matches('/').to_string();
        let name = if uri.ends_with("/debian-security")
            || suites.iter().any(|s| s.ends_with("-security"))
        {
            "debian-security"
        } else if uri.ends_with("/debian") {
            "debian"
        } else {
            continue;
        };
        let list = out.entry(name.to_string()).or_default();
        if !list.contains(&uri) {
            list.push(uri);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_apt_formats() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sources.list.d")).unwrap();
        std::fs::write(
            dir.path().join("sources.list"),
            "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror.one/debian bookworm main\ndeb-src http://src.example/debian bookworm main\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("sources.list.d/debian.sources"),
            "Types: deb\nURIs: http://mirror.two/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://mirror.two/debian-security\nSuites: bookworm-security\n\nTypes: deb\nEnabled: no\nURIs: http://disabled/debian\nSuites: x\n",
        )
        .unwrap();
        let m = apt_mirrors(dir.path());
        assert_eq!(
            m["debian"],
            ["http://mirror.one/debian", "http://mirror.two/debian"]
        );
        assert_eq!(m["debian-security"], ["http://mirror.two/debian-security"]);
        let mirrors = Mirrors::new(m);
        assert_eq!(
            mirrors
                .resolve("mirror://debian/pool/main/b/x.deb")
                .unwrap(),
            [
                "http://mirror.one/debian/pool/main/b/x.deb",
                "http://mirror.two/debian/pool/main/b/x.deb"
            ]
        );
        assert_eq!(mirrors.resolve("mirror://nope/x"), None);
        assert_eq!(mirrors.resolve("https://a/b").unwrap(), ["https://a/b"]);
    }
}
