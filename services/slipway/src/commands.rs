//! The CLI's commands on records and state: create workspaces, projects and environments;
//! `status`, `ls`, `routes`, `timers`.

use anyhow::{Context, Result};
use futures::StreamExt;
use serde::Serialize;
use slipway_core::subjects;
use slipway_proto::v1::{
    ArchiveDeploymentReply, ArchiveDeploymentRequest, CreateEnvironmentReply,
    CreateEnvironmentRequest, CreateProjectReply, CreateProjectRequest, CreateWorkspaceReply,
    CreateWorkspaceRequest, Deployment, GetDeploymentReply, GetDeploymentRequest, GetProjectReply,
    GetProjectRequest, GetStateReply, GetStateRequest, ListDeploymentsReply,
    ListDeploymentsRequest, ListProjectsReply, ListProjectsRequest, ListRoutesReply,
    ListRoutesRequest, ListWorkspacesReply, ListWorkspacesRequest, PendingTransition,
    ScaleEnvironmentReply, ScaleEnvironmentRequest,
};

use crate::api::{ago, print, time_of, Api};

#[derive(Debug, clap::Subcommand)]
pub enum WorkspaceCommand {
    /// Create a workspace.
    Create {
        slug: String,
        #[arg(long, default_value = "")]
        name: String,
    },
    /// Every workspace, oldest first.
    Ls,
}

