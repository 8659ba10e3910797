//! Custodians: their keys and records, and the path a share takes from
//! escrow to a disclosure.
//!
//! A custodian is an independent party (ideally in another jurisdiction)
//! holding one share of every account's vault secret. Its [`CustodianKey`]
//! never leaves its machine; the operator configures its
//! [`CustodianRecord`] (name, jurisdiction, public key). At registration
//! each share is wrapped to one custodian ([`WrappedShare`], HPKE with an
//! `info` naming the account and the custodian), and the server stores the
//! wrapped shares.
//!
//! To approve a disclosure, a custodian unwraps its share of each named
//! account and re-seals it to the disclosure's one-time key
//! ([`DisclosureKey`]) as a [`ReleasedShare`], whose `info` names the
//! request and the account: a released share is useless for any other
//! request or account, and nobody but the holder of that request's
//! disclosure key can read it. Whether a custodian *should* approve is
//! decided before this module is called (the decision must be in the
//! public log); this module only makes sure a release is bound to what
//! was approved.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::vault::{AccountId, KEY_LEN, KeyShare, Seed, VaultError, seal_to};

const INFO_SHARE: &[u8] = b"postern-legal share v1\0";
const INFO_RELEASE: &[u8] = b"postern-legal release v1\0";
const WRAPPED_VERSION: u8 = 1;
const RELEASED_VERSION: u8 = 1;

/// The longest custodian name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// What the operator configures for one custodian.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustodianRecord {
    /// Who the custodian is (an organisation, a person), for people.
    pub name: String,
    /// The custodian's jurisdiction (ISO 3166-1 alpha-2).
    pub jurisdiction: String,
    /// The custodian's X25519 public key.
    #[serde(with = "hex32")]
    pub public_key: [u8; KEY_LEN],
}

impl CustodianRecord {
    /// Checks the record's fields.
    pub fn validate(&self) -> Result<(), VaultError> {
        if self.name.is_empty()
            || self.name.len() > MAX_NAME_LEN
            || self.name.chars().any(char::is_control)
        {
            return Err(VaultError::Invalid("custodian name"));
        }
        postern_tlog::entry::Jurisdiction::new(&self.jurisdiction)
            .map_err(|_| VaultError::Invalid("custodian jurisdiction"))?;
        Ok(())
    }
}

/// Checks a set of custodians for a k-of-n split: valid records, distinct
/// keys, `1 <= k <= n`, and the `k` custodians needed always spanning at
/// least two jurisdictions when `k >= 2` (no single jurisdiction can
/// gather a quorum on its own).
pub fn check_quorum(custodians: &[CustodianRecord], k: usize) -> Result<(), VaultError> {
    let n = custodians.len();
    if !(1..=n).contains(&k) || n > crate::vault::MAX_CUSTODIANS {
        return Err(VaultError::BadThreshold { k, n });
    }
    for (i, c) in custodians.iter().enumerate() {
        c.validate()?;
        if custodians[..i].iter().any(|d| d.public_key == c.public_key) {
            return Err(VaultError::Invalid(
                "custodian list (a public key appears twice)",
            ));
        }
    }
    if k >= 2 {
        let mut per: std::collections::HashMap<&str, usize> = Default::default();
        for c in custodians {
            *per.entry(c.jurisdiction.as_str()).or_default() += 1;
        }
        if per.values().any(|&count| count >= k) {
            return Err(VaultError::Invalid(
                "custodian list (k custodians share one jurisdiction)",
            ));
        }
    }
    Ok(())
}

/// A custodian's private key (a 32-byte seed, zeroized on drop), which
/// stays on the custodian's machine.
#[derive(Debug, Clone)]
pub struct CustodianKey(Seed);

impl CustodianKey {
    /// A fresh key.
    pub fn generate() -> CustodianKey {
        CustodianKey(Seed::generate())
    }

