//! `slipway.project.v1.*`: workspaces, projects and environments.

use slipway_core::{
    domains::{self, DomainInput, SlugKind},
    ids,
    time::now_ms,
    ApiError,
};
use slipway_nats::Call;
use slipway_proto::v1::{
    CreateEnvironmentReply, CreateEnvironmentRequest, CreateProjectReply, CreateProjectRequest,
    CreateWorkspaceReply, CreateWorkspaceRequest, Environment as EnvironmentMessage,
    GetProjectReply, GetProjectRequest, ListProjectsReply, ListProjectsRequest,
    ListWorkspacesReply, ListWorkspacesRequest, Project as ProjectMessage, ScaleEnvironmentReply,
    ScaleEnvironmentRequest, Workspace as WorkspaceMessage,
};
use slipway_store::{Environment, Limits, Project, Shape, Workspace};

use crate::api::{next_page, page_limit, Api};

pub const MAX_NAME: usize = 256;
pub const MAX_REPLICAS: u32 = 100;
pub const MAX_SENTINEL_CONFIG: usize = 64 * 1024;

/// Slugs end up in DNS labels: lower-case letters, digits and inner dashes, at most 63.
pub fn validate_slug(field: &str, slug: &str) -> Result<(), ApiError> {
    let ok = !slug.is_empty()
        && slug.len() <= 63
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-')
        && !slug.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_argument(format!(
            "{field} {slug:?} must be 1 to 63 lower-case letters, digits or inner dashes"
        )))
    }
}

/// A slug of a workspace, project or environment: a DNS label that generated domains can
/// be made of without ambiguity ([`domains::reserved_slug`]).
fn validate_name_slug(kind: SlugKind, slug: &str) -> Result<(), ApiError> {
    validate_slug("slug", slug)?;
    match domains::reserved_slug(kind, slug) {
        Some(why) => Err(ApiError::invalid_argument(format!("slug {why}"))),
        None => Ok(()),
    }
}

fn validate_regions<'a>(
    regions: impl IntoIterator<Item = (&'a String, &'a u32)>,
) -> Result<(), ApiError> {
    for (region, replicas) in regions {
        validate_slug("region", region)?;
        if *replicas == 0 || *replicas > MAX_REPLICAS {
            return Err(ApiError::invalid_argument(format!(
                "replicas of region {region} must be 1 to {MAX_REPLICAS}, not {replicas}"
            )));
        }
    }
    Ok(())
}

fn validate_len(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max {
        return Err(ApiError::invalid_argument(format!(
            "{field} is longer than {max} bytes"
        )));
    }
    Ok(())
}

fn name_or_slug(name: &str, slug: &str) -> Result<String, ApiError> {
    validate_len("name", name, MAX_NAME)?;
    Ok(if name.trim().is_empty() {
        slug.to_string()
    } else {
        name.to_string()
    })
}

pub fn workspace_message(w: Workspace) -> WorkspaceMessage {
    WorkspaceMessage {
        id: w.id,
        slug: w.slug,
        name: w.name,
        created_at_ms: w.created_at_ms,
        updated_at_ms: w.updated_at_ms,
    }
}

pub fn project_message(p: Project) -> ProjectMessage {
    ProjectMessage {
        id: p.id,
        workspace_id: p.workspace_id,
        slug: p.slug,
        name: p.name,
        default_branch: p.default_branch,
        live_deployment_id: p.live_deployment_id,
        is_rolled_back: p.is_rolled_back,
        created_at_ms: p.created_at_ms,
        updated_at_ms: p.updated_at_ms,
    }
}

/// A per-instance limit: absent or 0 for none, else within `range`.
fn limit(
    field: &str,
    value: Option<u32>,
    range: std::ops::RangeInclusive<u32>,
) -> Result<u32, ApiError> {
    match value.unwrap_or(0) {
        0 => Ok(0),
        v if range.contains(&v) => Ok(v),
        v => Err(ApiError::invalid_argument(format!(
            "{field} must be 0 (no limit) or {} to {}, not {v}",
            range.start(),
            range.end()
        ))),
    }
}

