//! The fixed performance shapes (issue 18), in both durability tiers from one command, over
//! a real nats-server, SQLite and a release-built deployment actor; the workflow engine runs
//! in this process. Keep the shapes as they are, so that figures stay comparable over time:
//!
//! 1. a workflow of N journaled 100-byte steps under a per-project lease, ending with an
//!    actor schedule call (fenced by the lease): sequential p50 / p99 at N = 1 and 12, and
//!    workflows/s (N = 12) with 1, 10 and 100 in flight over 100 keys;
//! 2. schedule + clear pairs/s, sequential and with 16 and 64 clients;
//! 3. 10,000 timers due in a 5 s window, scheduled from 64 clients: lateness (the
//!    `desired_state` event seen − due) p50 / p99 / max, lost, applied twice; then again with
//!    the actor SIGKILLed in the middle of the window and restarted a second later;
//! 4. RSS of the nats-server and the actor, idle and after the storms;
//! 5. what the shapes stand on: acknowledged publishes/s of 200-byte messages from 64
//!    publishers, to one stream and spread over four (the storm's timers each write to four:
//!    the claim, the desired document, the event, the backstop's marker), and from that the
//!    least time the storm's writes can take on this machine — its floor.
//!
//! Tiers: `fsync` (nats-server `sync_interval: always`: every write on disk before its ack)
//! and `page cache` (nats-server's default).
//!
//! `cargo build --release --workspace && cargo bench -p deploy-orchestrator --bench shapes`
//! (after scripts/install-nats-server.sh). `SLIPWAY_BENCH_TIERS=fsync` runs one tier,
//! `SLIPWAY_BENCH_SHAPES=workflows,pairs,timers,storage` some of the shapes (RSS is always
//! measured).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use futures::StreamExt;
use slipway_core::time::now_ms;
use slipway_proto::v1::{
    ClearScheduledStateChangesReply, ClearScheduledStateChangesRequest,
    ScheduleDesiredStateChangeReply, ScheduleDesiredStateChangeRequest,
};
use slipway_testkit::{
    plane::{Nats, Plane, ACTOR},
    Samples,
};
use slipway_workflow::{Context, Engine, EngineConfig, StepError, Workflow, WorkflowError};

const KEYS: usize = 100;
const TIMERS: usize = 10_000;
const WINDOW_MS: i64 = 5_000;
const SEQUENTIAL_RUNS: usize = 40;
const RUN_FOR: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const STORAGE_FOR: Duration = Duration::from_secs(3);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    std::env::set_var("SLIPWAY_TEST_LOG", "warn,slipway::ready=info");
    if std::env::var("RUST_LOG").is_err() {
        std::env::set_var("RUST_LOG", "warn");
    }
    slipway_core::config::init_logging(slipway_core::config::LogFormat::Text);
    let tiers = std::env::var("SLIPWAY_BENCH_TIERS").unwrap_or_else(|_| "fsync,page cache".into());
    let mut table: Vec<(String, Vec<String>)> = vec![];
    let names: Vec<&str> = tiers.split(',').map(str::trim).collect();
    for (column, tier) in names.iter().enumerate() {
        println!("== tier: {tier}");
        for (row, value) in run_tier(tier == &"fsync").await? {
            match table.iter_mut().find(|(r, _)| *r == row) {
                Some((_, values)) => values.push(value),
                None => {
                    let mut values = vec!["-".to_string(); column];
                    values.push(value);
                    table.push((row, values));
                }
            }
        }
    }
    println!();
    println!("| shape | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(names.len()));
    for (row, values) in table {
        println!("| {row} | {} |", values.join(" | "));
    }
    Ok(())
}

