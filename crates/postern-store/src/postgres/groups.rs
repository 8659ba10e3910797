//! The MLS delivery service's tables: groups, commits, key packages, and
//! removing a device from all of them.

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::queue::{columns, enqueue};
use super::{Failure, PgStore, account_id, db, device_number, signed, unsigned};
use crate::{
    AccountId, ClaimedKeyPackage, CommitOutcome, DeviceAddr, Enqueued, GroupState, GroupStore,
    KeyPackageCount, KeyPackageStore, Millis, NewCommit, NewMessage, Recipients, Result,
    StoreError, welcome_message_id,
};

async fn members(conn: &mut PgConnection, group_id: &[u8]) -> Result<Vec<DeviceAddr>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT account_id, device_id FROM group_members WHERE group_id = $1 \
         ORDER BY account_id, device_id",
    )
    .bind(group_id)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter()
        .map(|row| {
            Ok(DeviceAddr {
                account: account_id(row, "account_id")?,
                device: device_number(row, "device_id")?,
            })
        })
        .collect()
}

async fn create_group(
    conn: &mut PgConnection,
    group_id: &[u8],
    creator: DeviceAddr,
    now: Millis,
) -> Result<(), Failure> {
    let inserted = sqlx::query(
        "INSERT INTO groups (id, epoch, group_info, ratchet_tree, created_at, updated_at) \
         VALUES ($1, 0, '', '', $2, $2) ON CONFLICT (id) DO NOTHING",
    )
    .bind(group_id)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if inserted == 0 {
        return Err(StoreError::GroupExists.into());
    }
    sqlx::query("INSERT INTO group_members (group_id, account_id, device_id) VALUES ($1, $2, $3)")
        .bind(group_id)
        .bind(&creator.account.0[..])
        .bind(i64::from(creator.device))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn commit(conn: &mut PgConnection, c: NewCommit) -> Result<CommitOutcome, Failure> {
    // The group row's lock orders the commits of this group across nodes;
    // everything below runs with it held.
    let epoch: Option<i64> =
        sqlx::query_scalar("SELECT epoch FROM groups WHERE id = $1 FOR UPDATE")
            .bind(&c.group_id[..])
            .fetch_optional(&mut *conn)
            .await?;
    let Some(epoch) = epoch else {
        return Ok(CommitOutcome::UnknownGroup);
    };
    // A retried commit that was accepted before is a duplicate, whatever
    // the epoch is now: answer as the first time did.
    let earlier: Option<Millis> = sqlx::query_scalar(
        "SELECT received_at FROM sends WHERE sender_account = $1 AND client_message_id = $2",
    )
    .bind(&c.sender.account.0[..])
    .bind(&c.client_message_id[..])
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(received_at) = earlier {
        return Ok(CommitOutcome::Accepted {
            commit: Enqueued {
                duplicate: true,
                received_at,
                deliveries: Vec::new(),
            },
            welcome: None,
        });
    }
    let current = unsigned(epoch, "epoch")?;
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
        "UPDATE groups SET epoch = epoch + 1, group_info = $1, ratchet_tree = $2, updated_at = $3 \
         WHERE id = $4",
    )
    .bind(&c.group_info[..])
    .bind(&c.ratchet_tree[..])
    .bind(c.received_at)
    .bind(&c.group_id[..])
    .execute(&mut *conn)
    .await?;
    if !c.removed.is_empty() {
        let (accounts, devices) = columns(&c.removed);
        sqlx::query(
            "DELETE FROM group_members WHERE group_id = $1 AND (account_id, device_id) IN \
             (SELECT * FROM unnest($2::bytea[], $3::bigint[]))",
        )
        .bind(&c.group_id[..])
        .bind(accounts)
        .bind(devices)
        .execute(&mut *conn)
        .await?;
    }
    if !c.added.is_empty() {
        // Only devices that exist join the fan-out list.
        let (accounts, devices) = columns(&c.added);
        sqlx::query(
            "INSERT INTO group_members (group_id, account_id, device_id) \
             SELECT $1, account_id, device_id FROM devices WHERE (account_id, device_id) IN \
             (SELECT * FROM unnest($2::bytea[], $3::bigint[])) \
             ON CONFLICT DO NOTHING",
        )
        .bind(&c.group_id[..])
        .bind(accounts)
        .bind(devices)
        .execute(&mut *conn)
        .await?;
    }
    // Everyone who was a member hears of the commit, removed devices
    // included: that is how they learn they were removed.
    let fan_out: Vec<DeviceAddr> = before.into_iter().filter(|m| *m != c.sender).collect();
    let queued = enqueue(
        conn,
        &NewMessage {
            sender: c.sender,
            client_message_id: c.client_message_id,
            to: Recipients::Devices(fan_out),
            group_id: Some(c.group_id.clone()),
            group_epoch: None,
            payload: c.commit,
            received_at: c.received_at,
            expires_at: c.expires_at,
        },
    )
    .await?;
    let commit = match queued {
        // Its id was taken between the check above and now, by a message
        // sent outside this group's lock; the next attempt answers it.
        Ok(e) if e.duplicate => return Err(Failure::Retry),
        Ok(e) => e,
        Err(e) => return Err(e.into()),
    };
    let welcome = match c.welcome {
        None => None,
        Some((welcome, to)) => {
            sqlx::query(
                "INSERT INTO welcome_trees (group_id, epoch, ratchet_tree, expires_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(&c.group_id[..])
            .bind(signed(current + 1))
            .bind(&c.ratchet_tree[..])
            .bind(c.expires_at)
            .execute(&mut *conn)
            .await?;
            let queued = enqueue(
                conn,
                &NewMessage {
                    sender: c.sender,
                    client_message_id: welcome_message_id(c.client_message_id),
                    to: Recipients::Devices(to),
                    group_id: Some(c.group_id.clone()),
                    group_epoch: None,
                    payload: welcome,
                    received_at: c.received_at,
                    expires_at: c.expires_at,
                },
            )
            .await?;
            Some(queued?)
        }
    };
    Ok(CommitOutcome::Accepted { commit, welcome })
}

async fn add_key_packages(
    conn: &mut PgConnection,
    device: DeviceAddr,
    one_time: &[Bytes],
    last_resort: Option<&Bytes>,
    max_one_time: u32,
) -> Result<KeyPackageCount, Failure> {
    let (account, number) = (&device.account.0[..], i64::from(device.device));
    // KEY SHARE: the device cannot be removed meanwhile, and enqueues to it
    // are not held up.
    let exists =
        sqlx::query("SELECT 1 FROM devices WHERE account_id = $1 AND device_id = $2 FOR KEY SHARE")
            .bind(account)
            .bind(number)
            .fetch_optional(&mut *conn)
            .await?;
    if exists.is_none() {
        return Err(StoreError::UnknownAccount.into());
    }
    if !one_time.is_empty() {
        let packages: Vec<&[u8]> = one_time.iter().map(|p| &p[..]).collect();
        // WITH ORDINALITY keeps the upload order in the ids, so "oldest
        // first" holds within one upload too.
        sqlx::query(
            "INSERT INTO key_packages (account_id, device_id, last_resort, data) \
             SELECT $1, $2, false, data FROM unnest($3::bytea[]) WITH ORDINALITY AS p (data, n) \
             ORDER BY n",
        )
        .bind(account)
        .bind(number)
        .bind(packages)
        .execute(&mut *conn)
        .await?;
    }
    // Keep the newest `max_one_time`.
    sqlx::query(
        "DELETE FROM key_packages WHERE account_id = $1 AND device_id = $2 AND NOT last_resort \
         AND id NOT IN (SELECT id FROM key_packages WHERE account_id = $1 AND device_id = $2 \
                        AND NOT last_resort ORDER BY id DESC LIMIT $3)",
    )
    .bind(account)
    .bind(number)
    .bind(i64::from(max_one_time))
    .execute(&mut *conn)
    .await?;
    if let Some(package) = last_resort {
        sqlx::query(
            "INSERT INTO key_packages (account_id, device_id, last_resort, data) \
             VALUES ($1, $2, true, $3) \
             ON CONFLICT (account_id, device_id) WHERE last_resort DO UPDATE SET data = EXCLUDED.data",
        )
        .bind(account)
        .bind(number)
        .bind(&package[..])
        .execute(&mut *conn)
        .await?;
    }
    Ok(count(conn, device).await?)
}

async fn count(
    conn: &mut PgConnection,
    device: DeviceAddr,
) -> Result<KeyPackageCount, sqlx::Error> {
    let row = sqlx::query(
        "SELECT COUNT(*) FILTER (WHERE NOT last_resort), COALESCE(bool_or(last_resort), false) \
         FROM key_packages WHERE account_id = $1 AND device_id = $2",
    )
    .bind(&device.account.0[..])
    .bind(i64::from(device.device))
    .fetch_one(&mut *conn)
    .await?;
    let one_time: i64 = row.try_get(0)?;
    Ok(KeyPackageCount {
        one_time: u32::try_from(one_time).unwrap_or(u32::MAX),
        last_resort: row.try_get(1)?,
    })
}

async fn claim_key_packages(
    conn: &mut PgConnection,
    account: AccountId,
    requester: DeviceAddr,
) -> Result<(Vec<ClaimedKeyPackage>, Vec<u32>), Failure> {
    let devices: Vec<i64> = sqlx::query_scalar(
        "SELECT device_id FROM devices WHERE account_id = $1 ORDER BY device_id",
    )
    .bind(&account.0[..])
    .fetch_all(&mut *conn)
    .await?;
    if devices.is_empty() {
        return Err(StoreError::UnknownAccount.into());
    }
    let mut claimed = Vec::new();
    let mut exhausted = Vec::new();
    for device in devices {
        let number = u32::try_from(device).map_err(|_| super::corrupt("device id"))?;
        if requester.account == account && requester.device == number {
            continue;
        }
        // The oldest one-time package, locked and deleted. A claim that
        // waited for a package another claim took skips it and locks the
        // next, so each is handed out once.
        let one_time: Option<Vec<u8>> = sqlx::query_scalar(
            "DELETE FROM key_packages WHERE id = \
             (SELECT id FROM key_packages WHERE account_id = $1 AND device_id = $2 \
              AND NOT last_resort ORDER BY id LIMIT 1 FOR UPDATE) \
             RETURNING data",
        )
        .bind(&account.0[..])
        .bind(device)
        .fetch_optional(&mut *conn)
        .await?;
        let (data, last_resort) = match one_time {
            Some(data) => (data, false),
            None => {
                let kept: Option<Vec<u8>> = sqlx::query_scalar(
                    "SELECT data FROM key_packages WHERE account_id = $1 AND device_id = $2 \
                     AND last_resort",
                )
                .bind(&account.0[..])
                .bind(device)
                .fetch_optional(&mut *conn)
                .await?;
                let Some(data) = kept else {
                    exhausted.push(number);
                    continue;
                };
                (data, true)
            }
        };
        claimed.push(ClaimedKeyPackage {
            device: number,
            key_package: data.into(),
            last_resort,
        });
    }
    Ok((claimed, exhausted))
}

pub(super) async fn remove_device(
    conn: &mut PgConnection,
    device: DeviceAddr,
) -> Result<bool, Failure> {
    // The device row first: this waits for enqueues holding its lock, and
    // enqueues after it no longer find the device, so no copy is queued
    // behind the queue's deletion. Memberships and key packages go by
    // cascade; the queue has no foreign key (see the schema).
    let gone = sqlx::query("DELETE FROM devices WHERE account_id = $1 AND device_id = $2")
        .bind(&device.account.0[..])
        .bind(i64::from(device.device))
        .execute(&mut *conn)
        .await?
        .rows_affected();
    sqlx::query("DELETE FROM queue WHERE account_id = $1 AND device_id = $2")
        .bind(&device.account.0[..])
        .bind(i64::from(device.device))
        .execute(&mut *conn)
        .await?;
    Ok(gone > 0)
}

#[async_trait]
impl GroupStore for PgStore {
    async fn create_group(&self, group_id: &[u8], creator: DeviceAddr, now: Millis) -> Result<()> {
        let group_id = Bytes::copy_from_slice(group_id);
        let group_id = &group_id;
        self.transaction(|conn| {
            let group_id = group_id.clone();
            Box::pin(async move { create_group(conn, &group_id, creator, now).await })
        })
        .await
    }

    async fn group(&self, group_id: &[u8]) -> Result<Option<GroupState>> {
        // One snapshot for the epoch and the members.
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let epoch: Option<i64> = sqlx::query_scalar("SELECT epoch FROM groups WHERE id = $1")
            .bind(group_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let Some(epoch) = epoch else {
            return Ok(None);
        };
        let members = members(&mut tx, group_id).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Some(GroupState {
            epoch: unsigned(epoch, "epoch").map_err(db)?,
            members,
        }))
    }

    async fn commit(&self, commit: NewCommit) -> Result<CommitOutcome> {
        let commit = &commit;
        self.transaction(|conn| {
            let commit = commit.clone();
            Box::pin(self::commit(conn, commit))
        })
        .await
    }

    async fn group_info(&self, group_id: &[u8]) -> Result<Option<(u64, Bytes, Bytes)>> {
        let row = sqlx::query("SELECT epoch, group_info, ratchet_tree FROM groups WHERE id = $1")
            .bind(group_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let epoch: i64 = row.try_get(0).map_err(db)?;
        let info: Vec<u8> = row.try_get(1).map_err(db)?;
        let tree: Vec<u8> = row.try_get(2).map_err(db)?;
        Ok(Some((
            unsigned(epoch, "epoch").map_err(db)?,
            info.into(),
            tree.into(),
        )))
    }

    async fn welcome_tree(&self, group_id: &[u8], epoch: u64) -> Result<Option<Bytes>> {
        let tree: Option<Vec<u8>> = sqlx::query_scalar(
            "SELECT ratchet_tree FROM welcome_trees WHERE group_id = $1 AND epoch = $2",
        )
        .bind(group_id)
        .bind(signed(epoch))
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(tree.map(Bytes::from))
    }

    async fn groups_of_account(&self, account: AccountId) -> Result<Vec<Bytes>> {
        let ids: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT DISTINCT group_id FROM group_members WHERE account_id = $1 ORDER BY group_id",
        )
        .bind(&account.0[..])
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        Ok(ids.into_iter().map(Bytes::from).collect())
    }
}

#[async_trait]
impl KeyPackageStore for PgStore {
    async fn add_key_packages(
        &self,
        device: DeviceAddr,
        one_time: Vec<Bytes>,
        last_resort: Option<Bytes>,
        max_one_time: u32,
    ) -> Result<KeyPackageCount> {
        let (one_time, last_resort) = (&one_time, &last_resort);
        self.transaction(|conn| {
            let (one_time, last_resort) = (one_time.clone(), last_resort.clone());
            Box::pin(async move {
                add_key_packages(conn, device, &one_time, last_resort.as_ref(), max_one_time).await
            })
        })
        .await
    }

    async fn claim_key_packages(
        &self,
        account: AccountId,
        requester: DeviceAddr,
    ) -> Result<(Vec<ClaimedKeyPackage>, Vec<u32>)> {
        self.transaction(|conn| Box::pin(claim_key_packages(conn, account, requester)))
            .await
    }

    async fn key_package_count(&self, device: DeviceAddr) -> Result<KeyPackageCount> {
        let mut conn = self.pool.acquire().await.map_err(db)?;
        count(&mut conn, device).await.map_err(db)
    }
}
