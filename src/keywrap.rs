//! An export's Fernet key sealed to the analyst's public keys as a standard
//! age file (age-encryption.org/v1), and opened again with their identity.
//! The age file's plaintext is exactly the key's 44 base64 characters, so
//! `age -d -i analyst.key case.key.age > case.key` gives a key file that
//! `case-export open --key-file` and Python's `Fernet` take as they are.
//!
//! The server accepts X25519 (`age1...`) and SSH (`ssh-ed25519`, `ssh-rsa`)
//! recipients only: a plugin recipient would make the server run a plugin
//! program named by a caller.

use std::io::{Read, Write};
use zeroize::Zeroizing;

/// Longest recipient accepted, in bytes (an SSH RSA-4096 key is about 725).
pub const MAX_RECIPIENT_LEN: usize = 4096;

/// Why a recipient or a wrapped key was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyWrapError {
    /// A recipient does not parse as one this server seals to.
    #[error(
        "recipient {index} ({shown}) is not an age X25519 recipient (age1...) or an SSH \
         public key (ssh-ed25519 / ssh-rsa): {why}"
    )]
    BadRecipient {
        /// Its position in the list, from 1.
        index: usize,
        /// The recipient, shortened for the message.
        shown: String,
        /// What is wrong with it.
        why: String,
    },
    /// The age file could not be written.
    #[error("cannot seal the key to the recipients: {0}")]
    Seal(String),
    /// No identity given opens the wrapped key.
    #[error(
        "none of the identities given opens this key: it was sealed to other recipients \
         (see the export's receipt for which)"
    )]
    NoMatchingIdentity,
    /// The wrapped key is not an age file, or not one holding a key.
    #[error("the wrapped key is damaged or not an age file: {0}")]
    Damaged(String),
}

/// A recipient shortened for messages: its kind and its first characters.
pub fn shown(recipient: &str) -> String {
    let r = recipient.trim();
    let mut s: String = r.chars().take(24).collect();
    if r.chars().count() > 24 {
        s.push_str("...");
    }
    format!("{s:?}")
}

/// Parses one recipient the server may seal to.
pub fn parse_recipient(
    index: usize,
    recipient: &str,
) -> Result<Box<dyn age::Recipient + Send>, KeyWrapError> {
    let bad = |why: &str| KeyWrapError::BadRecipient {
        index,
        shown: shown(recipient),
        why: why.to_owned(),
    };
    if recipient.len() > MAX_RECIPIENT_LEN {
        return Err(bad(&format!("longer than {MAX_RECIPIENT_LEN} bytes")));
    }
    let r = recipient.trim();
    if r.starts_with("age1") {
        return r
            .parse::<age::x25519::Recipient>()
            .map(|k| Box::new(k) as Box<dyn age::Recipient + Send>)
            .map_err(|_| bad("not a valid age1 key (Bech32)"));
    }
    if r.starts_with("ssh-") {
        return match r.parse::<age::ssh::Recipient>() {
            Ok(k) => Ok(Box::new(k)),
            Err(age::ssh::ParseRecipientKeyError::Unsupported(kind)) => {
                Err(bad(&format!("SSH key type {kind} is not supported")))
            }
            Err(age::ssh::ParseRecipientKeyError::RsaModulusTooSmall) => {
                Err(bad("the RSA key is too small (at least 2048 bits)"))
            }
            Err(age::ssh::ParseRecipientKeyError::RsaModulusTooLarge) => {
                Err(bad("the RSA key is too large"))
            }
            Err(_) => Err(bad("not a valid SSH public key")),
        };
    }
    Err(bad("unknown kind"))
}

/// Seals `key` (the Fernet key's base64 text) to every recipient, as a
/// binary age file.
pub fn wrap_key(key: &str, recipients: &[String]) -> Result<Vec<u8>, KeyWrapError> {
    let parsed = recipients
        .iter()
        .enumerate()
        .map(|(i, r)| parse_recipient(i + 1, r))
        .collect::<Result<Vec<_>, _>>()?;
    let encryptor =
        age::Encryptor::with_recipients(parsed.iter().map(|r| r.as_ref() as &dyn age::Recipient))
            .map_err(|e| KeyWrapError::Seal(e.to_string()))?;
    let mut out = Vec::with_capacity(256 * recipients.len() + 128);
    let mut w = encryptor
        .wrap_output(&mut out)
        .map_err(|e| KeyWrapError::Seal(e.to_string()))?;
    w.write_all(key.as_bytes())
        .and_then(|()| w.finish().map(drop))
        .map_err(|e| KeyWrapError::Seal(e.to_string()))?;
    Ok(out)
}

