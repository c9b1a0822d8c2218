//! The trail's errors: one enum for the trail, one for checkpoints, and
//! how a stored trail differs from the one written.

use std::path::PathBuf;

/// Why the trail could not be opened, read or written. `Clone`, since one
/// failed write answers every call waiting on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// The database cannot be opened or created.
    #[error("cannot open the audit database {path}: {message}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// A PostgreSQL trail's database cannot be reached or set up.
    #[error("cannot open the audit database {db}: {message}")]
    Database {
        /// The database's URL (which never holds a password).
        db: String,
        /// What went wrong.
        message: String,
    },
    /// The file is some other database, never to be made (or read as) a
    /// trail.
    #[error(
        "{} is not an audit database (it holds other tables, or not the audit_meta and \
         audit_events tables)",
        .0.display()
    )]
    NotATrail(PathBuf),
    /// A stored value the trail itself wrote is malformed.
    #[error("the audit trail is corrupt: {0}")]
    Corrupt(String),
    /// A query on the trail failed (SQLite's message; its error type cannot
    /// be cloned).
    #[error("cannot read the audit trail: {0}")]
    Query(String),
    /// A write failed; the event stays queued and is retried.
    #[error("the audit store cannot write: {0}")]
    Write(String),
    /// A list filter is malformed.
    #[error("{0}")]
    BadFilter(String),
    /// A checkpoint, its file or its key.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The writer is gone (shutting down).
    #[error("the audit writer has stopped")]
    Stopped,
    /// The stored trail is not the one this server wrote; nothing more is
    /// appended to it.
    #[error("{0}; the trail is refused until it is restored or a new trail is started")]
    Mismatch(TrailMismatch),
    /// Too many bytes of events wait for the store.
    #[error("the audit queue is full ({0} bytes wait for the store); the event is refused")]
    QueueFull(u64),
}

impl From<rusqlite::Error> for AuditError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Query(e.to_string())
    }
}

/// Why a checkpoint, its file or its signing key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be read.
    #[error("cannot read {what} {}: {message}", path.display())]
    Read {
        /// `checkpoint key` or `checkpoints`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        message: String,
    },
    /// A line of a checkpoints file is not a checkpoint.
    #[error("{} line {line}: not a checkpoint: {message}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parser's complaint.
        message: String,
    },
    /// A key file does not hold a seed.
    #[error(
        "checkpoint key {} must hold 64 hex digits (make one with `case-export token \
         checkpoint-key`)",
        .0.display()
    )]
    BadKey(PathBuf),
    /// A signature or public key is malformed, or does not verify.
    #[error("{0}")]
    Signature(&'static str),
}

/// How a stored trail differs from the one written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the stored trail differs from the one written, first at event {seq}: {what}")]
pub struct TrailMismatch {
    /// The first sequence number found to differ.
    pub seq: u64,
    /// What differs.
    pub what: String,
}
