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

use crate::clients::CALL_TIMEOUT;

/// How a call to the actor is fenced by the project lease (BEHAVIOUR.md "Per-project
/// exclusion").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fence {
    /// Not made under a lease (a failure handler, the idle spin-down).
    None,
    /// A follow-up of a commit made under the lease with this token: refused only once a later
    /// holder has decided about this deployment.
    Commit(u64),
    /// Made while holding the lease with this token: refused once any later holder has taken
    /// the project's lease.
    Lease(u64),
}

impl Fence {
    fn token(self) -> u64 {
        match self {
            Fence::None => 0,
            Fence::Commit(token) | Fence::Lease(token) => token,
        }
    }

    fn holds_lease(self) -> bool {
        matches!(self, Fence::Lease(_))
    }
}

/// The deployment actor's client.
#[derive(Clone)]
pub(crate) struct Actor {
    nats: async_nats::Client,
}

impl Actor {
    pub(crate) fn new(nats: async_nats::Client) -> Self {
        Self { nats }
    }

    /// Schedules `deployment_id` to `state` after `delay` (0: now); the same
    /// `idempotency_key` again schedules nothing new and returns the first nonce. A fenced
    /// call that the actor refuses comes back as `StepError::Fenced`.
    pub(crate) async fn schedule(
        &self,
        deployment_id: &str,
        delay: Duration,
        state: &str,
        idempotency_key: &str,
        fence: Fence,
    ) -> Result<String, StepError> {
        let reply: ScheduleDesiredStateChangeReply = request_reply(
            &self.nats,
            slipway_core::subjects::deployment::SCHEDULE.of(deployment_id),
            &ScheduleDesiredStateChangeRequest {
                delay_ms: millis(delay),
                state: state.into(),
                idempotency_key: idempotency_key.into(),
                fencing_token: fence.token(),
                holds_lease: fence.holds_lease(),
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

    /// Whether `deployment_id` has a pending transition.
    pub(crate) async fn has_pending_change(&self, deployment_id: &str) -> Result<bool, StepError> {
        let reply: GetStateReply = request_reply(
            &self.nats,
            slipway_core::subjects::deployment::GET_STATE.of(deployment_id),
            &GetStateRequest {},
            CALL_TIMEOUT,
        )
        .await?;
        Ok(reply.pending.is_some())
    }

    /// Clears any pending transition of `deployment_id`, fenced as [`schedule`](Self::schedule);
    /// whether there was one.
    pub(crate) async fn clear(&self, deployment_id: &str, fence: Fence) -> Result<bool, StepError> {
        slipway_core::fault::point("clear.before_request");
        let reply: ClearScheduledStateChangesReply = request_reply(
            &self.nats,
            slipway_core::subjects::deployment::CLEAR.of(deployment_id),
            &ClearScheduledStateChangesRequest {
                fencing_token: fence.token(),
                holds_lease: fence.holds_lease(),
            },
            CALL_TIMEOUT,
        )
        .await?;
        Ok(reply.cleared)
    }
}
