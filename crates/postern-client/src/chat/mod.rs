//! Conversations over MLS: what a [`Connection`] does to send, receive,
//! create and change groups, join from a new device, and check the people
//! it talks to.
//!
//! Every conversation is an MLS group; a direct chat is a group of all
//! devices of two members. The server orders commits per group and refuses
//! a late one with `STALE_EPOCH`: then this client drops its commit,
//! processes what it has not yet received (the winning commit among it),
//! and builds its change again. It never sends a message before it has
//! processed everything queued for it ([`Connection::sync`]), so its epoch
//! is the group's.
//!
//! Trust: before adding a device, and whenever a commit adds one, its MLS
//! credential (account, device) and signature key are checked against the
//! server's directory of identity keys ([`mls::check_member`]). A commit
//! that adds a device the directory does not confirm is not applied: the
//! conversation is marked `broken` and the member is told, since applying
//! it would let that device read everything that follows.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openmls::prelude::{
    LeafNodeIndex, MlsGroup, MlsMessageBodyIn, ProcessedMessageContent, Sender, WireFormat,
};
use postern_proto::content::{self, Content, GroupMeta};
use postern_proto::ids::{AccountId, DeviceAddr, new_message_id};
use postern_proto::pb::{self, ErrorCode, request::Kind as Req, response::Kind as Resp};
use prost::Message as _;

use crate::home::{Conversation, ConversationKind, Home, NewItem, PendingSend};
use crate::mls::{self, Directory, Engine, MlsError, group_meta};
use crate::{Client, ClientError, Connection, ReceivedMessage, Recipient, lock, now_ms};

mod devices;
mod groups;
mod receive;
mod send;

/// One-time key packages uploaded at a time.
pub const KEY_PACKAGE_BATCH: usize = 20;

/// How long [`Connection::sync`] waits for queued messages to arrive.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a commit or message is rebuilt after losing a race.
const MAX_ATTEMPTS: usize = 8;

/// Where a message goes: a contact (their direct chat) or a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The direct chat with a contact (created on first use).
    Contact(Recipient),
    /// A group by its name, as `#name`.
    GroupName(String),
    /// A group by its id, as `#` and 32 hex digits.
    GroupId(Vec<u8>),
}

impl std::str::FromStr for Target {
    type Err = std::convert::Infallible;
    /// `#name` or `#<32 hex digits>` is a group; anything else a contact
    /// (see [`Recipient`]).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        Ok(match s.strip_prefix('#') {
            Some(rest) if rest.len() == 32 && rest.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Target::GroupId(hex::decode(rest).unwrap_or_default())
            }
            Some(name) => Target::GroupName(name.to_owned()),
            None => Target::Contact(s.parse().unwrap_or(Recipient::Phone(s.to_owned()))),
        })
    }
}

/// A safety number and what the home knows about it.
#[derive(Clone, Debug)]
pub struct SafetyReport {
    /// What the member calls the contact.
    pub contact: String,
    /// Sixty digits.
    pub number: String,
    /// When the member last confirmed a number for this contact, and
    /// whether it was this one.
    pub verified: Option<(i64, bool)>,
    /// True when the contact's keys changed since this device last asked
    /// the directory.
    pub changed: bool,
}

/// A group's member, for listings.
#[derive(Clone, Debug)]
pub struct Member {
    /// The device.
    pub device: DeviceAddr,
    /// What this device calls its account.
    pub name: String,
}

fn mls_failure(e: MlsError) -> ClientError {
    ClientError::Mls(e.to_string())
}

fn refused(code: ErrorCode, message: impl Into<String>) -> ClientError {
    ClientError::Server {
        code,
        message: message.into(),
        retry_after: None,
    }
}

/// A transaction on the home that may span network calls; rolled back
/// unless committed.
struct Txn {
    client: Client,
    done: bool,
}

impl Txn {
    fn begin(client: &Client) -> Result<Txn, ClientError> {
        client.with_home(|h| h.begin())?;
        Ok(Txn {
            client: client.clone(),
            done: false,
        })
    }

    fn commit(mut self) -> Result<(), ClientError> {
        self.done = true;
        self.client.with_home(|h| h.commit())
    }
}

impl Drop for Txn {
    fn drop(&mut self) {
        if !self.done {
            self.client.with_home(|h| h.rollback());
        }
    }
}

/// Work found while processing that needs messages or commits of its own; done after
/// the batch (see [`Connection::run_tasks`]).
#[derive(Clone, Debug)]
pub(crate) enum Task {
    /// Remove every device of `account` from the group (it left).
    RemoveAccount {
        group_id: Vec<u8>,
        account: AccountId,
    },
    /// Tell the group its name (a device of ours just joined it).
    SendName { group_id: Vec<u8> },
}

