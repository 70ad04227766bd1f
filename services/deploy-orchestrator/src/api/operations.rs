//! `rollback`, `promote`, `wake_deployment`, `archive_deployment` and
//! `scale_down_idle_previews`: validated at once (a 4xx writes
//! nothing), then run as workflows and awaited up to `wait_ms`.

use slipway_core::{ids, state::DesiredState, ApiError};
use slipway_nats::Call;
use slipway_proto::v1::{
    ArchiveDeploymentReply, ArchiveDeploymentRequest, PromoteRequest, RollbackRequest,
    ScaleDownIdlePreviewsRequest, WakeDeploymentRequest, WorkflowRunReply,
};

use crate::{
    api::{wait_of, Api},
    workflows::{
        archive::{self, Archive, ArchiveInput},
        promote::{self, Promote, PromoteInput},
        rollback::{self, Rollback, RollbackInput},
        scale_down::{ScaleDown, ScaleDownInput, Swept},
        wake::{self, Wake, WakeInput},
    },
};

impl Api {
    pub(crate) async fn rollback(
        &self,
        call: Call<RollbackRequest>,
    ) -> Result<WorkflowRunReply, ApiError> {
        let req = call.request;
        let wait = wait_of(req.wait_ms)?;
        let (source, target) = (&req.source_deployment_id, &req.target_deployment_id);
        let plan = rollback::check(&self.store, source, target).await?;
        let input = RollbackInput {
            project_id: plan.project_id.clone(),
            source: req.source_deployment_id.clone(),
            target: req.target_deployment_id.clone(),
        };
        // Its steps are told on the target's events.
        let (reply, _) = self
            .run_and_wait::<Rollback>(
                &plan.project_id,
                &input,
                Some(&req.target_deployment_id),
                wait,
            )
            .await?;
        Ok(reply)
    }

    pub(crate) async fn promote(
        &self,
        call: Call<PromoteRequest>,
    ) -> Result<WorkflowRunReply, ApiError> {
        let req = call.request;
        let wait = wait_of(req.wait_ms)?;
        let (project_id, _) = promote::check(&self.store, &req.target_deployment_id).await?;
        let input = PromoteInput {
            project_id: project_id.clone(),
            target: req.target_deployment_id.clone(),
        };
        // Its steps are told on the target's events.
        let (reply, _) = self
            .run_and_wait::<Promote>(&project_id, &input, Some(&req.target_deployment_id), wait)
            .await?;
        Ok(reply)
    }

    pub(crate) async fn scale_down_idle_previews(
        &self,
        call: Call<ScaleDownIdlePreviewsRequest>,
    ) -> Result<WorkflowRunReply, ApiError> {
        let wait = wait_of(call.request.wait_ms)?;
        let input = ScaleDownInput {
            trigger: "request".into(),
        };
        let (mut reply, record) = self
            .run_and_wait::<ScaleDown>("scale_down", &input, None, wait)
            .await?;
        if record.status == slipway_workflow::Status::Completed {
            let swept: Swept = record
                .output()
                .map_err(|e| ApiError::internal(format!("unreadable workflow output: {e}")))?;
            reply.scaled_down = swept.scaled_down;
            reply.scale_down_skipped = swept.scale_down_skipped;
            reply.standby = swept.standby;
            reply.archived = swept.archived;
        }
        Ok(reply)
    }

    /// Wakes a deployment in standby (at once `completed`, with no workflow, for one that
    /// runs); concurrent wakes of one standby join one workflow.
    pub(crate) async fn wake_deployment(
        &self,
        call: Call<WakeDeploymentRequest>,
    ) -> Result<WorkflowRunReply, ApiError> {
        let req = call.request;
        let wait = wait_of(req.wait_ms)?;
        let id = &req.deployment_id;
        ids::validate(ids::DEPLOYMENT, "deployment_id", id)?;
        let d = self.store.deployment(id).await?;
        match d.desired_state {
            DesiredState::Running => {
                return Ok(WorkflowRunReply {
                    workflow_id: String::new(),
                    status: "completed".into(),
                    ..Default::default()
                })
            }
            DesiredState::Archived => {
                return Err(ApiError::failed_precondition(format!(
                    "deployment {id} is archived: it is not woken"
                )))
            }
            DesiredState::Standby => {}
        }
        let version = self
            .store
            .topology(id)
            .await?
            .iter()
            .map(|t| t.version)
            .max()
            .unwrap_or(0);
        let input = WakeInput {
            project_id: d.project_id.clone(),
            deployment_id: id.clone(),
        };
        let workflow_id = wake::workflow_id(id, version);
        let (reply, _) = self
            .run_and_wait_as::<Wake>(&workflow_id, &d.project_id, &input, Some(id), wait)
            .await?;
        Ok(reply)
    }

    pub(crate) async fn archive_deployment(
        &self,
        call: Call<ArchiveDeploymentRequest>,
    ) -> Result<ArchiveDeploymentReply, ApiError> {
        let req = call.request;
        let wait = wait_of(req.wait_ms)?;
        let id = &req.deployment_id;
        ids::validate(ids::DEPLOYMENT, "deployment_id", id)?;
        let d = self.store.deployment(id).await?;
        let (workflow_id, status) = if d.desired_state == DesiredState::Archived {
            (String::new(), "completed".to_string())
        } else {
            // Refused at once here; the workflow checks again under the project's lease.
            if self.store.serves_traffic(id).await? {
                return Err(ApiError::failed_precondition(archive::serving(id)));
            }
            let input = ArchiveInput {
                project_id: d.project_id.clone(),
                deployment_id: id.clone(),
            };
            let (reply, record) = self
                .run_and_wait::<Archive>(&d.project_id, &input, Some(id), wait)
                .await?;
            if reply.status == "failed" {
                let why = record.error.unwrap_or_default();
                return Err(ApiError::failed_precondition(format!(
                    "deployment {id} was not archived: {why}"
                )));
            }
            (reply.workflow_id, reply.status)
        };
        let deployment = self.deployment_now(id).await?;
        Ok(ArchiveDeploymentReply {
            deployment: Some(deployment),
            workflow_id,
            status,
        })
    }
}
