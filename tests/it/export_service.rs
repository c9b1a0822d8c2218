//! The export service end to end, against a real server on 127.0.0.1:0:
//! what a finished export holds, the exact shape of the stream, the error
//! codes and their messages, freed slots, the in-flight limit, graceful
//! shutdown, and (through the real binary) no plaintext on disk.

use crate::support::*;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use case_export::client::{ClientError, Receipt};
use case_export::pb::export_case_response::Message as Msg;
use case_export::pb::export_service_server::{ExportService, ExportServiceServer};
use case_export::pb::{
    EncryptedChunk, ExportCaseRequest, ExportCaseResponse, ExportHeader, ExportKey,
};
use case_export::seal::{FORMAT_VERSION, KEY_WARNING, Opener, SecretKey};
use case_export::seed::seed_demo;
use case_export::snapshot::{MANIFEST_TABLE, SnapshotView};
use rusqlite::Connection;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;
use tonic::{Code, Status};
/// Against hangs only; nothing here is expected to take more than a second
/// or two, except shutdown, which may wait out grace + 5 s.
const BOUND: Duration = Duration::from_secs(15);

/// Checks a status message says nothing about the filesystem or SQL.
#[track_caller]
fn assert_message_is_safe(status: &Status, paths: &[&Path]) {
    let msg = status.message();
    let lower = msg.to_ascii_lowercase();
    for p in paths {
        let p = p.to_string_lossy();
        assert!(
            !msg.contains(&*p),
            "status message reveals a path {p:?}: {msg:?}"
        );
    }
    for needle in [
        "/tmp", ".db", "cases.db", "select ", "insert ", "create ", "attach", "pragma", "sqlite_",
        " from ", " where ", "file:",
    ] {
        assert!(
            !lower.contains(needle),
            "status message contains {needle:?}: {msg:?}"
        );
    }
}

/// The slot of a held export is taken: a second call is refused as busy.
async fn assert_slot_taken(url: &str, case_id: &str) {
    let s = refused(url, request(case_id, PURPOSE)).await;
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
}

// ---------------------------------------------------------------------------
// A finished export holds exactly the case.

