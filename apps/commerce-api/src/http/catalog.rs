//! Brands, products and likes.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use commerce_events::{Event, LikeChanged, ProductSnapshot};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{AdminUser, AuthUser};
use crate::error::{ApiError, ApiResult};
use crate::outbox;
use crate::product_cache::ProductCache;
use crate::routes::{Json, Path, Query, is_foreign_key_violation};
use crate::schema::{brands, product_likes, products};
use crate::state::AppState;

/// Highest accepted price or stock.
const MAX_AMOUNT: i64 = 1_000_000_000;
/// List pages cached (0-based pages below this).
const CACHED_PAGES: i64 = 5;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBrand {
    name: String,
    #[serde(default)]
    description: String,
}

#[derive(Serialize, ToSchema, Queryable)]
pub struct BrandView {
    id: i64,
    name: String,
    description: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    pub brand_id: i64,
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Won, 0 ..= 1,000,000,000.
    pub price: i64,
    /// 0 ..= 1,000,000,000.
    pub stock: i64,
}

/// Any subset of a product's editable fields.
#[derive(Deserialize, ToSchema, AsChangeset)]
#[serde(deny_unknown_fields)]
#[diesel(table_name = products)]
pub struct ProductPatch {
    name: Option<String>,
    description: Option<String>,
    price: Option<i64>,
    stock: Option<i64>,
}

/// A product's detail.
#[derive(Serialize, ToSchema)]
pub struct ProductView {
    id: i64,
    name: String,
    description: String,
    brand_id: i64,
    brand_name: String,
    price: i64,
    stock: i64,
    like_count: i64,
}

/// A product in a list.
#[derive(Serialize, ToSchema, Queryable)]
pub struct ProductSummary {
    id: i64,
    name: String,
    brand_id: i64,
    brand_name: String,
    price: i64,
    like_count: i64,
}

/// One page of products.
#[derive(Serialize, ToSchema)]
pub struct ProductPage {
    content: Vec<ProductSummary>,
    page: i64,
    size: i64,
    total_elements: i64,
    total_pages: i64,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    brand_id: Option<i64>,
    /// `latest` (default), `price_asc` or `likes_desc`.
    sort: Option<String>,
    /// 0-based page, default 0.
    page: Option<i64>,
    /// 1 ..= 100, default 20.
    size: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct LikeView {
    product_id: i64,
    liked: bool,
    like_count: i64,
}

/// A product joined with its brand's name.
pub type ProductRow = (i64, i64, String, String, i64, i64, i64, i64, String);

fn product_columns() -> (
    products::id,
    products::brand_id,
    products::name,
    products::description,
    products::price,
    products::stock,
    products::like_count,
    products::version,
    brands::name,
) {
    (
        products::id,
        products::brand_id,
        products::name,
        products::description,
        products::price,
        products::stock,
        products::like_count,
        products::version,
        brands::name,
    )
}

fn snapshot(row: &ProductRow) -> ProductSnapshot {
    ProductSnapshot {
        product_id: row.0,
        brand_id: row.1,
        name: row.2.clone(),
        price: row.4,
        stock: row.5,
        version: row.7,
        brand_name: row.8.clone(),
    }
}

fn view(row: ProductRow) -> ProductView {
    ProductView {
        id: row.0,
        brand_id: row.1,
        name: row.2,
        description: row.3,
        price: row.4,
        stock: row.5,
        like_count: row.6,
        brand_name: row.8,
    }
}

async fn load_product(conn: &mut AsyncPgConnection, id: i64) -> ApiResult<ProductRow> {
    products::table
        .inner_join(brands::table)
        .filter(products::id.eq(id))
        .select(product_columns())
        .first(conn)
        .await
        .optional()?
        .ok_or_else(product_not_found)
}

fn product_not_found() -> ApiError {
    ApiError::not_found("PRODUCT_NOT_FOUND", "no such product")
}

fn check_text(errors: &mut Vec<commerce_web::FieldError>, field: &str, value: &str, max: usize) {
    if value.trim().is_empty() || value.chars().count() > max {
        errors.push(commerce_web::FieldError::new(
            field,
            format!("must be 1-{max} characters"),
        ));
    }
}

fn check_amount(errors: &mut Vec<commerce_web::FieldError>, field: &str, value: i64) {
    if !(0..=MAX_AMOUNT).contains(&value) {
        errors.push(commerce_web::FieldError::new(
            field,
            format!("must be between 0 and {MAX_AMOUNT}"),
        ));
    }
}

fn finish(errors: Vec<commerce_web::FieldError>) -> ApiResult<()> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// Create a brand (admin).
#[utoipa::path(post, path = "/api/v1/admin/brands", tag = "catalog", security(("bearer" = [])),
    request_body = NewBrand, responses((status = 201, body = BrandView), (status = 400), (status = 401), (status = 403)))]
