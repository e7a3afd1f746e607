//! Nix's Ed25519 signing keys and detached signatures (`name:base64` texts, as written by
//! `nix-store --generate-binary-cache-key` and found in narinfo `Sig:` lines). Pure: no I/O,
//! and no randomness — keys come from text or from a seed the caller supplies.
//!
//! Formats (Nix 2.8, `libstore/crypto.cc`):
//! * secret key: `<name>:<base64 of 64 bytes = seed ‖ public key>`,
//! * public key: `<name>:<base64 of 32 bytes>`,
//! * signature:  `<key name>:<base64 of 64 bytes>`,
//!
//! with no trailing newline in the key files Nix writes. The name is everything before the
//! first `:`. A signature is checked only against the trusted key of the same name.

use std::fmt;

use ed25519_dalek::Signer as _;

use super::base64;

/// Length of an Ed25519 seed (the secret half of a Nix secret key).
pub const SEED_LEN: usize = 32;
/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of a Nix secret key after base64 decoding: seed followed by public key.
pub const SECRET_KEY_LEN: usize = SEED_LEN + PUBLIC_KEY_LEN;
/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Why a key or signature text was rejected.
///
/// Messages never contain secret key material: for secret keys only the name is shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// There is no `:`, or nothing before it.
    #[error("{what} has no name: expected `<name>:<base64>`")]
    MissingName {
        /// `secret key`, `public key` or `signature`.
        what: &'static str,
    },
    /// A key name that would break the `name:base64` or narinfo line format.
    #[error("invalid key name `{name}`: {reason}")]
    BadName {
        /// The rejected name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The part after the name is not canonical padded base64.
    #[error("{what} `{name}` is not valid base64 after `{name}:`")]
    BadBase64 {
        /// `secret key`, `public key` or `signature`.
        what: &'static str,
        /// The key name.
        name: String,
    },
    /// The decoded bytes have the wrong length.
    #[error("{what} `{name}` decodes to {actual} bytes, expected {expected}")]
    WrongLength {
        /// `secret key`, `public key` or `signature`.
        what: &'static str,
        /// The key name.
        name: String,
        /// Required length in bytes.
        expected: usize,
        /// Length found.
        actual: usize,
    },
    /// The last 32 bytes of a secret key are not the public key of its first 32.
    #[error(
        "secret key `{name}` is corrupt: its public half does not match its seed \
         (Nix writes seed ‖ public key; was the file edited or truncated?)"
    )]
    PublicHalfMismatch {
        /// The key name.
        name: String,
    },
    /// 32 bytes that are not a point on the Ed25519 curve.
    #[error("public key `{name}` is not a valid Ed25519 public key")]
    InvalidPublicKey {
        /// The key name.
        name: String,
    },
}

/// Checks a key name: non-empty, no `:`, no whitespace or control characters (a name is
/// written into `Sig:` lines and `trusted-public-keys` lists, which split on those).
pub fn validate_key_name(name: &str) -> Result<(), SigningError> {
    let bad = |reason| {
        Err(SigningError::BadName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("key names must not be empty");
    }
    if name.contains(':') {
        return bad("key names must not contain `:`");
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("key names must not contain whitespace or control characters");
    }
    Ok(())
}

/// Splits `name:base64` at the first `:`; the name must be non-empty (as Nix's `split`).
fn split_named<'a>(text: &'a str, what: &'static str) -> Result<(&'a str, &'a str), SigningError> {
    match text.split_once(':') {
        Some((name, rest)) if !name.is_empty() => Ok((name, rest)),
        _ => Err(SigningError::MissingName { what }),
    }
}

/// Decodes the base64 half of a `name:base64` text and checks its length.
fn decode_named<const N: usize>(
    name: &str,
    b64: &str,
    what: &'static str,
) -> Result<[u8; N], SigningError> {
    let bytes = base64::decode(b64).ok_or_else(|| SigningError::BadBase64 {
        what,
        name: name.to_string(),
    })?;
    let actual = bytes.len();
    bytes.try_into().map_err(|_| SigningError::WrongLength {
        what,
        name: name.to_string(),
        expected: N,
        actual,
    })
}

