//! Writing events into the outbox.
//!
//! Rule: [`record`] is only ever called with a connection that is inside the transaction making
//! the change the event describes. The event is then published if and only if the change
//! commits; the relay (see `relay`) does the publishing.

use chrono::{DateTime, Utc};
use commerce_events::{Envelope, Event, Stream};
use diesel::prelude::*;
use diesel::sql_types::{Array, Nullable, Text, Uuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

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
/// stored with (an order's `paid_at`), so every consumer dates it the same way. It needs only a
/// shared connection, so a transaction can send it with its other writes in one round trip.
pub async fn record_at(
    conn: &AsyncPgConnection,
    topics: &Topics,
    events: Vec<Event>,
    at: DateTime<Utc>,
) -> QueryResult<()> {
    let traceparent = commerce_telemetry::traces::current_traceparent();
    let n = events.len();
    let (mut ids, mut topics_, mut keys, mut types, mut envelopes) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for event in events {
        let envelope = Envelope::at(event, at);
        ids.push(envelope.event_id);
        topics_.push(topics.for_stream(envelope.event.stream()).to_owned());
        keys.push(envelope.aggregate_id.to_string());
        types.push(envelope.event_type().as_str());
        envelopes.push(serde_json::to_string(&envelope).expect("envelopes serialise"));
    }
    // One array per column, whatever the number of events: a thousand events are one statement
    // with six parameters, in their order (ids follow it, and the relay publishes by id).
    diesel::sql_query(
        "INSERT INTO outbox (event_id, topic, partition_key, event_type, envelope, traceparent)
         SELECT e, t, k, y, v::jsonb, $6
           FROM unnest($1, $2, $3, $4, $5) WITH ORDINALITY AS r(e, t, k, y, v, i)
          ORDER BY i",
    )
    .bind::<Array<Uuid>, _>(&ids)
    .bind::<Array<Text>, _>(&topics_)
    .bind::<Array<Text>, _>(&keys)
    .bind::<Array<Text>, _>(&types)
    .bind::<Array<Text>, _>(&envelopes)
    .bind::<Nullable<Text>, _>(traceparent)
    .execute(&mut &*conn)
    .await?;
    Ok(())
}
