//! The Deploy workflow (BEHAVIOUR.md "Deploy", steps 1–12). Each step is journaled; every
//! side effect is idempotent (desired state keyed by deployment and region, routes by
//! FQDN, the live swap by the deployment, the standby schedule by this deployment's id), so
//! a step cut off by a crash before its journal write can safely run again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use slipway_core::{
    domains::{self, DomainInput},
    ids,
    time::now_ms,
    ApiError,
};
use slipway_nats::krane::put_desired_deployment;
use slipway_proto::v1::RouteSpec;
use slipway_store::{LiveSwap, StoreError};
use slipway_workflow::{Context, EventScope, StepError, Workflow, WorkflowError};

use crate::{calls::millis, instances::ReadyInstance, Orchestrator};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployInput {
    pub deployment_id: String,
}

/// What step 1 loads, journaled so later steps and replays see the same.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Loaded {
    scope: EventScope,
    workspace_slug: String,
    project_slug: String,
    environment_id: String,
    /// region → replicas, sorted
    regions: BTreeMap<String, u32>,
    image: String,
    git_branch: String,
    git_commit_sha: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoutePlan {
    domains: Vec<String>,
    to_move: Vec<String>,
}

pub struct Deploy(pub Orchestrator);

fn store_error(e: StoreError) -> StepError {
    ApiError::from(e).into()
}

impl Workflow for Deploy {
    const KIND: &'static str = "deploy";
    type Input = DeployInput;
    type Output = ();

    async fn run(&self, ctx: &mut Context, input: DeployInput) -> Result<(), WorkflowError> {
        let o = &self.0;
        let id = input.deployment_id.as_str();

        let loaded: Loaded = ctx.step("load", || o.load(id)).await?;
        let scope = &loaded.scope;
        let image: String = ctx
            .step("source", || async {
                // Git sources are refused at the API until a builder exists.
                if loaded.image.is_empty() {
                    return Err(StepError::terminal(
                        "no image to deploy and no builder configured",
                    ));
                }
                Ok(loaded.image.clone())
            })
            .await?;
        let deadline_ms: i64 = ctx
            .step("deploying", || async {
                o.set_status(scope, "deploying").await?;
                Ok(now_ms() + millis(o.inner.config.ready_timeout))
            })
            .await?;
        let _: Vec<(String, i64)> = ctx
            .step("topology", || o.write_topology(&loaded, &image))
            .await?;
        let _: Vec<String> = ctx
            .step("sentinels", || o.ensure_sentinels(&loaded))
            .await?;
        let instances: Vec<ReadyInstance> = ctx
            .step("wait_instances", || {
                o.wait_for_instances(id, &loaded.regions, deadline_ms)
            })
            .await?;
        ctx.step("record_instances", || {
            o.record_instances(id, loaded.regions.keys(), &instances)
        })
        .await?;
        let _: bool = ctx
            .step("openapi", || async {
                let spec = o.scrape_openapi(&instances).await;
                o.inner
                    .store
                    .set_openapi_spec(id, spec.as_deref(), now_ms())
                    .await
                    .map_err(store_error)?;
                Ok(spec.is_some())
            })
            .await?;

        // Steps 9–12 under the project's lease: they read the rolled-back flag and the live
        // pointer there, so a rollback meanwhile is respected.
        ctx.lease(&format!("project.{}", scope.project_id)).await?;
        let plan: RoutePlan = ctx.step("routes", || o.plan_routes(&loaded)).await?;
        let _: u32 = ctx
            .step("assign_routes", || o.assign_routes(&loaded, &plan))
            .await?;
        ctx.step("ready", || async {
            o.set_status(scope, "ready").await?;
            #[derive(Serialize)]
            struct Ready<'a> {
                domains: &'a [String],
            }
            o.event(
                scope,
                "ready",
                "0",
                Ready {
                    domains: &plan.domains,
                },
            )
            .await
        })
        .await?;
        if scope.environment_slug == "production" {
            let swap: Option<Option<String>> = ctx.step("live", || o.take_live(scope)).await?;
            if let Some(Some(previous)) = swap {
                let _: String = ctx
                    .step("schedule_standby", || o.schedule_standby(id, &previous))
                    .await?;
            }
        }
        ctx.release(&format!("project.{}", scope.project_id)).await;
        Ok(())
    }

    async fn on_failure(&self, input: &DeployInput, reason: &str) -> Result<(), StepError> {
        let o = &self.0;
        let deployment = match o.inner.store.deployment(&input.deployment_id).await {
            Ok(d) => d,
            Err(StoreError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(store_error(e)),
        };
        let topology = o
            .inner
            .store
            .fail_deployment(&deployment.id, reason, now_ms())
            .await
            .map_err(store_error)?;
        // Its instances stop: a failed deployment must not crash-loop for ever.
        for row in &topology {
            put_desired_deployment(&o.inner.desired, &row.region, &deployment.desired_for(row))
                .await
                .map_err(|e| StepError::retryable(e.to_string()))?;
        }
        #[derive(Serialize)]
        struct Failed<'a> {
            failure_reason: &'a str,
        }
        o.event(
            &crate::deployments::scope_of(&deployment),
            "failed",
            "0",
            Failed {
                failure_reason: reason,
            },
        )
        .await?;
        tracing::warn!(deployment_id = %deployment.id, %reason, "deployment failed");
        Ok(())
    }
}

