//! What every call of one server shares: its configuration, limits, memory
//! budget, custody trail, metrics, and the one signal that says where the
//! server is in its life (serving, draining, stopping).

use super::budget::MemoryBudget;
use super::config::Config;
use super::slots::PrincipalSlots;
use crate::audit::AuditHandle;
use crate::metrics::Metrics;
use crate::snapshot::CaseSource;
use std::sync::Arc;
use tokio::sync::{Semaphore, watch};

/// Where the server is in its life. It only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Taking new calls.
    Serving,
    /// Shutting down: no new exports; those running may finish within the
    /// grace period.
    Draining,
    /// The grace period is over: exports still running end now, even
    /// those waiting on a slow client.
    Stopping,
}

/// Moves the phase forward; held by the shutdown sequence alone.
#[derive(Clone)]
pub struct PhaseSender(Arc<watch::Sender<Phase>>);

impl PhaseSender {
    /// A sender and the receiver the server state watches.
    pub fn new() -> (Self, watch::Receiver<Phase>) {
        let (tx, rx) = watch::channel(Phase::Serving);
        (Self(Arc::new(tx)), rx)
    }

    /// Moves to `phase` (never back).
    pub fn set(&self, phase: Phase) {
        self.0.send_if_modified(|p| {
            let later = phase > *p;
            if later {
                *p = phase;
            }
            later
        });
    }
}

/// Shared by every call.
pub(crate) struct ServerState {
    pub config: Arc<Config>,
    pub in_flight: Arc<Semaphore>,
    pub phase: watch::Receiver<Phase>,
    pub audit: AuditHandle,
    pub budget: Arc<MemoryBudget>,
    /// Exports in flight per principal.
    pub principal_slots: PrincipalSlots,
    /// This server's own metrics.
    pub metrics: Arc<Metrics>,
    /// The case database exports read.
    pub source: CaseSource,
    /// Signs export receipts, when a receipt key is configured.
    pub receipt_signer: Option<crate::audit::CheckpointSigner>,
}

impl ServerState {
    /// No new exports once draining has begun.
    pub fn is_draining(&self) -> bool {
        *self.phase.borrow() >= Phase::Draining
    }

    /// Exports running now.
    pub fn exports_running(&self) -> usize {
        self.config.max_in_flight - self.in_flight.available_permits()
    }
}

/// Resolves once the phase is at least `phase`.
pub async fn reached(mut rx: watch::Receiver<Phase>, phase: Phase) {
    let _ = rx.wait_for(|p| *p >= phase).await;
}
