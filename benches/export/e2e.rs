//! End to end over loopback gRPC: the in-process server and the three
//! clients (library to disk, library to a sink, the raw generated client).

use crate::PURPOSE;
use crate::env::{CaseDb, Env, SnapData, warm};
use crate::opts::Opts;
use crate::report::{Report, f1, f2, mbs, median, mib};
use crate::support::{TestServer, authed, raw_client, request, test_client_options, test_config};
use crate::timing::timed_rep;
use case_export::client::ExportClient;
use case_export::pb::export_case_response::Message as Msg;
use case_export::server::Config;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The server in process (`serve_on` on 127.0.0.1:0, the tests' in-process
/// server) in its own multi-thread runtime, as the real binary has.
pub struct InProcServer {
    pub url: String,
    rt: Option<tokio::runtime::Runtime>,
    server: Option<TestServer>,
    _dir: TempDir,
}

impl InProcServer {
    /// Serves `case_db` with the default config but for `mutate`.
    pub fn start(env: &Env, case_db: &Path, mutate: impl FnOnce(&mut Config)) -> Self {
        let dir = env.tempdir();
        let mut config = test_config(case_db.to_path_buf(), dir.path());
        config.shutdown_grace_secs = 2;
        mutate(&mut config);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("server-rt")
            .build()
            .expect("server runtime");
        let server = rt.block_on(TestServer::start(config));
        InProcServer {
            url: server.url.clone(),
            rt: Some(rt),
            server: Some(server),
            _dir: dir,
        }
    }
}

impl Drop for InProcServer {
    fn drop(&mut self) {
        if let (Some(rt), Some(server)) = (self.rt.take(), self.server.take()) {
            rt.block_on(server.stop());
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct E2eRun {
    /// Request sent to verified result.
    pub total: f64,
    /// Request sent to first chunk received.
    pub ttfc: f64,
    /// Header received to first chunk received.
    pub header_to_chunk: f64,
    pub plaintext: u64,
    /// CLOCK_MONOTONIC seconds at the first chunk and at the end, for
    /// `perf report --time` (bench/profile.sh).
    pub mono_first: f64,
    pub mono_end: f64,
}

pub fn monotonic() -> f64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

impl E2eRun {
    pub fn stream_secs(&self) -> f64 {
        self.total - self.ttfc
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ClientKind {
    /// `ExportClient::export_to_dir`: verify, write, fsync, rename.
    Dir,
    /// `ExportClient::export_case` into `tokio::io::sink()`: verify only.
    Sink,
    /// The generated client reading messages, no hashing, no writing.
    Discard,
}

impl ClientKind {
    pub fn label(self) -> &'static str {
        match self {
            ClientKind::Dir => "library client, verified .enc on disk (export_to_dir)",
            ClientKind::Sink => "library client, verified, written nowhere (export_case to sink)",
            ClientKind::Discard => "raw generated client, discards messages",
        }
    }
}

pub async fn e2e_once(url: &str, case_id: &str, kind: ClientKind, dir: &Path) -> E2eRun {
    let mut t_header = None;
    let mut t_first = None;
    let t0;
    let plaintext;
    match kind {
        ClientKind::Dir | ClientKind::Sink => {
            let mut c = ExportClient::connect_with(url, test_client_options())
                .await
                .expect("connect");
            let mut on_chunk = |h: &case_export::pb::ExportHeader,
                                _p: case_export::client::Progress| {
                if t_first.is_none() {
                    t_first = Some(Instant::now());
                    let _ = h;
                }
            };
            t0 = Instant::now();
            let receipt = if kind == ClientKind::Dir {
                c.export_to_dir(case_id, PURPOSE, dir, &mut on_chunk)
                    .await
                    .expect("export_to_dir")
            } else {
                c.export_case(case_id, PURPOSE, &mut tokio::io::sink(), &mut on_chunk)
                    .await
                    .expect("export_case")
            };
            plaintext = receipt.plaintext_size;
            if let Some(p) = &receipt.path {
                std::fs::remove_file(p).expect("remove .enc");
            }
        }
        ClientKind::Discard => {
            let mut c = raw_client(url).await;
            let req = authed(request(case_id, PURPOSE));
            t0 = Instant::now();
            let mut s = c.export_case(req).await.expect("export").into_inner();
            let mut size = 0;
            let mut got_key = false;
            while let Some(m) = s.message().await.expect("stream") {
                match m.message {
                    Some(Msg::Header(h)) => {
                        t_header = Some(Instant::now());
                        size = h.plaintext_size;
                    }
                    Some(Msg::Chunk(c)) => {
                        if t_first.is_none() {
                            t_first = Some(Instant::now());
                        }
                        black_box(c);
                    }
                    Some(Msg::Key(_)) => got_key = true,
                    None => {}
                }
            }
            assert!(got_key, "stream ended without a key");
            plaintext = size;
        }
    }
    let total = t0.elapsed().as_secs_f64();
    let mono_end = monotonic();
    let first = t_first.expect("at least one chunk");
    E2eRun {
        mono_first: mono_end - first.elapsed().as_secs_f64(),
        mono_end,
        total,
        ttfc: (first - t0).as_secs_f64(),
        header_to_chunk: t_header.map_or(f64::NAN, |h| (first - h).as_secs_f64()),
        plaintext,
    }
}

pub fn e2e_runs(
    env: &Env,
    url: &str,
    case_id: &str,
    kinds: &[ClientKind],
    reps: usize,
) -> Vec<Vec<E2eRun>> {
    let dir = env.tempdir();
    let mut out = vec![vec![]; kinds.len()];
    for _ in 0..reps {
        for (i, k) in kinds.iter().enumerate() {
            let mut run = None;
            timed_rep(&mut || {
                let r = env
                    .client_rt
                    .block_on(e2e_once(url, case_id, *k, dir.path()));
                run = Some(r);
                r.total
            });
            out[i].push(run.expect("ran"));
        }
    }
    out
}

pub fn med(runs: &[E2eRun], f: impl Fn(&E2eRun) -> f64) -> f64 {
    median(&runs.iter().map(f).collect::<Vec<_>>())
}

pub fn e2e_section(r: &mut Report, env: &Env, dbs: &[(u64, &CaseDb, &SnapData)], opts: &Opts) {
    let s = r.section(
        "End to end over loopback gRPC (server and client share the 2 cores)",
        "In-process server (`serve_on` on 127.0.0.1:0, default config: 256 KiB \
         chunks, seal_workers = cores, channel_depth 8) and a client in the \
         same process on its own runtime. Time from sending the request to the \
         verified result; the three clients run interleaved. `MB/s` is \
         snapshot plaintext over the whole time, which includes building the \
         snapshot; `stream MB/s` is over first chunk to end only. The ratios \
         divide by the single-thread fernet rate measured on the same bytes \
         in this run.",
        &[
            "snapshot MiB",
            "client",
            "total s",
            "MB/s",
            "time to first chunk s",
            "stream MB/s",
            "MB/s / fernet 1T",
            "stream MB/s / fernet 1T",
        ],
    );
    let kinds = [ClientKind::Dir, ClientKind::Sink, ClientKind::Discard];
    for &(size, db, d) in dbs {
        warm(&db.path);
        let srv = InProcServer::start(env, &db.path, |_| {});
        let runs = e2e_runs(env, &srv.url, &d.case_id, &kinds, opts.reps(size));
        drop(srv);
        let fe = r.get(&format!("fernet_1t_mbs_{size}"));
        for (k, runs) in kinds.iter().zip(&runs) {
            let n = runs[0].plaintext;
            let total = med(runs, |x| x.total);
            let ttfc = med(runs, |x| x.ttfc);
            let stream = med(runs, E2eRun::stream_secs);
            let rate = mbs(n, total);
            let srate = mbs(n, stream);
            let tag = match k {
                ClientKind::Dir => "dir",
                ClientKind::Sink => "sink",
                ClientKind::Discard => "discard",
            };
            r.metric(&format!("e2e_{tag}_mbs_{size}"), rate);
            r.metric(&format!("e2e_{tag}_stream_mbs_{size}"), srate);
            r.metric(&format!("e2e_{tag}_ttfc_s_{size}"), ttfc);
            r.metric(&format!("e2e_{tag}_total_s_{size}"), total);
            r.row(
                s,
                vec![
                    mib(n),
                    k.label().into(),
                    format!("{total:.3}"),
                    f1(rate),
                    format!("{ttfc:.3}"),
                    f1(srate),
                    f2(rate / fe),
                    f2(srate / fe),
                ],
            );
        }
    }
    r.contention(s);
}
