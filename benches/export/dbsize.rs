//! Export time of one case against the size of the database it lives in
//! (issue #14: the same case from a database 25 times larger within
//! 1.2 × the time).
//!
//! The same case, not a case of the same size: seeding 25 cases draws
//! other random rows for every case than seeding one (the seeder makes
//! 10 + cases / 10 users first, so its random stream shifts, and the
//! number of indicators per analysis is random), so no case of a 25-case
//! seed matches the one-case database's case row for row. The one-case
//! database is instead cut from the 25-case one: the middle case's rows
//! and the users, in the seeder's schema, file layout and journal mode.
//! Both are cached in bench-data like the other databases.

use crate::env::{CaseDb, Env, build, warm};
use crate::opts::Opts;
use crate::report::{Report, f2, mbs, median, mib};
use crate::timing::timed_rep;
use crate::{MIB, e2e};
use case_export::seed::SCHEMA_SQL;
use e2e::{ClientKind, InProcServer, e2e_once};
use rusqlite::Connection;
use std::path::Path;

/// Cases of the big database.
pub const CASES: u32 = 25;
/// The case measured, by generation number: the middle one, whose rows lie
/// in the middle of every table of the big database.
const PICK: u32 = 13;

/// The case's rows of every table of the demo schema but `users` (which is
/// copied whole), parents first: the rows its snapshot holds, as
/// docs/SNAPSHOT.md lists them (a link across cases is in no export).
const CASE_ROWS: [(&str, &str); 13] = [
    ("cases", "id = ?1"),
    ("subjects", "case_id = ?1"),
    ("transactions", "case_id = ?1"),
    ("analysis_results", "case_id = ?1"),
    (
        "indicators",
        "analysis_id IN (SELECT id FROM src.analysis_results WHERE case_id = ?1)",
    ),
    ("evidence", "case_id = ?1"),
    (
        "evidence_documents",
        "evidence_id IN (SELECT id FROM src.evidence WHERE case_id = ?1)",
    ),
    (
        "evidence_photos",
        "evidence_id IN (SELECT id FROM src.evidence WHERE case_id = ?1)",
    ),
    (
        "evidence_emails",
        "evidence_id IN (SELECT id FROM src.evidence WHERE case_id = ?1)",
    ),
    (
        "evidence_links",
        "from_evidence_id IN (SELECT id FROM src.evidence WHERE case_id = ?1) \
         AND to_evidence_id IN (SELECT id FROM src.evidence WHERE case_id = ?1)",
    ),
    (
        "annotations",
        "evidence_id IN (SELECT id FROM src.evidence WHERE case_id = ?1)",
    ),
    ("notes", "case_id = ?1"),
    (
        "custody_events",
        "evidence_id IN (SELECT id FROM src.evidence WHERE case_id = ?1)",
    ),
];

/// The id of the case with generation number `number` (1-based; the
/// suffix of its case number, `FR-<year>-<number>`).
pub fn case_by_number(db: &Path, number: u32) -> String {
    let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("open case db");
    conn.query_row(
        "SELECT id FROM cases WHERE substr(case_number, -6) = ?1",
        [format!("{number:06}")],
        |r| r.get(0),
    )
    .expect("case by number")
}

/// Writes to `dest` a database holding the users and case `case_id` of
/// `src`, built as the seeder builds: schema first, rows in one
/// transaction, WAL journal folded into the file. Its foreign keys hold
/// (checked).
pub fn cut_case(src: &Path, case_id: &str, dest: &Path) {
    let _ = std::fs::remove_file(dest);
    let conn = Connection::open(dest).expect("create cut db");
    conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get::<_, String>(0))
        .expect("WAL");
    conn.pragma_update(None, "synchronous", "OFF")
        .expect("synchronous");
    // Off while copying (not settable inside the transaction).
    conn.pragma_update(None, "foreign_keys", false)
        .expect("foreign_keys");
    conn.execute(
        "ATTACH DATABASE ?1 AS src",
        [src.to_str().expect("utf-8 path")],
    )
    .expect("attach source");
    conn.execute_batch("BEGIN").expect("begin");
    conn.execute_batch(SCHEMA_SQL).expect("schema");
    // users and cases point at each other: checked once all is copied.
    conn.execute("INSERT INTO main.users SELECT * FROM src.users", [])
        .expect("copy users");
    for (t, filter) in CASE_ROWS {
        conn.execute(
            &format!("INSERT INTO main.{t} SELECT * FROM src.{t} WHERE {filter} ORDER BY rowid"),
            [case_id],
        )
        .unwrap_or_else(|e| panic!("copy {t}: {e}"));
    }
    // A user who last viewed another case points at no case here.
    conn.execute(
        "UPDATE main.users SET last_viewed_case_id = NULL WHERE last_viewed_case_id <> ?1",
        [case_id],
    )
    .expect("users of other cases");
    let mut check = conn
        .prepare("PRAGMA main.foreign_key_check")
        .expect("foreign key check");
    let dangling = check
        .query_map([], |_| Ok(()))
        .expect("foreign key check")
        .count();
    drop(check);
    assert_eq!(dangling, 0, "the cut database has dangling foreign keys");
    conn.execute_batch("COMMIT; DETACH DATABASE src")
        .expect("commit");
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
    conn.close().map_err(|(_, e)| e).expect("close cut db");
}

