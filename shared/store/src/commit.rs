//! Commit points (BEHAVIOUR.md "Commit points", "Per-project exclusion"): the route moves and
//! the live pointer of a deploy, rollback or promote in one transaction holding the project's
//! row, fenced by the project lease's epoch.
//!
//! Fencing: every write made under the project lease carries the lease's epoch. The project
//! row keeps the newest epoch seen; a write with an older one is refused in the same
//! transaction (the holder lost its lease to a newer one, which may already have acted).

use slipway_core::{domains::Sticky, error::STALE_FENCING_TOKEN, ids, state::DesiredState};
use sqlx::{any::AnyRow, Row};

use crate::{records, routes, NewRoute, Route, Store, StoreError};

/// What a commit does to the project's live pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveChange {
    /// Leave it.
    Leave,
    /// Point it at the deployment and clear the rolled-back flag (deploy, promote).
    Take,
    /// Point it at the deployment and set the rolled-back flag (rollback).
    Pin,
}

impl LiveChange {
    /// The API's spelling (`assign_frontline_routes.live`): "", "take" or "pin".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Leave => "",
            Self::Take => "take",
            Self::Pin => "pin",
        }
    }

    /// The inverse of [`LiveChange::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Leave, Self::Take, Self::Pin]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// One commit: create `create` where missing (pointing at the deployment), move `route_ids`
/// to it, and apply `live`, all or nothing.
#[derive(Debug, Clone)]
pub struct Assignment<'a> {
    pub project_id: &'a str,
    pub deployment_id: &'a str,
    pub route_ids: &'a [String],
    /// Routes created where their FQDN is missing, in `environment_id`.
    pub create: &'a [NewRoute],
    pub environment_id: &'a str,
    /// The project lease's epoch; 0 for an unfenced write (an operator's own call).
    pub fencing_token: u64,
    pub live: LiveChange,
    /// Who commits (the workflow id; "" for an operator's call). A commit is applied once:
    /// repeated (its run died before journaling it and was resumed), it writes nothing and
    /// answers what its first application did.
    pub commit_id: &'a str,
}

/// What a commit changed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assigned {
    /// Every route named or created, as it is now.
    pub routes: Vec<Route>,
    /// The routes that moved or were created.
    pub moved: Vec<Route>,
    /// With a live change: the deployment that was live before (the same on a repeat).
    pub previous_live: Option<String>,
    /// The deployments earlier runs of this same commit (`commit_id`) replaced as live, other
    /// than `previous_live`, the deployment itself and the one live now: commits applied
    /// before commits were applied once (migration 0011) may have taken live twice, and the
    /// follow-up (standby) of the first may never have run, so the caller settles them too.
    pub replaced_earlier: Vec<String>,
    /// Whether the commit moved the live pointer (its first application, on a repeat).
    pub took_live: bool,
    /// The project's live deployment after the commit: on a repeat, another commit may have
    /// moved it since the first application.
    pub live_now: Option<String>,
    /// The commit had been applied before: nothing was written.
    pub repeated: bool,
}

