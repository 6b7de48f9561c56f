//! Weekly and monthly rollups from the daily table, and the scheduled jobs.
//!
//! The fold keeps the weekly and monthly figures within about a second of the daily rows
//! ([`crate::fold`]: it adds each day row's unfolded difference and records it as folded); a
//! rollup of a period recomputes them whole from the daily rows' *folded* figures with one
//! set-based statement (`MERGE … USING (SELECT … GROUP BY)` setting absolute values), so it is a
//! reconciliation (and the backfill of periods older than the live tables), idempotent, leaves
//! what is not folded yet to the fold, and then materialises the period's ranks. It holds
//! [`PERIOD_LOCK`] exclusively, which batches and folds take shared: it never overwrites a
//! difference folded while it ran. The scheduled job only touches the periods containing days
//! whose figures changed since its last run.
//!
//! With several collectors, each scheduled run happens once, and a failed or crashed run is
//! retried ([`crate::jobs`]).

use std::collections::BTreeSet;

use anyhow::Context as _;
use chrono::{Duration, NaiveDate, Utc};
use commerce_db::Pool;
use diesel::sql_types::{Date, Double, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::config::Config;
use crate::ranking::live::Live;
use crate::ranking::{Period, Ranking, Weights, snapshot};

use crate::apply::PERIOD_LOCK;
use crate::jobs;

/// Recomputes one week or month (`start` is its first day) and materialises its ranks.
pub async fn rollup_period(
    conn: &mut AsyncPgConnection,
    period: Period,
    start: NaiveDate,
    weights: Weights,
) -> anyhow::Result<()> {
    let (from, to) = period.bounds(start);
    let (table, column) = match period {
        Period::Weekly => ("product_metrics_weekly", "week_start"),
        Period::Monthly => ("product_metrics_monthly", "month_start"),
        Period::Daily | Period::ThreeDay | Period::BestSellers => {
            anyhow::bail!("only weeks and months are rolled up")
        }
    };
    conn.transaction::<_, anyhow::Error, _>(async |conn| {
        PERIOD_LOCK.exclusive(conn).await?;
        // A MERGE joins the period's sums with its existing rows in one pass (a hash join), where
        // an upsert probes the unique index row by row: a re-run that changes nothing costs
        // about the GROUP BY alone.
        diesel::sql_query(format!(
            "MERGE INTO {table} AS r
             USING (SELECT product_id, sum(folded_views) AS v, sum(folded_likes) AS l,
                           sum(folded_orders) AS o, sum(folded_quantity) AS q,
                           sum(folded_amount) AS a
                      FROM product_metrics_daily
                     WHERE business_date BETWEEN $1 AND $2
                     GROUP BY product_id) AS s
                ON r.{column} = $1 AND r.product_id = s.product_id
             WHEN MATCHED AND (r.view_count, r.like_count, r.order_count, r.sales_quantity, r.sales_amount)
                              IS DISTINCT FROM (s.v, s.l, s.o, s.q, s.a) THEN
                 UPDATE SET view_count = s.v, like_count = s.l, order_count = s.o,
                            sales_quantity = s.q, sales_amount = s.a
             WHEN NOT MATCHED THEN
                 INSERT ({column}, product_id, view_count, like_count, order_count, sales_quantity, sales_amount)
                 VALUES ($1, s.product_id, s.v, s.l, s.o, s.q, s.a)"
        ))
        .bind::<Date, _>(from)
        .bind::<Date, _>(to)
        .execute(conn)
        .await?;
        anyhow::Ok(())
    })
    .await?;
    snapshot::materialize(
        conn,
        Ranking {
            period,
            start: from,
        },
        weights,
    )
    .await?;
    Ok(())
}

/// The weeks and months containing `days`.
pub fn periods_of(days: impl IntoIterator<Item = NaiveDate>) -> BTreeSet<(u8, NaiveDate)> {
    let mut out = BTreeSet::new();
    for d in days {
        out.insert((0, Period::Weekly.bounds(d).0));
        out.insert((1, Period::Monthly.bounds(d).0));
    }
    out
}

/// Rebuilds every week and month touching `from..=to`; `progress` is called after each.
pub async fn rollup_range(
    conn: &mut AsyncPgConnection,
    from: NaiveDate,
    to: NaiveDate,
    weights: Weights,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<usize> {
    anyhow::ensure!(from <= to, "--from must not be after --to");
    let days = from.iter_days().take_while(|d| *d <= to);
    let periods = periods_of(days);
    let total = periods.len();
    for (i, (kind, start)) in periods.into_iter().enumerate() {
        let period = if kind == 0 {
            Period::Weekly
        } else {
            Period::Monthly
        };
        rollup_period(conn, period, start, weights).await?;
        progress(i + 1, total);
    }
    Ok(total)
}

/// One run of the incremental rollup: the periods of days changed since the last run.
pub async fn scheduled_rollup(pool: &Pool, weights: Weights, slot: &str) -> anyhow::Result<()> {
    jobs::run(pool, jobs::Job::Rollup, slot, jobs::LEASE, async {
        let mut conn = pool.get().await?;
        #[derive(diesel::QueryableByName)]
        struct Since {
            #[diesel(sql_type = diesel::sql_types::Nullable<Timestamptz>)]
            at: Option<chrono::DateTime<Utc>>,
        }
        let since: Since = diesel::sql_query(
            "SELECT max(started_at) AS at FROM scheduled_job_runs
              WHERE job = $1 AND finished_at IS NOT NULL",
        )
        .bind::<diesel::sql_types::Text, _>(jobs::Job::Rollup)
        .get_result(&mut conn)
        .await?;
        #[derive(diesel::QueryableByName)]
        struct Day {
            #[diesel(sql_type = Date)]
            business_date: NaiveDate,
        }
        let since = since.at.unwrap_or(chrono::DateTime::<Utc>::UNIX_EPOCH);
        let days: Vec<Day> = diesel::sql_query(
            "SELECT DISTINCT business_date FROM product_metrics_daily WHERE updated_at >= $1 - interval '1 minute'",
        )
        .bind::<Timestamptz, _>(since)
        .load(&mut conn)
        .await?;
        for (kind, start) in periods_of(days.into_iter().map(|d| d.business_date)) {
            let period = if kind == 0 {
                Period::Weekly
            } else {
                Period::Monthly
            };
            rollup_period(&mut conn, period, start, weights).await?;
        }
        Ok(())
    })
    .await
    .map(drop)
}

/// Closes yesterday: materialises its day's and its three days' ranks and carries its scores into today. Once per
/// business day.
pub async fn close_day(
    pool: &Pool,
    live: &Live,
    config: &Config,
    today: NaiveDate,
) -> anyhow::Result<()> {
    let yesterday = today - Duration::days(1);
    let ran = jobs::run(
        pool,
        jobs::Job::CloseDay,
        &yesterday.to_string(),
        jobs::LEASE,
        async {
            let mut conn = pool.get().await?;
            for period in [Period::Daily, Period::ThreeDay] {
                snapshot::materialize(&mut conn, Ranking::of(period, yesterday), config.weights)
                    .await?;
            }
            carry_over(&mut conn, config.weights, yesterday, config.carryover_ratio).await?;
            // Today's live set gains the carried scores at the refresher's next check.
            live.invalidate();
            Ok(())
        },
    )
    .await?;
    if ran {
        tracing::info!(%yesterday, "business day closed");
    }
    Ok(())
}

/// Carries `ratio` of `yesterday`'s scores into the next day (kept in the database, so every
/// copy of the ranking can be rebuilt). Idempotent.
pub async fn carry_over(
    conn: &mut AsyncPgConnection,
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
    Ok(())
}

/// Starts the scheduled jobs: the incremental rollup on `ROLLUP_CRON`, the ranking snapshots on
/// `RANKING_SNAPSHOT_CRON`, and the day close checked
/// every minute (it runs once, right after midnight in the business time zone).
pub async fn start_scheduler(
    config: Config,
    pool: Pool,
    live: Live,
) -> anyhow::Result<JobScheduler> {
    jobs::describe();
    let scheduler = JobScheduler::new()
        .await
        .context("creating the scheduler")?;
    let (p, w) = (pool.clone(), config.weights);
    scheduler
        .add(Job::new_async(config.rollup_cron.as_str(), move |_, _| {
            let pool = p.clone();
            Box::pin(async move {
                let slot = Utc::now().format("%Y-%m-%dT%H:%M").to_string();
                if let Err(e) = scheduled_rollup(&pool, w, &slot).await {
                    tracing::warn!(error = %format!("{e:#}"), "scheduled rollup failed");
                }
            })
        })?)
        .await?;
    let (p, w, tz) = (pool.clone(), config.weights, config.time_zone);
    scheduler
        .add(Job::new_async(
            config.ranking_snapshot_cron.as_str(),
            move |_, _| {
                let pool = p.clone();
                Box::pin(async move {
                    let now = Utc::now();
                    let slot = now.format("%Y-%m-%dT%H:%M:%S").to_string();
                    let today = crate::ranking::business_date(now, tz);
                    if let Err(e) = snapshot::scheduled_snapshot(&pool, w, today, &slot).await {
                        tracing::warn!(error = %format!("{e:#}"), "scheduled ranking snapshot failed");
                    }
                })
            },
        )?)
        .await?;
    scheduler
        .add(Job::new_async("0 * * * * *", move |_, _| {
            let (pool, live, config) = (pool.clone(), live.clone(), config.clone());
            Box::pin(async move {
                let today = crate::ranking::business_date(Utc::now(), config.time_zone);
                if let Err(e) = close_day(&pool, &live, &config, today).await {
                    tracing::warn!(error = %format!("{e:#}"), "closing the business day failed");
                }
                let horizon = crate::dedupe::Horizon::hours(config.event_handled_retention_hours);
                if let Err(e) = crate::dedupe::prune(&pool, horizon, today).await {
                    tracing::warn!(error = %format!("{e:#}"), "pruning event_handled failed");
                }
            })
        })?)
        .await?;
    scheduler.start().await?;
    Ok(scheduler)
}