/// Every shape on a fresh plane; (row, figure) pairs.
async fn run_tier(fsync: bool) -> anyhow::Result<Vec<(String, String)>> {
    let mut builder = Plane::builder().service(ACTOR);
    if fsync {
        builder = builder.sync_always();
    }
    let mut plane = builder.start().await;
    let deployments = slipway_testkit::seed::bench_deployments(&plane.store, TIMERS * 2).await?;
    let mut rows = vec![];
    let idle = rss(&plane);

    let engine = Engine::builder(plane.js.clone(), EngineConfig::new("deploy-orchestrator"))
        .register(Steps {
            nats: plane.client.clone(),
        })
        .build()
        .await?;
    let workers = tokio::spawn(engine.clone().run_workers());
    if runs("workflows") {
        for steps in [1, 12] {
            let (p50, p99) = sequential(&engine, &deployments, steps).await?;
            rows.push((
                format!("{steps}-step workflow, sequential p50 / p99"),
                format!("{p50:.1} / {p99:.1} ms"),
            ));
        }
        for in_flight in [1, 10, 100] {
            let rate = throughput(&engine, &deployments, in_flight).await?;
            rows.push((
                format!("12-step workflows/s, {in_flight} in flight"),
                format!("{rate:.0}"),
            ));
        }
    }
    workers.abort();

    for clients in [1, 16, 64].into_iter().filter(|_| runs("pairs")) {
        let rate = pairs(&plane, &deployments[..clients]).await?;
        rows.push((
            format!("schedule + clear pairs/s, {clients} clients"),
            format!("{rate:.0}"),
        ));
    }

    if runs("timers") {
        let first = &deployments[..TIMERS];
        let calm = storm(&mut plane, first, "standby", false).await?;
        rows.push((
            "10,000 timers: lateness p50 / p99 / max".into(),
            calm.lateness(),
        ));
        rows.push((
            "10,000 timers: lost / applied twice".into(),
            calm.lost_twice(),
        ));
        rows.push((
            "10,000 timers: applied/s, window's opening → last event".into(),
            calm.applied_per_s(),
        ));
        let second = &deployments[TIMERS..];
        let killed = storm(&mut plane, second, "standby", true).await?;
        rows.push((
            "actor killed mid-storm: lateness p50 / p99 / max".into(),
            killed.lateness(),
        ));
        rows.push((
            "actor killed mid-storm: lost / applied twice".into(),
            killed.lost_twice(),
        ));
        rows.push((
            "  of those due while it was down: p50 / p99 / max".into(),
            killed.down_lateness(),
        ));
    }

    if runs("storage") {
        let one = publishes_per_s(&plane.js, 1).await?;
        let four = publishes_per_s(&plane.js, 4).await?;
        rows.push((
            "acked publishes/s, 64 publishers: 1 stream / 4 streams".into(),
            format!("{one:.0} / {four:.0}"),
        ));
        let floor = (TIMERS * WRITES_PER_TIMER) as f64 / four;
        rows.push((
            format!("timers' floor: {TIMERS} × {WRITES_PER_TIMER} writes at 4 streams' rate"),
            format!("{floor:.1} s (window {:.0} s)", WINDOW_MS as f64 / 1e3),
        ));
    }

    let loaded = rss(&plane);
    for ((name, before), (_, after)) in idle.iter().zip(&loaded) {
        rows.push((
            format!("RSS {name}, idle / after the storms"),
            format!("{:.1} / {:.1} MiB", mib(*before), mib(*after)),
        ));
    }
    Ok(rows)
}

/// Whether `shape` (workflows, pairs, timers) is among `SLIPWAY_BENCH_SHAPES` (default: all).
fn runs(shape: &str) -> bool {
    std::env::var("SLIPWAY_BENCH_SHAPES")
        .map(|shapes| shapes.split(',').any(|s| s.trim() == shape))
        .unwrap_or(true)
}

/// The stored writes of one timer applied from memory, each to a stream of its own: its claim
/// (`slipway_transitions`), the desired document (`slipway_desired`), the `desired_state`
/// event and the backstop's applied marker (`SLIPWAY_TIMERS`).
const WRITES_PER_TIMER: usize = 4;

