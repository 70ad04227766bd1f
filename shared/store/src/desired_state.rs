//! The deployment actor's one transaction: apply a fired desired-state change.

use slipway_core::state::DesiredState;
use sqlx::Row;

use crate::{records, Deployment, Store, StoreError, Topology};

#[derive(Debug, Clone, PartialEq)]
pub enum ApplyOutcome {
    /// Written now.
    Applied {
        deployment: Deployment,
        previous: String,
        topology: Vec<Topology>,
    },
    /// This nonce was applied before (a redelivery after a crash): nothing written.
    AlreadyApplied {
        deployment: Deployment,
        topology: Vec<Topology>,
    },
    /// Refused: the deployment is its project's live deployment.
    IsLive,
    /// The deployment no longer exists.
    NotFound,
}

impl Store {
    /// In one transaction: refuse if the deployment is live; else write `desired_state`,
    /// remember `nonce`, and set the topology's desired status (bumping its version).
    /// Locks project, then deployment, so a concurrent live-pointer swap cannot slip between
    /// the guard and the write.
    pub async fn apply_desired_state(
        &self,
        deployment_id: &str,
        state: DesiredState,
        nonce: &str,
        now_ms: i64,
    ) -> Result<ApplyOutcome, StoreError> {
        let Some(project_id) = sqlx::query("SELECT project_id FROM deployments WHERE id = $1")
            .bind(deployment_id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get::<String, _>("project_id"))
            .transpose()?
        else {
            return Ok(ApplyOutcome::NotFound);
        };

        let mut tx = self.begin().await?;
        let live: Option<String> = sqlx::query(&format!(
            "SELECT live_deployment_id FROM projects WHERE id = $1{}",
            self.for_update()
        ))
        .bind(&project_id)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.try_get("live_deployment_id"))
        .transpose()?
        .flatten();
        if live.as_deref() == Some(deployment_id) {
            return Ok(ApplyOutcome::IsLive);
        }
        let Some(row) = sqlx::query(&format!(
            "SELECT desired_state, desired_state_nonce FROM deployments WHERE id = $1{}",
            self.for_update()
        ))
        .bind(deployment_id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(ApplyOutcome::NotFound);
        };
        let previous: String = row.try_get("desired_state")?;
        let applied_nonce: Option<String> = row.try_get("desired_state_nonce")?;

        if applied_nonce.as_deref() != Some(nonce) {
            sqlx::query(
                "UPDATE deployments SET desired_state = $2, desired_state_nonce = $3, updated_at_ms = $4 WHERE id = $1",
            )
            .bind(deployment_id)
            .bind(state.as_str())
            .bind(nonce)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE deployment_topology SET desired_status = $2, version = version + 1, updated_at_ms = $3 \
                 WHERE deployment_id = $1",
            )
            .bind(deployment_id)
            .bind(state.topology_status().as_str())
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        let sql = format!(
            "SELECT {} FROM deployments d JOIN environments e ON e.id = d.environment_id WHERE d.id = $1",
            records::DEPLOYMENT_COLUMNS
        );
        let deployment = records::deployment(
            &sqlx::query(&sql)
                .bind(deployment_id)
                .fetch_one(&mut *tx)
                .await?,
        )?;
        let topology = sqlx::query(
            "SELECT * FROM deployment_topology WHERE deployment_id = $1 ORDER BY region",
        )
        .bind(deployment_id)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(records::topology)
        .collect::<Result<Vec<_>, _>>()?;
        tx.commit().await?;

        Ok(if applied_nonce.as_deref() == Some(nonce) {
            ApplyOutcome::AlreadyApplied {
                deployment,
                topology,
            }
        } else {
            ApplyOutcome::Applied {
                deployment,
                previous,
                topology,
            }
        })
    }
}
