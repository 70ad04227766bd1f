//! ScaleDownIdlePreviewDeployments (BEHAVIOUR.md): a durable workflow started by the
//! JetStream cron schedule `slipway.timers.schedule.cron.scale_down_idle_previews` (one
//! workflow per fire, its id derived from the fired message, so several orchestrators start
//! it once) and by `scale_down_idle_previews`. Candidates: `ready`, desired `running`
//! deployments of `preview` environments created and updated before the idle window, paged
//! 100 environments at a time; kept if `SLIPWAY_TRAFFIC` shows a request in the window;
//! the rest go to standby through the actor — but only if an edge's heartbeat shows it was
//! watching traffic over the whole window (no edge running is not the same as no traffic).
//! If the traffic source cannot be read, the run fails and nothing is scaled down (the next
//! fire tries again).
//!
//! Each run also sweeps the lifecycle (BEHAVIOUR.md "Every deployment gets an end"): a
//! deployment outside `preview` that serves nothing and waits for nothing goes to standby
//! after the standby delay (workflows do this as they supersede; the sweep catches what a
//! crash left behind), and one in standby for the archive window is archived.

use std::time::Duration;

use async_nats::jetstream::{self, stream::LastRawMessageErrorKind};
use serde::{Deserialize, Serialize};
use slipway_core::{
    routes::EdgeHeartbeat,
    time::{millis, SharedClock},
};
use slipway_nats::provision::TRAFFIC;
use slipway_store::{Among, Store};
use slipway_workflow::{Context, StepError, StepResultExt, Workflow, WorkflowError};

use crate::{
    clients::{actor::Fence, routing::Routing},
    workflows::handover::Handover,
};

/// Environments per page.
pub const PAGE: u32 = 100;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScaleDownInput {
    /// `cron` or `request`, for the logs.
    pub trigger: String,
}

/// What `SLIPWAY_TRAFFIC` holds per deployment (API.md).
#[derive(Debug, Deserialize)]
struct TrafficReport {
    window_end_ms: i64,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Swept {
    /// Idle previews sent to standby.
    pub scaled_down: Vec<String>,
    /// Why no preview was scaled down, when there was no evidence of idleness.
    pub scale_down_skipped: Option<String>,
    /// Deployments serving nothing, now on their way to standby after the standby delay.
    pub standby: Vec<String>,
    /// Deployments archived after the archive window in standby.
    pub archived: Vec<String>,
}

/// The scale-down workflow and what it needs.
pub struct ScaleDown {
    pub(crate) store: Store,
    /// Settles what serves nothing; its actor client schedules.
    pub(crate) handover: Handover,
    /// Removes the routes of what is archived.
    pub(crate) routing: Routing,
    /// Where `SLIPWAY_TRAFFIC` is read.
    pub(crate) js: jetstream::Context,
    /// How long a preview may go without a request before it is idle.
    pub(crate) idle_window: Duration,
    /// How long a deployment stays in standby before it is archived.
    pub(crate) archive_after: Duration,
    /// How long a finished workflow's record is kept: its commit's rows go after as long.
    pub(crate) workflow_retention: Duration,
    pub(crate) clock: SharedClock,
}

impl Workflow for ScaleDown {
    const KIND: &'static str = "scale_down_idle_previews";
    type Input = ScaleDownInput;
    type Output = Swept;

