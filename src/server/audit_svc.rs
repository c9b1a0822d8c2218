//! `AuditService`: the custody trail over gRPC, for the `auditor` role.
//! Reads use their own read-only connection, in batches on blocking
//! threads; `ListEvents` returns one bounded page per call.

use super::auth::Principal;
use super::config::PrincipalConfig;
use super::layer::CallContext;
use crate::audit::{
    AuditError, AuditHandle, Checkpoint, Event, ListFilter, TenantView, list_events,
    open_log_read_only, read_copy, verify_log, visible_request_ids,
};
use crate::pb::audit_service_server::AuditService;
use crate::pb::{AuditEvent, ListEventsRequest, VerifyLogRequest, VerifyLogResponse};
use rusqlite::Connection;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

/// Events read from the trail at a time: a page is read in batches, so
/// neither memory nor a read transaction grows with it.
const BATCH: u64 = 256;
/// Events queued for the network per call.
const DEPTH: usize = 16;
/// Response header giving the page size the server applied.
pub const PAGE_LIMIT_HEADER: &str = "case-export-page-limit";

/// Where the service reads the trail.
#[derive(Clone, Debug)]
pub enum TrailSource {
    /// A SQLite trail, opened read-only per call.
    Sqlite(PathBuf),
    /// A PostgreSQL trail, read in one consistent read per call into an
    /// in-memory copy, so both stores answer alike.
    Postgres(Box<crate::db::PgConnector>),
}

impl TrailSource {
    /// A read-only view of the trail, and the checkpoints stored with it.
    async fn open(&self) -> Result<(Connection, Vec<Checkpoint>), AuditError> {
        match self {
            Self::Sqlite(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || open_log_read_only(&path))
                    .await
                    .map_err(|e| AuditError::Query(e.to_string()))?
                    .map(|c| (c, Vec::new()))
            }
            Self::Postgres(connector) => read_copy(connector).await,
        }
    }
}

/// The gRPC audit service.
#[derive(Clone)]
pub struct AuditSvc {
    pub(crate) audit_db: TrailSource,
    pub(crate) principals: std::sync::Arc<Vec<PrincipalConfig>>,
    /// Most events one `ListEvents` call returns.
    pub(crate) max_events: u64,
    /// How long one event may wait for a client that does not read.
    pub(crate) send_timeout: Duration,
    pub(crate) audit: AuditHandle,
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

type Rows = Vec<(u64, Event, String)>;

/// One batch of the page, on a blocking thread; the connection comes back
/// for the next one.
async fn read_batch(conn: Connection, filter: ListFilter) -> Result<(Connection, Rows), Status> {
    tokio::task::spawn_blocking(move || {
        let rows = list_events(&conn, &filter).map_err(read_error)?;
        Ok((conn, rows))
    })
    .await
    .map_err(unavailable)?
}

/// Fail closed, as for exports: the trail is read only once the read's
/// own attempt is on record (and so is every event queued before it).
async fn attempt_on_record(ctx: Option<&CallContext>) -> Result<(), Status> {
    let Some(ctx) = ctx else { return Ok(()) };
    ctx.attempt_committed().await.map(|_| ()).map_err(|e| {
        tracing::warn!(request_id = %ctx.request_id, error = %e, "attempt not recorded; audit read refused");
        Status::unavailable("the audit store cannot record this call, so nothing was read; retry later")
    })
}

fn read_error(e: AuditError) -> Status {
    match e {
        AuditError::BadFilter(m) => Status::invalid_argument(m),
        other => unavailable(other),
    }
}

fn to_message(seq: u64, e: Event, hash: String) -> AuditEvent {
    AuditEvent {
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
    }
}

#[tonic::async_trait]
impl AuditService for AuditSvc {
    type ListEventsStream = ReceiverStream<Result<AuditEvent, Status>>;

    // Long: the page loop and each way it ends, in one place.