impl Orchestrator {
    async fn load(&self, id: &str) -> Result<Loaded, StepError> {
        let store = &self.inner.store;
        let d = store.deployment(id).await.map_err(store_error)?;
        let workspace = store
            .workspace(&d.workspace_id)
            .await
            .map_err(store_error)?;
        let project = store.project(&d.project_id).await.map_err(store_error)?;
        let environment = store
            .environment(&d.environment_id)
            .await
            .map_err(store_error)?;
        let regions = if environment.regions.is_empty() {
            self.inner
                .config
                .regions
                .iter()
                .map(|r| (r.trim().to_string(), 1))
                .collect()
        } else {
            environment.regions.clone()
        };
        Ok(Loaded {
            scope: crate::deployments::scope_of(&d),
            workspace_slug: workspace.slug,
            project_slug: project.slug,
            environment_id: environment.id,
            regions,
            image: d.image,
            git_branch: d.git_branch,
            git_commit_sha: d.git_commit_sha,
        })
    }

    async fn set_status(&self, scope: &EventScope, status: &str) -> Result<(), StepError> {
        self.inner
            .store
            .set_deployment_status(&scope.deployment_id, status, now_ms())
            .await
            .map_err(store_error)?;
        #[derive(Serialize)]
        struct Status<'a> {
            status: &'a str,
        }
        self.event(scope, "status", status, Status { status }).await
    }

    /// Step 4: per region in sorted order, the topology row, then the desired state the
    /// region's agent watches. Returns (region, version).
    async fn write_topology(
        &self,
        loaded: &Loaded,
        image: &str,
    ) -> Result<Vec<(String, i64)>, StepError> {
        let store = &self.inner.store;
        let d = store
            .deployment(&loaded.scope.deployment_id)
            .await
            .map_err(store_error)?;
        let mut written = Vec::new();
        for (region, replicas) in &loaded.regions {
            let row = store
                .upsert_topology(&d.id, region, *replicas, now_ms())
                .await
                .map_err(store_error)?;
            let mut doc = d.desired_for(&row);
            doc.image = image.to_string();
            put_desired_deployment(&self.inner.desired, region, &doc)
                .await
                .map_err(|e| StepError::retryable(e.to_string()))?;
            written.push((region.clone(), row.version));
        }
        Ok(written)
    }

    /// Step 5: one sentinel per (environment, region); 3 replicas for production, else 1.
    async fn ensure_sentinels(&self, loaded: &Loaded) -> Result<Vec<String>, StepError> {
        let replicas = if loaded.scope.environment_slug == "production" {
            3
        } else {
            1
        };
        let mut out = Vec::new();
        for region in loaded.regions.keys() {
            let id = self
                .inner
                .store
                .ensure_sentinel(
                    &ids::new(ids::SENTINEL),
                    &loaded.environment_id,
                    region,
                    replicas,
                    now_ms(),
                )
                .await
                .map_err(store_error)?;
            out.push(id);
        }
        Ok(out)
    }

    /// Step 9: the domains, their routes created where missing (routing), and the routes
    /// this deployment takes over.
    async fn plan_routes(&self, loaded: &Loaded) -> Result<RoutePlan, StepError> {
        let scope = &loaded.scope;
        let generated = domains::generate(&DomainInput {
            apex: &self.inner.config.apex_domain,
            workspace_slug: &loaded.workspace_slug,
            project_slug: &loaded.project_slug,
            environment_slug: &scope.environment_slug,
            deployment_id: &scope.deployment_id,
            branch: &loaded.git_branch,
            commit_sha: &loaded.git_commit_sha,
        });
        let domain_names: Vec<String> = generated.iter().map(|d| d.fqdn.clone()).collect();
        self.inner
            .store
            .set_domains(&scope.deployment_id, &domain_names, now_ms())
            .await
            .map_err(store_error)?;
        let specs: Vec<RouteSpec> = generated
            .iter()
            .map(|d| RouteSpec {
                fqdn: d.fqdn.clone(),
                sticky: d.sticky.as_str().to_string(),
            })
            .collect();
        let ensured = self
            .ensure_routes(
                &scope.project_id,
                &loaded.environment_id,
                &scope.deployment_id,
                specs,
            )
            .await?;
        let project = self
            .inner
            .store
            .project(&scope.project_id)
            .await
            .map_err(store_error)?;
        let take_live = scope.environment_slug == "production" && !project.is_rolled_back;
        // The per-branch route (wherever it was created), every environment-sticky route
        // of this environment (custom ones included), and the live routes only when this
        // deploy may take live.
        let stored = self
            .inner
            .store
            .routes(&scope.project_id, Some(&loaded.environment_id))
            .await
            .map_err(store_error)?;
        let candidates = ensured
            .iter()
            .map(|r| (&r.id, r.sticky.as_str(), true))
            .chain(stored.iter().map(|r| (&r.id, r.sticky.as_str(), false)));
        let mut to_move: Vec<String> = Vec::new();
        for (route_id, sticky, generated_here) in candidates {
            let wanted = match sticky {
                "branch" => generated_here,
                "environment" => true,
                "live" => take_live,
                _ => false,
            };
            if wanted && !to_move.contains(route_id) {
                to_move.push(route_id.clone());
            }
        }
        Ok(RoutePlan {
            domains: domain_names,
            to_move,
        })
    }

    /// Step 10: routing moves them all, or none.
    async fn assign_routes(&self, loaded: &Loaded, plan: &RoutePlan) -> Result<u32, StepError> {
        self.move_routes(
            &loaded.scope.project_id,
            &loaded.scope.deployment_id,
            &plan.to_move,
        )
        .await
    }

    /// Step 12, first half: the live swap. `None` when the project is pinned by a rollback;
    /// else the deployment that was live before.
    async fn take_live(&self, scope: &EventScope) -> Result<Option<Option<String>>, StepError> {
        let swap = self
            .inner
            .store
            .take_live(&scope.project_id, &scope.deployment_id, now_ms())
            .await
            .map_err(store_error)?;
        match swap {
            LiveSwap::Pinned => {
                tracing::info!("project is rolled back: live stays where it is");
                Ok(None)
            }
            LiveSwap::Taken { previous } => {
                #[derive(Serialize)]
                struct Live<'a> {
                    previous_deployment_id: Option<&'a str>,
                }
                self.event(
                    scope,
                    "live",
                    "0",
                    Live {
                        previous_deployment_id: previous.as_deref(),
                    },
                )
                .await?;
                tracing::info!(previous = ?previous, "deployment is live");
                Ok(Some(previous))
            }
        }
    }

    /// Step 12, second half: the previous live deployment to standby after the standby
    /// delay, keyed by this deployment, so a repeat schedules nothing new.
    async fn schedule_standby(&self, id: &str, previous: &str) -> Result<String, StepError> {
        if previous == id {
            return Ok(String::new());
        }
        self.schedule_state(previous, self.inner.config.standby_delay, "standby", id)
            .await
    }
}
