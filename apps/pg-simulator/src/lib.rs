//! A payment-gateway simulator: the API's card payments go through it in development and tests.
//!
//! It behaves like a real card gateway, unreliably: a payment request takes 100–500 ms and fails
//! with HTTP 500 40% of the time (recording nothing); an accepted payment is `PENDING`, settled
//! 1–5 s later (70% `SUCCESS`, 20% `FAILED` "limit exceeded", 10% `FAILED` "invalid card"), and
//! the result is POSTed once to the payment's `callback_url`, never retried, and sometimes
//! deliberately not sent at all. A successful payment can be refunded in full, once
//! ([`refunds`]); refund requests fail and take time like payment requests. Every rate is a dial ([`behaviour::Behaviour`]); a fixed seed
//! makes the dice reproducible. Accepted payments live in the simulator's own database, so a
//! restart forgets nothing: overdue payments are settled as soon as it is back.
//!
//! Like a real gateway it knows its merchant: every merchant route needs one of the configured
//! API keys in `X-API-KEY` (two are valid at once while a key is rotated), and every callback
//! carries `X-Signature` (HMAC-SHA256 over timestamp and body, [`commerce_web::signature`]). The
//! gateway's own operators refund and charge back payments from its console ([`console`],
//! `X-CONSOLE-KEY`), and the merchant is told by a signed webhook.

pub mod behaviour;
pub mod config;
pub mod console;
pub mod error;
pub mod metrics;
pub mod payments;
pub mod refunds;
pub mod schema;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use commerce_db::{DbCheck, Pool};
use commerce_web::Server;
use commerce_web::health::Dependency;
use diesel_migrations::{EmbeddedMigrations, embed_migrations};

use crate::behaviour::Dice;
use crate::config::Config;

/// The simulator's migrations, compiled in.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// The simulator's shared state.
pub struct Simulator {
    pub db: Pool,
    pub dice: Dice,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: chrono::Duration,
    /// The hosts callbacks may be sent to.
    pub callback_hosts: Vec<String>,
    /// Merchant API keys accepted in `X-API-KEY`.
    api_keys: Vec<String>,
    /// Signs callbacks and webhooks.
    callback_secret: String,
    /// The gateway operator's key (`X-CONSOLE-KEY`).
    console_key: String,
    /// Keys request digests.
    request_hash_key: String,
    http: reqwest::Client,
}

commerce_enums::text_enum! {
    /// Who was refused for a missing or wrong key (`pg_sim_unauthenticated_total{caller}`).
    pub enum Caller {
        Merchant => "merchant",
        Console => "console",
    }
}

/// The 401 for a request without one of `keys` in `header` (`None`: let it through), before
/// anything else runs.
fn key_refusal(
    request: &axum::extract::Request,
    header: &str,
    keys: &[String],
    caller: Caller,
) -> Option<axum::response::Response> {
    use axum::response::IntoResponse;
    let presented = request.headers().get(header).map(|v| v.as_bytes());
    if presented.is_some_and(|k| commerce_web::signature::is_one_of(k, keys)) {
        return None;
    }
    ::metrics::counter!("pg_sim_unauthenticated_total", "caller" => caller.as_str()).increment(1);
    Some(
        commerce_web::Problem::new(
            axum::http::StatusCode::UNAUTHORIZED,
            "INVALID_API_KEY",
            format!("a valid {header} header is required"),
        )
        .into_response(),
    )
}

async fn merchant_only(
    axum::extract::State(sim): axum::extract::State<Arc<Simulator>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    match key_refusal(&request, "x-api-key", &sim.api_keys, Caller::Merchant) {
        None => next.run(request).await,
        Some(refused) => refused,
    }
}

async fn console_only(
    axum::extract::State(sim): axum::extract::State<Arc<Simulator>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let keys = std::slice::from_ref(&sim.console_key);
    match key_refusal(&request, "x-console-key", keys, Caller::Console) {
        None => next.run(request).await,
        Some(refused) => refused,
    }
}

/// A built, bound, not yet running simulator.
pub struct Application {
    server: Server,
    sim: Arc<Simulator>,
}

impl Application {
    /// Connects the pool, binds `config.http_addr` and builds the router.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let db = commerce_db::pool(&config.database_url, config.database_pool_size)?;
        let server = Server::bind("pg-simulator", config.http_addr).await?;
        crate::metrics::register();
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(1))
            .timeout(std::time::Duration::from_secs(5))
            // A callback goes where the payment said, never where a redirect points.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let sim = Arc::new(Simulator {
            db: db.clone(),
            dice: Dice::new(config.behaviour, config.seed),
            idempotency_ttl: chrono::Duration::hours(config.idempotency_ttl_hours as i64),
            callback_hosts: config.callback_hosts,
            api_keys: config.api_keys,
            callback_secret: config.callback_secret,
            console_key: config.console_key,
            request_hash_key: config.request_hash_key,
            http,
        });
        let api = Router::new()
            .route(
                "/api/v1/payments",
                post(payments::request_payment).get(payments::list_payments),
            )
            .route(
                "/api/v1/payments/{transaction_key}",
                get(payments::get_payment),
            )
            .route(
                "/api/v1/payments/{transaction_key}/refunds",
                post(refunds::request_refund),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                sim.clone(),
                merchant_only,
            ))
            .route(
                "/console/v1/payments/{transaction_key}/refunds",
                post(console::refund).route_layer(axum::middleware::from_fn_with_state(
                    sim.clone(),
                    console_only,
                )),
            )
            .route(
                "/console/v1/payments/{transaction_key}/chargebacks",
                post(console::charge_back).route_layer(axum::middleware::from_fn_with_state(
                    sim.clone(),
                    console_only,
                )),
            )
            .with_state(sim.clone());
        let router = commerce_web::with_platform_routes(
            api,
            vec![Dependency::critical(DbCheck(db))],
            64 * 1024,
        );
        Ok(Self {
            server: server.router(router),
            sim,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    /// The running simulator: its dials and its database.
    pub fn simulator(&self) -> Arc<Simulator> {
        self.sim.clone()
    }

    /// The runner, with the settler (which settles accepted payments and sends callbacks).
    pub fn into_server(self) -> Server {
        let (sim, pool) = (self.sim.clone(), self.sim.db.clone());
        self.server
            .task("pool gauges", move |stop| {
                commerce_db::report_pool_until_stopped(pool, "pg-simulator", stop)
            })
            .task("settler", move |stop| payments::run_settler(sim, stop))
    }

    /// Serves, and settles payments in the background, until `shutdown` resolves.
    pub async fn run_until_stopped(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        self.into_server().run_until_stopped(shutdown).await
    }
}
