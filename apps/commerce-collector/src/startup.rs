//! Building and running the app: `Application::build` binds the listener (port 0 in tests) and
//! wires the state; `run_until_stopped` serves until shutdown.

use std::sync::Arc;

use axum::Router;
use commerce_cache::{Cache, RedisCheck};
use commerce_db::DbCheck;
use commerce_kafka::KafkaCheck;
use commerce_web::Server;
use commerce_web::health::Dependency;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::config::Config;
use crate::ranking::http;
use crate::ranking::live::Live;
use crate::state::{App, AppState};

/// A built, bound, not yet running collector.
pub struct Application {
    server: Server,
    state: AppState,
    consumer: crate::consumer::Health,
}

impl Application {
    /// Connects the pools, binds `config.http_addr` and builds the router.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let db = commerce_db::pool(&config.database_url, config.database_pool_size)?;
        let cache = Cache::connect(
            &config.redis_url,
            &config.redis_key_prefix,
            config.redis_ca_file.as_deref(),
            config.redis_cluster,
        )?;
        let kafka_check = KafkaCheck::new(&config.kafka)?;
        let server = Server::bind("commerce-collector", config.http_addr).await?;
        crate::metrics::register();
        let live = Live::new(
            cache.clone(),
            db.clone(),
            config.weights,
            config.time_zone,
            config.ranking_redis_connections,
            std::time::Duration::from_millis(config.ranking_cache_ttl_ms),
        );
        let responses = commerce_cache::Local::new(
            std::time::Duration::from_millis(config.ranking_cache_ttl_ms),
            10_000,
        );
        let state = AppState(Arc::new(App {
            config,
            responses,
            db: db.clone(),
            cache: cache.clone(),
            live,
            materializing: tokio::sync::Mutex::new(()),
        }));
        let consumer = crate::consumer::Health::default();
        // Readiness is for serving: rankings come from Redis or PostgreSQL, so only the
        // database is critical. Consuming has its own check, `/health/consuming` (Kafka and a
        // running consumer), which the `CollectorNotConsuming` alert watches: a broker outage
        // must not take every collector, and the ranking API, out of the load balancer.
        let kafka_check = std::sync::Arc::new(kafka_check);
        let mut dependencies = vec![
            Dependency::critical(DbCheck(db)),
            Dependency::optional(RedisCheck(cache)),
            Dependency::optional(kafka_check.clone()),
        ];
        let mut consuming = vec![Dependency::critical(kafka_check)];
        if state.config.consume {
            // Down while starting, recreating after a failure or a panicking batch, or
            // retrying a batch the database refuses.
            dependencies.push(Dependency::optional(consumer.clone()));
            consuming.push(Dependency::critical(consumer.clone()));
        }
        let consuming = commerce_web::health::checks_route("/health/consuming", consuming);
        let server = server.drain(state.config.drain);
        let server = match state.config.management_addr {
            None => server.router(router(state.clone(), dependencies).merge(consuming)),
            Some(addr) => {
                let (api, doc) = parts();
                let api = api.merge(SwaggerUi::new("/swagger-ui").url("/openapi.json", doc));
                let (public, management) = commerce_web::split_platform_routes(
                    api,
                    dependencies,
                    state.config.body_limit_bytes,
                );
                server
                    .router(public.with_state(state.clone()))
                    .management(addr, management.with_state(state.clone()).merge(consuming))
                    .await?
            }
        };
        Ok(Self {
            server,
            state,
            consumer,
        })
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
    /// commits stored offsets when it stops), the scheduled jobs, the fold, and the live rankings'
    /// refresher (which also rebuilds them from the database at start: Redis may have lost them).
    pub fn into_server(self) -> Server {
        let state = self.state;
        let config = state.config.clone();
        let mut server = self.server;
        if config.consume {
            let (config, db, live) = (config.clone(), state.db.clone(), state.live.clone());
            let health = self.consumer;
            server = server.task("consumer", move |stop| {
                crate::consumer::run(config, db, live, health, stop)
            });
        }
        let (db, live) = (state.db.clone(), state.live.clone());
        server = server.task("scheduled jobs", move |mut stop| async move {
            match crate::rollup::start_scheduler(config, db, live).await {
                Ok(mut scheduler) => {
                    let _ = stop.wait_for(|s| *s).await;
                    let _ = scheduler.shutdown().await;
                }
                Err(e) => tracing::error!(error = %format!("{e:#}"), "scheduler did not start"),
            }
        });
        let pool = state.db.clone();
        server = server.task("pool gauges", move |stop| {
            commerce_db::report_pool_until_stopped(pool, "commerce-collector", stop)
        });
        let cache = state.cache.clone();
        server = server.task("redis memory gauges", move |stop| {
            commerce_cache::memory::report_until_stopped(cache, commerce_cache::memory::EVERY, stop)
        });
        let (db, live, every) = (
            state.db.clone(),
            state.live.clone(),
            state.config.fold_interval,
        );
        server = server.task("fold", move |stop| crate::fold::run(db, live, every, stop));
        let live = state.live.clone();
        server.task("live rankings", move |stop| live.run(stop))
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

#[derive(OpenApi)]
#[openapi(info(
    title = "commerce-collector",
    description = "Rankings, product figures and partners' confirmed sales, read from the event stream. Errors are application/problem+json with a stable `code`."
))]
struct ApiDoc;

/// The routes and their OpenAPI description.
fn parts() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (api, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(http::rankings))
        .routes(routes!(http::best_sellers))
        .routes(routes!(http::product_rank))
        .routes(routes!(http::product_metrics))
        .routes(routes!(crate::partner_sales::partner_sales))
        .split_for_parts();
    (api, commerce_web::openapi::with_problem_responses(doc))
}

/// The collector's OpenAPI description, as `/openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    parts().1
}

fn router(state: AppState, dependencies: Vec<Dependency>) -> Router {
    let body_limit = state.config.body_limit_bytes;
    let (api, doc) = parts();
    let api = api.merge(SwaggerUi::new("/swagger-ui").url("/openapi.json", doc));
    commerce_web::with_platform_routes(api, dependencies, body_limit).with_state(state)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_committed_openapi_description_is_current() {
        commerce_web::openapi::assert_committed(
            &super::openapi(),
            std::path::Path::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../docs/openapi/commerce-collector.json"
            )),
        );
    }
}
