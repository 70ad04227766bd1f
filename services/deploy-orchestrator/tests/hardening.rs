//! Every request is answered (issue 14): error text is bounded and never carries a control
//! character into a header, a reply too large to send falls back to a short error, inputs of
//! the proto3 JSON mapping (`null`, integral floats) are accepted, a large OpenAPI spec does not
//! break reads, and a seeded fuzz run sends thousands of malformed requests to every endpoint
//! of the orchestrator, routing and the deployment actor: each gets a 400 in the error format of
//! API.md, no service restarts and nothing is written.

mod common;

use std::time::Duration;

use async_nats::service::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use common::Plane;
use futures::TryStreamExt;
use serde_json::{json, Value};
use slipway_core::{seeded::Rng, subjects};
use sqlx::Row;

/// Every endpoint a client may call (the edge's stats need an edge: left out).
fn endpoints() -> Vec<String> {
    let dep = "dep_0000000000000000000000000000fuzz";
    let proj = "proj_000000000000000000000000000fuzz";
    let mut all: Vec<String> = [
        subjects::project::CREATE_WORKSPACE,
        subjects::project::CREATE_PROJECT,
        subjects::project::CREATE_ENVIRONMENT,
        subjects::project::GET_PROJECT,
        subjects::deploy::CREATE_DEPLOYMENT,
        subjects::deploy::GET_DEPLOYMENT,
        subjects::deploy::LIST_DEPLOYMENTS,
        subjects::deploy::ROLLBACK,
        subjects::deploy::PROMOTE,
        subjects::deploy::SCALE_DOWN_IDLE_PREVIEWS,
        subjects::deploy::GET_WORKFLOW,
        subjects::deploy::WAKE_DEPLOYMENT,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for keyed in [
        subjects::deployment::SCHEDULE,
        subjects::deployment::CLEAR,
        subjects::deployment::GET_STATE,
    ] {
        all.push(keyed.of(dep));
    }
    for keyed in [
        subjects::routing::ASSIGN,
        subjects::routing::LIST,
        subjects::routing::ENSURE,
        subjects::routing::REMOVE,
    ] {
        all.push(keyed.of(proj));
    }
    all
}

/// One request, one reply within 10 s (no resend: a reply that never comes is the failure).
async fn once(plane: &Plane, subject: &str, payload: Vec<u8>) -> async_nats::Message {
    let size = payload.len();
    tokio::time::timeout(
        Duration::from_secs(10),
        plane.client.request(subject.to_string(), payload.into()),
    )
    .await
    .unwrap_or_else(|_| panic!("{subject}: no reply to a request of {size} bytes"))
    .unwrap_or_else(|e| panic!("{subject}: {e}"))
}

/// The reply is a 400 in the error format of API.md, with bounded text and a clean header.
fn assert_bad_request(subject: &str, reply: &async_nats::Message, what: &str) {
    let headers = reply.headers.clone().unwrap_or_default();
    let status = headers.get(NATS_SERVICE_ERROR_CODE).map(|v| v.to_string());
    let body: Value = serde_json::from_slice(&reply.payload).unwrap_or(Value::Null);
    assert_eq!(
        (status.as_deref(), &body["error"]["code"]),
        (Some("400"), &json!("invalid_argument")),
        "{subject} {what}: {body}"
    );
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        !message.is_empty() && message.len() <= 1024,
        "{subject} {what}: {} bytes",
        message.len()
    );
    let header = headers
        .get(NATS_SERVICE_ERROR)
        .map(|v| v.to_string())
        .unwrap_or_default();
    assert!(
        header.len() <= 256 && !header.chars().any(char::is_control),
        "{subject} {what}: header {header:?}"
    );
}

