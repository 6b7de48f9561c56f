//! One batch: admitted or dead-lettered message by message, applied in one transaction, retried
//! until it commits (see the module documentation of [`super`]).

use std::time::Duration;

use crate::ranking::live::Live;
use commerce_db::Pool;
use commerce_events::Envelope;
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::watch;

use crate::config::Config;
use crate::dedupe::Horizon;
use crate::dlq::Reason;

use super::Health;

/// Everything a batch task needs, shared by every batch of one consumer.
pub(super) struct Batcher {
    pub(super) config: Config,
    pub(super) pool: Pool,
    pub(super) live: Live,
    pub(super) dlq: commerce_kafka::Producer,
    pub(super) health: Health,
    pub(super) horizon: Horizon,
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
pub(super) fn batch_span(batch: &[OwnedMessage]) -> tracing::Span {
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
    pub(super) async fn process(
        &self,
        batch: &[OwnedMessage],
        shutdown: &mut watch::Receiver<bool>,
    ) -> bool {
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
