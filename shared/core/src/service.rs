//! What every service binary does around its own work: read its configuration, set up
//! logging, say when it is ready, and turn an error into a message and an exit code.

use std::{fmt::Display, future::Future, process::ExitCode};

use crate::config::{init_logging, CommonConfig};

/// The log target of the readiness line, so `RUST_LOG=warn,slipway::ready=info` still shows it.
pub const READY_TARGET: &str = "slipway::ready";

/// The line a service logs once it answers requests: tests and `slipway dev` wait for it.
pub fn ready_line(service: &str) -> String {
    format!("{service} ready")
}

/// Logs the readiness line of `service`.
pub fn announce_ready(service: &str) {
    tracing::info!(target: READY_TARGET, service, "{}", ready_line(service));
}

/// A service's configuration: its own flags and environment, the common ones flattened in.
pub trait ServiceConfig: clap::Parser {
    fn common(&self) -> &CommonConfig;
}

/// The whole `main` of a service binary: parses `C`, sets up logging and runs `run`; an error
/// is logged and printed, and the process exits non-zero.
pub async fn main<C, F, Fut, E>(service: &str, run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let config = C::parse();
    init_logging(config.common().log_format);
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{service} failed: {e:#}");
            eprintln!("{service}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
