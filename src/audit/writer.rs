//! The trail's single writer thread and the handle every call holds.
//! Callers enqueue events without blocking; those that must fail closed
//! await the commit. Events that could not be written stay queued, within a
//! byte bound, and are retried until they are. The writer only ever appends
//! to the trail it left: a stored trail that differs from it (a cut tail, a
//! forged or rewritten event) stops every write for good (`integrity`).

use super::Event;
use super::chain::Head;
use super::checkpoint::{Checkpoint, CheckpointSigner};
use super::integrity::{self, TrailMismatch};
use super::store::{AuditError, append, init, open_rw};
use crate::metrics::Metrics;
use rusqlite::Connection;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How often queued events are retried while the store is failing.
const RETRY_EVERY: Duration = Duration::from_millis(500);
/// Most commands taken from the queue for one batch.
const BATCH: usize = 1024;
/// Most hashes kept of events written since the last checkpoint, to name
/// the first one found rewritten.
const RECENT: usize = 1 << 20;

/// Settings of the writer.
pub struct WriterConfig {
    /// Interval between periodic checkpoints (skipped if nothing was written).
    pub every: Duration,
    /// JSON-lines file each checkpoint is appended to, if any. At start the
    /// stored trail is held to its last checkpoint.
    pub file: Option<PathBuf>,
    /// Key that signs each checkpoint; unsigned when `None`.
    pub signer: Option<CheckpointSigner>,
    /// Bytes of events that may wait for the store; past this, new events
    /// are refused and the server refuses new calls.
    pub max_queued_bytes: u64,
    /// The server's metrics, which count writes, failures and refusals.
    pub metrics: Arc<Metrics>,
}

impl Default for WriterConfig {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(300),
            file: None,
            signer: None,
            max_queued_bytes: 64 << 20,
            metrics: Metrics::new(),
        }
    }
}

type Reply = oneshot::Sender<Result<u64, AuditError>>;

enum Cmd {
    Append(Box<Event>, u64, Option<Reply>),
    Checkpoint(oneshot::Sender<Option<Checkpoint>>),
    Shutdown,
}

/// Cheap to clone; shared by every call.
#[derive(Clone)]
pub struct AuditHandle {
    tx: mpsc::Sender<Cmd>,
    healthy: Arc<AtomicBool>,
    /// Set once, for good, when the stored trail is not the one written.
    mismatch: Arc<OnceLock<TrailMismatch>>,
    /// Bytes of events sent to the writer and not yet written or dropped.
    queued: Arc<AtomicU64>,
    max_queued: u64,
    metrics: Arc<Metrics>,
    head: Arc<Mutex<Head>>,
    instance: Arc<str>,
}

impl std::fmt::Debug for AuditHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditHandle").finish_non_exhaustive()
    }
}

impl AuditHandle {
    /// Queues an event unless the trail is refused or the queue is full;
    /// the refusal goes to `reply`, if any, and to the log.
    fn enqueue(&self, mut e: Event, reply: Option<Reply>) {
        e.instance = self.instance.to_string();
        let refuse = |err: AuditError, e: &Event, reply: Option<Reply>| {
            // The log keeps what the trail cannot: the event, which holds
            // no secret, so that nothing is lost without a word.
            tracing::error!(
                error = %err,
                event = %serde_json::to_string(e).unwrap_or_default(),
                "audit event not written"
            );
            if let Some(r) = reply {
                let _ = r.send(Err(err));
            }
        };
        if let Some(m) = self.mismatch.get() {
            return refuse(AuditError::Mismatch(m.clone()), &e, reply);
        }
        let size = e.stored_size();
        let before = self.queued.fetch_add(size, Ordering::SeqCst);
        if before + size > self.max_queued {
            self.queued.fetch_sub(size, Ordering::SeqCst);
            self.metrics.audit_events_refused.inc();
            return refuse(AuditError::QueueFull(self.max_queued), &e, reply);
        }
        if let Err(mpsc::SendError(Cmd::Append(e, size, reply))) =
            self.tx.send(Cmd::Append(Box::new(e), size, reply))
        {
            self.queued.fetch_sub(size, Ordering::SeqCst);
            refuse(AuditError::Stopped, &e, reply);
        }
    }

