//! The request format: what an authority asked for, as the operator
//! transcribes it into `REQUEST.toml`.
//!
//! ```toml
//! jurisdiction = "DE"                     # ISO 3166-1 alpha-2
//! authority = "court"                     # court, prosecutor, police, intelligence, regulator, other
//! authority_name = "Amtsgericht Berlin-Tiergarten"
//! case_reference = "351 Gs 1234/26"
//! legal_basis = "terrorism"               # a basis the policy names
//! statute = "StGB 129a"                   # optional: the law cited
//! categories = ["phone_number", "connection_ips"]
//! window = { from = 2026-11-01T00:00:00Z, until = 2026-11-28T00:00:00Z }
//! gag_days = 90                           # optional: how long the member may not be told
//!
//! [[targets]]
//! phone = "+4915112345678"                # or username = "…", or account = "32 hex digits"
//! ```
//!
//! `all_users = true` (or a target of `"*"`) asks for everyone: such a
//! request parses, so that it can be refused and logged as over-broad.
//!
//! Parsing rejects unknown fields, values out of range and files over
//! [`MAX_REQUEST_BYTES`]; errors say which field was wrong. The file names
//! people (phone numbers, usernames): it is never logged, and only its
//! non-personal fields reach the transparency log.

use serde::Deserialize;

use postern_tlog::entry::{AuthorityType, DataCategories, Jurisdiction};

use crate::date::days_from_civil;

/// The largest request file accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The most targets a request file may name (the policy's own limit, far
/// lower, decides what is over-broad; this one only bounds parsing).
pub const MAX_TARGETS: usize = 1000;

/// The longest free-text field (authority name, case reference, statute).
pub const MAX_TEXT: usize = 256;

/// The longest gag period, in days (ten years).
pub const MAX_GAG_DAYS: u32 = 3650;

/// What was wrong with a request file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The file is larger than [`MAX_REQUEST_BYTES`].
    #[error("the request file is {0} bytes; at most {MAX_REQUEST_BYTES} are accepted")]
    TooLarge(usize),
    /// Not UTF-8 TOML of the expected shape.
    #[error("the request file is not valid: {0}")]
    Syntax(String),
    /// A field holds a value out of range.
    #[error("invalid {field}: {why}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

fn invalid(field: &'static str, why: impl Into<String>) -> RequestError {
    RequestError::Invalid {
        field,
        why: why.into(),
    }
}

/// A category of data a request may ask for.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// The account's phone number.
    PhoneNumber,
    /// The IP addresses it connected from, with times.
    ConnectionIps,
    /// Registration date, devices, username.
    AccountMetadata,
    /// Message content: never disclosed (the operator cannot read it).
    MessageContent,
    /// Who the account talks to: never disclosed.
    Contacts,
    /// Which groups it is in: never disclosed.
    Groups,
}

impl Category {
    /// Every category.
    pub const ALL: [Category; 6] = [
        Category::PhoneNumber,
        Category::ConnectionIps,
        Category::AccountMetadata,
        Category::MessageContent,
        Category::Contacts,
        Category::Groups,
    ];

    /// Whether no policy may ever disclose this category.
    pub fn never_disclosed(self) -> bool {
        matches!(
            self,
            Category::MessageContent | Category::Contacts | Category::Groups
        )
    }

    /// The log's flag for this category.
    pub fn flag(self) -> DataCategories {
        match self {
            Category::PhoneNumber => DataCategories::PHONE_NUMBER,
            Category::ConnectionIps => DataCategories::CONNECTION_IPS,
            Category::AccountMetadata => DataCategories::ACCOUNT_METADATA,
            Category::MessageContent => DataCategories::MESSAGE_CONTENT,
            Category::Contacts => DataCategories::CONTACTS,
            Category::Groups => DataCategories::GROUPS,
        }
    }

    /// The name used in files and reports.
    pub fn name(self) -> &'static str {
        match self {
            Category::PhoneNumber => "phone_number",
            Category::ConnectionIps => "connection_ips",
            Category::AccountMetadata => "account_metadata",
            Category::MessageContent => "message_content",
            Category::Contacts => "contacts",
            Category::Groups => "groups",
        }
    }
}

