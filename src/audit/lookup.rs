//! Finds one event of a trail for a receipt check: the trail must verify,
//! be the receipt's log, and hold the event.

use super::{AuditError, open_log_read_only, verify_log};
use crate::db::DbLocation;

/// The hash (hex) of event `seq` of the trail at `db`, once the whole
/// chain verified; `None` when the trail is another log or has no such
/// event. A broken chain is an error naming its first problem.
pub fn find_event_hash(db: &str, log_id: &str, seq: u64) -> Result<Option<String>, AuditError> {
    let location = DbLocation::parse(db).map_err(|e| AuditError::Query(e.to_string()))?;
    let DbLocation::Sqlite(path) = location else {
        return Err(AuditError::Query(
            "a PostgreSQL trail cannot be read by this build".into(),
        ));
    };
    let conn = open_log_read_only(&path)?;
    let v = verify_log(&conn, &[], None)?;
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
