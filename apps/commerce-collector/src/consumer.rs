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
use std::time::{Duration, Instant};

use crate::ranking::live::Live;
use commerce_db::Pool;
use commerce_events::Envelope;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::Config;
use crate::dedupe::Horizon;
use crate::dlq::Reason;

/// Whether the consumer is running and its batches commit, for readiness. Cheap to clone.
#[derive(Clone, Default)]
pub struct Health(Arc<HealthState>);

#[derive(Default)]
struct HealthState {
    running: AtomicBool,
    /// Set while a batch is being retried because the database is unavailable.
    stalled: std::sync::Mutex<Option<String>>,
}

impl Health {
    fn set(&self, up: bool) {
        self.0.running.store(up, Ordering::Relaxed);
    }

    fn stalled(&self, error: Option<String>) {
        *self.0.stalled.lock().expect("not poisoned") = error;
    }
}

impl commerce_web::health::ReadinessCheck for Health {
    fn name(&self) -> &'static str {
        "consumer"
    }
    fn check(&self) -> futures::future::BoxFuture<'_, Result<(), String>> {
        let up = self.0.running.load(Ordering::Relaxed);
        let stalled = self.0.stalled.lock().expect("not poisoned").clone();
        Box::pin(async move {
            if !up {
                Err(
                    "the Kafka consumer is not running (starting, or recreating after a failure)"
                        .into(),
                )
            } else if let Some(error) = stalled {
                Err(format!(
                    "batches cannot commit, the database is unavailable: {error}"
                ))
            } else {
                Ok(())
            }
        })
    }
}

/// How a batch task ended: committed, or stopped by shutdown before it committed. A task
/// that panicked is an error: the consumer must be recreated, not stopped.
fn outcome(joined: Result<bool, tokio::task::JoinError>) -> anyhow::Result<bool> {
    joined.map_err(|e| anyhow::anyhow!("a batch task failed: {e}"))
}

/// Logs and counts rebalances, and exports the consumer's lag from librdkafka's statistics.
struct RebalanceLogger;

/// How often librdkafka reports its statistics (the lag gauges' resolution).
const STATISTICS_INTERVAL_MS: &str = "1000";

