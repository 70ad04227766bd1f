// The NATS side is light; HTTP runs on worker threads of its own (`server`).
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    slipway_core::service::main(env!("CARGO_PKG_NAME"), edge::run).await
}
