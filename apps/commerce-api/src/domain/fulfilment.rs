//! An order's life after payment, per partner order.
//!
//! ```text
//! PAID ─prepare→ PREPARING ─ship→ SHIPPED ─deliver→ DELIVERED ─confirm→ PURCHASE_CONFIRMED
//!  │  └──────────ship──────────↗      └──────confirm (the customer)────────↗   ↑
//!  └─cancel→ CANCELLED ←cancel─ PREPARING          DELIVERED ─request return→ RETURN_REQUESTED
//!                                  RETURN_REQUESTED ─withdraw / reject→ DELIVERED
//!                                  RETURN_REQUESTED ─accept→ RETURNED
//! ```
//!
//! One pure function decides every transition ([`decide`]): given a partner order's status and a
//! [`Step`], it answers the status to move to, that the step was already taken (a repeat changes
//! nothing), or a refusal. Partner orders of a checkout whose payment is not settled
//! (`PENDING_PAYMENT`, `PAYMENT_FAILED`) refuse every step; nothing moves after
//! `PURCHASE_CONFIRMED`, `CANCELLED` or `RETURNED`.
//!
//! Executing a move ([`apply`], [`deliver_due`], [`confirm_due`]) takes the checkout's row lock,
//! then the partner order's, so two transitions of one partner order (a cancel against a ship,
//! two confirmations, a return against the automatic confirmation) run one after the other and
//! the second is decided on what the first left: exactly one wins. The automatic passes lock
//! only the partner orders they move, with `SKIP LOCKED`, so instances share the work and never
//! move one twice.

use chrono::{DateTime, Utc};
use commerce_events::{Event, OrderCancelled, OrderLine, PartnerOrderChanged};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Interval, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::domain::history::Source;
use crate::domain::partner_orders::{self, PartnerOrderStatus, PartnerOrderView};
use crate::domain::points::{self, Credit, Earned};
use crate::domain::refunds::{self, Refundable};
use crate::domain::states::{PaymentKind, RefundCause};
use crate::domain::{Error, Missing, Result};
use crate::infra::outbox::{self, Topics};
use crate::infra::schema::{
    order_items, orders, partner_orders as rows, payment_splits, payments, returns, shipments,
};

/// What is asked of a partner order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The partner starts preparing it.
    Prepare,
    /// The partner hands it to a carrier.
    Ship,
    /// It arrived (the partner says so, or the delivery timer ran out).
    Deliver,
    /// The customer confirms the purchase (from `SHIPPED` too: receiving it is delivery), or
    /// the confirmation timer ran out.
    Confirm,
    /// The customer or the partner cancels it before it ships.
    Cancel,
    /// The customer asks to return it (within the return window after delivery).
    RequestReturn,
    /// The customer withdraws the return request.
    WithdrawReturn,
    /// The partner refuses the return.
    RejectReturn,
    /// The partner received the return.
    AcceptReturn,
}

impl Step {
    pub const ALL: &'static [Step] = &[
        Step::Prepare,
        Step::Ship,
        Step::Deliver,
        Step::Confirm,
        Step::Cancel,
        Step::RequestReturn,
        Step::WithdrawReturn,
        Step::RejectReturn,
        Step::AcceptReturn,
    ];

    /// The step as a metric label (`partner_order_transitions_total{step}`).
    pub fn label(self) -> &'static str {
        match self {
            Step::Prepare => "prepare",
            Step::Ship => "ship",
            Step::Deliver => "deliver",
            Step::Confirm => "confirm",
            Step::Cancel => "cancel",
            Step::RequestReturn => "request_return",
            Step::WithdrawReturn => "withdraw_return",
            Step::RejectReturn => "reject_return",
            Step::AcceptReturn => "accept_return",
        }
    }

    /// The step as words for messages: "a SHIPPED partner order cannot be {cancelled}".
    pub fn past(self) -> &'static str {
        match self {
            Step::Prepare => "prepared",
            Step::Ship => "shipped",
            Step::Deliver => "delivered",
            Step::Confirm => "confirmed",
            Step::Cancel => "cancelled",
            Step::RequestReturn => "returned",
            Step::WithdrawReturn => "withdrawn from return",
            Step::RejectReturn => "refused a return",
            Step::AcceptReturn => "taken back",
        }
    }
}

/// What a step does to a partner order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    /// It moves to this status.
    To(PartnerOrderStatus),
    /// It was taken already: nothing changes.
    Repeat,
}

