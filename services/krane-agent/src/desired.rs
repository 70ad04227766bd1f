//! The region's desired state from KV `slipway_desired`, read through the region's own
//! consumer `krane-<region>` filtered on `deployment.<region>.>` (current values first, then
//! every change). Its name is fixed and its creation subject names the filter
//! (`$JS.API.CONSUMER.CREATE.KV_slipway_desired.krane-<region>.$KV.slipway_desired.deployment.<region>.>`),
//! so the agent's NATS user can be granted exactly its own region's consumer and nothing else
//! (`nats/accounts.conf`): one agent per region. A starting agent deletes the consumer its
//! predecessor left and creates it afresh, to read the current values again.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy},
};
use futures::{Stream, StreamExt};
use slipway_core::krane::DesiredDeployment;
use slipway_nats::provision::DESIRED;

/// One change: a deployment's desired document, or `None` when it was removed.
#[derive(Debug)]
pub struct Change {
    pub deployment_id: String,
    pub doc: Option<DesiredDeployment>,
}

/// What the feed yields: a change, or word that every current document has been delivered
/// (the agent has seen the whole desired state of its region).
#[derive(Debug)]
pub enum Item {
    Change(Box<Change>),
    CaughtUp,
}

/// The consumer of `region`'s agent.
pub fn consumer_name(region: &str) -> String {
    format!("krane-{region}")
}

/// [`feed`], retried with backoff until it is attached.
pub async fn attach(
    js: &jetstream::Context,
    region: &str,
) -> impl Stream<Item = Result<Item, String>> {
    let mut delays = slipway_nats::retry::reattach();
    loop {
        match feed(js, region).await {
            Ok(feed) => return feed,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read slipway_desired yet; retrying");
                tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
            }
        }
    }
}

pub async fn feed(
    js: &jetstream::Context,
    region: &str,
) -> Result<impl Stream<Item = Result<Item, String>>, async_nats::Error> {
    let stream = js.get_stream_no_info(format!("KV_{DESIRED}")).await?;
    let prefix = format!("$KV.{DESIRED}.deployment.{region}.");
    let name = consumer_name(region);
    // What a predecessor left would resume where it stopped: start again from the current
    // values instead.
    if let Err(e) = stream.delete_consumer(&name).await {
        tracing::debug!(consumer = %name, error = %e, "no consumer to delete");
    }
    let consumer = stream
        .create_consumer(pull::Config {
            name: Some(name),
            filter_subject: format!("{prefix}>"),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ack_policy: AckPolicy::None,
            // Gone if its agent is: nothing else reads it.
            inactive_threshold: Duration::from_secs(3600),
            ..Default::default()
        })
        .await?;
    let empty = consumer.cached_info().num_pending == 0;
    let messages = slipway_nats::consumer::messages(&consumer).await?;
    let first = futures::stream::iter(empty.then_some(Ok(Item::CaughtUp)));
    Ok(first.chain(messages.flat_map(move |message| {
        let items: Vec<Result<Item, String>> = match message {
            Err(e) => vec![Err(e.to_string())],
            Ok(message) => {
                let caught_up = message.info().is_ok_and(|i| i.pending == 0);
                let mut items: Vec<_> = decode(&prefix, &message).into_iter().map(Ok).collect();
                if caught_up {
                    items.push(Ok(Item::CaughtUp));
                }
                items
            }
        };
        futures::stream::iter(items)
    })))
}

fn decode(prefix: &str, message: &jetstream::Message) -> Option<Item> {
    let deployment_id = message.subject.strip_prefix(prefix)?.to_string();
    // KV deletes and purges carry `KV-Operation`; a removed document means run nothing.
    let removed = message
        .headers
        .as_ref()
        .and_then(|h| h.get("KV-Operation"))
        .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
    if removed {
        return Some(Item::Change(Box::new(Change {
            deployment_id,
            doc: None,
        })));
    }
    match serde_json::from_slice::<DesiredDeployment>(&message.payload) {
        Ok(doc) => Some(Item::Change(Box::new(Change {
            deployment_id,
            doc: Some(doc),
        }))),
        Err(e) => {
            tracing::error!(subject = %message.subject, error = %e, "malformed desired state; ignoring it");
            None
        }
    }
}
