//! Sealing limits: the fernet crate, the raw primitives and the Sealer on
//! one export's bytes, no network; and where one thread's time goes.

use crate::env::SnapData;
use crate::report::{Report, f1, f2, mbs, mib};
use crate::timing::{interleaved, time};
use case_export::seal::{DEFAULT_CHUNK_SIZE, ExportId, Sealer, SecretKey};
use sha2::{Digest, Sha256};
use std::hint::black_box;

pub fn fernet_1t(data: &[u8], chunk: usize) -> u64 {
    let key = SecretKey::generate().expect("key");
    let f = fernet::Fernet::new(&key.expose_fernet_key()).expect("fernet key");
    let mut out = 0u64;
    for c in data.chunks(chunk) {
        let t = f.encrypt(c);
        out += t.len() as u64;
        black_box(t);
    }
    out
}

pub type Aes128CbcEnc = cbc::Encryptor<aes::Aes128>;
pub type HmacSha256 = hmac::Hmac<Sha256>;

/// Fernet's cryptography alone: AES-128-CBC and HMAC-SHA256 into one
/// reused buffer, no base64, no allocation.
pub fn raw_1t(data: &[u8], chunk: usize, do_aes: bool, do_mac: bool) -> u64 {
    use cbc::cipher::{BlockEncryptMut, KeyIvInit, block_padding::Pkcs7};
    use hmac::Mac;
    let key = SecretKey::generate().expect("key");
    let k = key.expose_bytes();
    let mut buf = vec![0u8; 25 + chunk + 16 + 32];
    let mut out = 0u64;
    for c in data.chunks(chunk) {
        let mut iv = [0u8; 16];
        getrandom::getrandom(&mut iv).expect("iv");
        buf[0] = 0x80;
        buf[1..9].copy_from_slice(&1_700_000_000u64.to_be_bytes());
        buf[9..25].copy_from_slice(&iv);
        buf[25..25 + c.len()].copy_from_slice(c);
        let ct_len = if do_aes {
            Aes128CbcEnc::new_from_slices(&k[16..], &iv)
                .expect("aes key")
                .encrypt_padded_mut::<Pkcs7>(&mut buf[25..], c.len())
                .expect("room for padding")
                .len()
        } else {
            (c.len() / 16 + 1) * 16
        };
        let end = 25 + ct_len;
        if do_mac {
            let mut mac = HmacSha256::new_from_slice(&k[..16]).expect("hmac key");
            mac.update(&buf[..end]);
            let tag = mac.finalize().into_bytes();
            buf[end..end + 32].copy_from_slice(&tag);
        }
        out += end as u64 + 32;
        black_box(&buf);
    }
    out
}

pub fn base64_1t(data: &[u8], chunk: usize) -> u64 {
    use base64::Engine;
    let mut out = 0u64;
    let raw = vec![0x5au8; 25 + chunk + 16 + 32];
    for c in data.chunks(chunk) {
        let n = 25 + (c.len() / 16 + 1) * 16 + 32;
        let s = base64::engine::general_purpose::URL_SAFE.encode(&raw[..n]);
        out += s.len() as u64;
        black_box(s);
    }
    out
}

/// AES-128-CBC over 8 chunks at once, one block of each chain per AES-NI
/// pass: CBC encryption is serial within a chunk, but chunks are
/// independent, so 8 chains fill the AES pipeline that one chain leaves
/// idle. What a multi-buffer Fernet writer could gain (not in the crate).
pub fn aes_cbc_multibuffer(data: &[u8], chunk: usize) -> u64 {
    use aes::cipher::{BlockEncrypt, KeyInit, generic_array::GenericArray};
    let key = SecretKey::generate().expect("key");
    let aes = aes::Aes128::new(GenericArray::from_slice(&key.expose_bytes()[16..]));
    const LANES: usize = 8;
    let mut out = vec![0u8; chunk * LANES];
    let mut done = 0u64;
    for group in data.chunks(chunk * LANES) {
        let lanes: Vec<&[u8]> = group.chunks(chunk).collect();
        let blocks = lanes.iter().map(|l| l.len() / 16).max().unwrap_or(0);
        let mut state = [GenericArray::<u8, aes::cipher::consts::U16>::default(); LANES];
        for (j, st) in state.iter_mut().enumerate() {
            st[0] = j as u8; // stands in for a random IV
        }
        for b in 0..blocks {
            let mut batch = state;
            for (j, l) in lanes.iter().enumerate() {
                if let Some(p) = l.get(b * 16..b * 16 + 16) {
                    for k in 0..16 {
                        batch[j][k] ^= p[k];
                    }
                }
            }
            aes.encrypt_blocks(&mut batch[..lanes.len()]);
            for j in 0..lanes.len() {
                out[j * chunk + (b * 16) % chunk..][..16].copy_from_slice(&batch[j]);
            }
            state = batch;
        }
        done += group.len() as u64;
        black_box(&out);
    }
    done
}

pub fn sealer_run(data: &[u8], chunk: usize, workers: usize) -> u64 {
    let key = SecretKey::generate().expect("key");
    let s = Sealer::new(&key, ExportId::random().expect("id"), chunk, workers);
    let sum = s
        .seal(data, |_, t| {
            black_box(t);
            Ok::<(), ()>(())
        })
        .expect("seal");
    sum.ciphertext_size
}

