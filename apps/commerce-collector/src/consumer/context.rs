//! The consumer's librdkafka client context: rebalances logged and counted, client errors
//! counted, and the consumer lag exported from librdkafka's statistics.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};

/// Logs and counts rebalances, tracks this member's place in the group ([`Membership`]), and
/// exports the consumer's lag from librdkafka's statistics.
pub(super) struct RebalanceLogger(pub(super) Arc<Membership>);

/// Whether this member has joined its group (a rebalance gave it its assignment, possibly
/// empty when there are more members than partitions), and since when it has not. The
/// partitions it holds are exported as `collector_assigned_partitions` by the callbacks.
pub(super) struct Membership {
    joined: AtomicBool,
    waiting_since: Mutex<Instant>,
}

impl Membership {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            joined: AtomicBool::new(false),
            waiting_since: Mutex::new(Instant::now()),
        })
    }

    /// How long this member has been waiting for the group to give it an assignment, if it
    /// is waiting.
    pub(super) fn waiting(&self) -> Option<Duration> {
        (!self.joined.load(Ordering::Relaxed))
            .then(|| self.waiting_since.lock().expect("not poisoned").elapsed())
    }
}

/// How often librdkafka reports its statistics (the lag gauges' resolution).
pub(super) const STATISTICS_INTERVAL_MS: &str = "1000";

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
            // Until the group hands out the next assignment.
            *self.0.waiting_since.lock().expect("not poisoned") = Instant::now();
            self.0.joined.store(false, Ordering::Relaxed);
            metrics::gauge!("collector_group_joined").set(0.0);
        }
    }
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // The whole assignment (a cooperative rebalance hands out only the increment).
                let held = consumer.assignment().map_or(tpl.count(), |a| a.count());
                tracing::info!(partitions = tpl.count(), held, "partitions assigned");
                metrics::counter!("collector_rebalances_total", "kind" => "assign").increment(1);
                self.0.joined.store(true, Ordering::Relaxed);
                metrics::gauge!("collector_assigned_partitions").set(held as f64);
                metrics::gauge!("collector_group_joined").set(1.0);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {
                let held = consumer.assignment().map_or(0, |a| a.count());
                metrics::gauge!("collector_assigned_partitions").set(held as f64);
            }
        }
    }
}
