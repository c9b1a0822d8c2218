//! Command-line interface: one file per subcommand.

mod audit;
mod demo;
mod export;
mod keyinput;
mod open;
mod seed;
mod serve;
mod token;
mod verify;

use clap::{Parser, Subcommand, ValueEnum};
use std::fmt;
use std::io::{Read, Write};
use std::path::Path;
use zeroize::Zeroizing;

/// Sealed offline copies of investigation cases.
#[derive(Debug, Parser)]
#[command(name = "case-export", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gRPC export server.
    Serve(serve::ServeArgs),
    /// Seed a demo case database if needed and run the server on loopback.
    Demo(demo::DemoArgs),
    /// Export a case from a server into an `.enc` file.
    Export(export::ExportArgs),
    /// Decrypt and verify an `.enc` file into a SQLite database file.
    Open(open::OpenArgs),
    /// Decrypt and verify an `.enc` file in memory and show what it holds.
    View(open::ViewArgs),
    /// Create a database of synthetic demo cases.
    SeedDemo(seed::SeedArgs),
    /// Verify or list the custody trail.
    Audit(audit::AuditArgs),
    /// Make service tokens and checkpoint keys.
    Token(token::TokenArgs),
    /// Check an `.enc` file against its signed receipt, without the key.
    Verify(verify::VerifyArgs),
}

/// An error for the user: one line, already saying what to do.
#[derive(Debug)]
pub struct CliError {
    message: String,
    broken_pipe: bool,
}

impl CliError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            broken_pipe: false,
        }
    }

    pub fn is_broken_pipe(&self) -> bool {
        self.broken_pipe
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        Self {
            broken_pipe: e.kind() == std::io::ErrorKind::BrokenPipe,
            message: e.to_string(),
        }
    }
}

pub type CliResult = Result<(), CliError>;

/// Runs a subcommand; `Ok` carries the exit status.
pub fn run(cli: Cli) -> Result<u8, CliError> {
    let ok = |r: CliResult| r.map(|_| 0);
    match cli.command {
        Command::Serve(a) => ok(serve::run(a, cli.log_format)),
        Command::Demo(a) => ok(demo::run(a, cli.log_format)),
        Command::Export(a) => ok(export::run(a)),
        Command::Open(a) => ok(open::run_open(a)),
        Command::View(a) => ok(open::run_view(a)),
        Command::SeedDemo(a) => ok(seed::run(a)),
        Command::Audit(a) => audit::run(a),
        Command::Token(a) => ok(token::run(a)),
        Command::Verify(a) => verify::run(a),
    }
}

/// Creates `path` with mode 0600 (never replacing a file) and writes `bytes`.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Largest key or token file read: either is one short line.
pub const SECRET_FILE_MAX: usize = 4096;

/// `secret` and a newline in a zeroizing buffer sized once, for writing a
/// key or token without leaving a formatted copy behind.
pub fn secret_line(secret: &str) -> Zeroizing<Vec<u8>> {
    let mut line = Zeroizing::new(Vec::with_capacity(secret.len() + 1));
    line.extend_from_slice(secret.as_bytes());
    line.push(b'\n');
    line
}

/// Prints a key or token and a newline on stdout, straight to the file
/// descriptor: stdout's own buffer lives as long as the process and is
/// never wiped.
pub fn print_secret_line(secret: &str) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    let line = secret_line(secret);
    let mut stdout = std::io::stdout().lock();
    // Whatever was printed before comes first.
    stdout.flush()?;
    let mut raw = std::fs::File::from(stdout.as_fd().try_clone_to_owned()?);
    raw.write_all(&line)
}

/// Reads a key or token of at most [`SECRET_FILE_MAX`] bytes into one
/// zeroizing buffer allocated up front, so no reallocation or reader buffer
/// keeps a copy, and returns it trimmed. `one_line` stops at the first
/// newline (for a terminal, where end of file needs a Ctrl-D). `None` when
/// the input is longer, or not text.
pub fn read_secret(mut r: impl Read, one_line: bool) -> std::io::Result<Option<Zeroizing<String>>> {
    let mut buf = Zeroizing::new(vec![0u8; SECRET_FILE_MAX + 1]);
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                if one_line && buf[filled - n..filled].contains(&b'\n') {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let mut end = filled;
    if one_line && let Some(i) = buf[..filled].iter().position(|&b| b == b'\n') {
        end = i;
    }
    if end > SECRET_FILE_MAX {
        return Ok(None);
    }
    let Ok(text) = std::str::from_utf8(&buf[..end]) else {
        return Ok(None);
    };
    let text = text.trim();
    let mut out = Zeroizing::new(String::with_capacity(text.len()));
    out.push_str(text);
    Ok(Some(out))
}

/// [`read_secret`] on a file; `what` names it in errors ("key file").
pub fn read_secret_file(path: &Path, what: &str) -> Result<Zeroizing<String>, CliError> {
    let cannot =
        |e: std::io::Error| CliError::new(format!("cannot read {what} {}: {e}", path.display()));
    let f = std::fs::File::open(path).map_err(cannot)?;
    read_secret(f, false).map_err(cannot)?.ok_or_else(|| {
        CliError::new(format!(
            "{} is not a {what}: expected one line of text of at most {SECRET_FILE_MAX} bytes",
            path.display()
        ))
    })
}

/// Keeps keys out of core dumps and away from ptrace on Linux. Every
/// command that holds a key or a token calls it first.
pub fn harden_process() {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on this process with valid arguments.
    unsafe {
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::setrlimit(libc::RLIMIT_CORE, &zero) != 0 {
            tracing::warn!("could not disable core dumps");
        }
        if libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) != 0 {
            tracing::warn!("could not mark the process non-dumpable");
        }
    }
}

/// Sets up `tracing` on stderr; `RUST_LOG` overrides the default level.
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: journals and files get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

/// A multi-threaded runtime for the async subcommands.
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(format!("cannot start the async runtime: {e}")))
}
