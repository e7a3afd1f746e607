//! `ksbuild lock`: resolving an environment's package list to exact `.deb` files from the
//! archive's own indexes — no apt on the host. The `InRelease` file is checked with `gpgv`
//! and the Debian keyring where both exist; every `Packages` index is checked against the
//! SHA-256 the (signed) release lists. Does network I/O.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use super::debian::{parse_packages, release_checksums, DebianError, Index, Package};
use super::{agent, Mirrors};
use crate::compat::Hash;
use crate::model::sandbox::{EnvironmentFile, LockFile, LockedDeb};

/// The Debian archive keyring apt itself uses.
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Why an environment could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// No mirror is known for a mirror name.
    #[error("no mirrors are known for `mirror://{0}/`")]
    NoMirror(String),
    /// A download failed on every mirror.
    #[error("cannot download `{what}`: {reason}")]
    Download { what: String, reason: String },
    /// The release file's signature is bad.
    #[error("the signature of `{what}` does not verify with `{DEBIAN_KEYRING}`: {reason}")]
    Signature { what: String, reason: String },
    /// An index does not match the checksum the release lists.
    #[error("`{what}` does not match its checksum in the release file ({reason})")]
    Checksum { what: String, reason: String },
    /// The closure cannot be resolved.
    #[error(transparent)]
    Resolve(#[from] DebianError),
}

impl LockError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            LockError::NoMirror(name) => Some(format!(
                "set `KSBUILD_MIRROR_{}=\"http://…\"`, or list it in `~/.config/ksbuild/mirrors.toml`",
                name.to_ascii_uppercase().replace('-', "_")
            )),
            LockError::Resolve(DebianError::Missing { .. }) => {
                Some("check the package name and the environment's `components` (e.g. `non-free-firmware`)".into())
            }
            _ => None,
        }
    }
}

/// Downloads `mirror://NAME/path` from the first mirror that answers.
fn download(
    agent: &ureq::Agent,
    mirrors: &Mirrors,
    mirror: &str,
    path: &str,
) -> Result<Vec<u8>, LockError> {
    let url = format!("mirror://{mirror}/{path}");
    let urls = mirrors
        .resolve(&url)
        .ok_or_else(|| LockError::NoMirror(mirror.to_string()))?;
    let mut reasons = Vec::new();
    for u in urls {
        let result = if let Some(local) = u.strip_prefix("file://") {
            std::fs::read(local).map_err(|e| e.to_string())
        } else {
            agent
                .get(&u)
                .call()
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    let mut buf = Vec::new();
                    r.into_reader()
                        .read_to_end(&mut buf)
                        .map(|_| buf)
                        .map_err(|e| e.to_string())
                })
        };
        match result {
            Ok(bytes) => return Ok(bytes),
            Err(e) => reasons.push(format!("{u}: {e}")),
        }
    }
    Err(LockError::Download {
        what: url,
        reason: reasons.join("; "),
    })
}

