//! Orders paid by points: placing, listing, reading and cancelling.
//!
//! Placing an order is one transaction: stock is locked in product-id order (two orders for the
//! same products cannot deadlock) and decremented, the coupon is used, points are deducted, the
//! order is written as `PAID`, and `OrderCreated` + `OrderPaid` go into the outbox. Any failure
//! rolls everything back: nothing changes.
//!
//! Idempotency: with an `Idempotency-Key` header, the key is locked (a transaction-scoped
//! advisory lock on user + key) before anything else, so two racing requests with one key are
//! serialised; the second finds the first's order and returns it (same body), or answers 422
//! `IDEMPOTENCY_KEY_REUSED` when its body differs. The unique (user_id, idempotency_key)
//! constraint backs this up.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use commerce_events::{Event, OrderCancelled, OrderLine, OrderPlaced};
use diesel::prelude::*;
use diesel::sql_types::{Array, BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::outbox;
use crate::routes::{Json, Path, Query};
use crate::schema::{coupons, order_items, orders, point_ledger, products, user_coupons, users};
use crate::state::AppState;

const MAX_LINES: usize = 50;
const MAX_QUANTITY: i64 = 100;
const MAX_KEY_LEN: usize = 200;

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// 1 ..= 50 lines; lines of the same product are merged.
    items: Vec<NewOrderItem>,
    user_coupon_id: Option<i64>,
    payment: Payment,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrderItem {
    product_id: i64,
    /// 1 ..= 100.
    quantity: i64,
}

#[derive(Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Payment {
    /// `POINT`.
    method: String,
}

#[derive(Serialize, ToSchema, Clone)]
pub struct OrderItemView {
    product_id: i64,
    quantity: i64,
    unit_price: i64,
}

#[derive(Serialize, ToSchema)]
pub struct OrderView {
    order_id: i64,
    status: String,
    total_amount: i64,
    discount_amount: i64,
    final_amount: i64,
    payment_method: String,
    user_coupon_id: Option<i64>,
    items: Vec<OrderItemView>,
    created_at: DateTime<Utc>,
}

