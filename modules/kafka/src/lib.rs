//! Kafka clients for both apps, on rdkafka (bundled librdkafka).
//!
//! Rules kept here:
//! - producers are idempotent (`enable.idempotence=true`, `acks=all`), so a retried send never
//!   duplicates or reorders a message within a partition;
//! - consumers never auto-store offsets (`enable.auto.offset.store=false`): an app stores an
//!   offset only after the side effect of that message is durable, and the background
//!   auto-commit then commits only stored offsets. Offsets follow the database, never lead it;
//! - only the Kafka protocol is used, so the same code runs against Apache Kafka in production
//!   and any protocol-compatible broker in development.

use std::time::Duration;

use anyhow::Context as _;
use futures::future::BoxFuture;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureProducer;

pub use rdkafka;

/// The librdkafka properties for TLS and SASL, each read from the variable named after it
/// (`security.protocol` from `KAFKA_SECURITY_PROTOCOL`, …) and passed through unchanged.
pub const SECURITY_PROPERTIES: &[&str] = &[
    "security.protocol",
    "sasl.mechanism",
    "sasl.username",
    "sasl.password",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.key.password",
    "ssl.endpoint.identification.algorithm",
];

/// Whether a librdkafka property's value is a secret (never shown).
fn secret_property(name: &str) -> bool {
    name.contains("password")
        || name.contains("secret")
        || name.ends_with(".pem")
        || name.starts_with("sasl.oauthbearer.config")
        || name.contains("jaas")
}

/// Properties the apps set themselves for the guarantees in this module's documentation; the
/// passthrough (`KAFKA_PROPERTY_…`, `KAFKA_PROPERTIES_FILE`) refuses them.
const OWNED_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "enable.idempotence",
    "acks",
    "enable.partition.eof",
];

/// The librdkafka property a `KAFKA_PROPERTY_<NAME>` variable sets: `<NAME>` lowercased with
/// `_` read as `.` (and `__` as a literal `_`).
pub fn property_of_variable(variable: &str) -> Option<String> {
    let name = variable.strip_prefix("KAFKA_PROPERTY_")?;
    Some(
        name.to_ascii_lowercase()
            .replace("__", "\0")
            .replace('_', ".")
            .replace("\0", "_"),
    )
}

/// The environment variable a security property is read from.
pub fn security_variable(property: &str) -> String {
    format!("KAFKA_{}", property.to_ascii_uppercase().replace('.', "_"))
}

/// Connection settings shared by every client an app creates.
#[derive(Clone)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list (`KAFKA_BROKERS`).
    pub brokers: String,
    /// Consumer group session timeout; short in development so a group's first join is quick.
    pub session_timeout_ms: u32,
    /// Longest gap between polls before the member is considered stuck.
    pub max_poll_interval_ms: u32,
    /// Replication factor of the topics the apps create.
    pub replication_factor: i32,
    /// `min.insync.replicas` of the topics the apps create: with `acks=all`, how many replicas
    /// hold a write before it is acknowledged.
    pub min_insync_replicas: i32,
    /// TLS and SASL properties ([`SECURITY_PROPERTIES`]) set on every client.
    pub security: Vec<(&'static str, String)>,
    /// Any other librdkafka properties, set on every client after the apps' defaults
    /// (`KAFKA_PROPERTIES_FILE`, then `KAFKA_PROPERTY_<NAME>` variables over it).
    pub properties: Vec<(String, String)>,
    /// Whether the apps create their topics (`KAFKA_MANAGE_TOPICS`); when not, they only
    /// check that the topics exist, with a suitable retention.
    pub manage_topics: bool,
    /// The retention of the topics the apps create, and the most a topic may keep messages
    /// (`KAFKA_TOPIC_RETENTION_HOURS`): the collector's dedupe horizon must outlast it.
    pub topic_retention_hours: u32,
    /// Production group membership: cooperative-sticky assignment (a rolling deploy moves only
    /// the leaving member's partitions) and, when set, a static member id
    /// (`KAFKA_GROUP_INSTANCE_ID`, else `POD_NAME`) so a restart inside the session timeout
    /// rebalances nothing.
    pub cooperative: bool,
    pub group_instance_id: Option<String>,
}

