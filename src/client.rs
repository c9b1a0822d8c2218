//! The internal client other services link: streams an export to a writer
//! or atomically into a directory, checking order and digest as it goes,
//! and hands back the key once in a type that zeroizes and never prints.

use crate::pb::export_case_response::Message as Msg;
use crate::pb::export_service_client::ExportServiceClient;
use crate::pb::{ExportCaseRequest, ExportHeader};
use crate::seal::{CHUNK_HEADER_LEN, MAX_CHUNK_SIZE, SecretKey, token_len};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};
use zeroize::Zeroizing;

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
    /// The key, once.
    pub key: SecretKey,
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
}

impl std::fmt::Debug for ClientOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientOptions")
            .field("token", &self.token.as_ref().map(|_| "[REDACTED]"))
            .field("on_behalf_of", &self.on_behalf_of)
            .field("tls", &self.ca_pem.is_some())
            .field("client_cert", &self.identity_pem.is_some())
            .finish()
    }
}

/// Client for `case_export.v1.ExportService`.
#[derive(Clone)]
pub struct ExportClient {
    inner: ExportServiceClient<Channel>,
    token: Option<Zeroizing<String>>,
    on_behalf_of: Option<String>,
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
        if endpoint.starts_with("https://") || opts.ca_pem.is_some() || opts.identity_pem.is_some()
        {
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
        }
    }

    fn request(&self, req: ExportCaseRequest) -> Result<Request<ExportCaseRequest>, ClientError> {
        let mut r = Request::new(req);
        if let Some(t) = &self.token {
            let header = Zeroizing::new(format!("Bearer {}", t.as_str()));
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
            r.metadata_mut().insert(crate::server::ON_BEHALF_OF, v);
        }
        Ok(r)
    }

    /// Streams one export into `out`, checking the stream as it arrives.
    pub async fn export_case<W: AsyncWrite + Unpin>(
        &mut self,
        case_id: &str,
        purpose: &str,
        out: &mut W,
        mut progress: impl FnMut(&ExportHeader, Progress),
    ) -> Result<Receipt, ClientError> {
        let req = ExportCaseRequest {
            case_id: case_id.to_string(),
            purpose: purpose.to_string(),
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
        let mut hasher = Sha256::new();
        let mut chunks = 0u64;
        let mut bytes = 0u64;
        let key = loop {
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
                    hasher.update(c.token.as_bytes());
                    hasher.update(b"\n");
                    out.write_all(c.token.as_bytes()).await?;
                    out.write_all(b"\n").await?;
                    chunks += 1;
                    bytes += c.token.len() as u64 + 1;
                    progress(
                        &header,
                        Progress {
                            chunks,
                            total_chunks: header.chunk_count,
                        },
                    );
                }
                Some(Msg::Key(k)) => break k,
                Some(Msg::Header(_)) => return Err(proto("a second header arrived")),
                None => return Err(proto("an empty message arrived")),
            }
        };
        if stream.message().await?.is_some() {
            return Err(proto("messages followed the key"));
        }
        out.flush().await?;
        let digest = hex::encode(hasher.finalize());
        if chunks != header.chunk_count || key.chunk_count != chunks {
            return Err(proto("chunk count differs from what the server announced"));
        }
        if digest != key.ciphertext_sha256 || bytes != key.ciphertext_size {
            return Err(proto("the received bytes do not match the server's digest"));
        }
        let secret = SecretKey::from_fernet_key(&key.fernet_key)
            .map_err(|_| proto("the key message does not hold a Fernet key"))?;
        Ok(Receipt {
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
        })
    }

    /// Streams one export into `dir` under the server's file name, through a
    /// temporary file that is fsynced and renamed (mode 0600) only once the
    /// stream verified; a broken stream leaves no file behind.
    pub async fn export_to_dir(
        &mut self,
        case_id: &str,
        purpose: &str,
        dir: &Path,
        progress: impl FnMut(&ExportHeader, Progress),
    ) -> Result<Receipt, ClientError> {
        // Refuse before the server does the work and releases a key.
        let expected = dir.join(crate::server::file_name_for(case_id));
        if safe_file_name(&crate::server::file_name_for(case_id)).is_some() && expected.exists() {
            return Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{} already exists: move it or choose another directory",
                    expected.display()
                ),
            )));
        }
        let tmp = tempfile::Builder::new()
            .prefix(".case-export-")
            .suffix(".partial")
            .permissions(private_mode())
            .tempfile_in(dir)?;
        let (std_file, tmp_path) = tmp.into_parts();
        let mut file =
            tokio::io::BufWriter::with_capacity(1 << 20, tokio::fs::File::from_std(std_file));
        let result = self
            .export_case(case_id, purpose, &mut file, progress)
            .await;
        let mut receipt = result?;
        file.flush().await?;
        let file = file.into_inner();
        file.sync_all().await?;
        drop(file);
        let name = safe_file_name(&receipt.file_name)
            .ok_or_else(|| ClientError::Protocol("the server sent an unsafe file name".into()))?;
        let dest = dir.join(name);
        tmp_path.persist_noclobber(&dest).map_err(|e| {
            ClientError::Io(std::io::Error::new(
                e.error.kind(),
                format!("cannot create {}: {}", dest.display(), e.error),
            ))
        })?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        receipt.path = Some(dest);
        Ok(receipt)
    }
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
    fn unsafe_names_are_refused() {
        assert!(safe_file_name("case_offline_abc.enc").is_some());
        for bad in ["../x.enc", "/etc/passwd", "", ".hidden", "a/b", "a\0b"] {
            assert!(safe_file_name(bad).is_none(), "{bad:?}");
        }
    }
}
