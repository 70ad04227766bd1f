//! The SQL store. sqlx's `Any` driver over SQLite (WAL; the zero-setup default) or
//! PostgreSQL, with the migrations in `migrations/` embedded in every binary.
//!
//! Queries are written once, in SQL both databases accept (`$N` placeholders, BIGINT, TEXT).
//! Transactions that read-then-write lock what they read: `FOR UPDATE` on PostgreSQL,
//! `BEGIN IMMEDIATE` (one writer at a time) on SQLite.

mod commit;
mod deploy;
mod deployments;
mod desired_state;
mod error;
mod projects;
pub use projects::Shape;
mod records;
mod routes;
mod scale;
pub mod secrets;
mod variables;

use std::{sync::Arc, time::Duration};

use sqlx::{any::AnyPoolOptions, AnyPool, Executor};

pub use commit::{Assigned, Assignment, LiveChange};
pub use deploy::Among;
pub use deployments::{Created, Idempotency, IDEMPOTENCY_WINDOW_MS};
pub use desired_state::ApplyOutcome;
pub use error::StoreError;
pub use records::*;
pub use routes::NewRoute;
pub use secrets::{SecretsError, SecretsKey};
pub use slipway_core::krane::Limits;
pub use variables::{Variable, VariableValue};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    /// Where transactions that write run: on SQLite a pool of one connection, so this
    /// process's writers queue for it in order instead of in SQLite's busy handler (which
    /// sleeps up to 100 ms at a time while the lock may already be free); on PostgreSQL the
    /// pool itself.
    writer: AnyPool,
    backend: Backend,
    /// On SQLite, where concurrent desired-state changes are written together.
    group_commit: Option<desired_state::GroupCommit>,
    /// Seals and opens secret variables; without it, secrets can be neither set nor run.
    secrets: Option<Arc<SecretsKey>>,
}

/// A pool of at most `max` SQLite connections in WAL mode, waiting up to 10 s for another
/// process's write lock.
fn sqlite_options(max: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .acquire_timeout(Duration::from_secs(30))
        .max_connections(max)
        .after_connect(|conn, _| {
            Box::pin(async move {
                conn.execute(
                    "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                )
                .await?;
                Ok(())
            })
        })
}

/// Connections a process opens to PostgreSQL at most, unless configured.
const POSTGRES_MAX_CONNECTIONS: u32 = 16;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Store {
    /// Connects to `sqlite://path` (the file is created if missing) or `postgres://…`.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, POSTGRES_MAX_CONNECTIONS).await
    }

    /// [`connect`](Self::connect) with at most `postgres_max` connections to PostgreSQL.
    pub async fn connect_with(url: &str, postgres_max: u32) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if url.starts_with("sqlite:") {
            let url = if url.contains('?') {
                url.to_string()
            } else {
                format!("{url}?mode=rwc")
            };
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let options = match backend {
            Backend::Sqlite => sqlite_options(8),
            Backend::Postgres => AnyPoolOptions::new()
                .acquire_timeout(Duration::from_secs(30))
                .max_connections(postgres_max.max(1)),
        };
        let pool = options.connect(&url).await.map_err(StoreError::Connect)?;
        let writer = match backend {
            Backend::Sqlite => sqlite_options(1)
                .connect(&url)
                .await
                .map_err(StoreError::Connect)?,
            Backend::Postgres => pool.clone(),
        };
        let mut store = Self {
            pool,
            writer,
            backend,
            group_commit: None,
            secrets: None,
        };
        if backend == Backend::Sqlite {
            store.group_commit = Some(desired_state::GroupCommit::start(store.clone()));
        }
        Ok(store)
    }

    /// Connects and applies pending migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let store = Self::connect(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens the database `config` names, with its secrets key.
    pub async fn open_configured(
        config: &slipway_core::config::DatabaseConfig,
    ) -> Result<Self, StoreError> {
        let store = Self::connect_with(&config.database_url, config.database_max_connections);
        let store = store.await?;
        store.migrate().await?;
        Ok(store.with_secrets_key(config.secrets_key.as_deref())?)
    }

    /// The key secret variables are sealed under (`SLIPWAY_SECRETS_KEY`, 64 hex digits).
    pub fn with_secrets_key(mut self, hex: Option<&str>) -> Result<Self, SecretsError> {
        self.secrets = match hex.filter(|h| !h.trim().is_empty()) {
            Some(hex) => Some(Arc::new(SecretsKey::parse(hex)?)),
            None => None,
        };
        Ok(self)
    }

    fn secrets(&self) -> Result<&SecretsKey, SecretsError> {
        self.secrets.as_deref().ok_or(SecretsError::NoKey)
    }

    /// Applies pending migrations. Safe when several services start at once: PostgreSQL
    /// serialises migrators with an advisory lock; on SQLite a migrator that loses the race
    /// fails inside its rolled-back transaction and simply runs again, finding the work done.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let mut attempt = 0u64;
        loop {
            match MIGRATOR.run(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt < 10 => {
                    tracing::debug!(error = %e, attempt, "migration raced; retrying");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                }
                Err(e) => return Err(StoreError::Migrate(e)),
            }
        }
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// A transaction that may write after reading.
    pub(crate) async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let tx = match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(tx)
    }

    /// Row-lock suffix for a SELECT inside [`Store::begin`].
    pub(crate) fn for_update(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }

    /// [`Store::for_update`] of the rows of `tables` only (aliases of a join), so a join
    /// does not also lock rows others need (an environment's row, which every insert of a
    /// deployment into it reads for its foreign key).
    pub(crate) fn for_update_of(&self, tables: &str) -> String {
        match self.backend {
            Backend::Sqlite => String::new(),
            Backend::Postgres => format!(" FOR UPDATE OF {tables}"),
        }
    }
}
