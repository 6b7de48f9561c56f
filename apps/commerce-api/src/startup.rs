//! Building and running the app: `Application::build` binds the listener (port 0 in tests) and
//! wires the layers together; `run_until_stopped` serves until shutdown through the shared
//! runner ([`commerce_web::Server`]).

use std::sync::Arc;

use axum::Router;
use commerce_cache::{Cache, RedisCheck};
use commerce_db::DbCheck;
use commerce_kafka::KafkaCheck;
use commerce_web::Server;
use commerce_web::health::Dependency;

use crate::config::{Config, DEV_ADMIN_PASSWORD};
use crate::domain::accounts;
use crate::domain::card::CardVault;
use crate::domain::coupons::Coupons;
use crate::domain::payments::Payments;
use crate::infra::auth::Authenticator;
use crate::infra::gateway::Gateway;
use crate::infra::limits::Limits;
use crate::infra::order_events::OrderEvents;
use crate::infra::product_cache::ProductCache;
use crate::infra::views::ViewPublisher;
use crate::state::{AdminStatus, App, AppState};

/// A built, bound, not yet running API.
pub struct Application {
    server: Server,
    state: AppState,
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
        let server = Server::bind("commerce-api", config.http_addr).await?;
        crate::metrics::register();
        let auth = Arc::new(
            Authenticator::new(
                config.jwt_secret.as_bytes(),
                config.jwt_ttl_seconds,
                config.hashing,
            )
            .accepting(&config.jwt_previous_secrets),
        );
        let topics = config.topics();
        let views = Arc::new(ViewPublisher::new(
            &config.kafka,
            topics.catalog.clone(),
            config.view_window,
        )?);
        let product_cache = Arc::new(ProductCache::new(
            cache.clone(),
            std::time::Duration::from_secs(config.product_cache_ttl_seconds),
        ));
        let callback_url = match &config.payment_callback_url {
            Some(url) => url.clone(),
            None => {
                let mut addr = server.local_addr();
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                format!("http://{addr}/api/v1/payments/callback")
            }
        };
        let payments = Arc::new(Payments {
            db: db.clone(),
            topics: topics.clone(),
            gateway: Arc::new(Gateway::new(config.gateway.clone(), callback_url)?),
            cards: CardVault::new(&config.card_key).opening(&config.previous_card_keys),
            settings: config.payments.clone(),
        });
        tracing::info!(%config, "starting commerce-api");
        let limits = Arc::new(Limits::new(&config.limits));
        let order_events = OrderEvents::new(config.order_events_per_user);
        let revocations = Arc::new(crate::infra::revocations::Revocations::new(
            cache.clone(),
            db.clone(),
            config.jwt_ttl_seconds,
        ));
        let state = AppState(Arc::new(App {
            limits,
            order_events,
            coupons: Arc::new(Coupons::new(db.clone(), cache.clone())),
            config,
            db: db.clone(),
            cache: cache.clone(),
            auth,
            topics,
            views,
            product_cache,
            payments,
            admin: Arc::default(),
            revocations,
        }));
        let dependencies = vec![
            Dependency::critical(DbCheck(db)),
            // The API serves from PostgreSQL when Redis is down, and the outbox holds events
            // while Kafka is down: both degrade the API, neither stops it.
            Dependency::optional(RedisCheck(cache)),
            Dependency::optional(kafka_check),
            Dependency::critical(AdminCheck(state.admin.clone())),
        ];
        let server = server.drain(state.config.drain);
        let server = match state.config.management_addr {
            None => server.router(router(state.clone(), dependencies)),
            Some(addr) => {
                let (public, management) = commerce_web::split_platform_routes(
                    crate::http::router(),
                    dependencies,
                    state.config.body_limit_bytes,
                );
                let cors = cors(&state.config.cors_allowed_origins);
                server
                    .router(public.layer(cors).with_state(state.clone()))
                    .management(addr, management.with_state(state.clone()))
                    .await?
            }
        };
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

