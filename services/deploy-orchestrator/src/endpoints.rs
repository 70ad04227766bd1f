//! The `slipway-deploy` micro service: its endpoints and `get_workflow`.

use slipway_core::{ids, ApiError};
use slipway_nats::{Call, Micro};
use slipway_proto::v1::{GetWorkflowReply, GetWorkflowRequest, Workflow, WorkflowStep};
use slipway_workflow::WorkflowRecord;

use crate::{Orchestrator, SERVICE_NAME};

pub async fn serve(
    client: &async_nats::Client,
    o: Orchestrator,
) -> Result<Micro, async_nats::Error> {
    let micro = Micro::start(
        client,
        SERVICE_NAME,
        env!("CARGO_PKG_VERSION"),
        "Deploy orchestrator: projects, deployments and the durable workflows that run them",
    )
    .await?;
    let o = &o;
    micro
        .serve(
            o,
            "create_workspace",
            "slipway.project.v1.create_workspace",
            |o, c| async move { o.create_workspace(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "create_project",
            "slipway.project.v1.create_project",
            |o, c| async move { o.create_project(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "create_environment",
            "slipway.project.v1.create_environment",
            |o, c| async move { o.create_environment(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "get_project",
            "slipway.project.v1.get_project",
            |o, c| async move { o.get_project(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "create_deployment",
            "slipway.deploy.v1.create_deployment",
            |o, c| async move { o.create_deployment(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "get_deployment",
            "slipway.deploy.v1.get_deployment",
            |o, c| async move { o.get_deployment(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "list_deployments",
            "slipway.deploy.v1.list_deployments",
            |o, c| async move { o.list_deployments(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "get_workflow",
            "slipway.deploy.v1.get_workflow",
            |o, c| async move { o.get_workflow(c).await },
        )
        .await?;
    Ok(micro)
}

pub fn workflow_message(r: WorkflowRecord) -> Workflow {
    Workflow {
        id: r.id,
        kind: r.kind,
        status: r.status.as_str().to_string(),
        key: r.key,
        steps: r
            .steps
            .into_iter()
            .map(|s| WorkflowStep {
                name: s.name,
                status: s.status,
                attempts: s.attempts,
                started_at_ms: s.started_at_ms,
                finished_at_ms: s.finished_at_ms,
            })
            .collect(),
        error: r.error,
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
    }
}

impl Orchestrator {
    async fn get_workflow(
        &self,
        call: Call<GetWorkflowRequest>,
    ) -> Result<GetWorkflowReply, ApiError> {
        let id = &call.request.workflow_id;
        ids::validate(ids::WORKFLOW, "workflow_id", id)?;
        let record = self
            .engine()
            .get(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("workflow {id} not found")))?;
        Ok(GetWorkflowReply {
            workflow: Some(workflow_message(record)),
        })
    }
}
