-- Where a deployment built from git comes from (JSON: repository, commit_sha, context_path,
-- dockerfile_path); NULL for one deployed from an image. Its image is set once built.
ALTER TABLE deployments ADD COLUMN git_source TEXT;
