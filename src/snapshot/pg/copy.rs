//! Rows from PostgreSQL into the snapshot: a reader on the async side, a
//! bounded channel of row batches, and an inserter on a blocking thread.

use super::super::{Snapshot, SnapshotError, ident};
use super::catalog::Kind;
use rusqlite::types::Value;
use tokio::sync::mpsc;
use tokio_postgres::Row;

/// Most rows in one batch.
pub const BATCH_ROWS: usize = 1024;
/// A batch is sent once its values hold this many bytes (so one batch holds
/// at most this plus one row).
pub const BATCH_BYTES: usize = 256 << 10;
/// Batches waiting for the inserter; the reader waits when they are all
/// taken. With the batch being filled and the one being inserted, at most
/// `CHANNEL_BATCHES + 2` batches of one table are in memory at once.
pub const CHANNEL_BATCHES: usize = 4;

/// Rows on their way to the snapshot, with their approximate size.
#[derive(Default)]
pub(super) struct Batch {
    pub rows: Vec<Vec<Value>>,
    pub bytes: usize,
}

impl Batch {
    /// Adds a row; true when the batch is full and should be sent.
    pub(super) fn push(&mut self, row: Vec<Value>) -> bool {
        self.bytes += row.iter().map(value_bytes).sum::<usize>();
        self.rows.push(row);
        self.rows.len() >= BATCH_ROWS || self.bytes >= BATCH_BYTES
    }
}

fn value_bytes(v: &Value) -> usize {
    16 + match v {
        Value::Text(s) => s.len(),
        Value::Blob(b) => b.len(),
        _ => 0,
    }
}

/// Decodes the first `kinds.len()` columns of a row into snapshot values.
pub(super) fn decode(row: &Row, kinds: &[Kind]) -> Result<Vec<Value>, tokio_postgres::Error> {
    kinds
        .iter()
        .enumerate()
        .map(|(i, k)| {
            Ok(match k {
                Kind::Int => row
                    .try_get::<_, Option<i64>>(i)?
                    .map_or(Value::Null, Value::Integer),
                Kind::Float => match row.try_get::<_, Option<f64>>(i)? {
                    None => Value::Null,
                    // SQLite would store NaN as NULL.
                    Some(f) if f.is_nan() => Value::Text("NaN".into()),
                    Some(f) => Value::Real(f),
                },
                Kind::Bool => row
                    .try_get::<_, Option<bool>>(i)?
                    .map_or(Value::Null, |b| Value::Integer(b.into())),
                Kind::Bytes => row
                    .try_get::<_, Option<Vec<u8>>>(i)?
                    .map_or(Value::Null, Value::Blob),
                _ => row
                    .try_get::<_, Option<String>>(i)?
                    .map_or(Value::Null, Value::Text),
            })
        })
        .collect()
}

/// A snapshot value in the text form PostgreSQL reads back into the
/// column's type (every key type's mapping round-trips through it).
pub(super) fn key_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Integer(i) => Some(i.to_string()),
        Value::Real(f) if f.is_infinite() => {
            Some(if *f > 0.0 { "Infinity" } else { "-Infinity" }.into())
        }
        // Debug prints the shortest text that reads back as the same f64.
        Value::Real(f) => Some(format!("{f:?}")),
        Value::Text(s) => Some(s.clone()),
        Value::Blob(b) => Some(format!("\\x{}", hex::encode(b))),
    }
}

/// The distinct values of `columns` in the snapshot table `table`, one
/// text array per column (NULL keys left out: they match nothing).
pub(super) fn read_keys(
    snap: &Snapshot,
    table: &str,
    columns: &[String],
) -> rusqlite::Result<Vec<Vec<Option<String>>>> {
    let cols: Vec<String> = columns.iter().map(|c| ident(c)).collect();
    let not_null: Vec<String> = cols.iter().map(|c| format!("{c} IS NOT NULL")).collect();
    let sql = format!(
        "SELECT DISTINCT {} FROM main.{} WHERE {}",
        cols.join(", "),
        ident(table),
        not_null.join(" AND ")
    );
    let mut st = snap.conn().prepare(&sql)?;
    let mut out = vec![Vec::new(); columns.len()];
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        for (i, col) in out.iter_mut().enumerate() {
            col.push(key_text(&r.get::<_, Value>(i)?));
        }
    }
    Ok(out)
}

/// Inserts the batches arriving on `rx` into `table` until the channel
/// closes; returns how many rows were new. Blocking.
pub(super) fn insert_batches(
    snap: &Snapshot,
    table: &str,
    columns: &[String],
    rx: &mut mpsc::Receiver<Batch>,
) -> rusqlite::Result<u64> {
    let conn = snap.conn();
    let cols: Vec<String> = columns.iter().map(|c| ident(c)).collect();
    let marks = vec!["?"; cols.len()].join(", ");
    // OR IGNORE: a row with a primary key already copied is skipped.
    let sql = format!(
        "INSERT OR IGNORE INTO main.{} ({}) VALUES ({marks})",
        ident(table),
        cols.join(", ")
    );
    conn.execute_batch("BEGIN")?;
    let mut st = conn.prepare_cached(&sql)?;
    let mut n = 0u64;
    while let Some(batch) = rx.blocking_recv() {
        for row in &batch.rows {
            n += st.execute(rusqlite::params_from_iter(row.iter()))? as u64;
        }
    }
    drop(st);
    conn.execute_batch("COMMIT")?;
    Ok(n)
}

/// Runs `f` on the snapshot on a blocking thread and hands both back.
pub(super) async fn on_snapshot<R: Send + 'static>(
    snap: Snapshot,
    f: impl FnOnce(&mut Snapshot) -> R + Send + 'static,
) -> Result<(Snapshot, R), SnapshotError> {
    tokio::task::spawn_blocking(move || {
        let mut snap = snap;
        let r = f(&mut snap);
        (snap, r)
    })
    .await
    .map_err(|_| SnapshotError::Unavailable("the build was interrupted"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_full_at_its_row_or_byte_bound() {
        let mut b = Batch::default();
        for i in 0..BATCH_ROWS - 1 {
            assert!(!b.push(vec![Value::Integer(i as i64)]));
        }
        assert!(b.push(vec![Value::Integer(0)]));

        let mut b = Batch::default();
        let big = "x".repeat(BATCH_BYTES / 4);
        assert!(!b.push(vec![Value::Text(big.clone())]));
        assert!(!b.push(vec![Value::Text(big.clone())]));
        assert!(!b.push(vec![Value::Text(big.clone())]));
        assert!(b.push(vec![Value::Text(big)]));
        assert!(b.bytes < BATCH_BYTES + BATCH_BYTES / 4 + 64);
    }

    #[test]
    fn key_text_round_trips_through_postgres_input_forms() {
        assert_eq!(key_text(&Value::Null), None);
        assert_eq!(key_text(&Value::Integer(-7)).as_deref(), Some("-7"));
        assert_eq!(key_text(&Value::Real(0.1)).as_deref(), Some("0.1"));
        assert_eq!(
            key_text(&Value::Real(f64::NEG_INFINITY)).as_deref(),
            Some("-Infinity")
        );
        assert_eq!(
            key_text(&Value::Blob(vec![0, 0xab])).as_deref(),
            Some("\\x00ab")
        );
    }
}
