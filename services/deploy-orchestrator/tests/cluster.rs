//! Many machines: a 3-node JetStream cluster (every stream and bucket R3), two processes of
//! every service (routing, deployment-actor, deploy-orchestrator, and two region agents: an
//! active one and its standby), PostgreSQL.
//!
//! 1. 100 deploys across 10 projects all reach ready while one node is stalled again and
//!    again (SIGSTOP for up to a second).
//! 2. 100 more while the leader of `SLIPWAY_WORKFLOWS` is SIGKILLed and restarted, then the
//!    meta leader, then one process of each service (the active agent among them); 200
//!    standby timers fall due during those failovers.
//!
//! Then every deploy has completed, the invariant checker holds on every project, and each
//! timer was applied exactly once. Prints the figures the issue asks for.

mod common;

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use common::Plane;
use futures::{future::join_all, StreamExt};
use slipway_proto::v1::ScheduleDesiredStateChangeReply;
use slipway_store::NewDeployment;
use slipway_testkit::{
    plane::{ACTOR, ROUTING},
    process, seed, TestDb,
};
use slipway_workflow::{Status, WorkflowRecord};

const PROJECTS: usize = 10;
const DEPLOYS_PER_PROJECT: usize = 10;
const TIMERS: usize = 200;

/// Starts `DEPLOYS_PER_PROJECT` production deploys in each project, all at once; returns
/// their workflow ids.
async fn start_deploys(plane: &Plane, projects: &[String], tag: &str) -> Vec<String> {
    let starts = projects.iter().flat_map(|project| {
        (0..DEPLOYS_PER_PROJECT).map(move |i| async move {
            plane
                .deploy(project, "production", &format!("{tag}{i}"))
                .await
                .1
        })
    });
    join_all(starts).await
}

