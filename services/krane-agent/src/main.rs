use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = krane_agent::Config::parse();
    slipway_core::config::init_logging(config.common.log_format);
    match krane_agent::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("krane-agent failed: {e:#}");
            eprintln!("krane-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
