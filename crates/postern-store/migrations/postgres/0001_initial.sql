-- Postern's PostgreSQL schema: the same tables as the SQLite one
-- (migrations/sqlite), in one step.
--
-- Conventions: timestamps are BIGINT milliseconds since the Unix epoch;
-- account ids are 16-byte BYTEAs; keys and hashes are 32-byte BYTEAs; device
-- ids are BIGINT because PostgreSQL has no unsigned 32-bit type. Several
-- server nodes write here at once: see src/postgres.rs for the locks each
-- write takes.

-- One row per registered account. Usernames are unique regardless of case
-- ("Alice" and "alice" are the same name), through the index on lower().
CREATE TABLE accounts (
    id          BYTEA   NOT NULL PRIMARY KEY CHECK (length(id) = 16),
    phone       TEXT    NOT NULL CONSTRAINT accounts_phone_unique UNIQUE,
    username    TEXT,
    created_at  BIGINT  NOT NULL
);

CREATE UNIQUE INDEX accounts_username_unique ON accounts (lower(username));

-- Devices of an account, numbered from 1. `next_seq` is the sequence
-- number the device's queue gives to the next message; it only grows, and
-- an enqueue holds this row's lock from reading it to its commit, so the
-- numbers of one device become visible in order.
CREATE TABLE devices (
    account_id    BYTEA   NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    device_id     BIGINT  NOT NULL CHECK (device_id BETWEEN 1 AND 4294967295),
    name          TEXT    NOT NULL,
    identity_key  BYTEA   NOT NULL CHECK (length(identity_key) = 32),
    noise_key     BYTEA   NOT NULL CONSTRAINT devices_noise_key_unique UNIQUE
                          CHECK (length(noise_key) = 32),
    created_at    BIGINT  NOT NULL,
    next_seq      BIGINT  NOT NULL DEFAULT 1,
    PRIMARY KEY (account_id, device_id)
);

-- Device-link tokens, stored only as hashes; each works once.
CREATE TABLE link_tokens (
    hash        BYTEA   NOT NULL PRIMARY KEY CHECK (length(hash) = 32),
    account_id  BYTEA   NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    expires_at  BIGINT  NOT NULL
);

CREATE INDEX link_tokens_account ON link_tokens (account_id);

-- One-time registration codes, stored only as hashes. An identity column
-- never hands out an id twice, even after a purge.
CREATE TABLE codes (
    id               BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    phone            TEXT    NOT NULL,
    code_hash        BYTEA   NOT NULL CHECK (length(code_hash) = 32),
    issued_at        BIGINT  NOT NULL,
    expires_at       BIGINT  NOT NULL,
    used_at          BIGINT,
    failed_attempts  INTEGER NOT NULL DEFAULT 0
);

CREATE INDEX codes_phone_issued ON codes (phone, issued_at);
CREATE INDEX codes_expires ON codes (expires_at);

-- Per-device message queues: one row per (message, recipient device).
--
-- No foreign key to devices: checking it would cost a lookup per queued
-- copy on the hottest path. Whatever removes a device must delete its queue.
CREATE TABLE queue (
    account_id         BYTEA   NOT NULL,
    device_id          BIGINT  NOT NULL,
    seq                BIGINT  NOT NULL,
    sender_account     BYTEA   NOT NULL,
    sender_device      BIGINT  NOT NULL,
    client_message_id  BYTEA   NOT NULL,
    received_at        BIGINT  NOT NULL,
    expires_at         BIGINT  NOT NULL,
    group_id           BYTEA,
    payload            BYTEA   NOT NULL,
    PRIMARY KEY (account_id, device_id, seq)
);

CREATE INDEX queue_expires ON queue (expires_at);

-- Idempotency: a sender's client message id is accepted once, enforced by
-- the primary key, which concurrent enqueues on different nodes wait on.
-- Kept until the message itself expires. Id first: clients make ids
-- time-ordered, so new entries land at the right edge of the index.
CREATE TABLE sends (
    sender_account     BYTEA   NOT NULL,
    client_message_id  BYTEA   NOT NULL,
    received_at        BIGINT  NOT NULL,
    expires_at         BIGINT  NOT NULL,
    PRIMARY KEY (client_message_id, sender_account)
);

CREATE INDEX sends_expires ON sends (expires_at);

-- The MLS delivery service (RFC 9420 §13). Everything MLS here is opaque
-- bytes the clients made; the server reads none of it.
--
-- One row per group. `epoch` is the epoch the next commit must be made in;
-- a commit locks this row, so commits of one group are applied one at a
-- time whichever node receives them.
CREATE TABLE groups (
    id            BYTEA   NOT NULL PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
    epoch         BIGINT  NOT NULL,
    group_info    BYTEA   NOT NULL,
    ratchet_tree  BYTEA   NOT NULL,
    created_at    BIGINT  NOT NULL,
    updated_at    BIGINT  NOT NULL
);

-- The ratchet tree of each epoch that began with a Welcome, for devices
-- that process the Welcome later; kept as long as the Welcome may wait.
CREATE TABLE welcome_trees (
    group_id      BYTEA   NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    epoch         BIGINT  NOT NULL,
    ratchet_tree  BYTEA   NOT NULL,
    expires_at    BIGINT  NOT NULL,
    PRIMARY KEY (group_id, epoch)
);

CREATE INDEX welcome_trees_expires ON welcome_trees (expires_at);

-- The devices a group's messages are fanned out to. Deleting a device
-- deletes its memberships.
CREATE TABLE group_members (
    group_id    BYTEA   NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    account_id  BYTEA   NOT NULL,
    device_id   BIGINT  NOT NULL,
    PRIMARY KEY (group_id, account_id, device_id),
    FOREIGN KEY (account_id, device_id) REFERENCES devices (account_id, device_id)
        ON DELETE CASCADE
);

CREATE INDEX group_members_device ON group_members (account_id, device_id);

-- Key packages uploaded by each device: one-time ones (deleted when handed
-- out) and at most one last-resort one per device.
CREATE TABLE key_packages (
    id           BIGINT   GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id   BYTEA    NOT NULL,
    device_id    BIGINT   NOT NULL,
    last_resort  BOOLEAN  NOT NULL,
    data         BYTEA    NOT NULL,
    FOREIGN KEY (account_id, device_id) REFERENCES devices (account_id, device_id)
        ON DELETE CASCADE
);

CREATE INDEX key_packages_device ON key_packages (account_id, device_id, last_resort, id);

-- At most one last-resort package per device, so that concurrent uploads
-- replace it (INSERT … ON CONFLICT) instead of both adding one.
CREATE UNIQUE INDEX key_packages_last_resort ON key_packages (account_id, device_id)
    WHERE last_resort;
