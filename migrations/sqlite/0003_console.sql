-- The operator console: server-side sessions. Only a SHA-256 of the random session id is
-- stored, never the id itself, so a copy of this table signs nobody in.

CREATE TABLE console_sessions (
    session_hash  TEXT PRIMARY KEY,
    client_id     TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL
);
CREATE INDEX console_sessions_client ON console_sessions (client_id);
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);

