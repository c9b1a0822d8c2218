//! `PgSource::build` against real PostgreSQL, each test on a database of
//! its own: the type mapping value by value, the scope rules on a
//! hand-written schema, the schema the snapshot keeps, consistency against
//! a concurrent writer, and the errors (timeout, permission, ceiling).

use crate::support::{PgDb, eventually, query_rows, within};
use case_export::db::PgUrl;
use case_export::seal::ExportId;
use case_export::server::ExportError;
use case_export::snapshot::{
    BATCH_ROWS, CHANNEL_BATCHES, CaseRequest, CaseSource, PgSource, PgSourceOptions, ScopeConfig,
    Snapshot, SnapshotError, SnapshotView,
};
use rusqlite::Connection;
use std::time::Duration;

const BOUND: Duration = Duration::from_secs(60);

fn source(url: &str, statement_timeout: Duration) -> PgSource {
    let connector = PgUrl::parse(url)
        .unwrap()
        .connector(None, Duration::from_secs(10), "case-export-test")
        .unwrap();
    // One connection: a second build reuses the first one's connection.
    PgSource::new(
        &connector,
        1,
        PgSourceOptions {
            schema: "public".into(),
            statement_timeout,
        },
    )
}

fn scope(root: &str, key: &str, exclude: &[&str]) -> ScopeConfig {
    ScopeConfig {
        root_table: root.into(),
        root_key: key.into(),
        exclude_tables: exclude.iter().map(|s| s.to_string()).collect(),
    }
}

fn request(case_id: &str, scope: &ScopeConfig) -> CaseRequest {
    CaseRequest {
        case_id: case_id.into(),
        scope: scope.clone(),
        export_id: ExportId([7; 16]),
        created_at: "2025-03-14T09:26:53Z".into(),
        max_bytes: 1 << 30,
        busy_timeout: Duration::from_millis(200),
        tenant_column: None,
        allowed_tenants: None,
    }
}

async fn build(src: &PgSource, req: &CaseRequest) -> Result<Snapshot, SnapshotError> {
    within("a PostgreSQL build", BOUND, src.build(&req.borrowed())).await
}

/// The snapshot as an SQLite connection of its own.
fn open(snap: &mut Snapshot) -> SnapshotView {
    snap.with_bytes(SnapshotView::open).unwrap().unwrap()
}

fn rows(conn: &Connection, sql: &str) -> Vec<Vec<String>> {
    query_rows(conn, sql, [])
}

fn tables(conn: &Connection) -> Vec<String> {
    rows(
        conn,
        "SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name",
    )
    .into_iter()
    .map(|r| r[0].trim_matches('\'').to_string())
    .collect()
}

// ---------------------------------------------------------------- types

const TYPES_SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TABLE cases (id uuid PRIMARY KEY);
CREATE TABLE vals (
    id int PRIMARY KEY, case_id uuid NOT NULL REFERENCES cases(id),
    i2 smallint, i4 integer, i8 bigint, o oid, num numeric, r real,
    d double precision, b boolean, t text, vc varchar(10), ch char(3), nm name,
    u uuid, dt date, ts timestamp, tstz timestamptz, tm time, tmz timetz,
    iv interval, by bytea, js json, jb jsonb, arr int[], tarr text[], e mood,
    ip inet, net cidr, dom posint, pt point
);
CREATE TABLE stamps (case_id uuid REFERENCES cases(id), at timestamptz, PRIMARY KEY (case_id, at));
CREATE TABLE stamp_notes (
    id int PRIMARY KEY, case_id uuid, at timestamptz, body text,
    FOREIGN KEY (case_id, at) REFERENCES stamps(case_id, at)
);
INSERT INTO cases VALUES ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'), ('b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12');
INSERT INTO vals VALUES (1, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    -3, 2147483647, -9223372036854775808, 4000000000, 12345678901234567890.1230, 1.5,
    0.1, true, 'it''s', 'abc', 'ab', 'nm',
    'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '2025-03-14', '2025-03-14 09:26:53.120',
    '2025-03-14 10:26:53+01', '09:26:53', '09:26:53+02',
    '1 year 2 mons 3 days 04:05:06', '\x00ff', '{"b": 1,  "a": 2}', '{"b": 1,  "a": 2}',
    '{1,2,NULL}', '{"a b",c}', 'happy', '1.2.3.4', '10.0.0.0/8', 5, '(1,2)');
