//! The chunk-sequence oracle: builds `.enc` files of valid Fernet tokens
//! (under one fixed key) from a description of their chunk headers, and
//! predicts from the rules of docs/FORMAT.md alone ("Put together, a file is
//! valid when...") whether a reader must accept them and what it must
//! return. `check` runs `case_export::seal::open_reader` and panics when the
//! reader and the rules disagree.
//!
//! Shared by the `chunk_sequence` fuzz target and by a proptest in
//! tests/it/hostile_input.rs (included there by path), so the same oracle runs
//! under `cargo fuzz` and in the normal test suite.

use case_export::seal::{ExportId, MAX_CHUNK_SIZE, SecretKey, open_reader};
use sha2::{Digest, Sha256};

/// The fixed key every token is sealed under (URL-safe base64 of 32 bytes).
pub const KEY: &str = "c2VhbGVkLWV4cG9ydC1mdXp6LWtleS0zMi1ieXRlcyE=";
/// The reader's limit on the declared total.
pub const LIMIT: u64 = 1 << 20;
/// The export id of chunk descriptions that do not ask for another one.
pub const EXPORT_A: ExportId = ExportId([0xa5; 16]);
/// The "other" export id.
pub const EXPORT_B: ExportId = ExportId([0x5b; 16]);

/// One chunk of a sequence. `None` fields take the value a correct writer
/// would use for the chunk's position.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    /// The index sealed in the header (correct: the position).
    pub index: Option<u64>,
    /// The final flag (correct: set on the last chunk only).
    pub is_final: Option<bool>,
    /// Seal the chunk under export id B instead of A.
    pub other_export: bool,
    /// Data bytes (correct: the chunk size, the rest for the last chunk).
    pub data_len: Option<usize>,
    /// Flips bit 0 of the reserved byte 5 of the header.
    pub reserved_bit: bool,
}

/// A whole sequence and the values its "correct" fields derive from.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Chunk size of the correct writer (at least 1).
    pub chunk_size: usize,
    /// Data bytes of a correct last chunk (1 to `chunk_size`; 0 for one
    /// empty chunk).
    pub last_len: usize,
    /// The total declared in every header (correct: the sum of the data).
    pub total: Option<u64>,
    pub chunks: Vec<Spec>,
}

/// One chunk with every field decided.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    index: u64,
    is_final: bool,
    id: ExportId,
    data_len: usize,
    reserved_bit: bool,
}

fn resolve(l: &Layout) -> (Vec<Chunk>, u64) {
    let n = l.chunks.len();
    let chunks: Vec<Chunk> = l
        .chunks
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let last = i + 1 == n;
            Chunk {
                index: s.index.unwrap_or(i as u64),
                is_final: s.is_final.unwrap_or(last),
                id: if s.other_export { EXPORT_B } else { EXPORT_A },
                data_len: s
                    .data_len
                    .unwrap_or(if last { l.last_len } else { l.chunk_size }),
                reserved_bit: s.reserved_bit,
            }
        })
        .collect();
    let sum: u64 = chunks.iter().map(|c| c.data_len as u64).sum();
    (chunks, l.total.unwrap_or(sum))
}

/// The snapshot byte at `offset`: a pattern, so misplaced data shows.
fn byte_at(offset: u64) -> u8 {
    (offset.wrapping_mul(31).wrapping_add(offset >> 8) % 251) as u8
}

/// The 40-byte chunk header of docs/FORMAT.md, written from the spec.
fn header(c: &Chunk, total: u64) -> [u8; 40] {
    let mut h = [0u8; 40];
    h[0..4].copy_from_slice(b"CXF1");
    h[4] = u8::from(c.is_final);
    h[5] = u8::from(c.reserved_bit);
    h[8..24].copy_from_slice(&c.id.0);
    h[24..32].copy_from_slice(&c.index.to_be_bytes());
    h[32..40].copy_from_slice(&total.to_be_bytes());
    h
}

/// The `.enc` file of the layout: each chunk one valid token on its line.
/// Chunk data follow one another in the pattern, as a writer cuts them.
pub fn build(l: &Layout) -> Vec<u8> {
    let fernet = fernet::Fernet::new(KEY).expect("the fixed key is a Fernet key");
    let (chunks, total) = resolve(l);
    let mut file = Vec::new();
    let mut offset = 0u64;
    for c in &chunks {
        let mut plain = header(c, total).to_vec();
        plain.extend((0..c.data_len as u64).map(|k| byte_at(offset + k)));
        offset += c.data_len as u64;
        file.extend_from_slice(fernet.encrypt(&plain).as_bytes());
        file.push(b'\n');
    }
    file
}

/// What a reader must return for the layout, from the format's rules:
/// `Some(snapshot)` when the file is valid, `None` when it must be refused.
pub fn expected(l: &Layout) -> Option<(ExportId, Vec<u8>)> {
    let (chunks, total) = resolve(l);
    let n = chunks.len();
    let first = chunks.first()?;
    // Every header: flags 0x00 or 0x01 and zero reserved bytes, the same
    // export id (and the same total, which `build` always writes).
    if chunks.iter().any(|c| c.reserved_bit || c.id != first.id) {
        return None;
    }
    // The reader's limit on the declared total.
    if total > LIMIT {
        return None;
    }
    // The header on line i says index i; only the last has the final flag.
    for (i, c) in chunks.iter().enumerate() {
        if c.index != i as u64 || c.is_final != (i + 1 == n) {
            return None;
        }
    }
    let lens: Vec<usize> = chunks.iter().map(|c| c.data_len).collect();
    if n == 1 {
        // One chunk: its data length is T (possibly 0).
        if lens[0] as u64 != total {
            return None;
        }
    } else {
        // More: every chunk but the last has the same length C (1 to the
        // largest chunk size), the last 1 to C, adding up to T.
        let c = lens[0];
        if c == 0 || c > MAX_CHUNK_SIZE {
            return None;
        }
        if lens[..n - 1].iter().any(|&l| l != c) {
            return None;
        }
        if lens[n - 1] == 0 || lens[n - 1] > c {
            return None;
        }
        if lens.iter().map(|&l| l as u64).sum::<u64>() != total {
            return None;
        }
    }
    let data = (0..total).map(byte_at).collect();
    Some((first.id, data))
}

/// Builds the file, opens it with `open_reader`, and panics if the reader
/// accepts what the rules refuse, refuses what they accept, or returns
/// anything but the expected snapshot, id, chunk count and digest.
pub fn check(l: &Layout) {
    let key = SecretKey::from_fernet_key(KEY).expect("the fixed key parses");
    let file = build(l);
    let got = open_reader(&file[..], &key, LIMIT);
    match (got, expected(l)) {
        (Ok(opened), Some((id, data))) => {
            assert!(opened.plaintext[..] == data[..], "wrong snapshot for {l:?}");
            assert_eq!(opened.export_id, id, "{l:?}");
            assert_eq!(opened.chunks, l.chunks.len() as u64, "{l:?}");
            let digest: [u8; 32] = Sha256::digest(&file).into();
            assert_eq!(opened.sha256, digest, "{l:?}");
        }
        (Err(e), None) => {
            let msg = e.to_string();
            assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
        }
        (Ok(_), None) => panic!("the reader accepted an ill-formed sequence: {l:?}"),
        (Err(e), Some(_)) => panic!("the reader refused a well-formed sequence ({e}): {l:?}"),
    }
}
