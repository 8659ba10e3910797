//! Records after the handshake: TLS 1.3 application-data records carrying
//! AES-256-GCM-sealed, padded payloads.
//!
//! Each record is `17 03 03 LEN ‖ AEAD(plaintext)` with the 5-byte header as
//! associated data and a nonce of the per-direction IV XOR the 64-bit record
//! counter (as in TLS 1.3). The plaintext is `u16 payload_len ‖ payload ‖
//! zero padding`; a record with an empty payload is pure padding and is
//! skipped by the [`Opener`].
//!
//! Padding policy: the observer must not learn the sizes of the Noise frames
//! inside.
//! - small records (plaintext under 1 KiB) get a uniformly random 0–255
//!   bytes of padding, so a 60-byte acknowledgement and a 300-byte message
//!   overlap in size;
//! - larger ones are padded up to the next multiple of 512 bytes;
//! - full records are exactly 16 401 bytes on the wire, the size of a full
//!   TLS 1.3 record from any browser or server.
//!
//! The overhead is at most 255 bytes for a small record and at most 511
//! bytes (under 50 %, under 5 % past 10 KiB) for a large one.
//!
//! The AEAD is ring's AES-256-GCM: with AES instructions (every x86 and
//! ARMv8 phone or server of the last decade) it costs a few percent of a
//! core at full speed, where ChaCha20-Poly1305 in portable Rust was over
//! 40% of the relay's CPU and capped a relayed stream near 300 MiB/s on the
//! benchmark machine (BENCHMARKS.md, "Relay"); without them ring falls back
//! to a constant-time implementation. The cost: ring does not wipe its
//! copy of the key schedule when a session ends (as for every rustls
//! session). The keys are per-session (X25519), so a later memory dump
//! yields at most sessions whose memory was not yet reused — never the
//! relay secret, which stays in wiped memory, nor the Noise session inside.
//!
//! A counter never repeats: at `u64::MAX` sealing and opening fail with
//! [`CloakError::CounterExhausted`].

use bytes::{Buf, Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

use crate::CloakError;

/// The largest payload one record carries, so that a full record is
/// 16 401 bytes on the wire (2^14 + 1 bytes of TLS 1.3 inner plaintext and a
/// 16-byte tag), like a full TLS 1.3 record.
pub const MAX_RECORD_PAYLOAD: usize = 16383;
/// AEAD tag length.
pub(crate) const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 5;
/// Largest plaintext: length prefix plus the largest payload.
const MAX_PLAINTEXT: usize = MAX_RECORD_PAYLOAD + 2;
/// Largest record body on the wire.
pub(crate) const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + TAG_LEN;
/// Smallest record body: an empty payload's length prefix and the tag.
pub(crate) const MIN_CIPHERTEXT: usize = 2 + TAG_LEN;
const SMALL_PLAINTEXT: usize = 1024;
const LARGE_BUCKET: usize = 512;

/// Both directions of an established cloak session.
pub struct Session {
    /// Seals what we send.
    pub sealer: Sealer,
    /// Opens what the peer sends.
    pub opener: Opener,
}

/// Seals payloads into application-data records for one direction.
pub struct Sealer {
    cipher: LessSafeKey,
    iv: [u8; 12],
    counter: u64,
    padding: StdRng,
}

/// Opens application-data records for one direction.
pub struct Opener {
    cipher: LessSafeKey,
    iv: [u8; 12],
    counter: u64,
}

fn nonce(iv: &[u8; 12], counter: u64) -> Nonce {
    let mut n = *iv;
    for (b, c) in n[4..].iter_mut().zip(counter.to_be_bytes()) {
        *b ^= c;
    }
    // Unique: the counter never repeats for a key (see the module docs).
    Nonce::assume_unique_for_key(n)
}

fn cipher(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("a 32-byte key fits AES-256"))
}

fn header(body_len: usize) -> [u8; HEADER_LEN] {
    let [hi, lo] = (body_len as u16).to_be_bytes();
    [0x17, 0x03, 0x03, hi, lo]
}

/// The plaintext length the padding policy picks for a payload of `n` bytes.
fn padded_len(n: usize, rng: &mut impl Rng) -> usize {
    let plain = n + 2;
    let target = if plain < SMALL_PLAINTEXT {
        plain + rng.gen_range(0..256)
    } else {
        plain.div_ceil(LARGE_BUCKET) * LARGE_BUCKET
    };
    target.clamp(plain, MAX_PLAINTEXT)
}

