//! Builds a case's snapshot from PostgreSQL: the same scope rules and the
//! same kind of standalone SQLite snapshot as from a SQLite file
//! (docs/SNAPSHOT.md), read in one `REPEATABLE READ, READ ONLY`
//! transaction.

mod catalog;
mod copy;

pub use copy::{BATCH_BYTES, BATCH_ROWS, CHANNEL_BATCHES};

use super::build::Copied;
use super::scope::ClosureSchedule;
use super::{Snapshot, SnapshotError, SnapshotRequest, ident};
use crate::db::PgConnector;
use catalog::{Column, Kind, PgScope};
use copy::{Batch, decode, insert_batches, on_snapshot, read_keys};
use rusqlite::types::Value;
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::IsolationLevel;
use tokio_postgres::Transaction;
use tokio_stream::StreamExt;

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

/// The root row, read (and its tenant checked) before the snapshot exists.
struct RootRow {
    values: Vec<Value>,
    identity: Option<String>,
    tenant: Option<String>,
}

/// Text naming a row of a table without a primary key: its physical place,
/// stable inside one REPEATABLE READ transaction (`tableoid` tells the
/// partitions of a partitioned table apart).
const ROW_IDENTITY: &str = "(s.tableoid::oid::text || ':' || s.ctid::text)";

impl PgSource {
    /// A source with a pool of at most `pool_size` connections; none is
    /// opened until needed.
    pub fn new(connector: &PgConnector, pool_size: usize, options: PgSourceOptions) -> Self {
        Self {
            pool: connector.pool(pool_size),
            options,
        }
    }

    /// Builds one case's snapshot: the scope from the catalog, then the root
    /// row and the fixed point of docs/SNAPSHOT.md, every read inside one
    /// `REPEATABLE READ, READ ONLY` transaction so that the snapshot holds
    /// one committed state.
    pub async fn build(&self, req: &SnapshotRequest<'_>) -> Result<Snapshot, SnapshotError> {
        let mut client = self
            .pool
            .get()
            .await
            .map_err(|_| SnapshotError::Unavailable("cannot connect to PostgreSQL"))?;
        // Dropped without commit (any early return), the transaction is
        // rolled back before the connection serves anyone else.
        let txn = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| self.pg_error(e, None))?;
        self.configure(&txn).await?;
        let scope = catalog::discover(&*txn, &self.options.schema, req.scope)
            .await
            .map_err(|e| self.pg_error(e, None))?;
        let key = catalog::root_key(&scope, &self.options.schema, req.scope)?;
        let root = self.root_row(&txn, &scope, key, req).await?;
        let tenant = root.tenant.clone();
        let mut copier = Copier {
            src: self,
            txn: &txn,
            scope: &scope,
            ids: vec![HashSet::new(); scope.tables.len()],
            counts: vec![0; scope.tables.len()],
            limit: req.max_bytes,
        };
        let snap = copier.start(req, root).await?;
        let snap = copier.closure(snap).await?;
        txn.commit().await.map_err(|e| self.pg_error(e, None))?;
        drop(client);

