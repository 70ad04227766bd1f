//! Deployments and their per-region topology.

use crate::{records, Deployment, NewDeployment, Store, StoreError, Topology};

impl Store {
    /// Writes a `pending` deployment of an existing environment, copying the environment's
    /// port and sentinel config onto it.
    pub async fn insert_deployment(
        &self,
        new: &NewDeployment,
        now_ms: i64,
    ) -> Result<Deployment, StoreError> {
        let env = self.environment(&new.environment_id).await?;
        let command =
            serde_json::to_string(&new.command).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let env_vars =
            serde_json::to_string(&new.env).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO deployments (id, workspace_id, project_id, environment_id, image, git_branch, \
             git_commit_sha, git_commit_message, git_commit_author_handle, git_commit_author_avatar_url, \
             git_commit_timestamp_ms, key_auth_id, command, env, port, sentinel_config, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $17)",
        )
        .bind(&new.id)
        .bind(&env.workspace_id)
        .bind(&env.project_id)
        .bind(&env.id)
        .bind(&new.image)
        .bind(&new.git_branch)
        .bind(&new.git_commit_sha)
        .bind(&new.git_commit_message)
        .bind(&new.git_commit_author_handle)
        .bind(&new.git_commit_author_avatar_url)
        .bind(new.git_commit_timestamp_ms)
        .bind(&new.key_auth_id)
        .bind(command)
        .bind(env_vars)
        .bind(i64::from(env.port))
        .bind(&env.sentinel_config)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(|e| StoreError::or_conflict(e, || format!("deployment {} already exists", new.id)))?;
        self.deployment(&new.id).await
    }

    pub async fn deployment(&self, id: &str) -> Result<Deployment, StoreError> {
        self.find_deployment(id)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("deployment {id} not found")))
    }

    pub async fn find_deployment(&self, id: &str) -> Result<Option<Deployment>, StoreError> {
        let sql = format!(
            "SELECT {} FROM deployments d JOIN environments e ON e.id = d.environment_id WHERE d.id = $1",
            records::DEPLOYMENT_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(records::deployment).transpose()
    }

    /// Removes a deployment and everything that hangs off it.
    pub async fn delete_deployment(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        for table in ["deployment_topology", "instances"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE deployment_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        let done = sqlx::query("DELETE FROM deployments WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Writes the desired topology of one region; keyed by (deployment, region), so a
    /// repeated write changes nothing but the replica count.
    pub async fn upsert_topology(
        &self,
        deployment_id: &str,
        region: &str,
        replicas: u32,
        now_ms: i64,
    ) -> Result<Topology, StoreError> {
        sqlx::query(
            "INSERT INTO deployment_topology (deployment_id, region, replicas, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (deployment_id, region) DO UPDATE SET replicas = excluded.replicas",
        )
        .bind(deployment_id)
        .bind(region)
        .bind(i64::from(replicas))
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        let rows = self.topology(deployment_id).await?;
        rows.into_iter()
            .find(|t| t.region == region)
            .ok_or_else(|| StoreError::NotFound(format!("deployment {deployment_id} not found")))
    }

    pub async fn topology(&self, deployment_id: &str) -> Result<Vec<Topology>, StoreError> {
        topology_in(&self.pool, deployment_id).await
    }
}

/// A deployment's topology rows by region, on the pool or inside a transaction.
pub(crate) async fn topology_in<'e, E>(
    executor: E,
    deployment_id: &str,
) -> Result<Vec<Topology>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query("SELECT * FROM deployment_topology WHERE deployment_id = $1 ORDER BY region")
        .bind(deployment_id)
        .fetch_all(executor)
        .await?
        .iter()
        .map(records::topology)
        .collect()
}
