//! Partner orders: one checkout split per partner.
//!
//! An order (the checkout: stock, coupon, points and one payment, taken in one transaction) holds
//! one partner order per partner whose products it contains. Each partner order keeps
//! - its lines (an order line belongs to exactly one partner order);
//! - its share of the order's amounts: the sum of its lines, and its lines' shares of the coupon
//!   discount and of the points, allocated to the lines pro rata by the largest-remainder method
//!   ([`crate::domain::allocation`]) so that shares add up to the order's amounts exactly;
//! - its share of each way the order was paid, as `payment_splits` rows of its own (allocated,
//!   captured, refunded): stored and moved by what happened, never recomputed from totals;
//! - per line, how many units were ordered, cancelled, shipped and returned; partial states are
//!   derived from these counts.
//!
//! Until the order is paid its partner orders follow it (`PENDING_PAYMENT` → `PAID` or
//! `PAYMENT_FAILED`; the whole order cancelled → `CANCELLED`): the functions here are called by
//! the order's own transitions, under the order's row lock, in the same transaction.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::Result;
use crate::domain::allocation::largest_remainder;
use crate::domain::states::PaymentKind;
use crate::infra::outbox::{self, Topics};
use crate::infra::schema::{order_items, partner_orders, payment_splits, shipments};
use commerce_events::{Event, PartnerOrderChanged};

commerce_enums::text_enum! {
    sql, schema;
    /// `partner_orders.status`: one partner's part of a checkout.
    pub enum PartnerOrderStatus {
        /// The checkout's card payment is not settled yet.
        PendingPayment => "PENDING_PAYMENT",
        /// The checkout's card payment failed.
        PaymentFailed => "PAYMENT_FAILED",
        /// Paid: the partner has to prepare it.
        Paid => "PAID",
        /// The partner is preparing it.
        Preparing => "PREPARING",
        /// Handed to a carrier, with a tracking number.
        Shipped => "SHIPPED",
        Delivered => "DELIVERED",
        /// The customer (or the automatic confirmation) confirmed the purchase: final, and
        /// what settlement pays the partner for.
        PurchaseConfirmed => "PURCHASE_CONFIRMED",
        /// Cancelled before it shipped; its paid share goes back.
        Cancelled => "CANCELLED",
        /// The customer asked to return it after delivery.
        ReturnRequested => "RETURN_REQUESTED",
        /// The partner received the return; its paid share goes back.
        Returned => "RETURNED",
    }
}

commerce_enums::text_enum! {
    schema;
    /// Where a checkout's units stand, derived from its lines' counts (never stored).
    pub enum FulfilmentStatus {
        /// Nothing shipped yet.
        Unfulfilled => "UNFULFILLED",
        PartiallyShipped => "PARTIALLY_SHIPPED",
        /// Every unit not cancelled shipped.
        Shipped => "SHIPPED",
        PartiallyReturned => "PARTIALLY_RETURNED",
        /// Every unit not cancelled came back.
        Returned => "RETURNED",
        /// Every unit cancelled.
        Cancelled => "CANCELLED",
    }
}

/// A checkout's fulfilment, from its partner orders' lines: `None` for an order with none (a
/// top-up). Units cancelled are left out; returns weigh over shipping.
pub fn fulfilment_status(parts: &[PartnerOrderView]) -> Option<FulfilmentStatus> {
    let lines = || parts.iter().flat_map(|p| p.lines.iter());
    lines().next()?;
    let live: i64 = lines().map(|l| l.quantity - l.quantity_cancelled).sum();
    let shipped: i64 = lines().map(|l| l.quantity_shipped).sum();
    let returned: i64 = lines().map(|l| l.quantity_returned).sum();
    Some(match () {
        _ if live == 0 => FulfilmentStatus::Cancelled,
        _ if returned == live => FulfilmentStatus::Returned,
        _ if returned > 0 => FulfilmentStatus::PartiallyReturned,
        _ if shipped == live => FulfilmentStatus::Shipped,
        _ if shipped > 0 => FulfilmentStatus::PartiallyShipped,
        _ => FulfilmentStatus::Unfulfilled,
    })
}

/// An order line as the split sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitLine {
    pub product_id: i64,
    pub partner_id: i64,
    pub quantity: i64,
    pub unit_price: i64,
}

impl SplitLine {
    fn amount(&self) -> i64 {
        self.quantity * self.unit_price
    }
}

/// One line's shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineShare {
    pub product_id: i64,
    pub discount: i64,
    pub points: i64,
}

