//! `ProductViewed`: counted once per viewer, product and window, added up per product in
//! memory, and published to Kafka at most once a second per product, best effort.
//!
//! Views are high volume and may be lost, so they skip the outbox. Rule: counting a view never
//! waits and never fails the read. The request hands `(product, viewer)` to a bounded queue
//! ([`ViewPublisher::view`]) after a look at this instance's memory of recent views; a
//! background task ([`run`]) takes the queue in batches, keeps only the first view of each
//! (viewer, product) in `PRODUCT_VIEW_WINDOW_SECONDS` (one pipelined `SET NX EX` per batch in
//! Redis, so every instance agrees), adds them to the product's tally, and once a second hands
//! one event per viewed product, with its `count`, to librdkafka's in-memory queue. A viewer is
//! a signed-in user, or else a client address (IPv6 by its /64): a thousand reloads from one
//! address count as one view, and an anonymous flood cannot rig the rankings.
//!
//! With Redis down, this instance's memory alone decides (a viewer could count once per
//! instance); with the queue or librdkafka's full (a long broker outage) the views are dropped.
//! Each view ends in `product_views_total{result}`: published, repeated or dropped.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use commerce_cache::{Cache, Local};
use commerce_events::{Envelope, Event, ProductViewed};
use commerce_kafka::KafkaSettings;
use rdkafka::producer::FutureRecord;
use tokio::sync::{mpsc, watch};

/// Views waiting for the dedup task; beyond this they are dropped.
const QUEUE: usize = 65_536;
/// Views deduplicated per Redis round trip.
const BATCH: usize = 512;
/// Recent (viewer, product) pairs this instance remembers.
const REMEMBERED: usize = 200_000;
/// How often a viewed product's tally is published.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Who viewed a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Viewer {
    User(i64),
    /// Keyed as the rate limits key it.
    Address(IpAddr),
}

impl Viewer {
    fn key(self, product_id: i64) -> String {
        match self {
            Viewer::User(id) => format!("views:{product_id}:u{id}"),
            Viewer::Address(ip) => format!(
                "views:{product_id}:a{}",
                crate::infra::limits::limit_key(ip)
            ),
        }
    }

    fn user_id(self) -> Option<i64> {
        match self {
            Viewer::User(id) => Some(id),
            Viewer::Address(_) => None,
        }
    }
}

commerce_enums::text_enum! {
    /// What became of a product view (`product_views_total{result}`).
    pub enum ViewResult {
        /// The viewer's first view of the product in the window: published.
        Published => "published",
        /// Seen in the window already: not counted again.
        Repeated => "repeated",
        /// A queue was full: lost.
        Dropped => "dropped",
    }
}

impl ViewResult {
    fn count(self, n: u64) {
        metrics::counter!("product_views_total", "result" => self.as_str()).increment(n);
    }
}

struct Pending {
    product_id: i64,
    viewer: Viewer,
    traceparent: Option<String>,
}

/// Counts and publishes product views.
pub struct ViewPublisher {
    producer: commerce_kafka::Producer,
    topic: String,
    window: Duration,
    seen: Local<()>,
    queue: mpsc::Sender<Pending>,
    receiver: std::sync::Mutex<Option<mpsc::Receiver<Pending>>>,
}

impl ViewPublisher {
    pub fn new(settings: &KafkaSettings, topic: String, window: Duration) -> anyhow::Result<Self> {
        let mut config = settings.producer_config();
        // Views tolerate loss: no idempotence or full acknowledgement, a bounded queue, and a
        // short lifetime for messages that cannot be delivered.
        config
            .set("enable.idempotence", "false")
            .set("acks", "1")
            .set("queue.buffering.max.messages", "100000")
            .set("message.timeout.ms", "10000");
        let producer = config.create_with_context(commerce_kafka::Observed("views"))?;
        let (queue, receiver) = mpsc::channel(QUEUE);
        Ok(Self {
            producer,
            topic,
            window,
            seen: Local::new(window, REMEMBERED),
            queue,
            receiver: std::sync::Mutex::new(Some(receiver)),
        })
    }

    /// Waits (bounded) for queued views to be delivered; called on shutdown.
    pub fn flush(&self) {
        use rdkafka::producer::Producer;
        let _ = self.producer.flush(std::time::Duration::from_secs(3));
    }

    /// Counts a view of `product_id` by `viewer`; returns at once.
    pub fn view(&self, product_id: i64, viewer: Viewer) {
        if self.seen.get(&viewer.key(product_id)).is_some() {
            ViewResult::Repeated.count(1);
            return;
        }
        let pending = Pending {
            product_id,
            viewer,
            traceparent: commerce_telemetry::traces::current_traceparent(),
        };
        if self.queue.try_send(pending).is_err() {
            ViewResult::Dropped.count(1);
        }
    }

