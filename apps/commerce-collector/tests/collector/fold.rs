//! The fold carries every daily change into the all-time, weekly and monthly figures exactly
//! once, while batches, other folds and rollups run at the same time; migrations keep the data.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use chrono::{Duration, NaiveDate, TimeZone, Utc};
use commerce_collector::apply::apply_batch;
use commerce_collector::ranking::{Period, Weights};
use commerce_events::{Envelope, Event, OrderLine, OrderPlaced, ProductViewed};
use commerce_testkit::{TestDb, count};
use diesel::sql_types::{BigInt, Date};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

const WEIGHTS: Weights = Weights {
    view: 0.1,
    like: 0.2,
    order: 0.7,
};

const UNFOLDED: &str = "SELECT count(*) AS n FROM product_metrics_daily
  WHERE (view_count, like_count, order_count, sales_quantity, sales_amount)
        <> (folded_views, folded_likes, folded_orders, folded_quantity, folded_amount)";

#[derive(diesel::QueryableByName, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Figures {
    #[diesel(sql_type = Date)]
    start: NaiveDate,
    #[diesel(sql_type = BigInt)]
    product_id: i64,
    #[diesel(sql_type = BigInt)]
    views: i64,
    #[diesel(sql_type = BigInt)]
    orders: i64,
    #[diesel(sql_type = BigInt)]
    quantity: i64,
    #[diesel(sql_type = BigInt)]
    amount: i64,
}

async fn load(conn: &mut AsyncPgConnection, sql: &str) -> Vec<Figures> {
    diesel::sql_query(format!("{sql} ORDER BY 1, 2"))
        .load(conn)
        .await
        .unwrap()
}

/// Sales and views of 40 products over Sunday to Tuesday (two weeks, two months).
fn events() -> Vec<Envelope> {
    let first = NaiveDate::from_ymd_opt(2026, 11, 29).unwrap();
    let mut out = Vec::new();
    for i in 0..6_000i64 {
        let day = first + Duration::days(i % 3);
        let at = Utc.from_utc_datetime(&day.and_hms_opt(12, 0, 0).unwrap());
        let product = (i * 7) % 40 + 1;
        let event = if i % 3 == 0 {
            Event::OrderPaid(OrderPlaced {
                order_id: i,
                user_id: 1,
                lines: vec![OrderLine {
                    product_id: product,
                    quantity: i % 4 + 1,
                    unit_price: 100 + product,
                }],
                total_amount: (i % 4 + 1) * (100 + product),
                discount_amount: 0,
                final_amount: (i % 4 + 1) * (100 + product),
                payment_method: commerce_events::PaymentKind::Point,
            })
        } else {
            Event::ProductViewed(ProductViewed {
                product_id: product,
                user_id: None,
                count: 1,
            })
        };
        out.push(Envelope::at(event, at));
    }
    out
}

/// The figures the events add up to, per period start and product.
fn expected(events: &[Envelope], period: Option<Period>) -> Vec<Figures> {
    let mut sums: BTreeMap<(NaiveDate, i64), [i64; 4]> = BTreeMap::new();
    for e in events {
        let day = e.occurred_at.date_naive();
        let start = period.map_or(NaiveDate::from_ymd_opt(1, 1, 1).unwrap(), |p| {
            p.bounds(day).0
        });
        let (product, add) = match &e.event {
            Event::OrderPaid(o) => {
                let l = &o.lines[0];
                (l.product_id, [0, 1, l.quantity, l.quantity * l.unit_price])
            }
            Event::ProductViewed(v) => (v.product_id, [1, 0, 0, 0]),
            _ => unreachable!(),
        };
        let s = sums.entry((start, product)).or_default();
        for (s, a) in s.iter_mut().zip(add) {
            *s += a;
        }
    }
    sums.into_iter()
        .map(
            |((start, product_id), [views, orders, quantity, amount])| Figures {
                start,
                product_id,
                views,
                orders,
                quantity,
                amount,
            },
        )
        .collect()
}

const COLUMNS: &str = "product_id, view_count AS views, order_count AS orders,
                       sales_quantity AS quantity, sales_amount AS amount";

