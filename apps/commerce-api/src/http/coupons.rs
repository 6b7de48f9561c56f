//! First-come coupons (see [`crate::domain::coupons`] for how a rush is decided).

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::coupons::{self, CouponView, HeldCoupon, OpenCampaign};
use crate::domain::states::CouponStatus;
use crate::http::auth::{AdminUser, AuthUser, SignedUser, admit};
use crate::http::error::ApiResult;
use crate::http::paging::{Page, PageParams};
use crate::http::{Json, Path, Query};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCoupon {
    name: String,
    /// `FIXED` (won off) or `RATE` (percent off, 1..=100).
    discount_type: String,
    discount_value: i64,
    min_order_amount: Option<i64>,
    max_discount_amount: Option<i64>,
    /// `null`: unlimited.
    total_quantity: Option<i64>,
    valid_from: Option<DateTime<Utc>>,
    valid_until: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct IssuedCoupon {
    user_coupon_id: i64,
    coupon_id: i64,
    status: CouponStatus,
}

/// Create a coupon (admin).
#[utoipa::path(post, path = "/api/v1/admin/coupons", tag = "coupons", security(("bearer" = [])),
    request_body = NewCoupon, responses((status = 201, body = CouponView), (status = 400), (status = 403)))]
pub async fn create_coupon(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(req): Json<NewCoupon>,
) -> ApiResult<(StatusCode, Json<CouponView>)> {
    let new = coupons::NewCoupon::parse(
        &req.name,
        &req.discount_type,
        req.discount_value,
        req.min_order_amount,
        req.max_discount_amount,
        req.total_quantity,
        req.valid_from,
        req.valid_until,
    )?;
    let mut conn = state.db.get().await?;
    let coupon = coupons::create(&mut conn, &new).await?;
    Ok((StatusCode::CREATED, Json(coupon)))
}

/// Issue a coupon to the caller, first come first served. Rate limited per user
/// (`RATE_LIMIT_COUPON_ISSUE`).
#[utoipa::path(post, path = "/api/v1/coupons/{id}/issue", tag = "coupons", security(("bearer" = [])),
    responses((status = 201, body = IssuedCoupon), (status = 401), (status = 404),
        (status = 409, description = "COUPON_SOLD_OUT, COUPON_ALREADY_ISSUED, COUPON_NOT_ACTIVE"),
        (status = 429, description = "RATE_LIMITED, with Retry-After")))]
pub async fn issue(
    State(state): State<AppState>,
    user: SignedUser,
    Path(coupon_id): Path<i64>,
) -> ApiResult<(StatusCode, Json<IssuedCoupon>)> {
    admit(&state.limits.coupon_issue, &user.id)?;
    let user_coupon_id = state.coupons.issue(coupon_id, user.id).await?;
    Ok((
        StatusCode::CREATED,
        Json(IssuedCoupon {
            user_coupon_id,
            coupon_id,
            status: CouponStatus::Available,
        }),
    ))
}

/// The caller's coupons.
#[utoipa::path(get, path = "/api/v1/users/me/coupons", tag = "coupons", security(("bearer" = [])),
    responses((status = 200, body = Vec<HeldCoupon>), (status = 401)))]
pub async fn my_coupons(
    State(state): State<AppState>,
    user: AuthUser,
) -> ApiResult<Json<Vec<HeldCoupon>>> {
    let mut conn = state.db.get().await?;
    Ok(Json(coupons::held_by(&mut conn, user.id).await?))
}

/// The campaigns open now (started, not ended, not sold out), newest first, with their terms,
/// validity and remaining quantity.
#[utoipa::path(get, path = "/api/v1/coupons", tag = "coupons", params(PageParams),
    responses((status = 200, body = Page<OpenCampaign>)))]
pub async fn open_campaigns(
    State(state): State<AppState>,
    Query(params): Query<PageParams>,
) -> ApiResult<Json<Page<OpenCampaign>>> {
    let (page, size) = params.parse()?;
    let mut conn = state.db.get().await?;
    let (campaigns, total) = coupons::open_campaigns(&mut conn, Utc::now(), page, size).await?;
    Ok(Json(Page::new(campaigns, page, size, total)))
}
