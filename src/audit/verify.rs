//! Recomputes the chain, checks it against checkpoints, and finds calls
//! that started and never ended.

use super::chain::{event_hash, genesis_hash};
use super::checkpoint::Checkpoint;
use super::{AuditError, Event, Kind};
use rusqlite::{Connection, Row, params_from_iter, types::Value};
use std::collections::BTreeMap;

/// The result of `verify_log`.
#[derive(Debug, Default)]
pub struct Verification {
    /// The log id (hex).
    pub log_id: String,
    /// Events read.
    pub events: u64,
    /// Last sequence number.
    pub last_seq: u64,
    /// Hash of the last event (hex).
    pub head_hash: String,
    /// Chain problems, first first: each names a sequence number.
    pub problems: Vec<String>,
    /// Calls with a first event and no terminal one: (seq, request id,
    /// case id, export id).
    pub unterminated: Vec<(u64, String, Option<String>, Option<String>)>,
    /// Checkpoints that matched the log.
    pub checkpoints_ok: usize,
}

impl Verification {
    /// True when the chain and every checkpoint hold.
    pub fn chain_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

pub(super) const COLUMNS: &str = "seq, ts, kind, request_id, method, principal, on_behalf_of, peer, \
    tls_identity, case_id, export_id, purpose, code, detail, instance, version, prev_hash, hash";

#[allow(clippy::type_complexity)]
pub(super) fn read_event(r: &Row<'_>) -> rusqlite::Result<(u64, Event, String, String, String)> {
    let kind: String = r.get(2)?;
    Ok((
        r.get::<_, i64>(0)? as u64,
        Event {
            ts: r.get(1)?,
            kind: Kind::parse(&kind).unwrap_or(Kind::Attempt),
            request_id: r.get(3)?,
            method: r.get(4)?,
            principal: r.get(5)?,
            on_behalf_of: r.get(6)?,
            peer: r.get(7)?,
            tls_identity: r.get(8)?,
            case_id: r.get(9)?,
            export_id: r.get(10)?,
            purpose: r.get(11)?,
            code: r.get(12)?,
            detail: r.get(13)?,
            instance: r.get(14)?,
            version: r.get(15)?,
        },
        kind,
        r.get(16)?,
        r.get(17)?,
    ))
}

fn db_err(e: rusqlite::Error) -> AuditError {
    AuditError::Open {
        path: Default::default(),
        message: e.to_string(),
    }
}

/// Verifies the whole log and each checkpoint given.
pub fn verify_log(
    conn: &Connection,
    checkpoints: &[Checkpoint],
    public_key: Option<&str>,
) -> Result<Verification, AuditError> {
    let log_hex: String = conn
        .query_row("SELECT log_id FROM audit_meta", [], |r| r.get(0))
        .map_err(db_err)?;
    let mut log_id = [0u8; 16];
    let mut v = Verification {
        log_id: log_hex.clone(),
        ..Default::default()
    };
    if hex::decode_to_slice(&log_hex, &mut log_id).is_err() {
        v.problems
            .push("audit_meta holds a malformed log id".into());
        return Ok(v);
    }
    let mut chain = ChainWalk::new(genesis_hash(&log_id));
    let mut calls = CallTracker::default();
    let mut st = conn
        .prepare(&format!("SELECT {COLUMNS} FROM audit_events ORDER BY seq"))
        .map_err(db_err)?;
    let mut rows = st.query([]).map_err(db_err)?;
    while let Some(r) = rows.next().map_err(db_err)? {
        let (seq, e, kind, prev_hex, hash_hex) = read_event(r).map_err(db_err)?;
        chain.step(seq, &e, &kind, &prev_hex, hash_hex, &mut v);
        calls.see(seq, &e);
    }
    check_checkpoints(&mut v, &chain.hashes, checkpoints, public_key);
    v.unterminated = calls.unterminated();
    Ok(v)
}

/// Recomputes the chain event by event; the first problem is kept.
struct ChainWalk {
    prev: [u8; 32],
    expected: u64,
    /// Stored hash (hex) by sequence number, for the checkpoints.
    hashes: BTreeMap<u64, String>,
}

impl ChainWalk {
    fn new(genesis: [u8; 32]) -> Self {
        Self {
            prev: genesis,
            expected: 1,
            hashes: BTreeMap::new(),
        }
    }

    fn step(
        &mut self,
        seq: u64,
        e: &Event,
        kind: &str,
        prev_hex: &str,
        hash_hex: String,
        v: &mut Verification,
    ) {
        v.events += 1;
        if v.problems.is_empty()
            && let Some(p) = self.problem(seq, e, kind, prev_hex, &hash_hex)
        {
            v.problems.push(p);
        }
        let mut h = [0u8; 32];
        if hex::decode_to_slice(&hash_hex, &mut h).is_ok() {
            self.prev = h;
        }
        self.expected = seq + 1;
        v.last_seq = seq;
        self.hashes.insert(seq, hash_hex.clone());
        v.head_hash = hash_hex;
    }

