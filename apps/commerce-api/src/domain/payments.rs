//! Card payments: submitting an order's payment to the gateway, and settling it exactly once.
//!
//! A card order commits as `PENDING_PAYMENT` with a `PENDING` payment row *before* the gateway is
//! called ([`submit`] runs after the commit, holding no connection while it waits), so a crash or
//! an outage during the call loses nothing: reconciliation finds the payment later.
//!
//! [`settle`] is the one place a pending payment ends. It locks the order row and acts only while
//! the order is still `PENDING_PAYMENT`, so however often and from wherever it is triggered
//! (callback, reconciliation, the order request itself) and whatever races it (a cancel), an
//! order is paid or compensated once:
//! - paid: order `PAID`, payment `SUCCESS`, outbox `OrderPaid` + `PaymentCompleted`;
//! - failed: stock restored, coupon back to `AVAILABLE`, points refunded if any were used, order
//!   `PAYMENT_FAILED`, payment `FAILED`, outbox `PaymentFailed`.
//!
//! A success reported for an order that was cancelled or failed meanwhile marks the payment
//! `REFUND_REQUIRED` (and counts `payments_refund_required_total`): the money must go back.

use commerce_events::{Event, OrderPlaced, PaymentSettled};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};
use crate::gateway::{GatewayError, PaymentRequest};
use crate::outbox::{self, Topics};
use crate::schema::{orders, payments};
use crate::state::AppState;

/// The payment of an order, as the storefront sees it.
#[derive(Serialize, ToSchema, Clone, Debug, Queryable)]
pub struct PaymentView {
    /// `PENDING`, `SUCCESS`, `FAILED`, `CANCELLED` or `REFUND_REQUIRED`.
    pub status: String,
    pub card_type: String,
    /// Masked: `1234-****-****-3456`.
    pub card_no: String,
    pub transaction_key: Option<String>,
    /// Why the payment failed, or why it is still pending.
    pub reason: Option<String>,
}

/// The columns of [`PaymentView`].
pub fn view_columns() -> (
    payments::status,
    payments::card_type,
    payments::card_no_masked,
    payments::transaction_key,
    payments::reason,
) {
    (
        payments::status,
        payments::card_type,
        payments::card_no_masked,
        payments::transaction_key,
        payments::reason,
    )
}

/// How a pending payment ends.
#[derive(Debug, Clone)]
pub enum Settlement {
    Paid {
        transaction_key: String,
    },
    Failed {
        transaction_key: Option<String>,
        reason: String,
    },
}

/// Shown while a payment waits for the gateway to come back.
pub const GATEWAY_UNAVAILABLE_REASON: &str =
    "the payment gateway is unavailable; the payment will be retried automatically";

/// Sends a freshly committed card order's payment to the gateway and records the outcome.
/// Returns the order status and payment as they stand afterwards. Never fails the request: a
/// payment that could not be submitted stays `PENDING` for reconciliation.
pub async fn submit(
    state: &AppState,
    order_id: i64,
    user_id: i64,
    amount: i64,
    card_type: &str,
    card_no: &str,
) -> (String, PaymentView) {
    let request = PaymentRequest {
        user_id,
        order_id,
        card_type,
        card_no,
        amount,
    };
    let result = state.gateway.request_payment(&request).await;
    let outcome = match result {
        Ok(tx) => record_transaction(state, order_id, &tx.transaction_key)
            .await
            .map(|()| None),
        Err(GatewayError::Refused(detail)) => {
            tracing::warn!(order.id = order_id, %detail, "the gateway refused the payment");
            settle_with(
                state,
                order_id,
                Settlement::Failed {
                    transaction_key: None,
                    reason: "the payment gateway refused the payment".into(),
                },
                "order",
            )
            .await
            .map(|_| None)
        }
        Err(e) => {
            tracing::info!(order.id = order_id, error = %e, "payment left for reconciliation");
            Ok(Some(GATEWAY_UNAVAILABLE_REASON))
        }
    };
    if let Err(e) = &outcome {
        // The payment row is committed; reconciliation will pick it up.
        tracing::warn!(order.id = order_id, error = %e, "could not record the gateway's answer");
    }
    match current(state, order_id).await {
        Ok((status, mut payment)) => {
            if let (Ok(Some(reason)), "PENDING") = (&outcome, payment.status.as_str()) {
                payment.reason = Some((*reason).to_owned());
            }
            (status, payment)
        }
        Err(e) => {
            tracing::warn!(order.id = order_id, error = %e, "could not read the payment back");
            (
                "PENDING_PAYMENT".into(),
                PaymentView {
                    status: "PENDING".into(),
                    card_type: card_type.to_owned(),
                    card_no: crate::card::mask(card_no),
                    transaction_key: None,
                    reason: Some(GATEWAY_UNAVAILABLE_REASON.into()),
                },
            )
        }
    }
}

