//! One custody trail in PostgreSQL shared by several writers and servers:
//! appends serialized into one chain, the tables append-only for every
//! role, tampering caught by a running and by a restarted replica, the
//! calls of a killed replica closed once by the survivors, and the CLI
//! reading both stores alike (docs/AUDIT.md, "The PostgreSQL trail").

use crate::support::{
    AUDITOR_TOKEN, PgDb, ServerProcess, bin, channel, eventually, good_export_eventually,
    held_export, one_error_line, run, seeded_db, stderr_of, stdout_of, with_creds,
    write_test_config,
};
use case_export::audit::{
    AuditError, AuditWriter, Event, Kind, ListFilter, Verification, WriterConfig, list_events,
    read_copy, verify_log,
};
use case_export::db::{DbLocation, PgConnector};
use case_export::pb::audit_service_client::AuditServiceClient;
use case_export::pb::{ListEventsRequest, VerifyLogRequest};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

type Ev = (u64, Event, String);

fn connector(url: &str) -> PgConnector {
    let DbLocation::Postgres(u) = DbLocation::parse(url).expect("a URL") else {
        panic!("{url} is not a PostgreSQL URL");
    };
    u.connector(None, Duration::from_secs(5), "test")
        .expect("a connector")
}

/// The trail's events and its verification (with the checkpoints stored
/// in the database), read as an auditor would.
async fn read_trail(url: &str) -> (Vec<Ev>, Verification) {
    let (conn, checkpoints) = read_copy(&connector(url)).await.expect("read the trail");
    let events = list_events(&conn, &ListFilter::default()).expect("list");
    let v = verify_log(&conn, &checkpoints, None).expect("verify");
    (events, v)
}

fn writer_config() -> WriterConfig {
    WriterConfig {
        every: Duration::from_secs(3600),
        ..Default::default()
    }
}

async fn start_writer(url: &str, instance: &str) -> Result<AuditWriter, AuditError> {
    let c = connector(url);
    let instance = instance.to_string();
    tokio::task::spawn_blocking(move || AuditWriter::start_pg(c, &instance, writer_config()))
        .await
        .expect("start joins")
}

async fn stop_writer(w: AuditWriter) {
    tokio::task::spawn_blocking(move || w.shutdown())
        .await
        .expect("shutdown joins");
}