/// The one place a partner order's life is decided. Pure and exhaustive (see the table in the
/// tests): `Err` carries the status that refuses the step.
pub fn decide(status: PartnerOrderStatus, step: Step) -> Result<Move, PartnerOrderStatus> {
    use Move::{Repeat, To};
    use PartnerOrderStatus as S;
    let refused = Err(status);
    match (step, status) {
        (_, S::PendingPayment | S::PaymentFailed) => refused,
        (Step::Prepare, S::Paid) => Ok(To(S::Preparing)),
        (Step::Prepare, S::Preparing) => Ok(Repeat),
        (Step::Ship, S::Paid | S::Preparing) => Ok(To(S::Shipped)),
        (Step::Ship, S::Shipped) => Ok(Repeat),
        (Step::Deliver, S::Shipped) => Ok(To(S::Delivered)),
        // It was delivered: late news changes nothing.
        (Step::Deliver, S::Delivered | S::ReturnRequested | S::Returned | S::PurchaseConfirmed) => {
            Ok(Repeat)
        }
        (Step::Confirm, S::Shipped | S::Delivered) => Ok(To(S::PurchaseConfirmed)),
        (Step::Confirm, S::PurchaseConfirmed) => Ok(Repeat),
        (Step::Cancel, S::Paid | S::Preparing) => Ok(To(S::Cancelled)),
        (Step::Cancel, S::Cancelled) => Ok(Repeat),
        (Step::RequestReturn, S::Delivered) => Ok(To(S::ReturnRequested)),
        (Step::RequestReturn, S::ReturnRequested) => Ok(Repeat),
        (Step::WithdrawReturn | Step::RejectReturn, S::ReturnRequested) => Ok(To(S::Delivered)),
        (Step::AcceptReturn, S::ReturnRequested) => Ok(To(S::Returned)),
        (Step::AcceptReturn, S::Returned) => Ok(Repeat),
        (
            Step::Prepare,
            S::Shipped
            | S::Delivered
            | S::PurchaseConfirmed
            | S::Cancelled
            | S::ReturnRequested
            | S::Returned,
        )
        | (
            Step::Ship,
            S::Delivered | S::PurchaseConfirmed | S::Cancelled | S::ReturnRequested | S::Returned,
        )
        | (Step::Deliver, S::Paid | S::Preparing | S::Cancelled)
        | (
            Step::Confirm,
            S::Paid | S::Preparing | S::Cancelled | S::ReturnRequested | S::Returned,
        )
        | (
            Step::Cancel,
            S::Shipped | S::Delivered | S::PurchaseConfirmed | S::ReturnRequested | S::Returned,
        )
        | (
            Step::RequestReturn,
            S::Paid | S::Preparing | S::Shipped | S::PurchaseConfirmed | S::Cancelled | S::Returned,
        )
        | (
            Step::WithdrawReturn | Step::RejectReturn,
            S::Paid
            | S::Preparing
            | S::Shipped
            | S::Delivered
            | S::PurchaseConfirmed
            | S::Cancelled
            | S::Returned,
        )
        | (
            Step::AcceptReturn,
            S::Paid
            | S::Preparing
            | S::Shipped
            | S::Delivered
            | S::PurchaseConfirmed
            | S::Cancelled,
        ) => refused,
    }
}

/// How long the automatic steps wait.
#[derive(Debug, Clone, Copy)]
pub struct FulfilmentSettings {
    /// Run the automatic delivery and confirmation in this instance.
    pub enabled: bool,
    /// How often the automatic passes look for due partner orders.
    pub interval: std::time::Duration,
    /// A shipped partner order nobody marked delivered is delivered this long after shipping.
    pub deliver_after: std::time::Duration,
    /// A delivered partner order is purchase-confirmed this long after delivery…
    pub confirm_after: std::time::Duration,
    /// …or this long after shipping, whichever comes first.
    pub confirm_backstop: std::time::Duration,
    /// Points a purchase confirmation earns, in basis points of what was paid for the partner
    /// order (100: 1 %).
    pub earn_rate_bps: i64,
    /// A delivered partner order may be returned this long after delivery.
    pub return_window: std::time::Duration,
    /// The time zone of business days: a purchase confirmation is settled with its day's.
    pub time_zone: chrono_tz::Tz,
}

/// Who asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Actor {
    /// A partner account, for its own partner orders.
    Partner(i64),
    /// A customer (user id), for the partner orders of their own checkout (order id).
    Customer(i64, i64),
}

/// What a step carries besides its partner order.
#[derive(Debug, Clone, Default)]
pub struct Details {
    /// A `Ship` step's carrier and tracking number.
    pub tracking: Option<Tracking>,
    /// A `RequestReturn` step's reason (1–500 characters).
    pub reason: Option<String>,
}

/// What the partner gives when it ships.
#[derive(Debug, Clone)]
pub struct Tracking {
    pub carrier: String,
    pub tracking_number: String,
}