/// The order's status and payment.
pub async fn current(state: &AppState, order_id: i64) -> ApiResult<(String, PaymentView)> {
    let mut conn = state.db.get().await?;
    Ok(orders::table
        .inner_join(payments::table.on(payments::order_id.eq(orders::id)))
        .filter(orders::id.eq(order_id))
        .select((orders::status, view_columns()))
        .first(&mut conn)
        .await?)
}

/// Records the gateway's transaction key for a still-pending payment and erases the sealed card
/// number (the gateway has it now).
pub async fn record_transaction(state: &AppState, order_id: i64, key: &str) -> ApiResult<()> {
    let mut conn = state.db.get().await?;
    diesel::update(
        payments::table
            .filter(payments::order_id.eq(order_id))
            .filter(payments::status.eq("PENDING")),
    )
    .set((
        payments::transaction_key.eq(key),
        payments::card_no_sealed.eq(None::<Vec<u8>>),
        payments::reason.eq(None::<String>),
    ))
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// [`settle`] on a pooled connection, counting the outcome under `via`. Returns the order's
/// status afterwards and whether this call changed it.
pub async fn settle_with(
    state: &AppState,
    order_id: i64,
    settlement: Settlement,
    via: &'static str,
) -> ApiResult<(String, bool)> {
    let mut conn = state.db.get().await?;
    let topics = state.topics.clone();
    let (status, changed) = conn
        .transaction::<_, ApiError, _>(async |conn| {
            settle(conn, &topics, order_id, &settlement).await
        })
        .await?;
    if changed {
        metrics::counter!("payments_settled_total", "status" => status.clone(), "via" => via)
            .increment(1);
        tracing::info!(order.id = order_id, status = %status, via, "payment settled");
    }
    Ok((status, changed))
}

#[derive(Queryable)]
struct Locked {
    user_id: i64,
    status: String,
    total_amount: i64,
    discount_amount: i64,
    final_amount: i64,
    payment_method: String,
}

/// Ends a pending payment inside the caller's transaction. Returns the order's status afterwards
/// and whether this call changed it.
pub async fn settle(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    order_id: i64,
    settlement: &Settlement,
) -> ApiResult<(String, bool)> {
    // The order row lock serialises every settlement and cancellation of this order.
    let order: Locked = orders::table
        .find(order_id)
        .select((
            orders::user_id,
            orders::status,
            orders::total_amount,
            orders::discount_amount,
            orders::final_amount,
            orders::payment_method,
        ))
        .for_update()
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| ApiError::not_found("ORDER_NOT_FOUND", "no such order"))?;
    let (payment_status, amount, current_key): (String, i64, Option<String>) = payments::table
        .filter(payments::order_id.eq(order_id))
        .select((
            payments::status,
            payments::amount,
            payments::transaction_key,
        ))
        .for_update()
        .first(conn)
        .await
        .optional()?
        .ok_or_else(|| ApiError::not_found("PAYMENT_NOT_FOUND", "the order has no card payment"))?;
    if order.status != "PENDING_PAYMENT" {
        if let Settlement::Paid { transaction_key } = settlement
            && payment_status == "SUCCESS"
            && current_key.as_ref() != Some(transaction_key)
        {
            // Two successful gateway payments for one order: the second must be refunded. Kept
            // on the payment (once per key), so it is not only in a log line.
            let recorded = diesel::sql_query(
                "UPDATE payments SET refund_keys = array_append(refund_keys, $2)
                  WHERE order_id = $1 AND NOT ($2 = ANY (refund_keys))",
            )
            .bind::<diesel::sql_types::BigInt, _>(order_id)
            .bind::<diesel::sql_types::Text, _>(transaction_key)
            .execute(conn)
            .await?;
            if recorded == 1 {
                tracing::error!(order.id = order_id, transaction_key = %transaction_key, "a second gateway payment succeeded for a paid order; a refund is required");
                metrics::counter!("payments_duplicate_charges_total").increment(1);
            }
        }
        if let Settlement::Paid { transaction_key } = settlement
            && matches!(payment_status.as_str(), "CANCELLED" | "FAILED")
        {
            tracing::warn!(order.id = order_id, transaction_key = %transaction_key, "the gateway charged an order that is no longer payable; a refund is required");
            metrics::counter!("payments_refund_required_total").increment(1);
            diesel::update(payments::table.filter(payments::order_id.eq(order_id)))
                .set((
                    payments::status.eq("REFUND_REQUIRED"),
                    payments::transaction_key.eq(transaction_key),
                    payments::reason.eq("charged after the order was closed; refund required"),
                ))
                .execute(conn)
                .await?;
        }
        return Ok((order.status, false));
    }
    let lines = crate::routes::orders::order_lines(conn, order_id).await?;
    let settled = |transaction_key: Option<String>, reason: Option<String>| PaymentSettled {
        order_id,
        user_id: order.user_id,
        amount,
        payment_method: order.payment_method.clone(),
        transaction_key,
        reason,
        lines: lines.clone(),
    };
    match settlement {
        Settlement::Paid { transaction_key } => {
            diesel::update(orders::table.find(order_id))
                .set((
                    orders::status.eq("PAID"),
                    orders::paid_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await?;
            mark_payment(conn, order_id, "SUCCESS", Some(transaction_key), None).await?;
            let placed = OrderPlaced {
                order_id,
                user_id: order.user_id,
                lines: lines.clone(),
                total_amount: order.total_amount,
                discount_amount: order.discount_amount,
                final_amount: order.final_amount,
                payment_method: order.payment_method.clone(),
            };
            outbox::record(
                conn,
                topics,
                vec![
                    Event::OrderPaid(placed),
                    Event::PaymentCompleted(settled(Some(transaction_key.clone()), None)),
                ],
            )
            .await?;
            Ok(("PAID".into(), true))
        }
        Settlement::Failed {
            transaction_key,
            reason,
        } => {
            crate::routes::orders::release_holds(conn, order_id).await?;
            diesel::update(orders::table.find(order_id))
                .set(orders::status.eq("PAYMENT_FAILED"))
                .execute(conn)
                .await?;
            mark_payment(
                conn,
                order_id,
                "FAILED",
                transaction_key.as_ref(),
                Some(reason),
            )
            .await?;
            outbox::record(
                conn,
                topics,
                vec![Event::PaymentFailed(settled(
                    transaction_key.clone(),
                    Some(reason.clone()),
                ))],
            )
            .await?;
            Ok(("PAYMENT_FAILED".into(), true))
        }
    }
}

/// Final state of a payment row; the sealed card number goes with it.
pub async fn mark_payment(
    conn: &mut AsyncPgConnection,
    order_id: i64,
    status: &str,
    transaction_key: Option<&String>,
    reason: Option<&String>,
) -> ApiResult<()> {
    diesel::update(payments::table.filter(payments::order_id.eq(order_id)))
        .set((
            payments::status.eq(status),
            payments::reason.eq(reason),
            payments::card_no_sealed.eq(None::<Vec<u8>>),
            payments::settled_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    if let Some(key) = transaction_key {
        diesel::update(payments::table.filter(payments::order_id.eq(order_id)))
            .set(payments::transaction_key.eq(key))
            .execute(conn)
            .await?;
    }
    Ok(())
}
