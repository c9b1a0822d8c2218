//! The gRPC server: export service, health, reflection, limits and graceful
//! shutdown. `serve` is what `case-export serve` runs and what tests start.

mod config;
mod error;
mod service;

pub use config::{Config, ConfigError, DEFAULT_LISTEN};
pub use error::{ExportError, validate_case_id, validate_purpose};
pub use service::file_name_for;

use crate::pb::export_service_server::ExportServiceServer;
use service::ExportSvc;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tracing::{info, warn};

/// Shared by every call.
pub(crate) struct ServerState {
    pub config: Arc<Config>,
    pub in_flight: Arc<Semaphore>,
    /// Set at shutdown: refuse new exports.
    pub draining: AtomicBool,
    /// Set when the grace period is over: end exports still running.
    pub hard_stop: AtomicBool,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Binding the listen address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The transport failed.
    #[error("gRPC transport error: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Building reflection failed.
    #[error("cannot build the reflection service: {0}")]
    Reflection(String),
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
    let state = Arc::new(ServerState {
        in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
        config: config.clone(),
        draining: AtomicBool::new(false),
        hard_stop: AtomicBool::new(false),
    });
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

    let export_svc = ExportServiceServer::new(ExportSvc {
        state: state.clone(),
    })
    .max_decoding_message_size(config.max_request_bytes);

    let local = listener.local_addr().ok();
    let (stop_tx, mut stop_rx) = watch::channel(false);
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
            st2.hard_stop.store(true, Ordering::SeqCst);
        });
    };
    let server = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(128))
        .http2_max_pending_accept_reset_streams(Some(64))
        .http2_max_header_list_size(Some(64 * 1024))
        .tcp_nodelay(true)
        .add_service(health_svc)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(export_svc);
    if let Some(a) = local {
        info!(addr = %a, "case-export listening");
    }
    let serving = server.serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal);
    tokio::pin!(serving);
    tokio::select! {
        r = &mut serving => r?,
        // Backstop: once draining, exit at grace + 5 s whatever holds on.
        _ = async {
            let _ = stop_rx.wait_for(|v| *v).await;
            tokio::time::sleep(grace + Duration::from_secs(5)).await;
        } => warn!("connections still open after the grace period; exiting"),
    }
    info!("server stopped");
    Ok(())
}
