//! The SQLite audit database: its schema, opening it for writing or
//! reading, and appending a batch of events to the chain.

use super::Event;
use super::chain::{Head, event_hash, genesis_hash};
use super::checkpoint::{Checkpoint, CheckpointSigner};
pub use super::error::AuditError;
use super::error::TrailMismatch;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A store's answer when it may find the stored trail is not one this
/// writer can continue: the outer error is a failed write (retried), the
/// inner one a refused trail (for good).
pub(super) type Checked<T> = Result<Result<T, TrailMismatch>, AuditError>;

/// Events written in one append.
pub(super) struct Appended {
    /// The last event written.
    pub head: Head,
    /// The sequence number of the first event written.
    pub first: u64,
    /// Each written event's hash, in order.
    pub hashes: Vec<[u8; 32]>,
}

/// Where the writer keeps the trail: one SQLite file of its own, or a
/// PostgreSQL database shared by replicas (`super::pg`). The writer's
/// logic (queue, retries, refusal, checkpoints) is the same over both.
pub(super) trait Store {
    /// Appends `events` after the stored tail, once the stored chain has
    /// been held to `head`, the last head this writer knew. `recent` are
    /// (seq, hash) of the events it wrote since its last checkpoint.
    fn append(
        &mut self,
        head: &Head,
        recent: &VecDeque<(u64, [u8; 32])>,
        events: &[&Event],
    ) -> Checked<Appended>;

    /// Verifies the stored chain from `verified` through `head` (to the
    /// stored tail, for a shared trail) and makes a checkpoint of where it
    /// ends; returns that head and the checkpoint.
    fn checkpoint(
        &mut self,
        verified: &Head,
        head: &Head,
        signer: Option<&CheckpointSigner>,
        is_final: bool,
    ) -> Checked<(Head, Checkpoint)>;

    /// Whether a clean stop ends the trail (a final checkpoint): not for a
    /// trail other replicas go on writing.
    fn writes_final(&self) -> bool {
        true
    }

    /// How often `sweep` is due, for stores that have one.
    fn sweep_every(&self) -> Option<Duration> {
        None
    }

    /// Housekeeping between appends (closing the calls of replicas that
    /// died); the events written, if any.
    fn sweep(&mut self, _head: &Head) -> Checked<Option<Appended>> {
        Ok(Ok(None))
    }
}

/// The SQLite trail: one file, one writer.
pub(super) struct SqliteStore {
    /// `None` after a failed write, until the file can be reopened.
    conn: Option<Connection>,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed) the trail at `path`, holds it to the last
    /// checkpoint of `file` (a refusal is the inner error) and returns it
    /// with its head.
    pub(super) fn open(
        path: &Path,
        file: Option<&Path>,
        our_key: Option<String>,
    ) -> Result<(Self, Head, Option<TrailMismatch>), AuditError> {
        let (conn, head) = init(path)?;
        let refused = match super::integrity::check_at_start(&conn, &head, file, our_key) {
            Ok(()) => None,
            Err(AuditError::Mismatch(m)) => Some(m),
            Err(e) => return Err(e),
        };
        let store = Self {
            conn: Some(conn),
            path: path.to_path_buf(),
        };
        Ok((store, head, refused))
    }

    fn conn(&mut self) -> Result<&mut Connection, AuditError> {
        if self.conn.is_none() {
            // Reopen after a failure: the fault may have needed it. The
            // reopened trail must still end at the writer's head.
            self.conn = Some(open_rw(&self.path).map_err(|e| AuditError::Write(e.to_string()))?);
        }
        Ok(self.conn.as_mut().expect("just opened"))
    }
}

impl Store for SqliteStore {
    fn append(
        &mut self,
        head: &Head,
        recent: &VecDeque<(u64, [u8; 32])>,
        events: &[&Event],
    ) -> Checked<Appended> {
        let conn = self.conn()?;
        match append(conn, head, events) {
            Ok(Ok((h, hashes))) => Ok(Ok(Appended {
                head: h,
                first: head.seq + 1,
                hashes,
            })),
            Ok(Err(found)) => {
                let recent: Vec<(u64, [u8; 32])> = recent.iter().copied().collect();
                Ok(Err(super::integrity::locate(conn, head, &recent, found)))
            }
            Err(e) => {
                self.conn = None;
                Err(AuditError::Write(e.to_string()))
            }
        }
    }

