//! The API's configuration, read from the environment in one place.
//!
//! | variable | default | meaning |
//! | --- | --- | --- |
//! | `APP_PROFILE` | `prod` | `prod` (also `production`, `staging`) or `dev` (also `development`, `test`); outside `dev` the secrets below are required and their development defaults refused. Unset means production: a forgotten setting never runs with the repository's secrets |
//! | `HTTP_ADDR` | `127.0.0.1:8080` | listen address (`0.0.0.0:8080` in containers) |
//! | `MANAGEMENT_ADDR` | — | when set, `/health/*` and `/metrics` are served on this address only (for probes and scrapes), not on `HTTP_ADDR` |
//! | `SHUTDOWN_READINESS_DELAY_MS` | `5000` (`0` in dev) | on SIGTERM, how long readiness answers 503 while requests are still served, before the listener closes |
//! | `SHUTDOWN_DRAIN_SECONDS` | `25` | then, how long in-flight requests and streams get before they are cut |
//! | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/commerce` | the API's own database; TLS by `?sslmode=require\|verify-ca\|verify-full` and `sslrootcert=<PEM>` (see `commerce_db::tls`) |
//! | `DATABASE_DIRECT_URL` | `DATABASE_URL` | a direct connection (not through a transaction-mode pooler such as PgBouncer or RDS Proxy) for the sessions that must outlive a transaction: `LISTEN` for cache eviction and order streams, and the relay's leader lock (3 listener sessions + 1 leader session per instance) |
//! | `DATABASE_POOL_SIZE` | `16` | pooled connections (1..=512) |
//! | `REDIS_URL` | `redis://127.0.0.1:6379` | cache and first-come coupon gate; `rediss://` for TLS; with `REDIS_CLUSTER`, the cluster's seed nodes, comma-separated |
//! | `REDIS_CLUSTER` | `false` | `true`: `REDIS_URL` names a Redis Cluster (slots followed through resharding and failover) |
//! | `DATABASE_ALLOW_PLAINTEXT` / `REDIS_ALLOW_PLAINTEXT` / `KAFKA_ALLOW_PLAINTEXT` | `false` | outside `dev`, a connection without TLS is refused at start unless its variable is `true` (a private network the operator vouches for; logged at start) |
//! | `REDIS_CA_FILE` | system roots | PEM file of the CA that signed a `rediss://` server's certificate |
//! | `REDIS_KEY_PREFIX` | `commerce:` | namespace for every key the API writes |
//! | `COUPON_GATE_RECONCILE_INTERVAL_MS` | `60000` | how often the first-come coupon gates in Redis are made to agree with the database (seats a lost write left behind are given back, holders a failover lost are put back) |
//! | `KAFKA_BROKERS` | `127.0.0.1:9092` | bootstrap servers |
//! | `KAFKA_SECURITY_PROTOCOL` | `PLAINTEXT` | `SSL` or `SASL_SSL` for managed clusters (also `SASL_PLAINTEXT`) |
//! | `KAFKA_SASL_MECHANISM` / `KAFKA_SASL_USERNAME` / `KAFKA_SASL_PASSWORD` | — | `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` (with username and password) or `OAUTHBEARER` |
//! | `KAFKA_SSL_CA_LOCATION`, `KAFKA_SSL_CERTIFICATE_LOCATION`, `KAFKA_SSL_KEY_LOCATION`, `KAFKA_SSL_KEY_PASSWORD`, `KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM` | librdkafka's | passed through to librdkafka unchanged |
//! | `KAFKA_PROPERTY_<NAME>`, `KAFKA_PROPERTIES_FILE` | — | any other librdkafka property (`KAFKA_PROPERTY_CLIENT_RACK` sets `client.rack`; `__` is a literal `_`), or a properties file under them; the properties the delivery guarantees rest on are refused |
//! | `KAFKA_MANAGE_TOPICS` | `true` | create the topics at start; `false` only checks they exist |
//! | `KAFKA_TOPIC_RETENTION_HOURS` | `168` | `retention.ms` of the topics created; at start a topic that keeps messages longer (or is missing) is refused |
//! | `KAFKA_REPLICATION_FACTOR` / `KAFKA_MIN_INSYNC_REPLICAS` | `3` / `2` (`1` / `1` in dev) | of the topics this app creates; producers write with `acks=all` and idempotence |
//! | `HTTP_BODY_LIMIT_BYTES` | `65536` | largest accepted request body |
//! | `COMMERCE_JWT_SECRET` | dev-only default | HS256 key, at least 32 bytes; required outside `dev` |
//! | `COMMERCE_JWT_PREVIOUS_SECRETS` | — | earlier JWT keys (comma-separated, each at least 32 bytes) whose tokens are still accepted during a rotation; tokens name their key (`kid`) |
//! | `COMMERCE_JWT_TTL_SECONDS` | `900` | access token lifetime; a client keeps signed in by exchanging its refresh token (`POST /api/v1/auth/refresh`) |
//! | `COMMERCE_REFRESH_TTL_SECONDS` | `2592000` (30 days) | a session's absolute end: its refresh tokens are refused after it, and the user signs in again |
//! | `COMMERCE_ADMIN_LOGIN_ID` | `admin` | admin account ensured at start |
//! | `COMMERCE_ADMIN_PASSWORD` | `admin-dev-password` in `dev` | its password; required outside `dev` |
//! | `CATALOG_TOPIC` | `catalog-events` | topic for product events |
//! | `ORDER_TOPIC` | `order-events` | topic for order events |
//! | `OUTBOX_RELAY_ENABLED` | `true` | run the outbox relay inside `serve` (one instance leads) |
//! | `OUTBOX_POLL_INTERVAL_MS` | `500` | relay poll when no NOTIFY arrives |
//! | `OUTBOX_BATCH_SIZE` | `2000` | rows published per pass |
//! | `OUTBOX_RETENTION_HOURS` | `168` | published rows kept this long, then purged |
//! | `KAFKA_TOPIC_PARTITIONS` | `6` | partitions of topics the API creates |
//! | `PRODUCT_VIEW_WINDOW_SECONDS` | `1800` | a viewer's (user's, or else client address's) views of one product within this window count once |
//! | `PRODUCT_CACHE_TTL_SECONDS` | `30` | Redis TTL of cached product details and list pages |
//! | `PG_BASE_URL` | `http://127.0.0.1:8082` | the payment gateway |
//! | `PG_API_KEY` | dev-only default | the merchant key sent to the gateway (`X-API-KEY`); required outside `dev` |
//! | `PG_CALLBACK_SECRETS` | dev-only default | the secrets the gateway's callbacks are signed with (`X-Signature`), comma-separated: one, or two while rotating; each at least 32 bytes; required outside `dev` |
//! | `PG_CALLBACK_TOLERANCE_SECONDS` | `300` | how far a callback's signed timestamp may be from this instance's clock |
//! | `PAYMENT_CALLBACK_URL` | this API's own address + `/api/v1/payments/callback` | where the gateway reports results |
//! | `PG_CONNECT_TIMEOUT_MS` / `PG_TIMEOUT_MS` | `300` / `1000` | per-attempt connect and total timeouts |
//! | `PG_MAX_ATTEMPTS` / `PG_RETRY_BASE_MS` | `3` / `100` | attempts per call; first backoff (doubling, jittered) |
//! | `PG_BREAKER_FAILURE_RATE` / `PG_BREAKER_WINDOW_CALLS` / `PG_BREAKER_MIN_CALLS` | `0.5` / `20` / `10` | the breaker opens when this share of the last calls failed, once enough were made |
//! | `PG_BREAKER_OPEN_MS` | `10000` | how long it stays open before letting calls through again |
//! | `PAYMENT_CARD_KEY` | dev-only default | 64 hex digits (AES-256) sealing card numbers until the gateway has them; required outside `dev` |
//! | `PAYMENT_PREVIOUS_CARD_KEYS` | — | earlier card keys (64 hex digits each, comma-separated) still opening what they sealed during a rotation |
//! | `PAYMENT_RECONCILE_ENABLED` | `true` | run payment reconciliation inside `serve` (instances share the work) |
//! | `PAYMENT_RECONCILE_INTERVAL_MS` | `1000` | how often reconciliation looks for due payments |
//! | `PAYMENT_RECHECK_AFTER_MS` | `10000` | a pending payment is first looked up at the gateway this long after it was placed, and again this often; outside `dev` it must exceed a worst-case lookup plus a worst-case request (9.2 s with the defaults) |
//! | `PAYMENT_REQUEST_DEADLINE_SECONDS` | `600` | a payment the gateway never received is failed (and compensated) after this; a payment still pending after it is listed for an operator |
//! | `PAYMENT_REFUNDS_ENABLED` | `true` | run the refund worker inside `serve` (instances share the work; a claim lasts `PAYMENT_RECHECK_AFTER_MS`) |
//! | `PAYMENT_AUDIT_INTERVAL_SECONDS` / `PAYMENT_AUDIT_WINDOW_HOURS` | `21600` / `72` | a paid payment is looked up at the gateway again this often, for this long after it was paid, so a refund or chargeback made at the gateway is found even when its webhook was lost (`0` hours: never) |
//! | `PAYMENT_REFUND_RETRY_BASE_MS` | `1000` | wait after a refund's first failed attempt, doubling per attempt up to 5 minutes |
//! | `RATE_LIMITS_ENABLED` | `true` | `false` turns every `RATE_LIMIT_*` off (load tests from one address) |
//! | `RATE_LIMIT_SIGN_UP` / `RATE_LIMIT_TOKEN` | `10/min` / `30/min` | per client address; `<n>/s`, `<n>/min`, `<n>/h` (a burst of n, refilled evenly) or `off` |
//! | `RATE_LIMIT_PAYMENT_CALLBACK` | `100/s` | per client address; must exceed the gateway's peak callback rate |
//! | `RATE_LIMIT_ORDERS` / `RATE_LIMIT_COUPON_ISSUE` / `RATE_LIMIT_POINTS_CHARGE` / `RATE_LIMIT_LIKES` | `60/min` / `10/min` / `30/min` / `60/min` | per signed-in user (likes: liking and unliking together) |
//! | `TRUSTED_PROXIES` | none | addresses or networks (`10.0.0.0/8,192.168.1.7`) whose `X-Forwarded-For` names the client; from anyone else it is ignored |
//! | `AUTH_HASH_THREADS` | CPU count | password-hashing threads, 19 MiB of memory each |
//! | `ORDER_EVENTS_HEARTBEAT_SECONDS` | `15` | comment lines on an idle order-status stream, so proxies keep it open |
//! | `ORDER_EVENTS_PER_USER` | `5` | order-status streams one user may hold open on one instance |
//! | `ORDER_TIMEOUT_MS` | `10000` | longest an order or top-up may take to place: each statement runs under it (`statement_timeout`) and so does the whole transaction; past it the transaction rolls back and the answer is 503 `ORDER_TIMEOUT` (100..=600000) |
//! | `CORS_ALLOWED_ORIGINS` | none | browser origins allowed to call the API (`https://shop.example.com,https://m.example.com`); none answers no cross-origin request |
//! | `FULFILMENT_AUTO_ENABLED` | `true` | run the automatic delivery and purchase confirmation inside `serve` (instances share the work) |
//! | `FULFILMENT_AUTO_INTERVAL_MS` | `60000` | how often they look for due partner orders |
//! | `DELIVERY_AUTO_AFTER_SECONDS` | `259200` (3 days) | a shipped partner order nobody marked delivered is delivered this long after shipping |
//! | `PURCHASE_CONFIRM_AFTER_SECONDS` / `PURCHASE_CONFIRM_BACKSTOP_SECONDS` | `604800` (7 days) / `2419200` (28 days) | a delivered partner order is purchase-confirmed this long after delivery, or this long after shipping if that comes first; never while a return is open |
//! | `RETURN_WINDOW_SECONDS` | `604800` (7 days) | a delivered partner order may be returned this long after its delivery |
//! | `POINTS_EARN_RATE_BPS` | `100` (1 %) | points a purchase confirmation earns the customer, in basis points of what was paid for the partner order (its items less its share of the coupon discount), rounded down; `0`: none |
//! | `BUSINESS_TIME_ZONE` | `Asia/Seoul` | time zone of business days: a purchase confirmation is settled with its day's |
//! | `SETTLEMENT_ENABLED` | `true` | run the daily settlement job inside `serve` (one instance settles each day; the others find it closed) |
//! | `SETTLEMENT_CRON` | `0 0 4 * * *` | when the job settles every business day that has ended and is not closed yet (6-field cron, seconds first, in `BUSINESS_TIME_ZONE`) |
//! | `SETTLEMENT_PARALLEL_WORKERS` | `0` | PostgreSQL parallel workers that may help sum a day's lines, within the closing transaction (bounded by the server's `max_parallel_workers`); `0`: the closing session alone, faster on a 2-core server (BENCHMARKS.md) |
//! | `AUTH_HASH_QUEUE` | `32` | sign-ups and logins that may wait for a hashing thread; beyond that they get 503 `AUTH_BUSY` |
//! | `WISHLIST_ALERTS_ENABLED` | `true` | plan and send wishlist alerts inside `serve` (instances share the work; see `domain::alerts`) |
//! | `WISHLIST_ALERTS_INTERVAL_MS` | `1000` | how often the planner looks for restocks and drops to tell of, and the sender for due alerts when idle |
//! | `WISHLIST_DROP_LEAD_SECONDS` | `3600` | how long before a drop's sale window opens its subscribers are told |
//! | `WISHLIST_RESTOCK_QUIET_SECONDS` | `3600` | a customer told of a restock is not told of another one of the same product within this (`0`: every time) |
//! | `WISHLIST_ALERT_SEND_RATE` | `50/s` | messages per period across every instance (`<n>/s`, `<n>/min`, `<n>/h` or `off`); not turned off by `RATE_LIMITS_ENABLED` |
//! | `WISHLIST_ALERT_MAX_ATTEMPTS` / `WISHLIST_ALERT_RETRY_BASE_MS` | `5` / `1000` | attempts before a refused alert is dead-lettered; the wait after the first, doubling per attempt up to 10 minutes |
//! | `ALERTS_FROM` | `Commerce <alerts@commerce.localhost>` in `dev` | the sender of every alert (`Name <address>`); required outside `dev` while alerts are enabled |
//! | `STOREFRONT_PRODUCT_URL` | `http://127.0.0.1:8080/api/v1/products/{id}` | the product page linked from an alert; `{id}` is the product's id |
//! | `SMTP_HOST` / `SMTP_PORT` | `127.0.0.1` / `587` (`2525` in `dev`) | the SMTP relay alerts are sent through |
//! | `SMTP_SECURITY` | `starttls` (`none` in `dev`) | `starttls` (required before anything else is sent) or `none`; outside `dev`, `none` is refused unless `SMTP_ALLOW_PLAINTEXT` is `true` |
//! | `SMTP_USERNAME` / `SMTP_PASSWORD` | — | AUTH (PLAIN or LOGIN) credentials, both or neither; `SMTP_PASSWORD_FILE` reads a mounted secret |
//! | `SMTP_CA_FILE` | system roots | PEM of the CA that signed the relay's certificate |
//! | `SMTP_CONNECTIONS` | `4` | SMTP connections (messages in flight) per instance |
//! | `SMTP_TIMEOUT_MS` | `10000` | each SMTP step's limit (connecting, a command, the message) |
//! | `SMTP_HELLO_NAME` | `localhost` | the name this client greets the relay with (EHLO) |

