use slipway_core::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: expected sqlite://… or postgres://…")]
    UnsupportedUrl(String),
    #[error("cannot connect to the database: {0}")]
    Connect(sqlx::Error),
    #[error("cannot apply database migrations: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// The request contradicts what is stored (a route of another project, say).
    #[error("{0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Secrets(#[from] crate::SecretsError),
}

impl StoreError {
    /// A unique-constraint violation, reported as `what` already existing.
    pub(crate) fn or_conflict(e: sqlx::Error, what: impl FnOnce() -> String) -> Self {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Conflict(what()),
            _ => Self::Database(e),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => ApiError::not_found(m),
            StoreError::Conflict(m) => ApiError::conflict(m),
            StoreError::Invalid(m) => ApiError::invalid_argument(m),
            StoreError::Secrets(
                e @ (crate::SecretsError::NoKey | crate::SecretsError::Unsealable(_)),
            ) => ApiError::failed_precondition(e.to_string()),
            StoreError::Connect(_) | StoreError::Database(_) => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::unavailable("database unavailable; retry")
            }
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::internal("internal store error")
            }
        }
    }
}
