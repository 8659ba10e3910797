//! The cloak handshake, both sides, as sans-IO state machines.
//!
//! ```text
//! client                                              relay
//! ClientHello (Chrome-shaped; session id = authenticator) ─►  peek, verify
//!       ◄─ ServerHello (cover's shape; random = HMAC proof), [CCS],
//!          app-data records of the cover's lengths: one carries the
//!          sealed server confirmation, the rest padding
//! CCS, one app-data record of Chrome's Finished size (client confirmation) ─►
//! ```
//!
//! The ServerHello `random` is `HMAC(server_key, SHA-256(ClientHello) ‖
//! ServerHello with random zeroed)`: only a holder of the secret can make
//! it, so a client that reached the real cover (or a censor's box) stops
//! there with [`CloakError::NotRelay`]. The session keys come from
//! HKDF-SHA256 with a salt derived from the secret, over the X25519 shared
//! secret of the client's real x25519 share and the relay's ephemeral key,
//! with the transcript hash (ClientHello, ServerHello) in every label.
//! Both confirmations are values derived alongside the keys and travel
//! sealed, so each side knows the other derived the same keys.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use x25519_dalek::{EphemeralSecret, PublicKey};
use zeroize::Zeroizing;

use crate::auth::{Verified, authenticator};
use crate::hello::{self, MLKEM768_CT_LEN, RANDOM_OFFSET, SESSION_ID_OFFSET, X25519MLKEM768};
use crate::record::{Opener, Sealer, Session, TAG_LEN};
use crate::shape::{self, CCS, CoverShape};
use crate::{CloakError, Secret, Step};

/// HKDF label of the key that proves the ServerHello came from the relay.
const SERVER_LABEL: &[u8] = b"postern cloak v1 server";
/// HKDF label of the salt for the session keys.
const KEYS_LABEL: &[u8] = b"postern cloak v1 keys";
/// Body length of the client's confirmation record: that of Chrome's
/// Finished record for the suite (a 4-byte header and the verify data of the
/// suite's hash, the content type, the tag): 53 bytes, or 69 with SHA-384.
fn finished_record_len(cipher_suite: u16) -> usize {
    let verify_data = if cipher_suite == 0x1302 { 48 } else { 32 };
    4 + verify_data + 1 + TAG_LEN
}
/// A server confirmation payload: the confirmation value and the number of
/// padding records after it.
const SERVER_CONFIRM_PAYLOAD: usize = 32 + 2;
/// Smallest record that can carry the server confirmation.
const MIN_CONFIRM_RECORD: usize = 2 + SERVER_CONFIRM_PAYLOAD + TAG_LEN;
/// At most this many records are accepted in the relay's flight.
const MAX_FLIGHT_RECORDS: usize = 32;

/// What a client needs to reach one relay.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The relay's secret.
    pub secret: Secret,
    /// The server name to put in the hello: the cover site's name.
    pub sni: String,
}

/// The keys and confirmations both sides derive after the ServerHello.
struct Keys {
    c2s_key: Zeroizing<[u8; 32]>,
    c2s_iv: [u8; 12],
    s2c_key: Zeroizing<[u8; 32]>,
    s2c_iv: [u8; 12],
    client_confirm: Zeroizing<[u8; 32]>,
    server_confirm: Zeroizing<[u8; 32]>,
}

fn derive_keys(secret: &Secret, shared: &[u8; 32], transcript: &[u8; 32]) -> Keys {
    let salt = secret.derive(KEYS_LABEL);
    let hk = Hkdf::<Sha256>::new(Some(salt.as_ref()), shared);
    let expand = |label: &[u8], out: &mut [u8]| {
        let mut info = Vec::with_capacity(label.len() + 32);
        info.extend_from_slice(label);
        info.extend_from_slice(transcript);
        hk.expand(&info, out).expect("short HKDF outputs are valid");
    };
    let mut keys = Keys {
        c2s_key: Zeroizing::new([0; 32]),
        c2s_iv: [0; 12],
        s2c_key: Zeroizing::new([0; 32]),
        s2c_iv: [0; 12],
        client_confirm: Zeroizing::new([0; 32]),
        server_confirm: Zeroizing::new([0; 32]),
    };
    expand(b"postern cloak v1 c2s key", keys.c2s_key.as_mut());
    expand(b"postern cloak v1 c2s iv", &mut keys.c2s_iv);
    expand(b"postern cloak v1 s2c key", keys.s2c_key.as_mut());
    expand(b"postern cloak v1 s2c iv", &mut keys.s2c_iv);
    expand(
        b"postern cloak v1 client confirm",
        keys.client_confirm.as_mut(),
    );
    expand(
        b"postern cloak v1 server confirm",
        keys.server_confirm.as_mut(),
    );
    keys
}

