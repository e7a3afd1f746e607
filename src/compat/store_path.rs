//! Store directories and store paths: parsing with reasons for rejection, and the
//! path-making functions of Nix (`makeStorePath` and friends). Pure: no I/O.
//!
//! A [`StoreDir`] is the *logical* store directory hashed into every path (`/nix/store`
//! by default); where the bytes physically live is the `store` layer's business.

use std::collections::BTreeSet;
use std::fmt;

use super::hash::{to_hex, Hash, HashAlgo};
use super::nixbase32;

/// Length of a store path's hash part in characters.
pub const HASH_PART_LEN: usize = 32;
/// Length of a store path's digest in bytes.
pub const DIGEST_LEN: usize = 20;
/// Longest name Nix accepts.
pub const MAX_NAME_LEN: usize = 211;

/// Why a string is not a store path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorePathError {
    /// The path is not directly inside the store directory.
    #[error("`{path}` is not in the store `{store_dir}`")]
    NotInStore { path: String, store_dir: String },
    /// The base name is too short to hold a hash part, a dash and a name.
    #[error("`{0}` is too short to be a store path (expected `<32-char hash>-<name>`)")]
    TooShort(String),
    /// Character 33 is not `-`.
    #[error("`{0}` lacks the `-` between hash and name")]
    MissingDash(String),
    /// The hash part is not nixbase32.
    #[error("the hash part of `{path}` is invalid: {source}")]
    BadHash {
        path: String,
        #[source]
        source: nixbase32::DecodeError,
    },
    /// The name breaks Nix's rules.
    #[error("invalid store path name `{name}`: {reason}")]
    BadName { name: String, reason: &'static str },
    /// A store directory must be absolute and must not end with `/`.
    #[error("invalid store directory `{0}`: it must be an absolute path without a trailing `/`")]
    BadStoreDir(String),
}

/// Checks a store path name as Nix 2.8 does.
pub fn validate_name(name: &str) -> Result<(), StorePathError> {
    let bad = |reason| {
        Err(StorePathError::BadName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("names must not be empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("names must be at most 211 characters long");
    }
    if name.starts_with('.') {
        return bad("names must not start with a period");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "+-._?=".contains(*c)))
    {
        let _ = c;
        return bad("names may only contain letters, digits and `+-._?=`");
    }
    Ok(())
}

/// A store path without its directory: a 20-byte digest and a name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath {
    // Field order matters: the derived Ord sorts by the printed hash part first, as Nix does
    // (nixbase32 does not preserve byte order, so we store the text form).
    hash_part: String,
    name: String,
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({}-{})", self.hash_part, self.name)
    }
}

impl fmt::Display for StorePath {
    /// The base name, `<hash>-<name>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.hash_part, self.name)
    }
}

impl StorePath {
    /// Builds a store path from its digest and name.
    pub fn from_digest(digest: &[u8; DIGEST_LEN], name: &str) -> Result<StorePath, StorePathError> {
        validate_name(name)?;
        Ok(StorePath {
            hash_part: nixbase32::encode(digest),
            name: name.to_string(),
        })
    }

    /// Parses a base name `<hash>-<name>`.
    pub fn from_base_name(base: &str) -> Result<StorePath, StorePathError> {
        if base.len() < HASH_PART_LEN + 2 {
            return Err(StorePathError::TooShort(base.to_string()));
        }
        if base.as_bytes()[HASH_PART_LEN] != b'-' {
            return Err(StorePathError::MissingDash(base.to_string()));
        }
        let (hash, name) = (&base[..HASH_PART_LEN], &base[HASH_PART_LEN + 1..]);
        nixbase32::decode(hash.as_bytes(), DIGEST_LEN).map_err(|source| {
            StorePathError::BadHash {
                path: base.to_string(),
                source,
            }
        })?;
        validate_name(name)?;
        Ok(StorePath {
            hash_part: hash.to_string(),
            name: name.to_string(),
        })
    }

    /// The 32-character hash part.
    pub fn hash_part(&self) -> &str {
        &self.hash_part
    }

    /// The name after the dash.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the name ends in `.drv`.
    pub fn is_derivation(&self) -> bool {
        self.name.ends_with(".drv")
    }
}

/// A logical store directory such as `/nix/store`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreDir(String);

impl Default for StoreDir {
    fn default() -> Self {
        StoreDir("/nix/store".to_string())
    }
}

impl fmt::Display for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a fixed-output path's content was hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FileIngestionMethod {
    /// The hash is of the file's bytes (a single regular file).
    Flat,
    /// The hash is of the NAR serialisation.
    Recursive,
}

impl StoreDir {
    /// A store directory; it must be absolute and not end with `/`.
    pub fn new(dir: &str) -> Result<StoreDir, StorePathError> {
        if !dir.starts_with('/') || (dir.len() > 1 && dir.ends_with('/')) || dir.contains("//") {
            return Err(StorePathError::BadStoreDir(dir.to_string()));
        }
        Ok(StoreDir(dir.to_string()))
    }

    /// The directory as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The full path of `path` in this store.
    pub fn display(&self, path: &StorePath) -> String {
        format!("{}/{}", self.0, path)
    }

