//! Binary-cache `.narinfo` files and the content addresses (`CA:`) they carry: parsing,
//! writing in Nix 2.8's exact form, fingerprints, signing and verification. Pure: no I/O —
//! text in, text out.
//!
//! A narinfo is a list of `Key: value\n` lines. Nix 2.8 (`libstore/nar-info.cc`) writes
//!
//! ```text
//! StorePath: /nix/store/<hash>-<name>
//! URL: nar/<nix32 file hash>.nar[.xz]
//! Compression: none|xz|…
//! FileHash: sha256:<nix32>
//! FileSize: <bytes>
//! NarHash: sha256:<nix32>
//! NarSize: <bytes>
//! References: <base names, space-separated, sorted>     (note the space when empty)
//! Deriver: <base name>                                   (optional)
//! System: <system>                                       (optional, legacy)
//! Sig: <key name>:<base64>                               (zero or more, sorted)
//! CA: fixed:[r:]<algo>:<nix32> | text:sha256:<nix32>     (optional)
//! ```
//!
//! Reading follows Nix where it is strict and is stricter where Nix is sloppy:
//! * field order is free; `StorePath`, `URL`, `NarHash` and a non-zero `NarSize` are
//!   required; a missing `References` line means no references; a missing or empty
//!   `Compression` means `bzip2`; `Deriver: unknown-deriver` means no deriver; an empty
//!   `CA` or `System` value means none;
//! * every line must end with `\n` (Nix calls a file without one corrupt) and separate key
//!   and value with `": "` (Nix blindly skips two bytes, so `References:` without its space
//!   swallows the next line);
//! * any key but `Sig` may appear only once (Nix silently lets most repeats overwrite);
//!   identical `Sig` lines collapse into one, as in Nix's `std::set`;
//! * **unknown keys are ignored and not kept**, exactly as Nix does: re-writing a parsed
//!   narinfo therefore always yields what Nix would write;
//! * `Sig` values must be well-formed signatures (Nix stores any string and fails later,
//!   when verifying); `NarHash` and `FileHash` must be SHA-256, the only algorithm Nix's
//!   writer accepts. They may be in any encoding Nix reads and are re-written as nix32.

use std::collections::BTreeSet;
use std::fmt;

use super::hash::{Hash, HashAlgo, HashError};
use super::signing::{self, PublicKey, SecretKey, Signature, SigningError};
use super::store_path::{FileIngestionMethod, StoreDir, StorePath, StorePathError};

/// Why a narinfo or content address was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NarInfoError {
    /// The text does not end with `\n`; Nix reports such a file as corrupt.
    #[error("narinfo does not end with a newline (Nix rejects such a file as corrupt)")]
    MissingFinalNewline,
    /// A line that is not `Key: value`.
    #[error("narinfo line {line}: `{text}` is not `Key: value` ({reason})")]
    MalformedLine {
        /// 1-based line number.
        line: usize,
        /// The offending line.
        text: String,
        /// What is missing.
        reason: &'static str,
    },
    /// A key other than `Sig` appears twice.
    #[error("narinfo line {line}: duplicate `{key}` field")]
    DuplicateField {
        /// 1-based line number of the second occurrence.
        line: usize,
        /// The repeated key.
        key: String,
    },
    /// A required field is absent.
    #[error("narinfo lacks the required `{key}` field")]
    MissingField {
        /// `StorePath`, `URL`, `NarHash` or `NarSize`.
        key: &'static str,
    },
    /// A required field is present but empty (`URL: `).
    #[error("narinfo line {line}: `{key}` must not be empty")]
    EmptyField {
        /// 1-based line number.
        line: usize,
        /// The key.
        key: &'static str,
    },
    /// `NarHash` or `FileHash` is not a hash.
    #[error("narinfo line {line}: invalid `{key}`: {source}")]
    BadHash {
        /// 1-based line number.
        line: usize,
        /// `NarHash` or `FileHash`.
        key: &'static str,
        /// Why the hash did not parse.
        #[source]
        source: HashError,
    },
    /// `NarHash` or `FileHash` uses an algorithm other than SHA-256.
    #[error("narinfo line {line}: `{key}` must be a sha256 hash, found {algo}")]
    NotSha256 {
        /// 1-based line number (0 when checking a `NarInfo` value, not text).
        line: usize,
        /// `NarHash` or `FileHash`.
        key: &'static str,
        /// The algorithm found.
        algo: HashAlgo,
    },
    /// `StorePath`, a reference or the deriver is not a store path.
    #[error("narinfo line {line}: invalid store path in `{key}`: {source}")]
    BadStorePath {
        /// 1-based line number.
        line: usize,
        /// `StorePath`, `References` or `Deriver`.
        key: &'static str,
        /// Why the path did not parse.
        #[source]
        source: StorePathError,
    },
    /// `NarSize` or `FileSize` is not a decimal number.
    #[error("narinfo line {line}: `{key}` value `{value}` is not a decimal byte count")]
    BadSize {
        /// 1-based line number.
        line: usize,
        /// `NarSize` or `FileSize`.
        key: &'static str,
        /// The value found.
        value: String,
    },
    /// `NarSize: 0`, which Nix treats as missing (no NAR is empty).
    #[error("narinfo `NarSize` is zero; Nix treats it as missing, since no NAR is empty")]
    ZeroNarSize,
    /// A `Sig` line that is not `name:base64(64 bytes)`.
    #[error("narinfo line {line}: invalid `Sig`: {source}")]
    BadSignature {
        /// 1-based line number.
        line: usize,
        /// Why the signature did not parse.
        #[source]
        source: SigningError,
    },
    /// A content address that is not `fixed:[r:]<algo>:<hash>` or `text:sha256:<hash>`.
    #[error("`{text}` is not a content address: {reason}")]
    BadContentAddress {
        /// The rejected text.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A content address whose hash does not parse.
    #[error("content address `{text}` has an invalid hash: {source}")]
    BadContentAddressHash {
        /// The rejected text.
        text: String,
        /// Why the hash did not parse.
        #[source]
        source: HashError,
    },
}

/// How a store path's contents determine its name (`CA:` in narinfo, `ca` in path info).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ContentAddress {
    /// `text:sha256:<nix32>`: a flat text file such as a `.drv` or `builtins.toFile`
    /// result, hashed as bytes; it may reference other paths.
    Text {
        /// SHA-256 of the file's bytes.
        hash: Hash,
    },
    /// `fixed:[r:]<algo>:<nix32>`: a fixed output or added path, hashed flat (the file's
    /// bytes) or recursively (`r:`, the NAR).
    Fixed {
        /// Flat or recursive (NAR) hashing.
        method: FileIngestionMethod,
        /// The content hash.
        hash: Hash,
    },
}

