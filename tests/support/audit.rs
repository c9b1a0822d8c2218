//! Reading a custody trail from its file, as an auditor with the library's
//! read-only opener would.

use super::poll::eventually;
use case_export::audit::{Event, Kind, ListFilter, list_events, open_log_read_only};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

/// How long an event that must come may take to be on record: a bound
/// against hangs (terminal events are written just after the call ends).
const TRAIL_DEADLINE: Duration = Duration::from_secs(10);

/// One stored event: sequence number, event, hash.
pub type Ev = (u64, Event, String);

/// Every stored event of the trail at `path`, in sequence order (empty
/// while the file does not exist yet).
#[track_caller]
pub fn audit_trail(path: &Path) -> Vec<Ev> {
    if !path.exists() {
        return Vec::new();
    }
    let conn = open_log_read_only(path)
        .unwrap_or_else(|e| panic!("open audit log {}: {e}", path.display()));
    list_events(&conn, &ListFilter::default()).unwrap_or_else(|e| panic!("list audit events: {e}"))
}

/// Every event of the trail at `path`, in order (empty while the file does
/// not exist yet).
#[track_caller]
pub fn audit_events(path: &Path) -> Vec<Event> {
    audit_trail(path).into_iter().map(|(_, e, _)| e).collect()
}

/// Whether the trail at `path` has begun: its first event, the server's
/// start, is committed. Read errors while the server creates the file and
/// its schema count as not yet.
pub fn trail_started(path: &Path) -> bool {
    let Ok(conn) = open_log_read_only(path) else {
        return false;
    };
    list_events(&conn, &ListFilter::default()).is_ok_and(|ev| {
        ev.first()
            .is_some_and(|(_, e, _)| e.kind == Kind::ServerStart)
    })
}

/// The events of the call that made export `export_id`: found through its
/// `started` event, then every event with the same request id.
pub fn events_of_export(events: &[Event], export_id: &str) -> Vec<Event> {
    let Some(rid) = events
        .iter()
        .find(|e| e.export_id.as_deref() == Some(export_id))
        .map(|e| e.request_id.clone())
    else {
        return Vec::new();
    };
    events
        .iter()
        .filter(|e| e.request_id == rid)
        .cloned()
        .collect()
}

/// The events of request `rid`.
pub fn of_request(all: &[Ev], rid: &str) -> Vec<Event> {
    all.iter()
        .filter(|(_, e, _)| e.request_id == rid)
        .map(|(_, e, _)| e.clone())
        .collect()
}

/// Whether every call with an event on record also has its terminal one.
pub fn all_ended(ev: &[Ev]) -> bool {
    let mut open = BTreeSet::new();
    for (_, e, _) in ev {
        if e.kind.is_terminal() {
            open.remove(&e.request_id);
        } else if !matches!(e.kind, Kind::ServerStart | Kind::DeniedSummary) {
            open.insert(e.request_id.clone());
        }
    }
    open.is_empty()
}

/// The kinds of `evs`, in order.
pub fn kinds(evs: &[Event]) -> Vec<Kind> {
    evs.iter().map(|e| e.kind).collect()
}

/// An event's JSON detail (`null` when it has none).
#[track_caller]
pub fn detail(e: &Event) -> serde_json::Value {
    serde_json::from_str(e.detail.as_deref().unwrap_or("null")).expect("detail is JSON")
}

/// Waits until `pred` holds for the trail at `path` and returns the trail.
pub async fn wait_trail(path: &Path, what: &str, pred: impl Fn(&[Ev]) -> bool) -> Vec<Ev> {
    eventually(what, TRAIL_DEADLINE, || async {
        let ev = audit_trail(path);
        if pred(&ev) {
            Ok(ev)
        } else {
            Err(format!("{} events on record", ev.len()))
        }
    })
    .await
}
