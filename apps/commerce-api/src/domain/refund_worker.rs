//! The refund worker: sends every required refund (`crate::domain::refunds`) to the gateway
//! until the gateway confirms it, on the shared leased-work runner ([`commerce_db::worker`]).
//!
//! Every instance runs it, and the instances share the work: a pass *claims* due refunds by
//! pushing their `next_attempt_at` forward (`FOR UPDATE SKIP LOCKED`), which is a lease: a
//! crashed instance's claim runs out and another instance sends the refund. Every attempt
//! carries the transaction's idempotency key, so the gateway refunds a charge once even when two
//! instances send it; the confirmation is recorded once, in one transaction, as the order's
//! state machine ([`crate::domain::lifecycle::decide`]) says.
//!
//! Metrics: `payments_refunds_total{result}` ([`RefundAttempt`]), `payments_refunds_pending`,
//! `payments_refunds_failed` and `payments_refunds_pending_oldest_seconds`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use commerce_db::worker::{self, LeasedWork, Schedule};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Integer, Text, Timestamptz};
use diesel_async::{AsyncConnection, RunQueryDsl};
use tokio::sync::watch;

use crate::domain::history::{self, PaymentEventKind as Kind, Source};
use crate::domain::payments::Payments;
use crate::domain::refunds::{RefundRef, confirm_in, reason_text};
use crate::domain::states::{RefundCause, RefundStatus};
use crate::domain::{Error, Result};
use crate::infra::gateway::{GatewayError, RefundRequest};

/// Refunds claimed per pass.
const BATCH: i64 = 128;
/// Gateway calls in flight per pass.
const CONCURRENCY: usize = 32;
/// The longest wait between two attempts of a refund.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// A refund claimed for an attempt at the gateway.
#[derive(QueryableByName, Debug)]
pub struct Due {
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
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    partner_order_id: Option<i64>,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    /// The claim: when it ends.
    #[diesel(sql_type = Timestamptz)]
    next_attempt_at: DateTime<Utc>,
}

/// The refund worker, as leased work.
pub struct RefundWorker(pub Arc<Payments>);

impl LeasedWork for RefundWorker {
    type Item = Due;
    type Outcome = RefundAttempt;
    type Error = Error;
    const NAME: &'static str = "refund";
    const METRIC: &'static str = "payments_refunds_total";

    async fn claim(&self, limit: i64) -> Result<Vec<Due>> {
        claim(&self.0, limit).await
    }

    async fn process(&self, due: Due) -> Result<RefundAttempt> {
        attempt(&self.0, due).await
    }

    fn span(&self, due: &Due) -> tracing::Span {
        tracing::info_span!("payment.refund", order.id = due.order_id)
    }
}

impl worker::Outcome for RefundAttempt {
    fn as_str(self) -> &'static str {
        RefundAttempt::as_str(self)
    }
    fn error() -> Self {
        RefundAttempt::Error
    }
}

/// Runs refund passes until `stop` turns true.
pub async fn run(state: Arc<Payments>, stop: watch::Receiver<bool>) {
    let schedule = Schedule {
        interval: state.settings.reconcile_interval,
        batch: BATCH,
        concurrency: CONCURRENCY,
    };
    worker::run(Arc::new(RefundWorker(state)), schedule, stop).await
}

async fn claim(state: &Payments, limit: i64) -> Result<Vec<Due>> {
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
                          WHERE status = $3 AND next_attempt_at <= now()
                          ORDER BY next_attempt_at
                          LIMIT $2
                          FOR UPDATE SKIP LOCKED)
      RETURNING r.id, r.order_id, r.user_id, r.transaction_key, r.amount, r.cause,
                r.partner_order_id, r.attempts, r.next_attempt_at",
    )
    .bind::<BigInt, _>(state.settings.recheck_after.as_millis() as i64)
    .bind::<BigInt, _>(limit)
    .bind::<Text, _>(RefundStatus::Requested)
    .load(&mut conn)
    .await?;
    let backlog: Backlog = diesel::sql_query(
        "SELECT count(*) FILTER (WHERE status = $1) AS pending,
                count(*) FILTER (WHERE status = $2) AS failed,
                COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)
                         FILTER (WHERE status = $1))::float8, 0) AS oldest
           FROM refunds WHERE status <> $3",
    )
    .bind::<Text, _>(RefundStatus::Requested)
    .bind::<Text, _>(RefundStatus::Failed)
    .bind::<Text, _>(RefundStatus::Refunded)
    .get_result(&mut conn)
    .await?;
    metrics::gauge!("payments_refunds_pending").set(backlog.pending as f64);
    metrics::gauge!("payments_refunds_failed").set(backlog.failed as f64);
    metrics::gauge!("payments_refunds_pending_oldest_seconds").set(backlog.oldest);
    Ok(due)
}

