//! Applying a batch of events: exactly once in effect.
//!
//! One statement per batch (so one round trip and one transaction):
//! 1. the batch's event ids go into `event_handled` (`ON CONFLICT DO NOTHING RETURNING`), which
//!    tells which events are new, whichever group applied them before ([`crate::dedupe`]);
//! 2. the effects of every event, computed in memory, are sent along as columns, and only the
//!    new events' are summed into one set-based upsert of the daily figures (and of partner
//!    sales and the catalog projection);
//! 3. the statement commits. The caller stores Kafka offsets only after this returns.
//!
//! The all-time, weekly and monthly figures follow the daily ones within about a second: they
//! are folded from them, exactly once, by [`crate::fold`].
//!
//! A redelivered event (after a crash, a rebalance or a relay re-publish) is already in
//! `event_handled`, so it changes nothing. The fold is order-insensitive (sums, and
//! version-guarded snapshots), so events that arrive out of order give the same result.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use commerce_events::{Envelope, Event, OrderLine};
use diesel::sql_types::{Array, BigInt, Date, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// Counter deltas.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delta {
    pub views: i64,
    pub likes: i64,
    pub orders: i64,
    pub quantity: i64,
    pub amount: i64,
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

/// Taken shared by every batch and every fold, and exclusively by a rollup recomputing a week or
/// month: the rollup folds what is pending and recomputes from daily figures that do not move
/// while it runs, so the week or month it writes is exactly the sum of its days.
pub const PERIOD_LOCK: commerce_db::XactLock =
    commerce_db::XactLock::named("commerce-collector:period-figures");

/// Whether an event's figures can be computed (they fit in 64 bits): the error says why not.
pub fn check(envelope: &Envelope, tz: Tz) -> Result<(), String> {
    effects(envelope, tz).map(drop)
}

/// The effect of one event: deltas keyed by (business date, product).
fn effects(envelope: &Envelope, tz: Tz) -> Result<Vec<(NaiveDate, i64, Delta)>, String> {
    let day = business_date(envelope.occurred_at, tz);
    let sale = |lines: &[OrderLine], sign: i64, day: NaiveDate| {
        // One order counts once per product even if it had several lines of it.
        let mut per_product: BTreeMap<i64, Delta> = BTreeMap::new();
        for line in lines {
            let d = per_product.entry(line.product_id).or_default();
            d.orders = sign;
            let quantity = sign.checked_mul(line.quantity);
            let amount = quantity.and_then(|q| q.checked_mul(line.unit_price));
            match (
                quantity.and_then(|q| d.quantity.checked_add(q)),
                amount.and_then(|a| d.amount.checked_add(a)),
            ) {
                (Some(q), Some(a)) => (d.quantity, d.amount) = (q, a),
                _ => {
                    return Err(format!(
                        "the sale of product {} overflows 64-bit figures",
                        line.product_id
                    ));
                }
            }
        }
        Ok(per_product
            .into_iter()
            .map(|(p, d)| (day, p, d))
            .collect::<Vec<_>>())
    };
    Ok(match &envelope.event {
        Event::ProductViewed(v) => vec![(
            day,
            v.product_id,
            Delta {
                views: i64::from(v.count),
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
        Event::OrderPaid(o) => sale(&o.lines, 1, day)?,
        // A cancelled sale is subtracted from the business day it was paid on, so a day's
        // figures stay the sales that day kept.
        Event::OrderCancelled(c) if c.was_paid => sale(
            &c.lines,
            -1,
            c.paid_at.map_or(day, |p| business_date(p, tz)),
        )?,
        // Only `OrderPaid` is a sale: a failed card payment never produced one, and a completed
        // one is counted from the `OrderPaid` committed with it. A refund subtracts nothing: a
        // refunded sale was subtracted once, by its cancellation, and the other refunds (a second
        // charge, a charge of a closed order) were never sales.
        Event::OrderCancelled(_)
        | Event::PaymentCompleted(_)
        | Event::PaymentFailed(_)
        | Event::PaymentRefunded(_)
        | Event::PartnerOrderChanged(_)
        | Event::SettlementCompleted(_)
        | Event::OrderCreated(_)
        | Event::ProductCreated(_)
        | Event::ProductUpdated(_) => Vec::new(),
    })
}

/// Applies `events` for `group` in one transaction.
pub async fn apply_batch(
    conn: &mut AsyncPgConnection,
    group: &str,
    events: &[Envelope],
    tz: Tz,
) -> anyhow::Result<Applied> {
    let mut ids: Vec<(Uuid, DateTime<Utc>)> = events
        .iter()
        .map(|e| {
            crate::dedupe::recorded_at(e)
                .map(|at| (e.event_id, at))
                .ok_or_else(|| anyhow::anyhow!("event {} has no UUIDv7 id", e.event_id))
        })
        .collect::<anyhow::Result<_>>()?;
    ids.sort_unstable();
    ids.dedup();
    let (ids, recorded): (Vec<Uuid>, Vec<DateTime<Utc>>) = ids.into_iter().unzip();
    // Every event's effects, keyed by its id; the statement keeps those of the new ones.
    let mut fx = Effects::default();
    let mut partner_fx = PartnerEffects::default();
    let mut snapshots = Snapshots::default();
    let mut seen = BTreeSet::new();
    for envelope in events {
        if !seen.insert(envelope.event_id) {
            continue;
        }
        for (day, product, d) in effects(envelope, tz).map_err(anyhow::Error::msg)? {
            fx.push(envelope.event_id, day, product, d);
        }
        if let Event::ProductCreated(s) | Event::ProductUpdated(s) = &envelope.event {
            snapshots.push(envelope.event_id, s);
        }
        if let Some(sale) = confirmed_sale(envelope, tz) {
            partner_fx.push(envelope.event_id, sale);
        }
    }
    #[derive(diesel::QueryableByName)]
    struct New {
        #[diesel(sql_type = SqlUuid)]
        event_id: Uuid,
    }
    let statement = || BatchStatement {
        group,
        ids: &ids,
        recorded: &recorded,
        fx: &fx,
        partner_fx: &partner_fx,
        snapshots: &snapshots,
    };
    let new: Vec<New> = match statement().load(conn).await {
        Err(e) if missing_partition(&e) => {
            // The first event of a new day (the daily job creates them ahead, so rarely).
            let days: BTreeSet<NaiveDate> = recorded.iter().map(|at| at.date_naive()).collect();
            crate::dedupe::ensure_partitions(conn, days).await?;
            statement().load(conn).await?
        }
        result => result?,
    };
    let new: BTreeSet<Uuid> = new.into_iter().map(|n| n.event_id).collect();

    let mut applied = Applied::default();
    let mut counted = BTreeSet::new();
    for envelope in events {
        if !new.contains(&envelope.event_id) || !counted.insert(envelope.event_id) {
            applied.duplicates += 1;
            continue;
        }
        applied.applied += 1;
        metrics::counter!("collector_events_applied_total", "event_type" => envelope.event_type().as_str())
            .increment(1);
        match &envelope.event {
            Event::OrderPaid(paid) => {
                metrics::counter!("sales_revenue_won_total", "payment_method" => paid.payment_method.as_str())
                    .increment(paid.final_amount.max(0) as u64);
            }
            Event::PaymentRefunded(refund) => {
                metrics::counter!("sales_refunded_won_total")
                    .increment(refund.amount.max(0) as u64);
            }
            Event::PartnerOrderChanged(_) => {
                if let Some(sale) = confirmed_sale(envelope, tz) {
                    metrics::counter!("partner_orders_confirmed_total").increment(1);
                    metrics::counter!("partner_confirmed_gmv_won_total")
                        .increment(sale.gmv.max(0) as u64);
                }
            }
            _ => {}
        }
        let age = (chrono::Utc::now() - envelope.occurred_at).num_milliseconds();
        metrics::histogram!("collector_event_age_seconds").record(age.max(0) as f64 / 1000.0);
    }
    if applied.duplicates > 0 {
        metrics::counter!("collector_events_duplicate_total").increment(applied.duplicates as u64);
    }
    applied.touched = fx
        .event_ids
        .iter()
        .zip(fx.days.iter().zip(&fx.products))
        .filter(|(id, _)| new.contains(id))
        .map(|(_, (day, product))| (*day, *product))
        .collect();
    Ok(applied)
}

/// A batch in one statement, so in one round trip and one implicit transaction: the dedupe
/// rows, then (only for the events that were new) the daily figures, partner sales and the
/// catalog projection. It takes [`PERIOD_LOCK`] shared first. Each upsert feeds its rows in key
/// order, so concurrent batches (and the fold) lock rows in one order and cannot deadlock.
pub static BATCH_SQL: LazyLock<String> = LazyLock::new(|| {
    // Only the days: the fold carries them into all-time, weeks and months.
    let upserts = "daily AS (
    INSERT INTO product_metrics_daily AS m
           (business_date, product_id, view_count, like_count, order_count, sales_quantity,
            sales_amount)
    SELECT day, product_id, sum(v), sum(l), sum(o), sum(q), sum(a) FROM fx
     GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (business_date, product_id) DO UPDATE SET
        view_count = m.view_count + EXCLUDED.view_count,
        like_count = m.like_count + EXCLUDED.like_count,
        order_count = m.order_count + EXCLUDED.order_count,
        sales_quantity = m.sales_quantity + EXCLUDED.sales_quantity,
        sales_amount = m.sales_amount + EXCLUDED.sales_amount,
        updated_at = now()
),
";
    format!(
        "
WITH lock AS (SELECT pg_advisory_xact_lock_shared($17)),
new AS (
    INSERT INTO event_handled (event_id, recorded_at, consumer_group)
    SELECT id, at, $1 FROM unnest($2::uuid[], $18::timestamptz[]) AS t(id, at), lock
    ON CONFLICT DO NOTHING
    RETURNING event_id
),
fx AS (
    SELECT f.* FROM unnest($3::uuid[], $4::date[], $5::bigint[], $6::bigint[], $7::bigint[],
                           $8::bigint[], $9::bigint[], $10::bigint[])
             AS f(event_id, day, product_id, v, l, o, q, a)
     WHERE f.event_id IN (SELECT event_id FROM new)
),
{upserts}partner_fx AS (
    SELECT f.* FROM unnest($19::uuid[], $20::date[], $21::bigint[], $22::bigint[], $23::bigint[],
                           $24::bigint[])
             AS f(event_id, day, partner_id, o, g, p)
     WHERE f.event_id IN (SELECT event_id FROM new)
),
partners AS (
    INSERT INTO partner_sales AS m (period, period_start, partner_id, confirmed_orders, gmv,
                                    paid_amount)
    SELECT period, start, partner_id, sum(o), sum(g), sum(p) FROM (
        SELECT 'daily' AS period, day AS start, partner_id, o, g, p FROM partner_fx
        UNION ALL
        SELECT 'weekly', date_trunc('week', day)::date, partner_id, o, g, p FROM partner_fx
        UNION ALL
        SELECT 'monthly', date_trunc('month', day)::date, partner_id, o, g, p FROM partner_fx
    ) x
     GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (period, period_start, partner_id) DO UPDATE SET
        confirmed_orders = m.confirmed_orders + EXCLUDED.confirmed_orders,
        gmv = m.gmv + EXCLUDED.gmv,
        paid_amount = m.paid_amount + EXCLUDED.paid_amount,
        updated_at = now()
),
catalog AS (
    INSERT INTO product_catalog AS c (product_id, name, brand_name, price, version)
    SELECT DISTINCT ON (s.product_id) s.product_id, s.name, s.brand_name, s.price, s.version
      FROM unnest($11::uuid[], $12::bigint[], $13::text[], $14::text[], $15::bigint[], $16::bigint[])
           AS s(event_id, product_id, name, brand_name, price, version)
     WHERE s.event_id IN (SELECT event_id FROM new)
     ORDER BY s.product_id, s.version DESC
    ON CONFLICT (product_id) DO UPDATE SET
        name = EXCLUDED.name, brand_name = EXCLUDED.brand_name, price = EXCLUDED.price,
        version = EXCLUDED.version, updated_at = now()
    WHERE c.version < EXCLUDED.version
)
SELECT event_id FROM new"
    )
});

/// [`BATCH_SQL`] with its parameters, as a query diesel prepares once per connection and then
/// reuses (diesel never caches `sql_query`'s statements; this one is keyed by its SQL, which is
/// fixed): a batch costs one Bind/Execute round trip, with no parse and no planning.
struct BatchStatement<'a> {
    group: &'a str,
    ids: &'a [Uuid],
    recorded: &'a [DateTime<Utc>],
    fx: &'a Effects,
    partner_fx: &'a PartnerEffects,
    snapshots: &'a Snapshots<'a>,
}

/// `sql` split at its `$n` placeholders: each piece of text, then the number of the parameter
/// that follows it (none after the last).
pub fn placeholders(sql: &str) -> Vec<(&str, Option<u8>)> {
    let mut pieces = Vec::new();
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        let digits = rest[at + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len() - at - 1);
        let n = rest[at + 1..at + 1 + digits]
            .parse()
            .expect("a placeholder is $ and a number");
        pieces.push((&rest[..at], Some(n)));
        rest = &rest[at + 1 + digits..];
    }
    pieces.push((rest, None));
    pieces
}

/// [`BATCH_SQL`] split at its placeholders. Diesel numbers parameters in the order they are
/// pushed, so each is pushed where its placeholder stands.
static BATCH_PIECES: LazyLock<Vec<(&'static str, Option<u8>)>> =
    LazyLock::new(|| placeholders(BATCH_SQL.as_str()));

impl diesel::query_builder::QueryFragment<diesel::pg::Pg> for BatchStatement<'_> {
    fn walk_ast<'b>(
        &'b self,
        mut out: diesel::query_builder::AstPass<'_, 'b, diesel::pg::Pg>,
    ) -> diesel::QueryResult<()> {
        let (fx, s, pf) = (self.fx, self.snapshots, self.partner_fx);
        for (sql, param) in BATCH_PIECES.iter() {
            out.push_sql(sql);
            match param {
                None => {}
                Some(1) => out.push_bind_param::<Text, _>(&self.group)?,
                Some(2) => out.push_bind_param::<Array<SqlUuid>, _>(&self.ids)?,
                Some(3) => out.push_bind_param::<Array<SqlUuid>, _>(&fx.event_ids)?,
                Some(4) => out.push_bind_param::<Array<Date>, _>(&fx.days)?,
                Some(5) => out.push_bind_param::<Array<BigInt>, _>(&fx.products)?,
                Some(6) => out.push_bind_param::<Array<BigInt>, _>(&fx.views)?,
                Some(7) => out.push_bind_param::<Array<BigInt>, _>(&fx.likes)?,
                Some(8) => out.push_bind_param::<Array<BigInt>, _>(&fx.orders)?,
                Some(9) => out.push_bind_param::<Array<BigInt>, _>(&fx.quantities)?,
                Some(10) => out.push_bind_param::<Array<BigInt>, _>(&fx.amounts)?,
                Some(11) => out.push_bind_param::<Array<SqlUuid>, _>(&s.event_ids)?,
                Some(12) => out.push_bind_param::<Array<BigInt>, _>(&s.products)?,
                Some(13) => out.push_bind_param::<Array<Text>, _>(&s.names)?,
                Some(14) => out.push_bind_param::<Array<Text>, _>(&s.brands)?,
                Some(15) => out.push_bind_param::<Array<BigInt>, _>(&s.prices)?,
                Some(16) => out.push_bind_param::<Array<BigInt>, _>(&s.versions)?,
                Some(17) => out.push_bind_param::<BigInt, _>(&PERIOD_LOCK_KEY)?,
                Some(18) => out.push_bind_param::<Array<Timestamptz>, _>(&self.recorded)?,
                Some(19) => out.push_bind_param::<Array<SqlUuid>, _>(&pf.event_ids)?,
                Some(20) => out.push_bind_param::<Array<Date>, _>(&pf.days)?,
                Some(21) => out.push_bind_param::<Array<BigInt>, _>(&pf.partners)?,
                Some(22) => out.push_bind_param::<Array<BigInt>, _>(&pf.orders)?,
                Some(23) => out.push_bind_param::<Array<BigInt>, _>(&pf.gmv)?,
                Some(24) => out.push_bind_param::<Array<BigInt>, _>(&pf.paid)?,
                Some(n) => unreachable!("BATCH_SQL has no parameter ${n}"),
            }
        }
        Ok(())
    }
}

