//! A stat cache for source imports, in the spirit of git's index: the NAR hash of a
//! repository file or tree is reused while every entry's type, mode, size, inode, mtime and
//! ctime are unchanged, so re-evaluating a project does not re-read its sources. Entries
//! modified within a second of the cache being written are "racily clean" and never
//! trusted ([`RACY_NS`]). The evaluation cache recognises a project's definitions the same
//! way ([`stat_digest`]). Does I/O (`<root>/nix/var/ksbuild/imports/`).

use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{nar_hash_path, Result, Store, StoreError};
use crate::compat::hash::Hasher;
use crate::compat::{Hash, HashAlgo};

#[derive(Serialize, Deserialize)]
struct Entry {
    stat_digest: String,
    nar_hash: String,
    written_ns: i128,
}

/// A digest of the stat data of every entry of `path` (sorted walk), and the newest
/// mtime/ctime seen, in nanoseconds. A symlink counts with the file or folder it leads to
/// (where it leads anywhere): whoever reads through it sees that one change.
///
/// Each directory is listed once and its entries looked up in it (`fstatat`, no path walked
/// again), by two threads where it has many: a project of 10,000 definitions took 22 ms to
/// check, as much as the rest of a warm evaluation. One directory is open at a time, so a
/// tree of any size stays within the open files' limit.
pub(crate) fn stat_digest(path: &Path) -> Result<(Hash, i128)> {
    let mut walk = Walk {
        dirs: Vec::new(),
        entries: Vec::new(),
    };
    let root = stat_entry(rustix::fs::CWD, path.as_os_str(), Path::new(""))?;
    let descend = root.1.as_ref().unwrap_or(&root.0).is_dir();
    walk.entries.push((None, root));
    if descend {
        walk.descend(path)?;
    }
    let mut h = Hasher::new(HashAlgo::Sha256);
    let mut newest: i128 = 0;
    for (at, (m, target)) in &walk.entries {
        match at {
            None => h.update(path.as_os_str().as_bytes()),
            Some((d, name)) => {
                h.update(walk.dirs[*d].as_os_str().as_bytes());
                h.update(b"/");
                h.update(name.as_bytes());
            }
        }
        h.update(&[0]);
        for m in std::iter::once(m).chain(target) {
            newest = newest.max(m.mtime).max(m.ctime);
            for n in [m.mode, m.size, m.ino, m.dev] {
                h.update(&n.to_le_bytes());
            }
            h.update(&m.mtime.to_le_bytes());
            h.update(&m.ctime.to_le_bytes());
        }
    }
    Ok((h.finish(), newest))
}

/// How many entries make [`stat_digest`] look a directory's up in two threads.
const PARALLEL_FROM: usize = 512;

/// What [`stat_digest`] digests of an entry.
struct Status {
    mode: u64,
    size: u64,
    ino: u64,
    dev: u64,
    mtime: i128,
    ctime: i128,
}

impl Status {
    fn is_dir(&self) -> bool {
        rustix::fs::FileType::from_raw_mode(self.mode as rustix::fs::RawMode)
            == rustix::fs::FileType::Directory
    }
}

/// An entry's status, and that of what it leads to if it is a symlink that leads anywhere.
type Statted = (Status, Option<Status>);

/// The entries of a walk in order (each directory before its entries, a directory's
/// entries sorted by name): each with its name in `dirs[d]` (`None`: the walk's root).
struct Walk {
    dirs: Vec<std::path::PathBuf>,
    entries: Vec<(Option<(usize, std::ffi::OsString)>, Statted)>,
}

impl Walk {
    /// Adds the entries of the directory `dir`, each directory's own after it.
    fn descend(&mut self, dir: &Path) -> Result<()> {
        let read = |e: std::io::Error| StoreError::Io {
            action: "read",
            path: dir.to_path_buf(),
            source: e,
        };
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(read)? {
            names.push(entry.map_err(read)?.file_name());
        }
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        let stats = {
            let fd = rustix::fs::open(
                dir,
                rustix::fs::OFlags::PATH
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(|e| read(e.into()))?;
            let stat_all = |part: &[std::ffi::OsString]| -> Result<Vec<Statted>> {
                part.iter()
                    .map(|name| stat_entry(fd.as_fd(), name, dir))
                    .collect()
            };
            if names.len() < PARALLEL_FROM {
                stat_all(&names)?
            } else {
                let (first, second) = names.split_at(names.len() / 2);
                let (mine, other) = std::thread::scope(|s| {
                    let other = s.spawn(|| stat_all(second));
                    (stat_all(first), other.join())
                });
                let other = other.map_err(|_| {
                    StoreError::Refused("a thread reading file status panicked".into())
                })?;
                let mut stats = mine?;
                stats.extend(other?);
                stats
            }
        };
        let at = self.dirs.len();
        self.dirs.push(dir.to_path_buf());
        for (name, statted) in names.into_iter().zip(stats) {
            // A symlink to a directory is not followed.
            let sub = statted.0.is_dir().then(|| dir.join(&name));
            self.entries.push((Some((at, name)), statted));
            if let Some(sub) = sub {
                self.descend(&sub)?;
            }
        }
        Ok(())
    }
}

/// The status of `name` in `dir` (the directory at `dir_path`), and of what it leads to if
/// it is a symlink.
fn stat_entry(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    dir_path: &Path,
) -> Result<Statted> {
    use rustix::fs::AtFlags;
    let status = |m: rustix::fs::Stat| Status {
        mode: u64::from(m.st_mode),
        size: m.st_size as u64,
        ino: m.st_ino,
        dev: m.st_dev,
        mtime: i128::from(m.st_mtime) * 1_000_000_000 + i128::from(m.st_mtime_nsec),
        ctime: i128::from(m.st_ctime) * 1_000_000_000 + i128::from(m.st_ctime_nsec),
    };
    let m =
        rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| StoreError::Io {
            action: "inspect",
            path: dir_path.join(name),
            source: e.into(),
        })?;
    let is_link = rustix::fs::FileType::from_raw_mode(m.st_mode) == rustix::fs::FileType::Symlink;
    let target = match is_link {
        true => rustix::fs::statat(dir, name, AtFlags::empty())
            .ok()
            .map(status),
        false => None,
    };
    Ok((status(m), target))
}

