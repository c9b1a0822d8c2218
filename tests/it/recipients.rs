//! Keys sealed to the analyst's public keys (age): the round trip through
//! the library and the CLI, the stock `age` tool opening a real export's
//! wrapped key, several recipients, escrow, the server's policy, and what
//! a caller that names no recipients still gets.

use crate::support::*;
use age::secrecy::ExposeSecret;
use case_export::client::{ClientOptions, ExportClient, Receipt};
use case_export::keywrap::unwrap_key;
use case_export::pb::ExportCaseRequest;
use case_export::seal::{SecretKey, open_reader};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use tonic::Code;

const PURPOSE: &str = "TICKET-8120: recipients test";

/// A fresh X25519 identity, written as an age identity file in `dir`;
/// returns the identity, its file and its recipient.
fn identity(dir: &Path, name: &str) -> (age::x25519::Identity, PathBuf, String) {
    let id = age::x25519::Identity::generate();
    let recipient = id.to_public().to_string();
    let path = dir.join(format!("{name}.key"));
    std::fs::write(
        &path,
        format!(
            "# public key: {recipient}\n{}\n",
            id.to_string().expose_secret()
        ),
    )
    .expect("write identity");
    (id, path, recipient)
}

fn with_recipients(recipients: &[&str]) -> ClientOptions {
    ClientOptions {
        recipients: recipients.iter().map(|r| r.to_string()).collect(),
        ..test_client_options()
    }
}

async fn export_to(url: &str, case_id: &str, opts: ClientOptions, dir: &Path) -> Receipt {
    ExportClient::connect_with(url, opts)
        .await
        .expect("connect")
        .export_to_dir(case_id, PURPOSE, dir, |_, _| {})
        .await
        .expect("export")
}

