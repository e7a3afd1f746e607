//! `ksbuild bundle sign|verify`: KubeSolo OS update bundles (the `update-bundle*` targets)
//! signed outside the sandbox, where the secret key lives (a derivation never sees a
//! secret), and checked as the update agent on the device checks them.
//!
//! A bundle is an uncompressed ustar archive: `manifest` (lines `key=value`; one
//! `file=<sha256> <size> <name>` line per file), `manifest.sig` once signed (one line,
//! `<key name>:<base64 Ed25519 signature of the manifest's bytes>`, Nix's signature format),
//! then `files/<name>` for each file, in the manifest's order.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use super::{CliError, Context};
use crate::compat::hash::Hasher;
use crate::compat::signing::{PublicKey, SecretKey, Signature};
use crate::compat::HashAlgo;

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Sign an update bundle (an `update-bundle*` output) with a Nix secret key: checks
    /// every file against the manifest, then writes the bundle with `manifest.sig`.
    Sign {
        /// The secret key file (`ksbuild key generate NAME SECRET PUBLIC` writes one).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The unsigned bundle (e.g. `result/bundle.tar`).
        bundle: PathBuf,
        /// Where to write the signed bundle.
        #[arg(long, short = 'o', value_name = "FILE")]
        output: PathBuf,
    },
    /// Check a bundle as the update agent does: its signature against the public keys
    /// given, and every file against the manifest. Prints the manifest.
    Verify {
        /// Trusted public keys (`name:base64`), or files holding them.
        #[arg(long = "key", value_name = "KEY|FILE", required = true)]
        keys: Vec<String>,
        /// The signed bundle.
        bundle: PathBuf,
    },
}

