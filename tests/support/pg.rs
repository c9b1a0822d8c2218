//! PostgreSQL for the tests: the machine's server, named by
//! `CASE_EXPORT_TEST_PG` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//! and a database of each test's own, dropped (with its roles) when the
//! guard drops. Where the server cannot be reached the test fails saying
//! how to provide one; it is skipped only when `CASE_EXPORT_SKIP_PG=1`.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The server the tests use.
pub const PG_ENV: &str = "CASE_EXPORT_TEST_PG";
/// Set to 1 to skip the PostgreSQL tests explicitly.
pub const SKIP_PG_ENV: &str = "CASE_EXPORT_SKIP_PG";
const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/postgres";

static SKIPPED: AtomicUsize = AtomicUsize::new(0);
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The admin URL of the test server.
pub fn pg_admin_url() -> String {
    std::env::var(PG_ENV).unwrap_or_else(|_| DEFAULT_PG.to_owned())
}

fn skipping(what: &str) -> bool {
    if std::env::var(SKIP_PG_ENV).is_ok_and(|v| v == "1") {
        let n = SKIPPED.fetch_add(1, Ordering::SeqCst) + 1;
        eprintln!(
            "SKIPPED {what}: {SKIP_PG_ENV}=1 is set ({n} PostgreSQL test(s) skipped so far in this run)"
        );
        return true;
    }
    false
}

/// Opens one connection to `url`; its I/O runs on a spawned task.
pub async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to PostgreSQL at {url}: {e}\n\
                 The PostgreSQL tests need a server: start one (trust authentication for \
                 user postgres on 127.0.0.1:5432), or set {PG_ENV} to the URL of another, \
                 or set {SKIP_PG_ENV}=1 to skip them"
            )
        });
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A database of the test's own on the test server.
pub struct PgDb {
    /// Its name.
    pub name: String,
    /// A URL naming it, as the admin user.
    pub url: String,
    admin: String,
    roles: std::sync::Mutex<Vec<String>>,
}

impl PgDb {
    /// Creates a fresh database; `None` when the tests are skipped
    /// explicitly. `hint` goes into the name, for whoever looks at the
    /// server while a test runs.
    pub async fn create(hint: &str) -> Option<Self> {
        if skipping(hint) {
            return None;
        }
        let admin = pg_admin_url();
        let name = format!(
            "ce_test_{}_{}_{}",
            hint.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let client = pg_connect(&admin).await;
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let url = with_dbname(&admin, &name);
        Some(Self {
            name,
            url,
            admin,
            roles: Default::default(),
        })
    }

    /// A connection to this database as the admin user.
    pub async fn connect(&self) -> tokio_postgres::Client {
        pg_connect(&self.url).await
    }

    /// Runs SQL statements as the admin user.
    pub async fn execute(&self, sql: &str) {
        self.connect()
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{e}: {}", e.as_db_error().map_or("", |d| d.message())));
    }

    /// A login role of this database's own (dropped with it) that may
    /// connect and use schema `public` and nothing else yet; returns its
    /// name and a URL connecting as it.
    pub async fn role(&self, suffix: &str) -> (String, String) {
        let role = format!("{}_{suffix}", self.name);
        self.execute(&format!(
            "CREATE ROLE \"{role}\" LOGIN; \
             GRANT CONNECT ON DATABASE \"{db}\" TO \"{role}\"; \
             GRANT USAGE ON SCHEMA public TO \"{role}\";",
            db = self.name
        ))
        .await;
        self.roles.lock().unwrap().push(role.clone());
        let url = with_user(&self.url, &role);
        (role, url)
    }

    /// A role that may only read the given tables (`SELECT`, nothing
    /// else): the least privilege docs/OPERATIONS.md gives the export
    /// service. Returns a URL connecting as it.
    pub async fn reader(&self, suffix: &str, tables: &[&str]) -> String {
        let (role, url) = self.role(suffix).await;
        for t in tables {
            self.execute(&format!("GRANT SELECT ON \"{t}\" TO \"{role}\""))
                .await;
        }
        url
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        let roles = std::mem::take(&mut *self.roles.lock().unwrap_or_else(|e| e.into_inner()));
        // Drop may run inside a runtime: clean up on a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok((client, conn)) =
                    tokio_postgres::connect(&admin, tokio_postgres::NoTls).await
                else {
                    return;
                };
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                let _ = client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await;
                for r in roles {
                    let _ = client
                        .batch_execute(&format!("DROP ROLE IF EXISTS \"{r}\""))
                        .await;
                }
            });
        })
        .join();
    }
}

/// `url` with its database name replaced.
pub fn with_dbname(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{host_part}/{db}{query}")
}

/// `url` with its user replaced (and no password).
pub fn with_user(url: &str, user: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let host = match rest.split_once('@') {
        Some((_, h)) => h,
        None => rest,
    };
    format!("{}{user}@{host}", &url[..scheme_end])
}
