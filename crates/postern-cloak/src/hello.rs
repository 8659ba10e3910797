//! The Chrome-shaped ClientHello: building it, parsing any ClientHello, and
//! its JA4 fingerprint.
//!
//! The shape follows Chromium 156 (BoringSSL) as captured on the wire (see
//! `tests/fixtures/README.md`): the cipher suites, the seventeen extensions
//! in a fresh random order per connection between a leading empty GREASE
//! extension and a trailing one-byte GREASE extension, GREASE cipher, group,
//! signature algorithm and version values drawn per connection, a hybrid
//! X25519MLKEM768 share whose ML-KEM half is a well-formed encapsulation key
//! and whose X25519 half is a real public key distinct from the separate
//! x25519 share (as BoringSSL makes them), and an ECH GREASE extension.
//!
//! This module only builds and parses; it never decides whether a hello is
//! authentic (that is [`crate::verify`]).

use rand::seq::SliceRandom;
use rand::{CryptoRng, Rng, RngCore};
use sha2::{Digest, Sha256};
use x25519_dalek::{EphemeralSecret, PublicKey};

use crate::CloakError;
use crate::wire::{Reader, prefixed, put_u16};

/// Largest TLS record body (2^14); a hello must fit one record.
pub(crate) const MAX_RECORD_BODY: usize = 16384;
/// Offset of the 32-byte `random` in a ClientHello or ServerHello record.
pub(crate) const RANDOM_OFFSET: usize = 5 + 4 + 2;
/// Offset of the 32-byte `legacy_session_id` in a ClientHello or
/// ServerHello record (after its one-byte length).
pub(crate) const SESSION_ID_OFFSET: usize = RANDOM_OFFSET + 32 + 1;

/// The hybrid post-quantum group Chrome offers first.
pub const X25519MLKEM768: u16 = 0x11ec;
/// Plain X25519.
pub const X25519: u16 = 0x001d;
/// Length of an X25519MLKEM768 client share: ML-KEM-768 encapsulation key
/// (1184) then X25519 (32).
pub(crate) const MLKEM768_EK_LEN: usize = 1184;
/// Length of an ML-KEM-768 ciphertext in a server's hybrid share.
pub(crate) const MLKEM768_CT_LEN: usize = 1088;
const MLKEM_Q: u16 = 3329;