/// `random` of the relay's ServerHello: proof that it holds the secret.
fn server_random(secret: &Secret, hello_hash: &[u8; 32], server_hello: &[u8]) -> [u8; 32] {
    let key = secret.derive(SERVER_LABEL);
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_ref()).expect("HMAC takes any key length");
    mac.update(hello_hash);
    mac.update(&server_hello[..RANDOM_OFFSET]);
    mac.update(&[0; 32]);
    mac.update(&server_hello[RANDOM_OFFSET + 32..]);
    mac.finalize().into_bytes().into()
}

fn transcript(hello_hash: &[u8; 32], server_hello: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(hello_hash);
    h.update(server_hello);
    h.finalize().into()
}

fn seed(rng: &mut impl RngCore) -> [u8; 32] {
    let mut s = [0; 32];
    rng.fill_bytes(&mut s);
    s
}

/// Starts the client side: returns the state to feed the relay's answer to
/// and the ClientHello record to send.
pub fn client_start(
    cfg: &ClientConfig,
    now_unix: u64,
    rng: &mut (impl RngCore + CryptoRng),
) -> (ClientPending, Vec<u8>) {
    let hello::BuiltHello { mut record, x25519 } = hello::build(&cfg.sni, rng);
    let session_id = authenticator(&cfg.secret, &record, now_unix);
    record[SESSION_ID_OFFSET..SESSION_ID_OFFSET + 32].copy_from_slice(&session_id);
    let pending = ClientPending {
        secret: cfg.secret.clone(),
        session_id,
        hello_hash: Sha256::digest(&record).into(),
        padding_seed: seed(rng),
        state: ClientState::AwaitServerHello(Some(x25519)),
    };
    (pending, record)
}

/// The client between sending its hello and receiving the relay's flight.
pub struct ClientPending {
    secret: Secret,
    session_id: [u8; 32],
    hello_hash: [u8; 32],
    padding_seed: [u8; 32],
    state: ClientState,
}

enum ClientState {
    AwaitServerHello(Option<EphemeralSecret>),
    AwaitRecords(Box<Flight>),
    Finished,
}

/// Progress through the relay's flight once its ServerHello has verified.
struct Flight {
    keys: Keys,
    opener: Opener,
    cipher_suite: u16,
    /// Bytes of the caller's buffer already processed.
    pos: usize,
    /// Where the ServerHello ends (a ChangeCipherSpec may follow there).
    server_hello_end: usize,
    records: usize,
    /// Padding records still expected after the confirmation.
    remaining: Option<u16>,
}