/// Checks one case's export file and snapshot against the source database.
#[track_caller]
fn check_export_file(receipt: &Receipt, out: &Path, src: &Connection, case_id: &str) {
    let path = receipt
        .path
        .as_deref()
        .expect("export_to_dir sets the path");
    assert_eq!(path, out.join(format!("case_offline_{case_id}.enc")));
    let meta = std::fs::metadata(path).expect("the export file exists");
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "file mode");
    let enc = std::fs::read(path).expect("read the export");
    assert_eq!(enc.len() as u64, receipt.bytes);
    assert_eq!(hex::encode(Sha256::digest(&enc)), receipt.ciphertext_sha256);
    assert_eq!(receipt.case_id, case_id);

    let view = open_export(&enc, receipt);
    let snap = view.connection();

    // Exactly the demo tables but `users`, plus the manifest.
    let mut expected_tables: Vec<String> = DEMO_CASE_TABLES.iter().map(|t| t.to_string()).collect();
    expected_tables.push(MANIFEST_TABLE.to_string());
    expected_tables.sort();
    assert_eq!(table_names(snap), expected_tables);

    // Every table holds exactly the case's rows of the source.
    for table in DEMO_CASE_TABLES {
        let expected = case_rows(src, table, case_id);
        assert!(
            !expected.is_empty(),
            "the seed gave {case_id} no {table} rows: the comparison would prove nothing"
        );
        let actual = all_rows(snap, table);
        assert_eq!(
            actual.len(),
            expected.len(),
            "{table}: {} rows exported, {} expected",
            actual.len(),
            expected.len()
        );
        assert_eq!(actual, expected, "{table}: rows differ from the source");
    }

    // No other case anywhere: every case id column holds this case only.
    let quoted = format!("'{case_id}'");
    assert_eq!(
        query_rows(snap, "SELECT DISTINCT id FROM cases", []),
        [[quoted.clone()]]
    );
    for table in DEMO_CASE_TABLES {
        if column_names(snap, table).iter().any(|c| c == "case_id") {
            let ids = query_rows(snap, &format!("SELECT DISTINCT case_id FROM {table}"), []);
            assert_eq!(
                ids,
                [[quoted.clone()]],
                "{table} holds rows of another case"
            );
        }
    }
    // No link that leaves the case, in either direction.
    let cross: Vec<Vec<String>> = query_rows(
        src,
        "SELECT l.id FROM evidence_links l \
         JOIN evidence a ON a.id = l.from_evidence_id \
         JOIN evidence b ON b.id = l.to_evidence_id \
         WHERE a.case_id <> b.case_id AND ?1 IN (a.case_id, b.case_id)",
        [case_id],
    );
    let exported: BTreeSet<Vec<String>> = query_rows(snap, "SELECT id FROM evidence_links", [])
        .into_iter()
        .collect();
    assert!(
        !cross.is_empty(),
        "{case_id} was chosen for its cross-case link"
    );
    for link in &cross {
        assert!(
            !exported.contains(link),
            "cross-case link {link:?} was exported"
        );
    }
    // Every reference resolves inside the snapshot, but those to the
    // excluded `users`: nothing points at a row that stayed behind.
    let dangling: Vec<Vec<String>> = query_rows(snap, "PRAGMA foreign_key_check", [])
        .into_iter()
        .filter(|r| r[2] != "'users'")
        .collect();
    assert_eq!(dangling, Vec::<Vec<String>>::new(), "dangling references");
    assert!(
        !query_rows(snap, "PRAGMA foreign_key_check", []).is_empty(),
        "no reference to the excluded users found: the check above would prove nothing"
    );

    // Counts: manifest == actual == header, and == the source.
    let m = view.manifest().expect("manifest");
    assert_eq!(m.case_id, case_id);
    assert_eq!(m.export_id, receipt.export_id);
    assert_eq!(m.root_table, "cases");
    assert_eq!(m.format_version, FORMAT_VERSION);
    assert_eq!(view.table_counts(&m).expect("table counts"), m.row_counts);
    assert_eq!(receipt.row_counts, m.row_counts);
    let from_source: Vec<(String, u64)> = DEMO_CASE_TABLES
        .iter()
        .map(|t| (t.to_string(), case_rows(src, t, case_id).len() as u64))
        .collect();
    assert_eq!(m.row_counts, from_source);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_to_dir_holds_exactly_the_case() {
    let server = start_server(|_| {}).await;
    let src = open_ro(server.case_db());
    // Two cases joined by a cross-case link: it must leave with neither.
    let pair = query_rows(
        &src,
        "SELECT a.case_id, b.case_id FROM evidence_links l \
         JOIN evidence a ON a.id = l.from_evidence_id \
         JOIN evidence b ON b.id = l.to_evidence_id \
         WHERE a.case_id <> b.case_id ORDER BY l.id LIMIT 1",
        [],
    );
    assert_eq!(pair.len(), 1, "the seed has no cross-case link");
    let unquote = |s: &str| s.trim_matches('\'').to_string();
    let cases = [unquote(&pair[0][0]), unquote(&pair[0][1])];

    let out = tempfile::tempdir().expect("out dir");
    let mut c = client(&server.url).await;
    let mut names = Vec::new();
    for case_id in &cases {
        let receipt = c
            .export_to_dir(case_id, PURPOSE, out.path(), |_, _| {})
            .await
            .expect("export succeeds");
        check_export_file(&receipt, out.path(), &src, case_id);
        names.push(format!("case_offline_{case_id}.enc"));
    }
    // Nothing else was left behind (no partial files).
    names.sort();
    assert_eq!(dir_entries(out.path()), names);
}

