//! The metrics side of a server: scraping `/metrics` and reading samples.
//! Every server has its own registry, so tests running side by side in
//! this binary never count each other's calls.

use std::net::SocketAddr;

/// A loopback address whose port was free a moment ago, for listeners
/// whose bound port the server does not report (`metrics_listen`).
pub fn free_loopback_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local addr")
}

/// `GET /metrics` over plain HTTP/1.0 (no client crate needed); the body
/// of a 200 answer.
pub async fn scrape_metrics(addr: SocketAddr) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
