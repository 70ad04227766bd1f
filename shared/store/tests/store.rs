//! The same store tests on SQLite and on PostgreSQL (this machine's, or
//! `SLIPWAY_TEST_POSTGRES_URL`): each test body runs once per backend.

use std::collections::BTreeMap;

use slipway_store::{ApplyOutcome, LiveChange, NewDeployment, NewRoute, Store, StoreError};
use slipway_testkit::TestDb;

mod common;
use common::{commit, deployment, fixture, Fixture};
use slipway_core::{
    domains::Sticky,
    state::{DeploymentStatus, DesiredState, TopologyStatus},
};

on_both_backends!(
    concurrent_migrations_all_succeed,
    records_round_trip,
    unique_slugs_conflict,
    apply_desired_state_outcomes,
    concurrent_applies_each_get_their_own_outcome,
    a_change_that_cannot_be_written_fails_alone,
    applies_and_new_deployments_in_one_environment_do_not_deadlock,
    topology_upsert_is_idempotent,
    routes_are_created_once_and_move_all_or_nothing,
);

/// Eight services starting at once on a fresh database each apply migrations; all succeed.
async fn concurrent_migrations_all_succeed(db: &TestDb) {
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = db.url.clone();
        tasks.push(tokio::spawn(
            async move { Store::open(&url).await.map(|_| ()) },
        ));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let store = Store::open(&db.url).await.unwrap();
    store.create_workspace("ws_x", "x", "X", 1).await.unwrap();
}

async fn records_round_trip(db: &TestDb) {
    let f = fixture(db).await;
    let env = f.store.environment(&f.environment_id).await.unwrap();
    assert_eq!(
        env.regions,
        BTreeMap::from([("eu".into(), 2), ("us".into(), 1)])
    );
    assert_eq!(env.port, 8080);
    assert_eq!(
        f.store.environments(&f.project_id).await.unwrap(),
        vec![env]
    );

    deployment(&f, "dep_1").await;
    let d = f.store.deployment("dep_1").await.unwrap();
    assert_eq!(d.status, DeploymentStatus::Pending);
    assert_eq!(d.desired_state, DesiredState::Running);
    assert_eq!(d.environment_slug, "production");
    assert_eq!(d.command, vec!["a".to_string(), "b c".to_string()]);
    assert_eq!(d.sentinel_config, r#"{"a":1}"#);
    assert_eq!(d.project_id, f.project_id);

    let p = f.store.project(&f.project_id).await.unwrap();
    assert_eq!((p.live_deployment_id, p.is_rolled_back), (None, false));
    f.store
        .set_live_deployment(&f.project_id, Some("dep_1"), 20)
        .await
        .unwrap();
    let p = f.store.project(&f.project_id).await.unwrap();
    assert_eq!(p.live_deployment_id.as_deref(), Some("dep_1"));

    assert!(matches!(
        f.store.deployment("dep_nope").await,
        Err(StoreError::NotFound(_))
    ));
    assert!(f.store.delete_deployment("dep_1").await.unwrap());
    assert!(f.store.find_deployment("dep_1").await.unwrap().is_none());
    assert!(f.store.topology("dep_1").await.unwrap().is_empty());
}

async fn unique_slugs_conflict(db: &TestDb) {
    let f = fixture(db).await;
    let err = f
        .store
        .create_workspace("ws_2", "acme", "Again", 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    let err = f
        .store
        .create_project("proj_2", "ws_1", "shop", "Again", "main", 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err}");
    let err = f
        .store
        .create_project("proj_3", "ws_missing", "x", "X", "main", 1)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)), "{err}");
}