/// The log's flags for a set of categories.
pub fn flags(categories: &[Category]) -> DataCategories {
    categories
        .iter()
        .fold(DataCategories::default(), |acc, c| acc.union(c.flag()))
}

/// Whom a request names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A phone number, E.164 (`+` and 7–15 digits).
    Phone(String),
    /// A username, without `@`.
    Username(String),
    /// An account id.
    Account([u8; 16]),
    /// Every account: always over-broad.
    Everyone,
}

/// A parsed, checked request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The requesting authority's jurisdiction.
    pub jurisdiction: Jurisdiction,
    /// The kind of authority.
    pub authority: AuthorityType,
    /// Its name, as on the order.
    pub authority_name: String,
    /// The case reference on the order.
    pub case_reference: String,
    /// The legal basis, as the policy names bases (printable ASCII, 1–64
    /// bytes).
    pub legal_basis: String,
    /// The law cited, if given.
    pub statute: Option<String>,
    /// The categories asked for, sorted, without duplicates.
    pub categories: Vec<Category>,
    /// The time window for connection records: `[from, until)`, UNIX
    /// seconds.
    pub window: (u64, u64),
    /// Days the member may not be told (0: no gag).
    pub gag_days: u32,
    /// The accounts named, without duplicates.
    pub targets: Vec<Target>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    jurisdiction: String,
    authority: String,
    authority_name: String,
    case_reference: String,
    legal_basis: String,
    statute: Option<String>,
    categories: Vec<Category>,
    window: RawWindow,
    #[serde(default)]
    gag_days: u32,
    #[serde(default)]
    all_users: bool,
    #[serde(default)]
    targets: Vec<RawTarget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    from: toml::value::Datetime,
    until: toml::value::Datetime,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    phone: Option<String>,
    username: Option<String>,
    account: Option<String>,
}

/// UNIX seconds of a TOML date-time, which must carry a date, a time and
/// an offset (a local time is ambiguous).
pub fn unix_seconds(dt: &toml::value::Datetime) -> Option<u64> {
    let (date, time, offset) = (dt.date?, dt.time?, dt.offset?);
    if !(1..=12).contains(&date.month) || !(1..=31).contains(&date.day) {
        return None;
    }
    let days = days_from_civil(
        i64::from(date.year),
        u32::from(date.month),
        u32::from(date.day),
    );
    let offset_minutes = match offset {
        toml::value::Offset::Z => 0,
        toml::value::Offset::Custom { minutes } => i64::from(minutes),
    };
    let secs = days * 86_400
        + i64::from(time.hour) * 3600
        + i64::from(time.minute) * 60
        + i64::from(time.second)
        - offset_minutes * 60;
    u64::try_from(secs).ok()
}

fn text(field: &'static str, s: String) -> Result<String, RequestError> {
    if s.trim().is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if s.len() > MAX_TEXT {
        return Err(invalid(field, format!("longer than {MAX_TEXT} bytes")));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid(field, "holds control characters"));
    }
    Ok(s)
}

fn authority(s: &str) -> Result<AuthorityType, RequestError> {
    Ok(match s {
        "court" => AuthorityType::Court,
        "prosecutor" => AuthorityType::Prosecutor,
        "police" => AuthorityType::Police,
        "intelligence" => AuthorityType::Intelligence,
        "regulator" => AuthorityType::Regulator,
        "other" => AuthorityType::Other,
        _ => {
            return Err(invalid(
                "authority",
                "expected court, prosecutor, police, intelligence, regulator or other",
            ));
        }
    })
}

/// Whether `s` is an E.164 number: `+` and 7–15 digits, no leading 0.
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

