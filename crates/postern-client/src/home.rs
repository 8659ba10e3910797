//! The client home: one SQLite file (`client.db`, mode 0600) holding the
//! device's keys, the server link, known contacts, received messages and
//! sends not yet confirmed by the server.
//!
//! The home holds the device's secret keys: it must stay private to the
//! member, and nothing here logs its contents.

use std::path::{Path, PathBuf};

use postern_proto::ids::{AccountId, DeviceAddr};
use rusqlite::{Connection, OptionalExtension, params};

use crate::ClientError;

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
-- Every message received, by the server's per-device sequence number.
CREATE TABLE IF NOT EXISTS messages (
    seq               INTEGER PRIMARY KEY,
    sender_account    BLOB NOT NULL,
    sender_device     INTEGER NOT NULL,
    client_message_id BLOB NOT NULL,
    sent_at           INTEGER NOT NULL,
    received_at       INTEGER NOT NULL,
    text              TEXT NOT NULL
);
-- Sends the server has not confirmed yet; retried with the same id.
CREATE TABLE IF NOT EXISTS outbox (
    client_message_id BLOB PRIMARY KEY,
    to_account        BLOB NOT NULL,
    payload           BLOB NOT NULL,
    created_at        INTEGER NOT NULL
);
";

/// A message as stored in the home.
#[derive(Clone, Debug)]
pub struct StoredMessage {
    /// Server sequence number.
    pub seq: u64,
    /// Sending device.
    pub sender: DeviceAddr,
    /// Sender's message id.
    pub client_message_id: [u8; 16],
    /// Sender's clock, ms since the Unix epoch.
    pub sent_at: i64,
    /// Server's clock at acceptance.
    pub received_at: i64,
    /// The text.
    pub text: String,
}

/// An unconfirmed send.
#[derive(Clone, Debug)]
pub struct PendingSend {
    /// The id the server dedupes on.
    pub client_message_id: [u8; 16],
    /// Recipient account.
    pub to: AccountId,
    /// Encoded content.
    pub payload: Vec<u8>,
}

/// The local database.
pub struct Home {
    path: PathBuf,
    db: Connection,
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
        let db =
            Connection::open(&path).map_err(|e| ClientError::Home(path.clone(), e.to_string()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.execute_batch(SCHEMA)?;
        Ok(Home { path, db })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
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

    /// Stores received messages with a seq above the last stored one, in one
    /// transaction; returns those that were new.
    pub fn store_received(
        &mut self,
        batch: Vec<StoredMessage>,
    ) -> Result<Vec<StoredMessage>, ClientError> {
        let tx = self.db.transaction()?;
        let mut fresh = Vec::with_capacity(batch.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO messages
                 (seq, sender_account, sender_device, client_message_id, sent_at, received_at, text)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for m in batch {
                let seq =
                    i64::try_from(m.seq).map_err(|_| ClientError::Protocol("seq out of range"))?;
                let n = insert.execute(params![
                    seq,
                    &m.sender.account.0[..],
                    m.sender.device,
                    &m.client_message_id[..],
                    m.sent_at,
                    m.received_at,
                    m.text,
                ])?;
                if n == 1 {
                    fresh.push(m);
                }
            }
        }
        tx.commit()?;
        Ok(fresh)
    }

    /// The highest seq stored, 0 if none.
    pub fn last_seq(&self) -> Result<u64, ClientError> {
        let seq: Option<i64> = self
            .db
            .query_row("SELECT max(seq) FROM messages", [], |r| r.get(0))?;
        Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
    }

    /// Adds a send to the outbox.
    pub fn outbox_add(&self, p: &PendingSend, now: i64) -> Result<(), ClientError> {
        self.db.execute(
            "INSERT OR IGNORE INTO outbox (client_message_id, to_account, payload, created_at)
             VALUES (?1, ?2, ?3, ?4)",
            params![&p.client_message_id[..], &p.to.0[..], p.payload, now],
        )?;
        Ok(())
    }

    /// Removes a confirmed send.
    pub fn outbox_remove(&self, id: &[u8; 16]) -> Result<(), ClientError> {
        self.db
            .execute("DELETE FROM outbox WHERE client_message_id = ?1", [&id[..]])?;
        Ok(())
    }

    /// Every unconfirmed send, oldest first.
    pub fn outbox(&self) -> Result<Vec<PendingSend>, ClientError> {
        let mut stmt = self.db.prepare(
            "SELECT client_message_id, to_account, payload FROM outbox ORDER BY created_at, rowid",
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
            let (id, to, payload) = row?;
            let (Ok(client_message_id), Some(to)) = (id[..].try_into(), AccountId::from_slice(&to))
            else {
                continue;
            };
            out.push(PendingSend {
                client_message_id,
                to,
                payload,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, text: &str) -> StoredMessage {
        StoredMessage {
            seq,
            sender: DeviceAddr {
                account: AccountId([1; 16]),
                device: 1,
            },
            client_message_id: [seq as u8; 16],
            sent_at: 1,
            received_at: 2,
            text: text.into(),
        }
    }

    #[test]
    fn received_messages_are_stored_once_by_seq() {
        let dir = tempfile::tempdir().unwrap();
        let mut home = Home::open(dir.path(), true).unwrap();
        let fresh = home.store_received(vec![msg(1, "a"), msg(2, "b")]).unwrap();
        assert_eq!(fresh.len(), 2);
        // A re-delivery (the ack was lost) is recognised and not shown again.
        let fresh = home.store_received(vec![msg(2, "b"), msg(3, "c")]).unwrap();
        assert_eq!(fresh.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3]);
        assert_eq!(home.last_seq().unwrap(), 3);
    }

    #[test]
    fn the_outbox_keeps_order_and_ids_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let to = AccountId([2; 16]);
        {
            let home = Home::open(dir.path(), true).unwrap();
            for i in 0..3u8 {
                let p = PendingSend {
                    client_message_id: [i; 16],
                    to,
                    payload: vec![i],
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
}
