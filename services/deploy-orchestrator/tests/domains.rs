//! Generated domains never collide across projects (README "Domains"): projects whose
//! dash-joined domains would have been the same name both deploy and go live, each on its own
//! domains; between projects that keep dash-joined domains (created before the separated
//! scheme), the collision is refused when the environment is created, with nothing written.

mod common;

use common::Plane;
use serde_json::{json, Value};
use slipway_core::domains::Scheme;

async fn workspace(plane: &mut Plane) -> (String, String) {
    let slug = format!("acme{}", plane.next_seq());
    let ws = plane
        .ok(
            "slipway.project.v1.create_workspace",
            json!({ "slug": slug }),
        )
        .await;
    (ws["workspace"]["id"].as_str().unwrap().to_string(), slug)
}

async fn project(plane: &Plane, workspace_id: &str, slug: &str) -> String {
    let p = plane
        .ok(
            "slipway.project.v1.create_project",
            json!({"workspace_id": workspace_id, "slug": slug}),
        )
        .await;
    p["project"]["id"].as_str().unwrap().to_string()
}

async fn production(plane: &Plane, project_id: &str) -> Result<Value, common::ErrorReply> {
    plane
        .call(
            "slipway.project.v1.create_environment",
            json!({"project_id": project_id, "slug": "production"}),
        )
        .await
}

#[tokio::test(flavor = "multi_thread")]
async fn projects_whose_joined_domains_collide_both_go_live_on_their_own() {
    let mut plane = Plane::start().await;
    let (ws, slug) = workspace(&mut plane).await;
    let shop = project(&plane, &ws, "shop").await;
    let shop_production = project(&plane, &ws, "shop-production").await;
    for p in [&shop, &shop_production] {
        production(&plane, p)
            .await
            .expect("a production environment");
    }
    let a = plane.deployed(&shop, "production", "shop").await;
    let b = plane
        .deployed(&shop_production, "production", "shop-production")
        .await;
    assert_eq!(
        plane
            .routed_to(&format!("shop--production--{slug}.slipway.localhost"))
            .await,
        a
    );
    assert_eq!(
        plane
            .routed_to(&format!("shop--{slug}.slipway.localhost"))
            .await,
        a
    );
    assert_eq!(
        plane
            .routed_to(&format!("shop-production--{slug}.slipway.localhost"))
            .await,
        b
    );
    for (p, d) in [(&shop, &a), (&shop_production, &b)] {
        assert_eq!(
            plane.get_project(p).await["project"]["live_deployment_id"],
            d.as_str()
        );
    }
    plane.invariants().assert(&[shop, shop_production]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_collision_of_joined_domains_is_refused_at_environment_creation() {
    let mut plane = Plane::start().await;
    let (ws, slug) = workspace(&mut plane).await;
    let shop_production = project(&plane, &ws, "shop-production").await;
    let shop = project(&plane, &ws, "shop").await;
    // As if both had been created before the separated scheme.
    for p in [&shop_production, &shop] {
        plane
            .store
            .set_domain_scheme(p, Scheme::Joined)
            .await
            .unwrap();
    }
    production(&plane, &shop_production)
        .await
        .expect("the first claim");
    let err = production(&plane, &shop)
        .await
        .expect_err("a colliding claim");
    let taken = format!("shop-production-{slug}.slipway.localhost");
    assert_eq!(err.status, 409, "{err:?}");
    assert!(
        err.message.contains(&taken) && err.message.contains(&shop_production),
        "{err:?}"
    );
    let environments = plane.get_project(&shop).await["environments"].clone();
    assert!(
        environments.as_array().is_none_or(Vec::is_empty),
        "nothing written: {environments}"
    );
    // Another environment of the same project claims names of its own.
    plane
        .ok(
            "slipway.project.v1.create_environment",
            json!({"project_id": shop, "slug": "staging"}),
        )
        .await;
    // The joined project still deploys on its joined domains.
    let d = plane
        .deployed(&shop_production, "production", "joined")
        .await;
    assert_eq!(plane.routed_to(&taken).await, d);
}
