//! Metrics move with exports, and JSON logs carry request and export ids.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use support::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn scrape(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to metrics");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(
        body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200"),
        "{body}"
    );
    body
}

/// The value of the sample whose name and labels start with `prefix`.
fn sample(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_after_an_export() {
    let port = free_port();
    let server = start_server(|c| {
        c.metrics_listen = Some(format!("127.0.0.1:{port}").parse().unwrap());
    })
    .await;
    // The metrics listener is bound as the server starts; wait for it.
    eventually(
        "metrics listener",
        std::time::Duration::from_secs(10),
        || async {
            TcpStream::connect(("127.0.0.1", port))
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await;
    let before = scrape(port);
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
            let a = scrape(port);
            let done = sample(
                &a,
                "case_export_exports_finished_total{outcome=\"completed\",code=\"OK\"}",
            ) - sample(
                &before,
                "case_export_exports_finished_total{outcome=\"completed\",code=\"OK\"}",
            );
            if done >= 1.0 {
                Ok(a)
            } else {
                Err(format!("completed moved by {done}"))
            }
        },
    )
    .await;
    let delta = |name: &str| sample(&after, name) - sample(&before, name);
    assert_eq!(delta("case_export_exports_started_total"), 1.0);
    assert_eq!(
        delta("case_export_exports_finished_total{outcome=\"denied\",code=\"UNAUTHENTICATED\"}"),
        1.0
    );
    assert_eq!(
        delta("case_export_bytes_streamed_total"),
        receipt.bytes as f64
    );
    assert_eq!(delta("case_export_snapshot_size_bytes_count"), 1.0);
    assert_eq!(delta("case_export_export_duration_seconds_count"), 1.0);
    assert!(sample(&after, "case_export_audit_write_seconds_count") > 0.0);
    assert_eq!(sample(&after, "case_export_exports_in_flight"), 0.0);
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
    let log_path = dir.path().join("server.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_case-export"))
        .args(["--log-format", "json", "serve", "--config"])
        .arg(&cfg_path)
        .args(["--listen", "127.0.0.1:0"])
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .expect("start server");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .expect("address line")
        .to_string();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let out = tempfile::tempdir().unwrap();
    let receipt = rt.block_on(async {
        let mut c = client(&format!("http://{addr}")).await;
        c.export_to_dir(&db.case_ids[0], "T-LOGS", out.path(), |_, _| {})
            .await
            .expect("export")
    });
    let key = receipt.key.expose_fernet_key();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success());

    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(!log.contains(key.as_str()), "key in the log");
    assert!(
        !log.contains(&hex::encode(receipt.key.expose_bytes())),
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
