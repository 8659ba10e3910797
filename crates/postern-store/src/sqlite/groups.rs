//! The MLS delivery service's tables: groups, their member devices, and
//! key packages. The writer-side functions run inside the writer's batch
//! transaction (each command in its own savepoint); the read side uses the
//! read pool.
//!
//! A commit is one command: the epoch check, the membership check, the
//! epoch bump, the new member list, the GroupInfo and tree, and the queued
//! copies of the commit and its Welcome commit or roll back together, so a
//! commit is never accepted without being delivered, nor delivered without
//! being accepted.

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::Row;
use sqlx::sqlite::SqliteConnection;

use super::enqueue::enqueue_all;
use super::writer::{Command, Failure};
use super::{SqliteStore, db};
use crate::{
    AccountId, ClaimedKeyPackage, CommitOutcome, DeviceAddr, GroupState, GroupStore,
    KeyPackageCount, KeyPackageStore, Millis, NewCommit, NewMessage, Recipients, Result,
    StoreError, welcome_message_id,
};

async fn members(
    conn: &mut SqliteConnection,
    group_id: &[u8],
) -> Result<Vec<DeviceAddr>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT account_id, device_id FROM group_members WHERE group_id = ? \
         ORDER BY account_id, device_id",
    )
    .bind(group_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            let account: &[u8] = row.try_get(0)?;
            let account = AccountId::from_slice(account)
                .ok_or_else(|| sqlx::Error::Protocol("corrupt account id".into()))?;
            Ok(DeviceAddr {
                account,
                device: row.try_get(1)?,
            })
        })
        .collect()
}

