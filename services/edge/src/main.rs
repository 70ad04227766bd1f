#[tokio::main]
async fn main() -> std::process::ExitCode {
    slipway_core::service::main(env!("CARGO_PKG_NAME"), edge::run).await
}