/// Chrome's cipher suites after the leading GREASE value.
const CIPHER_SUITES: [u16; 15] = [
    0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014, 0x009c,
    0x009d, 0x002f, 0x0035,
];
/// Chrome's supported groups after the leading GREASE value.
const GROUPS: [u16; 4] = [X25519MLKEM768, X25519, 0x0017, 0x0018];
/// Chrome 156's signature algorithms after the leading GREASE value: the
/// ML-DSA schemes (0x0904–0x0906) come first, then the classic list.
const SIGNATURE_ALGORITHMS: [u16; 11] = [
    0x0904, 0x0905, 0x0906, 0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
];
/// The payload lengths BoringSSL draws an ECH GREASE payload from
/// (`32 * random(4..=7)` plus the 16-byte AEAD tag).
const ECH_PAYLOAD_LENS: [usize; 4] = [144, 176, 208, 240];
/// Chrome 156's trust anchor identifiers extension (0xca34, from
/// draft-ietf-tls-trust-anchor-ids): a list of the root stores' anchor IDs,
/// identical on every connection, copied from the capture.
const TRUST_ANCHORS: &[u8] = &[
    0x00, 0xb8, 0x05, 0x82, 0xdf, 0x13, 0x02, 0x01, 0x05, 0x82, 0xdf, 0x13, 0x02, 0x06, 0x05, 0x82,
    0xdf, 0x13, 0x02, 0x0d, 0x05, 0x82, 0xdf, 0x13, 0x02, 0x0e, 0x05, 0x82, 0xdf, 0x13, 0x02, 0x0f,
    0x05, 0x82, 0xdf, 0x13, 0x02, 0x12, 0x05, 0x82, 0xdf, 0x13, 0x02, 0x13, 0x05, 0x82, 0xdf, 0x13,
    0x02, 0x14, 0x08, 0x83, 0x9a, 0x64, 0x8c, 0x9b, 0x2d, 0x01, 0x07, 0x08, 0x83, 0x9a, 0x64, 0x8c,
    0x9b, 0x2d, 0x01, 0x08, 0x08, 0x83, 0x9a, 0x64, 0x8c, 0x9b, 0x2d, 0x01, 0x09, 0x08, 0x83, 0x9a,
    0x64, 0x8c, 0x9b, 0x2d, 0x01, 0x0a, 0x08, 0x83, 0x9a, 0x64, 0x8c, 0x9b, 0x2d, 0x01, 0x0b, 0x08,
    0x83, 0x9a, 0x64, 0x8c, 0x9b, 0x2d, 0x01, 0x0c, 0x08, 0x83, 0x9a, 0x64, 0x8c, 0x9b, 0x2d, 0x01,
    0x0d, 0x08, 0x83, 0x9a, 0x64, 0x8c, 0x9b, 0x2d, 0x01, 0x12, 0x08, 0x83, 0x9a, 0x64, 0x8c, 0x9b,
    0x2d, 0x01, 0x13, 0x04, 0xd6, 0x79, 0x09, 0x01, 0x04, 0xd6, 0x79, 0x09, 0x04, 0x04, 0xd6, 0x79,
    0x09, 0x05, 0x04, 0xd6, 0x79, 0x09, 0x06, 0x04, 0xd6, 0x79, 0x09, 0x07, 0x04, 0xd6, 0x79, 0x09,
    0x08, 0x04, 0xd6, 0x79, 0x09, 0x0a, 0x04, 0xd6, 0x79, 0x09, 0x0b, 0x04, 0xd6, 0x79, 0x09, 0x0c,
    0x04, 0xd6, 0x79, 0x09, 0x0d, 0x04, 0xd6, 0x79, 0x09, 0x0f,
];

/// Extension code points used here.
pub(crate) mod ext {
    pub const SERVER_NAME: u16 = 0x0000;
    pub const STATUS_REQUEST: u16 = 0x0005;
    pub const SUPPORTED_GROUPS: u16 = 0x000a;
    pub const EC_POINT_FORMATS: u16 = 0x000b;
    pub const SIGNATURE_ALGORITHMS: u16 = 0x000d;
    pub const ALPN: u16 = 0x0010;
    pub const SCT: u16 = 0x0012;
    pub const PADDING: u16 = 0x0015;
    pub const EXTENDED_MASTER_SECRET: u16 = 0x0017;
    pub const COMPRESS_CERTIFICATE: u16 = 0x001b;
    pub const SESSION_TICKET: u16 = 0x0023;
    pub const SUPPORTED_VERSIONS: u16 = 0x002b;
    pub const PSK_KEY_EXCHANGE_MODES: u16 = 0x002d;
    pub const KEY_SHARE: u16 = 0x0033;
    /// Chrome's current ALPS code point (the old one was 0x4469).
    pub const APPLICATION_SETTINGS: u16 = 0x44cd;
    pub const TRUST_ANCHORS: u16 = 0xca34;
    pub const ENCRYPTED_CLIENT_HELLO: u16 = 0xfe0d;
    pub const RENEGOTIATION_INFO: u16 = 0xff01;
}

/// Whether `v` is a GREASE value (RFC 8701: `0x?a?a` with equal bytes).
pub fn is_grease(v: u16) -> bool {
    v & 0x0f0f == 0x0a0a && v >> 8 == v & 0xff
}

/// One GREASE value drawn as BoringSSL does: a random high nibble.
fn grease(rng: &mut impl RngCore) -> u16 {
    let b = (rng.next_u32() as u8 & 0xf0) | 0x0a;
    u16::from_be_bytes([b, b])
}

