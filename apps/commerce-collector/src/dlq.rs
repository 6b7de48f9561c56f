//! Dead letters: messages the collector does not apply, kept in each source topic's dead-letter
//! topic (`<topic>.dlq`), and replayed from there once their cause is fixed.
//!
//! A dead letter is the original message (key, payload and headers) plus headers saying why:
//! `dlq_reason` (a stable label: `empty`, `invalid_envelope`, `invalid_event_id`,
//! `past_horizon`, `database`), `dlq_error` (the description), and `dlq_source_topic`,
//! `dlq_source_partition`, `dlq_source_offset`. A replay re-publishes it to its source topic;
//! the dedupe log makes a replay of an event that was applied meanwhile, or a second replay,
//! change nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use commerce_events::EventType;

use crate::config::Config;

commerce_enums::text_enum! {
    /// Why a message went to a dead-letter topic (its `dlq_reason` header, the `reason` label of
    /// `collector_poison_messages_total`).
    pub enum Reason {
        /// No payload.
        Empty => "empty",
        /// Not an event envelope, or figures that do not fit.
        InvalidEnvelope => "invalid_envelope",
        /// An event id that is not a time-ordered UUID, or from the future.
        InvalidEventId => "invalid_event_id",
        /// Older than the dedupe horizon: it could be counted twice.
        PastHorizon => "past_horizon",
        /// The database refused it, on its own, after retries.
        Database => "database",
    }
}

/// Registers `collector_poison_messages_total` at zero for every reason.
pub fn describe() {
    metrics::describe_counter!(
        "collector_poison_messages_total",
        "Messages sent to a dead-letter topic, by reason."
    );
    for reason in Reason::TEXTS {
        metrics::counter!("collector_poison_messages_total", "reason" => *reason).increment(0);
    }
}

/// Writes `m` to its source topic's dead-letter topic, with why.
pub async fn send(
    config: &Config,
    producer: &commerce_kafka::Producer,
    m: &OwnedMessage,
    reason: Reason,
    detail: &str,
) -> anyhow::Result<()> {
    let topic = format!("{}{}", m.topic(), config.dlq_suffix);
    let partition = m.partition().to_string();
    let offset = m.offset().to_string();
    let mut headers = OwnedHeaders::new();
    for (key, value) in [
        ("dlq_reason", reason.as_str()),
        ("dlq_error", detail),
        ("dlq_source_topic", m.topic()),
        ("dlq_source_partition", partition.as_str()),
        ("dlq_source_offset", offset.as_str()),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    headers = copy_headers(m, headers);
    let mut record = FutureRecord::to(&topic).headers(headers);
    if let Some(key) = m.key() {
        record = record.key(key);
    }
    if let Some(payload) = m.payload() {
        record = record.payload(payload);
    }
    producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("writing to {topic}: {e}"))?;
    metrics::counter!("collector_poison_messages_total", "reason" => reason.as_str()).increment(1);
    tracing::warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), reason = reason.as_str(), error = %detail, "message sent to the dead-letter topic");
    Ok(())
}

/// The message's own headers (trace context and the like), without an earlier dead-lettering's.
fn copy_headers(m: &OwnedMessage, mut headers: OwnedHeaders) -> OwnedHeaders {
    if let Some(original) = m.headers() {
        for h in original.iter().filter(|h| !h.key.starts_with("dlq_")) {
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    headers
}

/// Which dead letters a replay re-publishes. Empty filters match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Event types, as in the envelope's `event_type`.
    pub event_types: Vec<EventType>,
    pub reasons: Vec<Reason>,
    /// Dead-lettered at or after.
    pub since: Option<DateTime<Utc>>,
    /// Dead-lettered before.
    pub until: Option<DateTime<Utc>>,
}

impl Filter {
    fn matches(&self, m: &OwnedMessage) -> bool {
        let at = m
            .timestamp()
            .to_millis()
            .and_then(DateTime::from_timestamp_millis);
        let in_time = match at {
            Some(at) => {
                self.since.is_none_or(|since| at >= since)
                    && self.until.is_none_or(|until| at < until)
            }
            None => self.since.is_none() && self.until.is_none(),
        };
        let reason = header(m, "dlq_reason").and_then(|r| r.parse::<Reason>().ok());
        let event_type = m
            .payload()
            .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
            .and_then(|v| v["event_type"].as_str()?.parse::<EventType>().ok());
        in_time
            && (self.reasons.is_empty() || reason.is_some_and(|r| self.reasons.contains(&r)))
            && (self.event_types.is_empty()
                || event_type.is_some_and(|t| self.event_types.contains(&t)))
    }
}

/// A message header's value as text.
pub(crate) fn header<'a>(m: &'a OwnedMessage, key: &str) -> Option<&'a str> {
    m.headers()?
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| std::str::from_utf8(h.value?).ok())
}

