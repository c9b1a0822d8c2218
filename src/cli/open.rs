//! `open` and `view`: the offline viewer. Both verify every chunk before
//! using a byte; `view` never writes plaintext to disk.

use super::keyinput::{read_key, unwrap_key};
use super::{CliError, CliResult, harden_process};
use case_export::seal::{OpenError, open_reader};
use case_export::snapshot::SnapshotView;
use clap::Args;
use std::io::{BufReader, Write};
use std::path::{Path, PathBuf};

/// Largest snapshot the viewer accepts (the format allows more; this keeps
/// a hostile header from asking for more memory than a workstation has).
const VIEW_LIMIT: u64 = 64 << 30;

#[derive(Debug, Args)]
pub struct OpenArgs {
    /// The `.enc` file.
    pub file: PathBuf,
    /// Where to write the decrypted SQLite database (mode 0600).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace `--out` if it exists.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub key: KeyArgs,
}

#[derive(Debug, Args)]
pub struct ViewArgs {
    /// The `.enc` file.
    pub file: PathBuf,
    #[command(flatten)]
    pub key: KeyArgs,
}

/// Where the key comes from: a key file (else CASE_EXPORT_KEY, else a
/// prompt), or the wrapped key opened with age identities.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// File holding the key (else CASE_EXPORT_KEY, else a prompt).
    #[arg(long, conflicts_with = "identity")]
    pub key_file: Option<PathBuf>,
    /// An age identity file that opens the wrapped key (repeatable):
    /// X25519, SSH, passphrase-protected or plugin identities.
    #[arg(long)]
    pub identity: Vec<PathBuf>,
    /// The wrapped key; default: `<file without .enc>.key.age` beside it.
    #[arg(long, requires = "identity")]
    pub wrapped_key: Option<PathBuf>,
}

fn decrypt(file: &Path, k: &KeyArgs) -> Result<case_export::seal::Opened, CliError> {
    let f = std::fs::File::open(file)
        .map_err(|e| CliError::new(format!("cannot open {}: {e}", file.display())))?;
    let key = if k.identity.is_empty() {
        read_key(k.key_file.as_deref())?
    } else {
        unwrap_key(file, k.wrapped_key.as_deref(), &k.identity)?
    };
    open_reader(BufReader::with_capacity(1 << 20, f), &key, VIEW_LIMIT).map_err(|e| match e {
        OpenError::Io(io) => CliError::new(format!("cannot read {}: {io}", file.display())),
        other => CliError::new(format!("{}: {other}", file.display())),
    })
}

fn load_view(bytes: &[u8]) -> Result<SnapshotView, CliError> {
    let view = SnapshotView::open(bytes).map_err(|e| CliError::new(e.to_string()))?;
    if !view
        .integrity_ok()
        .map_err(|e| CliError::new(e.to_string()))?
    {
        return Err(CliError::new(
            "the decrypted snapshot fails SQLite's integrity check: export it again",
        ));
    }
    Ok(view)
}

pub fn run_open(a: OpenArgs) -> CliResult {
    harden_process();
    if a.out.exists() && !a.force {
        return Err(CliError::new(format!(
            "{} already exists: choose another --out or pass --force",
            a.out.display()
        )));
    }
    let opened = decrypt(&a.file, &a.key)?;
    let view = load_view(&opened.plaintext)?;
    let manifest = view.manifest().map_err(|e| CliError::new(e.to_string()))?;
    drop(view);

    let dir = match a.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut tmp = tempfile::Builder::new()
        .prefix(".case-export-")
        .suffix(".partial")
        .tempfile_in(&dir)
        .map_err(|e| CliError::new(format!("cannot write in {}: {e}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    tmp.write_all(&opened.plaintext)?;
    tmp.as_file().sync_all()?;
    let persisted = if a.force {
        tmp.persist(&a.out).map_err(|e| e.error)
    } else {
        tmp.persist_noclobber(&a.out).map_err(|e| e.error)
    };
    persisted.map_err(|e| CliError::new(format!("cannot write {}: {e}", a.out.display())))?;
    println!(
        "wrote {} ({} bytes): case {}, export {}, {} chunks verified",
        a.out.display(),
        opened.plaintext.len(),
        manifest.case_id,
        manifest.export_id,
        opened.chunks
    );
    Ok(())
}

pub fn run_view(a: ViewArgs) -> CliResult {
    harden_process();
    let opened = decrypt(&a.file, &a.key)?;
    let view = load_view(&opened.plaintext)?;
    let err = |e: case_export::snapshot::ViewError| CliError::new(e.to_string());
    let m = view.manifest().map_err(err)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "export     {}", m.export_id)?;
    writeln!(out, "case       {}", m.case_id)?;
    writeln!(out, "created    {}", m.created_at)?;
    writeln!(out, "tool       case-export {}", m.tool_version)?;
    writeln!(out, "schema     sha256:{}", m.source_schema_sha256)?;
    writeln!(
        out,
        "verified   {} chunks, {} bytes",
        opened.chunks,
        opened.plaintext.len()
    )?;
    writeln!(out)?;
    writeln!(out, "{} row:", m.root_table)?;
    let row = view.case_row(&m).map_err(err)?;
    let width = row.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    for (c, v) in &row {
        writeln!(out, "  {c:<width$}  {v}")?;
    }
    writeln!(out)?;
    writeln!(out, "rows per table:")?;
    let actual = view.table_counts(&m).map_err(err)?;
    let width = actual.iter().map(|(t, _)| t.len()).max().unwrap_or(0);
    for ((t, n), (_, recorded)) in actual.iter().zip(&m.row_counts) {
        let note = if n == recorded {
            ""
        } else {
            "  (manifest differs!)"
        };
        writeln!(out, "  {t:<width$}  {n:>8}{note}")?;
    }
    Ok(())
}