/// Waits for each workflow to finish (within `within` in all); the unfinished and failed ones.
async fn unfinished(plane: &Plane, workflow_ids: &[String], within: Duration) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + within;
    let waits = workflow_ids.iter().map(|id| async move {
        let mut watch = match plane.workflows.watch_with_history(format!("wf.{id}")).await {
            Ok(w) => w,
            Err(e) => return Some(format!("{id}: cannot watch: {e}")),
        };
        let mut last = None;
        while let Ok(Some(Ok(entry))) = tokio::time::timeout_at(deadline, watch.next()).await {
            let Ok(record) = rmp_serde::from_slice::<WorkflowRecord>(&entry.value) else {
                continue;
            };
            if record.status == Status::Completed {
                return None;
            }
            if record.status.is_finished() {
                return Some(format!("{id}: {:?} {:?}", record.status, record.error));
            }
            last = Some(record.status);
        }
        Some(format!("{id}: still {last:?}"))
    });
    join_all(waits).await.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn deploys_and_timers_survive_stalls_and_failovers_on_a_cluster() {
    let mut plane = Plane::builder()
        .cluster()
        .database(TestDb::postgres().await.expect("PostgreSQL"))
        .service(ROUTING)
        .service(ROUTING)
        .service(ACTOR)
        .service(ACTOR)
        .agent()
        .orchestrators(2)
        // A region's agent fails over within its lease TTL plus re-reading the desired state;
        // amid NATS failovers that can take longer than the tests' usual 20 s.
        .orchestrator_env("SLIPWAY_READY_TIMEOUT", "60s")
        .start()
        .await;
    plane.start_standby_agent();
    let mut projects = Vec::new();
    for _ in 0..PROJECTS {
        projects.push(plane.project().await);
    }

    // 1. One node stalls again and again while 100 deploys run.
    let stalled = plane.nats.cluster().nodes[2].pid().expect("a running node");
    let stalling = Arc::new(AtomicBool::new(true));
    let stalls = Arc::new(AtomicUsize::new(0));
    let staller = tokio::spawn({
        let (stalling, stalls) = (stalling.clone(), stalls.clone());
        async move {
            let mut rng = slipway_core::seeded::Rng::new(15);
            let mut pause = move |from: u64, spread: usize| {
                Duration::from_millis(from + rng.below(spread) as u64)
            };
            while stalling.load(Ordering::SeqCst) {
                process::signal(stalled, "-STOP");
                tokio::time::sleep(pause(200, 800)).await;
                process::signal(stalled, "-CONT");
                stalls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(pause(300, 700)).await;
            }
        }
    });
    let started = Instant::now();
    let first = start_deploys(&plane, &projects, "a").await;
    let failed = unfinished(&plane, &first, Duration::from_secs(300)).await;
    stalling.store(false, Ordering::SeqCst);
    staller.await.unwrap();
    let stalls = stalls.load(Ordering::SeqCst);
    assert!(
        failed.is_empty(),
        "deploys not completed under stalls: {failed:?}"
    );
    eprintln!(
        "cluster: {} deploys across {PROJECTS} projects completed in {:?} with {stalls} stalls (SIGSTOP 0.2-1 s) of one node",
        first.len(),
        started.elapsed()
    );
    plane.invariants().assert(&projects).await;

    // 2. 200 standby timers, due over the next 20 s, on deployments of their own project.
    let regions = BTreeMap::from([("local".to_string(), 1)]);
    let timer_project = seed::project(&plane.store, "timers", "timers", "staging", &regions).await;
    let mut due: BTreeMap<String, ScheduleDesiredStateChangeReply> = BTreeMap::new();
    for i in 0..TIMERS {
        let id = format!("dep_timer{i:03}");
        let new = NewDeployment {
            id: id.clone(),
            environment_id: timer_project.environment_id.clone(),
            ..Default::default()
        };
        seed::deployment(&plane.store, &new, &regions).await;
        let reply: ScheduleDesiredStateChangeReply = plane
            .request(
                &slipway_core::subjects::deployment::SCHEDULE.of(&id),
                format!(r#"{{"delay_ms": {}, "state": "standby"}}"#, 3000 + 100 * i),
            )
            .await
            .expect("scheduling a timer");
        due.insert(id, reply);
    }

    // 100 more deploys (started, then run while leaders and processes die: one project's
    // deploys take turns under its lease).
    let second = start_deploys(&plane, &projects, "b").await;
    let mut faults = Vec::new();
    let cluster = plane.nats.cluster();
    let leader = cluster
        .stream_leader(&plane.js, "SLIPWAY_WORKFLOWS")
        .await
        .expect("the workflows stream's leader");
    cluster.nodes[leader].kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart(leader).await.expect("restarting the node");
    faults.push(format!(
        "SLIPWAY_WORKFLOWS leader (node {leader}) killed and restarted"
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let meta = cluster.meta_leader().await.expect("the meta leader");
    cluster.nodes[meta].kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart(meta).await.expect("restarting the node");
    faults.push(format!("meta leader (node {meta}) killed and restarted"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    // One process of each service: routing 0, actor 0 (services are routing, routing,
    // actor, actor), orchestrator 0, the active agent.
    plane.kill_service(0);
    plane.kill_service(2);
    plane.orchestrators[0].kill();
    plane.agent.as_mut().expect("the active agent").kill();
    faults
        .push("routing, actor, orchestrator and the active agent: one process each killed".into());
    tokio::time::sleep(Duration::from_secs(2)).await;
    plane.respawn_service(ROUTING);
    plane.respawn_service(ACTOR);
    plane.spawn_orchestrator(&[]);
    plane.start_standby_agent();

    let failed = unfinished(&plane, &second, Duration::from_secs(300)).await;
    assert!(
        failed.is_empty(),
        "deploys not completed across failovers: {failed:?}"
    );
    plane.invariants().assert(&projects).await;

    // Each timer applied once: one desired_state event carrying its nonce.
    let deadline = Instant::now() + Duration::from_secs(120);
    let events = loop {
        let events = slipway_testkit::stream_messages(
            &plane.js,
            "SLIPWAY_EVENTS",
            &format!(
                "slipway.events.{}.*.desired_state",
                timer_project.project_id
            ),
        )
        .await;
        if events.len() >= TIMERS || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut lateness = Vec::new();
    for (dep, reply) in &due {
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e["deployment_id"] == dep.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "timer of {dep} applied {} times", mine.len());
        assert_eq!(mine[0]["nonce"], reply.nonce.as_str());
        lateness.push(mine[0]["at_ms"].as_i64().unwrap_or_default() - reply.fires_at_ms);
    }
    lateness.sort_unstable();
    eprintln!(
        "cluster: {} more deploys completed across failovers ({}); {TIMERS} timers due during them each applied once, lateness p50 {} ms, max {} ms",
        second.len(),
        faults.join("; "),
        lateness[TIMERS / 2],
        lateness[TIMERS - 1]
    );
}
