//! `ExportService::export_case` as its steps: admit the call, reserve its
//! memory, build the snapshot, then a producer that seals and streams,
//! records custody, and only then releases the key. Blocking work runs on
//! blocking threads; async code moves messages.

mod deadline;
mod outbox;
mod producer;

use super::auth::Principal;
use super::budget::{ExportNeed, Reservation};
use super::error::ExportError;
use super::layer::CallContext;
use super::slots::PrincipalSlot;
use super::state::ServerState;
use crate::audit::Kind;
use crate::contract::{file_name_for, validate_case_id, validate_purpose};
use crate::pb::export_service_server::ExportService;
use crate::pb::{ExportCaseRequest, ExportHeader, TableRowCount};
use crate::seal::{self, ExportId, FORMAT_VERSION};
use crate::snapshot::{CaseRequest, Snapshot};
use deadline::Deadline;
use outbox::ExportStream;
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;
use tonic::{Request, Response, Status};
use tracing::{Instrument, Span, info, info_span, warn};

/// The gRPC export service.
#[derive(Clone)]
pub struct ExportSvc {
    pub(crate) state: Arc<ServerState>,
}

#[tonic::async_trait]
impl ExportService for ExportSvc {
    type ExportCaseStream = ExportStream;

    async fn export_case(
        &self,
        request: Request<ExportCaseRequest>,
    ) -> Result<Response<Self::ExportCaseStream>, Status> {
        let call = admit(&self.state, request).await?;
        let reservation = reserve(&self.state).await?;
        let (snapshot, reservation) = build(&self.state, &call, reservation).await?;
        Ok(Response::new(producer::start(
            &self.state,
            call,
            snapshot,
            reservation,
        )))
    }
}

/// An export that passed its checks, holds its slots, and is on record as
/// `started`.
pub(super) struct Admitted {
    ctx: CallContext,
    /// Whom the key is sealed to: the request's recipients, then the
    /// server's escrow ones; empty for a raw key.
    recipients: Vec<String>,
    principal: Option<Principal>,
    case_id: String,
    purpose: String,
    deadline: Deadline,
    /// RFC 3339 UTC; in the header and the manifest.
    created_at: String,
    export_id: ExportId,
    /// The export id as 32 hex digits, for logs and errors.
    eid: String,
    span: Span,
    /// Held until the producer ends, however it ends.
    _slots: (OwnedSemaphorePermit, PrincipalSlot),
}

/// The attempt on record first (fail closed: nothing is read before), then
/// the request's values, the drain, the slots, and the `started` event.
// Long: the fail-closed order of admission written as code; each step depends on the one before.
async fn admit(
    st: &ServerState,
    request: Request<ExportCaseRequest>,
) -> Result<Admitted, ExportError> {
    let ctx = request
        .extensions()
        .get::<CallContext>()
        .cloned()
        .ok_or_else(|| ExportError::Internal("-".into()))?;
    let principal = request.extensions().get::<Principal>().cloned();
    let deadline = Deadline::of_call(&request, st.config.export_deadline());
    let req = request.into_inner();
    if let Err(e) = ctx.attempt_committed().await {
        warn!(request_id = %ctx.request_id, error = %e, "attempt not recorded; export refused");
        return Err(ExportError::AuditUnavailable);
    }
    st.metrics.exports_started.inc();
    validate_case_id(&req.case_id)?;
    validate_purpose(&req.purpose)?;
    ctx.note(|i| {
        i.case_id = Some(req.case_id.clone());
        i.purpose = Some(req.purpose.clone());
    });
    let recipients = check_recipients(st, principal.as_ref(), &req.recipients)?;
    if st.is_draining() {
        return Err(ExportError::ShuttingDown);
    }
    let name = principal.as_ref().map_or("-", |p| p.name.as_str());
    let principal_slot = st
        .principal_slots
        .try_take(name)
        .map_err(|cap| ExportError::PrincipalExhausted(name.to_string(), cap))?;
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
        return Err(ExportError::AuditUnavailable);
    }
    info!(parent: &span, purpose = %req.purpose, "export started");
    Ok(Admitted {
        ctx,
        recipients,
        principal,
        case_id: req.case_id,
        purpose: req.purpose,
        deadline,
        created_at: crate::audit::now_rfc3339(),
        export_id,
        eid,
        span,
        _slots: (permit, principal_slot),
    })
}

