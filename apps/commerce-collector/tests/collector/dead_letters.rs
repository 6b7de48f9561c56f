//! What the collector does not apply: events past the dedupe horizon, events the database
//! refuses, and their replay; and a database outage, which dead-letters nothing.

use std::time::Duration;

use crate::pipeline::{created, paid};
use crate::support::{Pipeline, get_json, metric};
use commerce_collector::config::Config;
use commerce_collector::dlq::{self, Filter, Replayed};
use commerce_config::Reader;
use commerce_events::Envelope;
use uuid::{NoContext, Timestamp, Uuid};

/// `e` as recorded `hours` from now (negative: in the past).
fn recorded(mut e: Envelope, hours: i64) -> Envelope {
    let at = chrono::Utc::now() + chrono::Duration::hours(hours);
    e.event_id = Uuid::new_v7(Timestamp::from_unix(NoContext, at.timestamp() as u64, 0));
    e
}

async fn figures(base: &str, product: i64) -> (i64, i64, i64) {
    let m = get_json(&format!("{base}/api/v1/product-metrics/{product}"))
        .await
        .unwrap();
    (
        m["order_count"].as_i64().unwrap(),
        m["sales_quantity"].as_i64().unwrap(),
        m["sales_amount"].as_i64().unwrap(),
    )
}

