//! The `case-export` command line, run as a real process: exit statuses,
//! exact error lines, file modes, and what `view` and `export` print.
//!
//! `.enc` fixtures for `open` and `view` are sealed with the library from a
//! real snapshot of a seeded database (`support::seal_case`); the `export`
//! scenarios run against a real `serve` child.

use crate::support::{
    ANALYST, Sealed, SeededDb, ServerProcess, TOKEN, bin, dir_entries, free_loopback_addr, mode,
    one_error_line, run, seal_case, seeded_db, sha256_file, small_seed, stderr_of, stdout_of,
};
use case_export::seal::{KEY_WARNING, OpenError, SecretKey, open_reader};
use case_export::snapshot::SnapshotView;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use tempfile::TempDir;

/// A seeded database and one of its cases sealed into `DIR/case.enc`, with
/// the key in `DIR/case.key` (key + newline, as `export --key-out` writes).
struct Fixture {
    dir: TempDir,
    sealed: Sealed,
    key_file: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let SeededDb {
            dir,
            path,
            case_ids,
            ..
        } = seeded_db(&small_seed());
        let sealed = seal_case(&path, &case_ids[0], &dir.path().join("case.enc"));
        let key_file = dir.path().join("case.key");
        std::fs::write(&key_file, format!("{}\n", sealed.key)).unwrap();
        Self {
            dir,
            sealed,
            key_file,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An empty directory for `--out` files, so leftovers show.
    fn out_dir(&self) -> PathBuf {
        let p = self.path("out");
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

fn write_key_file(path: &Path, key: &str) {
    std::fs::write(path, format!("{key}\n")).unwrap();
}

fn fresh_key() -> String {
    SecretKey::generate()
        .unwrap()
        .expose_fernet_key()
        .to_string()
}

/// Opens an `.enc` with the library and returns the snapshot's case id.
fn open_with_library(enc: &Path, key: &str) -> (case_export::seal::Opened, String) {
    let key = SecretKey::from_fernet_key(key).expect("a Fernet key");
    let opened = open_reader(
        BufReader::new(std::fs::File::open(enc).unwrap()),
        &key,
        1 << 30,
    )
    .expect("the .enc opens");
    let case_id = SnapshotView::open(&opened.plaintext)
        .unwrap()
        .manifest()
        .unwrap()
        .case_id;
    (opened, case_id)
}

/// Asserts `p` is a SQLite database that passes `PRAGMA integrity_check`
/// and is a snapshot of `case_id`.
fn assert_snapshot_db(p: &Path, case_id: &str) {
    let conn = rusqlite::Connection::open_with_flags(p, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let got: String = conn
        .query_row("SELECT case_id FROM _export_manifest", [], |r| r.get(0))
        .unwrap();
    assert_eq!(got, case_id);
}

// ---------------------------------------------------------------------------
// open: failures

#[test]
fn open_with_wrong_key_says_authentication_failed_in_one_line() {
    let f = Fixture::new();
    let out_dir = f.out_dir();
    let wrong = f.path("wrong.key");
    write_key_file(&wrong, &fresh_key());
    let o = run(bin()
        .arg("open")
        .arg(&f.sealed.enc)
        .arg("--out")
        .arg(out_dir.join("case.db"))
        .arg("--key-file")
        .arg(&wrong));
    let line = one_error_line(&o);
    assert!(
        line.contains("chunk 0 failed authentication: wrong key or corrupted file"),
        "{line}"
    );
    assert_eq!(
        line,
        format!(
            "case-export: {}: {}",
            f.sealed.enc.display(),
            OpenError::Auth { index: 0 }
        )
    );
    assert!(stdout_of(&o).is_empty());
    assert_eq!(
        dir_entries(&out_dir),
        Vec::<String>::new(),
        "nothing written"
    );
}

#[test]
fn open_missing_file_names_the_file() {
    let f = Fixture::new();
    let out_dir = f.out_dir();
    let missing = f.path("no-such-export.enc");
    let o = run(bin()
        .arg("open")
        .arg(&missing)
        .arg("--out")
        .arg(out_dir.join("case.db"))
        .env("CASE_EXPORT_KEY", &f.sealed.key));
    let line = one_error_line(&o);
    let prefix = format!("case-export: cannot open {}: ", missing.display());
    assert!(line.starts_with(&prefix), "{line}");
    assert!(line.contains("No such file or directory"), "{line}");
    assert_eq!(dir_entries(&out_dir), Vec::<String>::new());
}

#[test]
fn open_with_malformed_key_says_it_is_not_a_fernet_key() {
    let f = Fixture::new();
    let out_dir = f.out_dir();
    let bad_text = "not-a-key-Zq9";
    let expected = format!(
        "case-export: {}",
        SecretKey::from_fernet_key(bad_text).unwrap_err()
    );
    // From the environment and from a key file: the same line, and the
    // bad key text is never echoed.
    let bad_file = f.path("bad.key");
    write_key_file(&bad_file, bad_text);
    for via_file in [false, true] {
        let mut cmd = bin();
        cmd.arg("open")
            .arg(&f.sealed.enc)
            .arg("--out")
            .arg(out_dir.join("case.db"));
        if via_file {
            cmd.arg("--key-file").arg(&bad_file);
        } else {
            cmd.env("CASE_EXPORT_KEY", bad_text);
        }
        let o = run(&mut cmd);
        let line = one_error_line(&o);
        assert!(line.contains("the key is not a Fernet key"), "{line}");
        assert_eq!(line, expected);
        assert!(!line.contains(bad_text), "key text echoed: {line}");
    }
    assert_eq!(dir_entries(&out_dir), Vec::<String>::new());
}

#[test]
fn open_without_any_key_source_says_how_to_give_one() {
    let f = Fixture::new();
    let out_dir = f.out_dir();
    // `bin()` removes CASE_EXPORT_KEY and gives a null stdin (not a tty).
    let o = run(bin()
        .arg("open")
        .arg(&f.sealed.enc)
        .arg("--out")
        .arg(out_dir.join("case.db")));
    let line = one_error_line(&o);
    assert!(
        line.contains("--key-file") && line.contains("CASE_EXPORT_KEY"),
        "{line}"
    );
    assert_eq!(
        line,
        "case-export: no key given: pass --key-file PATH or set CASE_EXPORT_KEY"
    );
    assert_eq!(dir_entries(&out_dir), Vec::<String>::new());
}

#[test]
fn open_truncated_file_says_truncated() {
    let f = Fixture::new();
    let out_dir = f.out_dir();
    let text = std::fs::read_to_string(&f.sealed.enc).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len() as u64, f.sealed.chunks);
    let cut = f.path("cut.enc");
    std::fs::write(&cut, format!("{}\n", lines[..lines.len() - 1].join("\n"))).unwrap();
    let o = run(bin()
        .arg("open")
        .arg(&cut)
        .arg("--out")
        .arg(out_dir.join("case.db"))
        .arg("--key-file")
        .arg(&f.key_file));
    let line = one_error_line(&o);
    assert_eq!(
        line,
        format!(
            "case-export: {}: file ends before the final chunk: truncated export",
            cut.display()
        )
    );
    assert!(line.ends_with(&OpenError::Truncated.to_string()));
    assert_eq!(dir_entries(&out_dir), Vec::<String>::new());
}

// ---------------------------------------------------------------------------
// open: writing the database

#[test]
fn open_out_refuses_existing_file_unless_forced() {
    use std::os::unix::fs::PermissionsExt;
    let f = Fixture::new();
    let out_dir = f.out_dir();
    let out = out_dir.join("case.db");
    std::fs::write(&out, b"precious, not to be overwritten\n").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o644)).unwrap();
    let before = std::fs::read(&out).unwrap();

    let open = |force: bool| {
        let mut cmd = bin();
        cmd.arg("open")
            .arg(&f.sealed.enc)
            .arg("--out")
            .arg(&out)
            .arg("--key-file")
            .arg(&f.key_file);
        if force {
            cmd.arg("--force");
        }
        run(&mut cmd)
    };

    let o = open(false);
    let line = one_error_line(&o);
    assert_eq!(
        line,
        format!(
            "case-export: {} already exists: choose another --out or pass --force",
            out.display()
        )
    );
    assert_eq!(std::fs::read(&out).unwrap(), before, "file unchanged");
    assert_eq!(mode(&out), 0o644);

    let o = open(true);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_eq!(stderr_of(&o), "");
    assert_eq!(
        stdout_of(&o),
        format!(
            "wrote {} ({} bytes): case {}, export {}, {} chunks verified\n",
            out.display(),
            f.sealed.plaintext_len,
            f.sealed.case_id,
            f.sealed.export_id,
            f.sealed.chunks
        )
    );
    assert_eq!(sha256_file(&out), f.sealed.plaintext_sha256, "replaced");
    assert_eq!(mode(&out), 0o600, "decrypted database is private");
    assert_snapshot_db(&out, &f.sealed.case_id);
    assert_eq!(dir_entries(&out_dir), vec!["case.db"], "no temp file left");
}

// ---------------------------------------------------------------------------
// view and key sources

/// Parses the `rows per table:` section of `view`'s output.
fn view_counts(stdout: &str) -> Vec<(String, u64)> {
    let mut lines = stdout.lines().skip_while(|l| *l != "rows per table:");
    assert_eq!(lines.next(), Some("rows per table:"), "{stdout}");
    lines
        .map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(parts.len(), 2, "unexpected count line {l:?}");
            (parts[0].to_string(), parts[1].parse().unwrap())
        })
        .collect()
}