/// One partner's part of a checkout, before it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerPart {
    pub partner_id: i64,
    pub lines: Vec<LineShare>,
    pub items_total: i64,
    pub discount_share: i64,
    pub points_share: i64,
    /// What is left to pay by card: `items_total − discount_share − points_share`.
    pub card_share: i64,
}

/// Splits a checkout of `lines` (in product-id order) with `discount` off and `points` paid by
/// points into one part per partner, in partner-id order. The discount is allocated to the lines
/// in proportion to their amounts, the points in proportion to what is left of each line after
/// its discount; a partner's shares are the sums of its lines'. The parts add up to the order's
/// amounts exactly: Σ items_total = total, Σ discount = `discount`, Σ points = `points`.
///
/// `discount` must not exceed the lines' total and `points` what is left after it (the order's
/// own rules guarantee both).
pub fn split(lines: &[SplitLine], discount: i64, points: i64) -> Vec<PartnerPart> {
    let amounts: Vec<i64> = lines.iter().map(SplitLine::amount).collect();
    let discounts = largest_remainder(discount, &amounts);
    let nets: Vec<i64> = amounts.iter().zip(&discounts).map(|(a, d)| a - d).collect();
    let points_shares = largest_remainder(points, &nets);
    let mut parts: BTreeMap<i64, PartnerPart> = BTreeMap::new();
    for (i, line) in lines.iter().enumerate() {
        let part = parts.entry(line.partner_id).or_insert_with(|| PartnerPart {
            partner_id: line.partner_id,
            lines: Vec::new(),
            items_total: 0,
            discount_share: 0,
            points_share: 0,
            card_share: 0,
        });
        part.lines.push(LineShare {
            product_id: line.product_id,
            discount: discounts[i],
            points: points_shares[i],
        });
        part.items_total += amounts[i];
        part.discount_share += discounts[i];
        part.points_share += points_shares[i];
        part.card_share += nets[i] - points_shares[i];
    }
    parts.into_values().collect()
}

/// An order line as written.
#[derive(Insertable)]
#[diesel(table_name = order_items)]
struct NewLine {
    order_id: i64,
    product_id: i64,
    quantity: i64,
    unit_price: i64,
    partner_order_id: i64,
    discount_share: i64,
    points_share: i64,
}

/// A payment split as written.
#[derive(Insertable)]
#[diesel(table_name = payment_splits)]
struct NewSplit {
    partner_order_id: i64,
    method: PaymentKind,
    payment_id: Option<i64>,
    amount: i64,
    captured: i64,
}

/// An order's partner orders, written; their lines and payment splits not yet.
pub struct Recorded {
    /// The partner orders as they will stand once their lines are written.
    pub views: Vec<PartnerOrderView>,
    lines: Vec<NewLine>,
    splits: Vec<NewSplit>,
}

impl Recorded {
    /// Writes the lines and the payment splits. It needs only a shared connection, so the
    /// placing transaction sends it in one round trip with its other writes (pipelined).
    pub async fn write_lines(&self, conn: &AsyncPgConnection) -> QueryResult<()> {
        let lines = diesel::insert_into(order_items::table)
            .values(&self.lines)
            .execute(&mut &*conn);
        let splits = async {
            if self.splits.is_empty() {
                return Ok(0);
            }
            diesel::insert_into(payment_splits::table)
                .values(&self.splits)
                .execute(&mut &*conn)
                .await
        };
        futures::try_join!(lines, splits).map(|_| ())
    }
}

