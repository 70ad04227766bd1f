//! The Deploy workflow (BEHAVIOUR.md "Deploy", steps 1–12). Each step is journaled; every
//! side effect is idempotent (desired state keyed by deployment and region, routes by
//! FQDN, the live swap by the deployment, the standby schedule by this deployment's id), so
//! a step cut off by a crash before its journal write can safely run again.

use std::collections::BTreeMap;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use slipway_core::{
    domains::{self, DomainInput, Sticky},
    ids,
    state::{DeploymentStatus, PRODUCTION_ENVIRONMENT},
    subjects,
    time::now_ms,
    ApiError,
};
use slipway_nats::krane::put_desired_deployment;
use slipway_proto::v1::{AssignFrontlineRoutesRequest, RouteSpec};
use slipway_store::{GitSource, Store, StoreError};
use slipway_workflow::{
    Context, EventScope, Failure, StepError, StepResultExt, Workflow, WorkflowError,
};

use crate::{
    clients::{
        builder::Builder,
        events::{scope_of, Events},
        instances::ReadyInstance,
        routing::{Committed, Routing},
    },
    workflows::{
        handover::{record_instances, Handover},
        route_plan,
    },
};

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
    /// Built into `image` (empty until then) by the `source` step.
    #[serde(default)]
    git_source: Option<GitSource>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RoutePlan {
    domains: Vec<String>,
    /// Generated routes whose FQDN does not exist yet: (fqdn, sticky).
    create: Vec<(String, Sticky)>,
    /// Existing routes this deployment takes over.
    to_move: Vec<String>,
    take_live: bool,
}

/// The Deploy workflow and what it needs.
pub struct Deploy {
    /// Builds git sources, where configured.
    pub(crate) builder: Option<Builder>,
    /// Where build output goes, a line per message (`SLIPWAY_LOGS`).
    pub(crate) nats: async_nats::Client,
    pub(crate) store: Store,
    pub(crate) handover: Handover,
    pub(crate) routing: Routing,
    pub(crate) events: Events,
    /// KV `slipway_desired`, which the region agents watch.
    pub(crate) desired: kv::Store,
    /// Apex of generated domains.
    pub(crate) apex_domain: String,
    /// Regions of an environment that names none.
    pub(crate) default_regions: Vec<String>,
}

impl Workflow for Deploy {
    const KIND: &'static str = "deploy";
    type Input = DeployInput;
    type Output = ();

