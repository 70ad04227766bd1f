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
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
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

/// Whether [`create`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// Written at this revision.
    At(u64),
    /// The key holds a value already; nothing was written.
    Exists,
}

/// Writes `value` at `key` unless the key holds a value (a removed key counts as free).
/// Unlike `kv::Store::create`, which decides on a direct get, the check is the write itself
/// (a compare-and-set on "no message", then on the removal marker the leader reports), so a
/// lagging replica cannot make it fail with "wrong last sequence".
pub async fn create(
    store: &kv::Store,
    key: &str,
    value: bytes::Bytes,
) -> Result<Created, async_nats::Error> {
    let mut revision = 0;
    loop {
        match store.update(key, value.clone(), revision).await {
            Ok(written) => return Ok(Created::At(written)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
            Err(e) => return Err(e.into()),
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
