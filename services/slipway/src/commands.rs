//! The CLI's commands on records and state: create workspaces, projects and environments;
//! `status`, `ls`, `routes`, `timers`.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::api::{print, str_of, time_of, Api};

#[derive(Debug, clap::Subcommand)]
pub enum Create {
    /// Create a workspace.
    Create {
        slug: String,
        #[arg(long, default_value = "")]
        name: String,
    },
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
        #[arg(long)]
        port: Option<u32>,
        /// JSON object copied onto each new deployment.
        #[arg(long)]
        sentinel_config: Option<String>,
    },
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

pub async fn workspace(api: &Api, command: Create, json_out: bool) -> Result<()> {
    let Create::Create { slug, name } = command;
    let reply = api
        .call(
            slipway_core::subjects::project::CREATE_WORKSPACE,
            json!({"slug": slug, "name": name}),
        )
        .await?;
    print(json_out, &reply, |r| {
        println!("{}", str_of(&r["workspace"], "id"))
    });
    Ok(())
}

pub async fn project(api: &Api, command: ProjectCommand, json_out: bool) -> Result<()> {
    let ProjectCommand::Create {
        slug,
        workspace,
        name,
        default_branch,
    } = command;
    let reply = api
        .call(
            slipway_core::subjects::project::CREATE_PROJECT,
            json!({"workspace_id": workspace, "slug": slug, "name": name, "default_branch": default_branch}),
        )
        .await?;
    print(json_out, &reply, |r| {
        println!("{}", str_of(&r["project"], "id"))
    });
    Ok(())
}

pub async fn env(api: &Api, command: EnvCommand, json_out: bool) -> Result<()> {
    let EnvCommand::Create {
        slug,
        project,
        regions,
        port,
        sentinel_config,
    } = command;
    let regions: BTreeMap<String, u32> = regions.into_iter().collect();
    let reply = api
        .call(
            slipway_core::subjects::project::CREATE_ENVIRONMENT,
            json!({"project_id": project, "slug": slug, "regions": regions, "port": port, "sentinel_config": sentinel_config}),
        )
        .await?;
    print(json_out, &reply, |r| {
        println!("{}", str_of(&r["environment"], "id"))
    });
    Ok(())
}

/// State, instances, domains and the pending transition of one deployment.
pub async fn status(api: &Api, deployment_id: &str, json_out: bool) -> Result<()> {
    let reply = api
        .call(
            slipway_core::subjects::deploy::GET_DEPLOYMENT,
            json!({ "deployment_id": deployment_id }),
        )
        .await?;
    let state = api
        .call(
            &slipway_core::subjects::deployment::GET_STATE.of(deployment_id),
            json!({}),
        )
        .await?;
    let mut out = reply["deployment"].clone();
    out["pending_transition"] = state.get("pending").cloned().unwrap_or(Value::Null);
    print(json_out, &out, |d| {
        println!("deployment   {}", str_of(d, "id"));
        println!(
            "project      {}  ({})",
            str_of(d, "project_id"),
            str_of(d, "environment_slug")
        );
        println!("status       {}", str_of(d, "status"));
        println!("desired      {}", str_of(d, "desired_state"));
        println!("image        {}", str_of(d, "image"));
        if let Some(reason) = d["failure_reason"].as_str() {
            println!("failure      {reason}");
        }
        for i in d["instances"].as_array().into_iter().flatten() {
            println!(
                "instance     {}  {}  {}  {}",
                str_of(i, "id"),
                str_of(i, "region"),
                str_of(i, "address"),
                str_of(i, "status")
            );
        }
        for domain in d["domains"].as_array().into_iter().flatten() {
            println!(
                "domain       http://{}/",
                domain.as_str().unwrap_or_default()
            );
        }
        match d["pending_transition"].as_object() {
            Some(p) => println!(
                "pending      {} at {}",
                p.get("state").and_then(Value::as_str).unwrap_or_default(),
                time_of(p.get("fires_at_ms").unwrap_or(&Value::Null))
            ),
            None => println!("pending      none"),
        }
    });
    Ok(())
}

