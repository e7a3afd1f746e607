//! Build history: how long each build took and how many log lines it printed, kept in the
//! store's metadata (`nix/var/ksbuild/history`), for estimates (`realise`'s ETA and
//! progress fraction), `ksbuild log --stats` and `ksbuild graph`.
//!
//! One line per finished build, appended with a single `write` to a file opened
//! `O_APPEND`, so that processes sharing a store never interleave their records:
//!
//! ```text
//! <unix seconds>\t<derivation name>\t<.drv path>\t<seconds, 3 decimals>\t<log lines>
//! ```
//!
//! Reading keeps the last record per derivation name and per `.drv`. A line that does not
//! parse (a record cut short by a crash, or written by a newer ksbuild) is skipped: history
//! is an estimate, never an input of a build. The file is rewritten with the last record per
//! `.drv` when it passes [`COMPACT_BYTES`] and twice what its last compaction left
//! ([`super::append_to_log`]).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::Store;

/// The history file's size past which it is compacted (about 10,000 records).
pub const COMPACT_BYTES: u64 = 1 << 20;

/// One finished build.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// When it finished (Unix seconds).
    pub finished: u64,
    /// The target it built, with its variant (`kernel-rpi@small`): what an edit keeps, where
    /// the `.drv` changes. (The derivation's own `name` is shared by all variants, whose
    /// builds differ by an order of magnitude.)
    pub name: String,
    /// The `.drv` it built, as printed.
    pub drv: String,
    /// How long it took.
    pub seconds: f64,
    /// How many lines its log has.
    pub lines: u64,
}

impl Record {
    fn to_line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{:.3}\t{}\n",
            self.finished, self.name, self.drv, self.seconds, self.lines
        )
    }

    fn parse(line: &str) -> Option<Record> {
        let mut f = line.split('\t');
        let r = Record {
            finished: f.next()?.parse().ok()?,
            name: f.next()?.to_string(),
            drv: f.next()?.to_string(),
            seconds: f.next()?.parse().ok()?,
            lines: f.next()?.parse().ok()?,
        };
        (f.next().is_none() && r.seconds.is_finite() && r.seconds >= 0.0).then_some(r)
    }
}

/// The history of a store, as read once.
#[derive(Debug, Default, Clone)]
pub struct History {
    by_name: BTreeMap<String, Record>,
    by_drv: BTreeMap<String, Record>,
    /// Every record of each name, oldest first (for `log --stats`).
    all: BTreeMap<String, Vec<Record>>,
}

impl History {
    /// The last build of the derivation `name` (any `.drv` of that name).
    pub fn last_of_name(&self, name: &str) -> Option<&Record> {
        self.by_name.get(name)
    }

    /// The last build of exactly `drv`.
    pub fn last_of_drv(&self, drv: &str) -> Option<&Record> {
        self.by_drv.get(drv)
    }

    /// The best estimate for a build of `drv` named `name`: its own last build, else the last
    /// build of the same name.
    pub fn estimate(&self, name: &str, drv: &str) -> Option<&Record> {
        self.last_of_drv(drv).or_else(|| self.last_of_name(name))
    }

    /// Every recorded build of `name`, oldest first.
    pub fn builds_of(&self, name: &str) -> &[Record] {
        self.all.get(name).map(Vec::as_slice).unwrap_or_default()
    }

    fn add(&mut self, r: Record) {
        self.by_name.insert(r.name.clone(), r.clone());
        self.by_drv.insert(r.drv.clone(), r.clone());
        self.all.entry(r.name.clone()).or_default().push(r);
    }
}

/// The history file of `store`.
pub fn path(store: &Store) -> PathBuf {
    store.var_dir().join("history")
}

/// Reads the records of `store`'s history of the derivations whose names `wanted` accepts:
/// the estimates of a realisation are of the derivations in its graph. Only those records
/// are parsed, so that building one derivation costs no more in a store that has a
/// history of 10,000 builds than in a new one (reading them all took about 15 ms). An
/// estimate by `.drv` is then of a build under a wanted name. Empty when there is none.
pub fn load_of(store: &Store, wanted: impl Fn(&str) -> bool) -> History {
    load_file(&path(store), wanted)
}

fn load_file(file: &Path, wanted: impl Fn(&str) -> bool) -> History {
    // One read, and a line's name looked at before anything is parsed or copied.
    match fs::read(file) {
        Ok(text) => parse(&text, wanted),
        Err(_) => History::default(),
    }
}

