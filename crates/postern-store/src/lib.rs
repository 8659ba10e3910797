//! Postern's durable state, behind one trait per concern.
//!
//! - [`AccountStore`]: accounts, their devices, usernames, device-link tokens;
//!   accounts are found by a keyed hash of their phone number, never by
//!   the number, which the store does not hold in clear;
//! - [`CodeStore`]: one-time registration codes (stored hashed, under the
//!   same keyed hash of the number);
//! - [`QueueStore`]: per-device message queues with sequence numbers,
//!   idempotent sends, acks and expiry;
//! - [`GroupStore`]: what the MLS delivery service keeps per group — its
//!   epoch, the member devices to fan out to, the latest GroupInfo and
//!   ratchet tree — and the commit that advances an epoch;
//! - [`KeyPackageStore`]: each device's one-time and last-resort MLS key
//!   packages;
//! - [`DistributorStore`]: the relay distributor's state, an opaque blob.
//! - [`VaultStore`]: the PII vault's rows (crate `postern-legal`): keyed
//!   phone hashes, sealed phone numbers and connection records, wrapped
//!   custodian shares; all opaque.
//!
//! [`SqliteStore`] is the embedded default: one file in WAL mode, migrations
//! compiled into the binary, and group commit on the message path (concurrent
//! [`QueueStore::enqueue`] and [`QueueStore::ack`] calls share one
//! transaction and one fsync). [`PgStore`] keeps the same state in
//! PostgreSQL, which several server nodes can share: every method is async,
//! takes plain values, and each call is atomic on its own (one transaction
//! with the row locks it needs; see the `postgres` module).
//!
//! The store never interprets message payloads, key packages, GroupInfos or
//! ratchet trees: they are opaque bytes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use async_trait::async_trait;
use bytes::Bytes;
pub use postern_proto::ids::{AccountId, DeviceAddr};

mod postgres;
mod sqlite;
pub use postgres::{PgOptions, PgStore};
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
    /// A group with this id exists already.
    #[error("a group with this id exists already")]
    GroupExists,
    /// No group has this id.
    #[error("no such group")]
    UnknownGroup,
    /// A message for one epoch of a group arrived after a commit moved the
    /// group on (see [`NewMessage::group_epoch`]).
    #[error("the group is at epoch {current} now")]
    StaleEpoch {
        /// The group's epoch now.
        current: u64,
    },
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
    /// The country of its phone number (ISO 3166-1 alpha-2, `ZZ` when
    /// unknown): all the server keeps of the number in clear.
    pub country: String,
    /// Optional unique username, without '@'.
    pub username: Option<String>,
    /// When the account was created.
    pub created_at: Millis,
}

/// An account to create.
#[derive(Clone, Debug)]
pub struct NewAccount {
    /// Its identifier, chosen by the caller (the vault's records are bound
    /// to it before the account exists).
    pub id: AccountId,
    /// A keyed hash of its phone number (the server's phone index), unique.
    pub phone_key: [u8; 32],
    /// The phone number's country (see [`Account::country`]).
    pub country: String,
    /// Optional unique username, without '@'.
    pub username: Option<String>,
    /// The vault entry sealing its phone number, stored in the same
    /// transaction (its `account` must be `id`).
    pub vault: Option<VaultEntry>,
}

