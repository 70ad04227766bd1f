//! The route table edges read: KV `slipway_routes`, key = FQDN (API.md "KV buckets"). Routing
//! writes it; edges (and tests) read it.

use serde::{Deserialize, Serialize};

use crate::{domains::Sticky, state::DesiredState};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteEntry {
    pub route_id: String,
    pub fqdn: String,
    pub project_id: String,
    pub environment_id: String,
    pub deployment_id: String,
    pub sticky: Sticky,
    /// Addresses of the target deployment's instances running now, as its agents last
    /// reported them.
    pub instances: Vec<String>,
    /// The newest instance report (KV `slipway_instances` revision) `instances` reflect.
    #[serde(default)]
    pub instances_revision: i64,
    /// The target deployment's desired state: an edge wakes a deployment in `standby` on a
    /// request (absent in entries written before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_state: Option<DesiredState>,
    /// What the edge's sentinel enforces; `null` for local hosts.
    pub sentinel_config: Option<SentinelConfig>,
    /// The route's version: grows with every move.
    pub version: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentinelConfig {
    pub deployment_id: String,
    pub enabled: bool,
    pub instances: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth: Option<SentinelAuth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation: Option<SentinelValidation>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentinelAuth {
    pub key_auth_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentinelValidation {
    pub openapi_spec: String,
}