    /// The key from its stored bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> CustodianKey {
        CustodianKey(Seed(bytes))
    }

    /// The bytes to store (keep them private).
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.0.0)
    }

    /// The public key for the custodian's record.
    pub fn public_key(&self) -> Result<[u8; KEY_LEN], VaultError> {
        self.0.public_key()
    }

    /// Unwraps this custodian's share of `account`.
    pub fn unwrap_share(
        &self,
        account: &AccountId,
        wrapped: &WrappedShare,
    ) -> Result<KeyShare, VaultError> {
        let me = self.public_key()?;
        if wrapped.custodian != me {
            return Err(VaultError::Invalid("share (wrapped to another custodian)"));
        }
        let pt = self
            .0
            .open(&wrapped.enc, &share_info(account, &me), &wrapped.ciphertext)?;
        KeyShare::from_bytes(&pt)
    }

    /// Releases this custodian's share of `account` for request
    /// `request`, sealed to that request's disclosure key.
    pub fn release(
        &self,
        request: &[u8; 16],
        account: &AccountId,
        wrapped: &WrappedShare,
        disclosure_key: &[u8; KEY_LEN],
    ) -> Result<ReleasedShare, VaultError> {
        let share = self.unwrap_share(account, wrapped)?;
        let custodian = self.public_key()?;
        let (enc, ciphertext) = seal_to(
            disclosure_key,
            &release_info(request, account, &custodian),
            &share.to_bytes()[..],
        )?;
        Ok(ReleasedShare {
            request: *request,
            account: *account,
            custodian,
            enc,
            ciphertext,
        })
    }
}

fn share_info(account: &AccountId, custodian: &[u8; KEY_LEN]) -> Vec<u8> {
    [INFO_SHARE, account, custodian].concat()
}

fn release_info(request: &[u8; 16], account: &AccountId, custodian: &[u8; KEY_LEN]) -> Vec<u8> {
    [INFO_RELEASE, request, account, custodian].concat()
}

/// One share wrapped to one custodian:
/// `version (1) || custodian public key (32) || enc (32) || ciphertext`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedShare {
    /// The custodian it is wrapped to.
    pub custodian: [u8; KEY_LEN],
    enc: [u8; KEY_LEN],
    ciphertext: Vec<u8>,
}

/// Bytes in an encoded [`WrappedShare`]: version, key, enc, share, tag.
pub const WRAPPED_LEN: usize = 1 + KEY_LEN + KEY_LEN + crate::vault::SHARE_LEN + 16;

impl WrappedShare {
    /// Wraps `share` of `account` to `custodian`.
    pub fn wrap(
        custodian: [u8; KEY_LEN],
        account: &AccountId,
        share: &KeyShare,
    ) -> Result<WrappedShare, VaultError> {
        let (enc, ciphertext) = seal_to(
            &custodian,
            &share_info(account, &custodian),
            &share.to_bytes()[..],
        )?;
        Ok(WrappedShare {
            custodian,
            enc,
            ciphertext,
        })
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        [
            &[WRAPPED_VERSION][..],
            &self.custodian,
            &self.enc,
            &self.ciphertext,
        ]
        .concat()
    }

    /// Decodes a wrapped share.
    pub fn decode(bytes: &[u8]) -> Result<WrappedShare, VaultError> {
        if bytes.len() != WRAPPED_LEN {
            return Err(VaultError::Malformed("wrapped share (length)"));
        }
        if bytes[0] != WRAPPED_VERSION {
            return Err(VaultError::Malformed("wrapped share (unknown version)"));
        }
        Ok(WrappedShare {
            custodian: bytes[1..33].try_into().expect("32 bytes"),
            enc: bytes[33..65].try_into().expect("32 bytes"),
            ciphertext: bytes[65..].to_vec(),
        })
    }
}

/// A custodian's share of one account, released for one request and
/// sealed to that request's disclosure key:
/// `version (1) || request (16) || account (16) || custodian (32) || enc (32) || ciphertext`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReleasedShare {
    /// The request it was released for.
    pub request: [u8; 16],
    /// The account whose share it is.
    pub account: AccountId,
    /// The custodian who released it.
    pub custodian: [u8; KEY_LEN],
    enc: [u8; KEY_LEN],
    ciphertext: Vec<u8>,
}