/// A change that cannot be written (its row does not parse) fails with its own error; the
/// changes applied beside it (on SQLite, in the same group transaction, which then fails) are
/// each written once all the same.
async fn a_change_that_cannot_be_written_fails_alone(db: &TestDb) {
    let f = fixture(db).await;
    let ids: Vec<String> = (0..8).map(|i| format!("dep_g{i}")).collect();
    for id in &ids {
        deployment(&f, id).await;
    }
    sqlx::query("UPDATE deployments SET status = 'no-such-status' WHERE id = 'dep_g3'")
        .execute(f.store.pool())
        .await
        .unwrap();
    // Sent together from one task: on SQLite they all wait for the writer at once, so they
    // form one group.
    let applies = ids.iter().map(|id| {
        f.store
            .apply_desired_state(id, DesiredState::Standby, "n1", 40)
    });
    let outcomes = futures::future::join_all(applies).await;
    for (i, outcome) in outcomes.iter().enumerate() {
        match (i, outcome) {
            (3, Err(StoreError::Corrupt(_))) => {}
            (3, other) => panic!("the unreadable row: {other:?}"),
            (_, Ok(ApplyOutcome::Applied { .. })) => {}
            (i, other) => panic!("{i}: {other:?}"),
        }
    }
    for id in &ids {
        let topology = f.store.topology(id).await.unwrap();
        let expected = if id == "dep_g3" { 1 } else { 2 };
        assert!(
            topology.iter().all(|t| t.version == expected),
            "{id}: {topology:?}"
        );
    }
}

