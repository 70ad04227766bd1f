//! `krane-agent`: the reference region agent (API.md "Region agents").
//!
//! It watches `slipway_desired` for `deployment.<region>.>`, runs each `exec:<command line>`
//! image as local processes (`/bin/sh -c`, one per replica, each with `PORT` set to a free
//! port on 127.0.0.1), health-checks them over HTTP (`GET /healthz`), restarts crashed ones
//! with backoff (reporting them `failed` while they crash-loop), stops them when the desired
//! state is `stopped`, and reports to `slipway_instances`. Every process it starts is recorded
//! in its state directory, so after its own crash it kills what it left behind and converges
//! on the desired state again.

pub mod process;
pub mod supervisor;

use std::{collections::HashMap, path::PathBuf, time::Duration};

use anyhow::Context;
use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use slipway_core::{config::CommonConfig, krane::DesiredDeployment};
use slipway_nats::provision::{self, DESIRED, INSTANCES};
use tokio::sync::watch;

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "krane-agent",
    version,
    about = "Slipway reference region agent: runs exec: images locally"
)]
pub struct Config {
    #[command(flatten)]
    pub common: CommonConfig,
    /// The region this agent serves.
    #[arg(long, env = "SLIPWAY_REGION", default_value = "local")]
    pub region: String,
    /// Where the agent records the processes it started (and their logs).
    #[arg(
        long,
        env = "SLIPWAY_AGENT_STATE_DIR",
        default_value = ".slipway-agent"
    )]
    pub state_dir: PathBuf,
    /// How often instances are health-checked.
    #[arg(long, env = "SLIPWAY_AGENT_CHECK_EVERY", default_value = "500ms", value_parser = slipway_core::config::parse_duration)]
    pub check_every: Duration,
    /// Consecutive exits after which an instance is reported `failed` as crash-looping.
    #[arg(long, env = "SLIPWAY_AGENT_CRASH_LOOP_AFTER", default_value_t = 3)]
    pub crash_loop_after: u32,
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let state_dir = config.state_dir.join(&config.region);
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let orphans = process::kill_recorded(&state_dir);
    if orphans > 0 {
        tracing::info!(orphans, "killed processes left by an earlier run");
    }

    let client = slipway_nats::connect(&config.common, "krane-agent").await?;
    let js = jetstream::new(client.clone());
    provision::provision(&js, config.common.js_replicas).await?;
    let desired = js.get_key_value(DESIRED).await?;
    let instances = js.get_key_value(INSTANCES).await?;
    let ctx = supervisor::Context {
        region: config.region.clone(),
        state_dir,
        instances,
        check_every: config.check_every,
        crash_loop_after: config.crash_loop_after,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()?,
    };

    let prefix = format!("deployment.{}.", config.region);
    let mut watch = desired
        .watch_with_history(format!("{prefix}>"))
        .await
        .context("watching slipway_desired")?;
    tracing::info!(target: "slipway::ready", region = %config.region, "krane-agent ready");
    let mut supervisors: HashMap<String, watch::Sender<Option<DesiredDeployment>>> = HashMap::new();
    let mut running: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
    // One listener for the whole run, so a signal between two entries is not missed.
    let shutdown = slipway_nats::shutdown::signal();
    tokio::pin!(shutdown);
    loop {
        let entry = tokio::select! {
            entry = watch.next() => entry,
            _ = &mut shutdown => break,
        };
        let Some(entry) = entry else {
            anyhow::bail!("the slipway_desired watch ended");
        };
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "desired-state watch error");
                continue;
            }
        };
        let Some(deployment_id) = entry.key.strip_prefix(&prefix).map(str::to_string) else {
            continue;
        };
        let doc = match entry.operation {
            kv::Operation::Put => match serde_json::from_slice::<DesiredDeployment>(&entry.value) {
                Ok(doc) => Some(doc),
                Err(e) => {
                    tracing::error!(key = %entry.key, error = %e, "malformed desired state; ignoring it");
                    continue;
                }
            },
            // A removed document means: run nothing.
            _ => None,
        };
        match supervisors.get(&deployment_id) {
            Some(tx) if !tx.is_closed() => {
                let _ = tx.send(doc);
            }
            _ => {
                let (tx, rx) = watch::channel(doc);
                running.spawn(supervisor::supervise(
                    ctx.clone(),
                    deployment_id.clone(),
                    rx,
                ));
                supervisors.insert(deployment_id, tx);
            }
        }
    }
    // Stopping the agent stops what it runs: dropping the senders ends every supervisor,
    // which stops its instances first.
    drop(supervisors);
    while running.join_next().await.is_some() {}
    Ok(())
}
