//! Server configuration: a TOML file, then `CASE_EXPORT_*` variables and
//! flags on top (applied by the CLI). Every key is listed in
//! deploy/config.example.toml and docs/OPERATIONS.md.

use crate::db::{DbLocation, PasswordSource};
use crate::seal::{DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use crate::snapshot::ScopeConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Default gRPC listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file that could not be read.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or has an unknown key or a wrong type; the
    /// message names the key and line.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file holding the bad TOML.
        path: PathBuf,
        /// The parser's complaint, with line and column.
        message: String,
    },
    /// A value is out of its allowed range.
    #[error("invalid config value for `{key}`{}: {message}", line_note(*.line))]
    Value {
        /// The configuration key whose value is refused.
        key: &'static str,
        /// What is wrong with the value.
        message: String,
        /// Line of the config file where the key is set, when known.
        line: Option<usize>,
    },
}

fn line_note(line: Option<usize>) -> String {
    line.map(|l| format!(" (line {l})")).unwrap_or_default()
}

impl ConfigError {
    /// Adds the line where a refused key is set in `text`, if it is there.
    pub fn locate_in(self, text: &str) -> Self {
        match self {
            ConfigError::Value {
                key,
                message,
                line: None,
            } if !key.starts_with("principals") => {
                // Principals repeat their keys (and may come from
                // principals_file): no single line would be right.
                let name = key.rsplit('.').next().unwrap_or(key);
                let line = text.lines().position(|l| {
                    let l = l.trim_start();
                    l.strip_prefix(name)
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                });
                ConfigError::Value {
                    key,
                    message,
                    line: line.map(|i| i + 1),
                }
            }
            other => other,
        }
    }
}

/// The whole server configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// The case database: a SQLite file (opened read-only) or a
    /// `postgres://` URL (read in read-only transactions).
    pub case_db: DbLocation,
    /// The custody trail: a SQLite file (WAL) written by this server, or a
    /// `postgres://` URL of a trail shared by several replicas.
    pub audit_db: DbLocation,
    /// Plaintext bytes per sealed chunk.
    pub chunk_size: usize,
    /// Largest snapshot one export may build, in bytes.
    pub max_snapshot_bytes: u64,
    /// Exports allowed to run at once; more get RESOURCE_EXHAUSTED.
    pub max_in_flight: usize,
    /// Exports one principal may run at once, unless its entry sets
    /// `max_in_flight`; more get RESOURCE_EXHAUSTED.
    pub max_in_flight_per_principal: usize,
    /// Longest time one export may take from its call to its key; over it
    /// the stream ends with DEADLINE_EXCEEDED (a shorter `grpc-timeout`
    /// from the caller wins).
    pub export_deadline_secs: u64,
    /// Longest time one message of a stream may wait for a client that does
    /// not read; over it the stream ends with DEADLINE_EXCEEDED.
    pub send_timeout_secs: u64,
    /// Time a new connection has to finish its TLS and HTTP/2 handshake (on
    /// the metrics listener: to send its request head); then it is closed.
    pub handshake_timeout_secs: u64,
    /// Connections each listener keeps open at once; more are closed as
    /// they are accepted.
    pub max_connections: usize,
    /// Most events one `ListEvents` call returns; a caller pages on with
    /// `after_seq`.
    pub audit_list_max_events: u64,
    /// Bytes of snapshots (and their stream buffers) all exports together
    /// may hold; an export waits for room, then gets RESOURCE_EXHAUSTED.
    pub memory_budget_bytes: u64,
    /// How long an export waits for room in the memory budget.
    pub budget_wait_ms: u64,
    /// Sealing threads per export; 0 means one per core. Each seals 8
    /// chunks at a time; the thread that orders and hashes the tokens, not
    /// the sealing, bounds the rate (BENCHMARKS.md).
    pub seal_workers: usize,
    /// Sealed chunks buffered per export between sealer and network.
    pub channel_depth: usize,
    /// How long an export waits for a writer's lock on the case database.
    pub busy_timeout_ms: u64,
    /// Grace period for in-flight exports at shutdown.
    pub shutdown_grace_secs: u64,
    /// Largest accepted request message, in bytes.
    pub max_request_bytes: usize,
    /// Listening on a non-loopback address without TLS must be asked for.
    pub allow_plaintext: bool,
    /// Address of the Prometheus `/metrics` listener; off when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// Address of a plaintext listener serving only the health service,
    /// for probes that cannot speak TLS; off when unset.
    pub health_listen: Option<SocketAddr>,
    /// Case scope: root table, key column, excluded tables.
    pub scope: ScopeConfig,
    /// Column of the root table naming a case's tenant, for principals
    /// limited to tenants.
    pub tenant_column: String,
    /// Names this server in audit events; empty: a random id per start.
    pub instance_id: String,
    /// TLS and mutual TLS.
    pub tls: Option<TlsConfig>,
    /// Audit checkpoints.
    pub audit: AuditConfig,
    /// Connections to PostgreSQL, for `case_db` or `audit_db` URLs.
    pub postgres: PostgresConfig,
    /// Who may call, and with which roles.
    pub principals: Vec<PrincipalConfig>,
    /// A TOML file of further `[[principals]]` (e.g. a mounted secret).
    pub principals_file: Option<PathBuf>,
    /// Keys sealed to the analyst's public keys, and signed receipts.
    pub keys: KeysConfig,
}