pub async fn create_brand(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(req): Json<NewBrand>,
) -> ApiResult<(StatusCode, Json<BrandView>)> {
    let mut errors = Vec::new();
    check_text(&mut errors, "name", &req.name, 100);
    if req.description.chars().count() > 2000 {
        errors.push(commerce_web::FieldError::new(
            "description",
            "must be at most 2000 characters",
        ));
    }
    finish(errors)?;
    let mut conn = state.db.get().await?;
    let brand = diesel::insert_into(brands::table)
        .values((
            brands::name.eq(req.name.trim()),
            brands::description.eq(&req.description),
        ))
        .returning((brands::id, brands::name, brands::description))
        .get_result::<BrandView>(&mut conn)
        .await?;
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
    brands::table
        .find(id)
        .select((brands::id, brands::name, brands::description))
        .first::<BrandView>(&mut conn)
        .await
        .optional()?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("BRAND_NOT_FOUND", "no such brand"))
}

/// Create a product (admin). Emits `ProductCreated`.
#[utoipa::path(post, path = "/api/v1/admin/products", tag = "catalog", security(("bearer" = [])),
    request_body = NewProduct, responses((status = 201, body = ProductView), (status = 400), (status = 404, description = "BRAND_NOT_FOUND")))]
pub async fn create_product(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(req): Json<NewProduct>,
) -> ApiResult<(StatusCode, Json<ProductView>)> {
    let mut errors = Vec::new();
    check_text(&mut errors, "name", &req.name, 200);
    check_amount(&mut errors, "price", req.price);
    check_amount(&mut errors, "stock", req.stock);
    if req.description.chars().count() > 5000 {
        errors.push(commerce_web::FieldError::new(
            "description",
            "must be at most 5000 characters",
        ));
    }
    finish(errors)?;
    let mut conn = state.db.get().await?;
    let row = insert_product(&mut conn, &state.topics, &req).await?;
    state.product_cache.evict_lists().await;
    tracing::info!(product.id = row.0, "product created");
    Ok((StatusCode::CREATED, Json(view(row))))
}

/// Inserts a product and its `ProductCreated` event in one transaction.
pub async fn insert_product(
    conn: &mut AsyncPgConnection,
    topics: &outbox::Topics,
    req: &NewProduct,
) -> ApiResult<ProductRow> {
    conn.transaction::<_, ApiError, _>(async |conn| {
        let inserted = diesel::insert_into(products::table)
            .values((
                products::brand_id.eq(req.brand_id),
                products::name.eq(req.name.trim()),
                products::description.eq(&req.description),
                products::price.eq(req.price),
                products::stock.eq(req.stock),
            ))
            .returning(products::id)
            .get_result::<i64>(conn)
            .await;
        let id = match inserted {
            Ok(id) => id,
            Err(e) if is_foreign_key_violation(&e) => {
                return Err(ApiError::not_found("BRAND_NOT_FOUND", "no such brand"));
            }
            Err(e) => return Err(e.into()),
        };
        let row = load_product(conn, id).await?;
        outbox::record(conn, topics, vec![Event::ProductCreated(snapshot(&row))]).await?;
        Ok(row)
    })
    .await
}

/// Change a product (admin). Emits `ProductUpdated` with the new version.
#[utoipa::path(patch, path = "/api/v1/admin/products/{id}", tag = "catalog", security(("bearer" = [])),
    request_body = ProductPatch, responses((status = 200, body = ProductView), (status = 400), (status = 404)))]