/// The recipients a key is sealed to, checked: within the cap, each one
/// parses, and present where the server requires them. The server's escrow
/// recipients follow the caller's.
fn check_recipients(
    st: &ServerState,
    principal: Option<&Principal>,
    asked: &[String],
) -> Result<Vec<String>, ExportError> {
    let keys = &st.config.keys;
    if asked.len() > keys.max_recipients {
        return Err(ExportError::InvalidArgument(format!(
            "recipients: {} given, this server takes at most {}",
            asked.len(),
            keys.max_recipients
        )));
    }
    for (i, r) in asked.iter().enumerate() {
        crate::keywrap::parse_recipient(i + 1, r)
            .map_err(|e| ExportError::InvalidArgument(format!("recipients: {e}")))?;
    }
    let name = principal.map_or("-", |p| p.name.as_str());
    let says = principal.and_then(|p| p.require_recipients);
    if asked.is_empty() && st.config.requires_recipients(says) {
        return Err(ExportError::RecipientsRequired(name.to_owned()));
    }
    if asked.is_empty() {
        return Ok(Vec::new());
    }
    let mut all: Vec<String> = asked.iter().map(|r| r.trim().to_owned()).collect();
    all.extend(keys.escrow_recipients.iter().cloned());
    Ok(all)
}

/// Room in the memory budget for the export's worst case, waiting up to
/// `budget_wait_ms`.
async fn reserve(st: &ServerState) -> Result<(Reservation, u64), ExportError> {
    let need = ExportNeed::estimate(&st.config, &st.source).await;
    let reservation = st
        .budget
        .reserve(need.bytes, st.config.budget_wait())
        .await
        .ok_or(ExportError::MemoryBusy)?;
    Ok((reservation, need.snapshot_limit))
}

/// The case's snapshot (a SQLite source's on a blocking thread); the reservation then
/// shrinks to what it really holds. The case's tenant goes with the call's
/// custody record and end, so auditors limited to tenants see the exports
/// of their tenants.
async fn build(
    st: &ServerState,
    call: &Admitted,
    (mut reservation, snapshot_limit): (Reservation, u64),
) -> Result<(Snapshot, Reservation), ExportError> {
    let cfg = &st.config;
    let request = CaseRequest {
        tenant_column: Some(cfg.tenant_column.clone()),
        allowed_tenants: call.principal.as_ref().and_then(|p| p.tenants.clone()),
        case_id: call.case_id.clone(),
        scope: cfg.scope.clone(),
        export_id: call.export_id,
        created_at: call.created_at.clone(),
        max_bytes: snapshot_limit,
        busy_timeout: cfg.busy_timeout(),
    };
    let snapshot = st
        .source
        .build(request)
        .instrument(call.span.clone())
        .await
        .map_err(|e| {
            let e = ExportError::from_snapshot(e, &call.eid);
            warn!(parent: &call.span, code = ?e.code(), error = %e, "export refused");
            e
        })?;
    if let Some(t) = &snapshot.tenant {
        call.ctx.note(|i| {
            i.detail.insert("tenant".into(), t.clone().into());
        });
    }
    reservation.shrink_to(snapshot.len() + st.config.stream_buffer_bytes());
    st.metrics.snapshot_size.observe(snapshot.len() as f64);
    Ok((snapshot, reservation))
}

/// The header of an export: what the client checks and writes the file
/// by. The manifest inside the snapshot says when it was made.
fn header(call: &Admitted, snapshot: &Snapshot, chunk_size: usize) -> ExportHeader {
    ExportHeader {
        export_id: call.eid.clone(),
        case_id: call.case_id.clone(),
        file_name: file_name_for(&call.case_id),
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
        created_at: call.created_at.clone(),
    }
}
