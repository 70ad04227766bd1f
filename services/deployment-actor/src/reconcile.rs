//! Start-up and periodic repair of the one gap compare-and-set cannot close: a process that
//! dies between writing the transition (KV) and writing its schedule (stream), or between a
//! clear's KV delete and its purge. Every deployment with a stored transition or a waiting
//! schedule is checked ([`crate::timers::Timers::check`]): one with a transition and no
//! schedule, or a schedule and no transition, is synced, so each stored transition has its
//! timer and no stray timer survives.
//!
//! Each check also holds the stored transition's timer in memory, so a process that starts
//! holds every stored timer, and tidies away the claims applied timers left stored.
//!
//! Run at start-up, every `SLIPWAY_ACTOR_RECONCILE_EVERY`, and soon after the leader of
//! `SLIPWAY_TIMERS` changes: a failover is where a schedule could be lost (a new leader that
//! never had it), so the repair should not wait for the periodic run.

use std::{collections::HashSet, time::Duration};

use futures::{StreamExt, TryStreamExt};
use slipway_core::{subjects::timers::DEPLOYMENT_SCHEDULE_PREFIX as SCHEDULE_PREFIX, time::now_ms};
use slipway_nats::provision::TIMERS;

use crate::{transitions::Current, Actor};

const SYNCS_AT_ONCE: usize = 32;
const SETTLES_AT_ONCE: usize = 4;
/// How many stored transitions the reconcile holds at a time.
const CHUNK: usize = 1_024;

pub async fn run_periodically(actor: Actor, every: Duration) {
    loop {
        match reconcile(&actor).await {
            Ok(n) => tracing::info!(deployments = n, "timers reconciled"),
            Err(e) => tracing::warn!(error = %e, "cannot reconcile timers; will retry"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Looks at the leader of `SLIPWAY_TIMERS` every `every` and reconciles once it changed, or
/// once the stream answers again after it did not (no leader for a while). Retried at the
/// next look until a reconcile succeeds.
pub async fn on_leader_change(actor: Actor, every: Duration) {
    let mut known: Option<String> = None;
    let mut due = false;
    loop {
        tokio::time::sleep(every).await;
        let leader = match actor.inner.js.get_stream(TIMERS).await {
            Ok(stream) => stream
                .cached_info()
                .cluster
                .as_ref()
                .and_then(|c| c.leader.clone()),
            Err(_) => None,
        };
        let Some(leader) = leader else {
            due |= known.is_some();
            continue;
        };
        if known.as_ref().is_some_and(|k| *k != leader) {
            due = true;
        }
        known = Some(leader.clone());
        if due {
            match reconcile(&actor).await {
                Ok(n) => {
                    tracing::info!(%leader, deployments = n, "timers reconciled after a leader change");
                    due = false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reconcile timers after a leader change; will retry")
                }
            }
        }
    }
}

/// Returns how many deployments were looked at.
pub async fn reconcile(actor: &Actor) -> Result<usize, async_nats::Error> {
    let stream = actor.inner.js.get_stream(TIMERS).await?;
    let info = stream
        .info_with_subjects(format!("{SCHEDULE_PREFIX}>"))
        .await?;
    let subjects: Vec<(String, usize)> = info.try_collect().await?;
    // What is left of `scheduled` once checked is what has no stored transition.
    let mut scheduled: HashSet<String> = subjects
        .into_iter()
        .filter_map(|(s, _)| s.strip_prefix(SCHEDULE_PREFIX).map(str::to_string))
        .collect();

    // Every stored transition a chunk at a time (thousands are not all held at once), then
    // the deployments with a schedule and no transition.
    let tidy_before_ms = now_ms() - slipway_core::time::millis(actor.inner.tidy_claims_after);
    let mut stored = actor.inner.transitions.all().await?;
    let mut claims = vec![];
    let mut n = 0;
    while let Some(chunk) = stored.next_chunk(CHUNK).await? {
        n += chunk.len();
        let ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
        claims.extend(check_all(actor, chunk, &scheduled, tidy_before_ms).await?);
        for id in &ids {
            scheduled.remove(id);
        }
    }
    n += scheduled.len();
    let unstored: Vec<_> = scheduled
        .iter()
        .map(|id| (id.clone(), Current::none()))
        .collect();
    claims.extend(check_all(actor, unstored, &scheduled, tidy_before_ms).await?);

    // Then, a few at a time: tidying must not hold up the timers coming due meanwhile (a
    // restart in the middle of a storm finds thousands of claims).
    futures::stream::iter(claims)
        .map(|(id, current)| async move { actor.settle_claimed(&id, &current).await })
        .buffer_unordered(SETTLES_AT_ONCE)
        .try_collect::<()>()
        .await?;
    Ok(n)
}

/// Checks `deployments` concurrently: at start-up this is also what loads every stored timer
/// into memory, and the ones that came due while no actor ran wait for it. Returns the claims
/// due before `tidy_before_ms`, to settle.
async fn check_all(
    actor: &Actor,
    deployments: Vec<(String, Current)>,
    scheduled: &HashSet<String>,
    tidy_before_ms: i64,
) -> Result<Vec<(String, Current)>, async_nats::Error> {
    futures::stream::iter(deployments)
        .map(|(id, current)| {
            let has_schedule = scheduled.contains(&id);
            async move {
                let inner = &actor.inner;
                let claimed = inner
                    .timers
                    .check(&id, current, &inner.transitions, has_schedule)
                    .await?;
                let old = claimed.filter(|current| {
                    current
                        .claimed()
                        .is_some_and(|t| t.fires_at_ms <= tidy_before_ms)
                });
                Ok::<_, async_nats::Error>(old.map(|current| (id, current)))
            }
        })
        .buffer_unordered(SYNCS_AT_ONCE)
        .try_filter_map(|claim| async move { Ok(claim) })
        .try_collect()
        .await
}
