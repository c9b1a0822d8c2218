//! Fernet tokens written on the RustCrypto primitives, several at a time.
//!
//! The tokens are standard Fernet (docs/FORMAT.md): version 0x80, the time,
//! a random IV, AES-128-CBC with PKCS#7 padding, HMAC-SHA256, base64url.
//! What differs from a one-token-at-a-time writer is speed: CBC encryption
//! is serial within a token, so one token keeps the AES unit waiting on each
//! block's result; sealing up to [`LANES`] tokens in lockstep gives it that
//! many independent blocks per step. Each token goes through in segments
//! small enough to stay in the CPU cache (encrypted, MACed and base64-encoded
//! while there) straight into a string of its final size: no buffer the
//! size of a chunk besides the token itself.
//!
//! Key material lives only in zeroizing memory: the AES round keys (the
//! `aes` crate's `zeroize` feature), the signing key, and the HMAC pads.
//! The `fernet` crate stays the reference: tests open every token with it
//! and with Python's `cryptography`.

use super::{SecretKey, token_len};
use aes::Aes128;
use aes::cipher::generic_array::GenericArray;
use aes::cipher::{
    BlockBackend, BlockClosure, BlockEncrypt, BlockSizeUser, KeyInit, ParBlocks, Unsigned,
    consts::U16, inout::InOut,
};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

/// Tokens sealed in lockstep: the AES-NI backend encrypts 8 blocks at once.
pub(crate) const LANES: usize = 8;
/// Bytes of each token handled at a time: whole AES blocks and whole
/// base64 groups.
const SEGMENT: usize = 3 * 1024;

const VERSION: u8 = 0x80;
const MAC_LEN: usize = 32;

type Block = GenericArray<u8, U16>;

/// One plaintext to seal, given in two parts (header and body) so the
/// caller never copies them together.
pub(crate) struct Plain<'a> {
    pub head: &'a [u8],
    pub body: &'a [u8],
}

impl Plain<'_> {
    fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }

    /// Length with PKCS#7 padding (always at least one byte of it).
    fn padded_len(&self) -> usize {
        (self.len() / 16 + 1) * 16
    }

    /// Copies bytes `at..at + dst.len()` of the padded plaintext into `dst`.
    fn copy_padded(&self, at: usize, dst: &mut [u8]) {
        let mut filled = 0;
        let (h, len) = (self.head.len(), self.len());
        let end = at + dst.len();
        if at < h {
            let n = end.min(h) - at;
            dst[..n].copy_from_slice(&self.head[at..at + n]);
            filled = n;
        }
        if end > h && at + filled < len {
            let from = at + filled - h;
            let n = end.min(len) - (at + filled);
            dst[filled..filled + n].copy_from_slice(&self.body[from..from + n]);
            filled += n;
        }
        let pad = (self.padded_len() - len) as u8;
        dst[filled..].fill(pad);
    }
}

/// One token being written: its CBC state, its MAC so far, its text so
/// far, and the ciphertext bytes still short of a whole base64 group.
struct Lane {
    prev: Block,
    mac: Sha256,
    text: String,
    carry: Vec<u8>,
    padded: usize,
}

impl Lane {
    /// Appends raw token bytes (already MACed where they must be).
    fn encode(&mut self, raw: &[u8]) {
        self.carry.extend_from_slice(raw);
        let whole = self.carry.len() / 3 * 3;
        base64_simd::URL_SAFE.encode_append(&self.carry[..whole], &mut self.text);
        self.carry.drain(..whole);
    }
}

/// Seals plaintexts into Fernet tokens under one key. Its working buffers
/// (one segment per lane) are reused from call to call and wiped on drop.
pub(crate) struct TokenWriter {
    aes: Aes128,
    signing_key: Zeroizing<[u8; 16]>,
    segments: Vec<Zeroizing<Vec<u8>>>,
}

impl TokenWriter {
    pub(crate) fn new(key: &SecretKey) -> Self {
        let k = key.expose_bytes();
        let mut signing_key = Zeroizing::new([0u8; 16]);
        signing_key.copy_from_slice(&k[..16]);
        Self {
            aes: Aes128::new(GenericArray::from_slice(&k[16..])),
            signing_key,
            segments: (0..LANES)
                .map(|_| Zeroizing::new(vec![0u8; SEGMENT]))
                .collect(),
        }
    }

