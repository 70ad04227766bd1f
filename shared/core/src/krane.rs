//! The region-agent (Krane) protocol documents (API.md "Region agents").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// KV `slipway_desired` key for one deployment in one region.
pub fn desired_deployment_key(region: &str, deployment_id: &str) -> String {
    format!("deployment.{region}.{deployment_id}")
}

/// Labels on the containers a region agent runs (Docker Engine API): whose they are, so that
/// the next agent of the region adopts or removes them.
pub mod labels {
    pub const DEPLOYMENT: &str = "dev.slipway.deployment";
    pub const INSTANCE: &str = "dev.slipway.instance";
    pub const REGION: &str = "dev.slipway.region";
    /// The port on 127.0.0.1 the container's port is published on: the instance's address.
    pub const HOST_PORT: &str = "dev.slipway.host-port";
    /// The id of the agents sharing one state directory (`<state dir>/<region>/scope`): other
    /// installations on the same engine are left alone.
    pub const SCOPE: &str = "dev.slipway.scope";
}

/// KV `slipway_instances` key for one deployment in one region.
pub fn instances_key(deployment_id: &str, region: &str) -> String {
    format!("{deployment_id}.{region}")
}

crate::state::wire_enum! {
    pub enum Desired as "desired" {
        Running = "running",
        Stopped = "stopped",
    }
}

/// What an agent should run for one deployment in its region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DesiredDeployment {
    pub deployment_id: String,
    pub workspace_id: String,
    pub project_id: String,
    pub environment_id: String,
    pub image: String,
    pub replicas: u32,
    pub port: u32,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Per instance; agents that run containers apply them.
    #[serde(default, skip_serializing_if = "Limits::is_none")]
    pub limits: Limits,
    pub desired: Desired,
    /// Grows with every change, so an agent can ignore a stale document.
    pub version: i64,
}

/// What one instance may use, set per environment: 0 is no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Memory in MiB.
    #[serde(default)]
    pub memory_mb: u32,
    /// CPU in thousandths of a core (500: half a core).
    #[serde(default)]
    pub cpu_millis: u32,
}

impl Limits {
    /// Lowest and highest settable values.
    pub const MEMORY_MB: std::ops::RangeInclusive<u32> = 6..=1_048_576;
    pub const CPU_MILLIS: std::ops::RangeInclusive<u32> = 10..=1_024_000;

    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }
}

crate::state::wire_enum! {
    pub enum InstanceStatus as "instance status" {
        Pending = "pending",
        Running = "running",
        Failed = "failed",
        Inactive = "inactive",
    }
}

/// One instance as an agent reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportedInstance {
    pub id: String,
    pub address: String,
    pub status: InstanceStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Exits since it last ran stably (healthy for the agent's stable period).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: u32,
    /// It keeps exiting: `restarts` reached the agent's crash-loop threshold, even if it
    /// answers its health check between exits.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub crash_looping: bool,
    /// `failed` for good: the agent cannot run this image at all (a scheme it does not run, an
    /// `exec:` image where they are not allowed). Waiting will not help.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unrunnable: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

/// KV `slipway_instances` value for one deployment in one region.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstancesReport {
    pub instances: Vec<ReportedInstance>,
    pub reported_at_ms: i64,
    /// The `version` of the desired document the agent was carrying out (0: not said): a
    /// waiter for a newer document knows this report is not about it yet.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub version: i64,
    /// The epoch of the region lease the agent wrote it under (0: not said). An agent writes
    /// over a report only with a compare-and-set, and never over one of a later epoch: an
    /// agent that lost the region cannot overwrite its successor's reports.
    #[serde(default, skip_serializing_if = "is_zero_u64")]
    pub epoch: u64,
}

fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}
