//! The cover's first flight, and the relay's imitation of it.
//!
//! At start-up (and now and then after) the relay sends the cover one of our
//! Chrome-shaped hellos ([`probe_hello`]) and learns from the answer
//! ([`learn_cover_shape`]) what a ServerHello from this site looks like: the
//! cipher suite, the group, the order of the ServerHello's extensions,
//! whether a ChangeCipherSpec follows, and the lengths of the encrypted
//! records (EncryptedExtensions, Certificate, CertificateVerify, Finished).
//! The relay's own flight copies all of that, so the two are alike in
//! everything a passive observer can see.
//!
//! Nothing here holds a secret; this module only parses and lays out.

use rand::{CryptoRng, RngCore};

use crate::CloakError;
use crate::hello::{self, MAX_RECORD_BODY, MLKEM768_CT_LEN, X25519, X25519MLKEM768};
use crate::record::Sealer;
use crate::wire::{Reader, prefixed, put_u16};

const EXT_SUPPORTED_VERSIONS: u16 = 0x002b;
const EXT_KEY_SHARE: u16 = 0x0033;
/// The ServerHello `random` that marks a HelloRetryRequest.
const HRR_RANDOM: [u8; 32] = [
    0xcf, 0x21, 0xad, 0x74, 0xe5, 0x9a, 0x61, 0x11, 0xbe, 0x1d, 0x8c, 0x02, 0x1e, 0x65, 0xb8, 0x91,
    0xc2, 0xa2, 0x11, 0x16, 0x7a, 0xbb, 0x8c, 0x5e, 0x07, 0x9e, 0x09, 0xe2, 0xc8, 0xa8, 0x33, 0x9c,
];
/// The ChangeCipherSpec record of TLS 1.3 middlebox compatibility mode.
pub(crate) const CCS: [u8; 6] = [0x14, 0x03, 0x03, 0x00, 0x01, 0x01];
/// At most this many encrypted records are learned from a cover.
const MAX_COVER_RECORDS: usize = 16;

/// What a cover site's first flight looks like on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoverShape {
    /// The cipher suite its ServerHello selects.
    pub cipher_suite: u16,
    /// The group of its key share: X25519MLKEM768 or x25519.
    pub group: u16,
    /// The ServerHello extensions in order (`supported_versions` 0x002b and
    /// `key_share` 0x0033).
    pub extension_order: Vec<u16>,
    /// Whether a ChangeCipherSpec record follows the ServerHello.
    pub change_cipher_spec: bool,
    /// Body lengths of the application-data records that follow, in order.
    pub record_lengths: Vec<u16>,
    /// Body lengths of the records the cover sends right after the client's
    /// Finished (its NewSessionTickets). A probe never gets that far, so
    /// [`learn_cover_shape`] assumes OpenSSL's default of two tickets (what
    /// nginx and Apache send); set them from a full handshake with the cover
    /// if you have one. The relay sends them with [`CoverShape::seal_tickets`].
    pub ticket_lengths: Vec<u16>,
}

impl CoverShape {
    /// A typical nginx (OpenSSL 3) flight with a Let's Encrypt ECDSA
    /// certificate, answering Chrome: TLS_AES_128_GCM_SHA256, x25519,
    /// `supported_versions` then `key_share`, a ChangeCipherSpec, and one
    /// record each for EncryptedExtensions (with ALPN h2), the two-certificate
    /// chain, an ECDSA P-256 CertificateVerify and Finished. (OpenSSL 3.0's
    /// `s_server` answers Chromium 156's hello in exactly this shape, with
    /// 32-, 96- and 53-byte records around the certificate's.)
    pub fn fallback() -> CoverShape {
        CoverShape {
            cipher_suite: 0x1301,
            group: X25519,
            extension_order: vec![EXT_SUPPORTED_VERSIONS, EXT_KEY_SHARE],
            change_cipher_spec: true,
            record_lengths: vec![32, 2075, 96, 53],
            ticket_lengths: openssl_tickets(0x1301),
        }
    }

    /// This shape with anything the client could not accept replaced by the
    /// fallback's choice (for shapes built by hand): a TLS 1.3 suite, an
    /// X25519 group, both ServerHello extensions, at most 16 records.
    pub(crate) fn normalized(&self) -> CoverShape {
        let fallback = CoverShape::fallback();
        let mut order = self.extension_order.clone();
        order.sort_unstable();
        let mut shape = self.clone();
        if !matches!(shape.cipher_suite, 0x1301..=0x1303) {
            shape.cipher_suite = fallback.cipher_suite;
        }
        if shape.group != X25519MLKEM768 {
            shape.group = X25519;
        }
        if order != [EXT_SUPPORTED_VERSIONS, EXT_KEY_SHARE] {
            shape.extension_order = fallback.extension_order;
        }
        shape.record_lengths.truncate(MAX_COVER_RECORDS);
        shape.ticket_lengths.truncate(MAX_COVER_RECORDS);
        shape
    }

