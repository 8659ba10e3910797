//! The embedded store: one SQLite file in WAL mode.
//!
//! This module owns the file: its schema (the migrations under
//! `migrations/sqlite`, compiled into the binary and run on open), the
//! single writer task and the read pool.
//!
//! Every write — queued messages, acks, accounts, codes, link tokens — goes
//! through the one writer connection (see [`writer`]), which runs all calls
//! waiting at that moment in one `BEGIN IMMEDIATE` transaction and answers
//! them after its `COMMIT` (group commit: one fsync for many messages).
//! Writers therefore never contend for the file and never see
//! `SQLITE_BUSY` from each other. Reads go to a small pool of read-only
//! connections that, in WAL mode, see the last committed state without
//! blocking the writer or being blocked by it.
//!
//! A call that returned `Ok` has been committed. Whether it survives a crash
//! depends on [`Synchronous`]: in WAL mode both settings survive the process
//! being killed (the commit is in the operating system's page cache), but
//! only [`Synchronous::Full`] survives power loss or a kernel crash.
//!
//! The store never looks inside message payloads and never holds a write
//! transaction open across a call to anything but SQLite.

mod enqueue;
mod groups;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row};

use crate::{
    Account, AccountId, AccountStore, CodeStore, Device, DeviceAddr, DistributorStore, Enqueued,
    LegacyPhone, Millis, NewAccount, NewDevice, NewMessage, QueueStore, Result, SealedConnection,
    StoreError, StoredCode, StoredMessage, VaultEntry, VaultStore,
};
use writer::{Command, Writer};

pub use writer::WriterStats;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a connection waits for a lock held by another process before
/// giving up. Within one process the single writer never waits on itself.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes of the database file each connection may map.
const MMAP_SIZE: u64 = 256 * 1024 * 1024;
/// How often the background checkpointer runs.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// WAL size (pages) at which the writer checkpoints itself: a safety valve
/// for when the background checkpointer falls behind.
const WRITER_AUTOCHECKPOINT_PAGES: u32 = 16_384;
/// Page cache of the writer connection, KiB.
const CACHE_KIB: u64 = 32 * 1024;

/// When SQLite forces data to stable storage (`PRAGMA synchronous`).
///
/// Both settings keep an acknowledged commit if the process is killed; they
/// differ on power loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Synchronous {
    /// Sync the write-ahead log only at checkpoints. Faster; a power loss
    /// or kernel crash may lose the last commits (never corrupts the file).
    Normal,
    /// Sync the write-ahead log at every commit, so an acknowledged message
    /// survives power loss too.
    #[default]
    Full,
}

impl From<Synchronous> for SqliteSynchronous {
    fn from(s: Synchronous) -> Self {
        match s {
            Synchronous::Normal => SqliteSynchronous::Normal,
            Synchronous::Full => SqliteSynchronous::Full,
        }
    }
}

/// How to open a [`SqliteStore`].
#[derive(Clone, Debug)]
pub struct SqliteOptions {
    /// The database file; it and its directory are created if missing.
    pub path: PathBuf,
    /// Durability of each commit; [`Synchronous::Full`] by default.
    pub synchronous: Synchronous,
    /// Most write calls committed in one transaction; 512 by default.
    pub max_batch: usize,
    /// Connections in the read pool; 4 by default.
    pub read_connections: u32,
}

impl SqliteOptions {
    /// Options for the database at `path`, with the defaults.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            synchronous: Synchronous::default(),
            max_batch: 512,
            read_connections: 4,
        }
    }
}

