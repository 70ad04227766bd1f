//! The Wake workflow (`slipway.deploy.v1.wake_deployment`, what an edge calls on the first
//! request for a deployment in standby): under the project's lease, clear the deployment's
//! pending transition, set it running and wait until its instances are healthy (the steps of
//! [`Handover::wake`]). Its id is derived from the deployment and its topology version, so
//! concurrent wakes of one standby are one workflow, and the next standby gets a new one. A
//! wake that fails, or wakes a deployment that serves nothing, puts it back on the way to
//! standby.

use serde::{Deserialize, Serialize};
use slipway_workflow::{Context, Failure, StepError, Workflow, WorkflowError};

use slipway_store::Among;

use crate::{clients::actor::Fence, workflows::handover::Handover};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WakeInput {
    pub project_id: String,
    pub deployment_id: String,
}

/// The Wake workflow and what it needs.
pub struct Wake {
    pub(crate) handover: Handover,
}

/// The one workflow of waking `deployment_id` from the standby its topology `version` records.
pub(crate) fn workflow_id(deployment_id: &str, version: i64) -> String {
    format!("wf_wake_{deployment_id}_{version}")
}

impl Workflow for Wake {
    const KIND: &'static str = "wake";
    type Input = WakeInput;
    type Output = ();

    async fn run(&self, ctx: &mut Context, input: WakeInput) -> Result<(), WorkflowError> {
        let id = input.deployment_id.as_str();
        let token = self.handover.lease_project(ctx, &input.project_id).await?;
        self.handover.wake(ctx, id, token).await?;
        tracing::info!(deployment_id = id, "woken");
        // Woken but serving nothing (a superseded deployment asked for by its own domains):
        // back to standby after the standby delay, unless traffic moves to it meanwhile.
        let key = format!("settle.{}", ctx.workflow_id());
        let ids = [input.deployment_id.clone()];
        let _: Vec<String> = ctx
            .step("settle", || {
                self.handover
                    .settle(Among::Ids(&ids), &key, Fence::Lease(token))
            })
            .await?;
        Ok(())
    }

    async fn on_failure(&self, input: &WakeInput, failure: &Failure<'_>) -> Result<(), StepError> {
        self.handover
            .settle_failed(&[&input.deployment_id], failure.workflow_id)
            .await
    }
}
