//! Postern's carriers and the thin async shell around the sans-IO session.
//!
//! This crate owns how bytes cross the network — the carriers: plain TCP
//! ([`tcp`]), TLS 1.3 ([`tls`]), WebSocket over TLS ([`ws`]) and QUIC
//! ([`quic`]); [`carrier`] dials any of them into one boxed byte stream and
//! sorts their failures into the classes the client's connectivity manager
//! keeps — and the tokio glue that runs a [`postern_proto::session`] over any
//! carrier that is `AsyncRead + AsyncWrite`. The cloak to a volunteer's
//! relay ([`carrier::Carrier::Cloak`]) is a carrier too: TCP, then the
//! `postern-cloak` handshake, then the same session inside:
//!
//! - [`client_handshake`] runs the client's side and returns a [`Connection`]
//!   and the server's hello;
//! - [`server_accept`] reads the client's hello and returns a
//!   [`PendingServer`], so the server can look the client's key up (in its
//!   store, asynchronously) before it [accepts](PendingServer::accept) or
//!   [refuses](PendingServer::refuse) the session;
//! - a [`Connection`] [splits](Connection::split) into a [`ConnReader`] and a
//!   [`ConnWriter`] for use from two tasks.
//!
//! It never parses payloads: envelopes go in and come out whole, and
//! everything past the frame is the caller's business. Idle connections must
//! stay cheap (the server budget is about 10 KiB each), so buffers are small
//! while idle and grow only under load.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod carrier;
mod connection;
pub mod quic;
pub mod tcp;
pub mod tls;
pub mod ws;

pub use connection::{
    ConnReader, ConnWriter, Connection, PendingServer, client_handshake, server_accept,
};

use postern_proto::session::SessionError;

impl TransportError {
    /// Sorts a cloak handshake error: I/O stays I/O (so blocking is
    /// classified as for every carrier), timeouts are timeouts, anything
    /// else means the relay did not prove itself.
    pub fn from_cloak(e: postern_cloak::CloakError) -> TransportError {
        match e {
            postern_cloak::CloakError::Io(io) => TransportError::Io(io),
            postern_cloak::CloakError::Timeout => TransportError::Timeout,
            other => TransportError::NotRelay(other.to_string()),
        }
    }
}

/// What went wrong while carrying a session.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Reading from or writing to the carrier failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer did not complete a step (connecting, the handshake) in time.
    #[error("timed out waiting for the peer")]
    Timeout,
    /// The session failed: the peer's bytes were invalid or not meant for us.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The peer closed the connection before the handshake finished.
    #[error("the peer closed the connection during the handshake")]
    Closed,
    /// The peer closed the connection in the middle of a record or frame.
    #[error("the peer closed the connection with {0} bytes of an unfinished record or frame")]
    Truncated(usize),
    /// A host name resolved to no address.
    #[error("{0} resolves to no address")]
    NoAddress(String),
    /// Every address of a host refused or failed the connection.
    #[error("could not connect to {addr}: {source}")]
    Connect {
        /// The address as given.
        addr: String,
        /// The last address's error.
        source: std::io::Error,
    },
    /// TLS could not be set up or the handshake failed (not a certificate
    /// problem nor an alert: see those).
    #[error("TLS failed: {0}")]
    Tls(String),
    /// The peer sent a TLS alert: it refused the handshake.
    #[error("the peer sent a TLS alert: {0}")]
    TlsAlert(String),
    /// The server's certificate is not the pinned one, or the system's roots
    /// do not vouch for it: maybe an interception box on the way.
    #[error("the server's TLS certificate does not match: {0}")]
    Certificate(String),
    /// The WebSocket upgrade failed.
    #[error("WebSocket upgrade failed: {0}")]
    Upgrade(String),
    /// The QUIC connection failed.
    #[error("QUIC failed: {0}")]
    Quic(String),
    /// What answered at a relay's address is not the relay, or the cloak
    /// handshake failed.
    #[error("not the relay: {0}")]
    NotRelay(String),
    /// Listening on an address failed.
    #[error("could not listen on {addr}: {source}")]
    Bind {
        /// The address as given.
        addr: String,
        /// Why it failed.
        source: std::io::Error,
    },
}
