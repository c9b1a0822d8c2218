//! Seeds the demo case database into PostgreSQL (`schema/cases.pg.sql`):
//! the generator fills an in-memory SQLite database exactly as for a file,
//! and every table is streamed from it into PostgreSQL with binary
//! `COPY ... FROM STDIN`, parents before children, in one transaction. The
//! same options therefore give the same rows in both databases. The
//! in-memory database is as large as the SQLite file would be.

use std::time::Instant;

use bytes::BytesMut;
use rusqlite::Connection;
use rusqlite::types::Value;
use time::format_description::well_known::Rfc3339;
use time::macros::{date, datetime, format_description};
use tokio::sync::mpsc;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use super::{SeedError, SeedOptions, SeedReport, TABLES, seed_connection, validate};
use crate::db::PgConnector;

/// The demo case database's PostgreSQL schema (`schema/cases.pg.sql`).
pub const PG_SCHEMA_SQL: &str = include_str!("../../schema/cases.pg.sql");

/// Rows per message from the generator thread to the COPY writer: large
/// enough to amortise the hand-over, small enough to keep memory flat.
const BATCH_ROWS: usize = 512;
/// Batches in flight between the two.
const BATCHES_IN_FLIGHT: usize = 4;

/// Connects with `connector` and seeds its database (see [`seed_postgres_client`]).
pub async fn seed_postgres(
    connector: &PgConnector,
    opts: &SeedOptions,
) -> Result<SeedReport, SeedError> {
    validate(opts)?;
    let mut client = connector.connect().await.map_err(|e| SeedError::Connect {
        url: connector.url().to_owned(),
        message: pg_message(&e),
    })?;
    seed_postgres_client(&mut client, opts).await
}

/// Applies `schema/cases.pg.sql` in the connection's `search_path` and
/// fills it with the same rows [`super::seed_demo`] writes for `opts`, in
/// one transaction: a failure leaves the database as it was. Refuses a
/// database whose demo tables already hold rows.
///
/// `SeedReport::bytes` is the demo tables' size with their indexes.
pub async fn seed_postgres_client(
    client: &mut tokio_postgres::Client,
    opts: &SeedOptions,
) -> Result<SeedReport, SeedError> {
    validate(opts)?;
    let started = Instant::now();
    let tx = client
        .transaction()
        .await
        .map_err(pg_err("begin a transaction"))?;
    tx.batch_execute(PG_SCHEMA_SQL)
        .await
        .map_err(pg_err("apply schema/cases.pg.sql"))?;
    // Writers wait for this seeder (readers do not), so two seeders cannot
    // both find the tables empty.
    let all = TABLES.map(quote_ident).join(", ");
    tx.batch_execute(&format!("LOCK TABLE {all} IN EXCLUSIVE MODE"))
        .await
        .map_err(pg_err("lock the demo tables"))?;
    for table in TABLES {
        let sql = format!("SELECT EXISTS (SELECT 1 FROM {})", quote_ident(table));
        let used: bool = tx
            .query_one(&sql, &[])
            .await
            .map_err(pg_err(format!("look into {table}")))?
            .get(0);
        if used {
            return Err(SeedError::NotEmpty(table));
        }
    }
    // users are copied before the cases they point at; the reference is
    // checked at commit instead.
    tx.batch_execute("SET CONSTRAINTS users_last_viewed_case_id_fkey DEFERRED")
        .await
        .map_err(pg_err("defer the users -> cases reference"))?;

    let (sender, mut batches) = mpsc::channel(BATCHES_IN_FLIGHT);
    let opts = opts.clone();
    // SQLite and the generator block: they run on a thread of their own
    // and hand rows over through a bounded channel.
    let generator = tokio::task::spawn_blocking(move || generate(&opts, &sender));

    let mut rows = 0u64;
    let mut copy: Option<TableCopy> = None;
    let copied = async {
        while let Some(msg) = batches.recv().await {
            match msg {
                Msg::Table { table, columns } => {
                    if let Some(done) = copy.take() {
                        rows += done.finish().await?;
                    }
                    copy = Some(TableCopy::start(&tx, table, columns).await?);
                }
                Msg::Rows(batch) => {
                    let Some(current) = copy.as_mut() else {
                        return Err(SeedError::Aborted("rows came before their table"));
                    };
                    current.write(batch).await?;
                }
            }
        }
        if let Some(done) = copy.take() {
            rows += done.finish().await?;
        }
        Ok::<(), SeedError>(())
    }
    .await;
    // On a COPY failure the generator sees the channel closed and stops.
    drop(batches);
    let generated = generator
        .await
        .map_err(|_| SeedError::Aborted("the demo generator stopped unexpectedly"))?;
    copied?;
    let case_ids = generated?;
    tx.commit()
        .await
        .map_err(pg_err("commit (a deferred reference may not hold)"))?;

    // Fresh statistics, so the first exports do not plan on empty tables.
    client
        .batch_execute(&format!("ANALYZE {all}"))
        .await
        .map_err(pg_err("analyze the demo tables"))?;
    let bytes: i64 = client
        .query_one(
            "SELECT COALESCE(sum(pg_total_relation_size(to_regclass(quote_ident(t)))), 0)::bigint \
             FROM unnest($1::text[]) AS t",
            &[&TABLES.as_slice()],
        )
        .await
        .map_err(pg_err("measure the demo tables"))?
        .get(0);
    Ok(SeedReport {
        case_ids,
        rows,
        bytes: u64::try_from(bytes).unwrap_or(0),
        elapsed: started.elapsed(),
    })
}

