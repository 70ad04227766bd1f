//! An actor's timer, on two sides: held in memory by the process (see [`crate::timetable`]),
//! and durably as one schedule subject per deployment in `SLIPWAY_TIMERS` (`Nats-Schedule:
//! @at …`, the backstop, set `SLIPWAY_ACTOR_BACKSTOP_AFTER` past the due time), firing into
//! the deployment's fired subject. A new message on the schedule subject replaces the
//! schedule; a purge cancels it.

use std::time::Duration;

use async_nats::{
    header::{
        NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_SCHEDULE, NATS_SCHEDULE_TARGET, NATS_SCHEDULE_TTL,
    },
    jetstream, HeaderMap,
};
use serde::{Deserialize, Serialize};
use slipway_core::time::to_system_time;
use slipway_nats::provision::TIMERS;

use crate::{
    timetable::LocalTimers,
    transitions::{Current, Transition, TransitionError, Transitions},
};

/// How long a fired message stays in the stream. Deleting each one once applied contends
/// with the server's scheduler on the same stream (measured: 10,000 due at once fired ~100×
/// later), so they expire instead. One that expired unapplied still has its stored transition,
/// whose timer the reconcile puts back.
const FIRED_TTL: &str = "1h";

pub use slipway_core::subjects::timers::{
    deployment_fired as fired_subject, deployment_schedule as schedule_subject,
};

