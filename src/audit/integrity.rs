//! Holding the stored trail to what the writer knows of it: at start, the
//! chain from the last checkpoint must verify to the stored head (exactly
//! the final checkpoint's head after a clean stop); while running, the
//! stored trail must end where the writer left it, and the chain since the
//! last checkpoint must verify before another is signed. A trail that does
//! not is refused (docs/AUDIT.md, "When the trail is not the one written").

use super::chain::{Head, event_hash, genesis_hash};
use super::checkpoint::{Checkpoint, read_checkpoints};
use super::error::AuditError;
use super::verify::{COLUMNS, read_event};
use super::{Event, Kind};
use rusqlite::{Connection, OptionalExtension};
use std::path::Path;

pub use super::error::TrailMismatch;

pub(super) fn mismatch(seq: u64, what: impl Into<String>) -> TrailMismatch {
    TrailMismatch {
        seq,
        what: what.into(),
    }
}

impl From<TrailMismatch> for AuditError {
    fn from(m: TrailMismatch) -> Self {
        Self::Mismatch(m)
    }
}

fn stored_hash(conn: &Connection, seq: u64) -> Result<Option<String>, TrailMismatch> {
    conn.query_row(
        "SELECT hash FROM audit_events WHERE seq = ?1",
        [seq as i64],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| mismatch(seq, format!("cannot read the stored event: {e}")))
}

/// Walks the stored chain after `from` (whose hash is `prev`): contiguous
/// sequence numbers, each linked to the one before, each matching its
/// hash. Returns the head it ends at.
fn walk(
    conn: &Connection,
    from: u64,
    mut prev: [u8; 32],
) -> Result<(u64, [u8; 32]), TrailMismatch> {
    let read_err = |e: rusqlite::Error| mismatch(from + 1, format!("cannot read the trail: {e}"));
    let mut st = conn
        .prepare(&format!(
            "SELECT {COLUMNS} FROM audit_events WHERE seq > ?1 ORDER BY seq"
        ))
        .map_err(read_err)?;
    let mut rows = st.query([from as i64]).map_err(read_err)?;
    let mut seq = from;
    while let Some(r) = rows.next().map_err(read_err)? {
        let (s, e, kind, prev_hex, hash_hex) = read_event(r).map_err(read_err)?;
        prev = check_step(seq + 1, &prev, s, &e, &kind, &prev_hex, &hash_hex)?;
        seq = s;
    }
    Ok((seq, prev))
}

/// Holds one stored event to its place after `prev` (due at `expected`):
/// its sequence number, kind, previous-hash and hash. Returns its hash.
pub(super) fn check_step(
    expected: u64,
    prev: &[u8; 32],
    s: u64,
    e: &Event,
    kind: &str,
    prev_hex: &str,
    hash_hex: &str,
) -> Result<[u8; 32], TrailMismatch> {
    if s != expected {
        return Err(mismatch(expected, format!("event {expected} is missing")));
    }
    if Kind::parse(kind).is_none() {
        return Err(mismatch(s, format!("unknown kind {kind:?}")));
    }
    if prev_hex != hex::encode(prev) {
        return Err(mismatch(
            s,
            "its previous-hash does not match the event before",
        ));
    }
    let h = event_hash(s, prev, e);
    if hash_hex != hex::encode(h) {
        return Err(mismatch(s, "its contents do not match its hash (altered)"));
    }
    Ok(h)
}

/// Verifies that the stored chain goes from `from` (verified before) to
/// exactly `to` (the writer's head).
pub fn verify_since(conn: &Connection, from: &Head, to: &Head) -> Result<(), TrailMismatch> {
    if from.seq > 0 && stored_hash(conn, from.seq)? != Some(hex::encode(from.hash)) {
        return Err(first_problem(
            conn,
            from.seq,
            "event was rewritten or removed",
        ));
    }
    let (seq, hash) = walk(conn, from.seq, from.hash)?;
    ends_at(seq, hash, to)
}

fn ends_at(seq: u64, hash: [u8; 32], head: &Head) -> Result<(), TrailMismatch> {
    if seq > head.seq {
        Err(mismatch(
            head.seq + 1,
            format!(
                "event {} follows the last event this server wrote ({}): not written by it",
                head.seq + 1,
                head.seq
            ),
        ))
    } else if seq < head.seq {
        Err(mismatch(
            seq + 1,
            format!(
                "the trail ends at event {seq} but this server wrote up to {}: tail cut",
                head.seq
            ),
        ))
    } else if hash != head.hash {
        Err(mismatch(seq, "the last event differs from the one written"))
    } else {
        Ok(())
    }
}

