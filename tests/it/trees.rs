//! Deterministic pseudo-random file trees for the cross-checks against Nix and the fault
//! tests, an exact tree comparison, and a check that a store copy is canonical. Does I/O
//! (it writes and reads the trees).
//!
//! A tree depends only on its seed and [`TreeOptions`], so a failure names a seed that
//! reproduces it. Every tree holds the fixed edge cases of [`edge_cases`] (exec bits
//! 0654/0744/0555/0645/0600, empty files and directories, relative, absolute, dangling and
//! non-UTF-8 symlinks, names that sort differently as bytes and as text, a 45-level
//! chain of directories, all-zero files that exercise the sparse copy) plus random entries
//! with names made of ASCII, spaces, dots, Unicode and bytes that are not UTF-8.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// SplitMix64 (Steele, Lea, Flood 2014): a tiny PRNG, good enough to shape test trees.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// A number in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// One element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// The shape of a generated tree.
#[derive(Debug, Clone)]
pub struct TreeOptions {
    /// Number of random entries (files, directories, symlinks) besides the edge cases.
    pub random_entries: usize,
    /// Largest size of a random file; most are far smaller.
    pub max_file_size: usize,
    /// Size of one extra large file `big.bin` (with runs of zeros), if any.
    pub big_file: Option<usize>,
    /// Depth of the `deep/` chain of nested directories.
    pub depth: usize,
}

impl Default for TreeOptions {
    fn default() -> Self {
        TreeOptions {
            random_entries: 150,
            max_file_size: 64 * 1024,
            big_file: None,
            depth: 45,
        }
    }
}

/// The copy buffer of ksbuild's store copy: all-zero chunks of this size become holes.
pub const SPARSE_CHUNK: usize = 256 * 1024;