/// The file named by `principals_file`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PrincipalsFile {
    #[serde(default)]
    principals: Vec<PrincipalConfig>,
}

/// Server certificate, key and (for mTLS) the client CA, as PEM files.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the server certificate (chain).
    pub cert: PathBuf,
    /// PEM file of the private key of `cert`.
    pub key: PathBuf,
    /// With a client CA, client certificates are checked and their
    /// identity (a SPIFFE URI SAN, or a subject CN asked for as such) can
    /// name a principal.
    pub client_ca: Option<PathBuf>,
}

/// Checkpoints of the audit chain.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Seconds between checkpoints (also one at shutdown).
    pub checkpoint_interval_secs: u64,
    /// JSON-lines file the checkpoints are appended to.
    pub checkpoint_file: Option<PathBuf>,
    /// Ed25519 seed (64 hex digits) that signs checkpoints.
    pub checkpoint_key_file: Option<PathBuf>,
    /// Bytes of audit events that may wait while the store cannot write;
    /// when full, new calls are refused (UNAVAILABLE).
    pub max_queued_bytes: u64,
    /// Refused calls of unauthenticated callers (and calls of unknown
    /// methods) recorded one by one per peer address at once; more are
    /// only counted, in `denied_summary` events.
    pub denied_record_burst: u32,
    /// How many such records a peer gets back per minute.
    pub denied_records_per_minute: u32,
    /// Peer addresses with an allowance of their own; a newcomer beyond
    /// them shares one with the others.
    pub denied_record_peers: usize,
    /// Such records per minute for all peers together (and at once).
    pub denied_records_per_minute_total: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            checkpoint_interval_secs: 300,
            checkpoint_file: None,
            checkpoint_key_file: None,
            max_queued_bytes: 64 << 20,
            denied_record_burst: 20,
            denied_records_per_minute: 60,
            denied_record_peers: 4096,
            denied_records_per_minute_total: 1200,
        }
    }
}

/// Connections to PostgreSQL (used only where `case_db` or `audit_db` is
/// a `postgres://` URL). Passwords never come from this file.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct PostgresConfig {
    /// Schema whose tables and foreign keys make up the cases.
    pub schema: String,
    /// Connections to the case database at most (a pool).
    pub pool_size: usize,
    /// Seconds to wait for a connection to open.
    pub connect_timeout_secs: u64,
    /// Longest one statement of an export may run, in seconds; over it
    /// the export fails UNAVAILABLE.
    pub statement_timeout_secs: u64,
    /// File holding the case database's password; else the environment
    /// variable `CASE_EXPORT_CASE_DB_PASSWORD`, else none.
    pub case_db_password_file: Option<PathBuf>,
    /// File holding the trail database's password; else the environment
    /// variable `CASE_EXPORT_AUDIT_DB_PASSWORD`, else none.
    pub audit_db_password_file: Option<PathBuf>,
}