impl Tracking {
    /// Validates both fields: 1–50 characters, the tracking number letters, digits and `-`.
    pub fn parse(carrier: &str, tracking_number: &str) -> Result<Self> {
        let mut errors = Vec::new();
        let carrier = carrier.trim();
        if carrier.is_empty() || carrier.chars().count() > 50 {
            errors.push(commerce_web::FieldError::new(
                "carrier",
                "must be 1-50 characters",
            ));
        }
        if tracking_number.is_empty()
            || tracking_number.len() > 50
            || !tracking_number
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            errors.push(commerce_web::FieldError::new(
                "tracking_number",
                "must be 1-50 letters, digits or '-'",
            ));
        }
        crate::domain::check(errors)?;
        Ok(Self {
            carrier: carrier.to_owned(),
            tracking_number: tracking_number.to_owned(),
        })
    }
}

#[derive(Queryable)]
struct Locked {
    id: i64,
    order_id: i64,
    partner_id: i64,
    status: PartnerOrderStatus,
    items_total: i64,
    discount_share: i64,
    points_share: i64,
    card_share: i64,
}

impl Locked {
    fn changed(&self, user_id: i64, to: PartnerOrderStatus, at: DateTime<Utc>) -> Event {
        Event::PartnerOrderChanged(PartnerOrderChanged {
            partner_order_id: self.id,
            order_id: self.order_id,
            partner_id: self.partner_id,
            user_id,
            from: self.status.as_str().to_owned(),
            to: to.as_str().to_owned(),
            items_total: self.items_total,
            discount_share: self.discount_share,
            points_share: self.points_share,
            card_share: self.card_share,
            at,
        })
    }
}

/// Takes `step` on partner order `id` for `actor` in one transaction, as [`decide`] says:
/// another partner's or customer's partner order is [`Missing::PartnerOrder`], a refused step is
/// [`Error::IllegalTransition`], a repeat changes nothing. `details` carry what a `Ship` step
/// gives (a repeat with another tracking number is refused) and a return's reason. Returns the partner order as it
/// stands afterwards.
pub async fn apply(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    settings: &FulfilmentSettings,
    actor: Actor,
    id: i64,
    step: Step,
    details: &Details,
) -> Result<PartnerOrderView> {
    let (order_id, moved) = conn
        .transaction::<_, Error, _>(async |conn| {
            // The checkout's lock first, as every path that changes it takes it.
            let owner: Option<(i64, i64, i64)> = rows::table
                .inner_join(orders::table)
                .filter(rows::id.eq(id))
                .select((rows::order_id, rows::partner_id, orders::user_id))
                .first(conn)
                .await
                .optional()?;
            let (order_id, _, user_id) = owner
                .filter(|(order, partner, user)| match actor {
                    Actor::Partner(own) => own == *partner,
                    Actor::Customer(own, checkout) => own == *user && checkout == *order,
                })
                .ok_or(Error::NotFound(Missing::PartnerOrder))?;
            orders::table
                .find(order_id)
                .select(orders::id)
                .for_update()
                .first::<i64>(conn)
                .await?;
            let locked = lock(conn, id).await?;
            let to = match decide(locked.status, step) {
                Err(from) => return Err(Error::IllegalTransition(from, step)),
                Ok(Move::Repeat) => {
                    if step == Step::Ship
                        && let Some(tracking) = &details.tracking
                    {
                        same_tracking(conn, id, tracking).await?;
                    }
                    return Ok((order_id, false));
                }
                Ok(Move::To(to)) => to,
            };
            if step == Step::Cancel && last_standing(conn, order_id, id).await? {
                // Cancelling the checkout's last standing partner order cancels the checkout:
                // what is left of its payment goes back, and its coupon too.
                // Its PartnerOrderChanged comes with the checkout's cancellation.
                crate::domain::orders::cancel_in(conn, topics, user_id, order_id).await?;
                return Ok((order_id, true));
            }
            let at = execute(conn, topics, settings, &locked, user_id, to, step, details).await?;
            outbox::record_at(conn, topics, vec![locked.changed(user_id, to, at)], at).await?;
            Ok((order_id, true))
        })
        .await?;
    if moved {
        tracing::info!(partner_order.id = id, ?step, "partner order moved");
        metrics::counter!("partner_order_transitions_total", "step" => step.label()).increment(1);
    }
    partner_orders::one(conn, order_id, id)
        .await?
        .ok_or(Error::NotFound(Missing::PartnerOrder))
}

async fn lock(conn: &mut AsyncPgConnection, id: i64) -> Result<Locked> {
    Ok(rows::table
        .find(id)
        .select((
            rows::id,
            rows::order_id,
            rows::partner_id,
            rows::status,
            rows::items_total,
            rows::discount_share,
            rows::points_share,
            rows::card_share,
        ))
        .for_update()
        .first(conn)
        .await?)
}

/// A repeated `Ship` is a repeat only with the tracking number it shipped under.
async fn same_tracking(conn: &mut AsyncPgConnection, id: i64, tracking: &Tracking) -> Result<()> {
    let (carrier, number): (String, String) = shipments::table
        .find(id)
        .select((shipments::carrier, shipments::tracking_number))
        .first(conn)
        .await?;
    if carrier == tracking.carrier && number == tracking.tracking_number {
        Ok(())
    } else {
        Err(Error::IllegalTransition(
            PartnerOrderStatus::Shipped,
            Step::Ship,
        ))
    }
}

