//! Start-up and periodic repair of the one gap compare-and-set cannot close: a process that
//! dies between writing the transition (KV) and writing its schedule (stream), or between a
//! clear's KV delete and its purge. Every deployment with a stored transition or a waiting
//! schedule is synced, so each stored transition has its timer and no stray timer survives.

use std::{collections::BTreeSet, time::Duration};

use futures::TryStreamExt;
use slipway_core::{
    subjects::timers::DEPLOYMENT_SCHEDULE_PREFIX as SCHEDULE_PREFIX, transition_keys,
};
use slipway_nats::provision::TIMERS;

use crate::Actor;

pub async fn run_periodically(actor: Actor, every: Duration) {
    loop {
        match reconcile(&actor).await {
            Ok(n) => tracing::info!(deployments = n, "timers reconciled"),
            Err(e) => tracing::warn!(error = %e, "cannot reconcile timers; will retry"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Returns how many deployments were synced.
pub async fn reconcile(actor: &Actor) -> Result<usize, async_nats::Error> {
    let mut deployments = BTreeSet::new();
    let keys: Vec<String> = actor.inner.transitions.keys().await?.try_collect().await?;
    deployments.extend(
        keys.iter()
            .filter_map(|k| transition_keys::deployment_of(k))
            .map(str::to_string),
    );

    let stream = actor.inner.js.get_stream(TIMERS).await?;
    let info = stream
        .info_with_subjects(format!("{SCHEDULE_PREFIX}>"))
        .await?;
    let subjects: Vec<(String, usize)> = info.try_collect().await?;
    deployments.extend(
        subjects
            .into_iter()
            .filter_map(|(s, _)| s.strip_prefix(SCHEDULE_PREFIX).map(str::to_string)),
    );

    for deployment_id in &deployments {
        actor
            .inner
            .timers
            .sync(deployment_id, &actor.inner.transitions)
            .await?;
    }
    Ok(deployments.len())
}
