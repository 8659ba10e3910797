//! The scale-out store: PostgreSQL, shared by several server nodes.
//!
//! This module owns the PostgreSQL schema (the migrations under
//! `migrations/postgres`, compiled into the binary and run by
//! [`PgStore::connect`] under sqlx's advisory lock, so nodes starting
//! together migrate once) and a connection pool per node.
//!
//! # Concurrency
//!
//! Any node may serve any device, so nothing here relies on being the only
//! writer: each call is one transaction at PostgreSQL's default isolation,
//! READ COMMITTED, made safe by the row locks and constraints it takes.
//!
//! - **Sequence numbers**: an enqueue locks the recipient device rows
//!   (`SELECT … ORDER BY account_id, device_id FOR NO KEY UPDATE`, always in
//!   that order so that two enqueues cannot deadlock; NO KEY so that
//!   foreign-key checks against the device are not held up), takes
//!   `next_seq` from them, bumps it, writes the copies and commits. The lock
//!   is held until the commit, so a device's numbers are handed out one
//!   transaction at a time and become visible in order: a reader that sees seq 5 has already been
//!   able to see seq 4. A database sequence would not give that (a later
//!   number can commit first, and a client acking it would skip the earlier).
//! - **Idempotent sends**: the primary key of `sends` (client message id,
//!   sender account). An enqueue inserts its send record first with
//!   `ON CONFLICT DO NOTHING`; a concurrent enqueue of the same message waits
//!   on the key until the first commits and then finds it a duplicate. A
//!   failed enqueue (unknown recipient) rolls back, record included.
//! - **Commits**: `SELECT … FOR UPDATE` on the group row first, so commits of
//!   one group run one at a time on whatever nodes they arrive; the epoch
//!   check, membership change, GroupInfo, Welcome tree and the queued commit
//!   and Welcome are one transaction. Of two commits racing for an epoch the
//!   second sees the new epoch and is stale.
//! - **Key packages**: a claim deletes the oldest one-time package with
//!   `… ORDER BY id LIMIT 1 FOR UPDATE`; a claimer that waited on a package
//!   another one took moves on to the next, so each is handed out once. A
//!   partial unique index keeps one last-resort package per device.
//! - **Devices**: `add_device` locks the account row (`FOR NO KEY UPDATE`)
//!   to number devices one at a time; `remove_device` deletes the device row
//!   before its queue, so an enqueue holding the row finishes first and one
//!   that comes later no longer finds the device.
//!
//! Deadlocks the lock order does not rule out (a commit's foreign-key checks
//! against a device being removed) and serialization failures, should the
//! server's default isolation be raised, are retried a few times with the
//! whole transaction, as is a commit that finds its id taken by a message
//! sent at the same moment.
//!
//! The store never looks inside payloads, and never holds a transaction open
//! across anything but its own statements.

mod groups;
mod queue;

use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use futures::future::BoxFuture;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};

use crate::{
    Account, AccountId, AccountStore, CodeStore, Device, DeviceAddr, DistributorStore, Enqueued,
    LegacyPhone, Millis, NewAccount, NewDevice, NewMessage, QueueStore, Result, SealedConnection,
    StoreError, StoredCode, StoredMessage, VaultEntry, VaultStore,
};
use bytes::Bytes;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How often a transaction is run again after a deadlock or a
/// serialization failure before the caller gets the error.
const MAX_ATTEMPTS: u32 = 8;

/// How to connect a [`PgStore`].
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// `postgres://user@host:port/db`, with any libpq-style parameters, e.g.
    /// `?options[search_path]=postern` to keep the tables in a schema of
    /// their own. Connections are plain TCP: put TLS in front if the
    /// database is not on a trusted network.
    pub url: String,
    /// Most connections this node keeps open; 16 by default.
    pub max_connections: u32,
}

impl PgOptions {
    /// Options for the database at `url`, with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            max_connections: 16,
        }
    }
}

fn check_schema_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Database(
            format!("{name:?} is not a schema name (a-z, 0-9, _)").into(),
        ))
    }
}

