//! The outbox relay: publishes committed outbox rows to Kafka, then marks them published.
//!
//! Design, and the rules it keeps:
//! - **One active relay across all API instances**, chosen by a PostgreSQL session advisory
//!   lock held on a dedicated connection. The alternative, row claims with `FOR UPDATE SKIP
//!   LOCKED` shared by several relays, lets two relays publish two events of one key
//!   concurrently and loses per-key order; a single publisher keeps it simply, and one relay
//!   drains far more than the API writes (see BENCHMARKS.md). Standbys retry the lock every few
//!   seconds; if the leader's connection dies, PostgreSQL releases the lock and a standby takes
//!   over.
//! - **Never skip a late commit.** Each pass reads the oldest unpublished rows (`published_at IS
//!   NULL ORDER BY id`), not "ids above the last one seen", so a row whose lower id commits
//!   after a higher one is simply picked up by the next pass.
//! - **Mark only after the broker acknowledged** (idempotent producer, `acks=all`). A crash
//!   between publish and mark re-publishes those rows: delivery is at least once, and the
//!   collector deduplicates by `event_id`.
//! - **Wake promptly**: `LISTEN outbox` (a trigger NOTIFYs on insert, delivered at commit), with
//!   polling as the fallback when a notification is missed.
//! - **Broker outage**: the API keeps committing orders; publishing fails, the relay backs off
//!   exponentially and catches up when the broker returns. A producer that reports a fatal
//!   error (which librdkafka's idempotent producer can do after a long outage) is recreated,
//!   and topics are re-created if the broker lost them.
//! - **Retention**: the leader purges rows published longer ago than the retention.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use commerce_db::Pool;
use commerce_kafka::KafkaSettings;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Double, Nullable};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use futures::StreamExt;
use rdkafka::producer::{FutureRecord, Producer};
use tokio::sync::watch;

use crate::infra::outbox::Topics;
use crate::infra::schema::outbox;

/// The advisory-lock key naming the relay leader.
const LEADER_LOCK: i64 = 0x636f_6d6d_6572_6365; // "commerce"

/// Relay settings.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The leader session's URL: direct, not through a transaction-mode pooler (a session
    /// advisory lock must stay on one server session).
    pub database_url: String,
    pub kafka: KafkaSettings,
    pub topics: Topics,
    pub partitions: i32,
    pub batch_size: i64,
    pub poll_interval: Duration,
    pub retention: Duration,
}

#[derive(Queryable)]
struct Row {
    id: i64,
    topic: String,
    partition_key: String,
    event_type: String,
    envelope: serde_json::Value,
    traceparent: Option<String>,
    event_id: uuid::Uuid,
    created_at: DateTime<Utc>,
}

fn describe_metrics() {
    metrics::describe_gauge!("outbox_pending", "Outbox rows not yet published.");
    metrics::describe_gauge!(
        "outbox_oldest_pending_age_seconds",
        metrics::Unit::Seconds,
        "Age of the oldest unpublished outbox row (0 when none)."
    );
    metrics::describe_gauge!(
        "outbox_relay_leader",
        "1 while this instance is the active relay."
    );
}

/// Runs the relay until `shutdown` turns true.
pub async fn run(config: RelayConfig, pool: Pool, mut shutdown: watch::Receiver<bool>) {
    describe_metrics();
    metrics::gauge!("outbox_relay_leader").set(0.0);
    let mut backoff = Backoff::new();
    while !*shutdown.borrow() {
        match lead(&config, &pool, &mut shutdown).await {
            Ok(Leadership::NotLeader) => {
                metrics::gauge!("outbox_relay_leader").set(0.0);
                wait(&mut shutdown, Duration::from_secs(3)).await;
            }
            Ok(Leadership::Stopped) => break,
            Err(e) => {
                metrics::gauge!("outbox_relay_leader").set(0.0);
                let delay = backoff.next();
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "outbox relay interrupted");
                wait(&mut shutdown, delay).await;
            }
        }
    }
    tracing::info!("outbox relay stopped");
}

