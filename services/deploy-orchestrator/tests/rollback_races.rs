//! Rollback and promote under concurrency and crashes: a rollback racing a deploy, ten
//! promotes racing on one project (the end state is one serial order's, and the routes
//! agree with the live pointer), and the orchestrator killed in the middle of each.

mod common;

use common::{Plane, TIMEOUT};
use serde_json::json;
use slipway_workflow::WorkflowRecord;

const LIVE: &str = "shop--acme1.slipway.localhost";
const PRODUCTION: &str = "shop--production--acme1.slipway.localhost";

fn step<'a>(record: &'a WorkflowRecord, name: &str) -> &'a slipway_workflow::StepRecord {
    record
        .steps
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no step {name}: {record:?}"))
}

async fn plane_with_long_standby() -> Plane {
    let mut plane = Plane::without_orchestrator().await;
    plane.orchestrator_env = vec![("SLIPWAY_STANDBY_DELAY", "1h".into())];
    plane.spawn_orchestrator(&[]);
    plane
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_racing_promotes_end_in_a_serial_order() {
    let mut plane = plane_with_long_standby().await;
    plane.spawn_orchestrator(&[]);
    let project = plane.project().await;
    let mut deps = vec![];
    for i in 0..11 {
        deps.push(
            plane
                .deployed(&project, "production", &format!("v{i}"))
                .await,
        );
    }
    let live_before = deps[10].clone();
    let replies = futures::future::join_all(deps[..10].iter().map(|d| {
        plane.ok(
            "slipway.deploy.v1.promote",
            json!({ "target_deployment_id": d }),
        )
    }))
    .await;
    let mut records = vec![];
    for (reply, target) in replies.iter().zip(&deps) {
        let record = plane
            .workflow_done(reply["workflow_id"].as_str().unwrap())
            .await;
        assert_eq!(
            record.status.as_str(),
            "completed",
            "{target}: {:?}",
            record.error
        );
        records.push((target.clone(), record));
    }
    // The serial order is the order of the live swaps; each one replaced the one before.
    records.sort_by_key(|(_, r)| step(r, "assign_routes").finished_at_ms);
    let mut previous = live_before;
    for (target, record) in &records {
        let replaced = common::replaced_by_commit(step(record, "assign_routes"));
        assert_eq!(replaced.as_deref(), Some(previous.as_str()), "{target}");
        previous = target.clone();
    }
    let p = plane.get_project(&project).await;
    assert_eq!(p["project"]["live_deployment_id"], previous.as_str());
    assert_eq!(p["project"]["is_rolled_back"], false);
    assert_eq!(plane.routed_to(LIVE).await, previous);
    assert_eq!(plane.routed_to(PRODUCTION).await, previous);
    // Everyone but the last is waiting for standby; the last is not.
    assert!(plane.pending(&previous).await.is_none());
    for d in deps.iter().filter(|d| **d != previous) {
        assert_eq!(plane.pending(d).await.unwrap()["state"], "standby", "{d}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_racing_a_deploy_ends_in_a_serial_order() {
    let mut plane = plane_with_long_standby().await;
    for _ in 0..3 {
        let project = plane.project().await;
        let v1 = plane.deployed(&project, "production", "v1").await;
        let v2 = plane.deployed(&project, "production", "v2").await;
        let ((v3, deploy_wf), rollback) = tokio::join!(
            plane.deploy(&project, "production", "v3"),
            plane.call(
                "slipway.deploy.v1.rollback",
                json!({"source_deployment_id": v2, "target_deployment_id": v1}),
            )
        );
        assert_eq!(
            plane.workflow_done(&deploy_wf).await.status.as_str(),
            "completed"
        );
        let rolled_back = match rollback {
            Ok(reply) => {
                plane
                    .workflow_done(reply["workflow_id"].as_str().unwrap())
                    .await
                    .status
                    .as_str()
                    == "completed"
            }
            // Validated after the deploy had already taken live.
            Err(e) => {
                assert_eq!(e.status, 400, "{e:?}");
                false
            }
        };
        let p = plane.get_project(&project).await;
        let live = p["project"]["live_deployment_id"]
            .as_str()
            .unwrap()
            .to_string();
        let (live_route, production_route) = plane.live_and_production_routes(&project).await;
        assert_eq!(live_route, live, "routes agree with the live pointer");
        if rolled_back {
            // Rollback first, then the deploy: pinned to v1, the environment route on v3.
            assert_eq!(
                (live.as_str(), p["project"]["is_rolled_back"].as_bool()),
                (v1.as_str(), Some(true))
            );
            assert_eq!(production_route, v3);
        } else {
            // The deploy first: v3 live, the rollback refused (v2 no longer live).
            assert_eq!(
                (live.as_str(), p["project"]["is_rolled_back"].as_bool()),
                (v3.as_str(), Some(false))
            );
            assert_eq!(production_route, v3);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_and_promote_killed_midway_complete_once() {
    let (mut plane, project, v1, v2) = Plane::two_deployed(vec![]).await;

    for (verb, body, point) in [
        (
            "rollback",
            json!({"source_deployment_id": v2, "target_deployment_id": v1, "wait_ms": 0}),
            "rollback.assign_routes.before_journal",
        ),
        (
            "promote",
            json!({"target_deployment_id": v2, "wait_ms": 0}),
            "promote.assign_routes.before_journal",
        ),
        (
            "rollback",
            json!({"source_deployment_id": v2, "target_deployment_id": v1, "wait_ms": 0}),
            "rollback.rolled_back.after_journal",
        ),
        (
            "promote",
            json!({"target_deployment_id": v2, "wait_ms": 0}),
            "promote.schedule_standby.before_journal",
        ),
    ] {
        let faulty = plane.spawn_orchestrator(&[("SLIPWAY_FAULT_POINT", point.into())]);
        let reply = plane.ok(&format!("slipway.deploy.v1.{verb}"), body).await;
        tokio::task::block_in_place(|| {
            plane.orchestrators[faulty]
                .wait_for_log(&format!("fault point {point} reached"), TIMEOUT)
                .unwrap()
        });
        plane.orchestrators[faulty].kill();
        let resumer = plane.spawn_orchestrator(&[]);
        let record = plane
            .workflow_done(reply["workflow_id"].as_str().unwrap())
            .await;
        assert_eq!(
            record.status.as_str(),
            "completed",
            "{point}: {:?}",
            record.error
        );
        assert_eq!(record.runs, 2, "{point}");
        let mut names: Vec<&str> = record.steps.iter().map(|s| s.name.as_str()).collect();
        let total = names.len();
        names.dedup();
        assert_eq!(names.len(), total, "{point}: a step twice: {names:?}");
        let (target, source) = if verb == "rollback" {
            (&v1, &v2)
        } else {
            (&v2, &v1)
        };
        let p = plane.get_project(&project).await;
        assert_eq!(
            p["project"]["live_deployment_id"],
            target.as_str(),
            "{point}"
        );
        assert_eq!(
            p["project"]["is_rolled_back"],
            verb == "rollback",
            "{point}"
        );
        assert_eq!(plane.routed_to(LIVE).await, *target, "{point}");
        assert_eq!(
            plane.pending(source).await.unwrap()["state"],
            "standby",
            "{point}"
        );
        // Its step events, once each.
        let wf = reply["workflow_id"].as_str().unwrap();
        let steps: Vec<String> = plane
            .events(&project, target)
            .await
            .iter()
            .filter(|e| e["type"] == "step" && e["workflow_id"] == wf)
            .map(|e| e["step"].as_str().unwrap().to_string())
            .collect();
        let journal: Vec<String> = record.steps.iter().map(|s| s.name.clone()).collect();
        assert_eq!(steps, journal, "{point}");
        plane.orchestrators[resumer].kill();
    }
}
