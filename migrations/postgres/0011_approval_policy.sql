-- Approval policy (design §19). An operator client's groups (space-separated group names,
-- sorted) and any client's owner; an approval's per-group quorum as it stood when the request
-- was made (JSON list of {group, count}; NULL: any eligible operator counts) and the
-- requester's owner then (who never counts towards it); a break-glass
-- decision, and the acknowledgement by another operator that ends its review; the groups an
-- operator belonged to when deciding (what its approval counts for).
ALTER TABLE clients ADD COLUMN groups TEXT NOT NULL DEFAULT '';
ALTER TABLE clients ADD COLUMN owner TEXT;
ALTER TABLE approvals ADD COLUMN quorum_groups TEXT;
ALTER TABLE approvals ADD COLUMN requester_owner TEXT;
ALTER TABLE approvals ADD COLUMN break_glass INTEGER NOT NULL DEFAULT 0;
ALTER TABLE approvals ADD COLUMN reviewed_by TEXT;
ALTER TABLE approvals ADD COLUMN reviewed_at BIGINT;
ALTER TABLE decisions ADD COLUMN break_glass INTEGER NOT NULL DEFAULT 0;
ALTER TABLE decisions ADD COLUMN groups TEXT NOT NULL DEFAULT '';
CREATE INDEX approvals_to_review ON approvals (tenant, break_glass, reviewed_at);
