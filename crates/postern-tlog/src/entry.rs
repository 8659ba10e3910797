//! Typed log entries: legal requests, sealed requests and their openings,
//! in a versioned canonical binary encoding.
//!
//! An entry carries no personal data: which accounts a request named and
//! the signed order itself appear only as salted commitments. The
//! operator keeps the salts; handing an auditor a salt and the document
//! (or account list) opens the commitment. A request under a gag order is
//! logged as a [`SealedRequest`], a commitment to the whole record, and its
//! [`Opening`] is appended when the gag lapses; anyone can check that the
//! opening matches what was committed at the time.
//!
//! Encoding (all integers big-endian): `version (1) || kind || fields`, with
//! every field of fixed width except the legal basis (`u8` length). There
//! is exactly one encoding of each value: decoding rejects unknown
//! versions, kinds, enum values and flag bits, out-of-range fields and
//! trailing bytes.

use sha2::{Digest, Sha256};

/// The encoding version this crate writes and reads.
pub const VERSION: u8 = 1;

/// The longest legal basis, in bytes.
pub const MAX_LEGAL_BASIS: usize = 64;

const COMMITMENT_DOMAIN: &[u8] = b"postern-tlog commitment v1\0";

/// What was wrong with an encoded entry, or with a value to encode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// The entry ended early.
    #[error("the entry is truncated")]
    Truncated,
    /// Bytes follow the last field.
    #[error("the entry has {0} bytes after its last field")]
    TrailingBytes(usize),
    /// A version this crate does not read.
    #[error("unsupported entry version {0}")]
    UnsupportedVersion(u8),
    /// An unknown entry kind.
    #[error("unknown entry kind {0}")]
    UnknownKind(u8),
    /// A field holds a value outside its range.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// A calendar month, UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    year: u16,
    month: u8,
}

impl Month {
    /// The month, if `month` is 1–12 and `year` 2000–9999.
    pub fn new(year: u16, month: u8) -> Result<Month, EntryError> {
        if !(2000..=9999).contains(&year) || !(1..=12).contains(&month) {
            return Err(EntryError::Invalid("month"));
        }
        Ok(Month { year, month })
    }

    /// The year.
    pub fn year(&self) -> u16 {
        self.year
    }

    /// The month, 1–12.
    pub fn month(&self) -> u8 {
        self.month
    }
}

/// An ISO 3166-1 alpha-2 country code, upper case (`DE`, `US`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Jurisdiction([u8; 2]);

impl Jurisdiction {
    /// The code, if it is two upper-case ASCII letters.
    pub fn new(code: &str) -> Result<Jurisdiction, EntryError> {
        let b: [u8; 2] = code
            .as_bytes()
            .try_into()
            .map_err(|_| EntryError::Invalid("jurisdiction"))?;
        Jurisdiction::from_bytes(b)
    }

    fn from_bytes(b: [u8; 2]) -> Result<Jurisdiction, EntryError> {
        if b.iter().all(u8::is_ascii_uppercase) {
            Ok(Jurisdiction(b))
        } else {
            Err(EntryError::Invalid("jurisdiction"))
        }
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII letters")
    }
}

/// Who made the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthorityType {
    /// A court or judge.
    Court,
    /// A prosecutor's office.
    Prosecutor,
    /// A police force.
    Police,
    /// An intelligence service.
    Intelligence,
    /// A regulator.
    Regulator,
    /// Anyone else.
    Other,
}

impl AuthorityType {
    fn code(self) -> u8 {
        match self {
            AuthorityType::Court => 1,
            AuthorityType::Prosecutor => 2,
            AuthorityType::Police => 3,
            AuthorityType::Intelligence => 4,
            AuthorityType::Regulator => 5,
            AuthorityType::Other => 255,
        }
    }

    fn from_code(c: u8) -> Result<AuthorityType, EntryError> {
        Ok(match c {
            1 => AuthorityType::Court,
            2 => AuthorityType::Prosecutor,
            3 => AuthorityType::Police,
            4 => AuthorityType::Intelligence,
            5 => AuthorityType::Regulator,
            255 => AuthorityType::Other,
            _ => return Err(EntryError::Invalid("authority type")),
        })
    }
}

