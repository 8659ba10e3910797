//! Length-prefixed frames: `u32` big-endian length, then one protobuf
//! [`pb::Envelope`].
//!
//! This module owns the frame boundary and the hard size limit. It must never
//! buffer more than one frame's worth of a length the peer announced before
//! checking that length against [`MAX_FRAME_LEN`], and it never looks inside an
//! envelope's payloads.

use prost::Message;

use crate::{PROTOCOL_VERSION, pb};

/// Largest envelope a frame may carry, in bytes (not counting the 4-byte
/// length prefix). Large enough for a [`crate::MAX_PAYLOAD_LEN`] message plus
/// its envelope, and for a batch of queued messages.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// Bytes in a frame's length prefix.
pub const FRAME_PREFIX_LEN: usize = 4;

/// An idle decoder keeps at most this much buffer capacity, so that idle
/// connections stay cheap.
const IDLE_CAPACITY: usize = 4 * 1024;

/// What was wrong with a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame announced (or, when encoding, would need) more bytes than
    /// the protocol allows.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    TooLarge {
        /// The length announced by the prefix or needed by the envelope.
        len: usize,
        /// The limit, [`MAX_FRAME_LEN`].
        max: usize,
    },
    /// The frame's body is not a valid protobuf `Envelope`.
    #[error("frame is not a valid protobuf envelope: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The envelope carries a protocol version this crate does not speak.
    #[error("envelope has protocol version {0}, but only version {PROTOCOL_VERSION} is supported")]
    UnsupportedVersion(u32),
}

/// Builds an envelope of the current [`PROTOCOL_VERSION`].
pub fn envelope(id: u64, body: pb::envelope::Body) -> pb::Envelope {
    pb::Envelope {
        version: PROTOCOL_VERSION,
        id,
        body: Some(body),
    }
}

/// Appends `env` to `out` as one frame.
///
/// Fails with [`FrameError::TooLarge`] (leaving `out` untouched) when the
/// encoded envelope exceeds [`MAX_FRAME_LEN`].
pub fn encode_envelope(env: &pb::Envelope, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = env.encoded_len();
    let too_large = FrameError::TooLarge {
        len,
        max: MAX_FRAME_LEN,
    };
    let prefix = u32::try_from(len).map_err(|_| too_large.clone())?;
    if len > MAX_FRAME_LEN {
        return Err(too_large);
    }
    out.reserve(FRAME_PREFIX_LEN + len);
    out.extend_from_slice(&prefix.to_be_bytes());
    // A `Vec` grows as needed, so encoding into it cannot run out of room.
    env.encode(out).map_err(|_| too_large)
}

