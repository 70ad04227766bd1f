-- Every commit point a workflow applied (its workflow id), with what it did. A run that died
-- after its commit but before journaling it runs the commit again when resumed: that repeat
-- writes nothing (a commit is applied once), and answers what the first application did, so
-- a resumed deploy never takes live back from a deploy that superseded it meanwhile.
CREATE TABLE applied_commits (
    commit_id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    deployment_id TEXT NOT NULL,
    -- '' (live pointer left), 'take' or 'pin'.
    live TEXT NOT NULL,
    previous_live_deployment_id TEXT,
    created_at_ms BIGINT NOT NULL
);
