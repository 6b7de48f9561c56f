//! Rankings: the definition, and the three places a ranking is read from.
//!
//! **Definition.** A product's popularity score in a period (a day, a rolling three days, a
//! week, a month) is `w_view·views + w_like·likes + w_order·sales_quantity` over the period's
//! figures (defaults 0.1 / 0.2 / 0.7), plus, for a day, the share of the previous day's score
//! carried over at the day change. The best sellers are scored by their all-time sales
//! quantity, and rank only products that sold. Products are ordered by score descending, then
//! product id ascending, and ranked 1..N without gaps. Every score is computed by PostgreSQL
//! with [`score_sql`], so every copy of a ranking holds bit-for-bit the same floating-point
//! scores and orders ties the same way.
//!
//! **Where a ranking is read** (design and sizes: `docs/rankings.md`):
//! - [`live`]: the current day, three days, week and month and the best sellers, as Redis
//!   sorted sets kept within a second of the applied events and rebuilt from PostgreSQL by the
//!   collector whenever Redis lost them;
//! - [`snapshot`]: every period materialised whole in PostgreSQL (`ranking_ranks`): past
//!   periods always, the current ones while Redis cannot serve them;
//! - [`http`]: the ranking API, which picks between the two per request.
//!
//! PostgreSQL is the truth: the figure tables (`product_metrics_daily`, kept live by each batch,
//! and `_weekly/_monthly`, folded from it within `COLLECTOR_FOLD_INTERVAL_MS`: [`crate::fold`])
//! and the carry-over. Both copies are derived from them and can be
//! thrown away.

pub mod http;
pub mod live;
pub mod snapshot;

use chrono::{Datelike, Duration, NaiveDate};
use diesel::pg::Pg;
use diesel::query_builder::{BoxedSqlQuery, SqlQuery};
use diesel::sql_types::{Date, Double};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

/// The business date of an instant: the day it belongs to in the business time zone.
pub fn business_date(at: chrono::DateTime<chrono::Utc>, tz: chrono_tz::Tz) -> NaiveDate {
    at.with_timezone(&tz).date_naive()
}

/// Score weights.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Weights {
    pub view: f64,
    pub like: f64,
    pub order: f64,
}

commerce_enums::text_enum! {
    sql;
    /// Ranking period (`ranking_ranks.period`, `ranking_snapshots.period`, `?period=`).
    #[derive(PartialOrd, Ord)]
    pub enum Period {
        Daily => "daily",
        /// The day and the two before it: the window ending on the date.
        ThreeDay => "three_day",
        Weekly => "weekly",
        Monthly => "monthly",
        /// All time, by sales quantity (`/api/v1/rankings/best-sellers`).
        BestSellers => "best_sellers",
    }
}

/// The first day of the best sellers' "period" (all time): where their ranking is filed.
pub const ALL_TIME_START: NaiveDate = NaiveDate::from_ymd_opt(2000, 1, 1).expect("a valid date");

impl Period {
    /// The popularity periods: what `/api/v1/rankings?period=` accepts.
    pub const POPULARITY: [Period; 4] = [
        Period::Daily,
        Period::ThreeDay,
        Period::Weekly,
        Period::Monthly,
    ];

    /// First and last day of the period of `date`: the one containing it, or for the rolling
    /// three days the one ending on it.
    pub fn bounds(self, date: NaiveDate) -> (NaiveDate, NaiveDate) {
        match self {
            Self::Daily => (date, date),
            Self::ThreeDay => (date - Duration::days(2), date),
            Self::BestSellers => (ALL_TIME_START, date),
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

    /// The SQL of the period's figures per product, binding `$1` = the period's start: columns
    /// `product_id`, `view_count`, `like_count`, `order_count`, `sales_quantity`,
    /// `sales_amount`. With `filter` (say `ANY($5)`), only the products matching
    /// `product_id = {filter}`. The one place each period's figures are defined.
    pub fn figures_sql(self, filter: Option<&str>) -> String {
        let only = |column: &str| filter.map_or(String::new(), |f| format!(" AND {column} = {f}"));
        let table = |table: &str, column: &str| {
            format!(
                "SELECT product_id, view_count, like_count, order_count, sales_quantity, sales_amount
                   FROM {table} WHERE {column} = $1{}",
                only("product_id")
            )
        };
        match self {
            Self::Daily => table("product_metrics_daily", "business_date"),
            Self::Weekly => table("product_metrics_weekly", "week_start"),
            Self::Monthly => table("product_metrics_monthly", "month_start"),
            // The days listed, not a range: with a product filter, each (day, product) is then
            // one lookup in the primary key, where a range scans every product of the days.
            Self::ThreeDay => format!(
                "SELECT product_id, sum(view_count)::bigint AS view_count,
                        sum(like_count)::bigint AS like_count, sum(order_count)::bigint AS order_count,
                        sum(sales_quantity)::bigint AS sales_quantity,
                        sum(sales_amount)::bigint AS sales_amount
                   FROM product_metrics_daily
                  WHERE business_date IN ($1, $1 + 1, $1 + 2){}
                  GROUP BY product_id",
                only("product_id")
            ),
            // The folded all-time totals plus what the fold has not reached yet
            // (`crate::fold`), in one snapshot: exact, as the batches left them.
            Self::BestSellers => format!(
                "SELECT product_id, sum(v)::bigint AS view_count, sum(l)::bigint AS like_count,
                        sum(o)::bigint AS order_count, sum(q)::bigint AS sales_quantity,
                        sum(a)::bigint AS sales_amount
                   FROM (SELECT product_id, view_count AS v, like_count AS l, order_count AS o,
                                sales_quantity AS q, sales_amount AS a
                           FROM product_metrics WHERE true{}
                         UNION ALL
                         SELECT product_id, view_count - folded_views, like_count - folded_likes,
                                order_count - folded_orders, sales_quantity - folded_quantity,
                                sales_amount - folded_amount
                           FROM product_metrics_daily
                          WHERE (view_count, like_count, order_count, sales_quantity, sales_amount)
                                <> (folded_views, folded_likes, folded_orders, folded_quantity,
                                    folded_amount){}) figures
                  GROUP BY product_id",
                only("product_id"),
                only("product_id")
            ),
        }
    }
}

/// One ranking: a period and its first day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ranking {
    pub period: Period,
    pub start: NaiveDate,
}

impl Ranking {
    /// The ranking of `period` containing `date`.
    pub fn of(period: Period, date: NaiveDate) -> Self {
        Self {
            period,
            start: period.bounds(date).0,
        }
    }