/// A hello under construction: the record (session id still zero) and the
/// private half of the x25519 share the cloak handshake uses.
pub(crate) struct BuiltHello {
    pub record: Vec<u8>,
    pub x25519: EphemeralSecret,
}

/// Builds a Chrome-shaped ClientHello record for `sni` with a zero
/// `legacy_session_id` (the caller fills it in).
pub(crate) fn build(sni: &str, rng: &mut (impl RngCore + CryptoRng)) -> BuiltHello {
    let grease_cipher = grease(rng);
    let grease_group = grease(rng);
    let grease_ext1 = grease(rng);
    let mut grease_ext2 = grease(rng);
    // BoringSSL keeps the two GREASE extensions distinct (a repeated
    // extension would be a decode error).
    if grease_ext2 == grease_ext1 {
        grease_ext2 ^= 0x1010;
    }
    let grease_version = grease(rng);
    let grease_sigalg = grease(rng);

    let x25519 = EphemeralSecret::random_from_rng(&mut *rng);
    let x25519_public = PublicKey::from(&x25519);
    // BoringSSL's hybrid share has its own X25519 key.
    let hybrid_x25519 = PublicKey::from(&EphemeralSecret::random_from_rng(&mut *rng));

    let mut order = [
        ext::SERVER_NAME,
        ext::EXTENDED_MASTER_SECRET,
        ext::RENEGOTIATION_INFO,
        ext::SUPPORTED_GROUPS,
        ext::EC_POINT_FORMATS,
        ext::SESSION_TICKET,
        ext::ALPN,
        ext::STATUS_REQUEST,
        ext::SIGNATURE_ALGORITHMS,
        ext::SCT,
        ext::KEY_SHARE,
        ext::PSK_KEY_EXCHANGE_MODES,
        ext::SUPPORTED_VERSIONS,
        ext::COMPRESS_CERTIFICATE,
        ext::APPLICATION_SETTINGS,
        ext::TRUST_ANCHORS,
        ext::ENCRYPTED_CLIENT_HELLO,
    ];
    order.shuffle(rng);

    let mut extensions = Vec::with_capacity(2048);
    put_u16(&mut extensions, grease_ext1);
    put_u16(&mut extensions, 0);
    for id in order {
        put_u16(&mut extensions, id);
        prefixed(&mut extensions, 2, |e| match id {
            ext::SERVER_NAME => prefixed(e, 2, |e| {
                e.push(0);
                prefixed(e, 2, |e| e.extend_from_slice(sni.as_bytes()));
            }),
            ext::EXTENDED_MASTER_SECRET | ext::SESSION_TICKET | ext::SCT => {}
            ext::RENEGOTIATION_INFO => e.push(0),
            ext::SUPPORTED_GROUPS => prefixed(e, 2, |e| {
                put_u16(e, grease_group);
                GROUPS.iter().for_each(|g| put_u16(e, *g));
            }),
            ext::EC_POINT_FORMATS => e.extend_from_slice(&[1, 0]),
            ext::ALPN => prefixed(e, 2, |e| {
                e.push(2);
                e.extend_from_slice(b"h2");
                e.push(8);
                e.extend_from_slice(b"http/1.1");
            }),
            ext::STATUS_REQUEST => e.extend_from_slice(&[1, 0, 0, 0, 0]),
            ext::SIGNATURE_ALGORITHMS => prefixed(e, 2, |e| {
                put_u16(e, grease_sigalg);
                SIGNATURE_ALGORITHMS.iter().for_each(|s| put_u16(e, *s));
            }),
            ext::KEY_SHARE => prefixed(e, 2, |e| {
                put_u16(e, grease_group);
                prefixed(e, 2, |e| e.push(0));
                put_u16(e, X25519MLKEM768);
                prefixed(e, 2, |e| {
                    mlkem_encapsulation_key(rng, e);
                    e.extend_from_slice(hybrid_x25519.as_bytes());
                });
                put_u16(e, X25519);
                prefixed(e, 2, |e| e.extend_from_slice(x25519_public.as_bytes()));
            }),
            ext::PSK_KEY_EXCHANGE_MODES => e.extend_from_slice(&[1, 1]),
            ext::SUPPORTED_VERSIONS => prefixed(e, 1, |e| {
                put_u16(e, grease_version);
                put_u16(e, 0x0304);
                put_u16(e, 0x0303);
            }),
            ext::COMPRESS_CERTIFICATE => e.extend_from_slice(&[2, 0, 2]),
            ext::APPLICATION_SETTINGS => prefixed(e, 2, |e| {
                e.push(2);
                e.extend_from_slice(b"h2");
            }),
            ext::TRUST_ANCHORS => e.extend_from_slice(TRUST_ANCHORS),
            ext::ENCRYPTED_CLIENT_HELLO => ech_grease(rng, e),
            _ => unreachable!("every extension in `order` has a body"),
        });
    }

    let mut body = Vec::with_capacity(extensions.len() + 256);
    put_u16(&mut body, 0x0303);
    let mut random = [0; 32];
    rng.fill_bytes(&mut random);
    body.extend_from_slice(&random);
    body.push(32);
    body.extend_from_slice(&[0; 32]);
    prefixed(&mut body, 2, |b| {
        put_u16(b, grease_cipher);
        CIPHER_SUITES.iter().for_each(|c| put_u16(b, *c));
    });
    body.extend_from_slice(&[1, 0]);

    put_u16(&mut extensions, grease_ext2);
    prefixed(&mut extensions, 2, |e| e.push(0));
    // BoringSSL pads hellos whose unpadded length falls in (0xff, 0x200) to
    // dodge an F5 bug. With a post-quantum share the hello is always far
    // larger, so this never fires for our hellos.
    if let Some(len) = boringssl_padding_len(4 + body.len() + 2 + extensions.len()) {
        put_u16(&mut extensions, ext::PADDING);
        prefixed(&mut extensions, 2, |e| e.resize(e.len() + len, 0));
    }
    prefixed(&mut body, 2, |b| b.extend_from_slice(&extensions));

    let mut record = Vec::with_capacity(body.len() + 9);
    record.extend_from_slice(&[0x16, 0x03, 0x01]);
    prefixed(&mut record, 2, |r| {
        r.push(1);
        prefixed(r, 3, |r| r.extend_from_slice(&body));
    });
    BuiltHello { record, x25519 }
}

