//! `seed-demo`: a database of synthetic cases for demos, tests and benches.

use super::{CliError, CliResult};
use case_export::seed::{SeedOptions, seed_demo};
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// The database file to create (must not exist).
    #[arg(long)]
    pub db: PathBuf,
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
    let report = seed_demo(&a.db, &opts).map_err(|e| CliError::new(e.to_string()))?;
    println!(
        "seeded {}: {} cases, {} rows, {:.1} MiB in {:.2} s ({:.0} rows/s)",
        a.db.display(),
        report.case_ids.len(),
        report.rows,
        report.bytes as f64 / (1 << 20) as f64,
        report.elapsed.as_secs_f64(),
        report.rows_per_sec()
    );
    if let Some(first) = report.case_ids.first() {
        println!("first case id: {first}");
    }
    Ok(())
}
