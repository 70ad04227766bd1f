//! Writing desired state for region agents (KV `slipway_desired`, API.md "Region agents").

use async_nats::jetstream::kv;
use slipway_core::krane::{desired_deployment_key, DesiredDeployment};

#[derive(Debug, thiserror::Error)]
pub enum DesiredError {
    #[error("cannot write desired state {key}: {source}")]
    Kv {
        key: String,
        source: async_nats::Error,
    },
}

/// Writes `doc` for `region` unless the stored document already has a version at least as
/// new, so a late or repeated writer never rolls an agent back to an older state.
/// Returns whether it wrote.
pub async fn put_desired_deployment(
    kv: &kv::Store,
    region: &str,
    doc: &DesiredDeployment,
) -> Result<bool, DesiredError> {
    let key = desired_deployment_key(region, &doc.deployment_id);
    let err = |source: async_nats::Error| DesiredError::Kv {
        key: key.clone(),
        source,
    };
    let payload: bytes::Bytes = serde_json::to_vec(doc).map_err(|e| err(e.into()))?.into();
    loop {
        let current = kv.entry(key.as_str()).await.map_err(|e| err(e.into()))?;
        let revision = match &current {
            Some(entry) if entry.operation == kv::Operation::Put => {
                let stored: Option<DesiredDeployment> = serde_json::from_slice(&entry.value).ok();
                if stored.is_some_and(|s| s.version >= doc.version) {
                    return Ok(false);
                }
                entry.revision
            }
            Some(entry) => entry.revision,
            None => 0,
        };
        match kv.update(key.as_str(), payload.clone(), revision).await {
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
            Err(e) => return Err(err(e.into())),
        }
    }
}
