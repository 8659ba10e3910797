//! The Noise IK session between a client and a server, as a sans-IO state
//! machine.
//!
//! The client (initiator) knows the server's static key from a link or the
//! signed directory; the handshake is `Noise_IK_25519_ChaChaPoly_BLAKE2s` with
//! the prologue `postern/1`. Message 1 carries a [`pb::ClientHello`] and the
//! client's static key, message 2 a [`pb::ServerHello`]. After that each
//! direction is a stream of Noise transport messages, each framed on the wire
//! as a *record*: `u16` big-endian length, then the message. Decrypted
//! records form a stream of [frames](crate::frame) — a record may hold many
//! small frames (that is how throughput stays high) or a slice of a large one.
//!
//! This module owns keys, nonces and record boundaries. It never touches a
//! socket or a clock, and it never holds more than one partial record plus the
//! frame decoder's bounded buffer for a peer.

use std::sync::Arc;

use prost::Message;
use snow::{HandshakeState, StatelessTransportState};
use zeroize::Zeroizing;

use crate::frame::{FrameDecoder, FrameError, encode_envelope};
use crate::keys::NoiseKeypair;
use crate::pb;

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";

/// Noise prologue: both sides must agree on it, so a peer speaking another
/// protocol (or version) fails the handshake.
pub const PROLOGUE: &[u8] = b"postern/1";

/// Largest Noise message, and so the largest record body, in bytes.
pub const MAX_RECORD_LEN: usize = 65535;

/// Bytes of authentication tag in every encrypted record.
pub const TAG_LEN: usize = 16;

/// Most plaintext bytes one record carries.
pub const MAX_RECORD_PLAINTEXT: usize = MAX_RECORD_LEN - TAG_LEN;

/// Bytes in a record's length prefix.
pub const RECORD_PREFIX_LEN: usize = 2;

/// Message 1 of IK adds an ephemeral key, the encrypted static key and a tag
/// to the hello.
const MESSAGE1_OVERHEAD: usize = 32 + (32 + TAG_LEN) + TAG_LEN;

/// Message 2 of IK adds an ephemeral key and a tag to the hello.
const MESSAGE2_OVERHEAD: usize = 32 + TAG_LEN;

/// An idle buffer keeps at most this much capacity, so that idle connections
/// stay cheap.
const IDLE_CAPACITY: usize = 4 * 1024;

/// What went wrong in the session, mostly: what was wrong with the peer's
/// bytes.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The Noise handshake failed. When the responder sees a decrypt error
    /// here, the client used the wrong server key (or is not a Postern
    /// client); when the initiator does, the answer did not come from the
    /// server it meant to reach.
    #[error("Noise handshake failed: {0}")]
    Handshake(snow::Error),
    /// The peer's hello decrypted but is not a valid protobuf message.
    #[error("the peer's hello is not a valid protobuf message: {0}")]
    Hello(prost::DecodeError),
    /// Our own hello does not fit into one handshake message.
    #[error("hello of {len} bytes is larger than the {max} bytes a handshake message can carry")]
    HelloTooLarge {
        /// Encoded size of the hello.
        len: usize,
        /// The most a hello may take.
        max: usize,
    },
    /// The client sent more than one record of data before the handshake
    /// finished; it cannot have been encrypted for this session.
    #[error("the peer sent {0} bytes after its handshake message, before the handshake finished")]
    EarlyData(usize),
    /// [`Responder::accept`] was called before the client's hello arrived.
    #[error("the handshake has not reached the point where the server may answer")]
    NotReady,
    /// The handshake finished but the peer's static key is unusable.
    #[error("the peer's static key is missing or not 32 bytes")]
    RemoteKey,
    /// A record is shorter than an authentication tag.
    #[error("a record of {0} bytes is too short to hold the {TAG_LEN}-byte authentication tag")]
    ShortRecord(usize),
    /// A record failed authentication.
    #[error(
        "a record failed to decrypt: it was corrupted, tampered with or sent for another session"
    )]
    Decrypt,
    /// A decrypted frame was invalid.
    #[error("invalid frame: {0}")]
    Frame(#[from] FrameError),
    /// Encrypting a record failed (a bug, not the peer's doing).
    #[error("encrypting a record failed: {0}")]
    Encrypt(snow::Error),
    /// 2^64-1 records went one way; the session must be replaced.
    #[error("the session has used up its nonces; reconnect")]
    NonceExhausted,
    /// The state machine already failed or finished; close the connection.
    #[error("the session already failed or finished; close the connection")]
    Poisoned,
}

