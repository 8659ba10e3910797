//! The cloak: a client-to-relay handshake and record layer that look like
//! Chrome talking TLS 1.3 to an ordinary HTTPS site.
//!
//! TODO crate docs
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auth;
mod handshake;
pub mod hello;
pub mod io;
pub mod record;
mod secret;
pub mod shape;
mod wire;

pub use auth::{MAX_HELLO_RECORD, Peek, Reject, Verified, peek, verify};
pub use handshake::{ClientConfig, ClientPending, RelayPending, client_start, respond};
pub use hello::{ClientHelloInfo, KeyShare, ja4, parse_client_hello};
pub use io::{CloakStream, client_connect};
pub use record::{MAX_RECORD_PAYLOAD, Opener, Sealer, Session};
pub use secret::Secret;
pub use shape::{CoverShape, learn_cover_shape, probe_hello};

/// Progress of a sans-IO step that may need more bytes.
#[derive(Debug)]
pub enum Step<T> {
    /// Not enough bytes yet: read more and call again with the longer buffer.
    NeedMore,
    /// Finished: `value`, after using the first `consumed` bytes.
    Done {
        /// The result.
        value: T,
        /// How many bytes of the buffer belonged to this step.
        consumed: usize,
    },
}

/// What went wrong in the cloak.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CloakError {
    /// The peer's bytes do not parse.
    #[error("malformed TLS bytes from the peer: {0}")]
    Malformed(&'static str),
    /// The answer did not come from a relay holding the secret (the real
    /// cover, or something in between answered instead).
    #[error(
        "the answer did not come from the relay: the secret or the address is wrong, or the connection is intercepted"
    )]
    NotRelay,
    /// The peer's key confirmation did not verify.
    #[error("the peer's key confirmation did not verify (wrong secret, or tampering)")]
    BadConfirmation,
    /// A record failed to authenticate.
    #[error("a record failed to decrypt: the connection was tampered with")]
    Decrypt,
    /// A record would exceed the TLS size limit.
    #[error("a record would exceed the TLS size limit")]
    RecordTooLarge,
    /// 2^64 - 1 records were sealed or opened with one key.
    #[error("the record counter is exhausted: open a new connection")]
    CounterExhausted,
    /// The cover site's answer cannot be imitated.
    #[error(
        "the cover site's TLS answer cannot be imitated: {0}; use a cover that speaks TLS 1.3 with X25519"
    )]
    UnsupportedCover(&'static str),
    /// A relay secret that is not 43 characters of unpadded base64url.
    #[error("invalid relay secret: expected 43 characters of unpadded base64url")]
    InvalidSecret,
    /// The handshake did not finish in time.
    #[error("the cloak handshake timed out")]
    Timeout,
    /// The underlying connection failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
}
