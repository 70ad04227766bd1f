//! State stops growing (issue 14): with short retention settings, deploy after deploy to one
//! environment, each superseding the one before; the lifecycle sweep archives what has been in
//! standby for the archive window, and JetStream drops finished workflow records. Then what is
//! kept of the history is bounded: the buckets hold only the deployment that runs, and the
//! bytes kept per archived deployment are measured (printed for the notes).

mod common;

use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use common::{Plane, TIMEOUT};
use futures::TryStreamExt;
use serde_json::json;
use sqlx::Row;

const DEPLOYS: usize = 8;

async fn keys(kv: &async_nats::jetstream::kv::Store) -> usize {
    kv.keys()
        .await
        .unwrap()
        .try_collect::<Vec<String>>()
        .await
        .unwrap()
        .len()
}

async fn bytes(plane: &Plane, stream: &str) -> u64 {
    let mut s: Stream = plane.js.get_stream(stream).await.unwrap();
    s.info().await.unwrap().state.bytes
}

async fn rows(plane: &Plane, table: &str) -> i64 {
    sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
        .fetch_one(plane.store.pool())
        .await
        .unwrap()
        .try_get("n")
        .unwrap()
}

/// Waits until `done` holds, checking every 100 ms.
async fn until<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn history_leaves_a_bounded_trace() {
    let mut plane = Plane::without_orchestrator().await;
    plane.orchestrator_env = vec![
        ("SLIPWAY_STANDBY_DELAY", "1s".into()),
        ("SLIPWAY_ARCHIVE_AFTER", "1s".into()),
        ("SLIPWAY_WORKFLOW_RETENTION", "1s".into()),
    ];
    plane.spawn_orchestrator(&[]);
    let project = plane.project().await;
    plane
        .ok(
            "slipway.project.v1.create_environment",
            json!({"project_id": project, "slug": "staging"}),
        )
        .await;
    let mut deployed = Vec::new();
    for i in 0..DEPLOYS {
        deployed.push(plane.deployed(&project, "staging", &format!("s{i}")).await);
    }
    let (old, last) = deployed.split_at(DEPLOYS - 1);
    for d in old {
        plane
            .deployment_where(d, |d| d["desired_state"] == "standby")
            .await;
        plane.wait_instances(d, "inactive").await;
    }
    // The archive window passes (the behaviour under test is about time), then the sweep.
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let swept = plane.sweep().await;
    assert_eq!(
        swept["archived"].as_array().map(Vec::len),
        Some(DEPLOYS - 1),
        "{swept}"
    );

    // What is left in the buckets is the running deployment's.
    until("only the running deployment's desired document", || async {
        keys(&plane.desired).await == 1
    })
    .await;
    until("only the running deployment's instance report", || async {
        keys(&plane.instances).await == 1
    })
    .await;
    let routes = plane.routes(&project).await;
    assert!(
        routes
            .iter()
            .all(|r| r["deployment_id"] == last[0].as_str()),
        "{routes:?}"
    );
    assert_eq!(keys(&plane.routes).await, routes.len());
    // What a removed key leaves, a marker, goes too: it carries a TTL (one day).
    let archived = &old[0];
    for (stream, subject) in [
        (
            "KV_slipway_desired",
            format!("$KV.slipway_desired.deployment.local.{archived}"),
        ),
        (
            "KV_slipway_instances",
            format!("$KV.slipway_instances.{archived}.local"),
        ),
    ] {
        let stream = plane.js.get_stream(stream).await.unwrap();
        let marker = stream
            .get_last_raw_message_by_subject(&subject)
            .await
            .unwrap();
        let ttl = marker.headers.get("Nats-TTL").map(|v| v.to_string());
        assert_eq!(
            ttl.as_deref(),
            Some("86400"),
            "{subject}: {:?}",
            marker.headers
        );
    }
    // Finished workflows' records go after their retention (1 s here), and with them what
    // their commits did (the sweep above came after the retention).
    until("no finished workflow's record", || async {
        keys(&plane.workflows).await == 0
    })
    .await;
    assert_eq!(rows(&plane, "applied_commits").await, 0);
    assert_eq!(rows(&plane, "live_commits").await, 0);
    plane
        .invariants()
        .assert(std::slice::from_ref(&project))
        .await;

    // Kept per deployment for good: its rows, its events (30 days, 1 GiB at most), its last
    // timer messages.
    let events = bytes(&plane, "SLIPWAY_EVENTS").await;
    let timers = bytes(&plane, "SLIPWAY_TIMERS").await;
    let kv: u64 = {
        let mut total = 0;
        for bucket in [
            "KV_slipway_desired",
            "KV_slipway_instances",
            "KV_slipway_routes",
            "KV_slipway_workflows",
            "KV_slipway_transitions",
        ] {
            total += bytes(&plane, bucket).await;
        }
        total
    };
    eprintln!(
        "growth: after {DEPLOYS} deploys ({} archived): KV streams {kv} bytes in all; \
         SLIPWAY_EVENTS {} bytes per deploy; SLIPWAY_TIMERS {} bytes per deploy; \
         rows: {} deployments, {} topology, {} instances, {} routes, {} requests",
        DEPLOYS - 1,
        events / DEPLOYS as u64,
        timers / DEPLOYS as u64,
        rows(&plane, "deployments").await,
        rows(&plane, "deployment_topology").await,
        rows(&plane, "instances").await,
        rows(&plane, "frontline_routes").await,
        rows(&plane, "deployment_requests").await,
    );
}
