//! Rows written straight into the store, for tests of a service without an orchestrator in
//! front of it (the actor, routing).

use std::collections::BTreeMap;

use slipway_store::{NewDeployment, Store};

/// A workspace, a project and one environment of it.
#[derive(Debug, Clone)]
pub struct Seeded {
    pub workspace_id: String,
    pub project_id: String,
    pub environment_id: String,
}

/// Workspace `ws_<n>` (slug `w<n>`), project `proj_<n>` with slug `project_slug`, and its
/// environment `env_<n>` named `environment_slug` in `regions` (region → replicas).
pub async fn project(
    store: &Store,
    n: &str,
    project_slug: &str,
    environment_slug: &str,
    regions: &BTreeMap<String, u32>,
) -> Seeded {
    let seeded = Seeded {
        workspace_id: format!("ws_{n}"),
        project_id: format!("proj_{n}"),
        environment_id: format!("env_{n}"),
    };
    if store.workspace(&seeded.workspace_id).await.is_err() {
        store
            .create_workspace(&seeded.workspace_id, &format!("w{n}"), "W", 1)
            .await
            .expect("seeding a workspace");
    }
    store
        .create_project(
            &seeded.project_id,
            &seeded.workspace_id,
            project_slug,
            project_slug,
            "main",
            1,
        )
        .await
        .expect("seeding a project");
    store
        .create_environment(
            &seeded.environment_id,
            &seeded.project_id,
            environment_slug,
            regions,
            8080,
            "{}",
            &[],
            1,
        )
        .await
        .expect("seeding an environment");
    seeded
}

/// A deployment row as given, with its topology (one row per region of `regions`).
pub async fn deployment(store: &Store, new: &NewDeployment, regions: &BTreeMap<String, u32>) {
    store
        .insert_deployment(new, 1)
        .await
        .expect("seeding a deployment");
    for (region, replicas) in regions {
        store
            .upsert_topology(&new.id, region, *replicas, 1)
            .await
            .expect("seeding a topology row");
    }
}

/// For benches: workspace `ws_b`, project `proj_b`, its `preview` environment `env_b` in region
/// `local`, and `n` deployments of it (`dep_bench00000`, …) with one replica there, in one
/// transaction. Returns their ids.
pub async fn bench_deployments(store: &Store, n: usize) -> anyhow::Result<Vec<String>> {
    store.create_workspace("ws_b", "bench", "Bench", 1).await?;
    store
        .create_project("proj_b", "ws_b", "bench", "Bench", "main", 1)
        .await?;
    let regions = [("local".to_string(), 1)].into_iter().collect();
    store
        .create_environment("env_b", "proj_b", "preview", &regions, 8080, "{}", &[], 1)
        .await?;
    let ids: Vec<String> = (0..n).map(|i| format!("dep_bench{i:05}")).collect();
    let mut tx = store.pool().begin().await?;
    for id in &ids {
        sqlx::query(
            "INSERT INTO deployments (id, workspace_id, project_id, environment_id, created_at_ms, updated_at_ms) \
             VALUES ($1, 'ws_b', 'proj_b', 'env_b', 1, 1)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO deployment_topology (deployment_id, region, replicas, created_at_ms, updated_at_ms) \
             VALUES ($1, 'local', 1, 1, 1)",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(ids)
}
