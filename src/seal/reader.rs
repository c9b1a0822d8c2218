//! Verifies and opens an `.enc` file: every token must authenticate, and the
//! chunk headers must form one complete, ordered export.

use super::key::BadKey;
use super::token::TokenOpener;
use super::{CHUNK_HEADER_LEN, ChunkHeader, ExportId, MAX_CHUNK_SIZE, SecretKey, token_len};
use sha2::{Digest, Sha256};
use std::io::{BufRead, Read};
use zeroize::Zeroizing;

/// Why an `.enc` file was refused. Authentication failures say no more
/// than "wrong key or corrupted file"; structural errors name the chunk.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The key text is not a Fernet key.
    #[error(transparent)]
    BadKey(#[from] BadKey),
    /// Reading the file failed.
    #[error("cannot read the export file: {0}")]
    Io(#[from] std::io::Error),
    /// The file has no tokens at all.
    #[error("the file is empty: not a case-export file")]
    Empty,
    /// A token did not authenticate under the key.
    #[error("chunk {index} failed authentication: wrong key or corrupted file")]
    Auth {
        /// Zero-based position of the chunk in the file.
        index: u64,
    },
    /// A line is longer than any valid token.
    #[error("chunk {index} is longer than any chunk token: not a case-export file")]
    LineTooLong {
        /// Zero-based position of the chunk in the file.
        index: u64,
    },
    /// An authenticated chunk is not a valid chunk of this format.
    #[error("chunk {index} is malformed: {what}")]
    Malformed {
        /// Zero-based position of the chunk in the file.
        index: u64,
        /// Which rule of the format the chunk breaks.
        what: &'static str,
    },
    /// Chunk indices do not run 0, 1, 2, ...
    #[error(
        "chunk {found} found where chunk {expected} was expected: \
         chunks were dropped, repeated or reordered"
    )]
    OutOfOrder {
        /// The index due at this position in the file.
        expected: u64,
        /// The index the chunk's header carries.
        found: u64,
    },
    /// A chunk of another export was spliced in.
    #[error("chunk {index} belongs to another export: the file was spliced")]
    OtherExport {
        /// Zero-based position of the chunk in the file.
        index: u64,
    },
    /// The file ends before its final chunk.
    #[error("file ends before the final chunk: truncated export")]
    Truncated,
    /// Something follows the final chunk.
    #[error("data follows the final chunk {last}: the file was altered")]
    TrailingData {
        /// Index of the final chunk.
        last: u64,
    },
    /// The last line has no newline: the file was cut or altered.
    #[error("chunk {index} is not followed by a newline: the file was truncated or altered")]
    MissingNewline {
        /// Zero-based position of the chunk in the file.
        index: u64,
    },
    /// The declared size is above what this reader accepts.
    #[error("the export declares {declared} bytes, over this reader's limit of {limit} bytes")]
    TooLarge {
        /// Plaintext size the first chunk declares, in bytes.
        declared: u64,
        /// This reader's plaintext size limit, in bytes.
        limit: u64,
    },
}

/// A verified, decrypted export.
pub struct Opened {
    /// The SQLite snapshot, zeroized on drop.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The export id sealed in every chunk.
    pub export_id: ExportId,
    /// Chunks read.
    pub chunks: u64,
    /// SHA-256 of the `.enc` bytes read (tokens, each with its newline).
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field(
                "plaintext",
                &format_args!("[{} bytes]", self.plaintext.len()),
            )
            .field("export_id", &self.export_id)
            .field("chunks", &self.chunks)
            .finish()
    }
}

/// Incremental verifier: feed it tokens in file order, then `finish`.
pub struct Opener {
    opener: TokenOpener,
    plain: Zeroizing<Vec<u8>>,
    limit: u64,
    next: u64,
    first: Option<(ExportId, u64)>,
    chunk_size: Option<usize>,
    done: bool,
    out: Zeroizing<Vec<u8>>,
    hasher: Sha256,
}

impl Opener {
    /// `limit` caps the plaintext size this reader will accept.
    pub fn new(key: &SecretKey, limit: u64) -> Self {
        Self {
            opener: TokenOpener::new(key),
            plain: Zeroizing::new(Vec::new()),
            limit,
            next: 0,
            first: None,
            chunk_size: None,
            done: false,
            out: Zeroizing::new(Vec::new()),
            hasher: Sha256::new(),
        }
    }

