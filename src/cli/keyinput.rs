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
