//! The producer of one export, on a blocking thread: the header, the
//! sealed chunks, the custody record, and the key, in that order, each
//! step only after the one before succeeded (key last, after the record).

use super::outbox::{ExportStream, Item, Outbox, Stop};
use super::{Admitted, header};
use crate::audit::{AuditError, Committed, Kind};
use crate::pb::export_case_response::Message as Msg;
use crate::pb::{EncryptedChunk, ExportCaseResponse, ExportKey};
use crate::receipt::{RECEIPT_VERSION, ReceiptBody};
use crate::seal::{FORMAT_VERSION, KEY_WARNING, SealError, SealSummary, Sealer, SecretKey};
use crate::server::budget::Reservation;
use crate::server::error::ExportError;
use crate::server::state::ServerState;
use crate::snapshot::Snapshot;
use std::sync::Arc;
use tracing::{info, warn};

fn msg(m: Msg) -> Item {
    Ok(ExportCaseResponse { message: Some(m) })
}

/// Starts the producer of an admitted export whose snapshot is built, and
/// returns the stream the client reads.
pub(super) fn start(
    st: &Arc<ServerState>,
    call: Admitted,
    snapshot: Snapshot,
    reservation: Reservation,
) -> ExportStream {
    let (mut out, stream) = Outbox::open(
        st.config.channel_depth,
        st.phase.clone(),
        call.deadline.clone(),
        st.config.send_timeout(),
        call.ctx.clone(),
        st.audit.clone(),
    );
    let st = st.clone();
    let span = call.span.clone();
    tokio::task::spawn_blocking(move || {
        let _enter = span.enter();
        // The memory and the slots (in `call`) are held until the producer
        // ends, however it ends.
        let _reservation = reservation;
        match produce(&st, &mut out, &call, snapshot) {
            Ok(()) => out.ended(),
            Err(End::ClientGone(when)) => {
                info!("client went away {when}; export cancelled");
                out.ended();
            }
            Err(End::Fail(e)) => out.fail(e),
        }
        // Anything else (a panic) ends the stream in `Outbox::drop`.
    });
    stream
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

/// Header, sealed chunks, custody record, key.
fn produce(
    st: &ServerState,
    out: &mut Outbox,
    call: &Admitted,
    mut snapshot: Snapshot,
) -> Result<(), End> {
    let chunk_size = st.config.chunk_size;
    out.send(msg(Msg::Header(header(call, &snapshot, chunk_size))))
        .map_err(|s| End::from_stop(s, "before the first chunk"))?;
    let key =
        SecretKey::generate().map_err(|_| End::Fail(ExportError::Internal(call.eid.clone())))?;
    let summary = seal_and_stream(st, out, call, &key, &mut snapshot)?;
    let wrapped = wrap_key(call, &key)?;
    let detail = custody_detail(&snapshot, &summary, &call.recipients);
    let unsigned = receipt_body(st, call, &snapshot, &summary);
    // Free the plaintext before the key goes out.
    drop(snapshot);
    let sealed = record_custody(st, out, call, detail)?;
    let receipt = sign_receipt(st, unsigned, sealed);
    release_key(out, &key, &summary, wrapped, &call.recipients, receipt)
}

/// What the receipt will say, but for the `sealed` event's place in the
/// trail, which is known once it commits.
fn receipt_body(
    st: &ServerState,
    call: &Admitted,
    snapshot: &Snapshot,
    s: &SealSummary,
) -> Option<ReceiptBody> {
    st.receipt_signer.as_ref()?;
    Some(ReceiptBody {
        receipt_version: RECEIPT_VERSION,
        log_id: String::new(),
        sealed_seq: 0,
        sealed_hash: String::new(),
        export_id: call.eid.clone(),
        case_id: call.case_id.clone(),
        tenant: snapshot.tenant.clone(),
        principal: call
            .principal
            .as_ref()
            .map_or("-", |p| p.name.as_str())
            .to_owned(),
        on_behalf_of: call
            .principal
            .as_ref()
            .and_then(|p| p.on_behalf_of.clone())
            .unwrap_or_default(),
        purpose: call.purpose.clone(),
        created_at: call.created_at.clone(),
        recipients: call.recipients.clone(),
        plaintext_size: s.plaintext_size,
        ciphertext_sha256: hex::encode(s.sha256),
        ciphertext_size: s.ciphertext_size,
        chunk_count: s.chunks,
        format_version: u64::from(FORMAT_VERSION),
        row_counts: snapshot.row_counts.iter().cloned().collect(),
        server_instance: st.audit.instance().to_owned(),
        server_version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

/// The receipt signed, naming the committed `sealed` event.
fn sign_receipt(st: &ServerState, body: Option<ReceiptBody>, sealed: Committed) -> String {
    let (Some(mut body), Some(signer)) = (body, st.receipt_signer.as_ref()) else {
        return String::new();
    };
    body.log_id = hex::encode(sealed.log_id);
    body.sealed_seq = sealed.seq;
    body.sealed_hash = hex::encode(sealed.hash);
    signer.sign_receipt(body).to_json()
}

/// The key sealed to the call's recipients, when it has any.
fn wrap_key(call: &Admitted, key: &SecretKey) -> Result<Option<Vec<u8>>, End> {
    if call.recipients.is_empty() {
        return Ok(None);
    }
    crate::keywrap::wrap_key(&key.expose_fernet_key(), &call.recipients)
        .map(Some)
        .map_err(|e| {
            tracing::error!(error = %e, "sealing the key to its recipients failed");
            End::Fail(ExportError::Internal(call.eid.clone()))
        })
}

/// Seals the snapshot chunk by chunk, each token sent as it is made.
fn seal_and_stream(
    st: &ServerState,
    out: &mut Outbox,
    call: &Admitted,
    key: &SecretKey,
    snapshot: &mut Snapshot,
) -> Result<SealSummary, End> {
    let sealer = Sealer::new(
        key,
        call.export_id,
        st.config.chunk_size,
        st.config.seal_workers(),
    );
    // Each part of the plaintext is wiped as soon as it is sealed.
    let sealed = snapshot.consume_bytes(|bytes| {
        sealer.seal_wiping(bytes, |index, token| {
            let n = token.len() as u64 + 1;
            out.send(msg(Msg::Chunk(EncryptedChunk { index, token })))?;
            st.metrics.bytes_streamed.inc_by(n);
            Ok(())
        })
    });
    match sealed {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(SealError::Emit(stop))) => Err(End::from_stop(stop, "mid-stream")),
        Ok(Err(SealError::Entropy)) => {
            tracing::error!("the operating system gave no random bytes for an IV");
            Err(End::Fail(ExportError::Internal(call.eid.clone())))
        }
        Err(e) => {
            tracing::error!(error = %e, "the snapshot's bytes were not available");
            Err(End::Fail(ExportError::Internal(call.eid.clone())))
        }
    }
}

/// What the custody record says was sealed (docs/AUDIT.md, `sealed`).
fn custody_detail(
    snapshot: &Snapshot,
    s: &SealSummary,
    recipients: &[String],
) -> serde_json::Value {
    let row_counts: serde_json::Map<String, serde_json::Value> = snapshot
        .row_counts
        .iter()
        .map(|(t, n)| (t.clone(), (*n).into()))
        .collect();
    serde_json::json!({
        "tenant": snapshot.tenant,
        "row_counts": row_counts,
        "plaintext_size": s.plaintext_size,
        "ciphertext_sha256": hex::encode(s.sha256),
        "ciphertext_size": s.ciphertext_size,
        "chunk_count": s.chunks,
        "format_version": FORMAT_VERSION,
        "recipients": recipients,
    })
}

/// Commits the `sealed` custody record; the key may leave only after it.
/// Its fields also go with the call's terminal event.
fn record_custody(
    st: &ServerState,
    out: &Outbox,
    call: &Admitted,
    detail: serde_json::Value,
) -> Result<Committed, End> {
    call.ctx.note(|i| {
        if let serde_json::Value::Object(m) = &detail {
            i.detail.extend(m.clone());
        }
    });
    if out.tx.is_closed() {
        return Err(End::ClientGone("before the key"));
    }
    let mut sealed = call.ctx.event(Kind::Sealed);
    sealed.detail = Some(detail.to_string());
    let committed = st
        .audit
        .record_acked(sealed)
        .blocking_recv()
        .unwrap_or(Err(AuditError::Stopped));
    committed.map_err(|e| {
        tracing::error!(error = %e, "custody record not committed; key withheld");
        End::Fail(ExportError::AuditUnavailable)
    })
}

/// The key message, last: the key raw, or only sealed to its recipients.
fn release_key(
    out: &mut Outbox,
    key: &SecretKey,
    summary: &SealSummary,
    wrapped: Option<Vec<u8>>,
    recipients: &[String],
    receipt: String,
) -> Result<(), End> {
    let fernet_key = match wrapped {
        Some(_) => String::new(),
        None => key.expose_fernet_key().to_string(),
    };
    let key_msg = ExportKey {
        fernet_key,
        ciphertext_sha256: hex::encode(summary.sha256),
        chunk_count: summary.chunks,
        ciphertext_size: summary.ciphertext_size,
        warning: KEY_WARNING.to_string(),
        wrapped_key: wrapped.unwrap_or_default(),
        sealed_to: recipients.to_vec(),
        receipt,
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
