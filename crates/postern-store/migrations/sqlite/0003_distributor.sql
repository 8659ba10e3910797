-- The relay distributor's state (crate postern-distributor): which member
-- holds which relay, trust levels, invitations, blocking per country. The
-- server keeps it as one opaque blob, rewritten whole after every change,
-- so a restart resumes exactly where the policy was. One row at most.
CREATE TABLE distributor_state (
    id          INTEGER NOT NULL PRIMARY KEY CHECK (id = 1),
    state       BLOB    NOT NULL,
    updated_at  INTEGER NOT NULL
);
