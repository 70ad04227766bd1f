//! Timers held in memory, so that a change is applied at its due time rather than when the
//! server's scheduler gets to it: nats-server re-arms its scheduler no sooner than every
//! 250 ms and fires one schedule at a time (~600/s here), so 10,000 timers due within 5 s
//! came out seconds late.
//!
//! The JetStream schedule stays the durable backstop: it is set `SLIPWAY_ACTOR_BACKSTOP_AFTER`
//! past the due time and cancelled once the change is applied, so it fires only when no
//! process held the timer (the one that did crashed) or applying it failed. Both paths claim
//! the stored transition by its nonce first, so whichever comes first applies it, once.
//!
//! What is held mirrors what [`crate::timers::Timers::sync`] or
//! [`crate::timers::Timers::check`] last saw stored for a deployment, so every process holds
//! the timers it scheduled, and a process that starts holds every stored one (its start-up
//! reconcile checks them all).

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use slipway_core::time::now_ms;
use tokio::sync::{Notify, Semaphore};

use crate::{apply::Applied, transitions::Current, Actor};

/// Which deployment is due when: at most one timer per deployment, each with what it fires
/// (`T`).
#[derive(Debug)]
pub struct Timetable<T> {
    by_deployment: HashMap<String, (i64, T)>,
    by_time: BTreeSet<(i64, String)>,
}

impl<T> Default for Timetable<T> {
    fn default() -> Self {
        Self {
            by_deployment: HashMap::new(),
            by_time: BTreeSet::new(),
        }
    }
}

impl<T> Timetable<T> {
    /// Holds `deployment_id`'s timer due at `at_ms`, replacing the one it had.
    pub fn arm(&mut self, deployment_id: &str, at_ms: i64, fires: T) {
        self.disarm(deployment_id);
        self.by_time.insert((at_ms, deployment_id.to_string()));
        self.by_deployment
            .insert(deployment_id.to_string(), (at_ms, fires));
    }

    pub fn disarm(&mut self, deployment_id: &str) {
        if let Some((at_ms, _)) = self.by_deployment.remove(deployment_id) {
            self.by_time.remove(&(at_ms, deployment_id.to_string()));
        }
    }

    /// Removes and returns every timer due at `now_ms`, earliest first.
    pub fn take_due(&mut self, now_ms: i64) -> Vec<(String, T)> {
        let mut due = Vec::new();
        while let Some((at_ms, _)) = self.by_time.first() {
            if *at_ms > now_ms {
                break;
            }
            let Some((_, deployment_id)) = self.by_time.pop_first() else {
                break;
            };
            if let Some((_, fires)) = self.by_deployment.remove(&deployment_id) {
                due.push((deployment_id, fires));
            }
        }
        due
    }

    /// When the earliest held timer is due.
    pub fn next_at(&self) -> Option<i64> {
        self.by_time.first().map(|(at_ms, _)| *at_ms)
    }

    pub fn len(&self) -> usize {
        self.by_deployment.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_deployment.is_empty()
    }
}

/// The process's timetable and the wake-up of the task that applies what comes due.
#[derive(Clone, Default)]
pub struct LocalTimers {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    table: Mutex<Timetable<Held>>,
    earlier: Notify,
}

/// What a held timer fires: the transition as it was seen stored, so that its apply can claim
/// it without reading it first, and the sequence of its backstop schedule when this process
/// published it, so that cancelling the backstop can never take a newer one (no read after).
#[derive(Debug, Clone)]
pub struct Held {
    pub seen: Current,
    pub backstop_seq: Option<u64>,
}

