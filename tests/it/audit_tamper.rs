//! The custody trail against tampering: every kind of edit to the audit
//! database is reported by `verify_log` and by `case-export audit verify`
//! (exit 1, one stderr line) at the right sequence number; the triggers
//! refuse UPDATE and DELETE; checkpoints catch a removed tail and a
//! rewritten log, and their signatures hold; a server killed mid-export
//! leaves a call without an end that `audit verify` lists (exit 3).
//!
//! Most logs here are written by the library's `AuditWriter` directly (fast
//! and exact); the checkpoint-key and SIGKILL tests run the real server.

use crate::support::{
    ServerProcess, audit_trail, bin, checkpoint_key, dir_entries, eventually, held_export,
    one_error_line, run, seeded_db, small_seed, stderr_of, stdout_of, test_client_options,
    write_test_config,
};
use case_export::audit::{AuditWriter, Event, Kind, Verification, open_log_read_only, verify_log};
use rusqlite::{Connection, params};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;

const EXPORT_METHOD: &str = "/case_export.v1.ExportService/ExportCase";

/// Columns of `audit_events` that the hash covers, in hashing order.
const HASHED: [&str; 15] = [
    "ts",
    "kind",
    "request_id",
    "method",
    "principal",
    "on_behalf_of",
    "peer",
    "tls_identity",
    "case_id",
    "export_id",
    "purpose",
    "code",
    "detail",
    "instance",
    "version",
];

/// One event of a call, with the fields an export would have.
fn call_event(kind: Kind, rid: &str, case: &str) -> Event {
    let mut e = Event::new(kind, rid);
    e.method = Some(EXPORT_METHOD.into());
    e.principal = Some("case-mgmt".into());
    e.on_behalf_of = Some("analyst.one".into());
    e.peer = Some("127.0.0.1:40000".into());
    if kind != Kind::Attempt {
        e.case_id = Some(case.into());
        e.export_id = Some(format!("{:0>32}", rid));
        e.purpose = Some("TICKET-1".into());
    }
    if kind.is_terminal() {
        e.code = Some(
            if kind == Kind::Denied {
                "PERMISSION_DENIED"
            } else {
                "OK"
            }
            .into(),
        );
    }
    if kind == Kind::Sealed {
        e.detail = Some(r#"{"row_counts":{"cases":1},"ciphertext_sha256":"00"}"#.into());
    }
    e
}

/// A log of 13 events written by the library's writer:
///
/// ```text
///  1      server_start
///  2..5   r1: attempt, started, sealed, completed
///  6..9   r2: attempt, started, sealed, completed
///  10,11  r3: attempt, denied
///  12,13  r4: attempt, denied
/// ```
///
/// The writer's shutdown appends a checkpoint of event 13 to
/// `checkpoints.jsonl`.
struct Log {
    dir: TempDir,
    db: PathBuf,
    checkpoints: PathBuf,
}

const EVENTS: u64 = 13;

fn build_log() -> Log {
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("audit.db");
    let checkpoints = dir.path().join("checkpoints.jsonl");
    let writer = AuditWriter::start(
        &db,
        "tamper-test",
        case_export::audit::WriterConfig {
            every: Duration::from_secs(3600),
            file: Some(checkpoints.clone()),
            ..Default::default()
        },
    )
    .expect("start writer");
    let h = writer.handle();
    let mut expected = 0;
    let mut commit = |e: Event| {
        let seq = h
            .record_acked(e)
            .blocking_recv()
            .expect("writer answers")
            .expect("committed")
            .seq;
        expected += 1;
        assert_eq!(seq, expected);
    };
    commit(Event::new(Kind::ServerStart, "-"));
    for (rid, case) in [("r1", "case-a"), ("r2", "case-b")] {
        for k in [Kind::Attempt, Kind::Started, Kind::Sealed, Kind::Completed] {
            commit(call_event(k, rid, case));
        }
    }
    for rid in ["r3", "r4"] {
        commit(call_event(Kind::Attempt, rid, "-"));
        commit(call_event(Kind::Denied, rid, "-"));
    }
    writer.shutdown();
    Log {
        dir,
        db,
        checkpoints,
    }
}

impl Log {
    /// A copy of the (closed, checkpointed) database to tamper with.
    fn copy(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::copy(&self.db, &p).expect("copy audit db");
        // A reader may have left a WAL beside the original; take it along.
        let wal = self.dir.path().join("audit.db-wal");
        if wal.exists() {
            std::fs::copy(&wal, self.dir.path().join(format!("{name}-wal"))).expect("copy wal");
        }
        p
    }
}

fn verify(db: &Path) -> Verification {
    verify_log(&open_log_read_only(db).expect("open"), &[], None).expect("verify")
}

fn verify_with_checkpoints(db: &Path, file: &Path) -> Verification {
    let cps = case_export::audit::read_checkpoints(file).expect("read checkpoints");
    verify_log(&open_log_read_only(db).expect("open"), &cps, None).expect("verify")
}

/// Opens `db` read-write with the append-only triggers dropped, as an
/// attacker with file access would, and runs `sql`.
fn tamper(db: &Path, sql: &str) {
    let c = Connection::open(db).expect("open for tampering");
    c.execute_batch(
        "DROP TRIGGER audit_events_no_update;
         DROP TRIGGER audit_events_no_delete;
         DROP TRIGGER audit_meta_no_update;
         DROP TRIGGER audit_meta_no_delete;",
    )
    .expect("drop triggers");
    c.execute_batch(sql)
        .unwrap_or_else(|e| panic!("tampering failed: {e}\n{sql}"));
}

/// Asserts the library and the CLI both report exactly one problem, the
/// first being `expected` (which names the sequence number).
#[track_caller]
fn assert_reported(db: &Path, expected: &str) {
    let v = verify(db);
    assert!(!v.chain_ok(), "tampering went unnoticed ({expected})");
    assert_eq!(v.problems.len(), 1, "{:?}", v.problems);
    assert!(
        v.problems[0].contains(expected),
        "library reports {:?}, expected {expected:?}",
        v.problems[0]
    );
    let o = run(bin().args(["audit", "verify", "--db"]).arg(db));
    let line = one_error_line(&o);
    assert!(
        line.contains(expected),
        "CLI says {line:?}, expected {expected:?}"
    );
    assert!(line.contains(&db.display().to_string()), "{line}");
}

/// Hash of the row at `seq`, as stored.
fn stored_hash(db: &Path, seq: u64) -> String {
    Connection::open(db)
        .expect("open")
        .query_row(
            "SELECT hash FROM audit_events WHERE seq = ?1",
            [seq as i64],
            |r| r.get(0),
        )
        .expect("hash")
}

// ---------------------------------------------------------------------------
// An independent implementation of the chain (the documented format), to
// pin it and to forge events the way an attacker knowing it would.
// ---------------------------------------------------------------------------

fn field(h: &mut Sha256, v: Option<&str>) {
    match v {
        None => h.update(u64::MAX.to_be_bytes()),
        Some(s) => {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        }
    }
}

fn genesis(log_id_hex: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"case-export audit genesis v1\0");
    h.update(hex::decode(log_id_hex).expect("hex log id"));
    hex::encode(h.finalize())
}