    fn checkpoint(
        &mut self,
        verified: &Head,
        head: &Head,
        signer: Option<&CheckpointSigner>,
        is_final: bool,
    ) -> Checked<(Head, Checkpoint)> {
        let conn = self.conn()?;
        if let Err(m) = super::integrity::verify_since(conn, verified, head) {
            return Ok(Err(m));
        }
        Ok(Ok((*head, Checkpoint::new(head, signer, is_final))))
    }
}

pub(super) const SCHEMA: &str = "
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

pub(super) fn open_rw(path: &Path) -> Result<Connection, rusqlite::Error> {
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
        return Err(AuditError::NotATrail(path.into()));
    }
    Ok(conn)
}

fn read_head(conn: &Connection) -> Result<Head, AuditError> {
    let log_hex: String =
        conn.query_row("SELECT log_id FROM audit_meta LIMIT 1", [], |r| r.get(0))?;
    let mut log_id = [0u8; 16];
    hex::decode_to_slice(&log_hex, &mut log_id).map_err(|_| {
        AuditError::Corrupt(format!("audit_meta holds a malformed log id {log_hex:?}"))
    })?;
    let last = stored_tail(conn)?;
    Ok(match last {
        None => Head {
            log_id,
            seq: 0,
            hash: genesis_hash(&log_id),
        },
        Some((seq, h)) => {
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&h, &mut hash).map_err(|_| {
                AuditError::Corrupt(format!("event {seq} holds a malformed hash {h:?}"))
            })?;
            Head { log_id, seq, hash }
        }
    })
}

/// Opens (creating if needed) the trail at `path` for writing, and its head.
pub(super) fn init(path: &Path) -> Result<(Connection, Head), AuditError> {
    let open_err = |e: rusqlite::Error| AuditError::Open {
        path: path.into(),
        message: e.to_string(),
    };
    let conn = open_rw(path).map_err(open_err)?;
    // Never turn another database (say, the case database) into a trail.
    let foreign: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table' \
             AND name NOT IN ('audit_meta', 'audit_events')",
            [],
            |r| r.get(0),
        )
        .map_err(open_err)?;
    if foreign > 0 {
        return Err(AuditError::NotATrail(path.into()));
    }
    conn.execute_batch(SCHEMA).map_err(open_err)?;
    let has_meta: bool = conn.query_row("SELECT count(*) > 0 FROM audit_meta", [], |r| r.get(0))?;
    if !has_meta {
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id).map_err(|e| AuditError::Open {
            path: path.into(),
            message: format!("no randomness for the log id: {e}"),
        })?;
        conn.execute(
            "INSERT INTO audit_meta (log_id, created_at, format) VALUES (?1, ?2, 1)",
            params![hex::encode(id), super::now_rfc3339()],
        )?;
    }
    let head = read_head(&conn)?;
    Ok((conn, head))
}

/// The last event stored: its sequence number and hash (hex).
pub(super) fn stored_tail(conn: &Connection) -> rusqlite::Result<Option<(u64, String)>> {
    conn.query_row(
        "SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1",
        [],
        |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
    )
    .optional()
}

/// Appends `events` after `head` in one transaction, first checking that
/// the stored trail still ends at `head`. `Ok(Err(tail))` when it does not:
/// nothing was written, and `tail` is where the stored trail ends.
#[allow(clippy::type_complexity)]
pub(super) fn append(
    conn: &mut Connection,
    head: &Head,
    events: &[&Event],
) -> rusqlite::Result<Result<(Head, Vec<[u8; 32]>), Option<(u64, String)>>> {
    // Immediate: the write lock first (waiting out a busy writer), so the
    // tail read below is still the tail when the events go in. A deferred
    // transaction that has read cannot wait for the lock: SQLite refuses
    // the upgrade at once.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let tail = stored_tail(&tx)?;
    let ours = (head.seq > 0).then(|| (head.seq, hex::encode(head.hash)));
    if tail != ours {
        return Ok(Err(tail));
    }
    let mut h = *head;
    let mut hashes = Vec::with_capacity(events.len());
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
            hashes.push(hash);
        }
    }
    tx.commit()?;
    Ok(Ok((h, hashes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditWriter, WriterConfig};

    #[test]
    fn a_database_with_other_tables_is_never_made_a_trail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cases.db");
        Connection::open(&p)
            .unwrap()
            .execute_batch("CREATE TABLE cases (id TEXT PRIMARY KEY);")
            .unwrap();
        let Err(err) = AuditWriter::start(&p, "test", WriterConfig::default()) else {
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
        let w = AuditWriter::start(&p, "test", WriterConfig::default()).unwrap();
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
