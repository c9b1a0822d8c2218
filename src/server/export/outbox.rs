//! The producer's side of an export's stream, and the stream the client
//! reads: sends wait for the client and give up when it goes away, at the
//! shutdown's end, past the send timeout or the export's deadline; an
//! error status always has a slot kept for it.

use super::deadline::Deadline;
use crate::audit::AuditHandle;
use crate::pb::ExportCaseResponse;
use crate::server::error::ExportError;
use crate::server::layer::CallContext;
use crate::server::state::{Phase, reached};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tonic::Status;

pub(super) type Item = Result<ExportCaseResponse, Status>;

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
pub(super) struct Outbox {
    pub(super) tx: mpsc::Sender<Item>,
    /// The slot reserved for an error status (see `fail`).
    end_slot: Option<mpsc::OwnedPermit<Item>>,
    /// The response stream's queue; gone once the client is.
    queue: Weak<Mutex<mpsc::Receiver<Item>>>,
    phase: watch::Receiver<Phase>,
    rt: tokio::runtime::Handle,
    deadline: Deadline,
    send_timeout: Duration,
    ctx: CallContext,
    audit: AuditHandle,
    /// Set once the stream has its end: the key sent, an error status
    /// queued, or the client gone.
    done: bool,
}

impl Outbox {
    /// The stream of one export and its producer's side. One slot more
    /// than `depth`, kept from the start for the status that ends a failed
    /// stream: it is then queued behind the chunks even when the client is
    /// slow and the grace period is over.
    pub(super) fn open(
        depth: usize,
        phase: watch::Receiver<Phase>,
        deadline: Deadline,
        send_timeout: Duration,
        ctx: CallContext,
        audit: AuditHandle,
    ) -> (Self, ExportStream) {
        let (tx, rx) = mpsc::channel(depth + 1);
        let end_slot = tx.clone().try_reserve_owned().ok();
        let queue = Arc::new(Mutex::new(rx));
        let out = Self {
            tx,
            end_slot,
            queue: Arc::downgrade(&queue),
            phase,
            rt: tokio::runtime::Handle::current(),
            deadline,
            send_timeout,
            ctx,
            audit,
            done: false,
        };
        (out, ExportStream(queue))
    }

    pub(super) fn send(&mut self, m: Item) -> Result<(), Stop> {
        // When the queue has room, the message goes in without a trip
        // through the runtime; the checks come first, in the order of the
        // waiting path below.
        if *self.phase.borrow() >= Phase::Stopping {
            return Err(Stop::Shutdown);
        }
        if std::time::Instant::now() >= self.deadline.at {
            return Err(Stop::Deadline(self.deadline.reason()));
        }
        let m = match self.tx.try_send(m) {
            Ok(()) => return Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => return Err(Stop::ClientGone),
            Err(mpsc::error::TrySendError::Full(m)) => m,
        };
        let Outbox {
            tx,
            phase,
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
                _ = reached(phase.clone(), Phase::Stopping) => Err(Stop::Shutdown),
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
    pub(super) fn ended(&mut self) {
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
    pub(super) fn fail(&mut self, e: ExportError) {
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

/// Why a send gave up.
pub(super) enum Stop {
    ClientGone,
    Shutdown,
    /// The export's deadline or the send timeout passed; says which.
    Deadline(String),
}
