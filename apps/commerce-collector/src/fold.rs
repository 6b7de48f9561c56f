//! Folding the daily figures into the all-time, weekly and monthly ones.
//!
//! A batch writes only the daily rows (with its dedupe rows, in one statement): upserting the
//! same products' all-time, week and month rows in every batch halved what ingest could reach
//! (BENCHMARKS.md, "Ingest"). Instead, about once a second (`COLLECTOR_FOLD_INTERVAL_MS`), one
//! collector adds what changed in the daily rows since the last fold to the three other tables.
//!
//! **Exactly once.** Each daily row records how much of it has been folded (`folded_*`). A fold
//! reads the rows whose figures differ from their folded ones (a partial index holds just those),
//! adds each difference to the all-time, week and month rows *and* to the row's `folded_*`
//! columns, in one statement and so one transaction: a change is folded with its record of being
//! folded, or not at all. Only a fold writes `folded_*`, and folds take turns ([`FOLD_LOCK`]), so
//! the difference a fold adds is the one it records whichever batch committed meanwhile; what a
//! batch adds after the fold read the row is left for the next fold.
//!
//! **Waiting.** The fold skips the daily rows a batch holds (they are folded next time), and only
//! folds write the all-time, week and month rows, so a fold never waits for a row lock and never
//! deadlocks with a batch. It takes [`PERIOD_LOCK`] shared: a rollup (exclusive) recomputes a
//! week or month from the folded figures with no fold in between.
//!
//! **Reads.** The all-time figures a client reads (`GET /api/v1/product-metrics/{id}`) are the
//! folded totals plus the product's unfolded differences, in one statement: exact, as a batch
//! left them. The week and month rankings follow the fold.
//!
//! **Live rankings.** The collector that folded re-reads the folded products' week and month
//! scores into Redis ([`Live::mark_folded`]); the day's ranking is refreshed after each batch.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use commerce_db::Pool;
use diesel::sql_types::{BigInt, Date};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tokio::sync::watch;

use crate::apply::PERIOD_LOCK;
use crate::ranking::live::Live;

/// Held by the fold in progress, so folds on several collectors take turns.
pub const FOLD_LOCK: commerce_db::XactLock =
    commerce_db::XactLock::named("commerce-collector:fold");

/// Daily rows folded per transaction.
const ROWS_PER_FOLD: i64 = 20_000;

/// The pending rows' differences: read, recorded as folded, and added to the three tables.
const FOLD_SQL: &str = "
WITH pending AS (
    SELECT business_date AS day, product_id,
           view_count - folded_views AS v, like_count - folded_likes AS l,
           order_count - folded_orders AS o, sales_quantity - folded_quantity AS q,
           sales_amount - folded_amount AS a
      FROM product_metrics_daily
     WHERE (view_count, like_count, order_count, sales_quantity, sales_amount)
           <> (folded_views, folded_likes, folded_orders, folded_quantity, folded_amount)
     ORDER BY product_id, business_date
     LIMIT $1
       FOR UPDATE SKIP LOCKED
),
recorded AS (
    UPDATE product_metrics_daily d
       SET folded_views = d.folded_views + p.v, folded_likes = d.folded_likes + p.l,
           folded_orders = d.folded_orders + p.o, folded_quantity = d.folded_quantity + p.q,
           folded_amount = d.folded_amount + p.a
      FROM pending p
     WHERE d.business_date = p.day AND d.product_id = p.product_id
),
totals AS (
    INSERT INTO product_metrics AS m
           (product_id, view_count, like_count, order_count, sales_quantity, sales_amount)
    SELECT product_id, sum(v), sum(l), sum(o), sum(q), sum(a) FROM pending
     GROUP BY 1 ORDER BY 1
    ON CONFLICT (product_id) DO UPDATE SET
        view_count = m.view_count + EXCLUDED.view_count,
        like_count = m.like_count + EXCLUDED.like_count,
        order_count = m.order_count + EXCLUDED.order_count,
        sales_quantity = m.sales_quantity + EXCLUDED.sales_quantity,
        sales_amount = m.sales_amount + EXCLUDED.sales_amount,
        updated_at = now()
),
weekly AS (
    INSERT INTO product_metrics_weekly AS m
           (week_start, product_id, view_count, like_count, order_count, sales_quantity, sales_amount)
    SELECT date_trunc('week', day)::date, product_id, sum(v), sum(l), sum(o), sum(q), sum(a)
      FROM pending GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (week_start, product_id) DO UPDATE SET
        view_count = m.view_count + EXCLUDED.view_count,
        like_count = m.like_count + EXCLUDED.like_count,
        order_count = m.order_count + EXCLUDED.order_count,
        sales_quantity = m.sales_quantity + EXCLUDED.sales_quantity,
        sales_amount = m.sales_amount + EXCLUDED.sales_amount
),
monthly AS (
    INSERT INTO product_metrics_monthly AS m
           (month_start, product_id, view_count, like_count, order_count, sales_quantity, sales_amount)
    SELECT date_trunc('month', day)::date, product_id, sum(v), sum(l), sum(o), sum(q), sum(a)
      FROM pending GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (month_start, product_id) DO UPDATE SET
        view_count = m.view_count + EXCLUDED.view_count,
        like_count = m.like_count + EXCLUDED.like_count,
        order_count = m.order_count + EXCLUDED.order_count,
        sales_quantity = m.sales_quantity + EXCLUDED.sales_quantity,
        sales_amount = m.sales_amount + EXCLUDED.sales_amount
)
SELECT day, product_id FROM pending";

