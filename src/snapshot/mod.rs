//! Case scope discovery and the in-memory SQLite snapshot of one case
//! (docs/SNAPSHOT.md). Nothing here touches keys; nothing here writes to disk.

mod build;
mod pg;
mod scope;
mod source;
mod view;

pub use build::{Snapshot, SnapshotRequest, build_snapshot};
pub use pg::{BATCH_BYTES, BATCH_ROWS, CHANNEL_BATCHES, PgSource, PgSourceOptions};
pub use scope::ScopeConfig;
pub use source::{CaseRequest, CaseSource};
pub use view::{Manifest, SnapshotView, ViewError};

use std::time::Duration;

/// Largest page cache for reading the source during a build.
pub const SOURCE_CACHE_BYTES: u64 = 32 << 20;

/// The source page cache of a build capped at `max_bytes`: never more than
/// the snapshot may be, so small exports reserve little. The memory budget
/// counts it until the snapshot is built.
pub fn source_cache_bytes(max_bytes: u64) -> u64 {
    SOURCE_CACHE_BYTES.min(max_bytes)
}

/// Name of the manifest table every snapshot carries.
pub const MANIFEST_TABLE: &str = "_export_manifest";

/// What can go wrong while taking a snapshot. Messages are safe to show a
/// caller: no paths, no SQL.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No root row with that key.
    #[error("case not found")]
    NotFound,
    /// The case database cannot be opened or read.
    #[error("case database unavailable: {0}")]
    Unavailable(&'static str),
    /// A writer held the database for longer than the busy timeout.
    #[error("case database is locked by a writer (waited {0:?}); retry later")]
    Busy(Duration),
    /// The snapshot would exceed the configured ceiling.
    #[error("the case is larger than this server's snapshot ceiling of {limit} bytes")]
    TooLarge {
        /// The size ceiling that was hit, in bytes.
        limit: u64,
    },
    /// The source schema does not fit the configured scope.
    #[error("case database schema does not match the configuration: {0}")]
    Schema(String),
    /// A PostgreSQL statement ran longer than the configured timeout.
    #[error(
        "case database unavailable: a statement ran longer than postgres.statement_timeout_secs \
         ({}s); retry later, or raise that setting if cases are this large",
        .0.as_secs_f64()
    )]
    StatementTimeout(Duration),
    /// The case database role lacks a privilege it needs on a table.
    #[error(
        "case database unavailable: the case database role may not read table {table:?}: \
         grant it SELECT on that table"
    )]
    PermissionDenied {
        /// The table it may not read.
        table: String,
    },
    /// Anything else SQLite reported; details stay in the logs.
    #[error("internal error while building the snapshot")]
    Internal(#[source] rusqlite::Error),
    /// Anything else PostgreSQL reported; details stay in the logs.
    #[error("internal error while reading the case database")]
    Postgres(#[source] tokio_postgres::Error),
}

impl SnapshotError {
    /// Maps an SQLite error met while reading the source.
    pub(crate) fn from_source(e: rusqlite::Error, busy: Duration) -> Self {
        use rusqlite::ErrorCode as C;
        match e.sqlite_error_code() {
            Some(C::DatabaseBusy | C::DatabaseLocked) => Self::Busy(busy),
            Some(C::NotADatabase) => Self::Unavailable("not a SQLite database"),
            Some(C::DatabaseCorrupt) => Self::Unavailable("database file is corrupt"),
            Some(C::CannotOpen) => Self::Unavailable("cannot open the database file"),
            Some(C::PermissionDenied | C::ReadOnly) => Self::Unavailable("permission denied"),
            Some(C::SystemIoFailure) => Self::Unavailable("I/O error reading the database"),
            _ => Self::Internal(e),
        }
    }
}

/// Quotes an SQL identifier taken from the source schema.
pub(crate) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