/// Environment variable read for the case database's password.
pub const CASE_DB_PASSWORD_ENV: &str = "CASE_EXPORT_CASE_DB_PASSWORD";
/// Environment variable read for the trail database's password.
pub const AUDIT_DB_PASSWORD_ENV: &str = "CASE_EXPORT_AUDIT_DB_PASSWORD";

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            schema: "public".into(),
            pool_size: 8,
            connect_timeout_secs: 5,
            statement_timeout_secs: 300,
            case_db_password_file: None,
            audit_db_password_file: None,
        }
    }
}

impl PostgresConfig {
    /// Where the case database's password comes from.
    pub fn case_password(&self) -> PasswordSource<'_> {
        PasswordSource {
            file: self.case_db_password_file.as_deref(),
            env: CASE_DB_PASSWORD_ENV,
        }
    }

    /// Where the trail database's password comes from.
    pub fn audit_password(&self) -> PasswordSource<'_> {
        PasswordSource {
            file: self.audit_db_password_file.as_deref(),
            env: AUDIT_DB_PASSWORD_ENV,
        }
    }

    /// Time allowed to open a connection.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_secs)
    }

    /// Time allowed to one statement of an export.
    pub fn statement_timeout(&self) -> Duration {
        Duration::from_secs(self.statement_timeout_secs)
    }
}

/// How export keys leave the server, and what it signs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// When true, every export must name recipients: no caller gets a raw
    /// key. A principal's own `require_recipients` overrides it.
    pub require_recipients: bool,
    /// Public keys (age X25519 or SSH) every wrapped key is also sealed to:
    /// a break-glass or legal-hold key kept offline.
    pub escrow_recipients: Vec<String>,
    /// Most recipients one request may name.
    pub max_recipients: usize,
    /// Ed25519 seed (64 hex digits) that signs export receipts; unset: the
    /// checkpoint key (`[audit] checkpoint_key_file`), else no receipts.
    pub receipt_key_file: Option<PathBuf>,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            require_recipients: false,
            escrow_recipients: Vec::new(),
            max_recipients: 16,
            receipt_key_file: None,
        }
    }
}

/// A role a principal can hold.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May call ExportService.
    Exporter,
    /// May call AuditService.
    Auditor,
}

impl Role {
    /// The role's name as written in the configuration.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Exporter => "exporter",
            Role::Auditor => "auditor",
        }
    }
}

/// One caller: a service token (stored as its SHA-256) and/or a client
/// certificate identity.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PrincipalConfig {
    /// The principal's name, recorded in every audit event of its calls.
    pub name: String,
    /// Hex SHA-256 of the bearer token; the token itself is never stored.
    pub token_sha256: Option<String>,
    /// Client certificate identity that names this principal with mTLS:
    /// `spiffe://...` (a URI SAN) or `cn:NAME` (the subject CN).
    pub tls_identity: Option<String>,
    /// The services this principal may call.
    pub roles: Vec<Role>,
    /// When set, only cases of these tenants are visible.
    pub tenants: Option<Vec<String>>,
    /// Exports this principal may run at once; unset:
    /// `max_in_flight_per_principal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<usize>,
    /// Whether this principal's exports must name recipients; unset:
    /// `[keys] require_recipients`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_recipients: Option<bool>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().unwrap_or_else(|_| unreachable!()),
            case_db: DbLocation::Sqlite(PathBuf::from("data/cases.db")),
            audit_db: DbLocation::Sqlite(PathBuf::from("data/audit.db")),
            chunk_size: DEFAULT_CHUNK_SIZE,
            max_snapshot_bytes: 1 << 30,
            max_in_flight: 8,
            max_in_flight_per_principal: 4,
            export_deadline_secs: 3600,
            send_timeout_secs: 60,
            handshake_timeout_secs: 10,
            max_connections: 1024,
            audit_list_max_events: 10_000,
            memory_budget_bytes: 4 << 30,
            budget_wait_ms: 10_000,
            seal_workers: 0,
            channel_depth: 8,
            busy_timeout_ms: 5_000,
            shutdown_grace_secs: 30,
            max_request_bytes: 16 * 1024,
            allow_plaintext: false,
            metrics_listen: None,
            health_listen: None,
            scope: ScopeConfig::default(),
            tenant_column: "tenant".into(),
            instance_id: String::new(),
            tls: None,
            audit: AuditConfig::default(),
            postgres: PostgresConfig::default(),
            principals: Vec::new(),
            principals_file: None,
            keys: KeysConfig::default(),
        }
    }
}

