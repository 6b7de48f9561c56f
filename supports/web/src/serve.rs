//! Running an app: one server runner for every app, instead of a copy per app.
//!
//! [`Server`] binds the listener (port 0 in tests), installs the metrics recorder, starts the
//! app's background tasks beside the router, and on shutdown drains ([`Drain`]): readiness
//! turns 503 first while requests are still served (so load balancers stop sending new ones),
//! then the listener closes, in-flight requests and streams get a deadline, the stop flag turns
//! so every background task finishes its work (the relay and the consumer commit), and the
//! app's last steps run (flushing producers). A background task that panics is logged as an
//! error naming it; the others still stop cleanly. An optional management listener serves the
//! health and metrics routes apart from the public port, and closes last.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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

/// How an app stops (`SHUTDOWN_READINESS_DELAY_MS`, `SHUTDOWN_DRAIN_SECONDS`).
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    /// How long readiness answers 503 while requests are still served, before the listener
    /// closes: at least a load balancer's probe interval times its failure threshold.
    pub readiness_delay: Duration,
    /// How long in-flight requests and open streams get once the listener closed; whatever
    /// is still open then is cut.
    pub deadline: Duration,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            readiness_delay: Duration::ZERO,
            deadline: Duration::from_secs(25),
        }
    }
}

impl Drain {
    /// Reads `SHUTDOWN_READINESS_DELAY_MS` (default 5000, 0 in development) and
    /// `SHUTDOWN_DRAIN_SECONDS` (default 25).
    pub fn read<S: commerce_config::Source>(
        r: &commerce_config::Reader<S>,
        production: bool,
    ) -> Result<Self, commerce_config::ConfigError> {
        let delay = if production { 5_000 } else { 0 };
        Ok(Self {
            readiness_delay: Duration::from_millis(r.in_range(
                "SHUTDOWN_READINESS_DELAY_MS",
                delay,
                0..=300_000,
            )?),
            deadline: Duration::from_secs(r.in_range("SHUTDOWN_DRAIN_SECONDS", 25, 0..=3_600)?),
        })
    }
}

/// A bound, not yet running app: its listener, its router and its background tasks.
pub struct Server {
    name: &'static str,
    listener: TcpListener,
    router: Router,
    tasks: Vec<(&'static str, Task)>,
    last_steps: Vec<Box<dyn FnOnce() + Send>>,
    drain: Drain,
    draining: Arc<AtomicBool>,
    management: Option<(TcpListener, Router)>,
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
        metrics::describe_gauge!(
            "app_draining",
            "1 from the shutdown signal until the process exits (readiness answers 503), else 0."
        );
        metrics::gauge!("app_draining").set(0.0);
        Ok(Self {
            name,
            listener,
            router: Router::new(),
            tasks: Vec::new(),
            last_steps: Vec::new(),
            drain: Drain::default(),
            draining: Arc::new(AtomicBool::new(false)),
            management: None,
        })
    }

    /// How this app drains on shutdown.
    pub fn drain(mut self, drain: Drain) -> Self {
        self.drain = drain;
        self
    }