pub fn run(ctx: &Context, cmd: BundleCommand) -> Result<ExitCode, CliError> {
    match cmd {
        BundleCommand::Sign {
            key,
            bundle,
            output,
        } => {
            let key = super::cache_cmd::read_secret_key(&key)?;
            let read = read_bundle(&bundle)?;
            if read.signature.is_some() {
                return Err(CliError::Usage {
                    message: format!("`{}` is signed already", bundle.display()),
                    hint: Some("sign the unsigned bundle the build produced".into()),
                });
            }
            write_signed(&bundle, &output, &key)?;
            ctx.note(&format!(
                "signed `{}` ({} files, version {}) with `{}`: `{}`",
                bundle.display(),
                read.files,
                read.manifest.get("version").map_or("?", String::as_str),
                key.name(),
                output.display()
            ));
            Ok(ExitCode::SUCCESS)
        }
        BundleCommand::Verify { keys, bundle } => {
            let trusted = keys
                .iter()
                .map(|k| read_public_key(k))
                .collect::<Result<Vec<_>, _>>()?;
            let read = read_bundle(&bundle)?;
            let Some(sig) = read.signature else {
                return Err(failed(&bundle, "it is not signed (no `manifest.sig`)"));
            };
            if !crate::compat::signing::verify_detached(&read.manifest_bytes, &sig, &trusted) {
                return Err(failed(
                    &bundle,
                    &format!(
                        "its signature by `{}` does not verify against the keys given",
                        sig.key_name()
                    ),
                ));
            }
            super::out_line(String::from_utf8_lossy(&read.manifest_bytes).trim_end())?;
            ctx.note(&format!(
                "`{}`: signed by `{}`, {} files as the manifest says",
                bundle.display(),
                sig.key_name(),
                read.files
            ));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn failed(bundle: &Path, why: &str) -> CliError {
    CliError::Failed(format!("bundle `{}` is refused: {why}", bundle.display()))
}

pub(super) fn read_public_key(text: &str) -> Result<PublicKey, CliError> {
    let owned;
    let text = if Path::new(text).is_file() {
        owned = std::fs::read_to_string(text).map_err(|e| CliError::Usage {
            message: format!("cannot read the public key file `{text}`: {e}"),
            hint: None,
        })?;
        owned.trim()
    } else {
        text
    };
    PublicKey::parse(text).map_err(|e| CliError::Usage {
        message: format!("`{text}` is not a Nix public key: {e}"),
        hint: Some("public keys look like `name:<base64 of 32 bytes>`".into()),
    })
}

/// What a bundle holds, every file checked against its manifest.
struct Contents {
    manifest_bytes: Vec<u8>,
    manifest: BTreeMap<String, String>,
    signature: Option<Signature>,
    files: usize,
}

/// One `file=` line of a manifest.
struct ManifestFile {
    sha256: String,
    size: u64,
    name: String,
}

fn manifest_files(text: &str) -> Result<Vec<ManifestFile>, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("file="))
        .map(|rest| {
            let mut w = rest.splitn(3, ' ');
            let (Some(sha256), Some(size), Some(name)) = (w.next(), w.next(), w.next()) else {
                return Err(format!(
                    "manifest line `file={rest}` is not `file=SHA256 SIZE NAME`"
                ));
            };
            let size = size
                .parse()
                .map_err(|_| format!("manifest line `file={rest}`: `{size}` is not a size"))?;
            Ok(ManifestFile {
                sha256: sha256.to_string(),
                size,
                name: name.to_string(),
            })
        })
        .collect()
}

/// One archive member read: its name, its bytes (the manifest and signature only), its size
/// and the hash of its contents.
type Member = (String, Vec<u8>, u64, Hasher);

/// Reads `path`, checking its structure and every file's size and SHA-256 (streamed).
fn read_bundle(path: &Path) -> Result<Contents, CliError> {
    let bad = |why: String| failed(path, &why);
    let file = File::open(path).map_err(|e| CliError::Usage {
        message: format!("cannot open the bundle `{}`: {e}", path.display()),
        hint: Some("a bundle is the `bundle.tar` of an `update-bundle*` target".into()),
    })?;
    let mut archive = tar::Archive::new(io::BufReader::new(file));
    let mut entries = archive
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    let mut next = |what: &str| -> Result<Option<Member>, CliError> {
        let Some(entry) = entries.next() else {
            return Ok(None);
        };
        let mut entry = entry.map_err(|e| bad(format!("{what}: {e}")))?;
        let name = entry
            .path()
            .map_err(|e| bad(format!("{what}: {e}")))?
            .to_string_lossy()
            .into_owned();
        let small = name == "manifest" || name == "manifest.sig";
        let mut bytes = Vec::new();
        let mut hasher = Hasher::new(HashAlgo::Sha256);
        let mut size = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| bad(format!("`{name}` is cut short: {e}")))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
            if small {
                if bytes.len() + n > 64 * 1024 {
                    return Err(bad(format!("`{name}` is larger than 64 KiB")));
                }
                bytes.extend_from_slice(&buf[..n]);
            }
        }
        Ok(Some((name, bytes, size, hasher)))
    };
    let Some((name, manifest_bytes, _, _)) = next("the manifest")? else {
        return Err(bad("it is empty".into()));
    };
    if name != "manifest" {
        return Err(bad(format!("its first member is `{name}`, not `manifest`")));
    }
    let text = String::from_utf8(manifest_bytes.clone())
        .map_err(|_| bad("its manifest is not UTF-8".into()))?;
    if !text.starts_with("format=kubesolo-update-1\n") {
        return Err(bad(
            "its manifest does not start with `format=kubesolo-update-1`".into(),
        ));
    }
    let manifest: BTreeMap<String, String> = text
        .lines()
        .filter(|l| !l.starts_with("file="))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let files = manifest_files(&text).map_err(bad)?;
    let mut signature = None;
    let mut member = next("a member")?;
    if let Some((name, bytes, _, _)) = &member {
        if name == "manifest.sig" {
            let text = String::from_utf8_lossy(bytes);
            signature = Some(
                Signature::parse(text.trim())
                    .map_err(|e| bad(format!("its `manifest.sig` is not a signature: {e}")))?,
            );
            member = next("a member")?;
        }
    }
    for f in &files {
        let Some((name, _, size, hasher)) = member.take() else {
            return Err(bad(format!("`files/{}` is missing", f.name)));
        };
        if name != format!("files/{}", f.name) {
            return Err(bad(format!(
                "`{name}` comes where the manifest says `files/{}`",
                f.name
            )));
        }
        if size != f.size {
            return Err(bad(format!(
                "`{name}` is {size} bytes; the manifest says {}",
                f.size
            )));
        }
        let sha = hasher.finish().to_hex();
        if sha != f.sha256 {
            return Err(bad(format!(
                "`{name}` has SHA-256 {sha}; the manifest says {}",
                f.sha256
            )));
        }
        member = next("a member")?;
    }
    if let Some((name, ..)) = member {
        return Err(bad(format!("`{name}` is not in the manifest")));
    }
    Ok(Contents {
        manifest_bytes,
        manifest,
        signature,
        files: files.len(),
    })
}

