//! `create_deployment`, `get_deployment`, `list_deployments`.

use std::time::Duration;

use prost::Message;
use sha2::{Digest, Sha256};
use slipway_core::{
    ids,
    krane::InstanceStatus,
    state::{Health, RegionRuns},
    time::now_ms,
    ApiError,
};
use slipway_nats::Call;
use slipway_proto::v1::{
    CreateDeploymentReply, CreateDeploymentRequest, Deployment as DeploymentMessage,
    GetDeploymentReply, GetDeploymentRequest, Instance as InstanceMessage, ListDeploymentsReply,
    ListDeploymentsRequest,
};
use slipway_store::{Deployment, Idempotency, NewDeployment};
use tracing::Instrument;

use crate::{
    api::{next_page, page_limit, Api},
    clients::events::scope_of,
    workflows::deploy::{Deploy, DeployInput},
};

pub const MAX_COMMIT_MESSAGE: usize = 10 * 1024;
pub const MAX_AUTHOR_HANDLE: usize = 256;
pub const MAX_AVATAR_URL: usize = 512;
pub const MAX_FIELD: usize = 256;
pub const MAX_IMAGE: usize = 4096;
pub const MAX_COMMAND_ARGS: usize = 256;
/// A commit timestamp may be at most this far in the future (clock skew).
pub const MAX_FUTURE_MS: i64 = 60 * 60 * 1000;
/// Below this, a "millisecond" timestamp is really seconds (1e12 ms is September 2001).
const SECONDS_NOT_MILLIS: i64 = 1_000_000_000_000;

fn too_long(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max {
        return Err(ApiError::invalid_argument(format!(
            "{field} is longer than {max} bytes"
        )));
    }
    Ok(())
}

fn validate_sha(field: &str, sha: &str) -> Result<(), ApiError> {
    if sha.is_empty() {
        return Ok(());
    }
    if sha.len() < 7 || sha.len() > 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ApiError::invalid_argument(format!(
            "{field} {sha:?} is not a commit sha (7 to 64 hex digits)"
        )));
    }
    Ok(())
}

/// A path inside the repository: relative, without `..`.
fn relative_path(field: &str, path: &str) -> Result<(), ApiError> {
    too_long(field, path, MAX_FIELD)?;
    if path.starts_with('/') || path.split('/').any(|part| part == "..") || path.contains('\0') {
        return Err(ApiError::invalid_argument(format!(
            "{field} {path:?} must be a path inside the repository (relative, no '..')"
        )));
    }
    Ok(())
}