/// Splits a stream of bytes into envelopes.
///
/// Feed it bytes in any pieces with [`extend`](Self::extend) and take
/// envelopes with [`next_envelope`](Self::next_envelope). After the first
/// error the stream cannot be resynchronised: the decoder drops further input
/// and keeps returning that error.
#[derive(Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    pos: usize,
    /// Start of the first frame in `buf` not yet known to be complete; every
    /// prefix before it has been checked against [`MAX_FRAME_LEN`].
    scan: usize,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    ///
    /// An oversized length prefix is detected here, as soon as its 4 bytes
    /// have arrived, and the frame body is then never buffered.
    pub fn extend(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        self.compact();
        self.buf.extend_from_slice(bytes);
        self.check_prefix();
    }

    /// Appends up to `max` bytes written by `fill`, which returns how many it
    /// wrote. Lets the session decrypt straight into the decoder's buffer.
    pub(crate) fn extend_with<E>(
        &mut self,
        max: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<(), E> {
        if self.failed.is_some() {
            return Ok(());
        }
        self.compact();
        let start = self.buf.len();
        self.buf.resize(start + max, 0);
        let written = self
            .buf
            .get_mut(start..)
            .map_or(Ok(0), fill)
            .inspect_err(|_| self.buf.truncate(start))?;
        self.buf.truncate(start + written.min(max));
        self.check_prefix();
        Ok(())
    }

    /// The next complete envelope, or `None` until more bytes arrive.
    pub fn next_envelope(&mut self) -> Result<Option<pb::Envelope>, FrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let pending = self.buf.get(self.pos..).unwrap_or_default();
        let Some(len) = announced_len(pending) else {
            return Ok(None);
        };
        if len > MAX_FRAME_LEN {
            return Err(self.fail(FrameError::TooLarge {
                len,
                max: MAX_FRAME_LEN,
            }));
        }
        let Some(body) = pending.get(FRAME_PREFIX_LEN..FRAME_PREFIX_LEN + len) else {
            return Ok(None);
        };
        let decoded = pb::Envelope::decode(body);
        self.pos += FRAME_PREFIX_LEN + len;
        self.scan = self.scan.max(self.pos);
        self.release_if_idle();
        let result = match decoded {
            Ok(env) if env.version == PROTOCOL_VERSION => return Ok(Some(env)),
            Ok(env) => FrameError::UnsupportedVersion(env.version),
            Err(err) => FrameError::Decode(err),
        };
        Err(self.fail(result))
    }

    /// Gives back the buffer's memory if nothing is buffered; for a
    /// connection that has gone quiet.
    pub fn shrink(&mut self) {
        if self.buffered_len() == 0 {
            self.pos = 0;
            self.scan = 0;
            self.buf = Vec::new();
        }
    }

    /// Bytes received but not yet returned as envelopes.
    pub fn buffered_len(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// Walks the length prefixes of the frames buffered so far, so that an
    /// oversized one is caught before its body is buffered, even when it
    /// follows frames not yet taken out.
    fn check_prefix(&mut self) {
        while let Some(len) = announced_len(self.buf.get(self.scan..).unwrap_or_default()) {
            if len > MAX_FRAME_LEN {
                self.fail(FrameError::TooLarge {
                    len,
                    max: MAX_FRAME_LEN,
                });
                return;
            }
            let end = self.scan + FRAME_PREFIX_LEN + len;
            if end > self.buf.len() {
                return;
            }
            self.scan = end;
        }
    }

    fn fail(&mut self, err: FrameError) -> FrameError {
        self.buf = Vec::new();
        self.pos = 0;
        self.scan = 0;
        self.failed = Some(err.clone());
        err
    }

    /// Moves unconsumed bytes to the front before appending more.
    fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.scan = self.scan.saturating_sub(self.pos);
            self.pos = 0;
        }
    }

    fn release_if_idle(&mut self) {
        if self.pos >= self.buf.len() {
            self.pos = 0;
            self.scan = 0;
            self.buf.clear();
            if self.buf.capacity() > IDLE_CAPACITY {
                self.buf = Vec::new();
            }
        }
    }
}

impl std::fmt::Debug for FrameDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the buffered bytes: they are session plaintext.
        f.debug_struct("FrameDecoder")
            .field("buffered", &self.buffered_len())
            .field("failed", &self.failed)
            .finish()
    }
}