        let (_, index_sql) = scope.snapshot_ddl();
        let copied = Copied {
            fingerprint: scope.fingerprint,
            graph: scope.graph,
            index_sql,
            tenant,
        };
        let (case_id, cfg, created_at) = (
            req.case_id.to_owned(),
            req.scope.clone(),
            req.created_at.to_owned(),
        );
        let (export_id, max_bytes, busy_timeout) = (req.export_id, req.max_bytes, req.busy_timeout);
        let (snap, done) = on_snapshot(snap, move |s| {
            let req = SnapshotRequest {
                case_id: &case_id,
                scope: &cfg,
                export_id,
                created_at: &created_at,
                max_bytes,
                busy_timeout,
                tenant_column: None,
                allowed_tenants: None,
            };
            s.finish(&req, copied)
        })
        .await?;
        done?;
        Ok(snap)
    }

    /// The transaction's settings, which make the text forms of the type
    /// mapping (docs/SNAPSHOT.md) independent of the role's defaults.
    async fn configure(&self, txn: &Transaction<'_>) -> Result<(), SnapshotError> {
        let timeout_ms = self
            .options
            .statement_timeout
            .as_millis()
            .max(1)
            .to_string();
        for (name, value) in [
            ("statement_timeout", timeout_ms.as_str()),
            ("TimeZone", "UTC"),
            ("IntervalStyle", "iso_8601"),
            ("DateStyle", "ISO"),
            ("extra_float_digits", "3"),
        ] {
            txn.execute(
                "SELECT pg_catalog.set_config($1::text, $2::text, true)",
                &[&name, &value],
            )
            .await
            .map_err(|e| self.pg_error(e, None))?;
        }
        Ok(())
    }

    /// Reads the case's root row and tenant; `NotFound` for no such case,
    /// a key that does not parse as the key column's type, or a tenant the
    /// caller may not see.
    // Long: the root match, the tenant rules and their errors in one place.
    async fn root_row(
        &self,
        txn: &Transaction<'_>,
        scope: &PgScope,
        key: &Column,
        req: &SnapshotRequest<'_>,
    ) -> Result<RootRow, SnapshotError> {
        let root = &scope.tables[0];
        let limited = req.allowed_tenants.is_some();
        let tenant_sel = match req.tenant_column.map(|c| (c, root.column(c))) {
            None => None,
            Some((c, None)) if limited => {
                return Err(SnapshotError::Schema(format!(
                    "tenant column {c:?} does not exist in the root table"
                )));
            }
            Some((c, Some(col))) if col.kind != Kind::Text && limited => {
                return Err(SnapshotError::Schema(format!(
                    "tenant column {c:?} is not of a character type"
                )));
            }
            Some((_, Some(col))) if col.kind == Kind::Text => {
                Some(format!("s.{}::text", ident(&col.name)))
            }
            Some(_) => None,
        };
        let mut sel = select_list(root);
        sel.push(tenant_sel.unwrap_or_else(|| "NULL::text".into()));
        let no_pk = root.primary_key.is_empty();
        if no_pk {
            sel.push(ROW_IDENTITY.into());
        }
        let k = format!("s.{}", ident(&key.name));
        // Both conditions: `=` on the typed key can use its index, the text
        // comparison keeps only the stored spelling (`007` is not 7).
        let sql = format!(
            "SELECT {} FROM {} AS s WHERE {k} = $1::text::{} AND {k}::text = $1::text",
            sel.join(", "),
            self.table_ref(&root.name),
            key.cast,
        );
        let rows = match txn.query(&sql, &[&req.case_id]).await {
            Ok(rows) => rows,
            // A case id that is no value of the key's type names no case.
            Err(e) if e.code().is_some_and(|c| c.code().starts_with("22")) => {
                return Err(SnapshotError::NotFound);
            }
            Err(e) => return Err(self.pg_error(e, Some(&root.name))),
        };
        let row = match rows.as_slice() {
            [] => return Err(SnapshotError::NotFound),
            [row] => row,
            // Not unique: the configured key does not identify one case.
            _ => {
                return Err(SnapshotError::Internal(
                    rusqlite::Error::QueryReturnedMoreThanOneRow,
                ));
            }
        };
        let n = root.columns.len();
        let kinds: Vec<Kind> = root.columns.iter().map(|c| c.kind).collect();
        let pg = |e| self.pg_error(e, Some(&root.name));
        let values = decode(row, &kinds).map_err(pg)?;
        let tenant: Option<String> = row.try_get(n).map_err(pg)?;
        let identity = if no_pk {
            Some(row.try_get::<_, String>(n + 1).map_err(pg)?)
        } else {
            None
        };
        if let Some(allowed) = req.allowed_tenants
            && !tenant.as_ref().is_some_and(|t| allowed.contains(t))
        {
            // Same answer as a missing case, so ids cannot be probed.
            return Err(SnapshotError::NotFound);
        }
        Ok(RootRow {
            values,
            identity,
            tenant,
        })
    }

    fn table_ref(&self, table: &str) -> String {
        format!("{}.{}", ident(&self.options.schema), ident(table))
    }

    /// Maps a PostgreSQL error met while reading `table` (if known) to what
    /// a caller may see; the rest stays in the logs.
    fn pg_error(&self, e: tokio_postgres::Error, table: Option<&str>) -> SnapshotError {
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            return match code {
                "57014" if db.message().contains("statement timeout") => {
                    SnapshotError::StatementTimeout(self.options.statement_timeout)
                }
                "57014" => SnapshotError::Unavailable("PostgreSQL canceled the read"),
                "42501" => match table {
                    Some(t) => SnapshotError::PermissionDenied {
                        table: t.to_owned(),
                    },
                    None => SnapshotError::Unavailable("permission denied"),
                },
                c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") => {
                    SnapshotError::Unavailable(
                        "PostgreSQL ended the session or is out of resources",
                    )
                }
                _ => SnapshotError::Postgres(e),
            };
        }
        let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
        if e.is_closed() || io {
            return SnapshotError::Unavailable("the connection to PostgreSQL was lost");
        }
        SnapshotError::Postgres(e)
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

