-- Per-instance limits of an environment (0: none), and each deployment's snapshot of them.
ALTER TABLE environments ADD COLUMN memory_mb BIGINT NOT NULL DEFAULT 0;
ALTER TABLE environments ADD COLUMN cpu_millis BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deployments ADD COLUMN memory_mb BIGINT NOT NULL DEFAULT 0;
ALTER TABLE deployments ADD COLUMN cpu_millis BIGINT NOT NULL DEFAULT 0;
