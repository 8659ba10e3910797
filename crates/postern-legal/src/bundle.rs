//! A case as the log records it, and the bundle a custodian reviews.
//!
//! [`record_case`] turns a request and its decision into the log entry
//! (no personal data: the order and the accounts appear as salted
//! commitments; a gagged request is sealed, and its opening kept until the
//! gag lapses).
//!
//! A [`Bundle`] is what the operator sends each custodian: the request
//! file, the order and its signature, the decision, the logged entry (and
//! its opening when sealed), the salts that open its commitments, an
//! offline inclusion proof (`c2sp.org/tlog-proof@v1`) of the entry in a
//! checkpoint, the request's one-time disclosure key, and the wrapped
//! shares of the accounts granted. [`Bundle::check`] is the custodian's
//! gate: it passes only if the proof verifies in a checkpoint signed by
//! the log and cosigned by the custodian's witness quorum, the entry
//! records a grant, and every field of the entry matches the request,
//! the order and the accounts in the bundle. A custodian therefore never
//! releases a share for a decision the public log does not show, nor for
//! an account the logged decision does not cover.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use postern_tlog::checkpoint::Policy as LogPolicy;
use postern_tlog::entry::{Commitment, Entry, LegalRequest, Month, Opening, Outcome};
use postern_tlog::proof::ProofBundle;

use crate::custodian::WrappedShare;
use crate::order::{TrustStore, verify_order};
use crate::policy::{Decision, Reason};
use crate::request::{Category, Request};
use crate::vault::{AccountId, KEY_LEN};

/// The largest bundle accepted, in bytes (an order document of
/// [`crate::order::MAX_DOCUMENT_BYTES`] in base64, and room to spare).
pub const MAX_BUNDLE_BYTES: usize = 96 * 1024 * 1024;

/// What the log records for a case, and what the operator keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedCase {
    /// The entry to append now.
    pub entry: Entry,
    /// The request record (what the entry shows, or seals).
    pub record: LegalRequest,
    /// For a gagged request: the opening to append when the gag lapses.
    pub opening: Option<Opening>,
    /// The salt of the order commitment.
    pub order_salt: [u8; 32],
    /// The salt of the accounts commitment.
    pub accounts_salt: [u8; 32],
}

/// Builds the log entry for a decided request received at `received_at`
/// (UNIX seconds). The accounts commitment covers the accounts the
/// decision grants (none when refused); the count is of the accounts the
/// request named.
pub fn record_case(
    id: [u8; 16],
    received_at: u64,
    request: &Request,
    decision: &Decision,
    document: &[u8],
) -> RecordedCase {
    let order_salt: [u8; 32] = rand::random();
    let accounts_salt: [u8; 32] = rand::random();
    let (y, m) = crate::date::year_month(received_at);
    let record = LegalRequest {
        id,
        month: Month::new(y as u16, m as u8).expect("a UNIX time after 2000 has a valid month"),
        jurisdiction: request.jurisdiction,
        authority: request.authority,
        legal_basis: request.legal_basis.clone(),
        categories: request.category_flags(),
        outcome: decision.outcome,
        accounts: request.targets.len() as u32,
        order: Commitment::to_order(&order_salt, document),
        account_ids: Commitment::to_accounts(&accounts_salt, &decision.accounts),
    };
    let (entry, opening) = if request.gag_days > 0 {
        let (sealed, opening) = record.seal().expect("a parsed request encodes");
        (Entry::Sealed(sealed), Some(opening))
    } else {
        (Entry::LegalRequest(record.clone()), None)
    };
    RecordedCase {
        entry,
        record,
        opening,
        order_salt,
        accounts_salt,
    }
}

/// Why a bundle was not approved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Not a bundle this build reads.
    #[error("malformed bundle: {0}")]
    Malformed(String),
    /// The custodian's log policy requires no witness: a decision could be
    /// shown on a log view nobody else sees.
    #[error("the log policy must require at least one witness cosignature")]
    NoWitnessQuorum,
    /// The inclusion proof did not verify.
    #[error("the decision is not proven to be in the public log: {0}")]
    NotInLog(String),
    /// The logged entry does not record a grant.
    #[error("the logged decision is not a grant ({0})")]
    NotGranted(String),
    /// The logged entry and the bundle disagree.
    #[error("the log entry does not match the bundle: {0}")]
    Mismatch(&'static str),
    /// The order does not verify against the custodian's own anchors.
    #[error("the order does not verify: {0}")]
    Order(String),
}

