//! The relay secret and the keys derived from it.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hkdf::Hkdf;
use rand::{CryptoRng, RngCore};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::CloakError;

/// The 32-byte secret a relay shares with its members (it travels in the
/// relay link as unpadded base64url).
///
/// It is wiped from memory on drop and its `Debug` never shows the bytes.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret([u8; 32]);

impl Secret {
    /// Wraps raw secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Secret {
        Secret(bytes)
    }

    /// A fresh random secret, for a new relay.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Secret {
        let mut bytes = [0; 32];
        rng.fill_bytes(&mut bytes);
        Secret(bytes)
    }

    /// The raw bytes (for storing the secret; keep them out of logs).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The unpadded base64url form used in relay links and config files.
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }

    /// A 32-byte key for one purpose, derived with HKDF-SHA256 so that no
    /// two uses of the secret share a key.
    pub(crate) fn derive(&self, label: &[u8]) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0; 32]);
        Hkdf::<Sha256>::new(None, &self.0)
            .expand(label, out.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    }
}

impl FromStr for Secret {
    type Err = CloakError;

    /// Parses unpadded base64url (43 characters).
    fn from_str(s: &str) -> Result<Secret, CloakError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        let n = URL_SAFE_NO_PAD
            .decode_slice(s.trim(), bytes.as_mut())
            .map_err(|_| CloakError::InvalidSecret)?;
        if n != 32 || s.trim().len() != 43 {
            return Err(CloakError::InvalidSecret);
        }
        Ok(Secret(*bytes))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(…)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_and_rejects() {
        let s = Secret::from_bytes([7; 32]);
        let text = s.to_base64();
        assert_eq!(text.len(), 43);
        let back: Secret = text.parse().unwrap();
        assert_eq!(back.as_bytes(), s.as_bytes());
        assert!("".parse::<Secret>().is_err());
        assert!(format!("{text}=").parse::<Secret>().is_err());
        assert!(text[..42].parse::<Secret>().is_err());
        assert!(format!("{text}AAAA").parse::<Secret>().is_err());
        assert!("+".repeat(43).parse::<Secret>().is_err());
    }

    #[test]
    fn debug_hides_the_bytes() {
        let s = Secret::from_bytes([0xab; 32]);
        assert_eq!(format!("{s:?}"), "Secret(…)");
    }

    #[test]
    fn derived_keys_differ_by_label() {
        let s = Secret::from_bytes([1; 32]);
        assert_ne!(*s.derive(b"a"), *s.derive(b"b"));
    }
}
