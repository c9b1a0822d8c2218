//! The demo case database in PostgreSQL (schema/cases.pg.sql and
//! `seed-demo --db postgres://...`): the same rows as the SQLite demo for
//! the same options, read back through the PostgreSQL source's type
//! mapping; the same foreign keys, indexes and constraints; a second seed
//! refused; a failed seed leaves nothing behind.

use crate::support::*;
use case_export::db::PgUrl;
use case_export::seed::{SeedError, SeedOptions, SeedReport, seed_demo, seed_postgres};
use std::collections::BTreeSet;
use std::time::Duration;

/// Runs the test body only when PostgreSQL tests are not skipped.
macro_rules! pg_db {
    ($hint:expr) => {
        match PgDb::create($hint).await {
            Some(db) => db,
            None => return,
        }
    };
}

async fn seed_pg(db: &PgDb, opts: &SeedOptions) -> Result<SeedReport, SeedError> {
    let url = PgUrl::parse(&db.url).expect("the test database URL parses");
    let connector = url
        .connector(None, Duration::from_secs(10), "pg_seed test")
        .expect("a connector");
    seed_postgres(&connector, opts).await
}

/// A PostgreSQL column rendered as the PostgreSQL case source maps it into
/// a snapshot, in SQL; and how to read the result.
enum Read {
    Int,
    Real,
    Text,
}

fn rendered(column: &str, data_type: &str) -> (String, Read) {
    let c = quote_ident(column);
    match data_type {
        "bigint" | "integer" | "smallint" => (format!("{c}::bigint"), Read::Int),
        "double precision" => (c, Read::Real),
        "text" | "uuid" | "json" | "jsonb" => (format!("{c}::text"), Read::Text),
        "date" => (format!("to_char({c}, 'YYYY-MM-DD')"), Read::Text),
        // 'YYYY-MM-DDTHH:MM:SS[.ffffff]Z' in UTC, the fraction only when
        // non-zero.
        "timestamp with time zone" => (
            format!(
                "to_char({c} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS') \
                 || CASE WHEN date_trunc('second', {c}) = {c} THEN '' \
                    ELSE to_char({c} AT TIME ZONE 'UTC', '.US') END || 'Z'"
            ),
            Read::Text,
        ),
        other => panic!("column {column} has type {other}, which this test does not map"),
    }
}

/// `(column, data_type)` of a PostgreSQL table, in declared order.
async fn pg_columns(client: &tokio_postgres::Client, table: &str) -> Vec<(String, String)> {
    client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns \
             WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
            &[&table],
        )
        .await
        .unwrap_or_else(|e| panic!("columns of {table}: {e}"))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Every row of a PostgreSQL table as the snapshot would hold it, each
