//! The gateway's console: refunds and chargebacks the gateway makes itself, as a real gateway's
//! operators do (a customer's dispute, a fraud decision, the issuer taking money back), behind
//! the merchant's back.
//!
//! `POST /console/v1/payments/{transaction_key}/refunds` and `.../chargebacks` (body
//! `{"reason": "..."}`, the reason optional) need the console key (`X-CONSOLE-KEY`). Each gives
//! back what is left of a successful payment (all of it, unless the merchant refunded part of it
//! already), once (a payment already refunded gets 422 `ALREADY_REFUNDED`), records who did it, and tells the merchant by a signed webhook to the
//! payment's callback URL (`event`: `payment.refunded` or `payment.charged_back`, the payment
//! showing `REFUNDED`). Like a callback, the webhook is sent once and not retried: the merchant
//! must also find such refunds by looking its payments up.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use commerce_web::{FieldError, Json, Path, Problem};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, RunQueryDsl};
use serde::Deserialize;
use tracing::Instrument;

use crate::Simulator;
use crate::error::SimError;
use crate::payments::{Notice, NoticeEvent, PaymentStatus, Transaction, deliver};
use crate::refunds::Refund;
use crate::schema::{payments, refunds};

const MAX_REASON_LEN: usize = 200;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleRequest {
    reason: Option<String>,
}

/// Refunds a payment from the gateway's side.
pub async fn refund(
    State(sim): State<Arc<Simulator>>,
    Path(transaction_key): Path<String>,
    Json(body): Json<ConsoleRequest>,
) -> Result<Json<Refund>, SimError> {
    reverse(sim, transaction_key, body.reason, NoticeEvent::Refunded).await
}

/// Charges a payment back (the card issuer takes the money back).
pub async fn charge_back(
    State(sim): State<Arc<Simulator>>,
    Path(transaction_key): Path<String>,
    Json(body): Json<ConsoleRequest>,
) -> Result<Json<Refund>, SimError> {
    reverse(sim, transaction_key, body.reason, NoticeEvent::ChargedBack).await
}

async fn reverse(
    sim: Arc<Simulator>,
    transaction_key: String,
    reason: Option<String>,
    event: NoticeEvent,
) -> Result<Json<Refund>, SimError> {
    if reason
        .as_ref()
        .is_some_and(|r| r.len() > MAX_REASON_LEN || r.contains('\0'))
    {
        return Err(Problem::validation(vec![FieldError::new(
            "reason",
            format!("must be at most {MAX_REASON_LEN} bytes of text"),
        )])
        .into());
    }
    let kind = match event {
        NoticeEvent::ChargedBack => "CHARGEBACK",
        _ => "REFUND",
    };
    let refund_key = format!(
        "{}:RF:{}",
        Utc::now().format("%Y%m%d"),
        sim.dice.key_suffix()
    );
    let mut conn = sim.db.get().await?;
    let (refund, transaction, callback_url, traceparent) = conn
        .transaction::<_, SimError, _>(async |conn| {
            let payment: Option<(String, PaymentStatus, i64, i64, String, Option<String>)> =
                payments::table
                    .find(&transaction_key)
                    .select((
                        payments::user_id,
                        payments::status,
                        payments::amount,
                        payments::refunded_amount,
                        payments::callback_url,
                        payments::traceparent,
                    ))
                    .for_update()
                    .first(conn)
                    .await
                    .optional()?;
            let Some((user, status, amount, refunded, callback_url, traceparent)) = payment else {
                return Err(Problem::not_found("PAYMENT_NOT_FOUND", "no such payment").into());
            };
            match status {
                PaymentStatus::Success => {}
                PaymentStatus::Refunded => {
                    return Err(Problem::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "ALREADY_REFUNDED",
                        "this payment has already been refunded",
                    )
                    .into());
                }
                PaymentStatus::Pending | PaymentStatus::Failed => {
                    return Err(Problem::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "PAYMENT_NOT_REFUNDABLE",
                        "only a successful payment can be refunded",
                    )
                    .into());
                }
            }
            // What is left of it: the merchant may have refunded part of it already.
            let left = amount - refunded;
            diesel::insert_into(refunds::table)
                .values((
                    refunds::refund_key.eq(&refund_key),
                    refunds::transaction_key.eq(&transaction_key),
                    refunds::user_id.eq(&user),
                    refunds::amount.eq(left),
                    refunds::reason.eq(&reason),
                    refunds::initiated_by.eq("GATEWAY"),
                    refunds::kind.eq(kind),
                ))
                .execute(conn)
                .await?;
            let transaction: Transaction = diesel::update(payments::table.find(&transaction_key))
                .set((
                    payments::status.eq(PaymentStatus::Refunded),
                    payments::refunded_amount.eq(amount),
                    payments::refund_key.eq(&refund_key),
                ))
                .returning(crate::payments::columns())
                .get_result::<crate::payments::TransactionRow>(conn)
                .await?
                .into();
            let refund = Refund {
                refund_key: refund_key.clone(),
                transaction_key: transaction_key.clone(),
                amount: left,
                reason: reason.clone(),
                status: PaymentStatus::Refunded,
            };
            Ok((refund, transaction, callback_url, traceparent))
        })
        .await?;
    drop(conn);
    tracing::info!(%transaction_key, refund_key = %refund.refund_key, %event, "payment reversed at the gateway");
    metrics::counter!("pg_sim_reversals_total", "event" => event.as_str()).increment(1);
    let span = tracing::info_span!("webhook", otel.kind = "client", %transaction_key, %event);
    commerce_telemetry::traces::continue_trace(&span, traceparent.as_deref());
    let notice = Notice { event, transaction };
    let (http, secret) = (sim.http.clone(), sim.callback_secret.clone());
    tokio::spawn(
        async move {
            deliver(&http, &secret, &callback_url, &notice).await;
        }
        .instrument(span),
    );
    Ok(Json(refund))
}
