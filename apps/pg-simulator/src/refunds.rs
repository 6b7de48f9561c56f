//! Refunds: `POST /api/v1/payments/{transaction_key}/refunds` gives a successful payment's money
//! back, in full or in parts, never more than was captured.
//!
//! - The body names the amount, at most what is left of the payment (its amount less what was
//!   refunded before; 422 `REFUND_EXCEEDS_REMAINING` otherwise), and optionally a reason. The
//!   payment counts what went back (`refunded_amount`) and is `REFUNDED` once all of it did.
//! - Like a payment request it takes the configured latency, fails (HTTP 500, or the configured
//!   failure status) at `refund_failure_rate`, recording nothing, and is processed to the end in a task of its
//!   own, whether or not the client is still waiting (record and response delays apply).
//! - With an `Idempotency-Key`, a repeat gets the original refund back; the key used for another
//!   payment's refund gets 422 `IDEMPOTENCY_KEY_REUSED`. Without one, a payment already refunded
//!   gets 422 `ALREADY_REFUNDED`, as it does with a key other than the refund's.
//! - A payment still `PENDING` gets 409 `PAYMENT_NOT_SETTLED` (retry later); a failed one 422
//!   `PAYMENT_NOT_REFUNDABLE`; someone else's or an unknown one 404.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use commerce_db::idempotency::{self, Replay};
use commerce_web::idempotency::IdempotencyKey;
use commerce_web::{FieldError, Json, Path, Problem};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};

use crate::Simulator;
use crate::error::SimError;
use crate::payments::{PaymentStatus, user_id};
use crate::schema::{payments, refunds};

type Result<T> = std::result::Result<T, SimError>;

commerce_enums::text_enum! {
    /// What became of a refund request (`pg_sim_refunds_total{outcome}`).
    pub enum RefundOutcome {
        Refunded => "refunded",
        Replayed => "replayed",
        /// A simulated failure.
        Failed => "failed",
    }
}

impl RefundOutcome {
    pub fn count(self) {
        metrics::counter!("pg_sim_refunds_total", "outcome" => self.as_str()).increment(1);
    }
}

const MAX_REASON_LEN: usize = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    /// The payment's whole amount.
    amount: i64,
    reason: Option<String>,
}

/// A refund as the gateway reports it.
#[derive(Serialize, Clone, Debug)]
pub struct Refund {
    pub refund_key: String,
    pub transaction_key: String,
    pub amount: i64,
    pub reason: Option<String>,
    /// Always `REFUNDED`: a refund is recorded only once the money went back.
    pub status: PaymentStatus,
}

/// The row a [`Refund`] is read from.
#[derive(Queryable, Selectable)]
#[diesel(table_name = refunds)]
struct RefundRow {
    refund_key: String,
    transaction_key: String,
    amount: i64,
    reason: Option<String>,
}

impl From<RefundRow> for Refund {
    fn from(row: RefundRow) -> Self {
        Self {
            refund_key: row.refund_key,
            transaction_key: row.transaction_key,
            amount: row.amount,
            reason: row.reason,
            status: PaymentStatus::Refunded,
        }
    }
}

fn validate(req: &RefundRequest) -> Result<()> {
    let mut errors = Vec::new();
    if req.amount <= 0 {
        errors.push(FieldError::new("amount", "must be positive"));
    }
    if let Some(reason) = &req.reason
        && (reason.len() > MAX_REASON_LEN || reason.contains('\0'))
    {
        errors.push(FieldError::new(
            "reason",
            format!("must be at most {MAX_REASON_LEN} bytes of text"),
        ));
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Problem::validation(errors).into())
    }
}

/// What a refund request asks for, as its idempotency fingerprint.
fn asks(transaction_key: &str, amount: i64) -> String {
    commerce_db::idempotency::fingerprint(&[transaction_key.as_bytes(), &amount.to_be_bytes()])
}

fn refusal(status: StatusCode, code: &'static str, detail: &'static str) -> SimError {
    Problem::new(status, code, detail).into()
}

/// Refunds a payment, in full or in part (see the module documentation for every answer).
pub async fn request_refund(
    State(sim): State<Arc<Simulator>>,
    headers: HeaderMap,
    Path(transaction_key): Path<String>,
    key: Option<IdempotencyKey>,
    Json(req): Json<RefundRequest>,
) -> Result<Json<Refund>> {
    sim.dice.receive();
    let user = user_id(&headers)?;
    let key = key.map(|k| k.as_str().to_owned());
    validate(&req)?;
    let task = tokio::spawn(process(sim, user, key, transaction_key, req));
    let refund = task
        .await
        .map_err(|e| anyhow::anyhow!("refund task failed: {e}"))??;
    Ok(Json(refund))
}

