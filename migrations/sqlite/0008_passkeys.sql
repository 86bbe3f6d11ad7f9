-- Operators' passkeys (design §15). A removed passkey keeps its row, marked removed, so the
-- decisions it signed can still be verified against its public key.
CREATE TABLE passkeys (
    credential_id  TEXT PRIMARY KEY,
    client_id      TEXT NOT NULL,
    alg            INTEGER NOT NULL,
    public_key     TEXT NOT NULL,
    sign_count     INTEGER NOT NULL,
    name           TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    last_used_at   INTEGER,
    removed_at     INTEGER
);
CREATE INDEX passkeys_client ON passkeys (client_id);

-- Challenges issued and not yet answered; each is answered at most once.
CREATE TABLE passkey_challenges (
    challenge      TEXT PRIMARY KEY,
    purpose        TEXT NOT NULL,
    client_id      TEXT,
    session_hash   TEXT,
    approval_id    TEXT,
    decision       TEXT,
    params_digest  TEXT,
    nonce          TEXT,
    expires_at     INTEGER NOT NULL
);

-- How each decision was made: `secret` (the API, the CLI, the console signed in with a
-- secret) or `passkey`.
ALTER TABLE decisions ADD COLUMN method TEXT NOT NULL DEFAULT 'secret';

-- How a console session was signed in.
ALTER TABLE console_sessions ADD COLUMN method TEXT NOT NULL DEFAULT 'secret';
