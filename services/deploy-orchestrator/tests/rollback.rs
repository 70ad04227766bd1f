//! Rollback and promote over real processes: rollback pins, promote unpins, promoting the
//! live deployment confirms a rollback; a standby target is woken before traffic moves to
//! it; a pending standby of the target is cleared and never fires.

mod common;

use common::{Plane, TIMEOUT};
use serde_json::{json, Value};

const LIVE: &str = "shop--acme1.slipway.localhost";
const PRODUCTION: &str = "shop--production--acme1.slipway.localhost";

async fn rollback(plane: &Plane, source: &str, target: &str) -> Value {
    plane
        .ok(
            "slipway.deploy.v1.rollback",
            json!({"source_deployment_id": source, "target_deployment_id": target}),
        )
        .await
}

async fn promote(plane: &Plane, target: &str) -> Value {
    plane
        .ok(
            "slipway.deploy.v1.promote",
            json!({ "target_deployment_id": target }),
        )
        .await
}

async fn live_of(plane: &Plane, project: &str) -> (String, bool) {
    let p = plane.get_project(project).await;
    (
        p["project"]["live_deployment_id"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        p["project"]["is_rolled_back"].as_bool().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_pins_promote_unpins_and_promoting_live_confirms() {
    let mut plane = Plane::without_orchestrator().await;
    plane.orchestrator_env = vec![("SLIPWAY_STANDBY_DELAY", "1h".into())];
    plane.spawn_orchestrator(&[]);
    let project = plane.project().await;
    let v1 = plane.deployed(&project, "production", "v1").await;
    let v2 = plane.deployed(&project, "production", "v2").await;
    assert!(plane.pending(&v1).await.is_some(), "v1 waits for standby");

    let reply = rollback(&plane, &v2, &v1).await;
    assert_eq!(reply["status"], "completed", "{reply}");
    assert!(reply["workflow_id"].as_str().unwrap().starts_with("wf_"));
    assert_eq!(live_of(&plane, &project).await, (v1.clone(), true));
    assert_eq!(plane.routed_to(LIVE).await, v1);
    assert_eq!(plane.routed_to(PRODUCTION).await, v1);
    assert!(
        plane.pending(&v1).await.is_none(),
        "the target's standby was cleared"
    );
    assert_eq!(plane.pending(&v2).await.unwrap()["state"], "standby");
    let events = plane.events(&project, &v1).await;
    let kinds = common::kinds(&events);
    // The rollback's story, on the target: its steps, the route move, rolled_back, live.
    let start = kinds.iter().position(|k| k == "step:validate").unwrap();
    assert_eq!(
        kinds[start..].to_vec(),
        [
            "step:validate",
            "step:clear_target",
            "step:check_target",
            "routes",
            "step:assign_routes",
            "rolled_back",
            "live",
            "step:rolled_back",
            "step:schedule_standby",
            "step:settle_project"
        ],
        "{kinds:?}"
    );

    // Pinned: a new production deploy moves the environment route only.
    let v3 = plane.deployed(&project, "production", "v3").await;
    assert_eq!(live_of(&plane, &project).await, (v1.clone(), true));
    assert_eq!(plane.routed_to(LIVE).await, v1);
    assert_eq!(plane.routed_to(PRODUCTION).await, v3);

    // Promote v3: it takes live and unpins; v1 goes to standby later.
    let reply = promote(&plane, &v3).await;
    assert_eq!(reply["status"], "completed", "{reply}");
    assert_eq!(live_of(&plane, &project).await, (v3.clone(), false));
    assert_eq!(plane.routed_to(LIVE).await, v3);
    assert_eq!(plane.routed_to(PRODUCTION).await, v3);
    assert_eq!(plane.pending(&v1).await.unwrap()["state"], "standby");
    let promoted = plane.wait_event(&project, &v3, "promoted").await;
    assert_eq!(promoted["previous_deployment_id"], v1.as_str());

    // Roll back again, then promote the live one: that confirms the rollback.
    assert_eq!(rollback(&plane, &v3, &v1).await["status"], "completed");
    assert_eq!(live_of(&plane, &project).await, (v1.clone(), true));
    let reply = promote(&plane, &v1).await;
    assert_eq!(reply["status"], "completed", "{reply}");
    assert_eq!(live_of(&plane, &project).await, (v1.clone(), false));
    assert_eq!(plane.routed_to(LIVE).await, v1);
    let record = plane
        .workflow_done(reply["workflow_id"].as_str().unwrap())
        .await;
    let names: Vec<&str> = record.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["validate", "confirm_rollback", "promoted"]);
    // And now a production deploy takes live again.
    let v4 = plane.deployed(&project, "production", "v4").await;
    assert_eq!(live_of(&plane, &project).await, (v4.clone(), false));
    assert_eq!(plane.routed_to(LIVE).await, v4);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_target_is_woken_before_traffic_moves_to_it() {
    let mut plane = Plane::start().await; // standby delay 2 s
    let project = plane.project().await;
    let v1 = plane.deployed(&project, "production", "v1").await;
    let v2 = plane.deployed(&project, "production", "v2").await;
    plane.wait_event(&project, &v1, "desired_state").await;
    plane.wait_instances(&v1, "inactive").await;
    assert_eq!(plane.deployment(&v1).await["desired_state"], "standby");

    // Every version of the live route's table entry, from now on.
    let mut watch = plane.routes.watch(LIVE).await.unwrap();
    let reply = rollback(&plane, &v2, &v1).await;
    assert_eq!(reply["status"], "completed", "{reply}");
    let d = plane.deployment(&v1).await;
    assert_eq!(d["desired_state"], "running");
    let addresses: Vec<Value> = d["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].clone())
        .collect();
    assert_eq!(addresses.len(), 1);
    // The moment the live route points at v1, it carries v1's new, running instance.
    use futures::StreamExt;
    let entry = tokio::time::timeout(TIMEOUT, watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let entry: Value = serde_json::from_slice(&entry.value).unwrap();
    assert_eq!(entry["deployment_id"], v1.as_str());
    assert_eq!(entry["instances"], json!(addresses));
    let body = reqwest::get(format!("http://{}/", addresses[0].as_str().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "v1");
    let record = plane
        .workflow_done(reply["workflow_id"].as_str().unwrap())
        .await;
    let names: Vec<&str> = record.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "validate",
            "clear_target",
            "check_target",
            "wake_target",
            "wait_target",
            "record_target",
            "assign_routes",
            "rolled_back",
            "schedule_standby",
            "settle_project"
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pending_standby_of_the_target_is_cleared_and_never_fires() {
    let mut plane = Plane::without_orchestrator().await;
    plane.orchestrator_env = vec![("SLIPWAY_STANDBY_DELAY", "3s".into())];
    plane.spawn_orchestrator(&[]);
    let project = plane.project().await;

    // Rollback: v1's pending standby is cleared; v2's, scheduled later, fires.
    let v1 = plane.deployed(&project, "production", "v1").await;
    let v2 = plane.deployed(&project, "production", "v2").await;
    assert!(plane.pending(&v1).await.is_some());
    assert_eq!(rollback(&plane, &v2, &v1).await["status"], "completed");
    assert!(plane.pending(&v1).await.is_none());
    let schedule = plane
        .js
        .get_stream("SLIPWAY_TIMERS")
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&format!("slipway.timers.schedule.deployment.{v1}"))
        .await;
    assert!(schedule.is_err(), "v1's schedule is still in the stream");
    plane.wait_event(&project, &v2, "desired_state").await;
    assert!(plane
        .events(&project, &v1)
        .await
        .iter()
        .all(|e| e["type"] != "desired_state"));
    assert_eq!(plane.deployment(&v1).await["desired_state"], "running");

    // Promote: v3 (pending standby after v4 took over... via a promote) is cleared too.
    let project = plane.project().await;
    let v3 = plane.deployed(&project, "production", "v3").await;
    let v4 = plane.deployed(&project, "production", "v4").await;
    assert!(plane.pending(&v3).await.is_some());
    assert_eq!(promote(&plane, &v3).await["status"], "completed");
    assert!(plane.pending(&v3).await.is_none());
    plane.wait_event(&project, &v4, "desired_state").await;
    assert!(plane
        .events(&project, &v3)
        .await
        .iter()
        .all(|e| e["type"] != "desired_state"));
    assert_eq!(plane.deployment(&v3).await["desired_state"], "running");
}