/// Why a principal's `tls_identity` is refused.
#[derive(Debug, thiserror::Error)]
enum IdentityError {
    #[error(
        "tls_identity {id:?} is a common name that looks like a URI; any certificate of the \
         client CA can carry such a CN, so it cannot stand for a URI: {fix}"
    )]
    CnLooksLikeUri { id: String, fix: String },
    #[error(
        "tls_identity {0:?}: the common name after \"cn:\" must not be empty or begin or \
         end with white space"
    )]
    CnBlankOrPadded(String),
    #[error("tls_identity {id:?} contains {what}; write the common name without it")]
    CnHidden { id: String, what: String },
    #[error(
        "tls_identity {id:?} is not a SPIFFE id: {why} (the form is \
         spiffe://trust-domain/path)"
    )]
    NotSpiffe { id: String, why: SpiffeError },
    #[error(
        "tls_identity {id:?} does not say what it matches: write \"cn:{shown}\" to match \
         the certificate's subject common name, or a \"spiffe://trust-domain/path\" id to \
         match its URI SAN"
    )]
    Untyped { id: String, shown: String },
}

/// Which SPIFFE ID rule (spiffe.io, SPIFFE-ID.md) an id breaks.
#[derive(Debug, thiserror::Error)]
enum SpiffeError {
    #[error("longer than 2048 bytes")]
    TooLong,
    #[error("the trust domain is missing")]
    NoTrustDomain,
    #[error(
        "the trust domain may hold only lowercase letters, digits, '.', '-' and '_', not {0:?}"
    )]
    TrustDomainChar(char),
    #[error("a path segment is empty, \".\" or \"..\" (or the path ends with '/')")]
    EmptySegment,
    #[error("the path may hold only letters, digits, '.', '-', '_' and '/', not {0:?}")]
    PathChar(char),
}

/// Checks a principal's `tls_identity`: a SPIFFE id, matched against the
/// certificate's URI SANs, or `cn:NAME`, matched against its subject CN.
/// The kind is explicit because any certificate of the client CA can carry
/// any CN: a CN that spells a SPIFFE id must not pass for one.
fn check_tls_identity(id: &str) -> Result<(), IdentityError> {
    if let Some(name) = id.strip_prefix("cn:") {
        let lower = name.to_ascii_lowercase();
        if name.contains("://") || lower.starts_with("spiffe:") {
            let fix = if lower.starts_with("spiffe://") {
                format!("write tls_identity = {name:?} to match the certificate's URI SAN")
            } else {
                "name the service by its SPIFFE id (\"spiffe://...\", matched against the \
                 certificate's URI SAN), or by a plain common name"
                    .to_string()
            };
            return Err(IdentityError::CnLooksLikeUri { id: id.into(), fix });
        }
        if name.trim().is_empty() || name.trim() != name {
            return Err(IdentityError::CnBlankOrPadded(id.into()));
        }
        if let Some(c) = crate::contract::first_hidden_char(name) {
            return Err(IdentityError::CnHidden {
                id: id.into(),
                what: crate::contract::describe_char(c),
            });
        }
        return Ok(());
    }
    if id.starts_with("spiffe://") {
        return check_spiffe_id(id).map_err(|why| IdentityError::NotSpiffe { id: id.into(), why });
    }
    let shown = if id.is_empty() { "NAME" } else { id };
    Err(IdentityError::Untyped {
        id: id.into(),
        shown: shown.into(),
    })
}

/// The SPIFFE ID rules (spiffe.io, SPIFFE-ID.md): a lowercase trust
/// domain, then path segments of letters, digits, '.', '-' and '_', none
/// empty, "." or "..".
fn check_spiffe_id(id: &str) -> Result<(), SpiffeError> {
    let rest = &id["spiffe://".len()..];
    if id.len() > 2048 {
        return Err(SpiffeError::TooLong);
    }
    let (domain, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if domain.is_empty() {
        return Err(SpiffeError::NoTrustDomain);
    }
    if let Some(c) = domain
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(SpiffeError::TrustDomainChar(c));
    }
    if path.is_empty() {
        return Ok(());
    }
    for seg in path[1..].split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(SpiffeError::EmptySegment);
        }
        if let Some(c) = seg
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(SpiffeError::PathChar(c));
        }
    }
    Ok(())
}

