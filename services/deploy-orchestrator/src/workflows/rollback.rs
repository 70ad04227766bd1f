//! `slipway.deploy.v1.rollback` and the Rollback workflow (BEHAVIOUR.md "Rollback"): every
//! validation at once as a 4xx, again under the project's lease (the state may have changed
//! while the workflow waited for it); then clear and wake the target; commit: move the live
//! and environment routes to it, point live at it and pin the project, in one transaction;
//! then tell it and schedule the rolled-back-from deployment to standby.

use serde::{Deserialize, Serialize};
use slipway_core::{domains::Sticky, ids, ApiError};
use slipway_proto::v1::AssignFrontlineRoutesRequest;
use slipway_workflow::{Context, Failure, StepError, Workflow, WorkflowError};

use crate::{clients::routing::Committed, workflows::validation, Orchestrator};

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
}

pub struct Rollback(pub Orchestrator);

impl Workflow for Rollback {
    const KIND: &'static str = "rollback";
    type Input = RollbackInput;
    type Output = ();

    async fn run(&self, ctx: &mut Context, input: RollbackInput) -> Result<(), WorkflowError> {
        let o = &self.0;
        let (source, target) = (input.source.as_str(), input.target.as_str());
        let token = o.lease_project(ctx, &input.project_id).await?;
        let plan: RollbackPlan = ctx
            .step("validate", || async {
                o.check_rollback(source, target)
                    .await
                    .map_err(StepError::from)
            })
            .await?;
        o.wake(ctx, target, token).await?;
        // The commit point: the live and environment routes move to the target, the live
        // pointer follows and the project is pinned, in one transaction.
        let wf = ctx.workflow_id().to_string();
        let committed: Committed = ctx
            .commit("assign_routes", || {
                let ids = &plan.route_ids;
                o.move_traffic(&plan.project_id, target, ids, token, &wf, "pin")
            })
            .await?;
        // Events are deduplicated per workflow: a replayed step does not repeat them.
        let scope = ctx.scope().cloned().unwrap_or_default();
        ctx.step("rolled_back", || async {
            #[derive(Serialize)]
            struct RolledBack<'a> {
                source_deployment_id: &'a str,
            }
            o.event(
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
            o.event(
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
        o.supersede(ctx, Some(source), &key, &committed).await?;
        tracing::info!(source, target, "rolled back");
        Ok(())
    }

    async fn on_failure(
        &self,
        input: &RollbackInput,
        failure: &Failure<'_>,
    ) -> Result<(), StepError> {
        self.0
            .settle_failed(&[&input.target, &input.source], failure.workflow_id)
            .await
    }
}

impl Orchestrator {
    /// BEHAVIOUR.md "Rollback" validations, in its order ([`validation::rollback`] on
    /// what the store holds).
    pub(crate) async fn check_rollback(
        &self,
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
        let store = &self.inner.store;
        let s = store.deployment(source).await?;
        let t = store.deployment(target).await?;
        let project = store.project(&s.project_id).await?;
        let route_ids = self.traffic_routes(&project.id, &t.environment_id).await?;
        validation::rollback(&s, &t, &project, &route_ids)?;
        Ok(RollbackPlan {
            project_id: project.id,
            route_ids,
        })
    }

    /// Rollback's and promote's commit: `route_ids` move to `target` and the live pointer
    /// follows (`live`: "pin" or "take"), in one transaction fenced by `fencing_token`, as
    /// the commit of workflow `commit_id`.
    pub(crate) async fn move_traffic(
        &self,
        project_id: &str,
        target: &str,
        route_ids: &[String],
        fencing_token: u64,
        commit_id: &str,
        live: &str,
    ) -> Result<Committed, StepError> {
        self.commit_routes(
            project_id,
            AssignFrontlineRoutesRequest {
                deployment_id: target.into(),
                route_ids: route_ids.to_vec(),
                fencing_token,
                commit_id: commit_id.into(),
                live: live.into(),
                ..Default::default()
            },
        )
        .await
    }

    /// The live-sticky routes of the project and the environment-sticky ones of
    /// `environment_id`: what rollback and promote move.
    pub(crate) async fn traffic_routes(
        &self,
        project_id: &str,
        environment_id: &str,
    ) -> Result<Vec<String>, ApiError> {
        Ok(self
            .inner
            .store
            .routes(project_id, None)
            .await?
            .into_iter()
            .filter(|r| {
                r.sticky == Sticky::Live
                    || (r.sticky == Sticky::Environment && r.environment_id == environment_id)
            })
            .map(|r| r.id)
            .collect())
    }
}
