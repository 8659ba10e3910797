//! The single writer: owns the one write connection and commits in groups.
//!
//! Callers send a [`Command`] with a oneshot for the answer. The writer task
//! takes the first waiting command, drains whatever else is already queued
//! (up to `max_batch`) without waiting for more, runs them all in one
//! `BEGIN IMMEDIATE` transaction and answers every caller after `COMMIT`, so
//! one fsync serves the whole group and nobody hears `Ok` before their data
//! is committed.
//!
//! Enqueues of a batch run together as a set (see [`super::enqueue`]); the
//! other commands run one by one before them.
//!
//! Failure rules: a logical failure (unknown account, a name already taken)
//! fails only its own command and leaves nothing of it behind — enqueues
//! check their recipient before writing anything, every other command but
//! the single-statement ack runs in a `SAVEPOINT`. Any other database error rolls the whole transaction
//! back and every caller in the batch gets it: nothing half-applied is ever
//! committed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::sqlite::SqliteConnection;
use sqlx::{Connection, Row};
use tokio::sync::{mpsc, oneshot};

use bytes::Bytes;

use super::enqueue::enqueue_all;
use super::groups;
use super::seq_param;
use crate::{
    Account, AccountId, ClaimedKeyPackage, CommitOutcome, Device, DeviceAddr, Enqueued,
    KeyPackageCount, Millis, NewAccount, NewCommit, NewDevice, NewMessage, Result, StoreError,
    VaultEntry,
};

/// A batch taking longer than this is logged: it delays every caller in it.
const SLOW_BATCH: std::time::Duration = std::time::Duration::from_millis(100);

/// Where a command's answer goes.
pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;

/// A write, with the data it needs and where to answer.
pub(crate) enum Command {
    Ack {
        device: DeviceAddr,
        up_to_seq: u64,
        reply: Reply<()>,
    },
    PurgeExpired {
        now: Millis,
        reply: Reply<u64>,
    },
    CreateAccount {
        account: Box<NewAccount>,
        device: NewDevice,
        now: Millis,
        reply: Reply<(Account, Device)>,
    },
    SealLegacyPhone {
        account: AccountId,
        phone_key: [u8; 32],
        country: String,
        vault: Option<Box<VaultEntry>>,
        reply: Reply<()>,
    },
    AddDevice {
        account: AccountId,
        device: NewDevice,
        now: Millis,
        reply: Reply<Device>,
    },
    SetUsername {
        account: AccountId,
        username: Option<String>,
        reply: Reply<()>,
    },
    CreateLinkToken {
        account: AccountId,
        hash: [u8; 32],
        expires_at: Millis,
        reply: Reply<()>,
    },
    RedeemLinkToken {
        hash: [u8; 32],
        now: Millis,
        reply: Reply<Option<AccountId>>,
    },
    IssueCode {
        phone_key: String,
        code_hash: [u8; 32],
        now: Millis,
        expires_at: Millis,
        reply: Reply<()>,
    },
    ConsumeCode {
        id: i64,
        now: Millis,
        reply: Reply<bool>,
    },
    RecordFailedAttempt {
        id: i64,
        reply: Reply<u32>,
    },
    PurgeCodes {
        before: Millis,
        reply: Reply<u64>,
    },
    SaveDistributorState {
        state: Bytes,
        now: Millis,
        reply: Reply<()>,
    },
    PutVault {
        entry: Box<VaultEntry>,
        reply: Reply<()>,
    },
    AddConnection {
        account: AccountId,
        at: Millis,
        sealed: Bytes,
        reply: Reply<()>,
    },
    PurgeConnections {
        before: Millis,
        reply: Reply<u64>,
    },
    RemoveDevice {
        device: DeviceAddr,
        reply: Reply<bool>,
    },
    CreateGroup {
        group_id: Bytes,
        creator: DeviceAddr,
        now: Millis,
        reply: Reply<()>,
    },
    Commit {
        commit: Box<NewCommit>,
        reply: Reply<CommitOutcome>,
    },
    AddKeyPackages {
        device: DeviceAddr,
        one_time: Vec<Bytes>,
        last_resort: Option<Bytes>,
        max_one_time: u32,
        reply: Reply<KeyPackageCount>,
    },
    ClaimKeyPackages {
        account: AccountId,
        requester: DeviceAddr,
        reply: Reply<(Vec<ClaimedKeyPackage>, Vec<u32>)>,
    },
}

