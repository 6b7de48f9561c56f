//! The fold and the rollups equal a brute-force sum of the events; rollups are idempotent.

use std::collections::BTreeMap;

use chrono::{Datelike, Duration, NaiveDate, TimeZone, Utc};
use commerce_collector::apply::apply_batch;
use commerce_collector::ranking::{Period, Weights};
use commerce_collector::rollup::rollup_range;
use commerce_events::{Envelope, Event, OrderLine, OrderPlaced, ProductViewed};
use commerce_testkit::TestDb;
use diesel::sql_types::{BigInt, Date};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

const WEIGHTS: Weights = Weights {
    view: 0.1,
    like: 0.2,
    order: 0.7,
};

#[derive(diesel::QueryableByName, Debug, PartialEq)]
struct Row {
    #[diesel(sql_type = Date)]
    start: NaiveDate,
    #[diesel(sql_type = BigInt)]
    product_id: i64,
    #[diesel(sql_type = BigInt)]
    views: i64,
    #[diesel(sql_type = BigInt)]
    quantity: i64,
}

/// Folds the daily figures into the all-time, weekly and monthly ones, as the collector does
/// about once a second.
async fn fold(conn: &mut AsyncPgConnection) {
    commerce_collector::fold::fold(conn)
        .await
        .unwrap()
        .expect("no other fold runs");
}