impl ClientPending {
    /// Feeds the relay's bytes. `buf` is everything the relay has sent so
    /// far, from its first byte (keep appending to the same buffer on
    /// `NeedMore`). `Done` carries the session and the bytes to send back
    /// (CCS and the client's confirmation); `consumed` bytes of `buf` were
    /// the flight and the rest belongs to the session.
    ///
    /// Anything that is not the flight of a relay holding the secret — the
    /// real cover's answer, an alert, a censor's reset page — is
    /// [`CloakError::NotRelay`]; nothing is ever sent to such a peer.
    pub fn on_server_bytes(&mut self, buf: &[u8]) -> Result<Step<(Session, Vec<u8>)>, CloakError> {
        if let ClientState::AwaitServerHello(x25519) = &mut self.state {
            let Some(sh_len) =
                shape::complete_handshake_record(buf).map_err(|_| CloakError::NotRelay)?
            else {
                return Ok(Step::NeedMore);
            };
            let record = &buf[..sh_len];
            let sh = shape::parse_server_hello(record).map_err(|_| CloakError::NotRelay)?;
            let expected = server_random(&self.secret, &self.hello_hash, record);
            let proof = &record[RANDOM_OFFSET..RANDOM_OFFSET + 32];
            if sh.session_id != self.session_id || !bool::from(proof.ct_eq(&expected)) {
                return Err(CloakError::NotRelay);
            }
            let share: [u8; 32] = sh.key_exchange[sh.key_exchange.len() - 32..]
                .try_into()
                .expect("parse_server_hello checked the share length");
            let x25519 = x25519.take().ok_or(CloakError::NotRelay)?;
            let shared = x25519.diffie_hellman(&PublicKey::from(share));
            if !shared.was_contributory() {
                return Err(CloakError::NotRelay);
            }
            let keys = derive_keys(
                &self.secret,
                shared.as_bytes(),
                &transcript(&self.hello_hash, record),
            );
            self.state = ClientState::AwaitRecords(Box::new(Flight {
                opener: Opener::new(&keys.s2c_key, keys.s2c_iv),
                keys,
                cipher_suite: sh.cipher_suite,
                pos: sh_len,
                server_hello_end: sh_len,
                records: 0,
                remaining: None,
            }));
        }
        let ClientState::AwaitRecords(flight) = &mut self.state else {
            return Err(CloakError::Malformed("the handshake is already over"));
        };
        // The cover's optional ChangeCipherSpec right after the ServerHello.
        if flight.pos == flight.server_hello_end && buf.get(flight.pos) == Some(&0x14) {
            if buf.len() < flight.pos + CCS.len() {
                return Ok(Step::NeedMore);
            }
            if buf[flight.pos..flight.pos + CCS.len()] != CCS {
                return Err(CloakError::Malformed("a broken ChangeCipherSpec"));
            }
            flight.pos += CCS.len();
        }
        loop {
            if flight.remaining == Some(0) {
                break;
            }
            let rest = buf.get(flight.pos..).unwrap_or_default();
            let Some(len) = Opener::complete_record(rest)? else {
                return Ok(Step::NeedMore);
            };
            flight.records += 1;
            if flight.records > MAX_FLIGHT_RECORDS {
                return Err(CloakError::Malformed(
                    "too many records in the relay's flight",
                ));
            }
            let mut record = rest[..len].to_vec();
            let payload = flight.opener.open_in_place(&mut record)?;
            flight.pos += len;
            match flight.remaining.as_mut() {
                Some(n) => *n -= 1,
                None if payload.is_empty() => {}
                None => {
                    let payload = &record[payload];
                    if payload.len() != SERVER_CONFIRM_PAYLOAD
                        || !bool::from(payload[..32].ct_eq(flight.keys.server_confirm.as_ref()))
                    {
                        return Err(CloakError::BadConfirmation);
                    }
                    flight.remaining = Some(u16::from_be_bytes([payload[32], payload[33]]));
                }
            }
        }
        let ClientState::AwaitRecords(flight) =
            std::mem::replace(&mut self.state, ClientState::Finished)
        else {
            unreachable!("checked above");
        };
        let mut sealer = Sealer::new(&flight.keys.c2s_key, flight.keys.c2s_iv, self.padding_seed);
        let mut reply = CCS.to_vec();
        sealer.seal_record(
            flight.keys.client_confirm.as_ref(),
            finished_record_len(flight.cipher_suite) - TAG_LEN,
            &mut reply,
        )?;
        Ok(Step::Done {
            value: (
                Session {
                    sealer,
                    opener: flight.opener,
                },
                reply,
            ),
            consumed: flight.pos,
        })
    }
}

/// The relay between sending its flight and receiving the client's
/// confirmation.
pub struct RelayPending {
    keys: Keys,
    cipher_suite: u16,
    sealer: Option<Sealer>,
}

