//! Owns the demo case database: its schema and a deterministic synthetic-case
//! generator. `words` holds the word lists, `generator` makes the rows and
//! inserts them table by table, `text` renders names, sentences, money and
//! times.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};
use time::macros::datetime;

/// The demo case database's schema (`schema/cases.sql`), as SQL to execute.
pub const SCHEMA_SQL: &str = include_str!("../../schema/cases.sql");

/// Every table the schema creates, parents before children.
pub const TABLES: [&str; 14] = [
    "users",
    "cases",
    "subjects",
    "transactions",
    "analysis_results",
    "indicators",
    "evidence",
    "evidence_documents",
    "evidence_photos",
    "evidence_emails",
    "evidence_links",
    "annotations",
    "notes",
    "custody_events",
];

pub(crate) const START: i64 = datetime!(2023-01-01 0:00 UTC).unix_timestamp();
/// Exclusive, so every generated timestamp falls in 2023–2025.
pub(crate) const END: i64 = datetime!(2026-01-01 0:00 UTC).unix_timestamp();
pub(crate) const DAY: i64 = 86_400;
pub(crate) const DOB_START: i64 = datetime!(1940-01-01 0:00 UTC).unix_timestamp();
pub(crate) const DOB_END: i64 = datetime!(2004-01-01 0:00 UTC).unix_timestamp();

// Writing into a String cannot fail, so the fmt::Result carries nothing.
macro_rules! w {
    ($buf:expr, $($arg:tt)*) => {{
        let _ = write!($buf, $($arg)*);
    }};
}

mod generator;
mod pg;
mod text;
mod words;

use generator::Generator;
pub use pg::{PG_SCHEMA_SQL, seed_postgres, seed_postgres_client};

/// What the demo generator produces; the same options give the same database.
#[derive(Debug, Clone)]
pub struct SeedOptions {
    /// Number of cases to generate; at least 1.
    pub cases: u32,
    /// Transactions per case; the other per-case tables get set fractions of it.
    pub rows_per_case: u32,
    /// Seed of the random generator that makes the output deterministic.
    pub seed: u64,
    /// Tenant names cases are spread over at random; none may be empty.
    pub tenants: Vec<String>,
}

impl Default for SeedOptions {
    fn default() -> Self {
        Self {
            cases: 20,
            rows_per_case: 200,
            seed: 42,
            tenants: vec!["north".to_owned(), "south".to_owned()],
        }
    }
}

/// What a seeding run produced.
#[derive(Debug, Clone)]
pub struct SeedReport {
    /// Ids (UUIDs) of the generated cases, in generation order.
    pub case_ids: Vec<String>,
    /// Rows inserted, over all tables.
    pub rows: u64,
    /// Size of the database once the WAL is folded in, in bytes (for
    /// PostgreSQL: the demo tables with their indexes).
    pub bytes: u64,
    /// Wall time spent applying the schema and filling the database.
    pub elapsed: Duration,
}

impl SeedReport {
    /// Inserted rows per second of wall time; 0 when no time was measured.
    pub fn rows_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.rows as f64 / secs
        } else {
            0.0
        }
    }
}

/// Why the demo database could not be seeded.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The path already exists and is not an empty file.
    #[error("{} already exists: pass a new path", .0.display())]
    Exists(PathBuf),
    /// The database file could not be created or inspected.
    #[error("cannot create {}: {source}", path.display())]
    Io {
        /// The database file.
        path: PathBuf,
        /// The underlying I/O error.
        source: io::Error,
    },
    /// `cases` was 0.
    #[error("no cases requested: ask for at least one case")]
    NoCases,
    /// No tenants were given, or one of them is empty.
    #[error("no tenant names given: pass at least one non-empty tenant")]
    NoTenants,
    /// The named table already holds rows, whose ids would collide.
    #[error("table {0} already has rows: seed into a new database")]
    NotEmpty(&'static str),
    /// A SQLite operation failed.
    #[error("sqlite error while seeding: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The PostgreSQL server could not be reached or refused the login.
    #[error(
        "cannot connect to PostgreSQL at {url}: {message}: check that the server runs and the \
         URL, and give seed-demo the password in CASE_EXPORT_CASE_DB_PASSWORD or --password-file"
    )]
    Connect {
        /// The URL (it never holds a password).
        url: String,
        /// What the client or the server said.
        message: String,
    },
    /// A PostgreSQL statement failed; nothing was committed.
    #[error("PostgreSQL refused to {doing}: {message}; nothing was written")]
    Postgres {
        /// What the seeder was doing.
        doing: String,
        /// What the server said.
        message: String,
    },
    /// A generated value does not fit its PostgreSQL column (a schema that
    /// differs from `schema/cases.pg.sql`).
    #[error(
        "cannot load {table}.{column} into PostgreSQL: {message}; apply schema/cases.pg.sql \
         to a new database"
    )]
    Load {
        /// The table.
        table: &'static str,
        /// The column.
        column: String,
        /// What does not fit.
        message: String,
    },
    /// The seeder's own machinery failed; nothing was committed.
    #[error("seeding stopped: {0}; nothing was written")]
    Aborted(&'static str),
}

