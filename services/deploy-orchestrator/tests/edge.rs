//! The edge over real processes (issue 13, part 2): requests by host to every kind of
//! generated domain, the forwarded headers, 404 for an unknown host, a killed instance, a
//! deployment in standby woken by its next request, and the idle-preview spin-down driven by
//! the traffic the edge reports.

mod common;

use common::Plane;
use serde_json::{json, Value};

async fn plane() -> Plane {
    Plane::builder()
        .services()
        .orchestrators(1)
        .edge()
        .start()
        .await
}

/// The fqdn of the project's route of `sticky`, and of the environment's `environment`.
fn route_of<'a>(routes: &'a [Value], sticky: &str, contains: &str) -> &'a str {
    routes
        .iter()
        .find(|r| r["sticky"] == sticky && r["fqdn"].as_str().unwrap().contains(contains))
        .and_then(|r| r["fqdn"].as_str())
        .unwrap_or_else(|| panic!("no {sticky} route with {contains}: {routes:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_go_by_host_to_the_deployment_each_domain_names() {
    let mut plane = plane().await;
    let project = plane.project().await;
    let v1 = plane.deployed(&project, "production", "v1").await;
    let preview = plane.deployed(&project, "preview", "p1").await;
    let routes = plane.routes(&project).await;
    assert!(routes.len() >= 4, "{routes:?}");
    // Every route answers from the deployment it names: live, environment, branch, commit.
    for route in &routes {
        let fqdn = route["fqdn"].as_str().unwrap();
        let want = route["deployment_id"].as_str().unwrap();
        plane
            .route_entry_where(fqdn, |e| !e["instances"].as_array().unwrap().is_empty())
            .await;
        let (status, deployment, body) = plane.through_edge(fqdn, "/").await;
        assert_eq!((status, deployment.as_str()), (200, want), "{fqdn}: {body}");
        let message = if want == v1 { "v1" } else { "p1" };
        assert_eq!(body, message, "{fqdn}");
    }
    // The live domain, in any case and with a port.
    let live = route_of(&routes, "live", "");
    let shouted = format!("{}:8080", live.to_ascii_uppercase());
    let (status, deployment, _) = plane.through_edge(&shouted, "/").await;
    assert_eq!((status, deployment.as_str()), (200, v1.as_str()));
    let preview_env = route_of(&routes, "environment", "--preview--");
    assert_eq!(plane.through_edge(preview_env, "/").await.1, preview);

    // What the app sees.
    let (_, _, headers) = plane.through_edge(live, "/headers").await;
    assert!(headers.contains(&format!("host: {live}")), "{headers}");
    assert!(
        headers.contains(&format!("x-forwarded-host: {live}")),
        "{headers}"
    );
    assert!(headers.contains("x-forwarded-for: 127.0.0.1"), "{headers}");
    assert!(headers.contains("x-forwarded-proto: http"), "{headers}");

    let (status, deployment, _) = plane.through_edge("nobody.example", "/").await;
    assert_eq!((status, deployment.as_str()), (404, ""));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_instance_is_served_again_at_its_new_address() {
    let mut plane = plane().await;
    let project = plane.project().await;
    let dep = plane.deployed(&project, "production", "v1").await;
    let live = plane.serving_domain(&project, "live", "").await;
    let d = plane.deployment(&dep).await;
    let (id, old) = (
        d["instances"][0]["id"].as_str().unwrap().to_string(),
        d["instances"][0]["address"].as_str().unwrap().to_string(),
    );
    plane
        .route_entry_where(&live, |e| e["instances"] == json!([old]))
        .await;
    assert_eq!(plane.through_edge(&live, "/").await.0, 200);
    plane.kill_instance(&id);
    plane
        .route_entry_where(&live, |e| {
            e["instances"]
                .as_array()
                .is_some_and(|i| i.len() == 1 && i[0] != old.as_str())
        })
        .await;
    let (status, deployment, body) = plane.through_edge(&live, "/").await;
    assert_eq!(
        (status, deployment.as_str(), body.as_str()),
        (200, dep.as_str(), "v1")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_previews_spin_down_by_the_edges_traffic_and_wake_on_their_next_request() {
    let mut plane = Plane::builder()
        .services()
        .orchestrator_env("SLIPWAY_IDLE_WINDOW", "3s")
        .orchestrators(1)
        .edge()
        .start()
        .await;
    // Two projects, one preview each: one gets requests, the other none.
    let busy_project = plane.project().await;
    let idle_project = plane.project().await;
    let busy = plane.deployed(&busy_project, "preview", "busy").await;
    let idle = plane.deployed(&idle_project, "preview", "idle").await;
    let busy_host = plane
        .serving_domain(&busy_project, "environment", "--preview--")
        .await;
    let idle_host = plane
        .serving_domain(&idle_project, "environment", "--preview--")
        .await;

    // Past the idle window, with requests for one of them all along (the edge reports every
    // second).
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(4) {
        assert_eq!(plane.through_edge(&busy_host, "/").await.0, 200);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let reply = plane
        .ok(
            "slipway.deploy.v1.scale_down_idle_previews",
            json!({ "wait_ms": 60_000 }),
        )
        .await;
    assert_eq!(reply["status"], "completed", "{reply}");
    let scaled: Vec<&str> = reply["scaled_down"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(scaled.contains(&idle.as_str()), "{reply}");
    assert!(!scaled.contains(&busy.as_str()), "{reply}");

    // The idle one stops; its routes stay, and its next request wakes it.
    plane.wait_instances(&idle, "inactive").await;
    plane
        .route_entry_where(&idle_host, |e| {
            e["desired_state"] == "standby" && e["instances"] == json!([])
        })
        .await;
    let (status, deployment, body) = plane.through_edge(&idle_host, "/").await;
    assert_eq!(
        (status, deployment.as_str(), body.as_str()),
        (200, idle.as_str(), "idle")
    );
    let d = plane.deployment(&idle).await;
    assert_eq!(d["desired_state"], "running", "{d}");
    // Waking again (it runs) changes nothing.
    let again = plane
        .ok(
            "slipway.deploy.v1.wake_deployment",
            json!({ "deployment_id": idle }),
        )
        .await;
    assert_eq!(again["status"], "completed", "{again}");
}
