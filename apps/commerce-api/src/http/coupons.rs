//! First-come coupons.
//!
//! Issuing is a race many lose. Losers are turned away by one atomic Redis script (per-user
//! dedupe plus a count against the limit) without touching the database; only admitted users
//! reach PostgreSQL, which stays the source of truth: a conditional update on `issued_count`
//! and the unique (coupon, user) constraint hold the guarantees on their own. So when Redis is
//! down every attempt takes the database path with the same guarantees, just slower; and when
//! the database write fails after Redis admitted a user, the user is removed from the Redis set
//! so the seat is not lost.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{AdminUser, AuthUser};
use crate::error::{ApiError, ApiResult};
use crate::routes::{Json, Path, is_unique_violation};
use crate::schema::{coupons, user_coupons};
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

#[derive(Serialize, ToSchema, Queryable)]
pub struct CouponView {
    id: i64,
    name: String,
    discount_type: String,
    discount_value: i64,
    min_order_amount: i64,
    max_discount_amount: Option<i64>,
    total_quantity: Option<i64>,
    issued_count: i64,
    valid_from: Option<DateTime<Utc>>,
    valid_until: Option<DateTime<Utc>>,
}

#[derive(Serialize, ToSchema)]
pub struct IssuedCoupon {
    user_coupon_id: i64,
    coupon_id: i64,
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct MyCoupon {
    user_coupon_id: i64,
    coupon_id: i64,
    name: String,
    discount_type: String,
    discount_value: i64,
    /// `AVAILABLE`, `USED` or `EXPIRED`.
    status: String,
}

/// The discount a coupon gives on `total` won: never more than the total.
pub fn discount(kind: &str, value: i64, max_discount: Option<i64>, total: i64) -> i64 {
    let raw = match kind {
        "RATE" => total.saturating_mul(value) / 100,
        _ => value,
    };
    let capped = max_discount.map_or(raw, |m| raw.min(m));
    capped.clamp(0, total)
}

fn coupon_columns() -> (
    coupons::id,
    coupons::name,
    coupons::discount_type,
    coupons::discount_value,
    coupons::min_order_amount,
    coupons::max_discount_amount,
    coupons::total_quantity,
    coupons::issued_count,
    coupons::valid_from,
    coupons::valid_until,
) {
    (
        coupons::id,
        coupons::name,
        coupons::discount_type,
        coupons::discount_value,
        coupons::min_order_amount,
        coupons::max_discount_amount,
        coupons::total_quantity,
        coupons::issued_count,
        coupons::valid_from,
        coupons::valid_until,
    )
}

/// Create a coupon (admin).
#[utoipa::path(post, path = "/api/v1/admin/coupons", tag = "coupons", security(("bearer" = [])),
    request_body = NewCoupon, responses((status = 201, body = CouponView), (status = 400), (status = 403)))]
pub async fn create_coupon(
    State(state): State<AppState>,
    _admin: AdminUser,
    Json(req): Json<NewCoupon>,
) -> ApiResult<(StatusCode, Json<CouponView>)> {
    use commerce_web::FieldError;
    let mut errors = Vec::new();
    if req.name.trim().is_empty() || req.name.chars().count() > 100 {
        errors.push(FieldError::new("name", "must be 1-100 characters"));
    }
    match req.discount_type.as_str() {
        "FIXED" if !(1..=1_000_000_000).contains(&req.discount_value) => errors.push(
            FieldError::new("discount_value", "must be 1..=1000000000 won for FIXED"),
        ),
        "RATE" if !(1..=100).contains(&req.discount_value) => errors.push(FieldError::new(
            "discount_value",
            "must be a percentage 1..=100 for RATE",
        )),
        "FIXED" | "RATE" => {}
        _ => errors.push(FieldError::new("discount_type", "must be FIXED or RATE")),
    }
    if req
        .min_order_amount
        .is_some_and(|m| !(0..=1_000_000_000).contains(&m))
    {
        errors.push(FieldError::new(
            "min_order_amount",
            "must be 0..=1000000000",
        ));
    }
    if req
        .max_discount_amount
        .is_some_and(|m| !(1..=1_000_000_000).contains(&m))
    {
        errors.push(FieldError::new(
            "max_discount_amount",
            "must be 1..=1000000000",
        ));
    }
    if req
        .total_quantity
        .is_some_and(|q| !(1..=100_000_000).contains(&q))
    {
        errors.push(FieldError::new(
            "total_quantity",
            "must be 1..=100000000 or null",
        ));
    }
    if let (Some(from), Some(until)) = (req.valid_from, req.valid_until)
        && from >= until
    {
        errors.push(FieldError::new("valid_until", "must be after valid_from"));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let mut conn = state.db.get().await?;
    let coupon: CouponView = diesel::insert_into(coupons::table)
        .values((
            coupons::name.eq(req.name.trim()),
            coupons::discount_type.eq(&req.discount_type),
            coupons::discount_value.eq(req.discount_value),
            coupons::min_order_amount.eq(req.min_order_amount.unwrap_or(0)),
            coupons::max_discount_amount.eq(req.max_discount_amount),
            coupons::total_quantity.eq(req.total_quantity),
            coupons::valid_from.eq(req.valid_from),
            coupons::valid_until.eq(req.valid_until),
        ))
        .returning(coupon_columns())
        .get_result(&mut conn)
        .await?;
    Ok((StatusCode::CREATED, Json(coupon)))
}

/// What the Redis gate said.
enum Gate {
    Admitted,
    AlreadyIssued,
    SoldOut,
    /// Redis unavailable: the database decides alone.
    Bypassed,
}

/// Issue a coupon to the caller, first come first served.
#[utoipa::path(post, path = "/api/v1/coupons/{id}/issue", tag = "coupons", security(("bearer" = [])),
    responses((status = 201, body = IssuedCoupon), (status = 401), (status = 404),
        (status = 409, description = "COUPON_SOLD_OUT, COUPON_ALREADY_ISSUED, COUPON_NOT_ACTIVE")))]
