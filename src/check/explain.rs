//! Why two builds of an output differ: a walk of both trees naming the first differing
//! files (path inside the output, sizes, the first differing byte) and a guess at the
//! cause from the bytes around it. Reads the two trees; the classification is pure.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::Serialize;

/// At most this many differences are reported per output.
pub const MAX_DIFFERENCES: usize = 20;

/// What kind of thing most likely made two files differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// A date or time (digits that differ inside a date-like or epoch-like run).
    Timestamp,
    /// The build directory or a temporary path (`/build`, `/tmp/…`).
    BuildPath,
    /// The host name, domain name or a user or group id.
    HostOrUser,
    /// The same bytes (or lines) in another order: a directory listing, a hash table.
    Ordering,
    /// Random-looking bytes: a UUID, a random seed, a hash of something that varied.
    Random,
    /// An ELF file's GNU build-id (`.note.gnu.build-id`): a hash of the linked file, which
    /// differs whenever anything else in it does.
    BuildId,
    /// None of these.
    Other,
}

/// One difference between the two trees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Difference {
    /// The path inside the output (`/` for the output itself).
    pub path: String,
    /// What differs: `content`, `type`, `mode`, `symlink target`, `only in the first`,
    /// `only in the second`.
    pub what: String,
    /// The sizes in the first and the second tree (regular files).
    pub sizes: Option<(u64, u64)>,
    /// The offset of the first differing byte (regular files).
    pub offset: Option<u64>,
    /// The likely cause.
    pub cause: Cause,
    /// The bytes around the first difference in each, as text (lossy, control characters
    /// escaped).
    pub excerpts: Option<(String, String)>,
    /// What `diffoscope` says of the two files (`--diffoscope`; truncated), absent
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diffoscope: Option<String>,
}

/// How far a diff goes beyond what ksbuild reads itself.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Hand each differing file pair to `diffoscope` (`--diffoscope`).
    pub diffoscope: Option<super::diffoscope::Diffoscope>,
}

/// The differences between the trees `a` and `b` (at most [`MAX_DIFFERENCES`], in path
/// order).
pub fn diff_trees(a: &Path, b: &Path) -> std::io::Result<Vec<Difference>> {
    diff_trees_with(a, b, &Options::default())
}

/// [`diff_trees`], with `options`.
pub fn diff_trees_with(a: &Path, b: &Path, options: &Options) -> std::io::Result<Vec<Difference>> {
    let mut out = Vec::new();
    walk(a, b, "", &mut out, options)?;
    Ok(out)
}

/// [`diff_trees`] for two paths given by a user: two files are named by the first's name
/// (two disk images read `sdcard.img › p1 …`), two trees from their roots.
pub fn diff_paths(a: &Path, b: &Path, options: &Options) -> std::io::Result<Vec<Difference>> {
    let mut out = Vec::new();
    let rel = match (std::fs::symlink_metadata(a), a.file_name()) {
        (Ok(m), Some(name)) if m.is_file() => format!("/{}", name.to_string_lossy()),
        _ => String::new(),
    };
    walk(a, b, &rel, &mut out, options)?;
    Ok(out)
}

fn entries(dir: &Path) -> std::io::Result<BTreeMap<std::ffi::OsString, std::path::PathBuf>> {
    std::fs::read_dir(dir)?
        .map(|e| e.map(|e| (e.file_name(), e.path())))
        .collect()
}

fn kind(m: &std::fs::Metadata) -> &'static str {
    if m.is_dir() {
        "directory"
    } else if m.file_type().is_symlink() {
        "symlink"
    } else {
        "file"
    }
}

