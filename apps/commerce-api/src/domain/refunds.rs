//! Refunds: every gateway transaction whose money must go back is refunded, once.
//!
//! A refund is *required* ([`require`]) inside the transaction that decides it, as a `refunds`
//! row keyed by the gateway transaction (so a charge is refunded at most once, however many
//! callbacks, reconciliation passes or cancels report it):
//! - `ORDER_CANCELLED`: a paid card order was cancelled (its stock and coupon are back at once;
//!   the order ends `REFUNDED` once the gateway confirms);
//! - `CHARGED_AFTER_CLOSE`: the gateway charged an order after it was cancelled or had failed;
//! - `DUPLICATE_CHARGE`: a second successful charge of a paid order;
//! - `REFUNDED_AT_GATEWAY`: the gateway gave a paid order's money back by itself (its console, a
//!   chargeback); recorded confirmed at once ([`record_reversal`]): there is nothing to send.
//!
//! The refund worker (`crate::domain::refund_worker`) runs in every API instance, and the instances share the work the way
//! reconciliation does: a pass *claims* due refunds by pushing their `next_attempt_at` forward
//! (`FOR UPDATE SKIP LOCKED`), which is a lease: a crashed instance's claim runs out and another
//! instance sends the refund. Every attempt carries the transaction's idempotency key
//! ([`RefundRequest::key_for`]), so the gateway refunds a charge once even when two instances
//! (or an instance before and after a crash) send it; the confirmation is recorded once (only a
//! refund not yet `REFUNDED` is confirmed), with a `PaymentRefunded` event, in one transaction.
//!
//! A gateway that is down, slow or rate limiting is retried with exponential backoff (the client
//! retries and its breaker come first); an explicit refusal marks the refund `FAILED`, for an
//! operator (the admin routes list it and send it again).
//!
//! Metrics: `payments_refunds_requested_total{cause}`, `payments_refunds_total{result}`,
//! `payments_refunds_pending`, `payments_refunds_failed` and
//! `payments_refunds_pending_oldest_seconds`.

use commerce_events::{Event, PaymentRefunded};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::domain::Result;
use crate::domain::history::{self, PaymentEventKind as Kind, Source};
use crate::domain::lifecycle::{Fact, OrderState, Transition, decide};
use crate::domain::partner_orders;
use crate::domain::states::{OrderStatus, PaymentStatus, RefundCause, RefundStatus};
use crate::infra::outbox::{self, Topics};
use crate::infra::schema::{orders, payments, refunds};

/// The payment a refund gives money back for.
pub struct Refundable {
    pub payment_id: i64,
    pub order_id: i64,
    pub user_id: i64,
    pub amount: i64,
}

/// Requires a refund of `transaction_key`, inside the caller's transaction (and its history,
/// under `source`). Returns whether this call required it (false: it already was).
pub async fn require(
    conn: &mut AsyncPgConnection,
    payment: &Refundable,
    transaction_key: &str,
    cause: RefundCause,
    source: Source,
) -> Result<bool> {
    insert(
        conn,
        payment,
        transaction_key,
        cause,
        None,
        source,
        reason_text(cause),
    )
    .await
}

/// Requires the refund of one partner order's card share (`payment.amount`) of
/// `transaction_key`, inside the caller's transaction, once per partner order (and its
/// history, with `note` when given). Returns whether this call required it.
pub async fn require_part(
    conn: &mut AsyncPgConnection,
    payment: &Refundable,
    transaction_key: &str,
    cause: RefundCause,
    partner_order_id: i64,
    source: Source,
    note: Option<&str>,
) -> Result<bool> {
    let reason = format!(
        "{} (partner order {partner_order_id}, {} won){}",
        reason_text(cause),
        payment.amount,
        note.map(|n| format!(": {n}")).unwrap_or_default()
    );
    insert(
        conn,
        payment,
        transaction_key,
        cause,
        Some(partner_order_id),
        source,
        &reason,
    )
    .await
}