pub(super) async fn create_group(
    conn: &mut SqliteConnection,
    group_id: Bytes,
    creator: DeviceAddr,
    now: Millis,
) -> Result<(), Failure> {
    let inserted = sqlx::query(
        "INSERT INTO groups (id, epoch, group_info, ratchet_tree, created_at, updated_at) \
         VALUES (?, 0, x'', x'', ?, ?) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&group_id[..])
    .bind(now)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(Failure::Logical(StoreError::GroupExists));
    }
    sqlx::query("INSERT INTO group_members (group_id, account_id, device_id) VALUES (?, ?, ?)")
        .bind(&group_id[..])
        .bind(&creator.account.0[..])
        .bind(creator.device)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

pub(super) async fn commit(
    conn: &mut SqliteConnection,
    c: NewCommit,
) -> Result<CommitOutcome, Failure> {
    // A retried commit that was accepted before is a duplicate, whatever
    // the epoch is now: answer as the first time did.
    let earlier: Option<Millis> = sqlx::query_scalar(
        "SELECT received_at FROM sends WHERE sender_account = ? AND client_message_id = ?",
    )
    .bind(&c.sender.account.0[..])
    .bind(&c.client_message_id[..])
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(received_at) = earlier {
        let duplicate = crate::Enqueued {
            duplicate: true,
            received_at,
            deliveries: Vec::new(),
        };
        return Ok(CommitOutcome::Accepted {
            commit: duplicate,
            welcome: None,
        });
    }
    let epoch: Option<i64> = sqlx::query_scalar("SELECT epoch FROM groups WHERE id = ?")
        .bind(&c.group_id[..])
        .fetch_optional(&mut *conn)
        .await?;
    let Some(epoch) = epoch else {
        return Ok(CommitOutcome::UnknownGroup);
    };
    let current = u64::try_from(epoch).unwrap_or(0);
    if c.epoch != current {
        return Ok(CommitOutcome::Stale {
            current_epoch: current,
        });
    }
    let before = members(conn, &c.group_id).await?;
    if !c.sender_may_commit(&before) {
        return Ok(CommitOutcome::NotAMember);
    }
    sqlx::query(
        "UPDATE groups SET epoch = epoch + 1, group_info = ?, ratchet_tree = ?, updated_at = ? \
         WHERE id = ?",
    )
    .bind(&c.group_info[..])
    .bind(&c.ratchet_tree[..])
    .bind(c.received_at)
    .bind(&c.group_id[..])
    .execute(&mut *conn)
    .await?;
    for gone in &c.removed {
        sqlx::query(
            "DELETE FROM group_members WHERE group_id = ? AND account_id = ? AND device_id = ?",
        )
        .bind(&c.group_id[..])
        .bind(&gone.account.0[..])
        .bind(gone.device)
        .execute(&mut *conn)
        .await?;
    }
    for new in &c.added {
        // Only devices that exist join the fan-out list.
        sqlx::query(
            "INSERT INTO group_members (group_id, account_id, device_id) \
             SELECT ?1, account_id, device_id FROM devices WHERE account_id = ?2 AND device_id = ?3 \
             ON CONFLICT DO NOTHING",
        )
        .bind(&c.group_id[..])
        .bind(&new.account.0[..])
        .bind(new.device)
        .execute(&mut *conn)
        .await?;
    }
    // Everyone who was a member hears of the commit, removed devices
    // included: that is how they learn they were removed.
    let fan_out: Vec<DeviceAddr> = before.into_iter().filter(|m| *m != c.sender).collect();
    let mut msgs = vec![NewMessage {
        sender: c.sender,
        client_message_id: c.client_message_id,
        to: Recipients::Devices(fan_out),
        group_id: Some(c.group_id.clone()),
        group_epoch: None,
        payload: c.commit,
        received_at: c.received_at,
        expires_at: c.expires_at,
    }];
    if let Some((welcome, to)) = c.welcome {
        sqlx::query(
            "INSERT INTO welcome_trees (group_id, epoch, ratchet_tree, expires_at) \
             VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(&c.group_id[..])
        .bind(i64::try_from(current + 1).unwrap_or(i64::MAX))
        .bind(&c.ratchet_tree[..])
        .bind(c.expires_at)
        .execute(&mut *conn)
        .await?;
        msgs.push(NewMessage {
            sender: c.sender,
            client_message_id: welcome_message_id(c.client_message_id),
            to: Recipients::Devices(to),
            group_id: Some(c.group_id.clone()),
            group_epoch: None,
            payload: welcome,
            received_at: c.received_at,
            expires_at: c.expires_at,
        });
    }
    let mut results = enqueue_all(conn, &msgs).await?.into_iter();
    let commit = results
        .next()
        .ok_or_else(|| sqlx::Error::Protocol("enqueue lost a result".into()))??;
    let welcome = results.next().transpose()?;
    Ok(CommitOutcome::Accepted { commit, welcome })
}

pub(super) async fn add_key_packages(
    conn: &mut SqliteConnection,
    device: DeviceAddr,
    one_time: Vec<Bytes>,
    last_resort: Option<Bytes>,
    max_one_time: u32,
) -> Result<KeyPackageCount, Failure> {
    let exists: Option<i64> =
        sqlx::query_scalar("SELECT 1 FROM devices WHERE account_id = ? AND device_id = ?")
            .bind(&device.account.0[..])
            .bind(device.device)
            .fetch_optional(&mut *conn)
            .await?;
    if exists.is_none() {
        return Err(Failure::Logical(StoreError::UnknownAccount));
    }
    for package in &one_time {
        sqlx::query(
            "INSERT INTO key_packages (account_id, device_id, last_resort, data) VALUES (?, ?, 0, ?)",
        )
        .bind(&device.account.0[..])
        .bind(device.device)
        .bind(&package[..])
        .execute(&mut *conn)
        .await?;
    }
    // Keep the newest `max_one_time`.
    sqlx::query(
        "DELETE FROM key_packages WHERE account_id = ?1 AND device_id = ?2 AND last_resort = 0 \
         AND id NOT IN (SELECT id FROM key_packages WHERE account_id = ?1 AND device_id = ?2 \
                        AND last_resort = 0 ORDER BY id DESC LIMIT ?3)",
    )
    .bind(&device.account.0[..])
    .bind(device.device)
    .bind(i64::from(max_one_time))
    .execute(&mut *conn)
    .await?;
    if let Some(package) = last_resort {
        sqlx::query(
            "DELETE FROM key_packages WHERE account_id = ? AND device_id = ? AND last_resort = 1",
        )
        .bind(&device.account.0[..])
        .bind(device.device)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO key_packages (account_id, device_id, last_resort, data) VALUES (?, ?, 1, ?)",
        )
        .bind(&device.account.0[..])
        .bind(device.device)
        .bind(&package[..])
        .execute(&mut *conn)
        .await?;
    }
    Ok(count(conn, device).await?)
}

async fn count(
    conn: &mut SqliteConnection,
    device: DeviceAddr,
) -> Result<KeyPackageCount, sqlx::Error> {
    let row = sqlx::query(
        "SELECT COALESCE(SUM(last_resort = 0), 0), COALESCE(SUM(last_resort = 1), 0) \
         FROM key_packages WHERE account_id = ? AND device_id = ?",
    )
    .bind(&device.account.0[..])
    .bind(device.device)
    .fetch_one(&mut *conn)
    .await?;
    let one_time: i64 = row.try_get(0)?;
    let last_resort: i64 = row.try_get(1)?;
    Ok(KeyPackageCount {
        one_time: u32::try_from(one_time).unwrap_or(u32::MAX),
        last_resort: last_resort > 0,
    })
}

pub(super) async fn claim_key_packages(
    conn: &mut SqliteConnection,
    account: AccountId,
    requester: DeviceAddr,
) -> Result<(Vec<ClaimedKeyPackage>, Vec<u32>), Failure> {
    let devices: Vec<u32> =
        sqlx::query_scalar("SELECT device_id FROM devices WHERE account_id = ? ORDER BY device_id")
            .bind(&account.0[..])
            .fetch_all(&mut *conn)
            .await?;
    if devices.is_empty() {
        return Err(Failure::Logical(StoreError::UnknownAccount));
    }
    let mut claimed = Vec::new();
    let mut exhausted = Vec::new();
    for device in devices {
        if requester.account == account && requester.device == device {
            continue;
        }
        // A one-time package first (oldest first), else the last resort.
        let row = sqlx::query(
            "SELECT id, last_resort, data FROM key_packages WHERE account_id = ? AND device_id = ? \
             ORDER BY last_resort, id LIMIT 1",
        )
        .bind(&account.0[..])
        .bind(device)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else {
            exhausted.push(device);
            continue;
        };
        let id: i64 = row.try_get(0)?;
        let last_resort: bool = row.try_get(1)?;
        let data: Vec<u8> = row.try_get(2)?;
        if !last_resort {
            sqlx::query("DELETE FROM key_packages WHERE id = ?")
                .bind(id)
                .execute(&mut *conn)
                .await?;
        }
        claimed.push(ClaimedKeyPackage {
            device,
            key_package: Bytes::from(data),
            last_resort,
        });
    }
    Ok((claimed, exhausted))
}

pub(super) async fn remove_device(
    conn: &mut SqliteConnection,
    device: DeviceAddr,
) -> Result<bool, Failure> {
    // Memberships and key packages go by cascade; the queue has no foreign
    // key (see 0001_initial.sql), so it is cleared here.
    sqlx::query("DELETE FROM queue WHERE account_id = ? AND device_id = ?")
        .bind(&device.account.0[..])
        .bind(device.device)
        .execute(&mut *conn)
        .await?;
    let gone = sqlx::query("DELETE FROM devices WHERE account_id = ? AND device_id = ?")
        .bind(&device.account.0[..])
        .bind(device.device)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok(gone > 0)
}

#[async_trait]
impl GroupStore for SqliteStore {
    async fn create_group(&self, group_id: &[u8], creator: DeviceAddr, now: Millis) -> Result<()> {
        let group_id = Bytes::copy_from_slice(group_id);
        self.inner
            .writer
            .call(|reply| Command::CreateGroup {
                group_id,
                creator,
                now,
                reply,
            })
            .await
    }

    async fn group(&self, group_id: &[u8]) -> Result<Option<GroupState>> {
        let mut conn = self.inner.reads.acquire().await.map_err(db)?;
        let epoch: Option<i64> = sqlx::query_scalar("SELECT epoch FROM groups WHERE id = ?")
            .bind(group_id)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db)?;
        let Some(epoch) = epoch else {
            return Ok(None);
        };
        let members = members(&mut conn, group_id).await.map_err(db)?;
        Ok(Some(GroupState {
            epoch: u64::try_from(epoch).unwrap_or(0),
            members,
        }))
    }

    async fn commit(&self, commit: NewCommit) -> Result<CommitOutcome> {
        self.inner
            .writer
            .call(|reply| Command::Commit {
                commit: Box::new(commit),
                reply,
            })
            .await
    }

    async fn group_info(&self, group_id: &[u8]) -> Result<Option<(u64, Bytes, Bytes)>> {
        let row = sqlx::query("SELECT epoch, group_info, ratchet_tree FROM groups WHERE id = ?")
            .bind(group_id)
            .fetch_optional(&self.inner.reads)
            .await
            .map_err(db)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let epoch: i64 = row.try_get(0).map_err(db)?;
        let info: Vec<u8> = row.try_get(1).map_err(db)?;
        let tree: Vec<u8> = row.try_get(2).map_err(db)?;
        Ok(Some((
            u64::try_from(epoch).unwrap_or(0),
            Bytes::from(info),
            Bytes::from(tree),
        )))
    }

    async fn welcome_tree(&self, group_id: &[u8], epoch: u64) -> Result<Option<Bytes>> {
        let tree: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT ratchet_tree FROM welcome_trees WHERE group_id = ? AND epoch = ?",
        )
        .bind(group_id)
        .bind(i64::try_from(epoch).unwrap_or(i64::MAX))
        .fetch_optional(&self.inner.reads)
        .await
        .map_err(db)?;
        Ok(tree.map(Bytes::from))
    }

    async fn groups_of_account(&self, account: AccountId) -> Result<Vec<Bytes>> {
        let ids: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT DISTINCT group_id FROM group_members WHERE account_id = ? ORDER BY group_id",
        )
        .bind(&account.0[..])
        .fetch_all(&self.inner.reads)
        .await
        .map_err(db)?;
        Ok(ids.into_iter().map(Bytes::from).collect())
    }
}

#[async_trait]
impl KeyPackageStore for SqliteStore {
    async fn add_key_packages(
        &self,
        device: DeviceAddr,
        one_time: Vec<Bytes>,
        last_resort: Option<Bytes>,
        max_one_time: u32,
    ) -> Result<KeyPackageCount> {
        self.inner
            .writer
            .call(|reply| Command::AddKeyPackages {
                device,
                one_time,
                last_resort,
                max_one_time,
                reply,
            })
            .await
    }

    async fn claim_key_packages(
        &self,
        account: AccountId,
        requester: DeviceAddr,
    ) -> Result<(Vec<ClaimedKeyPackage>, Vec<u32>)> {
        self.inner
            .writer
            .call(|reply| Command::ClaimKeyPackages {
                account,
                requester,
                reply,
            })
            .await
    }

    async fn key_package_count(&self, device: DeviceAddr) -> Result<KeyPackageCount> {
        let mut conn = self.inner.reads.acquire().await.map_err(db)?;
        count(&mut conn, device).await.map_err(db)
    }
}
