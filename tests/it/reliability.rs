//! Faults and load against a real server on 127.0.0.1:0: clients that leave
//! at each point of a stream, a source held by writers, a source that goes
//! missing or corrupt, slow readers, shutdown with exports in flight, a
//! burst of calls and connections, the memory budget, the process limits
//! of the real binary, clients that stall or never speak (send timeouts,
//! export deadlines, per-principal caps, handshake timeouts, the
//! connection cap), and exports cut by shutdown before their header.
//!
//! Every wait is bounded; no assertion is about how long something takes.
//! Orderings are proven by states that cannot be reached otherwise (a
//! stalled reader, a held lock), never by sleeping.

use crate::support::*;
use case_export::audit::{Event, Kind, verify_log};
use case_export::client::{ClientError, Receipt};
use case_export::pb::export_case_response::Message as Msg;
use case_export::pb::{ExportCaseRequest, ExportCaseResponse};
use case_export::seal::{SecretKey, open_reader};
use case_export::seed::SeedOptions;
use case_export::server::Config;
use case_export::snapshot::source_cache_bytes;
use rusqlite::Connection;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tonic::{Code, Status, Streaming};
use tonic_health::pb::health_check_response::ServingStatus;

const PURPOSE: &str = "TICKET-5150: reliability test";
/// Against hangs only: nothing here is expected to take more than a few
/// seconds, except a shutdown that may wait out grace + 5 s.
const BOUND: Duration = Duration::from_secs(30);
/// How long a state that must come (a freed slot, an audit event, a health
/// status) may take to show.
const DEADLINE: Duration = Duration::from_secs(10);
/// Granularity of the server's memory budget (src/server/budget.rs).
const BUDGET_UNIT: u64 = 64 * 1024;

fn with_metrics(c: &mut Config) {
    c.metrics_listen = Some(free_loopback_addr());
}

fn metrics_addr(server: &TestServer) -> SocketAddr {
    server.config.metrics_listen.expect("metrics_listen is set")
}

/// One sample (summed over matching label sets; 0 when absent). The
/// listener starts with the server task, so the first scrape may retry.
async fn metric(server: &TestServer, name: &str, labels: &[(&str, &str)]) -> f64 {
    let addr = metrics_addr(server);
    let text = eventually("a metrics scrape", DEADLINE, || scrape_metrics(addr)).await;
    metric_value(&text, name, labels).unwrap_or(0.0)
}

/// `exports_finished{outcome="cancelled"}`, all codes.
async fn cancelled_count(server: &TestServer) -> f64 {
    metric(
        server,
        "case_export_exports_finished_total",
        &[("outcome", "cancelled")],
    )
    .await
}

/// Bytes the memory budget says running exports hold now.
async fn bytes_held(server: &TestServer) -> u64 {
    metric(server, "case_export_snapshot_bytes_held", &[]).await as u64
}

/// What an export holds of the budget once its snapshot is built: its
/// snapshot and its stream buffers, in whole budget units.
fn held_for(plaintext: u64, config: &Config) -> u64 {
    (plaintext + config.stream_buffer_bytes()).div_ceil(BUDGET_UNIT) * BUDGET_UNIT
}

/// Status messages say what to do, never where the data lives.
#[track_caller]
fn assert_no_path(status: &Status, paths: &[&Path]) {
    let msg = status.message();
    for p in paths {
        assert!(
            !msg.contains(&*p.to_string_lossy()),
            "message reveals {p:?}: {msg:?}"
        );
    }
    for needle in ["/tmp", ".db", "file:", "select ", "sqlite_"] {
        assert!(
            !msg.to_ascii_lowercase().contains(needle),
            "message contains {needle:?}: {msg:?}"
        );
    }
}

/// Waits until the call of `export_id` has a terminal event and returns
/// the call's events.
async fn call_events(audit_db: &Path, export_id: &str) -> Vec<Event> {
    eventually("the call's terminal audit event", DEADLINE, || async {
        let evs = events_of_export(&audit_events(audit_db), export_id);
        if evs.iter().any(|e| e.kind.is_terminal()) {
            Ok(evs)
        } else {
            Err(format!("events so far: {:?}", kinds(&evs)))
        }
    })
    .await
}

