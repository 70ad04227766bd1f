//! The `slipway-deploy` micro service: its endpoints and `get_workflow`.

use std::time::Duration;

use slipway_core::{ids, ApiError};
use slipway_nats::{Call, Micro};
use slipway_proto::v1::{
    GetWorkflowReply, GetWorkflowRequest, Workflow, WorkflowRunReply, WorkflowStep,
};
use slipway_workflow::{Engine, Status, WorkflowRecord};

use slipway_store::Store;

use crate::{
    clients::events::{scope_of, Events},
    SERVICE_NAME,
};

pub(crate) mod cron;
mod deployments;
mod operations;
mod projects;
mod variables;

pub(crate) use deployments::restart_orphans;

/// The service's handlers: the store they read and validate against, the engine that runs
/// the workflows, and the event publisher (a deployment's `created` event).
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) store: Store,
    pub(crate) engine: Engine,
    pub(crate) events: Events,
    /// Apex of generated domains, which environment creation claims.
    pub(crate) apex_domain: String,
    /// The agents' desired documents (scaling writes them).
    pub(crate) desired: async_nats::jetstream::kv::Store,
    /// Whether git sources are built here (`SLIPWAY_BUILDER_DOCKER_HOST`).
    pub(crate) builds: bool,
}

pub(crate) async fn serve(client: &async_nats::Client, o: Api) -> Result<Micro, async_nats::Error> {
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
            slipway_core::subjects::project::CREATE_WORKSPACE,
            |o, c| async move { o.create_workspace(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "create_project",
            slipway_core::subjects::project::CREATE_PROJECT,
            |o, c| async move { o.create_project(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "create_environment",
            slipway_core::subjects::project::CREATE_ENVIRONMENT,
            |o, c| async move { o.create_environment(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "get_project",
            slipway_core::subjects::project::GET_PROJECT,
            |o, c| async move { o.get_project(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "list_workspaces",
            slipway_core::subjects::project::LIST_WORKSPACES,
            |o, c| async move { o.list_workspaces(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "list_projects",
            slipway_core::subjects::project::LIST_PROJECTS,
            |o, c| async move { o.list_projects(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "scale_environment",
            slipway_core::subjects::project::SCALE_ENVIRONMENT,
            |o, c| async move { o.scale_environment(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "set_environment_variables",
            slipway_core::subjects::project::SET_VARIABLES,
            |o, c| async move { o.set_variables(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "unset_environment_variables",
            slipway_core::subjects::project::UNSET_VARIABLES,
            |o, c| async move { o.unset_variables(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "list_environment_variables",
            slipway_core::subjects::project::LIST_VARIABLES,
            |o, c| async move { o.list_variables(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "create_deployment",
            slipway_core::subjects::deploy::CREATE_DEPLOYMENT,
            |o, c| async move { o.create_deployment(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "get_deployment",
            slipway_core::subjects::deploy::GET_DEPLOYMENT,
            |o, c| async move { o.get_deployment(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "list_deployments",
            slipway_core::subjects::deploy::LIST_DEPLOYMENTS,
            |o, c| async move { o.list_deployments(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "rollback",
            slipway_core::subjects::deploy::ROLLBACK,
            |o, c| async move { o.rollback(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "promote",
            slipway_core::subjects::deploy::PROMOTE,
            |o, c| async move { o.promote(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "wake_deployment",
            slipway_core::subjects::deploy::WAKE_DEPLOYMENT,
            |o, c| async move { o.wake_deployment(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "archive_deployment",
            slipway_core::subjects::deploy::ARCHIVE_DEPLOYMENT,
            |o, c| async move { o.archive_deployment(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "scale_down_idle_previews",
            slipway_core::subjects::deploy::SCALE_DOWN_IDLE_PREVIEWS,
            |o, c| async move { o.scale_down_idle_previews(c).await },
        )
        .await?;
    micro
        .serve(
            o,
            "get_workflow",
            slipway_core::subjects::deploy::GET_WORKFLOW,
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
                status: s.status.as_str().into(),
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

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;

/// A listing's page size: `limit`, 50 when unset or 0, at most 500.
pub(crate) fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None | Some(0) => Ok(DEFAULT_PAGE),
        Some(n) if n > MAX_PAGE => Err(ApiError::invalid_argument(format!(
            "limit must be at most {MAX_PAGE}"
        ))),
        Some(n) => Ok(n),
    }
}

/// A page read with `limit + 1` rows: the first `limit`, and the cursor of the next page
/// when there was one more.
pub(crate) fn next_page<T>(
    mut rows: Vec<T>,
    limit: u32,
    id: impl Fn(&T) -> &String,
) -> (Vec<T>, Option<String>) {
    if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        let cursor = rows.last().map(|r| id(r).clone());
        (rows, cursor)
    } else {
        (rows, None)
    }
}

/// API.md: the reply comes when the workflow has finished or `wait_ms` (default 30 s) has
/// passed.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
pub const MAX_WAIT_MS: i64 = 10 * 60 * 1000;

pub fn wait_of(wait_ms: Option<i64>) -> Result<Duration, ApiError> {
    match wait_ms {
        None => Ok(DEFAULT_WAIT),
        Some(ms) if (0..=MAX_WAIT_MS).contains(&ms) => Ok(Duration::from_millis(ms as u64)),
        Some(ms) => Err(ApiError::invalid_argument(format!(
            "wait_ms must be 0 to {MAX_WAIT_MS}, not {ms}"
        ))),
    }
}

impl Api {
    /// Starts workflow `W` under a new id and answers when it has finished or `wait` has
    /// passed (then `status: running`, and `get_workflow` follows it).
    pub(crate) async fn run_and_wait<W: slipway_workflow::Workflow>(
        &self,
        key: &str,
        input: &W::Input,
        events_of: Option<&str>,
        wait: Duration,
    ) -> Result<(WorkflowRunReply, WorkflowRecord), ApiError> {
        let workflow_id = ids::new(ids::WORKFLOW);
        self.run_and_wait_as::<W>(&workflow_id, key, input, events_of, wait)
            .await
    }

    /// As [`run_and_wait`](Self::run_and_wait), as workflow `workflow_id` (joined if it
    /// exists already).
    pub(crate) async fn run_and_wait_as<W: slipway_workflow::Workflow>(
        &self,
        workflow_id: &str,
        key: &str,
        input: &W::Input,
        events_of: Option<&str>,
        wait: Duration,
    ) -> Result<(WorkflowRunReply, WorkflowRecord), ApiError> {
        let scope = match events_of {
            Some(id) => Some(scope_of(&self.store.deployment(id).await?)),
            None => None,
        };
        let workflow_id = workflow_id.to_string();
        self.engine
            .start::<W>(&workflow_id, key, input, scope)
            .await?;
        let record = self.engine.wait(&workflow_id, wait).await?;
        let status = match record.status {
            Status::Completed => "completed",
            Status::Failed => "failed",
            _ => "running",
        };
        let reply = WorkflowRunReply {
            workflow_id,
            status: status.into(),
            ..Default::default()
        };
        Ok((reply, record))
    }

    async fn get_workflow(
        &self,
        call: Call<GetWorkflowRequest>,
    ) -> Result<GetWorkflowReply, ApiError> {
        let id = &call.request.workflow_id;
        ids::validate(ids::WORKFLOW, "workflow_id", id)?;
        let record = self
            .engine
            .get(id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("workflow {id} not found")))?;
        Ok(GetWorkflowReply {
            workflow: Some(workflow_message(record)),
        })
    }
}
