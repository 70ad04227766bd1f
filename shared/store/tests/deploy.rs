//! What the Deploy workflow writes, on SQLite and on PostgreSQL: idempotent creation, the
//! live swap of the commit (idempotent, pinned by a rollback, fenced), failure, listing.

use slipway_core::domains::Sticky;
use slipway_core::{error::STALE_FENCING_TOKEN, state::DeploymentStatus};
use slipway_store::{
    Assignment, Idempotency, LiveChange, NewDeployment, NewRoute, StoreError, IDEMPOTENCY_WINDOW_MS,
};
use slipway_testkit::TestDb;

mod common;
use common::{commit, commit_as, deployment, fixture, Fixture};

on_both_backends!(
    idempotent_creation,
    live_swap_is_idempotent_and_respects_a_pin,
    promote_swaps_unpins_and_is_idempotent,
    writes_with_an_older_fencing_token_are_refused,
    a_repeated_commit_reports_what_it_first_replaced,
    a_repeated_commit_that_leaves_live_reports_what_it_first_replaced,
    a_repeated_commit_names_the_routes_it_created,
    a_repeated_commit_moves_no_route_back,
    what_a_commit_replaced_outlives_later_commits_of_the_same_deployment,
    idle_preview_candidates_page_by_environment,
    failing_stops_the_topology_once,
    listing_pages_newest_first,
);

fn new(f: &Fixture, id: &str) -> NewDeployment {
    NewDeployment {
        id: id.into(),
        environment_id: f.environment_id.clone(),
        image: "exec:true".into(),
        workflow_id: Some(format!("wf_{id}")),
        ..Default::default()
    }
}

fn key(hash: &str) -> Idempotency {
    Idempotency {
        key: "k1".into(),
        request_hash: hash.into(),
    }
}

async fn idempotent_creation(db: &TestDb) {
    let f = fixture(db).await;
    let first = f
        .store
        .create_deployment(&new(&f, "dep_1"), Some(&key("h")), 1000)
        .await
        .unwrap();
    assert!(first.created);
    assert_eq!(first.deployment.workflow_id.as_deref(), Some("wf_dep_1"));
    // Same key and request: the first deployment, nothing new.
    let again = f
        .store
        .create_deployment(&new(&f, "dep_2"), Some(&key("h")), 2000)
        .await
        .unwrap();
    assert!(!again.created);
    assert_eq!(again.deployment.id, "dep_1");
    assert!(f.store.find_deployment("dep_2").await.unwrap().is_none());
    // Same key, another request: conflict, nothing written.
    let err = f
        .store
        .create_deployment(&new(&f, "dep_3"), Some(&key("other")), 3000)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert!(f.store.find_deployment("dep_3").await.unwrap().is_none());
    // After 24 h the key is free again.
    let later = f
        .store
        .create_deployment(
            &new(&f, "dep_4"),
            Some(&key("other")),
            1000 + IDEMPOTENCY_WINDOW_MS,
        )
        .await
        .unwrap();
    assert!(later.created);
    assert_eq!(later.deployment.id, "dep_4");
}

async fn live_swap_is_idempotent_and_respects_a_pin(db: &TestDb) {
    let f = fixture(db).await;
    for id in ["dep_1", "dep_2", "dep_3"] {
        deployment(&f, id).await;
    }
    let s = &f.store;
    let take = |dep: &'static str| commit(&f, dep, &[], 0, LiveChange::Take);
    assert_eq!(take("dep_1").await.unwrap().previous_live, None);
    let swap = take("dep_2").await.unwrap();
    assert_eq!(swap.previous_live.as_deref(), Some("dep_1"));
    // Repeated (a replayed step): the same answer, not "dep_2 replaced dep_2".
    assert_eq!(
        take("dep_2").await.unwrap().previous_live,
        swap.previous_live
    );
    assert_eq!(
        s.project(&f.project_id)
            .await
            .unwrap()
            .live_deployment_id
            .as_deref(),
        Some("dep_2")
    );
    // Pinned by a rollback to dep_1; leaving live alone keeps the pin.
    commit(&f, "dep_1", &[], 0, LiveChange::Pin).await.unwrap();
    commit(&f, "dep_3", &[], 0, LiveChange::Leave)
        .await
        .unwrap();
    let p = s.project(&f.project_id).await.unwrap();
    assert_eq!(p.live_deployment_id.as_deref(), Some("dep_1"));
    assert!(p.is_rolled_back);
}

