//! The metrics side of a server: scraping `/metrics`, reading samples, and
//! the gate that keeps tests from counting each other's calls.
//!
//! The metrics registry is process-wide (`case_export::metrics::metrics()`)
//! and every test of this binary runs as a thread of one process. A test
//! that asserts how much a global metric moved takes the registry
//! exclusively ([`metrics_exclusive`]); whatever moves metrics (every
//! in-process server, an audit writer run directly) holds it shared
//! ([`metrics_shared`]) for its lifetime. Servers run as child processes
//! have registries of their own and take nothing.

use std::cell::Cell;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

struct GateState {
    shared: usize,
    exclusive: bool,
}

static GATE: Mutex<GateState> = Mutex::new(GateState {
    shared: 0,
    exclusive: false,
});
static GATE_CHANGED: Condvar = Condvar::new();

/// Against a test that never gives the registry back: generous, as a
/// shared holder may wait for every exclusive test queued before it.
const GATE_WATCHDOG: Duration = Duration::from_secs(600);

thread_local! {
    /// Whether this thread holds the registry exclusively: the servers the
    /// exclusive test starts itself must not wait for it.
    static EXCLUSIVE_HERE: Cell<bool> = const { Cell::new(false) };
}

fn gate() -> MutexGuard<'static, GateState> {
    // A test that panicked holding the lock changed no state on the way.
    GATE.lock().unwrap_or_else(PoisonError::into_inner)
}

#[track_caller]
fn wait_gate(
    mut state: MutexGuard<'static, GateState>,
    what: &str,
    blocked: impl Fn(&GateState) -> bool,
) -> MutexGuard<'static, GateState> {
    let end = Instant::now() + GATE_WATCHDOG;
    while blocked(&state) {
        let left = end.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{what}: the metrics registry was not free within {GATE_WATCHDOG:?}"
        );
        state = GATE_CHANGED
            .wait_timeout(state, left)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
    state
}

/// A shared hold on the metrics registry: may move metrics.
pub struct MetricsShared(());

/// Takes the registry shared, waiting while a test holds it exclusively;
/// `None` on the thread of that test itself (its own servers count).
/// Shared holds never wait for each other, so a test may hold several.
#[track_caller]
pub fn metrics_shared() -> Option<MetricsShared> {
    if EXCLUSIVE_HERE.get() {
        return None;
    }
    let mut state = wait_gate(gate(), "a shared hold", |s| s.exclusive);
    state.shared += 1;
    Some(MetricsShared(()))
}

impl Drop for MetricsShared {
    fn drop(&mut self) {
        gate().shared -= 1;
        GATE_CHANGED.notify_all();
    }
}

/// An exclusive hold on the metrics registry: no other test's server runs
/// in this process while it lives. Stays on the thread that took it.
pub struct MetricsExclusive(PhantomData<*const ()>);

/// Takes the registry exclusively, once every shared hold is given back.
/// Take it before starting the test's servers.
#[track_caller]
pub fn metrics_exclusive() -> MetricsExclusive {
    assert!(!EXCLUSIVE_HERE.get(), "the registry is already held here");
    let mut state = wait_gate(gate(), "an exclusive hold", |s| s.exclusive || s.shared > 0);
    state.exclusive = true;
    EXCLUSIVE_HERE.set(true);
    MetricsExclusive(PhantomData)
}

impl Drop for MetricsExclusive {
    fn drop(&mut self) {
        gate().exclusive = false;
        EXCLUSIVE_HERE.set(false);
        GATE_CHANGED.notify_all();
    }
}

/// A loopback address whose port was free a moment ago, for listeners
/// whose bound port the server does not report (`metrics_listen`).
pub fn free_loopback_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

/// Serializes scrapes within the process: a server sets its gauges from
/// its own state just before encoding the process-wide registry, so two
/// servers scraped at once could see each other's values.
static SCRAPE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `GET /metrics` over plain HTTP/1.0 (no client crate needed); the body
/// of a 200 answer.
pub async fn scrape_metrics(addr: SocketAddr) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _one_at_a_time = SCRAPE.lock().await;
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8(raw).map_err(|e| format!("not UTF-8: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {text:?}"))?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        return Err(format!("unexpected answer: {head:?}"));
    }
    Ok(body.to_string())
}

/// Sum of the samples of `name` (exact, e.g. `case_export_exports_finished_total`)
/// whose labels include every pair of `labels`; `None` if no sample matches.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(r) => match r.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(v) => ("", v),
                None => continue,
            },
        };
        let present: Vec<&str> = label_text.split(',').collect();
        if labels
            .iter()
            .all(|(k, v)| present.contains(&format!("{k}=\"{v}\"").as_str()))
        {
            let v: f64 = value.trim().parse().ok()?;
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}
