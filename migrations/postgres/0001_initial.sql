-- Tessera schema, PostgreSQL. Times are Unix seconds (BIGINT); flags are 0/1 integers.

CREATE TABLE clients (
    client_id     TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    kind          TEXT NOT NULL,
    name          TEXT NOT NULL,
    workspace     TEXT,
    scopes        TEXT NOT NULL,
    allow_bypass  TEXT NOT NULL DEFAULT '',
    secret_hash   TEXT NOT NULL,
    disabled      BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX clients_tenant ON clients (tenant);

CREATE TABLE signing_keys (
    kid           TEXT PRIMARY KEY,
    alg           TEXT NOT NULL,
    public_key    TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    activates_at  BIGINT NOT NULL,
    retired_at    BIGINT,
    unpublish_at  BIGINT
);

CREATE TABLE audit_log (
    seq        BIGINT PRIMARY KEY,
    at         BIGINT NOT NULL,
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
    quorum          BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    decided_at      BIGINT,
    bypass          BIGINT NOT NULL DEFAULT 0,
    cap_jti         TEXT,
    cap_iat         BIGINT,
    cap_exp         BIGINT,
    redeemed_at     BIGINT,
    redeemed_by     TEXT
);
CREATE INDEX approvals_tenant_status ON approvals (tenant, status, created_at);
CREATE INDEX approvals_requester ON approvals (requester, created_at);

CREATE TABLE decisions (
    approval_id  TEXT NOT NULL REFERENCES approvals (approval_id),
    operator     TEXT NOT NULL,
    decision     TEXT NOT NULL,
    note         TEXT,
    at           BIGINT NOT NULL,
    PRIMARY KEY (approval_id, operator)
);
