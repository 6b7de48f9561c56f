//! Settlement routes: commission policies and payouts for administrators
//! (`/api/v1/admin/...`), settlements and balances for partners (`/api/v1/partner/...`). The
//! rules are in [`crate::domain::settlement`].

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::NaiveDate;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::domain::settlement::{
    self, LineView, NegativeBalance, NewPolicy, PartnerBalance, PolicyView, SettlementView,
};
use crate::http::auth::{AdminUser, PartnerUser};
use crate::http::error::{ApiError, ApiResult};
use crate::http::paging::{Page, PageParams, page_and_size};
use crate::http::{Json, Path, Query};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPolicyRequest {
    /// The partner it applies to; absent: the platform default (for partners without a version
    /// of their own in force).
    partner_id: Option<i64>,
    /// Commission in basis points of a partner order's items, 0 ..= 10,000 (1,000 = 10 %).
    rate_bps: i32,
    /// Won added per partner order, 0 ..= 1,000,000,000 (default 0). A commission never exceeds
    /// the partner order's items.
    fixed_fee: Option<i64>,
    /// The first business day it applies to (`YYYY-MM-DD`), after the last settled day; it applies
    /// until a later version starts.
    valid_from: NaiveDate,
}

/// Add a commission policy version (admin): a partner's, or the platform default. It applies to
/// purchase confirmations from `valid_from` on (a future day schedules it), until a later
/// version starts; versions are never changed. Each settled partner order keeps the version,
/// rate and fee that applied to it.
#[utoipa::path(post, path = "/api/v1/admin/commission-policies", tag = "settlement",
    security(("bearer" = [])), request_body = NewPolicyRequest,
    responses((status = 201, body = PolicyView),
        (status = 400, description = "VALIDATION_FAILED"), (status = 401), (status = 403),
        (status = 404, description = "PARTNER_NOT_FOUND"),
        (status = 409, description = "SETTLEMENT_DAY_CLOSED (valid_from is settled already), POLICY_VERSION_EXISTS")))]
pub async fn add_policy(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Json(req): Json<NewPolicyRequest>,
) -> ApiResult<(StatusCode, Json<PolicyView>)> {
    let mut conn = state.db.get().await?;
    let policy = settlement::add_policy(
        &mut conn,
        admin.id,
        &NewPolicy {
            partner_id: req.partner_id,
            rate_bps: req.rate_bps,
            fixed_fee: req.fixed_fee.unwrap_or(0),
            valid_from: req.valid_from,
        },
    )
    .await?;
    Ok((StatusCode::CREATED, Json(policy)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PolicyParams {
    /// A partner's versions; absent: the platform default's.
    partner_id: Option<i64>,
    /// 0-based (default 0); `page × size` at most 10,000.
    page: Option<i64>,
    /// 1 ..= 100 (default 20).
    size: Option<i64>,
}

/// A partner's commission policy versions, or the platform default's (admin), newest first,
/// each with the day the next one takes over.
#[utoipa::path(get, path = "/api/v1/admin/commission-policies", tag = "settlement",
    security(("bearer" = [])), params(PolicyParams),
    responses((status = 200, body = Page<PolicyView>), (status = 400), (status = 401), (status = 403)))]
pub async fn list_policies(
    State(state): State<AppState>,
    AdminUser(_admin): AdminUser,
    Query(params): Query<PolicyParams>,
) -> ApiResult<Json<Page<PolicyView>>> {
    let mut errors = Vec::new();
    let (page, size) = page_and_size(params.page, params.size, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let mut conn = state.db.get().await?;
    let (content, total) = settlement::policies(&mut conn, params.partner_id, page, size).await?;
    Ok(Json(Page::new(content, page, size, total)))
}

/// The commission policy versions that apply to the calling partner: its own, newest first
/// (where none is in force on a day, the platform default's applies; see `defaults`).
#[derive(Serialize, ToSchema)]
pub struct PartnerPolicies {
    own: Vec<PolicyView>,
    defaults: Vec<PolicyView>,
}

/// The calling partner's commission policy versions, and the platform default's.
#[utoipa::path(get, path = "/api/v1/partner/commission-policies", tag = "settlement",
    security(("bearer" = [])),
    responses((status = 200, body = PartnerPolicies), (status = 401), (status = 403)))]
