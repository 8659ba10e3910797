-- Phone numbers leave the clear, as in the SQLite schema (0005): accounts
-- and codes are found by a keyed hash of the number (64 hex digits), the
-- vault holds the number sealed, and only its country stays in clear. Rows
-- from before still hold an E.164 number (starting with '+'); the server
-- seals them into the vault at start or refuses to start.
ALTER TABLE accounts RENAME COLUMN phone TO phone_key;
ALTER TABLE accounts ADD COLUMN country TEXT NOT NULL DEFAULT 'ZZ';

DELETE FROM codes;
ALTER TABLE codes RENAME COLUMN phone TO phone_key;
