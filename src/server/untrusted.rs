//! Values taken from callers, made fit for the custody trail. Only a value
//! that passed validation is stored as sent; anything else is replaced by
//! a short note of its length and SHA-256, so that no caller can grow the
//! trail with large values or make `audit list` show what it did not say.

use sha2::{Digest, Sha256};

use crate::contract::first_hidden_char;

/// What is stored instead of a caller's value that failed validation.
pub fn invalid_note(bytes: &[u8]) -> String {
    format!(
        "invalid ({} bytes) sha256:{}",
        bytes.len(),
        hex::encode(Sha256::digest(bytes))
    )
}

/// Bytes of a method path stored as sent; a longer one is cut.
pub const MAX_METHOD_BYTES: usize = 128;

/// A method path as stored: as sent when it is at most
/// `MAX_METHOD_BYTES` and has no control or format character; cut there
/// and followed by its length and SHA-256 when longer; a note otherwise.
pub fn bounded_method(path: &str) -> String {
    if first_hidden_char(path).is_some() {
        return invalid_note(path.as_bytes());
    }
    if path.len() <= MAX_METHOD_BYTES {
        return path.to_string();
    }
    let mut cut = MAX_METHOD_BYTES;
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    format!(
        "{}... ({} bytes, sha256:{})",
        &path[..cut],
        path.len(),
        hex::encode(Sha256::digest(path.as_bytes()))
    )
}

/// Bytes of a client certificate's identity stored as presented.
pub const MAX_IDENTITY_BYTES: usize = 256;

/// A certificate identity (typed: `spiffe://...` or `cn:...`) as stored:
/// as presented when it is at most `MAX_IDENTITY_BYTES` and has no control
/// or format character, a note otherwise.
pub fn bounded_identity(identity: &str) -> String {
    if identity.len() > MAX_IDENTITY_BYTES || first_hidden_char(identity).is_some() {
        invalid_note(identity.as_bytes())
    } else {
        identity.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_short_and_name_the_value() {
        let big = vec![b'x'; 60_000];
        let n = invalid_note(&big);
        assert!(n.starts_with("invalid (60000 bytes) sha256:"), "{n}");
        assert_eq!(n.len(), "invalid (60000 bytes) sha256:".len() + 64);
        assert_ne!(n, invalid_note(&big[1..]));
    }

    #[test]
    fn method_paths_are_bounded() {
        let known = "/case_export.v1.ExportService/ExportCase";
        assert_eq!(bounded_method(known), known);
        let long = format!("/x.Y/{}", "é".repeat(5000));
        let b = bounded_method(&long);
        assert!(b.len() <= MAX_METHOD_BYTES + 100, "{} bytes", b.len());
        assert!(b.starts_with("/x.Y/é"), "{b}");
        assert!(
            b.contains(&format!("({} bytes, sha256:", long.len())),
            "{b}"
        );
        assert!(bounded_method("/a\u{202E}b").starts_with("invalid (6 bytes)"));
    }

    #[test]
    fn identities_are_bounded() {
        assert_eq!(bounded_identity("cn:svc"), "cn:svc");
        let long = format!("cn:{}", "a".repeat(300));
        assert!(bounded_identity(&long).starts_with("invalid (303 bytes) sha256:"));
        assert!(bounded_identity("cn:a\u{200B}").starts_with("invalid ("));
    }
}
