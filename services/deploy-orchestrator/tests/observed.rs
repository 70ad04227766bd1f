//! Observed state flows back (issue 13, part 1): what the region agent reports is what
//! `get_deployment`, the route table and the events say, after a deploy too — a crashed
//! instance restarted on a new port, an app that crash-loops after it went live, a
//! deployment in standby.

mod common;

use std::time::Instant;

use common::Plane;
use serde_json::{json, Value};

fn one_other_than(entry: &Value, old: &str) -> bool {
    entry["instances"]
        .as_array()
        .is_some_and(|i| i.len() == 1 && i[0] != old)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_instance_is_replaced_and_its_new_address_shows_everywhere() {
    let mut plane = Plane::start().await;
    let project = plane.project().await;
    let dep = plane.deployed(&project, "production", "v1").await;
    let live = plane.serving_domain(&project, "live", "").await;
    let before = plane.deployment(&dep).await;
    let instance = before["instances"][0].clone();
    let (id, old) = (
        instance["id"].as_str().unwrap(),
        instance["address"].as_str().unwrap(),
    );
    assert_eq!(before["health"], "healthy");
    plane
        .route_entry_where(&live, |e| e["instances"] == json!([old]))
        .await;

    plane.kill_instance(id);
    let killed = Instant::now();
    // The agent starts it again on a new port; the route entry follows its report.
    let entry = plane
        .route_entry_where(&live, |e| one_other_than(e, old))
        .await;
    let new = entry["instances"][0].as_str().unwrap().to_string();
    println!(
        "kill → route entry at the new address: {} ms",
        killed.elapsed().as_millis()
    );
    // The database was written before the entry: the API says the same at once.
    let now = plane.deployment(&dep).await;
    assert_eq!(now["instances"][0]["id"], id);
    assert_eq!(now["instances"][0]["address"], new.as_str());
    assert_eq!(now["instances"][0]["status"], "running");
    assert_eq!(now["instances"][0]["restarts"], 1);
    assert_eq!(now["health"], "healthy");
    // Pipelines are told: the running set went empty, then came back at the new address.
    plane
        .wait_event_where(&project, &dep, "instances", |e| e["running"] == json!([]))
        .await;
    let back = plane
        .wait_event_where(&project, &dep, "instances", |e| {
            e["running"][0]["address"] == new.as_str()
        })
        .await;
    assert_eq!(back["region"], "local");
    plane.invariants().assert(&[project]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_that_crash_loops_after_it_went_live_is_reported() {
    let mut plane = Plane::start().await;
    let project = plane.project().await;
    // Healthy at once, then exits three seconds after each start: it goes ready and live.
    let image = "exec:slipway demo-app --message v1 --exit-after 3s";
    let (dep, wf) = plane.deploy_image(&project, "production", image).await;
    let record = plane.workflow_done(&wf).await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);

    let event = plane.wait_event(&project, &dep, "crash_looping").await;
    assert_eq!(event["region"], "local");
    assert!(event["restarts"].as_u64().unwrap() >= 3, "{event}");
    let message = event["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("crash-looping"), "{event}");
    let d = plane.deployment(&dep).await;
    assert_eq!(d["health"], "crash_looping", "{d}");
    assert_eq!(d["instances"][0]["crash_looping"], true, "{d}");
    // Told once, not at every restart of the loop.
    let told = plane.events(&project, &dep).await;
    let loops = told.iter().filter(|e| e["type"] == "crash_looping").count();
    assert_eq!(loops, 1, "{told:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_in_standby_shows_its_instances_inactive() {
    let mut plane = Plane::start().await;
    let project = plane.project().await;
    let v1 = plane.deployed(&project, "production", "v1").await;
    plane.deployed(&project, "production", "v2").await;
    // v1 goes to standby after the standby delay; its agent stops it and says so.
    plane.wait_instances(&v1, "inactive").await;
    let d = plane
        .deployment_where(&v1, |d| {
            d["instances"]
                .as_array()
                .is_some_and(|i| !i.is_empty() && i.iter().all(|i| i["status"] == "inactive"))
        })
        .await;
    assert_eq!(d["desired_state"], "standby");
    assert_eq!(d["health"], "inactive");
}
