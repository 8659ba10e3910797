//! The PII vault: each account's key pair, the records sealed to it, and
//! the Shamir shares its private half is split into.
//!
//! At registration the server calls [`escrow`]: it draws a fresh vault
//! secret for the account, derives an HPKE key pair from it (RFC 9180,
//! `DHKEM(X25519, HKDF-SHA256)`, `HKDF-SHA256`, `ChaCha20Poly1305`, base
//! mode), splits the secret k-of-n (Shamir over GF(256), the `blahaj`
//! crate), wraps each share to one custodian's public key
//! ([`crate::custodian`]) and drops the secret (zeroized). From then on the
//! server can only *seal*: the phone number ([`seal_phone`]) and each
//! connection's IP address and time ([`seal_ip`]) are encrypted to the
//! account's public key. Opening them needs k custodians' shares.
//!
//! Every sealed record's HPKE `info` names the account and the kind of
//! record, so a ciphertext moved to another account's row, or a phone
//! ciphertext passed off as an IP record, does not open.
//!
//! Lookups by phone number use a keyed hash ([`PhoneIndexKey`]), so a copy
//! of the database without the server's key cannot be searched for a
//! number by hashing candidates.
//!
//! This module never logs, and never keeps a vault secret longer than the
//! call that needs it.

use std::net::IpAddr;

use hmac::{Hmac, Mac};
use hpke_rs::hpke_types::{AeadAlgorithm, KdfAlgorithm, KemAlgorithm};
use hpke_rs::rustcrypto::HpkeRustCrypto;
use hpke_rs::{Hpke, HpkeKeyPair, HpkePublicKey, Mode};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::custodian::{CustodianRecord, WrappedShare};

/// An account's 16-byte identifier, as the server assigns it.
pub type AccountId = [u8; 16];

/// Bytes in a vault secret, a share's value, and an X25519 public key.
pub const KEY_LEN: usize = 32;

/// The most custodians an account's key can be split among.
pub const MAX_CUSTODIANS: usize = 16;

/// The longest phone number sealed, in bytes (E.164 is at most 16).
pub const MAX_PHONE_LEN: usize = 32;

/// The longest sealed record accepted for decoding, in bytes.
pub const MAX_SEALED_LEN: usize = 256;

const SEALED_VERSION: u8 = 1;
const INFO_VAULT: &[u8] = b"postern-legal vault v1\0";
const PHONE_INDEX_DOMAIN: &[u8] = b"postern-legal phone index v1\0";

/// What went wrong in the vault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    /// The threshold or number of custodians is out of range.
    #[error("a key needs 1 <= k <= n <= {MAX_CUSTODIANS} custodians (got k = {k}, n = {n})")]
    BadThreshold {
        /// The threshold asked for.
        k: usize,
        /// The number of custodians.
        n: usize,
    },
    /// Fewer distinct shares than the threshold.
    #[error("{have} distinct custodian shares, but {need} are needed")]
    TooFewShares {
        /// Distinct shares given.
        have: usize,
        /// The threshold.
        need: usize,
    },
    /// Two shares claim the same point but differ.
    #[error("two shares for the same point disagree")]
    ConflictingShares,
    /// The shares combined into a key that is not the account's.
    #[error(
        "the shares do not reconstruct this account's key (a share is wrong or belongs to another account)"
    )]
    WrongKey,
    /// A sealed record did not decrypt under this key.
    #[error("the record does not open with this key (wrong account, wrong kind, or tampered)")]
    OpenFailed,
    /// Bytes that are not a well-formed record or share.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A value out of the range this module accepts.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// The HPKE library failed for a reason other than a bad ciphertext.
    #[error("HPKE failure: {0}")]
    Hpke(String),
}

pub(crate) fn hpke() -> Hpke<HpkeRustCrypto> {
    Hpke::new(
        Mode::Base,
        KemAlgorithm::DhKem25519,
        KdfAlgorithm::HkdfSha256,
        AeadAlgorithm::ChaCha20Poly1305,
    )
}

