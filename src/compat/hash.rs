//! Hashes as Nix prints and parses them: hex ("base16"), nixbase32, base64 and SRI.
//! Pure: no I/O (the [`Hasher`] is an `io::Write` sink that callers feed).

use std::fmt;
use std::io;

use sha1::Digest as _;

use super::{base64, nixbase32};

/// A hash algorithm Nix knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HashAlgo {
    /// MD5 (16 bytes); accepted by Nix for old fixed outputs.
    Md5,
    /// SHA-1 (20 bytes).
    Sha1,
    /// SHA-256 (32 bytes): what Nix uses for everything it hashes itself.
    Sha256,
    /// SHA-512 (64 bytes).
    Sha512,
}

impl HashAlgo {
    /// All algorithms, for messages that list them.
    pub const ALL: [HashAlgo; 4] = [
        HashAlgo::Md5,
        HashAlgo::Sha1,
        HashAlgo::Sha256,
        HashAlgo::Sha512,
    ];

    /// The name Nix uses (`sha256`, …).
    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
        }
    }

    /// Length of a digest in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha512 => 64,
        }
    }

    /// Parses an algorithm name.
    pub fn from_name(name: &str) -> Result<HashAlgo, HashError> {
        HashAlgo::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| HashError::UnknownAlgo(name.to_string()))
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a string is not a hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// The algorithm name is not one of md5, sha1, sha256, sha512.
    #[error("unknown hash algorithm `{0}` (expected md5, sha1, sha256 or sha512)")]
    UnknownAlgo(String),
    /// No algorithm was given and none is implied.
    #[error(
        "hash `{0}` does not say its algorithm (write it as `sha256:…` or in SRI form `sha256-…`)"
    )]
    MissingAlgo(String),
    /// The digest text fits none of the encodings for this algorithm.
    #[error("`{text}` is not a {algo} hash: expected {hex} hex, {nix32} nixbase32 or {b64} base64 characters")]
    BadDigest {
        algo: HashAlgo,
        text: String,
        hex: usize,
        nix32: usize,
        b64: usize,
    },
    /// The digest has the length of one encoding but an invalid character in it.
    #[error("`{text}` is not valid {encoding}")]
    BadEncoding {
        text: String,
        encoding: &'static str,
    },
    /// The SRI algorithm and an explicitly expected one differ.
    #[error("hash `{text}` is {found}, expected {expected}")]
    AlgoMismatch {
        text: String,
        found: HashAlgo,
        expected: HashAlgo,
    },
}

/// A digest together with its algorithm.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hash {
    algo: HashAlgo,
    digest: Vec<u8>,
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({}:{})", self.algo, self.to_hex())
    }
}

impl Hash {
    /// Wraps a digest; `None` if its length does not fit the algorithm.
    pub fn new(algo: HashAlgo, digest: Vec<u8>) -> Option<Hash> {
        (digest.len() == algo.digest_len()).then_some(Hash { algo, digest })
    }

    /// SHA-256 of `bytes`.
    pub fn sha256(bytes: &[u8]) -> Hash {
        Hash {
            algo: HashAlgo::Sha256,
            digest: sha2::Sha256::digest(bytes).to_vec(),
        }
    }

    /// Hashes `bytes` with `algo`.
    pub fn digest(algo: HashAlgo, bytes: &[u8]) -> Hash {
        let mut h = Hasher::new(algo);
        h.update(bytes);
        h.finish()
    }

    /// The algorithm.
    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    /// The raw digest bytes.
    pub fn digest_bytes(&self) -> &[u8] {
        &self.digest
    }

    /// Lower-case hex ("base16").
    pub fn to_hex(&self) -> String {
        to_hex(&self.digest)
    }

    /// nixbase32.
    pub fn to_nix32(&self) -> String {
        nixbase32::encode(&self.digest)
    }

    /// Standard base64 with padding.
    pub fn to_base64(&self) -> String {
        base64::encode(&self.digest)
    }

