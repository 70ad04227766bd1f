//! Randomized faults: concurrent deploys, rollbacks and promotes on a few projects, served by
//! two orchestrators that are SIGKILLed (and restarted) or SIGSTOPped for longer than the
//! lease TTL (and continued) at random moments. Seeded and repeatable in what it does (not in
//! the timing it meets); bounded in operations and time. At the end every deploy has
//! completed and the invariant checker holds.
//!
//! Each orchestrator also carries a fault planted at a random leased point (see `spawn`).
//! `SLIPWAY_CHAOS_SEEDS` (default `1,2,3`) and `SLIPWAY_CHAOS_OPS` (default 14 bursts of one
//! to three operations a run) choose the runs on SQLite, `SLIPWAY_CHAOS_PG_SEEDS` (default `1`) on PostgreSQL;
//! `scripts/chaos.sh` runs many more.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{Plane, TIMEOUT};
use futures::TryStreamExt;
use serde_json::{json, Value};
use slipway_core::state::DeploymentStatus;
use slipway_testkit::TestDb;
use slipway_workflow::WorkflowRecord;

/// splitmix64: a seeded, dependency-free generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

fn seeds(var: &str, default: &str) -> Vec<u64> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

const PROJECTS: usize = 2;
/// Where a planted fault may strike: the windows under the project lease, around the commit.
const LEASED_POINTS: [&str; 10] = [
    "deploy.routes.after_journal",
    "clear.before_request",
    "commit.before_request",
    "deploy.assign_routes.before_journal",
    "deploy.assign_routes.after_journal",
    "rollback.validate.after_journal",
    "rollback.clear_target.after_journal",
    "rollback.assign_routes.before_journal",
    "promote.validate.after_journal",
    "promote.assign_routes.before_journal",
];
/// The lease TTL of the plane (common::Plane sets 2 s); stops last longer than it.
const LEASE_TTL_MS: u64 = 2000;

#[derive(Default, Debug)]
struct Report {
    operations: usize,
    /// Random SIGKILLs and SIGSTOPs, and faults planted at leased points that struck.
    kills: usize,
    stops: usize,
    planted_kills: usize,
    planted_stops: usize,
    workflows: usize,
    resumed: usize,
    redecided: usize,
    fenced: usize,
    refused: Vec<String>,
}

/// A request that may go unanswered (it reached a stopped orchestrator): None then.
async fn try_call(plane: &Plane, subject: &str, body: Value) -> Option<Value> {
    let payload = serde_json::to_vec(&body).unwrap();
    let reply = tokio::time::timeout(
        Duration::from_secs(3),
        plane.client.request(subject.to_string(), payload.into()),
    )
    .await
    .ok()?
    .ok()?;
    serde_json::from_slice(&reply.payload).ok()
}

/// Starts an orchestrator that carries a fault planted at a random leased point: it aborts
/// there (as a SIGKILL would) or SIGSTOPs itself there, the first time it reaches it.
fn spawn(plane: &mut Plane, rng: &mut Rng) -> usize {
    let point = LEASED_POINTS[rng.below(LEASED_POINTS.len() as u64) as usize];
    let mode = if rng.chance(50) {
        "SLIPWAY_FAULT_POINT"
    } else {
        "SLIPWAY_FAULT_STOP"
    };
    plane.spawn_orchestrator(&[(mode, point.into())])
}

/// Continues process `pid` after `stall`, in the background.
fn continue_later(pid: u32, stall: Duration) {
    tokio::spawn(async move {
        tokio::time::sleep(stall).await;
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &pid.to_string()])
            .status();
    });
}

/// A stall longer than the lease TTL.
fn stall(rng: &mut Rng) -> Duration {
    Duration::from_millis(LEASE_TTL_MS + 500 + rng.below(2000))
}

