//! `ExportService::export_case`: validate, snapshot, seal and stream, key
//! last. Blocking work runs on blocking threads; async code moves messages.

use super::ServerState;
use super::auth::Principal;
use super::error::{ExportError, validate_case_id, validate_purpose};
use super::layer::CallContext;
use crate::audit::Kind;
use crate::pb::export_case_response::Message as Msg;
use crate::pb::export_service_server::ExportService;
use crate::pb::{
    EncryptedChunk, ExportCaseRequest, ExportCaseResponse, ExportHeader, ExportKey, TableRowCount,
};
use crate::seal::{self, ExportId, FORMAT_VERSION, KEY_WARNING, Sealer, SecretKey};
use crate::snapshot::{SnapshotRequest, build_snapshot};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info, info_span, warn};

/// The gRPC export service.
#[derive(Clone)]
pub struct ExportSvc {
    pub(crate) state: Arc<ServerState>,
}

fn msg(m: Msg) -> Result<ExportCaseResponse, Status> {
    Ok(ExportCaseResponse { message: Some(m) })
}

/// The file name a case id gets; the id was validated to a safe charset.
pub fn file_name_for(case_id: &str) -> String {
    format!("case_offline_{case_id}.enc")
}

#[tonic::async_trait]
impl ExportService for ExportSvc {
    type ExportCaseStream = ExportStream;

    async fn export_case(
        &self,
        request: Request<ExportCaseRequest>,
    ) -> Result<Response<Self::ExportCaseStream>, Status> {
        let ctx = request
            .extensions()
            .get::<CallContext>()
            .cloned()
            .ok_or_else(|| ExportError::Internal("-".into()))?;
        let principal = request.extensions().get::<Principal>().cloned();
        let caller_timeout = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let deadline = Deadline::new(
            std::time::Instant::now(),
            self.state.config.export_deadline(),
            caller_timeout,
        );
        let req = request.into_inner();
        let st = self.state.clone();
        // Fail closed: nothing is read before the attempt is on record.
        if let Err(e) = ctx.attempt_committed().await {
            warn!(request_id = %ctx.request_id, error = %e, "attempt not recorded; export refused");
            return Err(ExportError::AuditUnavailable.into());
        }
        crate::metrics::metrics().exports_started.inc();
        validate_case_id(&req.case_id)?;
        validate_purpose(&req.purpose)?;
        ctx.note(|i| {
            i.case_id = Some(req.case_id.clone());
            i.purpose = Some(req.purpose.clone());
        });
        if st.draining.load(Ordering::SeqCst) {
            return Err(ExportError::ShuttingDown.into());
        }
        let principal_name = principal.as_ref().map_or("-", |p| p.name.as_str());
        let principal_slot = st
            .principal_slots
            .try_take(principal_name)
            .map_err(|cap| ExportError::PrincipalExhausted(principal_name.to_string(), cap))?;
        let permit = st
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| ExportError::Exhausted(st.config.max_in_flight))?;

        let export_id = ExportId::random().map_err(|_| ExportError::Internal("-".into()))?;
        let eid = export_id.to_hex();
        ctx.note(|i| i.export_id = Some(eid.clone()));
        let span = info_span!(
            "export",
            request_id = %ctx.request_id,
            export_id = %eid,
            case_id = %req.case_id
        );
        if let Err(e) = st.audit.commit(ctx.event(Kind::Started)).await {
            warn!(parent: &span, error = %e, "start not recorded; export refused");
            return Err(ExportError::AuditUnavailable.into());
        }
        info!(parent: &span, purpose = %req.purpose, "export started");

