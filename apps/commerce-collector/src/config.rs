//! The collector's configuration, read from the environment in one place.
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `APP_PROFILE` | `prod` | `prod` or `dev`; unset means production |
//! | `HTTP_ADDR` | `127.0.0.1:8081` | listen address (`0.0.0.0:8081` in containers) |
//! | `MANAGEMENT_ADDR` | — | when set, `/health/*` and `/metrics` are served on this address only (for probes and scrapes), not on `HTTP_ADDR` |
//! | `SHUTDOWN_READINESS_DELAY_MS` | `5000` (`0` in dev) | on SIGTERM, how long readiness answers 503 while requests are still served, before the listener closes |
//! | `SHUTDOWN_DRAIN_SECONDS` | `25` | then, how long in-flight requests and streams get before they are cut |
//! | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/commerce_metrics` | the collector's own database; TLS by `?sslmode=…&sslrootcert=…` as for the API |
//! | `DATABASE_POOL_SIZE` | `8` | pooled connections (1..=512) |
//! | `REDIS_URL` | `redis://127.0.0.1:6379` | real-time ranking sorted sets; `rediss://` for TLS; with `REDIS_CLUSTER`, the cluster's seed nodes, comma-separated |
//! | `REDIS_CLUSTER` | `false` | `true`: `REDIS_URL` names a Redis Cluster (slots followed through resharding and failover) |
//! | `REDIS_CA_FILE` | system roots | PEM file of the CA that signed a `rediss://` server's certificate |
//! | `REDIS_KEY_PREFIX` | `commerce:` | namespace for every key the collector writes |
//! | `KAFKA_BROKERS` | `127.0.0.1:9092` | bootstrap servers |
//! | `KAFKA_SECURITY_PROTOCOL` | `PLAINTEXT` | `SSL` or `SASL_SSL` for managed clusters (also `SASL_PLAINTEXT`) |
//! | `KAFKA_SASL_MECHANISM` / `KAFKA_SASL_USERNAME` / `KAFKA_SASL_PASSWORD` | — | `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` (with username and password) or `OAUTHBEARER` |
//! | `KAFKA_SSL_CA_LOCATION`, `KAFKA_SSL_CERTIFICATE_LOCATION`, `KAFKA_SSL_KEY_LOCATION`, `KAFKA_SSL_KEY_PASSWORD`, `KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM` | librdkafka's | passed through to librdkafka unchanged |
//! | `KAFKA_PROPERTY_<NAME>`, `KAFKA_PROPERTIES_FILE` | — | any other librdkafka property (`KAFKA_PROPERTY_CLIENT_RACK` sets `client.rack`; `__` is a literal `_`), or a properties file under them; the properties the delivery guarantees rest on are refused |
//! | `KAFKA_MANAGE_TOPICS` | `true` | create the topics at start; `false` only checks they exist |
//! | `KAFKA_COOPERATIVE_REBALANCING` | `true` in production | `cooperative-sticky` assignment |
//! | `KAFKA_GROUP_INSTANCE_ID` | `POD_NAME` in production | static group membership |
//! | `KAFKA_REPLICATION_FACTOR` / `KAFKA_MIN_INSYNC_REPLICAS` | `3` / `2` (`1` / `1` in dev) | of the topics this app creates; producers write with `acks=all` and idempotence |
//! | `KAFKA_SESSION_TIMEOUT_MS` | `45000` (`6000` in dev) | consumer group session timeout |
//! | `KAFKA_MAX_POLL_INTERVAL_MS` | `300000` (`10000` in dev) | longest gap between polls |
//! | `HTTP_BODY_LIMIT_BYTES` | `65536` | largest accepted request body |
//! | `CATALOG_TOPIC` / `ORDER_TOPIC` | `catalog-events` / `order-events` | topics consumed |
//! | `DLQ_SUFFIX` | `.dlq` | dead-letter topic of each source topic |
//! | `KAFKA_TOPIC_PARTITIONS` | `6` | partitions of topics the collector creates |
//! | `COLLECTOR_GROUP_ID` | `commerce-collector` | consumer group |
//! | `COLLECTOR_BATCH_SIZE` | `100` | events per batch transaction (1..=1000) |
//! | `COLLECTOR_JOIN_TIMEOUT_MS` | twice the session timeout, at least `30000` | a consumer left this long without an assignment from its group (a stalled join) is recreated; `/health/consuming` reports it while it waits |
//! | `COLLECTOR_MAX_IN_FLIGHT` | `3` | batches applied concurrently (offsets still stored in order) |
//! | `COLLECTOR_BATCH_WAIT_MS` | `200` | longest wait to fill a batch |
//! | `COLLECTOR_CONSUME` | `true` | consume events (false: serve the ranking API only) |
//! | `BUSINESS_TIME_ZONE` | `Asia/Seoul` | time zone of business dates |
//! | `RANKING_WEIGHT_VIEW` / `_LIKE` / `_ORDER` | `0.1` / `0.2` / `0.7` | score weights |
//! | `RANKING_CARRYOVER_RATIO` | `0.1` | share of yesterday's score carried into today |
//! | `EVENT_HANDLED_RETENTION_HOURS` | `192` | the dedupe horizon: rows are kept this long, older events are dead-lettered |
//! | `KAFKA_TOPIC_RETENTION_HOURS` | `168` | the source topics' retention (`retention.ms` of the topics created; a topic on the broker keeping messages longer is refused at start); must be shorter than the horizon |
//! | `COLLECTOR_FOLD_INTERVAL_MS` | `500` | how often the daily figures' changes are folded into the all-time, weekly and monthly ones (one collector folds at a time; 50..=10000) |
//! | `ROLLUP_CRON` | `0 */10 * * * *` | when weekly/monthly rollups reconcile (6-field cron, UTC) |
//! | `RANKING_CACHE_TTL_MS` | `100` | how long a ranking response is reused in process, and a live set seen ready trusted without asking Redis again (0: never) |
//! | `RANKING_REDIS_CONNECTIONS` | `1` | Redis connections of their own the ranking reads take in turn (1..=16; a read that fails on one is tried once on the refresher's connection; on a small machine one multiplexed connection batches the most commands per write: BENCHMARKS.md) |
//! | `RANKING_SNAPSHOT_CRON` | `30 * * * * *` | when changed rankings are materialised in PostgreSQL (the fallback's age bound) |

