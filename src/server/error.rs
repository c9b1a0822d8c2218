//! The service's error type and its one mapping to `tonic::Status`.

use crate::snapshot::SnapshotError;
use tonic::{Code, Status};

/// Why an export was refused or ended early.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The request is malformed; the message says which field and why.
    #[error("{0}")]
    InvalidArgument(String),
    /// No such case (also for cases the caller may not see).
    #[error("case not found")]
    NotFound,
    /// The case is larger than the snapshot ceiling.
    #[error("{0}")]
    TooLarge(String),
    /// Too many exports in flight.
    #[error("too many exports in flight on this server (limit {0}); retry later")]
    Exhausted(usize),
    /// The caller's principal has its own cap of exports in flight.
    #[error("too many exports in flight for principal {0:?} (its limit is {1}); retry later")]
    PrincipalExhausted(String, usize),
    /// The export's deadline or a send timeout passed; says which.
    #[error("export ended: {0}")]
    DeadlineExceeded(String),
    /// No room in the memory budget within the wait.
    #[error("the server's memory budget for exports is in use; retry later")]
    MemoryBusy,
    /// The case database cannot be read now.
    #[error("{0}")]
    SourceUnavailable(String),
    /// The audit store cannot record the call; nothing is released.
    #[error("the audit store cannot record this export, so nothing was released; retry later")]
    AuditUnavailable,
    /// The server is draining.
    #[error("server is shutting down; retry on another instance")]
    ShuttingDown,
    /// A bug or an unexpected fault; the details are only in the logs.
    #[error("internal error (export {0}); see server logs")]
    Internal(String),
}

impl ExportError {
    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument(_) => Code::InvalidArgument,
            Self::NotFound => Code::NotFound,
            Self::TooLarge(_) => Code::FailedPrecondition,
            Self::Exhausted(_) | Self::PrincipalExhausted(..) | Self::MemoryBusy => {
                Code::ResourceExhausted
            }
            Self::DeadlineExceeded(_) => Code::DeadlineExceeded,
            Self::SourceUnavailable(_) | Self::ShuttingDown | Self::AuditUnavailable => {
                Code::Unavailable
            }
            Self::Internal(_) => Code::Internal,
        }
    }
}

impl From<ExportError> for Status {
    fn from(e: ExportError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

impl ExportError {
    /// Maps a snapshot failure; `export_id` tags internal errors for the logs.
    pub fn from_snapshot(e: SnapshotError, export_id: &str) -> Self {
        match e {
            SnapshotError::NotFound => Self::NotFound,
            SnapshotError::TooLarge { .. } => Self::TooLarge(e.to_string()),
            SnapshotError::Unavailable(_) | SnapshotError::Busy(_) => {
                Self::SourceUnavailable(e.to_string())
            }
            // A database without the configured case table is unusable as a
            // source, like a missing one; the details are for the operator.
            SnapshotError::Schema(_) => {
                tracing::error!(export_id, error = %e, "case database does not fit the scope configuration");
                Self::SourceUnavailable(
                    "case database unavailable: it does not match the server's case scope \
                     configuration"
                        .into(),
                )
            }
            SnapshotError::Internal(_) => {
                tracing::error!(export_id, error = %e, source = ?std::error::Error::source(&e), "snapshot failed");
                Self::Internal(export_id.to_string())
            }
        }
    }
}

/// Checks a case id: 1 to 128 of `[A-Za-z0-9._-]`, not starting with '.'.
pub fn validate_case_id(id: &str) -> Result<(), ExportError> {
    let bad = |why: &str| Err(ExportError::InvalidArgument(format!("case_id {why}")));
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
pub fn validate_purpose(p: &str) -> Result<(), ExportError> {
    let bad = |why: &str| Err(ExportError::InvalidArgument(format!("purpose {why}")));
    let trimmed = p.trim();
    if trimmed.is_empty() {
        return bad("is required: give a ticket or warrant reference");
    }
    if p.chars().count() > 500 {
        return bad("is longer than 500 characters");
    }
    // Format characters (bidi controls, zero-width spaces) would let a
    // purpose read differently in `audit list` than it is stored.
    if let Some(c) = super::untrusted::first_hidden_char(p) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
            assert_eq!(e.code(), Code::InvalidArgument, "{id:?}");
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