/// Bytes in an encoded [`ReleasedShare`].
pub const RELEASED_LEN: usize = 1 + 16 + 16 + KEY_LEN + KEY_LEN + crate::vault::SHARE_LEN + 16;

impl ReleasedShare {
    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        [
            &[RELEASED_VERSION][..],
            &self.request,
            &self.account,
            &self.custodian,
            &self.enc,
            &self.ciphertext,
        ]
        .concat()
    }

    /// Decodes a released share.
    pub fn decode(bytes: &[u8]) -> Result<ReleasedShare, VaultError> {
        if bytes.len() != RELEASED_LEN {
            return Err(VaultError::Malformed("released share (length)"));
        }
        if bytes[0] != RELEASED_VERSION {
            return Err(VaultError::Malformed("released share (unknown version)"));
        }
        Ok(ReleasedShare {
            request: bytes[1..17].try_into().expect("16 bytes"),
            account: bytes[17..33].try_into().expect("16 bytes"),
            custodian: bytes[33..65].try_into().expect("32 bytes"),
            enc: bytes[65..97].try_into().expect("32 bytes"),
            ciphertext: bytes[97..].to_vec(),
        })
    }
}

/// A request's one-time disclosure key: custodians seal released shares
/// to its public half; the operator opens them with it during the
/// disclosure and then drops it (zeroized).
#[derive(Debug)]
pub struct DisclosureKey(Seed);

impl DisclosureKey {
    /// A fresh key.
    pub fn generate() -> DisclosureKey {
        DisclosureKey(Seed::generate())
    }

