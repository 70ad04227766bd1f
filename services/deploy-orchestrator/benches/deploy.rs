//! Deploy benchmark over real processes (release builds of every service, a real
//! nats-server, SQLite, krane-agent running `slipway demo-app`):
//!
//! 1. the demo app's own start-up (spawn → first healthy `/healthz`), for reference;
//! 2. the journaled-step cost (an engine workflow of no-op steps) beside a bare KV put round
//!    trip, in the same run, on a page-cache and on an fsync nats-server;
//! 3. request → `ready` and → completed (live) for one production deploy at a time, p50/p99,
//!    and the orchestration overhead: total minus the `wait_instances` step (which is the
//!    agent starting the app and seeing it healthy), and where the time goes (each step's
//!    start and end, p50, from the journal), on a page-cache and on an fsync nats-server;
//! 4. throughput with 1, 10 and 100 projects deploying at once, and the RSS of each service
//!    idle and at the end of that load.
//!
//! `cargo build --release --workspace && cargo bench -p deploy-orchestrator --bench deploy`
//! (after scripts/install-nats-server.sh).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use slipway_testkit::Plane;
use slipway_workflow::{Context, Engine, EngineConfig, EventScope, Workflow, WorkflowError};

const SEQUENTIAL: usize = 30;
const STEPS: usize = 200;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Only warnings and readiness from the services.
    std::env::set_var("SLIPWAY_TEST_LOG", "warn,slipway::ready=info");
    if std::env::var("RUST_LOG").is_err() {
        std::env::set_var("RUST_LOG", "warn");
    }
    slipway_core::config::init_logging(slipway_core::config::LogFormat::Text);
    demo_app_startup().await?;
    step_cost(false).await?;
    step_cost(true).await?;

    {
        let mut plane = Plane::builder().sync_always().services().start().await;
        plane.orchestrator_env = vec![("SLIPWAY_STANDBY_DELAY", "5s".into())];
        plane.spawn_orchestrator(&[]);
        println!("fsync tier; agent health checks every 100ms; standby delay 5s; SQLite");
        sequential(&mut plane).await?;
    }

    let mut plane = Plane::without_orchestrator().await;
    plane.orchestrator_env = vec![("SLIPWAY_STANDBY_DELAY", "5s".into())];
    plane.spawn_orchestrator(&[]);
    println!("page cache tier; agent health checks every 100ms; standby delay 5s; SQLite");
    let idle = rss(&plane);
    sequential(&mut plane).await?;
    for projects in [1, 10, 100] {
        throughput(&mut plane, projects).await?;
    }
    let loaded = rss(&plane);
    println!("RSS (MiB)      idle   after 100 concurrent deploys");
    for ((name, a), (_, b)) in idle.iter().zip(&loaded) {
        println!(
            "  {name:<20} {:>5.1}  {:>5.1}",
            *a as f64 / 1024.0,
            *b as f64 / 1024.0
        );
    }
    Ok(())
}

fn rss(plane: &Plane) -> Vec<(String, u64)> {
    let mut out = vec![];
    for (name, p) in ["routing", "deployment-actor"].iter().zip(&plane.services) {
        out.push((name.to_string(), p.rss_kib().unwrap_or(0)));
    }
    if let Some(agent) = &plane.agent {
        out.push(("krane-agent".into(), agent.rss_kib().unwrap_or(0)));
    }
    for (i, o) in plane.orchestrators.iter().enumerate() {
        out.push((format!("deploy-orchestrator{i}"), o.rss_kib().unwrap_or(0)));
    }
    out
}

fn summary(label: &str, ms: Vec<f64>) {
    let ms = slipway_testkit::Samples::new(ms);
    println!(
        "  {label:<34} p50 {:>7.1} ms  p99 {:>7.1} ms  (n={})",
        ms.at(0.5),
        ms.at(0.99),
        ms.len()
    );
}

