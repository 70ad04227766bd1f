//! Who waits for which workflow to finish, served by one watch per engine: an ordered consumer
//! of the records' bucket that delivers headers only, from the moment it starts. A record's
//! finishing write is the only one with a TTL (`Nats-TTL`: the record retention), so a
//! finish is told without reading the record; the waiters of that workflow then read it.
//!
//! One consumer per engine, not one per wait: a consumer per `wait` lingered after it, and a
//! stream holds at most 1,000 consumers, so a few dozen waits a second exhausted them.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use async_nats::jetstream::{
    self,
    consumer::{push, DeliverPolicy},
    kv,
};
use futures::StreamExt;
use tokio::sync::{Notify, OnceCell};

/// Notifies waiters of finished workflows, by record key.
#[derive(Default)]
pub(crate) struct Finishes {
    waiting: Mutex<HashMap<String, Arc<Notify>>>,
    watching: OnceCell<()>,
}

/// A registered interest in one record; unregisters when dropped.
pub(crate) struct Waiter<'a> {
    finishes: &'a Finishes,
    key: String,
    pub notify: Arc<Notify>,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        let mut waiting = self.finishes.lock();
        // The map holds one reference, each waiter one: the last waiter takes the entry away.
        if let Some(notify) = waiting.get(&self.key) {
            if Arc::strong_count(notify) <= 2 {
                waiting.remove(&self.key);
            }
        }
    }
}

impl Finishes {
    /// Registers interest in the record at `key`; the watch is started first, so every
    /// finish written after this returns is notified.
    pub async fn register(
        self: &Arc<Self>,
        js: &jetstream::Context,
        records: &kv::Store,
        key: &str,
    ) -> Result<Waiter<'_>, async_nats::Error> {
        self.watching
            .get_or_try_init(|| async {
                let messages = subscribe(js, records).await?;
                tokio::spawn(self.clone().watch(js.clone(), records.clone(), messages));
                Ok::<_, async_nats::Error>(())
            })
            .await?;
        let notify = self.lock().entry(key.to_string()).or_default().clone();
        Ok(Waiter {
            finishes: self,
            key: key.to_string(),
            notify,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs for the engine's life. When the watch breaks, every waiter reads its record again
    /// (a finish may have gone by unseen) and the watch starts over.
    async fn watch(
        self: Arc<Self>,
        js: jetstream::Context,
        records: kv::Store,
        mut messages: push::Ordered,
    ) {
        loop {
            while let Some(message) = messages.next().await {
                let message = match message {
                    Ok(message) => message,
                    Err(e) => {
                        tracing::warn!(error = %e, "the watch of finished workflows broke");
                        break;
                    }
                };
                let finished = message
                    .headers
                    .as_ref()
                    .is_some_and(|h| h.get(async_nats::header::NATS_MESSAGE_TTL).is_some());
                if !finished {
                    continue;
                }
                let Some(key) = message.subject.strip_prefix(records.prefix.as_str()) else {
                    continue;
                };
                if let Some(notify) = self.lock().get(key) {
                    notify.notify_waiters();
                }
            }
            let mut delays = slipway_nats::retry::reattach();
            messages = loop {
                match subscribe(&js, &records).await {
                    Ok(messages) => break messages,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot watch finished workflows; retrying");
                        let delay = delays.next().unwrap_or(std::time::Duration::from_secs(5));
                        tokio::time::sleep(delay).await;
                    }
                }
            };
            for notify in self.lock().values() {
                notify.notify_waiters();
            }
        }
    }
}

async fn subscribe(
    js: &jetstream::Context,
    records: &kv::Store,
) -> Result<push::Ordered, async_nats::Error> {
    let consumer = records
        .stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: js.client().new_inbox(),
            description: Some("finished workflows".into()),
            filter_subject: format!("{}>", records.prefix),
            headers_only: true,
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}
