//! Through everything: orders and likes placed on the API travel through the outbox, the relay,
//! the broker and the collector into metrics and rankings, once, even when the relay publishes
//! rows again (a crash between publish and mark).

use std::time::Duration;

use crate::support::{Api, Pipeline, eventually, get_json, metric};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::json;

#[tokio::test]
async fn orders_and_likes_on_the_api_reach_the_rankings_once() {
    let p = Pipeline::new().await;
    let api = Api::start(&p).await;
    let _task = p.collector().await;
    let collector = _task.base.clone();

    let admin = api
        .token("admin", commerce_api::config::DEV_ADMIN_PASSWORD)
        .await;
    let brand = api
        .post("/api/v1/admin/brands", &admin, json!({"name": "Acme"}))
        .await["id"]
        .as_i64()
        .unwrap();
    let hot = api
        .post(
            "/api/v1/admin/products",
            &admin,
            json!({"brand_id": brand, "name": "Hot", "price": 1000, "stock": 100}),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let cold = api
        .post(
            "/api/v1/admin/products",
            &admin,
            json!({"brand_id": brand, "name": "Cold", "price": 500, "stock": 100}),
        )
        .await["id"]
        .as_i64()
        .unwrap();
    let signup = json!({"login_id": "buyer", "password": "buyer-password", "name": "Buyer", "email": "b@example.com"});
    api.client
        .post(format!("{}/api/v1/users", api.base))
        .json(&signup)
        .send()
        .await
        .unwrap();
    let buyer = api.token("buyer", "buyer-password").await;
    api.grant_points(&admin, &buyer, 100_000).await;

    let order = |product: i64, quantity: i64| json!({"items": [{"product_id": product, "quantity": quantity}], "payment": {"method": "POINT"}});
    api.post("/api/v1/orders", &buyer, order(hot, 3)).await;
    api.post("/api/v1/orders", &buyer, order(cold, 1)).await;
    let cancelled = api.post("/api/v1/orders", &buyer, order(cold, 2)).await["order_id"]
        .as_i64()
        .unwrap();
    api.post(
        &format!("/api/v1/orders/{cancelled}/cancel"),
        &buyer,
        json!({}),
    )
    .await;
    api.post(&format!("/api/v1/products/{hot}/likes"), &buyer, json!({}))
        .await;

    let m = eventually(
        &format!("{collector}/api/v1/product-metrics/{hot}"),
        90,
        |b| b["order_count"] == 1 && b["like_count"] == 1,
    )
    .await;
    assert_eq!(
        (m["sales_quantity"].as_i64(), m["sales_amount"].as_i64()),
        (Some(3), Some(3000))
    );
    let m = eventually(
        &format!("{collector}/api/v1/product-metrics/{cold}"),
        60,
        |b| b["order_count"] == 1 && b["sales_quantity"] == 1,
    )
    .await;
    assert_eq!(m["sales_amount"], 500);
    let ranking = eventually(&format!("{collector}/api/v1/rankings"), 30, |b| {
        b["content"][0]["name"] == "Hot"
    })
    .await;
    assert_eq!(ranking["content"][0]["brand_name"], "Acme");

    // Every outbox row was published and marked.
    let mut conn = AsyncPgConnection::establish(&api.db.url).await.unwrap();
    let unpublished = "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL";
    let all_published = async || match commerce_testkit::count(&api.db.url, unpublished).await {
        0 => Ok(()),
        n => Err(format!("{n} rows unpublished")),
    };
    commerce_testkit::eventually(
        "the relay publishes every row",
        Duration::from_secs(30),
        all_published,
    )
    .await;

    // A relay that crashed between publishing and marking publishes the rows again: nothing
    // is counted twice.
    diesel::sql_query("UPDATE outbox SET published_at = NULL")
        .execute(&mut conn)
        .await
        .unwrap();
    commerce_testkit::eventually(
        "the relay republishes every row",
        Duration::from_secs(30),
        all_published,
    )
    .await;
    // Every republished message has been handled (the group committed them all): the
    // collector saw the repeats and counted none of them.
    p.wait_consumed().await;
    let republished =
        commerce_testkit::count(&api.db.url, "SELECT count(*) AS n FROM outbox").await;
    let duplicates = metric(&collector, "collector_events_duplicate_total").await;
    assert!(
        duplicates >= republished as f64,
        "{republished} rows were republished but only {duplicates} duplicates were seen"
    );
    let m = get_json(&format!("{collector}/api/v1/product-metrics/{hot}"))
        .await
        .unwrap();
    assert_eq!(
        (
            m["order_count"].as_i64(),
            m["sales_quantity"].as_i64(),
            m["like_count"].as_i64()
        ),
        (Some(1), Some(3), Some(1))
    );
    let m = get_json(&format!("{collector}/api/v1/product-metrics/{cold}"))
        .await
        .unwrap();
    assert_eq!(
        (m["order_count"].as_i64(), m["sales_quantity"].as_i64()),
        (Some(1), Some(1))
    );
}
