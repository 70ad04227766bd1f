//! Deploy end to end, over real processes: a production deploy reaches ready and live, a
//! second one takes over and the first goes to standby, previews and rolled-back projects
//! leave live alone.

mod common;

use common::{kinds, Plane, DEPLOY_STEPS as STEPS, TIMEOUT};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_production_deploy_reaches_ready_routed_and_live() {
    let mut plane = Plane::start().await;
    let project = plane.project().await;
    let (dep, wf) = plane.deploy(&project, "production", "v1").await;
    let record = plane.workflow_done(&wf).await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);

    let d = plane.deployment(&dep).await;
    assert_eq!(d["status"], "ready");
    assert_eq!(d["desired_state"], "running");
    assert_eq!(d["git_branch"], "main");
    let instances = d["instances"].as_array().unwrap();
    assert_eq!(instances.len(), 1, "{d}");
    assert_eq!(instances[0]["status"], "running");
    assert_eq!(instances[0]["region"], "local");
    let address = instances[0]["address"].as_str().unwrap();
    // The instance really serves the app.
    let body = reqwest::get(format!("http://{address}/"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(body, "v1");
    assert!(
        d["openapi_spec"].as_str().unwrap().contains("openapi"),
        "{d}"
    );

    // Domains of all four kinds.
    let domains: Vec<&str> = d["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let suffix = &dep[dep.len() - 4..];
    assert_eq!(
        domains,
        vec![
            format!("shop--git-0123456--{suffix}--acme1.slipway.localhost"),
            "shop--git-main--acme1.slipway.localhost".to_string(),
            "shop--production--acme1.slipway.localhost".to_string(),
            "shop--acme1.slipway.localhost".to_string(),
        ],
        "{d}"
    );

    // Every route and its edge table entry point at it, with the instance's address.
    let routes = plane.routes(&project).await;
    assert_eq!(routes.len(), 4, "{routes:?}");
    for route in &routes {
        assert_eq!(route["deployment_id"], dep.as_str());
        let entry = plane
            .route_table(route["fqdn"].as_str().unwrap())
            .await
            .unwrap();
        assert_eq!(entry["deployment_id"], dep.as_str());
        assert_eq!(entry["instances"], json!([address]));
    }
    let project_reply = plane.get_project(&project).await;
    assert_eq!(project_reply["project"]["live_deployment_id"], dep.as_str());
    assert_eq!(project_reply["project"]["is_rolled_back"], false);

    // The journal: each step once, in order (no previous live: nothing to schedule).
    let names: Vec<&str> = record.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, [&STEPS[..12], &["settle_project"]].concat());
    assert!(record
        .steps
        .iter()
        .all(|s| s.status == slipway_workflow::StepStatus::Completed && s.attempts == 1));
    let wf_reply = plane
        .ok(
            "slipway.deploy.v1.get_workflow",
            json!({ "workflow_id": wf }),
        )
        .await;
    assert_eq!(wf_reply["workflow"]["status"], "completed");
    assert_eq!(wf_reply["workflow"]["kind"], "deploy");
    assert_eq!(wf_reply["workflow"]["key"], dep.as_str());
    assert_eq!(wf_reply["workflow"]["steps"].as_array().unwrap().len(), 13);

    // The events tell the story in order.
    let events = plane.events(&project, &dep).await;
    let expected = [
        "created",
        "step:load",
        "step:source",
        "status:deploying",
        "step:deploying",
        "step:topology",
        "step:sentinels",
        "step:wait_instances",
        "step:record_instances",
        "step:openapi",
        "step:routes",
        // The commit creates the first deploy's routes pointing at it: they are its `routes`.
        "routes",
        "step:assign_routes",
        "status:ready",
        "ready",
        "step:ready",
        "live",
        "step:live",
        "step:settle_project",
    ];
    assert_eq!(kinds(&events), expected);
    for e in &events {
        assert_eq!(e["project_id"], project.as_str());
        assert_eq!(e["deployment_id"], dep.as_str());
        assert_eq!(e["environment_slug"], "production");
        assert!(e["at_ms"].as_i64().unwrap() > 0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_production_deploy_takes_over_and_the_first_goes_to_standby() {
    let mut plane = Plane::start().await;
    let project = plane.project().await;
    let (first, wf1) = plane.deploy(&project, "production", "v1").await;
    plane.workflow_done(&wf1).await;
    let (second, wf2) = plane.deploy(&project, "production", "v2").await;
    let record = plane.workflow_done(&wf2).await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
    let names: Vec<&str> = record.steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, STEPS.to_vec());

    let project_reply = plane.get_project(&project).await;
    assert_eq!(
        project_reply["project"]["live_deployment_id"],
        second.as_str()
    );
    for route in plane.routes(&project).await {
        let expected = match route["sticky"].as_str().unwrap() {
            // The per-commit route of the first deploy stays with it.
            "none"
                if route["fqdn"]
                    .as_str()
                    .unwrap()
                    .contains(&first[first.len() - 4..]) =>
            {
                &first
            }
            _ => &second,
        };
        assert_eq!(route["deployment_id"], expected.as_str(), "{route}");
    }
    let live = plane
        .route_table("shop--acme1.slipway.localhost")
        .await
        .unwrap();
    assert_eq!(live["deployment_id"], second.as_str());

    // After the (2 s) standby delay the first one goes to standby and its app is stopped.
    let changed = plane.wait_event(&project, &first, "desired_state").await;
    assert_eq!(changed["desired_state"], "standby");
    plane.wait_instances(&first, "inactive").await;
    assert_eq!(plane.deployment(&first).await["desired_state"], "standby");
    assert_eq!(plane.deployment(&second).await["desired_state"], "running");
}

#[tokio::test(flavor = "multi_thread")]
async fn preview_deploys_and_rolled_back_projects_leave_live_alone() {
    let mut plane = Plane::start().await;
    let project = plane.project().await;
    let (live, wf) = plane.deploy(&project, "production", "v1").await;
    plane.workflow_done(&wf).await;

    // A preview deploy: ready, its environment route moves, live stays.
    let (preview, wf) = plane.deploy(&project, "preview", "p1").await;
    let record = plane.workflow_done(&wf).await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
    assert!(record
        .steps
        .iter()
        .all(|s| s.name != "live" && s.name != "schedule_standby"));
    assert_eq!(plane.deployment(&preview).await["status"], "ready");
    assert_eq!(
        plane.get_project(&project).await["project"]["live_deployment_id"],
        live.as_str()
    );
    let preview_route = plane
        .route_table("shop--preview--acme1.slipway.localhost")
        .await
        .unwrap();
    assert_eq!(preview_route["deployment_id"], preview.as_str());
    assert_eq!(
        plane
            .route_table("shop--acme1.slipway.localhost")
            .await
            .unwrap()["deployment_id"],
        live.as_str()
    );
    assert_eq!(
        plane
            .route_table("shop--production--acme1.slipway.localhost")
            .await
            .unwrap()["deployment_id"],
        live.as_str()
    );
    let state = plane
        .ok(
            &format!("slipway.deployment.v1.get_state.{live}"),
            json!({}),
        )
        .await;
    assert!(
        state.get("pending").is_none(),
        "a preview scheduled something: {state}"
    );

    // Pinned by a rollback: a production deploy moves the environment route, not live.
    plane
        .store
        .assign_routes(
            &slipway_store::Assignment {
                project_id: &project,
                deployment_id: &live,
                route_ids: &[],
                create: &[],
                environment_id: "",
                fencing_token: 0,
                live: slipway_store::LiveChange::Pin,
                commit_id: "",
            },
            1,
        )
        .await
        .unwrap();
    let (pinned, wf) = plane.deploy(&project, "production", "v2").await;
    let record = plane.workflow_done(&wf).await;
    assert_eq!(record.status.as_str(), "completed", "{:?}", record.error);
    assert!(record.steps.iter().all(|s| s.name != "schedule_standby"));
    let p = plane.get_project(&project).await;
    assert_eq!(p["project"]["live_deployment_id"], live.as_str());
    assert_eq!(p["project"]["is_rolled_back"], true);
    assert_eq!(
        plane
            .route_table("shop--acme1.slipway.localhost")
            .await
            .unwrap()["deployment_id"],
        live.as_str()
    );
    assert_eq!(
        plane
            .route_table("shop--production--acme1.slipway.localhost")
            .await
            .unwrap()["deployment_id"],
        pinned.as_str()
    );
    let state = plane
        .ok(
            &format!("slipway.deployment.v1.get_state.{live}"),
            json!({}),
        )
        .await;
    assert!(state.get("pending").is_none(), "{state}");
    let _ = TIMEOUT;
}
