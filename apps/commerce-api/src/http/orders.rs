//! Orders paid by points or by card: placing, listing, reading and cancelling.
//!
//! Placing an order is one transaction: stock is locked in product-id order (two orders for the
//! same products cannot deadlock) and decremented, the coupon is used, and then
//! - by points: points are deducted, the order is written as `PAID`, and `OrderCreated` +
//!   `OrderPaid` go into the outbox;
//! - by card: the order is written as `PENDING_PAYMENT` with a `PENDING` payment and
//!   `OrderCreated`; after the commit (holding no connection) the payment is sent to the gateway,
//!   and the gateway's callback or reconciliation settles it later (see [`crate::payments`]).
//!
//! Any failure inside the transaction rolls everything back: nothing changes.
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
use crate::schema::{
    coupons, order_items, orders, payments, point_ledger, products, user_coupons, users,
};
use crate::state::AppState;

const MAX_LINES: usize = 50;
const MAX_QUANTITY: i64 = 100;
const MAX_KEY_LEN: usize = 200;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// 1 ..= 50 lines; lines of the same product are merged.
    items: Vec<NewOrderItem>,
    user_coupon_id: Option<i64>,
    payment: Payment,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrderItem {
    product_id: i64,
    /// 1 ..= 100.
    quantity: i64,
}