/// Group-commit counters of a store's writer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Transactions run (committed or failed).
    pub batches: u64,
    /// Write calls they carried.
    pub commands: u64,
}

#[derive(Default)]
struct Counters {
    batches: AtomicU64,
    commands: AtomicU64,
}

enum Message {
    Enqueue(NewMessage, Reply<Enqueued>),
    Command(Command),
    Close(oneshot::Sender<()>),
}

/// The calls one transaction carries: enqueues apart, they run as a set.
#[derive(Default)]
struct Batch {
    enqueues: Vec<NewMessage>,
    enqueue_replies: Vec<Reply<Enqueued>>,
    commands: Vec<Command>,
}

impl Batch {
    fn len(&self) -> usize {
        self.enqueues.len() + self.commands.len()
    }

    /// Adds a call; returns the close request if that is what it was.
    fn push(&mut self, message: Message) -> Option<oneshot::Sender<()>> {
        match message {
            Message::Enqueue(msg, reply) => {
                self.enqueues.push(msg);
                self.enqueue_replies.push(reply);
            }
            Message::Command(cmd) => self.commands.push(cmd),
            Message::Close(done) => return Some(done),
        }
        None
    }
}

/// The handle the store keeps to its writer task.
pub(crate) struct Writer {
    tx: mpsc::Sender<Message>,
    counters: Arc<Counters>,
}

impl Writer {
    /// Starts the writer task on `conn`.
    pub(crate) fn spawn(conn: SqliteConnection, max_batch: usize) -> Self {
        let (writer, task) = Self::new(conn, max_batch);
        // The writer gets a thread and a runtime of its own: each statement is
        // a round trip to sqlx's connection thread, and on the shared runtime
        // every one of them would queue behind connection tasks.
        std::thread::Builder::new()
            .name("postern-writer".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(task),
                    Err(e) => tracing::error!(error = %e, "cannot start the store writer"),
                }
            })
            .expect("spawning the store writer thread");
        writer
    }

    /// The writer on the current runtime, so a single-threaded test runtime
    /// decides when it runs.
    #[cfg(test)]
    fn spawn_local(conn: SqliteConnection, max_batch: usize) -> Self {
        let (writer, task) = Self::new(conn, max_batch);
        tokio::spawn(task);
        writer
    }

    fn new(
        conn: SqliteConnection,
        max_batch: usize,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        // Room for a few batches, so callers queue up while a commit syncs
        // (that is what makes the next batch big) but not without bound.
        let (tx, rx) = mpsc::channel(max_batch.saturating_mul(4));
        let counters = Arc::new(Counters::default());
        let task = run(conn, rx, max_batch, counters.clone());
        (Writer { tx, counters }, task)
    }

    /// Sends a command and waits until it is committed (or failed).
    pub(crate) async fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        self.send(|reply| Message::Command(command(reply))).await
    }

    /// Queues a message and waits until it is committed (or failed).
    pub(crate) async fn enqueue(&self, msg: NewMessage) -> Result<Enqueued> {
        self.send(|reply| Message::Enqueue(msg, reply)).await
    }

    async fn send<T>(&self, message: impl FnOnce(Reply<T>) -> Message) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(message(reply))
            .await
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Stops the writer once what it was sent before is committed.
    pub(crate) async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.tx.send(Message::Close(done)).await.is_ok() {
            // An error means another close got there first and the writer
            // is gone: closed either way.
            let _ = closed.await;
        }
    }

    pub(crate) fn stats(&self) -> WriterStats {
        WriterStats {
            batches: self.counters.batches.load(Ordering::Relaxed),
            commands: self.counters.commands.load(Ordering::Relaxed),
        }
    }
}

