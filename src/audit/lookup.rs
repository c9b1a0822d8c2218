//! Finds one event of a trail for a receipt check: the trail must verify,
//! be the receipt's log, and hold the event.

use super::{AuditError, verify_log};
use rusqlite::Connection;

/// The hash (hex) of event `seq` of the trail open on `conn` (a SQLite
/// trail, or the copy of a PostgreSQL one), once the whole chain verified;
/// `None` when the trail is another log or has no such event. A broken
/// chain is an error naming its first problem.
pub fn find_event_hash(
    conn: &Connection,
    log_id: &str,
    seq: u64,
) -> Result<Option<String>, AuditError> {
    let v = verify_log(conn, &[], None)?;
    if let Some(first) = v.problems.first() {
        return Err(AuditError::Corrupt(format!(
            "the chain does not verify: {first}"
        )));
    }
    if v.log_id != log_id {
        return Ok(None);
    }
    let hash = conn
        .query_row(
            "SELECT hash FROM audit_events WHERE seq = ?1",
            [i64::try_from(seq).unwrap_or(i64::MAX)],
            |r| r.get::<_, String>(0),
        )
        .ok();
    Ok(hash)
}
