//! Orders paid by points or by card: placing, reading, cancelling, and the holds an order keeps.
//!
//! Placing an order is one transaction ([`place`]): stock is locked in product-id order (two
//! orders for the same products cannot deadlock) and decremented, the coupon is used, and then
//! - by points: points are deducted, the order is written as `PAID`, and `OrderCreated` +
//!   `OrderPaid` go into the outbox;
//! - by card: the order is written as `PENDING_PAYMENT` with a `PENDING` payment and
//!   `OrderCreated`; after the commit (holding no connection) the caller sends the payment to
//!   the gateway ([`crate::domain::payments::Payments::submit`]), and the gateway's callback or
//!   reconciliation settles it later.
//!
//! Any failure inside the transaction rolls everything back: nothing changes.
//!
//! Idempotency: with an idempotency key, the key is locked (a transaction-scoped advisory lock
//! on user + key) before anything else, so two racing requests with one key are serialised; the
//! second finds the first's order and returns it (same request), or is refused with
//! [`Error::IdempotencyKeyReused`] when its request differs. The unique
//! (user_id, idempotency_key) constraint backs this up.
//!
//! The holds an order keeps (stock, points, coupon) are given back in one place,
//! [`holds::release`], by a cancellation or a failed payment, under the order's row lock.

use std::collections::BTreeMap;

use chrono::{DateTime, SubsecRound, Utc};
use commerce_db::idempotency::{self, Replay};
use commerce_events::{Event, OrderCancelled, OrderLine, OrderPlaced};
use commerce_web::FieldError;
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::domain::card::{CardNumber, CardVault};
use crate::domain::history::{self, PaymentEvent, PaymentEventKind, Source};
use crate::domain::lifecycle::{Fact, OrderState, Transition, decide};
use crate::domain::payments::{self, PaymentRow, PaymentView};
use crate::domain::states::{
    CardType, CouponStatus, LedgerKind, OrderStatus, PaymentKind, PaymentMethod, PaymentStatus,
};
use crate::domain::{Error, Missing, Result, check, coupons, holds};
use crate::infra::outbox::{self, Topics};
use crate::infra::schema::{
    coupons as coupon_terms, order_items, orders, payments as payment_rows, point_ledger, products,
    user_coupons, users,
};

/// Most lines per order.
pub const MAX_LINES: usize = 50;
/// Most units of one product per order.
pub const MAX_QUANTITY: i64 = 100;

/// A validated order request: merged lines (product id → quantity, in product-id order), the
/// coupon, and how it is paid.
#[derive(Debug)]
pub struct OrderRequest {
    pub lines: BTreeMap<i64, i64>,
    pub user_coupon_id: Option<i64>,
    pub payment: PaymentMethod,
}

impl OrderRequest {
    /// Validates and merges `(product_id, quantity)` lines and the payment's fields.
    pub fn parse(
        items: &[(i64, i64)],
        user_coupon_id: Option<i64>,
        method: &str,
        card_type: Option<&str>,
        card_no: Option<&str>,
    ) -> Result<Self> {
        let mut errors = Vec::new();
        if items.is_empty() || items.len() > MAX_LINES {
            errors.push(FieldError::new(
                "items",
                format!("must have 1-{MAX_LINES} lines"),
            ));
        }
        let mut lines = BTreeMap::new();
        for (i, &(product_id, quantity)) in items.iter().enumerate() {
            if !(1..=MAX_QUANTITY).contains(&quantity) {
                errors.push(FieldError::new(
                    format!("items[{i}].quantity"),
                    format!("must be 1-{MAX_QUANTITY}"),
                ));
            }
            if product_id <= 0 {
                errors.push(FieldError::new(
                    format!("items[{i}].product_id"),
                    "must be a product id",
                ));
            }
            *lines.entry(product_id).or_insert(0) += quantity;
        }
        if lines.values().any(|q| *q > MAX_QUANTITY) {
            errors.push(FieldError::new(
                "items",
                format!("a product's total quantity must be at most {MAX_QUANTITY}"),
            ));
        }
        let payment = match method.parse::<PaymentKind>() {
            Ok(PaymentKind::Point) => {
                if card_type.is_some() || card_no.is_some() {
                    errors.push(FieldError::new(
                        "payment",
                        "card_type and card_no are only for CARD payments",
                    ));
                }
                Some(PaymentMethod::Point)
            }
            Ok(PaymentKind::Card) => {
                let card_type = card_type.and_then(|t| t.parse::<CardType>().ok());
                if card_type.is_none() {
                    errors.push(FieldError::new(
                        "payment.card_type",
                        format!("must be {}", CardType::expected()),
                    ));
                }
                let card_no = card_no.and_then(CardNumber::parse);
                if card_no.is_none() {
                    errors.push(FieldError::new(
                        "payment.card_no",
                        "must look like ####-####-####-####",
                    ));
                }
                card_type
                    .zip(card_no)
                    .map(|(card_type, card_no)| PaymentMethod::Card { card_type, card_no })
            }
            Err(_) => {
                errors.push(FieldError::new(
                    "payment.method",
                    format!("must be {}", PaymentKind::expected()),
                ));
                None
            }
        };
        check(errors)?;
        Ok(Self {
            lines,
            user_coupon_id,
            payment: payment.expect("a valid payment when no field failed"),
        })
    }

