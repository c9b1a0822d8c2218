//! `token`: service tokens and checkpoint keys. A token is printed once; the
//! server only ever stores its SHA-256.

use super::{CliError, CliResult};
use clap::{Args, Subcommand};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::PathBuf;
use zeroize::Zeroizing;

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub command: TokenCommand,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make a service token and print it once with its config lines.
    New(NewArgs),
    /// Print the SHA-256 of a token read from stdin (for config lines).
    Hash,
    /// Make an Ed25519 key file for signing audit checkpoints.
    CheckpointKey(KeyArgs),
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// Principal name, as recorded in the audit trail.
    #[arg(long)]
    pub name: String,
    /// Comma-separated roles: exporter, auditor.
    #[arg(long, value_delimiter = ',', required = true)]
    pub roles: Vec<String>,
    /// Comma-separated tenants this principal may see (default: all).
    #[arg(long, value_delimiter = ',')]
    pub tenants: Vec<String>,
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Where to write the key (mode 0600; must not exist).
    #[arg(long)]
    pub out: PathBuf,
}

/// A fresh token: "cxt_" and 64 hex digits from the OS CSPRNG.
pub fn new_token() -> Result<Zeroizing<String>, CliError> {
    let mut b = Zeroizing::new([0u8; 32]);
    getrandom::getrandom(b.as_mut())
        .map_err(|e| CliError::new(format!("cannot read the OS random generator: {e}")))?;
    // Built in place: `format!` and `hex::encode` would leave unwiped copies.
    let mut t = Zeroizing::new(String::with_capacity(4 + 64));
    t.push_str("cxt_");
    for byte in b.iter() {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        t.push(char::from(HEX[usize::from(byte >> 4)]));
        t.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    Ok(t)
}

/// Hex SHA-256 of a token, as `token_sha256` in the config.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The `[[principals]]` block for a config file.
pub fn principal_toml(name: &str, digest: &str, roles: &[String], tenants: &[String]) -> String {
    let list = |v: &[String]| {
        v.iter()
            .map(|r| format!("{r:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = format!(
        "[[principals]]\nname = {name:?}\ntoken_sha256 = \"{digest}\"\nroles = [{}]\n",
        list(roles)
    );
    if !tenants.is_empty() {
        s.push_str(&format!("tenants = [{}]\n", list(tenants)));
    }
    s
}

pub fn run(a: TokenArgs) -> CliResult {
    match a.command {
        TokenCommand::New(n) => {
            for r in &n.roles {
                if r != "exporter" && r != "auditor" {
                    return Err(CliError::new(format!(
                        "unknown role {r:?}: use exporter, auditor or both (comma-separated)"
                    )));
                }
            }
            let token = new_token()?;
            super::print_secret_line(&token)?;
            let mut out = std::io::stdout().lock();
            writeln!(out)?;
            writeln!(
                out,
                "# Add to the server config; the token above is shown only now."
            )?;
            write!(
                out,
                "{}",
                principal_toml(&n.name, &token_sha256(&token), &n.roles, &n.tenants)
            )?;
            Ok(())
        }
        TokenCommand::Hash => {
            // Read past stdin's buffer, which is never wiped.
            use std::os::fd::AsFd;
            let stdin = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
            let line = super::read_secret(stdin, true)?.ok_or_else(|| {
                CliError::new(format!(
                    "stdin is not a token: expected one line of text of at most {} bytes",
                    super::SECRET_FILE_MAX
                ))
            })?;
            if line.is_empty() {
                return Err(CliError::new("no token on stdin: pipe the token in"));
            }
            println!("{}", token_sha256(&line));
            Ok(())
        }
        TokenCommand::CheckpointKey(k) => {
            let seed = case_export::audit::CheckpointSigner::generate_hex()
                .map_err(|e| CliError::new(format!("cannot read the OS random generator: {e}")))?;
            super::write_private(&k.out, &super::secret_line(&seed))
                .map_err(|e| CliError::new(format!("cannot write {}: {e}", k.out.display())))?;
            let signer = case_export::audit::CheckpointSigner::from_file(&k.out)
                .map_err(|e| CliError::new(e.to_string()))?;
            println!("wrote {} (mode 0600)", k.out.display());
            println!("public key: {}", signer.public_hex());
            Ok(())
        }
    }
}
