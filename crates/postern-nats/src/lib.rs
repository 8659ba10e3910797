//! A small client for NATS core pub/sub, used by Postern server nodes to
//! wake each other when a message is queued for a device connected
//! elsewhere.
//!
//! Why not `async-nats`: Postern needs only publish, subscribe and
//! reconnect, at most once, over a private network; a few hundred lines on
//! tokio cost less to build and audit than the full client (JetStream,
//! TLS, nkeys, service API) and its dependency tree. The protocol parser
//! ([`proto`]) is sans-IO, bounded, property-tested and fuzzed.
//!
//! Semantics are NATS core's: a publish reaches the subscribers connected
//! at that moment, or nobody. The client reconnects by itself (backing off
//! up to [`Options::max_backoff`]), restores its subscriptions, and reports
//! [`Event::Reconnected`] so callers can recheck whatever they might have
//! missed; Postern treats its database as the source of truth and NATS
//! only as a hint to look.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
pub mod proto;
pub mod test_server;

pub use client::{Client, Event, Events, NatsError, Options};
