//! What the client and the server agree on beyond the protobuf contract:
//! the metadata naming the analyst and its one validation rule, the rules
//! for case ids and purposes, the file name of a case's export, and which
//! characters can make a value display as something it is not.

/// Metadata naming the analyst an export is made for.
pub const ON_BEHALF_OF: &str = "x-on-behalf-of";

/// A request value that breaks its rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct FieldError {
    /// Short and fixed, for the custody trail (e.g. `missing on-behalf-of`).
    pub reason: &'static str,
    /// Names the field, the fault and what to send instead.
    pub message: String,
}

fn field_error(reason: &'static str, message: String) -> FieldError {
    FieldError { reason, message }
}

/// The file name a case's export gets. Only for case ids that passed
/// [`validate_case_id`] (a safe alphabet).
pub fn file_name_for(case_id: &str) -> String {
    format!("case_offline_{case_id}.enc")
}

/// Checks a case id: 1 to 128 of `[A-Za-z0-9._-]`, not starting with '.'.
pub fn validate_case_id(id: &str) -> Result<(), FieldError> {
    let bad = |why: &str| Err(field_error("invalid case_id", format!("case_id {why}")));
    if id.is_empty() {
        return bad("is required");
    }
    if id.len() > 128 {
        return bad("is longer than 128 characters");
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        let shown = if c.is_control() {
            format!("U+{:04X}", c as u32)
        } else {
            format!("{c:?}")
        };
        return bad(&format!(
            "contains {shown}: only letters, digits, '-', '_' and '.' are allowed"
        ));
    }
    if id.starts_with('.') {
        return bad("must not start with '.'");
    }
    Ok(())
}

/// Checks a purpose: 1 to 500 characters, no control or format characters.
pub fn validate_purpose(p: &str) -> Result<(), FieldError> {
    let bad = |why: &str| Err(field_error("invalid purpose", format!("purpose {why}")));
    let trimmed = p.trim();
    if trimmed.is_empty() {
        return bad("is required: give a ticket or warrant reference");
    }
    if p.chars().count() > 500 {
        return bad("is longer than 500 characters");
    }
    // Format characters (bidi controls, zero-width spaces) would let a
    // purpose read differently in `audit list` than it is stored.
    if let Some(c) = first_hidden_char(p) {
        let what = if c.is_control() {
            "control characters"
        } else {
            "Unicode format characters (bidi controls, zero-width characters)"
        };
        return bad(&format!(
            "contains {what}, here U+{:04X}: write the purpose without them",
            c as u32
        ));
    }
    Ok(())
}

/// An analyst name (`x-on-behalf-of`): 1 to 200 characters of printable
/// ASCII, not blank. Anything else is refused with the audit reason
/// (`missing on-behalf-of` for a value that is empty, blank, too long or
/// holds control characters, `malformed on-behalf-of` for one that is not
/// ASCII) and a message naming the fault.
pub fn check_on_behalf_of(b: &[u8]) -> Result<&str, FieldError> {
    const RULE: &str = "the analyst the export is for: 1 to 200 characters of printable ASCII";
    let missing = |why: String| {
        Err(field_error(
            "missing on-behalf-of",
            format!("{ON_BEHALF_OF} {why}"),
        ))
    };
    let Ok(s) = std::str::from_utf8(b) else {
        return Err(field_error(
            "malformed on-behalf-of",
            format!("{ON_BEHALF_OF} is not UTF-8 text; send {RULE}"),
        ));
    };
    if let Some(c) = s.chars().find(|c| !(' '..='~').contains(c)) {
        let why = format!("contains {}; send {RULE}", describe_char(c));
        return if c.is_ascii() {
            missing(why)
        } else {
            Err(field_error(
                "malformed on-behalf-of",
                format!("{ON_BEHALF_OF} {why}"),
            ))
        };
    }
    if s.trim().is_empty() {
        return missing(format!("metadata is required: {RULE}"));
    }
    if s.len() > 200 {
        return missing(format!("is {} characters long; send {RULE}", s.len()));
    }
    Ok(s)
}

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
    fn hostile_case_ids_are_refused() {
        for id in [
            "",
            "../etc/passwd",
            "/abs/path",
            "a'; DROP TABLE cases; --",
            "a\0b",
            "a\nb",
            "\u{0430}bc",
            ".hidden",
            &"x".repeat(129),
        ] {
            let e = validate_case_id(id).unwrap_err();
            assert!(e.to_string().starts_with("case_id "), "{e}");
        }
        validate_case_id("0b8e5c1e-4c1b-4f6a-9a7c-2d0e7f3b1a11").unwrap();
    }

    #[test]
    fn purpose_rules() {
        assert!(validate_purpose("").is_err());
        assert!(validate_purpose("   ").is_err());
        assert!(validate_purpose(&"p".repeat(501)).is_err());
        assert!(validate_purpose("a\u{7}").is_err());
        for hidden in ['\u{202E}', '\u{200B}', '\u{2066}', '\u{2069}', '\u{FEFF}'] {
            let e = validate_purpose(&format!("TICKET-1{hidden}234")).unwrap_err();
            let code = format!("U+{:04X}", hidden as u32);
            assert!(e.to_string().contains(&code), "{e}");
        }
        validate_purpose("TICKET-1234: subpoena review").unwrap();
        validate_purpose(&"é".repeat(500)).unwrap();
    }
}
