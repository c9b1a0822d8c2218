//! Metrics move with exports, and JSON logs carry request and export ids.

use crate::support::*;

/// A 200 answer of the metrics listener (its body).
async fn scrape(addr: std::net::SocketAddr) -> String {
    scrape_metrics(addr)
        .await
        .expect("a 200 answer from /metrics")
}

/// The value of a sample (summed over its label sets that include
/// `labels`; 0 when absent).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_value(text, name, labels).unwrap_or(0.0)
}

/// Waits until the metrics listener at `addr` takes connections.
async fn metrics_up(addr: std::net::SocketAddr) {
    eventually(
        "metrics listener",
        std::time::Duration::from_secs(10),
        || async {
            tokio::net::TcpStream::connect(addr)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await;
}

/// Each server counts its own calls: two servers in one process, an export
/// on one, and only its count moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_in_one_process_keep_separate_counts() {
    let (a, b) = (free_loopback_addr(), free_loopback_addr());
    let one = start_server(|c| c.metrics_listen = Some(a)).await;
    let two = start_server(|c| c.metrics_listen = Some(b)).await;
    metrics_up(a).await;
    metrics_up(b).await;
    let out = tempfile::tempdir().unwrap();
    client(&one.url)
        .await
        .export_to_dir(&one.case_ids[0], "T-METRICS", out.path(), |_, _| {})
        .await
        .expect("export");
    let (sa, sb) = (scrape(a).await, scrape(b).await);
    assert_eq!(
        sample(&sa, "case_export_exports_started_total", &[]),
        1.0,
        "{sa}"
    );
    assert_eq!(
        sample(&sb, "case_export_exports_started_total", &[]),
        0.0,
        "{sb}"
    );
    two.stop().await;
    one.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_after_an_export() {
    let addr = free_loopback_addr();
    let server = start_server(|c| {
        c.metrics_listen = Some(addr);
    })
    .await;
    // The metrics listener is bound as the server starts; wait for it.
    metrics_up(addr).await;
    let before = scrape(addr).await;
    assert!(
        before.contains("# TYPE case_export_exports_started counter"),
        "{before}"
    );

    let out = tempfile::tempdir().unwrap();
    let mut c = client(&server.url).await;
    let receipt = c
        .export_to_dir(&server.case_ids[0], "T-METRICS", out.path(), |_, _| {})
        .await
        .expect("export");
    // A refused call too.
    let mut anon = case_export::client::ExportClient::connect(&server.url)
        .await
        .unwrap();
    let refused = anon
        .export_case(
            &server.case_ids[0],
            "T-METRICS",
            &mut tokio::io::sink(),
            |_, _| {},
        )
        .await;
    assert!(refused.is_err());

    // The end of a call is recorded as its response finishes; poll briefly.
    let after = eventually(
        "completed counter",
        std::time::Duration::from_secs(10),
        || async {
            let a = scrape(addr).await;
            let completed = [("outcome", "completed"), ("code", "OK")];
            let done = sample(&a, "case_export_exports_finished_total", &completed)
                - sample(&before, "case_export_exports_finished_total", &completed);
            if done >= 1.0 {
                Ok(a)
            } else {
                Err(format!("completed moved by {done}"))
            }
        },
    )
    .await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    assert_eq!(delta("case_export_exports_started_total", &[]), 1.0);
    assert_eq!(
        delta(
            "case_export_exports_finished_total",
            &[("outcome", "denied"), ("code", "UNAUTHENTICATED")]
        ),
        1.0
    );
    assert_eq!(
        delta("case_export_bytes_streamed_total", &[]),
        receipt.bytes as f64
    );
    assert_eq!(delta("case_export_snapshot_size_bytes_count", &[]), 1.0);
    assert_eq!(delta("case_export_export_duration_seconds_count", &[]), 1.0);
    assert!(sample(&after, "case_export_audit_write_seconds_count", &[]) > 0.0);
    assert_eq!(sample(&after, "case_export_exports_in_flight", &[]), 0.0);
    assert!(after.contains("case_export_snapshot_bytes_held"));
    assert!(after.trim_end().ends_with("# EOF"));
}

#[test]
fn json_logs_carry_request_and_export_ids_and_never_the_key() {
    let db = seeded_db(&small_seed());
    let dir = tempfile::tempdir().unwrap();
    let cfg = test_config(db.path.clone(), dir.path());
    let cfg_path = dir.path().join("config.toml");
    std::fs::write(&cfg_path, toml::to_string(&cfg).unwrap()).unwrap();
    let server = ServerProcess::start_custom(
        &cfg_path,
        cfg.case_db.sqlite_path().unwrap(),
        cfg.audit_db.sqlite_path().unwrap(),
        dir.path(),
        &["--log-format", "json"],
        |c| {
            c.env("RUST_LOG", "trace");
        },
    );
    let log_path = server.log_path().to_path_buf();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let out = tempfile::tempdir().unwrap();
    let receipt = rt.block_on(async {
        let mut c = client(&server.url()).await;
        c.export_to_dir(&db.case_ids[0], "T-LOGS", out.path(), |_, _| {})
            .await
            .expect("export")
    });
    let key = receipt
        .key
        .as_ref()
        .expect("an export without recipients has its raw key")
        .expose_fernet_key();
    let status = server.terminate();
    assert!(status.success());

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains(key.as_str()), "key in the log");
    assert!(
        !log.contains(&hex::encode(
            receipt
                .key
                .as_ref()
                .expect("an export without recipients has its raw key")
                .expose_bytes()
        )),
        "key (hex) in the log"
    );
    let mut export_lines = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        // Lines of the export's own code, on any thread, carry its span.
        if v["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("case_export::server::export"))
        {
            export_lines += 1;
            let span = &v["span"];
            assert_eq!(span["name"], "export", "{line}");
            assert!(span["request_id"].is_string(), "{line}");
            assert_eq!(span["export_id"], receipt.export_id.as_str(), "{line}");
        }
    }
    assert!(export_lines >= 2, "no export lines in:\n{log}");
}