const PERIOD_LOCK_KEY: i64 = PERIOD_LOCK.key();

impl diesel::query_builder::QueryId for BatchStatement<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl diesel::query_builder::Query for BatchStatement<'_> {
    type SqlType = diesel::sql_types::Untyped;
}

/// Whether a statement failed because `event_handled` has no partition for a row yet.
fn missing_partition(e: &diesel::result::Error) -> bool {
    matches!(
        e,
        diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::CheckViolation, info)
            if info.message().starts_with("no partition of relation")
    )
}

/// Effects of a batch's events as columns: (event, day, product, deltas).
#[derive(Default)]
struct Effects {
    event_ids: Vec<Uuid>,
    days: Vec<NaiveDate>,
    products: Vec<i64>,
    views: Vec<i64>,
    likes: Vec<i64>,
    orders: Vec<i64>,
    quantities: Vec<i64>,
    amounts: Vec<i64>,
}

impl Effects {
    fn push(&mut self, event: Uuid, day: NaiveDate, product: i64, d: Delta) {
        self.event_ids.push(event);
        self.days.push(day);
        self.products.push(product);
        self.views.push(d.views);
        self.likes.push(d.likes);
        self.orders.push(d.orders);
        self.quantities.push(d.quantity);
        self.amounts.push(d.amount);
    }
}

