//! Rankings: the score, the real-time daily sorted set in Redis, and the ranking API.
//!
//! Score = `w_view·views + w_like·likes + w_order·sales_quantity` (defaults 0.1 / 0.2 / 0.7), over
//! the period's figures; for today's real-time ranking plus the share of yesterday's score
//! carried over at the day change.
//!
//! Redis holds `ranking:daily:{yyyymmdd}` (TTL two days). After each batch commits, the affected
//! products' scores are *recomputed from the database* and set with ZADD (never ZINCRBY), so a
//! lost Redis write heals on the next batch that touches the product, and the whole set can be
//! rebuilt from PostgreSQL. The API reads rankings from PostgreSQL, which is the truth; Redis
//! serves clients that want the live set directly.

use std::collections::BTreeSet;

use axum::extract::State;
use chrono::{Datelike, Duration, NaiveDate, Utc};
use commerce_cache::Cache;
use commerce_web::{FieldError, Path, Problem, Query};

use crate::error::CollectorError;
use diesel::sql_types::{BigInt, Date, Double, Nullable, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::{Deserialize, Serialize};

use crate::state::AppState;

/// Score weights.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Weights {
    pub view: f64,
    pub like: f64,
    pub order: f64,
}

/// Ranking period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Daily,
    Weekly,
    Monthly,
}

impl Period {
    fn parse(s: Option<&str>) -> Result<Self, Problem> {
        match s.unwrap_or("daily") {
            "daily" => Ok(Self::Daily),
            "weekly" => Ok(Self::Weekly),
            "monthly" => Ok(Self::Monthly),
            _ => Err(Problem::validation(vec![FieldError::new(
                "period",
                "must be daily, weekly or monthly",
            )])),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Daily => "daily",
            Self::Weekly => "weekly",
            Self::Monthly => "monthly",
        }
    }

    /// First and last day of the period containing `date`.
    pub fn bounds(self, date: NaiveDate) -> (NaiveDate, NaiveDate) {
        match self {
            Self::Daily => (date, date),
            Self::Weekly => {
                let start = date - Duration::days(i64::from(date.weekday().num_days_from_monday()));
                (start, start + Duration::days(6))
            }
            Self::Monthly => {
                let start = date.with_day(1).expect("day 1 exists");
                let next = if start.month() == 12 {
                    NaiveDate::from_ymd_opt(start.year() + 1, 1, 1)
                } else {
                    NaiveDate::from_ymd_opt(start.year(), start.month() + 1, 1)
                }
                .expect("valid month");
                (start, next - Duration::days(1))
            }
        }
    }

    /// The table and its date column holding this period's figures.
    fn source(self) -> (&'static str, &'static str) {
        match self {
            Self::Daily => ("product_metrics_daily", "business_date"),
            Self::Weekly => ("product_metrics_weekly", "week_start"),
            Self::Monthly => ("product_metrics_monthly", "month_start"),
        }
    }
}

/// The Redis key of a day's real-time ranking.
pub fn daily_key(cache: &Cache, date: NaiveDate) -> String {
    cache.key(&format!("ranking:daily:{}", date.format("%Y%m%d")))
}

#[derive(diesel::QueryableByName)]
struct Scored {
    #[diesel(sql_type = BigInt)]
    product_id: i64,
    #[diesel(sql_type = Double)]
    score: f64,
}

/// Recomputes the scores of `touched` (day, product) pairs from the database and sets them in
/// the days' sorted sets. Only today and yesterday are kept in Redis.
pub async fn refresh_daily(
    conn: &mut AsyncPgConnection,
    cache: &Cache,
    weights: Weights,
    today: NaiveDate,
    touched: &BTreeSet<(NaiveDate, i64)>,
) -> anyhow::Result<()> {
    let days: BTreeSet<NaiveDate> = touched
        .iter()
        .map(|(d, _)| *d)
        .filter(|d| *d == today || *d + Duration::days(1) == today)
        .collect();
    for day in days {
        let products: Vec<i64> = touched
            .iter()
            .filter(|(d, _)| *d == day)
            .map(|(_, p)| *p)
            .collect();
        let scores = daily_scores(conn, weights, day, Some(&products)).await?;
        write_scores(cache, day, &scores, false).await?;
    }
    Ok(())
}

