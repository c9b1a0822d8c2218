//! Rows of SQLite databases as comparable values: a snapshot against its
//! source, by hand-written SQL that follows schema/cases.sql.

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;

/// Tables of the demo schema (schema/cases.sql) that a case export carries:
/// every table but `users`.
pub const DEMO_CASE_TABLES: [&str; 13] = [
    "analysis_results",
    "annotations",
    "cases",
    "custody_events",
    "evidence",
    "evidence_documents",
    "evidence_emails",
    "evidence_links",
    "evidence_photos",
    "indicators",
    "notes",
    "subjects",
    "transactions",
];

/// Opens a database file read-only.
#[track_caller]
pub fn open_ro(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// One value as an SQL literal, so types stay distinguishable:
/// `NULL`, `7`, `1.5`, `'text'` (quotes doubled), `x'00ff'`.
pub fn literal(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => format!("{f:?}"),
        ValueRef::Text(t) => format!("'{}'", String::from_utf8_lossy(t).replace('\'', "''")),
        ValueRef::Blob(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!("x'{hex}'")
        }
    }
}

/// Every row `sql` returns, each as its values rendered by [`literal`],
/// sorted so results can be compared as sets.
#[track_caller]
pub fn query_rows(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Vec<Vec<String>> {
    let run = || -> rusqlite::Result<Vec<Vec<String>>> {
        let mut st = conn.prepare(sql)?;
        let n = st.column_count();
        let mut rows = st.query(params)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(
                (0..n)
                    .map(|i| r.get_ref(i).map(literal))
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            );
        }
        Ok(out)
    };
    let mut rows = run().unwrap_or_else(|e| panic!("query {sql:?}: {e}"));
    rows.sort();
    rows
}

/// Quotes an identifier for hand-built SQL in tests.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// All rows of `table` (every column, in declared order), sorted.
#[track_caller]
pub fn all_rows(conn: &Connection, table: &str) -> Vec<Vec<String>> {
    query_rows(conn, &format!("SELECT * FROM {}", quote_ident(table)), [])
}

/// The rows of `table` that belong to `case_id` in a demo-schema database,
/// selected with hand-written SQL that follows schema/cases.sql (and not the
/// exporter's graph walk), every column, sorted.
#[track_caller]
pub fn case_rows(conn: &Connection, table: &str, case_id: &str) -> Vec<Vec<String>> {
    let via_evidence = |t: &str| {
        format!(
            "SELECT x.* FROM {t} x JOIN evidence e ON e.id = x.evidence_id WHERE e.case_id = ?1"
        )
    };
    let sql = match table {
        "cases" => "SELECT * FROM cases WHERE id = ?1".to_string(),
        "subjects" | "transactions" | "analysis_results" | "evidence" | "notes" => {
            format!("SELECT * FROM {table} WHERE case_id = ?1")
        }
        "indicators" => "SELECT i.* FROM indicators i \
             JOIN analysis_results a ON a.id = i.analysis_id WHERE a.case_id = ?1"
            .to_string(),
        "evidence_documents" | "evidence_photos" | "evidence_emails" | "annotations"
        | "custody_events" => via_evidence(table),
        // Only links whose two ends are both evidence of the case.
        "evidence_links" => "SELECT l.* FROM evidence_links l \
             JOIN evidence a ON a.id = l.from_evidence_id \
             JOIN evidence b ON b.id = l.to_evidence_id \
             WHERE a.case_id = ?1 AND b.case_id = ?1"
            .to_string(),
        other => panic!("no hand-written case query for table {other:?}: add one"),
    };
    query_rows(conn, &sql, [case_id])
}

/// Names of the user tables of a database, sorted.
#[track_caller]
pub fn table_names(conn: &Connection) -> Vec<String> {
    query_rows(
        conn,
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
        [],
    )
    .into_iter()
    .map(|r| {
        let quoted = &r[0];
        quoted[1..quoted.len() - 1].replace("''", "'")
    })
    .collect()
}

/// Column names of a table, in declared order.
#[track_caller]
pub fn column_names(conn: &Connection, table: &str) -> Vec<String> {
    let mut st = conn
        .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
        .expect("prepare pragma_table_info");
    st.query_map([table], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .unwrap_or_else(|e| panic!("columns of {table}: {e}"))
}