impl Client {
    /// Runs `f` with this device's MLS engine over the home (for tools and
    /// tests that need openmls directly; conversations need none of this).
    pub fn with_engine<T>(
        &self,
        f: impl FnOnce(&Engine<'_>, &Home) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let me = self.device().ok_or(ClientError::NotRegistered)?;
        let home = lock(&self.inner.home);
        let engine = Engine {
            provider: mls::Provider::new(&home.db),
            signer: &self.inner.signer,
            me,
            suite: *lock(&self.inner.suite),
        };
        f(&engine, &home)
    }

    /// What this device calls an account.
    pub fn name_of(&self, account: AccountId) -> String {
        if Some(account) == self.device().map(|d| d.account) {
            return "you".into();
        }
        self.with_home(|h| h.contact_name(account))
            .ok()
            .flatten()
            .unwrap_or_else(|| format!("{}…", &account.to_string()[..8]))
    }

    /// The conversation a target names, from the home alone (no network;
    /// a contact without a direct chat here is `None`).
    pub fn find_conversation(&self, to: &Target) -> Result<Option<Conversation>, ClientError> {
        self.with_home(|h| match to {
            Target::GroupId(id) => h.conversation(id),
            Target::GroupName(name) => Ok(h.conversations_named(name)?.into_iter().next()),
            Target::Contact(r) => {
                let account = match r {
                    Recipient::Account(a) => Some(*a),
                    Recipient::Phone(p) => h.contact_by_phone(p)?,
                    Recipient::Username(u) => h.contact_by_username(u)?,
                };
                match account {
                    Some(a) => h.direct_with(a),
                    None => Ok(None),
                }
            }
        })
    }

    /// How a conversation is shown: `#name` or the contact's name.
    pub fn conversation_name(&self, c: &Conversation) -> String {
        match (c.kind, c.peer) {
            (ConversationKind::Group, _) if c.name.is_empty() => "#(unnamed)".into(),
            (ConversationKind::Group, _) => format!("#{}", c.name),
            (ConversationKind::Direct, Some(peer)) => self.name_of(peer),
            (ConversationKind::Direct, None) => "(direct chat)".into(),
        }
    }
}

/// A record of something this device did ("you added @bob"): kept in the
/// timeline, not shown again by `recv`.
fn note(group_id: &[u8], body: String) -> NewItem {
    NewItem {
        kind: "note",
        ..system(group_id, body)
    }
}

/// An event or warning to show the member.
fn system(group_id: &[u8], body: String) -> NewItem {
    NewItem {
        group_id: group_id.to_vec(),
        sender: None,
        message_id: None,
        kind: "system",
        body,
        content: None,
        sent_at: now_ms(),
        received_at: now_ms(),
    }
}

/// What a member sees for a content.
pub fn render(c: &Content) -> String {
    use content::content::Body;
    let target = |t: &[u8]| short_id(t);
    let reply = if c.in_reply_to.is_empty() {
        String::new()
    } else {
        format!("(reply to {}) ", target(&c.in_reply_to))
    };
    let body = match &c.body {
        Some(Body::Text(t)) => t.text.clone(),
        Some(Body::Edit(e)) => format!("(edited {}) {}", target(&e.target), e.text),
        Some(Body::Delete(d)) => format!("(deleted message {})", target(&d.target)),
        Some(Body::Reaction(r)) if r.remove => {
            format!("(took back {} on {})", r.emoji, target(&r.target))
        }
        Some(Body::Reaction(r)) => format!("(reacted {} to {})", r.emoji, target(&r.target)),
        Some(Body::Attachment(a)) => format!(
            "(attachment {} {}, {} bytes) {}",
            a.filename, a.media_type, a.size, a.caption
        ),
        Some(Body::Leave(_)) => "(left the group)".into(),
        Some(Body::GroupName(g)) => format!("(named the group #{})", g.name),
        None => "[content this version cannot show]".into(),
    };
    reply + &body
}

/// How a message id is shown: its last 4 bytes in hex (the first bytes of
/// an id are a timestamp, alike for messages sent close together).
pub fn short_id(id: &[u8]) -> String {
    hex::encode(&id[id.len().saturating_sub(4)..])
}

fn device_of(d: &pb::DeviceAddress) -> Option<DeviceAddr> {
    DeviceAddr::try_from(d).ok()
}

fn addr(d: DeviceAddr) -> pb::DeviceAddress {
    d.into()
}

/// The devices in a group, by their credentials.
fn members(group: &MlsGroup) -> Vec<(LeafNodeIndex, DeviceAddr)> {
    group
        .members()
        .filter_map(|m| {
            mls::credential_device(&m.credential)
                .ok()
                .map(|d| (m.index, d))
        })
        .collect()
}

impl Connection {
    pub(super) fn me(&self) -> Result<DeviceAddr, ClientError> {
        self.device.ok_or(ClientError::NotRegistered)
    }