#[tokio::test]
async fn concurrent_batches_folds_and_rollups_count_every_change_exactly_once() {
    let db = TestDb::new("commerce_collector", commerce_collector::MIGRATIONS).await;
    let pool = commerce_db::pool(&db.url, 8).unwrap();
    let events = Arc::new(events());
    let applying = Arc::new(AtomicBool::new(true));
    let folds_while_applying = Arc::new(AtomicUsize::new(0));

    // Two collectors applying their halves in batches of 50 (every batch is delivered twice),
    // two fold loops, and a rollup of the two weeks and two months, all at once.
    let appliers: Vec<_> = (0..2)
        .map(|half| {
            let (pool, events) = (pool.clone(), events.clone());
            tokio::spawn(async move {
                let mut conn = pool.get().await.unwrap();
                let mine: Vec<Envelope> = events.iter().skip(half).step_by(2).cloned().collect();
                for chunk in mine.chunks(50) {
                    apply_batch(&mut conn, "g", chunk, chrono_tz::UTC)
                        .await
                        .unwrap();
                    apply_batch(&mut conn, "g", chunk, chrono_tz::UTC)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let folders: Vec<_> = (0..2)
        .map(|_| {
            let (pool, applying, folds) =
                (pool.clone(), applying.clone(), folds_while_applying.clone());
            tokio::spawn(async move {
                let mut conn = pool.get().await.unwrap();
                while AtomicBool::load(&applying, Ordering::Relaxed) {
                    if let Some(folded) = commerce_collector::fold::fold(&mut conn).await.unwrap()
                        && !folded.is_empty()
                    {
                        folds.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    let rollups = {
        let (pool, applying) = (pool.clone(), applying.clone());
        tokio::spawn(async move {
            let mut conn = pool.get().await.unwrap();
            let mut runs = 0;
            while AtomicBool::load(&applying, Ordering::Relaxed) || runs == 0 {
                commerce_collector::rollup::rollup_range(
                    &mut conn,
                    NaiveDate::from_ymd_opt(2026, 11, 29).unwrap(),
                    NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(),
                    WEIGHTS,
                    |_, _| {},
                )
                .await
                .unwrap();
                runs += 1;
            }
            runs
        })
    };
    for a in appliers {
        a.await.unwrap();
    }
    applying.store(false, Ordering::Relaxed);
    for f in folders {
        f.await.unwrap();
    }
    let rollup_runs = rollups.await.unwrap();
    assert!(
        AtomicUsize::load(&folds_while_applying, Ordering::Relaxed) >= 2,
        "the folds ran while batches were applied"
    );
    assert!(rollup_runs >= 1);

    // What is left is folded by the next fold, and then nothing is.
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    commerce_collector::fold::fold(&mut conn).await.unwrap();
    assert_eq!(count(&db.url, UNFOLDED).await, 0);
    assert_eq!(
        commerce_collector::fold::fold(&mut conn).await.unwrap(),
        Some(Default::default()),
        "a fold with nothing pending folds nothing"
    );

    assert_eq!(
        load(
            &mut conn,
            &format!("SELECT DATE '0001-01-01' AS start, {COLUMNS} FROM product_metrics")
        )
        .await,
        expected(&events, None),
        "all-time figures"
    );
    assert_eq!(
        load(
            &mut conn,
            &format!("SELECT week_start AS start, {COLUMNS} FROM product_metrics_weekly")
        )
        .await,
        expected(&events, Some(Period::Weekly)),
        "weekly figures"
    );
    assert_eq!(
        load(
            &mut conn,
            &format!("SELECT month_start AS start, {COLUMNS} FROM product_metrics_monthly")
        )
        .await,
        expected(&events, Some(Period::Monthly)),
        "monthly figures"
    );
    // And a rollup now (nothing pending) recomputes the same.
    commerce_collector::rollup::rollup_range(
        &mut conn,
        NaiveDate::from_ymd_opt(2026, 11, 29).unwrap(),
        NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(),
        WEIGHTS,
        |_, _| {},
    )
    .await
    .unwrap();
    assert_eq!(
        load(
            &mut conn,
            &format!("SELECT week_start AS start, {COLUMNS} FROM product_metrics_weekly")
        )
        .await,
        expected(&events, Some(Period::Weekly)),
        "weekly figures after a rollup"
    );
}

#[tokio::test]
async fn folding_migrates_without_counting_old_rows_again_and_reverts_without_losing_new_ones() {
    const FOLDED: &str = "2026-12-07-000001_folded_day_figures";
    let db = TestDb::new("commerce_collector", commerce_collector::MIGRATIONS).await;
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    let views = async |table: &str| {
        count(
            &db.url,
            &format!("SELECT coalesce(sum(view_count), 0)::bigint AS n FROM {table}"),
        )
        .await
    };
    // Back to the schema before: batches wrote all four tables, so they agree.
    conn.batch_execute(include_str!(
        "../../migrations/2026-12-07-000001_folded_day_figures/down.sql"
    ))
    .await
    .unwrap();
    conn.batch_execute(&format!(
        "DELETE FROM __diesel_schema_migrations WHERE version = '{}';
         INSERT INTO product_metrics_daily (business_date, product_id, view_count)
              VALUES ('2026-12-01', 1, 10), ('2026-12-02', 1, 5);
         INSERT INTO product_metrics (product_id, view_count) VALUES (1, 15);
         INSERT INTO product_metrics_weekly (week_start, product_id, view_count, like_count, order_count, sales_quantity, sales_amount)
              VALUES ('2026-11-30', 1, 15, 0, 0, 0, 0);
         INSERT INTO product_metrics_monthly (month_start, product_id, view_count, like_count, order_count, sales_quantity, sales_amount)
              VALUES ('2026-12-01', 1, 15, 0, 0, 0, 0);",
        FOLDED.split('_').next().unwrap().replace('-', "")
    ))
    .await
    .unwrap();

    commerce_db::run_migrations(&db.url, commerce_collector::MIGRATIONS)
        .await
        .unwrap();
    assert_eq!(count(&db.url, UNFOLDED).await, 0, "the old rows are folded");
    commerce_collector::fold::fold(&mut conn).await.unwrap();
    for table in [
        "product_metrics",
        "product_metrics_weekly",
        "product_metrics_monthly",
    ] {
        assert_eq!(views(table).await, 15, "{table} counts the old rows once");
    }

    // A new view, not folded yet, survives going back.
    let at = Utc.with_ymd_and_hms(2026, 12, 2, 12, 0, 0).unwrap();
    apply_batch(
        &mut conn,
        "g",
        &[Envelope::at(
            Event::ProductViewed(ProductViewed {
                product_id: 1,
                user_id: None,
                count: 1,
            }),
            at,
        )],
        chrono_tz::UTC,
    )
    .await
    .unwrap();
    assert_eq!(count(&db.url, UNFOLDED).await, 1);
    conn.batch_execute(include_str!(
        "../../migrations/2026-12-07-000001_folded_day_figures/down.sql"
    ))
    .await
    .unwrap();
    for table in [
        "product_metrics",
        "product_metrics_daily",
        "product_metrics_weekly",
        "product_metrics_monthly",
    ] {
        assert_eq!(views(table).await, 16, "{table} after going back");
    }
}
