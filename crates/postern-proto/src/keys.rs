//! Noise static keys and the device-key binding signature.
//!
//! A device has two keys: a long-term Ed25519 *identity* key that other
//! members verify, and an X25519 *Noise static* key that authenticates its
//! sessions with the server. The binding signature proves that one holder
//! owns both. This module never logs or prints a secret key.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand::RngCore;
use zeroize::Zeroizing;

/// Domain-separation prefix of the device binding signature.
pub const DEVICE_BINDING_CONTEXT: &[u8] = b"postern device binding v1";

/// What was wrong with a peer's device keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The identity key is not 32 bytes long.
    #[error("identity key is {0} bytes long, expected 32")]
    IdentityKeyLength(usize),
    /// The identity key's bytes are not a valid Ed25519 point.
    #[error("identity key is not a valid Ed25519 public key")]
    InvalidIdentityKey,
    /// The binding signature is not 64 bytes long.
    #[error("binding signature is {0} bytes long, expected 64")]
    SignatureLength(usize),
    /// The signature does not verify: it was made by another key or over
    /// another Noise key.
    #[error("binding signature does not verify for this identity key and Noise key")]
    BadSignature,
}

/// A Noise (X25519) static key pair.
#[derive(Clone)]
pub struct NoiseKeypair {
    /// The public half, shared with peers.
    pub public: [u8; 32],
    secret: Zeroizing<[u8; 32]>,
}

impl NoiseKeypair {
    /// A fresh key pair from the operating system's random generator.
    pub fn generate() -> Self {
        let mut secret = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(secret.as_mut());
        Self::from_secret(*secret)
    }

    /// The key pair for a stored secret key.
    pub fn from_secret(secret: [u8; 32]) -> Self {
        let secret = Zeroizing::new(secret);
        let public = curve25519_dalek::MontgomeryPoint::mul_base_clamped(*secret).to_bytes();
        Self { public, secret }
    }

    /// The secret half, for storing it or handing it to the Noise handshake.
    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }
}

impl fmt::Debug for NoiseKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoiseKeypair")
            .field("public", &hex::encode(self.public))
            .finish_non_exhaustive()
    }
}

fn binding_message(noise_public: &[u8; 32], identity_public: &[u8; 32]) -> Vec<u8> {
    [DEVICE_BINDING_CONTEXT, noise_public, identity_public].concat()
}

/// Signs `DEVICE_BINDING_CONTEXT || noise_public || identity_public` with the
/// device's identity key.
pub fn sign_device_binding(identity: &SigningKey, noise_public: &[u8; 32]) -> [u8; 64] {
    let message = binding_message(noise_public, identity.verifying_key().as_bytes());
    identity.sign(&message).to_bytes()
}

/// Checks a peer's binding of `noise_public` to `identity_public` and returns
/// the identity key.
///
/// Verification is strict: it rejects small-order keys and non-canonical
/// signatures, so one binding has exactly one valid encoding.
pub fn verify_device_binding(
    identity_public: &[u8],
    noise_public: &[u8; 32],
    signature: &[u8],
) -> Result<[u8; 32], KeyError> {
    let identity: [u8; 32] = identity_public
        .try_into()
        .map_err(|_| KeyError::IdentityKeyLength(identity_public.len()))?;
    let signature: [u8; 64] = signature
        .try_into()
        .map_err(|_| KeyError::SignatureLength(signature.len()))?;
    let key = VerifyingKey::from_bytes(&identity).map_err(|_| KeyError::InvalidIdentityKey)?;
    key.verify_strict(
        &binding_message(noise_public, &identity),
        &Signature::from_bytes(&signature),
    )
    .map_err(|_| KeyError::BadSignature)?;
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keypair_from_secret_is_deterministic_and_debug_hides_the_secret() {
        let pair = NoiseKeypair::generate();
        let again = NoiseKeypair::from_secret(*pair.secret());
        assert_eq!(pair.public, again.public);
        assert_ne!(pair.public, NoiseKeypair::generate().public);
        let shown = format!("{pair:?}");
        assert!(shown.contains(&hex::encode(pair.public)));
        assert!(!shown.contains(&hex::encode(pair.secret())));
    }

    #[test]
    fn noise_public_key_matches_snow() {
        let params = "Noise_IK_25519_ChaChaPoly_BLAKE2s".parse().unwrap();
        let snow_pair = snow::Builder::new(params).generate_keypair().unwrap();
        let secret: [u8; 32] = snow_pair.private.as_slice().try_into().unwrap();
        assert_eq!(
            NoiseKeypair::from_secret(secret).public.as_slice(),
            snow_pair.public
        );
    }

    #[test]
    fn device_binding_verifies_only_for_its_keys() {
        let identity = SigningKey::generate(&mut rand::rngs::OsRng);
        let noise = NoiseKeypair::generate();
        let sig = sign_device_binding(&identity, &noise.public);
        let id = identity.verifying_key().to_bytes();
        assert_eq!(verify_device_binding(&id, &noise.public, &sig), Ok(id));

        let other_noise = NoiseKeypair::generate();
        assert_eq!(
            verify_device_binding(&id, &other_noise.public, &sig),
            Err(KeyError::BadSignature)
        );
        let other_id = SigningKey::generate(&mut rand::rngs::OsRng)
            .verifying_key()
            .to_bytes();
        assert_eq!(
            verify_device_binding(&other_id, &noise.public, &sig),
            Err(KeyError::BadSignature)
        );
        assert_eq!(
            verify_device_binding(&id[..31], &noise.public, &sig),
            Err(KeyError::IdentityKeyLength(31))
        );
        assert_eq!(
            verify_device_binding(&id, &noise.public, &sig[..63]),
            Err(KeyError::SignatureLength(63))
        );
    }

    #[test]
    fn invalid_identity_points_are_rejected() {
        // y = 2 is not on the curve (no x satisfies the curve equation).
        let mut bad = [0u8; 32];
        bad[0] = 2;
        let noise = NoiseKeypair::generate();
        assert_eq!(
            verify_device_binding(&bad, &noise.public, &[0; 64]),
            Err(KeyError::InvalidIdentityKey)
        );
    }
}