impl fmt::Display for ContentAddress {
    /// Nix's `renderContentAddress`: the hash is always written as nix32.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ContentAddress::Text { hash } => write!(f, "text:{}", hash.to_nix32_prefixed()),
            ContentAddress::Fixed { method, hash } => {
                let r = if *method == FileIngestionMethod::Recursive {
                    "r:"
                } else {
                    ""
                };
                write!(f, "fixed:{r}{}", hash.to_nix32_prefixed())
            }
        }
    }
}

impl ContentAddress {
    /// Parses Nix's content-address form. As in Nix 2.8's `parseContentAddress`, the hash
    /// after the algorithm may be hex, nix32 or base64 (not SRI), and `text` must be SHA-256.
    pub fn parse(text: &str) -> Result<ContentAddress, NarInfoError> {
        let bad = |reason| NarInfoError::BadContentAddress {
            text: text.to_string(),
            reason,
        };
        let (prefix, rest) = text
            .split_once(':')
            .ok_or_else(|| bad("expected `<prefix>:<rest>`"))?;
        let (method, rest) = match prefix {
            "text" => (None, rest),
            "fixed" => match rest.strip_prefix("r:") {
                Some(rest) => (Some(FileIngestionMethod::Recursive), rest),
                None => (Some(FileIngestionMethod::Flat), rest),
            },
            _ => return Err(bad("the prefix must be `text` or `fixed`")),
        };
        let (algo, digest) = rest
            .split_once(':')
            .ok_or_else(|| bad("the hash must be `<algo>:<hash>`"))?;
        let algo =
            HashAlgo::from_name(algo).map_err(|source| NarInfoError::BadContentAddressHash {
                text: text.to_string(),
                source,
            })?;
        // `algo:digest` with the algorithm already split off: a second `:` or an SRI form
        // in `digest` fails the length check of `Hash::parse`.
        let hash = Hash::parse(&format!("{algo}:{digest}")).map_err(|source| {
            NarInfoError::BadContentAddressHash {
                text: text.to_string(),
                source,
            }
        })?;
        match method {
            None if algo != HashAlgo::Sha256 => {
                Err(bad("a `text` content address must use sha256"))
            }
            None => Ok(ContentAddress::Text { hash }),
            Some(method) => Ok(ContentAddress::Fixed { method, hash }),
        }
    }

    /// The content hash.
    pub fn hash(&self) -> &Hash {
        match self {
            ContentAddress::Text { hash } | ContentAddress::Fixed { hash, .. } => hash,
        }
    }

    /// The store path this content address gives a path with `path`'s name and with
    /// `references` (Nix's `ValidPathInfo::isContentAddressed` computation); a reference
    /// to `path` itself counts as a self-reference. `None` when no path can match:
    /// only recursive SHA-256 (`source`) fixed paths may have references.
    pub fn store_path(
        &self,
        store_dir: &StoreDir,
        path: &StorePath,
        references: &BTreeSet<StorePath>,
    ) -> Option<StorePath> {
        match self {
            ContentAddress::Text { hash } => {
                store_dir.make_text_path(path.name(), hash, references).ok()
            }
            ContentAddress::Fixed { method, hash } => {
                let mut refs = references.clone();
                let self_reference = refs.remove(path);
                let is_source =
                    *method == FileIngestionMethod::Recursive && hash.algo() == HashAlgo::Sha256;
                if !is_source && (self_reference || !refs.is_empty()) {
                    return None;
                }
                store_dir
                    .make_fixed_output_path(*method, hash, path.name(), &refs, self_reference)
                    .ok()
            }
        }
    }
}

/// The contents of a `.narinfo` file: where a path's NAR is and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// The store path described.
    pub store_path: StorePath,
    /// Where the (compressed) NAR is, relative to the cache root, e.g. `nar/<hash>.nar.xz`.
    pub url: String,
    /// `none`, `xz`, `bzip2`, `zstd`, …; parsing turns a missing or empty value into
    /// `bzip2`, as Nix does.
    pub compression: String,
    /// SHA-256 of the file at `url`; omitted from the text when `None` (Nix always has one).
    pub file_hash: Option<Hash>,
    /// Size of the file at `url`; omitted from the text when `None`.
    pub file_size: Option<u64>,
    /// SHA-256 of the uncompressed NAR. Must be SHA-256: Nix writes and signs nothing else.
    pub nar_hash: Hash,
    /// Size of the uncompressed NAR in bytes; never 0.
    pub nar_size: u64,
    /// Store paths the path refers to (possibly itself).
    pub references: BTreeSet<StorePath>,
    /// The derivation that built the path, if known.
    pub deriver: Option<StorePath>,
    /// The legacy `System:` field, which Nix 2.8 still reads and writes.
    pub system: Option<String>,
    /// Signatures. Their order does not matter: they are written sorted and without
    /// duplicates, because Nix keeps them in a `std::set<std::string>`.
    pub signatures: Vec<Signature>,
    /// The content address, for content-addressed paths.
    pub ca: Option<ContentAddress>,
}

/// Parses a decimal byte count strictly (digits only, no sign, no overflow).
fn parse_size(line: usize, key: &'static str, value: &str) -> Result<u64, NarInfoError> {
    let bad = || NarInfoError::BadSize {
        line,
        key,
        value: value.to_string(),
    };
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    value.parse().map_err(|_| bad())
}

/// Parses a `NarHash`/`FileHash` value and insists on SHA-256.
fn parse_sha256(line: usize, key: &'static str, value: &str) -> Result<Hash, NarInfoError> {
    let hash = Hash::parse(value).map_err(|source| NarInfoError::BadHash { line, key, source })?;
    if hash.algo() != HashAlgo::Sha256 {
        return Err(NarInfoError::NotSha256 {
            line,
            key,
            algo: hash.algo(),
        });
    }
    Ok(hash)
}

