//! `slipway.deploy.v1.rollback` and the Rollback workflow (BEHAVIOUR.md "Rollback"): every
//! validation at once as a 4xx, again under the project's lease (the state may have changed
//! while the workflow waited for it); then clear and wake the target; commit: move the live
//! and environment routes to it, point live at it and pin the project, in one transaction;
//! then tell it and schedule the rolled-back-from deployment to standby.

use serde::{Deserialize, Serialize};
use slipway_core::{ids, ApiError};
use slipway_store::Store;
use slipway_workflow::{Context, Failure, StepError, StepResultExt, Workflow, WorkflowError};

use crate::{
    clients::{
        events::Events,
        routing::{Committed, Routing},
    },
    workflows::{
        handover::{traffic_routes, Handover},
        validation,
    },
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RollbackInput {
    pub project_id: String,
    pub source: String,
    pub target: String,
}

/// What a valid rollback moves.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RollbackPlan {
    pub project_id: String,
    pub route_ids: Vec<String>,
    /// Its commit was applied before its run died (a resumed run): not validated again
    /// (the source is no longer live because of it), only followed up.
    #[serde(default)]
    pub repeat: bool,
}

/// The Rollback workflow and what it needs.
pub struct Rollback {
    pub(crate) store: Store,
    pub(crate) handover: Handover,
    pub(crate) routing: Routing,
    pub(crate) events: Events,
}

impl Workflow for Rollback {
    const KIND: &'static str = "rollback";
    type Input = RollbackInput;
    type Output = ();

    async fn run(&self, ctx: &mut Context, input: RollbackInput) -> Result<(), WorkflowError> {
        let o = self;
        let (source, target) = (input.source.as_str(), input.target.as_str());
        let token = o.handover.lease_project(ctx, &input.project_id).await?;
        let wf = ctx.workflow_id().to_string();
        let plan: RollbackPlan = ctx
            .step("validate", || async {
                if o.store.commit_applied(&wf).await.step_err()?.is_some() {
                    return Ok(RollbackPlan {
                        project_id: input.project_id.clone(),
                        route_ids: Vec::new(),
                        repeat: true,
                    });
                }
                check(&o.store, source, target)
                    .await
                    .map_err(StepError::from)
            })
            .await?;
        if !plan.repeat {
            o.handover.wake(ctx, target, token).await?;
        }
        // The commit point: the live and environment routes move to the target, the live
        // pointer follows and the project is pinned, in one transaction.
        let committed: Committed = ctx
            .commit("assign_routes", || {
                let ids = &plan.route_ids;
                o.routing
                    .move_traffic(&plan.project_id, target, ids, token, &wf, "pin")
            })
            .await?;
        // Events are deduplicated per workflow: a replayed step does not repeat them.
        let scope = ctx.scope().cloned().unwrap_or_default();
        ctx.step("rolled_back", || async {
            #[derive(Serialize)]
            struct RolledBack<'a> {
                source_deployment_id: &'a str,
            }
            o.events
                .publish(
                    &scope,
                    "rolled_back",
                    &wf,
                    RolledBack {
                        source_deployment_id: source,
                    },
                )
                .await?;
            #[derive(Serialize)]
            struct Live<'a> {
                previous_deployment_id: &'a str,
            }
            o.events
                .publish(
                    &scope,
                    "live",
                    &wf,
                    Live {
                        previous_deployment_id: source,
                    },
                )
                .await
        })
        .await?;
        let key = format!("rollback.{}", ctx.workflow_id());
        o.handover
            .supersede(ctx, &input.project_id, Some(source), &key, &committed)
            .await?;
        tracing::info!(source, target, "rolled back");
        Ok(())
    }

    async fn on_failure(
        &self,
        input: &RollbackInput,
        failure: &Failure<'_>,
    ) -> Result<(), StepError> {
        self.handover
            .settle_failed(&[&input.target, &input.source], failure.workflow_id)
            .await
    }
}

/// BEHAVIOUR.md "Rollback" validations, in its order ([`validation::rollback`] on what the
/// store holds).
pub(crate) async fn check(
    store: &Store,
    source: &str,
    target: &str,
) -> Result<RollbackPlan, ApiError> {
    ids::validate(ids::DEPLOYMENT, "source_deployment_id", source)?;
    ids::validate(ids::DEPLOYMENT, "target_deployment_id", target)?;
    if source == target {
        return Err(ApiError::invalid_argument(
            "source and target are the same deployment",
        ));
    }
    let s = store.deployment(source).await?;
    let t = store.deployment(target).await?;
    let project = store.project(&s.project_id).await?;
    let route_ids = traffic_routes(store, &project.id, &t.environment_id).await?;
    validation::rollback(&s, &t, &project, &route_ids)?;
    Ok(RollbackPlan {
        project_id: project.id,
        route_ids,
        repeat: false,
    })
}