/// An account stored before phone numbers left the clear: its id and
/// number, for the server to seal into the vault once
/// ([`AccountStore::seal_legacy_phone`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyPhone {
    /// The account.
    pub account: AccountId,
    /// Its E.164 number, as stored in clear.
    pub phone: String,
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
    /// Creates an account with its first device (device id 1), and its
    /// vault entry if it has one, in one transaction.
    ///
    /// Fails with [`StoreError::PhoneTaken`], [`StoreError::UsernameTaken`]
    /// or [`StoreError::DeviceKeyTaken`]; nothing is created then.
    async fn create_account(
        &self,
        account: NewAccount,
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

    /// The account whose phone key ([`NewAccount::phone_key`]) this is.
    async fn account_by_phone_key(&self, phone_key: &[u8; 32]) -> Result<Option<Account>>;

    /// Accounts whose phone number is still stored in clear (databases
    /// from before the vault), at most `limit`.
    async fn legacy_phones(&self, limit: u32) -> Result<Vec<LegacyPhone>>;

    /// Replaces a legacy account's clear number by its phone key and
    /// country and stores its vault entry, in one transaction.
    async fn seal_legacy_phone(
        &self,
        account: AccountId,
        phone_key: [u8; 32],
        country: &str,
        vault: Option<VaultEntry>,
    ) -> Result<()>;

    /// The account holding this username.
    async fn account_by_username(&self, username: &str) -> Result<Option<Account>>;

    /// Sets (or with `None` clears) the account's username.
    async fn set_username(&self, id: AccountId, username: Option<&str>) -> Result<()>;

    /// All devices of the account, by device id.
    async fn devices(&self, id: AccountId) -> Result<Vec<Device>>;

    /// Deletes the device, its queue, its key packages and its group
    /// memberships; returns false if it did not exist.
    async fn remove_device(&self, device: DeviceAddr) -> Result<bool>;

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

/// One-time registration codes, kept under a phone key (a keyed hash of
/// the number the server chooses; never the number itself).
#[async_trait]
pub trait CodeStore: Send + Sync {
    /// Records a newly issued code for `phone_key`.
    async fn issue_code(
        &self,
        phone_key: &[u8; 32],
        code_hash: [u8; 32],
        now: Millis,
        expires_at: Millis,
    ) -> Result<()>;

    /// How many codes were issued for `phone_key` at or after `since`
    /// (rate limit).
    async fn codes_issued_since(&self, phone_key: &[u8; 32], since: Millis) -> Result<u32>;

    /// The most recently issued code for `phone_key`.
    async fn latest_code(&self, phone_key: &[u8; 32]) -> Result<Option<StoredCode>>;

    /// Marks the code used; returns false if it was already used (a
    /// concurrent registration won), so each code registers once.
    async fn consume_code(&self, id: i64, now: Millis) -> Result<bool>;

    /// Counts a wrong guess against the code; returns the new count.
    async fn record_failed_attempt(&self, id: i64) -> Result<u32>;

    /// Deletes codes that expired before `before`.
    async fn purge_codes(&self, before: Millis) -> Result<u64>;
}

/// Whose queues a message goes into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recipients {
    /// Every device of the account; the account must exist.
    Account(AccountId),
    /// These devices; those that do not exist (any more) are skipped.
    Devices(Vec<DeviceAddr>),
}

impl From<AccountId> for Recipients {
    fn from(account: AccountId) -> Self {
        Recipients::Account(account)
    }
}

/// A message to queue for its recipients.
#[derive(Clone, Debug)]
pub struct NewMessage {
    /// The sending device.
    pub sender: DeviceAddr,
    /// Chosen by the sender; (sender account, this id) is stored once.
    pub client_message_id: [u8; 16],
    /// Where the message is queued.
    pub to: Recipients,
    /// The MLS group the message belongs to, if any.
    pub group_id: Option<Bytes>,
    /// With `group_id`: queue the message only if the group is still at
    /// this epoch, checked in the same transaction as the queueing, so a
    /// commit accepted meanwhile (on this node or another) cannot slip in
    /// between the check and the copies. Otherwise the enqueue fails with
    /// [`StoreError::StaleEpoch`] (or [`StoreError::UnknownGroup`]) and
    /// nothing is written.
    pub group_epoch: Option<u64>,
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
    /// The MLS group the message belongs to, if any.
    pub group_id: Option<Bytes>,
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
    /// Fails with [`StoreError::UnknownAccount`] if `msg.to` names an
    /// account that does not exist.
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

    /// The sequence number of the last message queued for `device` (0 if
    /// none ever was).
    async fn queue_head(&self, device: DeviceAddr) -> Result<u64>;

    /// Deletes every message of `device`'s queue with `seq <= up_to_seq`.
    async fn ack(&self, device: DeviceAddr, up_to_seq: u64) -> Result<()>;

    /// Deletes queued messages, send records and Welcome trees that expired
    /// before `now`; returns how many queued messages went.
    async fn purge_expired(&self, now: Millis) -> Result<u64>;
}

/// What the delivery service knows of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupState {
    /// The current epoch: the next accepted commit must be made in it.
    pub epoch: u64,
    /// Devices messages are fanned out to, in (account, device) order.
    pub members: Vec<DeviceAddr>,
}

