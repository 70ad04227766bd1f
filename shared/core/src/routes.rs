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

/// What an edge publishes with every traffic report, requests or not: that it was watching
/// traffic, since when. The idle-preview spin-down acts only when an edge has watched the
/// whole idle window (silence from no edge is not idleness).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeHeartbeat {
    pub edge_id: String,
    /// When it started counting requests.
    pub up_since_ms: i64,
    /// When it sent this.
    pub at_ms: i64,
    /// How often it sends one.
    pub every_ms: i64,
}

impl EdgeHeartbeat {
    /// Whether this edge has watched traffic from `since` until `now`: up before it, and heard
    /// from within three report intervals.
    pub fn watched(&self, since: i64, now: i64) -> bool {
        self.up_since_ms <= since && now - self.at_ms <= 3 * self.every_ms.max(1_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edge_watched_a_window_if_it_was_up_before_it_and_is_heard_from_now() {
        let beat = |up_since_ms, at_ms| EdgeHeartbeat {
            edge_id: "edge_1".into(),
            up_since_ms,
            at_ms,
            every_ms: 10_000,
        };
        assert!(beat(1_000, 99_000).watched(2_000, 100_000));
        assert!(
            !beat(3_000, 99_000).watched(2_000, 100_000),
            "started within the window"
        );
        assert!(
            !beat(1_000, 60_000).watched(2_000, 100_000),
            "not heard from for 40 s"
        );
        assert!(
            beat(1_000, 70_000).watched(2_000, 100_000),
            "three intervals"
        );
    }
}