/// The categories of data a request asked for, as flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct DataCategories(u16);

impl DataCategories {
    /// The account's phone number.
    pub const PHONE_NUMBER: DataCategories = DataCategories(1);
    /// IP addresses the account connected from.
    pub const CONNECTION_IPS: DataCategories = DataCategories(1 << 1);
    /// Registration date, devices, username.
    pub const ACCOUNT_METADATA: DataCategories = DataCategories(1 << 2);
    /// Message content (which the operator cannot read: always refused).
    pub const MESSAGE_CONTENT: DataCategories = DataCategories(1 << 3);
    /// Who the account talks to.
    pub const CONTACTS: DataCategories = DataCategories(1 << 4);
    /// Which groups the account is in (always refused).
    pub const GROUPS: DataCategories = DataCategories(1 << 5);
    const ALL: u16 = (1 << 6) - 1;

    /// The union of two sets.
    pub const fn union(self, other: DataCategories) -> DataCategories {
        DataCategories(self.0 | other.0)
    }

    /// Whether every category of `other` is in this set.
    pub fn contains(self, other: DataCategories) -> bool {
        self.0 & other.0 == other.0
    }

    /// The flag bits.
    pub fn bits(self) -> u16 {
        self.0
    }

    /// The set with these bits, if all are known.
    pub fn from_bits(bits: u16) -> Result<DataCategories, EntryError> {
        if bits & !Self::ALL != 0 {
            return Err(EntryError::Invalid("data categories"));
        }
        Ok(DataCategories(bits))
    }
}

/// Why a request was refused or only partly granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReasonCode(pub u16);

impl ReasonCode {
    /// Not a case the published policy allows disclosure for.
    pub const OUTSIDE_POLICY: ReasonCode = ReasonCode(1);
    /// The requesting jurisdiction is on the deny list.
    pub const DENIED_JURISDICTION: ReasonCode = ReasonCode(2);
    /// The order could not be verified or is not valid.
    pub const INVALID_ORDER: ReasonCode = ReasonCode(3);
    /// The request asked for more than the policy allows.
    pub const OVERBROAD: ReasonCode = ReasonCode(4);
    /// The operator holds no such data.
    pub const NO_DATA: ReasonCode = ReasonCode(5);
    /// The custodians did not approve.
    pub const CUSTODIANS_DECLINED: ReasonCode = ReasonCode(6);
    /// The order is signed by a court the requesting jurisdiction's trust
    /// anchors do not vouch for.
    pub const UNTRUSTED_COURT: ReasonCode = ReasonCode(7);
    /// A certificate in the order's chain had expired (or was not yet
    /// valid) when the order was checked.
    pub const CERTIFICATE_EXPIRED: ReasonCode = ReasonCode(8);
    /// A certificate in the order's chain is revoked.
    pub const CERTIFICATE_REVOKED: ReasonCode = ReasonCode(9);
    /// The request asked for a category the operator never discloses
    /// (message content, contacts, groups).
    pub const CATEGORY_NEVER_DISCLOSED: ReasonCode = ReasonCode(10);
}

/// What was done with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Disclosed as asked.
    Granted,
    /// Partly disclosed.
    PartlyGranted(ReasonCode),
    /// Nothing disclosed.
    Refused(ReasonCode),
}

/// A salted SHA-256 commitment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Commitment(pub [u8; 32]);

impl Commitment {
    /// The commitment to `data` under `label` with a 32-byte random `salt`:
    /// SHA-256(domain || label || 0x00 || salt || SHA-256(data)).
    pub fn new(label: &str, salt: &[u8; 32], data: &[u8]) -> Commitment {
        let mut h = Sha256::new();
        h.update(COMMITMENT_DOMAIN);
        h.update(label.as_bytes());
        h.update([0]);
        h.update(salt);
        h.update(Sha256::digest(data));
        Commitment(h.finalize().into())
    }

    /// The commitment to a signed order document (label `order`).
    pub fn to_order(salt: &[u8; 32], document: &[u8]) -> Commitment {
        Commitment::new("order", salt, document)
    }

