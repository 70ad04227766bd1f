use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = deploy_orchestrator::Config::parse();
    slipway_core::config::init_logging(config.common.log_format);
    match deploy_orchestrator::run(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("deploy-orchestrator failed: {e:#}");
            eprintln!("deploy-orchestrator: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
