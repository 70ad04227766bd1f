//! KV helpers: reads that decide something, creates that hold on a cluster, writes that only
//! move an entry forward, and removals that leave nothing behind.
//!
//! Two kinds of read. `kv::Store::entry`/`get` are *direct gets*: on a cluster any replica
//! answers, and a follower that has not yet applied the latest write answers with an older
//! value or "not found". That is fine where a stale answer is harmless: the edges' route
//! table, instance reports being polled, a listing. A read whose answer decides a write (a
//! workflow record before running it, a lease before taking it, a transition before a
//! compare-and-set, an idempotency record) uses [`latest`], answered by the stream leader,
//! which has every acknowledged write.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use serde::{de::DeserializeOwned, Serialize};

/// Whether a compare-and-set write failed because the key was not at the expected revision.
/// A cluster's stream leader answers this with either of two codes: 10071 ("wrong last
/// sequence: N") or 10164 ("wrong last sequence"); async-nats (0.51) recognises only the
/// first, and reports the second as an unclassified error.
pub fn is_conflict(error: &(dyn std::error::Error + 'static)) -> bool {
    use jetstream::{
        context::{PublishError, PublishErrorKind},
        ErrorCode,
    };
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(publish) = e.downcast_ref::<PublishError>() {
            if publish.kind() == PublishErrorKind::WrongLastSequence {
                return true;
            }
        }
        if let Some(js) = e.downcast_ref::<jetstream::Error>() {
            let code = js.error_code();
            if code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                || code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT
            {
                return true;
            }
        }
        if let Some(update) = e.downcast_ref::<kv::UpdateError>() {
            if update.kind() == kv::UpdateErrorKind::WrongLastRevision {
                return true;
            }
        }
        next = e.source();
    }
    false
}

