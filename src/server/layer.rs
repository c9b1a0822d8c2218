//! The tower layer that sees how each call ends: the gRPC status in the
//! headers (errors before the stream) or trailers, or the response being
//! dropped before its end (the client went away). It writes exactly one
//! terminal audit event per recorded call, and answers (and records) calls
//! of unknown methods itself.

use super::refusals::RefusalLimiter;
use super::untrusted::bounded_method;
use crate::audit::{AuditError, AuditHandle, Event, Kind};
use http_body::{Body, Frame};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// What the interceptor and handler learn about a call, for its end event.
#[derive(Debug, Default, Clone)]
pub struct CallInfo {
    pub principal: Option<String>,
    pub on_behalf_of: Option<String>,
    pub tls_identity: Option<String>,
    pub case_id: Option<String>,
    pub export_id: Option<String>,
    pub purpose: Option<String>,
    pub denied: bool,
    /// A refusal over its peer's record rate: the call leaves no events
    /// (it is counted in a `denied_summary`).
    pub unrecorded: bool,
    /// Extra fields for the terminal event (JSON object members).
    pub detail: serde_json::Map<String, serde_json::Value>,
}

type Ack = oneshot::Receiver<Result<crate::audit::Committed, AuditError>>;

/// Per-call context, placed in the request extensions by the layer.
#[derive(Clone)]
pub struct CallContext {
    pub request_id: String,
    pub method: String,
    pub peer: Option<String>,
    pub started_at: String,
    peer_ip: Option<IpAddr>,
    refusals: Arc<RefusalLimiter>,
    /// The server's metrics, which count how calls end.
    metrics: Arc<crate::metrics::Metrics>,
    started: std::time::Instant,
    /// Set once the call's terminal event is queued.
    ended: Arc<std::sync::atomic::AtomicBool>,
    info: Arc<Mutex<CallInfo>>,
    ack: Arc<Mutex<Option<Ack>>>,
}

impl std::fmt::Debug for CallContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallContext")
            .field("request_id", &self.request_id)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

impl CallContext {
    fn new(
        method: String,
        peer: Option<std::net::SocketAddr>,
        refusals: Arc<RefusalLimiter>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        let mut id = [0u8; 8];
        let _ = getrandom::getrandom(&mut id);
        Self {
            request_id: hex::encode(id),
            method,
            peer: peer.map(|a| a.to_string()),
            peer_ip: peer.map(|a| a.ip()),
            refusals,
            metrics,
            started_at: crate::audit::now_rfc3339(),
            started: std::time::Instant::now(),
            ended: Arc::default(),
            info: Arc::default(),
            ack: Arc::default(),
        }
    }