fn walk(
    a: &Path,
    b: &Path,
    rel: &str,
    out: &mut Vec<Difference>,
    options: &Options,
) -> std::io::Result<()> {
    if out.len() >= MAX_DIFFERENCES {
        return Ok(());
    }
    let shown = if rel.is_empty() { "/" } else { rel };
    let (ma, mb) = (std::fs::symlink_metadata(a)?, std::fs::symlink_metadata(b)?);
    let simple = |what: String| Difference {
        path: shown.to_string(),
        what,
        sizes: None,
        offset: None,
        cause: Cause::Other,
        excerpts: None,
        diffoscope: None,
    };
    if kind(&ma) != kind(&mb) {
        out.push(simple(format!("type: {} vs {}", kind(&ma), kind(&mb))));
        return Ok(());
    }
    if ma.file_type().is_symlink() {
        let (ta, tb) = (std::fs::read_link(a)?, std::fs::read_link(b)?);
        if ta != tb {
            let (sa, sb) = (ta.to_string_lossy(), tb.to_string_lossy());
            let mut d = simple("symlink target".into());
            d.cause = classify(sa.as_bytes(), sb.as_bytes(), 0);
            d.excerpts = Some((sa.into_owned(), sb.into_owned()));
            out.push(d);
        }
        return Ok(());
    }
    let exec = |m: &std::fs::Metadata| m.permissions().mode() & 0o100 != 0;
    if ma.is_file() {
        if exec(&ma) != exec(&mb) {
            out.push(simple("mode (executable bit)".into()));
        }
        // A disk image is opened (partition › filesystem › file › line), reading only the
        // extents that hold data; other files are compared byte by byte.
        if ma.len() >= 1 << 16 && mb.len() >= 1 << 16 {
            let label = shown.trim_start_matches('/');
            if let Some(inner) = super::image::diff_images(a, b, label, options)? {
                let room = MAX_DIFFERENCES.saturating_sub(out.len());
                out.extend(inner.into_iter().take(room));
                return Ok(());
            }
        }
        let first = out.len();
        file_pair(a, b, shown, &ma, &mb, out, options)?;
        // diffoscope sees the pair as a whole (members of images were handed to it one
        // by one).
        if let Some(d) = &options.diffoscope {
            if out.len() > first && out[first..].iter().all(|x| x.diffoscope.is_none()) {
                out[first].diffoscope = Some(d.compare_files(a, b));
            }
        }
        return Ok(());
    }
    let (ea, eb) = (entries(a)?, entries(b)?);
    let names: std::collections::BTreeSet<_> = ea.keys().chain(eb.keys()).collect();
    for name in names {
        let child = format!("{rel}/{}", name.to_string_lossy());
        match (ea.get(name), eb.get(name)) {
            (Some(pa), Some(pb)) => walk(pa, pb, &child, out, options)?,
            (Some(_), None) => out.push(Difference {
                path: child,
                ..simple("only in the first".into())
            }),
            (None, Some(_)) => out.push(Difference {
                path: child,
                ..simple("only in the second".into())
            }),
            (None, None) => {}
        }
        if out.len() >= MAX_DIFFERENCES {
            break;
        }
    }
    Ok(())
}

/// The differences between two regular files: the first differing byte, or inside a
/// compressed file or archive (an initramfs) member by member, or in an ELF file section
/// by section.
fn file_pair(
    a: &Path,
    b: &Path,
    shown: &str,
    ma: &std::fs::Metadata,
    mb: &std::fs::Metadata,
    out: &mut Vec<Difference>,
    options: &Options,
) -> std::io::Result<()> {
    let Some(d) = diff_files(a, b, shown, ma.len(), mb.len())? else {
        return Ok(());
    };
    if ma.len() <= 1 << 28 && mb.len() <= 1 << 28 {
        let (ba, bb) = (std::fs::read(a)?, std::fs::read(b)?);
        let inner = super::image::diff_archives(shown, &ba, &bb, options)
            .or_else(|| super::elf::diff_elf(shown, &ba, &bb));
        if let Some(inner) = inner {
            let room = MAX_DIFFERENCES.saturating_sub(out.len());
            out.extend(inner.into_iter().take(room));
            return Ok(());
        }
    }
    out.push(d);
    Ok(())
}

