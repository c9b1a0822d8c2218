//! Where the case database and the custody trail live: a SQLite file, or a
//! PostgreSQL server named by a `postgres://` URL. Parsing, passwords and
//! connecting are here; what is read or written is in `snapshot` and
//! `audit`.
//!
//! A URL never carries a password: it comes from a file or the
//! environment, so the configuration file can be shared and logged. TLS to
//! the server has libpq's `sslmode=verify-full` meaning (the server's
//! certificate chains to `sslrootcert` and names the host); weaker modes
//! are refused rather than silently encrypting without authenticating.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_postgres::config::SslMode;
use zeroize::Zeroizing;

/// Why a database location or its password was refused.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL does not parse or asks for something unsupported.
    #[error("{0}")]
    Url(String),
    /// The password file could not be read.
    #[error("cannot read the password file {}: {source}", path.display())]
    PasswordFile {
        /// The file named in the configuration.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The CA file for `sslrootcert` could not be used.
    #[error("sslrootcert {}: {message}", path.display())]
    RootCert {
        /// The file named in the URL.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

/// A database: a SQLite file or a PostgreSQL server.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DbLocation {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(PgUrl),
}

impl DbLocation {
    /// Reads a configured value: a `postgres://` or `postgresql://` URL, or
    /// else a SQLite file path.
    pub fn parse(s: &str) -> Result<Self, DbError> {
        if is_pg_url(s) {
            PgUrl::parse(s).map(Self::Postgres)
        } else {
            Ok(Self::Sqlite(PathBuf::from(s)))
        }
    }

    /// The SQLite file, if this is one.
    pub fn sqlite_path(&self) -> Option<&Path> {
        match self {
            Self::Sqlite(p) => Some(p),
            Self::Postgres(_) => None,
        }
    }
}

/// Whether a configured value names a PostgreSQL server.
pub fn is_pg_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

impl From<PathBuf> for DbLocation {
    fn from(p: PathBuf) -> Self {
        Self::Sqlite(p)
    }
}

impl From<&Path> for DbLocation {
    fn from(p: &Path) -> Self {
        Self::Sqlite(p.to_path_buf())
    }
}

impl TryFrom<String> for DbLocation {
    type Error = DbError;
    fn try_from(s: String) -> Result<Self, DbError> {
        Self::parse(&s)
    }
}

impl From<DbLocation> for String {
    fn from(d: DbLocation) -> String {
        d.to_string()
    }
}

impl std::str::FromStr for DbLocation {
    type Err = DbError;
    fn from_str(s: &str) -> Result<Self, DbError> {
        Self::parse(s)
    }
}

impl fmt::Display for DbLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "{}", p.display()),
            Self::Postgres(u) => f.write_str(&u.text),
        }
    }
}

impl fmt::Debug for DbLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// How the connection to PostgreSQL is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgTls {
    /// No TLS (`sslmode=disable`): only for a server on this host or a
    /// network the operator trusts.
    Disable,
    /// TLS; the server's certificate must chain to this CA file and name
    /// the host (`sslmode=verify-full`).
    VerifyFull {
        /// PEM file of the CA certificates to trust.
        root_cert: PathBuf,
    },
}

/// A PostgreSQL URL, checked: no password in it, a supported `sslmode`.
#[derive(Clone)]
pub struct PgUrl {
    /// The URL as configured (it holds no password).
    text: String,
    /// The connection parameters other than TLS and the password (boxed:
    /// large, and configurations are many and rarely read).
    config: Box<tokio_postgres::Config>,
    tls: PgTls,
}

