//! `serve`: the config file, then `CASE_EXPORT_*` variables and flags on top.

use super::{CliError, CliResult, LogFormat, harden_process, init_logging, runtime};
use case_export::db::DbLocation;
use case_export::server::{self, Config, ConfigError};
use clap::Args;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Args, Default)]
pub struct ServeArgs {
    /// TOML config file (see deploy/config.example.toml).
    #[arg(long, env = "CASE_EXPORT_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long, env = "CASE_EXPORT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Case database: a SQLite file (opened read-only) or a postgres:// URL.
    #[arg(long, env = "CASE_EXPORT_CASE_DB")]
    pub case_db: Option<DbLocation>,
    /// Custody trail: a SQLite file, or a postgres:// URL shared by replicas.
    #[arg(long, env = "CASE_EXPORT_AUDIT_DB")]
    pub audit_db: Option<DbLocation>,
    /// Plaintext bytes per chunk.
    #[arg(long, env = "CASE_EXPORT_CHUNK_SIZE")]
    pub chunk_size: Option<usize>,
    /// Largest snapshot one export may build, in bytes.
    #[arg(long, env = "CASE_EXPORT_MAX_SNAPSHOT_BYTES")]
    pub max_snapshot_bytes: Option<u64>,
    /// Exports allowed at once.
    #[arg(long, env = "CASE_EXPORT_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// Sealing threads per export (0: one per core).
    #[arg(long, env = "CASE_EXPORT_SEAL_WORKERS")]
    pub seal_workers: Option<usize>,
    /// Names this server in audit events (e.g. the pod name).
    #[arg(long, env = "CASE_EXPORT_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Prometheus /metrics listen address.
    #[arg(long, env = "CASE_EXPORT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Grace period for in-flight exports at shutdown, in seconds.
    #[arg(long, env = "CASE_EXPORT_SHUTDOWN_GRACE_SECS")]
    pub shutdown_grace_secs: Option<u64>,
}

impl ServeArgs {
    /// The file's config with every given flag or variable applied.
    // Long: one override per flag, in the order the help lists them.
    pub fn resolve(&self) -> Result<Config, CliError> {
        // Keys set by a flag or variable: a refusal of those names no line.
        let mut overridden: Vec<&str> = Vec::new();
        let mut c = match &self.config {
            Some(p) => Config::load(p).map_err(|e| CliError::new(e.to_string()))?,
            None => Config::default(),
        };
        if let Some(v) = self.listen {
            overridden.push("listen");
            c.listen = v;
        }
        if let Some(v) = &self.case_db {
            overridden.push("case_db");
            c.case_db = v.clone();
        }
        if let Some(v) = &self.audit_db {
            overridden.push("audit_db");
            c.audit_db = v.clone();
        }
        if let Some(v) = self.chunk_size {
            overridden.push("chunk_size");
            c.chunk_size = v;
        }
        if let Some(v) = self.max_snapshot_bytes {
            overridden.push("max_snapshot_bytes");
            c.max_snapshot_bytes = v;
        }
        if let Some(v) = self.max_in_flight {
            overridden.push("max_in_flight");
            c.max_in_flight = v;
        }
        if let Some(v) = self.seal_workers {
            overridden.push("seal_workers");
            c.seal_workers = v;
        }
        if let Some(v) = &self.instance_id {
            overridden.push("instance_id");
            c.instance_id = v.clone();
        }
        if let Some(v) = self.metrics_listen {
            overridden.push("metrics_listen");
            c.metrics_listen = Some(v);
        }
        if let Some(v) = self.shutdown_grace_secs {
            overridden.push("shutdown_grace_secs");
            c.shutdown_grace_secs = v;
        }
        c.validate().map_err(|e| {
            // Name the line when the refused value came from the file.
            let from_flag =
                matches!(&e, ConfigError::Value { key, .. } if overridden.contains(key));
            let e = match &self.config {
                Some(p) if !from_flag => match std::fs::read_to_string(p) {
                    Ok(text) => e.locate_in(&text),
                    Err(_) => e,
                },
                _ => e,
            };
            CliError::new(e.to_string())
        })?;
        Ok(c)
    }
}

/// Installs the SIGTERM and SIGINT handlers now, so that a signal sent
/// right after the "listening on" line stops the server gracefully instead
/// of killing it, and resolves on either. Call it inside the runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let handlers = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            // No reload exists; a hangup stops gracefully instead of killing.
            signal(SignalKind::hangup()),
        )
    };
    async move {
        #[cfg(unix)]
        match handlers {
            (Ok(mut term), Ok(mut int), Ok(mut hup)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                    _ = hup.recv() => {},
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Binds, announces the bound address on stdout, and serves until a signal.
pub fn serve_config(config: Config) -> CliResult {
    harden_process();
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| CliError::new(format!("cannot listen on {}: {e}", config.listen)))?;
        let addr = listener.local_addr()?;
        // Before the announcement: whoever reads it may signal at once.
        let shutdown = shutdown_signal();
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening on {addr}")?;
        stdout.flush()?;
        server::serve_on(config, listener, shutdown)
            .await
            .map_err(|e| CliError::new(case_export::client::error_chain(&e)))
    })
}

pub fn run(a: ServeArgs, log: LogFormat) -> CliResult {
    init_logging(log);
    let config = a.resolve()?;
    serve_config(config)
}
