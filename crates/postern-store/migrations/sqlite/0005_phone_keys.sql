-- Phone numbers leave the clear (issue 8). Accounts and codes are found by
-- a keyed hash of the number (64 hex digits; the key is the server's, not
-- in this database), and the vault (0004) holds the number sealed to the
-- account's key. What stays in clear is the number's country, for the
-- relay distributor and the reachability counts.
--
-- Rows written before this migration still hold an E.164 number (it starts
-- with '+', which a hex key never does): the server seals them into the
-- vault at start and replaces them by their key, or refuses to start (see
-- postern-server's legal module). Codes live five minutes: they are simply
-- dropped.
ALTER TABLE accounts RENAME COLUMN phone TO phone_key;
ALTER TABLE accounts ADD COLUMN country TEXT NOT NULL DEFAULT 'ZZ';

DELETE FROM codes;
ALTER TABLE codes RENAME COLUMN phone TO phone_key;