    /// The key from its stored bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> DisclosureKey {
        DisclosureKey(Seed(bytes))
    }

    /// The bytes to store until the disclosure is done.
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.0.0)
    }

    /// The public key custodians seal released shares to.
    pub fn public_key(&self) -> Result<[u8; KEY_LEN], VaultError> {
        self.0.public_key()
    }

    /// Opens the released shares for `account` in request `request`,
    /// refusing any share released for another request or account, or by
    /// a custodian not in `custodians`; duplicates from one custodian
    /// count once.
    pub fn open_releases(
        &self,
        request: &[u8; 16],
        account: &AccountId,
        custodians: &[CustodianRecord],
        released: &[ReleasedShare],
    ) -> Result<Vec<KeyShare>, VaultError> {
        let mut seen: Vec<[u8; KEY_LEN]> = Vec::new();
        let mut shares = Vec::new();
        for r in released.iter().filter(|r| &r.account == account) {
            if &r.request != request {
                return Err(VaultError::Invalid("released share (for another request)"));
            }
            if !custodians.iter().any(|c| c.public_key == r.custodian) {
                return Err(VaultError::Invalid(
                    "released share (from a custodian not configured)",
                ));
            }
            if seen.contains(&r.custodian) {
                continue;
            }
            seen.push(r.custodian);
            let pt = self.0.open(
                &r.enc,
                &release_info(request, account, &r.custodian),
                &r.ciphertext,
            )?;
            shares.push(KeyShare::from_bytes(&pt)?);
        }
        Ok(shares)
    }
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let v = hex::decode(&s).map_err(|_| D::Error::custom("expected 64 hex digits"))?;
        v.try_into()
            .map_err(|_| D::Error::custom("expected 64 hex digits (32 bytes)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vault::{VaultSecret, escrow, seal_phone};

    fn custodian(name: &str, j: &str) -> (CustodianKey, CustodianRecord) {
        let key = CustodianKey::generate();
        let record = CustodianRecord {
            name: name.into(),
            jurisdiction: j.into(),
            public_key: key.public_key().unwrap(),
        };
        (key, record)
    }

    #[test]
    fn two_of_three_custodians_release_and_the_operator_opens() {
        let account = [1; 16];
        let request = [9; 16];
        let cs: Vec<_> = [("a", "CH"), ("b", "IS"), ("c", "NL")]
            .iter()
            .map(|(n, j)| custodian(n, j))
            .collect();
        let records: Vec<_> = cs.iter().map(|(_, r)| r.clone()).collect();
        check_quorum(&records, 2).unwrap();
        let escrow = escrow(&account, &records, 2).unwrap();
        let phone = seal_phone(&escrow.public_key, &account, "+41790000000").unwrap();

        let dk = DisclosureKey::generate();
        let dpk = dk.public_key().unwrap();
        let released: Vec<_> = [0, 2]
            .iter()
            .map(|&i| {
                let w = WrappedShare::decode(&escrow.shares[i].encode()).unwrap();
                let r = cs[i].0.release(&request, &account, &w, &dpk).unwrap();
                ReleasedShare::decode(&r.encode()).unwrap()
            })
            .collect();
        let shares = dk
            .open_releases(&request, &account, &records, &released)
            .unwrap();
        let secret = VaultSecret::combine(&shares, 2, &escrow.public_key).unwrap();
        assert_eq!(secret.open_phone(&account, &phone).unwrap(), "+41790000000");

        // One custodian releasing twice is still one share.
        let twice = [released[0].clone(), released[0].clone()];
        let one = dk
            .open_releases(&request, &account, &records, &twice)
            .unwrap();
        assert!(matches!(
            VaultSecret::combine(&one, 2, &escrow.public_key),
            Err(VaultError::TooFewShares { have: 1, need: 2 })
        ));
        // Shares released for another request are refused.
        assert!(
            dk.open_releases(&[8; 16], &account, &records, &released)
                .is_err()
        );
        // A custodian cannot unwrap another's share.
        assert!(cs[1].0.unwrap_share(&account, &escrow.shares[0]).is_err());
        // A share wrapped for one account does not unwrap as another's.
        assert_eq!(
            cs[0].0.unwrap_share(&[2; 16], &escrow.shares[0]),
            Err(VaultError::OpenFailed)
        );
        // Another disclosure key cannot read the releases.
        let other = DisclosureKey::generate();
        assert_eq!(
            other.open_releases(&request, &account, &records, &released),
            Err(VaultError::OpenFailed)
        );
        // A release from an unconfigured custodian is refused.
        assert!(
            dk.open_releases(&request, &account, &records[..1], &released)
                .is_err()
        );
    }

    #[test]
    fn a_quorum_must_span_jurisdictions() {
        let recs: Vec<_> = [("a", "CH"), ("b", "CH"), ("c", "NL")]
            .iter()
            .map(|(n, j)| custodian(n, j).1)
            .collect();
        assert!(check_quorum(&recs, 2).is_err());
        assert!(check_quorum(&recs, 3).is_ok());
        assert!(check_quorum(&recs, 4).is_err());
        let dup = vec![recs[0].clone(), recs[0].clone()];
        assert!(check_quorum(&dup, 1).is_err());
        let mut bad = recs[2].clone();
        bad.jurisdiction = "nl".into();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn records_round_trip_through_toml() {
        let (_, r) = custodian("Digitale Gesellschaft", "CH");
        let text = toml::to_string(&r).unwrap();
        assert_eq!(toml::from_str::<CustodianRecord>(&text).unwrap(), r);
        assert!(toml::from_str::<CustodianRecord>(&text.replace("public_key", "pubkey")).is_err());
    }

    #[test]
    fn encodings_reject_wrong_lengths_and_versions() {
        assert!(WrappedShare::decode(&[]).is_err());
        assert!(WrappedShare::decode(&[0; WRAPPED_LEN]).is_err());
        assert!(ReleasedShare::decode(&[1; RELEASED_LEN + 1]).is_err());
        assert!(ReleasedShare::decode(&[2; RELEASED_LEN]).is_err());
    }
}