#[derive(diesel::QueryableByName)]
struct Row {
    #[diesel(sql_type = Date)]
    day: NaiveDate,
    #[diesel(sql_type = BigInt)]
    product_id: i64,
}

/// Folds up to [`ROWS_PER_FOLD`] pending rows in the caller's transaction, which holds
/// [`PERIOD_LOCK`] and is the only fold running. Returns the (day, product) pairs folded.
pub(crate) async fn fold_some(
    conn: &mut AsyncPgConnection,
) -> anyhow::Result<Vec<(NaiveDate, i64)>> {
    let rows: Vec<Row> = diesel::sql_query(FOLD_SQL)
        .bind::<BigInt, _>(ROWS_PER_FOLD)
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|r| (r.day, r.product_id)).collect())
}

/// Folds everything pending, one transaction per [`ROWS_PER_FOLD`] rows. Returns the (day,
/// product) pairs folded, or `None` when another collector is folding.
pub async fn fold(
    conn: &mut AsyncPgConnection,
) -> anyhow::Result<Option<BTreeSet<(NaiveDate, i64)>>> {
    let mut folded = BTreeSet::new();
    loop {
        let some = conn
            .transaction::<_, anyhow::Error, _>(async |conn| {
                if !FOLD_LOCK.try_exclusive(conn).await? {
                    return Ok(None);
                }
                PERIOD_LOCK.share(conn).await?;
                Ok(Some(fold_some(conn).await?))
            })
            .await?;
        let Some(some) = some else {
            return Ok(if folded.is_empty() {
                None
            } else {
                Some(folded)
            });
        };
        let more = some.len() as i64 == ROWS_PER_FOLD;
        folded.extend(some);
        if !more {
            return Ok(Some(folded));
        }
    }
}

/// Folds every `every` until `stop`, and has this collector's live rankings re-read what it
/// folded.
pub async fn run(pool: Pool, live: Live, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let started = Instant::now();
        let result = async {
            let mut conn = pool.get().await?;
            fold(&mut conn).await
        }
        .await;
        match result {
            Ok(Some(folded)) => {
                metrics::histogram!("collector_fold_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::counter!("collector_folded_rows_total").increment(folded.len() as u64);
                live.mark_folded(&folded);
            }
            Ok(None) => {}
            Err(e) => {
                metrics::counter!("collector_fold_failures_total").increment(1);
                tracing::warn!(error = %format!("{e:#}"), "folding the daily figures failed; retried at the next tick");
            }
        }
    }
}
