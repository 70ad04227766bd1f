//! `slipway deploy` (follows the deployment live on the events stream, with a progress
//! display of its steps, and ends with its URLs or its failure reason), `rollback`, `promote`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_nats::jetstream;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use slipway_core::subjects;
use slipway_proto::v1::{
    CreateDeploymentReply, CreateDeploymentRequest, Deployment, GetProjectReply, GetProjectRequest,
    GetWorkflowReply, GetWorkflowRequest, GitCommit, GitSource, WorkflowRunReply,
};

use crate::{
    api::{print, Api},
    commands::get_deployment,
};

/// What the CLI reads of a lifecycle event (API.md "Events").
#[derive(Debug, Deserialize)]
pub struct FollowedEvent {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub step: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub failure_reason: String,
}

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    #[arg(long)]
    project: String,
    #[arg(long = "env", default_value = slipway_core::state::PRODUCTION_ENVIRONMENT)]
    environment: String,
    /// The image to run (an OCI image; `exec:<command line>` where the agent allows it).
    #[arg(long, required_unless_present = "git", conflicts_with = "git")]
    image: Option<String>,
    /// Build the image from this git repository (any URL git understands, or a local path)
    /// at `--commit`, which is then required; `slipway deploy` shows the build's output.
    #[arg(long, requires = "commit")]
    git: Option<String>,
    /// The build context: a directory of the repository (with `--git`).
    #[arg(long, default_value = "", requires = "git")]
    context: String,
    /// The Dockerfile, relative to the context (with `--git`).
    #[arg(long, default_value = "Dockerfile", requires = "git")]
    dockerfile: String,
    /// Default: the project's default branch.
    #[arg(long)]
    branch: Option<String>,
    /// Commit sha.
    #[arg(long)]
    commit: Option<String>,
    #[arg(long)]
    commit_message: Option<String>,
    /// Repeating a deploy with the same key within 24 h returns the first one.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Print the ids and return at once instead of following the deployment.
    #[arg(long)]
    no_follow: bool,
    /// How long to follow before giving up.
    #[arg(long, default_value = "15m", value_parser = slipway_core::config::parse_duration)]
    timeout: Duration,
    /// Arguments after `--` (API `command`): appended to an `exec:` image's command line.
    #[arg(last = true)]
    command: Vec<String>,
}

pub async fn deploy(api: &Api, args: DeployArgs, json_out: bool) -> Result<()> {
    let git_commit = args.commit.as_ref().map(|sha| GitCommit {
        commit_sha: sha.clone(),
        commit_message: args.commit_message.clone().unwrap_or_default(),
        ..Default::default()
    });
    let git_source = args.git.as_ref().map(|repository| GitSource {
        repository: local_path_as_url(repository),
        commit_sha: args.commit.clone().unwrap_or_default(),
        context_path: args.context.clone(),
        dockerfile_path: args.dockerfile.clone(),
    });
    let request = CreateDeploymentRequest {
        project_id: args.project.clone(),
        environment_slug: args.environment.clone(),
        docker_image: args.image.clone(),
        git_source,
        branch: args.branch.clone(),
        git_commit,
        idempotency_key: args.idempotency_key.clone().unwrap_or_default(),
        command: args.command.clone(),
        ..Default::default()
    };
    let created: CreateDeploymentReply = api
        .request(subjects::deploy::CREATE_DEPLOYMENT, &request)
        .await?;
    let id = created.deployment_id.clone();
    if args.no_follow {
        print(json_out, &created, |_| println!("{id}"));
        return Ok(());
    }
    let followed = tokio::time::timeout(
        args.timeout,
        follow(api, &args.project, &id, &created.workflow_id, json_out),
    )
    .await
    .with_context(|| format!("deployment {id} did not finish within {:?}", args.timeout))?;
    let deployment = followed?;
    // Through the edge, when one runs here (`slipway dev` runs one on a free port).
    let port = match api.edge_port().await {
        Some(80) | None => String::new(),
        Some(port) => format!(":{port}"),
    };
    // A production deploy to a project pinned by a rollback is ready but not live: say so.
    let pinned_to = if deployment.environment_slug == slipway_core::state::PRODUCTION_ENVIRONMENT {
        let reply: GetProjectReply = api
            .request(
                slipway_core::subjects::project::GET_PROJECT,
                &GetProjectRequest {
                    project_id: args.project.clone(),
                },
            )
            .await?;
        reply
            .project
            .filter(|p| p.is_rolled_back && p.live_deployment_id.as_deref() != Some(id.as_str()))
            .and_then(|p| p.live_deployment_id)
    } else {
        None
    };
    print(json_out, &deployment, |d| {
        println!("{} is {}", d.id, d.status);
        if let Some(live) = &pinned_to {
            println!(
                "  not live: the project is rolled back (pinned) to {live}; `slipway promote {}` makes it live",
                d.id
            );
        }
        for domain in &d.domains {
            println!("  http://{domain}{port}/");
        }
        for i in &d.instances {
            println!("  instance {} http://{}/ ({})", i.id, i.address, i.region);
        }
    });
    Ok(())
}

/// A relative local path means nothing to an orchestrator elsewhere: made absolute.
fn local_path_as_url(repository: &str) -> String {
    let path = std::path::Path::new(repository);
    if !repository.contains("://") && path.exists() {
        if let Ok(absolute) = path.canonicalize() {
            return absolute.display().to_string();
        }
    }
    repository.to_string()
}

