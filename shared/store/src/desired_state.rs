//! The deployment actor's one transaction: apply a fired desired-state change.

use slipway_core::state::DesiredState;
use sqlx::Row;

use crate::{deployments, records, Deployment, Store, StoreError, Topology};

#[derive(Debug, Clone, PartialEq)]
pub enum ApplyOutcome {
    /// Written now.
    Applied {
        deployment: Deployment,
        previous: DesiredState,
        topology: Vec<Topology>,
    },
    /// This nonce was applied before (a redelivery after a crash): nothing written.
    AlreadyApplied {
        deployment: Deployment,
        topology: Vec<Topology>,
    },
    /// Refused: the deployment serves traffic (it is its project's live deployment, or a live
    /// or environment route points at it) and the change would stop it.
    ServesTraffic,
    /// The deployment no longer exists.
    NotFound,
}

impl Store {
    /// In one transaction: refuse to stop a deployment that serves traffic (live, or behind a
    /// route that keeps it running: [`Store::serves_traffic`]); else write `desired_state`,
    /// remember `nonce`, and set the topology's desired status (bumping its version).
    /// The first statement reads the deployment with its project's live pointer and locks
    /// both rows (those two only: locking the environment's row too deadlocked with
    /// deployments being created in it, on PostgreSQL), so a concurrent live-pointer swap
    /// cannot slip between guard and write;
    /// three statements in all, since on SQLite every apply queues for the one writer.
    pub async fn apply_desired_state(
        &self,
        deployment_id: &str,
        state: DesiredState,
        nonce: &str,
        now_ms: i64,
    ) -> Result<ApplyOutcome, StoreError> {
        let mut tx = self.begin().await?;
        let sql = format!(
            "SELECT {}, p.live_deployment_id, {} AS traffic_routes \
             FROM deployments d \
             JOIN environments e ON e.id = d.environment_id \
             JOIN projects p ON p.id = d.project_id \
             WHERE d.id = $1{}",
            records::DEPLOYMENT_COLUMNS,
            crate::routes::keeping_routes("d.id"),
            self.for_update_of("d, p")
        );
        let Some(row) = sqlx::query(&sql)
            .bind(deployment_id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(ApplyOutcome::NotFound);
        };
        let live: Option<String> = row.try_get("live_deployment_id")?;
        let traffic_routes: i64 = row.try_get("traffic_routes")?;
        let serves = live.as_deref() == Some(deployment_id) || traffic_routes > 0;
        if serves && state != DesiredState::Running {
            return Ok(ApplyOutcome::ServesTraffic);
        }
        let mut deployment = records::deployment(&row)?;

        if deployment.desired_state_nonce.as_deref() == Some(nonce) {
            let topology = deployments::topology_in(&mut *tx, deployment_id).await?;
            tx.commit().await?;
            return Ok(ApplyOutcome::AlreadyApplied {
                deployment,
                topology,
            });
        }

        sqlx::query("UPDATE deployments SET desired_state = $2, desired_state_nonce = $3, updated_at_ms = $4 WHERE id = $1")
            .bind(deployment_id)
            .bind(state.as_str())
            .bind(nonce)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        let mut topology = sqlx::query(
            "UPDATE deployment_topology SET desired_status = $2, version = version + 1, updated_at_ms = $3 \
             WHERE deployment_id = $1 RETURNING *",
        )
        .bind(deployment_id)
        .bind(state.topology_status().as_str())
        .bind(now_ms)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(records::topology)
        .collect::<Result<Vec<_>, _>>()?;
        tx.commit().await?;
        topology.sort_by(|a, b| a.region.cmp(&b.region));

        let previous = std::mem::replace(&mut deployment.desired_state, state);
        deployment.desired_state_nonce = Some(nonce.to_string());
        deployment.updated_at_ms = now_ms;
        Ok(ApplyOutcome::Applied {
            deployment,
            previous,
            topology,
        })
    }
}
