//! The custody trail: an append-only, hash-chained log of every call and
//! its outcome, in a SQLite file or in PostgreSQL shared by replicas; its
//! writer thread, signed checkpoints and verification (docs/AUDIT.md).

mod chain;
mod checkpoint;
mod error;
mod integrity;
mod lookup;
mod pg;
mod store;
mod verify;
mod writer;

pub use chain::Head;
pub use checkpoint::{Checkpoint, CheckpointSigner, read_checkpoints};
pub use error::TrailMismatch;
pub use error::{AuditError, CheckpointError};
pub use integrity::{last_good_head, start_new_trail};
pub use lookup::find_event_hash;
pub use pg::{PG_SCHEMA, PG_TABLES, init_trail, read_copy, read_db_checkpoints};
pub use store::open_log_read_only;
pub use verify::{
    ListFilter, TenantView, Verification, list_events, verify_log, visible_request_ids,
};
pub use writer::{AuditHandle, AuditWriter, Committed, WriterConfig};

use serde::Serialize;

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A call arrived and was authenticated (or not); written first.
    Attempt,
    /// An export passed its checks; names the case and the purpose.
    Started,
    /// The custody record: what was sealed. Committed before the key leaves.
    Sealed,
    /// Terminal: the call ended OK (for exports: key released).
    Completed,
    /// Terminal: the client went away before the end.
    Cancelled,
    /// Terminal: the call ended with an error status.
    Failed,
    /// Terminal: refused for missing or insufficient credentials.
    Denied,
    /// The server started with this log.
    ServerStart,
    /// The first event of a trail started in place of one that was refused
    /// (`case-export audit new-trail`); names the old log and its last good
    /// head.
    TrailStart,
    /// Not a call: how many refused calls of one peer were not recorded
    /// one by one (over its record rate), and since when.
    DeniedSummary,
}

impl Kind {
    /// The stored name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Attempt => "attempt",
            Kind::Started => "started",
            Kind::Sealed => "sealed",
            Kind::Completed => "completed",
            Kind::Cancelled => "cancelled",
            Kind::Failed => "failed",
            Kind::Denied => "denied",
            Kind::ServerStart => "server_start",
            Kind::TrailStart => "trail_start",
            Kind::DeniedSummary => "denied_summary",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "attempt" => Kind::Attempt,
            "started" => Kind::Started,
            "sealed" => Kind::Sealed,
            "completed" => Kind::Completed,
            "cancelled" => Kind::Cancelled,
            "failed" => Kind::Failed,
            "denied" => Kind::Denied,
            "server_start" => Kind::ServerStart,
            "trail_start" => Kind::TrailStart,
            "denied_summary" => Kind::DeniedSummary,
            _ => return None,
        })
    }

    /// Whether this kind ends a call.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Kind::Completed | Kind::Cancelled | Kind::Failed | Kind::Denied
        )
    }
}

/// One event of the trail. Never holds a key, in any encoding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    /// RFC 3339 UTC.
    pub ts: String,
    /// What this event records.
    pub kind: Kind,
    /// Correlates the events of one call.
    pub request_id: String,
    /// gRPC method path.
    pub method: Option<String>,
    /// The authenticated service principal.
    pub principal: Option<String>,
    /// The analyst the call is made for (`x-on-behalf-of`).
    pub on_behalf_of: Option<String>,
    /// Remote address.
    pub peer: Option<String>,
    /// Client certificate identity, with mTLS.
    pub tls_identity: Option<String>,
    /// The case, once the request has passed validation.
    pub case_id: Option<String>,
    /// The export's 32 hex digits, as in the chunk headers and `ExportHeader`.
    pub export_id: Option<String>,
    /// The request's stated purpose, once the request has passed validation.
    pub purpose: Option<String>,
    /// gRPC code name, for terminal events.
    pub code: Option<String>,
    /// JSON object with kind-specific fields (row counts, digest, reason...).
    pub detail: Option<String>,
    /// Server instance and version.
    pub instance: String,
    /// The `case-export` version that wrote the event.
    pub version: String,
}

impl Event {
    /// A blank event of `kind` for `request_id`, stamped now.
    pub fn new(kind: Kind, request_id: impl Into<String>) -> Self {
        Self {
            ts: now_rfc3339(),
            kind,
            request_id: request_id.into(),
            method: None,
            principal: None,
            on_behalf_of: None,
            peer: None,
            tls_identity: None,
            case_id: None,
            export_id: None,
            purpose: None,
            code: None,
            detail: None,
            instance: String::new(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// About the bytes this event takes in the store (fields plus the
    /// fixed columns and hashes), for the bound on the writer's queue.
    pub fn stored_size(&self) -> u64 {
        let fields: usize = self.fields().iter().flatten().map(|f| f.len()).sum();
        (fields + 160) as u64
    }

    /// The hashed fields, in their fixed order (docs/AUDIT.md).
    pub(crate) fn fields(&self) -> [Option<&str>; 15] {
        [
            Some(&self.ts),
            Some(self.kind.as_str()),
            Some(&self.request_id),
            self.method.as_deref(),
            self.principal.as_deref(),
            self.on_behalf_of.as_deref(),
            self.peer.as_deref(),
            self.tls_identity.as_deref(),
            self.case_id.as_deref(),
            self.export_id.as_deref(),
            self.purpose.as_deref(),
            self.code.as_deref(),
            self.detail.as_deref(),
            Some(&self.instance),
            Some(&self.version),
        ]
    }
}

/// Now, RFC 3339 UTC.
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