/// Checks the whole trail: chain intact, and every call ended (a call's
/// end is queued as the call ends and written just after, so wait for it).
async fn assert_trail_intact(audit_db: &Path) {
    eventually("every call ended on record", DEADLINE, || async {
        let conn = case_export::audit::open_log_read_only(audit_db).map_err(|e| e.to_string())?;
        let v = verify_log(&conn, &[], None).map_err(|e| e.to_string())?;
        assert!(v.chain_ok(), "chain problems: {:?}", v.problems);
        if v.unterminated.is_empty() {
            Ok(())
        } else {
            Err(format!("calls without an end: {:?}", v.unterminated))
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// 1. Clients that leave: after the header, mid-stream, just before the key.

#[derive(Debug, Clone, Copy)]
enum LeaveAt {
    AfterHeader,
    MidStream,
    BeforeKey,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_leaving_at_any_point_frees_the_slot_and_is_recorded_cancelled() {
    // Counts cancelled calls of the process-wide registry: no other test's
    // server may cancel one meanwhile.
    let server = start_server_with(&big_seed(), |c| {
        stall_prone(c);
        c.max_in_flight = 1;
        with_metrics(c);
    })
    .await;
    let audit_db = server.audit_db().to_path_buf();
    let case_id = server.case_ids[0].clone();
    let cancelled_before = cancelled_count(&server).await;

    for (n, leave) in [LeaveAt::AfterHeader, LeaveAt::MidStream, LeaveAt::BeforeKey]
        .into_iter()
        .enumerate()
    {
        let mut raw = raw_client_small_window(&server.url).await;
        let mut stream = raw
            .export_case(authed(request(&case_id, PURPOSE)))
            .await
            .expect("export starts")
            .into_inner();
        let header = read_header(&mut stream).await;
        assert!(header.chunk_count > 60, "case too small to stall");
        let chunks = match leave {
            LeaveAt::AfterHeader => 0,
            LeaveAt::MidStream => 5,
            LeaveAt::BeforeKey => header.chunk_count,
        };
        // Just before the key: holding the audit database's write lock
        // stops the producer at the custody record, after every chunk and
        // before the key. The producer runs at most the channel and the
        // 64 KiB window ahead of the reader (about 16 sealed 4 KiB chunks),
        // so the lock is taken 40 chunks before the end: the record cannot
        // have been written yet, and the lock is held for the last chunks
        // only, well inside the writer's 5 s busy timeout even on a loaded
        // machine.
        let lock_at = match leave {
            LeaveAt::BeforeKey => header.chunk_count - 40,
            _ => u64::MAX,
        };
        let mut audit_lock = None;
        for i in 0..chunks {
            if i == lock_at {
                let c = Connection::open(&audit_db).expect("open audit db");
                c.execute_batch("BEGIN IMMEDIATE")
                    .expect("audit write lock");
                audit_lock = Some(c);
            }
            match next_message(&mut stream).await {
                Some(Msg::Chunk(c)) => assert_eq!(c.index, i),
                other => panic!("expected chunk {i}, got {other:?}"),
            }
        }
        if audit_lock.is_some() {
            // Leave only once the custody record waits at the locked store:
            // a client gone before the producer reaches it gets no record.
            eventually("the custody record queued", DEADLINE, || async {
                match metric(&server, "case_export_audit_queued_bytes", &[]).await {
                    q if q > 0.0 => Ok(()),
                    q => Err(format!("queued = {q}")),
                }
            })
            .await;
        }
        drop(stream);
        drop(raw);
        // The server saw the client go (its end is counted at once, before
        // it is written): only then may the producer go on.
        eventually("the cancel is counted", DEADLINE, || async {
            let now = cancelled_count(&server).await;
            if now >= cancelled_before + (n + 1) as f64 {
                Ok(())
            } else {
                Err(format!("cancelled = {now}"))
            }
        })
        .await;
        if let Some(c) = audit_lock {
            c.execute_batch("ROLLBACK").expect("release the audit lock");
        }

        let evs = call_events(&audit_db, &header.export_id).await;
        let want: &[Kind] = match leave {
            LeaveAt::AfterHeader | LeaveAt::MidStream => {
                &[Kind::Attempt, Kind::Started, Kind::Cancelled]
            }
            // The custody record was committed; the key never left.
            LeaveAt::BeforeKey => &[Kind::Attempt, Kind::Started, Kind::Sealed, Kind::Cancelled],
        };
        assert_eq!(kinds(&evs), want, "{leave:?}: {evs:#?}");
        let end = evs.last().expect("terminal event");
        assert_eq!(end.code.as_deref(), Some("CANCELLED"), "{leave:?}");
        assert_eq!(end.case_id.as_deref(), Some(case_id.as_str()));

        // The slot is free again and the next call is served normally.
        good_export_eventually(&server.url, &server.case_ids[1]).await;
    }
    // Every call ended on record, and nothing more was written for the
    // cancelled ones: only the three good exports completed.
    assert_trail_intact(&audit_db).await;
    let all = audit_events(&audit_db);
    assert_eq!(
        all.iter().filter(|e| e.kind == Kind::Completed).count(),
        3,
        "only the three good exports completed"
    );
    assert!(cancelled_count(&server).await >= cancelled_before + 3.0);
}

// ---------------------------------------------------------------------------
// 2. A source held by writers.

/// Rows of `transactions` of a case, as committed (a fresh connection).
fn committed_transactions(db: &Path, case_id: &str) -> u64 {
    open_ro(db)
        .query_row(
            "SELECT count(*) FROM transactions WHERE case_id = ?1",
            [case_id],
            |r| r.get::<_, i64>(0),
        )
        .expect("count") as u64
}

fn exported_transactions(receipt: &Receipt) -> u64 {
    receipt
        .row_counts
        .iter()
        .find(|(t, _)| t == "transactions")
        .map(|(_, n)| *n)
        .expect("transactions in the row counts")
}

fn insert_transaction(conn: &Connection, case_id: &str) {
    conn.execute(
        "INSERT INTO transactions (case_id, amount, currency, occurred_at, counterparty, direction) \
         VALUES (?1, 4242, 'EUR', '2025-01-01T00:00:00Z', 'uncommitted counterparty', 'in')",
        [case_id],
    )
    .expect("insert a transaction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_source_with_a_long_write_transaction_exports_the_committed_state() {
    let db = seeded_db(&small_seed());
    let mode: String = open_ro(&db.path)
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal mode");
    assert_eq!(mode, "wal", "the seeded database is in WAL mode");
    let path = db.path.clone();
    let config = test_config(db.path.clone(), db.dir.path());
    let server = spawn_server(config, db.dir, db.case_ids).await;
    let case_id = server.case_ids[0].clone();
    let committed = committed_transactions(&path, &case_id);

    // Another connection opens a write transaction and keeps it open.
    let writer = Connection::open(&path).expect("writer");
    writer
        .execute_batch("BEGIN IMMEDIATE")
        .expect("write transaction");
    insert_transaction(&writer, &case_id);
    insert_transaction(&writer, &case_id);

    // Exports go on, and see the last committed state (twice, and another
    // case too, all while the transaction stays open).
    for _ in 0..2 {
        let r = export_checked(&server.url, &case_id)
            .await
            .expect("export during a write transaction");
        assert_eq!(exported_transactions(&r), committed);
    }
    export_checked(&server.url, &server.case_ids[1])
        .await
        .expect("another case during the write transaction");

    writer.execute_batch("COMMIT").expect("commit");
    let r = export_checked(&server.url, &case_id)
        .await
        .expect("export after the commit");
    assert_eq!(exported_transactions(&r), committed + 2);
    assert_eq!(committed_transactions(&path, &case_id), committed + 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_journal_source_locked_by_a_writer_is_unavailable_until_released() {
    let db = seeded_db(&small_seed());
    {
        let c = Connection::open(&db.path).expect("open");
        let mode: String = c
            .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
            .expect("rollback journal");
        assert_eq!(mode, "delete");
    }
    let path = db.path.clone();
    let mut config = test_config(db.path.clone(), db.dir.path());
    config.busy_timeout_ms = 300;
    config.max_in_flight = 1;
    let server = spawn_server(config, db.dir, db.case_ids).await;
    let case_id = server.case_ids[0].clone();
    export_checked(&server.url, &case_id)
        .await
        .expect("export before the lock");

    let writer = Connection::open(&path).expect("writer");
    writer
        .execute_batch("BEGIN EXCLUSIVE")
        .expect("exclusive lock");
    insert_transaction(&writer, &case_id);
    // Twice: with one slot, a refusal that kept its slot would turn the
    // second into RESOURCE_EXHAUSTED.
    for _ in 0..2 {
        let s = within(
            "a refused export",
            BOUND,
            refused(&server.url, request(&case_id, PURPOSE)),
        )
        .await;
        assert_eq!(s.code(), Code::Unavailable, "{s:?}");
        assert!(s.message().contains("locked"), "{s:?}");
        assert!(s.message().contains("retry later"), "{s:?}");
        assert_no_path(&s, &[&path, server.dir()]);
    }

    writer.execute_batch("ROLLBACK").expect("release the lock");
    let r = good_export_eventually(&server.url, &case_id).await;
    assert_eq!(
        exported_transactions(&r),
        committed_transactions(&path, &case_id)
    );
}

// ---------------------------------------------------------------------------
// 3. A source that goes missing, is not SQLite, or is corrupt.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_foreign_and_corrupt_sources_fail_cleanly_and_health_follows() {
    let server = start_server(|c| c.max_in_flight = 1).await;
    let db = server.case_db().to_path_buf();
    let aside = server.dir().join("pristine.db");
    let paths = [db.as_path(), aside.as_path(), server.dir()];
    let case_id = server.case_ids[0].clone();
    wait_export_health(&server.url, ServingStatus::Serving, DEADLINE).await;

    // Missing: UNAVAILABLE, and health NOT_SERVING while it is.
    std::fs::rename(&db, &aside).expect("move the database away");
    for _ in 0..2 {
        let s = refused(&server.url, request(&case_id, PURPOSE)).await;
        assert_eq!(s.code(), Code::Unavailable, "{s:?}");
        assert_eq!(
            s.message(),
            "case database unavailable: database file not found"
        );
        assert_no_path(&s, &paths);
    }
    wait_export_health(&server.url, ServingStatus::NotServing, DEADLINE).await;

    // Not a SQLite file.
    let mut noise = vec![0u8; 32 * 1024];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut noise);
    std::fs::write(&db, &noise).expect("write noise");
    let s = refused(&server.url, request(&case_id, PURPOSE)).await;
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert_eq!(
        s.message(),
        "case database unavailable: not a SQLite database"
    );
    assert_no_path(&s, &paths);
    wait_export_health(&server.url, ServingStatus::NotServing, DEADLINE).await;

    // Corrupt, out of every case's scope: bytes 8192..16384 are pages 3
    // and 4, the indexes of the excluded `users` table. Exports do not read
    // them, so every case still exports, and verifies.
    let pristine = std::fs::read(&aside).expect("read the database");
    assert!(pristine.len() > 128 * 1024, "database too small to corrupt");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(5150);
    let mut bytes = pristine.clone();
    rand::RngCore::fill_bytes(&mut rng, &mut bytes[8192..16384]);
    std::fs::write(&db, &bytes).expect("write the corrupt copy");
    for case_id in &server.case_ids {
        good_export_eventually(&server.url, case_id).await;
    }

    // Corrupt in the middle: the middle half of the file overwritten,
    // pages of the case tables among them. Each export is refused
    // cleanly, or (a case whose pages all survived) exports and verifies.
    let mut bytes = pristine.clone();
    let (from, to) = (bytes.len() / 4, 3 * bytes.len() / 4);
    rand::RngCore::fill_bytes(&mut rng, &mut bytes[from..to]);
    std::fs::write(&db, &bytes).expect("write the corrupt copy");
    let mut refused_ids = Vec::new();
    for case_id in &server.case_ids {
        match export_checked(&server.url, case_id).await {
            Ok(_) => {}
            Err(ClientError::Unavailable(m)) => {
                assert_eq!(m, "case database unavailable: database file is corrupt");
                refused_ids.push(case_id.clone());
            }
            Err(e) => panic!("export of {case_id} from a corrupt source: {e:?}"),
        }
    }
    let first = refused_ids.first().expect("the corruption reached no case");
    let s = refused(&server.url, request(first, PURPOSE)).await;
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert_no_path(&s, &paths);

    // Restored: SERVING again and a good export.
    std::fs::rename(&aside, &db).expect("restore the database");
    wait_export_health(&server.url, ServingStatus::Serving, DEADLINE).await;
    good_export_eventually(&server.url, &case_id).await;
    assert_trail_intact(server.audit_db()).await;
}

// ---------------------------------------------------------------------------
// 4. A slow reader does not hold up others, and memory stays bounded.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_does_not_hold_up_another_export_and_memory_stays_bounded() {
    let server = start_server_with(&big_seed(), |c| {
        c.chunk_size = 4096;
        c.channel_depth = 2;
        c.seal_workers = 1;
        c.max_in_flight = 4;
        with_metrics(c);
    })
    .await;
    let config = server.config.clone();
    assert_eq!(bytes_held(&server).await, 0);

    // The slow reader: one message, then a pause, again and again; it
    // stops at the halfway mark until the test lets it go on.
    let mut raw = raw_client_small_window(&server.url).await;
    let mut slow = raw
        .export_case(authed(request(&server.case_ids[0], PURPOSE)))
        .await
        .expect("slow export starts")
        .into_inner();
    let slow_header = read_header(&mut slow).await;
    let total = slow_header.chunk_count;
    assert!(total > 60, "case too small: {total} chunks");
    let read = Arc::new(AtomicU64::new(0));
    let (go_on_tx, go_on_rx) = tokio::sync::oneshot::channel::<()>();
    let slow_task = {
        let read = read.clone();
        tokio::spawn(async move {
            let mut go_on = Some(go_on_rx);
            let mut enc = Vec::new();
            let key = loop {
                if read.load(Ordering::SeqCst) == total / 2
                    && let Some(rx) = go_on.take()
                {
                    let _ = rx.await;
                }
                match next_message(&mut slow).await {
                    Some(Msg::Chunk(c)) => {
                        enc.extend_from_slice(c.token.as_bytes());
                        enc.push(b'\n');
                        read.fetch_add(1, Ordering::SeqCst);
                    }
                    Some(Msg::Key(k)) => break k,
                    other => panic!("unexpected message {other:?}"),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            assert!(next_message(&mut slow).await.is_none());
            drop(raw);
            (enc, key)
        })
    };

    // Meanwhile a whole export of another case completes: the slow one
    // has not read all its chunks (it cannot: it waits for us).
    let fast = within(
        "the fast export",
        BOUND,
        export_checked(&server.url, &server.case_ids[1]),
    )
    .await
    .expect("the fast export completes while the slow one is under way");
    let at_fast_end = read.load(Ordering::SeqCst);
    assert!(
        at_fast_end < total,
        "the slow export had read {at_fast_end} of {total} chunks"
    );
    assert!(!slow_task.is_finished());

    // The budget now holds the slow export's snapshot and stream buffers,
    // and nothing of the finished one.
    let want = held_for(slow_header.plaintext_size, &config);
    eventually("the budget holds one export", DEADLINE, || async {
        match bytes_held(&server).await {
            n if n == want => Ok(()),
            n => Err(format!("{n} bytes held, {want} expected")),
        }
    })
    .await;
    assert!(
        want < slow_header.plaintext_size + fast.plaintext_size + 2 * BUDGET_UNIT,
        "stream buffers are small next to the snapshot"
    );

    let _ = go_on_tx.send(());
    let (enc, key) = within("the slow export", BOUND, slow_task)
        .await
        .expect("slow reader task");
    let key = SecretKey::from_fernet_key(&key.fernet_key).expect("key");
    let opened =
        open_reader(BufReader::new(&enc[..]), &key, READ_LIMIT).expect("slow export opens");
    assert_eq!(opened.chunks, total);
    assert_eq!(opened.plaintext.len() as u64, slow_header.plaintext_size);
    eventually("the budget is empty", DEADLINE, || async {
        match bytes_held(&server).await {
            0 => Ok(()),
            n => Err(format!("{n} bytes held")),
        }
    })
    .await;
}

// ---------------------------------------------------------------------------
// 5. Graceful shutdown with ten exports in flight.

/// How a slow reader's stream ended.
#[derive(Debug)]
struct Ending {
    export_id: String,
    chunks: u64,
    key: bool,
    status: Option<Status>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_ten_exports_in_flight_ends_each_on_record() {
    let mut server = start_server_with(&big_seed(), |c| {
        stall_prone(c);
        c.max_in_flight = 10;
        c.max_in_flight_per_principal = 10;
        c.shutdown_grace_secs = 1;
    })
    .await;
    let audit_db = server.audit_db().to_path_buf();
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel::<()>(10);
    let mut readers = tokio::task::JoinSet::new();
    for i in 0..10 {
        let url = server.url.clone();
        let case_id = server.case_ids[i % server.case_ids.len()].clone();
        let started = started_tx.clone();
        readers.spawn(async move {
            let mut raw = raw_client_small_window(&url).await;
            let mut stream = raw
                .export_case(authed(request(&case_id, PURPOSE)))
                .await
                .expect("export starts")
                .into_inner();
            let header = read_header(&mut stream).await;
            let _ = started.send(()).await;
            let mut end = Ending {
                export_id: header.export_id,
                chunks: 0,
                key: false,
                status: None,
            };
            loop {
                match stream.message().await {
                    Ok(Some(m)) => match m.message {
                        Some(Msg::Chunk(_)) => end.chunks += 1,
                        Some(Msg::Key(_)) => end.key = true,
                        other => panic!("unexpected message {other:?}"),
                    },
                    Ok(None) => break,
                    Err(s) => {
                        end.status = Some(s);
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            end
        });
    }
    drop(started_tx);
    for _ in 0..10 {
        within("ten exports under way", BOUND, started_rx.recv())
            .await
            .expect("a reader started");
    }

    server.trigger_shutdown();
    within("the server after shutdown", BOUND, &mut server.join)
        .await
        .expect("server task")
        .expect("serve_on returns Ok");
    let mut endings = Vec::new();
    while let Some(r) = within("the readers", BOUND, readers.join_next()).await {
        endings.push(r.expect("reader task"));
    }
    assert_eq!(endings.len(), 10);

    // The server has stopped, so its trail is complete.
    let all = audit_events(&audit_db);
    for end in &endings {
        let evs = events_of_export(&all, &end.export_id);
        let terminal: Vec<&Event> = evs.iter().filter(|e| e.kind.is_terminal()).collect();
        assert_eq!(terminal.len(), 1, "{end:?}: {evs:#?}");
        let t = terminal[0];
        if end.key {
            // Read fast enough to finish within the grace period.
            assert_eq!(t.kind, Kind::Completed, "{end:?}");
            assert!(end.status.is_none(), "{end:?}");
        } else {
            // A cut export never looks complete: not in the trail, and
            // not to the client (an error status, not a clean end).
            assert_eq!(
                (t.kind, t.code.as_deref()),
                (Kind::Failed, Some("UNAVAILABLE")),
                "cut export {end:?} recorded as {:?} {:?}",
                t.kind,
                t.code
            );
            let s = end
                .status
                .as_ref()
                .unwrap_or_else(|| panic!("stream ended cleanly without a key: {end:?}"));
            assert_eq!(s.code(), Code::Unavailable, "{end:?}");
            assert!(s.message().contains("shutting down"), "{s:?}");
        }
    }
    assert!(
        endings.iter().any(|e| !e.key),
        "no export was cut by the shutdown: the test proved nothing"
    );
    assert_trail_intact(&audit_db).await;
}

// ---------------------------------------------------------------------------
// 6. Load: 200 concurrent exports, then 1,000 connections.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_exports_end_ok_or_busy_and_a_connection_burst_is_survived() {
    let server = start_server(|c| {
        c.max_in_flight = 4;
        c.chunk_size = 64 * 1024;
        c.max_snapshot_bytes = 1 << 20;
        // Room for two exports' worst case at once, not four.
        c.memory_budget_bytes = 2
            * ((1 << 20) + c.stream_buffer_bytes() + source_cache_bytes(c.max_snapshot_bytes))
            + (1 << 20);
        c.budget_wait_ms = 200;
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(client(&server.url).await);
    }
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..200 {
        let mut c = clients[i % clients.len()].clone();
        let case_id = server.case_ids[i % server.case_ids.len()].clone();
        calls.spawn(async move {
            let mut enc = Vec::new();
            match c.export_case(&case_id, PURPOSE, &mut enc, |_, _| {}).await {
                Ok(receipt) => {
                    open_export(&enc, &receipt);
                    true
                }
                Err(ClientError::Busy(m)) => {
                    assert!(
                        m.contains("retry later"),
                        "busy without advice to retry: {m}"
                    );
                    false
                }
                Err(e) => panic!("export {i} failed with neither OK nor busy: {e}"),
            }
        });
    }
    let (mut ok, mut busy) = (0, 0);
    while let Some(r) = within("200 exports", BOUND, calls.join_next()).await {
        if r.expect("call task") {
            ok += 1;
        } else {
            busy += 1;
        }
    }
    assert_eq!(ok + busy, 200);
    assert!(ok >= 1, "no export succeeded under load");

    // The same 200 again, each retrying after a refusal (with a jittered
    // pause) until it gets its export: all 200 complete and verify, four
    // at a time, within the budget.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..200 {
        let mut c = clients[i % clients.len()].clone();
        let case_id = server.case_ids[i % server.case_ids.len()].clone();
        calls.spawn(async move {
            let mut refusals = 0u32;
            loop {
                let mut enc = Vec::new();
                match c.export_case(&case_id, PURPOSE, &mut enc, |_, _| {}).await {
                    Ok(receipt) => {
                        open_export(&enc, &receipt);
                        return refusals;
                    }
                    Err(ClientError::Busy(_)) => refusals += 1,
                    Err(e) => panic!("export {i} failed with neither OK nor busy: {e}"),
                }
                let pause = 50 + rand::Rng::gen_range(&mut rand::thread_rng(), 0..100);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        });
    }
    let mut done = 0;
    while let Some(r) = within("200 exports, retried", BOUND, calls.join_next()).await {
        r.expect("call task");
        done += 1;
    }
    assert_eq!(done, 200);
    drop(clients);

    // 1,000 connections in batches of 100: each sends the HTTP/2 preface
    // and an empty SETTINGS frame, then closes.
    let addr = server.addr;
    for _batch in 0..10 {
        let mut conns = tokio::task::JoinSet::new();
        for _ in 0..100 {
            conns.spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
                    .await
                    .expect("preface");
            });
        }
        while let Some(r) = within("a batch of connections", BOUND, conns.join_next()).await {
            r.expect("connection task");
        }
    }
    wait_export_health(&server.url, ServingStatus::Serving, DEADLINE).await;
    good_export_eventually(&server.url, &server.case_ids[0]).await;
    assert_trail_intact(server.audit_db()).await;
}

// ---------------------------------------------------------------------------
// 7. The memory budget: a second export waits, then runs or is refused.

/// A budget just above one export's worst case: a second export cannot
/// reserve its worst case while the first holds its snapshot.
fn one_export_budget(c: &mut Config, wait_ms: u64) {
    stall_prone(c);
    c.max_in_flight = 4;
    c.max_snapshot_bytes = 2 << 20;
    c.memory_budget_bytes = c.max_snapshot_bytes
        + c.stream_buffer_bytes()
        + source_cache_bytes(c.max_snapshot_bytes)
        + BUDGET_UNIT;
    c.budget_wait_ms = wait_ms;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_export_over_the_budget_is_refused_after_the_wait() {
    let server = start_server_with(&big_seed(), |c| one_export_budget(c, 300)).await;
    let mut raw = raw_client_small_window(&server.url).await;
    let mut held = raw
        .export_case(authed(request(&server.case_ids[0], PURPOSE)))
        .await
        .expect("first export starts")
        .into_inner();
    let header = read_header(&mut held).await;
    assert!(header.plaintext_size < server.config.max_snapshot_bytes);

    for case_id in &server.case_ids[1..3] {
        let s = within(
            "the second export",
            BOUND,
            refused(&server.url, request(case_id, PURPOSE)),
        )
        .await;
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert_eq!(
            s.message(),
            "the server's memory budget for exports is in use; retry later"
        );
    }
    drop(held);
    drop(raw);
    good_export_eventually(&server.url, &server.case_ids[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_export_over_the_budget_waits_and_runs_when_the_first_ends() {
    let server = start_server_with(&big_seed(), |c| one_export_budget(c, 20_000)).await;
    let audit_db = server.audit_db().to_path_buf();
    let mut raw = raw_client_small_window(&server.url).await;
    let mut held = raw
        .export_case(authed(request(&server.case_ids[0], PURPOSE)))
        .await
        .expect("first export starts")
        .into_inner();
    let header = read_header(&mut held).await;

    let second_case = server.case_ids[1].clone();
    let url = server.url.clone();
    let second = tokio::spawn(async move { export_checked(&url, &second_case).await });
    // The second call is past its checks (its `started` event is on
    // record) and waits for the budget, which the stalled first export
    // holds: it cannot have finished.
    eventually("the second export started", DEADLINE, || async {
        let started = audit_events(&audit_db)
            .into_iter()
            .any(|e| e.kind == Kind::Started && e.case_id.as_deref() == Some(&server.case_ids[1]));
        if started {
            Ok(())
        } else {
            Err("no started event yet".into())
        }
    })
    .await;
    assert!(
        !second.is_finished(),
        "the second export did not wait for the budget"
    );

    // The first reads on to its key; then the second runs.
    let mut chunks = 0;
    let key_seen = loop {
        match next_message(&mut held).await {
            Some(Msg::Chunk(_)) => chunks += 1,
            Some(Msg::Key(_)) => break true,
            other => panic!("unexpected message {other:?}"),
        }
    };
    assert!(key_seen && chunks == header.chunk_count);
    let receipt = within("the second export", BOUND, second)
        .await
        .expect("task")
        .expect("the second export succeeds once the first ended");
    assert_eq!(receipt.case_id, server.case_ids[1]);
}

// ---------------------------------------------------------------------------
// 8. The real binary runs without core dumps.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serve_disables_core_dumps() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Started once it printed `listening on ADDR`.
    let server = ServerProcess::start_custom(
        &write_test_config(dir.path(), 0),
        &dir.path().join("cases.db"),
        &dir.path().join("audit.db"),
        dir.path(),
        &[],
        |cmd| {
            cmd.env("RUST_LOG", "error").current_dir(dir.path());
        },
    );
    let pid = server.pid();

    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap_or_else(|| panic!("no core limit in {limits}"));
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(
        &fields[4..6],
        ["0", "0"],
        "soft and hard core limits: {core:?}"
    );

    let status = server.terminate();
    assert!(status.success(), "{status:?}");
}

/// Asserts that process `pid` can write no core dump (soft and hard limit
/// 0) and, where the test can tell, that it is not dumpable: /proc/PID of a
/// non-dumpable process belongs to root, which shows only to a test that is
/// not root itself.
#[track_caller]
fn assert_hardened(pid: u32, what: &str) {
    use std::os::unix::fs::MetadataExt;
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap_or_else(|| panic!("no core limit in {limits}"));
    let fields: Vec<&str> = core.split_whitespace().collect();
    assert_eq!(
        &fields[4..6],
        ["0", "0"],
        "{what}: soft and hard core limits: {core:?}"
    );
    let me = std::fs::metadata("/proc/self").expect("/proc/self").uid();
    if me != 0 {
        let owner = std::fs::metadata(format!("/proc/{pid}"))
            .expect("/proc/PID")
            .uid();
        assert_eq!(
            owner, 0,
            "{what}: /proc/{pid} is not root's: still dumpable"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_export_disables_core_dumps() {
    use tokio::io::AsyncReadExt;
    // A listener that accepts and never answers holds the export after it
    // connected, which it does only once hardened.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let out = tempfile::tempdir().expect("out dir");
    let mut child = bin_async()
        .arg("export")
        .args([
            "--server",
            &url,
            "--case",
            "case-held",
            "--purpose",
            PURPOSE,
        ])
        .arg("--out")
        .arg(out.path())
        .env("CASE_EXPORT_TOKEN", TOKEN)
        .env("CASE_EXPORT_ON_BEHALF_OF", ANALYST)
        .spawn()
        .expect("spawn case-export export");
    let (mut sock, _) = within("the export connects", BOUND, listener.accept())
        .await
        .expect("accept");
    let mut preface = [0u8; 24];
    within("the HTTP/2 preface", BOUND, sock.read_exact(&mut preface))
        .await
        .expect("read preface");
    assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert_hardened(child.id().expect("running"), "export");
    child.start_kill().expect("kill export");
    within("export exits", BOUND, child.wait())
        .await
        .expect("wait");
    assert_eq!(dir_entries(out.path()), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_view_and_open_disable_core_dumps() {
    use std::os::unix::fs::OpenOptionsExt;
    use tokio::io::AsyncReadExt;
    let server = start_server(|_| {}).await;
    let dir = tempfile::tempdir().expect("dir");
    let receipt = client(&server.url)
        .await
        .export_to_dir(&server.case_ids[0], PURPOSE, dir.path(), |_, _| {})
        .await
        .expect("export");
    let enc = receipt.path.clone().expect("enc path");
    let key = receipt
        .key
        .as_ref()
        .expect("an export without recipients has its raw key")
        .expose_fernet_key();

    for cmd in ["view", "open"] {
        // The key comes through a FIFO: the command blocks opening it, after
        // hardening, until the test opens the other end.
        let fifo = dir.path().join(format!("{cmd}.key"));
        let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: mkfifo(3) with a NUL-terminated path and a plain mode.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
        let db = dir.path().join("case.db");
        let mut c = bin_async();
        c.arg(cmd).arg(&enc).arg("--key-file").arg(&fifo);
        if cmd == "open" {
            c.arg("--out").arg(&db);
        }
        let mut child = c.spawn().expect("spawn");
        // Opening the write end without blocking succeeds only once the
        // command waits at the read end.
        let mut writer = eventually(&format!("{cmd} opens its key file"), DEADLINE, || {
            let r = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&fifo)
                .map_err(|e| e.to_string());
            async move { r }
        })
        .await;
        assert_hardened(child.id().expect("running"), cmd);
        std::io::Write::write_all(&mut writer, format!("{}\n", key.as_str()).as_bytes())
            .expect("write the key");
        drop(writer);
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .expect("stdout")
            .read_to_string(&mut stdout)
            .await
            .expect("read stdout");
        let status = within(&format!("{cmd} exits"), BOUND, child.wait())
            .await
            .expect("wait");
        assert!(status.success(), "{cmd}: {status:?}, stdout {stdout:?}");
        assert!(stdout.contains(&receipt.export_id), "{cmd}: {stdout}");
    }
    assert!(dir.path().join("case.db").exists(), "open wrote its file");
}

// ---------------------------------------------------------------------------
// 9. Slow, stuck and idle clients cannot hold the service: send timeouts,
//    export deadlines, per-principal caps, handshake timeouts, the
//    connection cap, and the metrics listener's request-head timeout.

/// Bearer token of a second exporter principal, `batch`.
const BATCH_TOKEN: &str = "batch-exporter-token-0c4be2a9f1d7e35b";

fn batch_principal(max_in_flight: Option<usize>) -> case_export::server::PrincipalConfig {
    case_export::server::PrincipalConfig {
        max_in_flight,
        ..principal(
            "batch",
            Some(BATCH_TOKEN),
            &[case_export::server::Role::Exporter],
        )
    }
}

/// `authed` for the `batch` principal.
fn authed_batch<T>(message: T) -> tonic::Request<T> {
    with_creds(message, Some(BATCH_TOKEN), Some(ANALYST))
}

/// Starts an export on its own small-window connection and never reads:
/// the server's producer soon waits on the client.
async fn unread_export(
    url: &str,
    request: tonic::Request<ExportCaseRequest>,
) -> (
    case_export::pb::export_service_client::ExportServiceClient<tonic::transport::Channel>,
    Streaming<ExportCaseResponse>,
) {
    let mut raw = raw_client_small_window(url).await;
    let stream = raw
        .export_case(request)
        .await
        .expect("export starts")
        .into_inner();
    (raw, stream)
}

/// Reads a stream to its end: chunks read, whether a key came, and the
/// status it ended with (`None`: a clean end).
async fn read_to_end(stream: &mut Streaming<ExportCaseResponse>) -> (u64, bool, Option<Status>) {
    let (mut chunks, mut key) = (0, false);
    loop {
        match within("the rest of the stream", BOUND, stream.message()).await {
            Ok(Some(m)) => match m.message {
                Some(Msg::Chunk(_)) => chunks += 1,
                Some(Msg::Key(_)) => key = true,
                Some(Msg::Header(_)) => {}
                None => panic!("a message without its oneof"),
            },
            Ok(None) => return (chunks, key, None),
            Err(s) => return (chunks, key, Some(s)),
        }
    }
}

/// Waits for the terminal event of the only call that exported `case_id`
/// and returns that call's events.
async fn case_call_events(audit_db: &Path, case_id: &str) -> Vec<Event> {
    eventually("the call's terminal audit event", DEADLINE, || async {
        let all = audit_events(audit_db);
        let Some(rid) = all
            .iter()
            .find(|e| e.kind == Kind::Started && e.case_id.as_deref() == Some(case_id))
            .map(|e| e.request_id.clone())
        else {
            return Err("no started event yet".into());
        };
        let evs: Vec<Event> = all.into_iter().filter(|e| e.request_id == rid).collect();
        if evs.iter().any(|e| e.kind.is_terminal()) {
            Ok(evs)
        } else {
            Err(format!("events so far: {:?}", kinds(&evs)))
        }
    })
    .await
}

/// Checks a call ended on record as `failed DEADLINE_EXCEEDED` before any
/// custody record (so no key), for the reason named by `key`.
#[track_caller]
fn assert_deadline_end(evs: &[Event], key: &str) {
    assert_eq!(
        kinds(evs),
        [Kind::Attempt, Kind::Started, Kind::Failed],
        "{evs:#?}"
    );
    let end = evs.last().expect("terminal event");
    assert_eq!(end.code.as_deref(), Some("DEADLINE_EXCEEDED"));
    let reason = detail(end)["reason"].as_str().unwrap_or("").to_string();
    assert!(
        reason.contains(key),
        "reason {reason:?} does not name {key}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_reader_is_ended_by_the_send_timeout_and_gives_back_slot_and_memory() {
    let server = start_server_with(&big_seed(), |c| {
        stall_prone(c);
        // Room for many chunks between producer and network: they are
        // dropped when the export fails, not left for the client.
        c.channel_depth = 32;
        c.max_in_flight = 1;
        c.send_timeout_secs = 1;
        with_metrics(c);
    })
    .await;
    let audit_db = server.audit_db().to_path_buf();
    let stuck_case = server.case_ids[0].clone();
    let (raw, mut stuck) = unread_export(&server.url, authed(request(&stuck_case, PURPOSE))).await;

    // The call ends on record while its client still holds the stream.
    let evs = case_call_events(&audit_db, &stuck_case).await;
    assert_deadline_end(&evs, "send_timeout_secs");
    // Its slot and its memory are back: with one slot, another export runs.
    eventually("the budget is empty", DEADLINE, || async {
        match bytes_held(&server).await {
            0 => Ok(()),
            n => Err(format!("{n} bytes held")),
        }
    })
    .await;
    good_export_eventually(&server.url, &server.case_ids[1]).await;

    // Reading on, the client gets what was on the wire, then the status;
    // never the key.
    let (chunks, key, status) = read_to_end(&mut stuck).await;
    assert!(!key, "a stuck export delivered its key");
    let s = status.expect("the stream ends with an error status");
    assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
    assert!(s.message().contains("send_timeout_secs"), "{s:?}");
    // What the 64 KiB window held, not the 32 queued chunks as well.
    assert!(
        chunks < 32,
        "the queued chunks were not dropped: {chunks} read"
    );
    drop(stuck);
    drop(raw);
    // Its end is on record once: the client's leaving adds nothing.
    assert_trail_intact(&audit_db).await;
    let evs = case_call_events(&audit_db, &stuck_case).await;
    assert_eq!(evs.iter().filter(|e| e.kind.is_terminal()).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_deadline_and_a_shorter_grpc_timeout_end_a_stalled_export() {
    let server = start_server_with(&big_seed(), |c| {
        stall_prone(c);
        c.max_in_flight = 1;
        c.export_deadline_secs = 4;
        with_metrics(c);
    })
    .await;
    let audit_db = server.audit_db().to_path_buf();

    // The caller asks for less than the server allows: its deadline wins.
    let mut req = authed(request(&server.case_ids[0], PURPOSE));
    req.set_timeout(Duration::from_secs(2));
    let (raw, mut stuck) = unread_export(&server.url, req).await;
    let evs = case_call_events(&audit_db, &server.case_ids[0]).await;
    assert_deadline_end(&evs, "grpc-timeout");
    let (_, key, status) = read_to_end(&mut stuck).await;
    assert!(!key);
    assert_eq!(status.expect("error status").code(), Code::DeadlineExceeded);
    drop((stuck, raw));

    // Without one, the server's deadline ends it.
    let (raw, mut stuck) =
        unread_export(&server.url, authed(request(&server.case_ids[1], PURPOSE))).await;
    let evs = case_call_events(&audit_db, &server.case_ids[1]).await;
    assert_deadline_end(&evs, "export_deadline_secs");
    let (_, key, status) = read_to_end(&mut stuck).await;
    assert!(!key);
    let s = status.expect("error status");
    assert_eq!(s.code(), Code::DeadlineExceeded);
    assert!(s.message().contains("export_deadline_secs"), "{s:?}");
    drop((stuck, raw));

    eventually("the budget is empty", DEADLINE, || async {
        match bytes_held(&server).await {
            0 => Ok(()),
            n => Err(format!("{n} bytes held")),
        }
    })
    .await;
    good_export_eventually(&server.url, &server.case_ids[2]).await;
    assert_trail_intact(&audit_db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_principal_cannot_take_every_export_slot() {
    let server = start_server_with(&big_seed(), |c| {
        stall_prone(c);
        c.max_in_flight = 8;
        c.max_in_flight_per_principal = 2;
        c.principals.push(batch_principal(Some(1)));
    })
    .await;
    let ids = &server.case_ids;
    let per_principal = |s: &Status, name: &str, limit: usize| {
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(
            s.message().contains(&format!("principal \"{name}\"")),
            "{s:?}"
        );
        assert!(
            s.message().contains(&format!("its limit is {limit}")),
            "{s:?}"
        );
        assert!(s.message().contains("retry later"), "{s:?}");
    };

    // The default cap: two stalled exports, the third is refused.
    let a1 = unread_export(&server.url, authed(request(&ids[0], PURPOSE))).await;
    let _a2 = unread_export(&server.url, authed(request(&ids[1], PURPOSE))).await;
    let s = within(
        "a third export",
        BOUND,
        refused(&server.url, request(&ids[2], PURPOSE)),
    )
    .await;
    per_principal(&s, SERVICE, 2);

    // Another principal is not held up by it, up to its own cap of one.
    let mut enc = Vec::new();
    let mut batch_client = case_export::client::ExportClient::connect_with(
        &server.url,
        client_options(Some(BATCH_TOKEN), Some(ANALYST)),
    )
    .await
    .expect("connect");
    let receipt = batch_client
        .export_case(&ids[3], PURPOSE, &mut enc, |_, _| {})
        .await
        .expect("the other principal exports while the first is at its cap");
    open_export(&enc, &receipt);
    let _b1 = unread_export(&server.url, authed_batch(request(&ids[3], PURPOSE))).await;
    let s = match raw_client(&server.url)
        .await
        .export_case(authed_batch(request(&ids[2], PURPOSE)))
        .await
    {
        Ok(_) => panic!("a second export of `batch` was accepted"),
        Err(s) => s,
    };
    per_principal(&s, "batch", 1);

    // A slot given back is the principal's again.
    drop(a1);
    good_export_eventually(&server.url, &ids[2]).await;
}

/// Reads until the server closes the socket: it must send nothing first
/// (a closed connection reads as its end, or as a reset).
async fn assert_closed_without_answer(what: &str, mut s: tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    match within(what, BOUND, s.read_to_end(&mut got)).await {
        Ok(_) => assert!(got.is_empty(), "{what}: the server answered {got:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{what}: {e}"),
    }
}

async fn connect(addr: SocketAddr) -> tokio::net::TcpStream {
    tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
}

/// The HTTP/2 client preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

async fn rejected(server: &TestServer, listener: &str, reason: &str) -> f64 {
    metric(
        server,
        "case_export_connections_rejected_total",
        &[("listener", listener), ("reason", reason)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_finish_the_handshake_are_closed() {
    use tokio::io::AsyncWriteExt;
    // Counts rejected connections of the process-wide registry.
    let server = start_server(|c| {
        c.handshake_timeout_secs = 1;
        c.health_listen = Some(free_loopback_addr());
        with_metrics(c);
    })
    .await;
    let health = server.config.health_listen.expect("health listener");
    wait_export_health(&server.url, ServingStatus::Serving, DEADLINE).await;
    let before = rejected(&server, "grpc", "handshake_timeout").await;

    let silent = connect(server.addr).await;
    let mut half = connect(server.addr).await;
    half.write_all(&PREFACE[..10])
        .await
        .expect("half a preface");
    let silent_health = connect(health).await;
    assert_closed_without_answer("a silent socket", silent).await;
    assert_closed_without_answer("half a preface", half).await;
    assert_closed_without_answer("a silent health socket", silent_health).await;
    let after = rejected(&server, "grpc", "handshake_timeout").await;
    assert!(after >= before + 2.0, "{before} -> {after}");

    // The server went on serving throughout.
    good_export_eventually(&server.url, &server.case_ids[0]).await;
    wait_export_health(
        &format!("http://{health}"),
        ServingStatus::Serving,
        DEADLINE,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sockets_that_never_finish_tls_or_http2_are_closed() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
        .expect("self-signed certificate");
    let cert_pem = cert.cert.pem();
    let (cert_path, key_path) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert_path, &cert_pem).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    let server = start_server(|c| {
        c.handshake_timeout_secs = 1;
        c.tls = Some(case_export::server::TlsConfig {
            cert: cert_path,
            key: key_path,
            client_ca: None,
        });
    })
    .await;

    // No TLS at all.
    assert_closed_without_answer("a silent socket", connect(server.addr).await).await;

    // TLS done, then nothing: closed all the same.
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(cert.cert.der().clone())
        .expect("trust the test certificate");
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls));
    let mut s = connector
        .connect(
            "localhost".try_into().expect("server name"),
            connect(server.addr).await,
        )
        .await
        .expect("the TLS handshake completes");
    let mut got = Vec::new();
    match within(
        "a TLS socket without HTTP/2",
        BOUND,
        s.read_to_end(&mut got),
    )
    .await
    {
        Ok(_) => assert!(got.is_empty(), "the server answered {got:?}"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ),
            "{e}"
        ),
    }

    // A real client over TLS is served.
    let mut c = case_export::client::ExportClient::connect_with(
        &format!("https://localhost:{}", server.addr.port()),
        case_export::client::ClientOptions {
            ca_pem: Some(cert_pem.into_bytes()),
            ..test_client_options()
        },
    )
    .await
    .expect("TLS connect");
    let mut enc = Vec::new();
    let receipt = c
        .export_case(&server.case_ids[0], PURPOSE, &mut enc, |_, _| {})
        .await
        .expect("export over TLS");
    open_export(&enc, &receipt);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_closed_and_the_others_keep_working() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Counts rejected connections of the process-wide registry.
    let server = start_server(|c| {
        c.max_connections = 3;
        with_metrics(c);
    })
    .await;
    let before = rejected(&server, "grpc", "over_cap").await;
    // One connection of the library client, busy with a real export.
    let mut held_client = client(&server.url).await;
    let mut enc = Vec::new();
    held_client
        .export_case(&server.case_ids[0], PURPOSE, &mut enc, |_, _| {})
        .await
        .expect("first export");
    // Two more that sent the preface: the server answers each with its
    // SETTINGS, so they are being served.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect(server.addr).await;
        s.write_all(PREFACE).await.expect("preface");
        let mut frame_header = [0u8; 9];
        within(
            "the server's SETTINGS",
            BOUND,
            s.read_exact(&mut frame_header),
        )
        .await
        .expect("a frame from the server");
        assert_eq!(frame_header[3], 0x4, "a SETTINGS frame");
        held.push(s);
    }

    // The fourth is closed as it is accepted, and counted.
    let mut over = connect(server.addr).await;
    let _ = over.write_all(PREFACE).await;
    assert_closed_without_answer("a connection over the cap", over).await;
    let after = rejected(&server, "grpc", "over_cap").await;
    assert!(after >= before + 1.0, "{before} -> {after}");

    // The connections already open keep working.
    let mut enc = Vec::new();
    let receipt = held_client
        .export_case(&server.case_ids[1], PURPOSE, &mut enc, |_, _| {})
        .await
        .expect("an export on a connection opened before the cap was reached");
    open_export(&enc, &receipt);

    // Below the cap again, new connections are served.
    drop(held.pop());
    eventually("a new connection", DEADLINE, || async {
        let mut enc = Vec::new();
        let mut c =
            case_export::client::ExportClient::connect_with(&server.url, test_client_options())
                .await
                .map_err(|e| e.to_string())?;
        c.export_case(&server.case_ids[2], PURPOSE, &mut enc, |_, _| {})
            .await
            .map_err(|e| e.to_string())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listener_closes_a_stalled_request_head() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start_server(|c| {
        c.handshake_timeout_secs = 1;
        with_metrics(c);
    })
    .await;
    let addr = metrics_addr(&server);
    eventually("a metrics scrape", DEADLINE, || scrape_metrics(addr)).await;

    // Half a request line, then nothing: closed after the timeout, with
    // no metrics given out.
    let mut half = connect(addr).await;
    half.write_all(b"GET /metr").await.expect("half a request");
    let mut got = Vec::new();
    let _ = within("a stalled request head", BOUND, half.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    assert!(!text.contains(" 200 "), "answered: {text:?}");
    assert_closed_without_answer("a silent metrics socket", connect(addr).await).await;

    // The listener serves on.
    eventually("a metrics scrape", DEADLINE, || scrape_metrics(addr)).await;
}

// ---------------------------------------------------------------------------
// 10. A stream ended by shutdown before its header never looks complete.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_whose_snapshot_outlasts_the_grace_period_end_unavailable() {
    const WAITING: usize = 8;
    let db = seeded_db(&SeedOptions {
        cases: 9,
        ..big_seed()
    });
    {
        let c = Connection::open(&db.path).expect("open");
        let mode: String = c
            .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
            .expect("rollback journal");
        assert_eq!(mode, "delete");
    }
    let path = db.path.clone();
    let mut config = test_config(db.path.clone(), db.dir.path());
    stall_prone(&mut config);
    config.max_in_flight = WAITING + 1;
    config.max_in_flight_per_principal = WAITING + 1;
    config.busy_timeout_ms = 60_000;
    config.shutdown_grace_secs = 1;
    let mut server = spawn_server(config, db.dir, db.case_ids).await;
    let audit_db = server.audit_db().to_path_buf();
    let ids = server.case_ids.clone();

    // A witness of the grace period's end: an export whose client never
    // reads. Its producer is ended (and recorded) when the grace is over.
    let witness = unread_export(&server.url, authed(request(&ids[WAITING], PURPOSE))).await;
    eventually("the witness started", DEADLINE, || async {
        let started = audit_events(&audit_db)
            .iter()
            .any(|e| e.kind == Kind::Started && e.case_id.as_deref() == Some(&ids[WAITING]));
        started.then_some(()).ok_or_else(|| "not yet".to_string())
    })
    .await;

    // Exports whose snapshot waits on a writer's lock past the grace period.
    let writer = Connection::open(&path).expect("writer");
    writer
        .execute_batch("BEGIN EXCLUSIVE")
        .expect("exclusive lock");
    let mut waiting = tokio::task::JoinSet::new();
    for case_id in ids[..WAITING].iter().cloned() {
        let url = server.url.clone();
        waiting.spawn(async move {
            let mut raw = raw_client(&url).await;
            match raw.export_case(authed(request(&case_id, PURPOSE))).await {
                Ok(r) => {
                    let mut stream = r.into_inner();
                    let mut header = false;
                    let (chunks, key, status) = loop {
                        match stream.message().await {
                            Ok(Some(m)) => {
                                if let Some(Msg::Header(_)) = m.message {
                                    header = true;
                                    continue;
                                }
                                let (c, k, s) = read_to_end(&mut stream).await;
                                break (c + 1, k, s);
                            }
                            Ok(None) => break (0, false, None),
                            Err(s) => break (0, false, Some(s)),
                        }
                    };
                    (case_id, header, chunks, key, status)
                }
                Err(s) => (case_id, false, 0, false, Some(s)),
            }
        });
    }
    eventually("every waiting export started", DEADLINE, || async {
        let n = audit_events(&audit_db)
            .iter()
            .filter(|e| e.kind == Kind::Started)
            .count();
        (n == WAITING + 1)
            .then_some(())
            .ok_or_else(|| format!("{n} started"))
    })
    .await;

    server.trigger_shutdown();
    // The witness ended: the grace period is over.
    let evs = case_call_events(&audit_db, &ids[WAITING]).await;
    assert_eq!(
        evs.last().and_then(|e| e.code.as_deref()),
        Some("UNAVAILABLE"),
        "{evs:#?}"
    );
    writer.execute_batch("ROLLBACK").expect("release the lock");

    let mut endings = Vec::new();
    while let Some(r) = within("the waiting exports", BOUND, waiting.join_next()).await {
        endings.push(r.expect("export task"));
    }
    drop(witness);
    within("the server after shutdown", BOUND, &mut server.join)
        .await
        .expect("server task")
        .expect("serve_on returns Ok");
    let all = audit_events(&audit_db);
    for (case_id, header, chunks, key, status) in endings {
        let what = format!("{case_id}: header {header}, {chunks} chunks, key {key}");
        assert!(!key, "{what}: an export after the grace period got its key");
        let s = status.unwrap_or_else(|| panic!("{what}: the stream ended OK without a key"));
        assert_eq!(s.code(), Code::Unavailable, "{what}: {s:?}");
        assert!(s.message().contains("shutting down"), "{what}: {s:?}");
        let rid = all
            .iter()
            .find(|e| e.kind == Kind::Started && e.case_id.as_deref() == Some(&case_id))
            .map(|e| e.request_id.clone())
            .expect("started event");
        let terminal: Vec<&Event> = all
            .iter()
            .filter(|e| e.request_id == rid && e.kind.is_terminal())
            .collect();
        assert_eq!(terminal.len(), 1, "{what}: {terminal:#?}");
        assert_eq!(
            (terminal[0].kind, terminal[0].code.as_deref()),
            (Kind::Failed, Some("UNAVAILABLE")),
            "{what}"
        );
        assert!(
            !all.iter()
                .any(|e| e.request_id == rid && e.kind == Kind::Sealed),
            "{what}: sealed"
        );
    }
    assert_trail_intact(&audit_db).await;
}
