//! The server in process: `serve_on` in a tokio task on 127.0.0.1:0 with a
//! oneshot shutdown, its trail, its health, and the clients that call it.

use super::audit::{Ev, all_ended, audit_trail, of_request, trail_started, wait_trail};
use super::poll::{eventually, within};
use super::principals::{authed, principals, test_client_options};
use super::seed::{seeded_db, small_seed};
use case_export::audit::Event;
use case_export::client::ExportClient;
use case_export::pb::ExportCaseRequest;
use case_export::pb::export_service_client::ExportServiceClient;
use case_export::seed::SeedOptions;
use case_export::server::{Config, ServeError, serve_on};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;

/// Bound on the waits of the server's own helpers (its start, its trail).
/// Generous: it only turns a hang into a failure.
const DEADLINE: Duration = Duration::from_secs(10);

/// A server running in a tokio task on 127.0.0.1:0.
pub struct TestServer {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    /// Send (or drop) to start the graceful shutdown.
    pub shutdown: Option<oneshot::Sender<()>>,
    pub join: JoinHandle<Result<(), ServeError>>,
    /// The configuration the server was started with.
    pub config: Config,
    /// Case ids of the seeded database the server was given, if any.
    pub case_ids: Vec<String>,
    /// Holds the case database (and anything else the test puts there),
    /// unless the test keeps its own directory.
    dir: Option<TempDir>,
}

/// A config for tests: loopback, `case_db`, the audit trail in `dir`, the
/// principal set.
pub fn test_config(case_db: PathBuf, dir: &Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("loopback address"),
        case_db: case_db.into(),
        audit_db: dir.join("audit.db").into(),
        principals: principals(),
        ..Config::default()
    }
}

/// Many small chunks, a one-message channel, one sealer: a client that
/// stops reading stalls the server's producer right away.
pub fn stall_prone(c: &mut Config) {
    c.chunk_size = 4096;
    c.channel_depth = 1;
    c.seal_workers = 1;
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
    TestServer::spawn(config, Some(dir), case_ids).await
}

impl TestServer {
    /// Serves `config` in a tokio task, and returns once its trail has
    /// begun (the start event is committed). The test keeps the directory.
    pub async fn start(config: Config) -> Self {
        let srv = Self::spawn(config, None, Vec::new()).await;
        let db = srv.audit_db().to_path_buf();
        eventually("the server_start event", DEADLINE, || async {
            trail_started(&db)
                .then_some(())
                .ok_or_else(|| "not on record yet".to_string())
        })
        .await;
        srv
    }

