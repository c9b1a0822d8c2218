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
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info, info_span, warn};

/// The gRPC export service.
#[derive(Clone)]
pub struct ExportSvc {
    pub(crate) state: Arc<ServerState>,
}

type ExportStream = ReceiverStream<Result<ExportCaseResponse, Status>>;

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
        let mut snapshot = match snapshot {
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
        let workers = st.config.seal_workers();
        let producer_span = span.clone();
        let mut out = Outbox {
            tx,
            end_slot,
            hard: st.hard_stop_rx.clone(),
            rt: tokio::runtime::Handle::current(),
        };
        tokio::task::spawn_blocking(move || {
            let _enter = producer_span.enter();
            // Held until the producer ends, however it ends.
            let _permit = permit;
            let _reservation = reservation;
            if out.send(msg(Msg::Header(header))).is_err() {
                info!("client went away or shutdown before the first chunk");
                return;
            }
            let key = match SecretKey::generate() {
                Ok(k) => k,
                Err(_) => {
                    out.fail(ExportError::Internal(eid.clone()).into());
                    return;
                }
            };
            let sealer = Sealer::new(&key, export_id, chunk_size, workers);
            let state = st.clone();
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
                Ok(Err(Stop::ClientGone)) => {
                    info!("client went away mid-stream; export cancelled");
                    return;
                }
                Ok(Err(Stop::Shutdown)) => {
                    warn!("export ended by shutdown");
                    out.fail(ExportError::ShuttingDown.into());
                    return;
                }
                Err(e) => {
                    tracing::error!(error = %e, "serializing the snapshot failed");
                    out.fail(ExportError::Internal(eid.clone()).into());
                    return;
                }
            };
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
                info!("client went away before the key; export cancelled");
                return;
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
                out.fail(ExportError::AuditUnavailable.into());
                return;
            }
            let fernet_key = key.expose_fernet_key();
            let key_msg = ExportKey {
                fernet_key: fernet_key.to_string(),
                ciphertext_sha256: hex::encode(summary.sha256),
                chunk_count: summary.chunks,
                ciphertext_size: summary.ciphertext_size,
                warning: KEY_WARNING.to_string(),
            };
            if out.send(msg(Msg::Key(key_msg))).is_err() {
                info!("client went away before the key; export cancelled");
                return;
            }
            info!(
                chunks = summary.chunks,
                plaintext_bytes = summary.plaintext_size,
                ciphertext_sha256 = %hex::encode(summary.sha256),
                "export completed"
            );
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The producer's side of the stream: sends wait for the client, and give
/// up when it goes away or when the shutdown grace period ends.
struct Outbox {
    tx: mpsc::Sender<Result<ExportCaseResponse, Status>>,
    /// The slot reserved for an error status (see `fail`).
    end_slot: Option<mpsc::OwnedPermit<Result<ExportCaseResponse, Status>>>,
    hard: tokio::sync::watch::Receiver<bool>,
    rt: tokio::runtime::Handle,
}

impl Outbox {
    fn send(&mut self, m: Result<ExportCaseResponse, Status>) -> Result<(), Stop> {
        let Outbox { tx, hard, rt, .. } = self;
        rt.block_on(async {
            tokio::select! {
                r = tx.send(m) => r.map_err(|_| Stop::ClientGone),
                _ = hard.wait_for(|v| *v) => Err(Stop::Shutdown),
            }
        })
    }

    /// Ends the stream with an error status. A stream that ends without it
    /// ends OK with no key (and is audited `completed`), so the status goes
    /// into the slot reserved for it, which never waits, not even after a
    /// hard stop (when `send` gives up at once). Without that slot it waits
    /// for room as `send` does.
    fn fail(&mut self, s: Status) {
        if let Some(slot) = self.end_slot.take() {
            slot.send(Err(s));
        } else if let Err(mpsc::error::TrySendError::Full(m)) = self.tx.try_send(Err(s)) {
            let _ = self.send(m);
        }
    }
}

/// Why the sealing loop stopped early.
enum Stop {
    ClientGone,
    Shutdown,
}
