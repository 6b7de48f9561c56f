//! Placing an order: one transaction (see the module documentation of [`super`]).

use std::collections::BTreeMap;

use chrono::{SubsecRound, Utc};
use commerce_db::idempotency::{self, Replay};
use commerce_events::{Event, OrderLine, OrderPlaced};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::domain::card::CardVault;
use crate::domain::partner_orders::{self, PartnerOrderStatus, SplitLine};
use crate::domain::payments::{self};
use crate::domain::states::{CouponStatus, LedgerKind, OrderStatus, PaymentMethod};
use crate::domain::{Error, Missing, Result, coupons};
use crate::infra::outbox::{self, Topics};
use crate::infra::schema::{
    coupons as coupon_terms, orders, point_ledger, products, user_coupons, users,
};

use super::{OrderItemView, OrderRequest, OrderRow, OrderView, order_columns, order_view};

/// What placing an order did.
#[derive(Debug)]
pub enum Placed {
    /// A new order; a card order's payment still has to be submitted.
    Created(OrderView),
    /// The idempotency key's earlier order, unchanged.
    Replayed(OrderView),
}

/// What placing an order needs besides a connection.
pub struct Placement<'a> {
    pub topics: &'a Topics,
    pub cards: &'a CardVault,
    /// When reconciliation first looks at a pending card payment.
    pub recheck_after: std::time::Duration,
    /// Longest the placing transaction may take (`ORDER_TIMEOUT_MS`: [`super::deadline`]).
    pub timeout: std::time::Duration,
}

impl<'a> Placement<'a> {
    /// What card payments use (their topics, vault and first recheck), and the time placing
    /// may take.
    pub fn of(payments: &'a payments::Payments, timeout: std::time::Duration) -> Self {
        Self {
            topics: &payments.topics,
            cards: &payments.cards,
            recheck_after: payments.settings.recheck_after,
            timeout,
        }
    }
}

/// Places an order for `user_id` in one transaction on `conn`.
#[tracing::instrument(name = "order.place", skip_all, fields(user.id = user_id))]
pub async fn place(
    conn: &mut AsyncPgConnection,
    ctx: &Placement<'_>,
    user_id: i64,
    req: &OrderRequest,
    key: Option<&str>,
) -> Result<Placed> {
    let hash = req.hash();
    // Cheap refusal of sold-out products before taking any row lock: stock only grows through
    // cancellations and admin edits, so an unlocked read that shows too little is final enough
    // to refuse without queueing behind the orders holding the row.
    if key.is_none() {
        precheck_stock(conn, &req.lines).await?;
    }
    let started = std::time::Instant::now();
    let placed = conn
        .transaction::<_, Error, _>(async |conn| {
            super::deadline::arm(conn, ctx.timeout).await?;
            super::deadline::within(ctx.timeout, placing(conn, ctx, user_id, req, key, &hash)).await
        })
        .await
        .map_err(|e| super::deadline::timed_out(e, started, ctx.timeout))?;
    if let Placed::Created(order) = &placed {
        tracing::info!(
            order.id = order.order_id,
            user.id = user_id,
            amount = order.final_amount,
            payment_method = %order.payment_method,
            "order placed"
        );
        metrics::counter!("orders_placed_total", "payment_method" => order.payment_method.as_str())
            .increment(1);
    }
    Ok(placed)
}

/// The placing transaction's body: an idempotency key's earlier order, or a new one.
async fn placing(
    conn: &mut AsyncPgConnection,
    ctx: &Placement<'_>,
    user_id: i64,
    req: &OrderRequest,
    key: Option<&str>,
    hash: &str,
) -> Result<Placed> {
    if let Some(key) = key {
        let earlier = async |conn: &mut AsyncPgConnection| {
            orders::table
                .filter(orders::user_id.eq(user_id))
                .filter(orders::idempotency_key.eq(key))
                .select(order_columns())
                .first::<OrderRow>(conn)
                .await
                .optional()
                .map(|o| o.map(|o| (o.request_hash.clone(), o)))
        };
        match idempotency::lock_and_find(conn, "", user_id, key, hash, earlier).await? {
            Replay::New => {}
            Replay::Same(existing) => {
                return Ok(Placed::Replayed(order_view(conn, existing).await?));
            }
            Replay::Reused => return Err(Error::IdempotencyKeyReused),
        }
    }
    create(conn, ctx, user_id, req, key, hash)
        .await
        .map(Placed::Created)
}