fn parse(text: &[u8], wanted: impl Fn(&str) -> bool) -> History {
    let mut h = History::default();
    for line in text.split(|b| *b == b'\n') {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        if !line.split('\t').nth(1).is_some_and(&wanted) {
            continue;
        }
        if let Some(r) = Record::parse(line) {
            h.add(r);
        }
    }
    h
}

/// Appends a record of a finished build. Failing to write history never fails a build: the
/// error is returned for the caller to warn about.
pub fn record(
    store: &Store,
    name: &str,
    drv: &str,
    seconds: f64,
    lines: u64,
) -> std::io::Result<()> {
    let finished = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let r = Record {
        finished,
        // Tabs and newlines cannot occur in derivation names or store paths; never let one
        // break the format anyway.
        name: name.replace(['\t', '\n'], " "),
        drv: drv.replace(['\t', '\n'], " "),
        seconds,
        lines,
    };
    super::append_to_log(
        &path(store),
        r.to_line().as_bytes(),
        COMPACT_BYTES,
        compacted,
    )
    .map_err(std::io::Error::other)
}

/// The history `text` with the last record of each `.drv`, oldest first.
fn compacted(text: &[u8]) -> Vec<u8> {
    let h = parse(text, |_| true);
    let mut records: Vec<&Record> = h.by_drv.values().collect();
    records.sort_by(|a, b| (a.finished, &a.drv).cmp(&(b.finished, &b.drv)));
    records
        .iter()
        .map(|r| r.to_line())
        .collect::<String>()
        .into_bytes()
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write;

    use super::*;

    fn append(file: &Path, r: &Record) -> std::io::Result<u64> {
        crate::store::append_whole(file, r.to_line().as_bytes())
    }

    #[test]
    fn the_last_record_per_name_and_drv_wins_and_bad_lines_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("history");
        let rec = |t, name: &str, drv: &str, s, l| Record {
            finished: t,
            name: name.into(),
            drv: drv.into(),
            seconds: s,
            lines: l,
        };
        append(
            &file,
            &rec(1, "kernel", "/nix/store/a-kernel.drv", 600.0, 9000),
        )
        .unwrap();
        append(
            &file,
            &rec(2, "kernel", "/nix/store/b-kernel.drv", 300.0, 4000),
        )
        .unwrap();
        // A record cut short, and one with a field too many.
        let mut f = OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all(b"3\tkernel\t/nix/store/c-kernel.drv\t12")
            .unwrap();
        f.write_all(b"\n4\tx\t/nix/store/d-x.drv\t1.0\t2\textra\n")
            .unwrap();
        let h = load_file(&file, |_| true);
        assert_eq!(h.last_of_name("kernel").unwrap().seconds, 300.0);
        assert_eq!(
            h.estimate("kernel", "/nix/store/a-kernel.drv")
                .unwrap()
                .lines,
            9000
        );
        assert_eq!(
            h.estimate("kernel", "/nix/store/new-kernel.drv")
                .unwrap()
                .lines,
            4000
        );
        assert!(h.last_of_name("x").is_none());
        assert_eq!(h.builds_of("kernel").len(), 2);
    }

    #[test]
    fn only_the_records_of_wanted_names_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("history");
        for (i, name) in ["a", "b", "a", "c"].into_iter().enumerate() {
            let r = Record {
                finished: i as u64,
                name: name.into(),
                drv: format!("/nix/store/{i}-{name}.drv"),
                seconds: i as f64,
                lines: i as u64,
            };
            append(&file, &r).unwrap();
        }
        let h = load_file(&file, |name| name != "b");
        assert_eq!(h.builds_of("a").len(), 2);
        assert_eq!(h.last_of_name("c").unwrap().seconds, 3.0);
        assert!(h.last_of_name("b").is_none());
        assert!(h.last_of_drv("/nix/store/1-b.drv").is_none());
        assert_eq!(h.last_of_drv("/nix/store/2-a.drv").unwrap().lines, 2);
    }

    #[test]
    fn compaction_keeps_the_last_record_of_each_drv() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("history");
        for i in 0..50u64 {
            let r = Record {
                finished: i,
                name: "n".into(),
                drv: format!("/nix/store/{}-n.drv", i % 5),
                seconds: i as f64,
                lines: i,
            };
            append(&file, &r).unwrap();
        }
        let text = compacted(&fs::read(&file).unwrap());
        fs::write(&file, &text).unwrap();
        assert_eq!(
            text.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count(),
            5
        );
        let h = load_file(&file, |_| true);
        assert_eq!(h.last_of_name("n").unwrap().seconds, 49.0);
        assert_eq!(h.last_of_drv("/nix/store/0-n.drv").unwrap().seconds, 45.0);
    }
}
