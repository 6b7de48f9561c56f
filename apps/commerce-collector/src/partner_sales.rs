//! Confirmed sales per partner (`GET /api/v1/partners/sales`): purchase-confirmed partner
//! orders, their gross merchandise value and what was paid for them, per business day, ISO week
//! or calendar month, from `partner_sales` (applied exactly once with every batch).

use axum::extract::State;
use chrono::NaiveDate;
use commerce_web::{FieldError, Query};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Date, Text};
use diesel_async::RunQueryDsl;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::error::CollectorError;
use crate::ranking::Period;
use crate::ranking::http::{check, parse};
use crate::state::AppState;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SalesParams {
    /// `daily` (default), `weekly` (ISO week, Monday first) or `monthly`.
    period: Option<String>,
    /// A day of the period, `YYYY-MM-DD`, from 2000-01-01 to today; default today (in the
    /// business time zone).
    date: Option<String>,
    /// Only this partner; all of the period's partners by default.
    partner_id: Option<i64>,
    /// Partners per page, 1..=100; default 20.
    size: Option<i64>,
}

/// A period's confirmed sales, by partner.
#[derive(Serialize, ToSchema)]
pub struct PartnerSalesPage {
    period: String,
    /// First day of the period.
    from: NaiveDate,
    /// Last day of the period.
    to: NaiveDate,
    /// By GMV descending, then partner id.
    content: Vec<PartnerSales>,
}

/// One partner's confirmed sales in the period.
#[derive(Serialize, ToSchema, QueryableByName)]
pub struct PartnerSales {
    #[diesel(sql_type = BigInt)]
    partner_id: i64,
    /// Partner orders purchase-confirmed in the period.
    #[diesel(sql_type = BigInt)]
    confirmed_orders: i64,
    /// Their lines' total, in won.
    #[diesel(sql_type = BigInt)]
    gmv: i64,
    /// What was paid for them (less their share of coupon discounts), in won.
    #[diesel(sql_type = BigInt)]
    paid_amount: i64,
}

/// Confirmed sales per partner in a day, week or month: what settlement pays partners for.
#[utoipa::path(get, path = "/api/v1/partners/sales", tag = "partners", params(SalesParams),
    responses((status = 200, body = PartnerSalesPage), (status = 400)))]
pub async fn partner_sales(
    State(state): State<AppState>,
    Query(params): Query<SalesParams>,
) -> Result<commerce_web::Json<PartnerSalesPage>, CollectorError> {
    let mut errors = Vec::new();
    let parsed = parse(
        &state,
        &[Period::Daily, Period::Weekly, Period::Monthly],
        params.period.as_deref(),
        params.date.as_deref(),
        &mut errors,
    );
    let size = params.size.unwrap_or(20);
    if !(1..=100).contains(&size) {
        errors.push(FieldError::new("size", "must be 1..=100"));
    }
    if params.partner_id.is_some_and(|p| p < 1) {
        errors.push(FieldError::new("partner_id", "must be positive"));
    }
    check(errors)?;
    let (period, date) = parsed.expect("checked above");
    let (from, to) = period.bounds(date);
    let mut conn = state.db.get().await?;
    let content: Vec<PartnerSales> = diesel::sql_query(
        "SELECT partner_id, confirmed_orders, gmv, paid_amount FROM partner_sales
          WHERE period = $1 AND period_start = $2 AND ($3::bigint IS NULL OR partner_id = $3)
          ORDER BY gmv DESC, partner_id LIMIT $4",
    )
    .bind::<Text, _>(period.as_str())
    .bind::<Date, _>(from)
    .bind::<diesel::sql_types::Nullable<BigInt>, _>(params.partner_id)
    .bind::<BigInt, _>(size)
    .load(&mut conn)
    .await
    .map_err(anyhow::Error::new)?;
    Ok(commerce_web::Json(PartnerSalesPage {
        period: period.as_str().to_owned(),
        from,
        to,
        content,
    }))
}
