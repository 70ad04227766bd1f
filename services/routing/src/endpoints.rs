//! `assign_frontline_routes`, `list_routes` and the internal `ensure_routes`.

use sha2::{Digest, Sha256};
use slipway_core::{
    domains::{validate_fqdn, Sticky},
    events::Event,
    fault, ids,
    time::now_ms,
    ApiError,
};
use slipway_nats::{Call, Micro};
use slipway_proto::v1::{
    AssignFrontlineRoutesReply, AssignFrontlineRoutesRequest, EnsureRoutesReply,
    EnsureRoutesRequest, ListRoutesReply, ListRoutesRequest, RemoveRoutesReply,
    RemoveRoutesRequest, Route as RouteMessage, RouteSpec,
};
use slipway_store::{Assignment, LiveChange, NewRoute, Route};

use crate::{Routing, SERVICE_NAME};

/// The most routes one request may name.
pub const MAX_ROUTES: usize = 1000;

pub async fn serve(
    client: &async_nats::Client,
    routing: Routing,
) -> Result<Micro, async_nats::Error> {
    let micro = Micro::start(
        client,
        SERVICE_NAME,
        env!("CARGO_PKG_VERSION"),
        "Routing: frontline routes per project, moved atomically and published to edges",
    )
    .await?;
    let r = &routing;
    micro
        .serve(
            r,
            "assign_frontline_routes",
            &slipway_core::subjects::routing::ASSIGN.all(),
            |r, call| async move { r.assign(call).await },
        )
        .await?;
    micro
        .serve(
            r,
            "list_routes",
            &slipway_core::subjects::routing::LIST.all(),
            |r, call| async move { r.list(call).await },
        )
        .await?;
    micro
        .serve(
            r,
            "remove_routes",
            &slipway_core::subjects::routing::REMOVE.all(),
            |r, call| async move { r.remove(call).await },
        )
        .await?;
    micro
        .serve(
            r,
            "ensure_routes",
            &slipway_core::subjects::routing::ENSURE.all(),
            |r, call| async move { r.ensure(call).await },
        )
        .await?;
    Ok(micro)
}

fn message(r: Route) -> RouteMessage {
    RouteMessage {
        id: r.id,
        fqdn: r.fqdn,
        sticky: r.sticky.to_string(),
        project_id: r.project_id,
        environment_id: r.environment_id,
        deployment_id: r.deployment_id,
        created_at_ms: r.created_at_ms,
        updated_at_ms: r.updated_at_ms,
    }
}