impl SessionError {
    /// The error to report again from a poisoned opener.
    fn replay(&self) -> SessionError {
        match self {
            SessionError::ShortRecord(len) => SessionError::ShortRecord(*len),
            SessionError::Decrypt => SessionError::Decrypt,
            SessionError::Frame(err) => SessionError::Frame(err.clone()),
            SessionError::NonceExhausted => SessionError::NonceExhausted,
            _ => SessionError::Poisoned,
        }
    }
}

fn handshake_state(
    secret: &[u8; 32],
    server_key: Option<&[u8; 32]>,
) -> Result<HandshakeState, snow::Error> {
    let builder = snow::Builder::new(NOISE_PARAMS.parse()?)
        .local_private_key(secret)?
        .prologue(PROLOGUE)?;
    match server_key {
        Some(key) => builder.remote_public_key(key)?.build_initiator(),
        None => builder.build_responder(),
    }
}

/// The body length a record's prefix announces, once both bytes are there.
fn record_len(bytes: &[u8]) -> Option<usize> {
    let prefix: [u8; RECORD_PREFIX_LEN] = bytes.get(..RECORD_PREFIX_LEN)?.try_into().ok()?;
    Some(usize::from(u16::from_be_bytes(prefix)))
}

/// Moves bytes from `input` into `buf` until `buf` holds one whole record
/// (prefix and body); returns whether it does.
fn fill_record(buf: &mut Vec<u8>, input: &mut &[u8]) -> bool {
    loop {
        let want = record_len(buf).map_or(RECORD_PREFIX_LEN, |len| RECORD_PREFIX_LEN + len);
        if buf.len() >= want && record_len(buf).is_some() {
            return true;
        }
        if input.is_empty() {
            return false;
        }
        let (head, tail) = input.split_at(want.saturating_sub(buf.len()).min(input.len()));
        buf.extend_from_slice(head);
        *input = tail;
    }
}

/// Writes one handshake message carrying `payload` as a record.
fn write_handshake(
    hs: &mut HandshakeState,
    payload: &[u8],
    overhead: usize,
) -> Result<Vec<u8>, SessionError> {
    let max = MAX_RECORD_LEN - overhead;
    if payload.len() > max {
        return Err(SessionError::HelloTooLarge {
            len: payload.len(),
            max,
        });
    }
    let mut out = vec![0; RECORD_PREFIX_LEN + overhead + payload.len()];
    let (prefix, body) = out.split_at_mut(RECORD_PREFIX_LEN);
    let len = hs
        .write_message(payload, body)
        .map_err(SessionError::Handshake)?;
    let len16 = u16::try_from(len).map_err(|_| SessionError::HelloTooLarge {
        len: payload.len(),
        max,
    })?;
    prefix.copy_from_slice(&len16.to_be_bytes());
    out.truncate(RECORD_PREFIX_LEN + len);
    Ok(out)
}

/// Decrypts the handshake message in `record` (prefix included) and decodes
/// its payload.
fn read_handshake<M: Message + Default>(
    hs: &mut HandshakeState,
    record: &[u8],
) -> Result<M, SessionError> {
    let body = record.get(RECORD_PREFIX_LEN..).unwrap_or_default();
    let mut payload = vec![0; body.len()];
    let len = hs
        .read_message(body, &mut payload)
        .map_err(SessionError::Handshake)?;
    M::decode(payload.get(..len).unwrap_or_default()).map_err(SessionError::Hello)
}

fn remote_static(hs: &HandshakeState) -> Result<[u8; 32], SessionError> {
    hs.get_remote_static()
        .and_then(|key| key.try_into().ok())
        .ok_or(SessionError::RemoteKey)
}

/// The client's side of the handshake.
pub struct Initiator {
    hs: Option<HandshakeState>,
    record: Vec<u8>,
}