/// A commit whose run died before journaling it, then repeated by the resumed run after
/// another commit moved live away: it writes nothing (live stays where the other commit put
/// it) and reports what its first application did.
async fn a_repeated_commit_reports_what_it_first_replaced(db: &TestDb) {
    let f = fixture(db).await;
    for id in ["dep_1", "dep_2", "dep_3"] {
        deployment(&f, id).await;
    }
    let s = &f.store;
    commit(&f, "dep_1", &[], 0, LiveChange::Take).await.unwrap();
    let first = commit_as(&f, "wf_a", "dep_2", &[], 0, LiveChange::Take)
        .await
        .unwrap();
    assert_eq!(
        (first.previous_live.as_deref(), first.replaced_earlier),
        (Some("dep_1"), vec![])
    );
    assert_eq!(s.replaced_by_commit("wf_a").await.unwrap(), ["dep_1"]);
    assert!(s.replaced_by_commit("wf_b").await.unwrap().is_empty());
    commit_as(&f, "wf_b", "dep_3", &[], 0, LiveChange::Take)
        .await
        .unwrap();
    let again = commit_as(&f, "wf_a", "dep_2", &[], 0, LiveChange::Take)
        .await
        .unwrap();
    assert!(again.repeated && again.took_live);
    assert_eq!(
        (again.previous_live.as_deref(), again.replaced_earlier),
        (Some("dep_1"), vec![])
    );
    assert_eq!(again.live_now.as_deref(), Some("dep_3"));
    let p = s.project(&f.project_id).await.unwrap();
    assert_eq!(
        p.live_deployment_id.as_deref(),
        Some("dep_3"),
        "not taken back"
    );
    assert!(s.commit_applied("wf_a").await.unwrap().is_some());
    assert!(s.commit_applied("wf_z").await.unwrap().is_none());
    // Another commit of dep_2 (a later promote) is not that one: dep_3 it replaced long ago
    // was handled by then.
    commit_as(&f, "wf_c", "dep_1", &[], 0, LiveChange::Take)
        .await
        .unwrap();
    let later = commit_as(&f, "wf_d", "dep_2", &[], 0, LiveChange::Take)
        .await
        .unwrap();
    assert_eq!(
        (later.previous_live.as_deref(), later.replaced_earlier),
        (Some("dep_1"), vec![])
    );
}

/// A commit that created routes and died before publishing them, repeated: the repeat names
/// them (the caller publishes what it names), without reporting them as moved again. Found
/// on a cluster, where routes created by a commit whose publish failed never reached the
/// route table.
async fn a_repeated_commit_names_the_routes_it_created(db: &TestDb) {
    let f = fixture(db).await;
    deployment(&f, "dep_1").await;
    let create = [NewRoute {
        fqdn: "shop-git-abc.slipway.localhost".into(),
        sticky: Sticky::None,
    }];
    let assignment = Assignment {
        project_id: &f.project_id,
        deployment_id: "dep_1",
        route_ids: &[],
        create: &create,
        environment_id: &f.environment_id,
        fencing_token: 0,
        live: LiveChange::Leave,
        commit_id: "wf_a",
    };
    let first = f.store.assign_routes(&assignment, 100).await.unwrap();
    let again = f.store.assign_routes(&assignment, 200).await.unwrap();
    let fqdns = |routes: &[slipway_store::Route]| -> Vec<String> {
        routes.iter().map(|r| r.fqdn.clone()).collect()
    };
    assert_eq!(fqdns(&first.routes), ["shop-git-abc.slipway.localhost"]);
    assert_eq!(fqdns(&first.moved), ["shop-git-abc.slipway.localhost"]);
    assert_eq!(again.routes, first.routes);
    assert!(again.moved.is_empty());
}

