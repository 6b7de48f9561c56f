//! Rankings: the definition, and the three places a ranking is read from.
//!
//! **Definition.** A product's score in a period is
//! `w_view·views + w_like·likes + w_order·sales_quantity` over the period's figures (defaults
//! 0.1 / 0.2 / 0.7), plus, for a day, the share of the previous day's score carried over at the
//! day change. Products are ordered by score descending, then product id ascending, and ranked
//! 1..N without gaps. Every score is computed by PostgreSQL with [`score_sql`], so every copy of
//! a ranking holds bit-for-bit the same floating-point scores and orders ties the same way.
//!
//! **Where a ranking is read** (design and sizes: `docs/rankings.md`):
//! - [`live`]: the current day, week and month, as Redis sorted sets kept within a second of
//!   the applied events and rebuilt from PostgreSQL by the collector whenever Redis lost them;
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
        Weekly => "weekly",
        Monthly => "monthly",
    }
}

impl Period {
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
    pub fn source(self) -> (&'static str, &'static str) {
        match self {
            Self::Daily => ("product_metrics_daily", "business_date"),
            Self::Weekly => ("product_metrics_weekly", "week_start"),
            Self::Monthly => ("product_metrics_monthly", "month_start"),
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

    /// The three rankings that contain `today`: the live ones.
    pub fn current(today: NaiveDate) -> [Ranking; 3] {
        [Period::Daily, Period::Weekly, Period::Monthly].map(|p| Ranking::of(p, today))
    }

    /// The rankings a change to `day`'s figures moves.
    pub fn containing(day: NaiveDate) -> [Ranking; 3] {
        Self::current(day)
    }

    pub fn end(self) -> NaiveDate {
        self.period.bounds(self.start).1
    }
}

impl std::fmt::Display for Ranking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.period.as_str(), self.start)
    }
}

/// `FROM … WHERE` of a ranking's scored rows, binding `$1` = period start and `$2..$4` = the
/// weights: columns `m.*` of the figure table and `score`. The daily ranking adds its
/// carry-over. The one place the score is written down.
pub fn score_sql(period: Period) -> String {
    let (table, column) = period.source();
    let (carry, carried) = if period == Period::Daily {
        (
            "LEFT JOIN ranking_carryover c ON c.business_date = m.business_date AND c.product_id = m.product_id",
            " + coalesce(c.score, 0)",
        )
    } else {
        ("", "")
    };
    format!(
        "($2 * m.view_count + $3 * m.like_count + $4 * m.sales_quantity{carried})::float8 AS score
           FROM {table} m {carry}
          WHERE m.{column} = $1"
    )
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
    let (table, column) = ranking.period.source();
    let found: Found = diesel::sql_query(format!(
        "SELECT EXISTS (SELECT 1 FROM {table} WHERE {column} = $1) AS found"
    ))
    .bind::<Date, _>(ranking.start)
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
