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
//! The refund worker runs in every API instance, and the instances share the work the way
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

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use commerce_events::{Event, PaymentRefunded};
use diesel::QueryableByName;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::watch;
use tracing::Instrument as _;
use utoipa::ToSchema;

use crate::domain::history::{self, PaymentEventKind as Kind, Source};
use crate::domain::payments::Payments;
use crate::domain::states::{OrderStatus, PaymentStatus, RefundCause, RefundStatus};
use crate::domain::{Error, Missing, Result};
use crate::infra::gateway::{GatewayError, RefundRequest};
use crate::infra::outbox;
use crate::infra::schema::{orders, payments, refunds};

/// Refunds claimed per pass.
const BATCH: i64 = 128;
/// Gateway calls in flight per pass.
const CONCURRENCY: usize = 32;
/// The longest wait between two attempts of a refund.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Attempts after which a refund still not confirmed is listed for an operator.
pub const ATTENTION_AFTER_ATTEMPTS: i32 = 3;

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

/// A refund claimed for an attempt at the gateway.
#[derive(QueryableByName, Debug)]
struct Due {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    order_id: i64,
    #[diesel(sql_type = BigInt)]
    user_id: i64,
    #[diesel(sql_type = Text)]
    transaction_key: String,
    #[diesel(sql_type = BigInt)]
    amount: i64,
    #[diesel(sql_type = Text)]
    cause: RefundCause,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    /// The claim: when it ends.
    #[diesel(sql_type = Timestamptz)]
    next_attempt_at: DateTime<Utc>,
}

/// Runs refund passes until `stop` turns true.
pub async fn run(state: Arc<Payments>, stop: watch::Receiver<bool>) {
    let interval = state.settings.reconcile_interval;
    crate::domain::reconcile::run_passes("refund", interval, BATCH, || pass(&state), stop).await
}

/// One pass: claims up to a batch of due refunds and sends them. Returns how many.
pub async fn pass(state: &Payments) -> Result<usize> {
    let due = claim(state).await?;
    let n = due.len();
    futures::stream::iter(due)
        .for_each_concurrent(CONCURRENCY, |d| {
            let order_id = d.order_id;
            // A trace of its own per refund attempt: its gateway calls and log lines share it.
            let span = tracing::info_span!("payment.refund", order.id = order_id);
            async move {
                let label = match attempt(state, d).await {
                    Ok(label) => label,
                    Err(e) => {
                        tracing::warn!(order.id = order_id, error = %e, "could not process a refund");
                        "error"
                    }
                };
                metrics::counter!("payments_refunds_total", "result" => label).increment(1);
            }
            .instrument(span)
        })
        .await;
    Ok(n)
}

async fn claim(state: &Payments) -> Result<Vec<Due>> {
    #[derive(QueryableByName)]
    struct Backlog {
        #[diesel(sql_type = BigInt)]
        pending: i64,
        #[diesel(sql_type = BigInt)]
        failed: i64,
        #[diesel(sql_type = diesel::sql_types::Double)]
        oldest: f64,
    }
    let mut conn = state.db.get().await?;
    let due: Vec<Due> = diesel::sql_query(
        "UPDATE refunds r
            SET next_attempt_at = now() + $1 * interval '1 millisecond', attempts = r.attempts + 1
          WHERE r.id IN (SELECT id FROM refunds
                          WHERE status = 'REQUESTED' AND next_attempt_at <= now()
                          ORDER BY next_attempt_at
                          LIMIT $2
                          FOR UPDATE SKIP LOCKED)
      RETURNING r.id, r.order_id, r.user_id, r.transaction_key, r.amount, r.cause, r.attempts,
                r.next_attempt_at",
    )
    .bind::<BigInt, _>(state.settings.recheck_after.as_millis() as i64)
    .bind::<BigInt, _>(BATCH)
    .load(&mut conn)
    .await?;
    let backlog: Backlog = diesel::sql_query(
        "SELECT count(*) FILTER (WHERE status = 'REQUESTED') AS pending,
                count(*) FILTER (WHERE status = 'FAILED') AS failed,
                COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)
                         FILTER (WHERE status = 'REQUESTED'))::float8, 0) AS oldest
           FROM refunds WHERE status <> 'REFUNDED'",
    )
    .get_result(&mut conn)
    .await?;
    metrics::gauge!("payments_refunds_pending").set(backlog.pending as f64);
    metrics::gauge!("payments_refunds_failed").set(backlog.failed as f64);
    metrics::gauge!("payments_refunds_pending_oldest_seconds").set(backlog.oldest);
    Ok(due)
}

