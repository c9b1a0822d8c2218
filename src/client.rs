//! The internal client other services link: streams an export to a writer
//! or atomically into a directory, checking order and digest as it goes,
//! and hands back the key once in a type that zeroizes and never prints.

mod lines;

use crate::contract::{ON_BEHALF_OF, file_name_for};
use crate::pb::export_case_response::Message as Msg;
use crate::pb::export_service_client::ExportServiceClient;
use crate::pb::{ExportCaseRequest, ExportCaseResponse, ExportHeader, ExportKey};
use crate::receipt::SignedReceipt;
use crate::seal::{CHUNK_HEADER_LEN, MAX_CHUNK_SIZE, SecretKey, token_len};
use lines::{FileLines, Lines};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWrite;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status, Streaming};
use zeroize::{Zeroize, Zeroizing};

/// What a calling service can branch on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot connect to {endpoint}: {message}")]
    Connect {
        /// The endpoint URL that was dialled.
        endpoint: String,
        /// Why the connection or its TLS setup failed.
        message: String,
    },
    /// The request was malformed (INVALID_ARGUMENT).
    #[error("request refused: {0}")]
    InvalidArgument(String),
    /// No such case, or not visible to this caller (NOT_FOUND).
    #[error("case not found")]
    NotFound,
    /// Credentials missing or wrong (UNAUTHENTICATED).
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// Authenticated but not allowed (PERMISSION_DENIED).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// Server busy; retry later (RESOURCE_EXHAUSTED).
    #[error("server busy: {0}")]
    Busy(String),
    /// Case too large for the server (FAILED_PRECONDITION).
    #[error("export refused: {0}")]
    TooLarge(String),
    /// Source, audit store or server temporarily unavailable (UNAVAILABLE).
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// Any other status.
    #[error("export failed ({code:?}): {message}")]
    Other {
        /// The gRPC status code returned.
        code: Code,
        /// The status message from the server.
        message: String,
    },
    /// The URL is plaintext (`http://`) and its host is not loopback, and
    /// [`ClientOptions::allow_plaintext`] is off. Nothing was sent.
    #[error(
        "refusing to connect to {endpoint} in plaintext: the bearer token and the export key \
         would cross the network unencrypted; use an https:// URL with the server's CA \
         (--ca-cert), or pass --allow-plaintext if the path is encrypted otherwise \
         (for example by a service mesh)"
    )]
    PlaintextRefused {
        /// The endpoint URL that was refused.
        endpoint: String,
    },
    /// TLS options (a CA or a client certificate) came with an `http://`
    /// URL, which is never encrypted. Nothing was sent.
    #[error(
        "{endpoint} is a plaintext URL, yet TLS options were given (--ca-cert, --client-cert): \
         use https:// for TLS"
    )]
    TlsOnPlaintextUrl {
        /// The endpoint URL that was refused.
        endpoint: String,
    },
    /// The header names another case than the one asked for. Nothing was
    /// written and the stream was dropped before its key.
    #[error(
        "the server answered for case {received:?} where {asked:?} was asked: nothing was \
         written; report this to the server's operator"
    )]
    WrongCase {
        /// The case id the client asked for.
        asked: String,
        /// The header's case id (at most 80 characters of it).
        received: String,
    },
    /// The header's file name is not the one the client derives from the
    /// case id ([`file_name_for`]). Nothing was written.
    #[error(
        "the server named the file {received:?} where {expected:?} was expected: nothing \
         was written; report this to the server's operator"
    )]
    WrongFileName {
        /// The name the client derives from the case id.
        expected: String,
        /// The header's file name (at most 80 characters of it).
        received: String,
    },
    /// The stream broke the protocol (order, counts or digest).
    #[error("the server's stream is invalid: {0}")]
    Protocol(String),
    /// Writing the export failed.
    #[error("cannot write the export: {0}")]
    Io(#[from] std::io::Error),
}

impl ClientError {
    /// True when the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Busy(_) | Self::Unavailable(_) | Self::Connect { .. }
        )
    }
}

