//! ScaleDownIdlePreviewDeployments over real processes: which deployments are idle, an
//! unreadable traffic source scales nothing down, neither does silence when no edge was
//! watching, 2,000 preview environments are paged, and the cron starts exactly one run per
//! fire with two orchestrators. Edges are played by hand here: their traffic reports and
//! heartbeats published straight to `SLIPWAY_TRAFFIC`.

mod common;

use std::time::Duration;

use common::{Plane, TIMEOUT};
use futures::StreamExt;
use serde_json::json;
use slipway_core::time::now_ms;
use slipway_nats::provision;

const WINDOW: Duration = Duration::from_secs(2);

async fn plane(extra: &[(&'static str, String)]) -> Plane {
    let mut plane = Plane::without_orchestrator().await;
    plane.orchestrator_env = vec![("SLIPWAY_IDLE_WINDOW", "2s".into())];
    plane.orchestrator_env.extend(extra.iter().cloned());
    plane.spawn_orchestrator(&[]);
    plane
}

async fn report_traffic(plane: &Plane, deployment_id: &str, window_end_ms: i64) {
    let report = json!({"deployment_id": deployment_id, "requests": 3, "window_start_ms": window_end_ms - 1000, "window_end_ms": window_end_ms});
    plane
        .js
        .publish(
            format!("slipway.traffic.{deployment_id}"),
            report.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// An edge's heartbeat: up since `up_since_ms`, reporting every second, heard from now.
async fn edge_watching_since(plane: &Plane, edge_id: &str, up_since_ms: i64) {
    let heartbeat = json!({"edge_id": edge_id, "up_since_ms": up_since_ms, "at_ms": now_ms(), "every_ms": 1000});
    plane
        .js
        .publish(
            slipway_core::subjects::edge_heartbeat(edge_id),
            heartbeat.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn silence_is_not_idleness_unless_an_edge_was_watching() {
    let mut plane = plane(&[]).await;
    let project = plane.project().await;
    let idle = plane.deployed(&project, "preview", "idle").await;
    tokio::time::sleep(WINDOW + Duration::from_millis(200)).await;
    // No edge at all.
    let reply = plane.sweep().await;
    assert_eq!(
        (&reply["status"], &reply["scaled_down"]),
        (&json!("completed"), &json!([])),
        "{reply}"
    );
    let why = reply["scale_down_skipped"].as_str().unwrap_or_default();
    assert!(why.contains("no edge has watched traffic"), "{reply}");
    // An edge, but up only since within the window: it may have missed requests.
    edge_watching_since(&plane, "edge_new", now_ms() - 500).await;
    let reply = plane.sweep().await;
    assert_eq!(reply["scaled_down"], json!([]), "{reply}");
    // An edge that watched the whole window, but has gone quiet since.
    let gone = json!({"edge_id": "edge_gone", "up_since_ms": now_ms() - 3_600_000, "at_ms": now_ms() - 60_000, "every_ms": 1000});
    plane
        .js
        .publish(
            slipway_core::subjects::edge_heartbeat("edge_gone"),
            gone.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let reply = plane.sweep().await;
    assert_eq!(reply["scaled_down"], json!([]), "{reply}");
    assert_eq!(plane.deployment(&idle).await["desired_state"], "running");
    // One that watched it all: now the silence counts.
    edge_watching_since(&plane, "edge_old", now_ms() - 3_600_000).await;
    let reply = plane.sweep().await;
    assert_eq!(reply["scaled_down"], json!([idle]), "{reply}");
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_previews_go_to_standby_and_the_rest_is_left_alone() {
    let mut plane = plane(&[]).await;
    let project = plane.project().await;
    let idle = plane.deployed(&project, "preview", "idle").await;
    let busy = plane.deployed(&project, "preview", "busy").await;
    let old_traffic = plane.deployed(&project, "preview", "old-traffic").await;
    let production = plane.deployed(&project, "production", "prod").await;
    // Not ready: its app never becomes healthy... written straight as pending.
    let preview_env = plane.deployment(&idle).await["environment_id"]
        .as_str()
        .unwrap()
        .to_string();
    let pending = slipway_core::ids::new("dep");
    plane
        .store
        .insert_deployment(
            &slipway_store::NewDeployment {
                id: pending.clone(),
                environment_id: preview_env,
                ..Default::default()
            },
            now_ms() - 10 * WINDOW.as_millis() as i64,
        )
        .await
        .unwrap();
    // The idle window passes (the behaviour under test is about time).
    tokio::time::sleep(WINDOW + Duration::from_millis(200)).await;
    report_traffic(&plane, &old_traffic, now_ms() - 10_000).await;
    // Created within the window.
    let fresh = plane.deployed(&project, "preview", "fresh").await;
    edge_watching_since(&plane, "edge_1", now_ms() - 3_600_000).await;
    // Reported just before the run, so that the window (2 s) still holds it when the run
    // looks, however long the deploy above took.
    report_traffic(&plane, &busy, now_ms()).await;

    let reply = plane.sweep().await;
    assert_eq!(reply["status"], "completed", "{reply}");
    let mut scaled: Vec<&str> = reply["scaled_down"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    scaled.sort();
    let mut expected = vec![idle.as_str(), old_traffic.as_str()];
    expected.sort();
    assert_eq!(scaled, expected);

    for dep in [&idle, &old_traffic] {
        let changed = plane.wait_event(&project, dep, "desired_state").await;
        assert_eq!(changed["desired_state"], "standby");
        plane.wait_instances(dep, "inactive").await;
    }
    for dep in [&busy, &production, &fresh] {
        assert_eq!(
            plane.deployment(dep).await["desired_state"],
            "running",
            "{dep}"
        );
    }
    assert_eq!(plane.deployment(&pending).await["desired_state"], "running");
    // Run again: nothing left to scale down (the window has moved on meanwhile: the two
    // kept deployments get a request again).
    report_traffic(&plane, &busy, now_ms()).await;
    report_traffic(&plane, &fresh, now_ms()).await;
    let again = plane.sweep().await;
    assert_eq!(again["status"], "completed");
    assert_eq!(again["scaled_down"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_traffic_source_scales_nothing_down() {
    let mut plane = plane(&[]).await;
    let project = plane.project().await;
    let idle = plane.deployed(&project, "preview", "idle").await;
    tokio::time::sleep(WINDOW + Duration::from_millis(200)).await;
    plane.js.delete_stream(provision::TRAFFIC).await.unwrap();

    let reply = plane.sweep().await;
    assert_eq!(reply["status"], "failed", "{reply}");
    assert_eq!(reply["scaled_down"], json!([]));
    let record = plane
        .workflow_done(reply["workflow_id"].as_str().unwrap())
        .await;
    assert!(record.error.unwrap().contains("cannot read traffic"));
    assert!(record.steps.iter().all(|s| s.name != "scale_down"));
    assert_eq!(plane.deployment(&idle).await["desired_state"], "running");
    assert!(plane.pending(&idle).await.is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn two_thousand_preview_environments_are_paged_a_hundred_at_a_time() {
    let plane = plane(&[]).await;
    let long_ago = now_ms() - 3_600_000;
    let pool = plane.store.pool();
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO workspaces (id, slug, name, created_at_ms, updated_at_ms) VALUES ('ws_many', 'many', 'Many', 1, 1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    for i in 0..2000 {
        sqlx::query("INSERT INTO projects (id, workspace_id, slug, name, default_branch, created_at_ms, updated_at_ms) VALUES ($1, 'ws_many', $2, 'P', 'main', 1, 1)")
            .bind(format!("proj_many{i:04}"))
            .bind(format!("p{i}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query("INSERT INTO environments (id, workspace_id, project_id, slug, created_at_ms, updated_at_ms) VALUES ($1, 'ws_many', $2, 'preview', 1, 1)")
            .bind(format!("env_many{i:04}"))
            .bind(format!("proj_many{i:04}"))
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    // One idle ready deployment in every 100th environment, spread over the pages.
    let mut expected = vec![];
    for i in (37..2000).step_by(100) {
        let id = format!("dep_many{i:04}");
        plane
            .store
            .insert_deployment(
                &slipway_store::NewDeployment {
                    id: id.clone(),
                    environment_id: format!("env_many{i:04}"),
                    ..Default::default()
                },
                long_ago,
            )
            .await
            .unwrap();
        plane
            .store
            .set_deployment_status(&id, slipway_core::state::DeploymentStatus::Ready, long_ago)
            .await
            .unwrap();
        expected.push(id);
    }
    edge_watching_since(&plane, "edge_1", long_ago).await;

    let reply = plane.sweep().await;
    assert_eq!(reply["status"], "completed", "{reply}");
    let scaled: Vec<&str> = reply["scaled_down"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(scaled, expected);
    let record = plane
        .workflow_done(reply["workflow_id"].as_str().unwrap())
        .await;
    let pages = record
        .steps
        .iter()
        .filter(|s| s.name.starts_with("page_"))
        .count();
    assert_eq!(pages, 21, "20 full pages and the empty one that ends it");
    for id in &expected {
        assert_eq!(
            plane.deployment(id).await["desired_state"],
            "standby",
            "{id}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn each_cron_fire_starts_exactly_one_run_with_two_orchestrators() {
    let mut plane = plane(&[("SLIPWAY_SCALE_DOWN_SCHEDULE", "@every 1s".into())]).await;
    plane.spawn_orchestrator(&[]);
    // Watch for completed scale-down workflows until three fires have run.
    let mut watch = plane.workflows.watch_with_history("wf.*").await.unwrap();
    let mut done = std::collections::BTreeMap::new();
    tokio::time::timeout(TIMEOUT, async {
        while done.len() < 3 {
            let entry = watch.next().await.unwrap().unwrap();
            let record: slipway_workflow::WorkflowRecord =
                rmp_serde::from_slice(&entry.value).unwrap();
            if record.id.starts_with("wf_scale_down_") && record.status.is_finished() {
                done.insert(record.id.clone(), record);
            }
        }
    })
    .await
    .expect("three scheduled runs");
    for record in done.values() {
        assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
        assert_eq!(record.runs, 1, "{}: run more than once", record.id);
        assert_eq!(record.kind, "scale_down_idle_previews");
    }
    // Each of them was started by one orchestrator, once.
    for id in done.keys() {
        let needle = format!("scale-down started by its schedule workflow_id={id}");
        let started: usize = plane
            .orchestrators
            .iter()
            .map(|o| o.count_log(&needle))
            .sum();
        assert_eq!(started, 1, "{id}");
    }
}
