//! The one place that decides whether a narinfo may be believed: it must name the store
//! path it was asked for, and carry a valid signature by a trusted key — or a `CA` field
//! that proves its store path (Nix's `pathInfoIsUntrusted`, `require-sigs = true`). Pure:
//! tested with a table below.

use crate::compat::narinfo::NarInfo;
use crate::compat::signing::PublicKey;
use crate::compat::{StoreDir, StorePath};

/// Why a narinfo was not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `<hash>.narinfo` describes another path.
    #[error("its narinfo describes `{found}`, not `{asked}`")]
    WrongStorePath { asked: String, found: String },
    /// No `Sig` line and no proving `CA`.
    #[error("it is not signed (and not content-addressed)")]
    Unsigned,
    /// Signed, but by no key in `trusted-public-keys`.
    #[error("it is signed only by untrusted keys ({})", .keys.join(", "))]
    UntrustedKeys { keys: Vec<String> },
    /// A trusted key's signature does not verify.
    #[error("its signature by `{key}` is invalid (the narinfo was altered, or signed with another key of that name)")]
    BadSignature { key: String },
}

/// How a believed narinfo earned trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// A valid signature by this trusted key.
    Signed(String),
    /// Its `CA` field computes its store path.
    ContentAddressed,
}

/// Whether `info`, fetched as the narinfo of `asked`, may be believed.
pub fn check(
    info: &NarInfo,
    asked: &StorePath,
    store_dir: &StoreDir,
    trusted: &[PublicKey],
) -> Result<Trust, Refusal> {
    if &info.store_path != asked {
        return Err(Refusal::WrongStorePath {
            asked: store_dir.display(asked),
            found: store_dir.display(&info.store_path),
        });
    }
    if let Ok(fingerprint) = info.fingerprint(store_dir) {
        for sig in &info.signatures {
            for key in trusted.iter().filter(|k| k.name() == sig.key_name()) {
                if key.verify(fingerprint.as_bytes(), sig) {
                    return Ok(Trust::Signed(key.name().to_string()));
                }
            }
        }
    }
    if info.is_content_addressed(store_dir) {
        return Ok(Trust::ContentAddressed);
    }
    if let Some(sig) = info
        .signatures
        .iter()
        .find(|s| trusted.iter().any(|k| k.name() == s.key_name()))
    {
        return Err(Refusal::BadSignature {
            key: sig.key_name().to_string(),
        });
    }
    if info.signatures.is_empty() {
        return Err(Refusal::Unsigned);
    }
    Err(Refusal::UntrustedKeys {
        keys: info
            .signatures
            .iter()
            .map(|s| s.key_name().to_string())
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::compat::narinfo::ContentAddress;
    use crate::compat::signing::SecretKey;
    use crate::compat::{FileIngestionMethod, Hash};

    fn key(name: &str, seed: u8) -> SecretKey {
        SecretKey::from_seed(name, [seed; 32]).unwrap()
    }

    fn narinfo(path: &StorePath) -> NarInfo {
        NarInfo {
            store_path: path.clone(),
            url: "nar/x.nar".into(),
            compression: "none".into(),
            file_hash: None,
            file_size: None,
            nar_hash: Hash::sha256(b"nar"),
            nar_size: 3,
            references: BTreeSet::new(),
            deriver: None,
            system: None,
            signatures: Vec::new(),
            ca: None,
        }
    }

    #[test]
    fn trust_table() {
        let sd = StoreDir::default();
        let p = StorePath::from_base_name("00000000000000000000000000000000-p").unwrap();
        let q = StorePath::from_base_name("11111111111111111111111111111111-q").unwrap();
        let good = key("good-1", 1);
        let other = key("other-1", 2);
        let impostor = key("good-1", 3); // trusted name, wrong key
        let trusted = [good.to_public()];
        let signed = |k: &SecretKey| {
            let mut i = narinfo(&p);
            i.sign(&sd, k).unwrap();
            i
        };
        let mut tampered = signed(&good);
        tampered.nar_size = 4;
        let ca_hash = Hash::sha256(b"content");
        let mut ca = narinfo(&p);
        ca.store_path = sd
            .make_fixed_output_path(
                FileIngestionMethod::Recursive,
                &ca_hash,
                "p",
                &BTreeSet::new(),
                false,
            )
            .unwrap();
        ca.ca = Some(
            ContentAddress::parse(&format!("fixed:r:{}", ca_hash.to_nix32_prefixed())).unwrap(),
        );
        let ca_path = ca.store_path.clone();
        let mut ca_lying = ca.clone();
        ca_lying.ca = Some(
            ContentAddress::parse(&format!(
                "fixed:r:{}",
                Hash::sha256(b"x").to_nix32_prefixed()
            ))
            .unwrap(),
        );

        let cases: Vec<(&str, NarInfo, &StorePath, Result<Trust, Refusal>)> = vec![
            (
                "signed",
                signed(&good),
                &p,
                Ok(Trust::Signed("good-1".into())),
            ),
            ("unsigned", narinfo(&p), &p, Err(Refusal::Unsigned)),
            (
                "untrusted key",
                signed(&other),
                &p,
                Err(Refusal::UntrustedKeys {
                    keys: vec!["other-1".into()],
                }),
            ),
            (
                "impostor of a trusted name",
                signed(&impostor),
                &p,
                Err(Refusal::BadSignature {
                    key: "good-1".into(),
                }),
            ),
            (
                "altered after signing",
                tampered,
                &p,
                Err(Refusal::BadSignature {
                    key: "good-1".into(),
                }),
            ),
            (
                "names another path",
                signed(&good),
                &q,
                Err(Refusal::WrongStorePath {
                    asked: sd.display(&q),
                    found: sd.display(&p),
                }),
            ),
            (
                "content-addressed",
                ca,
                &ca_path,
                Ok(Trust::ContentAddressed),
            ),
            (
                "CA that does not prove the path",
                ca_lying,
                &ca_path,
                Err(Refusal::Unsigned),
            ),
        ];
        for (name, info, asked, want) in cases {
            assert_eq!(check(&info, asked, &sd, &trusted), want, "{name}");
        }
    }
}
