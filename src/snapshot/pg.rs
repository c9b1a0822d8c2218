//! Builds a case's snapshot from PostgreSQL: the same scope rules and the
//! same kind of standalone SQLite snapshot as from a SQLite file
//! (docs/SNAPSHOT.md), read in one `REPEATABLE READ, READ ONLY`
//! transaction.

use super::{Snapshot, SnapshotError, SnapshotRequest};
use crate::db::PgConnector;
use std::time::Duration;

/// How exports read PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgSourceOptions {
    /// Schema whose tables and foreign keys make up the cases.
    pub schema: String,
    /// Longest one statement may run.
    pub statement_timeout: Duration,
}

/// A PostgreSQL case database.
pub struct PgSource {
    pool: deadpool_postgres::Pool,
    options: PgSourceOptions,
}

impl std::fmt::Debug for PgSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSource")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl PgSource {
    /// A source with a pool of at most `pool_size` connections; none is
    /// opened until needed.
    pub fn new(connector: &PgConnector, pool_size: usize, options: PgSourceOptions) -> Self {
        Self {
            pool: connector.pool(pool_size),
            options,
        }
    }

    /// Builds one case's snapshot.
    pub async fn build(&self, _req: &SnapshotRequest<'_>) -> Result<Snapshot, SnapshotError> {
        let _ = (&self.pool, &self.options);
        Err(SnapshotError::Unavailable(
            "PostgreSQL case databases are not supported yet",
        ))
    }

    /// Whether a connection opens and answers.
    pub async fn check(&self) -> Result<(), SnapshotError> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|_| SnapshotError::Unavailable("cannot connect to PostgreSQL"))?;
        client
            .simple_query("SELECT 1")
            .await
            .map_err(|_| SnapshotError::Unavailable("PostgreSQL does not answer"))?;
        Ok(())
    }

    /// The database's size in bytes, if it can be read.
    pub async fn size_hint(&self) -> Option<u64> {
        let client = self.pool.get().await.ok()?;
        let row = client
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await
            .ok()?;
        u64::try_from(row.get::<_, i64>(0)).ok()
    }
}