fn row_hash(seq: u64, prev_hex: &str, fields: &[Option<String>]) -> String {
    let mut h = Sha256::new();
    h.update(b"case-export audit event v1\0");
    h.update(seq.to_be_bytes());
    h.update(hex::decode(prev_hex).expect("hex prev"));
    for f in fields {
        field(&mut h, f.as_deref());
    }
    hex::encode(h.finalize())
}

/// Recomputes the hash of the event at `seq` from its contents and its
/// stored `prev_hash`, as an attacker forging that one event would.
fn rehash(db: &Path, seq: u64) {
    let c = Connection::open(db).expect("open");
    let (prev, fields): (String, Vec<Option<String>>) = c
        .query_row(
            &format!(
                "SELECT prev_hash, {} FROM audit_events WHERE seq = ?1",
                HASHED.join(", ")
            ),
            [seq as i64],
            |r| {
                let mut f = Vec::new();
                for i in 0..HASHED.len() {
                    f.push(r.get(i + 1)?);
                }
                Ok((r.get(0)?, f))
            },
        )
        .expect("read row");
    c.execute(
        "UPDATE audit_events SET hash = ?1 WHERE seq = ?2",
        params![row_hash(seq, &prev, &fields), seq as i64],
    )
    .expect("rewrite hash");
}

