//! Frontline routes and the instances they send traffic to.

use crate::{records, Instance, Route, Store, StoreError};
use slipway_core::{domains::Sticky, ids, krane::ReportedInstance, state::PREVIEW_ENVIRONMENT};

/// A route to create if its FQDN does not exist yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRoute {
    pub fqdn: String,
    pub sticky: Sticky,
}

/// The routes whose `key` is one of `values`, on the pool or inside a transaction.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RouteKey {
    Id,
    Fqdn,
    Deployment,
}

pub(crate) async fn routes_in<'e, E>(
    executor: E,
    key: RouteKey,
    values: &[String],
) -> Result<Vec<Route>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    if values.is_empty() {
        return Ok(vec![]);
    }
    let column = match key {
        RouteKey::Id => "id",
        RouteKey::Fqdn => "fqdn",
        RouteKey::Deployment => "deployment_id",
    };
    let sql = format!(
        "SELECT * FROM frontline_routes WHERE {column} IN ({})",
        placeholders(1, values.len())
    );
    let mut query = sqlx::query(&sql);
    for value in values {
        query = query.bind(value);
    }
    query
        .fetch_all(executor)
        .await?
        .iter()
        .map(records::route)
        .collect()
}

/// `$first, $first+1, …` for an IN list of `n` values.
pub(crate) fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Creates the routes whose FQDN is missing, pointing at `deployment_id`, and returns
    /// every requested route (existing ones as they are). An FQDN held by another project is
    /// a conflict and nothing is created.
    pub async fn ensure_routes(
        &self,
        project_id: &str,
        environment_id: &str,
        deployment_id: &str,
        routes: &[NewRoute],
        now_ms: i64,
    ) -> Result<Vec<Route>, StoreError> {
        let deployment = self.deployment(deployment_id).await?;
        if deployment.project_id != project_id || deployment.environment_id != environment_id {
            return Err(StoreError::Invalid(format!(
                "deployment {deployment_id} belongs to project {} / environment {}, not {project_id} / {environment_id}",
                deployment.project_id, deployment.environment_id
            )));
        }
        let mut tx = self.begin().await?;
        for route in routes {
            sqlx::query(
                "INSERT INTO frontline_routes (id, fqdn, sticky, project_id, environment_id, deployment_id, created_at_ms, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT (fqdn) DO NOTHING",
            )
            .bind(ids::new(ids::ROUTE))
            .bind(&route.fqdn)
            .bind(route.sticky.as_str())
            .bind(project_id)
            .bind(environment_id)
            .bind(deployment_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        let mut out = Vec::with_capacity(routes.len());
        for route in routes {
            let row = sqlx::query("SELECT * FROM frontline_routes WHERE fqdn = $1")
                .bind(&route.fqdn)
                .fetch_one(&mut *tx)
                .await?;
            let stored = records::route(&row)?;
            if stored.project_id != project_id {
                return Err(StoreError::Conflict(format!(
                    "{} is already a route of project {}",
                    route.fqdn, stored.project_id
                )));
            }
            out.push(stored);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// A project's routes (optionally one environment's), by FQDN.
    pub async fn routes(
        &self,
        project_id: &str,
        environment_id: Option<&str>,
    ) -> Result<Vec<Route>, StoreError> {
        let rows = match environment_id {
            Some(env) => {
                sqlx::query("SELECT * FROM frontline_routes WHERE project_id = $1 AND environment_id = $2 ORDER BY fqdn")
                    .bind(project_id)
                    .bind(env)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                sqlx::query("SELECT * FROM frontline_routes WHERE project_id = $1 ORDER BY fqdn")
                    .bind(project_id)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        rows.iter().map(records::route).collect()
    }

    /// Routes by FQDN, in no particular order; unknown ones are skipped.
    pub async fn routes_by_fqdn(&self, fqdns: &[String]) -> Result<Vec<Route>, StoreError> {
        routes_in(&self.pool, RouteKey::Fqdn, fqdns).await
    }

    /// Whether the deployment is its project's live deployment or the target of a route that
    /// keeps it running ([`keeping_routes`]): then it serves traffic and must keep running.
    pub async fn serves_traffic(&self, deployment_id: &str) -> Result<bool, StoreError> {
        let sql = format!(
            "SELECT (SELECT COUNT(*) FROM projects WHERE live_deployment_id = $1) + {} AS n",
            keeping_routes("$1")
        );
        let row = sqlx::query(&sql)
            .bind(deployment_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(sqlx::Row::try_get::<i64, _>(&row, "n")? > 0)
    }

    /// Routes by id, in no particular order; unknown ids are skipped.
    pub async fn routes_by_id(&self, route_ids: &[String]) -> Result<Vec<Route>, StoreError> {
        routes_in(&self.pool, RouteKey::Id, route_ids).await
    }

    /// Every route, `limit` at a time, in FQDN order after `after_fqdn`.
    pub async fn routes_page(
        &self,
        after_fqdn: &str,
        limit: i64,
    ) -> Result<Vec<Route>, StoreError> {
        sqlx::query("SELECT * FROM frontline_routes WHERE fqdn > $1 ORDER BY fqdn LIMIT $2")
            .bind(after_fqdn)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(records::route)
            .collect()
    }

    /// Replaces a deployment's instance rows in `region` with what its agent reported, if the
    /// report (KV revision `revision`) is newer than the one they come from. Returns the rows
    /// it replaced, or None when the report is stale or the deployment does not run there.
    pub async fn observe_instances(
        &self,
        deployment_id: &str,
        region: &str,
        instances: &[ReportedInstance],
        revision: u64,
        now_ms: i64,
    ) -> Result<Option<Vec<Instance>>, StoreError> {
        let revision = i64::try_from(revision).unwrap_or(i64::MAX);
        let mut tx = self.begin().await?;
        let newer = sqlx::query(
            "UPDATE deployment_topology SET observed_revision = $3 \
             WHERE deployment_id = $1 AND region = $2 AND observed_revision < $3",
        )
        .bind(deployment_id)
        .bind(region)
        .bind(revision)
        .execute(&mut *tx)
        .await?;
        if newer.rows_affected() == 0 {
            return Ok(None);
        }
        let before = sqlx::query(
            "SELECT * FROM instances WHERE deployment_id = $1 AND region = $2 ORDER BY id",
        )
        .bind(deployment_id)
        .bind(region)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(records::instance)
        .collect::<Result<Vec<_>, _>>()?;
        sqlx::query("DELETE FROM instances WHERE deployment_id = $1 AND region = $2")
            .bind(deployment_id)
            .bind(region)
            .execute(&mut *tx)
            .await?;
        for i in instances {
            sqlx::query(
                "INSERT INTO instances (id, deployment_id, region, address, status, message, restarts, crash_looping, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&i.id)
            .bind(deployment_id)
            .bind(region)
            .bind(&i.address)
            .bind(i.status.as_str())
            .bind(i.message.as_deref())
            .bind(i64::from(i.restarts))
            .bind(i64::from(i.crash_looping))
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some(before))
    }

    /// Replaces what a region reported for a deployment, whatever was there (tests' seeding).
    #[cfg(feature = "testing")]
    pub async fn record_instances(
        &self,
        deployment_id: &str,
        region: &str,
        instances: &[(String, String, slipway_core::krane::InstanceStatus)],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        sqlx::query("DELETE FROM instances WHERE deployment_id = $1 AND region = $2")
            .bind(deployment_id)
            .bind(region)
            .execute(&mut *tx)
            .await?;
        for (id, address, status) in instances {
            sqlx::query(
                "INSERT INTO instances (id, deployment_id, region, address, status, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id)
            .bind(deployment_id)
            .bind(region)
            .bind(address)
            .bind(status.as_str())
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The routes that send traffic to `deployment_id`.
    pub async fn routes_to(&self, deployment_id: &str) -> Result<Vec<Route>, StoreError> {
        sqlx::query("SELECT * FROM frontline_routes WHERE deployment_id = $1 ORDER BY fqdn")
            .bind(deployment_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(records::route)
            .collect()
    }

    pub async fn instances(&self, deployment_id: &str) -> Result<Vec<Instance>, StoreError> {
        sqlx::query("SELECT * FROM instances WHERE deployment_id = $1 ORDER BY region, id")
            .bind(deployment_id)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(records::instance)
            .collect()
    }
}

/// A SQL count of the routes to deployment `deployment` (an SQL expression) that keep it
/// running: live routes, and the environment routes of every environment but `preview` — an
/// idle preview is spun down behind its routes, and an edge wakes it on its next request.
pub(crate) fn keeping_routes(deployment: &str) -> String {
    format!(
        "(SELECT COUNT(*) FROM frontline_routes kr \
          LEFT JOIN environments ke ON ke.id = kr.environment_id \
          WHERE kr.deployment_id = {deployment} AND (kr.sticky = 'live' \
             OR (kr.sticky = 'environment' AND COALESCE(ke.slug, '') <> '{PREVIEW_ENVIRONMENT}')))"
    )
}