/// Rows of every table and keys of every bucket a request could write.
async fn written(plane: &Plane) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for table in [
        "workspaces",
        "projects",
        "environments",
        "deployments",
        "deployment_requests",
        "frontline_routes",
        "domain_claims",
    ] {
        let row = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
            .fetch_one(plane.store.pool())
            .await
            .unwrap();
        out.push((table.to_string(), row.try_get::<i64, _>("n").unwrap()));
    }
    for (name, kv) in [
        ("slipway_transitions", &plane.transitions),
        ("slipway_routes", &plane.routes),
        ("slipway_workflows", &plane.workflows),
        ("slipway_desired", &plane.desired),
    ] {
        let keys: Vec<String> = kv.keys().await.unwrap().try_collect().await.unwrap();
        out.push((name.to_string(), keys.len() as i64));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn reproductions_get_short_clear_replies() {
    let plane = Plane::start().await;
    let before = written(&plane).await;
    for subject in endpoints() {
        // An unknown field whose name holds a newline (it panicked the reply path).
        let reply = once(&plane, &subject, br#"{"\n":1}"#.to_vec()).await;
        assert_bad_request(&subject, &reply, "newline field");
    }
    // A 530 KB id and 62,000 zero-width spaces, echoed by the error message.
    let huge_id = format!("dep_{}", "x".repeat(530_000));
    let reply = once(
        &plane,
        subjects::deploy::GET_DEPLOYMENT,
        serde_json::to_vec(&json!({ "deployment_id": huge_id })).unwrap(),
    )
    .await;
    assert_bad_request("get_deployment", &reply, "530 KB id");
    let reply = once(
        &plane,
        subjects::project::CREATE_WORKSPACE,
        serde_json::to_vec(&json!({ "slug": "\u{200b}".repeat(62_000) })).unwrap(),
    )
    .await;
    assert_bad_request("create_workspace", &reply, "zero-width slug");
    assert_eq!(written(&plane).await, before, "nothing written");
}

#[tokio::test(flavor = "multi_thread")]
async fn proto3_json_null_and_integral_floats_are_accepted() {
    let plane = Plane::start().await;
    let ws = plane
        .ok(
            subjects::project::CREATE_WORKSPACE,
            json!({"slug": "nulls", "name": null}),
        )
        .await;
    assert_eq!(ws["workspace"]["name"], "nulls");
    let ws_id = ws["workspace"]["id"].as_str().unwrap();
    let p = plane
        .ok(
            subjects::project::CREATE_PROJECT,
            json!({"workspace_id": ws_id, "slug": "shop", "default_branch": null}),
        )
        .await;
    let env = plane
        .ok(
            subjects::project::CREATE_ENVIRONMENT,
            json!({"project_id": p["project"]["id"], "slug": "qa", "port": 8082.0, "regions": {"local": 2.0}}),
        )
        .await;
    assert_eq!(env["environment"]["port"], 8082);
    let err = plane
        .call(
            subjects::project::CREATE_ENVIRONMENT,
            json!({"project_id": p["project"]["id"], "slug": "qb", "port": 8082.5}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status, 400, "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_openapi_spec_does_not_break_reads() {
    let mut plane = Plane::start().await;
    let project = plane.project().await;
    let (big, _) = plane
        .deploy_image(
            &project,
            "preview",
            "exec:slipway demo-app --message big --openapi-bytes 1500000",
        )
        .await;
    let (fits, _) = plane
        .deploy_image(
            &project,
            "preview",
            "exec:slipway demo-app --message fits --openapi-bytes 200000",
        )
        .await;
    for d in [&big, &fits] {
        plane.deployment_where(d, |d| d["status"] == "ready").await;
    }
    let big = plane.deployment(&big).await;
    assert!(big.get("openapi_spec").is_none(), "not kept past the cap");
    let fits = plane.deployment(&fits).await;
    let spec = fits["openapi_spec"].as_str().unwrap_or_default();
    assert!(
        spec.len() >= 200_000 && spec.starts_with("openapi"),
        "{}",
        spec.len()
    );
    let list = plane
        .ok(
            subjects::deploy::LIST_DEPLOYMENTS,
            json!({ "project_id": project }),
        )
        .await;
    let listed = list["deployments"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|d| d.get("openapi_spec").is_none()));
}

/// Field names of the API's requests: right names with wrong values are malformed too.
const FIELDS: [&str; 16] = [
    "slug",
    "name",
    "workspace_id",
    "project_id",
    "environment_slug",
    "deployment_id",
    "regions",
    "port",
    "docker_image",
    "git_source",
    "git_commit",
    "wait_ms",
    "delay_ms",
    "state",
    "route_ids",
    "target_deployment_id",
];

/// Strings that no field accepts as an object key of a request, awkward on purpose.
fn odd_string(rng: &mut Rng) -> String {
    let pieces = [
        "\n", "\r\n", "\u{0}", "\u{200b}", "é", "\"", "\\", "x", " ", "{", "日本",
    ];
    let len = [1, 3, 40, 2_000, 70_000][rng.below(5)];
    (0..len).map(|_| *rng.pick(&pieces)).collect()
}

/// A value of any JSON type, sometimes deep or large.
fn any_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 3 { 5 } else { 7 }) {
        0 => Value::Null,
        1 => json!(rng.below(2) == 0),
        2 => json!(rng.next_u64() as i64),
        3 => json!(rng.next_u64() as f64 / 7.0),
        4 => json!(odd_string(rng)),
        5 => Value::Array(
            (0..rng.below(4))
                .map(|_| any_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = serde_json::Map::new();
            m.insert(odd_string(rng), any_value(rng, depth + 1));
            Value::Object(m)
        }
    }
}

/// A request payload with at least one defect: not JSON, an unknown field, or a known
/// field with a value of a type none of them takes.
fn malformed(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => {
            let mut bytes: Vec<u8> = b"{".to_vec();
            bytes.extend((0..rng.below(200) + 1).map(|_| (rng.next_u64() & 0xff) as u8));
            bytes
        }
        1 => {
            // Not null: null means "the default", so a field set to null is as good as left
            // out, even one the message does not have.
            let mut value = any_value(rng, 0);
            if value.is_null() {
                value = json!(0);
            }
            let mut m = serde_json::Map::new();
            m.insert(format!("zz{}", odd_string(rng)), value);
            serde_json::to_vec(&Value::Object(m)).unwrap()
        }
        2 => {
            // An object with a key no message, map of uint32 or scalar field takes.
            let mut m = serde_json::Map::new();
            let mut bad = serde_json::Map::new();
            bad.insert(format!("\u{0}{}", odd_string(rng)), json!([1, {"x": null}]));
            m.insert((*rng.pick(&FIELDS)).to_string(), Value::Object(bad));
            serde_json::to_vec(&Value::Object(m)).unwrap()
        }
        _ => {
            let value = match rng.below(3) {
                0 => json!([[[[[[[[1]]]]]]]]),
                1 => json!(1.5),
                _ => json!({"\n": true}),
            };
            let mut m = serde_json::Map::new();
            m.insert((*rng.pick(&FIELDS)).to_string(), value);
            serde_json::to_vec(&Value::Object(m)).unwrap()
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fuzz_run_of_malformed_requests_is_answered_and_writes_nothing() {
    let mut plane = Plane::start().await;
    // Something to write over, if anything could.
    let project = plane.project().await;
    plane.deployed(&project, "production", "v1").await;
    let before = written(&plane).await;
    let (mut rng, seed) = Rng::from_env("SLIPWAY_FUZZ_SEED", 14);
    let per_endpoint: usize = std::env::var("SLIPWAY_FUZZ_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let endpoints = endpoints();
    let mut sent = 0;
    for subject in &endpoints {
        for _ in 0..per_endpoint {
            let payload = malformed(&mut rng);
            let shown = String::from_utf8_lossy(&payload[..payload.len().min(80)]).to_string();
            let reply = once(&plane, subject, payload).await;
            assert_bad_request(subject, &reply, &format!("seed {seed}: {shown:?}"));
            sent += 1;
        }
    }
    assert_eq!(written(&plane).await, before, "nothing written");
    for service in plane
        .services
        .iter_mut()
        .chain(plane.orchestrators.iter_mut())
    {
        assert!(service.is_running(), "a service exited during the fuzz run");
    }
    // Still serving.
    let v2 = plane.deployed(&project, "production", "v2").await;
    assert_eq!(
        plane.get_project(&project).await["project"]["live_deployment_id"],
        v2.as_str()
    );
    eprintln!(
        "fuzz: {sent} malformed requests to {} endpoints, seed {seed}",
        endpoints.len()
    );
}
