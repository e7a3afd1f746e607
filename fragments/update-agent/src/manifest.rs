//! The bundle manifest (`format=kubesolo-update-1`): parse and check. Pure, no I/O.

/// The only manifest format this agent reads.
pub const FORMAT: &str = "kubesolo-update-1";

/// One file of the slot, as the manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManifestFile {
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Path inside the slot (a plain name for GRUB slots; relative path for the Pi).
    pub name: String,
}

/// A parsed manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// The OS version the bundle installs.
    pub version: String,
    /// `uname -m` of the system it is for.
    pub arch: String,
    /// The image track: `x86_64`, `arm64` or `rpi`.
    pub track: String,
    /// The boot environment: `grub` or `rpi`.
    pub boot: String,
    /// The oldest running version it may replace (`0`: any).
    pub min_version: String,
    /// The slot's files, in archive order.
    pub files: Vec<ManifestFile>,
}

/// The header keys, in the order the manifest must have them (after `format`).
const KEYS: [&str; 5] = ["version", "arch", "track", "boot", "min-version"];

impl Manifest {
    /// Parses the exact bytes of `manifest`; every error names the line and what is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let text =
            std::str::from_utf8(bytes).map_err(|_| "the manifest is not UTF-8 text".to_string())?;
        if !text.ends_with('\n') {
            return Err("the manifest does not end with a newline (truncated?)".to_string());
        }
        let mut lines = text[..text.len() - 1].split('\n').enumerate();
        let mut header: Vec<String> = Vec::new();
        match lines.next() {
            Some((_, line)) if line == format!("format={}", FORMAT) => {}
            Some((_, line)) if line.starts_with("format=") => {
                return Err(format!(
                    "the manifest is `{}`, this agent reads `{}` only: update the agent first",
                    line, FORMAT
                ))
            }
            _ => {
                return Err(format!(
                    "the manifest's first line is not `format={}`",
                    FORMAT
                ))
            }
        }
        for key in KEYS {
            let (n, line) = lines
                .next()
                .ok_or_else(|| format!("the manifest has no `{}=` line", key))?;
            let value = match line.split_once('=') {
                Some((k, v)) if k == key => v,
                _ => {
                    return Err(format!(
                        "manifest line {}: expected `{}=…`, found `{}`",
                        n + 1,
                        key,
                        line
                    ))
                }
            };
            if value.is_empty() || value.trim() != value {
                return Err(format!(
                    "manifest line {}: `{}` has an empty or padded value",
                    n + 1,
                    key
                ));
            }
            header.push(value.to_string());
        }
        let mut files: Vec<ManifestFile> = Vec::new();
        for (n, line) in lines {
            let rest = line.strip_prefix("file=").ok_or_else(|| {
                format!(
                    "manifest line {}: expected `file=SHA256 SIZE NAME`, found `{}`",
                    n + 1,
                    line
                )
            })?;
            let mut parts = rest.splitn(3, ' ');
            let (sha256, size, name) = match (parts.next(), parts.next(), parts.next()) {
                (Some(h), Some(s), Some(name)) => (h, s, name),
                _ => {
                    return Err(format!(
                        "manifest line {}: expected `file=SHA256 SIZE NAME`",
                        n + 1
                    ))
                }
            };
            if sha256.len() != 64
                || !sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return Err(format!(
                    "manifest line {}: `{}` is not a lower-case hex SHA-256",
                    n + 1,
                    sha256
                ));
            }
            if size.is_empty() || !size.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "manifest line {}: size `{}` is not a number",
                    n + 1,
                    size
                ));
            }
            let size: u64 = size
                .parse()
                .map_err(|_| format!("manifest line {}: size `{}` is too large", n + 1, size))?;
            check_name(name)
                .map_err(|why| format!("manifest line {}: file name `{}` {}", n + 1, name, why))?;
            if files.iter().any(|f| f.name == name) {
                return Err(format!(
                    "manifest line {}: file `{}` is listed twice",
                    n + 1,
                    name
                ));
            }
            files.push(ManifestFile {
                sha256: sha256.to_string(),
                size,
                name: name.to_string(),
            });
        }
        if files.is_empty() {
            return Err("the manifest lists no files".to_string());
        }
        let mut header = header.into_iter();
        let mut next = || header.next().unwrap_or_default();
        let manifest = Manifest {
            version: next(),
            arch: next(),
            track: next(),
            boot: next(),
            min_version: next(),
            files,
        };
        if manifest.boot != "grub" && manifest.boot != "rpi" {
            return Err(format!(
                "the manifest's boot is `{}`, not `grub` or `rpi`",
                manifest.boot
            ));
        }
        if manifest.boot == "grub" {
            if let Some(f) = manifest.files.iter().find(|f| f.name.contains('/')) {
                return Err(format!(
                    "file `{}`: a GRUB slot holds plain file names only",
                    f.name
                ));
            }
        }
        // A file cannot also be the directory of another (`a` and `a/b`).
        for f in &manifest.files {
            let prefix = format!("{}/", f.name);
            if let Some(g) = manifest.files.iter().find(|g| g.name.starts_with(&prefix)) {
                return Err(format!(
                    "file `{}` is also the directory of `{}`",
                    f.name, g.name
                ));
            }
        }
        Ok(manifest)
    }
}

