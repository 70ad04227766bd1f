//! Waiting for a service's stop signal.

/// Returns on Ctrl-C (SIGINT) or SIGTERM.
pub async fn signal() {
    let terminate = async {
        #[cfg(unix)]
        if let Ok(mut sig) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            sig.recv().await;
            return;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        _ = terminate => tracing::info!("terminated; stopping"),
    }
}