/// Changes applied at once (on SQLite they share transactions) each get their own outcome,
/// each written once: new ones, a repeated nonce, a refused live one, an unknown deployment,
/// and two changes of one deployment in a row.
async fn concurrent_applies_each_get_their_own_outcome(db: &TestDb) {
    let f = fixture(db).await;
    let ids: Vec<String> = (0..60).map(|i| format!("dep_c{i}")).collect();
    for id in &ids {
        deployment(&f, id).await;
    }
    f.store
        .set_live_deployment(&f.project_id, Some("dep_c0"), 10)
        .await
        .unwrap();
    f.store
        .apply_desired_state("dep_c1", DesiredState::Standby, "done", 20)
        .await
        .unwrap();

    let mut changes: Vec<(String, &str)> = ids.iter().map(|id| (id.clone(), "n1")).collect();
    changes[1].1 = "done";
    changes.push(("dep_unknown".into(), "n1"));
    changes.push(("dep_c2".into(), "n2"));
    let tasks: Vec<_> = changes
        .iter()
        .map(|(id, nonce)| {
            let (store, id, nonce) = (f.store.clone(), id.clone(), nonce.to_string());
            tokio::spawn(async move {
                store
                    .apply_desired_state(&id, DesiredState::Standby, &nonce, 30)
                    .await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap().unwrap());
    }
    assert_eq!(outcomes[0], ApplyOutcome::ServesTraffic);
    assert!(matches!(outcomes[1], ApplyOutcome::AlreadyApplied { .. }));
    assert_eq!(outcomes[60], ApplyOutcome::NotFound);
    for (i, outcome) in outcomes.iter().enumerate().take(60).skip(2) {
        assert!(
            matches!(outcome, ApplyOutcome::Applied { .. }),
            "{i}: {outcome:?}"
        );
    }
    assert!(
        matches!(outcomes[61], ApplyOutcome::Applied { .. }),
        "{:?}",
        outcomes[61]
    );
    // Each write counted once: version 2 after one change, 3 after dep_c2's two.
    for (i, id) in ids.iter().enumerate() {
        let expected = match i {
            0 => 1,
            2 => 3,
            _ => 2,
        };
        let topology = f.store.topology(id).await.unwrap();
        assert!(
            topology.iter().all(|t| t.version == expected),
            "{id}: {topology:?}"
        );
    }
}

async fn apply_desired_state_outcomes(db: &TestDb) {
    let f = fixture(db).await;
    deployment(&f, "dep_1").await;

    let outcome = f
        .store
        .apply_desired_state("dep_1", DesiredState::Standby, "n1", 50)
        .await
        .unwrap();
    let ApplyOutcome::Applied {
        deployment,
        previous,
        topology,
    } = outcome
    else {
        panic!("expected Applied, got {outcome:?}")
    };
    assert_eq!(previous, DesiredState::Running);
    assert_eq!(deployment.desired_state, DesiredState::Standby);
    assert_eq!(deployment.desired_state_nonce.as_deref(), Some("n1"));
    assert!(topology
        .iter()
        .all(|t| t.desired_status == TopologyStatus::Stopped && t.version == 2));

    // The same nonce again (a redelivery) writes nothing.
    let outcome = f
        .store
        .apply_desired_state("dep_1", DesiredState::Standby, "n1", 60)
        .await
        .unwrap();
    let ApplyOutcome::AlreadyApplied {
        deployment,
        topology,
    } = outcome
    else {
        panic!("expected AlreadyApplied, got {outcome:?}")
    };
    assert_eq!(deployment.updated_at_ms, 50);
    assert!(topology.iter().all(|t| t.version == 2));

    let outcome = f
        .store
        .apply_desired_state("dep_1", DesiredState::Running, "n2", 70)
        .await
        .unwrap();
    assert!(
        matches!(outcome, ApplyOutcome::Applied { ref topology, .. } if topology.iter().all(|t| t.desired_status == TopologyStatus::Started && t.version == 3))
    );

    // The live deployment is never changed.
    f.store
        .set_live_deployment(&f.project_id, Some("dep_1"), 80)
        .await
        .unwrap();
    let outcome = f
        .store
        .apply_desired_state("dep_1", DesiredState::Standby, "n3", 90)
        .await
        .unwrap();
    assert_eq!(outcome, ApplyOutcome::ServesTraffic);
    assert_eq!(
        f.store.deployment("dep_1").await.unwrap().desired_state,
        DesiredState::Running
    );
    // Nor one behind an environment route (a pinned project's newer deploy), though not live;
    // waking it is fine.
    f.store
        .set_live_deployment(&f.project_id, None, 91)
        .await
        .unwrap();
    let env_route = [NewRoute {
        fqdn: "shop-production-acme.example".into(),
        sticky: Sticky::Environment,
    }];
    f.store
        .ensure_routes(&f.project_id, &f.environment_id, "dep_1", &env_route, 92)
        .await
        .unwrap();
    for (state, nonce, refused) in [
        (DesiredState::Standby, "n5", true),
        (DesiredState::Archived, "n6", true),
        (DesiredState::Running, "n7", false),
    ] {
        let outcome = f
            .store
            .apply_desired_state("dep_1", state, nonce, 93)
            .await
            .unwrap();
        assert_eq!(outcome == ApplyOutcome::ServesTraffic, refused, "{state:?}");
    }

    let outcome = f
        .store
        .apply_desired_state("dep_gone", DesiredState::Standby, "n4", 90)
        .await
        .unwrap();
    assert_eq!(outcome, ApplyOutcome::NotFound);
}

async fn topology_upsert_is_idempotent(db: &TestDb) {
    let f = fixture(db).await;
    deployment(&f, "dep_1").await;
    f.store.upsert_topology("dep_1", "eu", 3, 20).await.unwrap();
    f.store.upsert_topology("dep_1", "eu", 3, 30).await.unwrap();
    let rows = f.store.topology("dep_1").await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].replicas, 3);
    assert_eq!(rows[0].version, 1);
}

