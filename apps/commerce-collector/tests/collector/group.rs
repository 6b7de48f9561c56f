//! Exactly once whatever the consumer group or its offsets, and a group that stays put while
//! batches commit slowly.

use std::time::Duration;

use crate::pipeline::paid;
use crate::support::{Pipeline, get_json, metric};
use commerce_events::Envelope;
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};

/// 200 sales, 50 for each of products 1..=4.
fn sales() -> Vec<Envelope> {
    (0..200).map(|i| paid(i, 1 + i % 4, 1, 100)).collect()
}

/// Asserts that products 1..=4 each have exactly their 50 sales.
async fn assert_counted_once(base: &str) {
    for product in 1..=4 {
        let m = get_json(&format!("{base}/api/v1/product-metrics/{product}"))
            .await
            .unwrap();
        assert_eq!(
            (m["order_count"].as_i64(), m["sales_quantity"].as_i64()),
            (Some(50), Some(50)),
            "product {product}"
        );
    }
}

#[tokio::test]
async fn a_renamed_group_counts_nothing_twice() {
    let p = Pipeline::new().await;
    p.produce(&sales()).await;
    let first = p.collector().await;
    p.wait_consumed().await;
    assert_counted_once(&first.base).await;
    first.stop().await.unwrap();

    // The same collector under a new group name reads both topics from the start.
    let renamed = format!("{}-renamed", p.group);
    let second = p
        .collector_with(&[("COLLECTOR_GROUP_ID", renamed.as_str())])
        .await;
    p.wait_consumed_by(&renamed).await;
    assert_counted_once(&second.base).await;
    assert_eq!(
        metric(&second.base, "collector_events_duplicate_total").await,
        200.0
    );
}

#[tokio::test]
async fn a_second_deployment_on_the_same_database_counts_nothing_twice() {
    let p = Pipeline::new().await;
    let other = format!("{}-other", p.group);
    let a = p.collector().await;
    let _b = p
        .collector_with(&[("COLLECTOR_GROUP_ID", other.as_str())])
        .await;
    p.produce(&sales()).await;
    p.wait_consumed().await;
    p.wait_consumed_by(&other).await;
    assert_counted_once(&a.base).await;
    // Each event was applied by one deployment and skipped by the other.
    assert_eq!(
        commerce_testkit::count(&p.db.url, "SELECT count(*) AS n FROM event_handled").await,
        200
    );
    assert_eq!(
        metric(&a.base, "collector_events_duplicate_total").await,
        200.0
    );
}

#[tokio::test]
async fn an_offset_reset_to_earliest_counts_nothing_twice() {
    let p = Pipeline::new().await;
    p.produce(&sales()).await;
    let first = p.collector().await;
    p.wait_consumed().await;
    first.stop().await.unwrap();
    p.reset_offsets_to_earliest().await;

    let second = p.collector().await;
    p.wait_consumed().await;
    assert_counted_once(&second.base).await;
    assert_eq!(
        metric(&second.base, "collector_events_duplicate_total").await,
        200.0
    );
}

#[tokio::test]
async fn batches_that_commit_slowly_do_not_churn_the_group() {
    let p = Pipeline::new().await;
    // One batch at a time, and a poll interval far shorter than the commit below takes.
    let collector = p
        .collector_with(&[
            ("COLLECTOR_MAX_IN_FLIGHT", "1"),
            ("COLLECTOR_BATCH_SIZE", "10"),
            ("KAFKA_SESSION_TIMEOUT_MS", "1500"),
            ("KAFKA_MAX_POLL_INTERVAL_MS", "2000"),
        ])
        .await;
    let base = collector.base.clone();
    commerce_testkit::until(
        "the group assigns partitions",
        Duration::from_secs(60),
        async || metric(&base, "collector_rebalances_total{kind=\"assign\"}").await >= 1.0,
    )
    .await;

    // A rollup's exclusive period lock holds every batch's commit back.
    let mut blocker = AsyncPgConnection::establish(&p.db.url).await.unwrap();
    blocker
        .batch_execute(&format!(
            "BEGIN; SELECT pg_advisory_xact_lock({})",
            commerce_collector::apply::PERIOD_LOCK.key()
        ))
        .await
        .unwrap();
    p.produce(&sales()).await;
    commerce_testkit::until(
        "a batch waits for the lock",
        Duration::from_secs(60),
        async || {
            commerce_testkit::count(
                &p.db.url,
                "SELECT count(*) AS n FROM pg_locks
                  WHERE locktype = 'advisory' AND NOT granted
                    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .await
                >= 1
        },
    )
    .await;
    // The commit takes three poll intervals.
    tokio::time::sleep(Duration::from_secs(6)).await;
    blocker.batch_execute("COMMIT").await.unwrap();

    p.wait_consumed().await;
    assert_counted_once(&base).await;
    assert_eq!(
        (
            metric(&base, "collector_rebalances_total{kind=\"assign\"}").await,
            metric(&base, "collector_rebalances_total{kind=\"revoke\"}").await,
        ),
        (1.0, 0.0),
        "the member kept its partitions"
    );
}
