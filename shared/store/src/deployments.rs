//! Deployments and their per-region topology.

use sqlx::Row;

use crate::{records, Deployment, Environment, NewDeployment, Store, StoreError, Topology};

/// How long an idempotency key is remembered (API.md: 24 h).
pub const IDEMPOTENCY_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

/// An idempotency key and a digest of the request that carried it.
#[derive(Debug, Clone)]
pub struct Idempotency {
    pub key: String,
    pub request_hash: String,
}

/// A deployment from [`Store::create_deployment`]; `created` is false for a repeat.
#[derive(Debug, Clone)]
pub struct Created {
    pub deployment: Deployment,
    pub created: bool,
}

impl Store {
    /// Writes a `pending` deployment of an existing environment, copying the environment's
    /// port and sentinel config onto it (tests: services go through `create_deployment`).
    #[cfg(feature = "testing")]
    pub async fn insert_deployment(
        &self,
        new: &NewDeployment,
        now_ms: i64,
    ) -> Result<Deployment, StoreError> {
        Ok(self.create_deployment(new, None, now_ms).await?.deployment)
    }

    /// Writes a `pending` deployment of an existing environment, copying the environment's
    /// port and sentinel config onto it; idempotent per (project, key) for 24 h: a repeat of the same request returns the first one's deployment, a different
    /// request with the same key is a conflict.
    pub async fn create_deployment(
        &self,
        new: &NewDeployment,
        idempotency: Option<&Idempotency>,
        now_ms: i64,
    ) -> Result<Created, StoreError> {
        let env = self.environment(&new.environment_id).await?;
        // A concurrent first use of the same key loses on the primary key; the second
        // attempt then finds the winner's record.
        for attempt in 0..2 {
            match self.try_create(new, &env, idempotency, now_ms).await {
                Err(StoreError::Conflict(_)) if attempt == 0 && idempotency.is_some() => continue,
                other => return other,
            }
        }
        unreachable!("the loop returns")
    }

    async fn try_create(
        &self,
        new: &NewDeployment,
        env: &Environment,
        idempotency: Option<&Idempotency>,
        now_ms: i64,
    ) -> Result<Created, StoreError> {
        let mut tx = self.begin().await?;
        if let Some(idem) = idempotency {
            let sql = format!(
                "SELECT request_hash, deployment_id, created_at_ms FROM deployment_requests \
                 WHERE project_id = $1 AND idempotency_key = $2{}",
                self.for_update()
            );
            let found = sqlx::query(&sql)
                .bind(&env.project_id)
                .bind(&idem.key)
                .fetch_optional(&mut *tx)
                .await?;
            if let Some(row) = found {
                let created_at_ms: i64 = row.try_get("created_at_ms")?;
                if created_at_ms > now_ms - IDEMPOTENCY_WINDOW_MS {
                    let hash: String = row.try_get("request_hash")?;
                    if hash != idem.request_hash {
                        return Err(StoreError::Conflict(format!(
                            "idempotency_key {:?} was used with a different request",
                            idem.key
                        )));
                    }
                    let id: String = row.try_get("deployment_id")?;
                    tx.commit().await?;
                    return Ok(Created {
                        deployment: self.deployment(&id).await?,
                        created: false,
                    });
                }
                sqlx::query("DELETE FROM deployment_requests WHERE project_id = $1 AND idempotency_key = $2")
                    .bind(&env.project_id)
                    .bind(&idem.key)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let command =
            serde_json::to_string(&new.command).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        // The environment's variables now, the deployment's own on top.
        let mut snapshot = Self::snapshot(&mut tx, &env.id).await?;
        for (name, value) in &new.env {
            snapshot.sealed.remove(name);
            snapshot.plain.insert(name.clone(), value.clone());
        }
        let env_vars = serde_json::to_string(&snapshot.plain)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let secret_env = serde_json::to_string(&snapshot.sealed)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let git_source = new
            .git_source
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO deployments (id, workspace_id, project_id, environment_id, image, git_branch, \
             git_commit_sha, git_commit_message, git_commit_author_handle, git_commit_author_avatar_url, \
             git_commit_timestamp_ms, key_auth_id, command, env, secret_env, port, sentinel_config, \
             workflow_id, git_source, created_at_ms, updated_at_ms, memory_mb, cpu_millis) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $20, $21, $22)",
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
        .bind(secret_env)
        .bind(i64::from(env.port))
        .bind(&env.sentinel_config)
        .bind(&new.workflow_id)
        .bind(git_source)
        .bind(now_ms)
        .bind(i64::from(env.limits.memory_mb))
        .bind(i64::from(env.limits.cpu_millis))
        .execute(&mut *tx)
        .await
        .map_err(|e| StoreError::or_conflict(e, || format!("deployment {} already exists", new.id)))?;
        if let Some(idem) = idempotency {
            sqlx::query(
                "INSERT INTO deployment_requests (project_id, idempotency_key, request_hash, deployment_id, workflow_id, created_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&env.project_id)
            .bind(&idem.key)
            .bind(&idem.request_hash)
            .bind(&new.id)
            .bind(new.workflow_id.as_deref().unwrap_or_default())
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::or_conflict(e, || format!("idempotency_key {:?} is in use", idem.key)))?;
        }
        tx.commit().await?;
        Ok(Created {
            deployment: self.deployment(&new.id).await?,
            created: true,
        })
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

    /// Removes a deployment and everything that hangs off it (tests).
    #[cfg(feature = "testing")]
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
