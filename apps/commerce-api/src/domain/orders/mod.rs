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
//!
//! The module holds the order's views and reads; [`request`] validates what a customer asks
//! for, [`place`] places it, [`cancel`] cancels it.

mod cancel;
pub(crate) mod deadline;
mod place;
mod request;

pub use cancel::cancel;
pub(crate) use cancel::cancel_in;
pub use place::{Placed, Placement, place};
pub use request::{MAX_LINES, MAX_QUANTITY, OrderRequest, parse_card};

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use commerce_events::OrderLine;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::history::{self, PaymentEvent};
use crate::domain::partner_orders::{self, FulfilmentStatus, PartnerOrderView};
use crate::domain::payments::{PaymentRow, PaymentView};
use crate::domain::states::{OrderKind, OrderStatus, PaymentKind};
use crate::domain::{Error, Missing, Result, holds};
use crate::infra::schema::{order_items, orders, payments as payment_rows};

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
    /// `GOODS`, or `POINT_TOP_UP` for points bought by card (no items; its points are credited
    /// when it is `PAID`).
    pub kind: OrderKind,
    pub status: OrderStatus,
    pub total_amount: i64,
    pub discount_amount: i64,
    pub final_amount: i64,
    pub payment_method: PaymentKind,
    pub user_coupon_id: Option<i64>,
    pub items: Vec<OrderItemView>,
    /// One per partner whose products the order holds, in partner-id order: its lines, its
    /// shares of the total, discount and points, its share of each payment, and its state.
    pub partner_orders: Vec<PartnerOrderView>,
    /// Where its units stand, derived from its lines' counts (`null` for a top-up).
    pub fulfilment_status: Option<FulfilmentStatus>,
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
    kind: OrderKind,
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
    orders::kind,
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
        orders::kind,
    )
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
    let parts = partner_orders::of_orders(conn, &[order.id])
        .await?
        .remove(&order.id)
        .unwrap_or_default();
    Ok(assemble(order, items, parts, payment))
}

fn assemble(
    order: OrderRow,
    items: Vec<OrderLine>,
    partner_orders: Vec<PartnerOrderView>,
    payment: Option<PaymentView>,
) -> OrderView {
    OrderView {
        order_id: order.id,
        kind: order.kind,
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
        fulfilment_status: partner_orders::fulfilment_status(&partner_orders),
        partner_orders,
        payment,
        payment_history: None,
        created_at: order.created_at,
    }
}

/// A page of a user's orders, newest first, and how many they have in all. A fixed number of
/// queries whatever the page size: the orders, their lines, their partner orders and their
/// payments.
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
    let mut parts = partner_orders::of_orders(conn, &ids).await?;
    let orders = rows
        .into_iter()
        .map(|row| {
            let id = row.id;
            let payment = match row.payment_method {
                PaymentKind::Card => payments.remove(&id),
                PaymentKind::Point => None,
            };
            assemble(
                row,
                items.remove(&id).unwrap_or_default(),
                parts.remove(&id).unwrap_or_default(),
                payment,
            )
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
