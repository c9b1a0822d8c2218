//! Load against the real binary: clients exporting back to back, then a
//! burst of 200 against a small in-flight limit and memory budget.

use crate::MIB;
use crate::PURPOSE;
use crate::env::{Env, warm};
use crate::memory::ChildServer;
use crate::opts::Opts;
use crate::report::{Report, f1, mib, percentile};
use crate::support::test_client_options;
use crate::timing::wait_quiet;
use case_export::client::{ClientError, ExportClient};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::Busy(_) => "RESOURCE_EXHAUSTED".into(),
        ClientError::Unavailable(_) => "UNAVAILABLE".into(),
        ClientError::Other { code, .. } => format!("{code:?}"),
        other => {
            let s = other.to_string();
            s.chars().take(60).collect()
        }
    }
}

pub fn load_section(r: &mut Report, env: &Env, opts: &Opts) {
    let (cases, rows) = (20u32, 200u32);
    let db = env.case_db(cases, rows);
    warm(&db.path);
    let secs = if opts.quick { 5 } else { 10 };
    let s = r.section(
        "Load (real binary; small cases)",
        &format!(
            "A database of {cases} cases × {rows} rows per case. A: 32 clients, \
             each on its own connection, export cases back to back for {secs} s \
             (`export_case` into a sink: the stream is verified, not written), \
             server with max_in_flight = 32. B: 200 clients, each connected, \
             start one export at the same instant, twice, against \
             max_in_flight = 4 and memory_budget_bytes = 256 MiB \
             (max_snapshot_bytes = 64 MiB); expected: only OK and \
             RESOURCE_EXHAUSTED. Peak RSS is the server's VmHWM."
        ),
        &[
            "run",
            "exports",
            "exports/s",
            "p50 ms",
            "p99 ms",
            "outcomes",
            "server VmHWM MiB",
            "budget",
        ],
    );

    // A: throughput and latency.
    {
        wait_quiet();
        // All clients are one principal: its own cap must not be the limit.
        let srv = ChildServer::spawn(
            env,
            &db.path,
            "max_in_flight = 32\nmax_in_flight_per_principal = 32",
        );
        let base = srv.status_bytes("VmHWM");
        let url = srv.url();
        let ids = Arc::new(db.case_ids.clone());
        let (lat, errs, wall) = env.client_rt.block_on(async move {
            let mut clients = vec![];
            for _ in 0..32 {
                clients.push(
                    ExportClient::connect_with(&url, test_client_options())
                        .await
                        .expect("connect"),
                );
            }
            let start = Instant::now();
            let deadline = start + Duration::from_secs(secs);
            let mut tasks = vec![];
            for (i, mut c) in clients.into_iter().enumerate() {
                let ids = ids.clone();
                tasks.push(tokio::spawn(async move {
                    let mut lat = vec![];
                    let mut errs: BTreeMap<String, u64> = BTreeMap::new();
                    let mut k = i;
                    while Instant::now() < deadline {
                        let id = &ids[k % ids.len()];
                        k += 1;
                        let t = Instant::now();
                        match c
                            .export_case(id, PURPOSE, &mut tokio::io::sink(), |_, _| {})
                            .await
                        {
                            Ok(_) => lat.push(t.elapsed().as_secs_f64()),
                            Err(e) => *errs.entry(error_kind(&e)).or_default() += 1,
                        }
                    }
                    (lat, errs)
                }));
            }
            let mut lat = vec![];
            let mut errs: BTreeMap<String, u64> = BTreeMap::new();
            for t in tasks {
                let (l, e) = t.await.expect("client task");
                lat.extend(l);
                for (k, v) in e {
                    *errs.entry(k).or_default() += v;
                }
            }
            (lat, errs, start.elapsed().as_secs_f64())
        });
        let hwm = srv.status_bytes("VmHWM");
        drop(srv);
        let n_err: u64 = errs.values().sum();
        let rate = lat.len() as f64 / wall;
        r.metric("load_a_exports_per_s", rate);
        r.metric("load_a_p50_ms", percentile(&lat, 50.0) * 1e3);
        r.metric("load_a_p99_ms", percentile(&lat, 99.0) * 1e3);
        r.metric("load_a_errors", n_err as f64);
        let outcomes = if errs.is_empty() {
            format!("{} OK, 0 errors", lat.len())
        } else {
            format!("{} OK, errors: {errs:?}", lat.len())
        };
        r.row(
            s,
            vec![
                "A: 32 clients, max_in_flight 32".into(),
                lat.len().to_string(),
                f1(rate),
                f1(percentile(&lat, 50.0) * 1e3),
                f1(percentile(&lat, 99.0) * 1e3),
                outcomes,
                format!("{} (baseline {})", mib(hwm), mib(base)),
                "4096 MiB (default)".into(),
            ],
        );
    }

    // B: overload against max_in_flight = 4.
    {
        let budget = 256 * MIB;
        wait_quiet();
        let srv = ChildServer::spawn(
            env,
            &db.path,
            &format!(
                "max_in_flight = 4\nmemory_budget_bytes = {budget}\nmax_snapshot_bytes = {}",
                64 * MIB
            ),
        );
        let base = srv.status_bytes("VmHWM");
        let url = srv.url();
        let ids = Arc::new(db.case_ids.clone());
        let (ok, lat, outcomes) = env.client_rt.block_on(async move {
            let mut clients = vec![];
            for _ in 0..200 {
                clients.push(
                    ExportClient::connect_with(&url, test_client_options())
                        .await
                        .expect("connect"),
                );
            }
            let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
            let mut lat = vec![];
            for _round in 0..2 {
                let barrier = Arc::new(tokio::sync::Barrier::new(clients.len()));
                let mut tasks = vec![];
                for (i, c) in clients.iter().enumerate() {
                    let mut c = c.clone();
                    let ids = ids.clone();
                    let barrier = barrier.clone();
                    tasks.push(tokio::spawn(async move {
                        barrier.wait().await;
                        let t = Instant::now();
                        let r = c
                            .export_case(
                                &ids[i % ids.len()],
                                PURPOSE,
                                &mut tokio::io::sink(),
                                |_, _| {},
                            )
                            .await;
                        (r.map(|_| ()).map_err(|e| error_kind(&e)), t.elapsed())
                    }));
                }
                for t in tasks {
                    let (res, el) = t.await.expect("client task");
                    match res {
                        Ok(()) => {
                            *outcomes.entry("OK".into()).or_default() += 1;
                            lat.push(el.as_secs_f64());
                        }
                        Err(k) => *outcomes.entry(k).or_default() += 1,
                    }
                }
            }
            (outcomes.get("OK").copied().unwrap_or(0), lat, outcomes)
        });
        let hwm = srv.status_bytes("VmHWM");
        drop(srv);
        let other: u64 = outcomes
            .iter()
            .filter(|(k, _)| k.as_str() != "OK" && k.as_str() != "RESOURCE_EXHAUSTED")
            .map(|(_, v)| v)
            .sum();
        r.metric("load_b_ok", ok as f64);
        r.metric(
            "load_b_exhausted",
            outcomes.get("RESOURCE_EXHAUSTED").copied().unwrap_or(0) as f64,
        );
        r.metric("load_b_other_errors", other as f64);
        r.metric("load_b_hwm", hwm as f64);
        r.metric("load_b_budget", budget as f64);
        r.row(
            s,
            vec![
                "B: 200 clients × 2 rounds, max_in_flight 4".into(),
                "400".into(),
                "".into(),
                f1(percentile(&lat, 50.0) * 1e3),
                f1(percentile(&lat, 99.0) * 1e3),
                outcomes
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                format!("{} (baseline {})", mib(hwm), mib(base)),
                format!(
                    "{} MiB: {}",
                    budget / MIB,
                    if hwm <= budget { "within" } else { "OVER" }
                ),
            ],
        );
    }
}
