//! The gRPC server: export service, health, reflection, limits and graceful
//! shutdown. `serve` is what `case-export serve` runs and what tests start.

mod audit_svc;
mod auth;
mod budget;
mod config;
mod conn;
mod error;
mod layer;
mod probes;
mod refusals;
mod service;
mod slots;
mod untrusted;

pub use auth::{ON_BEHALF_OF, Principal, certificate_identity};
pub use config::{
    AuditConfig, Config, ConfigError, DEFAULT_LISTEN, PrincipalConfig, Role, TlsConfig,
};
pub use error::{ExportError, validate_case_id, validate_purpose};
pub use layer::code_name;
pub use service::file_name_for;

use crate::audit::{
    AuditError, AuditHandle, AuditWriter, CheckpointSigner, Event, Kind, WriterConfig,
};
use crate::pb::audit_service_server::AuditServiceServer;
use crate::pb::export_service_server::ExportServiceServer;
use audit_svc::AuditSvc;
use auth::{AuthInterceptor, Authenticator};
use service::ExportSvc;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tonic::transport::Server;
use tracing::{info, warn};

/// Shared by every call.
pub(crate) struct ServerState {
    pub config: Arc<Config>,
    pub in_flight: Arc<Semaphore>,
    /// Set at shutdown: refuse new exports.
    pub draining: AtomicBool,
    /// Turns true when the grace period is over: producers still running
    /// (even those waiting on a slow client) end their exports.
    pub hard_stop_rx: watch::Receiver<bool>,
    pub audit: AuditHandle,
    pub budget: Arc<budget::MemoryBudget>,
    /// Exports in flight per principal.
    pub principal_slots: slots::PrincipalSlots,
}

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