/// Writes the order's partner orders inside the placing transaction; their lines and payment
/// splits follow with [`Recorded::write_lines`]. `payment_id` is the order's card payment, if
/// any; points are captured at once (they were deducted).
pub async fn record(
    conn: &mut AsyncPgConnection,
    order_id: i64,
    lines: &[SplitLine],
    parts: &[PartnerPart],
    status: PartnerOrderStatus,
    paid_at: Option<DateTime<Utc>>,
    payment_id: Option<i64>,
) -> Result<Recorded> {
    let written: Vec<(i64, DateTime<Utc>)> = diesel::insert_into(partner_orders::table)
        .values(
            parts
                .iter()
                .map(|p| {
                    (
                        partner_orders::order_id.eq(order_id),
                        partner_orders::partner_id.eq(p.partner_id),
                        partner_orders::status.eq(status),
                        partner_orders::items_total.eq(p.items_total),
                        partner_orders::discount_share.eq(p.discount_share),
                        partner_orders::points_share.eq(p.points_share),
                        partner_orders::card_share.eq(p.card_share),
                        partner_orders::paid_at.eq(paid_at),
                    )
                })
                .collect::<Vec<_>>(),
        )
        .returning((partner_orders::id, partner_orders::created_at))
        .get_results(conn)
        .await?;
    let by_product: BTreeMap<i64, &SplitLine> = lines.iter().map(|l| (l.product_id, l)).collect();
    let mut rows = Vec::with_capacity(lines.len());
    let mut splits = Vec::new();
    let mut views = Vec::with_capacity(parts.len());
    for (part, (id, created_at)) in parts.iter().zip(&written) {
        let mut view = PartnerOrderView {
            partner_order_id: *id,
            order_id,
            partner_id: part.partner_id,
            status,
            items_total: part.items_total,
            discount_share: part.discount_share,
            points_share: part.points_share,
            card_share: part.card_share,
            lines: Vec::with_capacity(part.lines.len()),
            payments: Vec::new(),
            shipment: None,
            confirm_due_at: None,
            created_at: *created_at,
            paid_at,
            confirmed_at: None,
            cancelled_at: None,
        };
        for share in &part.lines {
            let line = by_product[&share.product_id];
            view.lines.push(PartnerLineView {
                product_id: line.product_id,
                quantity: line.quantity,
                unit_price: line.unit_price,
                discount_share: share.discount,
                points_share: share.points,
                quantity_cancelled: 0,
                quantity_shipped: 0,
                quantity_returned: 0,
            });
            rows.push(NewLine {
                order_id,
                product_id: line.product_id,
                quantity: line.quantity,
                unit_price: line.unit_price,
                partner_order_id: *id,
                discount_share: share.discount,
                points_share: share.points,
            });
        }
        if part.points_share > 0 {
            splits.push(NewSplit {
                partner_order_id: *id,
                method: PaymentKind::Point,
                payment_id: None,
                amount: part.points_share,
                captured: part.points_share,
            });
        }
        let card = (part.card_share > 0).then_some(payment_id).flatten();
        if let Some(payment_id) = card {
            splits.push(NewSplit {
                partner_order_id: *id,
                method: PaymentKind::Card,
                payment_id: Some(payment_id),
                amount: part.card_share,
                captured: 0,
            });
            view.payments.push(SplitView {
                method: PaymentKind::Card,
                amount: part.card_share,
                captured: 0,
                refunded: 0,
            });
        }
        if part.points_share > 0 {
            view.payments.push(SplitView {
                method: PaymentKind::Point,
                amount: part.points_share,
                captured: part.points_share,
                refunded: 0,
            });
        }
        views.push(view);
    }
    Ok(Recorded {
        views,
        lines: rows,
        splits,
    })
}

/// A partner order about to move with its checkout, as its event names it.
#[derive(Queryable)]
struct Moving {
    id: i64,
    partner_id: i64,
    status: PartnerOrderStatus,
    items_total: i64,
    discount_share: i64,
    points_share: i64,
    card_share: i64,
}

/// The partner orders of order `order_id` in one of `from` (the caller holds the order's row
/// lock, so they are the ones its update moves).
async fn moving(
    conn: &mut AsyncPgConnection,
    order_id: i64,
    from: &[PartnerOrderStatus],
) -> Result<Vec<Moving>> {
    Ok(partner_orders::table
        .filter(partner_orders::order_id.eq(order_id))
        .filter(partner_orders::status.eq_any(from))
        .order(partner_orders::id)
        .select((
            partner_orders::id,
            partner_orders::partner_id,
            partner_orders::status,
            partner_orders::items_total,
            partner_orders::discount_share,
            partner_orders::points_share,
            partner_orders::card_share,
        ))
        .load(conn)
        .await?)
}

/// Records `PartnerOrderChanged` for each of `moved` (partner orders of order `order_id`) now
/// `to`, at `at`.
async fn record_moves(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    order_id: i64,
    moved: &[Moving],
    to: PartnerOrderStatus,
    at: DateTime<Utc>,
) -> Result<()> {
    if moved.is_empty() {
        return Ok(());
    }
    let user_id: i64 = crate::infra::schema::orders::table
        .find(order_id)
        .select(crate::infra::schema::orders::user_id)
        .first(conn)
        .await?;
    let events = moved
        .iter()
        .map(|m| {
            Event::PartnerOrderChanged(PartnerOrderChanged {
                partner_order_id: m.id,
                order_id,
                partner_id: m.partner_id,
                user_id,
                from: m.status.as_str().to_owned(),
                to: to.as_str().to_owned(),
                items_total: m.items_total,
                discount_share: m.discount_share,
                points_share: m.points_share,
                card_share: m.card_share,
                at,
            })
        })
        .collect();
    outbox::record_at(conn, topics, events, at).await?;
    Ok(())
}

