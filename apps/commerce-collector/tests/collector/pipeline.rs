//! The collector against the real broker, PostgreSQL and Redis: batches applied exactly once in
//! effect, poison messages dead-lettered, crashes and a second member losing nothing and
//! counting nothing twice.

use crate::support::{Pipeline, eventually, get_json};
use commerce_events::{
    Envelope, Event, LikeChanged, OrderCancelled, OrderLine, OrderPlaced, ProductSnapshot,
    ProductViewed,
};

pub(crate) fn paid(order_id: i64, product_id: i64, quantity: i64, unit_price: i64) -> Envelope {
    Envelope::new(Event::OrderPaid(OrderPlaced {
        order_id,
        user_id: 1,
        lines: vec![OrderLine {
            product_id,
            quantity,
            unit_price,
        }],
        total_amount: quantity * unit_price,
        discount_amount: 0,
        final_amount: quantity * unit_price,
        payment_method: commerce_events::PaymentKind::Point,
    }))
}

pub(crate) fn created(product_id: i64, name: &str, version: i64) -> Envelope {
    Envelope::new(Event::ProductCreated(ProductSnapshot {
        product_id,
        brand_id: 1,
        brand_name: "Acme".into(),
        name: name.into(),
        price: 1000,
        stock: 10,
        version,
    }))
}

#[tokio::test]
async fn events_become_metrics_and_rankings() {
    let p = Pipeline::new().await;
    let _task = p.collector().await;
    let base = _task.base.clone();
    let mut events = vec![created(1, "Alpha", 1), created(2, "Beta", 1)];
    events.push(Envelope::new(Event::ProductViewed(ProductViewed {
        product_id: 1,
        user_id: None,
        count: 1,
    })));
    events.push(Envelope::new(Event::ProductLiked(LikeChanged {
        product_id: 2,
        user_id: 9,
    })));
    events.push(paid(100, 2, 3, 1000));
    events.push(paid(101, 1, 1, 1000));
    // Not a sale on its own.
    if let Event::OrderPaid(o) = paid(102, 1, 50, 1000).event {
        events.push(Envelope::new(Event::OrderCreated(o)));
    }
    p.produce(&events).await;

    let m2 = eventually(&format!("{base}/api/v1/product-metrics/2"), 60, |b| {
        b["order_count"] == 1
    })
    .await;
    assert_eq!(
        m2,
        serde_json::json!({"product_id": 2, "view_count": 0, "like_count": 1, "order_count": 1, "sales_quantity": 3, "sales_amount": 3000})
    );
    let m1 = eventually(&format!("{base}/api/v1/product-metrics/1"), 30, |b| {
        b["order_count"] == 1
    })
    .await;
    assert_eq!(m1["sales_quantity"], 1);
    assert_eq!(m1["view_count"], 1);

    let ranking = eventually(&format!("{base}/api/v1/rankings?period=daily"), 30, |b| {
        b["total_elements"] == 2
    })
    .await;
    // Beta: 0.2·1 + 0.7·3 = 2.3; Alpha: 0.1·1 + 0.7·1 = 0.8.
    assert_eq!(ranking["content"][0]["product_id"], 2);
    assert_eq!(ranking["content"][0]["name"], "Beta");
    assert_eq!(ranking["content"][0]["rank"], 1);
    assert!((ranking["content"][0]["score"].as_f64().unwrap() - 2.3).abs() < 1e-9);
    assert_eq!(ranking["content"][1]["product_id"], 1);
    let rank = eventually(&format!("{base}/api/v1/rankings/products/1"), 10, |b| {
        b["rank"] == 2
    })
    .await;
    assert_eq!(rank["period"], "daily");
    let unranked = eventually(&format!("{base}/api/v1/rankings/products/77"), 10, |_| true).await;
    assert_eq!(unranked["rank"], serde_json::Value::Null);

    // The real-time ranking in Redis holds the same scores.
    let cache =
        commerce_cache::Cache::new(&commerce_testkit::redis_url(), &p.redis_prefix).unwrap();
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::Asia::Seoul)
        .date_naive();
    let key = commerce_collector::ranking::live::key(
        &cache,
        commerce_collector::ranking::Ranking::of(commerce_collector::ranking::Period::Daily, today),
    );
    let mut redis = cache.conn().await.unwrap();
    let top: Vec<(i64, f64)> = redis::cmd("ZRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut redis)
        .await
        .unwrap();
    // Stored negated, so that ZRANGE is the ranking's order (ties by product id ascending),
    // and bit for bit the scores the API served.
    let served: Vec<(i64, f64)> = [0, 1]
        .map(|i| {
            let row = &ranking["content"][i];
            (
                row["product_id"].as_i64().unwrap(),
                -row["score"].as_f64().unwrap(),
            )
        })
        .to_vec();
    assert_eq!(top, served);

    for bad in ["period=yearly", "date=2026-13-01", "size=0", "page=-1"] {
        let res = reqwest::get(format!("{base}/api/v1/rankings?{bad}"))
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{bad}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
    }
}

