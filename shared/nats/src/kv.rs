//! Writes that only move a KV entry forward: a late or repeated writer never puts an older
//! document back (compare-and-set on the key's revision, retried when another writer won).

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
        let revision = match store.entry(key).await? {
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
