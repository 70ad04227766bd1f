//! Lifecycle events of a deployment on `SLIPWAY_EVENTS`, each with a message id, so a step
//! that runs again after a crash does not tell its part of the story twice.

use async_nats::HeaderMap;
use serde::Serialize;
use slipway_core::{
    events::{self, Event},
    time::now_ms,
};
use slipway_workflow::{EventScope, StepError};

use crate::Orchestrator;

impl Orchestrator {
    /// Publishes event `kind` of the scope's deployment; `id` makes it unique (per kind
    /// and deployment) for deduplication.
    pub(crate) async fn event<D: Serialize>(
        &self,
        scope: &EventScope,
        kind: &'static str,
        id: &str,
        detail: D,
    ) -> Result<(), StepError> {
        let event = Event {
            kind,
            at_ms: now_ms(),
            workspace_id: scope.workspace_id.clone(),
            project_id: scope.project_id.clone(),
            deployment_id: scope.deployment_id.clone(),
            environment_slug: scope.environment_slug.clone(),
            detail,
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("{kind}.{}.{id}", scope.deployment_id).as_str(),
        );
        let payload = serde_json::to_vec(&event)
            .map_err(|e| StepError::terminal(format!("cannot encode a {kind} event: {e}")))?;
        let retry = |e: String| StepError::retryable(format!("cannot publish a {kind} event: {e}"));
        self.inner
            .js
            .publish_with_headers(
                events::subject(&scope.project_id, &scope.deployment_id, kind),
                headers,
                payload.into(),
            )
            .await
            .map_err(|e| retry(e.to_string()))?
            .await
            .map_err(|e| retry(e.to_string()))?;
        Ok(())
    }
}
