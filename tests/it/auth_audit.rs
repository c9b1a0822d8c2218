//! Access control and the custody trail, end to end against a real server
//! on 127.0.0.1:0: refusals and their `denied` events, roles per service,
//! tenant limits, the events of completed, cancelled and failed exports,
//! fail-closed behaviour when the audit store cannot write, the key never
//! leaking to disk or logs, mutual TLS identities, and `token new`.
//!
//! Most tests run the server in-process (`serve_on`) so they can reach its
//! audit database and TLS material directly; the ones about logs, files and
//! the CLI run the real binary as a child (`support::ServerProcess`).
//!
//! The audit store is made to fail by adding a `RAISE(ABORT)` trigger to
//! the audit database from a second connection: that works as root (file
//! modes do not stop root), fails the writer's very next commit instead of
//! after a busy timeout, and can target one event kind (`sealed`) to fail
//! an export after its chunks but before its key.

use crate::support::*;
use base64::Engine;
use case_export::audit::{Event, Kind, verify_log};
use case_export::client::{ClientError, ClientOptions, ExportClient};
use case_export::pb::audit_service_client::AuditServiceClient;
use case_export::pb::export_case_response::Message as Msg;
use case_export::pb::{ExportHeader, ListEventsRequest, VerifyLogRequest};
use case_export::server::{Config, ON_BEHALF_OF, PrincipalConfig, Role, TlsConfig, code_name};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;
use tonic::{Code, Status};

/// Bound on every wait for the audit trail or the health status. Generous:
/// it only turns a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(10);

const EXPORT_METHOD: &str = "/case_export.v1.ExportService/ExportCase";
const VERIFY_METHOD: &str = "/case_export.v1.AuditService/VerifyLog";
const LIST_METHOD: &str = "/case_export.v1.AuditService/ListEvents";

/// Token of a principal limited to the `north` tenant, added by the tests
/// about tenants.
const NORTH_TOKEN: &str = "north-only-token-51c7e2";
const PURPOSE: &str = "TICKET-4711: custody review";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A test config with `principals` and a short shutdown grace.
fn base_config(dir: &Path, case_db: &Path, principals: Vec<PrincipalConfig>) -> Config {
    Config {
        principals,
        shutdown_grace_secs: 2,
        ..test_config(case_db.to_path_buf(), dir)
    }
}

/// What a raw export stream delivered before it ended.
#[derive(Debug, Default)]
struct Outcome {
    header: Option<ExportHeader>,
    chunks: u64,
    key: bool,
    status: Option<Status>,
}

/// Runs one export with the generated client and records everything that
/// arrived: header, chunk count, whether a key came, and the error status.
async fn export_raw(url: &str, token: Option<&str>, case_id: &str) -> Outcome {
    let mut client = raw_client(url).await;
    let mut out = Outcome::default();
    let mut stream = match client
        .export_case(with_creds(request(case_id, PURPOSE), token, Some(ANALYST)))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => {
            out.status = Some(s);
            return out;
        }
    };
    loop {
        match stream.message().await {
            Ok(Some(m)) => match m.message {
                Some(Msg::Header(h)) => out.header = Some(h),
                Some(Msg::Chunk(_)) => out.chunks += 1,
                Some(Msg::Key(_)) => out.key = true,
                None => panic!("empty message"),
            },
            Ok(None) => return out,
            Err(s) => {
                out.status = Some(s);
                return out;
            }
        }
    }
}

/// Asserts that `call` is refused with `code`, and that the trail then
/// holds exactly one new call: an `attempt` carrying `reason` in its
/// detail, then a terminal `denied` with the code. Returns the message.
async fn expect_denied<T: std::fmt::Debug>(
    srv: &TestServer,
    call: impl std::future::Future<Output = Result<T, Status>>,
    code: Code,
    reason: &str,
    principal: Option<&str>,
    method: &str,
) -> String {
    srv.settle().await;
    let before = srv.last_seq();
    let status = call.await.expect_err("the call must be refused");
    assert_eq!(status.code(), code, "{status:?}");
    let all = srv
        .wait_events("the denied event", |ev| {
            ev.iter()
                .any(|(s, e, _)| *s > before && e.kind == Kind::Denied)
        })
        .await;
    let new: Vec<Event> = all
        .into_iter()
        .filter(|(s, _, _)| *s > before)
        .map(|(_, e, _)| e)
        .collect();
    assert_eq!(
        kinds(&new),
        [Kind::Attempt, Kind::Denied],
        "events of a refused call: {new:#?}"
    );
    let (attempt, denied) = (&new[0], &new[1]);
    assert_eq!(attempt.request_id, denied.request_id);
    assert!(!attempt.request_id.is_empty());
    assert_eq!(detail(attempt)["reason"], reason, "{attempt:#?}");
    assert_eq!(denied.code.as_deref(), Some(code_name(code)));
    for e in &new {
        assert_eq!(e.method.as_deref(), Some(method));
        assert_eq!(e.principal.as_deref(), principal);
        assert!(
            e.peer
                .as_deref()
                .is_some_and(|p| p.starts_with("127.0.0.1:"))
        );
        assert!(e.case_id.is_none() && e.export_id.is_none(), "{e:#?}");
    }
    status.message().to_string()
}

