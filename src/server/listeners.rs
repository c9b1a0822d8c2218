//! The side listeners, in one place: Prometheus `/metrics`, and the gRPC
//! health service alone in plaintext for probes that cannot speak TLS.
//! Both close when the server starts draining.

use super::ServeError;
use super::conn;
use super::probes;
use super::state::{Phase, ServerState, reached};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic_health::server::{HealthReporter, HealthService};
use tracing::info;

/// The running side listeners.
pub struct SideListeners(Vec<JoinHandle<()>>);

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

impl SideListeners {
    /// Binds and starts the listeners the configuration asks for.
    pub async fn start(st: &Arc<ServerState>, health: &HealthReporter) -> Result<Self, ServeError> {
        let mut tasks = Vec::new();
        if let Some(addr) = st.config.metrics_listen {
            let l = bind(addr).await?;
            info!(addr = %l.local_addr().unwrap_or(addr), "metrics listening on /metrics");
            tasks.push(tokio::spawn(probes::serve_metrics(l, st.clone())));
        }
        if let Some(addr) = st.config.health_listen {
            let l = bind(addr).await?;
            info!(addr = %l.local_addr().unwrap_or(addr), "plaintext health listening");
            tasks.push(tokio::spawn(serve_health(l, st.clone(), health.clone())));
        }
        Ok(Self(tasks))
    }

    /// Stops them now (at exit; they stop by themselves when draining).
    pub fn abort(self) {
        for t in self.0 {
            t.abort();
        }
    }
}

/// The health service alone, in plaintext, until the server drains.
async fn serve_health(listener: TcpListener, st: Arc<ServerState>, health: HealthReporter) {
    let svc = tonic_health::pb::health_server::HealthServer::new(
        HealthService::from_health_reporter(health),
    );
    let incoming = conn::incoming(
        listener,
        conn::ConnLimit::new("health", st.config.max_connections, st.metrics.clone()),
        st.config.handshake_timeout(),
        conn::plain,
    );
    let _ = Server::builder()
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, reached(st.phase.clone(), Phase::Draining))
        .await;
}