    /// Queues an event; never blocks. It is written even if nobody waits.
    pub fn record(&self, e: Event) {
        self.enqueue(e, None);
    }

    /// Queues an event and returns a receiver for its commit.
    pub fn record_acked(&self, e: Event) -> oneshot::Receiver<Result<u64, AuditError>> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(e, Some(tx));
        rx
    }

    /// Queues an event and waits for its commit (sequence number).
    pub async fn commit(&self, e: Event) -> Result<u64, AuditError> {
        self.record_acked(e)
            .await
            .unwrap_or(Err(AuditError::Stopped))
    }

    /// False while the last write attempt failed, and for good once the
    /// stored trail differs from the one written.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst) && self.mismatch.get().is_none()
    }

    /// Whether new calls can be recorded: the trail is the one written and
    /// the queue of events waiting for the store has room. New calls stop
    /// short of the bound (an eighth of it, at most 64 KiB), so the calls
    /// already running can still record their ends.
    pub fn is_accepting(&self) -> bool {
        let headroom = (self.max_queued / 8).min(64 << 10);
        self.mismatch.get().is_none()
            && self.queued.load(Ordering::SeqCst) + headroom < self.max_queued
    }

    /// Why the trail is refused, if it is.
    pub fn mismatch(&self) -> Option<&TrailMismatch> {
        self.mismatch.get()
    }

    /// The last committed event.
    pub fn head(&self) -> Head {
        *self.head.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Emits a checkpoint of the current head now; `None` when the stored
    /// trail could not be verified up to it.
    pub async fn checkpoint(&self) -> Option<Checkpoint> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Cmd::Checkpoint(tx)).ok()?;
        rx.await.ok().flatten()
    }

    /// This server instance's id, as recorded in events.
    pub fn instance(&self) -> &str {
        &self.instance
    }
}

/// Owns the writer thread; dropping it without `shutdown` detaches it.
pub struct AuditWriter {
    handle: AuditHandle,
    join: Option<JoinHandle<()>>,
}

impl AuditWriter {
    /// Opens (creating if needed) the log, holds it to its last checkpoint
    /// (or, without one, verifies the whole chain) and starts the writer
    /// thread. A trail that fails that check is not an error here: the
    /// writer starts refused (see `AuditHandle::mismatch`), so the server
    /// can say so through its health and metrics.
    pub fn start(path: &Path, instance: &str, config: WriterConfig) -> Result<Self, AuditError> {
        let (conn, head) = init(path)?;
        let (tx, rx) = mpsc::channel::<Cmd>();
        let handle = AuditHandle {
            tx,
            healthy: Arc::new(AtomicBool::new(true)),
            mismatch: Arc::default(),
            queued: Arc::default(),
            max_queued: config.max_queued_bytes,
            metrics: config.metrics.clone(),
            head: Arc::new(Mutex::new(head)),
            instance: Arc::from(instance),
        };
        let mut writer = Writer {
            conn: Some(conn),
            path: path.to_path_buf(),
            head,
            verified: head,
            recent: VecDeque::new(),
            pending: VecDeque::new(),
            next_checkpoint: Instant::now() + config.every,
            last_checkpoint_seq: None,
            config,
            state: handle.clone(),
        };
        let conn = writer.conn.as_ref().expect("just opened");
        match integrity::check_at_start(
            conn,
            &head,
            writer.config.file.as_deref(),
            writer.signer_key(),
        ) {
            Ok(()) => {}
            Err(AuditError::Mismatch(m)) => writer.refuse_trail(m),
            Err(e) => return Err(e),
        }
        let join = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| AuditError::Open {
                path: PathBuf::new(),
                message: format!("cannot start the writer thread: {e}"),
            })?;
        Ok(Self {
            handle,
            join: Some(join),
        })
    }

    /// A handle for enqueuing events.
    pub fn handle(&self) -> AuditHandle {
        self.handle.clone()
    }

    /// Writes what is queued, emits a final checkpoint and stops the thread.
    pub fn shutdown(mut self) {
        let Some(join) = self.join.take() else { return };
        let _ = self.handle.tx.send(Cmd::Shutdown);
        let _ = join.join();
    }
}