impl NarInfo {
    /// Parses narinfo text for a cache whose store directory is `store_dir` (the
    /// `StoreDir:` of its `nix-cache-info`). See the module docs for what is accepted.
    pub fn parse(store_dir: &StoreDir, text: &str) -> Result<NarInfo, NarInfoError> {
        let body = text
            .strip_suffix('\n')
            .ok_or(NarInfoError::MissingFinalNewline)?;
        let mut store_path = None;
        let mut url = None;
        let mut compression = None;
        let mut file_hash = None;
        let mut file_size = None;
        let mut nar_hash = None;
        let mut nar_size = None;
        let mut references = BTreeSet::new();
        let mut deriver = None;
        let mut system = None;
        let mut signatures: Vec<Signature> = Vec::new();
        let mut ca = None;
        let mut seen: Vec<&str> = Vec::new();

        for (index, raw) in body.split('\n').enumerate() {
            let line = index + 1;
            let malformed = |reason| NarInfoError::MalformedLine {
                line,
                text: raw.to_string(),
                reason,
            };
            let (key, value) = match raw.split_once(':') {
                None => return Err(malformed("no `:`")),
                Some(("", _)) => return Err(malformed("empty key")),
                Some((key, rest)) => match rest.strip_prefix(' ') {
                    Some(value) => (key, value),
                    None => {
                        return Err(malformed(
                            "Nix needs a space after the `:`, even when the value is empty",
                        ))
                    }
                },
            };
            if key != "Sig" {
                if seen.contains(&key) {
                    return Err(NarInfoError::DuplicateField {
                        line,
                        key: key.to_string(),
                    });
                }
                seen.push(key);
            }
            let path_error = |key| move |source| NarInfoError::BadStorePath { line, key, source };
            match key {
                "StorePath" => {
                    store_path = Some(
                        store_dir
                            .parse_path(value)
                            .map_err(path_error("StorePath"))?,
                    )
                }
                "URL" if value.is_empty() => {
                    return Err(NarInfoError::EmptyField { line, key: "URL" })
                }
                "URL" => url = Some(value.to_string()),
                "Compression" => compression = Some(value.to_string()),
                "FileHash" => file_hash = Some(parse_sha256(line, "FileHash", value)?),
                "FileSize" => file_size = Some(parse_size(line, "FileSize", value)?),
                "NarHash" => nar_hash = Some(parse_sha256(line, "NarHash", value)?),
                "NarSize" => nar_size = Some(parse_size(line, "NarSize", value)?),
                "References" => {
                    // Nix's tokenizeString: runs of spaces separate, empty tokens vanish.
                    for base in value.split(' ').filter(|s| !s.is_empty()) {
                        references.insert(
                            StorePath::from_base_name(base).map_err(path_error("References"))?,
                        );
                    }
                }
                "Deriver" if value == "unknown-deriver" => {}
                "Deriver" => {
                    deriver = Some(StorePath::from_base_name(value).map_err(path_error("Deriver"))?)
                }
                // Nix treats an empty `System` or `CA` value as absent.
                "System" => system = Some(value.to_string()).filter(|s| !s.is_empty()),
                "Sig" => {
                    let sig = Signature::parse(value)
                        .map_err(|source| NarInfoError::BadSignature { line, source })?;
                    if !signatures.contains(&sig) {
                        signatures.push(sig);
                    }
                }
                "CA" if value.is_empty() => {}
                "CA" => ca = Some(ContentAddress::parse(value)?),
                // Unknown keys are ignored, as by Nix (see the module docs).
                _ => {}
            }
        }

        let missing = |key| NarInfoError::MissingField { key };
        let store_path = store_path.ok_or(missing("StorePath"))?;
        let url = url.ok_or(missing("URL"))?;
        let nar_hash = nar_hash.ok_or(missing("NarHash"))?;
        let nar_size = nar_size.ok_or(missing("NarSize"))?;
        if nar_size == 0 {
            return Err(NarInfoError::ZeroNarSize);
        }
        Ok(NarInfo {
            store_path,
            url,
            compression: compression
                .filter(|c| !c.is_empty())
                .unwrap_or_else(|| "bzip2".to_string()),
            file_hash,
            file_size,
            nar_hash,
            nar_size,
            references,
            deriver,
            system,
            signatures,
            ca,
        })
    }

    /// The narinfo text exactly as Nix 2.8's `NarInfo::to_string` writes it: fixed field
    /// order, every line `Key: value\n`, `References: ` with its space when empty,
    /// signatures sorted and deduplicated. `FileHash`/`FileSize` lines are left out when
    /// unset (Nix cannot write a narinfo without them).
    pub fn to_text(&self, store_dir: &StoreDir) -> String {
        let mut out = String::new();
        let mut field = |key: &str, value: &str| {
            out.push_str(key);
            out.push_str(": ");
            out.push_str(value);
            out.push('\n');
        };
        field("StorePath", &store_dir.display(&self.store_path));
        field("URL", &self.url);
        field("Compression", &self.compression);
        if let Some(h) = &self.file_hash {
            field("FileHash", &h.to_nix32_prefixed());
        }
        if let Some(size) = self.file_size {
            field("FileSize", &size.to_string());
        }
        field("NarHash", &self.nar_hash.to_nix32_prefixed());
        field("NarSize", &self.nar_size.to_string());
        let refs: Vec<String> = self.references.iter().map(StorePath::to_string).collect();
        field("References", &refs.join(" "));
        if let Some(d) = &self.deriver {
            field("Deriver", &d.to_string());
        }
        if let Some(s) = &self.system {
            field("System", s);
        }
        for sig in self.sorted_signatures() {
            field("Sig", &sig);
        }
        if let Some(ca) = &self.ca {
            field("CA", &ca.to_string());
        }
        out
    }

    /// Signature texts in Nix's order: sorted as strings, each once.
    fn sorted_signatures(&self) -> BTreeSet<String> {
        self.signatures.iter().map(Signature::to_string).collect()
    }

    /// The text that `Sig:` signs (Nix's `ValidPathInfo::fingerprint`):
    /// `1;<store path>;<NarHash as sha256:nix32>;<NarSize>;<comma-joined full reference paths>`.
    ///
    /// Fails, as Nix does, when `NarHash` is not SHA-256 or `NarSize` is 0.
    pub fn fingerprint(&self, store_dir: &StoreDir) -> Result<String, NarInfoError> {
        if self.nar_hash.algo() != HashAlgo::Sha256 {
            return Err(NarInfoError::NotSha256 {
                line: 0,
                key: "NarHash",
                algo: self.nar_hash.algo(),
            });
        }
        if self.nar_size == 0 {
            return Err(NarInfoError::ZeroNarSize);
        }
        let refs: Vec<String> = self
            .references
            .iter()
            .map(|r| store_dir.display(r))
            .collect();
        Ok(format!(
            "1;{};{};{};{}",
            store_dir.display(&self.store_path),
            self.nar_hash.to_nix32_prefixed(),
            self.nar_size,
            refs.join(",")
        ))
    }

    /// Signs the fingerprint with `key` and adds the signature (once: Ed25519 is
    /// deterministic, so signing again with the same key changes nothing).
    pub fn sign(&mut self, store_dir: &StoreDir, key: &SecretKey) -> Result<(), NarInfoError> {
        let sig = key.sign(self.fingerprint(store_dir)?.as_bytes());
        if !self.signatures.contains(&sig) {
            self.signatures.push(sig);
        }
        Ok(())
    }

