//! Lifecycle events of a deployment on `SLIPWAY_EVENTS`, each with a message id, so a step
//! that runs again after a crash does not tell its part of the story twice.

use serde::Serialize;
use slipway_core::{events::Event, time::SharedClock};
use slipway_workflow::{EventScope, StepError};

/// The publisher of deployment lifecycle events.
#[derive(Clone)]
pub(crate) struct Events {
    js: async_nats::jetstream::Context,
    clock: SharedClock,
}

/// Where a deployment's events go.
pub fn scope_of(d: &slipway_store::Deployment) -> EventScope {
    EventScope {
        workspace_id: d.workspace_id.clone(),
        project_id: d.project_id.clone(),
        deployment_id: d.id.clone(),
        environment_slug: d.environment_slug.clone(),
    }
}

impl Events {
    pub(crate) fn new(js: async_nats::jetstream::Context, clock: SharedClock) -> Self {
        Self { js, clock }
    }

    /// Publishes event `kind` of the scope's deployment; `id` makes it unique (per kind
    /// and deployment) for deduplication.
    pub(crate) async fn publish<D: Serialize>(
        &self,
        scope: &EventScope,
        kind: &'static str,
        id: &str,
        detail: D,
    ) -> Result<(), StepError> {
        let event = Event {
            kind,
            at_ms: self.clock.now_ms(),
            workspace_id: scope.workspace_id.clone(),
            project_id: scope.project_id.clone(),
            deployment_id: scope.deployment_id.clone(),
            environment_slug: scope.environment_slug.clone(),
            detail,
        };
        let msg_id = slipway_nats::events::message_id(kind, &scope.deployment_id, id);
        slipway_nats::events::publish(&self.js, &event, &msg_id)
            .await
            .map_err(|e| match e.is_permanent() {
                true => StepError::terminal(e.to_string()),
                false => StepError::retryable(e.to_string()),
            })
    }
}
