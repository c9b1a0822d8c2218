//! Side listeners: Prometheus `/metrics` over HTTP/1, and the gRPC health
//! service alone in plaintext for probes that cannot speak TLS.

use super::state::{Phase, ServerState, reached};
use bytes::Bytes;
use http_body_util::Full;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

fn respond(st: &ServerState, path: &str) -> http::Response<Full<Bytes>> {
    if path != "/metrics" {
        let mut r =
            http::Response::new(Full::new(Bytes::from_static(b"not found: try /metrics\n")));
        *r.status_mut() = http::StatusCode::NOT_FOUND;
        return r;
    }
    let m = &st.metrics;
    m.exports_in_flight.set(st.exports_running() as i64);
    m.snapshot_bytes_held
        .set(i64::try_from(st.budget.held()).unwrap_or(i64::MAX));
    let mut r = http::Response::new(Full::new(Bytes::from(m.encode())));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        ),
    );
    r
}

/// Serves `/metrics` until the server drains. A connection must send its
/// request head within the handshake timeout, and at most
/// `max_connections` are open at once.
pub async fn serve_metrics(listener: TcpListener, st: Arc<ServerState>) {
    let limit =
        super::conn::ConnLimit::new("metrics", st.config.max_connections, st.metrics.clone());
    let draining = reached(st.phase.clone(), Phase::Draining);
    tokio::pin!(draining);
    let head_timeout = st.config.handshake_timeout();
    loop {
        let accepted = tokio::select! {
            acc = listener.accept() => acc,
            _ = &mut draining => return,
        };
        let Ok((stream, _)) = accepted else {
            // Out of file descriptors, most likely: let some close.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let Some(slot) = limit.try_take() else {
            continue;
        };
        let st = st.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let r = respond(&st, req.uri().path());
                    async move { Ok::<_, Infallible>(r) }
                });
            // hyper enforces the head timeout only with a timer.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(head_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                .await;
        });
    }
}