    /// The commitment to the accounts named (label `accounts`): their
    /// 16-byte ids, sorted, concatenated.
    pub fn to_accounts(salt: &[u8; 32], accounts: &[[u8; 16]]) -> Commitment {
        let mut ids = accounts.to_vec();
        ids.sort_unstable();
        ids.dedup();
        Commitment::new("accounts", salt, &ids.concat())
    }

    /// Whether `salt` and `data` open this commitment under `label`.
    pub fn opens(&self, label: &str, salt: &[u8; 32], data: &[u8]) -> bool {
        Commitment::new(label, salt, data) == *self
    }
}

/// A legal request and its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LegalRequest {
    /// A random identifier (not derived from anything).
    pub id: [u8; 16],
    /// The month it was received.
    pub month: Month,
    /// The jurisdiction of the requesting authority.
    pub jurisdiction: Jurisdiction,
    /// The kind of authority.
    pub authority: AuthorityType,
    /// The legal basis cited, e.g. a statute: printable ASCII, 1–64 bytes.
    pub legal_basis: String,
    /// The data asked for.
    pub categories: DataCategories,
    /// What was done.
    pub outcome: Outcome,
    /// How many accounts the request named.
    pub accounts: u32,
    /// Commitment to the signed order ([`Commitment::to_order`]).
    pub order: Commitment,
    /// Commitment to the accounts named ([`Commitment::to_accounts`]).
    pub account_ids: Commitment,
}

/// The commitment, now, to a request that may not yet be published.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SealedRequest {
    /// The request's id (random, reveals nothing).
    pub id: [u8; 16],
    /// The month it was received.
    pub month: Month,
    /// Commitment to the whole encoded request (label `sealed`).
    pub commitment: Commitment,
}

/// The later opening of a [`SealedRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Opening {
    /// The salt of the sealed commitment.
    pub salt: [u8; 32],
    /// The request, whose id is the sealed entry's.
    pub request: LegalRequest,
}

/// That the data a granted request named was handed over. Only the
/// request's id and the month: a gagged request's details stay sealed
/// until its opening.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Disclosure {
    /// The request's id (its logged or sealed entry's).
    pub id: [u8; 16],
    /// The month of the disclosure.
    pub month: Month,
}

/// A log entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Entry {
    /// A request published when it was handled.
    LegalRequest(LegalRequest),
    /// A request under a gag order: only a commitment.
    Sealed(SealedRequest),
    /// A sealed request's opening.
    Opening(Opening),
    /// A disclosure made for a logged request.
    Disclosure(Disclosure),
}

const KIND_REQUEST: u8 = 1;
const KIND_SEALED: u8 = 2;
const KIND_OPENING: u8 = 3;
const KIND_DISCLOSURE: u8 = 4;

fn valid_basis(s: &str) -> bool {
    (1..=MAX_LEGAL_BASIS).contains(&s.len()) && s.bytes().all(|b| (0x20..0x7f).contains(&b))
}

