//! Update bundles (`bundle.tar`: `manifest`, `manifest.sig`, `files/<name>...`): the verify
//! pass (signature first, then what the bundle is for, then every file's size and SHA-256,
//! and nothing else in the archive) and the write pass into a mounted slot. Both stream the
//! archive in constant memory; the verify pass writes nothing.

use crate::keys::{self, PublicKey};
use crate::manifest::Manifest;
use crate::slot;
use crate::ustar::{Header, TarError, TarReader};
use crate::version::compare_versions;
use std::cmp::Ordering;
use std::io::{self, Read};
use std::path::Path;

/// The largest `manifest` and `manifest.sig` read into memory.
const MAX_MANIFEST: u64 = 1 << 20;
const MAX_SIG: u64 = 64 * 1024;

/// What this system accepts.
#[derive(Clone, Debug)]
pub struct Expect {
    /// `uname -m`.
    pub arch: String,
    /// The image track (`x86_64`, `arm64`, `rpi`).
    pub track: String,
    /// The boot environment (`grub`, `rpi`).
    pub boot: String,
    /// `VERSION_ID` of the running system, if known.
    pub running_version: Option<String>,
}

/// A bundle that passed the verify pass.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The manifest.
    pub manifest: Manifest,
    /// Its exact bytes (the write pass checks it reads the same ones).
    pub manifest_bytes: Vec<u8>,
    /// The exact bytes of manifest.sig.
    pub sig_bytes: Vec<u8>,
    /// The trusted key that signed it.
    pub signer: String,
}

fn tar_err(e: TarError) -> String {
    format!("the bundle is not a valid archive: {}", e)
}

fn read_member<R: Read>(
    tar: &mut TarReader<R>,
    header: &Header,
    max: u64,
) -> Result<Vec<u8>, String> {
    if header.size > max {
        return Err(format!(
            "`{}` is {} bytes, more than the {} allowed",
            header.name, header.size, max
        ));
    }
    let mut bytes = Vec::with_capacity(header.size as usize);
    tar.member()
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading `{}`: {}", header.name, e))?;
    Ok(bytes)
}

fn regular(header: &Header) -> Result<(), String> {
    if header.typeflag == b'0' || header.typeflag == 0 {
        Ok(())
    } else {
        Err(format!(
            "member `{}` is not a regular file (tar type {:?}); bundles hold regular files only",
            header.name, header.typeflag as char
        ))
    }
}

/// Reads `manifest` and `manifest.sig`, the first two members.
fn read_head<R: Read>(tar: &mut TarReader<R>) -> Result<(Vec<u8>, Vec<u8>), String> {
    let header = tar
        .next_header()
        .map_err(tar_err)?
        .ok_or("the bundle is empty")?;
    if header.name != "manifest" {
        return Err(format!(
            "the bundle's first member is `{}`, not `manifest`",
            header.name
        ));
    }
    regular(&header)?;
    let manifest = read_member(tar, &header, MAX_MANIFEST)?;
    let header = tar
        .next_header()
        .map_err(tar_err)?
        .ok_or("the bundle has no manifest.sig (it ends after the manifest)")?;
    if header.name != "manifest.sig" {
        return Err(format!(
            "the bundle is unsigned (its second member is `{}`, not `manifest.sig`): sign it with `ksbuild bundle sign --key SECRET IN OUT`",
            header.name
        ));
    }
    regular(&header)?;
    let sig = read_member(tar, &header, MAX_SIG)?;
    Ok((manifest, sig))
}