/// The checkout's card payment was confirmed: its partner orders waiting for it are `PAID` at
/// `paid_at` (each with its `PartnerOrderChanged`), and each one's card share is captured.
pub async fn paid(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    order_id: i64,
    paid_at: DateTime<Utc>,
) -> Result<()> {
    let moved = moving(conn, order_id, &[PartnerOrderStatus::PendingPayment]).await?;
    record_moves(
        conn,
        topics,
        order_id,
        &moved,
        PartnerOrderStatus::Paid,
        paid_at,
    )
    .await?;
    let ids: Vec<i64> = diesel::update(
        partner_orders::table
            .filter(partner_orders::order_id.eq(order_id))
            .filter(partner_orders::status.eq(PartnerOrderStatus::PendingPayment)),
    )
    .set((
        partner_orders::status.eq(PartnerOrderStatus::Paid),
        partner_orders::paid_at.eq(paid_at),
        partner_orders::updated_at.eq(diesel::dsl::now),
    ))
    .returning(partner_orders::id)
    .get_results(conn)
    .await?;
    diesel::update(
        payment_splits::table
            .filter(payment_splits::partner_order_id.eq_any(&ids))
            .filter(payment_splits::method.eq(PaymentKind::Card)),
    )
    .set((
        payment_splits::captured.eq(payment_splits::amount),
        payment_splits::updated_at.eq(diesel::dsl::now),
    ))
    .execute(conn)
    .await?;
    Ok(())
}

/// The checkout's card payment failed: its partner orders waiting for it are `PAYMENT_FAILED`
/// (each with its `PartnerOrderChanged`).
pub async fn payment_failed(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    order_id: i64,
) -> Result<()> {
    let moved = moving(conn, order_id, &[PartnerOrderStatus::PendingPayment]).await?;
    let at = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    record_moves(
        conn,
        topics,
        order_id,
        &moved,
        PartnerOrderStatus::PaymentFailed,
        at,
    )
    .await?;
    diesel::update(
        partner_orders::table
            .filter(partner_orders::order_id.eq(order_id))
            .filter(partner_orders::status.eq(PartnerOrderStatus::PendingPayment)),
    )
    .set((
        partner_orders::status.eq(PartnerOrderStatus::PaymentFailed),
        partner_orders::updated_at.eq(diesel::dsl::now),
    ))
    .execute(conn)
    .await?;
    Ok(())
}

/// The whole checkout was cancelled (or its money went back at the gateway): every partner order
/// still standing is `CANCELLED` (each with its `PartnerOrderChanged`), its lines' units
/// cancelled, and its points given back (the caller credits them).
pub async fn cancelled(conn: &mut AsyncPgConnection, topics: &Topics, order_id: i64) -> Result<()> {
    let standing = [
        PartnerOrderStatus::PendingPayment,
        PartnerOrderStatus::Paid,
        PartnerOrderStatus::Preparing,
    ];
    let moved = moving(conn, order_id, &standing).await?;
    let at = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    record_moves(
        conn,
        topics,
        order_id,
        &moved,
        PartnerOrderStatus::Cancelled,
        at,
    )
    .await?;
    let ids: Vec<i64> = diesel::update(
        partner_orders::table
            .filter(partner_orders::order_id.eq(order_id))
            .filter(partner_orders::status.eq_any([
                PartnerOrderStatus::PendingPayment,
                PartnerOrderStatus::Paid,
                PartnerOrderStatus::Preparing,
            ])),
    )
    .set((
        partner_orders::status.eq(PartnerOrderStatus::Cancelled),
        partner_orders::cancelled_at.eq(diesel::dsl::now),
        partner_orders::updated_at.eq(diesel::dsl::now),
    ))
    .returning(partner_orders::id)
    .get_results(conn)
    .await?;
    diesel::update(order_items::table.filter(order_items::partner_order_id.eq_any(&ids)))
        .set(
            order_items::quantity_cancelled
                .eq(order_items::quantity - order_items::quantity_shipped),
        )
        .execute(conn)
        .await?;
    diesel::update(
        payment_splits::table
            .filter(payment_splits::partner_order_id.eq_any(&ids))
            .filter(payment_splits::method.eq(PaymentKind::Point)),
    )
    .set((
        payment_splits::refunded.eq(payment_splits::captured),
        payment_splits::updated_at.eq(diesel::dsl::now),
    ))
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(QueryableByName)]
struct Total {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    total: i64,
}

