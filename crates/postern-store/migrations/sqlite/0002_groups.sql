-- The MLS delivery service (RFC 9420 §13): groups, their member devices,
-- and key packages. Everything MLS here is opaque bytes the clients made;
-- the server reads none of it.

-- A queued message of a group carries the group's id, so its recipient
-- knows where it belongs before decrypting. NULL for other messages.
ALTER TABLE queue ADD COLUMN group_id BLOB;

-- One row per group. `epoch` is the epoch the next commit must be made in;
-- `group_info` and `ratchet_tree` are the latest ones a committer uploaded,
-- kept for devices that join (RFC 9420 §12.4.3.1: the tree travels out of
-- band, not inside Welcomes). An ordinary rowid table: trees of large
-- groups are hundreds of kilobytes.
CREATE TABLE groups (
    id            BLOB    NOT NULL PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 64),
    epoch         INTEGER NOT NULL,
    group_info    BLOB    NOT NULL,
    ratchet_tree  BLOB    NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

-- The ratchet tree of each epoch that began with a Welcome, for devices
-- that process the Welcome later (RFC 9420 §12.4.3.1: out of band, not in
-- the Welcome). Kept as long as the Welcome itself may wait in a queue.
CREATE TABLE welcome_trees (
    group_id      BLOB    NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    epoch         INTEGER NOT NULL,
    ratchet_tree  BLOB    NOT NULL,
    expires_at    INTEGER NOT NULL,
    PRIMARY KEY (group_id, epoch)
);

CREATE INDEX welcome_trees_expires ON welcome_trees (expires_at);

-- The devices a group's messages are fanned out to. Deleting a device
-- deletes its memberships.
CREATE TABLE group_members (
    group_id    BLOB    NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    account_id  BLOB    NOT NULL,
    device_id   INTEGER NOT NULL,
    PRIMARY KEY (group_id, account_id, device_id),
    FOREIGN KEY (account_id, device_id) REFERENCES devices (account_id, device_id)
        ON DELETE CASCADE
) WITHOUT ROWID;

CREATE INDEX group_members_device ON group_members (account_id, device_id);

-- Key packages uploaded by each device: one-time ones (deleted when handed
-- out) and at most one last-resort one per device.
CREATE TABLE key_packages (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id   BLOB    NOT NULL,
    device_id    INTEGER NOT NULL,
    last_resort  INTEGER NOT NULL CHECK (last_resort IN (0, 1)),
    data         BLOB    NOT NULL,
    FOREIGN KEY (account_id, device_id) REFERENCES devices (account_id, device_id)
        ON DELETE CASCADE
);

CREATE INDEX key_packages_device ON key_packages (account_id, device_id, last_resort, id);
