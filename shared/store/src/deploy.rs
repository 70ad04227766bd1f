//! What the Deploy workflow writes as it goes: status, instances' OpenAPI spec, domains,
//! sentinels; and the deployment listing. The live pointer moves in `commit`.

use slipway_core::state::DeploymentStatus;
use sqlx::Row;

use crate::{deployments, records, Deployment, Store, StoreError, Topology};

impl Store {
    async fn update_deployment(
        &self,
        id: &str,
        set: &str,
        value: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let sql = format!("UPDATE deployments SET {set} = $2, updated_at_ms = $3 WHERE id = $1");
        let done = sqlx::query(&sql)
            .bind(id)
            .bind(value)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("deployment {id} not found")));
        }
        Ok(())
    }

    /// Failures go through [`fail_deployment`](Self::fail_deployment), which also stops it.
    pub async fn set_deployment_status(
        &self,
        id: &str,
        status: DeploymentStatus,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.update_deployment(id, "status", Some(status.as_str()), now_ms)
            .await
    }

    /// Marks the deployment failed and its topology stopped (a failed deployment must not
    /// keep instances crash-looping); returns the topology to publish to the agents.
    /// Idempotent: repeated, it bumps no version.
    pub async fn fail_deployment(
        &self,
        id: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<Vec<Topology>, StoreError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE deployments SET status = 'failed', failure_reason = $2, updated_at_ms = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(reason)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("deployment {id} not found")));
        }
        sqlx::query(
            "UPDATE deployment_topology SET desired_status = 'stopped', version = version + 1, updated_at_ms = $2 \
             WHERE deployment_id = $1 AND desired_status <> 'stopped'",
        )
        .bind(id)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        let topology = deployments::topology_in(&mut *tx, id).await?;
        tx.commit().await?;
        Ok(topology)
    }

    /// The image built for a deployment from its git source.
    pub async fn set_built_image(
        &self,
        id: &str,
        image: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.update_deployment(id, "image", Some(image), now_ms)
            .await
    }

    pub async fn set_openapi_spec(
        &self,
        id: &str,
        spec: Option<&str>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.update_deployment(id, "openapi_spec", spec, now_ms)
            .await
    }

    pub async fn set_domains(
        &self,
        id: &str,
        domains: &[String],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let json =
            serde_json::to_string(domains).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.update_deployment(id, "domains", Some(&json), now_ms)
            .await
    }

    /// The sentinel of (environment, region), created with `new_id` if there is none.
    /// Returns its id.
    pub async fn ensure_sentinel(
        &self,
        new_id: &str,
        environment_id: &str,
        region: &str,
        replicas: u32,
        now_ms: i64,
    ) -> Result<String, StoreError> {
        let env = self.environment(environment_id).await?;
        sqlx::query(
            "INSERT INTO sentinels (id, workspace_id, project_id, environment_id, region, replicas, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (environment_id, region) DO NOTHING",
        )
        .bind(new_id)
        .bind(&env.workspace_id)
        .bind(&env.project_id)
        .bind(environment_id)
        .bind(region)
        .bind(i64::from(replicas))
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT id FROM sentinels WHERE environment_id = $1 AND region = $2")
            .bind(environment_id)
            .bind(region)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("id")?)
    }

    /// A project's deployments, newest first, optionally of one environment; `after` is the
    /// last id of the previous page (ids are time-ordered).
    pub async fn list_deployments(
        &self,
        project_id: &str,
        environment_slug: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Deployment>, StoreError> {
        let sql = format!(
            "SELECT {} FROM deployments d JOIN environments e ON e.id = d.environment_id \
             WHERE d.project_id = $1 AND ($2 IS NULL OR e.slug = $2) AND ($3 IS NULL OR d.id < $3) \
             ORDER BY d.id DESC LIMIT $4",
            records::DEPLOYMENT_COLUMNS
        );
        sqlx::query(&sql)
            .bind(project_id)
            .bind(environment_slug)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(records::deployment)
            .collect()
    }
}

impl Store {
    /// Deployments still `pending` that were created before `before_ms`.
    pub async fn pending_deployments(&self, before_ms: i64) -> Result<Vec<Deployment>, StoreError> {
        let sql = format!(
            "SELECT {} FROM deployments d JOIN environments e ON e.id = d.environment_id \
             WHERE d.status = 'pending' AND d.created_at_ms < $1 ORDER BY d.id LIMIT 1000",
            records::DEPLOYMENT_COLUMNS
        );
        sqlx::query(&sql)
            .bind(before_ms)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(records::deployment)
            .collect()
    }
}