pub async fn issue(
    State(state): State<AppState>,
    user: AuthUser,
    Path(coupon_id): Path<i64>,
) -> ApiResult<(StatusCode, Json<IssuedCoupon>)> {
    let coupon = coupon_terms(&state, coupon_id).await?;
    let now = Utc::now();
    if coupon.valid_from.is_some_and(|f| f > now) || coupon.valid_until.is_some_and(|u| u <= now) {
        return Err(ApiError::conflict(
            "COUPON_NOT_ACTIVE",
            "the coupon cannot be issued now",
        ));
    }

    let gate = admit(&state, coupon_id, user.id, coupon.total_quantity).await;
    match gate {
        Gate::AlreadyIssued => {
            metrics::counter!("coupon_issue_total", "result" => "already_issued", "path" => "redis").increment(1);
            return Err(already_issued());
        }
        Gate::SoldOut => {
            metrics::counter!("coupon_issue_total", "result" => "sold_out", "path" => "redis")
                .increment(1);
            return Err(sold_out());
        }
        Gate::Admitted | Gate::Bypassed => {}
    }
    let path = if matches!(gate, Gate::Admitted) {
        "redis"
    } else {
        "database"
    };
    let mut conn = state.db.get().await?;
    let result = issue_in_db(&mut conn, coupon_id, user.id).await;
    match &result {
        Ok(_) => metrics::counter!("coupon_issue_total", "result" => "issued", "path" => path)
            .increment(1),
        Err(ApiError::Conflict(code, _)) => {
            let result = if *code == "COUPON_SOLD_OUT" {
                "sold_out"
            } else {
                "already_issued"
            };
            metrics::counter!("coupon_issue_total", "result" => result, "path" => path)
                .increment(1);
        }
        Err(_) => {}
    }
    // Give the seat back in Redis unless the user really holds a coupon now.
    if matches!(gate, Gate::Admitted)
        && let Err(e) = &result
        && !matches!(e, ApiError::Conflict("COUPON_ALREADY_ISSUED", _))
    {
        release(&state, coupon_id, user.id).await;
    }
    let user_coupon_id = result?;
    Ok((
        StatusCode::CREATED,
        Json(IssuedCoupon {
            user_coupon_id,
            coupon_id,
            status: "AVAILABLE",
        }),
    ))
}

/// The terms of a coupon that decide issuing. Coupons never change after creation, so they are
/// kept in memory once read: losers of a rush are then turned away without any database work.
#[derive(Clone, Copy)]
pub struct CouponTerms {
    total_quantity: Option<i64>,
    valid_from: Option<DateTime<Utc>>,
    valid_until: Option<DateTime<Utc>>,
}

/// In-process cache of [`CouponTerms`].
#[derive(Default)]
pub struct CouponTermsCache(std::sync::RwLock<std::collections::HashMap<i64, CouponTerms>>);

async fn coupon_terms(state: &AppState, coupon_id: i64) -> ApiResult<CouponTerms> {
    if let Some(terms) = state
        .coupon_terms
        .0
        .read()
        .expect("lock poisoned")
        .get(&coupon_id)
    {
        return Ok(*terms);
    }
    let mut conn = state.db.get().await?;
    let (total_quantity, valid_from, valid_until) = coupons::table
        .find(coupon_id)
        .select((
            coupons::total_quantity,
            coupons::valid_from,
            coupons::valid_until,
        ))
        .first(&mut conn)
        .await
        .optional()?
        .ok_or_else(|| ApiError::not_found("COUPON_NOT_FOUND", "no such coupon"))?;
    let terms = CouponTerms {
        total_quantity,
        valid_from,
        valid_until,
    };
    state
        .coupon_terms
        .0
        .write()
        .expect("lock poisoned")
        .insert(coupon_id, terms);
    Ok(terms)
}

fn sold_out() -> ApiError {
    ApiError::conflict("COUPON_SOLD_OUT", "no coupons are left")
}

fn already_issued() -> ApiError {
    ApiError::conflict(
        "COUPON_ALREADY_ISSUED",
        "this coupon was already issued to you",
    )
}

