//! Publishing lifecycle events to `SLIPWAY_EVENTS` (API.md "JetStream resources"). Every
//! event carries a message id that names what it tells (kind, deployment, and what makes it
//! unique): the stream drops a repeat within its duplicate window, so a step that runs again
//! after a crash does not tell its part of the story twice.

use async_nats::{header::NATS_MESSAGE_ID, jetstream, HeaderMap};
use serde::Serialize;
use slipway_core::events::{self, Event};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot encode a {kind} event: {source}")]
    Encode {
        kind: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot publish a {kind} event: {source}")]
    Publish {
        kind: &'static str,
        #[source]
        source: async_nats::Error,
    },
}

impl PublishError {
    /// Encoding fails the same way every time; publishing may work on a retry.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Encode { .. })
    }
}

/// The message id of event `kind` of `deployment_id`, unique by `id`.
pub fn message_id(kind: &str, deployment_id: &str, id: &str) -> String {
    format!("{kind}.{deployment_id}.{id}")
}

/// Publishes `event` with message id `msg_id` and waits until the stream has stored it.
pub async fn publish<D: Serialize>(
    js: &jetstream::Context,
    event: &Event<D>,
    msg_id: &str,
) -> Result<(), PublishError> {
    let kind = event.kind;
    let payload =
        serde_json::to_vec(event).map_err(|source| PublishError::Encode { kind, source })?;
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, msg_id);
    let failed = |source: async_nats::Error| PublishError::Publish { kind, source };
    js.publish_with_headers(
        events::subject(&event.project_id, &event.deployment_id, kind),
        headers,
        payload.into(),
    )
    .await
    .map_err(|e| failed(e.into()))?
    .await
    .map_err(|e| failed(e.into()))?;
    Ok(())
}
