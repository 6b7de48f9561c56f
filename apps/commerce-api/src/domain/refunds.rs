//! Refunds: every gateway transaction whose money must go back is refunded, once.
//!
//! A refund is *required* ([`require`]) inside the transaction that decides it, as a `refunds`
//! row keyed by the gateway transaction (so a charge is refunded at most once, however many
//! callbacks, reconciliation passes or cancels report it):
//! - `ORDER_CANCELLED`: a paid card order was cancelled (its stock and coupon are back at once;
//!   the order ends `REFUNDED` once the gateway confirms);
//! - `CHARGED_AFTER_CLOSE`: the gateway charged an order after it was cancelled or had failed;
//! - `DUPLICATE_CHARGE`: a second successful charge of a paid order.
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

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::domain::Result;
use crate::domain::history::{self, PaymentEventKind as Kind, Source};
use crate::domain::states::RefundCause;
use crate::infra::schema::refunds;

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
    let inserted = diesel::insert_into(refunds::table)
        .values((
            refunds::payment_id.eq(payment.payment_id),
            refunds::order_id.eq(payment.order_id),
            refunds::user_id.eq(payment.user_id),
            refunds::transaction_key.eq(transaction_key),
            refunds::amount.eq(payment.amount),
            refunds::cause.eq(cause),
        ))
        .on_conflict(refunds::transaction_key)
        .do_nothing()
        .execute(conn)
        .await?;
    if inserted == 1 {
        history::append(
            conn,
            payment.order_id,
            Kind::RefundRequested,
            source,
            Some(transaction_key),
            Some(reason_text(cause)),
        )
        .await?;
        metrics::counter!("payments_refunds_requested_total", "cause" => cause.as_str())
            .increment(1);
        tracing::info!(order.id = payment.order_id, %transaction_key, cause = cause.as_str(), "refund required");
    }
    Ok(inserted == 1)
}

/// What a refund tells the gateway, by cause.
pub(crate) fn reason_text(cause: RefundCause) -> &'static str {
    match cause {
        RefundCause::OrderCancelled => "order cancelled",
        RefundCause::ChargedAfterClose => "charged after the order was closed",
        RefundCause::DuplicateCharge => "duplicate charge",
    }
}
