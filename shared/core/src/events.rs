//! Lifecycle events on `SLIPWAY_EVENTS` (API.md "JetStream resources").

use serde::Serialize;

/// `slipway.events.<project_id>.<deployment_id>.<type>`
pub fn subject(project_id: &str, deployment_id: &str, kind: &str) -> String {
    crate::subjects::events::event(project_id, deployment_id, kind)
}

/// The fields every event carries; `detail` holds the type's own fields, flattened.
#[derive(Debug, Clone, Serialize)]
pub struct Event<D: Serialize> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub at_ms: i64,
    pub workspace_id: String,
    pub project_id: String,
    pub deployment_id: String,
    pub environment_slug: String,
    #[serde(flatten)]
    pub detail: D,
}

/// Detail of a `desired_state` event.
#[derive(Debug, Clone, Serialize)]
pub struct DesiredStateChanged {
    pub desired_state: String,
    /// The schedule that caused it.
    pub nonce: String,
}
