//! Postern's wire protocol.
//!
//! This crate owns the bytes that cross the network between a client and a
//! server, and nothing that touches a socket:
//!
//! - [`pb`]: the protobuf messages (schema in `proto/postern.proto`, compiled
//!   at build time with protox, so no `protoc` is needed);
//! - [`frame`]: length-prefixed frames with a hard maximum size;
//! - [`session`]: the Noise IK session as a sans-IO state machine — feed it
//!   received bytes, take envelopes and bytes to send out;
//! - [`link`]: `postern://` links that bootstrap a client;
//! - [`directory`]: the signed directory (C2SP signed note) listing the
//!   server's key, carrier endpoints, relays and log keys, and the rule
//!   clients accept one by;
//! - [`keys`]: Noise static keys and the device-key binding signature;
//! - [`ids`]: account and device identifiers;
//! - [`content`]: what clients put inside payloads (never read by servers);
//! - [`mls`]: the public header of MLS messages, all the delivery service
//!   reads of them;
//! - [`username`]: the username rules, shared by server and clients.
//!
//! Message payloads are opaque bytes to everything here but [`content`],
//! which only clients use.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod content;
pub mod directory;
pub mod frame;
pub mod ids;
pub mod keys;
pub mod link;
pub mod mls;
pub mod relay_auth;
pub mod session;
pub mod username;

/// Protobuf messages generated from `proto/postern.proto`.
#[allow(missing_docs, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/postern.v1.rs"));
}

/// Protobuf messages generated from `proto/content.proto` (re-exported by
/// [`content`]).
#[allow(missing_docs, clippy::all)]
mod pb_content {
    include!(concat!(env!("OUT_DIR"), "/postern.content.v1.rs"));
}

/// The protocol version this crate speaks, carried in the handshake and in
/// every [`pb::Envelope`].
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest message payload a client may send, in bytes. The server refuses
/// larger sends with `PAYLOAD_TOO_LARGE`.
pub const MAX_PAYLOAD_LEN: usize = 256 * 1024;
