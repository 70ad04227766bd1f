//! The durable consumer of fired schedules (`slipway.timers.fired.deployment.>`), shared by
//! every actor process: each fired message is applied by one of them, acked only once applied,
//! and redelivered if its process dies first.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use slipway_nats::provision::{consumer_config, TIMERS};

use crate::{timers::Fired, Actor};

const CONSUMER: &str = "deployment-actor";
/// Well inside the consumer's ack_wait (nats/consumers/SLIPWAY_TIMERS.deployment-actor.json).
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Runs for ever: re-attaches to the consumer when the server goes away and comes back.
pub async fn consume(actor: Actor, concurrency: usize) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match attach(&actor).await {
            Ok(messages) => {
                backoff = Duration::from_millis(100);
                messages
                    .for_each_concurrent(concurrency, |msg| {
                        let actor = actor.clone();
                        async move {
                            match msg {
                                Ok(msg) => handle(&actor, msg).await,
                                Err(e) => tracing::warn!(error = %e, "fired-change consumer error"),
                            }
                        }
                    })
                    .await;
                tracing::warn!("fired-change consumer ended; re-attaching");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot attach to the fired-change consumer; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

async fn attach(actor: &Actor) -> Result<jetstream::consumer::pull::Stream, async_nats::Error> {
    let stream = actor.inner.js.get_stream(TIMERS).await?;
    // Create-or-update: the definition in nats/ is the truth, also after an upgrade.
    let consumer = stream.create_consumer(consumer_config(CONSUMER)?).await?;
    Ok(consumer.messages().await?)
}

async fn handle(actor: &Actor, msg: jetstream::Message) {
    let fired: Fired = match serde_json::from_slice(&msg.payload) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!(subject = %msg.subject, error = %e, "malformed fired message; dropping it");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    // Keep the message ours while applying (ack_wait is short so a dead actor's work returns
    // quickly); the apply itself is idempotent should it be redelivered anyway.
    let apply = actor.apply(&fired.deployment_id, &fired.nonce);
    tokio::pin!(apply);
    let mut progress = tokio::time::interval(PROGRESS_EVERY);
    progress.tick().await;
    let result = loop {
        tokio::select! {
            result = &mut apply => break result,
            _ = progress.tick() => {
                let _ = msg.ack_with(AckKind::Progress).await;
            }
        }
    };
    match result {
        Ok(outcome) => {
            tracing::debug!(deployment_id = %fired.deployment_id, ?outcome, "fired change handled");
            if let Err(e) = msg.double_ack().await {
                // Not acked: it comes back, and the nonce check makes that harmless.
                tracing::warn!(error = %e, "cannot ack fired message");
            }
        }
        Err(e) => {
            tracing::warn!(deployment_id = %fired.deployment_id, error = %e, "cannot apply fired change; will retry");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                .await;
        }
    }
}
