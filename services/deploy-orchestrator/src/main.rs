#[tokio::main]
async fn main() -> std::process::ExitCode {
    slipway_core::service::main(env!("CARGO_PKG_NAME"), deploy_orchestrator::run).await
}