/// How the order is paid. Deliberately not `Serialize` or `Debug`: it holds a card number.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Payment {
    /// `POINT` or `CARD`.
    method: String,
    /// With `CARD`: `SAMSUNG`, `KB` or `HYUNDAI`.
    card_type: Option<String>,
    /// With `CARD`: `####-####-####-####`. Never stored in the clear, never logged.
    card_no: Option<String>,
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
    /// The card payment, for `CARD` orders.
    payment: Option<crate::payments::PaymentView>,
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
pub(crate) struct OrderRow {
    id: i64,
    user_id: i64,
    status: String,
    total_amount: i64,
    discount_amount: i64,
    final_amount: i64,
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
    let p = &req.payment;
    match p.method.as_str() {
        "POINT" => {
            if p.card_type.is_some() || p.card_no.is_some() {
                errors.push(commerce_web::FieldError::new(
                    "payment",
                    "card_type and card_no are only for CARD payments",
                ));
            }
        }
        "CARD" => {
            if !p
                .card_type
                .as_deref()
                .is_some_and(|t| crate::card::CARD_TYPES.contains(&t))
            {
                errors.push(commerce_web::FieldError::new(
                    "payment.card_type",
                    "must be SAMSUNG, KB or HYUNDAI",
                ));
            }
            if !p.card_no.as_deref().is_some_and(crate::card::is_card_no) {
                errors.push(commerce_web::FieldError::new(
                    "payment.card_no",
                    "must look like ####-####-####-####",
                ));
            }
        }
        _ => errors.push(commerce_web::FieldError::new(
            "payment.method",
            "must be POINT or CARD",
        )),
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
        "card_type": req.payment.card_type,
        // Masked: the full number is never kept, not even hashed.
        "card_no": req.payment.card_no.as_deref().map(crate::card::mask),
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
            create_order(conn, &state, user.id, &lines, &req, key.as_deref(), &hash)
                .await
                .map(Outcome::Created)
        })
        .await?;
    // The gateway call below must not hold a connection (or a transaction) while it waits.
    drop(conn);
    match outcome {
        Outcome::Created(mut order) => {
            tracing::info!(
                order.id = order.order_id,
                user.id = user.id,
                amount = order.final_amount,
                payment_method = %order.payment_method,
                "order placed"
            );
            metrics::counter!("orders_placed_total", "payment_method" => order.payment_method.clone())
                .increment(1);
            if order.status == "PENDING_PAYMENT"
                && let (Some(card_type), Some(card_no)) =
                    (&req.payment.card_type, &req.payment.card_no)
            {
                let (status, payment) = crate::payments::submit(
                    &state,
                    order.order_id,
                    user.id,
                    order.final_amount,
                    card_type,
                    card_no,
                )
                .await;
                order.status = status;
                order.payment = Some(payment);
            }
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
    state: &AppState,
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
    let by_card = req.payment.method == "CARD";
    // A card order waits for the gateway; one the coupon paid in full has nothing to wait for.
    let pending = by_card && final_amount > 0;
    let points_used = if by_card { 0 } else { final_amount };

    if points_used > 0 {
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
            orders::status.eq(if pending { "PENDING_PAYMENT" } else { "PAID" }),
            orders::total_amount.eq(total),
            orders::discount_amount.eq(discount),
            orders::final_amount.eq(final_amount),
            orders::points_used.eq(points_used),
            orders::user_coupon_id.eq(req.user_coupon_id),
            orders::payment_method.eq(&req.payment.method),
            orders::idempotency_key.eq(key),
            orders::request_hash.eq(hash),
            orders::paid_at.eq((!pending).then(Utc::now)),
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
    if points_used > 0 {
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
    let payment = match (pending, &req.payment.card_type, &req.payment.card_no) {
        (true, Some(card_type), Some(card_no)) => {
            let masked = crate::card::mask(card_no);
            diesel::insert_into(payments::table)
                .values((
                    payments::order_id.eq(order.id),
                    payments::user_id.eq(user_id),
                    payments::amount.eq(final_amount),
                    payments::card_type.eq(card_type),
                    payments::card_no_masked.eq(&masked),
                    payments::card_no_sealed.eq(state.cards.seal(card_no)),
                    // The database's clock, the one reconciliation compares it with.
                    payments::next_check_at.eq(diesel::dsl::sql::<diesel::sql_types::Timestamptz>(
                        &format!(
                            // clock_timestamp(): the time of this statement, not of the
                            // transaction's start (which may have waited on row locks).
                            "clock_timestamp() + interval '{} milliseconds'",
                            state.config.payments.recheck_after.as_millis()
                        ),
                    )),
                ))
                .execute(conn)
                .await?;
            Some(crate::payments::PaymentView {
                status: "PENDING".into(),
                card_type: card_type.clone(),
                card_no: masked,
                transaction_key: None,
                reason: None,
            })
        }
        _ => None,
    };
    let placed = OrderPlaced {
        order_id: order.id,
        user_id,
        lines: event_lines(&items),
        total_amount: total,
        discount_amount: discount,
        final_amount,
        payment_method: req.payment.method.clone(),
    };
    let events = if pending {
        vec![Event::OrderCreated(placed)]
    } else {
        vec![
            Event::OrderCreated(placed.clone()),
            Event::OrderPaid(placed),
        ]
    };
    outbox::record(conn, &state.topics, events).await?;
    Ok(OrderView {
        order_id: order.id,
        status: order.status,
        total_amount: total,
        discount_amount: discount,
        final_amount,
        payment_method: order.payment_method,
        user_coupon_id: order.user_coupon_id,
        items,
        payment,
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
    let payment = if order.payment_method == "CARD" {
        payments::table
            .filter(payments::order_id.eq(order.id))
            .select(crate::payments::view_columns())
            .first(conn)
            .await
            .optional()?
    } else {
        None
    };
    let items = order_lines(conn, order.id).await?;
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
            .map(|l| OrderItemView {
                product_id: l.product_id,
                quantity: l.quantity,
                unit_price: l.unit_price,
            })
            .collect(),
        payment,
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
            let lines = release_holds(conn, order.id).await?;
            if order.status == "PENDING_PAYMENT" {
                // The payment attempt ends with the order; a success reported later is flagged
                // for a refund by `payments::settle`.
                crate::payments::mark_payment(
                    conn,
                    order.id,
                    "CANCELLED",
                    None,
                    Some(&"the order was cancelled".to_owned()),
                )
                .await?;
            } else if order.payment_method == "CARD" && order.final_amount > 0 {
                // A paid card order's money goes back through the gateway: flag it (the
                // gateway's refund is an operator's step until it has an API for it).
                diesel::update(payments::table.filter(payments::order_id.eq(order.id)))
                    .set((
                        payments::status.eq("REFUND_REQUIRED"),
                        payments::reason.eq("the paid order was cancelled; refund required"),
                    ))
                    .execute(conn)
                    .await?;
                metrics::counter!("payments_refund_required_total").increment(1);
            }
            diesel::update(orders::table.find(order.id))
                .set((
                    orders::status.eq("CANCELLED"),
                    orders::cancelled_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await?;
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

/// The order's lines, in product-id order.
pub(crate) async fn order_lines(
    conn: &mut AsyncPgConnection,
    order_id: i64,
) -> ApiResult<Vec<OrderLine>> {
    let items: Vec<(i64, i64, i64)> = order_items::table
        .filter(order_items::order_id.eq(order_id))
        .order(order_items::product_id)
        .select((
            order_items::product_id,
            order_items::quantity,
            order_items::unit_price,
        ))
        .load(conn)
        .await?;
    Ok(items
        .into_iter()
        .map(|(product_id, quantity, unit_price)| OrderLine {
            product_id,
            quantity,
            unit_price,
        })
        .collect())
}

/// Gives back everything an order holds, inside the caller's transaction (which must hold the
/// order's row lock, so this runs once per order): its stock, its points (if any were used) and
/// its coupon. Returns the order's lines.
pub(crate) async fn release_holds(
    conn: &mut AsyncPgConnection,
    order_id: i64,
) -> ApiResult<Vec<OrderLine>> {
    let (user_id, points_used, user_coupon_id): (i64, i64, Option<i64>) = orders::table
        .find(order_id)
        .select((orders::user_id, orders::points_used, orders::user_coupon_id))
        .first(conn)
        .await?;
    let lines = order_lines(conn, order_id).await?;
    let ids: Vec<i64> = lines.iter().map(|l| l.product_id).collect();
    let quantities: Vec<i64> = lines.iter().map(|l| l.quantity).collect();
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
    if points_used > 0 {
        diesel::update(users::table.find(user_id))
            .set(users::point_balance.eq(users::point_balance + points_used))
            .execute(conn)
            .await?;
        diesel::insert_into(point_ledger::table)
            .values((
                point_ledger::user_id.eq(user_id),
                point_ledger::amount.eq(points_used),
                point_ledger::kind.eq("REFUND"),
                point_ledger::order_id.eq(order_id),
            ))
            .execute(conn)
            .await?;
    }
    if let Some(uc) = user_coupon_id {
        diesel::update(user_coupons::table.find(uc))
            .set((
                user_coupons::status.eq("AVAILABLE"),
                user_coupons::used_at.eq(None::<DateTime<Utc>>),
                user_coupons::order_id.eq(None::<i64>),
            ))
            .execute(conn)
            .await?;
    }
    Ok(lines)
}
