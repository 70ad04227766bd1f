//! The per-project lease (BEHAVIOUR.md "Per-project exclusion"): taken by deploy's steps 9–12
//! and by the whole of rollback and promote. Its epoch is registered with the store before
//! anything is read under it, so from then on a former holder's writes are refused, and every
//! write made under it carries the epoch as its fencing token.

use slipway_store::StoreError;
use slipway_workflow::{Context, WorkflowError};

use crate::Orchestrator;

impl Orchestrator {
    /// Takes the project's lease; returns the fencing token of writes made under it (0 when
    /// the workflow is past its commit point, where nothing is written under it any more).
    pub(crate) async fn lease_project(
        &self,
        ctx: &mut Context,
        project_id: &str,
    ) -> Result<u64, WorkflowError> {
        let store = &self.inner.store;
        let register = |epoch| async move {
            match store.fence(project_id, epoch).await {
                Ok(()) => Ok(()),
                Err(StoreError::Conflict(e)) => Err(WorkflowError::Aborted(format!(
                    "the project lease was taken over right away: {e}"
                ))),
                Err(e) => Err(WorkflowError::Aborted(format!(
                    "cannot register the project lease's epoch: {e}"
                ))),
            }
        };
        let lease = ctx
            .lease(&format!("project.{project_id}"), register)
            .await?;
        Ok(lease.unwrap_or(0))
    }
}
