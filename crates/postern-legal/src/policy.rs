//! The published disclosure policy and the engine that applies it.
//!
//! The policy is a TOML file; [`Policy::default`] is the published one
//! ([`DEFAULT_POLICY`]): only the phone number and connection IPs, only
//! for terrorism, never to the jurisdictions on the deny list, at most a
//! few named accounts per request. Message content, contacts and groups
//! can never be put into a policy (the operator cannot read them anyway).
//!
//! [`decide`] is a pure function of the request, what the order check
//! found and which named accounts exist. It returns the outcome and the
//! reason the transparency log records (one code per request: the first
//! that applies, in the order of [`Reason`]), plus every reason that
//! applied, for the operator and the custodians.

use serde::{Deserialize, Serialize};

use postern_tlog::entry::{DataCategories, Outcome, ReasonCode};

use crate::request::{Category, Request, flags};
use crate::vault::AccountId;

/// The published policy, as shipped.
pub const DEFAULT_POLICY: &str = r#"# Postern's published disclosure policy.
#
# What may be disclosed, to whom, and for what. Every request, granted or
# refused, is recorded in the public transparency log. Message content,
# contacts and groups are never disclosed: no policy may list them.
version = 1

# Legal bases a request may cite. Anything else is refused.
legal_bases = ["terrorism"]

# Categories that may be disclosed.
categories = ["phone_number", "connection_ips"]

# Jurisdictions whose requests are always refused (ISO 3166-1 alpha-2).
deny_jurisdictions = ["BY", "CN", "IR", "KP", "RU"]

# The most accounts one request may name; more is over-broad.
max_accounts = 5
"#;

/// The largest policy file accepted, in bytes.
pub const MAX_POLICY_BYTES: usize = 64 * 1024;

/// What was wrong with a policy file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// Not TOML of the expected shape.
    #[error("the policy file is not valid: {0}")]
    Syntax(String),
    /// A field holds a value the policy may not hold.
    #[error("invalid policy: {0}")]
    Invalid(String),
}

/// A disclosure policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// The policy format version (1).
    pub version: u32,
    /// Legal bases a request may cite.
    pub legal_bases: Vec<String>,
    /// Categories that may be disclosed.
    pub categories: Vec<Category>,
    /// Jurisdictions always refused.
    #[serde(default)]
    pub deny_jurisdictions: Vec<String>,
    /// The most accounts one request may name.
    pub max_accounts: u32,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy::parse(DEFAULT_POLICY).expect("the published policy is valid")
    }
}