fn refused(error: Error) -> Error {
    let reason = match &error {
        Error::InsufficientStock => "INSUFFICIENT_STOCK",
        Error::InsufficientPoints => "INSUFFICIENT_POINTS",
        Error::PurchaseLimitExceeded => "PURCHASE_LIMIT_EXCEEDED",
        Error::ProductNotOnSale => "PRODUCT_NOT_ON_SALE",
        _ => "OTHER",
    };
    metrics::counter!("orders_refused_total", "reason" => reason).increment(1);
    error
}

async fn precheck_stock(conn: &mut AsyncPgConnection, lines: &BTreeMap<i64, i64>) -> Result<()> {
    let ids: Vec<i64> = lines.keys().copied().collect();
    let stocks: Vec<(i64, i64)> = products::table
        .filter(products::id.eq_any(&ids))
        .select((products::id, products::stock))
        .load(conn)
        .await?;
    if stocks.len() != ids.len() {
        return Err(Error::NotFound(Missing::Product));
    }
    if stocks.iter().any(|(id, stock)| stock < &lines[id]) {
        return Err(refused(Error::InsufficientStock));
    }
    Ok(())
}

#[derive(QueryableByName)]
struct LockedProduct {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    price: i64,
    #[diesel(sql_type = BigInt)]
    stock: i64,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Integer>)]
    max_per_user: Option<i32>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    sale_starts_at: Option<chrono::DateTime<chrono::Utc>>,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    sale_ends_at: Option<chrono::DateTime<chrono::Utc>>,
    #[diesel(sql_type = BigInt)]
    partner_id: i64,
    /// Its partner is suspended: not on sale.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    suspended: bool,
}

#[derive(diesel::QueryableByName)]
struct Held {
    #[diesel(sql_type = BigInt)]
    product_id: i64,
    #[diesel(sql_type = BigInt)]
    held: i64,
}

/// Refuses an order for a product outside its sale window or of a suspended partner, or one that would take the user
/// above a product's `max_per_user` counting their standing (pending or paid) orders. Runs
/// under the products' row locks, which every order for them takes: two orders of one user for
/// one limited product are counted one after the other, never both against the same total.
async fn check_drop_rules(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    locked: &[LockedProduct],
    lines: &BTreeMap<i64, i64>,
) -> Result<()> {
    let now = chrono::Utc::now();
    if locked.iter().any(|p| {
        p.suspended
            || p.sale_starts_at.is_some_and(|starts| now < starts)
            || p.sale_ends_at.is_some_and(|ends| now >= ends)
    }) {
        return Err(refused(Error::ProductNotOnSale));
    }
    let limited: Vec<i64> = locked
        .iter()
        .filter(|p| p.max_per_user.is_some())
        .map(|p| p.id)
        .collect();
    if limited.is_empty() {
        return Ok(());
    }
    let held: Vec<Held> = diesel::sql_query(
        "SELECT i.product_id, sum(i.quantity)::bigint AS held
           FROM orders o JOIN order_items i ON i.order_id = o.id
          WHERE o.user_id = $1 AND i.product_id = ANY($2)
            AND o.status IN ($3, $4)
          GROUP BY i.product_id",
    )
    .bind::<BigInt, _>(user_id)
    .bind::<Array<BigInt>, _>(&limited)
    // What the customer holds: orders not closed.
    .bind::<Text, _>(OrderStatus::PendingPayment)
    .bind::<Text, _>(OrderStatus::Paid)
    .load(conn)
    .await?;
    for p in locked {
        let Some(max) = p.max_per_user else { continue };
        let already = held
            .iter()
            .find(|h| h.product_id == p.id)
            .map_or(0, |h| h.held);
        if already + lines[&p.id] > i64::from(max) {
            return Err(refused(Error::PurchaseLimitExceeded));
        }
    }
    Ok(())
}