fn hpke_err(e: hpke_rs::HpkeError) -> VaultError {
    match e {
        hpke_rs::HpkeError::OpenError => VaultError::OpenFailed,
        other => VaultError::Hpke(format!("{other:?}")),
    }
}

/// A 32-byte seed from which an X25519 HPKE key pair is derived
/// (RFC 9180 `DeriveKeyPair`). Zeroized on drop; never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct Seed(pub(crate) [u8; KEY_LEN]);

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seed(***)")
    }
}

impl Seed {
    pub(crate) fn generate() -> Seed {
        Seed(rand::random())
    }

    pub(crate) fn key_pair(&self) -> Result<HpkeKeyPair, VaultError> {
        hpke().derive_key_pair(&self.0).map_err(hpke_err)
    }

    pub(crate) fn public_key(&self) -> Result<[u8; KEY_LEN], VaultError> {
        let kp = self.key_pair()?;
        kp.public_key()
            .as_slice()
            .try_into()
            .map_err(|_| VaultError::Hpke("X25519 public key is not 32 bytes".into()))
    }

    pub(crate) fn open(
        &self,
        enc: &[u8],
        info: &[u8],
        ct: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        let kp = self.key_pair()?;
        hpke()
            .open(enc, kp.private_key(), info, b"", ct, None, None, None)
            .map(Zeroizing::new)
            .map_err(hpke_err)
    }
}

/// HPKE-seals `pt` to the X25519 public key `pk`: (encapsulated key,
/// ciphertext).
pub(crate) fn seal_to(
    pk: &[u8; KEY_LEN],
    info: &[u8],
    pt: &[u8],
) -> Result<([u8; KEY_LEN], Vec<u8>), VaultError> {
    let (enc, ct) = hpke()
        .seal(
            &HpkePublicKey::new(pk.to_vec()),
            info,
            b"",
            pt,
            None,
            None,
            None,
        )
        .map_err(hpke_err)?;
    let enc = enc
        .try_into()
        .map_err(|_| VaultError::Hpke("encapsulated key is not 32 bytes".into()))?;
    Ok((enc, ct))
}

/// An account's vault public key: what the server seals records to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VaultPublicKey(pub [u8; KEY_LEN]);

/// An account's vault secret, which exists only at registration (to be
/// split) and during a disclosure (reconstructed from shares). Zeroized on
/// drop; its `Debug` prints nothing secret.
#[derive(Debug)]
pub struct VaultSecret {
    seed: Seed,
    public: VaultPublicKey,
}

impl VaultSecret {
    /// A fresh random secret.
    pub fn generate() -> Result<VaultSecret, VaultError> {
        VaultSecret::from_seed(Seed::generate())
    }

    fn from_seed(seed: Seed) -> Result<VaultSecret, VaultError> {
        let public = VaultPublicKey(seed.public_key()?);
        Ok(VaultSecret { seed, public })
    }

    /// The public key records are sealed to.
    pub fn public_key(&self) -> VaultPublicKey {
        self.public
    }

