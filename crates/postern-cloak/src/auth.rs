//! The relay's verdict on a connection's first bytes: is this one of our
//! hellos, authentic and fresh?
//!
//! The authenticator lives in `legacy_session_id`, which a real Chrome fills
//! with 32 random bytes. With `auth_key` derived from the secret (HKDF,
//! label `postern cloak v1 auth`), `H = HMAC-SHA256(auth_key, hello record
//! with the session id zeroed)` and `t` the client's unix time in seconds:
//!
//! ```text
//! session_id = HMAC-SHA256(auth_key, H ‖ t as u64 BE)[..24] ‖ (t as u64 BE XOR H[24..32])
//! ```
//!
//! The relay recovers `t` from the last 8 bytes, recomputes the first 24 and
//! compares them in constant time. Unlike a plain `H XOR (0^24 ‖ t)`, this
//! also authenticates the timestamp: flipping any bit of the hello, the
//! timestamp bytes included, fails. Both halves look uniformly random to
//! anyone without the secret.
//!
//! This module never answers the peer: every [`Reject`] means "splice to
//! the cover", and it must decide that from the bytes alone, without
//! allocating in proportion to anything the peer claims.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::Secret;
use crate::hello::{self, MAX_RECORD_BODY, SESSION_ID_OFFSET, X25519};

/// HKDF label of the key that authenticates client hellos.
const AUTH_LABEL: &[u8] = b"postern cloak v1 auth";
/// Smallest hello record body we ever send (a Chrome hello with its
/// post-quantum share is about 1.9 KB; anything under 512 bytes is not ours).
const MIN_HELLO_BODY: usize = 512;
/// Largest hello record: one full TLS record.
pub const MAX_HELLO_RECORD: usize = MAX_RECORD_BODY + 5;

/// What [`peek`] makes of a connection's first bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peek {
    /// Consistent so far with a Chrome-shaped hello: read more.
    NeedMore,
    /// Not one of ours: splice to the cover now.
    NotCloak(Reject),
    /// A complete hello record of `len` bytes is at the front of the buffer;
    /// pass exactly those bytes to [`verify`].
    Complete {
        /// Length of the record, header included.
        len: usize,
    },
}

/// Why a connection is not an authentic cloak client (each is a reason to
/// splice it to the cover).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// The first bytes are not a TLS handshake record.
    #[error("not TLS: the first bytes are not a TLS handshake record")]
    NotTls,
    /// A handshake record, but not a ClientHello.
    #[error("a TLS handshake record that is not a ClientHello")]
    NotClientHello,
    /// The record claims more than 16 KiB.
    #[error("the hello record claims more than 16 KiB")]
    TooLarge,
    /// The hello does not parse or does not have our shape.
    #[error("a malformed or foreign-shaped ClientHello")]
    Malformed,
    /// The hello names another server.
    #[error("the hello names another server (SNI)")]
    WrongSni,
    /// The authenticator does not verify under this relay's secret.
    #[error("the authenticator does not verify under this relay's secret")]
    BadAuthenticator,
    /// Authentic, but its timestamp is outside the window.
    #[error("an authentic hello with a timestamp {skew_secs} s from now, outside the window")]
    Stale {
        /// Hello timestamp minus the relay's clock, in seconds.
        skew_secs: i64,
    },
}

impl Reject {
    /// A short stable name for metrics labels.
    pub fn name(&self) -> &'static str {
        match self {
            Reject::NotTls => "not_tls",
            Reject::NotClientHello => "not_client_hello",
            Reject::TooLarge => "too_large",
            Reject::Malformed => "malformed",
            Reject::WrongSni => "wrong_sni",
            Reject::BadAuthenticator => "bad_authenticator",
            Reject::Stale { .. } => "stale",
        }
    }
}

/// An authentic, fresh hello: what the relay needs to answer it.
#[derive(Clone, Debug)]
pub struct Verified {
    /// The authenticator (first 24 bytes of the session id): the key for the
    /// relay's replay cache. It covers the whole hello and its timestamp.
    pub tag: [u8; 24],
    /// The client's clock when it sent the hello (unix seconds).
    pub timestamp: u64,
    /// The server name the hello asked for.
    pub sni: String,
    /// The client's real X25519 share (the `x25519` key share).
    pub client_x25519: [u8; 32],
    /// The hello's `legacy_session_id`, which the ServerHello echoes.
    pub session_id: [u8; 32],
    /// SHA-256 of the whole hello record: the start of the transcript.
    pub transcript: [u8; 32],
}