/// The points given back with order `order_id`'s partner orders cancelled or returned on their
/// own.
pub async fn points_given_back(conn: &mut AsyncPgConnection, order_id: i64) -> Result<i64> {
    let total: Total = diesel::sql_query(
        "SELECT coalesce(sum(s.refunded), 0)::bigint AS total
           FROM payment_splits s JOIN partner_orders p ON p.id = s.partner_order_id
          WHERE p.order_id = $1 AND s.method = 'POINT'",
    )
    .bind::<diesel::sql_types::BigInt, _>(order_id)
    .get_result(conn)
    .await?;
    Ok(total.total)
}

/// What card payment `payment_id` owes back for partner orders cancelled or returned on their
/// own: the sum of their refunds, confirmed or not.
pub async fn card_refunds_owed(conn: &mut AsyncPgConnection, payment_id: i64) -> Result<i64> {
    let total: Total = diesel::sql_query(
        "SELECT coalesce(sum(amount), 0)::bigint AS total FROM refunds
          WHERE payment_id = $1 AND partner_order_id IS NOT NULL",
    )
    .bind::<diesel::sql_types::BigInt, _>(payment_id)
    .get_result(conn)
    .await?;
    Ok(total.total)
}

/// Whether any partner order of the checkout has shipped (or gone further).
pub async fn any_shipped(conn: &mut AsyncPgConnection, order_id: i64) -> Result<bool> {
    use diesel::dsl::exists;
    Ok(diesel::select(exists(
        partner_orders::table
            .filter(partner_orders::order_id.eq(order_id))
            .filter(partner_orders::status.eq_any([
                PartnerOrderStatus::Shipped,
                PartnerOrderStatus::Delivered,
                PartnerOrderStatus::PurchaseConfirmed,
                PartnerOrderStatus::ReturnRequested,
                PartnerOrderStatus::Returned,
            ])),
    ))
    .get_result(conn)
    .await?)
}

/// The gateway confirmed that what was left of card payment `payment_id` went back: every split
/// of it whose partner order has no refund of its own has its captured share refunded (those
/// with one are refunded when that one is confirmed, [`card_share_refunded`]).
pub async fn card_refunded(conn: &mut AsyncPgConnection, payment_id: i64) -> Result<()> {
    let ids: Vec<i64> = diesel::update(
        payment_splits::table
            .filter(payment_splits::payment_id.eq(payment_id))
            .filter(diesel::dsl::not(diesel::dsl::exists(
                crate::infra::schema::refunds::table.filter(
                    crate::infra::schema::refunds::partner_order_id
                        .eq(payment_splits::partner_order_id.nullable()),
                ),
            ))),
    )
    .set((
        payment_splits::refunded.eq(payment_splits::captured),
        payment_splits::updated_at.eq(diesel::dsl::now),
    ))
    .returning(payment_splits::partner_order_id)
    .get_results(conn)
    .await?;
    // Those confirmed already give their share back to the platform.
    crate::domain::settlement::clawback(conn, &ids).await
}

/// The gateway confirmed partner order `partner_order_id`'s own card refund of `amount`.
pub async fn card_share_refunded(
    conn: &mut AsyncPgConnection,
    partner_order_id: i64,
    amount: i64,
) -> Result<()> {
    diesel::update(
        payment_splits::table
            .filter(payment_splits::partner_order_id.eq(partner_order_id))
            .filter(payment_splits::method.eq(PaymentKind::Card)),
    )
    .set((
        payment_splits::refunded.eq(payment_splits::refunded + amount),
        payment_splits::updated_at.eq(diesel::dsl::now),
    ))
    .execute(conn)
    .await?;
    // Confirmed already (an adjustment): the partner gives its share back to the platform.
    crate::domain::settlement::clawback(conn, &[partner_order_id]).await
}

/// A line of a partner order, with what happened to its units.
#[derive(Serialize, ToSchema, Debug, Clone, Queryable)]
pub struct PartnerLineView {
    pub product_id: i64,
    pub quantity: i64,
    pub unit_price: i64,
    /// This line's share of the coupon discount.
    pub discount_share: i64,
    /// This line's share of the points used.
    pub points_share: i64,
    pub quantity_cancelled: i64,
    pub quantity_shipped: i64,
    pub quantity_returned: i64,
}