#[derive(Serialize, ToSchema)]
pub struct OrderPage {
    content: Vec<OrderView>,
    page: i64,
    size: i64,
    total_elements: i64,
    total_pages: i64,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageParams {
    page: Option<i64>,
    size: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct CancelView {
    order_id: i64,
    status: String,
}

#[derive(Queryable)]
struct OrderRow {
    id: i64,
    user_id: i64,
    status: String,
    total_amount: i64,
    discount_amount: i64,
    final_amount: i64,
    points_used: i64,
    user_coupon_id: Option<i64>,
    payment_method: String,
    request_hash: Option<String>,
    created_at: DateTime<Utc>,
    paid_at: Option<DateTime<Utc>>,
}

fn order_columns() -> (
    orders::id,
    orders::user_id,
    orders::status,
    orders::total_amount,
    orders::discount_amount,
    orders::final_amount,
    orders::points_used,
    orders::user_coupon_id,
    orders::payment_method,
    orders::request_hash,
    orders::created_at,
    orders::paid_at,
) {
    (
        orders::id,
        orders::user_id,
        orders::status,
        orders::total_amount,
        orders::discount_amount,
        orders::final_amount,
        orders::points_used,
        orders::user_coupon_id,
        orders::payment_method,
        orders::request_hash,
        orders::created_at,
        orders::paid_at,
    )
}

/// Validated, merged order lines (product id → quantity, in product-id order).
fn validate(req: &NewOrder) -> ApiResult<BTreeMap<i64, i64>> {
    let mut errors = Vec::new();
    if req.items.is_empty() || req.items.len() > MAX_LINES {
        errors.push(commerce_web::FieldError::new(
            "items",
            format!("must have 1-{MAX_LINES} lines"),
        ));
    }
    let mut merged = BTreeMap::new();
    for (i, item) in req.items.iter().enumerate() {
        if !(1..=MAX_QUANTITY).contains(&item.quantity) {
            errors.push(commerce_web::FieldError::new(
                format!("items[{i}].quantity"),
                format!("must be 1-{MAX_QUANTITY}"),
            ));
        }
        if item.product_id <= 0 {
            errors.push(commerce_web::FieldError::new(
                format!("items[{i}].product_id"),
                "must be a product id",
            ));
        }
        *merged.entry(item.product_id).or_insert(0) += item.quantity;
    }
    if merged.values().any(|q| *q > MAX_QUANTITY) {
        errors.push(commerce_web::FieldError::new(
            "items",
            format!("a product's total quantity must be at most {MAX_QUANTITY}"),
        ));
    }
    if req.payment.method != "POINT" {
        errors.push(commerce_web::FieldError::new(
            "payment.method",
            "must be POINT",
        ));
    }
    if errors.is_empty() {
        Ok(merged)
    } else {
        Err(ApiError::Validation(errors))
    }
}

/// SHA-256 of the canonical (merged, sorted) request.
fn request_hash(lines: &BTreeMap<i64, i64>, req: &NewOrder) -> String {
    let canonical = serde_json::json!({
        "items": lines.iter().collect::<Vec<_>>(),
        "user_coupon_id": req.user_coupon_id,
        "payment": req.payment.method,
    });
    hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN)
        .ok_or_else(|| {
            ApiError::field(
                "Idempotency-Key",
                format!("must be 1-{MAX_KEY_LEN} visible ASCII characters"),
            )
        })?;
    Ok(Some(key.to_owned()))
}

/// What a failed transaction leaves: nothing changed, and why.
enum Outcome {
    Created(OrderView),
    Replayed(OrderView),
}

/// Place an order paid by points.
#[utoipa::path(post, path = "/api/v1/orders", tag = "orders", security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "replays return the original order")),
    request_body = NewOrder,
    responses((status = 201, body = OrderView), (status = 400), (status = 401),
        (status = 404, description = "PRODUCT_NOT_FOUND"),
        (status = 409, description = "INSUFFICIENT_STOCK, INSUFFICIENT_POINTS, COUPON_NOT_USABLE"),
        (status = 422, description = "IDEMPOTENCY_KEY_REUSED")))]
pub async fn place_order(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Json(req): Json<NewOrder>,
) -> ApiResult<(StatusCode, Json<OrderView>)> {
    let lines = validate(&req)?;
    let key = idempotency_key(&headers)?;
    let hash = request_hash(&lines, &req);

    let mut conn = state.db.get().await?;
    // Cheap refusal of sold-out products before taking any row lock: stock only grows through
    // cancellations and admin edits, so an unlocked read that shows too little is final enough
    // to answer 409 without queueing behind the orders holding the row.
    if key.is_none() {
        precheck_stock(&mut conn, &lines).await?;
    }
    let topics = state.topics.clone();
    let outcome = conn
        .transaction::<_, ApiError, _>(async |conn| {
            if let Some(key) = &key {
                lock_idempotency_key(conn, user.id, key).await?;
                if let Some(existing) = find_by_key(conn, user.id, key).await? {
                    if existing.request_hash.as_deref() != Some(hash.as_str()) {
                        return Err(ApiError::Unprocessable(
                            "IDEMPOTENCY_KEY_REUSED",
                            "this Idempotency-Key was used with a different request".into(),
                        ));
                    }
                    return Ok(Outcome::Replayed(order_view(conn, existing).await?));
                }
            }
            create_order(conn, &topics, user.id, &lines, &req, key.as_deref(), &hash)
                .await
                .map(Outcome::Created)
        })
        .await?;
    match outcome {
        Outcome::Created(order) => {
            tracing::info!(
                order.id = order.order_id,
                user.id = user.id,
                amount = order.final_amount,
                "order placed"
            );
            metrics::counter!("orders_placed_total", "payment_method" => "POINT").increment(1);
            Ok((StatusCode::CREATED, Json(order)))
        }
        Outcome::Replayed(order) => Ok((StatusCode::CREATED, Json(order))),
    }
}