/// What the generator thread sends: a table's columns, then its rows.
enum Msg {
    Table {
        table: &'static str,
        columns: Vec<String>,
    },
    Rows(Vec<Vec<Value>>),
}

/// Runs on a blocking thread: generates into memory and sends every table
/// in insertion order. Returns the case ids; a closed channel means the
/// COPY side failed, whose error is the one reported.
fn generate(opts: &SeedOptions, out: &mpsc::Sender<Msg>) -> Result<Vec<String>, SeedError> {
    let mut conn = Connection::open_in_memory()?;
    let report = seed_connection(&mut conn, opts)?;
    for table in TABLES {
        // rowid order is the generator's insertion order, which its own
        // (immediately checked) foreign keys already accept.
        let mut stmt = conn.prepare(&format!(
            "SELECT * FROM {} ORDER BY rowid",
            quote_ident(table)
        ))?;
        let columns: Vec<String> = stmt.column_names().map(str::to_owned).collect();
        let width = columns.len();
        if out.blocking_send(Msg::Table { table, columns }).is_err() {
            return Ok(report.case_ids);
        }
        let mut rows = stmt.query([])?;
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        while let Some(row) = rows.next()? {
            let values = (0..width)
                .map(|i| row.get::<_, Value>(i))
                .collect::<rusqlite::Result<Vec<_>>>()?;
            batch.push(values);
            if batch.len() == BATCH_ROWS {
                let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH_ROWS));
                if out.blocking_send(Msg::Rows(full)).is_err() {
                    return Ok(report.case_ids);
                }
            }
        }
        if !batch.is_empty() && out.blocking_send(Msg::Rows(batch)).is_err() {
            return Ok(report.case_ids);
        }
    }
    Ok(report.case_ids)
}

/// One table's binary COPY in progress.
struct TableCopy {
    table: &'static str,
    columns: Vec<String>,
    kinds: Vec<Kind>,
    writer: std::pin::Pin<Box<BinaryCopyInWriter>>,
}

