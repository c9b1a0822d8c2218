//! The gRPC server: export service, health, reflection, limits and graceful
//! shutdown. `serve` is what `case-export serve` runs and what tests start.

mod audit_svc;
mod auth;
mod budget;
mod config;
mod conn;
mod error;
mod export;
mod layer;
mod listeners;
mod probes;
mod refusals;
mod slots;
mod state;
mod untrusted;

pub use crate::contract::{file_name_for, validate_case_id, validate_purpose};
pub use auth::{ON_BEHALF_OF, Principal, certificate_identity};
pub use config::{
    AUDIT_DB_PASSWORD_ENV, AuditConfig, CASE_DB_PASSWORD_ENV, Config, ConfigError, DEFAULT_LISTEN,
    KeysConfig, PostgresConfig, PrincipalConfig, Role, TlsConfig,
};
pub use error::ExportError;
pub use layer::code_name;

use crate::audit::{
    AuditError, AuditHandle, AuditWriter, CheckpointSigner, Event, Kind, WriterConfig,
};
use crate::db::DbLocation;
use crate::metrics::Metrics;
use crate::pb::audit_service_server::AuditServiceServer;
use crate::pb::export_service_server::ExportServiceServer;
use crate::snapshot::{CaseSource, PgSourceOptions};
use audit_svc::AuditSvc;
use auth::{AuthInterceptor, Authenticator};
use export::ExportSvc;
use listeners::SideListeners;
use refusals::RefusalLimiter;
use state::{Phase, PhaseSender, ServerState};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The gRPC, metrics or health address that could not be bound.
        addr: SocketAddr,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The transport failed.
    #[error("gRPC transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Building reflection failed.
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
    /// The audit store could not be opened: no export may run without it.
    #[error("{0}")]
    Audit(#[from] crate::audit::AuditError),
    /// TLS material or the checkpoint key could not be loaded.
    #[error("{0}")]
    Setup(String),
}

fn instance_id(config: &Config) -> String {
    if !config.instance_id.is_empty() {
        return config.instance_id.clone();
    }
    let mut b = [0u8; 6];
    let _ = getrandom::getrandom(&mut b);
    format!("case-export-{}", hex::encode(b))
}

/// Binds `config.listen` and serves until `shutdown` resolves.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let addr = config.listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    serve_on(config, listener, shutdown).await
}

/// Serves on an already bound listener (tests bind 127.0.0.1:0) until
/// `shutdown` resolves and the exports in flight drained.
pub async fn serve_on(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let server = Prepared::set_up(config, &listener).await?;
    let served = server.run(listener, shutdown).await;
    server.finish();
    served
}

/// A server set up: its trail open and on record, its state shared, its
/// side listeners and health monitor running; not yet taking calls.
struct Prepared {
    state: Arc<ServerState>,
    phase: PhaseSender,
    writer: AuditWriter,
    tls: Option<tokio_rustls::TlsAcceptor>,
    authn: Arc<Authenticator>,
    health: HealthReporter,
    health_svc: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
    side: SideListeners,
    monitor: JoinHandle<()>,
    refusals: Arc<RefusalLimiter>,
    summaries: JoinHandle<()>,
    open_calls: layer::OpenCalls,
    /// Where AuditService reads the trail.
    trail_source: audit_svc::TrailSource,
}

