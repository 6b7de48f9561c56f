//! Brands, products and likes. Product reads are served through the product cache
//! ([`crate::infra::product_cache`]); every write evicts what it changed.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use commerce_web::FieldError;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use crate::domain::catalog::{
    self, BrandView, LikeView, Position, ProductSummary, ProductView, Scope, Sort,
};
use crate::domain::check;
use crate::domain::partners;
use crate::http::auth::{AdminUser, AuthUser, ClientIp, admit};
use crate::http::error::ApiResult;
use crate::http::paging::{Page, PageParams, page_and_size};
use crate::http::{Json, Path, Query};
use crate::infra::views::Viewer;
use crate::state::AppState;

/// List pages cached (0-based pages below this).
const CACHED_PAGES: i64 = 5;
/// Page sizes whose list pages are cached: the ones storefronts use. With [`CACHED_PAGES`], the
/// sorts and the brands that exist, this bounds the list pages cached per generation whatever
/// anonymous clients ask for.
const CACHED_SIZES: [i64; 4] = [10, 20, 50, 100];

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBrand {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) description: String,
    /// The partner that sells it (admins only; the house partner by default).
    #[serde(default)]
    pub(crate) partner_id: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    /// The product belongs to its brand's partner.
    brand_id: i64,
    name: String,
    #[serde(default)]
    description: String,
    /// Won, 0 ..= 1,000,000,000.
    price: i64,
    /// 0 ..= 1,000,000,000.
    stock: i64,
    /// Units one user may hold across their standing orders (1 ..= 1,000,000); none by default.
    #[serde(default)]
    max_per_user: Option<i32>,
    /// On sale from (inclusive); from now by default.
    #[serde(default)]
    sale_starts_at: Option<DateTime<Utc>>,
    /// On sale until (exclusive); no end by default.
    #[serde(default)]
    sale_ends_at: Option<DateTime<Utc>>,
}

/// Any subset of a product's editable fields. For the drop rules, `null` clears the rule and an
/// absent field leaves it as it is.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductPatch {
    name: Option<String>,
    description: Option<String>,
    price: Option<i64>,
    stock: Option<i64>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<i32>)]
    max_per_user: Option<Option<i32>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    sale_starts_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    sale_ends_at: Option<Option<DateTime<Utc>>>,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    brand_id: Option<i64>,
    /// `latest` (default), `price_asc`, `likes_desc` or `sales_desc` (units sold: paid, not
    /// cancelled or returned).
    sort: Option<String>,
    /// 0-based page, default 0; `page × size` at most 10,000 (deeper: `cursor`).
    page: Option<i64>,
    /// 1 ..= 100, default 20.
    size: Option<i64>,
    /// Keyset paging: the `next_cursor` of the previous page (with the same `sort`), instead of
    /// `page`. Any depth costs the same.
    cursor: Option<String>,
}

/// Create a brand (admin), sold by `partner_id` (the house partner by default).
#[utoipa::path(post, path = "/api/v1/admin/brands", tag = "catalog", security(("bearer" = [])),
    request_body = NewBrand, responses((status = 201, body = BrandView), (status = 400), (status = 401), (status = 403),
        (status = 404, description = "PARTNER_NOT_FOUND")))]
pub async fn create_brand(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(req): Json<NewBrand>,
) -> ApiResult<(StatusCode, Json<BrandView>)> {
    let new = catalog::NewBrand::parse(&req.name, req.description)?;
    let partner = req.partner_id.unwrap_or(partners::HOUSE);
    let mut conn = state.db.get().await?;
    let brand = catalog::create_brand(&mut conn, partner, &new).await?;
    Ok((StatusCode::CREATED, Json(brand)))
}

/// A brand.
#[utoipa::path(get, path = "/api/v1/brands/{id}", tag = "catalog",
    responses((status = 200, body = BrandView), (status = 404)))]