    /// Seals padding-only records of the cover's ticket lengths into `out`:
    /// the relay sends them as soon as the handshake is done (before any
    /// session data, as sealing advances the record counter). The client's
    /// [`Opener`](crate::Opener) skips them.
    pub fn seal_tickets(&self, sealer: &mut Sealer, out: &mut Vec<u8>) -> Result<(), CloakError> {
        for len in &self.ticket_lengths {
            sealer.seal_padding(usize::from(*len), out)?;
        }
        Ok(())
    }
}

/// The NewSessionTicket records OpenSSL 3 sends by default (measured against
/// `openssl s_server`): two, 234 bytes each with a SHA-256 suite, 250 with
/// TLS_AES_256_GCM_SHA384.
fn openssl_tickets(cipher_suite: u16) -> Vec<u16> {
    let len = if cipher_suite == 0x1302 { 250 } else { 234 };
    vec![len, len]
}

/// A parsed ServerHello record.
pub(crate) struct ServerHello<'a> {
    pub session_id: &'a [u8],
    pub cipher_suite: u16,
    pub group: u16,
    pub key_exchange: &'a [u8],
    pub extension_order: Vec<u16>,
}

/// The length of the handshake record at the front of `buf`, if it is all
/// there.
pub(crate) fn complete_handshake_record(buf: &[u8]) -> Result<Option<usize>, CloakError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    if buf[0] == 0x15 {
        return Err(CloakError::Malformed("the server sent an alert"));
    }
    if buf[..3] != [0x16, 0x03, 0x03] {
        return Err(CloakError::Malformed("not a TLS 1.2+ handshake record"));
    }
    let len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    if len > MAX_RECORD_BODY {
        return Err(CloakError::Malformed("record longer than 16 KiB"));
    }
    Ok((buf.len() >= 5 + len).then_some(5 + len))
}

/// Parses one whole record holding a TLS 1.3 ServerHello (not a
/// HelloRetryRequest) with one key share.
pub(crate) fn parse_server_hello(record: &[u8]) -> Result<ServerHello<'_>, CloakError> {
    let mut r = Reader::new(record);
    r.take(5)?;
    if r.u8()? != 2 {
        return Err(CloakError::Malformed("not a ServerHello"));
    }
    let len = r.u24()?;
    let mut h = Reader::new(r.take(len)?);
    r.expect_end("the ServerHello record holds more than the ServerHello")?;
    if h.u16()? != 0x0303 {
        return Err(CloakError::Malformed(
            "ServerHello legacy_version is not 0x0303",
        ));
    }
    if h.take(32)? == HRR_RANDOM {
        return Err(CloakError::UnsupportedCover("it sent a HelloRetryRequest"));
    }
    let session_id = h.prefixed8()?.rest();
    let cipher_suite = h.u16()?;
    if h.u8()? != 0 {
        return Err(CloakError::Malformed("ServerHello compression is not null"));
    }
    let mut exts = h.prefixed16()?;
    h.expect_end("bytes after the ServerHello extensions")?;
    let mut extension_order = Vec::new();
    let mut version = None;
    let mut share = None;
    while !exts.is_empty() {
        let id = exts.u16()?;
        if extension_order.contains(&id) {
            return Err(CloakError::Malformed("duplicate ServerHello extension"));
        }
        extension_order.push(id);
        let mut body = exts.prefixed16()?;
        match id {
            EXT_SUPPORTED_VERSIONS => version = Some(body.u16()?),
            EXT_KEY_SHARE => {
                let group = body.u16()?;
                share = Some((group, body.prefixed16()?.rest()));
            }
            _ => {
                return Err(CloakError::UnsupportedCover(
                    "an unexpected ServerHello extension",
                ));
            }
        }
        body.expect_end("a ServerHello extension has trailing bytes")?;
    }
    if version != Some(0x0304) {
        return Err(CloakError::UnsupportedCover("it did not choose TLS 1.3"));
    }
    let (group, key_exchange) = share.ok_or(CloakError::Malformed("no key share"))?;
    let expected = match group {
        X25519 => 32,
        X25519MLKEM768 => MLKEM768_CT_LEN + 32,
        _ => {
            return Err(CloakError::UnsupportedCover(
                "it chose a group other than X25519(MLKEM768)",
            ));
        }
    };
    if key_exchange.len() != expected {
        return Err(CloakError::Malformed("key share of the wrong length"));
    }
    Ok(ServerHello {
        session_id,
        cipher_suite,
        group,
        key_exchange,
        extension_order,
    })
}

