//! The caller's wishlist: add, remove, list (domain: [`crate::domain::wishlist`]).

use axum::extract::State;
use axum::http::StatusCode;

use crate::domain::wishlist::{self, WishlistItem};
use crate::http::auth::{AuthUser, admit};
use crate::http::error::ApiResult;
use crate::http::paging::{Page, PageParams};
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