enum Leadership {
    NotLeader,
    Stopped,
}

async fn wait(shutdown: &mut watch::Receiver<bool>, delay: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(delay) => {}
        _ = shutdown.changed() => {}
    }
}

/// Takes the leader lock and relays until shutdown or an error.
async fn lead(
    config: &RelayConfig,
    pool: &Pool,
    shutdown: &mut watch::Receiver<bool>,
) -> anyhow::Result<Leadership> {
    let mut leader_conn = commerce_db::connect(&config.database_url)
        .await
        .context("connecting the relay's leader session")?;
    #[derive(QueryableByName)]
    struct Locked {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        locked: bool,
    }
    let got: Locked = diesel::sql_query("SELECT pg_try_advisory_lock($1) AS locked")
        .bind::<BigInt, _>(LEADER_LOCK)
        .get_result(&mut leader_conn)
        .await?;
    if !got.locked {
        return Ok(Leadership::NotLeader);
    }
    leader_conn.batch_execute("LISTEN outbox").await?;
    tracing::info!("this instance is the outbox relay leader");
    metrics::gauge!("outbox_relay_leader").set(1.0);

    // Leadership is kept while the broker cannot be reached: the leader is the one waiting for
    // it (and the backlog gauges, on their own loop, show the rows piling up meanwhile).
    let mut backoff = Backoff::new();
    let mut producer = loop {
        match Publisher::new(config).await {
            Ok(producer) => break producer,
            Err(e) => {
                let delay = backoff.next();
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "the relay cannot reach the broker yet");
                wait(shutdown, delay).await;
                if *shutdown.borrow() {
                    return Ok(Leadership::Stopped);
                }
                leader_conn
                    .batch_execute("SELECT 1")
                    .await
                    .context("the leader session was lost")?;
            }
        }
    };
    let mut backoff = Backoff::new();
    let mut failures = 0u32;
    let mut last_health = Instant::now();
    let mut last_purge: Option<Instant> = None;
    loop {
        if *shutdown.borrow() {
            producer.flush();
            return Ok(Leadership::Stopped);
        }
        match drain(config, pool, &mut producer).await {
            Ok(()) => {
                backoff.reset();
                failures = 0;
            }
            Err(e) => {
                failures += 1;
                let delay = backoff.next();
                tracing::warn!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "publishing the outbox failed; backing off");
                producer.recover(config, failures).await;
                wait(shutdown, delay).await;
                continue;
            }
        }
        if last_purge.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
            purge(pool, config.retention).await;
            last_purge = Some(Instant::now());
        }
        // Sleep until a commit notifies us, the poll interval passes, or shutdown.
        {
            let mut notifications = std::pin::pin!(leader_conn.notifications_stream());
            tokio::select! {
                n = notifications.next() => {
                    if let Some(Err(e)) = n {
                        return Err(anyhow::Error::new(e).context("the leader session was lost"));
                    }
                    // Coalesce the notifications that are already queued.
                    while let Some(Some(_)) = futures::FutureExt::now_or_never(notifications.next()) {}
                }
                _ = tokio::time::sleep(config.poll_interval) => {}
                _ = shutdown.changed() => {}
            }
        }
        if last_health.elapsed() >= Duration::from_secs(5) {
            // A lost session means the lock is gone too: stop publishing at once.
            leader_conn
                .batch_execute("SELECT 1")
                .await
                .context("the leader session was lost")?;
            last_health = Instant::now();
        }
    }
}

