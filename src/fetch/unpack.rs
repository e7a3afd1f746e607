//! Unpacking downloads into trees: Debian packages (`ar` archives whose `data.tar.*`
//! member is the tree) and tarballs (plain, gzip or xz). Does file I/O.
//!
//! Only directories, regular files and symlinks are created; hard links become copies of
//! the file they name (the store holds no hard links); any other member is refused, by name.
//! Paths are confined to the destination: absolute paths and `..` are refused.

use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Why an archive could not be unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// Reading or writing failed.
    #[error("I/O error while unpacking: {0}")]
    Io(#[from] io::Error),
    /// The archive is not of the expected format.
    #[error("{0}")]
    Format(String),
}

fn format(msg: impl Into<String>) -> UnpackError {
    UnpackError::Format(msg.into())
}

/// A decompressing reader chosen by the stream's magic bytes (or by `hint`, a file name).
fn decompress<'a>(
    mut input: impl Read + 'a,
    hint: &str,
) -> Result<Box<dyn Read + 'a>, UnpackError> {
    let mut magic = [0u8; 6];
    let mut n = 0;
    while n < magic.len() {
        let got = input.read(&mut magic[n..])?;
        if got == 0 {
            break;
        }
        n += got;
    }
    let head = io::Cursor::new(magic[..n].to_vec());
    let stream = head.chain(input);
    if magic[..n].starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Ok(Box::new(xz2::read::XzDecoder::new_multi_decoder(stream)))
    } else if magic[..n].starts_with(&[0x1f, 0x8b]) {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(stream)))
    } else if magic[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(format(format!("`{hint}` is zstd-compressed, which ksbuild cannot unpack yet; use an xz or gzip archive")))
    } else {
        Ok(Box::new(stream))
    }
}

/// Confines an archive member path to the destination.
fn member_path(dest: &Path, name: &Path) -> Result<Option<PathBuf>, UnpackError> {
    let mut out = dest.to_path_buf();
    let mut any = false;
    for c in name.components() {
        match c {
            Component::Normal(part) => {
                out.push(part);
                any = true;
            }
            Component::CurDir => {}
            _ => {
                return Err(format(format!(
                    "archive member `{}` escapes the destination",
                    name.display()
                )))
            }
        }
    }
    Ok(any.then_some(out))
}

/// Unpacks a tar stream into `dest` (created).
pub fn unpack_tar(input: impl Read, dest: &Path, hint: &str) -> Result<(), UnpackError> {
    fs::create_dir_all(dest)?;
    let mut archive = tar::Archive::new(decompress(input, hint)?);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let name = entry.path()?.into_owned();
        let Some(path) = member_path(dest, &name)? else {
            continue;
        };
        let kind = entry.header().entry_type();
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        match kind {
            tar::EntryType::Directory => fs::create_dir_all(&path)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mode = entry.header().mode()?;
                let mut f = File::create(&path)?;
                io::copy(&mut entry, &mut f)?;
                f.set_permissions(fs::Permissions::from_mode(if mode & 0o100 != 0 { 0o755 } else { 0o644 }))?;
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name()?.ok_or_else(|| format(format!("symlink `{}` has no target", name.display())))?;
                let _ = fs::remove_file(&path);
                std::os::unix::fs::symlink(target.as_ref(), &path)?;
            }
            tar::EntryType::Link => {
                let target = entry.link_name()?.ok_or_else(|| format(format!("hard link `{}` has no target", name.display())))?;
                let source = member_path(dest, &target)?
                    .ok_or_else(|| format(format!("hard link `{}` points nowhere", name.display())))?;
                fs::copy(&source, &path).map_err(|e| {
                    format(format!("hard link `{}` → `{}`: {e}", name.display(), target.display()))
                })?;
            }
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader | tar::EntryType::GNULongName | tar::EntryType::GNULongLink => {}
            other => {
                return Err(format(format!(
                    "archive member `{}` is a {other:?}; only files, directories and symlinks can enter the store",
                    name.display()
                )))
            }
        }
    }
    Ok(())
}

/// Unpacks the `data.tar.*` member of the Debian package at `deb` into `dest`.
pub fn unpack_deb(deb: &Path, dest: &Path) -> Result<(), UnpackError> {
    let (data, name) = data_tar(deb)?;
    unpack_tar(data, dest, &name)
}

/// A regular file of a Debian package.
#[derive(Debug, Clone)]
pub struct DebFile {
    /// Its path, without the leading `./`.
    pub path: String,
    /// SHA-256 of its bytes.
    pub sha256: crate::compat::Hash,
    /// Its bytes, for the files `keep` asked for.
    pub contents: Option<Vec<u8>>,
}

/// The regular files of the Debian package at `deb` (its `data.tar`), in archive order,
/// with the contents of those whose path `keep` accepts.
pub fn deb_files(deb: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<DebFile>, UnpackError> {
    let (data, name) = data_tar(deb)?;
    let mut archive = tar::Archive::new(decompress(data, &name)?);
    let mut out = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !matches!(
            entry.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) {
            continue;
        }
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut h = crate::compat::hash::Hasher::new(crate::compat::HashAlgo::Sha256);
        let contents = if keep(&path) {
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            io::Write::write_all(&mut h, &bytes)?;
            Some(bytes)
        } else {
            io::copy(&mut entry, &mut h)?;
            None
        };
        out.push(DebFile {
            path,
            sha256: h.finish(),
            contents,
        });
    }
    Ok(out)
}

/// The `data.tar.*` member of a Debian package (an `ar` archive), and its name.
fn data_tar(deb: &Path) -> Result<(io::Take<BufReader<File>>, String), UnpackError> {
    let mut input = BufReader::new(File::open(deb)?);
    let mut magic = [0u8; 8];
    input
        .read_exact(&mut magic)
        .map_err(|_| format("not a Debian package (too short)"))?;
    if &magic != b"!<arch>\n" {
        return Err(format("not a Debian package (no `!<arch>` header)"));
    }
    loop {
        let mut header = [0u8; 60];
        match input.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(format("the Debian package has no `data.tar` member"))
            }
            Err(e) => return Err(e.into()),
        }
        if &header[58..60] != b"`\n" {
            return Err(format("corrupt ar member header in the Debian package"));
        }
        let name = String::from_utf8_lossy(&header[0..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: u64 = String::from_utf8_lossy(&header[48..58])
            .trim()
            .parse()
            .map_err(|_| format("corrupt ar member size in the Debian package"))?;
        if name.starts_with("data.tar") {
            return Ok((input.take(size), name));
        }
        io::copy(&mut (&mut input).take(size + size % 2), &mut io::sink())?;
    }
}

/// Nix's `fetchTarball` convention: if `dir` holds a single directory and nothing else,
/// that directory's contents become the tree.
pub fn strip_single_top_directory(dir: &Path) -> io::Result<()> {
    let entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    if let [only] = entries.as_slice() {
        if only.file_type()?.is_dir() {
            let inner = dir.with_extension("strip");
            fs::rename(only.path(), &inner)?;
            fs::remove_dir(dir)?;
            fs::rename(&inner, dir)?;
        }
    }
    Ok(())
}