/// BoringSSL's padding rule: a hello whose length (handshake header
/// included) is in (0xff, 0x200) gets a padding extension bringing it to
/// 0x200.
fn boringssl_padding_len(unpadded: usize) -> Option<usize> {
    (unpadded > 0xff && unpadded < 0x200).then(|| {
        let len = 0x200 - unpadded;
        if len >= 5 { len - 4 } else { 1 }
    })
}

/// Appends 1184 bytes shaped like an ML-KEM-768 encapsulation key: three
/// polynomials of 256 coefficients, each uniform below q = 3329 and packed
/// as 12-bit little-endian pairs, then a random 32-byte `rho`. A prober
/// that decodes the coefficients finds them all in range, as in a real key.
fn mlkem_encapsulation_key(rng: &mut impl RngCore, out: &mut Vec<u8>) {
    for _ in 0..3 * 256 / 2 {
        let a = rng.gen_range(0..MLKEM_Q);
        let b = rng.gen_range(0..MLKEM_Q);
        out.push(a as u8);
        out.push((a >> 8) as u8 | ((b & 0x0f) << 4) as u8);
        out.push((b >> 4) as u8);
    }
    let mut rho = [0; 32];
    rng.fill_bytes(&mut rho);
    out.extend_from_slice(&rho);
}

/// The 12-bit coefficients of an ML-KEM-768 encapsulation key (for tests
/// and probes of our own shares).
pub fn mlkem_coefficients(ek: &[u8]) -> impl Iterator<Item = u16> + '_ {
    ek[..ek.len().min(MLKEM768_EK_LEN - 32)]
        .chunks_exact(3)
        .flat_map(|c| {
            let a = u16::from(c[0]) | (u16::from(c[1]) & 0x0f) << 8;
            let b = u16::from(c[1]) >> 4 | u16::from(c[2]) << 4;
            [a, b]
        })
}

