//! Migrations keep the data they find.

use commerce_testkit::{TestDb, count};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

const READ_MODEL: &str = "2026-12-02-000001_ranking_read_model";

#[tokio::test]
async fn the_ranking_read_model_keeps_the_top_ranks_and_makes_weeks_and_months_exact() {
    let db = TestDb::new("commerce_collector", commerce_collector::MIGRATIONS).await;
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    // Back to the schema before the migration, with data in that shape: materialised top ranks
    // and a week and month the rollup last saw before the newest day's figures.
    conn.batch_execute(include_str!(
        "../../migrations/2026-12-02-000001_ranking_read_model/down.sql"
    ))
    .await
    .unwrap();
    conn.batch_execute(&format!(
        "DELETE FROM __diesel_schema_migrations WHERE version = '{}';
         INSERT INTO ranking_top (period, period_start, rank, product_id, score)
              VALUES ('monthly', '2026-10-01', 1, 7, 9.5), ('monthly', '2026-10-01', 2, 3, 4.0);
         INSERT INTO product_metrics_daily (business_date, product_id, view_count, sales_quantity)
              VALUES ('2026-11-30', 1, 10, 2), ('2026-12-01', 1, 5, 1), ('2026-12-02', 1, 4, 3),
                     ('2026-12-02', 2, 1, 0);
         INSERT INTO product_metrics_weekly (week_start, product_id, view_count, like_count, order_count, sales_quantity, sales_amount)
              VALUES ('2026-11-30', 1, 15, 0, 0, 3, 0);
         INSERT INTO product_metrics_monthly (month_start, product_id, view_count, like_count, order_count, sales_quantity, sales_amount)
              VALUES ('2026-12-01', 1, 5, 0, 0, 1, 0);",
        READ_MODEL.replace('-', "").split('_').next().unwrap()
    ))
    .await
    .unwrap();

    commerce_db::run_migrations(&db.url, commerce_collector::MIGRATIONS)
        .await
        .unwrap();

    assert_eq!(
        count(
            &db.url,
            "SELECT count(*) AS n FROM ranking_ranks
              WHERE period = 'monthly' AND period_start = '2026-10-01'
                AND ((rank, product_id, score) = (1, 7, 9.5) OR (rank, product_id, score) = (2, 3, 4.0))"
        )
        .await,
        2,
        "the materialised ranks are kept"
    );
    let figures = |table: &str, column: &str, start: &str| {
        format!(
            "SELECT (view_count * 1000 + sales_quantity)::bigint AS n FROM {table}
              WHERE {column} = '{start}' AND product_id = 1"
        )
    };
    assert_eq!(
        count(
            &db.url,
            &figures("product_metrics_weekly", "week_start", "2026-11-30")
        )
        .await,
        19_006,
        "the week is the sum of its days"
    );
    assert_eq!(
        count(
            &db.url,
            &figures("product_metrics_monthly", "month_start", "2026-12-01")
        )
        .await,
        9_004,
        "the month is the sum of its days"
    );
    assert_eq!(
        count(&db.url, "SELECT count(*) AS n FROM product_metrics_weekly").await,
        2,
        "a product missing from its week is added"
    );
}

#[tokio::test]
async fn dedupe_rows_of_every_group_move_to_the_event_keyed_log_and_still_dedupe() {
    const BY_EVENT: &str = "2026-12-03-000001_event_handled_by_event";
    let db = TestDb::new("commerce_collector", commerce_collector::MIGRATIONS).await;
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    conn.batch_execute(include_str!(
        "../../migrations/2026-12-03-000001_event_handled_by_event/down.sql"
    ))
    .await
    .unwrap();
    let seen = commerce_events::Envelope::new(commerce_events::Event::ProductViewed(
        commerce_events::ProductViewed {
            product_id: 1,
            user_id: None,
            count: 1,
        },
    ));
    let legacy = uuid::Uuid::new_v4();
    conn.batch_execute(&format!(
        "DELETE FROM __diesel_schema_migrations WHERE version = '{}';
         INSERT INTO event_handled (consumer_group, event_id, handled_at)
              VALUES ('blue', '{id}', now() - interval '2 hours'),
                     ('green', '{id}', now() - interval '1 hour'),
                     ('blue', '{legacy}', '2026-11-30T12:00:00Z');",
        BY_EVENT.replace('-', "").split('_').next().unwrap(),
        id = seen.event_id,
    ))
    .await
    .unwrap();

    commerce_db::run_migrations(&db.url, commerce_collector::MIGRATIONS)
        .await
        .unwrap();

    let recorded_ms = commerce_collector::dedupe::recorded_at(&seen)
        .unwrap()
        .timestamp_millis();
    assert_eq!(
        count(
            &db.url,
            &format!(
                "SELECT count(*) AS n FROM event_handled
                  WHERE event_id = '{}' AND consumer_group = 'blue'
                    AND (extract(epoch FROM recorded_at) * 1000)::bigint = {recorded_ms}",
                seen.event_id
            )
        )
        .await,
        1,
        "one row per event, the first group's, at the id's time"
    );
    assert_eq!(
        count(
            &db.url,
            &format!(
                "SELECT count(*) AS n FROM event_handled
                  WHERE event_id = '{legacy}' AND recorded_at = '2026-11-30T12:00:00Z'"
            )
        )
        .await,
        1,
        "an id without a time keeps its handling time"
    );
    // Delivered again after the upgrade, under yet another group: still skipped.
    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    let applied = commerce_collector::apply::apply_batch(
        &mut conn,
        "renamed",
        &[seen],
        chrono_tz::Asia::Seoul,
    )
    .await
    .unwrap();
    assert_eq!((applied.applied, applied.duplicates), (0, 1));
}
