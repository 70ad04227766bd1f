//! Two orchestrators serve deploys of 20 projects at once, two production deploys per
//! project: every deploy completes, both orchestrators work, and per project the leased
//! parts (routes through live and standby, BEHAVIOUR.md "Per-project exclusion") never
//! overlap; the live pointer and the routes agree with the deploy that went last.

mod common;

use common::Plane;
use slipway_core::domains::Sticky;
use slipway_workflow::WorkflowRecord;

const PROJECTS: usize = 20;

/// [start, end] of the steps that run under the project's lease: from the route plan to
/// the commit, which releases it.
fn leased(record: &WorkflowRecord) -> (i64, i64) {
    let step = |name: &str| record.steps.iter().find(|s| s.name == name).unwrap();
    (
        step("routes").started_at_ms,
        step("assign_routes").finished_at_ms,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn two_orchestrators_keep_per_project_exclusion_across_twenty_projects() {
    let mut plane = Plane::without_orchestrator().await;
    plane.orchestrator_env = vec![("SLIPWAY_STANDBY_DELAY", "1h".into())];
    plane.spawn_orchestrator(&[]);
    plane.spawn_orchestrator(&[]);
    let mut projects = vec![];
    for _ in 0..PROJECTS {
        projects.push(plane.project().await);
    }
    // All deploys requested at once, alternating between projects.
    let mut requests = vec![];
    for round in 0..2 {
        for project in &projects {
            requests.push((project.clone(), format!("r{round}")));
        }
    }
    let started = futures::future::join_all(
        requests
            .iter()
            .map(|(project, message)| plane.deploy(project, "production", message)),
    )
    .await;
    let mut records = vec![];
    for (dep, wf) in &started {
        let record = plane.workflow_done(wf).await;
        assert_eq!(
            record.status.as_str(),
            "completed",
            "{dep}: {:?}",
            record.error
        );
        records.push(record);
    }
    for (i, o) in plane.orchestrators.iter().enumerate() {
        assert!(
            o.count_log("workflow completed") > 0,
            "orchestrator {i} did no work"
        );
    }

    for (p, project) in projects.iter().enumerate() {
        let (a, b) = (&records[p], &records[p + PROJECTS]);
        let (dep_a, dep_b) = (&started[p].0, &started[p + PROJECTS].0);
        let (sa, ea) = leased(a);
        let (sb, eb) = leased(b);
        assert!(
            ea <= sb || eb <= sa,
            "{project}: leased sections overlap: {dep_a} {sa}..{ea}, {dep_b} {sb}..{eb}"
        );
        let (last, earlier) = if sa > sb {
            (dep_a, dep_b)
        } else {
            (dep_b, dep_a)
        };

        let p = plane.get_project(project).await;
        assert_eq!(
            p["project"]["live_deployment_id"],
            last.as_str(),
            "{project}"
        );
        for route in plane.store.routes(project, None).await.unwrap() {
            if route.sticky != Sticky::None {
                assert_eq!(&route.deployment_id, last, "{project}: {route:?}");
            }
        }
        // The one that went live first is scheduled to standby by the other.
        let state = plane
            .ok(
                &format!("slipway.deployment.v1.get_state.{earlier}"),
                serde_json::json!({}),
            )
            .await;
        assert_eq!(state["pending"]["state"], "standby", "{project}: {state}");
    }
}