/// The PostgreSQL store. Cloning is cheap and shares the pool.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to the database at `url` with the default options and
    /// brings its schema up to date.
    pub async fn connect(url: &str) -> Result<PgStore> {
        Self::connect_with(PgOptions::new(url)).await
    }

    /// Connects as `opts` say and brings the schema up to date.
    pub async fn connect_with(opts: PgOptions) -> Result<PgStore> {
        let options: PgConnectOptions = opts.url.parse().map_err(db)?;
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .connect_with(options)
            .await
            .map_err(db)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(Box::new(e)))?;
        tracing::info!("connected to the postgres store");
        Ok(PgStore { pool })
    }

    /// Creates the schema `name` in the database at `url` (for a test or
    /// benchmark run that must not touch other data) and returns the URL
    /// whose connections use it. `name` is lower-case letters, digits and
    /// `_`.
    pub async fn create_schema(url: &str, name: &str) -> Result<String> {
        check_schema_name(name)?;
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
            .await
            .map_err(db)?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}")))
            .execute(&mut conn)
            .await
            .map_err(db)?;
        let sep = if url.contains('?') { '&' } else { '?' };
        Ok(format!("{url}{sep}options[search_path]={name}"))
    }

    /// Drops the schema `name` and everything in it.
    pub async fn drop_schema(url: &str, name: &str) -> Result<()> {
        check_schema_name(name)?;
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
            .await
            .map_err(db)?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS {name} CASCADE"
        )))
        .execute(&mut conn)
        .await
        .map_err(db)?;
        Ok(())
    }

    /// Closes every connection; later calls on any clone fail with
    /// [`StoreError::Closed`].
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs `work` in a transaction and commits it, running it again from
    /// the start after a deadlock or serialization failure.
    async fn transaction<T, F>(&self, mut work: F) -> Result<T>
    where
        F: for<'c> FnMut(&'c mut PgConnection) -> BoxFuture<'c, Result<T, Failure>>,
    {
        let mut attempt = 1;
        loop {
            let result: Result<T, Failure> = async {
                let mut tx = self.pool.begin().await?;
                let value = work(&mut tx).await?;
                tx.commit().await?;
                Ok(value)
            }
            .await;
            match result {
                Ok(value) => return Ok(value),
                Err(failure) if failure.retryable() && attempt < MAX_ATTEMPTS => {
                    tracing::debug!(attempt, "transaction conflicted; running it again");
                    // Back off a little more each time, so that the
                    // transactions that collided do not collide again.
                    tokio::time::sleep(Duration::from_millis(u64::from(attempt) * 5)).await;
                    attempt += 1;
                }
                Err(failure) => return Err(failure.into()),
            }
        }
    }
}

/// Why a transaction did not commit.
pub(super) enum Failure {
    /// A typed answer for the caller; the transaction is rolled back.
    Logical(StoreError),
    /// A concurrent writer changed what the transaction read; run it again.
    Retry,
    /// The database failed (or a constraint fired; see [`db`]).
    Database(sqlx::Error),
}

impl Failure {
    fn retryable(&self) -> bool {
        match self {
            Failure::Retry => true,
            Failure::Database(sqlx::Error::Database(e)) => {
                // serialization_failure, deadlock_detected
                matches!(e.code().as_deref(), Some("40001" | "40P01"))
            }
            _ => false,
        }
    }
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Database(e)
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Logical(e)
    }
}

impl From<Failure> for StoreError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Logical(e) => e,
            Failure::Retry => StoreError::Database(
                "gave up after repeated conflicts with concurrent writers".into(),
            ),
            Failure::Database(e) => db(e),
        }
    }
}

