-- Proof of possession (design §13): a client registered with --require-dpop gets tokens only
-- with a DPoP proof; an approval remembers the key its requester's token was bound to
-- (`cnf.jkt`), so its capability is bound to the same key. NULL: not bound.
ALTER TABLE clients ADD COLUMN require_dpop INTEGER NOT NULL DEFAULT 0;
ALTER TABLE approvals ADD COLUMN cnf_jkt TEXT;