/// The first difference between two regular files, reading both in step.
fn diff_files(
    a: &Path,
    b: &Path,
    shown: &str,
    size_a: u64,
    size_b: u64,
) -> std::io::Result<Option<Difference>> {
    const CHUNK: usize = 1 << 16;
    let (mut fa, mut fb) = (std::fs::File::open(a)?, std::fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut offset: u64 = 0;
    loop {
        let na = read_full(&mut fa, &mut ba)?;
        let nb = read_full(&mut fb, &mut bb)?;
        let common = na.min(nb);
        if let Some(i) = (0..common).find(|&i| ba[i] != bb[i]) {
            let at = offset + i as u64;
            return Ok(Some(located(a, b, shown, size_a, size_b, at)?));
        }
        if na != nb {
            let at = offset + common as u64;
            return Ok(Some(located(a, b, shown, size_a, size_b, at)?));
        }
        if na == 0 {
            return Ok(None);
        }
        offset += na as u64;
    }
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// A content difference at byte `at`, with the bytes around it and a cause. Files that
/// hold the same lines (or bytes) in another order are told apart from the rest by reading
/// them whole when they are small (≤ 16 MiB).
fn located(
    a: &Path,
    b: &Path,
    shown: &str,
    size_a: u64,
    size_b: u64,
    at: u64,
) -> std::io::Result<Difference> {
    let window = |path: &Path| -> std::io::Result<Vec<u8>> {
        use std::io::Seek;
        let mut f = std::fs::File::open(path)?;
        let start = at.saturating_sub(48);
        f.seek(std::io::SeekFrom::Start(start))?;
        let mut buf = vec![0u8; 112];
        let n = read_full(&mut f, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    };
    let (wa, wb) = (window(a)?, window(b)?);
    let rel = (at - at.saturating_sub(48)) as usize;
    let mut cause = classify(&wa, &wb, rel);
    if size_a == size_b && size_a <= 16 << 20 {
        let (ca, cb) = (std::fs::read(a)?, std::fs::read(b)?);
        if same_in_another_order(&ca, &cb) {
            cause = Cause::Ordering;
        }
    }
    Ok(Difference {
        path: shown.to_string(),
        what: "content".into(),
        sizes: Some((size_a, size_b)),
        offset: Some(at),
        cause,
        excerpts: Some((printable(&wa), printable(&wb))),
        diffoscope: None,
    })
}

/// Whether `a` and `b` hold the same lines, or failing lines the same bytes, in another
/// order.
pub fn same_in_another_order(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() || a == b {
        return false;
    }
    fn lines(x: &[u8]) -> Vec<&[u8]> {
        let mut l: Vec<&[u8]> = x.split(|&c| c == b'\n').collect();
        l.sort_unstable();
        l
    }
    if a.contains(&b'\n') && lines(a) == lines(b) {
        return true;
    }
    // Binary tables (a directory's entries in a filesystem image) are recognised by
    // their bytes only when they are small enough to sort.
    let mut sa = a.to_vec();
    let mut sb = b.to_vec();
    sa.sort_unstable();
    sb.sort_unstable();
    sa == sb && a.len() <= 1 << 20
}

/// The likely cause of a difference at `at` of two windows of bytes (pure).
pub fn classify(a: &[u8], b: &[u8], at: usize) -> Cause {
    let text = |x: &[u8]| String::from_utf8_lossy(x).into_owned();
    let (ta, tb) = (text(a), text(b));
    let either = |needle: &str| ta.contains(needle) || tb.contains(needle);
    // The run of bytes that differs, extended to the token around it.
    let token = |x: &[u8]| -> String {
        let is_tok = |c: u8| c.is_ascii_alphanumeric() || b"-:._+/".contains(&c);
        let at = at.min(x.len());
        let mut s = at;
        while s > 0 && is_tok(x[s - 1]) {
            s -= 1;
        }
        let mut e = at;
        while e < x.len() && is_tok(x[e]) {
            e += 1;
        }
        String::from_utf8_lossy(&x[s..e]).into_owned()
    };
    let (ka, kb) = (token(a), token(b));
    let looks_like_time = |t: &str| {
        let digits = t.chars().filter(char::is_ascii_digit).count();
        let epoch = (9..=11).contains(&digits) && digits == t.len();
        let clock = t.split(':').filter(|p| !p.is_empty()).count() >= 2
            && t.chars()
                .all(|c| c.is_ascii_digit() || c == ':' || c == '.');
        let date = t.matches('-').count() >= 2
            && (t.starts_with("19") || t.starts_with("20"))
            && digits >= 6;
        epoch || clock || date
    };
    if either("/build") || either("/tmp/") || either("/homeless-shelter") {
        return Cause::BuildPath;
    }
    if (looks_like_time(&ka) || looks_like_time(&kb))
        || ["Mon ", "Tue ", "Wed ", "Thu ", "Fri ", "Sat ", "Sun "]
            .iter()
            .any(|d| either(d))
            && ka.chars().any(|c| c.is_ascii_digit())
    {
        return Cause::Timestamp;
    }
    if either("localhost") || either("uid=") || either("gid=") || either("nixbld") {
        return Cause::HostOrUser;
    }
    let random = |t: &str| t.len() >= 8 && t.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    if random(&ka) && random(&kb) {
        return Cause::Random;
    }
    Cause::Other
}

/// Bytes as one line of text: printable ASCII kept, the rest escaped.
pub fn printable(bytes: &[u8]) -> String {
    let mut s = String::new();
    for &c in bytes {
        match c {
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.what)?;
        if let (Some((sa, sb)), Some(at)) = (self.sizes, self.offset) {
            write!(f, " from byte {at} (sizes {sa} and {sb})")?;
        }
        write!(f, ", likely {:?}", self.cause)?;
        if let Some((a, b)) = &self.excerpts {
            write!(f, "\n      first:  {a}\n      second: {b}")?;
        }
        if let Some(text) = &self.diffoscope {
            write!(f, "\n      diffoscope:")?;
            for line in text.lines() {
                write!(f, "\n        {line}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_recognised_from_the_bytes_around_a_difference() {
        #[rustfmt::skip]
        let table: &[(&str, &str, usize, Cause)] = &[
            ("built at 2026-12-02 18:01:07 by", "built at 2026-12-02 18:03:52 by", 17, Cause::Timestamp),
            ("epoch=1764698467\n", "epoch=1764698591\n", 13, Cause::Timestamp),
            ("Wed Dec  2 18:01:07 UTC", "Wed Dec  2 18:03:52 UTC", 14, Cause::Timestamp),
            ("cwd=/build/src-x1", "cwd=/build/src-y2", 15, Cause::BuildPath),
            ("host=localhost cpus=2", "host=localhost cpus=1", 20, Cause::HostOrUser),
            ("id=3f2a9c4e-11aa-4b1c", "id=9b1d0e77-20bb-4c2d", 3, Cause::Random),
            ("value=1", "value=2", 6, Cause::Other),
        ];
        for (a, b, at, cause) in table {
            assert_eq!(
                classify(a.as_bytes(), b.as_bytes(), *at),
                *cause,
                "{a} / {b}"
            );
        }
    }

    /// An ELF file in an output is explained by its differing section, not an offset.
    #[test]
    fn a_differing_elf_file_is_named_by_section() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        for (root, v) in [(&a, b"v1\0"), (&b, b"v2\0")] {
            std::fs::create_dir_all(root.join("bin")).unwrap();
            let elf = crate::check::elf::test_elf(
                true,
                false,
                &[(".text", 1, &[0x90; 16]), (".rodata", 1, v)],
            );
            std::fs::write(root.join("bin/foo"), elf).unwrap();
        }
        let d = diff_trees(&a, &b).unwrap();
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].path, "/bin/foo › ELF section .rodata");
        assert_eq!(d[0].offset, Some(1));
    }

    #[test]
    fn reordered_lines_are_ordering() {
        assert!(same_in_another_order(b"a\nb\nc\n", b"c\na\nb\n"));
        assert!(!same_in_another_order(b"a\nb\n", b"a\nb\n"));
        assert!(!same_in_another_order(b"a\nb\n", b"a\nc\n"));
    }

    #[test]
    fn the_first_differing_files_are_named_with_offsets() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        for (root, stamp, extra) in [(&a, "18:01:07", false), (&b, "18:03:52", true)] {
            std::fs::create_dir_all(root.join("share")).unwrap();
            std::fs::write(root.join("same"), "same\n").unwrap();
            std::fs::write(
                root.join("share/info"),
                format!("version 1\nbuilt 2026-12-02 {stamp}\n"),
            )
            .unwrap();
            std::fs::write(root.join("list"), if extra { "y\nx\n" } else { "x\ny\n" }).unwrap();
            if extra {
                std::fs::write(root.join("new"), "").unwrap();
            }
        }
        let d = diff_trees(&a, &b).unwrap();
        let summary: Vec<(&str, &str, Option<u64>, Cause)> = d
            .iter()
            .map(|d| (d.path.as_str(), d.what.as_str(), d.offset, d.cause))
            .collect();
        assert_eq!(
            summary,
            [
                ("/list", "content", Some(0), Cause::Ordering),
                ("/new", "only in the second", None, Cause::Other),
                ("/share/info", "content", Some(31), Cause::Timestamp),
            ]
        );
        assert_eq!(d[2].sizes, Some((36, 36)));
    }
}
