//! An `.enc` file written by a real export (server binary + library client)
//! is standard Fernet: `tests/interop/decrypt.py` opens it with nothing but
//! `cryptography.fernet.Fernet(key).decrypt(line)`, checks every chunk
//! header against the format, and SQLite accepts the reassembled snapshot.
//!
//! Runs `$PYTHON`, else a virtual environment under the target directory
//! into which `cryptography` is installed on first use (`support::python`).

use crate::support::{
    SMALL_CHUNK, ServerProcess, python, require_python_module, run, seeded_db, sha256_file,
    small_seed, stderr_of, stdout_of, test_client_options,
};
use case_export::client::{ExportClient, Receipt};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::{Command, Output};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/decrypt.py");

fn decrypt_py(enc: &Path, key: &str) -> Output {
    run(Command::new(python())
        .arg(SCRIPT)
        .arg(enc)
        .env("CASE_EXPORT_KEY", key))
}

fn export(url: &str, case_id: &str, dir: &Path) -> Receipt {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = ExportClient::connect_with(url, test_client_options())
            .await
            .expect("connect");
        client
            .export_to_dir(case_id, "T-PY interop", dir, |_, _| {})
            .await
            .expect("export")
    })
}

#[test]
fn python_fernet_opens_a_real_export() {
    require_python_module("cryptography", "cryptography");
    let db = seeded_db(&small_seed());
    let dir = &db.dir;
    let case_id = db.case_ids[2].clone();
    let chunk = SMALL_CHUNK.to_string();
    let server = ServerProcess::start(&db.path, dir.path(), &["--chunk-size", &chunk]);
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();

    let receipt = export(&server.url(), &case_id, &out_dir);
    let enc = receipt.path.clone().expect("export_to_dir gives a path");
    assert_eq!(enc, out_dir.join(format!("case_offline_{case_id}.enc")));
    assert!(receipt.chunks > 2, "several chunks: {}", receipt.chunks);
    let key = receipt
        .key
        .as_ref()
        .expect("an export without recipients has its raw key")
        .expose_fernet_key();

    let o = decrypt_py(&enc, &key);
    assert!(
        o.status.success(),
        "decrypt.py failed ({:?}):\n{}\n{}",
        o.status,
        stdout_of(&o),
        stderr_of(&o)
    );
    let summary: Value = serde_json::from_str(stdout_of(&o).trim())
        .unwrap_or_else(|e| panic!("decrypt.py printed no JSON ({e}):\n{}", stdout_of(&o)));

    assert_eq!(summary["chunks"], receipt.chunks, "{summary}");
    assert_eq!(summary["chunk_size"], SMALL_CHUNK as u64, "{summary}");
    assert_eq!(summary["bytes"], receipt.plaintext_size, "{summary}");
    assert_eq!(summary["export_id"], receipt.export_id.as_str());
    assert_eq!(
        summary["ciphertext_sha256"],
        receipt.ciphertext_sha256.as_str()
    );
    assert_eq!(receipt.ciphertext_sha256, sha256_file(&enc));
    // Python reassembled exactly the bytes the Rust reader opens.
    let opened = case_export::seal::open_reader(
        std::io::BufReader::new(std::fs::File::open(&enc).unwrap()),
        receipt
            .key
            .as_ref()
            .expect("an export without recipients has its raw key"),
        1 << 30,
    )
    .expect("the library opens the export");
    assert_eq!(
        summary["plaintext_sha256"],
        hex::encode(Sha256::digest(&opened.plaintext[..])).as_str()
    );
    assert_eq!(summary["integrity_check"], serde_json::json!(["ok"]));
    assert_eq!(summary["manifest"]["format_version"], 1);
    assert_eq!(summary["manifest"]["case_id"], case_id.as_str());
    assert_eq!(summary["manifest"]["export_id"], receipt.export_id.as_str());
    assert_eq!(summary["manifest"]["root_table"], "cases");
    assert_eq!(summary["root_rows"], 1);

    let tables = summary["tables"].as_object().expect("tables object");
    let from_python: Vec<(String, u64, u64)> = tables
        .iter()
        .map(|(t, v)| {
            (
                t.clone(),
                v["manifest"].as_u64().expect("manifest count"),
                v["actual"].as_u64().expect("actual count"),
            )
        })
        .collect();
    let expected: Vec<(String, u64, u64)> = receipt
        .row_counts
        .iter()
        .map(|(t, n)| (t.clone(), *n, *n))
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(from_python, expected, "python's counts = the receipt's");
    assert!(
        !tables.contains_key("users"),
        "excluded tables never leave: {summary}"
    );

    // The same script refuses the file under another key and a truncated
    // copy, so the success above is not vacuous.
    let other = case_export::seal::SecretKey::generate().unwrap();
    let o = decrypt_py(&enc, &other.expose_fernet_key());
    assert_eq!(o.status.code(), Some(1), "{}", stderr_of(&o));
    assert_eq!(
        stderr_of(&o).trim(),
        "decrypt.py: chunk 0 failed authentication"
    );

    let text = std::fs::read_to_string(&enc).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let cut = dir.path().join("cut.enc");
    std::fs::write(&cut, format!("{}\n", lines[..lines.len() - 1].join("\n"))).unwrap();
    let o = decrypt_py(&cut, &key);
    assert_eq!(o.status.code(), Some(1), "{}", stderr_of(&o));
    assert!(
        stderr_of(&o).contains("final flag False"),
        "{}",
        stderr_of(&o)
    );

    let status = server.terminate();
    assert!(status.success(), "server exit after SIGTERM: {status:?}");
}