    /// The rankings of `today`: the live ones.
    pub fn current(today: NaiveDate) -> [Ranking; 5] {
        [
            Period::Daily,
            Period::ThreeDay,
            Period::Weekly,
            Period::Monthly,
            Period::BestSellers,
        ]
        .map(|p| Ranking::of(p, today))
    }

    /// The rankings of a day up to `today` that a change to `day`'s figures moves.
    pub fn containing(day: NaiveDate, today: NaiveDate) -> Vec<Ranking> {
        let mut out: Vec<Ranking> = Ranking::current(day).into();
        out.extend(
            (1..=2)
                .map(|n| day + Duration::days(n))
                .filter(|end| *end <= today)
                .map(|end| Ranking::of(Period::ThreeDay, end)),
        );
        out
    }

    /// The last day of the ranking's period (the best sellers': none, so the latest date).
    pub fn end(self) -> NaiveDate {
        match self.period {
            Period::ThreeDay => self.start + Duration::days(2),
            Period::BestSellers => NaiveDate::MAX,
            period => period.bounds(self.start).1,
        }
    }
}

impl std::fmt::Display for Ranking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.period.as_str(), self.start)
    }
}

/// The SQL of a ranking's scored products, binding `$1` = period start and `$2..$4` = the
/// weights: columns `product_id` and `score`, in no order. With `filter` (say `ANY($5)`), only
/// the products matching `product_id = {filter}`. The daily ranking adds its carry-over; the
/// best sellers are their sales quantity, and only products that sold. The one place the score
/// is written down.
pub fn score_sql(period: Period, filter: Option<&str>) -> String {
    let figures = period.figures_sql(filter);
    match period {
        Period::Daily => format!(
            "SELECT m.product_id,
                    ($2 * m.view_count + $3 * m.like_count + $4 * m.sales_quantity
                     + coalesce(c.score, 0))::float8 AS score
               FROM ({figures}) m
               LEFT JOIN ranking_carryover c ON c.business_date = $1 AND c.product_id = m.product_id"
        ),
        Period::ThreeDay | Period::Weekly | Period::Monthly => format!(
            "SELECT m.product_id,
                    ($2 * m.view_count + $3 * m.like_count + $4 * m.sales_quantity)::float8 AS score
               FROM ({figures}) m"
        ),
        Period::BestSellers => format!(
            "SELECT m.product_id, m.sales_quantity::float8 AS score
               FROM ({figures}) m WHERE m.sales_quantity > 0"
        ),
    }
}

/// A query over [`score_sql`] with its first four parameters bound.
pub type ScoredQuery = BoxedSqlQuery<'static, Pg, SqlQuery>;

/// `sql` (which embeds [`score_sql`]) with the ranking's start and the weights bound as `$1..$4`;
/// further parameters start at `$5`.
pub fn scored_query(sql: String, ranking: Ranking, w: Weights) -> ScoredQuery {
    diesel::sql_query(sql)
        .into_boxed()
        .bind::<Date, _>(ranking.start)
        .bind::<Double, _>(w.view)
        .bind::<Double, _>(w.like)
        .bind::<Double, _>(w.order)
}

/// Whether the ranking has any figures at all.
pub async fn has_rows(conn: &mut AsyncPgConnection, ranking: Ranking) -> QueryResult<bool> {
    #[derive(diesel::QueryableByName)]
    struct Found {
        #[diesel(sql_type = diesel::sql_types::Bool)]
        found: bool,
    }
    let found: Found = scored_query(
        format!(
            "SELECT EXISTS ({}) AS found",
            score_sql(ranking.period, None)
        ),
        ranking,
        // Any weights: only whether there are rows matters.
        Weights {
            view: 0.0,
            like: 0.0,
            order: 0.0,
        },
    )
    .get_result(conn)
    .await?;
    Ok(found.found)
}

type QueryResult<T> = Result<T, diesel::result::Error>;

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