    /// Splits the secret into `n` shares, any `k` of which rebuild it.
    pub fn split(&self, k: usize, n: usize) -> Result<Vec<KeyShare>, VaultError> {
        if !(1..=n).contains(&k) || n > MAX_CUSTODIANS {
            return Err(VaultError::BadThreshold { k, n });
        }
        let shares = blahaj::Sharks(k as u8)
            .dealer(&self.seed.0)
            .take(n)
            .map(|s| {
                let bytes = Zeroizing::new(Vec::<u8>::from(&s));
                KeyShare::from_bytes(&bytes)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(shares)
    }

    /// Rebuilds an account's secret from at least `k` shares and checks
    /// that it is the key of `expected` (Shamir shares carry no integrity
    /// of their own: a wrong share would silently give a wrong key).
    pub fn combine(
        shares: &[KeyShare],
        k: usize,
        expected: &VaultPublicKey,
    ) -> Result<VaultSecret, VaultError> {
        if !(1..=MAX_CUSTODIANS).contains(&k) {
            return Err(VaultError::BadThreshold { k, n: shares.len() });
        }
        let mut distinct: Vec<&KeyShare> = Vec::new();
        for s in shares {
            match distinct.iter().find(|d| d.x == s.x) {
                Some(d) if d.y != s.y => return Err(VaultError::ConflictingShares),
                Some(_) => {}
                None => distinct.push(s),
            }
        }
        if distinct.len() < k {
            return Err(VaultError::TooFewShares {
                have: distinct.len(),
                need: k,
            });
        }
        let parsed: Vec<blahaj::Share> = distinct
            .iter()
            .map(|s| {
                let bytes = s.to_bytes();
                blahaj::Share::try_from(&bytes[..]).map_err(|_| VaultError::Malformed("share"))
            })
            .collect::<Result<_, _>>()?;
        let recovered = Zeroizing::new(
            blahaj::Sharks(k as u8)
                .recover(&parsed)
                .map_err(|_| VaultError::Malformed("share set"))?,
        );
        let seed = Seed(
            recovered[..]
                .try_into()
                .map_err(|_| VaultError::Malformed("share length"))?,
        );
        let secret = VaultSecret::from_seed(seed)?;
        if secret.public != *expected {
            return Err(VaultError::WrongKey);
        }
        Ok(secret)
    }

    /// Opens a record sealed to this account: its plaintext, zeroized on
    /// drop.
    pub fn open(
        &self,
        account: &AccountId,
        record: &SealedRecord,
    ) -> Result<Zeroizing<Vec<u8>>, VaultError> {
        self.seed.open(
            &record.enc,
            &record_info(record.kind, account),
            &record.ciphertext,
        )
    }

    /// Opens a sealed phone number.
    pub fn open_phone(
        &self,
        account: &AccountId,
        record: &SealedRecord,
    ) -> Result<String, VaultError> {
        if record.kind != RecordKind::Phone {
            return Err(VaultError::Invalid("record kind (expected a phone number)"));
        }
        let pt = self.open(account, record)?;
        String::from_utf8(pt.to_vec()).map_err(|_| VaultError::Malformed("phone number"))
    }

    /// Opens a sealed connection record.
    pub fn open_ip(
        &self,
        account: &AccountId,
        record: &SealedRecord,
    ) -> Result<IpRecord, VaultError> {
        if record.kind != RecordKind::Ip {
            return Err(VaultError::Invalid("record kind (expected an IP record)"));
        }
        IpRecord::decode(&self.open(account, record)?)
    }
}

/// One custodian's share of an account's vault secret: the point `x`
/// (1–255) and the 32 bytes of the polynomials' values there. Zeroized on
/// drop; never printed.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct KeyShare {
    x: u8,
    y: [u8; KEY_LEN],
}

impl std::fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyShare(x = {}, ***)", self.x)
    }
}

/// Bytes in an encoded [`KeyShare`].
pub const SHARE_LEN: usize = 1 + KEY_LEN;

impl KeyShare {
    /// The share's point.
    pub fn x(&self) -> u8 {
        self.x
    }

    /// `x || y`, zeroized on drop.
    pub fn to_bytes(&self) -> Zeroizing<[u8; SHARE_LEN]> {
        let mut out = Zeroizing::new([0u8; SHARE_LEN]);
        out[0] = self.x;
        out[1..].copy_from_slice(&self.y);
        out
    }

    /// Reads `x || y`; `x` must not be 0 (the secret itself).
    pub fn from_bytes(bytes: &[u8]) -> Result<KeyShare, VaultError> {
        if bytes.len() != SHARE_LEN {
            return Err(VaultError::Malformed("share length"));
        }
        if bytes[0] == 0 {
            return Err(VaultError::Malformed("share point 0"));
        }
        let mut y = [0u8; KEY_LEN];
        y.copy_from_slice(&bytes[1..]);
        Ok(KeyShare { x: bytes[0], y })
    }
}

