//! The custody trail in PostgreSQL, one hash chain shared by several
//! replicas (docs/AUDIT.md, "The PostgreSQL trail"). Appends are serialized
//! by a transaction-level advisory lock; before each append a replica holds
//! the events other replicas wrote since the head it last knew to the
//! chain. Each replica holds a session-level advisory lock, its liveness
//! mark, which PostgreSQL releases when its process dies; the survivors
//! close the calls the dead one left open.

use super::chain::{Head, event_hash, genesis_hash};
use super::checkpoint::{Checkpoint, CheckpointSigner};
use super::error::{AuditError, TrailMismatch};
use super::integrity::{check_step, mismatch};
use super::store::{Appended, Checked, Store};
use super::{Event, Kind};
use crate::db::PgConnector;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use tokio_postgres::{Client, Row};
use tokio_stream::StreamExt;

/// The two keys of the transaction-level advisory lock every append (and
/// checkpoint, and closing of dead replicas' calls) takes: "case", "audt".
const APPEND_LOCK: (i32, i32) = (0x6361_7365, 0x6175_6474);
/// How often a replica looks for calls of replicas that died.
pub const SWEEP_EVERY: Duration = Duration::from_secs(3);

/// The trail's tables, their indexes and the triggers that keep them
/// append-only for every role (`case-export audit init` runs it).
pub const PG_SCHEMA: &str = "
CREATE TABLE audit_meta (
    log_id TEXT NOT NULL,
    created_at TEXT NOT NULL,
    format INTEGER NOT NULL
);
CREATE TABLE audit_events (
    seq BIGINT PRIMARY KEY,
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
CREATE INDEX audit_events_case ON audit_events (case_id);
CREATE INDEX audit_events_request ON audit_events (request_id);
CREATE TABLE audit_checkpoints (
    log_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    head_hash TEXT NOT NULL,
    ts TEXT NOT NULL,
    public_key TEXT,
    signature TEXT,
    is_final BOOLEAN NOT NULL,
    instance TEXT NOT NULL
);
CREATE INDEX audit_checkpoints_seq ON audit_checkpoints (seq);
CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END $$;
CREATE FUNCTION audit_meta_single_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM audit_meta) THEN
        RAISE EXCEPTION 'audit_meta holds one row';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_meta_append_only BEFORE UPDATE OR DELETE ON audit_meta
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_meta_no_truncate BEFORE TRUNCATE ON audit_meta
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_meta_one_row BEFORE INSERT ON audit_meta
    FOR EACH ROW EXECUTE FUNCTION audit_meta_single_row();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
";

/// The trail's tables, for grants.
pub const PG_TABLES: [&str; 3] = ["audit_meta", "audit_events", "audit_checkpoints"];

const COLUMNS: &str = super::verify::COLUMNS;

/// A PostgreSQL error's own message (the driver's `Display` says only
/// "db error"). Never holds a password: connection strings are not echoed.
pub(super) fn pg_msg(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{}: {}", d.severity(), d.message()),
        None => e.to_string(),
    }
}

fn write_err(e: tokio_postgres::Error) -> AuditError {
    AuditError::Write(pg_msg(&e))
}

fn open_err(connector: &PgConnector, message: impl Into<String>) -> AuditError {
    AuditError::Database {
        db: connector.url().to_string(),
        message: message.into(),
    }
}