impl Store {
    /// One page of `preview` environments (by id, after `after`), with their deployments
    /// that are scale-down candidates: `ready`, desired `running`, created and updated
    /// before `idle_before_ms`. Returns (candidate deployment ids, last environment id of the
    /// page, or None at the end).
    pub async fn idle_preview_candidates(
        &self,
        after: Option<&str>,
        page: u32,
        idle_before_ms: i64,
    ) -> Result<(Vec<String>, Option<String>), StoreError> {
        let envs = sqlx::query(
            "SELECT id FROM environments WHERE slug = 'preview' AND ($1 IS NULL OR id > $1) ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(page))
        .fetch_all(&self.pool)
        .await?;
        let env_ids: Vec<String> = envs
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<_, _>>()?;
        if env_ids.is_empty() {
            return Ok((vec![], None));
        }
        let placeholders: Vec<String> = (0..env_ids.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT id FROM deployments WHERE environment_id IN ({}) AND status = 'ready' \
             AND desired_state = 'running' AND created_at_ms < $1 AND updated_at_ms < $1 ORDER BY id",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(idle_before_ms);
        for id in &env_ids {
            query = query.bind(id);
        }
        let candidates = query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get("id"))
            .collect::<Result<Vec<String>, _>>()?;
        let next = (env_ids.len() == page as usize).then(|| env_ids[env_ids.len() - 1].clone());
        Ok((candidates, next))
    }
}

/// Which deployments a lifecycle query looks at.
#[derive(Debug, Clone, Copy)]
pub enum Among<'a> {
    /// Those of one project.
    Project(&'a str),
    /// These.
    Ids(&'a [String]),
    /// Every deployment, by id, after the id given (a page).
    After(Option<&'a str>),
}

impl Store {
    /// The deployments that should be on their way to standby (BEHAVIOUR.md "Every
    /// deployment gets an end"): `ready`, desired `running`, outside `preview` environments
    /// (the idle spin-down governs those), not their project's live deployment and behind no
    /// route that keeps a deployment running. By id, at most `limit`.
    pub async fn unserving_deployments(
        &self,
        among: Among<'_>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let condition = format!(
            "d.status = 'ready' AND d.desired_state = 'running' AND e.slug <> '{}' \
             AND COALESCE(p.live_deployment_id, '') <> d.id AND {} = 0",
            slipway_core::state::PREVIEW_ENVIRONMENT,
            crate::routes::keeping_routes("d.id")
        );
        self.lifecycle_ids(&condition, &[], among, limit).await
    }

    /// The deployments in `standby` since before `before_ms` (their last change): due for
    /// archiving. By id, at most `limit`.
    pub async fn standby_since(
        &self,
        before_ms: i64,
        among: Among<'_>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let condition = "d.desired_state = 'standby' AND d.updated_at_ms < $1";
        self.lifecycle_ids(condition, &[before_ms], among, limit)
            .await
    }

    /// Ids of deployments that meet `condition` (its parameters `$1…` are `numbers`) and
    /// `among`.
    async fn lifecycle_ids(
        &self,
        condition: &str,
        numbers: &[i64],
        among: Among<'_>,
        limit: u32,
    ) -> Result<Vec<String>, StoreError> {
        let next = numbers.len() + 1;
        let scope = match among {
            Among::Project(_) => format!("d.project_id = ${next}"),
            Among::Ids([]) => return Ok(vec![]),
            Among::Ids(ids) => {
                format!("d.id IN ({})", crate::routes::placeholders(next, ids.len()))
            }
            Among::After(None) => "1 = 1".to_string(),
            Among::After(Some(_)) => format!("d.id > ${next}"),
        };
        let sql = format!(
            "SELECT d.id FROM deployments d \
             JOIN environments e ON e.id = d.environment_id \
             JOIN projects p ON p.id = d.project_id \
             WHERE {condition} AND {scope} ORDER BY d.id LIMIT {limit}"
        );
        let mut query = sqlx::query(&sql);
        for n in numbers {
            query = query.bind(*n);
        }
        query = match among {
            Among::Project(id) | Among::After(Some(id)) => query.bind(id),
            Among::Ids(ids) => ids.iter().fold(query, |q, id| q.bind(id)),
            Among::After(None) => query,
        };
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get("id").map_err(StoreError::from))
            .collect()
    }
}

impl Store {
    /// Removes the idempotency keys of `create_deployment` older than the idempotency window
    /// (a key past it no longer answers a repeat); returns how many.
    pub async fn purge_deployment_requests(&self, now_ms: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM deployment_requests WHERE created_at_ms < $1")
            .bind(now_ms - crate::IDEMPOTENCY_WINDOW_MS)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
