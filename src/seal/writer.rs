//! Seals a snapshot into ordered Fernet tokens on a pool of worker threads.

use super::{ChunkHeader, ExportId, SecretKey, chunk_count};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::sync::mpsc::{Receiver, sync_channel};
use zeroize::Zeroizing;

/// Tokens each worker may have sealed ahead of the emitter.
const WORKER_DEPTH: usize = 2;

/// What a finished seal produced; the digest is over the `.enc` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealSummary {
    /// SHA-256 of every token followed by `\n`.
    pub sha256: [u8; 32],
    /// Chunks emitted.
    pub chunks: u64,
    /// Bytes of the `.enc` file (tokens plus newlines).
    pub ciphertext_size: u64,
    /// Bytes of plaintext sealed.
    pub plaintext_size: u64,
}

/// Cuts a snapshot into chunks and seals each as one Fernet token.
pub struct Sealer<'k> {
    key: &'k SecretKey,
    export_id: ExportId,
    chunk_size: usize,
    workers: usize,
}

impl<'k> Sealer<'k> {
    /// `workers` is clamped to at least 1.
    pub fn new(key: &'k SecretKey, export_id: ExportId, chunk_size: usize, workers: usize) -> Self {
        assert!(chunk_size > 0, "chunk size must be positive");
        Self {
            key,
            export_id,
            chunk_size,
            workers: workers.max(1),
        }
    }

    /// Seals `data`, handing each token to `emit` in index order. An error
    /// from `emit` (say, the client went away) stops every worker and is
    /// returned as is.
    pub fn seal<E>(
        &self,
        data: &[u8],
        mut emit: impl FnMut(u64, String) -> Result<(), E>,
    ) -> Result<SealSummary, E> {
        let total = data.len() as u64;
        let n = chunk_count(total, self.chunk_size);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut take = |i: u64, token: String| -> Result<(), E> {
            hasher.update(token.as_bytes());
            hasher.update(b"\n");
            size += token.len() as u64 + 1;
            emit(i, token)
        };
        let workers = self.workers.min(usize::try_from(n).unwrap_or(usize::MAX));
        if workers <= 1 {
            let mut w = ChunkWorker::new(self, data);
            for i in 0..n {
                take(i, w.seal(i))?;
            }
        } else {
            std::thread::scope(|s| -> Result<(), E> {
                let mut rxs: Vec<Receiver<String>> = Vec::with_capacity(workers);
                for first in 0..workers {
                    let (tx, rx) = sync_channel::<String>(WORKER_DEPTH);
                    rxs.push(rx);
                    let this = &*self;
                    s.spawn(move || {
                        let mut w = ChunkWorker::new(this, data);
                        let mut i = first as u64;
                        while i < n {
                            // A closed channel means the emitter stopped.
                            if tx.send(w.seal(i)).is_err() {
                                return;
                            }
                            i += workers as u64;
                        }
                    });
                }
                for i in 0..n {
                    let rx = &rxs[(i % workers as u64) as usize];
                    let token = rx
                        .recv()
                        .unwrap_or_else(|_| unreachable!("a sealing worker ended early"));
                    if let Err(e) = take(i, token) {
                        drop(rxs);
                        return Err(e);
                    }
                }
                Ok(())
            })?;
        }
        Ok(SealSummary {
            sha256: hasher.finalize().into(),
            chunks: n,
            ciphertext_size: size,
            plaintext_size: total,
        })
    }
}

/// One worker's cipher and reusable plaintext buffer.
struct ChunkWorker<'a> {
    fernet: fernet::Fernet,
    export_id: ExportId,
    chunk_size: usize,
    data: &'a [u8],
    buf: Zeroizing<Vec<u8>>,
}

impl<'a> ChunkWorker<'a> {
    fn new(s: &Sealer<'_>, data: &'a [u8]) -> Self {
        Self {
            fernet: s.key.fernet(),
            export_id: s.export_id,
            chunk_size: s.chunk_size,
            data,
            buf: Zeroizing::new(Vec::with_capacity(super::CHUNK_HEADER_LEN + s.chunk_size)),
        }
    }

    fn seal(&mut self, i: u64) -> String {
        let total = self.data.len();
        let start = (i as usize).saturating_mul(self.chunk_size).min(total);
        let end = start.saturating_add(self.chunk_size).min(total);
        let header = ChunkHeader {
            is_final: end == total,
            export_id: self.export_id,
            index: i,
            total_len: total as u64,
        };
        // Clearing keeps the capacity, so the buffer never reallocates and
        // leaves no plaintext copy behind in freed memory.
        self.buf.clear();
        self.buf.extend_from_slice(&header.encode());
        self.buf.extend_from_slice(&self.data[start..end]);
        self.fernet.encrypt(&self.buf)
    }
}

/// Seals `data` into `out` as an `.enc` file (tokens, one per line).
pub fn seal_to_writer<W: Write>(
    data: &[u8],
    key: &SecretKey,
    export_id: ExportId,
    chunk_size: usize,
    workers: usize,
    mut out: W,
) -> std::io::Result<SealSummary> {
    let summary = Sealer::new(key, export_id, chunk_size, workers).seal(data, |_, token| {
        out.write_all(token.as_bytes())?;
        out.write_all(b"\n")
    })?;
    out.flush()?;
    Ok(summary)
}
