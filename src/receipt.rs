//! The signed export receipt (docs/RECEIPT.md): what the server attests
//! about one export, signed with its Ed25519 receipt key after the `sealed`
//! custody record committed and before the key left. Anyone holding the
//! receipt, the `.enc` file and the server's public key can check that the
//! file is the one exported for that case, analyst and purpose: no Fernet
//! key, no server.
//!
//! The signed bytes are `"case-export receipt v1\0"` followed by the
//! receipt's canonical JSON (RFC 8785, JSON Canonicalization Scheme: keys
//! sorted by UTF-16 code units, no white space, strings escaped as
//! ECMAScript's `JSON.stringify` does; the receipt holds only strings,
//! non-negative integers below 2^53, arrays, objects and null).

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The receipt format this code writes and reads.
pub const RECEIPT_VERSION: u64 = 1;
/// Prefix of the signed bytes, so a receipt signature can never pass for
/// a checkpoint signature made with the same key, or the reverse.
pub const SIGNING_DOMAIN: &[u8] = b"case-export receipt v1\0";

/// What the server attests about one export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiptBody {
    /// [`RECEIPT_VERSION`].
    pub receipt_version: u64,
    /// The custody trail's log id (32 hex digits).
    pub log_id: String,
    /// Sequence number of the export's `sealed` event in that trail.
    pub sealed_seq: u64,
    /// Hash (64 hex digits) of that event.
    pub sealed_hash: String,
    /// The export's id (32 hex digits).
    pub export_id: String,
    /// The case, its key spelled as stored.
    pub case_id: String,
    /// The case's tenant, if the source names one.
    pub tenant: Option<String>,
    /// The service that called.
    pub principal: String,
    /// The analyst it called for.
    pub on_behalf_of: String,
    /// Why.
    pub purpose: String,
    /// When the snapshot was taken, RFC 3339 UTC.
    pub created_at: String,
    /// The public keys the Fernet key was sealed to; empty when the key
    /// was sent raw.
    pub recipients: Vec<String>,
    /// Size of the SQLite snapshot in bytes.
    pub plaintext_size: u64,
    /// SHA-256 (hex) of the `.enc` file.
    pub ciphertext_sha256: String,
    /// Size of the `.enc` file in bytes.
    pub ciphertext_size: u64,
    /// Chunks, which are the `.enc` file's lines.
    pub chunk_count: u64,
    /// The sealed format's version.
    pub format_version: u64,
    /// Rows per exported table.
    pub row_counts: BTreeMap<String, u64>,
    /// The server instance that exported.
    pub server_instance: String,
    /// The server's version.
    pub server_version: String,
}

/// A receipt as written beside the `.enc` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedReceipt {
    /// What is attested.
    pub receipt: ReceiptBody,
    /// Ed25519 signature (128 hex digits) over [`SIGNING_DOMAIN`] and the
    /// receipt's canonical JSON.
    pub signature: String,
    /// The signing key's public half (64 hex digits), as a hint: trust
    /// comes from the key the verifier was given, not from this field.
    pub public_key: String,
}

/// Why a receipt does not check out.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// The file is not a receipt.
    #[error("not a case-export receipt: {0}")]
    Malformed(String),
    /// A receipt version this code does not know.
    #[error("receipt version {0} is not supported (this tool reads version {RECEIPT_VERSION})")]
    Version(u64),
    /// The public key given is not an Ed25519 key.
    #[error("the public key must be 64 hex digits (an Ed25519 key): {0}")]
    BadKey(String),
    /// The signature does not verify under the key given.
    #[error(
        "the receipt's signature does not verify with the public key given: the receipt was \
         altered, or signed by another key"
    )]
    BadSignature,
}

/// The receipt's exact signed bytes: the domain, then its canonical JSON.
pub fn signed_bytes(body: &ReceiptBody) -> Vec<u8> {
    let value = serde_json::to_value(body).expect("a receipt always serializes");
    let mut out = SIGNING_DOMAIN.to_vec();
    out.extend_from_slice(canonical_json(&value).as_bytes());
    out
}

/// Signs `body` with `key`.
pub fn sign(body: ReceiptBody, key: &SigningKey) -> SignedReceipt {
    let sig = key.sign(&signed_bytes(&body));
    SignedReceipt {
        receipt: body,
        signature: hex::encode(sig.to_bytes()),
        public_key: hex::encode(key.verifying_key().to_bytes()),
    }
}

