//! The deployment actor's one transaction: apply a fired desired-state change.

use slipway_core::state::DesiredState;
use sqlx::Row;
use tokio::sync::{mpsc, oneshot};

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
    ///
    /// On SQLite, changes applied at about the same time share a transaction
    /// ([`GroupCommit`]): one commit, and one fsync, for many.
    pub async fn apply_desired_state(
        &self,
        deployment_id: &str,
        state: DesiredState,
        nonce: &str,
        now_ms: i64,
    ) -> Result<ApplyOutcome, StoreError> {
        let change = Change {
            deployment_id: deployment_id.to_string(),
            state,
            nonce: nonce.to_string(),
            now_ms,
        };
        match &self.group_commit {
            Some(group) => group.apply(change).await,
            None => self.apply_alone(&change).await,
        }
    }

    /// `change` in a transaction of its own.
    async fn apply_alone(&self, change: &Change) -> Result<ApplyOutcome, StoreError> {
        let mut tx = self.begin().await?;
        let outcome = self.apply_in(&mut tx, change).await?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// `changes` in one transaction, in order; all or none are written.
    async fn apply_together(&self, changes: &[Change]) -> Result<Vec<ApplyOutcome>, StoreError> {
        let mut tx = self.begin().await?;
        let mut outcomes = Vec::with_capacity(changes.len());
        for change in changes {
            outcomes.push(self.apply_in(&mut tx, change).await?);
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn apply_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        change: &Change,
    ) -> Result<ApplyOutcome, StoreError> {
        let (deployment_id, nonce) = (change.deployment_id.as_str(), change.nonce.as_str());
        let (state, now_ms) = (change.state, change.now_ms);
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
            .fetch_optional(&mut **tx)
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
            let topology = deployments::topology_in(&mut **tx, deployment_id).await?;
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
            .execute(&mut **tx)
            .await?;
        let mut topology = sqlx::query(
            "UPDATE deployment_topology SET desired_status = $2, version = version + 1, updated_at_ms = $3 \
             WHERE deployment_id = $1 RETURNING *",
        )
        .bind(deployment_id)
        .bind(state.topology_status().as_str())
        .bind(now_ms)
        .fetch_all(&mut **tx)
        .await?
        .iter()
        .map(records::topology)
        .collect::<Result<Vec<_>, _>>()?;
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

/// One desired-state change to write.
#[derive(Debug)]
struct Change {
    deployment_id: String,
    state: DesiredState,
    nonce: String,
    now_ms: i64,
}

type Reply = oneshot::Sender<Result<ApplyOutcome, StoreError>>;

/// SQLite's group commit of desired-state changes: the process has one writer connection, so
/// changes applied at once (a storm of timers) queue for it anyway; a task takes every change
/// waiting and writes them in one transaction, so they share one commit and one fsync of the
/// WAL instead of paying one each. PostgreSQL groups the commits of concurrent transactions
/// itself.
#[derive(Debug, Clone)]
pub(crate) struct GroupCommit {
    queue: mpsc::UnboundedSender<(Change, Reply)>,
}

/// At most this many changes share a transaction.
const MAX_GROUP: usize = 256;

impl GroupCommit {
    /// Starts the task that writes for `store` (which must not have a group commit itself: the
    /// task ends once every handle to this one is gone).
    pub(crate) fn start(store: Store) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(write_groups(store, waiting));
        Self { queue }
    }

    async fn apply(&self, change: Change) -> Result<ApplyOutcome, StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send((change, reply))
            .map_err(|_| StoreError::Database(sqlx::Error::PoolClosed))?;
        outcome
            .await
            .map_err(|_| StoreError::Database(sqlx::Error::PoolClosed))?
    }
}

async fn write_groups(store: Store, mut waiting: mpsc::UnboundedReceiver<(Change, Reply)>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while waiting.recv_many(&mut group, MAX_GROUP).await > 0 {
        let (changes, replies): (Vec<Change>, Vec<Reply>) = group.drain(..).unzip();
        match store.apply_together(&changes).await {
            Ok(outcomes) => {
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            // Each change alone, so that each caller gets its own outcome or error.
            Err(e) => {
                tracing::debug!(error = %e, changes = changes.len(), "group commit failed; writing its changes one by one");
                for (reply, change) in replies.into_iter().zip(&changes) {
                    let _ = reply.send(store.apply_alone(change).await);
                }
            }
        }
    }
}