pub async fn get_brand(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Json<BrandView>> {
    let mut conn = state.db.get().await?;
    Ok(Json(catalog::brand(&mut conn, id).await?))
}

/// Create a product of any partner's brand (admin). Emits `ProductCreated`.
#[utoipa::path(post, path = "/api/v1/admin/products", tag = "catalog", security(("bearer" = [])),
    request_body = NewProduct, responses((status = 201, body = ProductView), (status = 400), (status = 404, description = "BRAND_NOT_FOUND")))]
pub async fn create_product(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(req): Json<NewProduct>,
) -> ApiResult<(StatusCode, Json<ProductView>)> {
    add_product(&state, Scope::Any, req).await
}

/// Creates a product within `scope` and evicts the cached lists.
pub(crate) async fn add_product(
    state: &AppState,
    scope: Scope,
    req: NewProduct,
) -> ApiResult<(StatusCode, Json<ProductView>)> {
    let rules = catalog::SaleRules {
        max_per_user: req.max_per_user,
        sale_starts_at: req.sale_starts_at,
        sale_ends_at: req.sale_ends_at,
    };
    let new = catalog::NewProduct::parse(
        req.brand_id,
        &req.name,
        req.description,
        req.price,
        req.stock,
        rules,
    )?;
    let mut conn = state.db.get().await?;
    let product = catalog::create_product(&mut conn, &state.topics, scope, &new).await?;
    drop(conn);
    state.product_cache.evict_lists().await;
    Ok((StatusCode::CREATED, Json(product)))
}

/// Change any partner's product (admin). Emits `ProductUpdated` with the new version.
#[utoipa::path(patch, path = "/api/v1/admin/products/{id}", tag = "catalog", security(("bearer" = [])),
    request_body = ProductPatch, responses((status = 200, body = ProductView), (status = 400), (status = 404)))]
pub async fn update_product(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<i64>,
    Json(patch): Json<ProductPatch>,
) -> ApiResult<Json<ProductView>> {
    change_product(&state, Scope::Any, id, patch).await
}

/// Changes a product within `scope` and evicts it and the cached lists.
pub(crate) async fn change_product(
    state: &AppState,
    scope: Scope,
    id: i64,
    patch: ProductPatch,
) -> ApiResult<Json<ProductView>> {
    let rules = catalog::RulesPatch {
        max_per_user: patch.max_per_user,
        sale_starts_at: patch.sale_starts_at,
        sale_ends_at: patch.sale_ends_at,
    };
    let patch = catalog::ProductPatch::parse(
        patch.name,
        patch.description,
        patch.price,
        patch.stock,
        rules,
    )?;
    let mut conn = state.db.get().await?;
    let product = catalog::update_product(&mut conn, &state.topics, scope, id, &patch).await?;
    drop(conn);
    state.product_cache.evict_product(id).await;
    state.product_cache.evict_lists().await;
    Ok(Json(product))
}

/// A field that is present (`null` included) is `Some`; with `#[serde(default)]`, an absent one
/// is `None`.
fn present<'de, T, D>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: serde::Deserializer<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

fn json_bytes(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// List products, filtered by brand, sorted and paged: by `page` (`page × size` at most 10,000),
/// or by `cursor` (each page's `next_cursor`) to any depth at the same cost.
#[utoipa::path(get, path = "/api/v1/products", tag = "catalog", params(ListParams),
    responses((status = 200, body = Page<ProductSummary>), (status = 400),
        (status = 404, description = "BRAND_NOT_FOUND")))]
