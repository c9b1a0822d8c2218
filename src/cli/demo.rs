//! `demo`: seeds a demo case database if there is none, prints commands to
//! try, and runs the server on loopback.

use super::serve::serve_config;
use super::{CliError, CliResult, LogFormat, init_logging};
use case_export::seed::{SeedOptions, seed_demo};
use case_export::server::Config;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder for the demo databases.
    #[arg(long, default_value = "demo-data")]
    pub dir: PathBuf,
    /// gRPC listen address (loopback).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
}

fn first_case(db: &std::path::Path) -> Result<String, CliError> {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| CliError::new(format!("cannot open {}: {e}", db.display())))?;
    conn.query_row(
        "SELECT id FROM cases ORDER BY case_number LIMIT 1",
        [],
        |r| r.get(0),
    )
    .map_err(|e| {
        CliError::new(format!(
            "{} has no cases ({e}): delete it and run demo again",
            db.display()
        ))
    })
}

pub fn run(a: DemoArgs, log: LogFormat) -> CliResult {
    init_logging(log);
    if !a.listen.ip().is_loopback() {
        return Err(CliError::new(
            "demo listens on loopback only: use serve for anything else",
        ));
    }
    std::fs::create_dir_all(&a.dir)
        .map_err(|e| CliError::new(format!("cannot create {}: {e}", a.dir.display())))?;
    let db = a.dir.join("cases.db");
    if !db.exists() {
        let r =
            seed_demo(&db, &SeedOptions::default()).map_err(|e| CliError::new(e.to_string()))?;
        println!(
            "seeded {} with {} demo cases ({} rows)",
            db.display(),
            r.case_ids.len(),
            r.rows
        );
    }
    let case = first_case(&db)?;
    let addr = a.listen;
    println!(
        "\ncase-export demo: case database {db}\n\
         \nTry it (in another terminal):\n\
         \n  grpcurl -plaintext {addr} list\
         \n  grpcurl -plaintext {addr} describe case_export.v1.ExportService\
         \n  grpcurl -plaintext -d '{{\"service\":\"case_export.v1.ExportService\"}}' {addr} grpc.health.v1.Health/Check\
         \n  grpcurl -plaintext -d '{{\"case_id\":\"{case}\",\"purpose\":\"DEMO-1 quickstart\"}}' {addr} case_export.v1.ExportService/ExportCase\
         \n\
         \n  cargo run --release -- export --server http://{addr} --case {case} --purpose 'DEMO-1 quickstart' --key-out demo.key\
         \n  cargo run --release -- view case_offline_{case}.enc --key-file demo.key\
         \n  cargo run --release -- open case_offline_{case}.enc --key-file demo.key --out case.db\
         \n\
         \nStop with Ctrl-C.\n",
        db = db.display(),
    );
    let config = Config {
        listen: a.listen,
        case_db: db,
        audit_db: a.dir.join("audit.db"),
        ..Config::default()
    };
    serve_config(config)
}