impl LegalRequest {
    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), EntryError> {
        if !valid_basis(&self.legal_basis) {
            return Err(EntryError::Invalid("legal basis"));
        }
        out.extend_from_slice(&self.id);
        encode_month(self.month, out);
        out.extend_from_slice(&self.jurisdiction.0);
        out.push(self.authority.code());
        out.push(self.legal_basis.len() as u8);
        out.extend_from_slice(self.legal_basis.as_bytes());
        out.extend_from_slice(&self.categories.0.to_be_bytes());
        let (tag, reason) = match self.outcome {
            Outcome::Granted => (1u8, 0u16),
            Outcome::PartlyGranted(r) => (2, r.0),
            Outcome::Refused(r) => (3, r.0),
        };
        out.push(tag);
        out.extend_from_slice(&reason.to_be_bytes());
        out.extend_from_slice(&self.accounts.to_be_bytes());
        out.extend_from_slice(&self.order.0);
        out.extend_from_slice(&self.account_ids.0);
        Ok(())
    }

    fn decode_from(r: &mut Reader<'_>) -> Result<LegalRequest, EntryError> {
        let id = r.array()?;
        let month = decode_month(r)?;
        let jurisdiction = Jurisdiction::from_bytes(r.array()?)?;
        let authority = AuthorityType::from_code(r.u8()?)?;
        let len = usize::from(r.u8()?);
        let legal_basis = std::str::from_utf8(r.take(len)?)
            .ok()
            .filter(|s| valid_basis(s))
            .ok_or(EntryError::Invalid("legal basis"))?
            .to_owned();
        let categories = DataCategories::from_bits(r.u16()?)?;
        let (tag, reason) = (r.u8()?, ReasonCode(r.u16()?));
        let outcome = match tag {
            1 if reason.0 == 0 => Outcome::Granted,
            2 => Outcome::PartlyGranted(reason),
            3 => Outcome::Refused(reason),
            _ => return Err(EntryError::Invalid("outcome")),
        };
        Ok(LegalRequest {
            id,
            month,
            jurisdiction,
            authority,
            legal_basis,
            categories,
            outcome,
            accounts: r.u32()?,
            order: Commitment(r.array()?),
            account_ids: Commitment(r.array()?),
        })
    }

    fn sealed_commitment(&self, salt: &[u8; 32]) -> Result<Commitment, EntryError> {
        let mut body = Vec::new();
        self.encode_into(&mut body)?;
        Ok(Commitment::new("sealed", salt, &body))
    }

    /// Seals this request: the entry to log now, and the opening to log
    /// when the gag lapses (keep it secret until then).
    pub fn seal(&self) -> Result<(SealedRequest, Opening), EntryError> {
        let salt: [u8; 32] = rand::random();
        Ok((
            SealedRequest {
                id: self.id,
                month: self.month,
                commitment: self.sealed_commitment(&salt)?,
            },
            Opening {
                salt,
                request: self.clone(),
            },
        ))
    }
}

impl Opening {
    /// Whether this opens `sealed`: same id and month, matching commitment.
    pub fn opens(&self, sealed: &SealedRequest) -> bool {
        self.request.id == sealed.id
            && self.request.month == sealed.month
            && self
                .request
                .sealed_commitment(&self.salt)
                .is_ok_and(|c| c == sealed.commitment)
    }
}

fn encode_month(m: Month, out: &mut Vec<u8>) {
    out.extend_from_slice(&m.year.to_be_bytes());
    out.push(m.month);
}

fn decode_month(r: &mut Reader<'_>) -> Result<Month, EntryError> {
    let year = r.u16()?;
    Month::new(year, r.u8()?)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], EntryError> {
        if self.0.len() < n {
            return Err(EntryError::Truncated);
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], EntryError> {
        Ok(self.take(N)?.try_into().expect("length taken"))
    }
    fn u8(&mut self) -> Result<u8, EntryError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, EntryError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, EntryError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
}

impl Entry {
    /// The canonical encoding, what the log stores.
    pub fn encode(&self) -> Result<Vec<u8>, EntryError> {
        let mut out = vec![VERSION];
        match self {
            Entry::LegalRequest(r) => {
                out.push(KIND_REQUEST);
                r.encode_into(&mut out)?;
            }
            Entry::Sealed(s) => {
                out.push(KIND_SEALED);
                out.extend_from_slice(&s.id);
                encode_month(s.month, &mut out);
                out.extend_from_slice(&s.commitment.0);
            }
            Entry::Opening(o) => {
                out.push(KIND_OPENING);
                out.extend_from_slice(&o.salt);
                o.request.encode_into(&mut out)?;
            }
            Entry::Disclosure(d) => {
                out.push(KIND_DISCLOSURE);
                out.extend_from_slice(&d.id);
                encode_month(d.month, &mut out);
            }
        }
        Ok(out)
    }

    /// Decodes an entry, accepting only the canonical encoding.
    pub fn decode(bytes: &[u8]) -> Result<Entry, EntryError> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(EntryError::UnsupportedVersion(version));
        }
        let entry = match r.u8()? {
            KIND_REQUEST => Entry::LegalRequest(LegalRequest::decode_from(&mut r)?),
            KIND_SEALED => Entry::Sealed(SealedRequest {
                id: r.array()?,
                month: decode_month(&mut r)?,
                commitment: Commitment(r.array()?),
            }),
            KIND_OPENING => Entry::Opening(Opening {
                salt: r.array()?,
                request: LegalRequest::decode_from(&mut r)?,
            }),
            KIND_DISCLOSURE => Entry::Disclosure(Disclosure {
                id: r.array()?,
                month: decode_month(&mut r)?,
            }),
            other => return Err(EntryError::UnknownKind(other)),
        };
        if !r.0.is_empty() {
            return Err(EntryError::TrailingBytes(r.0.len()));
        }
        Ok(entry)
    }
}

