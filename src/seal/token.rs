//! Fernet tokens written on the RustCrypto primitives, several at a time.
//!
//! The tokens are standard Fernet (docs/FORMAT.md): version 0x80, the time,
//! a random IV, AES-128-CBC with PKCS#7 padding, HMAC-SHA256, base64url.
//! What differs from a one-token-at-a-time writer is speed: CBC encryption
//! is serial within a token, so one token keeps the AES unit waiting on each
//! block's result; sealing up to [`LANES`] tokens in lockstep gives it that
//! many independent blocks per step. Each token is assembled once in a
//! reused buffer and base64-encoded once into a string of its final size.
//!
//! Key material lives only in zeroizing memory: the AES round keys (the
//! `aes` crate's `zeroize` feature), the signing key, and the HMAC pads.
//! The `fernet` crate stays the reference: tests open every token with it
//! and with Python's `cryptography`.

use super::SecretKey;
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

const VERSION: u8 = 0x80;
/// Version, timestamp and IV before the ciphertext.
const PREFIX: usize = 1 + 8 + 16;
const MAC_LEN: usize = 32;

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
}

/// Seals plaintexts into Fernet tokens under one key. Holds one working
/// buffer per lane, reused from call to call and wiped on drop.
pub(crate) struct TokenWriter {
    aes: Aes128,
    signing_key: Zeroizing<[u8; 16]>,
    raw: Vec<Zeroizing<Vec<u8>>>,
}

impl TokenWriter {
    pub(crate) fn new(key: &SecretKey) -> Self {
        let k = key.expose_bytes();
        let mut signing_key = Zeroizing::new([0u8; 16]);
        signing_key.copy_from_slice(&k[..16]);
        Self {
            aes: Aes128::new(GenericArray::from_slice(&k[16..])),
            signing_key,
            raw: (0..LANES).map(|_| Zeroizing::new(Vec::new())).collect(),
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
        for ((raw, p), iv) in self.raw.iter_mut().zip(plains).zip(&ivs) {
            let pad = 16 - p.len() % 16;
            let need = PREFIX + p.len() + pad + MAC_LEN;
            // Clearing keeps the capacity: a buffer grown once is reused, and
            // no reallocation leaves plaintext behind in freed memory.
            raw.clear();
            if raw.capacity() < need {
                // Wipe before giving the old allocation back.
                raw.zeroize();
                **raw = Vec::with_capacity(need);
            }
            raw.push(VERSION);
            raw.extend_from_slice(&now.to_be_bytes());
            raw.extend_from_slice(iv);
            raw.extend_from_slice(p.head);
            raw.extend_from_slice(p.body);
            raw.resize(PREFIX + p.len() + pad, pad as u8);
        }
        let n = plains.len();
        {
            let mut lanes: Vec<&mut [u8]> = self.raw[..n]
                .iter_mut()
                .map(|r| &mut r[PREFIX - 16..])
                .collect();
            self.aes
                .encrypt_with_backend(CbcLanes { lanes: &mut lanes });
        }
        for raw in &mut self.raw[..n] {
            let mac = hmac_sha256(&self.signing_key, raw);
            raw.extend_from_slice(&mac);
            out.push(base64_simd::URL_SAFE.encode_type::<String>(&raw[..]));
        }
        Ok(())
    }
}

/// AES-128-CBC over several buffers in lockstep, in place. Each buffer is
/// the IV followed by whole blocks of padded plaintext, which become the
/// ciphertext; the IV stays.
struct CbcLanes<'a, 'b> {
    lanes: &'a mut [&'b mut [u8]],
}

impl BlockSizeUser for CbcLanes<'_, '_> {
    type BlockSize = U16;
}

