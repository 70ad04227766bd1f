//! What an environment gives its deployments, end to end. Variables: set, listed (secrets
//! without their values), passed to the app by the agent, snapshotted per deployment so a
//! rollback runs the old build with its old variables; secrets need the key. Replicas: a
//! scale reaches the running deployment through its agent and every new deploy. Bad input
//! is a 4xx that writes nothing.

mod common;

use common::Plane;
use serde_json::{json, Value};
use slipway_workflow::Status;

const SET: &str = "slipway.project.v1.set_environment_variables";
const UNSET: &str = "slipway.project.v1.unset_environment_variables";
const LIST: &str = "slipway.project.v1.list_environment_variables";

/// What the app behind `host` reports of its `DEMO_*` variables.
async fn app_env(plane: &Plane, host: &str) -> String {
    let (status, _, body) = plane.through_edge(host, "/env").await;
    assert_eq!(status, 200, "{body}");
    body
}

fn live_domain(routes: &[Value]) -> String {
    routes
        .iter()
        .find(|r| r["sticky"] == "live")
        .and_then(|r| r["fqdn"].as_str())
        .expect("a live route")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn variables_reach_the_app_and_a_rollback_restores_them() {
    let mut plane = Plane::builder().services().edge().start().await;
    plane.spawn_orchestrator(&[]);
    let project = plane.project().await;
    let production = |extra: Value| {
        let mut body = json!({"project_id": project, "environment_slug": "production"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };

    let reply = plane
        .ok(
            SET,
            production(json!({"variables": {
                "DEMO_GREETING": {"value": "one"},
                "DEMO_TOKEN": {"value": "s3cret", "secret": true},
            }})),
        )
        .await;
    assert_eq!(reply["names"], json!(["DEMO_GREETING", "DEMO_TOKEN"]));
    let listed = plane.ok(LIST, production(json!({}))).await;
    assert_eq!(
        listed["variables"],
        json!([
            {"name": "DEMO_GREETING", "secret": false, "value": "one"},
            {"name": "DEMO_TOKEN", "secret": true},
        ]),
        "a secret's value is never returned"
    );

    let v1 = plane.deployed(&project, "production", "v1").await;
    let live = live_domain(&plane.routes(&project).await);
    assert_eq!(
        app_env(&plane, &live).await,
        "DEMO_GREETING=one\nDEMO_TOKEN=s3cret\n"
    );

    plane
        .ok(
            SET,
            production(json!({"variables": {"DEMO_GREETING": {"value": "two"}}})),
        )
        .await;
    let unset = plane
        .ok(
            UNSET,
            production(json!({"names": ["DEMO_TOKEN", "DEMO_NONE"]})),
        )
        .await;
    assert_eq!(unset["names"], json!(["DEMO_TOKEN"]));
    let v2 = plane.deployed(&project, "production", "v2").await;
    assert_eq!(app_env(&plane, &live).await, "DEMO_GREETING=two\n");

    let rollback = plane
        .workflow(
            "slipway.deploy.v1.rollback",
            json!({"source_deployment_id": v2, "target_deployment_id": v1, "wait_ms": 0}),
        )
        .await;
    assert_eq!(rollback.status, Status::Completed, "{:?}", rollback.error);
    assert_eq!(
        app_env(&plane, &live).await,
        "DEMO_GREETING=one\nDEMO_TOKEN=s3cret\n",
        "the old build with its old variables"
    );
    plane.invariants().assert(&[project]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_variables_get_4xx_and_write_nothing() {
    let mut plane = Plane::start().await;
    let project = plane.project().await;
    let body = |env: &str, variables: Value| json!({"project_id": project, "environment_slug": env, "variables": variables});
    let long = "x".repeat(32 * 1024 + 1);
    for (request, status) in [
        (body("production", json!({})), 400),
        (body("production", json!({"PORT": {"value": "1"}})), 400),
        (body("production", json!({"1X": {"value": "1"}})), 400),
        (body("production", json!({"A-B": {"value": "1"}})), 400),
        (
            body(
                "production",
                json!({"OK": {"value": "1"}, "BAD NAME": {"value": "1"}}),
            ),
            400,
        ),
        (body("production", json!({"A": {"value": long}})), 400),
        (body("production", json!({"A": {"value": "nul\u{0}"}})), 400),
        (body("", json!({"A": {"value": "1"}})), 400),
        (body("staging", json!({"A": {"value": "1"}})), 404),
        (
            json!({"project_id": "proj_nope", "environment_slug": "production", "variables": {"A": {"value": "1"}}}),
            404,
        ),
    ] {
        let e = plane.call(SET, request.clone()).await.unwrap_err();
        assert_eq!(e.status, status, "{request}: {e:?}");
    }
    for names in [json!([]), json!(["PORT"]), json!(["no way"])] {
        let request =
            json!({"project_id": project, "environment_slug": "production", "names": names});
        let e = plane.call(UNSET, request.clone()).await.unwrap_err();
        assert_eq!(e.status, 400, "{request}: {e:?}");
    }
    let listed = plane
        .ok(
            LIST,
            json!({"project_id": project, "environment_slug": "production"}),
        )
        .await;
    assert_eq!(listed["variables"], json!([]), "nothing written");

    // An orchestrator without the key refuses secrets, and says what is missing.
    for o in &mut plane.orchestrators {
        o.kill();
    }
    plane.spawn_orchestrator(&[("SLIPWAY_SECRETS_KEY", String::new())]);
    let e = plane
        .call(
            SET,
            body("production", json!({"T": {"value": "x", "secret": true}})),
        )
        .await
        .unwrap_err();
    assert_eq!(
        (e.status, e.code.as_str()),
        (400, "failed_precondition"),
        "{e:?}"
    );
    assert!(e.message.contains("SLIPWAY_SECRETS_KEY"), "{}", e.message);
}

/// How many instances of `deployment` its agent reports running.
async fn running(plane: &Plane, deployment: &str) -> usize {
    plane.deployment(deployment).await["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] == "running")
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_reaches_the_running_deployment_and_new_deploys() {
    let mut plane = Plane::builder().services().edge().start().await;
    plane.spawn_orchestrator(&[]);
    let project = plane.project().await;
    let v1 = plane.deployed(&project, "production", "v1").await;
    assert_eq!(running(&plane, &v1).await, 1);

    let reply = plane
        .ok(
            "slipway.project.v1.scale_environment",
            json!({"project_id": project, "environment_slug": "production", "regions": {"local": 3}}),
        )
        .await;
    assert_eq!(
        reply["environment"]["regions"],
        json!({"local": 3}),
        "{reply}"
    );
    assert_eq!(reply["scaled"], json!([v1]), "{reply}");
    plane
        .deployment_where(&v1, |d| {
            d["instances"]
                .as_array()
                .is_some_and(|i| i.iter().filter(|i| i["status"] == "running").count() == 3)
        })
        .await;
    // The route table follows what runs.
    let live = live_domain(&plane.routes(&project).await);
    let deadline = tokio::time::Instant::now() + common::TIMEOUT;
    loop {
        let entry = plane.route_table(&live).await.expect("the live entry");
        if entry["instances"].as_array().map(Vec::len) == Some(3) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{entry}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let v2 = plane.deployed(&project, "production", "v2").await;
    assert_eq!(running(&plane, &v2).await, 3);

    // Down again: the agent stops the extra instances.
    plane
        .ok(
            "slipway.project.v1.scale_environment",
            json!({"project_id": project, "environment_slug": "production", "regions": {"local": 1}}),
        )
        .await;
    plane
        .deployment_where(&v2, |d| {
            d["instances"]
                .as_array()
                .is_some_and(|i| i.iter().filter(|i| i["status"] == "running").count() == 1)
        })
        .await;

    for (request, status) in [
        (
            json!({"project_id": project, "environment_slug": "production", "regions": {}}),
            400,
        ),
        (
            json!({"project_id": project, "environment_slug": "production", "regions": {"local": 0}}),
            400,
        ),
        (
            json!({"project_id": project, "environment_slug": "production", "regions": {"local": 101}}),
            400,
        ),
        (
            json!({"project_id": project, "environment_slug": "production", "regions": {"Bad Region": 1}}),
            400,
        ),
        (
            json!({"project_id": project, "environment_slug": "staging", "regions": {"local": 1}}),
            404,
        ),
    ] {
        let e = plane
            .call("slipway.project.v1.scale_environment", request.clone())
            .await
            .unwrap_err();
        assert_eq!(e.status, status, "{request}: {e:?}");
    }
    let project_reply = plane.get_project(&project).await;
    let production = project_reply["environments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["slug"] == "production")
        .unwrap()
        .clone();
    assert_eq!(
        production["regions"],
        json!({"local": 1}),
        "nothing written"
    );
    plane.invariants().assert(&[project]).await;
}

/// An environment's per-instance limits are in its record and reach the agents with each of
/// its deployments (which snapshot them, as they do the port).
#[tokio::test(flavor = "multi_thread")]
async fn an_environment_s_limits_reach_its_deployments_desired_state() {
    let mut plane = Plane::start().await;
    let project = plane.project().await;
    let created = plane
        .ok(
            "slipway.project.v1.create_environment",
            json!({"project_id": project, "slug": "limited", "memory_mb": 256, "cpu_millis": 500}),
        )
        .await;
    assert_eq!(created["environment"]["memory_mb"], 256, "{created}");
    assert_eq!(created["environment"]["cpu_millis"], 500, "{created}");
    let dep = plane.deployed(&project, "limited", "capped").await;
    let entry = plane
        .desired
        .get(format!("deployment.local.{dep}"))
        .await
        .unwrap()
        .expect("a desired document");
    let doc: Value = serde_json::from_slice(&entry).unwrap();
    assert_eq!(
        doc["limits"],
        json!({"memory_mb": 256, "cpu_millis": 500}),
        "{doc}"
    );
}