fn target(t: RawTarget) -> Result<Target, RequestError> {
    match (t.phone, t.username, t.account) {
        (Some(p), None, None) if p == "*" => Ok(Target::Everyone),
        (Some(p), None, None) => {
            if is_e164(&p) {
                Ok(Target::Phone(p))
            } else {
                Err(invalid(
                    "targets.phone",
                    "expected E.164: + and 7 to 15 digits",
                ))
            }
        }
        (None, Some(u), None) if u == "*" => Ok(Target::Everyone),
        (None, Some(u), None) => {
            let u = u.strip_prefix('@').unwrap_or(&u).to_owned();
            if (1..=64).contains(&u.len())
                && u.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
            {
                Ok(Target::Username(u))
            } else {
                Err(invalid(
                    "targets.username",
                    "expected 1 to 64 letters, digits, '_' or '.'",
                ))
            }
        }
        (None, None, Some(a)) if a == "*" => Ok(Target::Everyone),
        (None, None, Some(a)) => hex::decode(&a)
            .ok()
            .and_then(|v| <[u8; 16]>::try_from(v).ok())
            .map(Target::Account)
            .ok_or_else(|| invalid("targets.account", "expected 32 hex digits")),
        _ => Err(invalid(
            "targets",
            "each target names exactly one of phone, username, account",
        )),
    }
}

