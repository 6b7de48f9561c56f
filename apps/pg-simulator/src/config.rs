//! The simulator's configuration, read from the environment in one place.
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `HTTP_ADDR` | `127.0.0.1:8082` | listen address (`0.0.0.0:8082` in containers) |
//! | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/pg_simulator` | the simulator's own database |
//! | `DATABASE_POOL_SIZE` | `8` | pooled connections |
//! | `PG_SIM_SEED` | unset (random) | fixed seed: the same requests draw the same outcomes |
//! | `PG_SIM_LATENCY_MIN_MS` / `PG_SIM_LATENCY_MAX_MS` | `100` / `500` | how long a payment request takes |
//! | `PG_SIM_RESPONSE_DELAY_MS` | `0` | delay between recording an accepted payment and answering (a slow answer the client may give up on) |
//! | `PG_SIM_RECORD_DELAY_MS` | `0` | delay before an accepted payment is recorded; requests run to the end even if the client hung up, so a long delay records payments after the client gave up |
//! | `PG_SIM_CALLBACK_HOSTS` | `localhost,127.0.0.1,[::1]` | where a payment's `callback_url` may point (comma-separated; others get 400): an origin (`https://api.example.com:8443`) pins scheme, host and port, as production should; a bare host (development, ephemeral ports) pins the host alone. Redirects are never followed |
//! | `PG_SIM_IDEMPOTENCY_TTL_HOURS` | `24` | how long an `Idempotency-Key` is remembered |
//! | `PG_SIM_REQUEST_FAILURE_RATE` | `0.4` | share of requests answered HTTP 500 (nothing recorded) |
//! | `PG_SIM_REFUND_FAILURE_RATE` | `0.2` | share of refund requests answered HTTP 500 (nothing recorded); refunds take the payments' latency and delays |
//! | `PG_SIM_FAILURE_STATUS` | `500` | the HTTP status of those failures (any 4xx but 404, or 5xx) |
//! | `PG_SIM_SETTLE_MIN_MS` / `PG_SIM_SETTLE_MAX_MS` | `1000` / `5000` | delay until an accepted payment is settled |
//! | `PG_SIM_SUCCESS_RATE` | `0.7` | share of settlements that succeed |
//! | `PG_SIM_LIMIT_EXCEEDED_RATE` | `0.2` | share failed with `limit exceeded`; the rest fail with `invalid card` |
//! | `PG_SIM_CALLBACK_DROP_RATE` | `0.1` | share of callbacks deliberately never sent |
//! | `PG_SIM_API_KEYS` | the development key | merchant API keys accepted in `X-API-KEY` (comma-separated, one or two: two while a key is rotated), each at least 16 characters |
//! | `PG_SIM_CALLBACK_SECRET` | the development secret | signs every callback and webhook (`X-Signature`), at least 32 bytes |
//! | `PG_SIM_REQUEST_HASH_KEY` | the development key | keys the digest of each idempotent request (it covers the card number), at least 32 bytes; keep it stable: a new key makes a retry within `PG_SIM_IDEMPOTENCY_TTL_HOURS` look like another request |
//! | `PG_SIM_CONSOLE_KEY` | the development console key | the gateway operator's key (`X-CONSOLE-KEY`) for refunds and chargebacks made at the gateway, at least 16 characters |

use std::net::SocketAddr;

use commerce_config::{ConfigError, Reader, Source, dev};

use crate::behaviour::Behaviour;

const DEFAULT_IDEMPOTENCY_TTL_HOURS: u64 = 24;
/// The development console key.
pub const DEV_CONSOLE_KEY: &str = "dev-only-insecure-gateway-console-key";
/// The development request-hash key.
pub const DEV_REQUEST_HASH_KEY: &str = "dev-only-insecure-gateway-request-hash-key";
const DEFAULT_CALLBACK_HOSTS: &str = "localhost,127.0.0.1,[::1]";

fn hosts(list: &str) -> Vec<String> {
    list.split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect()
}

/// Everything the simulator reads from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub http_addr: SocketAddr,
    pub database_url: String,
    pub database_pool_size: usize,
    pub seed: Option<u64>,
    pub behaviour: Behaviour,
    pub idempotency_ttl_hours: u64,
    /// Hosts a `callback_url` may name.
    pub callback_hosts: Vec<String>,
    /// Merchant API keys accepted (one, or two while rotating).
    pub api_keys: Vec<String>,
    /// Signs callbacks and webhooks.
    pub callback_secret: String,
    /// The gateway operator's key, for refunds and chargebacks made at the gateway.
    pub console_key: String,
    /// Keys the digest of idempotent requests (HMAC-SHA256): a digest over a card number must
    /// not be recoverable from the masked number by trying the missing digits.
    pub request_hash_key: String,
}