/// Creates a new database at `path` (refuse if it exists and is non-empty) and fills it.
pub fn seed_demo(path: &Path, opts: &SeedOptions) -> Result<SeedReport, SeedError> {
    validate(opts)?;
    let created = claim_path(path)?;
    let result = seed_file(path, opts);
    if result.is_err() && created {
        // A half-built demo database is useless and would make a retry with the
        // same path refuse; the seeding error matters more than this one.
        let _ = fs::remove_file(path);
    }
    result
}

/// Applies the schema and fills an already open connection (used by tests on temp files).
pub fn seed_connection(conn: &mut Connection, opts: &SeedOptions) -> Result<SeedReport, SeedError> {
    validate(opts)?;
    let started = Instant::now();
    let fk_was_on: bool = conn.pragma_query_value(None, "foreign_keys", |r| r.get(0))?;
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    // Enforced while seeding so a generator bug fails loudly instead of
    // producing a database the exporter would trip over.
    conn.pragma_update(None, "foreign_keys", true)?;

    let filled = fill(conn, opts);
    // Restore even when filling failed: the caller keeps using this connection.
    let restored = conn
        .pragma_update(None, "synchronous", "NORMAL")
        .and_then(|()| conn.pragma_update(None, "foreign_keys", fk_was_on));
    let (case_ids, rows) = filled?;
    restored?;

    // Fold the WAL into the main file so the file alone is the whole database.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
    let bytes: i64 = conn.query_row(
        "SELECT p.page_count * s.page_size FROM pragma_page_count() p, pragma_page_size() s",
        [],
        |r| r.get(0),
    )?;
    Ok(SeedReport {
        case_ids,
        rows,
        bytes: u64::try_from(bytes).unwrap_or(0),
        elapsed: started.elapsed(),
    })
}

fn validate(opts: &SeedOptions) -> Result<(), SeedError> {
    if opts.cases == 0 {
        return Err(SeedError::NoCases);
    }
    if opts.tenants.is_empty() || opts.tenants.iter().any(|t| t.is_empty()) {
        return Err(SeedError::NoTenants);
    }
    Ok(())
}

/// Returns whether the file was created here (and so may be removed on failure).
fn claim_path(path: &Path) -> Result<bool, SeedError> {
    let io_err = |source| SeedError::Io {
        path: path.to_path_buf(),
        source,
    };
    // create_new is atomic, so two seeders can never fill the same file.
    match OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let meta = fs::metadata(path).map_err(io_err)?;
            // An empty file is an empty SQLite database (e.g. from mktemp).
            if meta.is_file() && meta.len() == 0 {
                Ok(false)
            } else {
                Err(SeedError::Exists(path.to_path_buf()))
            }
        }
        Err(e) => Err(io_err(e)),
    }
}

fn seed_file(path: &Path, opts: &SeedOptions) -> Result<SeedReport, SeedError> {
    let mut conn = Connection::open(path)?;
    let report = seed_connection(&mut conn, opts)?;
    // Closing explicitly surfaces late write errors and removes -wal/-shm.
    conn.close().map_err(|(_, e)| e)?;
    Ok(report)
}