pub fn environment_message(e: Environment) -> EnvironmentMessage {
    EnvironmentMessage {
        id: e.id,
        workspace_id: e.workspace_id,
        project_id: e.project_id,
        slug: e.slug,
        regions: e.regions.into_iter().collect(),
        port: e.port,
        sentinel_config: e.sentinel_config,
        created_at_ms: e.created_at_ms,
        updated_at_ms: e.updated_at_ms,
        memory_mb: e.limits.memory_mb,
        cpu_millis: e.limits.cpu_millis,
    }
}

impl Api {
    pub(crate) async fn create_workspace(
        &self,
        call: Call<CreateWorkspaceRequest>,
    ) -> Result<CreateWorkspaceReply, ApiError> {
        let req = call.request;
        validate_name_slug(SlugKind::Workspace, &req.slug)?;
        let name = name_or_slug(&req.name, &req.slug)?;
        let workspace = self
            .store
            .create_workspace(&ids::new(ids::WORKSPACE), &req.slug, &name, now_ms())
            .await?;
        tracing::info!(workspace_id = %workspace.id, slug = %workspace.slug, "workspace created");
        Ok(CreateWorkspaceReply {
            workspace: Some(workspace_message(workspace)),
        })
    }

    pub(crate) async fn create_project(
        &self,
        call: Call<CreateProjectRequest>,
    ) -> Result<CreateProjectReply, ApiError> {
        let req = call.request;
        ids::validate(ids::WORKSPACE, "workspace_id", &req.workspace_id)?;
        validate_name_slug(SlugKind::Project, &req.slug)?;
        let name = name_or_slug(&req.name, &req.slug)?;
        let branch = req.default_branch.unwrap_or_default();
        validate_len("default_branch", &branch, MAX_NAME)?;
        let branch = if branch.trim().is_empty() {
            "main".to_string()
        } else {
            branch
        };
        let project = self
            .store
            .create_project(
                &ids::new(ids::PROJECT),
                &req.workspace_id,
                &req.slug,
                &name,
                &branch,
                now_ms(),
            )
            .await?;
        tracing::info!(project_id = %project.id, slug = %project.slug, "project created");
        Ok(CreateProjectReply {
            project: Some(project_message(project)),
        })
    }

    pub(crate) async fn create_environment(
        &self,
        call: Call<CreateEnvironmentRequest>,
    ) -> Result<CreateEnvironmentReply, ApiError> {
        let req = call.request;
        ids::validate(ids::PROJECT, "project_id", &req.project_id)?;
        validate_name_slug(SlugKind::Environment, &req.slug)?;
        validate_regions(&req.regions)?;
        let port = req.port.unwrap_or(8080);
        if port == 0 || port > u32::from(u16::MAX) {
            return Err(ApiError::invalid_argument(format!(
                "port must be 1 to 65535, not {port}"
            )));
        }
        let sentinel_config = req.sentinel_config.unwrap_or_else(|| "{}".to_string());
        validate_len("sentinel_config", &sentinel_config, MAX_SENTINEL_CONFIG)?;
        if !serde_json::from_str::<serde_json::Value>(&sentinel_config).is_ok_and(|v| v.is_object())
        {
            return Err(ApiError::invalid_argument(
                "sentinel_config must be a JSON object",
            ));
        }
        let limits = Limits {
            memory_mb: limit("memory_mb", req.memory_mb, Limits::MEMORY_MB)?,
            cpu_millis: limit("cpu_millis", req.cpu_millis, Limits::CPU_MILLIS)?,
        };
        let claims = self.claims(&req.project_id, &req.slug).await?;
        let regions = req.regions.into_iter().collect();
        let shape = Shape {
            regions: &regions,
            port,
            limits,
        };
        let environment = self
            .store
            .create_environment_shaped(
                &ids::new(ids::ENVIRONMENT),
                &req.project_id,
                &req.slug,
                &shape,
                &sentinel_config,
                &claims,
                now_ms(),
            )
            .await?;
        tracing::info!(environment_id = %environment.id, slug = %environment.slug, "environment created");
        Ok(CreateEnvironmentReply {
            environment: Some(environment_message(environment)),
        })
    }

