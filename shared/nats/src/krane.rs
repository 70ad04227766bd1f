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
    crate::kv::put_unless(kv, &key, doc, |stored: &DesiredDeployment| {
        stored.version >= doc.version
    })
    .await
    .map_err(|source| DesiredError::Kv { key, source })
}

/// Removes the desired document of `deployment_id` for `region` (an archived deployment: its
/// agent stops what runs, removes its report and forgets it).
pub async fn remove_desired_deployment(
    kv: &kv::Store,
    region: &str,
    deployment_id: &str,
) -> Result<(), DesiredError> {
    let key = desired_deployment_key(region, deployment_id);
    crate::kv::remove(kv, &key)
        .await
        .map_err(|source| DesiredError::Kv { key, source })
}