/// An ECH GREASE extension body as BoringSSL makes it: outer type, HKDF-SHA256
/// and AES-128-GCM, a random config id, an `enc` that is a fresh X25519
/// public key (random bytes would have their top bit set half the time,
/// which a real key never has), and a random payload of one of Chrome's
/// lengths.
fn ech_grease(rng: &mut (impl RngCore + CryptoRng), e: &mut Vec<u8>) {
    e.push(0);
    put_u16(e, 0x0001);
    put_u16(e, 0x0001);
    e.push(rng.next_u32() as u8);
    let enc = PublicKey::from(&EphemeralSecret::random_from_rng(&mut *rng));
    prefixed(e, 2, |e| e.extend_from_slice(enc.as_bytes()));
    let len = ECH_PAYLOAD_LENS[rng.gen_range(0..ECH_PAYLOAD_LENS.len())];
    prefixed(e, 2, |e| {
        let at = e.len();
        e.resize(at + len, 0);
        rng.fill_bytes(&mut e[at..]);
    });
}

/// One entry of a `key_share` extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyShare {
    /// The named group.
    pub group: u16,
    /// The public key bytes.
    pub key_exchange: Vec<u8>,
}

/// What a ClientHello says, as parsed by [`parse_client_hello`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientHelloInfo {
    /// `legacy_version` (0x0303 for TLS 1.3 hellos).
    pub legacy_version: u16,
    /// The 32-byte client random.
    pub random: [u8; 32],
    /// `legacy_session_id` (0 to 32 bytes).
    pub session_id: Vec<u8>,
    /// Cipher suites in order, GREASE included.
    pub cipher_suites: Vec<u16>,
    /// Compression methods.
    pub compression_methods: Vec<u8>,
    /// Extension types in the order sent, GREASE included.
    pub extensions: Vec<u16>,
    /// The host name from `server_name`, if any.
    pub sni: Option<String>,
    /// ALPN protocol names in order.
    pub alpn: Vec<Vec<u8>>,
    /// `supported_groups` in order, GREASE included.
    pub supported_groups: Vec<u16>,
    /// `signature_algorithms` in order, GREASE included.
    pub signature_algorithms: Vec<u16>,
    /// `key_share` entries in order, GREASE included.
    pub key_shares: Vec<KeyShare>,
    /// `supported_versions` in order, GREASE included.
    pub supported_versions: Vec<u16>,
    /// The length of the ECH payload, if an `encrypted_client_hello`
    /// extension of the outer type is present.
    pub ech_payload_len: Option<usize>,
    /// The ECH `enc` (the HPKE encapsulated key) of an outer-type
    /// `encrypted_client_hello` extension.
    pub ech_enc: Option<Vec<u8>>,
}

impl ClientHelloInfo {
    /// The key share for `group`, if offered.
    pub fn key_share(&self, group: u16) -> Option<&[u8]> {
        self.key_shares
            .iter()
            .find(|k| k.group == group)
            .map(|k| k.key_exchange.as_slice())
    }
}

