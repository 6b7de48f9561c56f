//! The payment gateway's callback.
//!
//! The callback is not authenticated by the gateway, so its body is never trusted: the payment
//! it names is looked up at the gateway (as the order's owner) and settled from what the gateway
//! says, and only if the gateway agrees on the order and the amount. A repeated or late callback
//! finds the order already settled and changes nothing.

use axum::extract::State;
use axum::http::StatusCode;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult};
use crate::gateway::GatewayError;
use crate::payments::{Settlement, settle_with};
use crate::routes::Json;
use crate::schema::payments;
use crate::state::AppState;

/// What the gateway posts. Only the transaction key and order id are used; everything else is
/// read back from the gateway. Unknown fields are ignored: gateways add fields.
#[derive(Deserialize, ToSchema)]
pub struct PaymentCallback {
    transaction_key: String,
    order_id: String,
    /// What the gateway claims; informational only.
    #[serde(default)]
    status: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct CallbackResult {
    order_id: i64,
    /// The order's status after the callback.
    order_status: String,
}

fn not_verified(detail: &str) -> ApiError {
    metrics::counter!("payment_callbacks_total", "result" => "not_verified").increment(1);
    ApiError::BadRequest("PAYMENT_NOT_VERIFIED", detail.to_owned())
}

/// Receive a payment result from the gateway.
#[utoipa::path(post, path = "/api/v1/payments/callback", tag = "payments",
    request_body = PaymentCallback,
    responses((status = 200, body = CallbackResult),
        (status = 400, description = "VALIDATION_FAILED, PAYMENT_NOT_VERIFIED (unknown transaction, or it does not match the order)"),
        (status = 404, description = "PAYMENT_NOT_FOUND"),
        (status = 409, description = "PAYMENT_NOT_SETTLED (the gateway has not settled it yet)"),
        (status = 503, description = "the gateway cannot be reached to verify the callback")))]
pub async fn callback(
    State(state): State<AppState>,
    Json(body): Json<PaymentCallback>,
) -> ApiResult<(StatusCode, Json<CallbackResult>)> {
    let key = body.transaction_key.trim();
    if key.is_empty() || key.len() > 64 {
        return Err(ApiError::field(
            "transaction_key",
            "must be 1-64 characters",
        ));
    }
    let order_id: i64 = body
        .order_id
        .trim()
        .parse()
        .map_err(|_| ApiError::field("order_id", "must be an order id"))?;
    let payment: Option<(i64, i64, String, Option<String>, String)> = {
        let mut conn = state.db.get().await?;
        payments::table
            .inner_join(
                crate::schema::orders::table.on(crate::schema::orders::id.eq(payments::order_id)),
            )
            .filter(payments::order_id.eq(order_id))
            .select((
                payments::user_id,
                payments::amount,
                payments::status,
                payments::transaction_key,
                crate::schema::orders::status,
            ))
            .first(&mut conn)
            .await
            .optional()?
    };
    let Some((user_id, amount, payment_status, known_key, order_status)) = payment else {
        metrics::counter!("payment_callbacks_total", "result" => "unknown_order").increment(1);
        return Err(ApiError::not_found(
            "PAYMENT_NOT_FOUND",
            "no card payment for this order",
        ));
    };
    // A repeat of the callback that settled this payment: answered without asking the gateway
    // again (repeats and floods of them cost the gateway nothing).
    if payment_status != "PENDING" && known_key.as_deref() == Some(key) {
        metrics::counter!("payment_callbacks_total", "result" => "repeat").increment(1);
        return Ok((
            StatusCode::OK,
            Json(CallbackResult {
                order_id,
                order_status,
            }),
        ));
    }
    let tx = match state.gateway.transaction(user_id, key).await {
        Ok(Some(tx)) => tx,
        Ok(None) => return Err(not_verified("the gateway has no such payment")),
        Err(GatewayError::Refused(_)) => {
            return Err(not_verified("the gateway refused to confirm the payment"));
        }
        Err(e) => return Err(ApiError::Unavailable(e.to_string())),
    };
    if !tx.belongs_to(order_id, amount) {
        return Err(not_verified(
            "the gateway's payment does not match this order",
        ));
    }
    let settlement = match tx.status.as_str() {
        "SUCCESS" => Settlement::Paid {
            transaction_key: tx.transaction_key,
        },
        "FAILED" => {
            // Before giving the order's stock back, make sure no other payment of this order is
            // still open or went through at the gateway.
            let all = match state.gateway.by_order(user_id, order_id).await {
                Ok(all) => all,
                Err(e) => return Err(ApiError::Unavailable(e.to_string())),
            };
            let mine = |t: &&crate::gateway::Transaction| t.belongs_to(order_id, amount);
            if let Some(paid) = all.iter().filter(mine).find(|t| t.status == "SUCCESS") {
                Settlement::Paid {
                    transaction_key: paid.transaction_key.clone(),
                }
            } else if all.iter().filter(mine).any(|t| t.status == "PENDING") {
                metrics::counter!("payment_callbacks_total", "result" => "not_settled")
                    .increment(1);
                return Err(ApiError::conflict(
                    "PAYMENT_NOT_SETTLED",
                    "another payment of this order is still pending at the gateway",
                ));
            } else {
                Settlement::Failed {
                    transaction_key: Some(tx.transaction_key),
                    reason: tx.reason.unwrap_or_else(|| "declined".to_owned()),
                }
            }
        }
        _ => {
            metrics::counter!("payment_callbacks_total", "result" => "not_settled").increment(1);
            tracing::info!(order.id = order_id, claimed = ?body.status, "callback for a payment the gateway has not settled");
            return Err(ApiError::conflict(
                "PAYMENT_NOT_SETTLED",
                "the gateway has not settled this payment yet",
            ));
        }
    };
    let (order_status, _) = settle_with(&state, order_id, settlement, "callback").await?;
    metrics::counter!("payment_callbacks_total", "result" => "accepted").increment(1);
    Ok((
        StatusCode::OK,
        Json(CallbackResult {
            order_id,
            order_status,
        }),
    ))
}
