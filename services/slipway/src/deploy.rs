//! `slipway deploy` (follows the deployment live on the events stream, with a progress
//! display of its steps, and ends with its URLs or its failure reason), `rollback`, `promote`.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_nats::jetstream;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};

use crate::api::{print, str_of, Api};

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    #[arg(long)]
    project: String,
    #[arg(long = "env", default_value = slipway_core::state::PRODUCTION_ENVIRONMENT)]
    environment: String,
    /// The image to run (`exec:<command line>` for krane-agent).
    #[arg(long)]
    image: String,
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
}

pub async fn deploy(api: &Api, args: DeployArgs, json_out: bool) -> Result<()> {
    let commit = args.commit.as_ref().map(|sha| {
        json!({"commit_sha": sha, "commit_message": args.commit_message.clone().unwrap_or_default()})
    });
    let created = api
        .call(
            slipway_core::subjects::deploy::CREATE_DEPLOYMENT,
            json!({
                "project_id": args.project,
                "environment_slug": args.environment,
                "docker_image": args.image,
                "branch": args.branch,
                "git_commit": commit,
                "idempotency_key": args.idempotency_key.unwrap_or_default(),
            }),
        )
        .await?;
    let id = str_of(&created, "deployment_id").to_string();
    let workflow = str_of(&created, "workflow_id").to_string();
    if args.no_follow {
        print(json_out, &created, |_| println!("{id}"));
        return Ok(());
    }
    let followed = tokio::time::timeout(
        args.timeout,
        follow(api, &args.project, &id, &workflow, json_out),
    )
    .await
    .with_context(|| format!("deployment {id} did not finish within {:?}", args.timeout))?;
    let deployment = followed?;
    print(json_out, &deployment, |d| {
        println!("{} is {}", str_of(d, "id"), str_of(d, "status"));
        for domain in d["domains"].as_array().into_iter().flatten() {
            println!("  http://{}/", domain.as_str().unwrap_or_default());
        }
        for i in d["instances"].as_array().into_iter().flatten() {
            println!(
                "  instance {} http://{}/ ({})",
                str_of(i, "id"),
                str_of(i, "address"),
                str_of(i, "region")
            );
        }
    });
    Ok(())
}

/// Follows the deployment's events (from its first) until its workflow has finished.
async fn follow(api: &Api, project: &str, id: &str, workflow: &str, quiet: bool) -> Result<Value> {
    let stream = jetstream::new(api.client.clone())
        .get_stream(slipway_nats::provision::EVENTS)
        .await
        .context("reading the events stream")?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: slipway_core::subjects::events::of_deployment(project, id),
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
    while let Some(message) = events.next().await {
        let event: Value = serde_json::from_slice(&message?.payload)?;
        match str_of(&event, "type") {
            "step" => {
                let line = format!("  ✓ {}", str_of(&event, "step"));
                // Not a terminal (a script, CI): the bar draws nothing, so say it plainly.
                if bar.is_hidden() && !quiet {
                    eprintln!("{line}");
                } else {
                    bar.println(line);
                }
                bar.set_message(format!("{id}: after {}", str_of(&event, "step")));
            }
            "status" => bar.set_message(format!("{id}: {}", str_of(&event, "status"))),
            "failed" => {
                bar.finish_and_clear();
                bail!(
                    "deployment {id} failed: {}",
                    str_of(&event, "failure_reason")
                );
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
        let w = api
            .call(
                slipway_core::subjects::deploy::GET_WORKFLOW,
                json!({ "workflow_id": workflow }),
            )
            .await?;
        match str_of(&w["workflow"], "status") {
            "completed" => break,
            "failed" => {
                bar.finish_and_clear();
                bail!(
                    "deployment {id} failed: {}",
                    str_of(&w["workflow"], "error")
                );
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    bar.finish_and_clear();
    let d = api
        .call(
            slipway_core::subjects::deploy::GET_DEPLOYMENT,
            json!({ "deployment_id": id }),
        )
        .await?;
    Ok(d["deployment"].clone())
}

/// Rollback or promote (`subject`): waits for the workflow (up to `wait`), non-zero exit if it
/// failed.
pub async fn traffic(api: &Api, subject: &str, body: Value, json_out: bool) -> Result<()> {
    let reply = api
        .call_with_timeout(subject, body, Duration::from_secs(70))
        .await?;
    let verb = subject.rsplit('.').next().unwrap_or(subject);
    let status = str_of(&reply, "status").to_string();
    if status == "failed" {
        let w = api
            .call(
                slipway_core::subjects::deploy::GET_WORKFLOW,
                json!({ "workflow_id": reply["workflow_id"] }),
            )
            .await?;
        bail!("{verb} failed: {}", str_of(&w["workflow"], "error"));
    }
    print(json_out, &reply, |r| {
        println!("{verb} {}: {}", str_of(r, "workflow_id"), status)
    });
    Ok(())
}