fn interval(d: std::time::Duration) -> diesel::data_types::PgInterval {
    diesel::data_types::PgInterval::from_microseconds(
        i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
    )
}

/// An administrator's adjustment of purchase-confirmed partner order `id` (a claim settled
/// after confirmation), in one transaction: `amount` of its card share goes back through the
/// gateway (a refund of its own, cause `PARTNER_ORDER_ADJUSTED`, at most what it captured and
/// was not refunded) and the points it earned are taken back (`EARN_REVERSED`, as far as the
/// balance holds them). Once per partner order; the reason goes to the payment history with the
/// administrator. Its status does not change: nothing moves after confirmation.
pub async fn adjust(
    conn: &mut AsyncPgConnection,
    admin_id: i64,
    id: i64,
    amount: i64,
    reason: &str,
) -> Result<PartnerOrderView> {
    let order_id = conn
        .transaction::<_, Error, _>(async |conn| {
            let owner: Option<(i64, i64)> = rows::table
                .inner_join(orders::table)
                .filter(rows::id.eq(id))
                .select((rows::order_id, orders::user_id))
                .first(conn)
                .await
                .optional()?;
            let (order_id, user_id) = owner.ok_or(Error::NotFound(Missing::PartnerOrder))?;
            orders::table
                .find(order_id)
                .select(orders::id)
                .for_update()
                .first::<i64>(conn)
                .await?;
            let locked = lock(conn, id).await?;
            if locked.status != PartnerOrderStatus::PurchaseConfirmed {
                return Err(Error::NotAdjustable(
                    "only a purchase-confirmed partner order is adjusted",
                ));
            }
            let card: Option<(Option<i64>, i64, i64)> = payment_splits::table
                .filter(payment_splits::partner_order_id.eq(id))
                .filter(payment_splits::method.eq(PaymentKind::Card))
                .select((
                    payment_splits::payment_id,
                    payment_splits::captured,
                    payment_splits::refunded,
                ))
                .first(conn)
                .await
                .optional()?;
            let refundable = card.map_or(0, |(_, captured, refunded)| captured - refunded);
            if !(1..=refundable).contains(&amount) {
                return Err(Error::field(
                    "amount",
                    format!("must be 1..={refundable}: what its card share can still give back"),
                ));
            }
            let payment_id = card
                .and_then(|(p, ..)| p)
                .expect("a card share has its payment");
            let key: Option<String> = payments::table
                .find(payment_id)
                .select(payments::transaction_key)
                .first(conn)
                .await?;
            let key =
                key.ok_or_else(|| anyhow::anyhow!("payment {payment_id} has no transaction"))?;
            let required = refunds::require_part(
                conn,
                &Refundable {
                    payment_id,
                    order_id,
                    user_id,
                    amount,
                },
                &key,
                RefundCause::PartnerOrderAdjusted,
                id,
                Source::Admin,
                Some(&format!("by administrator {admin_id}: {reason}")),
            )
            .await?;
            if !required {
                return Err(Error::NotAdjustable(
                    "this partner order was adjusted already",
                ));
            }
            points::reverse_earned(conn, user_id, order_id, id).await?;
            Ok(order_id)
        })
        .await?;
    tracing::info!(
        partner_order.id = id,
        admin.id = admin_id,
        amount,
        "partner order adjusted"
    );
    partner_orders::one(conn, order_id, id)
        .await?
        .ok_or(Error::NotFound(Missing::PartnerOrder))
}

/// Whether partner order `id` is the only one of order `order_id` not cancelled.
async fn last_standing(conn: &mut AsyncPgConnection, order_id: i64, id: i64) -> Result<bool> {
    let others: i64 = rows::table
        .filter(rows::order_id.eq(order_id))
        .filter(rows::id.ne(id))
        .filter(rows::status.ne(PartnerOrderStatus::Cancelled))
        .count()
        .get_result(conn)
        .await?;
    Ok(others == 0)
}

