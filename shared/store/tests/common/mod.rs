//! The fixture and the both-backends macro the store tests share.
#![allow(dead_code)]

use std::collections::BTreeMap;

use slipway_store::{Assigned, Assignment, LiveChange, NewDeployment, Store, StoreError};
use slipway_testkit::TestDb;

/// Runs each named `async fn(&TestDb)` once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() {
                let db = slipway_testkit::TestDb::sqlite().unwrap();
                super::$name(&db).await;
            })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() {
                let db = slipway_testkit::TestDb::postgres().await.unwrap();
                super::$name(&db).await;
            })*
        }
    };
}

#[derive(Clone)]
pub struct Fixture {
    pub store: Store,
    pub project_id: String,
    pub environment_id: String,
}

pub async fn fixture(db: &TestDb) -> Fixture {
    let store = Store::open(&db.url).await.unwrap();
    store
        .create_workspace("ws_1", "acme", "Acme", 1)
        .await
        .unwrap();
    store
        .create_project("proj_1", "ws_1", "shop", "Shop", "main", 1)
        .await
        .unwrap();
    let regions = BTreeMap::from([("eu".to_string(), 2), ("us".to_string(), 1)]);
    store
        .create_environment(
            "env_1",
            "proj_1",
            "production",
            &regions,
            8080,
            r#"{"a":1}"#,
            &[],
            1,
        )
        .await
        .unwrap();
    Fixture {
        store,
        project_id: "proj_1".into(),
        environment_id: "env_1".into(),
    }
}

pub async fn deployment(f: &Fixture, id: &str) {
    f.store
        .insert_deployment(
            &NewDeployment {
                id: id.into(),
                environment_id: f.environment_id.clone(),
                image: "exec:true".into(),
                command: vec!["a".into(), "b c".into()],
                ..Default::default()
            },
            10,
        )
        .await
        .unwrap();
    for region in ["eu", "us"] {
        f.store.upsert_topology(id, region, 1, 10).await.unwrap();
    }
}

/// A commit of `f`'s project: `route_ids` to `deployment`, the live pointer per `live`.
pub async fn commit(
    f: &Fixture,
    deployment: &str,
    route_ids: &[String],
    fencing_token: u64,
    live: LiveChange,
) -> Result<Assigned, StoreError> {
    commit_as(f, "", deployment, route_ids, fencing_token, live).await
}

/// [`commit`] as commit `commit_id` (a workflow id).
pub async fn commit_as(
    f: &Fixture,
    commit_id: &str,
    deployment: &str,
    route_ids: &[String],
    fencing_token: u64,
    live: LiveChange,
) -> Result<Assigned, StoreError> {
    f.store
        .assign_routes(
            &Assignment {
                project_id: &f.project_id,
                deployment_id: deployment,
                route_ids,
                create: &[],
                environment_id: &f.environment_id,
                fencing_token,
                live,
                commit_id,
            },
            100,
        )
        .await
}