pub async fn update_product(
    State(state): State<AppState>,
    _admin: AdminUser,
    Path(id): Path<i64>,
    Json(patch): Json<ProductPatch>,
) -> ApiResult<Json<ProductView>> {
    let mut errors = Vec::new();
    if let Some(name) = &patch.name {
        check_text(&mut errors, "name", name, 200);
    }
    if let Some(price) = patch.price {
        check_amount(&mut errors, "price", price);
    }
    if let Some(stock) = patch.stock {
        check_amount(&mut errors, "stock", stock);
    }
    if patch
        .description
        .as_ref()
        .is_some_and(|d| d.chars().count() > 5000)
    {
        errors.push(commerce_web::FieldError::new(
            "description",
            "must be at most 5000 characters",
        ));
    }
    if patch.name.is_none()
        && patch.description.is_none()
        && patch.price.is_none()
        && patch.stock.is_none()
    {
        errors.push(commerce_web::FieldError::new(
            "",
            "at least one of name, description, price, stock is required",
        ));
    }
    finish(errors)?;
    let patch = ProductPatch {
        name: patch.name.map(|n| n.trim().to_owned()),
        ..patch
    };
    let mut conn = state.db.get().await?;
    let topics = state.topics.clone();
    let row = conn
        .transaction::<_, ApiError, _>(async |conn| {
            let updated = diesel::update(products::table.find(id))
                .set((
                    &patch,
                    products::version.eq(products::version + 1),
                    products::updated_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await?;
            if updated == 0 {
                return Err(product_not_found());
            }
            let row = load_product(conn, id).await?;
            outbox::record(conn, &topics, vec![Event::ProductUpdated(snapshot(&row))]).await?;
            Ok(row)
        })
        .await?;
    state.product_cache.evict_product(id).await;
    state.product_cache.evict_lists().await;
    Ok(Json(view(row)))
}

fn json_bytes(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// List products, filtered by brand, sorted and paged.
#[utoipa::path(get, path = "/api/v1/products", tag = "catalog", params(ListParams),
    responses((status = 200, body = ProductPage), (status = 400)))]
pub async fn list_products(
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> ApiResult<Response> {
    let sort = params.sort.as_deref().unwrap_or("latest");
    if !matches!(sort, "latest" | "price_asc" | "likes_desc") {
        return Err(ApiError::field(
            "sort",
            "must be one of latest, price_asc, likes_desc",
        ));
    }
    let page = params.page.unwrap_or(0);
    let size = params.size.unwrap_or(20);
    let mut errors = Vec::new();
    if !(0..=10_000).contains(&page) {
        errors.push(commerce_web::FieldError::new("page", "must be 0..=10000"));
    }
    if !(1..=100).contains(&size) {
        errors.push(commerce_web::FieldError::new("size", "must be 1..=100"));
    }
    finish(errors)?;

    let cacheable = page < CACHED_PAGES;
    let key = ProductCache::list_key(params.brand_id, sort, page, size);
    if cacheable && let Some(body) = state.product_cache.get(&key).await {
        return Ok(json_bytes(body));
    }

    let mut conn = state.db.get().await?;
    let mut query = products::table
        .inner_join(brands::table)
        .select((
            products::id,
            products::name,
            products::brand_id,
            brands::name,
            products::price,
            products::like_count,
        ))
        .into_boxed();
    let mut count = products::table.count().into_boxed();
    if let Some(brand_id) = params.brand_id {
        query = query.filter(products::brand_id.eq(brand_id));
        count = count.filter(products::brand_id.eq(brand_id));
    }
    query = match sort {
        "price_asc" => query.order((products::price.asc(), products::id.asc())),
        "likes_desc" => query.order((products::like_count.desc(), products::id.desc())),
        _ => query.order(products::id.desc()),
    };
    let content: Vec<ProductSummary> = query
        .limit(size)
        .offset(page * size)
        .load(&mut conn)
        .await?;
    let total_elements: i64 = count.get_result(&mut conn).await?;
    drop(conn);
    let body = ProductPage {
        content,
        page,
        size,
        total_elements,
        total_pages: (total_elements + size - 1) / size,
    };
    let body = Bytes::from(serde_json::to_vec(&body).map_err(anyhow::Error::new)?);
    if cacheable {
        state.product_cache.put(&key, body.clone(), true).await;
    }
    Ok(json_bytes(body))
}

/// A product's detail. Publishes `ProductViewed` (best effort).
#[utoipa::path(get, path = "/api/v1/products/{id}", tag = "catalog",
    responses((status = 200, body = ProductView), (status = 404)))]