impl PartialEq for PgUrl {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for PgUrl {}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl PgUrl {
    /// Parses a `postgres://user@host:port/dbname?...` URL. `sslmode` is
    /// `disable` or `verify-full` (with `sslrootcert=CA.pem`); without it a
    /// loopback host means `disable` and any other host is refused.
    pub fn parse(s: &str) -> Result<Self, DbError> {
        let bad = |m: String| DbError::Url(m);
        let (base, query) = s.split_once('?').unwrap_or((s, ""));
        let mut kept = Vec::new();
        let (mut mode, mut root_cert) = (None, None);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "sslmode" => mode = Some(v.to_owned()),
                "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(v)?)),
                "password" => return Err(bad(password_in_url())),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| {
            bad(format!(
                "not a usable PostgreSQL URL ({e}); expected postgres://USER@HOST:PORT/DBNAME"
            ))
        })?;
        if config.get_password().is_some() {
            return Err(bad(password_in_url()));
        }
        if config.get_user().is_none() {
            return Err(bad(
                "the PostgreSQL URL names no user: write postgres://USER@HOST/DBNAME".into(),
            ));
        }
        if config.get_dbname().is_none() {
            return Err(bad(
                "the PostgreSQL URL names no database: write postgres://USER@HOST/DBNAME".into(),
            ));
        }
        let loopback = config.get_hosts().iter().all(is_loopback_host);
        let tls = match (mode.as_deref(), root_cert) {
            (Some("verify-full"), Some(root_cert)) => PgTls::VerifyFull { root_cert },
            (Some("verify-full"), None) => {
                return Err(bad(
                    "sslmode=verify-full needs sslrootcert=PATH, the CA file that signed the server's certificate".into(),
                ));
            }
            (Some("disable"), _) => PgTls::Disable,
            (None, None) if loopback => PgTls::Disable,
            (None, _) => {
                return Err(bad(
                    "a PostgreSQL server off this host needs sslmode=verify-full&sslrootcert=CA.pem \
                     (or sslmode=disable to send case data unencrypted)"
                        .into(),
                ));
            }
            (Some(other), _) => {
                return Err(bad(format!(
                    "sslmode={other} is not supported: use verify-full (with sslrootcert) to \
                     encrypt and authenticate the server, or disable"
                )));
            }
        };
        config.ssl_mode(match tls {
            PgTls::Disable => SslMode::Disable,
            PgTls::VerifyFull { .. } => SslMode::Require,
        });
        Ok(Self {
            text: s.to_owned(),
            config: Box::new(config),
            tls,
        })
    }

    /// The URL as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// How the connection is protected.
    pub fn tls(&self) -> &PgTls {
        &self.tls
    }

    /// The database name.
    pub fn dbname(&self) -> &str {
        self.config.get_dbname().unwrap_or_default()
    }

    /// The user name.
    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or_default()
    }

    /// A connector with the password (if any) and the TLS settings loaded.
    pub fn connector(
        &self,
        password: Option<Zeroizing<String>>,
        connect_timeout: Duration,
        application_name: &str,
    ) -> Result<PgConnector, DbError> {
        let mut config = (*self.config).clone();
        if let Some(p) = &password {
            config.password(p.as_bytes());
        }
        config.connect_timeout(connect_timeout);
        config.application_name(application_name);
        // A dead peer must not hold an export until the kernel gives up.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(rustls_config(&self.tls)?);
        Ok(PgConnector {
            config,
            tls,
            label: self.text.clone(),
        })
    }
}

fn password_in_url() -> String {
    "the PostgreSQL URL carries a password: remove it and put the password in the \
     configured password file or its environment variable"
        .into()
}