/// Writes `value` (JSON) at `key` unless `keep(stored)` says the stored document wins (it is
/// newer, or the same). Returns whether it wrote. A stored value that does not parse is
/// overwritten.
pub async fn put_unless<T, F>(
    store: &kv::Store,
    key: &str,
    value: &T,
    keep: F,
) -> Result<bool, async_nats::Error>
where
    T: Serialize + DeserializeOwned,
    F: Fn(&T) -> bool,
{
    let payload: bytes::Bytes = serde_json::to_vec(value)?.into();
    loop {
        let revision = match latest(store, key).await? {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let stored: Option<T> = serde_json::from_slice(&entry.value).ok();
                if stored.as_ref().is_some_and(&keep) {
                    return Ok(false);
                }
                entry.revision
            }
            Some(entry) => entry.revision,
            None => 0,
        };
        match store.update(key, payload.clone(), revision).await {
            Ok(_) => return Ok(true),
            Err(e) if is_conflict(&e) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// The entry at `key` as the stream's leader has it: every write acknowledged before this
/// call is seen (a direct get may be answered by a lagging follower). `None` if the key was
/// never written; a removed key is an entry whose operation is not `Put`.
pub async fn latest(store: &kv::Store, key: &str) -> Result<Option<kv::Entry>, async_nats::Error> {
    use jetstream::stream::LastRawMessageErrorKind;
    let subject = format!("{}{key}", store.prefix);
    match store.stream.get_last_raw_message_by_subject(&subject).await {
        Ok(message) => Ok(Some(kv::Entry {
            bucket: store.name.clone(),
            key: key.to_string(),
            operation: operation(&message.headers),
            value: message.payload,
            revision: message.sequence,
            created: message.time,
            delta: 0,
            seen_current: false,
        })),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What a stored KV message is: a put, or the marker of a delete or purge (written by a
/// client, or by the server when a per-key TTL or a purge removed the key).
fn operation(headers: &async_nats::HeaderMap) -> kv::Operation {
    match headers.get("KV-Operation").map(|v| v.as_str()) {
        Some("DEL") => return kv::Operation::Delete,
        Some("PURGE") => return kv::Operation::Purge,
        Some(_) => return kv::Operation::Put,
        None => {}
    }
    match headers
        .get(async_nats::header::NATS_MARKER_REASON)
        .map(|v| v.as_str())
    {
        Some("Remove") => kv::Operation::Delete,
        Some(_) => kv::Operation::Purge,
        None => kv::Operation::Put,
    }
}

/// Why [`write_if`] did not write.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The key is no longer at the expected revision: another write came first.
    #[error("another write came first")]
    Conflict,
    /// No answer, or an error: the write may or may not have landed.
    #[error("{0}")]
    Other(async_nats::Error),
}

/// Writes `value` at `key` if the key's last revision is `revision` (0: the key was never
/// written), with a per-message TTL if given (the bucket needs `limit_markers_ms`): one
/// compare-and-set publish. Returns the new revision.
pub async fn write_if(
    js: &jetstream::Context,
    store: &kv::Store,
    key: &str,
    value: bytes::Bytes,
    revision: u64,
    ttl: Option<Duration>,
) -> Result<u64, WriteError> {
    use async_nats::header;
    let prefix = store.put_prefix.as_ref().unwrap_or(&store.prefix);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        revision.to_string().as_str(),
    );
    if let Some(ttl) = ttl {
        headers.insert(
            header::NATS_MESSAGE_TTL,
            format!("{}s", ttl.as_secs().max(1)).as_str(),
        );
    }
    let ack = js
        .publish_with_headers(format!("{prefix}{key}"), headers, value)
        .await
        .map_err(|e| WriteError::Other(e.into()))?;
    match ack.await {
        Ok(ack) => Ok(ack.sequence),
        Err(e) if is_conflict(&e) => Err(WriteError::Conflict),
        Err(e) => Err(WriteError::Other(e.into())),
    }
}

/// Whether [`create`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// Written at this revision.
    At(u64),
    /// The key holds a value already; nothing was written.
    Exists,
}

/// Writes `value` at `key` (with a per-message TTL if given) unless the key holds a value (a
/// removed key counts as free). Unlike `kv::Store::create`, which decides on a direct get,
/// the check is the write itself (a compare-and-set on "no message", then on the removal
/// marker the leader reports), so a lagging replica cannot make it fail with "wrong last
/// sequence".
pub async fn create(
    js: &jetstream::Context,
    store: &kv::Store,
    key: &str,
    value: bytes::Bytes,
    ttl: Option<Duration>,
) -> Result<Created, async_nats::Error> {
    let mut revision = 0;
    loop {
        match write_if(js, store, key, value.clone(), revision, ttl).await {
            Ok(written) => return Ok(Created::At(written)),
            Err(WriteError::Conflict) => {}
            Err(WriteError::Other(e)) => return Err(e),
        }
        match latest(store, key).await? {
            Some(entry) if entry.operation == kv::Operation::Put => return Ok(Created::Exists),
            Some(entry) => revision = entry.revision,
            None => revision = 0,
        }
    }
}

/// The bucket once it exists, for a service that does not provision (a region agent, an
/// edge: their NATS users may not); retrying with backoff, logged every ~30 s.
pub async fn wait_for_bucket(js: &jetstream::Context, bucket: &str) -> jetstream::kv::Store {
    let mut delays = crate::retry::reattach();
    let mut waited = Duration::ZERO;
    let mut told = Duration::ZERO;
    loop {
        match js.get_key_value(bucket).await {
            Ok(kv) => return kv,
            Err(e) => {
                if waited >= told {
                    tracing::warn!(bucket, error = %e, "waiting for the control plane to provision the bucket");
                    told = waited + Duration::from_secs(30);
                }
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                tokio::time::sleep(delay).await;
                waited += delay;
            }
        }
    }
}

/// How long the marker of a removed key stays: long enough for every watcher to see the
/// removal, then JetStream drops it, so removed keys leave nothing behind.
pub const REMOVAL_MARKER_TTL: Duration = Duration::from_secs(24 * 3600);

/// Removes `key` with a marker that expires after [`REMOVAL_MARKER_TTL`] (the bucket has
/// `limit_markers_ms`).
pub async fn remove(kv: &jetstream::kv::Store, key: &str) -> Result<(), async_nats::Error> {
    kv.purge_with_ttl(key, REMOVAL_MARKER_TTL).await?;
    Ok(())
}

/// Removes `key` as [`remove`] does, only if it is still at `revision`: returns false, with
/// nothing removed, when it was written since (a compare-and-set on the stream leader).
pub async fn remove_at(
    kv: &jetstream::kv::Store,
    key: &str,
    revision: u64,
) -> Result<bool, async_nats::Error> {
    match kv
        .purge_expect_revision_with_ttl(key, revision, REMOVAL_MARKER_TTL)
        .await
    {
        Ok(()) => Ok(true),
        Err(e) if is_conflict(&e) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Every key's last entry in a bucket, taken a batch at a time through an ephemeral pull
/// consumer (the last value per key, nothing acknowledged), so that a bucket of thousands of
/// keys is neither read one get at a time nor buffered whole in memory.
pub struct Snapshot {
    consumer: Option<jetstream::consumer::Consumer<jetstream::consumer::pull::Config>>,
    prefix: String,
    bucket: String,
}

impl Snapshot {
    pub async fn of(store: &kv::Store) -> Result<Self, async_nats::Error> {
        use jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
        let consumer = store
            .stream
            .create_consumer(pull::Config {
                filter_subject: format!("{}>", store.prefix),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ack_policy: AckPolicy::None,
                // Ephemeral: gone soon after its reader is.
                inactive_threshold: Duration::from_secs(30),
                ..Default::default()
            })
            .await?;
        let empty = consumer.cached_info().num_pending == 0;
        Ok(Self {
            consumer: (!empty).then_some(consumer),
            prefix: store.prefix.clone(),
            bucket: store.name.clone(),
        })
    }

    /// The next (at most) `n` entries; empty once every key was delivered.
    pub async fn next_batch(&mut self, n: usize) -> Result<Vec<kv::Entry>, async_nats::Error> {
        let Some(consumer) = &self.consumer else {
            return Ok(vec![]);
        };
        use futures::StreamExt;
        let mut batch = consumer.fetch().max_messages(n).messages().await?;
        let mut entries = Vec::with_capacity(n);
        while let Some(message) = batch.next().await {
            let message = message?;
            let info = message.info()?;
            let (revision, pending, created) = (info.stream_sequence, info.pending, info.published);
            let Some(key) = message.subject.strip_prefix(self.prefix.as_str()) else {
                continue;
            };
            entries.push(kv::Entry {
                bucket: self.bucket.clone(),
                key: key.to_string(),
                operation: message
                    .headers
                    .as_ref()
                    .map_or(kv::Operation::Put, operation),
                value: message.payload.clone(),
                revision,
                created,
                delta: pending,
                seen_current: pending == 0,
            });
            if pending == 0 {
                self.consumer = None;
                break;
            }
        }
        if entries.is_empty() {
            // Nothing was there to fetch: nothing is pending.
            self.consumer = None;
        }
        Ok(entries)
    }
}