use std::net::SocketAddr;

use commerce_config::{ConfigError, Connections, Profile, Reader};
use commerce_kafka::KafkaSettings;

/// Everything the collector reads from its environment.
#[derive(Debug, Clone)]
pub struct Config {
    pub profile: Profile,
    pub http_addr: SocketAddr,
    /// Where `/health/*` and `/metrics` are served instead, when set.
    pub management_addr: Option<SocketAddr>,
    /// How the server drains on shutdown.
    pub drain: commerce_web::Drain,
    pub database_url: String,
    pub database_pool_size: usize,
    pub redis_url: String,
    pub redis_ca_file: Option<String>,
    /// Whether `redis_url` lists the seed nodes of a Redis Cluster.
    pub redis_cluster: bool,
    pub redis_key_prefix: String,
    pub kafka: KafkaSettings,
    pub body_limit_bytes: usize,
    pub catalog_topic: String,
    pub order_topic: String,
    pub dlq_suffix: String,
    pub topic_partitions: i32,
    pub group_id: String,
    pub batch_size: usize,
    pub batch_wait_ms: u64,
    pub max_in_flight: usize,
    /// How long the consumer may wait for its group to assign it partitions before it is
    /// recreated (a stalled join).
    pub join_timeout: std::time::Duration,
    pub consume: bool,
    pub time_zone: chrono_tz::Tz,
    pub weights: crate::ranking::Weights,
    pub carryover_ratio: f64,
    pub rollup_cron: String,
    pub ranking_snapshot_cron: String,
    pub ranking_cache_ttl_ms: u64,
    /// How often the fold runs.
    pub fold_interval: std::time::Duration,
    pub ranking_redis_connections: usize,
    pub event_handled_retention_hours: u64,
    pub topic_retention_hours: u64,
}

