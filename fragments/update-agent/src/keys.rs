//! Trust: Nix-format Ed25519 public keys (`name:base64(32 bytes)`) and `manifest.sig` lines
//! (`name:base64(64 bytes)`), and the one decision whether a manifest is signed by a trusted
//! key. Pure: the key files are read by the caller.

use crate::base64;
use ring::signature::{UnparsedPublicKey, ED25519};

/// A trusted public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    /// The key's name (the part before `:`), matched against the signature's.
    pub name: String,
    /// The 32-byte Ed25519 public key.
    pub key: Vec<u8>,
    /// Where it came from (a file, or the config), for messages.
    pub origin: String,
}

/// Parses `name:base64` where the bytes must be `len` long.
fn parse_named(text: &str, len: usize, what: &str) -> Result<(String, Vec<u8>), String> {
    let (name, data) = text
        .split_once(':')
        .ok_or_else(|| format!("{} `{}` is not `name:base64`", what, short(text)))?;
    if name.is_empty() {
        return Err(format!("{} `{}` has an empty name", what, short(text)));
    }
    let bytes = base64::decode(data).map_err(|e| format!("{} `{}`: {}", what, short(text), e))?;
    if bytes.len() != len {
        return Err(format!(
            "{} `{}` holds {} bytes, not {}",
            what,
            short(text),
            bytes.len(),
            len
        ));
    }
    Ok((name.to_string(), bytes))
}

fn short(text: &str) -> String {
    if text.len() > 60 {
        format!(
            "{}…",
            &text[..text
                .char_indices()
                .nth(60)
                .map(|(i, _)| i)
                .unwrap_or(text.len())]
        )
    } else {
        text.to_string()
    }
}

/// Parses the keys in a key file or config value: one `name:base64` per line, blank lines and
/// `#` comments skipped. Returns the keys and a message per bad line.
pub fn parse_public_keys(text: &str, origin: &str) -> (Vec<PublicKey>, Vec<String>) {
    let mut keys = Vec::new();
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_named(line, 32, "public key") {
            Ok((name, key)) => keys.push(PublicKey {
                name,
                key,
                origin: format!("{}:{}", origin, n + 1),
            }),
            Err(e) => bad.push(format!("{}:{}: {} (skipped)", origin, n + 1, e)),
        }
    }
    (keys, bad)
}

/// Checks `manifest.sig` (one or more `name:base64` lines) over `manifest` against `trusted`.
/// Returns the name of the key that verified, or why none did (naming the keys involved).
pub fn verify_manifest(
    manifest: &[u8],
    sig_file: &[u8],
    trusted: &[PublicKey],
) -> Result<String, String> {
    let text = std::str::from_utf8(sig_file).map_err(|_| "manifest.sig is not text".to_string())?;
    if trusted.is_empty() {
        return Err("no trusted public keys: put one in /usr/share/kubesolo-update/keys/ or `public-key = name:base64` in /etc/kubesolo/update.conf".to_string());
    }
    let mut problems = Vec::new();
    let mut any = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        any = true;
        let (name, sig) = match parse_named(line, 64, "signature") {
            Ok(x) => x,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        let candidates: Vec<&PublicKey> = trusted.iter().filter(|k| k.name == name).collect();
        if candidates.is_empty() {
            let names: Vec<&str> = trusted.iter().map(|k| k.name.as_str()).collect();
            problems.push(format!(
                "the bundle is signed by key `{}`, which is not trusted (trusted: {})",
                name,
                names.join(", ")
            ));
            continue;
        }
        for key in &candidates {
            if UnparsedPublicKey::new(&ED25519, &key.key)
                .verify(manifest, &sig)
                .is_ok()
            {
                return Ok(name);
            }
        }
        problems.push(format!(
            "the signature by `{}` does not verify with the trusted key of that name ({}): the manifest was altered or signed with another key",
            name,
            candidates.iter().map(|k| k.origin.as_str()).collect::<Vec<_>>().join(", ")
        ));
    }
    if !any {
        return Err("manifest.sig is empty".to_string());
    }
    Err(problems.join("; "))
}

/// Test keys made deterministically from a seed (ring 0.16's `from_seed_unchecked`).
#[cfg(test)]
pub mod testkey {
    use crate::base64;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    /// A named key pair: its public key line and a signer.
    pub struct TestKey {
        pub name: String,
        pair: Ed25519KeyPair,
    }

    impl TestKey {
        /// The key named `name` from a seed of `seed` repeated.
        pub fn new(name: &str, seed: u8) -> TestKey {
            let pair = Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).expect("a 32-byte seed");
            TestKey {
                name: name.to_string(),
                pair,
            }
        }

        /// `name:base64(public key)`, as in a `.pub` file.
        pub fn public_line(&self) -> String {
            format!(
                "{}:{}",
                self.name,
                base64::encode(self.pair.public_key().as_ref())
            )
        }

        /// `name:base64(signature)`, as `ksbuild bundle sign` writes manifest.sig.
        pub fn sign_line(&self, data: &[u8]) -> String {
            format!(
                "{}:{}\n",
                self.name,
                base64::encode(self.pair.sign(data).as_ref())
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testkey::TestKey;
    use super::*;

    #[test]
    fn a_trusted_signature_verifies_and_others_do_not() {
        let good = TestKey::new("kubesolo-1", 1);
        let other = TestKey::new("kubesolo-1", 2);
        let stranger = TestKey::new("stranger", 3);
        let (trusted, bad) = parse_public_keys(
            &format!("# comment\n\n{}\nnot a key\n", good.public_line()),
            "test.pub",
        );
        assert_eq!(trusted.len(), 1);
        assert_eq!(bad.len(), 1, "{:?}", bad);
        let manifest = b"format=kubesolo-update-1\n";
        assert_eq!(
            verify_manifest(manifest, good.sign_line(manifest).as_bytes(), &trusted),
            Ok("kubesolo-1".to_string())
        );
        let err = verify_manifest(
            b"format=kubesolo-update-2\n",
            good.sign_line(manifest).as_bytes(),
            &trusted,
        )
        .unwrap_err();
        assert!(err.contains("does not verify"), "{}", err);
        let err =
            verify_manifest(manifest, other.sign_line(manifest).as_bytes(), &trusted).unwrap_err();
        assert!(err.contains("does not verify"), "{}", err);
        let err = verify_manifest(manifest, stranger.sign_line(manifest).as_bytes(), &trusted)
            .unwrap_err();
        assert!(err.contains("not trusted"), "{}", err);
        // Several signatures: one trusted one suffices.
        let both = format!(
            "{}{}",
            stranger.sign_line(manifest),
            good.sign_line(manifest)
        );
        assert!(verify_manifest(manifest, both.as_bytes(), &trusted).is_ok());
        assert!(verify_manifest(manifest, b"kubesolo-1:AAAA\n", &trusted)
            .unwrap_err()
            .contains("not 64"));
        assert!(verify_manifest(manifest, b"", &trusted)
            .unwrap_err()
            .contains("empty"));
        assert!(
            verify_manifest(manifest, good.sign_line(manifest).as_bytes(), &[])
                .unwrap_err()
                .contains("no trusted")
        );
    }
}