#[tokio::test]
async fn the_same_event_delivered_three_times_is_counted_once() {
    let p = Pipeline::new().await;
    let _task = p.collector().await;
    let base = _task.base.clone();
    let once = paid(1, 5, 2, 500);
    p.produce(&[once.clone(), once.clone(), once.clone(), paid(2, 5, 1, 500)])
        .await;
    let m = eventually(&format!("{base}/api/v1/product-metrics/5"), 60, |b| {
        b["order_count"] == 2
    })
    .await;
    assert_eq!(m["sales_quantity"], 3);
    // Every delivery, the two repeats included, has been handled: still counted once.
    p.wait_consumed().await;
    let m = get_json(&format!("{base}/api/v1/product-metrics/5"))
        .await
        .unwrap();
    assert_eq!(
        (
            m["order_count"].as_i64(),
            m["sales_quantity"].as_i64(),
            m["sales_amount"].as_i64()
        ),
        (Some(2), Some(3), Some(1500))
    );
    assert_eq!(
        commerce_testkit::count(&p.db.url, "SELECT count(*) AS n FROM event_handled").await,
        2
    );
}

#[tokio::test]
async fn cancellations_subtract_only_paid_sales_and_old_snapshots_never_win() {
    let p = Pipeline::new().await;
    let _task = p.collector().await;
    let base = _task.base.clone();
    let sale = paid(1, 8, 4, 100);
    let paid_at = sale.occurred_at;
    let lines = vec![OrderLine {
        product_id: 8,
        quantity: 4,
        unit_price: 100,
    }];
    p.produce(&[
        created(8, "New name", 3),
        created(8, "Old name", 2),
        sale,
        Envelope::new(Event::OrderCancelled(OrderCancelled {
            order_id: 1,
            user_id: 1,
            lines: lines.clone(),
            was_paid: true,
            paid_at: Some(paid_at),
        })),
        Envelope::new(Event::OrderCancelled(OrderCancelled {
            order_id: 2,
            user_id: 1,
            lines,
            was_paid: false,
            paid_at: None,
        })),
        paid(3, 8, 1, 100),
    ])
    .await;
    let m = eventually(&format!("{base}/api/v1/product-metrics/8"), 60, |b| {
        b["sales_quantity"] == 1 && b["order_count"] == 1
    })
    .await;
    assert_eq!(m["sales_amount"], 100);
    let r = eventually(&format!("{base}/api/v1/rankings"), 10, |b| {
        b["total_elements"] == 1
    })
    .await;
    assert_eq!(r["content"][0]["name"], "New name");
}