/// The same, when the resumed run decided not to take live any more (a rollback pinned the
/// project meanwhile): found by the chaos test, where dep_1 was left running for ever. The
/// repeat still reports what the first application did, and leaves the pin alone.
async fn a_repeated_commit_that_leaves_live_reports_what_it_first_replaced(db: &TestDb) {
    let f = fixture(db).await;
    for id in ["dep_1", "dep_2", "dep_3"] {
        deployment(&f, id).await;
    }
    commit(&f, "dep_1", &[], 0, LiveChange::Take).await.unwrap();
    commit_as(&f, "wf_a", "dep_2", &[], 0, LiveChange::Take)
        .await
        .unwrap();
    commit_as(&f, "wf_r", "dep_3", &[], 0, LiveChange::Pin)
        .await
        .unwrap();
    let again = commit_as(&f, "wf_a", "dep_2", &[], 0, LiveChange::Leave)
        .await
        .unwrap();
    assert!(again.repeated && again.took_live);
    assert_eq!(
        (again.previous_live.as_deref(), again.replaced_earlier),
        (Some("dep_1"), vec![])
    );
    let p = f.store.project(&f.project_id).await.unwrap();
    assert_eq!(p.live_deployment_id.as_deref(), Some("dep_3"));
    assert!(p.is_rolled_back);
    // Another commit is not that one.
    let other = commit_as(&f, "wf_x", "dep_2", &[], 0, LiveChange::Leave)
        .await
        .unwrap();
    assert!(!other.repeated && !other.took_live);
    assert!(other.replaced_earlier.is_empty());
}

/// A repeated commit writes nothing, also when it moved routes: a later commit that moved
/// them on keeps them.
async fn a_repeated_commit_moves_no_route_back(db: &TestDb) {
    let f = fixture(db).await;
    for id in ["dep_1", "dep_2"] {
        deployment(&f, id).await;
    }
    let create = [NewRoute {
        fqdn: "shop-staging.slipway.localhost".into(),
        sticky: Sticky::Environment,
    }];
    let assignment = |deployment_id, commit_id| Assignment {
        project_id: &f.project_id,
        deployment_id,
        route_ids: &[],
        create: &create,
        environment_id: &f.environment_id,
        fencing_token: 0,
        live: LiveChange::Leave,
        commit_id,
    };
    let first = f
        .store
        .assign_routes(&assignment("dep_1", "wf_a"), 100)
        .await
        .unwrap();
    let route = first.routes[0].id.clone();
    commit_as(
        &f,
        "wf_b",
        "dep_2",
        std::slice::from_ref(&route),
        0,
        LiveChange::Leave,
    )
    .await
    .unwrap();
    let moved = [route];
    let again = f
        .store
        .assign_routes(
            &Assignment {
                route_ids: &moved,
                ..assignment("dep_1", "wf_a")
            },
            300,
        )
        .await
        .unwrap();
    assert!(again.repeated && again.moved.is_empty());
    assert_eq!(again.routes.len(), 1);
    assert_eq!(again.routes[0].deployment_id, "dep_2", "as it is now");
    let stored = f.store.routes(&f.project_id, None).await.unwrap();
    assert_eq!(stored[0].deployment_id, "dep_2");
}

/// Found by the chaos test: promote A made dep_2 live (replacing dep_1) and died before
/// journaling it; a deploy made dep_3 live, then promote B made dep_2 live again. A, resumed,
/// fails (dep_2 is live already): what its commit replaced, dep_1, must still be known, though
/// a later commit made the same deployment live since.
async fn what_a_commit_replaced_outlives_later_commits_of_the_same_deployment(db: &TestDb) {
    let f = fixture(db).await;
    for id in ["dep_1", "dep_2", "dep_3"] {
        deployment(&f, id).await;
    }
    let s = &f.store;
    commit(&f, "dep_1", &[], 0, LiveChange::Take).await.unwrap();
    commit_as(&f, "wf_a", "dep_2", &[], 0, LiveChange::Take)
        .await
        .unwrap();
    commit_as(&f, "wf_d", "dep_3", &[], 0, LiveChange::Take)
        .await
        .unwrap();
    let b = commit_as(&f, "wf_b", "dep_2", &[], 0, LiveChange::Take)
        .await
        .unwrap();
    assert_eq!(b.previous_live.as_deref(), Some("dep_3"));
    assert!(b.replaced_earlier.is_empty());
    assert_eq!(s.replaced_by_commit("wf_a").await.unwrap(), ["dep_1"]);
    assert_eq!(s.replaced_by_commit("wf_b").await.unwrap(), ["dep_3"]);
}

