//! Reads a decrypted snapshot in memory: its manifest, its case row and its
//! tables, without writing a file.

use super::{MANIFEST_TABLE, ident};
use rusqlite::{Connection, types::ValueRef};
use serde::Serialize;

/// The `_export_manifest` row of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    /// Version of the sealed format (docs/FORMAT.md); currently 1.
    pub format_version: u32,
    /// The export's 32 lowercase hex digits, as sealed in every chunk header.
    pub export_id: String,
    /// The case id as requested: the root row's key value.
    pub case_id: String,
    /// The configured table whose one row is the case.
    pub root_table: String,
    /// When the export started, RFC 3339 UTC.
    pub created_at: String,
    /// SHA-256 fingerprint of the whole source schema, lowercase hex.
    pub source_schema_sha256: String,
    /// Version of `case-export` that built the snapshot.
    pub tool_version: String,
    /// Rows per table as recorded at export time, sorted by table.
    pub row_counts: Vec<(String, u64)>,
}

/// A snapshot opened read-only in memory.
pub struct SnapshotView {
    conn: Connection,
}

/// Why a decrypted snapshot cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// SQLite refused the bytes or a query on them.
    #[error("the decrypted data is not a readable case snapshot: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The manifest is missing or malformed.
    #[error("the snapshot has no valid {MANIFEST_TABLE} table: {0}")]
    Manifest(String),
}

impl SnapshotView {
    /// Loads `bytes` (a serialized SQLite database) read-only in memory.
    pub fn open(bytes: &[u8]) -> Result<Self, ViewError> {
        let mut conn = Connection::open_in_memory()?;
        conn.deserialize_read_exact(rusqlite::MAIN_DB, bytes, bytes.len(), true)?;
        Ok(Self { conn })
    }

    /// The connection, for callers that want to query the snapshot.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Reads the manifest row.
    pub fn manifest(&self) -> Result<Manifest, ViewError> {
        let sql = format!(
            "SELECT format_version, export_id, case_id, root_table, created_at, \
             source_schema_sha256, tool_version, row_counts FROM {MANIFEST_TABLE}"
        );
        let (m, counts) = self.conn.query_row(&sql, [], |r| {
            Ok((
                Manifest {
                    format_version: r.get(0)?,
                    export_id: r.get(1)?,
                    case_id: r.get(2)?,
                    root_table: r.get(3)?,
                    created_at: r.get(4)?,
                    source_schema_sha256: r.get(5)?,
                    tool_version: r.get(6)?,
                    row_counts: vec![],
                },
                r.get::<_, String>(7)?,
            ))
        })?;
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&counts).map_err(|e| ViewError::Manifest(e.to_string()))?;
        let mut row_counts = Vec::with_capacity(map.len());
        for (t, v) in map {
            let n = v
                .as_u64()
                .ok_or_else(|| ViewError::Manifest(format!("row count of {t} is not a number")))?;
            row_counts.push((t, n));
        }
        row_counts.sort();
        Ok(Manifest { row_counts, ..m })
    }

    /// The case's root row as (column, value as text) pairs.
    pub fn case_row(&self, m: &Manifest) -> Result<Vec<(String, String)>, ViewError> {
        let sql = format!("SELECT * FROM {} LIMIT 1", ident(&m.root_table));
        let mut st = self.conn.prepare(&sql)?;
        let names: Vec<String> = st.column_names().map(|s| s.to_string()).collect();
        let row = st.query_row([], |r| {
            (0..names.len())
                .map(|i| r.get_ref(i).map(display_value))
                .collect::<rusqlite::Result<Vec<String>>>()
        })?;
        Ok(names.into_iter().zip(row).collect())
    }

    /// Rows actually present in each manifest table.
    pub fn table_counts(&self, m: &Manifest) -> Result<Vec<(String, u64)>, ViewError> {
        m.row_counts
            .iter()
            .map(|(t, _)| {
                let n: i64 = self.conn.query_row(
                    &format!("SELECT count(*) FROM {}", ident(t)),
                    [],
                    |r| r.get(0),
                )?;
                Ok((t.clone(), n as u64))
            })
            .collect()
    }

    /// `PRAGMA integrity_check`: true when SQLite answers "ok".
    pub fn integrity_ok(&self) -> Result<bool, ViewError> {
        let s: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        Ok(s == "ok")
    }
}

fn display_value(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        ValueRef::Blob(b) => format!("<{} bytes>", b.len()),
    }
}
