//! The per-export key: 32 bytes from the OS CSPRNG in a zeroizing buffer,
//! with no `Display` and a redacting `Debug`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use std::fmt;
use zeroize::Zeroizing;

/// A Fernet key made for one export. Readable only through
/// [`SecretKey::expose_fernet_key`]; zeroized on drop.
pub struct SecretKey {
    bytes: Zeroizing<[u8; 32]>,
}

/// Why a key could not be parsed; deliberately says nothing about the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the key is not a Fernet key: expected 44 characters of URL-safe base64 \
     (check that the whole key was copied)"
)]
pub struct BadKey;

impl SecretKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(bytes.as_mut())?;
        Ok(Self { bytes })
    }

    /// Parses a standard Fernet key (URL-safe base64 of 32 bytes). Surrounding
    /// whitespace, as left by files and terminals, is ignored.
    pub fn from_fernet_key(text: &str) -> Result<Self, BadKey> {
        let text = text.trim();
        let mut buf = Zeroizing::new([0u8; 48]);
        // Only the standard, padded form: what every Fernet library emits.
        let n = URL_SAFE
            .decode_slice(text, buf.as_mut())
            .map_err(|_| BadKey)?;
        if n != 32 {
            return Err(BadKey);
        }
        let mut bytes = Zeroizing::new([0u8; 32]);
        bytes.copy_from_slice(&buf[..32]);
        Ok(Self { bytes })
    }

    /// The key in its standard Fernet text form (44 characters).
    pub fn expose_fernet_key(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(44));
        URL_SAFE.encode_string(&self.bytes[..], &mut s);
        s
    }

    /// The raw key bytes, for the bench harness and tests of the format.
    pub fn expose_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    /// Constant-time comparison.
    pub fn ct_eq(&self, other: &SecretKey) -> bool {
        use subtle::ConstantTimeEq;
        self.bytes.ct_eq(other.bytes.as_ref()).into()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_text_round_trips_and_debug_is_redacted() {
        let k = SecretKey::generate().unwrap();
        let text = k.expose_fernet_key();
        assert_eq!(text.len(), 44);
        let back = SecretKey::from_fernet_key(&format!("  {}\n", &*text)).unwrap();
        assert!(k.ct_eq(&back));
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(text.as_str()));
        assert!(!dbg.contains(&hex::encode(k.expose_bytes())));
        assert!(dbg.contains("REDACTED"));
    }

    #[test]
    fn bad_keys_are_refused() {
        for bad in ["", "short", "!!!!", &"A".repeat(43), &"A".repeat(88)] {
            assert_eq!(SecretKey::from_fernet_key(bad).unwrap_err(), BadKey);
        }
    }

    #[test]
    fn fresh_keys_differ() {
        let a = SecretKey::generate().unwrap();
        let b = SecretKey::generate().unwrap();
        assert!(!a.ct_eq(&b));
    }
}