    async fn run(&self, ctx: &mut Context, input: ScaleDownInput) -> Result<Swept, WorkflowError> {
        let o = self;
        let idle_before: i64 = ctx
            .step("now", || async {
                Ok(o.clock.now_ms() - millis(o.idle_window))
            })
            .await?;
        let mut candidates: Vec<String> = Vec::new();
        let mut after: Option<String> = None;
        for page in 0.. {
            let (found, next): (Vec<String>, Option<String>) = ctx
                .step(&format!("page_{page}"), || async {
                    o.store
                        .idle_preview_candidates(after.as_deref(), PAGE, idle_before)
                        .await
                        .step_err()
                })
                .await?;
            candidates.extend(found);
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        let (idle, skipped): (Vec<String>, Option<String>) = ctx
            .step("idle", || o.without_traffic(&candidates, idle_before))
            .await?;
        let key = format!("scale_down.{}", ctx.workflow_id());
        ctx.step("scale_down", || async {
            for id in &idle {
                o.handover
                    .actor
                    .schedule(id, Duration::ZERO, "standby", &key, Fence::None)
                    .await?;
            }
            Ok(())
        })
        .await?;
        tracing::info!(trigger = %input.trigger, candidates = candidates.len(), scaled_down = idle.len(), "idle previews scaled down");
        let standby = self.sweep_unserving(ctx).await?;
        let archived = self.archive_old_standbys(ctx).await?;
        // Idempotency keys past their window answer nothing any more.
        let purged: u64 = ctx
            .step("purge_requests", || async {
                let now = o.clock.now_ms();
                o.store.purge_deployment_requests(now).await.step_err()
            })
            .await?;
        if purged > 0 {
            tracing::info!(purged, "idempotency keys past their window removed");
        }
        // What commits did is read only while their workflow may still run them again: not
        // once its record has gone.
        let forgotten: u64 = ctx
            .step("purge_commits", || async {
                let before = o.clock.now_ms() - millis(o.workflow_retention);
                o.store.purge_commits(before).await.step_err()
            })
            .await?;
        if forgotten > 0 {
            tracing::info!(
                forgotten,
                "records of commits older than the workflow retention removed"
            );
        }
        Ok(Swept {
            scaled_down: idle,
            scale_down_skipped: skipped,
            standby,
            archived,
        })
    }
}

impl ScaleDown {
    /// Steps `standby_<page>`: every deployment that serves nothing and waits for nothing
    /// goes to standby after the standby delay (unfenced: the actor refuses to stop whatever
    /// traffic has moved to by then).
    async fn sweep_unserving(&self, ctx: &mut Context) -> Result<Vec<String>, WorkflowError> {
        let key = format!("sweep.{}", ctx.workflow_id());
        let key = &key;
        paged(ctx, "standby", |after| async move {
            let among = Among::After(after.as_deref());
            let ids = self
                .store
                .unserving_deployments(among, PAGE)
                .await
                .step_err()?;
            let found = self
                .handover
                .settle(Among::Ids(&ids), key, Fence::None)
                .await?;
            Ok((found, last_of_full_page(&ids)))
        })
        .await
    }

    /// Steps `archive_before` and `archive_<page>`: every deployment in standby since before
    /// the archive window is archived (desired state `archived`, through its actor, at once).
    async fn archive_old_standbys(&self, ctx: &mut Context) -> Result<Vec<String>, WorkflowError> {
        let before: i64 = ctx
            .step("archive_before", || async {
                Ok(self.clock.now_ms() - millis(self.archive_after))
            })
            .await?;
        let key = format!("archive.{}", ctx.workflow_id());
        let key = &key;
        paged(ctx, "archive", |after| async move {
            let among = Among::After(after.as_deref());
            let ids = self
                .store
                .standby_since(before, among, PAGE)
                .await
                .step_err()?;
            let mut archived = Vec::new();
            for id in &ids {
                if self.archive(id, key).await? {
                    archived.push(id.clone());
                }
            }
            Ok((archived, last_of_full_page(&ids)))
        })
        .await
    }

