//! Writing events into the outbox.
//!
//! Rule: [`record`] is only ever called with a connection that is inside the transaction making
//! the change the event describes. The event is then published if and only if the change
//! commits; the relay (see `relay`) does the publishing.

use chrono::{DateTime, Utc};
use commerce_events::{Envelope, Event, Stream};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::infra::schema::outbox;

/// Topic names for each stream.
#[derive(Debug, Clone)]
pub struct Topics {
    pub catalog: String,
    pub order: String,
}

impl Topics {
    pub fn for_stream(&self, stream: Stream) -> &str {
        match stream {
            Stream::Catalog => &self.catalog,
            Stream::Order => &self.order,
        }
    }
}

/// Inserts `events` into the outbox on `conn` (which must be in the change's transaction).
pub async fn record(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    events: Vec<Event>,
) -> QueryResult<()> {
    record_at(conn, topics, events, Utc::now()).await
}

/// [`record`], with the events' `occurred_at` set to `at`: the instant the state change is
/// stored with (an order's `paid_at`), so every consumer dates it the same way.
pub async fn record_at(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    events: Vec<Event>,
    at: DateTime<Utc>,
) -> QueryResult<()> {
    let traceparent = commerce_telemetry::traces::current_traceparent();
    let rows: Vec<_> = events
        .into_iter()
        .map(|event| {
            let envelope = Envelope::at(event, at);
            let topic = topics.for_stream(envelope.event.stream()).to_owned();
            (
                outbox::event_id.eq(envelope.event_id),
                outbox::topic.eq(topic),
                outbox::partition_key.eq(envelope.aggregate_id.to_string()),
                outbox::event_type.eq(envelope.event_type().as_str()),
                outbox::envelope.eq(serde_json::to_value(&envelope).expect("envelopes serialise")),
                outbox::traceparent.eq(traceparent.clone()),
            )
        })
        .collect();
    diesel::insert_into(outbox::table)
        .values(rows)
        .execute(conn)
        .await?;
    Ok(())
}