/// One way a partner order was paid: its share, what was taken and what went back.
#[derive(Serialize, ToSchema, Debug, Clone, Queryable)]
pub struct SplitView {
    pub method: PaymentKind,
    pub amount: i64,
    pub captured: i64,
    pub refunded: i64,
}

/// One partner's part of an order.
#[derive(Serialize, ToSchema, Debug, Clone)]
pub struct PartnerOrderView {
    pub partner_order_id: i64,
    pub order_id: i64,
    pub partner_id: i64,
    pub status: PartnerOrderStatus,
    /// Σ quantity × unit price of its lines.
    pub items_total: i64,
    pub discount_share: i64,
    pub points_share: i64,
    pub card_share: i64,
    pub lines: Vec<PartnerLineView>,
    pub payments: Vec<SplitView>,
    /// The carrier and tracking number once it shipped, and when it was delivered.
    pub shipment: Option<ShipmentView>,
    /// When a delivered partner order is purchase-confirmed automatically, unless the customer
    /// confirms or asks for a return first.
    pub confirm_due_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub paid_at: Option<DateTime<Utc>>,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
}

/// A partner order's shipment.
#[derive(Serialize, ToSchema, Debug, Clone, PartialEq, Queryable)]
pub struct ShipmentView {
    pub carrier: String,
    pub tracking_number: String,
    pub shipped_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
}

#[derive(Queryable, Selectable)]
#[diesel(table_name = partner_orders)]
struct PartnerOrderRow {
    id: i64,
    order_id: i64,
    partner_id: i64,
    status: PartnerOrderStatus,
    items_total: i64,
    discount_share: i64,
    points_share: i64,
    card_share: i64,
    created_at: DateTime<Utc>,
    paid_at: Option<DateTime<Utc>>,
    confirmed_at: Option<DateTime<Utc>>,
    cancelled_at: Option<DateTime<Utc>>,
    confirm_due_at: Option<DateTime<Utc>>,
}

/// A partner order row and its shipment, if it shipped.
type Loaded = (PartnerOrderRow, Option<ShipmentView>);

/// The shipment columns a [`ShipmentView`] shows, for a left join.
fn shipment_columns() -> diesel::dsl::Nullable<(
    shipments::carrier,
    shipments::tracking_number,
    shipments::shipped_at,
    shipments::delivered_at,
)> {
    (
        shipments::carrier,
        shipments::tracking_number,
        shipments::shipped_at,
        shipments::delivered_at,
    )
        .nullable()
}

/// Reads partner orders `rows` with their lines and splits: three queries whatever their number.
async fn assemble(
    conn: &mut AsyncPgConnection,
    rows: Vec<Loaded>,
) -> Result<Vec<PartnerOrderView>> {
    let ids: Vec<i64> = rows.iter().map(|(r, _)| r.id).collect();
    let mut lines: BTreeMap<i64, Vec<PartnerLineView>> = BTreeMap::new();
    let loaded: Vec<(i64, PartnerLineView)> = order_items::table
        .filter(order_items::partner_order_id.eq_any(&ids))
        .order((order_items::partner_order_id, order_items::product_id))
        .select((
            order_items::partner_order_id,
            (
                order_items::product_id,
                order_items::quantity,
                order_items::unit_price,
                order_items::discount_share,
                order_items::points_share,
                order_items::quantity_cancelled,
                order_items::quantity_shipped,
                order_items::quantity_returned,
            ),
        ))
        .load(conn)
        .await?;
    for (po, line) in loaded {
        lines.entry(po).or_default().push(line);
    }
    let mut splits: BTreeMap<i64, Vec<SplitView>> = BTreeMap::new();
    let loaded: Vec<(i64, SplitView)> = payment_splits::table
        .filter(payment_splits::partner_order_id.eq_any(&ids))
        .order((payment_splits::partner_order_id, payment_splits::method))
        .select((
            payment_splits::partner_order_id,
            (
                payment_splits::method,
                payment_splits::amount,
                payment_splits::captured,
                payment_splits::refunded,
            ),
        ))
        .load(conn)
        .await?;
    for (po, split) in loaded {
        splits.entry(po).or_default().push(split);
    }
    Ok(rows
        .into_iter()
        .map(|(r, shipment)| PartnerOrderView {
            lines: lines.remove(&r.id).unwrap_or_default(),
            payments: splits.remove(&r.id).unwrap_or_default(),
            shipment,
            confirm_due_at: r.confirm_due_at,
            partner_order_id: r.id,
            order_id: r.order_id,
            partner_id: r.partner_id,
            status: r.status,
            items_total: r.items_total,
            discount_share: r.discount_share,
            points_share: r.points_share,
            card_share: r.card_share,
            created_at: r.created_at,
            paid_at: r.paid_at,
            confirmed_at: r.confirmed_at,
            cancelled_at: r.cancelled_at,
        })
        .collect())
}