impl Prepared {
    async fn set_up(config: Config, listener: &TcpListener) -> Result<Self, ServeError> {
        let config = Arc::new(config);
        // TLS material is checked before anything is recorded or served.
        // The handshake runs in `conn`, under the handshake deadline.
        let tls = config.tls.as_ref().map(conn::tls_acceptor).transpose()?;
        let listeners = 1
            + usize::from(config.health_listen.is_some())
            + usize::from(config.metrics_listen.is_some());
        conn::ensure_fd_limit(config.max_connections, listeners);
        let source = open_source(&config)?;
        let receipt_signer = config
            .receipt_key_file()
            .map(CheckpointSigner::from_file)
            .transpose()
            .map_err(|e| ServeError::Setup(format!("receipt key: {e}")))?;
        let metrics = Metrics::new();
        let writer = open_trail(&config, metrics.clone())?;
        let trail_source = match audit_connector(&config)? {
            Some(c) => audit_svc::TrailSource::Postgres(Box::new(c)),
            None => audit_svc::TrailSource::Sqlite(
                config
                    .audit_db
                    .sqlite_path()
                    .map(|p| p.to_path_buf())
                    .unwrap_or_default(),
            ),
        };
        let audit = writer.handle();
        record_start(&config, &audit, listener).await?;
        let (phase, phase_rx) = PhaseSender::new();
        let state = Arc::new(ServerState {
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            config: config.clone(),
            phase: phase_rx,
            audit: audit.clone(),
            budget: budget::MemoryBudget::new(config.memory_budget_bytes),
            principal_slots: slots::PrincipalSlots::new(&config),
            metrics,
            source,
            receipt_signer,
        });
        if config.principals.is_empty() {
            warn!(
                "no principals configured: every call will be refused (see `case-export token new`)"
            );
        }
        let (health, _) = tonic_health::server::health_reporter();
        let health_svc = tonic_health::pb::health_server::HealthServer::new(
            tonic_health::server::HealthService::from_health_reporter(health.clone()),
        );
        health.set_serving::<ExportServiceServer<ExportSvc>>().await;
        let side = SideListeners::start(&state, &health).await?;
        let monitor = tokio::spawn(health_monitor(state.clone(), health.clone()));
        let refusals = Arc::new(RefusalLimiter::new(
            config.audit.denied_record_burst,
            config.audit.denied_records_per_minute,
            config.audit.denied_record_peers,
            config.audit.denied_records_per_minute_total,
        ));
        let summaries = tokio::spawn(refusals::write_summaries(refusals.clone(), audit));
        Ok(Self {
            authn: Arc::new(Authenticator::new(&config.principals)),
            state,
            phase,
            writer,
            tls,
            health,
            health_svc,
            side,
            monitor,
            refusals,
            summaries,
            open_calls: layer::OpenCalls::default(),
            trail_source,
        })
    }

