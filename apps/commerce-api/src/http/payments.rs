//! The payment gateway's callback. Its signature is checked over the raw body before anything
//! else is read ([`commerce_web::signature`]); even then the body is not trusted: see
//! [`crate::domain::payments::Payments::verify_callback`].

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use commerce_web::Problem;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::payments::CallbackOutcome;
use crate::domain::states::OrderStatus;
use crate::http::Json;
use crate::http::auth::{ClientIp, admit};
use crate::http::error::{ApiError, ApiResult};
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
    order_status: OrderStatus,
}

/// Receive a payment result from the gateway. Rate limited per client address
/// (`RATE_LIMIT_PAYMENT_CALLBACK`).
///
/// Signed by the gateway: `X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw
/// body>">` under one of `PG_CALLBACK_SECRETS`, with `t` at most
/// `PG_CALLBACK_TOLERANCE_SECONDS` from this instance's clock. Anything else is refused with 401
/// `INVALID_SIGNATURE` before the body is read, the database touched or the gateway asked.
#[utoipa::path(post, path = "/api/v1/payments/callback", tag = "payments",
    request_body = PaymentCallback,
    params(("X-Signature" = String, Header, description = "t=<unix seconds>,v1=<hex HMAC-SHA256 over \"<t>.<raw body>\">")),
    responses((status = 200, body = CallbackResult),
        (status = 401, description = "INVALID_SIGNATURE: missing, malformed, stale or wrong signature"),
        (status = 400, description = "VALIDATION_FAILED, PAYMENT_NOT_VERIFIED (unknown transaction, or it does not match the order)"),
        (status = 404, description = "PAYMENT_NOT_FOUND"),
        (status = 409, description = "PAYMENT_NOT_SETTLED (the gateway has not settled it yet)"),
        (status = 429, description = "RATE_LIMITED, with Retry-After"),
        (status = 503, description = "the gateway cannot be reached to verify the callback")))]
pub async fn callback(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    raw: Bytes,
) -> ApiResult<(StatusCode, Json<CallbackResult>)> {
    admit(&state.limits.callback, &ip)?;
    let auth = &state.config.callback_auth;
    let signature = headers
        .get(commerce_web::signature::HEADER)
        .and_then(|v| v.to_str().ok());
    if let Err(refused) = commerce_web::signature::verify(
        signature,
        &raw,
        &auth.secrets,
        chrono::Utc::now().timestamp(),
        auth.tolerance_seconds,
    ) {
        CallbackOutcome::BadSignature.count();
        tracing::warn!(client.address = %ip, reason = refused.as_str(), "payment callback refused: bad signature");
        return Err(ApiError::Rejected(Problem::new(
            StatusCode::UNAUTHORIZED,
            "INVALID_SIGNATURE",
            "the callback's X-Signature is missing, stale or wrong",
        )));
    }
    let Json(body) = Json::<PaymentCallback>::from_bytes(&raw).map_err(ApiError::Rejected)?;
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
    let order_status = state
        .payments
        .verify_callback(order_id, key, body.status.as_deref())
        .await?;
    Ok((
        StatusCode::OK,
        Json(CallbackResult {
            order_id,
            order_status,
        }),
    ))
}