    /// Updates what the end event will say.
    pub fn note(&self, f: impl FnOnce(&mut CallInfo)) {
        f(&mut self.info.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// A copy of what is known so far.
    pub fn info(&self) -> CallInfo {
        self.info.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Whether this refusal of an unknown caller is recorded one by one:
    /// takes one record from its peer's allowance, and writes the peer's
    /// pending summary first. When not, the call leaves no events.
    pub fn admit_refusal(&self, audit: &AuditHandle) -> bool {
        let a = self.refusals.admit(self.peer_ip);
        for summary in a.summaries {
            audit.record(summary);
        }
        if !a.record {
            self.note(|i| i.unrecorded = true);
            self.metrics.refusals_unrecorded.inc();
        }
        a.record
    }

    pub(crate) fn set_attempt_ack(&self, rx: Ack) {
        *self.ack.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx);
    }

    /// Waits until the attempt event is committed (fail closed).
    pub async fn attempt_committed(&self) -> Result<crate::audit::Committed, AuditError> {
        let rx = self.ack.lock().unwrap_or_else(|p| p.into_inner()).take();
        match rx {
            Some(rx) => rx.await.unwrap_or(Err(AuditError::Stopped)),
            None => Err(AuditError::Stopped),
        }
    }

    /// Records the call's end now as `failed` with `code`, for a handler
    /// that ends its stream with an error the client may never read (it
    /// stopped reading). The status reaching the client later, or the
    /// client leaving, writes nothing more. False if the call had ended.
    pub fn end_failed(&self, audit: &AuditHandle, code: Code, reason: &str) -> bool {
        if self.ended.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return false;
        }
        let mut e = self.event(Kind::Failed);
        e.code = Some(code_name(code).to_string());
        let mut detail = self.info().detail;
        detail.insert("started_at".into(), self.started_at.clone().into());
        detail.insert("reason".into(), reason.into());
        e.detail = Some(serde_json::Value::Object(detail).to_string());
        audit.record(e);
        if self.method.ends_with("/ExportCase") {
            self.metrics
                .finished(Kind::Failed.as_str(), code_name(code));
        }
        true
    }

    /// An event of `kind` carrying what is known of this call.
    pub fn event(&self, kind: Kind) -> Event {
        let i = self.info();
        let mut e = Event::new(kind, self.request_id.clone());
        e.method = Some(self.method.clone());
        e.peer = self.peer.clone();
        e.principal = i.principal;
        e.on_behalf_of = i.on_behalf_of;
        e.tls_identity = i.tls_identity;
        e.case_id = i.case_id;
        e.export_id = i.export_id;
        e.purpose = i.purpose;
        e
    }
}

/// Canonical gRPC code names, as in the audit trail and docs.
pub fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Writes the terminal event once: explicitly, or as `cancelled` on drop.
struct Terminal {
    ctx: CallContext,
    audit: AuditHandle,
    open: OpenCalls,
    done: bool,
}

/// Calls that have not ended yet, so that a server stopping with calls
/// still attached can give each its terminal event.
#[derive(Clone, Default)]
pub struct OpenCalls(Arc<Mutex<std::collections::HashMap<String, CallContext>>>);

impl OpenCalls {
    fn insert(&self, ctx: &CallContext) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ctx.request_id.clone(), ctx.clone());
    }

    fn remove(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Queues a `failed UNAVAILABLE` end for every call still open; used
    /// when the server stops while clients keep streams open.
    pub fn end_all(&self, audit: &AuditHandle) -> usize {
        let calls: Vec<CallContext> = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(_, c)| c)
            .collect();
        let mut n = 0;
        for ctx in calls {
            if ctx.ended.swap(true, std::sync::atomic::Ordering::SeqCst) || ctx.info().unrecorded {
                continue;
            }
            let mut e = ctx.event(Kind::Failed);
            e.code = Some(code_name(Code::Unavailable).to_string());
            e.detail = Some(
                serde_json::json!({
                    "started_at": ctx.started_at,
                    "reason": "server stopped before the call ended",
                })
                .to_string(),
            );
            audit.record(e);
            if ctx.method.ends_with("/ExportCase") {
                ctx.metrics.finished(Kind::Failed.as_str(), "UNAVAILABLE");
            }
            n += 1;
        }
        n
    }
}

impl Terminal {
    fn finish(&mut self, code: Option<Code>) {
        if self.done {
            return;
        }
        self.done = true;
        self.open.remove(&self.ctx.request_id);
        if self
            .ctx
            .ended
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            // Already ended by the server's final sweep.
            return;
        }
        let info = self.ctx.info();
        let kind = match code {
            None => Kind::Cancelled,
            Some(_) if info.denied => Kind::Denied,
            Some(Code::Ok) => Kind::Completed,
            Some(_) => Kind::Failed,
        };
        let mut e = self.ctx.event(kind);
        let code_text = code_name(code.unwrap_or(Code::Cancelled));
        e.code = Some(code_text.to_string());
        if self.ctx.method.ends_with("/ExportCase") {
            let m = &self.ctx.metrics;
            m.finished(kind.as_str(), code_text);
            if kind == Kind::Completed {
                m.export_duration
                    .observe(self.ctx.started.elapsed().as_secs_f64());
            }
        }
        if info.unrecorded {
            return;
        }
        let mut detail = info.detail;
        detail.insert("started_at".into(), self.ctx.started_at.clone().into());
        e.detail = Some(serde_json::Value::Object(detail).to_string());
        // Queued without waiting: a cancelled call's end is still written.
        self.audit.record(e);
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.finish(None);
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<i32>().ok())
        .map(Code::from)
}

