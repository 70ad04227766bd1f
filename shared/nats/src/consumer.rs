//! A durable pull consumer, run for ever: attached (create-or-update, so the definition in
//! `nats/` is the truth after an upgrade) and re-attached with backoff whenever the server
//! goes away; its messages handled concurrently, each kept with in-progress acks while its
//! handler runs (so a short ack wait returns a dead process's work quickly), then acked,
//! redelivered later, or dropped as the handler says.

use std::{future::Future, time::Duration};

use async_nats::jetstream::{self, consumer::pull, AckKind};
use futures::StreamExt;

use crate::provision::consumer_config;

/// What to do with a handled message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Done: acked (double ack, so a lost ack is noticed).
    Ack,
    /// Redelivered after this delay.
    Retry(Duration),
    /// Never redelivered (it cannot be handled, ever).
    Drop,
}

/// Which consumer, and how its messages are handled.
pub struct Durable {
    pub stream: &'static str,
    /// Its definition in `nats/consumers/` ([`consumer_config`]).
    pub name: String,
    /// How many messages are handled at once (`None`: as many as the consumer's
    /// `max_ack_pending` lets through).
    pub concurrency: Option<usize>,
    /// Instead of the definition's ack wait.
    pub ack_wait: Option<Duration>,
}

/// Runs `durable` for ever, calling `handle` with each message; a message being handled is
/// acked in progress three times per ack wait. Returns only if the consumer has no
/// definition (a bug, logged).
pub async fn run<F, Fut>(js: jetstream::Context, durable: Durable, handle: F)
where
    F: Fn(jetstream::Message) -> Fut,
    Fut: Future<Output = Disposition>,
{
    let name = durable.name.as_str();
    let mut config = match consumer_config(name) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(consumer = name, error = %e, "no definition of the consumer; not consuming");
            return;
        }
    };
    if let Some(ack_wait) = durable.ack_wait {
        config.ack_wait = ack_wait;
    }
    let progress_every = config.ack_wait / 3;
    let mut backoff = crate::retry::reattach();
    loop {
        match attach(&js, durable.stream, &config).await {
            Ok(messages) => {
                backoff = crate::retry::reattach();
                messages
                    .for_each_concurrent(durable.concurrency, |message| async {
                        match message {
                            Ok(message) => handled(&handle, message, progress_every).await,
                            Err(e) => {
                                tracing::warn!(consumer = %name, error = %e, "consumer error")
                            }
                        }
                    })
                    .await;
                tracing::warn!(consumer = %name, "consumer ended; re-attaching");
            }
            Err(e) => {
                tracing::warn!(consumer = %name, error = %e, "cannot attach to the consumer; retrying");
                tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(5))).await;
            }
        }
    }
}

async fn attach(
    js: &jetstream::Context,
    stream: &str,
    config: &pull::Config,
) -> Result<pull::Stream, async_nats::Error> {
    let stream = js.get_stream(stream).await?;
    let consumer = stream.create_consumer(config.clone()).await?;
    Ok(messages(&consumer).await?)
}

/// The messages of a pull consumer, pulled in short requests with frequent heartbeats: on a
/// cluster, a pull waiting on a consumer leader that died is noticed within two heartbeats
/// (with the client's default, 15 s, timers due across a failover waited half a minute).
pub async fn messages(
    consumer: &jetstream::consumer::PullConsumer,
) -> Result<pull::Stream, jetstream::consumer::StreamError> {
    consumer
        .stream()
        .heartbeat(PULL_HEARTBEAT)
        .expires(PULL_EXPIRES)
        .messages()
        .await
}

/// How often an idle pull hears from the server, and how long one pull request lasts.
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);
const PULL_EXPIRES: Duration = Duration::from_secs(5);

async fn handled<F, Fut>(handle: &F, message: jetstream::Message, progress_every: Duration)
where
    F: Fn(jetstream::Message) -> Fut,
    Fut: Future<Output = Disposition>,
{
    let work = handle(message.clone());
    tokio::pin!(work);
    let mut progress = tokio::time::interval(progress_every);
    progress.tick().await;
    let disposition = loop {
        tokio::select! {
            d = &mut work => break d,
            _ = progress.tick() => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    };
    let acked = match disposition {
        Disposition::Ack => message.double_ack().await,
        Disposition::Retry(delay) => message.ack_with(AckKind::Nak(Some(delay))).await,
        Disposition::Drop => message.ack_with(AckKind::Term).await,
    };
    if let Err(e) = acked {
        tracing::warn!(subject = %message.subject, error = %e, "cannot ack; the message will be redelivered");
    }
}