    /// Verifies one token (without its newline) and appends its data.
    // Long: one branch per rule of docs/FORMAT.md, in the spec's order, so the two can be read side by side.
    pub fn push(&mut self, token: &str) -> Result<(), OpenError> {
        let index = self.next;
        if self.done {
            return Err(OpenError::TrailingData { last: index - 1 });
        }
        self.hasher.update(token.as_bytes());
        self.hasher.update(b"\n");
        // Exports carry no expiry; a far-future "now" keeps a reader whose
        // clock lags the server's from refusing fresh tokens.
        self.opener
            .open(token, u64::MAX / 2, &mut self.plain)
            .map_err(|()| OpenError::Auth { index })?;
        let plain = &self.plain;
        // Fernet readers tolerate missing or extra '=' padding; only the
        // canonical encoding is the sealed file.
        if token.len() != token_len(plain.len()) {
            return Err(OpenError::Auth { index });
        }
        let h = ChunkHeader::decode(plain).map_err(|what| OpenError::Malformed { index, what })?;
        let data = &plain[CHUNK_HEADER_LEN..];
        match self.first {
            None => {
                if h.total_len > self.limit {
                    return Err(OpenError::TooLarge {
                        declared: h.total_len,
                        limit: self.limit,
                    });
                }
                self.first = Some((h.export_id, h.total_len));
                // The total is authenticated and under the limit, so
                // reserving it once avoids reallocations that would leave
                // plaintext copies in freed memory.
                self.out.reserve_exact(h.total_len as usize);
            }
            Some((id, total)) => {
                if id != h.export_id {
                    return Err(OpenError::OtherExport { index });
                }
                if total != h.total_len {
                    return Err(OpenError::Malformed {
                        index,
                        what: "total length differs from chunk 0",
                    });
                }
            }
        }
        if h.index != index {
            return Err(OpenError::OutOfOrder {
                expected: index,
                found: h.index,
            });
        }
        let total = h.total_len;
        let have = self.out.len() as u64 + data.len() as u64;
        if h.is_final {
            if have != total {
                return Err(OpenError::Malformed {
                    index,
                    what: "chunk lengths do not add up to the declared total",
                });
            }
            if let Some(cs) = self.chunk_size
                && data.len() > cs
            {
                return Err(OpenError::Malformed {
                    index,
                    what: "final chunk is larger than the chunk size",
                });
            }
            self.done = true;
        } else {
            match self.chunk_size {
                None if data.is_empty() || data.len() > MAX_CHUNK_SIZE => {
                    return Err(OpenError::Malformed {
                        index,
                        what: "chunk size out of range",
                    });
                }
                None => self.chunk_size = Some(data.len()),
                Some(cs) if cs != data.len() => {
                    return Err(OpenError::Malformed {
                        index,
                        what: "a chunk other than the last is not of the chunk size",
                    });
                }
                Some(_) => {}
            }
            if have >= total {
                return Err(OpenError::Malformed {
                    index,
                    what: "non-final chunks reach the declared total",
                });
            }
        }
        self.out.extend_from_slice(data);
        self.next += 1;
        Ok(())
    }

    /// Ends the file: fails unless the final chunk was seen.
    pub fn finish(self) -> Result<Opened, OpenError> {
        let Some((export_id, _)) = self.first else {
            return Err(OpenError::Empty);
        };
        if !self.done {
            return Err(OpenError::Truncated);
        }
        Ok(Opened {
            plaintext: self.out,
            export_id,
            chunks: self.next,
            sha256: self.hasher.finalize().into(),
        })
    }
}

/// Reads, verifies and decrypts a whole `.enc` stream. Lines are bounded by
/// the longest token the format allows, so a hostile file cannot make the
/// reader allocate without limit.
pub fn open_reader<R: BufRead>(
    mut input: R,
    key: &SecretKey,
    limit: u64,
) -> Result<Opened, OpenError> {
    let max_line = token_len(MAX_CHUNK_SIZE + CHUNK_HEADER_LEN) + 2;
    let mut opener = Opener::new(key, limit);
    let mut line = Vec::new();
    let mut index = 0u64;
    loop {
        line.clear();
        let n = input
            .by_ref()
            .take(max_line as u64 + 1)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if n > max_line {
            return Err(OpenError::LineTooLong { index });
        } else {
            return Err(OpenError::MissingNewline { index });
        }
        // Tokens are ASCII; anything else cannot authenticate.
        let token = std::str::from_utf8(&line).map_err(|_| OpenError::Auth { index })?;
        opener.push(token)?;
        index += 1;
    }
    opener.finish()
}