// ---------------------------------------------------------------------------
// The stream's shape through the generated client.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_is_header_then_ordered_chunks_then_one_key() {
    let server = start_server(|c| c.chunk_size = 4096).await;
    let case_id = server.case_ids[1].clone();
    let mut raw = raw_client(&server.url).await;
    let mut stream = raw
        .export_case(authed(request(&case_id, PURPOSE)))
        .await
        .expect("export starts")
        .into_inner();
    let mut messages = Vec::new();
    while let Some(m) = stream.message().await.expect("no error status mid-stream") {
        messages.push(m.message.expect("every message sets the oneof"));
    }

    let mut it = messages.into_iter();
    let header = match it.next() {
        Some(Msg::Header(h)) => h,
        other => panic!("first message is not the header: {other:?}"),
    };
    let mut tokens = Vec::new();
    let mut key: Option<ExportKey> = None;
    for m in it {
        assert!(key.is_none(), "a message followed the key: {m:?}");
        match m {
            Msg::Chunk(c) => {
                assert_eq!(c.index, tokens.len() as u64, "chunk out of order");
                tokens.push(c.token);
            }
            Msg::Key(k) => key = Some(k),
            Msg::Header(_) => panic!("a second header"),
        }
    }
    let key = key.expect("the stream ends with the key");

    // Header fields.
    assert_eq!(header.case_id, case_id);
    assert_eq!(header.file_name, format!("case_offline_{case_id}.enc"));
    assert_eq!(header.format_version, FORMAT_VERSION);
    assert_eq!(header.chunk_size, 4096);
    assert_eq!(header.export_id.len(), 32);
    assert!(
        header
            .export_id
            .chars()
            .all(|c| matches!(c, '0'..='9' | 'a'..='f'))
    );
    time::OffsetDateTime::parse(
        &header.created_at,
        &time::format_description::well_known::Rfc3339,
    )
    .expect("created_at is RFC 3339");
    let tables: Vec<&str> = header.row_counts.iter().map(|r| r.table.as_str()).collect();
    assert_eq!(
        tables, DEMO_CASE_TABLES,
        "row counts sorted by table, no users"
    );

    // Counts and sizes agree everywhere.
    assert!(
        tokens.len() > 10,
        "expected many chunks, got {}",
        tokens.len()
    );
    assert_eq!(header.chunk_count, tokens.len() as u64);
    assert_eq!(key.chunk_count, tokens.len() as u64);
    assert_eq!(header.chunk_count, header.plaintext_size.div_ceil(4096));
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    for t in &tokens {
        hasher.update(t.as_bytes());
        hasher.update(b"\n");
        size += t.len() as u64 + 1;
    }
    assert_eq!(key.ciphertext_size, size);
    assert_eq!(key.ciphertext_sha256, hex::encode(hasher.finalize()));
    assert_eq!(key.warning, KEY_WARNING);

    // The key is a 32-byte Fernet key, and never printed.
    let raw_key = URL_SAFE.decode(&key.fernet_key).expect("base64url key");
    assert_eq!(raw_key.len(), 32);
    assert_eq!(key.fernet_key.len(), 44);
    let dbg = format!("{key:?}");
    assert!(dbg.contains("[REDACTED]"), "{dbg}");
    assert!(!dbg.contains(&key.fernet_key), "Debug shows the key");
    let wrapped = format!(
        "{:?}",
        case_export::pb::ExportCaseResponse {
            message: Some(Msg::Key(key.clone()))
        }
    );
    assert!(
        !wrapped.contains(&key.fernet_key),
        "Debug of the response shows the key"
    );

    // The chunks open under the key into the announced snapshot.
    let secret = SecretKey::from_fernet_key(&key.fernet_key).expect("Fernet key");
    let mut opener = Opener::new(&secret, READ_LIMIT);
    for t in &tokens {
        opener.push(t).expect("chunk authenticates and is in order");
    }
    let opened = opener.finish().expect("complete export");
    assert_eq!(opened.export_id.to_hex(), header.export_id);
    assert_eq!(opened.plaintext.len() as u64, header.plaintext_size);
    let view = SnapshotView::open(&opened.plaintext).expect("snapshot");
    let m = view.manifest().expect("manifest");
    assert_eq!(m.export_id, header.export_id);
    let header_counts: Vec<(String, u64)> = header
        .row_counts
        .iter()
        .map(|r| (r.table.clone(), r.rows))
        .collect();
    assert_eq!(m.row_counts, header_counts);
}

