//! How steps and workflows fail.

use slipway_core::{ApiError, ErrorCode};

/// A step's failure: terminal ones fail the workflow at once, retryable ones are retried
/// with backoff until the step's attempts run out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    #[error("{0}")]
    Terminal(String),
    #[error("{0}")]
    Retryable(String),
    /// A write refused because the lease it was made under was taken over: this run stops
    /// (as when the lease is seen lost) and a later run decides again.
    #[error("{0}")]
    Fenced(String),
}

impl StepError {
    pub fn terminal(message: impl Into<String>) -> Self {
        Self::Terminal(message.into())
    }
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::Retryable(message.into())
    }
}

/// Invalid input, not found, conflicts and failed preconditions will not get better by
/// retrying; an unavailable dependency or an internal error may.
impl From<ApiError> for StepError {
    fn from(e: ApiError) -> Self {
        if e.is_stale_fencing_token() {
            return Self::Fenced(e.message);
        }
        match e.code {
            ErrorCode::Unavailable | ErrorCode::Internal => Self::Retryable(e.message),
            _ => Self::Terminal(e.message),
        }
    }
}

/// Errors that carry an API status (store errors, API errors) as step errors, so a step reads
/// `store.deployment(id).await.step_err()?`; whether they are retried follows the status.
pub trait StepResultExt<T> {
    fn step_err(self) -> Result<T, StepError>;
}

impl<T, E: Into<ApiError>> StepResultExt<T> for Result<T, E> {
    fn step_err(self) -> Result<T, StepError> {
        self.map_err(|e| StepError::from(e.into()))
    }
}

/// Why a run of a workflow stopped before completing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    /// A terminal step error, or a step out of attempts: the failure handler runs.
    #[error("{0}")]
    Failed(String),
    /// This run cannot go on (the journal or a lease was taken over, NATS is unreachable);
    /// the invocation is redelivered and a later run resumes from the journal.
    #[error("run aborted: {0}")]
    Aborted(String),
}

impl From<StepError> for WorkflowError {
    fn from(e: StepError) -> Self {
        Self::Failed(e.to_string())
    }
}

/// Errors of the engine's own API.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("workflow {0} not found")]
    NotFound(String),
    #[error("no workflow kind {0:?} is registered")]
    UnknownKind(String),
    #[error("cannot encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("corrupt workflow record: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// A later run of the same workflow holds the lease: this run is stale.
    #[error("superseded: {0}")]
    Superseded(String),
    #[error("cannot encode a lease: {0}")]
    Lease(#[source] serde_json::Error),
    #[error("JetStream: {0}")]
    Nats(#[source] async_nats::Error),
}

impl From<slipway_nats::lease::LeaseError> for EngineError {
    fn from(e: slipway_nats::lease::LeaseError) -> Self {
        use slipway_nats::lease::LeaseError;
        match e {
            LeaseError::Superseded(holder) => Self::Superseded(holder),
            LeaseError::Encode(e) => Self::Lease(e),
            LeaseError::Nats(e) => Self::Nats(e),
        }
    }
}

impl EngineError {
    pub(crate) fn nats(e: impl Into<async_nats::Error>) -> Self {
        Self::Nats(e.into())
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound(_) => ApiError::not_found(e.to_string()),
            EngineError::Nats(_) => ApiError::unavailable(e.to_string()),
            _ => ApiError::internal(e.to_string()),
        }
    }
}