/// Publishes unpublished rows until none are left.
async fn drain(config: &RelayConfig, pool: &Pool, producer: &mut Publisher) -> anyhow::Result<()> {
    loop {
        let mut conn = pool.get().await?;
        let rows: Vec<Row> = outbox::table
            .filter(outbox::published_at.is_null())
            .order(outbox::id)
            .limit(config.batch_size)
            .select((
                outbox::id,
                outbox::topic,
                outbox::partition_key,
                outbox::event_type,
                outbox::envelope,
                outbox::traceparent,
                outbox::event_id,
                outbox::created_at,
            ))
            .load(&mut conn)
            .await?;
        drop(conn);
        if rows.is_empty() {
            return Ok(());
        }
        let full = rows.len() as i64 == config.batch_size;
        let (published, failed) = producer.publish(&rows).await;
        let mut conn = pool.get().await?;
        if !published.is_empty() {
            diesel::update(outbox::table.filter(outbox::id.eq_any(&published)))
                .set(outbox::published_at.eq(diesel::dsl::now))
                .execute(&mut conn)
                .await?;
            metrics::counter!("outbox_published_total").increment(published.len() as u64);
        }
        if let Some((ids, error)) = failed {
            metrics::counter!("outbox_publish_failures_total").increment(ids.len() as u64);
            diesel::update(outbox::table.filter(outbox::id.eq_any(&ids)))
                .set((
                    outbox::attempts.eq(outbox::attempts + 1),
                    outbox::last_error.eq(error.chars().take(500).collect::<String>()),
                ))
                .execute(&mut conn)
                .await?;
            anyhow::bail!("{} outbox rows were not acknowledged: {error}", ids.len());
        }
        if !full {
            return Ok(());
        }
    }
}

/// The relay's producer, recreated after a fatal error.
struct Publisher {
    producer: commerce_kafka::Producer,
}

impl Publisher {
    async fn new(config: &RelayConfig) -> anyhow::Result<Self> {
        ensure_topics(config).await?;
        let mut c = config.kafka.producer_config();
        // Fail a send within the poll cadence of a broker outage rather than after minutes.
        c.set("message.timeout.ms", "10000");
        Ok(Self {
            producer: c
                .create_with_context(commerce_kafka::Observed("relay"))
                .context("creating the relay producer")?,
        })
    }

    /// Sends every row and waits for all acknowledgements. Returns the acknowledged ids and,
    /// if any failed, the failed ids with the first error.
    async fn publish(&self, rows: &[Row]) -> (Vec<i64>, Option<(Vec<i64>, String)>) {
        let mut pending = Vec::with_capacity(rows.len());
        for row in rows {
            let payload = row.envelope.to_string();
            let event_id = row.event_id.to_string();
            // A producer span in the trace of the request that wrote the row; the message
            // carries this span's context, so the consumer's side links to the publish.
            let span = tracing::info_span!(
                "outbox.publish",
                otel.name = format!("{} publish", row.topic),
                otel.kind = "producer",
                messaging.destination.name = %row.topic,
                event.id = %event_id,
                "event.type" = %row.event_type,
                otel.status_code = tracing::field::Empty,
            );
            commerce_telemetry::traces::continue_trace(&span, row.traceparent.as_deref());
            let traceparent =
                commerce_telemetry::traces::traceparent(&span).or_else(|| row.traceparent.clone());
            let record = FutureRecord::to(&row.topic)
                .key(&row.partition_key)
                .payload(&payload)
                .headers(commerce_kafka::event_headers(
                    &event_id,
                    &row.event_type,
                    traceparent.as_deref(),
                ));
            // Enqueue without waiting (the producer keeps per-partition order), then await
            // every acknowledgement.
            let delivery = self
                .producer
                .send_result(record)
                .map_err(|(e, _)| e.to_string());
            pending.push((row.id, row.created_at, delivery, span));
        }
        let mut published = Vec::with_capacity(rows.len());
        let mut failed: Option<(Vec<i64>, String)> = None;
        for (id, created_at, delivery, span) in pending {
            let outcome = match delivery {
                Ok(future) => match future.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e.to_string()),
                    Err(_) => Err("the producer was dropped".to_owned()),
                },
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => {
                    published.push(id);
                    let lag =
                        (Utc::now() - created_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
                    metrics::histogram!("outbox_publish_lag_seconds").record(lag.max(0.0));
                }
                Err(e) => {
                    span.record("otel.status_code", "error");
                    let entry = failed.get_or_insert_with(|| (Vec::new(), e));
                    entry.0.push(id);
                }
            }
        }
        (published, failed)
    }

    /// After a failure: recreate the producer if it went fatal or keeps failing (an idempotent
    /// producer whose broker restarted without its state can time out forever), and the topics
    /// if the broker lost them. Errors here are left to the next attempt.
    async fn recover(&mut self, config: &RelayConfig, failures: u32) {
        let fatal = self.producer.client().fatal_error();
        if fatal.is_some() || failures >= 2 {
            match fatal {
                Some((code, reason)) => {
                    tracing::warn!(?code, %reason, "the relay producer hit a fatal error; recreating it");
                }
                None => tracing::warn!(failures, "the relay producer keeps failing; recreating it"),
            }
            if let Ok(fresh) = Publisher::new(config).await {
                *self = fresh;
            }
            return;
        }
        let _ = ensure_topics(config).await;
    }

    fn flush(&self) {
        let _ = self.producer.flush(Duration::from_secs(5));
    }
}