#[derive(Debug, clap::Subcommand)]
pub enum ProjectCommand {
    /// Create a project in a workspace.
    Create {
        slug: String,
        #[arg(long)]
        workspace: String,
        #[arg(long, default_value = "")]
        name: String,
        #[arg(long)]
        default_branch: Option<String>,
    },
    /// A workspace's projects, oldest first.
    Ls {
        #[arg(long)]
        workspace: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum EnvCommand {
    /// Create an environment in a project.
    Create {
        slug: String,
        #[arg(long)]
        project: String,
        /// `<region>=<replicas>`, repeatable (default: every configured region, 1 replica).
        #[arg(long = "region", value_parser = parse_region)]
        regions: Vec<(String, u32)>,
        /// The port the app listens on inside its container (`PORT`).
        #[arg(long)]
        port: Option<u32>,
        /// Memory per instance, in MiB (containers).
        #[arg(long)]
        memory_mb: Option<u32>,
        /// CPU per instance, in thousandths of a core: 500 is half a core (containers).
        #[arg(long)]
        cpu_millis: Option<u32>,
        /// JSON object copied onto each new deployment.
        #[arg(long)]
        sentinel_config: Option<String>,
    },
    /// Change an environment's replicas per region: new deploys get them, and so do its
    /// running deployments, through their agents.
    Scale {
        slug: String,
        #[arg(long)]
        project: String,
        /// `<region>=<replicas>`, repeatable.
        #[arg(long = "region", value_parser = parse_region, required = true)]
        regions: Vec<(String, u32)>,
    },
    /// Set variables of an environment (new deployments get them).
    Set(crate::variables::SetArgs),
    /// Remove variables of an environment.
    Unset(crate::variables::UnsetArgs),
    /// An environment's variables (secret values are never shown).
    Vars(crate::variables::VarsArgs),
}

fn parse_region(s: &str) -> Result<(String, u32), String> {
    let (region, replicas) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not <region>=<replicas>"))?;
    let replicas = replicas
        .parse()
        .map_err(|_| format!("{replicas:?} is not a number of replicas"))?;
    Ok((region.to_string(), replicas))
}

pub async fn workspace(api: &Api, command: WorkspaceCommand, json_out: bool) -> Result<()> {
    let (slug, name) = match command {
        WorkspaceCommand::Create { slug, name } => (slug, name),
        WorkspaceCommand::Ls => return workspaces(api, json_out).await,
    };
    let request = CreateWorkspaceRequest { slug, name };
    let reply: CreateWorkspaceReply = api
        .request(subjects::project::CREATE_WORKSPACE, &request)
        .await?;
    print(json_out, &reply, |r| {
        println!(
            "{}",
            r.workspace
                .as_ref()
                .map(|w| w.id.as_str())
                .unwrap_or_default()
        )
    });
    Ok(())
}

/// Every workspace, page after page.
async fn workspaces(api: &Api, json_out: bool) -> Result<()> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let request = ListWorkspacesRequest {
            limit: Some(500),
            cursor,
        };
        let reply: ListWorkspacesReply = api
            .request(subjects::project::LIST_WORKSPACES, &request)
            .await?;
        all.extend(reply.workspaces);
        cursor = reply.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    print(json_out, &all, |all| {
        println!("{:<36} {:<24} NAME", "ID", "SLUG");
        for w in all {
            println!("{:<36} {:<24} {}", w.id, w.slug, w.name);
        }
    });
    Ok(())
}

/// A workspace's projects, page after page.
async fn projects(api: &Api, workspace_id: String, json_out: bool) -> Result<()> {
    let mut all = Vec::new();
    let mut cursor = None;
    loop {
        let request = ListProjectsRequest {
            workspace_id: workspace_id.clone(),
            limit: Some(500),
            cursor,
        };
        let reply: ListProjectsReply = api
            .request(subjects::project::LIST_PROJECTS, &request)
            .await?;
        all.extend(reply.projects);
        cursor = reply.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    print(json_out, &all, |all| {
        println!("{:<37} {:<24} {:<37} NAME", "ID", "SLUG", "LIVE");
        for p in all {
            let live = match (&p.live_deployment_id, p.is_rolled_back) {
                (Some(d), true) => format!("{d} (pinned)"),
                (Some(d), false) => d.clone(),
                (None, _) => "-".into(),
            };
            println!("{:<37} {:<24} {:<37} {}", p.id, p.slug, live, p.name);
        }
    });
    Ok(())
}

pub async fn project(api: &Api, command: ProjectCommand, json_out: bool) -> Result<()> {
    let (slug, workspace, name, default_branch) = match command {
        ProjectCommand::Create {
            slug,
            workspace,
            name,
            default_branch,
        } => (slug, workspace, name, default_branch),
        ProjectCommand::Ls { workspace } => return projects(api, workspace, json_out).await,
    };
    let request = CreateProjectRequest {
        workspace_id: workspace,
        slug,
        name,
        default_branch,
    };
    let reply: CreateProjectReply = api
        .request(subjects::project::CREATE_PROJECT, &request)
        .await?;
    print(json_out, &reply, |r| {
        println!(
            "{}",
            r.project
                .as_ref()
                .map(|p| p.id.as_str())
                .unwrap_or_default()
        )
    });
    Ok(())
}

async fn scale(
    api: &Api,
    slug: String,
    project: String,
    regions: Vec<(String, u32)>,
    json_out: bool,
) -> Result<()> {
    let request = ScaleEnvironmentRequest {
        project_id: project,
        environment_slug: slug.clone(),
        regions: regions.into_iter().collect(),
    };
    let reply: ScaleEnvironmentReply = api
        .request(subjects::project::SCALE_ENVIRONMENT, &request)
        .await?;
    print(json_out, &reply, |r| {
        let regions = r
            .environment
            .as_ref()
            .map(|e| {
                e.regions
                    .iter()
                    .map(|(region, n)| format!("{region}={n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        println!("{slug}: {regions}");
        if !r.scaled.is_empty() {
            println!("running deployments scaled: {}", r.scaled.join(", "));
        }
    });
    Ok(())
}

pub async fn env(api: &Api, command: EnvCommand, json_out: bool) -> Result<()> {
    let request = match command {
        EnvCommand::Create {
            slug,
            project,
            regions,
            port,
            memory_mb,
            cpu_millis,
            sentinel_config,
        } => CreateEnvironmentRequest {
            project_id: project,
            slug,
            regions: regions.into_iter().collect(),
            port,
            sentinel_config,
            memory_mb,
            cpu_millis,
        },
        EnvCommand::Scale {
            slug,
            project,
            regions,
        } => return scale(api, slug, project, regions, json_out).await,
        EnvCommand::Set(args) => return crate::variables::set(api, args, json_out).await,
        EnvCommand::Unset(args) => return crate::variables::unset(api, args, json_out).await,
        EnvCommand::Vars(args) => return crate::variables::list(api, args, json_out).await,
    };
    let reply: CreateEnvironmentReply = api
        .request(subjects::project::CREATE_ENVIRONMENT, &request)
        .await?;
    print(json_out, &reply, |r| {
        println!(
            "{}",
            r.environment
                .as_ref()
                .map(|e| e.id.as_str())
                .unwrap_or_default()
        )
    });
    Ok(())
}

/// A deployment as `slipway status` shows it: the deployment and its pending transition.
#[derive(Serialize)]
struct Status {
    #[serde(flatten)]
    deployment: Deployment,
    pending_transition: Option<PendingTransition>,
}

/// The deployment, or a clear error if the reply holds none.
pub async fn get_deployment(api: &Api, deployment_id: &str) -> Result<Deployment> {
    let request = GetDeploymentRequest {
        deployment_id: deployment_id.into(),
    };
    let reply: GetDeploymentReply = api
        .request(subjects::deploy::GET_DEPLOYMENT, &request)
        .await?;
    reply.deployment.with_context(|| {
        format!(
            "{}: the reply holds no deployment",
            subjects::deploy::GET_DEPLOYMENT
        )
    })
}

/// State, instances, domains and the pending transition of one deployment.
pub async fn status(api: &Api, deployment_id: &str, json_out: bool) -> Result<()> {
    let deployment = get_deployment(api, deployment_id).await?;
    let state: GetStateReply = api
        .request(
            subjects::deployment::GET_STATE.of(deployment_id),
            &GetStateRequest {},
        )
        .await?;
    let out = Status {
        deployment,
        pending_transition: state.pending,
    };
    print(json_out, &out, |s| {
        let d = &s.deployment;
        println!("deployment   {}", d.id);
        println!("project      {}  ({})", d.project_id, d.environment_slug);
        println!("status       {}", d.status);
        println!("desired      {}", d.desired_state);
        if !d.health.is_empty() {
            println!("health       {}", d.health);
        }
        println!("image        {}", d.image);
        if let Some(reason) = &d.failure_reason {
            println!("failure      {reason}");
        }
        for i in &d.instances {
            let restarts = match i.restarts {
                0 => String::new(),
                n => format!("  ({n} restarts)"),
            };
            let message = i
                .message
                .as_deref()
                .map(|m| format!("  {m}"))
                .unwrap_or_default();
            println!(
                "instance     {}  {}  {}  {}{restarts}{message}",
                i.id, i.region, i.address, i.status
            );
        }
        for domain in &d.domains {
            println!("domain       http://{domain}/");
        }
        match &s.pending_transition {
            Some(p) => println!("pending      {} at {}", p.state, time_of(p.fires_at_ms)),
            None => println!("pending      none"),
        }
    });
    Ok(())
}

/// A deployment in `slipway ls`: whether it is the live one.
#[derive(Serialize)]
struct Listed {
    #[serde(flatten)]
    deployment: Deployment,
    live: bool,
}

#[derive(Serialize)]
struct Listing {
    live_deployment_id: String,
    is_rolled_back: bool,
    deployments: Vec<Listed>,
}

/// A project's deployments, newest first; `*` marks the live one.
pub async fn ls(api: &Api, project: &str, env: Option<String>, json_out: bool) -> Result<()> {
    let request = GetProjectRequest {
        project_id: project.into(),
    };
    let reply: GetProjectReply = api
        .request(subjects::project::GET_PROJECT, &request)
        .await?;
    let p = reply.project.unwrap_or_default();
    let live = p.live_deployment_id.unwrap_or_default();
    let mut deployments = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let request = ListDeploymentsRequest {
            project_id: project.into(),
            environment_slug: env.clone(),
            limit: Some(500),
            cursor,
        };
        let page: ListDeploymentsReply = api
            .request(subjects::deploy::LIST_DEPLOYMENTS, &request)
            .await?;
        deployments.extend(page.deployments.into_iter().map(|d| Listed {
            live: d.id == live,
            deployment: d,
        }));
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let out = Listing {
        live_deployment_id: live,
        is_rolled_back: p.is_rolled_back,
        deployments,
    };
    print(json_out, &out, |out| {
        let now = slipway_core::time::now_ms();
        println!(
            "  {:<36}  {:<11} {:<9} {:<8} {:<7}  {:<8}  IMAGE",
            "DEPLOYMENT (* live)", "ENV", "STATUS", "DESIRED", "COMMIT", "CREATED"
        );
        for listed in &out.deployments {
            let d = &listed.deployment;
            let commit: String = d.git_commit_sha.chars().take(7).collect();
            println!(
                "{} {:<36}  {:<11} {:<9} {:<8} {:<7}  {:<8}  {}",
                if listed.live { "*" } else { " " },
                d.id,
                d.environment_slug,
                d.status,
                d.desired_state,
                if commit.is_empty() { "-" } else { &commit },
                ago(d.created_at_ms, now),
                d.image,
            );
        }
        if out.is_rolled_back {
            println!("(rolled back: production deploys do not go live until a promote)");
        }
    });
    Ok(())
}

pub async fn routes(api: &Api, project: &str, json_out: bool) -> Result<()> {
    let reply: ListRoutesReply = api
        .request(
            subjects::routing::LIST.of(project),
            &ListRoutesRequest::default(),
        )
        .await?;
    print(json_out, &reply, |r| {
        for route in &r.routes {
            println!(
                "{:<60} {:<12} {}",
                route.fqdn, route.sticky, route.deployment_id
            );
        }
    });
    Ok(())
}

/// A pending desired-state transition, in `slipway timers`.
#[derive(Serialize)]
struct Timer {
    deployment_id: String,
    #[serde(flatten)]
    pending: PendingTransition,
}

#[derive(Serialize)]
struct Timers {
    timers: Vec<Timer>,
}

/// Every pending desired-state transition (from the actor's bucket) and when it fires.
pub async fn timers(api: &Api, json_out: bool) -> Result<()> {
    let js = async_nats::jetstream::new(api.client.clone());
    let kv = js
        .get_key_value(slipway_nats::provision::TRANSITIONS)
        .await
        .context("reading the actor's transitions")?;
    let keys: Vec<String> = kv
        .keys()
        .await
        .context("listing transitions")?
        .filter_map(|k| async move {
            k.ok()
                .filter(|k| slipway_core::transition_keys::deployment_of(k).is_some())
        })
        .collect()
        .await;
    let mut timers = vec![];
    for id in keys {
        let state: GetStateReply = api
            .request(subjects::deployment::GET_STATE.of(&id), &GetStateRequest {})
            .await?;
        if let Some(pending) = state.pending {
            timers.push(Timer {
                deployment_id: id,
                pending,
            });
        }
    }
    timers.sort_by_key(|t| t.pending.fires_at_ms);
    print(json_out, &Timers { timers }, |out| {
        if out.timers.is_empty() {
            println!("no pending transitions");
        }
        for t in &out.timers {
            println!(
                "{}  -> {:<8} at {}",
                t.deployment_id,
                t.pending.state,
                time_of(t.pending.fires_at_ms)
            );
        }
    });
    Ok(())
}

pub async fn archive(api: &Api, deployment_id: String, wait_ms: i64, json_out: bool) -> Result<()> {
    let request = ArchiveDeploymentRequest {
        deployment_id: deployment_id.clone(),
        wait_ms: Some(wait_ms),
    };
    let reply: ArchiveDeploymentReply = api
        .request(subjects::deploy::ARCHIVE_DEPLOYMENT, &request)
        .await?;
    print(json_out, &reply, |r| {
        if r.status == "completed" {
            println!("{deployment_id} archived: routes removed, instances stopped");
        } else {
            println!(
                "{deployment_id}: archive still running after {wait_ms} ms (workflow {}; follow it with `slipway status {deployment_id}`)",
                r.workflow_id
            );
        }
    });
    Ok(())
}