/// Sends one claimed refund and records what the gateway said. Returns a metrics label.
async fn attempt(state: &Payments, due: Due) -> Result<&'static str> {
    let request = RefundRequest {
        user_id: due.user_id,
        transaction_key: &due.transaction_key,
        amount: due.amount,
        reason: reason_text(due.cause),
    };
    match state.gateway.refund(&request).await {
        Ok(confirmed)
            if confirmed.transaction_key == due.transaction_key
                && confirmed.amount == due.amount =>
        {
            Ok(if confirm(state, &due, &confirmed.refund_key).await? {
                "refunded"
            } else {
                "already_refunded"
            })
        }
        Ok(_) => {
            fail(
                state,
                &due,
                "the gateway's refund does not match the transaction",
            )
            .await?;
            Ok("mismatch")
        }
        Err(GatewayError::Refused(detail)) => {
            fail(
                state,
                &due,
                &format!("the gateway refused the refund: {detail}"),
            )
            .await?;
            Ok("refused")
        }
        Err(e) => {
            retry_later(state, &due, &e.to_string()).await?;
            Ok("gateway_unavailable")
        }
    }
}

fn reason_text(cause: RefundCause) -> &'static str {
    match cause {
        RefundCause::OrderCancelled => "order cancelled",
        RefundCause::ChargedAfterClose => "charged after the order was closed",
        RefundCause::DuplicateCharge => "duplicate charge",
    }
}

/// Records the gateway's confirmation, once: the refund `REFUNDED`; for the payment's own
/// transaction the payment `REFUNDED` too, and a cancelled order `REFUNDED`; a `PaymentRefunded`
/// event. Returns false when the refund was already confirmed (another instance, an earlier
/// attempt).
async fn confirm(state: &Payments, due: &Due, refund_key: &str) -> Result<bool> {
    let mut conn = state.db.get().await?;
    let topics = &state.topics;
    let confirmed = conn
        .transaction::<_, Error, _>(async |conn| {
            // The order row lock serialises this with cancels and settlements of the order.
            let order_status: OrderStatus = orders::table
                .find(due.order_id)
                .select(orders::status)
                .for_update()
                .first(conn)
                .await?;
            let payment_id: Option<i64> = diesel::update(
                refunds::table
                    .find(due.id)
                    .filter(refunds::status.ne(RefundStatus::Refunded)),
            )
            .set((
                refunds::status.eq(RefundStatus::Refunded),
                refunds::gateway_refund_key.eq(refund_key),
                refunds::refunded_at.eq(diesel::dsl::now),
                refunds::last_error.eq(None::<String>),
            ))
            .returning(refunds::payment_id)
            .get_result(conn)
            .await
            .optional()?;
            let Some(payment_id) = payment_id else {
                return Ok(false);
            };
            let own = diesel::update(
                payments::table
                    .find(payment_id)
                    .filter(payments::transaction_key.eq(&due.transaction_key))
                    .filter(payments::status.eq(PaymentStatus::RefundRequired)),
            )
            .set((
                payments::status.eq(PaymentStatus::Refunded),
                payments::reason.eq("refunded"),
            ))
            .execute(conn)
            .await?;
            if own == 1 && order_status == OrderStatus::Cancelled {
                diesel::update(orders::table.find(due.order_id))
                    .set(orders::status.eq(OrderStatus::Refunded))
                    .execute(conn)
                    .await?;
            }
            history::append(
                conn,
                due.order_id,
                Kind::RefundConfirmed,
                Source::RefundWorker,
                Some(&due.transaction_key),
                Some(&format!("gateway refund {refund_key}")),
            )
            .await?;
            outbox::record(
                conn,
                topics,
                vec![Event::PaymentRefunded(PaymentRefunded {
                    order_id: due.order_id,
                    user_id: due.user_id,
                    amount: due.amount,
                    transaction_key: due.transaction_key.clone(),
                    refund_key: refund_key.to_owned(),
                    cause: due.cause.as_str().to_owned(),
                })],
            )
            .await?;
            Ok(true)
        })
        .await?;
    if confirmed {
        tracing::info!(order.id = due.order_id, transaction_key = %due.transaction_key, %refund_key, "refund confirmed");
    }
    Ok(confirmed)
}

