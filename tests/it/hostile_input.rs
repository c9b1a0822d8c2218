//! Hostile input at every door: case ids and purposes built to escape
//! (SQL, paths, control characters, 10 KiB, look-alike letters, invalid
//! UTF-8 on the wire), oversized requests and metadata, malformed `.enc`
//! files and keys for the offline reader, and garbage configuration files.
//! Each is refused with one clear error and leaves the server healthy.

#[path = "../../fuzz/src/oracle.rs"]
mod oracle;

use crate::support::*;
use case_export::seal::{ExportId, SecretKey, open_reader, seal_to_writer};
use case_export::server::Config;
use proptest::prelude::*;
use std::io::BufReader;
use std::path::Path;
use std::process::Output;
use std::time::Duration;
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;

const PURPOSE: &str = "TICKET-6502: hostile input test";
const BOUND: Duration = Duration::from_secs(30);
const DEADLINE: Duration = Duration::from_secs(10);

/// Checks a failed command printed exactly one line on stderr (prefixed
/// as the binary prints errors), nothing on stdout, and exited 1; returns
/// the line.
#[track_caller]
fn one_line_failure(out: &Output) -> String {
    let line = one_error_line(out);
    assert_eq!(stdout_of(out), "", "nothing on stdout");
    assert!(line.starts_with("case-export: "), "{line:?}");
    assert!(line.len() < 600, "a short line: {line:?}");
    line
}

/// A message fit to show and to log: one short line of printable text.
#[track_caller]
fn assert_clear_message(s: &Status) {
    let m = s.message();
    assert!(!m.is_empty() && m.len() <= 200, "{s:?}");
    assert!(!m.chars().any(char::is_control), "{s:?}");
    for needle in ["/tmp", ".db", "select ", "sqlite"] {
        assert!(!m.to_ascii_lowercase().contains(needle), "{s:?}");
    }
}

/// A gRPC codec that sends pre-encoded bytes as the request and returns
/// each response message's bytes: it lets a test put on the wire what the
/// generated client never would.
#[derive(Clone, Copy, Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

/// Sends `body` as the ExportCase request; the status the call ends with.
async fn raw_bytes_call(url: &str, body: Vec<u8>) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel(url, false).await);
    grpc.ready().await.expect("channel ready");
    let path = http::uri::PathAndQuery::from_static("/case_export.v1.ExportService/ExportCase");
    match grpc.server_streaming(authed(body), path, RawCodec).await {
        Err(s) => s,
        Ok(resp) => match resp.into_inner().message().await {
            Ok(Some(_)) => panic!("a response message to a malformed request"),
            Ok(None) => panic!("a malformed request ended OK"),
            Err(s) => s,
        },
    }
}

