//! Operators' payment routes: what needs attention, and sending it again (the rules are in
//! [`crate::domain::refunds`]).

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::domain::attention::{self, Attention, Retried};
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
