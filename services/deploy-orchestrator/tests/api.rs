//! The `slipway-deploy` endpoints' contract: bad input gets a clear 4xx and writes nothing,
//! `idempotency_key` returns the first call's deployment, listings page, protobuf works.

mod common;

use async_nats::HeaderMap;
use common::Plane;
use prost::Message;
use serde_json::{json, Value};
use slipway_nats::provision;
use slipway_proto::v1::{CreateWorkspaceReply, CreateWorkspaceRequest};

const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

fn now_ms() -> i64 {
    slipway_core::time::now_ms()
}

/// Nothing at all was written for the project: no deployment, workflow or event.
async fn nothing_written(plane: &Plane, project: &str) {
    let list = plane
        .ok(
            "slipway.deploy.v1.list_deployments",
            json!({ "project_id": project }),
        )
        .await;
    assert_eq!(list["deployments"], json!([]), "{list}");
    let mut keys = plane.workflows.keys().await.unwrap();
    use futures::StreamExt;
    assert!(keys.next().await.is_none(), "a workflow was written");
    let workflows = plane
        .js
        .get_stream(provision::WORKFLOWS)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(workflows, 0, "an invocation was published");
    let events = common::stream_messages(
        &plane.js,
        provision::EVENTS,
        &format!("slipway.events.{project}.>"),
    )
    .await;
    assert!(events.is_empty(), "{events:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_deployment_requests_get_4xx_and_write_nothing() {
    let mut plane = Plane::start().await;
    let project = plane.project().await;
    let base = json!({"project_id": project, "environment_slug": "production", "docker_image": "exec:slipway demo-app"});
    let with = |patch: Value| {
        let mut body = base.clone();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                body.as_object_mut().unwrap().remove(k);
            } else {
                body[k] = v.clone();
            }
        }
        body
    };
    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            "no project",
            with(json!({"project_id": null})),
            400,
            "invalid_argument",
            "project_id",
        ),
        (
            "not a project id",
            with(json!({"project_id": "dep_x"})),
            400,
            "invalid_argument",
            "project_id",
        ),
        (
            "unknown project",
            with(json!({"project_id": "proj_nope"})),
            404,
            "not_found",
            "proj_nope",
        ),
        (
            "no environment",
            with(json!({"environment_slug": null})),
            400,
            "invalid_argument",
            "environment_slug",
        ),
        (
            "unknown environment",
            with(json!({"environment_slug": "staging"})),
            404,
            "not_found",
            "staging",
        ),
        (
            "no source",
            with(json!({"docker_image": null})),
            400,
            "invalid_argument",
            "exactly one",
        ),
        (
            "both sources",
            with(json!({"git_source": {"repository": "o/r", "commit_sha": SHA}})),
            400,
            "invalid_argument",
            "not both",
        ),
        (
            "git source",
            with(
                json!({"docker_image": null, "git_source": {"repository": "o/r", "commit_sha": SHA}}),
            ),
            400,
            "failed_precondition",
            "none is configured (SLIPWAY_BUILDER_DOCKER_HOST)",
        ),
        (
            "git source without a commit",
            with(json!({"docker_image": null, "git_source": {"repository": "o/r"}})),
            400,
            "invalid_argument",
            "commit_sha is required",
        ),
        (
            "git source outside the repository",
            with(
                json!({"docker_image": null, "git_source": {"repository": "o/r", "commit_sha": SHA, "context_path": "app/../../etc"}}),
            ),
            400,
            "invalid_argument",
            "context_path",
        ),
        (
            "git repository as an option",
            with(
                json!({"docker_image": null, "git_source": {"repository": "--upload-pack=touch /tmp/x", "commit_sha": SHA}}),
            ),
            400,
            "invalid_argument",
            "must not start with '-'",
        ),
        (
            "empty image",
            with(json!({"docker_image": " "})),
            400,
            "invalid_argument",
            "docker_image",
        ),
        (
            "timestamp in seconds",
            with(json!({"git_commit": {"commit_sha": SHA, "timestamp_ms": 1_700_000_000}})),
            400,
            "invalid_argument",
            "milliseconds",
        ),
        (
            "timestamp in the future",
            with(
                json!({"git_commit": {"commit_sha": SHA, "timestamp_ms": now_ms() + 2 * 3_600_000}}),
            ),
            400,
            "invalid_argument",
            "future",
        ),
        (
            "negative timestamp",
            with(json!({"git_commit": {"timestamp_ms": -1}})),
            400,
            "invalid_argument",
            "negative",
        ),
        (
            "long commit message",
            with(json!({"git_commit": {"commit_message": "x".repeat(10 * 1024 + 1)}})),
            400,
            "invalid_argument",
            "commit_message",
        ),
        (
            "long author handle",
            with(json!({"git_commit": {"author_handle": "x".repeat(257)}})),
            400,
            "invalid_argument",
            "author_handle",
        ),
        (
            "long avatar URL",
            with(json!({"git_commit": {"author_avatar_url": "x".repeat(513)}})),
            400,
            "invalid_argument",
            "author_avatar_url",
        ),
        (
            "not a sha",
            with(json!({"git_commit": {"commit_sha": "xyz"}})),
            400,
            "invalid_argument",
            "commit sha",
        ),
        (
            "wrong type",
            with(json!({"command": "ls"})),
            400,
            "invalid_argument",
            "malformed JSON",
        ),
        (
            "unknown field",
            with(json!({"image": "x"})),
            400,
            "invalid_argument",
            "malformed JSON",
        ),
    ];
    for (what, body, status, code, needle) in cases {
        let err = plane
            .call("slipway.deploy.v1.create_deployment", body)
            .await
            .expect_err(what);
        assert_eq!(
            (err.status, err.code.as_str()),
            (status, code),
            "{what}: {err:?}"
        );
        assert!(err.message.contains(needle), "{what}: {err:?}");
    }
    // Right at the limits is fine, and (only now) writes.
    nothing_written(&plane, &project).await;
    let ok = with(
        json!({"git_commit": {"commit_sha": SHA, "commit_message": "x".repeat(10 * 1024), "author_handle": "x".repeat(256), "author_avatar_url": "x".repeat(512), "timestamp_ms": now_ms() + 3_000_000}}),
    );
    let reply = plane.ok("slipway.deploy.v1.create_deployment", ok).await;
    // Let it finish: a deploy cut off by the test's end could leave its app running.
    plane
        .workflow_done(reply["workflow_id"].as_str().unwrap())
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_project_requests_get_4xx() {
    let mut plane = Plane::start().await;
    let project = plane.project().await;
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "slipway.project.v1.create_workspace",
            json!({"slug": "Not A Slug"}),
            400,
            "slug",
        ),
        (
            "slipway.project.v1.create_workspace",
            json!({"slug": "acme1"}),
            409,
            "acme1",
        ),
        // Generated domains separate their parts with "--".
        (
            "slipway.project.v1.create_workspace",
            json!({"slug": "ac--me"}),
            400,
            "\"--\"",
        ),
        (
            "slipway.project.v1.create_project",
            json!({"workspace_id": "ws_nope", "slug": "xn"}),
            400,
            "punycode",
        ),
        (
            "slipway.project.v1.create_environment",
            json!({"project_id": project, "slug": "git-main"}),
            400,
            "branch domains",
        ),
        (
            "slipway.project.v1.create_project",
            json!({"workspace_id": "ws_nope", "slug": "x"}),
            404,
            "ws_nope",
        ),
        (
            "slipway.project.v1.create_project",
            json!({"workspace_id": "ws_nope", "slug": "-x"}),
            400,
            "slug",
        ),
        (
            "slipway.project.v1.create_environment",
            json!({"project_id": project, "slug": "production"}),
            409,
            "production",
        ),
        (
            "slipway.project.v1.create_environment",
            json!({"project_id": project, "slug": "qa", "regions": {"eu": 0}}),
            400,
            "replicas",
        ),
        (
            "slipway.project.v1.create_environment",
            json!({"project_id": project, "slug": "qa", "port": 70000}),
            400,
            "port",
        ),
        (
            "slipway.project.v1.create_environment",
            json!({"project_id": project, "slug": "qa", "memory_mb": 1}),
            400,
            "memory_mb must be 0 (no limit) or 6 to",
        ),
        (
            "slipway.project.v1.create_environment",
            json!({"project_id": project, "slug": "qa", "cpu_millis": 2_000_000}),
            400,
            "cpu_millis",
        ),
        (
            "slipway.project.v1.create_environment",
            json!({"project_id": project, "slug": "qa", "sentinel_config": "[1]"}),
            400,
            "sentinel_config",
        ),
        (
            "slipway.project.v1.create_environment",
            json!({"project_id": "proj_nope", "slug": "qa"}),
            404,
            "proj_nope",
        ),
        (
            "slipway.project.v1.get_project",
            json!({"project_id": "proj_nope"}),
            404,
            "proj_nope",
        ),
        (
            "slipway.deploy.v1.get_deployment",
            json!({"deployment_id": "dep_nope"}),
            404,
            "dep_nope",
        ),
        (
            "slipway.deploy.v1.get_deployment",
            json!({"deployment_id": "nope"}),
            400,
            "deployment_id",
        ),
        (
            "slipway.deploy.v1.list_deployments",
            json!({"project_id": project, "limit": 100000}),
            400,
            "limit",
        ),
        (
            "slipway.deploy.v1.list_deployments",
            json!({"project_id": "proj_nope"}),
            404,
            "proj_nope",
        ),
        (
            "slipway.deploy.v1.get_workflow",
            json!({"workflow_id": "wf_nope"}),
            404,
            "wf_nope",
        ),
    ];
    for (subject, body, status, needle) in cases {
        let err = plane.call(subject, body.clone()).await.expect_err(subject);
        assert_eq!(err.status, status, "{subject} {body}: {err:?}");
        assert!(err.message.contains(needle), "{subject} {body}: {err:?}");
    }
    // The failed environment creations wrote nothing.
    let p = plane.get_project(&project).await;
    assert_eq!(p["environments"].as_array().unwrap().len(), 2, "{p}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_idempotency_key_returns_the_same_deployment() {
    let mut plane = Plane::start().await;
    let project = plane.project().await;
    let body = json!({"project_id": project, "environment_slug": "preview", "docker_image": "exec:slipway demo-app", "idempotency_key": "build-42"});
    let first = plane
        .ok("slipway.deploy.v1.create_deployment", body.clone())
        .await;
    let again = plane
        .ok("slipway.deploy.v1.create_deployment", body.clone())
        .await;
    assert_eq!(first, again);
    assert_eq!(first["status"], "pending");
    // A different request under the same key is a conflict.
    let mut other = body.clone();
    other["docker_image"] = json!("exec:slipway demo-app --message other");
    let err = plane
        .call("slipway.deploy.v1.create_deployment", other)
        .await
        .unwrap_err();
    assert_eq!(
        (err.status, err.code.as_str()),
        (409, "conflict"),
        "{err:?}"
    );
    // lowerCamelCase spelling of the same request is the same request.
    let camel = json!({"projectId": project, "environmentSlug": "preview", "dockerImage": "exec:slipway demo-app", "idempotencyKey": "build-42"});
    assert_eq!(
        plane.ok("slipway.deploy.v1.create_deployment", camel).await,
        first
    );

    let record = plane
        .workflow_done(first["workflow_id"].as_str().unwrap())
        .await;
    assert_eq!(record.status.as_str(), "completed");
    let list = plane
        .ok(
            "slipway.deploy.v1.list_deployments",
            json!({ "project_id": project }),
        )
        .await;
    assert_eq!(list["deployments"].as_array().unwrap().len(), 1, "{list}");
    let created = common::stream_messages(
        &plane.js,
        provision::EVENTS,
        &format!("slipway.events.{project}.*.created"),
    )
    .await;
    assert_eq!(created.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn deployments_are_listed_newest_first_in_pages() {
    let mut plane = Plane::start().await;
    let project = plane.project().await;
    let mut ids = vec![];
    for (env, message) in [("preview", "a"), ("production", "b"), ("preview", "c")] {
        let (dep, wf) = plane.deploy(&project, env, message).await;
        plane.workflow_done(&wf).await;
        ids.push(dep);
    }
    let page = plane
        .ok(
            "slipway.deploy.v1.list_deployments",
            json!({"project_id": project, "limit": 2}),
        )
        .await;
    let got: Vec<&str> = page["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[2].as_str(), ids[1].as_str()]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let page = plane
        .ok(
            "slipway.deploy.v1.list_deployments",
            json!({"project_id": project, "limit": 2, "cursor": cursor}),
        )
        .await;
    let got: Vec<&str> = page["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[0].as_str()]);
    assert!(page.get("next_cursor").is_none(), "{page}");
    let previews = plane
        .ok(
            "slipway.deploy.v1.list_deployments",
            json!({"project_id": project, "environment_slug": "preview"}),
        )
        .await;
    assert_eq!(previews["deployments"].as_array().unwrap().len(), 2);
    // Replies carry every field, defaults included.
    let d = &previews["deployments"][0];
    for field in [
        "key_auth_id",
        "domains",
        "instances",
        "desired_state",
        "created_at_ms",
    ] {
        assert!(d.get(field).is_some(), "{field} missing: {d}");
    }
}

/// Workspaces, and a workspace's projects, in creation order and in pages; unknown ids are
/// 404, malformed ones 400.
#[tokio::test(flavor = "multi_thread")]
async fn workspaces_and_projects_are_listed_in_pages() {
    let mut plane = Plane::start().await;
    let mut projects = vec![];
    for _ in 0..3 {
        projects.push(plane.project().await);
    }
    let ids = |reply: &Value, field: &str| -> Vec<String> {
        reply[field]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_str().unwrap().to_string())
            .collect()
    };
    let first = plane
        .ok("slipway.project.v1.list_workspaces", json!({"limit": 2}))
        .await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let rest = plane
        .ok(
            "slipway.project.v1.list_workspaces",
            json!({"limit": 2, "cursor": cursor}),
        )
        .await;
    assert!(rest.get("next_cursor").is_none(), "{rest}");
    let workspaces = [ids(&first, "workspaces"), ids(&rest, "workspaces")].concat();
    assert_eq!(workspaces.len(), 3);

    let mut seen = vec![];
    for ws in &workspaces {
        let reply = plane
            .ok(
                "slipway.project.v1.list_projects",
                json!({"workspace_id": ws}),
            )
            .await;
        assert_eq!(reply["projects"][0]["workspace_id"], ws.as_str());
        assert_eq!(reply["projects"][0]["is_rolled_back"], false, "{reply}");
        seen.extend(ids(&reply, "projects"));
    }
    assert_eq!(
        seen, projects,
        "each workspace's project, in creation order"
    );

    let e = plane
        .call(
            "slipway.project.v1.list_projects",
            json!({"workspace_id": "ws_nope"}),
        )
        .await
        .unwrap_err();
    assert_eq!((e.status, e.code.as_str()), (404, "not_found"), "{e:?}");
    for bad in [
        json!({"workspace_id": "proj_x"}),
        json!({"workspace_id": workspaces[0], "limit": 100000}),
        json!({"workspace_id": workspaces[0], "cursor": "dep_x"}),
    ] {
        let e = plane
            .call("slipway.project.v1.list_projects", bad.clone())
            .await
            .unwrap_err();
        assert_eq!(e.status, 400, "{bad}: {e:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn protobuf_clients_get_protobuf_replies() {
    let plane = Plane::start().await;
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", "application/protobuf");
    let request = CreateWorkspaceRequest {
        slug: "proto".into(),
        name: "Proto".into(),
    };
    let reply = plane
        .client
        .request_with_headers(
            "slipway.project.v1.create_workspace",
            headers,
            request.encode_to_vec().into(),
        )
        .await
        .unwrap();
    let reply = CreateWorkspaceReply::decode(reply.payload).unwrap();
    let workspace = reply.workspace.unwrap();
    assert!(workspace.id.starts_with("ws_"));
    assert_eq!(workspace.slug, "proto");
}