/// Gives a cancelled or returned partner order's paid share back, inside the transaction that
/// moves it: its units back in stock (all of them, cancelled; the shipped ones, returned), its
/// points credited at once, its card share refunded through the gateway (a refund of its own,
/// which the refund worker sends and confirms), and its sale subtracted (`OrderCancelled` with
/// its lines). The coupon stays used: it goes back only with the whole checkout.
async fn give_back(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    locked: &Locked,
    user_id: i64,
    cause: RefundCause,
) -> Result<()> {
    let id = locked.id;
    let units: Vec<(i64, i64, i64)> = match cause {
        RefundCause::PartnerOrderReturned => {
            diesel::update(order_items::table.filter(order_items::partner_order_id.eq(id)))
                .set(order_items::quantity_returned.eq(order_items::quantity_shipped))
                .returning((
                    order_items::product_id,
                    order_items::quantity_returned,
                    order_items::unit_price,
                ))
                .get_results(conn)
                .await?
        }
        _ => {
            diesel::update(order_items::table.filter(order_items::partner_order_id.eq(id)))
                .set(
                    order_items::quantity_cancelled
                        .eq(order_items::quantity - order_items::quantity_shipped),
                )
                .returning((
                    order_items::product_id,
                    order_items::quantity_cancelled,
                    order_items::unit_price,
                ))
                .get_results(conn)
                .await?
        }
    };
    let mut lines: Vec<OrderLine> = units
        .into_iter()
        .filter(|(_, quantity, _)| *quantity > 0)
        .map(|(product_id, quantity, unit_price)| OrderLine {
            product_id,
            quantity,
            unit_price,
        })
        .collect();
    lines.sort_by_key(|l| l.product_id);
    crate::domain::holds::restock(conn, &lines).await?;

    let splits: Vec<(PaymentKind, Option<i64>, i64, i64)> = payment_splits::table
        .filter(payment_splits::partner_order_id.eq(id))
        .select((
            payment_splits::method,
            payment_splits::payment_id,
            payment_splits::captured,
            payment_splits::refunded,
        ))
        .load(conn)
        .await?;
    for (method, payment_id, captured, refunded) in splits {
        let owed = captured - refunded;
        if owed <= 0 {
            continue;
        }
        match (method, payment_id) {
            (PaymentKind::Point, _) => {
                points::credit(
                    conn,
                    user_id,
                    owed,
                    Credit::Refund {
                        order_id: locked.order_id,
                    },
                )
                .await?;
                diesel::update(
                    payment_splits::table
                        .filter(payment_splits::partner_order_id.eq(id))
                        .filter(payment_splits::method.eq(PaymentKind::Point)),
                )
                .set((
                    payment_splits::refunded.eq(payment_splits::captured),
                    payment_splits::updated_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await?;
            }
            (PaymentKind::Card, Some(payment_id)) => {
                let key: Option<String> = payments::table
                    .find(payment_id)
                    .select(payments::transaction_key)
                    .first(conn)
                    .await?;
                let key = key.ok_or_else(|| {
                    anyhow::anyhow!("captured card payment {payment_id} has no transaction")
                })?;
                let refundable = Refundable {
                    payment_id,
                    order_id: locked.order_id,
                    user_id,
                    amount: owed,
                };
                refunds::require_part(conn, &refundable, &key, cause, id, Source::Cancel, None)
                    .await?;
            }
            (PaymentKind::Card, None) => {}
        }
    }
    let paid_at: Option<DateTime<Utc>> = orders::table
        .find(locked.order_id)
        .select(orders::paid_at)
        .first(conn)
        .await?;
    if !lines.is_empty() {
        outbox::record(
            conn,
            topics,
            vec![Event::OrderCancelled(OrderCancelled {
                order_id: locked.order_id,
                user_id,
                lines,
                was_paid: true,
                paid_at,
            })],
        )
        .await?;
    }
    Ok(())
}

/// Executes a decided move of the locked partner order; returns its instant.
#[allow(clippy::too_many_arguments)]
async fn execute(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    settings: &FulfilmentSettings,
    locked: &Locked,
    user_id: i64,
    to: PartnerOrderStatus,
    step: Step,
    details: &Details,
) -> Result<DateTime<Utc>> {
    let at = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
    let id = locked.id;
    match (step, to) {
        (Step::Prepare, PartnerOrderStatus::Preparing) => {}
        (Step::Ship, PartnerOrderStatus::Shipped) => {
            let tracking = details
                .tracking
                .as_ref()
                .ok_or_else(|| Error::field("tracking_number", "is required"))?;
            diesel::insert_into(shipments::table)
                .values((
                    shipments::partner_order_id.eq(id),
                    shipments::carrier.eq(&tracking.carrier),
                    shipments::tracking_number.eq(&tracking.tracking_number),
                    shipments::shipped_at.eq(at),
                    shipments::deliver_due_at.eq(diesel::dsl::sql::<Timestamptz>("")
                        .bind::<Timestamptz, _>(at)
                        .sql(" + ")
                        .bind::<Interval, _>(interval(settings.deliver_after))),
                ))
                .execute(conn)
                .await?;
            diesel::update(order_items::table.filter(order_items::partner_order_id.eq(id)))
                .set(
                    order_items::quantity_shipped
                        .eq(order_items::quantity - order_items::quantity_cancelled),
                )
                .execute(conn)
                .await?;
        }
        (
            Step::Deliver | Step::Confirm,
            PartnerOrderStatus::Delivered | PartnerOrderStatus::PurchaseConfirmed,
        ) => {
            let by = if step == Step::Deliver {
                "PARTNER"
            } else {
                "CUSTOMER"
            };
            delivered(conn, settings, id, at, by).await?;
        }
        (Step::RequestReturn, PartnerOrderStatus::ReturnRequested) => {
            let reason = details
                .reason
                .as_deref()
                .ok_or_else(|| Error::field("reason", "is required"))?;
            let (delivered_at, due): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
                shipments::table
                    .inner_join(rows::table)
                    .filter(shipments::partner_order_id.eq(id))
                    .select((shipments::delivered_at, rows::confirm_due_at))
                    .first(conn)
                    .await?;
            let window =
                chrono::Duration::from_std(settings.return_window).map_err(anyhow::Error::new)?;
            if delivered_at.is_some_and(|d| at > d + window) {
                return Err(Error::ReturnWindowClosed);
            }
            // The confirmation timer stops while the return is open.
            let left = due.map(|due| (due - at).num_milliseconds().max(0));
            diesel::insert_into(returns::table)
                .values((
                    returns::partner_order_id.eq(id),
                    returns::reason.eq(reason),
                    returns::requested_at.eq(at),
                    returns::confirm_left_ms.eq(left),
                ))
                .execute(conn)
                .await?;
            diesel::update(rows::table.find(id))
                .set(rows::confirm_due_at.eq(None::<DateTime<Utc>>))
                .execute(conn)
                .await?;
        }
        (Step::WithdrawReturn | Step::RejectReturn, PartnerOrderStatus::Delivered) => {
            let outcome = if step == Step::WithdrawReturn {
                "WITHDRAWN"
            } else {
                "REJECTED"
            };
            let left: Option<i64> = diesel::update(
                returns::table
                    .filter(returns::partner_order_id.eq(id))
                    .filter(returns::status.eq("REQUESTED")),
            )
            .set((returns::status.eq(outcome), returns::resolved_at.eq(at)))
            .returning(returns::confirm_left_ms)
            .get_result::<Option<i64>>(conn)
            .await?;
            // The confirmation timer goes on where it stopped.
            let due = at + chrono::Duration::milliseconds(left.unwrap_or(0));
            diesel::update(rows::table.find(id))
                .set(rows::confirm_due_at.eq(due))
                .execute(conn)
                .await?;
        }
        (Step::AcceptReturn, PartnerOrderStatus::Returned) => {
            diesel::update(
                returns::table
                    .filter(returns::partner_order_id.eq(id))
                    .filter(returns::status.eq("REQUESTED")),
            )
            .set((returns::status.eq("ACCEPTED"), returns::resolved_at.eq(at)))
            .execute(conn)
            .await?;
            give_back(
                conn,
                topics,
                locked,
                user_id,
                RefundCause::PartnerOrderReturned,
            )
            .await?;
        }
        (Step::Cancel, PartnerOrderStatus::Cancelled) => {
            give_back(
                conn,
                topics,
                locked,
                user_id,
                RefundCause::PartnerOrderCancelled,
            )
            .await?;
        }
        _ => {
            return Err(Error::Internal(anyhow::anyhow!(
                "partner order {id}: {step:?} to {to} is not executed here"
            )));
        }
    }
    diesel::update(rows::table.find(id))
        .set((
            rows::status.eq(to),
            rows::updated_at.eq(at),
            rows::confirmed_at.eq((to == PartnerOrderStatus::PurchaseConfirmed).then_some(at)),
            rows::cancelled_at.eq((to == PartnerOrderStatus::Cancelled).then_some(at)),
        ))
        .execute(conn)
        .await?;
    if to == PartnerOrderStatus::PurchaseConfirmed {
        diesel::update(rows::table.find(id))
            .set(rows::confirm_due_at.eq(None::<DateTime<Utc>>))
            .execute(conn)
            .await?;
        let earned = Earned::of(
            user_id,
            locked.order_id,
            id,
            locked.items_total - locked.discount_share,
            settings.earn_rate_bps,
        );
        points::earn(conn, earned.as_slice()).await?;
        crate::domain::settlement::accrue(conn, &[id], settings.time_zone).await?;
    }
    Ok(at)
}

/// Records the delivery of partner order `id` at `at` (unless recorded already) and starts its
/// confirmation timer: `confirm_after` from now, or the backstop from shipping if sooner.
async fn delivered(
    conn: &mut AsyncPgConnection,
    settings: &FulfilmentSettings,
    id: i64,
    at: DateTime<Utc>,
    by: &str,
) -> Result<()> {
    diesel::sql_query(
        "WITH s AS (
            UPDATE shipments SET delivered_at = $2, delivered_by = $3
             WHERE partner_order_id = $1 AND delivered_at IS NULL
         RETURNING shipped_at)
         UPDATE partner_orders SET confirm_due_at = least($2 + $4, (SELECT shipped_at FROM s) + $5)
          WHERE id = $1 AND EXISTS (SELECT 1 FROM s)",
    )
    .bind::<BigInt, _>(id)
    .bind::<Timestamptz, _>(at)
    .bind::<Text, _>(by)
    .bind::<Interval, _>(interval(settings.confirm_after))
    .bind::<Interval, _>(interval(settings.confirm_backstop))
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(QueryableByName)]
struct Moved {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    order_id: i64,
    #[diesel(sql_type = BigInt)]
    partner_id: i64,
    #[diesel(sql_type = BigInt)]
    user_id: i64,
    #[diesel(sql_type = BigInt)]
    items_total: i64,
    #[diesel(sql_type = BigInt)]
    discount_share: i64,
    #[diesel(sql_type = BigInt)]
    points_share: i64,
    #[diesel(sql_type = BigInt)]
    card_share: i64,
}

impl Moved {
    fn changed(
        &self,
        from: PartnerOrderStatus,
        to: PartnerOrderStatus,
        at: DateTime<Utc>,
    ) -> Event {
        Locked {
            id: self.id,
            order_id: self.order_id,
            partner_id: self.partner_id,
            status: from,
            items_total: self.items_total,
            discount_share: self.discount_share,
            points_share: self.points_share,
            card_share: self.card_share,
        }
        .changed(self.user_id, to, at)
    }
}

/// Delivers up to `limit` shipped partner orders whose delivery is due, in one transaction
/// (their confirmation timers start); returns how many. Rows another instance holds are skipped.
pub async fn deliver_due(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    settings: &FulfilmentSettings,
    limit: i64,
) -> Result<usize> {
    conn.transaction::<_, Error, _>(async |conn| {
        let at = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        let moved: Vec<Moved> = diesel::sql_query(
            "WITH due AS (
                SELECT p.id FROM shipments s JOIN partner_orders p ON p.id = s.partner_order_id
                 WHERE s.delivered_at IS NULL AND s.deliver_due_at <= $1 AND p.status = 'SHIPPED'
                 ORDER BY s.deliver_due_at LIMIT $2
                   FOR UPDATE OF p SKIP LOCKED),
             s AS (
                UPDATE shipments s SET delivered_at = $1, delivered_by = 'AUTOMATIC'
                  FROM due WHERE s.partner_order_id = due.id
             RETURNING s.partner_order_id, s.shipped_at)
             UPDATE partner_orders p
                SET status = 'DELIVERED', updated_at = $1,
                    confirm_due_at = least($1 + $3, s.shipped_at + $4)
               FROM s, orders o
              WHERE p.id = s.partner_order_id AND o.id = p.order_id
          RETURNING p.id, p.order_id, p.partner_id, o.user_id, p.items_total, p.discount_share,
                    p.points_share, p.card_share",
        )
        .bind::<Timestamptz, _>(at)
        .bind::<BigInt, _>(limit)
        .bind::<Interval, _>(interval(settings.confirm_after))
        .bind::<Interval, _>(interval(settings.confirm_backstop))
        .load(conn)
        .await?;
        let events = moved
            .iter()
            .map(|m| {
                m.changed(
                    PartnerOrderStatus::Shipped,
                    PartnerOrderStatus::Delivered,
                    at,
                )
            })
            .collect::<Vec<_>>();
        let n = events.len();
        if n > 0 {
            outbox::record_at(conn, topics, events, at).await?;
        }
        Ok(n)
    })
    .await
}

