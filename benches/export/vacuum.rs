//! Snapshot build against the `sqlite3` shell's VACUUM INTO over the same
//! database.

use crate::MIB;
use crate::env::{CaseDb, Env, build, warm};
use crate::opts::Opts;
use crate::report::{Report, f1, f2, mbs, mib};
use crate::timing::interleaved;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

pub fn sqlite3_version() -> Option<String> {
    let o = Command::new("sqlite3").arg("--version").output().ok()?;
    Some(
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()?
            .to_string(),
    )
}

/// One row pair per case size (issue #14 holds the build to ≥ 0.5 × the
/// rate of `VACUUM INTO` at 64 and 512 MiB: the e2e sizes of a full run).
pub fn snapshot_section(r: &mut Report, env: &Env, dbs: &[(u64, &CaseDb)], opts: &Opts) {
    let s = r.section(
        "Snapshot build against sqlite3 VACUUM INTO",
        "`build_snapshot` of the one case of a database seeded with one case \
         (scope discovery, copy of the case's rows into an in-memory database, \
         indexes, manifest), against the `sqlite3` command-line shell running \
         `VACUUM INTO` a file on tmpfs (/dev/shm) over the same database: a \
         copy of the whole file, page-ordered, indexes copied rather than \
         rebuilt. Both read the database from the page cache. Rows are the \
         snapshot's rows; sqlite3 copies the same rows plus the users table. \
         `build rate / VACUUM INTO rate`: VACUUM INTO's time over the build's \
         (same source, so the ratio of rates).",
        &[
            "case",
            "what",
            "median s",
            "rows/s",
            "MB/s (output bytes)",
            "build rate / VACUUM INTO rate",
        ],
    );
    if Command::new("sqlite3").arg("--version").output().is_err() {
        r.notes
            .push("sqlite3 not installed: VACUUM INTO comparison skipped".into());
        return;
    }
    let out_dir = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").expect("tmpfs dir")
    } else {
        env.tempdir()
    };
    let vac_out = out_dir.path().join("vacuum.db");
    let copy_sql = out_dir.path().join("copy.sql");
    let version = sqlite3_version().unwrap_or_default();
    for &(size, db) in dbs {
        warm(&db.path);
        let case_id = db.case_ids[0].clone();
        let reps = opts.reps(size);
        std::fs::write(&copy_sql, unfiltered_copy_sql(&db.path)).expect("write copy.sql");
        let mut rows = 0u64;
        let mut snap_bytes = 0u64;
        let mut vac_bytes = 0u64;
        let m = interleaved(
            reps,
            &mut [
                ("build_snapshot", &mut || {
                    let t = Instant::now();
                    let snap = build(&db.path, &case_id);
                    let secs = t.elapsed().as_secs_f64();
                    rows = snap.row_counts.iter().map(|(_, n)| n).sum();
                    snap_bytes = snap.len();
                    drop(snap);
                    secs
                }),
                ("vacuum", &mut || {
                    let _ = std::fs::remove_file(&vac_out);
                    let t = Instant::now();
                    let st = Command::new("sqlite3")
                        .arg(&db.path)
                        .arg(format!("VACUUM INTO '{}'", vac_out.display()))
                        .status()
                        .expect("run sqlite3");
                    let secs = t.elapsed().as_secs_f64();
                    assert!(st.success(), "sqlite3 VACUUM INTO failed");
                    vac_bytes = std::fs::metadata(&vac_out).map(|m| m.len()).unwrap_or(0);
                    secs
                }),
                ("unfiltered", &mut || {
                    let t = Instant::now();
                    let st = Command::new("sqlite3")
                        .arg(":memory:")
                        .stdin(std::fs::File::open(&copy_sql).expect("copy.sql"))
                        .status()
                        .expect("run sqlite3");
                    let secs = t.elapsed().as_secs_f64();
                    assert!(st.success(), "sqlite3 unfiltered copy failed");
                    secs
                }),
            ],
        );
        r.metric(&format!("unfiltered_copy_s_{size}"), m[2]);
        let _ = std::fs::remove_file(&vac_out);
        let source = std::fs::metadata(&db.path).map(|m| m.len()).unwrap_or(0);
        r.metric(&format!("snapshot_build_s_{size}"), m[0]);
        r.metric(
            &format!("snapshot_build_rows_per_s_{size}"),
            rows as f64 / m[0],
        );
        r.metric(&format!("snapshot_build_mbs_{size}"), mbs(snap_bytes, m[0]));
        r.metric(&format!("snapshot_bytes_{size}"), snap_bytes as f64);
        r.metric(&format!("vacuum_into_s_{size}"), m[1]);
        let case = format!("{size} MiB ({} MiB source)", source / MIB);
        r.row(
            s,
            vec![
                case.clone(),
                format!("build_snapshot ({} MiB snapshot)", mib(snap_bytes)),
                format!("{:.3}", m[0]),
                format!("{:.0}", rows as f64 / m[0]),
                f1(mbs(snap_bytes, m[0])),
                f2(m[1] / m[0]),
            ],
        );
        r.row(
            s,
            vec![
                case.clone(),
                format!(
                    "sqlite3 {version} VACUUM INTO ({} MiB file)",
                    mib(vac_bytes)
                ),
                format!("{:.3}", m[1]),
                format!("{:.0}", rows as f64 / m[1]),
                f1(mbs(vac_bytes, m[1])),
                "1.00".into(),
            ],
        );
        r.row(
            s,
            vec![
                case,
                format!(
                    "sqlite3 {version}: every scope table copied whole with INSERT … SELECT * \
                     into :memory:, indexes built after (no case filter)"
                ),
                format!("{:.3}", m[2]),
                format!("{:.0}", rows as f64 / m[2]),
                f1(mbs(snap_bytes, m[2])),
                f2(m[1] / m[2]),
            ],
        );
    }
    r.contention(s);
}

/// A script for the `sqlite3` shell that does what a snapshot build does,
/// minus choosing rows: the scope's tables (all but `users`) created from
/// the source's schema in an in-memory database, each filled with one
/// `INSERT … SELECT *` of the whole source table (SQLite's transfer
/// optimisation copies records as they are), then the indexes built. What
/// any build through SQL statements can at best do on this source.
fn unfiltered_copy_sql(db: &Path) -> String {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open source");
    let of = |ty: &str| -> Vec<(String, String)> {
        let mut st = conn
            .prepare(
                "SELECT tbl_name, sql FROM sqlite_schema WHERE type = ?1 AND sql IS NOT NULL \
                 AND tbl_name <> 'users' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
            )
            .expect("schema query");
        st.query_map([ty], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("schema rows")
            .collect::<Result<_, _>>()
            .expect("schema rows")
    };
    let mut sql = format!(
        "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA temp_store = MEMORY;\n\
         ATTACH 'file:{}?mode=ro' AS src;\nBEGIN;\n",
        db.display()
    );
    for (table, create) in of("table") {
        sql.push_str(&format!(
            "{create};\nINSERT INTO main.\"{table}\" SELECT * FROM src.\"{table}\";\n"
        ));
    }
    sql.push_str("COMMIT;\n");
    for (_, create) in of("index") {
        sql.push_str(&format!("{create};\n"));
    }
    sql
}