impl std::fmt::Debug for KafkaSettings {
    /// Secrets redacted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let security: Vec<String> = self
            .security
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .chain(
                self.properties
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .map(|(k, v)| {
                if secret_property(k) {
                    format!("{k}=<redacted>")
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("replication_factor", &self.replication_factor)
            .field("min_insync_replicas", &self.min_insync_replicas)
            .field("properties", &security)
            .field("manage_topics", &self.manage_topics)
            .field("topic_retention_hours", &self.topic_retention_hours)
            .field("group_instance_id", &self.group_instance_id)
            .finish_non_exhaustive()
    }
}

/// Reads the security properties, checking what can be checked before connecting: the protocol
/// and mechanism are ones this build supports, and SASL PLAIN and SCRAM have credentials.
fn read_security<S: commerce_config::Source>(
    r: &commerce_config::Reader<S>,
) -> Result<Vec<(&'static str, String)>, commerce_config::ConfigError> {
    use commerce_config::ConfigError;
    let mut security = Vec::new();
    for property in SECURITY_PROPERTIES {
        if let Some(value) = r.optional::<String>(&security_variable(property))? {
            security.push((*property, value));
        }
    }
    let get = |name: &str| {
        security
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    };
    let protocol = get("security.protocol")
        .unwrap_or("plaintext")
        .to_ascii_lowercase();
    if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&protocol.as_str()) {
        return Err(ConfigError::new(
            "KAFKA_SECURITY_PROTOCOL",
            "must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
        ));
    }
    if protocol.starts_with("sasl") {
        let mechanism = get("sasl.mechanism")
            .unwrap_or("GSSAPI")
            .to_ascii_uppercase();
        match mechanism.as_str() {
            "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512" => {
                for property in ["sasl.username", "sasl.password"] {
                    if get(property).is_none() {
                        return Err(ConfigError::new(
                            &security_variable(property),
                            format!("is required for SASL {mechanism}"),
                        ));
                    }
                }
            }
            "OAUTHBEARER" => {}
            _ => {
                return Err(ConfigError::new(
                    "KAFKA_SASL_MECHANISM",
                    "must be PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER (GSSAPI is not built in)",
                ));
            }
        }
    }
    Ok(security)
}

/// Reads `KAFKA_PROPERTIES_FILE` (Java properties: `name=value` lines, `#` comments) and then
/// `KAFKA_PROPERTY_<NAME>` variables over it; refuses the properties the apps own and the TLS and
/// SASL ones, which have variables of their own.
fn read_properties<S: commerce_config::Source>(
    r: &commerce_config::Reader<S>,
) -> Result<Vec<(String, String)>, commerce_config::ConfigError> {
    use commerce_config::ConfigError;
    let mut properties: std::collections::BTreeMap<String, (String, String)> = Default::default();
    if let Some(path) = r.optional::<String>("KAFKA_PROPERTIES_FILE")? {
        let text = std::fs::read_to_string(&path).map_err(|e| {
            ConfigError::new("KAFKA_PROPERTIES_FILE", format!("reading {path}: {e}"))
        })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                continue;
            }
            let (name, value) = line.split_once('=').ok_or_else(|| {
                ConfigError::new(
                    "KAFKA_PROPERTIES_FILE",
                    format!("line {}: expected name=value", n + 1),
                )
            })?;
            properties.insert(
                name.trim().to_owned(),
                (value.trim().to_owned(), "KAFKA_PROPERTIES_FILE".to_owned()),
            );
        }
    }
    for (variable, value) in r.with_prefix("KAFKA_PROPERTY_") {
        let name = property_of_variable(&variable).expect("the prefix was matched");
        properties.insert(name, (value, variable));
    }
    for (name, (_, from)) in &properties {
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_');
        if !valid {
            return Err(ConfigError::new(
                from,
                format!("{name:?} is not a librdkafka property name"),
            ));
        }
        if OWNED_PROPERTIES.contains(&name.as_str()) {
            return Err(ConfigError::new(
                from,
                format!(
                    "{name} is set by the apps for their delivery guarantees and cannot be overridden"
                ),
            ));
        }
        if SECURITY_PROPERTIES.contains(&name.as_str()) {
            return Err(ConfigError::new(
                from,
                format!("{name} is read from {}", security_variable(name)),
            ));
        }
    }
    Ok(properties.into_iter().map(|(k, (v, _))| (k, v)).collect())
}

