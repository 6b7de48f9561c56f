//! Building and running the app: `Application::build` binds the listener (port 0 in tests) and
//! wires the state; `run_until_stopped` serves until shutdown.

use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::routing::get;
use commerce_cache::{Cache, RedisCheck};
use commerce_db::DbCheck;
use commerce_kafka::KafkaCheck;
use commerce_web::health::Dependency;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::state::{App, AppState};

/// A built, bound, not yet running collector.
pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
}

impl Application {
    /// Connects the pools, binds `config.http_addr` and builds the router.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        commerce_telemetry::metrics_handle();
        let db = commerce_db::pool(&config.database_url, config.database_pool_size)?;
        let cache = Cache::new(&config.redis_url, &config.redis_key_prefix)?;
        let kafka_check = KafkaCheck::new(&config.kafka)?;
        let listener = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding {}", config.http_addr))?;
        let state = AppState(Arc::new(App {
            config,
            db: db.clone(),
            cache: cache.clone(),
        }));
        let dependencies = vec![
            Dependency::critical(DbCheck(db)),
            // Rankings are rebuilt from PostgreSQL, so Redis only degrades the collector;
            // without Kafka it has nothing to consume.
            Dependency::optional(RedisCheck(cache)),
            Dependency::critical(kafka_check),
        ];
        let router = router(state.clone(), dependencies);
        Ok(Self {
            listener,
            router,
            state,
        })
    }

    /// The bound port (useful when the config asked for port 0).
    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|a| a.port())
            .unwrap_or_default()
    }

    /// The app's state, for tests that inspect it.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Consumes, runs the scheduled jobs and serves until `shutdown` resolves; then stops
    /// consuming (committing stored offsets) and drains in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_rx, stop) = commerce_web::stop_flag(shutdown);
        let config = self.state.config.clone();
        let consumer = config.consume.then(|| {
            tokio::spawn(crate::consumer::run(
                config.clone(),
                self.state.db.clone(),
                self.state.cache.clone(),
                stop_rx.clone(),
            ))
        });
        let mut scheduler = match crate::rollup::start_scheduler(
            config.clone(),
            self.state.db.clone(),
            self.state.cache.clone(),
        )
        .await
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "scheduler did not start");
                None
            }
        };
        // Rebuild today's real-time ranking from the database (Redis may have lost it).
        let (db, cache) = (self.state.db.clone(), self.state.cache.clone());
        tokio::spawn(async move {
            let today = crate::apply::business_date(chrono::Utc::now(), config.time_zone);
            let result = async {
                let mut conn = db.get().await?;
                crate::ranking::rebuild_daily(&mut conn, &cache, config.weights, today).await
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(error = %format!("{e:#}"), "could not rebuild today's ranking in Redis");
            }
        });
        tracing::info!(addr = %self.listener.local_addr()?, "commerce-collector listening");
        commerce_web::serve(self.listener, self.router, stop).await?;
        if let Some(consumer) = consumer {
            let _ = consumer.await;
        }
        if let Some(s) = scheduler.as_mut() {
            let _ = s.shutdown().await;
        }
        tracing::info!("commerce-collector stopped");
        Ok(())
    }
}

fn router(state: AppState, dependencies: Vec<Dependency>) -> Router {
    let body_limit = state.config.body_limit_bytes;
    let api = Router::new()
        .route("/api/v1/rankings", get(crate::ranking::rankings))
        .route(
            "/api/v1/rankings/products/{product_id}",
            get(crate::ranking::product_rank),
        )
        .route(
            "/api/v1/product-metrics/{product_id}",
            get(crate::ranking::product_metrics),
        );
    commerce_web::with_platform_routes(api, dependencies, body_limit).with_state(state)
}
