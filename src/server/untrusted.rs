//! Values taken from callers, made fit for the custody trail. Only a value
//! that passed validation is stored as sent; anything else is replaced by
//! a short note of its length and SHA-256, so that no caller can grow the
//! trail with large values or make `audit list` show what it did not say.

use sha2::{Digest, Sha256};

/// Unicode general category Cf (format characters), Unicode 16: bidi
/// controls (U+202A..U+202E, U+2066..U+2069), zero-width characters
/// (U+200B..U+200F), U+FEFF, and the rest. They are invisible or reorder
/// the text around them, so a value holding one can pass for another.
const FORMAT_CHARS: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

/// Whether `c` is a Unicode format character (category Cf).
pub fn is_format_char(c: char) -> bool {
    let c = c as u32;
    FORMAT_CHARS
        .binary_search_by(|&(lo, hi)| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// The first control or format character of `s`: either can make a
/// stored value display as something else.
pub fn first_hidden_char(s: &str) -> Option<char> {
    s.chars().find(|&c| c.is_control() || is_format_char(c))
}

/// `c` for an error message: `U+202E (a format or bidi control
/// character)`, `U+0007 (a control character)`, or `U+00E9 ('é')`.
pub fn describe_char(c: char) -> String {
    let u = format!("U+{:04X}", c as u32);
    if is_format_char(c) {
        format!("{u} (a Unicode format or bidi control character)")
    } else if c.is_control() {
        format!("{u} (a control character)")
    } else {
        format!("{u} ({c:?})")
    }
}

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
    fn format_table_is_sorted_and_disjoint() {
        assert!(FORMAT_CHARS.iter().all(|(lo, hi)| lo <= hi));
        assert!(FORMAT_CHARS.windows(2).all(|w| w[0].1 < w[1].0));
    }

    #[test]
    fn format_characters_are_found() {
        for c in [
            '\u{AD}',
            '\u{200B}',
            '\u{200E}',
            '\u{202E}',
            '\u{2066}',
            '\u{2069}',
            '\u{FEFF}',
            '\u{E0001}',
            '\u{E007F}',
            '\u{1343F}',
        ] {
            assert!(is_format_char(c), "U+{:04X}", c as u32);
        }
        for c in [
            'a',
            ' ',
            'é',
            '\u{2065}',
            '\u{2010}',
            '\u{FFFD}',
            '\u{E0080}',
            '\n',
        ] {
            assert!(!is_format_char(c), "U+{:04X}", c as u32);
        }
        assert_eq!(first_hidden_char("ab\u{202E}c\n"), Some('\u{202E}'));
        assert_eq!(first_hidden_char("a.b c"), None);
        assert!(describe_char('\u{202E}').starts_with("U+202E (a Unicode format"));
        assert!(describe_char('\u{7}').starts_with("U+0007 (a control"));
    }

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
