//! A two-stage pipeline for NAR digests: the caller's thread walks the filesystem and
//! writes NAR bytes into a [`DigestPipe`]; a second thread hashes them, counts them and
//! scans them for references. Reading and hashing then overlap, so hashing a tree runs
//! at the speed of SHA-256 alone. Does no filesystem I/O itself.

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

/// An `io::Write` sink that hands full chunks to a hashing thread.
pub struct DigestPipe {
    buf: Vec<u8>,
    tx: Option<SyncSender<Vec<u8>>>,
    free: Receiver<Vec<u8>>,
    worker: Option<JoinHandle<NarDigests>>,
}

impl DigestPipe {
    /// Starts the hashing thread. `other` adds a second NAR hash; `candidates` are the
    /// store paths to look for.
    pub fn new(other: Option<HashAlgo>, candidates: &BTreeSet<StorePath>) -> DigestPipe {
        let (tx, rx) = sync_channel::<Vec<u8>>(DEPTH);
        let (free_tx, free) = sync_channel::<Vec<u8>>(DEPTH + 2);
        let mut scanner = RefScanner::new(candidates);
        let worker = std::thread::spawn(move || {
            let mut sha256 = Hasher::new(HashAlgo::Sha256);
            let mut other = other.map(Hasher::new);
            let mut size = 0u64;
            for mut chunk in rx {
                sha256.update(&chunk);
                if let Some(h) = other.as_mut() {
                    h.update(&chunk);
                }
                scanner.update(&chunk);
                size += chunk.len() as u64;
                chunk.clear();
                // The producer may be gone; a lost buffer is only a lost allocation.
                let _ = free_tx.try_send(chunk);
            }
            NarDigests {
                sha256: sha256.finish(),
                other: other.map(Hasher::finish),
                size,
                references: scanner.into_found(),
            }
        });
        DigestPipe {
            buf: Vec::with_capacity(CHUNK),
            tx: Some(tx),
            free,
            worker: Some(worker),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let next = self
            .free
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        let full = std::mem::replace(&mut self.buf, next);
        match &self.tx {
            Some(tx) => tx
                .send(full)
                .map_err(|_| io::Error::other("the hashing thread stopped")),
            None => Err(io::Error::other("the digest pipe is finished")),
        }
    }

    /// Flushes the last chunk and waits for the digests.
    pub fn finish(mut self) -> io::Result<NarDigests> {
        self.send()?;
        drop(self.tx.take());
        self.worker
            .take()
            .ok_or_else(|| io::Error::other("the digest pipe is finished"))?
            .join()
            .map_err(|_| io::Error::other("the hashing thread panicked"))
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
        drop(self.tx.take());
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
