//! The trail's single writer thread and the handle every call holds.
//! Callers enqueue events without blocking; those that must fail closed
//! await the commit. Events that could not be written stay queued, within a
//! byte bound, and are retried until they are. The writer only ever appends
//! to the trail it left (with a shared PostgreSQL trail, after the events
//! of other replicas it has verified): a stored trail that differs from it
//! (a cut tail, a forged or rewritten event) stops every write for good
//! (`integrity`, `pg`). Where the trail is kept is the `store::Store` seam.

use super::Event;
use super::chain::Head;
use super::checkpoint::{Checkpoint, CheckpointSigner};
use super::integrity::TrailMismatch;
use super::store::{Appended, AuditError, SqliteStore, Store};
use crate::metrics::Metrics;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
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

type Reply = oneshot::Sender<Result<Committed, AuditError>>;

/// Where a committed event sits in the chain: what a receipt names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The trail's log id.
    pub log_id: [u8; 16],
    /// The event's sequence number.
    pub seq: u64,
    /// The event's hash.
    pub hash: [u8; 32],
}

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
    queued: prometheus_client::metrics::gauge::Gauge,
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
        let before = self.queued.inc_by(size as i64) as u64;
        if before + size > self.max_queued {
            self.queued.dec_by(size as i64);
            self.metrics.audit_events_refused.inc();
            return refuse(AuditError::QueueFull(self.max_queued), &e, reply);
        }
        if let Err(mpsc::SendError(Cmd::Append(e, size, reply))) =
            self.tx.send(Cmd::Append(Box::new(e), size, reply))
        {
            self.queued.dec_by(size as i64);
            refuse(AuditError::Stopped, &e, reply);
        }
    }

    /// Queues an event; never blocks. It is written even if nobody waits.
    pub fn record(&self, e: Event) {
        self.enqueue(e, None);
    }

    /// Queues an event and returns a receiver for its commit.
    pub fn record_acked(&self, e: Event) -> oneshot::Receiver<Result<Committed, AuditError>> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(e, Some(tx));
        rx
    }

    /// Queues an event and waits for its commit (sequence number).
    pub async fn commit(&self, e: Event) -> Result<Committed, AuditError> {
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
        self.mismatch.get().is_none() && (self.queued.get() as u64) + headroom < self.max_queued
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
        let path = path.to_path_buf();
        let file = config.file.clone();
        let key = config.signer.as_ref().map(CheckpointSigner::public_hex);
        Self::launch(instance, config, move || {
            let (store, head, refused) = SqliteStore::open(&path, file.as_deref(), key)?;
            Ok((Box::new(store) as Box<dyn Store>, head, refused))
        })
    }

    /// Opens a trail in PostgreSQL shared with other replicas (creating its
    /// tables when the role may, docs/AUDIT.md "The PostgreSQL trail"),
    /// holds it to its last checkpoint stored there, closes the calls of
    /// replicas that died, and starts the writer thread.
    pub fn start_pg(
        connector: crate::db::PgConnector,
        instance: &str,
        config: WriterConfig,
    ) -> Result<Self, AuditError> {
        let key = config.signer.as_ref().map(CheckpointSigner::public_hex);
        let instance_owned = instance.to_string();
        Self::launch(instance, config, move || {
            let (store, head, refused) = super::pg::PgStore::open(connector, &instance_owned, key)?;
            Ok((Box::new(store) as Box<dyn Store>, head, refused))
        })
    }

    /// Starts the writer thread over the store `open` makes on it (a
    /// PostgreSQL store runs its own runtime there), and waits for it.
    // Long: the thread's start and the handshake that reports it.
    fn launch(
        instance: &str,
        config: WriterConfig,
        open: impl FnOnce() -> Result<(Box<dyn Store>, Head, Option<TrailMismatch>), AuditError>
        + Send
        + 'static,
    ) -> Result<Self, AuditError> {
        let (tx, rx) = mpsc::channel::<Cmd>();
        let handle = AuditHandle {
            tx,
            healthy: Arc::new(AtomicBool::new(true)),
            mismatch: Arc::default(),
            queued: config.metrics.audit_queued_bytes.clone(),
            max_queued: config.max_queued_bytes,
            metrics: config.metrics.clone(),
            head: Arc::new(Mutex::new(Head {
                log_id: [0; 16],
                seq: 0,
                hash: [0; 32],
            })),
            instance: Arc::from(instance),
        };
        let state = handle.clone();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), AuditError>>();
        let join = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let (store, head, refused) = match open() {
                    Ok(o) => o,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                *state.head.lock().unwrap_or_else(|p| p.into_inner()) = head;
                let now = Instant::now();
                let mut writer = Writer {
                    next_sweep: store.sweep_every().map(|every| now + every),
                    store,
                    head,
                    verified: head,
                    recent: VecDeque::new(),
                    pending: VecDeque::new(),
                    next_checkpoint: now + config.every,
                    last_checkpoint_seq: None,
                    config,
                    state,
                };
                if let Some(m) = refused {
                    writer.refuse_trail(m);
                }
                let _ = ready_tx.send(Ok(()));
                writer.run(rx)
            })
            .map_err(|e| AuditError::Open {
                path: PathBuf::new(),
                message: format!("cannot start the writer thread: {e}"),
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = join.join();
                return Err(e);
            }
            Err(_) => {
                let _ = join.join();
                return Err(AuditError::Stopped);
            }
        }
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
    store: Box<dyn Store>,
    /// When the store's housekeeping is next due, if it has any.
    next_sweep: Option<Instant>,
    /// The last event this writer committed, or the stored tail it last
    /// verified (a shared trail grows by other replicas' events too).
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
            if let Some(at) = self.next_sweep
                && Instant::now() >= at
            {
                self.sweep();
            }
            let failing = !self.state.healthy.load(Ordering::SeqCst);
            if stopping && (self.pending.is_empty() || failing) {
                self.stop();
                return;
            }
        }
    }

    /// Waits for commands (at most until the next checkpoint or retry) and
    /// takes what else is queued; true when the handles are all gone.
    fn receive(&self, rx: &mpsc::Receiver<Cmd>) -> (Vec<Cmd>, bool) {
        let next = match self.next_sweep {
            Some(s) => s.min(self.next_checkpoint),
            None => self.next_checkpoint,
        };
        let wait = if self.pending.is_empty() {
            next.saturating_duration_since(Instant::now())
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
        let t0 = Instant::now();
        let events: Vec<&Event> = self.pending.iter().map(|p| &*p.event).collect();
        let result = self.store.append(&self.head, &self.recent, &events);
        let m = &self.state.metrics;
        m.audit_write_seconds.observe(t0.elapsed().as_secs_f64());
        match result {
            Ok(Ok(a)) => {
                let (first, hashes) = (a.first, a.hashes.clone());
                self.advance(a);
                self.reply_committed(first, &hashes, t0);
            }
            Ok(Err(mismatch)) => {
                self.refuse_trail(mismatch);
                self.drop_pending();
            }
            Err(e) => {
                m.audit_write_failures.inc();
                tracing::warn!(error = %e, "audit store cannot write");
                self.failed(e.to_string());
            }
        }
    }

    /// The store's housekeeping; what it wrote moves the head.
    fn sweep(&mut self) {
        let Some(every) = self.store.sweep_every() else {
            return;
        };
        self.next_sweep = Some(Instant::now() + every);
        if self.state.mismatch.get().is_some() {
            return;
        }
        match self.store.sweep(&self.head) {
            Ok(Ok(Some(a))) => self.advance(a),
            Ok(Ok(None)) => {}
            Ok(Err(m)) => {
                self.refuse_trail(m);
                self.drop_pending();
            }
            Err(e) => tracing::warn!(error = %e, "audit housekeeping failed; retried later"),
        }
    }

    /// Moves the head past events just written.
    fn advance(&mut self, a: Appended) {
        for (i, hash) in a.hashes.into_iter().enumerate() {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back((a.first + i as u64, hash));
        }
        self.head = a.head;
        *self.state.head.lock().unwrap_or_else(|p| p.into_inner()) = a.head;
    }

    /// The pending events were committed from sequence number `first` on.
    fn reply_committed(&mut self, first: u64, hashes: &[[u8; 32]], t0: Instant) {
        let h = self.head;
        if !self.state.healthy.swap(true, Ordering::SeqCst) {
            tracing::info!(seq = h.seq, "audit store writable again");
        }
        let mut written = 0;
        for (i, p) in self.pending.drain(..).enumerate() {
            written += p.size;
            if let Some(r) = p.reply {
                let _ = r.send(Ok(Committed {
                    log_id: h.log_id,
                    seq: first + i as u64,
                    hash: hashes.get(i).copied().unwrap_or_default(),
                }));
            }
        }
        self.state.queued.dec_by(written as i64);
        tracing::trace!(
            elapsed_us = t0.elapsed().as_micros() as u64,
            seq = h.seq,
            "audit batch committed"
        );
    }

    /// A write failed: the events stay queued for the next try; those
    /// waiting for their commit learn that it failed.
    fn failed(&mut self, error: String) {
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
        self.state.queued.dec_by(dropped as i64);
    }

    /// Verifies the stored chain from the last checkpoint to the head, then
    /// signs and emits a checkpoint of the head. Never signs over a chain
    /// it has not verified.
    fn checkpoint(&mut self, last: bool) -> Option<Checkpoint> {
        if self.state.mismatch.get().is_some() {
            return None;
        }
        let is_final = last && self.store.writes_final();
        let signer = self.config.signer.as_ref();
        let (head, c) = match self
            .store
            .checkpoint(&self.verified, &self.head, signer, is_final)
        {
            Ok(Ok(done)) => done,
            Ok(Err(m)) => {
                self.refuse_trail(m);
                self.drop_pending();
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot make a checkpoint now");
                return None;
            }
        };
        self.head = head;
        *self.state.head.lock().unwrap_or_else(|p| p.into_inner()) = head;
        self.verified = head;
        self.recent.clear();
        self.last_checkpoint_seq = Some(head.seq);
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