impl BlockClosure for CbcLanes<'_, '_> {
    fn call<B: BlockBackend<BlockSize = U16>>(self, backend: &mut B) {
        let par = B::ParBlocksSize::USIZE;
        let blocks: Vec<usize> = self.lanes.iter().map(|l| l.len() / 16 - 1).collect();
        let longest = blocks.iter().copied().max().unwrap_or(0);
        let mut group = ParBlocks::<B>::default();
        let mut active = Vec::with_capacity(self.lanes.len());
        for j in 0..longest {
            active.clear();
            active.extend((0..self.lanes.len()).filter(|&l| j < blocks[l]));
            for ids in active.chunks(par) {
                if ids.len() == par {
                    for (g, &l) in group.iter_mut().zip(ids) {
                        chain_in(g, self.lanes[l], j);
                    }
                    backend.proc_par_blocks(InOut::from(&mut group));
                    for (g, &l) in group.iter().zip(ids) {
                        self.lanes[l][16 * (j + 1)..16 * (j + 2)].copy_from_slice(g);
                    }
                } else {
                    for &l in ids {
                        let mut b = GenericArray::<u8, U16>::default();
                        chain_in(&mut b, self.lanes[l], j);
                        backend.proc_block(InOut::from(&mut b));
                        self.lanes[l][16 * (j + 1)..16 * (j + 2)].copy_from_slice(&b);
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

/// Block `j` of a lane's plaintext XORed with the block before it (the IV
/// or the previous ciphertext block): CBC's input to the cipher.
#[inline(always)]
fn chain_in(dst: &mut GenericArray<u8, U16>, lane: &[u8], j: usize) {
    let (prev, plain) = lane[16 * j..16 * (j + 2)].split_at(16);
    for ((d, p), x) in dst.iter_mut().zip(prev).zip(plain) {
        *d = p ^ x;
    }
}

/// HMAC-SHA256 (RFC 2104) written out so that its pads stay in zeroizing
/// memory and the hasher's key-dependent state is reset, not left behind.
fn hmac_sha256(key: &[u8; 16], msg: &[u8]) -> [u8; MAC_LEN] {
    let mut pad = Zeroizing::new([0x36u8; 64]);
    for (p, k) in pad.iter_mut().zip(key) {
        *p ^= k;
    }
    let mut h = Sha256::new();
    h.update(&pad[..]);
    h.update(msg);
    let inner = h.finalize_reset();
    for p in pad.iter_mut() {
        *p ^= 0x36 ^ 0x5c;
    }
    h.update(&pad[..]);
    h.update(inner);
    let mac = h.finalize_reset();
    // The reset overwrote the keyed state; keep that store from being
    // optimised away as dead.
    std::hint::black_box(&h);
    mac.into()
}

/// Encrypts one block with AES-128 (for tests of the lockstep path).
#[cfg(test)]
fn aes_block(aes: &Aes128, block: &mut [u8; 16]) {
    aes.encrypt_block(GenericArray::from_mut_slice(block));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(key: &SecretKey, token: &str) -> Vec<u8> {
        fernet::Fernet::new(&key.expose_fernet_key())
            .unwrap()
            .decrypt(token)
            .expect("the fernet crate opens the token")
    }

    #[test]
    fn tokens_open_with_the_fernet_crate_for_every_lane_count_and_length() {
        let key = SecretKey::generate().unwrap();
        let mut w = TokenWriter::new(&key);
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for n in 1..=LANES {
            // Lengths around block boundaries, all different in one call.
            let plains: Vec<Plain<'_>> = (0..n)
                .map(|l| Plain {
                    head: &data[..l % 3 * 20],
                    body: &data[100..100 + [0, 1, 15, 16, 17, 31, 32, 4000][l]],
                })
                .collect();
            let mut out = vec![];
            w.seal(&plains, 1_700_000_000, &mut out).unwrap();
            assert_eq!(out.len(), n);
            for (p, t) in plains.iter().zip(&out) {
                assert_eq!(t.len(), super::super::token_len(p.len()));
                assert_eq!(open(&key, t), [p.head, p.body].concat());
            }
        }
    }

    #[test]
    fn hmac_matches_rfc_4231_shape_and_the_hmac_crate() {
        use hmac::{Hmac, Mac};
        let key = [0x0bu8; 16];
        for msg in [&b""[..], b"Hi There", &[0xdd; 1000]] {
            let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
            m.update(msg);
            assert_eq!(hmac_sha256(&key, msg), m.finalize().into_bytes()[..]);
        }
    }

    #[test]
    fn lockstep_cbc_equals_one_block_at_a_time() {
        let key = SecretKey::generate().unwrap();
        let w = TokenWriter::new(&key);
        let mut lanes: Vec<Vec<u8>> = (0..LANES + 3)
            .map(|l| (0..16 * (2 + l * 5)).map(|i| (i * 31 + l) as u8).collect())
            .collect();
        let expected: Vec<Vec<u8>> = lanes
            .iter()
            .map(|lane| {
                let mut v = lane.clone();
                for j in 1..v.len() / 16 {
                    let mut b = [0u8; 16];
                    for k in 0..16 {
                        b[k] = v[16 * j + k] ^ v[16 * (j - 1) + k];
                    }
                    aes_block(&w.aes, &mut b);
                    v[16 * j..16 * (j + 1)].copy_from_slice(&b);
                }
                v
            })
            .collect();
        let mut refs: Vec<&mut [u8]> = lanes.iter_mut().map(|l| &mut l[..]).collect();
        w.aes.encrypt_with_backend(CbcLanes { lanes: &mut refs });
        assert_eq!(lanes, expected);
    }
}
