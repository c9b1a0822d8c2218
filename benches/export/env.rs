//! Where the harness keeps its data (seeded case databases cached under
//! <target>/bench-data), its client runtime, and the snapshots it measures.

use crate::support::{BIN, cases_of};
use crate::{MIB, SEED};
use case_export::seal::ExportId;
use case_export::seed::{SCHEMA_SQL, SeedOptions, seed_demo};
use case_export::snapshot::{ScopeConfig, Snapshot, SnapshotRequest, build_snapshot};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub struct Env {
    pub repo: PathBuf,
    pub data: PathBuf,
    pub tmp: PathBuf,
    pub client_rt: tokio::runtime::Runtime,
    pub bytes_per_unit: Option<f64>,
}

impl Env {
    pub fn new() -> Self {
        // <target>/<profile>/case-export
        let target = Path::new(BIN)
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
            client_rt,
            bytes_per_unit: None,
        }
    }

    pub fn tempdir(&self) -> TempDir {
        tempfile::tempdir_in(&self.tmp).expect("temp dir in bench-data/tmp")
    }

    /// Snapshot bytes per unit of `rows_per_case`, from a small seed.
    pub fn bytes_per_unit(&mut self) -> f64 {
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
    pub fn case_db_for(&mut self, mib: u64) -> CaseDb {
        let m = self.rows_per_case_for(mib);
        self.case_db(1, m)
    }

    /// The `rows_per_case` whose case snapshot is about `mib` MiB.
    pub fn rows_per_case_for(&mut self, mib: u64) -> u32 {
        let b = self.bytes_per_unit();
        ((mib * MIB) as f64 / b / 1000.0).round().max(1.0) as u32 * 1000
    }

    /// A seeded database, cached under its parameters.
    pub fn case_db(&self, cases: u32, rows_per_case: u32) -> CaseDb {
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
        let case_ids = cases_of(&path).into_iter().map(|(id, _)| id).collect();
        CaseDb {
            path,
            case_ids,
            rows_per_case,
        }
    }
}

/// A seeded case database and its cases, by case number.
pub struct CaseDb {
    pub path: PathBuf,
    pub case_ids: Vec<String>,
    pub rows_per_case: u32,
}

/// Reads a file once so later runs find it in the page cache.
pub fn warm(path: &Path) {
    let mut f = std::fs::File::open(path).expect("open for warming");
    let mut buf = vec![0u8; 4 << 20];
    while f.read(&mut buf).expect("read for warming") > 0 {}
}

pub fn build(db: &Path, case_id: &str) -> Snapshot {
    let scope = ScopeConfig::default();
    build_snapshot(
        db,
        &SnapshotRequest {
            case_id,
            scope: &scope,
            export_id: ExportId::random().expect("random export id"),
            created_at: "2025-01-01T00:00:00Z",
            max_bytes: 4 << 30,
            busy_timeout: Duration::from_secs(5),
            tenant_column: None,
            allowed_tenants: None,
        },
    )
    .expect("build snapshot")
}

/// The serialized snapshot of the case, and its file under bench-data for
/// the external tools.
pub struct SnapData {
    pub bytes: Vec<u8>,
    pub rows: u64,
    pub file: PathBuf,
    pub case_id: String,
}

pub fn snapshot_data(env: &Env, db: &CaseDb) -> SnapData {
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
