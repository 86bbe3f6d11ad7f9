-- What the operator sees is what runs (design §11): the parameters as presented, whose digest
-- the capability binds. And who led to the request (design §12): the requester's actor
-- chain, as the JSON of its token's `act` claim. Both are NULL on requests made before.
ALTER TABLE approvals ADD COLUMN params TEXT;
ALTER TABLE approvals ADD COLUMN act TEXT;
