//! The three request/reply endpoints of API.md "slipway-deployment".

use slipway_core::{error::STALE_FENCING_TOKEN, ids, state::DesiredState, time::now_ms, ApiError};
use slipway_nats::{Call, Micro};
use slipway_proto::v1::{
    ClearScheduledStateChangesReply, ClearScheduledStateChangesRequest, GetStateReply,
    GetStateRequest, PendingTransition, ScheduleDesiredStateChangeReply,
    ScheduleDesiredStateChangeRequest,
};

use crate::{
    apply::OnClaimed,
    timers::TimerError,
    transitions::{Current, Transition, TransitionError},
    Actor, SERVICE_NAME,
};

/// The longest delay accepted: a year, which catches seconds sent as milliseconds' opposite.
pub const MAX_DELAY_MS: i64 = 366 * 24 * 3600 * 1000;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;

pub async fn serve(client: &async_nats::Client, actor: Actor) -> Result<Micro, async_nats::Error> {
    let micro = Micro::start(
        client,
        SERVICE_NAME,
        env!("CARGO_PKG_VERSION"),
        "Deployment actor: schedules, cancels and applies desired-state changes, one actor per deployment id",
    )
    .await?;
    let a = &actor;
    micro
        .serve(
            a,
            "schedule_desired_state_change",
            &slipway_core::subjects::deployment::SCHEDULE.all(),
            |a, call| async move { a.schedule(call).await },
        )
        .await?;
    micro
        .serve(
            a,
            "clear_scheduled_state_changes",
            &slipway_core::subjects::deployment::CLEAR.all(),
            |a, call| async move { a.clear(call).await },
        )
        .await?;
    micro
        .serve(
            a,
            "get_state",
            &slipway_core::subjects::deployment::GET_STATE.all(),
            |a, call| async move { a.get_state(call).await },
        )
        .await?;
    Ok(micro)
}

impl Actor {
    /// The deployment named by the subject, which must exist. A call from a holder of the
    /// project's lease (`holds_lease`) is refused once a later holder has registered its
    /// lease with the store — even before that holder has called about this deployment, which
    /// is when the token kept with its transitions would learn of it.
    async fn target(
        &self,
        key: &str,
        fencing_token: u64,
        holds_lease: bool,
    ) -> Result<String, ApiError> {
        ids::validate(ids::DEPLOYMENT, "deployment_id", key)?;
        if self.store().find_deployment(key).await?.is_none() {
            return Err(ApiError::not_found(format!("deployment {key} not found")));
        }
        if !holds_lease {
            return Ok(key.to_string());
        }
        self.store()
            .check_fence(key, fencing_token)
            .await
            .inspect_err(|_| {
                tracing::warn!(fencing_token, "refusing a call from a former lease holder")
            })?;
        Ok(key.to_string())
    }

    #[tracing::instrument(skip_all, fields(deployment_id = %call.key()))]
    async fn schedule(
        &self,
        call: Call<ScheduleDesiredStateChangeRequest>,
    ) -> Result<ScheduleDesiredStateChangeReply, ApiError> {
        let req = &call.request;
        let state: DesiredState = req.state.parse()?;
        if req.delay_ms < 0 {
            return Err(ApiError::invalid_argument(format!(
                "delay_ms must not be negative (got {})",
                req.delay_ms
            )));
        }
        if req.delay_ms > MAX_DELAY_MS {
            return Err(ApiError::invalid_argument(format!(
                "delay_ms must be at most {MAX_DELAY_MS} (366 days; got {})",
                req.delay_ms
            )));
        }
        if req.idempotency_key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(ApiError::invalid_argument(format!(
                "idempotency_key must be at most {MAX_IDEMPOTENCY_KEY_LEN} bytes"
            )));
        }
        let deployment_id = self
            .target(call.key(), req.fencing_token, req.holds_lease)
            .await?;
        let key = req.idempotency_key.as_str();
        let transitions = &self.inner.transitions;
        // Applied at once, a stop of a deployment that serves traffic would be refused: say
        // so now rather than answer a change that never happens. (A delayed one is judged
        // when it fires: by then it may have been superseded.)
        if req.delay_ms == 0
            && state != DesiredState::Running
            && self.store().serves_traffic(&deployment_id).await?
        {
            return Err(ApiError::failed_precondition(format!(
                "deployment {deployment_id} serves traffic (it is live, or a live or environment route points at it); it cannot go to {state}"
            )));
        }

        if !key.is_empty() {
            if let Some(first) = transitions
                .remembered(&deployment_id, key)
                .await
                .map_err(transition_err)?
            {
                return Ok(reply(&first));
            }
        }
        // Last writer wins: compare-and-set against the revision just read, retry on a race.
        let (transition, written) = loop {
            let current = transitions
                .get(&deployment_id)
                .await
                .map_err(transition_err)?;
            if let Some(t) = current
                .transition
                .as_ref()
                .filter(|t| !key.is_empty() && t.idempotency_key == key)
            {
                break (t.clone(), None);
            }
            let fencing_token = stale(&deployment_id, &current, req.fencing_token)?;
            if self.finish_claimed(&deployment_id, &current).await? {
                continue;
            }
            let candidate = Transition {
                nonce: uuid::Uuid::now_v7().simple().to_string(),
                state: state.as_str().to_string(),
                fires_at_ms: now_ms() + req.delay_ms,
                idempotency_key: key.to_string(),
                applying: false,
            };
            match transitions
                .put(&deployment_id, &candidate, fencing_token, current.revision)
                .await
            {
                Ok(revision) => {
                    let written = Current {
                        transition: Some(candidate.clone()),
                        fencing_token,
                        revision,
                    };
                    break (candidate, Some(written));
                }
                Err(TransitionError::Conflict) => continue,
                Err(e) => return Err(transition_err(e)),
            }
        };

