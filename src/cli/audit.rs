//! `audit`: verify the custody trail's chain and list its events.

use super::{CliError, CliResult};
use case_export::audit::{
    Checkpoint, ListFilter, init_trail, list_events, open_log_read_only, read_checkpoints,
    read_copy, start_new_trail, verify_log,
};
use case_export::db::{DbLocation, PasswordSource, PgConnector};
use case_export::server::AUDIT_DB_PASSWORD_ENV;
use clap::{Args, Subcommand};
use rusqlite::Connection;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain; exit 1 on any break, 3 if calls never ended.
    Verify(VerifyArgs),
    /// List events as a table or JSON lines.
    List(ListArgs),
    /// Start a new trail in place of one the server refused, recording the
    /// old log id and its last good head in its first event.
    NewTrail(NewTrailArgs),
    /// Create a PostgreSQL trail's tables (as an administrator) and grant
    /// the service's role what it needs: SELECT and INSERT.
    Init(InitArgs),
}

/// Where a trail is, and how to reach it.
#[derive(Debug, Args)]
pub struct TrailArgs {
    /// The audit database: a SQLite file, or a postgres:// URL (no
    /// password in it).
    #[arg(long)]
    pub db: String,
    /// File holding the PostgreSQL password; else the environment variable
    /// CASE_EXPORT_AUDIT_DB_PASSWORD, else none.
    #[arg(long)]
    pub password_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub trail: TrailArgs,
    /// The service's role, granted SELECT and INSERT on the trail's tables.
    #[arg(long)]
    pub grant: Option<String>,
}

#[derive(Debug, Args)]
pub struct NewTrailArgs {
    /// The refused trail (left as it is, for the investigation).
    #[arg(long)]
    pub db: PathBuf,
    /// The new trail's file; it must not exist. Point `audit_db` at it.
    #[arg(long)]
    pub out: PathBuf,
    /// Why the old trail was replaced (an incident reference).
    #[arg(long)]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub trail: TrailArgs,
    /// A checkpoints file (JSON lines) to check the log against. The
    /// checkpoints stored in a PostgreSQL trail's database are checked too.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Hex Ed25519 public key the checkpoints must be signed with.
    #[arg(long)]
    pub public_key: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub trail: TrailArgs,
    /// Only events of this case.
    #[arg(long = "case")]
    pub case_id: Option<String>,
    /// Only events of this principal.
    #[arg(long)]
    pub principal: Option<String>,
    /// Only events at or after this time (RFC 3339, e.g. 2026-01-31T00:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// JSON lines instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Exit status of `audit verify` when the chain holds but calls never ended.
pub const UNTERMINATED_EXIT: u8 = 3;

pub fn run(a: AuditArgs) -> Result<u8, CliError> {
    match a.command {
        AuditCommand::Verify(v) => verify(v),
        AuditCommand::List(l) => list(l).map(|_| 0),
        AuditCommand::NewTrail(n) => new_trail(n).map(|_| 0),
        AuditCommand::Init(i) => init(i).map(|_| 0),
    }
}

fn cli_err(e: impl std::fmt::Display) -> CliError {
    CliError::new(e.to_string())
}

impl TrailArgs {
    fn location(&self) -> Result<DbLocation, CliError> {
        DbLocation::parse(&self.db).map_err(|e| CliError::new(format!("--db: {e}")))
    }

    fn connector(&self) -> Result<Option<PgConnector>, CliError> {
        let DbLocation::Postgres(url) = self.location()? else {
            return Ok(None);
        };
        let password = PasswordSource {
            file: self.password_file.as_deref(),
            env: AUDIT_DB_PASSWORD_ENV,
        }
        .resolve()
        .map_err(cli_err)?;
        url.connector(password, Duration::from_secs(10), "case-export-audit")
            .map(Some)
            .map_err(|e| CliError::new(format!("--db: {e}")))
    }