    /// Serves until `shutdown`, then drains: no new exports, those running
    /// have the grace period, then end. Exits at grace + 5 s whatever holds.
    async fn run(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ServeError> {
        let config = &self.state.config;
        let (reflection_v1, reflection_v1alpha) = reflection()?;
        let router = Server::builder()
            .layer(layer::AuditLayer {
                audit: self.state.audit.clone(),
                open: self.open_calls.clone(),
                refusals: self.refusals.clone(),
                metrics: self.state.metrics.clone(),
            })
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .max_concurrent_streams(Some(128))
            .http2_max_pending_accept_reset_streams(Some(64))
            .http2_max_header_list_size(Some(64 * 1024))
            .tcp_nodelay(true)
            .add_service(self.health_svc.clone())
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(self.export_service())
            .add_service(self.audit_service());
        if let Ok(a) = listener.local_addr() {
            info!(addr = %a, "case-export listening");
        }
        let limit =
            conn::ConnLimit::new("grpc", config.max_connections, self.state.metrics.clone());
        let handshake = config.handshake_timeout();
        let drain = self.drain_on(shutdown);
        let grace = config.shutdown_grace();
        // Backstop: once draining, exit at grace + 5 s whatever holds on.
        let backstop = async move {
            state::reached(self.state.phase.clone(), Phase::Draining).await;
            tokio::time::sleep(grace + Duration::from_secs(5)).await;
        };
        match self.tls.clone() {
            Some(acceptor) => {
                let incoming = conn::incoming(listener, limit, handshake, conn::tls(acceptor));
                until_backstop(
                    router.serve_with_incoming_shutdown(incoming, drain),
                    backstop,
                )
                .await
            }
            None => {
                let incoming = conn::incoming(listener, limit, handshake, conn::plain);
                until_backstop(
                    router.serve_with_incoming_shutdown(incoming, drain),
                    backstop,
                )
                .await
            }
        }
    }

    fn export_service(
        &self,
    ) -> tonic::service::interceptor::InterceptedService<
        ExportServiceServer<ExportSvc>,
        AuthInterceptor,
    > {
        tonic::service::interceptor::InterceptedService::new(
            ExportServiceServer::new(ExportSvc {
                state: self.state.clone(),
            })
            .max_decoding_message_size(self.state.config.max_request_bytes),
            AuthInterceptor {
                auth: self.authn.clone(),
                audit: self.state.audit.clone(),
                role: Role::Exporter,
                needs_on_behalf_of: true,
            },
        )
    }

    fn audit_service(
        &self,
    ) -> tonic::service::interceptor::InterceptedService<
        AuditServiceServer<AuditSvc>,
        AuthInterceptor,
    > {
        let config = &self.state.config;
        tonic::service::interceptor::InterceptedService::new(
            AuditServiceServer::new(AuditSvc {
                audit_db: self.trail_source.clone(),
                principals: Arc::new(config.principals.clone()),
                max_events: config.audit_list_max_events,
                send_timeout: config.send_timeout(),
                audit: self.state.audit.clone(),
            })
            .max_decoding_message_size(config.max_request_bytes),
            AuthInterceptor {
                auth: self.authn.clone(),
                audit: self.state.audit.clone(),
                role: Role::Auditor,
                needs_on_behalf_of: false,
            },
        )
    }

    /// Resolves once `shutdown` did, having moved the server to draining
    /// (health NOT_SERVING, side listeners closing) and set the stop at the
    /// grace period's end.
    fn drain_on<'a>(
        &'a self,
        shutdown: impl Future<Output = ()> + 'a,
    ) -> impl Future<Output = ()> + 'a {
        let grace = self.state.config.shutdown_grace();
        async move {
            shutdown.await;
            info!(
                grace_secs = grace.as_secs(),
                "shutting down: draining exports"
            );
            self.phase.set(Phase::Draining);
            self.health
                .set_not_serving::<ExportServiceServer<ExportSvc>>()
                .await;
            let st = self.state.clone();
            let phase = self.phase.clone();
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                if st.exports_running() > 0 {
                    warn!("grace period over: ending exports still in flight");
                }
                phase.set(Phase::Stopping);
            });
        }
    }

    /// Calls whose clients still hold their streams get their end, the
    /// refused calls not recorded one by one their summary, and the trail
    /// its final checkpoint.
    fn finish(self) {
        self.phase.set(Phase::Stopping);
        let ended = self.open_calls.end_all(&self.state.audit);
        if ended > 0 {
            warn!(
                calls = ended,
                "calls still open at exit recorded as failed (UNAVAILABLE)"
            );
        }
        self.summaries.abort();
        for e in self.refusals.drain_summaries() {
            self.state.audit.record(e);
        }
        self.monitor.abort();
        self.side.abort();
        drop(self.state);
        self.writer.shutdown();
        info!("server stopped");
    }
}

/// The case database; for PostgreSQL, a pool that connects when needed
/// (an unreachable server shows in health, not as a failed start).
fn open_source(config: &Config) -> Result<CaseSource, ServeError> {
    let pg = &config.postgres;
    CaseSource::open(
        &config.case_db,
        |url| {
            let password = pg.case_password().resolve()?;
            url.connector(password, pg.connect_timeout(), "case-export")
        },
        pg.pool_size,
        PgSourceOptions {
            schema: pg.schema.clone(),
            statement_timeout: pg.statement_timeout(),
        },
    )
    .map_err(|e| ServeError::Setup(format!("case_db: {e}")))
}