async fn run(
    mut conn: SqliteConnection,
    mut rx: mpsc::Receiver<Message>,
    max_batch: usize,
    counters: Arc<Counters>,
) {
    let mut closing = None;
    while closing.is_none() {
        let Some(first) = rx.recv().await else {
            break;
        };
        let mut batch = Batch::default();
        closing = batch.push(first);
        while closing.is_none() && batch.len() < max_batch {
            match rx.try_recv() {
                Ok(message) => closing = batch.push(message),
                Err(_) => break,
            }
        }
        if batch.len() > 0 {
            counters.batches.fetch_add(1, Ordering::Relaxed);
            counters
                .commands
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            let started = std::time::Instant::now();
            let n = batch.len();
            run_batch(&mut conn, batch).await;
            let took = started.elapsed();
            if took > SLOW_BATCH {
                tracing::warn!(commands = n, ms = took.as_millis() as u64, "slow commit");
            }
        }
    }
    // Whatever is still queued is dropped unanswered: its callers see Closed.
    drop(rx);
    if let Err(e) = conn.close().await {
        tracing::warn!(error = %e, "closing the sqlite write connection failed");
    }
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

/// Answers a caller once the batch's fate is known.
type Settle = Box<dyn FnOnce(Option<&Arc<sqlx::Error>>) + Send>;

fn settle<T: Send + 'static>(reply: Reply<T>, result: Result<T>) -> Settle {
    Box::new(move |failed| {
        let answer = match failed {
            None => result,
            Some(e) => Err(StoreError::Database(Box::new(e.clone()))),
        };
        // The caller may have given up waiting; nothing to do then.
        let _ = reply.send(answer);
    })
}

async fn run_batch(conn: &mut SqliteConnection, batch: Batch) {
    let mut settled = Vec::with_capacity(batch.len());
    let mut commands = batch.commands.into_iter();
    let mut enqueue_replies = batch.enqueue_replies;
    let failure = match conn.begin_with("BEGIN IMMEDIATE").await {
        Err(e) => Some(e),
        Ok(mut tx) => {
            let mut failure = None;
            for cmd in commands.by_ref() {
                let (settle, fatal) = apply(&mut tx, cmd).await;
                settled.push(settle);
                if fatal.is_some() {
                    failure = fatal;
                    break;
                }
            }
            if failure.is_none() && !batch.enqueues.is_empty() {
                match enqueue_all(&mut tx, &batch.enqueues).await {
                    Ok(results) => settled.extend(
                        enqueue_replies
                            .drain(..)
                            .zip(results)
                            .map(|(reply, result)| settle(reply, result)),
                    ),
                    Err(e) => failure = Some(e),
                }
            }
            match failure {
                None => tx.commit().await.err(),
                Some(e) => {
                    if let Err(rollback) = tx.rollback().await {
                        tracing::warn!(error = %rollback, "rollback after a failed batch failed");
                    }
                    Some(e)
                }
            }
        }
    };
    let failure = failure.map(Arc::new);
    if let Some(e) = &failure {
        tracing::warn!(error = %e, calls = settled.len() + commands.len() + enqueue_replies.len(), "write batch failed");
    }
    for settle in settled {
        settle(failure.as_ref());
    }
    if let Some(e) = &failure {
        for cmd in commands {
            cmd.fail(e);
        }
        for reply in enqueue_replies {
            let _ = reply.send(Err(StoreError::Database(Box::new(e.clone()))));
        }
    }
}

/// Why a command did not succeed.
pub(super) enum Failure {
    /// Only this command failed; the transaction is still good.
    Logical(StoreError),
    /// The transaction is unusable.
    Fatal(sqlx::Error),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Logical(e)
    }
}