/// Checks the manifest against this system.
fn check_fit(manifest: &Manifest, expect: &Expect) -> Result<(), String> {
    if manifest.arch != expect.arch {
        return Err(format!(
            "the bundle is for arch `{}`, this system is `{}`",
            manifest.arch, expect.arch
        ));
    }
    if manifest.track != expect.track {
        return Err(format!(
            "the bundle is for the `{}` track, this system is the `{}` track",
            manifest.track, expect.track
        ));
    }
    if manifest.boot != expect.boot {
        return Err(format!(
            "the bundle is for `{}` boot, this system boots with `{}`",
            manifest.boot, expect.boot
        ));
    }
    if manifest.min_version != "0" {
        match &expect.running_version {
            None => {
                return Err(format!(
                    "the bundle needs a running version of at least {}, and this system's is unknown (no VERSION_ID in /etc/os-release)",
                    manifest.min_version
                ))
            }
            Some(running) if compare_versions(running, &manifest.min_version) == Ordering::Less => {
                return Err(format!(
                    "the bundle needs a running version of at least {}, this system runs {}: apply an intermediate update first",
                    manifest.min_version, running
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The next member must be `files/<name>` of the manifest's next file, of its size.
fn expect_file<R: Read>(
    tar: &mut TarReader<R>,
    manifest: &Manifest,
    index: usize,
) -> Result<Header, String> {
    let file = &manifest.files[index];
    let want = format!("files/{}", file.name);
    let header = match tar.next_header().map_err(tar_err)? {
        Some(h) => h,
        None => {
            return Err(format!(
                "the bundle is missing `{}` (the archive ends before it)",
                want
            ))
        }
    };
    if header.name != want {
        let listed = header
            .name
            .strip_prefix("files/")
            .map(|n| manifest.files.iter().any(|f| f.name == n))
            .unwrap_or(false);
        return Err(if listed {
            format!(
                "the bundle has `{}` where the manifest lists `{}` next (out of order or missing)",
                header.name, want
            )
        } else {
            format!(
                "the bundle has a member `{}` the manifest does not list (expected `{}`)",
                header.name, want
            )
        });
    }
    regular(&header)?;
    if header.size != file.size {
        return Err(format!(
            "`{}` is {} bytes, the manifest says {}",
            want, header.size, file.size
        ));
    }
    Ok(header)
}

fn expect_end<R: Read>(tar: &mut TarReader<R>) -> Result<(), String> {
    match tar.next_header().map_err(tar_err)? {
        None => Ok(()),
        Some(h) => Err(format!(
            "the bundle has a member `{}` the manifest does not list",
            h.name
        )),
    }
}

/// Pass 1: verifies the whole bundle without writing anything.
pub fn verify(
    reader: impl Read,
    trusted: &[PublicKey],
    expect: &Expect,
) -> Result<Verified, String> {
    let mut tar = TarReader::new(reader);
    let (manifest_bytes, sig_bytes) = read_head(&mut tar)?;
    let signer = keys::verify_manifest(&manifest_bytes, &sig_bytes, trusted)?;
    let manifest = Manifest::parse(&manifest_bytes)?;
    check_fit(&manifest, expect)?;
    for (i, file) in manifest.files.iter().enumerate() {
        let header = expect_file(&mut tar, &manifest, i)?;
        let (size, digest) = slot::copy_hashing(&mut tar.member(), &mut io::sink())
            .map_err(|e| format!("reading `{}`: {}", header.name, e))?;
        if size != file.size {
            return Err(format!(
                "`{}` is truncated ({} of {} bytes)",
                header.name, size, file.size
            ));
        }
        if digest != file.sha256 {
            return Err(format!(
                "`{}` has sha256 {}, the manifest says {}: the bundle is corrupt",
                header.name, digest, file.sha256
            ));
        }
    }
    expect_end(&mut tar)?;
    Ok(Verified {
        manifest,
        manifest_bytes,
        sig_bytes,
        signer,
    })
}

/// Pass 2: writes the verified bundle's files into the slot mounted at `dir` (old files
/// removed first), checking every byte again against the manifest as it goes.
pub fn write_slot(reader: impl Read, verified: &Verified, dir: &Path) -> Result<(), String> {
    let mut tar = TarReader::new(reader);
    let (manifest_bytes, sig_bytes) = read_head(&mut tar)?;
    if manifest_bytes != verified.manifest_bytes || sig_bytes != verified.sig_bytes {
        return Err("the bundle changed between the verify pass and the write pass".to_string());
    }
    slot::clear(dir)?;
    for (i, file) in verified.manifest.files.iter().enumerate() {
        expect_file(&mut tar, &verified.manifest, i)?;
        slot::write_verified(dir, &file.name, &mut tar.member(), file.size, &file.sha256)?;
    }
    slot::sync_dir(dir)
}

#[cfg(test)]
pub mod testbundle {
    //! Building bundles for tests, as the `update-bundle` derivations and `ksbuild bundle
    //! sign` do.
    use crate::keys::testkey::TestKey;
    use crate::slot::hex;
    use crate::ustar::write;
    use sha2::{Digest, Sha256};

    /// A bundle's parts before it is archived.
    pub struct Spec {
        pub version: String,
        pub arch: String,
        pub track: String,
        pub boot: String,
        pub min_version: String,
        pub files: Vec<(String, Vec<u8>)>,
    }

    impl Spec {
        /// A GRUB bundle for this host's arch and the matching track.
        pub fn grub(version: &str) -> Spec {
            let arch = std::env::consts::ARCH.to_string();
            let track = if arch == "aarch64" { "arm64" } else { "x86_64" }.to_string();
            Spec {
                version: version.to_string(),
                arch,
                track,
                boot: "grub".to_string(),
                min_version: "0".to_string(),
                files: vec![
                    (
                        "vmlinuz".to_string(),
                        format!("kernel {}", version).into_bytes(),
                    ),
                    (
                        "kubesolo-os.gz".to_string(),
                        vec![version.len() as u8; 3000],
                    ),
                ],
            }
        }

        /// A Pi bundle (for this host's arch).
        pub fn rpi(version: &str) -> Spec {
            Spec {
                version: version.to_string(),
                arch: std::env::consts::ARCH.to_string(),
                track: "rpi".to_string(),
                boot: "rpi".to_string(),
                min_version: "0".to_string(),
                files: vec![
                    (
                        "kernel8.img".to_string(),
                        format!("kernel {}", version).into_bytes(),
                    ),
                    ("kubesolo-os.gz".to_string(), vec![7; 2000]),
                    ("config.txt".to_string(), b"arm_64bit=1\n".to_vec()),
                    (
                        "cmdline.txt".to_string(),
                        b"console=serial0,115200 kubesolo.slot=A kubesolo.data=LABEL=KSOLODATA\n"
                            .to_vec(),
                    ),
                    ("overlays/foo.dtbo".to_string(), b"dtbo".to_vec()),
                ],
            }
        }

        /// The manifest text.
        pub fn manifest(&self) -> String {
            let mut m = format!(
                "format=kubesolo-update-1\nversion={}\narch={}\ntrack={}\nboot={}\nmin-version={}\n",
                self.version, self.arch, self.track, self.boot, self.min_version
            );
            for (name, data) in &self.files {
                m.push_str(&format!(
                    "file={} {} {}\n",
                    hex(&Sha256::digest(data)),
                    data.len(),
                    name
                ));
            }
            m
        }

        /// The signed bundle (members in the contract's order).
        pub fn signed(&self, key: &TestKey) -> Vec<u8> {
            let manifest = self.manifest();
            let sig = key.sign_line(manifest.as_bytes());
            let mut members: Vec<(String, Vec<u8>)> = vec![
                ("manifest".to_string(), manifest.into_bytes()),
                ("manifest.sig".to_string(), sig.into_bytes()),
            ];
            for (name, data) in &self.files {
                members.push((format!("files/{}", name), data.clone()));
            }
            archive(&members)
        }
    }

    /// An archive of owned members.
    pub fn archive(members: &[(String, Vec<u8>)]) -> Vec<u8> {
        let refs: Vec<(&str, &[u8])> = members
            .iter()
            .map(|(n, d)| (n.as_str(), d.as_slice()))
            .collect();
        write::archive(&refs)
    }
}

#[cfg(test)]
mod tests {
    use super::testbundle::*;
    use super::*;
    use crate::keys::testkey::TestKey;
    use crate::ustar::write;

    fn expect() -> Expect {
        let s = Spec::grub("2");
        Expect {
            arch: s.arch,
            track: s.track,
            boot: s.boot,
            running_version: Some("1".to_string()),
        }
    }

    fn trusted(key: &TestKey) -> Vec<PublicKey> {
        keys::parse_public_keys(&key.public_line(), "test").0
    }

    #[test]
    fn a_good_bundle_verifies_and_writes() {
        let key = TestKey::new("kubesolo-1", 1);
        let bundle = Spec::grub("2").signed(&key);
        let v = verify(&bundle[..], &trusted(&key), &expect()).unwrap();
        assert_eq!(v.signer, "kubesolo-1");
        assert_eq!(v.manifest.version, "2");
        let tmp = crate::testutil::TempDir::new("bundle-write");
        std::fs::write(tmp.path().join("old-file"), b"old").unwrap();
        std::fs::create_dir(tmp.path().join("lost+found")).unwrap();
        write_slot(&bundle[..], &v, tmp.path()).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join("vmlinuz")).unwrap(),
            b"kernel 2"
        );
        assert!(!tmp.path().join("old-file").exists());
        assert!(tmp.path().join("lost+found").is_dir());
        let mut names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec!["kubesolo-os.gz", "lost+found", "vmlinuz"]);
    }

    #[test]
    fn the_write_pass_refuses_a_bundle_that_changed() {
        let key = TestKey::new("kubesolo-1", 1);
        let bundle = Spec::grub("2").signed(&key);
        let v = verify(&bundle[..], &trusted(&key), &expect()).unwrap();
        let other = Spec::grub("3").signed(&key);
        let tmp = crate::testutil::TempDir::new("bundle-changed");
        std::fs::write(tmp.path().join("vmlinuz"), b"old").unwrap();
        assert!(write_slot(&other[..], &v, tmp.path())
            .unwrap_err()
            .contains("changed between"));
        assert_eq!(std::fs::read(tmp.path().join("vmlinuz")).unwrap(), b"old");
    }

    #[test]
    fn unsigned_or_reordered_bundles_are_refused() {
        let key = TestKey::new("kubesolo-1", 1);
        let spec = Spec::grub("2");
        let mut members = vec![("manifest".to_string(), spec.manifest().into_bytes())];
        for (n, d) in &spec.files {
            members.push((format!("files/{}", n), d.clone()));
        }
        let unsigned = archive(&members);
        assert!(verify(&unsigned[..], &trusted(&key), &expect())
            .unwrap_err()
            .contains("unsigned"));
        // Files swapped.
        let manifest = spec.manifest();
        let sig = key.sign_line(manifest.as_bytes());
        let swapped = archive(&[
            ("manifest".to_string(), manifest.into_bytes()),
            ("manifest.sig".to_string(), sig.into_bytes()),
            ("files/kubesolo-os.gz".to_string(), spec.files[1].1.clone()),
            ("files/vmlinuz".to_string(), spec.files[0].1.clone()),
        ]);
        assert!(verify(&swapped[..], &trusted(&key), &expect())
            .unwrap_err()
            .contains("out of order"));
        // A symlink where a file should be.
        let manifest = spec.manifest();
        let sig = key.sign_line(manifest.as_bytes());
        let mut link = archive(&[
            ("manifest".to_string(), manifest.into_bytes()),
            ("manifest.sig".to_string(), sig.into_bytes()),
        ]);
        link.truncate(link.len() - 1024);
        link.extend_from_slice(&write::header("files/vmlinuz", 0, b'2'));
        link.resize(link.len() + 1024, 0);
        assert!(verify(&link[..], &trusted(&key), &expect())
            .unwrap_err()
            .contains("not a regular file"));
    }

    #[test]
    fn min_version_is_enforced() {
        let key = TestKey::new("kubesolo-1", 1);
        let mut spec = Spec::grub("3");
        spec.min_version = "2.1".to_string();
        let bundle = spec.signed(&key);
        let mut e = expect();
        e.running_version = Some("2.0".to_string());
        assert!(verify(&bundle[..], &trusted(&key), &e)
            .unwrap_err()
            .contains("at least 2.1"));
        e.running_version = None;
        assert!(verify(&bundle[..], &trusted(&key), &e)
            .unwrap_err()
            .contains("unknown"));
        e.running_version = Some("2.10".to_string());
        verify(&bundle[..], &trusted(&key), &e).unwrap();
    }
}

#[cfg(test)]
mod streaming_tests {
    use super::*;
    use crate::keys::testkey::TestKey;
    use crate::ustar::write;
    use sha2::{Digest, Sha256};

    /// A bundle whose one big file is generated while it is read (never held in memory).
    struct LazyBundle {
        head: Vec<u8>,
        zeros: u64,
        tail: Vec<u8>,
        pos: u64,
    }

    impl Read for LazyBundle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let head = self.head.len() as u64;
            let total = head + self.zeros + self.tail.len() as u64;
            if self.pos >= total {
                return Ok(0);
            }
            let n = if self.pos < head {
                let n = buf.len().min((head - self.pos) as usize);
                buf[..n].copy_from_slice(&self.head[self.pos as usize..self.pos as usize + n]);
                n
            } else if self.pos < head + self.zeros {
                let n = buf.len().min((head + self.zeros - self.pos) as usize);
                buf[..n].iter_mut().for_each(|b| *b = 0);
                n
            } else {
                let at = (self.pos - head - self.zeros) as usize;
                let n = buf.len().min(self.tail.len() - at);
                buf[..n].copy_from_slice(&self.tail[at..at + n]);
                n
            };
            self.pos += n as u64;
            Ok(n)
        }
    }

    fn peak_rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn verifying_a_large_bundle_takes_constant_memory() {
        const SIZE: u64 = 128 << 20;
        let mut hasher = Sha256::new();
        let block = vec![0u8; 1 << 20];
        for _ in 0..(SIZE >> 20) {
            hasher.update(&block);
        }
        let digest = slot::hex(&hasher.finalize());
        let key = TestKey::new("big", 4);
        let arch = std::env::consts::ARCH;
        let track = if arch == "aarch64" { "arm64" } else { arch };
        let manifest = format!("format=kubesolo-update-1\nversion=9\narch={}\ntrack={}\nboot=grub\nmin-version=0\nfile={} {} kubesolo-os.gz\n", arch, track, digest, SIZE);
        let mut head = testbundle::archive(&[
            ("manifest".to_string(), manifest.clone().into_bytes()),
            (
                "manifest.sig".to_string(),
                key.sign_line(manifest.as_bytes()).into_bytes(),
            ),
        ]);
        head.truncate(head.len() - 1024);
        head.extend_from_slice(&write::header("files/kubesolo-os.gz", SIZE, b'0'));
        let expect = Expect {
            arch: arch.to_string(),
            track: track.to_string(),
            boot: "grub".to_string(),
            running_version: None,
        };
        let trusted = keys::parse_public_keys(&key.public_line(), "test").0;
        let before = peak_rss_kib();
        let bundle = LazyBundle {
            head,
            zeros: SIZE,
            tail: vec![0; 1024],
            pos: 0,
        };
        let v = verify(bundle, &trusted, &expect).unwrap();
        assert_eq!(v.manifest.files[0].size, SIZE);
        let grown = peak_rss_kib().saturating_sub(before);
        assert!(
            grown < 32 * 1024,
            "peak RSS grew by {} KiB verifying a {} MiB bundle",
            grown,
            SIZE >> 20
        );
    }
}
