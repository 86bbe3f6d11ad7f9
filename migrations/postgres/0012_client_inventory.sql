-- Managing clients at fleet scale (design §20). Who registered a client ('cli', or the id of
-- the install client that did over HTTP); when it last got a token, to the minute; when its
-- current secret was issued. A rotation with grace keeps the previous secret's hash, when it
-- was issued, when it stops working (`secret_expires_at`) and how many times it was used
-- since. None of these columns moves `updated_at`, which a cached authentication relies on.
-- A secret issued before this migration is dated by the row's last change, the nearest the
-- table knows.
ALTER TABLE clients ADD COLUMN created_by TEXT NOT NULL DEFAULT 'cli';
ALTER TABLE clients ADD COLUMN last_used_at BIGINT;
ALTER TABLE clients ADD COLUMN secret_created_at BIGINT;
ALTER TABLE clients ADD COLUMN previous_secret_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE clients ADD COLUMN previous_secret_created_at BIGINT;
ALTER TABLE clients ADD COLUMN secret_expires_at BIGINT;
ALTER TABLE clients ADD COLUMN previous_secret_uses BIGINT NOT NULL DEFAULT 0;
UPDATE clients SET secret_created_at = updated_at WHERE secret_hash <> '';
