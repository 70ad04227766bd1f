//! The Archive workflow (`slipway.deploy.v1.archive_deployment`): under the project's lease,
//! so that no deploy, rollback, promote or wake can make the deployment serve meanwhile, its
//! actor archives it at once (desired state `archived`, instances stopped, its desired
//! documents removed; agents remove their reports), then its routes are removed (the edge
//! answers 404 for them). A deployment that serves traffic is refused before anything is
//! written.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use slipway_workflow::{Context, StepError, StepResultExt, Workflow, WorkflowError};

use crate::{
    clients::{actor::Fence, routing::Routing},
    workflows::handover::Handover,
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArchiveInput {
    pub project_id: String,
    pub deployment_id: String,
}

/// The Archive workflow and what it needs.
pub struct Archive {
    pub(crate) handover: Handover,
    pub(crate) routing: Routing,
}

impl Workflow for Archive {
    const KIND: &'static str = "archive";
    type Input = ArchiveInput;
    type Output = ();

    async fn run(&self, ctx: &mut Context, input: ArchiveInput) -> Result<(), WorkflowError> {
        let id = input.deployment_id.as_str();
        let token = self.handover.lease_project(ctx, &input.project_id).await?;
        ctx.step("check", || async {
            if self.handover.store.serves_traffic(id).await.step_err()? {
                return Err(StepError::terminal(serving(id)));
            }
            Ok(())
        })
        .await?;
        // Archived first: routing removes only the routes of a deployment that is not
        // running (a wake cannot race this: it takes the same lease).
        let key = format!("archive.{}", ctx.workflow_id());
        let _: String = ctx
            .step("archive", || {
                self.handover.actor.schedule(
                    id,
                    Duration::ZERO,
                    "archived",
                    &key,
                    Fence::Lease(token),
                )
            })
            .await?;
        let _: usize = ctx
            .step("remove_routes", || {
                self.routing.remove_routes(&input.project_id, id)
            })
            .await?;
        tracing::info!(deployment_id = id, "archived");
        Ok(())
    }
}

/// Why a deployment that serves traffic is not archived.
pub(crate) fn serving(deployment_id: &str) -> String {
    format!(
        "deployment {deployment_id} serves traffic (it is live, or a live or environment route points at it): deploy or promote another deployment before archiving it"
    )
}
