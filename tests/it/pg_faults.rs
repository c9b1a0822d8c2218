//! A real server exporting from PostgreSQL, and what goes wrong there:
//! the database gone and back, a connection killed mid-export, a statement
//! over its timeout, a role without rights, TLS that must verify. Every
//! failure ends the call UNAVAILABLE (or FAILED_PRECONDITION for rights)
//! with no key, and the next export works.

use crate::support::*;
use case_export::db::DbLocation;
use std::time::Duration;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const PURPOSE: &str = "TICKET-7301: PostgreSQL fault test";
const DEADLINE: Duration = Duration::from_secs(30);

/// A small case schema: two cases of two tenants, notes under them.
const SCHEMA: &str = "
CREATE TABLE cases (id text PRIMARY KEY, tenant text NOT NULL, title text NOT NULL);
CREATE TABLE notes (
    id bigint PRIMARY KEY,
    case_id text NOT NULL REFERENCES cases(id),
    body text NOT NULL
);
CREATE INDEX notes_case_id_idx ON notes(case_id);
INSERT INTO cases VALUES ('case-1', 'north', 'One'), ('case-2', 'south', 'Two');
INSERT INTO notes SELECT g, CASE WHEN g % 2 = 0 THEN 'case-1' ELSE 'case-2' END, 'note ' || g
    FROM generate_series(1, 2000) AS g;
";

async fn case_db() -> Option<PgDb> {
    let db = PgDb::create("faults").await?;
    db.execute(SCHEMA).await;
    Some(db)
}

/// A server in process whose case database is `url`.
async fn serve_pg(url: &str, mutate: impl FnOnce(&mut case_export::server::Config)) -> TestServer {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(dir.path().join("unused.db"), dir.path());
    config.case_db = DbLocation::parse(url).expect("a PostgreSQL URL");
    config.postgres.connect_timeout_secs = 2;
    mutate(&mut config);
    spawn_server(config, dir, vec![]).await
}

fn via(proxy: &PgProxy, db: &PgDb, host: &str) -> String {
    format!(
        "postgres://postgres@{host}:{}/{}",
        proxy.addr.port(),
        db.name
    )
}

/// The server's own connection to the case database blocked on a lock,
/// by its application name: `(pid, state)`.
async fn blocked_export_backend(db: &PgDb) -> i32 {
    let admin = db.connect().await;
    eventually("the export waiting on the lock", DEADLINE, || async {
        let rows = admin
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 \
                 AND application_name = 'case-export' AND wait_event_type = 'Lock'",
                &[&db.name],
            )
            .await
            .map_err(|e| e.to_string())?;
        rows.first()
            .map(|r| r.get::<_, i32>(0))
            .ok_or_else(|| "not blocked yet".to_string())
    })
    .await
}

