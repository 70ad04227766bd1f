//! Routing end to end: real nats-server, SQLite, `routing` processes, a KV watcher as an edge.

use std::{collections::BTreeMap, time::Duration};

use futures::StreamExt;
use routing::table::RouteEntry;
use slipway_core::domains::{generate, DomainInput, Scheme};
use slipway_proto::v1::{
    AssignFrontlineRoutesReply, EnsureRoutesReply, EnsureRoutesRequest, ListRoutesReply, RouteSpec,
};
use slipway_store::NewDeployment;
use slipway_testkit::{
    plane::{Plane as Env, ROUTING},
    seed, ErrorReply as Refused, TestDb,
};

const TIMEOUT: Duration = Duration::from_secs(20);
const PROJECT: &str = "proj_1";

/// nats-server, SQLite, a project with `deployments` production deployments (each with a
/// running instance), and one routing process.
async fn start(deployments: usize) -> Env {
    start_on(TestDb::sqlite().unwrap(), deployments).await
}

async fn start_on(db: TestDb, deployments: usize) -> Env {
    let mut env = Env::builder().database(db).start().await;
    let store = &env.store;
    let regions = BTreeMap::from([("local".to_string(), 1)]);
    seed::project(store, "1", "shop", "production", &regions).await;
    seed::project(store, "other", "other", "production", &regions).await;
    for i in 1..=deployments {
        let id = format!("dep_{i}");
        let new = NewDeployment {
            id: id.clone(),
            environment_id: "env_1".into(),
            key_auth_id: if i == 1 {
                "key_1".into()
            } else {
                String::new()
            },
            ..Default::default()
        };
        store.insert_deployment(&new, 1).await.unwrap();
        let instance = (
            format!("inst_{i}"),
            format!("127.0.0.1:{}", 9000 + i),
            slipway_core::krane::InstanceStatus::Running,
        );
        store
            .record_instances(&id, "local", &[instance], 1)
            .await
            .unwrap();
    }
    let other = NewDeployment {
        id: "dep_other".into(),
        environment_id: "env_other".into(),
        ..Default::default()
    };
    store.insert_deployment(&other, 1).await.unwrap();
    env.spawn(ROUTING, &[]);
    env
}

/// Routing's endpoints, for its tests.
#[allow(async_fn_in_trait)]
trait RoutingCalls {
    /// The generated domains of dep_1 (commit, branch, environment, live) plus a local host.
    async fn ensure(&self) -> Vec<String>;
    async fn assign(
        &self,
        deployment: &str,
        route_ids: &[String],
    ) -> Result<AssignFrontlineRoutesReply, Refused>;
    async fn kv_entries(&self) -> BTreeMap<String, RouteEntry>;
    /// The KV table equals the database, route by route.
    async fn assert_kv_matches_db(&self);
}

impl RoutingCalls for Env {
    async fn ensure(&self) -> Vec<String> {
        let mut specs: Vec<RouteSpec> = generate(&DomainInput {
            scheme: Scheme::Joined,
            apex: "slipway.localhost",
            workspace_slug: "acme",
            project_slug: "shop",
            environment_slug: "production",
            deployment_id: "dep_1",
            branch: "main",
            commit_sha: "abcdef123",
        })
        .into_iter()
        .map(|d| RouteSpec {
            fqdn: d.fqdn,
            sticky: d.sticky.as_str().into(),
        })
        .collect();
        specs.push(RouteSpec {
            fqdn: "shop.test".into(),
            sticky: "environment".into(),
        });
        let req = EnsureRoutesRequest {
            environment_id: "env_1".into(),
            deployment_id: "dep_1".into(),
            routes: specs,
        };
        let reply: EnsureRoutesReply = self
            .request(
                &format!("slipway.routing.v1.ensure_routes.{PROJECT}"),
                serde_json::to_vec(&req).unwrap(),
            )
            .await
            .unwrap();
        reply.routes.into_iter().map(|r| r.id).collect()
    }

    async fn assign(
        &self,
        deployment: &str,
        route_ids: &[String],
    ) -> Result<AssignFrontlineRoutesReply, Refused> {
        let body = serde_json::json!({"deployment_id": deployment, "route_ids": route_ids});
        self.request(
            &format!("slipway.routing.v1.assign_frontline_routes.{PROJECT}"),
            body.to_string(),
        )
        .await
    }

