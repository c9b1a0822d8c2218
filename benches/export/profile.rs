//! No benchmark: one kind of run repeated on one snapshot size, for
//! `perf record` or valgrind (bench/profile.sh).

use crate::e2e::{ClientKind, InProcServer, e2e_runs};
use crate::env::{Env, build, snapshot_data, warm};
use crate::seal::sealer_run;
use crate::timing::{cpu_mark, others_share, time, wait_quiet};
use case_export::seal::DEFAULT_CHUNK_SIZE;

pub fn profile(env: &mut Env, kind: &str, size: u64, n: usize) {
    let db = env.case_db_for(size);
    warm(&db.path);
    let case_id = db.case_ids[0].clone();
    eprintln!("profile {kind} on {size} MiB × {n}");
    match kind {
        "e2e-dir" | "e2e-sink" | "e2e-discard" => {
            let k = match kind {
                "e2e-dir" => ClientKind::Dir,
                "e2e-sink" => ClientKind::Sink,
                _ => ClientKind::Discard,
            };
            let srv = InProcServer::start(env, &db.path, |_| {});
            let runs = e2e_runs(env, &srv.url, &case_id, &[k], n);
            for run in &runs[0] {
                eprintln!(
                    "  total {:.3} s, first chunk {:.3} s, stream {:.3} s",
                    run.total,
                    run.ttfc,
                    run.stream_secs()
                );
                // CLOCK_MONOTONIC window of the streaming phase.
                println!("STREAM_WINDOW {:.6} {:.6}", run.mono_first, run.mono_end);
            }
        }
        "seal" => {
            let d = snapshot_data(env, &db);
            for workers in [1, 2, 3, 4] {
                for _ in 0..n {
                    wait_quiet();
                    let a = cpu_mark();
                    let t = time(|| sealer_run(&d.bytes, DEFAULT_CHUNK_SIZE, workers));
                    let b = cpu_mark();
                    eprintln!(
                        "  seal {workers}w {:.3} s, {:.2} cores busy, others {:.0}%",
                        t,
                        (b.own - a.own) / t,
                        others_share(a, b) * 100.0
                    );
                }
            }
        }
        "snapshot" => {
            for _ in 0..n {
                let t = time(|| build(&db.path, &case_id));
                eprintln!("  build_snapshot {:.3} s", t);
            }
        }
        other => panic!("unknown profile kind {other}"),
    }
}