/// What was put in escrow for a new account: its public key and one
/// wrapped share per custodian, in the order the custodians were given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Escrow {
    /// The account's vault public key.
    pub public_key: VaultPublicKey,
    /// The shares, each wrapped to its custodian.
    pub shares: Vec<WrappedShare>,
    /// The threshold.
    pub threshold: usize,
}

/// Creates an account's vault key, splits it `k`-of-`custodians.len()`,
/// wraps each share to its custodian and forgets the private key.
pub fn escrow(
    account: &AccountId,
    custodians: &[CustodianRecord],
    k: usize,
) -> Result<Escrow, VaultError> {
    let secret = VaultSecret::generate()?;
    let shares = secret.split(k, custodians.len())?;
    let wrapped = custodians
        .iter()
        .zip(&shares)
        .map(|(c, s)| WrappedShare::wrap(c.public_key, account, s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Escrow {
        public_key: secret.public_key(),
        shares: wrapped,
        threshold: k,
    })
}

/// What a sealed record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A phone number (E.164, UTF-8).
    Phone,
    /// A connection: time and source IP address ([`IpRecord`]).
    Ip,
}

impl RecordKind {
    fn code(self) -> u8 {
        match self {
            RecordKind::Phone => 1,
            RecordKind::Ip => 2,
        }
    }
}

fn record_info(kind: RecordKind, account: &AccountId) -> Vec<u8> {
    let mut info = INFO_VAULT.to_vec();
    info.push(kind.code());
    info.extend_from_slice(account);
    info
}

/// A record sealed to an account's vault key:
/// `version (1) || kind (1) || enc (32) || ciphertext`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedRecord {
    /// What the record holds.
    pub kind: RecordKind,
    enc: [u8; KEY_LEN],
    ciphertext: Vec<u8>,
}

impl SealedRecord {
    fn seal(
        pk: &VaultPublicKey,
        account: &AccountId,
        kind: RecordKind,
        pt: &[u8],
    ) -> Result<SealedRecord, VaultError> {
        let (enc, ciphertext) = seal_to(&pk.0, &record_info(kind, account), pt)?;
        Ok(SealedRecord {
            kind,
            enc,
            ciphertext,
        })
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + KEY_LEN + self.ciphertext.len());
        out.push(SEALED_VERSION);
        out.push(self.kind.code());
        out.extend_from_slice(&self.enc);
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// Decodes a record (its ciphertext is checked only when opened).
    pub fn decode(bytes: &[u8]) -> Result<SealedRecord, VaultError> {
        if bytes.len() > MAX_SEALED_LEN {
            return Err(VaultError::Malformed("sealed record (too long)"));
        }
        // version, kind, enc and at least an AEAD tag.
        if bytes.len() < 2 + KEY_LEN + 16 {
            return Err(VaultError::Malformed("sealed record (too short)"));
        }
        if bytes[0] != SEALED_VERSION {
            return Err(VaultError::Malformed("sealed record (unknown version)"));
        }
        let kind = match bytes[1] {
            1 => RecordKind::Phone,
            2 => RecordKind::Ip,
            _ => return Err(VaultError::Malformed("sealed record (unknown kind)")),
        };
        Ok(SealedRecord {
            kind,
            enc: bytes[2..2 + KEY_LEN].try_into().expect("length checked"),
            ciphertext: bytes[2 + KEY_LEN..].to_vec(),
        })
    }
}

/// Seals a phone number to an account's key.
pub fn seal_phone(
    pk: &VaultPublicKey,
    account: &AccountId,
    phone: &str,
) -> Result<SealedRecord, VaultError> {
    if phone.is_empty() || phone.len() > MAX_PHONE_LEN {
        return Err(VaultError::Invalid("phone number length"));
    }
    SealedRecord::seal(pk, account, RecordKind::Phone, phone.as_bytes())
}

/// One connection: when (UNIX seconds) and from which address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpRecord {
    /// Seconds since the UNIX epoch, UTC.
    pub at: u64,
    /// The source address.
    pub ip: IpAddr,
}