/// The first broken link of the whole chain, or, for a chain rewritten
/// consistently, `at` with `what`.
fn first_problem(conn: &Connection, at: u64, what: &str) -> TrailMismatch {
    let log_id = match conn.query_row("SELECT log_id FROM audit_meta", [], |r| {
        r.get::<_, String>(0)
    }) {
        Ok(l) => l,
        Err(e) => return mismatch(at, format!("cannot read the log id: {e}")),
    };
    let mut id = [0u8; 16];
    if hex::decode_to_slice(&log_id, &mut id).is_err() {
        return mismatch(0, "audit_meta holds a malformed log id");
    }
    match walk(conn, 0, genesis_hash(&id)) {
        Err(m) if m.seq <= at => m,
        _ => mismatch(at, format!("event {at}: {what} (the chain was rebuilt)")),
    }
}

/// Names where a trail that did not end at `head` (it ended at `found`)
/// first differs. `recent` holds (seq, hash) of events this writer
/// committed lately, in order.
pub fn locate(
    conn: &Connection,
    head: &Head,
    recent: &[(u64, [u8; 32])],
    found: Option<(u64, String)>,
) -> TrailMismatch {
    let stored_seq = found.as_ref().map_or(0, |f| f.0);
    // A hash this writer committed that is stored differently now.
    for &(seq, h) in recent {
        if seq > stored_seq {
            break;
        }
        match stored_hash(conn, seq) {
            Ok(Some(s)) if s == hex::encode(h) => {}
            Ok(_) => return mismatch(seq, "the event differs from the one written (rewritten)"),
            Err(m) => return m,
        }
    }
    match stored_seq.cmp(&head.seq) {
        std::cmp::Ordering::Less => mismatch(
            stored_seq + 1,
            format!(
                "the trail ends at event {stored_seq} but this server wrote up to {}: tail cut",
                head.seq
            ),
        ),
        std::cmp::Ordering::Greater => mismatch(
            head.seq + 1,
            format!(
                "event {} follows the last event this server wrote ({}): not written by it",
                head.seq + 1,
                head.seq
            ),
        ),
        std::cmp::Ordering::Equal => first_problem(
            conn,
            recent.first().map_or(head.seq, |r| r.0.saturating_sub(1)),
            "the event was rewritten",
        ),
    }
}

/// The start check. The whole chain must verify. With checkpoints in
/// `file`, the last one must also name this trail (or the trail must say,
/// in its first event, that it replaced the one named), be signed by
/// `our_key` when the server signs, and match the stored event at its
/// sequence number; after a final checkpoint (a clean stop) nothing may
/// follow it.
// Long: the start rules in the order docs/AUDIT.md gives them.
pub fn check_at_start(
    conn: &Connection,
    head: &Head,
    file: Option<&Path>,
    our_key: Option<String>,
) -> Result<(), AuditError> {
    let last = match file {
        Some(f) if f.exists() => read_checkpoints(f)?.pop(),
        _ => None,
    };
    // The whole chain first: a broken link is named exactly, wherever it
    // is (a start reads the trail once; see docs/AUDIT.md for its cost).
    let (seq, hash) = walk(conn, 0, genesis_hash(&head.log_id))?;
    ends_at(seq, hash, head)?;
    let Some(cp) = last else {
        return Ok(());
    };
    if let Some(key) = &our_key {
        let signed_by_us = cp.public_key.as_deref() == Some(key.as_str())
            && cp.verify_signature(Some(key)) == Ok(true);
        if !signed_by_us {
            return Err(mismatch(
                cp.seq,
                "the last checkpoint in the checkpoint file is not signed by this server's \
                 checkpoint key",
            )
            .into());
        }
    } else if cp.verify_signature(None).is_err() {
        return Err(mismatch(cp.seq, "the last checkpoint's signature does not verify").into());
    }
    if cp.log_id != hex::encode(head.log_id) {
        return replaced(conn, head, &cp);
    }
    if cp.seq > head.seq {
        return Err(mismatch(
            head.seq + 1,
            format!(
                "the last checkpoint names event {} but the trail ends at {}: tail cut",
                cp.seq, head.seq
            ),
        )
        .into());
    }
    let at_cp = if cp.seq == 0 {
        Some(hex::encode(genesis_hash(&head.log_id)))
    } else {
        stored_hash(conn, cp.seq)?
    };
    if at_cp.as_deref() != Some(cp.head_hash.as_str()) {
        return Err(first_problem(conn, cp.seq, "differs from the last checkpoint").into());
    }
    if cp.is_final && head.seq > cp.seq {
        return Err(mismatch(
            cp.seq + 1,
            format!(
                "event {} follows the final checkpoint of the last clean stop (event {}): \
                 not written by this server",
                cp.seq + 1,
                cp.seq
            ),
        )
        .into());
    }
    Ok(())
}