impl Sealer {
    pub(crate) fn new(key: &[u8; 32], iv: [u8; 12], padding_seed: [u8; 32]) -> Sealer {
        Sealer {
            cipher: cipher(key),
            iv,
            counter: 0,
            padding: StdRng::from_seed(padding_seed),
        }
    }

    /// Appends one or more TLS application-data records (`17 03 03 LEN`) to
    /// `out`; each record's plaintext is `u16 len ‖ payload ‖ padding`,
    /// sealed with the record header as associated data. An empty payload
    /// appends nothing.
    pub fn seal(&mut self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), CloakError> {
        for chunk in payload.chunks(MAX_RECORD_PAYLOAD) {
            let plain_len = padded_len(chunk.len(), &mut self.padding);
            self.seal_record(chunk, plain_len, out)?;
        }
        Ok(())
    }

    /// Appends one padding-only record whose body is `body_len` bytes on the
    /// wire (clamped to what a record can be): to imitate a record the
    /// cover would send, or as cover traffic. The peer's [`Opener`] skips it.
    pub fn seal_padding(&mut self, body_len: usize, out: &mut Vec<u8>) -> Result<(), CloakError> {
        let body_len = body_len.clamp(MIN_CIPHERTEXT, MAX_CIPHERTEXT);
        self.seal_record(&[], body_len - TAG_LEN, out)
    }

    /// Seals one record of exactly `plain_len` plaintext bytes (at least
    /// `payload.len() + 2`, at most the TLS maximum).
    pub(crate) fn seal_record(
        &mut self,
        payload: &[u8],
        plain_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CloakError> {
        if self.counter == u64::MAX {
            return Err(CloakError::CounterExhausted);
        }
        if plain_len > MAX_PLAINTEXT || payload.len() + 2 > plain_len {
            return Err(CloakError::RecordTooLarge);
        }
        let head = header(plain_len + TAG_LEN);
        out.reserve(HEADER_LEN + plain_len + TAG_LEN);
        out.extend_from_slice(&head);
        let start = out.len();
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        out.extend_from_slice(payload);
        out.resize(start + plain_len, 0);
        let tag = self
            .cipher
            .seal_in_place_separate_tag(
                nonce(&self.iv, self.counter),
                Aad::from(head),
                &mut out[start..],
            )
            .map_err(|_| CloakError::RecordTooLarge)?;
        out.extend_from_slice(tag.as_ref());
        self.counter += 1;
        Ok(())
    }
}

impl Opener {
    pub(crate) fn new(key: &[u8; 32], iv: [u8; 12]) -> Opener {
        Opener {
            cipher: cipher(key),
            iv,
            counter: 0,
        }
    }

    /// Takes one complete record from the front of `buf` if there is one
    /// and returns its payload. Records that carry only padding are consumed
    /// and skipped, so `Ok(None)` means "read more bytes".
    pub fn open(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, CloakError> {
        loop {
            let Some(len) = Self::complete_record(buf)? else {
                return Ok(None);
            };
            let mut record = buf.split_to(len);
            let range = self.open_in_place(&mut record)?;
            if !range.is_empty() {
                let mut payload = record.freeze();
                payload.advance(range.start);
                payload.truncate(range.len());
                return Ok(Some(payload));
            }
        }
    }

    /// The length of the application-data record at the front of `buf`, if
    /// it is all there; an error if the header is not one we send. With
    /// [`Opener::open_in_place`], lets a forwarder open records where they
    /// were read, without a buffer per connection.
    pub fn complete_record(buf: &[u8]) -> Result<Option<usize>, CloakError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        if buf[..3] != [0x17, 0x03, 0x03] {
            return Err(CloakError::Malformed("not a TLS application-data record"));
        }
        let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
        if !(MIN_CIPHERTEXT..=MAX_CIPHERTEXT).contains(&len) {
            return Err(CloakError::Malformed("record length out of range"));
        }
        Ok((buf.len() >= HEADER_LEN + len).then_some(HEADER_LEN + len))
    }

