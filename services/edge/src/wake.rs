//! Waking a deployment in standby on a request: one `slipway.deploy.v1.wake_deployment` call
//! per deployment at a time from this edge (the orchestrator joins concurrent wakes from
//! several edges into one workflow); the requests themselves wait for the route table to show
//! a running instance.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use slipway_core::{subjects, time::millis};
use slipway_proto::v1::{WakeDeploymentRequest, WorkflowRunReply};

pub struct Waker {
    nats: async_nats::Client,
    timeout: Duration,
    in_flight: Mutex<HashSet<String>>,
}

impl Waker {
    pub fn new(nats: async_nats::Client, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            nats,
            timeout,
            in_flight: Mutex::new(HashSet::new()),
        })
    }

    /// Starts waking `deployment_id` unless this edge is already doing so.
    pub fn wake(self: &Arc<Self>, deployment_id: &str) {
        let first = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(deployment_id.to_string());
        if !first {
            return;
        }
        let waker = self.clone();
        let deployment_id = deployment_id.to_string();
        tokio::spawn(async move {
            waker.call(&deployment_id).await;
            waker
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&deployment_id);
        });
    }

    async fn call(&self, deployment_id: &str) {
        tracing::info!(
            deployment_id,
            "waking a deployment in standby for a request"
        );
        let request = WakeDeploymentRequest {
            deployment_id: deployment_id.into(),
            wait_ms: Some(millis(self.timeout)),
        };
        // The reply comes when the wake is done or after `wait_ms`.
        let timeout = self.timeout + Duration::from_secs(5);
        let reply: Result<WorkflowRunReply, _> = slipway_nats::client::request(
            &self.nats,
            subjects::deploy::WAKE_DEPLOYMENT.into(),
            &request,
            timeout,
        )
        .await;
        match reply {
            Ok(r) => {
                tracing::info!(deployment_id, workflow_id = %r.workflow_id, status = %r.status, "wake answered")
            }
            Err(e) => tracing::warn!(deployment_id, error = %e, "cannot wake the deployment"),
        }
    }
}
