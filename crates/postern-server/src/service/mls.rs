//! The MLS delivery service (RFC 9420 §13): key packages, and per-group
//! ordering and fan-out of MLS messages.
//!
//! The rules, all about who may post what when, never about content:
//!
//! - a group's commits are totally ordered: the first commit made in the
//!   group's current epoch is accepted and advances the epoch; any other
//!   commit for that epoch is refused with `STALE_EPOCH` (and the current
//!   epoch), so its sender processes the winner and tries again;
//! - application messages are accepted only in the current epoch, so every
//!   recipient can decrypt them with the epoch it holds when they arrive
//!   (its queue delivers the commits before them in order);
//! - only member devices post; a device whose account is a member may join
//!   by external commit (RFC 9420 §12.4.3.2) — how a new device of a member
//!   joins the account's conversations;
//! - messages are fanned out to every member device but the sender.
//!
//! Only the public header of an MLS message is read ([`postern_proto::mls`]).
//! The member list is what committers declare (`added`, `removed`): the
//! server cannot check it against encrypted commits. A member who lies
//! about it can only disturb delivery in a group it belongs to, never read
//! or forge messages: clients check every membership change themselves.
//!
//! On one node, a per-group read-write lock orders things: application
//! messages hold it shared until their copies are committed, a commit holds
//! it exclusively. So no application message of epoch N is queued after
//! the commit that ends epoch N.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use postern_proto::ids::{AccountId, DeviceAddr};
use postern_proto::mls::{self, ContentType, Sender};
use postern_proto::pb::{self, ErrorCode, response::Kind as Resp};
use postern_store::{
    CommitOutcome, NewCommit, NewMessage, Recipients, StoreError, welcome_message_id,
};
use tokio::sync::RwLock;

use super::{Handled, Refusal, Service, SessionInfo, authed, ms, now_ms, refuse, sent};

/// Largest key package accepted, in bytes (a package with an Ed25519
/// credential is about 300 bytes).
pub const MAX_KEY_PACKAGE_LEN: usize = 16 * 1024;

/// Locks that order each group's posts on this node.
#[derive(Default)]
pub(crate) struct GroupLocks {
    locks: Mutex<HashMap<Bytes, Weak<RwLock<()>>>>,
}

impl GroupLocks {
    fn get(&self, group: &Bytes) -> Arc<RwLock<()>> {
        let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lock) = map.get(group).and_then(Weak::upgrade) {
            return lock;
        }
        // Drop the entries of groups nobody is posting to, now and then.
        if map.len() >= 1024 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let lock = Arc::new(RwLock::new(()));
        map.insert(group.clone(), Arc::downgrade(&lock));
        lock
    }
}

fn bad_mls(what: &str, e: mls::MlsHeaderError) -> Refusal {
    refuse(ErrorCode::BadMlsMessage, format!("{what}: {e}"))
}

fn group_id(bytes: &Bytes) -> Handled<Bytes> {
    if bytes.is_empty() || bytes.len() > mls::MAX_GROUP_ID_LEN {
        return Err(refuse(
            ErrorCode::BadRequest,
            format!("group ids are 1 to {} bytes", mls::MAX_GROUP_ID_LEN),
        ));
    }
    Ok(bytes.clone())
}

fn message_id(bytes: &[u8]) -> Handled<[u8; 16]> {
    bytes
        .try_into()
        .map_err(|_| refuse(ErrorCode::BadRequest, "client message ids are 16 bytes"))
}

fn devices(list: &[pb::DeviceAddress]) -> Handled<Vec<DeviceAddr>> {
    list.iter()
        .map(|d| {
            AccountId::from_slice(&d.account_id)
                .map(|account| DeviceAddr {
                    account,
                    device: d.device_id,
                })
                .ok_or_else(|| refuse(ErrorCode::BadRequest, "account ids are 16 bytes"))
        })
        .collect()
}

fn not_a_member() -> Refusal {
    refuse(
        ErrorCode::NotAMember,
        "this device is not a member of the group",
    )
}

fn unknown_group() -> Refusal {
    refuse(ErrorCode::UnknownGroup, "no such group")
}

fn stale(current_epoch: u64) -> Refusal {
    let mut r = refuse(
        ErrorCode::StaleEpoch,
        format!("the group is at epoch {current_epoch}; catch up and try again"),
    );
    r.0.current_epoch = current_epoch;
    r
}

fn too_large(what: &str, max: usize) -> Refusal {
    refuse(
        ErrorCode::PayloadTooLarge,
        format!("{what} is larger than {max} bytes"),
    )
}

