//! Applying a batch of events: exactly once in effect.
//!
//! One transaction per batch:
//! 1. the batch's event ids go into `event_handled` in one statement (`ON CONFLICT DO NOTHING
//!    RETURNING`), which tells which events are new;
//! 2. only the new events are folded, in memory, into per-product and per-(day, product) deltas
//!    and catalog snapshots, then applied with one set-based upsert per table: all-time totals,
//!    days, and the weeks and months those days fall in (so the current week and month are as
//!    live as the day);
//! 3. commit. The caller stores Kafka offsets only after this returns.
//!
//! A redelivered event (after a crash, a rebalance or a relay re-publish) is already in
//! `event_handled`, so it changes nothing. The fold is order-insensitive (sums, and
//! version-guarded snapshots), so events that arrive out of order give the same result.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use chrono_tz::Tz;
use commerce_events::{Envelope, Event, OrderLine};
use diesel::sql_types::{Array, BigInt, Date, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::ranking::Period;

/// Counter deltas.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delta {
    pub views: i64,
    pub likes: i64,
    pub orders: i64,
    pub quantity: i64,
    pub amount: i64,
}

impl Delta {
    fn add(&mut self, other: Delta) {
        self.views += other.views;
        self.likes += other.likes;
        self.orders += other.orders;
        self.quantity += other.quantity;
        self.amount += other.amount;
    }
}

/// What a batch changed, for the caller to refresh caches with.
#[derive(Debug, Default)]
pub struct Applied {
    /// Events applied for the first time.
    pub applied: usize,
    /// Events skipped because they were handled before.
    pub duplicates: usize,
    /// (business date, product) pairs whose daily figures changed.
    pub touched: BTreeSet<(NaiveDate, i64)>,
}

pub use crate::ranking::business_date;

/// Taken shared by every batch and exclusively by a rollup recomputing a week or month, so the
/// rollup never overwrites a delta committed while it ran.
pub const PERIOD_LOCK: commerce_db::XactLock =
    commerce_db::XactLock::named("commerce-collector:period-figures");

/// The effect of one event: deltas keyed by (business date, product).
fn effects(envelope: &Envelope, tz: Tz) -> Vec<(NaiveDate, i64, Delta)> {
    let day = business_date(envelope.occurred_at, tz);
    let sale = |lines: &[OrderLine], sign: i64, day: NaiveDate| {
        // One order counts once per product even if it had several lines of it.
        let mut per_product: BTreeMap<i64, Delta> = BTreeMap::new();
        for line in lines {
            let d = per_product.entry(line.product_id).or_default();
            d.orders = sign;
            d.quantity += sign * line.quantity;
            d.amount += sign * line.quantity * line.unit_price;
        }
        per_product
            .into_iter()
            .map(|(p, d)| (day, p, d))
            .collect::<Vec<_>>()
    };
    match &envelope.event {
        Event::ProductViewed(v) => vec![(
            day,
            v.product_id,
            Delta {
                views: 1,
                ..Delta::default()
            },
        )],
        Event::ProductLiked(l) => vec![(
            day,
            l.product_id,
            Delta {
                likes: 1,
                ..Delta::default()
            },
        )],
        Event::ProductUnliked(l) => vec![(
            day,
            l.product_id,
            Delta {
                likes: -1,
                ..Delta::default()
            },
        )],
        Event::OrderPaid(o) => sale(&o.lines, 1, day),
        // A cancelled sale is subtracted from the business day it was paid on, so a day's
        // figures stay the sales that day kept.
        Event::OrderCancelled(c) if c.was_paid => sale(
            &c.lines,
            -1,
            c.paid_at.map_or(day, |p| business_date(p, tz)),
        ),
        // Only `OrderPaid` is a sale: a failed card payment never produced one, and a completed
        // one is counted from the `OrderPaid` committed with it.
        Event::OrderCancelled(_)
        | Event::PaymentCompleted(_)
        | Event::PaymentFailed(_)
        | Event::OrderCreated(_)
        | Event::ProductCreated(_)
        | Event::ProductUpdated(_) => Vec::new(),
    }
}

