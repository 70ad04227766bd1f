//! The orchestrator's calls to the other services: the deployment actor (schedules) and
//! routing (the commit: route moves with the live pointer). Unreachable or failing services come back as retryable errors.

use std::time::Duration;

use slipway_nats::client::request as request_reply;
use slipway_proto::v1::{
    AssignFrontlineRoutesReply, AssignFrontlineRoutesRequest, ClearScheduledStateChangesReply,
    ClearScheduledStateChangesRequest, GetStateReply, GetStateRequest,
    ScheduleDesiredStateChangeReply, ScheduleDesiredStateChangeRequest,
};
use slipway_workflow::StepError;

use crate::Orchestrator;

/// What a commit did to the live pointer (journaled as the commit step's result).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Committed {
    /// The deployment that was live before.
    pub previous: Option<String>,
    /// What earlier runs of this commit replaced as live, but `previous`: their follow-up
    /// may never have run, so they are settled too.
    #[serde(default, deserialize_with = "one_or_many")]
    pub replaced_earlier: Vec<String>,
    /// The fencing token the commit carried; the follow-up schedules carry it too.
    #[serde(default)]
    pub fencing_token: u64,
}

/// `replaced_earlier` as journaled before it became a list (one or none).
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<String>),
        One(Option<String>),
    }
    Ok(match serde::Deserialize::deserialize(d)? {
        OneOrMany::Many(many) => many,
        OneOrMany::One(one) => one.into_iter().collect(),
    })
}

/// How long a call may take before it counts as unavailable.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

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
            format!("slipway.deployment.v1.schedule_desired_state_change.{deployment_id}"),
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
            format!("slipway.deployment.v1.get_state.{deployment_id}"),
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
            format!("slipway.deployment.v1.clear_scheduled_state_changes.{deployment_id}"),
            &ClearScheduledStateChangesRequest { fencing_token },
            CALL_TIMEOUT,
        )
        .await?;
        Ok(reply.cleared)
    }

    /// The commit point of deploy, rollback and promote: routing creates `create` where
    /// missing, moves `route_ids` and applies `live`, in one transaction fenced by
    /// `fencing_token`; the reply tells the deployment that was live before.
    pub(crate) async fn commit_routes(
        &self,
        project_id: &str,
        request: AssignFrontlineRoutesRequest,
    ) -> Result<Committed, StepError> {
        slipway_core::fault::point("commit.before_request");
        let fencing_token = request.fencing_token;
        let reply: AssignFrontlineRoutesReply = request_reply(
            &self.inner.client,
            format!("slipway.routing.v1.assign_frontline_routes.{project_id}"),
            &request,
            CALL_TIMEOUT,
        )
        .await?;
        Ok(Committed {
            previous: reply.previous_live_deployment_id,
            replaced_earlier: reply.replaced_earlier_deployment_ids,
            fencing_token,
        })
    }
}
