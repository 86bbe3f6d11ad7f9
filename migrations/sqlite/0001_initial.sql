-- Tessera schema, SQLite. Times are Unix seconds (INTEGER); flags are 0/1 integers.

CREATE TABLE clients (
    client_id     TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    kind          TEXT NOT NULL,
    name          TEXT NOT NULL,
    workspace     TEXT,
    scopes        TEXT NOT NULL,
    allow_bypass  TEXT NOT NULL DEFAULT '',
    secret_hash   TEXT NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);
CREATE INDEX clients_tenant ON clients (tenant);

CREATE TABLE signing_keys (
    kid           TEXT PRIMARY KEY,
    alg           TEXT NOT NULL,
    public_key    TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    activates_at  INTEGER NOT NULL,
    retired_at    INTEGER,
    unpublish_at  INTEGER
);

CREATE TABLE audit_log (
    seq        INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    event      TEXT NOT NULL,
    actor      TEXT NOT NULL,
    tenant     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    detail     TEXT NOT NULL,
    prev_hash  TEXT NOT NULL,
    hash       TEXT NOT NULL
);

CREATE TABLE approvals (
    approval_id     TEXT PRIMARY KEY,
    tenant          TEXT NOT NULL,
    action          TEXT NOT NULL,
    resource        TEXT NOT NULL,
    params_digest   TEXT NOT NULL,
    summary         TEXT NOT NULL,
    reason          TEXT NOT NULL,
    requester       TEXT NOT NULL,
    requester_kind  TEXT NOT NULL,
    status          TEXT NOT NULL,
    quorum          INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    decided_at      INTEGER,
    bypass          INTEGER NOT NULL DEFAULT 0,
    cap_jti         TEXT,
    cap_iat         INTEGER,
    cap_exp         INTEGER,
    redeemed_at     INTEGER,
    redeemed_by     TEXT
);
CREATE INDEX approvals_tenant_status ON approvals (tenant, status, created_at);
CREATE INDEX approvals_requester ON approvals (requester, created_at);

CREATE TABLE decisions (
    approval_id  TEXT NOT NULL REFERENCES approvals (approval_id),
    operator     TEXT NOT NULL,
    decision     TEXT NOT NULL,
    note         TEXT,
    at           INTEGER NOT NULL,
    PRIMARY KEY (approval_id, operator)
);