/// Purchase-confirms up to `limit` delivered partner orders whose confirmation is due, in one
/// transaction; returns how many. Rows another instance (or a customer's request) holds are
/// skipped, and one whose return was requested meanwhile is no longer `DELIVERED`.
pub async fn confirm_due(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    settings: &FulfilmentSettings,
    limit: i64,
) -> Result<usize> {
    conn.transaction::<_, Error, _>(async |conn| {
        let at = chrono::SubsecRound::trunc_subsecs(Utc::now(), 6);
        let moved: Vec<Moved> = diesel::sql_query(
            "WITH due AS (
                SELECT id FROM partner_orders
                 WHERE status = 'DELIVERED' AND confirm_due_at <= $1
                 ORDER BY confirm_due_at LIMIT $2
                   FOR UPDATE SKIP LOCKED)
             UPDATE partner_orders p
                SET status = 'PURCHASE_CONFIRMED', confirmed_at = $1, confirm_due_at = NULL,
                    updated_at = $1
               FROM due, orders o
              WHERE p.id = due.id AND o.id = p.order_id
          RETURNING p.id, p.order_id, p.partner_id, o.user_id, p.items_total, p.discount_share,
                    p.points_share, p.card_share",
        )
        .bind::<Timestamptz, _>(at)
        .bind::<BigInt, _>(limit)
        .load(conn)
        .await?;
        let events = moved
            .iter()
            .map(|m| {
                m.changed(
                    PartnerOrderStatus::Delivered,
                    PartnerOrderStatus::PurchaseConfirmed,
                    at,
                )
            })
            .collect::<Vec<_>>();
        let earned: Vec<Earned> = moved
            .iter()
            .filter_map(|m| {
                Earned::of(
                    m.user_id,
                    m.order_id,
                    m.id,
                    m.items_total - m.discount_share,
                    settings.earn_rate_bps,
                )
            })
            .collect();
        points::earn(conn, &earned).await?;
        let ids: Vec<i64> = moved.iter().map(|m| m.id).collect();
        crate::domain::settlement::accrue(conn, &ids, settings.time_zone).await?;
        let n = events.len();
        if n > 0 {
            outbox::record_at(conn, topics, events, at).await?;
        }
        Ok(n)
    })
    .await
}