/// The partner orders of orders `order_ids`, by order, each order's in partner-id order.
pub async fn of_orders(
    conn: &mut AsyncPgConnection,
    order_ids: &[i64],
) -> Result<BTreeMap<i64, Vec<PartnerOrderView>>> {
    let rows: Vec<Loaded> = partner_orders::table
        .left_join(shipments::table)
        .filter(partner_orders::order_id.eq_any(order_ids))
        .order((partner_orders::order_id, partner_orders::partner_id))
        .select((PartnerOrderRow::as_select(), shipment_columns()))
        .load(conn)
        .await?;
    let mut by_order: BTreeMap<i64, Vec<PartnerOrderView>> = BTreeMap::new();
    for view in assemble(conn, rows).await? {
        by_order.entry(view.order_id).or_default().push(view);
    }
    Ok(by_order)
}

/// Partner order `id` of order `order_id`, as the order shows it.
pub async fn one(
    conn: &mut AsyncPgConnection,
    order_id: i64,
    id: i64,
) -> Result<Option<PartnerOrderView>> {
    Ok(of_orders(conn, &[order_id])
        .await?
        .remove(&order_id)
        .and_then(|parts| parts.into_iter().find(|p| p.partner_order_id == id)))
}

/// A page of partner `partner_id`'s orders, newest first, optionally only those in `status`,
/// and how many there are. Orders whose payment has not gone through (`PENDING_PAYMENT`,
/// `PAYMENT_FAILED`) are not the partner's business and are never listed.
pub async fn of_partner(
    conn: &mut AsyncPgConnection,
    partner_id: i64,
    status: Option<PartnerOrderStatus>,
    page: i64,
    size: i64,
) -> Result<(Vec<PartnerOrderView>, i64)> {
    let hidden = [
        PartnerOrderStatus::PendingPayment,
        PartnerOrderStatus::PaymentFailed,
    ];
    let filtered = || {
        let query = partner_orders::table
            .left_join(shipments::table)
            .filter(partner_orders::partner_id.eq(partner_id))
            .filter(partner_orders::status.ne_all(hidden))
            .into_boxed();
        match status {
            Some(status) => query.filter(partner_orders::status.eq(status)),
            None => query,
        }
    };
    let total = filtered().count().get_result(conn).await?;
    let rows: Vec<Loaded> = filtered()
        .order(partner_orders::id.desc())
        .limit(size)
        .offset(page * size)
        .select((PartnerOrderRow::as_select(), shipment_columns()))
        .load(conn)
        .await?;
    Ok((assemble(conn, rows).await?, total))
}

