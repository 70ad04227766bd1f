-- The newest project-lease epoch the store has seen per project: a write made under the
-- project lease carries its epoch (fencing token), and one older than this is refused.
ALTER TABLE projects ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;

-- The commit (its workflow id) that last made a deployment live and set its
-- replaced_live_deployment_id: a repeat of that same commit after the live pointer moved away
-- reports what the first one replaced, whose follow-up may never have run.
ALTER TABLE deployments ADD COLUMN live_commit_id TEXT;