impl IpRecord {
    /// `at (u64 BE) || 4 or 16 address bytes`.
    fn encode(&self) -> Vec<u8> {
        let mut out = self.at.to_be_bytes().to_vec();
        match self.ip {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
        }
        out
    }

    fn decode(b: &[u8]) -> Result<IpRecord, VaultError> {
        if b.len() != 12 && b.len() != 24 {
            return Err(VaultError::Malformed("IP record"));
        }
        let at = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
        let ip = match b.len() {
            12 => IpAddr::from(<[u8; 4]>::try_from(&b[8..]).expect("4 bytes")),
            _ => IpAddr::from(<[u8; 16]>::try_from(&b[8..]).expect("16 bytes")),
        };
        Ok(IpRecord { at, ip })
    }
}

/// Seals a connection record to an account's key. The time is inside the
/// ciphertext too, so a row whose clear time was changed (to dodge the
/// retention purge or a disclosure window) no longer matches what opens.
pub fn seal_ip(
    pk: &VaultPublicKey,
    account: &AccountId,
    record: &IpRecord,
) -> Result<SealedRecord, VaultError> {
    SealedRecord::seal(pk, account, RecordKind::Ip, &record.encode())
}

/// The server's key for the phone-number index: lookups use
/// HMAC-SHA-256(key, domain || phone), so whoever has only the database
/// cannot test candidate numbers against it. Zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct PhoneIndexKey([u8; KEY_LEN]);

impl std::fmt::Debug for PhoneIndexKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PhoneIndexKey(***)")
    }
}

impl PhoneIndexKey {
    /// A fresh random key.
    pub fn generate() -> PhoneIndexKey {
        PhoneIndexKey(rand::random())
    }

    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> PhoneIndexKey {
        PhoneIndexKey(bytes)
    }

