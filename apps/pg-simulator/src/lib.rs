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

pub mod behaviour;
pub mod config;
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
    http: reqwest::Client,
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
            .build()?;
        let sim = Arc::new(Simulator {
            db: db.clone(),
            dice: Dice::new(config.behaviour, config.seed),
            idempotency_ttl: chrono::Duration::hours(config.idempotency_ttl_hours as i64),
            callback_hosts: config.callback_hosts,
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
