//! Deploys that cannot succeed fail with a reason that says why, within the ready timeout;
//! a transient failure is retried and marks nothing failed.

mod common;

use common::{Plane, TIMEOUT};
use serde_json::Value;

/// A plane whose orchestrator gives instances `ready_timeout` to become healthy.
async fn plane_with_ready_timeout(ready_timeout: &str) -> Plane {
    let mut plane = Plane::without_orchestrator().await;
    plane.spawn_orchestrator(&[("SLIPWAY_READY_TIMEOUT", ready_timeout.into())]);
    plane
}

fn failed_step(record: &slipway_workflow::WorkflowRecord) -> (&str, u32) {
    let last = record.steps.last().expect("a failed step");
    assert_eq!(last.status, slipway_workflow::StepStatus::Failed);
    (last.name.as_str(), last.attempts)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_that_never_becomes_healthy_fails_at_the_ready_timeout() {
    let mut plane = plane_with_ready_timeout("3s").await;
    let project = plane.project().await;
    let (dep, wf) = plane
        .deploy_image(&project, "production", "exec:slipway demo-app --unhealthy")
        .await;
    let record = plane.workflow_done(&wf).await;
    assert_eq!(record.status.as_str(), "failed");
    // A timeout is terminal: one attempt, not retried.
    assert_eq!(failed_step(&record), ("wait_instances", 1));
    let took = record.updated_at_ms - record.created_at_ms;
    assert!((3000..13_000).contains(&took), "failed after {took} ms");

    let d = plane.deployment(&dep).await;
    assert_eq!(d["status"], "failed");
    let reason = d["failure_reason"].as_str().unwrap();
    assert!(
        reason.contains("did not become healthy within the ready timeout (3s)")
            && reason.contains("0 of 1 running")
            && reason.contains("pending (GET /healthz answered 503 Service Unavailable)"),
        "what the health check saw: {reason}"
    );
    let failed = plane.wait_event(&project, &dep, "failed").await;
    assert_eq!(failed["failure_reason"], reason);
    // Never ready, never live, no routes.
    let events = plane.events(&project, &dep).await;
    assert!(events
        .iter()
        .all(|e| e["type"] != "ready" && e["type"] != "live"));
    assert!(plane.get_project(&project).await["project"]["live_deployment_id"].is_null());
    assert!(plane.routes(&project).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_that_exits_fails_fast_saying_so() {
    let mut plane = plane_with_ready_timeout("60s").await;
    let project = plane.project().await;
    let (dep, wf) = plane
        .deploy_image(&project, "preview", "exec:slipway demo-app --exit-after 0s")
        .await;
    let record = plane.workflow_done(&wf).await;
    assert_eq!(record.status.as_str(), "failed");
    assert_eq!(failed_step(&record).0, "wait_instances");
    // Long before the 60 s ready timeout.
    let took = record.updated_at_ms - record.created_at_ms;
    assert!(took < 30_000, "failed after {took} ms");
    let d = plane.deployment(&dep).await;
    assert_eq!(d["status"], "failed");
    let reason = d["failure_reason"].as_str().unwrap();
    assert!(reason.contains("exited with"), "{reason}");
    // It does not crash-loop for ever: the agent stops it.
    plane.wait_instances(&dep, "inactive").await;
}

/// An image the region's agent cannot run fails at once, saying so (it waited for the failed
/// grace, or the ready timeout, before).
#[tokio::test(flavor = "multi_thread")]
async fn an_image_the_agent_cannot_run_fails_at_once() {
    let mut plane = plane_with_ready_timeout("60s").await;
    let project = plane.project().await;
    let (dep, wf) = plane
        .deploy_image(&project, "production", "docker.io/library/nginx:latest")
        .await;
    let record = plane.workflow_done(&wf).await;
    assert_eq!(record.status.as_str(), "failed");
    assert_eq!(failed_step(&record), ("wait_instances", 1));
    let d = plane.deployment(&dep).await;
    let reason = d["failure_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("the agent of region local cannot run the image:")
            && reason.contains("docker.io/library/nginx:latest"),
        "{reason}"
    );
}

/// A deploy to an environment in a region no agent serves fails after the failed grace (5 s
/// here; the ready timeout is 60 s), naming the region.
#[tokio::test(flavor = "multi_thread")]
async fn a_region_without_an_agent_fails_the_deploy_saying_so() {
    let mut plane = plane_with_ready_timeout("60s").await;
    let project = plane.project().await;
    plane
        .ok(
            "slipway.project.v1.create_environment",
            serde_json::json!({"project_id": project, "slug": "mars", "regions": {"mars": 1}}),
        )
        .await;
    let (dep, wf) = plane.deploy(&project, "mars", "far").await;
    let record = plane.workflow_done(&wf).await;
    assert_eq!(record.status.as_str(), "failed");
    assert_eq!(failed_step(&record), ("wait_instances", 1));
    let took = record.updated_at_ms - record.created_at_ms;
    assert!(took < 30_000, "failed after {took} ms");
    let reason = plane.deployment(&dep).await["failure_reason"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.starts_with("no agent serves region mars: none has answered as slipway-krane-mars"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unavailable_dependency_is_retried_and_marks_nothing_failed() {
    let mut plane = Plane::start().await;
    let project = plane.project().await;
    // Routing is down when the deploy reaches its routes.
    plane.kill_service(0);
    let (dep, wf) = plane.deploy(&project, "production", "v1").await;
    tokio::task::block_in_place(|| {
        plane.orchestrators[0]
            .wait_for_log("step failed; retrying", TIMEOUT)
            .unwrap()
    });
    let mid = plane.deployment(&dep).await;
    assert_eq!(mid["status"], "deploying");
    plane.respawn_service("routing");

    let record = plane.workflow_done(&wf).await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
    let routes_step = record
        .steps
        .iter()
        .find(|s| s.name == "assign_routes")
        .unwrap();
    assert!(routes_step.attempts > 1, "{routes_step:?}");
    assert_eq!(plane.deployment(&dep).await["status"], "ready");
    let events: Vec<Value> = plane.events(&project, &dep).await;
    assert!(events.iter().all(|e| e["type"] != "failed"), "{events:?}");
}