/// Counts of a log's entries by kind, as a monitor reports them, and the
/// problems an auditor would want to know about: entries that are not
/// valid records, and openings that do not open the sealed entry they
/// name (among the sealed entries this tally has seen).
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Published legal requests.
    pub requests: u64,
    /// Sealed requests.
    pub sealed: u64,
    /// Openings of sealed requests.
    pub openings: u64,
    /// Disclosures.
    pub disclosures: u64,
    /// Indexes of entries that do not decode, with why.
    pub invalid: Vec<(u64, EntryError)>,
    /// Indexes of openings that contradict the sealed entry of their id.
    pub bad_openings: Vec<u64>,
    /// Openings whose sealed entry this tally has not seen (it came
    /// before the entries it was shown).
    pub unmatched_openings: u64,
    sealed_by_id: std::collections::HashMap<[u8; 16], SealedRequest>,
}

impl Tally {
    /// Counts one entry at `index`.
    pub fn add(&mut self, index: u64, bytes: &[u8]) {
        match Entry::decode(bytes) {
            Ok(Entry::LegalRequest(_)) => self.requests += 1,
            Ok(Entry::Sealed(s)) => {
                self.sealed += 1;
                self.sealed_by_id.insert(s.id, s);
            }
            Ok(Entry::Opening(o)) => {
                self.openings += 1;
                match self.sealed_by_id.get(&o.request.id) {
                    Some(s) if o.opens(s) => {}
                    Some(_) => self.bad_openings.push(index),
                    None => self.unmatched_openings += 1,
                }
            }
            Ok(Entry::Disclosure(_)) => self.disclosures += 1,
            Err(e) => self.invalid.push((index, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn request(seed: u8) -> LegalRequest {
        let order_salt = [seed; 32];
        LegalRequest {
            id: [seed; 16],
            month: Month::new(2026, 11).unwrap(),
            jurisdiction: Jurisdiction::new("DE").unwrap(),
            authority: AuthorityType::Court,
            legal_basis: "StPO 100g".into(),
            categories: DataCategories::PHONE_NUMBER.union(DataCategories::CONNECTION_IPS),
            outcome: Outcome::Refused(ReasonCode::OUTSIDE_POLICY),
            accounts: 1,
            order: Commitment::to_order(&order_salt, b"the signed order"),
            account_ids: Commitment::to_accounts(&order_salt, &[[7; 16]]),
        }
    }

    #[test]
    fn sealed_requests_open_only_with_their_opening() {
        let r = request(1);
        let (sealed, opening) = r.seal().unwrap();
        assert!(opening.opens(&sealed));
        let mut forged = opening.clone();
        forged.request.outcome = Outcome::Granted;
        assert!(!forged.opens(&sealed));
        let mut wrong_salt = opening.clone();
        wrong_salt.salt[0] ^= 1;
        assert!(!wrong_salt.opens(&sealed));
        let disclosure = Entry::Disclosure(Disclosure {
            id: r.id,
            month: r.month,
        });
        for e in [
            Entry::Sealed(sealed),
            Entry::Opening(opening),
            Entry::LegalRequest(r),
            disclosure,
        ] {
            assert_eq!(Entry::decode(&e.encode().unwrap()), Ok(e));
        }
    }

    #[test]
    fn a_tally_checks_openings_against_sealed_entries() {
        let (sealed, opening) = request(4).seal().unwrap();
        let mut forged = opening.clone();
        forged.request.accounts = 1000;
        let (_, unrelated) = request(5).seal().unwrap();
        let mut t = Tally::default();
        for (i, e) in [
            Entry::LegalRequest(request(6)),
            Entry::Sealed(sealed),
            Entry::Opening(opening),
            Entry::Opening(forged),
            Entry::Opening(unrelated),
        ]
        .iter()
        .enumerate()
        {
            t.add(i as u64, &e.encode().unwrap());
        }
        t.add(5, b"\x01\x09");
        assert_eq!((t.requests, t.sealed, t.openings), (1, 1, 3));
        assert_eq!(t.bad_openings, vec![3]);
        assert_eq!(t.unmatched_openings, 1);
        assert_eq!(t.invalid, vec![(5, EntryError::UnknownKind(9))]);
    }

    #[test]
    fn commitments_open_with_salt_and_data() {
        let salt = [3; 32];
        let c = Commitment::to_accounts(&salt, &[[2; 16], [1; 16]]);
        assert_eq!(c, Commitment::to_accounts(&salt, &[[1; 16], [2; 16]]));
        let mut ids = [[1u8; 16], [2; 16]].concat();
        assert!(c.opens("accounts", &salt, &ids));
        ids[0] = 9;
        assert!(!c.opens("accounts", &salt, &ids));
        assert!(!c.opens("order", &salt, &[[1u8; 16], [2; 16]].concat()));
    }

    #[test]
    fn non_canonical_encodings_are_refused() {
        let good = Entry::LegalRequest(request(2)).encode().unwrap();
        let mut v2 = good.clone();
        v2[0] = 2;
        assert_eq!(Entry::decode(&v2), Err(EntryError::UnsupportedVersion(2)));
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(Entry::decode(&trailing), Err(EntryError::TrailingBytes(1)));
        assert_eq!(
            Entry::decode(&good[..good.len() - 1]),
            Err(EntryError::Truncated)
        );
        let mut lower = good.clone();
        lower[2 + 16 + 3] = b'd';
        assert_eq!(
            Entry::decode(&lower),
            Err(EntryError::Invalid("jurisdiction"))
        );
        let mut month = good.clone();
        month[2 + 16 + 2] = 13;
        assert_eq!(Entry::decode(&month), Err(EntryError::Invalid("month")));
        let mut r = request(3);
        r.legal_basis = "x".repeat(65);
        assert_eq!(
            Entry::LegalRequest(r).encode(),
            Err(EntryError::Invalid("legal basis"))
        );
    }

    fn arb_request() -> impl Strategy<Value = LegalRequest> {
        (
            any::<[u8; 16]>(),
            (2000u16..=9999, 1u8..=12),
            (b'A'..=b'Z', b'A'..=b'Z'),
            prop::sample::select(vec![
                AuthorityType::Court,
                AuthorityType::Prosecutor,
                AuthorityType::Police,
                AuthorityType::Intelligence,
                AuthorityType::Regulator,
                AuthorityType::Other,
            ]),
            "[ -~]{1,64}",
            0u16..64,
            (1u8..=3, 1u16..),
            any::<u32>(),
            any::<[u8; 32]>(),
        )
            .prop_map(
                |(id, (y, m), (a, b), authority, basis, cats, (o, reason), accounts, c)| {
                    LegalRequest {
                        id,
                        month: Month::new(y, m).unwrap(),
                        jurisdiction: Jurisdiction::from_bytes([a, b]).unwrap(),
                        authority,
                        legal_basis: basis,
                        categories: DataCategories::from_bits(cats).unwrap(),
                        outcome: match o {
                            1 => Outcome::Granted,
                            2 => Outcome::PartlyGranted(ReasonCode(reason)),
                            _ => Outcome::Refused(ReasonCode(reason)),
                        },
                        accounts,
                        order: Commitment(c),
                        account_ids: Commitment(id.repeat(2).try_into().unwrap()),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn entries_round_trip(r in arb_request(), salt in any::<[u8; 32]>(), which in 0u8..3) {
            let e = match which {
                0 => Entry::LegalRequest(r),
                1 => Entry::Sealed(SealedRequest { id: r.id, month: r.month, commitment: Commitment(salt) }),
                _ => Entry::Opening(Opening { salt, request: r }),
            };
            let bytes = e.encode().unwrap();
            prop_assert_eq!(Entry::decode(&bytes), Ok(e.clone()));
            // Canonical: decoding then encoding gives the same bytes.
            prop_assert_eq!(Entry::decode(&bytes).unwrap().encode().unwrap(), bytes);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Ok(e) = Entry::decode(&bytes) {
                prop_assert_eq!(e.encode().unwrap(), bytes);
            }
        }
    }
}