/// Writes `input` to `output` with `manifest.sig` (the manifest signed by `key`) after the
/// manifest, every other header and byte as they were; through a temporary file renamed
/// into place.
fn write_signed(input: &Path, output: &Path, key: &SecretKey) -> Result<(), CliError> {
    let io_err = |what: &str, e: io::Error| CliError::Failed(format!("{what}: {e}"));
    let dir = output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| io_err(&format!("cannot write in `{}`", dir.display()), e))?;
    {
        let mut archive = tar::Archive::new(io::BufReader::new(
            File::open(input).map_err(|e| io_err("open", e))?,
        ));
        let mut builder = tar::Builder::new(io::BufWriter::new(tmp.as_file()));
        builder.mode(tar::HeaderMode::Complete);
        for (i, entry) in archive
            .entries()
            .map_err(|e| io_err("read", e))?
            .enumerate()
        {
            let mut entry = entry.map_err(|e| io_err("read", e))?;
            let mut header = entry.header().clone();
            if i == 0 {
                let mut manifest = Vec::new();
                entry
                    .read_to_end(&mut manifest)
                    .map_err(|e| io_err("read", e))?;
                builder
                    .append(&header, manifest.as_slice())
                    .map_err(|e| io_err("write", e))?;
                let sig = format!("{}\n", key.sign(&manifest));
                header.set_size(sig.len() as u64);
                header
                    .set_path("manifest.sig")
                    .map_err(|e| io_err("write", e))?;
                header.set_cksum();
                builder
                    .append(&header, sig.as_bytes())
                    .map_err(|e| io_err("write", e))?;
            } else {
                builder
                    .append(&header, &mut entry)
                    .map_err(|e| io_err("write", e))?;
            }
        }
        builder
            .into_inner()
            .and_then(|mut w| w.flush())
            .map_err(|e| io_err("write", e))?;
    }
    tmp.as_file().sync_all().map_err(|e| io_err("sync", e))?;
    tmp.persist(output)
        .map_err(|e| io_err(&format!("cannot write `{}`", output.display()), e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bundle as `fragments/build-update-bundle.sh` writes one.
    fn bundle(dir: &Path, files: &[(&str, &[u8])], corrupt: bool) -> PathBuf {
        let mut manifest = String::from(
            "format=kubesolo-update-1\nversion=2\narch=x86_64\ntrack=x86_64\nboot=grub\nmin-version=0\n",
        );
        for (name, data) in files {
            manifest.push_str(&format!(
                "file={} {} {name}\n",
                crate::compat::Hash::sha256(data).to_hex(),
                data.len()
            ));
        }
        let path = dir.join("bundle.tar");
        let mut b = tar::Builder::new(File::create(&path).unwrap());
        let mut add = |name: &str, data: &[u8]| {
            let mut h = tar::Header::new_ustar();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(1704067200);
            b.append_data(&mut h, name, data).unwrap();
        };
        add("manifest", manifest.as_bytes());
        for (name, data) in files {
            let data = if corrupt {
                b"tampered".as_slice()
            } else {
                data
            };
            add(&format!("files/{name}"), data);
        }
        b.finish().unwrap();
        path
    }

    /// Signing adds `manifest.sig` after the manifest and keeps the rest; the signature
    /// verifies with the key's public half only; a tampered file is refused before signing.
    #[test]
    fn sign_then_verify_and_tampering_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let input = bundle(
            dir.path(),
            &[("vmlinuz", b"kernel"), ("kubesolo-os.gz", b"initramfs")],
            false,
        );
        let key = SecretKey::from_seed("test-1", [7; 32]).unwrap();
        let out = dir.path().join("signed.tar");
        write_signed(&input, &out, &key).unwrap();
        let read = read_bundle(&out).unwrap();
        assert_eq!(read.files, 2);
        let sig = read.signature.unwrap();
        assert!(key.to_public().verify(&read.manifest_bytes, &sig));
        let other = SecretKey::from_seed("test-1", [8; 32]).unwrap();
        assert!(!other.to_public().verify(&read.manifest_bytes, &sig));
        let names: Vec<String> = tar::Archive::new(File::open(&out).unwrap())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "manifest",
                "manifest.sig",
                "files/vmlinuz",
                "files/kubesolo-os.gz"
            ]
        );
        let bad_dir = tempfile::tempdir().unwrap();
        let tampered = bundle(bad_dir.path(), &[("vmlinuz", b"kernel")], true);
        let e = read_bundle(&tampered).err().unwrap().to_string();
        assert!(e.contains("`files/vmlinuz` is 8 bytes"), "{e}");
    }
}
