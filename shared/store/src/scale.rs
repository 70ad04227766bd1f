//! Scaling an environment: its replica counts per region, which new deployments take, and
//! the topology of its running deployments, which their agents follow.

use std::collections::BTreeMap;

use sqlx::Row;

use crate::{deployments::topology_in, Environment, Store, StoreError, Topology};

impl Store {
    /// Sets the replicas of `regions` (others keep theirs; a new region is added) and returns
    /// the environment with the ids of its ready deployments whose desired state is
    /// `running`. (A deploy still in flight keeps the counts it started with.)
    pub async fn scale_environment(
        &self,
        environment_id: &str,
        regions: &BTreeMap<String, u32>,
        now_ms: i64,
    ) -> Result<(Environment, Vec<String>), StoreError> {
        self.environment(environment_id).await?;
        let mut tx = self.begin().await?;
        for (region, replicas) in regions {
            sqlx::query(
                "INSERT INTO environment_regions (environment_id, region, replicas) VALUES ($1, $2, $3) \
                 ON CONFLICT (environment_id, region) DO UPDATE SET replicas = excluded.replicas",
            )
            .bind(environment_id)
            .bind(region)
            .bind(i64::from(*replicas))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query("UPDATE environments SET updated_at_ms = $2 WHERE id = $1")
            .bind(environment_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        let running = sqlx::query(
            "SELECT id FROM deployments WHERE environment_id = $1 AND desired_state = 'running' \
             AND status = 'ready' ORDER BY id",
        )
        .bind(environment_id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|row| row.try_get("id"))
        .collect::<Result<Vec<String>, _>>()?;
        tx.commit().await?;
        Ok((self.environment(environment_id).await?, running))
    }

    /// Gives the deployment `replicas` in `region` (a new row starts it there), bumping the
    /// row's version so that the desired document written from it goes forward.
    pub async fn scale_topology(
        &self,
        deployment_id: &str,
        region: &str,
        replicas: u32,
        now_ms: i64,
    ) -> Result<Topology, StoreError> {
        sqlx::query(
            "INSERT INTO deployment_topology (deployment_id, region, replicas, created_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (deployment_id, region) DO UPDATE SET replicas = excluded.replicas, \
             version = deployment_topology.version + 1, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(deployment_id)
        .bind(region)
        .bind(i64::from(replicas))
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        topology_in(&self.pool, deployment_id)
            .await?
            .into_iter()
            .find(|t| t.region == region)
            .ok_or_else(|| StoreError::NotFound(format!("deployment {deployment_id} not found")))
    }
}