/// A purchase confirmation, as partner sales count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfirmedSale {
    /// The business day of the confirmation.
    pub day: NaiveDate,
    pub partner_id: i64,
    /// The partner order's lines (gross merchandise value).
    pub gmv: i64,
    /// What was paid for it: its lines less its share of the discount.
    pub paid: i64,
}

/// The sale a `PartnerOrderChanged` to `PURCHASE_CONFIRMED` counts, on the business day of its
/// instant; nothing for any other event.
pub fn confirmed_sale(envelope: &Envelope, tz: Tz) -> Option<ConfirmedSale> {
    match &envelope.event {
        Event::PartnerOrderChanged(p) if p.to == "PURCHASE_CONFIRMED" => Some(ConfirmedSale {
            day: business_date(p.at, tz),
            partner_id: p.partner_id,
            gmv: p.items_total,
            paid: p.items_total - p.discount_share,
        }),
        _ => None,
    }
}

/// Partner sales of a batch's events as columns.
#[derive(Default)]
struct PartnerEffects {
    event_ids: Vec<Uuid>,
    days: Vec<NaiveDate>,
    partners: Vec<i64>,
    orders: Vec<i64>,
    gmv: Vec<i64>,
    paid: Vec<i64>,
}

impl PartnerEffects {
    fn push(&mut self, event: Uuid, sale: ConfirmedSale) {
        self.event_ids.push(event);
        self.days.push(sale.day);
        self.partners.push(sale.partner_id);
        self.orders.push(1);
        self.gmv.push(sale.gmv);
        self.paid.push(sale.paid);
    }
}