/// Opens the `.enc` file of `receipt` with `key` and checks its case.
fn opens_with(receipt: &Receipt, key: &SecretKey, case_id: &str) {
    let enc = std::fs::File::open(receipt.path.as_ref().expect("written")).expect("open .enc");
    let opened = open_reader(BufReader::new(enc), key, READ_LIMIT).expect("the key opens it");
    let view = case_export::snapshot::SnapshotView::open(&opened.plaintext).expect("sqlite");
    assert_eq!(view.manifest().expect("manifest").case_id, case_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrapped_key_round_trip_and_stock_age_opens_it() {
    let server = start_server(|_| {}).await;
    let case_id = server.case_ids[0].clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let (id, id_file, recipient) = identity(dir.path(), "analyst");
    let receipt = export_to(
        &server.url,
        &case_id,
        with_recipients(&[&recipient]),
        dir.path(),
    )
    .await;

    // No raw key anywhere: only the age file beside the .enc, mode 0600.
    assert!(receipt.key.is_none());
    let wrapped = receipt.wrapped_key.as_ref().expect("a wrapped key");
    assert_eq!(wrapped.sealed_to, vec![recipient.clone()]);
    let age_path = wrapped.path.clone().expect("written");
    assert_eq!(
        age_path.file_name().and_then(|n| n.to_str()),
        Some(format!("case_offline_{case_id}.key.age").as_str())
    );
    assert_eq!(mode(&age_path), 0o600);
    let ids: Vec<Box<dyn age::Identity>> = vec![Box::new(id)];
    let key = unwrap_key(&wrapped.age_file, &ids).expect("the identity opens it");
    opens_with(
        &receipt,
        &SecretKey::from_fernet_key(&key).expect("a key"),
        &case_id,
    );

    // The stock age tool decrypts it to a key file `open --key-file` takes.
    let key_file = dir.path().join("case.key");
    let o = run(std::process::Command::new(age())
        .arg("-d")
        .arg("-i")
        .arg(&id_file)
        .arg("-o")
        .arg(&key_file)
        .arg(&age_path));
    assert!(o.status.success(), "age -d: {}", stderr_of(&o));
    assert_eq!(
        std::fs::read_to_string(&key_file).expect("key"),
        key.as_str()
    );
    let db = dir.path().join("case.db");
    let o = run(bin()
        .arg("open")
        .arg(receipt.path.as_ref().expect("enc"))
        .arg("--key-file")
        .arg(&key_file)
        .arg("--out")
        .arg(&db));
    assert!(o.status.success(), "open --key-file: {}", stderr_of(&o));
    // And `open --identity` unwraps it in memory from the file beside it.
    let db2 = dir.path().join("case2.db");
    let o = run(bin()
        .arg("open")
        .arg(receipt.path.as_ref().expect("enc"))
        .arg("--identity")
        .arg(&id_file)
        .arg("--out")
        .arg(&db2));
    assert!(o.status.success(), "open --identity: {}", stderr_of(&o));
    assert_eq!(std::fs::read(&db).unwrap(), std::fs::read(&db2).unwrap());

    // The custody record names the recipients.
    let evs = server.wait_export_end(&case_id).await;
    let sealed = evs
        .iter()
        .find(|e| e.kind == case_export::audit::Kind::Sealed)
        .expect("sealed event");
    let detail: serde_json::Value =
        serde_json::from_str(sealed.detail.as_deref().expect("detail")).expect("json");
    assert_eq!(detail["recipients"], serde_json::json!([recipient]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_of_two_recipients_and_the_escrow_key_open_it_and_no_other() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (escrow, _, escrow_r) = identity(dir.path(), "escrow");
    let server = start_server(|c| c.keys.escrow_recipients = vec![escrow_r.clone()]).await;
    let case_id = server.case_ids[1].clone();
    let (a, _, ra) = identity(dir.path(), "a");
    let (b, b_file, rb) = identity(dir.path(), "b");
    let (_, other_file, _) = identity(dir.path(), "other");
    let receipt = export_to(
        &server.url,
        &case_id,
        with_recipients(&[&ra, &rb]),
        dir.path(),
    )
    .await;
    let wrapped = receipt.wrapped_key.as_ref().expect("wrapped");
    assert_eq!(wrapped.sealed_to, vec![ra, rb, escrow_r]);
    for id in [a, b, escrow] {
        let ids: Vec<Box<dyn age::Identity>> = vec![Box::new(id)];
        let key = unwrap_key(&wrapped.age_file, &ids).expect("each recipient opens it");
        opens_with(
            &receipt,
            &SecretKey::from_fernet_key(&key).unwrap(),
            &case_id,
        );
    }
    // A wrong identity: one clear line, exit non-zero.
    let o = run(bin()
        .arg("view")
        .arg(receipt.path.as_ref().unwrap())
        .arg("--identity")
        .arg(&other_file));
    assert!(!o.status.success());
    let err = stderr_of(&o);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("none of the identities"), "{err}");
    // The right one works with an explicit --wrapped-key too.
    let o = run(bin()
        .arg("view")
        .arg(receipt.path.as_ref().unwrap())
        .arg("--identity")
        .arg(&b_file)
        .arg("--wrapped-key")
        .arg(wrapped.path.as_ref().unwrap()));
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(stdout_of(&o).contains(&case_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_requires_recipients_and_refuses_bad_ones_by_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, _, good) = identity(dir.path(), "analyst");
    let mut principals = principals();
    principals.push(case_export::server::PrincipalConfig {
        require_recipients: Some(false),
        ..principal(
            "legacy-batch",
            Some("legacy-token-0123456789abcdef"),
            &[case_export::server::Role::Exporter],
        )
    });
    let server = start_server(|c| {
        c.keys.require_recipients = true;
        c.keys.max_recipients = 2;
        c.principals = principals;
    })
    .await;
    let case_id = server.case_ids[0].clone();

    let s = refused(&server.url, request(&case_id, PURPOSE)).await;
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("recipient"), "{s:?}");

    let asking = |recipients: Vec<String>| ExportCaseRequest {
        case_id: case_id.clone(),
        purpose: PURPOSE.into(),
        recipients,
    };
    let s = refused(
        &server.url,
        asking(vec![good.clone(), "ssh-ed25519 AAAAnot-a-key".into()]),
    )
    .await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("recipient 2"), "{s:?}");
    let s = refused(&server.url, asking(vec![good.clone(); 3])).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("at most 2"), "{s:?}");

    // With a recipient the same caller is served; the principal the
    // configuration exempts still gets its raw key.
    let ok = export_to(&server.url, &case_id, with_recipients(&[&good]), dir.path()).await;
    assert!(ok.key.is_none() && ok.wrapped_key.is_some());
    let legacy = ClientOptions {
        token: Some("legacy-token-0123456789abcdef".to_string().into()),
        ..test_client_options()
    };
    let mut enc = Vec::new();
    let raw = ExportClient::connect_with(&server.url, legacy)
        .await
        .unwrap()
        .export_case(&case_id, PURPOSE, &mut enc, |_, _| {})
        .await
        .expect("the exempt principal exports");
    assert!(raw.key.is_some() && raw.wrapped_key.is_none());
    server.settle().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_without_recipients_sees_the_stream_it_always_saw() {
    // The client of the v1 contract before recipients existed: fields 1-2
    // of the request, fields 1-5 of the key. Decoded with that contract's
    // own message types, the stream is what it always was.
    #[derive(Clone, PartialEq, prost::Message)]
    struct OldRequest {
        #[prost(string, tag = "1")]
        case_id: String,
        #[prost(string, tag = "2")]
        purpose: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct OldKey {
        #[prost(string, tag = "1")]
        fernet_key: String,
        #[prost(string, tag = "2")]
        ciphertext_sha256: String,
        #[prost(uint64, tag = "3")]
        chunk_count: u64,
        #[prost(uint64, tag = "4")]
        ciphertext_size: u64,
        #[prost(string, tag = "5")]
        warning: String,
    }
    let server = start_server(|_| {}).await;
    let case_id = server.case_ids[0].clone();
    let old = OldRequest {
        case_id: case_id.clone(),
        purpose: PURPOSE.into(),
    };
    let bytes = prost::Message::encode_to_vec(&old);
    let new: ExportCaseRequest = prost::Message::decode(bytes.as_slice()).expect("decodes");
    assert!(new.recipients.is_empty());
    let mut stream = raw_client(&server.url)
        .await
        .export_case(authed(new))
        .await
        .expect("served")
        .into_inner();
    let header = read_header(&mut stream).await;
    let mut chunks = 0;
    let key = loop {
        match next_message(&mut stream).await.expect("a message") {
            case_export::pb::export_case_response::Message::Chunk(_) => chunks += 1,
            case_export::pb::export_case_response::Message::Key(k) => break k,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(chunks, header.chunk_count);
    assert!(key.wrapped_key.is_empty() && key.sealed_to.is_empty());
    let old_key: OldKey =
        prost::Message::decode(prost::Message::encode_to_vec(&key).as_slice()).expect("decodes");
    assert_eq!(old_key.fernet_key.len(), 44, "the raw key, as before");
    SecretKey::from_fernet_key(&old_key.fernet_key).expect("a Fernet key");
    assert_eq!(old_key.ciphertext_sha256, key.ciphertext_sha256);
    assert_eq!(old_key.chunk_count, chunks);
    assert_eq!(old_key.ciphertext_size, key.ciphertext_size);
    assert!(!old_key.warning.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ssh_public_key_is_a_recipient_and_its_private_key_opens_the_export() {
    let server = start_server(|_| {}).await;
    let case_id = server.case_ids[2].clone();
    let dir = tempfile::tempdir().expect("temp dir");
    let key = dir.path().join("id_ed25519");
    let o = run(std::process::Command::new(ssh_keygen())
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "analyst", "-f"])
        .arg(&key));
    assert!(o.status.success(), "ssh-keygen: {}", stderr_of(&o));
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    let receipt = export_to(
        &server.url,
        &case_id,
        with_recipients(&[public.trim()]),
        dir.path(),
    )
    .await;
    assert!(receipt.key.is_none());
    let o = run(bin()
        .arg("view")
        .arg(receipt.path.as_ref().unwrap())
        .arg("--identity")
        .arg(&key));
    assert!(
        o.status.success(),
        "view --identity id_ed25519: {}",
        stderr_of(&o)
    );
    assert!(stdout_of(&o).contains(&case_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_entry_that_authenticated_the_call_decides_on_recipients() {
    // One principal, two entries (two tokens); only the second requires
    // recipients. Each call follows the entry its credential matched.
    const OPEN: &str = "shared-open-token-0123456789abcdef";
    const STRICT: &str = "shared-strict-token-0123456789abcdef";
    let exporter = [case_export::server::Role::Exporter];
    let mut principals = principals();
    principals.push(principal("shared", Some(OPEN), &exporter));
    principals.push(case_export::server::PrincipalConfig {
        require_recipients: Some(true),
        ..principal("shared", Some(STRICT), &exporter)
    });
    let server = start_server(|c| c.principals = principals).await;
    let case_id = server.case_ids[0].clone();
    let call = |token: &'static str| {
        let url = server.url.clone();
        let case_id = case_id.clone();
        async move {
            raw_client(&url)
                .await
                .export_case(with_creds(
                    request(&case_id, PURPOSE),
                    Some(token),
                    Some(ANALYST),
                ))
                .await
                .map(|_| ())
        }
    };
    let strict = call(STRICT).await.expect_err("refused without recipients");
    assert_eq!(strict.code(), Code::FailedPrecondition, "{strict:?}");
    call(OPEN)
        .await
        .expect("the other entry may take a raw key");
    server.settle().await;
}
