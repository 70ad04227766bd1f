//! What deploy, rollback and promote share when traffic is handed from one deployment to
//! another: the per-project lease (BEHAVIOUR.md "Per-project exclusion"), waking the target
//! before traffic moves to it, and sending what a commit superseded to standby.
//!
//! The lease's epoch is registered with the store before anything is read under it, so from
//! then on a former holder's writes are refused, and every write made under it carries the
//! epoch as its fencing token. Before traffic moves to a deployment its pending transition is
//! cleared and, if it is in standby, it is set running and its instances are waited for, so a
//! live route never points at a deployment with nothing running. A rollback or promote that
//! fails puts its target back on the way to standby.

use std::{collections::BTreeMap, time::Duration};

use serde::{Deserialize, Serialize};
use slipway_core::{
    domains::Sticky,
    krane::{InstanceStatus, ReportedInstance},
    state::DesiredState,
    time::now_ms,
    ApiError,
};
use slipway_store::{Among, Store, StoreError};
use slipway_workflow::{Context, StepError, StepResultExt, WorkflowError};

use crate::clients::{
    actor::{Actor, Fence},
    instances::{Instances, ReadyInstance},
    routing::Committed,
};

/// The hand-over's dependencies.
#[derive(Clone)]
pub(crate) struct Handover {
    pub(crate) store: Store,
    pub(crate) actor: Actor,
    pub(crate) instances: Instances,
    /// Delay before a superseded deployment goes to standby.
    pub(crate) standby_delay: Duration,
}

/// At most this many deployments are settled at once; the lifecycle sweep finds the rest.
const SETTLE_LIMIT: u32 = 1_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Asleep {
    deadline_ms: i64,
    /// region → replicas, from its topology
    regions: BTreeMap<String, u32>,
}

impl Handover {
    /// Takes the project's lease; returns the fencing token of writes made under it (0 when
    /// the workflow is past its commit point, where nothing is written under it any more).
    pub(crate) async fn lease_project(
        &self,
        ctx: &mut Context,
        project_id: &str,
    ) -> Result<u64, WorkflowError> {
        let store = &self.store;
        let register = |epoch| async move {
            match store.fence(project_id, epoch).await {
                Ok(()) => Ok(()),
                Err(StoreError::Conflict(e)) => Err(WorkflowError::Aborted(format!(
                    "the project lease was taken over right away: {e}"
                ))),
                Err(e) => Err(WorkflowError::Aborted(format!(
                    "cannot register the project lease's epoch: {e}"
                ))),
            }
        };
        let lease = ctx
            .lease(&format!("project.{project_id}"), register)
            .await?;
        Ok(lease.unwrap_or(0))
    }

    /// The wake steps, journaled in `ctx`: `clear_target`, and for a target in standby
    /// `wake_target`, `wait_target`, `record_target`. The actor calls carry the project
    /// lease's `fencing_token`: a holder that lost the lease cannot undo what the next one
    /// decided about the target.
    pub(crate) async fn wake(
        &self,
        ctx: &mut Context,
        target: &str,
        fencing_token: u64,
    ) -> Result<(), WorkflowError> {
        let _: bool = ctx
            .step("clear_target", || {
                self.actor.clear(target, Fence::Lease(fencing_token))
            })
            .await?;
        let asleep: Option<Asleep> = ctx
            .step("check_target", || async {
                let store = &self.store;
                let d = store.deployment(target).await.step_err()?;
                if d.desired_state != DesiredState::Standby {
                    return Ok(None);
                }
                let regions = store
                    .topology(target)
                    .await
                    .step_err()?
                    .into_iter()
                    .map(|t| (t.region, t.replicas))
                    .collect();
                Ok(Some(Asleep {
                    deadline_ms: self.instances.deadline(),
                    regions,
                }))
            })
            .await?;
        let Some(asleep) = asleep else {
            return Ok(());
        };
        let key = format!("wake.{}", ctx.workflow_id());
        let _: String = ctx
            .step("wake_target", || {
                let now = Duration::ZERO;
                self.actor
                    .schedule(target, now, "running", &key, Fence::Lease(fencing_token))
            })
            .await?;
        let instances: Vec<ReadyInstance> = ctx
            .step("wait_target", || async {
                // Reports about the standby (or before it) are not about the wake.
                let versions = self
                    .store
                    .topology(target)
                    .await
                    .step_err()?
                    .into_iter()
                    .map(|t| (t.region, t.version))
                    .collect();
                self.instances
                    .wait(target, &asleep.regions, &versions, asleep.deadline_ms)
                    .await
            })
            .await?;
        ctx.step("record_target", || {
            record_instances(&self.store, target, asleep.regions.keys(), &instances)
        })
        .await?;
        Ok(())
    }

