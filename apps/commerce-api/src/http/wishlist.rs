//! The caller's wishlist: add, remove, list (domain: [`crate::domain::wishlist`]); and for
//! admins, the alerts that could not be delivered (domain: [`crate::domain::alerts`]).

use axum::extract::State;
use axum::http::StatusCode;
use commerce_web::FieldError;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::domain::alerts::{self, AlertStatus, AlertView};
use crate::domain::wishlist::{self, WishlistItem};
use crate::http::auth::{AdminUser, AuthUser, admit};
use crate::http::error::{ApiError, ApiResult};
use crate::http::paging::{Page, PageParams, page_and_size};
use crate::http::{Json, Path, Query};
use crate::state::AppState;

/// Add a product to the caller's wishlist (idempotent: 201 when added, 200 when it was there).
/// Wishlisted products are what restock and pre-sale alerts are sent for; a wishlist is
/// private, and distinct from likes.
#[utoipa::path(put, path = "/api/v1/users/me/wishlist/{product_id}", tag = "wishlist", security(("bearer" = [])),
    responses((status = 201, body = WishlistItem, description = "added"),
        (status = 200, body = WishlistItem, description = "already on the wishlist, unchanged"),
        (status = 401), (status = 404, description = "PRODUCT_NOT_FOUND"),
        (status = 409, description = "WISHLIST_FULL: it holds 500 products"),
        (status = 429, description = "RATE_LIMITED (`RATE_LIMIT_LIKES`, per user: likes and wishlist changes together), with Retry-After")))]
pub async fn add(
    State(state): State<AppState>,
    user: AuthUser,
    Path(product_id): Path<i64>,
) -> ApiResult<(StatusCode, Json<WishlistItem>)> {
    admit(&state.limits.likes, &user.id)?;
    let mut conn = state.db.get().await?;
    let (item, added) = wishlist::add(&mut conn, user.id, product_id).await?;
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(item)))
}

/// Remove a product from the caller's wishlist (idempotent: 204 whether or not it was there).
#[utoipa::path(delete, path = "/api/v1/users/me/wishlist/{product_id}", tag = "wishlist", security(("bearer" = [])),
    responses((status = 204), (status = 401),
        (status = 429, description = "RATE_LIMITED (`RATE_LIMIT_LIKES`, per user), with Retry-After")))]
pub async fn remove(
    State(state): State<AppState>,
    user: AuthUser,
    Path(product_id): Path<i64>,
) -> ApiResult<StatusCode> {
    admit(&state.limits.likes, &user.id)?;
    let mut conn = state.db.get().await?;
    wishlist::remove(&mut conn, user.id, product_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's wishlist, most recently added first.
#[utoipa::path(get, path = "/api/v1/users/me/wishlist", tag = "wishlist", security(("bearer" = [])),
    params(PageParams),
    responses((status = 200, body = Page<WishlistItem>), (status = 400, description = "VALIDATION_FAILED"), (status = 401)))]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(params): Query<PageParams>,
) -> ApiResult<Json<Page<WishlistItem>>> {
    let (page, size) = params.parse()?;
    let mut conn = state.db.get().await?;
    let (items, total) = wishlist::page(&mut conn, user.id, page, size).await?;
    Ok(Json(Page::new(items, page, size, total)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterParams {
    /// `FAILED` or `UNCONFIRMED`; both when absent.
    status: Option<String>,
    /// 0-based (default 0); `page × size` at most 10,000.
    page: Option<i64>,
    /// 1 ..= 100 (default 20).
    size: Option<i64>,
}

/// Wishlist alerts that were not delivered (admin), oldest first: `FAILED` (the SMTP server
/// refused them for good or too many times) and `UNCONFIRMED` (handed to the server by a sender
/// that stopped before the answer: they may have been delivered).
#[utoipa::path(get, path = "/api/v1/admin/wishlist-alerts", tag = "wishlist",
    security(("bearer" = [])), params(DeadLetterParams),
    responses((status = 200, body = Page<AlertView>), (status = 400), (status = 401), (status = 403)))]
pub async fn dead_letters(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(params): Query<DeadLetterParams>,
) -> ApiResult<Json<Page<AlertView>>> {
    let mut errors = Vec::new();
    let (page, size) = page_and_size(params.page, params.size, &mut errors);
    let status = match params.status.as_deref() {
        None => None,
        Some(s) => match s.parse::<AlertStatus>() {
            Ok(s @ (AlertStatus::Failed | AlertStatus::Unconfirmed)) => Some(s),
            _ => {
                errors.push(FieldError::new("status", "must be FAILED or UNCONFIRMED"));
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let mut conn = state.db.get().await?;
    let (alerts, total) = alerts::dead_letters(&mut conn, status, page, size).await?;
    Ok(Json(Page::new(alerts, page, size, total)))
}

/// Send a dead-lettered wishlist alert again (admin): it is queued now, with its attempts
/// counted afresh. An `UNCONFIRMED` alert may then reach the customer twice.
#[utoipa::path(post, path = "/api/v1/admin/wishlist-alerts/{id}/retry", tag = "wishlist",
    security(("bearer" = [])),
    responses((status = 202, body = AlertView), (status = 401), (status = 403),
        (status = 404, description = "WISHLIST_ALERT_NOT_FOUND"),
        (status = 409, description = "NOTHING_TO_RETRY: the alert is not FAILED or UNCONFIRMED")))]
pub async fn retry_alert(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<i64>,
) -> ApiResult<(StatusCode, Json<AlertView>)> {
    let mut conn = state.db.get().await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(alerts::retry(&mut conn, id).await?),
    ))
}