#[test]
fn view_prints_manifest_and_counts_and_writes_nothing() {
    let f = Fixture::new();
    let cwd = tempfile::tempdir().unwrap();
    let fixture_before = dir_entries(f.dir.path());
    let o = run(bin()
        .current_dir(cwd.path())
        .arg("view")
        .arg(&f.sealed.enc)
        .arg("--key-file")
        .arg(&f.key_file));
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_eq!(stderr_of(&o), "");
    let out = stdout_of(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.contains(&format!("export     {}", f.sealed.export_id).as_str()),
        "{out}"
    );
    assert!(
        lines.contains(&format!("case       {}", f.sealed.case_id).as_str()),
        "{out}"
    );
    assert!(
        lines.contains(
            &format!(
                "verified   {} chunks, {} bytes",
                f.sealed.chunks, f.sealed.plaintext_len
            )
            .as_str()
        ),
        "{out}"
    );
    assert!(lines.contains(&"cases row:"), "{out}");
    assert!(
        lines
            .iter()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["id", &f.sealed.case_id]),
        "{out}"
    );
    assert!(!out.contains("manifest differs"), "{out}");
    assert_eq!(view_counts(&out), f.sealed.row_counts);
    assert!(!out.contains(&f.sealed.key), "the key is not shown");

    assert_eq!(
        dir_entries(cwd.path()),
        Vec::<String>::new(),
        "view wrote a file"
    );
    assert_eq!(dir_entries(f.dir.path()), fixture_before);
}