impl From<Status> for ClientError {
    fn from(s: Status) -> Self {
        let m = s.message().to_string();
        match s.code() {
            Code::InvalidArgument => Self::InvalidArgument(m),
            Code::NotFound => Self::NotFound,
            Code::Unauthenticated => Self::Unauthenticated(m),
            Code::PermissionDenied => Self::PermissionDenied(m),
            Code::ResourceExhausted => Self::Busy(m),
            Code::FailedPrecondition => Self::TooLarge(m),
            Code::Unavailable => Self::Unavailable(m),
            code => Self::Other { code, message: m },
        }
    }
}

/// Proof of a finished export. Holds the key: zeroized on drop, redacted
/// in `Debug`.
#[derive(Debug)]
pub struct Receipt {
    /// 32 hex digits.
    pub export_id: String,
    /// The case exported.
    pub case_id: String,
    /// Suggested (or used) file name.
    pub file_name: String,
    /// Where the file was written, for `export_to_dir`.
    pub path: Option<PathBuf>,
    /// SHA-256 (hex) of the `.enc` bytes, checked against the server's.
    pub ciphertext_sha256: String,
    /// Chunks received.
    pub chunks: u64,
    /// Bytes of the `.enc` file.
    pub bytes: u64,
    /// Size of the decrypted snapshot.
    pub plaintext_size: u64,
    /// Rows per table as announced by the server.
    pub row_counts: Vec<(String, u64)>,
    /// The key, once, when the server sent it raw (no recipients).
    pub key: Option<SecretKey>,
    /// The key sealed to the recipients, when they were given.
    pub wrapped_key: Option<WrappedKey>,
    /// The server's signed receipt (docs/RECEIPT.md), if it signs them.
    pub signed_receipt: Option<SignedReceipt>,
    /// Where `export_to_dir` wrote the receipt.
    pub receipt_path: Option<PathBuf>,
}

/// The export's key sealed as an age file to public keys.
#[derive(Debug, Clone)]
pub struct WrappedKey {
    /// The binary age file; its plaintext is the Fernet key.
    pub age_file: Vec<u8>,
    /// The public keys it is sealed to.
    pub sealed_to: Vec<String>,
    /// Where `export_to_dir` wrote it (`case_offline_<case id>.key.age`).
    pub path: Option<PathBuf>,
}

/// Progress reported while streaming.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Chunks received so far.
    pub chunks: u64,
    /// Chunks announced in the header.
    pub total_chunks: u64,
}

/// How to reach and authenticate to a server.
#[derive(Default, Clone)]
pub struct ClientOptions {
    /// Bearer token of the calling service.
    pub token: Option<Zeroizing<String>>,
    /// The analyst the export is for (`x-on-behalf-of`).
    pub on_behalf_of: Option<String>,
    /// PEM roots to trust for the server's certificate (`https://` URLs).
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate and key, for mutual TLS.
    pub identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    /// Name to verify the server certificate against, if not the URL host.
    pub domain: Option<String>,
    /// Allow an `http://` URL whose host is not loopback. Off by default:
    /// the token and the key would cross the network unencrypted.
    pub allow_plaintext: bool,
    /// Public keys (age `age1...` or SSH) to seal the export's key to; the
    /// server then never sends the key raw.
    pub recipients: Vec<String>,
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("on_behalf_of", &self.on_behalf_of)
            .field("tls", &self.ca_pem.is_some())
            .field("client_cert", &self.identity_pem.is_some())
            .field("allow_plaintext", &self.allow_plaintext)
            .field("recipients", &self.recipients)
            .finish()
    }
}

/// Client for `case_export.v1.ExportService`.
#[derive(Clone)]
pub struct ExportClient {
    inner: ExportServiceClient<Channel>,
    token: Option<Zeroizing<String>>,
    on_behalf_of: Option<String>,
    recipients: Vec<String>,
}

impl ExportClient {
    /// Connects without credentials, e.g. to `http://127.0.0.1:50051`.
    pub async fn connect(endpoint: &str) -> Result<Self, ClientError> {
        Self::connect_with(endpoint, ClientOptions::default()).await
    }

