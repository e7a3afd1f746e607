//! DSSE envelopes (Dead Simple Signing Envelope, <https://github.com/secure-systems-lab/dsse>,
//! `envelope.md` and `protocol.md`) signed with Nix's Ed25519 keys. Pure: no I/O.
//!
//! The signature covers `PAE(payloadType, payload)` =
//! `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, lengths in ASCII decimal; the
//! envelope carries the payload in standard base64. The `keyid` is the Nix key name, so a
//! verifier finds the public key as Nix finds it for a narinfo signature.

use serde::{Deserialize, Serialize};

use crate::compat::base64;
use crate::compat::signing::{PublicKey, SecretKey, Signature};

/// The payload type of an in-toto statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// One signature of an envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// The Nix key name of the signer.
    pub keyid: String,
    /// Base64 of the 64-byte Ed25519 signature of the PAE.
    pub sig: String,
}

/// A DSSE envelope, fields in the order of the specification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Base64 of the payload.
    pub payload: String,
    /// What the payload is, e.g. [`IN_TOTO_PAYLOAD_TYPE`].
    pub payload_type: String,
    /// The signatures.
    pub signatures: Vec<EnvelopeSignature>,
}

/// Why an envelope is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DsseError {
    /// The payload is not base64.
    #[error("the envelope's payload is not base64")]
    PayloadNotBase64,
    /// No signature carries a trusted key's name.
    #[error("no signature by a trusted key (signed by: {signed_by}; trusted: {trusted})")]
    NoTrustedSignature {
        /// The key names of the signatures.
        signed_by: String,
        /// The names of the keys given.
        trusted: String,
    },
    /// The signature by a trusted key does not match the payload and its type.
    #[error("the signature by `{keyid}` does not verify: the payload or its type was changed after signing, or it was signed by another key of that name")]
    BadSignature {
        /// The key name.
        keyid: String,
    },
}

/// DSSE's pre-authentication encoding of a payload and its type.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

impl Envelope {
    /// Signs `payload` of type `payload_type` with `key`.
    pub fn sign(payload_type: &str, payload: &[u8], key: &SecretKey) -> Envelope {
        let signature = key.sign(&pae(payload_type, payload));
        Envelope {
            payload: base64::encode(payload),
            payload_type: payload_type.to_string(),
            signatures: vec![EnvelopeSignature {
                keyid: signature.key_name().to_string(),
                sig: base64::encode(signature.bytes()),
            }],
        }
    }

    /// Checks that a signature by one of `trusted` covers the payload and its type;
    /// returns the payload's bytes and the key name that signed them.
    pub fn verify(&self, trusted: &[PublicKey]) -> Result<(Vec<u8>, String), DsseError> {
        let payload = base64::decode(&self.payload).ok_or(DsseError::PayloadNotBase64)?;
        let message = pae(&self.payload_type, &payload);
        let mut known = None;
        for s in &self.signatures {
            let Some(key) = trusted.iter().find(|k| k.name() == s.keyid) else {
                continue;
            };
            known = Some(s.keyid.clone());
            let Some(bytes) = base64::decode(&s.sig).and_then(|b| <[u8; 64]>::try_from(b).ok())
            else {
                continue;
            };
            if let Ok(sig) = Signature::from_bytes(&s.keyid, bytes) {
                if key.verify(&message, &sig) {
                    return Ok((payload, s.keyid.clone()));
                }
            }
        }
        match known {
            Some(keyid) => Err(DsseError::BadSignature { keyid }),
            None => Err(DsseError::NoTrustedSignature {
                signed_by: names(self.signatures.iter().map(|s| s.keyid.as_str())),
                trusted: names(trusted.iter().map(PublicKey::name)),
            }),
        }
    }
}

fn names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<String> = names.map(|n| format!("`{n}`")).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, seed: u8) -> SecretKey {
        SecretKey::from_seed(name, [seed; 32]).unwrap()
    }

    #[test]
    fn pae_is_the_specifications_example() {
        // protocol.md: PAE("http://example.com/HelloWorld", "hello world").
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn sign_verify_and_every_kind_of_refusal() {
        let k = key("k-1", 7);
        let env = Envelope::sign(IN_TOTO_PAYLOAD_TYPE, b"{\"a\":1}", &k);
        let (payload, who) = env.verify(&[k.to_public()]).unwrap();
        assert_eq!(
            (payload.as_slice(), who.as_str()),
            (&b"{\"a\":1}"[..], "k-1")
        );
        // Another key of the same name.
        let other = key("k-1", 8);
        assert_eq!(
            env.verify(&[other.to_public()]),
            Err(DsseError::BadSignature {
                keyid: "k-1".into()
            })
        );
        // Another name.
        assert!(matches!(
            env.verify(&[key("k-2", 7).to_public()]),
            Err(DsseError::NoTrustedSignature { .. })
        ));
        // A changed payload, or payload type.
        let mut changed = env.clone();
        changed.payload = base64::encode(b"{\"a\":2}");
        assert!(changed.verify(&[k.to_public()]).is_err());
        let mut changed = env.clone();
        changed.payload_type = "text/plain".into();
        assert!(changed.verify(&[k.to_public()]).is_err());
        let mut changed = env;
        changed.payload = "!".into();
        assert_eq!(
            changed.verify(&[k.to_public()]),
            Err(DsseError::PayloadNotBase64)
        );
    }
}