impl Service {
    pub(super) async fn upload_key_packages(
        &self,
        s: &SessionInfo,
        r: pb::UploadKeyPackages,
    ) -> Handled<Resp> {
        let me = authed(s)?;
        let max = self.limits.key_packages_per_device;
        if r.key_packages.len() > max as usize {
            return Err(refuse(
                ErrorCode::BadRequest,
                format!("at most {max} key packages per upload"),
            ));
        }
        let all = r
            .key_packages
            .iter()
            .chain(Some(&r.last_resort).filter(|l| !l.is_empty()));
        for package in all {
            if package.len() > MAX_KEY_PACKAGE_LEN {
                return Err(too_large("a key package", MAX_KEY_PACKAGE_LEN));
            }
            mls::expect_wire_format(package, mls::WireFormat::KeyPackage)
                .map_err(|e| bad_mls("key package", e))?;
        }
        let last_resort = Some(r.last_resort).filter(|l| !l.is_empty());
        let count = self
            .store
            .add_key_packages(me, r.key_packages, last_resort, max)
            .await?;
        Ok(self.key_package_count(count))
    }

    fn key_package_count(&self, count: postern_store::KeyPackageCount) -> Resp {
        Resp::KeyPackageCount(pb::KeyPackageCount {
            remaining: count.one_time,
            low: count.one_time < self.limits.key_packages_low_water,
            has_last_resort: count.last_resort,
        })
    }

    pub(super) async fn claim_key_packages(
        &self,
        s: &SessionInfo,
        r: pb::ClaimKeyPackages,
    ) -> Handled<Resp> {
        let me = authed(s)?;
        let account = AccountId::from_slice(&r.account_id)
            .ok_or_else(|| refuse(ErrorCode::BadRequest, "account ids are 16 bytes"))?;
        self.key_package_claims
            .check(&me, std::time::Instant::now())
            .map_err(|w| super::rate_limited("key package claims", w))?;
        let (claimed, exhausted) = self.store.claim_key_packages(account, me).await?;
        Ok(Resp::ClaimedKeyPackages(pb::ClaimedKeyPackages {
            key_packages: claimed
                .into_iter()
                .map(|c| pb::ClaimedKeyPackage {
                    device_id: c.device,
                    key_package: c.key_package,
                    last_resort: c.last_resort,
                })
                .collect(),
            exhausted,
        }))
    }

    pub(super) async fn create_group(&self, s: &SessionInfo, r: pb::CreateGroup) -> Handled<Resp> {
        let me = authed(s)?;
        let id = group_id(&r.group_id)?;
        self.store.create_group(&id, me, now_ms()).await?;
        Ok(Resp::Ok(pb::Ok {}))
    }

    pub(super) async fn group_commit(&self, s: &SessionInfo, r: pb::GroupCommit) -> Handled<Resp> {
        let me = authed(s)?;
        let client_message_id = message_id(&r.client_message_id)?;
        let id = group_id(&r.group_id)?;
        if r.commit.len() > postern_proto::MAX_PAYLOAD_LEN {
            return Err(too_large("the commit", postern_proto::MAX_PAYLOAD_LEN));
        }
        if r.welcome.len() > postern_proto::MAX_PAYLOAD_LEN {
            return Err(too_large("the welcome", postern_proto::MAX_PAYLOAD_LEN));
        }
        let header =
            mls::expect_framed(&r.commit, ContentType::Commit).map_err(|e| bad_mls("commit", e))?;
        if header.group_id != &id[..] {
            return Err(refuse(
                ErrorCode::BadMlsMessage,
                "the commit belongs to another group",
            ));
        }
        mls::expect_wire_format(&r.group_info, mls::WireFormat::GroupInfo)
            .map_err(|e| bad_mls("group info", e))?;
        let added = devices(&r.added)?;
        let removed = devices(&r.removed)?;
        let welcome_to = devices(&r.welcome_to)?;
        if header.sender == Some(Sender::NewMemberCommit) && added != [me] {
            return Err(refuse(
                ErrorCode::BadRequest,
                "an external commit adds exactly the device that sends it",
            ));
        }
        if welcome_to.iter().any(|d| !added.contains(d)) {
            return Err(refuse(
                ErrorCode::BadRequest,
                "welcomes go only to devices the commit adds",
            ));
        }
        let welcome = if r.welcome.is_empty() {
            None
        } else {
            mls::expect_wire_format(&r.welcome, mls::WireFormat::Welcome)
                .map_err(|e| bad_mls("welcome", e))?;
            Some((r.welcome.clone(), welcome_to))
        };
        let now = now_ms();
        let commit = NewCommit {
            group_id: id.clone(),
            epoch: header.epoch,
            sender: me,
            client_message_id,
            added,
            removed,
            commit: r.commit.clone(),
            welcome,
            group_info: r.group_info,
            ratchet_tree: r.ratchet_tree,
            received_at: now,
            expires_at: now + ms(self.message_ttl),
        };
        let lock = self.group_locks.get(&id);
        let _order = lock.write().await;
        match self.store.commit(commit).await? {
            CommitOutcome::Accepted { commit, welcome } => {
                let mut msg = NewMessage {
                    sender: me,
                    client_message_id,
                    to: Recipients::Devices(Vec::new()),
                    group_id: Some(id),
                    group_epoch: None,
                    payload: r.commit,
                    received_at: commit.received_at,
                    expires_at: 0,
                };
                self.push(&msg, &commit);
                if let Some(welcome) = welcome {
                    msg.client_message_id = welcome_message_id(client_message_id);
                    msg.payload = r.welcome;
                    self.push(&msg, &welcome);
                }
                Ok(sent(&commit))
            }
            CommitOutcome::Stale { current_epoch } => Err(stale(current_epoch)),
            CommitOutcome::UnknownGroup => Err(unknown_group()),
            CommitOutcome::NotAMember => Err(not_a_member()),
        }
    }