/// Letters to change to turn `a` into `b` (Levenshtein distance).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// serde's "unknown field `x`, expected one of `a`, `b`, ..." lists every
/// key of the table, too many to read on one line at the top level: keep
/// short lists, else name the closest key or where the keys are listed.
fn shorten_unknown_field(msg: String) -> String {
    let Some((head, list)) = msg.split_once(", expected one of ") else {
        return msg;
    };
    let keys: Vec<&str> = list.split(", ").map(|k| k.trim_matches('`')).collect();
    if keys.len() <= 8 {
        return msg;
    }
    let unknown = head.rsplit('`').nth(1).unwrap_or("");
    let closest = keys
        .iter()
        .map(|k| (edit_distance(unknown, k), *k))
        .min()
        .filter(|(d, _)| *d <= 3);
    match closest {
        Some((_, k)) => format!("{head}; did you mean `{k}`?"),
        None => format!("{head}; deploy/config.example.toml lists every key"),
    }
}

/// "line L, column C: message" from a TOML error, on one line.
fn one_line(text: &str, e: &toml::de::Error) -> String {
    let msg = shorten_unknown_field(e.message().trim().replace('\n', " "));
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let line_start = before.rfind('\n').map_or(0, |i| i + 1);
            let col = before.len() - line_start + 1;
            let line_text = text[line_start..].lines().next().unwrap_or("");
            match line_text.split_once('=') {
                Some((key, _)) if !msg.contains(key.trim()) => {
                    format!("line {line}, column {col}: `{}`: {msg}", key.trim())
                }
                _ => format!("line {line}, column {col}: {msg}"),
            }
        }
        None => msg,
    }
}