fn is_loopback_host(h: &tokio_postgres::config::Host) -> bool {
    match h {
        tokio_postgres::config::Host::Tcp(name) => {
            name == "localhost"
                || name
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        tokio_postgres::config::Host::Unix(_) => true,
    }
}

fn percent_decode(s: &str) -> Result<String, DbError> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| DbError::Url(format!("bad percent-escape in {s:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| DbError::Url(format!("{s:?} is not UTF-8")))
}

fn rustls_config(tls: &PgTls) -> Result<tokio_rustls::rustls::ClientConfig, DbError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let PgTls::VerifyFull { root_cert } = tls {
        let err = |message: String| DbError::RootCert {
            path: root_cert.clone(),
            message,
        };
        let pem = std::fs::read(root_cert).map_err(|e| err(e.to_string()))?;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| err(format!("not a PEM certificate: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| err(format!("unusable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(err("holds no certificate".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Url(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Where a database password comes from: a file named in the
/// configuration, else an environment variable, else none (trust or
/// certificate authentication).
#[derive(Debug, Clone)]
pub struct PasswordSource<'a> {
    /// A file holding the password (one line; a trailing newline is cut).
    pub file: Option<&'a Path>,
    /// The environment variable read when no file is set.
    pub env: &'a str,
}

impl PasswordSource<'_> {
    /// Reads the password; it never reaches a log or an error message.
    pub fn resolve(&self) -> Result<Option<Zeroizing<String>>, DbError> {
        if let Some(path) = self.file {
            let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
                DbError::PasswordFile {
                    path: path.to_path_buf(),
                    source,
                }
            })?);
            let line = text.trim_end_matches(['\r', '\n']);
            return Ok(Some(Zeroizing::new(line.to_owned())));
        }
        Ok(std::env::var(self.env).ok().map(Zeroizing::new))
    }
}

/// Opens connections to one PostgreSQL database.
#[derive(Clone)]
pub struct PgConnector {
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    label: String,
}

impl fmt::Debug for PgConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The config holds the password: show the URL only.
        f.debug_struct("PgConnector")
            .field("url", &self.label)
            .finish_non_exhaustive()
    }
}

impl PgConnector {
    /// One connection; its I/O runs on a spawned task until the client is
    /// dropped.
    pub async fn connect(&self) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = self.config.connect(self.tls.clone()).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    /// A bounded pool of connections, checked on reuse.
    pub fn pool(&self, max_size: usize) -> deadpool_postgres::Pool {
        let manager = deadpool_postgres::Manager::from_config(
            self.config.clone(),
            self.tls.clone(),
            // Checked with a query before reuse. An export's transaction
            // dropped unfinished is rolled back by tokio-postgres, in order,
            // before the next statement on that connection.
            deadpool_postgres::ManagerConfig {
                recycling_method: deadpool_postgres::RecyclingMethod::Verified,
            },
        );
        deadpool_postgres::Pool::builder(manager)
            .max_size(max_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .expect("a pool with a runtime and a size always builds")
    }

    /// The URL this connector was made from (no password).
    pub fn url(&self) -> &str {
        &self.label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths_and_pg_urls() {
        assert_eq!(
            DbLocation::parse("data/cases.db").unwrap(),
            DbLocation::Sqlite("data/cases.db".into())
        );
        let pg = DbLocation::parse("postgres://reader@127.0.0.1:5432/cases").unwrap();
        let DbLocation::Postgres(u) = &pg else {
            panic!("not postgres")
        };
        assert_eq!(u.tls(), &PgTls::Disable);
        assert_eq!(u.dbname(), "cases");
        assert_eq!(u.user(), "reader");
        assert_eq!(pg.to_string(), "postgres://reader@127.0.0.1:5432/cases");
    }

    #[test]
    fn passwords_in_urls_are_refused_without_echo() {
        for url in [
            "postgres://reader:hunter2@127.0.0.1/cases",
            "postgresql://reader@127.0.0.1/cases?password=hunter2",
        ] {
            let e = DbLocation::parse(url).unwrap_err().to_string();
            assert!(e.contains("password file"), "{e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
    }

    #[test]
    fn remote_hosts_need_verified_tls() {
        let e = PgUrl::parse("postgres://r@db.example/cases").unwrap_err();
        assert!(e.to_string().contains("verify-full"), "{e}");
        for mode in ["require", "prefer", "verify-ca"] {
            let e =
                PgUrl::parse(&format!("postgres://r@db.example/cases?sslmode={mode}")).unwrap_err();
            assert!(e.to_string().contains(&format!("sslmode={mode}")), "{e}");
        }
        let e = PgUrl::parse("postgres://r@db.example/cases?sslmode=verify-full").unwrap_err();
        assert!(e.to_string().contains("sslrootcert"), "{e}");
        let u = PgUrl::parse(
            "postgres://r@db.example/cases?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            u.tls(),
            &PgTls::VerifyFull {
                root_cert: "/etc/ca.pem".into()
            }
        );
        assert!(PgUrl::parse("postgres://r@db.example/cases?sslmode=disable").is_ok());
    }

    #[test]
    fn urls_without_user_or_database_are_refused() {
        assert!(PgUrl::parse("postgres://127.0.0.1/cases").is_err());
        assert!(PgUrl::parse("postgres://r@127.0.0.1").is_err());
    }

    #[test]
    fn password_file_is_trimmed_and_debug_hides_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "s3cret-pass\n").unwrap();
        let src = PasswordSource {
            file: Some(&f),
            env: "CASE_EXPORT_TEST_UNSET_PASSWORD_VAR",
        };
        let pw = src.resolve().unwrap().unwrap();
        assert_eq!(pw.as_str(), "s3cret-pass");
        let url = PgUrl::parse("postgres://r@127.0.0.1/cases").unwrap();
        let c = url
            .connector(Some(pw), Duration::from_secs(1), "test")
            .unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
