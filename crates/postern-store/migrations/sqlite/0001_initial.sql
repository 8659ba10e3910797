-- Postern's embedded schema.
--
-- Conventions: timestamps are INTEGER milliseconds since the Unix epoch;
-- account ids are 16-byte BLOBs; keys and hashes are 32-byte BLOBs. Every
-- write goes through the store's single writer connection, so the
-- counters below (devices.next_seq) are never contended.

-- One row per registered account. The phone number is E.164; the username
-- is optional and unique regardless of ASCII case ("Alice" and "alice" are
-- the same name), as people expect when they look someone up.
CREATE TABLE accounts (
    id          BLOB    NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    phone       TEXT    NOT NULL UNIQUE,
    username    TEXT    UNIQUE COLLATE NOCASE,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- Devices of an account, numbered from 1. `next_seq` is the sequence
-- number the device's queue gives to the next message; it only grows, so a
-- sequence number is never reused even after its message is acked.
CREATE TABLE devices (
    account_id    BLOB    NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    device_id     INTEGER NOT NULL CHECK (device_id >= 1),
    name          TEXT    NOT NULL,
    identity_key  BLOB    NOT NULL CHECK (length(identity_key) = 32),
    noise_key     BLOB    NOT NULL UNIQUE CHECK (length(noise_key) = 32),
    created_at    INTEGER NOT NULL,
    next_seq      INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (account_id, device_id)
) WITHOUT ROWID;

-- Device-link tokens, stored only as hashes; each works once.
CREATE TABLE link_tokens (
    hash        BLOB    NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
    account_id  BLOB    NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    expires_at  INTEGER NOT NULL
) WITHOUT ROWID;

CREATE INDEX link_tokens_account ON link_tokens (account_id);

-- One-time registration codes, stored only as hashes. AUTOINCREMENT so that
-- an id handed out once is never given to another code after a purge.
CREATE TABLE codes (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    phone            TEXT    NOT NULL,
    code_hash        BLOB    NOT NULL CHECK (length(code_hash) = 32),
    issued_at        INTEGER NOT NULL,
    expires_at       INTEGER NOT NULL,
    used_at          INTEGER,
    failed_attempts  INTEGER NOT NULL DEFAULT 0
);

-- Serves both "latest code for this phone" and the per-phone rate limit.
CREATE INDEX codes_phone_issued ON codes (phone, issued_at);

-- Per-device message queues: one row per (message, recipient device).
--
-- An ordinary rowid table rather than WITHOUT ROWID: payloads are usually
-- larger than a twentieth of a page, and a WITHOUT ROWID table keeps whole
-- rows in its interior b-tree pages, which then hold few keys and split
-- often. Here new rows append to the rowid b-tree and only the small
-- primary-key index is updated at a random position.
--
-- No foreign key to devices: checking it would cost a lookup per queued
-- copy on the hottest path. Whatever removes a device must delete its queue.
CREATE TABLE queue (
    account_id         BLOB    NOT NULL,
    device_id          INTEGER NOT NULL,
    seq                INTEGER NOT NULL,
    sender_account     BLOB    NOT NULL,
    sender_device      INTEGER NOT NULL,
    client_message_id  BLOB    NOT NULL,
    received_at        INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    payload            BLOB    NOT NULL,
    PRIMARY KEY (account_id, device_id, seq)
);

CREATE INDEX queue_expires ON queue (expires_at);

-- Idempotency: a sender's client message id is accepted once. Kept until
-- the message itself expires, so a retry within the message's lifetime is
-- recognised as a duplicate.
CREATE TABLE sends (
    sender_account     BLOB    NOT NULL,
    client_message_id  BLOB    NOT NULL,
    received_at        INTEGER NOT NULL,
    expires_at         INTEGER NOT NULL,
    -- Id first: clients make ids time-ordered (ids::MessageId), so new
    -- rows land at the right edge of the b-tree instead of dirtying a random
    -- page each.
    PRIMARY KEY (client_message_id, sender_account)
) WITHOUT ROWID;

CREATE INDEX sends_expires ON sends (expires_at);
