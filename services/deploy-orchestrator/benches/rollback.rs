//! Rollback and promote latency over real processes (release builds, real nats-server,
//! SQLite, krane-agent running `slipway demo-app`): request -> the live route switched, as a
//! `slipway_routes` watcher (an edge) sees it, and request -> the completed reply (after the
//! source's standby is scheduled and the project settled), p50 / p99, for a warm target
//! (running) and for a target in standby (woken, healthy, then switched).
//!
//! In two durability tiers: `page cache` (nats-server's default) and `fsync` (`sync_interval:
//! always`: every write on disk before its ack); `SLIPWAY_BENCH_TIERS=fsync` runs one.
//!
//! `cargo build --release --workspace && cargo bench -p deploy-orchestrator --bench rollback`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use futures::StreamExt;
use serde_json::{json, Value};

const WARM: usize = 40;
const COLD: usize = 10;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    std::env::set_var("SLIPWAY_TEST_LOG", "warn,slipway::ready=info");
    let tiers = std::env::var("SLIPWAY_BENCH_TIERS").unwrap_or_else(|_| "page cache,fsync".into());
    for tier in tiers.split(',').map(str::trim) {
        let fsync = tier == "fsync";
        println!("{tier} tier; agent health checks every 100ms; SQLite");
        // Warm: superseded deployments stay running (standby delay 1h).
        let (warm_rollback, warm_promote) = switches(fsync, "1h", WARM, false).await?;
        summary("rollback, warm target", warm_rollback);
        summary("promote, warm target", warm_promote);
        // Cold: the target has gone to standby (delay 1s) before each switch.
        let (cold_rollback, cold_promote) = switches(fsync, "1s", COLD, true).await?;
        summary("rollback, target in standby", cold_rollback);
        summary("promote, target in standby", cold_promote);
    }
    Ok(())
}

fn summary(label: &str, times: Times) {
    let switched = slipway_testkit::Samples::new(times.switched);
    let completed = slipway_testkit::Samples::new(times.completed);
    println!(
        "  {label:<28} request -> live route switched: p50 {:>5.1} ms  p99 {:>5.1} ms;  -> completed: p50 {:>5.1} ms  p99 {:>5.1} ms  (n={})",
        switched.at(0.5),
        switched.at(0.99),
        completed.at(0.5),
        completed.at(0.99),
        switched.len()
    );
}

/// Alternates rollback v2 -> v1 and promote v2, timing each until the watcher sees the live
/// route on the target.
/// Milliseconds from each request to the live route switched, and to the completed reply.
#[derive(Default)]
struct Times {
    switched: Vec<f64>,
    completed: Vec<f64>,
}

async fn switches(
    fsync: bool,
    standby_delay: &str,
    rounds: usize,
    wait_for_standby: bool,
) -> anyhow::Result<(Times, Times)> {
    let mut builder = common::Plane::builder();
    if fsync {
        builder = builder.sync_always();
    }
    let mut plane = builder.services().start().await;
    plane.orchestrator_env = vec![("SLIPWAY_STANDBY_DELAY", standby_delay.into())];
    plane.spawn_orchestrator(&[]);
    let project = plane.project().await;
    let v1 = plane.deployed(&project, "production", "v1").await;
    let v2 = plane.deployed(&project, "production", "v2").await;
    let live_fqdn = "shop--acme1.slipway.localhost";
    let (mut rollbacks, mut promotes) = (Times::default(), Times::default());
    for _ in 0..rounds {
        for (verb, body, target) in [
            (
                "rollback",
                json!({"source_deployment_id": v2, "target_deployment_id": v1}),
                &v1,
            ),
            ("promote", json!({"target_deployment_id": v2}), &v2),
        ] {
            if wait_for_standby {
                wait_standby(&plane, &project, target).await;
            }
            let mut watch = plane.routes.watch(live_fqdn).await?;
            let t = Instant::now();
            // The switch is timed as a watcher of the table (an edge) sees it, while the
            // request is still waiting for the rest of the workflow (standby of the source,
            // settling the project); the reply is timed too.
            let request = async {
                let reply = plane.ok(&format!("slipway.deploy.v1.{verb}"), body).await;
                anyhow::ensure!(reply["status"] == "completed", "{verb}: {reply}");
                Ok(t.elapsed())
            };
            let switched = async {
                loop {
                    let entry = watch.next().await.expect("watch ended")?;
                    let value: Value = serde_json::from_slice(&entry.value)?;
                    if value["deployment_id"] == target.as_str() {
                        return anyhow::Ok(t.elapsed());
                    }
                }
            };
            let (completed, switched) = tokio::try_join!(request, switched)?;
            let times = if verb == "rollback" {
                &mut rollbacks
            } else {
                &mut promotes
            };
            times.switched.push(switched.as_secs_f64() * 1000.0);
            times.completed.push(completed.as_secs_f64() * 1000.0);
        }
    }
    Ok((rollbacks, promotes))
}

/// Until `dep` is in standby with its instances stopped (events and a KV watch).
async fn wait_standby(plane: &common::Plane, project: &str, dep: &str) {
    loop {
        if plane.deployment(dep).await["desired_state"] == "standby" {
            break;
        }
        let mut sub = plane
            .client
            .subscribe(format!("slipway.events.{project}.{dep}.desired_state"))
            .await
            .unwrap();
        if plane.deployment(dep).await["desired_state"] == "standby" {
            break;
        }
        sub.next().await;
    }
    plane.wait_instances(dep, "inactive").await;
}