impl Config {
    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Reader::default())
    }

    /// Only `DATABASE_URL`: what `migrate` needs.
    pub fn read_database_url<S: commerce_config::Source>(
        r: &Reader<S>,
    ) -> Result<String, ConfigError> {
        commerce_db::validate_url(
            "DATABASE_URL",
            r.string_or(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/commerce_metrics",
            ),
        )
    }

    /// Reads and validates configuration from any source.
    pub fn read<S: commerce_config::Source>(r: &Reader<S>) -> Result<Self, ConfigError> {
        let profile = r.or("APP_PROFILE", Profile::Prod)?;
        let kafka = KafkaSettings::read(r, profile == Profile::Prod)?;
        let session_timeout_ms = u64::from(kafka.session_timeout_ms);
        let event_handled_retention_hours =
            r.in_range("EVENT_HANDLED_RETENTION_HOURS", 192, 1..=24 * 365)?;
        let topic_retention_hours = u64::from(kafka.topic_retention_hours);
        if event_handled_retention_hours <= topic_retention_hours {
            // Events the broker can still redeliver would be past the horizon: dead-lettered
            // instead of deduplicated.
            return Err(ConfigError::new(
                "EVENT_HANDLED_RETENTION_HOURS",
                format!(
                    "must exceed KAFKA_TOPIC_RETENTION_HOURS ({topic_retention_hours}): \
                     every event the topics still hold must be deduplicated"
                ),
            ));
        }
        let database_url = Self::read_database_url(r)?;
        let redis_url = r.string_or("REDIS_URL", "redis://127.0.0.1:6379");
        commerce_config::refuse_plaintext(
            r,
            profile == Profile::Prod,
            &Connections {
                database_url: &database_url,
                database_direct_url: None,
                redis_url: &redis_url,
                kafka_encrypted: kafka.encrypted(),
            },
        )?;
        Ok(Self {
            profile,
            http_addr: r.or("HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8081)))?,
            management_addr: r.optional("MANAGEMENT_ADDR")?,
            drain: commerce_web::Drain::read(r, profile == Profile::Prod)?,
            database_url,
            database_pool_size: r.in_range("DATABASE_POOL_SIZE", 8, 1..=512)?,
            redis_url,
            redis_ca_file: r.optional("REDIS_CA_FILE")?,
            redis_cluster: r.or("REDIS_CLUSTER", false)?,
            redis_key_prefix: r.string_or("REDIS_KEY_PREFIX", "commerce:"),
            kafka,
            body_limit_bytes: r.in_range("HTTP_BODY_LIMIT_BYTES", 64 * 1024, 1024..=16 << 20)?,
            catalog_topic: r.string_or("CATALOG_TOPIC", commerce_events::CATALOG_TOPIC),
            order_topic: r.string_or("ORDER_TOPIC", commerce_events::ORDER_TOPIC),
            dlq_suffix: r.string_or("DLQ_SUFFIX", ".dlq"),
            topic_partitions: r.in_range("KAFKA_TOPIC_PARTITIONS", 6, 1..=1000)?,
            group_id: r.string_or("COLLECTOR_GROUP_ID", "commerce-collector"),
            batch_size: r.in_range("COLLECTOR_BATCH_SIZE", 100, 1..=1000)?,
            batch_wait_ms: r.in_range("COLLECTOR_BATCH_WAIT_MS", 200, 1..=10_000)?,
            max_in_flight: r.in_range("COLLECTOR_MAX_IN_FLIGHT", 3, 1..=32)?,
            join_timeout: std::time::Duration::from_millis(r.in_range(
                "COLLECTOR_JOIN_TIMEOUT_MS",
                // A rebalance waits up to a session timeout for members that left; twice that
                // (and at least 30 s) is a stall.
                (session_timeout_ms * 2).max(30_000),
                5_000..=3_600_000,
            )?),
            consume: r.or("COLLECTOR_CONSUME", true)?,
            time_zone: r.or("BUSINESS_TIME_ZONE", chrono_tz::Asia::Seoul)?,
            weights: crate::ranking::Weights {
                view: r.in_range("RANKING_WEIGHT_VIEW", 0.1, 0.0..=1000.0)?,
                like: r.in_range("RANKING_WEIGHT_LIKE", 0.2, 0.0..=1000.0)?,
                order: r.in_range("RANKING_WEIGHT_ORDER", 0.7, 0.0..=1000.0)?,
            },
            carryover_ratio: r.in_range("RANKING_CARRYOVER_RATIO", 0.1, 0.0..=1.0)?,
            rollup_cron: cron(r, "ROLLUP_CRON", "0 */10 * * * *")?,
            ranking_snapshot_cron: cron(r, "RANKING_SNAPSHOT_CRON", "30 * * * * *")?,
            ranking_cache_ttl_ms: r.in_range("RANKING_CACHE_TTL_MS", 100, 0..=10_000)?,
            fold_interval: std::time::Duration::from_millis(r.in_range(
                "COLLECTOR_FOLD_INTERVAL_MS",
                500,
                50..=10_000,
            )?),
            ranking_redis_connections: r.in_range("RANKING_REDIS_CONNECTIONS", 1, 1..=16)?,
            event_handled_retention_hours,
            topic_retention_hours,
        })
    }
}

