//! `derivations/pins.lock`: the hashes of downloads declared without one (upstream-only
//! inputs such as a release tarball or a kernel fork), recorded when they are first
//! fetched or provided with `ksbuild pin`. Like an environment's lock, it changes only by
//! an explicit fetch or pin, never behind a realisation's back. Reads and writes the file.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::schema::FetchSpec;
use super::{ModelError, SourceFile, Unpack};
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

/// The command that pins download `key` (whose URL is `url`) from a file obtained
/// elsewhere: the one fix every "cannot fetch" of an upstream-only download suggests.
pub fn pin_command(key: &str, url: &str) -> String {
    let file = url
        .rsplit('/')
        .next()
        .and_then(|f| f.split(['?', '#']).next())
        .filter(|f| !f.is_empty())
        .unwrap_or("FILE");
    format!("ksbuild pin {key} /path/to/{file}")
}

/// One pinned download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Pin {
    /// The URL as the derivation file writes it.
    pub url: String,
    /// `flat`, `executable`, `recursive`, `tar` or `deb` (see [`fetch_mode`]).
    pub mode: String,
    /// The hash, in SRI form.
    pub hash: String,
    /// Where `hash` is in `pins.lock`, when the pin was read from it.
    #[serde(skip)]
    pub hash_span: Option<Range<usize>>,
}

/// The pins of a project.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pins {
    /// Sorted by URL and mode.
    pub pin: Vec<Pin>,
    /// `derivations/pins.lock` as read, for errors that point into it.
    #[serde(skip)]
    pub source: Option<SourceFile>,
}

/// `pins.lock` as written, with the spans of the hashes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinsFile {
    #[serde(default)]
    pin: Vec<PinEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PinEntry {
    url: String,
    mode: String,
    hash: Spanned<String>,
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
    /// The pins cannot be written as TOML.
    #[error("cannot encode `{path}`: {message}")]
    Encode { path: PathBuf, message: String },
}

impl Pins {
    /// Reads `derivations/pins.lock`; a missing file is an empty set. A file that is not
    /// a pins file is an error pointing into it.
    pub fn load(root: &Path) -> Result<Pins, ModelError> {
        let path = pins_path(root);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Pins::default()),
            Err(source) => {
                return Err(PinsError::Io {
                    what: "read",
                    path,
                    source,
                }
                .into())
            }
        };
        let source = SourceFile {
            path: path.strip_prefix(root).unwrap_or(&path).to_path_buf(),
            text: Arc::new(text),
        };
        let file: PinsFile = source.parse().map_err(|mut e| {
            if let ModelError::InFile(f) = &mut e {
                f.help = Some(format!(
                    "`{}` is written by `ksbuild pin`, not by hand: fix this line, or delete its \
                     `[[pin]]` entry and pin the download again (`ksbuild pin KEY`, or `ksbuild realise`, \
                     which pins on first fetch)",
                    source.path.display()
                ));
            }
            e
        })?;
        Ok(Pins {
            pin: file
                .pin
                .into_iter()
                .map(|p| Pin {
                    url: p.url,
                    mode: p.mode,
                    hash_span: Some(p.hash.span()),
                    hash: p.hash.into_inner(),
                })
                .collect(),
            source: Some(source),
        })
    }

    /// The pin of `url` fetched in `mode`.
    pub fn find(&self, url: &str, mode: &str) -> Option<&Pin> {
        self.pin.iter().find(|p| p.url == url && p.mode == mode)
    }

    /// The pinned hash of `url` fetched in `mode`.
    pub fn get(&self, url: &str, mode: &str) -> Option<&str> {
        self.find(url, mode).map(|p| p.hash.as_str())
    }

    /// Records (or replaces) a pin.
    pub fn set(&mut self, url: &str, mode: &str, hash: &str) {
        self.pin.retain(|p| !(p.url == url && p.mode == mode));
        self.pin.push(Pin {
            url: url.to_string(),
            mode: mode.to_string(),
            hash: hash.to_string(),
            hash_span: None,
        });
        self.pin
            .sort_by(|a, b| (&a.url, &a.mode).cmp(&(&b.url, &b.mode)));
    }

    /// Writes `derivations/pins.lock` atomically (a temporary file renamed over it).
    pub fn save(&self, root: &Path) -> Result<(), PinsError> {
        let path = pins_path(root);
        let body = toml::to_string(self).map_err(|e| PinsError::Encode {
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
        let loaded = Pins::load(dir.path()).unwrap();
        let entries = |p: &Pins| -> Vec<(String, String, String)> {
            p.pin
                .iter()
                .map(|p| (p.url.clone(), p.mode.clone(), p.hash.clone()))
                .collect()
        };
        assert_eq!(entries(&loaded), entries(&p));
        // Loaded pins know where their hashes are.
        let source = loaded.source.as_ref().unwrap();
        assert_eq!(source.path, Path::new("derivations/pins.lock"));
        let span = loaded.pin[1].hash_span.clone().unwrap();
        assert_eq!(&source.text[span], "\"sha256-C\"");
    }

    #[test]
    fn a_broken_lock_is_an_error_at_its_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("derivations")).unwrap();
        let text = "# c\n\n[[pin]]\nurl = \"https://a/y\"\nmode = \"flat\"\nhash = sha256-A\"\n";
        std::fs::write(pins_path(dir.path()), text).unwrap();
        let err = Pins::load(dir.path()).unwrap_err();
        let ModelError::InFile(f) = &err else {
            panic!("{err:?}")
        };
        assert!(f.message.contains("derivations/pins.lock"), "{}", f.message);
        assert!(f.help.as_deref().unwrap().contains("ksbuild pin"));
        let report = format!("{:?}", miette::Report::new(err));
        assert!(report.contains("derivations/pins.lock:6:"), "{report}");
        assert_eq!(
            pin_command("k.src", "https://x/a/b.tar.gz?raw=1"),
            "ksbuild pin k.src /path/to/b.tar.gz"
        );
    }
}