impl Initiator {
    /// Starts a handshake with the server whose static key is `server_key`;
    /// returns the state machine and the wire bytes of message 1.
    pub fn start(
        local: &NoiseKeypair,
        server_key: &[u8; 32],
        hello: &pb::ClientHello,
    ) -> Result<(Initiator, Vec<u8>), SessionError> {
        let mut hs =
            handshake_state(local.secret(), Some(server_key)).map_err(SessionError::Handshake)?;
        let wire = write_handshake(&mut hs, &hello.encode_to_vec(), MESSAGE1_OVERHEAD)?;
        let initiator = Initiator {
            hs: Some(hs),
            record: Vec::new(),
        };
        Ok((initiator, wire))
    }

    /// Feeds bytes received from the server. Returns `None` until message 2
    /// is complete, then the session and the server's hello; bytes after
    /// message 2 are kept for the session's [`Opener`].
    ///
    /// A hello with `error` set is still returned: the caller shows the error.
    pub fn feed(
        &mut self,
        bytes: &[u8],
    ) -> Result<Option<(Session, pb::ServerHello)>, SessionError> {
        if self.hs.is_none() {
            return Err(SessionError::Poisoned);
        }
        let mut input = bytes;
        if !fill_record(&mut self.record, &mut input) {
            return Ok(None);
        }
        let mut hs = self.hs.take().ok_or(SessionError::Poisoned)?;
        let record = std::mem::take(&mut self.record);
        let hello = read_handshake(&mut hs, &record)?;
        Ok(Some((Session::new(hs, input.to_vec())?, hello)))
    }
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("buffered", &self.record.len())
            .finish_non_exhaustive()
    }
}

/// The client's first message, as the server sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    /// The client's hello.
    pub client: pb::ClientHello,
    /// The client's Noise static public key, proven by the handshake: the
    /// key a registered device is looked up by.
    pub remote_static: [u8; 32],
}

/// The server's side of the handshake.
pub struct Responder {
    secret: Zeroizing<[u8; 32]>,
    record: Vec<u8>,
    /// Set once message 1 has been read.
    hs: Option<HandshakeState>,
    /// Bytes that arrived after message 1, for the session's [`Opener`].
    leftover: Vec<u8>,
    failed: bool,
}

impl Responder {
    /// A responder that authenticates as `local`.
    pub fn new(local: &NoiseKeypair) -> Responder {
        Responder {
            secret: Zeroizing::new(*local.secret()),
            record: Vec::new(),
            hs: None,
            leftover: Vec::new(),
            failed: false,
        }
    }

    /// Feeds bytes received from the client. Returns the client's hello once
    /// message 1 is complete, `None` before (and after).
    ///
    /// A client that used the wrong server key fails here with
    /// [`SessionError::Handshake`].
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<Hello>, SessionError> {
        if self.failed {
            return Err(SessionError::Poisoned);
        }
        let result = self.feed_inner(bytes);
        if result.is_err() {
            self.failed = true;
            self.hs = None;
            self.record = Vec::new();
            self.leftover = Vec::new();
        }
        result
    }

    fn feed_inner(&mut self, bytes: &[u8]) -> Result<Option<Hello>, SessionError> {
        if self.hs.is_some() {
            self.keep_leftover(bytes)?;
            return Ok(None);
        }
        let mut input = bytes;
        if !fill_record(&mut self.record, &mut input) {
            return Ok(None);
        }
        let mut hs = handshake_state(&self.secret, None).map_err(SessionError::Handshake)?;
        let record = std::mem::take(&mut self.record);
        let client = read_handshake(&mut hs, &record)?;
        let hello = Hello {
            client,
            remote_static: remote_static(&hs)?,
        };
        self.hs = Some(hs);
        self.keep_leftover(input)?;
        Ok(Some(hello))
    }

    /// Keeps early bytes for the opener, at most one record's worth.
    fn keep_leftover(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        let len = self.leftover.len() + bytes.len();
        if len > RECORD_PREFIX_LEN + MAX_RECORD_LEN {
            return Err(SessionError::EarlyData(len));
        }
        self.leftover.extend_from_slice(bytes);
        Ok(())
    }