#[test]
fn key_from_key_file_and_from_environment_both_work() {
    let f = Fixture::new();
    let view = |by_file: bool, env_key: Option<&str>| {
        let mut cmd = bin();
        cmd.arg("view").arg(&f.sealed.enc);
        if by_file {
            cmd.arg("--key-file").arg(&f.key_file);
        }
        if let Some(k) = env_key {
            cmd.env("CASE_EXPORT_KEY", k);
        }
        let o = run(&mut cmd);
        assert!(o.status.success(), "by_file={by_file}: {}", stderr_of(&o));
        stdout_of(&o)
    };
    let by_file = view(true, None);
    let by_env = view(false, Some(&f.sealed.key));
    assert_eq!(by_file, by_env);
    assert_eq!(view_counts(&by_file), f.sealed.row_counts);
    // Surrounding whitespace in the variable is ignored, like in a file.
    assert_eq!(view(false, Some(&format!("  {}\n", f.sealed.key))), by_env);
    // --key-file wins over the environment.
    assert_eq!(view(true, Some(&fresh_key())), by_file);

    // open with the key from the environment.
    let out = f.out_dir().join("from-env.db");
    let o = run(bin()
        .arg("open")
        .arg(&f.sealed.enc)
        .arg("--out")
        .arg(&out)
        .env("CASE_EXPORT_KEY", &f.sealed.key));
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_eq!(mode(&out), 0o600);
    assert_eq!(sha256_file(&out), f.sealed.plaintext_sha256);
    assert_snapshot_db(&out, &f.sealed.case_id);
}

