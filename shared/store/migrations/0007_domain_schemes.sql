-- How a project's generated domains are spelled (slipway_core::domains::Scheme): 1 = parts
-- joined by dashes (projects created before this migration keep it, so their domains never
-- change), 2 = parts separated by "--" (every project created since).
ALTER TABLE projects ADD COLUMN domain_scheme BIGINT NOT NULL DEFAULT 1;

-- The environment and live domains an environment generates, claimed when it is created, so
-- that a second claim of a name is refused there (409) and never by a failing deploy.
CREATE TABLE domain_claims (
    fqdn TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    environment_id TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
-- What existing projects already serve is theirs.
INSERT INTO domain_claims (fqdn, project_id, environment_id, created_at_ms)
    SELECT fqdn, project_id, environment_id, created_at_ms FROM frontline_routes
    WHERE sticky IN ('live', 'environment');