    async fn kv_entries(&self) -> BTreeMap<String, RouteEntry> {
        let mut out = BTreeMap::new();
        let keys: Vec<String> = {
            use futures::TryStreamExt;
            self.routes
                .keys()
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap()
        };
        for key in keys {
            if let Some(v) = self.routes.get(key.as_str()).await.unwrap() {
                out.insert(key, serde_json::from_slice(&v).unwrap());
            }
        }
        out
    }

    async fn assert_kv_matches_db(&self) {
        let db = self.store.routes(PROJECT, None).await.unwrap();
        let kv = self.kv_entries().await;
        assert_eq!(kv.len(), db.len(), "{kv:?}");
        for route in db {
            let entry = &kv[&route.fqdn];
            assert_eq!(
                (&entry.route_id, &entry.deployment_id, entry.version),
                (&route.id, &route.deployment_id, route.version),
                "{}",
                route.fqdn
            );
        }
    }
}

#[tokio::test]
async fn routes_are_created_moved_published_and_announced() {
    let env = start(2).await;
    let mut watch = env.routes.watch_all().await.unwrap();
    let mut events = env
        .client
        .subscribe("slipway.events.proj_1.*.routes")
        .await
        .unwrap();
    env.client.flush().await.unwrap();

    let ids = env.ensure().await;
    assert_eq!(ids.len(), 5);
    assert_eq!(
        env.ensure().await,
        ids,
        "ensuring again returns the same routes"
    );
    let kv = env.kv_entries().await;
    let live = &kv["shop-acme.slipway.localhost"];
    assert_eq!(
        (live.deployment_id.as_str(), live.sticky.as_str()),
        ("dep_1", "live")
    );
    assert_eq!(live.instances, vec!["127.0.0.1:9001".to_string()]);
    let sentinel = live
        .sentinel_config
        .as_ref()
        .expect("apex hosts get a sentinel config");
    assert_eq!(sentinel.auth.as_ref().unwrap().key_auth_id, "key_1");
    assert!(
        kv["shop.test"].sentinel_config.is_none(),
        "local hosts get none"
    );

    // An edge's watcher sees the switch of every route.
    let reply = env.assign("dep_2", &ids).await.unwrap();
    assert_eq!(reply.assigned, 5);
    let mut switched = std::collections::BTreeSet::new();
    tokio::time::timeout(TIMEOUT, async {
        while let Some(entry) = watch.next().await {
            let entry = entry.unwrap();
            let value: RouteEntry = serde_json::from_slice(&entry.value).unwrap();
            if value.deployment_id == "dep_2" {
                assert_eq!(value.instances, vec!["127.0.0.1:9002".to_string()]);
                switched.insert(entry.key);
            }
            if switched.len() == 5 {
                break;
            }
        }
    })
    .await
    .expect("the watcher saw every switch");
    env.assert_kv_matches_db().await;

    let event = tokio::time::timeout(TIMEOUT, events.next())
        .await
        .unwrap()
        .unwrap();
    let event: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
    assert_eq!(
        (event["type"].as_str(), event["deployment_id"].as_str()),
        (Some("routes"), Some("dep_2"))
    );
    assert_eq!(event["routes"].as_array().unwrap().len(), 5);

    // Back and forth: the watcher sees each switch, in order.
    for target in ["dep_1", "dep_2", "dep_1"] {
        env.assign(target, &ids).await.unwrap();
        let mut seen = std::collections::BTreeSet::new();
        tokio::time::timeout(TIMEOUT, async {
            while let Some(entry) = watch.next().await {
                let value: RouteEntry = serde_json::from_slice(&entry.unwrap().value).unwrap();
                assert_eq!(
                    value.deployment_id, target,
                    "an out-of-order or stale switch"
                );
                seen.insert(value.fqdn);
                if seen.len() == 5 {
                    break;
                }
            }
        })
        .await
        .expect("the watcher saw the switch");
        let event = tokio::time::timeout(TIMEOUT, events.next())
            .await
            .unwrap()
            .unwrap();
        let event: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
        assert_eq!(event["deployment_id"], target);
    }
    env.assign("dep_2", &ids).await.unwrap();
    tokio::time::timeout(TIMEOUT, events.next())
        .await
        .unwrap()
        .unwrap();

    // Repeating the assignment is harmless: nothing moves, no event. Duplicates are folded.
    let mut twice = ids.clone();
    twice.extend(ids.clone());
    assert_eq!(env.assign("dep_2", &twice).await.unwrap().assigned, 5);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), events.next())
            .await
            .is_err()
    );

    let listed: ListRoutesReply = env
        .request(
            &format!("slipway.routing.v1.list_routes.{PROJECT}"),
            r#"{"environment_id": "env_1"}"#,
        )
        .await
        .unwrap();
    assert_eq!(listed.routes.len(), 5);
    assert!(listed.routes.iter().all(|r| r.deployment_id == "dep_2"));
}

