//! Every validation of rollback and promote answers with its status code at once, and
//! nothing is written: no workflow, no route move, no change to any project or schedule.

mod common;

use common::Plane;
use futures::StreamExt;
use serde_json::{json, Value};
use slipway_core::{
    state::{DeploymentStatus, DesiredState},
    time::now_ms,
};
use slipway_store::NewDeployment;

/// A deployment written straight to the store, in `status` (and optionally archived).
async fn stored(plane: &Plane, env_id: &str, status: DeploymentStatus, archived: bool) -> String {
    let id = slipway_core::ids::new("dep");
    let s = &plane.store;
    s.insert_deployment(
        &NewDeployment {
            id: id.clone(),
            environment_id: env_id.into(),
            image: "exec:true".into(),
            ..Default::default()
        },
        now_ms(),
    )
    .await
    .unwrap();
    s.set_deployment_status(&id, status, now_ms())
        .await
        .unwrap();
    if archived {
        s.apply_desired_state(&id, DesiredState::Archived, "n1", now_ms())
            .await
            .unwrap();
    }
    id
}

async fn env_id(plane: &Plane, project: &str, slug: &str) -> String {
    let p = plane.get_project(project).await;
    p["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["slug"] == slug)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn snapshot(plane: &Plane, projects: &[&str], deps: &[&str]) -> Value {
    let mut out = vec![];
    for p in projects {
        out.push(plane.get_project(p).await["project"].clone());
        out.push(json!(plane.routes(p).await));
    }
    for d in deps {
        out.push(json!(plane.pending(d).await));
    }
    let keys: Vec<String> = plane
        .workflows
        .keys()
        .await
        .unwrap()
        .map(|k| k.unwrap())
        .collect()
        .await;
    out.push(json!(keys.len()));
    json!(out)
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_and_promote_validations_answer_at_once_and_write_nothing() {
    let mut plane = Plane::without_orchestrator().await;
    plane.orchestrator_env = vec![("SLIPWAY_STANDBY_DELAY", "1h".into())];
    plane.spawn_orchestrator(&[]);
    let a = plane.project().await;
    let v1 = plane.deployed(&a, "production", "v1").await;
    let v2 = plane.deployed(&a, "production", "v2").await;
    let p1 = plane.deployed(&a, "preview", "p1").await;
    let b = plane.project().await;
    let b1 = plane.deployed(&b, "production", "b1").await;
    let a_prod = env_id(&plane, &a, "production").await;
    let pending = stored(&plane, &a_prod, DeploymentStatus::Pending, false).await;
    let archived = stored(&plane, &a_prod, DeploymentStatus::Ready, true).await;
    // C: a ready deployment, nothing live. D: live, but no routes at all.
    let c = plane.project().await;
    let c1 = stored(
        &plane,
        &env_id(&plane, &c, "production").await,
        DeploymentStatus::Ready,
        false,
    )
    .await;
    let d = plane.project().await;
    let d_prod = env_id(&plane, &d, "production").await;
    let d1 = stored(&plane, &d_prod, DeploymentStatus::Ready, false).await;
    let d2 = stored(&plane, &d_prod, DeploymentStatus::Ready, false).await;
    plane
        .store
        .set_live_deployment(&d, Some(&d1), now_ms())
        .await
        .unwrap();

    let preview = plane.deployed(&a, "preview", "p1").await;
    let before = snapshot(&plane, &[&a, &b, &c, &d], &[&v1, &v2]).await;
    let rollback = |source: &str, target: &str| json!({"source_deployment_id": source, "target_deployment_id": target});
    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        (
            "rollback",
            "same deployment",
            rollback(&v2, &v2),
            400,
            "same deployment",
        ),
        (
            "rollback",
            "not an id",
            rollback("x", &v1),
            400,
            "source_deployment_id",
        ),
        (
            "rollback",
            "unknown source",
            rollback("dep_nope", &v1),
            404,
            "dep_nope",
        ),
        (
            "rollback",
            "unknown target",
            rollback(&v2, "dep_nope"),
            404,
            "dep_nope",
        ),
        (
            "rollback",
            "other project",
            rollback(&v2, &b1),
            400,
            "same project",
        ),
        (
            "rollback",
            "other environment",
            rollback(&v2, &p1),
            400,
            "same project and environment",
        ),
        (
            "rollback",
            "source not live",
            rollback(&v1, &v2),
            400,
            "not the live deployment",
        ),
        (
            "rollback",
            "target not ready",
            rollback(&v2, &pending),
            400,
            "not ready",
        ),
        (
            "rollback",
            "target archived",
            rollback(&v2, &archived),
            400,
            "archived",
        ),
        (
            "rollback",
            "no routes",
            rollback(&d1, &d2),
            400,
            "no live or environment routes",
        ),
        (
            "rollback",
            "bad wait_ms",
            json!({"source_deployment_id": v2, "target_deployment_id": v1, "wait_ms": -1}),
            400,
            "wait_ms",
        ),
        (
            "promote",
            "not an id",
            json!({"target_deployment_id": "proj_x"}),
            400,
            "target_deployment_id",
        ),
        (
            "promote",
            "unknown target",
            json!({"target_deployment_id": "dep_nope"}),
            404,
            "dep_nope",
        ),
        (
            "promote",
            "not ready",
            json!({"target_deployment_id": pending}),
            400,
            "not ready",
        ),
        (
            "promote",
            "archived",
            json!({"target_deployment_id": archived}),
            400,
            "archived",
        ),
        (
            "promote",
            "no live deployment",
            json!({"target_deployment_id": c1}),
            400,
            "no live deployment",
        ),
        (
            "promote",
            "a preview deployment",
            json!({"target_deployment_id": preview}),
            400,
            "environment preview",
        ),
        (
            "promote",
            "already live",
            json!({"target_deployment_id": v2}),
            400,
            "already the live deployment",
        ),
        (
            "promote",
            "bad wait_ms",
            json!({"target_deployment_id": v1, "wait_ms": 999_999_999}),
            400,
            "wait_ms",
        ),
    ];
    for (verb, what, body, status, needle) in cases {
        let err = plane
            .call(&format!("slipway.deploy.v1.{verb}"), body)
            .await
            .expect_err(what);
        assert_eq!(err.status, status, "{verb} {what}: {err:?}");
        assert!(err.message.contains(needle), "{verb} {what}: {err:?}");
    }
    assert_eq!(
        snapshot(&plane, &[&a, &b, &c, &d], &[&v1, &v2]).await,
        before
    );
}
