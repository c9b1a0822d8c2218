//! The audit database and its single writer thread. Callers enqueue events
//! without blocking; those that must fail closed await the commit. Events
//! that could not be written stay queued and are retried until they are.

use super::Event;
use super::chain::{event_hash, genesis_hash};
use super::checkpoint::{Checkpoint, CheckpointSigner};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_meta (
    log_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    format INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_events (
    seq INTEGER PRIMARY KEY,
    ts TEXT NOT NULL,
    kind TEXT NOT NULL,
    request_id TEXT NOT NULL,
    method TEXT,
    principal TEXT,
    on_behalf_of TEXT,
    peer TEXT,
    tls_identity TEXT,
    case_id TEXT,
    export_id TEXT,
    purpose TEXT,
    code TEXT,
    detail TEXT,
    instance TEXT NOT NULL,
    version TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_events_case ON audit_events(case_id);
CREATE INDEX IF NOT EXISTS audit_events_request ON audit_events(request_id);
CREATE TRIGGER IF NOT EXISTS audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_events_no_replace BEFORE INSERT ON audit_events
WHEN EXISTS (SELECT 1 FROM audit_events WHERE seq = NEW.seq)
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_meta_single_row BEFORE INSERT ON audit_meta
WHEN EXISTS (SELECT 1 FROM audit_meta)
BEGIN SELECT RAISE(ABORT, 'audit_meta holds one row'); END;
CREATE TRIGGER IF NOT EXISTS audit_meta_no_update BEFORE UPDATE ON audit_meta
BEGIN SELECT RAISE(ABORT, 'audit_meta is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_meta_no_delete BEFORE DELETE ON audit_meta
BEGIN SELECT RAISE(ABORT, 'audit_meta is append-only'); END;
";

/// Most events kept for retry while the store cannot write.
const MAX_PENDING: usize = 100_000;
/// How often queued events are retried while the store is failing.
const RETRY_EVERY: Duration = Duration::from_millis(500);

/// Why the trail could not be opened or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The database cannot be opened or created.
    #[error("cannot open the audit database {path}: {message}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A write failed; the event stays queued and is retried.
    #[error("the audit store cannot write: {0}")]
    Write(String),
    /// A list filter is malformed.
    #[error("{0}")]
    BadFilter(String),
    /// The writer is gone (shutting down).
    #[error("the audit writer has stopped")]
    Stopped,
}

/// The last committed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The 16 random bytes naming this log.
    pub log_id: [u8; 16],
    /// Sequence number of the last committed event; 0 for an empty log.
    pub seq: u64,
    /// Hash of the last committed event; the genesis hash for an empty log.
    pub hash: [u8; 32],
}

type Reply = oneshot::Sender<Result<u64, AuditError>>;

enum Cmd {
    Append(Box<Event>, Option<Reply>),
    Checkpoint(oneshot::Sender<Option<Checkpoint>>),
    Shutdown,
}

/// Cheap to clone; shared by every call.
#[derive(Clone)]
pub struct AuditHandle {
    tx: mpsc::Sender<Cmd>,
    healthy: Arc<AtomicBool>,
    head: Arc<Mutex<Head>>,
    instance: Arc<str>,
}

impl std::fmt::Debug for AuditHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditHandle").finish_non_exhaustive()
    }
}

impl AuditHandle {
    fn stamp(&self, mut e: Event) -> Box<Event> {
        e.instance = self.instance.to_string();
        Box::new(e)
    }

    /// Queues an event; never blocks. It is written even if nobody waits.
    pub fn record(&self, e: Event) {
        if self.tx.send(Cmd::Append(self.stamp(e), None)).is_err() {
            tracing::error!("audit writer stopped: event not written");
        }
    }

    /// Queues an event and returns a receiver for its commit.
    pub fn record_acked(&self, e: Event) -> oneshot::Receiver<Result<u64, AuditError>> {
        let (tx, rx) = oneshot::channel();
        if let Err(mpsc::SendError(Cmd::Append(_, Some(reply)))) =
            self.tx.send(Cmd::Append(self.stamp(e), Some(tx)))
        {
            let _ = reply.send(Err(AuditError::Stopped));
        }
        rx
    }

