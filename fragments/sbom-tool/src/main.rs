//! `ksbuild-sbom`: an image's SPDX 2.3 SBOM, written inside the image's build from its
//! inputs (see README.md). What ships, and how it is nested:
//!
//!   image CONTAINS each kernel (version, `.config` hash), the initramfs and the firmware
//!   packages; initramfs CONTAINS rootfs; rootfs CONTAINS each Debian package that has a
//!   file in it (matched by SHA-256, as `ksbuild sbom` matches them).
//!
//! A package is a directory holding `deb` (the `.deb`, or a link to it), `control` (its
//! `Package:`, `Version:` and `Architecture:` lines, as `dpkg-deb -f` prints them) and,
//! for those matched against the rootfs, `data.tar` (its uncompressed data, as
//! `dpkg-deb --fsys-tarfile` writes it). Firmware ships whole: its data is not read.

// ksbuild's own bill and SPDX writer (`attest::bill` there).
#[allow(dead_code)]
mod bill;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bill::{Bill, Kind, Relation, Relationship};
use sha2::{Digest, Sha256};

const USAGE: &str = "usage: ksbuild-sbom --name NAME --store-path OUT [--kernel DIR]... \
[--initramfs PATH] [--rootfs DIR [--debs DIR]] [--firmware DIR] -o FILE";

/// What the command line says.
#[derive(Default)]
struct Args {
    /// The image's derivation name.
    name: String,
    /// The image's output path.
    store_path: String,
    kernels: Vec<PathBuf>,
    initramfs: Option<PathBuf>,
    rootfs: Option<PathBuf>,
    /// Unpacked packages whose files may be in the rootfs.
    debs: Option<PathBuf>,
    /// Unpacked packages that ship as firmware.
    firmware: Option<PathBuf>,
    output: PathBuf,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args::default();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| format!("`{flag}` needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--name" => args.name = value()?,
            "--store-path" => args.store_path = value()?,
            "--kernel" => args.kernels.push(value()?.into()),
            "--initramfs" => args.initramfs = Some(value()?.into()),
            "--rootfs" => args.rootfs = Some(value()?.into()),
            "--debs" => args.debs = Some(value()?.into()),
            "--firmware" => args.firmware = Some(value()?.into()),
            "-o" => args.output = value()?.into(),
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    if args.name.is_empty() || args.store_path.is_empty() || args.output.as_os_str().is_empty() {
        return Err(format!(
            "`--name`, `--store-path` and `-o` are needed\n{USAGE}"
        ));
    }
    if args.debs.is_some() && args.rootfs.is_none() {
        return Err(format!(
            "`--debs` are matched against a `--rootfs`\n{USAGE}"
        ));
    }
    Ok(args)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256_of(reader: &mut dyn Read) -> io::Result<String> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(&h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

fn sha256_file(path: &Path) -> Result<String, String> {
    File::open(path)
        .and_then(|mut f| sha256_of(&mut f))
        .map_err(|e| format!("cannot read `{}`: {e}", path.display()))
}

/// The name of a store path (`/nix/store/<hash>-NAME` → `NAME`).
fn store_name(path: &Path) -> String {
    let base = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    match base.split_once('-') {
        Some((hash, name)) if hash.len() == 32 => name.to_string(),
        _ => base,
    }
}

/// The hash part of a store path.
fn hash_part(path: &str) -> &str {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.split('-').next().unwrap_or(base)
}

/// SHA-256 of every non-empty regular file under `dir` (symbolic links are not followed).
fn content_hashes(dir: &Path, out: &mut BTreeSet<String>) -> Result<(), String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot list `{}`: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list `{}`: {e}", dir.display()))?;
        let path = entry.path();
        let meta = fs::symlink_metadata(&path)
            .map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
        if meta.is_dir() {
            content_hashes(&path, out)?;
        } else if meta.is_file() && meta.len() > 0 {
            out.insert(sha256_file(&path)?);
        }
    }
    Ok(())
}

/// An unpacked Debian package.
struct Package {
    name: String,
    version: String,
    architecture: String,
    /// SHA-256 of the `.deb`.
    sha256: String,
    /// Its regular files: path (without `./`) and SHA-256.
    files: Vec<(String, String)>,
    /// Its `usr/share/doc/NAME/copyright`, if any.
    copyright: Option<String>,
}

/// The package unpacked in `dir`; its files and licence only `with_files`.
fn read_package(dir: &Path, with_files: bool) -> Result<Package, String> {
    let control_path = dir.join("control");
    let control = fs::read_to_string(&control_path)
        .map_err(|e| format!("cannot read `{}`: {e}", control_path.display()))?;
    let field = |key: &str| {
        control
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix(':')))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| format!("`{}` has no `{key}:` line", control_path.display()))
    };
    let name = field("Package")?;
    let mut package = Package {
        version: field("Version")?,
        architecture: field("Architecture")?,
        sha256: sha256_file(&dir.join("deb"))?,
        files: Vec::new(),
        copyright: None,
        name,
    };
    if !with_files {
        return Ok(package);
    }
    let copyright = format!("usr/share/doc/{}/copyright", package.name);
    let tar = dir.join("data.tar");
    let mut input =
        File::open(&tar).map_err(|e| format!("cannot read `{}`: {e}", tar.display()))?;
    regular_files(&mut input, &mut |path, contents| {
        if path == copyright {
            package.copyright = Some(String::from_utf8_lossy(contents).to_string());
        }
        let mut h = Sha256::new();
        h.update(contents);
        package.files.push((path.to_string(), hex(&h.finalize())));
    })
    .map_err(|e| format!("`{}`: {e}", tar.display()))?;
    Ok(package)
}