#[tokio::test]
async fn events_past_the_dedupe_horizon_are_dead_lettered_not_applied() {
    let p = Pipeline::new().await;
    let collector = p.collector().await;
    let mut events: Vec<Envelope> = (0..3).map(|i| paid(i, 1, 1, 100)).collect();
    // The horizon is 192 h: these may have been applied and pruned already.
    events.push(recorded(paid(10, 1, 1, 100), -200));
    events.push(recorded(paid(11, 1, 1, 100), -24 * 30));
    // No time in the id; dated days ahead.
    let mut v4 = paid(12, 1, 1, 100);
    v4.event_id = Uuid::new_v4();
    events.push(v4);
    events.push(recorded(paid(13, 1, 1, 100), 72));
    p.produce(&events).await;

    p.wait_consumed().await;
    assert_eq!(figures(&collector.base, 1).await, (3, 3, 300));
    let mut reasons: Vec<String> = p
        .dead_letters(&p.order_topic, 4)
        .await
        .into_iter()
        .map(|l| l.reason)
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "invalid_event_id",
            "invalid_event_id",
            "past_horizon",
            "past_horizon"
        ]
    );
    assert_eq!(
        metric(
            &collector.base,
            "collector_poison_messages_total{reason=\"past_horizon\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn an_event_the_database_refuses_is_dead_lettered_and_the_rest_of_its_batch_applies() {
    let p = Pipeline::new().await;
    let collector = p
        .collector_with(&[("COLLECTOR_BATCH_WAIT_MS", "1000")])
        .await;
    // PostgreSQL cannot store a NUL in text.
    p.produce(&[
        created(1, "Alpha", 1),
        created(2, "Nul\u{0}name", 1),
        created(3, "Gamma", 1),
    ])
    .await;
    p.produce(&[paid(1, 2, 2, 100)]).await;

    p.wait_consumed().await;
    let letters = p.dead_letters(&p.catalog_topic, 1).await;
    assert_eq!(letters[0].reason, "database");
    assert!(letters[0].error.contains("0x00"), "{letters:?}");
    assert!(
        letters[0]
            .payload
            .as_deref()
            .is_some_and(|p| p.contains("Nul\\u0000name")),
        "the original message is kept: {letters:?}"
    );
    assert_eq!(
        commerce_testkit::count(
            &p.db.url,
            "SELECT count(*) AS n FROM product_catalog WHERE product_id IN (1, 3)"
        )
        .await,
        2,
        "the rest of the batch applied"
    );
    assert_eq!(figures(&collector.base, 2).await, (1, 2, 200));
    assert_eq!(
        metric(
            &collector.base,
            "collector_poison_messages_total{reason=\"database\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_dead_letter_replayed_after_its_cause_is_fixed_applies_once() {
    let p = Pipeline::new().await;
    let collector = p.collector().await;
    let base = collector.base.clone();
    // Each sale fits in 64 bits; their sum does not.
    let half = i64::MAX / 2 + 1;
    p.produce(&[paid(1, 9, 1, half)]).await;
    p.produce(&[paid(2, 9, 1, half)]).await;
    p.wait_consumed().await;
    assert_eq!(figures(&base, 9).await, (1, 1, half));
    let letters = p.dead_letters(&p.order_topic, 1).await;
    assert_eq!(letters[0].reason, "database");
    assert!(letters[0].error.contains("out of range"), "{letters:?}");

    // The operator's fix: product 9's amounts start over (a day row's folded part with it).
    for (table, set) in [
        ("product_metrics", "sales_amount = 0"),
        (
            "product_metrics_daily",
            "sales_amount = 0, folded_amount = 0",
        ),
        ("product_metrics_weekly", "sales_amount = 0"),
        ("product_metrics_monthly", "sales_amount = 0"),
    ] {
        commerce_testkit::count(
            &p.db.url,
            &format!(
                "WITH u AS (UPDATE {table} SET {set} WHERE product_id = 9 RETURNING 1)
                 SELECT count(*) AS n FROM u"
            ),
        )
        .await;
    }
    let config = Config::read(&Reader::new(p.env().vars())).unwrap();
    let only_refused = Filter {
        reasons: vec![commerce_collector::dlq::Reason::Database],
        event_types: vec![commerce_events::EventType::OrderPaid],
        ..Filter::default()
    };
    let mut seen = (0, 0);
    let done = dlq::replay(&config, &only_refused, |read, total| seen = (read, total))
        .await
        .unwrap();
    assert_eq!(
        done,
        Replayed {
            read: 1,
            replayed: 1
        }
    );
    assert_eq!(seen, (1, 1), "progress reaches the end");
    commerce_testkit::until(
        "the replayed sale is applied",
        Duration::from_secs(60),
        async || figures(&base, 9).await.0 == 2,
    )
    .await;
    assert_eq!(figures(&base, 9).await, (2, 2, half));

    // A second replay changes nothing; a filter that matches nothing replays nothing.
    let again = dlq::replay(&config, &only_refused, |_, _| {})
        .await
        .unwrap();
    assert_eq!(again.replayed, 1);
    let none = Filter {
        event_types: vec![commerce_events::EventType::ProductViewed],
        ..Filter::default()
    };
    assert_eq!(
        dlq::replay(&config, &none, |_, _| {}).await.unwrap(),
        Replayed {
            read: 1,
            replayed: 0
        }
    );
    p.wait_consumed().await;
    assert_eq!(
        metric(&base, "collector_events_duplicate_total").await,
        1.0,
        "the second replay was skipped as a duplicate"
    );
    assert_eq!(figures(&base, 9).await, (2, 2, half));
}

#[tokio::test]
async fn a_database_outage_stalls_the_consumer_and_dead_letters_nothing() {
    let p = Pipeline::new().await;
    let collector = p.collector().await;
    let base = collector.base.clone();
    p.produce(&[paid(1, 4, 1, 100)]).await;
    p.wait_consumed().await;

    p.db.set_available(false).await;
    p.produce(&(2..52).map(|i| paid(i, 4, 1, 100)).collect::<Vec<_>>())
        .await;
    let ready = format!("{base}/health/ready");
    let body = commerce_testkit::eventually(
        "readiness names the stalled consumer",
        Duration::from_secs(60),
        async || {
            let res = reqwest::get(&ready).await.map_err(|e| e.to_string())?;
            let status = res.status();
            let body: serde_json::Value = res.json().await.map_err(|e| e.to_string())?;
            let consumer = body["checks"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["name"] == "consumer"))
                .cloned()
                .unwrap_or_default();
            if status == 503 && consumer["status"] == "DOWN" {
                Ok(consumer)
            } else {
                Err(body.to_string())
            }
        },
    )
    .await;
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("database is unavailable")),
        "{body}"
    );

    p.db.set_available(true).await;
    p.wait_consumed().await;
    assert_eq!(figures(&base, 4).await, (51, 51, 5100));
    assert_eq!(
        metric(
            &base,
            "collector_poison_messages_total{reason=\"database\"}"
        )
        .await,
        0.0
    );
    commerce_testkit::until(
        "readiness is UP again",
        Duration::from_secs(30),
        async || reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200),
    )
    .await;
}