    /// The runner, with the API's background tasks: the admin account (ensured in the
    /// background, retrying until the database answers, so the API starts and reports itself
    /// unready while PostgreSQL is down), the outbox relay, payment reconciliation and the refund
    /// worker (each unless disabled), and a final flush of the view publisher.
    pub fn into_server(self) -> Server {
        let state = self.state;
        let mut server = self.server;
        let admin = state.clone();
        server = server.task("admin account", move |stop| {
            ensure_admin_until_done(admin, stop)
        });
        let (views, cache) = (state.views.clone(), state.cache.clone());
        server = server.task("product views", move |stop| {
            crate::infra::views::run(views, cache, stop)
        });
        let backlog = state.db.clone();
        server = server.task("outbox backlog gauges", move |stop| {
            crate::infra::relay::report_backlog_until_stopped(backlog, stop)
        });
        let revocations = state.revocations.clone();
        server = server.task("ended sessions", move |stop| async move {
            revocations.watch(stop).await
        });
        let pool = state.db.clone();
        server = server.task("pool gauges", move |stop| {
            commerce_db::report_pool_until_stopped(pool, "commerce-api", stop)
        });
        let cache = state.cache.clone();
        server = server.task("redis memory gauges", move |stop| {
            commerce_cache::memory::report_until_stopped(cache, commerce_cache::memory::EVERY, stop)
        });
        if state.config.relay_enabled {
            let (config, db) = (state.config.relay(), state.db.clone());
            server = server.task("outbox relay", move |stop| {
                crate::infra::relay::run(config, db, stop)
            });
        }
        if state.config.payments.reconcile_enabled {
            let payments = state.payments.clone();
            server = server.task("payment reconciliation", move |stop| {
                crate::domain::reconcile::run(payments, stop)
            });
        }
        let coupons = state.coupons.clone();
        let every = state.config.coupon_gate_reconcile_interval;
        server = server.task("coupon gate reconciliation", move |stop| {
            crate::domain::coupons::run_gate_reconciliation(coupons, every, stop)
        });
        let (products, url) = (
            state.product_cache.clone(),
            state.config.database_direct_url.clone(),
        );
        server = server.task("product change listener", move |stop| {
            crate::infra::product_cache::listen(products, url, stop)
        });
        let (events, url) = (
            state.order_events.clone(),
            state.config.database_direct_url.clone(),
        );
        server = server.task("order status listener", move |stop| {
            crate::infra::order_events::listen(events, url, stop)
        });
        let (events, url) = (
            state.order_events.clone(),
            state.config.database_direct_url.clone(),
        );
        server = server.task("partner order status listener", move |stop| {
            crate::infra::order_events::listen_partner_orders(events, url, stop)
        });
        let warming = state.clone();
        server = server.task("product cache warm-up", move |_stop| {
            crate::http::catalog::warm(warming)
        });
        let edge = state.clone();
        server = server.task("rate limit housekeeping", move |stop| {
            edge_housekeeping(edge, stop)
        });
        if state.config.fulfilment.enabled {
            let (db, topics, settings) = (
                state.db.clone(),
                state.topics.clone(),
                state.config.fulfilment,
            );
            server = server.task("automatic delivery and confirmation", move |stop| {
                crate::domain::fulfilment::run(db, topics, settings, stop)
            });
        }
        if state.config.settlement.enabled {
            let (db, topics, settings) = (
                state.db.clone(),
                state.topics.clone(),
                state.config.settlement.clone(),
            );
            server = server.task("daily settlement", move |stop| {
                crate::domain::settlement_job::run(db, topics, settings, stop)
            });
        }
        if state.config.alerts.enabled {
            let (db, settings) = (state.db.clone(), state.config.alerts.clone());
            server = server.task("wishlist alert planner", move |stop| {
                crate::domain::alerts::run_planner(db, settings, stop)
            });
            let (db, settings) = (state.db.clone(), state.config.alerts.clone());
            server = server.task("wishlist alert sender", move |stop| {
                crate::domain::alerts::run_sender(db, settings, stop)
            });
        }
        if state.config.payments.refunds_enabled {
            let payments = state.payments.clone();
            server = server.task("payment refunds", move |stop| {
                crate::domain::refund_worker::run(payments, stop)
            });
        }
        server.last_step(move || state.views.flush())
    }

