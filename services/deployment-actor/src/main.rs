use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = deployment_actor::Config::parse();
    slipway_core::config::init_logging(config.common.log_format);
    match deployment_actor::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("deployment-actor failed: {e:#}");
            eprintln!("deployment-actor: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
