//! The signed export receipt: written beside the `.enc` file, checked by
//! `case-export verify` without the key (and against the trail with
//! `--audit-db`), and by the Python verifier of docs/RECEIPT.md; every
//! kind of mismatch refused with its own message.

use crate::support::*;
use case_export::client::{ExportClient, Receipt};
use case_export::receipt::SignedReceipt;
use std::path::Path;

const PURPOSE: &str = "TICKET-8121: receipt test";

struct Exported {
    server: TestServer,
    dir: tempfile::TempDir,
    public_key: String,
    receipts: Vec<Receipt>,
}

/// A server signing receipts with its checkpoint key, and two exports of
/// two cases written into one directory.
async fn two_exports() -> Exported {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("receipt.key");
    let public_key = checkpoint_key(&key);
    let server = start_server(|c| c.keys.receipt_key_file = Some(key.clone())).await;
    let mut receipts = Vec::new();
    for case_id in &server.case_ids[..2] {
        let r = ExportClient::connect_with(&server.url, test_client_options())
            .await
            .expect("connect")
            .export_to_dir(case_id, PURPOSE, dir.path(), |_, _| {})
            .await
            .expect("export");
        receipts.push(r);
    }
    Exported {
        server,
        dir,
        public_key,
        receipts,
    }
}

fn enc(r: &Receipt) -> &Path {
    r.path.as_deref().expect("written")
}

fn receipt_file(r: &Receipt) -> &Path {
    r.receipt_path.as_deref().expect("a receipt was written")
}

