//! A payment-gateway simulator: the API's card payments go through it in development and tests.

pub mod config;

use anyhow::Context as _;
use axum::Router;
use tokio::net::TcpListener;

use crate::config::Config;

/// A built, bound, not yet running simulator.
pub struct Application {
    listener: TcpListener,
    router: Router,
}

impl Application {
    /// Binds `config.http_addr` and builds the router.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        commerce_telemetry::metrics_handle();
        let listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding {}", config.http_addr))?;
        let router = commerce_web::with_platform_routes(Router::new(), Vec::new(), 64 * 1024);
        Ok(Self { listener, router })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// Serves until `shutdown` resolves.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!(addr = %self.listener.local_addr()?, "pg-simulator listening");
        commerce_web::serve(self.listener, self.router, shutdown).await?;
        Ok(())
    }
}
