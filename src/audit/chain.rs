//! The hash chain: a canonical, length-prefixed encoding of each event and
//! the hash linking it to the one before (docs/AUDIT.md).

use super::Event;
use sha2::{Digest, Sha256};

/// The last committed event of a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The 16 random bytes naming this log.
    pub log_id: [u8; 16],
    /// Sequence number of the last committed event; 0 for an empty log.
    pub seq: u64,
    /// Hash of the last committed event; the genesis hash for an empty log.
    pub hash: [u8; 32],
}

const GENESIS_DOMAIN: &[u8] = b"case-export audit genesis v1\0";
const EVENT_DOMAIN: &[u8] = b"case-export audit event v1\0";

/// The previous-hash of sequence number 1, derived from the log id.
pub fn genesis_hash(log_id: &[u8; 16]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(GENESIS_DOMAIN);
    h.update(log_id);
    h.finalize().into()
}

fn field(h: &mut Sha256, v: Option<&str>) {
    match v {
        // NULL and "" must hash differently.
        None => h.update(u64::MAX.to_be_bytes()),
        Some(s) => {
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        }
    }
}

/// Hash of one event at `seq` whose predecessor hashed to `prev`.
pub fn event_hash(seq: u64, prev: &[u8; 32], e: &Event) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(EVENT_DOMAIN);
    h.update(seq.to_be_bytes());
    h.update(prev);
    for v in e.fields() {
        field(&mut h, v);
    }
    h.finalize().into()
}
