//! Benchmarks of case-export (BENCHMARKS.md), as one harness without
//! criterion: `cargo bench --bench export -- [options]`, or `bench/run.sh`.
//! One module per section; servers, seeding and principals come from the
//! integration tests' support module (`tests/support`).
//!
//! Every comparison is measured side by side in one run, variants
//! interleaved rep by rep, and reported as medians and ratios: the machine
//! has 2 cores that other builds may share, so absolute numbers drift and
//! only ratios from the same run mean anything.
//!
//! Options (after `--`):
//!   --quick              smaller sizes and fewer reps (2 to 3 minutes)
//!   --only a,b,...       sections: seal, e2e, external, workers, chunks,
//!                        snapshot, dbsize, memory, load, keys, pg, replicas
//!                        (default: all; pg and replicas need the
//!                        PostgreSQL of CASE_EXPORT_TEST_PG)
//!   --reps N             reps for every timed comparison
//!   --out DIR            where results.md and results.json go
//!                        (default: <target>/bench)
//!   --e2e-sizes 64,512   snapshot sizes in MiB for seal, e2e, external and
//!                        snapshot (dbsize uses the first)
//!   --mem-sizes 64,256,512
//!   --profile KIND:MIB[:N]  no benchmark: run KIND (e2e-dir, e2e-discard,
//!                        seal, snapshot) N times on a MIB snapshot and exit,
//!                        for `perf record` or valgrind (bench/profile.sh)
//!
//! Without `--bench` (which `cargo bench` passes) or `--profile`, as under
//! `cargo test --all-targets`, it only runs a smoke run of a few seconds
//! (smoke.rs) and ignores the arguments, which are the test harness's.
//!
//! Data: seeded case databases are cached in <target>/bench-data/ under a
//! name that carries the seeding parameters and a hash of the schema, so a
//! rerun does not seed again. The snapshot files written there for the
//! Python and age comparisons hold synthetic plaintext: the server itself
//! never writes a snapshot to disk.

// The servers, seeding and principals of the integration tests; the
// harness uses a few of their helpers, so most re-exports go unused here.
#[allow(unused_imports)]
#[path = "../../tests/support/mod.rs"]
mod support;

mod chunks;
mod dbsize;
mod e2e;
mod env;
mod external;
mod keys;
mod load;
mod memory;
mod opts;
mod pg;
mod profile;
mod report;
mod seal;
mod smoke;
mod targets;
mod timing;
mod vacuum;
mod workers;

use chunks::chunk_section;
use dbsize::dbsize_section;
use e2e::e2e_section;
use env::{CaseDb, Env, SnapData, snapshot_data};
use external::external_section;
use keys::keys_section;
use load::load_section;
use memory::memory_section;
use opts::Opts;
use pg::{pg_section, replicas_section};
use profile::profile;
use report::{Report, machine, markdown, mib};
use seal::{cost_section, seal_section};
use std::sync::atomic::Ordering;
use std::time::Instant;
use targets::targets;
use timing::{QUIET_BUDGET_INITIAL_MS, QUIET_BUDGET_MS};
use vacuum::snapshot_section;
use workers::workers_section;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const PURPOSE: &str = "BENCH-0001";
const SEED: u64 = 42;
const CHUNK_SIZES: [u64; 6] = [64 * KIB, 128 * KIB, 256 * KIB, 512 * KIB, MIB, 2 * MIB];

fn main() {
    let opts = Opts::parse();
    let mut env = Env::new();
    if opts.smoke {
        smoke::run(&env);
        return;
    }
    if let Some((kind, size, n)) = &opts.profile {
        profile(&mut env, kind, *size, *n);
        return;
    }
    let started = Instant::now();
    if opts.quick {
        QUIET_BUDGET_MS.store(30_000, Ordering::Relaxed);
        QUIET_BUDGET_INITIAL_MS.store(30_000, Ordering::Relaxed);
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
    let list: Vec<(u64, &CaseDb, &SnapData)> = dbs
        .iter()
        .zip(&snaps)
        .map(|((s, db), (_, d))| (*s, db, d))
        .collect();
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
        e2e_section(&mut r, &env, &list, &opts);
    }
    if opts.wants("external") {
        eprintln!("== original design and age");
        external_section(&mut r, &env, &list, &opts);
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
        let list: Vec<(u64, &CaseDb)> = dbs.iter().map(|(s, db)| (*s, db)).collect();
        snapshot_section(&mut r, &env, &list, &opts);
    }
    drop(list);
    drop(snaps);
    if opts.wants("dbsize") {
        eprintln!("== database size");
        dbsize_section(&mut r, &mut env, &opts);
    }
    if opts.wants("memory") {
        eprintln!("== memory");
        memory_section(&mut r, &mut env, &opts);
    }
    if opts.wants("load") {
        eprintln!("== load");
        load_section(&mut r, &env, &opts);
    }
    if opts.wants("keys") {
        eprintln!("== keys sealed to recipients");
        keys_section(&mut r, &mut env, &opts);
    }
    if opts.wants("pg") {
        eprintln!("== PostgreSQL");
        pg_section(&mut r, &mut env, &opts);
    }
    if opts.wants("replicas") {
        eprintln!("== replicas sharing a PostgreSQL trail");
        replicas_section(&mut r, &mut env, &opts);
    }

    let elapsed = started.elapsed().as_secs_f64();
    let tg = targets(&r, &opts);
    let md = markdown(&r, &machine, elapsed, &tg);
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
