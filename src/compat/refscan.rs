//! Reference scanning: finding which candidate store paths a byte stream mentions, by
//! their 32-character hash parts, as Nix does over a path's NAR serialisation. Pure: the
//! scanner is fed bytes (it is an `io::Write` sink) and never reads a file.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::sync::Arc;

use super::nixbase32;
use super::store_path::{StorePath, HASH_PART_LEN};

/// Scans a stream for the hash parts of a fixed set of candidate store paths.
///
/// Matches may span the boundary between two writes: the last 31 bytes of each write are
/// kept and scanned again with the start of the next.
pub struct RefScanner {
    candidates: Candidates,
    /// Candidates shared with other scanners (a build's input closure, say).
    shared: Arc<Candidates>,
    found: BTreeSet<StorePath>,
    tail: Vec<u8>,
}

/// Candidate store paths by their hash parts: made once, it can serve many scanners
/// ([`RefScanner::with_shared`]), so that each output of each build of a series does not
/// copy its thousand inputs' paths again.
#[derive(Default)]
pub struct Candidates(HashMap<[u8; HASH_PART_LEN], StorePath>);

impl Candidates {
    /// The index of `paths`.
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a StorePath>) -> Candidates {
        Candidates(
            paths
                .into_iter()
                .filter_map(|p| {
                    let key: [u8; HASH_PART_LEN] = p.hash_part().as_bytes().try_into().ok()?;
                    Some((key, p.clone()))
                })
                .collect(),
        )
    }
}

impl RefScanner {
    /// A scanner for `candidates`.
    pub fn new<'a>(candidates: impl IntoIterator<Item = &'a StorePath>) -> RefScanner {
        RefScanner::with_shared(Arc::default(), candidates)
    }

    /// A scanner for the candidates of `shared` and `own`.
    pub fn with_shared<'a>(
        shared: Arc<Candidates>,
        own: impl IntoIterator<Item = &'a StorePath>,
    ) -> RefScanner {
        RefScanner {
            candidates: Candidates::new(own),
            shared,
            found: BTreeSet::new(),
            tail: Vec::with_capacity(2 * HASH_PART_LEN),
        }
    }

    /// Whether there is nothing to look for (feeding is then free).
    pub fn is_empty(&self) -> bool {
        self.candidates.0.is_empty() && self.shared.0.is_empty()
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        if self.is_empty() || data.is_empty() {
            return;
        }
        // The seam: the previous tail followed by the start of this chunk.
        let head = &data[..data.len().min(HASH_PART_LEN - 1)];
        if !self.tail.is_empty() {
            let mut seam = std::mem::take(&mut self.tail);
            seam.extend_from_slice(head);
            self.scan(&seam);
            // Keep the seam's last 31 bytes when this chunk is too short to provide them.
            if data.len() < HASH_PART_LEN - 1 {
                let keep = seam.len().saturating_sub(HASH_PART_LEN - 1);
                self.tail = seam[keep..].to_vec();
                return;
            }
        }
        self.scan(data);
        let keep = data.len().saturating_sub(HASH_PART_LEN - 1);
        self.tail.clear();
        self.tail.extend_from_slice(&data[keep..]);
    }

    /// Scans `buf` for complete hash parts. Like Nix's scanner it tests the window's
    /// characters from the end and skips past any byte outside the alphabet.
    fn scan(&mut self, buf: &[u8]) {
        let mut i = 0;
        while i + HASH_PART_LEN <= buf.len() {
            let window = &buf[i..i + HASH_PART_LEN];
            match window.iter().rposition(|&b| !nixbase32::is_valid_char(b)) {
                Some(bad) => i += bad + 1,
                None => {
                    let candidate =
                        (self.candidates.0.get(window)).or_else(|| self.shared.0.get(window));
                    if let Some(path) = candidate {
                        self.found.insert(path.clone());
                    }
                    i += 1;
                }
            }
        }
    }

    /// The candidates seen so far.
    pub fn found(&self) -> &BTreeSet<StorePath> {
        &self.found
    }

    /// The candidates seen.
    pub fn into_found(self) -> BTreeSet<StorePath> {
        self.found
    }
}

impl io::Write for RefScanner {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(base: &str) -> StorePath {
        StorePath::from_base_name(base).unwrap()
    }

    #[test]
    fn finds_references_across_any_split() {
        let a = path("9frz7rl3ni9y2yn0qscny8v1iq391zsh-hello");
        let b = path("70jzzwfcc6lp7w8f91acm19j5q6n839a-t1");
        let c = path("ynmvlz3kmhchs4qh2b6w5wdi2mvrnibf-foo");
        let text = b"xx /nix/store/9frz7rl3ni9y2yn0qscny8v1iq391zsh-hello/bin and 70jzzwfcc6lp7w8f91acm19j5q6n839a.";
        for split in 0..text.len() {
            for second in split..text.len() {
                let mut s = RefScanner::new([&a, &b, &c]);
                s.update(&text[..split]);
                s.update(&text[split..second]);
                s.update(&text[second..]);
                assert_eq!(
                    s.into_found(),
                    BTreeSet::from([a.clone(), b.clone()]),
                    "split {split}/{second}"
                );
            }
        }
        // Byte-by-byte feeding.
        let mut s = RefScanner::new([&a, &b, &c]);
        for byte in text.iter() {
            s.update(std::slice::from_ref(byte));
        }
        assert_eq!(s.found().len(), 2);
    }

    #[test]
    fn ignores_near_misses() {
        let a = path("9frz7rl3ni9y2yn0qscny8v1iq391zsh-hello");
        let mut s = RefScanner::new([&a]);
        s.update(b"9frz7rl3ni9y2yn0qscny8v1iq391zs 9frz7rl3ni9y2yn0qscny8v1iq391zsX 9FRZ7RL3NI9Y2YN0QSCNY8V1IQ391ZSH");
        assert!(s.found().is_empty());
        let mut empty = RefScanner::new([]);
        assert!(empty.is_empty());
        empty.update(b"9frz7rl3ni9y2yn0qscny8v1iq391zsh");
        assert!(empty.found().is_empty());
    }

    #[test]
    fn shared_and_own_candidates_are_both_found() {
        let a = path("9frz7rl3ni9y2yn0qscny8v1iq391zsh-hello");
        let b = path("70jzzwfcc6lp7w8f91acm19j5q6n839a-t1");
        let c = path("ynmvlz3kmhchs4qh2b6w5wdi2mvrnibf-foo");
        let shared = Arc::new(Candidates::new([&a, &c]));
        let text = b"9frz7rl3ni9y2yn0qscny8v1iq391zsh 70jzzwfcc6lp7w8f91acm19j5q6n839a";
        let mut s = RefScanner::with_shared(Arc::clone(&shared), [&b]);
        assert!(!s.is_empty());
        s.update(text);
        assert_eq!(s.into_found(), BTreeSet::from([a.clone(), b.clone()]));
        // Another scanner of the same shared candidates starts with nothing found.
        let mut other = RefScanner::with_shared(shared, []);
        assert!(!other.is_empty());
        other.update(b"ynmvlz3kmhchs4qh2b6w5wdi2mvrnibf");
        assert_eq!(other.into_found(), BTreeSet::from([c]));
    }
}
