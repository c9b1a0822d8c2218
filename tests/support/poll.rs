//! Bounded waits: for a state that must come, and for a future that must
//! end. Bounds against hangs, never assertions about how long things take.

use std::future::Future;
use std::panic::Location;
use std::time::{Duration, Instant};

/// Repeats `attempt` every 20 ms until it returns `Ok`, and fails the test,
/// naming `what`, the caller and the last error, once `deadline` passed.
/// For conditions that become true eventually (a freed slot, an audit
/// event, a health status), never for asserting how long something takes.
#[track_caller]
pub fn eventually<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut attempt: F,
) -> impl Future<Output = T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let caller = Location::caller();
    async move {
        let end = Instant::now() + deadline;
        loop {
            let last = match attempt().await {
                Ok(v) => return v,
                Err(e) => e,
            };
            if Instant::now() > end {
                panic!(
                    "{what}: still failing after {deadline:?} (at {caller}); last error: {last}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Awaits `fut`, failing the test if it has not finished within `bound`
/// (a generous bound against hangs, not a timing assertion).
#[track_caller]
pub fn within<T>(
    what: &str,
    bound: Duration,
    fut: impl Future<Output = T>,
) -> impl Future<Output = T> {
    let caller = Location::caller();
    async move {
        match tokio::time::timeout(bound, fut).await {
            Ok(v) => v,
            Err(_) => panic!("{what}: did not finish within {bound:?} (at {caller})"),
        }
    }
}