    /// The server's directory entries for `accounts`: each device's
    /// identity key. Records them, and returns the contacts whose keys
    /// changed since they were last recorded (a safety-number change; see
    /// [`Connection::key_change_notices`]).
    pub async fn directory(
        &self,
        accounts: impl IntoIterator<Item = AccountId>,
    ) -> Result<(Directory, Vec<AccountId>), ClientError> {
        let mut dir = Directory::new();
        let mut changed = Vec::new();
        let accounts: BTreeSet<AccountId> = accounts.into_iter().collect();
        for account in accounts {
            let req = Req::Resolve(pb::Resolve {
                who: Some(pb::resolve::Who::AccountId(account.0.to_vec().into())),
            });
            let Resp::Resolved(r) = self.call(req).await? else {
                return Err(ClientError::Protocol("unexpected answer to resolve"));
            };
            let mut keys: Vec<(u32, [u8; 32])> = r
                .devices
                .iter()
                .filter_map(|d| Some((d.device_id, d.identity_key[..].try_into().ok()?)))
                .collect();
            keys.sort_unstable();
            if !r.username.is_empty() {
                self.client
                    .with_home(|h| h.remember_contact(account, None, Some(&r.username)))?;
            }
            let known = self.client.with_home(|h| h.contact_keys(account))?;
            if known != keys {
                self.client
                    .with_home(|h| h.set_contact_keys(account, &keys))?;
                let mine = Some(account) == self.device.map(|d| d.account);
                if !known.is_empty() && !mine {
                    changed.push(account);
                }
            }
            dir.insert(account, keys.into_iter().collect());
        }
        Ok((dir, changed))
    }

    /// Timeline notices for contacts whose safety number changed: in the
    /// conversation where it showed (if any) and in the direct chat.
    pub(super) fn key_change_notices(
        &self,
        changed: &[AccountId],
        group_id: Option<&[u8]>,
    ) -> Result<Vec<NewItem>, ClientError> {
        let mut out = Vec::new();
        for &account in changed {
            let name = self.client.name_of(account);
            let text = format!(
                "{name}'s safety number changed: a device was added, removed or given a new \
                 key. Compare numbers with `postern verify {name}`."
            );
            let direct = self
                .client
                .with_home(|h| h.direct_with(account))?
                .map(|c| c.group_id);
            let mut targets: Vec<Vec<u8>> = group_id.map(<[u8]>::to_vec).into_iter().collect();
            if let Some(d) = direct
                && !targets.contains(&d)
            {
                targets.push(d);
            }
            for target in targets {
                out.push(system(&target, text.clone()));
            }
        }
        Ok(out)
    }

    /// Makes sure the server holds enough of this device's key packages;
    /// returns how many one-time packages it holds.
    pub async fn top_up_key_packages(&self) -> Result<u32, ClientError> {
        let status = self.upload_key_packages(Vec::new(), None).await?;
        if !status.low && status.has_last_resort {
            return Ok(status.remaining);
        }
        let packages = self
            .client
            .with_engine(|e, _| e.key_packages(KEY_PACKAGE_BATCH, true).map_err(mls_failure))?;
        let (last_resort, one_time) = packages
            .split_last()
            .ok_or(ClientError::Protocol("no key packages made"))?;
        let status = self
            .upload_key_packages(one_time.to_vec(), Some(last_resort.clone()))
            .await?;
        Ok(status.remaining)
    }

