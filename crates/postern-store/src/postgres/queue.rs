//! Enqueueing one message inside a transaction: send record, device locks,
//! sequence numbers, copies.
//!
//! Four statements whatever the number of recipients: the send record, the
//! recipients' device rows locked in key order, their counters bumped, and
//! the copies inserted from arrays (`unnest`) with the payload bound once.

use std::collections::HashMap;

use sqlx::Row;
use sqlx::postgres::PgConnection;

use super::{Failure, account_id, device_number, unsigned};
use crate::{DeviceAddr, Enqueued, NewMessage, Recipients, StoreError};

/// Queues `msg` in the caller's transaction. `Ok(Err(UnknownAccount))` when
/// it names an account without devices: the caller must roll back, since
/// the send record was already written.
pub(super) async fn enqueue(
    conn: &mut PgConnection,
    msg: &NewMessage,
) -> Result<Result<Enqueued, StoreError>, Failure> {
    if let (Some(want), Some(group)) = (msg.group_epoch, msg.group_id.as_deref()) {
        // FOR SHARE: a commit (which takes the row FOR UPDATE) waits for
        // this transaction, or this one waits for the commit and then
        // sees the new epoch. Taken before the device rows, as a commit
        // does, so the two never wait on each other in a cycle.
        let epoch: Option<i64> =
            sqlx::query_scalar("SELECT epoch FROM groups WHERE id = $1 FOR SHARE")
                .bind(group)
                .fetch_optional(&mut *conn)
                .await?;
        match epoch {
            None => return Ok(Err(StoreError::UnknownGroup)),
            Some(e) if e != super::signed(want) => {
                return Ok(Err(StoreError::StaleEpoch {
                    current: unsigned_epoch(e),
                }));
            }
            Some(_) => {}
        }
    }
    let claimed = sqlx::query(
        "INSERT INTO sends (sender_account, client_message_id, received_at, expires_at) \
         VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
    )
    .bind(&msg.sender.account.0[..])
    .bind(&msg.client_message_id[..])
    .bind(msg.received_at)
    .bind(msg.expires_at)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if claimed == 0 {
        let received_at: Option<i64> = sqlx::query_scalar(
            "SELECT received_at FROM sends WHERE sender_account = $1 AND client_message_id = $2",
        )
        .bind(&msg.sender.account.0[..])
        .bind(&msg.client_message_id[..])
        .fetch_optional(&mut *conn)
        .await?;
        // Gone again: purged between the two statements. Start over.
        let received_at = received_at.ok_or(Failure::Retry)?;
        return Ok(Ok(Enqueued {
            duplicate: true,
            received_at,
            deliveries: Vec::new(),
        }));
    }

    // Lock the recipients' rows in key order (the same order in every
    // transaction, so two enqueues never wait on each other in a cycle) and
    // read the number each gives next. NO KEY UPDATE is what the counter's
    // update needs: it excludes other enqueues and the device's deletion but
    // not foreign-key checks (a commit adding the device to a group).
    let rows = match &msg.to {
        Recipients::Account(account) => {
            sqlx::query(
                "SELECT account_id, device_id, next_seq FROM devices WHERE account_id = $1 \
                 ORDER BY account_id, device_id FOR NO KEY UPDATE",
            )
            .bind(&account.0[..])
            .fetch_all(&mut *conn)
            .await?
        }
        Recipients::Devices(addrs) => {
            let (accounts, devices) = columns(addrs);
            sqlx::query(
                "SELECT account_id, device_id, next_seq FROM devices \
                 WHERE (account_id, device_id) IN \
                       (SELECT * FROM unnest($1::bytea[], $2::bigint[])) \
                 ORDER BY account_id, device_id FOR NO KEY UPDATE",
            )
            .bind(accounts)
            .bind(devices)
            .fetch_all(&mut *conn)
            .await?
        }
    };
    let mut next = HashMap::with_capacity(rows.len());
    let mut locked = Vec::with_capacity(rows.len());
    for row in &rows {
        let addr = DeviceAddr {
            account: account_id(row, "account_id")?,
            device: device_number(row, "device_id")?,
        };
        next.insert(addr, unsigned(row.try_get("next_seq")?, "sequence number")?);
        locked.push(addr);
    }
    let deliveries: Vec<(DeviceAddr, u64)> = match &msg.to {
        Recipients::Account(_) if locked.is_empty() => {
            return Ok(Err(StoreError::UnknownAccount));
        }
        Recipients::Account(_) => locked.iter().map(|addr| (*addr, next[addr])).collect(),
        // In the order given; a device listed twice gets one copy.
        Recipients::Devices(addrs) => addrs
            .iter()
            .filter_map(|addr| next.remove(addr).map(|seq| (*addr, seq)))
            .collect(),
    };
    if deliveries.is_empty() {
        return Ok(Ok(Enqueued {
            duplicate: false,
            received_at: msg.received_at,
            deliveries,
        }));
    }

    let addrs: Vec<DeviceAddr> = deliveries.iter().map(|(addr, _)| *addr).collect();
    let (accounts, devices) = columns(&addrs);
    let seqs: Vec<i64> = deliveries
        .iter()
        .map(|(_, seq)| super::signed(*seq))
        .collect();
    sqlx::query(
        "UPDATE devices SET next_seq = next_seq + 1 \
         WHERE (account_id, device_id) IN (SELECT * FROM unnest($1::bytea[], $2::bigint[]))",
    )
    .bind(&accounts)
    .bind(&devices)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO queue (account_id, device_id, seq, sender_account, sender_device, \
         client_message_id, received_at, expires_at, group_id, payload) \
         SELECT a, d, s, $4, $5, $6, $7, $8, $9, $10 \
         FROM unnest($1::bytea[], $2::bigint[], $3::bigint[]) AS copies (a, d, s)",
    )
    .bind(&accounts)
    .bind(&devices)
    .bind(&seqs)
    .bind(&msg.sender.account.0[..])
    .bind(i64::from(msg.sender.device))
    .bind(&msg.client_message_id[..])
    .bind(msg.received_at)
    .bind(msg.expires_at)
    .bind(msg.group_id.as_deref())
    .bind(&msg.payload[..])
    .execute(&mut *conn)
    .await?;
    Ok(Ok(Enqueued {
        duplicate: false,
        received_at: msg.received_at,
        deliveries,
    }))
}

fn unsigned_epoch(e: i64) -> u64 {
    u64::try_from(e).unwrap_or(0)
}

/// Device addresses as the two arrays `unnest` takes.
pub(super) fn columns(addrs: &[DeviceAddr]) -> (Vec<Vec<u8>>, Vec<i64>) {
    addrs
        .iter()
        .map(|a| (a.account.0.to_vec(), i64::from(a.device)))
        .unzip()
}