async fn writes_with_an_older_fencing_token_are_refused(db: &TestDb) {
    let f = fixture(db).await;
    for id in ["dep_1", "dep_2"] {
        deployment(&f, id).await;
    }
    let s = &f.store;
    commit(&f, "dep_1", &[], 10, LiveChange::Take)
        .await
        .unwrap();
    // A newer holder registers its epoch before it reads anything.
    s.fence(&f.project_id, 20).await.unwrap();
    for (what, result) in [
        (
            "take",
            commit(&f, "dep_2", &[], 10, LiveChange::Take)
                .await
                .map(|_| ()),
        ),
        (
            "pin",
            commit(&f, "dep_2", &[], 19, LiveChange::Pin)
                .await
                .map(|_| ()),
        ),
        (
            "confirm",
            s.confirm_rollback(&f.project_id, 10, "", 5).await,
        ),
        ("fence", s.fence(&f.project_id, 11).await),
    ] {
        match result {
            Err(StoreError::Conflict(m)) => {
                assert!(m.starts_with(STALE_FENCING_TOKEN), "{what}: {m}")
            }
            other => panic!("{what}: not refused: {other:?}"),
        }
    }
    let p = s.project(&f.project_id).await.unwrap();
    assert_eq!(
        (p.live_deployment_id.as_deref(), p.is_rolled_back),
        (Some("dep_1"), false),
        "nothing written"
    );
    // The current epoch, a newer one, and an unfenced operator's write go through.
    commit(&f, "dep_2", &[], 20, LiveChange::Pin).await.unwrap();
    commit(&f, "dep_1", &[], 21, LiveChange::Take)
        .await
        .unwrap();
    commit(&f, "dep_2", &[], 0, LiveChange::Take).await.unwrap();
    assert!(commit(&f, "dep_1", &[], 20, LiveChange::Take)
        .await
        .is_err());
    assert!(matches!(
        s.fence("proj_nope", 1).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn failing_stops_the_topology_once(db: &TestDb) {
    let f = fixture(db).await;
    deployment(&f, "dep_1").await;
    f.store.upsert_topology("dep_1", "eu", 2, 1).await.unwrap();
    let before = f.store.topology("dep_1").await.unwrap();
    let topology = f
        .store
        .fail_deployment("dep_1", "it broke", 2)
        .await
        .unwrap();
    assert_eq!(topology.len(), before.len());
    for (row, old) in topology.iter().zip(&before) {
        assert_eq!(
            (row.desired_status.as_str(), row.version),
            ("stopped", old.version + 1)
        );
    }
    let again = f
        .store
        .fail_deployment("dep_1", "it broke", 3)
        .await
        .unwrap();
    assert_eq!(again, topology, "a repeat bumps no version");
    let d = f.store.deployment("dep_1").await.unwrap();
    assert_eq!(
        (d.status, d.failure_reason.as_deref()),
        (DeploymentStatus::Failed, Some("it broke"))
    );
    assert!(matches!(
        f.store.fail_deployment("dep_nope", "x", 4).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn listing_pages_newest_first(db: &TestDb) {
    let f = fixture(db).await;
    let ids: Vec<String> = (0..5).map(|_| slipway_core::ids::new("dep")).collect();
    for id in &ids {
        deployment(&f, id).await;
    }
    let s = &f.store;
    let page = s
        .list_deployments(&f.project_id, None, None, 3)
        .await
        .unwrap();
    let got: Vec<&str> = page.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(got, vec![ids[4].as_str(), ids[3].as_str(), ids[2].as_str()]);
    let rest = s
        .list_deployments(&f.project_id, Some("production"), Some(&ids[2]), 3)
        .await
        .unwrap();
    assert_eq!(rest.len(), 2);
    assert!(s
        .list_deployments(&f.project_id, Some("preview"), None, 3)
        .await
        .unwrap()
        .is_empty());
    s.set_domains(&ids[0], &["a.example".into()], 9)
        .await
        .unwrap();
    assert_eq!(
        s.deployment(&ids[0]).await.unwrap().domains,
        vec!["a.example"]
    );
    assert_eq!(s.pending_deployments(i64::MAX).await.unwrap().len(), 5);
}

async fn promote_swaps_unpins_and_is_idempotent(db: &TestDb) {
    let f = fixture(db).await;
    for id in ["dep_1", "dep_2"] {
        deployment(&f, id).await;
    }
    let s = &f.store;
    commit(&f, "dep_1", &[], 0, LiveChange::Pin).await.unwrap();
    let previous = commit(&f, "dep_2", &[], 0, LiveChange::Take)
        .await
        .unwrap()
        .previous_live;
    assert_eq!(previous.as_deref(), Some("dep_1"));
    let p = s.project(&f.project_id).await.unwrap();
    assert_eq!(p.live_deployment_id.as_deref(), Some("dep_2"));
    assert!(!p.is_rolled_back);
    // Replayed: the same previous, not "dep_2 replaced dep_2".
    assert_eq!(
        commit(&f, "dep_2", &[], 0, LiveChange::Take)
            .await
            .unwrap()
            .previous_live,
        previous
    );
    // Confirming a rollback only clears the pin.
    commit(&f, "dep_1", &[], 0, LiveChange::Pin).await.unwrap();
    s.confirm_rollback(&f.project_id, 0, "", 5).await.unwrap();
    let p = s.project(&f.project_id).await.unwrap();
    assert_eq!(
        (p.live_deployment_id.as_deref(), p.is_rolled_back),
        (Some("dep_1"), false)
    );
    // A workflow's confirmation is applied once: repeated after a later rollback pinned the
    // project again, it leaves the pin.
    commit(&f, "dep_2", &[], 0, LiveChange::Pin).await.unwrap();
    s.confirm_rollback(&f.project_id, 0, "wf_confirm", 6)
        .await
        .unwrap();
    assert!(!s.project(&f.project_id).await.unwrap().is_rolled_back);
    commit(&f, "dep_1", &[], 0, LiveChange::Pin).await.unwrap();
    s.confirm_rollback(&f.project_id, 0, "wf_confirm", 7)
        .await
        .unwrap();
    let p = s.project(&f.project_id).await.unwrap();
    assert_eq!(
        (p.live_deployment_id.as_deref(), p.is_rolled_back),
        (Some("dep_1"), true)
    );
    assert_eq!(
        s.commit_applied("wf_confirm").await.unwrap(),
        Some(LiveChange::Leave)
    );
    assert!(matches!(
        s.confirm_rollback("proj_nope", 0, "", 6).await,
        Err(StoreError::NotFound(_))
    ));
}

async fn idle_preview_candidates_page_by_environment(db: &TestDb) {
    let f = fixture(db).await;
    let s = &f.store;
    let mut envs = vec![];
    for i in 0..5 {
        let project = format!("proj_p{i}");
        s.create_project(&project, "ws_1", &format!("p{i}"), "P", "main", 1)
            .await
            .unwrap();
        let env = format!("env_p{i}");
        s.create_environment(
            &env,
            &project,
            "preview",
            &Default::default(),
            8080,
            "{}",
            &[],
            1,
        )
        .await
        .unwrap();
        envs.push(env);
    }
    // env_p1: an old ready one (candidate), a fresh ready one, an old pending one.
    for (id, status, at) in [
        ("dep_old", DeploymentStatus::Ready, 10),
        ("dep_new", DeploymentStatus::Ready, 1000),
        ("dep_pending", DeploymentStatus::Pending, 10),
    ] {
        s.insert_deployment(
            &NewDeployment {
                id: id.into(),
                environment_id: envs[1].clone(),
                ..Default::default()
            },
            at,
        )
        .await
        .unwrap();
        s.set_deployment_status(id, status, at).await.unwrap();
    }
    let (first, next) = s.idle_preview_candidates(None, 2, 500).await.unwrap();
    assert_eq!(
        (first, next.as_deref()),
        (vec!["dep_old".to_string()], Some("env_p1"))
    );
    let (second, next) = s
        .idle_preview_candidates(Some("env_p1"), 2, 500)
        .await
        .unwrap();
    assert_eq!((second.len(), next.as_deref()), (0, Some("env_p3")));
    let (third, next) = s
        .idle_preview_candidates(Some("env_p3"), 2, 500)
        .await
        .unwrap();
    assert_eq!((third.len(), next), (0, None));
}
