//! `verify`: checks an `.enc` file against its signed receipt without the
//! key and without the server (docs/RECEIPT.md); with `--audit-db`, also
//! that the custody trail holds the receipt's `sealed` event.

use super::{CliError, read_secret_file};
use case_export::receipt::SignedReceipt;
use clap::Args;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest receipt file read (a receipt is a few KiB).
const RECEIPT_MAX: u64 = 1 << 20;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The `.enc` file.
    pub file: PathBuf,
    /// The receipt (`case_offline_<case id>.receipt.json`).
    #[arg(long)]
    pub receipt: PathBuf,
    /// The server's receipt public key: 64 hex digits.
    #[arg(long, required_unless_present = "public_key_file")]
    pub public_key: Option<String>,
    /// A file holding the public key.
    #[arg(long, conflicts_with = "public_key")]
    pub public_key_file: Option<PathBuf>,
    /// Also check the custody trail (SQLite file or PostgreSQL URL): it
    /// must hold the receipt's `sealed` event with that hash, and verify
    /// up to it.
    #[arg(long)]
    pub audit_db: Option<String>,
    /// File holding the trail's PostgreSQL password; else the variable
    /// CASE_EXPORT_AUDIT_DB_PASSWORD.
    #[arg(long, requires = "audit_db")]
    pub password_file: Option<PathBuf>,
}

pub fn run(a: VerifyArgs) -> Result<u8, CliError> {
    let receipt = read_receipt(&a.receipt)?;
    let key = match (&a.public_key, &a.public_key_file) {
        (Some(k), _) => k.clone(),
        (None, Some(p)) => read_secret_file(p, "public key file")?.trim().to_owned(),
        (None, None) => unreachable!("clap requires one"),
    };
    receipt
        .verify(&key)
        .map_err(|e| CliError::new(format!("{}: {e}", a.receipt.display())))?;
    check_file(&a.file, &receipt)?;
    let r = &receipt.receipt;
    if let Some(db) = &a.audit_db {
        check_trail(db, a.password_file.clone(), &receipt)?;
    }
    println!(
        "ok: {} is the export the receipt describes",
        a.file.display()
    );
    println!("  case        {}", r.case_id);
    println!("  exported    {} (export {})", r.created_at, r.export_id);
    println!(
        "  by          {} on behalf of {}",
        r.principal, r.on_behalf_of
    );
    println!("  purpose     {}", r.purpose);
    if let Some(t) = &r.tenant {
        println!("  tenant      {t}");
    }
    println!(
        "  file        {} bytes, {} chunks, sha256 {}",
        r.ciphertext_size, r.chunk_count, r.ciphertext_sha256
    );
    if r.recipients.is_empty() {
        println!("  key         sent raw to the caller");
    } else {
        println!("  key sealed  to {}", r.recipients.join(", "));
    }
    println!(
        "  custody     log {} seq {} ({}){}",
        r.log_id,
        r.sealed_seq,
        r.server_instance,
        if a.audit_db.is_some() {
            ", found in the trail"
        } else {
            ""
        }
    );
    Ok(0)
}

fn read_receipt(path: &Path) -> Result<SignedReceipt, CliError> {
    let f = std::fs::File::open(path)
        .map_err(|e| CliError::new(format!("cannot open {}: {e}", path.display())))?;
    let mut text = Vec::new();
    f.take(RECEIPT_MAX)
        .read_to_end(&mut text)
        .map_err(|e| CliError::new(format!("cannot read {}: {e}", path.display())))?;
    SignedReceipt::from_json(&text).map_err(|e| CliError::new(format!("{}: {e}", path.display())))
}

/// Size, SHA-256 and line count of the file against the receipt.
fn check_file(path: &Path, receipt: &SignedReceipt) -> Result<(), CliError> {
    let r = &receipt.receipt;
    let mut f = std::fs::File::open(path)
        .map_err(|e| CliError::new(format!("cannot open {}: {e}", path.display())))?;
    let (mut size, mut lines) = (0u64, 0u64);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| CliError::new(format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    let p = path.display();
    if size != r.ciphertext_size {
        return Err(CliError::new(format!(
            "{p}: {size} bytes, but the receipt says {}: not the exported file (truncated or altered)",
            r.ciphertext_size
        )));
    }
    if lines != r.chunk_count {
        return Err(CliError::new(format!(
            "{p}: {lines} lines, but the receipt says {} chunks: not the exported file",
            r.chunk_count
        )));
    }
    let digest = hex::encode(h.finalize());
    if digest != r.ciphertext_sha256 {
        return Err(CliError::new(format!(
            "{p}: SHA-256 {digest} differs from the receipt's {}: not the exported file \
             (altered, or from another export)",
            r.ciphertext_sha256
        )));
    }
    Ok(())
}

/// The trail holds the receipt's event with its hash, and verifies to it.
fn check_trail(
    db: &str,
    password_file: Option<PathBuf>,
    receipt: &SignedReceipt,
) -> Result<(), CliError> {
    let r = &receipt.receipt;
    let (conn, _) = super::audit::TrailArgs {
        db: db.to_owned(),
        password_file,
    }
    .open()?;
    let found = case_export::audit::find_event_hash(&conn, &r.log_id, r.sealed_seq)
        .map_err(|e| CliError::new(format!("audit trail {db}: {e}")))?;
    match found {
        Some(hash) if hash == r.sealed_hash => Ok(()),
        Some(hash) => Err(CliError::new(format!(
            "audit trail {db}: event {} has hash {hash}, the receipt says {}: the receipt does \
             not match this trail",
            r.sealed_seq, r.sealed_hash
        ))),
        None => Err(CliError::new(format!(
            "audit trail {db}: no event {} in log {}: the receipt is from another trail",
            r.sealed_seq, r.log_id
        ))),
    }
}