/// How many partner orders one transaction of an automatic pass moves at most: memory and lock
/// time stay bounded however many are due.
pub const PASS_BATCH: i64 = 1000;

/// Runs the automatic delivery and confirmation every `settings.interval` until `stop` turns:
/// each pass moves every due partner order, a batch per transaction.
pub async fn run(
    db: commerce_db::Pool,
    topics: Topics,
    settings: FulfilmentSettings,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(settings.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = pass(&db, &topics, &settings, &stop).await {
            tracing::warn!(error = %e, "automatic delivery and confirmation pass failed; retrying next tick");
        }
    }
}

/// One pass: every due delivery, then every due confirmation, batch after batch.
pub async fn pass(
    db: &commerce_db::Pool,
    topics: &Topics,
    settings: &FulfilmentSettings,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<(usize, usize)> {
    let mut conn = db.get().await?;
    let (mut delivered, mut confirmed) = (0, 0);
    loop {
        let n = deliver_due(&mut conn, topics, settings, PASS_BATCH).await?;
        delivered += n;
        if n < PASS_BATCH as usize || *stop.borrow() {
            break;
        }
    }
    loop {
        let n = confirm_due(&mut conn, topics, settings, PASS_BATCH).await?;
        confirmed += n;
        if n < PASS_BATCH as usize || *stop.borrow() {
            break;
        }
    }
    if delivered > 0 || confirmed > 0 {
        tracing::info!(delivered, confirmed, "automatic delivery and confirmation");
        metrics::counter!("partner_orders_auto_total", "step" => "delivered")
            .increment(delivered as u64);
        metrics::counter!("partner_orders_auto_total", "step" => "confirmed")
            .increment(confirmed as u64);
    }
    Ok((delivered, confirmed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Move::{Repeat, To};
    use PartnerOrderStatus as S;

    /// Every status × step, with its one answer.
    #[test]
    fn every_status_and_step_has_one_answer() {
        let expected = |status: S, step: Step| -> Result<Move, S> {
            Ok(match (step, status) {
                (Step::Prepare, S::Paid) => To(S::Preparing),
                (Step::Prepare, S::Preparing) => Repeat,
                (Step::Ship, S::Paid | S::Preparing) => To(S::Shipped),
                (Step::Ship, S::Shipped) => Repeat,
                (Step::Deliver, S::Shipped) => To(S::Delivered),
                (
                    Step::Deliver,
                    S::Delivered | S::ReturnRequested | S::Returned | S::PurchaseConfirmed,
                ) => Repeat,
                (Step::Confirm, S::Shipped | S::Delivered) => To(S::PurchaseConfirmed),
                (Step::Confirm, S::PurchaseConfirmed) => Repeat,
                (Step::Cancel, S::Paid | S::Preparing) => To(S::Cancelled),
                (Step::Cancel, S::Cancelled) => Repeat,
                (Step::RequestReturn, S::Delivered) => To(S::ReturnRequested),
                (Step::RequestReturn, S::ReturnRequested) => Repeat,
                (Step::WithdrawReturn | Step::RejectReturn, S::ReturnRequested) => To(S::Delivered),
                (Step::AcceptReturn, S::ReturnRequested) => To(S::Returned),
                (Step::AcceptReturn, S::Returned) => Repeat,
                _ => return Err(status),
            })
        };
        let mut checked = 0;
        for &status in S::ALL {
            for &step in Step::ALL {
                let want = match status {
                    S::PendingPayment | S::PaymentFailed => Err(status),
                    _ => expected(status, step),
                };
                assert_eq!(decide(status, step), want, "{status} / {step:?}");
                checked += 1;
            }
        }
        assert_eq!(checked, S::ALL.len() * Step::ALL.len());
    }

    #[test]
    fn nothing_moves_after_confirmation_cancellation_or_return() {
        for &end in &[S::PurchaseConfirmed, S::Cancelled, S::Returned] {
            for &step in Step::ALL {
                assert!(!matches!(decide(end, step), Ok(To(_))), "{end} / {step:?}");
            }
        }
    }

    #[test]
    fn tracking_is_validated() {
        assert!(Tracking::parse("CJ", "1234-5678").is_ok());
        assert!(Tracking::parse("", "1").is_err());
        assert!(Tracking::parse("CJ", "12 34").is_err());
    }
}