/// The body length a frame's prefix announces, once all 4 bytes are there.
fn announced_len(pending: &[u8]) -> Option<usize> {
    let prefix: [u8; FRAME_PREFIX_LEN] = pending.get(..FRAME_PREFIX_LEN)?.try_into().ok()?;
    // On 16-bit targets a too-long length saturates and is rejected as too large.
    Some(usize::try_from(u32::from_be_bytes(prefix)).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ping(id: u64) -> pb::Envelope {
        envelope(
            id,
            pb::envelope::Body::Request(pb::Request {
                kind: Some(pb::request::Kind::Ping(pb::Ping {})),
            }),
        )
    }

    fn send(id: u64, payload: Vec<u8>) -> pb::Envelope {
        envelope(
            id,
            pb::envelope::Body::Request(pb::Request {
                kind: Some(pb::request::Kind::Send(pb::Send {
                    client_message_id: vec![7; 16].into(),
                    to_account_id: vec![9; 16].into(),
                    payload: payload.into(),
                })),
            }),
        )
    }

    fn decode_all(dec: &mut FrameDecoder) -> Vec<pb::Envelope> {
        std::iter::from_fn(|| dec.next_envelope().unwrap()).collect()
    }

    #[test]
    fn frames_round_trip() {
        let envs = [ping(1), send(2, vec![1, 2, 3]), ping(3)];
        let mut wire = Vec::new();
        for env in &envs {
            encode_envelope(env, &mut wire).unwrap();
        }
        let mut dec = FrameDecoder::new();
        dec.extend(&wire);
        assert_eq!(decode_all(&mut dec), envs);
        assert_eq!(dec.buffered_len(), 0);
    }

    #[test]
    fn oversized_prefix_is_rejected_before_the_body_arrives() {
        let mut dec = FrameDecoder::new();
        dec.extend(&[0x00, 0x10]);
        assert_eq!(dec.next_envelope(), Ok(None));
        dec.extend(&[0x00, 0x01]);
        let err = dec.next_envelope().unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                len: 0x0010_0001,
                max: MAX_FRAME_LEN
            }
        );
        dec.extend(&[0; 4096]);
        assert_eq!(
            dec.buffered_len(),
            0,
            "body of a rejected frame is not kept"
        );
        assert_eq!(dec.next_envelope().unwrap_err(), err, "the error sticks");
    }

    #[test]
    fn oversized_prefix_behind_pending_frames_is_rejected() {
        let mut wire = Vec::new();
        encode_envelope(&ping(1), &mut wire).unwrap();
        wire.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut dec = FrameDecoder::new();
        dec.extend(&wire);
        assert!(matches!(
            dec.next_envelope(),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn encoder_refuses_oversized_envelopes() {
        let mut out = vec![1];
        let err = encode_envelope(&send(1, vec![0; MAX_FRAME_LEN]), &mut out).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len, .. } if len > MAX_FRAME_LEN));
        assert_eq!(out, [1]);
    }

    #[test]
    fn largest_frame_is_accepted() {
        let mut payload_len = MAX_FRAME_LEN;
        while send(1, vec![0; payload_len]).encoded_len() > MAX_FRAME_LEN {
            payload_len -= 1;
        }
        let env = send(1, vec![5; payload_len]);
        assert_eq!(env.encoded_len(), MAX_FRAME_LEN);
        let mut wire = Vec::new();
        encode_envelope(&env, &mut wire).unwrap();
        let mut dec = FrameDecoder::new();
        dec.extend(&wire);
        assert_eq!(dec.next_envelope().unwrap(), Some(env));
    }

    #[test]
    fn other_versions_are_rejected() {
        let mut env = ping(1);
        env.version = 2;
        let mut wire = Vec::new();
        encode_envelope(&env, &mut wire).unwrap();
        let mut dec = FrameDecoder::new();
        dec.extend(&wire);
        assert_eq!(dec.next_envelope(), Err(FrameError::UnsupportedVersion(2)));
    }

    #[test]
    fn garbage_body_is_a_decode_error() {
        let mut dec = FrameDecoder::new();
        dec.extend(&[0, 0, 0, 2, 0xff, 0xff]);
        assert!(matches!(dec.next_envelope(), Err(FrameError::Decode(_))));
    }

    #[test]
    fn idle_decoder_releases_a_large_buffer() {
        let mut wire = Vec::new();
        encode_envelope(&send(1, vec![0; 200_000]), &mut wire).unwrap();
        let mut dec = FrameDecoder::new();
        dec.extend(&wire);
        assert!(dec.next_envelope().unwrap().is_some());
        assert!(dec.buf.capacity() <= IDLE_CAPACITY);
    }

    fn arb_envelope() -> impl Strategy<Value = pb::Envelope> {
        let body = prop_oneof![
            Just(None),
            Just(Some(pb::envelope::Body::Request(pb::Request {
                kind: Some(pb::request::Kind::Ping(pb::Ping {}))
            }))),
            (any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(
                |(seq, payload)| Some(pb::envelope::Body::Push(pb::Push {
                    kind: Some(pb::push::Kind::Deliver(pb::Deliver {
                        messages: vec![pb::QueuedMessage {
                            seq,
                            payload: payload.into(),
                            ..Default::default()
                        }],
                    })),
                }))
            ),
            (any::<u32>(), ".{0,40}").prop_map(|(code, message)| Some(
                pb::envelope::Body::Response(pb::Response {
                    kind: Some(pb::response::Kind::Error(pb::Error {
                        code: i32::try_from(code % 19).unwrap_or_default(),
                        message,
                        retry_after_ms: u64::from(code),
                        current_epoch: 0,
                    })),
                })
            )),
        ];
        (any::<u64>(), body).prop_map(|(id, body)| pb::Envelope {
            version: PROTOCOL_VERSION,
            id,
            body,
        })
    }

    proptest! {
        #[test]
        fn arbitrary_envelopes_round_trip_across_arbitrary_splits(
            envs in proptest::collection::vec(arb_envelope(), 0..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut wire = Vec::new();
            for env in &envs {
                encode_envelope(env, &mut wire).unwrap();
            }
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            cuts.push(0);
            cuts.push(wire.len());
            cuts.sort_unstable();
            let mut dec = FrameDecoder::new();
            let mut got = Vec::new();
            for pair in cuts.windows(2) {
                dec.extend(&wire[pair[0]..pair[1]]);
                got.extend(decode_all(&mut dec));
            }
            prop_assert_eq!(got, envs);
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
        ) {
            let mut dec = FrameDecoder::new();
            for chunk in &chunks {
                dec.extend(chunk);
                while let Ok(Some(_)) = dec.next_envelope() {}
                prop_assert!(dec.buffered_len() <= MAX_FRAME_LEN + FRAME_PREFIX_LEN);
            }
        }
    }
}
