-- Workload identities (design §14). A federated client is authenticated by an assertion from
-- a trusted issuer naming one of its identities; it has no secret (its secret_hash is '',
-- which no presented secret's hash equals). One identity names at most one client.
CREATE TABLE client_federated (
    issuer      TEXT NOT NULL,
    subject     TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX client_federated_client ON client_federated (client_id);

-- Assertion ids seen, each kept until its assertion expires, so an assertion is used once
-- whichever replica it reaches.
CREATE TABLE federation_jtis (
    issuer      TEXT NOT NULL,
    jti         TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    PRIMARY KEY (issuer, jti)
);
CREATE INDEX federation_jtis_expiry ON federation_jtis (expires_at);