/// A commit for a group, with what it changes for the delivery service.
#[derive(Clone, Debug)]
pub struct NewCommit {
    /// The group.
    pub group_id: Bytes,
    /// The epoch the commit was made in; it must be the group's current one.
    pub epoch: u64,
    /// The committing device.
    pub sender: DeviceAddr,
    /// Its id for the commit; a retry with the same id is a duplicate.
    pub client_message_id: [u8; 16],
    /// Devices the commit adds to the fan-out list.
    pub added: Vec<DeviceAddr>,
    /// Devices it removes.
    pub removed: Vec<DeviceAddr>,
    /// The commit, queued for every member device but the sender.
    pub commit: Bytes,
    /// A Welcome, queued for `welcome_to` (which must be among `added`).
    pub welcome: Option<(Bytes, Vec<DeviceAddr>)>,
    /// The new epoch's GroupInfo, kept for joins.
    pub group_info: Bytes,
    /// The new epoch's ratchet tree, kept for joins.
    pub ratchet_tree: Bytes,
    /// Server clock at acceptance.
    pub received_at: Millis,
    /// When undelivered copies are dropped.
    pub expires_at: Millis,
}

impl NewCommit {
    /// Whether the sender may make this commit, given the group's member
    /// devices before it: it is one of them, or it is a new device of a
    /// member account joining by external commit — listing only itself in
    /// `added` and removing only its own account's devices.
    pub fn sender_may_commit(&self, members: &[DeviceAddr]) -> bool {
        members.contains(&self.sender)
            || (self.added == [self.sender]
                && members.iter().any(|m| m.account == self.sender.account)
                && self
                    .removed
                    .iter()
                    .all(|r| r.account == self.sender.account))
    }
}

/// What became of a [`GroupStore::commit`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// The commit advanced the epoch; copies went to these queues.
    Accepted {
        /// The commit's copies (empty for a duplicate).
        commit: Enqueued,
        /// The Welcome's copies, if there was one.
        welcome: Option<Enqueued>,
    },
    /// The group is at another epoch; nothing was stored.
    Stale {
        /// The group's current epoch.
        current_epoch: u64,
    },
    /// No group has this id.
    UnknownGroup,
    /// The sender is not a member: not its device, and for a device joining
    /// by external commit (listing only itself in `added`), not its account.
    NotAMember,
}

/// The id of the Welcome queued with a commit: the commit's id with its
/// last bit flipped, so that a retried commit repeats it exactly and it is
/// deduplicated with the commit.
pub fn welcome_message_id(commit_id: [u8; 16]) -> [u8; 16] {
    let mut id = commit_id;
    id[15] ^= 1;
    id
}

/// The MLS delivery service's per-group state.
#[async_trait]
pub trait GroupStore: Send + Sync {
    /// Registers a group at epoch 0 with `creator` as its only member.
    /// Fails with [`StoreError::GroupExists`].
    async fn create_group(&self, group_id: &[u8], creator: DeviceAddr, now: Millis) -> Result<()>;

    /// The group's epoch and member devices.
    async fn group(&self, group_id: &[u8]) -> Result<Option<GroupState>>;

    /// Applies a commit atomically: checks the epoch and the sender's
    /// membership, advances the epoch, updates the members, keeps the
    /// GroupInfo and tree (and, with a Welcome, the tree of the new epoch
    /// until `expires_at`), and queues the commit and the Welcome — all in
    /// one transaction, so that no commit is accepted without being
    /// delivered.
    async fn commit(&self, commit: NewCommit) -> Result<CommitOutcome>;

    /// The group's epoch, latest GroupInfo and ratchet tree.
    async fn group_info(&self, group_id: &[u8]) -> Result<Option<(u64, Bytes, Bytes)>>;

    /// The ratchet tree of an epoch that began with a Welcome, while kept.
    async fn welcome_tree(&self, group_id: &[u8], epoch: u64) -> Result<Option<Bytes>>;

    /// Ids of the groups the account has a device in.
    async fn groups_of_account(&self, account: AccountId) -> Result<Vec<Bytes>>;
}

/// How many key packages a device has on the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeyPackageCount {
    /// One-time packages left.
    pub one_time: u32,
    /// Whether a last-resort package is stored.
    pub last_resort: bool,
}

