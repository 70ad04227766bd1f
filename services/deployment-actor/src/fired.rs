//! The durable consumer of fired schedules (`slipway.timers.fired.deployment.>`), shared by
//! every actor process: each fired message is applied by one of them, acked only once applied,
//! and redelivered if its process dies first.

use std::time::Duration;

use slipway_nats::{
    consumer::{self, Disposition, Durable},
    provision::TIMERS,
};

use crate::{
    apply::{Applied, OnClaimed},
    timers::Fired,
    Actor,
};

const CONSUMER: &str = "deployment-actor";

/// Runs for ever: re-attaches to the consumer when the server goes away and comes back.
pub async fn consume(actor: Actor, concurrency: usize) {
    let durable = Durable {
        stream: TIMERS,
        name: CONSUMER.into(),
        concurrency: Some(concurrency),
        ack_wait: None,
    };
    let js = actor.inner.js.clone();
    consumer::run(js, durable, |msg| {
        let actor = actor.clone();
        async move { handle(&actor, &msg.subject, &msg.payload).await }
    })
    .await
}

/// Applies a fired change; the apply is idempotent should the message come back anyway.
async fn handle(actor: &Actor, subject: &str, payload: &[u8]) -> Disposition {
    let fired: Fired = match serde_json::from_slice(payload) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(%subject, error = %e, "malformed fired message; dropping it");
            return Disposition::Drop;
        }
    };
    match actor
        .apply(&fired.deployment_id, &fired.nonce, OnClaimed::Complete)
        .await
    {
        Ok(Applied::Stale) => {
            // A newer transition (or none) is stored. Its schedule may have gone with this
            // one: seen on a cluster, a schedule replaced just as the old one fired was never
            // fired. Publish the stored transition's schedule again (idempotent).
            let timers = &actor.inner.timers;
            match timers
                .sync(&fired.deployment_id, &actor.inner.transitions)
                .await
            {
                Ok(()) => {
                    tracing::debug!(deployment_id = %fired.deployment_id, "stale fired change; schedule of the stored transition checked");
                    Disposition::Ack
                }
                Err(e) => {
                    tracing::warn!(deployment_id = %fired.deployment_id, error = %e, "cannot check the schedule after a stale fired change; will retry");
                    Disposition::Retry(Duration::from_secs(1))
                }
            }
        }
        Ok(outcome) => {
            tracing::debug!(deployment_id = %fired.deployment_id, ?outcome, "fired change handled");
            Disposition::Ack
        }
        Err(e) => {
            tracing::warn!(deployment_id = %fired.deployment_id, error = %e, "cannot apply fired change; will retry");
            Disposition::Retry(Duration::from_secs(1))
        }
    }
}