/// Converts a database failure, naming the constraint violations callers
/// act on.
fn db(e: sqlx::Error) -> StoreError {
    use sqlx::error::ErrorKind;
    match &e {
        sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => return StoreError::Closed,
        sqlx::Error::Database(dbe) => match (dbe.kind(), dbe.constraint()) {
            (ErrorKind::UniqueViolation, Some("accounts_phone_unique"))
            | (ErrorKind::UniqueViolation, Some("vault_phone_index_unique")) => {
                return StoreError::PhoneTaken;
            }
            (ErrorKind::UniqueViolation, Some("accounts_username_unique")) => {
                return StoreError::UsernameTaken;
            }
            (ErrorKind::UniqueViolation, Some("devices_noise_key_unique")) => {
                return StoreError::DeviceKeyTaken;
            }
            (ErrorKind::ForeignKeyViolation, _) => return StoreError::UnknownAccount,
            _ => {}
        },
        _ => {}
    }
    StoreError::Database(Box::new(e))
}

/// A stored value that does not have the shape the schema promises.
fn corrupt(what: &'static str) -> sqlx::Error {
    sqlx::Error::Protocol(format!("corrupt database: bad {what}"))
}

fn blob<const N: usize>(row: &PgRow, column: &str) -> Result<[u8; N], sqlx::Error> {
    let bytes: &[u8] = row.try_get(column)?;
    bytes.try_into().map_err(|_| corrupt("key length"))
}

fn account_id(row: &PgRow, column: &str) -> Result<AccountId, sqlx::Error> {
    blob(row, column).map(AccountId)
}

fn device_number(row: &PgRow, column: &str) -> Result<u32, sqlx::Error> {
    let n: i64 = row.try_get(column)?;
    u32::try_from(n).map_err(|_| corrupt("device id"))
}

fn unsigned(n: i64, what: &'static str) -> Result<u64, sqlx::Error> {
    u64::try_from(n).map_err(|_| corrupt(what))
}

/// Sequence numbers and epochs are BIGINT; anything beyond covers everything.
fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn account_from(row: &PgRow) -> Result<Account, sqlx::Error> {
    Ok(Account {
        id: account_id(row, "id")?,
        country: row.try_get("country")?,
        username: row.try_get("username")?,
        created_at: row.try_get("created_at")?,
    })
}

fn device_from(row: &PgRow) -> Result<Device, sqlx::Error> {
    Ok(Device {
        addr: DeviceAddr {
            account: account_id(row, "account_id")?,
            device: device_number(row, "device_id")?,
        },
        name: row.try_get("name")?,
        identity_key: blob(row, "identity_key")?,
        noise_key: blob(row, "noise_key")?,
        created_at: row.try_get("created_at")?,
    })
}

fn code_from(row: &PgRow) -> Result<StoredCode, sqlx::Error> {
    let failed: i32 = row.try_get("failed_attempts")?;
    Ok(StoredCode {
        id: row.try_get("id")?,
        code_hash: blob(row, "code_hash")?,
        issued_at: row.try_get("issued_at")?,
        expires_at: row.try_get("expires_at")?,
        used_at: row.try_get("used_at")?,
        failed_attempts: u32::try_from(failed).unwrap_or(0),
    })
}

fn message_from(row: &PgRow) -> Result<StoredMessage, sqlx::Error> {
    let payload: Vec<u8> = row.try_get("payload")?;
    Ok(StoredMessage {
        seq: unsigned(row.try_get("seq")?, "sequence number")?,
        sender: DeviceAddr {
            account: account_id(row, "sender_account")?,
            device: device_number(row, "sender_device")?,
        },
        client_message_id: blob(row, "client_message_id")?,
        received_at: row.try_get("received_at")?,
        group_id: row
            .try_get::<Option<Vec<u8>>, _>("group_id")?
            .map(Into::into),
        payload: payload.into(),
    })
}

