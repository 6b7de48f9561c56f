//! Orders paid by points, over HTTP against real PostgreSQL and Redis.

use std::sync::Arc;

use crate::support::{TestApp, spawn_app};
use reqwest::StatusCode;
use serde_json::json;

fn order(product_id: i64, quantity: i64) -> serde_json::Value {
    json!({"items": [{"product_id": product_id, "quantity": quantity}], "payment": {"method": "POINT"}})
}

async fn setup(price: i64, stock: i64, points: i64) -> (TestApp, i64, i64, String) {
    let app = spawn_app().await;
    let brand = app.brand().await;
    let product = app.product(brand, price, stock).await;
    let (user, token) = app.user_with_points("buyer", points).await;
    (app, product, user, token)
}

#[tokio::test]
async fn a_paid_order_takes_stock_and_points_and_writes_both_events() {
    let (app, product, user, token) = setup(1500, 10, 10_000).await;
    let (status, body) = app
        .post(
            "/api/v1/orders",
            Some(&token),
            json!({"items": [{"product_id": product, "quantity": 2}, {"product_id": product, "quantity": 1}],
                   "payment": {"method": "POINT"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "PAID");
    assert_eq!(body["total_amount"], 4500);
    assert_eq!(body["final_amount"], 4500);
    assert_eq!(
        body["items"],
        json!([{"product_id": product, "quantity": 3, "unit_price": 1500}])
    );
    assert_eq!(app.stock(product).await, 7);
    assert_eq!(app.balance(user).await, 5500);
    let types = app.outbox_types().await;
    assert_eq!(&types[types.len() - 2..], ["OrderCreated", "OrderPaid"]);

    let order_id = body["order_id"].as_i64().unwrap();
    let (status, fetched) = app
        .get(&format!("/api/v1/orders/{order_id}"), Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched["final_amount"], 4500);
    let (status, page) = app.get("/api/v1/orders?page=0&size=10", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total_elements"], 1);
}

#[tokio::test]
async fn failures_change_nothing() {
    let (app, product, user, token) = setup(1000, 5, 3000).await;
    let events_before = app.outbox_types().await.len();

    let (status, body) = app
        .post("/api/v1/orders", Some(&token), order(product, 6))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("INSUFFICIENT_STOCK"))
    );

    let (status, body) = app
        .post("/api/v1/orders", Some(&token), order(product, 4))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("INSUFFICIENT_POINTS"))
    );

    let (status, body) = app
        .post("/api/v1/orders", Some(&token), order(999_999, 1))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("PRODUCT_NOT_FOUND"))
    );

    for bad in [
        json!({"items": [], "payment": {"method": "POINT"}}),
        json!({"items": [{"product_id": product, "quantity": 0}], "payment": {"method": "POINT"}}),
        json!({"items": [{"product_id": product, "quantity": 101}], "payment": {"method": "POINT"}}),
        json!({"items": [{"product_id": product, "quantity": -1}], "payment": {"method": "POINT"}}),
        json!({"items": [{"product_id": product, "quantity": 1}], "payment": {"method": "CASH"}}),
        json!({"items": [{"product_id": product, "quantity": "1"}], "payment": {"method": "POINT"}}),
        json!({"items": [{"product_id": product, "quantity": 1}], "payment": {"method": "POINT"}, "status": "PAID"}),
    ] {
        let (status, body) = app.post("/api/v1/orders", Some(&token), bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} -> {body}");
        assert_eq!(body["code"], "VALIDATION_FAILED", "{body}");
    }
    let too_many: Vec<_> = (1..=51)
        .map(|i| json!({"product_id": i, "quantity": 1}))
        .collect();
    let (status, _) = app
        .post(
            "/api/v1/orders",
            Some(&token),
            json!({"items": too_many, "payment": {"method": "POINT"}}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    assert_eq!(app.stock(product).await, 5);
    assert_eq!(app.balance(user).await, 3000);
    assert_eq!(app.outbox_types().await.len(), events_before);
    assert_eq!(app.count("SELECT count(*) AS n FROM orders").await, 0);
}

#[tokio::test]
async fn orders_need_a_token_and_other_users_orders_are_invisible() {
    let (app, product, _user, token) = setup(100, 5, 1000).await;
    let (status, body) = app.post("/api/v1/orders", None, order(product, 1)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("UNAUTHENTICATED"))
    );
    let (status, _) = app
        .post("/api/v1/orders", Some("garbage"), order(product, 1))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (_, placed) = app
        .post("/api/v1/orders", Some(&token), order(product, 1))
        .await;
    let id = placed["order_id"].as_i64().unwrap();
    let (_, other) = app.user_with_points("other", 0).await;
    let (status, _) = app.get(&format!("/api/v1/orders/{id}"), Some(&other)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app
        .post(
            &format!("/api/v1/orders/{id}/cancel"),
            Some(&other),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.stock(product).await,
        4,
        "the other user's cancel changed nothing"
    );
}

#[tokio::test]
async fn cancel_restores_everything_once() {
    let (app, product, user, token) = setup(1000, 5, 5000).await;
    let (_, placed) = app
        .post("/api/v1/orders", Some(&token), order(product, 2))
        .await;
    let id = placed["order_id"].as_i64().unwrap();
    assert_eq!(app.balance(user).await, 3000);

    for _ in 0..2 {
        let (status, body) = app
            .post(
                &format!("/api/v1/orders/{id}/cancel"),
                Some(&token),
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body, json!({"order_id": id, "status": "CANCELLED"}));
    }
    assert_eq!(app.stock(product).await, 5);
    assert_eq!(app.balance(user).await, 5000, "refunded exactly once");
    let types = app.outbox_types().await;
    assert_eq!(types.iter().filter(|t| *t == "OrderCancelled").count(), 1);
    assert_eq!(
        app.count("SELECT count(*) AS n FROM point_ledger WHERE kind = 'REFUND'")
            .await,
        1
    );
    assert_eq!(
        app.events_dated_by_paid_at(id).await,
        2,
        "the sale and its cancellation are dated by the same instant"
    );
}

#[tokio::test]
async fn concurrent_cancels_refund_once() {
    let (app, product, user, token) = setup(1000, 5, 5000).await;
    let (_, placed) = app
        .post("/api/v1/orders", Some(&token), order(product, 2))
        .await;
    let id = placed["order_id"].as_i64().unwrap();
    let app = Arc::new(app);
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (app, token) = (app.clone(), token.clone());
            tokio::spawn(async move {
                app.post(
                    &format!("/api/v1/orders/{id}/cancel"),
                    Some(&token),
                    json!({}),
                )
                .await
                .0
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(app.stock(product).await, 5);
    assert_eq!(app.balance(user).await, 5000);
}

#[tokio::test]
async fn two_hundred_concurrent_orders_for_one_hundred_units_sell_exactly_one_hundred() {
    let (app, product, _user, _token) = setup(10, 100, 0).await;
    let mut buyers = Vec::new();
    for i in 0..200 {
        buyers.push(app.user_with_points(&format!("buyer{i}"), 1000).await.1);
    }
    let app = Arc::new(app);
    let tasks: Vec<_> = buyers
        .into_iter()
        .map(|token| {
            let app = app.clone();
            tokio::spawn(async move {
                app.post("/api/v1/orders", Some(&token), order(product, 1))
                    .await
            })
        })
        .collect();
    let (mut created, mut refused) = (0, 0);
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {
                assert_eq!(body["code"], "INSUFFICIENT_STOCK");
                refused += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!((created, refused), (100, 100));
    assert_eq!(app.stock(product).await, 0);
    assert_eq!(
        app.count("SELECT count(*) AS n FROM orders WHERE status = 'PAID'")
            .await,
        100
    );
    assert_eq!(
        app.count("SELECT coalesce(sum(quantity), 0)::bigint AS n FROM order_items")
            .await,
        100
    );
}

#[tokio::test]
async fn an_idempotency_key_replays_the_original_order_and_refuses_a_different_body() {
    let (app, product, user, token) = setup(1000, 10, 10_000).await;
    let send = |body: serde_json::Value| {
        app.client
            .post(format!("{}/api/v1/orders", app.base))
            .bearer_auth(&token)
            .header("Idempotency-Key", "order-key-1")
            .json(&body)
            .send()
    };
    let first = send(order(product, 2)).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: serde_json::Value = first.json().await.unwrap();
    let again = send(order(product, 2)).await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(first, again, "same status and body");
    assert_eq!(app.balance(user).await, 8000, "charged once");

    let different = send(order(product, 3)).await.unwrap();
    assert_eq!(different.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: serde_json::Value = different.json().await.unwrap();
    assert_eq!(body["code"], "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(app.stock(product).await, 8);
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_refused_alike_by_orders_and_points_and_changes_nothing() {
    let (app, product, user, token) = setup(1000, 10, 10_000).await;
    let long = "k".repeat(256);
    for key in ["has space", long.as_str(), ""] {
        for (path, body) in [
            ("/api/v1/orders", order(product, 1)),
            (
                "/api/v1/points/charge",
                serde_json::json!({"amount": 100, "card_type": "KB", "card_no": "1234-5678-9012-3456"}),
            ),
        ] {
            let res = app
                .client
                .post(format!("{}{path}", app.base))
                .bearer_auth(&token)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::BAD_REQUEST, "{path} {key:?}");
            let problem: serde_json::Value = res.json().await.unwrap();
            assert_eq!(problem["code"], "INVALID_IDEMPOTENCY_KEY", "{path} {key:?}");
        }
    }
    assert_eq!(app.stock(product).await, 10);
    assert_eq!(app.balance(user).await, 10_000);
    assert_eq!(app.count("SELECT count(*) AS n FROM orders").await, 0);
}

#[tokio::test]
async fn racing_requests_with_one_idempotency_key_create_one_order() {
    let (app, product, user, token) = setup(1000, 100, 100_000).await;
    let app = Arc::new(app);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (app, token) = (app.clone(), token.clone());
            tokio::spawn(async move {
                let res = app
                    .client
                    .post(format!("{}/api/v1/orders", app.base))
                    .bearer_auth(&token)
                    .header("Idempotency-Key", "same-key")
                    .json(&order(product, 1))
                    .send()
                    .await
                    .unwrap();
                (res.status(), res.json::<serde_json::Value>().await.unwrap())
            })
        })
        .collect();
    let mut ids = std::collections::BTreeSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.insert(body["order_id"].as_i64().unwrap());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(app.count("SELECT count(*) AS n FROM orders").await, 1);
    assert_eq!(app.stock(product).await, 99);
    assert_eq!(app.balance(user).await, 99_000);
}

#[tokio::test]
async fn a_coupon_discounts_the_order_and_comes_back_on_cancel() {
    let (app, product, user, token) = setup(10_000, 10, 100_000).await;
    let (status, coupon) = app
        .post(
            "/api/v1/admin/coupons",
            Some(&app.admin),
            json!({"name": "10% off", "discount_type": "RATE", "discount_value": 10,
                   "min_order_amount": 15000, "max_discount_amount": 5000, "total_quantity": 10}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{coupon}");
    let coupon_id = coupon["id"].as_i64().unwrap();
    let (status, issued) = app
        .post(
            &format!("/api/v1/coupons/{coupon_id}/issue"),
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    let uc = issued["user_coupon_id"].as_i64().unwrap();

    let with_coupon = |q: i64| json!({"items": [{"product_id": product, "quantity": q}], "user_coupon_id": uc, "payment": {"method": "POINT"}});
    // Below the minimum: refused, nothing changed.
    let (status, body) = app
        .post("/api/v1/orders", Some(&token), with_coupon(1))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("COUPON_NOT_USABLE"))
    );
    assert_eq!(app.stock(product).await, 10);

    let (status, placed) = app
        .post("/api/v1/orders", Some(&token), with_coupon(2))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{placed}");
    assert_eq!(placed["discount_amount"], 2000);
    assert_eq!(placed["final_amount"], 18_000);
    assert_eq!(app.balance(user).await, 82_000);

    // Used: a second order with it is refused.
    let (status, body) = app
        .post("/api/v1/orders", Some(&token), with_coupon(2))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("COUPON_NOT_USABLE"))
    );
    let (_, mine) = app.get("/api/v1/users/me/coupons", Some(&token)).await;
    assert_eq!(mine[0]["status"], "USED");

    // Another user's coupon is not usable.
    let (_, other) = app.user_with_points("other", 100_000).await;
    let (status, _) = app
        .post("/api/v1/orders", Some(&other), with_coupon(2))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let id = placed["order_id"].as_i64().unwrap();
    let (status, _) = app
        .post(
            &format!("/api/v1/orders/{id}/cancel"),
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, mine) = app.get("/api/v1/users/me/coupons", Some(&token)).await;
    assert_eq!(mine[0]["status"], "AVAILABLE");
    assert_eq!(app.balance(user).await, 100_000);
}

#[tokio::test]
async fn a_page_of_orders_costs_the_same_queries_whatever_its_length() {
    use diesel::connection::InstrumentationEvent;
    use diesel_async::AsyncConnection as _;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let (app, product, user, token) = setup(100, 100, 100_000).await;
    let (few, _) = app.user_with_points("few", 0).await;
    for _ in 0..20 {
        let (status, body) = app
            .post("/api/v1/orders", Some(&token), order(product, 1))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let queries = Arc::new(AtomicUsize::new(0));
    let mut conn = app.conn().await;
    let counted = queries.clone();
    conn.set_instrumentation(move |event: InstrumentationEvent<'_>| {
        if matches!(event, InstrumentationEvent::StartQuery { .. }) {
            counted.fetch_add(1, Ordering::Relaxed);
        }
    });
    let mut cost = Vec::new();
    for user_id in [user, few] {
        let before = queries.load(Ordering::Relaxed);
        let (orders, _) = commerce_api::domain::orders::list(&mut conn, user_id, 0, 20)
            .await
            .unwrap();
        cost.push((orders.len(), queries.load(Ordering::Relaxed) - before));
    }
    assert_eq!((cost[0].0, cost[1].0), (20, 0));
    assert_eq!(
        cost[0].1, cost[1].1,
        "queries do not grow with the page: {cost:?}"
    );
    // The orders and their count, lines, payments, and partner orders with their lines and
    // payment splits.
    assert!(cost[0].1 <= 7, "{cost:?}");
}

#[tokio::test]
async fn an_order_that_outlasts_the_order_timeout_is_a_503_that_leaves_nothing_behind() {
    let app = crate::support::spawn_app_with(&[("ORDER_TIMEOUT_MS", "300")]).await;
    let brand = app.brand().await;
    let product = app.product(brand, 1000, 5).await;
    let (user, token) = app.user_with_points("patient", 3000).await;
    let events_before = app.outbox_types().await.len();
    let send = || {
        app.client
            .post(format!("{}/api/v1/orders", app.base))
            .bearer_auth(&token)
            .header("Idempotency-Key", "slow-order")
            .json(&order(product, 1))
            .send()
    };

    // The product's row is held: the order's stock update waits, past the limit.
    let release = app.hold_row_lock("products", product).await;
    let timed_out = send().await.unwrap();
    assert_eq!(timed_out.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        timed_out.headers()["retry-after"],
        "1",
        "a retry is invited"
    );
    let body: serde_json::Value = timed_out.json().await.unwrap();
    assert_eq!(body["code"], "ORDER_TIMEOUT", "{body}");
    // Answered while the lock is still held, and nothing of the order is left.
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM orders WHERE user_id = {user}"
        ))
        .await,
        0
    );
    assert_eq!(app.stock(product).await, 5);
    assert_eq!(app.balance(user).await, 3000);
    assert_eq!(app.outbox_types().await.len(), events_before);

    // Once the row is free, the same key places the order, once.
    release.send(()).unwrap();
    let placed = send().await.unwrap();
    assert_eq!(placed.status(), StatusCode::CREATED);
    let again = send().await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM orders WHERE user_id = {user}"
        ))
        .await,
        1
    );
    assert_eq!(app.stock(product).await, 4);
    assert_eq!(app.balance(user).await, 2000);
}