/// The body of a schedule, delivered unchanged on the fired subject; or, with `applied`, of
/// the plain message that replaced the schedule once its change was applied from memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fired {
    pub deployment_id: String,
    pub nonce: String,
    pub state: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub applied: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TimerError {
    #[error("SLIPWAY_TIMERS: {0}")]
    JetStream(async_nats::Error),
    #[error(transparent)]
    Transition(#[from] TransitionError),
}

fn js_err(e: impl Into<async_nats::Error>) -> TimerError {
    TimerError::JetStream(e.into())
}

#[derive(Clone)]
pub struct Timers {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    local: LocalTimers,
    backstop_after: Duration,
}

impl Timers {
    pub async fn new(js: jetstream::Context, backstop_after: Duration) -> Result<Self, TimerError> {
        let stream = js.get_stream(TIMERS).await.map_err(js_err)?;
        Ok(Self {
            js,
            stream,
            local: LocalTimers::default(),
            backstop_after,
        })
    }

    /// The timers this process holds in memory.
    pub fn local(&self) -> &LocalTimers {
        &self.local
    }

    /// Writes (or replaces) the deployment's backstop schedule for `t`; returns its sequence.
    async fn publish(&self, deployment_id: &str, t: &Transition) -> Result<u64, TimerError> {
        let backstop_ms = slipway_core::time::millis(self.backstop_after);
        let at = humantime::format_rfc3339_millis(to_system_time(
            t.fires_at_ms.saturating_add(backstop_ms),
        ));
        let mut headers = HeaderMap::new();
        headers.insert(NATS_SCHEDULE, format!("@at {at}").as_str());
        headers.insert(NATS_SCHEDULE_TARGET, fired_subject(deployment_id).as_str());
        headers.insert(NATS_SCHEDULE_TTL, FIRED_TTL);
        let body = serde_json::to_vec(&Fired {
            deployment_id: deployment_id.to_string(),
            nonce: t.nonce.clone(),
            state: t.state.clone(),
            applied: false,
        })
        .map_err(js_err)?;
        let ack = self
            .js
            .publish_with_headers(schedule_subject(deployment_id), headers, body.into())
            .await
            .map_err(js_err)?
            .await
            .map_err(js_err)?;
        Ok(ack.sequence)
    }

    /// Removes the deployment's schedule (or applied marker), if any.
    async fn cancel(&self, deployment_id: &str) -> Result<(), TimerError> {
        self.stream
            .purge()
            .filter(schedule_subject(deployment_id))
            .await
            .map_err(js_err)?;
        Ok(())
    }

    /// What the deployment's schedule subject holds (a schedule or an applied marker), with
    /// its sequence.
    pub async fn schedule_of(
        &self,
        deployment_id: &str,
    ) -> Result<Option<(Fired, u64)>, TimerError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        match self
            .stream
            .get_last_raw_message_by_subject(&schedule_subject(deployment_id))
            .await
        {
            Ok(message) => {
                let fired: Fired = serde_json::from_slice(&message.payload).map_err(js_err)?;
                Ok(Some((fired, message.sequence)))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(js_err(e)),
        }
    }

    /// After a timer held in memory was applied: replaces its backstop schedule with a plain
    /// message saying so (a message without `Nats-Schedule` on a schedule's subject cancels
    /// it), written only if the subject still holds that schedule (expected last subject
    /// sequence: `backstop_seq`, or the schedule read now), so a newer schedule always stays.
    /// One write, like a purge; and the marker tells a settle that the apply is done
    /// ([`crate::Actor::settle_claimed`]).
    pub async fn mark_applied(
        &self,
        deployment_id: &str,
        t: &Transition,
        backstop_seq: Option<u64>,
    ) -> Result<(), TimerError> {
        let expected = match backstop_seq {
            Some(seq) => seq,
            None => match self.schedule_of(deployment_id).await? {
                Some((fired, seq)) if fired.nonce == t.nonce && !fired.applied => seq,
                _ => return Ok(()),
            },
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string().as_str(),
        );
        let body = serde_json::to_vec(&Fired {
            deployment_id: deployment_id.to_string(),
            nonce: t.nonce.clone(),
            state: t.state.clone(),
            applied: true,
        })
        .map_err(js_err)?;
        let written = async {
            self.js
                .publish_with_headers(schedule_subject(deployment_id), headers, body.into())
                .await?
                .await
        }
        .await;
        match written {
            Ok(_) => Ok(()),
            // A newer schedule (or the same one written again) is there: it stays.
            Err(e) if slipway_nats::kv::is_conflict(&e) => Ok(()),
            Err(e) => Err(js_err(e)),
        }
    }

    /// The reconcile's look at one deployment, as it found it stored (`current`): a pending transition with a schedule, or
    /// neither, only needs its timer held in memory (a schedule of an older nonce fires as a
    /// stale no-op that syncs, and the timer held applies the stored one on time); a
    /// transition without a schedule (its writer died before publishing it, or a failover
    /// lost it) or a schedule without a transition is synced. A claimed transition is
    /// returned for the caller to settle once it is old enough (most likely applied from
    /// memory, the claim left stored).
    pub async fn check(
        &self,
        deployment_id: &str,
        current: Current,
        transitions: &Transitions,
        has_schedule: bool,
    ) -> Result<Option<Current>, TimerError> {
        if current.claimed().is_some() {
            return Ok(Some(current));
        }
        if current.transition.is_some() != has_schedule {
            self.sync(deployment_id, transitions).await?;
            return Ok(None);
        }
        self.local.set(deployment_id, &current, None);
        Ok(None)
    }

    /// Brings the schedule, and the timer held in memory, in line with the stored transition
    /// (a claimed one keeps whatever schedule it has).
    /// Concurrent operations can finish their stream writes in another order than their KV
    /// writes, so after writing, re-read the KV and repeat until what was written is what is
    /// stored: the last stream write is then always checked against the latest transition,
    /// and the two agree once the operations settle.
    pub async fn sync(
        &self,
        deployment_id: &str,
        transitions: &Transitions,
    ) -> Result<(), TimerError> {
        let current = transitions.get(deployment_id).await?;
        self.sync_from(deployment_id, transitions, current).await
    }

    /// [`Timers::sync`] from `current`, what the caller has just written (no read first).
    pub async fn sync_from(
        &self,
        deployment_id: &str,
        transitions: &Transitions,
        mut current: Current,
    ) -> Result<(), TimerError> {
        loop {
            let backstop_seq = match &current.transition {
                // Claimed: its apply cancels its own backstop once done, or, should that apply
                // have died, the backstop completes it. Left alone either way.
                Some(t) if t.applying => None,
                Some(t) => Some(self.publish(deployment_id, t).await?),
                None => {
                    self.cancel(deployment_id).await?;
                    None
                }
            };
            let now = transitions.get(deployment_id).await?;
            if now.nonce() == current.nonce() {
                self.local.set(deployment_id, &now, backstop_seq);
                return Ok(());
            }
            current = now;
        }
    }
}