use std::net::SocketAddr;

use commerce_config::{ConfigError, Connections, Profile, Reader, dev};
use commerce_kafka::KafkaSettings;

pub use crate::domain::alerts::AlertSettings;
pub use crate::domain::fulfilment::FulfilmentSettings;
pub use crate::domain::payments::PaymentSettings;
pub use crate::domain::settlement_job::SettlementSettings;
use crate::infra::auth::HashingSettings;
use crate::infra::gateway::{ApiKey, GatewaySettings};
use crate::infra::limits::{LimitSettings, RateSpec, TrustedProxies};
use crate::infra::outbox::Topics;
use crate::infra::relay::RelayConfig;

/// Everything the API reads from its environment.
#[derive(Clone)]
pub struct Config {
    pub profile: Profile,
    pub http_addr: SocketAddr,
    /// Where `/health/*` and `/metrics` are served instead, when set.
    pub management_addr: Option<SocketAddr>,
    /// How the server drains on shutdown.
    pub drain: commerce_web::Drain,
    pub database_url: String,
    /// A direct (not transaction-pooled) URL for the sessions that outlive a transaction: the
    /// LISTEN sessions and the relay's leader lock (`DATABASE_DIRECT_URL`, default
    /// `DATABASE_URL`).
    pub database_direct_url: String,
    pub database_pool_size: usize,
    pub redis_url: String,
    pub redis_ca_file: Option<String>,
    /// Whether `redis_url` lists the seed nodes of a Redis Cluster.
    pub redis_cluster: bool,
    pub redis_key_prefix: String,
    /// How often each instance makes the coupon gates in Redis agree with the database.
    pub coupon_gate_reconcile_interval: std::time::Duration,
    pub kafka: KafkaSettings,
    pub body_limit_bytes: usize,
    pub jwt_secret: String,
    /// Keys whose tokens are still accepted (a rotation in progress).
    pub jwt_previous_secrets: Vec<String>,
    pub jwt_ttl_seconds: i64,
    /// A session's absolute end after its start.
    pub refresh_ttl: std::time::Duration,
    pub admin_login_id: String,
    pub admin_password: String,
    pub catalog_topic: String,
    pub order_topic: String,
    pub product_cache_ttl_seconds: u64,
    /// A viewer's views of one product within this window count once.
    pub view_window: std::time::Duration,
    pub relay_enabled: bool,
    pub relay_poll_interval_ms: u64,
    pub relay_batch_size: i64,
    pub outbox_retention_hours: u64,
    pub topic_partitions: i32,
    pub gateway: GatewaySettings,
    pub payment_callback_url: Option<String>,
    pub callback_auth: CallbackAuth,
    pub card_key: [u8; 32],
    /// Card keys that still open what they sealed (a rotation in progress).
    pub previous_card_keys: Vec<[u8; 32]>,
    pub payments: PaymentSettings,
    pub limits: LimitSettings,
    pub trusted_proxies: TrustedProxies,
    pub hashing: HashingSettings,
    /// Origins allowed by CORS (exact `scheme://host[:port]`).
    pub cors_allowed_origins: Vec<String>,
    pub order_events_heartbeat: std::time::Duration,
    pub order_events_per_user: usize,
    /// Longest an order or top-up may take to place (statements and transaction).
    pub order_timeout: std::time::Duration,
    pub fulfilment: FulfilmentSettings,
    pub settlement: SettlementSettings,
    pub alerts: AlertSettings,
}