    async fn run(&self, ctx: &mut Context, input: DeployInput) -> Result<(), WorkflowError> {
        let o = self;
        let id = input.deployment_id.as_str();

        let loaded: Loaded = ctx.step("load", || o.load(id)).await?;
        let scope = &loaded.scope;
        let image: String = ctx.step("source", || o.source(&loaded)).await?;
        let deadline_ms: i64 = ctx
            .step("deploying", || async {
                o.set_status(scope, DeploymentStatus::Deploying).await?;
                Ok(o.handover.instances.deadline())
            })
            .await?;
        let written: Vec<(String, i64)> = ctx
            .step("topology", || o.write_topology(&loaded, &image))
            .await?;
        let versions: BTreeMap<String, i64> = written.into_iter().collect();
        let _: Vec<String> = ctx
            .step("sentinels", || o.ensure_sentinels(&loaded))
            .await?;
        let instances: Vec<ReadyInstance> = ctx
            .step("wait_instances", || {
                let instances = &o.handover.instances;
                instances.wait(id, &loaded.regions, &versions, deadline_ms)
            })
            .await?;
        ctx.step("record_instances", || {
            record_instances(&o.store, id, loaded.regions.keys(), &instances)
        })
        .await?;
        let _: bool = ctx
            .step("openapi", || async {
                let spec = o.handover.instances.scrape_openapi(&instances).await;
                o.store
                    .set_openapi_spec(id, spec.as_deref(), now_ms())
                    .await
                    .step_err()?;
                Ok(spec.is_some())
            })
            .await?;

        // Steps 9–12 under the project's lease: they read the rolled-back flag and the live
        // pointer there, so a rollback meanwhile is respected; the commit carries the lease's
        // fencing token, so a holder that lost the lease cannot commit.
        let token = o.handover.lease_project(ctx, &scope.project_id).await?;
        let plan: RoutePlan = ctx.step("routes", || o.plan_routes(&loaded)).await?;
        // The commit point: routes and the live pointer move together, or not at all.
        let wf = ctx.workflow_id().to_string();
        let committed: Committed = ctx
            .commit("assign_routes", || {
                o.commit_deploy(&loaded, &plan, token, &wf)
            })
            .await?;
        let previous = committed.previous.as_deref();
        // A repeated commit (this run's first died before journaling it) wrote nothing now:
        // the follow-ups are those of its first application, and its live event only while
        // no later commit has moved live away (a late one would contradict the later's).
        let (took_live, live_now) = if committed.repeated {
            let live_now = committed.live_now.as_deref() == Some(id);
            (committed.took_live, live_now)
        } else {
            (plan.take_live, plan.take_live)
        };
        // Past the commit point every step retries until it succeeds.
        ctx.step("ready", || async {
            o.set_status(scope, DeploymentStatus::Ready).await?;
            #[derive(Serialize)]
            struct Ready<'a> {
                domains: &'a [String],
            }
            o.events
                .publish(
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
        if took_live && live_now {
            ctx.step("live", || o.live_event(scope, previous)).await?;
        }
        let superseded = previous.filter(|p| took_live && *p != id);
        o.handover
            .supersede(ctx, &scope.project_id, superseded, id, &committed)
            .await
    }

    async fn on_failure(
        &self,
        input: &DeployInput,
        failure: &Failure<'_>,
    ) -> Result<(), StepError> {
        let o = self;
        let reason = failure.reason;
        // A commit of this workflow that went through unjournaled may have replaced the live
        // deployment: that one still goes to standby.
        o.handover.settle_failed(&[], failure.workflow_id).await?;
        let deployment = match o.store.deployment(&input.deployment_id).await {
            Ok(d) => d,
            Err(StoreError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(StepError::from(ApiError::from(e))),
        };
        // A deployment that serves live or environment traffic is never stopped: it got
        // there through a commit that the failure came after (or a former run's commit).
        if o.store.serves_traffic(&deployment.id).await.step_err()? {
            tracing::warn!(deployment_id = %deployment.id, %reason, "the workflow failed, but the deployment serves traffic: leaving it running");
            return Ok(());
        }
        let topology = o
            .store
            .fail_deployment(&deployment.id, reason, now_ms())
            .await
            .step_err()?;
        // Its instances stop: a failed deployment must not crash-loop for ever.
        for row in &topology {
            let doc = deployment.desired_without_secrets(row);
            put_desired_deployment(&o.desired, &row.region, &doc)
                .await
                .map_err(|e| StepError::retryable(e.to_string()))?;
        }
        #[derive(Serialize)]
        struct Failed<'a> {
            failure_reason: &'a str,
        }
        o.events
            .publish(
                &scope_of(&deployment),
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

impl Deploy {
    async fn load(&self, id: &str) -> Result<Loaded, StepError> {
        let store = &self.store;
        let d = store.deployment(id).await.step_err()?;
        let workspace = store.workspace(&d.workspace_id).await.step_err()?;
        let project = store.project(&d.project_id).await.step_err()?;
        let environment = store.environment(&d.environment_id).await.step_err()?;
        let regions = if environment.regions.is_empty() {
            self.default_regions
                .iter()
                .map(|r| (r.trim().to_string(), 1))
                .collect()
        } else {
            environment.regions.clone()
        };
        Ok(Loaded {
            scope: scope_of(&d),
            workspace_slug: workspace.slug,
            project_slug: project.slug,
            environment_id: environment.id,
            regions,
            image: d.image,
            git_branch: d.git_branch,
            git_commit_sha: d.git_commit_sha,
            git_source: d.git_source,
        })
    }

    /// Step 2: the image to run: the one asked for, or the one built from the git source
    /// (status `building` meanwhile). A build resumed after a crash reuses the image the
    /// first one finished, if it did ([`Builder::build`]).
    async fn source(&self, loaded: &Loaded) -> Result<String, StepError> {
        if !loaded.image.is_empty() {
            return Ok(loaded.image.clone());
        }
        let Some(source) = &loaded.git_source else {
            return Err(StepError::terminal("no image to deploy and no git source"));
        };
        let Some(builder) = &self.builder else {
            return Err(StepError::terminal(
                "a git source, and no builder configured (SLIPWAY_BUILDER_DOCKER_HOST)",
            ));
        };
        let scope = &loaded.scope;
        self.set_status(scope, DeploymentStatus::Building).await?;
        let deployment_id = scope.deployment_id.as_str();
        // Lines go out as they come, on their own task: a build never waits for NATS.
        let (lines, mut to_publish) = tokio::sync::mpsc::unbounded_channel::<String>();
        let nats = self.nats.clone();
        let subject = subjects::logs::of(deployment_id, subjects::logs::BUILD);
        let publisher = tokio::spawn(async move {
            while let Some(line) = to_publish.recv().await {
                let _ = nats.publish(subject.clone(), line.into()).await;
            }
            let _ = nats.flush().await;
        });
        let started = std::time::Instant::now();
        let built = builder
            .build(&scope.project_id, deployment_id, source, |line| {
                tracing::debug!(%deployment_id, build = %line);
                let _ = lines.send(line.to_string());
            })
            .await;
        drop(lines);
        let _ = publisher.await;
        let image = match built {
            Ok(image) => image,
            Err(e) if e.is_final() => return Err(StepError::terminal(e.to_string())),
            Err(e) => return Err(StepError::retryable(format!("{:#}", anyhow::Error::new(e)))),
        };
        let took_ms = started.elapsed().as_millis() as u64;
        tracing::info!(%deployment_id, %image, took_ms, "built");
        self.store
            .set_built_image(deployment_id, &image, now_ms())
            .await
            .step_err()?;
        Ok(image)
    }

    async fn set_status(
        &self,
        scope: &EventScope,
        status: DeploymentStatus,
    ) -> Result<(), StepError> {
        self.store
            .set_deployment_status(&scope.deployment_id, status, now_ms())
            .await
            .step_err()?;
        #[derive(Serialize)]
        struct Status {
            status: DeploymentStatus,
        }
        self.events
            .publish(scope, "status", status.as_str(), Status { status })
            .await
    }

    /// Step 4: per region in sorted order, the topology row, then the desired state the
    /// region's agent watches. Returns (region, version).
    async fn write_topology(
        &self,
        loaded: &Loaded,
        image: &str,
    ) -> Result<Vec<(String, i64)>, StepError> {
        let store = &self.store;
        let d = store
            .deployment(&loaded.scope.deployment_id)
            .await
            .step_err()?;
        let mut written = Vec::new();
        for (region, replicas) in &loaded.regions {
            let row = store
                .upsert_topology(&d.id, region, *replicas, now_ms())
                .await
                .step_err()?;
            let mut doc = store.desired_for(&d, &row).step_err()?;
            doc.image = image.to_string();
            put_desired_deployment(&self.desired, region, &doc)
                .await
                .map_err(|e| StepError::retryable(e.to_string()))?;
            written.push((region.clone(), row.version));
        }
        Ok(written)
    }

    /// Step 5: one sentinel per (environment, region); 3 replicas for production, else 1.
    async fn ensure_sentinels(&self, loaded: &Loaded) -> Result<Vec<String>, StepError> {
        let replicas = if loaded.scope.environment_slug == PRODUCTION_ENVIRONMENT {
            3
        } else {
            1
        };
        let mut out = Vec::new();
        for region in loaded.regions.keys() {
            let id = self
                .store
                .ensure_sentinel(
                    &ids::new(ids::SENTINEL),
                    &loaded.environment_id,
                    region,
                    replicas,
                    now_ms(),
                )
                .await
                .step_err()?;
            out.push(id);
        }
        Ok(out)
    }

    /// Step 9: the domains, the routes to create where missing, and the existing routes this
    /// deployment takes over ([`route_plan::decide`]).
    async fn plan_routes(&self, loaded: &Loaded) -> Result<RoutePlan, StepError> {
        let scope = &loaded.scope;
        let store = &self.store;
        let project = store.project(&scope.project_id).await.step_err()?;
        let generated = domains::generate(&DomainInput {
            scheme: project.domain_scheme,
            apex: &self.apex_domain,
            workspace_slug: &loaded.workspace_slug,
            project_slug: &loaded.project_slug,
            environment_slug: &scope.environment_slug,
            deployment_id: &scope.deployment_id,
            branch: &loaded.git_branch,
            commit_sha: &loaded.git_commit_sha,
        });
        let generated_names: Vec<String> = generated.iter().map(|d| d.fqdn.clone()).collect();
        let take_live = route_plan::takes_live(&scope.environment_slug, project.is_rolled_back);
        let existing = store.routes_by_fqdn(&generated_names).await.step_err()?;
        let environment_routes = store
            .routes(&scope.project_id, Some(&loaded.environment_id))
            .await
            .step_err()?;
        let route_plan::Decision {
            create,
            to_move,
            taken,
        } = route_plan::decide(&route_plan::Inputs {
            project_id: &scope.project_id,
            take_live,
            generated: &generated,
            existing: &existing,
            environment_routes: &environment_routes,
        });
        for fqdn in &taken {
            tracing::warn!(deployment_id = %scope.deployment_id, %fqdn, "another project holds this generated domain: the deployment goes without it");
        }
        let domain_names: Vec<String> = generated_names
            .into_iter()
            .filter(|d| !taken.contains(d))
            .collect();
        store
            .set_domains(&scope.deployment_id, &domain_names, now_ms())
            .await
            .step_err()?;
        Ok(RoutePlan {
            domains: domain_names,
            create,
            to_move,
            take_live,
        })
    }

    /// Steps 10 and 12 as one commit: routes created and moved, and (when the plan takes
    /// live) the live pointer swapped.
    async fn commit_deploy(
        &self,
        loaded: &Loaded,
        plan: &RoutePlan,
        fencing_token: u64,
        commit_id: &str,
    ) -> Result<Committed, StepError> {
        let scope = &loaded.scope;
        let committed = self
            .routing
            .commit(
                &scope.project_id,
                AssignFrontlineRoutesRequest {
                    deployment_id: scope.deployment_id.clone(),
                    route_ids: plan.to_move.clone(),
                    fencing_token,
                    commit_id: commit_id.into(),
                    live: if plan.take_live { "take" } else { "" }.into(),
                    environment_id: loaded.environment_id.clone(),
                    create: plan
                        .create
                        .iter()
                        .map(|(fqdn, sticky)| RouteSpec {
                            fqdn: fqdn.clone(),
                            sticky: sticky.to_string(),
                        })
                        .collect(),
                },
            )
            .await?;
        if committed.repeated {
            tracing::info!(previous = ?committed.previous, live = ?committed.live_now, "the commit had been applied before: nothing written again");
        } else if plan.take_live {
            tracing::info!(previous = ?committed.previous, "deployment is live");
        }
        Ok(committed)
    }

    /// The `live` event of a deploy that took live.
    async fn live_event(
        &self,
        scope: &EventScope,
        previous: Option<&str>,
    ) -> Result<(), StepError> {
        #[derive(Serialize)]
        struct Live<'a> {
            previous_deployment_id: Option<&'a str>,
        }
        self.events
            .publish(
                scope,
                "live",
                "0",
                Live {
                    previous_deployment_id: previous,
                },
            )
            .await
    }
}