/// A whole call in one event (a refusal), so that no writer takes it for
/// a call left open by another.
fn attempt(rid: &str) -> Event {
    let mut e = Event::new(Kind::Denied, rid);
    e.method = Some("/case_export.v1.ExportService/ExportCase".into());
    e.code = Some("UNAUTHENTICATED".into());
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_interleave_into_one_chain() {
    let Some(db) = PgDb::create("pg_trail_interleave").await else {
        return;
    };
    let a = start_writer(&db.url, "writer-a").await.expect("writer a");
    let b = start_writer(&db.url, "writer-b").await.expect("writer b");
    let (ha, hb) = (a.handle(), b.handle());
    const N: usize = 60;
    let mut calls = Vec::new();
    for i in 0..N {
        for (h, name) in [(&ha, "a"), (&hb, "b")] {
            let h = h.clone();
            let rid = format!("{name}-{i}");
            calls.push(tokio::spawn(async move {
                let c = h.commit(attempt(&rid)).await.expect("committed");
                (c, rid)
            }));
        }
    }
    let mut by_seq = BTreeMap::new();
    for c in calls {
        let (c, rid) = c.await.expect("task");
        assert!(
            by_seq.insert(c.seq, (rid, hex::encode(c.hash))).is_none(),
            "a sequence number given twice"
        );
    }
    let (events, v) = read_trail(&db.url).await;
    assert!(v.chain_ok(), "{:?}", v.problems);
    // Each writer's server_start is absent (no server here): exactly the
    // 2N committed events, seq 1..=2N, each where its commit said.
    assert_eq!(events.len(), 2 * N);
    for (i, (seq, e, hash)) in events.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "contiguous");
        // Each commit answered with the event's place and stored hash.
        assert_eq!(
            by_seq.get(seq),
            Some(&(e.request_id.clone(), hash.clone())),
            "event {seq}"
        );
    }
    let instances: BTreeSet<&str> = events.iter().map(|(_, e, _)| e.instance.as_str()).collect();
    assert_eq!(instances, BTreeSet::from(["writer-a", "writer-b"]));
    // Both writers' heads are the shared tail after one more write each.
    let sa = ha.commit(attempt("a-last")).await.unwrap().seq;
    let sb = hb.commit(attempt("b-last")).await.unwrap().seq;
    assert_eq!((sa, sb), (2 * N as u64 + 1, 2 * N as u64 + 2));
    // A clean stop checkpoints the shared chain in the database, never
    // as final: the other writer goes on.
    stop_writer(a).await;
    let sc = hb.commit(attempt("b-after")).await.unwrap().seq;
    assert_eq!(sc, 2 * N as u64 + 3);
    stop_writer(b).await;
    let (conn, checkpoints) = read_copy(&connector(&db.url)).await.unwrap();
    assert_eq!(checkpoints.len(), 2, "{checkpoints:?}");
    assert!(checkpoints.iter().all(|c| !c.is_final));
    let v = verify_log(&conn, &checkpoints, None).unwrap();
    assert!(v.chain_ok(), "{:?}", v.problems);
    assert_eq!(v.checkpoints_ok, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_id_cannot_run_twice() {
    let Some(db) = PgDb::create("pg_trail_twice").await else {
        return;
    };
    let a = start_writer(&db.url, "same").await.expect("first");
    let Err(e) = start_writer(&db.url, "same").await else {
        panic!("a second writer with the same instance id started");
    };
    assert!(e.to_string().contains("in use by a running replica"), "{e}");
    stop_writer(a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_role_may_only_read_and_append() {
    let Some(db) = PgDb::create("pg_trail_grants").await else {
        return;
    };
    let (role, role_url) = db.role("svc").await;
    let o = run(bin().args(["audit", "init", "--db", &db.url, "--grant", &role]));
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(
        stdout_of(&o).contains("created the custody trail"),
        "{}",
        stdout_of(&o)
    );
    // Again: nothing to create, the grant is given again.
    let o = run(bin().args(["audit", "init", "--db", &db.url, "--grant", &role]));
    assert!(stdout_of(&o).contains("exists"), "{}", stdout_of(&o));

    let w = start_writer(&role_url, "svc-writer")
        .await
        .expect("writer as the service role");
    w.handle().commit(attempt("r1")).await.expect("append");
    stop_writer(w).await;

    let svc = crate::support::pg_connect(&role_url).await;
    for sql in [
        "UPDATE audit_events SET purpose = 'x' WHERE seq = 1",
        "DELETE FROM audit_events WHERE seq = 1",
        "TRUNCATE audit_events",
        "UPDATE audit_checkpoints SET seq = 0",
        "DELETE FROM audit_meta",
        "ALTER TABLE audit_events DISABLE TRIGGER USER",
    ] {
        let e = svc.batch_execute(sql).await.expect_err(sql);
        let msg = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("permission denied") || msg.contains("must be owner"),
            "{sql}: {msg}"
        );
    }
    // The owner too is stopped by the triggers.
    let admin = db.connect().await;
    for sql in [
        "UPDATE audit_events SET purpose = 'x' WHERE seq = 1",
        "DELETE FROM audit_events WHERE seq = 1",
        "TRUNCATE audit_events",
        "DELETE FROM audit_checkpoints",
        "INSERT INTO audit_meta VALUES ('00', 'now', 1)",
    ] {
        let e = admin.batch_execute(sql).await.expect_err(sql);
        let msg = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("append-only") || msg.contains("one row"),
            "{sql}: {msg}"
        );
    }
    let (events, v) = read_trail(&db.url).await;
    assert!(v.chain_ok(), "{:?}", v.problems);
    assert_eq!(events.len(), 1);
}

/// Runs `sql` as the owner with the triggers off: what an administrator
/// bent on rewriting the trail can do.
async fn tamper(db: &PgDb, sql: &str) {
    db.execute(&format!(
        "ALTER TABLE audit_events DISABLE TRIGGER USER; {sql}; \
         ALTER TABLE audit_events ENABLE TRIGGER USER;"
    ))
    .await;
}

/// A trail of `n` events written by a writer that stopped cleanly.
async fn trail_of(db: &PgDb, n: usize) -> AuditWriter {
    let w = start_writer(&db.url, "tamper-running")
        .await
        .expect("writer");
    for i in 0..n {
        w.handle().commit(attempt(&format!("r{i}"))).await.unwrap();
    }
    w
}

#[track_caller]
fn assert_refused(w: &AuditWriter, seq: u64) {
    let h = w.handle();
    let m = h.mismatch().cloned().expect("the trail is refused");
    assert_eq!(m.seq, seq, "{m}");
    assert!(!h.is_healthy() && !h.is_accepting());
}

async fn refused_after_restart(db: &PgDb, seq: u64) {
    let w = start_writer(&db.url, "tamper-restarted")
        .await
        .expect("start");
    assert_refused(&w, seq);
    match w.handle().commit(attempt("after")).await {
        Err(AuditError::Mismatch(m)) => assert_eq!(m.seq, seq),
        other => panic!("append on a refused trail: {other:?}"),
    }
    stop_writer(w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_event_is_caught_by_a_running_and_a_restarted_replica() {
    let Some(db) = PgDb::create("pg_trail_edit").await else {
        return;
    };
    let w = trail_of(&db, 5).await;
    tamper(
        &db,
        "UPDATE audit_events SET purpose = 'rewritten' WHERE seq = 2",
    )
    .await;
    // Behind the head: the next checkpoint's verification catches it.
    assert!(w.handle().checkpoint().await.is_none());
    assert_refused(&w, 2);
    stop_writer(w).await;
    refused_after_restart(&db, 2).await;
    let (_, v) = read_trail(&db.url).await;
    assert!(v.problems[0].contains("event 2"), "{:?}", v.problems);
    let line = one_error_line(&run(bin().args(["audit", "verify", "--db", &db.url])));
    assert!(
        line.contains("audit chain of") && line.contains("event 2: contents do not match"),
        "{line}"
    );
}

#[test]
fn audit_init_needs_a_postgresql_url() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    let line = one_error_line(&run(bin().args(["audit", "init", "--db"]).arg(&db)));
    assert!(line.contains("give a postgres:// URL"), "{line}");
    assert!(!db.exists());
    let line = one_error_line(&run(bin().args([
        "audit",
        "verify",
        "--db",
        "postgres://nobody@127.0.0.1:1/none",
    ])));
    assert!(
        line.contains("cannot open the audit database postgres://nobody@127.0.0.1:1/none"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_head_is_caught_at_the_next_append() {
    let Some(db) = PgDb::create("pg_trail_head").await else {
        return;
    };
    let w = trail_of(&db, 4).await;
    tamper(
        &db,
        "UPDATE audit_events SET request_id = 'other' WHERE seq = 4",
    )
    .await;
    match w.handle().commit(attempt("next")).await {
        Err(AuditError::Mismatch(m)) => assert_eq!(m.seq, 4, "{m}"),
        other => panic!("append after a rewrite: {other:?}"),
    }
    assert_refused(&w, 4);
    stop_writer(w).await;
    refused_after_restart(&db, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_tail_and_a_forged_link_are_caught() {
    let Some(db) = PgDb::create("pg_trail_cut").await else {
        return;
    };
    let w = trail_of(&db, 4).await;
    tamper(&db, "DELETE FROM audit_events WHERE seq = 4").await;
    match w.handle().commit(attempt("next")).await {
        Err(AuditError::Mismatch(m)) => {
            assert_eq!(m.seq, 4, "{m}");
            assert!(m.what.contains("rewritten or removed"), "{m}");
        }
        other => panic!("append after a cut: {other:?}"),
    }
    stop_writer(w).await;

    let Some(db) = PgDb::create("pg_trail_forge").await else {
        return;
    };
    let w = trail_of(&db, 3).await;
    // An event after the tail whose previous-hash links nowhere.
    tamper(
        &db,
        "INSERT INTO audit_events SELECT 4, ts, kind, 'forged', method, principal, \
         on_behalf_of, peer, tls_identity, case_id, export_id, purpose, code, detail, \
         instance, version, repeat('0', 64), hash FROM audit_events WHERE seq = 3",
    )
    .await;
    match w.handle().commit(attempt("next")).await {
        Err(AuditError::Mismatch(m)) => {
            assert_eq!(m.seq, 4, "{m}");
            assert!(m.what.contains("previous-hash"), "{m}");
        }
        other => panic!("append after a forged event: {other:?}"),
    }
    stop_writer(w).await;
    refused_after_restart(&db, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_checkpoint_catches_a_chain_rebuilt_after_it() {
    let Some(db) = PgDb::create("pg_trail_rebuilt").await else {
        return;
    };
    let w = trail_of(&db, 3).await;
    let c = w.handle().checkpoint().await.expect("a checkpoint");
    assert_eq!(c.seq, 3);
    stop_writer(w).await;
    // The whole tail after event 1 removed: the chain itself still holds,
    // the checkpoint stored in the database does not.
    tamper(&db, "DELETE FROM audit_events WHERE seq > 1").await;
    refused_after_restart(&db, 2).await;
    let (_, v) = read_trail(&db.url).await;
    assert!(
        v.problems.iter().any(|p| p.contains("tail removed")),
        "{:?}",
        v.problems
    );
}

/// A case database big enough that an export held by a client that stops
/// reading is still running when its server is killed.
fn big_seed() -> case_export::seed::SeedOptions {
    case_export::seed::SeedOptions {
        cases: 4,
        rows_per_case: 800,
        seed: 5,
        tenants: vec!["north".into()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_one_trail_and_close_a_killed_ones_calls() {
    let Some(db) = PgDb::create("pg_trail_replicas").await else {
        return;
    };
    let seeded = seeded_db(&big_seed());
    let dir = seeded.dir.path();
    let audit_db = std::path::PathBuf::from(&db.url);
    let start = |n: usize| {
        let config = write_test_config(dir, 100 + n);
        ServerProcess::start_custom(
            &config,
            &seeded.path,
            &audit_db,
            dir,
            &["--chunk-size", "4096"],
            |_| {},
        )
    };
    let replicas = [start(0), start(1), start(2)];
    // Each replica serves exports before one of them dies.
    let mut receipts = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        receipts.push(good_export_eventually(&r.url(), &seeded.case_ids[1 + i % 3]).await);
    }

    // A held export on replica 0: header and one chunk read, then no more.
    let (_client, stream, header) =
        held_export(&replicas[0].url(), &seeded.case_ids[0], "TICKET-HELD", 1).await;
    assert!(header.chunk_count > 100, "{} chunks", header.chunk_count);

    // Concurrent exports over all three, while replica 0 is killed.
    let mut exports = Vec::new();
    for round in 0..3 {
        for (i, r) in replicas.iter().enumerate().skip(1) {
            let url = r.url();
            let case = seeded.case_ids[1 + (round + i) % 3].clone();
            exports.push(tokio::spawn(async move {
                good_export_eventually(&url, &case).await
            }));
        }
    }
    let [killed, r1, r2] = replicas;
    killed.kill();
    drop(stream);
    for round in 0..2 {
        for r in [&r1, &r2] {
            let url = r.url();
            let case = seeded.case_ids[1 + round].clone();
            exports.push(tokio::spawn(async move {
                good_export_eventually(&url, &case).await
            }));
        }
    }
    for e in exports {
        receipts.push(e.await.expect("export task"));
    }

    // The survivors close the killed replica's call, once.
    let events = eventually(
        "the killed replica's call closed",
        Duration::from_secs(30),
        || async {
            let (events, _) = read_trail(&db.url).await;
            let closed = events.iter().any(|(_, e, _)| {
                e.kind == Kind::Failed && e.export_id.as_deref() == Some(header.export_id.as_str())
            });
            if closed {
                Ok(events)
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .await;
    // AuditService of a survivor reads the shared trail as the CLI does.
    let mut audit = AuditServiceClient::new(channel(&r2.url(), false).await);
    let v = audit
        .verify_log(with_creds(VerifyLogRequest {}, Some(AUDITOR_TOKEN), None))
        .await
        .expect("verify over gRPC")
        .into_inner();
    assert!(v.ok, "{:?}", v.problems);
    assert!(v.head_seq >= events.len() as u64, "{v:?}");
    // Only the verifying call itself may be open while it reads.
    assert!(v.unterminated.len() <= 1, "{:?}", v.unterminated);
    let mut stream = audit
        .list_events(with_creds(
            ListEventsRequest::default(),
            Some(AUDITOR_TOKEN),
            None,
        ))
        .await
        .expect("list over gRPC")
        .into_inner();
    let mut listed = Vec::new();
    while let Some(e) = stream.message().await.expect("list stream") {
        listed.push((e.seq, e.request_id, e.kind, e.hash));
    }
    assert!(listed.len() >= events.len());
    for ((seq, e, hash), l) in events.iter().zip(&listed) {
        assert_eq!(
            (*seq, &e.request_id, e.kind.as_str(), hash),
            (l.0, &l.1, l.2.as_str(), &l.3)
        );
    }
    drop(audit);
    assert!(r1.terminate().success());
    assert!(r2.terminate().success());

    let (events_after, v) = read_trail(&db.url).await;
    assert!(v.chain_ok(), "{:?}", v.problems);
    assert!(v.unterminated.is_empty(), "{:?}", v.unterminated);
    assert!(events_after.len() >= events.len());
    for (i, (seq, _, _)) in events_after.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1, "seq contiguous");
    }
    // Every call: one attempt first, exactly one terminal event.
    let mut calls: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for (_, e, _) in &events_after {
        if e.request_id != "-" {
            calls.entry(e.request_id.as_str()).or_default().push(e);
        }
    }
    for (rid, evs) in &calls {
        assert_eq!(evs[0].kind, Kind::Attempt, "{rid}: {evs:?}");
        let terminals = evs.iter().filter(|e| e.kind.is_terminal()).count();
        assert_eq!(terminals, 1, "{rid}: {evs:?}");
    }
    // Each good export: attempt, started, sealed, completed, on one replica.
    for r in &receipts {
        let (rid, _) = calls
            .iter()
            .find(|(_, evs)| {
                evs.iter()
                    .any(|e| e.export_id.as_deref() == Some(r.export_id.as_str()))
            })
            .expect("the export is on record");
        let kinds: Vec<Kind> = calls[rid].iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [Kind::Attempt, Kind::Started, Kind::Sealed, Kind::Completed],
            "{rid}"
        );
        let on: BTreeSet<&str> = calls[rid].iter().map(|e| e.instance.as_str()).collect();
        assert_eq!(on.len(), 1, "{rid}: one replica wrote the call");
    }
    // The held export: attempt and started by the killed replica, failed
    // UNAVAILABLE by a survivor.
    let (held_rid, held) = calls
        .iter()
        .find(|(_, evs)| {
            evs.iter()
                .any(|e| e.export_id.as_deref() == Some(header.export_id.as_str()))
        })
        .expect("the held export is on record");
    let last = held.last().expect("events");
    assert_eq!(last.kind, Kind::Failed, "{held_rid}: {held:?}");
    assert_eq!(last.code.as_deref(), Some("UNAVAILABLE"));
    assert_ne!(last.instance, held[0].instance, "closed by a survivor");
    assert!(
        last.detail
            .as_deref()
            .unwrap_or("")
            .contains(&held[0].instance),
        "{:?}",
        last.detail
    );
    assert!(!held.iter().any(|e| e.kind == Kind::Sealed), "no key left");
    let starts = events_after
        .iter()
        .filter(|(_, e, _)| e.kind == Kind::ServerStart)
        .count();
    assert_eq!(starts, 3);

    // The CLI gives the same answers from PostgreSQL and from a SQLite copy.
    let o = run(bin().args(["audit", "verify", "--db", &db.url]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    assert!(stdout_of(&o).contains(&format!("holds {} events", events_after.len())));
    let copy = dir.join("copy.db");
    let (conn, _) = read_copy(&connector(&db.url)).await.unwrap();
    conn.execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
        .unwrap();
    let sqlite = run(bin().args(["audit", "list", "--json", "--db"]).arg(&copy));
    let pg = run(bin().args(["audit", "list", "--json", "--db", &db.url]));
    assert!(pg.status.success(), "{}", stderr_of(&pg));
    assert_eq!(stdout_of(&pg), stdout_of(&sqlite));
    assert_eq!(stdout_of(&pg).lines().count(), events_after.len());
    let sv = run(bin().args(["audit", "verify", "--db"]).arg(&copy));
    assert_eq!(sv.status.code(), Some(0), "{}", stderr_of(&sv));
    // The same log, events and head; PostgreSQL adds its stored checkpoints.
    let (pg_line, sqlite_line) = (stdout_of(&o), stdout_of(&sv));
    assert!(
        pg_line.starts_with(sqlite_line.trim_end()),
        "{pg_line:?} vs {sqlite_line:?}"
    );
    assert!(pg_line.contains("checkpoint(s) match"), "{pg_line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serving_replica_refuses_a_trail_rewritten_under_it_and_so_does_a_restart() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let Some(db) = PgDb::create("pg_trail_server_tamper").await else {
        return;
    };
    let seeded = seeded_db(&crate::support::small_seed());
    let dir = seeded.dir.path();
    let audit_db = std::path::PathBuf::from(&db.url);
    let config = write_test_config(dir, 200);
    let start = || ServerProcess::start_custom(&config, &seeded.path, &audit_db, dir, &[], |_| {});
    let server = start();
    let receipt = good_export_eventually(&server.url(), &seeded.case_ids[0]).await;
    // The call's end on record first: the writer is idle, so the rewritten
    // event is its head. (An edit racing an append can land just behind
    // the head; the next checkpoint finds that one.)
    eventually(
        "the export's end on record",
        Duration::from_secs(10),
        || async {
            let (events, _) = read_trail(&db.url).await;
            let done = events.iter().any(|(_, e, _)| {
                e.kind == Kind::Completed
                    && e.export_id.as_deref() == Some(receipt.export_id.as_str())
            });
            if done {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .await;
    // The last event's contents rewritten (its hash left as it was).
    tamper(
        &db,
        "UPDATE audit_events SET purpose = 'rewritten' \
         WHERE seq = (SELECT max(seq) FROM audit_events)",
    )
    .await;
    let err = crate::support::export_checked(&server.url(), &seeded.case_ids[1])
        .await
        .expect_err("no export over a rewritten trail");
    assert!(
        err.to_string()
            .contains("the audit store cannot record this export, so nothing was released"),
        "{err}"
    );
    crate::support::wait_export_health(
        &server.url(),
        ServingStatus::NotServing,
        Duration::from_secs(10),
    )
    .await;
    assert!(
        server.log_text().contains("the audit trail differs"),
        "{}",
        server.log_text()
    );
    drop(server);
    let restarted = start();
    crate::support::wait_export_health(
        &restarted.url(),
        ServingStatus::NotServing,
        Duration::from_secs(10),
    )
    .await;
    crate::support::export_checked(&restarted.url(), &seeded.case_ids[1])
        .await
        .expect_err("no export after a restart either");
}