impl Policy {
    /// Parses and checks a policy file.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::Syntax(format!(
                "the file is larger than {MAX_POLICY_BYTES} bytes"
            )));
        }
        let p: Policy =
            toml::from_str(text).map_err(|e| PolicyError::Syntax(e.message().to_owned()))?;
        p.check()?;
        Ok(p)
    }

    fn check(&self) -> Result<(), PolicyError> {
        if self.version != 1 {
            return Err(PolicyError::Invalid(format!(
                "unsupported version {} (this build reads version 1)",
                self.version
            )));
        }
        if let Some(c) = self.categories.iter().find(|c| c.never_disclosed()) {
            return Err(PolicyError::Invalid(format!(
                "{} can never be disclosed; remove it from categories",
                c.name()
            )));
        }
        for j in &self.deny_jurisdictions {
            postern_tlog::entry::Jurisdiction::new(j).map_err(|_| {
                PolicyError::Invalid(format!("deny_jurisdictions: {j:?} is not like \"RU\""))
            })?;
        }
        for b in &self.legal_bases {
            if !(1..=postern_tlog::entry::MAX_LEGAL_BASIS).contains(&b.len())
                || !b.bytes().all(|c| (0x20..0x7f).contains(&c))
            {
                return Err(PolicyError::Invalid(format!(
                    "legal_bases: {b:?} is not 1 to 64 printable ASCII characters"
                )));
            }
        }
        if self.max_accounts == 0 {
            return Err(PolicyError::Invalid(
                "max_accounts must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Whether requests from `jurisdiction` are always refused.
    pub fn denies(&self, jurisdiction: &str) -> bool {
        self.deny_jurisdictions.iter().any(|j| j == jurisdiction)
    }
}

/// What the order check found (see [`crate::order`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OrderStatus {
    /// Signed by a court the requesting jurisdiction's anchors vouch for,
    /// every certificate valid and not revoked.
    Valid,
    /// No order, or not a valid signature over this document.
    Invalid,
    /// A valid signature, but the chain does not lead to the jurisdiction's
    /// trust anchors.
    UntrustedCourt,
    /// A certificate in the chain had expired or was not yet valid.
    Expired,
    /// A certificate in the chain is revoked.
    Revoked,
}

/// Why a request was refused or only partly granted, in the order the
/// engine checks them (the first that applies is the one logged).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The requesting jurisdiction is on the deny list.
    JurisdictionDenied,
    /// No order, or its signature does not verify over the document.
    NoValidOrder,
    /// The signing court is not trusted for that jurisdiction.
    UntrustedCourt,
    /// A certificate of the order's chain had expired.
    CertificateExpired,
    /// A certificate of the order's chain is revoked.
    CertificateRevoked,
    /// The legal basis is not one the policy covers.
    BasisNotCovered,
    /// Everyone, or more accounts than the policy allows.
    OverBroad,
    /// A category the operator never discloses.
    CategoryNeverDisclosed,
    /// A named account does not exist.
    UnknownAccount,
}

impl Reason {
    /// Every reason, in the engine's order.
    pub const ALL: [Reason; 9] = [
        Reason::JurisdictionDenied,
        Reason::NoValidOrder,
        Reason::UntrustedCourt,
        Reason::CertificateExpired,
        Reason::CertificateRevoked,
        Reason::BasisNotCovered,
        Reason::OverBroad,
        Reason::CategoryNeverDisclosed,
        Reason::UnknownAccount,
    ];

    /// The code the log records.
    pub fn code(self) -> ReasonCode {
        match self {
            Reason::JurisdictionDenied => ReasonCode::DENIED_JURISDICTION,
            Reason::NoValidOrder => ReasonCode::INVALID_ORDER,
            Reason::UntrustedCourt => ReasonCode::UNTRUSTED_COURT,
            Reason::CertificateExpired => ReasonCode::CERTIFICATE_EXPIRED,
            Reason::CertificateRevoked => ReasonCode::CERTIFICATE_REVOKED,
            Reason::BasisNotCovered => ReasonCode::OUTSIDE_POLICY,
            Reason::OverBroad => ReasonCode::OVERBROAD,
            Reason::CategoryNeverDisclosed => ReasonCode::CATEGORY_NEVER_DISCLOSED,
            Reason::UnknownAccount => ReasonCode::NO_DATA,
        }
    }

    /// A short name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Reason::JurisdictionDenied => "jurisdiction_denied",
            Reason::NoValidOrder => "no_valid_order",
            Reason::UntrustedCourt => "untrusted_court",
            Reason::CertificateExpired => "certificate_expired",
            Reason::CertificateRevoked => "certificate_revoked",
            Reason::BasisNotCovered => "basis_not_covered",
            Reason::OverBroad => "over_broad",
            Reason::CategoryNeverDisclosed => "category_never_disclosed",
            Reason::UnknownAccount => "unknown_account",
        }
    }

    /// The name of a logged code, or `other_N` for codes this build does
    /// not know (reasons the log format has that the engine does not use,
    /// like custodians declining).
    pub fn code_name(code: ReasonCode) -> String {
        if code == ReasonCode::CUSTODIANS_DECLINED {
            return "custodians_declined".into();
        }
        Reason::ALL
            .iter()
            .find(|r| r.code() == code)
            .map(|r| r.name().to_owned())
            .unwrap_or_else(|| format!("other_{}", code.0))
    }
}

/// The engine's decision on one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// What the log records.
    pub outcome: Outcome,
    /// Every reason that applied, in the engine's order.
    pub reasons: Vec<Reason>,
    /// The categories that may be disclosed (empty when refused).
    pub categories: Vec<Category>,
    /// The accounts that may be disclosed (empty when refused).
    pub accounts: Vec<AccountId>,
}

impl Decision {
    /// The granted categories as the log's flags.
    pub fn category_flags(&self) -> DataCategories {
        flags(&self.categories)
    }

    /// Whether anything may be disclosed.
    pub fn grants_anything(&self) -> bool {
        !matches!(self.outcome, Outcome::Refused(_))
    }
}