/// The mapped select expressions of a table's columns, in column order.
fn select_list(t: &catalog::PgTable) -> Vec<String> {
    t.columns
        .iter()
        .map(|c| c.kind.select(&format!("s.{}", ident(&c.name))))
        .collect()
}

/// An SQLite error while writing the snapshot: a full memdb is the ceiling.
fn snapshot_error(limit: u64) -> impl Fn(rusqlite::Error) -> SnapshotError {
    move |e| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => SnapshotError::TooLarge { limit },
        _ => SnapshotError::Internal(e),
    }
}

/// One export's copy: what was copied so far, per scope table.
struct Copier<'a> {
    src: &'a PgSource,
    txn: &'a Transaction<'a>,
    scope: &'a PgScope,
    /// Row identities copied, for tables without a primary key.
    ids: Vec<HashSet<String>>,
    /// Rows copied per table.
    counts: Vec<u64>,
    limit: u64,
}

/// Text arrays bound as parameters, and the SQL that names them.
#[derive(Default)]
struct Params(Vec<Vec<Option<String>>>);

impl Params {
    /// `(cols) IN (SELECT casts FROM unnest($i::text[], ...))` over `keys`
    /// (one array per column).
    ///
    /// One column becomes `s.col = ANY($i::text[]::type[])`: PostgreSQL
    /// (14 and later) hashes a constant array, where an `IN (SELECT ...)`
    /// under `OR` or `NOT` is a subplan rescanned for every row once its
    /// keys outgrow `work_mem` (hundreds of thousands of keys: minutes).
    fn in_list(
        &mut self,
        cols: &[String],
        casts: &[&str],
        keys: Vec<Vec<Option<String>>>,
    ) -> String {
        // An array-typed key keeps the general form: `type[][]` is `type[]`.
        if let ([col], [cast]) = (cols, casts)
            && !cast.ends_with(']')
        {
            let mut keys = keys;
            self.0.push(keys.pop().unwrap_or_default());
            return format!(
                "s.{} = ANY(${}::text[]::{cast}[])",
                ident(col),
                self.0.len()
            );
        }
        let mut arrays = Vec::new();
        let mut picks = Vec::new();
        for (i, (k, cast)) in keys.into_iter().zip(casts).enumerate() {
            self.0.push(k);
            arrays.push(format!("${}::text[]", self.0.len()));
            picks.push(format!("k.c{i}::{cast}"));
        }
        let names: Vec<String> = (0..cols.len()).map(|i| format!("c{i}")).collect();
        let lhs: Vec<String> = cols.iter().map(|c| format!("s.{}", ident(c))).collect();
        format!(
            "({}) IN (SELECT {} FROM unnest({}) AS k({}))",
            lhs.join(", "),
            picks.join(", "),
            arrays.join(", "),
            names.join(", ")
        )
    }
}

