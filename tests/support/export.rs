//! Good exports through the library client, opened with their key and
//! checked against their receipt: what a test runs to show the server still
//! serves after whatever it did to it.

use super::poll::eventually;
use super::server::client;
use case_export::client::{ClientError, Receipt};
use case_export::pb::export_case_response::Message as Msg;
use case_export::pb::export_service_client::ExportServiceClient;
use case_export::pb::{ExportCaseResponse, ExportHeader};
use case_export::seal::open_reader;
use case_export::snapshot::SnapshotView;
use std::io::BufReader;
use std::time::Duration;
use tonic::Streaming;
use tonic::transport::Channel;

/// The purpose of the good exports made by these helpers.
pub const PURPOSE: &str = "TICKET-4711: integration test";

/// Largest plaintext the tests' readers accept.
pub const READ_LIMIT: u64 = 1 << 30;

/// How long a good export may take to be served again (a slot or budget
/// given back): a bound against hangs.
const DEADLINE: Duration = Duration::from_secs(10);

/// Decrypts the export in `enc` and opens its snapshot, checking it is the
/// export the receipt describes.
#[track_caller]
pub fn open_export(enc: &[u8], receipt: &Receipt) -> SnapshotView {
    let opened = open_reader(
        BufReader::new(enc),
        receipt
            .key
            .as_ref()
            .expect("an export without recipients has its raw key"),
        READ_LIMIT,
    )
    .expect("the export opens with the receipt's key");
    assert_eq!(hex::encode(opened.sha256), receipt.ciphertext_sha256);
    assert_eq!(opened.chunks, receipt.chunks);
    assert_eq!(opened.export_id.to_hex(), receipt.export_id);
    assert_eq!(opened.plaintext.len() as u64, receipt.plaintext_size);
    assert_eq!(&opened.plaintext[..16], b"SQLite format 3\0");
    let view = SnapshotView::open(&opened.plaintext).expect("the plaintext is a SQLite database");
    assert!(view.integrity_ok().expect("integrity_check runs"));
    view
}

/// One complete export of `case_id` through the library client, opened
/// and checked against its receipt and the case asked for.
pub async fn export_checked(url: &str, case_id: &str) -> Result<Receipt, ClientError> {
    let mut enc = Vec::new();
    let receipt = client(url)
        .await
        .export_case(case_id, PURPOSE, &mut enc, |_, _| {})
        .await?;
    let view = open_export(&enc, &receipt);
    assert_eq!(view.manifest().expect("manifest").case_id, case_id);
    Ok(receipt)
}

/// A good export must succeed now (the server is healthy and no slot leaked).
pub async fn assert_good_export(url: &str, case_id: &str) -> Receipt {
    export_checked(url, case_id)
        .await
        .unwrap_or_else(|e| panic!("a good export of {case_id} failed after an earlier error: {e}"))
}

/// A good export, retried while the server answers "busy" (a slot or
/// budget not yet given back); any other failure fails the test.
pub async fn good_export_eventually(url: &str, case_id: &str) -> Receipt {
    eventually("a good export", DEADLINE, || async {
        match export_checked(url, case_id).await {
            Ok(r) => Ok(r),
            Err(e @ ClientError::Busy(_)) => Err(e.to_string()),
            Err(e) => panic!("a good export of {case_id} failed: {e}"),
        }
    })
    .await
}

/// The next message of an export stream; an error status fails the test.
pub async fn next_message(stream: &mut Streaming<ExportCaseResponse>) -> Option<Msg> {
    stream
        .message()
        .await
        .expect("no error status mid-stream")
        .map(|m| m.message.expect("every message sets the oneof"))
}

/// The first message of an export stream, which must be its header.
pub async fn read_header(stream: &mut Streaming<ExportCaseResponse>) -> ExportHeader {
    match next_message(stream).await {
        Some(Msg::Header(h)) => h,
        other => panic!("first message is not the header: {other:?}"),
    }
}

/// Reads the header and then `chunks` chunks, which must come in order.
pub async fn read_header_and_chunks(
    stream: &mut Streaming<ExportCaseResponse>,
    chunks: u64,
) -> ExportHeader {
    let header = read_header(stream).await;
    for i in 0..chunks {
        match stream
            .message()
            .await
            .expect("chunk")
            .and_then(|m| m.message)
        {
            Some(Msg::Chunk(c)) => assert_eq!(c.index, i),
            other => panic!("expected chunk {i}, got {other:?}"),
        }
    }
    header
}

/// Starts an export on its own small-window connection and reads the
/// header and `chunks` chunks, then leaves it stalled.
pub async fn held_export(
    url: &str,
    case_id: &str,
    purpose: &str,
    chunks: u64,
) -> (
    ExportServiceClient<Channel>,
    Streaming<ExportCaseResponse>,
    ExportHeader,
) {
    let mut raw = super::server::raw_client_small_window(url).await;
    let mut stream = raw
        .export_case(super::principals::authed(super::server::request(
            case_id, purpose,
        )))
        .await
        .expect("held export starts")
        .into_inner();
    let header = read_header_and_chunks(&mut stream, chunks).await;
    // Premise: far more ciphertext than the window and channel can hold, so
    // the producer is blocked while the stream is held.
    assert!(
        header.chunk_count > 60,
        "case too small to stall the producer: {} chunks",
        header.chunk_count
    );
    (raw, stream, header)
}