/// Parses one complete TLS record holding a ClientHello (`record` must be
/// exactly the record: header and body, nothing after).
///
/// Bounded: the record may not exceed 16 KiB + 5 bytes, every length is
/// checked against what is left, duplicate extensions are refused, and it
/// never panics.
pub fn parse_client_hello(record: &[u8]) -> Result<ClientHelloInfo, CloakError> {
    let mut r = Reader::new(record);
    if r.u8()? != 0x16 {
        return Err(CloakError::Malformed("not a handshake record"));
    }
    if r.u8()? != 0x03 {
        return Err(CloakError::Malformed("not a TLS record version"));
    }
    r.u8()?;
    let len = usize::from(r.u16()?);
    if len > MAX_RECORD_BODY {
        return Err(CloakError::Malformed("record longer than 16 KiB"));
    }
    let mut r = Reader::new(r.take(len)?);
    if record.len() != 5 + len {
        return Err(CloakError::Malformed("bytes after the hello record"));
    }
    if r.u8()? != 1 {
        return Err(CloakError::Malformed("not a ClientHello"));
    }
    let hs_len = r.u24()?;
    let mut h = Reader::new(r.take(hs_len)?);
    r.expect_end("record holds more than the ClientHello")?;

    let mut info = ClientHelloInfo {
        legacy_version: h.u16()?,
        ..ClientHelloInfo::default()
    };
    info.random.copy_from_slice(h.take(32)?);
    let sid = h.prefixed8()?.rest();
    if sid.len() > 32 {
        return Err(CloakError::Malformed("session id longer than 32 bytes"));
    }
    info.session_id = sid.to_vec();
    let mut suites = h.prefixed16()?;
    while !suites.is_empty() {
        info.cipher_suites.push(suites.u16()?);
    }
    info.compression_methods = h.prefixed8()?.rest().to_vec();
    if h.is_empty() {
        return Ok(info);
    }
    let mut exts = h.prefixed16()?;
    h.expect_end("bytes after the extensions")?;
    while !exts.is_empty() {
        let id = exts.u16()?;
        if info.extensions.contains(&id) {
            return Err(CloakError::Malformed("duplicate extension"));
        }
        info.extensions.push(id);
        let mut body = exts.prefixed16()?;
        match id {
            ext::SERVER_NAME => {
                let mut list = body.prefixed16()?;
                while !list.is_empty() {
                    let kind = list.u8()?;
                    let name = list.prefixed16()?.rest();
                    if kind == 0 && info.sni.is_none() {
                        let name = std::str::from_utf8(name)
                            .map_err(|_| CloakError::Malformed("server name is not UTF-8"))?;
                        info.sni = Some(name.to_owned());
                    }
                }
            }
            ext::ALPN => {
                let mut list = body.prefixed16()?;
                while !list.is_empty() {
                    info.alpn.push(list.prefixed8()?.rest().to_vec());
                }
            }
            ext::SUPPORTED_GROUPS => {
                let mut list = body.prefixed16()?;
                while !list.is_empty() {
                    info.supported_groups.push(list.u16()?);
                }
            }
            ext::SIGNATURE_ALGORITHMS => {
                let mut list = body.prefixed16()?;
                while !list.is_empty() {
                    info.signature_algorithms.push(list.u16()?);
                }
            }
            ext::KEY_SHARE => {
                let mut list = body.prefixed16()?;
                while !list.is_empty() {
                    let group = list.u16()?;
                    let key_exchange = list.prefixed16()?.rest().to_vec();
                    info.key_shares.push(KeyShare {
                        group,
                        key_exchange,
                    });
                }
            }
            ext::SUPPORTED_VERSIONS => {
                let mut list = body.prefixed8()?;
                while !list.is_empty() {
                    info.supported_versions.push(list.u16()?);
                }
            }
            ext::ENCRYPTED_CLIENT_HELLO => {
                if body.u8()? == 0 {
                    body.take(2 + 2 + 1)?;
                    info.ech_enc = Some(body.prefixed16()?.rest().to_vec());
                    info.ech_payload_len = Some(body.prefixed16()?.rest().len());
                }
                body.rest();
            }
            _ => {
                body.rest();
            }
        }
        body.expect_end("an extension has bytes after its contents")?;
    }
    Ok(info)
}

/// The JA4 fingerprint (FoxIO's spec, TLS over TCP) of a ClientHello record,
/// e.g. `t13d1517h2_8daaf6152771_…` for Chrome 156.
pub fn ja4(record: &[u8]) -> Result<String, CloakError> {
    let info = parse_client_hello(record)?;
    Ok(ja4_of(&info))
}