    async fn spawn(config: Config, dir: Option<TempDir>, case_ids: Vec<String>) -> Self {
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
            config,
            case_ids,
            dir,
        }
    }

    /// The case database the server reads.
    pub fn case_db(&self) -> &Path {
        self.config
            .case_db
            .sqlite_path()
            .expect("a SQLite case database")
    }

    /// The SQLite trail the server writes.
    pub fn audit_db(&self) -> &Path {
        self.config.audit_db.sqlite_path().expect("a SQLite trail")
    }

    /// The directory of the seeded database and the trail.
    pub fn dir(&self) -> &Path {
        match &self.dir {
            Some(d) => d.path(),
            None => self.audit_db().parent().expect("audit_db in a directory"),
        }
    }

    /// Starts the graceful shutdown.
    #[track_caller]
    pub fn trigger_shutdown(&mut self) {
        let tx = self.shutdown.take().expect("shutdown already triggered");
        tx.send(()).expect("server task is gone");
    }

    /// Graceful shutdown; the server must end without error.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        within("the server stops", Duration::from_secs(60), &mut self.join)
            .await
            .expect("server task")
            .expect("server ends without error");
    }

    /// Every stored event of the server's trail.
    pub fn events(&self) -> Vec<Ev> {
        audit_trail(self.audit_db())
    }

    /// The sequence number of the last stored event (0: none).
    pub fn last_seq(&self) -> u64 {
        self.events().last().map_or(0, |e| e.0)
    }

    /// Waits until `pred` holds for the trail and returns it.
    pub async fn wait_events(&self, what: &str, pred: impl Fn(&[Ev]) -> bool) -> Vec<Ev> {
        wait_trail(self.audit_db(), what, pred).await
    }

    /// Waits until every call on record has its terminal event (terminal
    /// events are queued without waiting, so they may land after the
    /// client saw the status).
    pub async fn settle(&self) {
        self.wait_events("every call ended on record", all_ended)
            .await;
    }

    /// Waits for the terminal event of the export of `case_id` (the only
    /// one on this server) and returns that call's events.
    pub async fn wait_export_end(&self, case_id: &str) -> Vec<Event> {
        let rid = self.request_of(case_id).await;
        let all = self
            .wait_events("terminal event of the export", |ev| {
                ev.iter()
                    .any(|(_, e, _)| e.request_id == rid && e.kind.is_terminal())
            })
            .await;
        of_request(&all, &rid)
    }

    /// The request id of the (only) export of `case_id`, from its `started`
    /// or first event naming the case.
    pub async fn request_of(&self, case_id: &str) -> String {
        let all = self
            .wait_events("an event naming the case", |ev| {
                ev.iter()
                    .any(|(_, e, _)| e.case_id.as_deref() == Some(case_id))
            })
            .await;
        let rids: BTreeSet<String> = all
            .iter()
            .filter(|(_, e, _)| e.case_id.as_deref() == Some(case_id))
            .map(|(_, e, _)| e.request_id.clone())
            .collect();
        assert_eq!(rids.len(), 1, "one call for case {case_id}: {rids:?}");
        rids.into_iter().next().expect("one")
    }
}

/// The library client, connected to `url` with the test credentials.
pub async fn client(url: &str) -> ExportClient {
    ExportClient::connect_with(url, test_client_options())
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// HTTP/2 flow-control window for [`raw_client_small_window`]: the protocol's
/// minimum default, so a client that stops reading stalls the server fast.
pub const SMALL_WINDOW: u32 = 65_535;

/// A connection of its own to `url`; with `small_window`, receive windows
/// of [`SMALL_WINDOW`].
pub async fn channel(url: &str, small_window: bool) -> Channel {
    let mut ep = Endpoint::from_shared(url.to_string()).expect("endpoint url");
    if small_window {
        ep = ep
            .initial_stream_window_size(SMALL_WINDOW)
            .initial_connection_window_size(SMALL_WINDOW);
    }
    ep.connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// The generated client on its own connection, with default windows.
pub async fn raw_client(url: &str) -> ExportServiceClient<Channel> {
    ExportServiceClient::new(channel(url, false).await).max_decoding_message_size(16 << 20)
}

/// The generated client on its own connection whose receive windows are
/// [`SMALL_WINDOW`]: once the caller stops reading, the server's sender
/// blocks after about that many bytes.
pub async fn raw_client_small_window(url: &str) -> ExportServiceClient<Channel> {
    ExportServiceClient::new(channel(url, true).await).max_decoding_message_size(16 << 20)
}

/// An export request.
pub fn request(case_id: &str, purpose: &str) -> ExportCaseRequest {
    ExportCaseRequest {
        case_id: case_id.to_string(),
        purpose: purpose.to_string(),
        recipients: vec![],
    }
}

/// The status of a call that must be refused before its first message.
pub async fn refused(url: &str, req: ExportCaseRequest) -> Status {
    match raw_client(url).await.export_case(authed(req)).await {
        Ok(_) => panic!("the call was accepted"),
        Err(s) => s,
    }
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
pub async fn wait_export_health(url: &str, want: ServingStatus, deadline: Duration) {
    eventually(&format!("health {want:?}"), deadline, || async {
        match export_health(url).await? {
            s if s == want as i32 => Ok(()),
            s => Err(format!("status {s}")),
        }
    })
    .await
}
