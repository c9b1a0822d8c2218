//! Reads an export key from a file, the environment or a no-echo prompt;
//! never from a positional argument, so it stays out of shell history.

use super::{CliError, read_secret_file};
use case_export::seal::SecretKey;
use std::io::IsTerminal;
use std::path::Path;
use zeroize::Zeroizing;

/// Environment variable holding a key for `open` and `view`.
pub const KEY_ENV: &str = "CASE_EXPORT_KEY";

pub fn read_key(key_file: Option<&Path>) -> Result<SecretKey, CliError> {
    let text: Zeroizing<String> = if let Some(p) = key_file {
        read_secret_file(p, "key file")?
    } else if let Ok(v) = std::env::var(KEY_ENV) {
        Zeroizing::new(v)
    } else if std::io::stdin().is_terminal() {
        Zeroizing::new(
            rpassword::prompt_password("Export key: ")
                .map_err(|e| CliError::new(format!("cannot read the key: {e}")))?,
        )
    } else {
        return Err(CliError::new(format!(
            "no key given: pass --key-file PATH or set {KEY_ENV}"
        )));
    };
    SecretKey::from_fernet_key(&text).map_err(|e| CliError::new(e.to_string()))
}

/// Opens the export's wrapped key (`case_offline_<id>.key.age` beside the
/// `.enc` file, unless `wrapped` names another) with age identity files:
/// plain, passphrase-protected (asked for on the terminal) or plugin ones.
/// The key is only ever in memory.
pub fn unwrap_key(
    enc_file: &Path,
    wrapped: Option<&Path>,
    identities: &[std::path::PathBuf],
) -> Result<SecretKey, CliError> {
    let wrapped_path = match wrapped {
        Some(p) => p.to_path_buf(),
        None => wrapped_key_path(enc_file),
    };
    let bytes = std::fs::read(&wrapped_path).map_err(|e| {
        CliError::new(format!(
            "cannot read the wrapped key {}: {e} (pass --wrapped-key PATH)",
            wrapped_path.display()
        ))
    })?;
    let names = identities
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let ids =
        age::cli_common::read_identities(names, None, &mut age::cli_common::StdinGuard::new(false))
            .map_err(|e| CliError::new(format!("cannot use the identity: {e}")))?;
    let text = case_export::keywrap::unwrap_key(&bytes, &ids)
        .map_err(|e| CliError::new(format!("{}: {e}", wrapped_path.display())))?;
    SecretKey::from_fernet_key(&text).map_err(|e| CliError::new(e.to_string()))
}

/// `case_offline_X.key.age` for `case_offline_X.enc`.
pub fn wrapped_key_path(enc_file: &Path) -> std::path::PathBuf {
    let stem = enc_file
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".enc").to_owned())
        .unwrap_or_default();
    enc_file.with_file_name(format!("{stem}.key.age"))
}
