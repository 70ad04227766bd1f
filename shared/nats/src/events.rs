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
    send(js, event, msg_id).await?.stored().await
}

/// Sends `event` with message id `msg_id` without waiting for the stream: what this client
/// publishes afterwards reaches the server after it. [`Sent::stored`] waits for the stream.
pub async fn send<D: Serialize>(
    js: &jetstream::Context,
    event: &Event<D>,
    msg_id: &str,
) -> Result<Sent, PublishError> {
    let kind = event.kind;
    let payload: bytes::Bytes = serde_json::to_vec(event)
        .map_err(|source| PublishError::Encode { kind, source })?
        .into();
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, msg_id);
    let subject = events::subject(&event.project_id, &event.deployment_id, kind);
    let ack = js
        .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
        .await
        .map_err(|e| PublishError::Publish {
            kind,
            source: e.into(),
        })?;
    Ok(Sent {
        js: js.clone(),
        kind,
        subject,
        headers,
        payload,
        ack,
    })
}

/// An event sent, not yet known to be stored.
pub struct Sent {
    js: jetstream::Context,
    kind: &'static str,
    subject: String,
    headers: HeaderMap,
    payload: bytes::Bytes,
    ack: jetstream::context::PublishAckFuture,
}

impl Sent {
    /// Waits until the stream has stored the event.
    ///
    /// Two processes can complete the same change at once (an apply and a call that finishes
    /// it first): on a cluster the second publish of a message id can then meet the first one
    /// still being stored ("duplicate message id is in process"). It is sent again once that
    /// one is through: the stream then either acknowledges it as a duplicate or, had the first
    /// failed, stores it.
    pub async fn stored(self) -> Result<(), PublishError> {
        let Self {
            js,
            kind,
            subject,
            headers,
            payload,
            mut ack,
        } = self;
        let failed = |e: jetstream::context::PublishError| PublishError::Publish {
            kind,
            source: e.into(),
        };
        let mut delays = crate::retry::blip();
        loop {
            match ack.await {
                Ok(_) => return Ok(()),
                Err(e) if is_in_process(&e) => match delays.next() {
                    Some(delay) => {
                        tokio::time::sleep(delay).await;
                        ack = js
                            .publish_with_headers(subject.clone(), headers.clone(), payload.clone())
                            .await
                            .map_err(failed)?;
                    }
                    None => return Err(failed(e)),
                },
                Err(e) => return Err(failed(e)),
            }
        }
    }
}

/// "Duplicate message id is in process": the same id is being stored by another publish.
fn is_in_process(e: &jetstream::context::PublishError) -> bool {
    const DUPLICATE_IN_PROCESS: jetstream::ErrorCode = jetstream::ErrorCode(10158);
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|js| js.error_code() == DUPLICATE_IN_PROCESS)
}
