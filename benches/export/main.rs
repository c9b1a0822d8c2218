//! Benchmarks of case-export (BENCHMARKS.md), as one harness without
//! criterion: `cargo bench --bench export -- [options]`, or `bench/run.sh`.
//!
//! Every comparison is measured side by side in one run, variants
//! interleaved rep by rep, and reported as medians and ratios: the machine
//! has 2 cores that other builds may share, so absolute numbers drift and
//! only ratios from the same run mean anything.
//!
//! Options (after `--`):
//!   --quick              smaller sizes and fewer reps (about 2 minutes)
//!   --only a,b,...       sections: seal, e2e, external, workers, chunks,
//!                        snapshot, memory, load (default: all)
//!   --reps N             reps for every timed comparison
//!   --out DIR            where results.md and results.json go
//!                        (default: <target>/bench)
//!   --e2e-sizes 64,512   snapshot sizes in MiB for seal, e2e and external
//!   --mem-sizes 64,256,512
//!   --profile KIND:MIB[:N]  no benchmark: run KIND (e2e-dir, e2e-discard,
//!                        seal, snapshot) N times on a MIB snapshot and exit,
//!                        for `perf record` or valgrind (bench/profile.sh)
//!
//! Data: seeded case databases are cached in <target>/bench-data/ under a
//! name that carries the seeding parameters and a hash of the schema, so a
//! rerun does not seed again. The snapshot files written there for the
//! Python and age comparisons hold synthetic plaintext: the server itself
//! never writes a snapshot to disk.

use case_export::client::{ClientError, ClientOptions, ExportClient};
use case_export::pb::ExportCaseRequest;
use case_export::pb::export_case_response::Message as Msg;
use case_export::pb::export_service_client::ExportServiceClient;
use case_export::seal::{DEFAULT_CHUNK_SIZE, ExportId, Sealer, SecretKey, token_len};
use case_export::seed::{SCHEMA_SQL, SeedOptions, seed_demo};
use case_export::server::{Config, ON_BEHALF_OF, PrincipalConfig, Role, serve_on};
use case_export::snapshot::{ScopeConfig, Snapshot, SnapshotRequest, build_snapshot};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;
use zeroize::Zeroizing;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const TOKEN: &str = "bench-exporter-token-7d1f0c5a9b3e4d62";
const ANALYST: &str = "bench@example.org";
const PURPOSE: &str = "BENCH-0001";
const SEED: u64 = 42;
const CHUNK_SIZES: [u64; 6] = [64 * KIB, 128 * KIB, 256 * KIB, 512 * KIB, MIB, 2 * MIB];

// ---------------------------------------------------------------------------
// Options

struct Opts {
    quick: bool,
    only: Option<Vec<String>>,
    reps: Option<usize>,
    out: Option<PathBuf>,
    e2e_sizes: Vec<u64>,
    mem_sizes: Vec<u64>,
    profile: Option<(String, u64, usize)>,
}

impl Opts {
    fn parse() -> Self {
        let mut o = Opts {
            quick: false,
            only: None,
            reps: None,
            out: None,
            e2e_sizes: vec![],
            mem_sizes: vec![],
            profile: None,
        };
        let sizes = |s: &str| -> Vec<u64> {
            s.split(',')
                .map(|x| x.trim().parse().expect("sizes are MiB numbers"))
                .collect()
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut val = || args.next().unwrap_or_else(|| panic!("{a} needs a value"));
            match a.as_str() {
                "--bench" => {} // passed by `cargo bench`
                "--quick" => o.quick = true,
                "--only" => o.only = Some(val().split(',').map(str::to_string).collect()),
                "--reps" => o.reps = Some(val().parse().expect("--reps N")),
                "--out" => o.out = Some(PathBuf::from(val())),
                "--e2e-sizes" => o.e2e_sizes = sizes(&val()),
                "--mem-sizes" => o.mem_sizes = sizes(&val()),
                "--profile" => {
                    let v = val();
                    let p: Vec<&str> = v.split(':').collect();
                    o.profile = Some((
                        p[0].to_string(),
                        p.get(1).map_or(64, |s| s.parse().expect("MiB")),
                        p.get(2).map_or(3, |s| s.parse().expect("count")),
                    ));
                }
                "-h" | "--help" => {
                    println!("see the header of benches/export.rs and BENCHMARKS.md");
                    std::process::exit(0);
                }
                other => panic!("unknown option {other:?} (see benches/export.rs)"),
            }
        }
        if o.e2e_sizes.is_empty() {
            o.e2e_sizes = if o.quick { vec![16, 64] } else { vec![64, 512] };
        }
        if o.mem_sizes.is_empty() {
            o.mem_sizes = if o.quick {
                vec![16, 64]
            } else {
                vec![64, 256, 512]
            };
        }
        o
    }

    fn wants(&self, section: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|v| v.iter().any(|s| s == section))
    }

    /// Reps for a comparison whose single run moves `mib` MiB.
    fn reps(&self, mib: u64) -> usize {
        if let Some(r) = self.reps {
            return r.max(1);
        }
        match (self.quick, mib) {
            (true, _) => 3,
            (false, m) if m >= 256 => 3,
            (false, _) => 5,
        }
    }
}

// ---------------------------------------------------------------------------
// Environment: paths, runtimes, seeded data

struct Env {
    repo: PathBuf,
    data: PathBuf,
    tmp: PathBuf,
    bin: PathBuf,
    client_rt: tokio::runtime::Runtime,
    bytes_per_unit: Option<f64>,
}

impl Env {
    fn new() -> Self {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_case-export"));
        // <target>/<profile>/case-export
        let target = bin
            .parent()
            .and_then(Path::parent)
            .expect("binary inside a target dir")
            .to_path_buf();
        let data = target.join("bench-data");
        let tmp = data.join("tmp");
        std::fs::create_dir_all(&tmp).expect("create bench-data/tmp");
        let client_rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("client-rt")
            .build()
            .expect("client runtime");
        Env {
            repo: PathBuf::from(env!("CARGO_MANIFEST_DIR")),
            data,
            tmp,
            bin,
            client_rt,
            bytes_per_unit: None,
        }
    }

    fn tempdir(&self) -> TempDir {
        tempfile::tempdir_in(&self.tmp).expect("temp dir in bench-data/tmp")
    }

    /// Snapshot bytes per unit of `rows_per_case`, from a small seed.
    fn bytes_per_unit(&mut self) -> f64 {
        if let Some(b) = self.bytes_per_unit {
            return b;
        }
        let schema = &hex::encode(Sha256::digest(SCHEMA_SQL.as_bytes()))[..10];
        let cache = self.data.join(format!("calibration-s{SEED}-{schema}.txt"));
        if let Some(b) = std::fs::read_to_string(&cache)
            .ok()
            .and_then(|t| t.trim().parse::<f64>().ok())
        {
            self.bytes_per_unit = Some(b);
            return b;
        }
        let dir = self.tempdir();
        let path = dir.path().join("calibrate.db");
        let m0 = 20_000;
        let rep = seed_demo(
            &path,
            &SeedOptions {
                cases: 1,
                rows_per_case: m0,
                seed: SEED,
                ..SeedOptions::default()
            },
        )
        .expect("seed calibration db");
        let snap = build(&path, &rep.case_ids[0]);
        let b = snap.len() as f64 / f64::from(m0);
        let _ = std::fs::write(&cache, format!("{b}\n"));
        self.bytes_per_unit = Some(b);
        b
    }

    /// A database with one case whose snapshot is about `mib` MiB.
    fn case_db_for(&mut self, mib: u64) -> CaseDb {
        let b = self.bytes_per_unit();
        let m = ((mib * MIB) as f64 / b / 1000.0).round().max(1.0) as u32 * 1000;
        self.case_db(1, m)
    }

    /// A seeded database, cached under its parameters.
    fn case_db(&self, cases: u32, rows_per_case: u32) -> CaseDb {
        let schema = &hex::encode(Sha256::digest(SCHEMA_SQL.as_bytes()))[..10];
        let path = self.data.join(format!(
            "cases-c{cases}-m{rows_per_case}-s{SEED}-{schema}.db"
        ));
        if !path.exists() {
            let part = self.data.join(format!("{}.partial", std::process::id()));
            let _ = std::fs::remove_file(&part);
            let t = Instant::now();
            let r = seed_demo(
                &part,
                &SeedOptions {
                    cases,
                    rows_per_case,
                    seed: SEED,
                    ..SeedOptions::default()
                },
            )
            .expect("seed bench db");
            std::fs::rename(&part, &path).expect("rename seeded db");
            eprintln!(
                "  seeded {} ({} rows, {:.0} MiB) in {:.1} s",
                path.display(),
                r.rows,
                r.bytes as f64 / MIB as f64,
                t.elapsed().as_secs_f64()
            );
        }
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("open bench db");
        let case_ids = conn
            .prepare("SELECT id FROM cases ORDER BY case_number")
            .and_then(|mut st| {
                st.query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<Vec<String>>>()
            })
            .expect("read case ids");
        CaseDb {
            path,
            case_ids,
            rows_per_case,
        }
    }
}

