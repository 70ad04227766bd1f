//! Every deployment gets an end (BEHAVIOUR.md "Every deployment gets an end"): outside
//! `preview`, a deployment that serves no live or environment route goes to standby after the
//! standby delay, however it came to serve nothing — superseded while the project is pinned,
//! in an environment other than production, woken by a request for its own domain, or left
//! behind by a crash (the lifecycle sweep) — and after the archive window in standby it is
//! archived.

mod common;

use common::Plane;
use serde_json::json;
use slipway_workflow::Status;

const STANDBY: &str = "standby";

async fn plane(extra: &[(&'static str, String)]) -> Plane {
    let mut plane = Plane::without_orchestrator().await;
    plane.orchestrator_env = vec![("SLIPWAY_STANDBY_DELAY", "1s".into())];
    plane.orchestrator_env.extend(extra.iter().cloned());
    plane.spawn_orchestrator(&[]);
    plane
}

async fn desired_state(plane: &Plane, id: &str) -> String {
    plane.deployment(id).await["desired_state"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn create_environment(plane: &Plane, project: &str, slug: &str) {
    plane
        .ok(
            "slipway.project.v1.create_environment",
            json!({"project_id": project, "slug": slug}),
        )
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_superseded_while_the_project_is_pinned_goes_to_standby() {
    let mut plane = plane(&[]).await;
    let project = plane.project().await;
    let v1 = plane.deployed(&project, "production", "v1").await;
    let v2 = plane.deployed(&project, "production", "v2").await;
    let rollback = plane
        .workflow(
            "slipway.deploy.v1.rollback",
            json!({"source_deployment_id": v2, "target_deployment_id": v1, "wait_ms": 0}),
        )
        .await;
    assert_eq!(rollback.status, Status::Completed, "{:?}", rollback.error);
    // Pinned: v3 and then v4 take the environment route, not live.
    let v3 = plane.deployed(&project, "production", "v3").await;
    let v4 = plane.deployed(&project, "production", "v4").await;
    plane
        .deployment_where(&v3, |d| d["desired_state"] == STANDBY)
        .await;
    plane
        .deployment_where(&v2, |d| d["desired_state"] == STANDBY)
        .await;
    assert_eq!(
        plane.get_project(&project).await["project"]["live_deployment_id"],
        v1.as_str()
    );
    for serving in [&v1, &v4] {
        assert_eq!(desired_state(&plane, serving).await, "running", "{serving}");
    }
    plane.invariants().assert(&[project]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_superseded_staging_deployment_is_spun_down() {
    let mut plane = plane(&[]).await;
    let project = plane.project().await;
    create_environment(&plane, &project, "staging").await;
    let s1 = plane.deployed(&project, "staging", "s1").await;
    let s2 = plane.deployed(&project, "staging", "s2").await;
    plane
        .deployment_where(&s1, |d| d["desired_state"] == STANDBY)
        .await;
    plane.wait_instances(&s1, "inactive").await;
    assert_eq!(desired_state(&plane, &s2).await, "running");
    plane.invariants().assert(&[project]).await;
}

/// A woken deployment that serves nothing goes back to standby after the delay.
#[tokio::test(flavor = "multi_thread")]
async fn a_woken_superseded_deployment_goes_back_to_standby() {
    let mut plane = plane(&[]).await;
    let project = plane.project().await;
    let v1 = plane.deployed(&project, "production", "v1").await;
    plane.deployed(&project, "production", "v2").await;
    plane
        .deployment_where(&v1, |d| d["desired_state"] == STANDBY)
        .await;
    let wake = plane
        .workflow(
            "slipway.deploy.v1.wake_deployment",
            json!({"deployment_id": v1, "wait_ms": 0}),
        )
        .await;
    assert_eq!(wake.status, Status::Completed, "{:?}", wake.error);
    assert!(wake.steps.iter().any(|s| s.name == "settle"));
    plane
        .deployment_where(&v1, |d| d["desired_state"] == STANDBY)
        .await;
    let standbys = plane
        .events(&project, &v1)
        .await
        .into_iter()
        .filter(|e| e["type"] == "desired_state" && e["desired_state"] == STANDBY)
        .count();
    assert_eq!(standbys, 2, "superseded, then again after the wake");
    plane.invariants().assert(&[project]).await;
}

/// What a crash left running with nothing pending is found by the sweep; a standby older than
/// the archive window is archived, and nothing of it is kept: routes, route-table entries,
/// desired documents, instance reports (the edge answers 404).
#[tokio::test(flavor = "multi_thread")]
async fn the_sweep_ends_what_was_left_running_and_archives_old_standbys() {
    let mut plane = Plane::builder().services().edge().start().await;
    plane.orchestrator_env = vec![
        ("SLIPWAY_STANDBY_DELAY", "1s".into()),
        ("SLIPWAY_ARCHIVE_AFTER", "2s".into()),
    ];
    plane.spawn_orchestrator(&[]);
    let project = plane.project().await;
    create_environment(&plane, &project, "staging").await;
    let s1 = plane.deployed(&project, "staging", "s1").await;
    plane.deployed(&project, "staging", "s2").await;
    // As if the run that superseded s1 had died before its follow-up: nothing pending.
    plane
        .ok(
            &format!("slipway.deployment.v1.clear_scheduled_state_changes.{s1}"),
            json!({}),
        )
        .await;
    assert_eq!(plane.pending(&s1).await, None);
    assert_eq!(desired_state(&plane, &s1).await, "running");

    let reply = plane.sweep().await;
    assert_eq!(reply["standby"], json!([s1]), "{reply}");
    plane
        .deployment_where(&s1, |d| d["desired_state"] == STANDBY)
        .await;
    assert_eq!(plane.sweep().await["standby"], json!([]), "once");

    // The archive window passes (the behaviour under test is about time).
    let commit_domain = plane
        .routes(&project)
        .await
        .into_iter()
        .find(|r| r["sticky"] == "none" && r["deployment_id"] == s1.as_str())
        .and_then(|r| r["fqdn"].as_str().map(str::to_string))
        .expect("s1's per-commit route");
    tokio::time::sleep(std::time::Duration::from_millis(2_200)).await;
    let reply = plane.sweep().await;
    assert_eq!(reply["archived"], json!([s1]), "{reply}");
    plane
        .deployment_where(&s1, |d| d["desired_state"] == "archived")
        .await;
    // Nothing of it is kept: its routes (SQL and route table), its desired document, and
    // the agent's report of it.
    assert!(plane
        .routes(&project)
        .await
        .iter()
        .all(|r| r["deployment_id"] != s1.as_str()));
    assert_eq!(plane.route_table(&commit_domain).await, None);
    let (status, _, body) = plane.through_edge(&commit_domain, "/").await;
    assert_eq!(status, 404, "{body}");
    let desired_key = slipway_core::krane::desired_deployment_key("local", &s1);
    assert!(plane.desired.get(desired_key).await.unwrap().is_none());
    let report_key = slipway_core::krane::instances_key(&s1, "local");
    let deadline = tokio::time::Instant::now() + common::TIMEOUT;
    while plane.instances.get(&report_key).await.unwrap().is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent kept its report"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    plane.invariants().assert(&[project]).await;
}

/// `archive_deployment`: refused (400, nothing written) for a deployment that serves traffic,
/// as is a standby applied at once; otherwise it ends the deployment for good — its routes,
/// route-table entries and desired documents gone, its instances stopped, the edge answering
/// 404 — and a repeat answers the same.
#[tokio::test(flavor = "multi_thread")]
async fn archiving_ends_a_deployment_and_is_refused_for_one_that_serves() {
    let mut plane = Plane::builder().services().edge().start().await;
    plane.spawn_orchestrator(&[]);
    let project = plane.project().await;
    let v1 = plane.deployed(&project, "production", "v1").await;
    let v2 = plane.deployed(&project, "production", "v2").await;
    let routes_before = plane.routes(&project).await;

    let e = plane
        .call(
            "slipway.deploy.v1.archive_deployment",
            json!({"deployment_id": v2}),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (e.status, e.code.as_str()),
        (400, "failed_precondition"),
        "{e:?}"
    );
    assert!(e.message.contains("serves traffic"), "{}", e.message);
    let e = plane
        .call(
            &format!("slipway.deployment.v1.schedule_desired_state_change.{v2}"),
            json!({"delay_ms": 0, "state": STANDBY}),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (e.status, e.code.as_str()),
        (400, "failed_precondition"),
        "{e:?}"
    );
    assert_eq!(plane.pending(&v2).await, None);
    assert_eq!(desired_state(&plane, &v2).await, "running");
    assert_eq!(plane.routes(&project).await, routes_before);
    for (bad, status) in [("dep_nope", 404), ("proj_x", 400)] {
        let e = plane
            .call(
                "slipway.deploy.v1.archive_deployment",
                json!({"deployment_id": bad}),
            )
            .await
            .unwrap_err();
        assert_eq!(e.status, status, "{bad}: {e:?}");
    }

    let commit_domain = routes_before
        .iter()
        .find(|r| r["sticky"] == "none" && r["deployment_id"] == v1.as_str())
        .and_then(|r| r["fqdn"].as_str().map(str::to_string))
        .expect("v1's per-commit route");
    let reply = plane
        .ok(
            "slipway.deploy.v1.archive_deployment",
            json!({"deployment_id": v1}),
        )
        .await;
    assert_eq!(reply["status"], "completed", "{reply}");
    assert_eq!(reply["deployment"]["desired_state"], "archived", "{reply}");
    assert!(plane
        .routes(&project)
        .await
        .iter()
        .all(|r| r["deployment_id"] != v1.as_str()));
    assert_eq!(plane.route_table(&commit_domain).await, None);
    let (status, _, body) = plane.through_edge(&commit_domain, "/").await;
    assert_eq!(status, 404, "{body}");
    let desired_key = slipway_core::krane::desired_deployment_key("local", &v1);
    assert!(plane.desired.get(desired_key).await.unwrap().is_none());
    let again = plane
        .ok(
            "slipway.deploy.v1.archive_deployment",
            json!({"deployment_id": v1}),
        )
        .await;
    assert_eq!(again["deployment"]["desired_state"], "archived");
    // A woken archive is refused: archived is for good.
    let e = plane
        .call(
            "slipway.deploy.v1.wake_deployment",
            json!({"deployment_id": v1}),
        )
        .await
        .unwrap_err();
    assert_eq!(e.status, 400, "{e:?}");
    plane.invariants().assert(&[project]).await;
}
