//! Enqueueing a whole batch of messages in a handful of statements.
//!
//! Every statement costs a round trip to SQLite's worker thread (tens of
//! microseconds), far more than SQLite spends on a small row. So instead of
//! three statements per message, the writer hands all enqueues of a batch to
//! [`enqueue_all`], which reads the recipients' devices once, claims all
//! client message ids in one `INSERT … RETURNING`, numbers the copies in
//! memory and writes them with multi-row statements.
//!
//! The calls of a batch were all in flight together, so any order among them
//! is one the callers could have seen; within the batch they are taken in
//! arrival order, and a later duplicate of an earlier message is a
//! duplicate. Reading `next_seq` and writing it back later is safe because
//! the batch holds SQLite's write lock (`BEGIN IMMEDIATE`) throughout.
//!
//! A message to an account without devices fails with
//! [`StoreError::UnknownAccount`] before anything of it is written. A message
//! to a list of devices goes to those that exist; the others are skipped.

use std::collections::{HashMap, HashSet};

use sqlx::sqlite::{SqliteArguments, SqliteConnection};
use sqlx::{Arguments, AssertSqlSafe, Row};

use crate::{AccountId, DeviceAddr, Enqueued, Millis, NewMessage, Recipients, Result, StoreError};

/// The messages whose group is no longer at the epoch they were written
/// for (`Some(current epoch)`) or is gone (`None`), by index. Read inside
/// the batch's transaction, after the batch's commits: so a message and a
/// commit are ordered the same way here as in the queues.
async fn epoch_guards(
    conn: &mut SqliteConnection,
    msgs: &[NewMessage],
) -> Result<HashMap<usize, Option<u64>>, sqlx::Error> {
    let mut epochs: HashMap<&[u8], Option<u64>> = HashMap::new();
    let mut refused = HashMap::new();
    for (i, msg) in msgs.iter().enumerate() {
        let (Some(want), Some(group)) = (msg.group_epoch, msg.group_id.as_deref()) else {
            continue;
        };
        let current = match epochs.get(group) {
            Some(e) => *e,
            None => {
                let e: Option<i64> = sqlx::query_scalar("SELECT epoch FROM groups WHERE id = ?")
                    .bind(group)
                    .fetch_optional(&mut *conn)
                    .await?;
                let e = e.map(|e| u64::try_from(e).unwrap_or(0));
                epochs.insert(group, e);
                e
            }
        };
        if current != Some(want) {
            refused.insert(i, current);
        }
    }
    Ok(refused)
}

/// Bound parameters per statement, well under SQLite's limit.
const MAX_PARAMS: usize = 30_000;

/// The idempotency key of a message.
type SendKey = (AccountId, [u8; 16]);

fn key(msg: &NewMessage) -> SendKey {
    (msg.sender.account, msg.client_message_id)
}

/// `(?, ?), (?, ?)` for `rows` rows of `columns` parameters.
fn rows_sql(rows: usize, columns: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    vec![row; rows].join(", ")
}

fn add<'q, T>(args: &mut SqliteArguments, value: T) -> Result<(), sqlx::Error>
where
    T: sqlx::Encode<'q, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    args.add(value).map_err(sqlx::Error::Encode)
}