/// Everything about the request that needs no database.
fn validate(req: &CreateDeploymentRequest, now: i64) -> Result<(), ApiError> {
    ids::validate(ids::PROJECT, "project_id", &req.project_id)?;
    if req.environment_slug.is_empty() {
        return Err(ApiError::invalid_argument("environment_slug is required"));
    }
    too_long("environment_slug", &req.environment_slug, MAX_FIELD)?;
    match (&req.docker_image, &req.git_source) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_argument(
                "give exactly one of docker_image and git_source, not both",
            ))
        }
        (None, None) => {
            return Err(ApiError::invalid_argument(
                "give exactly one of docker_image and git_source",
            ))
        }
        (Some(image), None) => {
            if image.trim().is_empty() {
                return Err(ApiError::invalid_argument("docker_image is empty"));
            }
            too_long("docker_image", image, MAX_IMAGE)?;
        }
        (None, Some(source)) => {
            let repository = source.repository.trim();
            if repository.is_empty() {
                return Err(ApiError::invalid_argument(
                    "git_source.repository is required",
                ));
            }
            if repository.starts_with('-') {
                return Err(ApiError::invalid_argument(
                    "git_source.repository must not start with '-'",
                ));
            }
            too_long("git_source.repository", repository, MAX_IMAGE)?;
            if source.commit_sha.is_empty() {
                return Err(ApiError::invalid_argument(
                    "git_source.commit_sha is required: a build is of exactly one commit",
                ));
            }
            validate_sha("git_source.commit_sha", &source.commit_sha)?;
            relative_path("git_source.context_path", &source.context_path)?;
            relative_path("git_source.dockerfile_path", &source.dockerfile_path)?;
        }
    }
    if let Some(branch) = &req.branch {
        too_long("branch", branch, MAX_FIELD)?;
    }
    if let Some(commit) = &req.git_commit {
        validate_sha("git_commit.commit_sha", &commit.commit_sha)?;
        too_long(
            "git_commit.commit_message",
            &commit.commit_message,
            MAX_COMMIT_MESSAGE,
        )?;
        too_long(
            "git_commit.author_handle",
            &commit.author_handle,
            MAX_AUTHOR_HANDLE,
        )?;
        too_long(
            "git_commit.author_avatar_url",
            &commit.author_avatar_url,
            MAX_AVATAR_URL,
        )?;
        let ts = commit.timestamp_ms;
        if ts < 0 {
            return Err(ApiError::invalid_argument(
                "git_commit.timestamp_ms must not be negative",
            ));
        }
        if ts > 0 && ts < SECONDS_NOT_MILLIS {
            return Err(ApiError::invalid_argument(format!(
                "git_commit.timestamp_ms {ts} looks like seconds; it must be Unix milliseconds"
            )));
        }
        if ts > now + MAX_FUTURE_MS {
            return Err(ApiError::invalid_argument(format!(
                "git_commit.timestamp_ms {ts} is more than 1 h in the future"
            )));
        }
    }
    too_long("key_auth_id", &req.key_auth_id, MAX_FIELD)?;
    too_long("idempotency_key", &req.idempotency_key, MAX_FIELD)?;
    if req.command.len() > MAX_COMMAND_ARGS {
        return Err(ApiError::invalid_argument(format!(
            "command has more than {MAX_COMMAND_ARGS} arguments"
        )));
    }
    for arg in &req.command {
        too_long("command argument", arg, MAX_IMAGE)?;
    }
    Ok(())
}

/// A deployment as the API tells it: its record, its instances as last reported, and its
/// health from those (against its topology's replicas).
pub fn deployment_message(
    d: Deployment,
    topology: &[slipway_store::Topology],
    instances: Vec<slipway_store::Instance>,
) -> DeploymentMessage {
    let regions = topology.iter().map(|t| {
        let here = instances.iter().filter(|i| i.region == t.region);
        RegionRuns {
            wanted: t.replicas,
            running: here
                .clone()
                .filter(|i| i.status == InstanceStatus::Running)
                .count() as u32,
            crash_looping: here.clone().any(|i| i.crash_looping),
        }
    });
    let health = Health::of(d.status, d.desired_state, regions);
    DeploymentMessage {
        id: d.id,
        workspace_id: d.workspace_id,
        project_id: d.project_id,
        environment_id: d.environment_id,
        environment_slug: d.environment_slug,
        status: d.status.to_string(),
        desired_state: d.desired_state.to_string(),
        image: d.image,
        git_branch: d.git_branch,
        git_commit_sha: d.git_commit_sha,
        key_auth_id: d.key_auth_id,
        openapi_spec: d.openapi_spec,
        domains: d.domains,
        instances: instances
            .into_iter()
            .map(|i| InstanceMessage {
                id: i.id,
                region: i.region,
                address: i.address,
                status: i.status.to_string(),
                message: i.message,
                restarts: i.restarts,
                crash_looping: i.crash_looping,
            })
            .collect(),
        failure_reason: d.failure_reason,
        created_at_ms: d.created_at_ms,
        updated_at_ms: d.updated_at_ms,
        health: health.map(|h| h.to_string()).unwrap_or_default(),
    }
}