#[tokio::test]
async fn a_poison_message_goes_to_the_dead_letter_topic_and_the_good_events_around_it_apply() {
    let p = Pipeline::new().await;
    let _task = p.collector().await;
    let base = _task.base.clone();
    let producer = p.kafka.settings.producer("test").unwrap();
    p.produce(&[paid(1, 3, 1, 10)]).await;
    p.produce_raw(&producer, &p.order_topic, "3", b"{not json")
        .await;
    let unknown = serde_json::json!({"event_id": uuid::Uuid::now_v7(), "event_type": "OrderTeleported", "aggregate_type": "Order",
        "aggregate_id": 3, "occurred_at": "2026-11-21T00:00:00Z", "schema_version": 1, "payload": {}});
    p.produce_raw(
        &producer,
        &p.order_topic,
        "3",
        unknown.to_string().as_bytes(),
    )
    .await;
    p.produce(&[paid(2, 3, 1, 10)]).await;

    let m = eventually(&format!("{base}/api/v1/product-metrics/3"), 60, |b| {
        b["order_count"] == 2
    })
    .await;
    assert_eq!(m["sales_quantity"], 2);

    let letters = p.dead_letters(&p.order_topic, 2).await;
    for letter in &letters {
        assert_eq!(letter.source_topic, p.order_topic);
        assert_eq!(letter.reason, "invalid_envelope");
        assert!(letter.source_offset.parse::<i64>().is_ok(), "{letter:?}");
        assert!(
            letter.error.contains("not a valid event envelope"),
            "{letter:?}"
        );
    }
}

#[tokio::test]
async fn a_collector_killed_mid_stream_and_replaced_counts_every_event_once() {
    let p = Pipeline::new().await;
    let events: Vec<Envelope> = (0..600).map(|i| paid(i, 1 + i % 10, 1, 100)).collect();
    let first = p.collector().await;
    let base = first.base.clone();
    p.produce(&events[..300]).await;
    // Kill it (no graceful shutdown, no final commit) once it has applied some events.
    eventually(&format!("{base}/api/v1/product-metrics/1"), 60, |b| {
        b["order_count"].as_i64().unwrap_or(0) >= 5
    })
    .await;
    first.kill();
    p.produce(&events[300..]).await;
    let _second = p.collector().await;
    let base = _second.base.clone();
    for product in 1..=10 {
        let m = eventually(
            &format!("{base}/api/v1/product-metrics/{product}"),
            90,
            |b| b["order_count"] == 60,
        )
        .await;
        assert_eq!(m["sales_quantity"], 60);
    }
    // No late double count: once the group has committed every message, redeliveries of what
    // the killed collector applied included, each product still has exactly its 60.
    p.wait_consumed().await;
    for product in 1..=10 {
        let m = get_json(&format!("{base}/api/v1/product-metrics/{product}"))
            .await
            .unwrap();
        assert_eq!(
            (m["order_count"].as_i64(), m["sales_quantity"].as_i64()),
            (Some(60), Some(60))
        );
    }
}

#[tokio::test]
async fn two_collectors_in_one_group_split_the_work_and_count_every_event_once() {
    let p = Pipeline::new().await;
    let _a = p.collector().await;
    let base_a = _a.base.clone();
    let _b = p.collector().await;
    let base_b = _b.base.clone();
    let events: Vec<Envelope> = (0..400).map(|i| paid(i, 1 + i % 4, 2, 100)).collect();
    p.produce(&events).await;
    for product in 1..=4 {
        let m = eventually(
            &format!("{base_a}/api/v1/product-metrics/{product}"),
            90,
            |b| b["order_count"] == 100,
        )
        .await;
        assert_eq!(m["sales_quantity"], 200);
    }
    p.wait_consumed().await;
    for product in 1..=4 {
        let m = get_json(&format!("{base_b}/api/v1/product-metrics/{product}"))
            .await
            .unwrap();
        assert_eq!(
            (m["order_count"].as_i64(), m["sales_quantity"].as_i64()),
            (Some(100), Some(200))
        );
    }
}