    /// Whether at least one signature verifies under the trusted key of its name (what
    /// Nix's `require-sigs` demands of a path that is not content-addressed; see
    /// [`NarInfo::is_content_addressed`] for the other way a path is accepted).
    pub fn verify(&self, store_dir: &StoreDir, trusted: &[PublicKey]) -> bool {
        match self.fingerprint(store_dir) {
            Ok(fp) => self
                .signatures
                .iter()
                .any(|s| signing::verify_detached(fp.as_bytes(), s, trusted)),
            Err(_) => false,
        }
    }

    /// Whether the `CA:` field proves the store path: the path computed from the content
    /// address, name and references equals `store_path`. Nix accepts such paths without
    /// any signature (it still checks the NAR against `NarHash` when importing).
    pub fn is_content_addressed(&self, store_dir: &StoreDir) -> bool {
        self.ca
            .as_ref()
            .and_then(|ca| ca.store_path(store_dir, &self.store_path, &self.references))
            .is_some_and(|p| p == self.store_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Golden data: nix-formats.md §8, written by real Nix 2.8 (`nix copy --to file://…`,
    // `nix store sign`, with the throwaway key below). To regenerate, follow the commands
    // there; the test key is deterministic, so the Sig lines do not change.
    const SK: &str = "test-cache-1:xWTUhccR9qI6hyqDfJFIrOuaSJaifyMXsp8DMC3NzBWK6nKZqbcgXS7msLdcKO79kdm7CZAS0COWu/+2EbUI3w==";
    const PK: &str = "test-cache-1:iupymam3IF0u5rC3XCju/ZHZuwmQEtAjlrv/thG1CN8=";

    const HELLO_XZ: &str = "StorePath: /nix/store/9frz7rl3ni9y2yn0qscny8v1iq391zsh-hello
URL: nar/17gd6zzlkx90irc6qawagdkgh1d7qvlnq46yjf7xiqw9ycz7zq4a.nar.xz
Compression: xz
FileHash: sha256:17gd6zzlkx90irc6qawagdkgh1d7qvlnq46yjf7xiqw9ycz7zq4a
FileSize: 128
NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw
NarSize: 120
References: 
Deriver: lrh6nj4qz3arf1xf5zjyjg21k5z2ghrh-hello.drv
";
    const DEPENDENT_XZ: &str = "StorePath: /nix/store/axkrj5qgyiri6mvps8zsvqj51vyfjv8a-dependent
URL: nar/1qakjgmjqvbmja2hapwdw8ady3nqyxs6dbky9k2q0a5s084hi7md.nar.xz
Compression: xz
FileHash: sha256:1qakjgmjqvbmja2hapwdw8ady3nqyxs6dbky9k2q0a5s084hi7md
FileSize: 336
NarHash: sha256:0jn50pqdj3k9yv1zx7mh02rn13fywsm0ds6hgb1b6rh23l83hdy4
NarSize: 1216
References: 9frz7rl3ni9y2yn0qscny8v1iq391zsh-hello
Deriver: k90zqjs5x29993rk2ik6nhzcy2i8pyrm-dependent.drv
";
    const HELLO_SIGNED: &str = "StorePath: /nix/store/9frz7rl3ni9y2yn0qscny8v1iq391zsh-hello
URL: nar/04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw.nar
Compression: none
FileHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw
FileSize: 120
NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw
NarSize: 120
References: 
Deriver: lrh6nj4qz3arf1xf5zjyjg21k5z2ghrh-hello.drv
Sig: test-cache-1:1G4Jw/QgvMZshwcJ9GW4c7f07jkYbYkRBqTYZn4ncSB9fz8JyT7J1Ci0r7TbyYL0ejZ+0OYcHNFL00CQ2SoTAA==
";
    const DEPENDENT_SIGNED: &str = "StorePath: /nix/store/axkrj5qgyiri6mvps8zsvqj51vyfjv8a-dependent
URL: nar/0jn50pqdj3k9yv1zx7mh02rn13fywsm0ds6hgb1b6rh23l83hdy4.nar
Compression: none
FileHash: sha256:0jn50pqdj3k9yv1zx7mh02rn13fywsm0ds6hgb1b6rh23l83hdy4
FileSize: 1216
NarHash: sha256:0jn50pqdj3k9yv1zx7mh02rn13fywsm0ds6hgb1b6rh23l83hdy4
NarSize: 1216
References: 9frz7rl3ni9y2yn0qscny8v1iq391zsh-hello
Deriver: k90zqjs5x29993rk2ik6nhzcy2i8pyrm-dependent.drv
Sig: test-cache-1:nieSOOiBXMDt+grxYj/klHevHhWfY8vjWtQqQGDw+lDlSuqpOJv5BzWaqPkgRr4vMsvao2kpIf15vTZ/DgOHAQ==
";
    const FIXED_FLAT_SIGNED: &str = "StorePath: /nix/store/34653kz58l0k6y6mhmzz5lih5l1yxhi9-fixed-flat
URL: nar/0sg9f58l1jj88w6pdrfdpj5x9b1zrwszk84j81zvby36q9whhhqa.nar
Compression: none
FileHash: sha256:0sg9f58l1jj88w6pdrfdpj5x9b1zrwszk84j81zvby36q9whhhqa
FileSize: 120
NarHash: sha256:0sg9f58l1jj88w6pdrfdpj5x9b1zrwszk84j81zvby36q9whhhqa
NarSize: 120
References: 
Deriver: 0hx07zvmlapllnhb0nmsrz7yzj11njlj-fixed-flat.drv
Sig: test-cache-1:LH4meHZB9VVzjWN8GtjXJNDH5qR9R/yumqmb3VvI+4+2ULls0rX376O412/UE9HotxhIbp5BoTyYiTSsI30zDw==
CA: fixed:sha256:094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic
";
    const T1_SIGNED: &str = "StorePath: /nix/store/70jzzwfcc6lp7w8f91acm19j5q6n839a-t1
URL: nar/145vgqdbwq6x7lgg9hvvdahcdbyb4scqbbx7mf76b0zmhp0mldiq.nar
Compression: none
FileHash: sha256:145vgqdbwq6x7lgg9hvvdahcdbyb4scqbbx7mf76b0zmhp0mldiq
FileSize: 1432
NarHash: sha256:145vgqdbwq6x7lgg9hvvdahcdbyb4scqbbx7mf76b0zmhp0mldiq
NarSize: 1432
References: 
Sig: test-cache-1:lDqr6jQeYW9YiSNUB3G8gc3GevKUqEapOdhp+dViBNQQe+mrrjvqNI7A1YgdZKABgISwoE3D3mXX4xj3ufhMCA==
CA: fixed:r:sha256:145vgqdbwq6x7lgg9hvvdahcdbyb4scqbbx7mf76b0zmhp0mldiq
";
    // The hand-made tree of §8 (`d/x` = `handmade\n`, `l` -> `d/x`, `e` = `#!/bin/sh\n`,
    // mode 755) that real Nix imported; only its path, NarHash, NarSize and Sig are recorded.
    const TREE_PATH: &str = "/nix/store/6spg5rc3cg4j6plgx7v5r2zz93x8yz7a-tree";
    const TREE_NAR_HASH: &str = "sha256:0ckp46626jq21yvmkdxgix9h6kxy3jvz6ssddhj4v8qlqd67pdhq";
    const TREE_SIG: &str = "test-cache-1:gMw6wxwv2jOuM6LQXqjKZt+s7AC6+Mcd9SX/eVId2zotPE8BmfWCLCE+R7MjtSqXzg2kmrk9ZoT45cxeKpO/Dw==";

    const ALL: [&str; 6] = [
        HELLO_XZ,
        DEPENDENT_XZ,
        HELLO_SIGNED,
        DEPENDENT_SIGNED,
        FIXED_FLAT_SIGNED,
        T1_SIGNED,
    ];
    const SIGNED: [&str; 4] = [HELLO_SIGNED, DEPENDENT_SIGNED, FIXED_FLAT_SIGNED, T1_SIGNED];

    fn sd() -> StoreDir {
        StoreDir::default()
    }
    fn parse(text: &str) -> NarInfo {
        NarInfo::parse(&sd(), text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }
    fn sk() -> SecretKey {
        SecretKey::parse(SK).unwrap()
    }
    fn pk() -> PublicKey {
        PublicKey::parse(PK).unwrap()
    }
    fn sig_line(text: &str) -> &str {
        text.lines().find_map(|l| l.strip_prefix("Sig: ")).unwrap()
    }
    fn tree() -> NarInfo {
        let store_path = sd().parse_path(TREE_PATH).unwrap();
        let nar_hash = Hash::parse(TREE_NAR_HASH).unwrap();
        NarInfo {
            url: format!("nar/{}.nar", nar_hash.to_nix32()),
            compression: "none".to_string(),
            file_hash: Some(nar_hash.clone()),
            file_size: Some(888),
            nar_hash,
            nar_size: 888,
            references: BTreeSet::new(),
            deriver: None,
            system: None,
            signatures: Vec::new(),
            ca: None,
            store_path,
        }
    }

    #[test]
    fn every_nix_narinfo_round_trips_byte_for_byte() {
        for text in ALL {
            assert_eq!(parse(text).to_text(&sd()), text);
        }
    }

    #[test]
    fn fields_are_read_as_nix_means_them() {
        let d = parse(DEPENDENT_SIGNED);
        assert_eq!(
            d.store_path.to_string(),
            "axkrj5qgyiri6mvps8zsvqj51vyfjv8a-dependent"
        );
        assert_eq!(
            d.url,
            "nar/0jn50pqdj3k9yv1zx7mh02rn13fywsm0ds6hgb1b6rh23l83hdy4.nar"
        );
        assert_eq!(d.compression, "none");
        assert_eq!(d.file_hash.as_ref(), Some(&d.nar_hash));
        assert_eq!((d.file_size, d.nar_size), (Some(1216), 1216));
        assert_eq!(
            d.references
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>(),
            ["9frz7rl3ni9y2yn0qscny8v1iq391zsh-hello"]
        );
        assert_eq!(
            d.deriver.unwrap().to_string(),
            "k90zqjs5x29993rk2ik6nhzcy2i8pyrm-dependent.drv"
        );
        assert_eq!(d.signatures.len(), 1);
        assert_eq!(d.ca, None);
        let t1 = parse(T1_SIGNED);
        assert_eq!(t1.deriver, None);
        assert_eq!(
            t1.ca,
            Some(ContentAddress::Fixed {
                method: FileIngestionMethod::Recursive,
                hash: Hash::parse(
                    "sha256:38365ac185f583658eaba7af859926cbafc6a06a7bc3f41e3ddd60be1a7ebb90"
                )
                .unwrap()
            })
        );
    }

    #[test]
    fn fingerprints_match_nix() {
        assert_eq!(
            parse(DEPENDENT_SIGNED).fingerprint(&sd()).unwrap(),
            "1;/nix/store/axkrj5qgyiri6mvps8zsvqj51vyfjv8a-dependent;sha256:0jn50pqdj3k9yv1zx7mh02rn13fywsm0ds6hgb1b6rh23l83hdy4;1216;/nix/store/9frz7rl3ni9y2yn0qscny8v1iq391zsh-hello"
        );
        assert_eq!(
            parse(HELLO_SIGNED).fingerprint(&sd()).unwrap(),
            "1;/nix/store/9frz7rl3ni9y2yn0qscny8v1iq391zsh-hello;sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw;120;"
        );
        // The fingerprint ignores URL, compression and file hash: the xz and the
        // uncompressed narinfo of a path sign the same text.
        assert_eq!(
            parse(HELLO_XZ).fingerprint(&sd()),
            parse(HELLO_SIGNED).fingerprint(&sd())
        );
        assert_eq!(
            tree().fingerprint(&sd()).unwrap(),
            format!("1;{TREE_PATH};{TREE_NAR_HASH};888;")
        );
    }

    #[test]
    fn every_sig_line_is_reproduced() {
        for text in SIGNED {
            let mut info = parse(text);
            let want = sig_line(text);
            info.signatures.clear();
            info.sign(&sd(), &sk()).unwrap();
            assert_eq!(
                info.signatures
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
                [want]
            );
            assert_eq!(info.to_text(&sd()), text);
            // Signing again adds nothing.
            info.sign(&sd(), &sk()).unwrap();
            assert_eq!(info.signatures.len(), 1);
        }
        // The xz narinfos, signed, get the same Sig as their uncompressed twins.
        let mut hello = parse(HELLO_XZ);
        hello.sign(&sd(), &sk()).unwrap();
        assert_eq!(hello.signatures[0].to_string(), sig_line(HELLO_SIGNED));
        // The hand-made tree that real Nix accepted.
        let mut t = tree();
        t.sign(&sd(), &sk()).unwrap();
        assert_eq!(t.signatures[0].to_string(), TREE_SIG);
    }

    #[test]
    fn the_hand_made_tree_is_its_source_path() {
        let t = tree();
        let p = sd()
            .make_fixed_output_path(
                FileIngestionMethod::Recursive,
                &t.nar_hash,
                "tree",
                &BTreeSet::new(),
                false,
            )
            .unwrap();
        assert_eq!(p, t.store_path);
    }

    #[test]
    fn verification_needs_the_right_key_and_fingerprint() {
        let trusted = [pk()];
        for text in SIGNED {
            let info = parse(text);
            assert!(info.verify(&sd(), &trusted), "{text}");
            assert!(!info.verify(&sd(), &[]));

            let mut tampered = info.clone();
            tampered.nar_size += 1;
            assert!(!tampered.verify(&sd(), &trusted));
            let mut tampered = info.clone();
            tampered
                .references
                .insert(StorePath::from_base_name("9frz7rl3ni9y2yn0qscny8v1iq391zsh-x").unwrap());
            assert!(!tampered.verify(&sd(), &trusted));
            let mut tampered = info.clone();
            tampered.store_path =
                StorePath::from_base_name("9frz7rl3ni9y2yn0qscny8v1iq391zsh-hellp").unwrap();
            assert!(!tampered.verify(&sd(), &trusted));
            // A different store directory changes the fingerprint.
            assert!(!info.verify(&StoreDir::new("/opt/store").unwrap(), &trusted));

            // Same name, other key; right key under another name.
            let impostor = SecretKey::from_seed("test-cache-1", [42; 32])
                .unwrap()
                .to_public();
            assert!(!info.verify(&sd(), &[impostor]));
            let renamed = PublicKey::parse(&PK.replace("test-cache-1", "test-cache-2")).unwrap();
            assert!(!info.verify(&sd(), &[renamed]));
        }
        assert!(!parse(HELLO_XZ).verify(&sd(), &trusted), "unsigned");
        // Fields outside the fingerprint may change without breaking the signature.
        let mut moved = parse(HELLO_SIGNED);
        moved.url = "nar/elsewhere.nar".to_string();
        moved.deriver = None;
        assert!(moved.verify(&sd(), &trusted));
    }

    #[test]
    fn signatures_are_written_sorted_and_once() {
        let mut info = parse(HELLO_SIGNED);
        let other = SecretKey::from_seed("a-cache", [1; 32]).unwrap();
        info.sign(&sd(), &other).unwrap();
        // Pushed last, written first: "a-cache:…" < "test-cache-1:…".
        let text = info.to_text(&sd());
        let sigs: Vec<&str> = text.lines().filter(|l| l.starts_with("Sig: ")).collect();
        assert_eq!(sigs.len(), 2);
        assert!(sigs[0].starts_with("Sig: a-cache:") && sigs[1].starts_with("Sig: test-cache-1:"));
        assert!(info.verify(&sd(), &[other.to_public()]) && info.verify(&sd(), &[pk()]));
        // Reading it back keeps both; a repeated identical Sig line collapses, as in Nix.
        assert_eq!(parse(&text).to_text(&sd()), text);
        let doubled = text.replacen("Sig: a-cache:", &format!("{}\nSig: a-cache:", sigs[0]), 1);
        assert_eq!(doubled.matches("Sig: a-cache:").count(), 2);
        assert_eq!(parse(&doubled).to_text(&sd()), text);
    }

    #[test]
    fn reading_is_as_lenient_as_nix_where_it_must_be() {
        // Field order is free.
        let mut lines: Vec<&str> = T1_SIGNED.lines().collect();
        lines.reverse();
        let shuffled = lines.join("\n") + "\n";
        assert_eq!(parse(&shuffled).to_text(&sd()), T1_SIGNED);
        // No References line at all: no references.
        let no_refs = HELLO_XZ.replace("References: \n", "");
        assert_eq!(parse(&no_refs).to_text(&sd()), HELLO_XZ);
        // Unknown keys are ignored and dropped, as Nix does.
        let extra = HELLO_XZ.replace("NarSize: 120\n", "NarSize: 120\nX-Cache-Id: 7\n");
        assert_eq!(parse(&extra).to_text(&sd()), HELLO_XZ);
        // `unknown-deriver` means none.
        let unknown = HELLO_XZ.replace(
            "lrh6nj4qz3arf1xf5zjyjg21k5z2ghrh-hello.drv",
            "unknown-deriver",
        );
        assert_eq!(parse(&unknown).deriver, None);
        // Missing or empty Compression means bzip2.
        assert_eq!(
            parse(&HELLO_XZ.replace("Compression: xz\n", "")).compression,
            "bzip2"
        );
        assert_eq!(
            parse(&HELLO_XZ.replace("Compression: xz\n", "Compression: \n")).compression,
            "bzip2"
        );
        // Hashes in other encodings are accepted and re-written as nix32.
        let hex = HELLO_XZ.replace(
            "NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
            "NarHash: sha256:1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13",
        );
        assert_eq!(parse(&hex).to_text(&sd()), HELLO_XZ);
        let sri = HELLO_XZ.replace(
            "NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
            "NarHash: sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=",
        );
        assert_eq!(parse(&sri).to_text(&sd()), HELLO_XZ);
        // The legacy System field is kept in Nix's position (after Deriver, before Sig).
        let with_system = HELLO_SIGNED.replace("\nSig: ", "\nSystem: x86_64-linux\nSig: ");
        assert_eq!(parse(&with_system).system.as_deref(), Some("x86_64-linux"));
        assert_eq!(parse(&with_system).to_text(&sd()), with_system);
        // Empty `CA` and `System` values mean none, as in Nix.
        let empty = HELLO_XZ.to_string() + "System: \nCA: \n";
        assert_eq!(parse(&empty).to_text(&sd()), HELLO_XZ);
        // Several references, with extra spaces, come out sorted and single-spaced.
        let two = DEPENDENT_XZ.replace(
            "References: 9frz7rl3ni9y2yn0qscny8v1iq391zsh-hello",
            "References: axkrj5qgyiri6mvps8zsvqj51vyfjv8a-dependent  9frz7rl3ni9y2yn0qscny8v1iq391zsh-hello",
        );
        assert!(parse(&two).to_text(&sd()).contains(
            "\nReferences: 9frz7rl3ni9y2yn0qscny8v1iq391zsh-hello axkrj5qgyiri6mvps8zsvqj51vyfjv8a-dependent\n"
        ));
    }

    #[test]
    fn rejected_inputs() {
        use NarInfoError as E;
        let nar_hash_line = "NarHash: sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw";
        // (what, text, expected error)
        type Case = (&'static str, String, fn(&E) -> bool);
        let cases: Vec<Case> = vec![
            (
                "no trailing newline",
                HELLO_XZ.trim_end().to_string(),
                |e| matches!(e, E::MissingFinalNewline),
            ),
            ("empty text", String::new(), |e| {
                matches!(e, E::MissingFinalNewline)
            }),
            (
                "empty line",
                HELLO_XZ.replace("NarSize: 120\n", "NarSize: 120\n\n"),
                |e| {
                    matches!(
                        e,
                        E::MalformedLine {
                            line: 8,
                            reason: "no `:`",
                            ..
                        }
                    )
                },
            ),
            (
                "References: without space",
                HELLO_XZ.replace("References: \n", "References:\n"),
                |e| matches!(e, E::MalformedLine { line: 8, .. }),
            ),
            (
                "key without space",
                HELLO_XZ.replace("URL: ", "URL:"),
                |e| matches!(e, E::MalformedLine { line: 2, .. }),
            ),
            ("empty key", HELLO_XZ.replace("FileSize", ""), |e| {
                matches!(
                    e,
                    E::MalformedLine {
                        reason: "empty key",
                        ..
                    }
                )
            }),
            (
                "bad NarHash digit",
                HELLO_XZ.replace("dqw\nNarSize", "dqe\nNarSize"),
                |e| {
                    matches!(
                        e,
                        E::BadHash {
                            line: 6,
                            key: "NarHash",
                            ..
                        }
                    )
                },
            ),
            (
                "short NarHash",
                HELLO_XZ.replace(nar_hash_line, "NarHash: sha256:04zwf782"),
                |e| matches!(e, E::BadHash { key: "NarHash", .. }),
            ),
            (
                "unprefixed NarHash",
                HELLO_XZ.replace("NarHash: sha256:", "NarHash: "),
                |e| matches!(e, E::BadHash { key: "NarHash", .. }),
            ),
            (
                "sha1 NarHash",
                HELLO_XZ.replace(
                    nar_hash_line,
                    "NarHash: sha1:a94a8fe5ccb19ba61c4c0873d391e987982fbbd3",
                ),
                |e| {
                    matches!(
                        e,
                        E::NotSha256 {
                            key: "NarHash",
                            algo: HashAlgo::Sha1,
                            ..
                        }
                    )
                },
            ),
            (
                "bad FileHash",
                HELLO_XZ.replace("FileHash: sha256:17", "FileHash: sha256:e7"),
                |e| {
                    matches!(
                        e,
                        E::BadHash {
                            key: "FileHash",
                            ..
                        }
                    )
                },
            ),
            (
                "store path outside the store",
                HELLO_XZ.replace("/nix/store/9frz", "/opt/store/9frz"),
                |e| {
                    matches!(
                        e,
                        E::BadStorePath {
                            line: 1,
                            key: "StorePath",
                            source: StorePathError::NotInStore { .. }
                        }
                    )
                },
            ),
            (
                "bad store path hash",
                HELLO_XZ.replace(
                    "9frz7rl3ni9y2yn0qscny8v1iq391zsh-hello\n",
                    "9frz7rl3ni9y2yn0qscny8v1iq391zsu-hello\n",
                ),
                |e| {
                    matches!(
                        e,
                        E::BadStorePath {
                            key: "StorePath",
                            source: StorePathError::BadHash { .. },
                            ..
                        }
                    )
                },
            ),
            (
                "bad store path name",
                HELLO_XZ.replace("zsh-hello\n", "zsh-.hello\n"),
                |e| {
                    matches!(
                        e,
                        E::BadStorePath {
                            key: "StorePath",
                            ..
                        }
                    )
                },
            ),
            (
                "bad reference",
                DEPENDENT_XZ.replace("References: 9frz", "References: 9fr"),
                |e| {
                    matches!(
                        e,
                        E::BadStorePath {
                            line: 8,
                            key: "References",
                            ..
                        }
                    )
                },
            ),
            (
                "full path as reference",
                DEPENDENT_XZ.replace("References: ", "References: /nix/store/"),
                |e| {
                    matches!(
                        e,
                        E::BadStorePath {
                            key: "References",
                            ..
                        }
                    )
                },
            ),
            (
                "bad deriver",
                HELLO_XZ.replace("Deriver: lrh6", "Deriver: lrh"),
                |e| matches!(e, E::BadStorePath { key: "Deriver", .. }),
            ),
            (
                "duplicate key",
                HELLO_XZ.replace("NarSize: 120\n", "NarSize: 120\nNarSize: 120\n"),
                |e| matches!(e, E::DuplicateField { line: 8, key, .. } if key == "NarSize"),
            ),
            (
                "duplicate References",
                DEPENDENT_XZ.replace("Deriver", "References: \nDeriver"),
                |e| matches!(e, E::DuplicateField { key, .. } if key == "References"),
            ),
            (
                "duplicate CA",
                T1_SIGNED.to_string() + T1_SIGNED.lines().last().unwrap() + "\n",
                |e| matches!(e, E::DuplicateField { key, .. } if key == "CA"),
            ),
            (
                "duplicate unknown key",
                HELLO_XZ.to_string() + "X: 1\nX: 2\n",
                |e| matches!(e, E::DuplicateField { key, .. } if key == "X"),
            ),
            (
                "missing StorePath",
                HELLO_XZ.lines().skip(1).map(|l| format!("{l}\n")).collect(),
                |e| matches!(e, E::MissingField { key: "StorePath" }),
            ),
            (
                "missing URL",
                HELLO_XZ.replace(
                    "URL: nar/17gd6zzlkx90irc6qawagdkgh1d7qvlnq46yjf7xiqw9ycz7zq4a.nar.xz\n",
                    "",
                ),
                |e| matches!(e, E::MissingField { key: "URL" }),
            ),
            (
                "empty URL",
                HELLO_XZ.replace(
                    "URL: nar/17gd6zzlkx90irc6qawagdkgh1d7qvlnq46yjf7xiqw9ycz7zq4a.nar.xz\n",
                    "URL: \n",
                ),
                |e| matches!(e, E::EmptyField { key: "URL", .. }),
            ),
            (
                "missing NarHash",
                HELLO_XZ.replace(&format!("{nar_hash_line}\n"), ""),
                |e| matches!(e, E::MissingField { key: "NarHash" }),
            ),
            (
                "missing NarSize",
                HELLO_XZ.replace("NarSize: 120\n", ""),
                |e| matches!(e, E::MissingField { key: "NarSize" }),
            ),
            (
                "zero NarSize",
                HELLO_XZ.replace("NarSize: 120\n", "NarSize: 0\n"),
                |e| matches!(e, E::ZeroNarSize),
            ),
            (
                "signed NarSize",
                HELLO_XZ.replace("NarSize: 120\n", "NarSize: +120\n"),
                |e| matches!(e, E::BadSize { key: "NarSize", .. }),
            ),
            (
                "huge FileSize",
                HELLO_XZ.replace("FileSize: 128", "FileSize: 18446744073709551616"),
                |e| {
                    matches!(
                        e,
                        E::BadSize {
                            key: "FileSize",
                            ..
                        }
                    )
                },
            ),
            (
                "bad Sig",
                HELLO_SIGNED.replace("Sig: test-cache-1:1G4J", "Sig: test-cache-1:1G4"),
                |e| matches!(e, E::BadSignature { line: 10, .. }),
            ),
            (
                "nameless Sig",
                HELLO_SIGNED.replace("Sig: test-cache-1:", "Sig: "),
                |e| matches!(e, E::BadSignature { .. }),
            ),
            (
                "bad CA",
                T1_SIGNED.replace("CA: fixed:r:", "CA: fixed:q:"),
                |e| matches!(e, E::BadContentAddressHash { .. }),
            ),
            (
                "CA prefix",
                T1_SIGNED.replace("CA: fixed:r:", "CA: source:r:"),
                |e| matches!(e, E::BadContentAddress { .. }),
            ),
        ];
        for (what, text, check) in cases {
            match NarInfo::parse(&sd(), &text) {
                Ok(_) => panic!("{what}: accepted\n{text}"),
                Err(e) => assert!(check(&e), "{what}: wrong error {e:?}"),
            }
        }
        let msg = NarInfo::parse(&sd(), &HELLO_XZ.replace("NarSize: 120\n", ""))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("`NarSize`"), "{msg}");
    }

    #[test]
    fn content_addresses_parse_and_print() {
        let hello = Hash::sha256(b"hello");
        let t1 =
            Hash::parse("sha256:145vgqdbwq6x7lgg9hvvdahcdbyb4scqbbx7mf76b0zmhp0mldiq").unwrap();
        let cases = [
            (
                "fixed:sha256:094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic",
                ContentAddress::Fixed {
                    method: FileIngestionMethod::Flat,
                    hash: hello.clone(),
                },
            ),
            (
                "fixed:r:sha256:145vgqdbwq6x7lgg9hvvdahcdbyb4scqbbx7mf76b0zmhp0mldiq",
                ContentAddress::Fixed {
                    method: FileIngestionMethod::Recursive,
                    hash: t1.clone(),
                },
            ),
            (
                "fixed:r:sha1:m36kxvmfg8y4qx8an8fg0jpf8bh84y13",
                ContentAddress::Fixed {
                    method: FileIngestionMethod::Recursive,
                    hash: Hash::parse("sha1:m36kxvmfg8y4qx8an8fg0jpf8bh84y13").unwrap(),
                },
            ),
            (
                "text:sha256:094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic",
                ContentAddress::Text {
                    hash: hello.clone(),
                },
            ),
        ];
        for (text, ca) in cases {
            assert_eq!(ContentAddress::parse(text).unwrap(), ca, "{text}");
            assert_eq!(ca.to_string(), text);
        }
        // Hex and base64 digests are read (as Nix's parseNonSRIUnprefixed) and printed as nix32.
        let hex = format!("fixed:sha256:{}", hello.to_hex());
        assert_eq!(
            ContentAddress::parse(&hex).unwrap().to_string(),
            "fixed:sha256:094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic"
        );
        let b64 = format!("text:sha256:{}", hello.to_base64());
        assert_eq!(
            ContentAddress::parse(&b64).unwrap(),
            ContentAddress::Text {
                hash: hello.clone()
            }
        );

        use NarInfoError as E;
        for (bad, want_hash_error) in [
            ("fixed", false),
            (
                "source:sha256:094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic",
                false,
            ),
            (
                "fixed:094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic",
                false,
            ),
            ("text:sha1:m36kxvmfg8y4qx8an8fg0jpf8bh84y13", false),
            (
                "fixed:sha3:094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic",
                true,
            ),
            (
                "fixed:sha256:094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwi",
                true,
            ),
            (
                "fixed:sha256:sha256:094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic",
                true,
            ),
            (
                "fixed:sha256:sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=",
                true,
            ),
            (
                "fixed:r:r:sha256:094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic",
                true,
            ),
        ] {
            match ContentAddress::parse(bad) {
                Err(E::BadContentAddress { .. }) if !want_hash_error => {}
                Err(E::BadContentAddressHash { .. }) if want_hash_error => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn content_addressed_paths_prove_themselves() {
        assert!(parse(T1_SIGNED).is_content_addressed(&sd()));
        assert!(parse(FIXED_FLAT_SIGNED).is_content_addressed(&sd()));
        assert!(
            !parse(HELLO_SIGNED).is_content_addressed(&sd()),
            "no CA line"
        );
        // A CA line that does not match the path proves nothing.
        let mut wrong = parse(T1_SIGNED);
        wrong.ca = parse(FIXED_FLAT_SIGNED).ca;
        assert!(!wrong.is_content_addressed(&sd()));
        // Flat fixed outputs cannot have references.
        let mut with_ref = parse(FIXED_FLAT_SIGNED);
        with_ref
            .references
            .insert(StorePath::from_base_name("9frz7rl3ni9y2yn0qscny8v1iq391zsh-hello").unwrap());
        assert!(!with_ref.is_content_addressed(&sd()));
        // A text path (builtins.toFile "foo.txt" "hello").
        let ca = ContentAddress::Text {
            hash: Hash::sha256(b"hello"),
        };
        let p = StorePath::from_base_name("m0iyz1rzcgxw68h6skk8b9sg0p0napwc-foo.txt").unwrap();
        assert_eq!(ca.store_path(&sd(), &p, &BTreeSet::new()), Some(p));
        // The hand-made tree with a recursive CA line.
        let mut t = tree();
        t.ca = Some(ContentAddress::Fixed {
            method: FileIngestionMethod::Recursive,
            hash: t.nar_hash.clone(),
        });
        assert!(t.is_content_addressed(&sd()));
    }

    #[test]
    fn fingerprint_refuses_what_nix_refuses() {
        let mut info = parse(HELLO_SIGNED);
        info.nar_hash = Hash::digest(HashAlgo::Sha1, b"x");
        assert!(matches!(
            info.fingerprint(&sd()),
            Err(NarInfoError::NotSha256 { key: "NarHash", .. })
        ));
        assert!(info.sign(&sd(), &sk()).is_err());
        assert!(!info.verify(&sd(), &[pk()]));
        let mut info = parse(HELLO_SIGNED);
        info.nar_size = 0;
        assert!(matches!(
            info.fingerprint(&sd()),
            Err(NarInfoError::ZeroNarSize)
        ));
    }
}