    /// Parses a full store path (exactly `<dir>/<hash>-<name>`).
    pub fn parse_path(&self, text: &str) -> Result<StorePath, StorePathError> {
        match self.strip(text) {
            Some(base) if !base.contains('/') => StorePath::from_base_name(base),
            _ => Err(StorePathError::NotInStore {
                path: text.to_string(),
                store_dir: self.0.clone(),
            }),
        }
    }

    /// Parses a path that is a store path or lies beneath one, returning the store path and
    /// the rest (`""` or starting with `/`).
    pub fn parse_path_prefix<'a>(
        &self,
        text: &'a str,
    ) -> Result<(StorePath, &'a str), StorePathError> {
        let base = self.strip(text).ok_or_else(|| StorePathError::NotInStore {
            path: text.to_string(),
            store_dir: self.0.clone(),
        })?;
        let (first, rest) = match base.find('/') {
            Some(i) => (&base[..i], &base[i..]),
            None => (base, ""),
        };
        Ok((StorePath::from_base_name(first)?, rest))
    }

    fn strip<'a>(&self, text: &'a str) -> Option<&'a str> {
        text.strip_prefix(self.0.as_str())?.strip_prefix('/')
    }

    /// Nix's `makeStorePath`: `type:sha256:<hex inner>:<store dir>:<name>`, hashed with
    /// SHA-256 and folded to 20 bytes.
    pub fn make_store_path(
        &self,
        path_type: &str,
        inner: &Hash,
        name: &str,
    ) -> Result<StorePath, StorePathError> {
        let fingerprint = format!(
            "{}:{}:{}:{}:{}",
            path_type,
            inner.algo(),
            inner.to_hex(),
            self.0,
            name
        );
        let digest = Hash::sha256(fingerprint.as_bytes());
        StorePath::from_digest(&compress_hash(digest.digest_bytes()), name)
    }

    /// Path of a text file such as a `.drv` or `builtins.toFile` result.
    pub fn make_text_path(
        &self,
        name: &str,
        contents_sha256: &Hash,
        references: &BTreeSet<StorePath>,
    ) -> Result<StorePath, StorePathError> {
        self.make_store_path(
            &self.make_type("text", references, false),
            contents_sha256,
            name,
        )
    }

    /// Path of content-addressed (fixed-output) data. Recursive SHA-256 is the `source`
    /// type, which may have references; anything else is `output:out` and may not.
    pub fn make_fixed_output_path(
        &self,
        method: FileIngestionMethod,
        hash: &Hash,
        name: &str,
        references: &BTreeSet<StorePath>,
        self_reference: bool,
    ) -> Result<StorePath, StorePathError> {
        if method == FileIngestionMethod::Recursive && hash.algo() == HashAlgo::Sha256 {
            self.make_store_path(
                &self.make_type("source", references, self_reference),
                hash,
                name,
            )
        } else {
            let inner = fixed_output_inner(method, hash);
            self.make_store_path("output:out", &inner, name)
        }
    }

    /// Path of output `output` of an input-addressed derivation named `drv_name` whose
    /// masked derivation hashes to `hash`.
    pub fn make_output_path(
        &self,
        output: &str,
        hash: &Hash,
        drv_name: &str,
    ) -> Result<StorePath, StorePathError> {
        self.make_store_path(
            &format!("output:{output}"),
            hash,
            &output_path_name(drv_name, output),
        )
    }

    fn make_type(
        &self,
        base: &str,
        references: &BTreeSet<StorePath>,
        self_reference: bool,
    ) -> String {
        let mut t = base.to_string();
        for r in references {
            t.push(':');
            t.push_str(&self.display(r));
        }
        if self_reference {
            t.push_str(":self");
        }
        t
    }
}

/// `sha256("fixed:out:[r:]<algo>:<hex>:")`, the inner hash of a non-`source` fixed output.
pub fn fixed_output_inner(method: FileIngestionMethod, hash: &Hash) -> Hash {
    let r = if method == FileIngestionMethod::Recursive {
        "r:"
    } else {
        ""
    };
    Hash::sha256(
        format!(
            "fixed:out:{}{}:{}:",
            r,
            hash.algo(),
            to_hex(hash.digest_bytes())
        )
        .as_bytes(),
    )
}

/// The store name of output `output` of derivation `drv_name`: `drv_name` for `out`,
/// `drv_name-output` otherwise.
pub fn output_path_name(drv_name: &str, output: &str) -> String {
    if output == "out" {
        drv_name.to_string()
    } else {
        format!("{drv_name}-{output}")
    }
}

