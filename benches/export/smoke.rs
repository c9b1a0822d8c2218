//! Test mode: `cargo test --benches` (and `--all-targets`) runs this
//! harness without `--bench`. It then runs the code of every section once
//! on a small case, in seconds, so a change that breaks the harness fails
//! the tests; it measures nothing and writes no report.

use crate::PURPOSE;
use crate::dbsize::{case_by_number, cut_case};
use crate::e2e::{ClientKind, InProcServer, e2e_once};
use crate::env::{CaseDb, Env, build, snapshot_data};
use crate::memory::ChildServer;
use crate::seal::{aes_cbc_multibuffer, base64_1t, fernet_1t, raw_1t, sealer_run};
use crate::support::{seeded_db, small_seed, test_client_options};
use case_export::client::ExportClient;
use std::time::Instant;

/// Small enough that every step takes milliseconds, big enough for chunks.
const CHUNK: usize = 16 * 1024;

pub fn run(env: &Env) {
    let started = Instant::now();
    let seeded = seeded_db(&small_seed());
    let db = CaseDb {
        path: seeded.path.clone(),
        case_ids: seeded.case_ids.clone(),
        rows_per_case: small_seed().rows_per_case,
    };
    let snap = snapshot_data(env, &db);
    let n = snap.bytes.len() as u64;
    assert!(n as usize > 4 * CHUNK, "a snapshot of several chunks");

    // Sealing: each primitive and the Sealer over the same bytes.
    let data = &snap.bytes[..];
    assert!(fernet_1t(data, CHUNK) > n);
    assert!(raw_1t(data, CHUNK, true, true) > n);
    assert!(base64_1t(data, CHUNK) > n);
    assert_eq!(aes_cbc_multibuffer(data, CHUNK), n);
    assert!(sealer_run(data, CHUNK, 2) > n);
    let rows: u64 = build(&db.path, &snap.case_id)
        .row_counts
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(rows, snap.rows);

    // Database size: a case cut out of the seeded database snapshots the
    // same rows as from the whole database (cross-case links included).
    let cut = env.tempdir();
    let cut_db = cut.path().join("one.db");
    let case = case_by_number(&db.path, 2);
    cut_case(&db.path, &case, &cut_db);
    assert_eq!(
        build(&cut_db, &case).row_counts,
        build(&db.path, &case).row_counts
    );

    // End to end: every client against the in-process server.
    let srv = InProcServer::start(env, &db.path, |c| c.chunk_size = CHUNK);
    let out = env.tempdir();
    for kind in [ClientKind::Dir, ClientKind::Sink, ClientKind::Discard] {
        let run = env
            .client_rt
            .block_on(e2e_once(&srv.url, &snap.case_id, kind, out.path()));
        assert_eq!(run.plaintext, n, "{kind:?}");
    }
    drop(srv);

    // The real binary as a child, as the memory and load sections run it.
    let child = ChildServer::spawn(env, &db.path, "max_in_flight = 2");
    let receipt = env.client_rt.block_on(async {
        ExportClient::connect_with(&child.url(), test_client_options())
            .await
            .expect("connect")
            .export_case(&snap.case_id, PURPOSE, &mut tokio::io::sink(), |_, _| {})
            .await
            .expect("export from the child server")
    });
    assert_eq!(receipt.plaintext_size, n);
    assert!(child.status_bytes("VmHWM") > 0);
    drop(child);

    eprintln!(
        "bench harness smoke run: ok in {:.1} s (`cargo bench` measures)",
        started.elapsed().as_secs_f64()
    );
}