fn malformed(e: impl std::fmt::Display) -> BundleError {
    BundleError::Malformed(e.to_string())
}

/// One custodian's wrapped share of one account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleShare {
    /// The account (32 hex digits).
    pub account: String,
    /// The wrapped share ([`WrappedShare::encode`], hex).
    pub wrapped: String,
}

/// The decision, as the bundle carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleDecision {
    /// Every reason that applied.
    pub reasons: Vec<Reason>,
    /// The categories granted.
    pub categories: Vec<Category>,
    /// The accounts granted (32 hex digits each).
    pub accounts: Vec<String>,
}

/// What a custodian reviews and approves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bundle {
    /// Format version (1).
    pub version: u32,
    /// The request file, verbatim.
    pub request_toml: String,
    /// The order document (base64).
    pub order: String,
    /// The order's detached CMS signature (base64).
    pub order_signature: String,
    /// When the request was received (UNIX seconds).
    pub received_at: u64,
    /// The decision.
    pub decision: BundleDecision,
    /// The logged entry (hex of its canonical encoding).
    pub entry: String,
    /// For a sealed entry, its opening (hex of the encoded opening entry).
    pub opening: Option<String>,
    /// Salt of the order commitment (hex).
    pub order_salt: String,
    /// Salt of the accounts commitment (hex).
    pub accounts_salt: String,
    /// `c2sp.org/tlog-proof@v1` of the entry.
    pub proof: String,
    /// The request's disclosure public key (hex).
    pub disclosure_key: String,
    /// The wrapped shares of the granted accounts, every custodian's.
    pub shares: Vec<BundleShare>,
}

/// What a checked bundle lets a custodian release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    /// The request's id, which releases are bound to.
    pub request_id: [u8; 16],
    /// The logged record.
    pub record: LegalRequest,
    /// The parsed request.
    pub request: Request,
    /// The accounts granted.
    pub accounts: Vec<AccountId>,
    /// This custodian's wrapped share of each granted account.
    pub shares: Vec<(AccountId, WrappedShare)>,
    /// Where to seal released shares.
    pub disclosure_key: [u8; KEY_LEN],
    /// The entry's index in the log.
    pub log_index: u64,
    /// The size of the checkpoint it is proven in.
    pub checkpoint_size: u64,
}

fn hex_array<const N: usize>(s: &str, what: &'static str) -> Result<[u8; N], BundleError> {
    hex::decode(s)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| BundleError::Malformed(format!("{what}: expected {} hex digits", 2 * N)))
}

fn outcome_name(o: Outcome) -> String {
    match o {
        Outcome::Granted => "granted".into(),
        Outcome::PartlyGranted(c) => format!("partly granted ({})", Reason::code_name(c)),
        Outcome::Refused(c) => format!("refused ({})", Reason::code_name(c)),
    }
}

