//! What the engine keeps per workflow in KV `slipway_workflows` (MessagePack): status, input,
//! and the journal of completed steps whose results a resumed run replays.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Started, not yet picked up by a worker.
    Pending,
    Running,
    /// Failed terminally; the failure handler has not finished yet.
    Failing,
    Completed,
    Failed,
}

impl Status {
    /// As API.md names it: `Failing` is still `running` to a caller.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running | Self::Failing => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    pub fn is_finished(self) -> bool {
        matches!(self, Self::Completed | Self::Failed)
    }
}

/// Where the workflow's `step` events go (`slipway.events.<project>.<deployment>.step`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EventScope {
    pub workspace_id: String,
    pub project_id: String,
    pub deployment_id: String,
    pub environment_slug: String,
}

/// How a journaled step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Its result is journaled and replayed on resume.
    Completed,
    /// It failed the workflow (kept for operators; a resumed run never replays it).
    Failed,
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub status: StepStatus,
    pub attempts: u32,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    /// The step's result (MessagePack), replayed on resume.
    #[serde(with = "serde_bytes", default)]
    pub result: Vec<u8>,
    #[serde(default)]
    pub error: Option<String>,
    /// The epoch of the lease the step ran under (0: none): a step re-run under a later
    /// holding tells its event apart from the earlier run's.
    #[serde(default)]
    pub epoch: u64,
    /// The workflow's commit point: once journaled, what follows only completes it.
    #[serde(default)]
    pub commit: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowRecord {
    pub id: String,
    pub kind: String,
    /// What the workflow is about (a deployment id, a project id), for operators.
    pub key: String,
    pub status: Status,
    #[serde(with = "serde_bytes")]
    pub input: Vec<u8>,
    #[serde(default)]
    pub scope: Option<EventScope>,
    pub steps: Vec<StepRecord>,
    #[serde(with = "serde_bytes", default)]
    pub output: Vec<u8>,
    #[serde(default)]
    pub error: Option<String>,
    /// Runs started (1 + resumes after a crash or an abort).
    pub runs: u32,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

impl WorkflowRecord {
    pub fn completed_steps(&self) -> impl Iterator<Item = &StepRecord> {
        self.steps
            .iter()
            .filter(|s| s.status == StepStatus::Completed)
    }

    /// The output of a completed workflow.
    pub fn output<T: serde::de::DeserializeOwned>(&self) -> Result<T, rmp_serde::decode::Error> {
        rmp_serde::from_slice(&self.output)
    }
}

pub(crate) fn key(workflow_id: &str) -> String {
    format!("wf.{workflow_id}")
}