/// The one insert behind [`require`] and [`require_part`]: the refund row (once per
/// transaction, or per partner order), its history entry and its count.
async fn insert(
    conn: &mut AsyncPgConnection,
    payment: &Refundable,
    transaction_key: &str,
    cause: RefundCause,
    partner_order_id: Option<i64>,
    source: Source,
    reason: &str,
) -> Result<bool> {
    let inserted = diesel::insert_into(refunds::table)
        .values((
            refunds::payment_id.eq(payment.payment_id),
            refunds::order_id.eq(payment.order_id),
            refunds::user_id.eq(payment.user_id),
            refunds::transaction_key.eq(transaction_key),
            refunds::amount.eq(payment.amount),
            refunds::cause.eq(cause),
            refunds::partner_order_id.eq(partner_order_id),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    if inserted == 1 {
        history::append(
            conn,
            payment.order_id,
            Kind::RefundRequested,
            source,
            Some(transaction_key),
            Some(reason),
        )
        .await?;
        metrics::counter!("payments_refunds_requested_total", "cause" => cause.as_str())
            .increment(1);
        tracing::info!(order.id = payment.order_id, ?partner_order_id, %transaction_key, amount = payment.amount, cause = cause.as_str(), "refund required");
    }
    Ok(inserted == 1)
}

/// What a refund tells the gateway, by cause.
pub(crate) fn reason_text(cause: RefundCause) -> &'static str {
    match cause {
        RefundCause::OrderCancelled => "order cancelled",
        RefundCause::ChargedAfterClose => "charged after the order was closed",
        RefundCause::DuplicateCharge => "duplicate charge",
        RefundCause::RefundedAtGateway => "refunded or charged back at the gateway",
        RefundCause::PartnerOrderCancelled => "part of the order cancelled",
        RefundCause::PartnerOrderReturned => "part of the order returned",
        RefundCause::PartnerOrderAdjusted => "part of the order adjusted after confirmation",
    }
}

/// A required refund, as confirming it needs.
#[derive(Debug, Clone)]
pub(crate) struct RefundRef {
    pub id: i64,
    pub order_id: i64,
    pub user_id: i64,
    pub transaction_key: String,
    pub amount: i64,
    pub cause: RefundCause,
}

/// Records the gateway's confirmation of `refund` (its refund `refund_key`) inside the caller's
/// transaction, once: the refund `REFUNDED`; for the payment's own transaction the payment
/// `REFUNDED` too, and a cancelled order `REFUNDED`, as the order's state machine says; a
/// `PaymentRefunded` event; history under `source`. Returns false when the refund was already
/// confirmed (another instance, an earlier attempt).
pub(crate) async fn confirm_in(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    refund: &RefundRef,
    refund_key: &str,
    source: Source,
) -> Result<bool> {
    // The order row lock serialises this with cancels and settlements of the order.
    let order_status: OrderStatus = orders::table
        .find(refund.order_id)
        .select(orders::status)
        .for_update()
        .first(conn)
        .await?;
    let confirmed: Option<(i64, Option<i64>)> = diesel::update(
        refunds::table
            .find(refund.id)
            .filter(refunds::status.ne(RefundStatus::Refunded)),
    )
    .set((
        refunds::status.eq(RefundStatus::Refunded),
        refunds::gateway_refund_key.eq(refund_key),
        refunds::refunded_at.eq(diesel::dsl::now),
        refunds::last_error.eq(None::<String>),
    ))
    .returning((refunds::payment_id, refunds::partner_order_id))
    .get_result(conn)
    .await
    .optional()?;
    let Some((payment_id, partner_order)) = confirmed else {
        return Ok(false);
    };
    if let Some(part) = partner_order {
        // One partner order's share: its split is refunded; the payment is closed only when
        // nothing more is owed on a cancelled order.
        partner_orders::card_share_refunded(conn, part, refund.amount).await?;
        close_if_all_back(conn, refund.order_id, payment_id).await?;
    } else {
        let (payment_status, payment_key): (PaymentStatus, Option<String>) = payments::table
            .find(payment_id)
            .select((payments::status, payments::transaction_key))
            .for_update()
            .first(conn)
            .await?;
        let fact = Fact::RefundConfirmed {
            own: payment_key.as_deref() == Some(refund.transaction_key.as_str()),
        };
        let state = OrderState {
            order: order_status,
            payment: Some(payment_status),
        };
        match decide(state, fact).map_err(|r| r.into_error(refund.order_id))? {
            Transition::MarkRefunded { order_too } => {
                diesel::update(payments::table.find(payment_id))
                    .set((
                        payments::status.eq(PaymentStatus::Refunded),
                        payments::reason.eq("refunded"),
                    ))
                    .execute(conn)
                    .await?;
                partner_orders::card_refunded(conn, payment_id).await?;
                if order_too {
                    diesel::update(orders::table.find(refund.order_id))
                        .set(orders::status.eq(OrderStatus::Refunded))
                        .execute(conn)
                        .await?;
                }
            }
            Transition::Nothing => {}
            other => return Err(other.unexpected(refund.order_id, fact)),
        }
    }
    history::append(
        conn,
        refund.order_id,
        Kind::RefundConfirmed,
        source,
        Some(&refund.transaction_key),
        Some(&format!("gateway refund {refund_key}")),
    )
    .await?;
    outbox::record(
        conn,
        topics,
        vec![Event::PaymentRefunded(PaymentRefunded {
            order_id: refund.order_id,
            user_id: refund.user_id,
            amount: refund.amount,
            transaction_key: refund.transaction_key.clone(),
            refund_key: refund_key.to_owned(),
            cause: refund.cause,
        })],
    )
    .await?;
    tracing::info!(order.id = refund.order_id, transaction_key = %refund.transaction_key, %refund_key, "refund confirmed");
    Ok(true)
}

/// A cancelled order whose payment owes nothing more (every refund of it confirmed): the
/// payment and the order are `REFUNDED`. Inside the caller's transaction, which holds the
/// order's row lock.
pub(crate) async fn close_if_all_back(
    conn: &mut AsyncPgConnection,
    order_id: i64,
    payment_id: i64,
) -> Result<()> {
    let (order_status, payment_status): (OrderStatus, PaymentStatus) = orders::table
        .inner_join(payments::table.on(payments::order_id.eq(orders::id)))
        .filter(payments::id.eq(payment_id))
        .select((orders::status, payments::status))
        .first(conn)
        .await?;
    if order_status != OrderStatus::Cancelled || payment_status != PaymentStatus::RefundRequired {
        return Ok(());
    }
    let pending: i64 = refunds::table
        .filter(refunds::payment_id.eq(payment_id))
        .filter(refunds::status.ne(RefundStatus::Refunded))
        .count()
        .get_result(conn)
        .await?;
    if pending == 0 {
        diesel::update(payments::table.find(payment_id))
            .set((
                payments::status.eq(PaymentStatus::Refunded),
                payments::reason.eq("refunded"),
            ))
            .execute(conn)
            .await?;
        diesel::update(orders::table.find(order_id))
            .set(orders::status.eq(OrderStatus::Refunded))
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Confirms the required refunds of `transaction_key` (not confirmed yet) from the gateway's
/// word that the transaction is refunded, inside the caller's transaction: the transaction's own
/// and its partner orders'. Returns false when there is none left to confirm.
pub(crate) async fn confirm_key_in(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    transaction_key: &str,
    refund_key: &str,
    source: Source,
) -> Result<bool> {
    let rows: Vec<(i64, i64, i64, i64, RefundCause, Option<i64>)> = refunds::table
        .filter(refunds::transaction_key.eq(transaction_key))
        .filter(refunds::status.ne(RefundStatus::Refunded))
        .order(refunds::id)
        .select((
            refunds::id,
            refunds::order_id,
            refunds::user_id,
            refunds::amount,
            refunds::cause,
            refunds::partner_order_id,
        ))
        .load(conn)
        .await?;
    let mut any = false;
    // The partner orders' refunds first: the transaction's own then closes the payment.
    let (parts, own): (Vec<_>, Vec<_>) = rows.into_iter().partition(|r| r.5.is_some());
    for (id, order_id, user_id, amount, cause, part) in parts.into_iter().chain(own) {
        let refund = RefundRef {
            id,
            order_id,
            user_id,
            transaction_key: transaction_key.to_owned(),
            amount,
            cause,
        };
        // The gateway named one refund; the others are known by the transaction's.
        let key = match part {
            Some(part) => format!("{refund_key}:part-{part}"),
            None => refund_key.to_owned(),
        };
        any |= confirm_in(conn, topics, &refund, &key, source).await?;
    }
    Ok(any)
}

/// Records a refund the gateway made by itself (its console, a chargeback) as confirmed, inside
/// the caller's transaction, with its `PaymentRefunded` event: nothing is sent. Returns false when
/// the transaction already has a refund row (nothing is recorded twice).
pub(crate) async fn record_reversal(
    conn: &mut AsyncPgConnection,
    topics: &Topics,
    payment: &Refundable,
    transaction_key: &str,
    refund_key: &str,
) -> Result<bool> {
    let inserted = diesel::insert_into(refunds::table)
        .values((
            refunds::payment_id.eq(payment.payment_id),
            refunds::order_id.eq(payment.order_id),
            refunds::user_id.eq(payment.user_id),
            refunds::transaction_key.eq(transaction_key),
            refunds::amount.eq(payment.amount),
            refunds::cause.eq(RefundCause::RefundedAtGateway),
            refunds::status.eq(RefundStatus::Refunded),
            refunds::gateway_refund_key.eq(refund_key),
            refunds::refunded_at.eq(diesel::dsl::now),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    if inserted == 0 {
        return Ok(false);
    }
    outbox::record(
        conn,
        topics,
        vec![Event::PaymentRefunded(PaymentRefunded {
            order_id: payment.order_id,
            user_id: payment.user_id,
            amount: payment.amount,
            transaction_key: transaction_key.to_owned(),
            refund_key: refund_key.to_owned(),
            cause: RefundCause::RefundedAtGateway,
        })],
    )
    .await?;
    metrics::counter!("payments_reversed_at_gateway_total").increment(1);
    Ok(true)
}