struct CaseDb {
    path: PathBuf,
    case_ids: Vec<String>,
    rows_per_case: u32,
}

/// Reads a file once so later runs find it in the page cache.
fn warm(path: &Path) {
    let mut f = std::fs::File::open(path).expect("open for warming");
    let mut buf = vec![0u8; 4 << 20];
    while f.read(&mut buf).expect("read for warming") > 0 {}
}

fn build(db: &Path, case_id: &str) -> Snapshot {
    let scope = ScopeConfig::default();
    build_snapshot(&SnapshotRequest {
        source: db,
        case_id,
        scope: &scope,
        export_id: ExportId::random().expect("random export id"),
        created_at: "2025-01-01T00:00:00Z",
        max_bytes: 4 << 30,
        busy_timeout: Duration::from_secs(5),
        tenant_column: None,
        allowed_tenants: None,
    })
    .expect("build snapshot")
}

/// The serialized snapshot of the case, and its file under bench-data for
/// the external tools.
struct SnapData {
    bytes: Vec<u8>,
    rows: u64,
    file: PathBuf,
    case_id: String,
}

fn snapshot_data(env: &Env, db: &CaseDb) -> SnapData {
    let case_id = db.case_ids[0].clone();
    let mut snap = build(&db.path, &case_id);
    let rows = snap.row_counts.iter().map(|(_, n)| n).sum();
    let bytes = snap.with_bytes(<[u8]>::to_vec).expect("snapshot bytes");
    let file = db.path.with_extension("snapshot.sqlite");
    if std::fs::metadata(&file).map(|m| m.len()).ok() != Some(bytes.len() as u64) {
        std::fs::write(&file, &bytes).expect("write snapshot file");
    }
    let _ = env;
    SnapData {
        bytes,
        rows,
        file,
        case_id,
    }
}

