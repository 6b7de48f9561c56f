//! Rankings materialised whole in PostgreSQL: `ranking_ranks` (every rank of a period) and
//! `ranking_snapshots` (one row per materialised period: its size and when it was taken).
//!
//! A page is a range scan of the primary key `(period, period_start, rank)` and a product's rank
//! one lookup in `(period, period_start, product_id)`: O(log N + page), like the live sets, so
//! this is what serves past periods always and the current ones while Redis cannot.
//!
//! A period is materialised when its day is closed, by the rollup of a week or month, and by the
//! scheduled snapshot job for every period whose figures changed since the job's last run (so a
//! current period's snapshot is at most one job interval old). A past period that has figures
//! but was never materialised (it predates this table) is materialised on its first read.

use chrono::{DateTime, NaiveDate, Utc};
use commerce_db::{Pool, XactLock};
use diesel::sql_types::{BigInt, Date, Nullable, Text, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use super::{Ranking, Weights, score_sql, scored_query};

/// Rewrites every rank of `ranking` from its figures; returns how many products it ranks.
pub async fn materialize(
    conn: &mut AsyncPgConnection,
    ranking: Ranking,
    weights: Weights,
) -> anyhow::Result<i64> {
    conn.transaction::<_, anyhow::Error, _>(async |conn| {
        // Two instances materialising the same period take turns; the second rewrites it again.
        XactLock::named(&format!("ranking-snapshot:{ranking}"))
            .exclusive(conn)
            .await?;
        let period = ranking.period.as_str();
        diesel::sql_query("DELETE FROM ranking_ranks WHERE period = $1 AND period_start = $2")
            .bind::<Text, _>(period)
            .bind::<Date, _>(ranking.start)
            .execute(conn)
            .await?;
        let total = scored_query(
            format!(
                "INSERT INTO ranking_ranks (period, period_start, rank, product_id, score)
                 SELECT $5, $1, row_number() OVER (ORDER BY s.score DESC, s.product_id), s.product_id, s.score
                   FROM ({}) s",
                score_sql(ranking.period, None)
            ),
            ranking,
            weights,
        )
        .bind::<Text, _>(period)
        .execute(conn)
        .await?;
        diesel::sql_query(
            "INSERT INTO ranking_snapshots (period, period_start, total, materialized_at)
             VALUES ($1, $2, $3, now())
             ON CONFLICT (period, period_start) DO UPDATE
                SET total = EXCLUDED.total, materialized_at = EXCLUDED.materialized_at",
        )
        .bind::<Text, _>(period)
        .bind::<Date, _>(ranking.start)
        .bind::<BigInt, _>(total as i64)
        .execute(conn)
        .await?;
        Ok(total as i64)
    })
    .await
}

/// When a ranking was materialised and how many products it ranks.
#[derive(Debug, Clone, Copy)]
pub struct Taken {
    pub total: i64,
    pub at: DateTime<Utc>,
}

/// One ranked product of a snapshot page (catalog fields and figures joined).
#[derive(Debug, diesel::QueryableByName)]
pub struct SnapshotRow {
    #[diesel(sql_type = BigInt)]
    pub total: i64,
    #[diesel(sql_type = Timestamptz)]
    pub materialized_at: DateTime<Utc>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub rank: Option<i64>,
    #[diesel(sql_type = Nullable<BigInt>)]
    pub product_id: Option<i64>,
    #[diesel(sql_type = Nullable<diesel::sql_types::Double>)]
    pub score: Option<f64>,
}

/// Ranks `offset+1 ..= offset+size` of a snapshot, or `None` if the period has none.
pub async fn page(
    conn: &mut AsyncPgConnection,
    ranking: Ranking,
    offset: i64,
    size: i64,
) -> QueryResult<Option<(Taken, Vec<(i64, i64, f64)>)>> {
    let rows: Vec<SnapshotRow> = diesel::sql_query(
        "SELECT s.total, s.materialized_at, r.rank::bigint AS rank, r.product_id, r.score
           FROM ranking_snapshots s
           LEFT JOIN ranking_ranks r
             ON r.period = s.period AND r.period_start = s.period_start
            AND r.rank > $3 AND r.rank <= $4
          WHERE s.period = $1 AND s.period_start = $2
          ORDER BY r.rank",
    )
    .bind::<Text, _>(ranking.period)
    .bind::<Date, _>(ranking.start)
    .bind::<BigInt, _>(offset)
    .bind::<BigInt, _>(offset + size)
    .load(conn)
    .await?;
    let Some(first) = <[SnapshotRow]>::first(&rows) else {
        return Ok(None);
    };
    let taken = Taken {
        total: first.total,
        at: first.materialized_at,
    };
    let entries = rows
        .iter()
        .filter_map(|r| Some((r.rank?, r.product_id?, r.score?)))
        .collect();
    Ok(Some((taken, entries)))
}

/// A product's (rank, score) in a snapshot (`None` inside when unranked), or `None` if the
/// period has no snapshot.
pub async fn rank(
    conn: &mut AsyncPgConnection,
    ranking: Ranking,
    product: i64,
) -> QueryResult<Option<(Taken, Option<(i64, f64)>)>> {
    let row: Option<SnapshotRow> = diesel::sql_query(
        "SELECT s.total, s.materialized_at, r.rank::bigint AS rank, r.product_id, r.score
           FROM ranking_snapshots s
           LEFT JOIN ranking_ranks r
             ON r.period = s.period AND r.period_start = s.period_start AND r.product_id = $3
          WHERE s.period = $1 AND s.period_start = $2",
    )
    .bind::<Text, _>(ranking.period)
    .bind::<Date, _>(ranking.start)
    .bind::<BigInt, _>(product)
    .get_result(conn)
    .await
    .map(Some)
    .or_else(not_found_is_none)?;
    Ok(row.map(|r| {
        (
            Taken {
                total: r.total,
                at: r.materialized_at,
            },
            r.rank.zip(r.score),
        )
    }))
}

pub(crate) fn not_found_is_none<T>(e: diesel::result::Error) -> QueryResult<Option<T>> {
    match e {
        diesel::result::Error::NotFound => Ok(None),
        e => Err(e),
    }
}

type QueryResult<T> = Result<T, diesel::result::Error>;

/// The scheduled snapshot run for `slot`: materialises every ranking (of a day up to `today`)
/// that a day whose figures changed since the previous run belongs to. Once per slot across instances.
pub async fn scheduled_snapshot(
    pool: &Pool,
    weights: Weights,
    today: NaiveDate,
    slot: &str,
) -> anyhow::Result<()> {
    let lease = std::time::Duration::from_secs(300);
    crate::jobs::run(pool, crate::jobs::Job::RankSnapshot, slot, lease, async {
        let mut conn = pool.get().await?;
        #[derive(diesel::QueryableByName)]
        struct Day {
            #[diesel(sql_type = Date)]
            business_date: NaiveDate,
        }
        // Changed since the last finished run started (with a minute of overlap for
        // transactions that committed late); on the first run, the last day.
        let days: Vec<Day> = diesel::sql_query(
            "SELECT DISTINCT business_date FROM product_metrics_daily
              WHERE updated_at >= coalesce(
                      (SELECT max(started_at) FROM scheduled_job_runs
                        WHERE job = $1 AND finished_at IS NOT NULL),
                      now() - interval '1 day') - interval '1 minute'",
        )
        .bind::<diesel::sql_types::Text, _>(crate::jobs::Job::RankSnapshot)
        .load(&mut conn)
        .await?;
        let rankings: std::collections::BTreeSet<Ranking> = days
            .iter()
            .flat_map(|d| Ranking::containing(d.business_date, today))
            .collect();
        for ranking in rankings {
            materialize(&mut conn, ranking, weights).await?;
        }
        Ok(())
    })
    .await
    .map(drop)
}