/// For statements inside a savepoint: constraint violations are the
/// caller's problem (SQLite undid just that statement), anything else is
/// fatal.
impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::error::ErrorKind;
        let sqlx::Error::Database(dbe) = &e else {
            return Failure::Fatal(e);
        };
        let typed = match dbe.kind() {
            ErrorKind::UniqueViolation => {
                let message = dbe.message();
                if message.contains("accounts.phone")
                    || message.contains("vault_accounts.phone_index")
                {
                    StoreError::PhoneTaken
                } else if message.contains("accounts.username") {
                    StoreError::UsernameTaken
                } else if message.contains("devices.noise_key") {
                    StoreError::DeviceKeyTaken
                } else {
                    StoreError::Database(Box::new(e))
                }
            }
            ErrorKind::ForeignKeyViolation => StoreError::UnknownAccount,
            ErrorKind::NotNullViolation | ErrorKind::CheckViolation => {
                StoreError::Database(Box::new(e))
            }
            _ => return Failure::Fatal(e),
        };
        Failure::Logical(typed)
    }
}

/// Runs one command inside the batch transaction. Returns how to answer it
/// and, if the transaction must be abandoned, why.
async fn apply(conn: &mut SqliteConnection, cmd: Command) -> (Settle, Option<sqlx::Error>) {
    // An ack, the one command on the message path here, is a single
    // statement without logical failures: it needs no savepoint.
    let savepoint = !matches!(cmd, Command::Ack { .. });
    if savepoint && let Err(e) = sqlx::query("SAVEPOINT command").execute(&mut *conn).await {
        return (cmd.into_settle(), Some(e));
    }
    let (settle, result) = execute(conn, cmd).await;
    let fatal = match result {
        Err(fatal) => return (settle, Some(fatal)),
        Ok(_) if !savepoint => None,
        Ok(true) => end_savepoint(conn, &["RELEASE command"]).await,
        Ok(false) => end_savepoint(conn, &["ROLLBACK TO command", "RELEASE command"]).await,
    };
    (settle, fatal)
}

async fn end_savepoint(
    conn: &mut SqliteConnection,
    statements: &[&'static str],
) -> Option<sqlx::Error> {
    for sql in statements {
        if let Err(e) = sqlx::query(*sql).execute(&mut *conn).await {
            return Some(e);
        }
    }
    None
}

/// How a command ended: `Ok(succeeded)`, or the error that dooms the batch.
type Ended = Result<bool, sqlx::Error>;

fn outcome<T: Send + 'static>(reply: Reply<T>, result: Result<T, Failure>) -> (Settle, Ended) {
    match result {
        Ok(v) => (settle(reply, Ok(v)), Ok(true)),
        Err(Failure::Logical(e)) => (settle(reply, Err(e)), Ok(false)),
        // The answer is replaced by the batch's error when settled.
        Err(Failure::Fatal(e)) => (settle(reply, Err(StoreError::Closed)), Err(e)),
    }
}

