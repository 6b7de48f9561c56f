//! The consumer: batches of up to `COLLECTOR_BATCH_SIZE` (100) events from Kafka, each applied in
//! one database transaction, offsets stored only after it commits.
//!
//! Rules kept here:
//! - **Offsets follow the database.** A batch's offsets are stored (and auto-committed by
//!   librdkafka within a second, and synchronously on shutdown) only after its transaction
//!   committed. A crash anywhere before that redelivers the batch, which `event_handled` absorbs.
//! - **A failing database never skips events:** the same batch is retried with backoff until it
//!   commits or the collector stops.
//! - **Poison messages** (not JSON, unknown `event_type`, invalid payload) go to the source
//!   topic's dead-letter topic with headers naming the error, partition and offset, are counted
//!   and logged, and do not hold back the good events of their batch or their partition.
//! - **Batches in flight:** up to `COLLECTOR_MAX_IN_FLIGHT` batches are applied at once, on
//!   separate connections (one database backend per batch is the bottleneck otherwise), but
//!   offsets are stored strictly in batch order, so a crash never leaves a stored offset ahead
//!   of an uncommitted batch. Concurrent batches touching one product serialise on its row;
//!   every statement locks rows in key order, so they cannot deadlock.
//! - **Rebalances:** a batch in flight when its partition is revoked still commits, but its
//!   offsets can no longer be stored; the partition's new owner redelivers those events and
//!   `event_handled` (shared by the group, written in the same transaction) skips them, even
//!   when both members apply them at the same moment (the second insert waits for the first's
//!   commit and then conflicts).
//! - **Broker outages:** librdkafka reconnects by itself; if the consumer keeps failing, it is
//!   dropped and recreated (topics are re-created first, in case the broker lost them).
//! - **Supervision:** a batch task that panics is not taken for a shutdown: the consumer is
//!   dropped (its batch's offsets unstored, so the batch is redelivered) and recreated with
//!   backoff. While the consumer is not running, readiness reports `consumer` DOWN.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::ranking::live::Live;
use commerce_db::Pool;
use commerce_events::Envelope;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;

/// Whether the consumer is running, for readiness. Cheap to clone.
#[derive(Clone, Default)]
pub struct Health(Arc<AtomicBool>);

impl Health {
    fn set(&self, up: bool) {
        self.0.store(up, Ordering::Relaxed);
    }
}

impl commerce_web::health::ReadinessCheck for Health {
    fn name(&self) -> &'static str {
        "consumer"
    }
    fn check(&self) -> futures::future::BoxFuture<'_, Result<(), String>> {
        let up = self.0.load(Ordering::Relaxed);
        Box::pin(async move {
            if up {
                Ok(())
            } else {
                Err(
                    "the Kafka consumer is not running (starting, or recreating after a failure)"
                        .into(),
                )
            }
        })
    }
}

/// How a batch task ended: committed, or stopped by shutdown before it committed. A task
/// that panicked is an error: the consumer must be recreated, not stopped.
fn outcome(joined: Result<bool, tokio::task::JoinError>) -> anyhow::Result<bool> {
    joined.map_err(|e| anyhow::anyhow!("a batch task failed: {e}"))
}

/// Logs and counts rebalances.
struct RebalanceLogger;

impl ClientContext for RebalanceLogger {}

impl ConsumerContext for RebalanceLogger {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(partitions = tpl.count(), "partitions revoked");
            metrics::counter!("collector_rebalances_total", "kind" => "revoke").increment(1);
        }
    }
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(partitions = tpl.count(), "partitions assigned");
                metrics::counter!("collector_rebalances_total", "kind" => "assign").increment(1);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

fn describe_metrics() {
    metrics::describe_counter!(
        "collector_events_applied_total",
        "Events applied for the first time, by type."
    );
    metrics::describe_counter!(
        "collector_events_duplicate_total",
        "Redelivered events skipped through event_handled."
    );
    metrics::describe_counter!(
        "collector_poison_messages_total",
        "Messages sent to a dead-letter topic, by reason."
    );
    metrics::describe_counter!("collector_batches_total", "Batches committed.");
    metrics::describe_counter!(
        "collector_batch_failures_total",
        "Batch transactions that failed and were retried."
    );
    metrics::describe_histogram!("collector_batch_size", "Messages per batch.");
    metrics::describe_histogram!(
        "collector_batch_duration_seconds",
        metrics::Unit::Seconds,
        "Time to apply one batch (transaction and Redis refresh)."
    );
    metrics::describe_counter!(
        "collector_consumer_restarts_total",
        "Times the Kafka consumer was recreated."
    );
}