    /// Decrypts one whole record (header included) in place and returns
    /// where its payload lies (an empty range for a padding-only record).
    /// On failure the counter does not move.
    pub fn open_in_place(
        &mut self,
        record: &mut [u8],
    ) -> Result<std::ops::Range<usize>, CloakError> {
        if self.counter == u64::MAX {
            return Err(CloakError::CounterExhausted);
        }
        if record.len() < HEADER_LEN + MIN_CIPHERTEXT {
            return Err(CloakError::Malformed("record too short"));
        }
        let (head, body) = record.split_at_mut(HEADER_LEN);
        let head: [u8; HEADER_LEN] = (&*head).try_into().expect("five bytes");
        let plain = self
            .cipher
            .open_in_place(nonce(&self.iv, self.counter), Aad::from(head), body)
            .map_err(|_| CloakError::Decrypt)?;
        self.counter += 1;
        let n = usize::from(u16::from_be_bytes([plain[0], plain[1]]));
        if n + 2 > plain.len() {
            return Err(CloakError::Malformed("payload length exceeds the record"));
        }
        Ok(HEADER_LEN + 2..HEADER_LEN + 2 + n)
    }
}

#[cfg(test)]
impl Sealer {
    pub(crate) fn set_counter(&mut self, counter: u64) {
        self.counter = counter;
    }
}

#[cfg(test)]
pub(crate) fn test_pair() -> (Sealer, Opener) {
    (
        Sealer::new(&[9; 32], [3; 12], [5; 32]),
        Opener::new(&[9; 32], [3; 12]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn full_records_have_tls_size() {
        let (mut s, _) = test_pair();
        let mut out = Vec::new();
        s.seal(&vec![1; MAX_RECORD_PAYLOAD * 2 + 10], &mut out)
            .unwrap();
        assert_eq!(&out[..5], &[0x17, 3, 3, 0x40, 0x11]);
        assert_eq!(&out[5 + 16401..5 + 16401 + 5], &[0x17, 3, 3, 0x40, 0x11]);
    }

    #[test]
    fn counter_exhaustion_is_an_error() {
        let (mut s, _) = test_pair();
        s.set_counter(u64::MAX);
        let mut out = Vec::new();
        assert!(matches!(
            s.seal(b"x", &mut out),
            Err(CloakError::CounterExhausted)
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn padding_only_records_are_skipped() {
        let (mut s, mut o) = test_pair();
        let mut out = Vec::new();
        s.seal_record(b"", 40, &mut out).unwrap();
        s.seal(b"hello", &mut out).unwrap();
        let mut buf = BytesMut::from(&out[..]);
        assert_eq!(o.open(&mut buf).unwrap().unwrap(), &b"hello"[..]);
        assert!(buf.is_empty());
    }

    #[test]
    fn overhead_is_capped() {
        let mut rng = StdRng::from_seed([1; 32]);
        for n in [0, 1, 100, 1021, 1022, 5000, 10_000, MAX_RECORD_PAYLOAD] {
            for _ in 0..50 {
                let p = padded_len(n, &mut rng);
                assert!(p >= n + 2 && p <= MAX_PLAINTEXT);
                assert!(p - (n + 2) < 512);
            }
        }
    }

    proptest! {
        #[test]
        fn seal_open_round_trip(sizes in proptest::collection::vec(0usize..40_000, 1..5)) {
            let (mut s, mut o) = test_pair();
            let mut wire = Vec::new();
            let mut expected = Vec::new();
            for (i, n) in sizes.iter().enumerate() {
                let payload = vec![i as u8; *n];
                s.seal(&payload, &mut wire).unwrap();
                expected.extend_from_slice(&payload);
            }
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(777) {
                buf.extend_from_slice(chunk);
                while let Some(p) = o.open(&mut buf).unwrap() {
                    got.extend_from_slice(&p);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn any_bit_flip_fails(n in 0usize..3000, bit in any::<prop::sample::Index>()) {
            let (mut s, mut o) = test_pair();
            let mut wire = Vec::new();
            s.seal(&vec![7; n.max(1)], &mut wire).unwrap();
            let bit = bit.index(wire.len() * 8);
            wire[bit / 8] ^= 1 << (bit % 8);
            let mut buf = BytesMut::from(&wire[..]);
            // A flip in the length may leave the record incomplete (None) or
            // out of range; a flip anywhere else must fail to open.
            prop_assert!(!matches!(o.open(&mut buf), Ok(Some(_))));
        }
    }
}