pub(crate) fn ja4_of(info: &ClientHelloInfo) -> String {
    let version = info
        .supported_versions
        .iter()
        .copied()
        .filter(|v| !is_grease(*v))
        .max()
        .unwrap_or(info.legacy_version);
    let version = match version {
        0x0304 => "13",
        0x0303 => "12",
        0x0302 => "11",
        0x0301 => "10",
        0x0300 => "s3",
        0x0200 => "s2",
        _ => "00",
    };
    let sni = if info.extensions.contains(&ext::SERVER_NAME) {
        'd'
    } else {
        'i'
    };
    let mut ciphers: Vec<u16> = info
        .cipher_suites
        .iter()
        .copied()
        .filter(|c| !is_grease(*c))
        .collect();
    let extensions: Vec<u16> = info
        .extensions
        .iter()
        .copied()
        .filter(|e| !is_grease(*e))
        .collect();
    let alpn = match info.alpn.first() {
        Some(first) if !first.is_empty() => {
            let (a, b) = (first[0], first[first.len() - 1]);
            if a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric() {
                format!("{}{}", a as char, b as char)
            } else {
                let (ha, hb) = (format!("{a:02x}"), format!("{b:02x}"));
                format!("{}{}", &ha[..1], &hb[1..])
            }
        }
        _ => "00".to_owned(),
    };
    let part_a = format!(
        "t{version}{sni}{:02}{:02}{alpn}",
        ciphers.len().min(99),
        extensions.len().min(99)
    );

    ciphers.sort_unstable();
    let part_b = truncated_hash(&hex_list(&ciphers), ciphers.is_empty());
    let mut hashed: Vec<u16> = extensions
        .iter()
        .copied()
        .filter(|e| *e != ext::SERVER_NAME && *e != ext::ALPN)
        .collect();
    hashed.sort_unstable();
    let sigalgs: Vec<u16> = info
        .signature_algorithms
        .iter()
        .copied()
        .filter(|s| !is_grease(*s))
        .collect();
    let mut c = hex_list(&hashed);
    if !sigalgs.is_empty() {
        c.push('_');
        c.push_str(&hex_list(&sigalgs));
    }
    let part_c = truncated_hash(&c, hashed.is_empty());
    format!("{part_a}_{part_b}_{part_c}")
}

fn hex_list(values: &[u16]) -> String {
    values
        .iter()
        .map(|v| format!("{v:04x}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn truncated_hash(text: &str, empty: bool) -> String {
    if empty {
        return "000000000000".to_owned();
    }
    let digest = Sha256::digest(text.as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    #[test]
    fn padding_rule_matches_boringssl() {
        assert_eq!(boringssl_padding_len(0xff), None);
        assert_eq!(boringssl_padding_len(0x100), Some(0x100 - 4));
        assert_eq!(boringssl_padding_len(0x1fc), Some(1));
        assert_eq!(boringssl_padding_len(0x1fb), Some(1));
        assert_eq!(boringssl_padding_len(0x1fa), Some(2));
        assert_eq!(boringssl_padding_len(0x200), None);
    }

    #[test]
    fn built_hello_parses_with_chrome_shape() {
        let hello = build("www.example.com", &mut OsRng);
        let info = parse_client_hello(&hello.record).unwrap();
        assert_eq!(info.sni.as_deref(), Some("www.example.com"));
        assert_eq!(info.session_id, vec![0; 32]);
        assert!(is_grease(info.extensions[0]));
        assert!(is_grease(*info.extensions.last().unwrap()));
        assert!(!info.extensions.contains(&ext::PADDING));
        assert_eq!(info.key_share(X25519MLKEM768).unwrap().len(), 1216);
        assert_eq!(
            info.key_share(X25519).unwrap(),
            PublicKey::from(&hello.x25519).as_bytes()
        );
    }

    #[test]
    fn grease_recognised() {
        assert!(is_grease(0x0a0a));
        assert!(is_grease(0xfafa));
        assert!(!is_grease(0x0a1a));
        assert!(!is_grease(0x1301));
    }
}
