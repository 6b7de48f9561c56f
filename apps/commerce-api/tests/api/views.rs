//! Product views count once per viewer, product and window, before they reach Kafka.

use std::time::Duration;

use crate::support::{TestApp, spawn_app_with};

/// `product_views_total{result}` as exported (0 before the first).
async fn views(app: &TestApp, result: &str) -> f64 {
    commerce_testkit::metric(
        &app.base,
        &format!("product_views_total{{result=\"{result}\"}}"),
    )
    .await
    .unwrap_or(0.0)
}

/// Views `product` `n` times, 50 at a time, from `address`, signed in with `token` if any.
async fn view(app: &TestApp, product: i64, n: usize, address: &str, token: Option<&str>) {
    for chunk in 0..n.div_ceil(50) {
        let batch = (chunk * 50..n.min((chunk + 1) * 50)).map(|_| {
            let mut req = app
                .client
                .get(format!("{}/api/v1/products/{product}", app.base))
                .header("x-forwarded-for", address);
            if let Some(token) = token {
                req = req.bearer_auth(token);
            }
            async move { req.send().await.unwrap().status() }
        });
        for status in futures::future::join_all(batch).await {
            assert_eq!(status, reqwest::StatusCode::OK);
        }
    }
}

#[tokio::test]
async fn a_thousand_anonymous_views_from_one_address_count_as_one() {
    let app = spawn_app_with(&[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let product = app.product(app.brand().await, 1000, 10).await;
    let (_, token) = app.user_with_points("viewer", 0).await;

    view(&app, product, 1000, "203.0.113.5", None).await;
    view(&app, product, 10, "198.51.100.9", None).await;
    // A signed-in user counts as themselves, whatever the address.
    view(&app, product, 5, "203.0.113.5", Some(&token)).await;
    // Another address in the same IPv6 /64 is the same viewer.
    view(&app, product, 3, "2001:db8:1:2::1", None).await;
    view(&app, product, 3, "2001:db8:1:2::ffff", None).await;

    commerce_testkit::until(
        "every view was counted or set aside",
        Duration::from_secs(10),
        async || views(&app, "published").await + views(&app, "repeated").await >= 1021.0,
    )
    .await;
    assert_eq!(views(&app, "published").await, 4.0);
    assert_eq!(views(&app, "repeated").await, 1017.0);
    assert_eq!(views(&app, "dropped").await, 0.0);

    // Every instance agrees through Redis: the first views are remembered there.
    let mut conn = app.state.cache.conn().await.unwrap();
    let keys: Vec<String> = commerce_cache::redis::cmd("KEYS")
        .arg(app.state.cache.key(&format!("views:{product}:*")))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 4, "{keys:?}");
}

#[tokio::test]
async fn views_reach_kafka_as_one_event_per_product_and_second_carrying_their_count() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Message;

    let app = spawn_app_with(&[("TRUSTED_PROXIES", "127.0.0.1")]).await;
    let product = app.product(app.brand().await, 1000, 10).await;
    let kafka = commerce_testkit::TestKafka::new().await;
    let consumer: StreamConsumer = kafka
        .settings
        .consumer_config(&kafka.group("views-check"))
        .create()
        .unwrap();
    consumer
        .subscribe(&[&app.state.config.catalog_topic])
        .unwrap();

    // 40 viewers in four bursts over about a second, each viewing twice.
    for burst in 0..4 {
        for viewer in 0..10 {
            view(
                &app,
                product,
                2,
                &format!("203.0.113.{}", burst * 10 + viewer),
                None,
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let mut events = Vec::new();
    let mut counted = 0;
    while counted < 40 {
        let msg = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("the views are published")
            .unwrap();
        if msg.key() != Some(product.to_string().as_bytes()) {
            continue;
        }
        let envelope: serde_json::Value = serde_json::from_slice(msg.payload().unwrap()).unwrap();
        if envelope["event_type"] != "ProductViewed" {
            continue; // the product's creation, through the relay
        }
        let count = envelope["payload"]["count"].as_i64().unwrap_or(1);
        counted += count;
        events.push((msg.timestamp().to_millis().unwrap(), count));
    }
    assert_eq!(counted, 40, "{events:?}");
    assert_eq!(views(&app, "published").await, 40.0);
    assert_eq!(views(&app, "repeated").await, 40.0);
    // At most one event a second: the views spanned about 1.2 s.
    assert!(events.len() <= 3, "{events:?}");
    for pair in events.windows(2) {
        assert!(pair[1].0 - pair[0].0 >= 900, "{events:?}");
    }
}