/// tonic answers a request it cannot decode (say, a string field that is
/// not UTF-8) with INTERNAL; it is the caller's error, so say so.
fn caller_error_for_undecodable_request(headers: &mut http::HeaderMap) {
    let undecodable = status_of(headers) == Some(Code::Internal)
        && headers.get("grpc-message").is_some_and(|m| {
            let m = m.as_bytes();
            m.starts_with(b"failed to decode") || m.starts_with(b"failed%20to%20decode")
        });
    if undecodable {
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
    }
}

/// The methods of this crate's services (a test holds the list to the
/// proto files). Every other path, but those of the health and reflection
/// services, is an unknown method.
const KNOWN_METHODS: &[&str] = &[
    "/case_export.v1.ExportService/ExportCase",
    "/case_export.v1.AuditService/ListEvents",
    "/case_export.v1.AuditService/VerifyLog",
];

/// Services that need no credentials and are not recorded: probes and
/// tools (grpcurl) use them, and they reveal nothing of the cases.
const UNAUDITED_SERVICES: &[&str] = &[
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// How the layer treats a request path.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Audited,
    Unaudited,
    Unknown,
}

fn route(path: &str) -> Route {
    if KNOWN_METHODS.contains(&path) {
        Route::Audited
    } else if UNAUDITED_SERVICES.iter().any(|s| path.starts_with(s)) {
        Route::Unaudited
    } else {
        Route::Unknown
    }
}

