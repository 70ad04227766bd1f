//! `slipway.deploy.v1.promote` and the Promote workflow (BEHAVIOUR.md "Promote"): promoting
//! the live deployment of a rolled-back project confirms the rollback; otherwise clear and
//! wake the target; commit: move the live and environment routes to it, swap the live pointer
//! and unpin, in one transaction; then tell it and schedule the previous live deployment to
//! standby.

use serde::{Deserialize, Serialize};
use slipway_core::{ids, time::now_ms, ApiError};
use slipway_store::{LiveChange, Store};
use slipway_workflow::{
    Context, EventScope, Failure, StepError, StepResultExt, Workflow, WorkflowError,
};

use crate::{
    clients::{
        events::Events,
        routing::{Committed, Routing},
    },
    workflows::{
        handover::{traffic_routes, Handover},
        validation::{self, PromotePlan},
    },
};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromoteInput {
    pub project_id: String,
    pub target: String,
}

/// The Promote workflow and what it needs.
pub struct Promote {
    pub(crate) store: Store,
    pub(crate) handover: Handover,
    pub(crate) routing: Routing,
    pub(crate) events: Events,
}

impl Workflow for Promote {
    const KIND: &'static str = "promote";
    type Input = PromoteInput;
    type Output = ();

    async fn run(&self, ctx: &mut Context, input: PromoteInput) -> Result<(), WorkflowError> {
        let o = self;
        let target = input.target.as_str();
        let project_id = input.project_id.as_str();
        let token = o.handover.lease_project(ctx, project_id).await?;
        let wf = ctx.workflow_id().to_string();
        let plan: PromotePlan = ctx
            .step("validate", || async {
                // Not validated again once its own commit went through: the target is live, or
                // the rollback confirmed (the commit that leaves the live pointer), because of it.
                match o.store.commit_applied(&wf).await.step_err()? {
                    Some(LiveChange::Leave) => return Ok(PromotePlan::ConfirmRollback),
                    Some(_) => return Ok(PromotePlan::Repeat),
                    None => {}
                }
                check(&o.store, target)
                    .await
                    .map(|(_, plan)| plan)
                    .map_err(StepError::from)
            })
            .await?;
        let scope = ctx.scope().cloned().unwrap_or_default();
        match plan {
            PromotePlan::ConfirmRollback => {
                ctx.commit("confirm_rollback", || async {
                    o.store
                        .confirm_rollback(project_id, token, &wf, now_ms())
                        .await
                        .step_err()
                })
                .await?;
                ctx.step("promoted", || async {
                    #[derive(Serialize)]
                    struct Confirmed {
                        confirmed_rollback: bool,
                    }
                    let detail = Confirmed {
                        confirmed_rollback: true,
                    };
                    o.promoted_event(&scope, &wf, detail, None).await
                })
                .await?;
            }
            PromotePlan::Move { .. } | PromotePlan::Repeat => {
                let route_ids = match plan {
                    PromotePlan::Move { route_ids } => {
                        o.handover.wake(ctx, target, token).await?;
                        route_ids
                    }
                    _ => Vec::new(),
                };
                // The commit point: routes, live pointer and the cleared pin together.
                let committed: Committed = ctx
                    .commit("assign_routes", || {
                        let ids = &route_ids;
                        o.routing
                            .move_traffic(project_id, target, ids, token, &wf, "take")
                    })
                    .await?;
                let previous = committed.previous.clone();
                // A repeated commit's `live` event only while the target is still live, as
                // for a deploy: a late one would contradict a later commit's.
                let superseded_since =
                    committed.repeated && committed.live_now.as_deref() != Some(target);
                ctx.step("promoted", || async {
                    #[derive(Serialize)]
                    struct Promoted<'a> {
                        previous_deployment_id: Option<&'a str>,
                    }
                    let detail = Promoted {
                        previous_deployment_id: previous.as_deref(),
                    };
                    let live_from = previous.as_deref().filter(|_| !superseded_since);
                    o.promoted_event(&scope, &wf, detail, live_from).await
                })
                .await?;
                let superseded = previous.as_deref().filter(|p| *p != target);
                let key = format!("promote.{wf}");
                o.handover
                    .supersede(ctx, project_id, superseded, &key, &committed)
                    .await?;
            }
        }
        tracing::info!(target, "promoted");
        Ok(())
    }

    async fn on_failure(
        &self,
        input: &PromoteInput,
        failure: &Failure<'_>,
    ) -> Result<(), StepError> {
        // Its target, and what its commit replaced if that commit happened.
        self.handover
            .settle_failed(&[&input.target], failure.workflow_id)
            .await
    }
}

impl Promote {
    /// A `promoted` event, and a `live` one when the live pointer moved.
    async fn promoted_event<D: Serialize>(
        &self,
        scope: &EventScope,
        workflow_id: &str,
        detail: D,
        previous: Option<&str>,
    ) -> Result<(), StepError> {
        self.events
            .publish(scope, "promoted", workflow_id, detail)
            .await?;
        if let Some(previous) = previous {
            #[derive(Serialize)]
            struct Live<'a> {
                previous_deployment_id: &'a str,
            }
            self.events
                .publish(
                    scope,
                    "live",
                    workflow_id,
                    Live {
                        previous_deployment_id: previous,
                    },
                )
                .await?;
        }
        Ok(())
    }
}

/// BEHAVIOUR.md "Promote" validations; returns the project id and what to do.
pub(crate) async fn check(store: &Store, target: &str) -> Result<(String, PromotePlan), ApiError> {
    ids::validate(ids::DEPLOYMENT, "target_deployment_id", target)?;
    let t = store.deployment(target).await?;
    let project = store.project(&t.project_id).await?;
    let live = match project.live_deployment_id.as_deref() {
        Some(id) => store.find_deployment(id).await?,
        None => None,
    };
    let route_ids = traffic_routes(store, &project.id, &t.environment_id).await?;
    let plan = validation::promote(&t, &project, live.as_ref(), route_ids)?;
    Ok((project.id, plan))
}