commerce_enums::text_enum! {
    /// What one attempt at a refund did (`payments_refunds_total{result}`).
    pub enum RefundAttempt {
        Refunded => "refunded",
        /// Confirmed before (another instance, an earlier attempt).
        AlreadyRefunded => "already_refunded",
        /// The gateway's confirmation names another transaction or amount: an operator's turn.
        Mismatch => "mismatch",
        /// The gateway refused it: an operator's turn.
        Refused => "refused",
        /// Retried with backoff.
        GatewayUnavailable => "gateway_unavailable",
        Error => "error",
    }
}

/// Sends one claimed refund and records what the gateway said.
async fn attempt(state: &Payments, due: Due) -> Result<RefundAttempt> {
    let request = RefundRequest {
        user_id: due.user_id,
        transaction_key: &due.transaction_key,
        amount: due.amount,
        reason: reason_text(due.cause),
        partner_order_id: due.partner_order_id,
    };
    match state.gateway.refund(&request).await {
        Ok(confirmed)
            if confirmed.transaction_key == due.transaction_key
                && confirmed.amount == due.amount =>
        {
            Ok(if confirm(state, &due, &confirmed.refund_key).await? {
                RefundAttempt::Refunded
            } else {
                RefundAttempt::AlreadyRefunded
            })
        }
        Ok(_) => {
            fail(
                state,
                &due,
                "the gateway's refund does not match the transaction",
            )
            .await?;
            Ok(RefundAttempt::Mismatch)
        }
        Err(GatewayError::Refused(detail)) => {
            fail(
                state,
                &due,
                &format!("the gateway refused the refund: {detail}"),
            )
            .await?;
            Ok(RefundAttempt::Refused)
        }
        Err(e) => {
            retry_later(state, &due, &e.to_string()).await?;
            Ok(RefundAttempt::GatewayUnavailable)
        }
    }
}

/// Records the gateway's confirmation, once ([`confirm_in`]). Returns false when the
/// refund was already confirmed (another instance, an earlier attempt).
async fn confirm(state: &Payments, due: &Due, refund_key: &str) -> Result<bool> {
    let mut conn = state.db.get().await?;
    let topics = &state.topics;
    let refund = RefundRef {
        id: due.id,
        order_id: due.order_id,
        user_id: due.user_id,
        transaction_key: due.transaction_key.clone(),
        amount: due.amount,
        cause: due.cause,
    };
    conn.transaction::<_, Error, _>(async |conn| {
        confirm_in(conn, topics, &refund, refund_key, Source::RefundWorker).await
    })
    .await
}

/// The wait before attempt `attempts + 1`: the base doubled per attempt, at most
/// [`MAX_BACKOFF`].
pub fn backoff(base: Duration, attempts: i32) -> Duration {
    worker::doubling(base, attempts.max(0) as u32, MAX_BACKOFF)
}

/// Schedules the next attempt, if this pass still holds the claim.
async fn retry_later(state: &Payments, due: &Due, error: &str) -> Result<()> {
    let wait = backoff(state.settings.refund_retry_base, due.attempts);
    let mut conn = state.db.get().await?;
    diesel::sql_query(
        "UPDATE refunds SET next_attempt_at = now() + $1 * interval '1 millisecond', last_error = $2
          WHERE id = $3 AND status = $5 AND next_attempt_at = $4",
    )
    .bind::<BigInt, _>(wait.as_millis() as i64)
    .bind::<Text, _>(error)
    .bind::<BigInt, _>(due.id)
    .bind::<Timestamptz, _>(due.next_attempt_at)
    .bind::<Text, _>(RefundStatus::Requested)
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
            "UPDATE refunds SET status = $4, last_error = $1
              WHERE id = $2 AND status = $5 AND next_attempt_at = $3",
        )
        .bind::<Text, _>(error)
        .bind::<BigInt, _>(due.id)
        .bind::<Timestamptz, _>(due.next_attempt_at)
        .bind::<Text, _>(RefundStatus::Failed)
        .bind::<Text, _>(RefundStatus::Requested)
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