async fn routes_are_created_once_and_move_all_or_nothing(db: &TestDb) {
    let f = fixture(db).await;
    deployment(&f, "dep_1").await;
    deployment(&f, "dep_2").await;
    let wanted = vec![
        NewRoute {
            fqdn: "a.example".into(),
            sticky: Sticky::Environment,
        },
        NewRoute {
            fqdn: "b.example".into(),
            sticky: Sticky::Live,
        },
    ];
    let first = f
        .store
        .ensure_routes("proj_1", "env_1", "dep_1", &wanted, 5)
        .await
        .unwrap();
    let again = f
        .store
        .ensure_routes("proj_1", "env_1", "dep_2", &wanted, 6)
        .await
        .unwrap();
    assert_eq!(first, again, "existing routes are returned as they are");
    assert!(first
        .iter()
        .all(|r| r.deployment_id == "dep_1" && r.version == 1));
    let ids: Vec<String> = first.iter().map(|r| r.id.clone()).collect();

    // One unknown id: nothing moves.
    let mut with_bad = ids.clone();
    with_bad.push("flr_missing".into());
    let err = commit(&f, "dep_2", &with_bad, 0, LiveChange::Leave)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::NotFound(ref m) if m.contains("flr_missing")),
        "{err}"
    );
    assert!(f
        .store
        .routes("proj_1", None)
        .await
        .unwrap()
        .iter()
        .all(|r| r.deployment_id == "dep_1"));

    let moved = commit(&f, "dep_2", &ids, 0, LiveChange::Leave)
        .await
        .unwrap()
        .moved;
    assert_eq!(moved.len(), 2);
    let stored = f.store.routes("proj_1", Some("env_1")).await.unwrap();
    assert!(
        stored
            .iter()
            .all(|r| r.deployment_id == "dep_2" && r.version == 2),
        "{stored:?}"
    );
    assert_eq!(f.store.routes_by_id(&ids).await.unwrap().len(), 2);
    // Repeating the assignment moves nothing.
    assert!(commit(&f, "dep_2", &ids, 0, LiveChange::Leave)
        .await
        .unwrap()
        .moved
        .is_empty());

    // Another project's route or deployment is refused.
    f.store
        .create_project("proj_2", "ws_1", "other", "Other", "main", 1)
        .await
        .unwrap();
    let other = Fixture {
        project_id: "proj_2".into(),
        ..f.clone()
    };
    let err = commit(&other, "dep_2", &ids, 0, LiveChange::Leave)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    let err = f
        .store
        .ensure_routes("proj_2", "env_1", "dep_1", &wanted, 10)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");

    f.store
        .record_instances(
            "dep_2",
            "eu",
            &[(
                "inst_1".into(),
                "127.0.0.1:9000".into(),
                slipway_core::krane::InstanceStatus::Running,
            )],
            11,
        )
        .await
        .unwrap();
    f.store
        .record_instances("dep_2", "eu", &[], 12)
        .await
        .unwrap();
    assert!(f.store.instances("dep_2").await.unwrap().is_empty());
    assert_eq!(
        f.store.routes_page("", 1).await.unwrap()[0].fqdn,
        "a.example"
    );
    assert_eq!(f.store.routes_page("a.example", 10).await.unwrap().len(), 1);
}

/// Found by the cluster test on PostgreSQL: the actor's apply locked the deployment's
/// environment row too (`FOR UPDATE` of the whole join), and a deployment being created in
/// that environment (its foreign keys take key-share locks on the environment, then the
/// project) deadlocked with it. Applies and creations in one environment, concurrently.
async fn applies_and_new_deployments_in_one_environment_do_not_deadlock(db: &TestDb) {
    let f = fixture(db).await;
    for i in 0..20 {
        deployment(&f, &format!("dep_old{i}")).await;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let g = f.clone();
        tasks.spawn(async move {
            let f = g;
            let state = if i % 2 == 0 {
                DesiredState::Standby
            } else {
                DesiredState::Running
            };
            f.store
                .apply_desired_state(&format!("dep_old{i}"), state, &format!("n{i}"), 50)
                .await
                .map(|_| ())
        });
        let g = f.clone();
        tasks.spawn(async move {
            let f = g;
            let new = NewDeployment {
                id: format!("dep_new{i}"),
                environment_id: f.environment_id.clone(),
                image: "exec:true".into(),
                ..Default::default()
            };
            f.store.insert_deployment(&new, 60).await.map(|_| ())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().unwrap();
    }
}