    /// Serves until `shutdown` resolves, then drains in-flight requests and lets the background
    /// tasks finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.into_server().run_until_stopped(shutdown).await
    }
}

/// Every minute, forgets rate-limit keys whose allowance is full again (the tables then hold
/// only recent clients); every hour, purges failed-login counts idle for a day, and sessions
/// and refresh tokens past their keeping.
async fn edge_housekeeping(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(std::time::Duration::from_secs(60));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for minute in 0u64.. {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        state.limits.forget_idle();
        if minute % 60 == 0 {
            let purged = match state.db.get().await {
                Ok(mut conn) => crate::domain::logins::purge_idle(&mut conn)
                    .await
                    .map_err(anyhow::Error::new),
                Err(e) => Err(anyhow::Error::new(e)),
            };
            match purged {
                Ok(n) if n > 0 => tracing::info!(purged = n, "purged idle failed-login counts"),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "could not purge failed-login counts")
                }
            }
            // Ended and expired sessions are kept 90 days (who was signed in, and how it
            // ended), their refresh tokens a day.
            let purged = match state.db.get().await {
                Ok(mut conn) => crate::domain::sessions::purge(
                    &mut conn,
                    std::time::Duration::from_secs(90 * 86_400),
                )
                .await
                .map_err(anyhow::Error::new),
                Err(e) => Err(anyhow::Error::new(e)),
            };
            match purged {
                Ok(n) if n > 0 => {
                    tracing::info!(purged = n, "purged old sessions and refresh tokens")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "could not purge old sessions")
                }
            }
        }
    }
}

async fn ensure_admin_until_done(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut delay = std::time::Duration::from_millis(200);
    loop {
        // Settled already: `serve` checked before serving.
        if state.admin.applied() || state.admin.refused() {
            return;
        }
        match secure_admin(&state).await {
            Ok(AdminCredentials::Applied) => return,
            Ok(AdminCredentials::DevelopmentPassword(login_id)) => {
                // Not ready, for good: the readiness check names the reason.
                tracing::error!(%login_id, "an administrator account accepts the development password; this production instance stays unready until it is changed");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "could not ensure the admin account yet; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(10));
    }
}

/// Where the administrator credentials stand after [`secure_admin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminCredentials {
    /// The configured admin account has the configured password, and (in production) no
    /// administrator accepts a development password.
    Applied,
    /// In production, this administrator account still accepts the development password.
    DevelopmentPassword(String),
}

/// Applies `COMMERCE_ADMIN_PASSWORD` to the configured admin account (creating it if missing,
/// re-hashing it when the stored hash does not match: so rotating the variable and restarting
/// rotates the password), then, outside the dev profile, checks that no administrator account
/// accepts the development password. The outcome is recorded in the state: a development
/// password found makes the instance unready, and either outcome spares the background task the
/// same work.
pub async fn secure_admin(state: &AppState) -> anyhow::Result<AdminCredentials> {
    let config = &state.config;
    let login_id = &config.admin_login_id;
    let password = &config.admin_password;
    let mut conn = state.db.get().await?;
    let admins = accounts::admins(&mut conn).await?;
    drop(conn);
    match admins.iter().find(|(_, login, _)| login == login_id) {
        None => {
            let hash = state.auth.hash_password(password.clone()).await?;
            let mut conn = state.db.get().await?;
            accounts::ensure_admin(&mut conn, login_id, &hash).await?;
            tracing::info!(login_id = %login_id, "admin account created");
        }
        Some((id, _, stored)) => {
            let current = state
                .auth
                .verify_password(password.clone(), Some(stored.clone()))
                .await?;
            if !current {
                let hash = state.auth.hash_password(password.clone()).await?;
                let mut conn = state.db.get().await?;
                accounts::set_password_hash(&mut conn, *id, &hash).await?;
                tracing::info!(login_id = %login_id, "admin password applied from COMMERCE_ADMIN_PASSWORD");
            }
        }
    }
    if config.profile != commerce_config::Profile::Dev {
        for (_, login, stored) in admins.iter().filter(|(_, login, _)| login != login_id) {
            let development = state
                .auth
                .verify_password(DEV_ADMIN_PASSWORD.to_owned(), Some(stored.clone()))
                .await?;
            if development {
                state.admin.set_refused();
                return Ok(AdminCredentials::DevelopmentPassword(login.clone()));
            }
        }
    }
    state.admin.set_applied();
    Ok(AdminCredentials::Applied)
}

/// Unready while an administrator account accepts the development password in production.
struct AdminCheck(Arc<AdminStatus>);

impl commerce_web::health::ReadinessCheck for AdminCheck {
    fn name(&self) -> &'static str {
        "admin_credentials"
    }

    fn check(&self) -> commerce_web::health::CheckFuture<'_> {
        let refused = self.0.refused();
        Box::pin(async move {
            if refused {
                Err("an administrator account accepts the development password".to_owned())
            } else {
                Ok(())
            }
        })
    }
}