/// A Nix binary-cache secret key: a name and an Ed25519 key pair.
///
/// There is deliberately no `Display` (to keep the key out of logs by accident) and
/// `Debug` shows only the name; use [`SecretKey::to_key_file`] to write it out.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl SecretKey {
    /// Parses a secret key file's contents, `<name>:<base64(seed ‖ public)>`.
    ///
    /// Trailing whitespace (a final newline added by an editor or `echo`) is ignored; Nix's
    /// base64 decoder skips newlines too. Unlike Nix, a key whose public half does not
    /// match its seed is rejected instead of producing signatures nobody can verify.
    pub fn parse(text: &str) -> Result<SecretKey, SigningError> {
        let what = "secret key";
        let (name, b64) = split_named(text.trim_end(), what)?;
        validate_key_name(name)?;
        let bytes: [u8; SECRET_KEY_LEN] = decode_named(name, b64, what)?;
        let key = ed25519_dalek::SigningKey::from_keypair_bytes(&bytes).map_err(|_| {
            SigningError::PublicHalfMismatch {
                name: name.to_string(),
            }
        })?;
        Ok(SecretKey {
            name: name.to_string(),
            key,
        })
    }

    /// The key pair whose secret half is `seed` (32 random bytes: the caller reads them
    /// from the OS, as `nix-store --generate-binary-cache-key` does with libsodium).
    pub fn from_seed(name: &str, seed: [u8; SEED_LEN]) -> Result<SecretKey, SigningError> {
        validate_key_name(name)?;
        Ok(SecretKey {
            name: name.to_string(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching public key, with the same name.
    pub fn to_public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// The secret key file exactly as Nix writes it: `<name>:<base64(seed ‖ public)>`,
    /// without a trailing newline.
    pub fn to_key_file(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            base64::encode(&self.key.to_keypair_bytes())
        )
    }

    /// Signs `message` (Nix's `signDetached`); Ed25519 is deterministic, so the same key
    /// and message always give the same signature.
    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature {
            key_name: self.name.clone(),
            bytes: self.key.sign(message).to_bytes(),
        }
    }
}

/// A Nix public key: a name and an Ed25519 public key, as listed in `trusted-public-keys`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl fmt::Display for PublicKey {
    /// `<name>:<base64>`, the form of public key files and `trusted-public-keys`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, base64::encode(self.key.as_bytes()))
    }
}

impl PublicKey {
    /// Parses `<name>:<base64 of 32 bytes>`; trailing whitespace is ignored as for
    /// [`SecretKey::parse`].
    pub fn parse(text: &str) -> Result<PublicKey, SigningError> {
        let what = "public key";
        let (name, b64) = split_named(text.trim_end(), what)?;
        validate_key_name(name)?;
        let bytes: [u8; PUBLIC_KEY_LEN] = decode_named(name, b64, what)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| {
            SigningError::InvalidPublicKey {
                name: name.to_string(),
            }
        })?;
        Ok(PublicKey {
            name: name.to_string(),
            key,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The raw 32-byte public key.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_LEN] {
        self.key.as_bytes()
    }

    /// The public key file exactly as Nix writes it (no trailing newline); same as `Display`.
    pub fn to_key_file(&self) -> String {
        self.to_string()
    }

    /// Whether `signature` is this key's signature of `message`. A signature made under
    /// another key name never verifies, as in Nix, which looks keys up by name.
    ///
    /// Uses strict Ed25519 verification (canonical `S`, no small-order keys or `R`),
    /// which like libsodium's `crypto_sign_verify_detached` rejects malleable signatures.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        signature.key_name == self.name
            && self
                .key
                .verify_strict(
                    message,
                    &ed25519_dalek::Signature::from_bytes(&signature.bytes),
                )
                .is_ok()
    }
}

/// Nix's `verifyDetached`: whether `signature` verifies under the trusted key with the
/// signature's key name. Like Nix's name → key map, the first trusted key of that name wins;
/// with no key of that name the signature does not verify.
pub fn verify_detached(message: &[u8], signature: &Signature, trusted: &[PublicKey]) -> bool {
    trusted
        .iter()
        .find(|k| k.name == signature.key_name)
        .is_some_and(|k| k.verify(message, signature))
}

/// A detached signature as in a narinfo `Sig:` line: `<key name>:<base64 of 64 bytes>`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Signature {
    key_name: String,
    bytes: [u8; SIGNATURE_LEN],
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl fmt::Display for Signature {
    /// `<key name>:<base64>`, as in a `Sig:` line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key_name, base64::encode(&self.bytes))
    }
}