/// How the gateway's callbacks are authenticated: `X-Signature` under one of these secrets, at
/// most this far from this instance's clock (see [`commerce_web::signature`]). Not `Debug`: it
/// holds secrets.
#[derive(Clone)]
pub struct CallbackAuth {
    /// One, or two while a secret is rotated.
    pub secrets: Vec<String>,
    pub tolerance_seconds: i64,
}

/// The development JWT key. Refused by any profile but `dev`.
pub const DEV_JWT_SECRET: &str = "dev-only-insecure-jwt-secret-0123456789abcdef";
/// The development card-sealing key (hex). Refused by any profile but `dev`.
pub const DEV_CARD_KEY: &str = "6465762d6f6e6c792d696e7365637572652d636172642d6b65792d3031323334";
/// The development admin password. Refused by any profile but `dev`.
pub const DEV_ADMIN_PASSWORD: &str = "admin-dev-password";

/// A duration in `unit`s (`Duration::from_millis`, `from_secs`), within `range`.
fn duration<S: commerce_config::Source>(
    r: &Reader<S>,
    name: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
    unit: fn(u64) -> std::time::Duration,
) -> Result<std::time::Duration, ConfigError> {
    r.in_range(name, default, range).map(unit)
}

/// The wishlist alerts' settings, SMTP included.
fn read_alerts<S: commerce_config::Source>(
    r: &Reader<S>,
    dev: bool,
    time_zone: chrono_tz::Tz,
) -> Result<AlertSettings, ConfigError> {
    use crate::infra::mail::{Security, SmtpSettings};
    let enabled = r.or("WISHLIST_ALERTS_ENABLED", true)?;
    let security = r.or(
        "SMTP_SECURITY",
        if dev {
            Security::None
        } else {
            Security::StartTls
        },
    )?;
    if security == Security::None && !dev && enabled && !r.or("SMTP_ALLOW_PLAINTEXT", false)? {
        return Err(ConfigError::new(
            "SMTP_SECURITY",
            "none is refused outside the dev profile unless SMTP_ALLOW_PLAINTEXT is true",
        ));
    }
    let credentials = match (
        r.optional::<String>("SMTP_USERNAME")?,
        r.optional::<String>("SMTP_PASSWORD")?,
    ) {
        (Some(login), Some(password)) => Some((login, password)),
        (None, None) => None,
        _ => {
            return Err(ConfigError::new(
                "SMTP_USERNAME",
                "SMTP_USERNAME and SMTP_PASSWORD go together",
            ));
        }
    };
    if credentials.is_some() && security == Security::None && !dev {
        return Err(ConfigError::new(
            "SMTP_SECURITY",
            "credentials are never sent without TLS outside the dev profile",
        ));
    }
    let from = match r.optional::<String>("ALERTS_FROM")? {
        Some(v) => v,
        None if dev || !enabled => "Commerce <alerts@commerce.localhost>".to_owned(),
        None => {
            return Err(ConfigError::new(
                "ALERTS_FROM",
                "is required outside the dev profile while wishlist alerts are enabled",
            ));
        }
    };
    let from: lettre::message::Mailbox = from
        .parse()
        .map_err(|_| ConfigError::new("ALERTS_FROM", "must be an address or `Name <address>`"))?;
    let product_url = r.string_or(
        "STOREFRONT_PRODUCT_URL",
        "http://127.0.0.1:8080/api/v1/products/{id}",
    );
    if !product_url.contains("{id}") || reqwest::Url::parse(&product_url).is_err() {
        return Err(ConfigError::new(
            "STOREFRONT_PRODUCT_URL",
            "must be a URL with {id} where the product's id goes",
        ));
    }
    let ms = |name: &str, default: u64, range| {
        duration(r, name, default, range, std::time::Duration::from_millis)
    };
    let secs = |name: &str, default: u64, range| {
        duration(r, name, default, range, std::time::Duration::from_secs)
    };
    Ok(AlertSettings {
        enabled,
        interval: ms("WISHLIST_ALERTS_INTERVAL_MS", 1000, 10..=600_000)?,
        drop_lead: secs("WISHLIST_DROP_LEAD_SECONDS", 3600, 1..=7 * 86_400)?,
        restock_quiet: secs("WISHLIST_RESTOCK_QUIET_SECONDS", 3600, 0..=30 * 86_400)?,
        send_rate: r.or("WISHLIST_ALERT_SEND_RATE", "50/s".parse().expect("a rate"))?,
        connections: r.in_range("SMTP_CONNECTIONS", 4, 1..=64)?,
        max_attempts: r.in_range("WISHLIST_ALERT_MAX_ATTEMPTS", 5, 1..=100)?,
        retry_base: ms("WISHLIST_ALERT_RETRY_BASE_MS", 1000, 10..=3_600_000)?,
        from,
        product_url,
        time_zone,
        smtp: SmtpSettings {
            host: r.string_or("SMTP_HOST", "127.0.0.1"),
            port: r.in_range("SMTP_PORT", if dev { 2525 } else { 587 }, 1..=65_535)?,
            security,
            ca_file: r.optional("SMTP_CA_FILE")?,
            credentials,
            hello_name: r.string_or("SMTP_HELLO_NAME", "localhost"),
            timeout: ms("SMTP_TIMEOUT_MS", 10_000, 10..=300_000)?,
        },
    })
}

