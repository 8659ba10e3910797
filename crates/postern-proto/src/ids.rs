//! Account and device identifiers.
//!
//! An account is named by 16 random bytes, shown as 32 lowercase hex digits;
//! its devices are numbered from 1 within the account.

use std::fmt;
use std::str::FromStr;

use crate::pb;

/// An account's identifier: 16 random bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(pub [u8; 16]);

impl AccountId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// Reads an id from wire bytes, which must be exactly 16 long.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({self})")
    }
}

/// Error for an account id that is not 32 hex digits.
#[derive(Debug, thiserror::Error)]
#[error("an account id is 32 hexadecimal digits")]
pub struct BadAccountId;

impl FromStr for AccountId {
    type Err = BadAccountId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out).map_err(|_| BadAccountId)?;
        Ok(Self(out))
    }
}

/// A new client message id: 6 bytes of milliseconds since the Unix epoch,
/// then 10 random bytes (the layout of a UUIDv7 without its version bits).
/// Any 16 bytes are accepted by the server; time-ordered ones make its
/// idempotency index append at one end instead of at random places.
pub fn new_message_id() -> [u8; 16] {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut id: [u8; 16] = rand::random();
    id[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    id
}

/// One device of one account: where a message queue lives.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct DeviceAddr {
    /// The account the device belongs to.
    pub account: AccountId,
    /// The device's number within the account, from 1.
    pub device: u32,
}

impl fmt::Display for DeviceAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.account, self.device)
    }
}

impl From<DeviceAddr> for pb::DeviceAddress {
    fn from(d: DeviceAddr) -> Self {
        pb::DeviceAddress {
            account_id: d.account.0.to_vec().into(),
            device_id: d.device,
        }
    }
}

impl TryFrom<&pb::DeviceAddress> for DeviceAddr {
    type Error = BadAccountId;
    fn try_from(d: &pb::DeviceAddress) -> Result<Self, Self::Error> {
        Ok(DeviceAddr {
            account: AccountId::from_slice(&d.account_id).ok_or(BadAccountId)?,
            device: d.device_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_are_time_ordered_and_unique() {
        let a = new_message_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_message_id();
        assert!(a < b);
        assert_ne!(new_message_id(), new_message_id());
    }

    #[test]
    fn account_id_round_trips_through_text() {
        let id = AccountId::random();
        assert_eq!(id.to_string().parse::<AccountId>().unwrap(), id);
        assert!("xyz".parse::<AccountId>().is_err());
        assert!(AccountId::from_slice(&[0; 15]).is_none());
    }
}