impl Signature {
    /// Parses `<key name>:<base64 of 64 bytes>`.
    pub fn parse(text: &str) -> Result<Signature, SigningError> {
        let what = "signature";
        let (name, b64) = split_named(text, what)?;
        validate_key_name(name)?;
        let bytes = decode_named(name, b64, what)?;
        Ok(Signature {
            key_name: name.to_string(),
            bytes,
        })
    }

    /// Builds a signature from a key name and the raw 64 bytes.
    pub fn from_bytes(
        key_name: &str,
        bytes: [u8; SIGNATURE_LEN],
    ) -> Result<Signature, SigningError> {
        validate_key_name(key_name)?;
        Ok(Signature {
            key_name: key_name.to_string(),
            bytes,
        })
    }

    /// The name of the key that made it.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// The raw 64 signature bytes.
    pub fn bytes(&self) -> &[u8; SIGNATURE_LEN] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The throwaway test key pair of nix-formats.md §8, made with
    // `nix-store --generate-binary-cache-key test-cache-1 sk.key pk.key` (files have no newline).
    const SK: &str = "test-cache-1:xWTUhccR9qI6hyqDfJFIrOuaSJaifyMXsp8DMC3NzBWK6nKZqbcgXS7msLdcKO79kdm7CZAS0COWu/+2EbUI3w==";
    const PK: &str = "test-cache-1:iupymam3IF0u5rC3XCju/ZHZuwmQEtAjlrv/thG1CN8=";
    // Fingerprint and `Sig:` of `dependent` in §8 (reproduced independently of Nix there).
    const DEPENDENT_FP: &str = "1;/nix/store/axkrj5qgyiri6mvps8zsvqj51vyfjv8a-dependent;sha256:0jn50pqdj3k9yv1zx7mh02rn13fywsm0ds6hgb1b6rh23l83hdy4;1216;/nix/store/9frz7rl3ni9y2yn0qscny8v1iq391zsh-hello";
    const DEPENDENT_SIG: &str = "test-cache-1:nieSOOiBXMDt+grxYj/klHevHhWfY8vjWtQqQGDw+lDlSuqpOJv5BzWaqPkgRr4vMsvao2kpIf15vTZ/DgOHAQ==";

    fn seed_of(sk: &str) -> [u8; SEED_LEN] {
        let bytes = base64::decode(sk.split_once(':').unwrap().1).unwrap();
        bytes[..SEED_LEN].try_into().unwrap()
    }

    #[test]
    fn test_key_pair_round_trips_and_is_deterministic() {
        let sk = SecretKey::parse(SK).unwrap();
        assert_eq!(sk.name(), "test-cache-1");
        assert_eq!(sk.to_key_file(), SK);
        assert_eq!(sk.to_public().to_key_file(), PK);
        assert_eq!(sk.to_public(), PublicKey::parse(PK).unwrap());
        assert_eq!(PublicKey::parse(PK).unwrap().to_string(), PK);
        let again = SecretKey::from_seed("test-cache-1", seed_of(SK)).unwrap();
        assert_eq!(again.to_key_file(), SK);
        assert_eq!(again.to_public().to_key_file(), PK);
        // A key file saved with a trailing newline still parses.
        assert_eq!(
            SecretKey::parse(&format!("{SK}\n")).unwrap().to_key_file(),
            SK
        );
        assert_eq!(
            PublicKey::parse(&format!("{PK}\n")).unwrap().to_key_file(),
            PK
        );
    }

    #[test]
    fn debug_does_not_leak_the_secret() {
        let text = format!("{:?}", SecretKey::parse(SK).unwrap());
        assert!(text.contains("test-cache-1"));
        assert!(!text.contains("xWTU"), "{text}");
    }

    #[test]
    fn signs_like_nix_and_verifies() {
        let sk = SecretKey::parse(SK).unwrap();
        let sig = sk.sign(DEPENDENT_FP.as_bytes());
        assert_eq!(sig.to_string(), DEPENDENT_SIG);
        assert_eq!(Signature::parse(DEPENDENT_SIG).unwrap(), sig);
        assert_eq!(sig.key_name(), "test-cache-1");
        let pk = PublicKey::parse(PK).unwrap();
        assert!(pk.verify(DEPENDENT_FP.as_bytes(), &sig));
        assert!(!pk.verify(b"1;tampered", &sig));
        let mut flipped = *sig.bytes();
        flipped[10] ^= 1;
        let flipped = Signature::from_bytes("test-cache-1", flipped).unwrap();
        assert!(!pk.verify(DEPENDENT_FP.as_bytes(), &flipped));
    }