impl LocalTimers {
    /// Holds the timer of what is stored for the deployment now (`current`), if anything: a
    /// pending transition, not one already claimed by an apply. `backstop_seq` is the stream
    /// sequence of the transition's backstop schedule, when known.
    pub fn set(&self, deployment_id: &str, current: &Current, backstop_seq: Option<u64>) {
        let mut table = self.table();
        let before = table.next_at();
        match current.pending() {
            Some(t) => {
                let held = Held {
                    seen: current.clone(),
                    backstop_seq,
                };
                table.arm(deployment_id, t.fires_at_ms, held)
            }
            None => table.disarm(deployment_id),
        }
        // The applying task sleeps until the earliest timer it knew of.
        if table
            .next_at()
            .is_some_and(|n| before.is_none_or(|b| n < b))
        {
            self.shared.earlier.notify_one();
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Timetable<Held>> {
        // The table stays consistent across a panic (each method completes its two writes
        // before anything can panic), so a poisoned lock is still usable.
        self.shared
            .table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Applies held timers as they come due, at most `concurrency` at once; runs for ever.
pub async fn run(actor: Actor, concurrency: usize) {
    let local = actor.inner.timers.local().clone();
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    loop {
        let (due, next_at) = {
            let mut table = local.table();
            (table.take_due(now_ms()), table.next_at())
        };
        for (deployment_id, held) in due {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let actor = actor.clone();
            tokio::spawn(async move {
                apply_due(&actor, &deployment_id, held).await;
                drop(permit);
            });
        }
        let notified = local.shared.earlier.notified();
        match next_at {
            Some(at_ms) => {
                let wait = Duration::from_millis((at_ms - now_ms()).max(0) as u64);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = notified => {}
                }
            }
            None => notified.await,
        }
    }
}

/// Applies a due timer and cancels its backstop. A failure (a failover, say) is retried here
/// for as long as [`slipway_nats::retry::failover`] rides out, then left to the backstop, which
/// fires `SLIPWAY_ACTOR_BACKSTOP_AFTER` after the due time and is retried until it succeeds.
/// Retried here because once claimed, a change whose backstop a failover lost would otherwise
/// wait for the reconcile to tidy its claim.
#[tracing::instrument(skip_all, fields(deployment_id = %deployment_id))]
async fn apply_due(actor: &Actor, deployment_id: &str, held: Held) {
    let Some(transition) = held.seen.transition.clone() else {
        return;
    };
    let mut outcome = actor.apply_seen(deployment_id, held.seen).await;
    let mut delays = slipway_nats::retry::failover();
    while let Err(e) = &outcome {
        let Some(delay) = delays.next() else {
            tracing::warn!(error = %e, "cannot apply a due change; the backstop schedule will retry it");
            return;
        };
        tracing::debug!(error = %e, "cannot apply a due change; retrying");
        tokio::time::sleep(delay).await;
        outcome = actor.complete_held(deployment_id, &transition.nonce).await;
    }
    match outcome {
        // Whoever replaced, cleared or claimed the transition has its timers in hand.
        Ok(Applied::Stale | Applied::UnderWay) | Err(_) => {}
        Ok(outcome) => {
            tracing::debug!(?outcome, "due change handled");
            if let Some(d) = slipway_core::fault::pause("actor.before_backstop_cancelled") {
                tokio::time::sleep(d).await;
            }
            let inner = &actor.inner;
            if let Err(e) = inner
                .timers
                .mark_applied(deployment_id, &transition, held.backstop_seq)
                .await
            {
                tracing::warn!(error = %e, "applied; cannot cancel the backstop schedule, which will fire and complete it again");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(due: &[(String, &'static str)]) -> Vec<(String, &'static str)> {
        due.to_vec()
    }

    fn due(id: &str, fires: &'static str) -> (String, &'static str) {
        (id.to_string(), fires)
    }

    #[test]
    fn timers_come_due_in_time_order_and_only_once() {
        let mut t = Timetable::default();
        t.arm("dep_b", 200, "n2");
        t.arm("dep_a", 100, "n1");
        t.arm("dep_c", 300, "n3");
        assert_eq!(t.next_at(), Some(100));
        assert!(t.take_due(99).is_empty());
        assert_eq!(
            ids(&t.take_due(200)),
            [due("dep_a", "n1"), due("dep_b", "n2")]
        );
        assert!(t.take_due(200).is_empty(), "taken once");
        assert_eq!(t.next_at(), Some(300));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_deployment_holds_one_timer_the_last_armed() {
        let mut t = Timetable::default();
        t.arm("dep_a", 100, "old");
        t.arm("dep_a", 500, "new");
        assert_eq!(t.len(), 1);
        assert!(t.take_due(400).is_empty(), "the replaced timer is gone");
        assert_eq!(ids(&t.take_due(500)), [due("dep_a", "new")]);
    }

    #[test]
    fn a_disarmed_timer_never_comes_due() {
        let mut t = Timetable::default();
        t.arm("dep_a", 100, "n1");
        t.arm("dep_b", 100, "n2");
        t.disarm("dep_a");
        t.disarm("dep_unknown");
        assert_eq!(ids(&t.take_due(1_000)), [due("dep_b", "n2")]);
        assert!(t.is_empty());
        assert_eq!(t.next_at(), None);
    }
}