/// Recomputes `prev_hash` and `hash` of every event from `from` on, as an
/// attacker rewriting the chain would.
fn rechain(db: &Path, from: u64) {
    let c = Connection::open(db).expect("open");
    let log_id: String = c
        .query_row("SELECT log_id FROM audit_meta", [], |r| r.get(0))
        .expect("log id");
    let mut prev = if from == 1 {
        genesis(&log_id)
    } else {
        stored_hash(db, from - 1)
    };
    let rows: Vec<(i64, Vec<Option<String>>)> = c
        .prepare(&format!(
            "SELECT seq, {} FROM audit_events WHERE seq >= ?1 ORDER BY seq",
            HASHED.join(", ")
        ))
        .and_then(|mut st| {
            st.query_map([from as i64], |r| {
                let mut f = Vec::new();
                for i in 0..HASHED.len() {
                    f.push(r.get(i + 1)?);
                }
                Ok((r.get(0)?, f))
            })?
            .collect::<rusqlite::Result<_>>()
        })
        .expect("read rows");
    for (seq, fields) in rows {
        let hash = row_hash(seq as u64, &prev, &fields);
        c.execute(
            "UPDATE audit_events SET prev_hash = ?1, hash = ?2 WHERE seq = ?3",
            params![prev, hash, seq],
        )
        .expect("rewrite hashes");
        prev = hash;
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn untouched_log_verifies_and_matches_the_documented_hashing() {
    let log = build_log();
    let v = verify(&log.db);
    assert!(v.chain_ok(), "{:?}", v.problems);
    assert_eq!((v.events, v.last_seq), (EVENTS, EVENTS));
    assert!(v.unterminated.is_empty(), "{:?}", v.unterminated);
    let o = run(bin().args(["audit", "verify", "--db"]).arg(&log.db));
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    assert!(
        stdout_of(&o).starts_with(&format!("ok: log {} holds {EVENTS} events", v.log_id)),
        "{}",
        stdout_of(&o)
    );
    assert!(stderr_of(&o).is_empty());
    // An independent recomputation gives the stored hashes, so the
    // forgeries below are what an attacker knowing the format could do.
    let copy = log.copy("rechained.db");
    tamper(&copy, "UPDATE audit_events SET hash = 'x', prev_hash = 'y'");
    assert_reported(&copy, "event 1:");
    rechain(&copy, 1);
    for seq in 1..=EVENTS {
        assert_eq!(
            stored_hash(&copy, seq),
            stored_hash(&log.db, seq),
            "seq {seq}"
        );
    }
    assert!(verify(&copy).chain_ok());
}

#[test]
fn an_edited_field_is_reported_at_its_event() {
    let log = build_log();
    let edits = [
        ("ts", "'2000-01-01T00:00:00Z'"),
        ("kind", "'sealed'"),
        ("request_id", "'r9'"),
        ("method", "'/case_export.v1.AuditService/VerifyLog'"),
        ("principal", "'mallory'"),
        ("on_behalf_of", "NULL"),
        ("peer", "'10.0.0.1:1'"),
        // NULL and the empty string must hash differently.
        ("tls_identity", "''"),
        ("case_id", "'case-z'"),
        ("export_id", "upper(export_id)"),
        ("purpose", "purpose || ' '"),
        ("code", "'OK'"),
        ("detail", "'{}'"),
        ("instance", "'other'"),
        ("version", "'9.9.9'"),
    ];
    for (i, (col, value)) in edits.iter().enumerate() {
        let db = log.copy(&format!("edit-{i}.db"));
        tamper(
            &db,
            &format!("UPDATE audit_events SET {col} = {value} WHERE seq = 7"),
        );
        assert_reported(&db, "event 7: contents do not match its hash (altered)");
    }
    let db = log.copy("edit-kind.db");
    tamper(&db, "UPDATE audit_events SET kind = 'bogus' WHERE seq = 7");
    assert_reported(&db, "event 7: unknown kind \"bogus\"");
    // Its stored hash changed instead: the same event is named.
    let db = log.copy("edit-hash.db");
    tamper(
        &db,
        "UPDATE audit_events SET hash = (SELECT hash FROM audit_events WHERE seq = 3) \
         WHERE seq = 7",
    );
    assert_reported(&db, "event 7: contents do not match its hash (altered)");
}

#[test]
fn a_deleted_event_is_reported() {
    let log = build_log();
    let db = log.copy("gap.db");
    tamper(&db, "DELETE FROM audit_events WHERE seq = 7");
    assert_reported(&db, "gap: sequence numbers 7..7 are missing");
    // Closing the gap by renumbering breaks the link instead.
    let db = log.copy("renumbered.db");
    tamper(
        &db,
        "DELETE FROM audit_events WHERE seq = 7;
         UPDATE audit_events SET seq = -(seq - 1) WHERE seq > 7;
         UPDATE audit_events SET seq = -seq WHERE seq < 0;",
    );
    assert_reported(&db, "event 7: previous-hash does not match event 6");
    // Deleting the first event.
    let db = log.copy("first.db");
    tamper(&db, "DELETE FROM audit_events WHERE seq = 1");
    assert_reported(&db, "gap: sequence numbers 1..1 are missing");
}

#[test]
fn an_inserted_event_is_reported() {
    let log = build_log();
    // A forged `completed` for r2 slipped in at 7, linked to event 6.
    let insert = |db: &Path, hash_sql: &str| {
        tamper(
            db,
            &format!(
                "UPDATE audit_events SET seq = -(seq + 1) WHERE seq >= 7;
                 UPDATE audit_events SET seq = -seq WHERE seq < 0;
                 INSERT INTO audit_events
                 SELECT 7, ts, 'completed', request_id, method, principal, on_behalf_of, peer,
                        tls_identity, case_id, export_id, purpose, 'OK', detail, instance,
                        version, (SELECT hash FROM audit_events WHERE seq = 6), {hash_sql}
                 FROM audit_events WHERE seq = 8;"
            ),
        );
    };
    let db = log.copy("insert.db");
    insert(&db, "hash");
    assert_reported(&db, "event 7: contents do not match its hash (altered)");
    // With a correct hash for the forgery, the next event's link breaks.
    let db = log.copy("insert-hashed.db");
    insert(&db, "hash");
    rehash(&db, 7);
    assert_reported(&db, "event 8: previous-hash does not match event 7");
    // A replayed copy of an old event appended at the end.
    let db = log.copy("replay.db");
    tamper(
        &db,
        &format!(
            "INSERT INTO audit_events SELECT {}, ts, kind, request_id, method, principal,
             on_behalf_of, peer, tls_identity, case_id, export_id, purpose, code, detail,
             instance, version, prev_hash, hash FROM audit_events WHERE seq = 5",
            EVENTS + 1
        ),
    );
    assert_reported(
        &db,
        &format!(
            "event {}: previous-hash does not match event {EVENTS}",
            EVENTS + 1
        ),
    );
}

#[test]
fn swapped_events_are_reported_at_the_first() {
    let log = build_log();
    let all = format!("{}, prev_hash, hash", HASHED.join(", "));
    let swap = |db: &Path, cols: &str| {
        let set_from = |src: &str| {
            cols.split(", ")
                .map(|c| format!("{c} = (SELECT {c} FROM {src})"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        tamper(
            db,
            &format!(
                "CREATE TEMP TABLE e4 AS SELECT * FROM audit_events WHERE seq = 4;
                 UPDATE audit_events SET {} WHERE seq = 4;
                 UPDATE audit_events SET {} WHERE seq = 9;",
                set_from("audit_events WHERE seq = 9"),
                set_from("e4")
            ),
        );
    };
    // Whole rows (with their hashes) swapped: the links break.
    let db = log.copy("swap-rows.db");
    swap(&db, &all);
    assert_reported(&db, "event 4: previous-hash does not match event 3");
    // Only the contents swapped, hashes left in place.
    let db = log.copy("swap-contents.db");
    swap(&db, &HASHED.join(", "));
    assert_reported(&db, "event 4: contents do not match its hash (altered)");
}

#[test]
fn a_changed_prev_hash_is_reported() {
    let log = build_log();
    let db = log.copy("prev.db");
    tamper(
        &db,
        "UPDATE audit_events SET prev_hash = (SELECT prev_hash FROM audit_events WHERE seq = 7)
         WHERE seq = 8",
    );
    assert_reported(&db, "event 8: previous-hash does not match event 7");
    let db = log.copy("prev-first.db");
    tamper(
        &db,
        "UPDATE audit_events SET prev_hash = replace(prev_hash, substr(prev_hash, 1, 1), 'f')
         WHERE seq = 1 AND substr(prev_hash, 1, 1) <> 'f';
         UPDATE audit_events SET prev_hash = replace(prev_hash, 'f', '0')
         WHERE seq = 1 AND substr(prev_hash, 1, 1) = 'f';",
    );
    assert_reported(&db, "event 1: previous-hash does not match event 0");
}

#[test]
fn triggers_refuse_update_and_delete() {
    let log = build_log();
    let c = Connection::open(&log.db).expect("open read-write");
    for sql in [
        "UPDATE audit_events SET principal = 'mallory' WHERE seq = 7",
        "UPDATE audit_events SET seq = seq + 100 WHERE seq = 13",
        "DELETE FROM audit_events WHERE seq = 13",
        "DELETE FROM audit_events",
        "UPDATE audit_meta SET log_id = 'x'",
        "DELETE FROM audit_meta",
    ] {
        let e = c.execute(sql, []).expect_err(sql).to_string();
        assert!(e.contains("append-only"), "{sql}: {e}");
    }
    drop(c);
    let v = verify(&log.db);
    assert!(v.chain_ok() && v.events == EVENTS, "{v:?}");
}

#[test]
fn replace_with_the_triggers_in_place_is_still_caught() {
    let log = build_log();
    let db = log.copy("replace.db");
    // REPLACE removes the old row without running DELETE triggers (SQLite
    // runs them for REPLACE only with recursive_triggers on), so the
    // triggers may let it through; the chain must then name the event.
    let c = Connection::open(&db).expect("open read-write");
    let replaced = c.execute(
        "INSERT OR REPLACE INTO audit_events SELECT seq, ts, kind, request_id, method,
         'mallory', on_behalf_of, peer, tls_identity, case_id, export_id, purpose, code,
         detail, instance, version, prev_hash, hash FROM audit_events WHERE seq = 7",
        [],
    );
    drop(c);
    match replaced {
        Err(e) => {
            assert!(e.to_string().contains("append-only"), "{e}");
            assert!(verify(&db).chain_ok());
        }
        Ok(n) => {
            assert_eq!(n, 1);
            assert_reported(&db, "event 7: contents do not match its hash (altered)");
        }
    }
}

#[test]
fn a_removed_tail_is_caught_only_by_an_earlier_checkpoint() {
    let log = build_log();
    let cps = case_export::audit::read_checkpoints(&log.checkpoints).expect("checkpoints");
    assert_eq!(cps.len(), 1, "one checkpoint, at shutdown");
    assert_eq!(cps[0].seq, EVENTS);
    assert_eq!(cps[0].head_hash, stored_hash(&log.db, EVENTS));
    assert!(cps[0].signature.is_none());
    let ok = verify_with_checkpoints(&log.db, &log.checkpoints);
    assert!(ok.chain_ok() && ok.checkpoints_ok == 1, "{ok:?}");

    let db = log.copy("truncated.db");
    tamper(
        &db,
        &format!("DELETE FROM audit_events WHERE seq > {}", EVENTS - 2),
    );
    // The chain alone cannot tell: r4's two events are simply gone.
    let plain = verify(&db);
    assert!(plain.chain_ok(), "{:?}", plain.problems);
    assert_eq!(plain.last_seq, EVENTS - 2);
    assert!(plain.unterminated.is_empty());
    let o = run(bin().args(["audit", "verify", "--db"]).arg(&db));
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    // The checkpoint written before the removal can.
    let expected = format!(
        "tail removed: a checkpoint names event {EVENTS} but the log ends at {}",
        EVENTS - 2
    );
    let v = verify_with_checkpoints(&db, &log.checkpoints);
    assert_eq!(v.problems, std::slice::from_ref(&expected));
    let o = run(bin()
        .args(["audit", "verify", "--db"])
        .arg(&db)
        .arg("--checkpoint")
        .arg(&log.checkpoints));
    let line = one_error_line(&o);
    assert!(line.contains(&expected), "{line}");
}

#[test]
fn a_consistently_rewritten_log_is_caught_by_a_checkpoint() {
    let log = build_log();
    let db = log.copy("rewritten.db");
    // Change who an export was for, then recompute every later hash.
    tamper(
        &db,
        "UPDATE audit_events SET on_behalf_of = 'someone.else' WHERE request_id = 'r2'",
    );
    rechain(&db, 6);
    assert!(verify(&db).chain_ok(), "a full rewrite passes the chain");
    let o = run(bin()
        .args(["audit", "verify", "--db"])
        .arg(&db)
        .arg("--checkpoint")
        .arg(&log.checkpoints));
    let line = one_error_line(&o);
    assert!(
        line.contains(&format!(
            "event {EVENTS}: hash differs from the checkpoint (log rewritten)"
        )),
        "{line}"
    );
}

#[test]
fn a_log_rebuilt_under_a_new_id_fails_against_the_old_checkpoints() {
    let log = build_log();
    let db = log.copy("rebuilt.db");
    // A whole new chain: another log id, every hash recomputed.
    tamper(
        &db,
        "UPDATE audit_meta SET log_id = '00112233445566778899aabbccddeeff';
         DELETE FROM audit_events WHERE request_id = 'r2';
         UPDATE audit_events SET seq = -(seq - 4) WHERE seq > 9;
         UPDATE audit_events SET seq = -seq WHERE seq < 0;",
    );
    rechain(&db, 1);
    let plain = verify(&db);
    assert!(plain.chain_ok(), "{:?}", plain.problems);
    assert_eq!(plain.events, EVENTS - 4);
    // The anchored checkpoint names the original log: it must not simply
    // be skipped as someone else's.
    let o = run(bin()
        .args(["audit", "verify", "--db"])
        .arg(&db)
        .arg("--checkpoint")
        .arg(&log.checkpoints));
    let line = one_error_line(&o);
    assert!(line.contains(&format!("checkpoint at {EVENTS}")), "{line}");
}

// ---------------------------------------------------------------------------
// Signed checkpoints from a real server
// ---------------------------------------------------------------------------

fn rewrite_checkpoints(src: &Path, dst: &Path, f: impl Fn(&mut serde_json::Value)) {
    let text = std::fs::read_to_string(src).expect("read checkpoints");
    let mut out = String::new();
    for line in text.lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).expect("checkpoint json");
        f(&mut v);
        out.push_str(&format!("{v}\n"));
    }
    std::fs::write(dst, out).expect("write checkpoints");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_checkpoints_verify_and_forgeries_do_not() {
    let seeded = seeded_db(&small_seed());
    let dir = &seeded.dir;
    let key = dir.path().join("checkpoint.key");
    let pk = checkpoint_key(&key);
    let other_pk = checkpoint_key(&dir.path().join("other.key"));
    assert_ne!(pk, other_pk);
    let cps = dir.path().join("checkpoints.jsonl");
    let config = write_test_config(dir.path(), 0);
    let mut text = std::fs::read_to_string(&config).expect("config");
    text.push_str(&format!(
        "\n[audit]\ncheckpoint_key_file = {:?}\ncheckpoint_file = {:?}\n",
        key.display().to_string(),
        cps.display().to_string()
    ));
    std::fs::write(&config, text).expect("write config");
    let audit_db = dir.path().join("audit.db");
    let server =
        ServerProcess::start_custom(&config, &seeded.path, &audit_db, dir.path(), &[], |_| {});
    case_export::client::ExportClient::connect_with(&server.url(), test_client_options())
        .await
        .expect("connect")
        .export_case(
            &seeded.case_ids[0],
            "TICKET-9",
            &mut tokio::io::sink(),
            |_, _| {},
        )
        .await
        .expect("export");
    // The final checkpoint is written at shutdown, after every event.
    assert!(server.terminate().success());
    let written = case_export::audit::read_checkpoints(&cps).expect("checkpoints");
    let last = written.last().expect("a checkpoint at shutdown");
    let v = verify(&audit_db);
    assert!(v.chain_ok() && v.unterminated.is_empty(), "{v:?}");
    assert_eq!(last.seq, v.last_seq);
    assert_eq!(last.head_hash, v.head_hash);
    assert_eq!(last.public_key.as_deref(), Some(pk.as_str()));
    assert!(last.signature.is_some());
    // The server's log names the public key's checkpoint, never the seed.
    let seed = std::fs::read_to_string(&key).expect("key file");
    let logs: String = dir_entries(dir.path())
        .iter()
        .filter(|n| n.ends_with(".log"))
        .map(|n| std::fs::read_to_string(dir.path().join(n)).expect("log"))
        .collect();
    assert!(
        !logs.contains(seed.trim()),
        "the checkpoint key is in the log"
    );

    let verify_cli = |file: &Path, public_key: Option<&str>| {
        let mut cmd = bin();
        cmd.args(["audit", "verify", "--db"])
            .arg(&audit_db)
            .arg("--checkpoint")
            .arg(file);
        if let Some(k) = public_key {
            cmd.args(["--public-key", k]);
        }
        run(&mut cmd)
    };
    for k in [None, Some(pk.as_str())] {
        let o = verify_cli(&cps, k);
        assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
        assert!(
            stdout_of(&o).contains(&format!("{} checkpoint(s) match", written.len())),
            "{}",
            stdout_of(&o)
        );
    }
    // Another key than the server's: refused.
    let o = verify_cli(&cps, Some(&other_pk));
    let line = one_error_line(&o);
    assert!(
        line.contains(&format!("checkpoint at {}", last.seq))
            && line.contains("signature does not verify"),
        "{line}"
    );
    // One altered signature digit: refused.
    let bad_sig = dir.path().join("bad-signature.jsonl");
    rewrite_checkpoints(&cps, &bad_sig, |v| {
        let s = v["signature"].as_str().expect("signature").to_string();
        let flipped = if s.ends_with('0') { '1' } else { '0' };
        v["signature"] = format!("{}{flipped}", &s[..s.len() - 1]).into();
    });
    let line = one_error_line(&verify_cli(&bad_sig, None));
    assert!(line.contains("signature does not verify"), "{line}");
    // With --public-key, an unsigned checkpoint does not do.
    let unsigned = dir.path().join("unsigned.jsonl");
    rewrite_checkpoints(&cps, &unsigned, |v| {
        let m = v.as_object_mut().expect("object");
        m.remove("signature");
        m.remove("public_key");
    });
    let line = one_error_line(&verify_cli(&unsigned, Some(&pk)));
    assert!(
        line.contains(&format!("checkpoint at {}", last.seq)),
        "{line}"
    );
    // The signature covers what it checkpoints: a moved head is refused
    // for its signature, not reported as a removed tail.
    let moved = dir.path().join("moved.jsonl");
    rewrite_checkpoints(&cps, &moved, |v| {
        v["seq"] = (v["seq"].as_u64().expect("seq") + 5).into();
    });
    let line = one_error_line(&verify_cli(&moved, Some(&pk)));
    assert!(line.contains("signature does not verify"), "{line}");
}

// ---------------------------------------------------------------------------
// A server killed mid-export
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_export_leaves_a_listed_call_without_an_end() {
    let seeded = seeded_db(&case_export::seed::SeedOptions {
        cases: 2,
        rows_per_case: 800,
        seed: 3,
        tenants: vec!["north".into()],
    });
    let (dir, case_db) = (&seeded.dir, &seeded.path);
    let case = seeded.case_ids[0].clone();
    let config = write_test_config(dir.path(), 0);
    let audit_db = dir.path().join("audit.db");
    let start = || {
        ServerProcess::start_custom(
            &config,
            case_db,
            &audit_db,
            dir.path(),
            &["--chunk-size", "4096"],
            |_| {},
        )
    };
    let server = start();

    // A slow client: small windows, reads the header and one chunk, then
    // stops reading while keeping the call open.
    let (_client, stream, header) = held_export(&server.url(), &case, "TICKET-KILL", 1).await;
    // Far more than the client's window and the server's buffers hold.
    assert!(header.chunk_count > 100, "{} chunks", header.chunk_count);

    // The header follows the committed `started` event.
    server.kill();
    drop(stream);

    let server = start();
    // "listening on" comes first; the start event follows it.
    let events = eventually(
        "the restarted server's start event",
        Duration::from_secs(10),
        || async {
            let ev = audit_trail(&audit_db);
            let starts = ev
                .iter()
                .filter(|(_, e, _)| e.kind == Kind::ServerStart)
                .count();
            if starts == 2 {
                Ok(ev)
            } else {
                Err(format!("{starts} start events"))
            }
        },
    )
    .await;
    let starts: Vec<&Event> = events
        .iter()
        .map(|(_, e, _)| e)
        .filter(|e| e.kind == Kind::ServerStart)
        .collect();
    assert_eq!(starts.len(), 2, "the restart is on record");
    assert_ne!(starts[0].instance, starts[1].instance);
    let (first_seq, attempt) = events
        .iter()
        .find(|(_, e, _)| e.kind == Kind::Attempt && e.method.as_deref() == Some(EXPORT_METHOD))
        .map(|(s, e, _)| (*s, e))
        .expect("the killed export's attempt");
    let started = events
        .iter()
        .map(|(_, e, _)| e)
        .find(|e| e.request_id == attempt.request_id && e.kind == Kind::Started)
        .expect("started is on record");
    assert_eq!(
        started.export_id.as_deref(),
        Some(header.export_id.as_str())
    );
    assert!(
        !events
            .iter()
            .any(|(_, e, _)| e.request_id == started.request_id
                && (e.kind.is_terminal() || e.kind == Kind::Sealed))
    );

    let check = || {
        let o = run(bin().args(["audit", "verify", "--db"]).arg(&audit_db));
        assert_eq!(o.status.code(), Some(3), "{}", stderr_of(&o));
        assert!(stderr_of(&o).is_empty(), "{}", stderr_of(&o));
        let out = stdout_of(&o);
        assert!(out.starts_with("ok: log "), "{out}");
        assert!(out.contains("1 call(s) started without an end"), "{out}");
        let listed = format!(
            "seq {first_seq}  request {}  case {case}  export {}",
            started.request_id, header.export_id
        );
        assert!(out.contains(&listed), "{listed:?} not in:\n{out}");
    };
    check();
    // The restarted server works and its own calls end on record.
    let receipt =
        case_export::client::ExportClient::connect_with(&server.url(), test_client_options())
            .await
            .expect("connect")
            .export_case(
                &seeded.case_ids[1],
                "TICKET-AFTER",
                &mut tokio::io::sink(),
                |_, _| {},
            )
            .await
            .expect("export after the restart");
    assert!(server.terminate().success());
    assert!(
        audit_trail(&audit_db)
            .iter()
            .any(|(_, e, _)| e.kind == Kind::Completed
                && e.export_id.as_deref() == Some(receipt.export_id.as_str()))
    );
    check();
    let v = verify(&audit_db);
    assert!(v.chain_ok(), "{:?}", v.problems);
    assert_eq!(v.unterminated.len(), 1);
}

// ---------------------------------------------------------------------------
// The writer takes up only the trail it left (stopped and running)
// ---------------------------------------------------------------------------

fn writer_on(log: &Log) -> AuditWriter {
    AuditWriter::start(
        &log.db,
        "tamper-test",
        case_export::audit::WriterConfig {
            every: Duration::from_secs(3600),
            file: Some(log.checkpoints.clone()),
            ..Default::default()
        },
    )
    .expect("start writer")
}

/// Commits one event, or returns why not.
fn append_one(w: &AuditWriter) -> Result<u64, case_export::audit::AuditError> {
    w.handle()
        .record_acked(call_event(Kind::Attempt, "r9", "-"))
        .blocking_recv()
        .expect("writer answers")
        .map(|c| c.seq)
}

/// Asserts the writer refuses the trail, naming `seq` as the first event
/// that differs, and that appending is refused.
#[track_caller]
fn assert_refused_at(w: &AuditWriter, seq: u64) {
    let h = w.handle();
    let m = h.mismatch().cloned().expect("the trail is refused");
    assert_eq!(m.seq, seq, "{m}");
    assert!(!h.is_healthy() && !h.is_accepting());
    match append_one(w) {
        Err(case_export::audit::AuditError::Mismatch(m)) => assert_eq!(m.seq, seq),
        other => panic!("append on a refused trail: {other:?}"),
    }
}

/// Starts a writer on the log and asserts it refuses the trail at `seq`.
#[track_caller]
fn refused_at_start(log: &Log, seq: u64) {
    let w = writer_on(log);
    assert_refused_at(&w, seq);
    w.shutdown();
}

/// Removes a trail and the WAL files beside it.
fn remove_trail(db: &Path) {
    std::fs::remove_file(db).expect("remove the trail");
    for ext in ["-wal", "-shm"] {
        let mut p = db.as_os_str().to_owned();
        p.push(ext);
        let _ = std::fs::remove_file(p);
    }
}

/// An event forged at `seq` (a copy of the last event with a correctly
/// recomputed hash), as an attacker knowing the format would append it.
fn forge_append(db: &Path, seq: u64) {
    tamper(
        db,
        &format!(
            "INSERT INTO audit_events SELECT {seq}, ts, kind, 'forged', method, principal, \
             on_behalf_of, peer, tls_identity, case_id, export_id, purpose, code, detail, \
             instance, version, hash, hash FROM audit_events WHERE seq = {}",
            seq - 1
        ),
    );
    rehash(db, seq);
}

#[test]
fn an_untouched_trail_restarts_and_serves_as_before() {
    let log = build_log();
    let cps = case_export::audit::read_checkpoints(&log.checkpoints).expect("checkpoints");
    let last = cps.last().expect("a final checkpoint at shutdown");
    assert!(last.is_final && last.seq == EVENTS, "{last:?}");
    for round in 0..2 {
        let w = writer_on(&log);
        assert!(w.handle().mismatch().is_none(), "round {round}");
        assert_eq!(append_one(&w).expect("append"), EVENTS + 1 + round);
        w.shutdown();
    }
    let v = verify_with_checkpoints(&log.db, &log.checkpoints);
    assert!(v.chain_ok(), "{:?}", v.problems);
    assert_eq!(v.checkpoints_ok, 3);
}

#[test]
fn a_tail_cut_while_stopped_is_refused_at_start() {
    let log = build_log();
    tamper(&log.db, "DELETE FROM audit_events WHERE seq >= 12");
    refused_at_start(&log, 12);
    // Nothing was appended or signed over the cut trail.
    assert_eq!(verify(&log.db).last_seq, 11);
    let cps = case_export::audit::read_checkpoints(&log.checkpoints).expect("checkpoints");
    assert_eq!(
        cps.len(),
        1,
        "no checkpoint over the refused trail: {cps:?}"
    );
}

#[test]
fn an_event_forged_after_the_final_checkpoint_is_refused_at_start() {
    let log = build_log();
    forge_append(&log.db, EVENTS + 1);
    // The forgery is a valid link of the chain: only the final checkpoint
    // of the clean stop tells it was not written by the server.
    assert!(verify(&log.db).chain_ok());
    refused_at_start(&log, EVENTS + 1);
}

#[test]
fn an_event_rewritten_while_stopped_is_refused_at_start() {
    // Contents edited, hash left: the chain walk names the event.
    let log = build_log();
    tamper(
        &log.db,
        "UPDATE audit_events SET purpose = 'nothing to see' WHERE seq = 7",
    );
    refused_at_start(&log, 7);
    // Rewritten with every later hash recomputed: the chain holds, the
    // final checkpoint does not.
    let log = build_log();
    tamper(
        &log.db,
        "UPDATE audit_events SET purpose = 'nothing to see' WHERE seq = 7",
    );
    rechain(&log.db, 7);
    assert!(verify(&log.db).chain_ok());
    refused_at_start(&log, EVENTS);
}

#[test]
fn a_trail_replaced_under_a_new_id_is_refused_until_started_as_its_successor() {
    let log = build_log();
    let old = log.copy("old.db");
    remove_trail(&log.db);
    // A fresh, empty trail under a new id in its place.
    refused_at_start(&log, 1);
    remove_trail(&log.db);
    let o = run(bin()
        .args(["audit", "new-trail", "--db"])
        .arg(&old)
        .arg("--out")
        .arg(&log.db)
        .args(["--reason", "INC-7: trail refused"]));
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(stdout_of(&o).contains(&format!("last good event {EVENTS}")));
    let w = writer_on(&log);
    assert!(w.handle().mismatch().is_none());
    assert_eq!(append_one(&w).expect("append"), 2);
    w.shutdown();
    let first = &case_export::audit::list_events(
        &open_log_read_only(&log.db).expect("open"),
        &Default::default(),
    )
    .expect("list")[0]
        .1;
    assert_eq!(first.kind, Kind::TrailStart);
    let d: serde_json::Value =
        serde_json::from_str(first.detail.as_deref().expect("detail")).expect("json");
    assert_eq!(d["previous_seq"], EVENTS);
    assert_eq!(d["previous_hash"], stored_hash(&old, EVENTS));
    assert_eq!(d["reason"], "INC-7: trail refused");
}

#[test]
fn a_tail_cut_while_running_is_refused_at_the_next_write() {
    let log = build_log();
    let w = writer_on(&log);
    assert_eq!(append_one(&w).expect("append"), 14);
    assert_eq!(append_one(&w).expect("append"), 15);
    tamper(&log.db, "DELETE FROM audit_events WHERE seq = 15");
    assert!(append_one(&w).is_err());
    assert_refused_at(&w, 15);
    w.shutdown();
    // No final checkpoint over the cut trail.
    let cps = case_export::audit::read_checkpoints(&log.checkpoints).expect("checkpoints");
    assert_eq!(cps.len(), 1, "{cps:?}");
}

#[test]
fn an_event_forged_while_running_is_refused_at_the_next_write() {
    let log = build_log();
    let w = writer_on(&log);
    assert_eq!(append_one(&w).expect("append"), 14);
    forge_append(&log.db, 15);
    assert!(append_one(&w).is_err());
    assert_refused_at(&w, 15);
    // The forgery is not built upon: the trail still ends at it.
    w.shutdown();
    assert_eq!(verify(&log.db).last_seq, 15);
}

#[test]
fn an_event_rewritten_while_running_is_refused_before_the_next_checkpoint() {
    // Contents edited, hash left: found when the next checkpoint verifies
    // the chain since the last one; no checkpoint is signed over it.
    let log = build_log();
    let w = writer_on(&log);
    for _ in 0..3 {
        append_one(&w).expect("append");
    }
    tamper(
        &log.db,
        "UPDATE audit_events SET principal = 'someone-else' WHERE seq = 15",
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    assert!(rt.block_on(w.handle().checkpoint()).is_none());
    assert_refused_at(&w, 15);
    w.shutdown();

    // Rewritten with every later hash recomputed: found at the next write,
    // at the first event whose hash is not the one written.
    let log = build_log();
    let w = writer_on(&log);
    for _ in 0..3 {
        append_one(&w).expect("append");
    }
    tamper(
        &log.db,
        "UPDATE audit_events SET principal = 'someone-else' WHERE seq = 15",
    );
    rechain(&log.db, 15);
    assert!(append_one(&w).is_err());
    assert_refused_at(&w, 15);
    w.shutdown();
    let cps = case_export::audit::read_checkpoints(&log.checkpoints).expect("checkpoints");
    assert_eq!(cps.len(), 1, "{cps:?}");
}

/// While the store cannot write, the events waiting for it are bounded in
/// bytes: past the bound new events are refused (and the server refuses new
/// calls) instead of growing; once the store writes again, the queued ones
/// land in order and events are taken again.
#[test]
fn the_queue_of_events_waiting_for_the_store_is_bounded_in_bytes() {
    let log = build_log();
    let w = AuditWriter::start(
        &log.db,
        "tamper-test",
        case_export::audit::WriterConfig {
            every: Duration::from_secs(3600),
            file: Some(log.checkpoints.clone()),
            max_queued_bytes: 8 * 1024,
            ..Default::default()
        },
    )
    .expect("start writer");
    let fault = Connection::open(&log.db).expect("open");
    fault
        .execute_batch(
            "CREATE TRIGGER test_fault BEFORE INSERT ON audit_events \
             BEGIN SELECT RAISE(ABORT, 'injected fault'); END;",
        )
        .expect("inject the fault");
    let h = w.handle();
    // Sized as queued: the writer stamps its instance into every event.
    let size = Event {
        instance: "tamper-test".into(),
        ..call_event(Kind::Attempt, "r9", "-")
    }
    .stored_size();
    let mut queued = 0;
    let refused = loop {
        match h
            .record_acked(call_event(Kind::Attempt, "r9", "-"))
            .blocking_recv()
            .expect("writer answers")
        {
            Err(case_export::audit::AuditError::Write(_)) => queued += 1,
            Err(e @ case_export::audit::AuditError::QueueFull(_)) => break e,
            other => panic!("with the store failing: {other:?}"),
        }
        assert!(queued * size <= 8 * 1024, "the queue grew past its bound");
    };
    eprintln!("{queued} events of {size} bytes queued before the refusal: {refused}");
    assert!(
        queued >= 1 && (queued + 1) * size > 8 * 1024,
        "{queued} x {size}"
    );
    assert!(!h.is_accepting());
    fault
        .execute_batch("DROP TRIGGER test_fault")
        .expect("heal the store");
    drop(fault);
    let seq = h
        .record_acked(call_event(Kind::Attempt, "r10", "-"))
        .blocking_recv()
        .expect("writer answers");
    // Refused while full, or written after the queued ones once healed.
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while !h.is_accepting() {
        assert!(std::time::Instant::now() < end, "queue never drained");
        std::thread::sleep(Duration::from_millis(20));
    }
    w.shutdown();
    let v = verify(&log.db);
    assert!(v.chain_ok(), "{:?}", v.problems);
    let expected = EVENTS + queued + u64::from(seq.is_ok());
    assert_eq!(v.last_seq, expected, "{seq:?}");
}

/// A `denied_summary` is not a call: a log holding one verifies, lists no
/// call without an end, and `audit list` shows it.
#[test]
fn denied_summaries_verify_and_are_listed() {
    let dir = TempDir::new().expect("tempdir");
    let db = dir.path().join("audit.db");
    let writer = AuditWriter::start(
        &db,
        "summary-test",
        case_export::audit::WriterConfig {
            every: Duration::from_secs(3600),
            ..Default::default()
        },
    )
    .expect("start writer");
    let h = writer.handle();
    let mut summary = Event::new(Kind::DeniedSummary, "-");
    summary.peer = Some("192.0.2.7".into());
    summary.detail =
        Some(r#"{"peer":"192.0.2.7","since":"2026-01-01T00:00:00Z","suppressed":41}"#.into());
    for e in [
        Event::new(Kind::ServerStart, "-"),
        call_event(Kind::Attempt, "r1", "-"),
        call_event(Kind::Denied, "r1", "-"),
        summary,
    ] {
        h.record_acked(e)
            .blocking_recv()
            .expect("writer answers")
            .expect("committed");
    }
    writer.shutdown();
    let v = verify(&db);
    assert!(v.chain_ok(), "{:?}", v.problems);
    assert_eq!(v.events, 4);
    assert!(v.unterminated.is_empty(), "{:?}", v.unterminated);
    let o = run(bin().args(["audit", "verify", "--db"]).arg(&db));
    assert_eq!(o.status.code(), Some(0), "{}", stderr_of(&o));
    let o = run(bin().args(["audit", "list", "--db"]).arg(&db));
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(
        stdout_of(&o).contains("denied_summary"),
        "{}",
        stdout_of(&o)
    );
}
