//! PostgreSQL as the case source: building one case's snapshot from
//! PostgreSQL against a bare binary `COPY` of the same rows and against
//! the same case from SQLite, and the server's peak RSS exporting a case
//! from PostgreSQL. The PostgreSQL databases are seeded once with the same
//! generator as the SQLite ones and kept (by name) for later runs.

use crate::env::{CaseDb, Env, build, warm};
use crate::memory::{ChildServer, RssSampler};
use crate::opts::Opts;
use crate::report::{Report, f1, f2, mbs, mib};
use crate::support::{pg_admin_url, pg_connect, test_client_options, with_dbname};
use crate::timing::interleaved;
use crate::{MIB, PURPOSE, SEED};
use case_export::client::ExportClient;
use case_export::db::{DbLocation, PgConnector};
use case_export::seal::ExportId;
use case_export::seed::{SCHEMA_SQL, SeedOptions};
use case_export::snapshot::{CaseRequest, CaseSource, PgSourceOptions, ScopeConfig, Snapshot};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// The rows of one demo case, table by table, as plain `SELECT`s: what the
/// scope rules select for the demo schema (every child row's parent is in
/// the same case), for the bare `COPY` the build is held to.
fn case_queries(case_id: &str) -> Vec<String> {
    let id = format!("'{}'::uuid", case_id.replace('\'', "''"));
    let by_case = |t: &str| format!("SELECT * FROM {t} WHERE case_id = {id}");
    let by_evidence = |t: &str| {
        format!(
            "SELECT x.* FROM {t} x JOIN evidence e ON e.id = x.evidence_id WHERE e.case_id = {id}"
        )
    };
    vec![
        format!("SELECT * FROM cases WHERE id = {id}"),
        by_case("subjects"),
        by_case("transactions"),
        by_case("analysis_results"),
        format!(
            "SELECT i.* FROM indicators i JOIN analysis_results a ON a.id = i.analysis_id \
             WHERE a.case_id = {id}"
        ),
        by_case("evidence"),
        by_evidence("evidence_documents"),
        by_evidence("evidence_photos"),
        by_evidence("evidence_emails"),
        format!(
            "SELECT l.* FROM evidence_links l JOIN evidence a ON a.id = l.from_evidence_id \
             JOIN evidence b ON b.id = l.to_evidence_id WHERE a.case_id = {id} AND b.case_id = {id}"
        ),
        by_evidence("annotations"),
        by_case("notes"),
        by_evidence("custody_events"),
    ]
}