async fn precheck_stock(conn: &mut AsyncPgConnection, lines: &BTreeMap<i64, i64>) -> ApiResult<()> {
    let ids: Vec<i64> = lines.keys().copied().collect();
    let stocks: Vec<(i64, i64)> = products::table
        .filter(products::id.eq_any(&ids))
        .select((products::id, products::stock))
        .load(conn)
        .await?;
    if stocks.len() != ids.len() {
        return Err(ApiError::not_found(
            "PRODUCT_NOT_FOUND",
            "an ordered product does not exist",
        ));
    }
    if stocks.iter().any(|(id, stock)| stock < &lines[id]) {
        metrics::counter!("orders_refused_total", "reason" => "INSUFFICIENT_STOCK").increment(1);
        return Err(insufficient_stock());
    }
    Ok(())
}

fn insufficient_stock() -> ApiError {
    ApiError::conflict(
        "INSUFFICIENT_STOCK",
        "not enough stock for an ordered product",
    )
}

async fn lock_idempotency_key(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    key: &str,
) -> ApiResult<()> {
    diesel::sql_query("SELECT pg_advisory_xact_lock(hashtextextended($1, $2))")
        .bind::<Text, _>(key)
        .bind::<BigInt, _>(user_id)
        .execute(conn)
        .await?;
    Ok(())
}

async fn find_by_key(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    key: &str,
) -> ApiResult<Option<OrderRow>> {
    Ok(orders::table
        .filter(orders::user_id.eq(user_id))
        .filter(orders::idempotency_key.eq(key))
        .select(order_columns())
        .first(conn)
        .await
        .optional()?)
}

#[derive(QueryableByName)]
struct LockedProduct {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = BigInt)]
    price: i64,
    #[diesel(sql_type = BigInt)]
    stock: i64,
}

