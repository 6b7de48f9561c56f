//! How far behind the collector is: consumer lag per partition from librdkafka's statistics,
//! and each event's age when applied.

use std::time::Duration;

use crate::pipeline::paid;
use crate::support::{Pipeline, metric};

/// The sum of `collector_consumer_lag` over every partition `base` exports.
async fn total_lag(base: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("collector_consumer_lag{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn while_the_database_is_down_consumer_lag_counts_the_unapplied_events() {
    let p = Pipeline::new().await;
    let collector = p.collector().await;
    let base = collector.base.clone();
    // Events for several products, so every partition has had something consumed.
    p.produce(&(1..=12).map(|i| paid(i, i, 1, 100)).collect::<Vec<_>>())
        .await;
    p.wait_consumed().await;
    commerce_testkit::until(
        "the lag reads 0 once all is applied",
        Duration::from_secs(15),
        async || total_lag(&base).await == 0.0,
    )
    .await;
    assert_eq!(
        metric(&base, "collector_event_age_seconds_count").await,
        12.0
    );

    p.db.set_available(false).await;
    p.produce(
        &(13..=62)
            .map(|i| paid(i, i % 12 + 1, 1, 100))
            .collect::<Vec<_>>(),
    )
    .await;
    commerce_testkit::until(
        "the lag counts the 50 unapplied events",
        Duration::from_secs(30),
        async || total_lag(&base).await == 50.0,
    )
    .await;
    assert_eq!(
        metric(&base, "collector_event_age_seconds_count").await,
        12.0
    );

    p.db.set_available(true).await;
    p.wait_consumed().await;
    commerce_testkit::until(
        "the lag is back to 0",
        Duration::from_secs(30),
        async || total_lag(&base).await == 0.0,
    )
    .await;
    assert_eq!(
        metric(&base, "collector_event_age_seconds_count").await,
        62.0
    );
}
