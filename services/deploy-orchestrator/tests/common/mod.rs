//! Deploy tests run on the test kit's [`Plane`]: a whole control plane over real processes
//! (a nats-server, a SQLite database, routing, deployment-actor, krane-agent running `slipway
//! demo-app`, and one or more deploy-orchestrators). This adds what only they assert on.
// Each test binary uses a part of it.
#![allow(dead_code, unused_imports)]

use serde_json::Value;
pub use slipway_testkit::{
    plane::{bin, connect_as, password, Plane, STANDBY_DELAY, TIMEOUT},
    stream_messages, ErrorReply,
};

/// The journaled steps of a production Deploy that replaces a live one, in order.
pub const DEPLOY_STEPS: [&str; 14] = [
    "load",
    "source",
    "deploying",
    "topology",
    "sentinels",
    "wait_instances",
    "record_instances",
    "openapi",
    "routes",
    "assign_routes",
    "ready",
    "live",
    "schedule_standby",
    "settle_project",
];

pub fn kinds(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e["type"].as_str().unwrap() {
            "step" => format!("step:{}", e["step"].as_str().unwrap()),
            "status" => format!("status:{}", e["status"].as_str().unwrap()),
            other => other.to_string(),
        })
        .collect()
}

/// The deployment a journaled commit step (`assign_routes`) replaced as live.
pub fn replaced_by_commit(step: &slipway_workflow::StepRecord) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Committed {
        previous: Option<String>,
    }
    rmp_serde::from_slice::<Committed>(&step.result)
        .expect("a commit step's result")
        .previous
}
