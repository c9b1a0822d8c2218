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
    Ok(Zeroizing::new(format!("cxt_{}", hex::encode(b.as_ref()))))
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
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", token.as_str())?;
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
            let mut line = Zeroizing::new(String::new());
            std::io::stdin().read_line(&mut line)?;
            if line.trim().is_empty() {
                return Err(CliError::new("no token on stdin: pipe the token in"));
            }
            println!("{}", token_sha256(line.trim()));
            Ok(())
        }
        TokenCommand::CheckpointKey(k) => {
            let seed = case_export::audit::CheckpointSigner::generate_hex()
                .map_err(|e| CliError::new(format!("cannot read the OS random generator: {e}")))?;
            super::write_private(&k.out, format!("{}\n", seed.as_str()).as_bytes())
                .map_err(|e| CliError::new(format!("cannot write {}: {e}", k.out.display())))?;
            let signer =
                case_export::audit::CheckpointSigner::from_file(&k.out).map_err(CliError::new)?;
            println!("wrote {} (mode 0600)", k.out.display());
            println!("public key: {}", signer.public_hex());
            Ok(())
        }
    }
}
