//! Writing events into the outbox.
//!
//! Rule: [`record`] is only ever called with a connection that is inside the transaction making
//! the change the event describes. The event is then published if and only if the change
//! commits; the relay (see `relay`) does the publishing.
//!
//! **Sales are counted with their events.** The statement that records a sale's event also moves
//! the products' `sales_count` (the product list's `sort=sales_desc`): an `OrderPaid` adds its
//! lines, an `OrderCancelled` of paid units subtracts them. Those are exactly the events the
//! collector counts as sales, so the count equals the collector's all-time sales quantity,
//! whichever path (placement, card payment, cancellation, return, reversal) made the sale.

use chrono::{DateTime, Utc};
use commerce_events::{Envelope, Event, Stream};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Nullable, Text, Uuid};
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
    let mut sold: std::collections::BTreeMap<i64, i64> = std::collections::BTreeMap::new();
    for event in &events {
        let (lines, sign) = match event {
            Event::OrderPaid(o) => (&o.lines, 1),
            Event::OrderCancelled(c) if c.was_paid => (&c.lines, -1),
            _ => continue,
        };
        for line in lines {
            *sold.entry(line.product_id).or_default() += sign * line.quantity;
        }
    }
    sold.retain(|_, units| *units != 0);
    // Sorted by id: concurrent orders update the same products in one order.
    let (sold_ids, sold_units): (Vec<i64>, Vec<i64>) = sold.into_iter().unzip();
    for event in events {
        let envelope = Envelope::at(event, at);
        ids.push(envelope.event_id);
        topics_.push(topics.for_stream(envelope.event.stream()).to_owned());
        keys.push(envelope.aggregate_id.to_string());
        types.push(envelope.event_type().as_str());
        envelopes.push(serde_json::to_string(&envelope).expect("envelopes serialise"));
    }
    // One array per column, whatever the number of events: a thousand events are one statement
    // with eight parameters, in their order (ids follow it, and the relay publishes by id). The
    // units sold ride in the same statement (no round trip of their own).
    diesel::sql_query(
        "WITH sold AS (
             UPDATE products p SET sales_count = p.sales_count + s.units
               FROM unnest($7::bigint[], $8::bigint[]) AS s(id, units)
              WHERE p.id = s.id
         )
         INSERT INTO outbox (event_id, topic, partition_key, event_type, envelope, traceparent)
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
    .bind::<Array<BigInt>, _>(&sold_ids)
    .bind::<Array<BigInt>, _>(&sold_units)
    .execute(&mut &*conn)
    .await?;
    Ok(())
}