/// The database path: the source of truth on its own.
async fn issue_in_db(conn: &mut AsyncPgConnection, coupon_id: i64, user_id: i64) -> ApiResult<i64> {
    conn.transaction::<_, ApiError, _>(async |conn| {
        // The unique (coupon, user) row first: a second attempt by the same user fails here
        // without touching the contended coupon row.
        let inserted = diesel::insert_into(user_coupons::table)
            .values((
                user_coupons::coupon_id.eq(coupon_id),
                user_coupons::user_id.eq(user_id),
            ))
            .returning(user_coupons::id)
            .get_result::<i64>(conn)
            .await;
        let user_coupon_id = match inserted {
            Ok(id) => id,
            Err(e) if is_unique_violation(&e) => return Err(already_issued()),
            Err(e) => return Err(e.into()),
        };
        let counted = diesel::update(
            coupons::table.find(coupon_id).filter(
                coupons::total_quantity
                    .is_null()
                    .or(coupons::issued_count.lt(coupons::total_quantity.assume_not_null())),
            ),
        )
        .set(coupons::issued_count.eq(coupons::issued_count + 1))
        .execute(conn)
        .await?;
        if counted == 0 {
            return Err(sold_out());
        }
        Ok(user_coupon_id)
    })
    .await
}

/// The Redis gate: one script, atomic. KEYS[1] is the set of admitted users; ARGV[1] the user,
/// ARGV[2] the limit (-1: unlimited). Returns 1 admitted, 0 already admitted, -1 sold out.
const GATE_SCRIPT: &str = r"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then return 0 end
local limit = tonumber(ARGV[2])
if limit >= 0 and redis.call('SCARD', KEYS[1]) >= limit then return -1 end
redis.call('SADD', KEYS[1], ARGV[1])
return 1
";

fn gate_key(state: &AppState, coupon_id: i64) -> String {
    state.cache.key(&format!("coupon:{coupon_id}:issued"))
}

async fn admit(state: &AppState, coupon_id: i64, user_id: i64, limit: Option<i64>) -> Gate {
    let result: anyhow::Result<i64> = async {
        let mut conn = state.cache.conn().await?;
        Ok(redis::Script::new(GATE_SCRIPT)
            .key(gate_key(state, coupon_id))
            .arg(user_id)
            .arg(limit.unwrap_or(-1))
            .invoke_async(&mut conn)
            .await?)
    }
    .await;
    match result {
        Ok(1) => Gate::Admitted,
        Ok(0) => Gate::AlreadyIssued,
        Ok(_) => Gate::SoldOut,
        Err(e) => {
            metrics::counter!("coupon_gate_unavailable_total").increment(1);
            tracing::debug!(error = %format!("{e:#}"), coupon.id = coupon_id, "coupon gate unavailable; using the database alone");
            Gate::Bypassed
        }
    }
}

/// Removes a user admitted by the gate whose database write failed.
async fn release(state: &AppState, coupon_id: i64, user_id: i64) {
    let result: anyhow::Result<()> = async {
        let mut conn = state.cache.conn().await?;
        let _: i64 = redis::cmd("SREM")
            .arg(gate_key(state, coupon_id))
            .arg(user_id)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(coupon.id = coupon_id, user.id = user_id, error = %format!("{e:#}"), "could not release a coupon seat in Redis");
    }
}

#[derive(Queryable)]
struct MyCouponRow(i64, i64, String, String, i64, String, Option<DateTime<Utc>>);

/// The caller's coupons.
#[utoipa::path(get, path = "/api/v1/users/me/coupons", tag = "coupons", security(("bearer" = [])),
    responses((status = 200, body = Vec<MyCoupon>), (status = 401)))]
pub async fn my_coupons(
    State(state): State<AppState>,
    user: AuthUser,
) -> ApiResult<Json<Vec<MyCoupon>>> {
    let mut conn = state.db.get().await?;
    let rows: Vec<MyCouponRow> = user_coupons::table
        .inner_join(coupons::table)
        .filter(user_coupons::user_id.eq(user.id))
        .order(user_coupons::id.desc())
        .select((
            user_coupons::id,
            coupons::id,
            coupons::name,
            coupons::discount_type,
            coupons::discount_value,
            user_coupons::status,
            coupons::valid_until,
        ))
        .load(&mut conn)
        .await?;
    let now = Utc::now();
    Ok(Json(
        rows.into_iter()
            .map(
                |MyCouponRow(uc, c, name, kind, value, status, until)| MyCoupon {
                    user_coupon_id: uc,
                    coupon_id: c,
                    name,
                    discount_type: kind,
                    discount_value: value,
                    status: if status == "AVAILABLE" && until.is_some_and(|u| u <= now) {
                        "EXPIRED".into()
                    } else {
                        status
                    },
                },
            )
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::discount;

    #[test]
    fn discounts_are_capped_and_never_exceed_the_total() {
        assert_eq!(discount("FIXED", 3000, None, 10_000), 3000);
        assert_eq!(discount("FIXED", 3000, None, 2000), 2000);
        assert_eq!(discount("RATE", 10, None, 15_000), 1500);
        assert_eq!(discount("RATE", 50, Some(1000), 15_000), 1000);
        assert_eq!(discount("RATE", 100, None, 700), 700);
    }
}