/// The liveness key of an instance: its id's hash, in the advisory
/// locks' 64-bit space (the append lock uses the two-key space).
fn liveness_key(instance: &str) -> i64 {
    let mut h = Sha256::new();
    h.update(b"case-export liveness v1\0");
    h.update(instance.as_bytes());
    let d = h.finalize();
    i64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// One stored event: seq, event, kind as stored, previous-hash, hash.
type StoredEvent = (u64, Event, String, String, String);

fn read_row(r: &Row) -> Result<StoredEvent, tokio_postgres::Error> {
    let kind: String = r.try_get(2)?;
    Ok((
        r.try_get::<_, i64>(0)? as u64,
        Event {
            ts: r.try_get(1)?,
            kind: Kind::parse(&kind).unwrap_or(Kind::Attempt),
            request_id: r.try_get(3)?,
            method: r.try_get(4)?,
            principal: r.try_get(5)?,
            on_behalf_of: r.try_get(6)?,
            peer: r.try_get(7)?,
            tls_identity: r.try_get(8)?,
            case_id: r.try_get(9)?,
            export_id: r.try_get(10)?,
            purpose: r.try_get(11)?,
            code: r.try_get(12)?,
            detail: r.try_get(13)?,
            instance: r.try_get(14)?,
            version: r.try_get(15)?,
        },
        kind,
        r.try_get(16)?,
        r.try_get(17)?,
    ))
}

/// Creates the trail's tables if there are none (serialized by the append
/// lock, so replicas starting together create them once) and its log id;
/// with `grant`, gives that role what the service needs: SELECT and
/// INSERT. Returns whether the tables were created.
// Long: one locked transaction, from finding the tables to granting.
pub async fn ensure_schema(client: &mut Client, grant: Option<&str>) -> Result<bool, AuditError> {
    let tx = client.transaction().await.map_err(write_err)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&APPEND_LOCK.0, &APPEND_LOCK.1],
    )
    .await
    .map_err(write_err)?;
    let present = tables_present(&tx).await.map_err(write_err)?;
    let created = match present {
        0 => {
            tx.batch_execute(PG_SCHEMA).await.map_err(|e| {
                AuditError::Write(format!(
                    "cannot create the trail's tables ({}): create them as an administrator \
                     with `case-export audit init --db URL --grant ROLE`",
                    pg_msg(&e)
                ))
            })?;
            true
        }
        3 => false,
        _ => {
            return Err(AuditError::Corrupt(
                "the database holds some of the trail's tables (audit_meta, audit_events, \
                 audit_checkpoints) but not all: restore them, or use a new database"
                    .into(),
            ));
        }
    };
    let has_meta: bool = tx
        .query_one("SELECT EXISTS (SELECT 1 FROM audit_meta)", &[])
        .await
        .map_err(write_err)?
        .get(0);
    if !has_meta {
        let mut id = [0u8; 16];
        getrandom::getrandom(&mut id)
            .map_err(|e| AuditError::Write(format!("no randomness for the log id: {e}")))?;
        tx.execute(
            "INSERT INTO audit_meta (log_id, created_at, format) VALUES ($1, $2, 1)",
            &[&hex::encode(id), &super::now_rfc3339()],
        )
        .await
        .map_err(write_err)?;
    }
    if let Some(role) = grant {
        let role = format!("\"{}\"", role.replace('"', "\"\""));
        for t in PG_TABLES {
            tx.batch_execute(&format!("GRANT SELECT, INSERT ON \"{t}\" TO {role}"))
                .await
                .map_err(write_err)?;
        }
    }
    tx.commit().await.map_err(write_err)?;
    Ok(created)
}

async fn read_log_id(client: &impl tokio_postgres::GenericClient) -> Result<[u8; 16], AuditError> {
    let row = client
        .query_opt("SELECT log_id FROM audit_meta LIMIT 1", &[])
        .await
        .map_err(|e| AuditError::Query(pg_msg(&e)))?
        .ok_or_else(|| AuditError::Corrupt("audit_meta holds no log id".into()))?;
    let log_hex: String = row.get(0);
    let mut log_id = [0u8; 16];
    hex::decode_to_slice(&log_hex, &mut log_id).map_err(|_| {
        AuditError::Corrupt(format!("audit_meta holds a malformed log id {log_hex:?}"))
    })?;
    Ok(log_id)
}

async fn stored_hash(
    client: &impl tokio_postgres::GenericClient,
    seq: u64,
) -> Result<Option<String>, AuditError> {
    Ok(client
        .query_opt(
            "SELECT hash FROM audit_events WHERE seq = $1",
            &[&(seq as i64)],
        )
        .await
        .map_err(|e| AuditError::Query(pg_msg(&e)))?
        .map(|r| r.get(0)))
}