        let created_at = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|_| ExportError::Internal(eid.clone()))?;
        let cfg = st.config.clone();
        // The snapshot cannot outgrow twice its source (it is a subset with
        // the same indexes), so a small source need not reserve the ceiling.
        let mut wal = cfg.case_db.clone().into_os_string();
        wal.push("-wal");
        let mut source_size = 0;
        for p in [cfg.case_db.as_os_str(), wal.as_os_str()] {
            source_size += tokio::fs::metadata(p).await.map(|m| m.len()).unwrap_or(0);
        }
        let snapshot_limit = cfg
            .max_snapshot_bytes
            .min(source_size.saturating_mul(2).saturating_add(16 << 20));
        let mut reservation = st
            .budget
            .reserve(
                snapshot_limit
                    + cfg.stream_buffer_bytes()
                    + crate::snapshot::source_cache_bytes(snapshot_limit),
                cfg.budget_wait(),
            )
            .await
            .ok_or(ExportError::MemoryBusy)?;
        let case_id = req.case_id.clone();
        let created = created_at.clone();
        let tenants = principal.and_then(|p| p.tenants);
        let snapshot = tokio::task::spawn_blocking(move || {
            build_snapshot(&SnapshotRequest {
                tenant_column: Some(cfg.tenant_column.as_str()),
                allowed_tenants: tenants.as_deref(),
                source: &cfg.case_db,
                case_id: &case_id,
                scope: &cfg.scope,
                export_id,
                created_at: &created,
                max_bytes: snapshot_limit,
                busy_timeout: cfg.busy_timeout(),
            })
        })
        .instrument(span.clone())
        .await
        .map_err(|_| ExportError::Internal(eid.clone()))?;
        let snapshot = match snapshot {
            Ok(s) => s,
            Err(e) => {
                let e = ExportError::from_snapshot(e, &eid);
                warn!(parent: &span, code = ?e.code(), error = %e, "export refused");
                return Err(e.into());
            }
        };

        // The case's tenant goes with the custody record and the call's end,
        // so auditors limited to tenants see the exports of their tenants.
        let tenant = snapshot.tenant.clone();
        if let Some(t) = &tenant {
            ctx.note(|i| {
                i.detail.insert("tenant".into(), t.clone().into());
            });
        }
        reservation.shrink_to(snapshot.len() + st.config.stream_buffer_bytes());
        crate::metrics::metrics()
            .snapshot_size
            .observe(snapshot.len() as f64);
        let chunk_size = st.config.chunk_size;
        let header = ExportHeader {
            export_id: eid.clone(),
            case_id: req.case_id.clone(),
            file_name: file_name_for(&req.case_id),
            format_version: FORMAT_VERSION,
            chunk_size: chunk_size as u32,
            plaintext_size: snapshot.len(),
            chunk_count: seal::chunk_count(snapshot.len(), chunk_size),
            row_counts: snapshot
                .row_counts
                .iter()
                .map(|(t, n)| TableRowCount {
                    table: t.clone(),
                    rows: *n,
                })
                .collect(),
            created_at,
        };

        let row_counts: serde_json::Map<String, serde_json::Value> = snapshot
            .row_counts
            .iter()
            .map(|(t, n)| (t.clone(), (*n).into()))
            .collect();
        // One slot more than the depth, kept from the start for the status
        // that ends a failed stream: it is then queued behind the chunks even
        // when the client is slow and the grace period is over.
        let (tx, rx) = mpsc::channel(st.config.channel_depth + 1);
        let end_slot = tx.clone().try_reserve_owned().ok();
        let queue = Arc::new(Mutex::new(rx));
        let workers = st.config.seal_workers();
        let producer_span = span.clone();
        let mut out = Outbox {
            tx,
            end_slot,
            queue: Arc::downgrade(&queue),
            hard: st.hard_stop_rx.clone(),
            rt: tokio::runtime::Handle::current(),
            deadline,
            send_timeout: st.config.send_timeout(),
            ctx: ctx.clone(),
            audit: st.audit.clone(),
            done: false,
        };
        let job = Job {
            state: st.clone(),
            ctx,
            export_id,
            eid,
            header,
            snapshot,
            chunk_size,
            workers,
            row_counts,
        };
        tokio::task::spawn_blocking(move || {
            let _enter = producer_span.enter();
            // Held until the producer ends, however it ends.
            let _slots = (permit, principal_slot);
            let _reservation = reservation;
            match produce(&mut out, job) {
                Ok(()) => out.ended(),
                Err(End::ClientGone(when)) => {
                    info!("client went away {when}; export cancelled");
                    out.ended();
                }
                Err(End::Fail(e)) => out.fail(e),
            }
            // Anything else (a panic) ends the stream in `Outbox::drop`.
        });
        Ok(Response::new(ExportStream(queue)))
    }
}

/// What the producer works on.
struct Job {
    state: Arc<ServerState>,
    ctx: CallContext,
    export_id: ExportId,
    eid: String,
    header: ExportHeader,
    snapshot: crate::snapshot::Snapshot,
    chunk_size: usize,
    workers: usize,
    row_counts: serde_json::Map<String, serde_json::Value>,
}