impl Config {
    /// Parses a TOML document without range checks (flags may still
    /// change values before `validate`).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: one_line(text, &e),
        })
    }

    /// Parses and validates a TOML document; errors name the key and line.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: one_line(text, &e),
        })?;
        cfg.validate().map_err(|e| e.locate_in(text))?;
        Ok(cfg)
    }

    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::parse(&text, path)?;
        cfg.load_principals_file()?;
        Ok(cfg)
    }

    /// Adds the principals of `principals_file`, if set.
    pub fn load_principals_file(&mut self) -> Result<(), ConfigError> {
        let Some(p) = self.principals_file.clone() else {
            return Ok(());
        };
        let text = std::fs::read_to_string(&p).map_err(|source| ConfigError::Read {
            path: p.clone(),
            source,
        })?;
        let more: PrincipalsFile = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: p.clone(),
            message: one_line(&text, &e),
        })?;
        self.principals.extend(more.principals);
        Ok(())
    }

    /// Checks ranges that types cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_limits()?;
        self.validate_principals()?;
        self.validate_audit()?;
        self.validate_postgres()?;
        self.validate_keys()?;
        self.validate_listen()
    }

    /// Escrow recipients parse; the recipient cap is sane.
    fn validate_keys(&self) -> Result<(), ConfigError> {
        let v = |key, message: String| {
            Err(ConfigError::Value {
                key,
                message,
                line: None,
            })
        };
        if !(1..=64).contains(&self.keys.max_recipients) {
            return v("keys.max_recipients", "must be between 1 and 64".into());
        }
        for (i, r) in self.keys.escrow_recipients.iter().enumerate() {
            if let Err(e) = crate::keywrap::parse_recipient(i + 1, r) {
                return v("keys.escrow_recipients", e.to_string());
            }
        }
        Ok(())
    }

    /// Whether exports must name recipients, given what the caller's
    /// principal entry says.
    pub fn requires_recipients(&self, principal_says: Option<bool>) -> bool {
        principal_says.unwrap_or(self.keys.require_recipients)
    }

    /// The file of the key that signs receipts, if any.
    pub fn receipt_key_file(&self) -> Option<&Path> {
        self.keys
            .receipt_key_file
            .as_deref()
            .or(self.audit.checkpoint_key_file.as_deref())
    }

    /// The PostgreSQL connection settings.
    fn validate_postgres(&self) -> Result<(), ConfigError> {
        let v = |key, message: String| {
            Err(ConfigError::Value {
                key,
                message,
                line: None,
            })
        };
        let pg = &self.postgres;
        if pg.schema.is_empty() || pg.schema.len() > 63 {
            return v(
                "postgres.schema",
                "must be a schema name of 1 to 63 bytes".into(),
            );
        }
        if !(1..=256).contains(&pg.pool_size) {
            return v("postgres.pool_size", "must be between 1 and 256".into());
        }
        if !(1..=300).contains(&pg.connect_timeout_secs) {
            return v(
                "postgres.connect_timeout_secs",
                "must be between 1 and 300".into(),
            );
        }
        if !(1..=86_400).contains(&pg.statement_timeout_secs) {
            return v(
                "postgres.statement_timeout_secs",
                "must be between 1 and 86400".into(),
            );
        }
        Ok(())
    }

    /// Sizes, counts and times.
    // Long: one check per key.
    fn validate_limits(&self) -> Result<(), ConfigError> {
        let v = |key, message: String| {
            Err(ConfigError::Value {
                key,
                message,
                line: None,
            })
        };
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return v(
                "chunk_size",
                format!("must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes"),
            );
        }
        let one_export = self.max_snapshot_bytes
            + self.stream_buffer_bytes()
            + crate::snapshot::source_cache_bytes(self.max_snapshot_bytes);
        if self.memory_budget_bytes < one_export {
            return v(
                "memory_budget_bytes",
                format!(
                    "must be at least max_snapshot_bytes plus one export's stream buffers \
                     and source page cache: {} + {} + {} = {one_export} bytes here \
                     ((channel_depth + 8 * (seal workers + 1) + 1) sealed chunks; cache up to 32 MiB)",
                    self.max_snapshot_bytes,
                    self.stream_buffer_bytes(),
                    crate::snapshot::source_cache_bytes(self.max_snapshot_bytes),
                ),
            );
        }
        if self.max_in_flight == 0 {
            return v("max_in_flight", "must be at least 1".into());
        }
        for (key, value) in [
            (
                "max_in_flight_per_principal",
                self.max_in_flight_per_principal as u64,
            ),
            ("export_deadline_secs", self.export_deadline_secs),
            ("send_timeout_secs", self.send_timeout_secs),
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            ("max_connections", self.max_connections as u64),
            ("audit_list_max_events", self.audit_list_max_events),
        ] {
            if value == 0 {
                return v(key, "must be at least 1".into());
            }
        }
        if self.channel_depth == 0 {
            return v("channel_depth", "must be at least 1".into());
        }
        if self.max_snapshot_bytes < 64 * 1024 {
            return v("max_snapshot_bytes", "must be at least 65536".into());
        }
        if !(256..=1 << 20).contains(&self.max_request_bytes) {
            return v(
                "max_request_bytes",
                "must be between 256 and 1048576".into(),
            );
        }
        Ok(())
    }

    /// Names, token digests, identities and caps of the principals.
    // Long: one check per key.
    fn validate_principals(&self) -> Result<(), ConfigError> {
        let v = |key, message: String| {
            Err(ConfigError::Value {
                key,
                message,
                line: None,
            })
        };
        let mut identities = std::collections::HashMap::new();
        for p in &self.principals {
            if let Some(id) = &p.tls_identity {
                if let Err(m) = check_tls_identity(id) {
                    return v(
                        "principals.tls_identity",
                        format!("principal {:?}: {m}", p.name),
                    );
                }
                if let Some(other) = identities.insert(id.as_str(), p.name.as_str()) {
                    return v(
                        "principals.tls_identity",
                        format!(
                            "principals {other:?} and {:?} have the same tls_identity {id:?}; \
                             a certificate must name one principal: give each its own \
                             identity, or merge the two entries",
                            p.name
                        ),
                    );
                }
            }
            if p.name.trim().is_empty() {
                return v("principals.name", "must not be empty".into());
            }
            if let Some(h) = &p.token_sha256
                && (h.len() != 64 || hex::decode(h).is_err())
            {
                return v(
                    "principals.token_sha256",
                    format!(
                        "principal {:?}: must be 64 hex digits (SHA-256 of the token)",
                        p.name
                    ),
                );
            }
            if p.max_in_flight == Some(0) {
                return v(
                    "principals.max_in_flight",
                    format!("principal {:?}: must be at least 1", p.name),
                );
            }
            if p.token_sha256.is_none() && p.tls_identity.is_none() {
                return v(
                    "principals",
                    format!(
                        "principal {:?} has neither token_sha256 nor tls_identity",
                        p.name
                    ),
                );
            }
        }
        Ok(())
    }

    /// The trail's settings.
    fn validate_audit(&self) -> Result<(), ConfigError> {
        let v = |key, message: String| {
            Err(ConfigError::Value {
                key,
                message,
                line: None,
            })
        };
        if self.audit.max_queued_bytes < 1 << 20 {
            return v(
                "audit.max_queued_bytes",
                "must be at least 1048576 (1 MiB)".into(),
            );
        }
        if self.audit.checkpoint_interval_secs == 0 {
            return v(
                "audit.checkpoint_interval_secs",
                "must be at least 1".into(),
            );
        }
        if !(1..=100_000).contains(&self.audit.denied_record_burst) {
            return v(
                "audit.denied_record_burst",
                "must be between 1 and 100000".into(),
            );
        }
        if !(1..=1_000_000).contains(&self.audit.denied_records_per_minute) {
            return v(
                "audit.denied_records_per_minute",
                "must be between 1 and 1000000".into(),
            );
        }
        if !(1..=1_000_000).contains(&self.audit.denied_record_peers) {
            return v(
                "audit.denied_record_peers",
                "must be between 1 and 1000000".into(),
            );
        }
        if !(1..=1_000_000).contains(&self.audit.denied_records_per_minute_total) {
            return v(
                "audit.denied_records_per_minute_total",
                "must be between 1 and 1000000".into(),
            );
        }
        Ok(())
    }

    /// Plaintext beyond loopback must be asked for.
    fn validate_listen(&self) -> Result<(), ConfigError> {
        let v = |key, message: String| {
            Err(ConfigError::Value {
                key,
                message,
                line: None,
            })
        };
        if !self.listen.ip().is_loopback() && !self.allow_plaintext && self.tls.is_none() {
            return v(
                "listen",
                format!(
                    "{} is not a loopback address and TLS is not configured; \
                     set allow_plaintext = true to serve plaintext on it",
                    self.listen
                ),
            );
        }
        Ok(())
    }

    /// Sealing threads per export, resolving 0 to the core count.
    pub fn seal_workers(&self) -> usize {
        if self.seal_workers > 0 {
            self.seal_workers
        } else {
            // More would only hold more sealed batches: the emitter's
            // digest of every token sets the pace (BENCHMARKS.md).
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// Bytes one export holds besides its snapshot: sealed chunks queued
    /// for the network, and the batches of chunks sealed or being sealed
    /// ahead of them (one per worker, plus the one being sent).
    pub fn stream_buffer_bytes(&self) -> u64 {
        use crate::seal::{BATCH_CHUNKS, CHUNK_HEADER_LEN, token_len};
        let token = token_len(self.chunk_size + CHUNK_HEADER_LEN) as u64;
        let batches = self.seal_workers() as u64 + 1;
        (self.channel_depth as u64 + batches * BATCH_CHUNKS as u64 + 1) * token
    }

    /// The budget wait as a duration.
    pub fn budget_wait(&self) -> Duration {
        Duration::from_millis(self.budget_wait_ms)
    }

    /// The busy timeout as a duration.
    pub fn busy_timeout(&self) -> Duration {
        Duration::from_millis(self.busy_timeout_ms)
    }

    /// The export deadline as a duration.
    pub fn export_deadline(&self) -> Duration {
        Duration::from_secs(self.export_deadline_secs)
    }

    /// The per-message send timeout as a duration.
    pub fn send_timeout(&self) -> Duration {
        Duration::from_secs(self.send_timeout_secs)
    }

    /// The handshake timeout as a duration.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    /// The shutdown grace period as a duration.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = Config::from_toml(
            "listen = \"127.0.0.1:1\"\nchunk_sise = 5\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("chunk_sise"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn unknown_top_level_key_suggests_the_closest() {
        let err = Config::from_toml("chunk_sise = 5\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("did you mean `chunk_size`?"), "{err}");
        assert!(err.len() < 200, "{err}");
        let err = Config::from_toml("zzzzzzzzzzzz = 5\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("config.example.toml lists every key"), "{err}");
        // A short list (a small table) is kept as it is.
        let err = Config::from_toml(
            "[tls]\ncert = \"c\"\nkey = \"k\"\nca = \"x\"\n",
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("expected one of"), "{err}");
    }

    #[test]
    fn wrong_type_names_key() {
        let err = Config::from_toml("max_in_flight = \"many\"\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_in_flight"), "{err}");
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn out_of_range_chunk_size_is_refused() {
        let err = Config::from_toml("chunk_size = 10\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("chunk_size"));
    }

    #[test]
    fn public_plaintext_needs_opt_in() {
        let err =
            Config::from_toml("listen = \"0.0.0.0:50051\"\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("allow_plaintext"));
        Config::from_toml(
            "listen = \"0.0.0.0:50051\"\nallow_plaintext = true\n",
            Path::new("c.toml"),
        )
        .unwrap();
    }

    #[test]
    fn shipped_example_is_the_defaults() {
        let text = include_str!("../../deploy/config.example.toml");
        let c = Config::from_toml(text, Path::new("config.example.toml")).unwrap();
        let d = Config::default();
        assert_eq!(format!("{c:?}"), format!("{d:?}"));
    }

    fn principal_with_identity(name: &str, id: &str) -> String {
        format!(
            "[[principals]]\nname = \"{name}\"\ntls_identity = \"{id}\"\nroles = [\"exporter\"]\n"
        )
    }

    #[test]
    fn tls_identities_must_be_typed() {
        for id in [
            "spiffe://example.org/ns/a/sa/b",
            "spiffe://example.org",
            "cn:legacy-batch",
            "cn:Case Management Batch",
        ] {
            Config::from_toml(&principal_with_identity("p", id), Path::new("c.toml"))
                .unwrap_or_else(|e| panic!("{id}: {e}"));
        }
        let refused = |id: &str| {
            Config::from_toml(&principal_with_identity("svc-x", id), Path::new("c.toml"))
                .unwrap_err()
                .to_string()
        };
        // Untyped: the message says what to write instead.
        let e = refused("legacy-batch");
        assert!(e.contains("principals.tls_identity"), "{e}");
        assert!(e.contains("\"svc-x\""), "{e}");
        assert!(e.contains("\"cn:legacy-batch\""), "{e}");
        // A CN that spells a URI.
        let e = refused("cn:spiffe://example.org/svc-a");
        assert!(e.contains("looks like a URI"), "{e}");
        assert!(
            e.contains("write tls_identity = \"spiffe://example.org/svc-a\""),
            "{e}"
        );
        for id in [
            "cn:SPIFFE:example.org/a",
            "cn:https://example.org/a",
            "cn:",
            "cn: padded",
            "cn:a\u{202E}b",
            "spiffe://",
            "spiffe://Example.org/a",
            "spiffe://example.org/a/",
            "spiffe://example.org/a/../b",
            "spiffe://example.org/a?b",
            "SPIFFE://example.org/a",
            "",
        ] {
            let e = refused(id);
            assert!(
                e.contains("svc-x") && e.contains("tls_identity"),
                "{id:?}: {e}"
            );
        }
    }

    #[test]
    fn two_principals_with_one_identity_are_refused() {
        let text = format!(
            "{}{}",
            principal_with_identity("svc-a", "cn:batch"),
            principal_with_identity("svc-b", "cn:batch")
        );
        let e = Config::from_toml(&text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"svc-a\" and \"svc-b\" have the same tls_identity \"cn:batch\""),
            "{e}"
        );
    }

    #[test]
    fn denied_record_limits_are_checked() {
        for (key, bad) in [
            ("denied_record_burst", "0"),
            ("denied_records_per_minute", "0"),
            ("denied_record_peers", "0"),
            ("denied_records_per_minute_total", "0"),
        ] {
            let e = Config::from_toml(&format!("[audit]\n{key} = {bad}\n"), Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!("audit.{key}")) && e.contains("line 2"),
                "{e}"
            );
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml("", Path::new("c.toml")).unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.chunk_size, DEFAULT_CHUNK_SIZE);
    }
}