    /// Archives a deployment in standby: its routes go first (so nothing writes their entries
    /// back once its agents let go of it), then the actor archives it, which removes its
    /// desired documents (the agents remove their reports). False when it was woken meanwhile
    /// (its routes stay).
    async fn archive(&self, id: &str, key: &str) -> Result<bool, StepError> {
        let d = self.store.deployment(id).await.step_err()?;
        match self.routing.remove_routes(&d.project_id, id).await {
            Ok(_) => {}
            Err(StepError::Terminal(why)) => {
                tracing::info!(deployment = %id, %why, "not archived");
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        let actor = &self.handover.actor;
        actor
            .schedule(id, Duration::ZERO, "archived", key, Fence::None)
            .await?;
        tracing::info!(deployment = %id, "in standby for the archive window: archived");
        Ok(true)
    }

    /// The candidates with no request reported since `idle_before`, or none and why when
    /// no edge watched traffic over the whole window. Any failure to read the traffic source
    /// is terminal: nothing is scaled down on a guess.
    async fn without_traffic(
        &self,
        candidates: &[String],
        idle_before: i64,
    ) -> Result<(Vec<String>, Option<String>), StepError> {
        if candidates.is_empty() {
            return Ok((vec![], None));
        }
        let unreadable = |e: String| {
            StepError::terminal(format!(
                "cannot read traffic from {TRAFFIC}: {e}; nothing scaled down"
            ))
        };
        let mut stream = self
            .js
            .get_stream(TRAFFIC)
            .await
            .map_err(|e| unreadable(e.to_string()))?;
        // Silence is idleness only if an edge was listening all along.
        let heartbeats = edge_heartbeats(&mut stream)
            .await
            .map_err(|e| unreadable(e.to_string()))?;
        let now = self.clock.now_ms();
        if !heartbeats.iter().any(|h| h.watched(idle_before, now)) {
            let why = format!(
                "no edge has watched traffic over the whole idle window ({} edge(s) heard from): nothing is scaled down",
                heartbeats.len()
            );
            tracing::warn!("{why}");
            return Ok((vec![], Some(why)));
        }
        let mut idle = Vec::new();
        for id in candidates {
            match stream
                .get_last_raw_message_by_subject(&slipway_core::subjects::traffic(id))
                .await
            {
                Ok(message) => {
                    let report: TrafficReport = serde_json::from_slice(&message.payload)
                        .map_err(|e| unreadable(format!("report of {id}: {e}")))?;
                    if is_idle(Some(&report), idle_before) {
                        idle.push(id.clone());
                    }
                }
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                    if is_idle(None, idle_before) {
                        idle.push(id.clone());
                    }
                }
                Err(e) => return Err(unreadable(e.to_string())),
            }
        }
        Ok((idle, None))
    }
}

/// The last heartbeat of every edge that sent one.
async fn edge_heartbeats(
    stream: &mut async_nats::jetstream::stream::Stream,
) -> Result<Vec<EdgeHeartbeat>, async_nats::Error> {
    let prefix = slipway_core::subjects::EDGE_HEARTBEATS_PREFIX;
    let subjects: Vec<String> = {
        use futures::TryStreamExt;
        let info = stream.info_with_subjects(format!("{prefix}>")).await?;
        info.try_collect::<Vec<(String, usize)>>()
            .await?
            .into_iter()
            .map(|(subject, _)| subject)
            .collect()
    };
    let mut heartbeats = Vec::new();
    for subject in subjects {
        let message = stream.get_last_raw_message_by_subject(&subject).await?;
        match serde_json::from_slice(&message.payload) {
            Ok(heartbeat) => heartbeats.push(heartbeat),
            Err(e) => {
                tracing::warn!(%subject, error = %e, "unreadable edge heartbeat; ignoring it")
            }
        }
    }
    Ok(heartbeats)
}

/// Runs `page` as journaled steps `<name>_0`, `<name>_1`, … (each given where the last
/// ended, returning what it did and where the next starts) until one says there is no next;
/// what they did, in order.
async fn paged<F, Fut>(ctx: &mut Context, name: &str, page: F) -> Result<Vec<String>, WorkflowError>
where
    F: Fn(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<String>, Option<String>), StepError>>,
{
    let mut done = Vec::new();
    let mut after: Option<String> = None;
    for n in 0.. {
        let (found, next): (Vec<String>, Option<String>) = ctx
            .step(&format!("{name}_{n}"), || page(after.clone()))
            .await?;
        done.extend(found);
        match next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    Ok(done)
}

/// The last id of a full page: where the next page starts.
fn last_of_full_page(ids: &[String]) -> Option<String> {
    (ids.len() == PAGE as usize).then(|| ids[ids.len() - 1].clone())
}

/// Whether a candidate whose last traffic report is `last` served no request since
/// `idle_before`.
fn is_idle(last: Option<&TrafficReport>, idle_before: i64) -> bool {
    last.is_none_or(|r| r.window_end_ms < idle_before)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_is_no_request_reported_since_the_window_began() {
        let report = |window_end_ms| TrafficReport { window_end_ms };
        assert!(is_idle(Some(&report(999)), 1_000));
        assert!(!is_idle(Some(&report(1_000)), 1_000));
        assert!(!is_idle(Some(&report(5_000)), 1_000));
        assert!(is_idle(None, 1_000), "never reported");
    }
}