/// A PostgreSQL database seeded like `db` (same options, same rows),
/// created once and kept under a name that carries the parameters.
fn pg_case_db(env: &Env, db: &CaseDb) -> String {
    let schema = &hex::encode(Sha256::digest(
        [SCHEMA_SQL, case_export::seed::PG_SCHEMA_SQL]
            .concat()
            .as_bytes(),
    ))[..10];
    let name = format!("ce_bench_c1_m{}_s{SEED}_{schema}", db.rows_per_case);
    let admin = pg_admin_url();
    let url = with_dbname(&admin, &name);
    env.client_rt.block_on(async {
        let client = pg_connect(&admin).await;
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .expect("look up the bench database")
            .is_some();
        if exists {
            return;
        }
        let part = format!("{name}_partial");
        // One statement each: neither may run inside a transaction block.
        for sql in [
            format!("DROP DATABASE IF EXISTS \"{part}\""),
            format!("CREATE DATABASE \"{part}\""),
        ] {
            client
                .batch_execute(&sql)
                .await
                .expect("create the bench database");
        }
        let t = Instant::now();
        let connector = connector(&with_dbname(&admin, &part));
        let r = case_export::seed::seed_postgres(
            &connector,
            &SeedOptions {
                cases: 1,
                rows_per_case: db.rows_per_case,
                seed: SEED,
                ..SeedOptions::default()
            },
        )
        .await
        .expect("seed the PostgreSQL bench database");
        // The seeder's connection may take a moment to close.
        let rename = format!("ALTER DATABASE \"{part}\" RENAME TO \"{name}\"");
        let mut tries = 0;
        while let Err(e) = client.batch_execute(&rename).await {
            tries += 1;
            assert!(tries < 50, "rename the bench database: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "  seeded PostgreSQL {name} ({} rows) in {:.1} s",
            r.rows,
            t.elapsed().as_secs_f64()
        );
    });
    // Statistics for the planner, in the database itself.
    env.client_rt.block_on(async {
        let c = pg_connect(&url).await;
        let _ = c.batch_execute("ANALYZE").await;
    });
    url
}

fn connector(url: &str) -> PgConnector {
    let DbLocation::Postgres(u) = DbLocation::parse(url).expect("a PostgreSQL URL") else {
        panic!("{url} is not a PostgreSQL URL")
    };
    u.connector(None, Duration::from_secs(5), "case-export-bench")
        .expect("connector")
}

fn request(case_id: &str) -> CaseRequest {
    CaseRequest {
        case_id: case_id.to_owned(),
        scope: ScopeConfig::default(),
        export_id: ExportId::random().expect("export id"),
        created_at: "2025-01-01T00:00:00Z".into(),
        max_bytes: 4 << 30,
        busy_timeout: Duration::from_secs(5),
        tenant_column: None,
        allowed_tenants: None,
    }
}

/// The bare binary COPY of the case's rows, in one REPEATABLE READ
/// transaction, every byte read and dropped. Returns the bytes copied.
async fn bare_copy(client: &tokio_postgres::Client, case_id: &str) -> u64 {
    use tokio_stream::StreamExt;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .expect("begin");
    let mut bytes = 0u64;
    for q in case_queries(case_id) {
        let stream = client
            .copy_out(&format!("COPY ({q}) TO STDOUT (FORMAT binary)"))
            .await
            .expect("copy out");
        let mut stream = std::pin::pin!(stream);
        while let Some(chunk) = stream.next().await {
            bytes += chunk.expect("copy data").len() as u64;
        }
    }
    client.batch_execute("COMMIT").await.expect("commit");
    bytes
}

pub fn pg_section(r: &mut Report, env: &mut Env, opts: &Opts) {
    let s = r.section(
        "Snapshot build from PostgreSQL",
        "The snapshot of one demo case built from PostgreSQL (`PgSource`: scope \
         from the catalog, one REPEATABLE READ, READ ONLY transaction, rows \
         streamed into the in-memory SQLite snapshot), against a bare binary \
         `COPY (SELECT ...) TO STDOUT (FORMAT binary)` of the same rows (13 \
         statements in one transaction, bytes read and dropped), and against \
         the same case built from the SQLite database seeded with the same \
         options. PostgreSQL 15 on this machine, over loopback TCP.",
        &[
            "case",
            "what",
            "median s",
            "MB/s (snapshot bytes)",
            "ratio to bare COPY",
        ],
    );
    let sizes: Vec<u64> = if opts.quick { vec![16] } else { vec![64, 256] };
    for size in sizes {
        let db = env.case_db_for(size);
        warm(&db.path);
        let url = pg_case_db(env, &db);
        let case_id = db.case_ids[0].clone();
        let source = CaseSource::open(
            &DbLocation::parse(&url).expect("url"),
            |u| u.connector(None, Duration::from_secs(5), "case-export-bench"),
            2,
            PgSourceOptions {
                schema: "public".into(),
                statement_timeout: Duration::from_secs(600),
            },
        )
        .expect("PostgreSQL source");
        let copier = env.client_rt.block_on(pg_connect(&url));
        let reps = opts.reps(size);
        let mut snap_bytes = 0u64;
        let mut copy_bytes = 0u64;
        let rt = &env.client_rt;
        let m = interleaved(
            reps,
            &mut [
                ("pg_build", &mut || {
                    let t = Instant::now();
                    let snap: Snapshot = rt
                        .block_on(source.build(request(&case_id)))
                        .expect("build from PostgreSQL");
                    let secs = t.elapsed().as_secs_f64();
                    snap_bytes = snap.len();
                    secs
                }),
                ("bare_copy", &mut || {
                    let t = Instant::now();
                    copy_bytes = rt.block_on(bare_copy(&copier, &case_id));
                    t.elapsed().as_secs_f64()
                }),
                ("sqlite_build", &mut || {
                    let t = Instant::now();
                    let snap = build(&db.path, &case_id);
                    let secs = t.elapsed().as_secs_f64();
                    drop(snap);
                    secs
                }),
            ],
        );
        r.metric(&format!("pg_build_s_{size}"), m[0]);
        r.metric(&format!("pg_bare_copy_s_{size}"), m[1]);
        r.metric(&format!("pg_sqlite_build_s_{size}"), m[2]);
        r.metric(&format!("pg_build_over_copy_{size}"), m[0] / m[1]);
        let case = format!("{} MiB", mib(snap_bytes));
        for (what, secs) in [
            ("build from PostgreSQL".to_string(), m[0]),
            (
                format!("bare binary COPY ({} MiB copied)", mib(copy_bytes)),
                m[1],
            ),
            ("build from SQLite".to_string(), m[2]),
        ] {
            r.row(
                s,
                vec![
                    case.clone(),
                    what,
                    format!("{secs:.3}"),
                    f1(mbs(snap_bytes, secs)),
                    f2(secs / m[1]),
                ],
            );
        }
    }
    r.contention(s);
    pg_memory(r, env, opts);
}

/// Peak RSS of the real server exporting one case from PostgreSQL.
fn pg_memory(r: &mut Report, env: &mut Env, opts: &Opts) {
    let size = if opts.quick { 16 } else { 256 };
    let s = r.section(
        "Server memory exporting from PostgreSQL",
        "Peak RSS (VmHWM) of `case-export serve` with a PostgreSQL `case_db`, \
         for one export of the demo case, against the target of 1.1 x the \
         snapshot + 64 MiB.",
        &["case", "snapshot MiB", "VmHWM MiB", "target MiB", "met"],
    );
    let db = env.case_db_for(size);
    let url = pg_case_db(env, &db);
    // The child takes `--case-db` as it takes a path: the URL goes there.
    let child = ChildServer::spawn(env, std::path::Path::new(&url), "");
    let case_id = db.case_ids[0].clone();
    let phase = Arc::new(AtomicBool::new(false));
    let sampler = RssSampler::start(child.pid(), phase);
    let out = env.tempdir();
    let receipt = env.client_rt.block_on(async {
        let mut client = ExportClient::connect_with(&child.url(), test_client_options())
            .await
            .expect("connect");
        client
            .export_to_dir(&case_id, PURPOSE, out.path(), |_, _| {})
            .await
            .expect("export from PostgreSQL")
    });
    let _ = sampler.finish();
    let hwm = child.status_bytes("VmHWM");
    let snap = receipt.plaintext_size;
    let target = snap as f64 * 1.1 + (64 * MIB) as f64;
    r.metric(&format!("pg_server_hwm_{size}"), hwm as f64);
    r.row(
        s,
        vec![
            format!("{size} MiB"),
            mib(snap),
            mib(hwm),
            mib(target as u64),
            if (hwm as f64) <= target { "yes" } else { "no" }.into(),
        ],
    );
}

/// Concurrent committers per writer in the trail rate runs: each waits for
/// its event's commit, as an export's steps do.
const COMMITTERS: usize = 16;

/// Events per second committed to one PostgreSQL trail by `replicas`
/// writers (one per replica, as in `serve`), each with [`COMMITTERS`]
/// callers waiting on their commits.
fn trail_rate(env: &Env, url: &str, replicas: usize, events: usize, run: usize) -> f64 {
    use case_export::audit::{AuditWriter, Event, Kind, WriterConfig};
    let writers: Vec<AuditWriter> = (0..replicas)
        .map(|i| {
            AuditWriter::start_pg(
                connector(url),
                &format!("bench-r{run}-w{i}"),
                WriterConfig::default(),
            )
            .expect("a PostgreSQL trail writer")
        })
        .collect();
    let per_task = events / (replicas * COMMITTERS);
    let t = Instant::now();
    env.client_rt.block_on(async {
        let mut tasks = Vec::new();
        for (w, writer) in writers.iter().enumerate() {
            for c in 0..COMMITTERS {
                let h = writer.handle();
                tasks.push(tokio::spawn(async move {
                    for k in 0..per_task {
                        // A whole refused call in one event, so no sweep
                        // takes it for an open call.
                        let mut e = Event::new(Kind::Denied, format!("b{run}-{w}-{c}-{k}"));
                        e.code = Some("UNAUTHENTICATED".into());
                        h.commit(e).await.expect("committed");
                    }
                }));
            }
        }
        for t in tasks {
            t.await.expect("committer");
        }
    });
    let secs = t.elapsed().as_secs_f64();
    for w in writers {
        w.shutdown();
    }
    (per_task * replicas * COMMITTERS) as f64 / secs
}

/// Trail appends per second with one and three replicas, and exports per
/// minute across three replicas sharing one PostgreSQL trail.
pub fn replicas_section(r: &mut Report, env: &mut Env, opts: &Opts) {
    let s = r.section(
        "One custody trail in PostgreSQL for several replicas",
        "Appends: events committed per second to one PostgreSQL trail by 1 and \
         by 3 writers (one per replica, each with 16 callers waiting on their \
         commits, as export steps wait), interleaved rep by rep; every append \
         takes the append lock and checks the chain since the writer's last \
         head. Exports: `case-export serve` children sharing that trail, 6 \
         clients exporting a small demo case in a loop, spread over 1 and \
         over 3 replicas.",
        &["what", "1 replica", "3 replicas", "ratio"],
    );
    let admin = pg_admin_url();
    let name = format!("ce_bench_trail_{}", std::process::id());
    let url = with_dbname(&admin, &name);
    env.client_rt.block_on(async {
        pg_connect(&admin)
            .await
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create the trail database");
    });
    let events = if opts.quick { 960 } else { 4800 };
    // Every writer needs an instance id of its own.
    let run = std::cell::Cell::new(0);
    let next = || {
        run.set(run.get() + 1);
        run.get()
    };
    let m = interleaved(
        opts.reps(0),
        &mut [
            ("one", &mut || {
                1.0 / trail_rate(env, &url, 1, events, next())
            }),
            ("three", &mut || {
                1.0 / trail_rate(env, &url, 3, events, next())
            }),
        ],
    );
    let (one, three) = (1.0 / m[0], 1.0 / m[1]);
    r.metric("trail_appends_per_s_1", one);
    r.metric("trail_appends_per_s_3", three);
    r.row(
        s,
        vec![
            "trail appends per second".into(),
            format!("{one:.0}"),
            format!("{three:.0}"),
            f2(three / one),
        ],
    );
    let db = env.case_db(20, 200);
    let per_min = |replicas: usize| exports_per_minute(env, &db, &url, replicas, opts);
    let (e1, e3) = (per_min(1), per_min(3));
    r.metric("exports_per_min_1", e1);
    r.metric("exports_per_min_3", e3);
    r.row(
        s,
        vec![
            "exports per minute (small case)".into(),
            format!("{e1:.0}"),
            format!("{e3:.0}"),
            f2(e3 / e1),
        ],
    );
    r.contention(s);
    env.client_rt.block_on(async {
        let _ = pg_connect(&admin)
            .await
            .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await;
    });
}

/// Exports per minute by 6 looping clients spread over `replicas` servers
/// that share the trail at `trail`.
fn exports_per_minute(env: &Env, db: &CaseDb, trail: &str, replicas: usize, opts: &Opts) -> f64 {
    use crate::support::{ServerProcess, write_config};
    let dirs: Vec<tempfile::TempDir> = (0..replicas).map(|_| env.tempdir()).collect();
    let servers: Vec<ServerProcess> = dirs
        .iter()
        .map(|d| {
            let config = write_config(
                &d.path().join("config.toml"),
                "max_in_flight = 8\nmax_in_flight_per_principal = 8\n",
            );
            ServerProcess::start_custom(
                &config,
                &db.path,
                std::path::Path::new(trail),
                d.path(),
                &[],
                |cmd| {
                    cmd.env("RUST_LOG", "warn");
                },
            )
        })
        .collect();
    let urls: Vec<String> = servers.iter().map(ServerProcess::url).collect();
    let per_client = if opts.quick { 10 } else { 30 };
    let case_id = db.case_ids[0].clone();
    let t = Instant::now();
    env.client_rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..6 {
            let url = urls[c % urls.len()].clone();
            let case_id = case_id.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = ExportClient::connect_with(&url, test_client_options())
                    .await
                    .expect("connect");
                for _ in 0..per_client {
                    let mut sink = tokio::io::sink();
                    client
                        .export_case(&case_id, PURPOSE, &mut sink, |_, _| {})
                        .await
                        .expect("export");
                }
            }));
        }
        for t in tasks {
            t.await.expect("client");
        }
    });
    let secs = t.elapsed().as_secs_f64();
    for s in servers {
        let _ = s.terminate();
    }
    (6 * per_client) as f64 * 60.0 / secs
}