    /// Answers the client with `hello`: returns the session and the wire
    /// bytes of message 2. To refuse a client, send a hello with `error` set
    /// and close the connection after writing it.
    pub fn accept(self, hello: &pb::ServerHello) -> Result<(Session, Vec<u8>), SessionError> {
        let mut hs = self.hs.ok_or(if self.failed {
            SessionError::Poisoned
        } else {
            SessionError::NotReady
        })?;
        let wire = write_handshake(&mut hs, &hello.encode_to_vec(), MESSAGE2_OVERHEAD)?;
        Ok((Session::new(hs, self.leftover)?, wire))
    }
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("buffered", &self.record.len())
            .field("hello_read", &self.hs.is_some())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// An established session, ready to be split into its two directions.
pub struct Session {
    transport: Arc<StatelessTransportState>,
    remote_static: [u8; 32],
    leftover: Vec<u8>,
}

impl Session {
    fn new(hs: HandshakeState, leftover: Vec<u8>) -> Result<Session, SessionError> {
        let remote_static = remote_static(&hs)?;
        let transport = hs
            .into_stateless_transport_mode()
            .map_err(SessionError::Handshake)?;
        Ok(Session {
            transport: Arc::new(transport),
            remote_static,
            leftover,
        })
    }

    /// The peer's Noise static public key.
    pub fn remote_static(&self) -> &[u8; 32] {
        &self.remote_static
    }

    /// Splits the session into its sending and receiving halves, which can
    /// be used independently (e.g. from two tasks).
    pub fn split(self) -> (Sealer, Opener) {
        let sealer = Sealer {
            transport: Arc::clone(&self.transport),
            nonce: 0,
            pending: Vec::new(),
        };
        let opener = Opener {
            transport: self.transport,
            nonce: 0,
            backlog: self.leftover,
            partial: Vec::new(),
            frames: FrameDecoder::new(),
            failure: None,
        };
        (sealer, opener)
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("remote_static", &hex::encode(self.remote_static))
            .finish_non_exhaustive()
    }
}

/// The sending half: frames envelopes and encrypts them into records.
pub struct Sealer {
    transport: Arc<StatelessTransportState>,
    nonce: u64,
    pending: Vec<u8>,
}

impl Sealer {
    /// Queues `env` as a frame; nothing is encrypted until [`seal`](Self::seal).
    pub fn push(&mut self, env: &pb::Envelope) -> Result<(), SessionError> {
        encode_envelope(env, &mut self.pending)?;
        Ok(())
    }

    /// Whether frames are queued that [`seal`](Self::seal) has not encrypted.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Gives back the pending buffer's memory if nothing is pending; for a
    /// connection that has gone quiet.
    pub fn shrink(&mut self) {
        if self.pending.is_empty() {
            self.pending = Vec::new();
        }
    }