pub async fn list_products(
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> ApiResult<Response> {
    let mut errors = Vec::new();
    let sort = params
        .sort
        .as_deref()
        .unwrap_or("latest")
        .parse::<Sort>()
        .ok();
    if sort.is_none() {
        errors.push(FieldError::new(
            "sort",
            format!("must be {}", Sort::expected()),
        ));
    }
    let (page, size) = page_and_size(params.page, params.size, &mut errors);
    let after = params.cursor.as_deref().map(parse_cursor);
    if let Some(after) = &after {
        match (after, sort) {
            (None, _) => errors.push(FieldError::new("cursor", "is not a cursor of this list")),
            (Some((cursor_sort, _)), Some(sort)) if *cursor_sort != sort => {
                errors.push(FieldError::new("cursor", "belongs to another sort order"))
            }
            _ => {}
        }
        if params.page.is_some() {
            errors.push(FieldError::new("page", "cannot be given with a cursor"));
        }
    }
    check(errors)?;
    let sort = sort.expect("checked above");
    let at = match after.flatten() {
        Some((_, (value, id))) => Position::After { value, id },
        None => Position::Page(page),
    };
    let body = list_body(&state, params.brand_id, sort, at, size).await?;
    Ok(json_bytes(body))
}

/// The cursor of the page after `last` in `sort` order: opaque to clients.
fn cursor_after(sort: Sort, last: &ProductSummary) -> String {
    hex::encode(format!(
        "v1:{}:{}:{}",
        sort.as_str(),
        sort.value_of(last),
        last.id
    ))
}

/// A cursor's sort and position, `None` when it is not one of ours.
fn parse_cursor(cursor: &str) -> Option<(Sort, (i64, i64))> {
    let text = String::from_utf8(hex::decode(cursor).ok()?).ok()?;
    let mut parts = text.split(':');
    if parts.next()? != "v1" {
        return None;
    }
    let sort = parts.next()?.parse::<Sort>().ok()?;
    let value = parts.next()?.parse().ok()?;
    let id = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((sort, (value, id)))
}

/// A list page's body: cached for the first [`CACHED_PAGES`] pages of the [`CACHED_SIZES`] (never
/// for a cursor's pages, nor for a brand that does not exist: that is 404).
async fn list_body(
    state: &AppState,
    brand_id: Option<i64>,
    sort: Sort,
    at: Position,
    size: i64,
) -> ApiResult<Bytes> {
    let page = match at {
        Position::Page(page) if page < CACHED_PAGES && CACHED_SIZES.contains(&size) => Some(page),
        _ => None,
    };
    let key = match page {
        Some(page) => Some(
            state
                .product_cache
                .list_key(brand_id, sort.as_str(), page, size)
                .await,
        ),
        None => None,
    };
    if let Some(key) = &key
        && let Some(body) = state.product_cache.get(key).await
    {
        return Ok(body);
    }
    let (content, total_elements) = {
        let mut conn = state.db.get().await?;
        catalog::list(&mut conn, brand_id, sort, at, size).await?
    };
    let next_cursor = (content.len() as i64 == size)
        .then(|| content.last().map(|last| cursor_after(sort, last)))
        .flatten();
    let number = match at {
        Position::Page(page) => page,
        Position::After { .. } => 0,
    };
    let mut body = Page::new(content, number, size, total_elements);
    body.next_cursor = next_cursor;
    let body = Bytes::from(serde_json::to_vec(&body).map_err(anyhow::Error::new)?);
    if let Some(key) = &key {
        state.product_cache.put(key, body.clone()).await;
    }
    Ok(body)
}

/// A product's detail. Counts a view (`ProductViewed`, best effort): once per viewer (the
/// signed-in user, or else the client address) and product in `PRODUCT_VIEW_WINDOW_SECONDS`.
#[utoipa::path(get, path = "/api/v1/products/{id}", tag = "catalog",
    responses((status = 200, body = ProductView), (status = 404)))]
pub async fn get_product(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    ClientIp(ip): ClientIp,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let body = detail_body(&state, id).await?;
    state.views.view(id, viewer(&state, &headers, ip));
    Ok(json_bytes(body))
}

/// Who is viewing: the user a valid bearer token names (its signature only: a view needs no
/// more), or else the client address.
fn viewer(state: &AppState, headers: &axum::http::HeaderMap, ip: std::net::IpAddr) -> Viewer {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .and_then(|token| state.auth.verify(token.trim()))
        .map_or(Viewer::Address(ip), |(id, _)| Viewer::User(id))
}

/// A product's detail body, through the cache.
async fn detail_body(state: &AppState, id: i64) -> ApiResult<Bytes> {
    state
        .product_cache
        .detail(id, || async {
            let product = {
                let mut conn = state.db.get().await?;
                catalog::product(&mut conn, id).await?
            };
            ApiResult::Ok(Bytes::from(
                serde_json::to_vec(&product).map_err(anyhow::Error::new)?,
            ))
        })
        .await
}