/// How a producer ended before its key.
enum End {
    /// The client left; there is nobody to tell (`when` for the log).
    ClientGone(&'static str),
    /// The stream ends with this error.
    Fail(ExportError),
}

impl End {
    fn from_stop(s: Stop, when: &'static str) -> Self {
        match s {
            Stop::ClientGone => End::ClientGone(when),
            Stop::Shutdown => {
                warn!("export ended by shutdown");
                End::Fail(ExportError::ShuttingDown)
            }
            Stop::Deadline(why) => {
                warn!(reason = %why, "export ended by its deadline");
                End::Fail(ExportError::DeadlineExceeded(why))
            }
        }
    }
}

/// Header, sealed chunks, custody record, key: in that order, each step
/// only after the one before succeeded.
fn produce(out: &mut Outbox, job: Job) -> Result<(), End> {
    let Job {
        state,
        ctx,
        export_id,
        eid,
        header,
        mut snapshot,
        chunk_size,
        workers,
        row_counts,
    } = job;
    out.send(msg(Msg::Header(header)))
        .map_err(|s| End::from_stop(s, "before the first chunk"))?;
    let key = SecretKey::generate().map_err(|_| End::Fail(ExportError::Internal(eid.clone())))?;
    let sealer = Sealer::new(&key, export_id, chunk_size, workers);
    let sealed = snapshot.with_bytes(|bytes| {
        sealer.seal(bytes, |index, token| {
            let n = token.len() as u64 + 1;
            out.send(msg(Msg::Chunk(EncryptedChunk { index, token })))?;
            crate::metrics::metrics().bytes_streamed.inc_by(n);
            Ok(())
        })
    });
    let summary = match sealed {
        Ok(Ok(s)) => s,
        Ok(Err(stop)) => return Err(End::from_stop(stop, "mid-stream")),
        Err(e) => {
            tracing::error!(error = %e, "serializing the snapshot failed");
            return Err(End::Fail(ExportError::Internal(eid)));
        }
    };
    let tenant = snapshot.tenant.clone();
    // Free the plaintext before the key goes out.
    drop(snapshot);
    // The custody record must be committed before the key leaves.
    let detail = serde_json::json!({
        "tenant": tenant,
        "row_counts": row_counts,
        "plaintext_size": summary.plaintext_size,
        "ciphertext_sha256": hex::encode(summary.sha256),
        "ciphertext_size": summary.ciphertext_size,
        "chunk_count": summary.chunks,
        "format_version": FORMAT_VERSION,
    });
    ctx.note(|i| {
        if let serde_json::Value::Object(m) = &detail {
            i.detail.extend(m.clone());
        }
    });
    if out.tx.is_closed() {
        return Err(End::ClientGone("before the key"));
    }
    let mut sealed = ctx.event(Kind::Sealed);
    sealed.detail = Some(detail.to_string());
    let committed = state
        .audit
        .record_acked(sealed)
        .blocking_recv()
        .unwrap_or(Err(crate::audit::AuditError::Stopped));
    if let Err(e) = committed {
        tracing::error!(error = %e, "custody record not committed; key withheld");
        return Err(End::Fail(ExportError::AuditUnavailable));
    }
    let fernet_key = key.expose_fernet_key();
    let key_msg = ExportKey {
        fernet_key: fernet_key.to_string(),
        ciphertext_sha256: hex::encode(summary.sha256),
        chunk_count: summary.chunks,
        ciphertext_size: summary.ciphertext_size,
        warning: KEY_WARNING.to_string(),
    };
    out.send(msg(Msg::Key(key_msg)))
        .map_err(|s| End::from_stop(s, "before the key"))?;
    info!(
        chunks = summary.chunks,
        plaintext_bytes = summary.plaintext_size,
        ciphertext_sha256 = %hex::encode(summary.sha256),
        "export completed"
    );
    Ok(())
}

type Item = Result<ExportCaseResponse, Status>;

/// The response stream. Its queue is shared (weakly) with the producer,
/// which empties it when the export ends past a deadline: a client that
/// stopped reading then holds no sealed chunks, only the final status.
pub struct ExportStream(Arc<Mutex<mpsc::Receiver<Item>>>);

impl tokio_stream::Stream for ExportStream {
    type Item = Item;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Item>> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .poll_recv(cx)
    }
}

/// The producer's side of the stream: sends wait for the client, and give
/// up when it goes away, when the shutdown grace period ends, when one
/// message waits longer than the send timeout, or at the export's deadline.
struct Outbox {
    tx: mpsc::Sender<Item>,
    /// The slot reserved for an error status (see `fail`).
    end_slot: Option<mpsc::OwnedPermit<Item>>,
    /// The response stream's queue; gone once the client is.
    queue: Weak<Mutex<mpsc::Receiver<Item>>>,
    hard: tokio::sync::watch::Receiver<bool>,
    rt: tokio::runtime::Handle,
    deadline: Deadline,
    send_timeout: Duration,
    ctx: CallContext,
    audit: crate::audit::AuditHandle,
    /// Set once the stream has its end: the key sent, an error status
    /// queued, or the client gone.
    done: bool,
}

