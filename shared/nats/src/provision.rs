//! Idempotent start-up provisioning of the JetStream resources of API.md. The definitions live
//! in `nats/` at the repository root (stream and consumer files are in the server's JSON
//! format, so `nats stream add --config nats/streams/X.json` creates the same thing).

use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use serde::Deserialize;

pub const TIMERS: &str = "SLIPWAY_TIMERS";
pub const EVENTS: &str = "SLIPWAY_EVENTS";
pub const WORKFLOWS: &str = "SLIPWAY_WORKFLOWS";
pub const TRAFFIC: &str = "SLIPWAY_TRAFFIC";
pub const LOGS: &str = "SLIPWAY_LOGS";
pub const TRANSITIONS: &str = "slipway_transitions";
pub const ROUTES: &str = "slipway_routes";
pub const DESIRED: &str = "slipway_desired";
pub const INSTANCES: &str = "slipway_instances";
pub const WORKFLOW_RECORDS: &str = "slipway_workflows";
pub const LEASES: &str = "slipway_leases";

const STREAMS: &[(&str, &str)] = &[
    (
        TIMERS,
        include_str!("../../../nats/streams/SLIPWAY_TIMERS.json"),
    ),
    (
        EVENTS,
        include_str!("../../../nats/streams/SLIPWAY_EVENTS.json"),
    ),
    (
        WORKFLOWS,
        include_str!("../../../nats/streams/SLIPWAY_WORKFLOWS.json"),
    ),
    (
        TRAFFIC,
        include_str!("../../../nats/streams/SLIPWAY_TRAFFIC.json"),
    ),
    (
        LOGS,
        include_str!("../../../nats/streams/SLIPWAY_LOGS.json"),
    ),
];

const BUCKETS: &[(&str, &str)] = &[
    (
        TRANSITIONS,
        include_str!("../../../nats/kv/slipway_transitions.json"),
    ),
    (ROUTES, include_str!("../../../nats/kv/slipway_routes.json")),
    (
        DESIRED,
        include_str!("../../../nats/kv/slipway_desired.json"),
    ),
    (
        INSTANCES,
        include_str!("../../../nats/kv/slipway_instances.json"),
    ),
    (
        WORKFLOW_RECORDS,
        include_str!("../../../nats/kv/slipway_workflows.json"),
    ),
    (LEASES, include_str!("../../../nats/kv/slipway_leases.json")),
];

const CONSUMERS: &[(&str, &str)] = &[
    (
        "deployment-actor",
        include_str!("../../../nats/consumers/SLIPWAY_TIMERS.deployment-actor.json"),
    ),
    (
        "deploy-orchestrator",
        include_str!("../../../nats/consumers/SLIPWAY_WORKFLOWS.deploy-orchestrator.json"),
    ),
    (
        "deploy-orchestrator-cron",
        include_str!("../../../nats/consumers/SLIPWAY_TIMERS.deploy-orchestrator-cron.json"),
    ),
    (
        "routing-instances",
        include_str!("../../../nats/consumers/KV_slipway_instances.routing-instances.json"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("bad definition of {name} in nats/: {source}")]
    Definition {
        name: String,
        source: serde_json::Error,
    },
    #[error("no definition named {0} in nats/")]
    Unknown(String),
    #[error("cannot provision {name}: {source}")]
    JetStream {
        name: String,
        source: async_nats::Error,
    },
}

/// A KV bucket definition (`nats/kv/*.json`).
#[derive(Debug, Deserialize)]
struct BucketDefinition {
    bucket: String,
    #[serde(default)]
    description: String,
    #[serde(default = "one")]
    history: i64,
    /// Enables per-key TTLs; delete markers live this long.
    limit_markers_ms: Option<u64>,
}

fn one() -> i64 {
    1
}

pub fn stream_config(name: &str, replicas: usize) -> Result<stream::Config, ProvisionError> {
    let (_, json) = STREAMS
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| ProvisionError::Unknown(name.to_string()))?;
    let mut config: stream::Config =
        serde_json::from_str(json).map_err(|source| ProvisionError::Definition {
            name: name.to_string(),
            source,
        })?;
    config.num_replicas = replicas;
    Ok(config)
}

fn bucket_config(name: &str, json: &str, replicas: usize) -> Result<kv::Config, ProvisionError> {
    let def: BucketDefinition =
        serde_json::from_str(json).map_err(|source| ProvisionError::Definition {
            name: name.to_string(),
            source,
        })?;
    Ok(kv::Config {
        bucket: def.bucket,
        description: def.description,
        history: def.history,
        num_replicas: replicas,
        limit_markers: def.limit_markers_ms.map(Duration::from_millis),
        ..Default::default()
    })
}

/// A durable pull consumer definition (`nats/consumers/<STREAM>.<name>.json`).
pub fn consumer_config(name: &str) -> Result<consumer::pull::Config, ProvisionError> {
    let (_, json) = CONSUMERS
        .iter()
        .find(|(n, _)| *n == name)
        .ok_or_else(|| ProvisionError::Unknown(name.to_string()))?;
    serde_json::from_str(json).map_err(|source| ProvisionError::Definition {
        name: name.to_string(),
        source,
    })
}

/// At start-up: [`provision`] when `provision`, else wait until the `streams` and `buckets` a
/// service works with exist (an operator provisions them: `slipway provision`; the service's
/// NATS user may see no other).
pub async fn ensure(
    js: &jetstream::Context,
    replicas: usize,
    provision: bool,
    streams: &[&str],
    buckets: &[&str],
) -> Result<(), ProvisionError> {
    if provision {
        return self::provision(js, replicas).await;
    }
    for name in streams {
        let mut delays = crate::retry::reattach();
        while let Err(e) = js.get_stream(*name).await {
            tracing::warn!(stream = name, error = %e, "waiting for the stream to be provisioned (slipway provision)");
            tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
        }
    }
    for name in buckets {
        crate::kv::wait_for_bucket(js, name).await;
    }
    Ok(())
}

/// Creates or updates every stream and bucket. Safe when several services start at once:
/// a lost create race is retried as an update.
pub async fn provision(js: &jetstream::Context, replicas: usize) -> Result<(), ProvisionError> {
    for (name, _) in STREAMS {
        let config = stream_config(name, replicas)?;
        retry(name, || js.create_or_update_stream(config.clone())).await?;
    }
    for (name, json) in BUCKETS {
        let config = bucket_config(name, json, replicas)?;
        retry(name, || js.create_or_update_key_value(config.clone())).await?;
    }
    Ok(())
}

async fn retry<T, E, F, Fut>(name: &str, mut op: F) -> Result<T, ProvisionError>
where
    E: Into<async_nats::Error>,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delays = crate::retry::blip();
    loop {
        let error: async_nats::Error = match op().await {
            Ok(v) => return Ok(v),
            Err(e) => e.into(),
        };
        let Some(delay) = delays.next() else {
            return Err(ProvisionError::JetStream {
                name: name.to_string(),
                source: error,
            });
        };
        tracing::debug!(resource = name, error = %error, "provisioning raced; retrying");
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_definition_parses() {
        for (name, _) in STREAMS {
            let config = stream_config(name, 3).unwrap();
            assert_eq!(config.name, *name);
            assert_eq!(config.num_replicas, 3);
        }
        let timers = stream_config(TIMERS, 1).unwrap();
        assert!(timers.allow_message_schedules && timers.allow_message_ttl);
        for (name, json) in BUCKETS {
            assert_eq!(bucket_config(name, json, 1).unwrap().bucket, *name);
        }
        for (name, _) in CONSUMERS {
            consumer_config(name).unwrap();
        }
    }
}
