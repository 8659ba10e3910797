//! The client home: one SQLite file (`client.db`, mode 0600) holding the
//! device's keys, the server link, known contacts and their identity keys,
//! the MLS state of every conversation (openmls_sqlite_storage's tables),
//! the timeline of messages and events, and sends not yet accepted by the
//! server.
//!
//! The home holds the device's secret keys and every decrypted message: it
//! must stay private to the member, and nothing here logs its contents.
//!
//! MLS state changes and what the home records about them share one
//! SQLite transaction ([`Home::begin`] / [`Home::commit`]), so a crash never
//! leaves a message decrypted (its key ratcheted away) but not stored.

use std::path::{Path, PathBuf};

use postern_proto::ids::{AccountId, DeviceAddr};
use rusqlite::{Connection, OptionalExtension, params};

use crate::ClientError;

/// The home layout this code reads and writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 4;

/// Layouts [`SCHEMA`] upgrades in place (its tables are all `IF NOT
/// EXISTS`): 2 lacks `routes` and `relays`, 3 lacks `relays`.
const UPGRADABLE: &[i64] = &[2, 3];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
-- Accounts this device has talked to, and what it calls them.
CREATE TABLE IF NOT EXISTS contacts (
    account_id BLOB PRIMARY KEY,
    phone      TEXT,
    username   TEXT
);
CREATE INDEX IF NOT EXISTS contacts_phone ON contacts (phone);
CREATE INDEX IF NOT EXISTS contacts_username ON contacts (username);
-- The identity keys the server's directory listed for each contact's
-- devices when last asked; a difference is a safety-number change.
CREATE TABLE IF NOT EXISTS contact_keys (
    account_id   BLOB NOT NULL,
    device_id    INTEGER NOT NULL,
    identity_key BLOB NOT NULL,
    PRIMARY KEY (account_id, device_id)
);
-- Safety numbers the member compared and confirmed.
CREATE TABLE IF NOT EXISTS verified (
    account_id    BLOB PRIMARY KEY,
    safety_number TEXT NOT NULL,
    verified_at   INTEGER NOT NULL
);
-- Conversations: one MLS group each.
CREATE TABLE IF NOT EXISTS conversations (
    group_id     BLOB PRIMARY KEY,
    kind         TEXT NOT NULL,            -- 'direct' or 'group'
    name         TEXT NOT NULL,            -- a group's name; '' for direct chats
    peer_account BLOB,                     -- the other member of a direct chat
    state        TEXT NOT NULL DEFAULT 'active',
    created_at   INTEGER NOT NULL
);
-- Messages and membership events, in the order this device learnt them.
CREATE TABLE IF NOT EXISTS timeline (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id       BLOB NOT NULL,
    sender_account BLOB,
    sender_device  INTEGER,
    message_id     BLOB,
    kind           TEXT NOT NULL,           -- 'message', 'system', 'own' (sent here) or 'note' (done here)
    body           TEXT NOT NULL,           -- what to show
    content        BLOB,                    -- the decoded Content, for messages
    sent_at        INTEGER NOT NULL,
    received_at    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS timeline_group ON timeline (group_id, id);
-- Messages not yet accepted by the server: plaintext content, encrypted
-- afresh for the group's current epoch at each attempt; retried with the
-- same id, so the server stores them once.
CREATE TABLE IF NOT EXISTS outbox (
    client_message_id BLOB PRIMARY KEY,
    group_id          BLOB NOT NULL,
    content           BLOB NOT NULL,
    created_at        INTEGER NOT NULL
);
-- Commits this device sent whose fate it has not learnt (the request, so
-- that it can be repeated with the same id after a crash).
CREATE TABLE IF NOT EXISTS pending_commits (
    group_id BLOB PRIMARY KEY,
    request  BLOB NOT NULL
);
-- The connectivity manager's memory of each route (carrier://endpoint):
-- consecutive failures, the last failure's class, when to try it again,
-- and whether the server has heard about its failure yet.
CREATE TABLE IF NOT EXISTS routes (
    route        TEXT PRIMARY KEY,
    failures     INTEGER NOT NULL DEFAULT 0,
    last_failure TEXT,
    freeze_after INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    last_ok_ms   INTEGER,
    last_fail_ms INTEGER,
    next_try_ms  INTEGER NOT NULL DEFAULT 0,
    reported     INTEGER NOT NULL DEFAULT 1
);
-- Relays this member can use: added by hand from a relay link, or
-- assigned by the server's distributor. The link holds the relay secret.
CREATE TABLE IF NOT EXISTS relays (
    host     TEXT PRIMARY KEY,
    link     TEXT NOT NULL,
    source   TEXT NOT NULL,
    added_ms INTEGER NOT NULL
);
";

/// A relay the home holds.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredRelay {
    /// The relay link.
    pub link: postern_proto::link::RelayLink,
    /// `manual` (added with `relay add`) or `assigned` (from the server).
    pub source: String,
    /// When it was added, ms since the epoch.
    pub added_ms: i64,
}