impl Bundle {
    /// Assembles a bundle.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        request_toml: &str,
        document: &[u8],
        signature: &[u8],
        received_at: u64,
        decision: &Decision,
        case: &RecordedCase,
        proof: &ProofBundle,
        disclosure_key: [u8; KEY_LEN],
        shares: &[(AccountId, WrappedShare)],
    ) -> Bundle {
        Bundle {
            version: 1,
            request_toml: request_toml.to_owned(),
            order: B64.encode(document),
            order_signature: B64.encode(signature),
            received_at,
            decision: BundleDecision {
                reasons: decision.reasons.clone(),
                categories: decision.categories.clone(),
                accounts: decision.accounts.iter().map(hex::encode).collect(),
            },
            entry: hex::encode(case.entry.encode().expect("a recorded entry encodes")),
            opening: case.opening.as_ref().map(|o| {
                hex::encode(
                    Entry::Opening(o.clone())
                        .encode()
                        .expect("a recorded entry encodes"),
                )
            }),
            order_salt: hex::encode(case.order_salt),
            accounts_salt: hex::encode(case.accounts_salt),
            proof: proof.to_string(),
            disclosure_key: hex::encode(disclosure_key),
            shares: shares
                .iter()
                .map(|(a, w)| BundleShare {
                    account: hex::encode(a),
                    wrapped: hex::encode(w.encode()),
                })
                .collect(),
        }
    }

    /// Parses a bundle (JSON).
    pub fn parse(bytes: &[u8]) -> Result<Bundle, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::Malformed(format!(
                "{} bytes; at most {MAX_BUNDLE_BYTES}",
                bytes.len()
            )));
        }
        let b: Bundle = serde_json::from_slice(bytes).map_err(malformed)?;
        if b.version != 1 {
            return Err(BundleError::Malformed(format!(
                "version {} (this build reads 1)",
                b.version
            )));
        }
        Ok(b)
    }

    /// The JSON form.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a bundle serialises")
    }

    /// The order document.
    pub fn document(&self) -> Result<Vec<u8>, BundleError> {
        B64.decode(&self.order).map_err(malformed)
    }

    /// The order's signature.
    pub fn signature(&self) -> Result<Vec<u8>, BundleError> {
        B64.decode(&self.order_signature).map_err(malformed)
    }

    /// The custodian's gate (see the module docs). `me` is the custodian's
    /// public key; `log` names the log key, the witnesses and the quorum
    /// the custodian trusts (at least one witness); `trust`, if the
    /// custodian keeps its own court anchors, re-verifies the order at the
    /// given time.
    pub fn check(
        &self,
        me: &[u8; KEY_LEN],
        log: &LogPolicy,
        trust: Option<(&TrustStore, u64)>,
    ) -> Result<Approval, BundleError> {
        let mut approval = self.verify(log, trust)?;
        for s in &self.shares {
            let account = hex_array::<16>(&s.account, "shares.account")?;
            let wrapped = WrappedShare::decode(&hex::decode(&s.wrapped).map_err(malformed)?)
                .map_err(malformed)?;
            if !approval.accounts.contains(&account) {
                return Err(BundleError::Mismatch(
                    "a share for an account the decision does not grant",
                ));
            }
            if wrapped.custodian == *me && !approval.shares.iter().any(|(a, _)| *a == account) {
                approval.shares.push((account, wrapped));
            }
        }
        Ok(approval)
    }

    /// Everything [`Bundle::check`] checks but the shares: what the
    /// operator re-checks before a disclosure. The approval it returns
    /// holds no shares.
    pub fn verify(
        &self,
        log: &LogPolicy,
        trust: Option<(&TrustStore, u64)>,
    ) -> Result<Approval, BundleError> {
        if log.quorum == 0 || log.witnesses.is_empty() {
            return Err(BundleError::NoWitnessQuorum);
        }
        let request = Request::parse(self.request_toml.as_bytes()).map_err(malformed)?;
        let document = self.document()?;
        let entry_bytes = hex::decode(&self.entry).map_err(malformed)?;
        let proof =
            ProofBundle::parse(&self.proof).map_err(|e| BundleError::NotInLog(e.to_string()))?;
        let opened = proof
            .verify(&entry_bytes, log)
            .map_err(|e| BundleError::NotInLog(e.to_string()))?;

        let record = match Entry::decode(&entry_bytes).map_err(malformed)? {
            Entry::LegalRequest(r) => {
                if self.opening.is_some() {
                    return Err(BundleError::Mismatch(
                        "an opening for an entry that is not sealed",
                    ));
                }
                r
            }
            Entry::Sealed(sealed) => {
                let hex_opening = self
                    .opening
                    .as_ref()
                    .ok_or(BundleError::Mismatch("a sealed entry without its opening"))?;
                let bytes = hex::decode(hex_opening).map_err(malformed)?;
                match Entry::decode(&bytes).map_err(malformed)? {
                    Entry::Opening(o) if o.opens(&sealed) => o.request,
                    _ => {
                        return Err(BundleError::Mismatch(
                            "the opening does not open the sealed entry",
                        ));
                    }
                }
            }
            Entry::Opening(_) => {
                return Err(BundleError::Mismatch(
                    "the logged entry is an opening, not a request",
                ));
            }
            Entry::Disclosure(_) => {
                return Err(BundleError::Mismatch(
                    "the logged entry is a disclosure, not a request",
                ));
            }
        };
        if matches!(record.outcome, Outcome::Refused(_)) {
            return Err(BundleError::NotGranted(outcome_name(record.outcome)));
        }
        let checks: [(bool, &'static str); 5] = [
            (record.jurisdiction == request.jurisdiction, "jurisdiction"),
            (record.authority == request.authority, "authority"),
            (record.legal_basis == request.legal_basis, "legal basis"),
            (record.categories == request.category_flags(), "categories"),
            (
                record.accounts as usize == request.targets.len(),
                "number of accounts",
            ),
        ];
        if let Some((_, what)) = checks.iter().find(|(ok, _)| !ok) {
            return Err(BundleError::Mismatch(what));
        }
        let order_salt = hex_array::<32>(&self.order_salt, "order_salt")?;
        if !record.order.opens("order", &order_salt, &document) {
            return Err(BundleError::Mismatch("the order is not the one logged"));
        }
        let accounts = self
            .decision
            .accounts
            .iter()
            .map(|a| hex_array::<16>(a, "decision.accounts"))
            .collect::<Result<Vec<_>, _>>()?;
        let accounts_salt = hex_array::<32>(&self.accounts_salt, "accounts_salt")?;
        if accounts.is_empty()
            || record.account_ids != Commitment::to_accounts(&accounts_salt, &accounts)
        {
            return Err(BundleError::Mismatch(
                "the accounts are not the ones logged",
            ));
        }
        if self.decision.categories.is_empty()
            || self
                .decision
                .categories
                .iter()
                .any(|c| !request.categories.contains(c) || c.never_disclosed())
        {
            return Err(BundleError::Mismatch("the granted categories"));
        }
        if let Some((anchors, now)) = trust {
            verify_order(
                anchors,
                request.jurisdiction.as_str(),
                &document,
                &self.signature()?,
                now,
            )
            .map_err(|e| BundleError::Order(e.to_string()))?;
        }

        Ok(Approval {
            request_id: record.id,
            record,
            request,
            accounts,
            shares: Vec::new(),
            disclosure_key: hex_array::<32>(&self.disclosure_key, "disclosure_key")?,
            log_index: proof.index,
            checkpoint_size: opened.checkpoint.size,
        })
    }

    /// A human-readable summary for `postern custodian review`.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        match Request::parse(self.request_toml.as_bytes()) {
            Ok(r) => {
                s.push_str(&format!(
                    "request: {} {} ({}), case {}\nlegal basis: {}{}\ncategories asked: {}\ntargets named: {}\nwindow: {} to {}\ngag: {} days\n",
                    r.jurisdiction.as_str(),
                    r.authority_name,
                    format!("{:?}", r.authority).to_lowercase(),
                    r.case_reference,
                    r.legal_basis,
                    r.statute.as_deref().map(|st| format!(" ({st})")).unwrap_or_default(),
                    r.categories.iter().map(|c| c.name()).collect::<Vec<_>>().join(", "),
                    r.targets.len(),
                    crate::date::format_datetime(r.window.0),
                    crate::date::format_datetime(r.window.1),
                    r.gag_days,
                ));
            }
            Err(e) => s.push_str(&format!("request: unreadable ({e})\n")),
        }
        if let Ok(sig) = self.signature() {
            match crate::order::inspect(&sig) {
                Ok((signer, n)) => s.push_str(&format!(
                    "order signed by: {signer} ({n} certificates carried)\n"
                )),
                Err(e) => s.push_str(&format!("order signature: unreadable ({e})\n")),
            }
        }
        s.push_str(&format!(
            "decision: categories {}; {} account(s); reasons: {}\n",
            self.decision
                .categories
                .iter()
                .map(|c| c.name())
                .collect::<Vec<_>>()
                .join(", "),
            self.decision.accounts.len(),
            if self.decision.reasons.is_empty() {
                "none".to_owned()
            } else {
                self.decision
                    .reasons
                    .iter()
                    .map(|r| r.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ));
        if let Ok(p) = ProofBundle::parse(&self.proof) {
            s.push_str(&format!(
                "log: entry {} (a proof in a checkpoint follows)\n",
                p.index
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{OrderStatus, Policy, decide};
    use postern_tlog::note::{Algorithm, Signer};
    use proptest::prelude::*;

    const TOML: &str = r#"
jurisdiction = "DE"
authority = "court"
authority_name = "Amtsgericht"
case_reference = "1/26"
legal_basis = "terrorism"
categories = ["phone_number"]
window = { from = 2026-11-01T00:00:00Z, until = 2026-11-28T00:00:00Z }
gag_days = 30
[[targets]]
account = "01010101010101010101010101010101"
"#;

    fn log_policy() -> LogPolicy {
        LogPolicy {
            log: Signer::from_seed("log.example", Algorithm::Ed25519, [1; 32])
                .unwrap()
                .verifier(),
            witnesses: vec![
                Signer::from_seed("witness.example", Algorithm::CosignatureV1, [2; 32])
                    .unwrap()
                    .verifier(),
            ],
            quorum: 1,
        }
    }

    #[test]
    fn a_gagged_case_is_sealed_and_its_opening_kept() {
        let r = Request::parse(TOML.as_bytes()).unwrap();
        let d = decide(&Policy::default(), &r, OrderStatus::Valid, &[Some([1; 16])]);
        let case = record_case([4; 16], 1_795_000_000, &r, &d, b"order");
        let Entry::Sealed(sealed) = &case.entry else {
            panic!("{:?}", case.entry)
        };
        assert!(case.opening.as_ref().unwrap().opens(sealed));
        assert_eq!(case.record.month, Month::new(2026, 11).unwrap());
        assert!(case.record.order.opens("order", &case.order_salt, b"order"));
        let ungagged = Request::parse(TOML.replace("gag_days = 30", "").as_bytes()).unwrap();
        let case = record_case([4; 16], 1_795_000_000, &ungagged, &d, b"order");
        assert!(matches!(case.entry, Entry::LegalRequest(_)) && case.opening.is_none());
    }

    #[test]
    fn malformed_bundles_are_refused_with_reasons() {
        assert!(matches!(
            Bundle::parse(b"{"),
            Err(BundleError::Malformed(_))
        ));
        assert!(matches!(
            Bundle::parse(b"{\"version\": 2}"),
            Err(BundleError::Malformed(_))
        ));
        let huge = vec![b' '; MAX_BUNDLE_BYTES + 1];
        assert!(matches!(
            Bundle::parse(&huge),
            Err(BundleError::Malformed(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bundles_never_pass(
            entry in prop::collection::vec(any::<u8>(), 0..120),
            proof in "\\PC{0,200}",
            salt in "[0-9a-f]{0,64}",
            toml in prop::sample::select(vec![TOML.to_owned(), String::new(), "x = 1".into()]),
        ) {
            let b = Bundle {
                version: 1,
                request_toml: toml,
                order: String::new(),
                order_signature: String::new(),
                received_at: 0,
                decision: BundleDecision { reasons: vec![], categories: vec![Category::PhoneNumber], accounts: vec![hex::encode([1u8; 16])] },
                entry: hex::encode(&entry),
                opening: None,
                order_salt: salt.clone(),
                accounts_salt: salt,
                proof: format!("c2sp.org/tlog-proof@v1\n{proof}"),
                disclosure_key: hex::encode([0u8; 32]),
                shares: vec![],
            };
            let json = b.to_json();
            let parsed = Bundle::parse(json.as_bytes()).unwrap();
            prop_assert_eq!(&parsed, &b);
            let _ = parsed.summary();
            prop_assert!(parsed.check(&[0; 32], &log_policy(), None).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            if let Ok(b) = Bundle::parse(&bytes) {
                prop_assert!(b.check(&[0; 32], &log_policy(), None).is_err());
            }
        }
    }
}
