-- Token exchange, revocation and the revocation feed.

-- Clients (by id, space-separated) that may exchange this client's tokens and act for it.
ALTER TABLE clients ADD COLUMN delegates TEXT NOT NULL DEFAULT '';

-- Every revocation, in feed order. A row names either one token (jti) or all tokens of a
-- client issued at or before not_after.
CREATE TABLE revocations (
    seq         INTEGER PRIMARY KEY,
    kind        TEXT NOT NULL,
    jti         TEXT,
    client_id   TEXT NOT NULL,
    tenant      TEXT NOT NULL,
    not_after   INTEGER,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER NOT NULL,
    revoked_by  TEXT NOT NULL
);
CREATE INDEX revocations_jti ON revocations (jti);
CREATE INDEX revocations_client ON revocations (client_id);

-- Operators revoke by jti: the issuing record names the token's client and tenant.
CREATE INDEX audit_log_subject ON audit_log (subject);