// ---------------------------------------------------------------------------
// export against a running server

struct ServerFixture {
    dir: TempDir,
    case_id: String,
    server: ServerProcess,
}

fn server_fixture() -> ServerFixture {
    let db = seeded_db(&small_seed());
    let server = ServerProcess::start(&db.path, db.dir.path(), &[]);
    ServerFixture {
        case_id: db.case_ids[0].clone(),
        dir: db.dir,
        server,
    }
}

/// The `exported case ...` line; returns the `.enc` path it names.
fn check_exported_line(stderr: &str, case_id: &str, out_dir: &Path) -> PathBuf {
    let enc = out_dir.join(format!("case_offline_{case_id}.enc"));
    let prefix = format!("exported case {case_id} to {} (", enc.display());
    let line = stderr
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no `{prefix}` line in stderr:\n{stderr}"));
    let digest = sha256_file(&enc);
    assert!(
        line.ends_with(&format!(" bytes, sha256 {digest})")),
        "{line}"
    );
    assert_eq!(mode(&enc), 0o600, ".enc is private");
    enc
}

#[test]
fn export_with_key_out_writes_only_the_key_to_a_private_file() {
    let s = server_fixture();
    let out_dir = s.dir.path().join("exports");
    std::fs::create_dir(&out_dir).unwrap();
    let key_out = s.dir.path().join("export.key");
    let export = || {
        run(bin()
            .arg("export")
            .env("CASE_EXPORT_TOKEN", TOKEN)
            .env("CASE_EXPORT_ON_BEHALF_OF", ANALYST)
            .env("CASE_EXPORT_TOKEN", TOKEN)
            .env("CASE_EXPORT_ON_BEHALF_OF", ANALYST)
            .args(["--server", &s.server.url()])
            .args(["--case", &s.case_id])
            .args(["--purpose", "T-CLI key-out"])
            .arg("--out")
            .arg(&out_dir)
            .arg("--key-out")
            .arg(&key_out))
    };
    let o = export();
    let err = stderr_of(&o);
    assert!(o.status.success(), "{err}");
    assert_eq!(stdout_of(&o), "", "nothing on stdout");
    assert!(err.contains("Store this key securely"), "{err}");
    assert!(
        err.contains(&format!(
            "key written to {} (mode 0600). {KEY_WARNING}",
            key_out.display()
        )),
        "{err}"
    );
    assert_eq!(mode(&key_out), 0o600);
    let content = std::fs::read_to_string(&key_out).unwrap();
    let key = content.strip_suffix('\n').expect("key ends with a newline");
    assert_eq!(key.len(), 44, "only the key: {content:?}");
    assert!(!key.contains(char::is_whitespace));
    assert!(!err.contains(key), "key leaked to stderr");

    let enc = check_exported_line(&err, &s.case_id, &out_dir);
    let (_, case) = open_with_library(&enc, key);
    assert_eq!(case, s.case_id);
    assert!(!s.server.log_text().contains(key), "key leaked to the log");

    // A second export never overwrites the key file.
    let o = export();
    let line = one_error_line(&o);
    assert_eq!(
        line,
        format!(
            "case-export: {} already exists: choose another --key-out",
            key_out.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&key_out).unwrap(), content);
}