impl SignedReceipt {
    /// Parses a receipt file.
    pub fn from_json(text: &[u8]) -> Result<Self, ReceiptError> {
        // The version first, so a newer receipt says so rather than
        // failing on a field this code does not know.
        let value: Value =
            serde_json::from_slice(text).map_err(|e| ReceiptError::Malformed(e.to_string()))?;
        if let Some(v) = value
            .get("receipt")
            .and_then(|r| r.get("receipt_version"))
            .and_then(Value::as_u64)
            && v != RECEIPT_VERSION
        {
            return Err(ReceiptError::Version(v));
        }
        serde_json::from_value(value).map_err(|e| ReceiptError::Malformed(e.to_string()))
    }

    /// The file's text: pretty JSON (whitespace is not signed).
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("a receipt always serializes");
        s.push('\n');
        s
    }

    /// Checks the signature under `public_key_hex`.
    pub fn verify(&self, public_key_hex: &str) -> Result<(), ReceiptError> {
        let bad_key = || ReceiptError::BadKey(crate::keywrap::shown(public_key_hex));
        let key: [u8; 32] = hex::decode(public_key_hex.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad_key)?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| bad_key())?;
        let sig: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(ReceiptError::BadSignature)?;
        key.verify_strict(&signed_bytes(&self.receipt), &Signature::from_bytes(&sig))
            .map_err(|_| ReceiptError::BadSignature)
    }
}

/// RFC 8785 canonical JSON of a value without floating-point numbers.
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&n.to_string()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            // RFC 8785: by UTF-16 code units, not by UTF-8 bytes.
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(k, out);
                out.push(':');
                write_canonical(&map[k], out);
            }
            out.push('}');
        }
    }
}

fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> ReceiptBody {
        ReceiptBody {
            receipt_version: RECEIPT_VERSION,
            log_id: "00".repeat(16),
            sealed_seq: 42,
            sealed_hash: "ab".repeat(32),
            export_id: "cd".repeat(16),
            case_id: "case-1".into(),
            tenant: Some("north".into()),
            principal: "case-management".into(),
            on_behalf_of: "analyst.one".into(),
            purpose: "TICKET-1: \"quoted\"\n\u{1f}é".into(),
            created_at: "2025-01-01T00:00:00Z".into(),
            recipients: vec!["age1xyz".into()],
            plaintext_size: 4096,
            ciphertext_sha256: "ef".repeat(32),
            ciphertext_size: 5000,
            chunk_count: 1,
            format_version: 1,
            row_counts: BTreeMap::from([("cases".into(), 1), ("notes".into(), 3)]),
            server_instance: "i-1".into(),
            server_version: "0.1.0".into(),
        }
    }

    #[test]
    fn canonical_json_sorts_keys_by_utf16_and_escapes_like_ecmascript() {
        let v = serde_json::json!({"b": 1, "a": [true, null, "x\u{7f}\u{2028}"], "\u{e000}": 2, "\u{10000}": 3, "c": "\"\\\u{1}\t"});
        assert_eq!(
            canonical_json(&v),
            "{\"a\":[true,null,\"x\u{7f}\u{2028}\"],\"b\":1,\"c\":\"\\\"\\\\\\u0001\\t\",\"\u{10000}\":3,\"\u{e000}\":2}"
        );
    }

    #[test]
    fn signed_receipts_verify_and_any_change_breaks_them() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let pk = hex::encode(key.verifying_key().to_bytes());
        let r = sign(body(), &key);
        r.verify(&pk).unwrap();
        let round = SignedReceipt::from_json(r.to_json().as_bytes()).unwrap();
        assert_eq!(round, r);
        round.verify(&pk).unwrap();

        let mut altered = r.clone();
        altered.receipt.purpose.push('!');
        assert!(matches!(
            altered.verify(&pk),
            Err(ReceiptError::BadSignature)
        ));
        let mut altered = r.clone();
        altered.receipt.row_counts.insert("notes".into(), 4);
        assert!(matches!(
            altered.verify(&pk),
            Err(ReceiptError::BadSignature)
        ));
        let other = hex::encode(
            SigningKey::from_bytes(&[8u8; 32])
                .verifying_key()
                .to_bytes(),
        );
        assert!(matches!(r.verify(&other), Err(ReceiptError::BadSignature)));
        assert!(matches!(r.verify("zz"), Err(ReceiptError::BadKey(_))));
    }

    #[test]
    fn unknown_versions_and_fields_are_refused() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let mut v: Value = serde_json::from_str(&sign(body(), &key).to_json()).unwrap();
        v["receipt"]["receipt_version"] = 2.into();
        assert!(matches!(
            SignedReceipt::from_json(v.to_string().as_bytes()),
            Err(ReceiptError::Version(2))
        ));
        v["receipt"]["receipt_version"] = 1.into();
        v["receipt"]["extra"] = "x".into();
        assert!(matches!(
            SignedReceipt::from_json(v.to_string().as_bytes()),
            Err(ReceiptError::Malformed(_))
        ));
    }
}
