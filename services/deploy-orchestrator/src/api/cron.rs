//! The scale-down cron: a JetStream message schedule whose fires start the scale-down
//! workflow, one per fire.

use std::time::Duration;

use async_nats::{
    header::{NATS_SCHEDULE, NATS_SCHEDULE_TARGET, NATS_SCHEDULE_TTL},
    jetstream, HeaderMap,
};
use slipway_nats::{
    consumer::{self, Disposition, Durable},
    provision::TIMERS,
};

use crate::{
    api::Api,
    workflows::scale_down::{ScaleDown, ScaleDownInput},
};

use slipway_core::subjects::timers::{
    SCALE_DOWN_FIRED as FIRED_SUBJECT, SCALE_DOWN_SCHEDULE as SCHEDULE_SUBJECT,
};
const CRON_CONSUMER: &str = "deploy-orchestrator-cron";

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
pub(crate) async fn consume_fires(js: jetstream::Context, api: Api) {
    let durable = Durable {
        stream: TIMERS,
        name: CRON_CONSUMER.into(),
        concurrency: Some(1),
        ack_wait: None,
    };
    consumer::run(js, durable, |message| fired(&api, message)).await
}

async fn fired(api: &Api, message: jetstream::Message) -> Disposition {
    let sequence = match message.info() {
        Ok(info) => info.stream_sequence,
        Err(e) => {
            tracing::warn!(error = %e, "fired cron message without metadata; dropping it");
            return Disposition::Drop;
        }
    };
    let workflow_id = format!("wf_scale_down_{sequence:012}");
    let input = ScaleDownInput {
        trigger: "cron".into(),
    };
    match api
        .engine
        .start::<ScaleDown>(&workflow_id, "scale_down", &input, None)
        .await
    {
        Ok(()) => {
            tracing::info!(%workflow_id, "scale-down started by its schedule");
            Disposition::Ack
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the scale-down workflow; will retry");
            Disposition::Retry(Duration::from_secs(1))
        }
    }
}
