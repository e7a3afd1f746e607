//! `ksbuild key …`: Ed25519 signing keys in Nix's `name:base64` files.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use super::{CliError, Context};
use crate::compat::signing::{SecretKey, SEED_LEN};

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate a key pair (`nix-store --generate-binary-cache-key`).
    Generate {
        /// Key name, e.g. `cache.example.org-1`.
        name: String,
        /// Where to write the secret key (created with mode 0600; must not exist).
        secret_key_file: PathBuf,
        /// Where to write the public key.
        public_key_file: PathBuf,
    },
}

fn create(path: &Path, mode: u32, content: &str) -> Result<(), CliError> {
    let usage = |e: std::io::Error| CliError::Usage {
        message: format!("cannot create `{}`: {e}", path.display()),
        hint: Some("key files are never overwritten; choose a new path".into()),
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(usage)?;
    f.write_all(content.as_bytes()).map_err(usage)
}

pub fn run(_ctx: &Context, cmd: KeyCommand) -> Result<ExitCode, CliError> {
    match cmd {
        KeyCommand::Generate {
            name,
            secret_key_file,
            public_key_file,
        } => {
            let mut seed = [0u8; SEED_LEN];
            rustix::rand::getrandom(&mut seed, rustix::rand::GetRandomFlags::empty()).map_err(
                |e| CliError::Io {
                    action: "read random bytes for the key",
                    source: e.into(),
                },
            )?;
            let secret = SecretKey::from_seed(&name, seed).map_err(|e| CliError::Usage {
                message: format!("cannot make a key named `{name}`: {e}"),
                hint: Some("key names are non-empty and contain no `:`".into()),
            })?;
            create(&secret_key_file, 0o600, &secret.to_key_file())?;
            create(&public_key_file, 0o644, &secret.to_public().to_key_file())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
