//! `ksbuild hash …`: NAR and flat hashes of files, and conversions between hash forms.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::{out_line, CliError, Context};
use crate::compat::{Hash, HashAlgo};
use crate::store;

#[derive(Debug, Subcommand)]
pub enum HashCommand {
    /// Hash the NAR serialisation of each path (`nix hash path`).
    Path {
        #[command(flatten)]
        format: Format,
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Hash the bytes of each regular file (`nix hash file`).
    File {
        #[command(flatten)]
        format: Format,
        /// Regular files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print hashes in nixbase32.
    ToBase32(Convert),
    /// Print hashes in hex.
    ToBase16(Convert),
    /// Print hashes in base64.
    ToBase64(Convert),
    /// Print hashes in SRI form (`sha256-…`).
    ToSri(Convert),
}

#[derive(Debug, Args)]
pub struct Format {
    /// Hash algorithm: md5, sha1, sha256, sha512.
    #[arg(long = "type", default_value = "sha256", value_name = "ALGO")]
    algo: String,
    /// Print in nixbase32.
    #[arg(long, group = "fmt")]
    base32: bool,
    /// Print in hex.
    #[arg(long, group = "fmt")]
    base16: bool,
    /// Print in base64.
    #[arg(long, group = "fmt")]
    base64: bool,
    /// Print in SRI form (the default).
    #[arg(long, group = "fmt")]
    sri: bool,
}

#[derive(Debug, Args)]
pub struct Convert {
    /// Algorithm of hashes that do not state one.
    #[arg(long = "type", value_name = "ALGO")]
    algo: Option<String>,
    /// Hashes in any form Nix accepts.
    #[arg(required = true)]
    hashes: Vec<String>,
}

impl Format {
    fn print(&self, h: &Hash) -> String {
        if self.base32 {
            h.to_nix32()
        } else if self.base16 {
            h.to_hex()
        } else if self.base64 {
            h.to_base64()
        } else {
            h.to_sri()
        }
    }
}

pub fn run(_ctx: &Context, cmd: HashCommand) -> Result<ExitCode, CliError> {
    match cmd {
        HashCommand::Path { format, paths } => {
            let algo = HashAlgo::from_name(&format.algo)?;
            for p in paths {
                let (h, _, _) = store::dump_nar_hash(&p, algo)?;
                out_line(&format.print(&h))?;
            }
        }
        HashCommand::File { format, paths } => {
            let algo = HashAlgo::from_name(&format.algo)?;
            for p in paths {
                out_line(&format.print(&store::hash_file(&p, algo)?))?;
            }
        }
        HashCommand::ToBase32(c) => convert(c, Hash::to_nix32)?,
        HashCommand::ToBase16(c) => convert(c, Hash::to_hex)?,
        HashCommand::ToBase64(c) => convert(c, Hash::to_base64)?,
        HashCommand::ToSri(c) => convert(c, Hash::to_sri)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn convert(c: Convert, print: fn(&Hash) -> String) -> Result<(), CliError> {
    let algo = c.algo.as_deref().map(HashAlgo::from_name).transpose()?;
    for text in c.hashes {
        out_line(&print(&Hash::parse_with(&text, algo)?))?;
    }
    Ok(())
}