    #[test]
    fn trusted_keys_are_picked_by_name() {
        let sk = SecretKey::parse(SK).unwrap();
        let sig = sk.sign(b"msg");
        let right = sk.to_public();
        // Same name, different key: must not verify.
        let impostor = SecretKey::from_seed("test-cache-1", [7; 32])
            .unwrap()
            .to_public();
        // Right key bytes under another name: must not verify either.
        let renamed = PublicKey::parse(&PK.replace("test-cache-1", "other-cache")).unwrap();
        let other = SecretKey::from_seed("other-cache-2", [9; 32])
            .unwrap()
            .to_public();
        assert!(verify_detached(
            b"msg",
            &sig,
            &[other.clone(), right.clone()]
        ));
        assert!(!verify_detached(
            b"msg",
            &sig,
            &[other.clone(), renamed.clone()]
        ));
        assert!(!verify_detached(
            b"msg",
            &sig,
            std::slice::from_ref(&impostor)
        ));
        assert!(!verify_detached(b"msg", &sig, &[]));
        assert!(!renamed.verify(b"msg", &sig));
        // First key of a name wins, as with Nix's map.
        assert!(!verify_detached(
            b"msg",
            &sig,
            &[impostor.clone(), right.clone()]
        ));
        assert!(verify_detached(b"msg", &sig, &[right, impostor]));
    }

    #[test]
    fn rejects_with_reasons() {
        use SigningError as E;
        let sk_b64 = SK.split_once(':').unwrap().1;
        let pk_b64 = PK.split_once(':').unwrap().1;
        let sig_b64 = DEPENDENT_SIG.split_once(':').unwrap().1;
        let is = |r: Result<SecretKey, E>, f: fn(&E) -> bool| f(&r.unwrap_err());
        assert!(is(SecretKey::parse(sk_b64), |e| matches!(
            e,
            E::MissingName { what: "secret key" }
        )));
        assert!(is(SecretKey::parse(&format!(":{sk_b64}")), |e| matches!(
            e,
            E::MissingName { .. }
        )));
        assert!(is(SecretKey::parse("k:not base64!"), |e| matches!(
            e,
            E::BadBase64 { .. }
        )));
        assert!(is(SecretKey::parse(&format!("k:{pk_b64}")), |e| matches!(
            e,
            E::WrongLength {
                expected: 64,
                actual: 32,
                ..
            }
        )));
        // Seed of one key followed by the public half of another.
        let mut mixed = base64::decode(sk_b64).unwrap();
        mixed[40] ^= 0x55;
        let mixed = format!("k:{}", base64::encode(&mixed));
        assert!(is(SecretKey::parse(&mixed), |e| matches!(
            e,
            E::PublicHalfMismatch { .. }
        )));
        assert!(is(SecretKey::from_seed("a:b", [0; 32]), |e| matches!(
            e,
            E::BadName { .. }
        )));
        assert!(is(SecretKey::from_seed("a b", [0; 32]), |e| matches!(
            e,
            E::BadName { .. }
        )));
        assert!(is(SecretKey::from_seed("", [0; 32]), |e| matches!(
            e,
            E::BadName { .. }
        )));

        assert!(matches!(
            PublicKey::parse(pk_b64),
            Err(E::MissingName { what: "public key" })
        ));
        assert!(matches!(
            PublicKey::parse(&format!("k:{sk_b64}")),
            Err(E::WrongLength {
                expected: 32,
                actual: 64,
                ..
            })
        ));
        assert!(matches!(
            PublicKey::parse("k:iupymam3IF0u5rC3XCju/ZHZuwmQEtAjlrv/thG1CN8"),
            Err(E::BadBase64 { .. })
        ));

        assert!(matches!(
            Signature::parse(sig_b64),
            Err(E::MissingName { what: "signature" })
        ));
        assert!(matches!(
            Signature::parse(&format!("k:{pk_b64}")),
            Err(E::WrongLength { expected: 64, .. })
        ));
        assert!(matches!(
            Signature::parse("k:%%%%"),
            Err(E::BadBase64 { .. })
        ));
        // Error messages about secret keys name the key but never show its bytes.
        let msg = SecretKey::parse(&mixed).unwrap_err().to_string();
        assert!(msg.contains("`k`") && !msg.contains(&mixed[2..12]), "{msg}");
    }
}