/// What a replay did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Replayed {
    /// Dead letters read.
    pub read: u64,
    /// Re-published to their source topic.
    pub replayed: u64,
}

/// Re-publishes the dead letters that match `filter` to their source topics: every dead letter
/// present when the replay starts (those written meanwhile wait for the next replay).
/// `progress(done, total)` follows the reading.
pub async fn replay(
    config: &Config,
    filter: &Filter,
    mut progress: impl FnMut(u64, u64),
) -> anyhow::Result<Replayed> {
    let consumer: StreamConsumer = config
        .kafka
        .consumer_config(&format!("{}-dlq-replay", config.group_id))
        .set("enable.auto.commit", "false")
        .create()
        .context("creating the dead-letter reader")?;
    let producer = config.kafka.producer("dead_letter_replay")?;
    let timeout = Duration::from_secs(10);
    // Where each partition ends now: the replay reads up to there.
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut assignment = TopicPartitionList::new();
    let mut total = 0u64;
    for base in [&config.catalog_topic, &config.order_topic] {
        let topic = format!("{base}{}", config.dlq_suffix);
        let metadata = consumer
            .fetch_metadata(Some(&topic), timeout)
            .with_context(|| format!("reading the metadata of {topic}"))?;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (low, high) = consumer
                .fetch_watermarks(&topic, partition.id(), timeout)
                .with_context(|| format!("reading the offsets of {topic}"))?;
            if high > low {
                assignment.add_partition_offset(&topic, partition.id(), Offset::Offset(low))?;
                ends.insert((topic.clone(), partition.id()), high);
                total += (high - low) as u64;
            }
        }
    }
    let mut done = Replayed::default();
    progress(0, total);
    if ends.is_empty() {
        return Ok(done);
    }
    consumer.assign(&assignment)?;
    while !ends.is_empty() {
        let m = tokio::time::timeout(timeout, consumer.recv())
            .await
            .context("the dead-letter topic stopped answering")??
            .detach();
        let key = (m.topic().to_owned(), m.partition());
        let Some(&end) = ends.get(&key) else {
            continue;
        };
        if m.offset() >= end {
            ends.remove(&key);
            continue;
        }
        done.read += 1;
        if filter.matches(&m) {
            let source = header(&m, "dlq_source_topic")
                .map(str::to_owned)
                .or_else(|| {
                    m.topic()
                        .strip_suffix(config.dlq_suffix.as_str())
                        .map(str::to_owned)
                })
                .context("a dead letter without a source topic")?;
            let mut record =
                FutureRecord::to(&source).headers(copy_headers(&m, OwnedHeaders::new()));
            if let Some(key) = m.key() {
                record = record.key(key);
            }
            if let Some(payload) = m.payload() {
                record = record.payload(payload);
            }
            producer
                .send(record, timeout)
                .await
                .map_err(|(e, _)| anyhow::anyhow!("re-publishing to {source}: {e}"))?;
            done.replayed += 1;
        }
        progress(done.read, total);
        if m.offset() + 1 >= end {
            ends.remove(&key);
        }
    }
    Ok(done)
}