    /// SRI form `sha256-<base64>`.
    pub fn to_sri(&self) -> String {
        format!("{}-{}", self.algo, self.to_base64())
    }

    /// `sha256:<nix32>`, the form of narinfo `NarHash` and `nix-store -q --hash`.
    pub fn to_nix32_prefixed(&self) -> String {
        format!("{}:{}", self.algo, self.to_nix32())
    }

    /// Parses any form Nix accepts where the algorithm is stated: `algo:digest` (digest in
    /// hex, nixbase32 or base64) or SRI `algo-base64`.
    pub fn parse(text: &str) -> Result<Hash, HashError> {
        Hash::parse_with(text, None)
    }

    /// Parses `text`, where `algo` is the algorithm to use when the text does not state one
    /// (as in a `.drv`'s `outputHash` with `outputHashAlgo`). If both are present they must agree.
    pub fn parse_with(text: &str, algo: Option<HashAlgo>) -> Result<Hash, HashError> {
        let (stated, digest, sri) = if let Some((a, d)) = text.split_once(':') {
            (Some(HashAlgo::from_name(a)?), d, false)
        } else if let Some((a, d)) = text
            .split_once('-')
            .filter(|(a, _)| HashAlgo::from_name(a).is_ok())
        {
            (Some(HashAlgo::from_name(a)?), d, true)
        } else {
            (None, text, false)
        };
        let algo = match (stated, algo) {
            (Some(s), Some(e)) if s != e => {
                return Err(HashError::AlgoMismatch {
                    text: text.to_string(),
                    found: s,
                    expected: e,
                })
            }
            (Some(s), _) => s,
            (None, Some(e)) => e,
            (None, None) => return Err(HashError::MissingAlgo(text.to_string())),
        };
        let len = algo.digest_len();
        let b64_len = len.div_ceil(3) * 4;
        let bad = |encoding| HashError::BadEncoding {
            text: text.to_string(),
            encoding,
        };
        let digest = if sri {
            if digest.len() != b64_len {
                return Err(HashError::BadDigest {
                    algo,
                    text: text.to_string(),
                    hex: len * 2,
                    nix32: nixbase32::encoded_len(len),
                    b64: b64_len,
                });
            }
            base64::decode(digest).ok_or_else(|| bad("base64"))?
        } else if digest.len() == len * 2 {
            from_hex(digest).ok_or_else(|| bad("hex"))?
        } else if digest.len() == nixbase32::encoded_len(len) {
            nixbase32::decode(digest.as_bytes(), len).map_err(|_| bad("nixbase32"))?
        } else if digest.len() == b64_len {
            base64::decode(digest).ok_or_else(|| bad("base64"))?
        } else {
            return Err(HashError::BadDigest {
                algo,
                text: text.to_string(),
                hex: len * 2,
                nix32: nixbase32::encoded_len(len),
                b64: b64_len,
            });
        };
        Hash::new(algo, digest).ok_or_else(|| bad("digest"))
    }
}

/// Lower-case hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parses hex (either case); `None` on odd length or a non-hex character.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
        .collect()
}

