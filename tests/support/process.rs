//! The `case-export` binary as a child process: commands that cannot hang
//! a test, their output as text, and the one-line failures the CLI prints.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_case-export");

/// Watchdog for one command or server start-up: generous, only there so a
/// hung child fails the test instead of hanging CI. Not a timing assertion.
pub const WATCHDOG: Duration = Duration::from_secs(120);

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

/// [`bin`] for async tests: killed if the test fails first, stdout and
/// stderr piped.
pub fn bin_async() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::from(bin());
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
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
pub(super) fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
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
#[track_caller]
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

/// Names in a directory, sorted.
#[track_caller]
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Unix permission bits of a file.
#[track_caller]
pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

/// SHA-256 (hex) of a file.
#[track_caller]
pub fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).expect("read file")))
}

/// Sends SIGTERM to a child of this process.
#[track_caller]
pub fn sigterm(pid: u32) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: kill(2) on our own child's pid, which we have not reaped
    // yet, so the pid cannot have been reused.
    let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(rc, 0, "kill(SIGTERM): {}", std::io::Error::last_os_error());
}

/// `token checkpoint-key --out path`; returns the printed public key.
pub fn checkpoint_key(path: &Path) -> String {
    let o = run(bin().args(["token", "checkpoint-key", "--out"]).arg(path));
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_eq!(mode(path), 0o600);
    let out = stdout_of(&o);
    let pk = out
        .lines()
        .find_map(|l| l.strip_prefix("public key: "))
        .unwrap_or_else(|| panic!("no public key line: {out}"))
        .to_string();
    assert_eq!(pk.len(), 64);
    hex::decode(&pk).expect("hex public key");
    pk
}
