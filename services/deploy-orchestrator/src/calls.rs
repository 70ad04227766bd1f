//! The orchestrator's calls to the other services: the deployment actor (schedules) and
//! routing (route moves). Unreachable or failing services come back as retryable errors.

use std::time::Duration;

use slipway_nats::client::request;
use slipway_proto::v1::{
    AssignFrontlineRoutesReply, AssignFrontlineRoutesRequest, ClearScheduledStateChangesReply,
    ClearScheduledStateChangesRequest, EnsureRoutesReply, EnsureRoutesRequest, Route, RouteSpec,
    ScheduleDesiredStateChangeReply, ScheduleDesiredStateChangeRequest,
};
use slipway_workflow::StepError;

use crate::Orchestrator;

/// How long a call may take before it counts as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Orchestrator {
    /// Schedules `deployment_id` to `state` after `delay` (0: now); the same
    /// `idempotency_key` again schedules nothing new and returns the first nonce.
    pub(crate) async fn schedule_state(
        &self,
        deployment_id: &str,
        delay: Duration,
        state: &str,
        idempotency_key: &str,
    ) -> Result<String, StepError> {
        let reply: ScheduleDesiredStateChangeReply = request(
            &self.inner.client,
            format!("slipway.deployment.v1.schedule_desired_state_change.{deployment_id}"),
            &ScheduleDesiredStateChangeRequest {
                delay_ms: millis(delay),
                state: state.into(),
                idempotency_key: idempotency_key.into(),
            },
            CALL_TIMEOUT,
        )
        .await?;
        tracing::info!(
            deployment = deployment_id,
            state,
            fires_at_ms = reply.fires_at_ms,
            "desired state change scheduled"
        );
        Ok(reply.nonce)
    }

    /// Clears any pending transition of `deployment_id`; whether there was one.
    pub(crate) async fn clear_schedule(&self, deployment_id: &str) -> Result<bool, StepError> {
        let reply: ClearScheduledStateChangesReply = request(
            &self.inner.client,
            format!("slipway.deployment.v1.clear_scheduled_state_changes.{deployment_id}"),
            &ClearScheduledStateChangesRequest {},
            CALL_TIMEOUT,
        )
        .await?;
        Ok(reply.cleared)
    }

    /// Routing points every route in `route_ids` at `deployment_id`, all or nothing.
    pub(crate) async fn move_routes(
        &self,
        project_id: &str,
        deployment_id: &str,
        route_ids: &[String],
    ) -> Result<u32, StepError> {
        if route_ids.is_empty() {
            return Ok(0);
        }
        let reply: AssignFrontlineRoutesReply = request(
            &self.inner.client,
            format!("slipway.routing.v1.assign_frontline_routes.{project_id}"),
            &AssignFrontlineRoutesRequest {
                deployment_id: deployment_id.into(),
                route_ids: route_ids.to_vec(),
            },
            CALL_TIMEOUT,
        )
        .await?;
        Ok(reply.assigned)
    }

    /// Routing creates the routes whose FQDN is missing, pointing at `deployment_id`, and
    /// returns every requested route.
    pub(crate) async fn ensure_routes(
        &self,
        project_id: &str,
        environment_id: &str,
        deployment_id: &str,
        routes: Vec<RouteSpec>,
    ) -> Result<Vec<Route>, StepError> {
        let reply: EnsureRoutesReply = request(
            &self.inner.client,
            format!("slipway.routing.v1.ensure_routes.{project_id}"),
            &EnsureRoutesRequest {
                environment_id: environment_id.into(),
                deployment_id: deployment_id.into(),
                routes,
            },
            CALL_TIMEOUT,
        )
        .await?;
        Ok(reply.routes)
    }
}