    /// Keeps the first view of each (viewer, product) in the window, across instances when
    /// Redis answers; remembers every one seen here.
    async fn first_views(&self, cache: &Cache, batch: Vec<Pending>) -> Vec<Pending> {
        let mut unique = HashSet::new();
        let mut fresh = Vec::with_capacity(batch.len());
        for view in batch {
            let key = view.viewer.key(view.product_id);
            if self.seen.get(&key).is_some() || !unique.insert(key) {
                ViewResult::Repeated.count(1);
            } else {
                fresh.push(view);
            }
        }
        if fresh.is_empty() {
            return fresh;
        }
        let claims = fresh
            .iter()
            .map(|view| {
                let mut claim = commerce_cache::redis::cmd("SET");
                claim
                    .arg(cache.key(&view.viewer.key(view.product_id)))
                    .arg(1)
                    .arg("NX")
                    .arg("EX")
                    .arg(self.window.as_secs().max(1));
                claim
            })
            .collect();
        // Each claim is its own key (its own slot in a Redis Cluster).
        let firsts: Option<Vec<Option<String>>> = match cache.conn().await {
            Ok(mut conn) => tokio::time::timeout(Duration::from_millis(500), conn.each(claims))
                .await
                .ok()
                .and_then(Result::ok),
            Err(_) => None,
        };
        if firsts.is_none() {
            commerce_cache::count_error("view_dedup");
        }
        let mut kept = Vec::with_capacity(fresh.len());
        for (i, view) in fresh.into_iter().enumerate() {
            self.seen.put(view.viewer.key(view.product_id), ());
            // Redis down: this instance's memory decided alone.
            let first = firsts
                .as_ref()
                .is_none_or(|f| f.get(i).is_some_and(Option::is_some));
            if first {
                kept.push(view);
            } else {
                ViewResult::Repeated.count(1);
            }
        }
        kept
    }

    /// Publishes one product's tally as one event.
    fn publish(&self, product_id: i64, tally: &Tally) {
        let envelope = Envelope::new(Event::ProductViewed(ProductViewed {
            product_id,
            user_id: (tally.count == 1).then_some(tally.user_id).flatten(),
            count: tally.count,
        }));
        let Ok(payload) = serde_json::to_vec(&envelope) else {
            ViewResult::Dropped.count(tally.count.into());
            return;
        };
        let key = product_id.to_string();
        let event_id = envelope.event_id.to_string();
        let record = FutureRecord::to(&self.topic)
            .key(&key)
            .payload(&payload)
            .headers(commerce_kafka::event_headers(
                &event_id,
                envelope.event_type().as_str(),
                tally.traceparent.as_deref(),
            ));
        match self.producer.send_result(record) {
            // The delivery future is dropped: nobody waits for the acknowledgement.
            Ok(_delivery) => ViewResult::Published.count(tally.count.into()),
            Err((e, _)) => {
                ViewResult::Dropped.count(tally.count.into());
                tracing::debug!(product.id = product_id, views = tally.count, error = %e, "product views dropped");
            }
        }
    }
}

/// A product's first views since its last event.
struct Tally {
    count: u32,
    /// The first viewer's id when signed in (kept on the event only for a single view).
    user_id: Option<i64>,
    /// The first view's trace.
    traceparent: Option<String>,
}

/// First views waiting for their product's next event.
#[derive(Default)]
struct Tallies(HashMap<i64, Tally>);

impl Tallies {
    fn add(&mut self, views: Vec<Pending>) {
        for view in views {
            self.0
                .entry(view.product_id)
                .and_modify(|t| t.count = t.count.saturating_add(1))
                .or_insert(Tally {
                    count: 1,
                    user_id: view.viewer.user_id(),
                    traceparent: view.traceparent,
                });
        }
    }

    fn publish(&mut self, views: &ViewPublisher) {
        for (product_id, tally) in self.0.drain() {
            views.publish(product_id, &tally);
        }
    }
}

/// The dedup task: takes queued views in batches and publishes each product's tally once a
/// second, until `stop`; then drains what is queued and publishes it.
pub async fn run(views: Arc<ViewPublisher>, cache: Cache, mut stop: watch::Receiver<bool>) {
    let Some(mut receiver) = views.receiver.lock().expect("lock poisoned").take() else {
        return;
    };
    let mut batch = Vec::with_capacity(BATCH);
    let mut tallies = Tallies::default();
    let mut every_second = tokio::time::interval(PUBLISH_EVERY);
    every_second.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            n = receiver.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    break;
                }
                false
            }
            _ = every_second.tick() => {
                tallies.publish(&views);
                continue;
            }
            _ = stop.wait_for(|s| *s) => true,
        };
        if stopping {
            // What is queued still counts.
            receiver.close();
            while receiver.recv_many(&mut batch, BATCH).await > 0 {
                tallies.add(views.first_views(&cache, std::mem::take(&mut batch)).await);
            }
            break;
        }
        tallies.add(views.first_views(&cache, std::mem::take(&mut batch)).await);
    }
    tallies.publish(&views);
}