#[test]
fn export_without_key_out_prints_the_key_once_on_stdout() {
    let s = server_fixture();
    let out_dir = s.dir.path().join("exports");
    std::fs::create_dir(&out_dir).unwrap();
    let o = run(bin()
        .arg("export")
        .env("CASE_EXPORT_TOKEN", TOKEN)
        .env("CASE_EXPORT_ON_BEHALF_OF", ANALYST)
        .args(["--server", &s.server.url()])
        .args(["--case", &s.case_id])
        .args(["--purpose", "T-CLI stdout"])
        .arg("--out")
        .arg(&out_dir));
    let err = stderr_of(&o);
    assert!(o.status.success(), "{err}");
    let out = stdout_of(&o);
    let key = out.strip_suffix('\n').expect("one line on stdout");
    assert!(!key.contains('\n'), "stdout is exactly one line: {out:?}");
    assert_eq!(key.len(), 44, "{out:?}");
    assert!(SecretKey::from_fernet_key(key).is_ok());
    assert_eq!(out.matches(key).count(), 1);
    assert!(!err.contains(key), "key also on stderr");
    assert!(err.contains(KEY_WARNING), "{err}");

    let enc = check_exported_line(&err, &s.case_id, &out_dir);
    let (_, case) = open_with_library(&enc, key);
    assert_eq!(case, s.case_id);
    assert_eq!(dir_entries(&out_dir).len(), 1, "only the .enc");
}

#[test]
fn export_of_unknown_case_says_case_not_found() {
    let s = server_fixture();
    let out_dir = s.dir.path().join("exports");
    std::fs::create_dir(&out_dir).unwrap();
    let o = run(bin()
        .arg("export")
        .env("CASE_EXPORT_TOKEN", TOKEN)
        .env("CASE_EXPORT_ON_BEHALF_OF", ANALYST)
        .args(["--server", &s.server.url()])
        .args(["--case", "no-such-case"])
        .args(["--purpose", "T-CLI missing"])
        .arg("--out")
        .arg(&out_dir));
    let line = one_error_line(&o);
    assert_eq!(line, "case-export: case not found");
    assert_eq!(stdout_of(&o), "");
    assert_eq!(
        dir_entries(&out_dir),
        Vec::<String>::new(),
        "no partial file"
    );
}

#[test]
fn export_to_a_closed_port_says_cannot_connect() {
    let dir = tempfile::tempdir().unwrap();
    // Bind and release a port so (almost certainly) nothing listens there.
    let port = free_loopback_addr().port();
    let url = format!("http://127.0.0.1:{port}");
    let o = run(bin()
        .arg("export")
        .env("CASE_EXPORT_TOKEN", TOKEN)
        .env("CASE_EXPORT_ON_BEHALF_OF", ANALYST)
        .args(["--server", &url])
        .args(["--case", "any-case"])
        .args(["--purpose", "T-CLI closed"])
        .arg("--out")
        .arg(dir.path()));
    let line = one_error_line(&o);
    assert!(
        line.starts_with(&format!("case-export: cannot connect to {url}: ")),
        "{line}"
    );
    assert_eq!(stdout_of(&o), "");
    assert_eq!(dir_entries(dir.path()), Vec::<String>::new());
}

