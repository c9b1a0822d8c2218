//! `export`: streams a case from a server into an `.enc` file with the
//! internal client, then shows the key once or writes it to `--key-out`.

use super::{CliError, CliResult, harden_process, read_secret_file, runtime};
use case_export::client::{ClientOptions, ExportClient};
use case_export::seal::KEY_WARNING;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use zeroize::Zeroizing;

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
    /// File holding this service's bearer token (else CASE_EXPORT_TOKEN).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// The analyst the export is for (recorded in the custody trail).
    #[arg(long, env = "CASE_EXPORT_ON_BEHALF_OF")]
    pub on_behalf_of: String,
    /// PEM CA certificate to trust for an https:// server.
    #[arg(long)]
    pub ca_cert: Option<PathBuf>,
    /// PEM client certificate, for mutual TLS (with --client-key).
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// PEM client key, for mutual TLS.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
    /// Server name to check the certificate against, if not the URL's host.
    #[arg(long)]
    pub tls_domain: Option<String>,
    /// Allow an http:// server that is not on loopback: the token and the
    /// key then cross the network unencrypted (use behind a service mesh).
    #[arg(long)]
    pub allow_plaintext: bool,
    /// Seal the key to this public key (age `age1...` or SSH `ssh-ed25519
    /// ...`); repeatable. The key is then written only wrapped, as
    /// `case_offline_<case id>.key.age` beside the `.enc` file.
    #[arg(long = "recipient", conflicts_with = "key_out")]
    pub recipients: Vec<String>,
    /// A file of recipients, one per line, `#` comments (age's format).
    #[arg(long, conflicts_with = "key_out")]
    pub recipients_file: Vec<PathBuf>,
}

/// Largest recipients file read.
const RECIPIENTS_FILE_MAX: u64 = 1 << 20;

/// The recipients of `--recipient` and `--recipients-file`, checked here
/// first so a typo costs no server work.
fn recipients(a: &ExportArgs) -> Result<Vec<String>, CliError> {
    use std::io::Read;
    let mut all = a.recipients.clone();
    for p in &a.recipients_file {
        let f = std::fs::File::open(p)
            .map_err(|e| CliError::new(format!("cannot read {}: {e}", p.display())))?;
        let mut text = String::new();
        f.take(RECIPIENTS_FILE_MAX)
            .read_to_string(&mut text)
            .map_err(|e| CliError::new(format!("cannot read {}: {e}", p.display())))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if case_export::keywrap::parse_recipient(all.len() + 1, line).is_err() {
                return Err(CliError::new(format!(
                    "{} line {}: not an age or SSH public key",
                    p.display(),
                    n + 1
                )));
            }
            all.push(line.to_owned());
        }
    }
    for (i, r) in all.iter().enumerate() {
        case_export::keywrap::parse_recipient(i + 1, r)
            .map_err(|e| CliError::new(e.to_string()))?;
    }
    Ok(all)
}

/// Environment variable holding the service token.
pub const TOKEN_ENV: &str = "CASE_EXPORT_TOKEN";

fn read_file(p: &std::path::Path, what: &str) -> Result<Vec<u8>, CliError> {
    std::fs::read(p).map_err(|e| CliError::new(format!("cannot read {what} {}: {e}", p.display())))
}

/// Client options from the flags; the token never comes from an argument.
fn options(a: &ExportArgs) -> Result<ClientOptions, CliError> {
    let token = match &a.token_file {
        Some(p) => Some(read_secret_file(p, "token file")?),
        None => std::env::var(TOKEN_ENV).ok().map(Zeroizing::new),
    };
    let identity = match (&a.client_cert, &a.client_key) {
        (Some(c), Some(k)) => Some((
            read_file(c, "client certificate")?,
            read_file(k, "client key")?,
        )),
        _ => None,
    };
    Ok(ClientOptions {
        token,
        on_behalf_of: Some(a.on_behalf_of.clone()),
        ca_pem: a
            .ca_cert
            .as_deref()
            .map(|p| read_file(p, "CA certificate"))
            .transpose()?,
        identity_pem: identity,
        domain: a.tls_domain.clone(),
        allow_plaintext: a.allow_plaintext,
        recipients: recipients(a)?,
    })
}

// Long: the command's flow from flags to files, in order.

pub fn run(a: ExportArgs) -> CliResult {
    harden_process();
    if let Some(k) = &a.key_out
        && k.exists()
    {
        return Err(CliError::new(format!(
            "{} already exists: choose another --key-out",
            k.display()
        )));
    }
    if !a.out.is_dir() {
        return Err(CliError::new(format!(
            "output directory {} does not exist: create it or choose another --out",
            a.out.display()
        )));
    }
    let rt = runtime()?;
    let receipt = rt.block_on(async {
        let mut client = ExportClient::connect_with(&a.server, options(&a)?)
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
    eprintln!(
        "exported case {} to {} ({} chunks, {} bytes, sha256 {})",
        receipt.case_id,
        path.display(),
        receipt.chunks,
        receipt.bytes,
        receipt.ciphertext_sha256
    );
    if let Some(p) = &receipt.receipt_path {
        eprintln!("signed receipt written to {}", p.display());
    }
    if let Some(w) = &receipt.wrapped_key {
        eprintln!(
            "key sealed to {} recipient(s), written to {}: open with `case-export open --identity FILE`",
            w.sealed_to.len(),
            w.path
                .as_deref()
                .unwrap_or(std::path::Path::new("-"))
                .display()
        );
        return Ok(());
    }
    let Some(key) = receipt.key.as_ref().map(|k| k.expose_fernet_key()) else {
        return Err(CliError::new("the server sent no key"));
    };
    match &a.key_out {
        Some(kp) => {
            super::write_private(kp, &super::secret_line(&key))
                .map_err(|e| CliError::new(format!("cannot write key to {}: {e}", kp.display())))?;
            eprintln!("key written to {} (mode 0600). {KEY_WARNING}", kp.display());
        }
        None => {
            super::print_secret_line(&key)?;
            eprintln!("{KEY_WARNING}");
        }
    }
    Ok(())
}