    /// Seals each of `plains` (at most [`LANES`]) into one token, appended
    /// to `out` in the same order. `now` is the Fernet timestamp (seconds
    /// since the Unix epoch); IVs come from the OS CSPRNG.
    pub(crate) fn seal(
        &mut self,
        plains: &[Plain<'_>],
        now: u64,
        out: &mut Vec<String>,
    ) -> Result<(), getrandom::Error> {
        assert!(plains.len() <= LANES, "at most {LANES} tokens at a time");
        let mut ivs = [[0u8; 16]; LANES];
        getrandom::getrandom(ivs.as_flattened_mut())?;
        let pads = Pads::new(&self.signing_key);
        let mut lanes: Vec<Lane> = plains
            .iter()
            .zip(&ivs)
            .map(|(p, iv)| {
                let mut prefix = [0u8; 25];
                prefix[0] = VERSION;
                prefix[1..9].copy_from_slice(&now.to_be_bytes());
                prefix[9..].copy_from_slice(iv);
                let mut mac = Sha256::new();
                mac.update(&pads.inner[..]);
                mac.update(prefix);
                let mut lane = Lane {
                    prev: *Block::from_slice(iv),
                    mac,
                    text: String::with_capacity(token_len(p.len())),
                    carry: Vec::with_capacity(SEGMENT + MAC_LEN + 3),
                    padded: p.padded_len(),
                };
                lane.encode(&prefix);
                lane
            })
            .collect();
        let longest = lanes.iter().map(|l| l.padded).max().unwrap_or(0);
        let mut at = 0;
        while at < longest {
            let mut bufs: Vec<(&mut Lane, &mut [u8])> = Vec::with_capacity(lanes.len());
            for ((lane, seg), p) in lanes.iter_mut().zip(&mut self.segments).zip(plains) {
                if at < lane.padded {
                    let n = (lane.padded - at).min(SEGMENT);
                    p.copy_padded(at, &mut seg[..n]);
                    bufs.push((lane, &mut seg[..n]));
                }
            }
            self.aes.encrypt_with_backend(CbcLanes { lanes: &mut bufs });
            for (lane, ct) in bufs {
                lane.mac.update(&*ct);
                lane.encode(ct);
            }
            at += SEGMENT;
        }
        for mut lane in lanes {
            let inner = lane.mac.finalize_reset();
            lane.mac.update(&pads.outer[..]);
            lane.mac.update(inner);
            let tag = lane.mac.finalize_reset();
            // The reset overwrote the keyed state; keep that store from
            // being optimised away as dead.
            std::hint::black_box(&lane.mac);
            lane.carry.extend_from_slice(&tag);
            base64_simd::URL_SAFE.encode_append(&lane.carry, &mut lane.text);
            out.push(lane.text);
        }
        Ok(())
    }
}

/// HMAC-SHA256's inner and outer pads for a 16-byte key (RFC 2104), in
/// zeroizing memory.
struct Pads {
    inner: Zeroizing<[u8; 64]>,
    outer: Zeroizing<[u8; 64]>,
}

impl Pads {
    fn new(key: &[u8; 16]) -> Self {
        let mut inner = Zeroizing::new([0x36u8; 64]);
        let mut outer = Zeroizing::new([0x5cu8; 64]);
        for (i, k) in key.iter().enumerate() {
            inner[i] ^= k;
            outer[i] ^= k;
        }
        Self { inner, outer }
    }
}

/// AES-128-CBC over several lanes in lockstep, in place: each lane's
/// buffer holds whole blocks of plaintext, which become ciphertext,
/// chained from the lane's previous block.
struct CbcLanes<'a, 'b, 'c> {
    lanes: &'a mut [(&'b mut Lane, &'c mut [u8])],
}

impl BlockSizeUser for CbcLanes<'_, '_, '_> {
    type BlockSize = U16;
}

