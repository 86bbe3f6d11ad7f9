-- Signed checkpoints of the audit chain's head (design §16), one per head: replicas that
-- sign the same head keep the first. `token` is the compact JWS; the other columns repeat
-- its claims so that `audit verify` can walk them in order of `seq`.
CREATE TABLE audit_checkpoints (
    seq    BIGINT PRIMARY KEY,
    hash   TEXT NOT NULL,
    count  BIGINT NOT NULL,
    iat    BIGINT NOT NULL,
    kid    TEXT NOT NULL,
    token  TEXT NOT NULL
);
CREATE INDEX audit_checkpoints_iat ON audit_checkpoints (iat);

-- Where the chain starts once records have been archived: the checkpoint the last archive
-- ended with. At most one row. The chain continues from its `hash`; records at or below its
-- `seq` are archived (and deleted, in batches).
CREATE TABLE audit_anchor (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    seq    BIGINT NOT NULL,
    hash   TEXT NOT NULL,
    token  TEXT NOT NULL
);
