//! `.enc` fixtures sealed with the library from a real snapshot, exactly
//! as the server would seal them.

use case_export::seal::{ExportId, SecretKey, seal_to_writer};
use case_export::snapshot::{ScopeConfig, SnapshotRequest, build_snapshot};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A small chunk size, so a case of [`super::small_seed`] spans several
/// chunks.
pub const SMALL_CHUNK: usize = 16 * 1024;

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
    let mut snap = build_snapshot(
        db,
        &SnapshotRequest {
            case_id,
            scope: &scope,
            export_id,
            created_at: "2025-01-02T03:04:05Z",
            max_bytes: 1 << 30,
            busy_timeout: Duration::from_secs(5),
            tenant_column: None,
            allowed_tenants: None,
        },
    )
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