/// value rendered like [`literal`] renders SQLite values, sorted.
async fn pg_rows(client: &tokio_postgres::Client, table: &str) -> Vec<Vec<String>> {
    let columns = pg_columns(client, table).await;
    let (exprs, reads): (Vec<String>, Vec<Read>) =
        columns.iter().map(|(c, t)| rendered(c, t)).unzip();
    let sql = format!("SELECT {} FROM {}", exprs.join(", "), quote_ident(table));
    let rows = client
        .query(&sql, &[])
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let null = || "NULL".to_owned();
    let mut out: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            reads
                .iter()
                .enumerate()
                .map(|(i, read)| match read {
                    Read::Int => r
                        .get::<_, Option<i64>>(i)
                        .map_or_else(null, |v| v.to_string()),
                    Read::Real => r
                        .get::<_, Option<f64>>(i)
                        .map_or_else(null, |v| format!("{v:?}")),
                    Read::Text => r
                        .get::<_, Option<String>>(i)
                        .map_or_else(null, |v| format!("'{}'", v.replace('\'', "''"))),
                })
                .collect()
        })
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_seed_holds_the_sqlite_seeds_rows_value_by_value() {
    let db = pg_db!("pg_seed_same_rows");
    let opts = small_seed();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.db");
    let lite = seed_demo(&file, &opts).expect("seed SQLite");
    let pg = seed_pg(&db, &opts).await.expect("seed PostgreSQL");
    assert_eq!(pg.case_ids, lite.case_ids);
    assert_eq!(pg.rows, lite.rows);
    assert!(pg.bytes > 0);

    let conn = open_ro(&file);
    let client = db.connect().await;
    let tables = table_names(&conn);
    assert_eq!(tables.len(), 14, "{tables:?}");
    let mut compared = 0;
    for table in &tables {
        let pg_cols: Vec<String> = pg_columns(&client, table)
            .await
            .into_iter()
            .map(|(c, _)| c)
            .collect();
        assert_eq!(pg_cols, column_names(&conn, table), "columns of {table}");
        let want = all_rows(&conn, table);
        assert!(!want.is_empty(), "{table} is empty in SQLite");
        let got = pg_rows(&client, table).await;
        assert_eq!(got.len(), want.len(), "row count of {table}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g, w, "a row of {table}");
        }
        compared += want.len();
    }
    assert_eq!(compared as u64, lite.rows);

    // The values that need a real type's care are there to compare.
    let (json, dob): (i64, i64) = {
        let r = client
            .query_one(
                "SELECT (SELECT count(*) FROM evidence_photos WHERE exif_json IS NOT NULL), \
                        (SELECT count(*) FROM subjects WHERE date_of_birth IS NOT NULL)",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert!(json > 0 && dob > 0, "json {json}, dates of birth {dob}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schema_declares_the_sqlite_keys_indexes_and_constraints() {
    let db = pg_db!("pg_seed_catalog");
    let opts = seed_of(2, 10);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.db");
    seed_demo(&file, &opts).expect("seed SQLite");
    seed_pg(&db, &opts).await.expect("seed PostgreSQL");
    let conn = open_ro(&file);
    let client = db.connect().await;

    // Foreign keys: (table, column, referenced table, referenced column).
    let mut want = BTreeSet::new();
    for table in table_names(&conn) {
        for row in query_rows(
            &conn,
            "SELECT \"from\", \"table\", \"to\" FROM pragma_foreign_key_list(?1)",
            [&table],
        ) {
            let strip = |s: &str| s.trim_matches('\'').to_owned();
            want.insert((
                table.clone(),
                strip(&row[0]),
                strip(&row[1]),
                strip(&row[2]),
            ));
        }
    }
    assert!(want.len() >= 20, "{want:?}");
    let got: BTreeSet<(String, String, String, String)> = client
        .query(
            "SELECT cl.relname::text, a.attname::text, rcl.relname::text, ra.attname::text \
             FROM pg_constraint c \
             JOIN pg_class cl ON cl.oid = c.conrelid \
             JOIN pg_class rcl ON rcl.oid = c.confrelid \
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] \
             JOIN pg_attribute ra ON ra.attrelid = c.confrelid AND ra.attnum = c.confkey[1] \
             WHERE c.contype = 'f' AND cl.relnamespace = 'public'::regnamespace \
               AND cardinality(c.conkey) = 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(got, want);

    // Every foreign-key column leads an index (its own, or the primary key).
    for (table, column, _, _) in &want {
        let indexed: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_index i \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
                 WHERE i.indrelid = $1::text::regclass AND a.attname = $2)",
                &[table, column],
            )
            .await
            .unwrap()
            .get(0);
        assert!(indexed, "no index leads with {table}.{column}");
    }

    // NOT NULL as in SQLite (primary keys are NOT NULL in PostgreSQL anyway).
    for table in table_names(&conn) {
        let lite: BTreeSet<String> = query_rows(
            &conn,
            "SELECT name FROM pragma_table_info(?1) WHERE \"notnull\" = 1 OR pk > 0",
            [&table],
        )
        .into_iter()
        .map(|r| r[0].trim_matches('\'').to_owned())
        .collect();
        let pg: BTreeSet<String> = client
            .query(
                "SELECT column_name::text FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name = $1 AND is_nullable = 'NO'",
                &[&table],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(pg, lite, "NOT NULL columns of {table}");
    }

    // The UNIQUE and CHECK constraints hold: each statement breaks one.
    let existing_email: String = client
        .query_one("SELECT email FROM users LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    let case_id: String = client
        .query_one("SELECT id::text FROM cases LIMIT 1", &[])
        .await
        .unwrap()
        .get(0);
    let refused = [
        (
            format!(
                "INSERT INTO users (id, email, display_name, role, password_hash, created_at) \
                 VALUES (100000, '{}', 'x', 'analyst', 'x', now())",
                existing_email.replace('\'', "''")
            ),
            "23505",
        ),
        (
            "INSERT INTO users (id, email, display_name, role, password_hash, created_at) \
             VALUES (100001, 'new@example.org', 'x', 'janitor', 'x', now())"
                .to_owned(),
            "23514",
        ),
        (
            format!(
                "INSERT INTO transactions (id, case_id, amount, currency, occurred_at, \
                 counterparty, direction) VALUES (100002, '{case_id}', 0, 'EUR', now(), 'x', 'in')"
            ),
            "23514",
        ),
        (
            "INSERT INTO notes (id, case_id, body, created_at) \
             VALUES (100003, '00000000-0000-4000-8000-000000000000', 'x', now())"
                .to_owned(),
            "23503",
        ),
        (
            "UPDATE users SET last_viewed_case_id = '00000000-0000-4000-8000-000000000000' \
             WHERE id = (SELECT min(id) FROM users)"
                .to_owned(),
            "23503",
        ),
    ];
    for (sql, code) in refused {
        let e = client
            .batch_execute(&sql)
            .await
            .expect_err(&format!("accepted: {sql}"));
        let got = e.code().map(|c| c.code().to_owned());
        assert_eq!(got.as_deref(), Some(code), "{sql}: {e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_postgres_twice_is_refused_and_changes_nothing() {
    let db = pg_db!("pg_seed_twice");
    let opts = seed_of(2, 10);
    let first = seed_pg(&db, &opts).await.expect("first seed");
    let client = &db.connect().await;
    let count = || async move {
        client
            .query_one(
                "SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM cases) \
                      + (SELECT count(*) FROM custody_events)",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let before = count().await;
    let e = seed_pg(&db, &opts).await.expect_err("a second seed");
    assert!(matches!(e, SeedError::NotEmpty("users")), "{e:?}");
    assert_eq!(
        e.to_string(),
        "table users already has rows: seed into a new database"
    );
    assert_eq!(count().await, before);
    let cases: i64 = client
        .query_one("SELECT count(*) FROM cases", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(cases, first.case_ids.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_postgres_seed_leaves_nothing_behind() {
    let db = pg_db!("pg_seed_rollback");
    // A custody_events table the demo rows cannot fill: the last COPY fails
    // after every other table was written in the same transaction.
    db.execute(
        "CREATE TABLE custody_events (id bigint PRIMARY KEY, evidence_id bigint NOT NULL, \
         actor_id bigint, action text NOT NULL, occurred_at timestamptz NOT NULL, \
         location text, details text, sealed_by text NOT NULL)",
    )
    .await;
    let e = seed_pg(&db, &seed_of(2, 10))
        .await
        .expect_err("a seed into an incompatible table");
    let msg = e.to_string();
    assert!(
        msg.contains("custody_events") && msg.contains("sealed_by"),
        "{msg}"
    );
    assert!(msg.ends_with("nothing was written"), "{msg}");
    let client = db.connect().await;
    let tables: Vec<String> = client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tables, ["custody_events"]);
    let rows: i64 = client
        .query_one("SELECT count(*) FROM custody_events", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_demo_command_seeds_postgres_and_refuses_a_second_run() {
    let db = pg_db!("pg_seed_cli");
    let url = db.url.clone();
    let seed = move |url: String| {
        tokio::task::spawn_blocking(move || {
            run(bin().arg("seed-demo").arg("--db").arg(url).args([
                "--cases",
                "3",
                "--rows-per-case",
                "12",
                "--seed",
                "9",
            ]))
        })
    };
    let o = seed(url.clone()).await.unwrap();
    assert!(
        o.status.success(),
        "seed-demo failed: {}\n{}",
        stdout_of(&o),
        stderr_of(&o)
    );
    let out = stdout_of(&o);
    assert!(
        out.starts_with(&format!("seeded {url}: 3 cases, ")),
        "{out}"
    );
    let first = out
        .lines()
        .find_map(|l| l.strip_prefix("first case id: "))
        .unwrap_or_else(|| panic!("no first case id in {out}"))
        .to_owned();

    // The same data as the library seeds into SQLite with those options.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.db");
    let lite = seed_demo(
        &file,
        &SeedOptions {
            cases: 3,
            rows_per_case: 12,
            seed: 9,
            ..SeedOptions::default()
        },
    )
    .unwrap();
    assert_eq!(first, lite.case_ids[0]);
    let client = db.connect().await;
    let conn = open_ro(&file);
    for table in ["cases", "evidence_photos", "notes"] {
        assert_eq!(
            pg_rows(&client, table).await,
            all_rows(&conn, table),
            "{table}"
        );
    }

    let o = seed(url).await.unwrap();
    assert_eq!(
        one_error_line(&o),
        "case-export: table users already has rows: seed into a new database"
    );
}

#[test]
fn seed_demo_command_says_what_is_wrong_with_a_postgres_target() {
    // An unreachable server: named, with what to check.
    let o = run(bin().args(["seed-demo", "--db", "postgres://postgres@127.0.0.1:1/cases"]));
    let line = one_error_line(&o);
    assert!(
        line.starts_with(
            "case-export: cannot connect to PostgreSQL at postgres://postgres@127.0.0.1:1/cases: "
        ),
        "{line}"
    );
    assert!(line.contains("CASE_EXPORT_CASE_DB_PASSWORD"), "{line}");

    // A password in the URL is refused and not repeated.
    let o = run(bin().args([
        "seed-demo",
        "--db",
        "postgres://postgres:hunter2@127.0.0.1/cases",
    ]));
    let line = one_error_line(&o);
    assert!(line.contains("password file"), "{line}");
    assert!(!line.contains("hunter2"), "{line}");

    // A password file for a SQLite file is a mistake worth naming.
    let dir = tempfile::tempdir().unwrap();
    let o = run(bin()
        .args(["seed-demo", "--db"])
        .arg(dir.path().join("cases.db"))
        .args(["--password-file", "/nonexistent"]));
    assert_eq!(
        one_error_line(&o),
        "case-export: --password-file is for a postgres:// database; a SQLite file needs none"
    );
    assert!(!dir.path().join("cases.db").exists());
}
