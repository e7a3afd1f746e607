//! A two-stage pipeline for NAR digests: the caller's thread walks the filesystem and
//! writes NAR bytes into a [`DigestPipe`]; a second thread hashes them, counts them and
//! scans them for references. Reading and hashing then overlap, so hashing a tree runs
//! at the speed of SHA-256 alone. A NAR smaller than one chunk (most build outputs) is
//! hashed on the caller's thread: starting a thread would cost more than it saves. Does
//! no filesystem I/O itself.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::compat::hash::Hasher;
use crate::compat::refscan::RefScanner;
use crate::compat::{Hash, HashAlgo, StorePath};

const CHUNK: usize = 512 * 1024;
const DEPTH: usize = 4;

/// What the hashing thread computed.
#[derive(Debug, Clone)]
pub struct NarDigests {
    /// SHA-256 of the NAR.
    pub sha256: Hash,
    /// The NAR hashed with a second algorithm, if one was asked for.
    pub other: Option<Hash>,
    /// NAR size in bytes.
    pub size: u64,
    /// Candidate references found in the NAR.
    pub references: BTreeSet<StorePath>,
}

/// The hashes, size and reference scan of a NAR, fed chunk by chunk.
struct Digester {
    sha256: Hasher,
    other: Option<Hasher>,
    scanner: RefScanner,
    size: u64,
}

impl Digester {
    fn update(&mut self, chunk: &[u8]) {
        self.sha256.update(chunk);
        if let Some(h) = self.other.as_mut() {
            h.update(chunk);
        }
        self.scanner.update(chunk);
        self.size += chunk.len() as u64;
    }

    fn finish(self) -> NarDigests {
        NarDigests {
            sha256: self.sha256.finish(),
            other: self.other.map(Hasher::finish),
            size: self.size,
            references: self.scanner.into_found(),
        }
    }
}

/// Where full chunks go: hashed on the caller's thread until the first chunk is full (a
/// small NAR, such as most build outputs, never starts a thread), then by the hashing
/// thread.
enum Stage {
    Inline(Box<Digester>),
    Threaded {
        tx: SyncSender<Vec<u8>>,
        free: Receiver<Vec<u8>>,
        worker: JoinHandle<NarDigests>,
    },
    Finished,
}

/// An `io::Write` sink that hands full chunks to a hashing thread (started with the first
/// full chunk; a NAR smaller than one chunk is hashed on the caller's thread).
pub struct DigestPipe {
    buf: Vec<u8>,
    stage: Stage,
}

impl DigestPipe {
    /// A pipe; `other` adds a second NAR hash; `candidates` are the store paths to look
    /// for.
    pub fn new<'c>(
        other: Option<HashAlgo>,
        candidates: impl IntoIterator<Item = &'c StorePath>,
    ) -> DigestPipe {
        DigestPipe::with_scanner(other, RefScanner::new(candidates))
    }

    /// A pipe that looks for references with `scanner`.
    pub fn with_scanner(other: Option<HashAlgo>, scanner: RefScanner) -> DigestPipe {
        DigestPipe {
            buf: Vec::new(),
            stage: Stage::Inline(Box::new(Digester {
                sha256: Hasher::new(HashAlgo::Sha256),
                other: other.map(Hasher::new),
                scanner,
                size: 0,
            })),
        }
    }

    /// Starts the hashing thread with what was digested so far.
    fn start_thread(mut digester: Box<Digester>) -> Stage {
        let (tx, rx) = sync_channel::<Vec<u8>>(DEPTH);
        let (free_tx, free) = sync_channel::<Vec<u8>>(DEPTH + 2);
        let worker = std::thread::spawn(move || {
            for mut chunk in rx {
                digester.update(&chunk);
                chunk.clear();
                // The producer may be gone; a lost buffer is only a lost allocation.
                let _ = free_tx.try_send(chunk);
            }
            digester.finish()
        });
        Stage::Threaded { tx, free, worker }
    }

    /// Hands the full buffer to the hashing thread (starting it if needed).
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if matches!(self.stage, Stage::Inline(_)) {
            if let Stage::Inline(d) = std::mem::replace(&mut self.stage, Stage::Finished) {
                self.stage = Self::start_thread(d);
            }
        }
        match &self.stage {
            Stage::Threaded { tx, free, .. } => {
                let next = free
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
                let full = std::mem::replace(&mut self.buf, next);
                tx.send(full)
                    .map_err(|_| io::Error::other("the hashing thread stopped"))
            }
            _ => Err(io::Error::other("the digest pipe is finished")),
        }
    }

    /// Digests the last chunk and returns the digests.
    pub fn finish(mut self) -> io::Result<NarDigests> {
        if let Stage::Inline(d) = &mut self.stage {
            d.update(&self.buf);
            self.buf.clear();
        } else {
            self.send()?;
        }
        match std::mem::replace(&mut self.stage, Stage::Finished) {
            Stage::Inline(d) => Ok(d.finish()),
            Stage::Threaded { tx, worker, .. } => {
                drop(tx);
                worker
                    .join()
                    .map_err(|_| io::Error::other("the hashing thread panicked"))
            }
            Stage::Finished => Err(io::Error::other("the digest pipe is finished")),
        }
    }
}

impl Write for DigestPipe {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            let room = CHUNK - self.buf.len();
            let take = room.min(rest.len());
            self.buf.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.buf.len() == CHUNK {
                self.send()?;
            }
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for DigestPipe {
    fn drop(&mut self) {
        if let Stage::Threaded { tx, worker, .. } =
            std::mem::replace(&mut self.stage, Stage::Finished)
        {
            drop(tx);
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_nars_are_digested_without_a_thread() {
        let data = b"nix-archive-1 small".to_vec();
        let mut pipe = DigestPipe::new(None, &BTreeSet::new());
        pipe.write_all(&data).unwrap();
        assert!(matches!(pipe.stage, Stage::Inline(_)));
        let d = pipe.finish().unwrap();
        assert_eq!(d.sha256, Hash::sha256(&data));
        assert_eq!(d.size, data.len() as u64);
    }

    #[test]
    fn digests_match_a_direct_hash() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut pipe = DigestPipe::new(Some(HashAlgo::Sha1), &BTreeSet::new());
        for piece in data.chunks(70_001) {
            pipe.write_all(piece).unwrap();
        }
        let d = pipe.finish().unwrap();
        assert_eq!(d.sha256, Hash::sha256(&data));
        assert_eq!(d.other, Some(Hash::digest(HashAlgo::Sha1, &data)));
        assert_eq!(d.size, data.len() as u64);
    }
}