    /// The key's bytes, to store in the server's key file.
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.0)
    }

    /// The index value of a phone number (E.164, as the server normalises
    /// it).
    pub fn lookup(&self, phone: &str) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(PHONE_INDEX_DOMAIN);
        mac.update(phone.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ACCOUNT: AccountId = [7; 16];

    #[test]
    fn sealed_records_open_only_for_their_account_and_kind() {
        let secret = VaultSecret::generate().unwrap();
        let pk = secret.public_key();
        let phone = seal_phone(&pk, &ACCOUNT, "+4915112345678").unwrap();
        assert_eq!(
            secret.open_phone(&ACCOUNT, &phone).unwrap(),
            "+4915112345678"
        );
        assert_eq!(
            secret.open_phone(&[8; 16], &phone),
            Err(VaultError::OpenFailed)
        );
        let ip = IpRecord {
            at: 1_795_000_000,
            ip: "2001:db8::1".parse().unwrap(),
        };
        let sealed_ip = seal_ip(&pk, &ACCOUNT, &ip).unwrap();
        assert_eq!(secret.open_ip(&ACCOUNT, &sealed_ip).unwrap(), ip);
        // A phone ciphertext relabelled as an IP record does not open.
        let mut relabelled = SealedRecord::decode(&phone.encode()).unwrap();
        relabelled.kind = RecordKind::Ip;
        assert_eq!(
            secret.open_ip(&ACCOUNT, &relabelled),
            Err(VaultError::OpenFailed)
        );
        // Another account's key does not open it.
        let other = VaultSecret::generate().unwrap();
        assert_eq!(
            other.open_phone(&ACCOUNT, &phone),
            Err(VaultError::OpenFailed)
        );
        // The encoding holds neither the number nor the address.
        let bytes = [phone.encode(), sealed_ip.encode()].concat();
        assert!(!bytes.windows(4).any(|w| w == b"4915"));
    }

    #[test]
    fn k_shares_rebuild_the_key_and_fewer_do_not() {
        let secret = VaultSecret::generate().unwrap();
        let pk = secret.public_key();
        let shares = secret.split(2, 3).unwrap();
        for pair in [[0, 1], [0, 2], [1, 2]] {
            let two = [shares[pair[0]].clone(), shares[pair[1]].clone()];
            let back = VaultSecret::combine(&two, 2, &pk).unwrap();
            assert_eq!(back.public_key(), pk);
        }
        assert_eq!(
            VaultSecret::combine(&shares[..1], 2, &pk).unwrap_err(),
            VaultError::TooFewShares { have: 1, need: 2 }
        );
        // The same share twice is one share.
        let twice = [shares[0].clone(), shares[0].clone()];
        assert_eq!(
            VaultSecret::combine(&twice, 2, &pk).unwrap_err(),
            VaultError::TooFewShares { have: 1, need: 2 }
        );
        // Another account's share yields the wrong key, and says so.
        let other = VaultSecret::generate().unwrap().split(2, 3).unwrap();
        let mixed = [shares[0].clone(), other[1].clone()];
        assert_eq!(
            VaultSecret::combine(&mixed, 2, &pk).unwrap_err(),
            VaultError::WrongKey
        );
        let mut conflicting = shares[0].clone();
        conflicting.y[0] ^= 1;
        assert_eq!(
            VaultSecret::combine(&[shares[0].clone(), conflicting], 2, &pk).unwrap_err(),
            VaultError::ConflictingShares
        );
        assert_eq!(
            secret.split(4, 3).unwrap_err(),
            VaultError::BadThreshold { k: 4, n: 3 }
        );
        assert!(secret.split(1, 17).is_err());
    }

    #[test]
    fn secrets_never_print() {
        let secret = VaultSecret::generate().unwrap();
        let share = secret.split(1, 1).unwrap().remove(0);
        assert!(format!("{secret:?}").contains("***"));
        assert_eq!(
            format!("{share:?}"),
            format!("KeyShare(x = {}, ***)", share.x())
        );
        assert_eq!(
            format!("{:?}", PhoneIndexKey::generate()),
            "PhoneIndexKey(***)"
        );
    }

    #[test]
    fn the_phone_index_is_keyed() {
        let (a, b) = (PhoneIndexKey::generate(), PhoneIndexKey::generate());
        assert_eq!(a.lookup("+15550100"), a.lookup("+15550100"));
        assert_ne!(a.lookup("+15550100"), a.lookup("+15550101"));
        assert_ne!(a.lookup("+15550100"), b.lookup("+15550100"));
        let again = PhoneIndexKey::from_bytes(*a.to_bytes());
        assert_eq!(again.lookup("+1"), a.lookup("+1"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn any_k_of_n_rebuild(n in 1usize..=6, k_off in 0usize..6, pick in any::<u64>()) {
            let k = 1 + k_off % n;
            let secret = VaultSecret::generate().unwrap();
            let shares = secret.split(k, n).unwrap();
            // A pseudo-random subset of exactly k shares.
            let mut idx: Vec<usize> = (0..n).collect();
            let mut p = pick;
            for i in (1..n).rev() {
                idx.swap(i, (p % (i as u64 + 1)) as usize);
                p /= i as u64 + 1;
            }
            let subset: Vec<KeyShare> = idx[..k].iter().map(|&i| shares[i].clone()).collect();
            let back = VaultSecret::combine(&subset, k, &secret.public_key()).unwrap();
            prop_assert_eq!(back.public_key(), secret.public_key());
            if k > 1 {
                let short = VaultSecret::combine(&subset[..k - 1], k, &secret.public_key());
                prop_assert!(matches!(short, Err(VaultError::TooFewShares { .. })), "short: {:?}", short.err());
            }
        }

        #[test]
        fn sealed_record_decoding_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(r) = SealedRecord::decode(&bytes) {
                prop_assert_eq!(r.encode(), bytes);
            }
        }

        #[test]
        fn ip_records_round_trip(at in any::<u64>(), v4 in any::<[u8; 4]>(), v6 in any::<[u8; 16]>(), six in any::<bool>()) {
            let ip = if six { IpAddr::from(v6) } else { IpAddr::from(v4) };
            let r = IpRecord { at, ip };
            prop_assert_eq!(IpRecord::decode(&r.encode()).unwrap(), r);
        }
    }
}