/// A project's deployments, newest first; `*` marks the live one.
pub async fn ls(api: &Api, project: &str, env: Option<String>, json_out: bool) -> Result<()> {
    let p = api
        .call(
            slipway_core::subjects::project::GET_PROJECT,
            json!({ "project_id": project }),
        )
        .await?;
    let live = p["project"]["live_deployment_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut deployments = vec![];
    let mut cursor: Option<String> = None;
    loop {
        let page = api
            .call(
                slipway_core::subjects::deploy::LIST_DEPLOYMENTS,
                json!({"project_id": project, "environment_slug": env, "limit": 500, "cursor": cursor}),
            )
            .await?;
        deployments.extend(page["deployments"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    for d in &mut deployments {
        d["live"] = json!(str_of(d, "id") == live);
    }
    let out = json!({"live_deployment_id": live, "is_rolled_back": p["project"]["is_rolled_back"], "deployments": deployments});
    print(json_out, &out, |out| {
        for d in out["deployments"].as_array().into_iter().flatten() {
            println!(
                "{} {}  {:<11} {:<9} {:<8} {}",
                if d["live"] == true { "*" } else { " " },
                str_of(d, "id"),
                str_of(d, "environment_slug"),
                str_of(d, "status"),
                str_of(d, "desired_state"),
                time_of(&d["created_at_ms"]),
            );
        }
        if out["is_rolled_back"] == true {
            println!("(rolled back: production deploys do not go live until a promote)");
        }
    });
    Ok(())
}

pub async fn routes(api: &Api, project: &str, json_out: bool) -> Result<()> {
    let reply = api
        .call(
            &slipway_core::subjects::routing::LIST.of(project),
            json!({}),
        )
        .await?;
    print(json_out, &reply, |r| {
        for route in r["routes"].as_array().into_iter().flatten() {
            println!(
                "{:<60} {:<12} {}",
                str_of(route, "fqdn"),
                str_of(route, "sticky"),
                str_of(route, "deployment_id")
            );
        }
    });
    Ok(())
}

/// Every pending desired-state transition (from the actor's bucket) and when it fires.
pub async fn timers(api: &Api, json_out: bool) -> Result<()> {
    let js = async_nats::jetstream::new(api.client.clone());
    let kv = js
        .get_key_value(slipway_nats::provision::TRANSITIONS)
        .await
        .context("reading the actor's transitions")?;
    // Transition keys are deployment ids; idempotency records have dots in their keys.
    let keys: Vec<String> = kv
        .keys()
        .await
        .context("listing transitions")?
        .filter_map(|k| async move { k.ok().filter(|k| !k.contains('.')) })
        .collect()
        .await;
    let mut pending = vec![];
    for id in keys {
        let state = api
            .call(
                &slipway_core::subjects::deployment::GET_STATE.of(&id),
                json!({}),
            )
            .await?;
        if let Some(p) = state.get("pending") {
            pending.push(json!({"deployment_id": id, "state": p["state"], "fires_at_ms": p["fires_at_ms"], "nonce": p["nonce"]}));
        }
    }
    pending.sort_by_key(|p| {
        p["fires_at_ms"]
            .as_str()
            .and_then(|s| s.parse::<i64>().ok())
            .unwrap_or_default()
    });
    let out = json!({ "timers": pending });
    print(json_out, &out, |out| {
        let timers = out["timers"].as_array().cloned().unwrap_or_default();
        if timers.is_empty() {
            println!("no pending transitions");
        }
        for t in timers {
            println!(
                "{}  -> {:<8} at {}",
                str_of(&t, "deployment_id"),
                str_of(&t, "state"),
                time_of(&t["fires_at_ms"])
            );
        }
    });
    Ok(())
}