impl std::fmt::Display for Config {
    /// A loggable summary: no secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "profile={:?} http_addr={} pool={} kafka={} limits={:?} trusted_proxies=[{}] hashing={:?}",
            self.profile,
            self.http_addr,
            self.database_pool_size,
            self.kafka.brokers,
            self.limits,
            self.trusted_proxies,
            self.hashing
        )
    }
}

impl Config {
    /// The topic of each event stream.
    pub fn topics(&self) -> Topics {
        Topics {
            catalog: self.catalog_topic.clone(),
            order: self.order_topic.clone(),
        }
    }

    /// The outbox relay's settings.
    pub fn relay(&self) -> RelayConfig {
        RelayConfig {
            database_url: self.database_direct_url.clone(),
            kafka: self.kafka.clone(),
            topics: self.topics(),
            partitions: self.topic_partitions,
            batch_size: self.relay_batch_size,
            poll_interval: std::time::Duration::from_millis(self.relay_poll_interval_ms),
            retention: std::time::Duration::from_secs(self.outbox_retention_hours * 3600),
        }
    }

    /// Reads and validates the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::read(&Reader::default())
    }

    /// Only `DATABASE_URL`: what `migrate` needs (no secrets).
    pub fn read_database_url<S: commerce_config::Source>(
        r: &Reader<S>,
    ) -> Result<String, ConfigError> {
        commerce_db::validate_url(
            "DATABASE_URL",
            r.string_or(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/commerce",
            ),
        )
    }

    /// Reads and validates configuration from any source.
    pub fn read<S: commerce_config::Source>(r: &Reader<S>) -> Result<Self, ConfigError> {
        let database_url = Self::read_database_url(r)?;
        let profile = r.or("APP_PROFILE", Profile::Prod)?;
        let dev = profile == Profile::Dev;
        let kafka = KafkaSettings::read(r, !dev)?;
        let secret = |name: &str, dev_default: &str| -> Result<String, ConfigError> {
            match r.optional::<String>(name)? {
                Some(v) if !dev && v == dev_default => Err(ConfigError::new(
                    name,
                    "the development default is refused outside the dev profile",
                )),
                Some(v) => Ok(v),
                None if dev => Ok(dev_default.to_owned()),
                None => Err(ConfigError::new(
                    name,
                    "is required outside the dev profile",
                )),
            }
        };
        let jwt_secret = secret("COMMERCE_JWT_SECRET", DEV_JWT_SECRET)?;
        if jwt_secret.len() < 32 {
            return Err(ConfigError::new(
                "COMMERCE_JWT_SECRET",
                "must be at least 32 bytes",
            ));
        }
        let admin_password = secret("COMMERCE_ADMIN_PASSWORD", DEV_ADMIN_PASSWORD)?;
        if admin_password.len() < 8 {
            return Err(ConfigError::new(
                "COMMERCE_ADMIN_PASSWORD",
                "must be at least 8 characters",
            ));
        }
        let card_key_hex = secret("PAYMENT_CARD_KEY", DEV_CARD_KEY)?;
        let gateway_api_key = secret("PG_API_KEY", dev::GATEWAY_API_KEY)?;
        if gateway_api_key.len() < 16 {
            return Err(ConfigError::new(
                "PG_API_KEY",
                "must be at least 16 characters",
            ));
        }
        let callback_secrets: Vec<String> =
            secret("PG_CALLBACK_SECRETS", dev::GATEWAY_CALLBACK_SECRET)?
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect();
        if !(1..=2).contains(&callback_secrets.len())
            || callback_secrets.iter().any(|s| s.len() < 32)
        {
            return Err(ConfigError::new(
                "PG_CALLBACK_SECRETS",
                "must be one or two secrets of at least 32 bytes (two while rotating)",
            ));
        }
        if !dev
            && callback_secrets
                .iter()
                .any(|s| s == dev::GATEWAY_CALLBACK_SECRET)
        {
            return Err(ConfigError::new(
                "PG_CALLBACK_SECRETS",
                "the development default is refused outside the dev profile",
            ));
        }
        let callback_auth = CallbackAuth {
            secrets: callback_secrets,
            tolerance_seconds: r.in_range("PG_CALLBACK_TOLERANCE_SECONDS", 300, 10..=3600)?,
        };
        let card_key: [u8; 32] = hex::decode(card_key_hex.trim())
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| ConfigError::new("PAYMENT_CARD_KEY", "must be 64 hex digits"))?;
        let previous_card_keys = r
            .optional::<String>("PAYMENT_PREVIOUS_CARD_KEYS")?
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(|k| {
                hex::decode(k)
                    .ok()
                    .and_then(|k| k.try_into().ok())
                    .ok_or_else(|| {
                        ConfigError::new("PAYMENT_PREVIOUS_CARD_KEYS", "each must be 64 hex digits")
                    })
            })
            .collect::<Result<Vec<[u8; 32]>, _>>()?;
        let jwt_previous_secrets: Vec<String> = r
            .optional::<String>("COMMERCE_JWT_PREVIOUS_SECRETS")?
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect();
        if jwt_previous_secrets.iter().any(|k| k.len() < 32) {
            return Err(ConfigError::new(
                "COMMERCE_JWT_PREVIOUS_SECRETS",
                "each must be at least 32 bytes",
            ));
        }
        let ms = |name: &str, default: u64, range| {
            duration(r, name, default, range, std::time::Duration::from_millis)
        };
        let secs = |name: &str, default: u64, range| {
            duration(r, name, default, range, std::time::Duration::from_secs)
        };
        const DAY: u64 = 86_400;
        let gateway = GatewaySettings {
            base_url: r.string_or("PG_BASE_URL", "http://127.0.0.1:8082"),
            connect_timeout: ms("PG_CONNECT_TIMEOUT_MS", 300, 10..=60_000)?,
            timeout: ms("PG_TIMEOUT_MS", 1000, 10..=120_000)?,
            max_attempts: r.in_range("PG_MAX_ATTEMPTS", 3, 1..=10)?,
            retry_base_delay: ms("PG_RETRY_BASE_MS", 100, 1..=10_000)?,
            breaker_failure_rate: r.in_range("PG_BREAKER_FAILURE_RATE", 0.5, 0.01..=1.0)?,
            breaker_min_calls: r.in_range("PG_BREAKER_MIN_CALLS", 10, 1..=1000)?,
            breaker_window_calls: r.in_range("PG_BREAKER_WINDOW_CALLS", 20, 1..=1000)?,
            breaker_open_for: ms("PG_BREAKER_OPEN_MS", 10_000, 10..=600_000)?,
            api_key: ApiKey(gateway_api_key),
        };
        if reqwest::Url::parse(&gateway.base_url).is_err() {
            return Err(ConfigError::new("PG_BASE_URL", "must be a URL"));
        }
        let payment_callback_url = r.optional::<String>("PAYMENT_CALLBACK_URL")?;
        if let Some(url) = &payment_callback_url
            && reqwest::Url::parse(url).is_err()
        {
            return Err(ConfigError::new("PAYMENT_CALLBACK_URL", "must be a URL"));
        }
        let payments = PaymentSettings {
            reconcile_enabled: r.or("PAYMENT_RECONCILE_ENABLED", true)?,
            reconcile_interval: ms("PAYMENT_RECONCILE_INTERVAL_MS", 1000, 10..=600_000)?,
            recheck_after: ms("PAYMENT_RECHECK_AFTER_MS", 10_000, 10..=3_600_000)?,
            request_deadline: std::time::Duration::from_secs(r.in_range(
                "PAYMENT_REQUEST_DEADLINE_SECONDS",
                600,
                1..=7 * 86_400,
            )?),
            refunds_enabled: r.or("PAYMENT_REFUNDS_ENABLED", true)?,
            refund_retry_base: ms("PAYMENT_REFUND_RETRY_BASE_MS", 1000, 10..=600_000)?,
            audit_every: std::time::Duration::from_secs(r.in_range(
                "PAYMENT_AUDIT_INTERVAL_SECONDS",
                6 * 3600,
                1..=7 * 86_400,
            )?),
            audit_for: std::time::Duration::from_secs(
                r.in_range("PAYMENT_AUDIT_WINDOW_HOURS", 72, 0..=90 * 24)? * 3600,
            ),
        };
        // Reconciliation must not re-request a payment whose request may still be in flight (the
        // order's own call, or another instance's reconciliation of it): the recheck interval,
        // which is also how long a reconciliation claim lasts, must outlast a lookup plus a
        // request.
        let worst = gateway.worst_case_lookup() + gateway.worst_case_request();
        if payments.recheck_after <= worst {
            if dev {
                tracing::warn!(
                    recheck_ms = payments.recheck_after.as_millis() as u64,
                    worst_case_ms = worst.as_millis() as u64,
                    "PAYMENT_RECHECK_AFTER_MS does not outlast a worst-case lookup plus request; reconciliation could request a payment twice"
                );
            } else {
                return Err(ConfigError::new(
                    "PAYMENT_RECHECK_AFTER_MS",
                    format!(
                        "must exceed a worst-case gateway lookup plus request ({} ms with PG_TIMEOUT_MS, PG_MAX_ATTEMPTS and PG_RETRY_BASE_MS)",
                        worst.as_millis()
                    ),
                ));
            }
        }
        let time_zone: chrono_tz::Tz = r.or("BUSINESS_TIME_ZONE", chrono_tz::Asia::Seoul)?;
        let settlement = SettlementSettings {
            enabled: r.or("SETTLEMENT_ENABLED", true)?,
            cron: {
                let expr = r.string_or("SETTLEMENT_CRON", "0 0 4 * * *");
                tokio_cron_scheduler::Job::new_async_tz(expr.as_str(), time_zone, |_, _| {
                    Box::pin(async {})
                })
                .map_err(|e| {
                    ConfigError::new(
                        "SETTLEMENT_CRON",
                        format!("is not a schedule (6-field cron, seconds first): {e}"),
                    )
                })?;
                expr
            },
            time_zone,
            workers: crate::domain::settlement::Workers(r.in_range(
                "SETTLEMENT_PARALLEL_WORKERS",
                0,
                0..=8,
            )?),
        };
        let alerts = read_alerts(r, dev, time_zone)?;
        let limits_on = r.or("RATE_LIMITS_ENABLED", true)?;
        let rate = |name: &str, default: &str| -> Result<RateSpec, ConfigError> {
            let spec = r.or(name, default.parse().expect("valid default rate"))?;
            Ok(if limits_on { spec } else { RateSpec::OFF })
        };
        let limits = LimitSettings {
            sign_up_per_ip: rate("RATE_LIMIT_SIGN_UP", "10/min")?,
            token_per_ip: rate("RATE_LIMIT_TOKEN", "30/min")?,
            callback_per_ip: rate("RATE_LIMIT_PAYMENT_CALLBACK", "100/s")?,
            orders_per_user: rate("RATE_LIMIT_ORDERS", "60/min")?,
            coupon_issue_per_user: rate("RATE_LIMIT_COUPON_ISSUE", "10/min")?,
            points_charge_per_user: rate("RATE_LIMIT_POINTS_CHARGE", "30/min")?,
            likes_per_user: rate("RATE_LIMIT_LIKES", "60/min")?,
        };
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let hashing = HashingSettings {
            threads: r.in_range("AUTH_HASH_THREADS", cpus, 1..=256)?,
            queue: r.in_range("AUTH_HASH_QUEUE", 32, 0..=10_000)?,
        };
        let cors_allowed_origins: Vec<String> = r
            .string_or("CORS_ALLOWED_ORIGINS", "")
            .split(',')
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        for origin in &cors_allowed_origins {
            let parsed = reqwest::Url::parse(origin).ok();
            let is_origin = parsed.as_ref().is_some_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some()
                    && u.path() == "/"
                    && u.query().is_none()
            });
            if !is_origin || origin == "*" {
                return Err(ConfigError::new(
                    "CORS_ALLOWED_ORIGINS",
                    format!(
                        "{origin:?} is not an origin (scheme://host[:port], no path, no wildcard)"
                    ),
                ));
            }
        }
        let redis_url = r.string_or("REDIS_URL", "redis://127.0.0.1:6379");
        let database_direct_url = match r.optional::<String>("DATABASE_DIRECT_URL")? {
            Some(url) => Some(commerce_db::validate_url("DATABASE_DIRECT_URL", url)?),
            None => None,
        };
        commerce_config::refuse_plaintext(
            r,
            !dev,
            &Connections {
                database_url: &database_url,
                database_direct_url: database_direct_url.as_deref(),
                redis_url: &redis_url,
                kafka_encrypted: kafka.encrypted(),
            },
        )?;
        Ok(Self {
            cors_allowed_origins,
            order_events_heartbeat: std::time::Duration::from_secs(r.in_range(
                "ORDER_EVENTS_HEARTBEAT_SECONDS",
                15,
                1..=300,
            )?),
            order_events_per_user: r.in_range("ORDER_EVENTS_PER_USER", 5, 1..=100)?,
            order_timeout: ms("ORDER_TIMEOUT_MS", 10_000, 100..=600_000)?,
            fulfilment: FulfilmentSettings {
                enabled: r.or("FULFILMENT_AUTO_ENABLED", true)?,
                interval: ms("FULFILMENT_AUTO_INTERVAL_MS", 60_000, 10..=3_600_000)?,
                deliver_after: secs("DELIVERY_AUTO_AFTER_SECONDS", 3 * DAY, 1..=60 * DAY)?,
                confirm_after: secs("PURCHASE_CONFIRM_AFTER_SECONDS", 7 * DAY, 1..=60 * DAY)?,
                confirm_backstop: secs(
                    "PURCHASE_CONFIRM_BACKSTOP_SECONDS",
                    28 * DAY,
                    1..=120 * DAY,
                )?,
                earn_rate_bps: r.in_range("POINTS_EARN_RATE_BPS", 100, 0..=10_000)?,
                return_window: secs("RETURN_WINDOW_SECONDS", 7 * DAY, 1..=90 * DAY)?,
                time_zone,
            },
            settlement,
            alerts,
            limits,
            trusted_proxies: r.or("TRUSTED_PROXIES", TrustedProxies::default())?,
            hashing,
            gateway,
            payment_callback_url,
            callback_auth,
            card_key,
            previous_card_keys,
            payments,
            profile,
            jwt_secret,
            jwt_previous_secrets,
            jwt_ttl_seconds: r.in_range("COMMERCE_JWT_TTL_SECONDS", 900, 60..=86_400 * 30)?,
            refresh_ttl: std::time::Duration::from_secs(r.in_range(
                "COMMERCE_REFRESH_TTL_SECONDS",
                30 * 86_400,
                300..=365 * 86_400,
            )?),
            admin_login_id: {
                let id = r.string_or("COMMERCE_ADMIN_LOGIN_ID", "admin");
                if !crate::domain::accounts::is_login_id(&id) {
                    return Err(ConfigError::new(
                        "COMMERCE_ADMIN_LOGIN_ID",
                        crate::domain::accounts::LOGIN_ID_RULE,
                    ));
                }
                id
            },
            admin_password,
            catalog_topic: r.string_or("CATALOG_TOPIC", commerce_events::CATALOG_TOPIC),
            order_topic: r.string_or("ORDER_TOPIC", commerce_events::ORDER_TOPIC),
            product_cache_ttl_seconds: r.in_range("PRODUCT_CACHE_TTL_SECONDS", 30, 1..=3600)?,
            view_window: std::time::Duration::from_secs(r.in_range(
                "PRODUCT_VIEW_WINDOW_SECONDS",
                1800,
                1..=7 * 86_400,
            )?),
            relay_enabled: r.or("OUTBOX_RELAY_ENABLED", true)?,
            relay_poll_interval_ms: r.in_range("OUTBOX_POLL_INTERVAL_MS", 500, 10..=60_000)?,
            relay_batch_size: r.in_range("OUTBOX_BATCH_SIZE", 2000, 1..=10_000)?,
            outbox_retention_hours: r.in_range("OUTBOX_RETENTION_HOURS", 168, 1..=24 * 365)?,
            topic_partitions: r.in_range("KAFKA_TOPIC_PARTITIONS", 6, 1..=1000)?,
            http_addr: r.or("HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            management_addr: r.optional("MANAGEMENT_ADDR")?,
            drain: commerce_web::Drain::read(r, !dev)?,
            database_direct_url: database_direct_url.unwrap_or_else(|| database_url.clone()),
            database_url,
            database_pool_size: r.in_range("DATABASE_POOL_SIZE", 16, 1..=512)?,
            redis_url,
            redis_ca_file: r.optional("REDIS_CA_FILE")?,
            redis_cluster: r.or("REDIS_CLUSTER", false)?,
            redis_key_prefix: r.string_or("REDIS_KEY_PREFIX", "commerce:"),
            coupon_gate_reconcile_interval: std::time::Duration::from_millis(r.in_range(
                "COUPON_GATE_RECONCILE_INTERVAL_MS",
                60_000,
                100..=3_600_000,
            )?),
            kafka,
            body_limit_bytes: r.in_range("HTTP_BODY_LIMIT_BYTES", 64 * 1024, 1024..=16 << 20)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use commerce_config::dev;
    use std::collections::HashMap;

    fn read(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::read(&Reader::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>(),
        ))
    }

    /// `pairs` in the dev profile.
    fn dev(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut all = vec![("APP_PROFILE", "dev")];
        all.extend_from_slice(pairs);
        read(&all)
    }

    #[test]
    fn no_profile_is_production_and_refuses_to_start_without_secrets() {
        // An operator who forgets APP_PROFILE gets production, never the repository's secrets.
        let err = read(&[]).err().unwrap();
        assert_eq!(err.var, "COMMERCE_JWT_SECRET");
        let both = format!(
            "a-real-callback-secret-0123456789ab,{}",
            dev::GATEWAY_CALLBACK_SECRET
        );
        for (var, value) in [
            ("COMMERCE_JWT_SECRET", DEV_JWT_SECRET),
            ("COMMERCE_ADMIN_PASSWORD", DEV_ADMIN_PASSWORD),
            ("PAYMENT_CARD_KEY", DEV_CARD_KEY),
            ("PG_API_KEY", dev::GATEWAY_API_KEY),
            ("PG_CALLBACK_SECRETS", dev::GATEWAY_CALLBACK_SECRET),
            ("PG_CALLBACK_SECRETS", both.as_str()),
        ] {
            let mut vars = PROD.to_vec();
            vars.retain(|(v, _)| *v != var);
            assert_eq!(read(&vars).err().unwrap().var, var, "{var} is required");
            vars.push((var, value));
            assert_eq!(read(&vars).err().unwrap().var, var, "{var}'s dev default");
        }
        assert!(read(&PROD).is_ok());
        assert!(dev(&[]).is_ok(), "dev runs on the development defaults");
    }

    #[test]
    fn gateway_secrets_are_long_and_at_most_two_callback_secrets_are_held() {
        let mut vars = PROD.to_vec();
        vars.push((
            "PG_CALLBACK_SECRETS",
            "first-callback-secret-0123456789abc, second-callback-secret-0123456789ab",
        ));
        assert_eq!(read(&vars).unwrap().callback_auth.secrets.len(), 2);
        for (var, bad) in [
            ("PG_CALLBACK_SECRETS", "short"),
            (
                "PG_CALLBACK_SECRETS",
                "a-0123456789abcdef0123456789abcdef,b-0123456789abcdef0123456789abcdef,c-0123456789abcdef0123456789abcdef",
            ),
            ("PG_API_KEY", "short"),
        ] {
            let mut vars = PROD.to_vec();
            vars.push((var, bad));
            assert_eq!(read(&vars).err().unwrap().var, var, "{bad}");
        }
    }

    /// Production with every secret set to a non-development value.
    const PROD: [(&str, &str); 10] = [
        ("APP_PROFILE", "prod"),
        ("ALERTS_FROM", "Shop <alerts@shop.example.com>"),
        ("COMMERCE_JWT_SECRET", "s3cret-s3cret-s3cret-s3cret-s3cret!"),
        ("COMMERCE_ADMIN_PASSWORD", "a-real-password"),
        (
            "PAYMENT_CARD_KEY",
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
        ),
        ("PG_API_KEY", "a-real-merchant-key-0123"),
        ("PG_CALLBACK_SECRETS", "a-real-callback-secret-0123456789ab"),
        ("DATABASE_ALLOW_PLAINTEXT", "true"),
        ("REDIS_ALLOW_PLAINTEXT", "true"),
        ("KAFKA_ALLOW_PLAINTEXT", "true"),
    ];

    #[test]
    fn production_mail_needs_a_sender_tls_and_both_credentials() {
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut vars: Vec<(&str, &str)> = PROD
                .iter()
                .copied()
                .filter(|(k, _)| *k != "ALERTS_FROM")
                .collect();
            vars.extend_from_slice(extra);
            read(&vars)
        };
        assert_eq!(with(&[]).err().unwrap().var, "ALERTS_FROM");
        let from = ("ALERTS_FROM", "Shop <alerts@shop.example.com>");
        let ok = with(&[from]).unwrap().alerts;
        assert_eq!(ok.smtp.security, crate::infra::mail::Security::StartTls);
        assert_eq!(ok.smtp.port, 587);
        assert!(with(&[("WISHLIST_ALERTS_ENABLED", "false")]).is_ok());
        for (bad, var) in [
            (("SMTP_SECURITY", "none"), "SMTP_SECURITY"),
            (("SMTP_SECURITY", "ssl"), "SMTP_SECURITY"),
            (("SMTP_USERNAME", "shop"), "SMTP_USERNAME"),
            (("ALERTS_FROM", "not an address"), "ALERTS_FROM"),
            (
                ("STOREFRONT_PRODUCT_URL", "https://shop.example.com/p"),
                "STOREFRONT_PRODUCT_URL",
            ),
            (
                ("WISHLIST_ALERT_SEND_RATE", "fast"),
                "WISHLIST_ALERT_SEND_RATE",
            ),
        ] {
            let mut extra = vec![bad];
            if bad.0 != "ALERTS_FROM" {
                extra.push(from);
            }
            assert_eq!(with(&extra).err().unwrap().var, var, "{bad:?}");
        }
        let relay = with(&[
            from,
            ("SMTP_SECURITY", "none"),
            ("SMTP_ALLOW_PLAINTEXT", "true"),
        ]);
        assert!(relay.is_ok(), "a local relay the operator vouches for");
    }

    #[test]
    fn production_refuses_plaintext_connections_unless_each_is_allowed() {
        for (allow, named) in [
            ("DATABASE_ALLOW_PLAINTEXT", "DATABASE_URL"),
            ("REDIS_ALLOW_PLAINTEXT", "REDIS_URL"),
            ("KAFKA_ALLOW_PLAINTEXT", "KAFKA_SECURITY_PROTOCOL"),
        ] {
            let mut vars = PROD.to_vec();
            vars.retain(|(v, _)| *v != allow);
            assert_eq!(read(&vars).err().unwrap().var, named, "{allow}");
        }
        let mut encrypted = PROD.to_vec();
        encrypted.retain(|(v, _)| !v.ends_with("_ALLOW_PLAINTEXT"));
        encrypted.extend([
            (
                "DATABASE_URL",
                "postgres://app@db:5432/commerce?sslmode=verify-full",
            ),
            ("REDIS_URL", "rediss://cache:6380"),
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("KAFKA_SASL_USERNAME", "commerce"),
            ("KAFKA_SASL_PASSWORD", "secret"),
        ]);
        assert!(read(&encrypted).is_ok(), "{:?}", read(&encrypted).err());
        // The direct URL (past a pooler) is held to the same rule.
        let mut direct = encrypted.clone();
        direct.push((
            "DATABASE_DIRECT_URL",
            "postgres://app@db-primary:5432/commerce",
        ));
        assert_eq!(read(&direct).err().unwrap().var, "DATABASE_DIRECT_URL");
        direct.pop();
        direct.push((
            "DATABASE_DIRECT_URL",
            "postgres://app@db-primary:5432/commerce?sslmode=verify-full",
        ));
        let config = read(&direct).expect("an encrypted direct URL");
        assert_eq!(
            config.database_direct_url,
            "postgres://app@db-primary:5432/commerce?sslmode=verify-full"
        );
        assert_eq!(
            read(&encrypted).unwrap().database_direct_url,
            "postgres://app@db:5432/commerce?sslmode=verify-full",
            "defaults to DATABASE_URL"
        );
        assert!(dev(&[]).is_ok(), "development allows plain text");
    }

    #[test]
    fn prod_profile_refuses_the_dev_card_key() {
        let mut vars = PROD.to_vec();
        vars.retain(|(v, _)| *v != "PAYMENT_CARD_KEY");
        vars.push(("PAYMENT_CARD_KEY", DEV_CARD_KEY));
        assert_eq!(read(&vars).err().unwrap().var, "PAYMENT_CARD_KEY");
        assert_eq!(
            dev(&[("PAYMENT_CARD_KEY", "abcd")]).err().unwrap().var,
            "PAYMENT_CARD_KEY"
        );
    }

    #[test]
    fn prod_profile_refuses_a_recheck_that_could_request_a_payment_twice() {
        assert!(read(&PROD).is_ok(), "the defaults are consistent");
        let mut short = PROD.to_vec();
        short.push(("PAYMENT_RECHECK_AFTER_MS", "5000"));
        assert_eq!(read(&short).err().unwrap().var, "PAYMENT_RECHECK_AFTER_MS");
        assert!(
            dev(&[
                ("PAYMENT_RECHECK_AFTER_MS", "5000"),
                ("PG_TIMEOUT_MS", "1000")
            ])
            .is_ok(),
            "dev only warns"
        );
    }

    #[test]
    fn prod_profile_refuses_the_dev_jwt_secret() {
        let err = read(&[
            ("APP_PROFILE", "prod"),
            ("COMMERCE_JWT_SECRET", DEV_JWT_SECRET),
            ("COMMERCE_ADMIN_PASSWORD", "a-real-password"),
        ])
        .err()
        .unwrap();
        assert_eq!(err.var, "COMMERCE_JWT_SECRET");
    }

    #[test]
    fn prod_profile_requires_a_secret_and_short_secrets_are_refused() {
        assert_eq!(
            read(&[("APP_PROFILE", "prod")]).err().unwrap().var,
            "COMMERCE_JWT_SECRET"
        );
        assert_eq!(
            dev(&[("COMMERCE_JWT_SECRET", "short")]).err().unwrap().var,
            "COMMERCE_JWT_SECRET"
        );
    }

    #[test]
    fn limits_are_on_by_default_and_configurable() {
        let config = dev(&[]).unwrap();
        assert_eq!(config.limits.sign_up_per_ip.to_string(), "10/min");
        assert_eq!(config.limits.orders_per_user.to_string(), "60/min");
        let config = dev(&[("RATE_LIMIT_ORDERS", "5/s"), ("RATE_LIMIT_TOKEN", "off")]).unwrap();
        assert_eq!(config.limits.orders_per_user.to_string(), "5/s");
        assert_eq!(config.limits.token_per_ip, RateSpec::OFF);
        let off = dev(&[("RATE_LIMITS_ENABLED", "false")]).unwrap();
        assert_eq!(off.limits.sign_up_per_ip, RateSpec::OFF);
        assert_eq!(
            dev(&[("RATE_LIMIT_SIGN_UP", "lots")]).err().unwrap().var,
            "RATE_LIMIT_SIGN_UP"
        );
        assert_eq!(
            dev(&[("TRUSTED_PROXIES", "10.0.0.0/99")])
                .err()
                .unwrap()
                .var,
            "TRUSTED_PROXIES"
        );
    }

    #[test]
    fn cors_origins_are_exact_origins() {
        let config = dev(&[(
            "CORS_ALLOWED_ORIGINS",
            "https://shop.example.com/, http://localhost:3000",
        )])
        .unwrap();
        assert_eq!(
            config.cors_allowed_origins,
            ["https://shop.example.com", "http://localhost:3000"]
        );
        assert!(dev(&[]).unwrap().cors_allowed_origins.is_empty());
        for bad in [
            "*",
            "shop.example.com",
            "https://shop.example.com/path",
            "ftp://x.example",
        ] {
            assert_eq!(
                dev(&[("CORS_ALLOWED_ORIGINS", bad)]).err().unwrap().var,
                "CORS_ALLOWED_ORIGINS",
                "{bad}"
            );
        }
    }

    #[test]
    fn bad_port_names_the_variable() {
        let err = dev(&[("HTTP_ADDR", "localhost:http")]).err().unwrap();
        assert_eq!(err.var, "HTTP_ADDR");
    }

    #[test]
    fn summary_contains_no_secret() {
        let config =
            dev(&[("COMMERCE_JWT_SECRET", "s3cret-s3cret-s3cret-s3cret-s3cret!")]).unwrap();
        assert!(!config.to_string().contains("s3cret"));
    }
}