async fn run(seed: u64, db: TestDb) -> Report {
    let ops: usize = std::env::var("SLIPWAY_CHAOS_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(14);
    let mut rng = Rng(seed);
    let mut report = Report::default();
    let mut plane = Plane::without_orchestrator_on(db).await;
    // An ack wait twice the lease TTL: a crashed holder's lease is free before its workflow is
    // redelivered, so contenders often take it in between (the resumed workflow must decide
    // again) and stalled holders wake up to find it taken (their writes must be refused).
    plane.orchestrator_env = vec![
        ("SLIPWAY_STANDBY_DELAY", "1h".into()),
        ("SLIPWAY_WORKFLOW_ACK_WAIT", "4s".into()),
    ];
    let setup = plane.spawn_orchestrator(&[]);
    let mut continued = Vec::new(); // processes that stopped at their planted point
    let mut projects = Vec::new();
    let mut deployments: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for _ in 0..PROJECTS {
        let project = plane.project().await;
        let first = plane.deployed(&project, "production", "v0").await;
        deployments.insert(project.clone(), vec![first]);
        projects.push(project);
    }
    plane.orchestrators[setup].kill();
    let mut slots = [spawn(&mut plane, &mut rng), spawn(&mut plane, &mut rng)];

    for op in 0..ops {
        report.operations += 1;
        let project = projects[rng.below(PROJECTS as u64) as usize].clone();
        // Rollback and promote targets: ready production deployments that are not live.
        let live = plane
            .store
            .project(&project)
            .await
            .unwrap()
            .live_deployment_id
            .unwrap_or_default();
        let mut targets = Vec::new();
        for id in &deployments[&project] {
            let d = plane.store.deployment(id).await.unwrap();
            if d.status == DeploymentStatus::Ready && *id != live {
                targets.push(id.clone());
            }
        }
        // A burst of one to three operations at once on the project, so that they contend
        // for its lease.
        let mut calls = Vec::new();
        for n in 0..=rng.below(3) {
            let pick = match targets.len() {
                0 => live.clone(),
                len => targets[rng.below(len as u64) as usize].clone(),
            };
            calls.push(match rng.below(10) {
                0..=4 => (
                    "slipway.deploy.v1.create_deployment",
                    json!({
                        "project_id": project,
                        "environment_slug": "production",
                        "docker_image": format!("exec:slipway demo-app --message s{seed}o{op}n{n}"),
                    }),
                ),
                5..=7 => (
                    "slipway.deploy.v1.rollback",
                    json!({"source_deployment_id": live, "target_deployment_id": pick, "wait_ms": 1}),
                ),
                _ => (
                    "slipway.deploy.v1.promote",
                    json!({"target_deployment_id": pick, "wait_ms": 1}),
                ),
            });
        }
        report.operations += calls.len() - 1;
        let replies = futures::future::join_all(
            calls
                .into_iter()
                .map(|(subject, body)| try_call(&plane, subject, body)),
        )
        .await;
        for reply in replies.iter().flatten() {
            if let Some(id) = reply["deployment_id"].as_str() {
                deployments.get_mut(&project).unwrap().push(id.to_string());
            }
        }
        // Somewhere inside the workflows just started: a deploy reaches its lease in about
        // 150 ms, a rollback or promote holds it from the start.
        tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        for slot in &mut slots {
            let o = &plane.orchestrators[*slot];
            if o.count_log("reached: aborting") > 0 {
                report.planted_kills += 1;
                plane.orchestrators[*slot].kill();
                *slot = spawn(&mut plane, &mut rng);
            } else if o.count_log("reached: stopping") > 0 && !continued.contains(slot) {
                report.planted_stops += 1;
                continued.push(*slot);
                continue_later(o.pid(), stall(&mut rng));
            }
        }
        // Random faults on top of the planted ones.
        if rng.chance(20) {
            let slot = rng.below(2) as usize;
            if rng.chance(50) {
                report.kills += 1;
                plane.orchestrators[slots[slot]].kill();
                tokio::time::sleep(Duration::from_millis(rng.below(800))).await;
                slots[slot] = spawn(&mut plane, &mut rng);
            } else {
                report.stops += 1;
                let process = &plane.orchestrators[slots[slot]];
                process.stop();
                continue_later(process.pid(), stall(&mut rng));
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
    }

    // Settle: everyone runs again, faults no longer planted, every workflow of these
    // projects finishes.
    for slot in &mut slots {
        plane.orchestrators[*slot].cont();
        if plane.orchestrators[*slot].count_log("reached: aborting") > 0 {
            plane.orchestrators[*slot].kill();
            *slot = plane.spawn_orchestrator(&[]);
        }
    }
    // Either may still carry a planted fault it has not reached yet: one more, clean.
    plane.spawn_orchestrator(&[]);
    let records = settle(&plane, &projects).await;
    for record in &records {
        report.workflows += 1;
        if record.runs > 1 {
            report.resumed += 1;
        }
        match (record.kind.as_str(), record.status.as_str()) {
            (_, "completed") => {}
            ("deploy", _) => panic!(
                "seed {seed}: deploy {} did not complete: {:?}",
                record.key, record.error
            ),
            (kind, _) => report.refused.push(format!(
                "{kind}: {}",
                record.error.clone().unwrap_or_default()
            )),
        }
    }
    for o in &plane.orchestrators {
        report.redecided += o.count_log("deciding them again");
        report.fenced += o.count_log("stale fencing token");
    }
    if let Err(violations) = plane
        .invariants()
        .settled(&projects, Duration::from_secs(20))
        .await
    {
        panic!(
            "seed {seed}: invariants violated after {report:?}:\n  {}",
            violations.join("\n  ")
        );
    }
    report
}

/// Waits until every workflow of `projects` has finished and no new one appears.
async fn settle(plane: &Plane, projects: &[String]) -> Vec<WorkflowRecord> {
    let mut seen = 0;
    loop {
        let keys: Vec<String> = plane
            .workflows
            .keys()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut records = Vec::new();
        for key in &keys {
            let Some(value) = plane.workflows.get(key.as_str()).await.unwrap() else {
                continue;
            };
            let record: WorkflowRecord = rmp_serde::from_slice(&value).unwrap();
            if record
                .scope
                .as_ref()
                .is_some_and(|s| projects.contains(&s.project_id))
            {
                records.push(record);
            }
        }
        let mut finished = Vec::new();
        for record in records {
            finished.push(if record.status.is_finished() {
                record
            } else {
                plane.workflow_done(&record.id).await
            });
        }
        if finished.len() == seen {
            return finished;
        }
        seen = finished.len();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn random_kills_and_stalls_keep_the_invariants_on_sqlite() {
    for seed in seeds("SLIPWAY_CHAOS_SEEDS", "1,2,3") {
        let report = tokio::time::timeout(TIMEOUT * 5, run(seed, TestDb::sqlite().unwrap()))
            .await
            .unwrap_or_else(|_| panic!("seed {seed}: not done within {:?}", TIMEOUT * 5));
        eprintln!("chaos sqlite seed {seed}: {report:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn random_kills_and_stalls_keep_the_invariants_on_postgres() {
    for seed in seeds("SLIPWAY_CHAOS_PG_SEEDS", "1") {
        let db = TestDb::postgres().await.unwrap();
        let report = tokio::time::timeout(TIMEOUT * 5, run(seed, db))
            .await
            .unwrap_or_else(|_| panic!("seed {seed}: not done within {:?}", TIMEOUT * 5));
        eprintln!("chaos postgres seed {seed}: {report:?}");
    }
}