INSERT INTO vals (id, case_id) VALUES (2, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');
INSERT INTO vals (id, case_id, r, d, ts, tstz, ip, num, b) VALUES
    (3, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'NaN', 'Infinity', 'infinity', '-infinity',
     '1.2.3.4/24', 'NaN', false),
    (4, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '-Infinity', -0.000001, '2025-03-14 09:26:53.000001',
     '2025-03-14 09:26:53.5Z', '::1', 0.10, NULL),
    (5, 'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', 1, 1, NULL, NULL, NULL, 1, true);
INSERT INTO stamps VALUES
    ('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2025-03-14 09:26:53.25+00'),
    ('b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', '2025-03-14 09:26:53.25+00');
INSERT INTO stamp_notes VALUES
    (1, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '2025-03-14 09:26:53.25+00', 'in'),
    (2, 'b0eebc99-9c0b-4ef8-bb6d-6bb9bd380a12', '2025-03-14 09:26:53.25+00', 'other case');
"#;

/// (column, SQLite declared type, SQLite value type, value as a literal)
/// of row 1, then the expectations of rows 3 and 4.
const ROW_1: &[(&str, &str, &str, &str)] = &[
    ("i2", "INTEGER", "integer", "-3"),
    ("i4", "INTEGER", "integer", "2147483647"),
    ("i8", "INTEGER", "integer", "-9223372036854775808"),
    ("o", "INTEGER", "integer", "4000000000"),
    ("num", "TEXT", "text", "'12345678901234567890.1230'"),
    ("r", "REAL", "real", "1.5"),
    ("d", "REAL", "real", "0.1"),
    ("b", "INTEGER", "integer", "1"),
    ("t", "TEXT", "text", "'it''s'"),
    ("vc", "TEXT", "text", "'abc'"),
    ("ch", "TEXT", "text", "'ab'"),
    ("nm", "TEXT", "text", "'nm'"),
    (
        "u",
        "TEXT",
        "text",
        "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
    ),
    ("dt", "TEXT", "text", "'2025-03-14'"),
    ("ts", "TEXT", "text", "'2025-03-14T09:26:53.12'"),
    ("tstz", "TEXT", "text", "'2025-03-14T09:26:53Z'"),
    ("tm", "TEXT", "text", "'09:26:53'"),
    ("tmz", "TEXT", "text", "'09:26:53+02'"),
    ("iv", "TEXT", "text", "'P1Y2M3DT4H5M6S'"),
    ("by", "BLOB", "blob", "x'00ff'"),
    ("js", "TEXT", "text", r#"'{"b": 1,  "a": 2}'"#),
    ("jb", "TEXT", "text", r#"'{"a": 2, "b": 1}'"#),
    ("arr", "TEXT", "text", "'[1,2,null]'"),
    ("tarr", "TEXT", "text", r#"'["a b","c"]'"#),
    ("e", "TEXT", "text", "'happy'"),
    ("ip", "TEXT", "text", "'1.2.3.4'"),
    ("net", "TEXT", "text", "'10.0.0.0/8'"),
    ("dom", "INTEGER", "integer", "5"),
    ("pt", "TEXT", "text", "'(1,2)'"),
];

const ROW_3: &[(&str, &str, &str)] = &[
    ("r", "text", "'NaN'"),
    ("d", "real", "inf"),
    ("ts", "text", "'infinity'"),
    ("tstz", "text", "'-infinity'"),
    ("ip", "text", "'1.2.3.4/24'"),
    ("num", "text", "'NaN'"),
    ("b", "integer", "0"),
];

const ROW_4: &[(&str, &str, &str)] = &[
    ("r", "real", "-inf"),
    ("d", "real", "-1e-6"),
    ("ts", "text", "'2025-03-14T09:26:53.000001'"),
    ("tstz", "text", "'2025-03-14T09:26:53.5Z'"),
    ("ip", "text", "'::1'"),
    ("num", "text", "'0.10'"),
    ("b", "null", "NULL"),
];

fn check_row(conn: &Connection, id: i64, expect: &[(&str, &str, &str)]) {
    for (col, ty, lit) in expect {
        let got = query_rows(
            conn,
            &format!("SELECT typeof(\"{col}\"), \"{col}\" FROM vals WHERE id = ?1"),
            [id],
        );
        assert_eq!(
            got,
            vec![vec![format!("'{ty}'"), lit.to_string()]],
            "row {id}, column {col}"
        );
    }
}

#[tokio::test]
async fn pg_types_map_column_by_column() {
    let Some(db) = PgDb::create("pg_types").await else {
        return;
    };
    db.execute(TYPES_SCHEMA).await;
    let src = source(&db.url, Duration::from_secs(30));
    let cfg = scope("cases", "id", &[]);
    let mut snap = build(&src, &request("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", &cfg))
        .await
        .unwrap();
    let view = open(&mut snap);
    let conn = view.connection();

    let declared: Vec<Vec<String>> = rows(conn, "SELECT name, type FROM pragma_table_info('vals')");
    for (col, decl, _, _) in ROW_1 {
        assert!(
            declared.contains(&vec![format!("'{col}'"), format!("'{decl}'")]),
            "column {col} declared {decl}: {declared:?}"
        );
    }
    let row1: Vec<(&str, &str, &str)> = ROW_1.iter().map(|(c, _, t, v)| (*c, *t, *v)).collect();
    check_row(conn, 1, &row1);
    let nulls: Vec<(&str, &str, &str)> = ROW_1.iter().map(|(c, ..)| (*c, "null", "NULL")).collect();
    check_row(conn, 2, &nulls);
    check_row(conn, 3, ROW_3);
    check_row(conn, 4, ROW_4);
    assert_eq!(
        rows(conn, "SELECT id FROM vals ORDER BY id"),
        [["1"], ["2"], ["3"], ["4"]],
        "row 5 belongs to the other case"
    );

    // uuid and timestamptz keys, one of them composite, round-trip.
    assert_eq!(
        rows(conn, "SELECT case_id, at FROM stamps"),
        [[
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            "'2025-03-14T09:26:53.25Z'"
        ]]
    );
    assert_eq!(
        rows(conn, "SELECT id, body FROM stamp_notes"),
        [["1", "'in'"]]
    );
}

// ---------------------------------------------------------------- scope

const SCOPE_SCHEMA: &str = r#"
CREATE TABLE agencies (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE "Investigations" (
    code text PRIMARY KEY, title text NOT NULL, tenant text,
    agency_id int REFERENCES agencies(id), lead_id int
);
CREATE TABLE staff (id int PRIMARY KEY, name text, last_case text REFERENCES "Investigations"(code));
ALTER TABLE "Investigations" ADD FOREIGN KEY (lead_id) REFERENCES staff(id);
CREATE TABLE exhibits (
    tag text PRIMARY KEY, case_code text NOT NULL REFERENCES "Investigations"(code),
    agency_id int REFERENCES agencies(id), "weight ""kg""" real
);
CREATE TABLE exhibit_links (
    id serial PRIMARY KEY, from_tag text NOT NULL REFERENCES exhibits(tag),
    to_tag text NOT NULL REFERENCES exhibits(tag), relation text
);
CREATE TABLE folders (
    case_code text NOT NULL REFERENCES "Investigations"(code), num int NOT NULL, label text,
    PRIMARY KEY (case_code, num)
);
CREATE TABLE documents (
    id bigint PRIMARY KEY, case_code text, folder_num int, title text,
    FOREIGN KEY (case_code, folder_num) REFERENCES folders(case_code, num)
);
CREATE TABLE comments (
    id int PRIMARY KEY, case_code text REFERENCES "Investigations"(code),
    parent_id int REFERENCES comments(id), body text
);
CREATE TABLE tags (exhibit_tag text NOT NULL REFERENCES exhibits(tag), label text);
CREATE TABLE transfers (
    id int PRIMARY KEY, case_code text NOT NULL REFERENCES "Investigations"(code),
    exhibit_tag text REFERENCES exhibits(tag), amount numeric
);
CREATE INDEX transfers_exhibit ON transfers(exhibit_tag);
INSERT INTO agencies VALUES (1, 'north agency'), (2, 'south agency');
INSERT INTO staff VALUES (1, 'boss', NULL);
INSERT INTO "Investigations" VALUES ('A-1', 'first', 'north', 1, 1), ('B-2', 'second', 'south', 2, NULL),
    ('C-3', 'no tenant', NULL, NULL, NULL);
UPDATE staff SET last_case = 'A-1';
INSERT INTO exhibits VALUES ('E1', 'A-1', 1, 1.5), ('E2', 'A-1', NULL, NULL), ('E3', 'B-2', 2, 2);
INSERT INTO exhibit_links (from_tag, to_tag, relation) VALUES
    ('E1', 'E2', 'in'), ('E1', 'E3', 'across cases'), ('E3', 'E3', 'other case');
INSERT INTO folders VALUES ('A-1', 1, 'one'), ('A-1', 2, 'two'), ('B-2', 1, 'other');
INSERT INTO documents VALUES (10, 'A-1', 1, 'd10'), (11, 'A-1', 2, 'd11'), (12, 'B-2', 1, 'other'),
    (13, NULL, NULL, 'nowhere'), (14, 'A-1', NULL, 'half a key');
INSERT INTO comments VALUES (1, 'A-1', NULL, 'top'), (4, 'B-2', NULL, 'other top');
INSERT INTO comments VALUES (2, NULL, 1, 'reply'), (5, NULL, 4, 'other reply'),
    (6, 'A-1', 4, 'parent in another case');
INSERT INTO comments VALUES (3, NULL, 2, 'reply to reply');
INSERT INTO tags VALUES ('E1', 'red'), ('E1', 'red'), ('E3', 'blue');
INSERT INTO transfers VALUES (1, 'A-1', 'E1', 10.50), (2, 'A-1', NULL, 1), (3, 'A-1', 'E3', 3),
    (4, 'B-2', 'E3', 4);
"#;

fn scope_cfg() -> ScopeConfig {
    // Names matched case-insensitively, as for SQLite sources.
    scope("investigations", "CODE", &["STAFF"])
}

#[tokio::test]
async fn pg_scope_follows_foreign_keys_like_sqlite() {
    let Some(db) = PgDb::create("pg_scope").await else {
        return;
    };
    db.execute(SCOPE_SCHEMA).await;
    let src = source(&db.url, Duration::from_secs(30));
    let mut snap = build(&src, &request("A-1", &scope_cfg())).await.unwrap();
    let view = open(&mut snap);
    let conn = view.connection();

    // `staff` is excluded and `agencies` only pointed at: neither leaves.
    assert_eq!(
        tables(conn),
        [
            "Investigations",
            "_export_manifest",
            "comments",
            "documents",
            "exhibit_links",
            "exhibits",
            "folders",
            "tags",
            "transfers"
        ]
    );
    assert_eq!(
        rows(
            conn,
            "SELECT code, agency_id, lead_id FROM \"Investigations\""
        ),
        [["'A-1'", "1", "1"]]
    );
    assert_eq!(
        rows(conn, "SELECT tag, \"weight \"\"kg\"\"\" FROM exhibits"),
        [["'E1'", "1.5"], ["'E2'", "NULL"]]
    );
    // Reached two ways: both ends must be in the case.
    assert_eq!(
        rows(conn, "SELECT from_tag, to_tag FROM exhibit_links"),
        [["'E1'", "'E2'"]]
    );
    // A composite foreign key; a NULL column makes the key NULL.
    assert_eq!(rows(conn, "SELECT id FROM documents"), [["10"], ["11"]]);
    assert_eq!(
        rows(conn, "SELECT case_code, num FROM folders"),
        [["'A-1'", "1"], ["'A-1'", "2"]]
    );
    // A self-reference, followed to any depth; a parent in another case
    // keeps a row out even when its case key is ours.
    assert_eq!(rows(conn, "SELECT id FROM comments"), [["1"], ["2"], ["3"]]);
    // No primary key: duplicate rows are both copied, once each.
    assert_eq!(
        rows(conn, "SELECT exhibit_tag, label FROM tags"),
        [["'E1'", "'red'"], ["'E1'", "'red'"]]
    );
    // A nullable second key pointing outside the case keeps the row out.
    assert_eq!(
        rows(conn, "SELECT id, amount FROM transfers"),
        [["1", "'10.50'"], ["2", "'1'"]]
    );
    assert_eq!(
        snap.row_counts,
        [
            ("Investigations".to_string(), 1),
            ("comments".into(), 3),
            ("documents".into(), 2),
            ("exhibit_links".into(), 1),
            ("exhibits".into(), 2),
            ("folders".into(), 2),
            ("tags".into(), 2),
            ("transfers".into(), 2),
        ]
    );
    assert_eq!(snap.source_schema_sha256.len(), 64);
    let m = view.manifest().unwrap();
    assert_eq!(m.case_id, "A-1");
    assert!(view.integrity_ok().unwrap());
    // Every declared key of the snapshot holds.
    assert!(rows(conn, "PRAGMA foreign_key_check").is_empty());

    // The same build twice gives the same fingerprint; another case of the
    // same schema too.
    let other = build(&src, &request("B-2", &scope_cfg())).await.unwrap();
    assert_eq!(other.source_schema_sha256, snap.source_schema_sha256);
    assert_eq!(
        other.row_counts.iter().find(|(t, _)| t == "comments"),
        Some(&("comments".to_string(), 2))
    );
    // A schema change changes the fingerprint.
    db.execute("ALTER TABLE exhibits ADD COLUMN note text")
        .await;
    let changed = build(&src, &request("A-1", &scope_cfg())).await.unwrap();
    assert_ne!(changed.source_schema_sha256, snap.source_schema_sha256);
}

#[tokio::test]
async fn pg_case_id_must_be_spelled_as_stored() {
    let Some(db) = PgDb::create("pg_spelling").await else {
        return;
    };
    db.execute(SCOPE_SCHEMA).await;
    db.execute(
        "CREATE TABLE numbered (id int PRIMARY KEY, label text); INSERT INTO numbered VALUES (7, 'seven');",
    )
    .await;
    let src = source(&db.url, Duration::from_secs(30));
    for id in ["a-1", "A-1 ", "Z-9"] {
        let r = build(&src, &request(id, &scope_cfg())).await;
        assert!(matches!(r, Err(SnapshotError::NotFound)), "{id}: {r:?}");
    }
    let numbered = scope("numbered", "id", &[]);
    // Not a number, out of range, another spelling of 7: no such case.
    for id in ["x", "99999999999", "007", "7.0"] {
        let r = build(&src, &request(id, &numbered)).await;
        assert!(matches!(r, Err(SnapshotError::NotFound)), "{id}: {r:?}");
    }
    // The failed reads left no transaction on the one pooled connection.
    let mut snap = build(&src, &request("7", &numbered)).await.unwrap();
    assert_eq!(
        rows(
            open(&mut snap).connection(),
            "SELECT id, label FROM numbered"
        ),
        [["7", "'seven'"]]
    );
}

#[tokio::test]
async fn pg_tenant_limits_hide_other_tenants_cases() {
    let Some(db) = PgDb::create("pg_tenant").await else {
        return;
    };
    db.execute(SCOPE_SCHEMA).await;
    let src = source(&db.url, Duration::from_secs(30));
    let with = |id: &str, column: &str, allowed: Option<&[&str]>| {
        let mut r = request(id, &scope_cfg());
        r.tenant_column = Some(column.into());
        r.allowed_tenants = allowed.map(|a| a.iter().map(|s| s.to_string()).collect());
        r
    };
    let snap = build(&src, &with("A-1", "tenant", None)).await.unwrap();
    assert_eq!(snap.tenant.as_deref(), Some("north"));
    let snap = build(&src, &with("A-1", "tenant", Some(&["north"])))
        .await
        .unwrap();
    assert_eq!(snap.tenant.as_deref(), Some("north"));
    for (id, allowed) in [("A-1", &["south"][..]), ("C-3", &["north"]), ("A-1", &[])] {
        let r = build(&src, &with(id, "tenant", Some(allowed))).await;
        assert!(matches!(r, Err(SnapshotError::NotFound)), "{id}: {r:?}");
    }
    // No such column: no tenant, unless the caller is limited to tenants.
    let snap = build(&src, &with("A-1", "no_such", None)).await.unwrap();
    assert_eq!(snap.tenant, None);
    match build(&src, &with("A-1", "no_such", Some(&["north"]))).await {
        Err(SnapshotError::Schema(m)) => assert!(m.contains("no_such"), "{m}"),
        other => panic!("expected a schema error, got {other:?}"),
    }
    // A column that is not text cannot name tenants.
    match build(&src, &with("A-1", "agency_id", Some(&["1"]))).await {
        Err(SnapshotError::Schema(m)) => assert!(m.contains("agency_id"), "{m}"),
        other => panic!("expected a schema error, got {other:?}"),
    }
}

#[tokio::test]
async fn pg_snapshot_keeps_keys_and_indexes_foreign_keys() {
    let Some(db) = PgDb::create("pg_schema").await else {
        return;
    };
    db.execute(SCOPE_SCHEMA).await;
    let src = source(&db.url, Duration::from_secs(30));
    let mut snap = build(&src, &request("A-1", &scope_cfg())).await.unwrap();
    let view = open(&mut snap);
    let conn = view.connection();
    let sql = |name: &str| -> String {
        conn.query_row(
            "SELECT sql FROM sqlite_schema WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let comments = sql("comments");
    assert!(
        comments.contains("\"id\" INTEGER PRIMARY KEY NOT NULL"),
        "{comments}"
    );
    assert!(
        comments.contains("FOREIGN KEY (\"parent_id\") REFERENCES \"comments\" (\"id\")"),
        "{comments}"
    );
    let folders = sql("folders");
    assert!(
        folders.contains("PRIMARY KEY (\"case_code\", \"num\")"),
        "{folders}"
    );
    let documents = sql("documents");
    assert!(
        documents.contains(
            "FOREIGN KEY (\"case_code\", \"folder_num\") REFERENCES \"folders\" (\"case_code\", \"num\")"
        ),
        "{documents}"
    );
    let exhibits = sql("exhibits");
    assert!(
        exhibits.contains("\"tag\" TEXT PRIMARY KEY") || exhibits.contains("PRIMARY KEY (\"tag\")"),
        "{exhibits}"
    );
    // The key to the excluded table and to the table outside the graph are
    // plain values.
    let root = sql("Investigations");
    assert!(!root.contains("REFERENCES"), "{root}");
    assert!(!exhibits.contains("agencies"), "{exhibits}");
    // Every in-graph foreign key's columns are indexed.
    let indexed: Vec<Vec<String>> = rows(
        conn,
        "SELECT m.name, group_concat(i.name, ',') FROM sqlite_schema m, pragma_index_info(m.name) i \
         WHERE m.type = 'index' AND m.sql IS NOT NULL GROUP BY m.name ORDER BY 2",
    )
    .into_iter()
    .map(|r| vec![r[1].clone()])
    .collect();
    for cols in [
        "'case_code'",
        "'case_code,folder_num'",
        "'exhibit_tag'",
        "'from_tag'",
        "'parent_id'",
        "'to_tag'",
    ] {
        assert!(
            indexed.contains(&vec![cols.to_string()]),
            "{cols} indexed: {indexed:?}"
        );
    }
}

// ---------------------------------------------------------------- consistency

#[tokio::test]
async fn pg_export_holds_one_committed_state_against_a_writer() {
    let Some(db) = PgDb::create("pg_consistency").await else {
        return;
    };
    db.execute(SCOPE_SCHEMA).await;
    let src = source(&db.url, Duration::from_secs(60));
    // `comments` is read before `exhibits` (breadth-first, by name): hold
    // `exhibits` so the export pauses inside its transaction after it.
    let locker = db.connect().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE exhibits IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let req = request("A-1", &scope_cfg());
    let export = tokio::spawn(async move { src.build(&req.borrowed()).await });
    let watcher = db.connect().await;
    eventually("the export waits for the exhibits lock", BOUND, || async {
        let n: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'exhibits'::regclass",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if n > 0 { Ok(()) } else { Err(format!("{n} waiting")) }
    })
    .await;
    // A writer commits rows into a table already read and into the held one.
    db.execute("INSERT INTO comments VALUES (100, 'A-1', NULL, 'late')")
        .await;
    locker
        .batch_execute(
            "INSERT INTO exhibits VALUES ('E9', 'A-1', NULL, NULL); \
             INSERT INTO tags VALUES ('E9', 'late'); COMMIT",
        )
        .await
        .unwrap();
    let mut snap = within("the paused export", BOUND, export)
        .await
        .unwrap()
        .unwrap();
    let view = open(&mut snap);
    let conn = view.connection();
    assert_eq!(rows(conn, "SELECT id FROM comments"), [["1"], ["2"], ["3"]]);
    assert_eq!(rows(conn, "SELECT tag FROM exhibits"), [["'E1'"], ["'E2'"]]);
    assert_eq!(rows(conn, "SELECT count(*) FROM tags"), [["2"]]);
}

// ---------------------------------------------------------------- errors

#[tokio::test]
async fn pg_statement_timeout_is_a_clear_unavailable() {
    let Some(db) = PgDb::create("pg_timeout").await else {
        return;
    };
    db.execute(SCOPE_SCHEMA).await;
    let src = source(&db.url, Duration::from_millis(300));
    let locker = db.connect().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE exhibits IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let req = request("A-1", &scope_cfg());
    let e = build(&src, &req).await.unwrap_err();
    assert!(matches!(e, SnapshotError::StatementTimeout(_)), "{e:?}");
    let status = tonic::Status::from(ExportError::from_snapshot(e, "x"));
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("postgres.statement_timeout_secs"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains("SELECT"), "{}", status.message());
    locker.batch_execute("ROLLBACK").await.unwrap();
    // The pool's one connection came back without the failed transaction.
    build(&src, &req).await.unwrap();
}

#[tokio::test]
async fn pg_missing_select_names_the_table_and_least_privilege_builds() {
    let Some(db) = PgDb::create("pg_privilege").await else {
        return;
    };
    db.execute(SCOPE_SCHEMA).await;
    let all = [
        "Investigations",
        "exhibits",
        "exhibit_links",
        "folders",
        "documents",
        "comments",
        "tags",
        "transfers",
    ];
    let reader = db.reader("reader", &all).await;
    let admin = build(
        &source(&db.url, Duration::from_secs(30)),
        &request("A-1", &scope_cfg()),
    )
    .await
    .unwrap();
    let least = build(
        &source(&reader, Duration::from_secs(30)),
        &request("A-1", &scope_cfg()),
    )
    .await
    .unwrap();
    assert_eq!(least.row_counts, admin.row_counts);
    assert_eq!(least.source_schema_sha256, admin.source_schema_sha256);

    let but_tags: Vec<&str> = all.iter().copied().filter(|t| *t != "tags").collect();
    let partial = db.reader("partial", &but_tags).await;
    let src = source(&partial, Duration::from_secs(30));
    let e = build(&src, &request("A-1", &scope_cfg()))
        .await
        .unwrap_err();
    match &e {
        SnapshotError::PermissionDenied { table } => assert_eq!(table, "tags"),
        other => panic!("expected permission denied, got {other:?}"),
    }
    let status = tonic::Status::from(ExportError::from_snapshot(e, "x"));
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("\"tags\"") && status.message().contains("grant"),
        "{}",
        status.message()
    );
}

#[tokio::test]
async fn pg_cannot_connect_is_unavailable() {
    // Nothing listens on port 1 of loopback.
    let src = source("postgres://nobody@127.0.0.1:1/none", Duration::from_secs(5));
    let e = build(&src, &request("A-1", &scope_cfg()))
        .await
        .unwrap_err();
    assert!(matches!(e, SnapshotError::Unavailable(_)), "{e:?}");
    let status = tonic::Status::from(ExportError::from_snapshot(e, "x"));
    assert_eq!(status.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn pg_large_case_streams_in_batches_and_respects_the_ceiling() {
    let Some(db) = PgDb::create("pg_large").await else {
        return;
    };
    // More rows than the reader may hold in flight at once, so the copy
    // goes through many batches of the bounded channel.
    let n = BATCH_ROWS * (CHANNEL_BATCHES + 2) * 3;
    db.execute(&format!(
        "CREATE TABLE cases (id text PRIMARY KEY); \
         CREATE TABLE items (id int PRIMARY KEY, case_id text NOT NULL REFERENCES cases(id), body text); \
         CREATE TABLE marks (item_id int NOT NULL REFERENCES items(id)); \
         INSERT INTO cases VALUES ('big'), ('other'); \
         INSERT INTO items SELECT g, CASE WHEN g % 10 = 0 THEN 'other' ELSE 'big' END, repeat('x', 100) \
           FROM generate_series(1, {n}) g; \
         INSERT INTO marks SELECT id FROM items;"
    ))
    .await;
    let src = source(&db.url, Duration::from_secs(60));
    let cfg = scope("cases", "id", &[]);
    let snap = build(&src, &request("big", &cfg)).await.unwrap();
    let expect = (n - n / 10) as u64;
    assert_eq!(
        snap.row_counts,
        [
            ("cases".to_string(), 1),
            ("items".into(), expect),
            ("marks".into(), expect)
        ]
    );

    let mut small = request("big", &cfg);
    small.max_bytes = 64 << 10;
    match build(&src, &small).await {
        Err(SnapshotError::TooLarge { limit }) => assert_eq!(limit, 64 << 10),
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[tokio::test]
async fn pg_case_source_builds_through_the_seam() {
    let Some(db) = PgDb::create("pg_seam").await else {
        return;
    };
    db.execute(SCOPE_SCHEMA).await;
    let src = CaseSource::Postgres(source(&db.url, Duration::from_secs(30)));
    assert!(src.readable().await);
    assert!(src.size_hint().await.is_some_and(|n| n > 0));
    let snap = within("build", BOUND, src.build(request("A-1", &scope_cfg())))
        .await
        .unwrap();
    assert_eq!(snap.row_counts.len(), 8);
}

#[tokio::test]
async fn pg_partitioned_tables_are_read_through_their_parent() {
    let Some(db) = PgDb::create("pg_partitions").await else {
        return;
    };
    db.execute(
        "CREATE TABLE cases (id text PRIMARY KEY); \
         CREATE TABLE events (case_id text NOT NULL REFERENCES cases(id), n int) PARTITION BY LIST (case_id); \
         CREATE TABLE events_a PARTITION OF events FOR VALUES IN ('A-1'); \
         CREATE TABLE events_rest PARTITION OF events DEFAULT; \
         INSERT INTO cases VALUES ('A-1'), ('B-2'); \
         INSERT INTO events VALUES ('A-1', 1), ('A-1', 1), ('B-2', 2);",
    )
    .await;
    let src = source(&db.url, Duration::from_secs(30));
    let mut snap = build(&src, &request("A-1", &scope("cases", "id", &[])))
        .await
        .unwrap();
    let view = open(&mut snap);
    let conn = view.connection();
    assert_eq!(tables(conn), ["_export_manifest", "cases", "events"]);
    // No primary key: both equal rows, each once.
    assert_eq!(
        rows(conn, "SELECT case_id, n FROM events"),
        [["'A-1'", "1"], ["'A-1'", "1"]]
    );
}