/// Lays out a ServerHello record in the cover's shape with a zero `random`.
pub(crate) fn build_server_hello(
    shape: &CoverShape,
    session_id: &[u8; 32],
    key_share: &[u8],
) -> Vec<u8> {
    let mut record = Vec::with_capacity(128 + key_share.len());
    record.extend_from_slice(&[0x16, 0x03, 0x03]);
    prefixed(&mut record, 2, |r| {
        r.push(2);
        prefixed(r, 3, |h| {
            put_u16(h, 0x0303);
            h.extend_from_slice(&[0; 32]);
            h.push(32);
            h.extend_from_slice(session_id);
            put_u16(h, shape.cipher_suite);
            h.push(0);
            prefixed(h, 2, |e| {
                for id in &shape.extension_order {
                    put_u16(e, *id);
                    match *id {
                        EXT_SUPPORTED_VERSIONS => prefixed(e, 2, |e| put_u16(e, 0x0304)),
                        _ => prefixed(e, 2, |e| {
                            put_u16(e, shape.group);
                            prefixed(e, 2, |e| e.extend_from_slice(key_share));
                        }),
                    }
                }
            });
        });
    });
    record
}

/// Parses a real server's first flight (its ServerHello record, an optional
/// ChangeCipherSpec, then application-data records) as captured by sending
/// it a [`probe_hello`]. Pass everything the cover sent before it went
/// quiet; a trailing partial record is ignored.
pub fn learn_cover_shape(flight: &[u8]) -> Result<CoverShape, CloakError> {
    let sh_len = complete_handshake_record(flight)
        .map_err(|e| match e {
            CloakError::Malformed("the server sent an alert") => {
                CloakError::UnsupportedCover("it answered our Chrome hello with an alert")
            }
            e => e,
        })?
        .ok_or(CloakError::Malformed(
            "the flight ends inside the ServerHello",
        ))?;
    let sh = parse_server_hello(&flight[..sh_len])?;
    let mut shape = CoverShape {
        cipher_suite: sh.cipher_suite,
        group: sh.group,
        extension_order: sh.extension_order,
        change_cipher_spec: false,
        record_lengths: Vec::new(),
        ticket_lengths: openssl_tickets(sh.cipher_suite),
    };
    if !matches!(shape.cipher_suite, 0x1301..=0x1303) {
        return Err(CloakError::UnsupportedCover(
            "it chose a cipher suite that is not TLS 1.3's",
        ));
    }
    if shape.extension_order.len() != 2 {
        return Err(CloakError::UnsupportedCover(
            "its ServerHello lacks an extension",
        ));
    }
    let mut rest = &flight[sh_len..];
    if rest.starts_with(&CCS) {
        shape.change_cipher_spec = true;
        rest = &rest[CCS.len()..];
    }
    while rest.len() >= 5
        && rest[..3] == [0x17, 0x03, 0x03]
        && shape.record_lengths.len() < MAX_COVER_RECORDS
    {
        let len = u16::from_be_bytes([rest[3], rest[4]]);
        if usize::from(len) > crate::record::MAX_CIPHERTEXT || rest.len() < 5 + usize::from(len) {
            break;
        }
        shape.record_lengths.push(len);
        rest = &rest[5 + usize::from(len)..];
    }
    if shape.record_lengths.is_empty() {
        return Err(CloakError::UnsupportedCover(
            "no encrypted records followed its ServerHello",
        ));
    }
    Ok(shape)
}

/// A hello to send to the cover to learn its shape: Chrome-shaped, for
/// `sni`, with a random (so invalid) authenticator.
pub fn probe_hello(sni: &str, rng: &mut (impl RngCore + CryptoRng)) -> Vec<u8> {
    let mut record = hello::build(sni, rng).record;
    rng.fill_bytes(&mut record[hello::SESSION_ID_OFFSET..hello::SESSION_ID_OFFSET + 32]);
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_round_trips_through_the_parser() {
        let shape = CoverShape::fallback();
        let mut flight = build_server_hello(&shape, &[4; 32], &[9; 32]);
        flight.extend_from_slice(&CCS);
        for len in &shape.record_lengths {
            flight.extend_from_slice(&[0x17, 3, 3]);
            flight.extend_from_slice(&len.to_be_bytes());
            flight.resize(flight.len() + usize::from(*len), 0xee);
        }
        flight.extend_from_slice(&[0x17, 3, 3, 0, 99, 1]);
        assert_eq!(learn_cover_shape(&flight).unwrap(), shape);
    }

    #[test]
    fn alerts_and_tls12_are_unsupported() {
        assert!(matches!(
            learn_cover_shape(&[0x15, 3, 3, 0, 2, 2, 40]),
            Err(CloakError::UnsupportedCover(_))
        ));
        let mut shape = CoverShape::fallback();
        shape.extension_order = vec![EXT_KEY_SHARE];
        let sh = build_server_hello(&shape, &[4; 32], &[9; 32]);
        assert!(learn_cover_shape(&sh).is_err());
    }
}
