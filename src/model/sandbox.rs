//! `sandboxes/NAME.toml` (a pinned Debian build environment) and its lock file
//! `sandboxes/NAME.lock`. Reads and writes those files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{ModelError, SourceFile};

/// An environment: which Debian packages, from where, and the fix-ups its tree needs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentFile {
    /// Suites of the `debian` mirror, e.g. `["bookworm", "bookworm-updates"]`.
    pub suites: Vec<String>,
    /// The security suite of the `debian-security` mirror, e.g. `"bookworm-security"`.
    pub security: Option<String>,
    /// Archive components, default `["main"]`.
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    /// The architecture the tree runs on, default `amd64`.
    #[serde(default = "default_architecture")]
    pub architecture: String,
    /// Whether the Essential set is included (an empty dpkg status does not add it).
    #[serde(default = "default_true")]
    pub essential: bool,
    /// Packages whose complete dependency closure forms the tree.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Packages locked as they are, without dependencies (`name` or `name:arch`): data
    /// such as firmware or another architecture's binaries.
    #[serde(default)]
    pub data: Vec<String>,
    /// Symlinks to create in the unpacked tree (`"usr/bin/awk" = "mawk"`).
    #[serde(default)]
    pub fixups: BTreeMap<String, String>,
}

fn default_components() -> Vec<String> {
    vec!["main".into()]
}
fn default_architecture() -> String {
    "amd64".into()
}
fn default_true() -> bool {
    true
}

/// One locked `.deb`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedDeb {
    /// Package name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Architecture.
    pub architecture: String,
    /// Mirror name (`debian`, `debian-security`).
    pub mirror: String,
    /// Pool path below the mirror.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 (hex), from the signed index.
    pub sha256: String,
}

/// A lock file: every `.deb` of an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    /// The environment it locks.
    pub environment: String,
    /// Whether the archive's signature was checked when locking.
    pub signature_checked: bool,
    /// The packages, sorted by name and architecture.
    pub deb: Vec<LockedDeb>,
}

/// Where environment `name` of the project at `root` is declared.
pub fn environment_path(root: &Path, name: &str) -> PathBuf {
    root.join("sandboxes").join(format!("{name}.toml"))
}

/// Where its lock lives.
pub fn lock_path(root: &Path, name: &str) -> PathBuf {
    root.join("sandboxes").join(format!("{name}.lock"))
}

/// Loads `sandboxes/NAME.toml`.
pub fn load_environment(root: &Path, name: &str) -> Result<EnvironmentFile, ModelError> {
    let path = environment_path(root, name);
    let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    let file = SourceFile {
        path: path.strip_prefix(root).unwrap_or(&path).to_path_buf(),
        text: Arc::new(text),
    };
    file.parse()
}

/// Names of the environments declared in `sandboxes/`.
pub fn environment_names(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("sandboxes"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".toml"))
                .map(String::from)
        })
        .collect();
    names.sort();
    names
}

impl LockFile {
    /// The lock as TOML, with a header saying how it was made.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!(
            "# Written by `ksbuild lock {}`; re-lock explicitly, never edit by hand.\n{body}",
            self.environment
        )
    }

    /// Reads a lock file.
    pub fn load(path: &Path) -> Result<LockFile, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file = SourceFile {
            path: path.to_path_buf(),
            text: Arc::new(text),
        };
        file.parse()
    }
}