    /// Sends each deployment of `among` that should be on its way to standby (ready,
    /// running, outside `preview`, serving nothing: [`Store::unserving_deployments`]) and has
    /// no pending change to standby after the standby delay, keyed by `key`. A fenced call
    /// the actor refuses means a later holder of the project's lease has decided about that
    /// deployment: that decision stands. Returns the deployments scheduled.
    pub(crate) async fn settle(
        &self,
        among: Among<'_>,
        key: &str,
        fence: Fence,
    ) -> Result<Vec<String>, StepError> {
        let unserving = self
            .store
            .unserving_deployments(among, SETTLE_LIMIT)
            .await
            .step_err()?;
        let mut scheduled = Vec::new();
        for id in unserving {
            if self.actor.has_pending_change(&id).await? {
                continue;
            }
            let delay = self.standby_delay;
            match self.actor.schedule(&id, delay, "standby", key, fence).await {
                Err(StepError::Fenced(reason)) => {
                    tracing::info!(deployment = %id, %reason, "a later lease holder decided about it; leaving it to that");
                    continue;
                }
                Err(e) => return Err(e),
                Ok(_) => {}
            }
            tracing::info!(deployment = %id, "serves nothing and waits for nothing: goes to standby");
            scheduled.push(id);
        }
        Ok(scheduled)
    }

    /// For a failure handler: settles `deployments` and every deployment a commit of the
    /// failed workflow replaced as live (a commit that went through unjournaled, before the
    /// run that failed decided again). Unfenced: a failure handler holds no lease, and only
    /// fills a gap.
    pub(crate) async fn settle_failed(
        &self,
        deployments: &[&str],
        workflow_id: &str,
    ) -> Result<(), StepError> {
        let mut all = self
            .store
            .replaced_by_commit(workflow_id)
            .await
            .step_err()?;
        all.extend(deployments.iter().map(|d| d.to_string()));
        let key = format!("settle.{workflow_id}");
        self.settle(Among::Ids(&all), &key, Fence::None).await?;
        Ok(())
    }

    /// The post-commit steps: `schedule_standby` of `superseded` (the deployment this commit
    /// replaced, if it goes to standby; keyed by `key`, so a repeat schedules nothing new),
    /// `settle_superseded` of what earlier, unjournaled runs of the commit replaced, then
    /// `settle_project`: every deployment of the project that the commit left serving nothing.
    pub(crate) async fn supersede(
        &self,
        ctx: &mut Context,
        project_id: &str,
        superseded: Option<&str>,
        key: &str,
        committed: &Committed,
    ) -> Result<(), WorkflowError> {
        if let Some(superseded) = superseded {
            let _: String = ctx
                .step("schedule_standby", || {
                    self.standby_superseded(superseded, key, committed)
                })
                .await?;
        }
        let settle_key = format!("settle.{}", ctx.workflow_id());
        if !committed.replaced_earlier.is_empty() {
            let earlier = Among::Ids(&committed.replaced_earlier);
            // `()`: the step's journaled result before it told what it scheduled.
            ctx.step("settle_superseded", || async {
                self.settle(earlier, &settle_key, Fence::None).await?;
                Ok(())
            })
            .await?;
        }
        // Whatever else the commit left serving nothing — the former holder of an
        // environment route in a pinned project or outside production, say — goes too.
        let fence = Fence::Commit(committed.fencing_token);
        let _: Vec<String> = ctx
            .step("settle_project", || {
                self.settle(Among::Project(project_id), &settle_key, fence)
            })
            .await?;
        Ok(())
    }

    /// The standby, after the standby delay, of a deployment a commit superseded, fenced by
    /// the commit's token. Refused when a later holder of the project's lease has decided
    /// about that deployment since (it woke it for a rollback, say): that decision stands,
    /// and there is nothing left to do.
    async fn standby_superseded(
        &self,
        deployment_id: &str,
        idempotency_key: &str,
        committed: &Committed,
    ) -> Result<String, StepError> {
        let (delay, fence) = (self.standby_delay, Fence::Commit(committed.fencing_token));
        match self
            .actor
            .schedule(deployment_id, delay, "standby", idempotency_key, fence)
            .await
        {
            Err(StepError::Fenced(reason)) => {
                tracing::info!(deployment = deployment_id, %reason, "a later lease holder decided about the superseded deployment; leaving it to that");
                Ok(String::new())
            }
            scheduled => scheduled,
        }
    }
}

/// Records the ready instances on the deployment, region by region, unless a newer report
/// of the region has been recorded since (routing observes every report).
pub(crate) async fn record_instances(
    store: &Store,
    deployment_id: &str,
    regions: impl Iterator<Item = &String>,
    instances: &[ReadyInstance],
) -> Result<(), StepError> {
    for region in regions {
        let ready: Vec<&ReadyInstance> = instances.iter().filter(|i| &i.region == region).collect();
        let Some(revision) = ready.first().map(|i| i.revision) else {
            continue;
        };
        let rows: Vec<ReportedInstance> = ready
            .iter()
            .map(|i| ReportedInstance {
                id: i.id.clone(),
                address: i.address.clone(),
                status: InstanceStatus::Running,
                message: None,
                restarts: 0,
                crash_looping: false,
                unrunnable: false,
            })
            .collect();
        store
            .observe_instances(deployment_id, region, &rows, revision, now_ms())
            .await
            .step_err()?;
    }
    Ok(())
}

/// The live-sticky routes of the project and the environment-sticky ones of
/// `environment_id`: what rollback and promote move.
pub(crate) async fn traffic_routes(
    store: &Store,
    project_id: &str,
    environment_id: &str,
) -> Result<Vec<String>, ApiError> {
    Ok(store
        .routes(project_id, None)
        .await?
        .into_iter()
        .filter(|r| {
            r.sticky == Sticky::Live
                || (r.sticky == Sticky::Environment && r.environment_id == environment_id)
        })
        .map(|r| r.id)
        .collect())
}
