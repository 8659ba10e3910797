//! Postern's durable state, behind one trait per concern.
//!
//! - [`AccountStore`]: accounts, their devices, usernames, device-link tokens;
//! - [`CodeStore`]: one-time registration codes (stored hashed);
//! - [`QueueStore`]: per-device message queues with sequence numbers,
//!   idempotent sends, acks and expiry.
//!
//! [`SqliteStore`] is the embedded default: one file in WAL mode, migrations
//! compiled into the binary, and group commit on the message path (concurrent
//! [`QueueStore::enqueue`] and [`QueueStore::ack`] calls share one
//! transaction and one fsync). A PostgreSQL implementation can follow without
//! changing callers: every method is async, takes plain values, and each call
//! is atomic on its own, so several server nodes can share one database.
//!
//! The store never interprets message payloads: they are opaque bytes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use async_trait::async_trait;
use bytes::Bytes;
pub use postern_proto::ids::{AccountId, DeviceAddr};

mod sqlite;
pub use sqlite::{SqliteOptions, SqliteStore, Synchronous, WriterStats};

/// Milliseconds since the Unix epoch; every timestamp in the store uses it.
pub type Millis = i64;

/// What can go wrong in a store call.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The phone number already has an account.
    #[error("this phone number is already registered")]
    PhoneTaken,
    /// Another account holds the username.
    #[error("this username is taken")]
    UsernameTaken,
    /// A device with this Noise static key already exists.
    #[error("this device key is already registered")]
    DeviceKeyTaken,
    /// The account does not exist.
    #[error("no such account")]
    UnknownAccount,
    /// The database failed; the operation did not happen.
    #[error("database error: {0}")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store is shutting down or its writer stopped.
    #[error("the store is closed")]
    Closed,
}

/// Result of a store call.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A registered account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    /// Random identifier.
    pub id: AccountId,
    /// E.164 phone number.
    pub phone: String,
    /// Optional unique username, without '@'.
    pub username: Option<String>,
    /// When the account was created.
    pub created_at: Millis,
}

/// A device to add to an account.
#[derive(Clone, Debug)]
pub struct NewDevice {
    /// Human label, may be empty.
    pub name: String,
    /// Ed25519 identity public key.
    pub identity_key: [u8; 32],
    /// Noise static public key; unique across all devices.
    pub noise_key: [u8; 32],
}

/// A device of an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Where its queue lives.
    pub addr: DeviceAddr,
    /// Human label, may be empty.
    pub name: String,
    /// Ed25519 identity public key.
    pub identity_key: [u8; 32],
    /// Noise static public key the device authenticates sessions with.
    pub noise_key: [u8; 32],
    /// When the device was added.
    pub created_at: Millis,
}

/// Accounts, devices, usernames and device-link tokens.
#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates an account with its first device (device id 1).
    ///
    /// Fails with [`StoreError::PhoneTaken`], [`StoreError::UsernameTaken`]
    /// or [`StoreError::DeviceKeyTaken`]; nothing is created then.
    async fn create_account(
        &self,
        phone: &str,
        username: Option<&str>,
        device: NewDevice,
        now: Millis,
    ) -> Result<(Account, Device)>;

    /// Adds a device to an existing account with the next free device id.
    async fn add_device(
        &self,
        account: AccountId,
        device: NewDevice,
        now: Millis,
    ) -> Result<Device>;

    /// The account with this id.
    async fn account(&self, id: AccountId) -> Result<Option<Account>>;

    /// The account registered with this E.164 number.
    async fn account_by_phone(&self, phone: &str) -> Result<Option<Account>>;

    /// The account holding this username.
    async fn account_by_username(&self, username: &str) -> Result<Option<Account>>;

    /// Sets (or with `None` clears) the account's username.
    async fn set_username(&self, id: AccountId, username: Option<&str>) -> Result<()>;

    /// All devices of the account, by device id.
    async fn devices(&self, id: AccountId) -> Result<Vec<Device>>;

    /// The device whose Noise static key this is.
    async fn device_by_noise_key(&self, noise_key: &[u8; 32]) -> Result<Option<Device>>;

    /// Stores a device-link token (by its hash) for `account`.
    async fn create_link_token(
        &self,
        account: AccountId,
        token_hash: [u8; 32],
        expires_at: Millis,
    ) -> Result<()>;

    /// Consumes a link token: returns its account if the token exists and
    /// has not expired, and deletes it, so it works once.
    async fn redeem_link_token(
        &self,
        token_hash: [u8; 32],
        now: Millis,
    ) -> Result<Option<AccountId>>;
}