/// How long after a change an entry's status may still miss a second change in the same
/// clock tick: a cache written sooner after it does not answer for it.
pub(crate) const RACY_NS: i128 = 1_000_000_000;

pub(crate) fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// The NAR hash (SHA-256) of `source`, from the cache when its entries are unchanged.
pub fn nar_hash(store: &Store, source: &Path) -> Result<Hash> {
    let absolute = std::fs::canonicalize(source).map_err(StoreError::io("resolve", source))?;
    let dir = store.root().join("nix/var/ksbuild/imports");
    let file = dir.join(format!(
        "{}.json",
        &Hash::sha256(absolute.as_os_str().as_bytes()).to_nix32()[..32]
    ));
    let (digest, newest) = stat_digest(&absolute)?;
    if let Ok(text) = std::fs::read(&file) {
        if let Ok(e) = serde_json::from_slice::<Entry>(&text) {
            let racy = newest + RACY_NS >= e.written_ns;
            if !racy && e.stat_digest == digest.to_nix32() {
                if let Ok(h) = Hash::parse(&e.nar_hash) {
                    return Ok(h);
                }
            }
        }
    }
    let written_ns = now_ns();
    let (hash, _) = nar_hash_path(&absolute)?;
    // A change during hashing shows in a second stat walk; then nothing is cached.
    let (after, _) = stat_digest(&absolute)?;
    if after == digest {
        let entry = Entry {
            stat_digest: digest.to_nix32(),
            nar_hash: hash.to_sri(),
            written_ns,
        };
        if std::fs::create_dir_all(&dir).is_ok() {
            if let Ok(json) = serde_json::to_vec(&entry) {
                // The cache is an optimisation: failing to write it loses nothing.
                let _ = super::fsutil::write_atomic(&file, &json);
            }
        }
    }
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::compat::StoreDir;
    use crate::store::Silent;

    #[test]
    fn the_stat_digest_of_a_large_tree_sees_any_change_anywhere_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        // More entries than one thread reads, in nested directories.
        for d in 0..4 {
            let sub = top.join(format!("d{d}")).join("deeper");
            std::fs::create_dir_all(&sub).unwrap();
            for f in 0..200 {
                std::fs::write(sub.join(format!("f{f}")), "x").unwrap();
            }
        }
        std::fs::write(dir.path().join("target"), "t").unwrap();
        std::os::unix::fs::symlink(dir.path().join("target"), top.join("link")).unwrap();
        let digest = || stat_digest(&top).unwrap().0;
        let first = digest();
        assert_eq!(digest(), first, "nothing changed");
        std::fs::write(top.join("d3/deeper/f199"), "xy").unwrap();
        let second = digest();
        assert_ne!(second, first, "a file deep in the tree changed");
        std::fs::write(dir.path().join("target"), "changed").unwrap();
        let third = digest();
        assert_ne!(third, second, "what a symlink leads to changed");
        std::fs::write(top.join("d0/new"), "").unwrap();
        assert_ne!(digest(), third, "a file was added");
        // A file alone, and a root that does not exist.
        assert!(stat_digest(&top.join("d0/new")).is_ok());
        assert!(stat_digest(&top.join("none")).is_err());
    }

    #[test]
    fn reuses_hashes_only_while_nothing_changed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(
            &tmp.path().join("root"),
            StoreDir::default(),
            Arc::new(Silent),
        )
        .unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), b"one").unwrap();
        let first = nar_hash(&store, &src).unwrap();
        assert_eq!(first, nar_hash_path(&src).unwrap().0);
        // Racily clean: just written, so not cached yet; pretend time has passed.
        let cache_dir = tmp.path().join("root/nix/var/ksbuild/imports");
        let cached = std::fs::read_dir(&cache_dir).unwrap().count();
        assert_eq!(cached, 1);
        for e in std::fs::read_dir(&cache_dir).unwrap() {
            let p = e.unwrap().path();
            let mut entry: Entry = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            entry.written_ns += 10_000_000_000;
            entry.nar_hash = Hash::sha256(b"planted").to_sri();
            std::fs::write(&p, serde_json::to_vec(&entry).unwrap()).unwrap();
        }
        // Unchanged tree: the (planted) cached hash is used, proving no re-read.
        assert_eq!(nar_hash(&store, &src).unwrap(), Hash::sha256(b"planted"));
        // Any change (same size, new content) invalidates it.
        std::fs::write(src.join("f"), b"two").unwrap();
        assert_eq!(
            nar_hash(&store, &src).unwrap(),
            nar_hash_path(&src).unwrap().0
        );
    }
}