/// Follows the deployment's events (from its first) until its workflow has finished.
async fn follow(
    api: &Api,
    project: &str,
    id: &str,
    workflow: &str,
    quiet: bool,
) -> Result<Deployment> {
    let stream = jetstream::new(api.client.clone())
        .get_stream(slipway_nats::provision::EVENTS)
        .await
        .context("reading the events stream")?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: subjects::events::of_deployment(project, id),
            ..Default::default()
        })
        .await?;
    let mut events = consumer.messages().await?;
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new_spinner()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar.set_message(format!("{id}: pending"));
    // What agents report of its instances while it waits for them: each one's last health
    // check, told once per change.
    let mut reports = jetstream::new(api.client.clone())
        .get_key_value(slipway_nats::provision::INSTANCES)
        .await
        .context("reading the instance reports")?
        .watch(format!("{id}.*"))
        .await?;
    let mut told = String::new();
    // What its build prints, while it builds (nothing for an image deploy).
    let mut build =
        match crate::logs::lines(api, &subjects::logs::of(id, subjects::logs::BUILD)).await {
            Ok(lines) => lines.messages.boxed(),
            Err(_) => futures::stream::pending().boxed(),
        };
    loop {
        let message = tokio::select! {
            Some(Ok(line)) = build.next() => {
                let line = format!("    build | {}", String::from_utf8_lossy(&line.payload));
                if bar.is_hidden() && !quiet {
                    eprintln!("{line}");
                } else {
                    bar.println(line);
                }
                continue;
            }
            message = events.next() => match message {
                Some(message) => message,
                None => break,
            },
            Some(Ok(entry)) = reports.next() => {
                let region = entry.key.rsplit('.').next().unwrap_or_default().to_string();
                let health = instance_health(&region, &entry.value);
                if !health.is_empty() && health != told {
                    if bar.is_hidden() && !quiet {
                        eprintln!("    {health}");
                    } else {
                        bar.println(format!("    {health}"));
                    }
                    told = health;
                }
                continue;
            }
        };
        let event: FollowedEvent = serde_json::from_slice(&message?.payload)
            .context("an unreadable event on the events stream")?;
        match event.kind.as_str() {
            "step" => {
                let line = format!("  ✓ {}", event.step);
                // Not a terminal (a script, CI): the bar draws nothing, so say it plainly.
                if bar.is_hidden() && !quiet {
                    eprintln!("{line}");
                } else {
                    bar.println(line);
                }
                bar.set_message(format!("{id}: after {}", event.step));
            }
            "status" => bar.set_message(format!("{id}: {}", event.status)),
            "failed" => {
                bar.finish_and_clear();
                bail!("deployment {id} failed: {}", event.failure_reason);
            }
            "ready" => {
                bar.set_message(format!("{id}: ready, finishing"));
                break;
            }
            _ => {}
        }
    }
    // Ready: what follows (live swap, standby of the previous) finishes within moments.
    loop {
        let w = workflow_of(api, workflow).await?;
        match w.status.as_str() {
            "completed" => break,
            "failed" => {
                bar.finish_and_clear();
                bail!("deployment {id} failed: {}", w.error.unwrap_or_default());
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    bar.finish_and_clear();
    get_deployment(api, id).await
}

/// One line on a region's instances from its agent's report: `local: inst_1 running,
/// inst_2 pending (GET /healthz answered 503 Service Unavailable)`.
fn instance_health(region: &str, report: &[u8]) -> String {
    let Ok(report) = serde_json::from_slice::<slipway_core::krane::InstancesReport>(report) else {
        return String::new();
    };
    let instances: Vec<String> = report
        .instances
        .iter()
        .map(|i| match &i.message {
            Some(m) => format!("{} {} ({m})", i.id, i.status),
            None => format!("{} {}", i.id, i.status),
        })
        .collect();
    if instances.is_empty() {
        return String::new();
    }
    format!("{region}: {}", instances.join(", "))
}

async fn workflow_of(api: &Api, workflow_id: &str) -> Result<slipway_proto::v1::Workflow> {
    let request = GetWorkflowRequest {
        workflow_id: workflow_id.into(),
    };
    let reply: GetWorkflowReply = api
        .request(subjects::deploy::GET_WORKFLOW, &request)
        .await?;
    reply.workflow.with_context(|| {
        format!(
            "{}: the reply holds no workflow",
            subjects::deploy::GET_WORKFLOW
        )
    })
}

/// Rollback or promote (`subject`, `request`): waits for the workflow (up to its `wait_ms`),
/// non-zero exit if it failed.
pub async fn traffic<Req: slipway_nats::codec::ApiMessage>(
    api: &Api,
    subject: &str,
    request: &Req,
    json_out: bool,
) -> Result<()> {
    let reply: WorkflowRunReply = api
        .request_with_timeout(subject, request, Duration::from_secs(70))
        .await?;
    let verb = subject.rsplit('.').next().unwrap_or(subject);
    if reply.status == "failed" {
        let w = workflow_of(api, &reply.workflow_id).await?;
        bail!("{verb} failed: {}", w.error.unwrap_or_default());
    }
    print(json_out, &reply, |r| {
        println!("{verb} {}: {}", r.workflow_id, r.status)
    });
    Ok(())
}