async fn stored_tail(client: &impl tokio_postgres::GenericClient) -> Result<u64, AuditError> {
    let row = client
        .query_one("SELECT coalesce(max(seq), 0) FROM audit_events", &[])
        .await
        .map_err(|e| AuditError::Query(pg_msg(&e)))?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Whether the stored event at `head.seq` is still the one `head` names:
/// its stored hash, and its contents hashed again with its stored
/// previous-hash.
async fn still_there(
    client: &impl tokio_postgres::GenericClient,
    head: &Head,
) -> Result<bool, AuditError> {
    let row = client
        .query_opt(
            format!("SELECT {COLUMNS} FROM audit_events WHERE seq = $1").as_str(),
            &[&(head.seq as i64)],
        )
        .await
        .map_err(|e| AuditError::Query(pg_msg(&e)))?;
    let Some(row) = row else { return Ok(false) };
    let (seq, e, _, prev_hex, hash_hex) =
        read_row(&row).map_err(|e| AuditError::Query(pg_msg(&e)))?;
    let mut prev = [0u8; 32];
    if hex::decode_to_slice(&prev_hex, &mut prev).is_err() {
        return Ok(false);
    }
    Ok(hash_hex == hex::encode(head.hash) && event_hash(seq, &prev, &e) == head.hash)
}

/// Walks the stored chain after `from` to its tail, holding each event to
/// its place; the chain must pass through `through` (a head this replica
/// knew) unchanged. Returns the tail.
async fn walk(
    client: &impl tokio_postgres::GenericClient,
    from: &Head,
    through: &Head,
) -> Result<Result<Head, TrailMismatch>, AuditError> {
    if from.seq > 0 && !still_there(client, from).await? {
        return Ok(Err(mismatch(
            from.seq,
            format!(
                "event {} was rewritten or removed since this replica verified it",
                from.seq
            ),
        )));
    }
    let q = format!("SELECT {COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq");
    let from_seq = from.seq as i64;
    let rows = client
        .query_raw(
            q.as_str(),
            [&from_seq as &(dyn tokio_postgres::types::ToSql + Sync)],
        )
        .await
        .map_err(|e| AuditError::Query(pg_msg(&e)))?;
    tokio::pin!(rows);
    let (mut seq, mut prev) = (from.seq, from.hash);
    while let Some(r) = rows.next().await {
        let r = r.map_err(|e| AuditError::Query(pg_msg(&e)))?;
        let (s, e, kind, prev_hex, hash_hex) =
            read_row(&r).map_err(|e| AuditError::Query(pg_msg(&e)))?;
        prev = match check_step(seq + 1, &prev, s, &e, &kind, &prev_hex, &hash_hex) {
            Ok(h) => h,
            Err(m) => return Ok(Err(m)),
        };
        seq = s;
        if seq == through.seq && prev != through.hash {
            return Ok(Err(mismatch(
                seq,
                "the event differs from the one this replica knew (rewritten)",
            )));
        }
    }
    if seq < through.seq {
        return Ok(Err(mismatch(
            seq + 1,
            format!(
                "the trail ends at event {seq} but this replica knew it up to {}: tail cut",
                through.seq
            ),
        )));
    }
    Ok(Ok(Head {
        log_id: from.log_id,
        seq,
        hash: prev,
    }))
}

/// The checkpoints stored in the trail's database, oldest first.
pub async fn read_db_checkpoints(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Vec<Checkpoint>, AuditError> {
    let rows = client
        .query(
            "SELECT log_id, seq, head_hash, ts, public_key, signature, is_final \
             FROM audit_checkpoints ORDER BY seq, ts",
            &[],
        )
        .await
        .map_err(|e| AuditError::Query(pg_msg(&e)))?;
    Ok(rows
        .iter()
        .map(|r| Checkpoint {
            log_id: r.get(0),
            seq: r.get::<_, i64>(1) as u64,
            head_hash: r.get(2),
            ts: r.get(3),
            public_key: r.get(4),
            signature: r.get(5),
            is_final: r.get(6),
        })
        .collect())
}

/// The start check of a shared trail: the whole chain verifies, and the
/// last checkpoint stored with it is signed by `our_key` (when the replica
/// signs) and matches the stored event at its sequence number.
// Long: the start rules in the order docs/AUDIT.md gives them.
async fn check_at_start(
    client: &Client,
    log_id: [u8; 16],
    our_key: Option<&str>,
) -> Result<Result<Head, TrailMismatch>, AuditError> {
    let genesis = Head {
        log_id,
        seq: 0,
        hash: genesis_hash(&log_id),
    };
    let tail = match walk(client, &genesis, &genesis).await? {
        Ok(t) => t,
        Err(m) => return Ok(Err(m)),
    };
    let Some(cp) = read_db_checkpoints(client).await?.pop() else {
        return Ok(Ok(tail));
    };
    let signed = match our_key {
        Some(key) => {
            cp.public_key.as_deref() == Some(key) && cp.verify_signature(Some(key)) == Ok(true)
        }
        None => cp.verify_signature(None).is_ok(),
    };
    if !signed {
        return Ok(Err(mismatch(
            cp.seq,
            "the last checkpoint stored with the trail is not signed by this server's \
             checkpoint key",
        )));
    }
    if cp.log_id != hex::encode(log_id) {
        return Ok(Err(mismatch(
            1,
            format!(
                "the last checkpoint stored with the trail names log {}, not this log {}",
                cp.log_id,
                hex::encode(log_id)
            ),
        )));
    }
    if cp.seq > tail.seq {
        return Ok(Err(mismatch(
            tail.seq + 1,
            format!(
                "the last checkpoint names event {} but the trail ends at {}: tail cut",
                cp.seq, tail.seq
            ),
        )));
    }
    let at_cp = if cp.seq == 0 {
        Some(hex::encode(genesis.hash))
    } else {
        stored_hash(client, cp.seq).await?
    };
    if at_cp.as_deref() != Some(cp.head_hash.as_str()) {
        return Ok(Err(mismatch(
            cp.seq,
            format!("event {}: differs from the last checkpoint", cp.seq),
        )));
    }
    Ok(Ok(tail))
}

/// A call left open by a replica: the replica, and the call's last event
/// (whose request id and fields the closing event carries).
struct OpenCall {
    instance: String,
    last: Event,
}

/// The PostgreSQL store of one replica's writer thread.
pub(super) struct PgStore {
    rt: tokio::runtime::Runtime,
    connector: PgConnector,
    /// The appending connection; `None` after a failure, until reopened.
    client: Option<Client>,
    /// The connection holding this replica's liveness mark; never reopened
    /// (a lost mark refuses the trail for this process).
    _live: Client,
    instance: String,
    live_key: i64,
}

impl PgStore {
    /// Connects, creates the tables when missing and allowed, takes this
    /// replica's liveness mark, holds the trail to its last stored
    /// checkpoint and closes the calls of replicas that are gone
    /// (including this instance's previous run).
    // Long: the start steps in order; each can stop the start.
    pub(super) fn open(
        connector: PgConnector,
        instance: &str,
        our_key: Option<String>,
    ) -> Result<(Self, Head, Option<TrailMismatch>), AuditError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| open_err(&connector, format!("cannot start a runtime: {e}")))?;
        let live_key = liveness_key(instance);
        let (client, live, log_id) = rt.block_on(async {
            let mut client = connector
                .connect()
                .await
                .map_err(|e| open_err(&connector, pg_msg(&e)))?;
            ensure_schema(&mut client, None)
                .await
                .map_err(|e| open_err(&connector, e.to_string()))?;
            let live = connector
                .connect()
                .await
                .map_err(|e| open_err(&connector, pg_msg(&e)))?;
            let got: bool = live
                .query_one("SELECT pg_try_advisory_lock($1)", &[&live_key])
                .await
                .map_err(|e| open_err(&connector, pg_msg(&e)))?
                .get(0);
            if !got {
                return Err(open_err(
                    &connector,
                    format!(
                        "instance id {instance:?} is in use by a running replica: give each \
                         replica its own instance_id (or leave it empty for a random one)"
                    ),
                ));
            }
            let log_id = read_log_id(&client).await?;
            Ok::<_, AuditError>((client, live, log_id))
        })?;
        let mut store = Self {
            rt,
            connector,
            client: Some(client),
            _live: live,
            instance: instance.to_string(),
            live_key,
        };
        let checked = {
            let client = store.client.as_ref().expect("just connected");
            store
                .rt
                .block_on(check_at_start(client, log_id, our_key.as_deref()))?
        };
        let head = match checked {
            Ok(h) => h,
            Err(m) => {
                let head = Head {
                    log_id,
                    seq: 0,
                    hash: genesis_hash(&log_id),
                };
                return Ok((store, head, Some(m)));
            }
        };
        let mut head = head;
        // The calls this instance id left open in an earlier run are as
        // dead as any other replica's.
        match store.close_dead(&head, true)? {
            Ok(Some(a)) => head = a.head,
            Ok(None) => {}
            Err(m) => return Ok((store, head, Some(m))),
        }
        Ok((store, head, None))
    }

    /// The appending connection, reopened after a failure.
    fn take_client(&mut self) -> Result<Client, AuditError> {
        match self.client.take() {
            Some(c) if !c.is_closed() => Ok(c),
            _ => self
                .rt
                .block_on(self.connector.connect())
                .map_err(write_err),
        }
    }

    /// Runs `f` in one transaction holding the append lock, after holding
    /// the stored chain from `head` to its tail and checking this replica
    /// is still marked alive. `f` gets the tail and appends after it.
    fn locked<T>(
        &mut self,
        head: &Head,
        f: impl AsyncFnOnce(&tokio_postgres::Transaction<'_>, Head) -> Result<T, AuditError>,
    ) -> Checked<T> {
        let live_key = self.live_key;
        let mut client = self.take_client()?;
        let result = self.rt.block_on(async {
            let tx = client.transaction().await.map_err(write_err)?;
            tx.execute(
                "SELECT pg_advisory_xact_lock($1, $2)",
                &[&APPEND_LOCK.0, &APPEND_LOCK.1],
            )
            .await
            .map_err(write_err)?;
            // Our mark must still be held by our liveness connection: were
            // it lost, others may have closed this replica's calls already.
            let lost: bool = tx
                .query_one("SELECT pg_try_advisory_lock($1)", &[&live_key])
                .await
                .map_err(write_err)?
                .get(0);
            if lost {
                let _ = tx
                    .execute("SELECT pg_advisory_unlock($1)", &[&live_key])
                    .await;
                let tail = stored_tail(&tx).await?;
                return Ok(Err(mismatch(
                    tail + 1,
                    "this replica lost its liveness mark in PostgreSQL (its connection \
                     ended), so other replicas may have closed its calls: it writes no more \
                     and must be restarted",
                )));
            }
            let tail = match walk(&tx, head, head).await? {
                Ok(t) => t,
                Err(m) => return Ok(Err(m)),
            };
            let out = f(&tx, tail).await?;
            tx.commit().await.map_err(write_err)?;
            Ok(Ok(out))
        });
        // A connection whose transaction failed is not reused.
        if result.is_ok() {
            self.client = Some(client);
        }
        result
    }

    /// Appends the closing `failed` event of each call left open by a
    /// replica that is no longer alive (with `include_self`, also those of
    /// this instance id: its earlier run). Serialized by the append lock
    /// and decided inside it, so each call is closed once.
    fn close_dead(&mut self, head: &Head, include_self: bool) -> Checked<Option<Appended>> {
        let instance = self.instance.clone();
        self.locked(head, async move |tx, tail| {
            let rows = tx
                .query(
                    &format!(
                        "SELECT DISTINCT ON (o.request_id) {COLUMNS} FROM audit_events o \
                         WHERE o.kind IN ('attempt', 'started', 'sealed') \
                         AND NOT EXISTS (SELECT 1 FROM audit_events t \
                             WHERE t.request_id = o.request_id \
                             AND t.kind IN ('completed', 'cancelled', 'failed', 'denied')) \
                         ORDER BY o.request_id, o.seq DESC"
                    ),
                    &[],
                )
                .await
                .map_err(write_err)?;
            let mut open = Vec::new();
            for r in &rows {
                let (_, e, ..) = read_row(r).map_err(write_err)?;
                open.push(OpenCall {
                    instance: e.instance.clone(),
                    last: e,
                });
            }
            // Which of their replicas are gone: a mark nobody holds.
            let mut alive: BTreeMap<String, bool> = BTreeMap::new();
            for c in &open {
                if alive.contains_key(&c.instance) {
                    continue;
                }
                let is_alive = if c.instance == instance {
                    !include_self
                } else {
                    let key = liveness_key(&c.instance);
                    let free: bool = tx
                        .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&key])
                        .await
                        .map_err(write_err)?
                        .get(0);
                    !free
                };
                alive.insert(c.instance.clone(), is_alive);
            }
            let dead: Vec<Event> = open
                .into_iter()
                .filter(|c| !alive.get(&c.instance).copied().unwrap_or(true))
                .map(|c| closing_event(c, &instance))
                .collect();
            if dead.is_empty() {
                return Ok(None);
            }
            let refs: Vec<&Event> = dead.iter().collect();
            let a = insert_after(tx, &tail, &refs).await?;
            tracing::warn!(
                calls = dead.len(),
                "closed the calls of replicas that stopped without ending them"
            );
            Ok(Some(a))
        })
    }
}