pub async fn partner_policies(
    State(state): State<AppState>,
    partner: PartnerUser,
) -> ApiResult<Json<PartnerPolicies>> {
    let mut conn = state.db.get().await?;
    let (own, _) = settlement::policies(&mut conn, Some(partner.partner_id), 0, 100).await?;
    let (defaults, _) = settlement::policies(&mut conn, None, 0, 100).await?;
    Ok(Json(PartnerPolicies { own, defaults }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DayParams {
    /// The business day, `YYYY-MM-DD`.
    date: Option<String>,
    /// 0-based (default 0); `page × size` at most 10,000.
    page: Option<i64>,
    /// 1 ..= 100 (default 20).
    size: Option<i64>,
}

/// Every partner's settlement of one business day (admin), by partner id.
#[utoipa::path(get, path = "/api/v1/admin/settlements", tag = "settlement",
    security(("bearer" = [])), params(DayParams),
    responses((status = 200, body = Page<SettlementView>),
        (status = 400, description = "VALIDATION_FAILED (date missing or not YYYY-MM-DD)"),
        (status = 401), (status = 403)))]
pub async fn day_settlements(
    State(state): State<AppState>,
    AdminUser(_admin): AdminUser,
    Query(params): Query<DayParams>,
) -> ApiResult<Json<Page<SettlementView>>> {
    let mut errors = Vec::new();
    let day = match params.date.as_deref().map(|d| d.parse::<NaiveDate>()) {
        Some(Ok(day)) => Some(day),
        Some(Err(_)) => {
            errors.push(commerce_web::FieldError::new("date", "must be YYYY-MM-DD"));
            None
        }
        None => {
            errors.push(commerce_web::FieldError::new("date", "is required"));
            None
        }
    };
    let (page, size) = page_and_size(params.page, params.size, &mut errors);
    let Some(day) = day.filter(|_| errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let mut conn = state.db.get().await?;
    let (content, total) = settlement::of_day(&mut conn, day, page, size).await?;
    Ok(Json(Page::new(content, page, size, total)))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Payout {
    /// The transfer's reference (1-100 printable characters), unique across payouts.
    reference: String,
}

/// Record a settlement paid out (admin), once: its `PAYOUT` ledger entry and its paid-out mark.
#[utoipa::path(post, path = "/api/v1/admin/settlements/{id}/payout", tag = "settlement",
    security(("bearer" = [])), request_body = Payout,
    responses((status = 200, body = SettlementView),
        (status = 400, description = "VALIDATION_FAILED"), (status = 401), (status = 403),
        (status = 404, description = "SETTLEMENT_NOT_FOUND"),
        (status = 409, description = "ALREADY_PAID_OUT, NOTHING_TO_PAY_OUT (its payable is 0), PAYOUT_REFERENCE_USED")))]
pub async fn pay_out(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(id): Path<i64>,
    Json(req): Json<Payout>,
) -> ApiResult<Json<SettlementView>> {
    let mut conn = state.db.get().await?;
    Ok(Json(
        settlement::pay_out(&mut conn, admin.id, id, &req.reference).await?,
    ))
}

/// A partner's balance with the platform from its ledger (admin), reconciled against its
/// settlements.
#[utoipa::path(get, path = "/api/v1/admin/partners/{id}/balance", tag = "settlement",
    security(("bearer" = [])),
    responses((status = 200, body = PartnerBalance), (status = 401), (status = 403),
        (status = 404, description = "PARTNER_NOT_FOUND")))]