/// Serves on an already bound listener (tests bind 127.0.0.1:0).
pub async fn serve_on(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let config = Arc::new(config);
    // TLS material is checked before anything is recorded or served. The
    // handshake runs in `conn`, under the handshake deadline.
    let tls = config.tls.as_ref().map(conn::tls_acceptor).transpose()?;
    let builder = Server::builder();
    let listeners = 1
        + usize::from(config.health_listen.is_some())
        + usize::from(config.metrics_listen.is_some());
    conn::ensure_fd_limit(config.max_connections, listeners);
    let signer = config
        .audit
        .checkpoint_key_file
        .as_deref()
        .map(CheckpointSigner::from_file)
        .transpose()
        .map_err(ServeError::Setup)?;
    let instance = instance_id(&config);
    let writer = AuditWriter::start(
        &config.audit_db,
        &instance,
        WriterConfig {
            every: Duration::from_secs(config.audit.checkpoint_interval_secs),
            file: config.audit.checkpoint_file.clone(),
            signer,
            max_queued_bytes: config.audit.max_queued_bytes,
        },
    )?;
    let audit = writer.handle();
    let mut start = Event::new(Kind::ServerStart, "-");
    start.detail = Some(
        serde_json::json!({ "listen": listener.local_addr().ok().map(|a| a.to_string()) })
            .to_string(),
    );
    match audit.commit(start).await {
        Ok(_) => {}
        // Served refused: health says NOT_SERVING, every export is refused,
        // and the operator sees why in the log and the metrics.
        Err(AuditError::Mismatch(_)) => {}
        Err(e) => {
            return Err(ServeError::Setup(format!(
                "cannot write to the audit database {}: {e}",
                config.audit_db.display()
            )));
        }
    }
    let (hard_stop_tx, hard_stop_rx) = watch::channel(false);
    let state = Arc::new(ServerState {
        in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
        config: config.clone(),
        draining: AtomicBool::new(false),
        hard_stop_rx,
        audit: audit.clone(),
        budget: budget::MemoryBudget::new(config.memory_budget_bytes),
        principal_slots: slots::PrincipalSlots::new(&config),
    });
    let authn = Arc::new(Authenticator::new(&config.principals));
    if config.principals.is_empty() {
        warn!("no principals configured: every call will be refused (see `case-export token new`)");
    }
    let (health_reporter, health_svc) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<ExportServiceServer<ExportSvc>>()
        .await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;

    let export_svc = tonic::service::interceptor::InterceptedService::new(
        ExportServiceServer::new(ExportSvc {
            state: state.clone(),
        })
        .max_decoding_message_size(config.max_request_bytes),
        AuthInterceptor {
            auth: authn.clone(),
            audit: audit.clone(),
            role: Role::Exporter,
            needs_on_behalf_of: true,
        },
    );
    let audit_svc = tonic::service::interceptor::InterceptedService::new(
        AuditServiceServer::new(AuditSvc {
            audit_db: config.audit_db.clone(),
            principals: Arc::new(config.principals.clone()),
            max_events: config.audit_list_max_events,
            send_timeout: config.send_timeout(),
            audit: audit.clone(),
        })
        .max_decoding_message_size(config.max_request_bytes),
        AuthInterceptor {
            auth: authn,
            audit: audit.clone(),
            role: Role::Auditor,
            needs_on_behalf_of: false,
        },
    );
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let metrics_task = match config.metrics_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?;
            info!(addr = %l.local_addr().unwrap_or(addr), "metrics listening on /metrics");
            Some(tokio::spawn(probes::serve_metrics(
                l,
                state.clone(),
                stop_rx.clone(),
            )))
        }
        None => None,
    };
    let health_task = match config.health_listen {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })?;
            info!(addr = %l.local_addr().unwrap_or(addr), "plaintext health listening");
            let svc = tonic_health::pb::health_server::HealthServer::new(
                tonic_health::server::HealthService::from_health_reporter(health_reporter.clone()),
            );
            let mut stop = stop_rx.clone();
            let incoming = conn::incoming(
                l,
                conn::ConnLimit::new("health", config.max_connections),
                config.handshake_timeout(),
                conn::plain,
            );
            Some(tokio::spawn(async move {
                let _ = Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stop.wait_for(|v| *v).await;
                    })
                    .await;
            }))
        }
        None => None,
    };
    let monitor = tokio::spawn(health_monitor(state.clone(), health_reporter.clone()));

    let local = listener.local_addr().ok();
    let grace = config.shutdown_grace();
    let st = state.clone();
    let reporter = health_reporter.clone();
    // Drain on the signal; after the grace period end what is still running.
    let signal = async move {
        shutdown.await;
        info!(
            grace_secs = grace.as_secs(),
            "shutting down: draining exports"
        );
        st.draining.store(true, Ordering::SeqCst);
        reporter
            .set_not_serving::<ExportServiceServer<ExportSvc>>()
            .await;
        let _ = stop_tx.send(true);
        let st2 = st.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if st2.in_flight.available_permits() < st2.config.max_in_flight {
                warn!("grace period over: ending exports still in flight");
            }
            let _ = hard_stop_tx.send(true);
        });
    };
    let open_calls = layer::OpenCalls::default();
    let refusals = Arc::new(refusals::RefusalLimiter::new(
        config.audit.denied_record_burst,
        config.audit.denied_records_per_minute,
        config.audit.denied_record_peers,
        config.audit.denied_records_per_minute_total,
    ));
    let summaries = tokio::spawn(refusals::write_summaries(refusals.clone(), audit.clone()));
    let server = builder
        .layer(layer::AuditLayer {
            audit: audit.clone(),
            open: open_calls.clone(),
            refusals: refusals.clone(),
        })
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(128))
        .http2_max_pending_accept_reset_streams(Some(64))
        .http2_max_header_list_size(Some(64 * 1024))
        .tcp_nodelay(true)
        .add_service(health_svc)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(export_svc)
        .add_service(audit_svc);
    if let Some(a) = local {
        info!(addr = %a, "case-export listening");
    }
    let limit = conn::ConnLimit::new("grpc", config.max_connections);
    let handshake = config.handshake_timeout();
    // Backstop: once draining, exit at grace + 5 s whatever holds on.
    let backstop = async move {
        let _ = stop_rx.wait_for(|v| *v).await;
        tokio::time::sleep(grace + Duration::from_secs(5)).await;
    };
    match tls {
        Some(acceptor) => {
            let incoming = conn::incoming(listener, limit, handshake, conn::tls(acceptor));
            until_backstop(
                server.serve_with_incoming_shutdown(incoming, signal),
                backstop,
            )
            .await?
        }
        None => {
            let incoming = conn::incoming(listener, limit, handshake, conn::plain);
            until_backstop(
                server.serve_with_incoming_shutdown(incoming, signal),
                backstop,
            )
            .await?
        }
    }
    // Calls whose clients still hold their streams get their end now, so
    // the trail never shows an export that simply stopped.
    let ended = open_calls.end_all(&audit);
    if ended > 0 {
        warn!(
            calls = ended,
            "calls still open at exit recorded as failed (UNAVAILABLE)"
        );
    }
    summaries.abort();
    for e in refusals.drain_summaries() {
        audit.record(e);
    }
    monitor.abort();
    for t in [metrics_task, health_task].into_iter().flatten() {
        t.abort();
    }
    drop(state);
    writer.shutdown();
    info!("server stopped");
    Ok(())
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
async fn health_monitor(state: Arc<ServerState>, reporter: tonic_health::server::HealthReporter) {
    let mut last = None;
    loop {
        let path = state.config.case_db.clone();
        let source_ok = tokio::task::spawn_blocking(move || {
            rusqlite::Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .and_then(|c| {
                c.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
                    r.get::<_, i64>(0)
                })
            })
            .is_ok()
        })
        .await
        .unwrap_or(false);
        let audit_ok = state.audit.is_healthy();
        let draining = state.draining.load(Ordering::SeqCst);
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