impl PgStore {
    async fn account_where(&self, sql: &'static str, key: &str) -> Result<Option<Account>> {
        let row = sqlx::query(sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref().map(account_from).transpose().map_err(db)
    }
}

#[async_trait]
impl AccountStore for PgStore {
    async fn create_account(
        &self,
        new: NewAccount,
        device: NewDevice,
        now: Millis,
    ) -> Result<(Account, Device)> {
        let account = Account {
            id: new.id,
            country: new.country.clone(),
            username: new.username.clone(),
            created_at: now,
        };
        let (phone_key, vault) = (hex::encode(new.phone_key), &new.vault);
        let device = Device {
            addr: DeviceAddr {
                account: account.id,
                device: 1,
            },
            name: device.name,
            identity_key: device.identity_key,
            noise_key: device.noise_key,
            created_at: now,
        };
        let (a, d) = (&account, &device);
        self.transaction(|conn| {
            let (a, d, phone_key, vault) = (a.clone(), d.clone(), phone_key.clone(), vault.clone());
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO accounts (id, phone_key, country, username, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&a.id.0[..])
                .bind(&phone_key)
                .bind(&a.country)
                .bind(&a.username)
                .bind(a.created_at)
                .execute(&mut *conn)
                .await?;
                if let Some(v) = &vault {
                    insert_vault(conn, v).await?;
                }
                sqlx::query(
                    "INSERT INTO devices \
                     (account_id, device_id, name, identity_key, noise_key, created_at) \
                     VALUES ($1, 1, $2, $3, $4, $5)",
                )
                .bind(&a.id.0[..])
                .bind(&d.name)
                .bind(&d.identity_key[..])
                .bind(&d.noise_key[..])
                .bind(d.created_at)
                .execute(&mut *conn)
                .await?;
                Ok(())
            })
        })
        .await?;
        Ok((account, device))
    }

    async fn add_device(
        &self,
        account: AccountId,
        device: NewDevice,
        now: Millis,
    ) -> Result<Device> {
        let number = self
            .transaction(|conn| {
                let device = device.clone();
                Box::pin(async move {
                    // Numbers devices one at a time per account. NO KEY
                    // UPDATE leaves foreign-key checks (link tokens) alone.
                    let exists =
                        sqlx::query("SELECT 1 FROM accounts WHERE id = $1 FOR NO KEY UPDATE")
                            .bind(&account.0[..])
                            .fetch_optional(&mut *conn)
                            .await?;
                    if exists.is_none() {
                        return Err(StoreError::UnknownAccount.into());
                    }
                    let number: i64 = sqlx::query_scalar(
                        "INSERT INTO devices \
                         (account_id, device_id, name, identity_key, noise_key, created_at) \
                         SELECT $1, COALESCE(MAX(device_id), 0) + 1, $2, $3, $4, $5 \
                         FROM devices WHERE account_id = $1 \
                         RETURNING device_id",
                    )
                    .bind(&account.0[..])
                    .bind(&device.name)
                    .bind(&device.identity_key[..])
                    .bind(&device.noise_key[..])
                    .bind(now)
                    .fetch_one(&mut *conn)
                    .await?;
                    Ok(u32::try_from(number).map_err(|_| corrupt("device id"))?)
                })
            })
            .await?;
        Ok(Device {
            addr: DeviceAddr {
                account,
                device: number,
            },
            name: device.name,
            identity_key: device.identity_key,
            noise_key: device.noise_key,
            created_at: now,
        })
    }

    async fn account(&self, id: AccountId) -> Result<Option<Account>> {
        let row =
            sqlx::query("SELECT id, country, username, created_at FROM accounts WHERE id = $1")
                .bind(&id.0[..])
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        row.as_ref().map(account_from).transpose().map_err(db)
    }

    async fn account_by_phone_key(&self, phone_key: &[u8; 32]) -> Result<Option<Account>> {
        self.account_where(
            "SELECT id, country, username, created_at FROM accounts WHERE phone_key = $1",
            &hex::encode(phone_key),
        )
        .await
    }

    async fn legacy_phones(&self, limit: u32) -> Result<Vec<LegacyPhone>> {
        sqlx::query("SELECT id, phone_key FROM accounts WHERE phone_key LIKE '+%' LIMIT $1")
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(|r| {
                Ok(LegacyPhone {
                    account: account_id(r, "id")?,
                    phone: r.try_get("phone_key")?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(db)
    }

    async fn seal_legacy_phone(
        &self,
        account: AccountId,
        phone_key: [u8; 32],
        country: &str,
        vault: Option<VaultEntry>,
    ) -> Result<()> {
        let (phone_key, vault) = (hex::encode(phone_key), &vault);
        self.transaction(|conn| {
            let (phone_key, country, vault) =
                (phone_key.clone(), country.to_owned(), vault.clone());
            Box::pin(async move {
                let changed = sqlx::query(
                    "UPDATE accounts SET phone_key = $1, country = $2 \
                     WHERE id = $3 AND phone_key LIKE '+%'",
                )
                .bind(&phone_key)
                .bind(&country)
                .bind(&account.0[..])
                .execute(&mut *conn)
                .await?
                .rows_affected();
                if changed == 0 {
                    return Err(StoreError::UnknownAccount.into());
                }
                if let Some(v) = &vault {
                    insert_vault(conn, v).await?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Usernames match regardless of case, through the index on lower().
    async fn account_by_username(&self, username: &str) -> Result<Option<Account>> {
        self.account_where(
            "SELECT id, country, username, created_at FROM accounts \
             WHERE lower(username) = lower($1)",
            username,
        )
        .await
    }

    async fn set_username(&self, id: AccountId, username: Option<&str>) -> Result<()> {
        let changed = sqlx::query("UPDATE accounts SET username = $1 WHERE id = $2")
            .bind(username)
            .bind(&id.0[..])
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected();
        if changed == 0 {
            return Err(StoreError::UnknownAccount);
        }
        Ok(())
    }

    async fn devices(&self, id: AccountId) -> Result<Vec<Device>> {
        let rows = sqlx::query(
            "SELECT account_id, device_id, name, identity_key, noise_key, created_at \
             FROM devices WHERE account_id = $1 ORDER BY device_id",
        )
        .bind(&id.0[..])
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(device_from)
            .collect::<Result<_, _>>()
            .map_err(db)
    }

    async fn remove_device(&self, device: DeviceAddr) -> Result<bool> {
        self.transaction(|conn| Box::pin(groups::remove_device(conn, device)))
            .await
    }

    async fn device_by_noise_key(&self, noise_key: &[u8; 32]) -> Result<Option<Device>> {
        let row = sqlx::query(
            "SELECT account_id, device_id, name, identity_key, noise_key, created_at \
             FROM devices WHERE noise_key = $1",
        )
        .bind(&noise_key[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(device_from).transpose().map_err(db)
    }

    async fn create_link_token(
        &self,
        account: AccountId,
        token_hash: [u8; 32],
        expires_at: Millis,
    ) -> Result<()> {
        sqlx::query("INSERT INTO link_tokens (hash, account_id, expires_at) VALUES ($1, $2, $3)")
            .bind(&token_hash[..])
            .bind(&account.0[..])
            .bind(expires_at)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn redeem_link_token(
        &self,
        token_hash: [u8; 32],
        now: Millis,
    ) -> Result<Option<AccountId>> {
        // An expired token is deleted all the same: it can never work again.
        let row =
            sqlx::query("DELETE FROM link_tokens WHERE hash = $1 RETURNING account_id, expires_at")
                .bind(&token_hash[..])
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let expires_at: Millis = row.try_get("expires_at").map_err(db)?;
        if expires_at <= now {
            return Ok(None);
        }
        Ok(Some(account_id(&row, "account_id").map_err(db)?))
    }
}

#[async_trait]
impl CodeStore for PgStore {
    async fn issue_code(
        &self,
        phone_key: &[u8; 32],
        code_hash: [u8; 32],
        now: Millis,
        expires_at: Millis,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO codes (phone_key, code_hash, issued_at, expires_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(hex::encode(phone_key))
        .bind(&code_hash[..])
        .bind(now)
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn codes_issued_since(&self, phone_key: &[u8; 32], since: Millis) -> Result<u32> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM codes WHERE phone_key = $1 AND issued_at >= $2",
        )
        .bind(hex::encode(phone_key))
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .map_err(db)?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    async fn latest_code(&self, phone_key: &[u8; 32]) -> Result<Option<StoredCode>> {
        let row = sqlx::query(
            "SELECT id, code_hash, issued_at, expires_at, used_at, failed_attempts \
             FROM codes WHERE phone_key = $1 ORDER BY issued_at DESC, id DESC LIMIT 1",
        )
        .bind(hex::encode(phone_key))
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.as_ref().map(code_from).transpose().map_err(db)
    }

    /// A single `UPDATE … WHERE used_at IS NULL`: of two concurrent calls,
    /// the second waits for the first's row lock, then finds the code used.
    async fn consume_code(&self, id: i64, now: Millis) -> Result<bool> {
        let changed =
            sqlx::query("UPDATE codes SET used_at = $1 WHERE id = $2 AND used_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(db)?
                .rows_affected();
        Ok(changed == 1)
    }

    /// Returns the new count, or 0 if no code has this id (any more).
    async fn record_failed_attempt(&self, id: i64) -> Result<u32> {
        let count: Option<i32> = sqlx::query_scalar(
            "UPDATE codes SET failed_attempts = failed_attempts + 1 WHERE id = $1 \
             RETURNING failed_attempts",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(count.map_or(0, |n| u32::try_from(n).unwrap_or(0)))
    }

    async fn purge_codes(&self, before: Millis) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM codes WHERE expires_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected())
    }
}

#[async_trait]
impl VaultStore for PgStore {
    async fn put_vault(&self, entry: VaultEntry) -> Result<()> {
        let e = &entry;
        self.transaction(|conn| {
            let e = e.clone();
            Box::pin(async move { insert_vault(conn, &e).await })
        })
        .await
    }

    async fn vault(&self, account: AccountId) -> Result<Option<VaultEntry>> {
        let Some(row) = sqlx::query(
            "SELECT public_key, phone_index, sealed_phone, threshold FROM vault_accounts \
             WHERE account_id = $1",
        )
        .bind(&account.0[..])
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?
        else {
            return Ok(None);
        };
        let shares = sqlx::query(
            "SELECT custodian, wrapped FROM vault_shares WHERE account_id = $1 ORDER BY custodian",
        )
        .bind(&account.0[..])
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(|r| {
            Ok((
                blob::<32>(r, "custodian")?,
                Bytes::from(r.try_get::<Vec<u8>, _>("wrapped")?),
            ))
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(db)?;
        let entry = (|| -> Result<VaultEntry, sqlx::Error> {
            Ok(VaultEntry {
                account,
                phone_index: blob::<32>(&row, "phone_index")?,
                public_key: blob::<32>(&row, "public_key")?,
                sealed_phone: Bytes::from(row.try_get::<Vec<u8>, _>("sealed_phone")?),
                threshold: u32::try_from(row.try_get::<i32, _>("threshold")?)
                    .map_err(|_| corrupt("vault threshold"))?,
                shares,
            })
        })()
        .map_err(db)?;
        Ok(Some(entry))
    }

    async fn account_by_phone_index(&self, index: &[u8; 32]) -> Result<Option<AccountId>> {
        sqlx::query("SELECT account_id FROM vault_accounts WHERE phone_index = $1")
            .bind(&index[..])
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .map(|r| account_id(&r, "account_id"))
            .transpose()
            .map_err(db)
    }

    async fn add_connection(&self, account: AccountId, at: Millis, sealed: Bytes) -> Result<()> {
        sqlx::query("INSERT INTO vault_connections (account_id, at, sealed) VALUES ($1, $2, $3)")
            .bind(&account.0[..])
            .bind(at)
            .bind(&sealed[..])
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn connections(
        &self,
        account: AccountId,
        from: Millis,
        until: Millis,
    ) -> Result<Vec<SealedConnection>> {
        sqlx::query(
            "SELECT at, sealed FROM vault_connections \
             WHERE account_id = $1 AND at >= $2 AND at < $3 ORDER BY at, id",
        )
        .bind(&account.0[..])
        .bind(from)
        .bind(until)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?
        .iter()
        .map(|r| {
            Ok(SealedConnection {
                at: r.try_get("at")?,
                sealed: Bytes::from(r.try_get::<Vec<u8>, _>("sealed")?),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(db)
    }

    async fn purge_connections(&self, before: Millis) -> Result<u64> {
        Ok(sqlx::query("DELETE FROM vault_connections WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected())
    }
}

#[async_trait]
impl QueueStore for PgStore {
    async fn enqueue(&self, msg: NewMessage) -> Result<Enqueued> {
        let msg = &msg;
        self.transaction(|conn| {
            let msg = msg.clone();
            Box::pin(async move { queue::enqueue(conn, &msg).await?.map_err(Failure::Logical) })
        })
        .await
    }

    async fn fetch(
        &self,
        device: DeviceAddr,
        after_seq: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredMessage>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Rows are streamed so that a small `max_bytes` stops reading early
        // instead of loading `limit` payloads.
        let mut rows = sqlx::query(
            "SELECT seq, sender_account, sender_device, client_message_id, received_at, group_id, \
             payload \
             FROM queue WHERE account_id = $1 AND device_id = $2 AND seq > $3 \
             ORDER BY seq LIMIT $4",
        )
        .bind(&device.account.0[..])
        .bind(i64::from(device.device))
        .bind(signed(after_seq))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch(&self.pool);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.try_next().await.map_err(db)? {
            let msg = message_from(&row).map_err(db)?;
            bytes = bytes.saturating_add(msg.payload.len());
            if bytes > max_bytes && !out.is_empty() {
                break;
            }
            out.push(msg);
        }
        Ok(out)
    }

    async fn queue_head(&self, device: DeviceAddr) -> Result<u64> {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT next_seq FROM devices WHERE account_id = $1 AND device_id = $2",
        )
        .bind(&device.account.0[..])
        .bind(i64::from(device.device))
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        Ok(next.map_or(0, |n| u64::try_from(n - 1).unwrap_or(0)))
    }

    async fn ack(&self, device: DeviceAddr, up_to_seq: u64) -> Result<()> {
        sqlx::query("DELETE FROM queue WHERE account_id = $1 AND device_id = $2 AND seq <= $3")
            .bind(&device.account.0[..])
            .bind(i64::from(device.device))
            .bind(signed(up_to_seq))
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// A row counts as expired from its `expires_at` on.
    async fn purge_expired(&self, now: Millis) -> Result<u64> {
        self.transaction(|conn| {
            Box::pin(async move {
                let queued = sqlx::query("DELETE FROM queue WHERE expires_at <= $1")
                    .bind(now)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                sqlx::query("DELETE FROM sends WHERE expires_at <= $1")
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("DELETE FROM welcome_trees WHERE expires_at <= $1")
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                Ok(queued)
            })
        })
        .await
    }
}

#[async_trait]
impl DistributorStore for PgStore {
    async fn distributor_state(&self) -> Result<Option<Bytes>> {
        let state: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT state FROM distributor_state WHERE id = 1")
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        Ok(state.map(Bytes::from))
    }

    async fn save_distributor_state(&self, state: Bytes, now: Millis) -> Result<()> {
        sqlx::query(
            "INSERT INTO distributor_state (id, state, updated_at) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, updated_at = EXCLUDED.updated_at",
        )
        .bind(&state[..])
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }
}

/// Inserts an account's vault row and its shares, inside the caller's
/// transaction.
async fn insert_vault(conn: &mut PgConnection, e: &VaultEntry) -> Result<(), Failure> {
    sqlx::query(
        "INSERT INTO vault_accounts \
         (account_id, phone_index, public_key, sealed_phone, threshold) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&e.account.0[..])
    .bind(&e.phone_index[..])
    .bind(&e.public_key[..])
    .bind(&e.sealed_phone[..])
    .bind(i32::try_from(e.threshold).unwrap_or(i32::MAX))
    .execute(&mut *conn)
    .await?;
    for (custodian, wrapped) in &e.shares {
        sqlx::query(
            "INSERT INTO vault_shares (account_id, custodian, wrapped) VALUES ($1, $2, $3)",
        )
        .bind(&e.account.0[..])
        .bind(&custodian[..])
        .bind(&wrapped[..])
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