/// Creates the relay's topics if the broker does not have them (a broker that lost its data).
async fn ensure_topics(config: &RelayConfig) -> anyhow::Result<()> {
    let topics = [
        (config.topics.catalog.as_str(), config.partitions),
        (config.topics.order.as_str(), config.partitions),
    ];
    config.kafka.ensure_topics(&topics).await
}

/// Reports the outbox backlog (`outbox_pending`, `outbox_oldest_pending_age_seconds`) every
/// second until `stop` turns, on every instance, leader or not, and whatever the broker's state:
/// the backlog is read from the database, so it keeps moving exactly when publishing stops.
pub async fn report_backlog_until_stopped(pool: Pool, mut stop: watch::Receiver<bool>) {
    describe_metrics();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => report_backlog(&pool).await,
            _ = stop.changed() => return,
        }
    }
}

async fn report_backlog(pool: &Pool) {
    #[derive(QueryableByName)]
    struct Backlog {
        #[diesel(sql_type = BigInt)]
        pending: i64,
        #[diesel(sql_type = Nullable<Double>)]
        oldest_age: Option<f64>,
    }
    let Ok(mut conn) = pool.get().await else {
        return;
    };
    let backlog: Result<Backlog, _> = diesel::sql_query(
        "SELECT count(*) AS pending,
                EXTRACT(EPOCH FROM now() - min(created_at))::float8 AS oldest_age
           FROM outbox WHERE published_at IS NULL",
    )
    .get_result(&mut conn)
    .await;
    if let Ok(b) = backlog {
        metrics::gauge!("outbox_pending").set(b.pending as f64);
        metrics::gauge!("outbox_oldest_pending_age_seconds")
            .set(b.oldest_age.unwrap_or(0.0).max(0.0));
    }
}

/// Deletes rows published longer ago than `retention`, in bounded batches.
async fn purge(pool: &Pool, retention: Duration) {
    let Ok(mut conn) = pool.get().await else {
        return;
    };
    let mut total = 0;
    loop {
        let deleted = diesel::sql_query(
            "DELETE FROM outbox WHERE id IN (
                SELECT id FROM outbox
                 WHERE published_at < now() - make_interval(secs => $1)
                 LIMIT 10000)",
        )
        .bind::<Double, _>(retention.as_secs_f64())
        .execute(&mut conn)
        .await;
        match deleted {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) => {
                tracing::warn!(error = %e, "purging published outbox rows failed");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(rows = total, "purged published outbox rows past retention");
    }
}

/// Exponential backoff with jitter, 200 ms to 30 s.
struct Backoff {
    current: Duration,
}

impl Backoff {
    fn new() -> Self {
        Self {
            current: Duration::from_millis(200),
        }
    }
    fn reset(&mut self) {
        self.current = Duration::from_millis(200);
    }
    fn next(&mut self) -> Duration {
        let jitter = rand::random_range(0.5..1.0);
        let delay = self.current.mul_f64(jitter);
        self.current = (self.current * 2).min(Duration::from_secs(30));
        delay
    }
}