/// The embedded SQLite store. Cloning is cheap and shares the database.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    reads: SqlitePool,
    writer: Writer,
    checkpointer: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if missing) the database and brings its schema up to
    /// date. Must be called within a Tokio runtime: it starts the writer task.
    pub async fn open(opts: SqliteOptions) -> Result<SqliteStore> {
        if let Some(dir) = opts.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| StoreError::Database(Box::new(e)))?;
        }
        // Memory-mapped reads spare a copy per page read.
        let base = SqliteConnectOptions::new()
            .filename(&opts.path)
            .busy_timeout(BUSY_TIMEOUT)
            .pragma("mmap_size", MMAP_SIZE.to_string());
        // Only the writer gets a large page cache: it keeps the hot end of
        // the tables in memory. A reader's cache is dropped whenever another
        // connection has written, so a large one only costs time to clear.
        let write_opts = base
            .clone()
            .pragma("cache_size", format!("-{CACHE_KIB}"))
            // Statement and savepoint journals in memory, not temp files:
            // they only ever serve a rollback within this transaction.
            .pragma("temp_store", "memory")
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(opts.synchronous.into())
            .foreign_keys(true)
            // Checkpoints run on their own connection (see `checkpoints`);
            // the writer only checkpoints if the WAL grows past this.
            .pragma(
                "wal_autocheckpoint",
                WRITER_AUTOCHECKPOINT_PAGES.to_string(),
            );
        let mut conn = SqliteConnection::connect_with(&write_opts)
            .await
            .map_err(db)?;
        MIGRATOR
            .run(&mut conn)
            .await
            .map_err(|e| StoreError::Database(Box::new(e)))?;
        let reads = SqlitePoolOptions::new()
            .max_connections(opts.read_connections.max(1))
            .connect_with(base.clone().read_only(true))
            .await
            .map_err(db)?;
        let checkpoint_conn = SqliteConnection::connect_with(&base).await.map_err(db)?;
        let checkpointer = tokio::spawn(checkpoints(checkpoint_conn));
        tracing::info!(path = %opts.path.display(), synchronous = ?opts.synchronous, "opened sqlite store");
        Ok(SqliteStore {
            inner: Arc::new(Inner {
                path: opts.path,
                reads,
                writer: Writer::spawn(conn, opts.max_batch.max(1)),
                checkpointer,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Commits what the writer has been given, stops it and closes every
    /// connection. Later calls on any clone fail with [`StoreError::Closed`].
    pub async fn close(&self) {
        self.inner.writer.close().await;
        self.inner.checkpointer.abort();
        self.inner.reads.close().await;
    }

    /// How many transactions the writer committed or tried, and how many
    /// calls they carried; `commands / batches` is the group-commit factor.
    pub fn stats(&self) -> WriterStats {
        self.inner.writer.stats()
    }
}

/// Copies committed WAL pages back into the database file every
/// [`CHECKPOINT_EVERY`], off the writer's thread, so that work does not sit
/// on the commit path. PASSIVE never blocks the writer or readers.
async fn checkpoints(mut conn: SqliteConnection) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&mut conn)
            .await
        {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

/// Converts a database failure.
fn db(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => StoreError::Closed,
        e => StoreError::Database(Box::new(e)),
    }
}

/// A stored value that does not have the shape the schema promises.
fn corrupt(what: &'static str) -> StoreError {
    StoreError::Database(format!("corrupt database: bad {what}").into())
}

fn blob<const N: usize>(row: &SqliteRow, column: &str) -> Result<[u8; N]> {
    let bytes: &[u8] = row.try_get(column).map_err(db)?;
    bytes.try_into().map_err(|_| corrupt("key length"))
}

fn account_id(row: &SqliteRow, column: &str) -> Result<AccountId> {
    blob(row, column).map(AccountId)
}

fn account_from(row: &SqliteRow) -> Result<Account> {
    Ok(Account {
        id: account_id(row, "id")?,
        country: row.try_get("country").map_err(db)?,
        username: row.try_get("username").map_err(db)?,
        created_at: row.try_get("created_at").map_err(db)?,
    })
}

fn device_from(row: &SqliteRow) -> Result<Device> {
    Ok(Device {
        addr: DeviceAddr {
            account: account_id(row, "account_id")?,
            device: row.try_get("device_id").map_err(db)?,
        },
        name: row.try_get("name").map_err(db)?,
        identity_key: blob(row, "identity_key")?,
        noise_key: blob(row, "noise_key")?,
        created_at: row.try_get("created_at").map_err(db)?,
    })
}

fn code_from(row: &SqliteRow) -> Result<StoredCode> {
    Ok(StoredCode {
        id: row.try_get("id").map_err(db)?,
        code_hash: blob(row, "code_hash")?,
        issued_at: row.try_get("issued_at").map_err(db)?,
        expires_at: row.try_get("expires_at").map_err(db)?,
        used_at: row.try_get("used_at").map_err(db)?,
        failed_attempts: row.try_get("failed_attempts").map_err(db)?,
    })
}

fn message_from(row: &SqliteRow) -> Result<StoredMessage> {
    let seq: i64 = row.try_get("seq").map_err(db)?;
    let payload: Vec<u8> = row.try_get("payload").map_err(db)?;
    Ok(StoredMessage {
        seq: u64::try_from(seq).map_err(|_| corrupt("sequence number"))?,
        sender: DeviceAddr {
            account: account_id(row, "sender_account")?,
            device: row.try_get("sender_device").map_err(db)?,
        },
        client_message_id: blob(row, "client_message_id")?,
        received_at: row.try_get("received_at").map_err(db)?,
        group_id: row
            .try_get::<Option<Vec<u8>>, _>("group_id")
            .map_err(db)?
            .map(Bytes::from),
        payload: Bytes::from(payload),
    })
}

/// Sequence numbers are SQLite integers; anything beyond covers everything.
fn seq_param(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

impl SqliteStore {
    async fn account_where(&self, sql: &'static str, key: &str) -> Result<Option<Account>> {
        let row = sqlx::query(sql)
            .bind(key)
            .fetch_optional(&self.inner.reads)
            .await
            .map_err(db)?;
        row.as_ref().map(account_from).transpose()
    }
}

#[async_trait]
impl AccountStore for SqliteStore {
    async fn create_account(
        &self,
        account: NewAccount,
        device: NewDevice,
        now: Millis,
    ) -> Result<(Account, Device)> {
        let account = Box::new(account);
        self.inner
            .writer
            .call(|reply| Command::CreateAccount {
                account,
                device,
                now,
                reply,
            })
            .await
    }

    async fn add_device(
        &self,
        account: AccountId,
        device: NewDevice,
        now: Millis,
    ) -> Result<Device> {
        self.inner
            .writer
            .call(|reply| Command::AddDevice {
                account,
                device,
                now,
                reply,
            })
            .await
    }

    async fn account(&self, id: AccountId) -> Result<Option<Account>> {
        let row =
            sqlx::query("SELECT id, country, username, created_at FROM accounts WHERE id = ?")
                .bind(&id.0[..])
                .fetch_optional(&self.inner.reads)
                .await
                .map_err(db)?;
        row.as_ref().map(account_from).transpose()
    }

    async fn account_by_phone_key(&self, phone_key: &[u8; 32]) -> Result<Option<Account>> {
        self.account_where(
            "SELECT id, country, username, created_at FROM accounts WHERE phone_key = ?",
            &hex::encode(phone_key),
        )
        .await
    }

    async fn legacy_phones(&self, limit: u32) -> Result<Vec<LegacyPhone>> {
        sqlx::query("SELECT id, phone_key FROM accounts WHERE phone_key LIKE '+%' LIMIT ?")
            .bind(i64::from(limit))
            .fetch_all(&self.inner.reads)
            .await
            .map_err(db)?
            .iter()
            .map(|r| {
                Ok(LegacyPhone {
                    account: account_id(r, "id")?,
                    phone: r.try_get("phone_key").map_err(db)?,
                })
            })
            .collect()
    }

    async fn seal_legacy_phone(
        &self,
        account: AccountId,
        phone_key: [u8; 32],
        country: &str,
        vault: Option<VaultEntry>,
    ) -> Result<()> {
        let country = country.to_owned();
        let vault = vault.map(Box::new);
        self.inner
            .writer
            .call(|reply| Command::SealLegacyPhone {
                account,
                phone_key,
                country,
                vault,
                reply,
            })
            .await
    }

    async fn account_by_username(&self, username: &str) -> Result<Option<Account>> {
        self.account_where(
            "SELECT id, country, username, created_at FROM accounts WHERE username = ?",
            username,
        )
        .await
    }

    async fn set_username(&self, id: AccountId, username: Option<&str>) -> Result<()> {
        self.inner
            .writer
            .call(|reply| Command::SetUsername {
                account: id,
                username: username.map(str::to_owned),
                reply,
            })
            .await
    }

    async fn devices(&self, id: AccountId) -> Result<Vec<Device>> {
        let rows = sqlx::query(
            "SELECT account_id, device_id, name, identity_key, noise_key, created_at \
             FROM devices WHERE account_id = ? ORDER BY device_id",
        )
        .bind(&id.0[..])
        .fetch_all(&self.inner.reads)
        .await
        .map_err(db)?;
        rows.iter().map(device_from).collect()
    }

    async fn remove_device(&self, device: DeviceAddr) -> Result<bool> {
        self.inner
            .writer
            .call(|reply| Command::RemoveDevice { device, reply })
            .await
    }

    async fn device_by_noise_key(&self, noise_key: &[u8; 32]) -> Result<Option<Device>> {
        let row = sqlx::query(
            "SELECT account_id, device_id, name, identity_key, noise_key, created_at \
             FROM devices WHERE noise_key = ?",
        )
        .bind(&noise_key[..])
        .fetch_optional(&self.inner.reads)
        .await
        .map_err(db)?;
        row.as_ref().map(device_from).transpose()
    }

    async fn create_link_token(
        &self,
        account: AccountId,
        token_hash: [u8; 32],
        expires_at: Millis,
    ) -> Result<()> {
        self.inner
            .writer
            .call(|reply| Command::CreateLinkToken {
                account,
                hash: token_hash,
                expires_at,
                reply,
            })
            .await
    }

    async fn redeem_link_token(
        &self,
        token_hash: [u8; 32],
        now: Millis,
    ) -> Result<Option<AccountId>> {
        self.inner
            .writer
            .call(|reply| Command::RedeemLinkToken {
                hash: token_hash,
                now,
                reply,
            })
            .await
    }
}

#[async_trait]
impl CodeStore for SqliteStore {
    async fn issue_code(
        &self,
        phone_key: &[u8; 32],
        code_hash: [u8; 32],
        now: Millis,
        expires_at: Millis,
    ) -> Result<()> {
        self.inner
            .writer
            .call(|reply| Command::IssueCode {
                phone_key: hex::encode(phone_key),
                code_hash,
                now,
                expires_at,
                reply,
            })
            .await
    }

    async fn codes_issued_since(&self, phone_key: &[u8; 32], since: Millis) -> Result<u32> {
        let count: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM codes WHERE phone_key = ? AND issued_at >= ?")
                .bind(hex::encode(phone_key))
                .bind(since)
                .fetch_one(&self.inner.reads)
                .await
                .map_err(db)?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }

    async fn latest_code(&self, phone_key: &[u8; 32]) -> Result<Option<StoredCode>> {
        let row = sqlx::query(
            "SELECT id, code_hash, issued_at, expires_at, used_at, failed_attempts \
             FROM codes WHERE phone_key = ? ORDER BY issued_at DESC, id DESC LIMIT 1",
        )
        .bind(hex::encode(phone_key))
        .fetch_optional(&self.inner.reads)
        .await
        .map_err(db)?;
        row.as_ref().map(code_from).transpose()
    }

    async fn consume_code(&self, id: i64, now: Millis) -> Result<bool> {
        self.inner
            .writer
            .call(|reply| Command::ConsumeCode { id, now, reply })
            .await
    }

    /// Returns the new count, or 0 if no code has this id (any more).
    async fn record_failed_attempt(&self, id: i64) -> Result<u32> {
        self.inner
            .writer
            .call(|reply| Command::RecordFailedAttempt { id, reply })
            .await
    }

    async fn purge_codes(&self, before: Millis) -> Result<u64> {
        self.inner
            .writer
            .call(|reply| Command::PurgeCodes { before, reply })
            .await
    }
}

#[async_trait]
impl DistributorStore for SqliteStore {
    async fn distributor_state(&self) -> Result<Option<Bytes>> {
        let row = sqlx::query("SELECT state FROM distributor_state WHERE id = 1")
            .fetch_optional(&self.inner.reads)
            .await
            .map_err(db)?;
        row.map(|r| r.try_get::<Vec<u8>, _>(0).map(Bytes::from))
            .transpose()
            .map_err(db)
    }

    async fn save_distributor_state(&self, state: Bytes, now: Millis) -> Result<()> {
        self.inner
            .writer
            .call(|reply| Command::SaveDistributorState { state, now, reply })
            .await
    }
}

#[async_trait]
impl VaultStore for SqliteStore {
    async fn put_vault(&self, entry: VaultEntry) -> Result<()> {
        let entry = Box::new(entry);
        self.inner
            .writer
            .call(|reply| Command::PutVault { entry, reply })
            .await
    }

    async fn vault(&self, account: AccountId) -> Result<Option<VaultEntry>> {
        let Some(row) = sqlx::query(
            "SELECT public_key, phone_index, sealed_phone, threshold FROM vault_accounts \
             WHERE account_id = ?",
        )
        .bind(&account.0[..])
        .fetch_optional(&self.inner.reads)
        .await
        .map_err(db)?
        else {
            return Ok(None);
        };
        let shares = sqlx::query(
            "SELECT custodian, wrapped FROM vault_shares WHERE account_id = ? ORDER BY custodian",
        )
        .bind(&account.0[..])
        .fetch_all(&self.inner.reads)
        .await
        .map_err(db)?
        .iter()
        .map(|r| {
            Ok((
                blob::<32>(r, "custodian")?,
                Bytes::from(r.try_get::<Vec<u8>, _>("wrapped").map_err(db)?),
            ))
        })
        .collect::<Result<Vec<_>>>()?;
        Ok(Some(VaultEntry {
            account,
            phone_index: blob::<32>(&row, "phone_index")?,
            public_key: blob::<32>(&row, "public_key")?,
            sealed_phone: Bytes::from(row.try_get::<Vec<u8>, _>("sealed_phone").map_err(db)?),
            threshold: u32::try_from(row.try_get::<i64, _>("threshold").map_err(db)?)
                .map_err(|_| corrupt("vault threshold"))?,
            shares,
        }))
    }

    async fn account_by_phone_index(&self, index: &[u8; 32]) -> Result<Option<AccountId>> {
        sqlx::query("SELECT account_id FROM vault_accounts WHERE phone_index = ?")
            .bind(&index[..])
            .fetch_optional(&self.inner.reads)
            .await
            .map_err(db)?
            .map(|r| account_id(&r, "account_id"))
            .transpose()
    }

    async fn add_connection(&self, account: AccountId, at: Millis, sealed: Bytes) -> Result<()> {
        self.inner
            .writer
            .call(|reply| Command::AddConnection {
                account,
                at,
                sealed,
                reply,
            })
            .await
    }

    async fn connections(
        &self,
        account: AccountId,
        from: Millis,
        until: Millis,
    ) -> Result<Vec<SealedConnection>> {
        sqlx::query(
            "SELECT at, sealed FROM vault_connections \
             WHERE account_id = ? AND at >= ? AND at < ? ORDER BY at, id",
        )
        .bind(&account.0[..])
        .bind(from)
        .bind(until)
        .fetch_all(&self.inner.reads)
        .await
        .map_err(db)?
        .iter()
        .map(|r| {
            Ok(SealedConnection {
                at: r.try_get("at").map_err(db)?,
                sealed: Bytes::from(r.try_get::<Vec<u8>, _>("sealed").map_err(db)?),
            })
        })
        .collect()
    }

    async fn purge_connections(&self, before: Millis) -> Result<u64> {
        self.inner
            .writer
            .call(|reply| Command::PurgeConnections { before, reply })
            .await
    }
}

#[async_trait]
impl QueueStore for SqliteStore {
    async fn enqueue(&self, msg: NewMessage) -> Result<Enqueued> {
        self.inner.writer.enqueue(msg).await
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
             FROM queue WHERE account_id = ? AND device_id = ? AND seq > ? \
             ORDER BY seq LIMIT ?",
        )
        .bind(&device.account.0[..])
        .bind(device.device)
        .bind(seq_param(after_seq))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch(&self.inner.reads);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while let Some(row) = rows.try_next().await.map_err(db)? {
            let msg = message_from(&row)?;
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
            "SELECT next_seq FROM devices WHERE account_id = ? AND device_id = ?",
        )
        .bind(&device.account.0[..])
        .bind(device.device)
        .fetch_optional(&self.inner.reads)
        .await
        .map_err(db)?;
        Ok(next.map_or(0, |n| u64::try_from(n - 1).unwrap_or(0)))
    }

    async fn ack(&self, device: DeviceAddr, up_to_seq: u64) -> Result<()> {
        self.inner
            .writer
            .call(|reply| Command::Ack {
                device,
                up_to_seq,
                reply,
            })
            .await
    }

    async fn purge_expired(&self, now: Millis) -> Result<u64> {
        self.inner
            .writer
            .call(|reply| Command::PurgeExpired { now, reply })
            .await
    }
}