impl std::fmt::Debug for StoredRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredRelay")
            .field("link", &self.link)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// What the home remembers about one route.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteHealth {
    /// `carrier://endpoint`.
    pub route: String,
    /// Failures since the last success.
    pub failures: u32,
    /// The last failure's class ([`postern_transport::carrier::Failure::name`]).
    pub last_failure: Option<String>,
    /// For a freeze: bytes read before it.
    pub freeze_after: u64,
    /// The last failure's message.
    pub last_error: Option<String>,
    /// When it last worked (ms since the epoch).
    pub last_ok_ms: Option<i64>,
    /// When it last failed.
    pub last_fail_ms: Option<i64>,
    /// Not tried before this time unless nothing else is left.
    pub next_try_ms: i64,
    /// False while a failure waits to be reported to the server.
    pub reported: bool,
}

/// A conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation {
    /// Its MLS group id.
    pub group_id: Vec<u8>,
    /// Direct chat or named group.
    pub kind: ConversationKind,
    /// The group's name; empty for a direct chat.
    pub name: String,
    /// The other member of a direct chat.
    pub peer: Option<AccountId>,
    /// `active`, `left`, `removed` or `broken` (a member credential failed
    /// its check; the conversation is frozen).
    pub state: String,
}

/// What kind of conversation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConversationKind {
    /// Two members, all their devices.
    Direct,
    /// A named group.
    Group,
}

impl ConversationKind {
    fn as_str(self) -> &'static str {
        match self {
            ConversationKind::Direct => "direct",
            ConversationKind::Group => "group",
        }
    }
}

/// One entry of a conversation's timeline.
#[derive(Clone, Debug)]
pub struct TimelineItem {
    /// Position in the home's timeline.
    pub id: i64,
    /// The conversation.
    pub group_id: Vec<u8>,
    /// Who sent it (none for events this device noted by itself).
    pub sender: Option<DeviceAddr>,
    /// The sender's message id.
    pub message_id: Option<[u8; 16]>,
    /// True for membership changes, warnings and notes rather than
    /// messages.
    pub system: bool,
    /// What to show.
    pub body: String,
    /// The decoded content of a message.
    pub content: Option<Vec<u8>>,
    /// Sender's clock (or this device's, for events).
    pub sent_at: i64,
    /// When this device learnt of it.
    pub received_at: i64,
}

/// A timeline entry to add.
#[derive(Clone, Debug)]
pub struct NewItem {
    /// The conversation.
    pub group_id: Vec<u8>,
    /// Who sent it.
    pub sender: Option<DeviceAddr>,
    /// The sender's message id.
    pub message_id: Option<[u8; 16]>,
    /// `message`, `system`, `own` (a message sent here) or `note` (an
    /// action taken here).
    pub kind: &'static str,
    /// What to show.
    pub body: String,
    /// The decoded content of a message.
    pub content: Option<Vec<u8>>,
    /// Sender's clock.
    pub sent_at: i64,
    /// When this device learnt of it.
    pub received_at: i64,
}