    /// A read-only view of the trail and the checkpoints stored with it
    /// (a PostgreSQL trail is read in one consistent read).
    pub(super) fn open(&self) -> Result<(Connection, Vec<Checkpoint>), CliError> {
        match self.connector()? {
            Some(c) => super::runtime()?.block_on(read_copy(&c)).map_err(cli_err),
            None => open_log_read_only(&PathBuf::from(&self.db))
                .map(|c| (c, Vec::new()))
                .map_err(cli_err),
        }
    }
}

fn init(a: InitArgs) -> CliResult {
    let Some(c) = a.trail.connector()? else {
        return Err(CliError::new(
            "--db: `audit init` creates a PostgreSQL trail: give a postgres:// URL (a SQLite \
             trail is created by the server on its first start)",
        ));
    };
    let created = super::runtime()?
        .block_on(init_trail(&c, a.grant.as_deref()))
        .map_err(cli_err)?;
    println!(
        "{} {}{}",
        if created {
            "created the custody trail in"
        } else {
            "the custody trail exists in"
        },
        c.url(),
        a.grant
            .as_deref()
            .map(|g| format!("; role {g} may SELECT and INSERT on its tables"))
            .unwrap_or_default()
    );
    Ok(())
}

fn new_trail(a: NewTrailArgs) -> CliResult {
    let (old, new) =
        start_new_trail(&a.db, &a.out, &a.reason).map_err(|e| CliError::new(e.to_string()))?;
    println!(
        "new trail {} (log {}) continues log {} from its last good event {} (hash {})",
        a.out.display(),
        hex::encode(new.log_id),
        hex::encode(old.log_id),
        old.seq,
        hex::encode(old.hash),
    );
    println!(
        "point audit_db at {}; keep {} unchanged for the investigation",
        a.out.display(),
        a.db.display()
    );
    Ok(())
}

fn verify(a: VerifyArgs) -> Result<u8, CliError> {
    let (conn, mut checkpoints) = a.trail.open()?;
    if let Some(p) = &a.checkpoint {
        checkpoints.extend(read_checkpoints(p).map_err(|e| CliError::new(e.to_string()))?);
    }
    let v = verify_log(&conn, &checkpoints, a.public_key.as_deref())
        .map_err(|e| CliError::new(e.to_string()))?;
    if let Some(first) = v.problems.first() {
        let more = v.problems.len() - 1;
        let tail = if more > 0 {
            format!(" (and {more} more problem(s))")
        } else {
            String::new()
        };
        return Err(CliError::new(format!(
            "audit chain of {} is broken: {first}{tail}",
            a.trail.db
        )));
    }
    let cp = if v.checkpoints_ok == 0 && checkpoints.is_empty() {
        String::new()
    } else {
        format!(", {} checkpoint(s) match", v.checkpoints_ok)
    };
    println!(
        "ok: log {} holds {} events, head {} at seq {}{cp}",
        v.log_id, v.events, v.head_hash, v.last_seq
    );
    if v.unterminated.is_empty() {
        return Ok(0);
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} call(s) started without an end (server stopped mid-call, or still running):",
        v.unterminated.len()
    )?;
    for (seq, rid, case, export) in &v.unterminated {
        writeln!(
            out,
            "  seq {seq}  request {rid}  case {}  export {}",
            case.as_deref().unwrap_or("-"),
            export.as_deref().unwrap_or("-")
        )?;
    }
    Ok(UNTERMINATED_EXIT)
}

fn list(a: ListArgs) -> CliResult {
    let (conn, _) = a.trail.open()?;
    let filter = ListFilter {
        case_id: a.case_id,
        principal: a.principal,
        since: a.since,
        ..Default::default()
    };
    let events = list_events(&conn, &filter).map_err(|e| CliError::new(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    if a.json {
        for (seq, e, hash) in &events {
            let mut v = serde_json::to_value(e).map_err(|e| CliError::new(e.to_string()))?;
            if let serde_json::Value::Object(m) = &mut v {
                m.insert("seq".into(), (*seq).into());
                m.insert("hash".into(), hash.clone().into());
            }
            writeln!(out, "{v}")?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:>6}  {:<30}  {:<12}  {:<18}  {:<16}  {:<36}  code",
        "seq", "time", "kind", "principal", "on behalf of", "case"
    )?;
    for (seq, e, _) in &events {
        writeln!(
            out,
            "{:>6}  {:<30}  {:<12}  {:<18}  {:<16}  {:<36}  {}",
            seq,
            e.ts,
            e.kind.as_str(),
            e.principal.as_deref().unwrap_or("-"),
            e.on_behalf_of.as_deref().unwrap_or("-"),
            e.case_id.as_deref().unwrap_or("-"),
            e.code.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}
