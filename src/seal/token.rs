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
    BlockBackend, BlockClosure, BlockDecrypt, BlockEncrypt, BlockSizeUser, KeyInit, ParBlocks,
    Unsigned, consts::U16, inout::InOut,
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
    keys: Keys,
    segments: Vec<Zeroizing<Vec<u8>>>,
}

impl TokenWriter {
    pub(crate) fn new(key: &SecretKey) -> Self {
        Self {
            keys: Keys::new(key),
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
        let mut lanes: Vec<Lane> = plains
            .iter()
            .zip(&ivs)
            .map(|(p, iv)| {
                let mut prefix = [0u8; 25];
                prefix[0] = VERSION;
                prefix[1..9].copy_from_slice(&now.to_be_bytes());
                prefix[9..].copy_from_slice(iv);
                let mut mac = self.keys.pads.start();
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
            self.keys
                .aes
                .encrypt_with_backend(CbcLanes { lanes: &mut bufs });
            for (lane, ct) in bufs {
                lane.mac.update(&*ct);
                lane.encode(ct);
            }
            at += SEGMENT;
        }
        for mut lane in lanes {
            let tag = self.keys.pads.finish(&mut lane.mac);
            lane.carry.extend_from_slice(&tag);
            base64_simd::URL_SAFE.encode_append(&lane.carry, &mut lane.text);
            out.push(lane.text);
        }
        Ok(())
    }
}

/// Opens Fernet tokens under one key, as strictly as the `fernet` crate
/// (the tests hold the two to the same answers): base64url with or without
/// its `=` padding, version 0x80, a timestamp at most 60 s past `now`, the
/// HMAC compared in constant time before anything is decrypted, then
/// AES-128-CBC and PKCS#7.
pub(crate) struct TokenOpener {
    keys: Keys,
    raw: Vec<u8>,
}

/// Seconds a token's time may run ahead of the reader's (as in Fernet).
const MAX_CLOCK_SKEW: u64 = 60;

impl TokenOpener {
    pub(crate) fn new(key: &SecretKey) -> Self {
        Self {
            keys: Keys::new(key),
            raw: Vec::new(),
        }
    }

    /// Opens `token` into `plain` (replacing what it held). `Err` says no
    /// more than that the token is not one of this key's.
    pub(crate) fn open(
        &mut self,
        token: &str,
        now: u64,
        plain: &mut Zeroizing<Vec<u8>>,
    ) -> Result<(), ()> {
        use base64::Engine;
        use subtle::ConstantTimeEq;
        self.raw.clear();
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode_vec(token.trim_end_matches('='), &mut self.raw)
            .map_err(|_| ())?;
        let raw = &self.raw[..];
        if raw.len() < 1 + 8 + 16 + MAC_LEN || raw[0] != VERSION {
            return Err(());
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&raw[1..9]);
        if now.saturating_add(MAX_CLOCK_SKEW) < u64::from_be_bytes(ts) {
            return Err(());
        }
        let (signed, tag) = raw.split_at(raw.len() - MAC_LEN);
        let (iv, ct) = (&signed[9..25], &signed[25..]);
        if ct.is_empty() || ct.len() % 16 != 0 {
            return Err(());
        }
        let mut mac = self.keys.pads.start();
        mac.update(signed);
        let expected = self.keys.pads.finish(&mut mac);
        if !bool::from(expected.ct_eq(tag)) {
            return Err(());
        }
        // Grown only into a fresh buffer, the old one wiped, so no copy of
        // plaintext is left behind in freed memory.
        if plain.capacity() < ct.len() {
            plain.zeroize();
            **plain = Vec::with_capacity(ct.len());
        }
        plain.clear();
        plain.extend_from_slice(ct);
        // CBC decryption has no chain: every block at once, then each XORed
        // with the ciphertext block before it (the IV for the first).
        let mut group = [Block::default(); LANES];
        for (n, part) in plain.chunks_mut(16 * LANES).enumerate() {
            let blocks = part.len() / 16;
            for (b, g) in part.chunks(16).zip(group.iter_mut()) {
                g.copy_from_slice(b);
            }
            self.keys.aes.decrypt_blocks(&mut group[..blocks]);
            for (i, (b, g)) in part.chunks_mut(16).zip(&group).enumerate() {
                let at = (n * LANES + i) * 16;
                let prev = if at == 0 { iv } else { &ct[at - 16..at] };
                for ((d, x), p) in b.iter_mut().zip(g.iter()).zip(prev) {
                    *d = x ^ p;
                }
            }
        }
        for g in group.iter_mut() {
            g.zeroize();
        }
        let pad = usize::from(plain[plain.len() - 1]);
        if pad == 0
            || pad > 16
            || plain[plain.len() - pad..]
                .iter()
                .any(|&b| usize::from(b) != pad)
        {
            return Err(());
        }
        let keep = plain.len() - pad;
        plain[keep..].zeroize();
        plain.truncate(keep);
        Ok(())
    }
}

/// A Fernet key split for use: the AES key schedule from its second half
/// (wiped on drop by the `aes` crate's `zeroize` feature), the HMAC pads
/// from its first.
struct Keys {
    aes: Aes128,
    pads: Pads,
}

impl Keys {
    fn new(key: &SecretKey) -> Self {
        let (signing, encryption) = key.expose_bytes().split_at(16);
        Self {
            aes: Aes128::new(GenericArray::from_slice(encryption)),
            pads: Pads::new(signing),
        }
    }
}

/// HMAC-SHA256's inner and outer pads for a 16-byte key (RFC 2104), in
/// zeroizing memory. Written out, rather than the `hmac` crate, so that
/// nothing derived from the key outlives its use.
struct Pads {
    inner: Zeroizing<[u8; 64]>,
    outer: Zeroizing<[u8; 64]>,
}

impl Pads {
    fn new(key: &[u8]) -> Self {
        let mut inner = Zeroizing::new([0x36u8; 64]);
        let mut outer = Zeroizing::new([0x5cu8; 64]);
        for (i, k) in key.iter().enumerate() {
            inner[i] ^= k;
            outer[i] ^= k;
        }
        Self { inner, outer }
    }

    /// A MAC ready for the message.
    fn start(&self) -> Sha256 {
        let mut mac = Sha256::new();
        mac.update(&self.inner[..]);
        mac
    }

    /// The tag of the message `mac` took in; `mac` is left reset, holding
    /// nothing derived from the key.
    fn finish(&self, mac: &mut Sha256) -> [u8; MAC_LEN] {
        let inner = mac.finalize_reset();
        mac.update(&self.outer[..]);
        mac.update(inner);
        let tag = mac.finalize_reset();
        // The reset overwrote the keyed state; keep that store from being
        // optimised away as dead.
        std::hint::black_box(&*mac);
        tag.into()
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

    /// The opener's answer for a token, and the `fernet` crate's, at `now`.
    fn both(key: &SecretKey, token: &str, now: u64) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let mut plain = Zeroizing::new(Vec::new());
        let ours = TokenOpener::new(key)
            .open(token, now, &mut plain)
            .ok()
            .map(|()| plain.to_vec());
        let reference = fernet::Fernet::new(&key.expose_fernet_key())
            .unwrap()
            .decrypt_at_time(token, None, now)
            .ok();
        (ours, reference)
    }

    #[test]
    fn the_opener_agrees_with_the_fernet_crate_on_the_spec_vectors() {
        use time::OffsetDateTime;
        use time::format_description::well_known::Rfc3339;
        for file in [
            include_str!("../../tests/data/fernet/verify.json"),
            include_str!("../../tests/data/fernet/invalid.json"),
        ] {
            let vectors: Vec<serde_json::Value> = serde_json::from_str(file).unwrap();
            for v in vectors {
                let key = SecretKey::from_fernet_key(v["secret"].as_str().unwrap()).unwrap();
                let now = OffsetDateTime::parse(v["now"].as_str().unwrap(), &Rfc3339)
                    .unwrap()
                    .unix_timestamp() as u64;
                let token = v["token"].as_str().unwrap();
                let (ours, reference) = both(&key, token, now);
                assert_eq!(ours, reference, "{v}");
                if let Some(src) = v["src"].as_str() {
                    assert_eq!(ours.as_deref(), Some(src.as_bytes()));
                }
            }
        }
    }

    #[test]
    fn the_opener_agrees_with_the_fernet_crate_on_damaged_tokens() {
        use proptest::prelude::*;
        use proptest::test_runner::{Config, TestRunner};
        let key = SecretKey::generate().unwrap();
        let w = std::cell::RefCell::new(TokenWriter::new(&key));
        let now = 1_700_000_000;
        let strategy = (
            proptest::collection::vec(any::<u8>(), 0..300),
            0usize..4,
            any::<prop::sample::Index>(),
            any::<u8>(),
        );
        TestRunner::new(Config::with_cases(2000))
            .run(&strategy, |(data, how, at, byte)| {
                let mut out = vec![];
                w.borrow_mut()
                    .seal(
                        &[Plain {
                            head: b"",
                            body: &data,
                        }],
                        now,
                        &mut out,
                    )
                    .unwrap();
                let mut t = out.pop().unwrap().into_bytes();
                let i = at.index(t.len());
                match how {
                    0 => t[i] = byte,
                    1 => t.truncate(i),
                    2 => t.insert(i, byte),
                    _ => t.extend_from_slice(b"=="),
                }
                let Ok(t) = String::from_utf8(t) else {
                    return Ok(());
                };
                let (ours, reference) = both(&key, &t, now);
                prop_assert_eq!(ours, reference, "{}", t);
                // Too far in the future for the reader's clock, by both.
                let (ours, reference) = both(&key, &t, now - 61);
                prop_assert_eq!(ours, reference);
                Ok(())
            })
            .unwrap();
    }
}