impl TableCopy {
    async fn start(
        tx: &tokio_postgres::Transaction<'_>,
        table: &'static str,
        columns: Vec<String>,
    ) -> Result<Self, SeedError> {
        let list = columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let target = quote_ident(table);
        // The column types come from PostgreSQL itself, so the values are
        // encoded for whatever the schema declares.
        let probe = tx
            .prepare(&format!("SELECT {list} FROM {target} LIMIT 0"))
            .await
            .map_err(pg_err(format!("read the columns of {table}")))?;
        let types: Vec<Type> = probe.columns().iter().map(|c| c.type_().clone()).collect();
        let kinds = columns
            .iter()
            .zip(&types)
            .map(|(column, ty)| {
                Kind::of(ty).ok_or_else(|| SeedError::Load {
                    table,
                    column: column.clone(),
                    message: format!("its type {ty} is not one the demo loader writes"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sink = tx
            .copy_in(&format!(
                "COPY {target} ({list}) FROM STDIN (FORMAT binary)"
            ))
            .await
            .map_err(pg_err(format!("start copying into {table}")))?;
        Ok(Self {
            table,
            columns,
            kinds,
            writer: Box::pin(BinaryCopyInWriter::new(sink, &types)),
        })
    }

    async fn write(&mut self, batch: Vec<Vec<Value>>) -> Result<(), SeedError> {
        let mut cells = Vec::with_capacity(self.kinds.len());
        for row in batch {
            cells.clear();
            for ((value, kind), column) in row.into_iter().zip(&self.kinds).zip(&self.columns) {
                cells.push(kind.encode(value).map_err(|message| SeedError::Load {
                    table: self.table,
                    column: column.clone(),
                    message,
                })?);
            }
            let refs: Vec<&(dyn ToSql + Sync)> =
                cells.iter().map(|c| c as &(dyn ToSql + Sync)).collect();
            self.writer
                .as_mut()
                .write(&refs)
                .await
                .map_err(pg_err(format!("copy into {}", self.table)))?;
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<u64, SeedError> {
        self.writer
            .as_mut()
            .finish()
            .await
            .map_err(pg_err(format!("finish copying into {}", self.table)))
    }
}

/// How a SQLite value becomes a PostgreSQL column's binary value.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Int8,
    Int4,
    Int2,
    Float8,
    Bool,
    Text,
    Uuid,
    Date,
    Timestamptz,
    Json,
    Jsonb,
    Bytea,
}

impl Kind {
    fn of(ty: &Type) -> Option<Self> {
        Some(match *ty {
            Type::INT8 => Self::Int8,
            Type::INT4 => Self::Int4,
            Type::INT2 => Self::Int2,
            Type::FLOAT8 => Self::Float8,
            Type::BOOL => Self::Bool,
            Type::TEXT | Type::VARCHAR => Self::Text,
            Type::UUID => Self::Uuid,
            Type::DATE => Self::Date,
            Type::TIMESTAMPTZ => Self::Timestamptz,
            Type::JSON => Self::Json,
            Type::JSONB => Self::Jsonb,
            Type::BYTEA => Self::Bytea,
            _ => return None,
        })
    }

    /// The binary value, or what is wrong with the SQLite value.
    fn encode(self, value: Value) -> Result<Cell, String> {
        let wrong = |v: &Value| format!("{} does not fit it", describe(v));
        Ok(match (self, value) {
            (_, Value::Null) => Cell::Null,
            (Self::Int8, Value::Integer(i)) => Cell::Int8(i),
            (Self::Int4, Value::Integer(i)) => Cell::Int4(
                i32::try_from(i).map_err(|_| format!("{i} is out of range for integer"))?,
            ),
            (Self::Int2, Value::Integer(i)) => Cell::Int2(
                i16::try_from(i).map_err(|_| format!("{i} is out of range for smallint"))?,
            ),
            (Self::Float8, Value::Real(f)) => Cell::Float8(f),
            (Self::Bool, Value::Integer(i @ (0 | 1))) => Cell::Bool(i == 1),
            (Self::Text, Value::Text(s)) => Cell::Text(s),
            (Self::Uuid, Value::Text(s)) => {
                let id = uuid::Uuid::parse_str(&s).map_err(|_| format!("{s:?} is not a UUID"))?;
                Cell::Raw(id.as_bytes().to_vec())
            }
            (Self::Date, Value::Text(s)) => {
                let d = time::Date::parse(&s, format_description!("[year]-[month]-[day]"))
                    .map_err(|_| format!("{s:?} is not a YYYY-MM-DD date"))?;
                // Binary dates count days from 2000-01-01.
                let days = d.to_julian_day() - date!(2000 - 01 - 01).to_julian_day();
                Cell::Raw(days.to_be_bytes().to_vec())
            }
            (Self::Timestamptz, Value::Text(s)) => {
                let t = time::OffsetDateTime::parse(&s, &Rfc3339)
                    .map_err(|_| format!("{s:?} is not an RFC 3339 timestamp"))?;
                // Binary timestamps count microseconds from 2000-01-01 UTC.
                let micros = (t - datetime!(2000-01-01 0:00 UTC)).whole_microseconds();
                let micros = i64::try_from(micros)
                    .map_err(|_| format!("{s:?} is out of range for timestamptz"))?;
                Cell::Raw(micros.to_be_bytes().to_vec())
            }
            // The binary form of json is its text, unchanged.
            (Self::Json, Value::Text(s)) => Cell::Raw(s.into_bytes()),
            (Self::Jsonb, Value::Text(s)) => {
                let mut raw = Vec::with_capacity(s.len() + 1);
                raw.push(1); // jsonb binary format version
                raw.extend_from_slice(s.as_bytes());
                Cell::Raw(raw)
            }
            (Self::Bytea, Value::Blob(b)) => Cell::Raw(b),
            (_, v) => return Err(wrong(&v)),
        })
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "NULL",
        Value::Integer(_) => "an integer",
        Value::Real(_) => "a real",
        Value::Text(_) => "text",
        Value::Blob(_) => "a blob",
    }
}

/// One encoded value of a COPY row.
#[derive(Debug)]
enum Cell {
    Null,
    Int8(i64),
    Int4(i32),
    Int2(i16),
    Float8(f64),
    Bool(bool),
    Text(String),
    /// Already in the column type's binary format.
    Raw(Vec<u8>),
}

impl ToSql for Cell {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            Self::Null => Ok(IsNull::Yes),
            Self::Int8(v) => v.to_sql(ty, out),
            Self::Int4(v) => v.to_sql(ty, out),
            Self::Int2(v) => v.to_sql(ty, out),
            Self::Float8(v) => v.to_sql(ty, out),
            Self::Bool(v) => v.to_sql(ty, out),
            Self::Text(v) => v.as_str().to_sql(ty, out),
            Self::Raw(b) => {
                out.extend_from_slice(b);
                Ok(IsNull::No)
            }
        }
    }

    // Each cell was made for its column's type by `Kind::encode`.
    fn accepts(_: &Type) -> bool {
        true
    }

    to_sql_checked!();
}

/// `"name"` with inner quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn pg_err(doing: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> SeedError {
    let doing = doing.into();
    move |e| SeedError::Postgres {
        doing,
        message: pg_message(&e),
    }
}

/// The server's own message where there is one, else the client error
/// with its causes (tokio-postgres's Display alone says only "db error").
fn pg_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut m = db.message().to_owned();
        if let Some(detail) = db.detail() {
            m.push_str(" (");
            m.push_str(detail);
            m.push(')');
        }
        return m;
    }
    let mut m = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        m.push_str(": ");
        m.push_str(&s.to_string());
        source = s.source();
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted_with_inner_quotes_doubled() {
        assert_eq!(quote_ident("cases"), "\"cases\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
    }

    fn raw(cell: Cell) -> Vec<u8> {
        match cell {
            Cell::Raw(b) => b,
            other => panic!("not raw: {other:?}"),
        }
    }

    #[test]
    fn dates_and_timestamps_encode_from_the_postgres_epoch() {
        let d = raw(Kind::Date.encode(Value::Text("2000-01-02".into())).unwrap());
        assert_eq!(d, 1i32.to_be_bytes());
        let t = raw(Kind::Timestamptz
            .encode(Value::Text("2000-01-01T00:00:01Z".into()))
            .unwrap());
        assert_eq!(t, 1_000_000i64.to_be_bytes());
        let before = raw(Kind::Timestamptz
            .encode(Value::Text("1999-12-31T23:59:59Z".into()))
            .unwrap());
        assert_eq!(before, (-1_000_000i64).to_be_bytes());
    }

    #[test]
    fn values_that_do_not_fit_their_column_say_so() {
        let e = Kind::Uuid.encode(Value::Text("nope".into())).unwrap_err();
        assert!(e.contains("not a UUID"), "{e}");
        let e = Kind::Date.encode(Value::Integer(3)).unwrap_err();
        assert!(e.contains("an integer does not fit"), "{e}");
        let e = Kind::Int4.encode(Value::Integer(i64::MAX)).unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let e = Kind::Timestamptz
            .encode(Value::Text("2025-03-14 09:26".into()))
            .unwrap_err();
        assert!(e.contains("RFC 3339"), "{e}");
        assert!(matches!(Kind::Int8.encode(Value::Null), Ok(Cell::Null)));
    }
}