/// `commerce-api relay`: the outbox relay alone, with `/metrics` and `/health/*` on
/// `HTTP_ADDR` (and the backlog gauges), so a relay-only deployment is watched like the rest.
pub async fn relay_server(config: Config) -> anyhow::Result<Server> {
    let pool = commerce_db::pool(&config.database_url, 4)?;
    let kafka_check = KafkaCheck::new(&config.kafka)?;
    let dependencies = vec![
        Dependency::critical(DbCheck(pool.clone())),
        Dependency::optional(kafka_check),
    ];
    let router =
        commerce_web::with_platform_routes(Router::new(), dependencies, config.body_limit_bytes);
    let (backlog, gauged) = (pool.clone(), pool.clone());
    let relay = config.relay();
    tracing::info!(%config, "starting commerce-api relay");
    let server = Server::bind("commerce-api-relay", config.http_addr).await?;
    crate::metrics::register_relay();
    Ok(server
        .router(router)
        .task("outbox backlog gauges", move |stop| {
            crate::infra::relay::report_backlog_until_stopped(backlog, stop)
        })
        .task("pool gauges", move |stop| {
            commerce_db::report_pool_until_stopped(gauged, "commerce-api", stop)
        })
        .task("outbox relay", move |stop| {
            crate::infra::relay::run(relay, pool, stop)
        }))
}

fn router(state: AppState, dependencies: Vec<Dependency>) -> Router {
    let body_limit = state.config.body_limit_bytes;
    let api = crate::http::router();
    let cors = cors(&state.config.cors_allowed_origins);
    commerce_web::with_platform_routes(api, dependencies, body_limit)
        .layer(cors)
        .with_state(state)
}

/// CORS for browser storefronts on the configured origins (none by default: no cross-origin
/// request is allowed). Preflights are answered here; clients may send the bearer token, an
/// `Idempotency-Key` and a `traceparent`, and may read `Location`, `Retry-After` and
/// `traceparent`.
fn cors(
    origins: &[String],
) -> tower::util::Either<tower_http::cors::CorsLayer, tower::layer::util::Identity> {
    use axum::http::{HeaderName, HeaderValue, Method, header};
    if origins.is_empty() {
        return tower::util::Either::Right(tower::layer::util::Identity::new());
    }
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    tower::util::Either::Left(
        tower_http::cors::CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("traceparent"),
            ])
            .expose_headers([
                header::LOCATION,
                header::RETRY_AFTER,
                HeaderName::from_static("traceparent"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}