const ITEM_COLUMNS: &str = "id, group_id, sender_account, sender_device, message_id, kind, body, \
                            content, sent_at, received_at";

fn item_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TimelineItem> {
    let account: Option<Vec<u8>> = r.get(2)?;
    let device: Option<u32> = r.get(3)?;
    let message_id: Option<Vec<u8>> = r.get(4)?;
    let kind: String = r.get(5)?;
    Ok(TimelineItem {
        id: r.get(0)?,
        group_id: r.get(1)?,
        sender: match (account.and_then(|a| AccountId::from_slice(&a)), device) {
            (Some(account), Some(device)) => Some(DeviceAddr { account, device }),
            _ => None,
        },
        message_id: message_id.and_then(|m| m[..].try_into().ok()),
        system: kind == "system" || kind == "note",
        body: r.get(6)?,
        content: r.get(7)?,
        sent_at: r.get(8)?,
        received_at: r.get(9)?,
    })
}

/// A send not yet accepted.
#[derive(Clone, Debug)]
pub struct PendingSend {
    /// The id the server dedupes on.
    pub client_message_id: [u8; 16],
    /// The conversation.
    pub group_id: Vec<u8>,
    /// Encoded content (plaintext; encrypted when sent).
    pub content: Vec<u8>,
}

/// The local database.
pub struct Home {
    path: PathBuf,
    pub(crate) db: Connection,
}

