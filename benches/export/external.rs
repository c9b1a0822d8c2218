//! External baselines on the same snapshot file: the original design in
//! Python (bench/original_design.py), and age.

use crate::env::{CaseDb, Env, SnapData, warm};
use crate::opts::Opts;
use crate::report::{Report, f1, f2, mbs, median, mib};
use crate::timing::timed_rep;
use std::process::{Command, Stdio};
use std::time::Instant;

pub fn external_section(
    r: &mut Report,
    env: &Env,
    list: &[(u64, &CaseDb, &SnapData)],
    opts: &Opts,
) {
    let s = r.section(
        "The original design (Python) and age, on the same snapshot file",
        "`original design, no build`: bench/original_design.py, Python \
         `cryptography` Fernet over the whole snapshot in one token, \
         hex-encoded into one JSON body, as the original service did \
         (encryption to encoded body; no snapshot build, no network). \
         `original design with its build`: `original_design.py --build`, the \
         whole request: Python `sqlite3` attaches the source read-only, \
         copies the case's rows table by table (`INSERT … SELECT`, by \
         `case_id` or through the parent) into a new database in a temporary \
         file, creates the indexes, closes it, reads its bytes, then the \
         same Fernet, hex and JSON (the row count is checked against the \
         snapshot's). `age`: `age -r <X25519 recipient>` \
         on the snapshot file, output to a file (process start included). \
         Ratios: our end to end (request to verified `.enc` on disk, snapshot \
         build included) over each.",
        &[
            "snapshot MiB",
            "tool",
            "median s",
            "MB/s",
            "peak RSS MiB",
            "e2e (disk) / this",
            "e2e stream phase / this",
        ],
    );
    let py = Command::new("python3")
        .args(["-c", "import cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    let age = Command::new("age").arg("--version").output().is_ok();
    if !py {
        r.notes
            .push("python3 with cryptography missing: original design skipped".into());
    }
    if !age {
        r.notes.push("age missing: age comparison skipped".into());
    }
    let dir = env.tempdir();
    let mut age_pub = String::new();
    if age {
        let key = dir.path().join("age.key");
        let st = Command::new("age-keygen")
            .arg("-o")
            .arg(&key)
            .stderr(Stdio::null())
            .status()
            .expect("age-keygen");
        assert!(st.success());
        let text = std::fs::read_to_string(&key).expect("age key");
        age_pub = text
            .lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .expect("public key line")
            .to_string();
    }
    let script = env.repo.join("bench/original_design.py");
    for &(size, db, d) in list {
        let n = d.bytes.len() as u64;
        let e2e = r.get(&format!("e2e_dir_mbs_{size}"));
        let e2e_stream = r.get(&format!("e2e_dir_stream_mbs_{size}"));
        // Python holds ~11 copies of the data; fewer reps on big inputs.
        let reps = if size >= 256 {
            1
        } else {
            opts.reps(size).min(3)
        };
        if py {
            warm(&db.path);
            // The two modes interleaved rep by rep: encryption of the
            // snapshot file, and the whole request with the build.
            let run = |build: bool| {
                let mut o = None;
                timed_rep(&mut || {
                    let t = Instant::now();
                    let mut c = Command::new("python3");
                    c.arg(&script);
                    if build {
                        c.arg("--build").arg(&db.path).arg(&d.case_id);
                    } else {
                        c.arg(&d.file).arg(&d.case_id);
                    }
                    o = Some(c.output().expect("run python3"));
                    t.elapsed().as_secs_f64()
                });
                let o = o.expect("ran");
                assert!(
                    o.status.success(),
                    "original_design.py failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("python JSON")
            };
            let (mut secs, mut rss) = (vec![], 0u64);
            let (mut total, mut build_s, mut rss_b, mut db_bytes) = (vec![], vec![], 0u64, 0u64);
            for _ in 0..reps {
                let v = run(false);
                secs.push(v["seconds"].as_f64().expect("seconds"));
                rss = rss.max(v["peak_rss_bytes"].as_u64().unwrap_or(0));
                let v = run(true);
                // The same rows as our snapshot, or the comparison is unfair.
                assert_eq!(
                    v["rows"].as_u64(),
                    Some(d.rows),
                    "original_design.py --build copied other rows than the snapshot holds"
                );
                total.push(v["total_seconds"].as_f64().expect("total_seconds"));
                build_s.push(v["build_seconds"].as_f64().expect("build_seconds"));
                rss_b = rss_b.max(v["peak_rss_bytes"].as_u64().unwrap_or(0));
                db_bytes = v["plaintext_bytes"].as_u64().unwrap_or(0);
            }
            let t = median(&secs);
            let rate = mbs(n, t);
            r.metric(&format!("python_mbs_{size}"), rate);
            r.metric(&format!("python_s_{size}"), t);
            r.metric(&format!("python_peak_rss_{size}"), rss as f64);
            r.row(
                s,
                vec![
                    mib(n),
                    "original design, no build (Python cryptography, one token, hex, JSON)".into(),
                    format!("{t:.3}"),
                    f1(rate),
                    mib(rss),
                    f2(e2e / rate),
                    f2(e2e_stream / rate),
                ],
            );
            let (tt, tb) = (median(&total), median(&build_s));
            let rate = mbs(n, tt);
            r.metric(&format!("python_build_total_s_{size}"), tt);
            r.metric(&format!("python_build_s_{size}"), tb);
            r.metric(&format!("python_build_mbs_{size}"), rate);
            r.metric(&format!("python_build_peak_rss_{size}"), rss_b as f64);
            r.row(
                s,
                vec![
                    mib(n),
                    format!(
                        "original design with its build (Python sqlite3 copy into a temp file \
                         {tb:.3} s, {} MiB; then Fernet, hex, JSON)",
                        mib(db_bytes)
                    ),
                    format!("{tt:.3}"),
                    f1(rate),
                    mib(rss_b),
                    f2(e2e / rate),
                    f2(e2e_stream / rate),
                ],
            );
        }
        if age {
            let out = dir.path().join("out.age");
            let mut secs = vec![];
            for _ in 0..opts.reps(size).min(3) {
                let _ = std::fs::remove_file(&out);
                secs.push(timed_rep(&mut || {
                    let t = Instant::now();
                    let st = Command::new("age")
                        .arg("-r")
                        .arg(&age_pub)
                        .arg("-o")
                        .arg(&out)
                        .arg(&d.file)
                        .status()
                        .expect("run age");
                    assert!(st.success(), "age failed");
                    t.elapsed().as_secs_f64()
                }));
            }
            let _ = std::fs::remove_file(&out);
            let t = median(&secs);
            let rate = mbs(n, t);
            r.metric(&format!("age_mbs_{size}"), rate);
            r.row(
                s,
                vec![
                    mib(n),
                    format!("age {} (X25519 recipient)", age_version()),
                    format!("{t:.3}"),
                    f1(rate),
                    "".into(),
                    f2(e2e / rate),
                    f2(e2e_stream / rate),
                ],
            );
        }
    }
    r.contention(s);
}

pub fn age_version() -> String {
    Command::new("age")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
