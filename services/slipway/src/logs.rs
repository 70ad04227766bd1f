//! `slipway logs <deployment> [--follow]`: what a deployment's build and its instances printed,
//! from the logs stream (`SLIPWAY_LOGS`, a line per message; bounded in age and bytes).

use anyhow::{Context, Result};
use async_nats::jetstream;
use futures::StreamExt;
use slipway_core::subjects;

use crate::api::Api;

pub async fn logs(api: &Api, deployment: &str, follow: bool) -> Result<()> {
    let mut lines = lines(api, &subjects::logs::of_deployment(deployment)).await?;
    if !follow && lines.pending == 0 {
        return Ok(());
    }
    while let Some(message) = lines.messages.next().await {
        let message = message?;
        let source = message.subject.rsplit('.').next().unwrap_or_default();
        println!("{source} | {}", String::from_utf8_lossy(&message.payload));
        let caught_up = message.info().is_ok_and(|i| i.pending == 0);
        if caught_up && !follow {
            break;
        }
    }
    Ok(())
}

pub struct Lines {
    /// How many were stored when reading began.
    pub pending: u64,
    pub messages: jetstream::consumer::pull::Ordered,
}

/// Every stored line on `filter`, then the new ones as they come.
pub async fn lines(api: &Api, filter: &str) -> Result<Lines> {
    let stream = jetstream::new(api.client.clone())
        .get_stream(slipway_nats::provision::LOGS)
        .await
        .context("reading the logs stream (SLIPWAY_LOGS; `slipway provision` creates it)")?;
    let mut consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter.to_string(),
            ..Default::default()
        })
        .await?;
    let pending = consumer.info().await.map(|i| i.num_pending).unwrap_or(0);
    Ok(Lines {
        pending,
        messages: consumer.messages().await?,
    })
}