/// The transactional body of placing an order.
async fn create(
    conn: &mut AsyncPgConnection,
    ctx: &Placement<'_>,
    user_id: i64,
    req: &OrderRequest,
    key: Option<&str>,
    hash: &str,
) -> Result<OrderView> {
    let lines = &req.lines;
    let ids: Vec<i64> = lines.keys().copied().collect();
    let quantities: Vec<i64> = lines.values().copied().collect();
    // Lock in product-id order: every transaction takes these locks in the same order. The
    // partner's row is read, not locked: a suspension racing this order may let it through.
    let locked: Vec<LockedProduct> = diesel::sql_query(
        "SELECT p.id, p.price, p.stock, p.max_per_user, p.sale_starts_at, p.sale_ends_at,
                p.partner_id, pa.status = 'SUSPENDED' AS suspended
           FROM products p JOIN partners pa ON pa.id = p.partner_id
          WHERE p.id = ANY($1) ORDER BY p.id FOR UPDATE OF p",
    )
    .bind::<Array<BigInt>, _>(&ids)
    .load(conn)
    .await?;
    if locked.len() != ids.len() {
        return Err(Error::NotFound(Missing::Product));
    }
    check_drop_rules(conn, user_id, &locked, lines).await?;
    if locked.iter().any(|p| p.stock < lines[&p.id]) {
        return Err(refused(Error::InsufficientStock));
    }

    let items: Vec<OrderItemView> = locked
        .iter()
        .map(|p| OrderItemView {
            product_id: p.id,
            quantity: lines[&p.id],
            unit_price: p.price,
        })
        .collect();
    let total: i64 = items.iter().map(|i| i.quantity * i.unit_price).sum();

    let discount = match req.user_coupon_id {
        Some(uc) => use_coupon(conn, user_id, uc, total).await?,
        None => 0,
    };
    let final_amount = total - discount;
    // A card order waits for the gateway; one the coupon paid in full has nothing to wait for.
    let (card, points_used) = match &req.payment {
        PaymentMethod::Card { card_type, card_no } => {
            ((final_amount > 0).then_some((*card_type, card_no)), 0)
        }
        PaymentMethod::Point => (None, final_amount),
    };
    let status = if card.is_some() {
        OrderStatus::PendingPayment
    } else {
        OrderStatus::Paid
    };

    // One instant for the column and the events: every consumer dates the sale by it, and a
    // cancellation (which carries `paid_at`) subtracts from the same business day.
    let now = Utc::now().trunc_subsecs(6);
    let paid_at = (status == OrderStatus::Paid).then_some(now);

    // The writes that need only the locks taken above, sent together (pipelined: one round
    // trip; the server runs them one after the other, and a refusal rolls all of them back):
    // the stock taken, the points spent, the order row.
    let shared: &AsyncPgConnection = conn;
    let stock = diesel::sql_query(
        "UPDATE products p SET stock = p.stock - l.quantity
           FROM unnest($1::bigint[], $2::bigint[]) AS l(id, quantity)
          WHERE p.id = l.id",
    )
    .bind::<Array<BigInt>, _>(&ids)
    .bind::<Array<BigInt>, _>(&quantities)
    .execute(&mut &*shared);
    let points = async {
        if points_used == 0 {
            return Ok(true);
        }
        diesel::update(
            users::table
                .find(user_id)
                .filter(users::point_balance.ge(points_used)),
        )
        .set(users::point_balance.eq(users::point_balance - points_used))
        .execute(&mut &*shared)
        .await
        .map(|paid| paid == 1)
    };
    let order = diesel::insert_into(orders::table)
        .values((
            orders::user_id.eq(user_id),
            orders::status.eq(status),
            orders::total_amount.eq(total),
            orders::discount_amount.eq(discount),
            orders::final_amount.eq(final_amount),
            orders::points_used.eq(points_used),
            orders::user_coupon_id.eq(req.user_coupon_id),
            orders::payment_method.eq(req.payment.kind()),
            orders::idempotency_key.eq(key),
            orders::request_hash.eq(hash),
            orders::paid_at.eq(paid_at),
        ))
        .returning(order_columns())
        .get_result::<OrderRow>(&mut &*shared);
    let (_, paid, order) = futures::try_join!(stock, points, order)?;
    if !paid {
        return Err(refused(Error::InsufficientPoints));
    }
    let payment = match card {
        Some((card_type, card_no)) => Some(
            payments::open(
                conn,
                ctx.cards,
                ctx.recheck_after,
                order.id,
                user_id,
                final_amount,
                card_type,
                card_no,
            )
            .await?,
        ),
        None => None,
    };
    // One partner order per partner present, with its lines and shares.
    let split_lines: Vec<SplitLine> = locked
        .iter()
        .map(|p| SplitLine {
            product_id: p.id,
            partner_id: p.partner_id,
            quantity: lines[&p.id],
            unit_price: p.price,
        })
        .collect();
    let parts = partner_orders::split(&split_lines, discount, points_used);
    let partner_status = match status {
        OrderStatus::PendingPayment => PartnerOrderStatus::PendingPayment,
        _ => PartnerOrderStatus::Paid,
    };
    let recorded = partner_orders::record(
        conn,
        order.id,
        &split_lines,
        &parts,
        partner_status,
        paid_at,
        payment.as_ref().map(|(id, _)| *id),
    )
    .await?;
    let payment = payment.map(|(_, view)| view);
    let placed = OrderPlaced {
        order_id: order.id,
        user_id,
        lines: event_lines(&items),
        total_amount: total,
        discount_amount: discount,
        final_amount,
        payment_method: req.payment.kind(),
    };
    let events = match status {
        OrderStatus::PendingPayment => vec![Event::OrderCreated(placed)],
        _ => vec![
            Event::OrderCreated(placed.clone()),
            Event::OrderPaid(placed),
        ],
    };
    // The rest needs only the order's and the partner orders' ids: one more round trip.
    let shared: &AsyncPgConnection = conn;
    let coupon = async {
        if let Some(uc) = req.user_coupon_id {
            diesel::update(user_coupons::table.find(uc))
                .set(user_coupons::order_id.eq(order.id))
                .execute(&mut &*shared)
                .await?;
        }
        Ok(())
    };
    let ledger = async {
        if points_used > 0 {
            diesel::insert_into(point_ledger::table)
                .values((
                    point_ledger::user_id.eq(user_id),
                    point_ledger::amount.eq(-points_used),
                    point_ledger::kind.eq(LedgerKind::Use),
                    point_ledger::order_id.eq(order.id),
                ))
                .execute(&mut &*shared)
                .await?;
        }
        Ok(())
    };
    futures::try_join!(
        recorded.write_lines(shared),
        coupon,
        ledger,
        outbox::record_at(shared, ctx.topics, events, now),
    )?;
    let parts = recorded.views;
    Ok(OrderView {
        order_id: order.id,
        kind: order.kind,
        status: order.status,
        total_amount: total,
        discount_amount: discount,
        final_amount,
        payment_method: order.payment_method,
        user_coupon_id: order.user_coupon_id,
        items,
        fulfilment_status: partner_orders::fulfilment_status(&parts),
        partner_orders: parts,
        payment,
        payment_history: None,
        created_at: order.created_at,
    })
}

