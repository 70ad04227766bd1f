//! Calls to the deployment actor: schedule, clear and read a deployment's pending change.
//! An unreachable or failing actor comes back as a retryable step error.

use std::time::Duration;

use slipway_core::time::millis;
use slipway_nats::client::request as request_reply;
use slipway_proto::v1::{
    ClearScheduledStateChangesReply, ClearScheduledStateChangesRequest, GetStateReply,
    GetStateRequest, ScheduleDesiredStateChangeReply, ScheduleDesiredStateChangeRequest,
};
use slipway_workflow::StepError;

use crate::{clients::routing::Committed, Orchestrator};

/// How long a call may take before it counts as unavailable.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

impl Orchestrator {
    /// Schedules `deployment_id` to `state` after `delay` (0: now); the same
    /// `idempotency_key` again schedules nothing new and returns the first nonce. A call
    /// made under the project lease carries its `fencing_token` (0: none), and is refused
    /// (`StepError::Fenced`) once a later holder's call reached the deployment.
    pub(crate) async fn schedule_state(
        &self,
        deployment_id: &str,
        delay: Duration,
        state: &str,
        idempotency_key: &str,
        fencing_token: u64,
    ) -> Result<String, StepError> {
        let reply: ScheduleDesiredStateChangeReply = request_reply(
            &self.inner.client,
            slipway_core::subjects::deployment::SCHEDULE.of(deployment_id),
            &ScheduleDesiredStateChangeRequest {
                delay_ms: millis(delay),
                state: state.into(),
                idempotency_key: idempotency_key.into(),
                fencing_token,
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

    /// The standby, after the standby delay, of a deployment a commit superseded, fenced by
    /// the commit's token. Refused when a later holder of the project's lease has decided
    /// about that deployment since (it woke it for a rollback, say): that decision stands,
    /// and there is nothing left to do.
    pub(crate) async fn standby_superseded(
        &self,
        deployment_id: &str,
        idempotency_key: &str,
        committed: &Committed,
    ) -> Result<String, StepError> {
        let delay = self.inner.config.standby_delay;
        let token = committed.fencing_token;
        match self
            .schedule_state(deployment_id, delay, "standby", idempotency_key, token)
            .await
        {
            Err(StepError::Fenced(reason)) => {
                tracing::info!(deployment = deployment_id, %reason, "a later lease holder decided about the superseded deployment; leaving it to that");
                Ok(String::new())
            }
            scheduled => scheduled,
        }
    }

    /// Whether `deployment_id` has a pending transition.
    pub(crate) async fn has_pending_change(&self, deployment_id: &str) -> Result<bool, StepError> {
        let reply: GetStateReply = request_reply(
            &self.inner.client,
            slipway_core::subjects::deployment::GET_STATE.of(deployment_id),
            &GetStateRequest {},
            CALL_TIMEOUT,
        )
        .await?;
        Ok(reply.pending.is_some())
    }

    /// Clears any pending transition of `deployment_id`, fenced as `schedule_state`; whether
    /// there was one.
    pub(crate) async fn clear_schedule(
        &self,
        deployment_id: &str,
        fencing_token: u64,
    ) -> Result<bool, StepError> {
        slipway_core::fault::point("clear.before_request");
        let reply: ClearScheduledStateChangesReply = request_reply(
            &self.inner.client,
            slipway_core::subjects::deployment::CLEAR.of(deployment_id),
            &ClearScheduledStateChangesRequest { fencing_token },
            CALL_TIMEOUT,
        )
        .await?;
        Ok(reply.cleared)
    }
}
