//! Building and running the app: `Application::build` binds the listener (port 0 in tests) and
//! wires the state; `run_until_stopped` serves until shutdown.

use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use commerce_cache::{Cache, RedisCheck};
use commerce_db::DbCheck;
use commerce_kafka::KafkaCheck;
use commerce_web::health::Dependency;
use tokio::net::TcpListener;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::outbox::Topics;
use crate::product_cache::ProductCache;
use crate::state::{App, AppState};
use crate::views::ViewPublisher;

/// A built, bound, not yet running API.
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
        let auth = Arc::new(Authenticator::new(
            config.jwt_secret.as_bytes(),
            config.jwt_ttl_seconds,
        ));
        let topics = Topics {
            catalog: config.catalog_topic.clone(),
            order: config.order_topic.clone(),
        };
        let views = ViewPublisher::new(&config.kafka, topics.catalog.clone())?;
        let product_cache = ProductCache::new(
            cache.clone(),
            std::time::Duration::from_secs(config.product_cache_ttl_seconds),
        );
        let callback_url = match &config.payment_callback_url {
            Some(url) => url.clone(),
            None => {
                let mut addr = listener.local_addr()?;
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                format!("http://{addr}/api/v1/payments/callback")
            }
        };
        let gateway = Arc::new(crate::gateway::Gateway::new(
            config.gateway.clone(),
            callback_url,
        )?);
        let cards = crate::card::CardVault::new(&config.card_key);
        tracing::info!(%config, "starting commerce-api");
        let state = AppState(Arc::new(App {
            config,
            db: db.clone(),
            cache: cache.clone(),
            auth,
            topics,
            views,
            product_cache,
            coupon_terms: Default::default(),
            gateway,
            cards,
        }));
        // The admin account is ensured in the background, retrying until the database answers:
        // the API starts (and reports itself unready) while PostgreSQL is down.
        let admin_state = state.clone();
        tokio::spawn(async move {
            let mut delay = std::time::Duration::from_millis(200);
            while let Err(e) = crate::routes::users::ensure_admin(&admin_state).await {
                tracing::warn!(error = %format!("{e:#}"), "could not ensure the admin account yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(10));
            }
        });
        let dependencies = vec![
            Dependency::critical(DbCheck(db)),
            // The API serves from PostgreSQL when Redis is down, and the outbox holds events
            // while Kafka is down: both degrade the API, neither stops it.
            Dependency::optional(RedisCheck(cache)),
            Dependency::optional(kafka_check),
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

    /// Serves (and runs the outbox relay, unless disabled) until `shutdown` resolves, then
    /// drains in-flight requests and lets the relay flush its producer.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_rx, stop) = commerce_web::stop_flag(shutdown);
        let relay = self.state.config.relay_enabled.then(|| {
            tokio::spawn(crate::relay::run(
                self.state.config.relay(),
                self.state.db.clone(),
                stop_rx.clone(),
            ))
        });
        let reconciler = self
            .state
            .config
            .payments
            .reconcile_enabled
            .then(|| tokio::spawn(crate::reconcile::run(self.state.clone(), stop_rx.clone())));
        tracing::info!(addr = %self.listener.local_addr()?, "commerce-api listening");
        commerce_web::serve(self.listener, self.router, stop).await?;
        if let Some(relay) = relay {
            let _ = relay.await;
        }
        if let Some(reconciler) = reconciler {
            let _ = reconciler.await;
        }
        self.state.views.flush();
        tracing::info!("commerce-api stopped");
        Ok(())
    }
}

fn router(state: AppState, dependencies: Vec<Dependency>) -> Router {
    let body_limit = state.config.body_limit_bytes;
    let api = crate::routes::router();
    commerce_web::with_platform_routes(api, dependencies, body_limit)
        .layer(axum::middleware::from_fn(crate::trace::propagate))
        .with_state(state)
}