/// The terminal event of a call whose replica died.
fn closing_event(c: OpenCall, instance: &str) -> Event {
    let l = c.last;
    let mut e = Event::new(Kind::Failed, l.request_id);
    e.method = l.method;
    e.principal = l.principal;
    e.on_behalf_of = l.on_behalf_of;
    e.peer = l.peer;
    e.tls_identity = l.tls_identity;
    e.case_id = l.case_id;
    e.export_id = l.export_id;
    e.purpose = l.purpose;
    e.code = Some("UNAVAILABLE".into());
    e.detail = Some(
        serde_json::json!({
            "reason": "the replica serving the call stopped without ending it",
            "replica": c.instance,
        })
        .to_string(),
    );
    e.instance = instance.to_string();
    e
}

/// Inserts `events` after `tail`, chained to it.
async fn insert_after(
    tx: &tokio_postgres::Transaction<'_>,
    tail: &Head,
    events: &[&Event],
) -> Result<Appended, AuditError> {
    let st = tx
        .prepare(
            "INSERT INTO audit_events (seq, ts, kind, request_id, method, principal, \
             on_behalf_of, peer, tls_identity, case_id, export_id, purpose, code, detail, \
             instance, version, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
             $10, $11, $12, $13, $14, $15, $16, $17, $18)",
        )
        .await
        .map_err(write_err)?;
    let mut h = *tail;
    let mut hashes = Vec::with_capacity(events.len());
    for e in events {
        let seq = h.seq + 1;
        let hash = event_hash(seq, &h.hash, e);
        tx.execute(
            &st,
            &[
                &(seq as i64),
                &e.ts,
                &e.kind.as_str(),
                &e.request_id,
                &e.method,
                &e.principal,
                &e.on_behalf_of,
                &e.peer,
                &e.tls_identity,
                &e.case_id,
                &e.export_id,
                &e.purpose,
                &e.code,
                &e.detail,
                &e.instance,
                &e.version,
                &hex::encode(h.hash),
                &hex::encode(hash),
            ],
        )
        .await
        .map_err(write_err)?;
        h.seq = seq;
        h.hash = hash;
        hashes.push(hash);
    }
    Ok(Appended {
        head: h,
        first: tail.seq + 1,
        hashes,
    })
}