/// An incremental hasher for any [`HashAlgo`]; also an `io::Write` sink.
#[derive(Clone)]
pub enum Hasher {
    /// MD5 state.
    Md5(md5::Md5),
    /// SHA-1 state.
    Sha1(sha1::Sha1),
    /// SHA-256 state.
    Sha256(sha2::Sha256),
    /// SHA-512 state.
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(algo: HashAlgo) -> Hasher {
        match algo {
            HashAlgo::Md5 => Hasher::Md5(md5::Md5::new()),
            HashAlgo::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            HashAlgo::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            HashAlgo::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(bytes),
            Hasher::Sha1(h) => h.update(bytes),
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    /// The digest of everything fed.
    pub fn finish(self) -> Hash {
        let (algo, digest) = match self {
            Hasher::Md5(h) => (HashAlgo::Md5, h.finalize().to_vec()),
            Hasher::Sha1(h) => (HashAlgo::Sha1, h.finalize().to_vec()),
            Hasher::Sha256(h) => (HashAlgo::Sha256, h.finalize().to_vec()),
            Hasher::Sha512(h) => (HashAlgo::Sha512, h.finalize().to_vec()),
        };
        Hash { algo, digest }
    }
}

impl io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1_HEX: &str = "38365ac185f583658eaba7af859926cbafc6a06a7bc3f41e3ddd60be1a7ebb90";

    #[test]
    fn prints_every_form_nix_prints() {
        let h = Hash::parse(&format!("sha256:{T1_HEX}")).unwrap();
        assert_eq!(
            h.to_nix32(),
            "145vgqdbwq6x7lgg9hvvdahcdbyb4scqbbx7mf76b0zmhp0mldiq"
        );
        assert_eq!(
            h.to_sri(),
            "sha256-ODZawYX1g2WOq6evhZkmy6/GoGp7w/QePd1gvhp+u5A="
        );
        assert_eq!(
            h.to_base64(),
            "ODZawYX1g2WOq6evhZkmy6/GoGp7w/QePd1gvhp+u5A="
        );
        assert_eq!(
            h.to_nix32_prefixed(),
            "sha256:145vgqdbwq6x7lgg9hvvdahcdbyb4scqbbx7mf76b0zmhp0mldiq"
        );
    }

    #[test]
    fn parses_every_form_nix_accepts() {
        let want = Hash::parse(&format!("sha256:{T1_HEX}")).unwrap();
        for text in [
            "sha256-ODZawYX1g2WOq6evhZkmy6/GoGp7w/QePd1gvhp+u5A=",
            "sha256:145vgqdbwq6x7lgg9hvvdahcdbyb4scqbbx7mf76b0zmhp0mldiq",
            "sha256:ODZawYX1g2WOq6evhZkmy6/GoGp7w/QePd1gvhp+u5A=",
        ] {
            assert_eq!(Hash::parse(text).unwrap(), want, "{text}");
        }
        assert_eq!(
            Hash::parse_with(T1_HEX, Some(HashAlgo::Sha256)).unwrap(),
            want
        );
        assert_eq!(
            Hash::parse_with(
                "145vgqdbwq6x7lgg9hvvdahcdbyb4scqbbx7mf76b0zmhp0mldiq",
                Some(HashAlgo::Sha256)
            )
            .unwrap(),
            want
        );
    }

    #[test]
    fn rejects_with_reasons() {
        assert!(matches!(
            Hash::parse(T1_HEX),
            Err(HashError::MissingAlgo(_))
        ));
        assert!(matches!(
            Hash::parse("sha3:abcd"),
            Err(HashError::UnknownAlgo(_))
        ));
        assert!(matches!(
            Hash::parse("sha256:abcd"),
            Err(HashError::BadDigest { .. })
        ));
        let bad_hex = format!("sha256:{}g", &T1_HEX[1..]);
        assert!(matches!(
            Hash::parse(&bad_hex),
            Err(HashError::BadEncoding {
                encoding: "hex",
                ..
            })
        ));
        assert!(matches!(
            Hash::parse_with("sha1-qUqP5cyxm6YcTAhz05Hph5gvu9M=", Some(HashAlgo::Sha256)),
            Err(HashError::AlgoMismatch { .. })
        ));
    }

    #[test]
    fn digests() {
        assert_eq!(
            Hash::sha256(b"hello").to_hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(
            Hash::digest(HashAlgo::Sha1, b"test").to_hex(),
            "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3"
        );
        assert_eq!(
            Hash::digest(HashAlgo::Md5, b"").to_hex(),
            "d41d8cd98f00b204e9800998ecf8427e"
        );
        assert_eq!(Hash::digest(HashAlgo::Sha512, b"").to_hex().len(), 128);
    }
}
