//! PLACEHOLDER for the KubeSolo OS update agent (issue 15): signs and verifies a message
//! with Ed25519 (ring) and prints its SHA-256 (sha2), so that both crates are linked and
//! run for real. The real agent replaces this crate.

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("usage: kubesolo-update [--help]\n(placeholder: runs an Ed25519 and SHA-256 self-test)");
        return;
    }
    let message = b"kubesolo-update placeholder";
    let pair = match Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]) {
        Ok(p) => p,
        Err(_) => {
            eprintln!("kubesolo-update: cannot make the test key");
            std::process::exit(1);
        }
    };
    let sig = pair.sign(message);
    let public = UnparsedPublicKey::new(&ED25519, pair.public_key().as_ref());
    let good = public.verify(message, sig.as_ref()).is_ok();
    let forged = public.verify(b"another message", sig.as_ref()).is_ok();
    let digest = Sha256::digest(message);
    println!("kubesolo-update: placeholder");
    println!("kubesolo-update: ed25519 verify: {}", if good && !forged { "ok" } else { "FAILED" });
    println!("kubesolo-update: sha256: {}", hex(&digest));
    if !good || forged {
        std::process::exit(1);
    }
}
