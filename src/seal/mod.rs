//! The sealed format (docs/FORMAT.md): the export key, the 40-byte chunk
//! header, the parallel sealer and the verifying reader. This is the only
//! module that touches key bytes or Fernet.

mod key;
mod reader;
mod token;
mod writer;

pub use key::SecretKey;
pub use reader::{OpenError, Opened, Opener, open_reader};
pub use writer::{BATCH_CHUNKS, SealError, SealSummary, Sealer, seal_to_writer};

use std::fmt;

/// Version of the sealed format described in docs/FORMAT.md.
pub const FORMAT_VERSION: u32 = 1;
/// First bytes of every chunk's plaintext.
pub const MAGIC: [u8; 4] = *b"CXF1";
/// Bytes of chunk header before each chunk's data.
pub const CHUNK_HEADER_LEN: usize = 40;
/// Flag bit marking the last chunk of an export.
pub const FLAG_FINAL: u8 = 0x01;
/// Default plaintext bytes per chunk (chosen by measurement: BENCHMARKS.md).
pub const DEFAULT_CHUNK_SIZE: usize = 256 * 1024;
/// Smallest chunk size a server accepts in its configuration.
pub const MIN_CHUNK_SIZE: usize = 4 * 1024;
/// Largest chunk size the format allows; bounds a reader's line length and
/// keeps each chunk message under gRPC's common 4 MiB message limit.
pub const MAX_CHUNK_SIZE: usize = 2 * 1024 * 1024;
/// The warning of the original design, sent with every key.
pub const KEY_WARNING: &str =
    "Store this key securely. Without it, the encrypted data cannot be decrypted.";

/// Identifies one export: 16 random bytes, shown as 32 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExportId(pub [u8; 16]);

impl ExportId {
    /// A fresh random id from the OS CSPRNG.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut b = [0u8; 16];
        getrandom::getrandom(&mut b)?;
        Ok(Self(b))
    }

    /// Lowercase hex, as in the header and the audit trail.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ExportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ExportId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExportId({})", self.to_hex())
    }
}

/// Number of chunks for `total` plaintext bytes; an empty snapshot still
/// has one (empty, final) chunk so every export ends with a final chunk.
pub fn chunk_count(total: u64, chunk_size: usize) -> u64 {
    let cs = chunk_size as u64;
    if total == 0 { 1 } else { total.div_ceil(cs) }
}

/// The fixed header sealed at the front of each chunk's plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkHeader {
    pub is_final: bool,
    pub export_id: ExportId,
    pub index: u64,
    pub total_len: u64,
}

impl ChunkHeader {
    pub fn encode(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut h = [0u8; CHUNK_HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4] = if self.is_final { FLAG_FINAL } else { 0 };
        // h[5..8] stay zero: reserved.
        h[8..24].copy_from_slice(&self.export_id.0);
        h[24..32].copy_from_slice(&self.index.to_be_bytes());
        h[32..40].copy_from_slice(&self.total_len.to_be_bytes());
        h
    }

    /// Parses a header; the error says which field is wrong.
    pub fn decode(b: &[u8]) -> Result<Self, &'static str> {
        if b.len() < CHUNK_HEADER_LEN {
            return Err("shorter than the 40-byte chunk header");
        }
        if b[0..4] != MAGIC {
            return Err("bad magic (expected \"CXF1\")");
        }
        if b[4] & !FLAG_FINAL != 0 || b[5..8] != [0, 0, 0] {
            return Err("unknown flags or non-zero reserved bytes");
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[8..24]);
        let mut idx = [0u8; 8];
        idx.copy_from_slice(&b[24..32]);
        let mut tot = [0u8; 8];
        tot.copy_from_slice(&b[32..40]);
        Ok(Self {
            is_final: b[4] & FLAG_FINAL != 0,
            export_id: ExportId(id),
            index: u64::from_be_bytes(idx),
            total_len: u64::from_be_bytes(tot),
        })
    }
}

/// Length of the base64url Fernet token sealing `plain_len` bytes; readers
/// use it to bound a line before reading it.
pub fn token_len(plain_len: usize) -> usize {
    // version(1) + timestamp(8) + iv(16) + padded ciphertext + hmac(32)
    let raw = 1 + 8 + 16 + (plain_len / 16 + 1) * 16 + 32;
    raw.div_ceil(3) * 4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = ChunkHeader {
            is_final: true,
            export_id: ExportId([7; 16]),
            index: 3,
            total_len: 1 << 40,
        };
        assert_eq!(ChunkHeader::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn header_rejects_reserved_bits() {
        let mut b = ChunkHeader {
            is_final: false,
            export_id: ExportId([0; 16]),
            index: 0,
            total_len: 0,
        }
        .encode();
        b[4] = 0x02;
        assert!(ChunkHeader::decode(&b).is_err());
        b[4] = 0;
        b[6] = 1;
        assert!(ChunkHeader::decode(&b).is_err());
    }

    #[test]
    fn chunk_count_edges() {
        assert_eq!(chunk_count(0, 10), 1);
        assert_eq!(chunk_count(1, 10), 1);
        assert_eq!(chunk_count(10, 10), 1);
        assert_eq!(chunk_count(11, 10), 2);
    }
}