async fn process(
    sim: Arc<Simulator>,
    user: String,
    key: Option<String>,
    transaction_key: String,
    req: RefundRequest,
) -> Result<Refund> {
    let (latency, fails) = sim.dice.refund();
    tokio::time::sleep(latency).await;
    if fails {
        RefundOutcome::Failed.count();
        return Err(refusal(
            sim.dice.failure_status(),
            "GATEWAY_ERROR",
            "the gateway could not process the refund; try again",
        ));
    }
    tokio::time::sleep(sim.dice.record_delay()).await;
    let mut conn = sim.db.get().await?;
    let suffix = sim.dice.key_suffix();
    let (refund, replayed) = conn
        .transaction::<_, SimError, _>(async |conn| {
            // The payment row lock serialises refunds of one payment.
            let payment: Option<(PaymentStatus, i64, i64)> = payments::table
                .filter(payments::transaction_key.eq(&transaction_key))
                .filter(payments::user_id.eq(&user))
                .select((
                    payments::status,
                    payments::amount,
                    payments::refunded_amount,
                ))
                .for_update()
                .first(conn)
                .await
                .optional()?;
            let Some((status, amount, refunded)) = payment else {
                return Err(Problem::not_found("PAYMENT_NOT_FOUND", "no such payment").into());
            };
            if let Some(key) = &key {
                // The same refund is of the same payment and amount.
                let asked = asks(&transaction_key, req.amount);
                let earlier = async |conn: &mut AsyncPgConnection| {
                    refunds::table
                        .filter(refunds::user_id.eq(&user))
                        .filter(refunds::idempotency_key.eq(key))
                        .select(RefundRow::as_select())
                        .first::<RefundRow>(conn)
                        .await
                        .optional()
                        .map(|r| {
                            r.map(|r| (Some(asks(&r.transaction_key, r.amount)), Refund::from(r)))
                        })
                };
                let scope = format!("pg-sim:refund:{user}:");
                match idempotency::lock_and_find(conn, &scope, 0, key, &asked, earlier).await? {
                    Replay::New => {}
                    Replay::Same(refund) => return Ok((refund, true)),
                    Replay::Reused => return Err(commerce_web::idempotency::reused().into()),
                }
            }
            match status {
                PaymentStatus::Success => {}
                PaymentStatus::Refunded => {
                    return Err(refusal(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "ALREADY_REFUNDED",
                        "this payment has already been refunded",
                    ));
                }
                PaymentStatus::Pending => {
                    return Err(refusal(
                        StatusCode::CONFLICT,
                        "PAYMENT_NOT_SETTLED",
                        "this payment is not settled yet; retry later",
                    ));
                }
                PaymentStatus::Failed => {
                    return Err(refusal(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "PAYMENT_NOT_REFUNDABLE",
                        "only a successful payment can be refunded",
                    ));
                }
            }
            if req.amount > amount - refunded {
                return Err(refusal(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "REFUND_EXCEEDS_REMAINING",
                    "the amount exceeds what is left of the payment to refund",
                ));
            }
            let refunded = refunded + req.amount;
            let fully = refunded == amount;
            let refund_key = format!("{}:RF:{suffix}", Utc::now().format("%Y%m%d"));
            let refund: Refund = diesel::insert_into(refunds::table)
                .values((
                    refunds::refund_key.eq(&refund_key),
                    refunds::transaction_key.eq(&transaction_key),
                    refunds::user_id.eq(&user),
                    refunds::idempotency_key.eq(&key),
                    refunds::amount.eq(req.amount),
                    refunds::reason.eq(&req.reason),
                ))
                .returning(RefundRow::as_returning())
                .get_result::<RefundRow>(conn)
                .await?
                .into();
            let status = if fully {
                PaymentStatus::Refunded
            } else {
                PaymentStatus::Success
            };
            diesel::update(payments::table.find(&transaction_key))
                .set((
                    payments::status.eq(status),
                    payments::refunded_amount.eq(refunded),
                    payments::refund_key.eq(fully.then_some(&refund.refund_key)),
                ))
                .execute(conn)
                .await?;
            Ok((refund, false))
        })
        .await?;
    drop(conn);
    if replayed {
        RefundOutcome::Replayed.count();
    } else {
        RefundOutcome::Refunded.count();
    }
    if !replayed {
        tracing::info!(refund_key = %refund.refund_key, %transaction_key, amount = refund.amount, "payment refunded");
        tokio::time::sleep(sim.dice.response_delay()).await;
    }
    Ok(refund)
}