impl ClientContext for RebalanceLogger {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        commerce_kafka::count_client_error("consumer", &error, reason);
    }

    /// `collector_consumer_lag{topic,partition}`: messages in a partition this instance consumes
    /// that are not yet applied (the high watermark less the offset stored after the database
    /// commit, or less the committed offset, or the whole partition when the group has none).
    /// Partitions this instance does not consume read 0, so the owner's figure is the maximum
    /// across instances and a revoked partition never leaves a frozen value behind.
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, t) in &statistics.topics {
            for (partition, p) in &t.partitions {
                if *partition < 0 {
                    continue;
                }
                let consumed_to = p.stored_offset.max(p.committed_offset);
                let lag = match (p.fetch_state.as_str(), p.hi_offset) {
                    ("active", hi) if hi >= 0 && consumed_to >= 0 => (hi - consumed_to).max(0),
                    ("active", hi) if hi >= 0 && p.lo_offset >= 0 => (hi - p.lo_offset).max(0),
                    ("active", _) => continue,
                    _ => 0,
                };
                metrics::gauge!(
                    "collector_consumer_lag",
                    "topic" => topic.clone(),
                    "partition" => partition.to_string()
                )
                .set(lag as f64);
            }
        }
    }
}

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
    metrics::describe_gauge!(
        "collector_consumer_lag",
        "Messages of a consumed partition not yet applied, by topic and partition."
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
    crate::dlq::describe();
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

/// How often a full read-ahead is looked at again (to pause fetching when a batch is slow).
const STORE_CHECK: Duration = Duration::from_millis(20);

/// Batches of messages taken ahead while every batch slot is busy.
const READ_AHEAD: usize = 10;

/// What woke the consumer loop.
enum Wake {
    Message(rdkafka::error::KafkaResult<OwnedMessage>),
    /// The oldest batch in flight ended (committed, stopped, or panicked).
    Finished(Result<bool, tokio::task::JoinError>),
    Stop,
    Tick,
}

/// Everything a batch task needs, shared by every batch of one consumer.
struct Batcher {
    config: Config,
    pool: Pool,
    live: Live,
    dlq: commerce_kafka::Producer,
    health: Health,
    horizon: Horizon,
}

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
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
        .create_with_context(RebalanceLogger)?;
    consumer.subscribe(&[&config.catalog_topic, &config.order_topic])?;
    let batcher = Arc::new(Batcher {
        config: config.clone(),
        pool: pool.clone(),
        live: live.clone(),
        dlq: config.kafka.producer("dead_letters")?,
        health: health.clone(),
        horizon: Horizon::hours(config.event_handled_retention_hours),
    });
    tracing::info!(group = %config.group_id, "consumer subscribed");
    health.set(true);

    let wait = Duration::from_millis(config.batch_wait_ms);
    let mut consecutive_errors = 0;
    // Batches being applied, oldest first, each with the offsets it completes. Several may be in
    // flight (on separate connections), but offsets are stored strictly in batch order: a
    // batch's offsets only once it *and every batch before it* committed.
    let mut in_flight: VecDeque<(JoinHandle<bool>, TopicPartitionList, Instant)> = VecDeque::new();
    // Messages received while every batch slot was taken: the next batches.
    let mut carried: VecDeque<OwnedMessage> = VecDeque::new();
    let read_ahead = READ_AHEAD * config.batch_size;
    // A batch in flight this long while the read-ahead is full pauses fetching, so the loop can
    // keep polling (a member that stops polling for `max.poll.interval.ms` is evicted from the
    // group) without piling messages up.
    let pause_after = Duration::from_millis(u64::from(config.kafka.max_poll_interval_ms) / 4);
    let mut paused = false;
    loop {
        let full = in_flight.len() >= config.max_in_flight;
        let oldest_age = in_flight.front().map(|(_, _, at)| at.elapsed());
        if !paused
            && full
            && carried.len() >= read_ahead
            && oldest_age.is_some_and(|age| age >= pause_after)
        {
            set_paused(&consumer, true)?;
            paused = true;
        } else if paused && carried.len() < read_ahead {
            set_paused(&consumer, false)?;
            paused = false;
        }
        // Take more messages unless the read-ahead is full; once paused, keep polling anyway.
        let receive = carried.len() < read_ahead || paused;
        let wake = if full || carried.is_empty() {
            let oldest = async {
                match in_flight.front_mut() {
                    Some((handle, _, _)) => handle.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                m = consumer.recv(), if receive => Wake::Message(m.map(|m| m.detach())),
                // A finished batch's offsets are stored at once, without waiting for the next
                // message: an idle consumer still commits everything it applied.
                done = oldest => Wake::Finished(done),
                () = tokio::time::sleep(STORE_CHECK), if !receive => Wake::Tick,
                _ = shutdown.changed() => Wake::Stop,
            }
        } else {
            Wake::Tick
        };
        match wake {
            Wake::Message(Ok(m)) => {
                consecutive_errors = 0;
                carried.push_back(m);
            }
            Wake::Message(Err(e)) => {
                consecutive_errors += 1;
                tracing::warn!(error = %e, "consume error");
                anyhow::ensure!(consecutive_errors < 20, "the consumer keeps failing: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            Wake::Finished(done) => {
                let (_, offsets, _) = in_flight.pop_front().expect("the oldest batch finished");
                if !outcome(done)? {
                    // Stopped before it committed: leave its offsets (and later ones) unstored.
                    return Ok(());
                }
                store(&consumer, &offsets);
                continue;
            }
            Wake::Stop => {
                // Let the batches in flight finish (or stop), storing what committed in order,
                // then commit synchronously before leaving the group (a short blocking call,
                // acceptable once at shutdown).
                while let Some((handle, offsets, _)) = in_flight.pop_front() {
                    if !matches!(outcome(handle.await), Ok(true)) {
                        break;
                    }
                    store(&consumer, &offsets);
                }
                let _ = consumer.commit_consumer_state(CommitMode::Sync);
                return Ok(());
            }
            Wake::Tick => {}
        }
        if full || carried.is_empty() {
            continue;
        }
        let mut batch: Vec<OwnedMessage> = carried
            .drain(..carried.len().min(config.batch_size))
            .collect();
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
        let offsets = next_offsets(&batch)?;
        let (batcher, mut stop) = (batcher.clone(), shutdown.clone());
        let span = batch_span(&batch);
        let handle =
            tokio::spawn(async move { batcher.process(&batch, &mut stop).await }.instrument(span));
        in_flight.push_back((handle, offsets, Instant::now()));
    }
}

/// The offsets a batch completes: one past its last message, per partition.
fn next_offsets(batch: &[OwnedMessage]) -> anyhow::Result<TopicPartitionList> {
    let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
    for m in batch {
        let e = next.entry((m.topic(), m.partition())).or_insert(0);
        *e = (*e).max(m.offset() + 1);
    }
    let mut offsets = TopicPartitionList::new();
    for ((topic, partition), offset) in next {
        offsets.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    Ok(offsets)
}

/// Pauses or resumes fetching for every assigned partition.
fn set_paused(consumer: &StreamConsumer<RebalanceLogger>, pause: bool) -> anyhow::Result<()> {
    let assignment = consumer.assignment()?;
    if pause {
        consumer.pause(&assignment)?;
    } else {
        consumer.resume(&assignment)?;
    }
    Ok(())
}

fn store(consumer: &StreamConsumer<RebalanceLogger>, offsets: &TopicPartitionList) {
    if let Err(e) = consumer.store_offsets(offsets) {
        // A partition revoked meanwhile: its new owner redelivers, event_handled absorbs it.
        tracing::debug!(error = %e, "could not store offsets");
    }
}

/// How many times a batch that fails for a data reason is retried before its events are tried
/// one by one, and each of those before it is dead-lettered.
const DATA_RETRIES: u32 = 3;

/// Why a batch did not commit.
enum Failure {
    /// The database cannot be reached or cannot work now (connection refused or lost, pool
    /// timeout, failover, serialization, deadlock, statement or lock timeout, resources): retried
    /// until it can, never dead-lettered.
    Unavailable(anyhow::Error),
    /// The database refused the data (an overflow, a value it cannot store, a constraint).
    Refused(String),
}

/// Tells an outage from a refusal. Only an error the server raised while running the statement
/// on a live connection can be the data's fault, and not even all of those.
fn classify(e: anyhow::Error) -> Failure {
    use diesel::result::{DatabaseErrorKind as Kind, Error};
    let Some(Error::DatabaseError(kind, info)) = e.downcast_ref::<Error>() else {
        return Failure::Unavailable(e);
    };
    // Conditions of the server, not of the data (PostgreSQL's own messages).
    const TRANSIENT: [&str; 9] = [
        "deadlock detected",
        "canceling statement",
        "could not serialize",
        "terminating connection",
        "the database system is",
        "out of memory",
        "could not extend file",
        "no space left",
        "too many connections",
    ];
    let message = info.message().to_owned();
    let transient = matches!(
        kind,
        Kind::ClosedConnection
            | Kind::UnableToSendCommand
            | Kind::SerializationFailure
            | Kind::ReadOnlyTransaction
    ) || TRANSIENT
        .iter()
        .any(|t| message.to_ascii_lowercase().contains(t));
    if transient {
        Failure::Unavailable(e)
    } else {
        Failure::Refused(message)
    }
}

/// The consumer span of one batch, linked to the trace of every message that carries one (a
/// batch serves many traces, so it is the child of none).
fn batch_span(batch: &[OwnedMessage]) -> tracing::Span {
    let span = tracing::info_span!(
        "collector.batch",
        otel.kind = "consumer",
        messaging.batch.message_count = batch.len(),
    );
    for m in batch {
        if let Some(tp) = crate::dlq::header(m, "traceparent") {
            commerce_telemetry::traces::link(&span, tp);
        }
    }
    span
}

/// A message that is not applied, and why.
struct Poison<'a> {
    message: &'a OwnedMessage,
    reason: Reason,
    detail: String,
}

impl Batcher {
    /// Applies one batch, retrying until it commits. Returns false if stopped first.
    async fn process(&self, batch: &[OwnedMessage], shutdown: &mut watch::Receiver<bool>) -> bool {
        let started = std::time::Instant::now();
        let now = chrono::Utc::now();
        let mut good = Vec::with_capacity(batch.len());
        let mut poison = Vec::new();
        for m in batch {
            match admit(m, &self.horizon, now, self.config.time_zone) {
                Ok(e) => good.push((m, e)),
                Err((reason, detail)) => poison.push(Poison {
                    message: m,
                    reason,
                    detail,
                }),
            }
        }
        // Dead letters first: if they cannot be written, nothing of the batch is stored.
        for p in &poison {
            if !self.dead_letter(p, shutdown).await {
                return false;
            }
        }
        let mut refused = 0;
        let mut delay = Duration::from_millis(200);
        loop {
            let events: Vec<Envelope> = good.iter().map(|(_, e)| e.clone()).collect();
            let failure = match self.apply(&events).await {
                Ok(()) => break,
                Err(e) => classify(e),
            };
            metrics::counter!("collector_batch_failures_total").increment(1);
            match failure {
                Failure::Unavailable(e) => {
                    refused = 0;
                    self.health.stalled(Some(format!("{e:#}")));
                    tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "the database is unavailable; retrying the batch");
                }
                Failure::Refused(message) => {
                    refused += 1;
                    tracing::warn!(error = %message, attempt = refused, "the database refused a batch");
                    if refused >= DATA_RETRIES {
                        match self.isolate(&good, shutdown).await {
                            Some(Some(bad)) => {
                                // The refused events are dead-lettered; the rest committed.
                                for (m, detail) in bad {
                                    let p = Poison {
                                        message: m,
                                        reason: Reason::Database,
                                        detail,
                                    };
                                    if !self.dead_letter(&p, shutdown).await {
                                        return false;
                                    }
                                }
                                break;
                            }
                            // Every event fails alone: the database, not the data.
                            Some(None) => refused = 0,
                            None => return false,
                        }
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.changed() => return false,
            }
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        self.health.stalled(None);
        metrics::counter!("collector_batches_total").increment(1);
        metrics::histogram!("collector_batch_size").record(batch.len() as f64);
        metrics::histogram!("collector_batch_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        true
    }

    async fn apply(&self, events: &[Envelope]) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut conn = self.pool.get().await?;
        let applied = crate::apply::apply_batch(
            &mut conn,
            &self.config.group_id,
            events,
            self.config.time_zone,
        )
        .await?;
        // After the commit, off the batch's path: the live rankings re-read these products.
        self.live.mark(&applied.touched);
        Ok(())
    }

    /// Applies a refused batch's events one by one, each retried [`DATA_RETRIES`] times.
    /// Returns the events the database refused alone, with its message, or `Some(None)` if it
    /// refused every one of several (then the database is at fault, and the batch is retried
    /// whole); `None` if stopped.
    #[allow(clippy::type_complexity)]
    async fn isolate<'a>(
        &self,
        good: &[(&'a OwnedMessage, Envelope)],
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<Option<Vec<(&'a OwnedMessage, String)>>> {
        let mut bad = Vec::new();
        for (m, e) in good {
            let mut attempt = 0;
            loop {
                match self.apply(std::slice::from_ref(e)).await.map_err(classify) {
                    Ok(()) => break,
                    Err(Failure::Refused(message)) => {
                        attempt += 1;
                        if attempt >= DATA_RETRIES {
                            bad.push((*m, message));
                            break;
                        }
                    }
                    // An outage meanwhile: the batch is retried whole (what committed is
                    // deduplicated).
                    Err(Failure::Unavailable(_)) => return Some(None),
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = shutdown.changed() => return None,
                }
            }
        }
        if good.len() > 1 && bad.len() == good.len() {
            tracing::warn!("the database refuses every event of the batch alone; retrying it");
            return Some(None);
        }
        Some(Some(bad))
    }

    /// Writes a poison message to its dead-letter topic, retrying until it is written. Returns
    /// false if stopped first.
    async fn dead_letter(&self, p: &Poison<'_>, shutdown: &mut watch::Receiver<bool>) -> bool {
        let mut delay = Duration::from_millis(200);
        loop {
            match crate::dlq::send(&self.config, &self.dlq, p.message, p.reason, &p.detail).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "writing a dead letter failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => return false,
                    }
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

/// Parses a message and checks it can be applied: a valid envelope, within the dedupe horizon,
/// with figures that fit. The error is why it is dead-lettered, and a description.
fn admit(
    m: &OwnedMessage,
    horizon: &Horizon,
    now: chrono::DateTime<chrono::Utc>,
    tz: chrono_tz::Tz,
) -> Result<Envelope, (Reason, String)> {
    let payload = m
        .payload()
        .ok_or_else(|| (Reason::Empty, "empty message".to_owned()))?;
    let envelope = serde_json::from_slice::<Envelope>(payload).map_err(|e| {
        (
            Reason::InvalidEnvelope,
            format!("not a valid event envelope: {e}"),
        )
    })?;
    horizon
        .admit(&envelope, now)
        .map_err(|r| (r.reason(), r.to_string()))?;
    crate::apply::check(&envelope, tz).map_err(|e| (Reason::InvalidEnvelope, e))?;
    Ok(envelope)
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
        health.stalled(Some("connection refused".into()));
        let err = health.check().await.unwrap_err();
        assert!(err.contains("database is unavailable"), "{err}");
        health.stalled(None);
        assert!(health.check().await.is_ok());
        health.set(false);
        assert!(health.check().await.is_err(), "down again while recreated");
    }
}
