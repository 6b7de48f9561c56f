//! Isolation for integration tests against real servers.
//!
//! Every test gets
//! - its own PostgreSQL database, cloned from a template that was migrated once per test run
//!   (`CREATE DATABASE … TEMPLATE …` takes milliseconds, migrating takes much longer) and dropped
//!   when the test ends;
//! - its own Kafka topics and consumer group (unique names);
//! - its own Redis key prefix;
//! - when it sends mail, an SMTP server of its own ([`SmtpSink`]) writing a Maildir it reads,
//!
//! so `cargo nextest run` runs tests in parallel without one seeing another's data.
//!
//! It also holds the one way tests start an app ([`Spawned`], from the app's
//! [`commerce_web::Server`], with the environment built by [`TestEnv`]) and the one way they
//! wait for the system to act ([`eventually`]): poll for a positive signal, then assert exact
//! figures, never sleep and accept whatever is there.
//!
//! A server that is not reachable fails the test with a message naming it and saying how to
//! start it. Nothing is skipped.
//!
//! Servers are found through `TEST_DATABASE_URL` (a URL to any database on the server; default
//! `postgres://postgres@127.0.0.1:5432/postgres`), `REDIS_URL` (default
//! `redis://127.0.0.1:6379`) and `KAFKA_BROKERS` (default `127.0.0.1:9092`).

mod contract;
mod db;
mod kafka;
mod redis_cluster;
mod smtp;
mod spawn;

pub use contract::{SCHEMATHESIS_VERSION, metric, schemathesis};
pub use db::{TestDb, count};
pub use kafka::{PrivateBroker, TestKafka, header};
pub use redis_cluster::RedisCluster;
pub use smtp::{Mail, SmtpOptions, SmtpSink};
pub use spawn::{Spawned, TestEnv};

use std::time::Duration;

use commerce_cache::Cache;
use commerce_kafka::KafkaSettings;

pub(crate) const START_HINT: &str = "start the local stack with `supports/dev/stack up` (or `supports/dev/stack test`, which starts what the tests need)";

/// URL of the PostgreSQL server used by tests.
pub fn postgres_url() -> String {
    env_or(
        "TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

/// URL of the Redis server used by tests.
pub fn redis_url() -> String {
    env_or("REDIS_URL", "redis://127.0.0.1:6379")
}

/// Kafka bootstrap servers used by tests, with short group timeouts.
pub fn kafka_settings() -> KafkaSettings {
    KafkaSettings::new(env_or("KAFKA_BROKERS", "127.0.0.1:9092"))
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// Polls `probe` every 50 ms until it returns `Ok`, and returns that value. After `within`, fails
/// the test naming `what` and showing the probe's last `Err` (what it saw instead).
pub async fn eventually<T, E: std::fmt::Debug>(
    what: &str,
    within: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what}: not done within {within:?}; last seen: {last:?}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// [`eventually`] for a condition: polls until `done` holds.
pub async fn until(what: &str, within: Duration, mut done: impl AsyncFnMut() -> bool) {
    eventually(what, within, async || {
        if done().await { Ok(()) } else { Err("not yet") }
    })
    .await
}

/// A short unique suffix for names (databases, topics, groups, key prefixes).
pub fn unique_suffix() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// A Redis handle with a key prefix of the test's own. Fails if Redis is not reachable.
pub async fn redis() -> Cache {
    let url = redis_url();
    let prefix = format!("test:{}:", unique_suffix());
    let cache = Cache::new(&url, &prefix).expect("valid REDIS_URL");
    match tokio::time::timeout(Duration::from_secs(5), cache.ping()).await {
        Ok(Ok(())) => cache,
        Ok(Err(e)) => panic!("Redis is not reachable at {url}: {e:#}; {START_HINT}"),
        Err(_) => panic!("Redis is not reachable at {url}: no answer in 5 s; {START_HINT}"),
    }
}