/// Whether `name` is a safe relative path inside a slot: ASCII printable, no leading `/`, no
/// empty, `.` or `..` component, no backslash, and not one of the agent's temp names.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if !name.bytes().all(|b| (0x21..0x7f).contains(&b) || b == b' ') || name.contains('\\') {
        return Err("has characters other than printable ASCII");
    }
    if name.starts_with('/') {
        return Err("is absolute");
    }
    for part in name.split('/') {
        if part.is_empty() || part == "." || part == ".." {
            return Err("has an empty, `.` or `..` component");
        }
        if part.starts_with(crate::slot::TEMP_PREFIX) {
            return Err("uses the agent's temporary-file prefix");
        }
    }
    if name.len() > 255 {
        return Err("is longer than 255 bytes");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "format=kubesolo-update-1\nversion=2026.12.1\narch=x86_64\ntrack=x86_64\nboot=grub\nmin-version=0\nfile=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 12 vmlinuz\nfile=bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb 0 kubesolo-os.gz\n";

    #[test]
    fn parses_a_good_manifest() {
        let m = Manifest::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(m.version, "2026.12.1");
        assert_eq!(m.arch, "x86_64");
        assert_eq!(m.track, "x86_64");
        assert_eq!(m.boot, "grub");
        assert_eq!(m.min_version, "0");
        assert_eq!(m.files.len(), 2);
        assert_eq!(m.files[0].size, 12);
        assert_eq!(m.files[1].name, "kubesolo-os.gz");
    }

    #[test]
    fn refuses_bad_manifests() {
        let h = "a".repeat(64);
        let cases: Vec<(String, &str)> = vec![
            (GOOD.trim_end().to_string(), "newline"),
            (
                GOOD.replace("kubesolo-update-1", "kubesolo-update-2"),
                "update the agent",
            ),
            (
                GOOD.replace("arch=x86_64\ntrack=x86_64\n", "track=x86_64\narch=x86_64\n"),
                "expected `arch=",
            ),
            (
                GOOD.replace("boot=grub", "boot=uefi"),
                "not `grub` or `rpi`",
            ),
            (GOOD.replace(" vmlinuz", " ../vmlinuz"), "component"),
            (GOOD.replace(" vmlinuz", " /vmlinuz"), "absolute"),
            (
                GOOD.replace(" vmlinuz", " boot/vmlinuz"),
                "plain file names",
            ),
            (GOOD.replace(" kubesolo-os.gz", " vmlinuz"), "twice"),
            (GOOD.replace(" 12 ", " 1x "), "not a number"),
            (GOOD.replace(&h, &h.to_uppercase()), "hex"),
            (
                GOOD.replace("version=2026.12.1\n", ""),
                "expected `version=",
            ),
            (format!("{}extra=1\n", GOOD), "expected `file="),
            (GOOD.split("file=").next().unwrap().to_string(), "no files"),
        ];
        for (text, want) in cases {
            let err = Manifest::parse(text.as_bytes()).unwrap_err();
            assert!(err.contains(want), "{:?}: {}", want, err);
        }
    }

    #[test]
    fn pi_paths_may_have_directories_but_not_escape() {
        let pi = GOOD
            .replace("boot=grub", "boot=rpi")
            .replace(" vmlinuz", " overlays/foo.dtbo");
        assert!(Manifest::parse(pi.as_bytes()).is_ok());
        for bad in [
            "overlays//foo",
            "overlays/./foo",
            "a/../../etc",
            "over\\lays",
            "x\u{7f}",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        let clash = pi.replace(" kubesolo-os.gz", " overlays");
        assert!(Manifest::parse(clash.as_bytes())
            .unwrap_err()
            .contains("directory"));
    }
}