    /// Queues an event and waits for its commit (sequence number).
    pub async fn commit(&self, e: Event) -> Result<u64, AuditError> {
        self.record_acked(e)
            .await
            .unwrap_or(Err(AuditError::Stopped))
    }

    /// False while the last write attempt failed.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// The last committed event.
    pub fn head(&self) -> Head {
        *self.head.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Emits a checkpoint of the current head now.
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

/// Checkpoint settings for the writer.
pub struct CheckpointConfig {
    /// Interval between periodic checkpoints (skipped if nothing was written).
    pub every: Duration,
    /// JSON-lines file each checkpoint is appended to, if any.
    pub file: Option<PathBuf>,
    /// Key that signs each checkpoint; unsigned when `None`.
    pub signer: Option<CheckpointSigner>,
}

fn open_rw(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")?;
    Ok(conn)
}

/// Opens an audit database for reading (verify, list).
pub fn open_log_read_only(path: &Path) -> Result<Connection, AuditError> {
    if !path.exists() {
        return Err(AuditError::Open {
            path: path.into(),
            message: "no such file".into(),
        });
    }
    let conn =
        Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| {
            AuditError::Open {
                path: path.into(),
                message: e.to_string(),
            }
        })?;
    let is_audit = conn
        .query_row(
            "SELECT count(*) = 2 FROM sqlite_schema WHERE type = 'table' \
             AND name IN ('audit_meta', 'audit_events')",
            [],
            |r| r.get::<_, bool>(0),
        )
        .unwrap_or(false);
    if !is_audit {
        return Err(AuditError::Open {
            path: path.into(),
            message: "not an audit database (no audit_meta and audit_events tables)".into(),
        });
    }
    Ok(conn)
}

fn read_head(conn: &Connection) -> rusqlite::Result<Head> {
    let log_hex: String =
        conn.query_row("SELECT log_id FROM audit_meta LIMIT 1", [], |r| r.get(0))?;
    let mut log_id = [0u8; 16];
    hex::decode_to_slice(&log_hex, &mut log_id)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let last: Option<(i64, String)> = conn
        .query_row(
            "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match last {
        None => Head {
            log_id,
            seq: 0,
            hash: genesis_hash(&log_id),
        },
        Some((seq, h)) => {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&h, &mut hash)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            Head {
                log_id,
                seq: seq as u64,
                hash,
            }
        }
    })
}

fn init(path: &Path) -> Result<(Connection, Head), rusqlite::Error> {
    let conn = open_rw(path)?;
    // Never turn another database (say, the case database) into a trail.
    let foreign: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' \
         AND name NOT IN ('audit_meta', 'audit_events')",
        [],
        |r| r.get(0),
    )?;
    if foreign > 0 {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_MISMATCH),
            Some("the file holds other tables: it is not an audit database".into()),
        ));
    }
    conn.execute_batch(SCHEMA)?;
    let has_meta: bool = conn.query_row("SELECT count(*) > 0 FROM audit_meta", [], |r| r.get(0))?;
    if !has_meta {
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        conn.execute(
            "INSERT INTO audit_meta (log_id, created_at, format) VALUES (?1, ?2, 1)",
            params![hex::encode(id), super::now_rfc3339()],
        )?;
    }
    let head = read_head(&conn)?;
    Ok((conn, head))
}