        slipway_core::fault::point("actor.after_transition_stored");
        let timers = &self.inner.timers;
        let synced = match written {
            // Applied at once; should that fail, the sync below leaves a due timer behind, so
            // the fired-change consumer retries it: the change is durable either way.
            _ if req.delay_ms == 0 => {
                if let Err(e) = self
                    .apply(&deployment_id, &transition.nonce, OnClaimed::Complete)
                    .await
                {
                    tracing::warn!(error = %e, "cannot apply at once; the timer will retry it");
                }
                timers.sync(&deployment_id, transitions).await
            }
            // What this call stored is what the schedule is written for (no read first).
            Some(written) => timers.sync_from(&deployment_id, transitions, written).await,
            None => timers.sync(&deployment_id, transitions).await,
        };
        synced.map_err(timer_err)?;
        if !key.is_empty() {
            transitions
                .remember(&deployment_id, &transition)
                .await
                .map_err(transition_err)?;
        }
        tracing::info!(nonce = %transition.nonce, state = %transition.state, fires_at_ms = transition.fires_at_ms, "scheduled");
        Ok(reply(&transition))
    }

    #[tracing::instrument(skip_all, fields(deployment_id = %call.key()))]
    async fn clear(
        &self,
        call: Call<ClearScheduledStateChangesRequest>,
    ) -> Result<ClearScheduledStateChangesReply, ApiError> {
        let request = &call.request;
        let deployment_id = self
            .target(call.key(), request.fencing_token, request.holds_lease)
            .await?;
        let transitions = &self.inner.transitions;
        let cleared = loop {
            let current = transitions
                .get(&deployment_id)
                .await
                .map_err(transition_err)?;
            let fencing_token = stale(&deployment_id, &current, call.request.fencing_token)?;
            if current.transition.is_none() && fencing_token == current.fencing_token {
                break false;
            }
            if self.finish_claimed(&deployment_id, &current).await? {
                continue;
            }
            let had = current.transition.is_some();
            match transitions
                .remove(&deployment_id, fencing_token, current.revision)
                .await
            {
                Ok(()) if had => break true,
                Ok(()) => break false,
                Err(TransitionError::Conflict) => continue,
                Err(e) => return Err(transition_err(e)),
            }
        };
        self.inner
            .timers
            .sync(&deployment_id, transitions)
            .await
            .map_err(timer_err)?;
        tracing::info!(cleared, "cleared scheduled changes");
        Ok(ClearScheduledStateChangesReply { cleared })
    }

    /// A transition an apply has claimed is applied already, or about to be: complete that
    /// apply (idempotent) so that this call's reply comes after it, never before. True when
    /// there was one (the caller reads the transition again).
    async fn finish_claimed(
        &self,
        deployment_id: &str,
        current: &Current,
    ) -> Result<bool, ApiError> {
        if current.claimed().is_none() {
            return Ok(false);
        }
        self.settle_claimed(deployment_id, current)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot complete a change under way");
                ApiError::unavailable(format!(
                    "a change under way cannot be completed now ({e}); retry"
                ))
            })?;
        Ok(true)
    }

    #[tracing::instrument(skip_all, fields(deployment_id = %call.key()))]
    async fn get_state(&self, call: Call<GetStateRequest>) -> Result<GetStateReply, ApiError> {
        let key = call.key();
        ids::validate(ids::DEPLOYMENT, "deployment_id", key)?;
        let deployment = self.store().deployment(key).await?;
        let current = self
            .inner
            .transitions
            .get(key)
            .await
            .map_err(transition_err)?;
        Ok(GetStateReply {
            deployment_id: deployment.id,
            desired_state: deployment.desired_state.to_string(),
            pending: current.pending().map(|t| PendingTransition {
                nonce: t.nonce.clone(),
                state: t.state.clone(),
                fires_at_ms: t.fires_at_ms,
            }),
        })
    }
}

/// The token to store with a call carrying `token`, or a 409 when the deployment has seen a
/// newer one: the caller's project lease was taken over, and the newer holder's decision
/// about this deployment stands.
fn stale(deployment_id: &str, current: &Current, token: u64) -> Result<u64, ApiError> {
    current.fence(token).map_err(|seen| {
        tracing::warn!(token, seen, "refusing a call from a former lease holder");
        ApiError::conflict(format!(
            "{STALE_FENCING_TOKEN} {token} for deployment {deployment_id}: it has seen {seen}"
        ))
    })
}

fn reply(t: &Transition) -> ScheduleDesiredStateChangeReply {
    ScheduleDesiredStateChangeReply {
        nonce: t.nonce.clone(),
        state: t.state.clone(),
        fires_at_ms: t.fires_at_ms,
    }
}

fn transition_err(e: TransitionError) -> ApiError {
    tracing::warn!(error = %e, "transition store unavailable");
    ApiError::unavailable(format!("transition store unavailable: {e}"))
}

fn timer_err(e: TimerError) -> ApiError {
    tracing::warn!(error = %e, "timer stream unavailable");
    ApiError::unavailable(format!("timer stream unavailable: {e}"))
}