/// Queues every message; one result per message, in order. An `Err` means
/// the transaction must be rolled back.
pub(super) async fn enqueue_all(
    conn: &mut SqliteConnection,
    msgs: &[NewMessage],
) -> Result<Vec<Result<Enqueued>>, sqlx::Error> {
    let mut next_seq = recipient_devices(conn, msgs).await?;
    let refused = epoch_guards(conn, msgs).await?;
    let known: Vec<&NewMessage> = msgs
        .iter()
        .enumerate()
        .filter(|(i, m)| {
            !refused.contains_key(i)
                && match &m.to {
                    Recipients::Account(account) => next_seq.contains_key(account),
                    Recipients::Devices(_) => true,
                }
        })
        .map(|(_, m)| m)
        .collect();
    let mut claimed = claim(conn, &known).await?;

    let mut first_received: HashMap<SendKey, Millis> = HashMap::new();
    let mut copies: Vec<(&NewMessage, DeviceAddr, u64)> = Vec::new();
    let mut results = Vec::with_capacity(msgs.len());
    let mut earlier = Vec::new();
    for (i, msg) in msgs.iter().enumerate() {
        if let Some(current) = refused.get(&i) {
            results.push(Err(match current {
                Some(current) => StoreError::StaleEpoch { current: *current },
                None => StoreError::UnknownGroup,
            }));
            continue;
        }
        if let Recipients::Account(account) = &msg.to
            && !next_seq.contains_key(account)
        {
            results.push(Err(StoreError::UnknownAccount));
            continue;
        }
        let key = key(msg);
        if let Some(&received_at) = first_received.get(&key) {
            results.push(Ok(Enqueued {
                duplicate: true,
                received_at,
                deliveries: Vec::new(),
            }));
        } else if claimed.remove(&key) {
            first_received.insert(key, msg.received_at);
            let mut deliveries = Vec::new();
            let mut queue = |addr: DeviceAddr, next: &mut u64| {
                deliveries.push((addr, *next));
                copies.push((msg, addr, *next));
                *next += 1;
            };
            match &msg.to {
                Recipients::Account(account) => {
                    for (device, next) in next_seq.get_mut(account).into_iter().flatten() {
                        let addr = DeviceAddr {
                            account: *account,
                            device: *device,
                        };
                        queue(addr, next);
                    }
                }
                Recipients::Devices(addrs) => {
                    for addr in addrs {
                        let next = next_seq
                            .get_mut(&addr.account)
                            .and_then(|ds| ds.iter_mut().find(|(d, _)| *d == addr.device));
                        if let Some((_, next)) = next {
                            queue(*addr, next);
                        }
                    }
                }
            }
            results.push(Ok(Enqueued {
                duplicate: false,
                received_at: msg.received_at,
                deliveries,
            }));
        } else {
            // Sent before this batch: its first acceptance is in the table.
            earlier.push(i);
            results.push(Ok(Enqueued {
                duplicate: true,
                received_at: 0,
                deliveries: Vec::new(),
            }));
        }
    }
    for i in earlier {
        let received_at: Millis = sqlx::query_scalar(
            "SELECT received_at FROM sends WHERE sender_account = ? AND client_message_id = ?",
        )
        .bind(&msgs[i].sender.account.0[..])
        .bind(&msgs[i].client_message_id[..])
        .fetch_one(&mut *conn)
        .await?;
        if let Ok(enqueued) = &mut results[i] {
            enqueued.received_at = received_at;
        }
    }
    insert_copies(conn, &copies).await?;
    store_next_seqs(conn, &next_seq, &copies).await?;
    Ok(results)
}

/// Devices of every recipient, with the sequence number each gives next.
/// Accounts without devices (that is, unknown accounts) are absent.
async fn recipient_devices(
    conn: &mut SqliteConnection,
    msgs: &[NewMessage],
) -> Result<HashMap<AccountId, Vec<(u32, u64)>>, sqlx::Error> {
    let mut accounts: Vec<AccountId> = Vec::with_capacity(msgs.len());
    for msg in msgs {
        match &msg.to {
            Recipients::Account(account) => accounts.push(*account),
            Recipients::Devices(addrs) => accounts.extend(addrs.iter().map(|a| a.account)),
        }
    }
    accounts.sort_unstable();
    accounts.dedup();
    let mut devices: HashMap<AccountId, Vec<(u32, u64)>> = HashMap::new();
    for chunk in accounts.chunks(MAX_PARAMS) {
        let sql = format!(
            "SELECT account_id, device_id, next_seq FROM devices \
             WHERE account_id IN ({}) ORDER BY account_id, device_id",
            vec!["?"; chunk.len()].join(", ")
        );
        let mut args = SqliteArguments::default();
        for account in chunk {
            add(&mut args, &account.0[..])?;
        }
        let rows = sqlx::query_with(AssertSqlSafe(sql), args)
            .persistent(false)
            .fetch_all(&mut *conn)
            .await?;
        for row in rows {
            let account: &[u8] = row.try_get(0)?;
            let account = AccountId::from_slice(account)
                .ok_or_else(|| sqlx::Error::Protocol("corrupt account id".into()))?;
            devices
                .entry(account)
                .or_default()
                .push((row.try_get(1)?, row.try_get(2)?));
        }
    }
    Ok(devices)
}