    /// Connects with credentials and, for `https://` URLs, TLS.
    pub async fn connect_with(endpoint: &str, opts: ClientOptions) -> Result<Self, ClientError> {
        let conn_err = |message: String| ClientError::Connect {
            endpoint: endpoint.to_string(),
            message,
        };
        let mut ep =
            Endpoint::from_shared(endpoint.to_string()).map_err(|e| conn_err(error_chain(&e)))?;
        // Decided before dialling: a refused endpoint sees no byte at all.
        let https = ep.uri().scheme_str() == Some("https");
        if !https && (opts.ca_pem.is_some() || opts.identity_pem.is_some()) {
            // tonic would ignore them and speak plaintext.
            return Err(ClientError::TlsOnPlaintextUrl {
                endpoint: endpoint.to_string(),
            });
        }
        if !opts.allow_plaintext && !stays_private(ep.uri()) {
            return Err(ClientError::PlaintextRefused {
                endpoint: endpoint.to_string(),
            });
        }
        if https {
            let mut tls = ClientTlsConfig::new();
            if let Some(ca) = &opts.ca_pem {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &opts.identity_pem {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            if let Some(d) = &opts.domain {
                tls = tls.domain_name(d.clone());
            }
            ep = ep.tls_config(tls).map_err(|e| conn_err(error_chain(&e)))?;
        }
        let channel = ep.connect().await.map_err(|e| conn_err(error_chain(&e)))?;
        let mut c = Self::from_channel(channel);
        c.token = opts.token;
        c.on_behalf_of = opts.on_behalf_of;
        c.recipients = opts.recipients;
        Ok(c)
    }

    /// Wraps an existing channel (no credentials).
    pub fn from_channel(channel: Channel) -> Self {
        // A chunk message is one token of at most the format's largest chunk.
        let limit = token_len(MAX_CHUNK_SIZE + CHUNK_HEADER_LEN) + 4096;
        Self {
            inner: ExportServiceClient::new(channel).max_decoding_message_size(limit),
            token: None,
            on_behalf_of: None,
            recipients: Vec::new(),
        }
    }

    fn request(&self, req: ExportCaseRequest) -> Result<Request<ExportCaseRequest>, ClientError> {
        let mut r = Request::new(req);
        if let Some(t) = &self.token {
            // Sized once, so no reallocation leaves a copy of the token behind.
            let mut header = Zeroizing::new(String::with_capacity(7 + t.len()));
            header.push_str("Bearer ");
            header.push_str(t);
            let mut v: MetadataValue<_> = header.parse().map_err(|_| {
                ClientError::InvalidArgument("the token has invalid characters".into())
            })?;
            v.set_sensitive(true);
            r.metadata_mut().insert("authorization", v);
        }
        if let Some(o) = &self.on_behalf_of {
            if !o.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(ClientError::InvalidArgument(
                    "on-behalf-of must be printable ASCII (metadata cannot carry it otherwise)"
                        .into(),
                ));
            }
            let v = o.parse().map_err(|_| {
                ClientError::InvalidArgument(
                    "on-behalf-of must be printable ASCII (metadata cannot carry it otherwise)"
                        .into(),
                )
            })?;
            r.metadata_mut().insert(ON_BEHALF_OF, v);
        }
        Ok(r)
    }

    /// Sends the request and reads the header, which must name the case
    /// asked for and the file name derived from it.
    async fn start(
        &mut self,
        case_id: &str,
        purpose: &str,
    ) -> Result<(ExportHeader, Streaming<ExportCaseResponse>), ClientError> {
        let req = ExportCaseRequest {
            case_id: case_id.to_string(),
            purpose: purpose.to_string(),
            recipients: self.recipients.clone(),
        };
        let req = self.request(req)?;
        let mut stream = self.inner.export_case(req).await?.into_inner();
        let proto = |m: &str| ClientError::Protocol(m.to_string());
        let header = match stream.message().await? {
            Some(r) => match r.message {
                Some(Msg::Header(h)) => h,
                _ => return Err(proto("the first message is not the header")),
            },
            None => return Err(proto("the stream ended before the header")),
        };
        check_header(case_id, &header)?;
        Ok((header, stream))
    }

    /// Streams one export into `out`, checking the stream as it arrives.
    /// Nothing is written unless the header names the case asked for.
    pub async fn export_case<W: AsyncWrite + Unpin>(
        &mut self,
        case_id: &str,
        purpose: &str,
        out: &mut W,
        progress: impl FnMut(&ExportHeader, Progress),
    ) -> Result<Receipt, ClientError> {
        let (header, stream) = self.start(case_id, purpose).await?;
        let (receipt, _) = receive(header, stream, Lines::writer(out), progress).await?;
        Ok(receipt)
    }

    /// Streams one export into `dir` under the file name derived from the
    /// case id (which the header must repeat), through a temporary file that
    /// is created only after the header checked out, and fsynced and renamed
    /// (mode 0600) only once the stream verified; a broken stream leaves no
    /// file behind.
    pub async fn export_to_dir(
        &mut self,
        case_id: &str,
        purpose: &str,
        dir: &Path,
        progress: impl FnMut(&ExportHeader, Progress),
    ) -> Result<Receipt, ClientError> {
        // Refuse before the server does the work and releases a key.
        if safe_file_name(&file_name_for(case_id)).is_some() {
            for name in side_files(&file_name_for(case_id)) {
                let expected = dir.join(name);
                if expected.exists() {
                    return Err(ClientError::Io(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        format!(
                            "{} already exists: move it or choose another directory",
                            expected.display()
                        ),
                    )));
                }
            }
        }
        // No file is created before the header has been checked.
        let (header, stream) = self.start(case_id, purpose).await?;
        let tmp = tempfile::Builder::new()
            .prefix(".case-export-")
            .suffix(".partial")
            .permissions(private_mode())
            .tempfile_in(dir)?;
        let (std_file, tmp_path) = tmp.into_parts();
        let lines = Lines::<tokio::io::Sink>::File(FileLines::start(std_file)?);
        let (mut receipt, file) = receive(header, stream, lines, progress).await?;
        if let Some(file) = file {
            tokio::fs::File::from_std(file).sync_all().await?;
        }
        let name = safe_file_name(&receipt.file_name)
            .ok_or_else(|| ClientError::Protocol("the server sent an unsafe file name".into()))?;
        let dest = dir.join(name);
        tmp_path.persist_noclobber(&dest).map_err(|e| {
            ClientError::Io(std::io::Error::new(
                e.error.kind(),
                format!("cannot create {}: {}", dest.display(), e.error),
            ))
        })?;
        let [_, key_name, receipt_name] = side_files(name);
        if let Some(w) = receipt.wrapped_key.as_mut() {
            let p = dir.join(key_name);
            write_new_private(&p, &w.age_file)?;
            w.path = Some(p);
        }
        if let Some(r) = &receipt.signed_receipt {
            let p = dir.join(receipt_name);
            write_new_private(&p, r.to_json().as_bytes())?;
            receipt.receipt_path = Some(p);
        }
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        receipt.path = Some(dest);
        Ok(receipt)
    }
}