    async fn list_events(
        &self,
        request: Request<ListEventsRequest>,
    ) -> Result<Response<Self::ListEventsStream>, Status> {
        let visible_to = self.view_of(&request)?;
        let ctx = request.extensions().get::<CallContext>().cloned();
        attempt_on_record(ctx.as_ref()).await?;
        let r = request.into_inner();
        let page = match r.limit {
            0 => self.max_events,
            n => n.min(self.max_events),
        };
        let mut filter = ListFilter {
            visible_to,
            case_id: opt(r.case_id),
            principal: opt(r.principal),
            since: opt(r.since),
            until: opt(r.until),
            after_seq: (r.after_seq > 0).then_some(r.after_seq),
            limit: Some(BATCH.min(page)),
        };
        // The first batch is read before answering, so that a bad filter
        // or an unreadable trail is the call's status.
        let (conn, _) = self.audit_db.open().await.map_err(read_error)?;
        let (mut conn, mut rows) = read_batch(conn, filter.clone()).await?;
        let (tx, rx) = mpsc::channel(DEPTH + 1);
        // Kept for the status that ends a failed page (see ExportSvc).
        let end_slot = tx.clone().try_reserve_owned().ok();
        let send_timeout = self.send_timeout;
        let audit = self.audit.clone();
        let fail = move |s: Status| {
            if let Some(ctx) = &ctx {
                ctx.end_failed(&audit, s.code(), s.message());
            }
            if let Some(slot) = end_slot {
                slot.send(Err(s));
            }
        };
        tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                let n = rows.len() as u64;
                for (seq, e, hash) in rows {
                    match tokio::time::timeout(send_timeout, tx.send(Ok(to_message(seq, e, hash))))
                        .await
                    {
                        Ok(Ok(())) => filter.after_seq = Some(seq),
                        // The client left.
                        Ok(Err(_)) => return,
                        Err(_) => {
                            let last = filter.after_seq.unwrap_or(0);
                            return fail(Status::new(
                                Code::DeadlineExceeded,
                                format!(
                                    "the client read nothing for {} s (send_timeout_secs); \
                                     ask again with after_seq = {last}",
                                    send_timeout.as_secs()
                                ),
                            ));
                        }
                    }
                }
                sent += n;
                if n < filter.limit.unwrap_or(0) || sent >= page {
                    return;
                }
                filter.limit = Some(BATCH.min(page - sent));
                (conn, rows) = match read_batch(conn, filter.clone()).await {
                    Ok(next) => next,
                    Err(s) => return fail(s),
                };
            }
        });
        let mut response = Response::new(ReceiverStream::new(rx));
        if let Ok(v) = page.to_string().parse() {
            response.metadata_mut().insert(PAGE_LIMIT_HEADER, v);
        }
        Ok(response)
    }

    async fn verify_log(
        &self,
        request: Request<VerifyLogRequest>,
    ) -> Result<Response<VerifyLogResponse>, Status> {
        let view = self.view_of(&request)?;
        attempt_on_record(request.extensions().get::<CallContext>()).await?;
        let (conn, checkpoints) = self.audit_db.open().await.map_err(unavailable)?;
        let v = tokio::task::spawn_blocking(move || {
            // A shared trail's checkpoints are stored with it, and hold it.
            let mut v = verify_log(&conn, &checkpoints, None)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditWriter, Kind, WriterConfig};
    use tokio_stream::StreamExt;

    /// A trail of `n` events and the service over it.
    async fn trail(n: u64, max_events: u64) -> (tempfile::TempDir, AuditWriter, AuditSvc) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let writer = AuditWriter::start(
            &path,
            "test",
            WriterConfig {
                every: Duration::from_secs(3600),
                ..Default::default()
            },
        )
        .unwrap();
        let h = writer.handle();
        for i in 1..n {
            h.record(Event::new(Kind::Attempt, format!("r{i}")));
        }
        h.commit(Event::new(Kind::Attempt, format!("r{n}")))
            .await
            .unwrap();
        let svc = AuditSvc {
            audit_db: TrailSource::Sqlite(path),
            principals: Default::default(),
            max_events,
            send_timeout: Duration::from_secs(1),
            audit: h,
        };
        (dir, writer, svc)
    }

    /// A request as the interceptor passes it on: from an auditor
    /// without tenant limits.
    fn as_auditor<T>(msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.extensions_mut().insert(Principal {
            name: "auditor".into(),
            roles: vec![super::super::config::Role::Auditor],
            tenants: None,
            tls_identity: None,
            on_behalf_of: None,
            require_recipients: None,
        });
        r
    }

    async fn page(svc: &AuditSvc, limit: u64, after_seq: u64) -> (Vec<u64>, String) {
        let r = svc
            .list_events(as_auditor(ListEventsRequest {
                limit,
                after_seq,
                ..Default::default()
            }))
            .await
            .unwrap();
        let header = r.metadata().get(PAGE_LIMIT_HEADER).unwrap();
        let header = header.to_str().unwrap().to_string();
        let seqs = r
            .into_inner()
            .map(|e| e.unwrap().seq)
            .collect::<Vec<_>>()
            .await;
        (seqs, header)
    }

    #[tokio::test]
    async fn pages_are_capped_and_follow_on_with_after_seq() {
        let (_dir, writer, svc) = trail(600, 250).await;
        let (all_at_once, limit) = page(&svc, 0, 0).await;
        assert_eq!((all_at_once, limit.as_str()), ((1..=250).collect(), "250"));
        let (over, limit) = page(&svc, 10_000, 0).await;
        assert_eq!((over.len(), limit.as_str()), (250, "250"));
        let (small, limit) = page(&svc, 7, 100).await;
        assert_eq!((small, limit.as_str()), ((101..=107).collect(), "7"));
        let mut seen = Vec::new();
        loop {
            let (p, _) = page(&svc, 0, seen.last().copied().unwrap_or(0)).await;
            let full = p.len() == 250;
            seen.extend(p);
            if !full {
                break;
            }
        }
        assert_eq!(seen, (1..=600).collect::<Vec<_>>());
        writer.shutdown();
    }

    #[tokio::test]
    async fn a_page_larger_than_a_batch_comes_whole_and_in_order() {
        let (_dir, writer, svc) = trail(600, 10_000).await;
        let (seqs, limit) = page(&svc, 0, 0).await;
        assert_eq!((seqs, limit.as_str()), ((1..=600).collect(), "10000"));
        let (seqs, _) = page(&svc, 300, 250).await;
        assert_eq!(seqs, (251..=550).collect::<Vec<_>>());
        writer.shutdown();
    }

    #[tokio::test]
    async fn a_reader_that_stops_gets_deadline_exceeded_with_where_to_go_on() {
        let (_dir, writer, svc) = trail(600, 10_000).await;
        let rx = svc
            .list_events(as_auditor(ListEventsRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .into_inner();
        // Nothing is read until the server has given up on the page (it
        // closes its side); a watchdog only against hangs.
        let watchdog = std::time::Instant::now();
        while !rx.is_closed() {
            assert!(watchdog.elapsed() < Duration::from_secs(60), "never ended");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let items: Vec<_> = ReceiverStream::new(rx).collect().await;
        let (events, ends): (Vec<_>, Vec<_>) = items.into_iter().partition(|i| i.is_ok());
        assert_eq!(events.len(), DEPTH, "what was queued");
        assert_eq!(ends.len(), 1);
        let s = ends.into_iter().next().unwrap().unwrap_err();
        assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
        assert!(s.message().contains("after_seq = 16"), "{s:?}");
        writer.shutdown();
    }
}
