//! ChangeDesiredState: apply a transition whose time has come (fired, or `delay_ms = 0`).
//!
//! Exactly once, even across crashes: the DB transaction records the nonce it applied, so a
//! redelivery after a crash skips the write and only finishes what follows it (desired state
//! for agents, which never goes back a version; the event, deduplicated by a message id
//! derived from the nonce; removal of the transition, by compare-and-set).

use slipway_core::{
    events::{DesiredStateChanged, Event},
    fault,
    state::DesiredState,
    time::now_ms,
};
use slipway_nats::{
    events,
    krane::{put_desired_deployment, remove_desired_deployment, DesiredError},
};
use slipway_store::{ApplyOutcome, Deployment, StoreError, Topology};

use crate::{
    transitions::{Current, Transition, TransitionError},
    Actor,
};

/// What became of a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Written now.
    Changed,
    /// Written by an earlier delivery; the rest was completed.
    Completed,
    /// No stored transition, or a newer one: a cleared or superseded schedule.
    Stale,
    /// Claimed by another apply under way, and left to it ([`OnClaimed::Leave`]).
    UnderWay,
    /// The deployment serves traffic (live, or behind a live or environment route): refused,
    /// left untouched.
    RefusedServing,
    /// The deployment no longer exists.
    Gone,
}

/// What to do with a transition another apply has claimed and not yet removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnClaimed {
    /// Complete it (idempotent): its process may have died, or the caller must not reply
    /// before it is done.
    Complete,
    /// Leave it: a timer held in memory that finds its change under way elsewhere; should
    /// that process die, the backstop schedule completes it.
    Leave,
}

/// What becomes of the stored transition once its change is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Afterwards {
    /// Removed (compare-and-set): the caller reads the key again, or a fired backstop is done.
    Remove,
    /// Left as claimed: a timer held in memory, whose caller cancels the backstop next, so
    /// nothing applies it again. The claim is the record that the change was applied, and
    /// saves a write on the bucket every timer of a storm writes to; the next schedule or
    /// clear of the deployment, or the reconcile, settles it ([`Actor::settle_claimed`]).
    KeepClaim,
}

