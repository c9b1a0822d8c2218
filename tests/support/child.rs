//! `case-export serve` as a child process that cannot outlive its test.

use super::principals::principals_toml;
use super::process::{BIN, WATCHDOG, bin, sigterm, wait_bounded};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

static SERVER_SEQ: AtomicUsize = AtomicUsize::new(0);

/// A config file naming the principal set, `dir/config-N.toml`. Top-level
/// keys go before it; tables (`[audit]`...) may be appended.
pub fn write_test_config(dir: &Path, n: usize) -> PathBuf {
    write_config(&dir.join(format!("config-{n}.toml")), "")
}

/// Writes `top` (top-level keys) and the principal set to `path`.
pub fn write_config(path: &Path, top: &str) -> PathBuf {
    std::fs::write(path, format!("{top}\n{}", principals_toml())).expect("write test config");
    path.to_path_buf()
}

/// A running `case-export serve`; killed (SIGKILL) and reaped on drop unless
/// [`ServerProcess::terminate`] already stopped it.
pub struct ServerProcess {
    child: Option<Child>,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl ServerProcess {
    /// Starts `serve --listen 127.0.0.1:0` on `case_db` with the principal
    /// set, keeping its config, audit database and stderr log in `dir`, and
    /// waits for its `listening on ADDR` line. `extra` goes after the
    /// standard flags.
    pub fn start(case_db: &Path, dir: &Path, extra: &[&str]) -> Self {
        let n = SERVER_SEQ.fetch_add(1, Ordering::SeqCst);
        let config = write_test_config(dir, n);
        let audit_db = dir.join(format!("audit-{n}.db"));
        Self::start_custom(&config, case_db, &audit_db, dir, extra, |_| {})
    }

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

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// The file the server's stderr goes to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The server's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the server to exit (bounded by the
    /// watchdog); returns its exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        sigterm(child.id());
        match wait_bounded(&mut child, WATCHDOG) {
            Some(s) => s,
            None => panic!(
                "server ignored SIGTERM for {WATCHDOG:?}: killed\nlog:\n{}",
                self.log_text()
            ),
        }
    }

    /// Kills the server with SIGKILL (no shutdown work at all) and reaps it.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL the server");
            let _ = c.wait();
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