fn verify(enc: &Path, receipt: &Path, key: &str, extra: &[&str]) -> std::process::Output {
    run(bin()
        .arg("verify")
        .arg(enc)
        .arg("--receipt")
        .arg(receipt)
        .args(["--public-key", key])
        .args(extra))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipt_verifies_without_the_key_and_against_the_trail() {
    let x = two_exports().await;
    let r = &x.receipts[0];
    let signed = r.signed_receipt.as_ref().expect("a signed receipt");
    let b = &signed.receipt;
    assert_eq!(b.case_id, r.case_id);
    assert_eq!(b.export_id, r.export_id);
    assert_eq!(b.principal, SERVICE);
    assert_eq!(b.on_behalf_of, ANALYST);
    assert_eq!(b.purpose, PURPOSE);
    assert_eq!(b.ciphertext_sha256, r.ciphertext_sha256);
    assert!(b.recipients.is_empty());
    assert_eq!(mode(receipt_file(r)), 0o600);
    assert_eq!(
        SignedReceipt::from_json(&std::fs::read(receipt_file(r)).unwrap()).unwrap(),
        *signed
    );

    // Its event is the trail's `sealed` event of that export.
    let events = x.server.wait_export_end(&r.case_id).await;
    let sealed = events
        .iter()
        .find(|e| e.kind == case_export::audit::Kind::Sealed)
        .expect("sealed");
    assert_eq!(sealed.export_id.as_deref(), Some(b.export_id.as_str()));
    let trail = audit_trail(x.server.audit_db());
    let (seq, _, hash) = trail
        .iter()
        .find(|(_, e, _)| {
            e.kind == case_export::audit::Kind::Sealed && e.export_id == sealed.export_id
        })
        .expect("sealed on record");
    assert_eq!(
        (*seq, hash.as_str()),
        (b.sealed_seq, b.sealed_hash.as_str())
    );

    let o = verify(enc(r), receipt_file(r), &x.public_key, &[]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let out = stdout_of(&o);
    for what in [&r.case_id, PURPOSE, ANALYST, SERVICE] {
        assert!(out.contains(what), "the summary names {what}: {out}");
    }
    let db = x.server.audit_db().display().to_string();
    let o = verify(enc(r), receipt_file(r), &x.public_key, &["--audit-db", &db]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(stdout_of(&o).contains("found in the trail"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mismatch_is_refused_with_its_own_message() {
    let x = two_exports().await;
    let (r0, r1) = (&x.receipts[0], &x.receipts[1]);
    let work = x.dir.path();

    // An altered receipt field: the signature fails.
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(receipt_file(r0)).unwrap()).unwrap();
    v["receipt"]["on_behalf_of"] = "someone.else".into();
    let altered = work.join("altered.receipt.json");
    std::fs::write(&altered, v.to_string()).unwrap();
    let e = one_error_line(&verify(enc(r0), &altered, &x.public_key, &[]));
    assert!(e.contains("signature does not verify"), "{e}");

    // A wrong public key.
    let other = checkpoint_key(&work.join("other.key"));
    let e = one_error_line(&verify(enc(r0), receipt_file(r0), &other, &[]));
    assert!(e.contains("signature does not verify"), "{e}");

    // The receipt of another export.
    let e = one_error_line(&verify(enc(r0), receipt_file(r1), &x.public_key, &[]));
    assert!(e.contains("not the exported file"), "{e}");

    // A truncated .enc: the size.
    let bytes = std::fs::read(enc(r0)).unwrap();
    let truncated = work.join("truncated.enc");
    std::fs::write(&truncated, &bytes[..bytes.len() - 10]).unwrap();
    let e = one_error_line(&verify(&truncated, receipt_file(r0), &x.public_key, &[]));
    assert!(e.contains("bytes, but the receipt says"), "{e}");

    // An altered .enc of the same size and lines: the digest.
    let mut flipped = bytes.clone();
    let i = flipped.len() / 2;
    flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
    let altered_enc = work.join("altered.enc");
    std::fs::write(&altered_enc, &flipped).unwrap();
    let e = one_error_line(&verify(&altered_enc, receipt_file(r0), &x.public_key, &[]));
    assert!(e.contains("SHA-256"), "{e}");

    // The trail of another server does not hold the receipt's event.
    let other = seeded_db(&small_seed());
    let fresh = TestServer::start(test_config(other.path.clone(), other.dir.path())).await;
    let db = fresh.audit_db().display().to_string();
    let e = one_error_line(&verify(
        enc(r0),
        receipt_file(r0),
        &x.public_key,
        &["--audit-db", &db],
    ));
    assert!(
        e.contains("another trail") || e.contains("does not match"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_verifier_of_the_docs_accepts_a_real_receipt() {
    let x = two_exports().await;
    let r = &x.receipts[0];
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/RECEIPT.md"))
            .expect("docs/RECEIPT.md");
    let script = doc
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a python block in docs/RECEIPT.md");
    let path = x.dir.path().join("verify_receipt.py");
    std::fs::write(&path, script).unwrap();
    require_python_module("cryptography", "cryptography");
    let o = run(std::process::Command::new(python())
        .arg(&path)
        .arg(enc(r))
        .arg(receipt_file(r))
        .arg(&x.public_key));
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(stdout_of(&o).starts_with("OK: case "), "{}", stdout_of(&o));
    // And it refuses what it must.
    let other = checkpoint_key(&x.dir.path().join("other.key"));
    let o = run(std::process::Command::new(python())
        .arg(&path)
        .arg(enc(r))
        .arg(receipt_file(r))
        .arg(&other));
    assert!(!o.status.success());
    assert!(
        stderr_of(&o).contains("does not verify"),
        "{}",
        stderr_of(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipt_checks_against_a_postgresql_trail() {
    let Some(trail) = PgDb::create("receipt_trail").await else {
        return;
    };
    let seeded = seeded_db(&small_seed());
    let work = tempfile::tempdir().expect("temp dir");
    let key = work.path().join("receipt.key");
    let public_key = checkpoint_key(&key);
    let mut config = test_config(seeded.path.clone(), seeded.dir.path());
    config.audit_db = case_export::db::DbLocation::parse(&trail.url).expect("url");
    config.keys.receipt_key_file = Some(key);
    let case_id = seeded.case_ids[0].clone();
    let server = spawn_server(config, seeded.dir, seeded.case_ids.clone()).await;
    let r = eventually(
        "an export once the trail is up",
        std::time::Duration::from_secs(20),
        || async {
            ExportClient::connect_with(&server.url, test_client_options())
                .await
                .map_err(|e| e.to_string())?
                .export_to_dir(&case_id, PURPOSE, work.path(), |_, _| {})
                .await
                .map_err(|e| e.to_string())
        },
    )
    .await;
    let o = verify(
        enc(&r),
        receipt_file(&r),
        &public_key,
        &["--audit-db", &trail.url],
    );
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(stdout_of(&o).contains("found in the trail"));
    // Another trail does not hold it.
    let Some(other) = PgDb::create("receipt_other").await else {
        return;
    };
    let o = run(bin().args(["audit", "init", "--db", &other.url]));
    assert!(o.status.success(), "{}", stderr_of(&o));
    let e = one_error_line(&verify(
        enc(&r),
        receipt_file(&r),
        &public_key,
        &["--audit-db", &other.url],
    ));
    assert!(e.contains("another trail"), "{e}");
}
