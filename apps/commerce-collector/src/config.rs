//! The collector's configuration, read from the environment in one place.
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `APP_PROFILE` | `dev` | `dev` or `prod` |
//! | `HTTP_ADDR` | `127.0.0.1:8081` | listen address (`0.0.0.0:8081` in containers) |
//! | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/commerce_metrics` | the collector's own database |
//! | `DATABASE_POOL_SIZE` | `8` | pooled connections (1..=512) |
//! | `REDIS_URL` | `redis://127.0.0.1:6379` | real-time ranking sorted sets |
//! | `REDIS_KEY_PREFIX` | `commerce:` | namespace for every key the collector writes |
//! | `KAFKA_BROKERS` | `127.0.0.1:9092` | bootstrap servers |
//! | `KAFKA_SESSION_TIMEOUT_MS` | `6000` | consumer group session timeout |
//! | `KAFKA_MAX_POLL_INTERVAL_MS` | `10000` | longest gap between polls |
//! | `HTTP_BODY_LIMIT_BYTES` | `65536` | largest accepted request body |

use std::net::SocketAddr;

use commerce_config::{ConfigError, Profile, Reader};
use commerce_kafka::KafkaSettings;

/// Everything the collector reads from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub profile: Profile,
    pub http_addr: SocketAddr,
    pub database_url: String,
    pub database_pool_size: usize,
    pub redis_url: String,
    pub redis_key_prefix: String,
    pub kafka: KafkaSettings,
    pub body_limit_bytes: usize,
}

impl Config {
    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Reader::default())
    }

    /// Reads and validates configuration from any source.
    pub fn read<S: commerce_config::Source>(r: &Reader<S>) -> Result<Self, ConfigError> {
        let mut kafka = KafkaSettings::new(r.string_or("KAFKA_BROKERS", "127.0.0.1:9092"));
        kafka.session_timeout_ms =
            r.in_range("KAFKA_SESSION_TIMEOUT_MS", 6_000, 1_000..=300_000)?;
        kafka.max_poll_interval_ms =
            r.in_range("KAFKA_MAX_POLL_INTERVAL_MS", 10_000, 1_000..=3_600_000)?;
        Ok(Self {
            profile: r.or("APP_PROFILE", Profile::Dev)?,
            http_addr: r.or("HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8081)))?,
            database_url: commerce_db::validate_url(
                "DATABASE_URL",
                r.string_or(
                    "DATABASE_URL",
                    "postgres://postgres@127.0.0.1:5432/commerce_metrics",
                ),
            )?,
            database_pool_size: r.in_range("DATABASE_POOL_SIZE", 8, 1..=512)?,
            redis_url: r.string_or("REDIS_URL", "redis://127.0.0.1:6379"),
            redis_key_prefix: r.string_or("REDIS_KEY_PREFIX", "commerce:"),
            kafka,
            body_limit_bytes: r.in_range("HTTP_BODY_LIMIT_BYTES", 64 * 1024, 1024..=16 << 20)?,
        })
    }
}
