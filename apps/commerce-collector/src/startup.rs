//! Building and running the app: `Application::build` binds the listener (port 0 in tests) and
//! wires the state; `run_until_stopped` serves until shutdown.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use commerce_cache::{Cache, RedisCheck};
use commerce_db::DbCheck;
use commerce_kafka::KafkaCheck;
use commerce_web::Server;
use commerce_web::health::Dependency;

use crate::config::Config;
use crate::state::{App, AppState};

/// A built, bound, not yet running collector.
pub struct Application {
    server: Server,
    state: AppState,
}

impl Application {
    /// Connects the pools, binds `config.http_addr` and builds the router.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let db = commerce_db::pool(&config.database_url, config.database_pool_size)?;
        let cache = Cache::new(&config.redis_url, &config.redis_key_prefix)?;
        let kafka_check = KafkaCheck::new(&config.kafka)?;
        let server = Server::bind("commerce-collector", config.http_addr).await?;
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
        let server = server.router(router(state.clone(), dependencies));
        Ok(Self { server, state })
    }

    /// The bound port (useful when the config asked for port 0).
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The app's state, for tests that inspect it.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The runner, with the collector's background tasks: the consumer (unless disabled; it
    /// commits stored offsets when it stops), the scheduled jobs, and a rebuild of today's
    /// real-time ranking from the database (Redis may have lost it).
    pub fn into_server(self) -> Server {
        let state = self.state;
        let config = state.config.clone();
        let mut server = self.server;
        if config.consume {
            let (config, db, cache) = (config.clone(), state.db.clone(), state.cache.clone());
            server = server.task("consumer", move |stop| {
                crate::consumer::run(config, db, cache, stop)
            });
        }
        let (jobs_config, db, cache) = (config.clone(), state.db.clone(), state.cache.clone());
        server = server.task("scheduled jobs", move |mut stop| async move {
            match crate::rollup::start_scheduler(jobs_config, db, cache).await {
                Ok(mut scheduler) => {
                    let _ = stop.wait_for(|s| *s).await;
                    let _ = scheduler.shutdown().await;
                }
                Err(e) => tracing::error!(error = %format!("{e:#}"), "scheduler did not start"),
            }
        });
        let (db, cache) = (state.db.clone(), state.cache.clone());
        server.task("daily ranking rebuild", move |_stop| async move {
            let today = crate::apply::business_date(chrono::Utc::now(), config.time_zone);
            let result = async {
                let mut conn = db.get().await?;
                crate::ranking::rebuild_daily(&mut conn, &cache, config.weights, today).await
            }
            .await;
            if let Err(e) = result {
                tracing::warn!(error = %format!("{e:#}"), "could not rebuild today's ranking in Redis");
            }
        })
    }

    /// Consumes, runs the scheduled jobs and serves until `shutdown` resolves; then stops
    /// consuming (committing stored offsets) and drains in-flight requests.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.into_server().run_until_stopped(shutdown).await
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