/// Adds audit end events to the calls of this crate's services.
#[derive(Clone)]
pub struct AuditLayer {
    pub audit: AuditHandle,
    pub open: OpenCalls,
    pub refusals: Arc<RefusalLimiter>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl<S> tower::Layer<S> for AuditLayer {
    type Service = RecordedService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RecordedService {
            inner,
            audit: self.audit.clone(),
            open: self.open.clone(),
            refusals: self.refusals.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The service `AuditLayer` makes: the wrapped service, with every call
/// of this crate's services recorded to its end.
#[derive(Clone)]
pub struct RecordedService<S> {
    inner: S,
    audit: AuditHandle,
    open: OpenCalls,
    refusals: Arc<RefusalLimiter>,
    metrics: Arc<crate::metrics::Metrics>,
}

fn peer_of<B>(req: &http::Request<B>) -> Option<std::net::SocketAddr> {
    let ext = req.extensions();
    ext.get::<TcpConnectInfo>()
        .and_then(|c| c.remote_addr())
        .or_else(|| {
            ext.get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|c| c.get_ref().remote_addr())
        })
}

impl<S> RecordedService<S> {
    /// Answers a call of an unknown method with UNIMPLEMENTED, without
    /// credentials (there is nothing to authorize), and records it as any
    /// refusal of an unknown caller: `attempt` and `failed`, the path
    /// bounded, at the peer's record rate.
    fn unknown_method<B>(&self, req: &http::Request<B>) -> http::Response<()> {
        let ctx = CallContext::new(
            bounded_method(req.uri().path()),
            peer_of(req),
            self.refusals.clone(),
            self.metrics.clone(),
        );
        if ctx.admit_refusal(&self.audit) {
            let mut attempt = ctx.event(Kind::Attempt);
            attempt.detail = Some(serde_json::json!({ "reason": "unknown method" }).to_string());
            self.audit.record(attempt);
            let mut end = ctx.event(Kind::Failed);
            end.code = Some(code_name(Code::Unimplemented).to_string());
            end.detail = Some(serde_json::json!({ "started_at": ctx.started_at }).to_string());
            self.audit.record(end);
        }
        tonic::Status::unimplemented(
            "unknown method: this server offers case_export.v1.ExportService/ExportCase \
             and case_export.v1.AuditService/ListEvents and VerifyLog",
        )
        .into_http()
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for RecordedService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body + Unpin,
{
    type Response = http::Response<AuditBody<ResBody>>;
    type Error = S::Error;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<ReqBody>) -> Self::Future {
        let path = req.uri().path().to_string();
        match route(&path) {
            Route::Audited => {}
            Route::Unaudited => {
                let fut = self.inner.call(req);
                return Box::pin(async move {
                    fut.await.map(|r| {
                        r.map(|b| AuditBody {
                            inner: Some(b),
                            terminal: None,
                        })
                    })
                });
            }
            Route::Unknown => {
                // The body is made when the future is polled: the future
                // then holds only the (Send) status response.
                let resp = self.unknown_method(&req);
                return Box::pin(async move {
                    Ok(resp.map(|()| AuditBody {
                        inner: None,
                        terminal: None,
                    }))
                });
            }
        }
        let ctx = CallContext::new(
            path,
            peer_of(&req),
            self.refusals.clone(),
            self.metrics.clone(),
        );
        req.extensions_mut().insert(ctx.clone());
        self.open.insert(&ctx);
        let mut terminal = Terminal {
            ctx,
            audit: self.audit.clone(),
            open: self.open.clone(),
            done: false,
        };
        let fut = self.inner.call(req);
        Box::pin(async move {
            // If this future is dropped first, `terminal` records the cancel.
            let mut resp = fut.await?;
            caller_error_for_undecodable_request(resp.headers_mut());
            if let Some(code) = status_of(resp.headers()) {
                terminal.finish(Some(code));
                return Ok(resp.map(|b| AuditBody {
                    inner: Some(b),
                    terminal: None,
                }));
            }
            Ok(resp.map(|b| AuditBody {
                inner: Some(b),
                terminal: Some(terminal),
            }))
        })
    }
}

/// A response body that records the call's end from its trailers, or its
/// cancellation when dropped first. Without an inner body it is empty (the
/// status is in the headers).
pub struct AuditBody<B> {
    inner: Option<B>,
    terminal: Option<Terminal>,
}

impl<B: Body + Unpin> Body for AuditBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        if let Some(t) = this.terminal.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        t.finish(Some(status_of(trailers).unwrap_or(Code::Unknown)));
                    }
                }
                Poll::Ready(Some(Err(_))) => t.finish(Some(Code::Internal)),
                Poll::Ready(None) => t.finish(Some(Code::Unknown)),
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rpc of the proto files is a known method, and nothing else.
    #[test]
    fn known_methods_are_the_rpcs_of_the_proto_files() {
        let mut from_proto = Vec::new();
        for text in [
            include_str!("../../proto/case_export/v1/export.proto"),
            include_str!("../../proto/case_export/v1/audit.proto"),
        ] {
            let mut service = "";
            for line in text.lines().map(str::trim) {
                if let Some(rest) = line.strip_prefix("service ") {
                    service = rest.split_whitespace().next().unwrap_or("");
                } else if let Some(rest) = line.strip_prefix("rpc ") {
                    let name = rest.split('(').next().unwrap_or("").trim();
                    from_proto.push(format!("/case_export.v1.{service}/{name}"));
                }
            }
        }
        from_proto.sort();
        let mut known: Vec<String> = KNOWN_METHODS.iter().map(|m| m.to_string()).collect();
        known.sort();
        assert_eq!(known, from_proto);
    }

    #[test]
    fn routes() {
        assert_eq!(
            route("/case_export.v1.ExportService/ExportCase"),
            Route::Audited
        );
        assert_eq!(route("/grpc.health.v1.Health/Check"), Route::Unaudited);
        assert_eq!(
            route("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Route::Unaudited
        );
        for p in [
            "/case_export.v1.ExportService/Exportcase",
            "/case_export.v1.ExportService/ExportCase/x",
            "/case_export.v2.ExportService/ExportCase",
            "/other.Service/Method",
            "/grpc.health.v1.Healthy/Check",
            "/",
        ] {
            assert_eq!(route(p), Route::Unknown, "{p}");
        }
    }
}
