//! Signed checkpoints of the chain's head, to anchor elsewhere and later
//! detect a removed tail.

use super::chain::Head;
use super::error::CheckpointError;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;
use zeroize::Zeroizing;

const DOMAIN: &[u8] = b"case-export checkpoint v1\0";
/// The domain of a final checkpoint (written at a clean stop): nothing may
/// follow its head when the server starts again, so the flag is signed.
const FINAL_DOMAIN: &[u8] = b"case-export final checkpoint v1\0";

/// An Ed25519 key that signs checkpoints. No `Debug`, no `Display`.
pub struct CheckpointSigner {
    key: SigningKey,
}

impl CheckpointSigner {
    /// Reads a key file: the 32-byte seed as 64 hex digits.
    pub fn from_file(path: &Path) -> Result<Self, CheckpointError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|e| CheckpointError::Read {
                    what: "checkpoint key",
                    path: path.into(),
                    message: e.to_string(),
                })?,
            );
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), seed.as_mut())
            .map_err(|_| CheckpointError::BadKey(path.into()))?;
        Ok(Self {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// A fresh key as 64 hex digits, for a key file.
    pub fn generate_hex() -> Result<Zeroizing<String>, getrandom::Error> {
        let mut seed = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(seed.as_mut())?;
        Ok(Zeroizing::new(hex::encode(&seed[..])))
    }

    /// The public key, hex.
    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// Signs an export receipt (under the receipt's own domain, so the
    /// same key's checkpoint signatures cannot pass for receipts).
    pub fn sign_receipt(&self, body: crate::receipt::ReceiptBody) -> crate::receipt::SignedReceipt {
        crate::receipt::sign(body, &self.key)
    }
}

/// The head of one log at one moment, optionally signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The log this checkpoint is for: its 16 random bytes as 32 hex digits.
    pub log_id: String,
    /// Sequence number of the last written event (0 for an empty log).
    pub seq: u64,
    /// Hash of the last written event (the genesis hash if empty), hex.
    pub head_hash: String,
    /// When the checkpoint was made, RFC 3339 UTC.
    pub ts: String,
    /// The signer's Ed25519 public key as hex, when signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// The Ed25519 signature over the checkpoint as hex, when signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Written at a clean stop: the server held the trail to exactly this
    /// head when it started again.
    #[serde(rename = "final", default, skip_serializing_if = "std::ops::Not::not")]
    pub is_final: bool,
}

impl Checkpoint {
    fn message(&self) -> Vec<u8> {
        let mut m = if self.is_final { FINAL_DOMAIN } else { DOMAIN }.to_vec();
        for f in [&self.log_id, &self.head_hash, &self.ts] {
            m.extend_from_slice(&(f.len() as u64).to_be_bytes());
            m.extend_from_slice(f.as_bytes());
        }
        m.extend_from_slice(&self.seq.to_be_bytes());
        m
    }

    /// A checkpoint of `head` now, signed when a signer is given; `is_final`
    /// for the one written at a clean stop.
    pub fn new(head: &Head, signer: Option<&CheckpointSigner>, is_final: bool) -> Self {
        let mut c = Self {
            log_id: hex::encode(head.log_id),
            seq: head.seq,
            head_hash: hex::encode(head.hash),
            ts: super::now_rfc3339(),
            public_key: None,
            signature: None,
            is_final,
        };
        if let Some(s) = signer {
            c.public_key = Some(s.public_hex());
            c.signature = Some(hex::encode(s.key.sign(&c.message()).to_bytes()));
        }
        c
    }

    /// Checks the signature against `public_key` (hex), or against the key
    /// the checkpoint names when none is given. Unsigned: `Ok(false)`.
    pub fn verify_signature(&self, public_key: Option<&str>) -> Result<bool, CheckpointError> {
        use CheckpointError::Signature as Bad;
        let Some(sig) = &self.signature else {
            return Ok(false);
        };
        let pk_hex = public_key
            .or(self.public_key.as_deref())
            .ok_or(Bad("checkpoint is signed but names no public key"))?;
        let mut pk = [0u8; 32];
        hex::decode_to_slice(pk_hex, &mut pk)
            .map_err(|_| Bad("public key is not 64 hex digits"))?;
        let vk = VerifyingKey::from_bytes(&pk).map_err(|_| Bad("invalid public key"))?;
        let mut sb = [0u8; 64];
        hex::decode_to_slice(sig, &mut sb).map_err(|_| Bad("signature is not 128 hex digits"))?;
        vk.verify(&self.message(), &Signature::from_bytes(&sb))
            .map(|_| true)
            .map_err(|_| Bad("checkpoint signature does not verify"))
    }

    /// Appends this checkpoint as one JSON line.
    pub fn append_to(&self, path: &Path) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let line = serde_json::to_string(self).map_err(std::io::Error::other)?;
        f.write_all(format!("{line}\n").as_bytes())?;
        f.sync_data()
    }
}

/// Reads a checkpoints file (JSON lines).
pub fn read_checkpoints(path: &Path) -> Result<Vec<Checkpoint>, CheckpointError> {
    let text = std::fs::read_to_string(path).map_err(|e| CheckpointError::Read {
        what: "checkpoints",
        path: path.into(),
        message: e.to_string(),
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| CheckpointError::Malformed {
                path: path.into(),
                line: i + 1,
                message: e.to_string(),
            })
        })
        .collect()
}
