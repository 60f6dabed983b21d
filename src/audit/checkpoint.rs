//! Signed checkpoints: Ed25519 signatures over (sequence, hash, time) of the chain head.
//!
//! Signed message (UTF-8): `sekimori-checkpoint-v1\n{seq}\n{hash hex}\n{time_us}\n`.
//! A checkpoint exported and kept elsewhere lets `verify` detect a truncated or rewritten
//! tail even when the store and its own checkpoints were replaced.

use super::store::{Checkpoint, Head};
use base64::Engine as _;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("checkpoint key `{path}`: {why}")]
    Invalid { path: String, why: String },
}

/// The bytes a checkpoint signature covers.
pub fn message(seq: u64, hash_hex: &str, time_us: i64) -> Vec<u8> {
    format!("sekimori-checkpoint-v1\n{seq}\n{hash_hex}\n{time_us}\n").into_bytes()
}

/// Signs checkpoints with the log's Ed25519 key.
pub struct Signer {
    key: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// From a PKCS#8 PEM file's text.
    pub fn from_pem(pem: &str, path: &str) -> Result<Signer, KeyError> {
        let invalid = |why: &str| KeyError::Invalid {
            path: path.to_string(),
            why: why.to_string(),
        };
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(|_| invalid("not PEM"))?;
        let key = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|_| invalid("not an Ed25519 PKCS#8 private key"))?;
        let key_id = key_id(key.public_key().as_ref());
        Ok(Signer { key, key_id })
    }

    pub fn public_key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn sign(&self, head: Head, time_us: i64) -> Checkpoint {
        let hash = hex::encode(head.hash);
        let sig = self.key.sign(&message(head.seq, &hash, time_us));
        Checkpoint {
            seq: head.seq,
            hash,
            time_us,
            key_id: self.key_id.clone(),
            signature: hex::encode(sig.as_ref()),
        }
    }
}

/// A short id of a public key: the first 16 hex digits of its SHA-256.
pub fn key_id(public_key: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(public_key))[..16].to_string()
}

/// The public key file format: `ed25519:<base64 of the 32-byte key>`.
pub fn encode_public_key(public_key: &[u8]) -> String {
    format!(
        "ed25519:{}\n",
        base64::engine::general_purpose::STANDARD.encode(public_key)
    )
}

pub fn decode_public_key(text: &str) -> Option<Vec<u8>> {
    let b64 = text.trim().strip_prefix("ed25519:")?;
    let key = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    (key.len() == 32).then_some(key)
}

/// Whether the checkpoint's signature is valid under `public_key`.
pub fn verify_signature(c: &Checkpoint, public_key: &[u8]) -> bool {
    let Ok(sig) = hex::decode(&c.signature) else {
        return false;
    };
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&message(c.seq, &c.hash, c.time_us), &sig)
        .is_ok()
}