/// A trail under another log id than the last checkpoint's is accepted
/// only when its first event is a `trail_start` naming that log as the one
/// it replaces (`case-export audit new-trail`); its own chain must verify.
fn replaced(conn: &Connection, head: &Head, cp: &Checkpoint) -> Result<(), AuditError> {
    let first: Option<Event> = conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM audit_events WHERE seq = 1"),
            [],
            |r| read_event(r).map(|(_, e, ..)| e),
        )
        .optional()?;
    let names_previous = first.as_ref().is_some_and(|e| {
        e.kind == Kind::TrailStart
            && e.detail
                .as_deref()
                .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
                .and_then(|d| d.get("previous_log_id")?.as_str().map(str::to_owned))
                .as_deref()
                == Some(cp.log_id.as_str())
    });
    // Its own chain was walked already.
    if !names_previous {
        return Err(mismatch(
            1,
            format!(
                "this trail (log {}) is not the one the last checkpoint names (log {}): \
                 the trail was replaced",
                hex::encode(head.log_id),
                cp.log_id
            ),
        )
        .into());
    }
    Ok(())
}

/// The last good head of a trail: the last event before the chain's first
/// problem (the whole trail when it verifies).
pub fn last_good_head(conn: &Connection) -> Result<Head, AuditError> {
    let log_hex: String = conn.query_row("SELECT log_id FROM audit_meta", [], |r| r.get(0))?;
    let mut log_id = [0u8; 16];
    hex::decode_to_slice(&log_hex, &mut log_id)
        .map_err(|_| AuditError::Corrupt("audit_meta holds a malformed log id".into()))?;
    let genesis = genesis_hash(&log_id);
    let (seq, hash) = match walk(conn, 0, genesis) {
        Ok(h) => h,
        Err(m) if m.seq <= 1 => (0, genesis),
        Err(m) => {
            let seq = m.seq - 1;
            let hex_hash = stored_hash(conn, seq)?
                .ok_or_else(|| AuditError::Corrupt(format!("event {seq} is missing")))?;
            let mut hash = [0u8; 32];
            hex::decode_to_slice(&hex_hash, &mut hash)
                .map_err(|_| AuditError::Corrupt(format!("event {seq} holds a malformed hash")))?;
            (seq, hash)
        }
    };
    Ok(Head { log_id, seq, hash })
}

/// Starts a new trail at `new` in place of the refused one at `old`: its
/// first event, `trail_start`, names the old log and its last good head, so
/// a server holding the checkpoints of the old log accepts the new one.
/// The old file is left as it is, for the investigation.
pub fn start_new_trail(old: &Path, new: &Path, reason: &str) -> Result<(Head, Head), AuditError> {
    if new.exists() {
        return Err(AuditError::Open {
            path: new.into(),
            message: "it exists: name a new file for the new trail".into(),
        });
    }
    let old_conn = super::open_log_read_only(old)?;
    let previous = last_good_head(&old_conn)?;
    let (mut conn, head) = super::store::init(new)?;
    let mut e = Event::new(Kind::TrailStart, "-");
    e.instance = "case-export audit new-trail".into();
    e.detail = Some(
        serde_json::json!({
            "previous_log_id": hex::encode(previous.log_id),
            "previous_seq": previous.seq,
            "previous_hash": hex::encode(previous.hash),
            "previous_file": old.display().to_string(),
            "reason": reason,
        })
        .to_string(),
    );
    let (new_head, _) = super::store::append(&mut conn, &head, &[&e])?
        .map_err(|_| AuditError::Corrupt("the new trail is not empty".into()))?;
    Ok((previous, new_head))
}