// ---------------------------------------------------------------------------
// Refusals and roles
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refused_exports_leave_attempt_then_denied_with_the_reason() {
    let seeded = seeded_db(&seed_of(2, 10));
    let (dir, db) = (&seeded.dir, &seeded.path);
    let srv = TestServer::start(base_config(dir.path(), db, principals())).await;
    let case = &seeded.case_ids[0];
    let mut c = raw_client(&srv.url).await;

    let no_token = expect_denied(
        &srv,
        c.export_case(with_creds(request(case, PURPOSE), None, Some(ANALYST))),
        Code::Unauthenticated,
        "no credentials",
        None,
        EXPORT_METHOD,
    )
    .await;
    let wrong_token = expect_denied(
        &srv,
        c.export_case(with_creds(
            request(case, PURPOSE),
            Some("cxt_not-a-known-token"),
            Some(ANALYST),
        )),
        Code::Unauthenticated,
        "unknown token",
        None,
        EXPORT_METHOD,
    )
    .await;
    // The caller learns nothing about why its credentials failed.
    assert_eq!(no_token, wrong_token);
    // A token one character off a real one is just as unknown.
    let mut near = TOKEN.to_string();
    near.pop();
    expect_denied(
        &srv,
        c.export_case(with_creds(
            request(case, PURPOSE),
            Some(&near),
            Some(ANALYST),
        )),
        Code::Unauthenticated,
        "unknown token",
        None,
        EXPORT_METHOD,
    )
    .await;
    let role = expect_denied(
        &srv,
        c.export_case(with_creds(
            request(case, PURPOSE),
            Some(AUDITOR_TOKEN),
            Some(ANALYST),
        )),
        Code::PermissionDenied,
        "missing role",
        Some("auditor-only"),
        EXPORT_METHOD,
    )
    .await;
    assert!(role.contains("exporter"), "{role}");
    let obo = expect_denied(
        &srv,
        c.export_case(with_creds(
            request(case, PURPOSE),
            Some(EXPORTER_TOKEN),
            None,
        )),
        Code::InvalidArgument,
        "missing on-behalf-of",
        Some("exporter-only"),
        EXPORT_METHOD,
    )
    .await;
    assert!(obo.contains(ON_BEHALF_OF), "{obo}");
    let long = "a".repeat(201);
    expect_denied(
        &srv,
        c.export_case(with_creds(request(case, PURPOSE), Some(TOKEN), Some(&long))),
        Code::InvalidArgument,
        "missing on-behalf-of",
        Some("test-service"),
        EXPORT_METHOD,
    )
    .await;

    // None of them got as far as the case: nothing started or sealed.
    let all = srv.events();
    assert!(
        !all.iter()
            .any(|(_, e, _)| matches!(e.kind, Kind::Started | Kind::Sealed | Kind::Completed)),
        "{all:#?}"
    );
    let v = verify_log(
        &case_export::audit::open_log_read_only(srv.audit_db()).expect("open"),
        &[],
        None,
    )
    .expect("verify");
    assert!(v.chain_ok(), "{:?}", v.problems);
    assert!(v.unterminated.is_empty(), "{:?}", v.unterminated);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn audit_service_is_for_the_auditor_role_only() {
    let seeded = seeded_db(&seed_of(2, 10));
    let (dir, db) = (&seeded.dir, &seeded.path);
    let srv = TestServer::start(base_config(dir.path(), db, principals())).await;
    // One export, so the trail holds a case's events to list.
    let receipt = ExportClient::connect_with(&srv.url, client_options(Some(TOKEN), Some("a.b")))
        .await
        .expect("connect")
        .export_case(
            &seeded.case_ids[0],
            PURPOSE,
            &mut tokio::io::sink(),
            |_, _| {},
        )
        .await
        .expect("export");
    srv.wait_export_end(&receipt.case_id).await;

    let mut audit = AuditServiceClient::new(channel(&srv.url, false).await);
    // An auditor needs no x-on-behalf-of.
    let v = audit
        .verify_log(with_creds(VerifyLogRequest {}, Some(AUDITOR_TOKEN), None))
        .await
        .expect("auditor may verify")
        .into_inner();
    assert!(v.ok, "{:?}", v.problems);
    assert!(v.events >= 5 && v.head_seq == v.events, "{v:?}");
    assert_eq!(v.head_hash.len(), 64);
    let mut stream = audit
        .list_events(with_creds(
            ListEventsRequest {
                case_id: receipt.case_id.clone(),
                ..Default::default()
            },
            Some(AUDITOR_TOKEN),
            None,
        ))
        .await
        .expect("auditor may list")
        .into_inner();
    let mut listed = Vec::new();
    while let Some(e) = stream.message().await.expect("list stream") {
        listed.push(e);
    }
    let listed_kinds: Vec<&str> = listed.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        listed_kinds,
        ["started", "sealed", "completed"],
        "{listed:#?}"
    );
    assert!(listed.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(listed.iter().all(|e| e.case_id == receipt.case_id
        && e.principal == "test-service"
        && e.on_behalf_of == "a.b"
        && e.hash.len() == 64));

    // An exporter-only principal may not read the trail.
    expect_denied(
        &srv,
        audit.verify_log(with_creds(
            VerifyLogRequest {},
            Some(EXPORTER_TOKEN),
            Some(ANALYST),
        )),
        Code::PermissionDenied,
        "missing role",
        Some("exporter-only"),
        VERIFY_METHOD,
    )
    .await;
    expect_denied(
        &srv,
        audit.list_events(with_creds(
            ListEventsRequest::default(),
            Some(EXPORTER_TOKEN),
            Some(ANALYST),
        )),
        Code::PermissionDenied,
        "missing role",
        Some("exporter-only"),
        LIST_METHOD,
    )
    .await;
    expect_denied(
        &srv,
        audit.list_events(with_creds(ListEventsRequest::default(), None, None)),
        Code::Unauthenticated,
        "no credentials",
        None,
        LIST_METHOD,
    )
    .await;
    // The auditor's own reads are on the record and ended OK.
    let all = srv.events();
    let reads: Vec<&Event> = all
        .iter()
        .map(|(_, e, _)| e)
        .filter(|e| e.principal.as_deref() == Some("auditor-only") && e.kind == Kind::Completed)
        .collect();
    assert_eq!(reads.len(), 2, "{all:#?}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_limited_principal_sees_other_tenants_cases_as_missing() {
    let seeded = seeded_db(&seed_of(6, 10));
    let (dir, db) = (&seeded.dir, &seeded.path);
    let (north, south) = (
        seeded.case_of_tenant("north"),
        seeded.case_of_tenant("south"),
    );
    let mut principals = principals();
    principals.push(PrincipalConfig {
        tenants: Some(vec!["north".into()]),
        ..principal("north-only", Some(NORTH_TOKEN), &[Role::Exporter])
    });
    let srv = TestServer::start(base_config(dir.path(), db, principals)).await;

    let other_tenant = export_raw(&srv.url, Some(NORTH_TOKEN), &south).await;
    let missing = export_raw(
        &srv.url,
        Some(NORTH_TOKEN),
        "00000000-0000-4000-8000-000000000000",
    )
    .await;
    let (a, b) = (
        other_tenant.status.expect("refused"),
        missing.status.expect("refused"),
    );
    assert_eq!(a.code(), Code::NotFound, "{a:?}");
    assert_eq!(b.code(), Code::NotFound, "{b:?}");
    assert_eq!(
        a.message(),
        b.message(),
        "the two NOT_FOUNDs must not differ"
    );
    assert!(other_tenant.header.is_none() && !other_tenant.key);

    // The case exists: its own tenant's principal and an unrestricted one
    // both export their cases.
    let own = export_raw(&srv.url, Some(NORTH_TOKEN), &north).await;
    assert!(own.status.is_none() && own.key, "{own:?}");
    let unrestricted = export_raw(&srv.url, Some(TOKEN), &south).await;
    assert!(
        unrestricted.status.is_none() && unrestricted.key,
        "{unrestricted:?}"
    );

    // The refusal is on the record as a failed NOT_FOUND for that case.
    let all = srv
        .wait_events("four terminal events", |ev| {
            ev.iter().filter(|(_, e, _)| e.kind.is_terminal()).count() == 4
        })
        .await;
    let north_only: Vec<(Option<&str>, Kind, Option<&str>)> = all
        .iter()
        .map(|(_, e, _)| e)
        .filter(|e| e.principal.as_deref() == Some("north-only") && e.kind.is_terminal())
        .map(|e| (e.case_id.as_deref(), e.kind, e.code.as_deref()))
        .collect();
    assert_eq!(
        north_only,
        [
            (Some(south.as_str()), Kind::Failed, Some("NOT_FOUND")),
            (
                Some("00000000-0000-4000-8000-000000000000"),
                Kind::Failed,
                Some("NOT_FOUND")
            ),
            (Some(north.as_str()), Kind::Completed, Some("OK")),
        ]
    );
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// Completed, cancelled and failed exports
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn completed_export_leaves_attempt_started_sealed_completed() {
    let seeded = seeded_db(&seed_of(2, 40));
    let (dir, db) = (&seeded.dir, &seeded.path);
    let mut cfg = base_config(dir.path(), db, principals());
    cfg.chunk_size = 16 * 1024;
    let srv = TestServer::start(cfg).await;
    let out = TempDir::new().expect("out dir");
    let case = &seeded.case_ids[1];
    let receipt = ExportClient::connect_with(&srv.url, client_options(Some(TOKEN), Some(ANALYST)))
        .await
        .expect("connect")
        .export_to_dir(case, PURPOSE, out.path(), |_, _| {})
        .await
        .expect("export");
    assert!(receipt.chunks > 2, "several chunks: {}", receipt.chunks);
    let enc = receipt.path.clone().expect("written to the directory");

    let evs = srv.wait_export_end(case).await;
    assert_eq!(
        kinds(&evs),
        [Kind::Attempt, Kind::Started, Kind::Sealed, Kind::Completed],
        "{evs:#?}"
    );
    for e in &evs {
        assert_eq!(e.method.as_deref(), Some(EXPORT_METHOD));
        assert_eq!(e.principal.as_deref(), Some("test-service"));
        assert_eq!(e.on_behalf_of.as_deref(), Some(ANALYST));
        assert!(e.tls_identity.is_none());
    }
    for e in &evs[1..] {
        assert_eq!(e.case_id.as_deref(), Some(case.as_str()));
        assert_eq!(e.purpose.as_deref(), Some(PURPOSE));
        assert_eq!(e.export_id.as_deref(), Some(receipt.export_id.as_str()));
    }
    assert_eq!(evs[3].code.as_deref(), Some("OK"));

    let sealed = detail(&evs[2]);
    let file_sha = sha256_file(&enc);
    assert_eq!(sealed["ciphertext_sha256"], file_sha.as_str());
    assert_eq!(receipt.ciphertext_sha256, file_sha);
    let file_len = std::fs::metadata(&enc).expect("enc metadata").len();
    assert_eq!(sealed["ciphertext_size"], file_len);
    assert_eq!(sealed["chunk_count"], receipt.chunks);
    assert_eq!(sealed["plaintext_size"], receipt.plaintext_size);
    let audited: BTreeMap<String, u64> =
        serde_json::from_value(sealed["row_counts"].clone()).expect("row_counts object");
    let received: BTreeMap<String, u64> = receipt.row_counts.iter().cloned().collect();
    assert_eq!(audited, received);
    assert!(received.get("cases") == Some(&1), "{received:?}");
    // The terminal event repeats the custody figures.
    assert_eq!(detail(&evs[3])["ciphertext_sha256"], file_sha.as_str());

    let conn = case_export::audit::open_log_read_only(srv.audit_db()).expect("open");
    let v = verify_log(&conn, &[], None).expect("verify");
    assert!(v.chain_ok() && v.unterminated.is_empty(), "{v:?}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dropped_stream_is_recorded_as_cancelled() {
    let seeded = seeded_db(&seed_of(2, 800));
    let (dir, db) = (&seeded.dir, &seeded.path);
    let mut cfg = base_config(dir.path(), db, principals());
    cfg.chunk_size = 4096;
    let srv = TestServer::start(cfg).await;
    let case = &seeded.case_ids[0];
    {
        let mut client = raw_client_small_window(&srv.url).await;
        let mut stream = client
            .export_case(authed(request(case, PURPOSE)))
            .await
            .expect("export starts")
            .into_inner();
        let first = stream.message().await.expect("header").expect("header");
        let Some(Msg::Header(h)) = first.message else {
            panic!("first message is not the header")
        };
        // Far more than the window and the server's buffers can hold.
        assert!(
            h.chunk_count > 60,
            "case too small: {} chunks",
            h.chunk_count
        );
        for i in 0..2 {
            let m = stream.message().await.expect("chunk").expect("chunk");
            assert!(matches!(m.message, Some(Msg::Chunk(c)) if c.index == i));
        }
        // Dropping the stream and the channel resets the call.
    }
    let evs = srv.wait_export_end(case).await;
    assert_eq!(
        kinds(&evs),
        [Kind::Attempt, Kind::Started, Kind::Cancelled],
        "{evs:#?}"
    );
    assert_eq!(evs[2].code.as_deref(), Some("CANCELLED"));
    assert_eq!(evs[2].case_id.as_deref(), Some(case.as_str()));
    // Nothing more is written for that call, even after a while of work.
    let after = srv.events();
    assert!(
        !after
            .iter()
            .any(|(_, e, _)| e.request_id == evs[0].request_id
                && matches!(e.kind, Kind::Sealed | Kind::Completed))
    );
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// Fail closed on a failing audit store
// ---------------------------------------------------------------------------

/// Makes every insert into the trail fail (`kind = None`) or only inserts
/// of one kind, until [`heal_store`].
fn break_store(audit_db: &Path, kind: Option<&str>) {
    let conn = rusqlite::Connection::open(audit_db).expect("open audit db");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    let when = kind.map_or(String::new(), |k| format!("WHEN NEW.kind = '{k}'"));
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE;
         DROP TRIGGER IF EXISTS test_fault;
         CREATE TRIGGER test_fault BEFORE INSERT ON audit_events {when}
         BEGIN SELECT RAISE(ABORT, 'injected audit store fault'); END;
         COMMIT;"
    ))
    .expect("install the fault");
}

fn heal_store(audit_db: &Path) {
    let conn = rusqlite::Connection::open(audit_db).expect("open audit db");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    conn.execute_batch("DROP TRIGGER test_fault")
        .expect("remove the fault");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failing_audit_store_releases_no_key_and_recovers() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let seeded = seeded_db(&seed_of(3, 20));
    let (dir, db) = (&seeded.dir, &seeded.path);
    let mut cfg = base_config(dir.path(), db, principals());
    cfg.chunk_size = 16 * 1024;
    let srv = TestServer::start(cfg).await;
    // The server is up (its start event is committed) before the fault.
    srv.wait_events("server start", |ev| !ev.is_empty()).await;

    // 1. Nothing can be written: the attempt is not on record, so the
    //    export is refused before anything is read.
    break_store(srv.audit_db(), None);
    let whole = export_raw(&srv.url, Some(TOKEN), &seeded.case_ids[0]).await;
    let s = whole.status.expect("refused");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().contains("audit"), "{s:?}");
    assert!(whole.header.is_none() && whole.chunks == 0 && !whole.key);
    wait_export_health(&srv.url, ServingStatus::NotServing, DEADLINE).await;

    // 2. Only the custody record fails: every chunk went out, the key did
    //    not, and the call ends UNAVAILABLE.
    break_store(srv.audit_db(), Some("sealed"));
    let late = export_raw(&srv.url, Some(TOKEN), &seeded.case_ids[1]).await;
    let s = late.status.expect("the export must fail");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    let h = late.header.expect("header was sent");
    assert_eq!(late.chunks, h.chunk_count, "all chunks were sent");
    assert!(!late.key, "no key may leave without its custody record");

    // The library client says the same and writes no file.
    let out = TempDir::new().expect("out dir");
    let e = ExportClient::connect_with(&srv.url, client_options(Some(TOKEN), Some(ANALYST)))
        .await
        .expect("connect")
        .export_to_dir(&seeded.case_ids[2], PURPOSE, out.path(), |_, _| {})
        .await
        .expect_err("no key, no export");
    assert!(matches!(e, ClientError::Unavailable(_)), "{e:?}");
    assert!(dir_entries(out.path()).is_empty());

    // 3. The fault is removed: the queued events are written, a new export
    //    succeeds and the chain is intact.
    heal_store(srv.audit_db());
    wait_export_health(&srv.url, ServingStatus::Serving, DEADLINE).await;
    let ok = export_raw(&srv.url, Some(TOKEN), &seeded.case_ids[0]).await;
    assert!(ok.status.is_none() && ok.key, "{ok:?}");

    let all = srv
        .wait_events("every call ended on record", |ev| {
            ev.iter().filter(|(_, e, _)| e.kind.is_terminal()).count() == 4
        })
        .await;
    let conn = case_export::audit::open_log_read_only(srv.audit_db()).expect("open");
    let v = verify_log(&conn, &[], None).expect("verify");
    assert!(v.chain_ok(), "{:?}", v.problems);
    assert!(v.unterminated.is_empty(), "{:?}", v.unterminated);
    let ends: Vec<(Kind, Option<&str>)> = all
        .iter()
        .filter(|(_, e, _)| e.kind.is_terminal())
        .map(|(_, e, _)| (e.kind, e.code.as_deref()))
        .collect();
    assert_eq!(
        ends,
        [
            (Kind::Failed, Some("UNAVAILABLE")),
            (Kind::Failed, Some("UNAVAILABLE")),
            (Kind::Failed, Some("UNAVAILABLE")),
            (Kind::Completed, Some("OK")),
        ]
    );
    // Exactly one key was released: one `completed` export, after healing.
    assert_eq!(
        all.iter()
            .filter(|(_, e, _)| e.kind == Kind::Completed)
            .count(),
        1
    );
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// The key never leaks
// ---------------------------------------------------------------------------

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("dir entry").path();
        let meta = std::fs::symlink_metadata(&path).expect("metadata");
        if meta.is_dir() {
            files_under(&path, out);
        } else if meta.is_file() {
            out.push(path);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Anything shaped like a Fernet key: a run of exactly 43 base64 characters
/// then '=', decoding to 32 bytes (URL-safe or standard alphabet).
/// Chunk tokens are far longer runs, hashes and ids are hex without '='.
fn key_shaped(hay: &[u8]) -> Option<String> {
    let b64 = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'+' | b'/');
    let mut i = 0;
    while i < hay.len() {
        if !b64(hay[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < hay.len() && b64(hay[i]) {
            i += 1;
        }
        if i - start == 43 && hay.get(i) == Some(&b'=') && hay.get(i + 1) != Some(&b'=') {
            let text = String::from_utf8_lossy(&hay[start..=i]).into_owned();
            let url = base64::engine::general_purpose::URL_SAFE.decode(&text);
            let std = base64::engine::general_purpose::STANDARD.decode(&text);
            if url.or(std).is_ok_and(|b| b.len() == 32) {
                return Some(text);
            }
        }
    }
    None
}

/// Fails if any file under `dirs` holds one of `needles` or anything
/// shaped like a Fernet key; returns how many files were scanned.
fn assert_no_key_in(dirs: &[&Path], needles: &[(&str, Vec<u8>)]) -> usize {
    let mut files = Vec::new();
    for d in dirs {
        files_under(d, &mut files);
    }
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        for (what, needle) in needles {
            assert!(
                !contains(&bytes, needle),
                "the key ({what}) is in {}",
                f.display()
            );
        }
        if let Some(k) = key_shaped(&bytes) {
            panic!("a key-shaped string {k:?} is in {}", f.display());
        }
    }
    files.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_key_is_nowhere_on_disk_or_in_trace_logs() {
    let cwd = TempDir::new().expect("server cwd");
    let tmp = TempDir::new().expect("server TMPDIR");
    let out = TempDir::new().expect("export dir");
    let seeded = seeded_db(&seed_of(3, 800));
    let (work, db) = (&seeded.dir, &seeded.path);
    let config = write_test_config(work.path(), 0);
    let audit_db = work.path().join("audit.db");
    let server = ServerProcess::start_custom(
        &config,
        db,
        &audit_db,
        work.path(),
        &["--chunk-size", "4096"],
        |c| {
            c.env("RUST_LOG", "trace")
                .env("TMPDIR", tmp.path())
                .current_dir(cwd.path());
        },
    );
    let url = server.url();

    // Completed: the one key the test gets to see.
    let receipt = ExportClient::connect_with(&url, test_client_options())
        .await
        .expect("connect")
        .export_to_dir(&seeded.case_ids[0], PURPOSE, out.path(), |_, _| {})
        .await
        .expect("export");
    let key_text = receipt
        .key
        .as_ref()
        .expect("an export without recipients has its raw key")
        .expose_fernet_key()
        .to_string();
    let raw = *receipt
        .key
        .as_ref()
        .expect("an export without recipients has its raw key")
        .expose_bytes();
    assert_eq!(
        base64::engine::general_purpose::URL_SAFE
            .decode(&key_text)
            .expect("key is base64url"),
        raw
    );

    // Cancelled: header and a couple of chunks, then the client goes away.
    {
        let mut c = raw_client_small_window(&url).await;
        let mut s = c
            .export_case(authed(request(&seeded.case_ids[1], PURPOSE)))
            .await
            .expect("export starts")
            .into_inner();
        for _ in 0..3 {
            s.message().await.expect("message").expect("message");
        }
    }
    wait_trail(&audit_db, "the cancelled event", |ev| {
        ev.iter().any(|(_, e, _)| e.kind == Kind::Cancelled)
    })
    .await;

    // Failed after its key was made: the custody record cannot be written.
    break_store(&audit_db, Some("sealed"));
    let failed = export_raw(&url, Some(TOKEN), &seeded.case_ids[2]).await;
    assert_eq!(
        failed.status.as_ref().map(Status::code),
        Some(Code::Unavailable)
    );
    assert!(failed.chunks > 0 && !failed.key, "{failed:?}");
    heal_store(&audit_db);
    let all = wait_trail(&audit_db, "three export ends", |ev| {
        ev.iter().filter(|(_, e, _)| e.kind.is_terminal()).count() == 3
    })
    .await;
    let ends: Vec<Kind> = all
        .iter()
        .filter(|(_, e, _)| e.kind.is_terminal())
        .map(|(_, e, _)| e.kind)
        .collect();
    assert_eq!(ends, [Kind::Completed, Kind::Cancelled, Kind::Failed]);

    let needles: Vec<(&str, Vec<u8>)> = vec![
        ("base64url", key_text.as_bytes().to_vec()),
        (
            "base64url without padding",
            key_text.trim_end_matches('=').as_bytes().to_vec(),
        ),
        (
            "standard base64",
            base64::engine::general_purpose::STANDARD
                .encode(raw)
                .into_bytes(),
        ),
        ("hex", hex::encode(raw).into_bytes()),
        ("HEX", hex::encode_upper(raw).into_bytes()),
        ("raw bytes", raw.to_vec()),
    ];
    // The scanner does find a key where there is one.
    let planted = format!("log line fernet_key={key_text} end");
    assert!(key_shaped(planted.as_bytes()).is_some());
    assert!(contains(planted.as_bytes(), &needles[0].1));

    // The trace log is real and talks about these exports.
    let log = std::fs::read_to_string(server.log_path()).expect("server log");
    assert!(log.contains("TRACE"), "trace logging is on");
    assert!(log.contains(&receipt.export_id), "log mentions the export");
    assert!(log.contains("key withheld"), "log mentions the failure");
    let enc = receipt.path.clone().expect("enc path");
    assert!(enc.starts_with(out.path()));
    assert!(std::fs::metadata(work.path().join("audit.db-wal")).is_ok());

    let dirs = [work.path(), cwd.path(), tmp.path(), out.path()];
    let scanned = assert_no_key_in(&dirs, &needles);
    assert!(scanned >= 6, "scanned {scanned} files");
    // And after a clean stop, when the WAL has been folded into the db.
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert_no_key_in(&dirs, &needles);
}

// ---------------------------------------------------------------------------
// Mutual TLS
// ---------------------------------------------------------------------------

const SPIFFE_ID: &str = "spiffe://example.org/svc/case-mgmt";

struct Ca {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn make_ca(name: &str) -> Ca {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("ca key");
    let cert = p.self_signed(&key).expect("self-signed ca");
    Ca {
        pem: cert.pem(),
        issuer: rcgen::Issuer::new(p, key),
    }
}

/// A leaf certificate and key (PEM) signed by `ca`.
fn make_leaf(ca: &Ca, cn: &str, sans: Vec<rcgen::SanType>, server: bool) -> (String, String) {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair};
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.subject_alt_names = sans;
    p.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    let key = KeyPair::generate().expect("leaf key");
    let cert = p.signed_by(&key, &ca.issuer).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

fn uri(u: &str) -> rcgen::SanType {
    rcgen::SanType::URI(u.try_into().expect("ia5 uri"))
}

fn tls_options(ca: &Ca, identity: Option<&(String, String)>, token: Option<&str>) -> ClientOptions {
    ClientOptions {
        ca_pem: Some(ca.pem.clone().into_bytes()),
        identity_pem: identity.map(|(c, k)| (c.clone().into_bytes(), k.clone().into_bytes())),
        domain: Some("localhost".into()),
        ..client_options(token, Some(ANALYST))
    }
}

async fn tls_export(url: &str, opts: ClientOptions, case_id: &str) -> Result<String, ClientError> {
    let mut c = ExportClient::connect_with(url, opts).await?;
    let r = c
        .export_case(case_id, PURPOSE, &mut tokio::io::sink(), |_, _| {})
        .await?;
    Ok(r.export_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_tls_identities_end_to_end() {
    use rcgen::SanType;
    let seeded = seeded_db(&seed_of(2, 10));
    let (dir, db) = (&seeded.dir, &seeded.path);
    let ca = make_ca("case-export test CA");
    let rogue = make_ca("some other CA");
    let server_leaf = make_leaf(
        &ca,
        "localhost",
        vec![
            SanType::DnsName("localhost".try_into().expect("dns")),
            SanType::IpAddress([127, 0, 0, 1].into()),
        ],
        true,
    );
    let client = make_leaf(&ca, "case-mgmt", vec![uri(SPIFFE_ID)], false);
    let stranger = make_leaf(
        &ca,
        "case-mgmt",
        vec![uri("spiffe://example.org/svc/unknown")],
        false,
    );
    let cn_only = make_leaf(&ca, "legacy-batch", vec![], false);
    // Same identity, wrong issuer.
    let impostor = make_leaf(&rogue, "case-mgmt", vec![uri(SPIFFE_ID)], false);

    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write pem");
        p
    };
    let tls = TlsConfig {
        cert: write("server.pem", &server_leaf.0),
        key: write("server.key", &server_leaf.1),
        client_ca: Some(write("ca.pem", &ca.pem)),
    };
    let mut principals = principals();
    principals.push(PrincipalConfig {
        tls_identity: Some(SPIFFE_ID.into()),
        ..principal("case-mgmt", None, &[Role::Exporter])
    });
    principals.push(PrincipalConfig {
        tls_identity: Some("cn:legacy-batch".into()),
        ..principal("legacy-batch", None, &[Role::Exporter])
    });
    let mut cfg = base_config(dir.path(), db, principals);
    cfg.tls = Some(tls);
    let srv = TestServer::start(cfg).await;
    let url = format!("https://localhost:{}", srv.addr.port());
    let case = &seeded.case_ids[0];

    // The SPIFFE identity names the principal; no token is sent.
    let export_id = tls_export(&url, tls_options(&ca, Some(&client), None), case)
        .await
        .expect("mTLS export");
    let all = srv
        .wait_events("the mTLS export's end", |ev| {
            ev.iter().any(|(_, e, _)| e.kind == Kind::Completed)
        })
        .await;
    let rid = all
        .iter()
        .find(|(_, e, _)| e.export_id.as_deref() == Some(export_id.as_str()))
        .map(|(_, e, _)| e.request_id.clone())
        .expect("events of the export");
    let evs = of_request(&all, &rid);
    assert_eq!(
        kinds(&evs),
        [Kind::Attempt, Kind::Started, Kind::Sealed, Kind::Completed]
    );
    for e in &evs {
        assert_eq!(e.tls_identity.as_deref(), Some(SPIFFE_ID), "{e:#?}");
        assert_eq!(e.principal.as_deref(), Some("case-mgmt"));
    }

    // A `cn:` identity names the principal by the subject CN.
    tls_export(&url, tls_options(&ca, Some(&cn_only), None), case)
        .await
        .expect("CN identity export");

    // A certificate of the right CA naming no principal is refused and
    // the refusal is on record with the identity it presented.
    srv.settle().await;
    let before = srv.last_seq();
    let e = tls_export(&url, tls_options(&ca, Some(&stranger), None), case)
        .await
        .expect_err("unknown identity");
    assert!(matches!(e, ClientError::Unauthenticated(_)), "{e:?}");
    let all = srv
        .wait_events("the stranger's denial", |ev| {
            ev.iter()
                .any(|(s, e, _)| *s > before && e.kind == Kind::Denied)
        })
        .await;
    let new: Vec<Event> = all
        .into_iter()
        .filter(|(s, _, _)| *s > before)
        .map(|(_, e, _)| e)
        .collect();
    assert_eq!(kinds(&new), [Kind::Attempt, Kind::Denied]);
    assert_eq!(
        new[0].tls_identity.as_deref(),
        Some("spiffe://example.org/svc/unknown")
    );
    assert_eq!(
        detail(&new[0])["reason"],
        "certificate identity names no principal"
    );

    // A certificate from another CA, even naming a known identity, gets
    // nowhere: the handshake fails, or the call is denied.
    srv.settle().await;
    let before = srv.last_seq();
    let e = tls_export(&url, tls_options(&ca, Some(&impostor), None), case)
        .await
        .expect_err("a certificate of another CA must not work");
    assert!(
        !matches!(e, ClientError::Protocol(_) | ClientError::Io(_)),
        "{e:?}"
    );
    // Give a denial, if there is one, the time to land, using a later call
    // that is itself recorded as a marker.
    tls_export(&url, tls_options(&ca, None, Some(TOKEN)), case)
        .await
        .expect("token over TLS without a client certificate");
    let all = srv
        .wait_events("the token export's end", |ev| {
            ev.iter()
                .filter(|(s, e, _)| *s > before && e.kind == Kind::Completed)
                .count()
                == 1
        })
        .await;
    let new: Vec<&Event> = all
        .iter()
        .filter(|(s, _, _)| *s > before)
        .map(|(_, e, _)| e)
        .collect();
    let impostor_events: Vec<&&Event> = new
        .iter()
        .filter(|e| e.principal.as_deref() != Some("test-service"))
        .collect();
    assert!(
        impostor_events
            .iter()
            .all(|e| matches!(e.kind, Kind::Attempt | Kind::Denied)),
        "{impostor_events:#?}"
    );
    // The token caller without a certificate: right principal, no identity.
    let token_call: Vec<&&Event> = new
        .iter()
        .filter(|e| e.principal.as_deref() == Some("test-service"))
        .collect();
    assert_eq!(token_call.len(), 4, "{token_call:#?}");
    assert!(token_call.iter().all(|e| e.tls_identity.is_none()));

    // No certificate and no token: refused.
    let e = tls_export(&url, tls_options(&ca, None, None), case)
        .await
        .expect_err("no credentials");
    assert!(matches!(e, ClientError::Unauthenticated(_)), "{e:?}");
    srv.stop().await;
}

/// A server with TLS (mutual TLS optional) under `ca`, and its https URL.
async fn tls_server(
    dir: &Path,
    db: &Path,
    ca: &Ca,
    principals: Vec<PrincipalConfig>,
) -> (TestServer, String) {
    use rcgen::SanType;
    let server_leaf = make_leaf(
        ca,
        "localhost",
        vec![
            SanType::DnsName("localhost".try_into().expect("dns")),
            SanType::IpAddress([127, 0, 0, 1].into()),
        ],
        true,
    );
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write pem");
        p
    };
    let mut cfg = base_config(dir, db, principals);
    cfg.tls = Some(TlsConfig {
        cert: write("server.pem", &server_leaf.0),
        key: write("server.key", &server_leaf.1),
        client_ca: Some(write("ca.pem", &ca.pem)),
    });
    let srv = TestServer::start(cfg).await;
    let url = format!("https://localhost:{}", srv.addr.port());
    (srv, url)
}

/// The events written after `before`, once one of them is `until`.
async fn events_after(srv: &TestServer, before: u64, until: Kind) -> Vec<Event> {
    srv.wait_events("the call's end", |ev| {
        ev.iter().any(|(s, e, _)| *s > before && e.kind == until)
    })
    .await
    .into_iter()
    .filter(|(s, _, _)| *s > before)
    .map(|(_, e, _)| e)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_identities_are_typed_and_a_cn_spelling_a_spiffe_id_is_refused() {
    const SVC_A: &str = "spiffe://example.org/svc-a";
    let seeded = seeded_db(&seed_of(2, 10));
    let (dir, db) = (&seeded.dir, &seeded.path);
    let ca = make_ca("case-export test CA");
    let principals = vec![
        PrincipalConfig {
            tls_identity: Some(SVC_A.into()),
            ..principal("svc-a", None, &[Role::Exporter])
        },
        PrincipalConfig {
            tls_identity: Some("cn:legacy-batch".into()),
            ..principal("batch", None, &[Role::Exporter])
        },
    ];
    let (srv, url) = tls_server(dir.path(), db, &ca, principals).await;
    let case = &seeded.case_ids[0];
    // One certificate per case, all from the server's own client CA.
    let by_uri = make_leaf(&ca, "anything", vec![uri(SVC_A)], false);
    let by_cn = make_leaf(&ca, "legacy-batch", vec![], false);
    let look_alike = make_leaf(&ca, SVC_A, vec![], false);
    let both = make_leaf(&ca, "legacy-batch", vec![uri(SVC_A)], false);
    let huge_uri = format!("spiffe://example.org/{}", "x".repeat(3000));
    let huge = make_leaf(&ca, "huge", vec![uri(&huge_uri)], false);

    // The SPIFFE principal by its URI SAN; the CN principal by its CN. The
    // trail says which kind matched.
    for (leaf, name, id) in [
        (&by_uri, "svc-a", SVC_A),
        (&by_cn, "batch", "cn:legacy-batch"),
    ] {
        srv.settle().await;
        let before = srv.last_seq();
        tls_export(&url, tls_options(&ca, Some(leaf), None), case)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let evs = events_after(&srv, before, Kind::Completed).await;
        assert_eq!(
            kinds(&evs),
            [Kind::Attempt, Kind::Started, Kind::Sealed, Kind::Completed]
        );
        for e in &evs {
            assert_eq!(e.principal.as_deref(), Some(name), "{e:#?}");
            assert_eq!(e.tls_identity.as_deref(), Some(id), "{e:#?}");
        }
    }

    // The look-alike: CN = svc-a's SPIFFE id, no URI SAN. Refused, and on
    // record as denied with the CN it presented, typed as a CN.
    let refused = [
        (
            &look_alike,
            format!("cn:{SVC_A}"),
            "certificate identity names no principal",
        ),
        // URI SAN of one principal and CN of another: neither.
        (
            &both,
            SVC_A.to_string(),
            "certificate identity names several principals",
        ),
    ];
    for (leaf, shown, reason) in refused {
        srv.settle().await;
        let before = srv.last_seq();
        let e = tls_export(&url, tls_options(&ca, Some(leaf), None), case)
            .await
            .expect_err("must be refused");
        assert!(matches!(e, ClientError::Unauthenticated(_)), "{e:?}");
        let evs = events_after(&srv, before, Kind::Denied).await;
        assert_eq!(kinds(&evs), [Kind::Attempt, Kind::Denied], "{evs:#?}");
        assert_eq!(detail(&evs[0])["reason"], reason);
        assert_eq!(evs[1].code.as_deref(), Some("UNAUTHENTICATED"));
        for e in &evs {
            assert!(e.principal.is_none(), "{e:#?}");
            assert_eq!(e.tls_identity.as_deref(), Some(shown.as_str()));
        }
    }

    // A certificate with a 3 KB name: what is stored of it is bounded.
    srv.settle().await;
    let before = srv.last_seq();
    let e = tls_export(&url, tls_options(&ca, Some(&huge), None), case)
        .await
        .expect_err("names no principal");
    assert!(matches!(e, ClientError::Unauthenticated(_)), "{e:?}");
    let evs = events_after(&srv, before, Kind::Denied).await;
    let want = format!(
        "invalid ({} bytes) sha256:{}",
        huge_uri.len(),
        hex::encode(Sha256::digest(huge_uri.as_bytes()))
    );
    for e in &evs {
        assert_eq!(e.tls_identity.as_deref(), Some(want.as_str()));
    }
    srv.stop().await;
}

#[test]
fn serve_refuses_untyped_and_look_alike_tls_identities() {
    let dir = TempDir::new().expect("tempdir");
    for (id, says) in [
        ("legacy-batch", "write \"cn:legacy-batch\""),
        (
            "cn:spiffe://example.org/svc-a",
            "write tls_identity = \"spiffe://example.org/svc-a\"",
        ),
    ] {
        let config = dir.path().join("c.toml");
        std::fs::write(
            &config,
            format!(
                "[[principals]]\nname = \"svc-x\"\ntls_identity = {id:?}\nroles = [\"exporter\"]\n"
            ),
        )
        .expect("write config");
        let o = run(bin().arg("serve").arg("--config").arg(&config));
        let line = one_error_line(&o);
        assert!(line.contains("\"svc-x\""), "{line}");
        assert!(line.contains("principals.tls_identity"), "{line}");
        assert!(line.contains(says), "{id}: {line}");
    }
}

/// A unary call of any path with an empty message, as a scanner would
/// make it.
async fn call_path(url: &str, path: &str, token: Option<&str>) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel(url, false).await);
    grpc.ready().await.expect("ready");
    let path: http::uri::PathAndQuery = path.parse().expect("path");
    grpc.unary::<(), (), _>(
        with_creds((), token, Some(ANALYST)),
        path,
        tonic_prost::ProstCodec::default(),
    )
    .await
    .expect_err("no such method")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_methods_are_recorded_bounded_and_answered_unimplemented() {
    let seeded = seeded_db(&seed_of(1, 5));
    let (dir, db) = (&seeded.dir, &seeded.path);
    let srv = TestServer::start(base_config(dir.path(), db, principals())).await;
    let long = format!("/case_export.v1.ExportService/{}", "A".repeat(10_000));
    for (path, token, stored) in [
        // An unknown method of a known service, with and without a token.
        ("/case_export.v1.ExportService/DeleteCase", None, None),
        (
            "/case_export.v1.ExportService/DeleteCase",
            Some(TOKEN),
            None,
        ),
        // A service that does not exist: tonic alone answered it unseen.
        ("/admin.v1.Shell/Exec", None, None),
        (long.as_str(), None, Some(&long[..128])),
    ] {
        srv.settle().await;
        let before = srv.last_seq();
        let s = call_path(&srv.url, path, token).await;
        assert_eq!(s.code(), Code::Unimplemented, "{path}: {s:?}");
        let evs = events_after(&srv, before, Kind::Failed).await;
        assert_eq!(kinds(&evs), [Kind::Attempt, Kind::Failed], "{evs:#?}");
        assert_eq!(evs[0].request_id, evs[1].request_id);
        assert_eq!(detail(&evs[0])["reason"], "unknown method");
        assert_eq!(evs[1].code.as_deref(), Some("UNIMPLEMENTED"));
        for e in &evs {
            let m = e.method.as_deref().expect("method");
            match stored {
                None => assert_eq!(m, path),
                Some(prefix) => {
                    assert!(m.len() < 128 + 100, "{} bytes stored", m.len());
                    let tail = format!(
                        "... ({} bytes, sha256:{})",
                        path.len(),
                        hex::encode(Sha256::digest(path.as_bytes()))
                    );
                    assert_eq!(m, format!("{prefix}{tail}"));
                }
            }
            assert!(e.principal.is_none() && e.on_behalf_of.is_none(), "{e:#?}");
            assert!(
                e.peer
                    .as_deref()
                    .is_some_and(|p| p.starts_with("127.0.0.1:"))
            );
        }
    }
    // Health needs no credentials and leaves nothing on record.
    srv.settle().await;
    let before = srv.last_seq();
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(channel(&srv.url, false).await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health");
    // A recorded call after it shows that nothing came in between.
    let _ = call_path(&srv.url, "/admin.v1.Shell/Marker", None).await;
    let evs = events_after(&srv, before, Kind::Failed).await;
    assert!(
        evs.iter()
            .all(|e| e.method.as_deref() == Some("/admin.v1.Shell/Marker")),
        "{evs:#?}"
    );
    srv.stop().await;
}

/// Bytes the events after `after` hold per kind, all columns counted.
fn trail_bytes_by_kind(audit_db: &Path, after: u64) -> BTreeMap<String, u64> {
    let conn = case_export::audit::open_log_read_only(audit_db).expect("open trail");
    let mut st = conn
        .prepare(
            "SELECT kind, SUM(8 + length(CAST(ts AS BLOB)) + length(CAST(kind AS BLOB))
                + length(CAST(request_id AS BLOB)) + COALESCE(length(CAST(method AS BLOB)), 0)
                + COALESCE(length(CAST(principal AS BLOB)), 0)
                + COALESCE(length(CAST(on_behalf_of AS BLOB)), 0)
                + COALESCE(length(CAST(peer AS BLOB)), 0)
                + COALESCE(length(CAST(tls_identity AS BLOB)), 0)
                + COALESCE(length(CAST(case_id AS BLOB)), 0)
                + COALESCE(length(CAST(export_id AS BLOB)), 0)
                + COALESCE(length(CAST(purpose AS BLOB)), 0)
                + COALESCE(length(CAST(code AS BLOB)), 0)
                + COALESCE(length(CAST(detail AS BLOB)), 0)
                + length(CAST(instance AS BLOB)) + length(CAST(version AS BLOB))
                + length(prev_hash) + length(hash))
             FROM audit_events WHERE seq > ? GROUP BY kind",
        )
        .expect("prepare");
    st.query_map([after as i64], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))
    })
    .expect("query")
    .collect::<rusqlite::Result<_>>()
    .expect("rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn denied_calls_with_60_kb_headers_grow_the_trail_by_a_bounded_amount() {
    const CALLS: u64 = 50;
    const BURST: u64 = 10;
    let seeded = seeded_db(&seed_of(1, 5));
    let (dir, db) = (&seeded.dir, &seeded.path);
    let mut cfg = base_config(dir.path(), db, principals());
    cfg.audit.denied_record_burst = BURST as u32;
    // One record a minute back: the burst is about all this test sees.
    cfg.audit.denied_records_per_minute = 1;
    let srv = TestServer::start(cfg).await;
    srv.settle().await;
    let start = srv.last_seq();
    let audit_db = srv.audit_db().to_path_buf();
    let big = "a".repeat(60_000);
    let mut c = raw_client(&srv.url).await;
    for i in 0..CALLS {
        // Half without a token, half with a wrong one.
        let token = (i % 2 == 1).then_some("cxt_wrong");
        let s = c
            .export_case(with_creds(
                request(&seeded.case_ids[0], PURPOSE),
                token,
                Some(&big),
            ))
            .await
            .expect_err("refused");
        assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    }
    // Denials are queued without waiting: wait for the burst's records
    // (each call's attempt and denial), not only for every call on record
    // to have ended, or a record still queued would land after `live`.
    srv.wait_events("the burst's calls on record", |ev| {
        let attempts = ev
            .iter()
            .filter(|(s, e, _)| *s > start && e.kind == Kind::Attempt)
            .count() as u64;
        attempts >= BURST && all_ended(ev)
    })
    .await;
    let live = trail_bytes_by_kind(&audit_db, start);
    // The clean stop writes the count of the calls that were not recorded.
    srv.stop().await;

    let all: Vec<Event> = audit_trail(&audit_db)
        .into_iter()
        .filter(|(s, _, _)| *s > start)
        .map(|(_, e, _)| e)
        .collect();
    assert!(
        all.iter()
            .all(|e| matches!(e.kind, Kind::Attempt | Kind::Denied | Kind::DeniedSummary)),
        "{all:#?}"
    );
    let recorded = all.iter().filter(|e| e.kind == Kind::Attempt).count() as u64;
    assert_eq!(
        all.iter().filter(|e| e.kind == Kind::Denied).count() as u64,
        recorded
    );
    // The first BURST calls are recorded: they are the ones before any
    // summary.
    assert!(all.len() as u64 >= 2 * BURST);
    assert!(
        all[..2 * BURST as usize]
            .iter()
            .all(|e| e.kind != Kind::DeniedSummary)
    );
    for e in &all {
        if e.kind != Kind::DeniedSummary {
            let obo = e.on_behalf_of.as_deref().expect("noted");
            assert!(obo.starts_with("invalid (60000 bytes) sha256:"), "{obo}");
        }
    }
    let summaries: Vec<&Event> = all
        .iter()
        .filter(|e| e.kind == Kind::DeniedSummary)
        .collect();
    let suppressed: u64 = summaries
        .iter()
        .map(|e| detail(e)["suppressed"].as_u64().expect("count"))
        .sum();
    assert_eq!(recorded + suppressed, CALLS, "{summaries:#?}");
    assert!(suppressed >= 1);
    for e in &summaries {
        let d = detail(e);
        assert_eq!(d["peer"], "127.0.0.1", "{d}");
        assert!(d["since"].is_string(), "{d}");
    }
    let end = trail_bytes_by_kind(&audit_db, start);
    let call_bytes = end["attempt"] + end["denied"];
    let summary_bytes = end.get("denied_summary").copied().unwrap_or(0);
    let per_recorded = call_bytes / recorded;
    let per_suppressed = summary_bytes / suppressed;
    // While the server ran, the calls over the bucket added nothing but a
    // summary if the bucket refilled meanwhile.
    let live_total: u64 = live.values().sum();
    let live_summaries = live.get("denied_summary").copied().unwrap_or(0);
    eprintln!(
        "trail growth, {CALLS} unauthenticated calls with a 60000-byte x-on-behalf-of \
         (burst {BURST}): {recorded} recorded at {per_recorded} bytes each \
         (attempt + denied); {suppressed} over the bucket: {} bytes while running, \
         then one summary of {summary_bytes} bytes at stop ({per_suppressed} bytes per \
         suppressed call); total {} bytes",
        live_summaries,
        call_bytes + summary_bytes,
    );
    assert_eq!(live_total - live_summaries, call_bytes);
    assert!(
        per_recorded < 2048,
        "{per_recorded} bytes per recorded call"
    );
    assert!(
        per_suppressed < 64,
        "{per_suppressed} bytes per suppressed call"
    );
    let v = verify_log(
        &case_export::audit::open_log_read_only(&audit_db).expect("open"),
        &[],
        None,
    )
    .expect("verify");
    assert!(v.chain_ok(), "{:?}", v.problems);
    assert!(v.unterminated.is_empty(), "{:?}", v.unterminated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn format_characters_in_purpose_and_on_behalf_of_are_refused() {
    let seeded = seeded_db(&seed_of(1, 5));
    let (dir, db) = (&seeded.dir, &seeded.path);
    let srv = TestServer::start(base_config(dir.path(), db, principals())).await;
    let mut c = raw_client(&srv.url).await;
    for hidden in ['\u{202E}', '\u{200B}', '\u{2066}', '\u{FEFF}'] {
        let code = format!("U+{:04X}", hidden as u32);
        // The purpose: refused before anything is read.
        let mut req = request(&seeded.case_ids[0], PURPOSE);
        req.purpose = format!("TICKET-1{hidden}234: review");
        let s = c.export_case(authed(req)).await.expect_err("refused");
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains(&code), "{s:?}");
        // The analyst: UTF-8 bytes in the metadata, as a hostile client
        // can send them.
        let analyst = format!("alice{hidden}.evil");
        let mut r = with_creds(request(&seeded.case_ids[0], PURPOSE), Some(TOKEN), None);
        r.metadata_mut().insert(
            ON_BEHALF_OF,
            tonic::metadata::AsciiMetadataValue::try_from(analyst.as_bytes())
                .expect("obs-text bytes are allowed in metadata"),
        );
        srv.settle().await;
        let before = srv.last_seq();
        let s = c.export_case(r).await.expect_err("refused");
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains(&code), "{s:?}");
        assert!(s.message().contains(ON_BEHALF_OF), "{s:?}");
        let evs = events_after(&srv, before, Kind::Denied).await;
        assert_eq!(kinds(&evs), [Kind::Attempt, Kind::Denied]);
        assert_eq!(detail(&evs[0])["reason"], "malformed on-behalf-of");
        let note = format!(
            "invalid ({} bytes) sha256:{}",
            analyst.len(),
            hex::encode(Sha256::digest(analyst.as_bytes()))
        );
        for e in &evs {
            assert_eq!(e.on_behalf_of.as_deref(), Some(note.as_str()));
        }
    }
    assert!(
        !srv.events()
            .iter()
            .any(|(_, e, _)| matches!(e.kind, Kind::Started | Kind::Completed))
    );
    srv.stop().await;
}

// ---------------------------------------------------------------------------
// `token new`
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_new_prints_a_token_and_a_working_principal_block() {
    let dir = TempDir::new().expect("tempdir");
    let o = run(bin().args(["token", "new", "--name", "svc", "--roles", "exporter"]));
    assert!(o.status.success(), "{}", stderr_of(&o));
    let text = stdout_of(&o);
    let token = text.lines().next().expect("token line").to_string();
    assert!(
        token.starts_with("cxt_") && token.len() == 68 && !token.contains(' '),
        "{token:?}"
    );
    let block = &text[text.find("[[principals]]").expect("principals block")..];
    assert!(!block.contains(&token), "the block must not hold the token");
    let parsed = Config::from_toml(block, Path::new("block.toml")).expect("block parses");
    assert_eq!(parsed.principals.len(), 1);
    let p = &parsed.principals[0];
    assert_eq!(p.name, "svc");
    assert_eq!(p.roles, [Role::Exporter]);
    assert_eq!(
        p.token_sha256.as_deref(),
        Some(token_digest(&token).as_str())
    );
    assert!(p.tenants.is_none() && p.tls_identity.is_none());

    // A server configured with exactly that block accepts the token.
    let seeded = seeded_db(&small_seed());
    let config = dir.path().join("svc.toml");
    std::fs::write(&config, block).expect("write config");
    let audit_db = dir.path().join("audit.db");
    let server =
        ServerProcess::start_custom(&config, &seeded.path, &audit_db, dir.path(), &[], |_| {});
    let receipt =
        ExportClient::connect_with(&server.url(), client_options(Some(&token), Some("a.n")))
            .await
            .expect("connect")
            .export_case(
                &seeded.case_ids[0],
                PURPOSE,
                &mut tokio::io::sink(),
                |_, _| {},
            )
            .await
            .expect("export with the new token");
    let e = ExportClient::connect_with(&server.url(), test_client_options())
        .await
        .expect("connect")
        .export_case(
            &seeded.case_ids[0],
            PURPOSE,
            &mut tokio::io::sink(),
            |_, _| {},
        )
        .await
        .expect_err("another token is unknown to this server");
    assert!(matches!(e, ClientError::Unauthenticated(_)), "{e:?}");
    let all = wait_trail(&audit_db, "the export's completed event", |ev| {
        ev.iter().any(|(_, e, _)| {
            e.kind == Kind::Completed && e.export_id.as_deref() == Some(&receipt.export_id)
        })
    })
    .await;
    let done = all
        .iter()
        .find(|(_, e, _)| e.kind == Kind::Completed)
        .map(|(_, e, _)| e)
        .expect("completed");
    assert_eq!(done.principal.as_deref(), Some("svc"));
    assert!(server.terminate().success());
}

/// The custody record fails while the client is slow, so the last chunk
/// still fills the stream's buffer when the producer wants to report the
/// failure. The stream must still end with an error, never with OK and no
/// key, and the trail must not call the export `completed`. (Regression:
/// `Outbox::fail` used to drop the status when the buffer was full.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn withheld_key_with_a_slow_client_still_ends_in_an_error() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let seeded = seeded_db(&seed_of(1, 400));
    let (dir, db) = (&seeded.dir, &seeded.path);
    // The snapshot's size, from a first export.
    let probe_dir = TempDir::new().expect("probe dir");
    let probe = TestServer::start(base_config(probe_dir.path(), db, principals())).await;
    let mut c = raw_client(&probe.url).await;
    let first = c
        .export_case(authed(request(&seeded.case_ids[0], PURPOSE)))
        .await
        .expect("probe export")
        .into_inner()
        .message()
        .await
        .expect("probe header")
        .and_then(|m| m.message);
    let Some(Msg::Header(probed)) = first else {
        panic!("no header")
    };
    drop(c);
    probe.stop().await;
    // Three chunks, each larger than the client's window: the server's
    // HTTP/2 stream holds one, hyper one more, and the stream's buffer
    // (depth 1) the last, so the producer finishes sealing while the
    // buffer is full.
    let chunk_size = probed.plaintext_size.div_ceil(3) as usize;
    assert!(chunk_size > 64 * 1024, "case too small: {probed:?}");
    let mut cfg = base_config(dir.path(), db, principals());
    cfg.chunk_size = chunk_size;
    cfg.channel_depth = 1;
    let srv = TestServer::start(cfg).await;
    break_store(srv.audit_db(), Some("sealed"));
    let mut client = raw_client_small_window(&srv.url).await;
    let mut stream = client
        .export_case(authed(request(&seeded.case_ids[0], PURPOSE)))
        .await
        .expect("export starts")
        .into_inner();
    let h = read_header(&mut stream).await;
    assert_eq!(h.chunk_count, 3, "premise: a three-chunk export");
    // The client reads nothing more until the custody record has failed
    // (the store reports unhealthy only after that write failed).
    wait_export_health(&srv.url, ServingStatus::NotServing, DEADLINE).await;
    heal_store(srv.audit_db());
    let mut chunks = 0;
    let end = loop {
        match stream.message().await {
            Ok(Some(m)) => match m.message {
                Some(Msg::Chunk(_)) => chunks += 1,
                Some(Msg::Key(_)) => panic!("a key left without its custody record"),
                other => panic!("unexpected message {other:?}"),
            },
            Ok(None) => break None,
            Err(s) => break Some(s),
        }
    };
    assert_eq!(chunks, 3);
    let evs = srv.wait_export_end(&seeded.case_ids[0]).await;
    let terminal = evs.last().expect("terminal");
    assert_eq!(
        (terminal.kind, terminal.code.as_deref()),
        (Kind::Failed, Some("UNAVAILABLE")),
        "the trail records a key release that did not happen: {evs:#?}"
    );
    let status = end.expect("the stream ended OK without a key");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    srv.stop().await;
}

const SOUTH_TOKEN: &str = "south-only-token-8e0a4d";
const NORTH_AUDITOR_TOKEN: &str = "north-auditor-token-2c9b71";
const SOUTH_AUDITOR_TOKEN: &str = "south-auditor-token-64f0d3";

/// Lists the whole trail through `AuditService` as the holder of `token`.
async fn list_as(url: &str, token: &str) -> Vec<case_export::pb::AuditEvent> {
    let mut audit = AuditServiceClient::new(channel(url, false).await);
    let mut stream = audit
        .list_events(with_creds(ListEventsRequest::default(), Some(token), None))
        .await
        .expect("auditor may list")
        .into_inner();
    let mut listed = Vec::new();
    while let Some(e) = stream.message().await.expect("list stream") {
        listed.push(e);
    }
    listed
}

/// Auditors limited to tenants read only their tenants' part of the trail
/// through `ListEvents`: exports tied to their tenants (whoever made them),
/// the calls of principals limited to their tenants (refusals included),
/// and the server's lifecycle events; never another tenant's purposes,
/// analysts or case ids, nor the calls of unknown callers. `VerifyLog`
/// tells every auditor the chain's integrity.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_limited_auditors_read_only_their_tenants_events() {
    let seeded = seeded_db(&seed_of(6, 10));
    let (dir, db) = (&seeded.dir, &seeded.path);
    let (north, south) = (
        seeded.case_of_tenant("north"),
        seeded.case_of_tenant("south"),
    );
    let limited = |name: &str, token: &str, role: Role, tenant: &str| PrincipalConfig {
        tenants: Some(vec![tenant.into()]),
        ..principal(name, Some(token), &[role])
    };
    let mut principals = principals();
    principals.extend([
        limited("north-svc", NORTH_TOKEN, Role::Exporter, "north"),
        limited("south-svc", SOUTH_TOKEN, Role::Exporter, "south"),
        limited("north-auditor", NORTH_AUDITOR_TOKEN, Role::Auditor, "north"),
        limited("south-auditor", SOUTH_AUDITOR_TOKEN, Role::Auditor, "south"),
    ]);
    let srv = TestServer::start(base_config(dir.path(), db, principals)).await;

    assert!(export_raw(&srv.url, Some(NORTH_TOKEN), &north).await.key);
    let probe = export_raw(&srv.url, Some(NORTH_TOKEN), &south).await;
    assert_eq!(probe.status.expect("refused").code(), Code::NotFound);
    assert!(export_raw(&srv.url, Some(SOUTH_TOKEN), &south).await.key);
    // An unrestricted principal's exports count for the case's tenant.
    assert!(export_raw(&srv.url, Some(TOKEN), &north).await.key);
    let stranger = export_raw(&srv.url, Some("no-such-token"), &north).await;
    assert_eq!(
        stranger.status.expect("refused").code(),
        Code::Unauthenticated
    );
    srv.settle().await;
    let all = srv.events();

    // Calls by request id: who made them and which tenant they reached.
    let call_of = |rid: &str| -> (Option<String>, Option<String>) {
        let evs = of_request(&all, rid);
        let principal = evs.iter().find_map(|e| e.principal.clone());
        let tenant = evs
            .iter()
            .find_map(|e| detail(e).get("tenant")?.as_str().map(str::to_string));
        (principal, tenant)
    };
    let tenant_of_sealed: Vec<String> = all
        .iter()
        .filter(|(_, e, _)| e.kind == Kind::Sealed)
        .map(|(_, e, _)| detail(e)["tenant"].as_str().expect("tenant").to_string())
        .collect();
    assert_eq!(tenant_of_sealed, ["north", "south", "north"]);

    for (token, tenant, own) in [
        (NORTH_AUDITOR_TOKEN, "north", "north-svc"),
        (SOUTH_AUDITOR_TOKEN, "south", "south-svc"),
    ] {
        let listed = list_as(&srv.url, token).await;
        assert!(
            listed.iter().any(|e| e.kind == "server_start"),
            "{tenant}: lifecycle events stay visible"
        );
        let mut seen_completed = 0;
        for e in listed.iter().filter(|e| e.kind != "server_start") {
            let (principal, case_tenant) = call_of(&e.request_id);
            // The auditor's own call (on record before it reads) is newer
            // than the trail read above: it names its principal itself.
            let principal = principal.or_else(|| Some(e.principal.clone()));
            let own_auditor = format!("{tenant}-auditor");
            assert!(
                case_tenant.as_deref() == Some(tenant)
                    || principal.as_deref() == Some(own)
                    || principal.as_deref() == Some(own_auditor.as_str()),
                "{tenant} auditor sees an event of another tenant or an unknown caller: {e:#?}"
            );
            if e.kind == "completed" {
                seen_completed += 1;
            }
        }
        // Its tenant's two completed exports (the own principal's and the
        // unrestricted one's for north; the own principal's for south).
        let expected = if tenant == "north" { 2 } else { 1 };
        assert_eq!(seen_completed, expected, "{tenant}: {listed:#?}");
        // The north principal's probe of a south case is north's business.
        let sees_probe = listed
            .iter()
            .any(|e| e.case_id == south && e.principal == "north-svc");
        assert_eq!(sees_probe, tenant == "north", "{tenant}");
        assert!(
            !listed
                .iter()
                .any(|e| e.principal.is_empty() && e.kind != "server_start"),
            "{tenant}: calls of unknown callers are for unrestricted auditors"
        );

        let mut audit = AuditServiceClient::new(channel(&srv.url, false).await);
        let v = audit
            .verify_log(with_creds(VerifyLogRequest {}, Some(token), None))
            .await
            .expect("verify")
            .into_inner();
        assert!(v.ok, "{:?}", v.problems);
        assert!(v.events as usize >= all.len(), "{v:?}");
    }

    // An unrestricted auditor sees every event, the stranger's included.
    let everything = list_as(&srv.url, AUDITOR_TOKEN).await;
    assert!(everything.len() >= all.len());
    assert!(
        everything
            .iter()
            .any(|e| e.principal.is_empty() && e.kind == "denied")
    );
    srv.stop().await;
}

/// A server restarted on a trail with an event forged after its last clean
/// stop refuses the trail: health NOT_SERVING, exports UNAVAILABLE with no
/// key, and the metric counts it. Restored from a copy, the trail serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_refuses_a_trail_it_did_not_write_and_serves_a_restored_one() {
    use tonic_health::pb::health_check_response::ServingStatus;
    // Counts trail mismatches of the process-wide registry: no other
    // test's server or audit writer may find one meanwhile.
    let seeded = seeded_db(&seed_of(2, 10));
    let (dir, db) = (&seeded.dir, &seeded.path);
    let mut config = base_config(dir.path(), db, principals());
    config.audit.checkpoint_file = Some(dir.path().join("checkpoints.jsonl"));
    let srv = TestServer::start(config.clone()).await;
    assert!(
        export_raw(&srv.url, Some(TOKEN), &seeded.case_ids[0])
            .await
            .key
    );
    srv.settle().await;
    srv.stop().await;
    let backup = dir.path().join("audit.backup.db");
    std::fs::copy(config.audit_db.sqlite_path().unwrap(), &backup).expect("back up the trail");

    // Someone with file access appends an event, hash and all.
    let conn = rusqlite::Connection::open(config.audit_db.sqlite_path().unwrap()).expect("open");
    let last: i64 = conn
        .query_row("SELECT max(seq) FROM audit_events", [], |r| r.get(0))
        .expect("last seq");
    conn.execute_batch(&format!(
        "INSERT INTO audit_events SELECT seq + 1, ts, kind, 'forged', method, principal, \
         on_behalf_of, peer, tls_identity, case_id, export_id, purpose, code, detail, instance, \
         version, hash, hash FROM audit_events WHERE seq = {last}"
    ))
    .expect("forge");
    drop(conn);

    // This server's own metrics: a fresh registry, so the count starts at 0.
    let metrics_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let mut refused_config = config.clone();
    refused_config.metrics_listen = Some(metrics_addr);
    let srv = TestServer::start(refused_config).await;
    wait_export_health(&srv.url, ServingStatus::NotServing, DEADLINE).await;
    let refused = export_raw(&srv.url, Some(TOKEN), &seeded.case_ids[1]).await;
    let status = refused.status.expect("refused");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(refused.header.is_none() && !refused.key);
    let scraped = crate::support::scrape_metrics(metrics_addr)
        .await
        .expect("scrape");
    assert!(
        scraped
            .lines()
            .any(|l| l == "case_export_audit_trail_mismatches_total 1"),
        "{scraped}"
    );
    srv.stop().await;
    // Nothing was appended after the forgery.
    let v = verify_log(
        &case_export::audit::open_log_read_only(config.audit_db.sqlite_path().unwrap())
            .expect("open"),
        &[],
        None,
    )
    .expect("verify");
    assert_eq!(v.last_seq, last as u64 + 1);

    // Restored from the backup, the trail is the one written: it serves.
    std::fs::remove_file(config.audit_db.sqlite_path().unwrap()).expect("remove");
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!(
            "{}{ext}",
            config.audit_db.sqlite_path().unwrap().display()
        ));
    }
    std::fs::copy(&backup, config.audit_db.sqlite_path().unwrap()).expect("restore");
    let srv = TestServer::start(config).await;
    wait_export_health(&srv.url, ServingStatus::Serving, DEADLINE).await;
    assert!(
        export_raw(&srv.url, Some(TOKEN), &seeded.case_ids[1])
            .await
            .key
    );
    srv.stop().await;
}