/// XOR-folds a digest to 20 bytes, as Nix's `compressHash`.
pub fn compress_hash(digest: &[u8]) -> [u8; DIGEST_LEN] {
    let mut out = [0u8; DIGEST_LEN];
    for (i, b) in digest.iter().enumerate() {
        out[i % DIGEST_LEN] ^= b;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd() -> StoreDir {
        StoreDir::default()
    }
    fn no_refs() -> BTreeSet<StorePath> {
        BTreeSet::new()
    }
    const T1_NAR: &str = "sha256:38365ac185f583658eaba7af859926cbafc6a06a7bc3f41e3ddd60be1a7ebb90";
    const A_TXT_FLAT: &str =
        "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";

    #[test]
    fn source_paths_match_nix_store_add() {
        let t1 = Hash::parse(T1_NAR).unwrap();
        let p = sd()
            .make_fixed_output_path(FileIngestionMethod::Recursive, &t1, "t1", &no_refs(), false)
            .unwrap();
        assert_eq!(
            sd().display(&p),
            "/nix/store/70jzzwfcc6lp7w8f91acm19j5q6n839a-t1"
        );
        let p = sd()
            .make_fixed_output_path(
                FileIngestionMethod::Recursive,
                &t1,
                "foo",
                &no_refs(),
                false,
            )
            .unwrap();
        assert_eq!(p.to_string(), "ynmvlz3kmhchs4qh2b6w5wdi2mvrnibf-foo");
        let a =
            Hash::parse("sha256:1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13")
                .unwrap();
        let p = sd()
            .make_fixed_output_path(
                FileIngestionMethod::Recursive,
                &a,
                "a.txt",
                &no_refs(),
                false,
            )
            .unwrap();
        assert_eq!(p.to_string(), "z3n6ml62lc6l9glpaz6fq7fvi2rks9vq-a.txt");
    }

    #[test]
    fn fixed_paths_match_nix_store_add_fixed() {
        let flat = Hash::parse(A_TXT_FLAT).unwrap();
        let inner = fixed_output_inner(FileIngestionMethod::Flat, &flat);
        assert_eq!(
            inner.to_hex(),
            "bc101cf2ad0f504c5dd74b9cce0a732e7157bfbddd2afec191aa0eecd3e252a9"
        );
        let p = sd()
            .make_fixed_output_path(FileIngestionMethod::Flat, &flat, "a.txt", &no_refs(), false)
            .unwrap();
        assert_eq!(p.to_string(), "fdwm55r4skpypx1gwzb7x69ckav1rv09-a.txt");
        let hello = Hash::sha256(b"hello");
        let p = sd()
            .make_fixed_output_path(
                FileIngestionMethod::Flat,
                &hello,
                "fixed-flat",
                &no_refs(),
                false,
            )
            .unwrap();
        assert_eq!(p.to_string(), "34653kz58l0k6y6mhmzz5lih5l1yxhi9-fixed-flat");
    }

    #[test]
    fn text_path_matches_builtins_to_file() {
        let p = sd()
            .make_text_path("foo.txt", &Hash::sha256(b"hello"), &no_refs())
            .unwrap();
        assert_eq!(p.to_string(), "m0iyz1rzcgxw68h6skk8b9sg0p0napwc-foo.txt");
    }

    #[test]
    fn parse_with_reasons() {
        let s = sd();
        let p = s
            .parse_path("/nix/store/70jzzwfcc6lp7w8f91acm19j5q6n839a-t1")
            .unwrap();
        assert_eq!(
            (p.hash_part(), p.name()),
            ("70jzzwfcc6lp7w8f91acm19j5q6n839a", "t1")
        );
        let (p2, rest) = s
            .parse_path_prefix("/nix/store/70jzzwfcc6lp7w8f91acm19j5q6n839a-t1/bin/sh")
            .unwrap();
        assert_eq!((p2, rest), (p, "/bin/sh"));
        assert!(matches!(
            s.parse_path("/usr/bin/x"),
            Err(StorePathError::NotInStore { .. })
        ));
        assert!(matches!(
            s.parse_path("/nix/store/abc"),
            Err(StorePathError::TooShort(_))
        ));
        assert!(matches!(
            s.parse_path("/nix/store/70jzzwfcc6lp7w8f91acm19j5q6n839a_t1"),
            Err(StorePathError::MissingDash(_))
        ));
        assert!(matches!(
            s.parse_path("/nix/store/70jzzwfcc6lp7w8f91acm19j5q6n839e-t1"),
            Err(StorePathError::BadHash { .. })
        ));
        for bad in [".hidden", "a b", "x/y", "é"] {
            let full = format!("/nix/store/70jzzwfcc6lp7w8f91acm19j5q6n839a-{bad}");
            assert!(s.parse_path(&full).is_err(), "{bad}");
        }
        assert!(validate_name(&"a".repeat(211)).is_ok());
        assert!(validate_name(&"a".repeat(212)).is_err());
        assert!(StoreDir::new("nix/store").is_err());
        assert!(StoreDir::new("/nix/store/").is_err());
    }

    #[test]
    fn other_store_dirs_hash_differently() {
        let t1 = Hash::parse(T1_NAR).unwrap();
        let other = StoreDir::new("/opt/store").unwrap();
        let a = other
            .make_fixed_output_path(FileIngestionMethod::Recursive, &t1, "t1", &no_refs(), false)
            .unwrap();
        let b = sd()
            .make_fixed_output_path(FileIngestionMethod::Recursive, &t1, "t1", &no_refs(), false)
            .unwrap();
        assert_ne!(a, b);
        assert_eq!(other.display(&a), format!("/opt/store/{a}"));
    }
}
