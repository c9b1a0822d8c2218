//! Where an export's rows come from: a SQLite file or a PostgreSQL
//! database. Both build the same kind of snapshot (docs/SNAPSHOT.md).

use super::pg::{PgSource, PgSourceOptions};
use super::{ScopeConfig, Snapshot, SnapshotError, SnapshotRequest, build_snapshot};
use crate::db::{DbError, DbLocation, PgConnector};
use crate::seal::ExportId;
use std::path::PathBuf;
use std::time::Duration;

/// A [`SnapshotRequest`] that owns its values, so a build can run on
/// another thread.
#[derive(Debug, Clone)]
pub struct CaseRequest {
    /// Value of the root key column.
    pub case_id: String,
    /// Root table, key column and exclusions.
    pub scope: ScopeConfig,
    /// Recorded in the manifest.
    pub export_id: ExportId,
    /// RFC 3339 UTC, recorded in the manifest.
    pub created_at: String,
    /// Ceiling on the snapshot's size in bytes.
    pub max_bytes: u64,
    /// How long to wait for a writer's lock on a SQLite source.
    pub busy_timeout: Duration,
    /// Column of the root table naming a case's tenant.
    pub tenant_column: Option<String>,
    /// For callers limited to tenants: the tenants they may see.
    pub allowed_tenants: Option<Vec<String>>,
}

impl CaseRequest {
    /// The request as the builders take it.
    pub fn borrowed(&self) -> SnapshotRequest<'_> {
        SnapshotRequest {
            case_id: &self.case_id,
            scope: &self.scope,
            export_id: self.export_id,
            created_at: &self.created_at,
            max_bytes: self.max_bytes,
            busy_timeout: self.busy_timeout,
            tenant_column: self.tenant_column.as_deref(),
            allowed_tenants: self.allowed_tenants.as_deref(),
        }
    }
}

/// The case database of a server.
#[derive(Debug)]
pub enum CaseSource {
    /// A SQLite file, opened read-only for each export.
    Sqlite(PathBuf),
    /// A PostgreSQL database, read through a bounded pool.
    Postgres(PgSource),
}

impl CaseSource {
    /// The source at `location`; for PostgreSQL, `connect` gives the
    /// connector (password and TLS loaded). Opens no connection yet.
    pub fn open(
        location: &DbLocation,
        connect: impl FnOnce(&crate::db::PgUrl) -> Result<PgConnector, DbError>,
        pool_size: usize,
        options: PgSourceOptions,
    ) -> Result<Self, DbError> {
        Ok(match location {
            DbLocation::Sqlite(p) => Self::Sqlite(p.clone()),
            DbLocation::Postgres(url) => {
                Self::Postgres(PgSource::new(&connect(url)?, pool_size, options))
            }
        })
    }

    /// Builds one case's snapshot. SQLite builds run on a blocking thread.
    pub async fn build(&self, req: CaseRequest) -> Result<Snapshot, SnapshotError> {
        match self {
            Self::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || build_snapshot(&path, &req.borrowed()))
                    .await
                    .map_err(|_| SnapshotError::Unavailable("the build was interrupted"))?
            }
            Self::Postgres(pg) => pg.build(&req.borrowed()).await,
        }
    }

    /// Whether the source can be read now (for health checks).
    pub async fn readable(&self) -> bool {
        match self {
            Self::Sqlite(path) => sqlite_readable(path.clone()).await,
            Self::Postgres(pg) => pg.check().await.is_ok(),
        }
    }

    /// An upper bound on the size of the whole source in bytes, when one
    /// is known cheaply: a snapshot of part of it cannot be much larger.
    pub async fn size_hint(&self) -> Option<u64> {
        match self {
            Self::Sqlite(path) => {
                let mut wal = path.clone().into_os_string();
                wal.push("-wal");
                let mut size = 0;
                for p in [path.as_os_str(), wal.as_os_str()] {
                    size += tokio::fs::metadata(p).await.map(|m| m.len()).unwrap_or(0);
                }
                Some(size)
            }
            Self::Postgres(pg) => pg.size_hint().await,
        }
    }
}

/// Whether the SQLite file opens and its schema reads.
async fn sqlite_readable(path: PathBuf) -> bool {
    tokio::task::spawn_blocking(move || {
        rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|c| {
            c.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .is_ok()
    })
    .await
    .unwrap_or(false)
}