impl KafkaSettings {
    /// Development settings: one broker, topics with one replica.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            session_timeout_ms: 6_000,
            max_poll_interval_ms: 10_000,
            replication_factor: 1,
            min_insync_replicas: 1,
            security: Vec::new(),
            properties: Vec::new(),
            manage_topics: true,
            topic_retention_hours: 168,
            cooperative: false,
            group_instance_id: None,
        }
    }

    /// Reads `KAFKA_BROKERS`, `KAFKA_SESSION_TIMEOUT_MS`, `KAFKA_MAX_POLL_INTERVAL_MS`,
    /// `KAFKA_REPLICATION_FACTOR` and `KAFKA_MIN_INSYNC_REPLICAS`. Topics get 3 replicas, 2 in
    /// sync, in production (one broker may be lost without losing an acknowledged write or
    /// refusing writes), 1 and 1 in development.
    pub fn read<S: commerce_config::Source>(
        r: &commerce_config::Reader<S>,
        production: bool,
    ) -> Result<Self, commerce_config::ConfigError> {
        let (replicas, in_sync) = if production { (3, 2) } else { (1, 1) };
        // Production: Kafka's own defaults, which a rolling deploy's pauses stay inside;
        // development: short, so a test's group forms and fails over in seconds.
        let (session, max_poll) = if production {
            (45_000, 300_000)
        } else {
            (6_000, 10_000)
        };
        let group_instance_id =
            r.optional::<String>("KAFKA_GROUP_INSTANCE_ID")?
                .or(if production {
                    r.optional::<String>("POD_NAME")?
                } else {
                    None
                });
        let settings = Self {
            brokers: r.string_or("KAFKA_BROKERS", "127.0.0.1:9092"),
            session_timeout_ms: r.in_range("KAFKA_SESSION_TIMEOUT_MS", session, 1_000..=300_000)?,
            max_poll_interval_ms: r.in_range(
                "KAFKA_MAX_POLL_INTERVAL_MS",
                max_poll,
                1_000..=3_600_000,
            )?,
            replication_factor: r.in_range("KAFKA_REPLICATION_FACTOR", replicas, 1..=32)?,
            min_insync_replicas: r.in_range("KAFKA_MIN_INSYNC_REPLICAS", in_sync, 1..=32)?,
            security: read_security(r)?,
            properties: read_properties(r)?,
            manage_topics: r.or("KAFKA_MANAGE_TOPICS", true)?,
            topic_retention_hours: r.in_range("KAFKA_TOPIC_RETENTION_HOURS", 168, 1..=24 * 365)?,
            cooperative: r.or("KAFKA_COOPERATIVE_REBALANCING", production)?,
            group_instance_id,
        };
        if settings.min_insync_replicas > settings.replication_factor {
            return Err(commerce_config::ConfigError::new(
                "KAFKA_MIN_INSYNC_REPLICAS",
                format!(
                    "must not exceed KAFKA_REPLICATION_FACTOR ({}): no write could be acknowledged",
                    settings.replication_factor
                ),
            ));
        }
        Ok(settings)
    }

    /// Whether the brokers are reached over TLS (`SSL` or `SASL_SSL`).
    pub fn encrypted(&self) -> bool {
        self.security.iter().any(|(property, value)| {
            *property == "security.protocol"
                && matches!(value.to_ascii_uppercase().as_str(), "SSL" | "SASL_SSL")
        })
    }

    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            // Fail fast on a dead address instead of librdkafka's long defaults.
            .set("socket.timeout.ms", "10000")
            .set("reconnect.backoff.max.ms", "2000")
            .set("topic.metadata.refresh.interval.ms", "10000");
        for (property, value) in &self.security {
            c.set(*property, value);
        }
        for (property, value) in &self.properties {
            c.set(property, value);
        }
        c
    }

    /// Configuration for an idempotent producer.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.base();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            // Bounded: a send that cannot be delivered in this time fails, and the caller
            // (the outbox relay) retries it later from the database.
            .set("message.timeout.ms", "30000");
        for (property, value) in &self.properties {
            c.set(property, value);
        }
        c
    }

    /// Creates an idempotent producer, its client errors counted as `client`.
    pub fn producer(&self, client: &'static str) -> anyhow::Result<Producer> {
        self.producer_config()
            .create_with_context(Observed(client))
            .context("creating Kafka producer")
    }

    /// Configuration for a group member that stores offsets explicitly after processing.
    pub fn consumer_config(&self, group_id: &str) -> ClientConfig {
        let mut c = self.base();
        c.set("group.id", group_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set(
                "heartbeat.interval.ms",
                (self.session_timeout_ms / 3).max(500).to_string(),
            )
            .set(
                "max.poll.interval.ms",
                self.max_poll_interval_ms.to_string(),
            );
        if self.cooperative {
            c.set("partition.assignment.strategy", "cooperative-sticky");
        }
        if let Some(id) = &self.group_instance_id {
            c.set("group.instance.id", id);
        }
        // The passthrough wins over the defaults above (but never over the owned properties,
        // which it may not name).
        for (property, value) in &self.properties {
            c.set(property, value);
        }
        c
    }

    /// Creates the given topics (name, partitions) if they do not exist yet, with the configured
    /// replication factor, `min.insync.replicas` and retention (existing topics are left as
    /// they are); with `KAFKA_MANAGE_TOPICS=false`, creates nothing. Then checks every topic
    /// on the broker ([`KafkaSettings::check_topics`]).
    pub async fn ensure_topics(&self, topics: &[(&str, i32)]) -> anyhow::Result<()> {
        let admin: AdminClient<DefaultClientContext> = self
            .base()
            .create()
            .context("creating Kafka admin client")?;
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        if self.manage_topics {
            let min_insync = self.min_insync_replicas.to_string();
            let retention = self.retention_ms().to_string();
            let new: Vec<NewTopic<'_>> = topics
                .iter()
                .map(|(name, partitions)| {
                    NewTopic::new(
                        name,
                        *partitions,
                        TopicReplication::Fixed(self.replication_factor),
                    )
                    .set("min.insync.replicas", &min_insync)
                    .set("retention.ms", &retention)
                })
                .collect();
            let results = admin
                .create_topics(new.iter(), &opts)
                .await
                .context("creating Kafka topics")?;
            for result in results {
                match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((topic, code)) => anyhow::bail!("creating Kafka topic {topic}: {code}"),
                }
            }
        }
        let names: Vec<&str> = topics.iter().map(|(name, _)| *name).collect();
        self.check_topics(&admin, &names).await
    }

    /// The most a topic may keep a message, in milliseconds.
    pub fn retention_ms(&self) -> i64 {
        i64::from(self.topic_retention_hours) * 3_600_000
    }

    /// Asks the broker for each topic's configuration (DescribeConfigs): the topic must exist,
    /// and keep messages no longer than `KAFKA_TOPIC_RETENTION_HOURS` (a longer or unlimited
    /// retention could redeliver an event past the collector's dedupe horizon, which would
    /// count it twice). A broker that does not report a retention is logged, not refused.
    async fn check_topics(
        &self,
        admin: &AdminClient<DefaultClientContext>,
        names: &[&str],
    ) -> anyhow::Result<()> {
        use rdkafka::admin::ResourceSpecifier;
        // Existence from the cluster's metadata (asked for no topic in particular, so nothing
        // is created by asking).
        let client: BaseConsumer = self.base().create().context("creating Kafka client")?;
        let listed: Vec<String> = tokio::task::spawn_blocking(move || {
            client
                .fetch_metadata(None, Duration::from_secs(10))
                .map(|m| m.topics().iter().map(|t| t.name().to_owned()).collect())
        })
        .await
        .context("Kafka metadata task failed")?
        .context("fetching Kafka metadata")?;
        if let Some(missing) = names.iter().find(|n| !listed.iter().any(|l| l == *n)) {
            anyhow::bail!(
                "Kafka topic {missing} does not exist{}",
                if self.manage_topics {
                    ""
                } else {
                    " (KAFKA_MANAGE_TOPICS=false: create it before starting the apps)"
                }
            );
        }
        let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let resources: Vec<ResourceSpecifier<'_>> =
            names.iter().map(|n| ResourceSpecifier::Topic(n)).collect();
        let results = admin
            .describe_configs(resources.iter(), &opts)
            .await
            .context("describing Kafka topics")?;
        let limit = self.retention_ms();
        for (name, result) in names.iter().zip(results) {
            let resource = match result {
                Ok(resource) => resource,
                Err(RDKafkaErrorCode::UnknownTopicOrPartition) => anyhow::bail!(
                    "Kafka topic {name} does not exist{}",
                    if self.manage_topics {
                        ""
                    } else {
                        " (KAFKA_MANAGE_TOPICS=false: create it before starting the apps)"
                    }
                ),
                Err(code) => anyhow::bail!("describing Kafka topic {name}: {code}"),
            };
            let retention = resource
                .get("retention.ms")
                .and_then(|e| e.value.as_deref())
                .and_then(|v| v.parse::<i64>().ok());
            match retention {
                Some(ms) if (0..=limit).contains(&ms) => {}
                Some(ms) => anyhow::bail!(
                    "Kafka topic {name} keeps messages for {}, longer than \
                     KAFKA_TOPIC_RETENTION_HOURS ({} h): an event redelivered past the \
                     collector's dedupe horizon would be counted twice; lower the topic's \
                     retention.ms to at most {limit}",
                    if ms < 0 {
                        "ever".to_owned()
                    } else {
                        format!("{} h", ms / 3_600_000)
                    },
                    self.topic_retention_hours
                ),
                None => tracing::warn!(
                    topic = %name,
                    "the broker does not report this topic's retention.ms; make sure it is at most KAFKA_TOPIC_RETENTION_HOURS"
                ),
            }
        }
        Ok(())
    }
}