#[tokio::test]
async fn one_bad_route_id_moves_nothing_and_bad_input_writes_nothing() {
    let env = start(2).await;
    let ids = env.ensure().await;
    let before_kv = env.kv_entries().await;
    let before_db = env.store.routes(PROJECT, None).await.unwrap();

    let mut with_unknown = ids.clone();
    with_unknown.push("flr_nope".into());
    let err = env.assign("dep_2", &with_unknown).await.unwrap_err();
    assert_eq!(err.status, 404);
    assert!(
        err.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("flr_nope"),
        "{err:?}"
    );

    // A route of another project.
    let other: EnsureRoutesReply = env
        .request(
            "slipway.routing.v1.ensure_routes.proj_other",
            r#"{"environment_id":"env_other","deployment_id":"dep_other","routes":[{"fqdn":"other-acme.slipway.localhost","sticky":"live"}]}"#,
        )
        .await
        .unwrap();
    let foreign = other.routes[0].id.clone();
    let mut with_foreign = ids.clone();
    with_foreign.insert(1, foreign.clone());
    let err = env.assign("dep_2", &with_foreign).await.unwrap_err();
    assert_eq!(err.status, 400);
    assert!(
        err.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&foreign),
        "{err:?}"
    );

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "deployment of another project",
            format!(
                r#"{{"deployment_id":"dep_other","route_ids":["{}"]}}"#,
                ids[0]
            ),
            "400",
        ),
        (
            "unknown deployment",
            format!(
                r#"{{"deployment_id":"dep_nope","route_ids":["{}"]}}"#,
                ids[0]
            ),
            "404",
        ),
        (
            "no routes",
            r#"{"deployment_id":"dep_2","route_ids":[]}"#.into(),
            "400",
        ),
        (
            "malformed route id",
            r#"{"deployment_id":"dep_2","route_ids":["flr_a.b"]}"#.into(),
            "400",
        ),
        ("malformed JSON", r#"{"deployment_id":"#.into(), "400"),
    ];
    for (what, body, status) in cases {
        let err = env
            .request::<AssignFrontlineRoutesReply>(
                &format!("slipway.routing.v1.assign_frontline_routes.{PROJECT}"),
                body,
            )
            .await
            .expect_err(what);
        assert_eq!(err.status.to_string(), status, "{what}: {err:?}");
        assert_eq!(err.body["error"]["status"].to_string(), status, "{what}");
    }
    let err = env
        .request::<AssignFrontlineRoutesReply>(
            "slipway.routing.v1.assign_frontline_routes.proj_nope",
            format!(r#"{{"deployment_id":"dep_2","route_ids":["{}"]}}"#, ids[0]),
        )
        .await
        .unwrap_err();
    assert_eq!(err.status, 404);
    let err = env
        .request::<ListRoutesReply>("slipway.routing.v1.list_routes.proj_nope", "{}")
        .await
        .unwrap_err();
    assert_eq!(err.status, 404);
    for (what, routes) in [
        ("bad fqdn", r#"[{"fqdn":"Not_A_Host","sticky":"live"}]"#),
        (
            "bad sticky",
            r#"[{"fqdn":"x-acme.slipway.localhost","sticky":"sometimes"}]"#,
        ),
        (
            "taken fqdn",
            r#"[{"fqdn":"other-acme.slipway.localhost","sticky":"live"}]"#,
        ),
    ] {
        let body =
            format!(r#"{{"environment_id":"env_1","deployment_id":"dep_1","routes":{routes}}}"#);
        let err = env
            .request::<EnsureRoutesReply>(
                &format!("slipway.routing.v1.ensure_routes.{PROJECT}"),
                body,
            )
            .await
            .expect_err(what);
        assert!((400..500).contains(&err.status), "{what}: {err:?}");
    }

    // Nothing moved, nothing written.
    assert_eq!(env.store.routes(PROJECT, None).await.unwrap(), before_db);
    let after_kv = env.kv_entries().await;
    assert_eq!(
        after_kv.len(),
        before_kv.len() + 1,
        "only the other project's route was added"
    );
    for (fqdn, entry) in &before_kv {
        assert_eq!(&after_kv[fqdn], entry);
    }
}

#[tokio::test]
async fn two_instances_and_100_concurrent_assignments_never_mix_on_sqlite() {
    never_mix(start(5).await).await;
}

/// PostgreSQL is where the project row lock (not a single writer) keeps assignments apart.
#[tokio::test]
async fn two_instances_and_100_concurrent_assignments_never_mix_on_postgres() {
    never_mix(start_on(TestDb::postgres().await.unwrap(), 5).await).await;
}

async fn never_mix(mut env: Env) {
    env.spawn(ROUTING, &[]);
    let ids = env.ensure().await;

    // A reader polls the routes the whole time: every read must show one deployment.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let client = env.client.clone();
        let done = done.clone();
        tokio::spawn(async move {
            let mut reads = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let msg = client
                    .request(
                        format!("slipway.routing.v1.list_routes.{PROJECT}"),
                        "{}".into(),
                    )
                    .await
                    .unwrap();
                let listed: ListRoutesReply = serde_json::from_slice(&msg.payload).unwrap();
                let targets: std::collections::BTreeSet<_> = listed
                    .routes
                    .iter()
                    .map(|r| r.deployment_id.clone())
                    .collect();
                assert_eq!(targets.len(), 1, "a mix of deployments: {targets:?}");
                reads += 1;
            }
            reads
        })
    };

    let mut tasks = Vec::new();
    for c in 0..10 {
        let url = env.nats.url();
        let ids = ids.clone();
        tasks.push(tokio::spawn(async move {
            let client = async_nats::connect(url).await.unwrap();
            for i in 0..10 {
                let deployment = format!("dep_{}", 1 + (c * 7 + i * 3) % 5);
                let body = serde_json::json!({"deployment_id": deployment, "route_ids": ids});
                let msg = client
                    .request(
                        format!("slipway.routing.v1.assign_frontline_routes.{PROJECT}"),
                        body.to_string().into(),
                    )
                    .await
                    .unwrap();
                assert!(msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("Nats-Service-Error-Code"))
                    .is_none());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let reads = reader.await.unwrap();
    assert!(reads > 0);
    env.assert_kv_matches_db().await;
    for s in &env.services {
        assert!(
            s.count_log("routes assigned") > 0,
            "both instances served assignments"
        );
    }
}

#[tokio::test]
async fn killed_between_commit_and_kv_write_the_kv_matches_the_db_after_restart() {
    let mut env = start(2).await;
    let ids = env.ensure().await;
    env.services[0].kill();
    env.services.clear();
    let crashing = env.spawn(
        ROUTING,
        &[("SLIPWAY_FAULT_POINT", "routing.after_commit".to_string())],
    );

    // Resend until it reaches the crashing instance: right after the SIGKILL the server may
    // still hand a request to the dead connection's subscription, and that one is lost.
    let body = serde_json::json!({"deployment_id": "dep_2", "route_ids": ids}).to_string();
    for _ in 0..10 {
        let request = env.client.request(
            format!("slipway.routing.v1.assign_frontline_routes.{PROJECT}"),
            body.clone().into(),
        );
        let answered = tokio::time::timeout(Duration::from_secs(2), request).await;
        assert!(
            answered.map_or(true, |r| r.is_err()),
            "the crashing instance answered"
        );
        if env.services[crashing].count_log("fault point routing.after_commit reached") > 0 {
            break;
        }
    }
    env.services[crashing]
        .wait_for_log("fault point routing.after_commit reached", TIMEOUT)
        .unwrap();
    // Committed in the DB, not in the KV.
    assert!(env
        .store
        .routes(PROJECT, None)
        .await
        .unwrap()
        .iter()
        .all(|r| r.deployment_id == "dep_2"));
    assert!(env
        .kv_entries()
        .await
        .values()
        .all(|e| e.deployment_id == "dep_1"));

    let healthy = env.spawn(ROUTING, &[]);
    env.services[healthy]
        .wait_for_log("route table reconciled", TIMEOUT)
        .unwrap();
    env.assert_kv_matches_db().await;
}

/// A commit that created a route and died before publishing it, retried on another routing
/// process: the retry publishes the route (found on a cluster, where such routes stayed out
/// of the route table until the next periodic reconcile).
#[tokio::test]
async fn a_retried_commit_publishes_the_routes_its_first_try_created() {
    let mut env = start(2).await;
    env.services[0]
        .wait_for_log("route table reconciled", TIMEOUT)
        .unwrap();
    let crashing = env.spawn(
        ROUTING,
        &[("SLIPWAY_FAULT_POINT", "routing.after_commit".to_string())],
    );
    env.services[crashing]
        .wait_for_log("route table reconciled", TIMEOUT)
        .unwrap();
    let assign = |i: usize| {
        let body = serde_json::json!({
            "deployment_id": "dep_2",
            "environment_id": "env_1",
            "create": [{"fqdn": format!("c{i}.shop.test"), "sticky": "none"}],
        });
        env.client.request(
            format!("slipway.routing.v1.assign_frontline_routes.{PROJECT}"),
            body.to_string().into(),
        )
    };

    // A new route per request until one reaches the crashing process (the healthy one
    // creates and publishes the others).
    let reached = "fault point routing.after_commit reached";
    let mut crashed_on = None;
    for i in 0..30 {
        let _ = tokio::time::timeout(Duration::from_secs(2), assign(i)).await;
        if env.services[crashing].count_log(reached) > 0 {
            crashed_on = Some(i);
            break;
        }
    }
    let i = crashed_on.expect("a request reached the crashing process");
    let fqdn = format!("c{i}.shop.test");
    assert!(!env.kv_entries().await.contains_key(&fqdn));

    // The caller retries; the healthy process answers (the dead one may still be handed a
    // request right after its crash).
    let mut answered = false;
    for _ in 0..10 {
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), assign(i)).await {
            answered = true;
            break;
        }
    }
    assert!(answered, "the retry was answered");
    assert!(env.kv_entries().await.contains_key(&fqdn));
    env.assert_kv_matches_db().await;
}

/// Found on a cluster, where failovers start reconciles during deploys: a reconcile reads
/// the database, then lists the route table's keys, and removed the entry of a route a
/// commit created and published in between as one without a route. With reconciles running
/// back to back while commits create routes, every route keeps its entry.
#[tokio::test]
async fn a_reconcile_keeps_the_routes_created_while_it_runs() {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    let env = start(2).await;
    env.services[0]
        .wait_for_log("route table reconciled", TIMEOUT)
        .unwrap();
    let table = routing::table::RouteTable::new(
        env.routes.clone(),
        env.store.clone(),
        "slipway.localhost".into(),
    );
    let done = Arc::new(AtomicBool::new(false));
    let reconciling = tokio::spawn({
        let done = done.clone();
        async move {
            let mut removed = 0;
            while !done.load(Ordering::Relaxed) {
                removed += table.reconcile().await.expect("a reconcile").removed;
            }
            removed
        }
    });
    for i in 0..100 {
        let body = serde_json::json!({
            "deployment_id": "dep_2",
            "environment_id": "env_1",
            "create": [{"fqdn": format!("r{i}.shop.test"), "sticky": "none"}],
        });
        let reply = env
            .client
            .request(
                format!("slipway.routing.v1.assign_frontline_routes.{PROJECT}"),
                body.to_string().into(),
            )
            .await
            .unwrap();
        let reply: AssignFrontlineRoutesReply = serde_json::from_slice(&reply.payload)
            .unwrap_or_else(|e| panic!("{e}: {:?}", reply.payload));
        assert_eq!(reply.assigned, 1);
    }
    done.store(true, Ordering::Relaxed);
    let removed = reconciling.await.unwrap();
    assert_eq!(removed, 0, "entries of existing routes removed");
    env.assert_kv_matches_db().await;
}