pub async fn partner_balance(
    State(state): State<AppState>,
    AdminUser(_admin): AdminUser,
    Path(id): Path<i64>,
) -> ApiResult<Json<PartnerBalance>> {
    let mut conn = state.db.get().await?;
    Ok(Json(settlement::balance(&mut conn, id).await?))
}

/// Partners whose latest settlement carries a shortfall (admin): clawbacks beyond what they
/// earned since, to recover. Longest-standing first.
#[utoipa::path(get, path = "/api/v1/admin/settlements/shortfalls", tag = "settlement",
    security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<NegativeBalance>), (status = 400), (status = 401), (status = 403)))]
pub async fn shortfalls(
    State(state): State<AppState>,
    AdminUser(_admin): AdminUser,
    Query(params): Query<PageParams>,
) -> ApiResult<Json<Page<NegativeBalance>>> {
    let (page, size) = params.parse()?;
    let mut conn = state.db.get().await?;
    let (content, total) = settlement::negative_balances(&mut conn, page, size).await?;
    Ok(Json(Page::new(content, page, size, total)))
}

/// The calling partner's settlements, newest first.
#[utoipa::path(get, path = "/api/v1/partner/settlements", tag = "settlement",
    security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<SettlementView>), (status = 400), (status = 401), (status = 403)))]
pub async fn my_settlements(
    State(state): State<AppState>,
    partner: PartnerUser,
    Query(params): Query<PageParams>,
) -> ApiResult<Json<Page<SettlementView>>> {
    let (page, size) = params.parse()?;
    let mut conn = state.db.get().await?;
    let (content, total) =
        settlement::of_partner(&mut conn, partner.partner_id, page, size).await?;
    Ok(Json(Page::new(content, page, size, total)))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LineParams {
    /// Lines after this partner order id (`next_after` of the previous page); from the first by
    /// default.
    after: Option<i64>,
    /// 1 ..= 1,000 (default 100).
    size: Option<i64>,
}

/// A settlement with a page of its lines.
#[derive(Serialize, ToSchema)]
pub struct SettlementDetail {
    settlement: SettlementView,
    /// In partner order id order.
    lines: Vec<LineView>,
    /// Pass as `after` for the next page; absent on the last.
    next_after: Option<i64>,
}

fn line_page(params: &LineParams) -> ApiResult<(i64, i64)> {
    let size = params.size.unwrap_or(100);
    if !(1..=1000).contains(&size) {
        return Err(ApiError::field("size", "must be 1..=1000"));
    }
    Ok((params.after.unwrap_or(0), size))
}

async fn detail(
    state: &AppState,
    id: i64,
    partner: Option<i64>,
    params: &LineParams,
) -> ApiResult<SettlementDetail> {
    let (after, size) = line_page(params)?;
    let mut conn = state.db.get().await?;
    let settlement = settlement::one(&mut conn, id, partner).await?;
    let lines = settlement::lines(&mut conn, &settlement, after, size).await?;
    let next_after = (lines.len() as i64 == size)
        .then(|| lines.last().map(|l| l.partner_order_id))
        .flatten();
    Ok(SettlementDetail {
        settlement,
        lines,
        next_after,
    })
}

/// One of the calling partner's settlements with a page of its lines: each settled partner order
/// with the commission policy version, rate, fee and amount that applied (another partner's
/// settlement: 404).
#[utoipa::path(get, path = "/api/v1/partner/settlements/{id}", tag = "settlement",
    security(("bearer" = [])), params(LineParams),
    responses((status = 200, body = SettlementDetail), (status = 400), (status = 401), (status = 403),
        (status = 404, description = "SETTLEMENT_NOT_FOUND")))]
pub async fn my_settlement(
    State(state): State<AppState>,
    partner: PartnerUser,
    Path(id): Path<i64>,
    Query(params): Query<LineParams>,
) -> ApiResult<Json<SettlementDetail>> {
    Ok(Json(
        detail(&state, id, Some(partner.partner_id), &params).await?,
    ))
}