/// Decides a request. `resolved` holds, for each of the request's
/// targets in order, the account it names if one exists (the bulk target
/// never resolves).
pub fn decide(
    policy: &Policy,
    request: &Request,
    order: OrderStatus,
    resolved: &[Option<AccountId>],
) -> Decision {
    let mut reasons = Vec::new();
    let mut fatal = false;
    if policy.denies(request.jurisdiction.as_str()) {
        reasons.push(Reason::JurisdictionDenied);
        fatal = true;
    }
    match order {
        OrderStatus::Valid => {}
        OrderStatus::Invalid => reasons.push(Reason::NoValidOrder),
        OrderStatus::UntrustedCourt => reasons.push(Reason::UntrustedCourt),
        OrderStatus::Expired => reasons.push(Reason::CertificateExpired),
        OrderStatus::Revoked => reasons.push(Reason::CertificateRevoked),
    }
    fatal |= order != OrderStatus::Valid;
    if !policy.legal_bases.contains(&request.legal_basis) {
        reasons.push(Reason::BasisNotCovered);
        fatal = true;
    }
    if request.is_bulk() || request.targets.len() > policy.max_accounts as usize {
        reasons.push(Reason::OverBroad);
        fatal = true;
    }
    let categories: Vec<Category> = request
        .categories
        .iter()
        .copied()
        .filter(|c| policy.categories.contains(c))
        .collect();
    if categories.len() < request.categories.len() {
        reasons.push(Reason::CategoryNeverDisclosed);
        fatal |= categories.is_empty();
    }
    let mut accounts: Vec<AccountId> = resolved.iter().flatten().copied().collect();
    accounts.sort_unstable();
    accounts.dedup();
    if resolved.len() < request.targets.len() || resolved.iter().any(Option::is_none) {
        reasons.push(Reason::UnknownAccount);
        fatal |= accounts.is_empty();
    }
    let outcome = match reasons.first() {
        None => Outcome::Granted,
        Some(first) if fatal => Outcome::Refused(first.code()),
        Some(first) => Outcome::PartlyGranted(first.code()),
    };
    if fatal {
        return Decision {
            outcome,
            reasons,
            categories: Vec::new(),
            accounts: Vec::new(),
        };
    }
    Decision {
        outcome,
        reasons,
        categories,
        accounts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Target;
    use proptest::prelude::*;

    fn request() -> Request {
        Request::parse(
            br#"
jurisdiction = "DE"
authority = "court"
authority_name = "Amtsgericht"
case_reference = "1/26"
legal_basis = "terrorism"
categories = ["phone_number", "connection_ips"]
window = { from = 2026-11-01T00:00:00Z, until = 2026-11-28T00:00:00Z }
[[targets]]
phone = "+4915112345678"
"#,
        )
        .unwrap()
    }

    const A: Option<AccountId> = Some([1; 16]);

    #[test]
    fn the_published_policy_is_the_default() {
        let p = Policy::default();
        assert_eq!(p.legal_bases, vec!["terrorism".to_owned()]);
        assert_eq!(
            p.categories,
            vec![Category::PhoneNumber, Category::ConnectionIps]
        );
        assert!(p.denies("RU") && !p.denies("DE"));
    }

    #[test]
    fn a_valid_terrorism_order_is_granted() {
        let d = decide(&Policy::default(), &request(), OrderStatus::Valid, &[A]);
        assert_eq!(d.outcome, Outcome::Granted);
        assert_eq!(d.accounts, vec![[1; 16]]);
        assert_eq!(d.categories.len(), 2);
    }

    #[test]
    fn each_refusal_has_its_reason() {
        let p = Policy::default();
        let refused = |r: &Request, o, res: &[Option<AccountId>]| {
            let d = decide(&p, r, o, res);
            assert!(d.accounts.is_empty() && d.categories.is_empty());
            match d.outcome {
                Outcome::Refused(code) => code,
                other => panic!("{other:?}"),
            }
        };
        let r = request();
        assert_eq!(
            refused(&r, OrderStatus::Invalid, &[A]),
            ReasonCode::INVALID_ORDER
        );
        assert_eq!(
            refused(&r, OrderStatus::UntrustedCourt, &[A]),
            ReasonCode::UNTRUSTED_COURT
        );
        assert_eq!(
            refused(&r, OrderStatus::Expired, &[A]),
            ReasonCode::CERTIFICATE_EXPIRED
        );
        assert_eq!(
            refused(&r, OrderStatus::Revoked, &[A]),
            ReasonCode::CERTIFICATE_REVOKED
        );
        assert_eq!(
            refused(&r, OrderStatus::Valid, &[None]),
            ReasonCode::NO_DATA
        );

        let mut ru = request();
        ru.jurisdiction = postern_tlog::entry::Jurisdiction::new("RU").unwrap();
        // Denied first, even with a valid order.
        assert_eq!(
            refused(&ru, OrderStatus::Valid, &[A]),
            ReasonCode::DENIED_JURISDICTION
        );

        let mut fraud = request();
        fraud.legal_basis = "fraud".into();
        assert_eq!(
            refused(&fraud, OrderStatus::Valid, &[A]),
            ReasonCode::OUTSIDE_POLICY
        );

        let mut content = request();
        content.categories = vec![Category::MessageContent];
        assert_eq!(
            refused(&content, OrderStatus::Valid, &[A]),
            ReasonCode::CATEGORY_NEVER_DISCLOSED
        );

        let mut bulk = request();
        bulk.targets = vec![Target::Everyone];
        assert_eq!(
            refused(&bulk, OrderStatus::Valid, &[None]),
            ReasonCode::OVERBROAD
        );
        let mut many = request();
        many.targets = (0..6u8).map(|i| Target::Account([i; 16])).collect();
        let six: Vec<_> = (0..6u8).map(|i| Some([i; 16])).collect();
        assert_eq!(
            refused(&many, OrderStatus::Valid, &six),
            ReasonCode::OVERBROAD
        );
    }

    #[test]
    fn partly_granted_requests_keep_only_what_the_policy_allows() {
        let p = Policy::default();
        let mut r = request();
        r.categories.push(Category::Contacts);
        r.targets.push(Target::Username("ghost".into()));
        let d = decide(&p, &r, OrderStatus::Valid, &[A, None]);
        assert_eq!(
            d.outcome,
            Outcome::PartlyGranted(ReasonCode::CATEGORY_NEVER_DISCLOSED)
        );
        assert_eq!(
            d.reasons,
            vec![Reason::CategoryNeverDisclosed, Reason::UnknownAccount]
        );
        assert_eq!(
            d.categories,
            vec![Category::PhoneNumber, Category::ConnectionIps]
        );
        assert_eq!(d.accounts, vec![[1; 16]]);
    }

    #[test]
    fn policies_cannot_list_what_is_never_disclosed() {
        let bad =
            DEFAULT_POLICY.replace("\"connection_ips\"]", "\"connection_ips\", \"contacts\"]");
        assert!(matches!(Policy::parse(&bad), Err(PolicyError::Invalid(_))));
        let bad = DEFAULT_POLICY.replace("\"RU\"", "\"Russia\"");
        assert!(matches!(Policy::parse(&bad), Err(PolicyError::Invalid(_))));
        let bad = DEFAULT_POLICY.replace("max_accounts = 5", "max_acounts = 5");
        assert!(matches!(Policy::parse(&bad), Err(PolicyError::Syntax(_))));
        let bad = DEFAULT_POLICY.replace("version = 1", "version = 2");
        assert!(matches!(Policy::parse(&bad), Err(PolicyError::Invalid(_))));
    }

    proptest! {
        // Whatever comes in, nothing the policy forbids is ever granted.
        #[test]
        fn nothing_forbidden_is_ever_granted(
            cats in prop::collection::vec(prop::sample::select(Category::ALL.to_vec()), 1..6),
            order in prop::sample::select(vec![OrderStatus::Valid, OrderStatus::Invalid, OrderStatus::UntrustedCourt, OrderStatus::Expired, OrderStatus::Revoked]),
            basis in prop::sample::select(vec!["terrorism", "fraud", "Terrorism"]),
            juris in prop::sample::select(vec!["DE", "RU", "US", "CN"]),
            n in 1usize..9,
            known in any::<u16>(),
        ) {
            let p = Policy::default();
            let mut r = request();
            r.categories = cats;
            r.categories.sort_unstable();
            r.categories.dedup();
            r.legal_basis = basis.into();
            r.jurisdiction = postern_tlog::entry::Jurisdiction::new(juris).unwrap();
            r.targets = (0..n as u8).map(|i| Target::Account([i; 16])).collect();
            let resolved: Vec<_> = (0..n as u8).map(|i| (known >> i & 1 == 1).then_some([i; 16])).collect();
            let d = decide(&p, &r, order, &resolved);
            if d.grants_anything() {
                prop_assert_eq!(order, OrderStatus::Valid);
                prop_assert_eq!(basis, "terrorism");
                prop_assert!(!p.denies(juris));
                prop_assert!(n <= p.max_accounts as usize);
                prop_assert!(!d.categories.is_empty() && d.categories.iter().all(|c| p.categories.contains(c)));
                prop_assert!(!d.accounts.is_empty());
                prop_assert!(d.accounts.iter().all(|a| resolved.contains(&Some(*a))));
            } else {
                prop_assert!(d.categories.is_empty() && d.accounts.is_empty());
            }
        }
    }
}