/// The big database's case `PICK` alone, cut once and cached beside it.
fn one_case_of(env: &Env, big: &CaseDb) -> CaseDb {
    let case_id = case_by_number(&big.path, PICK);
    let path = big.path.with_extension(format!("case{PICK}.db"));
    if !path.exists() {
        let part = env.data.join(format!("{}.cut.partial", std::process::id()));
        cut_case(&big.path, &case_id, &part);
        std::fs::rename(&part, &path).expect("rename cut db");
    }
    CaseDb {
        path,
        case_ids: vec![case_id],
        rows_per_case: big.rows_per_case,
    }
}

pub fn dbsize_section(r: &mut Report, env: &mut Env, opts: &Opts) {
    // The 64 MiB case of a full run (16 MiB with --quick).
    let size = opts.e2e_sizes[0];
    let s = r.section(
        &format!("Database size: the same case from a database {CASES} × larger"),
        &format!(
            "Case {PICK} of a database seeded with {CASES} cases at the \
             `rows_per_case` of the {size} MiB one-case database, exported from \
             that database and from a database holding only it (its rows and \
             the users, cut from the big one: a separate one-case seed draws \
             other rows). Both from the page cache, one in-process server each, \
             library client `export_to_dir` (request to verified `.enc` on \
             disk), interleaved rep by rep. The two snapshots hold the same \
             rows, table by table (checked)."
        ),
        &[
            "database",
            "source MiB",
            "snapshot MiB",
            "total s",
            "MB/s",
            "time to first chunk s",
            "vs one-case database",
        ],
    );
    let m = env.rows_per_case_for(size);
    let big = env.case_db(CASES, m);
    let one = one_case_of(env, &big);
    let case_id = one.case_ids[0].clone();
    let counts = |db: &Path| build(db, &case_id).row_counts.clone();
    let (rows_one, rows_big) = (counts(&one.path), counts(&big.path));
    assert_eq!(
        rows_one, rows_big,
        "the case's snapshot from the one-case database and from the {CASES}-case one differ"
    );
    let rows: u64 = rows_one.iter().map(|(_, n)| n).sum();
    warm(&one.path);
    warm(&big.path);
    let srv_one = InProcServer::start(env, &one.path, |_| {});
    let srv_big = InProcServer::start(env, &big.path, |_| {});
    let out = env.tempdir();
    let mut runs = [vec![], vec![]];
    for _ in 0..opts.reps(size) {
        for (i, srv) in [&srv_one, &srv_big].into_iter().enumerate() {
            let mut run = None;
            timed_rep(&mut || {
                let x = env.client_rt.block_on(e2e_once(
                    &srv.url,
                    &case_id,
                    ClientKind::Dir,
                    out.path(),
                ));
                run = Some(x);
                x.total
            });
            runs[i].push(run.expect("ran"));
        }
    }
    drop((srv_one, srv_big));
    let total = |i: usize| median(&runs[i].iter().map(|x| x.total).collect::<Vec<_>>());
    let ttfc = |i: usize| median(&runs[i].iter().map(|x| x.ttfc).collect::<Vec<_>>());
    let (t_one, t_big) = (total(0), total(1));
    r.metric("dbsize_one_total_s", t_one);
    r.metric("dbsize_big_total_s", t_big);
    r.metric("dbsize_one_ttfc_s", ttfc(0));
    r.metric("dbsize_big_ttfc_s", ttfc(1));
    r.metric("dbsize_ratio", t_big / t_one);
    r.metric("dbsize_rows", rows as f64);
    for (i, (label, db)) in [
        ("one case".to_string(), &one),
        (format!("{CASES} cases"), &big),
    ]
    .into_iter()
    .enumerate()
    {
        let n = runs[i][0].plaintext;
        let source = std::fs::metadata(&db.path).map_or(0, |m| m.len());
        r.row(
            s,
            vec![
                format!("{label} ({m} rows per case; the case: {rows} rows)"),
                format!("{}", source / MIB),
                mib(n),
                format!("{:.3}", total(i)),
                format!("{:.1}", mbs(n, total(i))),
                format!("{:.3}", ttfc(i)),
                f2(total(i) / t_one),
            ],
        );
    }
    r.contention(s);
}