/// One settlement with a page of its lines (admin).
#[utoipa::path(get, path = "/api/v1/admin/settlements/{id}", tag = "settlement",
    security(("bearer" = [])), params(LineParams),
    responses((status = 200, body = SettlementDetail), (status = 400), (status = 401), (status = 403),
        (status = 404, description = "SETTLEMENT_NOT_FOUND")))]
pub async fn settlement_detail(
    State(state): State<AppState>,
    AdminUser(_admin): AdminUser,
    Path(id): Path<i64>,
    Query(params): Query<LineParams>,
) -> ApiResult<Json<SettlementDetail>> {
    Ok(Json(detail(&state, id, None, &params).await?))
}

/// Lines fetched per database round trip of the CSV download.
const CSV_PAGE: i64 = 5000;

/// Every line of one of the calling partner's settlements as CSV, streamed in pages (memory does
/// not grow with the settlement): `partner_order_id,order_id,confirmed_on,policy_id,rate_bps,
/// fixed_fee,gross,commission,net` (another partner's settlement: 404).
#[utoipa::path(get, path = "/api/v1/partner/settlements/{id}/lines.csv", tag = "settlement",
    security(("bearer" = [])),
    responses((status = 200, content_type = "text/csv", body = String), (status = 401), (status = 403),
        (status = 404, description = "SETTLEMENT_NOT_FOUND")))]
pub async fn my_settlement_csv(
    State(state): State<AppState>,
    partner: PartnerUser,
    Path(id): Path<i64>,
) -> ApiResult<Response> {
    let s = {
        let mut conn = state.db.get().await?;
        settlement::one(&mut conn, id, Some(partner.partner_id)).await?
    };
    let filename = format!(
        "settlement-{}-{}-{}.csv",
        s.partner_id, s.business_date, s.id
    );
    let header_line = "partner_order_id,order_id,confirmed_on,policy_id,rate_bps,fixed_fee,gross,commission,net\n";
    let db = state.db.clone();
    // Each page takes a connection and gives it back: a slow reader holds none.
    let pages = futures::stream::unfold(Some(0i64), move |after| {
        let (db, s) = (db.clone(), s.clone());
        async move {
            let after = after?;
            let page = async {
                let mut conn = db.get().await?;
                settlement::lines(&mut conn, &s, after, CSV_PAGE).await
            }
            .await;
            match page {
                Ok(lines) if lines.is_empty() => None,
                Ok(lines) => {
                    let next = (lines.len() as i64 == CSV_PAGE)
                        .then(|| lines.last().map(|l| l.partner_order_id))
                        .flatten();
                    let mut chunk = String::with_capacity(lines.len() * 64);
                    for l in &lines {
                        use std::fmt::Write as _;
                        let _ = writeln!(
                            chunk,
                            "{},{},{},{},{},{},{},{},{}",
                            l.partner_order_id,
                            l.order_id,
                            l.confirmed_on,
                            l.policy_id,
                            l.rate_bps,
                            l.fixed_fee,
                            l.gross,
                            l.commission,
                            l.net
                        );
                    }
                    Some((Ok::<_, std::io::Error>(chunk), next))
                }
                Err(e) => {
                    tracing::warn!(settlement.id = s.id, error = %e, "settlement CSV download failed mid-stream");
                    Some((Err(std::io::Error::other(e.to_string())), None))
                }
            }
        }
    });
    let body = futures::stream::once(async move { Ok(header_line.to_owned()) }).chain(pages);
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// The calling partner's balance with the platform, from its ledger.
#[utoipa::path(get, path = "/api/v1/partner/balance", tag = "settlement",
    security(("bearer" = [])),
    responses((status = 200, body = PartnerBalance), (status = 401), (status = 403)))]
pub async fn my_balance(
    State(state): State<AppState>,
    partner: PartnerUser,
) -> ApiResult<Json<PartnerBalance>> {
    let mut conn = state.db.get().await?;
    Ok(Json(
        settlement::balance(&mut conn, partner.partner_id).await?,
    ))
}