impl Store for PgStore {
    fn append(
        &mut self,
        head: &Head,
        _recent: &VecDeque<(u64, [u8; 32])>,
        events: &[&Event],
    ) -> Checked<Appended> {
        self.locked(head, async |tx, tail| insert_after(tx, &tail, events).await)
    }

    fn checkpoint(
        &mut self,
        verified: &Head,
        head: &Head,
        signer: Option<&CheckpointSigner>,
        _is_final: bool,
    ) -> Checked<(Head, Checkpoint)> {
        let instance = self.instance.clone();
        let verified = *verified;
        let head = *head;
        // The chain since the last verified head, to the tail: `locked`
        // walked from `head`; the stretch before it is walked here.
        self.locked(&head, async move |tx, tail| {
            match walk(tx, &verified, &head).await? {
                Ok(_) => {}
                Err(m) => return Ok(Err(m)),
            }
            // Never final: the other replicas go on writing.
            let c = Checkpoint::new(&tail, signer, false);
            tx.execute(
                "INSERT INTO audit_checkpoints (log_id, seq, head_hash, ts, public_key, \
                 signature, is_final, instance) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &c.log_id,
                    &(c.seq as i64),
                    &c.head_hash,
                    &c.ts,
                    &c.public_key,
                    &c.signature,
                    &c.is_final,
                    &instance,
                ],
            )
            .await
            .map_err(write_err)?;
            Ok(Ok((tail, c)))
        })
        .map(|r| r.and_then(|inner| inner))
    }

    fn writes_final(&self) -> bool {
        false
    }

    fn sweep_every(&self) -> Option<Duration> {
        Some(SWEEP_EVERY)
    }

    fn sweep(&mut self, head: &Head) -> Checked<Option<Appended>> {
        self.close_dead(head, false)
    }
}