fn event_lines(items: &[OrderItemView]) -> Vec<OrderLine> {
    items
        .iter()
        .map(|i| OrderLine {
            product_id: i.product_id,
            quantity: i.quantity,
            unit_price: i.unit_price,
        })
        .collect()
}

/// Marks the caller's coupon used and returns the discount for `total`.
async fn use_coupon(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    user_coupon_id: i64,
    total: i64,
) -> Result<i64> {
    // Lock only the user's coupon row; the coupon's terms never change and stay unlocked, so
    // orders using coupons of one campaign do not queue on its row.
    let locked: Option<(i64, CouponStatus)> = user_coupons::table
        .filter(user_coupons::id.eq(user_coupon_id))
        .filter(user_coupons::user_id.eq(user_id))
        .select((user_coupons::coupon_id, user_coupons::status))
        .for_update()
        .first(conn)
        .await
        .optional()?;
    let Some((coupon_id, status)) = locked else {
        return Err(Error::CouponNotUsable(
            "the coupon does not exist or is not yours",
        ));
    };
    let terms: coupons::Terms = coupon_terms::table
        .find(coupon_id)
        .select(coupons::Terms::as_select())
        .first(conn)
        .await?;
    let now = Utc::now();
    match status {
        CouponStatus::Used => return Err(Error::CouponNotUsable("the coupon has been used")),
        CouponStatus::Available => {}
    }
    if !terms.valid_at(now) {
        return Err(Error::CouponNotUsable("the coupon is not valid now"));
    }
    if total < terms.min_order_amount {
        return Err(Error::CouponNotUsable(
            "the order does not reach the coupon's minimum amount",
        ));
    }
    let discount = terms.discount(total);
    diesel::update(user_coupons::table.find(user_coupon_id))
        .set((
            user_coupons::status.eq(CouponStatus::Used),
            user_coupons::used_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(discount)
}
