//! `export`: streams a case from a server into an `.enc` file with the
//! internal client, then shows the key once or writes it to `--key-out`.

use super::{CliError, CliResult, runtime};
use case_export::client::ExportClient;
use case_export::seal::KEY_WARNING;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Server URL.
    #[arg(
        long,
        env = "CASE_EXPORT_SERVER",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,
    /// Case id to export.
    #[arg(long = "case")]
    pub case_id: String,
    /// Why: a ticket or warrant reference (recorded in the custody trail).
    #[arg(long)]
    pub purpose: String,
    /// Directory for the `.enc` file.
    #[arg(long, default_value = ".")]
    pub out: PathBuf,
    /// Write the key to this file (mode 0600) instead of printing it.
    #[arg(long)]
    pub key_out: Option<PathBuf>,
}

pub fn run(a: ExportArgs) -> CliResult {
    if let Some(k) = &a.key_out
        && k.exists()
    {
        return Err(CliError::new(format!(
            "{} already exists: choose another --key-out",
            k.display()
        )));
    }
    let rt = runtime()?;
    let receipt = rt.block_on(async {
        let mut client = ExportClient::connect(&a.server)
            .await
            .map_err(|e| CliError::new(e.to_string()))?;
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template("{spinner} {bar:40} {pos}/{len} chunks {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        });
        let r = client
            .export_to_dir(&a.case_id, &a.purpose, &a.out, |h, p| {
                if let Some(b) = &bar {
                    b.set_length(h.chunk_count);
                    b.set_position(p.chunks);
                }
            })
            .await;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        r.map_err(|e| CliError::new(e.to_string()))
    })?;
    let path = receipt.path.clone().unwrap_or_default();
    let key = receipt.key.expose_fernet_key();
    eprintln!(
        "exported case {} to {} ({} chunks, {} bytes, sha256 {})",
        receipt.case_id,
        path.display(),
        receipt.chunks,
        receipt.bytes,
        receipt.ciphertext_sha256
    );
    match &a.key_out {
        Some(kp) => {
            write_private(kp, format!("{}\n", &*key).as_bytes())
                .map_err(|e| CliError::new(format!("cannot write key to {}: {e}", kp.display())))?;
            eprintln!("key written to {} (mode 0600). {KEY_WARNING}", kp.display());
        }
        None => {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", &*key)?;
            eprintln!("{KEY_WARNING}");
        }
    }
    Ok(())
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