/// Inserts the send records of messages not seen before; returns their keys.
///
/// Looks for existing records first rather than asking `INSERT … ON
/// CONFLICT DO NOTHING RETURNING` which rows went in: that would stream a row
/// back per new message, while duplicates, the only rows the lookup returns,
/// are rare.
async fn claim(
    conn: &mut SqliteConnection,
    msgs: &[&NewMessage],
) -> Result<HashSet<SendKey>, sqlx::Error> {
    let mut seen = HashSet::new();
    let firsts: Vec<&NewMessage> = msgs
        .iter()
        .copied()
        .filter(|m| seen.insert(key(m)))
        .collect();
    let mut existing = HashSet::new();
    for chunk in firsts.chunks(MAX_PARAMS / 2) {
        let sql = format!(
            // A join, not `(…) IN (VALUES …)`, which SQLite runs as a scan.
            "SELECT s.sender_account, s.client_message_id FROM (VALUES {}) AS v \
             JOIN sends AS s \
             ON s.sender_account = v.column1 AND s.client_message_id = v.column2",
            rows_sql(chunk.len(), 2)
        );
        let mut args = SqliteArguments::default();
        for msg in chunk {
            add(&mut args, &msg.sender.account.0[..])?;
            add(&mut args, &msg.client_message_id[..])?;
        }
        let rows = sqlx::query_with(AssertSqlSafe(sql), args)
            .persistent(false)
            .fetch_all(&mut *conn)
            .await?;
        for row in rows {
            let bad = || sqlx::Error::Protocol("corrupt send record".into());
            let sender = AccountId::from_slice(row.try_get(0)?).ok_or_else(bad)?;
            let id: &[u8] = row.try_get(1)?;
            existing.insert((sender, <[u8; 16]>::try_from(id).map_err(|_| bad())?));
        }
    }
    let new: Vec<&NewMessage> = firsts
        .into_iter()
        .filter(|m| !existing.contains(&key(m)))
        .collect();
    for chunk in new.chunks(MAX_PARAMS / 4) {
        let sql = format!(
            "INSERT INTO sends (sender_account, client_message_id, received_at, expires_at) \
             VALUES {}",
            rows_sql(chunk.len(), 4)
        );
        let mut args = SqliteArguments::default();
        for msg in chunk {
            add(&mut args, &msg.sender.account.0[..])?;
            add(&mut args, &msg.client_message_id[..])?;
            add(&mut args, msg.received_at)?;
            add(&mut args, msg.expires_at)?;
        }
        sqlx::query_with(AssertSqlSafe(sql), args)
            .persistent(false)
            .execute(&mut *conn)
            .await?;
    }
    Ok(new.into_iter().map(key).collect())
}

async fn insert_copies(
    conn: &mut SqliteConnection,
    copies: &[(&NewMessage, DeviceAddr, u64)],
) -> Result<(), sqlx::Error> {
    const COLUMNS: usize = 10;
    for chunk in copies.chunks(MAX_PARAMS / COLUMNS) {
        let sql = format!(
            "INSERT INTO queue (account_id, device_id, seq, sender_account, sender_device, \
             client_message_id, received_at, expires_at, group_id, payload) VALUES {}",
            rows_sql(chunk.len(), COLUMNS)
        );
        let mut args = SqliteArguments::default();
        for (msg, addr, seq) in chunk {
            add(&mut args, &addr.account.0[..])?;
            add(&mut args, addr.device)?;
            add(&mut args, i64::try_from(*seq).unwrap_or(i64::MAX))?;
            add(&mut args, &msg.sender.account.0[..])?;
            add(&mut args, msg.sender.device)?;
            add(&mut args, &msg.client_message_id[..])?;
            add(&mut args, msg.received_at)?;
            add(&mut args, msg.expires_at)?;
            add(&mut args, msg.group_id.as_deref())?;
            add(&mut args, &msg.payload[..])?;
        }
        sqlx::query_with(AssertSqlSafe(sql), args)
            .persistent(false)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Writes back the counters of the devices that got copies.
async fn store_next_seqs(
    conn: &mut SqliteConnection,
    next_seq: &HashMap<AccountId, Vec<(u32, u64)>>,
    copies: &[(&NewMessage, DeviceAddr, u64)],
) -> Result<(), sqlx::Error> {
    let mut touched: Vec<AccountId> = copies.iter().map(|(_, addr, _)| addr.account).collect();
    touched.sort_unstable();
    touched.dedup();
    let counters: Vec<(AccountId, u32, u64)> = touched
        .iter()
        .flat_map(|account| {
            next_seq[account]
                .iter()
                .map(move |&(device, next)| (*account, device, next))
        })
        .collect();
    for chunk in counters.chunks(MAX_PARAMS / 3) {
        let sql = format!(
            "UPDATE devices SET next_seq = v.column3 FROM (VALUES {}) AS v \
             WHERE devices.account_id = v.column1 AND devices.device_id = v.column2",
            rows_sql(chunk.len(), 3)
        );
        let mut args = SqliteArguments::default();
        for (account, device, next) in chunk {
            add(&mut args, &account.0[..])?;
            add(&mut args, *device)?;
            add(&mut args, i64::try_from(*next).unwrap_or(i64::MAX))?;
        }
        sqlx::query_with(AssertSqlSafe(sql), args)
            .persistent(false)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}
