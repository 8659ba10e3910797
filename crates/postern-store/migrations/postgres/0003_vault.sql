-- The PII vault (crate postern-legal), as in the SQLite schema: the keyed
-- hash of each account's phone number, the number sealed to the account's
-- vault key, that key, the threshold and one wrapped share per custodian;
-- and per connection its time (in clear, for retention) and sealed source
-- address. Nothing here opens without k custodians.
CREATE TABLE vault_accounts (
    account_id    BYTEA   NOT NULL PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    phone_index   BYTEA   NOT NULL CONSTRAINT vault_phone_index_unique UNIQUE
                          CHECK (length(phone_index) = 32),
    public_key    BYTEA   NOT NULL CHECK (length(public_key) = 32),
    sealed_phone  BYTEA   NOT NULL,
    threshold     INTEGER NOT NULL CHECK (threshold >= 1)
);

CREATE TABLE vault_shares (
    account_id  BYTEA NOT NULL REFERENCES vault_accounts (account_id) ON DELETE CASCADE,
    custodian   BYTEA NOT NULL CHECK (length(custodian) = 32),
    wrapped     BYTEA NOT NULL,
    PRIMARY KEY (account_id, custodian)
);

CREATE TABLE vault_connections (
    id          BIGSERIAL PRIMARY KEY,
    account_id  BYTEA   NOT NULL REFERENCES vault_accounts (account_id) ON DELETE CASCADE,
    at          BIGINT  NOT NULL,
    sealed      BYTEA   NOT NULL
);

CREATE INDEX vault_connections_account_at ON vault_connections (account_id, at);
CREATE INDEX vault_connections_at ON vault_connections (at);