async fn execute(conn: &mut SqliteConnection, cmd: Command) -> (Settle, Ended) {
    match cmd {
        Command::Ack {
            device,
            up_to_seq,
            reply,
        } => outcome(reply, ack(conn, device, up_to_seq).await),
        Command::PurgeExpired { now, reply } => outcome(reply, purge_expired(conn, now).await),
        Command::CreateAccount {
            account,
            device,
            now,
            reply,
        } => outcome(reply, create_account(conn, *account, device, now).await),
        Command::SealLegacyPhone {
            account,
            phone_key,
            country,
            vault,
            reply,
        } => outcome(
            reply,
            seal_legacy_phone(conn, account, phone_key, country, vault.map(|v| *v)).await,
        ),
        Command::AddDevice {
            account,
            device,
            now,
            reply,
        } => outcome(reply, add_device(conn, account, device, now).await),
        Command::SetUsername {
            account,
            username,
            reply,
        } => outcome(reply, set_username(conn, account, username).await),
        Command::CreateLinkToken {
            account,
            hash,
            expires_at,
            reply,
        } => outcome(
            reply,
            create_link_token(conn, account, hash, expires_at).await,
        ),
        Command::RedeemLinkToken { hash, now, reply } => {
            outcome(reply, redeem_link_token(conn, hash, now).await)
        }
        Command::IssueCode {
            phone_key,
            code_hash,
            now,
            expires_at,
            reply,
        } => outcome(
            reply,
            issue_code(conn, phone_key, code_hash, now, expires_at).await,
        ),
        Command::ConsumeCode { id, now, reply } => {
            outcome(reply, consume_code(conn, id, now).await)
        }
        Command::RecordFailedAttempt { id, reply } => {
            outcome(reply, record_failed_attempt(conn, id).await)
        }
        Command::PurgeCodes { before, reply } => outcome(reply, purge_codes(conn, before).await),
        Command::SaveDistributorState { state, now, reply } => {
            outcome(reply, save_distributor_state(conn, state, now).await)
        }
        Command::PutVault { entry, reply } => outcome(reply, put_vault(conn, *entry).await),
        Command::AddConnection {
            account,
            at,
            sealed,
            reply,
        } => outcome(reply, add_connection(conn, account, at, sealed).await),
        Command::PurgeConnections { before, reply } => {
            outcome(reply, purge_connections(conn, before).await)
        }
        Command::RemoveDevice { device, reply } => {
            outcome(reply, groups::remove_device(conn, device).await)
        }
        Command::CreateGroup {
            group_id,
            creator,
            now,
            reply,
        } => outcome(
            reply,
            groups::create_group(conn, group_id, creator, now).await,
        ),
        Command::Commit { commit, reply } => outcome(reply, groups::commit(conn, *commit).await),
        Command::AddKeyPackages {
            device,
            one_time,
            last_resort,
            max_one_time,
            reply,
        } => outcome(
            reply,
            groups::add_key_packages(conn, device, one_time, last_resort, max_one_time).await,
        ),
        Command::ClaimKeyPackages {
            account,
            requester,
            reply,
        } => outcome(
            reply,
            groups::claim_key_packages(conn, account, requester).await,
        ),
    }
}

impl Command {
    /// Answers with the batch's failure without running.
    fn fail(self, e: &Arc<sqlx::Error>) {
        self.into_settle()(Some(e));
    }

    /// An answer that only makes sense for a failed batch.
    fn into_settle(self) -> Settle {
        fn failed<T: Send + 'static>(reply: Reply<T>) -> Settle {
            settle(reply, Err(StoreError::Closed))
        }
        match self {
            Command::Ack { reply, .. } => failed(reply),
            Command::PurgeExpired { reply, .. } => failed(reply),
            Command::CreateAccount { reply, .. } => failed(reply),
            Command::SealLegacyPhone { reply, .. } => failed(reply),
            Command::AddDevice { reply, .. } => failed(reply),
            Command::SetUsername { reply, .. } => failed(reply),
            Command::CreateLinkToken { reply, .. } => failed(reply),
            Command::RedeemLinkToken { reply, .. } => failed(reply),
            Command::IssueCode { reply, .. } => failed(reply),
            Command::ConsumeCode { reply, .. } => failed(reply),
            Command::RecordFailedAttempt { reply, .. } => failed(reply),
            Command::PurgeCodes { reply, .. } => failed(reply),
            Command::SaveDistributorState { reply, .. } => failed(reply),
            Command::PutVault { reply, .. } => failed(reply),
            Command::AddConnection { reply, .. } => failed(reply),
            Command::PurgeConnections { reply, .. } => failed(reply),
            Command::RemoveDevice { reply, .. } => failed(reply),
            Command::CreateGroup { reply, .. } => failed(reply),
            Command::Commit { reply, .. } => failed(reply),
            Command::AddKeyPackages { reply, .. } => failed(reply),
            Command::ClaimKeyPackages { reply, .. } => failed(reply),
        }
    }
}