/// Calls `each` with the path (without `./`) and contents of every regular file of the tar
/// archive read from `input` (ustar, with GNU long names and pax paths).
fn regular_files(input: &mut dyn Read, each: &mut dyn FnMut(&str, &[u8])) -> Result<(), String> {
    let mut long_name: Option<String> = None;
    loop {
        let mut header = [0u8; 512];
        if read_full(input, &mut header)? < 512 || header.iter().all(|b| *b == 0) {
            return Ok(());
        }
        let size = tar_number(&header[124..136])?;
        let kind = header[156];
        let mut data = vec![0u8; size as usize];
        if read_full(input, &mut data)? < data.len() {
            return Err("the archive is cut short".into());
        }
        let padding = (512 - size % 512) % 512;
        let mut pad = vec![0u8; padding as usize];
        read_full(input, &mut pad)?;
        let text = |field: &[u8]| {
            let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
            String::from_utf8_lossy(&field[..end]).to_string()
        };
        match kind {
            b'L' => long_name = Some(text(&data)),
            b'x' => {
                // pax records: "LEN key=value\n"
                let records = String::from_utf8_lossy(&data).to_string();
                for record in records.lines() {
                    if let Some((_, kv)) = record.split_once(' ') {
                        if let Some(path) = kv.strip_prefix("path=") {
                            long_name = Some(path.to_string());
                        }
                    }
                }
            }
            _ => {
                let name = match long_name.take() {
                    Some(name) => name,
                    None => {
                        let prefix = text(&header[345..500]);
                        let name = text(&header[0..100]);
                        if &header[257..262] == b"ustar" && !prefix.is_empty() {
                            format!("{prefix}/{name}")
                        } else {
                            name
                        }
                    }
                };
                if matches!(kind, b'0' | 0 | b'7') {
                    each(name.trim_start_matches("./"), &data);
                }
            }
        }
    }
}

fn read_full(input: &mut dyn Read, buf: &mut [u8]) -> Result<usize, String> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(filled)
}

/// A tar header's number: octal text, or GNU's base-256 (high bit set).
fn tar_number(field: &[u8]) -> Result<u64, String> {
    if field[0] & 0x80 != 0 {
        let mut n = u64::from(field[0] & 0x7f);
        for b in &field[1..] {
            n = n << 8 | u64::from(*b);
        }
        return Ok(n);
    }
    let text: String = field
        .iter()
        .take_while(|b| **b != 0)
        .map(|b| *b as char)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(text, 8).map_err(|_| format!("a tar header has the size `{text}`"))
}

