//! Running an app: one server runner for every app, instead of a copy per app.
//!
//! [`Server`] binds the listener (port 0 in tests), installs the metrics recorder, starts the
//! app's background tasks beside the router, and on shutdown stops accepting connections,
//! drains in-flight requests, turns the stop flag so every background task finishes its work,
//! waits for them, and runs the app's last steps (flushing producers). A background task that
//! panics is logged as an error naming it; the others still stop cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use anyhow::Context as _;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

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

/// Turns a shutdown future into a broadcast flag for background tasks plus a future that
/// resolves with it: when `shutdown` resolves, the flag turns true.
pub fn stop_flag(
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (
    watch::Receiver<bool>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = watch::channel(false);
    let stop = async move {
        shutdown.await;
        let _ = tx.send(true);
    };
    (rx, stop)
}

type Task =
    Box<dyn FnOnce(watch::Receiver<bool>) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A bound, not yet running app: its listener, its router and its background tasks.
pub struct Server {
    name: &'static str,
    listener: TcpListener,
    router: Router,
    tasks: Vec<(&'static str, Task)>,
    last_steps: Vec<Box<dyn FnOnce() + Send>>,
}

impl Server {
    /// Installs the process's metrics recorder and binds `addr` for app `name`.
    pub async fn bind(name: &'static str, addr: SocketAddr) -> anyhow::Result<Self> {
        commerce_telemetry::metrics_handle();
        // Every app is built from the one workspace version.
        let version = env!("CARGO_PKG_VERSION");
        metrics::describe_gauge!(
            "app_build_info",
            "1, labelled with the app's name and version (join on it to tell deployments apart)."
        );
        metrics::gauge!("app_build_info", "app" => name, "version" => version).set(1.0);
        tracing::info!(app = name, version, "{name} {version} starting");
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("{name}: binding {addr}"))?;
        Ok(Self {
            name,
            listener,
            router: Router::new(),
            tasks: Vec::new(),
            last_steps: Vec::new(),
        })
    }

    /// The bound address (with the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.local_addr().port()
    }

    /// The routes to serve.
    pub fn router(mut self, router: Router) -> Self {
        self.router = router;
        self
    }

    /// A background task started with the server. It is handed the stop flag and must return
    /// soon after the flag turns true.
    pub fn task<F, Fut>(mut self, name: &'static str, task: F) -> Self
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.tasks
            .push((name, Box::new(move |stop| Box::pin(task(stop)))));
        self
    }

    /// A step run after requests drained and every background task returned.
    pub fn last_step(mut self, step: impl FnOnce() + Send + 'static) -> Self {
        self.last_steps.push(Box::new(step));
        self
    }

    /// Serves and runs the background tasks until `shutdown` resolves, then drains and stops
    /// them in order (see the module documentation).
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let (stop_rx, stop) = stop_flag(shutdown);
        let running: Vec<_> = self
            .tasks
            .into_iter()
            .map(|(task, start)| (task, tokio::spawn(start(stop_rx.clone()))))
            .collect();
        tracing::info!(app = self.name, %addr, "{} listening", self.name);
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop)
        .await
        .with_context(|| format!("{}: serving", self.name))?;
        for (task, handle) in running {
            if let Err(e) = handle.await
                && e.is_panic()
            {
                tracing::error!(app = self.name, task, "background task panicked");
            }
        }
        for step in self.last_steps {
            step();
        }
        tracing::info!(app = self.name, "{} stopped", self.name);
        Ok(())
    }
}