/// Looks at the first bytes a connection sent. `NeedMore` only while the
/// prefix is consistent with a Chrome-shaped ClientHello record (`16 03 01`,
/// a length between 512 bytes and 16 KiB, handshake type 1, a matching
/// handshake length, `legacy_version` 0x0303, a 32-byte session id);
/// anything else is `NotCloak` at once, so the relay can splice to the cover
/// without waiting.
pub fn peek(buf: &[u8]) -> Peek {
    let byte = |i: usize| buf.get(i).copied();
    let fail = |r| Peek::NotCloak(r);
    for (i, want) in [(0, 0x16), (1, 0x03), (2, 0x01)] {
        match byte(i) {
            None => return Peek::NeedMore,
            Some(b) if b != want => return fail(Reject::NotTls),
            Some(_) => {}
        }
    }
    let (Some(hi), Some(lo)) = (byte(3), byte(4)) else {
        return Peek::NeedMore;
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if len > MAX_RECORD_BODY {
        return fail(Reject::TooLarge);
    }
    if len < MIN_HELLO_BODY {
        return fail(Reject::Malformed);
    }
    match byte(5) {
        None => return Peek::NeedMore,
        Some(1) => {}
        Some(_) => return fail(Reject::NotClientHello),
    }
    let Some(hs) = buf.get(6..9) else {
        return Peek::NeedMore;
    };
    let hs_len = usize::from(hs[0]) << 16 | usize::from(hs[1]) << 8 | usize::from(hs[2]);
    if hs_len + 4 != len {
        return fail(Reject::Malformed);
    }
    for (i, want) in [(9, 0x03), (10, 0x03), (SESSION_ID_OFFSET - 1, 32)] {
        match byte(i) {
            None => return Peek::NeedMore,
            Some(b) if b != want => return fail(Reject::Malformed),
            Some(_) => {}
        }
    }
    if buf.len() >= 5 + len {
        Peek::Complete { len: 5 + len }
    } else {
        Peek::NeedMore
    }
}

/// `H`: the HMAC over a hello record with its session id taken as zero.
fn hello_mac(auth_key: &[u8; 32], record: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(auth_key).expect("HMAC takes any key length");
    mac.update(&record[..SESSION_ID_OFFSET]);
    mac.update(&[0; 32]);
    mac.update(&record[SESSION_ID_OFFSET + 32..]);
    mac.finalize().into_bytes().into()
}

/// The first 24 bytes of the session id: `HMAC(auth_key, H ‖ t)`.
fn timestamp_tag(auth_key: &[u8; 32], h: &[u8; 32], timestamp: u64) -> [u8; 24] {
    let mut mac = Hmac::<Sha256>::new_from_slice(auth_key).expect("HMAC takes any key length");
    mac.update(h);
    mac.update(&timestamp.to_be_bytes());
    let full = mac.finalize().into_bytes();
    let mut tag = [0; 24];
    tag.copy_from_slice(&full[..24]);
    tag
}

/// The session id that authenticates `record` (whose own session id is
/// ignored) as sent at `timestamp` by a holder of `secret`.
pub(crate) fn authenticator(secret: &Secret, record: &[u8], timestamp: u64) -> [u8; 32] {
    let key = secret.derive(AUTH_LABEL);
    let h = hello_mac(&key, record);
    let mut session_id = [0; 32];
    session_id[..24].copy_from_slice(&timestamp_tag(&key, &h, timestamp));
    for (i, t) in timestamp.to_be_bytes().into_iter().enumerate() {
        session_id[24 + i] = t ^ h[24 + i];
    }
    session_id
}

/// Verifies a complete hello record (exactly the `len` bytes [`peek`]
/// reported): our shape, the expected SNI (ASCII case-insensitive), an
/// authenticator under `secret`, and a timestamp within `window_secs` of
/// `now_unix` either way. Never panics, whatever the bytes.
pub fn verify(
    secret: &Secret,
    expected_sni: &str,
    record: &[u8],
    now_unix: u64,
    window_secs: u64,
) -> Result<Verified, Reject> {
    match peek(record) {
        Peek::Complete { len } if len == record.len() => {}
        Peek::NotCloak(reject) => return Err(reject),
        _ => return Err(Reject::Malformed),
    }
    let info = hello::parse_client_hello(record).map_err(|_| Reject::Malformed)?;
    let client_x25519: [u8; 32] = info
        .key_share(X25519)
        .and_then(|k| k.try_into().ok())
        .ok_or(Reject::Malformed)?;
    let sni = info.sni.ok_or(Reject::WrongSni)?;
    if !sni.eq_ignore_ascii_case(expected_sni) {
        return Err(Reject::WrongSni);
    }

    let key = secret.derive(AUTH_LABEL);
    let h = hello_mac(&key, record);
    let session_id: [u8; 32] = record[SESSION_ID_OFFSET..SESSION_ID_OFFSET + 32]
        .try_into()
        .expect("peek checked the session id length");
    let mut stamp = [0; 8];
    for (i, b) in stamp.iter_mut().enumerate() {
        *b = session_id[24 + i] ^ h[24 + i];
    }
    let timestamp = u64::from_be_bytes(stamp);
    let tag = timestamp_tag(&key, &h, timestamp);
    if !bool::from(session_id[..24].ct_eq(&tag)) {
        return Err(Reject::BadAuthenticator);
    }
    let skew = i128::from(timestamp) - i128::from(now_unix);
    if skew.unsigned_abs() > u128::from(window_secs) {
        let skew_secs = skew.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        return Err(Reject::Stale { skew_secs });
    }
    Ok(Verified {
        tag,
        timestamp,
        sni,
        client_x25519,
        session_id,
        transcript: Sha256::digest(record).into(),
    })
}