/// Readiness check: a broker answers a metadata request. Holds one long-lived client so a
/// probe does not start librdkafka's threads each time.
pub struct KafkaCheck {
    client: std::sync::Arc<BaseConsumer>,
}

impl KafkaCheck {
    pub fn new(settings: &KafkaSettings) -> anyhow::Result<Self> {
        let client: BaseConsumer = settings.base().create().context("creating Kafka client")?;
        Ok(Self {
            client: std::sync::Arc::new(client),
        })
    }

    /// Asks the cluster for its metadata: succeeds when at least one broker answers.
    pub async fn ping(&self, timeout: Duration) -> anyhow::Result<()> {
        let client = self.client.clone();
        // `fetch_metadata` blocks its thread; keep it off the async workers.
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let metadata = client
                .fetch_metadata(None, timeout)
                .context("fetching Kafka metadata")?;
            anyhow::ensure!(!metadata.brokers().is_empty(), "no Kafka broker answered");
            Ok(())
        })
        .await
        .context("Kafka ping task failed")?
    }
}

impl commerce_health::ReadinessCheck for KafkaCheck {
    fn name(&self) -> &'static str {
        "kafka"
    }
    fn check(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            self.ping(Duration::from_millis(1500))
                .await
                .map_err(|e| format!("{e:#}"))
        })
    }
}