    pub(super) async fn group_send(&self, s: &SessionInfo, r: pb::GroupSend) -> Handled<Resp> {
        let me = authed(s)?;
        let client_message_id = message_id(&r.client_message_id)?;
        let id = group_id(&r.group_id)?;
        if r.message.len() > postern_proto::MAX_PAYLOAD_LEN {
            return Err(too_large("the message", postern_proto::MAX_PAYLOAD_LEN));
        }
        let header = mls::expect_framed(&r.message, ContentType::Application)
            .map_err(|e| bad_mls("message", e))?;
        if header.group_id != &id[..] {
            return Err(refuse(
                ErrorCode::BadMlsMessage,
                "the message belongs to another group",
            ));
        }
        let lock = self.group_locks.get(&id);
        let _order = lock.read().await;
        let group = self.store.group(&id).await?.ok_or_else(unknown_group)?;
        if !group.members.contains(&me) {
            return Err(not_a_member());
        }
        if header.epoch != group.epoch {
            return Err(stale(group.epoch));
        }
        let now = now_ms();
        let msg = NewMessage {
            sender: me,
            client_message_id,
            to: Recipients::Devices(group.members.into_iter().filter(|d| *d != me).collect()),
            group_id: Some(id),
            // Checked again in the store's transaction: a commit accepted
            // by another node since the check above must not slip in.
            group_epoch: Some(group.epoch),
            payload: r.message,
            received_at: now,
            expires_at: now + ms(self.message_ttl),
        };
        let enqueued = match self.store.enqueue(msg.clone()).await {
            Ok(e) => e,
            Err(StoreError::StaleEpoch { current }) => return Err(stale(current)),
            Err(StoreError::UnknownGroup) => return Err(unknown_group()),
            Err(e) => return Err(e.into()),
        };
        self.push(&msg, &enqueued);
        Ok(sent(&enqueued))
    }

    pub(super) async fn fetch_group_info(
        &self,
        s: &SessionInfo,
        r: pb::FetchGroupInfo,
    ) -> Handled<Resp> {
        let me = authed(s)?;
        let id = group_id(&r.group_id)?;
        let group = self.store.group(&id).await?.ok_or_else(unknown_group)?;
        // Members' devices only: a device of a member account may need it
        // to join by external commit.
        if !group.members.iter().any(|d| d.account == me.account) {
            return Err(not_a_member());
        }
        if let Some(epoch) = r.epoch {
            let tree = self.store.welcome_tree(&id, epoch).await?.ok_or_else(|| {
                refuse(
                    ErrorCode::UnknownGroup,
                    "no ratchet tree kept for that epoch; join the current one",
                )
            })?;
            return Ok(Resp::GroupInfo(pb::GroupInfo {
                epoch,
                group_info: Bytes::new(),
                ratchet_tree: tree,
            }));
        }
        let (epoch, group_info, ratchet_tree) = self
            .store
            .group_info(&id)
            .await?
            .ok_or_else(unknown_group)?;
        if group_info.is_empty() {
            return Err(refuse(
                ErrorCode::UnknownGroup,
                "the group has no commit yet, so no group info",
            ));
        }
        Ok(Resp::GroupInfo(pb::GroupInfo {
            epoch,
            group_info,
            ratchet_tree,
        }))
    }

    pub(super) async fn list_groups(&self, s: &SessionInfo) -> Handled<Resp> {
        let me = authed(s)?;
        let group_ids = self.store.groups_of_account(me.account).await?;
        Ok(Resp::Groups(pb::Groups { group_ids }))
    }
}