pub async fn get_product(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> ApiResult<Response> {
    let key = ProductCache::detail_key(id);
    let body = match state.product_cache.get(&key).await {
        Some(body) => body,
        None => {
            let mut conn = state.db.get().await?;
            let row = load_product(&mut conn, id).await?;
            drop(conn);
            let body = Bytes::from(serde_json::to_vec(&view(row)).map_err(anyhow::Error::new)?);
            state.product_cache.put(&key, body.clone(), false).await;
            body
        }
    };
    state.views.publish(id, None);
    Ok(json_bytes(body))
}

/// Like a product (idempotent). Emits `ProductLiked` only on a real change.
#[utoipa::path(post, path = "/api/v1/products/{id}/likes", tag = "likes", security(("bearer" = [])),
    responses((status = 200, body = LikeView), (status = 401), (status = 404)))]
pub async fn like(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<LikeView>> {
    set_like(&state, user.id, id, true).await.map(Json)
}

/// Withdraw a like (idempotent). Emits `ProductUnliked` only on a real change.
#[utoipa::path(delete, path = "/api/v1/products/{id}/likes", tag = "likes", security(("bearer" = [])),
    responses((status = 200, body = LikeView), (status = 401), (status = 404)))]
pub async fn unlike(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<LikeView>> {
    set_like(&state, user.id, id, false).await.map(Json)
}

/// Adds or removes a like. The like row and the counter change in one transaction, and the
/// counter moves only when a row was actually inserted or deleted, so `like_count` always
/// equals the number of like rows however requests interleave.
async fn set_like(
    state: &AppState,
    user_id: i64,
    product_id: i64,
    liked: bool,
) -> ApiResult<LikeView> {
    let mut conn = state.db.get().await?;
    let topics = state.topics.clone();
    let (like_count, changed) = conn
        .transaction::<_, ApiError, _>(async |conn| {
            let changed = if liked {
                let inserted = diesel::insert_into(product_likes::table)
                    .values((
                        product_likes::user_id.eq(user_id),
                        product_likes::product_id.eq(product_id),
                    ))
                    .on_conflict_do_nothing()
                    .execute(conn)
                    .await;
                match inserted {
                    Ok(n) => n == 1,
                    Err(e) if is_foreign_key_violation(&e) => return Err(product_not_found()),
                    Err(e) => return Err(e.into()),
                }
            } else {
                diesel::delete(product_likes::table.find((user_id, product_id)))
                    .execute(conn)
                    .await?
                    == 1
            };
            let delta: i64 = match (changed, liked) {
                (false, _) => 0,
                (true, true) => 1,
                (true, false) => -1,
            };
            let like_count: Option<i64> = if delta == 0 {
                products::table
                    .find(product_id)
                    .select(products::like_count)
                    .first(conn)
                    .await
                    .optional()?
            } else {
                diesel::update(products::table.find(product_id))
                    .set(products::like_count.eq(products::like_count + delta))
                    .returning(products::like_count)
                    .get_result(conn)
                    .await
                    .optional()?
            };
            let like_count = like_count.ok_or_else(product_not_found)?;
            if changed {
                let change = LikeChanged {
                    product_id,
                    user_id,
                };
                let event = if liked {
                    Event::ProductLiked(change)
                } else {
                    Event::ProductUnliked(change)
                };
                outbox::record(conn, &topics, vec![event]).await?;
            }
            Ok((like_count, changed))
        })
        .await?;
    if changed {
        state.product_cache.evict_product(product_id).await;
    }
    Ok(LikeView {
        product_id,
        liked,
        like_count,
    })
}

/// Products the caller likes, most recent first.
#[utoipa::path(get, path = "/api/v1/users/me/likes", tag = "likes", security(("bearer" = [])),
    responses((status = 200, body = Vec<ProductSummary>), (status = 401)))]
pub async fn my_likes(
    State(state): State<AppState>,
    user: AuthUser,
) -> ApiResult<Json<Vec<ProductSummary>>> {
    let mut conn = state.db.get().await?;
    let liked: Vec<ProductSummary> = product_likes::table
        .inner_join(products::table.inner_join(brands::table))
        .filter(product_likes::user_id.eq(user.id))
        .order(product_likes::created_at.desc())
        .limit(1000)
        .select((
            products::id,
            products::name,
            products::brand_id,
            brands::name,
            products::price,
            products::like_count,
        ))
        .load(&mut conn)
        .await?;
    Ok(Json(liked))
}
