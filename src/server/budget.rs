//! The global memory budget for snapshots and stream buffers: an export
//! reserves its worst case before it builds, then gives back the surplus.

use super::config::Config;
use crate::snapshot::CaseSource;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Granularity of reservations.
const UNIT: u64 = 64 * 1024;

/// Bytes that exports together may hold.
pub struct MemoryBudget {
    sem: Arc<Semaphore>,
    held: AtomicU64,
}

/// Part of the budget held by one export; returned on drop.
pub struct Reservation {
    permit: Option<OwnedSemaphorePermit>,
    budget: Arc<MemoryBudget>,
}

fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

impl MemoryBudget {
    pub fn new(total: u64) -> Arc<Self> {
        let permits = usize::try_from(total / UNIT)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Arc::new(Self {
            sem: Arc::new(Semaphore::new(permits)),
            held: AtomicU64::new(0),
        })
    }

    /// Waits up to `wait` for `bytes`; `None` if there is no room by then.
    pub async fn reserve(self: &Arc<Self>, bytes: u64, wait: Duration) -> Option<Reservation> {
        let n = units(bytes);
        let permit = tokio::time::timeout(wait, self.sem.clone().acquire_many_owned(n))
            .await
            .ok()?
            .ok()?;
        self.held.fetch_add(u64::from(n) * UNIT, Ordering::SeqCst);
        Some(Reservation {
            permit: Some(permit),
            budget: self.clone(),
        })
    }

    /// Bytes reserved now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::SeqCst)
    }
}

/// What one export reserves before it builds: a ceiling on its snapshot,
/// the stream buffers, and the source page cache.
pub struct ExportNeed {
    /// The snapshot may not grow past this many bytes.
    pub snapshot_limit: u64,
    /// Bytes to reserve in all.
    pub bytes: u64,
}

impl ExportNeed {
    /// The need of an export from the case database of `config`. The
    /// snapshot cannot outgrow twice its source (it is a subset with the
    /// same indexes), so a small source need not reserve the ceiling.
    pub async fn estimate(config: &Config, source: &CaseSource) -> Self {
        let snapshot_limit = match source.size_hint().await {
            Some(size) => config
                .max_snapshot_bytes
                .min(size.saturating_mul(2).saturating_add(16 << 20)),
            None => config.max_snapshot_bytes,
        };
        Self {
            snapshot_limit,
            bytes: snapshot_limit
                + config.stream_buffer_bytes()
                + crate::snapshot::source_cache_bytes(snapshot_limit),
        }
    }
}

impl Reservation {
    /// Gives back everything above `bytes`.
    pub fn shrink_to(&mut self, bytes: u64) {
        let keep = units(bytes) as usize;
        if let Some(p) = self.permit.as_mut()
            && p.num_permits() > keep
            && let Some(surplus) = p.split(p.num_permits() - keep)
        {
            self.budget
                .held
                .fetch_sub(surplus.num_permits() as u64 * UNIT, Ordering::SeqCst);
            drop(surplus);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.budget
                .held
                .fetch_sub(p.num_permits() as u64 * UNIT, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_wait_shrink_and_return() {
        let b = MemoryBudget::new(10 * UNIT);
        let mut r1 = b
            .reserve(8 * UNIT, Duration::from_millis(10))
            .await
            .unwrap();
        assert!(
            b.reserve(4 * UNIT, Duration::from_millis(10))
                .await
                .is_none()
        );
        r1.shrink_to(2 * UNIT);
        assert_eq!(b.held(), 2 * UNIT);
        let r2 = b
            .reserve(8 * UNIT, Duration::from_millis(10))
            .await
            .unwrap();
        assert_eq!(b.held(), 10 * UNIT);
        drop(r1);
        drop(r2);
        assert_eq!(b.held(), 0);
    }
}
