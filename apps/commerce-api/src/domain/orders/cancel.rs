//! Cancelling an order, as the order's state machine decides.

use commerce_events::{Event, OrderCancelled};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::domain::history::{self, PaymentEventKind, Source};
use crate::domain::holds::{self, WhenSpent};
use crate::domain::lifecycle::{Fact, OrderState, Transition, decide};
use crate::domain::partner_orders;
use crate::domain::payments::{self};
use crate::domain::refunds;
use crate::domain::states::{OrderKind, OrderStatus, PaymentStatus};
use crate::domain::{Error, Missing, Result};
use crate::infra::outbox::{self, Topics};
use crate::infra::schema::orders;

use super::{OrderRow, order_columns};

/// Cancels one of the user's orders in one transaction: stock restored, points refunded, coupon
/// returned, a paid top-up's points taken back (refused while they are spent), a paid card
/// order's refund required, `OrderCancelled` recorded (for goods). Cancelling again
/// changes nothing. Returns the order's status afterwards (`CANCELLED`, or `REFUNDED` once a
/// card refund was confirmed).
pub async fn cancel(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    user_id: i64,
    order_id: i64,
) -> Result<OrderStatus> {
    let (status, cancelled_now) = conn
        .transaction::<_, Error, _>(async |conn| cancel_in(conn, topics, user_id, order_id).await)
        .await?;
    if cancelled_now {
        tracing::info!(order.id = order_id, user.id = user_id, "order cancelled");
    }
    Ok(status)
}

/// The body of [`cancel`], inside the caller's transaction: returns the order's status
/// afterwards and whether this call cancelled it.
pub(crate) async fn cancel_in(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    user_id: i64,
    order_id: i64,
) -> Result<(OrderStatus, bool)> {
    {
        {
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
            // Nothing is cancelled once it has left the partner: a checkout with a shipped part
            // is cancelled partner order by partner order.
            if partner_orders::any_shipped(conn, order.id).await? {
                return Err(Error::OrderPartlyShipped);
            }
            let state = OrderState {
                order: order.status,
                payment: payment.as_ref().map(|p| p.status),
            };
            let transition = decide(state, Fact::Cancel).map_err(|r| r.into_error(order.id))?;
            let lines = match transition {
                Transition::Nothing => return Ok((order.status, false)),
                Transition::Cancel => {
                    let lines = holds::release(conn, order.id, WhenSpent::Refuse).await?;
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
                    let lines = holds::release(conn, order.id, WhenSpent::Refuse).await?;
                    // A paid card order's money goes back through the gateway; `decide` chose
                    // this only for an order with a successful payment.
                    let payment = payment.as_ref().ok_or(Error::NotFound(Missing::Payment))?;
                    payments::require_refund(conn, order.id, order.user_id, payment).await?;
                    lines
                }
                other => return Err(other.unexpected(order.id, Fact::Cancel)),
            };
            partner_orders::cancelled(conn, topics, order.id).await?;
            diesel::update(orders::table.find(order.id))
                .set((
                    orders::status.eq(OrderStatus::Cancelled),
                    orders::cancelled_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await?;
            if let (Transition::CancelAndRefund, Some(payment)) = (transition, &payment) {
                // Partner orders refunded on their own may have taken all of it back already.
                refunds::close_if_all_back(conn, order.id, payment.id).await?;
            }
            // A top-up is no sale: there is nothing for the collector to take back.
            if order.kind == OrderKind::Goods {
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
            }
            Ok((OrderStatus::Cancelled, true))
        }
    }
}