fn write_file(path: &Path, contents: &[u8], mode: u32) {
    fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn symlink(target: impl AsRef<OsStr>, link: &Path) {
    std::os::unix::fs::symlink(target.as_ref(), link)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
}

fn mkdir(path: &Path, mode: u32) {
    fs::create_dir(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Names of the fixed entries at the top of every tree, and what they test.
pub fn edge_cases(root: &Path) {
    // Exec bit = owner x only (S_IXUSR): 0744, 0555, 0700 are executable; 0654, 0645 not.
    write_file(&root.join("exec-0744.sh"), b"#!/bin/sh\necho hi\n", 0o744);
    write_file(
        &root.join("group-x-0654"),
        b"group may run me, owner may not\n",
        0o654,
    );
    write_file(&root.join("other-x-0645"), b"x", 0o645);
    write_file(&root.join("ro-exec-0555"), b"x", 0o555);
    write_file(&root.join("private-0600"), b"secret\n", 0o600);
    write_file(&root.join("empty"), b"", 0o644);
    write_file(&root.join("empty-exec"), b"", 0o755);
    // The store drops setuid, setgid and sticky bits; NAR ignores them.
    write_file(&root.join("setuid-4755"), b"#!/bin/sh\n", 0o4755);
    write_file(&root.join("setgid-2644"), b"g\n", 0o2644);
    mkdir(&root.join("sticky-dir-1777"), 0o1777);
    write_file(&root.join("sticky-dir-1777/inside"), b"i\n", 0o644);
    mkdir(&root.join("setgid-dir-2755"), 0o2755);
    // A hard link is two files in a NAR.
    fs::hard_link(root.join("exec-0744.sh"), root.join("hard-link-to-exec")).expect("hard link");
    mkdir(&root.join("empty-dir"), 0o755);
    mkdir(&root.join("empty-dir-0700"), 0o700);
    // Whole chunks of zeros are written as holes by the store copy; a file that ends in
    // one needs its length set explicitly.
    write_file(
        &root.join("zeros-one-chunk"),
        &vec![0u8; SPARSE_CHUNK],
        0o644,
    );
    let mut tail = vec![7u8; 1000];
    tail.extend(vec![0u8; 2 * SPARSE_CHUNK]);
    write_file(&root.join("data-then-zeros"), &tail, 0o644);
    let mut mid = vec![0u8; SPARSE_CHUNK + 3];
    mid.extend(b"after the hole");
    write_file(&root.join("zeros-then-data"), &mid, 0o644);
    // Symlinks are stored, never followed.
    symlink("exec-0744.sh", &root.join("rel-link"));
    symlink("/etc/hostname", &root.join("abs-link"));
    symlink("does/not/exist", &root.join("dangling"));
    symlink("empty-dir", &root.join("dir-link"));
    symlink("self-loop", &root.join("self-loop"));
    symlink(
        "/nix/store/00000000000000000000000000000000-nothing",
        &root.join("store-link"),
    );
    symlink(
        OsStr::from_bytes(b"\xff\xfe not utf-8 \x80"),
        &root.join("non-utf8-target"),
    );
    // NAR entries are sorted by bytes: `.hidden A B _x a a.b ab b z~ é`.
    let ord = root.join("ord");
    mkdir(&ord, 0o755);
    for name in [
        ".hidden",
        "A",
        "B",
        "_x",
        "a",
        "a.b",
        "ab",
        "b",
        "z~",
        "é",
        "日本語",
        "🦀 crab",
        "-dash",
        "~tilde",
    ] {
        write_file(&ord.join(name), name.as_bytes(), 0o644);
    }
    write_file(&ord.join(OsStr::from_bytes(b"\xff\xfe")), b"", 0o644);
    write_file(
        &ord.join(OsStr::from_bytes(b"latin1-caf\xe9")),
        b"caf\xe9",
        0o644,
    );
    write_file(&ord.join("with space"), b"", 0o644);
    write_file(&ord.join("trailing space "), b"", 0o644);
    write_file(&ord.join("..."), b"dots", 0o644);
    write_file(&ord.join("tab\there"), b"", 0o644);
    write_file(&ord.join("new\nline"), b"", 0o644);
    write_file(
        &ord.join("n".repeat(255)),
        b"the longest name Linux allows",
        0o644,
    );
}

/// The deep chain `deep/d01/…/dNN` with a file, a symlink and an empty dir at the bottom.
fn deep_chain(root: &Path, depth: usize, rng: &mut SplitMix64) {
    let mut dir = root.join("deep");
    mkdir(&dir, 0o755);
    for level in 1..=depth {
        dir.push(format!("d{level:02}"));
        mkdir(&dir, 0o755);
        if rng.percent(20) {
            write_file(
                &dir.join(format!("f{level}")),
                format!("level {level}\n").as_bytes(),
                0o644,
            );
        }
    }
    write_file(&dir.join("bottom"), b"the bottom\n", 0o755);
    symlink(
        "../".repeat(depth) + "exec-0744.sh",
        &dir.join("up-to-the-top"),
    );
    mkdir(&dir.join("empty-at-the-bottom"), 0o755);
}

/// A random name: 1..=24 characters from ASCII, spaces, dots, Unicode and non-UTF-8
/// bytes; never `.`, `..`, or containing `/` or NUL.
pub fn random_name(rng: &mut SplitMix64) -> OsString {
    const UNICODE: &[&str] = &["é", "ß", "Ω", "日", "本", "🦀", "ñ", "\u{200b}", "ﬁ"];
    const ASCII: &[u8] =
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_+=,;@#%&()[]{}!'~^$";
    loop {
        let len = rng.range(1, 24);
        let mut name = Vec::new();
        for _ in 0..len {
            match rng.below(100) {
                0..=69 => name.push(*rng.pick(ASCII)),
                70..=77 => name.push(b' '),
                78..=85 => name.push(b'.'),
                86..=93 => name.extend_from_slice(rng.pick(UNICODE).as_bytes()),
                // A lone continuation byte or 0xf8..0xff: never valid UTF-8.
                _ => name.push(*rng.pick(&[0x80u8, 0x9f, 0xbf, 0xc0, 0xf8, 0xfe, 0xff])),
            }
        }
        if name != b"." && name != b".." {
            return OsString::from_vec(name);
        }
    }
}

/// A random symlink target: a sibling, a path upwards, an absolute path, or raw bytes.
fn random_target(rng: &mut SplitMix64, siblings: &[OsString]) -> OsString {
    match rng.below(6) {
        0 | 1 if !siblings.is_empty() => rng.pick(siblings).clone(),
        2 => {
            let mut t = b"../".to_vec();
            t.extend(random_name(rng).as_bytes());
            OsString::from_vec(t)
        }
        3 => OsString::from("/nonexistent/absolute/target"),
        4 => OsString::from_vec(vec![0xff, b'/', 0xfe, b' ', b'.', b'.']),
        _ => random_name(rng),
    }
}

/// Random file contents: text, binary, or empty.
fn random_contents(rng: &mut SplitMix64, max: usize) -> Vec<u8> {
    let size = match rng.below(10) {
        0 => 0,
        1..=6 => rng.below(512) as usize,
        7 | 8 => rng.below(8192) as usize,
        _ => rng.below(max as u64 + 1) as usize,
    };
    let mut buf = vec![0u8; size];
    if rng.percent(50) {
        rng.fill(&mut buf);
    } else {
        for b in buf.iter_mut() {
            *b = b"lorem ipsum dolor sit amet\n"[rng.below(27) as usize];
        }
    }
    buf
}

/// Writes the large file: random data with a hole-sized run of zeros in the middle and at
/// the end.
fn big_file(path: &Path, size: usize, rng: &mut SplitMix64) {
    let mut f = File::create(path).expect("create big file");
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0;
    let mut block = 0;
    while written < size {
        let n = buf.len().min(size - written);
        if block % 7 == 3 || written + n == size {
            buf[..n].fill(0);
        } else {
            rng.fill(&mut buf[..n]);
        }
        f.write_all(&buf[..n]).expect("write big file");
        written += n;
        block += 1;
    }
    drop(f);
    fs::set_permissions(path, fs::Permissions::from_mode(0o744)).expect("chmod big file");
}

/// Generates the tree for `seed` at `root` (which must not exist).
pub fn generate(root: &Path, seed: u64, options: &TreeOptions) {
    let mut rng = SplitMix64::new(seed);
    mkdir(root, 0o755);
    edge_cases(root);
    if options.depth > 0 {
        deep_chain(root, options.depth, &mut rng);
    }
    if let Some(size) = options.big_file {
        big_file(&root.join("big.bin"), size, &mut rng);
    }
    let top = root.join("random");
    mkdir(&top, 0o755);
    // Directories that may receive more entries, with the names already used in each.
    let mut dirs: Vec<(PathBuf, Vec<OsString>)> = vec![(top, Vec::new())];
    const FILE_MODES: &[u32] = &[
        0o644, 0o644, 0o755, 0o654, 0o744, 0o555, 0o600, 0o700, 0o444, 0o645,
    ];
    for _ in 0..options.random_entries {
        let d = rng.below(dirs.len() as u64) as usize;
        let name = loop {
            let n = random_name(&mut rng);
            if !dirs[d].1.contains(&n) {
                break n;
            }
        };
        let path = dirs[d].0.join(&name);
        match rng.below(100) {
            0..=59 => {
                let contents = random_contents(&mut rng, options.max_file_size);
                write_file(&path, &contents, *rng.pick(FILE_MODES));
            }
            60..=74 => {
                mkdir(&path, *rng.pick(&[0o755, 0o700, 0o750]));
                dirs.push((path, Vec::new()));
            }
            75..=79 => mkdir(&path, 0o755), // stays empty
            _ => {
                let target = random_target(&mut rng, &dirs[d].1);
                symlink(target, &path);
            }
        }
        dirs[d].1.push(name);
    }
}

/// The type of a tree entry, as NAR sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file; `executable` is the owner-x bit.
    File { executable: bool, size: u64 },
    /// A directory.
    Directory,
    /// A symlink with its raw target.
    Symlink(Vec<u8>),
}

/// One entry of a walked tree.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Full path.
    pub path: PathBuf,
    /// Path relative to the root (empty for the root).
    pub relative: PathBuf,
    /// Type.
    pub kind: Kind,
    /// `lstat` result.
    pub meta: fs::Metadata,
}

fn kind_of(path: &Path, meta: &fs::Metadata) -> Result<Kind, String> {
    let t = meta.file_type();
    if t.is_symlink() {
        let target =
            fs::read_link(path).map_err(|e| format!("readlink {}: {e}", path.display()))?;
        Ok(Kind::Symlink(target.into_os_string().into_vec()))
    } else if t.is_file() {
        Ok(Kind::File {
            executable: meta.mode() & 0o100 != 0,
            size: meta.len(),
        })
    } else if t.is_dir() {
        Ok(Kind::Directory)
    } else {
        Err(format!(
            "{} is neither a file, a directory nor a symlink",
            path.display()
        ))
    }
}

fn sorted_names(dir: &Path) -> Result<Vec<OsString>, String> {
    let mut names = fs::read_dir(dir)
        .map_err(|e| format!("list {}: {e}", dir.display()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| format!("list {}: {e}", dir.display()))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// Every entry of the tree at `root` (root first, then depth-first in byte order).
pub fn walk(root: &Path) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let path = if rel.as_os_str().is_empty() {
            root.to_path_buf()
        } else {
            root.join(&rel)
        };
        let meta =
            fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
        let kind = kind_of(&path, &meta).unwrap_or_else(|e| panic!("{e}"));
        if kind == Kind::Directory {
            let names = sorted_names(&path).unwrap_or_else(|e| panic!("{e}"));
            todo.extend(names.into_iter().rev().map(|n| rel.join(n)));
        }
        out.push(Entry {
            path,
            relative: rel,
            kind,
            meta,
        });
    }
    out
}

fn same_contents(a: &Path, b: &Path) -> Result<bool, String> {
    let open = |p: &Path| File::open(p).map_err(|e| format!("open {}: {e}", p.display()));
    let (mut fa, mut fb) = (open(a)?, open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = read_full(&mut fa, &mut ba).map_err(|e| format!("read {}: {e}", a.display()))?;
        let m = read_full(&mut fb, &mut bb).map_err(|e| format!("read {}: {e}", b.display()))?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read(&mut buf[done..])? {
            0 => break,
            n => done += n,
        }
    }
    Ok(done)
}

/// Compares two trees exactly as NAR sees them: names (as bytes), types, the owner-x bit
/// of files, file contents and symlink targets. Returns the first difference.
pub fn compare_trees(a: &Path, b: &Path) -> Result<(), String> {
    compare_node(a, b, Path::new(""))
}

fn compare_node(a: &Path, b: &Path, rel: &Path) -> Result<(), String> {
    let lstat = |p: &Path| {
        fs::symlink_metadata(p)
            .map_err(|e| format!("`{}`: lstat {}: {e}", rel.display(), p.display()))
    };
    let (ma, mb) = (lstat(a)?, lstat(b)?);
    let (ka, kb) = (kind_of(a, &ma)?, kind_of(b, &mb)?);
    if ka != kb {
        return Err(format!("`{}` differs: {ka:?} vs {kb:?}", rel.display()));
    }
    match ka {
        Kind::File { .. } => {
            if !same_contents(a, b)? {
                return Err(format!("`{}`: contents differ", rel.display()));
            }
        }
        Kind::Directory => {
            let (na, nb) = (sorted_names(a)?, sorted_names(b)?);
            if na != nb {
                let sa: BTreeSet<_> = na.iter().collect();
                let sb: BTreeSet<_> = nb.iter().collect();
                return Err(format!(
                    "`{}`: entries differ; only in the first: {:?}; only in the second: {:?}",
                    rel.display(),
                    sa.difference(&sb).collect::<Vec<_>>(),
                    sb.difference(&sa).collect::<Vec<_>>()
                ));
            }
            for n in na {
                compare_node(&a.join(&n), &b.join(&n), &rel.join(&n))?;
            }
        }
        Kind::Symlink(_) => {}
    }
    Ok(())
}

/// Checks that the tree at `root` is canonical as a store path must be: regular files
/// 0444 or 0555, directories 0555, no setuid/setgid/sticky bits, mtime 1 everywhere
/// (symlinks included), and nothing but files, directories and symlinks.
pub fn assert_canonical(root: &Path) {
    for e in walk(root) {
        let mode = e.meta.mode() & 0o7777;
        let where_ = e.path.display();
        match e.kind {
            Kind::File { executable, .. } => {
                let want = if executable { 0o555 } else { 0o444 };
                assert_eq!(mode, want, "`{where_}` has mode {mode:o}, want {want:o}");
            }
            Kind::Directory => assert_eq!(
                mode, 0o555,
                "directory `{where_}` has mode {mode:o}, want 555"
            ),
            Kind::Symlink(_) => {}
        }
        assert_eq!(
            e.meta.mtime(),
            1,
            "`{where_}` has mtime {}, want 1",
            e.meta.mtime()
        );
    }
}

/// Store names that `path`'s file name can be added under unchanged (Nix's rules).
pub fn is_store_name(name: &OsStr) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 211
        && b[0] != b'.'
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"+-._?=".contains(c))
}