impl Request {
    /// Parses and checks a request file.
    pub fn parse(bytes: &[u8]) -> Result<Request, RequestError> {
        if bytes.len() > MAX_REQUEST_BYTES {
            return Err(RequestError::TooLarge(bytes.len()));
        }
        let s = std::str::from_utf8(bytes)
            .map_err(|_| RequestError::Syntax("the file is not UTF-8".into()))?;
        let raw: RawRequest =
            toml::from_str(s).map_err(|e| RequestError::Syntax(e.message().to_owned()))?;

        let jurisdiction = Jurisdiction::new(&raw.jurisdiction).map_err(|_| {
            invalid(
                "jurisdiction",
                "expected an ISO 3166-1 alpha-2 code in capitals, like DE",
            )
        })?;
        let legal_basis = raw.legal_basis;
        if !(1..=postern_tlog::entry::MAX_LEGAL_BASIS).contains(&legal_basis.len())
            || !legal_basis.bytes().all(|b| (0x20..0x7f).contains(&b))
        {
            return Err(invalid(
                "legal_basis",
                "expected 1 to 64 printable ASCII characters",
            ));
        }
        let mut categories = raw.categories;
        if categories.is_empty() {
            return Err(invalid("categories", "name at least one category"));
        }
        categories.sort_unstable();
        categories.dedup();

        let from = unix_seconds(&raw.window.from).ok_or_else(|| {
            invalid(
                "window.from",
                "expected a date-time with offset, like 2026-11-01T00:00:00Z",
            )
        })?;
        let until = unix_seconds(&raw.window.until).ok_or_else(|| {
            invalid(
                "window.until",
                "expected a date-time with offset, like 2026-11-28T00:00:00Z",
            )
        })?;
        if from >= until {
            return Err(invalid("window", "from must be before until"));
        }
        if raw.gag_days > MAX_GAG_DAYS {
            return Err(invalid("gag_days", format!("at most {MAX_GAG_DAYS} days")));
        }
        if raw.targets.len() > MAX_TARGETS {
            return Err(invalid(
                "targets",
                format!("at most {MAX_TARGETS} per request file"),
            ));
        }
        let mut targets: Vec<Target> = Vec::new();
        if raw.all_users {
            targets.push(Target::Everyone);
        }
        for t in raw.targets {
            let t = target(t)?;
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
        if targets.is_empty() {
            return Err(invalid("targets", "name at least one account"));
        }
        Ok(Request {
            jurisdiction,
            authority: authority(&raw.authority)?,
            authority_name: text("authority_name", raw.authority_name)?,
            case_reference: text("case_reference", raw.case_reference)?,
            legal_basis,
            statute: raw.statute.map(|s| text("statute", s)).transpose()?,
            categories,
            window: (from, until),
            gag_days: raw.gag_days,
            targets,
        })
    }

    /// The log's flags for the categories asked for.
    pub fn category_flags(&self) -> DataCategories {
        flags(&self.categories)
    }

    /// Whether the request asks for every account.
    pub fn is_bulk(&self) -> bool {
        self.targets.contains(&Target::Everyone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) const GOOD: &str = r#"
jurisdiction = "DE"
authority = "court"
authority_name = "Amtsgericht Berlin-Tiergarten"
case_reference = "351 Gs 1234/26"
legal_basis = "terrorism"
statute = "StGB 129a"
categories = ["connection_ips", "phone_number", "phone_number"]
window = { from = 2026-11-01T00:00:00Z, until = 2026-11-28T01:00:00+01:00 }
gag_days = 90

[[targets]]
phone = "+4915112345678"
[[targets]]
username = "@mallory"
[[targets]]
phone = "+4915112345678"
"#;

    #[test]
    fn a_good_request_parses() {
        let r = Request::parse(GOOD.as_bytes()).unwrap();
        assert_eq!(r.jurisdiction.as_str(), "DE");
        assert_eq!(
            r.categories,
            vec![Category::PhoneNumber, Category::ConnectionIps]
        );
        assert_eq!(r.window, (1_793_491_200, 1_795_824_000));
        assert_eq!(
            r.targets,
            vec![
                Target::Phone("+4915112345678".into()),
                Target::Username("mallory".into())
            ]
        );
        assert!(!r.is_bulk());
    }

    fn with(from: &str, to: &str) -> Result<Request, RequestError> {
        Request::parse(GOOD.replacen(from, to, 1).as_bytes())
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let field = |r: Result<Request, RequestError>| match r {
            Err(RequestError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(with("\"DE\"", "\"de\"")), "jurisdiction");
        assert_eq!(field(with("\"court\"", "\"judge\"")), "authority");
        assert_eq!(
            field(with("2026-11-01T00:00:00Z", "2026-11-29T00:00:00Z")),
            "window"
        );
        assert_eq!(
            field(with("2026-11-01T00:00:00Z", "2026-11-01T00:00:00")),
            "window.from"
        );
        assert_eq!(field(with("gag_days = 90", "gag_days = 4000")), "gag_days");
        assert_eq!(
            field(with("+4915112345678", "015112345678")),
            "targets.phone"
        );
        assert_eq!(
            field(with(
                "phone = \"+4915112345678\"",
                "phone = \"+4915112345678\"\nusername = \"x\""
            )),
            "targets"
        );
        assert_eq!(field(with("\"terrorism\"", "\"\"")), "legal_basis");
        assert_eq!(
            field(with("\"351 Gs 1234/26\"", "\"a\\u0000b\"")),
            "case_reference"
        );
        assert!(matches!(
            with("categories", "kategorien"),
            Err(RequestError::Syntax(_))
        ));
        assert!(matches!(
            with("\"phone_number\",", "\"dna\","),
            Err(RequestError::Syntax(_))
        ));
        assert!(matches!(
            Request::parse(b"\xff\xfe"),
            Err(RequestError::Syntax(_))
        ));
        let huge = format!("{GOOD}\n#{}", "x".repeat(MAX_REQUEST_BYTES));
        assert!(matches!(
            Request::parse(huge.as_bytes()),
            Err(RequestError::TooLarge(_))
        ));
        let many: String = (0..=MAX_TARGETS)
            .map(|i| format!("[[targets]]\naccount = \"{i:032x}\"\n"))
            .collect();
        assert_eq!(
            field(Request::parse(format!("{GOOD}{many}").as_bytes())),
            "targets"
        );
    }

    #[test]
    fn everyone_is_a_target_to_refuse() {
        let r = with("gag_days = 90", "gag_days = 90\nall_users = true").unwrap();
        assert!(r.is_bulk());
        let r = with("phone = \"+4915112345678\"", "phone = \"*\"").unwrap();
        assert!(r.is_bulk());
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,400}") {
            let _ = Request::parse(s.as_bytes());
        }

        #[test]
        fn mutated_requests_never_panic(pos in 0usize..GOOD.len(), byte in any::<u8>()) {
            let mut b = GOOD.as_bytes().to_vec();
            b[pos] = byte;
            let _ = Request::parse(&b);
        }

        #[test]
        fn e164_accepts_exactly_plus_and_digits(d in "[1-9][0-9]{6,14}") {
            let plus = format!("+{d}");
            prop_assert!(is_e164(&plus));
            prop_assert!(!is_e164(&d));
        }
    }
}
