//! The names the distributor works with: members, relays, networks,
//! countries, invitation codes and time. All are plain values chosen by the
//! caller, so the distributor never needs a clock or a random source.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A member (an account) as the caller numbers it, e.g. a database row id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MemberId(pub u64);

/// A relay as the caller numbers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RelayId(pub u64);

/// A network a member connects from or a relay is hosted in, as the caller
/// groups addresses: an IPv4 /16, an IPv6 /48 or an AS number, hashed to a
/// number. Rate limits and blocking of whole networks are counted per
/// `NetworkId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NetworkId(pub u64);

/// A bucket: relays that are handed out together to the same members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BucketId(pub u64);

/// A country as an upper-case ISO 3166-1 alpha-2 code. Blocking is tracked
/// per country: a relay blocked in one country still serves another.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Country([u8; 2]);

/// A country code that is not two ASCII letters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a two-letter country code")]
pub struct BadCountry(pub String);

impl Country {
    /// Parses a two-letter code; lower case is folded.
    pub fn new(code: &str) -> Result<Self, BadCountry> {
        match code.as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Ok(Country([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => Err(BadCountry(code.to_owned())),
        }
    }

    /// The code, e.g. `"RU"`.
    pub fn as_str(&self) -> &str {
        // Only ASCII letters are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl TryFrom<String> for Country {
    type Error = BadCountry;
    fn try_from(s: String) -> Result<Self, BadCountry> {
        Country::new(&s)
    }
}

impl From<Country> for String {
    fn from(c: Country) -> String {
        c.as_str().to_owned()
    }
}

/// An invitation code. The caller draws it from a secure random source and
/// hands it to [`crate::Distributor::create_invite`]; knowing a code is what
/// lets someone join with it, so it must be unguessable.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct InviteCode(pub [u8; 16]);

/// An invitation code that is not 32 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an invitation code is 32 hex digits")]
pub struct BadInviteCode;

impl InviteCode {
    /// Parses the 32 hex digits that [`fmt::Display`] prints.
    pub fn parse(s: &str) -> Result<Self, BadInviteCode> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| BadInviteCode)?;
        Ok(InviteCode(out))
    }
}

impl fmt::Display for InviteCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for InviteCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a whole code into logs.
        write!(f, "InviteCode({}…)", &hex::encode(&self.0[..2]))
    }
}

impl TryFrom<String> for InviteCode {
    type Error = BadInviteCode;
    fn try_from(s: String) -> Result<Self, BadInviteCode> {
        InviteCode::parse(&s)
    }
}

impl From<InviteCode> for String {
    fn from(c: InviteCode) -> String {
        c.to_string()
    }
}

/// A point in time, in whole seconds since the Unix epoch. The caller passes
/// the current time into every call; the simulator passes simulated days.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Time(pub u64);

/// Seconds in a day: the unit of every interval in [`crate::Config`].
pub const DAY: u64 = 86_400;

impl Time {
    /// The start of day `day` counted from the epoch.
    pub fn from_days(day: u64) -> Self {
        Time(day.saturating_mul(DAY))
    }

    /// The day this time falls on, counted from the epoch.
    pub fn day(self) -> u64 {
        self.0 / DAY
    }

    /// Whole days from `earlier` to `self` (0 if `earlier` is later).
    pub fn days_since(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0) / DAY
    }

    /// Fractional days from `earlier` to `self` (0 if `earlier` is later).
    pub fn days_since_f64(self, earlier: Time) -> f64 {
        self.0.saturating_sub(earlier.0) as f64 / DAY as f64
    }

    /// This time plus `days` days.
    pub fn plus_days(self, days: u64) -> Time {
        Time(self.0.saturating_add(days.saturating_mul(DAY)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn country_codes_are_two_letters_folded_to_upper_case() {
        assert_eq!(Country::new("ru").unwrap().as_str(), "RU");
        assert!(Country::new("RUS").is_err());
        assert!(Country::new("R1").is_err());
        assert!(Country::new("").is_err());
    }

    #[test]
    fn invite_codes_round_trip_through_text() {
        let code = InviteCode([7; 16]);
        assert_eq!(InviteCode::parse(&code.to_string()).unwrap(), code);
        assert!(InviteCode::parse("xyz").is_err());
        assert!(!format!("{code:?}").contains(&code.to_string()));
    }

    #[test]
    fn days_are_counted_in_whole_days() {
        let t = Time::from_days(10);
        assert_eq!(t.plus_days(3).days_since(t), 3);
        assert_eq!(Time(t.0 + DAY - 1).days_since(t), 0);
        assert_eq!(t.days_since(t.plus_days(1)), 0);
    }
}