// ---------------------------------------------------------------------------
// Error codes, safe messages, and a healthy server afterwards.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_get_precise_codes_and_server_stays_healthy() {
    // One slot: a refusal that leaked its slot would make the next export busy.
    let server = start_server(|c| c.max_in_flight = 1).await;
    let good = server.case_ids[0].clone();
    let db = server.case_db().to_path_buf();
    let paths = [db.as_path(), server.dir()];
    let cases: [(&str, &str, Code); 7] = [
        ("../x", PURPOSE, Code::InvalidArgument),
        ("a'b", PURPOSE, Code::InvalidArgument),
        ("", PURPOSE, Code::InvalidArgument),
        ("x' OR '1'='1", PURPOSE, Code::InvalidArgument),
        (
            "00000000-0000-4000-8000-000000000000",
            PURPOSE,
            Code::NotFound,
        ),
        (&good, "", Code::InvalidArgument),
        (&good, "   ", Code::InvalidArgument),
    ];
    // Without credentials: refused before anything else, just as safely.
    let mut raw = raw_client(&server.url).await;
    let s = raw
        .export_case(request(&good, PURPOSE))
        .await
        .expect_err("a call without credentials is refused");
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
    assert_message_is_safe(&s, &paths);
    assert!(!s.message().contains(TOKEN));
    assert_good_export(&server.url, &good).await;

    for (case_id, purpose, code) in cases {
        let s = refused(&server.url, request(case_id, purpose)).await;
        assert_eq!(
            s.code(),
            code,
            "case {case_id:?} purpose {purpose:?}: {s:?}"
        );
        assert_message_is_safe(&s, &paths);
        match code {
            Code::NotFound => assert_eq!(s.message(), "case not found"),
            _ if purpose.trim().is_empty() => assert!(s.message().starts_with("purpose "), "{s:?}"),
            _ => assert!(s.message().starts_with("case_id "), "{s:?}"),
        }
        assert_good_export(&server.url, &good).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_over_snapshot_ceiling_fails_precondition() {
    let server = start_server(|c| {
        c.max_snapshot_bytes = 65_536;
        c.max_in_flight = 1;
    })
    .await;
    let paths = [server.case_db(), server.dir()];
    for case_id in &server.case_ids {
        let s = refused(&server.url, request(case_id, PURPOSE)).await;
        // Every demo case is far over 64 KiB; with one slot, a leaked
        // permit would turn the next refusal into RESOURCE_EXHAUSTED.
        assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
        assert!(s.message().contains("65536"), "{s:?}");
        assert_message_is_safe(&s, &paths);
    }
    // No demo case fits in 64 KiB, so a good export cannot follow here:
    // the server must still answer the rest correctly and report healthy.
    let s = refused(&server.url, request("no-such-case", PURPOSE)).await;
    assert_eq!(s.code(), Code::NotFound, "{s:?}");
    let mut c = client(&server.url).await;
    match c
        .export_case(&server.case_ids[0], PURPOSE, &mut Vec::new(), |_, _| {})
        .await
    {
        Err(ClientError::TooLarge(m)) => assert!(m.contains("ceiling"), "{m}"),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_serving(&server.url).await;
}

/// The standard health service says the export service is serving.
async fn assert_serving(url: &str) {
    use tonic_health::pb::health_check_response::ServingStatus;
    let status = export_health(url).await.expect("health check");
    assert_eq!(status, ServingStatus::Serving as i32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_case_db_is_unavailable_until_it_appears() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("later").join("cases.db");
    let mut config = test_config(missing.clone(), dir.path());
    config.max_in_flight = 1;
    let server = spawn_server(config, dir, vec![]).await;
    for case_id in ["11111111-2222-4333-8444-555555555555", "any-case"] {
        let s = refused(&server.url, request(case_id, PURPOSE)).await;
        assert_eq!(s.code(), Code::Unavailable, "{s:?}");
        assert!(s.message().contains("not found"), "{s:?}");
        assert_message_is_safe(&s, &[&missing, server.dir()]);
    }
    // The database appears: the same server now exports from it.
    std::fs::create_dir(missing.parent().expect("parent")).expect("mkdir");
    let report = seed_demo(&missing, &small_seed()).expect("seed");
    assert_good_export(&server.url, &report.case_ids[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_sqlite_case_db_is_unavailable_until_replaced() {
    let server = start_server(|c| c.max_in_flight = 1).await;
    let db = server.case_db().to_path_buf();
    // Keep the good database aside and put random bytes in its place.
    let aside = server.dir().join("good.db");
    std::fs::rename(&db, &aside).expect("move the database aside");
    let mut noise = vec![0u8; 64 * 1024];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut noise);
    std::fs::write(&db, &noise).expect("write noise");
    for case_id in &server.case_ids[..2] {
        let s = refused(&server.url, request(case_id, PURPOSE)).await;
        assert_eq!(s.code(), Code::Unavailable, "{s:?}");
        assert!(s.message().contains("not a SQLite database"), "{s:?}");
        assert_message_is_safe(&s, &[&db, server.dir()]);
    }
    std::fs::rename(&aside, &db).expect("put the database back");
    assert_good_export(&server.url, &server.case_ids[0]).await;
}

// ---------------------------------------------------------------------------
// Slots: freed by clients that leave, refused over the limit.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_stream_frees_its_slot() {
    let server = start_server_with(&big_seed(), |c| {
        stall_prone(c);
        c.max_in_flight = 1;
    })
    .await;
    let case_id = server.case_ids[0].clone();

    // Dropped right after the header, the connection kept open.
    let (raw, stream, _) = held_export(&server.url, &case_id, PURPOSE, 0).await;
    assert_slot_taken(&server.url, &case_id).await;
    drop(stream);
    good_export_eventually(&server.url, &case_id).await;
    drop(raw);

    // Dropped after a few chunks, the connection kept open.
    let (raw, stream, _) = held_export(&server.url, &case_id, PURPOSE, 3).await;
    assert_slot_taken(&server.url, &case_id).await;
    drop(stream);
    good_export_eventually(&server.url, &case_id).await;
    drop(raw);

    // The whole connection closed mid-stream.
    let (raw, stream, _) = held_export(&server.url, &case_id, PURPOSE, 2).await;
    assert_slot_taken(&server.url, &case_id).await;
    drop(stream);
    drop(raw);
    good_export_eventually(&server.url, &case_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_limit_refuses_with_resource_exhausted() {
    let server = start_server_with(&big_seed(), |c| {
        stall_prone(c);
        c.max_in_flight = 1;
    })
    .await;
    let case_id = server.case_ids[2].clone();
    let (_raw, mut held, header) = held_export(&server.url, &case_id, PURPOSE, 0).await;

    let s = refused(&server.url, request(&server.case_ids[1], PURPOSE)).await;
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("limit 1"), "{s:?}");
    assert_message_is_safe(&s, &[server.case_db(), server.dir()]);
    let mut c = client(&server.url).await;
    match c
        .export_case(&case_id, PURPOSE, &mut Vec::new(), |_, _| {})
        .await
    {
        Err(e @ ClientError::Busy(_)) => assert!(e.is_retryable()),
        other => panic!("expected Busy, got {other:?}"),
    }

    // The held export was only slowed down: read on, it completes.
    let mut chunks = 0u64;
    let key = loop {
        match held.message().await.expect("held stream continues") {
            Some(m) => match m.message {
                Some(Msg::Chunk(ch)) => {
                    assert_eq!(ch.index, chunks);
                    chunks += 1;
                }
                Some(Msg::Key(k)) => break k,
                other => panic!("unexpected message {other:?}"),
            },
            None => panic!("held stream ended without a key"),
        }
    };
    assert_eq!(chunks, header.chunk_count);
    assert_eq!(key.chunk_count, chunks);
    assert!(held.message().await.expect("clean end").is_none());
    good_export_eventually(&server.url, &server.case_ids[1]).await;
}

// ---------------------------------------------------------------------------
// Graceful shutdown with a stream held open.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_a_held_stream_finishes() {
    let mut server = start_server_with(&big_seed(), |c| {
        stall_prone(c);
        c.shutdown_grace_secs = 1;
    })
    .await;
    let case_id = server.case_ids[0].clone();
    let (_raw, mut held, _) = held_export(&server.url, &case_id, PURPOSE, 1).await;

    // The held export never drains, so the server stops through its
    // backstop (grace + 5 s): the slowest test here, by design.
    server.trigger_shutdown();
    let served = within("server task after shutdown", BOUND, &mut server.join).await;
    served
        .expect("server task did not panic")
        .expect("serve_on returns Ok");

    // New connections are no longer accepted.
    match case_export::client::ExportClient::connect(&server.url).await {
        Err(e @ ClientError::Connect { .. }) => assert!(e.is_retryable()),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("a stopped server accepted a connection"),
    }

    // The held stream ends (error or end), without ever delivering a key:
    // a cut export must not look complete.
    let end = within("held stream after shutdown", BOUND, async {
        loop {
            match held.message().await {
                Ok(Some(m)) => match m.message {
                    Some(Msg::Chunk(_)) => {}
                    Some(Msg::Key(_)) => panic!("an export cut by shutdown delivered its key"),
                    other => panic!("unexpected message {other:?}"),
                },
                Ok(None) => return None,
                Err(s) => return Some(s),
            }
        }
    })
    .await;
    if let Some(s) = end {
        assert_ne!(s.code(), Code::Ok);
        // A connection the backstop closes under the client surfaces as the
        // client's own transport error (hyper's words, not the server's);
        // whatever the server said must be safe.
        if !s.message().starts_with("h2 protocol error") {
            assert_message_is_safe(&s, &[server.case_db(), server.dir()]);
        }
    }
}

// ---------------------------------------------------------------------------
// The real binary writes nothing to TMPDIR or its working directory.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_serve_writes_no_plaintext_to_disk() {
    let db = seeded_db(&small_seed());
    let tmpdir = tempfile::tempdir().expect("tmpdir");
    let cwd = tempfile::tempdir().expect("cwd");
    let out = tempfile::tempdir().expect("out");

    // Credentials can only come from a config file; it lives beside the
    // database, outside TMPDIR and the working directory, and so do the
    // custody trail (not what this test checks) and the server's log.
    let config_path = write_config(&db.dir.path().join("server.toml"), "");
    let server = ServerProcess::start_custom(
        &config_path,
        &db.path,
        &db.dir.path().join("audit.db"),
        db.dir.path(),
        &[],
        |cmd| {
            cmd.env("TMPDIR", tmpdir.path())
                .env("RUST_LOG", "warn")
                .current_dir(cwd.path());
        },
    );
    let url = server.url();

    let case_id = &db.case_ids[3];
    {
        let mut c = client(&url).await;
        let receipt = c
            .export_to_dir(case_id, PURPOSE, out.path(), |_, _| {})
            .await
            .expect("export through the binary");
        let enc = std::fs::read(receipt.path.as_deref().expect("path")).expect("read export");
        let view = open_export(&enc, &receipt);
        assert_eq!(view.manifest().expect("manifest").case_id, *case_id);
    }
    assert_eq!(
        dir_entries(out.path()),
        [format!("case_offline_{case_id}.enc")]
    );

    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");

    assert_eq!(
        dir_entries(tmpdir.path()),
        Vec::<String>::new(),
        "files in TMPDIR"
    );
    assert_eq!(
        dir_entries(cwd.path()),
        Vec::<String>::new(),
        "files in the working directory"
    );
}

// ---------------------------------------------------------------------------
// The client's own checks: no plaintext off the machine, no answer taken
// for another case.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_off_loopback_is_refused_before_anything_is_sent() {
    use case_export::audit::Kind;
    use case_export::client::{ClientOptions, ExportClient};
    let server = start_server(|_| {}).await;
    // Linux delivers a connection to 0.0.0.0 to this machine, so the URL
    // reaches the test server while naming a host that is not loopback.
    let url = format!("http://0.0.0.0:{}", server.addr.port());
    let opts = |allow_plaintext: bool| ClientOptions {
        allow_plaintext,
        ..test_client_options()
    };
    let Err(e) = ExportClient::connect_with(&url, opts(false)).await else {
        panic!("connected to {url} in plaintext without being told to");
    };
    assert!(
        matches!(&e, ClientError::PlaintextRefused { endpoint } if *endpoint == url),
        "{e:?}"
    );
    assert!(!e.is_retryable());
    let m = e.to_string();
    for what in [url.as_str(), "https://", "--ca-cert", "--allow-plaintext"] {
        assert!(m.contains(what), "{what:?} not in {m:?}");
    }

    // Told to, the same URL works: the refusal was the client's own.
    let out = tempfile::tempdir().expect("out");
    let receipt = ExportClient::connect_with(&url, opts(true))
        .await
        .expect("connect with allow_plaintext")
        .export_to_dir(&server.case_ids[0], PURPOSE, out.path(), |_, _| {})
        .await
        .expect("export with allow_plaintext");
    // Loopback needs no permission.
    ExportClient::connect_with(&server.url, opts(false))
        .await
        .expect("loopback is allowed");
    // A CA with an http:// URL would be ignored, the call sent in clear.
    let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let with_ca = ClientOptions {
        ca_pem: Some(ca.cert.pem().into_bytes()),
        ..opts(true)
    };
    let Err(e) = ExportClient::connect_with(&server.url, with_ca).await else {
        panic!("connected in plaintext with a CA given");
    };
    assert!(matches!(e, ClientError::TlsOnPlaintextUrl { .. }), "{e:?}");
    assert!(e.to_string().contains("use https://"), "{e}");

    // The refused client never reached the server: the trail holds the
    // attempt of the allowed export only.
    let events = eventually("the allowed export's end", BOUND, || async {
        let ev = audit_events(server.audit_db());
        if ev.iter().any(|e| e.kind == Kind::Completed) {
            Ok(ev)
        } else {
            Err(format!("{} events", ev.len()))
        }
    })
    .await;
    let attempts: Vec<_> = events.iter().filter(|e| e.kind == Kind::Attempt).collect();
    assert_eq!(attempts.len(), 1, "{events:#?}");
    assert_eq!(
        events_of_export(&events, &receipt.export_id)[0].kind,
        Kind::Attempt
    );
}

/// A stand-in server that answers every export with a complete stream,
/// well formed for the client, about `case_id` (else the case asked for)
/// under `file_name` (else the one that case gets).
#[derive(Clone, Default)]
struct Misfiler {
    case_id: Option<String>,
    file_name: Option<String>,
}

type Replies = tokio_stream::Iter<std::vec::IntoIter<Result<ExportCaseResponse, Status>>>;

#[tonic::async_trait]
impl ExportService for Misfiler {
    type ExportCaseStream = Replies;

    async fn export_case(
        &self,
        request: tonic::Request<ExportCaseRequest>,
    ) -> Result<tonic::Response<Replies>, Status> {
        let asked = request.into_inner().case_id;
        let case_id = self.case_id.clone().unwrap_or(asked);
        let file_name = self
            .file_name
            .clone()
            .unwrap_or_else(|| case_export::server::file_name_for(&case_id));
        let token = "gAAAAABstand-in-token";
        let line = format!("{token}\n");
        let header = ExportHeader {
            export_id: "ab".repeat(16),
            case_id,
            file_name,
            format_version: FORMAT_VERSION,
            chunk_size: 4096,
            plaintext_size: 1,
            chunk_count: 1,
            ..ExportHeader::default()
        };
        let mut key = ExportKey::default();
        key.fernet_key = SecretKey::generate()
            .expect("key")
            .expose_fernet_key()
            .to_string();
        key.ciphertext_sha256 = hex::encode(Sha256::digest(line.as_bytes()));
        key.ciphertext_size = line.len() as u64;
        key.chunk_count = 1;
        key.warning = KEY_WARNING.to_string();
        let reply = |m: Msg| Ok(ExportCaseResponse { message: Some(m) });
        let replies = vec![
            reply(Msg::Header(header)),
            reply(Msg::Chunk(EncryptedChunk {
                index: 0,
                token: token.to_string(),
            })),
            reply(Msg::Key(key)),
        ];
        Ok(tonic::Response::new(tokio_stream::iter(replies)))
    }
}

/// Serves `m` on 127.0.0.1:0 until the returned sender is dropped.
async fn serve_misfiler(m: Misfiler) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ExportServiceServer::new(m))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                async {
                    let _ = rx.await;
                },
            ),
    );
    (url, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_about_another_case_or_file_is_refused_and_writes_nothing() {
    const ASKED: &str = "case-abc";
    // The honest stand-in's stream is taken: the refusals below are about
    // the header alone.
    let (url, _stop) = serve_misfiler(Misfiler::default()).await;
    let out = tempfile::tempdir().expect("out");
    client(&url)
        .await
        .export_to_dir(ASKED, PURPOSE, out.path(), |_, _| {})
        .await
        .expect("an answer about the case asked for");
    assert_eq!(dir_entries(out.path()), ["case_offline_case-abc.enc"]);

    let other = |case: &str| Misfiler {
        case_id: Some(case.to_string()),
        file_name: None,
    };
    let renamed = |name: &str| Misfiler {
        case_id: None,
        file_name: Some(name.to_string()),
    };
    let cases = [
        (other("case-xyz"), "case"),
        (other("CASE-ABC"), "case"),
        (other(&"x".repeat(10_000)), "case"),
        (renamed("case_offline_case-xyz.enc"), "file"),
        (renamed("evidence.db"), "file"),
    ];
    for (liar, field) in cases {
        let seen = format!(
            "{:?}/{:?}",
            liar.case_id.as_deref().map(str::len),
            liar.file_name
        );
        let (url, _stop) = serve_misfiler(liar).await;
        let out = tempfile::tempdir().expect("out");
        let e = client(&url)
            .await
            .export_to_dir(ASKED, PURPOSE, out.path(), |_, _| {})
            .await
            .expect_err(&seen);
        match (&e, field) {
            (ClientError::WrongCase { asked, received }, "case") => {
                assert_eq!(asked, ASKED);
                assert!(received.chars().count() <= 83, "{seen}: unbounded {e}");
            }
            (ClientError::WrongFileName { expected, .. }, "file") => {
                assert_eq!(expected, "case_offline_case-abc.enc");
            }
            _ => panic!("{seen}: expected a {field} mismatch, got {e:?}"),
        }
        assert!(!e.is_retryable());
        assert!(e.to_string().contains("nothing was written"), "{e}");
        assert_eq!(dir_entries(out.path()), Vec::<String>::new(), "{seen}");

        // Into a writer: not a byte.
        let mut buf = Vec::new();
        client(&url)
            .await
            .export_case(ASKED, PURPOSE, &mut buf, |_, _| {})
            .await
            .expect_err(&seen);
        assert!(buf.is_empty(), "{seen}: {} bytes written", buf.len());
    }
}
