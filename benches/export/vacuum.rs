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
    let version = sqlite3_version().unwrap_or_default();
    for &(size, db) in dbs {
        warm(&db.path);
        let case_id = db.case_ids[0].clone();
        let reps = opts.reps(size);
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
            ],
        );
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
                case,
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
    }
    r.contention(s);
}