/// Connects to a trail's database for reading.
pub async fn connect_reader(connector: &PgConnector) -> Result<Client, AuditError> {
    connector
        .connect()
        .await
        .map_err(|e| open_err(connector, pg_msg(&e)))
}

/// How many of the trail's tables (`PG_TABLES`) the database holds.
async fn tables_present(
    client: &impl tokio_postgres::GenericClient,
) -> Result<i64, tokio_postgres::Error> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM unnest($1::text[]) AS t(name) \
             WHERE to_regclass(quote_ident(t.name)) IS NOT NULL",
            &[&PG_TABLES.to_vec()],
        )
        .await?
        .get(0))
}

/// Copies a PostgreSQL trail, in one consistent read, into an in-memory
/// SQLite trail of the same schema, so that `verify_log`, `list_events`
/// and the tenant views give the same answers over both stores. Returns it
/// with the checkpoints stored in the database. Reads the whole trail.
pub async fn read_copy(
    connector: &PgConnector,
) -> Result<(rusqlite::Connection, Vec<Checkpoint>), AuditError> {
    let mut client = connect_reader(connector).await?;
    let q = |e: tokio_postgres::Error| AuditError::Query(pg_msg(&e));
    let present = tables_present(&client).await.map_err(q)?;
    if present != PG_TABLES.len() as i64 {
        return Err(open_err(
            connector,
            "it holds no custody trail (no audit_meta, audit_events and audit_checkpoints \
             tables): create one with `case-export audit init --db URL`",
        ));
    }
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(q)?;
    let meta: Vec<(String, String, i32)> = tx
        .query("SELECT log_id, created_at, format FROM audit_meta", &[])
        .await
        .map_err(q)?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let rows = tx
        .query_raw(
            format!("SELECT {COLUMNS} FROM audit_events ORDER BY seq").as_str(),
            std::iter::empty::<i32>(),
        )
        .await
        .map_err(q)?;
    tokio::pin!(rows);
    let mut events = Vec::new();
    while let Some(r) = rows.next().await {
        events.push(read_row(&r.map_err(q)?).map_err(q)?);
    }
    let checkpoints = read_db_checkpoints(&tx).await?;
    tx.commit().await.map_err(q)?;
    // Filling SQLite is blocking work: off the async workers.
    let mem = tokio::task::spawn_blocking(move || to_memory(&meta, &events))
        .await
        .map_err(|e| AuditError::Query(e.to_string()))??;
    Ok((mem, checkpoints))
}

