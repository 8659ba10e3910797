-- The PII vault (crate postern-legal). Per account: the keyed hash of its
-- phone number (lookups), the phone number sealed (HPKE) to the account's
-- vault key, that public key, the custodian threshold, and one share of
-- the vault key per custodian, each wrapped to that custodian. Per
-- connection: its time, in clear so that retention can purge it, and the
-- source address sealed to the vault key. Nothing here opens without k
-- custodians; the store interprets none of it.
CREATE TABLE vault_accounts (
    account_id    BLOB    NOT NULL PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    phone_index   BLOB    NOT NULL UNIQUE CHECK (length(phone_index) = 32),
    public_key    BLOB    NOT NULL CHECK (length(public_key) = 32),
    sealed_phone  BLOB    NOT NULL,
    threshold     INTEGER NOT NULL CHECK (threshold >= 1)
) WITHOUT ROWID;

CREATE TABLE vault_shares (
    account_id  BLOB NOT NULL REFERENCES vault_accounts (account_id) ON DELETE CASCADE,
    custodian   BLOB NOT NULL CHECK (length(custodian) = 32),
    wrapped     BLOB NOT NULL,
    PRIMARY KEY (account_id, custodian)
) WITHOUT ROWID;

CREATE TABLE vault_connections (
    id          INTEGER PRIMARY KEY,
    account_id  BLOB    NOT NULL REFERENCES vault_accounts (account_id) ON DELETE CASCADE,
    at          INTEGER NOT NULL,
    sealed      BLOB    NOT NULL
);

CREATE INDEX vault_connections_account_at ON vault_connections (account_id, at);
CREATE INDEX vault_connections_at ON vault_connections (at);