pub fn seal_section(
    r: &mut Report,
    sizes_data: &[(u64, &SnapData)],
    reps_of: &dyn Fn(u64) -> usize,
) {
    let s = r.section(
        "Sealing limits (one export's bytes, no network)",
        "Same snapshot bytes, 256 KiB chunks. `fernet 1T`: the fernet crate's \
         `Fernet::encrypt` per chunk in one thread. `raw 1T`: AES-128-CBC + \
         HMAC-SHA256 (aes 0.8, cbc 0.1, hmac 0.12) into a reused buffer, no \
         base64. `Sealer N`: `seal::Sealer` with N workers, tokens discarded \
         (its emitter still hashes them, as in the server). Medians; MB = 10^6 bytes.",
        &[
            "snapshot MiB",
            "fernet 1T MB/s",
            "raw 1T MB/s",
            "Sealer 1w MB/s",
            "Sealer 2w MB/s",
            "2w / 1w",
            "Sealer 1w / fernet 1T",
        ],
    );
    let chunk = DEFAULT_CHUNK_SIZE;
    for &(size, d) in sizes_data {
        let data = &d.bytes[..];
        let n = data.len() as u64;
        let reps = reps_of(size);
        let m = interleaved(
            reps,
            &mut [
                ("fernet", &mut || time(|| fernet_1t(data, chunk))),
                ("raw", &mut || time(|| raw_1t(data, chunk, true, true))),
                ("sealer1", &mut || time(|| sealer_run(data, chunk, 1))),
                ("sealer2", &mut || time(|| sealer_run(data, chunk, 2))),
            ],
        );
        let (fe, raw, s1, s2) = (mbs(n, m[0]), mbs(n, m[1]), mbs(n, m[2]), mbs(n, m[3]));
        r.metric(&format!("fernet_1t_mbs_{size}"), fe);
        r.metric(&format!("raw_1t_mbs_{size}"), raw);
        r.metric(&format!("sealer_1w_mbs_{size}"), s1);
        r.metric(&format!("sealer_2w_mbs_{size}"), s2);
        r.metric(&format!("sealer_2w_over_1w_{size}"), s2 / s1);
        r.row(
            s,
            vec![
                mib(n),
                f1(fe),
                f1(raw),
                f1(s1),
                f1(s2),
                f2(s2 / s1),
                f2(s1 / fe),
            ],
        );
    }
    r.contention(s);
}

/// Where one thread's sealing time goes: each step alone on the same bytes.
pub fn cost_section(r: &mut Report, d: &SnapData, reps: usize) {
    let data = &d.bytes[..];
    let n = data.len() as u64;
    let chunk = DEFAULT_CHUNK_SIZE;
    // Tokens as the server makes them, for hashing.
    let key = SecretKey::generate().expect("key");
    let mut tokens: Vec<String> = Vec::new();
    Sealer::new(&key, ExportId::random().expect("id"), chunk, 2)
        .seal(data, |_, t| {
            tokens.push(t);
            Ok::<(), ()>(())
        })
        .expect("seal");
    let mut copy_dst = vec![0u8; chunk + 64];
    let m = interleaved(
        reps,
        &mut [
            ("aes", &mut || time(|| raw_1t(data, chunk, true, false))),
            ("hmac", &mut || time(|| raw_1t(data, chunk, false, true))),
            ("base64", &mut || time(|| base64_1t(data, chunk))),
            ("sha", &mut || {
                time(|| {
                    let mut h = Sha256::new();
                    for t in &tokens {
                        h.update(t.as_bytes());
                        h.update(b"\n");
                    }
                    h.finalize()
                })
            }),
            ("memcpy", &mut || {
                time(|| {
                    for c in data.chunks(chunk) {
                        copy_dst[..c.len()].copy_from_slice(c);
                        black_box(&copy_dst);
                    }
                })
            }),
            ("fernet", &mut || time(|| fernet_1t(data, chunk))),
            ("aes-mb", &mut || time(|| aes_cbc_multibuffer(data, chunk))),
        ],
    );
    let s = r.section(
        "Where one thread's time goes (cost of each step per plaintext byte)",
        "Each step alone, one thread, on the same snapshot bytes in 256 KiB \
         chunks. `SHA-256 of tokens` hashes the base64 tokens (4/3 of the \
         plaintext), as the server's emitter and the client each do once. \
         `fernet encrypt` is the whole `Fernet::encrypt` (AES + HMAC + base64 + \
         three allocations and copies).",
        &[
            "step",
            "ns / plaintext byte",
            "MB/s of plaintext",
            "share of fernet encrypt",
        ],
    );
    let names = [
        "AES-128-CBC encrypt",
        "HMAC-SHA256",
        "base64url encode (allocating, as fernet does)",
        "SHA-256 of tokens (server emitter or client)",
        "memcpy of the chunk",
        "fernet encrypt (all of it)",
        "for comparison: AES-128-CBC, 8 chunks interleaved (multi-buffer)",
    ];
    let total = m[5];
    for (i, name) in names.iter().enumerate() {
        let ns = m[i] * 1e9 / n as f64;
        r.metric(&format!("cost_ns_per_byte_{i}"), ns);
        r.row(
            s,
            vec![
                (*name).to_string(),
                f2(ns),
                f1(mbs(n, m[i])),
                format!("{:.0}%", m[i] / total * 100.0),
            ],
        );
    }
    r.contention(s);
}
