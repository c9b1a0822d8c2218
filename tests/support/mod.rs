//! Helpers shared by the integration tests: seeded case databases, a real
//! server on 127.0.0.1:0 with a oneshot shutdown, clients, and row dumps
//! that compare a snapshot with its source.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use case_export::client::{ClientOptions, ExportClient};
use case_export::pb::export_service_client::ExportServiceClient;
use case_export::seed::{SeedOptions, seed_demo};
use case_export::server::{Config, ON_BEHALF_OF, PrincipalConfig, Role, ServeError, serve_on};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use zeroize::Zeroizing;

/// Bearer token of the one principal test servers know (an exporter).
pub const TOKEN: &str = "test-exporter-token-5f2c9a71d3e84b06";
/// The analyst every test export is made for.
pub const ANALYST: &str = "analyst@example.org";

/// The principal that holds [`TOKEN`]; the server stores only its digest.
pub fn test_principal() -> PrincipalConfig {
    PrincipalConfig {
        name: "integration-tests".into(),
        token_sha256: Some(hex::encode(Sha256::digest(TOKEN.as_bytes()))),
        tls_identity: None,
        roles: vec![Role::Exporter],
        tenants: None,
        max_in_flight: None,
    }
}

/// Wraps a message in a request carrying the test credentials, as the
/// library client would send them.
pub fn authed<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    let md = r.metadata_mut();
    md.insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("ascii token"),
    );
    md.insert(ON_BEHALF_OF, ANALYST.parse().expect("ascii analyst"));
    r
}

/// Tables of the demo schema (schema/cases.sql) that a case export carries:
/// every table but `users`.
pub const DEMO_CASE_TABLES: [&str; 13] = [
    "analysis_results",
    "annotations",
    "cases",
    "custody_events",
    "evidence",
    "evidence_documents",
    "evidence_emails",
    "evidence_links",
    "evidence_photos",
    "indicators",
    "notes",
    "subjects",
    "transactions",
];

/// Small enough to seed in a fraction of a second, big enough that every
/// table of every case has rows and some evidence links cross cases.
pub fn small_seed() -> SeedOptions {
    SeedOptions {
        cases: 4,
        rows_per_case: 60,
        seed: 7,
        tenants: vec!["north".into(), "south".into()],
    }
}

/// A seeded demo case database in its own temporary directory.
pub struct SeededDb {
    pub dir: TempDir,
    pub path: PathBuf,
    pub case_ids: Vec<String>,
}

/// Seeds `cases.db` in a fresh temporary directory.
#[track_caller]
pub fn seeded_db(opts: &SeedOptions) -> SeededDb {
    let dir = tempfile::tempdir().expect("create temp dir");
    let path = dir.path().join("cases.db");
    let report = seed_demo(&path, opts).expect("seed demo database");
    assert_eq!(report.case_ids.len(), opts.cases as usize);
    SeededDb {
        dir,
        path,
        case_ids: report.case_ids,
    }
}

/// A server running in a tokio task on 127.0.0.1:0.
pub struct TestServer {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// Send (or drop) to start the graceful shutdown.
    pub shutdown: Option<oneshot::Sender<()>>,
    pub join: JoinHandle<Result<(), ServeError>>,
    /// Holds the case database (and anything else the test puts there).
    pub dir: TempDir,
    /// The configuration the server was started with.
    pub config: Config,
    /// Case ids of the seeded database, in seeding order.
    pub case_ids: Vec<String>,
}

impl TestServer {
    /// The case database the server reads.
    pub fn case_db(&self) -> &Path {
        &self.config.case_db
    }

    /// Starts the graceful shutdown.
    #[track_caller]
    pub fn trigger_shutdown(&mut self) {
        let tx = self.shutdown.take().expect("shutdown already triggered");
        tx.send(()).expect("server task is gone");
    }
}

/// Seeds a small demo database and serves it; `mutate` adjusts the config
/// (the seeded database is already in `case_db`).
pub async fn start_server(mutate: impl FnOnce(&mut Config)) -> TestServer {
    start_server_with(&small_seed(), mutate).await
}

/// Like [`start_server`] with explicit seeding options.
pub async fn start_server_with(opts: &SeedOptions, mutate: impl FnOnce(&mut Config)) -> TestServer {
    let db = seeded_db(opts);
    let mut config = test_config(db.path.clone(), db.dir.path());
    mutate(&mut config);
    spawn_server(config, db.dir, db.case_ids).await
}

