//! Sealing threads: the Sealer with 1 to 4 workers, and the stream rate
//! end to end with `seal_workers` = N.

use crate::MIB;
use crate::e2e::{ClientKind, E2eRun, InProcServer, e2e_runs, med};
use crate::env::{CaseDb, Env, SnapData};
use crate::opts::Opts;
use crate::report::{Report, f1, f2, mbs, median, mib};
use crate::seal::sealer_run;
use crate::timing::{cpu_mark, time, timed_rep};
use case_export::seal::DEFAULT_CHUNK_SIZE;

pub fn workers_section(r: &mut Report, env: &Env, db: &CaseDb, d: &SnapData, opts: &Opts) {
    let size_mib = d.bytes.len() as u64 / MIB;
    let s = r.section(
        &format!(
            "Sealing threads (snapshot of {} MiB, 256 KiB chunks)",
            mib(d.bytes.len() as u64)
        ),
        "`Sealer Nw`: `seal::Sealer` with N workers, no network; `cores busy`: \
         this process's CPU time over wall time during it. `stream MB/s`: end \
         to end (first chunk to end), in-process server with `seal_workers = \
         N`, discarding client and library client writing to disk. The \
         Sealer's emitter (the calling thread) hashes every token, so N \
         workers are N + 1 busy threads.",
        &[
            "workers",
            "Sealer MB/s",
            "vs 1 worker",
            "cores busy",
            "stream MB/s (discard)",
            "stream MB/s (to disk)",
        ],
    );
    let data = &d.bytes[..];
    let n = data.len() as u64;
    let reps = opts.reps(size_mib);
    let mut secs: Vec<Vec<f64>> = vec![vec![]; 4];
    let mut cores_busy: Vec<Vec<f64>> = vec![vec![]; 4];
    for _ in 0..reps {
        for w in 1..=4 {
            let mut busy = 0.0;
            let t = timed_rep(&mut || {
                let a = cpu_mark();
                let t = time(|| sealer_run(data, DEFAULT_CHUNK_SIZE, w));
                let b = cpu_mark();
                busy = (b.own - a.own) / t;
                t
            });
            secs[w - 1].push(t);
            cores_busy[w - 1].push(busy);
        }
    }
    let m: Vec<f64> = secs.iter().map(|v| median(v)).collect();
    for w in 1..=4usize {
        let (sd, sdir) = if w <= 3 {
            let srv = InProcServer::start(env, &db.path, |c| c.seal_workers = w);
            let runs = e2e_runs(
                env,
                &srv.url,
                &d.case_id,
                &[ClientKind::Discard, ClientKind::Dir],
                reps.min(3),
            );
            drop(srv);
            (
                f1(mbs(n, med(&runs[0], E2eRun::stream_secs))),
                f1(mbs(n, med(&runs[1], E2eRun::stream_secs))),
            )
        } else {
            ("".into(), "".into())
        };
        r.metric(&format!("workers_{w}_seal_mbs"), mbs(n, m[w - 1]));
        r.row(
            s,
            vec![
                w.to_string(),
                f1(mbs(n, m[w - 1])),
                f2(m[0] / m[w - 1]),
                f2(median(&cores_busy[w - 1])),
                sd,
                sdir,
            ],
        );
    }
    r.contention(s);
}