// ---------------------------------------------------------------------------
// Statistics and the report

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Megabytes (10^6 bytes) per second.
fn mbs(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

fn f1(x: f64) -> String {
    if x.is_nan() {
        "n/a".into()
    } else {
        format!("{x:.1}")
    }
}

fn f2(x: f64) -> String {
    if x.is_nan() {
        "n/a".into()
    } else {
        format!("{x:.2}")
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / MIB as f64)
}

struct Section {
    title: String,
    intro: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

#[derive(Default)]
struct Report {
    sections: Vec<Section>,
    metrics: BTreeMap<String, f64>,
    notes: Vec<String>,
}

impl Report {
    fn section(&mut self, title: &str, intro: &str, header: &[&str]) -> usize {
        self.sections.push(Section {
            title: title.into(),
            intro: intro.into(),
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: vec![],
        });
        self.sections.len() - 1
    }

    fn row(&mut self, s: usize, cells: Vec<String>) {
        let line = cells.join(" | ");
        eprintln!("  {line}");
        self.sections[s].rows.push(cells);
    }

    /// Appends the contention seen since the last call to a section's intro.
    fn contention(&mut self, s: usize) {
        let (med, max) = take_contention();
        if med.is_nan() {
            return;
        }
        let note = format!(
            " Other processes' CPU during these timed runs (a run above 20% is redone, twice at most, while the 180 s waiting budget lasts): median {:.0}%, max {:.0}% of the machine.",
            med * 100.0,
            max * 100.0
        );
        self.sections[s].intro.push_str(&note);
        self.metrics
            .insert(format!("contention_max_{}", self.sections[s].title), max);
    }

    fn metric(&mut self, k: &str, v: f64) {
        self.metrics.insert(k.to_string(), v);
    }

    fn get(&self, k: &str) -> f64 {
        self.metrics.get(k).copied().unwrap_or(f64::NAN)
    }
}

// ---------------------------------------------------------------------------
// Sealing: the limits, the Sealer, the cost of each step

fn fernet_1t(data: &[u8], chunk: usize) -> u64 {
    let key = SecretKey::generate().expect("key");
    let f = fernet::Fernet::new(&key.expose_fernet_key()).expect("fernet key");
    let mut out = 0u64;
    for c in data.chunks(chunk) {
        let t = f.encrypt(c);
        out += t.len() as u64;
        black_box(t);
    }
    out
}

type Aes128CbcEnc = cbc::Encryptor<aes::Aes128>;
type HmacSha256 = hmac::Hmac<Sha256>;

/// Fernet's cryptography alone: AES-128-CBC and HMAC-SHA256 into one
/// reused buffer, no base64, no allocation.
fn raw_1t(data: &[u8], chunk: usize, do_aes: bool, do_mac: bool) -> u64 {
    use cbc::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
    use hmac::Mac;
    let key = SecretKey::generate().expect("key");
    let k = key.expose_bytes();
    let mut buf = vec![0u8; 25 + chunk + 16 + 32];
    let mut out = 0u64;
    for c in data.chunks(chunk) {
        let mut iv = [0u8; 16];
        getrandom::getrandom(&mut iv).expect("iv");
        buf[0] = 0x80;
        buf[1..9].copy_from_slice(&1_700_000_000u64.to_be_bytes());
        buf[9..25].copy_from_slice(&iv);
        buf[25..25 + c.len()].copy_from_slice(c);
        let ct_len = if do_aes {
            Aes128CbcEnc::new_from_slices(&k[16..], &iv)
                .expect("aes key")
                .encrypt_padded_mut::<Pkcs7>(&mut buf[25..], c.len())
                .expect("room for padding")
                .len()
        } else {
            (c.len() / 16 + 1) * 16
        };
        let end = 25 + ct_len;
        if do_mac {
            let mut mac = HmacSha256::new_from_slice(&k[..16]).expect("hmac key");
            mac.update(&buf[..end]);
            let tag = mac.finalize().into_bytes();
            buf[end..end + 32].copy_from_slice(&tag);
        }
        out += end as u64 + 32;
        black_box(&buf);
    }
    out
}

fn base64_1t(data: &[u8], chunk: usize) -> u64 {
    use base64::Engine;
    let mut out = 0u64;
    let raw = vec![0x5au8; 25 + chunk + 16 + 32];
    for c in data.chunks(chunk) {
        let n = 25 + (c.len() / 16 + 1) * 16 + 32;
        let s = base64::engine::general_purpose::URL_SAFE.encode(&raw[..n]);
        out += s.len() as u64;
        black_box(s);
    }
    out
}

/// AES-128-CBC over 8 chunks at once, one block of each chain per AES-NI
/// pass: CBC encryption is serial within a chunk, but chunks are
/// independent, so 8 chains fill the AES pipeline that one chain leaves
/// idle. What a multi-buffer Fernet writer could gain (not in the crate).
fn aes_cbc_multibuffer(data: &[u8], chunk: usize) -> u64 {
    use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
    let key = SecretKey::generate().expect("key");
    let aes = aes::Aes128::new(GenericArray::from_slice(&key.expose_bytes()[16..]));
    const LANES: usize = 8;
    let mut out = vec![0u8; chunk * LANES];
    let mut done = 0u64;
    for group in data.chunks(chunk * LANES) {
        let lanes: Vec<&[u8]> = group.chunks(chunk).collect();
        let blocks = lanes.iter().map(|l| l.len() / 16).max().unwrap_or(0);
        let mut state = [GenericArray::<u8, aes::cipher::consts::U16>::default(); LANES];
        for (j, st) in state.iter_mut().enumerate() {
            st[0] = j as u8; // stands in for a random IV
        }
        for b in 0..blocks {
            let mut batch = state;
            for (j, l) in lanes.iter().enumerate() {
                if let Some(p) = l.get(b * 16..b * 16 + 16) {
                    for k in 0..16 {
                        batch[j][k] ^= p[k];
                    }
                }
            }
            aes.encrypt_blocks(&mut batch[..lanes.len()]);
            for j in 0..lanes.len() {
                out[j * chunk + (b * 16) % chunk..][..16].copy_from_slice(&batch[j]);
            }
            state = batch;
        }
        done += group.len() as u64;
        black_box(&out);
    }
    done
}

fn sealer_run(data: &[u8], chunk: usize, workers: usize) -> u64 {
    let key = SecretKey::generate().expect("key");
    let s = Sealer::new(&key, ExportId::random().expect("id"), chunk, workers);
    let sum = s
        .seal(data, |_, t| {
            black_box(t);
            Ok::<(), ()>(())
        })
        .expect("seal");
    sum.ciphertext_size
}

fn time<T>(f: impl FnOnce() -> T) -> f64 {
    let t = Instant::now();
    black_box(f());
    t.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------------------
// Contention: other processes (builds, tests) share the 2 cores

/// Busy CPU seconds of the whole machine, and of this process plus its
/// reaped children.
#[derive(Clone, Copy)]
struct CpuMark {
    at: Instant,
    machine_busy: f64,
    own: f64,
}

fn cpu_mark() -> CpuMark {
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let busy: u64 = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .enumerate()
        // user nice system idle iowait irq softirq steal: all but idle, iowait
        .filter(|(i, _)| *i != 3 && *i != 4 && *i < 8)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    let ru = |who| {
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: getrusage fills the struct it is given.
        unsafe { libc::getrusage(who, &mut u) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(u.ru_utime) + tv(u.ru_stime)
    };
    CpuMark {
        at: Instant::now(),
        machine_busy: busy as f64 / tck,
        own: ru(libc::RUSAGE_SELF) + ru(libc::RUSAGE_CHILDREN),
    }
}

fn cores() -> f64 {
    std::thread::available_parallelism().map_or(1, |n| n.get()) as f64
}

/// Share of the machine's CPU that other processes used between two marks.
fn others_share(a: CpuMark, b: CpuMark) -> f64 {
    let wall = (b.at - a.at).as_secs_f64().max(1e-6);
    let others = (b.machine_busy - a.machine_busy) - (b.own - a.own);
    (others / (wall * cores())).clamp(0.0, 1.0)
}

/// Total time the harness may spend waiting for a quiet machine.
static QUIET_BUDGET_MS: AtomicU64 = AtomicU64::new(180_000);
/// Contention seen during timed runs, for the report.
static CONTENTION: std::sync::Mutex<Vec<f64>> = std::sync::Mutex::new(Vec::new());

/// Waits (within the run's budget) until other processes use less than
/// 15% of the machine over 300 ms, so a timed run starts on idle cores.
fn wait_quiet() {
    loop {
        let a = cpu_mark();
        std::thread::sleep(Duration::from_millis(300));
        let b = cpu_mark();
        if others_share(a, b) < 0.15 {
            return;
        }
        let left = QUIET_BUDGET_MS.load(Ordering::Relaxed);
        if left < 300 {
            return;
        }
        QUIET_BUDGET_MS.store(left - 300, Ordering::Relaxed);
    }
}

/// Times `f` after waiting for quiet, recording the contention during it.
/// A run during which other processes took more than 20% of the machine
/// is done again (twice at most, and only while the waiting budget lasts),
/// after waiting for quiet again.
fn timed_rep(f: &mut dyn FnMut() -> f64) -> f64 {
    let mut tries = 0;
    loop {
        wait_quiet();
        let a = cpu_mark();
        let secs = f();
        let b = cpu_mark();
        let share = others_share(a, b);
        tries += 1;
        // Once the waiting budget is spent, redoing runs would only make a
        // busy machine's run longer: keep what was measured.
        let budget_left = QUIET_BUDGET_MS.load(Ordering::Relaxed) >= 300;
        if share <= 0.2 || tries == 3 || !budget_left {
            CONTENTION.lock().unwrap().push(share);
            return secs;
        }
    }
}

/// Contention over the timed runs since the last call: (median, max).
fn take_contention() -> (f64, f64) {
    let v = std::mem::take(&mut *CONTENTION.lock().unwrap());
    let max = v.iter().copied().fold(0.0, f64::max);
    (median(&v), max)
}

/// Runs each named variant `reps` times, interleaved, and returns the
/// median seconds of each.
fn interleaved(reps: usize, variants: &mut [(&str, &mut dyn FnMut() -> f64)]) -> Vec<f64> {
    let mut secs: Vec<Vec<f64>> = vec![vec![]; variants.len()];
    for _ in 0..reps {
        for (i, (_, f)) in variants.iter_mut().enumerate() {
            secs[i].push(timed_rep(*f));
        }
    }
    secs.iter().map(|s| median(s)).collect()
}

fn seal_section(r: &mut Report, sizes_data: &[(u64, &SnapData)], reps_of: &dyn Fn(u64) -> usize) {
    let s = r.section(
        "Sealing limits (one export's bytes, no network)",
        "Same snapshot bytes, 256 KiB chunks. `fernet 1T`: the fernet crate's \
         `Fernet::encrypt` per chunk in one thread. `raw 1T`: AES-128-CBC + \
         HMAC-SHA256 (aes 0.8, cbc 0.1, hmac 0.12) into a reused buffer, no \
         base64. `Sealer N`: `seal::Sealer` with N workers, tokens discarded \
         (its emitter still hashes them, as in the server). Medians; MB = 10^6 bytes.",
        &[
            "snapshot MiB",
            "fernet 1T MB/s",
            "raw 1T MB/s",
            "Sealer 1w MB/s",
            "Sealer 2w MB/s",
            "2w / 1w",
            "Sealer 1w / fernet 1T",
        ],
    );
    let chunk = DEFAULT_CHUNK_SIZE;
    for &(size, d) in sizes_data {
        let data = &d.bytes[..];
        let n = data.len() as u64;
        let reps = reps_of(size);
        let m = interleaved(
            reps,
            &mut [
                ("fernet", &mut || time(|| fernet_1t(data, chunk))),
                ("raw", &mut || time(|| raw_1t(data, chunk, true, true))),
                ("sealer1", &mut || time(|| sealer_run(data, chunk, 1))),
                ("sealer2", &mut || time(|| sealer_run(data, chunk, 2))),
            ],
        );
        let (fe, raw, s1, s2) = (mbs(n, m[0]), mbs(n, m[1]), mbs(n, m[2]), mbs(n, m[3]));
        r.metric(&format!("fernet_1t_mbs_{size}"), fe);
        r.metric(&format!("raw_1t_mbs_{size}"), raw);
        r.metric(&format!("sealer_1w_mbs_{size}"), s1);
        r.metric(&format!("sealer_2w_mbs_{size}"), s2);
        r.metric(&format!("sealer_2w_over_1w_{size}"), s2 / s1);
        r.row(
            s,
            vec![
                mib(n),
                f1(fe),
                f1(raw),
                f1(s1),
                f1(s2),
                f2(s2 / s1),
                f2(s1 / fe),
            ],
        );
    }
    r.contention(s);
}

/// Where one thread's sealing time goes: each step alone on the same bytes.
fn cost_section(r: &mut Report, d: &SnapData, reps: usize) {
    let data = &d.bytes[..];
    let n = data.len() as u64;
    let chunk = DEFAULT_CHUNK_SIZE;
    // Tokens as the server makes them, for hashing.
    let key = SecretKey::generate().expect("key");
    let mut tokens: Vec<String> = Vec::new();
    Sealer::new(&key, ExportId::random().expect("id"), chunk, 2)
        .seal(data, |_, t| {
            tokens.push(t);
            Ok::<(), ()>(())
        })
        .expect("seal");
    let mut copy_dst = vec![0u8; chunk + 64];
    let m = interleaved(
        reps,
        &mut [
            ("aes", &mut || time(|| raw_1t(data, chunk, true, false))),
            ("hmac", &mut || time(|| raw_1t(data, chunk, false, true))),
            ("base64", &mut || time(|| base64_1t(data, chunk))),
            ("sha", &mut || {
                time(|| {
                    let mut h = Sha256::new();
                    for t in &tokens {
                        h.update(t.as_bytes());
                        h.update(b"\n");
                    }
                    h.finalize()
                })
            }),
            ("memcpy", &mut || {
                time(|| {
                    for c in data.chunks(chunk) {
                        copy_dst[..c.len()].copy_from_slice(c);
                        black_box(&copy_dst);
                    }
                })
            }),
            ("fernet", &mut || time(|| fernet_1t(data, chunk))),
            ("aes-mb", &mut || time(|| aes_cbc_multibuffer(data, chunk))),
        ],
    );
    let s = r.section(
        "Where one thread's time goes (cost of each step per plaintext byte)",
        "Each step alone, one thread, on the same snapshot bytes in 256 KiB \
         chunks. `SHA-256 of tokens` hashes the base64 tokens (4/3 of the \
         plaintext), as the server's emitter and the client each do once. \
         `fernet encrypt` is the whole `Fernet::encrypt` (AES + HMAC + base64 + \
         three allocations and copies).",
        &[
            "step",
            "ns / plaintext byte",
            "MB/s of plaintext",
            "share of fernet encrypt",
        ],
    );
    let names = [
        "AES-128-CBC encrypt",
        "HMAC-SHA256",
        "base64url encode (allocating, as fernet does)",
        "SHA-256 of tokens (server emitter or client)",
        "memcpy of the chunk",
        "fernet encrypt (all of it)",
        "for comparison: AES-128-CBC, 8 chunks interleaved (multi-buffer)",
    ];
    let total = m[5];
    for (i, name) in names.iter().enumerate() {
        let ns = m[i] * 1e9 / n as f64;
        r.metric(&format!("cost_ns_per_byte_{i}"), ns);
        r.row(
            s,
            vec![
                (*name).to_string(),
                f2(ns),
                f1(mbs(n, m[i])),
                format!("{:.0}%", m[i] / total * 100.0),
            ],
        );
    }
    r.contention(s);
}

// ---------------------------------------------------------------------------
// In-process server and the three clients

fn principal() -> PrincipalConfig {
    PrincipalConfig {
        name: "bench".into(),
        token_sha256: Some(hex::encode(Sha256::digest(TOKEN.as_bytes()))),
        tls_identity: None,
        roles: vec![Role::Exporter],
        tenants: None,
        max_in_flight: None,
    }
}

fn client_opts() -> ClientOptions {
    ClientOptions {
        token: Some(Zeroizing::new(TOKEN.to_string())),
        on_behalf_of: Some(ANALYST.to_string()),
        ..ClientOptions::default()
    }
}

struct InProcServer {
    url: String,
    rt: Option<tokio::runtime::Runtime>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    join: Option<tokio::task::JoinHandle<()>>,
    _dir: TempDir,
}

impl InProcServer {
    /// `serve_on` on 127.0.0.1:0 in its own multi-thread runtime (as the
    /// real binary has), with the bench principal.
    fn start(env: &Env, case_db: &Path, mutate: impl FnOnce(&mut Config)) -> Self {
        let dir = env.tempdir();
        let mut config = Config {
            listen: "127.0.0.1:0".parse().expect("addr"),
            case_db: case_db.to_path_buf(),
            audit_db: dir.path().join("audit.db"),
            principals: vec![principal()],
            shutdown_grace_secs: 2,
            ..Config::default()
        };
        mutate(&mut config);
        config.validate().expect("bench config is valid");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("server-rt")
            .build()
            .expect("server runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let join = rt.spawn(async move {
            if let Err(e) = serve_on(config, listener, async {
                let _ = rx.await;
            })
            .await
            {
                eprintln!("in-process server failed: {e}");
            }
        });
        InProcServer {
            url: format!("http://{addr}"),
            rt: Some(rt),
            shutdown: Some(tx),
            join: Some(join),
            _dir: dir,
        }
    }
}

impl Drop for InProcServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let (Some(rt), Some(j)) = (self.rt.take(), self.join.take()) {
            let _ = rt.block_on(async { tokio::time::timeout(Duration::from_secs(15), j).await });
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct E2eRun {
    /// Request sent to verified result.
    total: f64,
    /// Request sent to first chunk received.
    ttfc: f64,
    /// Header received to first chunk received.
    header_to_chunk: f64,
    plaintext: u64,
    /// CLOCK_MONOTONIC seconds at the first chunk and at the end, for
    /// `perf report --time` (bench/profile.sh).
    mono_first: f64,
    mono_end: f64,
}

fn monotonic() -> f64 {
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime fills the struct it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

impl E2eRun {
    fn stream_secs(&self) -> f64 {
        self.total - self.ttfc
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum ClientKind {
    /// `ExportClient::export_to_dir`: verify, write, fsync, rename.
    Dir,
    /// `ExportClient::export_case` into `tokio::io::sink()`: verify only.
    Sink,
    /// The generated client reading messages, no hashing, no writing.
    Discard,
}

impl ClientKind {
    fn label(self) -> &'static str {
        match self {
            ClientKind::Dir => "library client, verified .enc on disk (export_to_dir)",
            ClientKind::Sink => "library client, verified, written nowhere (export_case to sink)",
            ClientKind::Discard => "raw generated client, discards messages",
        }
    }
}

async fn e2e_once(url: &str, case_id: &str, kind: ClientKind, dir: &Path) -> E2eRun {
    let mut t_header = None;
    let mut t_first = None;
    let t0;
    let plaintext;
    match kind {
        ClientKind::Dir | ClientKind::Sink => {
            let mut c = ExportClient::connect_with(url, client_opts())
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
            let ch = tonic::transport::Endpoint::from_shared(url.to_string())
                .expect("url")
                .connect()
                .await
                .expect("connect");
            let mut c = ExportServiceClient::new(ch).max_decoding_message_size(16 << 20);
            let mut req = tonic::Request::new(ExportCaseRequest {
                case_id: case_id.to_string(),
                purpose: PURPOSE.to_string(),
            });
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {TOKEN}").parse().expect("ascii"),
            );
            req.metadata_mut()
                .insert(ON_BEHALF_OF, ANALYST.parse().expect("ascii"));
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

fn e2e_runs(
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

fn med(runs: &[E2eRun], f: impl Fn(&E2eRun) -> f64) -> f64 {
    median(&runs.iter().map(f).collect::<Vec<_>>())
}

fn e2e_section(r: &mut Report, env: &Env, dbs: &[(u64, &CaseDb, &SnapData)], opts: &Opts) {
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

// ---------------------------------------------------------------------------
// Sealing threads

fn workers_section(r: &mut Report, env: &Env, db: &CaseDb, d: &SnapData, opts: &Opts) {
    let size_mib = d.bytes.len() as u64 / MIB;
    let s = r.section(
        &format!(
            "Sealing threads (snapshot of {} MiB, 256 KiB chunks)",
            mib(d.bytes.len() as u64)
        ),
        "`Sealer Nw`: `seal::Sealer` with N workers, no network; `cores busy`: \
         this process's CPU time over wall time during it. `stream MB/s`: end \
         to end (first chunk to end), in-process server with `seal_workers = \
         N`, discarding client and library client writing to disk. The \
         Sealer's emitter (the calling thread) hashes every token, so N \
         workers are N + 1 busy threads.",
        &[
            "workers",
            "Sealer MB/s",
            "vs 1 worker",
            "cores busy",
            "stream MB/s (discard)",
            "stream MB/s (to disk)",
        ],
    );
    let data = &d.bytes[..];
    let n = data.len() as u64;
    let reps = opts.reps(size_mib);
    let mut secs: Vec<Vec<f64>> = vec![vec![]; 4];
    let mut cores_busy: Vec<Vec<f64>> = vec![vec![]; 4];
    for _ in 0..reps {
        for w in 1..=4 {
            let mut busy = 0.0;
            let t = timed_rep(&mut || {
                let a = cpu_mark();
                let t = time(|| sealer_run(data, DEFAULT_CHUNK_SIZE, w));
                let b = cpu_mark();
                busy = (b.own - a.own) / t;
                t
            });
            secs[w - 1].push(t);
            cores_busy[w - 1].push(busy);
        }
    }
    let m: Vec<f64> = secs.iter().map(|v| median(v)).collect();
    for w in 1..=4usize {
        let (sd, sdir) = if w <= 3 {
            let srv = InProcServer::start(env, &db.path, |c| c.seal_workers = w);
            let runs = e2e_runs(
                env,
                &srv.url,
                &d.case_id,
                &[ClientKind::Discard, ClientKind::Dir],
                reps.min(3),
            );
            drop(srv);
            (
                f1(mbs(n, med(&runs[0], E2eRun::stream_secs))),
                f1(mbs(n, med(&runs[1], E2eRun::stream_secs))),
            )
        } else {
            ("".into(), "".into())
        };
        r.metric(&format!("workers_{w}_seal_mbs"), mbs(n, m[w - 1]));
        r.row(
            s,
            vec![
                w.to_string(),
                f1(mbs(n, m[w - 1])),
                f2(m[0] / m[w - 1]),
                f2(median(&cores_busy[w - 1])),
                sd,
                sdir,
            ],
        );
    }
    r.contention(s);
}

// ---------------------------------------------------------------------------
// Chunk size

fn chunk_section(r: &mut Report, env: &Env, db: &CaseDb, d: &SnapData, opts: &Opts) {
    let size_mib = d.bytes.len() as u64 / MIB;
    let s = r.section(
        &format!("Chunk size (snapshot of {} MiB)", mib(d.bytes.len() as u64)),
        "`Sealer 2w`: sealing throughput, no network. `stream MB/s`: end to end \
         with the discarding client, first chunk to end (snapshot build \
         excluded, it does not depend on the chunk size). `header→chunk`: \
         from the header message to the first chunk, the part of the time \
         to first chunk that the chunk size decides. `buffers/export`: \
         `Config::stream_buffer_bytes()` = (channel_depth + 2 × workers + 1) \
         × token size, what the memory budget reserves per export besides \
         the snapshot.",
        &[
            "chunk",
            "fernet 1T MB/s",
            "Sealer 2w MB/s",
            "stream MB/s (discard)",
            "stream MB/s (to disk)",
            "header→chunk ms",
            "token KiB",
            "buffers/export MiB",
        ],
    );
    let data = &d.bytes[..];
    let n = data.len() as u64;
    let reps = opts.reps(size_mib);
    for &cs in &CHUNK_SIZES {
        let cs = cs as usize;
        let m = interleaved(
            reps,
            &mut [
                ("fernet", &mut || time(|| fernet_1t(data, cs))),
                ("sealer2", &mut || time(|| sealer_run(data, cs, 2))),
            ],
        );
        let mut cfg_seen = Config::default();
        let srv = InProcServer::start(env, &db.path, |c| {
            c.chunk_size = cs;
            cfg_seen = c.clone();
        });
        let runs = e2e_runs(
            env,
            &srv.url,
            &d.case_id,
            &[ClientKind::Discard, ClientKind::Dir],
            reps,
        );
        drop(srv);
        let stream_discard = mbs(n, med(&runs[0], E2eRun::stream_secs));
        let stream_dir = mbs(n, med(&runs[1], E2eRun::stream_secs));
        let h2c = med(&runs[0], |x| x.header_to_chunk) * 1e3;
        let tok = token_len(cs + 40) as u64;
        let buffers = cfg_seen.stream_buffer_bytes();
        r.metric(&format!("chunk_{cs}_seal2_mbs"), mbs(n, m[1]));
        r.metric(&format!("chunk_{cs}_stream_discard_mbs"), stream_discard);
        r.metric(&format!("chunk_{cs}_stream_dir_mbs"), stream_dir);
        r.row(
            s,
            vec![
                format!("{} KiB", cs as u64 / KIB),
                f1(mbs(n, m[0])),
                f1(mbs(n, m[1])),
                f1(stream_discard),
                f1(stream_dir),
                f2(h2c),
                format!("{:.0}", tok as f64 / 1024.0),
                mib(buffers),
            ],
        );
    }
    r.contention(s);
}

// ---------------------------------------------------------------------------
// Snapshot build against sqlite3 VACUUM INTO

fn sqlite3_version() -> Option<String> {
    let o = Command::new("sqlite3").arg("--version").output().ok()?;
    Some(
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()?
            .to_string(),
    )
}

fn snapshot_section(r: &mut Report, env: &Env, db: &CaseDb, opts: &Opts) {
    let size_mib = std::fs::metadata(&db.path).map(|m| m.len()).unwrap_or(0) / MIB;
    let s = r.section(
        "Snapshot build against sqlite3 VACUUM INTO",
        "`build_snapshot` of the one case of a database seeded with one case \
         (scope discovery, copy of the case's rows into an in-memory database, \
         indexes, manifest), against the `sqlite3` command-line shell running \
         `VACUUM INTO` a file on tmpfs (/dev/shm) over the same database: a \
         copy of the whole file, page-ordered, indexes copied rather than \
         rebuilt. Both read the database from the page cache. Rows are the \
         snapshot's rows; sqlite3 copies the same rows plus the users table.",
        &[
            "what",
            "median s",
            "rows/s",
            "MB/s (output bytes)",
            "ratio to VACUUM INTO",
        ],
    );
    if Command::new("sqlite3").arg("--version").output().is_err() {
        r.notes
            .push("sqlite3 not installed: VACUUM INTO comparison skipped".into());
        return;
    }
    warm(&db.path);
    let case_id = db.case_ids[0].clone();
    let out_dir = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").expect("tmpfs dir")
    } else {
        env.tempdir()
    };
    let vac_out = out_dir.path().join("vacuum.db");
    let reps = opts.reps(size_mib);
    let mut rows = 0u64;
    let mut snap_bytes = 0u64;
    let mut vac_bytes = 0u64;
    let m = interleaved(
        reps,
        &mut [
            ("build_snapshot", &mut || {
                let t = Instant::now();
                let snap = build(&db.path, &case_id);
                let secs = t.elapsed().as_secs_f64();
                rows = snap.row_counts.iter().map(|(_, n)| n).sum();
                snap_bytes = snap.len();
                drop(snap);
                secs
            }),
            ("vacuum", &mut || {
                let _ = std::fs::remove_file(&vac_out);
                let t = Instant::now();
                let st = Command::new("sqlite3")
                    .arg(&db.path)
                    .arg(format!("VACUUM INTO '{}'", vac_out.display()))
                    .status()
                    .expect("run sqlite3");
                let secs = t.elapsed().as_secs_f64();
                assert!(st.success(), "sqlite3 VACUUM INTO failed");
                vac_bytes = std::fs::metadata(&vac_out).map(|m| m.len()).unwrap_or(0);
                secs
            }),
        ],
    );
    let _ = std::fs::remove_file(&vac_out);
    r.metric("snapshot_build_s", m[0]);
    r.metric("snapshot_build_rows_per_s", rows as f64 / m[0]);
    r.metric("snapshot_build_mbs", mbs(snap_bytes, m[0]));
    r.metric("vacuum_into_s", m[1]);
    r.row(
        s,
        vec![
            format!("build_snapshot ({} MiB snapshot)", mib(snap_bytes)),
            format!("{:.3}", m[0]),
            format!("{:.0}", rows as f64 / m[0]),
            f1(mbs(snap_bytes, m[0])),
            f2(m[1] / m[0]),
        ],
    );
    r.row(
        s,
        vec![
            format!(
                "sqlite3 {} VACUUM INTO ({} MiB file)",
                sqlite3_version().unwrap_or_default(),
                mib(vac_bytes)
            ),
            format!("{:.3}", m[1]),
            format!("{:.0}", rows as f64 / m[1]),
            f1(mbs(vac_bytes, m[1])),
            "1.00".into(),
        ],
    );
    r.contention(s);
}

// ---------------------------------------------------------------------------
// External baselines: the original design in Python, and age

fn external_section(r: &mut Report, env: &Env, sizes_data: &[(u64, &SnapData)], opts: &Opts) {
    let s = r.section(
        "The original design (Python) and age, on the same snapshot file",
        "`original design`: bench/original_design.py, Python `cryptography` \
         Fernet over the whole snapshot in one token, hex-encoded into one \
         JSON body, as the original service did (encryption to encoded body; \
         no snapshot build, no network). `age`: `age -r <X25519 recipient>` \
         on the snapshot file, output to a file (process start included). \
         Ratios: our end to end (request to verified `.enc` on disk, snapshot \
         build included) over each.",
        &[
            "snapshot MiB",
            "tool",
            "median s",
            "MB/s",
            "peak RSS MiB",
            "e2e (disk) / this",
            "e2e stream phase / this",
        ],
    );
    let py = Command::new("python3")
        .args(["-c", "import cryptography"])
        .status()
        .is_ok_and(|s| s.success());
    let age = Command::new("age").arg("--version").output().is_ok();
    if !py {
        r.notes
            .push("python3 with cryptography missing: original design skipped".into());
    }
    if !age {
        r.notes.push("age missing: age comparison skipped".into());
    }
    let dir = env.tempdir();
    let mut age_pub = String::new();
    if age {
        let key = dir.path().join("age.key");
        let st = Command::new("age-keygen")
            .arg("-o")
            .arg(&key)
            .stderr(Stdio::null())
            .status()
            .expect("age-keygen");
        assert!(st.success());
        let text = std::fs::read_to_string(&key).expect("age key");
        age_pub = text
            .lines()
            .find_map(|l| l.strip_prefix("# public key: "))
            .expect("public key line")
            .to_string();
    }
    let script = env.repo.join("bench/original_design.py");
    for &(size, d) in sizes_data {
        let n = d.bytes.len() as u64;
        let e2e = r.get(&format!("e2e_dir_mbs_{size}"));
        let e2e_stream = r.get(&format!("e2e_dir_stream_mbs_{size}"));
        // Python holds ~11 copies of the data; fewer reps on big inputs.
        let reps = if size >= 256 {
            1
        } else {
            opts.reps(size).min(3)
        };
        if py {
            let mut secs = vec![];
            let mut rss = 0u64;
            for _ in 0..reps {
                let mut o = None;
                timed_rep(&mut || {
                    let t = Instant::now();
                    o = Some(
                        Command::new("python3")
                            .arg(&script)
                            .arg(&d.file)
                            .arg(&d.case_id)
                            .output()
                            .expect("run python3"),
                    );
                    t.elapsed().as_secs_f64()
                });
                let o = o.expect("ran");
                assert!(
                    o.status.success(),
                    "original_design.py failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("python JSON");
                secs.push(v["seconds"].as_f64().expect("seconds"));
                rss = rss.max(v["peak_rss_bytes"].as_u64().unwrap_or(0));
            }
            let t = median(&secs);
            let rate = mbs(n, t);
            r.metric(&format!("python_mbs_{size}"), rate);
            r.metric(&format!("python_s_{size}"), t);
            r.metric(&format!("python_peak_rss_{size}"), rss as f64);
            r.row(
                s,
                vec![
                    mib(n),
                    "original design (Python cryptography, one token, hex, JSON)".into(),
                    format!("{t:.3}"),
                    f1(rate),
                    mib(rss),
                    f2(e2e / rate),
                    f2(e2e_stream / rate),
                ],
            );
        }
        if age {
            let out = dir.path().join("out.age");
            let mut secs = vec![];
            for _ in 0..opts.reps(size).min(3) {
                let _ = std::fs::remove_file(&out);
                secs.push(timed_rep(&mut || {
                    let t = Instant::now();
                    let st = Command::new("age")
                        .arg("-r")
                        .arg(&age_pub)
                        .arg("-o")
                        .arg(&out)
                        .arg(&d.file)
                        .status()
                        .expect("run age");
                    assert!(st.success(), "age failed");
                    t.elapsed().as_secs_f64()
                }));
            }
            let _ = std::fs::remove_file(&out);
            let t = median(&secs);
            let rate = mbs(n, t);
            r.metric(&format!("age_mbs_{size}"), rate);
            r.row(
                s,
                vec![
                    mib(n),
                    format!("age {} (X25519 recipient)", age_version()),
                    format!("{t:.3}"),
                    f1(rate),
                    "".into(),
                    f2(e2e / rate),
                    f2(e2e_stream / rate),
                ],
            );
        }
    }
    r.contention(s);
}

fn age_version() -> String {
    Command::new("age")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// The real binary as a child: memory and load

struct ChildServer {
    child: std::process::Child,
    url: String,
    pid: u32,
    dir: TempDir,
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("addr").port()
}

impl ChildServer {
    /// `case-export serve --config FILE` with `extra` top-level settings.
    fn spawn(env: &Env, case_db: &Path, extra: &str) -> Self {
        let dir = env.tempdir();
        let port = free_port();
        let digest = hex::encode(Sha256::digest(TOKEN.as_bytes()));
        let cfg = dir.path().join("config.toml");
        std::fs::write(
            &cfg,
            format!(
                "listen = \"127.0.0.1:{port}\"\ncase_db = {:?}\naudit_db = {:?}\n\
                 shutdown_grace_secs = 2\n{extra}\n\
                 [[principals]]\nname = \"bench\"\ntoken_sha256 = \"{digest}\"\n\
                 roles = [\"exporter\"]\n",
                case_db.display().to_string(),
                dir.path().join("audit.db").display().to_string(),
            ),
        )
        .expect("write config");
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
        let mut cmd = Command::new(&env.bin);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("CASE_EXPORT_") {
                cmd.env_remove(k);
            }
        }
        let child = cmd
            .arg("serve")
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn case-export serve");
        let pid = child.id();
        let mut s = ChildServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            pid,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = s.child.try_wait() {
                let log =
                    std::fs::read_to_string(s.dir.path().join("server.log")).unwrap_or_default();
                panic!("server exited at start ({st}): {log}");
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "server did not listen in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        s
    }

    fn status_bytes(&self, field: &str) -> u64 {
        proc_status(self.pid, field)
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        // SAFETY: signals only the child this harness spawned, by its pid.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `/proc/PID/status` field given in kB, in bytes.
fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim_start_matches(':').split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Peaks of one phase, in bytes.
#[derive(Clone, Copy, Default)]
struct RssPeaks {
    rss: u64,
    anon: u64,
    file: u64,
}

/// Samples VmRSS, RssAnon and RssFile of `pid` every few ms, keeping the
/// peaks before and after `phase` is set.
struct RssSampler {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<(RssPeaks, RssPeaks)>>,
}

impl RssSampler {
    fn start(pid: u32, phase: Arc<AtomicBool>) -> Self {
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

    fn finish(mut self) -> (RssPeaks, RssPeaks) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

fn memory_section(r: &mut Report, env: &mut Env, opts: &Opts) {
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
        let sampler = RssSampler::start(srv.pid, phase.clone());
        let out = env.tempdir();
        let case_id = db.case_ids[0].clone();
        let receipt = env.client_rt.block_on(async {
            let mut c = ExportClient::connect_with(&srv.url, client_opts())
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

fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::Busy(_) => "RESOURCE_EXHAUSTED".into(),
        ClientError::Unavailable(_) => "UNAVAILABLE".into(),
        ClientError::Other { code, .. } => format!("{code:?}"),
        other => {
            let s = other.to_string();
            s.chars().take(60).collect()
        }
    }
}

fn load_section(r: &mut Report, env: &Env, opts: &Opts) {
    let (cases, rows) = (20u32, 200u32);
    let db = env.case_db(cases, rows);
    warm(&db.path);
    let secs = if opts.quick { 5 } else { 10 };
    let s = r.section(
        "Load (real binary; small cases)",
        &format!(
            "A database of {cases} cases × {rows} rows per case. A: 32 clients, \
             each on its own connection, export cases back to back for {secs} s \
             (`export_case` into a sink: the stream is verified, not written), \
             server with max_in_flight = 32. B: 200 clients, each connected, \
             start one export at the same instant, twice, against \
             max_in_flight = 4 and memory_budget_bytes = 256 MiB \
             (max_snapshot_bytes = 64 MiB); expected: only OK and \
             RESOURCE_EXHAUSTED. Peak RSS is the server's VmHWM."
        ),
        &[
            "run",
            "exports",
            "exports/s",
            "p50 ms",
            "p99 ms",
            "outcomes",
            "server VmHWM MiB",
            "budget",
        ],
    );

    // A: throughput and latency.
    {
        wait_quiet();
        // All clients are one principal: its own cap must not be the limit.
        let srv = ChildServer::spawn(
            env,
            &db.path,
            "max_in_flight = 32\nmax_in_flight_per_principal = 32",
        );
        let base = srv.status_bytes("VmHWM");
        let url = srv.url.clone();
        let ids = Arc::new(db.case_ids.clone());
        let (lat, errs, wall) = env.client_rt.block_on(async move {
            let mut clients = vec![];
            for _ in 0..32 {
                clients.push(
                    ExportClient::connect_with(&url, client_opts())
                        .await
                        .expect("connect"),
                );
            }
            let start = Instant::now();
            let deadline = start + Duration::from_secs(secs);
            let mut tasks = vec![];
            for (i, mut c) in clients.into_iter().enumerate() {
                let ids = ids.clone();
                tasks.push(tokio::spawn(async move {
                    let mut lat = vec![];
                    let mut errs: BTreeMap<String, u64> = BTreeMap::new();
                    let mut k = i;
                    while Instant::now() < deadline {
                        let id = &ids[k % ids.len()];
                        k += 1;
                        let t = Instant::now();
                        match c
                            .export_case(id, PURPOSE, &mut tokio::io::sink(), |_, _| {})
                            .await
                        {
                            Ok(_) => lat.push(t.elapsed().as_secs_f64()),
                            Err(e) => *errs.entry(error_kind(&e)).or_default() += 1,
                        }
                    }
                    (lat, errs)
                }));
            }
            let mut lat = vec![];
            let mut errs: BTreeMap<String, u64> = BTreeMap::new();
            for t in tasks {
                let (l, e) = t.await.expect("client task");
                lat.extend(l);
                for (k, v) in e {
                    *errs.entry(k).or_default() += v;
                }
            }
            (lat, errs, start.elapsed().as_secs_f64())
        });
        let hwm = srv.status_bytes("VmHWM");
        drop(srv);
        let n_err: u64 = errs.values().sum();
        let rate = lat.len() as f64 / wall;
        r.metric("load_a_exports_per_s", rate);
        r.metric("load_a_p50_ms", percentile(&lat, 50.0) * 1e3);
        r.metric("load_a_p99_ms", percentile(&lat, 99.0) * 1e3);
        r.metric("load_a_errors", n_err as f64);
        let outcomes = if errs.is_empty() {
            format!("{} OK, 0 errors", lat.len())
        } else {
            format!("{} OK, errors: {errs:?}", lat.len())
        };
        r.row(
            s,
            vec![
                "A: 32 clients, max_in_flight 32".into(),
                lat.len().to_string(),
                f1(rate),
                f1(percentile(&lat, 50.0) * 1e3),
                f1(percentile(&lat, 99.0) * 1e3),
                outcomes,
                format!("{} (baseline {})", mib(hwm), mib(base)),
                "4096 MiB (default)".into(),
            ],
        );
    }

    // B: overload against max_in_flight = 4.
    {
        let budget = 256 * MIB;
        wait_quiet();
        let srv = ChildServer::spawn(
            env,
            &db.path,
            &format!(
                "max_in_flight = 4\nmemory_budget_bytes = {budget}\nmax_snapshot_bytes = {}",
                64 * MIB
            ),
        );
        let base = srv.status_bytes("VmHWM");
        let url = srv.url.clone();
        let ids = Arc::new(db.case_ids.clone());
        let (ok, lat, outcomes) = env.client_rt.block_on(async move {
            let mut clients = vec![];
            for _ in 0..200 {
                clients.push(
                    ExportClient::connect_with(&url, client_opts())
                        .await
                        .expect("connect"),
                );
            }
            let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
            let mut lat = vec![];
            for _round in 0..2 {
                let barrier = Arc::new(tokio::sync::Barrier::new(clients.len()));
                let mut tasks = vec![];
                for (i, c) in clients.iter().enumerate() {
                    let mut c = c.clone();
                    let ids = ids.clone();
                    let barrier = barrier.clone();
                    tasks.push(tokio::spawn(async move {
                        barrier.wait().await;
                        let t = Instant::now();
                        let r = c
                            .export_case(
                                &ids[i % ids.len()],
                                PURPOSE,
                                &mut tokio::io::sink(),
                                |_, _| {},
                            )
                            .await;
                        (r.map(|_| ()).map_err(|e| error_kind(&e)), t.elapsed())
                    }));
                }
                for t in tasks {
                    let (res, el) = t.await.expect("client task");
                    match res {
                        Ok(()) => {
                            *outcomes.entry("OK".into()).or_default() += 1;
                            lat.push(el.as_secs_f64());
                        }
                        Err(k) => *outcomes.entry(k).or_default() += 1,
                    }
                }
            }
            (outcomes.get("OK").copied().unwrap_or(0), lat, outcomes)
        });
        let hwm = srv.status_bytes("VmHWM");
        drop(srv);
        let other: u64 = outcomes
            .iter()
            .filter(|(k, _)| k.as_str() != "OK" && k.as_str() != "RESOURCE_EXHAUSTED")
            .map(|(_, v)| v)
            .sum();
        r.metric("load_b_ok", ok as f64);
        r.metric(
            "load_b_exhausted",
            outcomes.get("RESOURCE_EXHAUSTED").copied().unwrap_or(0) as f64,
        );
        r.metric("load_b_other_errors", other as f64);
        r.metric("load_b_hwm", hwm as f64);
        r.metric("load_b_budget", budget as f64);
        r.row(
            s,
            vec![
                "B: 200 clients × 2 rounds, max_in_flight 4".into(),
                "400".into(),
                "".into(),
                f1(percentile(&lat, 50.0) * 1e3),
                f1(percentile(&lat, 99.0) * 1e3),
                outcomes
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                format!("{} (baseline {})", mib(hwm), mib(base)),
                format!(
                    "{} MiB: {}",
                    budget / MIB,
                    if hwm <= budget { "within" } else { "OVER" }
                ),
            ],
        );
    }
}

// ---------------------------------------------------------------------------
// Targets and output

fn targets(r: &Report, opts: &Opts) -> Section {
    let mut rows = vec![];
    let verdict = |ok: bool, by: String| {
        let word = if ok { "met" } else { "MISSED" };
        if by.is_empty() {
            word.to_string()
        } else {
            format!("{word} ({by})")
        }
    };
    for &size in &opts.e2e_sizes {
        let fe = r.get(&format!("fernet_1t_mbs_{size}"));
        let dir = r.get(&format!("e2e_dir_mbs_{size}"));
        let dirs = r.get(&format!("e2e_dir_stream_mbs_{size}"));
        let dis = r.get(&format!("e2e_discard_mbs_{size}"));
        let diss = r.get(&format!("e2e_discard_stream_mbs_{size}"));
        let py = r.get(&format!("python_mbs_{size}"));
        if !dir.is_nan() && !fe.is_nan() {
            rows.push(vec![
                format!("e2e to disk ≥ 0.9 × fernet 1T ({size} MiB)"),
                format!("{:.2}× (stream phase alone {:.2}×)", dir / fe, dirs / fe),
                verdict(
                    dir / fe >= 0.9,
                    format!("{:.0}% of target", dir / fe / 0.9 * 100.0),
                ),
            ]);
        }
        if !dis.is_nan() && !fe.is_nan() {
            rows.push(vec![
                format!("e2e discarding client ≥ 1.6 × fernet 1T ({size} MiB)"),
                format!("{:.2}× (stream phase alone {:.2}×)", dis / fe, diss / fe),
                verdict(
                    dis / fe >= 1.6,
                    format!("{:.0}% of target", dis / fe / 1.6 * 100.0),
                ),
            ]);
        }
        if !dir.is_nan() && !py.is_nan() {
            rows.push(vec![
                format!("e2e to disk ≥ 10 × original design ({size} MiB)"),
                format!("{:.2}× (stream phase alone {:.2}×)", dir / py, dirs / py),
                verdict(
                    dir / py >= 10.0,
                    format!("{:.0}% of target", dir / py / 10.0 * 100.0),
                ),
            ]);
        }
        let py_s = r.get(&format!("python_s_{size}"));
        let build_s = r.get(&format!("e2e_dir_ttfc_s_{size}"));
        let total_s = r.get(&format!("e2e_dir_total_s_{size}"));
        if !py_s.is_nan() && !total_s.is_nan() {
            rows.push(vec![
                format!("  … if the original had to build the same snapshot first ({size} MiB)"),
                format!(
                    "{:.2}× (our time to first chunk {build_s:.2} s + Python {py_s:.2} s, against our {total_s:.2} s)",
                    (build_s + py_s) / total_s
                ),
                verdict(
                    (build_s + py_s) / total_s >= 10.0,
                    format!("{:.0}% of target", (build_s + py_s) / total_s / 10.0 * 100.0),
                ),
            ]);
        }
        let s1 = r.get(&format!("sealer_1w_mbs_{size}"));
        let s2 = r.get(&format!("sealer_2w_mbs_{size}"));
        if !s1.is_nan() {
            rows.push(vec![
                format!("Sealer 2 workers ≥ 1.8 × 1 worker ({size} MiB)"),
                format!("{:.2}×", s2 / s1),
                verdict(
                    s2 / s1 >= 1.8,
                    format!("{:.0}% of target", s2 / s1 / 1.8 * 100.0),
                ),
            ]);
        }
    }
    for &size in &opts.mem_sizes {
        let hwm = r.get(&format!("mem_hwm_{size}"));
        let target = r.get(&format!("mem_target_{size}"));
        if !hwm.is_nan() {
            rows.push(vec![
                format!("server peak RSS ≤ 1.1 × snapshot + 64 MiB ({size} MiB)"),
                format!(
                    "{:.0} MiB vs {:.0} MiB",
                    hwm / MIB as f64,
                    target / MIB as f64
                ),
                verdict(
                    hwm <= target,
                    format!("{:+.0} MiB", (hwm - target) / MIB as f64),
                ),
            ]);
            let anon = r.get(&format!("mem_peak_anon_{size}"));
            rows.push(vec![
                format!("  … counting anonymous memory only (RssAnon) ({size} MiB)"),
                format!(
                    "{:.0} MiB vs {:.0} MiB (mapped file pages at peak: {:.0} MiB)",
                    anon / MIB as f64,
                    target / MIB as f64,
                    r.get(&format!("mem_peak_file_{size}")) / MIB as f64
                ),
                verdict(
                    anon <= target,
                    format!("{:+.0} MiB", (anon - target) / MIB as f64),
                ),
            ]);
        }
    }
    let e = r.get("load_a_errors");
    if !e.is_nan() {
        rows.push(vec![
            "load A: 32 clients, zero errors".into(),
            format!("{e:.0} errors"),
            verdict(
                e == 0.0,
                format!("{:.1} exports/s", r.get("load_a_exports_per_s")),
            ),
        ]);
    }
    let o = r.get("load_b_other_errors");
    if !o.is_nan() {
        let hwm = r.get("load_b_hwm");
        let budget = r.get("load_b_budget");
        rows.push(vec![
            "load B: only OK / RESOURCE_EXHAUSTED, RSS within budget".into(),
            format!(
                "{:.0} OK, {:.0} exhausted, {o:.0} other; {:.0} MiB of {:.0} MiB",
                r.get("load_b_ok"),
                r.get("load_b_exhausted"),
                hwm / MIB as f64,
                budget / MIB as f64
            ),
            verdict(o == 0.0 && hwm <= budget, "".into()),
        ]);
    }
    Section {
        title: "Targets".into(),
        intro: "Each target as measured in this run.".into(),
        header: vec!["target".into(), "measured".into(), "verdict".into()],
        rows,
    }
}

fn machine() -> Vec<String> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|s| s.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem = proc_meminfo("MemTotal");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let kernel = Command::new("uname")
        .arg("-r")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let rustc = Command::new("rustc")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|w| w == f);
    vec![
        format!(
            "{cores} cores ({cpu}; AES-NI {}, SHA-NI {}), {:.1} GiB RAM, Linux {kernel}",
            if has("aes") { "yes" } else { "no" },
            if has("sha_ni") { "yes" } else { "no" },
            mem as f64 / (1u64 << 30) as f64
        ),
        format!("{rustc}; release profile (thin LTO, codegen-units 1)"),
        format!("load average at start: {}", load.trim()),
        format!("source: {}", git_state()),
    ]
}

fn git_state() -> String {
    let run = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let head = run(&["rev-parse", "--short", "HEAD"]);
    let dirty = run(&[
        "status",
        "--porcelain",
        "--",
        "src",
        "Cargo.toml",
        "Cargo.lock",
    ]);
    let n = dirty.lines().count();
    if n == 0 {
        format!("commit {head}, src clean")
    } else {
        format!("commit {head} with {n} uncommitted change(s) under src/ and Cargo.*")
    }
}

fn proc_meminfo(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|r| r.trim_start_matches(':').split_whitespace().next())
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn markdown(r: &Report, machine: &[String], opts: &Opts, elapsed: f64, tg: &Section) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# case-export benchmark results\n");
    let _ = writeln!(
        md,
        "Run: `cargo bench --bench export --{}` in {:.0} s.\n",
        if opts.quick { " --quick" } else { "" },
        elapsed
    );
    for m in machine {
        let _ = writeln!(md, "- {m}");
    }
    let _ = writeln!(
        md,
        "- load average at end: {}",
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    let _ = writeln!(md);
    let mut all: Vec<&Section> = vec![tg];
    all.extend(r.sections.iter());
    for sec in all {
        let _ = writeln!(md, "## {}\n", sec.title);
        if !sec.intro.is_empty() {
            let _ = writeln!(md, "{}\n", sec.intro);
        }
        let _ = writeln!(md, "| {} |", sec.header.join(" | "));
        let _ = writeln!(
            md,
            "|{}|",
            sec.header
                .iter()
                .map(|_| "---")
                .collect::<Vec<_>>()
                .join("|")
        );
        for row in &sec.rows {
            let _ = writeln!(md, "| {} |", row.join(" | "));
        }
        let _ = writeln!(md);
    }
    let initial: u64 = if opts.quick { 30_000 } else { 180_000 };
    let waited = initial.saturating_sub(QUIET_BUDGET_MS.load(Ordering::Relaxed));
    let _ = writeln!(
        md,
        "Before each timed run the harness waits until other processes use \
         under 15% of the machine (at most 180 s in all, 30 s with --quick); \
         this run waited {:.0} s.\n",
        waited as f64 / 1000.0
    );
    if !r.notes.is_empty() {
        let _ = writeln!(md, "## Notes\n");
        for n in &r.notes {
            let _ = writeln!(md, "- {n}");
        }
    }
    md
}

// ---------------------------------------------------------------------------
// Profiling entry point (bench/profile.sh)

fn profile(env: &mut Env, kind: &str, size: u64, n: usize) {
    let db = env.case_db_for(size);
    warm(&db.path);
    let case_id = db.case_ids[0].clone();
    eprintln!("profile {kind} on {size} MiB × {n}");
    match kind {
        "e2e-dir" | "e2e-sink" | "e2e-discard" => {
            let k = match kind {
                "e2e-dir" => ClientKind::Dir,
                "e2e-sink" => ClientKind::Sink,
                _ => ClientKind::Discard,
            };
            let srv = InProcServer::start(env, &db.path, |_| {});
            let runs = e2e_runs(env, &srv.url, &case_id, &[k], n);
            for run in &runs[0] {
                eprintln!(
                    "  total {:.3} s, first chunk {:.3} s, stream {:.3} s",
                    run.total,
                    run.ttfc,
                    run.stream_secs()
                );
                // CLOCK_MONOTONIC window of the streaming phase.
                println!("STREAM_WINDOW {:.6} {:.6}", run.mono_first, run.mono_end);
            }
        }
        "seal" => {
            let d = snapshot_data(env, &db);
            for workers in [1, 2, 3, 4] {
                for _ in 0..n {
                    wait_quiet();
                    let a = cpu_mark();
                    let t = time(|| sealer_run(&d.bytes, DEFAULT_CHUNK_SIZE, workers));
                    let b = cpu_mark();
                    eprintln!(
                        "  seal {workers}w {:.3} s, {:.2} cores busy, others {:.0}%",
                        t,
                        (b.own - a.own) / t,
                        others_share(a, b) * 100.0
                    );
                }
            }
        }
        "snapshot" => {
            for _ in 0..n {
                let t = time(|| build(&db.path, &case_id));
                eprintln!("  build_snapshot {:.3} s", t);
            }
        }
        other => panic!("unknown profile kind {other}"),
    }
}

// ---------------------------------------------------------------------------

fn main() {
    let opts = Opts::parse();
    let mut env = Env::new();
    if let Some((kind, size, n)) = &opts.profile {
        profile(&mut env, kind, *size, *n);
        return;
    }
    let started = Instant::now();
    if opts.quick {
        QUIET_BUDGET_MS.store(30_000, Ordering::Relaxed);
    }
    let machine = machine();
    let mut r = Report::default();
    let out_dir = opts
        .out
        .clone()
        .unwrap_or_else(|| env.data.parent().expect("target dir").join("bench"));
    std::fs::create_dir_all(&out_dir).expect("create output dir");

    eprintln!("== preparing data");
    let need_e2e = ["seal", "e2e", "external", "chunks", "workers"]
        .iter()
        .any(|s| opts.wants(s));
    let mut dbs: Vec<(u64, CaseDb)> = vec![];
    if need_e2e || opts.wants("snapshot") {
        for &size in &opts.e2e_sizes {
            dbs.push((size, env.case_db_for(size)));
        }
    }
    // Snapshot bytes of every e2e size (held in memory for the sealing runs).
    let mut snaps: Vec<(u64, SnapData)> = vec![];
    if need_e2e {
        for (size, db) in &dbs {
            let d = snapshot_data(&env, db);
            eprintln!(
                "  {size} MiB target: rows_per_case {}, snapshot {} MiB, {} rows",
                db.rows_per_case,
                mib(d.bytes.len() as u64),
                d.rows
            );
            snaps.push((*size, d));
        }
    }
    let by_size: Vec<(u64, &SnapData)> = snaps.iter().map(|(s, d)| (*s, d)).collect();
    let reps_of = |mib: u64| opts.reps(mib);

    if opts.wants("seal") {
        eprintln!("== sealing limits");
        seal_section(&mut r, &by_size, &reps_of);
        if let Some((_, d)) = by_size.first() {
            cost_section(&mut r, d, opts.reps(0));
        }
    }
    if opts.wants("e2e") {
        eprintln!("== end to end");
        if r.get(&format!("fernet_1t_mbs_{}", opts.e2e_sizes[0]))
            .is_nan()
        {
            // The ratios need the fernet rate from this run.
            seal_section(&mut r, &by_size, &reps_of);
        }
        let list: Vec<(u64, &CaseDb, &SnapData)> = dbs
            .iter()
            .zip(&snaps)
            .map(|((s, db), (_, d))| (*s, db, d))
            .collect();
        e2e_section(&mut r, &env, &list, &opts);
    }
    if opts.wants("external") {
        eprintln!("== original design and age");
        external_section(&mut r, &env, &by_size, &opts);
    }
    if opts.wants("workers") {
        eprintln!("== sealing threads");
        if let (Some((_, db)), Some((_, d))) = (dbs.first(), snaps.first()) {
            workers_section(&mut r, &env, db, d, &opts);
        }
    }
    if opts.wants("chunks") {
        eprintln!("== chunk size");
        // The 64 MiB case (16 MiB with --quick): the smallest e2e size.
        if let (Some((_, db)), Some((_, d))) = (dbs.first(), snaps.first()) {
            chunk_section(&mut r, &env, db, d, &opts);
        }
    }
    if opts.wants("snapshot") {
        eprintln!("== snapshot build");
        let size = if opts.quick { 16 } else { 64 };
        let db = env.case_db_for(size);
        snapshot_section(&mut r, &env, &db, &opts);
    }
    drop(snaps);
    if opts.wants("memory") {
        eprintln!("== memory");
        memory_section(&mut r, &mut env, &opts);
    }
    if opts.wants("load") {
        eprintln!("== load");
        load_section(&mut r, &env, &opts);
    }

    let elapsed = started.elapsed().as_secs_f64();
    let tg = targets(&r, &opts);
    let md = markdown(&r, &machine, &opts, elapsed, &tg);
    std::fs::write(out_dir.join("results.md"), &md).expect("write results.md");
    let json = serde_json::json!({
        "quick": opts.quick,
        "elapsed_s": elapsed,
        "machine": machine,
        "metrics": r.metrics,
        "notes": r.notes,
    });
    std::fs::write(
        out_dir.join("results.json"),
        serde_json::to_string_pretty(&json).expect("json"),
    )
    .expect("write results.json");
    println!("{md}");
    eprintln!("wrote {}", out_dir.join("results.md").display());
}