pub use crate::common::Scratch;

#[test]
fn generated_trees_are_deterministic_and_rich() {
    let s = Scratch::new();
    let opts = TreeOptions::default();
    generate(&s.path().join("one"), 7, &opts);
    generate(&s.path().join("two"), 7, &opts);
    compare_trees(&s.path().join("one"), &s.path().join("two")).expect("same seed, same tree");
    generate(&s.path().join("three"), 8, &opts);
    assert!(
        compare_trees(&s.path().join("one"), &s.path().join("three")).is_err(),
        "another seed, another tree"
    );

    let entries = walk(&s.path().join("one"));
    let depth = entries
        .iter()
        .map(|e| e.relative.components().count())
        .max()
        .unwrap_or(0);
    assert!(depth > 40, "deep nesting: {depth}");
    let non_utf8 = entries
        .iter()
        .filter(|e| e.relative.to_str().is_none())
        .count();
    assert!(non_utf8 > 3, "names that are not UTF-8: {non_utf8}");
    let spaces = entries
        .iter()
        .filter(|e| e.relative.as_os_str().as_bytes().contains(&b' '))
        .count();
    assert!(spaces > 3, "names with spaces: {spaces}");
    let symlinks = entries
        .iter()
        .filter(|e| matches!(e.kind, Kind::Symlink(_)))
        .count();
    assert!(symlinks > 10, "symlinks: {symlinks}");
    for mode in [0o654, 0o744, 0o555, 0o600] {
        assert!(
            entries
                .iter()
                .any(|e| e.meta.is_file() && e.meta.mode() & 0o7777 == mode),
            "a file with mode {mode:o}"
        );
    }
    assert!(entries.iter().any(|e| e.meta.is_dir()
        && fs::read_dir(&e.path)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)));
    assert!(entries
        .iter()
        .any(|e| matches!(e.kind, Kind::File { size: 0, .. })));
    assert!(
        entries
            .iter()
            .any(|e| e.meta.is_file() && e.meta.mode() & 0o4000 != 0),
        "a setuid file"
    );
    assert!(
        entries
            .iter()
            .any(|e| e.meta.is_dir() && e.meta.mode() & 0o1000 != 0),
        "a sticky directory"
    );

    // The comparison sees the owner-x bit, contents and symlink targets.
    let one = s.path().join("one");
    let two = s.path().join("two");
    fs::set_permissions(two.join("group-x-0654"), fs::Permissions::from_mode(0o754))
        .expect("chmod");
    assert!(compare_trees(&one, &two).is_err(), "owner-x bit");
    fs::set_permissions(two.join("group-x-0654"), fs::Permissions::from_mode(0o644))
        .expect("chmod");
    compare_trees(&one, &two).expect("other mode bits do not count");
    fs::remove_file(two.join("rel-link")).expect("rm");
    symlink("empty", &two.join("rel-link"));
    assert!(compare_trees(&one, &two).is_err(), "symlink target");
}