    pub(super) async fn upload_key_packages(
        &self,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<pb::KeyPackageCount, ClientError> {
        let req = Req::UploadKeyPackages(pb::UploadKeyPackages {
            key_packages: one_time.into_iter().map(Into::into).collect(),
            last_resort: last_resort.unwrap_or_default().into(),
        });
        match self.call(req).await? {
            Resp::KeyPackageCount(c) => Ok(c),
            _ => Err(ClientError::Protocol(
                "unexpected answer to a key package upload",
            )),
        }
    }

    /// A key package for every device of each account (other than this
    /// device), checked against the directory.
    pub(super) async fn claim_packages(
        &self,
        accounts: &[AccountId],
        dir: &Directory,
    ) -> Result<Vec<(DeviceAddr, openmls::prelude::KeyPackage)>, ClientError> {
        let me = self.me()?;
        let mut out = Vec::new();
        for &account in accounts {
            let req = Req::ClaimKeyPackages(pb::ClaimKeyPackages {
                account_id: account.0.to_vec().into(),
            });
            let Resp::ClaimedKeyPackages(claimed) = self.call(req).await? else {
                return Err(ClientError::Protocol(
                    "unexpected answer to a key package claim",
                ));
            };
            let mut valid = 0;
            for c in claimed.key_packages {
                let device = DeviceAddr {
                    account,
                    device: c.device_id,
                };
                match self
                    .client
                    .with_engine(|e, _| Ok(e.validate_key_package(&c.key_package, device, dir)))?
                {
                    Ok(kp) => {
                        out.push((device, kp));
                        valid += 1;
                    }
                    Err(e) => tracing::warn!(%device, error = %e, "refused a key package"),
                }
            }
            if valid == 0 && account != me.account {
                return Err(refused(
                    ErrorCode::BadRequest,
                    format!(
                        "{} has no usable key packages; they need to open Postern once",
                        self.client.name_of(account)
                    ),
                ));
            }
        }
        Ok(out)
    }

    /// Processes everything the server has queued for this device, settles
    /// commits whose outcome a crash left unknown, and does what the
    /// processed messages asked for (e.g. removing a member who left).
    /// Call before acting on a conversation; `send` and the group commands
    /// do.
    pub async fn sync(&mut self) -> Result<(), ClientError> {
        self.catch_up().await?;
        if !self.topped_up {
            // Once per connection: others may have used up our packages.
            self.top_up_key_packages().await?;
            self.topped_up = true;
        }
        self.run_tasks().await
    }

    pub(super) async fn catch_up(&mut self) -> Result<(), ClientError> {
        self.subscribe().await?;
        self.settle_pending_commits().await?;
        let Resp::SyncPoint(point) = self.call(Req::Sync(pb::Sync {})).await? else {
            return Err(ClientError::Protocol("unexpected answer to sync"));
        };
        while self.client.with_home(|h| h.last_seq())? < point.head_seq {
            let batch = tokio::time::timeout(SYNC_TIMEOUT, self.deliveries.recv())
                .await
                .map_err(|_| ClientError::Timeout(SYNC_TIMEOUT))?
                .ok_or(ClientError::Disconnected)?;
            self.take_batch(batch).await?;
        }
        Ok(())
    }

    pub(crate) async fn run_tasks(&mut self) -> Result<(), ClientError> {
        while let Some(task) = self.tasks.pop() {
            match task {
                Task::RemoveAccount { group_id, account } => {
                    let devices: Vec<DeviceAddr> = self.client.with_engine(|e, _| {
                        Ok(e.load(&group_id)
                            .map_err(mls_failure)?
                            .map(|g| members(&g))
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(_, d)| d)
                            .filter(|d| d.account == account)
                            .collect())
                    })?;
                    if !devices.is_empty() {
                        self.commit_change(&group_id, Vec::new(), devices, None)
                            .await?;
                    }
                }
                Task::SendName { group_id } => {
                    if let Some(c) = self.client.with_home(|h| h.conversation(&group_id))?
                        && c.state == "active"
                        && c.kind == ConversationKind::Group
                    {
                        self.send_group_name(&c).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Repeats commits sent before a crash, with their ids: the server
    /// answers as it did, and the group moves on or forgets them.
    pub(super) async fn settle_pending_commits(&mut self) -> Result<(), ClientError> {
        for (group_id, request) in self.client.with_home(|h| h.pending_commits())? {
            let Ok(req) = pb::GroupCommit::decode(&request[..]) else {
                self.client
                    .with_home(|h| h.clear_pending_commit(&group_id))?;
                continue;
            };
            let added_someone = !req.added.is_empty();
            let outcome = self.call(Req::GroupCommit(req)).await;
            match self.conclude_commit(&group_id, outcome.map(|_| ()))? {
                // Whoever it added has not heard the group's name yet.
                Ok(()) if added_someone => self.tasks.push(Task::SendName {
                    group_id: group_id.clone(),
                }),
                Ok(()) => {}
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => self.client.with_home(|h| {
                    h.add_items(vec![system(
                        &group_id,
                        format!("a change you made before a restart was not applied ({e}); make it again"),
                    )])
                    .map(drop)
                })?,
            }
        }
        Ok(())
    }

    /// Applies the server's answer to our commit: merge it, or drop it.
    /// Returns the error for the caller to act on.
    pub(super) fn conclude_commit(
        &self,
        group_id: &[u8],
        outcome: Result<(), ClientError>,
    ) -> Result<Result<(), ClientError>, ClientError> {
        if matches!(&outcome, Err(e) if e.is_transient()) {
            // Unknown fate: keep the pending commit for the next sync.
            return Ok(outcome);
        }
        let txn = Txn::begin(&self.client)?;
        self.client.with_engine(|e, h| {
            if let Some(mut g) = e.load(group_id).map_err(mls_failure)?
                && g.pending_commit().is_some()
            {
                match &outcome {
                    Ok(()) => e.confirm(&mut g).map_err(mls_failure)?,
                    Err(_) => e.abandon(&mut g).map_err(mls_failure)?,
                }
            }
            h.clear_pending_commit(group_id)
        })?;
        txn.commit()?;
        Ok(outcome)
    }

    /// Commits a change to a group — adding `adds`, removing `removes` —
    /// and, with `create`, first creates the group. Retries after losing a
    /// race, rebuilding the commit on the epoch that won.
    pub(super) async fn commit_change(
        &mut self,
        group_id: &[u8],
        adds: Vec<(DeviceAddr, openmls::prelude::KeyPackage)>,
        removes: Vec<DeviceAddr>,
        mut create: Option<(GroupMeta, Conversation)>,
    ) -> Result<(), ClientError> {
        let me = self.me()?;
        for _ in 0..MAX_ATTEMPTS {
            let txn = Txn::begin(&self.client)?;
            let request = self.client.with_engine(|e, h| {
                let mut group = match &create {
                    Some((meta, conversation)) => {
                        h.add_conversation(conversation, now_ms())?;
                        e.create_group(group_id, meta).map_err(mls_failure)?
                    }
                    None => e
                        .load(group_id)
                        .map_err(mls_failure)?
                        .ok_or_else(|| refused(ErrorCode::UnknownGroup, "not in this group"))?,
                };
                let leaves: Vec<LeafNodeIndex> = members(&group)
                    .into_iter()
                    .filter(|(_, d)| removes.contains(d) && *d != me)
                    .map(|(i, _)| i)
                    .collect();
                let kps = adds.iter().map(|(_, kp)| kp.clone()).collect();
                let out = e.commit(&mut group, kps, leaves).map_err(mls_failure)?;
                let added: Vec<pb::DeviceAddress> = adds.iter().map(|(d, _)| addr(*d)).collect();
                let request = pb::GroupCommit {
                    client_message_id: new_message_id().to_vec().into(),
                    group_id: group_id.to_vec().into(),
                    commit: out.commit.into(),
                    welcome: out.welcome.unwrap_or_default().into(),
                    welcome_to: added.clone(),
                    added,
                    removed: removes.iter().map(|d| addr(*d)).collect(),
                    group_info: out.group_info.into(),
                    ratchet_tree: out.ratchet_tree.into(),
                };
                h.set_pending_commit(group_id, &request.encode_to_vec())?;
                Ok(request)
            })?;
            txn.commit()?;
            if create.take().is_some() {
                self.call(Req::CreateGroup(pb::CreateGroup {
                    group_id: group_id.to_vec().into(),
                }))
                .await?;
            }
            let outcome = self.call(Req::GroupCommit(request)).await.map(|_| ());
            match self.conclude_commit(group_id, outcome)? {
                Ok(()) => return Ok(()),
                Err(e) if e.code() == Some(ErrorCode::StaleEpoch) => {
                    self.lost_races += 1;
                    self.catch_up().await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(refused(
            ErrorCode::StaleEpoch,
            "the group kept changing; try again",
        ))
    }
}

/// The conversation record for a group joined here.
fn conversation_from(
    group_id: &[u8],
    meta: &GroupMeta,
    devices: &[(LeafNodeIndex, DeviceAddr)],
    me: DeviceAddr,
) -> Conversation {
    let direct = meta.kind == content::group_meta::Kind::Direct as i32;
    Conversation {
        group_id: group_id.to_vec(),
        kind: if direct {
            ConversationKind::Direct
        } else {
            ConversationKind::Group
        },
        // Learnt from the group's next GroupName message.
        name: String::new(),
        peer: direct
            .then(|| {
                devices
                    .iter()
                    .map(|(_, d)| d.account)
                    .find(|a| *a != me.account)
            })
            .flatten(),
        state: "active".into(),
    }
}