/// The `.enc` file's name, and its wrapped key's and receipt's beside it.
fn side_files(enc_name: &str) -> [String; 3] {
    let stem = enc_name.strip_suffix(".enc").unwrap_or(enc_name);
    [
        enc_name.to_owned(),
        format!("{stem}.key.age"),
        format!("{stem}.receipt.json"),
    ]
}

/// Creates `path` (never replacing a file) with mode 0600 and `bytes`.
fn write_new_private(path: &Path, bytes: &[u8]) -> Result<(), ClientError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |e: std::io::Error| {
        ClientError::Io(std::io::Error::new(
            e.kind(),
            format!("cannot create {}: {e}", path.display()),
        ))
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(err)
}

/// Reads chunks into `out` and the key after them, checking order, counts
/// and digest against what the header and the key message announce.
// Long: the stream's order checks (header, chunks, key) as one sequence.
async fn receive<W: AsyncWrite + Unpin>(
    header: ExportHeader,
    mut stream: Streaming<ExportCaseResponse>,
    mut out: Lines<'_, W>,
    mut progress: impl FnMut(&ExportHeader, Progress),
) -> Result<(Receipt, Option<std::fs::File>), ClientError> {
    let proto = |m: &str| ClientError::Protocol(m.to_string());
    let mut chunks = 0u64;
    let mut bytes = 0u64;
    let (key, secret) = loop {
        let Some(resp) = stream.message().await? else {
            return Err(proto("the stream ended before the key: export incomplete"));
        };
        match resp.message {
            Some(Msg::Chunk(c)) => {
                if c.index != chunks {
                    return Err(ClientError::Protocol(format!(
                        "chunk {} arrived where chunk {chunks} was expected",
                        c.index
                    )));
                }
                if chunks >= header.chunk_count {
                    return Err(proto("more chunks than the header announced"));
                }
                bytes += c.token.len() as u64 + 1;
                out.line(c.token).await?;
                chunks += 1;
                progress(
                    &header,
                    Progress {
                        chunks,
                        total_chunks: header.chunk_count,
                    },
                );
            }
            Some(Msg::Key(mut k)) => {
                let secret = take_key(&mut k);
                break (k, secret);
            }
            Some(Msg::Header(_)) => return Err(proto("a second header arrived")),
            None => return Err(proto("an empty message arrived")),
        }
    };
    if stream.message().await?.is_some() {
        return Err(proto("messages followed the key"));
    }
    let (digest, file) = out.finish().await?;
    let digest = hex::encode(digest);
    if chunks != header.chunk_count || key.chunk_count != chunks {
        return Err(proto("chunk count differs from what the server announced"));
    }
    if digest != key.ciphertext_sha256 || bytes != key.ciphertext_size {
        return Err(proto("the received bytes do not match the server's digest"));
    }
    let wrapped_key = (!key.wrapped_key.is_empty()).then(|| WrappedKey {
        age_file: key.wrapped_key.clone(),
        sealed_to: key.sealed_to.clone(),
        path: None,
    });
    if secret.is_none() && wrapped_key.is_none() {
        return Err(proto(
            "the key message holds neither a Fernet key nor a wrapped key",
        ));
    }
    let signed_receipt = match key.receipt.as_str() {
        "" => None,
        text => Some(check_receipt(text, &header, &digest, bytes)?),
    };
    let receipt = Receipt {
        export_id: header.export_id.clone(),
        case_id: header.case_id.clone(),
        file_name: header.file_name.clone(),
        path: None,
        ciphertext_sha256: digest,
        chunks,
        bytes,
        plaintext_size: header.plaintext_size,
        row_counts: header
            .row_counts
            .iter()
            .map(|r| (r.table.clone(), r.rows))
            .collect(),
        key: secret,
        wrapped_key,
        signed_receipt,
        receipt_path: None,
    };
    Ok((receipt, file))
}