/// Applies `events` for `group` in one transaction.
pub async fn apply_batch(
    conn: &mut AsyncPgConnection,
    group: &str,
    events: &[Envelope],
    tz: Tz,
) -> anyhow::Result<Applied> {
    let mut ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    ids.sort_unstable();
    ids.dedup();
    conn.transaction::<_, anyhow::Error, _>(async |conn| {
        // Batches share the period tables; a rollup recomputing a period waits for them (and
        // they for it), so it never overwrites a delta committed while it ran.
        PERIOD_LOCK.share(conn).await?;
        #[derive(diesel::QueryableByName)]
        struct New {
            #[diesel(sql_type = SqlUuid)]
            event_id: Uuid,
        }
        let new: Vec<New> = diesel::sql_query(
            "INSERT INTO event_handled (consumer_group, event_id)
             SELECT $1, id FROM unnest($2::uuid[]) AS id
             ON CONFLICT DO NOTHING
             RETURNING event_id",
        )
        .bind::<Text, _>(group)
        .bind::<Array<SqlUuid>, _>(&ids)
        .load(conn)
        .await?;
        let new: BTreeSet<Uuid> = new.into_iter().map(|n| n.event_id).collect();

        let mut daily: BTreeMap<(NaiveDate, i64), Delta> = BTreeMap::new();
        let mut catalog: BTreeMap<i64, &commerce_events::ProductSnapshot> = BTreeMap::new();
        let mut applied = Applied::default();
        let mut seen = BTreeSet::new();
        for envelope in events {
            if !new.contains(&envelope.event_id) || !seen.insert(envelope.event_id) {
                applied.duplicates += 1;
                continue;
            }
            applied.applied += 1;
            metrics::counter!("collector_events_applied_total", "event_type" => envelope.event_type())
                .increment(1);
            for (day, product, delta) in effects(envelope, tz) {
                daily.entry((day, product)).or_default().add(delta);
            }
            if let Event::ProductCreated(s) | Event::ProductUpdated(s) = &envelope.event {
                let keep = catalog.get(&s.product_id).is_none_or(|k| k.version < s.version);
                if keep {
                    catalog.insert(s.product_id, s);
                }
            }
        }
        if applied.duplicates > 0 {
            metrics::counter!("collector_events_duplicate_total").increment(applied.duplicates as u64);
        }

        if !daily.is_empty() {
            let mut totals: BTreeMap<i64, Delta> = BTreeMap::new();
            for ((_, product), d) in &daily {
                totals.entry(*product).or_default().add(*d);
            }
            upsert_totals(conn, &totals).await?;
            upsert_period(conn, Period::Daily, &daily).await?;
            // The current week and month stay live (the rollup only reconciles them).
            upsert_period(conn, Period::Weekly, &roll(&daily, Period::Weekly)).await?;
            upsert_period(conn, Period::Monthly, &roll(&daily, Period::Monthly)).await?;
        }
        if !catalog.is_empty() {
            upsert_catalog(conn, &catalog).await?;
        }
        applied.touched = daily.keys().copied().collect();
        Ok(applied)
    })
    .await
}

fn columns<K>(map: &BTreeMap<K, Delta>) -> [Vec<i64>; 5] {
    let mut cols: [Vec<i64>; 5] = Default::default();
    for d in map.values() {
        cols[0].push(d.views);
        cols[1].push(d.likes);
        cols[2].push(d.orders);
        cols[3].push(d.quantity);
        cols[4].push(d.amount);
    }
    cols
}

