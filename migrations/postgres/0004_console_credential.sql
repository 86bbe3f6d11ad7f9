-- A console session is bound to the credential it was opened with: a stamp derived from the
-- client's secret hash at sign-in. Rotating the secret changes the stamp and ends the session
-- on its next request. Sessions from before this column have an empty stamp and end too.
ALTER TABLE console_sessions ADD COLUMN credential TEXT NOT NULL DEFAULT '';