/// The receipt must describe what was received. Its signature is checked
/// by whoever holds the server's public key (`case-export verify`).
fn check_receipt(
    text: &str,
    header: &ExportHeader,
    digest: &str,
    bytes: u64,
) -> Result<SignedReceipt, ClientError> {
    let r = SignedReceipt::from_json(text.as_bytes())
        .map_err(|e| ClientError::Protocol(format!("the server's receipt: {e}")))?;
    let b = &r.receipt;
    if b.export_id != header.export_id
        || b.case_id != header.case_id
        || b.ciphertext_sha256 != digest
        || b.ciphertext_size != bytes
        || b.chunk_count != header.chunk_count
    {
        return Err(ClientError::Protocol(
            "the server's receipt describes another export".into(),
        ));
    }
    Ok(r)
}

/// Parses the key message's text and wipes it whatever the outcome, so the
/// zeroizing [`SecretKey`] is the only copy the client keeps.
fn take_key(k: &mut ExportKey) -> Option<SecretKey> {
    let parsed = SecretKey::from_fernet_key(&k.fernet_key).ok();
    k.fernet_key.zeroize();
    parsed
}

/// The header must be about the case asked for. The comparison is exact:
/// the server refuses spellings other than the stored key, so a difference
/// means an answer for another case, and its file would be misfiled.
fn check_header(case_id: &str, h: &ExportHeader) -> Result<(), ClientError> {
    if h.case_id != case_id {
        return Err(ClientError::WrongCase {
            asked: case_id.to_string(),
            received: shown(&h.case_id),
        });
    }
    let expected = file_name_for(case_id);
    if h.file_name != expected {
        return Err(ClientError::WrongFileName {
            expected,
            received: shown(&h.file_name),
        });
    }
    Ok(())
}

