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
    /// The server's policy requires recipients for this caller.
    #[error(
        "this server sends keys to principal {0:?} only sealed to the analyst's public keys: \
         name at least one recipient (age1... or an SSH public key)"
    )]
    RecipientsRequired(String),
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
            Self::RecipientsRequired(_) => Code::FailedPrecondition,
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
            SnapshotError::Unavailable(_)
            | SnapshotError::Busy(_)
            | SnapshotError::StatementTimeout(_)
            | SnapshotError::PermissionDenied { .. } => Self::SourceUnavailable(e.to_string()),
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
            SnapshotError::Internal(_) | SnapshotError::Postgres(_) => {
                tracing::error!(export_id, error = %e, source = ?std::error::Error::source(&e), "snapshot failed");
                Self::Internal(export_id.to_string())
            }
        }
    }
}

/// Why the interceptor refused a call before its handler ran. Its codes
/// are chosen here, beside `ExportError`'s, so every status the server
/// sends is chosen in this module.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The trail is refused, or too many events wait for the store.
    #[error("the audit store cannot record this call now, so it was not taken; retry later")]
    NotRecordable,
    /// No credentials, or none the server knows; `reason` for the trail.
    #[error(
        "missing or invalid credentials: send 'authorization: Bearer <token>' or a client \
         certificate known to the server"
    )]
    Unauthenticated {
        /// The audit reason (`no credentials`, `unknown token`, ...).
        reason: &'static str,
    },
    /// The principal lacks the service's role.
    #[error("principal {principal:?} lacks the {role} role")]
    MissingRole {
        /// The principal's name.
        principal: String,
        /// The role the service needs.
        role: &'static str,
    },
    /// `x-on-behalf-of` is missing or breaks its rule.
    #[error("{0}")]
    OnBehalfOf(crate::contract::FieldError),
}

impl Refusal {
    /// The gRPC code of this refusal.
    pub fn code(&self) -> Code {
        match self {
            Self::NotRecordable => Code::Unavailable,
            Self::Unauthenticated { .. } => Code::Unauthenticated,
            Self::MissingRole { .. } => Code::PermissionDenied,
            Self::OnBehalfOf(_) => Code::InvalidArgument,
        }
    }

    /// The reason the `attempt` event records.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotRecordable => "not recordable",
            Self::Unauthenticated { reason } => reason,
            Self::MissingRole { .. } => "missing role",
            Self::OnBehalfOf(e) => e.reason,
        }
    }
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Self {
        Status::new(r.code(), r.to_string())
    }
}

impl From<crate::contract::FieldError> for ExportError {
    fn from(e: crate::contract::FieldError) -> Self {
        Self::InvalidArgument(e.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_values_that_break_their_rule_are_invalid_argument() {
        for e in [
            crate::contract::validate_case_id("../x").unwrap_err(),
            crate::contract::validate_purpose("").unwrap_err(),
        ] {
            let s = Status::from(ExportError::from(e.clone()));
            assert_eq!(s.code(), Code::InvalidArgument);
            assert_eq!(s.message(), e.message);
        }
    }
}