/// Verifies a clearsigned `InRelease` with `gpgv`; returns the signed text, or `None`
/// (unchecked) when `gpgv` or the keyring is missing.
fn verified_release(bytes: &[u8], what: &str) -> Result<Option<String>, LockError> {
    if !Path::new(DEBIAN_KEYRING).exists() {
        return Ok(None);
    }
    let dir = tempfile::tempdir().map_err(|e| LockError::Signature {
        what: what.into(),
        reason: e.to_string(),
    })?;
    let file = dir.path().join("InRelease");
    std::fs::write(&file, bytes).map_err(|e| LockError::Signature {
        what: what.into(),
        reason: e.to_string(),
    })?;
    let out = match std::process::Command::new("gpgv")
        .args(["--keyring", DEBIAN_KEYRING, "--output", "-"])
        .arg(&file)
        .output()
    {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(LockError::Signature {
                what: what.into(),
                reason: e.to_string(),
            })
        }
    };
    if !out.status.success() {
        return Err(LockError::Signature {
            what: what.into(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Resolves and locks environment `name`. `progress` hears what is being fetched.
pub fn lock_environment(
    name: &str,
    env: &EnvironmentFile,
    mirrors: &Mirrors,
    progress: &dyn Fn(&str),
) -> Result<LockFile, LockError> {
    let agent = agent();
    let mut suites: Vec<(&str, &str)> = env.suites.iter().map(|s| ("debian", s.as_str())).collect();
    if let Some(sec) = &env.security {
        suites.push(("debian-security", sec.as_str()));
    }
    let mut archs: Vec<String> = vec![env.architecture.clone()];
    for d in &env.data {
        if let Some((_, a)) = d.split_once(':') {
            if !archs.iter().any(|x| x == a) {
                archs.push(a.to_string());
            }
        }
    }
    let mut all: BTreeMap<String, Vec<Package>> = BTreeMap::new();
    let mut signature_checked = true;
    for (mirror, suite) in suites {
        let what = format!("mirror://{mirror}/dists/{suite}/InRelease");
        progress(&format!("fetching {what}"));
        let raw = download(&agent, mirrors, mirror, &format!("dists/{suite}/InRelease"))?;
        let release = match verified_release(&raw, &what)? {
            Some(text) => text,
            None => {
                signature_checked = false;
                String::from_utf8_lossy(&raw).into_owned()
            }
        };
        let sums = release_checksums(&release);
        for component in &env.components {
            for arch in &archs {
                let rel = format!("{component}/binary-{arch}/Packages.xz");
                let (want, size) = sums.get(&rel).cloned().ok_or_else(|| LockError::Checksum {
                    what: format!("dists/{suite}/{rel}"),
                    reason: "the release file does not list it".into(),
                })?;
                progress(&format!("fetching mirror://{mirror}/dists/{suite}/{rel}"));
                let xz = download(&agent, mirrors, mirror, &format!("dists/{suite}/{rel}"))?;
                let got = Hash::sha256(&xz).to_hex();
                if got != want || xz.len() as u64 != size {
                    return Err(LockError::Checksum {
                        what: format!("dists/{suite}/{rel}"),
                        reason: format!("expected {want}, got {got}"),
                    });
                }
                let mut text = String::new();
                xz2::read::XzDecoder::new(xz.as_slice())
                    .read_to_string(&mut text)
                    .map_err(|e| LockError::Checksum {
                        what: format!("dists/{suite}/{rel}"),
                        reason: format!("cannot decompress: {e}"),
                    })?;
                all.entry(arch.clone())
                    .or_default()
                    .extend(parse_packages(&text, mirror)?);
            }
        }
    }
    let native = Index::new(
        all.remove(&env.architecture).unwrap_or_default(),
        &env.architecture,
    );
    let mut chosen: Vec<Package> = native
        .resolve(&env.packages, env.essential)?
        .into_iter()
        .cloned()
        .collect();
    for d in &env.data {
        let (pkg, arch) = d
            .split_once(':')
            .unwrap_or((d.as_str(), env.architecture.as_str()));
        let p = if arch == env.architecture {
            native.get(pkg).cloned()
        } else {
            Index::new(all.get(arch).cloned().unwrap_or_default(), arch)
                .get(pkg)
                .cloned()
        };
        chosen.push(p.ok_or_else(|| DebianError::Missing {
            name: d.clone(),
            needed_by: None,
        })?);
    }
    let mut deb: Vec<LockedDeb> = chosen
        .into_iter()
        .map(|p| LockedDeb {
            name: p.name,
            version: p.version_text,
            architecture: p.architecture,
            mirror: p.mirror,
            path: p.filename,
            size: p.size,
            sha256: p.sha256,
        })
        .collect();
    deb.sort_by(|a, b| (&a.name, &a.architecture).cmp(&(&b.name, &b.architecture)));
    deb.dedup();
    Ok(LockFile {
        environment: name.to_string(),
        signature_checked,
        deb,
    })
}
