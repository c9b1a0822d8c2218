//! Seals a snapshot into ordered Fernet tokens on a pool of worker threads.
//!
//! Work goes out in batches of up to [`LANES`] consecutive chunks, sealed
//! in lockstep by one worker (see `token.rs`). Workers take the next batch
//! from a shared counter, so a worker the scheduler set aside holds up
//! only its own batch; the emitter (the calling thread) puts batches back
//! in order, hashes each token for the `.enc` digest and hands it on. At
//! most `workers` batches are sealed ahead of the one being emitted.

use super::token::{LANES, Plain, TokenWriter};
use super::{CHUNK_HEADER_LEN, ChunkHeader, ExportId, SecretKey, chunk_count};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::sync::mpsc::channel;
use std::sync::{Condvar, Mutex};
use zeroize::Zeroize;

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

/// Why a seal stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealError<E> {
    /// `emit` returned this error (say, the client went away).
    Emit(E),
    /// The operating system gave no random bytes for an IV.
    Entropy,
}

/// Cuts a snapshot into chunks and seals each as one Fernet token.
pub struct Sealer<'k> {
    key: &'k SecretKey,
    export_id: ExportId,
    chunk_size: usize,
    workers: usize,
}

/// Tokens (at most [`LANES`]) one worker seals in one go.
pub const BATCH_CHUNKS: usize = LANES;

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
    /// from `emit` stops every worker and is returned in `SealError::Emit`.
    pub fn seal<E>(
        &self,
        data: &[u8],
        emit: impl FnMut(u64, String) -> Result<(), E>,
    ) -> Result<SealSummary, SealError<E>> {
        self.seal_input(Input::Shared(data), data.len(), emit)
    }

    /// As [`Sealer::seal`], and each batch of `data` is zeroed as soon as
    /// its tokens are made, while it is still in the CPU's cache: when this
    /// returns `Ok`, no plaintext is left in `data`. A seal that stops
    /// early leaves the batches it did not reach as they were.
    pub fn seal_wiping<E>(
        &self,
        data: &mut [u8],
        emit: impl FnMut(u64, String) -> Result<(), E>,
    ) -> Result<SealSummary, SealError<E>> {
        let len = data.len();
        let batches = data
            .chunks_mut(self.chunk_size.saturating_mul(LANES))
            .map(Some)
            .collect();
        self.seal_input(Input::Wiped(Mutex::new(batches)), len, emit)
    }

    fn seal_input<E>(
        &self,
        data: Input<'_>,
        len: usize,
        mut emit: impl FnMut(u64, String) -> Result<(), E>,
    ) -> Result<SealSummary, SealError<E>> {
        let data = &data;
        let total = len as u64;
        let n = chunk_count(total, self.chunk_size);
        let batches = n.div_ceil(LANES as u64);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut next = 0u64;
        let mut take = |tokens: Vec<String>| -> Result<(), SealError<E>> {
            for token in tokens {
                hasher.update(token.as_bytes());
                hasher.update(b"\n");
                size += token.len() as u64 + 1;
                emit(next, token).map_err(SealError::Emit)?;
                next += 1;
            }
            Ok(())
        };
        let workers = self
            .workers
            .min(usize::try_from(batches).unwrap_or(usize::MAX));
        if workers <= 1 {
            let mut w = BatchWorker::new(self, data, len);
            for b in 0..batches {
                take(w.seal(b).ok_or(SealError::Entropy)?)?;
            }
        } else {
            let claims = Claims::new(batches, workers as u64);
            std::thread::scope(|s| -> Result<(), SealError<E>> {
                let (tx, rx) = channel::<(u64, Option<Vec<String>>)>();
                for _ in 0..workers {
                    let (tx, claims) = (tx.clone(), &claims);
                    s.spawn(move || {
                        let mut w = BatchWorker::new(self, data, len);
                        while let Some(b) = claims.claim() {
                            // A closed channel means the emitter stopped.
                            if tx.send((b, w.seal(b))).is_err() {
                                return;
                            }
                        }
                    });
                }
                drop(tx);
                // Stops the workers however the emitter leaves.
                let _stop = StopOnDrop(&claims);
                let mut pending = BTreeMap::new();
                for b in 0..batches {
                    let tokens = loop {
                        if let Some(t) = pending.remove(&b) {
                            break t;
                        }
                        let (i, t) = rx
                            .recv()
                            .unwrap_or_else(|_| unreachable!("a sealing worker ended early"));
                        pending.insert(i, t);
                    };
                    claims.emitted(b + 1);
                    take(tokens.ok_or(SealError::Entropy)?)?;
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

/// Hands out batch numbers in order, never more than `ahead` past the
/// batch the emitter waits for, so the tokens held stay bounded.
struct Claims {
    state: Mutex<ClaimState>,
    wake: Condvar,
    batches: u64,
    ahead: u64,
}

struct ClaimState {
    next: u64,
    emitted: u64,
    stopped: bool,
}

impl Claims {
    fn new(batches: u64, ahead: u64) -> Self {
        Self {
            state: Mutex::new(ClaimState {
                next: 0,
                emitted: 0,
                stopped: false,
            }),
            wake: Condvar::new(),
            batches,
            ahead,
        }
    }

    /// The next batch to seal, waiting while the window is full; `None`
    /// when there is none left or the emitter stopped.
    fn claim(&self) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if st.stopped || st.next >= self.batches {
                return None;
            }
            if st.next < st.emitted + self.ahead {
                st.next += 1;
                return Some(st.next - 1);
            }
            st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// The emitter took every batch before `upto`.
    fn emitted(&self, upto: u64) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).emitted = upto;
        self.wake.notify_all();
    }
}

struct StopOnDrop<'a>(&'a Claims);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .stopped = true;
        self.0.wake.notify_all();
    }
}