/// Runs the consumer until `shutdown` turns true, recreating it after persistent failures.
pub async fn run(
    config: Config,
    pool: Pool,
    live: Live,
    health: Health,
    mut shutdown: watch::Receiver<bool>,
) {
    describe_metrics();
    let mut delay = Duration::from_millis(500);
    while !*shutdown.borrow() {
        let result = consume(&config, &pool, &live, &health, &mut shutdown).await;
        health.set(false);
        match result {
            Ok(()) => break,
            Err(e) => {
                metrics::counter!("collector_consumer_restarts_total").increment(1);
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "consumer failed; recreating it");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
    tracing::info!("consumer stopped");
}

fn topics(config: &Config) -> Vec<(String, i32)> {
    let mut t = Vec::new();
    for base in [&config.catalog_topic, &config.order_topic] {
        t.push((base.clone(), config.topic_partitions));
        t.push((format!("{base}{}", config.dlq_suffix), 1));
    }
    t
}

/// How often finished batches are looked for while no message arrives.
const STORE_CHECK: Duration = Duration::from_millis(20);

async fn consume(
    config: &Config,
    pool: &Pool,
    live: &Live,
    health: &Health,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let wanted = topics(config);
    let refs: Vec<(&str, i32)> = wanted.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    config.kafka.ensure_topics(&refs).await?;
    let consumer: StreamConsumer<RebalanceLogger> = config
        .kafka
        .consumer_config(&config.group_id)
        .create_with_context(RebalanceLogger)?;
    consumer.subscribe(&[&config.catalog_topic, &config.order_topic])?;
    let dlq: FutureProducer = config.kafka.producer()?;
    tracing::info!(group = %config.group_id, "consumer subscribed");
    health.set(true);

    let wait = Duration::from_millis(config.batch_wait_ms);
    let mut consecutive_errors = 0;
    // Batches being applied, oldest first, each with the offsets it completes. Several may be in
    // flight (on separate connections), but offsets are stored strictly in batch order: a
    // batch's offsets only once it *and every batch before it* committed.
    let mut in_flight: VecDeque<(JoinHandle<bool>, TopicPartitionList)> = VecDeque::new();
    loop {
        while in_flight.front().is_some_and(|(h, _)| h.is_finished())
            || in_flight.len() >= config.max_in_flight
        {
            let (handle, offsets) = in_flight.pop_front().expect("checked non-empty");
            if !outcome(handle.await)? {
                // Stopped before it committed: leave its offsets (and later ones) unstored.
                return Ok(());
            }
            store(&consumer, &offsets);
        }
        let first = tokio::select! {
            m = consumer.recv() => m,
            // A finished batch's offsets are stored without waiting for the next message: an idle
            // consumer still commits everything it applied (the loop's head stores them).
            () = tokio::time::sleep(STORE_CHECK), if !in_flight.is_empty() => continue,
            _ = shutdown.changed() => {
                // Let the batches in flight finish (or stop), storing what committed in order,
                // then commit synchronously before leaving the group (a short blocking call,
                // acceptable once at shutdown).
                while let Some((handle, offsets)) = in_flight.pop_front() {
                    if !matches!(outcome(handle.await), Ok(true)) {
                        break;
                    }
                    store(&consumer, &offsets);
                }
                let _ = consumer.commit_consumer_state(CommitMode::Sync);
                return Ok(());
            }
        };
        let first = match first {
            Ok(m) => m.detach(),
            Err(e) => {
                consecutive_errors += 1;
                tracing::warn!(error = %e, "consume error");
                anyhow::ensure!(consecutive_errors < 20, "the consumer keeps failing: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        consecutive_errors = 0;
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + wait;
        while batch.len() < config.batch_size {
            match tokio::time::timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(m)) => batch.push(m.detach()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "consume error while filling a batch");
                    break;
                }
                Err(_) => break,
            }
        }
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for m in &batch {
            let e = next
                .entry((m.topic().to_owned(), m.partition()))
                .or_insert(0);
            *e = (*e).max(m.offset() + 1);
        }
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in next {
            offsets.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
        }
        let (config, pool, live, dlq, mut stop) = (
            config.clone(),
            pool.clone(),
            live.clone(),
            dlq.clone(),
            shutdown.clone(),
        );
        let handle =
            tokio::spawn(
                async move { process(&config, &pool, &live, &dlq, &batch, &mut stop).await },
            );
        in_flight.push_back((handle, offsets));
    }
}

fn store(consumer: &StreamConsumer<RebalanceLogger>, offsets: &TopicPartitionList) {
    if let Err(e) = consumer.store_offsets(offsets) {
        // A partition revoked meanwhile: its new owner redelivers, event_handled absorbs it.
        tracing::debug!(error = %e, "could not store offsets");
    }
}

/// Applies one batch, retrying until it commits. Returns false if stopped first.
async fn process(
    config: &Config,
    pool: &Pool,
    live: &Live,
    dlq: &FutureProducer,
    batch: &[OwnedMessage],
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    let started = std::time::Instant::now();
    let mut good = Vec::with_capacity(batch.len());
    let mut poison = Vec::new();
    for m in batch {
        match parse(m) {
            Ok(e) => good.push(e),
            Err(reason) => poison.push((m, reason)),
        }
    }
    let mut delay = Duration::from_millis(200);
    loop {
        match apply(config, pool, live, dlq, &good, &poison).await {
            Ok(()) => break,
            Err(e) => {
                metrics::counter!("collector_batch_failures_total").increment(1);
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "applying a batch failed; retrying it");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return false,
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
    metrics::counter!("collector_batches_total").increment(1);
    metrics::histogram!("collector_batch_size").record(batch.len() as f64);
    metrics::histogram!("collector_batch_duration_seconds").record(started.elapsed().as_secs_f64());
    true
}

/// Reasons a message is poison.
fn parse(m: &OwnedMessage) -> Result<Envelope, String> {
    let payload = m.payload().ok_or_else(|| "empty message".to_owned())?;
    serde_json::from_slice::<Envelope>(payload)
        .map_err(|e| format!("not a valid event envelope: {e}"))
}

async fn apply(
    config: &Config,
    pool: &Pool,
    live: &Live,
    dlq: &FutureProducer,
    good: &[Envelope],
    poison: &[(&OwnedMessage, String)],
) -> anyhow::Result<()> {
    // Dead letters first: if they cannot be written, the batch is retried as a whole (good
    // events that were applied meanwhile are skipped through event_handled).
    for (m, reason) in poison {
        send_to_dlq(config, dlq, m, reason).await?;
    }
    if good.is_empty() {
        return Ok(());
    }
    let mut conn = pool.get().await?;
    let applied =
        crate::apply::apply_batch(&mut conn, &config.group_id, good, config.time_zone).await?;
    // After the commit, off the batch's path: the live rankings re-read these products.
    live.mark(&applied.touched);
    Ok(())
}

async fn send_to_dlq(
    config: &Config,
    dlq: &FutureProducer,
    m: &OwnedMessage,
    reason: &str,
) -> anyhow::Result<()> {
    let topic = format!("{}{}", m.topic(), config.dlq_suffix);
    let partition = m.partition().to_string();
    let offset = m.offset().to_string();
    let mut headers = OwnedHeaders::new()
        .insert(Header {
            key: "dlq_error",
            value: Some(reason),
        })
        .insert(Header {
            key: "dlq_source_topic",
            value: Some(m.topic()),
        })
        .insert(Header {
            key: "dlq_source_partition",
            value: Some(partition.as_str()),
        })
        .insert(Header {
            key: "dlq_source_offset",
            value: Some(offset.as_str()),
        });
    if let Some(original) = m.headers() {
        for h in original.iter() {
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let mut record = FutureRecord::to(&topic).headers(headers);
    if let Some(key) = m.key() {
        record = record.key(key);
    }
    if let Some(payload) = m.payload() {
        record = record.payload(payload);
    }
    dlq.send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("writing to {topic}: {e}"))?;
    let reason_label = if reason.starts_with("empty") {
        "empty"
    } else {
        "invalid_envelope"
    };
    metrics::counter!("collector_poison_messages_total", "reason" => reason_label).increment(1);
    tracing::warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), %reason, "poison message sent to the dead-letter topic");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicked_batch_is_a_failure_not_a_stop() {
        let panicked = tokio::spawn(async { panic!("a bug in a batch") }).await;
        let err = outcome(panicked.map(|()| true)).unwrap_err();
        assert!(format!("{err}").contains("panicked"), "{err}");
        assert!(outcome(Ok(true)).unwrap());
        assert!(!outcome(Ok(false)).unwrap());
    }

    #[tokio::test]
    async fn readiness_names_the_consumer_until_it_runs() {
        use commerce_web::health::ReadinessCheck;
        let health = Health::default();
        assert!(health.check().await.is_err(), "down until subscribed");
        health.set(true);
        assert!(health.check().await.is_ok());
        health.set(false);
        assert!(health.check().await.is_err(), "down again while recreated");
    }
}