/// The wait before attempt `attempts + 1`: the base doubled per attempt, at most
/// [`MAX_BACKOFF`].
pub fn backoff(base: Duration, attempts: i32) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 20) as u32;
    base.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

/// Schedules the next attempt, if this pass still holds the claim.
async fn retry_later(state: &Payments, due: &Due, error: &str) -> Result<()> {
    let wait = backoff(state.settings.refund_retry_base, due.attempts);
    let mut conn = state.db.get().await?;
    diesel::sql_query(
        "UPDATE refunds SET next_attempt_at = now() + $1 * interval '1 millisecond', last_error = $2
          WHERE id = $3 AND status = 'REQUESTED' AND next_attempt_at = $4",
    )
    .bind::<BigInt, _>(wait.as_millis() as i64)
    .bind::<Text, _>(error)
    .bind::<BigInt, _>(due.id)
    .bind::<Timestamptz, _>(due.next_attempt_at)
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// Marks a refund the gateway refused `FAILED`, for an operator.
async fn fail(state: &Payments, due: &Due, error: &str) -> Result<()> {
    tracing::error!(order.id = due.order_id, transaction_key = %due.transaction_key, %error, "a refund failed; an operator must look at it");
    let mut conn = state.db.get().await?;
    conn.transaction::<_, Error, _>(async |conn| {
        let failed = diesel::sql_query(
            "UPDATE refunds SET status = 'FAILED', last_error = $1
              WHERE id = $2 AND status = 'REQUESTED' AND next_attempt_at = $3",
        )
        .bind::<Text, _>(error)
        .bind::<BigInt, _>(due.id)
        .bind::<Timestamptz, _>(due.next_attempt_at)
        .execute(conn)
        .await?;
        if failed == 1 {
            history::append(
                conn,
                due.order_id,
                Kind::RefundRefused,
                Source::RefundWorker,
                Some(&due.transaction_key),
                Some(error),
            )
            .await?;
        }
        Ok(())
    })
    .await
}

/// A payment that needs an operator's attention.
#[derive(Serialize, ToSchema, Clone, Debug, QueryableByName)]
pub struct Attention {
    #[diesel(sql_type = BigInt)]
    pub order_id: i64,
    #[diesel(sql_type = BigInt)]
    pub user_id: i64,
    #[diesel(sql_type = BigInt)]
    pub amount: i64,
    /// `REFUND_FAILED` (the gateway refused the refund), `REFUND_RETRYING` (attempted several
    /// times without a confirmation) or `OUTCOME_UNKNOWN` (the payment is still pending past the
    /// request deadline).
    #[diesel(sql_type = Text)]
    pub concern: String,
    /// The gateway transaction concerned, when there is one.
    #[diesel(sql_type = Nullable<Text>)]
    pub transaction_key: Option<String>,
    /// The refund's cause, for a refund.
    #[diesel(sql_type = Nullable<Text>)]
    pub cause: Option<String>,
    #[diesel(sql_type = Integer)]
    pub attempts: i32,
    /// The last error, or why the payment is pending.
    #[diesel(sql_type = Nullable<Text>)]
    pub detail: Option<String>,
    /// Since when the refund or payment has been open.
    #[diesel(sql_type = Timestamptz)]
    pub since: DateTime<Utc>,
}

/// Every payment that needs attention, oldest first, at most `limit`.
pub async fn attention(state: &Payments, limit: i64) -> Result<Vec<Attention>> {
    let mut conn = state.db.get().await?;
    Ok(diesel::sql_query(
        "SELECT * FROM (
           SELECT order_id, user_id, amount,
                  CASE WHEN status = 'FAILED' THEN 'REFUND_FAILED' ELSE 'REFUND_RETRYING' END
                    AS concern,
                  transaction_key, cause, attempts, last_error AS detail, created_at AS since
             FROM refunds
            WHERE status = 'FAILED' OR (status = 'REQUESTED' AND attempts >= $1)
           UNION ALL
           SELECT order_id, user_id, amount, 'OUTCOME_UNKNOWN', transaction_key, NULL, checks,
                  reason, created_at
             FROM payments
            WHERE status = 'PENDING' AND created_at < now() - $2 * interval '1 second'
         ) a ORDER BY since, order_id LIMIT $3",
    )
    .bind::<Integer, _>(ATTENTION_AFTER_ATTEMPTS)
    .bind::<BigInt, _>(state.settings.request_deadline.as_secs() as i64)
    .bind::<BigInt, _>(limit)
    .load(&mut conn)
    .await?)
}