fn append(conn: &mut Connection, head: &Head, events: &[&Event]) -> rusqlite::Result<Head> {
    let tx = conn.transaction()?;
    let mut h = *head;
    {
        let mut st = tx.prepare_cached(
            "INSERT INTO audit_events (seq, ts, kind, request_id, method, principal, on_behalf_of, \
             peer, tls_identity, case_id, export_id, purpose, code, detail, instance, version, \
             prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, \
             ?14, ?15, ?16, ?17, ?18)",
        )?;
        for e in events {
            let seq = h.seq + 1;
            let hash = event_hash(seq, &h.hash, e);
            st.execute(params![
                seq as i64,
                e.ts,
                e.kind.as_str(),
                e.request_id,
                e.method,
                e.principal,
                e.on_behalf_of,
                e.peer,
                e.tls_identity,
                e.case_id,
                e.export_id,
                e.purpose,
                e.code,
                e.detail,
                e.instance,
                e.version,
                hex::encode(h.hash),
                hex::encode(hash),
            ])?;
            h.seq = seq;
            h.hash = hash;
        }
    }
    tx.commit()?;
    Ok(h)
}

impl AuditWriter {
    /// Opens (creating if needed) the log and starts the writer thread.
    pub fn start(
        path: &Path,
        instance: &str,
        checkpoints: CheckpointConfig,
    ) -> Result<Self, AuditError> {
        let (conn, head) = init(path).map_err(|e| AuditError::Open {
            path: path.into(),
            message: e.to_string(),
        })?;
        let (tx, rx) = mpsc::channel::<Cmd>();
        let handle = AuditHandle {
            tx,
            healthy: Arc::new(AtomicBool::new(true)),
            head: Arc::new(Mutex::new(head)),
            instance: Arc::from(instance),
        };
        let state = handle.clone();
        let path = path.to_path_buf();
        let join = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer_loop(conn, path, rx, state, checkpoints))
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
    reply: Option<Reply>,
}

fn writer_loop(
    mut conn: Connection,
    path: PathBuf,
    rx: mpsc::Receiver<Cmd>,
    state: AuditHandle,
    cp: CheckpointConfig,
) {
    let mut head = state.head();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut next_checkpoint = Instant::now() + cp.every;
    let mut last_checkpoint_seq = None;
    let mut disconnected = false;
    let mut broken = false;
    loop {
        let wait = if pending.is_empty() {
            next_checkpoint.saturating_duration_since(Instant::now())
        } else {
            RETRY_EVERY
        };
        let mut cmds = Vec::new();
        match rx.recv_timeout(wait) {
            Ok(c) => cmds.push(c),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => disconnected = true,
        }
        while cmds.len() < 1024 {
            match rx.try_recv() {
                Ok(c) => cmds.push(c),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    disconnected = true;
                    break;
                }
            }
        }
        let mut checkpoint_asks = Vec::new();
        for c in cmds {
            match c {
                Cmd::Append(event, reply) => {
                    if pending.len() >= MAX_PENDING {
                        tracing::error!(
                            kind = event.kind.as_str(),
                            "audit queue full: event dropped"
                        );
                        if let Some(r) = reply {
                            let _ = r.send(Err(AuditError::Write("queue full".into())));
                        }
                        continue;
                    }
                    pending.push_back(Pending { event, reply });
                }
                Cmd::Checkpoint(r) => checkpoint_asks.push(r),
                Cmd::Shutdown => disconnected = true,
            }
        }
        if !pending.is_empty() {
            if broken {
                // Reopen after a failure: the fault may have needed it.
                match open_rw(&path).and_then(|c| read_head(&c).map(|h| (c, h))) {
                    Ok((c, h)) => {
                        conn = c;
                        head = h;
                        broken = false;
                    }
                    Err(e) => tracing::warn!(error = %e, "audit store still unavailable"),
                }
            }
            let t0 = Instant::now();
            let events: Vec<&Event> = pending.iter().map(|p| &*p.event).collect();
            let result = if broken {
                Err(rusqlite::Error::InvalidQuery)
            } else {
                append(&mut conn, &head, &events)
            };
            let m = crate::metrics::metrics();
            m.audit_write_seconds.observe(t0.elapsed().as_secs_f64());
            match result {
                Ok(h) => {
                    let first = head.seq + 1;
                    head = h;
                    *state.head.lock().unwrap_or_else(|p| p.into_inner()) = h;
                    if !state.healthy.swap(true, Ordering::SeqCst) {
                        tracing::info!(seq = h.seq, "audit store writable again");
                    }
                    for (i, p) in pending.drain(..).enumerate() {
                        if let Some(r) = p.reply {
                            let _ = r.send(Ok(first + i as u64));
                        }
                    }
                    tracing::trace!(
                        elapsed_us = t0.elapsed().as_micros() as u64,
                        seq = h.seq,
                        "audit batch committed"
                    );
                }
                Err(e) => {
                    broken = true;
                    m.audit_write_failures.inc();
                    if state.healthy.swap(false, Ordering::SeqCst) {
                        tracing::error!(error = %e, queued = pending.len(), "audit store cannot write; keys are withheld until it can");
                    }
                    for p in pending.iter_mut() {
                        if let Some(r) = p.reply.take() {
                            let _ = r.send(Err(AuditError::Write(e.to_string())));
                        }
                    }
                }
            }
        }
        let due = Instant::now() >= next_checkpoint;
        if due || !checkpoint_asks.is_empty() || (disconnected && pending.is_empty()) {
            let c = (last_checkpoint_seq != Some(head.seq) || !checkpoint_asks.is_empty())
                .then(|| emit_checkpoint(&head, &cp));
            if c.is_some() {
                last_checkpoint_seq = Some(head.seq);
            }
            for r in checkpoint_asks {
                let _ = r.send(c.clone().flatten());
            }
            next_checkpoint = Instant::now() + cp.every;
        }
        if disconnected && (pending.is_empty() || broken) {
            if !pending.is_empty() {
                tracing::error!(
                    lost = pending.len(),
                    "audit store unwritable at shutdown; events not written"
                );
            }
            return;
        }
    }
}