/// Carries `ratio` of `yesterday`'s scores into `today` (stored in the database, so the Redis set
/// can always be rebuilt), then rebuilds today's sorted set. Idempotent.
pub async fn carry_over(
    conn: &mut AsyncPgConnection,
    cache: &Cache,
    weights: Weights,
    yesterday: NaiveDate,
    ratio: f64,
) -> anyhow::Result<()> {
    let today = yesterday + Duration::days(1);
    diesel::sql_query(
        "INSERT INTO ranking_carryover (business_date, product_id, score)
         SELECT $2, product_id, $6 * ($3 * view_count + $4 * like_count + $5 * sales_quantity)
           FROM product_metrics_daily WHERE business_date = $1
         ON CONFLICT (business_date, product_id) DO UPDATE SET score = EXCLUDED.score",
    )
    .bind::<Date, _>(yesterday)
    .bind::<Date, _>(today)
    .bind::<Double, _>(weights.view)
    .bind::<Double, _>(weights.like)
    .bind::<Double, _>(weights.order)
    .bind::<Double, _>(ratio)
    .execute(conn)
    .await?;
    // Products with a carried score but no activity today yet still rank.
    diesel::sql_query(
        "INSERT INTO product_metrics_daily (business_date, product_id)
         SELECT business_date, product_id FROM ranking_carryover WHERE business_date = $1
         ON CONFLICT DO NOTHING",
    )
    .bind::<Date, _>(today)
    .execute(conn)
    .await?;
    rebuild_daily(conn, cache, weights, today).await
}

/// Rebuilds a day's sorted set from the database (at start, and after a carry-over).
pub async fn rebuild_daily(
    conn: &mut AsyncPgConnection,
    cache: &Cache,
    weights: Weights,
    day: NaiveDate,
) -> anyhow::Result<()> {
    let scores = daily_scores(conn, weights, day, None).await?;
    write_scores(cache, day, &scores, true).await
}

/// A day's live scores (figures plus carry-over), for `products` or for every product.
async fn daily_scores(
    conn: &mut AsyncPgConnection,
    weights: Weights,
    day: NaiveDate,
    products: Option<&[i64]>,
) -> anyhow::Result<Vec<Scored>> {
    Ok(diesel::sql_query(
        "SELECT m.product_id,
                ($3 * m.view_count + $4 * m.like_count + $5 * m.sales_quantity
                  + coalesce(c.score, 0))::float8 AS score
           FROM product_metrics_daily m
           LEFT JOIN ranking_carryover c ON c.business_date = m.business_date AND c.product_id = m.product_id
          WHERE m.business_date = $1 AND ($2::bigint[] IS NULL OR m.product_id = ANY($2))",
    )
    .bind::<Date, _>(day)
    .bind::<Nullable<diesel::sql_types::Array<BigInt>>, _>(products)
    .bind::<Double, _>(weights.view)
    .bind::<Double, _>(weights.like)
    .bind::<Double, _>(weights.order)
    .load(conn)
    .await?)
}

/// Sets `scores` in the day's sorted set; `replace` empties the set first (in one MULTI).
/// Plain updates need no MULTI: each ZADD sets an absolute score.
async fn write_scores(
    cache: &Cache,
    day: NaiveDate,
    scores: &[Scored],
    replace: bool,
) -> anyhow::Result<()> {
    if scores.is_empty() && !replace {
        return Ok(());
    }
    let key = daily_key(cache, day);
    let mut redis = cache.conn().await?;
    let mut pipe = redis::pipe();
    if replace {
        // Emptying and refilling must look like one step to readers.
        pipe.atomic().del(&key).ignore();
    }
    for chunk in scores.chunks(1000) {
        let members: Vec<(f64, i64)> = chunk.iter().map(|s| (s.score, s.product_id)).collect();
        pipe.zadd_multiple(&key, &members).ignore();
    }
    pipe.expire(&key, 2 * 24 * 3600).ignore();
    let () = pipe.query_async(&mut redis).await?;
    Ok(())
}

// ---- HTTP -----------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RankingParams {
    period: Option<String>,
    date: Option<String>,
    page: Option<i64>,
    size: Option<i64>,
}

