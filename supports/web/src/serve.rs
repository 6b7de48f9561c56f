//! Serving a router until shutdown.

use axum::Router;
use tokio::net::TcpListener;

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutdown signal received, draining in-flight requests");
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting connections
/// and waits for in-flight requests to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Turns a shutdown future into a broadcast flag for background tasks plus a future for
/// [`serve`]: when `shutdown` resolves, the flag turns true and the server starts draining.
pub fn stop_flag(
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (
    tokio::sync::watch::Receiver<bool>,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stop = async move {
        shutdown.await;
        let _ = tx.send(true);
    };
    (rx, stop)
}
