//! The official Fernet test vectors (github.com/fernet/spec: generate.json,
//! verify.json, invalid.json; copied from the `fernet` crate's tests/).
//!
//! They pin down that the sealed format's tokens are standard Fernet: the
//! `fernet` crate must accept and refuse exactly what the spec says, and the
//! spec's tokens must be reproducible from the raw primitives (AES-128-CBC
//! with PKCS#7, HMAC-SHA256, URL-safe base64) without the `fernet` crate.

use aes::Aes128;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE;
use cbc::cipher::block_padding::Pkcs7;
use cbc::cipher::{BlockEncryptMut, KeyIvInit};
use fernet::Fernet;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const GENERATE: &str = include_str!("../data/fernet/generate.json");
const VERIFY: &str = include_str!("../data/fernet/verify.json");
const INVALID: &str = include_str!("../data/fernet/invalid.json");

#[derive(Debug, Deserialize)]
struct GenerateVector {
    token: String,
    now: String,
    iv: Vec<u8>,
    src: String,
    secret: String,
}

#[derive(Debug, Deserialize)]
struct VerifyVector {
    token: String,
    now: String,
    ttl_sec: u64,
    src: String,
    secret: String,
}

#[derive(Debug, Deserialize)]
struct InvalidVector {
    desc: String,
    token: String,
    now: String,
    ttl_sec: u64,
    secret: String,
}

fn load<T: for<'de> Deserialize<'de>>(json: &str) -> Vec<T> {
    let v: Vec<T> = serde_json::from_str(json).expect("vector file parses");
    assert!(!v.is_empty(), "vector file holds no vectors");
    v
}

/// Seconds since the epoch of an RFC 3339 timestamp such as
/// "1985-10-26T01:20:00-07:00".
fn unix(now: &str) -> u64 {
    let t = OffsetDateTime::parse(now, &Rfc3339).expect("RFC 3339 timestamp");
    u64::try_from(t.unix_timestamp()).expect("timestamp after 1970")
}

fn fernet(secret: &str) -> Fernet {
    Fernet::new(secret).expect("vector secret is a Fernet key")
}

/// A Fernet token built from the primitives of the spec:
/// `0x80 | timestamp (u64 BE) | iv | AES-128-CBC-PKCS7(src) | HMAC-SHA256`,
/// base64url with padding. The 32-byte secret is the signing key followed by
/// the encryption key.
fn raw_token(secret: &[u8; 32], timestamp: u64, iv: &[u8; 16], src: &[u8]) -> String {
    let (signing_key, encryption_key) = secret.split_at(16);

    let mut buf = vec![0u8; (src.len() / 16 + 1) * 16];
    buf[..src.len()].copy_from_slice(src);
    let ciphertext = cbc::Encryptor::<Aes128>::new(encryption_key.into(), iv.into())
        .encrypt_padded_mut::<Pkcs7>(&mut buf, src.len())
        .expect("buffer holds the padded plaintext");

    let mut token = Vec::with_capacity(1 + 8 + 16 + ciphertext.len() + 32);
    token.push(0x80);
    token.extend_from_slice(&timestamp.to_be_bytes());
    token.extend_from_slice(iv);
    token.extend_from_slice(ciphertext);

    let mut mac = Hmac::<Sha256>::new_from_slice(signing_key).expect("HMAC takes any key length");
    mac.update(&token);
    token.extend_from_slice(&mac.finalize().into_bytes());

    URL_SAFE.encode(token)
}

fn secret_bytes(secret: &str) -> [u8; 32] {
    let bytes = URL_SAFE.decode(secret).expect("secret is base64url");
    bytes.try_into().expect("secret is 32 bytes")
}

#[test]
fn vector_files_hold_the_expected_number_of_vectors() {
    assert_eq!(load::<GenerateVector>(GENERATE).len(), 1);
    assert_eq!(load::<VerifyVector>(VERIFY).len(), 1);
    assert_eq!(load::<InvalidVector>(INVALID).len(), 8);
}

#[test]
fn generate_vectors_are_reproduced_from_raw_primitives() {
    for v in load::<GenerateVector>(GENERATE) {
        let iv: [u8; 16] = v.iv.as_slice().try_into().expect("16-byte iv");
        let token = raw_token(
            &secret_bytes(&v.secret),
            unix(&v.now),
            &iv,
            v.src.as_bytes(),
        );
        assert_eq!(
            token, v.token,
            "raw primitives disagree with the spec for {v:?}"
        );
    }
}

#[test]
fn generate_vectors_decrypt_with_the_fernet_crate() {
    for v in load::<GenerateVector>(GENERATE) {
        let plain = fernet(&v.secret)
            .decrypt_at_time(&v.token, None, unix(&v.now))
            .unwrap_or_else(|e| panic!("{e:?} for {v:?}"));
        assert_eq!(plain, v.src.as_bytes(), "{v:?}");
    }
}

#[test]
fn verify_vectors_decrypt_to_their_source() {
    for v in load::<VerifyVector>(VERIFY) {
        let plain = fernet(&v.secret)
            .decrypt_at_time(&v.token, Some(v.ttl_sec), unix(&v.now))
            .unwrap_or_else(|e| panic!("{e:?} for {v:?}"));
        assert_eq!(plain, v.src.as_bytes(), "{v:?}");
    }
}

#[test]
fn invalid_vectors_are_refused() {
    for v in load::<InvalidVector>(INVALID) {
        let got = fernet(&v.secret).decrypt_at_time(&v.token, Some(v.ttl_sec), unix(&v.now));
        assert!(
            got.is_err(),
            "invalid vector {:?} was accepted: {got:?}",
            v.desc
        );
    }
}

/// The two timing vectors are refused for their timing alone: the same
/// token is accepted at a time inside its window. (The sealed format reads
/// with no TTL and a far-future clock, so only the other six kinds of
/// invalidity can reach it.)
#[test]
fn timing_vectors_fail_only_on_time() {
    let vectors = load::<InvalidVector>(INVALID);
    let by_desc = |d: &str| {
        vectors
            .iter()
            .find(|v| v.desc == d)
            .unwrap_or_else(|| panic!("no vector {d:?}"))
    };

    let expired = by_desc("expired TTL");
    let f = fernet(&expired.secret);
    let now = unix(&expired.now);
    assert!(
        f.decrypt_at_time(&expired.token, Some(expired.ttl_sec), now)
            .is_err()
    );
    assert!(f.decrypt_at_time(&expired.token, None, now).is_ok());

    let future = by_desc("far-future TS (unacceptable clock skew)");
    let f = fernet(&future.secret);
    let now = unix(&future.now);
    assert!(
        f.decrypt_at_time(&future.token, Some(future.ttl_sec), now)
            .is_err()
    );
    let raw = URL_SAFE.decode(&future.token).expect("base64url");
    let stamp = u64::from_be_bytes(raw[1..9].try_into().expect("8 bytes"));
    assert!(
        stamp > now + 60,
        "the token lies beyond the allowed clock skew"
    );
    assert!(f.decrypt_at_time(&future.token, None, stamp).is_ok());

    // Every other invalid vector stays invalid without TTL and at any time.
    for v in vectors
        .iter()
        .filter(|v| v.desc != expired.desc && v.desc != future.desc)
    {
        let got = fernet(&v.secret).decrypt_at_time(&v.token, None, u64::MAX / 2);
        assert!(got.is_err(), "{:?} accepted without TTL", v.desc);
    }
}