/// Answers a verified hello: returns the flight to send (ServerHello, CCS
/// and application-data records, all in the cover's shape) and the state to
/// feed the client's reply to. A hand-built `shape` with a choice the
/// client cannot follow (another group, a TLS 1.2 suite, a missing
/// extension, more than 16 records) gets the fallback's choice there.
pub fn respond(
    secret: &Secret,
    v: &Verified,
    shape: &CoverShape,
    rng: &mut (impl RngCore + CryptoRng),
) -> (Vec<u8>, RelayPending) {
    let shape = &shape.normalized();
    let ephemeral = EphemeralSecret::random_from_rng(&mut *rng);
    let public = PublicKey::from(&ephemeral);
    let mut share = Vec::with_capacity(MLKEM768_CT_LEN + 32);
    if shape.group == X25519MLKEM768 {
        // An ML-KEM-768 ciphertext is compressed polynomials in which every
        // bit pattern is valid, so random bytes are indistinguishable.
        share.resize(MLKEM768_CT_LEN, 0);
        rng.fill_bytes(&mut share);
    }
    share.extend_from_slice(public.as_bytes());
    let mut flight = shape::build_server_hello(shape, &v.session_id, &share);
    let random = server_random(secret, &v.transcript, &flight);
    flight[RANDOM_OFFSET..RANDOM_OFFSET + 32].copy_from_slice(&random);
    let shared = ephemeral.diffie_hellman(&PublicKey::from(v.client_x25519));
    let keys = derive_keys(
        secret,
        shared.as_bytes(),
        &transcript(&v.transcript, &flight),
    );
    if shape.change_cipher_spec {
        flight.extend_from_slice(&CCS);
    }

    // Every record at least big enough for padding; the confirmation rides
    // in the first record big enough for it (the last one grows if none is).
    let mut lengths: Vec<usize> = shape
        .record_lengths
        .iter()
        .map(|l| usize::from(*l).clamp(2 + TAG_LEN, crate::record::MAX_CIPHERTEXT))
        .collect();
    if lengths.is_empty() {
        lengths.push(MIN_CONFIRM_RECORD);
    }
    let confirm_at = match lengths.iter().position(|l| *l >= MIN_CONFIRM_RECORD) {
        Some(i) => i,
        None => {
            let last = lengths.len() - 1;
            lengths[last] = MIN_CONFIRM_RECORD;
            last
        }
    };
    let mut sealer = Sealer::new(&keys.s2c_key, keys.s2c_iv, seed(rng));
    let after = (lengths.len() - 1 - confirm_at) as u16;
    for (i, len) in lengths.iter().enumerate() {
        let mut payload = Vec::new();
        if i == confirm_at {
            payload.extend_from_slice(keys.server_confirm.as_ref());
            payload.extend_from_slice(&after.to_be_bytes());
        }
        sealer
            .seal_record(&payload, len - TAG_LEN, &mut flight)
            .expect("a fresh sealer seals records within the TLS bounds");
    }
    (
        flight,
        RelayPending {
            keys,
            cipher_suite: shape.cipher_suite,
            sealer: Some(sealer),
        },
    )
}

impl RelayPending {
    /// Feeds the client's bytes after its hello. `buf` is everything the
    /// client has sent since the hello (keep appending on `NeedMore`).
    /// `Done` carries the session; `consumed` bytes were the handshake.
    pub fn on_client_bytes(&mut self, buf: &[u8]) -> Result<Step<Session>, CloakError> {
        let n = buf.len().min(CCS.len());
        if buf[..n] != CCS[..n] {
            return Err(CloakError::BadConfirmation);
        }
        let Some(len) = Opener::complete_record(buf.get(CCS.len()..).unwrap_or_default())? else {
            return Ok(Step::NeedMore);
        };
        if len != 5 + finished_record_len(self.cipher_suite) {
            return Err(CloakError::BadConfirmation);
        }
        let mut opener = Opener::new(&self.keys.c2s_key, self.keys.c2s_iv);
        let mut record = buf[CCS.len()..CCS.len() + len].to_vec();
        let payload = opener
            .open_in_place(&mut record)
            .map_err(|_| CloakError::BadConfirmation)?;
        if !bool::from(record[payload].ct_eq(self.keys.client_confirm.as_ref())) {
            return Err(CloakError::BadConfirmation);
        }
        let sealer = self
            .sealer
            .take()
            .ok_or(CloakError::Malformed("the handshake is already over"))?;
        Ok(Step::Done {
            value: Session { sealer, opener },
            consumed: CCS.len() + len,
        })
    }
}