/// Every token the sealer makes, whatever the data, chunk size and worker
/// count (so every lane count of the lockstep writer and every padding
/// length), opens with the `fernet` crate and with Python's `cryptography`
/// to the chunk header and data it was made from.
#[test]
fn every_sealed_token_opens_with_the_fernet_crate_and_python() {
    use case_export::seal::{CHUNK_HEADER_LEN, ExportId, Sealer, SecretKey};
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use std::io::Write;
    use std::process::Stdio;

    require_python_module("cryptography", "cryptography");
    let strategy = (
        proptest::collection::vec(any::<u8>(), 0..6000),
        prop_oneof![Just(16usize), 1usize..=100, 100usize..=700],
        1usize..=4,
    );
    // The runner takes an `Fn`: the lines for Python collect through a cell.
    let lines = std::cell::RefCell::new(String::new());
    let tokens = std::cell::Cell::new(0usize);
    let mut runner = TestRunner::new(Config::with_cases(96));
    runner
        .run(&strategy, |(data, chunk, workers)| {
            let key = SecretKey::generate().unwrap();
            let fernet = fernet::Fernet::new(&key.expose_fernet_key()).unwrap();
            let id = ExportId::random().unwrap();
            let mut plains = Vec::new();
            Sealer::new(&key, id, chunk, workers)
                .seal(&data, |i, token| {
                    let plain = fernet.decrypt(&token).expect("the fernet crate opens it");
                    plains.push((i, token, plain));
                    Ok::<(), ()>(())
                })
                .unwrap();
            let chunks: Vec<&[u8]> = if data.is_empty() {
                vec![&[]]
            } else {
                data.chunks(chunk).collect()
            };
            prop_assert_eq!(plains.len(), chunks.len());
            for ((i, token, plain), part) in plains.iter().zip(&chunks) {
                prop_assert_eq!(&plain[CHUNK_HEADER_LEN..], *part, "chunk {}", i);
                prop_assert_eq!(&plain[24..32], &i.to_be_bytes()[..]);
                lines.borrow_mut().push_str(&format!(
                    "{} {token} {}\n",
                    &*key.expose_fernet_key(),
                    hex::encode(Sha256::digest(plain))
                ));
                tokens.set(tokens.get() + 1);
            }
            Ok(())
        })
        .unwrap();

    let mut child = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/interop/open_tokens.py"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(lines.borrow().as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "open_tokens.py failed:\n{}",
        stderr_of(&o)
    );
    let v: Value = serde_json::from_str(stdout_of(&o).trim()).expect("JSON");
    assert_eq!(v["failure"], Value::Null, "{v}");
    let tokens = tokens.get();
    assert_eq!(v["opened"], tokens as u64, "{v}");
    assert!(tokens > 500, "only {tokens} tokens were checked");
}