/// The transactional body of placing an order.
async fn create_order(
    conn: &mut AsyncPgConnection,
    topics: &outbox::Topics,
    user_id: i64,
    lines: &BTreeMap<i64, i64>,
    req: &NewOrder,
    key: Option<&str>,
    hash: &str,
) -> ApiResult<OrderView> {
    let ids: Vec<i64> = lines.keys().copied().collect();
    let quantities: Vec<i64> = lines.values().copied().collect();
    // Lock in product-id order: every transaction takes these locks in the same order.
    let locked: Vec<LockedProduct> = diesel::sql_query(
        "SELECT id, price, stock FROM products WHERE id = ANY($1) ORDER BY id FOR UPDATE",
    )
    .bind::<Array<BigInt>, _>(&ids)
    .load(conn)
    .await?;
    if locked.len() != ids.len() {
        return Err(ApiError::not_found(
            "PRODUCT_NOT_FOUND",
            "an ordered product does not exist",
        ));
    }
    if locked.iter().any(|p| p.stock < lines[&p.id]) {
        metrics::counter!("orders_refused_total", "reason" => "INSUFFICIENT_STOCK").increment(1);
        return Err(insufficient_stock());
    }
    diesel::sql_query(
        "UPDATE products p SET stock = p.stock - l.quantity
           FROM unnest($1::bigint[], $2::bigint[]) AS l(id, quantity)
          WHERE p.id = l.id",
    )
    .bind::<Array<BigInt>, _>(&ids)
    .bind::<Array<BigInt>, _>(&quantities)
    .execute(conn)
    .await?;

    let items: Vec<OrderItemView> = locked
        .iter()
        .map(|p| OrderItemView {
            product_id: p.id,
            quantity: lines[&p.id],
            unit_price: p.price,
        })
        .collect();
    let total: i64 = items.iter().map(|i| i.quantity * i.unit_price).sum();

    let discount = match req.user_coupon_id {
        Some(uc) => use_coupon(conn, user_id, uc, total).await?,
        None => 0,
    };
    let final_amount = total - discount;

    if final_amount > 0 {
        let paid = diesel::update(
            users::table
                .find(user_id)
                .filter(users::point_balance.ge(final_amount)),
        )
        .set(users::point_balance.eq(users::point_balance - final_amount))
        .execute(conn)
        .await?;
        if paid == 0 {
            metrics::counter!("orders_refused_total", "reason" => "INSUFFICIENT_POINTS")
                .increment(1);
            return Err(ApiError::conflict(
                "INSUFFICIENT_POINTS",
                "the point balance does not cover the order",
            ));
        }
    }

    let order: OrderRow = diesel::insert_into(orders::table)
        .values((
            orders::user_id.eq(user_id),
            orders::status.eq("PAID"),
            orders::total_amount.eq(total),
            orders::discount_amount.eq(discount),
            orders::final_amount.eq(final_amount),
            orders::points_used.eq(final_amount),
            orders::user_coupon_id.eq(req.user_coupon_id),
            orders::payment_method.eq("POINT"),
            orders::idempotency_key.eq(key),
            orders::request_hash.eq(hash),
            orders::paid_at.eq(diesel::dsl::now),
        ))
        .returning(order_columns())
        .get_result(conn)
        .await?;
    diesel::insert_into(order_items::table)
        .values(
            items
                .iter()
                .map(|i| {
                    (
                        order_items::order_id.eq(order.id),
                        order_items::product_id.eq(i.product_id),
                        order_items::quantity.eq(i.quantity),
                        order_items::unit_price.eq(i.unit_price),
                    )
                })
                .collect::<Vec<_>>(),
        )
        .execute(conn)
        .await?;
    if let Some(uc) = req.user_coupon_id {
        diesel::update(user_coupons::table.find(uc))
            .set(user_coupons::order_id.eq(order.id))
            .execute(conn)
            .await?;
    }
    if final_amount > 0 {
        diesel::insert_into(point_ledger::table)
            .values((
                point_ledger::user_id.eq(user_id),
                point_ledger::amount.eq(-final_amount),
                point_ledger::kind.eq("USE"),
                point_ledger::order_id.eq(order.id),
            ))
            .execute(conn)
            .await?;
    }
    let placed = OrderPlaced {
        order_id: order.id,
        user_id,
        lines: event_lines(&items),
        total_amount: total,
        discount_amount: discount,
        final_amount,
        payment_method: "POINT".into(),
    };
    outbox::record(
        conn,
        topics,
        vec![
            Event::OrderCreated(placed.clone()),
            Event::OrderPaid(placed),
        ],
    )
    .await?;
    Ok(OrderView {
        order_id: order.id,
        status: order.status,
        total_amount: total,
        discount_amount: discount,
        final_amount,
        payment_method: order.payment_method,
        user_coupon_id: order.user_coupon_id,
        items,
        created_at: order.created_at,
    })
}

fn event_lines(items: &[OrderItemView]) -> Vec<OrderLine> {
    items
        .iter()
        .map(|i| OrderLine {
            product_id: i.product_id,
            quantity: i.quantity,
            unit_price: i.unit_price,
        })
        .collect()
}

#[derive(Queryable)]
struct CouponRow {
    kind: String,
    value: i64,
    min_order: i64,
    max_discount: Option<i64>,
    from: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
}

/// Marks the caller's coupon used and returns the discount for `total`.
async fn use_coupon(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    user_coupon_id: i64,
    total: i64,
) -> ApiResult<i64> {
    let not_usable = |why: &str| ApiError::conflict("COUPON_NOT_USABLE", why.to_owned());
    // Lock only the user's coupon row; the coupon's terms never change and stay unlocked, so
    // orders using coupons of one campaign do not queue on its row.
    let locked: Option<(i64, String)> = user_coupons::table
        .filter(user_coupons::id.eq(user_coupon_id))
        .filter(user_coupons::user_id.eq(user_id))
        .select((user_coupons::coupon_id, user_coupons::status))
        .for_update()
        .first(conn)
        .await
        .optional()?;
    let Some((coupon_id, status)) = locked else {
        return Err(not_usable("the coupon does not exist or is not yours"));
    };
    let terms: CouponRow = coupons::table
        .find(coupon_id)
        .select((
            coupons::discount_type,
            coupons::discount_value,
            coupons::min_order_amount,
            coupons::max_discount_amount,
            coupons::valid_from,
            coupons::valid_until,
        ))
        .first(conn)
        .await?;
    let CouponRow {
        kind,
        value,
        min_order,
        max_discount,
        from,
        until,
    } = terms;
    let now = Utc::now();
    if status != "AVAILABLE" {
        return Err(not_usable("the coupon has been used"));
    }
    if until.is_some_and(|u| u <= now) || from.is_some_and(|f| f > now) {
        return Err(not_usable("the coupon is not valid now"));
    }
    if total < min_order {
        return Err(not_usable(
            "the order does not reach the coupon's minimum amount",
        ));
    }
    let discount = crate::routes::coupons::discount(&kind, value, max_discount, total);
    diesel::update(user_coupons::table.find(user_coupon_id))
        .set((
            user_coupons::status.eq("USED"),
            user_coupons::used_at.eq(diesel::dsl::now),
        ))
        .execute(conn)
        .await?;
    Ok(discount)
}