/// Marks an error as fatal: the command has no savepoint, so the whole
/// batch must roll back.
fn fatal(e: sqlx::Error) -> Failure {
    Failure::Fatal(e)
}

async fn ack(
    conn: &mut SqliteConnection,
    device: DeviceAddr,
    up_to_seq: u64,
) -> Result<(), Failure> {
    sqlx::query("DELETE FROM queue WHERE account_id = ? AND device_id = ? AND seq <= ?")
        .bind(&device.account.0[..])
        .bind(device.device)
        .bind(seq_param(up_to_seq))
        .execute(&mut *conn)
        .await
        .map_err(fatal)?;
    Ok(())
}

/// A row counts as expired from its `expires_at` on.
async fn purge_expired(conn: &mut SqliteConnection, now: Millis) -> Result<u64, Failure> {
    let queued = sqlx::query("DELETE FROM queue WHERE expires_at <= ?")
        .bind(now)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    sqlx::query("DELETE FROM sends WHERE expires_at <= ?")
        .bind(now)
        .execute(&mut *conn)
        .await?;
    sqlx::query("DELETE FROM welcome_trees WHERE expires_at <= ?")
        .bind(now)
        .execute(&mut *conn)
        .await?;
    Ok(queued)
}

async fn create_account(
    conn: &mut SqliteConnection,
    new: NewAccount,
    device: NewDevice,
    now: Millis,
) -> Result<(Account, Device), Failure> {
    let NewAccount {
        id,
        phone_key,
        country,
        username,
        vault,
    } = new;
    sqlx::query(
        "INSERT INTO accounts (id, phone_key, country, username, created_at) \
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&id.0[..])
    .bind(hex::encode(phone_key))
    .bind(&country)
    .bind(&username)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    if let Some(vault) = vault {
        put_vault(conn, vault).await?;
    }
    sqlx::query(
        "INSERT INTO devices (account_id, device_id, name, identity_key, noise_key, created_at) \
         VALUES (?, 1, ?, ?, ?, ?)",
    )
    .bind(&id.0[..])
    .bind(&device.name)
    .bind(&device.identity_key[..])
    .bind(&device.noise_key[..])
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let account = Account {
        id,
        country,
        username,
        created_at: now,
    };
    let device = Device {
        addr: DeviceAddr {
            account: id,
            device: 1,
        },
        name: device.name,
        identity_key: device.identity_key,
        noise_key: device.noise_key,
        created_at: now,
    };
    Ok((account, device))
}

async fn add_device(
    conn: &mut SqliteConnection,
    account: AccountId,
    device: NewDevice,
    now: Millis,
) -> Result<Device, Failure> {
    // The aggregate yields a row even for an account without devices; the
    // foreign key then turns a missing account into UnknownAccount.
    let number: u32 = sqlx::query_scalar(
        "INSERT INTO devices (account_id, device_id, name, identity_key, noise_key, created_at) \
         SELECT ?1, COALESCE(MAX(device_id), 0) + 1, ?2, ?3, ?4, ?5 \
         FROM devices WHERE account_id = ?1 \
         RETURNING device_id",
    )
    .bind(&account.0[..])
    .bind(&device.name)
    .bind(&device.identity_key[..])
    .bind(&device.noise_key[..])
    .bind(now)
    .fetch_one(&mut *conn)
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

async fn set_username(
    conn: &mut SqliteConnection,
    account: AccountId,
    username: Option<String>,
) -> Result<(), Failure> {
    let changed = sqlx::query("UPDATE accounts SET username = ? WHERE id = ?")
        .bind(&username)
        .bind(&account.0[..])
        .execute(&mut *conn)
        .await?
        .rows_affected();
    if changed == 0 {
        return Err(StoreError::UnknownAccount.into());
    }
    Ok(())
}

async fn create_link_token(
    conn: &mut SqliteConnection,
    account: AccountId,
    hash: [u8; 32],
    expires_at: Millis,
) -> Result<(), Failure> {
    sqlx::query("INSERT INTO link_tokens (hash, account_id, expires_at) VALUES (?, ?, ?)")
        .bind(&hash[..])
        .bind(&account.0[..])
        .bind(expires_at)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn redeem_link_token(
    conn: &mut SqliteConnection,
    hash: [u8; 32],
    now: Millis,
) -> Result<Option<AccountId>, Failure> {
    // An expired token is deleted all the same: it can never work again.
    let row =
        sqlx::query("DELETE FROM link_tokens WHERE hash = ? RETURNING account_id, expires_at")
            .bind(&hash[..])
            .fetch_optional(&mut *conn)
            .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let expires_at: Millis = row.try_get("expires_at")?;
    if expires_at <= now {
        return Ok(None);
    }
    Ok(Some(super::account_id(&row, "account_id")?))
}

async fn seal_legacy_phone(
    conn: &mut SqliteConnection,
    account: AccountId,
    phone_key: [u8; 32],
    country: String,
    vault: Option<VaultEntry>,
) -> Result<(), Failure> {
    let changed = sqlx::query(
        "UPDATE accounts SET phone_key = ?, country = ? WHERE id = ? AND phone_key LIKE '+%'",
    )
    .bind(hex::encode(phone_key))
    .bind(&country)
    .bind(&account.0[..])
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if changed == 0 {
        return Err(StoreError::UnknownAccount.into());
    }
    if let Some(vault) = vault {
        put_vault(conn, vault).await?;
    }
    Ok(())
}

async fn issue_code(
    conn: &mut SqliteConnection,
    phone_key: String,
    code_hash: [u8; 32],
    now: Millis,
    expires_at: Millis,
) -> Result<(), Failure> {
    sqlx::query(
        "INSERT INTO codes (phone_key, code_hash, issued_at, expires_at) VALUES (?, ?, ?, ?)",
    )
    .bind(&phone_key)
    .bind(&code_hash[..])
    .bind(now)
    .bind(expires_at)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn consume_code(conn: &mut SqliteConnection, id: i64, now: Millis) -> Result<bool, Failure> {
    let changed = sqlx::query("UPDATE codes SET used_at = ? WHERE id = ? AND used_at IS NULL")
        .bind(now)
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok(changed == 1)
}

async fn record_failed_attempt(conn: &mut SqliteConnection, id: i64) -> Result<u32, Failure> {
    let count: Option<u32> = sqlx::query_scalar(
        "UPDATE codes SET failed_attempts = failed_attempts + 1 WHERE id = ? \
         RETURNING failed_attempts",
    )
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(count.unwrap_or(0))
}

async fn purge_codes(conn: &mut SqliteConnection, before: Millis) -> Result<u64, Failure> {
    let deleted = sqlx::query("DELETE FROM codes WHERE expires_at < ?")
        .bind(before)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok(deleted)
}

async fn save_distributor_state(
    conn: &mut SqliteConnection,
    state: Bytes,
    now: Millis,
) -> Result<(), Failure> {
    sqlx::query(
        "INSERT INTO distributor_state (id, state, updated_at) VALUES (1, ?, ?) \
         ON CONFLICT (id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
    )
    .bind(&state[..])
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn put_vault(conn: &mut SqliteConnection, entry: VaultEntry) -> Result<(), Failure> {
    sqlx::query(
        "INSERT INTO vault_accounts (account_id, phone_index, public_key, sealed_phone, threshold) \
         VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&entry.account.0[..])
    .bind(&entry.phone_index[..])
    .bind(&entry.public_key[..])
    .bind(&entry.sealed_phone[..])
    .bind(i64::from(entry.threshold))
    .execute(&mut *conn)
    .await?;
    for (custodian, wrapped) in &entry.shares {
        sqlx::query("INSERT INTO vault_shares (account_id, custodian, wrapped) VALUES (?, ?, ?)")
            .bind(&entry.account.0[..])
            .bind(&custodian[..])
            .bind(&wrapped[..])
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

async fn add_connection(
    conn: &mut SqliteConnection,
    account: AccountId,
    at: Millis,
    sealed: Bytes,
) -> Result<(), Failure> {
    sqlx::query("INSERT INTO vault_connections (account_id, at, sealed) VALUES (?, ?, ?)")
        .bind(&account.0[..])
        .bind(at)
        .bind(&sealed[..])
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn purge_connections(conn: &mut SqliteConnection, before: Millis) -> Result<u64, Failure> {
    let deleted = sqlx::query("DELETE FROM vault_connections WHERE at < ?")
        .bind(before)
        .execute(&mut *conn)
        .await?
        .rows_affected();
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::sqlite::SqliteConnectOptions;

    async fn connection(dir: &tempfile::TempDir) -> SqliteConnection {
        let opts = SqliteConnectOptions::new()
            .filename(dir.path().join("t.db"))
            .create_if_missing(true);
        let mut conn = SqliteConnection::connect_with(&opts).await.unwrap();
        super::super::MIGRATOR.run(&mut conn).await.unwrap();
        conn
    }

    fn issue(phone_key: &str) -> impl FnOnce(Reply<()>) -> Command {
        let phone_key = phone_key.to_owned();
        move |reply| Command::IssueCode {
            phone_key,
            code_hash: [0; 32],
            now: 0,
            expires_at: 1,
            reply,
        }
    }

    /// A database error in one command fails every call of its batch, and
    /// nothing of the batch is committed — including the calls before it.
    #[tokio::test]
    async fn a_database_error_fails_the_whole_batch() {
        let dir = tempfile::TempDir::new().unwrap();
        let mut conn = connection(&dir).await;
        // Break the message path only.
        sqlx::query("DROP TABLE queue")
            .execute(&mut conn)
            .await
            .unwrap();
        let writer = Writer::spawn_local(conn, 16);
        let recipient = AccountId([1; 16]);
        let msg = NewMessage {
            sender: DeviceAddr {
                account: recipient,
                device: 1,
            },
            client_message_id: [0; 16],
            to: recipient.into(),
            group_id: None,
            group_epoch: None,
            payload: bytes::Bytes::new(),
            received_at: 0,
            expires_at: 1,
        };
        let account = |reply| Command::CreateAccount {
            account: Box::new(NewAccount {
                id: recipient,
                phone_key: [1; 32],
                country: "ZZ".into(),
                username: None,
                vault: None,
            }),
            device: NewDevice {
                name: String::new(),
                identity_key: [0; 32],
                noise_key: [0; 32],
            },
            now: 0,
            reply,
        };
        // The writer task cannot run before all five are queued (this test
        // runtime has one thread and the writer runs on it), so they form
        // one batch.
        let (before, created, failed, after, later) = tokio::join!(
            writer.call(issue("+2")),
            writer.call(account),
            writer.enqueue(msg),
            writer.call(issue("+3")),
            async {
                tokio::task::yield_now().await;
                writer.call(issue("+4")).await
            },
        );
        for result in [before, after] {
            assert!(matches!(result, Err(StoreError::Database(_))), "{result:?}");
        }
        assert!(
            matches!(created, Err(StoreError::Database(_))),
            "{created:?}"
        );
        assert!(matches!(failed, Err(StoreError::Database(_))), "{failed:?}");
        later.unwrap();
        assert_eq!(
            writer.stats(),
            WriterStats {
                batches: 2,
                commands: 5
            }
        );
        writer.close().await;

        let mut conn = connection(&dir).await;
        let phones: Vec<String> = sqlx::query_scalar("SELECT phone_key FROM codes")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert_eq!(phones, ["+4"]);
        let accounts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(accounts, 0);
    }
}