impl Config {
    /// A simulator on an ephemeral local port with a fixed seed and the documented defaults
    /// otherwise: what tests and embedders start.
    pub fn local(database_url: &str, behaviour: Behaviour, seed: u64) -> Self {
        Self {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: database_url.to_owned(),
            database_pool_size: 8,
            seed: Some(seed),
            behaviour,
            idempotency_ttl_hours: DEFAULT_IDEMPOTENCY_TTL_HOURS,
            callback_hosts: hosts(DEFAULT_CALLBACK_HOSTS),
            api_keys: vec![dev::GATEWAY_API_KEY.to_owned()],
            callback_secret: dev::GATEWAY_CALLBACK_SECRET.to_owned(),
            console_key: DEV_CONSOLE_KEY.to_owned(),
            request_hash_key: DEV_REQUEST_HASH_KEY.to_owned(),
        }
    }

    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Reader::default())
    }

    /// Reads and validates configuration from any source.
    pub fn read<S: Source>(r: &Reader<S>) -> Result<Self, ConfigError> {
        let d = Behaviour::default();
        let rate = |name: &str, default: f64| r.in_range(name, default, 0.0..=1.0);
        let ms = |name: &str, default: u64| r.in_range(name, default, 0..=600_000);
        let behaviour = Behaviour {
            latency_min_ms: ms("PG_SIM_LATENCY_MIN_MS", d.latency_min_ms)?,
            latency_max_ms: ms("PG_SIM_LATENCY_MAX_MS", d.latency_max_ms)?,
            response_delay_ms: ms("PG_SIM_RESPONSE_DELAY_MS", d.response_delay_ms)?,
            record_delay_ms: ms("PG_SIM_RECORD_DELAY_MS", d.record_delay_ms)?,
            request_failure_rate: rate("PG_SIM_REQUEST_FAILURE_RATE", d.request_failure_rate)?,
            refund_failure_rate: rate("PG_SIM_REFUND_FAILURE_RATE", d.refund_failure_rate)?,
            failure_status: r.in_range("PG_SIM_FAILURE_STATUS", d.failure_status, 400..=599)?,
            settle_min_ms: ms("PG_SIM_SETTLE_MIN_MS", d.settle_min_ms)?,
            settle_max_ms: ms("PG_SIM_SETTLE_MAX_MS", d.settle_max_ms)?,
            success_rate: rate("PG_SIM_SUCCESS_RATE", d.success_rate)?,
            limit_exceeded_rate: rate("PG_SIM_LIMIT_EXCEEDED_RATE", d.limit_exceeded_rate)?,
            callback_drop_rate: rate("PG_SIM_CALLBACK_DROP_RATE", d.callback_drop_rate)?,
        };
        behaviour
            .validate()
            .map_err(|reason| ConfigError::new("PG_SIM_*", reason))?;
        let callback_hosts = hosts(&r.string_or("PG_SIM_CALLBACK_HOSTS", DEFAULT_CALLBACK_HOSTS));
        if callback_hosts.is_empty() {
            return Err(ConfigError::new(
                "PG_SIM_CALLBACK_HOSTS",
                "must name at least one host",
            ));
        }
        let api_keys = keys(&r.string_or("PG_SIM_API_KEYS", dev::GATEWAY_API_KEY));
        if !(1..=2).contains(&api_keys.len()) || api_keys.iter().any(|k| k.len() < 16) {
            return Err(ConfigError::new(
                "PG_SIM_API_KEYS",
                "must be one or two keys of at least 16 characters",
            ));
        }
        let callback_secret = r.string_or("PG_SIM_CALLBACK_SECRET", dev::GATEWAY_CALLBACK_SECRET);
        if callback_secret.len() < 32 {
            return Err(ConfigError::new(
                "PG_SIM_CALLBACK_SECRET",
                "must be at least 32 bytes",
            ));
        }
        let console_key = r.string_or("PG_SIM_CONSOLE_KEY", DEV_CONSOLE_KEY);
        if console_key.len() < 16 {
            return Err(ConfigError::new(
                "PG_SIM_CONSOLE_KEY",
                "must be at least 16 characters",
            ));
        }
        let request_hash_key = r.string_or("PG_SIM_REQUEST_HASH_KEY", DEV_REQUEST_HASH_KEY);
        if request_hash_key.len() < 32 {
            return Err(ConfigError::new(
                "PG_SIM_REQUEST_HASH_KEY",
                "must be at least 32 bytes",
            ));
        }
        Ok(Self {
            http_addr: r.or("HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8082)))?,
            database_url: commerce_db::validate_url(
                "DATABASE_URL",
                r.string_or(
                    "DATABASE_URL",
                    "postgres://postgres@127.0.0.1:5432/pg_simulator",
                ),
            )?,
            database_pool_size: r.in_range("DATABASE_POOL_SIZE", 8, 1..=256)?,
            seed: r.optional("PG_SIM_SEED")?,
            behaviour,
            idempotency_ttl_hours: r.in_range(
                "PG_SIM_IDEMPOTENCY_TTL_HOURS",
                DEFAULT_IDEMPOTENCY_TTL_HOURS,
                1..=24 * 30,
            )?,
            callback_hosts,
            api_keys,
            callback_secret,
            console_key,
            request_hash_key,
        })
    }
}

/// A comma-separated list, trimmed, empty entries dropped (case kept).
fn keys(list: &str) -> Vec<String> {
    list.split(',')
        .map(|k| k.trim().to_owned())
        .filter(|k| !k.is_empty())
        .collect()
}
