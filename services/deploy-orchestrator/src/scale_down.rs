//! ScaleDownIdlePreviewDeployments (BEHAVIOUR.md): a durable workflow started by the
//! JetStream cron schedule `slipway.timers.schedule.cron.scale_down_idle_previews` (one
//! workflow per fire, its id derived from the fired message, so several orchestrators start
//! it once) and by `scale_down_idle_previews`. Candidates: `ready`, desired `running`
//! deployments of `preview` environments created and updated before the idle window, paged
//! 100 environments at a time; kept if `SLIPWAY_TRAFFIC` shows a request in the window;
//! the rest go to standby through the actor. If the traffic source cannot be read, the run
//! fails and nothing is scaled down (the next fire tries again).

use std::time::Duration;

use async_nats::{
    header::{NATS_SCHEDULE, NATS_SCHEDULE_TARGET, NATS_SCHEDULE_TTL},
    jetstream::{self, stream::LastRawMessageErrorKind, AckKind},
    HeaderMap,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use slipway_core::{time::now_ms, ApiError};
use slipway_nats::{
    provision::{consumer_config, TIMERS, TRAFFIC},
    Call,
};
use slipway_proto::v1::{ScaleDownIdlePreviewsRequest, WorkflowRunReply};
use slipway_workflow::{Context, StepError, StepResultExt, Workflow, WorkflowError};

use crate::{calls::millis, Orchestrator};

pub const SCHEDULE_SUBJECT: &str = "slipway.timers.schedule.cron.scale_down_idle_previews";
pub const FIRED_SUBJECT: &str = "slipway.timers.fired.cron.scale_down_idle_previews";
const CRON_CONSUMER: &str = "deploy-orchestrator-cron";
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

pub struct ScaleDown(pub Orchestrator);

impl Workflow for ScaleDown {
    const KIND: &'static str = "scale_down_idle_previews";
    type Input = ScaleDownInput;
    type Output = Vec<String>;

    async fn run(
        &self,
        ctx: &mut Context,
        input: ScaleDownInput,
    ) -> Result<Vec<String>, WorkflowError> {
        let o = &self.0;
        let idle_before: i64 = ctx
            .step("now", || async {
                Ok(now_ms() - millis(o.inner.config.idle_window))
            })
            .await?;
        let mut candidates: Vec<String> = Vec::new();
        let mut after: Option<String> = None;
        for page in 0.. {
            let (found, next): (Vec<String>, Option<String>) = ctx
                .step(&format!("page_{page}"), || async {
                    o.inner
                        .store
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
        let idle: Vec<String> = ctx
            .step("traffic", || o.without_traffic(&candidates, idle_before))
            .await?;
        let key = format!("scale_down.{}", ctx.workflow_id());
        ctx.step("scale_down", || async {
            for id in &idle {
                o.schedule_state(id, Duration::ZERO, "standby", &key, 0)
                    .await?;
            }
            Ok(())
        })
        .await?;
        tracing::info!(trigger = %input.trigger, candidates = candidates.len(), scaled_down = idle.len(), "idle previews scaled down");
        Ok(idle)
    }
}

impl Orchestrator {
    /// The candidates with no request reported since `idle_before`. Any failure to read
    /// the traffic source is terminal: nothing is scaled down on a guess.
    async fn without_traffic(
        &self,
        candidates: &[String],
        idle_before: i64,
    ) -> Result<Vec<String>, StepError> {
        if candidates.is_empty() {
            return Ok(vec![]);
        }
        let unreadable = |e: String| {
            StepError::terminal(format!(
                "cannot read traffic from {TRAFFIC}: {e}; nothing scaled down"
            ))
        };
        let stream = self
            .inner
            .js
            .get_stream(TRAFFIC)
            .await
            .map_err(|e| unreadable(e.to_string()))?;
        let mut idle = Vec::new();
        for id in candidates {
            match stream
                .get_last_raw_message_by_subject(&format!("slipway.traffic.{id}"))
                .await
            {
                Ok(message) => {
                    let report: TrafficReport = serde_json::from_slice(&message.payload)
                        .map_err(|e| unreadable(format!("report of {id}: {e}")))?;
                    if report.window_end_ms < idle_before {
                        idle.push(id.clone());
                    }
                }
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                    idle.push(id.clone())
                }
                Err(e) => return Err(unreadable(e.to_string())),
            }
        }
        Ok(idle)
    }

    pub(crate) async fn scale_down_idle_previews(
        &self,
        call: Call<ScaleDownIdlePreviewsRequest>,
    ) -> Result<WorkflowRunReply, ApiError> {
        let wait = crate::endpoints::wait_of(call.request.wait_ms)?;
        let input = ScaleDownInput {
            trigger: "request".into(),
        };
        let (mut reply, record) = self
            .run_and_wait::<ScaleDown>("scale_down", &input, None, wait)
            .await?;
        if record.status == slipway_workflow::Status::Completed {
            reply.scaled_down = record
                .output()
                .map_err(|e| ApiError::internal(format!("unreadable workflow output: {e}")))?;
        }
        Ok(reply)
    }
}

/// Writes the cron schedule unless the same one is in place (re-writing would restart its
/// interval on every orchestrator start).
pub(crate) async fn ensure_schedule(js: &jetstream::Context, schedule: &str) -> anyhow::Result<()> {
    let stream = js.get_stream(TIMERS).await?;
    if let Ok(current) = stream
        .get_last_raw_message_by_subject(SCHEDULE_SUBJECT)
        .await
    {
        let same = current
            .headers
            .get(NATS_SCHEDULE)
            .is_some_and(|v| v.as_str() == schedule);
        if same {
            return Ok(());
        }
    }
    let mut headers = HeaderMap::new();
    headers.insert(NATS_SCHEDULE, schedule);
    headers.insert(NATS_SCHEDULE_TARGET, FIRED_SUBJECT);
    headers.insert(NATS_SCHEDULE_TTL, "1h");
    js.publish_with_headers(SCHEDULE_SUBJECT, headers, "{}".into())
        .await?
        .await?;
    tracing::info!(schedule, "scale-down schedule written");
    Ok(())
}

/// Each fired cron message starts one workflow, whose id is derived from the message's
/// stream sequence: a redelivery, or another orchestrator, starts the same one.
pub(crate) async fn consume_fires(orchestrator: Orchestrator) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let attached = async {
            let stream = orchestrator.inner.js.get_stream(TIMERS).await?;
            let consumer = stream
                .create_consumer(consumer_config(CRON_CONSUMER)?)
                .await?;
            Ok::<_, async_nats::Error>(consumer.messages().await?)
        }
        .await;
        match attached {
            Ok(mut messages) => {
                backoff = Duration::from_millis(100);
                while let Some(message) = messages.next().await {
                    match message {
                        Ok(message) => fired(&orchestrator, message).await,
                        Err(e) => tracing::warn!(error = %e, "cron consumer error"),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot attach to the cron consumer; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn fired(orchestrator: &Orchestrator, message: jetstream::Message) {
    let sequence = match message.info() {
        Ok(info) => info.stream_sequence,
        Err(e) => {
            tracing::warn!(error = %e, "fired cron message without metadata; dropping it");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    let workflow_id = format!("wf_scale_down_{sequence:012}");
    let input = ScaleDownInput {
        trigger: "cron".into(),
    };
    match orchestrator
        .engine()
        .start::<ScaleDown>(&workflow_id, "scale_down", &input, None)
        .await
    {
        Ok(()) => {
            tracing::info!(%workflow_id, "scale-down started by its schedule");
            let _ = message.double_ack().await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the scale-down workflow; will retry");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
    }
}
