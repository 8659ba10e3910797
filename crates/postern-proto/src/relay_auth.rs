//! Signatures on a relay's registration and health reports.
//!
//! A volunteer's relay has no account: its operator's Ed25519 key signs
//! what it tells the server ([`pb::RegisterRelay`],
//! [`pb::RelayHealthReport`]). The signature covers
//! [`CONTEXT`] followed by the message encoded with an empty `signature`
//! field, so it binds every field, and a timestamp within
//! [`MAX_SKEW_MS`] of the server's clock keeps old messages from being
//! replayed much later.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use prost::Message;

use crate::pb;

/// The domain separation prefix of every relay signature.
pub const CONTEXT: &[u8] = b"postern relay v1\0";

/// How far a message's timestamp may be from the server's clock.
pub const MAX_SKEW_MS: u64 = 5 * 60 * 1000;

/// Why a relay message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayAuthError {
    /// The operator key is not an Ed25519 public key.
    #[error("the operator key is not a 32-byte Ed25519 public key")]
    BadKey,
    /// The signature does not verify.
    #[error("the relay operator's signature does not verify")]
    BadSignature,
    /// The timestamp is too far from the server's clock.
    #[error("the message is stamped {skew_ms} ms away from the server's clock (at most 5 minutes)")]
    Skew {
        /// How far off.
        skew_ms: u64,
    },
}

fn signed_bytes(encoded: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(CONTEXT.len() + encoded.len());
    out.extend_from_slice(CONTEXT);
    out.extend_from_slice(&encoded);
    out
}

fn check(
    key: &[u8],
    signature: &[u8],
    body: Vec<u8>,
    timestamp_ms: u64,
    now_ms: u64,
) -> Result<VerifyingKey, RelayAuthError> {
    let key: [u8; 32] = key.try_into().map_err(|_| RelayAuthError::BadKey)?;
    let key = VerifyingKey::from_bytes(&key).map_err(|_| RelayAuthError::BadKey)?;
    let sig = Signature::from_slice(signature).map_err(|_| RelayAuthError::BadSignature)?;
    key.verify(&signed_bytes(body), &sig)
        .map_err(|_| RelayAuthError::BadSignature)?;
    let skew_ms = timestamp_ms.abs_diff(now_ms);
    if skew_ms > MAX_SKEW_MS {
        return Err(RelayAuthError::Skew { skew_ms });
    }
    Ok(key)
}

/// The fields every signed relay message has.
trait Signed: Message + Clone {
    fn operator_key(&mut self) -> &mut bytes::Bytes;
    fn signature(&mut self) -> &mut bytes::Bytes;
    fn timestamp_ms(&self) -> u64;
}

impl Signed for pb::RegisterRelay {
    fn operator_key(&mut self) -> &mut bytes::Bytes {
        &mut self.operator_key
    }
    fn signature(&mut self) -> &mut bytes::Bytes {
        &mut self.signature
    }
    fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }
}

impl Signed for pb::RelayHealthReport {
    fn operator_key(&mut self) -> &mut bytes::Bytes {
        &mut self.operator_key
    }
    fn signature(&mut self) -> &mut bytes::Bytes {
        &mut self.signature
    }
    fn timestamp_ms(&self) -> u64 {
        self.timestamp_ms
    }
}

fn sign<M: Signed>(key: &SigningKey, msg: &mut M) {
    *msg.operator_key() = key.verifying_key().to_bytes().to_vec().into();
    *msg.signature() = Default::default();
    *msg.signature() = key
        .sign(&signed_bytes(msg.encode_to_vec()))
        .to_bytes()
        .to_vec()
        .into();
}

fn verify<M: Signed>(msg: &M, now_ms: u64) -> Result<VerifyingKey, RelayAuthError> {
    let mut body = msg.clone();
    let key = body.operator_key().clone();
    let signature = std::mem::take(body.signature());
    check(
        &key,
        &signature,
        body.encode_to_vec(),
        msg.timestamp_ms(),
        now_ms,
    )
}

/// Fills in the operator key and signs a registration.
pub fn sign_registration(key: &SigningKey, msg: &mut pb::RegisterRelay) {
    sign(key, msg);
}

/// Checks a registration's signature and timestamp; returns the key.
pub fn verify_registration(
    msg: &pb::RegisterRelay,
    now_ms: u64,
) -> Result<VerifyingKey, RelayAuthError> {
    verify(msg, now_ms)
}

/// Fills in the operator key and signs a health report.
pub fn sign_health(key: &SigningKey, msg: &mut pb::RelayHealthReport) {
    sign(key, msg);
}

/// Checks a health report's signature and timestamp; returns the key.
pub fn verify_health(
    msg: &pb::RelayHealthReport,
    now_ms: u64,
) -> Result<VerifyingKey, RelayAuthError> {
    verify(msg, now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_binds_every_field_and_the_time() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let mut msg = pb::RegisterRelay {
            link: "postern://relay?v=1".into(),
            capacity: 100,
            regions: vec!["RU".into()],
            timestamp_ms: 1_000_000,
            ..Default::default()
        };
        sign_registration(&key, &mut msg);
        assert_eq!(
            verify_registration(&msg, 1_000_000).unwrap(),
            key.verifying_key()
        );
        let mut changed = msg.clone();
        changed.capacity = 101;
        assert_eq!(
            verify_registration(&changed, 1_000_000),
            Err(RelayAuthError::BadSignature)
        );
        let mut other = msg.clone();
        other.operator_key = SigningKey::from_bytes(&[6; 32])
            .verifying_key()
            .to_bytes()
            .to_vec()
            .into();
        assert_eq!(
            verify_registration(&other, 1_000_000),
            Err(RelayAuthError::BadSignature)
        );
        assert!(matches!(
            verify_registration(&msg, 1_000_000 + MAX_SKEW_MS + 1),
            Err(RelayAuthError::Skew { .. })
        ));
        let mut health = pb::RelayHealthReport {
            host: "relay.example.org:443".into(),
            timestamp_ms: 7,
            sessions_total: 3,
            ..Default::default()
        };
        sign_health(&key, &mut health);
        assert!(verify_health(&health, 7).is_ok());
        health.sessions_total = 4;
        assert_eq!(verify_health(&health, 7), Err(RelayAuthError::BadSignature));
        health.operator_key = vec![1, 2].into();
        assert_eq!(verify_health(&health, 7), Err(RelayAuthError::BadKey));
    }
}