async fn upsert_totals(
    conn: &mut AsyncPgConnection,
    totals: &BTreeMap<i64, Delta>,
) -> anyhow::Result<()> {
    let products: Vec<i64> = totals.keys().copied().collect();
    let [v, l, o, q, a] = columns(totals);
    diesel::sql_query(
        "INSERT INTO product_metrics AS m
               (product_id, view_count, like_count, order_count, sales_quantity, sales_amount)
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[])
         ON CONFLICT (product_id) DO UPDATE SET
             view_count = m.view_count + EXCLUDED.view_count,
             like_count = m.like_count + EXCLUDED.like_count,
             order_count = m.order_count + EXCLUDED.order_count,
             sales_quantity = m.sales_quantity + EXCLUDED.sales_quantity,
             sales_amount = m.sales_amount + EXCLUDED.sales_amount,
             updated_at = now()",
    )
    .bind::<Array<BigInt>, _>(&products)
    .bind::<Array<BigInt>, _>(&v)
    .bind::<Array<BigInt>, _>(&l)
    .bind::<Array<BigInt>, _>(&o)
    .bind::<Array<BigInt>, _>(&q)
    .bind::<Array<BigInt>, _>(&a)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds `deltas` to a period table's rows keyed by (period start, product). Keys are sorted, so
