-- Every deployment a commit (its workflow id) replaced as the live one. A commit whose run
-- died before journaling it may be repeated, or abandoned, after other commits moved live
-- again: what it replaced is settled from here, so nothing it superseded is left running.
-- (It replaces deployments.live_commit_id, which remembered only the last commit per
-- deployment and is no longer read.)
CREATE TABLE live_commits (
    commit_id TEXT NOT NULL,
    replaced_deployment_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (commit_id, replaced_deployment_id)
);