/// What an operator's retry rescheduled.
#[derive(Serialize, ToSchema, Clone, Debug, PartialEq, Eq)]
pub struct Retried {
    pub order_id: i64,
    /// Refunds of the order sent again now.
    pub refunds: usize,
    /// Whether the pending payment is looked up at the gateway again now.
    pub payment: bool,
}

/// Sends an order's unconfirmed refunds again now (a `FAILED` one included) and has its pending
/// payment looked up again now. Refused when there is nothing to retry.
pub async fn retry(state: &Payments, order_id: i64) -> Result<Retried> {
    let mut conn = state.db.get().await?;
    let (refunds, payment) = conn
        .transaction::<_, Error, _>(async |conn| {
            let refunds = diesel::update(
                refunds::table
                    .filter(refunds::order_id.eq(order_id))
                    .filter(refunds::status.ne(RefundStatus::Refunded)),
            )
            .set((
                refunds::status.eq(RefundStatus::Requested),
                refunds::next_attempt_at.eq(diesel::dsl::now),
            ))
            .execute(conn)
            .await?;
            let payment = diesel::update(
                payments::table
                    .filter(payments::order_id.eq(order_id))
                    .filter(payments::status.eq(PaymentStatus::Pending)),
            )
            .set(payments::next_check_at.eq(diesel::dsl::now))
            .execute(conn)
            .await?;
            if refunds > 0 || payment == 1 {
                history::append(
                    conn,
                    order_id,
                    Kind::RetryRequested,
                    Source::Admin,
                    None,
                    None,
                )
                .await?;
            }
            Ok((refunds, payment == 1))
        })
        .await?;
    if refunds == 0 && !payment {
        let exists: bool = diesel::select(diesel::dsl::exists(
            payments::table.filter(payments::order_id.eq(order_id)),
        ))
        .get_result(&mut conn)
        .await?;
        return Err(if exists {
            Error::NothingToRetry
        } else {
            Error::NotFound(Missing::Payment)
        });
    }
    tracing::info!(
        order.id = order_id,
        refunds,
        payment,
        "payment retry requested by an operator"
    );
    Ok(Retried {
        order_id,
        refunds,
        payment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_ceiling() {
        let base = Duration::from_secs(1);
        assert_eq!(backoff(base, 1), Duration::from_secs(1));
        assert_eq!(backoff(base, 2), Duration::from_secs(2));
        assert_eq!(backoff(base, 4), Duration::from_secs(8));
        assert_eq!(backoff(base, 40), MAX_BACKOFF);
        assert_eq!(backoff(base, 0), Duration::from_secs(1));
    }
}