#[derive(Serialize)]
pub struct RankingPage {
    period: &'static str,
    date: NaiveDate,
    from: NaiveDate,
    to: NaiveDate,
    content: Vec<RankedProduct>,
    page: i64,
    size: i64,
    total_elements: i64,
}

#[derive(Serialize, diesel::QueryableByName)]
pub struct RankedProduct {
    #[diesel(sql_type = BigInt)]
    rank: i64,
    #[diesel(sql_type = BigInt)]
    product_id: i64,
    #[diesel(sql_type = Nullable<Text>)]
    name: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    brand_name: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    price: Option<i64>,
    #[diesel(sql_type = Double)]
    score: f64,
    #[diesel(sql_type = BigInt)]
    view_count: i64,
    #[diesel(sql_type = BigInt)]
    like_count: i64,
    #[diesel(sql_type = BigInt)]
    order_count: i64,
    #[diesel(sql_type = BigInt)]
    sales_quantity: i64,
    #[diesel(sql_type = BigInt)]
    #[serde(skip_serializing)]
    total: i64,
}

fn parse_date(state: &AppState, raw: Option<&str>) -> Result<NaiveDate, Problem> {
    match raw {
        None => Ok(crate::apply::business_date(
            Utc::now(),
            state.config.time_zone,
        )),
        Some(s) => NaiveDate::parse_from_str(s, "%Y-%m-%d").map_err(|_| {
            Problem::validation(vec![FieldError::new("date", "must be a date YYYY-MM-DD")])
        }),
    }
}

/// The SQL of a period's ranking: rank, product, catalog fields, score and figures.
fn ranking_sql(period: Period, filter: &str) -> String {
    let (table, column) = period.source();
    let carry = if period == Period::Daily {
        "LEFT JOIN ranking_carryover c ON c.business_date = m.business_date AND c.product_id = m.product_id"
    } else {
        "LEFT JOIN (SELECT NULL::bigint AS product_id, 0::float8 AS score) c ON false"
    };
    format!(
        "WITH ranked AS (
            SELECT m.product_id, m.view_count, m.like_count, m.order_count, m.sales_quantity,
                   ($2 * m.view_count + $3 * m.like_count + $4 * m.sales_quantity + coalesce(c.score, 0))::float8 AS score
              FROM {table} m {carry}
             WHERE m.{column} = $1),
         numbered AS (
            SELECT r.*, row_number() OVER (ORDER BY r.score DESC, r.product_id) AS rank,
                   count(*) OVER () AS total
              FROM ranked r)
         SELECT n.rank, n.product_id, p.name, p.brand_name, p.price, n.score, n.view_count,
                n.like_count, n.order_count, n.sales_quantity, n.total
           FROM numbered n LEFT JOIN product_catalog p ON p.product_id = n.product_id
          {filter}
          ORDER BY n.rank"
    )
}

/// `GET /api/v1/rankings`.
pub async fn rankings(
    State(state): State<AppState>,
    Query(params): Query<RankingParams>,
) -> Result<commerce_web::Json<RankingPage>, CollectorError> {
    let period = Period::parse(params.period.as_deref())?;
    let date = parse_date(&state, params.date.as_deref())?;
    let page = params.page.unwrap_or(0);
    let size = params.size.unwrap_or(20);
    if !(0..=10_000).contains(&page) || !(1..=100).contains(&size) {
        return Err(Problem::validation(vec![FieldError::new(
            "page/size",
            "page must be 0..=10000 and size 1..=100",
        )])
        .into());
    }
    let (from, to) = period.bounds(date);
    let w = state.config.weights;
    let mut conn = state.db.get().await?;
    let rows: Vec<RankedProduct> =
        diesel::sql_query(ranking_sql(period, "WHERE n.rank > $5 AND n.rank <= $6"))
            .bind::<Date, _>(from)
            .bind::<Double, _>(w.view)
            .bind::<Double, _>(w.like)
            .bind::<Double, _>(w.order)
            .bind::<BigInt, _>(page * size)
            .bind::<BigInt, _>((page + 1) * size)
            .load(&mut conn)
            .await?;
    let total_elements = match <[RankedProduct]>::first(&rows) {
        Some(r) => r.total,
        None => count_ranked(&mut conn, period, from).await?,
    };
    Ok(commerce_web::Json(RankingPage {
        period: period.as_str(),
        date,
        from,
        to,
        content: rows,
        page,
        size,
        total_elements,
    }))
}