    /// The domains environment `slug` of the project will generate for every deployment (its
    /// environment domain, and for production the live one), in the project's scheme.
    async fn claims(&self, project_id: &str, slug: &str) -> Result<Vec<String>, ApiError> {
        let project = self.store.project(project_id).await?;
        let workspace = self.store.workspace(&project.workspace_id).await?;
        let domains = domains::environment_domains(&DomainInput {
            scheme: project.domain_scheme,
            apex: &self.apex_domain,
            workspace_slug: &workspace.slug,
            project_slug: &project.slug,
            environment_slug: slug,
            ..Default::default()
        });
        Ok(domains.into_iter().map(|d| d.fqdn).collect())
    }

    pub(crate) async fn get_project(
        &self,
        call: Call<GetProjectRequest>,
    ) -> Result<GetProjectReply, ApiError> {
        let req = call.request;
        ids::validate(ids::PROJECT, "project_id", &req.project_id)?;
        let project = self.store.project(&req.project_id).await?;
        let environments = self.store.environments(&req.project_id).await?;
        Ok(GetProjectReply {
            project: Some(project_message(project)),
            environments: environments.into_iter().map(environment_message).collect(),
        })
    }

    pub(crate) async fn list_workspaces(
        &self,
        call: Call<ListWorkspacesRequest>,
    ) -> Result<ListWorkspacesReply, ApiError> {
        let req = call.request;
        if let Some(cursor) = &req.cursor {
            ids::validate(ids::WORKSPACE, "cursor", cursor)?;
        }
        let limit = page_limit(req.limit)?;
        let rows = self
            .store
            .list_workspaces(req.cursor.as_deref(), limit + 1)
            .await?;
        let (page, next_cursor) = next_page(rows, limit, |w| &w.id);
        Ok(ListWorkspacesReply {
            workspaces: page.into_iter().map(workspace_message).collect(),
            next_cursor,
        })
    }

    pub(crate) async fn list_projects(
        &self,
        call: Call<ListProjectsRequest>,
    ) -> Result<ListProjectsReply, ApiError> {
        let req = call.request;
        ids::validate(ids::WORKSPACE, "workspace_id", &req.workspace_id)?;
        if let Some(cursor) = &req.cursor {
            ids::validate(ids::PROJECT, "cursor", cursor)?;
        }
        let limit = page_limit(req.limit)?;
        self.store.workspace(&req.workspace_id).await?;
        let rows = self
            .store
            .list_projects(&req.workspace_id, req.cursor.as_deref(), limit + 1)
            .await?;
        let (page, next_cursor) = next_page(rows, limit, |p| &p.id);
        Ok(ListProjectsReply {
            projects: page.into_iter().map(project_message).collect(),
            next_cursor,
        })
    }

    /// New replica counts for the environment's regions: new deploys take them, and its
    /// ready running deployments get them through their agents (a new desired document per
    /// region, forward in version). Repeating it is harmless: a caller retries on 503.
    pub(crate) async fn scale_environment(
        &self,
        call: Call<ScaleEnvironmentRequest>,
    ) -> Result<ScaleEnvironmentReply, ApiError> {
        let req = call.request;
        ids::validate(ids::PROJECT, "project_id", &req.project_id)?;
        if req.environment_slug.is_empty() {
            return Err(ApiError::invalid_argument("environment_slug is required"));
        }
        if req.regions.is_empty() {
            return Err(ApiError::invalid_argument(
                "regions must name at least one region",
            ));
        }
        validate_regions(&req.regions)?;
        let store = &self.store;
        let environment = store
            .environment_by_slug(&req.project_id, &req.environment_slug)
            .await?;
        let regions = req.regions.into_iter().collect();
        let (environment, running) = store
            .scale_environment(&environment.id, &regions, now_ms())
            .await?;
        for id in &running {
            let deployment = store.deployment(id).await?;
            for (region, replicas) in &regions {
                let row = store
                    .scale_topology(id, region, *replicas, now_ms())
                    .await?;
                let doc = store.desired_for(&deployment, &row)?;
                slipway_nats::krane::put_desired_deployment(&self.desired, region, &doc)
                    .await
                    .map_err(|e| {
                        ApiError::unavailable(format!(
                            "scaled in the database, not yet on the agents ({e}); retry"
                        ))
                    })?;
            }
        }
        tracing::info!(environment_id = %environment.id, ?regions, scaled = ?running, "environment scaled");
        Ok(ScaleEnvironmentReply {
            environment: Some(environment_message(environment)),
            scaled: running,
        })
    }
}