impl BlockClosure for CbcLanes<'_, '_, '_> {
    fn call<B: BlockBackend<BlockSize = U16>>(self, backend: &mut B) {
        let par = B::ParBlocksSize::USIZE;
        let longest = self
            .lanes
            .iter()
            .map(|(_, b)| b.len() / 16)
            .max()
            .unwrap_or(0);
        let mut group = ParBlocks::<B>::default();
        let mut active = Vec::with_capacity(self.lanes.len());
        for j in 0..longest {
            active.clear();
            active.extend((0..self.lanes.len()).filter(|&l| j < self.lanes[l].1.len() / 16));
            for ids in active.chunks(par) {
                if ids.len() == par {
                    for (g, &l) in group.iter_mut().zip(ids) {
                        let (lane, buf) = &self.lanes[l];
                        chain_in(g, &lane.prev, &buf[16 * j..16 * (j + 1)]);
                    }
                    backend.proc_par_blocks(InOut::from(&mut group));
                    for (g, &l) in group.iter().zip(ids) {
                        let (lane, buf) = &mut self.lanes[l];
                        buf[16 * j..16 * (j + 1)].copy_from_slice(g);
                        lane.prev = *g;
                    }
                } else {
                    for &l in ids {
                        let (lane, buf) = &mut self.lanes[l];
                        let mut b = Block::default();
                        chain_in(&mut b, &lane.prev, &buf[16 * j..16 * (j + 1)]);
                        backend.proc_block(InOut::from(&mut b));
                        buf[16 * j..16 * (j + 1)].copy_from_slice(&b);
                        lane.prev = b;
                    }
                }
            }
        }
        // The group last held ciphertext only, but wipe it anyway.
        for g in group.iter_mut() {
            g.zeroize();
        }
    }
}

/// A plaintext block XORed with the block before it (the IV or the
/// previous ciphertext block): CBC's input to the cipher.
#[inline(always)]
fn chain_in(dst: &mut Block, prev: &Block, plain: &[u8]) {
    for ((d, p), x) in dst.iter_mut().zip(prev).zip(plain) {
        *d = p ^ x;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
    use hmac::{Hmac, Mac};

    /// Opens a token with the `fernet` crate, and checks it byte by byte
    /// against the `cbc` and `hmac` crates: the IV it carries, then
    /// AES-128-CBC with PKCS#7 of the plaintext, then HMAC-SHA256.
    fn check(key: &SecretKey, token: &str, plain: &[u8], now: u64) {
        let opened = fernet::Fernet::new(&key.expose_fernet_key())
            .unwrap()
            .decrypt_at_time(token, None, now)
            .expect("the fernet crate opens the token");
        assert_eq!(opened, plain);
        let raw = base64_simd::URL_SAFE.decode_to_vec(token).unwrap();
        assert_eq!(raw[0], VERSION);
        assert_eq!(raw[1..9], now.to_be_bytes());
        let k = key.expose_bytes();
        let ct = cbc::Encryptor::<Aes128>::new_from_slices(&k[16..], &raw[9..25])
            .unwrap()
            .encrypt_padded_vec_mut::<Pkcs7>(plain);
        assert_eq!(raw[25..raw.len() - MAC_LEN], ct[..]);
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&k[..16]).unwrap();
        m.update(&raw[..raw.len() - MAC_LEN]);
        assert_eq!(raw[raw.len() - MAC_LEN..], m.finalize().into_bytes()[..]);
    }

    #[test]
    fn tokens_match_the_reference_crates_for_every_lane_count_and_length() {
        let key = SecretKey::generate().unwrap();
        let mut w = TokenWriter::new(&key);
        let data: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        // Around block, segment and base64-group boundaries, all different
        // in one call.
        let lens = [
            0,
            1,
            15,
            16,
            17,
            SEGMENT - 41,
            SEGMENT - 40,
            3 * SEGMENT + 5,
        ];
        for n in 1..=LANES {
            let plains: Vec<Plain<'_>> = (0..n)
                .map(|l| Plain {
                    head: &data[..l % 3 * 20],
                    body: &data[100..100 + lens[(l + n) % LANES]],
                })
                .collect();
            let mut out = vec![];
            let now = 1_700_000_000 + n as u64;
            w.seal(&plains, now, &mut out).unwrap();
            assert_eq!(out.len(), n);
            for (p, t) in plains.iter().zip(&out) {
                assert_eq!(t.len(), token_len(p.len()));
                assert_eq!(
                    t.capacity(),
                    t.len(),
                    "written into a string of its final size"
                );
                check(&key, t, &[p.head, p.body].concat(), now);
            }
        }
    }

    #[test]
    fn each_token_has_its_own_iv() {
        let key = SecretKey::generate().unwrap();
        let mut w = TokenWriter::new(&key);
        let same = Plain {
            head: b"",
            body: b"same",
        };
        let mut out = vec![];
        w.seal(
            &[
                same,
                Plain {
                    head: b"",
                    body: b"same",
                },
            ],
            0,
            &mut out,
        )
        .unwrap();
        assert_ne!(out[0], out[1]);
    }
}
