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
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::config::Config;
use crate::dedupe::Horizon;

mod batch;
mod context;

use batch::{Batcher, batch_span};
use context::{Membership, RebalanceLogger, STATISTICS_INTERVAL_MS};

/// Whether the consumer is running and its batches commit, for readiness. Cheap to clone.
#[derive(Clone, Default)]
pub struct Health(Arc<HealthState>);

#[derive(Default)]
struct HealthState {
    running: AtomicBool,
    /// Set while a batch is being retried because the database is unavailable.
    stalled: std::sync::Mutex<Option<String>>,
    /// The running consumer's place in its group.
    membership: std::sync::Mutex<Option<Arc<Membership>>>,
}

impl Health {
    fn set(&self, up: bool) {
        self.0.running.store(up, Ordering::Relaxed);
    }

    fn watch(&self, membership: Option<Arc<Membership>>) {
        *self.0.membership.lock().expect("not poisoned") = membership;
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
        let waiting = self
            .0
            .membership
            .lock()
            .expect("not poisoned")
            .as_ref()
            .and_then(|m| m.waiting());
        Box::pin(async move {
            if !up {
                Err(
                    "the Kafka consumer is not running (starting, or recreating after a failure)"
                        .into(),
                )
            } else if let Some(waiting) = waiting {
                Err(format!(
                    "waiting {} s for the consumer group to assign this member its partitions",
                    waiting.as_secs()
                ))
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

fn describe_metrics() {
    metrics::describe_gauge!(
        "collector_consumer_lag",
        "Messages of a consumed partition not yet applied, by topic and partition."
    );
    metrics::describe_gauge!(
        "collector_assigned_partitions",
        "Partitions of the consumed topics this instance holds (0 while it waits for the group, or when there are more members than partitions)."
    );
    metrics::describe_gauge!(
        "collector_group_joined",
        "1 while this instance's consumer holds an assignment from its group, 0 while it waits for one."
    );
    metrics::gauge!("collector_assigned_partitions").set(0.0);
    metrics::gauge!("collector_group_joined").set(0.0);
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
        health.watch(None);
        metrics::gauge!("collector_assigned_partitions").set(0.0);
        metrics::gauge!("collector_group_joined").set(0.0);
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
    let membership = Membership::new();
    let consumer: StreamConsumer<RebalanceLogger> = config
        .kafka
        .consumer_config(&config.group_id)
        .set("statistics.interval.ms", STATISTICS_INTERVAL_MS)
        .create_with_context(RebalanceLogger(membership.clone()))?;
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
    health.watch(Some(membership.clone()));
    health.set(true);
    // The group's assignment is watched once a second: a member left waiting longer than
    // `join_timeout` (a stalled join) is recreated.
    let mut membership_check = tokio::time::interval(Duration::from_secs(1));
    membership_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

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
        // The membership gauges are set by the rebalance callbacks; here only the stall.
        if let Some(waiting) = membership.waiting()
            && waiting >= config.join_timeout
        {
            metrics::counter!("collector_group_join_stalls_total").increment(1);
            anyhow::bail!(
                "the consumer group has not given this member an assignment in {} s (a stalled join); recreating the consumer",
                waiting.as_secs()
            );
        }
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
                _ = membership_check.tick() => Wake::Tick,
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