/// The route ids in request order, duplicates folded, each checked.
fn folded_route_ids(route_ids: &[String]) -> Result<Vec<String>, ApiError> {
    if route_ids.len() > MAX_ROUTES {
        return Err(ApiError::invalid_argument(format!(
            "route_ids may name at most {MAX_ROUTES} routes"
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(route_ids.len());
    for id in route_ids {
        ids::validate(ids::ROUTE, "route_ids", id)?;
        if !out.contains(id) {
            out.push(id.clone());
        }
    }
    Ok(out)
}

/// Route specs checked, duplicates folded.
fn route_specs(specs: &[RouteSpec]) -> Result<Vec<NewRoute>, ApiError> {
    if specs.len() > MAX_ROUTES {
        return Err(ApiError::invalid_argument(format!(
            "at most {MAX_ROUTES} routes may be created at once"
        )));
    }
    let mut wanted: Vec<NewRoute> = Vec::with_capacity(specs.len());
    for spec in specs {
        validate_fqdn(&spec.fqdn).map_err(ApiError::invalid_argument)?;
        let sticky: Sticky = spec
            .sticky
            .parse()
            .map_err(|e| ApiError::invalid_argument(format!("{e} (route {})", spec.fqdn)))?;
        match wanted.iter().find(|w| w.fqdn == spec.fqdn) {
            Some(w) if w.sticky != sticky => {
                return Err(ApiError::invalid_argument(format!(
                    "{} is named twice with different sticky",
                    spec.fqdn
                )))
            }
            Some(_) => {}
            None => wanted.push(NewRoute {
                fqdn: spec.fqdn.clone(),
                sticky,
            }),
        }
    }
    Ok(wanted)
}

fn live_change(live: &str) -> Result<LiveChange, ApiError> {
    LiveChange::parse(live).ok_or_else(|| {
        ApiError::invalid_argument(format!("live {live:?} is not one of \"\", take, pin"))
    })
}

impl Routing {
    #[tracing::instrument(skip_all, fields(project_id = %call.key(), deployment_id = %call.request.deployment_id))]
    async fn assign(
        &self,
        call: Call<AssignFrontlineRoutesRequest>,
    ) -> Result<AssignFrontlineRoutesReply, ApiError> {
        let project_id = call.key();
        ids::validate(ids::PROJECT, "project_id", project_id)?;
        let req = &call.request;
        ids::validate(ids::DEPLOYMENT, "deployment_id", &req.deployment_id)?;
        let route_ids = folded_route_ids(&req.route_ids)?;
        let create = route_specs(&req.create)?;
        let live = live_change(&req.live)?;
        if !create.is_empty() {
            ids::validate(ids::ENVIRONMENT, "environment_id", &req.environment_id)?;
        }
        if route_ids.is_empty() && create.is_empty() && live == LiveChange::Leave {
            return Err(ApiError::invalid_argument(
                "route_ids must name at least one route",
            ));
        }
        let store = &self.inner.store;

        let assigned = store
            .assign_routes(
                &Assignment {
                    project_id,
                    deployment_id: &req.deployment_id,
                    route_ids: &route_ids,
                    create: &create,
                    environment_id: &req.environment_id,
                    fencing_token: req.fencing_token,
                    live,
                    commit_id: &req.commit_id,
                },
                now_ms(),
            )
            .await?;
        fault::point("routing.after_commit");
        // Publish every named route, not only those that moved: a retry after a failed
        // publish then completes it.
        let current = store.routes_by_id(&route_ids).await?;
        let created: Vec<Route> = assigned
            .routes
            .iter()
            .filter(|r| !route_ids.contains(&r.id))
            .cloned()
            .collect();
        self.inner
            .table
            .publish(&[current, created].concat())
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "routes moved but the route table was not updated; a retry or the reconcile completes it");
                ApiError::unavailable(format!("routes moved, route table not yet updated ({e}); retry"))
            })?;
        if !assigned.moved.is_empty() {
            self.routes_event(&req.deployment_id, &assigned.moved).await;
        }
        tracing::info!(
            assigned = assigned.routes.len(),
            moved = assigned.moved.len(),
            live = req.live,
            fencing_token = req.fencing_token,
            repeated = assigned.repeated,
            "routes assigned"
        );
        Ok(AssignFrontlineRoutesReply {
            assigned: assigned.routes.len() as u32,
            previous_live_deployment_id: assigned.previous_live,
            replaced_earlier_deployment_ids: assigned.replaced_earlier,
            routes: assigned.routes.into_iter().map(message).collect(),
            took_live: assigned.took_live,
            live_deployment_id: assigned.live_now,
            repeated: assigned.repeated,
        })
    }

    #[tracing::instrument(skip_all, fields(project_id = %call.key()))]
    async fn list(&self, call: Call<ListRoutesRequest>) -> Result<ListRoutesReply, ApiError> {
        let project_id = call.key();
        ids::validate(ids::PROJECT, "project_id", project_id)?;
        if let Some(env) = &call.request.environment_id {
            ids::validate(ids::ENVIRONMENT, "environment_id", env)?;
        }
        self.inner.store.project(project_id).await?;
        let routes = self
            .inner
            .store
            .routes(project_id, call.request.environment_id.as_deref())
            .await?;
        Ok(ListRoutesReply {
            routes: routes.into_iter().map(message).collect(),
        })
    }

    #[tracing::instrument(skip_all, fields(project_id = %call.key(), deployment_id = %call.request.deployment_id))]
    /// Removes the routes of a deployment in standby or archived from the database, then
    /// their entries from the route table. A report applied meanwhile could write an entry
    /// back; the periodic reconcile removes it.
    async fn remove(&self, call: Call<RemoveRoutesRequest>) -> Result<RemoveRoutesReply, ApiError> {
        let project_id = call.key();
        ids::validate(ids::PROJECT, "project_id", project_id)?;
        let deployment_id = &call.request.deployment_id;
        ids::validate(ids::DEPLOYMENT, "deployment_id", deployment_id)?;
        let routes = self
            .inner
            .store
            .remove_routes_of(project_id, deployment_id)
            .await?;
        let fqdns: Vec<String> = routes.iter().map(|r| r.fqdn.clone()).collect();
        self.inner.table.remove(&fqdns).await.map_err(|e| {
            tracing::warn!(error = %e, "routes removed but the route table was not updated");
            ApiError::unavailable(format!(
                "routes removed, route table not yet updated ({e}); the reconcile will"
            ))
        })?;
        tracing::info!(
            deployment_id,
            routes = fqdns.len(),
            "routes of a finished deployment removed"
        );
        Ok(RemoveRoutesReply {
            routes: routes.into_iter().map(message).collect(),
        })
    }

    async fn ensure(&self, call: Call<EnsureRoutesRequest>) -> Result<EnsureRoutesReply, ApiError> {
        let project_id = call.key();
        ids::validate(ids::PROJECT, "project_id", project_id)?;
        let req = &call.request;
        ids::validate(ids::ENVIRONMENT, "environment_id", &req.environment_id)?;
        ids::validate(ids::DEPLOYMENT, "deployment_id", &req.deployment_id)?;
        if req.routes.is_empty() || req.routes.len() > MAX_ROUTES {
            return Err(ApiError::invalid_argument(format!(
                "routes must name 1 to {MAX_ROUTES} routes"
            )));
        }
        let wanted = route_specs(&req.routes)?;
        let routes = self
            .inner
            .store
            .ensure_routes(
                project_id,
                &req.environment_id,
                &req.deployment_id,
                &wanted,
                now_ms(),
            )
            .await?;
        self.inner.table.publish(&routes).await.map_err(|e| {
            tracing::warn!(error = %e, "routes created but the route table was not updated");
            ApiError::unavailable(format!(
                "routes created, route table not yet updated ({e}); retry"
            ))
        })?;
        Ok(EnsureRoutesReply {
            routes: routes.into_iter().map(message).collect(),
        })
    }

    /// A `routes` event; deduplicated by the moves it reports, and never fatal.
    async fn routes_event(&self, deployment_id: &str, moved: &[Route]) {
        let Ok(deployment) = self.inner.store.deployment(deployment_id).await else {
            return;
        };
        #[derive(serde::Serialize)]
        struct Moved<'a> {
            routes: Vec<MovedRoute<'a>>,
        }
        #[derive(serde::Serialize)]
        struct MovedRoute<'a> {
            route_id: &'a str,
            fqdn: &'a str,
            sticky: Sticky,
        }
        let event = Event {
            kind: "routes",
            at_ms: now_ms(),
            workspace_id: deployment.workspace_id.clone(),
            project_id: deployment.project_id.clone(),
            deployment_id: deployment.id.clone(),
            environment_slug: deployment.environment_slug.clone(),
            detail: Moved {
                routes: moved
                    .iter()
                    .map(|r| MovedRoute {
                        route_id: &r.id,
                        fqdn: &r.fqdn,
                        sticky: r.sticky,
                    })
                    .collect(),
            },
        };
        let mut digest = Sha256::new();
        for r in moved {
            digest.update(format!("{}:{};", r.id, r.version));
        }
        let id: String = digest
            .finalize()
            .iter()
            .take(12)
            .map(|b| format!("{b:02x}"))
            .collect();
        let msg_id = slipway_nats::events::message_id("routes", deployment_id, &id);
        if let Err(e) = slipway_nats::events::publish(&self.inner.js, &event, &msg_id).await {
            tracing::warn!(error = %e, "routes event not stored");
        }
    }
}
