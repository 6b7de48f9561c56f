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