/// concurrent batches lock rows in one order and cannot deadlock.
async fn upsert_period(
    conn: &mut AsyncPgConnection,
    period: Period,
    deltas: &BTreeMap<(NaiveDate, i64), Delta>,
) -> anyhow::Result<()> {
    let (table, column) = period.source();
    // Only the daily table records when a row changed (the scheduled jobs look for changed days).
    let touch = if period == Period::Daily {
        ", updated_at = now()"
    } else {
        ""
    };
    let starts: Vec<NaiveDate> = deltas.keys().map(|(d, _)| *d).collect();
    let products: Vec<i64> = deltas.keys().map(|(_, p)| *p).collect();
    let [v, l, o, q, a] = columns(deltas);
    diesel::sql_query(format!(
        "INSERT INTO {table} AS m
               ({column}, product_id, view_count, like_count, order_count, sales_quantity, sales_amount)
         SELECT * FROM unnest($1::date[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[])
         ON CONFLICT ({column}, product_id) DO UPDATE SET
             view_count = m.view_count + EXCLUDED.view_count,
             like_count = m.like_count + EXCLUDED.like_count,
             order_count = m.order_count + EXCLUDED.order_count,
             sales_quantity = m.sales_quantity + EXCLUDED.sales_quantity,
             sales_amount = m.sales_amount + EXCLUDED.sales_amount{touch}"
    ))
    .bind::<Array<Date>, _>(&starts)
    .bind::<Array<BigInt>, _>(&products)
    .bind::<Array<BigInt>, _>(&v)
    .bind::<Array<BigInt>, _>(&l)
    .bind::<Array<BigInt>, _>(&o)
    .bind::<Array<BigInt>, _>(&q)
    .bind::<Array<BigInt>, _>(&a)
    .execute(conn)
    .await?;
    Ok(())
}

/// The daily deltas summed into the periods of `period` (weeks or months), by period start.
fn roll(
    daily: &BTreeMap<(NaiveDate, i64), Delta>,
    period: Period,
) -> BTreeMap<(NaiveDate, i64), Delta> {
    let mut out: BTreeMap<(NaiveDate, i64), Delta> = BTreeMap::new();
    for ((day, product), d) in daily {
        out.entry((period.bounds(*day).0, *product))
            .or_default()
            .add(*d);
    }
    out
}

async fn upsert_catalog(
    conn: &mut AsyncPgConnection,
    catalog: &BTreeMap<i64, &commerce_events::ProductSnapshot>,
) -> anyhow::Result<()> {
    let ids: Vec<i64> = catalog.keys().copied().collect();
    let names: Vec<&str> = catalog.values().map(|s| s.name.as_str()).collect();
    let brands: Vec<&str> = catalog.values().map(|s| s.brand_name.as_str()).collect();
    let prices: Vec<i64> = catalog.values().map(|s| s.price).collect();
    let versions: Vec<i64> = catalog.values().map(|s| s.version).collect();
    diesel::sql_query(
        "INSERT INTO product_catalog AS c (product_id, name, brand_name, price, version)
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])
         ON CONFLICT (product_id) DO UPDATE SET
             name = EXCLUDED.name, brand_name = EXCLUDED.brand_name, price = EXCLUDED.price,
             version = EXCLUDED.version, updated_at = now()
         WHERE c.version < EXCLUDED.version",
    )
    .bind::<Array<BigInt>, _>(&ids)
    .bind::<Array<Text>, _>(&names)
    .bind::<Array<Text>, _>(&brands)
    .bind::<Array<BigInt>, _>(&prices)
    .bind::<Array<BigInt>, _>(&versions)
    .execute(conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use commerce_events::{OrderCancelled, OrderPlaced};

    fn paid(lines: Vec<OrderLine>) -> Envelope {
        Envelope::new(Event::OrderPaid(OrderPlaced {
            order_id: 1,
            user_id: 1,
            lines,
            total_amount: 0,
            discount_amount: 0,
            final_amount: 0,
            payment_method: "POINT".into(),
        }))
    }

    #[test]
    fn a_paid_order_counts_once_per_product_with_quantity_and_amount() {
        let e = paid(vec![
            OrderLine {
                product_id: 5,
                quantity: 2,
                unit_price: 100,
            },
            OrderLine {
                product_id: 5,
                quantity: 1,
                unit_price: 100,
            },
            OrderLine {
                product_id: 6,
                quantity: 1,
                unit_price: 50,
            },
        ]);
        let fx = effects(&e, chrono_tz::Asia::Seoul);
        assert_eq!(fx.len(), 2);
        assert_eq!(
            fx[0].2,
            Delta {
                orders: 1,
                quantity: 3,
                amount: 300,
                ..Delta::default()
            }
        );
    }

    #[test]
    fn a_cancelled_paid_order_subtracts_on_the_day_it_was_paid() {
        let paid_at = "2026-11-20T16:00:00Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap(); // 01:00 on the 21st in Seoul
        let e = Envelope::new(Event::OrderCancelled(OrderCancelled {
            order_id: 1,
            user_id: 1,
            lines: vec![OrderLine {
                product_id: 5,
                quantity: 2,
                unit_price: 100,
            }],
            was_paid: true,
            paid_at: Some(paid_at),
        }));
        let fx = effects(&e, chrono_tz::Asia::Seoul);
        assert_eq!(fx[0].0, NaiveDate::from_ymd_opt(2026, 11, 21).unwrap());
        assert_eq!(
            fx[0].2,
            Delta {
                orders: -1,
                quantity: -2,
                amount: -200,
                ..Delta::default()
            }
        );
    }

    #[test]
    fn order_created_alone_is_not_a_sale() {
        let Event::OrderPaid(o) = paid(vec![OrderLine {
            product_id: 5,
            quantity: 1,
            unit_price: 1,
        }])
        .event
        else {
            unreachable!()
        };
        assert!(effects(&Envelope::new(Event::OrderCreated(o)), chrono_tz::UTC).is_empty());
    }

    #[test]
    fn payment_events_are_not_sales() {
        let settled = commerce_events::PaymentSettled {
            order_id: 1,
            user_id: 1,
            amount: 100,
            payment_method: "CARD".into(),
            transaction_key: Some("20261121:TR:9577c5".into()),
            reason: Some("limit exceeded".into()),
            lines: vec![OrderLine {
                product_id: 5,
                quantity: 1,
                unit_price: 100,
            }],
        };
        for event in [
            Event::PaymentFailed(settled.clone()),
            Event::PaymentCompleted(settled),
        ] {
            assert!(effects(&Envelope::new(event), chrono_tz::UTC).is_empty());
        }
    }
}
