//! Workspaces, projects and environments.

use std::collections::BTreeMap;

use sqlx::Row;

use crate::{records, Environment, Project, Store, StoreError, Workspace};

impl Store {
    pub async fn create_workspace(
        &self,
        id: &str,
        slug: &str,
        name: &str,
        now_ms: i64,
    ) -> Result<Workspace, StoreError> {
        sqlx::query("INSERT INTO workspaces (id, slug, name, created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $4)")
            .bind(id)
            .bind(slug)
            .bind(name)
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map_err(|e| StoreError::or_conflict(e, || format!("workspace slug {slug:?} is taken")))?;
        self.workspace(id).await
    }

    pub async fn workspace(&self, id: &str) -> Result<Workspace, StoreError> {
        let row = sqlx::query("SELECT * FROM workspaces WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("workspace {id} not found")))?;
        records::workspace(&row)
    }

    pub async fn create_project(
        &self,
        id: &str,
        workspace_id: &str,
        slug: &str,
        name: &str,
        default_branch: &str,
        now_ms: i64,
    ) -> Result<Project, StoreError> {
        self.workspace(workspace_id).await?;
        sqlx::query(
            "INSERT INTO projects (id, workspace_id, slug, name, default_branch, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(id)
        .bind(workspace_id)
        .bind(slug)
        .bind(name)
        .bind(default_branch)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::or_conflict(e, || format!("project slug {slug:?} is taken in workspace {workspace_id}")))?;
        self.project(id).await
    }

    pub async fn project(&self, id: &str) -> Result<Project, StoreError> {
        let row = sqlx::query("SELECT * FROM projects WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("project {id} not found")))?;
        records::project(&row)
    }

    /// Points the project's live pointer at `deployment_id` (or clears it), outside any
    /// commit (tests: services move it only through `assign_routes`).
    #[cfg(feature = "testing")]
    pub async fn set_live_deployment(
        &self,
        project_id: &str,
        deployment_id: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE projects SET live_deployment_id = $2, updated_at_ms = $3 WHERE id = $1",
        )
        .bind(project_id)
        .bind(deployment_id)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!(
                "project {project_id} not found"
            )));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn create_environment(
        &self,
        id: &str,
        project_id: &str,
        slug: &str,
        regions: &BTreeMap<String, u32>,
        port: u32,
        sentinel_config: &str,
        now_ms: i64,
    ) -> Result<Environment, StoreError> {
        let project = self.project(project_id).await?;
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO environments (id, workspace_id, project_id, slug, port, sentinel_config, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(id)
        .bind(&project.workspace_id)
        .bind(project_id)
        .bind(slug)
        .bind(i64::from(port))
        .bind(sentinel_config)
        .bind(now_ms)
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::or_conflict(e, || format!("environment {slug:?} already exists in project {project_id}")))?;
        for (region, replicas) in regions {
            sqlx::query("INSERT INTO environment_regions (environment_id, region, replicas) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(region)
                .bind(i64::from(*replicas))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.environment(id).await
    }

    pub async fn environment(&self, id: &str) -> Result<Environment, StoreError> {
        let row = sqlx::query("SELECT * FROM environments WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("environment {id} not found")))?;
        let regions = self.environment_regions(id).await?;
        records::environment(&row, regions)
    }

    pub async fn environments(&self, project_id: &str) -> Result<Vec<Environment>, StoreError> {
        let rows = sqlx::query("SELECT * FROM environments WHERE project_id = $1 ORDER BY slug")
            .bind(project_id)
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            let regions = self.environment_regions(&id).await?;
            out.push(records::environment(&row, regions)?);
        }
        Ok(out)
    }

    async fn environment_regions(
        &self,
        environment_id: &str,
    ) -> Result<BTreeMap<String, u32>, StoreError> {
        let rows = sqlx::query(
            "SELECT region, replicas FROM environment_regions WHERE environment_id = $1",
        )
        .bind(environment_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("region")?, records::u32_of(r, "replicas")?)))
            .collect()
    }
}