    fn problem(
        &self,
        seq: u64,
        e: &Event,
        kind: &str,
        prev_hex: &str,
        hash_hex: &str,
    ) -> Option<String> {
        let expected = self.expected;
        if seq != expected {
            Some(if seq > expected {
                format!("gap: sequence numbers {expected}..{} are missing", seq - 1)
            } else {
                format!("sequence number {seq} repeats or goes back")
            })
        } else if Kind::parse(kind).is_none() {
            Some(format!("event {seq}: unknown kind {kind:?}"))
        } else if prev_hex != hex::encode(self.prev) {
            Some(format!(
                "event {seq}: previous-hash does not match event {}",
                seq - 1
            ))
        } else if hash_hex != hex::encode(event_hash(seq, &self.prev, e)) {
            Some(format!(
                "event {seq}: contents do not match its hash (altered)"
            ))
        } else {
            None
        }
    }
}

/// Calls that started and have not ended (yet).
#[derive(Default)]
struct CallTracker {
    /// By request id: first seq, case id, export id.
    open: BTreeMap<String, (u64, Option<String>, Option<String>)>,
    ended: std::collections::BTreeSet<String>,
}

impl CallTracker {
    fn see(&mut self, seq: u64, e: &Event) {
        match e.kind {
            // A custody record can land after the call's end when the client
            // left just before the key: it does not reopen the call.
            Kind::Attempt | Kind::Started | Kind::Sealed if self.ended.contains(&e.request_id) => {}
            Kind::Attempt | Kind::Started | Kind::Sealed => {
                let entry = self
                    .open
                    .entry(e.request_id.clone())
                    .or_insert((seq, None, None));
                if e.case_id.is_some() {
                    entry.1 = e.case_id.clone();
                }
                if e.export_id.is_some() {
                    entry.2 = e.export_id.clone();
                }
            }
            Kind::Completed | Kind::Cancelled | Kind::Failed | Kind::Denied => {
                self.open.remove(&e.request_id);
                self.ended.insert(e.request_id.clone());
            }
            // Not calls: a start, a trail's first event, and the count of
            // refused calls that were not recorded one by one (they have no
            // events to end).
            Kind::ServerStart | Kind::TrailStart | Kind::DeniedSummary => {}
        }
    }

    fn unterminated(self) -> Vec<(u64, String, Option<String>, Option<String>)> {
        let mut u: Vec<_> = self
            .open
            .into_iter()
            .map(|(rid, (seq, case, export))| (seq, rid, case, export))
            .collect();
        u.sort();
        u
    }
}

/// Holds each checkpoint to the walked chain.
fn check_checkpoints(
    v: &mut Verification,
    hashes: &BTreeMap<u64, String>,
    checkpoints: &[Checkpoint],
    public_key: Option<&str>,
) {
    for c in checkpoints {
        // A checkpoint of another log means this is not the log that was
        // anchored (rebuilt or replaced).
        if c.log_id != v.log_id {
            v.problems.push(format!(
                "checkpoint at {} belongs to log {}, not to this log {}",
                c.seq, c.log_id, v.log_id
            ));
            continue;
        }
        if public_key.is_some() && c.signature.is_none() {
            v.problems.push(format!(
                "checkpoint at {} is unsigned but a public key was given",
                c.seq
            ));
            continue;
        }
        if let Err(e) = c.verify_signature(public_key) {
            v.problems.push(format!("checkpoint at {}: {e}", c.seq));
            continue;
        }
        if c.seq > v.last_seq {
            v.problems.push(format!(
                "tail removed: a checkpoint names event {} but the log ends at {}",
                c.seq, v.last_seq
            ));
        } else if c.seq > 0 && hashes.get(&c.seq) != Some(&c.head_hash) {
            v.problems.push(format!(
                "event {}: hash differs from the checkpoint (log rewritten)",
                c.seq
            ));
        } else {
            v.checkpoints_ok += 1;
        }
    }
}

/// An RFC 3339 time in the form SQLite's date functions read.
fn instant(field: &str, text: &str) -> Result<String, AuditError> {
    use time::format_description::well_known::Rfc3339;
    let t = time::OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        AuditError::BadFilter(format!(
            "{field} {text:?} is not an RFC 3339 time: write it like 2026-01-31T00:00:00Z"
        ))
    })?;
    let t = t.to_offset(time::UtcOffset::UTC);
    Ok(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    ))
}

