//! `ProductViewed`: published straight to Kafka, best effort.
//!
//! Views are high volume and may be lost, so they skip the outbox. Rule: publishing never
//! waits and never fails the read: the message is handed to librdkafka's in-memory queue, and
//! when that queue is full (a long broker outage) the view is dropped and counted.

use commerce_events::{Envelope, Event, ProductViewed};
use commerce_kafka::KafkaSettings;
use rdkafka::producer::FutureRecord;

/// A fire-and-forget publisher of product views.
pub struct ViewPublisher {
    producer: commerce_kafka::Producer,
    topic: String,
}

impl ViewPublisher {
    pub fn new(settings: &KafkaSettings, topic: String) -> anyhow::Result<Self> {
        let mut config = settings.producer_config();
        // Views tolerate loss: no idempotence or full acknowledgement, a bounded queue, and a
        // short lifetime for messages that cannot be delivered.
        config
            .set("enable.idempotence", "false")
            .set("acks", "1")
            .set("queue.buffering.max.messages", "100000")
            .set("message.timeout.ms", "10000");
        let producer = config.create_with_context(commerce_kafka::Observed("views"))?;
        Ok(Self { producer, topic })
    }

    /// Waits (bounded) for queued views to be delivered; called on shutdown.
    pub fn flush(&self) {
        use rdkafka::producer::Producer;
        let _ = self.producer.flush(std::time::Duration::from_secs(3));
    }

    /// Queues a view event; returns at once.
    pub fn publish(&self, product_id: i64, user_id: Option<i64>) {
        let envelope = Envelope::new(Event::ProductViewed(ProductViewed {
            product_id,
            user_id,
        }));
        let Ok(payload) = serde_json::to_vec(&envelope) else {
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
                commerce_telemetry::traces::current_traceparent().as_deref(),
            ));
        match self.producer.send_result(record) {
            // The delivery future is dropped: nobody waits for the acknowledgement.
            Ok(_delivery) => metrics::counter!("product_views_published_total").increment(1),
            Err((e, _)) => {
                metrics::counter!("product_views_dropped_total").increment(1);
                tracing::debug!(product.id = product_id, error = %e, "product view dropped");
            }
        }
    }
}