/// Shape 5: acknowledged publishes/s of 200-byte messages from 64 publishers spread over
/// `streams` new streams of their own, for [`STORAGE_FOR`]; the streams are deleted after.
async fn publishes_per_s(
    js: &async_nats::jetstream::Context,
    streams: usize,
) -> anyhow::Result<f64> {
    use async_nats::jetstream::stream;
    let names: Vec<String> = (0..streams).map(|i| format!("BENCH_STORAGE_{i}")).collect();
    for name in &names {
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("bench.storage.{name}.>")],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    }
    let start = Instant::now();
    let tasks: Vec<_> = (0..64)
        .map(|publisher| {
            let js = js.clone();
            let subject = format!("bench.storage.{}.{publisher}", names[publisher % streams]);
            tokio::spawn(async move {
                let mut done = 0usize;
                while start.elapsed() < STORAGE_FOR {
                    js.publish(subject.clone(), vec![b'x'; 200].into())
                        .await?
                        .await?;
                    done += 1;
                }
                anyhow::Ok(done)
            })
        })
        .collect();
    let rate = per_second(start, tasks).await?;
    for name in &names {
        js.delete_stream(name).await?;
    }
    println!("{streams} stream(s), 64 publishers: {rate:.0} acked publishes/s");
    Ok(rate)
}