/// Which events `list_events` returns.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    /// Only events for this case.
    pub case_id: Option<String>,
    /// Only events by this authenticated principal.
    pub principal: Option<String>,
    /// RFC 3339; events at or after.
    pub since: Option<String>,
    /// RFC 3339; events before.
    pub until: Option<String>,
    /// Only events after this sequence number (paging).
    pub after_seq: Option<u64>,
    /// At most this many events; all when `None`.
    pub limit: Option<u64>,
    /// For an auditor limited to tenants: only what it may see.
    pub visible_to: Option<TenantView>,
}

/// What an auditor limited to tenants may read of the trail (docs/AUDIT.md,
/// "Auditors limited to tenants"): the server's own lifecycle events, every
/// event of a call whose export was tied to one of its tenants, and every
/// event of a call made by a principal limited to some of its tenants.
/// Everything else (unknown callers, unrestricted principals' calls not tied
/// to a tenant) is for unrestricted auditors only.
#[derive(Debug, Default, Clone)]
pub struct TenantView {
    /// The auditor's tenants.
    pub tenants: Vec<String>,
    /// Principals whose own `tenants` are all among the auditor's.
    pub principals: Vec<String>,
}

/// Event kinds that belong to the server, not to a call.
const LIFECYCLE_KINDS: &str = "'server_start', 'trail_start'";

impl TenantView {
    /// An SQL condition on `audit_events` with its arguments appended.
    fn condition(&self, args: &mut Vec<Value>) -> String {
        let marks = |n: usize| vec!["?"; n].join(", ");
        let sql = format!(
            "(kind IN ({LIFECYCLE_KINDS}) \
             OR request_id IN (SELECT request_id FROM audit_events WHERE \
                 CASE WHEN json_valid(detail) THEN json_extract(detail, '$.tenant') END \
                 IN ({})) \
             OR request_id IN (SELECT request_id FROM audit_events WHERE principal IN ({})))",
            marks(self.tenants.len()),
            marks(self.principals.len()),
        );
        args.extend(self.tenants.iter().cloned().map(Value::Text));
        args.extend(self.principals.iter().cloned().map(Value::Text));
        sql
    }
}

/// The request ids of the calls `view` may see.
pub fn visible_request_ids(
    conn: &Connection,
    view: &TenantView,
) -> Result<std::collections::HashSet<String>, AuditError> {
    let mut args = Vec::new();
    let sql = format!(
        "SELECT DISTINCT request_id FROM audit_events WHERE {}",
        view.condition(&mut args)
    );
    let mut st = conn.prepare(&sql).map_err(db_err)?;
    let rows = st
        .query_map(params_from_iter(args), |r| r.get::<_, String>(0))
        .map_err(db_err)?;
    rows.collect::<Result<_, _>>().map_err(db_err)
}

/// Events matching `f`, in sequence order.
/// Each with its sequence number and hash (hex).
pub fn list_events(
    conn: &Connection,
    f: &ListFilter,
) -> Result<Vec<(u64, Event, String)>, AuditError> {
    let mut sql = format!("SELECT {COLUMNS} FROM audit_events WHERE 1 = 1");
    let mut args: Vec<Value> = Vec::new();
    if let Some(c) = &f.case_id {
        sql.push_str(" AND case_id = ?");
        args.push(Value::Text(c.clone()));
    }
    if let Some(p) = &f.principal {
        sql.push_str(" AND principal = ?");
        args.push(Value::Text(p.clone()));
    }
    if let Some(s) = f.after_seq {
        sql.push_str(" AND seq > ?");
        args.push(Value::Integer(i64::try_from(s).unwrap_or(i64::MAX)));
    }
    // Compared as instants, whatever the fraction digits of either side.
    if let Some(s) = &f.since {
        sql.push_str(" AND julianday(ts) >= julianday(?)");
        args.push(Value::Text(instant("since", s)?));
    }
    if let Some(u) = &f.until {
        sql.push_str(" AND julianday(ts) < julianday(?)");
        args.push(Value::Text(instant("until", u)?));
    }
    if let Some(view) = &f.visible_to {
        sql.push_str(" AND ");
        sql.push_str(&view.condition(&mut args));
    }
    sql.push_str(" ORDER BY seq");
    if let Some(l) = f.limit {
        sql.push_str(&format!(" LIMIT {l}"));
    }
    let mut st = conn.prepare(&sql).map_err(db_err)?;
    let rows = st
        .query_map(params_from_iter(args), |r| {
            read_event(r).map(|(s, e, _, _, h)| (s, e, h))
        })
        .map_err(db_err)?;
    rows.collect::<Result<_, _>>().map_err(db_err)
}
