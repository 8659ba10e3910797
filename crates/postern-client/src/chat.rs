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

use std::collections::{BTreeMap, BTreeSet, HashSet};
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
    let target = |t: &[u8]| hex::encode(&t[..t.len().min(4)]);
    match &c.body {
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
    }
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
    fn me(&self) -> Result<DeviceAddr, ClientError> {
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
    fn key_change_notices(
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

    async fn upload_key_packages(
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
    async fn claim_packages(
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

    async fn catch_up(&mut self) -> Result<(), ClientError> {
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
    async fn settle_pending_commits(&mut self) -> Result<(), ClientError> {
        for (group_id, request) in self.client.with_home(|h| h.pending_commits())? {
            let Ok(req) = pb::GroupCommit::decode(&request[..]) else {
                self.client
                    .with_home(|h| h.clear_pending_commit(&group_id))?;
                continue;
            };
            let outcome = self.call(Req::GroupCommit(req)).await;
            match self.conclude_commit(&group_id, outcome.map(|_| ()))? {
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
    fn conclude_commit(
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
    async fn commit_change(
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

    /// The conversation a target names, creating the direct chat with a
    /// contact on first use.
    pub async fn conversation_for(&mut self, to: &Target) -> Result<Conversation, ClientError> {
        match to {
            Target::GroupId(id) => self
                .client
                .with_home(|h| h.conversation(id))?
                .ok_or_else(|| refused(ErrorCode::UnknownGroup, "no group with this id here")),
            Target::GroupName(name) => {
                let found = self.client.with_home(|h| h.conversations_named(name))?;
                match found.len() {
                    0 => Err(refused(
                        ErrorCode::UnknownGroup,
                        format!("no group called #{name} here (`postern group list` shows them)"),
                    )),
                    1 => Ok(found.into_iter().next().expect("one")),
                    _ => Err(refused(
                        ErrorCode::BadRequest,
                        format!("several groups are called #{name}; name one by its id (#HEX)"),
                    )),
                }
            }
            Target::Contact(r) => {
                let account = self.resolve(r).await?;
                if Some(account) == self.device.map(|d| d.account) {
                    return Err(refused(
                        ErrorCode::BadRequest,
                        "that is your own account; your other devices see what you send",
                    ));
                }
                if let Some(c) = self.client.with_home(|h| h.direct_with(account))? {
                    return Ok(c);
                }
                self.create_conversation(ConversationKind::Direct, "", vec![account])
                    .await
            }
        }
    }

    async fn create_conversation(
        &mut self,
        kind: ConversationKind,
        name: &str,
        accounts: Vec<AccountId>,
    ) -> Result<Conversation, ClientError> {
        let me = self.me()?;
        let mut everyone: Vec<AccountId> = accounts.clone();
        everyone.push(me.account);
        let (dir, changed) = self.directory(everyone.iter().copied()).await?;
        let mut invited = accounts.clone();
        invited.push(me.account);
        invited.sort_unstable();
        invited.dedup();
        let adds = self.claim_packages(&invited, &dir).await?;
        let group_id = rand::random::<[u8; 16]>().to_vec();
        let conversation = Conversation {
            group_id: group_id.clone(),
            kind,
            name: name.to_owned(),
            peer: (kind == ConversationKind::Direct).then(|| accounts[0]),
            state: "active".into(),
        };
        let meta = GroupMeta {
            version: content::CONTENT_VERSION,
            kind: match kind {
                ConversationKind::Direct => content::group_meta::Kind::Direct,
                ConversationKind::Group => content::group_meta::Kind::Group,
            } as i32,
        };
        self.commit_change(
            &group_id,
            adds,
            Vec::new(),
            Some((meta, conversation.clone())),
        )
        .await?;
        let names: Vec<String> = accounts.iter().map(|a| self.client.name_of(*a)).collect();
        let mut items = self.key_change_notices(&changed, Some(&group_id))?;
        items.push(system(
            &group_id,
            match kind {
                ConversationKind::Direct => format!("you started a chat with {}", names.join(", ")),
                ConversationKind::Group => {
                    format!("you created #{name} with {}", names.join(", "))
                }
            },
        ));
        self.client.with_home(|h| h.add_items(items))?;
        if kind == ConversationKind::Group {
            self.send_group_name(&conversation).await?;
        }
        Ok(conversation)
    }

    /// Tells the group its name, encrypted (see [`content::GroupName`]).
    async fn send_group_name(&mut self, c: &Conversation) -> Result<(), ClientError> {
        let content = Content {
            version: content::CONTENT_VERSION,
            message_id: new_message_id().to_vec().into(),
            sent_at_ms: now_ms(),
            in_reply_to: Default::default(),
            body: Some(content::content::Body::GroupName(content::GroupName {
                name: c.name.clone(),
            })),
        };
        self.send_content(c, content).await.map(drop)
    }

    /// Creates a named group with these members (and all their devices).
    pub async fn create_group(
        &mut self,
        name: &str,
        members: &[Recipient],
    ) -> Result<Conversation, ClientError> {
        if name.is_empty() || name.len() > 64 || name.contains(char::is_whitespace) {
            return Err(refused(
                ErrorCode::BadRequest,
                "group names are 1 to 64 bytes without spaces",
            ));
        }
        self.sync().await?;
        let mut accounts = Vec::new();
        for m in members {
            accounts.push(self.resolve(m).await?);
        }
        accounts.sort_unstable();
        accounts.dedup();
        accounts.retain(|a| Some(*a) != self.device.map(|d| d.account));
        self.create_conversation(ConversationKind::Group, name, accounts)
            .await
    }

    /// Adds members (all their devices) to a group.
    pub async fn add_members(
        &mut self,
        group: &Target,
        members: &[Recipient],
    ) -> Result<(), ClientError> {
        self.sync().await?;
        let c = self.conversation_for(group).await?;
        let mut accounts = Vec::new();
        for m in members {
            accounts.push(self.resolve(m).await?);
        }
        let (dir, changed) = self.directory(accounts.iter().copied()).await?;
        let adds = self.claim_packages(&accounts, &dir).await?;
        self.commit_change(&c.group_id, adds, Vec::new(), None)
            .await?;
        let names: Vec<String> = accounts.iter().map(|a| self.client.name_of(*a)).collect();
        let mut items = self.key_change_notices(&changed, Some(&c.group_id))?;
        items.push(system(
            &c.group_id,
            format!("you added {}", names.join(", ")),
        ));
        self.client.with_home(|h| h.add_items(items))?;
        if c.kind == ConversationKind::Group {
            self.send_group_name(&c).await?;
        }
        Ok(())
    }

    /// Removes members (all their devices) from a group.
    pub async fn remove_members(
        &mut self,
        group: &Target,
        members: &[Recipient],
    ) -> Result<(), ClientError> {
        self.sync().await?;
        let c = self.conversation_for(group).await?;
        let mut accounts = HashSet::new();
        for m in members {
            accounts.insert(self.resolve(m).await?);
        }
        let devices: Vec<DeviceAddr> = self
            .group_members(&c.group_id)?
            .into_iter()
            .map(|m| m.device)
            .filter(|d| accounts.contains(&d.account))
            .collect();
        if devices.is_empty() {
            return Err(refused(ErrorCode::BadRequest, "they are not in this group"));
        }
        self.commit_change(&c.group_id, Vec::new(), devices, None)
            .await?;
        let names: Vec<String> = accounts.iter().map(|a| self.client.name_of(*a)).collect();
        self.client.with_home(|h| {
            h.add_items(vec![system(
                &c.group_id,
                format!("you removed {}", names.join(", ")),
            )])
        })?;
        Ok(())
    }

    /// Leaves a group: tells the members (one of them commits the removal
    /// of this account's devices) and forgets it here.
    pub async fn leave_group(&mut self, group: &Target) -> Result<(), ClientError> {
        self.sync().await?;
        let c = self.conversation_for(group).await?;
        let me = self.me()?;
        let id = new_message_id();
        let leave = Content {
            version: content::CONTENT_VERSION,
            message_id: id.to_vec().into(),
            sent_at_ms: now_ms(),
            in_reply_to: Default::default(),
            body: Some(content::content::Body::Leave(content::Leave {})),
        };
        self.send_content(&c, leave).await?;
        let txn = Txn::begin(&self.client)?;
        self.client.with_engine(|e, h| {
            if let Some(mut g) = e.load(&c.group_id).map_err(mls_failure)? {
                e.forget(&mut g).map_err(mls_failure)?;
            }
            h.set_conversation_state(&c.group_id, "left")?;
            h.add_items(vec![system(&c.group_id, "you left".into())])?;
            Ok(())
        })?;
        txn.commit()?;
        tracing::debug!(device = %me, "left a group");
        Ok(())
    }

    /// The member devices of a group, as this device's MLS state has them.
    pub fn group_members(&self, group_id: &[u8]) -> Result<Vec<Member>, ClientError> {
        let devices = self.client.with_engine(|e, _| {
            Ok(e.load(group_id)
                .map_err(mls_failure)?
                .map(|g| members(&g))
                .unwrap_or_default())
        })?;
        Ok(devices
            .into_iter()
            .map(|(_, device)| Member {
                device,
                name: self.client.name_of(device.account),
            })
            .collect())
    }

    /// Sends a text to a contact or group; returns once the server has
    /// stored it for every member device.
    pub async fn send_text(&mut self, to: &Target, text: &str) -> Result<pb::Sent, ClientError> {
        let pending = self.queue_text(to, text).await?;
        self.send_pending(&pending).await
    }

    /// Catches up, finds (or starts) the conversation and puts the text in
    /// the outbox with a fresh id, without sending it; [`Connection::send_pending`]
    /// or [`Connection::flush_outbox`] sends it, with that id, however many
    /// times it takes.
    pub async fn queue_text(
        &mut self,
        to: &Target,
        text: &str,
    ) -> Result<PendingSend, ClientError> {
        self.sync().await?;
        let c = self.conversation_for(to).await?;
        let content = Content::text(new_message_id(), now_ms(), text);
        let pending = PendingSend {
            client_message_id: content.message_id[..]
                .try_into()
                .map_err(|_| ClientError::Protocol("message ids are 16 bytes"))?,
            group_id: c.group_id,
            content: content.encode_to_vec(),
        };
        self.client
            .with_home(|h| h.outbox_add(&pending, now_ms()))?;
        Ok(pending)
    }

    /// Puts a content in the outbox, then sends it.
    pub async fn send_content(
        &mut self,
        c: &Conversation,
        content: Content,
    ) -> Result<pb::Sent, ClientError> {
        let client_message_id: [u8; 16] = content.message_id[..]
            .try_into()
            .map_err(|_| ClientError::Protocol("message ids are 16 bytes"))?;
        let pending = PendingSend {
            client_message_id,
            group_id: c.group_id.clone(),
            content: content.encode_to_vec(),
        };
        self.client
            .with_home(|h| h.outbox_add(&pending, now_ms()))?;
        self.send_pending(&pending).await
    }

    /// Encrypts and sends one outbox entry for the group's current epoch;
    /// after losing a race to a commit, catches up and encrypts again. The
    /// id stays the same, so the server stores it once.
    pub async fn send_pending(&mut self, p: &PendingSend) -> Result<pb::Sent, ClientError> {
        for _ in 0..MAX_ATTEMPTS {
            let message = self.client.with_engine(|e, _| {
                let mut g = e.load(&p.group_id).map_err(mls_failure)?.ok_or_else(|| {
                    refused(
                        ErrorCode::NotAMember,
                        "this device is not in that conversation",
                    )
                })?;
                e.encrypt(&mut g, &p.content).map_err(mls_failure)
            })?;
            let req = Req::GroupSend(pb::GroupSend {
                client_message_id: p.client_message_id.to_vec().into(),
                group_id: p.group_id.clone().into(),
                message: message.into(),
            });
            match self.call(req).await {
                Ok(Resp::Sent(sent)) => {
                    let me = self.device;
                    let body = Content::decode(&p.content[..])
                        .map(|c| render(&c))
                        .unwrap_or_default();
                    let item = NewItem {
                        group_id: p.group_id.clone(),
                        sender: me,
                        message_id: Some(p.client_message_id),
                        kind: "own",
                        body,
                        content: Some(p.content.clone()),
                        sent_at: now_ms(),
                        received_at: sent.received_at_ms,
                    };
                    let txn = Txn::begin(&self.client)?;
                    self.client.with_home(|h| {
                        h.outbox_remove(&p.client_message_id)?;
                        h.add_items(vec![item])
                    })?;
                    txn.commit()?;
                    return Ok(sent);
                }
                Ok(_) => return Err(ClientError::Protocol("unexpected answer to a group send")),
                Err(e) if e.code() == Some(ErrorCode::StaleEpoch) => {
                    self.lost_races += 1;
                    self.catch_up().await?
                }
                Err(e) => return Err(e),
            }
        }
        Err(refused(
            ErrorCode::StaleEpoch,
            "the group kept changing; the message stays in the outbox",
        ))
    }

    /// Sends everything in the outbox, oldest first.
    pub async fn flush_outbox(&mut self) -> Result<Vec<(PendingSend, pb::Sent)>, ClientError> {
        self.sync().await?;
        let pending = self.client.with_home(|h| h.outbox())?;
        let mut done = Vec::with_capacity(pending.len());
        for p in pending {
            let sent = self.send_pending(&p).await?;
            done.push((p, sent));
        }
        Ok(done)
    }

    /// From a new device: joins every conversation of the account by
    /// external commit (RFC 9420 §12.4.3.2), using the GroupInfo and tree
    /// the server keeps. Returns how many it joined.
    pub async fn join_account_conversations(&mut self) -> Result<usize, ClientError> {
        self.catch_up().await?;
        let Resp::Groups(groups) = self.call(Req::ListGroups(pb::ListGroups {})).await? else {
            return Err(ClientError::Protocol("unexpected answer to list groups"));
        };
        let mut joined = 0;
        for group_id in groups.group_ids {
            let known = self.client.with_home(|h| h.conversation(&group_id))?;
            if known.is_some_and(|c| c.state == "active") {
                continue;
            }
            self.join_external(&group_id, "joined from this new device")
                .await?;
            joined += 1;
        }
        Ok(joined)
    }

    async fn join_external(&mut self, group_id: &[u8], note: &str) -> Result<(), ClientError> {
        let me = self.me()?;
        for _ in 0..MAX_ATTEMPTS {
            let Resp::GroupInfo(info) = self
                .call(Req::FetchGroupInfo(pb::FetchGroupInfo {
                    group_id: group_id.to_vec().into(),
                    epoch: None,
                }))
                .await?
            else {
                return Err(ClientError::Protocol(
                    "unexpected answer to fetch group info",
                ));
            };
            let txn = Txn::begin(&self.client)?;
            let (group_members, request, meta) = self.client.with_engine(|e, h| {
                let tree = mls::parse_tree(&info.ratchet_tree).map_err(mls_failure)?;
                let (g, out) = e
                    .join_external(&info.group_info, tree)
                    .map_err(mls_failure)?;
                let request = pb::GroupCommit {
                    client_message_id: new_message_id().to_vec().into(),
                    group_id: group_id.to_vec().into(),
                    commit: out.commit.into(),
                    welcome: Default::default(),
                    welcome_to: Vec::new(),
                    added: vec![addr(me)],
                    removed: Vec::new(),
                    group_info: out.group_info.into(),
                    ratchet_tree: out.ratchet_tree.into(),
                };
                h.set_pending_commit(group_id, &request.encode_to_vec())?;
                Ok((members(&g), request, group_meta(&g)))
            })?;
            // Check everyone already in the group before joining it.
            let (dir, _) = self
                .directory(group_members.iter().map(|(_, d)| d.account))
                .await?;
            self.client.with_engine(|e, _| {
                let g = e
                    .load(group_id)
                    .map_err(mls_failure)?
                    .ok_or(ClientError::Protocol("joined group vanished"))?;
                for m in g.members() {
                    if mls::credential_device(&m.credential).ok() == Some(me) {
                        continue;
                    }
                    mls::check_member(&dir, &m.credential, &m.signature_key)
                        .map_err(mls_failure)?;
                }
                Ok(())
            })?;
            txn.commit()?;
            let outcome = self.call(Req::GroupCommit(request)).await.map(|_| ());
            match self.conclude_commit(group_id, outcome)? {
                Ok(()) => {
                    let conversation = conversation_from(group_id, &meta, &group_members, me);
                    let name = self.client.conversation_name(&conversation);
                    self.client.with_home(|h| {
                        h.add_conversation(&conversation, now_ms())?;
                        h.add_items(vec![system(group_id, format!("{note}: {name}"))])
                    })?;
                    return Ok(());
                }
                Err(e) if e.code() == Some(ErrorCode::StaleEpoch) => {
                    self.forget_group(group_id)?;
                }
                Err(e) => {
                    self.forget_group(group_id)?;
                    return Err(e);
                }
            }
        }
        Err(refused(
            ErrorCode::StaleEpoch,
            "the group kept changing while joining; try again",
        ))
    }

    fn forget_group(&self, group_id: &[u8]) -> Result<(), ClientError> {
        self.client.with_engine(|e, _| {
            if let Some(mut g) = e.load(group_id).map_err(mls_failure)? {
                e.forget(&mut g).map_err(mls_failure)?;
            }
            Ok(())
        })
    }

    /// Removes one of this account's other devices: from the server (it
    /// can no longer connect or receive) and from every conversation (it
    /// cannot decrypt anything sent after). Returns how many conversations
    /// it was removed from.
    pub async fn remove_device(&mut self, device_id: u32) -> Result<usize, ClientError> {
        let me = self.me()?;
        self.call(Req::RemoveDevice(pb::RemoveDevice { device_id }))
            .await?;
        let target = DeviceAddr {
            account: me.account,
            device: device_id,
        };
        self.sync().await?;
        let mut removed = 0;
        for c in self.client.with_home(|h| h.conversations())? {
            if c.state != "active" {
                continue;
            }
            let inside = self
                .group_members(&c.group_id)?
                .iter()
                .any(|m| m.device == target);
            if inside {
                self.commit_change(&c.group_id, Vec::new(), vec![target], None)
                    .await?;
                self.client.with_home(|h| {
                    h.add_items(vec![system(
                        &c.group_id,
                        format!("you removed your device {device_id}"),
                    )])
                })?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The safety number between this account and a contact, from the
    /// directory's current keys.
    pub async fn safety_number(
        &mut self,
        contact: &Recipient,
    ) -> Result<SafetyReport, ClientError> {
        let me = self.me()?;
        let account = self.resolve(contact).await?;
        let (dir, changed) = self.directory([me.account, account]).await?;
        let notices = self.key_change_notices(&changed, None)?;
        if !notices.is_empty() {
            self.client.with_home(|h| h.add_items(notices))?;
        }
        let keys = |a: AccountId| -> Vec<[u8; 32]> {
            dir.get(&a)
                .map(|d| d.values().copied().collect())
                .unwrap_or_default()
        };
        let number = crate::safety::safety_number(
            (me.account, &keys(me.account)),
            (account, &keys(account)),
        );
        let verified = self
            .client
            .with_home(|h| h.verified(account))?
            .map(|(n, at)| (at, n == number));
        Ok(SafetyReport {
            contact: self.client.name_of(account),
            number,
            verified,
            changed: !changed.is_empty(),
        })
    }

    /// Records that the member compared and confirmed the safety number.
    pub async fn mark_verified(
        &mut self,
        contact: &Recipient,
    ) -> Result<SafetyReport, ClientError> {
        let report = self.safety_number(contact).await?;
        let account = self.resolve(contact).await?;
        self.client
            .with_home(|h| h.set_verified(account, &report.number, now_ms()))?;
        Ok(SafetyReport {
            verified: Some((now_ms(), true)),
            ..report
        })
    }

    /// Processes one delivered batch: each message in its own transaction
    /// with the MLS state change it causes; then acks the batch.
    pub(crate) async fn take_batch(&mut self, batch: pb::Deliver) -> Result<(), ClientError> {
        let Some(last) = batch.messages.iter().map(|m| m.seq).max() else {
            return Ok(());
        };
        let mut messages = batch.messages;
        messages.sort_by_key(|m| m.seq);
        for m in messages {
            // Checked inside the transaction: another connection of this
            // device may have processed it meanwhile.
            let txn = Txn::begin(&self.client)?;
            if m.seq <= self.client.with_home(|h| h.last_seq())? {
                continue;
            }
            let items = match self.process_queued(&m).await {
                Ok(items) => items,
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    tracing::warn!(seq = m.seq, error = %e, "could not process a message");
                    let group = m.group_id.to_vec();
                    vec![system(&group, format!("a message could not be read: {e}"))]
                }
            };
            let stored = self.client.with_home(|h| {
                let stored = h.add_items(items)?;
                h.set_last_seq(m.seq)?;
                Ok::<_, ClientError>(stored)
            })?;
            txn.commit()?;
            for item in stored {
                let c = self.client.with_home(|h| h.conversation(&item.group_id))?;
                self.ready.push_back(ReceivedMessage {
                    seq: m.seq,
                    conversation: c
                        .map(|c| self.client.conversation_name(&c))
                        .unwrap_or_default(),
                    from: item
                        .sender
                        .map(|s| self.client.name_of(s.account))
                        .unwrap_or_default(),
                    item,
                });
            }
        }
        self.call(Req::Ack(pb::Ack { up_to_seq: last })).await?;
        Ok(())
    }

    async fn process_queued(&mut self, m: &pb::QueuedMessage) -> Result<Vec<NewItem>, ClientError> {
        let sender = m
            .sender
            .as_ref()
            .and_then(device_of)
            .ok_or(ClientError::Protocol("queued message without a sender"))?;
        let msg = mls::parse(&m.payload).map_err(mls_failure)?;
        if msg.wire_format() == WireFormat::Welcome {
            let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
                return Err(mls_failure(MlsError::Malformed("not a welcome".into())));
            };
            return self.on_welcome(&m.group_id, sender, welcome).await;
        }
        let protocol = msg
            .try_into_protocol_message()
            .map_err(|e| mls_failure(mls::mls_err(e)))?;
        let group_id = protocol.group_id().as_slice().to_vec();
        let Some(c) = self.client.with_home(|h| h.conversation(&group_id))? else {
            tracing::debug!("message for a group this device is not in");
            return Ok(Vec::new());
        };
        if c.state != "active" {
            return Ok(Vec::new());
        }
        let (mut group, processed) = self.client.with_engine(|e, _| {
            let mut g = e
                .load(&group_id)
                .map_err(mls_failure)?
                .ok_or(ClientError::Protocol("conversation without MLS state"))?;
            let processed = e.process(&mut g, protocol).map_err(mls_failure)?;
            Ok((g, processed))
        })?;
        let from = mls::credential_device(processed.credential()).map_err(mls_failure)?;
        let is_external = matches!(processed.sender(), Sender::NewMemberCommit);
        let sent_at = m.received_at_ms;
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                let bytes = app.into_bytes();
                let content = Content::decode(&bytes[..])
                    .map_err(|_| ClientError::Protocol("undecodable content"))?;
                match &content.body {
                    Some(content::content::Body::Leave(_)) => {
                        self.on_leave(&group, &group_id, from)
                    }
                    Some(content::content::Body::GroupName(n)) => {
                        if c.kind != ConversationKind::Group || n.name == c.name {
                            return Ok(Vec::new());
                        }
                        let renamed = Conversation {
                            name: n.name.clone(),
                            ..c.clone()
                        };
                        self.client
                            .with_home(|h| h.add_conversation(&renamed, now_ms()))?;
                        let who = self.client.name_of(from.account);
                        let body = if c.name.is_empty() {
                            format!("the group is called #{}", n.name)
                        } else {
                            format!("{who} renamed #{} to #{}", c.name, n.name)
                        };
                        return Ok(vec![system(&group_id, body)]);
                    }
                    _ => {}
                }
                let message_id = content.message_id[..].try_into().ok();
                Ok(vec![NewItem {
                    group_id,
                    sender: Some(from),
                    message_id,
                    kind: "message",
                    body: render(&content),
                    content: Some(bytes),
                    sent_at: if content.sent_at_ms > 0 {
                        content.sent_at_ms
                    } else {
                        sent_at
                    },
                    received_at: now_ms(),
                }])
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let mut added: Vec<(openmls::prelude::Credential, Vec<u8>)> = staged
                    .add_proposals()
                    .map(|p| {
                        let leaf = p.add_proposal().key_package().leaf_node();
                        (
                            leaf.credential().clone(),
                            leaf.signature_key().as_slice().to_vec(),
                        )
                    })
                    .collect();
                if is_external && let Some(leaf) = staged.update_path_leaf_node() {
                    added.push((
                        leaf.credential().clone(),
                        leaf.signature_key().as_slice().to_vec(),
                    ));
                }
                let removed: Vec<DeviceAddr> = staged
                    .remove_proposals()
                    .filter_map(|p| group.member(p.remove_proposal().removed()))
                    .filter_map(|cred| mls::credential_device(cred).ok())
                    .collect();
                let accounts: Vec<AccountId> = added
                    .iter()
                    .filter_map(|(cred, _)| mls::credential_device(cred).ok())
                    .map(|d| d.account)
                    .collect();
                let (dir, changed) = self.directory(accounts).await?;
                let mut items = self.key_change_notices(&changed, Some(&group_id))?;
                let mut added_devices = Vec::new();
                for (cred, key) in &added {
                    match mls::check_member(&dir, cred, key) {
                        Ok(d) => added_devices.push(d),
                        Err(e) => {
                            self.client
                                .with_home(|h| h.set_conversation_state(&group_id, "broken"))?;
                            items.push(system(
                                &group_id,
                                format!(
                                    "a change by {} was NOT applied and this conversation is \
                                     frozen: {e}",
                                    self.client.name_of(from.account)
                                ),
                            ));
                            return Ok(items);
                        }
                    }
                }
                let before: BTreeSet<AccountId> =
                    members(&group).iter().map(|(_, d)| d.account).collect();
                let self_removed = staged.self_removed();
                self.client
                    .with_engine(|e, _| e.merge(&mut group, *staged).map_err(mls_failure))?;
                let who = self.client.name_of(from.account);
                let mut by_account: BTreeMap<AccountId, usize> = BTreeMap::new();
                for d in &added_devices {
                    *by_account.entry(d.account).or_default() += 1;
                }
                if is_external
                    && c.kind == ConversationKind::Group
                    && Some(from.account) == self.device.map(|d| d.account)
                {
                    // Our account's new device joined: the lowest of our
                    // other devices tells it the name.
                    let lowest = members(&group)
                        .into_iter()
                        .filter(|(_, d)| d.account == from.account && *d != from)
                        .min_by_key(|(i, _)| i.u32())
                        .map(|(_, d)| d);
                    if lowest == self.device {
                        self.tasks.push(Task::SendName {
                            group_id: group_id.clone(),
                        });
                    }
                }
                for (account, _) in by_account {
                    let name = self.client.name_of(account);
                    items.push(system(
                        &group_id,
                        if is_external && account == from.account {
                            format!("{name} joined from a new device")
                        } else if before.contains(&account) {
                            format!("{who} added a device of {name}")
                        } else {
                            format!("{who} added {name}")
                        },
                    ));
                }
                let after: BTreeSet<AccountId> =
                    members(&group).iter().map(|(_, d)| d.account).collect();
                let mut gone: Vec<AccountId> = removed.iter().map(|d| d.account).collect();
                gone.sort_unstable();
                gone.dedup();
                for account in gone {
                    let name = self.client.name_of(account);
                    items.push(system(
                        &group_id,
                        if after.contains(&account) {
                            format!("{who} removed a device of {name}")
                        } else {
                            format!("{who} removed {name}")
                        },
                    ));
                }
                if self_removed {
                    self.client
                        .with_home(|h| h.set_conversation_state(&group_id, "removed"))?;
                    items.push(system(
                        &group_id,
                        "this device was removed from the conversation".into(),
                    ));
                }
                Ok(items)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// A member left: the remaining device with the lowest leaf index
    /// commits the removal of all its devices.
    fn on_leave(&mut self, group: &MlsGroup, group_id: &[u8], leaver: DeviceAddr) {
        let Some(me) = self.device else { return };
        if me.account == leaver.account {
            // Another device of ours left: so do we, here.
            let _ = self
                .client
                .with_home(|h| h.set_conversation_state(group_id, "left"));
            return;
        }
        let lowest = members(group)
            .into_iter()
            .filter(|(_, d)| d.account != leaver.account)
            .map(|(i, d)| (i.u32(), d))
            .min_by_key(|(i, _)| *i)
            .map(|(_, d)| d);
        if lowest == Some(me) {
            self.tasks.push(Task::RemoveAccount {
                group_id: group_id.to_vec(),
                account: leaver.account,
            });
        }
    }

    async fn on_welcome(
        &mut self,
        group_id: &[u8],
        sender: DeviceAddr,
        welcome: openmls::prelude::Welcome,
    ) -> Result<Vec<NewItem>, ClientError> {
        let me = self.me()?;
        if let Some(c) = self.client.with_home(|h| h.conversation(group_id))?
            && c.state == "active"
        {
            return Ok(Vec::new());
        }
        let (opened, epoch) = self
            .client
            .with_engine(|e, _| e.open_welcome(welcome).map_err(mls_failure))?;
        let tree = self
            .call(Req::FetchGroupInfo(pb::FetchGroupInfo {
                group_id: group_id.to_vec().into(),
                epoch: Some(epoch),
            }))
            .await;
        let joined = match tree {
            Ok(Resp::GroupInfo(info)) => self.client.with_engine(|e, _| {
                let tree = mls::parse_tree(&info.ratchet_tree).map_err(mls_failure)?;
                Ok(e.join(opened, tree))
            })?,
            Ok(_) => {
                return Err(ClientError::Protocol(
                    "unexpected answer to fetch group info",
                ));
            }
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => Err(MlsError::Mls(e.to_string())),
        };
        let group = match joined {
            Ok(g) => g,
            Err(e) => {
                // The tree of the Welcome's epoch is gone (the Welcome
                // waited longer than the server keeps it): join the current
                // epoch by external commit; what was sent before is lost to
                // this device.
                tracing::info!(error = %e, "cannot join at the welcome's epoch; joining by external commit");
                self.join_external(group_id, "you were added").await?;
                return Ok(Vec::new());
            }
        };
        let devices = members(&group);
        let (dir, changed) = self
            .directory(devices.iter().map(|(_, d)| d.account))
            .await?;
        let mut items = self.key_change_notices(&changed, Some(group_id))?;
        for m in group.members() {
            if let Err(e) = mls::check_member(&dir, &m.credential, &m.signature_key) {
                self.forget_group(group_id)?;
                return Err(mls_failure(e));
            }
        }
        let meta = group_meta(&group);
        let conversation = conversation_from(group_id, &meta, &devices, me);
        self.client
            .with_home(|h| h.add_conversation(&conversation, now_ms()))?;
        let who = self.client.name_of(sender.account);
        items.push(system(
            group_id,
            match conversation.kind {
                ConversationKind::Direct => format!("{who} started a chat with you"),
                ConversationKind::Group => format!("{who} added you to a group"),
            },
        ));
        Ok(items)
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
