//! Signed operator requests: how an operator's command proves, on every
//! HTTP request, that it holds a key the server's configuration lists.
//!
//! The operator signs (Ed25519) a message naming the method, the path
//! (with its query), the SHA-256 of the body, the time and a random nonce;
//! the four headers below carry the key, the time, the nonce and the
//! signature. [`Gate::check`] accepts a request only if the key is listed,
//! the time is within [`MAX_SKEW_SECS`] of the server's, the nonce was not
//! seen in that window (replays), and the signature covers exactly this
//! method, path and body. No bearer token exists that a log or a proxy
//! could leak.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// The header naming the operator's public key (64 hex digits).
pub const HEADER_KEY: &str = "x-postern-operator";
/// The header with the signing time (UNIX seconds).
pub const HEADER_TIME: &str = "x-postern-time";
/// The header with the request's nonce (32 hex digits).
pub const HEADER_NONCE: &str = "x-postern-nonce";
/// The header with the signature (base64).
pub const HEADER_SIGNATURE: &str = "x-postern-signature";

/// How far a request's time may be from the server's, either way.
pub const MAX_SKEW_SECS: u64 = 300;

/// Nonces remembered at most (older ones leave first); more requests than
/// this within the skew window are refused rather than forgotten early.
pub const MAX_NONCES: usize = 100_000;

const DOMAIN: &[u8] = b"postern operator request v1\n";

/// The headers of a signed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeaders {
    /// The operator's public key, hex.
    pub key: String,
    /// UNIX seconds.
    pub time: u64,
    /// 16 random bytes, hex.
    pub nonce: String,
    /// Ed25519 signature, base64.
    pub signature: String,
}

impl SignedHeaders {
    /// `(name, value)` pairs to add to the request.
    pub fn pairs(&self) -> [(&'static str, String); 4] {
        [
            (HEADER_KEY, self.key.clone()),
            (HEADER_TIME, self.time.to_string()),
            (HEADER_NONCE, self.nonce.clone()),
            (HEADER_SIGNATURE, self.signature.clone()),
        ]
    }
}

fn message(method: &str, path: &str, body: &[u8], time: u64, nonce: &str) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    for part in [
        method.to_ascii_uppercase().as_bytes(),
        path.as_bytes(),
        hex::encode(Sha256::digest(body)).as_bytes(),
        time.to_string().as_bytes(),
        nonce.as_bytes(),
    ] {
        m.extend_from_slice(part);
        m.push(b'\n');
    }
    m
}

/// Signs a request at `now` with a fresh nonce.
pub fn sign(key: &SigningKey, method: &str, path: &str, body: &[u8], now: u64) -> SignedHeaders {
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let signature = key.sign(&message(method, path, body, now, &nonce));
    SignedHeaders {
        key: hex::encode(key.verifying_key().as_bytes()),
        time: now,
        nonce,
        signature: B64.encode(signature.to_bytes()),
    }
}

/// Why a request was not accepted. The messages are for the operator;
/// none echoes the request's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A header is missing or malformed.
    #[error("the request is not signed ({0}); use `postern legal` or sign as it does")]
    Unsigned(&'static str),
    /// The key is not an operator's.
    #[error("this key is not an operator of this server")]
    UnknownOperator,
    /// The time is too far from the server's.
    #[error(
        "the request's time is {0} s away from the server's (at most {MAX_SKEW_SECS} s); check the clock"
    )]
    Stale(u64),
    /// The nonce was used before.
    #[error("this request was already received (replayed nonce)")]
    Replayed,
    /// The signature does not cover this method, path and body.
    #[error("the signature does not match this request")]
    BadSignature,
    /// Too many requests within the window to remember their nonces.
    #[error("too many operator requests; try again in a few minutes")]
    Busy,
}