/// Completions per second since `start` of `tasks`, each returning how many it completed.
async fn per_second(
    start: Instant,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<usize>>>,
) -> anyhow::Result<f64> {
    let mut done = 0;
    for task in tasks {
        done += task.await??;
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn rss(plane: &Plane) -> Vec<(&'static str, u64)> {
    let nats = match &plane.nats {
        Nats::Server(server) => server.pid().and_then(rss_of).unwrap_or(0),
        Nats::Cluster(_) => 0,
    };
    let actor = plane.services.last().and_then(|p| p.rss_kib()).unwrap_or(0);
    vec![("nats-server", nats), ("deployment-actor", actor)]
}

fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Shape 1: N journaled steps of 100 bytes under the project's lease, then a fenced actor
/// schedule call.
struct Steps {
    nats: async_nats::Client,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StepsInput {
    steps: usize,
    key: String,
    deployment_id: String,
}

impl Workflow for Steps {
    const KIND: &'static str = "bench_steps";
    type Input = StepsInput;
    type Output = ();

    async fn run(&self, ctx: &mut Context, input: StepsInput) -> Result<(), WorkflowError> {
        let epoch = ctx
            .lease(&format!("lease.project.{}", input.key), |_| async {
                Ok(())
            })
            .await?
            .unwrap_or(0);
        for i in 0..input.steps {
            let _: String = ctx
                .step(&format!("s{i}"), || async { Ok("x".repeat(100)) })
                .await?;
        }
        let workflow_id = ctx.workflow_id().to_string();
        ctx.step("schedule", || async {
            let reply: ScheduleDesiredStateChangeReply = slipway_nats::client::request(
                &self.nats,
                slipway_core::subjects::deployment::SCHEDULE.of(&input.deployment_id),
                &ScheduleDesiredStateChangeRequest {
                    delay_ms: 600_000,
                    state: "standby".into(),
                    idempotency_key: workflow_id.clone(),
                    fencing_token: epoch,
                    holds_lease: true,
                },
                CALL_TIMEOUT,
            )
            .await
            .map_err(|e| StepError::retryable(e.to_string()))?;
            Ok(reply.nonce)
        })
        .await?;
        Ok(())
    }
}

async fn run_one(
    engine: &Engine,
    id: &str,
    steps: usize,
    key: usize,
    deployments: &[String],
) -> anyhow::Result<()> {
    let input = StepsInput {
        steps,
        key: format!("proj_bench{key}"),
        deployment_id: deployments[key].clone(),
    };
    engine.start::<Steps>(id, &input.key, &input, None).await?;
    let record = engine.wait(id, Duration::from_secs(120)).await?;
    anyhow::ensure!(
        record.status == slipway_workflow::Status::Completed,
        "workflow {id}: {:?} {:?}",
        record.status,
        record.error
    );
    Ok(())
}

async fn sequential(
    engine: &Engine,
    deployments: &[String],
    steps: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut ms = vec![];
    for run in 0..SEQUENTIAL_RUNS {
        let id = format!("wf_seq{steps}_{run}");
        let t = Instant::now();
        run_one(engine, &id, steps, run % KEYS, deployments).await?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let ms = Samples::new(ms);
    println!(
        "{steps}-step workflow sequential: p50 {:.1} ms p99 {:.1} ms",
        ms.at(0.5),
        ms.at(0.99)
    );
    Ok((ms.at(0.5), ms.at(0.99)))
}

/// 12-step workflows with `in_flight` at once, each on its own keys (100 keys in all).
async fn throughput(
    engine: &Engine,
    deployments: &[String],
    in_flight: usize,
) -> anyhow::Result<f64> {
    let start = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|lane| {
            let engine = engine.clone();
            let deployments = deployments.to_vec();
            tokio::spawn(async move {
                let mut done = 0usize;
                while start.elapsed() < RUN_FOR {
                    let key = (lane + done * in_flight) % KEYS;
                    let id = format!("wf_tp{in_flight}_{lane}_{done}");
                    run_one(&engine, &id, 12, key, &deployments).await?;
                    done += 1;
                }
                anyhow::Ok(done)
            })
        })
        .collect();
    let rate = per_second(start, tasks).await?;
    println!("{in_flight:>3} in flight: {rate:.1} workflows/s");
    Ok(rate)
}

/// Shape 2: each client schedules then clears its own deployment, for [`RUN_FOR`].
async fn pairs(plane: &Plane, deployments: &[String]) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut tasks = vec![];
    for dep in deployments {
        let client = async_nats::connect(plane.nats.url()).await?;
        let dep = dep.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            while start.elapsed() < RUN_FOR {
                let _: ScheduleDesiredStateChangeReply = slipway_nats::client::request(
                    &client,
                    slipway_core::subjects::deployment::SCHEDULE.of(&dep),
                    &ScheduleDesiredStateChangeRequest {
                        delay_ms: 600_000,
                        state: "standby".into(),
                        ..Default::default()
                    },
                    CALL_TIMEOUT,
                )
                .await?;
                let _: ClearScheduledStateChangesReply = slipway_nats::client::request(
                    &client,
                    slipway_core::subjects::deployment::CLEAR.of(&dep),
                    &ClearScheduledStateChangesRequest::default(),
                    CALL_TIMEOUT,
                )
                .await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let rate = per_second(start, tasks).await?;
    println!(
        "{:>2} clients: {rate:.0} schedule + clear pairs/s",
        deployments.len()
    );
    Ok(rate)
}

struct Storm {
    lateness: Vec<f64>,
    /// Timers applied per second, from the window's opening to the last event: what the
    /// storage floor (shape 5) compares with.
    applied_per_s: f64,
    /// Of timers due while the actor was down.
    down: Vec<f64>,
    lost: usize,
    twice: usize,
}

impl Storm {
    fn lateness(&self) -> String {
        percentiles(&self.lateness)
    }

    fn down_lateness(&self) -> String {
        percentiles(&self.down)
    }

    fn applied_per_s(&self) -> String {
        format!("{:.0}", self.applied_per_s)
    }

    fn lost_twice(&self) -> String {
        format!("{} / {}", self.lost, self.twice)
    }
}

fn percentiles(ms: &[f64]) -> String {
    if ms.is_empty() {
        return "-".into();
    }
    let s = Samples::new(ms.to_vec());
    format!("{:.0} / {:.0} / {:.0} ms", s.at(0.5), s.at(0.99), s.max())
}

/// Shape 3: every deployment of `ids` scheduled to `state` from 64 clients, due in a 5 s
/// window that opens once all are scheduled; with `kill`, the actor is SIGKILLed in the middle
/// of the window and started again a second later.
async fn storm(
    plane: &mut Plane,
    ids: &[String],
    state: &str,
    kill: bool,
) -> anyhow::Result<Storm> {
    let mut events = plane
        .client
        .subscribe("slipway.events.proj_b.*.desired_state")
        .await?;
    plane.client.flush().await?;
    let budget_ms = 40_000;
    let window_opens = now_ms() + budget_ms;
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let permit = sem.clone().acquire_owned().await?;
        let client = plane.client.clone();
        let id = id.clone();
        let due = window_opens + (i as i64 * WINDOW_MS) / ids.len() as i64;
        let state = state.to_string();
        tasks.push(tokio::spawn(async move {
            let reply: ScheduleDesiredStateChangeReply = slipway_nats::client::request(
                &client,
                slipway_core::subjects::deployment::SCHEDULE.of(&id),
                &ScheduleDesiredStateChangeRequest {
                    delay_ms: (due - now_ms()).max(0),
                    state,
                    ..Default::default()
                },
                CALL_TIMEOUT,
            )
            .await?;
            drop(permit);
            anyhow::Ok((id, reply.fires_at_ms))
        }));
    }
    let mut due = HashMap::new();
    for task in tasks {
        let (id, fires_at) = task.await??;
        due.insert(id, fires_at);
    }
    println!(
        "{} timers scheduled in {:.1} s; the window opens in {:.1} s",
        ids.len(),
        started.elapsed().as_secs_f64(),
        (window_opens - now_ms()) as f64 / 1e3
    );
    anyhow::ensure!(
        now_ms() < window_opens,
        "scheduling took longer than its budget"
    );

    let mut down = None;
    let mut killer = kill.then(|| {
        let kill_at = window_opens + WINDOW_MS / 2;
        Box::pin(tokio::time::sleep(Duration::from_millis(
            (kill_at - now_ms()).max(0) as u64,
        )))
    });
    // Per deployment: events seen, and the lateness of the first.
    let mut seen: HashMap<String, (usize, f64)> = HashMap::new();
    let mut last_at = window_opens;
    let give_up = window_opens + WINDOW_MS + 120_000;
    while seen.len() < ids.len() && now_ms() < give_up {
        let wait = Duration::from_millis((give_up - now_ms()).max(1) as u64);
        let next = tokio::time::timeout(wait, events.next());
        let msg = match killer.as_mut() {
            Some(kill_at) => tokio::select! {
                _ = kill_at.as_mut() => {
                    let actor = plane.services.len() - 1;
                    plane.kill_service(actor);
                    let killed_at = now_ms();
                    plane.services.pop();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    plane.spawn(ACTOR, &[]);
                    down = Some((killed_at, now_ms()));
                    killer = None;
                    continue;
                }
                msg = next => msg,
            },
            None => next.await,
        };
        let Ok(Some(msg)) = msg else { break };
        let at = now_ms();
        last_at = at;
        let event: serde_json::Value = serde_json::from_slice(&msg.payload)?;
        let id = event["deployment_id"].as_str().unwrap_or_default();
        let Some(fires_at) = due.get(id) else {
            continue;
        };
        seen.entry(id.to_string())
            .or_insert((0, (at - fires_at) as f64))
            .0 += 1;
    }
    // Applied twice in the database: a topology version past 2 (seeded at 1, one apply).
    let twice_in_db: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM deployment_topology WHERE version > 2")
            .fetch_one(plane.store.pool())
            .await?;
    let down_ms = match down {
        Some((from, to)) => seen
            .iter()
            .filter(|(id, _)| (from..=to).contains(&due[*id]))
            .map(|(_, (_, late))| *late)
            .collect(),
        None => vec![],
    };
    let storm = Storm {
        lost: ids.len() - seen.len(),
        // Not the events seen twice: this core subscription also sees the repeat of an apply
        // redone after the kill, which the stream drops as a duplicate.
        twice: twice_in_db as usize,
        lateness: seen.values().map(|(_, late)| *late).collect(),
        applied_per_s: seen.len() as f64 * 1e3 / (last_at - window_opens).max(1) as f64,
        down: down_ms,
    };
    println!(
        "storm{}: lateness {}; lost / twice {}",
        if kill { " (actor killed)" } else { "" },
        storm.lateness(),
        storm.lost_twice()
    );
    Ok(storm)
}