/// Opens the custody trail, with its checkpoint settings.
fn open_trail(config: &Config, metrics: Arc<Metrics>) -> Result<AuditWriter, ServeError> {
    let signer = config
        .audit
        .checkpoint_key_file
        .as_deref()
        .map(CheckpointSigner::from_file)
        .transpose()
        .map_err(AuditError::from)?;
    let writer_config = WriterConfig {
        every: Duration::from_secs(config.audit.checkpoint_interval_secs),
        file: config.audit.checkpoint_file.clone(),
        signer,
        max_queued_bytes: config.audit.max_queued_bytes,
        metrics,
    };
    let instance = instance_id(config);
    Ok(match &config.audit_db {
        DbLocation::Sqlite(path) => AuditWriter::start(path, &instance, writer_config)?,
        DbLocation::Postgres(_) => {
            let Some(connector) = audit_connector(config)? else {
                return Err(ServeError::Setup("audit_db: not a PostgreSQL URL".into()));
            };
            AuditWriter::start_pg(connector, &instance, writer_config)?
        }
    })
}

/// A connector to the trail's PostgreSQL database, with its password;
/// `None` for a SQLite trail.
fn audit_connector(config: &Config) -> Result<Option<crate::db::PgConnector>, ServeError> {
    let DbLocation::Postgres(url) = &config.audit_db else {
        return Ok(None);
    };
    let pg = &config.postgres;
    let password = pg
        .audit_password()
        .resolve()
        .map_err(|e| ServeError::Setup(format!("audit_db: {e}")))?;
    url.connector(password, pg.connect_timeout(), "case-export-audit")
        .map(Some)
        .map_err(|e| ServeError::Setup(format!("audit_db: {e}")))
}

/// The `server_start` event, committed before any call is taken. On a
/// refused trail the server serves refused: health says NOT_SERVING, every
/// export is refused, and the operator sees why in the log and metrics.
async fn record_start(
    config: &Config,
    audit: &AuditHandle,
    listener: &TcpListener,
) -> Result<(), ServeError> {
    let mut start = Event::new(Kind::ServerStart, "-");
    start.detail = Some(
        serde_json::json!({ "listen": listener.local_addr().ok().map(|a| a.to_string()) })
            .to_string(),
    );
    match audit.commit(start).await {
        Ok(_) | Err(AuditError::Mismatch(_)) => Ok(()),
        Err(e) => Err(ServeError::Setup(format!(
            "cannot write to the audit database {}: {e}",
            config.audit_db
        ))),
    }
}

/// Reflection (v1 and v1alpha, for older grpcurl) over this crate's
/// services and the health service, from one list of descriptor sets.
#[allow(clippy::type_complexity)]
fn reflection() -> Result<
    (
        tonic_reflection::server::v1::ServerReflectionServer<
            impl tonic_reflection::server::v1::ServerReflection,
        >,
        tonic_reflection::server::v1alpha::ServerReflectionServer<
            impl tonic_reflection::server::v1alpha::ServerReflection,
        >,
    ),
    ServeError,
> {
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let err = |e: tonic_reflection::server::Error| ServeError::Reflection(e.to_string());
    Ok((
        builder().build_v1().map_err(err)?,
        builder().build_v1alpha().map_err(err)?,
    ))
}

/// Serves until the server stops, or until `backstop` if that comes first.
async fn until_backstop(
    serving: impl Future<Output = Result<(), tonic::transport::Error>>,
    backstop: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    tokio::select! {
        r = serving => r?,
        _ = backstop => warn!("connections still open after the grace period; exiting"),
    }
    Ok(())
}

/// Keeps the health status true to reality: NOT_SERVING while draining,
/// while the audit store cannot write, or while the case database cannot
/// be opened.
async fn health_monitor(state: Arc<ServerState>, reporter: HealthReporter) {
    let mut last = None;
    loop {
        let source_ok = state.source.readable().await;
        let audit_ok = state.audit.is_healthy();
        let draining = state.is_draining();
        let serving = source_ok && audit_ok && !draining;
        if last != Some(serving) {
            if serving {
                reporter
                    .set_serving::<ExportServiceServer<ExportSvc>>()
                    .await;
            } else {
                warn!(source_ok, audit_ok, draining, "health: NOT_SERVING");
                reporter
                    .set_not_serving::<ExportServiceServer<ExportSvc>>()
                    .await;
            }
            last = Some(serving);
        }
        if draining {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