/// Parses an operator's public key (64 hex digits).
pub fn parse_key(hex_key: &str) -> Result<VerifyingKey, AuthError> {
    let bytes: [u8; 32] = hex::decode(hex_key.trim())
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or(AuthError::Unsigned("operator key"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| AuthError::Unsigned("operator key"))
}

/// The server's side: the operators it accepts and the nonces it saw.
#[derive(Debug)]
pub struct Gate {
    operators: Vec<VerifyingKey>,
    seen: HashMap<String, u64>,
}

impl Gate {
    /// A gate for these operators.
    pub fn new(operators: Vec<VerifyingKey>) -> Gate {
        Gate {
            operators,
            seen: HashMap::new(),
        }
    }

    /// The operators it accepts.
    pub fn operators(&self) -> &[VerifyingKey] {
        &self.operators
    }

    /// Checks a request; `header` looks a header up by its name. Returns
    /// the operator's key.
    pub fn check<'h>(
        &mut self,
        header: impl Fn(&str) -> Option<&'h str>,
        method: &str,
        path: &str,
        body: &[u8],
        now: u64,
    ) -> Result<VerifyingKey, AuthError> {
        let key = parse_key(header(HEADER_KEY).ok_or(AuthError::Unsigned("operator key"))?)?;
        let time: u64 = header(HEADER_TIME)
            .and_then(|t| t.trim().parse().ok())
            .ok_or(AuthError::Unsigned("time"))?;
        let nonce = header(HEADER_NONCE).ok_or(AuthError::Unsigned("nonce"))?;
        if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AuthError::Unsigned("nonce"));
        }
        let signature: [u8; 64] = header(HEADER_SIGNATURE)
            .and_then(|s| B64.decode(s.trim()).ok())
            .and_then(|v| v.try_into().ok())
            .ok_or(AuthError::Unsigned("signature"))?;
        if !self.operators.contains(&key) {
            return Err(AuthError::UnknownOperator);
        }
        let skew = now.abs_diff(time);
        if skew > MAX_SKEW_SECS {
            return Err(AuthError::Stale(skew));
        }
        key.verify_strict(
            &message(method, path, body, time, nonce),
            &Signature::from_bytes(&signature),
        )
        .map_err(|_| AuthError::BadSignature)?;
        // Only a request that verified may use up a nonce.
        self.seen
            .retain(|_, t| now.abs_diff(*t) <= MAX_SKEW_SECS * 2);
        let nonce = nonce.to_ascii_lowercase();
        if self.seen.contains_key(&nonce) {
            return Err(AuthError::Replayed);
        }
        if self.seen.len() >= MAX_NONCES {
            return Err(AuthError::Busy);
        }
        self.seen.insert(nonce, time);
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_795_000_000;

    fn gate(key: &SigningKey) -> Gate {
        Gate::new(vec![key.verifying_key()])
    }

    fn check(
        g: &mut Gate,
        h: &SignedHeaders,
        method: &str,
        path: &str,
        body: &[u8],
        now: u64,
    ) -> Result<VerifyingKey, AuthError> {
        let pairs = h.pairs();
        g.check(
            |name| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.as_str())
            },
            method,
            path,
            body,
            now,
        )
    }

    #[test]
    fn a_signed_request_passes_once_and_nothing_else_does() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let mut g = gate(&key);
        let h = sign(&key, "POST", "/operator/requests", b"{}", NOW);
        assert_eq!(
            check(&mut g, &h, "POST", "/operator/requests", b"{}", NOW + 10),
            Ok(key.verifying_key())
        );
        assert_eq!(
            check(&mut g, &h, "POST", "/operator/requests", b"{}", NOW + 10),
            Err(AuthError::Replayed)
        );
        let h = sign(&key, "POST", "/operator/requests", b"{}", NOW);
        for (m, p, b) in [
            ("GET", "/operator/requests", &b"{}"[..]),
            ("POST", "/operator/requests/1", b"{}"),
            ("POST", "/operator/requests", b"{ }"),
        ] {
            assert_eq!(
                check(&mut g, &h, m, p, b, NOW),
                Err(AuthError::BadSignature)
            );
        }
        assert_eq!(
            check(&mut g, &h, "POST", "/operator/requests", b"{}", NOW + 301),
            Err(AuthError::Stale(301))
        );
        let stranger = SigningKey::from_bytes(&[2; 32]);
        let h = sign(&stranger, "GET", "/operator/requests", b"", NOW);
        assert_eq!(
            check(&mut g, &h, "GET", "/operator/requests", b"", NOW),
            Err(AuthError::UnknownOperator)
        );
        assert!(matches!(
            g.check(|_| None, "GET", "/", b"", NOW),
            Err(AuthError::Unsigned(_))
        ));
    }
}
