use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = routing::Config::parse();
    slipway_core::config::init_logging(config.common.log_format);
    match routing::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("routing failed: {e:#}");
            eprintln!("routing: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
