//! What needs an operator: refunds the gateway refused or keeps failing, payments whose outcome
//! is unknown past the request deadline, top-ups the gateway reversed after their points were
//! spent; and the operator's retry.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Integer, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::history::{self, PaymentEventKind as Kind, Source};
use crate::domain::payments::Payments;
use crate::domain::states::{PaymentStatus, RefundCause, RefundStatus};
use crate::domain::{Error, Missing, Result};
use crate::infra::schema::{payments, refunds};

/// Attempts after which a refund still not confirmed is listed for an operator.
pub const ATTENTION_AFTER_ATTEMPTS: i32 = 3;

commerce_enums::text_enum! {
    sql, schema;
    /// Why a payment needs an operator.
    pub enum Concern {
        /// The gateway refused the refund.
        RefundFailed => "REFUND_FAILED",
        /// The refund was attempted several times without a confirmation.
        RefundRetrying => "REFUND_RETRYING",
        /// The payment is still pending past the request deadline.
        OutcomeUnknown => "OUTCOME_UNKNOWN",
        /// The gateway reversed a top-up whose points were partly spent: `amount` points could
        /// not be taken back.
        TopUpShortfall => "TOP_UP_SHORTFALL",
    }
}

/// A payment that needs an operator's attention.
#[derive(Serialize, ToSchema, Clone, Debug)]
pub struct Attention {
    pub order_id: i64,
    pub user_id: i64,
    pub amount: i64,
    pub concern: Concern,
    /// The gateway transaction concerned, when there is one.
    pub transaction_key: Option<String>,
    /// The refund's cause, for a refund.
    pub cause: Option<RefundCause>,
    pub attempts: i32,
    /// The last error, or why the payment is pending.
    pub detail: Option<String>,
    /// Since when the refund or payment has been open.
    pub since: DateTime<Utc>,
}

/// One row of the attention query (refunds and payments in one shape).
#[derive(QueryableByName)]
struct AttentionRow {
    #[diesel(sql_type = BigInt)]
    order_id: i64,
    #[diesel(sql_type = BigInt)]
    user_id: i64,
    #[diesel(sql_type = BigInt)]
    amount: i64,
    #[diesel(sql_type = Text)]
    concern: Concern,
    #[diesel(sql_type = Nullable<Text>)]
    transaction_key: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    cause: Option<RefundCause>,
    #[diesel(sql_type = Integer)]
    attempts: i32,
    #[diesel(sql_type = Nullable<Text>)]
    detail: Option<String>,
    #[diesel(sql_type = Timestamptz)]
    since: DateTime<Utc>,
}

impl From<AttentionRow> for Attention {
    fn from(row: AttentionRow) -> Self {
        Self {
            order_id: row.order_id,
            user_id: row.user_id,
            amount: row.amount,
            concern: row.concern,
            transaction_key: row.transaction_key,
            cause: row.cause,
            attempts: row.attempts,
            detail: row.detail,
            since: row.since,
        }
    }
}

/// Every payment that needs attention, oldest first, at most `limit`.
pub async fn attention(state: &Payments, limit: i64) -> Result<Vec<Attention>> {
    let mut conn = state.db.get().await?;
    Ok(diesel::sql_query(
        "SELECT * FROM (
           SELECT order_id, user_id, amount,
                  CASE WHEN status = $4 THEN $7 ELSE $8 END AS concern,
                  transaction_key, cause, attempts, last_error AS detail, created_at AS since
             FROM refunds
            WHERE status = $4 OR (status = $5 AND attempts >= $1)
           UNION ALL
           SELECT order_id, user_id, amount, $9, transaction_key, NULL, checks,
                  reason, created_at
             FROM payments
            WHERE status = $6 AND created_at < now() - $2 * interval '1 second'
           UNION ALL
           SELECT o.id, o.user_id, sum(l.amount)::bigint, $10, p.transaction_key, NULL, 0,
                  'the gateway reversed this top-up after its points were spent',
                  o.created_at
             FROM orders o
             JOIN point_ledger l ON l.order_id = o.id AND l.kind IN ('TOP_UP', 'TOP_UP_REVERSED')
             JOIN payments p ON p.order_id = o.id
            WHERE o.kind = 'POINT_TOP_UP' AND o.status = 'REFUNDED'
            GROUP BY o.id, o.user_id, p.transaction_key, o.created_at
           HAVING sum(l.amount) > 0
         ) a ORDER BY since, order_id LIMIT $3",
    )
    .bind::<Integer, _>(ATTENTION_AFTER_ATTEMPTS)
    .bind::<BigInt, _>(state.settings.request_deadline.as_secs() as i64)
    .bind::<BigInt, _>(limit)
    .bind::<Text, _>(RefundStatus::Failed)
    .bind::<Text, _>(RefundStatus::Requested)
    .bind::<Text, _>(PaymentStatus::Pending)
    .bind::<Text, _>(Concern::RefundFailed)
    .bind::<Text, _>(Concern::RefundRetrying)
    .bind::<Text, _>(Concern::OutcomeUnknown)
    .bind::<Text, _>(Concern::TopUpShortfall)
    .load::<AttentionRow>(&mut conn)
    .await?
    .into_iter()
    .map(Into::into)
    .collect())
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
