//! `demo`: seeds a demo case database if there is none, prints commands to
//! try, and runs the server on loopback.

use super::serve::serve_config;
use super::{CliError, CliResult, LogFormat, init_logging};
use case_export::seed::{SeedOptions, seed_demo};
use case_export::server::{Config, PrincipalConfig, Role};
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

// Long: the demo's set-up as the steps a person reads in its output.

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
    // A development principal with both roles; a new token every start.
    let token = super::token::new_token()?;
    let token_file = a.dir.join("demo.token");
    let _ = std::fs::remove_file(&token_file);
    super::write_private(&token_file, &super::secret_line(&token))
        .map_err(|e| CliError::new(format!("cannot write {}: {e}", token_file.display())))?;
    let addr = a.listen;
    let audit_db = a.dir.join("audit.db");
    // The key that signs receipts (and checkpoints), kept across starts so
    // receipts of earlier runs still verify.
    let receipt_key = a.dir.join("receipt.key");
    if !receipt_key.exists() {
        let seed = case_export::audit::CheckpointSigner::generate_hex()
            .map_err(|e| CliError::new(format!("cannot make the receipt key: {e}")))?;
        super::write_private(&receipt_key, &super::secret_line(&seed))
            .map_err(|e| CliError::new(format!("cannot write {}: {e}", receipt_key.display())))?;
    }
    let receipt_pk = case_export::audit::CheckpointSigner::from_file(&receipt_key)
        .map_err(|e| CliError::new(e.to_string()))?
        .public_hex();
    println!(
        "\ncase-export demo: case database {db}, audit trail {audit}\n\
         development principal \"demo\" (exporter, auditor), token in {tf}\n\
         \nTry it (in another terminal):\n\
         \n  grpcurl -plaintext {addr} list\
         \n  grpcurl -plaintext {addr} describe case_export.v1.ExportService\
         \n  grpcurl -plaintext -d '{{\"service\":\"case_export.v1.ExportService\"}}' {addr} grpc.health.v1.Health/Check\
         \n  grpcurl -plaintext -H 'authorization: Bearer {tok}' -H 'x-on-behalf-of: analyst.demo' \\\
         \n      -d '{{\"case_id\":\"{case}\",\"purpose\":\"DEMO-1 quickstart\"}}' {addr} case_export.v1.ExportService/ExportCase\
         \n\
         \n  cargo run --release -- export --server http://{addr} --token-file {tf} --on-behalf-of analyst.demo \\\
         \n      --case {case} --purpose 'DEMO-1 quickstart' --key-out demo.key\
         \n  cargo run --release -- view case_offline_{case}.enc --key-file demo.key\
         \n  cargo run --release -- open case_offline_{case}.enc --key-file demo.key --out case.db\
         \n  cargo run --release -- verify case_offline_{case}.enc --receipt case_offline_{case}.receipt.json \\\
         \n      --public-key {receipt_pk}\
         \n  cargo run --release -- audit list --db {audit}\
         \n  cargo run --release -- audit verify --db {audit}\
         \n\
         \nStop with Ctrl-C.\n",
        db = db.display(),
        audit = audit_db.display(),
        tf = token_file.display(),
        tok = token.as_str(),
    );
    let config = Config {
        listen: a.listen,
        case_db: db.into(),
        audit_db: audit_db.into(),
        principals: vec![PrincipalConfig {
            name: "demo".into(),
            token_sha256: Some(super::token::token_sha256(&token)),
            tls_identity: None,
            roles: vec![Role::Exporter, Role::Auditor],
            tenants: None,
            max_in_flight: None,
            require_recipients: None,
        }],
        audit: case_export::server::AuditConfig {
            checkpoint_key_file: Some(receipt_key),
            ..Default::default()
        },
        ..Config::default()
    };
    serve_config(config)
}