/// A key package handed out by [`KeyPackageStore::claim_key_packages`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedKeyPackage {
    /// Whose package it is.
    pub device: u32,
    /// The package (an MLSMessage).
    pub key_package: Bytes,
    /// True for a last-resort package (it stays stored).
    pub last_resort: bool,
}

/// MLS key packages of each device.
#[async_trait]
pub trait KeyPackageStore: Send + Sync {
    /// Stores one-time packages (keeping at most `max_one_time` in all: the
    /// oldest beyond that are dropped) and, if given, replaces the
    /// last-resort package. Returns the count afterwards.
    async fn add_key_packages(
        &self,
        device: DeviceAddr,
        one_time: Vec<Bytes>,
        last_resort: Option<Bytes>,
        max_one_time: u32,
    ) -> Result<KeyPackageCount>;

    /// One package per device of `account` other than `requester`: a
    /// one-time package, deleted as it is handed out, else the last-resort
    /// one. Devices with neither are listed in the second value.
    async fn claim_key_packages(
        &self,
        account: AccountId,
        requester: DeviceAddr,
    ) -> Result<(Vec<ClaimedKeyPackage>, Vec<u32>)>;

    /// The device's packages on the server.
    async fn key_package_count(&self, device: DeviceAddr) -> Result<KeyPackageCount>;
}

/// The relay distributor's state (who holds which relay, trust levels,
/// invitations), kept as one blob the store does not interpret.
#[async_trait]
pub trait DistributorStore: Send + Sync {
    /// The state last saved, if any.
    async fn distributor_state(&self) -> Result<Option<Bytes>>;

    /// Replaces the saved state with `state`, atomically: a reader (or a
    /// restart) sees either the old blob or the new one.
    async fn save_distributor_state(&self, state: Bytes, now: Millis) -> Result<()>;
}

/// What the PII vault keeps for one account (see crate `postern-legal`):
/// public values and ciphertexts the store never interprets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultEntry {
    /// The account.
    pub account: AccountId,
    /// The keyed hash of its phone number, unique.
    pub phone_index: [u8; 32],
    /// The account's vault public key.
    pub public_key: [u8; 32],
    /// The phone number sealed to that key.
    pub sealed_phone: Bytes,
    /// How many custodians' shares open it.
    pub threshold: u32,
    /// One wrapped share per custodian: (custodian's public key, share),
    /// sorted by custodian.
    pub shares: Vec<([u8; 32], Bytes)>,
}

/// One connection record of the vault: its time, and its source address
/// sealed to the account's vault key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedConnection {
    /// When the connection was made.
    pub at: Millis,
    /// The sealed record.
    pub sealed: Bytes,
}

/// The PII vault's rows.
#[async_trait]
pub trait VaultStore: Send + Sync {
    /// Stores an account's vault entry and its shares, atomically. Fails
    /// with [`StoreError::PhoneTaken`] if the phone index is taken and
    /// [`StoreError::UnknownAccount`] if the account does not exist;
    /// nothing is stored then.
    async fn put_vault(&self, entry: VaultEntry) -> Result<()>;

    /// The account's vault entry.
    async fn vault(&self, account: AccountId) -> Result<Option<VaultEntry>>;

    /// The account whose phone index this is.
    async fn account_by_phone_index(&self, index: &[u8; 32]) -> Result<Option<AccountId>>;

    /// Appends a connection record to the account's IP log.
    async fn add_connection(&self, account: AccountId, at: Millis, sealed: Bytes) -> Result<()>;

    /// The account's connection records with `from <= at < until`, oldest
    /// first.
    async fn connections(
        &self,
        account: AccountId,
        from: Millis,
        until: Millis,
    ) -> Result<Vec<SealedConnection>>;

    /// Deletes every connection record older than `before` (retention);
    /// returns how many.
    async fn purge_connections(&self, before: Millis) -> Result<u64>;
}

/// Everything a server needs from its storage.
pub trait Store:
    AccountStore + CodeStore + QueueStore + GroupStore + KeyPackageStore + DistributorStore + VaultStore
{
}

impl<T> Store for T where
    T: AccountStore
        + CodeStore
        + QueueStore
        + GroupStore
        + KeyPackageStore
        + DistributorStore
        + VaultStore
{
}
