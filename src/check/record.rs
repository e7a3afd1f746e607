//! `derivations/outputs.lock`: recorded outputs. For chosen targets, the `.drv` path and
//! each output's store path, NAR hash and NAR size, written only by a `ksbuild check
//! --record` that passed (at least two builds that agree). `ksbuild check --against-record`
//! builds a target once and compares it with its record: a reproducibility check across
//! machines and time, so CI compiles each expensive derivation once. The fields per output
//! are those of a narinfo (`StorePath`, `NarHash`, `NarSize`), so a binary cache's narinfo
//! compares the same way. Reads and writes the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The record file's path in a project.
pub fn record_path(root: &Path) -> PathBuf {
    root.join("derivations").join("outputs.lock")
}

/// One output as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordedOutput {
    /// Its store path.
    pub path: String,
    /// Its NAR hash (SRI).
    pub nar_hash: String,
    /// Its NAR size.
    pub nar_size: u64,
}

/// The record of one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Record {
    /// The `.drv` path the record is for.
    pub drv: String,
    /// How many builds agreed when it was recorded.
    pub builds: u32,
    /// The outputs, by name.
    pub outputs: BTreeMap<String, RecordedOutput>,
}

/// The whole file: records by target.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Records(pub BTreeMap<String, Record>);

/// A record file that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Reading or writing failed.
    #[error("cannot {what} `{path}`: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// It is not valid.
    #[error("`{path}` is not a valid record file: {message}; re-record with `ksbuild check --record TARGET…`")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        message: String,
    },
}

impl Records {
    /// Reads the project's record file (empty if there is none).
    pub fn load(root: &Path) -> Result<Records, RecordError> {
        let path = record_path(root);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Records::default()),
            Err(source) => {
                return Err(RecordError::Io {
                    what: "read",
                    path,
                    source,
                })
            }
        };
        Records::parse(&text).map_err(|message| RecordError::Parse { path, message })
    }

    /// Parses the text of a record file.
    pub fn parse(text: &str) -> Result<Records, String> {
        toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            match line {
                Some(l) => format!("line {l}: {}", e.message()),
                None => e.message().to_string(),
            }
        })
    }

    /// The file's text: a header, then the records sorted by target.
    pub fn to_text(&self) -> String {
        let body = toml::to_string(self).unwrap_or_default();
        format!(
            "# Outputs recorded by `ksbuild check --record`: for each target, its .drv and the NAR\n\
             # hash of each output, written only after builds that agreed. `ksbuild check\n\
             # --against-record TARGET` builds it once and compares. Re-record; never edit by hand.\n\n{body}"
        )
    }

    /// Writes the project's record file.
    pub fn save(&self, root: &Path) -> Result<(), RecordError> {
        let path = record_path(root);
        crate::store::write_atomic(&path, self.to_text().as_bytes()).map_err(|e| RecordError::Io {
            what: "write",
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_errors_name_the_line() {
        let mut r = Records::default();
        r.0.insert(
            "kernel-x86_64@small".into(),
            Record {
                drv: "/nix/store/00000000000000000000000000000000-k.drv".into(),
                builds: 2,
                outputs: BTreeMap::from([(
                    "out".into(),
                    RecordedOutput {
                        path: "/nix/store/11111111111111111111111111111111-k".into(),
                        nar_hash: "sha256-AAAA".into(),
                        nar_size: 42,
                    },
                )]),
            },
        );
        let text = r.to_text();
        assert!(text.contains("[\"kernel-x86_64@small\"]"), "{text}");
        assert!(text.contains("narHash = \"sha256-AAAA\""), "{text}");
        assert_eq!(Records::parse(&text).unwrap(), r);
        let broken = text.replace("narSize = 42", "narSize = \"x\"");
        let e = Records::parse(&broken).unwrap_err();
        assert!(e.starts_with("line "), "{e}");
        let unknown = text.replace("builds = 2", "builds = 2\nbogus = 1");
        assert!(Records::parse(&unknown).unwrap_err().contains("bogus"));
    }
}