/// A schedule, refused at start if the scheduler could not run it (a typo would otherwise stop
/// the job silently).
fn cron<S: commerce_config::Source>(
    r: &Reader<S>,
    name: &str,
    default: &str,
) -> Result<String, ConfigError> {
    let expr = r.string_or(name, default);
    tokio_cron_scheduler::Job::new_async(expr.as_str(), |_, _| Box::pin(async {})).map_err(
        |e| {
            ConfigError::new(
                name,
                format!("is not a schedule (6-field cron, seconds first): {e}"),
            )
        },
    )?;
    Ok(expr)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Production with `pairs`, plain text allowed (these tests are about other settings).
    fn vars(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        [
            ("DATABASE_ALLOW_PLAINTEXT", "true"),
            ("REDIS_ALLOW_PLAINTEXT", "true"),
            ("KAFKA_ALLOW_PLAINTEXT", "true"),
        ]
        .iter()
        .chain(pairs)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
    }

    #[test]
    fn production_refuses_plaintext_unless_allowed() {
        let err = Config::read(&Reader::new(std::collections::HashMap::new())).unwrap_err();
        assert_eq!(err.var, "DATABASE_URL");
        assert!(Config::read(&Reader::new(vars(&[]))).is_ok());
    }

    #[test]
    fn the_dedupe_horizon_must_outlast_the_topics() {
        let refused = vars(&[
            ("EVENT_HANDLED_RETENTION_HOURS", "168"),
            ("KAFKA_TOPIC_RETENTION_HOURS", "168"),
        ]);
        let err = Config::read(&Reader::new(refused)).expect_err("refused");
        assert_eq!(err.var, "EVENT_HANDLED_RETENTION_HOURS");
        let defaults = Config::read(&Reader::new(vars(&[]))).unwrap();
        assert_eq!(
            (
                defaults.event_handled_retention_hours,
                defaults.topic_retention_hours
            ),
            (192, 168)
        );
    }

    #[test]
    fn a_schedule_typo_is_refused_naming_its_variable() {
        for var in ["ROLLUP_CRON", "RANKING_SNAPSHOT_CRON"] {
            let typo = vars(&[(var, "0 */10 * * *x")]);
            let err = Config::read(&Reader::new(typo)).expect_err("a typo is refused");
            assert_eq!(err.var, var);
        }
        let ok = vars(&[("ROLLUP_CRON", "0 0 * * * *")]);
        assert_eq!(
            Config::read(&Reader::new(ok)).unwrap().rollup_cron,
            "0 0 * * * *"
        );
    }
}