#[test]
fn export_in_plaintext_off_loopback_is_refused_unless_allowed() {
    let s = server_fixture();
    let out_dir = s.dir.path().join("exports");
    std::fs::create_dir(&out_dir).unwrap();
    // Linux delivers 0.0.0.0 to this machine: the test server answers, yet
    // the host named is not loopback.
    let url = format!("http://0.0.0.0:{}", s.server.addr.port());
    let export = |allow: bool| {
        let mut c = bin();
        c.arg("export")
            .env("CASE_EXPORT_TOKEN", TOKEN)
            .env("CASE_EXPORT_ON_BEHALF_OF", ANALYST)
            .args(["--server", &url])
            .args(["--case", &s.case_id])
            .args(["--purpose", "T-CLI plaintext"])
            .arg("--out")
            .arg(&out_dir);
        if allow {
            c.arg("--allow-plaintext");
        }
        run(&mut c)
    };
    let o = export(false);
    let line = one_error_line(&o);
    assert_eq!(
        line,
        format!(
            "case-export: refusing to connect to {url} in plaintext: the bearer token and the \
             export key would cross the network unencrypted; use an https:// URL with the \
             server's CA (--ca-cert), or pass --allow-plaintext if the path is encrypted \
             otherwise (for example by a service mesh)"
        )
    );
    assert_eq!(stdout_of(&o), "");
    assert_eq!(dir_entries(&out_dir), Vec::<String>::new());

    let o = export(true);
    let err = stderr_of(&o);
    assert!(o.status.success(), "{err}");
    check_exported_line(&err, &s.case_id, &out_dir);
}

#[test]
fn open_with_a_file_that_is_not_a_key_file_says_so() {
    let f = Fixture::new();
    let out_dir = f.out_dir();
    // The .enc itself, a common slip: refused without reading it whole.
    let o = run(bin()
        .arg("open")
        .arg(&f.sealed.enc)
        .arg("--out")
        .arg(out_dir.join("case.db"))
        .arg("--key-file")
        .arg(&f.sealed.enc));
    let line = one_error_line(&o);
    assert_eq!(
        line,
        format!(
            "case-export: {} is not a key file: expected one line of text of at most 4096 bytes",
            f.sealed.enc.display()
        )
    );
    assert_eq!(dir_entries(&out_dir), Vec::<String>::new());
}

// ---------------------------------------------------------------------------
// serve and seed-demo refusals

#[test]
fn serve_with_unknown_config_key_names_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("server.toml");
    std::fs::write(
        &cfg,
        "# case-export test configuration\n\
         listen = \"127.0.0.1:0\"\n\
         chunk_sise = 65536\n\
         max_in_flight = 2\n",
    )
    .unwrap();
    let o = run(bin().arg("serve").arg("--config").arg(&cfg));
    let err = stderr_of(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(stdout_of(&o), "", "the server must not start listening");
    assert!(
        err.starts_with(&format!(
            "case-export: invalid config file {}: ",
            cfg.display()
        )),
        "{err}"
    );
    assert!(err.contains("chunk_sise"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn seed_demo_refuses_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.db");
    std::fs::write(&path, b"not a database, and not to be replaced\n").unwrap();
    let before = std::fs::read(&path).unwrap();
    let o = run(bin().arg("seed-demo").arg("--db").arg(&path));
    let line = one_error_line(&o);
    assert_eq!(
        line,
        format!(
            "case-export: {} already exists: pass a new path",
            path.display()
        )
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);

    // A database the command seeded before is refused the same way.
    let db = dir.path().join("cases.db");
    let o = run(bin().arg("seed-demo").arg("--db").arg(&db).args([
        "--cases",
        "3",
        "--rows-per-case",
        "40",
    ]));
    assert!(
        o.status.success(),
        "seed-demo failed: {}\n{}",
        stdout_of(&o),
        stderr_of(&o)
    );
    let digest = sha256_file(&db);
    let o = run(bin().arg("seed-demo").arg("--db").arg(&db));
    let line = one_error_line(&o);
    assert!(line.ends_with("already exists: pass a new path"), "{line}");
    assert_eq!(sha256_file(&db), digest);
}