impl Outbox {
    fn send(&mut self, m: Item) -> Result<(), Stop> {
        let Outbox {
            tx,
            hard,
            rt,
            deadline,
            send_timeout,
            ..
        } = self;
        rt.block_on(async {
            // Biased: once the grace period or the deadline is over, no
            // further message goes out, even when the client keeps up.
            tokio::select! {
                biased;
                _ = hard.wait_for(|v| *v) => Err(Stop::Shutdown),
                _ = tokio::time::sleep_until(deadline.at.into()) => {
                    Err(Stop::Deadline(deadline.reason()))
                }
                r = tokio::time::timeout(*send_timeout, tx.send(m)) => match r {
                    Ok(r) => r.map_err(|_| Stop::ClientGone),
                    Err(_) => Err(Stop::Deadline(format!(
                        "the client read nothing for {} s (send_timeout_secs)",
                        send_timeout.as_secs()
                    ))),
                },
            }
        })
    }

    /// The stream has its end without a status: the key went out, or the
    /// client is gone.
    fn ended(&mut self) {
        self.done = true;
    }

    /// Ends the stream with an error status. A stream that ends without it
    /// ends OK with no key (and is audited `completed`), so the status goes
    /// into the slot reserved for it, which never waits, not even after a
    /// hard stop (when `send` gives up at once). Without that slot it waits
    /// for room as `send` does.
    ///
    /// The call's end is recorded now, not when the status reaches the
    /// client: a client that stopped reading may never take it. Past a
    /// deadline the client is not reading, so the chunks still queued for
    /// it are dropped rather than held until it reads or leaves; otherwise
    /// it gets them, then the status.
    fn fail(&mut self, e: ExportError) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let stalled = matches!(e, ExportError::DeadlineExceeded(_));
        let s = Status::from(e);
        self.ctx.end_failed(&self.audit, s.code(), s.message());
        if stalled && let Some(queue) = self.queue.upgrade() {
            let mut rx = queue.lock().unwrap_or_else(|p| p.into_inner());
            while rx.try_recv().is_ok() {}
        }
        if let Some(slot) = self.end_slot.take() {
            slot.send(Err(s));
        } else if let Err(mpsc::error::TrySendError::Full(m)) = self.tx.try_send(Err(s)) {
            let _ = self.send(m);
        }
    }
}

impl Drop for Outbox {
    // A producer that ends without deciding (a panic) must not leave a
    // stream that ends OK without a key.
    fn drop(&mut self) {
        if !self.done {
            tracing::error!("export producer ended without an outcome");
            self.fail(ExportError::Internal(
                self.ctx.info().export_id.unwrap_or_default(),
            ));
        }
    }
}

/// When an export must be over: the server's `export_deadline_secs` from
/// the call's start, or the caller's `grpc-timeout` if that comes first.
#[derive(Debug, Clone)]
struct Deadline {
    at: std::time::Instant,
    secs: u64,
    from_caller: bool,
}

impl Deadline {
    fn new(start: std::time::Instant, server: Duration, caller: Option<Duration>) -> Self {
        let (limit, from_caller) = match caller {
            Some(c) if c < server => (c, true),
            _ => (server, false),
        };
        Self {
            at: start + limit,
            secs: limit.as_secs(),
            from_caller,
        }
    }

    fn reason(&self) -> String {
        if self.from_caller {
            format!("the call's deadline (grpc-timeout, {} s) passed", self.secs)
        } else {
            format!(
                "the export took longer than its deadline of {} s (export_deadline_secs)",
                self.secs
            )
        }
    }
}

/// A `grpc-timeout` header value: 1 to 8 digits and a unit (H, M, S, m,
/// u, n), as the gRPC HTTP/2 protocol defines it.
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if !(2..=9).contains(&v.len()) || !v.is_ascii() {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Why a send gave up.
enum Stop {
    ClientGone,
    Shutdown,
    /// The export's deadline or the send timeout passed; says which.
    Deadline(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "5", "5s", "-5S", "123456789S", "1.5S", "5 S", "٥S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_earlier_deadline_wins() {
        let t = std::time::Instant::now();
        let server = Duration::from_secs(3600);
        let d = Deadline::new(t, server, None);
        assert_eq!((d.at, d.from_caller), (t + server, false));
        assert!(
            d.reason().contains("export_deadline_secs"),
            "{}",
            d.reason()
        );
        let d = Deadline::new(t, server, Some(Duration::from_secs(5)));
        assert_eq!((d.at, d.from_caller), (t + Duration::from_secs(5), true));
        assert!(d.reason().contains("grpc-timeout"), "{}", d.reason());
        let d = Deadline::new(t, server, Some(Duration::from_secs(7200)));
        assert_eq!((d.at, d.from_caller), (t + server, false));
    }
}