/// An in-memory SQLite trail holding `meta` and `events` as stored.
fn to_memory(
    meta: &[(String, String, i32)],
    events: &[StoredEvent],
) -> Result<rusqlite::Connection, AuditError> {
    let mut mem = rusqlite::Connection::open_in_memory()?;
    mem.execute_batch(super::store::SCHEMA)?;
    let tx = mem.transaction()?;
    for (log_id, created, format) in meta {
        tx.execute(
            "INSERT INTO audit_meta (log_id, created_at, format) VALUES (?1, ?2, ?3)",
            rusqlite::params![log_id, created, format],
        )?;
    }
    {
        let mut ins = tx.prepare(&format!(
            "INSERT INTO audit_events ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
             ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"
        ))?;
        for (seq, e, kind, prev, hash) in events {
            ins.execute(rusqlite::params![
                *seq as i64,
                e.ts,
                kind,
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
                prev,
                hash,
            ])?;
        }
    }
    tx.commit()?;
    Ok(mem)
}

/// Creates a trail's tables as an administrator and grants `grant` (the
/// service's role) SELECT and INSERT on them. Returns whether they were
/// created (false: they existed; grants are given either way).
pub async fn init_trail(connector: &PgConnector, grant: Option<&str>) -> Result<bool, AuditError> {
    let mut client = connect_reader(connector).await?;
    ensure_schema(&mut client, grant).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_keys_differ_by_instance() {
        assert_ne!(liveness_key("a"), liveness_key("b"));
        assert_eq!(liveness_key("a"), liveness_key("a"));
    }
}