    /// Encrypts every queued frame into as few records as possible and
    /// appends them to `out`.
    pub fn seal(&mut self, out: &mut Vec<u8>) -> Result<(), SessionError> {
        let mut sealed = 0;
        let result = self
            .pending
            .chunks(MAX_RECORD_PLAINTEXT)
            .try_for_each(|chunk| {
                seal_record(&self.transport, &mut self.nonce, chunk, out)?;
                sealed += chunk.len();
                Ok(())
            });
        self.pending.drain(..sealed);
        if self.pending.is_empty() && self.pending.capacity() > IDLE_CAPACITY {
            self.pending = Vec::new();
        }
        result
    }
}

fn seal_record(
    transport: &StatelessTransportState,
    nonce: &mut u64,
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), SessionError> {
    // Noise reserves the all-ones nonce.
    if *nonce == u64::MAX {
        return Err(SessionError::NonceExhausted);
    }
    let len = plaintext.len() + TAG_LEN;
    let prefix = u16::try_from(len).map_err(|_| SessionError::Encrypt(snow::Error::Input))?;
    let start = out.len();
    out.extend_from_slice(&prefix.to_be_bytes());
    out.resize(start + RECORD_PREFIX_LEN + len, 0);
    let body = out.get_mut(start + RECORD_PREFIX_LEN..).unwrap_or_default();
    if let Err(err) = transport.write_message(*nonce, plaintext, body) {
        out.truncate(start);
        return Err(SessionError::Encrypt(err));
    }
    *nonce += 1;
    Ok(())
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("nonce", &self.nonce)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

/// The receiving half: decrypts records and splits them into envelopes.
pub struct Opener {
    transport: Arc<StatelessTransportState>,
    nonce: u64,
    /// Bytes that arrived with the handshake, not yet processed.
    backlog: Vec<u8>,
    /// At most one incomplete record.
    partial: Vec<u8>,
    frames: FrameDecoder,
    failure: Option<SessionError>,
}

impl Opener {
    /// Feeds bytes received from the peer: every complete record is
    /// decrypted, a trailing partial record is kept for the next call.
    ///
    /// After a record fails to decrypt the opener is poisoned and returns
    /// that error from every later call.
    pub fn feed(&mut self, wire: &[u8]) -> Result<(), SessionError> {
        if let Some(err) = &self.failure {
            return Err(err.replay());
        }
        let result = self.drain_backlog().and_then(|()| self.feed_records(wire));
        if let Err(err) = &result {
            self.failure = Some(err.replay());
            self.partial = Vec::new();
        }
        result
    }

    /// The next complete envelope, or `None` until more bytes arrive.
    pub fn next_envelope(&mut self) -> Result<Option<pb::Envelope>, SessionError> {
        if !self.backlog.is_empty() {
            self.feed(&[])?;
        }
        if let Some(err) = &self.failure {
            return Err(err.replay());
        }
        Ok(self.frames.next_envelope()?)
    }

    /// Gives back the memory of empty buffers; for a connection that has
    /// gone quiet.
    pub fn shrink(&mut self) {
        if self.partial.is_empty() {
            self.partial = Vec::new();
        }
        if self.backlog.is_empty() {
            self.backlog = Vec::new();
        }
        self.frames.shrink();
    }

    /// Bytes received but not yet returned as envelopes (including a partial
    /// record). Non-zero when the peer closes means the stream was cut short.
    pub fn buffered_len(&self) -> usize {
        self.backlog.len() + self.partial.len() + self.frames.buffered_len()
    }

    fn drain_backlog(&mut self) -> Result<(), SessionError> {
        if self.backlog.is_empty() {
            return Ok(());
        }
        let backlog = std::mem::take(&mut self.backlog);
        self.feed_records(&backlog)
    }

    fn feed_records(&mut self, mut input: &[u8]) -> Result<(), SessionError> {
        if !self.partial.is_empty() {
            if !fill_record(&mut self.partial, &mut input) {
                return Ok(());
            }
            let mut record = std::mem::take(&mut self.partial);
            self.open(record.get(RECORD_PREFIX_LEN..).unwrap_or_default())?;
            record.clear();
            if record.capacity() <= IDLE_CAPACITY {
                self.partial = record;
            }
        }
        while let Some(len) = record_len(input) {
            let end = RECORD_PREFIX_LEN + len;
            let (Some(body), Some(rest)) = (input.get(RECORD_PREFIX_LEN..end), input.get(end..))
            else {
                break;
            };
            self.open(body)?;
            input = rest;
        }
        self.partial.extend_from_slice(input);
        Ok(())
    }

    fn open(&mut self, body: &[u8]) -> Result<(), SessionError> {
        let Some(plain_len) = body.len().checked_sub(TAG_LEN) else {
            return Err(SessionError::ShortRecord(body.len()));
        };
        if self.nonce == u64::MAX {
            return Err(SessionError::NonceExhausted);
        }
        let (transport, nonce) = (&self.transport, self.nonce);
        self.frames
            .extend_with(plain_len, |out| transport.read_message(nonce, body, out))
            .map_err(|_| SessionError::Decrypt)?;
        self.nonce += 1;
        Ok(())
    }
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opener")
            .field("nonce", &self.nonce)
            .field("partial", &self.partial.len())
            .field("frames", &self.frames)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PROTOCOL_VERSION;
    use crate::frame::envelope;
    use proptest::prelude::*;

    fn client_hello() -> pb::ClientHello {
        pb::ClientHello {
            version: PROTOCOL_VERSION,
            software: "postern-test".into(),
        }
    }

    fn server_hello() -> pb::ServerHello {
        pb::ServerHello {
            version: PROTOCOL_VERSION,
            server_time_ms: 1234,
            ..Default::default()
        }
    }

    fn ping(id: u64) -> pb::Envelope {
        envelope(
            id,
            pb::envelope::Body::Request(pb::Request {
                kind: Some(pb::request::Kind::Ping(pb::Ping {})),
            }),
        )
    }

    fn deliver(id: u64, payload_len: usize) -> pb::Envelope {
        envelope(
            id,
            pb::envelope::Body::Push(pb::Push {
                kind: Some(pb::push::Kind::Deliver(pb::Deliver {
                    messages: vec![pb::QueuedMessage {
                        seq: id,
                        payload: vec![0xab; payload_len].into(),
                        ..Default::default()
                    }],
                })),
            }),
        )
    }

    /// Feeds `bytes` in pieces of `chunk` bytes, returning the first `Some`.
    fn feed_in_pieces<T>(
        bytes: &[u8],
        chunk: usize,
        mut feed: impl FnMut(&[u8]) -> Result<Option<T>, SessionError>,
    ) -> Result<Option<T>, SessionError> {
        let mut found = None;
        for piece in bytes.chunks(chunk.max(1)) {
            if let Some(value) = feed(piece)? {
                assert!(found.is_none(), "handshake completed twice");
                found = Some(value);
            }
        }
        Ok(found)
    }

    fn receive_all(opener: &mut Opener, wire: &[u8], chunk: usize) -> Vec<pb::Envelope> {
        let mut got = Vec::new();
        let mut drain = |opener: &mut Opener| {
            while let Some(env) = opener.next_envelope().unwrap() {
                got.push(env);
            }
        };
        drain(opener);
        for piece in wire.chunks(chunk.max(1)) {
            opener.feed(piece).unwrap();
            drain(opener);
        }
        got
    }

    struct Pair {
        client: Session,
        server: Session,
        client_key: NoiseKeypair,
        hello: Hello,
        answer: pb::ServerHello,
    }

    fn handshake(chunk: usize) -> Pair {
        let server_key = NoiseKeypair::generate();
        let client_key = NoiseKeypair::generate();
        let (mut initiator, m1) =
            Initiator::start(&client_key, &server_key.public, &client_hello()).unwrap();
        let mut responder = Responder::new(&server_key);
        let hello = feed_in_pieces(&m1, chunk, |b| responder.feed(b))
            .unwrap()
            .expect("message 1 complete");
        let (server, m2) = responder.accept(&server_hello()).unwrap();
        let (client, answer) = feed_in_pieces(&m2, chunk, |b| initiator.feed(b))
            .unwrap()
            .expect("message 2 complete");
        Pair {
            client,
            server,
            client_key,
            hello,
            answer,
        }
    }

    #[test]
    fn handshake_and_exchange_in_one_byte_pieces_and_all_at_once() {
        for chunk in [1, 7, usize::MAX] {
            let pair = handshake(chunk);
            assert_eq!(pair.hello.client, client_hello());
            assert_eq!(pair.hello.remote_static, pair.client_key.public);
            assert_eq!(pair.answer, server_hello());
            assert_eq!(pair.server.remote_static(), &pair.client_key.public);

            let (mut client_tx, mut client_rx) = pair.client.split();
            let (mut server_tx, mut server_rx) = pair.server.split();
            for round in 0..3 {
                let up: Vec<_> = (0..5).map(|i| ping(round * 10 + i)).collect();
                let down: Vec<_> = (0..3).map(|i| deliver(round * 10 + i, 100)).collect();
                let mut wire = Vec::new();
                up.iter().for_each(|e| client_tx.push(e).unwrap());
                client_tx.seal(&mut wire).unwrap();
                assert!(!client_tx.has_pending());
                assert_eq!(receive_all(&mut server_rx, &wire, chunk), up);

                wire.clear();
                down.iter().for_each(|e| server_tx.push(e).unwrap());
                server_tx.seal(&mut wire).unwrap();
                assert_eq!(receive_all(&mut client_rx, &wire, chunk), down);
            }
        }
    }

    #[test]
    fn wrong_server_key_fails_at_the_responder() {
        let server_key = NoiseKeypair::generate();
        let impostor = NoiseKeypair::generate();
        let (_, m1) = Initiator::start(
            &NoiseKeypair::generate(),
            &server_key.public,
            &client_hello(),
        )
        .unwrap();
        let mut responder = Responder::new(&impostor);
        let err = responder.feed(&m1).unwrap_err();
        assert!(
            matches!(err, SessionError::Handshake(snow::Error::Decrypt)),
            "{err:?}"
        );
        assert!(matches!(responder.feed(&[0]), Err(SessionError::Poisoned)));
        assert!(matches!(
            responder.accept(&server_hello()),
            Err(SessionError::Poisoned)
        ));
    }

    #[test]
    fn accept_before_hello_is_refused() {
        let responder = Responder::new(&NoiseKeypair::generate());
        assert!(matches!(
            responder.accept(&server_hello()),
            Err(SessionError::NotReady)
        ));
    }

    #[test]
    fn tampered_record_poisons_the_opener() {
        let pair = handshake(usize::MAX);
        let (mut tx, _) = pair.client.split();
        let (_, mut rx) = pair.server.split();
        let mut wire = Vec::new();
        tx.push(&ping(1)).unwrap();
        tx.seal(&mut wire).unwrap();
        if let Some(byte) = wire.last_mut() {
            *byte ^= 1;
        }
        assert!(matches!(rx.feed(&wire), Err(SessionError::Decrypt)));
        assert!(matches!(rx.feed(&[]), Err(SessionError::Decrypt)));
        assert!(matches!(rx.next_envelope(), Err(SessionError::Decrypt)));
    }

    #[test]
    fn replayed_record_fails() {
        let pair = handshake(usize::MAX);
        let (mut tx, _) = pair.client.split();
        let (_, mut rx) = pair.server.split();
        let mut wire = Vec::new();
        tx.push(&ping(1)).unwrap();
        tx.seal(&mut wire).unwrap();
        rx.feed(&wire).unwrap();
        assert!(matches!(rx.feed(&wire), Err(SessionError::Decrypt)));
    }

    #[test]
    fn short_record_is_rejected() {
        let pair = handshake(usize::MAX);
        let (_, mut rx) = pair.server.split();
        assert!(matches!(
            rx.feed(&[0, 3, 1, 2, 3]),
            Err(SessionError::ShortRecord(3))
        ));
    }

    #[test]
    fn many_small_frames_are_coalesced_into_few_records() {
        let pair = handshake(usize::MAX);
        let (mut tx, _) = pair.client.split();
        let (_, mut rx) = pair.server.split();
        let envs: Vec<_> = (0..10_000).map(ping).collect();
        envs.iter().for_each(|e| tx.push(e).unwrap());
        let mut wire = Vec::new();
        tx.seal(&mut wire).unwrap();
        let plaintext: usize = envs.iter().map(|e| e.encoded_len() + 4).sum();
        let records = plaintext.div_ceil(MAX_RECORD_PLAINTEXT);
        assert_eq!(
            wire.len(),
            plaintext + records * (RECORD_PREFIX_LEN + TAG_LEN)
        );
        assert_eq!(receive_all(&mut rx, &wire, 4096), envs);
    }

    #[test]
    fn a_large_frame_spans_records() {
        let pair = handshake(usize::MAX);
        let (mut tx, _) = pair.client.split();
        let (_, mut rx) = pair.server.split();
        let envs = [deliver(1, 300_000), ping(2), deliver(3, 70_000)];
        envs.iter().for_each(|e| tx.push(e).unwrap());
        let mut wire = Vec::new();
        tx.seal(&mut wire).unwrap();
        assert_eq!(receive_all(&mut rx, &wire, 4096), envs);
        assert_eq!(receive_all(&mut rx, &[], 1), []);
    }

    #[test]
    fn server_frames_in_the_same_read_as_message_2_are_not_lost() {
        let server_key = NoiseKeypair::generate();
        let (mut initiator, m1) = Initiator::start(
            &NoiseKeypair::generate(),
            &server_key.public,
            &client_hello(),
        )
        .unwrap();
        let mut responder = Responder::new(&server_key);
        responder.feed(&m1).unwrap().unwrap();
        let refusal = pb::ServerHello {
            error: Some(pb::Error {
                code: pb::ErrorCode::UnsupportedVersion.into(),
                message: "upgrade".into(),
                retry_after_ms: 0,
                current_epoch: 0,
            }),
            ..server_hello()
        };
        let (server, mut wire) = responder.accept(&refusal).unwrap();
        let (mut tx, _) = server.split();
        let envs = [ping(0), deliver(0, 10)];
        envs.iter().for_each(|e| tx.push(e).unwrap());
        tx.seal(&mut wire).unwrap();

        let (client, answer) = initiator.feed(&wire).unwrap().unwrap();
        assert_eq!(answer, refusal);
        let (_, mut rx) = client.split();
        assert_eq!(receive_all(&mut rx, &[], 1), envs);
        assert!(matches!(initiator.feed(&[]), Err(SessionError::Poisoned)));
    }

    #[test]
    fn early_data_at_the_responder_is_bounded() {
        let server_key = NoiseKeypair::generate();
        let (_, mut m1) = Initiator::start(
            &NoiseKeypair::generate(),
            &server_key.public,
            &client_hello(),
        )
        .unwrap();
        m1.extend_from_slice(&[0; 10]);
        let mut responder = Responder::new(&server_key);
        assert!(responder.feed(&m1).unwrap().is_some());
        assert!(matches!(
            responder.feed(&vec![0; MAX_RECORD_LEN]),
            Err(SessionError::EarlyData(_))
        ));
    }

    #[test]
    fn hello_too_large_is_refused() {
        let hello = pb::ClientHello {
            version: 1,
            software: "x".repeat(MAX_RECORD_LEN),
        };
        let server = NoiseKeypair::generate();
        assert!(matches!(
            Initiator::start(&NoiseKeypair::generate(), &server.public, &hello),
            Err(SessionError::HelloTooLarge { .. })
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn arbitrary_bytes_never_panic_the_responder(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..6),
            prefix in any::<u16>(),
        ) {
            let mut responder = Responder::new(&NoiseKeypair::from_secret([3; 32]));
            let _ = responder.feed(&prefix.to_be_bytes());
            for chunk in &chunks {
                let _ = responder.feed(chunk);
            }
            let _ = responder.accept(&server_hello());
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_opener(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..6),
            valid_first in any::<bool>(),
        ) {
            let pair = handshake(usize::MAX);
            let (mut tx, _) = pair.client.split();
            let (_, mut rx) = pair.server.split();
            if valid_first {
                let mut wire = Vec::new();
                tx.push(&ping(1)).unwrap();
                tx.seal(&mut wire).unwrap();
                rx.feed(&wire).unwrap();
            }
            for chunk in &chunks {
                let _ = rx.feed(chunk);
                while let Ok(Some(_)) = rx.next_envelope() {}
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_initiator(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..6),
        ) {
            let server = NoiseKeypair::from_secret([4; 32]);
            let (mut initiator, _) =
                Initiator::start(&NoiseKeypair::from_secret([5; 32]), &server.public, &client_hello()).unwrap();
            for chunk in &chunks {
                let _ = initiator.feed(chunk);
            }
        }

        #[test]
        fn envelopes_survive_arbitrary_wire_splits(
            sizes in proptest::collection::vec(0usize..5000, 1..20),
            chunk in 1usize..70_000,
        ) {
            let pair = handshake(usize::MAX);
            let (mut tx, _) = pair.client.split();
            let (_, mut rx) = pair.server.split();
            let envs: Vec<_> = sizes.iter().enumerate().map(|(i, &n)| deliver(i as u64, n)).collect();
            let mut wire = Vec::new();
            for (i, env) in envs.iter().enumerate() {
                tx.push(env).unwrap();
                if i % 3 == 0 {
                    tx.seal(&mut wire).unwrap();
                }
            }
            tx.seal(&mut wire).unwrap();
            prop_assert_eq!(receive_all(&mut rx, &wire, chunk), envs);
        }
    }
}