    /// SHA-256 of the canonical (merged, sorted) request, for idempotency-key replays.
    pub fn hash(&self) -> String {
        let (card_type, card_no) = match &self.payment {
            PaymentMethod::Point => (None, None),
            // Masked: the full number is never kept, not even hashed.
            PaymentMethod::Card { card_type, card_no } => {
                (Some(card_type.as_str()), Some(card_no.masked()))
            }
        };
        let canonical = serde_json::json!({
            "items": self.lines.iter().collect::<Vec<_>>(),
            "user_coupon_id": self.user_coupon_id,
            "payment": self.payment.kind().as_str(),
            "card_type": card_type,
            "card_no": card_no,
        });
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

/// One line of an order, as the storefront sees it.
#[derive(Serialize, ToSchema, Clone, Debug)]
pub struct OrderItemView {
    pub product_id: i64,
    pub quantity: i64,
    pub unit_price: i64,
}

/// An order, as the storefront sees it.
#[derive(Serialize, ToSchema, Debug)]
pub struct OrderView {
    pub order_id: i64,
    pub status: OrderStatus,
    pub total_amount: i64,
    pub discount_amount: i64,
    pub final_amount: i64,
    pub payment_method: PaymentKind,
    pub user_coupon_id: Option<i64>,
    pub items: Vec<OrderItemView>,
    /// The card payment, for `CARD` orders.
    pub payment: Option<PaymentView>,
    /// Every change of the card payment, oldest first: in the order's detail
    /// (`GET /api/v1/orders/{id}`), not in lists or answers to writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payment_history: Option<Vec<PaymentEvent>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Queryable)]
struct OrderRow {
    id: i64,
    user_id: i64,
    status: OrderStatus,
    total_amount: i64,
    discount_amount: i64,
    final_amount: i64,
    user_coupon_id: Option<i64>,
    payment_method: PaymentKind,
    request_hash: Option<String>,
    created_at: DateTime<Utc>,
    paid_at: Option<DateTime<Utc>>,
}

fn order_columns() -> (
    orders::id,
    orders::user_id,
    orders::status,
    orders::total_amount,
    orders::discount_amount,
    orders::final_amount,
    orders::user_coupon_id,
    orders::payment_method,
    orders::request_hash,
    orders::created_at,
    orders::paid_at,
) {
    (
        orders::id,
        orders::user_id,
        orders::status,
        orders::total_amount,
        orders::discount_amount,
        orders::final_amount,
        orders::user_coupon_id,
        orders::payment_method,
        orders::request_hash,
        orders::created_at,
        orders::paid_at,
    )
}

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
    let placed = conn
        .transaction::<_, Error, _>(async |conn| {
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
                match idempotency::lock_and_find(conn, "", user_id, key, &hash, earlier).await? {
                    Replay::New => {}
                    Replay::Same(existing) => {
                        return Ok(Placed::Replayed(order_view(conn, existing).await?));
                    }
                    Replay::Reused => return Err(Error::IdempotencyKeyReused),
                }
            }
            create(conn, ctx, user_id, req, key, &hash)
                .await
                .map(Placed::Created)
        })
        .await?;
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
}

#[derive(diesel::QueryableByName)]
struct Held {
    #[diesel(sql_type = BigInt)]
    product_id: i64,
    #[diesel(sql_type = BigInt)]
    held: i64,
}

/// Refuses an order for a product outside its sale window, or one that would take the user
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
        p.sale_starts_at.is_some_and(|starts| now < starts)
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
    // Lock in product-id order: every transaction takes these locks in the same order.
    let locked: Vec<LockedProduct> = diesel::sql_query(
        "SELECT id, price, stock, max_per_user, sale_starts_at, sale_ends_at
           FROM products WHERE id = ANY($1) ORDER BY id FOR UPDATE",
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
    diesel::sql_query(
        "UPDATE products p SET stock = p.stock - l.quantity
           FROM unnest($1::bigint[], $2::bigint[]) AS l(id, quantity)
          WHERE p.id = l.id",
    )
    .bind::<Array<BigInt>, _>(&ids)
    .bind::<Array<BigInt>, _>(&quantities)
    .execute(conn)
    .await?;

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

    if points_used > 0 {
        let paid = diesel::update(
            users::table
                .find(user_id)
                .filter(users::point_balance.ge(points_used)),
        )
        .set(users::point_balance.eq(users::point_balance - points_used))
        .execute(conn)
        .await?;
        if paid == 0 {
            return Err(refused(Error::InsufficientPoints));
        }
    }

    // One instant for the column and the events: every consumer dates the sale by it, and a
    // cancellation (which carries `paid_at`) subtracts from the same business day.
    let now = Utc::now().trunc_subsecs(6);
    let paid_at = (status == OrderStatus::Paid).then_some(now);
    let order: OrderRow = diesel::insert_into(orders::table)
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
        .get_result(conn)
        .await?;
    diesel::insert_into(order_items::table)
        .values(
            items
                .iter()
                .map(|i| {
                    (
                        order_items::order_id.eq(order.id),
                        order_items::product_id.eq(i.product_id),
                        order_items::quantity.eq(i.quantity),
                        order_items::unit_price.eq(i.unit_price),
                    )
                })
                .collect::<Vec<_>>(),
        )
        .execute(conn)
        .await?;
    if let Some(uc) = req.user_coupon_id {
        diesel::update(user_coupons::table.find(uc))
            .set(user_coupons::order_id.eq(order.id))
            .execute(conn)
            .await?;
    }
    if points_used > 0 {
        diesel::insert_into(point_ledger::table)
            .values((
                point_ledger::user_id.eq(user_id),
                point_ledger::amount.eq(-points_used),
                point_ledger::kind.eq(LedgerKind::Use),
                point_ledger::order_id.eq(order.id),
            ))
            .execute(conn)
            .await?;
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
    outbox::record_at(conn, ctx.topics, events, now).await?;
    Ok(OrderView {
        order_id: order.id,
        status: order.status,
        total_amount: total,
        discount_amount: discount,
        final_amount,
        payment_method: order.payment_method,
        user_coupon_id: order.user_coupon_id,
        items,
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

async fn order_view(conn: &mut AsyncPgConnection, order: OrderRow) -> Result<OrderView> {
    let payment = match order.payment_method {
        PaymentKind::Card => payment_rows::table
            .filter(payment_rows::order_id.eq(order.id))
            .select(PaymentRow::as_select())
            .first::<PaymentRow>(conn)
            .await
            .optional()?
            .map(Into::into),
        PaymentKind::Point => None,
    };
    let items = holds::lines(conn, order.id).await?;
    Ok(assemble(order, items, payment))
}

fn assemble(order: OrderRow, items: Vec<OrderLine>, payment: Option<PaymentView>) -> OrderView {
    OrderView {
        order_id: order.id,
        status: order.status,
        total_amount: order.total_amount,
        discount_amount: order.discount_amount,
        final_amount: order.final_amount,
        payment_method: order.payment_method,
        user_coupon_id: order.user_coupon_id,
        items: items
            .into_iter()
            .map(|l| OrderItemView {
                product_id: l.product_id,
                quantity: l.quantity,
                unit_price: l.unit_price,
            })
            .collect(),
        payment,
        payment_history: None,
        created_at: order.created_at,
    }
}

/// A page of a user's orders, newest first, and how many they have in all. Three queries
/// whatever the page size: the orders, their lines and their payments.
pub async fn list(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    page: i64,
    size: i64,
) -> Result<(Vec<OrderView>, i64)> {
    let rows: Vec<OrderRow> = orders::table
        .filter(orders::user_id.eq(user_id))
        .order(orders::id.desc())
        .limit(size)
        .offset(page * size)
        .select(order_columns())
        .load(conn)
        .await?;
    let total: i64 = orders::table
        .filter(orders::user_id.eq(user_id))
        .count()
        .get_result(conn)
        .await?;
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let mut items: BTreeMap<i64, Vec<OrderLine>> = BTreeMap::new();
    let all_items: Vec<(i64, i64, i64, i64)> = order_items::table
        .filter(order_items::order_id.eq_any(&ids))
        .order((order_items::order_id, order_items::product_id))
        .select((
            order_items::order_id,
            order_items::product_id,
            order_items::quantity,
            order_items::unit_price,
        ))
        .load(conn)
        .await?;
    for (order_id, product_id, quantity, unit_price) in all_items {
        items.entry(order_id).or_default().push(OrderLine {
            product_id,
            quantity,
            unit_price,
        });
    }
    let mut payments: BTreeMap<i64, PaymentView> = payment_rows::table
        .filter(payment_rows::order_id.eq_any(&ids))
        .select((payment_rows::order_id, PaymentRow::as_select()))
        .load::<(i64, PaymentRow)>(conn)
        .await?
        .into_iter()
        .map(|(order_id, row)| (order_id, row.into()))
        .collect();
    let orders = rows
        .into_iter()
        .map(|row| {
            let id = row.id;
            let payment = match row.payment_method {
                PaymentKind::Card => payments.remove(&id),
                PaymentKind::Point => None,
            };
            assemble(row, items.remove(&id).unwrap_or_default(), payment)
        })
        .collect();
    Ok((orders, total))
}

/// One of the user's orders ([`Missing::Order`] for anyone else's).
/// The status of one of the user's orders (404 for anyone else's).
pub async fn status_of(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    order_id: i64,
) -> Result<OrderStatus> {
    orders::table
        .filter(orders::id.eq(order_id))
        .filter(orders::user_id.eq(user_id))
        .select(orders::status)
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound(Missing::Order))
}

/// Whether `status` is the last an order's status stream will see: settled (`PAID`,
/// `PAYMENT_FAILED`), refunded, or cancelled with no card refund still to come.
pub async fn is_settled(
    conn: &mut AsyncPgConnection,
    order_id: i64,
    status: OrderStatus,
) -> Result<bool> {
    Ok(match status {
        OrderStatus::PendingPayment => false,
        OrderStatus::Paid | OrderStatus::PaymentFailed | OrderStatus::Refunded => true,
        OrderStatus::Cancelled => {
            let refunds: i64 = crate::infra::schema::refunds::table
                .filter(crate::infra::schema::refunds::order_id.eq(order_id))
                .count()
                .get_result(conn)
                .await?;
            refunds == 0
        }
    })
}

pub async fn get(conn: &mut AsyncPgConnection, user_id: i64, order_id: i64) -> Result<OrderView> {
    let row: OrderRow = orders::table
        .filter(orders::id.eq(order_id))
        .filter(orders::user_id.eq(user_id))
        .select(order_columns())
        .first(conn)
        .await
        .optional()?
        .ok_or(Error::NotFound(Missing::Order))?;
    let card = row.payment_method == PaymentKind::Card;
    let mut view = order_view(conn, row).await?;
    if card {
        view.payment_history = Some(history::of_order(conn, view.order_id).await?);
    }
    Ok(view)
}

/// Cancels one of the user's orders in one transaction: stock restored, points refunded, coupon
/// returned, a paid card order's refund required, `OrderCancelled` recorded. Cancelling again
/// changes nothing. Returns the order's status afterwards (`CANCELLED`, or `REFUNDED` once a
/// card refund was confirmed).
pub async fn cancel(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    user_id: i64,
    order_id: i64,
) -> Result<OrderStatus> {
    let (status, cancelled_now) = conn
        .transaction::<_, Error, _>(async |conn| {
            // The order row lock serialises concurrent cancels: the second sees CANCELLED.
            let order: OrderRow = orders::table
                .filter(orders::id.eq(order_id))
                .filter(orders::user_id.eq(user_id))
                .select(order_columns())
                .for_update()
                .first(conn)
                .await
                .optional()?
                .ok_or(Error::NotFound(Missing::Order))?;
            let payment = payments::lock_payment(conn, order.id).await?;
            let state = OrderState {
                order: order.status,
                payment: payment.as_ref().map(|p| p.status),
            };
            let transition = decide(state, Fact::Cancel).map_err(|r| r.into_error(order.id))?;
            let lines = match transition {
                Transition::Nothing => return Ok((order.status, false)),
                Transition::Cancel => {
                    let lines = holds::release(conn, order.id).await?;
                    if payment.is_some() {
                        // The payment attempt ends with the order; a success reported later
                        // is a late charge, refunded (`payments::settle`).
                        payments::close(
                            conn,
                            order.id,
                            PaymentStatus::Cancelled,
                            None,
                            Some("the order was cancelled"),
                        )
                        .await?;
                        history::append(
                            conn,
                            order.id,
                            PaymentEventKind::Cancelled,
                            Source::Cancel,
                            None,
                            Some("the order was cancelled"),
                        )
                        .await?;
                    }
                    lines
                }
                Transition::CancelAndRefund => {
                    let lines = holds::release(conn, order.id).await?;
                    // A paid card order's money goes back through the gateway.
                    payments::require_refund(conn, order.id).await?;
                    lines
                }
                other => return Err(other.unexpected(order.id, Fact::Cancel)),
            };
            diesel::update(orders::table.find(order.id))
                .set((
                    orders::status.eq(OrderStatus::Cancelled),
                    orders::cancelled_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await?;
            outbox::record(
                conn,
                topics,
                vec![Event::OrderCancelled(OrderCancelled {
                    order_id: order.id,
                    user_id: order.user_id,
                    lines,
                    was_paid: order.status == OrderStatus::Paid,
                    paid_at: order.paid_at,
                })],
            )
            .await?;
            Ok((OrderStatus::Cancelled, true))
        })
        .await?;
    if cancelled_now {
        tracing::info!(order.id = order_id, user.id = user_id, "order cancelled");
    }
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_merged_and_payments_parsed() {
        let req = OrderRequest::parse(&[(2, 1), (1, 3), (2, 4)], None, "POINT", None, None)
            .expect("valid");
        assert_eq!(req.lines, BTreeMap::from([(1, 3), (2, 5)]));
        assert!(matches!(req.payment, PaymentMethod::Point));

        let card = OrderRequest::parse(
            &[(1, 1)],
            None,
            "CARD",
            Some("KB"),
            Some("1234-5678-9012-3456"),
        )
        .expect("valid");
        assert!(matches!(
            card.payment,
            PaymentMethod::Card {
                card_type: CardType::Kb,
                ..
            }
        ));
        assert!(!format!("{card:?}").contains("5678"), "{card:?}");
    }

    #[test]
    fn every_invalid_field_is_reported() {
        let Err(Error::Invalid(errors)) =
            OrderRequest::parse(&[(0, 0)], None, "CARD", Some("VISA"), Some("1234"))
        else {
            panic!("expected a validation error");
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "items[0].quantity",
                "items[0].product_id",
                "payment.card_type",
                "payment.card_no"
            ]
        );
        assert!(matches!(
            OrderRequest::parse(&[(1, 1)], None, "CASH", None, None),
            Err(Error::Invalid(_))
        ));
    }
}