/// Partner order `id` of partner `partner_id` ([`crate::domain::Missing::PartnerOrder`] for
/// another partner's, or one whose payment has not gone through).
pub async fn of_partner_one(
    conn: &mut AsyncPgConnection,
    partner_id: i64,
    id: i64,
) -> Result<PartnerOrderView> {
    let rows: Vec<Loaded> = partner_orders::table
        .left_join(shipments::table)
        .filter(partner_orders::id.eq(id))
        .filter(partner_orders::partner_id.eq(partner_id))
        .filter(partner_orders::status.ne_all([
            PartnerOrderStatus::PendingPayment,
            PartnerOrderStatus::PaymentFailed,
        ]))
        .select((PartnerOrderRow::as_select(), shipment_columns()))
        .load(conn)
        .await?;
    assemble(conn, rows)
        .await?
        .pop()
        .ok_or(crate::domain::Error::NotFound(
            crate::domain::Missing::PartnerOrder,
        ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn line(product_id: i64, partner_id: i64, quantity: i64, unit_price: i64) -> SplitLine {
        SplitLine {
            product_id,
            partner_id,
            quantity,
            unit_price,
        }
    }

    #[test]
    fn three_partners_split_exactly() {
        // 10,000 + 2 × 7,000 + 3,333 = 27,333; 5,000 off; paid by points.
        let lines = [
            line(1, 30, 1, 10_000),
            line(2, 10, 2, 7_000),
            line(3, 20, 1, 3_333),
        ];
        let parts = split(&lines, 5_000, 22_333);
        let partners: Vec<i64> = parts.iter().map(|p| p.partner_id).collect();
        assert_eq!(partners, vec![10, 20, 30]);
        // 5,000 × 14,000/27,333 = 2,561.0…; × 3,333/27,333 = 609.7…; × 10,000/27,333 = 1,829.2…
        let discounts: Vec<i64> = parts.iter().map(|p| p.discount_share).collect();
        assert_eq!(discounts, vec![2_561, 610, 1_829]);
        assert_eq!(discounts.iter().sum::<i64>(), 5_000);
        for p in &parts {
            assert_eq!(p.card_share, 0);
            assert_eq!(p.points_share, p.items_total - p.discount_share);
        }
    }

    fn part(lines: &[(i64, i64, i64, i64)]) -> PartnerOrderView {
        PartnerOrderView {
            partner_order_id: 1,
            order_id: 1,
            partner_id: 1,
            status: PartnerOrderStatus::Paid,
            items_total: 0,
            discount_share: 0,
            points_share: 0,
            card_share: 0,
            lines: lines
                .iter()
                .map(
                    |&(quantity, cancelled, shipped, returned)| PartnerLineView {
                        product_id: 1,
                        quantity,
                        unit_price: 1,
                        discount_share: 0,
                        points_share: 0,
                        quantity_cancelled: cancelled,
                        quantity_shipped: shipped,
                        quantity_returned: returned,
                    },
                )
                .collect(),
            payments: Vec::new(),
            shipment: None,
            confirm_due_at: None,
            created_at: Utc::now(),
            paid_at: None,
            confirmed_at: None,
            cancelled_at: None,
        }
    }

    #[test]
    fn fulfilment_is_derived_from_the_lines_counts() {
        use FulfilmentStatus as F;
        // (ordered, cancelled, shipped, returned) per line, over two partner orders.
        type Lines = &'static [(i64, i64, i64, i64)];
        let cases: [(Lines, Lines, F); 7] = [
            (&[(2, 0, 0, 0)], &[(1, 0, 0, 0)], F::Unfulfilled),
            (&[(2, 0, 2, 0)], &[(1, 0, 0, 0)], F::PartiallyShipped),
            (&[(2, 0, 2, 0)], &[(1, 1, 0, 0)], F::Shipped),
            (&[(2, 0, 2, 1)], &[(1, 0, 1, 0)], F::PartiallyReturned),
            (&[(2, 0, 2, 2)], &[(1, 1, 0, 0)], F::Returned),
            (&[(2, 2, 0, 0)], &[(1, 1, 0, 0)], F::Cancelled),
            (&[(2, 2, 0, 0)], &[(1, 0, 0, 0)], F::Unfulfilled),
        ];
        for (a, b, want) in cases {
            assert_eq!(
                fulfilment_status(&[part(a), part(b)]),
                Some(want),
                "{a:?} {b:?}"
            );
        }
        assert_eq!(fulfilment_status(&[]), None);
    }

    proptest! {
        #[test]
        fn parts_add_up_to_the_order(
            raw in prop::collection::vec((1i64..=4, 1i64..=5, 0i64..=1_000_000), 1..12),
            discount_fraction in 0.0f64..=1.0,
            points_fraction in 0.0f64..=1.0,
        ) {
            let lines: Vec<SplitLine> = raw
                .iter()
                .enumerate()
                .map(|(i, (partner, qty, price))| line(i as i64 + 1, *partner, *qty, *price))
                .collect();
            let total: i64 = lines.iter().map(SplitLine::amount).sum();
            let discount = ((total as f64 * discount_fraction) as i64).min(total);
            let points = (((total - discount) as f64 * points_fraction) as i64).min(total - discount);
            let parts = split(&lines, discount, points);
            prop_assert_eq!(parts.iter().map(|p| p.items_total).sum::<i64>(), total);
            prop_assert_eq!(parts.iter().map(|p| p.discount_share).sum::<i64>(), discount);
            prop_assert_eq!(parts.iter().map(|p| p.points_share).sum::<i64>(), points);
            prop_assert_eq!(
                parts.iter().map(|p| p.card_share).sum::<i64>(),
                total - discount - points
            );
            for p in &parts {
                prop_assert!(p.card_share >= 0 && p.discount_share <= p.items_total);
                prop_assert_eq!(p.lines.iter().map(|l| l.discount).sum::<i64>(), p.discount_share);
                prop_assert_eq!(p.lines.iter().map(|l| l.points).sum::<i64>(), p.points_share);
            }
            let line_count: usize = parts.iter().map(|p| p.lines.len()).sum();
            prop_assert_eq!(line_count, lines.len());
        }
    }
}