/// Refuses `token` if the project has seen a newer epoch, and remembers it otherwise. The
/// project's row must be locked by the transaction (`FOR UPDATE` / `BEGIN IMMEDIATE`).
async fn fence_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    project: &AnyRow,
    project_id: &str,
    token: u64,
) -> Result<(), StoreError> {
    if token == 0 {
        return Ok(());
    }
    let seen: i64 = project.try_get("lease_epoch")?;
    let token = i64::try_from(token)
        .map_err(|_| StoreError::Invalid(format!("fencing token {token} is out of range")))?;
    if token < seen {
        return Err(StoreError::Conflict(format!(
            "{STALE_FENCING_TOKEN} {token} for project {project_id}: its lease was taken over (epoch {seen})"
        )));
    }
    if token > seen {
        sqlx::query("UPDATE projects SET lease_epoch = $2 WHERE id = $1")
            .bind(project_id)
            .bind(token)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

impl Store {
    /// The project's row, locked for the rest of the transaction.
    async fn lock_project(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        project_id: &str,
    ) -> Result<AnyRow, StoreError> {
        let sql = format!(
            "SELECT live_deployment_id, is_rolled_back, lease_epoch FROM projects WHERE id = $1{}",
            self.for_update()
        );
        sqlx::query(&sql)
            .bind(project_id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("project {project_id} not found")))
    }

    /// Refuses `token` (0: unfenced, always accepted) if the project of `deployment_id` has
    /// registered a newer lease epoch: for services that act on a deployment under its
    /// project's lease (the actor) and must not take a former holder's word once a later
    /// holder has the lease, whether or not that one has called them yet.
    pub async fn check_fence(&self, deployment_id: &str, token: u64) -> Result<(), StoreError> {
        if token == 0 {
            return Ok(());
        }
        let row = sqlx::query(
            "SELECT p.id, p.lease_epoch FROM deployments d JOIN projects p ON p.id = d.project_id WHERE d.id = $1",
        )
        .bind(deployment_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("deployment {deployment_id} not found")))?;
        let project_id: String = row.try_get("id")?;
        let seen: i64 = row.try_get("lease_epoch")?;
        if i64::try_from(token).unwrap_or(i64::MAX) < seen {
            return Err(StoreError::Conflict(format!(
                "{STALE_FENCING_TOKEN} {token} for project {project_id}: its lease was taken over (epoch {seen})"
            )));
        }
        Ok(())
    }

    /// What commit `commit_id` did to the live pointer, if it was applied: a resumed workflow
    /// whose run died right after its commit does not validate again what its own commit
    /// changed.
    pub async fn commit_applied(&self, commit_id: &str) -> Result<Option<LiveChange>, StoreError> {
        // A read: from the pool, not under SQLite's one writer.
        let first = applied(&self.pool, commit_id).await?;
        Ok(first.map(|a| a.live))
    }

    /// Removes what commits made before `before_ms` did (tables `applied_commits` and
    /// `live_commits`): read only while their workflow may run again, which it does not once
    /// its record is gone. Returns how many rows went.
    pub async fn purge_commits(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        let mut removed = 0;
        for table in ["applied_commits", "live_commits"] {
            let sql = format!("DELETE FROM {table} WHERE created_at_ms < $1");
            let done = sqlx::query(&sql).bind(before_ms).execute(&mut *tx).await?;
            removed += done.rows_affected();
        }
        tx.commit().await?;
        Ok(removed)
    }

    /// Every deployment commit `commit_id` replaced as the live one, in any of its runs.
    pub async fn replaced_by_commit(&self, commit_id: &str) -> Result<Vec<String>, StoreError> {
        replaced_by(&self.pool, commit_id).await
    }

    /// Removes the routes that point at `deployment_id` once it is done for: in standby or
    /// archived, not its project's live deployment, behind no live route. Under the project's
    /// row lock, so no commit interleaves. Returns the routes removed (their route-table
    /// entries go next).
    pub async fn remove_routes_of(
        &self,
        project_id: &str,
        deployment_id: &str,
    ) -> Result<Vec<Route>, StoreError> {
        let mut tx = self.begin().await?;
        let project = self.lock_project(&mut tx, project_id).await?;
        let row = sqlx::query("SELECT project_id, desired_state FROM deployments WHERE id = $1")
            .bind(deployment_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("deployment {deployment_id} not found")))?;
        let (owner, desired): (String, String) =
            (row.try_get("project_id")?, row.try_get("desired_state")?);
        if owner != project_id {
            return Err(StoreError::Invalid(format!(
                "deployment {deployment_id} belongs to project {owner}, not {project_id}"
            )));
        }
        let live: Option<String> = project.try_get("live_deployment_id")?;
        if desired == DesiredState::Running.as_str() || live.as_deref() == Some(deployment_id) {
            return Err(StoreError::Invalid(format!(
                "deployment {deployment_id} is {desired}{}: its routes stay",
                if live.as_deref() == Some(deployment_id) {
                    " and live"
                } else {
                    ""
                }
            )));
        }
        let routes = routes::routes_in(
            &mut *tx,
            routes::RouteKey::Deployment,
            &[deployment_id.to_string()],
        )
        .await?;
        if let Some(r) = routes.iter().find(|r| r.sticky == Sticky::Live) {
            return Err(StoreError::Conflict(format!(
                "{} (live) points at {deployment_id}: its routes stay",
                r.fqdn
            )));
        }
        sqlx::query("DELETE FROM frontline_routes WHERE deployment_id = $1")
            .bind(deployment_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(routes)
    }

    /// Registers a newly acquired lease epoch, so a former holder's writes are refused from
    /// now on, before the new holder reads anything it decides on.
    pub async fn fence(&self, project_id: &str, token: u64) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let project = self.lock_project(&mut tx, project_id).await?;
        fence_in(&mut tx, &project, project_id, token).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Clears `is_rolled_back` (promote of the live deployment confirms a rollback): a commit
    /// point like [`Store::assign_routes`], applied once per `commit_id` (recorded as leaving
    /// the live pointer), so a repeat after a later rollback pinned the project again does not
    /// unpin it.
    pub async fn confirm_rollback(
        &self,
        project_id: &str,
        fencing_token: u64,
        commit_id: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin().await?;
        let project = self.lock_project(&mut tx, project_id).await?;
        fence_in(&mut tx, &project, project_id, fencing_token).await?;
        if applied(&mut *tx, commit_id).await?.is_some() {
            tx.commit().await?;
            return Ok(());
        }
        sqlx::query("UPDATE projects SET is_rolled_back = 0, updated_at_ms = $2 WHERE id = $1")
            .bind(project_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        let live: Option<String> = project.try_get("live_deployment_id")?;
        if let (false, Some(live)) = (commit_id.is_empty(), live) {
            sqlx::query(
                "INSERT INTO applied_commits (commit_id, project_id, deployment_id, live, previous_live_deployment_id, created_at_ms) \
                 VALUES ($1, $2, $3, $4, $3, $5)",
            )
            .bind(commit_id)
            .bind(project_id)
            .bind(live)
            .bind(LiveChange::Leave.as_str())
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The commit: see [`Assignment`]. Checks that the deployment and every route belong to
    /// the project; an FQDN to create that another project holds is a conflict. Repeated, it
    /// moves nothing and answers the same `previous_live`.
    pub async fn assign_routes(
        &self,
        a: &Assignment<'_>,
        now_ms: i64,
    ) -> Result<Assigned, StoreError> {
        let mut tx = self.begin().await?;
        let project = self.lock_project(&mut tx, a.project_id).await?;
        fence_in(&mut tx, &project, a.project_id, a.fencing_token).await?;
        if let Some(first) = applied(&mut *tx, a.commit_id).await? {
            let assigned = repeat(&mut tx, &project, a, first).await?;
            tx.commit().await?;
            return Ok(assigned);
        }
        let owner = sqlx::query("SELECT project_id, environment_id FROM deployments WHERE id = $1")
            .bind(a.deployment_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| {
                StoreError::NotFound(format!("deployment {} not found", a.deployment_id))
            })?;
        let (owner_project, owner_env): (String, String) = (
            owner.try_get("project_id")?,
            owner.try_get("environment_id")?,
        );
        if owner_project != a.project_id {
            return Err(StoreError::Invalid(format!(
                "deployment {} belongs to project {owner_project}, not {}",
                a.deployment_id, a.project_id
            )));
        }
        if !a.create.is_empty() && owner_env != a.environment_id {
            return Err(StoreError::Invalid(format!(
                "deployment {} belongs to environment {owner_env}, not {}",
                a.deployment_id, a.environment_id
            )));
        }

        let (created, existing) = self.create_missing(&mut tx, a, now_ms).await?;
        let named = routes::routes_in(&mut *tx, routes::RouteKey::Id, a.route_ids).await?;
        for id in a.route_ids {
            match named.iter().find(|r| &r.id == id) {
                None => return Err(StoreError::NotFound(format!("route {id} not found"))),
                Some(r) if r.project_id != a.project_id => {
                    return Err(StoreError::Invalid(format!(
                        "route {id} ({}) belongs to project {}, not {}",
                        r.fqdn, r.project_id, a.project_id
                    )))
                }
                Some(_) => {}
            }
        }
        let moving: Vec<&Route> = named
            .iter()
            .filter(|r| r.deployment_id != a.deployment_id)
            .collect();
        if !moving.is_empty() {
            let sql = format!(
                "UPDATE frontline_routes SET deployment_id = $1, version = version + 1, updated_at_ms = $2 \
                 WHERE id IN ({})",
                routes::placeholders(3, moving.len())
            );
            let mut query = sqlx::query(&sql).bind(a.deployment_id).bind(now_ms);
            for r in &moving {
                query = query.bind(&r.id);
            }
            query.execute(&mut *tx).await?;
        }
        let live: Option<String> = project.try_get("live_deployment_id")?;
        let (previous_live, replaced_earlier, live_now) = match a.live {
            LiveChange::Leave => {
                let skip = [live.as_deref(), Some(a.deployment_id)];
                let earlier = replaced_earlier(&mut tx, a.commit_id, &skip).await?;
                (None, earlier, live)
            }
            LiveChange::Take | LiveChange::Pin => {
                let (previous, earlier) = self.swap_live(&mut tx, &project, a, now_ms).await?;
                (previous, earlier, Some(a.deployment_id.to_string()))
            }
        };
        if !a.commit_id.is_empty() {
            sqlx::query(
                "INSERT INTO applied_commits (commit_id, project_id, deployment_id, live, previous_live_deployment_id, created_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(a.commit_id)
            .bind(a.project_id)
            .bind(a.deployment_id)
            .bind(a.live.as_str())
            .bind(&previous_live)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;

        let mut moved: Vec<Route> = moving
            .into_iter()
            .map(|r| Route {
                deployment_id: a.deployment_id.to_string(),
                version: r.version + 1,
                updated_at_ms: now_ms,
                ..r.clone()
            })
            .collect();
        let mut routes: Vec<Route> = named
            .iter()
            .map(|r| moved.iter().find(|m| m.id == r.id).unwrap_or(r).clone())
            .collect();
        // A repeat finds its routes created: they are still routes of this assignment (the
        // caller publishes them again, which a first run that died before publishing needs).
        for r in existing {
            if !routes.iter().any(|x| x.id == r.id) {
                routes.push(r);
            }
        }
        for r in created {
            if !routes.iter().any(|x| x.id == r.id) {
                routes.push(r.clone());
            }
            moved.push(r);
        }
        Ok(Assigned {
            routes,
            moved,
            previous_live,
            replaced_earlier,
            took_live: a.live != LiveChange::Leave,
            live_now,
            repeated: false,
        })
    }

    /// Inserts the routes of `a.create` whose FQDN is missing; returns those it created and
    /// those the project already had.
    async fn create_missing(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        a: &Assignment<'_>,
        now_ms: i64,
    ) -> Result<(Vec<Route>, Vec<Route>), StoreError> {
        let mut created = Vec::new();
        let mut existing = Vec::new();
        for route in a.create {
            let stored = sqlx::query("SELECT * FROM frontline_routes WHERE fqdn = $1")
                .bind(&route.fqdn)
                .fetch_optional(&mut **tx)
                .await?;
            if let Some(row) = stored {
                let stored = records::route(&row)?;
                if stored.project_id != a.project_id {
                    return Err(StoreError::Conflict(format!(
                        "{} is already a route of project {}",
                        route.fqdn, stored.project_id
                    )));
                }
                existing.push(stored);
                continue;
            }
            let id = ids::new(ids::ROUTE);
            sqlx::query(
                "INSERT INTO frontline_routes (id, fqdn, sticky, project_id, environment_id, deployment_id, created_at_ms, updated_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7)",
            )
            .bind(&id)
            .bind(&route.fqdn)
            .bind(route.sticky.as_str())
            .bind(a.project_id)
            .bind(a.environment_id)
            .bind(a.deployment_id)
            .bind(now_ms)
            .execute(&mut **tx)
            .await
            .map_err(|e| StoreError::or_conflict(e, || format!("{} was created meanwhile", route.fqdn)))?;
            let row = sqlx::query("SELECT * FROM frontline_routes WHERE id = $1")
                .bind(&id)
                .fetch_one(&mut **tx)
                .await?;
            created.push(records::route(&row)?);
        }
        Ok((created, existing))
    }

    /// Points the live pointer at the deployment (pinned or not) and returns the deployment
    /// it replaced (remembered on the new live one, so a repeat answers the same; recorded
    /// for the commit) and what earlier runs of the commit replaced.
    async fn swap_live(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        project: &AnyRow,
        a: &Assignment<'_>,
        now_ms: i64,
    ) -> Result<(Option<String>, Vec<String>), StoreError> {
        let live: Option<String> = project.try_get("live_deployment_id")?;
        let previous = if live.as_deref() == Some(a.deployment_id) {
            let row =
                sqlx::query("SELECT replaced_live_deployment_id FROM deployments WHERE id = $1")
                    .bind(a.deployment_id)
                    .fetch_one(&mut **tx)
                    .await?;
            row.try_get("replaced_live_deployment_id")?
        } else {
            sqlx::query(
                "UPDATE deployments SET replaced_live_deployment_id = $2, updated_at_ms = $3 WHERE id = $1",
            )
            .bind(a.deployment_id)
            .bind(&live)
            .bind(now_ms)
            .execute(&mut **tx)
            .await?;
            live.clone()
        };
        let skip = [live.as_deref(), previous.as_deref(), Some(a.deployment_id)];
        let earlier = replaced_earlier(tx, a.commit_id, &skip).await?;
        if let (Some(replaced), false) = (previous.as_deref(), a.commit_id.is_empty()) {
            sqlx::query(
                "INSERT INTO live_commits (commit_id, replaced_deployment_id, project_id, deployment_id, created_at_ms) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (commit_id, replaced_deployment_id) DO NOTHING",
            )
            .bind(a.commit_id)
            .bind(replaced)
            .bind(a.project_id)
            .bind(a.deployment_id)
            .bind(now_ms)
            .execute(&mut **tx)
            .await?;
        }
        sqlx::query(
            "UPDATE projects SET live_deployment_id = $2, is_rolled_back = $3, updated_at_ms = $4 WHERE id = $1",
        )
        .bind(a.project_id)
        .bind(a.deployment_id)
        .bind(i64::from(a.live == LiveChange::Pin))
        .bind(now_ms)
        .execute(&mut **tx)
        .await?;
        Ok((previous, earlier))
    }
}

/// Every deployment commit `commit_id` replaced as the live one.
async fn replaced_by<'e, E>(executor: E, commit_id: &str) -> Result<Vec<String>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let rows = sqlx::query(
        "SELECT replaced_deployment_id FROM live_commits WHERE commit_id = $1 ORDER BY created_at_ms, replaced_deployment_id",
    )
    .bind(commit_id)
    .fetch_all(executor)
    .await?;
    rows.iter()
        .map(|r| Ok(r.try_get("replaced_deployment_id")?))
        .collect()
}

/// See [`Assigned::replaced_earlier`]: what earlier runs of commit `commit_id` replaced, but
/// `skip`.
async fn replaced_earlier(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    commit_id: &str,
    skip: &[Option<&str>],
) -> Result<Vec<String>, StoreError> {
    if commit_id.is_empty() {
        return Ok(Vec::new());
    }
    let mut replaced = replaced_by(&mut **tx, commit_id).await?;
    replaced.retain(|r| !skip.contains(&Some(r.as_str())));
    Ok(replaced)
}

/// What the first application of a commit did (table `applied_commits`).
struct Applied {
    deployment_id: String,
    live: LiveChange,
    previous_live: Option<String>,
}

/// The first application of commit `commit_id`, if it was applied ("": an operator's call,
/// never recorded).
async fn applied<'e, E>(executor: E, commit_id: &str) -> Result<Option<Applied>, StoreError>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    if commit_id.is_empty() {
        return Ok(None);
    }
    let row = sqlx::query(
        "SELECT deployment_id, live, previous_live_deployment_id FROM applied_commits WHERE commit_id = $1",
    )
    .bind(commit_id)
    .fetch_optional(executor)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let live: String = row.try_get("live")?;
    Ok(Some(Applied {
        deployment_id: row.try_get("deployment_id")?,
        live: LiveChange::parse(&live).ok_or_else(|| {
            StoreError::Invalid(format!("commit {commit_id} recorded live change {live:?}"))
        })?,
        previous_live: row.try_get("previous_live_deployment_id")?,
    }))
}

/// A commit applied before, repeated: writes nothing (another commit may have moved routes
/// or the live pointer since, and repeating this one would undo that) and answers what the
/// first application did, with the routes as they are now.
async fn repeat(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    project: &AnyRow,
    a: &Assignment<'_>,
    first: Applied,
) -> Result<Assigned, StoreError> {
    if first.deployment_id != a.deployment_id {
        return Err(StoreError::Invalid(format!(
            "commit {} was applied for deployment {}, not {}",
            a.commit_id, first.deployment_id, a.deployment_id
        )));
    }
    let live_now: Option<String> = project.try_get("live_deployment_id")?;
    let mut routes = routes::routes_in(&mut **tx, routes::RouteKey::Id, a.route_ids).await?;
    let fqdns: Vec<String> = a.create.iter().map(|r| r.fqdn.clone()).collect();
    for r in routes::routes_in(&mut **tx, routes::RouteKey::Fqdn, &fqdns).await? {
        if r.project_id == a.project_id && !routes.iter().any(|x| x.id == r.id) {
            routes.push(r);
        }
    }
    let skip = [
        live_now.as_deref(),
        first.previous_live.as_deref(),
        Some(a.deployment_id),
    ];
    let replaced_earlier = replaced_earlier(tx, a.commit_id, &skip).await?;
    Ok(Assigned {
        routes,
        moved: Vec::new(),
        previous_live: first.previous_live,
        replaced_earlier,
        took_live: first.live != LiveChange::Leave,
        live_now,
        repeated: true,
    })
}
