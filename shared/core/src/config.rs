//! Configuration every service reads, from flags or the environment (ARCHITECTURE.md).

use std::time::Duration;

/// Settings shared by every Slipway process. Flatten into a service's own `clap::Parser`.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonConfig {
    #[command(flatten)]
    pub nats: NatsConfig,
    /// Replicas of the streams and KV buckets provisioned at start-up (3 on a 3-node cluster).
    #[arg(long, env = "SLIPWAY_JS_REPLICAS", default_value_t = 1)]
    pub js_replicas: usize,
    /// `text` or `json`.
    #[arg(long, env = "SLIPWAY_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Create or update the streams and buckets at start-up. `false` where the service's NATS
    /// user may not (nats/accounts.conf): it waits for them, and an operator provisions them
    /// with `slipway provision` as `admin`.
    #[arg(long, env = "SLIPWAY_PROVISION", default_value_t = true, action = clap::ArgAction::Set)]
    pub provision: bool,
}

/// The database of the services that keep records (not the region agents). Flatten into a
/// service's own `clap::Parser`.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseConfig {
    /// `sqlite://…` or `postgres://…`.
    #[arg(
        long,
        env = "SLIPWAY_DATABASE_URL",
        default_value = "sqlite://slipway.db"
    )]
    pub database_url: String,
    /// Connections this process opens to PostgreSQL at most: the sum over every process
    /// must stay below the server's `max_connections` (PostgreSQL's default: 100).
    #[arg(long, env = "SLIPWAY_DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,
    /// Key that secret environment variables are sealed under at rest: 64 hex digits
    /// (`openssl rand -hex 32`). The same on every orchestrator and actor; without it,
    /// secrets can be neither set nor run.
    #[arg(long, env = "SLIPWAY_SECRETS_KEY", hide_env_values = true)]
    pub secrets_key: Option<String>,
}

/// Where NATS is and how to authenticate: what every process, the CLI included, needs
/// (global: the CLI takes them before or after its subcommand).
#[derive(Debug, Clone, clap::Args)]
pub struct NatsConfig {
    /// NATS server(s), comma-separated.
    #[arg(
        long,
        global = true,
        env = "SLIPWAY_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// A NATS credentials file (JWT + NKey seed).
    #[arg(long, global = true, env = "SLIPWAY_NATS_CREDS")]
    pub nats_creds: Option<std::path::PathBuf>,
    #[arg(long, global = true, env = "SLIPWAY_NATS_USER")]
    pub nats_user: Option<String>,
    #[arg(
        long,
        global = true,
        env = "SLIPWAY_NATS_PASSWORD",
        hide_env_values = true
    )]
    pub nats_password: Option<String>,
    #[arg(
        long,
        global = true,
        env = "SLIPWAY_NATS_TOKEN",
        hide_env_values = true
    )]
    pub nats_token: Option<String>,
    /// An NKey seed (`SU…`).
    #[arg(long, global = true, env = "SLIPWAY_NATS_NKEY", hide_env_values = true)]
    pub nats_nkey: Option<String>,
    /// A CA certificate (PEM) to verify the server's TLS certificate with; enables TLS.
    #[arg(long, global = true, env = "SLIPWAY_NATS_TLS_CA")]
    pub nats_tls_ca: Option<std::path::PathBuf>,
    /// Where replies to this process's requests arrive: `_INBOX_<user>` when a user is set
    /// (`nats/accounts.conf` lets each user subscribe to its own prefix only), else `_INBOX`.
    #[arg(long, global = true, env = "SLIPWAY_NATS_INBOX_PREFIX")]
    pub nats_inbox_prefix: Option<String>,
}

impl NatsConfig {
    /// The inbox prefix this process uses (see `nats_inbox_prefix`).
    pub fn inbox_prefix(&self) -> String {
        match (&self.nats_inbox_prefix, &self.nats_user) {
            (Some(prefix), _) => prefix.clone(),
            (None, Some(user)) => inbox_prefix_of(user),
            (None, None) => "_INBOX".to_string(),
        }
    }
}

/// The inbox prefix of NATS user `user`: `_INBOX_<user>`.
pub fn inbox_prefix_of(user: &str) -> String {
    format!("_INBOX_{user}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Parses a humantime duration (`30m`, `3s`, `250ms`) for clap.
pub fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// Installs the global tracing subscriber. `RUST_LOG` filters (default `info`).
pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // try_init: a second call (tests) keeps the first subscriber.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