/// The encoded request with `field`'s value replaced by `bytes` (same
/// length), e.g. bytes that are not UTF-8.
fn patched_request(case_id: &str, purpose: &str, field: &str, bytes: &[u8]) -> Vec<u8> {
    use prost::Message;
    assert_eq!(field.len(), bytes.len());
    let mut enc = request(case_id, purpose).encode_to_vec();
    let at = enc
        .windows(field.len())
        .position(|w| w == field.as_bytes())
        .expect("field value in the encoding");
    enc[at..at + bytes.len()].copy_from_slice(bytes);
    enc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_case_ids_and_purposes_are_refused_and_leave_no_file() {
    // The real binary, run in an empty working directory that is also its
    // TMPDIR.
    let db = seeded_db(&small_seed());
    let cwd = tempfile::tempdir().expect("cwd");
    let audit_db = db.dir.path().join("audit.db");
    let server = ServerProcess::start_custom(
        &write_config(&db.dir.path().join("server.toml"), ""),
        &db.path,
        &audit_db,
        db.dir.path(),
        &[],
        |cmd| {
            cmd.env("RUST_LOG", "warn")
                .env("TMPDIR", cwd.path())
                .current_dir(cwd.path());
        },
    );
    let url = server.url();
    let good = db.case_ids[0].clone();
    let long = "x".repeat(10 * 1024);
    let cases: Vec<(&str, &str)> = vec![
        // SQL metacharacters.
        ("x' OR '1'='1", "contains '\\''"),
        ("a'; DROP TABLE cases; --", "contains '\\''"),
        ("1 UNION SELECT token_sha256 FROM users", "contains ' '"),
        ("%", "contains '%'"),
        ("*", "contains '*'"),
        ("\"cases\"", "contains '\"'"),
        // Paths.
        ("../../../../etc/passwd", "contains '/'"),
        ("..", "must not start with '.'"),
        ("a/../../b", "contains '/'"),
        ("/etc/passwd", "contains '/'"),
        ("C:\\Windows\\win.ini", "contains ':'"),
        ("~root", "contains '~'"),
        ("file:cases.db?mode=rw", "contains ':'"),
        // NUL and control characters.
        ("a\0b", "contains U+0000"),
        ("\0", "contains U+0000"),
        ("a\nb", "contains U+000A"),
        ("a\r\nb", "contains U+000D"),
        ("\u{1b}[31mred", "contains U+001B"),
        ("tab\there", "contains U+0009"),
        ("del\u{7f}", "contains U+007F"),
        // Very long.
        (&long, "is longer than 128 characters"),
        // Unicode look-alikes and tricks.
        ("\u{0430}bc", "contains '\u{0430}'"),
        ("\u{0441}ase-1", "contains '\u{0441}'"),
        ("\u{ff11}\u{ff12}", "contains '\u{ff11}'"),
        // Invisible ones are shown escaped, never raw.
        ("abc\u{202e}fdp.exe", r"contains '\u{202e}'"),
        ("a\u{200d}b", r"contains '\u{200d}'"),
        ("e\u{301}", r"contains '\u{301}'"),
        ("", "is required"),
    ];
    for (case_id, says) in &cases {
        let s = within(
            "a hostile call",
            BOUND,
            refused(&url, request(case_id, PURPOSE)),
        )
        .await;
        assert_eq!(s.code(), Code::InvalidArgument, "{case_id:?}: {s:?}");
        assert!(s.message().starts_with("case_id "), "{case_id:?}: {s:?}");
        assert!(
            s.message().contains(says),
            "{case_id:?}: {s:?} should say {says:?}"
        );
        assert!(
            case_id.len() < 4 || !s.message().contains(case_id),
            "the id is not echoed whole: {s:?}"
        );
        assert_clear_message(&s);
    }
    // Ids in the allowed alphabet reach the lookup, bound as a value: no
    // wildcard, no path, just "not found".
    let longest = "x".repeat(128);
    for case_id in ["_", "-", "a..b", "a.b-c_d", longest.as_str()] {
        let s = refused(&url, request(case_id, PURPOSE)).await;
        assert_eq!(s.code(), Code::NotFound, "{case_id:?}: {s:?}");
        assert_eq!(s.message(), "case not found");
    }
    // Hostile purposes.
    for (purpose, says) in [
        ("", "is required"),
        (" \t ", "is required"),
        ("ok\0then", "contains control characters"),
        ("line\nbreak", "contains control characters"),
        ("\u{1b}]0;title\u{7}", "contains control characters"),
        (&"p".repeat(10 * 1024), "is longer than 500 characters"),
    ] {
        let s = refused(&url, request(&good, purpose)).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{purpose:?}: {s:?}");
        assert!(s.message().starts_with("purpose "), "{s:?}");
        assert!(s.message().contains(says), "{purpose:?}: {s:?}");
        assert_clear_message(&s);
    }
    // Not UTF-8 on the wire: refused when the request is decoded, before
    // the service sees it; the server answers INVALID_ARGUMENT (tonic
    // alone would say INTERNAL).
    for (case_id, purpose, field) in [
        ("ABCDEFGH", PURPOSE, "ABCDEFGH"),
        (good.as_str(), "PURPOSE-XYZ", "PURPOSE-XYZ"),
    ] {
        let bad: Vec<u8> = [
            0xff, 0xfe, 0xc3, 0x28, 0xa0, 0xa1, 0xe2, 0x28, 0xa1, 0x80, 0xf0,
        ]
        .into_iter()
        .cycle()
        .take(field.len())
        .collect();
        let body = patched_request(case_id, purpose, field, &bad);
        let s = within("a non-UTF-8 call", BOUND, raw_bytes_call(&url, body)).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().contains("not UTF-8"), "{s:?}");
        assert!(s.message().contains("failed to decode"), "{s:?}");
        assert_clear_message(&s);
    }
    // A well-formed raw request through the same codec is served, so the
    // refusals above are about the bytes, not the codec.
    {
        let body = patched_request(&good, PURPOSE, "TICKET", b"TICKET");
        let mut grpc = tonic::client::Grpc::new(channel(&url, false).await);
        grpc.ready().await.expect("ready");
        let path = http::uri::PathAndQuery::from_static("/case_export.v1.ExportService/ExportCase");
        let mut stream = grpc
            .server_streaming(authed(body), path, RawCodec)
            .await
            .expect("a well-formed raw request is served")
            .into_inner();
        let mut n = 0;
        while stream.message().await.expect("no error").is_some() {
            n += 1;
        }
        assert!(n >= 3, "header, chunks and key: {n} messages");
    }

    wait_export_health(&url, ServingStatus::Serving, DEADLINE).await;
    assert_good_export(&url, &good).await;
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert_eq!(
        dir_entries(cwd.path()),
        Vec::<String>::new(),
        "files in cwd"
    );

    // The trail holds no hostile id: ids are recorded only once valid.
    let events = audit_events(&audit_db);
    assert!(!events.is_empty());
    for e in &events {
        if let Some(c) = &e.case_id {
            assert!(
                case_export::server::validate_case_id(c).is_ok(),
                "a hostile id reached the trail: {c:?}"
            );
        }
        for text in [&e.purpose, &e.detail].into_iter().flatten() {
            assert!(!text.chars().any(char::is_control), "{text:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// Oversized requests and metadata.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_is_refused_by_the_decode_limit() {
    let server = start_server(|c| c.max_in_flight = 1).await;
    let good = server.case_ids[0].clone();
    let limit = server.config.max_request_bytes;
    let huge = "p".repeat(5 << 20);
    for _ in 0..2 {
        let s = within(
            "a 5 MiB request",
            BOUND,
            refused(&server.url, request(&good, &huge)),
        )
        .await;
        assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
        assert!(
            s.message()
                .contains(&format!("the limit is: {limit} bytes")),
            "{s:?}"
        );
        assert_clear_message(&s);
    }
    // Just over the limit is refused the same way; just under reaches
    // validation (and its purpose rule).
    let over = "p".repeat(limit);
    let s = refused(&server.url, request(&good, &over)).await;
    assert_eq!(s.code(), Code::OutOfRange, "{s:?}");
    let under = "p".repeat(limit - 200);
    let s = refused(&server.url, request(&good, &under)).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert_good_export(&server.url, &good).await;
}

/// Raw HTTP/2 over TCP: the connection preface, SETTINGS, and a HEADERS
/// frame (with CONTINUATIONs) for an ExportCase call carrying a `name`
/// header of `value_len` bytes; returns the frame types the server sent
/// back before closing or going quiet.
async fn raw_h2_call_with_big_header(addr: std::net::SocketAddr, value_len: usize) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }
    /// HPACK integer with an `n`-bit prefix.
    fn int(first: u8, n: u32, mut v: usize, out: &mut Vec<u8>) {
        let max = (1usize << n) - 1;
        if v < max {
            out.push(first | v as u8);
            return;
        }
        out.push(first | max as u8);
        v -= max;
        while v >= 128 {
            out.push((v % 128 + 128) as u8);
            v /= 128;
        }
        out.push(v as u8);
    }
    /// A literal header field without indexing, new name, no Huffman.
    fn literal(name: &str, value: &[u8], out: &mut Vec<u8>) {
        out.push(0x00);
        int(0, 7, name.len(), out);
        out.extend_from_slice(name.as_bytes());
        int(0, 7, value.len(), out);
        out.extend_from_slice(value);
    }
    let mut block = Vec::new();
    literal(":method", b"POST", &mut block);
    literal(":scheme", b"http", &mut block);
    literal(
        ":path",
        b"/case_export.v1.ExportService/ExportCase",
        &mut block,
    );
    literal(":authority", b"localhost", &mut block);
    literal("content-type", b"application/grpc", &mut block);
    literal("te", b"trailers", &mut block);
    literal("x-padding", &vec![b'a'; value_len], &mut block);

    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    let pieces: Vec<&[u8]> = block.chunks(16_384).collect();
    for (i, p) in pieces.iter().enumerate() {
        let last = i + 1 == pieces.len();
        let (kind, flags) = if i == 0 { (0x1, 0) } else { (0x9, 0) };
        // END_HEADERS on the last piece; HEADERS also ends the stream.
        let flags = flags | if last { 0x4 } else { 0 } | if i == 0 { 0x1 } else { 0 };
        out.extend(frame(kind, flags, 1, p));
    }
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may close before reading it all: that is a refusal too.
    let _ = s.write_all(&out).await;
    // Frame types, in order, until the call or the connection ends (or,
    // against a hang, three quiet seconds).
    let mut got = Vec::new();
    let mut kinds = Vec::new();
    let mut at = 0;
    let mut buf = vec![0u8; 64 * 1024];
    'read: loop {
        match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
        while at + 9 <= got.len() {
            let len = (usize::from(got[at]) << 16)
                | (usize::from(got[at + 1]) << 8)
                | usize::from(got[at + 2]);
            if at + 9 + len > got.len() {
                break;
            }
            let (kind, flags) = (got[at + 3], got[at + 4]);
            let stream = u32::from_be_bytes([got[at + 5], got[at + 6], got[at + 7], got[at + 8]]);
            kinds.push(kind);
            at += 9 + len;
            // GOAWAY, RST_STREAM, or HEADERS/DATA ending stream 1.
            let call_over = kind == 0x7
                || (stream == 1
                    && (kind == 0x3 || (matches!(kind, 0x0 | 0x1) && flags & 0x1 != 0)));
            if call_over {
                break 'read;
            }
        }
    }
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_metadata_is_refused_and_server_stays_up() {
    let server = start_server(|c| c.max_in_flight = 1).await;
    let good = server.case_ids[0].clone();

    // Through the generated client: a 300 KiB header.
    let mut req = authed(request(&good, PURPOSE));
    req.metadata_mut().insert(
        "x-padding",
        "a".repeat(300 * 1024).parse().expect("ascii value"),
    );
    let r = within(
        "a call with 300 KiB of metadata",
        BOUND,
        raw_client(&server.url).await.export_case(req),
    )
    .await;
    match r {
        Ok(_) => panic!("a call with 300 KiB of metadata was served"),
        Err(s) => assert_ne!(s.code(), Code::Ok, "{s:?}"),
    }

    // On the wire, past any client-side check: the server answers the
    // stream with a refusal (a 431 HEADERS, RST_STREAM or GOAWAY), never
    // with the call.
    let kinds = within(
        "a raw call with 300 KiB of metadata",
        BOUND,
        raw_h2_call_with_big_header(server.addr, 300 * 1024),
    )
    .await;
    let refusal = kinds.iter().any(|k| matches!(k, 0x1 | 0x3 | 0x7));
    assert!(refusal, "no refusal among the frames {kinds:?}");
    assert!(
        !kinds.contains(&0x0),
        "the server sent DATA for a refused call: {kinds:?}"
    );
    // The same raw call with a small header is served (the frames are
    // right, so the refusal above is about the size).
    let kinds = raw_h2_call_with_big_header(server.addr, 16).await;
    assert!(kinds.contains(&0x1), "no response HEADERS: {kinds:?}");

    wait_export_health(&server.url, ServingStatus::Serving, DEADLINE).await;
    assert_good_export(&server.url, &good).await;
}

// ---------------------------------------------------------------------------
// Malformed `.enc` files and keys for the offline reader.

/// The key the corpus is read with.
fn reader_key() -> SecretKey {
    SecretKey::from_fernet_key(oracle::KEY).expect("fixed key")
}

/// A real export of `data` under `key`.
fn sealed(data: &[u8], key: &SecretKey, chunk_size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    seal_to_writer(data, key, ExportId([7; 16]), chunk_size, 1, &mut out).expect("seal");
    out
}

/// Opens `file` with the reader key: it must return, never panic, and an
/// error must be one non-empty line.
fn open_outcome(file: &[u8]) -> Result<Vec<u8>, String> {
    match open_reader(BufReader::new(file), &reader_key(), READ_LIMIT) {
        Ok(o) => Ok(o.plaintext.to_vec()),
        Err(e) => {
            let m = e.to_string();
            assert!(!m.is_empty() && !m.contains('\n'), "{m:?}");
            Err(m)
        }
    }
}

/// One random change to a file.
#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: prop::sample::Index,
        mask: u8,
    },
    Set {
        at: prop::sample::Index,
        byte: u8,
    },
    Insert {
        at: prop::sample::Index,
        byte: u8,
    },
    Delete {
        at: prop::sample::Index,
        len: usize,
    },
    Truncate {
        at: prop::sample::Index,
    },
    DuplicateLine {
        line: prop::sample::Index,
    },
    SwapLines {
        a: prop::sample::Index,
        b: prop::sample::Index,
    },
    Append {
        bytes: Vec<u8>,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1u8..=255)
            .prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        (
            any::<prop::sample::Index>(),
            prop::sample::select(vec![b'\n', b'=', b'\r', b' ', b'A', b'-', b'_', 0])
        )
            .prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (any::<prop::sample::Index>(), any::<u8>())
            .prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        (any::<prop::sample::Index>(), 1usize..200)
            .prop_map(|(at, len)| Mutation::Delete { at, len }),
        any::<prop::sample::Index>().prop_map(|at| Mutation::Truncate { at }),
        any::<prop::sample::Index>().prop_map(|line| Mutation::DuplicateLine { line }),
        (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Mutation::SwapLines { a, b }),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(|bytes| Mutation::Append { bytes }),
    ]
}