/// A failure worth retrying (the store or NATS is unavailable).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Transition(#[from] TransitionError),
    #[error(transparent)]
    Desired(#[from] DesiredError),
    #[error(transparent)]
    Event(#[from] events::PublishError),
    #[error(transparent)]
    Timer(#[from] crate::timers::TimerError),
}

impl Actor {
    pub async fn apply(
        &self,
        deployment_id: &str,
        nonce: &str,
        on_claimed: OnClaimed,
    ) -> Result<Applied, ApplyError> {
        self.apply_from(deployment_id, nonce, on_claimed, Afterwards::Remove, None)
            .await
    }

    /// Applies the transition `seen` stored for the deployment (a timer held in memory):
    /// the claim is tried against it at once, and only a conflict reads the key again. The
    /// claim stays stored ([`Afterwards::KeepClaim`]).
    pub async fn apply_seen(
        &self,
        deployment_id: &str,
        seen: Current,
    ) -> Result<Applied, ApplyError> {
        let Some(nonce) = seen.nonce().map(str::to_string) else {
            return Ok(Applied::Stale);
        };
        let (leave, keep) = (OnClaimed::Leave, Afterwards::KeepClaim);
        self.apply_from(deployment_id, &nonce, leave, keep, Some(seen))
            .await
    }

    /// Applies a held timer's transition again after a failure: completes it should this
    /// process have claimed it already.
    pub async fn complete_held(
        &self,
        deployment_id: &str,
        nonce: &str,
    ) -> Result<Applied, ApplyError> {
        let (complete, keep) = (OnClaimed::Complete, Afterwards::KeepClaim);
        self.apply_from(deployment_id, nonce, complete, keep, None)
            .await
    }

    #[tracing::instrument(skip(self, seen), fields(deployment_id = %deployment_id, nonce = %nonce))]
    async fn apply_from(
        &self,
        deployment_id: &str,
        nonce: &str,
        on_claimed: OnClaimed,
        afterwards: Afterwards,
        mut seen: Option<Current>,
    ) -> Result<Applied, ApplyError> {
        // Claim the transition first (compare-and-set): a clear or a newer schedule that
        // comes after the claim completes this apply before replying; one that came before
        // it makes the claim fail, and the apply is a no-op.
        let (transition, fencing_token, revision) = loop {
            let current = match seen.take() {
                Some(current) => current,
                None => self.inner.transitions.get(deployment_id).await?,
            };
            let Some(transition) = current.transition.filter(|t| t.nonce == nonce) else {
                tracing::debug!("stale or cleared transition: no-op");
                return Ok(Applied::Stale);
            };
            if transition.applying {
                if on_claimed == OnClaimed::Leave {
                    tracing::debug!("claimed by an apply under way: left to it");
                    return Ok(Applied::UnderWay);
                }
                break (transition, current.fencing_token, current.revision);
            }
            let claimed = Transition {
                applying: true,
                ..transition
            };
            match self
                .inner
                .transitions
                .put(
                    deployment_id,
                    &claimed,
                    current.fencing_token,
                    current.revision,
                )
                .await
            {
                Ok(revision) => break (claimed, current.fencing_token, revision),
                Err(TransitionError::Conflict) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(d) = fault::pause("actor.after_claim") {
            tokio::time::sleep(d).await;
        }
        let state: DesiredState = match transition.state.parse() {
            Ok(s) => s,
            Err(e) => {
                // Only validated states are ever stored; drop anything else rather than loop.
                tracing::error!(state = %transition.state, error = %e, "stored transition has an unknown state; dropping it");
                self.remove_transition(deployment_id, fencing_token, revision)
                    .await?;
                return Ok(Applied::Stale);
            }
        };

        let outcome = self
            .inner
            .store
            .apply_desired_state(deployment_id, state, nonce, now_ms())
            .await?;
        fault::point("actor.after_db_commit");
        let applied = match outcome {
            ApplyOutcome::NotFound => {
                tracing::info!("deployment no longer exists: no-op");
                Applied::Gone
            }
            ApplyOutcome::ServesTraffic => {
                tracing::warn!(state = %state, "refusing to stop a deployment that serves traffic");
                Applied::RefusedServing
            }
            ApplyOutcome::Applied {
                deployment,
                topology,
                ..
            } => {
                self.publish(&deployment, &topology, state, nonce).await?;
                tracing::info!(state = %state, "desired state changed");
                Applied::Changed
            }
            ApplyOutcome::AlreadyApplied {
                deployment,
                topology,
            } => {
                self.publish(&deployment, &topology, state, nonce).await?;
                tracing::info!(state = %state, "desired state change completed after a redelivery");
                Applied::Completed
            }
        };
        fault::point("actor.before_transition_removed");
        if afterwards == Afterwards::Remove {
            self.remove_transition(deployment_id, fencing_token, revision)
                .await?;
        }
        Ok(applied)
    }

    /// Settles a transition found claimed (`current`). If its apply from memory is done (its
    /// schedule was replaced by the applied marker, its last step), the claim is only removed:
    /// completing it again would send its event again, a second one once the event stream's
    /// duplicate window has passed. Any other claim is completed (idempotent), which removes
    /// it. A conflict is left to the caller, which reads the key again.
    pub async fn settle_claimed(
        &self,
        deployment_id: &str,
        current: &Current,
    ) -> Result<(), ApplyError> {
        let Some(claimed) = current.claimed() else {
            return Ok(());
        };
        let marker = self.inner.timers.schedule_of(deployment_id).await?;
        if marker.is_some_and(|(m, _)| m.applied && m.nonce == claimed.nonce) {
            return self
                .remove_transition(deployment_id, current.fencing_token, current.revision)
                .await;
        }
        self.apply(deployment_id, &claimed.nonce, OnClaimed::Complete)
            .await
            .map(drop)
    }

    /// Removes the applied transition unless a newer one was written meanwhile.
    async fn remove_transition(
        &self,
        deployment_id: &str,
        fencing_token: u64,
        revision: u64,
    ) -> Result<(), ApplyError> {
        match self
            .inner
            .transitions
            .remove(deployment_id, fencing_token, revision)
            .await
        {
            Ok(()) | Err(TransitionError::Conflict) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Tells the region agents and the event stream.
    async fn publish(
        &self,
        deployment: &Deployment,
        topology: &[Topology],
        state: DesiredState,
        nonce: &str,
    ) -> Result<(), ApplyError> {
        // The topology rows carry the new desired status (started/stopped) already; an
        // archived deployment's documents go, and with them what the agents keep of it.
        for row in topology {
            if state == DesiredState::Archived {
                remove_desired_deployment(&self.inner.desired, &row.region, &deployment.id).await?;
            } else {
                let doc = self.inner.store.desired_for(deployment, row)?;
                put_desired_deployment(&self.inner.desired, &row.region, &doc).await?;
            }
        }

        let event = Event {
            kind: "desired_state",
            at_ms: now_ms(),
            workspace_id: deployment.workspace_id.clone(),
            project_id: deployment.project_id.clone(),
            deployment_id: deployment.id.clone(),
            environment_slug: deployment.environment_slug.clone(),
            detail: DesiredStateChanged {
                desired_state: state.as_str().to_string(),
                nonce: nonce.to_string(),
            },
        };
        let msg_id = events::message_id("desired_state", &deployment.id, nonce);
        events::publish(&self.inner.js, &event, &msg_id).await?;
        Ok(())
    }
}