/// Opens a wrapped key with any of `identities`; the key stays in
/// zeroizing memory.
pub fn unwrap_key(
    wrapped: &[u8],
    identities: &[Box<dyn age::Identity>],
) -> Result<Zeroizing<String>, KeyWrapError> {
    let decryptor =
        age::Decryptor::new(wrapped).map_err(|e| KeyWrapError::Damaged(e.to_string()))?;
    let mut reader = decryptor
        .decrypt(identities.iter().map(|i| i.as_ref()))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => KeyWrapError::NoMatchingIdentity,
            other => KeyWrapError::Damaged(other.to_string()),
        })?;
    let mut key = Zeroizing::new(Vec::with_capacity(64));
    // A Fernet key is 44 characters: anything much longer is not one.
    reader
        .by_ref()
        .take(1024)
        .read_to_end(&mut key)
        .map_err(|e| KeyWrapError::Damaged(e.to_string()))?;
    let text = std::str::from_utf8(&key)
        .map_err(|_| KeyWrapError::Damaged("its content is not a key".into()))?;
    Ok(Zeroizing::new(text.trim().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";

    #[test]
    fn wraps_for_each_recipient_and_opens_with_either() {
        let a = age::x25519::Identity::generate();
        let b = age::x25519::Identity::generate();
        let wrapped =
            wrap_key(KEY, &[a.to_public().to_string(), b.to_public().to_string()]).unwrap();
        assert!(wrapped.starts_with(b"age-encryption.org/v1\n"));
        for id in [a, b] {
            let ids: Vec<Box<dyn age::Identity>> = vec![Box::new(id)];
            assert_eq!(unwrap_key(&wrapped, &ids).unwrap().as_str(), KEY);
        }
        let other: Vec<Box<dyn age::Identity>> = vec![Box::new(age::x25519::Identity::generate())];
        assert!(matches!(
            unwrap_key(&wrapped, &other),
            Err(KeyWrapError::NoMatchingIdentity)
        ));
    }

    #[test]
    fn bad_recipients_are_named_by_position() {
        let good = age::x25519::Identity::generate().to_public().to_string();
        for (bad, why) in [
            ("age1notakey", "Bech32"),
            ("ssh-ed25519 AAAAnotbase64", "SSH public key"),
            ("ssh-dss AAAAB3NzaC1kc3MAAACBAP", "SSH"),
            ("pgp:0xDEADBEEF", "unknown kind"),
            ("age1yubikey1qwerty", "Bech32"),
        ] {
            let e = wrap_key(KEY, &[good.clone(), bad.to_owned()]).unwrap_err();
            let m = e.to_string();
            assert!(m.starts_with("recipient 2 "), "{m}");
            assert!(m.contains(why), "{bad}: {m}");
        }
        let long = format!("age1{}", "q".repeat(MAX_RECIPIENT_LEN));
        let m = wrap_key(KEY, &[long]).unwrap_err().to_string();
        assert!(m.contains("longer than"), "{m}");
        assert!(m.len() < 400, "the message quotes a bounded part: {m}");
    }

    #[test]
    fn damaged_wrapped_keys_are_refused() {
        let a = age::x25519::Identity::generate();
        let mut wrapped = wrap_key(KEY, &[a.to_public().to_string()]).unwrap();
        let n = wrapped.len();
        wrapped[n - 3] ^= 1;
        let ids: Vec<Box<dyn age::Identity>> = vec![Box::new(a)];
        assert!(matches!(
            unwrap_key(&wrapped, &ids),
            Err(KeyWrapError::Damaged(_))
        ));
        assert!(matches!(
            unwrap_key(b"not an age file", &ids),
            Err(KeyWrapError::Damaged(_))
        ));
    }
}
