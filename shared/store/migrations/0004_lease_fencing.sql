-- The newest project-lease epoch the store has seen per project: a write made under the
-- project lease carries its epoch (fencing token), and one older than this is refused.
ALTER TABLE projects ADD COLUMN lease_epoch BIGINT NOT NULL DEFAULT 0;
