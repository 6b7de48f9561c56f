//! Operators' routes: payments that need attention and sending them again (the rules are in
//! [`crate::domain::refunds`]), and granting points.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use commerce_web::idempotency::IdempotencyKey;

use crate::domain::accounts;
use crate::domain::attention::{self, Attention, Retried};
use crate::domain::fulfilment;
use crate::domain::partner_orders::PartnerOrderView;
use crate::http::auth::AdminUser;
use crate::http::error::{ApiError, ApiResult};
use crate::http::{Json, Path, Query};
use crate::state::AppState;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AttentionParams {
    /// 1 ..= 500, default 100.
    limit: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct AttentionList {
    /// Oldest first.
    content: Vec<Attention>,
}

/// Payments that need an operator (admin): refunds the gateway refused or keeps failing, and
/// payments still pending past the request deadline.
#[utoipa::path(get, path = "/api/v1/admin/payments/attention", tag = "payments",
    security(("bearer" = [])), params(AttentionParams),
    responses((status = 200, body = AttentionList), (status = 400), (status = 401), (status = 403)))]
pub async fn attention(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(params): Query<AttentionParams>,
) -> ApiResult<Json<AttentionList>> {
    let limit = params.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::field("limit", "must be 1..=500"));
    }
    Ok(Json(AttentionList {
        content: attention::attention(&state.payments, limit).await?,
    }))
}

/// Send an order's unconfirmed refunds to the gateway again now, a refused one included, and
/// look its pending payment up again now (admin).
#[utoipa::path(post, path = "/api/v1/admin/orders/{id}/payment/retry", tag = "payments",
    security(("bearer" = [])),
    responses((status = 202, body = Retried), (status = 401), (status = 403),
        (status = 404, description = "PAYMENT_NOT_FOUND"),
        (status = 409, description = "NOTHING_TO_RETRY")))]
pub async fn retry_payment(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<i64>,
) -> ApiResult<(axum::http::StatusCode, Json<Retried>)> {
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(attention::retry(&state.payments, id).await?),
    ))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// 1 ..= 10,000,000 points.
    amount: i64,
    /// Why (1-500 characters): kept in the user's ledger with the administrator's id.
    reason: String,
}

#[derive(Serialize, ToSchema)]
pub struct Granted {
    user_id: i64,
    /// The user's balance after the grant.
    balance: i64,
}

/// Grant a user points (admin): the only credit that is not paid for, written to the user's
/// ledger as `GRANT` with the reason and the administrator's id. With an `Idempotency-Key`, a
/// retry with the same key and request grants once.
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/points", tag = "points",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "1-255 visible ASCII characters; a retry with the same key and request grants once")),
    request_body = Grant,
    responses((status = 200, body = Granted),
        (status = 400, description = "VALIDATION_FAILED, INVALID_IDEMPOTENCY_KEY"),
        (status = 401), (status = 403), (status = 404, description = "USER_NOT_FOUND"),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED")))]
pub async fn grant_points(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<i64>,
    key: Option<IdempotencyKey>,
    Json(req): Json<Grant>,
) -> ApiResult<Json<Granted>> {
    let mut conn = state.db.get().await?;
    let key = key.as_ref().map(IdempotencyKey::as_str);
    let balance = accounts::grant(&mut conn, admin.id, id, req.amount, &req.reason, key).await?;
    Ok(Json(Granted {
        user_id: id,
        balance,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Adjustment {
    /// Won to give back from the partner order's card share, 1 ..= what it can still give back.
    amount: i64,
    /// Why (1-500 characters): kept in the payment history with the administrator's id.
    reason: String,
}

/// Adjust a purchase-confirmed partner order (admin), once: a claim settled after
/// confirmation. `amount` of its card share goes back through the gateway and the points it
/// earned are taken back; its status stays `PURCHASE_CONFIRMED`.
#[utoipa::path(post, path = "/api/v1/admin/partner-orders/{id}/adjustments", tag = "partners",
    security(("bearer" = [])), request_body = Adjustment,
    responses((status = 200, body = PartnerOrderView), (status = 400), (status = 401), (status = 403),
        (status = 404, description = "PARTNER_ORDER_NOT_FOUND"),
        (status = 409, description = "NOT_ADJUSTABLE")))]
pub async fn adjust_partner_order(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<i64>,
    Json(req): Json<Adjustment>,
) -> ApiResult<Json<PartnerOrderView>> {
    let reason = req.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(ApiError::field("reason", "must be 1-500 characters"));
    }
    let mut conn = state.db.get().await?;
    Ok(Json(
        fulfilment::adjust(&mut conn, admin.id, id, req.amount, reason).await?,
    ))
}

/// End every session of a user (admin): their access and refresh tokens are refused from now
/// on, on every instance within a second; they sign in again.
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/sessions/end", tag = "users",
    security(("bearer" = [])),
    responses((status = 200, body = crate::http::users::Ended), (status = 401), (status = 403),
        (status = 404, description = "USER_NOT_FOUND")))]
pub async fn end_user_sessions(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<crate::http::users::Ended>> {
    {
        let mut conn = state.db.get().await?;
        accounts::role_of(&mut conn, id)
            .await?
            .ok_or(crate::domain::Error::NotFound(crate::domain::Missing::User))?;
    }
    let ended =
        crate::http::users::end_sessions(&state, id, crate::domain::sessions::EndReason::Admin)
            .await?;
    tracing::info!(user.id = id, "an admin ended a user's sessions");
    Ok(Json(ended))
}