impl Api {
    #[tracing::instrument(skip_all, fields(project_id = %call.request.project_id, deployment_id = tracing::field::Empty, workflow_id = tracing::field::Empty))]
    pub(crate) async fn create_deployment(
        &self,
        call: Call<CreateDeploymentRequest>,
    ) -> Result<CreateDeploymentReply, ApiError> {
        let req = call.request;
        let now = now_ms();
        validate(&req, now)?;
        let store = &self.store;
        let project = store.project(&req.project_id).await?;
        let environment = store
            .environment_by_slug(&project.id, &req.environment_slug)
            .await?;
        if req.git_source.is_some() && !self.builds {
            return Err(ApiError::failed_precondition(
                "git sources need a builder, and none is configured (SLIPWAY_BUILDER_DOCKER_HOST); deploy a docker_image",
            ));
        }

        let commit = req.git_commit.clone().unwrap_or_default();
        let branch = match req.branch.as_deref().map(str::trim) {
            Some(b) if !b.is_empty() => b.to_string(),
            _ => project.default_branch.clone(),
        };
        let new = NewDeployment {
            id: ids::new(ids::DEPLOYMENT),
            environment_id: environment.id.clone(),
            image: req.docker_image.clone().unwrap_or_default(),
            git_branch: branch,
            git_commit_sha: commit.commit_sha.to_ascii_lowercase(),
            git_commit_message: commit.commit_message,
            git_commit_author_handle: commit.author_handle,
            git_commit_author_avatar_url: commit.author_avatar_url,
            git_commit_timestamp_ms: (commit.timestamp_ms > 0).then_some(commit.timestamp_ms),
            key_auth_id: req.key_auth_id.clone(),
            command: req.command.clone(),
            env: Default::default(),
            git_source: req.git_source.as_ref().map(|s| slipway_store::GitSource {
                repository: s.repository.trim().to_string(),
                commit_sha: s.commit_sha.to_ascii_lowercase(),
                context_path: s.context_path.trim_matches('/').to_string(),
                dockerfile_path: s.dockerfile_path.clone(),
            }),
            workflow_id: Some(ids::new(ids::WORKFLOW)),
        };
        let idempotency = (!req.idempotency_key.is_empty()).then(|| Idempotency {
            key: req.idempotency_key.clone(),
            request_hash: Sha256::digest(req.encode_to_vec())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        });
        let created = store
            .create_deployment(&new, idempotency.as_ref(), now)
            .await?;
        let deployment = created.deployment;
        let workflow_id = deployment.workflow_id.clone().unwrap_or_default();
        let span = tracing::Span::current();
        span.record("deployment_id", deployment.id.as_str());
        span.record("workflow_id", workflow_id.as_str());

        // Also for a repeat: starting is idempotent, and this heals a first call that wrote
        // the deployment but could not start its workflow.
        self.start_deploy(&deployment).await?;
        if created.created {
            #[derive(serde::Serialize)]
            struct CreatedEvent<'a> {
                workflow_id: &'a str,
                image: &'a str,
                git_branch: &'a str,
                git_commit_sha: &'a str,
            }
            let detail = CreatedEvent {
                workflow_id: &workflow_id,
                image: &deployment.image,
                git_branch: &deployment.git_branch,
                git_commit_sha: &deployment.git_commit_sha,
            };
            if let Err(e) = self
                .events
                .publish(&scope_of(&deployment), "created", "0", detail)
                .await
            {
                tracing::warn!(error = %e, "created event not published");
            }
            tracing::info!(image = %deployment.image, environment = %deployment.environment_slug, "deployment created");
        }
        Ok(CreateDeploymentReply {
            deployment_id: deployment.id,
            workflow_id,
            status: "pending".into(),
        })
    }

    async fn start_deploy(&self, deployment: &Deployment) -> Result<(), ApiError> {
        let Some(workflow_id) = &deployment.workflow_id else {
            return Ok(());
        };
        self.engine
            .start::<Deploy>(
                workflow_id,
                &deployment.id,
                &DeployInput {
                    deployment_id: deployment.id.clone(),
                },
                Some(scope_of(deployment)),
            )
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "deployment written, its workflow not started");
                ApiError::unavailable(format!(
                    "deployment {} written but its workflow could not start ({e}); retry with the same idempotency_key",
                    deployment.id
                ))
            })
    }

    pub(crate) async fn get_deployment(
        &self,
        call: Call<GetDeploymentRequest>,
    ) -> Result<GetDeploymentReply, ApiError> {
        let id = &call.request.deployment_id;
        ids::validate(ids::DEPLOYMENT, "deployment_id", id)?;
        Ok(GetDeploymentReply {
            deployment: Some(self.deployment_now(id).await?),
        })
    }

    /// A deployment with its instances as agents report them now.
    pub(crate) async fn deployment_now(&self, id: &str) -> Result<DeploymentMessage, ApiError> {
        let deployment = self.store.deployment(id).await?;
        let topology = self.store.topology(id).await?;
        let instances = self.store.instances(id).await?;
        Ok(deployment_message(deployment, &topology, instances))
    }

    pub(crate) async fn list_deployments(
        &self,
        call: Call<ListDeploymentsRequest>,
    ) -> Result<ListDeploymentsReply, ApiError> {
        let req = call.request;
        ids::validate(ids::PROJECT, "project_id", &req.project_id)?;
        if let Some(cursor) = &req.cursor {
            ids::validate(ids::DEPLOYMENT, "cursor", cursor)?;
        }
        let limit = page_limit(req.limit)?;
        let store = &self.store;
        store.project(&req.project_id).await?;
        let page = store
            .list_deployments(
                &req.project_id,
                req.environment_slug.as_deref().filter(|s| !s.is_empty()),
                req.cursor.as_deref(),
                limit + 1,
            )
            .await?;
        let (page, next_cursor) = next_page(page, limit, |d| &d.id);
        let mut deployments = Vec::with_capacity(page.len());
        for d in page {
            let topology = store.topology(&d.id).await?;
            let instances = store.instances(&d.id).await?;
            let mut d = deployment_message(d, &topology, instances);
            // Large and rarely wanted in a listing: get_deployment has it.
            d.openapi_spec = None;
            deployments.push(d);
        }
        Ok(ListDeploymentsReply {
            deployments,
            next_cursor,
        })
    }
}