fn apply(file: &mut Vec<u8>, m: &Mutation) {
    let lines = |f: &[u8]| -> Vec<Vec<u8>> {
        f.split_inclusive(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect()
    };
    match m {
        Mutation::Flip { at, mask } if !file.is_empty() => {
            let i = at.index(file.len());
            file[i] ^= mask;
        }
        Mutation::Set { at, byte } if !file.is_empty() => {
            let i = at.index(file.len());
            file[i] = *byte;
        }
        Mutation::Insert { at, byte } => {
            let i = at.index(file.len() + 1);
            file.insert(i, *byte);
        }
        Mutation::Delete { at, len } if !file.is_empty() => {
            let i = at.index(file.len());
            let end = (i + len).min(file.len());
            file.drain(i..end);
        }
        Mutation::Truncate { at } => {
            let i = at.index(file.len() + 1);
            file.truncate(i);
        }
        Mutation::DuplicateLine { line } => {
            let mut ls = lines(file);
            if !ls.is_empty() {
                let i = line.index(ls.len());
                ls.insert(i, ls[i].clone());
                *file = ls.concat();
            }
        }
        Mutation::SwapLines { a, b } => {
            let mut ls = lines(file);
            if !ls.is_empty() {
                let (i, j) = (a.index(ls.len()), b.index(ls.len()));
                ls.swap(i, j);
                *file = ls.concat();
            }
        }
        Mutation::Append { bytes } => file.extend_from_slice(bytes),
        _ => {}
    }
}

/// Lines that look like tokens: URL-safe base64 with padding, of typical
/// token lengths or random ones.
fn base64_lines() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![Just(140usize), Just(5604usize), 0usize..400,].prop_flat_map(|n| {
        prop::collection::vec(
            prop::sample::select(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=".to_vec(),
            ),
            n,
        )
    });
    (prop::collection::vec(line, 0..6), any::<bool>()).prop_map(|(lines, final_newline)| {
        let mut f = lines.join(&b'\n');
        if final_newline {
            f.push(b'\n');
        }
        f
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_are_refused(file in prop::collection::vec(any::<u8>(), 0..4096)) {
        prop_assert!(open_outcome(&file).is_err());
    }

    #[test]
    fn random_base64_lines_are_refused(file in base64_lines()) {
        prop_assert!(open_outcome(&file).is_err());
    }

    #[test]
    fn valid_exports_under_another_key_are_refused(
        data in prop::collection::vec(any::<u8>(), 0..3000),
        chunk_size in 1usize..1024,
    ) {
        let other = SecretKey::generate().expect("key");
        let file = sealed(&data, &other, chunk_size);
        let e = open_outcome(&file).expect_err("another key's export opened");
        prop_assert_eq!(e, "chunk 0 failed authentication: wrong key or corrupted file");
    }

    /// The reader accepts exactly the file that was sealed: any mutation
    /// that changes a byte is refused.
    #[test]
    fn mutated_exports_are_refused_unless_unchanged(
        data in prop::collection::vec(any::<u8>(), 0..3000),
        chunk_size in 1usize..1024,
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let original = sealed(&data, &reader_key(), chunk_size);
        prop_assert_eq!(open_outcome(&original), Ok(data.clone()));
        let mut file = original.clone();
        for m in &mutations {
            apply(&mut file, m);
        }
        let got = open_outcome(&file);
        if file == original {
            prop_assert_eq!(got, Ok(data));
        } else {
            prop_assert!(got.is_err(), "a changed file opened: {:?}", mutations);
        }
    }

    /// Key text: never a panic; accepted only in its canonical form.
    #[test]
    fn malformed_keys_are_refused(text in prop_oneof![
        ".{0,100}",
        "[A-Za-z0-9_=-]{40,48}",
        "[A-Za-z0-9+/=]{44}",
    ]) {
        use base64::Engine;
        match SecretKey::from_fernet_key(&text) {
            Ok(k) => {
                let canonical = base64::engine::general_purpose::URL_SAFE.encode(k.expose_bytes());
                prop_assert_eq!(canonical.as_str(), text.trim());
            }
            Err(e) => prop_assert!(!e.to_string().contains('\n')),
        }
    }

    /// Valid tokens with arbitrary chunk headers: accepted exactly when the
    /// rules of docs/FORMAT.md say the sequence is well-formed (the oracle
    /// of the `chunk_sequence` fuzz target).
    #[test]
    fn chunk_sequences_are_accepted_iff_well_formed(layout in chunk_layout()) {
        oracle::check(&layout);
    }
}

/// Mostly-correct chunk sequences: each field keeps the value a correct
/// writer would use nine times in ten, so both outcomes are common.
fn chunk_layout() -> impl Strategy<Value = oracle::Layout> {
    let spec = (
        prop::option::weighted(0.1, 0u64..8),
        prop::option::weighted(0.1, any::<bool>()),
        prop::bool::weighted(0.05),
        prop::option::weighted(0.1, 0usize..80),
        prop::bool::weighted(0.03),
    )
        .prop_map(
            |(index, is_final, other_export, data_len, reserved_bit)| oracle::Spec {
                index,
                is_final,
                other_export,
                data_len,
                reserved_bit,
            },
        );
    (
        1usize..64,
        any::<prop::sample::Index>(),
        prop::option::weighted(0.1, 0u64..600),
        prop::collection::vec(spec, 0..8),
    )
        .prop_map(|(chunk_size, last, total, chunks)| oracle::Layout {
            chunk_size,
            last_len: last.index(chunk_size) + 1,
            total,
            chunks,
        })
}

#[test]
fn chunk_sequence_oracle_edges() {
    use oracle::{Layout, Spec, check, expected};
    let correct = |n: usize, chunk_size: usize, last_len: usize| Layout {
        chunk_size,
        last_len,
        total: None,
        chunks: vec![Spec::default(); n],
    };
    // Well-formed: one chunk (also empty), many, a full last chunk.
    for l in [
        correct(1, 10, 0),
        correct(1, 10, 7),
        correct(3, 10, 1),
        correct(3, 10, 10),
    ] {
        assert!(expected(&l).is_some(), "{l:?}");
        check(&l);
    }
    // Ill-formed: no chunk, an empty last chunk after full ones, a total
    // that does not add up, a final flag too early, a spliced chunk.
    let mut spliced = correct(3, 10, 5);
    spliced.chunks[1].other_export = true;
    let mut early = correct(3, 10, 5);
    early.chunks[1].is_final = Some(true);
    let mut off_total = correct(3, 10, 5);
    off_total.total = Some(26);
    for l in [
        correct(0, 10, 1),
        correct(3, 10, 0),
        spliced,
        early,
        off_total,
    ] {
        assert!(expected(&l).is_none(), "{l:?}");
        check(&l);
    }
}

/// `case-export open` on malformed files and keys: exactly one line on
/// stderr, exit status 1, and no output file.
#[test]
fn cli_open_on_malformed_input_prints_one_line_and_exits_1() {
    let dir = tempfile::tempdir().expect("dir");
    let key_file = dir.path().join("case.key");
    std::fs::write(&key_file, format!("{}\n", oracle::KEY)).expect("key file");
    let data = vec![0x5au8; 10_000];
    let good = sealed(&data, &reader_key(), 4096);
    let mut flipped = good.clone();
    flipped[200] ^= 0x01;
    let mut random = vec![0u8; 2048];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut random);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("random.enc", random, "chunk 0"),
        ("empty.enc", Vec::new(), "the file is empty"),
        (
            "base64.enc",
            b"gAAAAABhZ2VudC1zbWl0aC1mb3JnZXJ5LXRlc3Q=\nZm9v\n".to_vec(),
            "failed authentication",
        ),
        (
            "other-key.enc",
            sealed(&data, &SecretKey::generate().expect("key"), 4096),
            "chunk 0 failed authentication: wrong key or corrupted file",
        ),
        ("flipped.enc", flipped, "chunk 0 failed authentication"),
        (
            "truncated.enc",
            good[..good.len() - 1].to_vec(),
            "not followed by a newline",
        ),
        (
            "long-line.enc",
            vec![b'A'; 3 << 20],
            "chunk 0 is longer than any chunk token",
        ),
    ];
    for (name, bytes, says) in &cases {
        let enc = dir.path().join(name);
        std::fs::write(&enc, bytes).expect("write case");
        let out_db = dir.path().join(format!("{name}.db"));
        let out = run(bin()
            .arg("open")
            .arg(&enc)
            .arg("--key-file")
            .arg(&key_file)
            .arg("--out")
            .arg(&out_db));
        let line = one_line_failure(&out);
        assert!(line.contains(says), "{name}: {line:?} should say {says:?}");
        assert!(!out_db.exists(), "{name}: an output file was written");
    }
    // Malformed keys.
    let enc = dir.path().join("good.enc");
    std::fs::write(&enc, &good).expect("write");
    for (name, key) in [
        ("short.key", "c2hvcnQ=\n".to_string()),
        (
            "garbage.key",
            "\u{0}\u{1}not a key at all\u{7f}\n".to_string(),
        ),
        (
            "two-keys.key",
            format!("{}\n{}\n", oracle::KEY, oracle::KEY),
        ),
    ] {
        let kf = dir.path().join(name);
        std::fs::write(&kf, key).expect("write key");
        let out_db = dir.path().join(format!("{name}.db"));
        let out = run(bin()
            .arg("open")
            .arg(&enc)
            .arg("--key-file")
            .arg(&kf)
            .arg("--out")
            .arg(&out_db));
        let line = one_line_failure(&out);
        assert!(line.contains("not a Fernet key"), "{name}: {line:?}");
        assert!(!out_db.exists());
    }
    // Sanity: the good file opens with the same command.
    let out_db = dir.path().join("good.db");
    let out = run(bin()
        .arg("open")
        .arg(&enc)
        .arg("--key-file")
        .arg(&key_file)
        .arg("--out")
        .arg(&out_db));
    // The plaintext is not a SQLite database, so `open` refuses it after
    // verifying every chunk: still one line.
    let line = one_line_failure(&out);
    assert!(!line.contains("authentication"), "{line:?}");
    assert!(!out_db.exists());
}