/// Catalog snapshots of a batch's events as columns.
#[derive(Default)]
struct Snapshots<'a> {
    event_ids: Vec<Uuid>,
    products: Vec<i64>,
    names: Vec<&'a str>,
    brands: Vec<&'a str>,
    prices: Vec<i64>,
    versions: Vec<i64>,
}

impl<'a> Snapshots<'a> {
    fn push(&mut self, event: Uuid, s: &'a commerce_events::ProductSnapshot) {
        self.event_ids.push(event);
        self.products.push(s.product_id);
        self.names.push(&s.name);
        self.brands.push(&s.brand_name);
        self.prices.push(s.price);
        self.versions.push(s.version);
    }
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
            payment_method: commerce_events::PaymentKind::Point,
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
        let fx = effects(&e, chrono_tz::Asia::Seoul).unwrap();
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
        let fx = effects(&e, chrono_tz::Asia::Seoul).unwrap();
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
    fn a_sale_whose_figures_overflow_is_refused_not_wrapped() {
        let e = paid(vec![OrderLine {
            product_id: 5,
            quantity: 3,
            unit_price: i64::MAX / 2,
        }]);
        let err = check(&e, chrono_tz::UTC).unwrap_err();
        assert!(err.contains("product 5"), "{err}");
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
        assert!(
            effects(&Envelope::new(Event::OrderCreated(o)), chrono_tz::UTC)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn payment_events_are_not_sales() {
        let settled = commerce_events::PaymentSettled {
            order_id: 1,
            user_id: 1,
            amount: 100,
            payment_method: commerce_events::PaymentKind::Card,
            transaction_key: Some("20261121:TR:9577c5".into()),
            reason: Some("limit exceeded".into()),
            lines: vec![OrderLine {
                product_id: 5,
                quantity: 1,
                unit_price: 100,
            }],
        };
        let refunded = commerce_events::PaymentRefunded {
            order_id: 1,
            user_id: 1,
            amount: 100,
            transaction_key: "20261121:TR:9577c5".into(),
            refund_key: "20261121:RF:0a1b2c".into(),
            cause: commerce_events::RefundCause::OrderCancelled,
        };
        for event in [
            Event::PaymentFailed(settled.clone()),
            Event::PaymentCompleted(settled),
            Event::PaymentRefunded(refunded),
        ] {
            assert!(
                effects(&Envelope::new(event), chrono_tz::UTC)
                    .unwrap()
                    .is_empty()
            );
        }
    }
}
