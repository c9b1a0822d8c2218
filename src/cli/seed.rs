//! `seed-demo`: a database of synthetic cases for demos, tests and benches,
//! in a new SQLite file or in a PostgreSQL database.

use super::{CliError, CliResult, runtime};
use case_export::db::{PasswordSource, PgUrl, is_pg_url};
use case_export::seed::{SeedOptions, SeedReport, seed_demo, seed_postgres};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// The variable the server reads the case database's password from too.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// The database file to create (must not exist), or a
    /// postgres://USER@HOST/DBNAME URL whose demo tables are empty.
    #[arg(long)]
    pub db: PathBuf,
    /// File holding the PostgreSQL password (else CASE_EXPORT_CASE_DB_PASSWORD).
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// Number of cases.
    #[arg(long, default_value_t = 20)]
    pub cases: u32,
    /// Transactions per case; the other tables scale with it.
    #[arg(long, default_value_t = 200)]
    pub rows_per_case: u32,
    /// Seed of the generator: the same seed gives the same data.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

pub fn run(a: SeedArgs) -> CliResult {
    let opts = SeedOptions {
        cases: a.cases,
        rows_per_case: a.rows_per_case,
        seed: a.seed,
        ..SeedOptions::default()
    };
    let (shown, report) = match a.db.to_str().filter(|s| is_pg_url(s)) {
        Some(url) => (url.to_owned(), seed_pg(url, &a, &opts)?),
        None => {
            if a.password_file.is_some() {
                return Err(CliError::new(
                    "--password-file is for a postgres:// database; a SQLite file needs none",
                ));
            }
            let report = seed_demo(&a.db, &opts).map_err(|e| CliError::new(e.to_string()))?;
            (a.db.display().to_string(), report)
        }
    };
    let size = report.bytes as f64 / (1 << 20) as f64;
    println!(
        "seeded {shown}: {} cases, {} rows, {size:.1} MiB in {:.2} s ({:.0} rows/s)",
        report.case_ids.len(),
        report.rows,
        report.elapsed.as_secs_f64(),
        report.rows_per_sec()
    );
    if let Some(first) = report.case_ids.first() {
        println!("first case id: {first}");
    }
    Ok(())
}

fn seed_pg(url: &str, a: &SeedArgs, opts: &SeedOptions) -> Result<SeedReport, CliError> {
    let err = |e: &dyn std::fmt::Display| CliError::new(e.to_string());
    let url = PgUrl::parse(url).map_err(|e| err(&e))?;
    let password = PasswordSource {
        file: a.password_file.as_deref(),
        env: case_export::server::CASE_DB_PASSWORD_ENV,
    }
    .resolve()
    .map_err(|e| err(&e))?;
    let connector = url
        .connector(password, CONNECT_TIMEOUT, "case-export seed-demo")
        .map_err(|e| err(&e))?;
    runtime()?
        .block_on(seed_postgres(&connector, opts))
        .map_err(|e| err(&e))
}