/// A producer whose client errors are counted.
pub type Producer = FutureProducer<Observed>;

/// A client context that counts librdkafka's client errors (no broker reachable, a broker
/// down, authentication refused) in `kafka_client_errors_total{client}` and logs them.
#[derive(Debug, Clone, Copy)]
pub struct Observed(pub &'static str);

impl rdkafka::ClientContext for Observed {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        count_client_error(self.0, &error, reason);
    }
}

/// Counts and logs a client error of `client` (for consumers with a context of their own).
pub fn count_client_error(client: &'static str, error: &rdkafka::error::KafkaError, reason: &str) {
    metrics::counter!("kafka_client_errors_total", "client" => client).increment(1);
    tracing::warn!(client, %error, reason, "Kafka client error");
}

/// Registers `kafka_client_errors_total{client}` at zero for each of an app's Kafka clients.
pub fn register_error_metrics(clients: &[&'static str]) {
    commerce_telemetry::register_counter(
        "kafka_client_errors_total",
        "Errors librdkafka reported for a client (broker unreachable, all brokers down, authentication), by client.",
        &[("client", clients)],
    );
}

/// Headers carried by every event message: `event_id`, `event_type` and, when known, the W3C
/// `traceparent` of the request that caused the event, so a trace crosses the broker.
pub fn event_headers(
    event_id: &str,
    event_type: &str,
    traceparent: Option<&str>,
) -> rdkafka::message::OwnedHeaders {
    use rdkafka::message::{Header, OwnedHeaders};
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "event_id",
            value: Some(event_id),
        })
        .insert(Header {
            key: "event_type",
            value: Some(event_type),
        });
    match traceparent {
        Some(tp) => headers.insert(Header {
            key: "traceparent",
            value: Some(tp),
        }),
        None => headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn read(pairs: &[(&str, &str)], production: bool) -> Result<KafkaSettings, String> {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        KafkaSettings::read(&commerce_config::Reader::new(vars), production)
            .map_err(|e| e.var.to_string())
    }

    #[test]
    fn production_topics_survive_a_lost_broker_and_dev_topics_fit_one() {
        let prod = read(&[], true).unwrap();
        assert_eq!((prod.replication_factor, prod.min_insync_replicas), (3, 2));
        let dev = read(&[], false).unwrap();
        assert_eq!((dev.replication_factor, dev.min_insync_replicas), (1, 1));
        let set = read(
            &[
                ("KAFKA_REPLICATION_FACTOR", "5"),
                ("KAFKA_MIN_INSYNC_REPLICAS", "3"),
            ],
            true,
        )
        .unwrap();
        assert_eq!((set.replication_factor, set.min_insync_replicas), (5, 3));
        assert_eq!(
            read(&[("KAFKA_REPLICATION_FACTOR", "1")], true).unwrap_err(),
            "KAFKA_MIN_INSYNC_REPLICAS",
            "2 in sync of 1 replica could never be acknowledged"
        );
        assert_eq!(
            read(&[("KAFKA_REPLICATION_FACTOR", "0")], false).unwrap_err(),
            "KAFKA_REPLICATION_FACTOR"
        );
    }

    #[test]
    fn producers_wait_for_every_in_sync_replica_and_never_duplicate() {
        let c = KafkaSettings::new("127.0.0.1:9092").producer_config();
        assert_eq!(c.get("acks"), Some("all"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
    }

    #[test]
    fn tls_and_sasl_settings_reach_every_client_and_this_build_supports_them() {
        let settings = read_ok(&[
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("KAFKA_SASL_USERNAME", "commerce"),
            ("KAFKA_SASL_PASSWORD", "hunter2-kafka"),
            ("KAFKA_SSL_ENDPOINT_IDENTIFICATION_ALGORITHM", "https"),
        ]);
        let producer = settings.producer_config();
        assert_eq!(producer.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(producer.get("sasl.password"), Some("hunter2-kafka"));
        let consumer = settings.consumer_config("g");
        assert_eq!(consumer.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        // librdkafka refuses SSL and SCRAM at client creation when built without OpenSSL.
        let _: FutureProducer = producer
            .create()
            .expect("this build speaks SASL_SSL with SCRAM");
        let _: BaseConsumer = consumer
            .create()
            .expect("this build speaks SASL_SSL with SCRAM");
        assert!(!format!("{settings:?}").contains("hunter2"), "{settings:?}");
    }

    #[test]
    fn unusable_security_settings_are_refused_at_start() {
        assert_eq!(
            read(&[("KAFKA_SECURITY_PROTOCOL", "TLS")], true).unwrap_err(),
            "KAFKA_SECURITY_PROTOCOL"
        );
        assert_eq!(
            read(
                &[
                    ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
                    ("KAFKA_SASL_MECHANISM", "PLAIN"),
                    ("KAFKA_SASL_USERNAME", "u")
                ],
                true
            )
            .unwrap_err(),
            "KAFKA_SASL_PASSWORD"
        );
        assert_eq!(
            read(&[("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")], true).unwrap_err(),
            "KAFKA_SASL_MECHANISM",
            "GSSAPI, librdkafka's default, is not built in"
        );
    }

    #[test]
    fn any_librdkafka_property_passes_through_to_every_client_with_secrets_redacted() {
        let file = std::env::temp_dir().join(format!("kafka-{}.properties", std::process::id()));
        std::fs::write(
            &file,
            "# managed cluster\nlinger.ms = 20\nclient.id=from-file\n\nsasl.oauthbearer.method=oidc\n",
        )
        .unwrap();
        let settings = read_ok(&[
            ("KAFKA_PROPERTIES_FILE", file.to_str().unwrap()),
            ("KAFKA_PROPERTY_CLIENT_ID", "commerce-api-7"),
            ("KAFKA_PROPERTY_CLIENT_RACK", "use1-az1"),
            (
                "KAFKA_PROPERTY_SASL_OAUTHBEARER_CLIENT_SECRET",
                "oidc-s3cret-value",
            ),
            (
                "KAFKA_PROPERTY_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL",
                "https://idp/token",
            ),
        ]);
        std::fs::remove_file(&file).unwrap();
        for config in [settings.producer_config(), settings.consumer_config("g")] {
            assert_eq!(
                config.get("client.id"),
                Some("commerce-api-7"),
                "the variable wins"
            );
            assert_eq!(config.get("client.rack"), Some("use1-az1"));
            assert_eq!(config.get("sasl.oauthbearer.method"), Some("oidc"));
            assert_eq!(
                config.get("sasl.oauthbearer.client.secret"),
                Some("oidc-s3cret-value")
            );
        }
        assert_eq!(
            settings.producer_config().get("linger.ms"),
            Some("20"),
            "over the producer's own default"
        );
        let shown = format!("{settings:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("client.rack=use1-az1"), "{shown}");
        assert_eq!(
            property_of_variable("KAFKA_PROPERTY_SSL_ENGINE__ID").as_deref(),
            Some("ssl.engine_id")
        );
    }

    #[test]
    fn the_passthrough_cannot_undo_the_delivery_guarantees() {
        for (variable, owner) in [
            (
                "KAFKA_PROPERTY_ENABLE_IDEMPOTENCE",
                "KAFKA_PROPERTY_ENABLE_IDEMPOTENCE",
            ),
            (
                "KAFKA_PROPERTY_ENABLE_AUTO_OFFSET_STORE",
                "KAFKA_PROPERTY_ENABLE_AUTO_OFFSET_STORE",
            ),
            ("KAFKA_PROPERTY_ACKS", "KAFKA_PROPERTY_ACKS"),
            (
                "KAFKA_PROPERTY_SASL_PASSWORD",
                "KAFKA_PROPERTY_SASL_PASSWORD",
            ),
        ] {
            assert_eq!(read(&[(variable, "x")], false).unwrap_err(), owner);
        }
    }

    #[test]
    fn production_groups_rebalance_cooperatively_with_static_members() {
        let prod = read(&[("POD_NAME", "commerce-collector-0")], true).unwrap();
        let c = prod.consumer_config("g");
        assert_eq!(
            c.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(c.get("group.instance.id"), Some("commerce-collector-0"));
        assert_eq!(c.get("session.timeout.ms"), Some("45000"));
        let dev = read(&[("POD_NAME", "x")], false)
            .unwrap()
            .consumer_config("g");
        assert_eq!(dev.get("partition.assignment.strategy"), None);
        assert_eq!(dev.get("group.instance.id"), None);
        assert_eq!(dev.get("session.timeout.ms"), Some("6000"));
        let _: BaseConsumer = c
            .create()
            .expect("librdkafka accepts the production group settings");
    }

    fn read_ok(pairs: &[(&str, &str)]) -> KafkaSettings {
        read(pairs, false).unwrap()
    }
}