async fn order_view(conn: &mut AsyncPgConnection, order: OrderRow) -> ApiResult<OrderView> {
    let items: Vec<(i64, i64, i64)> = order_items::table
        .filter(order_items::order_id.eq(order.id))
        .order(order_items::product_id)
        .select((
            order_items::product_id,
            order_items::quantity,
            order_items::unit_price,
        ))
        .load(conn)
        .await?;
    Ok(OrderView {
        order_id: order.id,
        status: order.status,
        total_amount: order.total_amount,
        discount_amount: order.discount_amount,
        final_amount: order.final_amount,
        payment_method: order.payment_method,
        user_coupon_id: order.user_coupon_id,
        items: items
            .into_iter()
            .map(|(product_id, quantity, unit_price)| OrderItemView {
                product_id,
                quantity,
                unit_price,
            })
            .collect(),
        created_at: order.created_at,
    })
}

/// The caller's orders, newest first.
#[utoipa::path(get, path = "/api/v1/orders", tag = "orders", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = OrderPage), (status = 400), (status = 401)))]
pub async fn list_orders(
    State(state): State<AppState>,
    user: AuthUser,
    Query(params): Query<PageParams>,
) -> ApiResult<Json<OrderPage>> {
    let page = params.page.unwrap_or(0);
    let size = params.size.unwrap_or(20);
    if !(0..=10_000).contains(&page) || !(1..=100).contains(&size) {
        return Err(ApiError::Validation(vec![commerce_web::FieldError::new(
            "page/size",
            "page must be 0..=10000 and size 1..=100",
        )]));
    }
    let mut conn = state.db.get().await?;
    let rows: Vec<OrderRow> = orders::table
        .filter(orders::user_id.eq(user.id))
        .order(orders::id.desc())
        .limit(size)
        .offset(page * size)
        .select(order_columns())
        .load(&mut conn)
        .await?;
    let total_elements: i64 = orders::table
        .filter(orders::user_id.eq(user.id))
        .count()
        .get_result(&mut conn)
        .await?;
    let mut content = Vec::with_capacity(rows.len());
    for row in rows {
        content.push(order_view(&mut conn, row).await?);
    }
    Ok(Json(OrderPage {
        content,
        page,
        size,
        total_elements,
        total_pages: (total_elements + size - 1) / size,
    }))
}

/// One of the caller's orders (404 for anyone else's).
#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "orders", security(("bearer" = [])),
    responses((status = 200, body = OrderView), (status = 401), (status = 404)))]
pub async fn get_order(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<OrderView>> {
    let mut conn = state.db.get().await?;
    let row: OrderRow = orders::table
        .filter(orders::id.eq(id))
        .filter(orders::user_id.eq(user.id))
        .select(order_columns())
        .first(&mut conn)
        .await
        .optional()?
        .ok_or_else(order_not_found)?;
    Ok(Json(order_view(&mut conn, row).await?))
}

fn order_not_found() -> ApiError {
    ApiError::not_found("ORDER_NOT_FOUND", "no such order")
}

/// Cancel an order: stock restored, points refunded, coupon returned, in one transaction.
/// Cancelling again returns the same result and refunds nothing.
#[utoipa::path(post, path = "/api/v1/orders/{id}/cancel", tag = "orders", security(("bearer" = [])),
    responses((status = 200, body = CancelView), (status = 401), (status = 404), (status = 409, description = "ORDER_NOT_CANCELLABLE")))]