// ---------------------------------------------------------------------------
// Garbage configuration files.

/// `serve --config FILE`: must fail before listening.
fn serve_with_config(dir: &Path, name: &str, text: &[u8]) -> Output {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    run(bin()
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .current_dir(dir)
        .env("RUST_LOG", "off"))
}

#[test]
fn garbage_config_files_are_refused_in_one_line_naming_key_and_line() {
    let dir = tempfile::tempdir().expect("dir");
    // (file, text, the key the line must name, the line number it must name)
    let parse_errors: [(&str, &str, &str, usize); 9] = [
        (
            "wrong-type.toml",
            "max_in_flight = \"many\"\n",
            "max_in_flight",
            1,
        ),
        (
            "unknown-key.toml",
            "listen = \"127.0.0.1:0\"\nchunk_sise = 4096\n",
            "chunk_sise",
            2,
        ),
        (
            "negative.toml",
            "\n\nbudget_wait_ms = -5\n",
            "budget_wait_ms",
            3,
        ),
        ("bad-addr.toml", "listen = \"nowhere\"\n", "listen", 1),
        ("array.toml", "case_db = [1, 2]\n", "case_db", 1),
        (
            "nested.toml",
            "[audit]\ncheckpoint_interval_secs = \"often\"\n",
            "checkpoint_interval_secs",
            2,
        ),
        (
            "unknown-table.toml",
            "[tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nca = \"x\"\n",
            "ca",
            4,
        ),
        (
            "duplicate.toml",
            "chunk_size = 4096\nchunk_size = 8192\n",
            "chunk_size",
            2,
        ),
        (
            "bad-role.toml",
            "[[principals]]\nname = \"p\"\ntoken_sha256 = \"00\"\nroles = [\"admin\"]\n",
            "roles",
            4,
        ),
    ];
    for (name, text, key, line) in parse_errors {
        let out = serve_with_config(dir.path(), name, text.as_bytes());
        let msg = one_line_failure(&out);
        assert!(msg.contains(key), "{name}: {msg:?} should name {key}");
        assert!(
            msg.contains(&format!("line {line}")),
            "{name}: {msg:?} should name line {line}"
        );
    }
    // Out-of-range values: refused, naming the key.
    for (name, text, key) in [
        ("tiny-chunk.toml", "chunk_size = 10\n", "chunk_size"),
        ("zero-flight.toml", "max_in_flight = 0\n", "max_in_flight"),
        (
            "huge-request.toml",
            "max_request_bytes = 99999999\n",
            "max_request_bytes",
        ),
        (
            "budget.toml",
            "max_snapshot_bytes = 1073741824\nmemory_budget_bytes = 1024\n",
            "memory_budget_bytes",
        ),
        (
            "public.toml",
            "listen = \"0.0.0.0:50051\"\n",
            "allow_plaintext",
        ),
        (
            "bad-digest.toml",
            "[[principals]]\nname = \"p\"\ntoken_sha256 = \"xyz\"\nroles = [\"exporter\"]\n",
            "token_sha256",
        ),
    ] {
        let out = serve_with_config(dir.path(), name, text.as_bytes());
        let msg = one_line_failure(&out);
        assert!(msg.contains(key), "{name}: {msg:?} should name {key}");
    }
    // Not text at all, and text that is not TOML.
    let mut noise = vec![0u8; 4096];
    rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut noise);
    noise[0] = 0xff;
    let msg = one_line_failure(&serve_with_config(dir.path(), "noise.toml", &noise));
    assert!(msg.contains("noise.toml"), "{msg:?}");
    let msg = one_line_failure(&serve_with_config(
        dir.path(),
        "prose.toml",
        b"this is not\na configuration file\n",
    ));
    assert!(msg.contains("line 1"), "{msg:?}");
    // A missing file names the file.
    let out = run(bin()
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("absent.toml")));
    let msg = one_line_failure(&out);
    assert!(msg.contains("absent.toml"), "{msg:?}");
    // Nothing was created in the working directory.
    let left: Vec<String> = dir_entries(dir.path())
        .into_iter()
        .filter(|n| !n.ends_with(".toml"))
        .collect();
    assert_eq!(left, Vec::<String>::new());
}

/// Out-of-range values name their key and the line they are on.
#[test]
fn out_of_range_config_values_name_their_line() {
    let dir = tempfile::tempdir().expect("dir");
    let out = serve_with_config(
        dir.path(),
        "range.toml",
        b"listen = \"127.0.0.1:0\"\n\nchunk_size = 10\n",
    );
    let msg = one_line_failure(&out);
    assert!(msg.contains("chunk_size"), "{msg:?}");
    assert!(msg.contains("line 3"), "{msg:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any text as a config: parsed or refused, never a panic, and a
    /// refusal is one line.
    #[test]
    fn any_config_text_is_parsed_or_refused_in_one_line(text in prop_oneof![
        ".{0,200}",
        "([a-z_]{1,20} = (\"[^\"\n]{0,10}\"|-?[0-9]{1,12}|true|\\[1\\]|\\{\\})\n){0,6}",
        "(\\[(audit|tls|scope|\\[principals\\])\\]\n([a-z_]{1,16} = [0-9\"a-z]{1,6}\n){0,3}){0,3}",
    ]) {
        if let Err(e) = Config::from_toml(&text, Path::new("fuzz.toml")) {
            let m = e.to_string();
            prop_assert!(!m.contains('\n'), "{m:?}");
        }
    }
}