fn emit_checkpoint(head: &Head, cp: &CheckpointConfig) -> Option<Checkpoint> {
    let c = Checkpoint::new(head, cp.signer.as_ref());
    tracing::info!(
        log_id = %c.log_id,
        seq = c.seq,
        head = %c.head_hash,
        ts = %c.ts,
        public_key = c.public_key.as_deref().unwrap_or(""),
        signature = c.signature.as_deref().unwrap_or(""),
        "audit checkpoint"
    );
    if let Some(file) = &cp.file
        && let Err(e) = c.append_to(file)
    {
        tracing::error!(error = %e, "cannot write the checkpoint file");
    }
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_with_other_tables_is_never_made_a_trail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cases.db");
        Connection::open(&p)
            .unwrap()
            .execute_batch("CREATE TABLE cases (id TEXT PRIMARY KEY);")
            .unwrap();
        let Err(err) = AuditWriter::start(
            &p,
            "test",
            CheckpointConfig {
                every: Duration::from_secs(60),
                file: None,
                signer: None,
            },
        ) else {
            panic!("a foreign database was accepted as a trail");
        };
        assert!(err.to_string().contains("not an audit database"), "{err}");
        let err = open_log_read_only(&p).expect_err("refused");
        assert!(err.to_string().contains("not an audit database"), "{err}");
        assert!(err.to_string().contains("cases.db"), "{err}");
    }

    #[test]
    fn list_filters_must_be_rfc3339() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.db");
        let w = AuditWriter::start(
            &p,
            "test",
            CheckpointConfig {
                every: Duration::from_secs(60),
                file: None,
                signer: None,
            },
        )
        .unwrap();
        w.handle().record(super::super::Event::new(
            super::super::Kind::ServerStart,
            "-",
        ));
        w.shutdown();
        let conn = open_log_read_only(&p).unwrap();
        let bad = super::super::ListFilter {
            since: Some("yesterday".into()),
            ..Default::default()
        };
        let err = super::super::list_events(&conn, &bad).expect_err("refused");
        assert!(matches!(err, AuditError::BadFilter(_)), "{err}");
        let lower = super::super::ListFilter {
            since: Some("2000-01-01t00:00:00z".into()),
            ..Default::default()
        };
        // Lower-case separators are RFC 3339 too, and match like upper case.
        let all = super::super::list_events(&conn, &lower).unwrap();
        assert!(!all.is_empty());
    }
}
