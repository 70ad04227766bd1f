//! Before traffic moves to a deployment (rollback, promote): clear its pending transition
//! and, if it is in standby, set it running and wait until its instances are healthy, so a
//! live route never points at a deployment with nothing running. A rollback or promote that
//! fails before its commit point puts its target back on the way to standby.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use slipway_core::{state::DesiredState, time::now_ms};
use slipway_workflow::{Context, StepError, StepResultExt, WorkflowError};

use crate::{
    clients::{instances::ReadyInstance, routing::Committed},
    Orchestrator,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Asleep {
    deadline_ms: i64,
    /// region → replicas, from its topology
    regions: BTreeMap<String, u32>,
}

impl Orchestrator {
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
                self.clear_schedule(target, fencing_token)
            })
            .await?;
        let asleep: Option<Asleep> = ctx
            .step("check_target", || async {
                let store = &self.inner.store;
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
                    deadline_ms: now_ms()
                        + slipway_core::time::millis(self.inner.config.ready_timeout),
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
                let now = std::time::Duration::ZERO;
                self.schedule_state(target, now, "running", &key, fencing_token)
            })
            .await?;
        let instances: Vec<ReadyInstance> = ctx
            .step("wait_target", || {
                self.wait_for_instances(target, &asleep.regions, asleep.deadline_ms)
            })
            .await?;
        ctx.step("record_target", || {
            self.record_instances(target, asleep.regions.keys(), &instances)
        })
        .await?;
        Ok(())
    }
}

impl Orchestrator {
    /// Each of `deployments` that serves no traffic, runs, and has no pending change goes to
    /// standby after the standby delay, as a superseded deployment does (keyed by
    /// `workflow_id`). For the failure handler of rollback and promote (their target had its
    /// pending standby cleared and may have been woken; the deployment live before them may
    /// have been superseded by a commit of theirs that was never journaled), and after any
    /// commit that reports a deployment an earlier, unjournaled commit replaced.
    pub(crate) async fn settle(
        &self,
        deployments: &[&str],
        workflow_id: &str,
    ) -> Result<(), StepError> {
        let store = &self.inner.store;
        for &id in deployments {
            let Some(d) = store.find_deployment(id).await.step_err()? else {
                continue;
            };
            if d.desired_state != DesiredState::Running
                || store.serves_traffic(id).await.step_err()?
                || self.has_pending_change(id).await?
            {
                continue;
            }
            let key = format!("settle.{workflow_id}");
            // Unfenced: a failure handler holds no lease, and only fills a gap.
            self.schedule_state(id, self.inner.config.standby_delay, "standby", &key, 0)
                .await?;
            tracing::info!(
                deployment = id,
                "a deployment that serves nothing and waits for nothing goes to standby"
            );
        }
        Ok(())
    }

    /// For a failure handler: settles `deployments` and every deployment a commit of the
    /// failed workflow replaced as live (a commit that went through unjournaled, before the
    /// run that failed decided again).
    pub(crate) async fn settle_failed(
        &self,
        deployments: &[&str],
        workflow_id: &str,
    ) -> Result<(), StepError> {
        let replaced = self
            .inner
            .store
            .replaced_by_commit(workflow_id)
            .await
            .step_err()?;
        let mut all = deployments.to_vec();
        all.extend(replaced.iter().map(String::as_str));
        self.settle(&all, workflow_id).await
    }

    /// The post-commit steps: `schedule_standby` of `superseded` (the deployment this commit
    /// replaced, if it goes to standby; keyed by `key`, so a repeat schedules nothing new),
    /// then `settle_superseded` of what earlier, unjournaled runs of the commit replaced.
    pub(crate) async fn supersede(
        &self,
        ctx: &mut Context,
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
        if committed.replaced_earlier.is_empty() {
            return Ok(());
        }
        let wf = ctx.workflow_id().to_string();
        let earlier: Vec<&str> = committed
            .replaced_earlier
            .iter()
            .map(String::as_str)
            .collect();
        ctx.step("settle_superseded", || self.settle(&earlier, &wf))
            .await
    }
}
