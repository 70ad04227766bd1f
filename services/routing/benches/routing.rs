//! Routing benchmark against a real nats-server, SQLite and one release-built routing
//! process: from an assignment request to a `slipway_routes` watcher (as an edge runs) seeing
//! the new target of every moved route, for 1 route and for 100 routes moved at once.
//!
//! `cargo bench -p routing --bench routing` (after scripts/install-nats-server.sh).

use std::{collections::BTreeMap, time::Duration, time::Instant};

use async_nats::jetstream;
use futures::StreamExt;
use slipway_nats::provision;
use slipway_proto::v1::{EnsureRoutesReply, EnsureRoutesRequest, RouteSpec};
use slipway_store::NewDeployment;
use slipway_testkit::{
    plane::{Plane, ROUTING},
    seed,
};

const ROUNDS: usize = 200;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Only warnings and readiness from routing.
    std::env::set_var("SLIPWAY_TEST_LOG", "warn,slipway::ready=info");
    let mut plane = Plane::builder().start().await;
    let store = &plane.store;
    let regions = BTreeMap::from([("local".to_string(), 1)]);
    seed::project(store, "b", "shop", "production", &regions).await;
    for i in 1..=2 {
        let id = format!("dep_{i}");
        let new = NewDeployment {
            id: id.clone(),
            environment_id: "env_b".into(),
            ..Default::default()
        };
        store.insert_deployment(&new, 1).await?;
        let instance = (
            format!("inst_{i}"),
            format!("127.0.0.1:{}", 9000 + i),
            slipway_core::krane::InstanceStatus::Running,
        );
        store.record_instances(&id, "local", &[instance], 1).await?;
    }
    plane.spawn(ROUTING, &[]);
    let client = plane.client.clone();

    let single = ensure(
        &client,
        (0..1).map(|i| format!("one{i}-bench.slipway.localhost")),
    )
    .await?;
    let hundred = ensure(
        &client,
        (0..100).map(|i| format!("r{i}-bench.slipway.localhost")),
    )
    .await?;

    println!("assignment request -> KV watcher sees every moved route ({ROUNDS} rounds, SQLite)");
    println!("routes | reply p50 / p99 ms | watcher saw all p50 / p99 ms");
    for (label, routes) in [("1", &single), ("100", &hundred)] {
        let (reply, seen) = measure(&client, &plane.js, routes).await?;
        println!(
            "{label:>6} | {:7.2} / {:6.2}    | {:7.2} / {:6.2}",
            reply.0, reply.1, seen.0, seen.1
        );
    }
    drop(plane);
    Ok(())
}

async fn ensure(
    client: &async_nats::Client,
    fqdns: impl Iterator<Item = String>,
) -> anyhow::Result<Vec<(String, String)>> {
    let req = EnsureRoutesRequest {
        environment_id: "env_b".into(),
        deployment_id: "dep_1".into(),
        routes: fqdns
            .map(|fqdn| RouteSpec {
                fqdn,
                sticky: "environment".into(),
            })
            .collect(),
    };
    let msg = client
        .request(
            "slipway.routing.v1.ensure_routes.proj_b",
            serde_json::to_vec(&req)?.into(),
        )
        .await?;
    let reply: EnsureRoutesReply = serde_json::from_slice(&msg.payload)?;
    Ok(reply.routes.into_iter().map(|r| (r.id, r.fqdn)).collect())
}

fn p50_p99(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.99))
}

async fn measure(
    client: &async_nats::Client,
    js: &jetstream::Context,
    routes: &[(String, String)],
) -> anyhow::Result<((f64, f64), (f64, f64))> {
    let kv = js.get_key_value(provision::ROUTES).await?;
    let ids: Vec<&String> = routes.iter().map(|(id, _)| id).collect();
    let fqdns: Vec<String> = routes.iter().map(|(_, f)| f.clone()).collect();
    // Updates only (no current values), as an edge that is already in sync would watch.
    let mut watch = kv.watch_many(fqdns.iter().map(String::as_str)).await?;
    let (mut replies, mut seen) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let target = if round % 2 == 0 { "dep_2" } else { "dep_1" };
        let body = serde_json::json!({"deployment_id": target, "route_ids": ids});
        let start = Instant::now();
        let msg = client
            .request(
                "slipway.routing.v1.assign_frontline_routes.proj_b",
                body.to_string().into(),
            )
            .await?;
        anyhow::ensure!(msg
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
            .is_none());
        replies.push(start.elapsed().as_secs_f64() * 1e3);
        let mut switched = std::collections::HashSet::new();
        while switched.len() < fqdns.len() {
            let entry = tokio::time::timeout(Duration::from_secs(10), watch.next())
                .await?
                .ok_or_else(|| anyhow::anyhow!("watch ended"))??;
            let value: serde_json::Value = serde_json::from_slice(&entry.value)?;
            if value["deployment_id"] == target {
                switched.insert(entry.key);
            }
        }
        seen.push(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok((p50_p99(replies), p50_p99(seen)))
}
