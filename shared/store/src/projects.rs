//! Workspaces, projects and environments.

use std::collections::BTreeMap;

use slipway_core::domains::Scheme;
use sqlx::Row;

use crate::{records, Environment, Limits, Project, Store, StoreError, Workspace};

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

    /// Workspaces in creation order, `limit` after the one with id `after`.
    pub async fn list_workspaces(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Workspace>, StoreError> {
        sqlx::query("SELECT * FROM workspaces WHERE ($1 IS NULL OR id > $1) ORDER BY id LIMIT $2")
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(records::workspace)
            .collect()
    }

    /// A workspace's projects in creation order, `limit` after the one with id `after`.
    pub async fn list_projects(
        &self,
        workspace_id: &str,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Project>, StoreError> {
        sqlx::query(
            "SELECT * FROM projects WHERE workspace_id = $1 AND ($2 IS NULL OR id > $2) ORDER BY id LIMIT $3",
        )
        .bind(workspace_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(records::project)
        .collect()
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
            "INSERT INTO projects (id, workspace_id, slug, name, default_branch, domain_scheme, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
        )
        .bind(id)
        .bind(workspace_id)
        .bind(slug)
        .bind(name)
        .bind(default_branch)
        .bind(Scheme::CURRENT.to_db())
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

    /// Creates the environment and claims `domains` for it (its generated environment and live
    /// domains), in one transaction: a domain another project claims or routes is a conflict,
    /// and nothing is written.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_environment(
        &self,
        id: &str,
        project_id: &str,
        slug: &str,
        regions: &BTreeMap<String, u32>,
        port: u32,
        sentinel_config: &str,
        domains: &[String],
        now_ms: i64,
    ) -> Result<Environment, StoreError> {
        let shape = Shape {
            regions,
            port,
            limits: Limits::default(),
        };
        self.create_environment_shaped(
            id,
            project_id,
            slug,
            &shape,
            sentinel_config,
            domains,
            now_ms,
        )
        .await
    }

    /// [`create_environment`](Self::create_environment) with per-instance limits.
    #[allow(clippy::too_many_arguments)]
    pub async fn create_environment_shaped(
        &self,
        id: &str,
        project_id: &str,
        slug: &str,
        shape: &Shape<'_>,
        sentinel_config: &str,
        domains: &[String],
        now_ms: i64,
    ) -> Result<Environment, StoreError> {
        let Shape {
            regions,
            port,
            limits,
        } = *shape;
        let project = self.project(project_id).await?;
        let mut tx = self.begin().await?;
        for fqdn in domains {
            let taken = sqlx::query(
                "SELECT project_id FROM domain_claims WHERE fqdn = $1 AND project_id <> $2 \
                 UNION SELECT project_id FROM frontline_routes WHERE fqdn = $1 AND project_id <> $2",
            )
            .bind(fqdn)
            .bind(project_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = taken {
                let other: String = row.try_get("project_id")?;
                return Err(StoreError::Conflict(format!(
                    "environment {slug:?} would generate the domain {fqdn}, which is project {other}'s"
                )));
            }
        }
        sqlx::query(
            "INSERT INTO environments (id, workspace_id, project_id, slug, port, sentinel_config, created_at_ms, updated_at_ms, memory_mb, cpu_millis) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8, $9)",
        )
        .bind(id)
        .bind(&project.workspace_id)
        .bind(project_id)
        .bind(slug)
        .bind(i64::from(port))
        .bind(sentinel_config)
        .bind(now_ms)
        .bind(i64::from(limits.memory_mb))
        .bind(i64::from(limits.cpu_millis))
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
        for fqdn in domains {
            sqlx::query(
                "INSERT INTO domain_claims (fqdn, project_id, environment_id, created_at_ms) \
                 SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT 1 FROM domain_claims WHERE fqdn = $1)",
            )
            .bind(fqdn)
            .bind(project_id)
            .bind(id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::or_conflict(e, || format!("{fqdn} was claimed meanwhile")))?;
        }
        tx.commit().await?;
        self.environment(id).await
    }

    /// Sets the project's domain scheme (tests: a project as created before schemes existed).
    #[cfg(feature = "testing")]
    pub async fn set_domain_scheme(
        &self,
        project_id: &str,
        scheme: Scheme,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE projects SET domain_scheme = $2 WHERE id = $1")
            .bind(project_id)
            .bind(scheme.to_db())
            .execute(&self.pool)
            .await?;
        Ok(())
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

    /// The project's environment `slug`.
    pub async fn environment_by_slug(
        &self,
        project_id: &str,
        slug: &str,
    ) -> Result<Environment, StoreError> {
        self.project(project_id).await?;
        self.environments(project_id)
            .await?
            .into_iter()
            .find(|e| e.slug == slug)
            .ok_or_else(|| {
                StoreError::NotFound(format!(
                    "environment {slug:?} not found in project {project_id}"
                ))
            })
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

/// How an environment runs its deployments: replicas per region, the port inside a
/// container, per-instance limits.
#[derive(Debug, Clone, Copy)]
pub struct Shape<'a> {
    pub regions: &'a BTreeMap<String, u32>,
    pub port: u32,
    pub limits: Limits,
}