impl Copier<'_> {
    /// The snapshot with its tables and the root row.
    async fn start(
        &mut self,
        req: &SnapshotRequest<'_>,
        root: RootRow,
    ) -> Result<Snapshot, SnapshotError> {
        let (tables_sql, _) = self.scope.snapshot_ddl();
        let t = &self.scope.tables[0];
        let cols: Vec<String> = t.columns.iter().map(|c| ident(&c.name)).collect();
        let insert = format!(
            "INSERT INTO main.{} ({}) VALUES ({})",
            ident(&t.name),
            cols.join(", "),
            vec!["?"; cols.len()].join(", ")
        );
        let (limit, busy) = (req.max_bytes, req.busy_timeout);
        let values = root.values;
        let snap = tokio::task::spawn_blocking(move || {
            let snap = Snapshot::in_memory(limit, busy)?;
            let err = snapshot_error(limit);
            for sql in &tables_sql {
                snap.conn().execute_batch(sql).map_err(&err)?;
            }
            snap.conn()
                .execute(&insert, rusqlite::params_from_iter(values.iter()))
                .map_err(&err)?;
            Ok::<_, SnapshotError>(snap)
        })
        .await
        .map_err(|_| SnapshotError::Unavailable("the build was interrupted"))??;
        self.counts[0] = 1;
        self.ids[0].extend(root.identity);
        Ok(snap)
    }

    /// The fixed point, on the schedule `ScopeGraph::copy_closure` uses.
    async fn closure(&mut self, mut snap: Snapshot) -> Result<Snapshot, SnapshotError> {
        let mut schedule = ClosureSchedule::new(&self.scope.graph);
        while let Some((_, ti, fi)) = schedule.next_edge() {
            let (s, n) = self.run_edge(snap, ti, fi).await?;
            snap = s;
            if n > 0 {
                self.counts[ti] += n;
                schedule.gained_rows(ti);
            }
        }
        Ok(snap)
    }

    /// Copies the rows of table `ti` that reach copied rows through its
    /// foreign key `fi` and whose other in-graph keys are NULL or reach
    /// copied rows too; returns how many were new.
    async fn run_edge(
        &mut self,
        snap: Snapshot,
        ti: usize,
        fi: usize,
    ) -> Result<(Snapshot, u64), SnapshotError> {
        let g = &self.scope.graph.tables[ti];
        let t = &self.scope.tables[ti];
        // Key sets to read from the snapshot: each in-graph key's parent
        // values, then (when rows were copied) the table's own primary keys.
        let mut wanted: Vec<(String, Vec<String>)> = g
            .fks
            .iter()
            .map(|fk| (fk.parent.clone(), fk.to.clone()))
            .collect();
        let exclude_pk = !t.primary_key.is_empty() && self.counts[ti] > 0;
        if exclude_pk {
            wanted.push((t.name.clone(), t.primary_key.clone()));
        }
        let (snap, keys) = on_snapshot(snap, move |s| {
            wanted
                .iter()
                .map(|(table, cols)| read_keys(s, table, cols))
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .await?;
        let mut keys = keys.map_err(SnapshotError::Internal)?.into_iter();
        let mut fk_keys: Vec<_> = keys.by_ref().take(g.fks.len()).collect();
        if fk_keys[fi].first().is_none_or(|k| k.is_empty()) {
            return Ok((snap, 0));
        }

        let mut params = Params::default();
        let mut conds = Vec::new();
        let casts = |table: &str, cols: &[String]| -> Vec<&str> {
            let p = self.scope.tables.iter().find(|p| p.name == table);
            cols.iter()
                .map(|c| {
                    p.and_then(|p| p.column(c))
                        .map_or("text", |c| c.cast.as_str())
                })
                .collect()
        };
        let driving = &g.fks[fi];
        conds.push(params.in_list(
            &driving.from,
            &casts(&driving.parent, &driving.to),
            std::mem::take(&mut fk_keys[fi]),
        ));
        for (oi, other) in g.fks.iter().enumerate() {
            if oi == fi {
                continue;
            }
            let mut alts: Vec<String> = other
                .from
                .iter()
                .map(|f| format!("s.{} IS NULL", ident(f)))
                .collect();
            alts.push(params.in_list(
                &other.from,
                &casts(&other.parent, &other.to),
                std::mem::take(&mut fk_keys[oi]),
            ));
            conds.push(format!("({})", alts.join(" OR ")));
        }
        let mut sel = select_list(t);
        if exclude_pk {
            let own = keys.next().unwrap_or_default();
            // Key columns are never NULL, so NOT (k = ANY ...) is exact.
            conds.push(format!(
                "NOT ({})",
                params.in_list(&t.primary_key, &casts(&t.name, &t.primary_key), own)
            ));
        }
        let no_pk = t.primary_key.is_empty();
        if no_pk {
            sel.push(ROW_IDENTITY.into());
            if !self.ids[ti].is_empty() {
                params
                    .0
                    .push(self.ids[ti].iter().cloned().map(Some).collect());
                conds.push(format!(
                    "{ROW_IDENTITY} <> ALL (${}::text[])",
                    params.0.len()
                ));
            }
        }
        let sql = format!(
            "SELECT {} FROM {} AS s WHERE {}",
            sel.join(", "),
            self.src.table_ref(&t.name),
            conds.join(" AND ")
        );
        self.stream(snap, ti, &sql, params).await
    }

    /// Streams the rows of `sql` into table `ti` of the snapshot through a
    /// bounded channel; returns how many were new.
    async fn stream(
        &mut self,
        snap: Snapshot,
        ti: usize,
        sql: &str,
        params: Params,
    ) -> Result<(Snapshot, u64), SnapshotError> {
        let (src, scope) = (self.src, self.scope);
        let t = &scope.tables[ti];
        let pg = |e| src.pg_error(e, Some(&t.name));
        let rows = self
            .txn
            .query_raw(sql, params.0.iter())
            .await
            .map_err(&pg)?;
        let kinds: Vec<Kind> = t.columns.iter().map(|c| c.kind).collect();
        let no_pk = t.primary_key.is_empty();
        let (tx, mut rx) = mpsc::channel::<Batch>(CHANNEL_BATCHES);
        let (table, cols) = (
            t.name.clone(),
            t.columns.iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        );
        let inserter = tokio::task::spawn_blocking(move || {
            let r = insert_batches(&snap, &table, &cols, &mut rx);
            (snap, r)
        });
        let ids = &mut self.ids[ti];
        let read = async {
            let mut rows = std::pin::pin!(rows);
            let mut batch = Batch::default();
            while let Some(row) = rows.next().await {
                let row = row?;
                if no_pk && !ids.insert(row.try_get::<_, String>(kinds.len())?) {
                    continue;
                }
                if batch.push(decode(&row, &kinds)?)
                    && tx.send(std::mem::take(&mut batch)).await.is_err()
                {
                    // The inserter stopped; its error says why.
                    return Ok(());
                }
            }
            if !batch.rows.is_empty() {
                let _ = tx.send(batch).await;
            }
            Ok::<_, tokio_postgres::Error>(())
        }
        .await;
        drop(tx);
        let (snap, inserted) = inserter
            .await
            .map_err(|_| SnapshotError::Unavailable("the build was interrupted"))?;
        read.map_err(&pg)?;
        let n = inserted.map_err(snapshot_error(self.limit))?;
        Ok((snap, n))
    }
}