    /// A second listener on `addr` serving `router` (the health and metrics routes), kept open
    /// until the public listener has drained, so probes and scrapes see the whole shutdown.
    pub async fn management(mut self, addr: SocketAddr, router: Router) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("{}: binding the management listener {addr}", self.name))?;
        self.management = Some((listener, with_drain(router, self.draining.clone())));
        Ok(self)
    }

    /// The management listener's address, when there is one.
    pub fn management_addr(&self) -> Option<SocketAddr> {
        self.management
            .as_ref()
            .and_then(|(l, _)| l.local_addr().ok())
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

    /// The routes to serve. `/health/ready` answers 503 `DRAINING` once shutdown began.
    pub fn router(mut self, router: Router) -> Self {
        self.router = with_drain(router, self.draining.clone());
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
        let name = self.name;
        let (stop_tx, stop_rx) = watch::channel(false);
        let running: Vec<_> = self
            .tasks
            .into_iter()
            .map(|(task, start)| (task, tokio::spawn(start(stop_rx.clone()))))
            .collect();
        tracing::info!(app = name, %addr, "{name} listening");
        let (close_tx, close_rx) = tokio::sync::oneshot::channel::<()>();
        let mut serving = tokio::spawn(
            axum::serve(
                self.listener,
                self.router
                    .into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = close_rx.await;
            })
            .into_future(),
        );
        let (management_close, management) = match self.management {
            Some((listener, router)) => {
                let (tx, rx) = tokio::sync::oneshot::channel::<()>();
                let served = tokio::spawn(
                    axum::serve(listener, router)
                        .with_graceful_shutdown(async move {
                            let _ = rx.await;
                        })
                        .into_future(),
                );
                (Some(tx), Some(served))
            }
            None => (None, None),
        };

        // Serve until shutdown (or until the server fails by itself).
        let early = tokio::select! {
            () = shutdown => None,
            served = &mut serving => Some(served),
        };
        if let Some(served) = early {
            let _ = stop_tx.send(true);
            served
                .context("the server task failed")?
                .with_context(|| format!("{name}: serving"))?;
        } else {
            // 1. Readiness turns; requests are still served while load balancers notice.
            self.draining.store(true, Ordering::Relaxed);
            metrics::gauge!("app_draining").set(1.0);
            tracing::info!(
                app = name,
                delay_ms = self.drain.readiness_delay.as_millis() as u64,
                "draining: readiness answers 503"
            );
            tokio::time::sleep(self.drain.readiness_delay).await;
            // 2. The listener closes; in-flight requests and streams get the deadline; the
            // background tasks stop (the relay and the consumer commit what they hold).
            let _ = close_tx.send(());
            let _ = stop_tx.send(true);
            match tokio::time::timeout(self.drain.deadline, &mut serving).await {
                Ok(served) => served
                    .context("the server task failed")?
                    .with_context(|| format!("{name}: serving"))?,
                Err(_) => {
                    tracing::warn!(
                        app = name,
                        deadline_s = self.drain.deadline.as_secs(),
                        "drain deadline passed; closing the connections still open"
                    );
                    serving.abort();
                }
            }
        }
        for (task, handle) in running {
            if let Err(e) = handle.await
                && e.is_panic()
            {
                tracing::error!(app = name, task, "background task panicked");
            }
        }
        for step in self.last_steps {
            step();
        }
        if let (Some(close), Some(served)) = (management_close, management) {
            let _ = close.send(());
            let _ = tokio::time::timeout(Duration::from_secs(5), served).await;
        }
        tracing::info!(app = name, "{name} stopped");
        Ok(())
    }
}

/// Answers `/health/ready` with 503 `DRAINING` once `draining` is set; everything else passes.
fn with_drain(router: Router, draining: Arc<AtomicBool>) -> Router {
    router.layer(DrainLayer(draining))
}

/// Answers `/health/ready` with 503 `DRAINING` once shutdown began; passes everything else
/// through without a boxed future.
#[derive(Clone)]
struct DrainLayer(Arc<AtomicBool>);

impl<S> tower::Layer<S> for DrainLayer {
    type Service = DrainService<S>;

    fn layer(&self, inner: S) -> DrainService<S> {
        DrainService {
            inner,
            draining: self.0.clone(),
        }
    }
}

#[derive(Clone)]
struct DrainService<S> {
    inner: S,
    draining: Arc<AtomicBool>,
}

impl<S> tower::Service<axum::extract::Request> for DrainService<S>
where
    S: tower::Service<axum::extract::Request, Response = axum::response::Response>,
{
    type Response = axum::response::Response;
    type Error = S::Error;
    type Future = futures::future::Either<
        std::future::Ready<Result<axum::response::Response, S::Error>>,
        S::Future,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: axum::extract::Request) -> Self::Future {
        if self.draining.load(Ordering::Relaxed) && request.uri().path() == "/health/ready" {
            use axum::response::IntoResponse as _;
            let draining = (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({"status": "DRAINING", "checks": []})),
            )
                .into_response();
            return futures::future::Either::Left(std::future::ready(Ok(draining)));
        }
        futures::future::Either::Right(self.inner.call(request))
    }
}