async fn count_ranked(
    conn: &mut AsyncPgConnection,
    period: Period,
    from: NaiveDate,
) -> QueryResultI64 {
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let (table, column) = period.source();
    let n: N = diesel::sql_query(format!(
        "SELECT count(*) AS n FROM {table} WHERE {column} = $1"
    ))
    .bind::<Date, _>(from)
    .get_result(conn)
    .await?;
    Ok(n.n)
}

type QueryResultI64 = Result<i64, diesel::result::Error>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProductRankParams {
    period: Option<String>,
    date: Option<String>,
}

#[derive(Serialize)]
pub struct ProductRank {
    product_id: i64,
    period: &'static str,
    date: NaiveDate,
    rank: Option<i64>,
    score: f64,
}

/// `GET /api/v1/rankings/products/{product_id}`.
pub async fn product_rank(
    State(state): State<AppState>,
    Path(product_id): Path<i64>,
    Query(params): Query<ProductRankParams>,
) -> Result<commerce_web::Json<ProductRank>, CollectorError> {
    let period = Period::parse(params.period.as_deref())?;
    let date = parse_date(&state, params.date.as_deref())?;
    let (from, _) = period.bounds(date);
    let w = state.config.weights;
    let mut conn = state.db.get().await?;
    let row: Option<RankedProduct> =
        diesel::sql_query(ranking_sql(period, "WHERE n.product_id = $5"))
            .bind::<Date, _>(from)
            .bind::<Double, _>(w.view)
            .bind::<Double, _>(w.like)
            .bind::<Double, _>(w.order)
            .bind::<BigInt, _>(product_id)
            .get_result(&mut conn)
            .await
            .map(Some)
            .or_else(|e| match e {
                diesel::result::Error::NotFound => Ok(None),
                e => Err(e),
            })?;
    Ok(commerce_web::Json(ProductRank {
        product_id,
        period: period.as_str(),
        date,
        rank: row.as_ref().map(|r| r.rank),
        score: row.map_or(0.0, |r| r.score),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsParams {
    date: Option<String>,
}

#[derive(Serialize, diesel::QueryableByName)]
pub struct ProductMetrics {
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

/// `GET /api/v1/product-metrics/{product_id}` (all time, or one business day with `?date=`).
/// A product without events has all-zero figures.
pub async fn product_metrics(
    State(state): State<AppState>,
    Path(product_id): Path<i64>,
    Query(params): Query<MetricsParams>,
) -> Result<commerce_web::Json<ProductMetrics>, CollectorError> {
    let mut conn = state.db.get().await?;
    let columns = "product_id, view_count, like_count, order_count, sales_quantity, sales_amount";
    let found: Option<ProductMetrics> = match params.date.as_deref() {
        None => diesel::sql_query(format!("SELECT {columns} FROM product_metrics WHERE product_id = $1"))
            .bind::<BigInt, _>(product_id)
            .get_result(&mut conn)
            .await,
        Some(raw) => {
            let date = parse_date(&state, Some(raw))?;
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
    .or_else(|e| match e {
        diesel::result::Error::NotFound => Ok(None),
        e => Err(e),
    })?;
    Ok(commerce_web::Json(found.unwrap_or(ProductMetrics {
        product_id,
        view_count: 0,
        like_count: 0,
        order_count: 0,
        sales_quantity: 0,
        sales_amount: 0,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_iso_weeks_and_calendar_months() {
        let d = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap(); // a Saturday
        assert_eq!(
            Period::Weekly.bounds(d),
            (
                NaiveDate::from_ymd_opt(2026, 11, 16).unwrap(),
                NaiveDate::from_ymd_opt(2026, 11, 22).unwrap()
            )
        );
        assert_eq!(
            Period::Monthly.bounds(NaiveDate::from_ymd_opt(2026, 12, 9).unwrap()),
            (
                NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(),
                NaiveDate::from_ymd_opt(2026, 12, 31).unwrap()
            )
        );
    }
}