fn fill(conn: &mut Connection, opts: &SeedOptions) -> Result<(Vec<String>, u64), SeedError> {
    // Immediate: fail up front if another writer holds the database.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA_SQL)?;
    // Ids are assigned here, so existing rows would collide half-way through.
    for table in TABLES {
        let used: bool =
            tx.query_row(&format!("SELECT EXISTS (SELECT 1 FROM {table})"), [], |r| {
                r.get(0)
            })?;
        if used {
            return Err(SeedError::NotEmpty(table));
        }
    }
    let out = Generator::new(&tx, opts)?.run()?;
    tx.commit()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn small(seed: u64) -> SeedOptions {
        SeedOptions {
            cases: 4,
            rows_per_case: 60,
            seed,
            tenants: vec!["north".to_owned(), "south".to_owned()],
        }
    }

    fn seeded(
        opts: &SeedOptions,
    ) -> Result<(tempfile::TempDir, Connection, SeedReport), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let mut conn = Connection::open(dir.path().join("cases.db"))?;
        let report = seed_connection(&mut conn, opts)?;
        Ok((dir, conn, report))
    }

    fn dump(conn: &Connection) -> rusqlite::Result<Vec<String>> {
        let mut out = Vec::new();
        for table in TABLES {
            let mut stmt = conn.prepare(&format!("SELECT * FROM {table} ORDER BY rowid"))?;
            let cols = stmt.column_count();
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let mut line = format!("{table}:");
                for i in 0..cols {
                    line.push_str(&format!("{:?}|", row.get_ref(i)?));
                }
                out.push(line);
            }
        }
        Ok(out)
    }

    fn count(conn: &Connection, sql: &str, case_id: &str) -> rusqlite::Result<i64> {
        conn.query_row(sql, [case_id], |r| r.get(0))
    }

    #[test]
    fn same_seed_same_rows_other_seed_differs() -> TestResult {
        let (_d1, c1, r1) = seeded(&small(7))?;
        let (_d2, c2, r2) = seeded(&small(7))?;
        let (_d3, c3, _) = seeded(&small(8))?;
        let a = dump(&c1)?;
        assert_eq!(a, dump(&c2)?);
        assert_ne!(a, dump(&c3)?);
        assert_eq!(r1.case_ids, r2.case_ids);
        assert_eq!(r1.rows, r2.rows);
        Ok(())
    }

    #[test]
    fn every_case_has_rows_in_every_table() -> TestResult {
        // rows_per_case 0 exercises the per-table minimums.
        for rows_per_case in [0, 60] {
            let opts = SeedOptions {
                rows_per_case,
                ..small(1)
            };
            let (_dir, conn, report) = seeded(&opts)?;
            assert_eq!(report.case_ids.len(), 4);
            let users: i64 = conn.query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))?;
            assert!(users >= 10);
            let viewed: i64 = conn.query_row(
                "SELECT COUNT(*) FROM users WHERE last_viewed_case_id IS NOT NULL",
                [],
                |r| r.get(0),
            )?;
            assert!(viewed >= 1);
            let per_case = [
                "SELECT COUNT(*) FROM cases WHERE id = ?1",
                "SELECT COUNT(*) FROM subjects WHERE case_id = ?1",
                "SELECT COUNT(*) FROM transactions WHERE case_id = ?1",
                "SELECT COUNT(*) FROM analysis_results WHERE case_id = ?1",
                "SELECT COUNT(*) FROM indicators i JOIN analysis_results a ON a.id = i.analysis_id WHERE a.case_id = ?1",
                "SELECT COUNT(*) FROM evidence WHERE case_id = ?1",
                "SELECT COUNT(*) FROM evidence_documents d JOIN evidence e ON e.id = d.evidence_id WHERE e.case_id = ?1",
                "SELECT COUNT(*) FROM evidence_photos p JOIN evidence e ON e.id = p.evidence_id WHERE e.case_id = ?1",
                "SELECT COUNT(*) FROM evidence_emails m JOIN evidence e ON e.id = m.evidence_id WHERE e.case_id = ?1",
                "SELECT COUNT(*) FROM evidence_links l JOIN evidence a ON a.id = l.from_evidence_id JOIN evidence b ON b.id = l.to_evidence_id WHERE a.case_id = ?1 AND b.case_id = ?1",
                "SELECT COUNT(*) FROM annotations x JOIN evidence e ON e.id = x.evidence_id WHERE e.case_id = ?1",
                "SELECT COUNT(*) FROM notes WHERE case_id = ?1",
                "SELECT COUNT(*) FROM custody_events x JOIN evidence e ON e.id = x.evidence_id WHERE e.case_id = ?1",
            ];
            for case_id in &report.case_ids {
                for sql in per_case {
                    assert!(count(&conn, sql, case_id)? > 0, "{sql} empty for {case_id}");
                }
            }
            let total: i64 = TABLES
                .iter()
                .map(|t| {
                    conn.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| {
                        r.get::<_, i64>(0)
                    })
                })
                .sum::<rusqlite::Result<i64>>()?;
            assert_eq!(u64::try_from(total)?, report.rows);
        }
        Ok(())
    }

    #[test]
    fn cross_case_links_exist_and_replies_stay_in_case() -> TestResult {
        for opts in [
            small(3),
            SeedOptions {
                cases: 2,
                rows_per_case: 5,
                ..small(3)
            },
        ] {
            let (_dir, conn, _) = seeded(&opts)?;
            let cross: i64 = conn.query_row(
                "SELECT COUNT(*) FROM evidence_links l
                 JOIN evidence a ON a.id = l.from_evidence_id
                 JOIN evidence b ON b.id = l.to_evidence_id
                 WHERE a.case_id <> b.case_id",
                [],
                |r| r.get(0),
            )?;
            assert!(cross >= 1);
        }
        let (_dir, conn, _) = seeded(&small(3))?;
        let replies: i64 = conn.query_row(
            "SELECT COUNT(*) FROM notes WHERE parent_note_id IS NOT NULL",
            [],
            |r| r.get(0),
        )?;
        assert!(replies > 0);
        let stray: i64 = conn.query_row(
            "SELECT (SELECT COUNT(*) FROM notes n JOIN notes p ON p.id = n.parent_note_id
                     WHERE n.case_id <> p.case_id)
                  + (SELECT COUNT(*) FROM indicators i
                     JOIN analysis_results a ON a.id = i.analysis_id
                     JOIN transactions t ON t.id = i.transaction_id
                     WHERE a.case_id <> t.case_id)
                  + (SELECT COUNT(*) FROM transactions t JOIN subjects s ON s.id = t.subject_id
                     WHERE t.case_id <> s.case_id)",
            [],
            |r| r.get(0),
        )?;
        assert_eq!(stray, 0);
        Ok(())
    }

    #[test]
    fn single_case_has_no_cross_links() -> TestResult {
        let (_dir, conn, _) = seeded(&SeedOptions {
            cases: 1,
            ..small(5)
        })?;
        let cross: i64 = conn.query_row(
            "SELECT COUNT(*) FROM evidence_links l
             JOIN evidence a ON a.id = l.from_evidence_id
             JOIN evidence b ON b.id = l.to_evidence_id
             WHERE a.case_id <> b.case_id",
            [],
            |r| r.get(0),
        )?;
        assert_eq!(cross, 0);
        Ok(())
    }

    #[test]
    fn foreign_keys_and_integrity_hold() -> TestResult {
        let (_dir, conn, _) = seeded(&small(11))?;
        let mut stmt = conn.prepare("PRAGMA foreign_key_check")?;
        let violations = stmt.query_map([], |r| r.get::<_, String>(0))?.count();
        assert_eq!(violations, 0);
        let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
        assert_eq!(ok, "ok");
        Ok(())
    }

    #[test]
    fn values_look_plausible() -> TestResult {
        let (_dir, conn, _) = seeded(&small(2))?;
        let bad_ts: i64 = conn.query_row(
            "SELECT COUNT(*) FROM transactions
             WHERE occurred_at NOT GLOB '202[345]-[01][0-9]-[0-3][0-9]T[0-2][0-9]:[0-5][0-9]:[0-5][0-9]Z'",
            [],
            |r| r.get(0),
        )?;
        assert_eq!(bad_ts, 0);
        let mut stmt = conn.prepare(
            "SELECT counterparty_iban FROM transactions WHERE counterparty_iban IS NOT NULL",
        )?;
        let ibans = stmt.query_map([], |r| r.get::<_, String>(0))?;
        for iban in ibans {
            let iban = iban?;
            let rearranged = format!("{}{}", &iban[4..], &iban[..4]);
            let rem = rearranged
                .chars()
                .fold(0u32, |rem, c| match c.to_digit(36) {
                    Some(v) if v >= 10 => (rem * 100 + v) % 97,
                    Some(v) => (rem * 10 + v) % 97,
                    None => rem,
                });
            assert_eq!(rem, 1, "bad IBAN {iban}");
        }
        let id: String = conn.query_row("SELECT id FROM cases LIMIT 1", [], |r| r.get(0))?;
        assert_eq!(uuid::Uuid::parse_str(&id)?.get_version_num(), 4);
        Ok(())
    }

    #[test]
    fn seed_demo_refuses_existing_file() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("demo.db");
        let opts = SeedOptions {
            cases: 2,
            rows_per_case: 20,
            ..SeedOptions::default()
        };
        let report = seed_demo(&path, &opts)?;
        assert_eq!(report.bytes, fs::metadata(&path)?.len());
        assert!(report.rows > 0 && report.rows_per_sec() > 0.0);
        assert!(matches!(seed_demo(&path, &opts), Err(SeedError::Exists(_))));
        // A pre-created empty file (e.g. from mktemp) is accepted.
        let empty = dir.path().join("empty.db");
        fs::File::create(&empty)?;
        seed_demo(&empty, &opts)?;
        Ok(())
    }

    #[test]
    fn rejects_bad_options_and_reseeding() -> TestResult {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("bad.db");
        let none = SeedOptions {
            cases: 0,
            ..SeedOptions::default()
        };
        assert!(matches!(seed_demo(&path, &none), Err(SeedError::NoCases)));
        let no_tenant = SeedOptions {
            tenants: vec![],
            ..SeedOptions::default()
        };
        assert!(matches!(
            seed_demo(&path, &no_tenant),
            Err(SeedError::NoTenants)
        ));
        assert!(!path.exists());

        let (_dir, mut conn, _) = seeded(&small(1))?;
        assert!(matches!(
            seed_connection(&mut conn, &small(1)),
            Err(SeedError::NotEmpty("users"))
        ));
        Ok(())
    }
}
