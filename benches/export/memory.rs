//! Server peak RSS for one export: the real binary as a child, sampled
//! through /proc while the library client exports from this process.

use crate::env::{Env, warm};
use crate::opts::Opts;
use crate::report::{Report, f1, f2, mib};
use crate::support::{ServerProcess, test_client_options, write_config};
use crate::timing::wait_quiet;
use crate::{MIB, PURPOSE};
use case_export::client::ExportClient;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tempfile::TempDir;

/// The real binary as a child (the tests' child-process server), its files
/// in a directory of its own; stopped with SIGTERM when dropped.
pub struct ChildServer {
    server: Option<ServerProcess>,
    _dir: TempDir,
}

impl ChildServer {
    /// `case-export serve` on `case_db` with `extra` top-level settings.
    pub fn spawn(env: &Env, case_db: &Path, extra: &str) -> Self {
        let dir = env.tempdir();
        let config = write_config(&dir.path().join("config.toml"), extra);
        let server = ServerProcess::start_custom(
            &config,
            case_db,
            &dir.path().join("audit.db"),
            dir.path(),
            &[],
            |cmd| {
                cmd.env("RUST_LOG", "warn");
            },
        );
        // Let start-up settle before anything is measured.
        std::thread::sleep(Duration::from_millis(200));
        ChildServer {
            server: Some(server),
            _dir: dir,
        }
    }

    fn server(&self) -> &ServerProcess {
        self.server.as_ref().expect("server running")
    }

    pub fn url(&self) -> String {
        self.server().url()
    }

    pub fn pid(&self) -> u32 {
        self.server().pid()
    }

    pub fn status_bytes(&self, field: &str) -> u64 {
        proc_status(self.pid(), field)
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.terminate();
        }
    }
}

/// A `/proc/PID/status` field given in kB, in bytes.
pub fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Peaks of one phase, in bytes.
#[derive(Clone, Copy, Default)]
pub struct RssPeaks {
    pub rss: u64,
    pub anon: u64,
    pub file: u64,
}

/// Samples VmRSS, RssAnon and RssFile of `pid` every few ms, keeping the
/// peaks before and after `phase` is set.
pub struct RssSampler {
    pub stop: Arc<AtomicBool>,
    pub handle: Option<std::thread::JoinHandle<(RssPeaks, RssPeaks)>>,
}

impl RssSampler {
    pub fn start(pid: u32, phase: Arc<AtomicBool>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut before, mut after) = (RssPeaks::default(), RssPeaks::default());
            while !st.load(Ordering::Relaxed) {
                let p = if phase.load(Ordering::Relaxed) {
                    &mut after
                } else {
                    &mut before
                };
                p.rss = p.rss.max(proc_status(pid, "VmRSS"));
                p.anon = p.anon.max(proc_status(pid, "RssAnon"));
                p.file = p.file.max(proc_status(pid, "RssFile"));
                std::thread::sleep(Duration::from_millis(5));
            }
            (before, after)
        });
        RssSampler {
            stop,
            handle: Some(handle),
        }
    }

    pub fn finish(mut self) -> (RssPeaks, RssPeaks) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

pub fn memory_section(r: &mut Report, env: &mut Env, opts: &Opts) {
    let s = r.section(
        "Server peak RSS for one export (real binary, `case-export serve`)",
        "The release binary as a child with the default config; one export \
         with the library client (`export_to_dir`) from this process. \
         `VmHWM` from /proc/PID/status after the export; `baseline` is VmHWM \
         after start-up, before any export. `building` / `streaming`: peaks \
         of VmRSS, and of its two parts RssAnon (heap: snapshot, SQLite \
         caches and sorters, buffers) and RssFile (mapped files: the binary, \
         its libraries, and the case database if it is read through mmap), \
         sampled every 5 ms before and after the first chunk reached the \
         client. Target: VmHWM ≤ 1.1 × snapshot + 64 MiB.",
        &[
            "snapshot MiB",
            "baseline MiB",
            "VmHWM MiB",
            "VmHWM − baseline MiB",
            "building: RSS (anon + file) MiB",
            "streaming: RSS (anon + file) MiB",
            "VmHWM / snapshot",
            "target MiB",
            "met",
        ],
    );
    for &size in &opts.mem_sizes {
        let db = env.case_db_for(size);
        warm(&db.path);
        wait_quiet();
        let srv = ChildServer::spawn(env, &db.path, "");
        let baseline = srv.status_bytes("VmHWM");
        let phase = Arc::new(AtomicBool::new(false));
        let sampler = RssSampler::start(srv.pid(), phase.clone());
        let out = env.tempdir();
        let case_id = db.case_ids[0].clone();
        let receipt = env.client_rt.block_on(async {
            let mut c = ExportClient::connect_with(&srv.url(), test_client_options())
                .await
                .expect("connect");
            c.export_to_dir(&case_id, PURPOSE, out.path(), |_, _| {
                phase.store(true, Ordering::Relaxed);
            })
            .await
            .expect("export")
        });
        std::thread::sleep(Duration::from_millis(50));
        let (before, after) = sampler.finish();
        let hwm = srv.status_bytes("VmHWM");
        drop(srv);
        let snap = receipt.plaintext_size;
        let target = snap as f64 * 1.1 + 64.0 * MIB as f64;
        let met = (hwm as f64) <= target;
        r.metric(&format!("mem_hwm_{size}"), hwm as f64);
        r.metric(
            &format!("mem_peak_anon_{size}"),
            before.anon.max(after.anon) as f64,
        );
        r.metric(
            &format!("mem_peak_file_{size}"),
            before.file.max(after.file) as f64,
        );
        r.metric(&format!("mem_snapshot_{size}"), snap as f64);
        r.metric(&format!("mem_baseline_{size}"), baseline as f64);
        r.metric(&format!("mem_target_{size}"), target);
        r.row(
            s,
            vec![
                mib(snap),
                mib(baseline),
                mib(hwm),
                mib(hwm.saturating_sub(baseline)),
                format!(
                    "{} ({} + {})",
                    mib(before.rss),
                    mib(before.anon),
                    mib(before.file)
                ),
                format!(
                    "{} ({} + {})",
                    mib(after.rss),
                    mib(after.anon),
                    mib(after.file)
                ),
                f2(hwm as f64 / snap as f64),
                f1(target / MIB as f64),
                if met {
                    "yes".into()
                } else {
                    format!("no (+{} MiB)", f1((hwm as f64 - target) / MIB as f64))
                },
            ],
        );
    }
}
