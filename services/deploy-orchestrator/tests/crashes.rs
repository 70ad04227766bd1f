//! The orchestrator SIGKILLed (aborted at a fault point, as a SIGKILL would) at every step
//! boundary of Deploy in turn, after a step's side effects and before its journal write,
//! and right after the journal write: another orchestrator resumes the workflow, it
//! completes, and nothing with a side effect happens twice.

mod common;

use std::collections::BTreeMap;

use common::{Plane, DEPLOY_STEPS as STEPS, TIMEOUT};
use serde_json::{json, Value};
use slipway_core::domains::Sticky;
use slipway_nats::provision;

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_killed_at_any_step_boundary_resumes_and_completes_once() {
    let mut plane = Plane::without_orchestrator().await;
    // A long standby delay keeps the scheduled transition in place to be inspected.
    plane.orchestrator_env = vec![("SLIPWAY_STANDBY_DELAY", "1h".into())];
    let mut points = vec![];
    for step in STEPS {
        points.push(format!("deploy.{step}.before_journal"));
        points.push(format!("deploy.{step}.after_journal"));
    }

    // A live production deployment per case, so that each deploy under test has a
    // previous live one to schedule to standby.
    let normal = plane.spawn_orchestrator(&[]);
    let mut cases = vec![];
    for point in &points {
        let project = plane.project().await;
        let (first, wf) = plane.deploy(&project, "production", "v1").await;
        assert_eq!(plane.workflow_done(&wf).await.status.as_str(), "completed");
        cases.push((point.clone(), project, first));
    }
    plane.orchestrators[normal].kill();

    for (point, project, first) in cases {
        let faulty = plane.spawn_orchestrator(&[("SLIPWAY_FAULT_POINT", point.clone())]);
        let (second, wf) = plane.deploy(&project, "production", "v2").await;
        tokio::task::block_in_place(|| {
            plane.orchestrators[faulty]
                .wait_for_log(&format!("fault point {point} reached"), TIMEOUT)
                .unwrap()
        });
        plane.orchestrators[faulty].kill();
        let resumer = plane.spawn_orchestrator(&[]);

        let record = plane.workflow_done(&wf).await;
        assert_eq!(
            record.status.as_str(),
            "completed",
            "{point}: {:?}",
            record.error
        );
        assert_eq!(record.runs, 2, "{point}: resumed once");
        let names: Vec<&str> = record.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, STEPS.to_vec(), "{point}: each step once, in order");
        check_effects_once(&plane, &point, &project, &first, &second, &record).await;
        plane.orchestrators[resumer].kill();
    }
}

async fn check_effects_once(
    plane: &Plane,
    point: &str,
    project: &str,
    first: &str,
    second: &str,
    record: &slipway_workflow::WorkflowRecord,
) {
    let d = plane.deployment(second).await;
    assert_eq!(d["status"], "ready", "{point}");
    assert_eq!(d["instances"].as_array().unwrap().len(), 1, "{point}: {d}");
    let p = plane.get_project(project).await;
    assert_eq!(p["project"]["live_deployment_id"], second, "{point}");

    // One topology row, one desired-state version.
    let topology = plane.store.topology(second).await.unwrap();
    assert_eq!(topology.len(), 1, "{point}: {topology:?}");
    assert_eq!(topology[0].version, 1, "{point}");

    // Routes: the first deploy's 4 plus this one's per-commit route, no duplicates, and
    // each moved route moved once (version 2).
    let routes = plane.store.routes(project, None).await.unwrap();
    assert_eq!(routes.len(), 5, "{point}: {routes:?}");
    for r in &routes {
        let (owner, version) =
            if r.sticky == Sticky::None && r.fqdn.contains(&first[first.len() - 4..]) {
                (first, 1)
            } else if r.sticky == Sticky::None {
                (second, 1)
            } else {
                (second, 2)
            };
        assert_eq!(
            (r.deployment_id.as_str(), r.version),
            (owner, version),
            "{point}: {r:?}"
        );
    }

    // One standby schedule for the first deployment: the one the journal recorded.
    let nonce: String = rmp_serde::from_slice(&record.steps[12].result).unwrap();
    let state = plane
        .ok(
            &format!("slipway.deployment.v1.get_state.{first}"),
            json!({}),
        )
        .await;
    assert_eq!(
        state["pending"]["nonce"],
        nonce.as_str(),
        "{point}: {state}"
    );
    assert_eq!(state["pending"]["state"], "standby");
    let schedules = common::stream_messages(
        &plane.js,
        provision::TIMERS,
        &format!("slipway.timers.schedule.deployment.{first}"),
    )
    .await;
    assert_eq!(schedules.len(), 1, "{point}: {schedules:?}");

    // Every event once.
    let events = plane.events(project, second).await;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for e in &events {
        let key = match e["type"].as_str().unwrap() {
            "step" => format!("step:{}", e["step"].as_str().unwrap()),
            "status" => format!("status:{}", e["status"].as_str().unwrap()),
            other => other.to_string(),
        };
        *counts.entry(key).or_default() += 1;
    }
    let twice: Vec<(&String, &usize)> = counts.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "{point}: events not once: {twice:?}");
    for step in STEPS {
        assert!(
            counts.contains_key(&format!("step:{step}")),
            "{point}: no step event for {step}"
        );
    }
    for kind in ["created", "ready", "live", "routes"] {
        assert!(
            counts.contains_key(kind),
            "{point}: no {kind} event: {counts:?}"
        );
    }
    let _: Vec<Value> = events;
}
