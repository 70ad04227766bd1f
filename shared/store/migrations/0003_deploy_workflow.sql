-- What the Deploy workflow records on a deployment: its workflow, its generated domains
-- (JSON array), and the live deployment it replaced (so a replayed live swap knows it).
ALTER TABLE deployments ADD COLUMN workflow_id TEXT;
ALTER TABLE deployments ADD COLUMN domains TEXT NOT NULL DEFAULT '[]';
ALTER TABLE deployments ADD COLUMN replaced_live_deployment_id TEXT;

-- create_deployment idempotency: the first call's deployment per (project, key), for 24 h.
CREATE TABLE deployment_requests (
    project_id      TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    request_hash    TEXT NOT NULL,
    deployment_id   TEXT NOT NULL,
    workflow_id     TEXT NOT NULL,
    created_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (project_id, idempotency_key)
);
