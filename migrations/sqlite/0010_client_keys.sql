-- Clients authenticated by a key (RFC 7523 §2.2, private_key_jwt; design §18). Such a client
-- has no secret (its secret_hash is '', which no presented secret's hash equals); it signs an
-- assertion with the private half of the one public JWK stored here. The assertion ids it
-- used are kept in federation_jtis under the issuer 'client:' || client_id.
CREATE TABLE client_keys (
    client_id   TEXT NOT NULL PRIMARY KEY,
    kid         TEXT NOT NULL,
    alg         TEXT NOT NULL,
    jwk         TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