/// The unpacked packages under `dir`, in the order of their directories' names (with their
/// files and licences, `with_files`).
fn packages(dir: &Path, with_files: bool) -> Result<Vec<Package>, String> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|e| format!("cannot list `{}`: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    dirs.sort();
    dirs.iter().map(|d| read_package(d, with_files)).collect()
}

fn gather(args: &Args) -> Result<Bill, String> {
    let mut components = Vec::new();
    let mut relationships: Vec<Relationship> = Vec::new();
    let root = bill::build_component(&args.name, &args.store_path);
    let root_id = root.id.clone();
    components.push(root);
    for kernel in &args.kernels {
        let name = store_name(kernel);
        let modules = kernel.join("lib/modules");
        let mut versions: Vec<String> = fs::read_dir(&modules)
            .map_err(|e| format!("`{}` is no kernel: {e}", kernel.display()))?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
            .collect();
        versions.sort();
        let mut c = bill::build_component(&name, &kernel.to_string_lossy());
        c.kind = Kind::Kernel;
        c.version = versions.first().cloned();
        c.notes.push((
            "configSha256".to_string(),
            sha256_file(&kernel.join("config"))?,
        ));
        relationships.push((root_id.clone(), Relation::Contains, c.id.clone()));
        components.push(c);
    }
    let mut rootfs_parent = root_id.clone();
    if let Some(initramfs) = &args.initramfs {
        let c = bill::build_component(&store_name(initramfs), &initramfs.to_string_lossy());
        relationships.push((root_id.clone(), Relation::Contains, c.id.clone()));
        rootfs_parent = c.id.clone();
        components.push(c);
    }
    if let Some(rootfs) = &args.rootfs {
        let c = bill::build_component(&store_name(rootfs), &rootfs.to_string_lossy());
        let rootfs_id = c.id.clone();
        relationships.push((rootfs_parent, Relation::Contains, c.id.clone()));
        components.push(c);
        if let Some(debs) = &args.debs {
            let mut shipped = BTreeSet::new();
            content_hashes(rootfs, &mut shipped)?;
            for p in packages(debs, true)? {
                let mut took: Vec<&str> = p
                    .files
                    .iter()
                    .filter(|(_, sha)| shipped.contains(sha))
                    .map(|(path, _)| path.as_str())
                    .collect();
                if took.is_empty() {
                    continue;
                }
                took.sort_unstable();
                let mut c = bill::debian_component(
                    &p.name,
                    &p.version,
                    &p.architecture,
                    &p.sha256,
                    Kind::Debian,
                );
                c.license = p.copyright.as_deref().and_then(bill::debian_license);
                c.notes.push(("filesShipped".to_string(), took.join(" ")));
                relationships.push((rootfs_id.clone(), Relation::Contains, c.id.clone()));
                components.push(c);
            }
        }
    }
    if let Some(firmware) = &args.firmware {
        for p in packages(firmware, false)? {
            let c = bill::debian_component(
                &p.name,
                &p.version,
                &p.architecture,
                &p.sha256,
                Kind::Firmware,
            );
            relationships.push((root_id.clone(), Relation::Contains, c.id.clone()));
            components.push(c);
        }
    }
    let created = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => s
            .parse()
            .map_err(|_| format!("SOURCE_DATE_EPOCH `{s}` is not a number of seconds"))?,
        Err(_) => 0,
    };
    Ok(Bill {
        target: args.name.clone(),
        root: root_id,
        drv_hash: hash_part(&args.store_path).to_string(),
        created,
        components,
        files: Vec::new(),
        relationships,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

fn main() -> ExitCode {
    let result = parse_args().and_then(|args| {
        let bill = gather(&args)?;
        fs::write(&args.output, bill::spdx_json(&bill))
            .map_err(|e| format!("cannot write `{}`: {e}", args.output.display()))?;
        let debs = bill
            .components
            .iter()
            .filter(|c| matches!(c.kind, Kind::Debian | Kind::Firmware))
            .count();
        eprintln!(
            "ksbuild-sbom: {}: {} components ({debs} Debian packages)",
            args.output.display(),
            bill.components.len()
        );
        Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ksbuild-sbom: {e}");
            ExitCode::FAILURE
        }
    }
}