/// Starts the workflow of any deployment still `pending` a while after it was written and
/// whose workflow no worker has picked up: the process that wrote it died before it could
/// start the workflow, or before it published the invocation (and its caller gave up), or
/// the invocation was lost. A workflow without a record is started; one whose record no run
/// has touched yet gets its invocation again under a fresh message id (a second `start` would
/// fall in the stream's duplicate window and never be delivered).
pub(crate) async fn restart_orphans(api: Api) {
    const AGE_MS: i64 = 60_000;
    loop {
        tokio::time::sleep(Duration::from_secs(60)).await;
        let pending = api.store.pending_deployments(now_ms() - AGE_MS).await;
        let pending = match pending {
            Ok(list) => list,
            Err(e) => {
                tracing::debug!(error = %e, "cannot look for orphaned deployments");
                continue;
            }
        };
        for deployment in pending {
            let Some(workflow_id) = &deployment.workflow_id else {
                continue;
            };
            let span = tracing::warn_span!("orphan", deployment_id = %deployment.id, %workflow_id);
            async {
            match api.engine.get(workflow_id).await {
                Ok(None) => {
                    tracing::warn!("starting the workflow of an orphaned pending deployment");
                    let _ = api.start_deploy(&deployment).await;
                }
                Ok(Some(record)) if record.status == slipway_workflow::Status::Pending => {
                    tracing::warn!("invoking again the workflow of a pending deployment no worker has run");
                    if let Err(e) = api.engine.redeliver::<Deploy>(workflow_id).await {
                        tracing::warn!(error = %e, "cannot invoke the workflow again; next sweep");
                    }
                }
                Ok(Some(_)) | Err(_) => {}
            }
            }
            .instrument(span)
            .await;
        }
    }
}