pub async fn cancel_order(
    State(state): State<AppState>,
    user: AuthUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<CancelView>> {
    let mut conn = state.db.get().await?;
    let topics = state.topics.clone();
    let cancelled_now = conn
        .transaction::<_, ApiError, _>(async |conn| {
            // The order row lock serialises concurrent cancels: the second sees CANCELLED.
            let order: OrderRow = orders::table
                .filter(orders::id.eq(id))
                .filter(orders::user_id.eq(user.id))
                .select(order_columns())
                .for_update()
                .first(conn)
                .await
                .optional()?
                .ok_or_else(order_not_found)?;
            match order.status.as_str() {
                "CANCELLED" => return Ok(false),
                "PAID" | "PENDING_PAYMENT" => {}
                _ => {
                    return Err(ApiError::conflict(
                        "ORDER_NOT_CANCELLABLE",
                        format!("an order in status {} cannot be cancelled", order.status),
                    ));
                }
            }
            let items: Vec<(i64, i64, i64)> = order_items::table
                .filter(order_items::order_id.eq(order.id))
                .order(order_items::product_id)
                .select((
                    order_items::product_id,
                    order_items::quantity,
                    order_items::unit_price,
                ))
                .load(conn)
                .await?;
            let ids: Vec<i64> = items.iter().map(|i| i.0).collect();
            let quantities: Vec<i64> = items.iter().map(|i| i.1).collect();
            // Same lock order as placing orders.
            diesel::sql_query("SELECT id FROM products WHERE id = ANY($1) ORDER BY id FOR UPDATE")
                .bind::<Array<BigInt>, _>(&ids)
                .execute(conn)
                .await?;
            diesel::sql_query(
                "UPDATE products p SET stock = p.stock + l.quantity
                   FROM unnest($1::bigint[], $2::bigint[]) AS l(id, quantity)
                  WHERE p.id = l.id",
            )
            .bind::<Array<BigInt>, _>(&ids)
            .bind::<Array<BigInt>, _>(&quantities)
            .execute(conn)
            .await?;
            if order.points_used > 0 && order.status == "PAID" {
                diesel::update(users::table.find(order.user_id))
                    .set(users::point_balance.eq(users::point_balance + order.points_used))
                    .execute(conn)
                    .await?;
                diesel::insert_into(point_ledger::table)
                    .values((
                        point_ledger::user_id.eq(order.user_id),
                        point_ledger::amount.eq(order.points_used),
                        point_ledger::kind.eq("REFUND"),
                        point_ledger::order_id.eq(order.id),
                    ))
                    .execute(conn)
                    .await?;
            }
            if let Some(uc) = order.user_coupon_id {
                diesel::update(user_coupons::table.find(uc))
                    .set((
                        user_coupons::status.eq("AVAILABLE"),
                        user_coupons::used_at.eq(None::<DateTime<Utc>>),
                        user_coupons::order_id.eq(None::<i64>),
                    ))
                    .execute(conn)
                    .await?;
            }
            diesel::update(orders::table.find(order.id))
                .set((
                    orders::status.eq("CANCELLED"),
                    orders::cancelled_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await?;
            let lines = items
                .iter()
                .map(|(product_id, quantity, unit_price)| OrderLine {
                    product_id: *product_id,
                    quantity: *quantity,
                    unit_price: *unit_price,
                })
                .collect();
            outbox::record(
                conn,
                &topics,
                vec![Event::OrderCancelled(OrderCancelled {
                    order_id: order.id,
                    user_id: order.user_id,
                    lines,
                    was_paid: order.status == "PAID",
                    paid_at: order.paid_at,
                })],
            )
            .await?;
            Ok(true)
        })
        .await?;
    if cancelled_now {
        tracing::info!(order.id = id, user.id = user.id, "order cancelled");
    }
    Ok(Json(CancelView {
        order_id: id,
        status: "CANCELLED".into(),
    }))
}
