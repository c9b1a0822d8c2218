//! Prometheus metrics: one registry per server (two servers in one process
//! keep separate counts), served in the text exposition format at
//! `/metrics` on `metrics_listen`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::{Arc, Mutex};

type Labels = Vec<(&'static str, String)>;

/// Every metric the service exports.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Export calls that passed authentication and got their attempt recorded.
    pub exports_started: Counter,
    /// Finished export calls, labelled by outcome and gRPC code.
    pub exports_finished: Family<Labels, Counter>,
    /// Ciphertext bytes sent in chunk messages.
    pub bytes_streamed: Counter,
    /// Seconds from call to end, for completed exports only.
    pub export_duration: Histogram,
    /// Size in bytes of each built snapshot.
    pub snapshot_size: Histogram,
    /// Exports running now; refreshed when `/metrics` is scraped.
    pub exports_in_flight: Gauge,
    /// Memory-budget bytes reserved by running exports; refreshed on scrape.
    pub snapshot_bytes_held: Gauge,
    /// Seconds taken by each audit batch commit, failed or not.
    pub audit_write_seconds: Histogram,
    /// Audit batch commits that failed (the events stay queued and are retried).
    pub audit_write_failures: Counter,
    /// Bytes of audit events waiting for the store (bounded by
    /// `[audit] max_queued_bytes`); the writer's queue keeps its count here.
    pub audit_queued_bytes: Gauge,
    /// Times the stored trail was found to differ from the one written.
    pub audit_trail_mismatches: Counter,
    /// Events refused because the writer's queue was full.
    pub audit_events_refused: Counter,
    /// Refused calls of unknown callers over their peer's record rate,
    /// counted in `denied_summary` events instead of recorded one by one.
    pub refusals_unrecorded: Counter,
    /// Connections open now, per listener (`grpc`, `health`, `metrics`).
    pub connections_open: Family<Labels, Gauge>,
    /// Connections closed by the server before serving them, per listener
    /// and reason (`over_cap`: `max_connections` reached; `handshake_timeout`).
    pub connections_rejected: Family<Labels, Counter>,
}

impl Metrics {
    /// A fresh set of metrics with its own registry.
    // Long: one registration per metric.
    pub fn new() -> Arc<Self> {
        let mut r = Registry::with_prefix("case_export");
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            exports_started: Counter::default(),
            exports_finished: Family::default(),
            bytes_streamed: Counter::default(),
            export_duration: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            snapshot_size: Histogram::new(exponential_buckets(64.0 * 1024.0, 2.0, 16)),
            exports_in_flight: Gauge::default(),
            snapshot_bytes_held: Gauge::default(),
            audit_write_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            audit_write_failures: Counter::default(),
            audit_queued_bytes: Gauge::default(),
            audit_trail_mismatches: Counter::default(),
            audit_events_refused: Counter::default(),
            refusals_unrecorded: Counter::default(),
            connections_open: Family::default(),
            connections_rejected: Family::default(),
        };
        r.register(
            "exports_started",
            "Export calls that passed authentication",
            m.exports_started.clone(),
        );
        r.register(
            "exports_finished",
            "Export calls by outcome (completed, cancelled, failed, denied) and gRPC code",
            m.exports_finished.clone(),
        );
        r.register(
            "bytes_streamed",
            "Ciphertext bytes sent in chunk messages",
            m.bytes_streamed.clone(),
        );
        r.register(
            "export_duration_seconds",
            "Time from call to its end, for completed exports",
            m.export_duration.clone(),
        );
        r.register(
            "snapshot_size_bytes",
            "Size of built snapshots",
            m.snapshot_size.clone(),
        );
        r.register(
            "exports_in_flight",
            "Exports running now",
            m.exports_in_flight.clone(),
        );
        r.register(
            "snapshot_bytes_held",
            "Bytes of the memory budget reserved by running exports",
            m.snapshot_bytes_held.clone(),
        );
        r.register(
            "audit_write_seconds",
            "Latency of audit batch commits",
            m.audit_write_seconds.clone(),
        );
        r.register(
            "audit_write_failures",
            "Audit batch commits that failed (events kept and retried)",
            m.audit_write_failures.clone(),
        );
        r.register(
            "audit_queued_bytes",
            "Bytes of audit events waiting for the store",
            m.audit_queued_bytes.clone(),
        );
        r.register(
            "audit_trail_mismatches",
            "Times the stored custody trail differed from the one this server wrote",
            m.audit_trail_mismatches.clone(),
        );
        r.register(
            "audit_events_refused",
            "Audit events refused because the queue waiting for the store was full",
            m.audit_events_refused.clone(),
        );
        r.register(
            "refusals_unrecorded",
            "Refused calls of unknown callers not recorded one by one (over the peer's record rate; counted in denied_summary events)",
            m.refusals_unrecorded.clone(),
        );
        r.register(
            "connections_open",
            "Connections open now, per listener",
            m.connections_open.clone(),
        );
        r.register(
            "connections_rejected",
            "Connections closed before being served: over max_connections, or handshake not done within handshake_timeout_secs",
            m.connections_rejected.clone(),
        );
        *m.registry.lock().unwrap_or_else(|p| p.into_inner()) = r;
        Arc::new(m)
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let r = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &r);
        out
    }

    /// The open-connections gauge of one listener.
    pub fn connections_open(&self, listener: &str) -> Gauge {
        self.connections_open
            .get_or_create(&vec![("listener", listener.to_string())])
            .clone()
    }

    /// Counts one connection closed before it was served.
    pub fn connection_rejected(&self, listener: &str, reason: &str) {
        self.connections_rejected
            .get_or_create(&vec![
                ("listener", listener.to_string()),
                ("reason", reason.to_string()),
            ])
            .inc();
    }

    /// Counts one finished export call.
    pub fn finished(&self, outcome: &str, code: &str) {
        self.exports_finished
            .get_or_create(&vec![
                ("outcome", outcome.to_string()),
                ("code", code.to_string()),
            ])
            .inc();
    }
}
