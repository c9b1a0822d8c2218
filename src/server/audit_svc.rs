//! `AuditService`: the custody trail over gRPC, for the `auditor` role.
//! Reads use their own read-only connection on a blocking thread.

use super::auth::Principal;
use super::config::PrincipalConfig;
use crate::audit::{
    ListFilter, TenantView, list_events, open_log_read_only, verify_log, visible_request_ids,
};
use crate::pb::audit_service_server::AuditService;
use crate::pb::{AuditEvent, ListEventsRequest, VerifyLogRequest, VerifyLogResponse};
use std::path::PathBuf;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

/// The gRPC audit service.
#[derive(Clone)]
pub struct AuditSvc {
    pub(crate) audit_db: PathBuf,
    pub(crate) principals: std::sync::Arc<Vec<PrincipalConfig>>,
}

impl AuditSvc {
    /// What the calling auditor may see: `None` for an auditor without
    /// tenant limits (everything).
    fn view_of<T>(&self, request: &Request<T>) -> Result<Option<TenantView>, Status> {
        let principal = request
            .extensions()
            .get::<Principal>()
            .ok_or_else(|| Status::internal("call reached the audit service unauthenticated"))?;
        let Some(tenants) = &principal.tenants else {
            return Ok(None);
        };
        let principals = self
            .principals
            .iter()
            .filter(|p| {
                p.tenants
                    .as_ref()
                    .is_some_and(|pt| pt.iter().all(|t| tenants.contains(t)))
            })
            .map(|p| p.name.clone())
            .collect();
        Ok(Some(TenantView {
            tenants: tenants.clone(),
            principals,
        }))
    }
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    tracing::warn!(error = %e, "audit read failed");
    Status::unavailable("the audit store cannot be read now; retry later")
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl AuditService for AuditSvc {
    type ListEventsStream = ReceiverStream<Result<AuditEvent, Status>>;

    async fn list_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<Self::ListEventsStream>, Status> {
        let visible_to = self.view_of(&request)?;
        let r = request.into_inner();
        let filter = ListFilter {
            visible_to,
            case_id: opt(r.case_id),
            principal: opt(r.principal),
            since: opt(r.since),
            until: opt(r.until),
            limit: (r.limit > 0).then_some(r.limit),
        };
        let path = self.audit_db.clone();
        let events = tokio::task::spawn_blocking(move || {
            let conn = open_log_read_only(&path)?;
            list_events(&conn, &filter)
        })
        .await
        .map_err(unavailable)?
        .map_err(|e| match e {
            crate::audit::AuditError::BadFilter(m) => Status::invalid_argument(m),
            other => unavailable(other),
        })?;
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            for (seq, e, hash) in events {
                let msg = AuditEvent {
                    seq,
                    ts: e.ts,
                    kind: e.kind.as_str().to_string(),
                    request_id: e.request_id,
                    method: e.method.unwrap_or_default(),
                    principal: e.principal.unwrap_or_default(),
                    on_behalf_of: e.on_behalf_of.unwrap_or_default(),
                    peer: e.peer.unwrap_or_default(),
                    tls_identity: e.tls_identity.unwrap_or_default(),
                    case_id: e.case_id.unwrap_or_default(),
                    export_id: e.export_id.unwrap_or_default(),
                    purpose: e.purpose.unwrap_or_default(),
                    code: e.code.unwrap_or_default(),
                    detail: e.detail.unwrap_or_default(),
                    instance: e.instance,
                    version: e.version,
                    hash,
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn verify_log(
        &self,
        request: Request<VerifyLogRequest>,
    ) -> Result<Response<VerifyLogResponse>, Status> {
        let view = self.view_of(&request)?;
        let path = self.audit_db.clone();
        let v = tokio::task::spawn_blocking(move || {
            let conn = open_log_read_only(&path)?;
            let mut v = verify_log(&conn, &[], None)?;
            // The chain's integrity is for every auditor; which calls are
            // open is event content, shown only where the caller may see it.
            if let Some(view) = view {
                let visible = visible_request_ids(&conn, &view)?;
                v.unterminated.retain(|u| visible.contains(&u.1));
            }
            Ok::<_, crate::audit::AuditError>(v)
        })
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?;
        Ok(Response::new(VerifyLogResponse {
            ok: v.chain_ok(),
            log_id: v.log_id.clone(),
            events: v.events,
            head_seq: v.last_seq,
            head_hash: v.head_hash.clone(),
            problems: v.problems.clone(),
            unterminated: v.unterminated.iter().map(|u| u.1.clone()).collect(),
        }))
    }
}