/// At most 80 characters of a server-sent value, for an error message.
fn shown(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

/// True when traffic to `uri` is private without the client's help: TLS
/// (`https://`), or a loopback host, which never leaves the machine.
fn stays_private(uri: &http::Uri) -> bool {
    uri.scheme_str() == Some("https") || uri.host().is_some_and(is_loopback_host)
}

/// `localhost`, 127.0.0.0/8 or ::1 (also as an IPv4-mapped address). Other
/// names are not resolved: what a name resolves to can change.
fn is_loopback_host(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

fn private_mode() -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(0o600)
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg = format!("{msg}: {text}");
        }
        src = s.source();
    }
    msg
}

/// A server-sent name is used only if it is one plain path component.
fn safe_file_name(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    ok.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_counts_as_private() {
        let private = |u: &str| stays_private(&u.parse().expect("uri"));
        for ok in [
            "http://127.0.0.1:50051",
            "http://127.8.9.10:1",
            "http://localhost:50051",
            "http://LocalHost:50051",
            "http://[::1]:50051",
            "http://[::ffff:127.0.0.1]:50051",
            "https://case-export.internal:50051",
            "https://10.0.0.5:50051",
        ] {
            assert!(private(ok), "{ok}");
        }
        for bad in [
            "http://10.0.0.5:50051",
            "http://0.0.0.0:50051",
            "http://[::]:50051",
            "http://case-export.internal:50051",
            "http://localhost.evil.example:50051",
            "http://127.0.0.1.nip.io:50051",
            "http://[fe80::1]:50051",
            "http://128.0.0.1:50051",
        ] {
            assert!(!private(bad), "{bad}");
        }
    }

    #[test]
    fn the_key_message_is_wiped_once_parsed() {
        let key = SecretKey::generate().expect("key");
        let mut msg = ExportKey::default();
        msg.fernet_key = key.expose_fernet_key().to_string();
        let parsed = take_key(&mut msg).expect("a Fernet key");
        assert!(parsed.ct_eq(&key));
        assert!(msg.fernet_key.is_empty(), "the message still holds the key");

        let mut bad = ExportKey::default();
        bad.fernet_key = "not a key".into();
        assert!(take_key(&mut bad).is_none());
        assert!(bad.fernet_key.is_empty());
    }

    #[test]
    fn the_header_must_name_the_case_and_its_file() {
        let good = ExportHeader {
            case_id: "case-abc".into(),
            file_name: "case_offline_case-abc.enc".into(),
            ..ExportHeader::default()
        };
        assert!(check_header("case-abc", &good).is_ok());
        let other_case = ExportHeader {
            case_id: "CASE-ABC".into(),
            ..good.clone()
        };
        assert!(matches!(
            check_header("case-abc", &other_case),
            Err(ClientError::WrongCase { .. })
        ));
        let other_file = ExportHeader {
            file_name: "case_offline_case-xyz.enc".into(),
            ..good.clone()
        };
        assert!(matches!(
            check_header("case-abc", &other_file),
            Err(ClientError::WrongFileName { .. })
        ));
        assert_eq!(shown(&"é".repeat(500)).chars().count(), 83);
        assert_eq!(shown("short"), "short");
    }

    #[test]
    fn unsafe_names_are_refused() {
        assert!(safe_file_name("case_offline_abc.enc").is_some());
        for bad in ["../x.enc", "/etc/passwd", "", ".hidden", "a/b", "a\0b"] {
            assert!(safe_file_name(bad).is_none(), "{bad:?}");
        }
    }
}