/// Serves `config` (its `listen` is ignored: the server gets 127.0.0.1:0)
/// in a tokio task; `dir` and `case_ids` are kept in the handle for the test.
pub async fn spawn_server(config: Config, dir: TempDir, case_ids: Vec<String>) -> TestServer {
    config.validate().expect("test config is valid");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let (tx, rx) = oneshot::channel::<()>();
    let served = config.clone();
    let join = tokio::spawn(async move {
        serve_on(served, listener, async {
            // A dropped sender shuts down too, so a failing test never leaks.
            let _ = rx.await;
        })
        .await
    });
    TestServer {
        addr,
        url: format!("http://{addr}"),
        shutdown: Some(tx),
        join,
        dir,
        config,
        case_ids,
    }
}

/// A config for tests: loopback, `case_db`, the audit trail beside it.
pub fn test_config(case_db: PathBuf, dir: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("loopback address"),
        case_db,
        audit_db: dir.join("audit.db"),
        principals: vec![test_principal()],
        ..Config::default()
    }
}

/// The library client, connected to `url` with the test credentials.
pub async fn client(url: &str) -> ExportClient {
    let opts = ClientOptions {
        token: Some(Zeroizing::new(TOKEN.to_string())),
        on_behalf_of: Some(ANALYST.to_string()),
        ..ClientOptions::default()
    };
    ExportClient::connect_with(url, opts)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// HTTP/2 flow-control window for [`raw_client_small_window`]: the protocol's
/// minimum default, so a client that stops reading stalls the server fast.
pub const SMALL_WINDOW: u32 = 65_535;

/// The generated client on its own connection, with default windows.
pub async fn raw_client(url: &str) -> ExportServiceClient<Channel> {
    let channel = Endpoint::from_shared(url.to_string())
        .expect("endpoint url")
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    ExportServiceClient::new(channel).max_decoding_message_size(16 << 20)
}

/// The generated client on its own connection whose receive windows are
/// [`SMALL_WINDOW`]: once the caller stops reading, the server's sender
/// blocks after about that many bytes.
pub async fn raw_client_small_window(url: &str) -> ExportServiceClient<Channel> {
    let channel = Endpoint::from_shared(url.to_string())
        .expect("endpoint url")
        .initial_stream_window_size(SMALL_WINDOW)
        .initial_connection_window_size(SMALL_WINDOW)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    ExportServiceClient::new(channel).max_decoding_message_size(16 << 20)
}

/// Opens a database file read-only.
#[track_caller]
pub fn open_ro(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// One value as an SQL literal, so types stay distinguishable:
/// `NULL`, `7`, `1.5`, `'text'` (quotes doubled), `x'00ff'`.
pub fn literal(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => format!("{f:?}"),
        ValueRef::Text(t) => format!("'{}'", String::from_utf8_lossy(t).replace('\'', "''")),
        ValueRef::Blob(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            format!("x'{hex}'")
        }
    }
}

/// Every row `sql` returns, each as its values rendered by [`literal`],
/// sorted so results can be compared as sets.
#[track_caller]
pub fn query_rows(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Vec<Vec<String>> {
    let run = || -> rusqlite::Result<Vec<Vec<String>>> {
        let mut st = conn.prepare(sql)?;
        let n = st.column_count();
        let mut rows = st.query(params)?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            out.push(
                (0..n)
                    .map(|i| r.get_ref(i).map(literal))
                    .collect::<rusqlite::Result<Vec<_>>>()?,
            );
        }
        Ok(out)
    };
    let mut rows = run().unwrap_or_else(|e| panic!("query {sql:?}: {e}"));
    rows.sort();
    rows
}

/// Quotes an identifier for hand-built SQL in tests.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// All rows of `table` (every column, in declared order), sorted.
#[track_caller]
pub fn all_rows(conn: &Connection, table: &str) -> Vec<Vec<String>> {
    query_rows(conn, &format!("SELECT * FROM {}", quote_ident(table)), [])
}

/// The rows of `table` that belong to `case_id` in a demo-schema database,
/// selected with hand-written SQL that follows schema/cases.sql (and not the
/// exporter's graph walk), every column, sorted.
#[track_caller]
pub fn case_rows(conn: &Connection, table: &str, case_id: &str) -> Vec<Vec<String>> {
    let via_evidence = |t: &str| {
        format!(
            "SELECT x.* FROM {t} x JOIN evidence e ON e.id = x.evidence_id WHERE e.case_id = ?1"
        )
    };
    let sql = match table {
        "cases" => "SELECT * FROM cases WHERE id = ?1".to_string(),
        "subjects" | "transactions" | "analysis_results" | "evidence" | "notes" => {
            format!("SELECT * FROM {table} WHERE case_id = ?1")
        }
        "indicators" => "SELECT i.* FROM indicators i \
             JOIN analysis_results a ON a.id = i.analysis_id WHERE a.case_id = ?1"
            .to_string(),
        "evidence_documents" | "evidence_photos" | "evidence_emails" | "annotations"
        | "custody_events" => via_evidence(table),
        // Only links whose two ends are both evidence of the case.
        "evidence_links" => "SELECT l.* FROM evidence_links l \
             JOIN evidence a ON a.id = l.from_evidence_id \
             JOIN evidence b ON b.id = l.to_evidence_id \
             WHERE a.case_id = ?1 AND b.case_id = ?1"
            .to_string(),
        other => panic!("no hand-written case query for table {other:?}: add one"),
    };
    query_rows(conn, &sql, [case_id])
}

/// Names of the user tables of a database, sorted.
#[track_caller]
pub fn table_names(conn: &Connection) -> Vec<String> {
    query_rows(
        conn,
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
        [],
    )
    .into_iter()
    .map(|r| {
        let quoted = &r[0];
        quoted[1..quoted.len() - 1].replace("''", "'")
    })
    .collect()
}

/// Column names of a table, in declared order.
#[track_caller]
pub fn column_names(conn: &Connection, table: &str) -> Vec<String> {
    let mut st = conn
        .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
        .expect("prepare pragma_table_info");
    st.query_map([table], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect())
        .unwrap_or_else(|e| panic!("columns of {table}: {e}"))
}

/// Repeats `attempt` until it returns `Some`, or fails after `deadline`.
/// For conditions that become true eventually (a freed slot), never for
/// asserting how long something takes.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        let last = match attempt().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        if start.elapsed() > deadline {
            panic!("{what}: still failing after {deadline:?}; last error: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Awaits `fut`, failing the test if it has not finished within `bound`
/// (a generous bound against hangs, not a timing assertion).
pub async fn within<T>(
    what: &str,
    bound: Duration,
    fut: impl std::future::Future<Output = T>,
) -> T {
    match tokio::time::timeout(bound, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {bound:?}"),
    }
}

/// Lists a directory's entries (names), sorted.
#[track_caller]
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------
// Side listeners, the custody trail and health, for the reliability and
// hostile-input suites.

/// A loopback address whose port was free a moment ago, for side listeners
/// (`metrics_listen`) whose bound port the server does not report.
pub fn free_loopback_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

/// Serializes scrapes within one test process: the server sets its gauges
/// from its own state just before encoding the process-wide registry, so
/// two servers scraped at once could see each other's values.
static SCRAPE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `GET /metrics` over plain HTTP/1.0 (no client crate needed); the body
/// of a 200 answer.
pub async fn scrape_metrics(addr: SocketAddr) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _one_at_a_time = SCRAPE.lock().await;
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8(raw).map_err(|e| format!("not UTF-8: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {text:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("unexpected answer: {head:?}"));
    }
    Ok(body.to_string())
}

/// Sum of the samples of `name` (exact, e.g. `case_export_exports_finished_total`)
/// whose labels include every pair of `labels`; `None` if no sample matches.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        let present: Vec<&str> = label_text.split(',').collect();
        if labels
            .iter()
            .all(|(k, v)| present.contains(&format!("{k}=\"{v}\"").as_str()))
        {
            let v: f64 = value.trim().parse().ok()?;
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

/// Every event of the custody trail at `path`, in order (empty while the
/// file does not exist yet).
pub fn audit_events(path: &Path) -> Vec<case_export::audit::Event> {
    if !path.exists() {
        return Vec::new();
    }
    let conn = case_export::audit::open_log_read_only(path)
        .unwrap_or_else(|e| panic!("open audit log: {e}"));
    case_export::audit::list_events(&conn, &case_export::audit::ListFilter::default())
        .unwrap_or_else(|e| panic!("list audit events: {e}"))
        .into_iter()
        .map(|(_, e, _)| e)
        .collect()
}

/// The events of the call that made export `export_id`: found through its
/// `started` event, then every event with the same request id.
pub fn events_of_export(
    events: &[case_export::audit::Event],
    export_id: &str,
) -> Vec<case_export::audit::Event> {
    let Some(rid) = events
        .iter()
        .find(|e| e.export_id.as_deref() == Some(export_id))
        .map(|e| e.request_id.clone())
    else {
        return Vec::new();
    };
    events
        .iter()
        .filter(|e| e.request_id == rid)
        .cloned()
        .collect()
}

/// The health status (`ServingStatus` as i32) the standard health service
/// gives for the export service.
pub async fn export_health(url: &str) -> Result<i32, String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "case_export.v1.ExportService".into(),
        })
        .await
        .map(|r| r.into_inner().status)
        .map_err(|s| format!("health check: {s:?}"))
}

/// Waits until the export service's health status is `want`.
pub async fn wait_export_health(
    url: &str,
    want: tonic_health::pb::health_check_response::ServingStatus,
    deadline: Duration,
) {
    eventually(&format!("health {want:?}"), deadline, || async {
        match export_health(url).await? {
            s if s == want as i32 => Ok(()),
            s => Err(format!("status {s}")),
        }
    })
    .await
}
