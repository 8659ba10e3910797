-- The relay distributor's state (crate postern-distributor), as in the
-- SQLite schema: one opaque blob, rewritten whole after every change. One
-- row at most. (Several nodes saving it would overwrite each other's
-- changes: the server keeps the distributor on one node for now.)
CREATE TABLE distributor_state (
    id          SMALLINT NOT NULL PRIMARY KEY CHECK (id = 1),
    state       BYTEA    NOT NULL,
    updated_at  BIGINT   NOT NULL
);
