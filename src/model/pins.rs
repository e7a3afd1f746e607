//! `derivations/pins.lock`: the hashes of downloads declared without one (upstream-only
//! inputs such as a release tarball or a kernel fork), recorded when they are first
//! fetched or provided with `ksbuild pin`. Like an environment's lock, it changes only by
//! an explicit fetch or pin, never behind a realisation's back. Reads and writes the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::schema::FetchSpec;
use super::Unpack;
use crate::compat::FileIngestionMethod;

/// The lock file's path in a project.
pub fn pins_path(root: &Path) -> PathBuf {
    root.join("derivations").join("pins.lock")
}

/// How a download becomes a store path: this is part of what a pin pins.
pub fn fetch_mode(spec: &FetchSpec) -> &'static str {
    match spec.unpack.as_ref().map(|u| u.get_ref().as_str()) {
        Some("deb") => "deb",
        Some("tar") => "tar",
        Some(_) => "unpack",
        None if spec.recursive => "recursive",
        None if spec.executable => "executable",
        None => "flat",
    }
}

/// The inverse of [`fetch_mode`]: how a download in `mode` is unpacked, whether it is made
/// executable, and how it is hashed.
pub fn mode_parts(mode: &str) -> (Option<Unpack>, bool, FileIngestionMethod) {
    match mode {
        "deb" => (Some(Unpack::Deb), false, FileIngestionMethod::Recursive),
        "tar" => (Some(Unpack::Tar), false, FileIngestionMethod::Recursive),
        "recursive" => (None, false, FileIngestionMethod::Recursive),
        "executable" => (None, true, FileIngestionMethod::Flat),
        _ => (None, false, FileIngestionMethod::Flat),
    }
}

/// One pinned download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// The URL as the derivation file writes it.
    pub url: String,
    /// `flat`, `executable`, `recursive`, `tar` or `deb` (see [`fetch_mode`]).
    pub mode: String,
    /// The hash, in SRI form.
    pub hash: String,
}

/// The pins of a project.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pins {
    /// Sorted by URL and mode.
    #[serde(default)]
    pub pin: Vec<Pin>,
}

/// Why the pins cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PinsError {
    /// I/O.
    #[error("cannot {what} `{path}`: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not a pins file.
    #[error("`{path}` is not a valid pins file: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Pins {
    /// Reads `derivations/pins.lock`; a missing file is an empty set.
    pub fn load(root: &Path) -> Result<Pins, PinsError> {
        let path = pins_path(root);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| PinsError::Parse {
                path,
                message: e.message().to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Pins::default()),
            Err(source) => Err(PinsError::Io {
                what: "read",
                path,
                source,
            }),
        }
    }

    /// The pinned hash of `url` fetched in `mode`.
    pub fn get(&self, url: &str, mode: &str) -> Option<&str> {
        self.pin
            .iter()
            .find(|p| p.url == url && p.mode == mode)
            .map(|p| p.hash.as_str())
    }

    /// Records (or replaces) a pin.
    pub fn set(&mut self, url: &str, mode: &str, hash: &str) {
        self.pin.retain(|p| !(p.url == url && p.mode == mode));
        self.pin.push(Pin {
            url: url.to_string(),
            mode: mode.to_string(),
            hash: hash.to_string(),
        });
        self.pin
            .sort_by(|a, b| (&a.url, &a.mode).cmp(&(&b.url, &b.mode)));
    }

    /// Writes `derivations/pins.lock` atomically (a temporary file renamed over it).
    pub fn save(&self, root: &Path) -> Result<(), PinsError> {
        let path = pins_path(root);
        let body = toml::to_string(self).map_err(|e| PinsError::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        let text = format!(
            "# Hashes of downloads declared without one, recorded on first fetch or by\n\
             # `ksbuild pin TARGET FILE`. Re-pin explicitly; never edit by hand.\n\n{body}"
        );
        let io = |what, source| PinsError::Io {
            what,
            path: path.clone(),
            source,
        };
        // A temporary file of its own (two processes may pin at once), renamed over it.
        crate::store::write_atomic(&path, text.as_bytes()).map_err(|e| match e {
            crate::store::StoreError::Io { source, .. } => io("write", source),
            other => io("write", std::io::Error::other(other.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip() {
        let spec = |unpack: Option<&str>, recursive: bool, executable: bool| FetchSpec {
            url: toml::Spanned::new(0..0, "https://x/y".into()),
            hash: None,
            name: None,
            recursive,
            unpack: unpack.map(|u| toml::Spanned::new(0..0, u.to_string())),
            executable,
        };
        for (s, unpack, exec, method) in [
            (
                spec(Some("deb"), false, false),
                Some(Unpack::Deb),
                false,
                FileIngestionMethod::Recursive,
            ),
            (
                spec(Some("tar"), false, false),
                Some(Unpack::Tar),
                false,
                FileIngestionMethod::Recursive,
            ),
            (
                spec(None, true, false),
                None,
                false,
                FileIngestionMethod::Recursive,
            ),
            (
                spec(None, false, true),
                None,
                true,
                FileIngestionMethod::Flat,
            ),
            (
                spec(None, false, false),
                None,
                false,
                FileIngestionMethod::Flat,
            ),
        ] {
            assert_eq!(mode_parts(fetch_mode(&s)), (unpack, exec, method));
        }
    }

    #[test]
    fn set_replaces_and_sorts() {
        let mut p = Pins::default();
        p.set("https://b/x.tar.gz", "tar", "sha256-B");
        p.set("https://a/y", "flat", "sha256-A");
        p.set("https://b/x.tar.gz", "tar", "sha256-C");
        assert_eq!(p.pin.len(), 2);
        assert_eq!(p.pin[0].url, "https://a/y");
        assert_eq!(p.get("https://b/x.tar.gz", "tar"), Some("sha256-C"));
        assert_eq!(p.get("https://b/x.tar.gz", "flat"), None);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("derivations")).unwrap();
        p.save(dir.path()).unwrap();
        assert_eq!(Pins::load(dir.path()).unwrap(), p);
    }
}