/// Products whose details are warmed at start.
const WARM_DETAILS: i64 = 100;

/// Fills the product cache at start, so a deploy does not send its first rush to PostgreSQL:
/// the cached pages of the default list (newest first, 20 a page) and the details of the
/// [`WARM_DETAILS`] most liked products (the API's own measure of interest; views are counted by
/// the collector). Best effort: a failure is logged and serving goes on cold.
pub async fn warm(state: AppState) {
    let started = std::time::Instant::now();
    let result: ApiResult<usize> = async {
        for page in 0..CACHED_PAGES {
            list_body(&state, None, Sort::Latest, Position::Page(page), 20).await?;
        }
        let (top, _) = {
            let mut conn = state.db.get().await?;
            catalog::list(
                &mut conn,
                None,
                Sort::LikesDesc,
                Position::Page(0),
                WARM_DETAILS,
            )
            .await?
        };
        for product in &top {
            detail_body(&state, product.id).await?;
        }
        Ok(top.len())
    }
    .await;
    match result {
        Ok(details) => tracing::info!(
            list_pages = CACHED_PAGES,
            details,
            ms = started.elapsed().as_millis() as u64,
            "product cache warmed"
        ),
        Err(e) => tracing::warn!(error = %e, "could not warm the product cache; serving cold"),
    }
}

/// Like a product (idempotent). Emits `ProductLiked` only on a real change.
#[utoipa::path(post, path = "/api/v1/products/{id}/likes", tag = "likes", security(("bearer" = [])),
    responses((status = 200, body = LikeView), (status = 401), (status = 404),
        (status = 429, description = "RATE_LIMITED (`RATE_LIMIT_LIKES`, per user), with Retry-After")))]
pub async fn like(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<LikeView>> {
    set_like(&state, user.id, id, true).await.map(Json)
}

/// Withdraw a like (idempotent). Emits `ProductUnliked` only on a real change.
#[utoipa::path(delete, path = "/api/v1/products/{id}/likes", tag = "likes", security(("bearer" = [])),
    responses((status = 200, body = LikeView), (status = 401), (status = 404),
        (status = 429, description = "RATE_LIMITED (`RATE_LIMIT_LIKES`, per user), with Retry-After")))]
pub async fn unlike(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<LikeView>> {
    set_like(&state, user.id, id, false).await.map(Json)
}

async fn set_like(
    state: &AppState,
    user_id: i64,
    product_id: i64,
    liked: bool,
) -> ApiResult<LikeView> {
    admit(&state.limits.likes, &user_id)?;
    let (view, changed) = {
        let mut conn = state.db.get().await?;
        catalog::set_like(&mut conn, &state.topics, user_id, product_id, liked).await?
    };
    if changed {
        state.product_cache.evict_product(product_id).await;
    }
    Ok(view)
}

/// Products the caller likes, most recent first.
#[utoipa::path(get, path = "/api/v1/users/me/likes", tag = "likes", security(("bearer" = [])),
    responses((status = 200, body = Vec<ProductSummary>), (status = 401)))]
pub async fn my_likes(
    State(state): State<AppState>,
    user: AuthUser,
) -> ApiResult<Json<Vec<ProductSummary>>> {
    let mut conn = state.db.get().await?;
    Ok(Json(catalog::liked_by(&mut conn, user.id).await?))
}

/// Every brand, in creation order.
#[utoipa::path(get, path = "/api/v1/brands", tag = "catalog", params(PageParams),
    responses((status = 200, body = Page<BrandView>)))]
pub async fn list_brands(
    State(state): State<AppState>,
    Query(params): Query<PageParams>,
) -> ApiResult<Json<Page<BrandView>>> {
    let (page, size) = params.parse()?;
    let mut conn = state.db.get().await?;
    let (brands, total) = catalog::brands(&mut conn, page, size).await?;
    Ok(Json(Page::new(brands, page, size, total)))
}