/// The terminal event of the (only) export of `case_id`.
async fn end_of(server: &TestServer, case_id: &str) -> case_export::audit::Event {
    let evs = server.wait_export_end(case_id).await;
    evs.into_iter()
        .find(|e| e.kind.is_terminal())
        .expect("a terminal event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_gone_is_not_serving_until_it_returns() {
    let Some(db) = case_db().await else { return };
    let proxy = PgProxy::start(pg_socket_addr()).await;
    let server = serve_pg(&via(&proxy, &db, "127.0.0.1"), |_| {}).await;
    wait_export_health(&server.url, ServingStatus::Serving, DEADLINE).await;
    assert_good_export(&server.url, "case-1").await;

    proxy.take_down();
    wait_export_health(&server.url, ServingStatus::NotServing, DEADLINE).await;
    let s = refused(&server.url, request("case-2", PURPOSE)).await;
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().contains("case database unavailable"), "{s:?}");
    assert!(!s.message().contains("postgres://"), "{s:?}");
    let end = end_of(&server, "case-2").await;
    assert_eq!(end.code.as_deref(), Some("UNAVAILABLE"), "{end:?}");

    proxy.bring_up();
    wait_export_health(&server.url, ServingStatus::Serving, DEADLINE).await;
    good_export_eventually(&server.url, "case-1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_killed_mid_export_fails_that_export_alone() {
    let Some(db) = case_db().await else { return };
    let server = serve_pg(&db.url, |_| {}).await;
    // Another session holds the notes table: the export reads the case,
    // then waits inside its transaction.
    let locker = db.connect().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE notes IN ACCESS EXCLUSIVE MODE;")
        .await
        .expect("lock");
    let url = server.url.clone();
    let call = tokio::spawn(async move { refused(&url, request("case-1", PURPOSE)).await });
    let pid = blocked_export_backend(&db).await;
    let admin = db.connect().await;
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate")
        .get(0);
    assert!(killed);
    locker.batch_execute("ROLLBACK").await.expect("unlock");
    let s = within("the killed export ends", DEADLINE, call)
        .await
        .expect("call task");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    let end = end_of(&server, "case-1").await;
    assert_eq!(end.code.as_deref(), Some("UNAVAILABLE"), "{end:?}");
    // The pool drops the dead connection: the next export works.
    good_export_eventually(&server.url, "case-2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_over_its_timeout_fails_clearly() {
    let Some(db) = case_db().await else { return };
    let server = serve_pg(&db.url, |c| c.postgres.statement_timeout_secs = 1).await;
    let locker = db.connect().await;
    locker
        .batch_execute("BEGIN; LOCK TABLE notes IN ACCESS EXCLUSIVE MODE;")
        .await
        .expect("lock");
    // The lock is held until the export gives up on its own.
    let s = refused(&server.url, request("case-1", PURPOSE)).await;
    locker.batch_execute("ROLLBACK").await.expect("unlock");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(
        s.message().contains("statement_timeout_secs"),
        "the message must name the setting: {s:?}"
    );
    good_export_eventually(&server.url, "case-2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_without_rights_is_told_what_to_grant() {
    let Some(db) = case_db().await else { return };
    // SELECT on cases only: the notes of a case cannot be read.
    let partial = db.reader("partial", &["cases"]).await;
    let server = serve_pg(&partial, |_| {}).await;
    let s = refused(&server.url, request("case-1", PURPOSE)).await;
    assert!(
        s.message().contains("notes") && s.message().contains("SELECT"),
        "the message must name the table and the right: {s:?}"
    );
    assert_ne!(s.code(), Code::Ok);
    assert_ne!(s.code(), Code::Internal, "{s:?}");
    // The least privilege the docs give (SELECT on the case tables) is
    // enough.
    let reader = db.reader("reader", &["cases", "notes"]).await;
    let server = serve_pg(&reader, |_| {}).await;
    let r = assert_good_export(&server.url, "case-1").await;
    assert!(r.chunks > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_verifies_the_server() {
    let Some(db) = case_db().await else { return };
    let dir = tempfile::tempdir().expect("temp dir");
    let (tls, ca_pem) = proxy_tls(&["localhost"]);
    let ca = dir.path().join("db-ca.pem");
    std::fs::write(&ca, &ca_pem).expect("write CA");
    let proxy = PgProxy::start_with(pg_socket_addr(), Some(tls)).await;
    let verified = |host: &str, ca: &std::path::Path| {
        format!(
            "{}?sslmode=verify-full&sslrootcert={}",
            via(&proxy, &db, host),
            ca.display()
        )
    };

    let server = serve_pg(&verified("localhost", &ca), |_| {}).await;
    wait_export_health(&server.url, ServingStatus::Serving, DEADLINE).await;
    assert_good_export(&server.url, "case-1").await;

    // A certificate from another CA, and a name the certificate lacks,
    // are refused: no case data goes over such a connection.
    let (_, other_pem) = proxy_tls(&["localhost"]);
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, &other_pem).expect("write CA");
    for url in [verified("localhost", &other), verified("127.0.0.1", &ca)] {
        let server = serve_pg(&url, |_| {}).await;
        wait_export_health(&server.url, ServingStatus::NotServing, DEADLINE).await;
        let s = refused(&server.url, request("case-1", PURPOSE)).await;
        assert_eq!(s.code(), Code::Unavailable, "{url}: {s:?}");
    }
}