/// A one-time code as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCode {
    /// Row identity, for [`CodeStore::consume_code`].
    pub id: i64,
    /// Hash of the code (the server decides how it hashes).
    pub code_hash: [u8; 32],
    /// When it was issued.
    pub issued_at: Millis,
    /// When it stops being valid.
    pub expires_at: Millis,
    /// When it was used, if it was.
    pub used_at: Option<Millis>,
    /// Wrong guesses made against it.
    pub failed_attempts: u32,
}

/// One-time registration codes.
#[async_trait]
pub trait CodeStore: Send + Sync {
    /// Records a newly issued code for `phone`.
    async fn issue_code(
        &self,
        phone: &str,
        code_hash: [u8; 32],
        now: Millis,
        expires_at: Millis,
    ) -> Result<()>;

    /// How many codes were issued for `phone` at or after `since` (rate limit).
    async fn codes_issued_since(&self, phone: &str, since: Millis) -> Result<u32>;

    /// The most recently issued code for `phone`.
    async fn latest_code(&self, phone: &str) -> Result<Option<StoredCode>>;

    /// Marks the code used; returns false if it was already used (a
    /// concurrent registration won), so each code registers once.
    async fn consume_code(&self, id: i64, now: Millis) -> Result<bool>;

    /// Counts a wrong guess against the code; returns the new count.
    async fn record_failed_attempt(&self, id: i64) -> Result<u32>;

    /// Deletes codes that expired before `before`.
    async fn purge_codes(&self, before: Millis) -> Result<u64>;
}

/// A message to store for every device of one account.
#[derive(Clone, Debug)]
pub struct NewMessage {
    /// The sending device.
    pub sender: DeviceAddr,
    /// Chosen by the sender; (sender account, this id) is stored once.
    pub client_message_id: [u8; 16],
    /// The recipient account; the message is queued for each of its devices.
    pub to: AccountId,
    /// Opaque bytes.
    pub payload: Bytes,
    /// Server clock at acceptance.
    pub received_at: Millis,
    /// When undelivered copies are dropped.
    pub expires_at: Millis,
}

/// Outcome of [`QueueStore::enqueue`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enqueued {
    /// True when (sender account, client message id) was stored before; the
    /// message was not queued again.
    pub duplicate: bool,
    /// `received_at` of the first acceptance.
    pub received_at: Millis,
    /// The queues that got the message now (empty for a duplicate), with the
    /// sequence number it got in each.
    pub deliveries: Vec<(DeviceAddr, u64)>,
}

/// A queued message as read back for its device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// Position in the device's queue; strictly increasing, never reused.
    pub seq: u64,
    /// The sending device.
    pub sender: DeviceAddr,
    /// The sender's id for the message.
    pub client_message_id: [u8; 16],
    /// Server clock at acceptance.
    pub received_at: Millis,
    /// Opaque bytes.
    pub payload: Bytes,
}

/// Per-device message queues.
#[async_trait]
pub trait QueueStore: Send + Sync {
    /// Durably queues the message for every device of `msg.to`, each with
    /// that device's next sequence number, unless the sender already sent
    /// this client message id (then it returns `duplicate: true` and queues
    /// nothing). Returns once the data is committed.
    ///
    /// Fails with [`StoreError::UnknownAccount`] if `msg.to` does not exist.
    async fn enqueue(&self, msg: NewMessage) -> Result<Enqueued>;

    /// Up to `limit` messages of `device`'s queue with `seq > after_seq`, in
    /// order, stopping early once their payloads exceed `max_bytes` (at
    /// least one message is returned if any is queued).
    async fn fetch(
        &self,
        device: DeviceAddr,
        after_seq: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>>;

    /// Deletes every message of `device`'s queue with `seq <= up_to_seq`.
    async fn ack(&self, device: DeviceAddr, up_to_seq: u64) -> Result<()>;

    /// Deletes queued messages and send records that expired before `now`;
    /// returns how many queued messages went.
    async fn purge_expired(&self, now: Millis) -> Result<u64>;
}

/// Everything a server needs from its storage.
pub trait Store: AccountStore + CodeStore + QueueStore {}

impl<T: AccountStore + CodeStore + QueueStore> Store for T {}