impl Home {
    /// Opens (creating if `create`) the home database in `dir`.
    pub fn open(dir: &Path, create: bool) -> Result<Home, ClientError> {
        let path = dir.join("client.db");
        if !create && !path.exists() {
            return Err(ClientError::NotSetUp(dir.to_owned()));
        }
        if create {
            std::fs::create_dir_all(dir)
                .map_err(|e| ClientError::Home(dir.to_owned(), e.to_string()))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
            }
        }
        let mut db =
            Connection::open(&path).map_err(|e| ClientError::Home(path.clone(), e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version != SCHEMA_VERSION && !UPGRADABLE.contains(&version) {
            let tables: i64 =
                db.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
            if tables > 0 {
                return Err(ClientError::Home(
                    path,
                    format!(
                        "this home has layout {version}, this Postern needs {SCHEMA_VERSION} \
                         (homes made before end-to-end encryption cannot be upgraded); \
                         set up a new home"
                    ),
                ));
            }
        }
        db.execute_batch(SCHEMA)?;
        db.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        crate::mls::migrate(&mut db).map_err(|e| ClientError::Home(path.clone(), e.to_string()))?;
        Ok(Home { path, db })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The SQLite connection (MLS storage lives on it too); for tools and
    /// tests that drive [`crate::mls`] themselves.
    pub fn connection(&self) -> &Connection {
        &self.db
    }

    /// Starts a transaction that MLS state changes join; nested calls make
    /// nested savepoints, each ended by [`Home::commit`] or
    /// [`Home::rollback`].
    pub fn begin(&self) -> Result<(), ClientError> {
        self.db.execute_batch("SAVEPOINT home")?;
        Ok(())
    }

    /// Ends the innermost [`Home::begin`], keeping its changes (durably, if
    /// it was the outermost).
    pub fn commit(&self) -> Result<(), ClientError> {
        self.db.execute_batch("RELEASE home")?;
        Ok(())
    }

    /// Ends the innermost [`Home::begin`], undoing its changes.
    pub fn rollback(&self) {
        if !self.db.is_autocommit() {
            let _ = self.db.execute_batch("ROLLBACK TO home; RELEASE home");
        }
    }

    /// A setting's raw value.
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, ClientError> {
        Ok(self
            .db
            .query_row("SELECT value FROM settings WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// Sets a setting.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), ClientError> {
        self.db.execute(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Every route the home remembers.
    pub fn routes(&self) -> Result<Vec<RouteHealth>, ClientError> {
        let mut stmt = self.db.prepare(
            "SELECT route, failures, last_failure, freeze_after, last_error, last_ok_ms,
                    last_fail_ms, next_try_ms, reported
             FROM routes ORDER BY route",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(RouteHealth {
                route: r.get(0)?,
                failures: r.get(1)?,
                last_failure: r.get(2)?,
                freeze_after: r.get::<_, i64>(3)?.try_into().unwrap_or(0),
                last_error: r.get(4)?,
                last_ok_ms: r.get(5)?,
                last_fail_ms: r.get(6)?,
                next_try_ms: r.get(7)?,
                reported: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records that `route` carried an authenticated session at `now`.
    pub fn route_worked(&self, route: &str, now: i64) -> Result<(), ClientError> {
        self.db.execute(
            "INSERT INTO routes (route, last_ok_ms) VALUES (?1, ?2)
             ON CONFLICT (route) DO UPDATE SET
               failures = 0, next_try_ms = 0, last_ok_ms = excluded.last_ok_ms",
            params![route, now],
        )?;
        Ok(())
    }

    /// Records a failure of `route` at `now`; it is not tried again before
    /// `next_try` unless nothing else is left.
    pub fn route_failed(
        &self,
        route: &str,
        class: &str,
        freeze_after: u64,
        error: &str,
        now: i64,
        next_try: i64,
    ) -> Result<(), ClientError> {
        self.db.execute(
            "INSERT INTO routes (route, failures, last_failure, freeze_after, last_error,
                                 last_fail_ms, next_try_ms, reported)
             VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6, 0)
             ON CONFLICT (route) DO UPDATE SET
               failures = routes.failures + 1, last_failure = excluded.last_failure,
               freeze_after = excluded.freeze_after, last_error = excluded.last_error,
               last_fail_ms = excluded.last_fail_ms, next_try_ms = excluded.next_try_ms,
               reported = 0",
            params![
                route,
                class,
                i64::try_from(freeze_after).unwrap_or(i64::MAX),
                error,
                now,
                next_try
            ],
        )?;
        Ok(())
    }

    /// Forgets what the home knows about every route (as a fresh install
    /// would).
    pub fn forget_routes(&self) -> Result<(), ClientError> {
        self.db.execute("DELETE FROM routes", [])?;
        self.db
            .execute("DELETE FROM settings WHERE key = 'route_in_use'", [])?;
        Ok(())
    }

    /// Adds (or replaces, by host) a relay.
    pub fn add_relay(
        &self,
        link: &postern_proto::link::RelayLink,
        source: &str,
        now: i64,
    ) -> Result<(), ClientError> {
        self.db.execute(
            "INSERT INTO relays (host, link, source, added_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (host) DO UPDATE SET link = excluded.link, source = excluded.source",
            params![link.host, link.to_string(), source, now],
        )?;
        Ok(())
    }

    /// The relays held, oldest first. Rows that no longer parse are skipped.
    pub fn relays(&self) -> Result<Vec<StoredRelay>, ClientError> {
        let mut stmt = self
            .db
            .prepare("SELECT link, source, added_ms FROM relays ORDER BY added_ms, host")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (link, source, added_ms) = row?;
            if let Ok(link) = link.parse() {
                out.push(StoredRelay {
                    link,
                    source,
                    added_ms,
                });
            }
        }
        Ok(out)
    }

    /// Removes relays whose host, name or link is `which`; returns how
    /// many. `source` limits it to one source (`assigned` relays the
    /// server no longer gives are dropped this way).
    pub fn remove_relay(&self, which: &str, source: Option<&str>) -> Result<usize, ClientError> {
        let mut n = 0;
        for r in self.relays()? {
            let matches = r.link.host == which
                || r.link.name.as_deref() == Some(which)
                || r.link.to_string() == which.trim();
            if matches && source.is_none_or(|s| s == r.source) {
                n += self
                    .db
                    .execute("DELETE FROM relays WHERE host = ?1", [&r.link.host])?;
            }
        }
        Ok(n)
    }

    /// Marks the failures of `routes` as reported to the server.
    pub fn routes_reported(&self, routes: &[String]) -> Result<(), ClientError> {
        for route in routes {
            self.db
                .execute("UPDATE routes SET reported = 1 WHERE route = ?1", [route])?;
        }
        Ok(())
    }

    /// A text setting.
    pub fn get_text(&self, key: &str) -> Result<Option<String>, ClientError> {
        Ok(self
            .get(key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records what this device knows about an account.
    pub fn remember_contact(
        &self,
        account: AccountId,
        phone: Option<&str>,
        username: Option<&str>,
    ) -> Result<(), ClientError> {
        self.db.execute(
            "INSERT INTO contacts (account_id, phone, username) VALUES (?1, ?2, ?3)
             ON CONFLICT (account_id) DO UPDATE SET
               phone = coalesce(excluded.phone, contacts.phone),
               username = coalesce(excluded.username, contacts.username)",
            params![&account.0[..], phone, username],
        )?;
        Ok(())
    }

    /// The account known by this phone number.
    pub fn contact_by_phone(&self, phone: &str) -> Result<Option<AccountId>, ClientError> {
        self.contact_where("phone", phone)
    }

    /// The account known by this username.
    pub fn contact_by_username(&self, username: &str) -> Result<Option<AccountId>, ClientError> {
        self.contact_where("username", username)
    }

    fn contact_where(&self, column: &str, value: &str) -> Result<Option<AccountId>, ClientError> {
        let sql = format!("SELECT account_id FROM contacts WHERE {column} = ?1");
        let id: Option<Vec<u8>> = self.db.query_row(&sql, [value], |r| r.get(0)).optional()?;
        Ok(id.and_then(|id| AccountId::from_slice(&id)))
    }

    /// What this device calls an account: `@username`, else its phone number.
    pub fn contact_name(&self, account: AccountId) -> Result<Option<String>, ClientError> {
        let row: Option<(Option<String>, Option<String>)> = self
            .db
            .query_row(
                "SELECT username, phone FROM contacts WHERE account_id = ?1",
                [&account.0[..]],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(row.and_then(|(u, p)| u.filter(|u| !u.is_empty()).map(|u| format!("@{u}")).or(p)))
    }

    /// The identity keys recorded for a contact's devices.
    pub fn contact_keys(&self, account: AccountId) -> Result<Vec<(u32, [u8; 32])>, ClientError> {
        let mut stmt = self.db.prepare_cached(
            "SELECT device_id, identity_key FROM contact_keys WHERE account_id = ?1 ORDER BY device_id",
        )?;
        let rows = stmt.query_map([&account.0[..]], |r| {
            Ok((r.get::<_, u32>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (device, key) = row?;
            if let Ok(key) = <[u8; 32]>::try_from(&key[..]) {
                out.push((device, key));
            }
        }
        Ok(out)
    }

    /// Replaces the identity keys recorded for a contact's devices.
    pub fn set_contact_keys(
        &self,
        account: AccountId,
        keys: &[(u32, [u8; 32])],
    ) -> Result<(), ClientError> {
        self.db.execute(
            "DELETE FROM contact_keys WHERE account_id = ?1",
            [&account.0[..]],
        )?;
        for (device, key) in keys {
            self.db.execute(
                "INSERT INTO contact_keys (account_id, device_id, identity_key) VALUES (?1, ?2, ?3)",
                params![&account.0[..], device, &key[..]],
            )?;
        }
        Ok(())
    }

    /// The safety number the member confirmed for a contact, if any.
    pub fn verified(&self, account: AccountId) -> Result<Option<(String, i64)>, ClientError> {
        Ok(self
            .db
            .query_row(
                "SELECT safety_number, verified_at FROM verified WHERE account_id = ?1",
                [&account.0[..]],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    /// Records that the member confirmed `number` for a contact.
    pub fn set_verified(
        &self,
        account: AccountId,
        number: &str,
        now: i64,
    ) -> Result<(), ClientError> {
        self.db.execute(
            "INSERT INTO verified (account_id, safety_number, verified_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (account_id) DO UPDATE SET
               safety_number = excluded.safety_number, verified_at = excluded.verified_at",
            params![&account.0[..], number, now],
        )?;
        Ok(())
    }

    /// Records a conversation (or updates its name and state).
    pub fn add_conversation(&self, c: &Conversation, now: i64) -> Result<(), ClientError> {
        self.db.execute(
            "INSERT INTO conversations (group_id, kind, name, peer_account, state, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (group_id) DO UPDATE SET name = excluded.name, state = excluded.state",
            params![
                c.group_id,
                c.kind.as_str(),
                c.name,
                c.peer.map(|p| p.0.to_vec()),
                c.state,
                now
            ],
        )?;
        Ok(())
    }

    /// Sets a conversation's state.
    pub fn set_conversation_state(&self, group_id: &[u8], state: &str) -> Result<(), ClientError> {
        self.db.execute(
            "UPDATE conversations SET state = ?2 WHERE group_id = ?1",
            params![group_id, state],
        )?;
        Ok(())
    }

    fn conversations_where(
        &self,
        filter: &str,
        value: &dyn rusqlite::ToSql,
    ) -> Result<Vec<Conversation>, ClientError> {
        let sql = format!(
            "SELECT group_id, kind, name, peer_account, state FROM conversations
             WHERE {filter} ORDER BY created_at, group_id"
        );
        let mut stmt = self.db.prepare(&sql)?;
        let rows = stmt.query_map([value], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<Vec<u8>>>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (group_id, kind, name, peer, state) = row?;
            out.push(Conversation {
                group_id,
                kind: if kind == "direct" {
                    ConversationKind::Direct
                } else {
                    ConversationKind::Group
                },
                name,
                peer: peer.and_then(|p| AccountId::from_slice(&p)),
                state,
            });
        }
        Ok(out)
    }

    /// Every conversation, oldest first.
    pub fn conversations(&self) -> Result<Vec<Conversation>, ClientError> {
        self.conversations_where("?1", &1)
    }

    /// The conversation with this group id.
    pub fn conversation(&self, group_id: &[u8]) -> Result<Option<Conversation>, ClientError> {
        Ok(self
            .conversations_where("group_id = ?1", &group_id)?
            .into_iter()
            .next())
    }

    /// Active conversations of a group name.
    pub fn conversations_named(&self, name: &str) -> Result<Vec<Conversation>, ClientError> {
        Ok(self
            .conversations_where("kind = 'group' AND name = ?1", &name)?
            .into_iter()
            .filter(|c| c.state == "active")
            .collect())
    }

    /// The direct chat with `peer` to send in: of several (both members
    /// may have started one at once), the one with the smallest group id,
    /// which both sides pick.
    pub fn direct_with(&self, peer: AccountId) -> Result<Option<Conversation>, ClientError> {
        let mut found: Vec<Conversation> = self
            .conversations_where("kind = 'direct' AND peer_account = ?1", &&peer.0[..])?
            .into_iter()
            .filter(|c| c.state == "active")
            .collect();
        found.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        Ok(found.into_iter().next())
    }

    /// Appends timeline entries; returns them with their ids.
    pub fn add_items(&self, items: Vec<NewItem>) -> Result<Vec<TimelineItem>, ClientError> {
        let mut out = Vec::with_capacity(items.len());
        let mut insert = self.db.prepare_cached(
            "INSERT INTO timeline (group_id, sender_account, sender_device, message_id, kind, body,
                                   content, sent_at, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for item in items {
            insert.execute(params![
                item.group_id,
                item.sender.map(|s| s.account.0.to_vec()),
                item.sender.map(|s| s.device),
                item.message_id.map(|m| m.to_vec()),
                item.kind,
                item.body,
                item.content,
                item.sent_at,
                item.received_at,
            ])?;
            out.push(TimelineItem {
                id: self.db.last_insert_rowid(),
                group_id: item.group_id,
                sender: item.sender,
                message_id: item.message_id,
                system: item.kind == "system",
                body: item.body,
                content: item.content,
                sent_at: item.sent_at,
                received_at: item.received_at,
            });
        }
        Ok(out)
    }

    /// The last `limit` entries of a conversation, oldest first.
    pub fn timeline(
        &self,
        group_id: &[u8],
        limit: usize,
    ) -> Result<Vec<TimelineItem>, ClientError> {
        let mut stmt = self.db.prepare(&format!(
            "SELECT {ITEM_COLUMNS} FROM timeline WHERE group_id = ?1 ORDER BY id DESC LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![group_id, limit as i64], item_from_row)?;
        let mut out: Vec<TimelineItem> = rows.collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    /// The oldest timeline entry `recv` has not shown: messages and events
    /// from others, not this device's own sends and notes.
    pub fn next_unshown(&self) -> Result<Option<TimelineItem>, ClientError> {
        let shown: i64 = self
            .get_text("shown_up_to")?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok(self
            .db
            .query_row(
                &format!(
                    "SELECT {ITEM_COLUMNS} FROM timeline \
                     WHERE id > ?1 AND kind IN ('message', 'system') ORDER BY id LIMIT 1"
                ),
                [shown],
                item_from_row,
            )
            .optional()?)
    }

    /// Records that `recv` showed everything up to timeline entry `id`.
    pub fn mark_shown(&self, id: i64) -> Result<(), ClientError> {
        self.set("shown_up_to", id.to_string().as_bytes())
    }

    /// The server sequence number of the last queued message processed.
    pub fn last_seq(&self) -> Result<u64, ClientError> {
        Ok(self
            .get_text("last_seq")?
            .and_then(|s| s.parse().ok())
            .unwrap_or(0))
    }

    /// Records that everything up to `seq` is processed.
    pub fn set_last_seq(&self, seq: u64) -> Result<(), ClientError> {
        self.set("last_seq", seq.to_string().as_bytes())
    }

    /// Adds a send to the outbox.
    pub fn outbox_add(&self, p: &PendingSend, now: i64) -> Result<(), ClientError> {
        self.db.execute(
            "INSERT OR IGNORE INTO outbox (client_message_id, group_id, content, created_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![&p.client_message_id[..], p.group_id, p.content, now],
        )?;
        Ok(())
    }

    /// Removes an accepted send.
    pub fn outbox_remove(&self, id: &[u8; 16]) -> Result<(), ClientError> {
        self.db
            .execute("DELETE FROM outbox WHERE client_message_id = ?1", [&id[..]])?;
        Ok(())
    }

    /// Every send not yet accepted, oldest first.
    pub fn outbox(&self) -> Result<Vec<PendingSend>, ClientError> {
        let mut stmt = self.db.prepare(
            "SELECT client_message_id, group_id, content FROM outbox ORDER BY created_at, rowid",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, group_id, content) = row?;
            let Ok(client_message_id) = id[..].try_into() else {
                continue;
            };
            out.push(PendingSend {
                client_message_id,
                group_id,
                content,
            });
        }
        Ok(out)
    }

    /// Records a commit request whose outcome is not known yet.
    pub fn set_pending_commit(&self, group_id: &[u8], request: &[u8]) -> Result<(), ClientError> {
        self.db.execute(
            "INSERT INTO pending_commits (group_id, request) VALUES (?1, ?2)
             ON CONFLICT (group_id) DO UPDATE SET request = excluded.request",
            params![group_id, request],
        )?;
        Ok(())
    }

    /// Forgets a commit request whose outcome is known.
    pub fn clear_pending_commit(&self, group_id: &[u8]) -> Result<(), ClientError> {
        self.db.execute(
            "DELETE FROM pending_commits WHERE group_id = ?1",
            [group_id],
        )?;
        Ok(())
    }

    /// Commit requests whose outcome is not known, as (group id, request).
    #[allow(clippy::type_complexity)]
    pub fn pending_commits(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, ClientError> {
        let mut stmt = self
            .db
            .prepare("SELECT group_id, request FROM pending_commits")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outbox_keeps_order_and_ids_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let home = Home::open(dir.path(), true).unwrap();
            for i in 0..3u8 {
                let p = PendingSend {
                    client_message_id: [i; 16],
                    group_id: vec![9],
                    content: vec![i],
                };
                home.outbox_add(&p, 10).unwrap();
            }
            home.outbox_remove(&[1; 16]).unwrap();
        }
        let home = Home::open(dir.path(), false).unwrap();
        let ids: Vec<u8> = home
            .outbox()
            .unwrap()
            .iter()
            .map(|p| p.client_message_id[0])
            .collect();
        assert_eq!(ids, vec![0, 2]);
    }

    #[test]
    fn a_rolled_back_transaction_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(dir.path(), true).unwrap();
        home.begin().unwrap();
        home.set_last_seq(7).unwrap();
        home.rollback();
        assert_eq!(home.last_seq().unwrap(), 0);
        // Nested: the inner rollback undoes only the inner part.
        home.begin().unwrap();
        home.set("outer", b"1").unwrap();
        home.begin().unwrap();
        home.set("inner", b"1").unwrap();
        home.rollback();
        home.commit().unwrap();
        assert!(home.get("outer").unwrap().is_some());
        assert!(home.get("inner").unwrap().is_none());
        home.begin().unwrap();
        home.set_last_seq(8).unwrap();
        home.commit().unwrap();
        assert_eq!(home.last_seq().unwrap(), 8);
    }

    #[test]
    fn both_sides_pick_the_same_direct_chat() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(dir.path(), true).unwrap();
        let peer = AccountId([5; 16]);
        for id in [[3u8; 16], [1; 16], [2; 16]] {
            home.add_conversation(
                &Conversation {
                    group_id: id.to_vec(),
                    kind: ConversationKind::Direct,
                    name: String::new(),
                    peer: Some(peer),
                    state: "active".into(),
                },
                1,
            )
            .unwrap();
        }
        assert_eq!(
            home.direct_with(peer).unwrap().unwrap().group_id,
            vec![1; 16]
        );
        home.set_conversation_state(&[1; 16], "left").unwrap();
        assert_eq!(
            home.direct_with(peer).unwrap().unwrap().group_id,
            vec![2; 16]
        );
    }

    #[test]
    fn contacts_name_senders_by_username_then_phone() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(dir.path(), true).unwrap();
        let a = AccountId([3; 16]);
        assert_eq!(home.contact_name(a).unwrap(), None);
        home.remember_contact(a, Some("+14155552671"), None)
            .unwrap();
        assert_eq!(
            home.contact_name(a).unwrap().as_deref(),
            Some("+14155552671")
        );
        home.remember_contact(a, None, Some("alice")).unwrap();
        assert_eq!(home.contact_name(a).unwrap().as_deref(), Some("@alice"));
        assert_eq!(home.contact_by_phone("+14155552671").unwrap(), Some(a));
    }

    #[test]
    fn opening_a_missing_home_says_how_to_set_up() {
        let dir = tempfile::tempdir().unwrap();
        let err = Home::open(&dir.path().join("nope"), false).err().unwrap();
        assert!(err.to_string().contains("setup"), "{err}");
    }

    #[test]
    fn a_home_of_another_layout_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        let db = Connection::open(dir.path().join("client.db")).unwrap();
        db.execute_batch("CREATE TABLE messages (seq INTEGER PRIMARY KEY)")
            .unwrap();
        drop(db);
        let err = Home::open(dir.path(), false).err().unwrap();
        assert!(err.to_string().contains("set up a new home"), "{err}");
    }
}