/// The plaintext a seal reads: shared, or handed out batch by batch so
/// that each batch can be wiped once sealed.
enum Input<'d> {
    Shared(&'d [u8]),
    Wiped(Mutex<Vec<Option<&'d mut [u8]>>>),
}

impl Input<'_> {
    /// Runs `f` on the bytes of batch `b` (of `batch_len` bytes each).
    fn with_batch<R>(&self, b: u64, batch_len: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        match self {
            Input::Shared(data) => {
                let start = (b as usize).saturating_mul(batch_len).min(data.len());
                let end = start.saturating_add(batch_len).min(data.len());
                f(&data[start..end])
            }
            Input::Wiped(batches) => {
                let region = batches
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_mut(b as usize)
                    .and_then(Option::take);
                match region {
                    Some(region) => {
                        let r = f(region);
                        region.zeroize();
                        r
                    }
                    // An empty snapshot has one (empty) chunk and no region.
                    None => f(&[]),
                }
            }
        }
    }
}

/// One worker's token writer over the snapshot.
struct BatchWorker<'a, 'd> {
    writer: TokenWriter,
    export_id: ExportId,
    chunk_size: usize,
    data: &'a Input<'d>,
    total: usize,
}

impl<'a, 'd> BatchWorker<'a, 'd> {
    fn new(s: &Sealer<'_>, data: &'a Input<'d>, total: usize) -> Self {
        Self {
            writer: TokenWriter::new(s.key),
            export_id: s.export_id,
            chunk_size: s.chunk_size,
            data,
            total,
        }
    }

    /// The tokens of batch `b`; `None` when no IV could be drawn.
    fn seal(&mut self, b: u64) -> Option<Vec<String>> {
        let batch_len = self.chunk_size.saturating_mul(LANES);
        let data = self.data;
        data.with_batch(b, batch_len, |region| self.seal_region(b, region))
    }

    /// Seals batch `b`, whose bytes are `region`: its chunks in order.
    fn seal_region(&mut self, b: u64, region: &[u8]) -> Option<Vec<String>> {
        let first = b * LANES as u64;
        let start = (first as usize).saturating_mul(self.chunk_size);
        // An empty snapshot is one empty (final) chunk.
        let bodies: Vec<&[u8]> = match region {
            [] => vec![region],
            _ => region.chunks(self.chunk_size).collect(),
        };
        let mut end = start;
        let headers: Vec<[u8; CHUNK_HEADER_LEN]> = (first..)
            .zip(&bodies)
            .map(|(index, body)| {
                end += body.len();
                ChunkHeader {
                    is_final: end == self.total,
                    export_id: self.export_id,
                    index,
                    total_len: self.total as u64,
                }
                .encode()
            })
            .collect();
        let plains: Vec<Plain<'_>> = headers
            .iter()
            .zip(bodies)
            .map(|(head, body)| Plain { head, body })
            .collect();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut out = Vec::with_capacity(plains.len());
        self.writer.seal(&plains, now, &mut out).ok()?;
        Some(out)
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
    let summary = Sealer::new(key, export_id, chunk_size, workers)
        .seal(data, |_, token| {
            out.write_all(token.as_bytes())?;
            out.write_all(b"\n")
        })
        .map_err(|e| match e {
            SealError::Emit(e) => e,
            SealError::Entropy => std::io::Error::other("the OS gave no random bytes"),
        })?;
    out.flush()?;
    Ok(summary)
}