async fn demo_app_startup() -> anyhow::Result<()> {
    let slipway = common::bin("slipway");
    let http = reqwest::Client::new();
    let mut times = vec![];
    for _ in 0..20 {
        let port = slipway_testkit::ports::free_port()?;
        let started = Instant::now();
        let mut child = tokio::process::Command::new(&slipway)
            .arg("demo-app")
            .env("PORT", port.to_string())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let url = format!("http://127.0.0.1:{port}/healthz");
        loop {
            if matches!(http.get(&url).send().await, Ok(r) if r.status().is_success()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        child.kill().await?;
    }
    println!("demo app start-up (spawn -> healthy, polled every 2 ms):");
    summary("slipway demo-app", times);
    Ok(())
}

struct NoOps;

impl Workflow for NoOps {
    const KIND: &'static str = "bench";
    type Input = bool;
    type Output = ();
    async fn run(&self, ctx: &mut Context, _events: bool) -> Result<(), WorkflowError> {
        for i in 0..STEPS {
            let _: u64 = ctx
                .step(&format!("s{i}"), || async { Ok(i as u64) })
                .await?;
        }
        Ok(())
    }
}

/// The journaled-step cost; with `fsync`, on a nats-server that syncs every write
/// (`sync_interval: always`), where a step's journal write and its event each wait for one.
async fn step_cost(fsync: bool) -> anyhow::Result<()> {
    let mut builder = Plane::builder();
    if fsync {
        builder = builder.sync_always();
    }
    let plane = builder.start().await;
    let js = plane.js.clone();
    let kv = plane.instances.clone();
    let mut puts = vec![];
    for i in 0..1000 {
        let t = Instant::now();
        kv.put("bench", format!("{i}").into()).await?;
        puts.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let engine = Engine::builder(js.clone(), EngineConfig::new("deploy-orchestrator"))
        .register(NoOps)
        .build()
        .await?;
    let workers = tokio::spawn(engine.clone().run_workers());
    let tier = if fsync { "fsync" } else { "page cache" };
    println!("journaled step vs bare KV put (same nats-server, sequential; {tier} tier):");
    summary("KV put round trip", puts);
    for (label, scope) in [
        (
            "journaled step (with step event)",
            Some(EventScope {
                workspace_id: "ws_bench".into(),
                project_id: "proj_bench".into(),
                deployment_id: "dep_bench".into(),
                environment_slug: "production".into(),
            }),
        ),
        ("journaled step (no event)", None),
    ] {
        let mut per_step = vec![];
        for run in 0..5 {
            let id = format!("wf_bench{}{run}", scope.is_some());
            engine
                .start::<NoOps>(&id, "b", &true, scope.clone())
                .await?;
            let waited = Instant::now();
            let record = engine.wait(&id, Duration::from_secs(60)).await?;
            anyhow::ensure!(
                record.steps.len() == STEPS,
                "bench workflow after {:?}: {:?} {:?} {} steps",
                waited.elapsed(),
                record.status,
                record.error,
                record.steps.len()
            );
            // From the first step's end to the last one's: journal write (and event) included.
            let (first, last) = (&record.steps[0], &record.steps[STEPS - 1]);
            per_step.push((last.finished_at_ms - first.finished_at_ms) as f64 / (STEPS - 1) as f64);
        }
        summary(label, per_step);
    }
    workers.abort();
    Ok(())
}

async fn ready_subscription(
    plane: &Plane,
    project: &str,
) -> anyhow::Result<async_nats::Subscriber> {
    Ok(plane
        .client
        .subscribe(format!("slipway.events.{project}.*.ready"))
        .await?)
}

async fn sequential(plane: &mut Plane) -> anyhow::Result<()> {
    let project = plane.project().await;
    let mut ready_sub = ready_subscription(plane, &project).await?;
    let (mut to_ready, mut to_done, mut overhead, mut waits) = (vec![], vec![], vec![], vec![]);
    let mut timeline = Timeline::default();
    for i in 0..SEQUENTIAL {
        let t = Instant::now();
        let (_, wf) = plane.deploy(&project, "production", &format!("v{i}")).await;
        ready_sub.next().await;
        to_ready.push(t.elapsed().as_secs_f64() * 1000.0);
        let record = plane.workflow_done(&wf).await;
        let total = t.elapsed().as_secs_f64() * 1000.0;
        to_done.push(total);
        timeline.add(&record);
        let wait = record
            .steps
            .iter()
            .find(|s| s.name == "wait_instances")
            .map(|s| (s.finished_at_ms - s.started_at_ms) as f64)
            .unwrap_or(0.0);
        waits.push(wait);
        overhead.push(total - wait);
    }
    println!("one production deploy at a time ({SEQUENTIAL} deploys, one project):");
    summary("request -> ready event", to_ready);
    summary("request -> workflow completed", to_done);
    summary("  of which wait_instances", waits);
    summary("  orchestration overhead (rest)", overhead);
    timeline.print();
    Ok(())
}

/// Where a deploy's time goes: each step's start and end, in ms after its workflow record
/// was created (ms resolution: the journal's timestamps).
#[derive(Default)]
struct Timeline(Vec<(String, Vec<f64>, Vec<f64>)>);

impl Timeline {
    fn add(&mut self, record: &slipway_workflow::WorkflowRecord) {
        for step in &record.steps {
            // By name: a deploy with no deployment to supersede has no `schedule_standby`.
            let i = match self.0.iter().position(|(name, ..)| *name == step.name) {
                Some(i) => i,
                None => {
                    self.0.push((step.name.clone(), vec![], vec![]));
                    self.0.len() - 1
                }
            };
            let (_, starts, ends) = &mut self.0[i];
            starts.push((step.started_at_ms - record.created_at_ms) as f64);
            ends.push((step.finished_at_ms - record.created_at_ms) as f64);
        }
    }

    fn print(self) {
        println!("  steps, p50 ms after the workflow record was created (start-end):");
        let mut steps: Vec<(f64, String)> = self
            .0
            .into_iter()
            .map(|(name, starts, ends)| {
                let start = slipway_testkit::Samples::new(starts).at(0.5);
                let end = slipway_testkit::Samples::new(ends).at(0.5);
                (start, format!("{name} {start:.0}-{end:.0}"))
            })
            .collect();
        steps.sort_by(|a, b| a.0.total_cmp(&b.0));
        let steps: Vec<String> = steps.into_iter().map(|(_, step)| step).collect();
        for line in steps.chunks(5) {
            println!("    {}", line.join(", "));
        }
    }
}

async fn throughput(plane: &mut Plane, projects: usize) -> anyhow::Result<()> {
    let mut ids = vec![];
    for _ in 0..projects {
        ids.push(plane.project().await);
    }
    let t = Instant::now();
    let started =
        futures::future::join_all(ids.iter().map(|p| plane.deploy(p, "production", "load"))).await;
    for (_, wf) in &started {
        let record = plane.workflow_done(wf).await;
        anyhow::ensure!(
            record.status.as_str() == "completed",
            "a deploy failed: {:?}",
            record.error
        );
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{projects:>3} projects deploying at once: all ready and live in {secs:.2} s = {:.1} deploys/s",
        projects as f64 / secs
    );
    Ok(())
}
