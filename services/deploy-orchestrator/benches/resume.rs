//! How soon a crashed orchestrator's in-flight workflow resumes, over real processes (release
//! builds, real nats-server, SQLite, krane-agent running `slipway demo-app`): an orchestrator
//! aborts at a fault point right before a deploy's leased section (as a SIGKILL would; a step
//! after the lease point may be decided again on resume, reaching the point again); measured
//! from that instant until the workflow record shows a second run, p50 / p99, when another
//! orchestrator is running and when the crashed one is restarted. With the ack wait given
//! as the first argument (default: 3s, the default of `SLIPWAY_WORKFLOW_ACK_WAIT`).
//!
//! `cargo build --release --workspace && cargo bench -p deploy-orchestrator --bench resume [-- 30s]`

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use slipway_workflow::WorkflowRecord;

const ROUNDS: usize = 20;
const POINT: &str = "deploy.openapi.after_journal";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    std::env::set_var("SLIPWAY_TEST_LOG", "warn,slipway::ready=info");
    let ack_wait = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "3s".into());
    let rounds = if ack_wait == "3s" { ROUNDS } else { 3 };
    println!("ack wait {ack_wait}, lease TTL 15s (defaults otherwise); SQLite");
    for restart in [false, true] {
        let ms = resumes(&ack_wait, rounds, restart).await?;
        summary(
            if restart {
                "crashed one restarted"
            } else {
                "another one running"
            },
            ms,
        );
    }
    Ok(())
}

fn summary(label: &str, ms: Vec<f64>) {
    let ms = slipway_testkit::Samples::new(ms);
    println!(
        "  {label:<24} crash -> resumed: p50 {:>7.0} ms  p99 {:>7.0} ms  max {:>7.0} ms  (n={})",
        ms.at(0.5),
        ms.at(0.99),
        ms.max(),
        ms.len()
    );
}

async fn resumes(ack_wait: &str, rounds: usize, restart: bool) -> anyhow::Result<Vec<f64>> {
    let mut plane = common::Plane::without_orchestrator().await;
    plane.orchestrator_env = vec![
        ("SLIPWAY_WORKFLOW_ACK_WAIT", ack_wait.into()),
        ("SLIPWAY_LEASE_TTL", "15s".into()),
        ("SLIPWAY_STANDBY_DELAY", "1h".into()),
    ];
    let mut out = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        // Every orchestrator running aborts the first time it reaches the point; with two,
        // the one that did not take the deploy resumes it, replaying past the point.
        let first = plane.orchestrators.len();
        for _ in 0..if restart { 1 } else { 2 } {
            plane.spawn_orchestrator(&[("SLIPWAY_FAULT_POINT", POINT.into())]);
        }
        let project = plane.project().await;
        let (_, wf) = plane.deploy(&project, "production", "v1").await;
        let needle = format!("fault point {POINT} reached");
        let crashed_at = tokio::task::block_in_place(|| loop {
            if plane.orchestrators[first..]
                .iter()
                .any(|o| o.count_log(&needle) > 0)
            {
                return Instant::now();
            }
            std::thread::sleep(Duration::from_millis(2));
        });
        if restart {
            plane.orchestrators[first].kill();
            plane.spawn_orchestrator(&[]);
        }
        let mut watch = plane
            .workflows
            .watch_with_history(format!("wf.{wf}"))
            .await?;
        let resumed = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(Ok(entry)) = watch.next().await {
                let record: WorkflowRecord = rmp_serde::from_slice(&entry.value)?;
                if record.runs >= 2 {
                    return Ok::<_, anyhow::Error>(crashed_at.elapsed());
                }
            }
            anyhow::bail!("watch ended")
        })
        .await??;
        out.push(resumed.as_secs_f64() * 1000.0);
        plane.workflow_done(&wf).await;
        for o in &mut plane.orchestrators[first..] {
            o.kill();
        }
    }
    Ok(out)
}
