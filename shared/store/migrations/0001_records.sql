-- Every record of BEHAVIOUR.md "Records". Portable between SQLite and PostgreSQL:
-- TEXT ids, BIGINT Unix milliseconds, booleans as BIGINT 0/1 (sqlx's Any driver cannot read
-- SQLite booleans), JSON as TEXT.

CREATE TABLE workspaces (
    id            TEXT PRIMARY KEY,
    slug          TEXT NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL
);

CREATE TABLE projects (
    id                 TEXT PRIMARY KEY,
    workspace_id       TEXT NOT NULL REFERENCES workspaces (id),
    slug               TEXT NOT NULL,
    name               TEXT NOT NULL,
    default_branch     TEXT NOT NULL,
    live_deployment_id TEXT,
    is_rolled_back     BIGINT NOT NULL DEFAULT 0,
    created_at_ms      BIGINT NOT NULL,
    updated_at_ms      BIGINT NOT NULL,
    UNIQUE (workspace_id, slug)
);

CREATE TABLE environments (
    id              TEXT PRIMARY KEY,
    workspace_id    TEXT NOT NULL REFERENCES workspaces (id),
    project_id      TEXT NOT NULL REFERENCES projects (id),
    slug            TEXT NOT NULL,
    port            BIGINT NOT NULL DEFAULT 8080,
    sentinel_config TEXT NOT NULL DEFAULT '{}',
    created_at_ms   BIGINT NOT NULL,
    updated_at_ms   BIGINT NOT NULL,
    UNIQUE (project_id, slug)
);

-- Regions an environment runs in, with replica counts.
CREATE TABLE environment_regions (
    environment_id TEXT NOT NULL REFERENCES environments (id) ON DELETE CASCADE,
    region         TEXT NOT NULL,
    replicas       BIGINT NOT NULL,
    PRIMARY KEY (environment_id, region)
);

CREATE TABLE deployments (
    id                           TEXT PRIMARY KEY,
    workspace_id                 TEXT NOT NULL REFERENCES workspaces (id),
    project_id                   TEXT NOT NULL REFERENCES projects (id),
    environment_id               TEXT NOT NULL REFERENCES environments (id),
    status                       TEXT NOT NULL DEFAULT 'pending',
    desired_state                TEXT NOT NULL DEFAULT 'running',
    -- Nonce of the last scheduled change applied: a redelivered change is recognised.
    desired_state_nonce          TEXT,
    image                        TEXT NOT NULL DEFAULT '',
    git_branch                   TEXT NOT NULL DEFAULT '',
    git_commit_sha               TEXT NOT NULL DEFAULT '',
    git_commit_message           TEXT NOT NULL DEFAULT '',
    git_commit_author_handle     TEXT NOT NULL DEFAULT '',
    git_commit_author_avatar_url TEXT NOT NULL DEFAULT '',
    git_commit_timestamp_ms      BIGINT,
    key_auth_id                  TEXT NOT NULL DEFAULT '',
    -- JSON array of strings.
    command                      TEXT NOT NULL DEFAULT '[]',
    -- JSON object of environment variables for the instances.
    env                          TEXT NOT NULL DEFAULT '{}',
    port                         BIGINT NOT NULL DEFAULT 8080,
    sentinel_config              TEXT NOT NULL DEFAULT '{}',
    openapi_spec                 TEXT,
    failure_reason               TEXT,
    created_at_ms                BIGINT NOT NULL,
    updated_at_ms                BIGINT NOT NULL
);
CREATE INDEX deployments_by_environment ON deployments (project_id, environment_id, created_at_ms);

-- One row per (deployment, region): desired replicas and desired status (started|stopped).
CREATE TABLE deployment_topology (
    deployment_id  TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    region         TEXT NOT NULL,
    replicas       BIGINT NOT NULL,
    desired_status TEXT NOT NULL DEFAULT 'started',
    -- Grows with each change; carried to region agents as `version`.
    version        BIGINT NOT NULL DEFAULT 1,
    created_at_ms  BIGINT NOT NULL,
    updated_at_ms  BIGINT NOT NULL,
    PRIMARY KEY (deployment_id, region)
);

-- Instances as reported by region agents.
CREATE TABLE instances (
    id            TEXT PRIMARY KEY,
    deployment_id TEXT NOT NULL REFERENCES deployments (id) ON DELETE CASCADE,
    region        TEXT NOT NULL,
    address       TEXT NOT NULL,
    status        TEXT NOT NULL,
    message       TEXT,
    updated_at_ms BIGINT NOT NULL
);
CREATE INDEX instances_by_deployment ON instances (deployment_id, region);

CREATE TABLE frontline_routes (
    id             TEXT PRIMARY KEY,
    fqdn           TEXT NOT NULL UNIQUE,
    sticky         TEXT NOT NULL,
    project_id     TEXT NOT NULL REFERENCES projects (id),
    environment_id TEXT NOT NULL REFERENCES environments (id),
    deployment_id  TEXT NOT NULL,
    created_at_ms  BIGINT NOT NULL,
    updated_at_ms  BIGINT NOT NULL
);
CREATE INDEX frontline_routes_by_project ON frontline_routes (project_id, environment_id);

-- One sentinel per (environment, region).
CREATE TABLE sentinels (
    id             TEXT PRIMARY KEY,
    workspace_id   TEXT NOT NULL REFERENCES workspaces (id),
    project_id     TEXT NOT NULL REFERENCES projects (id),
    environment_id TEXT NOT NULL REFERENCES environments (id),
    region         TEXT NOT NULL,
    replicas       BIGINT NOT NULL,
    port           BIGINT NOT NULL DEFAULT 8040,
    created_at_ms  BIGINT NOT NULL,
    updated_at_ms  BIGINT NOT NULL,
    UNIQUE (environment_id, region)
);
