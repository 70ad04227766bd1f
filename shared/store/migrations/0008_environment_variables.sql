-- Variables per environment; a secret's value is sealed (slipway_store::secrets), never plain.
CREATE TABLE environment_variables (
    environment_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    secret BIGINT NOT NULL DEFAULT 0,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    PRIMARY KEY (environment_id, name)
);
-- A deployment's snapshot of its environment's secret variables, still sealed: name -> value
-- (the plain ones are in deployments.env).
ALTER TABLE deployments ADD COLUMN secret_env TEXT NOT NULL DEFAULT '{}';
