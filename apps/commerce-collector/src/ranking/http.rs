//! The ranking API, described in the collector's OpenAPI document.
//!
//! Each read of a current ranking (today's day, week or month) goes to its live Redis set; if
//! Redis cannot serve it (unreachable, or the set is being rebuilt), and for every past period,
//! the read goes to the PostgreSQL snapshot. Responses say which (`source`) and how old the
//! ranks are (`as_of`); `ranking_fallbacks_total{reason}` counts the current-period reads that
//! Redis could not serve. Catalog fields and figures come from the collector's own tables in one
//! query per page.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::{DateTime, NaiveDate, Utc};
use commerce_web::{FieldError, Path, Problem, Query};
use diesel::sql_types::{Array, BigInt, Date, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::snapshot::{self, Taken, not_found_is_none};
use super::{Period, Ranking, has_rows};
use crate::error::CollectorError;
use crate::state::AppState;

/// Deepest page accepted (with 100 per page: ten million ranks).
const MAX_PAGE: i64 = 100_000;
/// Earliest date accepted.
const EPOCH: NaiveDate = NaiveDate::from_ymd_opt(2000, 1, 1).expect("a valid date");

type ApiResult<T> = Result<commerce_web::Json<T>, CollectorError>;

/// A ranking response, reused by identical requests for `RANKING_CACHE_TTL_MS` (ranks move
/// within a second of an event; this keeps the hottest pages off Redis and PostgreSQL).
async fn cached<T: Serialize>(
    state: &AppState,
    key: String,
    build: impl Future<Output = Result<T, CollectorError>>,
) -> Result<Response, CollectorError> {
    if let Some(body) = state.responses.get(&key) {
        metrics::counter!("ranking_cache_hits_total").increment(1);
        return Ok(json_bytes(body));
    }
    let body = Bytes::from(serde_json::to_vec(&build.await?).map_err(anyhow::Error::new)?);
    state.responses.put(key, body.clone());
    Ok(json_bytes(body))
}

fn json_bytes(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

commerce_enums::text_enum! {
    schema;
    /// Where a response's ranks were read (also the `source` label of the ranking metrics).
    pub enum Source {
        /// The live Redis set, within a second of the applied events.
        Live => "live",
        /// The PostgreSQL snapshot taken at `as_of`.
        Snapshot => "snapshot",
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RankingParams {
    /// `daily` (default), `three_day` (the date and the two days before it), `weekly` (ISO
    /// week, Monday first) or `monthly`.
    period: Option<String>,
    /// A day of the period, `YYYY-MM-DD`, from 2000-01-01 to today; default today (in the
    /// business time zone).
    date: Option<String>,
    /// 0-based page, up to 100000.
    page: Option<i64>,
    /// Products per page, 1..=100; default 20.
    size: Option<i64>,
}

/// One page of a ranking.
#[derive(Serialize, ToSchema)]
pub struct RankingPage {
    period: &'static str,
    /// The date asked for.
    date: NaiveDate,
    /// First day of the period.
    from: NaiveDate,
    /// Last day of the period.
    to: NaiveDate,
    content: Vec<RankedProduct>,
    page: i64,
    size: i64,
    /// Products ranked in the period. A page past the end is empty, with this total.
    total_elements: i64,
    total_pages: i64,
    source: Source,
    /// When these ranks were current.
    as_of: DateTime<Utc>,
}

/// A ranked product, with its catalog fields (null if the collector has not seen the product's
/// catalog event) and its figures in the period.
#[derive(Serialize, ToSchema)]
pub struct RankedProduct {
    /// 1-based, without gaps: by score descending, then product id ascending.
    rank: i64,
    product_id: i64,
    name: Option<String>,
    brand_name: Option<String>,
    price: Option<i64>,
    score: f64,
    view_count: i64,
    like_count: i64,
    order_count: i64,
    sales_quantity: i64,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProductRankParams {
    /// `daily` (default), `three_day`, `weekly`, `monthly`, or `best_sellers` (all time, by
    /// sales quantity, as of now: without `date`).
    period: Option<String>,
    /// A day of the period (of a three-day window, its last day), `YYYY-MM-DD`; default today.
    date: Option<String>,
}

/// A product's place in a ranking.
#[derive(Serialize, ToSchema)]
pub struct ProductRank {
    product_id: i64,
    period: &'static str,
    date: NaiveDate,
    from: NaiveDate,
    to: NaiveDate,
    /// Null when the product has no figures in the period.
    rank: Option<i64>,
    score: f64,
    /// Products ranked in the period.
    total_elements: i64,
    source: Source,
    as_of: DateTime<Utc>,
}

/// Parses and bounds the shared parameters, `period` being one of `allowed`; every bad field is
/// reported at once.
pub(crate) fn parse(
    state: &AppState,
    allowed: &[Period],
    period: Option<&str>,
    date: Option<&str>,
    errors: &mut Vec<FieldError>,
) -> Option<(Period, NaiveDate)> {
    let period = match period.unwrap_or("daily").parse::<Period>() {
        Ok(p) if allowed.contains(&p) => Some(p),
        _ => {
            let texts: Vec<&str> = allowed.iter().map(|p| p.as_str()).collect();
            errors.push(FieldError::new(
                "period",
                format!("must be {}", commerce_enums::expected(&texts)),
            ));
            None
        }
    };
    let today = state.live.today();
    let date = match date {
        None => Some(today),
        Some(raw) => match NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
            Ok(d) if (EPOCH..=today).contains(&d) => Some(d),
            Ok(_) => {
                errors.push(FieldError::new(
                    "date",
                    format!("must be between {EPOCH} and today ({today})"),
                ));
                None
            }
            Err(_) => {
                errors.push(FieldError::new("date", "must be a date YYYY-MM-DD"));
                None
            }
        },
    };
    period.zip(date)
}

pub(crate) fn check(errors: Vec<FieldError>) -> Result<(), CollectorError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Problem::validation(errors).into())
    }
}

/// Counts a current-period read that Redis could not serve.
fn fell_back(reason: &'static str, error: Option<&anyhow::Error>) {
    metrics::counter!("ranking_fallbacks_total", "reason" => reason).increment(1);
    if let Some(e) = error {
        tracing::debug!(error = %format!("{e:#}"), "ranking read from the snapshot: Redis failed");
    }
}

/// A page of a ranking.
#[utoipa::path(get, path = "/api/v1/rankings", tag = "rankings", params(RankingParams),
    responses(
        (status = 200, body = RankingPage),
        (status = 400, description = "`VALIDATION_FAILED`: a parameter is unknown, malformed or out of range", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`SERVICE_UNAVAILABLE`: the database cannot be reached", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn rankings(
    State(state): State<AppState>,
    Query(params): Query<RankingParams>,
) -> Result<Response, CollectorError> {
    let mut errors = Vec::new();
    let parsed = parse(
        &state,
        &Period::POPULARITY,
        params.period.as_deref(),
        params.date.as_deref(),
        &mut errors,
    );
    let (page, size) = paging(params.page, params.size, &mut errors);
    check(errors)?;
    let (period, date) = parsed.expect("checked above");
    let key = format!("page:{}:{date}:{page}:{size}", period.as_str());
    cached(&state, key, build_page(&state, period, date, page, size)).await
}

/// The page and size asked for (defaults 0 and 20), bounded.
fn paging(page: Option<i64>, size: Option<i64>, errors: &mut Vec<FieldError>) -> (i64, i64) {
    let page = page.unwrap_or(0);
    let size = size.unwrap_or(20);
    if !(0..=MAX_PAGE).contains(&page) {
        errors.push(FieldError::new("page", format!("must be 0..={MAX_PAGE}")));
    }
    if !(1..=100).contains(&size) {
        errors.push(FieldError::new("size", "must be 1..=100"));
    }
    (page, size)
}

/// The last day of `ranking` to show for a request about `date` (the best sellers': the date).
fn shown_end(ranking: Ranking, date: NaiveDate) -> NaiveDate {
    if ranking.period == Period::BestSellers {
        date
    } else {
        ranking.end()
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BestSellersParams {
    /// 0-based page, up to 100000.
    page: Option<i64>,
    /// Products per page, 1..=100; default 20.
    size: Option<i64>,
}

/// One page of the best sellers.
#[derive(Serialize, ToSchema)]
pub struct BestSellersPage {
    /// Best first: `score` is the all-time sales quantity, the figures are all-time.
    content: Vec<RankedProduct>,
    page: i64,
    size: i64,
    /// Products that ever sold (net of cancellations). A page past the end is empty, with this
    /// total.
    total_elements: i64,
    total_pages: i64,
    source: Source,
    as_of: DateTime<Utc>,
}

/// A page of the all-time best sellers: products by sales quantity (paid, net of cancelled),
/// then product id; only products that sold.
#[utoipa::path(get, path = "/api/v1/rankings/best-sellers", tag = "rankings", params(BestSellersParams),
    responses(
        (status = 200, body = BestSellersPage),
        (status = 400, description = "`VALIDATION_FAILED`: a parameter is unknown, malformed or out of range", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`SERVICE_UNAVAILABLE`: the database cannot be reached", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn best_sellers(
    State(state): State<AppState>,
    Query(params): Query<BestSellersParams>,
) -> Result<Response, CollectorError> {
    let mut errors = Vec::new();
    let (page, size) = paging(params.page, params.size, &mut errors);
    check(errors)?;
    let key = format!("best:{page}:{size}");
    cached(&state, key, async {
        let today = state.live.today();
        let page = build_page(&state, Period::BestSellers, today, page, size).await?;
        Ok(BestSellersPage {
            content: page.content,
            page: page.page,
            size: page.size,
            total_elements: page.total_elements,
            total_pages: page.total_pages,
            source: page.source,
            as_of: page.as_of,
        })
    })
    .await
}

async fn build_page(
    state: &AppState,
    period: Period,
    date: NaiveDate,
    page: i64,
    size: i64,
) -> Result<RankingPage, CollectorError> {
    let ranking = Ranking::of(period, date);
    let offset = page * size;
    let (source, as_of, total, entries) = read_page(state, ranking, offset, size).await?;
    let mut conn = state.db.get().await?;
    let ids: Vec<i64> = entries.iter().map(|(_, id, _)| *id).collect();
    let mut details = details(&mut conn, ranking, &ids).await?;
    let content = entries
        .into_iter()
        .map(|(rank, product_id, score)| {
            let d = details.remove(&product_id).unwrap_or_default();
            RankedProduct {
                rank,
                product_id,
                name: d.name,
                brand_name: d.brand_name,
                price: d.price,
                score,
                view_count: d.view_count.unwrap_or(0),
                like_count: d.like_count.unwrap_or(0),
                order_count: d.order_count.unwrap_or(0),
                sales_quantity: d.sales_quantity.unwrap_or(0),
            }
        })
        .collect();
    metrics::counter!("ranking_reads_total", "route" => "page", "source" => source.as_str())
        .increment(1);
    Ok(RankingPage {
        period: period.as_str(),
        date,
        from: ranking.start,
        to: shown_end(ranking, date),
        content,
        page,
        size,
        total_elements: total,
        total_pages: (total + size - 1) / size,
        source,
        as_of,
    })
}

/// (source, as of, total, [(rank, product, score)]) of a page, from Redis when it can serve it.
async fn read_page(
    state: &AppState,
    ranking: Ranking,
    offset: i64,
    size: i64,
) -> Result<(Source, DateTime<Utc>, i64, Vec<(i64, i64, f64)>), CollectorError> {
    if Ranking::current(state.live.today()).contains(&ranking) {
        match state.live.page(ranking, offset, size).await {
            Ok(Some(live)) => {
                let entries = live
                    .entries
                    .into_iter()
                    .zip(offset + 1..)
                    .map(|((product, score), rank)| (rank, product, score))
                    .collect();
                return Ok((Source::Live, Utc::now(), live.total, entries));
            }
            Ok(None) => fell_back("not_ready", None),
            Err(e) => fell_back("redis_unavailable", Some(&e)),
        }
    }
    let mut conn = state.db.get().await?;
    let mut found = snapshot::page(&mut conn, ranking, offset, size).await?;
    if found.is_none() && materialize_now(state, &mut conn, ranking).await? {
        found = snapshot::page(&mut conn, ranking, offset, size).await?;
    }
    Ok(match found {
        Some((taken, entries)) => (Source::Snapshot, taken.at, taken.total, entries),
        None => (Source::Snapshot, Utc::now(), 0, Vec::new()),
    })
}

/// Materialises a ranking that has figures but no snapshot yet (one at a time per instance);
/// false if it has no figures at all.
async fn materialize_now(
    state: &AppState,
    conn: &mut AsyncPgConnection,
    ranking: Ranking,
) -> Result<bool, CollectorError> {
    if !has_rows(conn, ranking).await? {
        return Ok(false);
    }
    let _one_at_a_time = state.materializing.lock().await;
    // Another request may have materialised it while this one waited.
    if snapshot::page(conn, ranking, 0, 0).await?.is_none() {
        let total = snapshot::materialize(conn, ranking, state.config.weights).await?;
        tracing::info!(%ranking, total, "materialised a ranking on its first read");
    }
    Ok(true)
}

#[derive(Default, diesel::QueryableByName)]
struct Details {
    #[diesel(sql_type = BigInt)]
    product_id: i64,
    #[diesel(sql_type = Nullable<Text>)]
    name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    brand_name: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    price: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    view_count: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    like_count: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    order_count: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    sales_quantity: Option<i64>,
}

/// Catalog fields and period figures of a page's products, in one query.
async fn details(
    conn: &mut AsyncPgConnection,
    ranking: Ranking,
    ids: &[i64],
) -> Result<HashMap<i64, Details>, diesel::result::Error> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<Details> = diesel::sql_query(format!(
        "SELECT i.product_id, p.name, p.brand_name, p.price, m.view_count, m.like_count,
                m.order_count, m.sales_quantity
           FROM unnest($2::bigint[]) AS i(product_id)
           LEFT JOIN product_catalog p ON p.product_id = i.product_id
           LEFT JOIN ({}) m ON m.product_id = i.product_id",
        ranking.period.figures_sql(Some("ANY($2)"))
    ))
    .bind::<Date, _>(ranking.start)
    .bind::<Array<BigInt>, _>(ids)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|d| (d.product_id, d)).collect())
}

/// A product's rank and score in a ranking.
#[utoipa::path(get, path = "/api/v1/rankings/products/{product_id}", tag = "rankings",
    params(("product_id" = i64, Path, description = "The product"), ProductRankParams),
    responses(
        (status = 200, body = ProductRank),
        (status = 400, description = "`VALIDATION_FAILED`: a malformed id, or a parameter unknown, malformed or out of range", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`SERVICE_UNAVAILABLE`: the database cannot be reached", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn product_rank(
    State(state): State<AppState>,
    Path(product_id): Path<i64>,
    Query(params): Query<ProductRankParams>,
) -> Result<Response, CollectorError> {
    let mut errors = Vec::new();
    let parsed = parse(
        &state,
        Period::ALL,
        params.period.as_deref(),
        params.date.as_deref(),
        &mut errors,
    );
    if parsed.is_some_and(|(period, _)| period == Period::BestSellers) && params.date.is_some() {
        errors.push(FieldError::new(
            "date",
            "must be absent with best_sellers (all time, as of now)",
        ));
    }
    check(errors)?;
    let (period, date) = parsed.expect("checked above");
    let key = format!("product:{}:{date}:{product_id}", period.as_str());
    cached(&state, key, build_rank(&state, period, date, product_id)).await
}

async fn build_rank(
    state: &AppState,
    period: Period,
    date: NaiveDate,
    product_id: i64,
) -> Result<ProductRank, CollectorError> {
    let ranking = Ranking::of(period, date);
    let answer = |source, as_of, total_elements, found: Option<(i64, f64)>| ProductRank {
        product_id,
        period: period.as_str(),
        date,
        from: ranking.start,
        to: shown_end(ranking, date),
        rank: found.map(|f| f.0),
        score: found.map_or(0.0, |f| f.1),
        total_elements,
        source,
        as_of,
    };
    if Ranking::current(state.live.today()).contains(&ranking) {
        match state.live.rank(ranking, product_id).await {
            Ok(Some(live)) => {
                metrics::counter!("ranking_reads_total", "route" => "product", "source" => Source::Live.as_str())
                    .increment(1);
                let found = live.rank.map(|r| (r, live.score));
                return Ok(answer(Source::Live, Utc::now(), live.total, found));
            }
            Ok(None) => fell_back("not_ready", None),
            Err(e) => fell_back("redis_unavailable", Some(&e)),
        }
    }
    let mut conn = state.db.get().await?;
    let mut found = snapshot::rank(&mut conn, ranking, product_id).await?;
    if found.is_none() && materialize_now(state, &mut conn, ranking).await? {
        found = snapshot::rank(&mut conn, ranking, product_id).await?;
    }
    let (taken, found) = found.unwrap_or((
        Taken {
            total: 0,
            at: Utc::now(),
        },
        None,
    ));
    metrics::counter!("ranking_reads_total", "route" => "product", "source" => Source::Snapshot.as_str())
        .increment(1);
    Ok(answer(Source::Snapshot, taken.at, taken.total, found))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MetricsParams {
    /// One business day, `YYYY-MM-DD`; all time when absent.
    date: Option<String>,
}

/// A product's figures.
#[derive(Serialize, ToSchema)]
pub struct ProductMetrics {
    product_id: i64,
    view_count: i64,
    like_count: i64,
    order_count: i64,
    sales_quantity: i64,
    sales_amount: i64,
}

/// The row [`ProductMetrics`] are read from (`product_metrics` or `product_metrics_daily`).
#[derive(diesel::QueryableByName)]
struct MetricsRow {
    #[diesel(sql_type = BigInt)]
    product_id: i64,
    #[diesel(sql_type = BigInt)]
    view_count: i64,
    #[diesel(sql_type = BigInt)]
    like_count: i64,
    #[diesel(sql_type = BigInt)]
    order_count: i64,
    #[diesel(sql_type = BigInt)]
    sales_quantity: i64,
    #[diesel(sql_type = BigInt)]
    sales_amount: i64,
}

impl From<MetricsRow> for ProductMetrics {
    fn from(row: MetricsRow) -> Self {
        Self {
            product_id: row.product_id,
            view_count: row.view_count,
            like_count: row.like_count,
            order_count: row.order_count,
            sales_quantity: row.sales_quantity,
            sales_amount: row.sales_amount,
        }
    }
}

/// A product's figures, all time or for one business day. A product without events has
/// all-zero figures.
#[utoipa::path(get, path = "/api/v1/product-metrics/{product_id}", tag = "metrics",
    params(("product_id" = i64, Path, description = "The product"), MetricsParams),
    responses(
        (status = 200, body = ProductMetrics),
        (status = 400, description = "`VALIDATION_FAILED`: a malformed id or date", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`SERVICE_UNAVAILABLE`: the database cannot be reached", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn product_metrics(
    State(state): State<AppState>,
    Path(product_id): Path<i64>,
    Query(params): Query<MetricsParams>,
) -> ApiResult<ProductMetrics> {
    let columns = "product_id, view_count, like_count, order_count, sales_quantity, sales_amount";
    let day = match params.date.as_deref() {
        None => None,
        Some(raw) => {
            let mut errors = Vec::new();
            let parsed = parse(&state, Period::ALL, None, Some(raw), &mut errors);
            check(errors)?;
            parsed.map(|(_, d)| d)
        }
    };
    let mut conn = state.db.get().await?;
    let found: Option<MetricsRow> = match day {
        None => {
            // The folded totals plus what is not folded yet (crate::fold), in one snapshot.
            diesel::sql_query(
                "SELECT $1 AS product_id, sum(v)::bigint AS view_count, sum(l)::bigint AS like_count,
                        sum(o)::bigint AS order_count, sum(q)::bigint AS sales_quantity,
                        sum(a)::bigint AS sales_amount
                   FROM (SELECT view_count AS v, like_count AS l, order_count AS o,
                                sales_quantity AS q, sales_amount AS a
                           FROM product_metrics WHERE product_id = $1
                         UNION ALL
                         SELECT view_count - folded_views, like_count - folded_likes,
                                order_count - folded_orders, sales_quantity - folded_quantity,
                                sales_amount - folded_amount
                           FROM product_metrics_daily
                          WHERE product_id = $1
                            AND (view_count, like_count, order_count, sales_quantity, sales_amount)
                                <> (folded_views, folded_likes, folded_orders, folded_quantity,
                                    folded_amount)) figures
                 HAVING count(*) > 0",
            )
            .bind::<BigInt, _>(product_id)
            .get_result(&mut conn)
            .await
        }
        Some(date) => {
            diesel::sql_query(format!(
                "SELECT {columns} FROM product_metrics_daily WHERE product_id = $1 AND business_date = $2"
            ))
            .bind::<BigInt, _>(product_id)
            .bind::<Date, _>(date)
            .get_result(&mut conn)
            .await
        }
    }
    .map(Some)
    .or_else(not_found_is_none)?;
    Ok(commerce_web::Json(found.map(Into::into).unwrap_or(
        ProductMetrics {
            product_id,
            view_count: 0,
            like_count: 0,
            order_count: 0,
            sales_quantity: 0,
            sales_amount: 0,
        },
    )))
}