async fn load(conn: &mut AsyncPgConnection, table: &str, column: &str) -> Vec<Row> {
    diesel::sql_query(format!(
        "SELECT {column} AS start, product_id, view_count AS views, sales_quantity AS quantity FROM {table} ORDER BY 1, 2"
    ))
    .load(conn)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_fold_and_rollups_match_a_brute_force_sum_and_rerunning_changes_nothing() {
    let db = TestDb::new("commerce_collector", commerce_collector::MIGRATIONS).await;
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    let tz = chrono_tz::UTC;
    let first = NaiveDate::from_ymd_opt(2026, 1, 20).unwrap();
    let mut events = Vec::new();
    let mut expected_week: BTreeMap<(NaiveDate, i64), (i64, i64)> = BTreeMap::new();
    let mut expected_month: BTreeMap<(NaiveDate, i64), (i64, i64)> = BTreeMap::new();
    for day in 0..45 {
        let date = first + Duration::days(day);
        let at = Utc.from_utc_datetime(&date.and_hms_opt(12, 0, 0).unwrap());
        for product in 1..=5i64 {
            let quantity = (day + product) % 4 + 1;
            let views = (day * product) % 3;
            events.push(Envelope::at(
                Event::OrderPaid(OrderPlaced {
                    order_id: day * 10 + product,
                    user_id: 1,
                    lines: vec![OrderLine {
                        product_id: product,
                        quantity,
                        unit_price: 10,
                    }],
                    total_amount: quantity * 10,
                    discount_amount: 0,
                    final_amount: quantity * 10,
                    payment_method: commerce_events::PaymentKind::Point,
                }),
                at,
            ));
            for _ in 0..views {
                events.push(Envelope::at(
                    Event::ProductViewed(ProductViewed {
                        product_id: product,
                        user_id: None,
                        count: 1,
                    }),
                    at,
                ));
            }
            let week = Period::Weekly.bounds(date).0;
            let month = date.with_day(1).unwrap();
            for (map, start) in [(&mut expected_week, week), (&mut expected_month, month)] {
                let e = map.entry((start, product)).or_default();
                e.0 += views;
                e.1 += quantity;
            }
        }
    }
    for chunk in events.chunks(100) {
        apply_batch(&mut conn, "g", chunk, tz).await.unwrap();
    }
    let last = first + Duration::days(44);
    fold(&mut conn).await;
    // Run 0: as folded; runs 1 and 2: recomputed by the rollup.
    for run in 0..3 {
        if run > 0 {
            rollup_range(&mut conn, first, last, WEIGHTS, |_, _| {})
                .await
                .unwrap();
        }
        let weekly = load(&mut conn, "product_metrics_weekly", "week_start").await;
        let monthly = load(&mut conn, "product_metrics_monthly", "month_start").await;
        let as_rows = |m: &BTreeMap<(NaiveDate, i64), (i64, i64)>| -> Vec<Row> {
            m.iter()
                .map(|((start, product_id), (views, quantity))| Row {
                    start: *start,
                    product_id: *product_id,
                    views: *views,
                    quantity: *quantity,
                })
                .collect()
        };
        assert_eq!(weekly, as_rows(&expected_week), "run {run}");
        assert_eq!(monthly, as_rows(&expected_month), "run {run}");
    }
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let top: N =
        diesel::sql_query("SELECT count(*) AS n FROM ranking_ranks WHERE period = 'monthly'")
            .get_result(&mut conn)
            .await
            .unwrap();
    assert_eq!(
        top.n,
        expected_month.len() as i64,
        "every product of every month is ranked"
    );
}

#[tokio::test]
async fn a_scheduled_job_runs_once_per_period_across_instances() {
    let db = TestDb::new("commerce_collector", commerce_collector::MIGRATIONS).await;
    let pool = commerce_db::pool(&db.url, 4).unwrap();
    let slot = "2026-11-21T10:00";
    // Two collectors firing the same slot at once.
    let (a, b) = tokio::join!(
        commerce_collector::rollup::scheduled_rollup(&pool, WEIGHTS, slot),
        commerce_collector::rollup::scheduled_rollup(&pool, WEIGHTS, slot)
    );
    a.unwrap();
    b.unwrap();
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    #[derive(diesel::QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let runs: N =
        diesel::sql_query("SELECT count(*) AS n FROM scheduled_job_runs WHERE job = 'rollup'")
            .get_result(&mut conn)
            .await
            .unwrap();
    assert_eq!(runs.n, 1);
    let finished: N = diesel::sql_query(
        "SELECT count(*) AS n FROM scheduled_job_runs WHERE finished_at IS NOT NULL",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(finished.n, 1);
}

#[tokio::test]
async fn a_sale_cancelled_after_midnight_is_subtracted_from_its_own_day_week_and_month() {
    let db = TestDb::new("commerce_collector", commerce_collector::MIGRATIONS).await;
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    let tz = chrono_tz::Asia::Seoul;
    // The last microsecond of Monday 2026-11-30 in Seoul: the last day of a month.
    let paid_at = tz
        .with_ymd_and_hms(2026, 11, 30, 23, 59, 59)
        .unwrap()
        .with_timezone(&Utc)
        + Duration::microseconds(999_999);
    let lines = vec![OrderLine {
        product_id: 9,
        quantity: 2,
        unit_price: 500,
    }];
    let sale = Envelope::at(
        Event::OrderPaid(OrderPlaced {
            order_id: 1,
            user_id: 1,
            lines: lines.clone(),
            total_amount: 1000,
            discount_amount: 0,
            final_amount: 1000,
            payment_method: commerce_events::PaymentKind::Card,
        }),
        paid_at,
    );
    // Cancelled a second later: already the 1st of December.
    let cancel = Envelope::at(
        Event::OrderCancelled(commerce_events::OrderCancelled {
            order_id: 1,
            user_id: 1,
            lines,
            was_paid: true,
            paid_at: Some(paid_at),
        }),
        paid_at + Duration::seconds(1),
    );
    apply_batch(&mut conn, "g", &[sale], tz).await.unwrap();
    fold(&mut conn).await;
    apply_batch(&mut conn, "g", &[cancel], tz).await.unwrap();
    fold(&mut conn).await;
    let figures = |table: &str, column: &str, start: &str| {
        format!(
            "SELECT count(*) AS n FROM {table}
              WHERE {column} = '{start}' AND product_id = 9 AND order_count = 0
                AND sales_quantity = 0 AND sales_amount = 0"
        )
    };
    for (table, column, start) in [
        ("product_metrics_daily", "business_date", "2026-11-30"),
        ("product_metrics_weekly", "week_start", "2026-11-30"),
        ("product_metrics_monthly", "month_start", "2026-11-01"),
    ] {
        assert_eq!(
            commerce_testkit::count(&db.url, &figures(table, column, start)).await,
            1,
            "{table} {start}: the sale and its cancellation cancel out"
        );
    }
    assert_eq!(
        commerce_testkit::count(
            &db.url,
            "SELECT count(*) AS n FROM product_metrics_monthly WHERE month_start = '2026-12-01'"
        )
        .await,
        0,
        "December never saw the sale, nor its cancellation"
    );
}

#[tokio::test]
async fn a_failed_or_abandoned_job_run_is_retried_by_another_instance() {
    use commerce_collector::jobs;
    let db = TestDb::new("commerce_collector", commerce_collector::MIGRATIONS).await;
    let pool = commerce_db::pool(&db.url, 4).unwrap();
    let lease = std::time::Duration::from_secs(600);

    // A run that fails is recorded with its error, and its lease ends at once...
    let failed = jobs::run(&pool, jobs::Job::CloseDay, "2026-12-01", lease, async {
        Err(anyhow::anyhow!("the database went away"))
    })
    .await;
    assert!(failed.is_err());
    assert_eq!(
        commerce_testkit::count(
            &db.url,
            "SELECT count(*) AS n FROM scheduled_job_runs
              WHERE job = 'close-day' AND finished_at IS NULL
                AND last_error = 'the database went away' AND lease_until <= now()"
        )
        .await,
        1
    );
    // ...so the next firing, on any instance, runs it again; then it is done for good.
    let ran = jobs::run(&pool, jobs::Job::CloseDay, "2026-12-01", lease, async {
        Ok(())
    })
    .await
    .unwrap();
    assert!(ran);
    assert_eq!(
        commerce_testkit::count(
            &db.url,
            "SELECT count(*) AS n FROM scheduled_job_runs
              WHERE job = 'close-day' AND finished_at IS NOT NULL AND attempts = 2
                AND last_error IS NULL"
        )
        .await,
        1
    );
    let again = jobs::run(&pool, jobs::Job::CloseDay, "2026-12-01", lease, async {
        Err(anyhow::anyhow!("a finished run must not run again"))
    })
    .await
    .unwrap();
    assert!(!again);

    // A claimer that crashes mid-run keeps the run only until its lease passes.
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    let short = std::time::Duration::from_millis(500);
    assert!(
        jobs::claim(&mut conn, jobs::Job::PruneEventHandled, "2026-12-01", short)
            .await
            .unwrap()
    );
    let while_held = jobs::run(
        &pool,
        jobs::Job::PruneEventHandled,
        "2026-12-01",
        lease,
        async { Err(anyhow::anyhow!("must wait for the lease")) },
    )
    .await
    .unwrap();
    assert!(!while_held, "the run is held while its lease lasts");
    commerce_testkit::eventually(
        "another instance takes the abandoned run over after its lease",
        std::time::Duration::from_secs(10),
        async || match jobs::run(
            &pool,
            jobs::Job::PruneEventHandled,
            "2026-12-01",
            lease,
            async { Ok(()) },
        )
        .await
        {
            Ok(true) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    assert_eq!(
        commerce_testkit::count(
            &db.url,
            "SELECT count(*) AS n FROM scheduled_job_runs
              WHERE job = 'prune-event-handled' AND finished_at IS NOT NULL AND attempts = 2"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn every_job_reports_its_metrics_from_the_start() {
    let p = crate::support::Pipeline::new().await;
    let collector = p.collector_with(&[("COLLECTOR_CONSUME", "false")]).await;
    let url = format!("{}/metrics", collector.base);
    for job in commerce_collector::jobs::Job::ALL {
        let wanted = [
            format!("collector_job_runs_total{{task=\"{job}\",result=\"failure\"}} 0"),
            format!("collector_job_last_success_timestamp_seconds{{task=\"{job}\"}} 0"),
        ];
        commerce_testkit::eventually(
            &format!("{job}'s metrics are exported"),
            std::time::Duration::from_secs(10),
            async || {
                let text = reqwest::get(&url)
                    .await
                    .map_err(|e| e.to_string())?
                    .text()
                    .await
                    .map_err(|e| e.to_string())?;
                match wanted
                    .iter()
                    .find(|w| !text.lines().any(|l| l == w.as_str()))
                {
                    None => Ok(()),
                    Some(missing) => Err(format!("no line {missing}")),
                }
            },
        )
        .await;
    }
}

#[tokio::test]
async fn a_late_event_for_a_rolled_up_week_and_month_is_counted_by_the_next_fold_and_kept_by_the_next_rollup()
 {
    let db = TestDb::new("commerce_collector", commerce_collector::MIGRATIONS).await;
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    let pool = commerce_db::pool(&db.url, 2).unwrap();
    let tz = chrono_tz::UTC;
    let day = NaiveDate::from_ymd_opt(2026, 10, 14).unwrap();
    let at = |d: NaiveDate| Utc.from_utc_datetime(&d.and_hms_opt(12, 0, 0).unwrap());
    let view = |d: NaiveDate| {
        Envelope::at(
            Event::ProductViewed(ProductViewed {
                product_id: 3,
                user_id: None,
                count: 1,
            }),
            at(d),
        )
    };
    apply_batch(&mut conn, "g", &[view(day), view(day)], tz)
        .await
        .unwrap();
    fold(&mut conn).await;
    rollup_range(&mut conn, day, day, WEIGHTS, |_, _| {})
        .await
        .unwrap();
    let views = async |table: &str, column: &str, start: &str| {
        commerce_testkit::count(
            &db.url,
            &format!(
                "SELECT coalesce(sum(view_count), 0)::bigint AS n FROM {table}
                  WHERE {column} = '{start}' AND product_id = 3"
            ),
        )
        .await
    };
    // Weeks later, an event for that day arrives (a replay, a slow producer).
    apply_batch(&mut conn, "g", &[view(day)], tz).await.unwrap();
    fold(&mut conn).await;
    assert_eq!(
        views("product_metrics_weekly", "week_start", "2026-10-12").await,
        3
    );
    assert_eq!(
        views("product_metrics_monthly", "month_start", "2026-10-01").await,
        3
    );
    // The next scheduled run reconciles the changed day's week and month and keeps the figure,
    // and materialises their ranks again.
    commerce_collector::rollup::scheduled_rollup(&pool, WEIGHTS, "2026-11-15T00:00")
        .await
        .unwrap();
    assert_eq!(
        views("product_metrics_weekly", "week_start", "2026-10-12").await,
        3
    );
    assert_eq!(
        views("product_metrics_monthly", "month_start", "2026-10-01").await,
        3
    );
    assert_eq!(
        commerce_testkit::count(
            &db.url,
            "SELECT count(*) AS n FROM ranking_ranks r JOIN ranking_snapshots s USING (period, period_start)
              WHERE r.period = 'weekly' AND r.period_start = '2026-10-12' AND r.product_id = 3
                AND r.score = 0.30000000000000004 AND s.total = 1"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn dedupe_retention_drops_whole_partitions_past_the_horizon_and_creates_the_next_days() {
    use commerce_collector::dedupe::{self, Horizon};
    let db = TestDb::new("commerce_collector", commerce_collector::MIGRATIONS).await;
    let pool = commerce_db::pool(&db.url, 2).unwrap();
    let mut conn = pool.get().await.unwrap();
    let today = Utc::now().date_naive();
    let old = today - Duration::days(10);
    let recent = today - Duration::days(7);
    dedupe::ensure_partitions(&mut conn, [old, recent])
        .await
        .unwrap();
    diesel::sql_query(
        "INSERT INTO event_handled (event_id, recorded_at, consumer_group)
         VALUES (gen_random_uuid(), $1::timestamp AT TIME ZONE 'UTC', 'g'),
                (gen_random_uuid(), $2::timestamp AT TIME ZONE 'UTC', 'g')",
    )
    .bind::<Date, _>(old)
    .bind::<Date, _>(recent)
    .execute(&mut conn)
    .await
    .unwrap();

    let dropped = dedupe::prune(&pool, Horizon::hours(192), today)
        .await
        .unwrap();
    assert_eq!(
        dropped,
        [format!("event_handled_p{}", old.format("%Y%m%d"))]
    );
    let partitions = |day: NaiveDate| {
        format!(
            "SELECT count(*) AS n FROM pg_class WHERE relname = 'event_handled_p{}'",
            day.format("%Y%m%d")
        )
    };
    for kept in [
        recent,
        today,
        today + Duration::days(1),
        today + Duration::days(2),
    ] {
        assert_eq!(
            commerce_testkit::count(&db.url, &partitions(kept)).await,
            1,
            "{kept}"
        );
    }
    assert_eq!(
        commerce_testkit::count(&db.url, "SELECT count(*) AS n FROM event_handled").await,
        1,
        "the recent row stays"
    );
}

#[tokio::test]
async fn a_batch_is_one_statement_prepared_once_per_connection() {
    let db = TestDb::new("commerce_collector", commerce_collector::MIGRATIONS).await;
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    let view = || {
        Envelope::new(Event::ProductViewed(ProductViewed {
            product_id: 3,
            user_id: None,
            count: 1,
        }))
    };
    for _ in 0..3 {
        apply_batch(&mut conn, "g", &[view(), view()], chrono_tz::Asia::Seoul)
            .await
            .unwrap();
    }
    #[derive(diesel::QueryableByName)]
    struct Prepared {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let prepared: Prepared = diesel::sql_query(
        "SELECT count(*) AS n FROM pg_prepared_statements WHERE statement LIKE '%INSERT INTO event_handled%' AND statement NOT LIKE '%pg_prepared_statements%'",
    )
    .get_result(&mut conn)
    .await
    .unwrap();
    assert_eq!(prepared.n, 1, "prepared once, reused by the next batches");
}
