-- What the region agents report (KV slipway_instances) is the truth about instances: each
-- (deployment, region) remembers the KV revision of the report its instance rows come from,
-- so an older report is never applied over a newer one, whoever applies it (routing's
-- observer, a deploy's record step).
ALTER TABLE deployment_topology ADD COLUMN observed_revision BIGINT NOT NULL DEFAULT 0;
-- Exits since the instance last ran stably, and whether that is a crash loop.
ALTER TABLE instances ADD COLUMN restarts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE instances ADD COLUMN crash_looping BIGINT NOT NULL DEFAULT 0;