struct Pending {
    event: Box<Event>,
    size: u64,
    reply: Option<Reply>,
}

/// The writer thread's state.
struct Writer {
    /// `None` after a failed write, until the store can be reopened.
    conn: Option<Connection>,
    path: PathBuf,
    /// The last event this writer committed (or found and verified at start).
    head: Head,
    /// The last checkpoint's head: the stored chain up to it was verified.
    verified: Head,
    /// (seq, hash) of the events written since `verified`, at most `RECENT`.
    recent: VecDeque<(u64, [u8; 32])>,
    pending: VecDeque<Pending>,
    next_checkpoint: Instant,
    last_checkpoint_seq: Option<u64>,
    config: WriterConfig,
    state: AuditHandle,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        loop {
            let (cmds, mut stopping) = self.receive(&rx);
            let mut asks = Vec::new();
            for c in cmds {
                match c {
                    Cmd::Append(event, size, reply) => {
                        self.pending.push_back(Pending { event, size, reply })
                    }
                    Cmd::Checkpoint(r) => asks.push(r),
                    Cmd::Shutdown => stopping = true,
                }
            }
            if self.state.mismatch.get().is_some() {
                self.drop_pending();
            } else if !self.pending.is_empty() {
                self.flush();
            }
            let due = Instant::now() >= self.next_checkpoint;
            let written = self.last_checkpoint_seq != Some(self.head.seq);
            if (due && written) || !asks.is_empty() {
                let c = self.checkpoint(false);
                for r in asks {
                    let _ = r.send(c.clone());
                }
            }
            if due {
                self.next_checkpoint = Instant::now() + self.config.every;
            }
            if stopping && (self.pending.is_empty() || self.conn.is_none()) {
                self.stop();
                return;
            }
        }
    }

    /// Waits for commands (at most until the next checkpoint or retry) and
    /// takes what else is queued; true when the handles are all gone.
    fn receive(&self, rx: &mpsc::Receiver<Cmd>) -> (Vec<Cmd>, bool) {
        let wait = if self.pending.is_empty() {
            self.next_checkpoint
                .saturating_duration_since(Instant::now())
        } else {
            RETRY_EVERY
        };
        let mut cmds = Vec::new();
        match rx.recv_timeout(wait) {
            Ok(c) => cmds.push(c),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return (cmds, true),
        }
        while cmds.len() < BATCH {
            match rx.try_recv() {
                Ok(c) => cmds.push(c),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => return (cmds, true),
            }
        }
        (cmds, false)
    }

    /// Writes the pending events in one transaction, after checking that
    /// the stored trail still ends where this writer left it.
    fn flush(&mut self) {
        if self.conn.is_none() {
            // Reopen after a failure: the fault may have needed it. The
            // reopened trail must still end at our head.
            match open_rw(&self.path) {
                Ok(c) => self.conn = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "audit store still unavailable");
                    return self.failed(e.to_string());
                }
            }
        }
        let conn = self.conn.as_mut().expect("open");
        let t0 = Instant::now();
        let events: Vec<&Event> = self.pending.iter().map(|p| &*p.event).collect();
        let result = append(conn, &self.head, &events);
        let m = &self.state.metrics;
        m.audit_write_seconds.observe(t0.elapsed().as_secs_f64());
        match result {
            Ok(Ok((h, hashes))) => self.committed(h, hashes, t0),
            Ok(Err(found)) => {
                let recent: Vec<(u64, [u8; 32])> = self.recent.iter().copied().collect();
                let mismatch = integrity::locate(conn, &self.head, &recent, found);
                self.refuse_trail(mismatch);
                self.drop_pending();
            }
            Err(e) => {
                m.audit_write_failures.inc();
                self.failed(e.to_string());
            }
        }
    }

    fn committed(&mut self, h: Head, hashes: Vec<[u8; 32]>, t0: Instant) {
        let first = self.head.seq + 1;
        for (i, hash) in hashes.into_iter().enumerate() {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back((first + i as u64, hash));
        }
        self.head = h;
        *self.state.head.lock().unwrap_or_else(|p| p.into_inner()) = h;
        if !self.state.healthy.swap(true, Ordering::SeqCst) {
            tracing::info!(seq = h.seq, "audit store writable again");
        }
        let mut written = 0;
        for (i, p) in self.pending.drain(..).enumerate() {
            written += p.size;
            if let Some(r) = p.reply {
                let _ = r.send(Ok(first + i as u64));
            }
        }
        self.state.queued.fetch_sub(written, Ordering::SeqCst);
        tracing::trace!(
            elapsed_us = t0.elapsed().as_micros() as u64,
            seq = h.seq,
            "audit batch committed"
        );
    }

    /// A write failed: the events stay queued for the next try; those
    /// waiting for their commit learn that it failed.
    fn failed(&mut self, error: String) {
        self.conn = None;
        if self.state.healthy.swap(false, Ordering::SeqCst) {
            tracing::error!(error = %error, queued = self.pending.len(), "audit store cannot write; keys are withheld until it can");
        }
        for p in self.pending.iter_mut() {
            if let Some(r) = p.reply.take() {
                let _ = r.send(Err(AuditError::Write(error.clone())));
            }
        }
    }

    /// The stored trail is not the one written: nothing more is appended
    /// to it or signed over it, for the life of this process.
    fn refuse_trail(&mut self, m: TrailMismatch) {
        tracing::error!(
            first_seq = m.seq,
            problem = %m.what,
            "the audit trail differs from the one this server wrote: exports are refused \
             until it is restored or a new trail is started (docs/AUDIT.md, \"When the trail \
             is not the one written\")"
        );
        self.state.metrics.audit_trail_mismatches.inc();
        self.state.healthy.store(false, Ordering::SeqCst);
        let _ = self.state.mismatch.set(m);
    }

    /// Refuses every queued event: the trail cannot take them.
    fn drop_pending(&mut self) {
        let Some(m) = self.state.mismatch.get().cloned() else {
            return;
        };
        let mut dropped = 0;
        for p in self.pending.drain(..) {
            dropped += p.size;
            tracing::error!(
                event = %serde_json::to_string(&p.event).unwrap_or_default(),
                "audit event not written: the trail is refused"
            );
            if let Some(r) = p.reply {
                let _ = r.send(Err(AuditError::Mismatch(m.clone())));
            }
        }
        self.state.queued.fetch_sub(dropped, Ordering::SeqCst);
    }

    fn signer_key(&self) -> Option<String> {
        self.config
            .signer
            .as_ref()
            .map(CheckpointSigner::public_hex)
    }

    /// Verifies the stored chain from the last checkpoint to the head, then
    /// signs and emits a checkpoint of the head. Never signs over a chain
    /// it has not verified.
    fn checkpoint(&mut self, last: bool) -> Option<Checkpoint> {
        if self.state.mismatch.get().is_some() {
            return None;
        }
        let conn = self.conn.as_ref()?;
        if let Err(m) = integrity::verify_since(conn, &self.verified, &self.head) {
            self.refuse_trail(m);
            self.drop_pending();
            return None;
        }
        self.verified = self.head;
        self.recent.clear();
        self.last_checkpoint_seq = Some(self.head.seq);
        let c = Checkpoint::new(&self.head, self.config.signer.as_ref(), last);
        tracing::info!(
            log_id = %c.log_id,
            seq = c.seq,
            head = %c.head_hash,
            ts = %c.ts,
            r#final = c.is_final,
            public_key = c.public_key.as_deref().unwrap_or(""),
            signature = c.signature.as_deref().unwrap_or(""),
            "audit checkpoint"
        );
        if let Some(file) = &self.config.file
            && let Err(e) = c.append_to(file)
        {
            tracing::error!(error = %e, "cannot write the checkpoint file");
        }
        Some(c)
    }

    /// At a clean stop: a final checkpoint, which a restart holds the trail
    /// to exactly; events that could not be written are said to be lost.
    fn stop(&mut self) {
        if !self.pending.is_empty() {
            tracing::error!(
                lost = self.pending.len(),
                "audit store unwritable at shutdown; events not written"
            );
            return;
        }
        self.checkpoint(true);
    }
}
