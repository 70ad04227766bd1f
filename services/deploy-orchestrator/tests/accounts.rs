//! `nats/accounts.conf` on a real nats-server: every service runs under its own user and a
//! deploy reaches ready; a platform user calls the public endpoints and follows events, but
//! the server refuses its publish to the timers stream, its request to an actor endpoint and
//! its KV writes; a region agent's user reads and writes only its own region.

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::{connect_as, Plane, TIMEOUT};
use futures::StreamExt;
use serde_json::{json, Value};

async fn call(client: &async_nats::Client, subject: &str, body: Value) -> Value {
    let reply = tokio::time::timeout(
        TIMEOUT,
        client.request(subject.to_string(), body.to_string().into()),
    )
    .await
    .unwrap_or_else(|_| panic!("{subject}: no reply"))
    .unwrap_or_else(|e| panic!("{subject}: {e}"));
    assert!(
        reply
            .headers
            .as_ref()
            .is_none_or(|h| h.get("Nats-Service-Error-Code").is_none()),
        "{subject}: {}",
        String::from_utf8_lossy(&reply.payload)
    );
    serde_json::from_slice(&reply.payload).unwrap()
}

/// The next permission violation the server reported to this connection.
async fn refused(errors: &mut tokio::sync::mpsc::UnboundedReceiver<String>, subject: &str) {
    let error = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let e = errors.recv().await.expect("connection gone");
            if e.contains(subject) {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the server did not refuse {subject}"));
    assert!(
        error.to_lowercase().contains("permissions violation"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn each_user_gets_what_its_role_needs_and_nothing_more() {
    let mut plane = Plane::secured().await;
    plane.spawn_orchestrator(&[]);
    plane.start_edge();
    let url = plane.nats.url();
    let (platform, mut platform_errors) = connect_as(&url, "platform").await;

    // The public API, as a platform service.
    let ws = call(
        &platform,
        "slipway.project.v1.create_workspace",
        json!({"slug": "acme"}),
    )
    .await;
    let project = call(
        &platform,
        "slipway.project.v1.create_project",
        json!({"workspace_id": ws["workspace"]["id"], "slug": "shop"}),
    )
    .await;
    let project = project["project"]["id"].as_str().unwrap().to_string();
    call(
        &platform,
        "slipway.project.v1.create_environment",
        json!({"project_id": project, "slug": "production"}),
    )
    .await;
    let created = call(
        &platform,
        "slipway.deploy.v1.create_deployment",
        json!({"project_id": project, "environment_slug": "production", "docker_image": "exec:slipway demo-app --message secured"}),
    )
    .await;
    let dep = created["deployment_id"].as_str().unwrap().to_string();

    // It follows the deployment on the events stream with a consumer of its own; the
    // services (each its own user, the agent as krane-agent-local) take it to ready.
    let events = jetstream::new(platform.clone())
        .get_stream("SLIPWAY_EVENTS")
        .await
        .unwrap();
    let consumer = events
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: format!("slipway.events.{project}.{dep}.ready"),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut ready = consumer.messages().await.unwrap();
    let event = tokio::time::timeout(TIMEOUT, ready.next())
        .await
        .expect("no ready event")
        .unwrap()
        .unwrap();
    let event: Value = serde_json::from_slice(&event.payload).unwrap();
    assert_eq!(event["deployment_id"], dep.as_str());
    let d = call(
        &platform,
        "slipway.deploy.v1.get_deployment",
        json!({ "deployment_id": dep }),
    )
    .await;
    assert_eq!(d["deployment"]["status"], "ready");
    let routes = call(
        &platform,
        &format!("slipway.routing.v1.list_routes.{project}"),
        json!({}),
    )
    .await;
    assert!(!routes["routes"].as_array().unwrap().is_empty());

    // The edge, as user `edge`, serves it (it reads the route table) and reports its traffic.
    let live = plane.serving_domain(&project, "live", "").await;
    let (status, _, body) = plane.through_edge(&live, "/").await;
    assert_eq!((status, body.as_str()), (200, "secured"));
    let traffic = plane.js.get_stream("SLIPWAY_TRAFFIC").await.unwrap();
    let reported = tokio::time::timeout(TIMEOUT, async {
        loop {
            let last = traffic
                .get_last_raw_message_by_subject(&format!("slipway.traffic.{dep}"))
                .await;
            if let Ok(message) = last {
                return serde_json::from_slice::<Value>(&message.payload).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("the edge reported no traffic");
    assert_eq!(reported["requests"], 1, "{reported}");
    // It may not write the route table, nor call the platform's endpoints.
    let (edge, mut edge_errors) = connect_as(&url, "edge").await;
    edge.publish("$KV.slipway_routes.evil.example", "{}".into())
        .await
        .unwrap();
    refused(&mut edge_errors, "$KV.slipway_routes").await;
    edge.publish("slipway.deploy.v1.create_deployment", "{}".into())
        .await
        .unwrap();
    refused(&mut edge_errors, "slipway.deploy.v1.create_deployment").await;

    // Refused by the server: the timers stream, the actor's endpoints, KV writes.
    platform
        .publish(
            format!("slipway.timers.schedule.deployment.{dep}"),
            "{}".into(),
        )
        .await
        .unwrap();
    refused(&mut platform_errors, "slipway.timers.schedule.deployment").await;
    let get_state = tokio::time::timeout(
        Duration::from_secs(3),
        platform.request(
            format!("slipway.deployment.v1.get_state.{dep}"),
            "{}".into(),
        ),
    )
    .await;
    assert!(
        !matches!(get_state, Ok(Ok(_))),
        "the actor answered a platform user"
    );
    refused(&mut platform_errors, "slipway.deployment.v1.get_state").await;
    platform
        .publish("$KV.slipway_routes.evil.example", "{}".into())
        .await
        .unwrap();
    refused(&mut platform_errors, "$KV.slipway_routes").await;
    platform
        .publish("slipway.routing.v1.ensure_routes.x", "{}".into())
        .await
        .unwrap();
    refused(&mut platform_errors, "slipway.routing.v1.ensure_routes").await;

    // Replies: a user reads only its own inbox prefix; nobody else's, nor all of them.
    for inboxes in ["_INBOX.>", "_INBOX_deploy-orchestrator.>", "_INBOX_edge.>"] {
        let _snoop = platform.subscribe(inboxes).await.unwrap();
        refused(&mut platform_errors, inboxes.trim_end_matches(".>")).await;
    }

    // A region agent's user: its own region only.
    let (agent, mut agent_errors) = connect_as(&url, "krane-agent-local").await;
    // No forged replies: publishing to an inbox is not answering a request received.
    for inbox in ["_INBOX.forged", "_INBOX_platform.forged"] {
        agent.publish(inbox, "{}".into()).await.unwrap();
        refused(&mut agent_errors, inbox).await;
    }
    let agent_js = jetstream::new(agent.clone());
    let other_region = agent_js
        .get_stream_no_info("KV_slipway_desired")
        .await
        .unwrap()
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            name: Some("snoop".into()),
            filter_subject: "$KV.slipway_desired.deployment.eu.>".into(),
            ..Default::default()
        })
        .await;
    assert!(other_region.is_err(), "read another region's desired state");
    refused(&mut agent_errors, "deployment.eu").await;
    // Nor another region's agent's consumer (the names are fixed: krane-<region>).
    let deleted = agent_js
        .delete_consumer_from_stream("krane-eu", "KV_slipway_desired")
        .await;
    assert!(deleted.is_err(), "deleted another region's consumer");
    refused(&mut agent_errors, "krane-eu").await;
    agent
        .publish(format!("$KV.slipway_instances.{dep}.eu"), "{}".into())
        .await
        .unwrap();
    refused(&mut agent_errors, "slipway_instances").await;
    agent
        .publish(
            format!("$KV.slipway_desired.deployment.local.{dep}"),
            "{}".into(),
        )
        .await
        .unwrap();
    refused(&mut agent_errors, "slipway_desired").await;

    // A service may not purge or delete a stream, nor touch one it does not work with.
    let (routing, mut routing_errors) = connect_as(&url, "routing").await;
    let purged = jetstream::new(routing.clone())
        .get_stream_no_info("SLIPWAY_TRAFFIC")
        .await
        .unwrap()
        .purge()
        .await;
    assert!(purged.is_err(), "routing purged SLIPWAY_TRAFFIC");
    refused(&mut routing_errors, "SLIPWAY_TRAFFIC").await;

    // The rest of the lifecycle under each service's own user: a second deploy supersedes
    // the first (its standby fires on the actor's timer), a rollback wakes it, the cron
    // workflow sweeps — and no service meets a permission it lacks.
    let v2 = call(
        &platform,
        "slipway.deploy.v1.create_deployment",
        json!({"project_id": project, "environment_slug": "production", "docker_image": "exec:slipway demo-app --message v2"}),
    )
    .await["deployment_id"]
        .as_str()
        .unwrap()
        .to_string();
    plane
        .deployment_where(&v2, |d| d["status"] == "ready")
        .await;
    plane
        .deployment_where(&dep, |d| d["desired_state"] == "standby")
        .await;
    let rolled = call(
        &platform,
        "slipway.deploy.v1.rollback",
        json!({"source_deployment_id": v2, "target_deployment_id": dep, "wait_ms": 60000}),
    )
    .await;
    assert_eq!(rolled["status"], "completed", "{rolled}");
    let swept = call(
        &platform,
        "slipway.deploy.v1.scale_down_idle_previews",
        json!({"wait_ms": 60000}),
    )
    .await;
    assert_eq!(swept["status"], "completed", "{swept}");
    plane
        .invariants()
        .assert(std::slice::from_ref(&project))
        .await;
    let processes = plane
        .services
        .iter()
        .chain(&plane.orchestrators)
        .chain(plane.agent.iter())
        .chain(plane.edge.iter());
    for process in processes {
        assert_eq!(
            process.count_log("Permissions Violation"),
            0,
            "a service lacks a grant"
        );
    }
}
