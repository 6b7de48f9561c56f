//! Limited drops: a per-user limit that holds under a race, and a sale window.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::{TestApp, spawn_app};

async fn drop_product(app: &TestApp, rules: Value) -> i64 {
    let mut body =
        json!({"brand_id": app.brand().await, "name": "Sneaker", "price": 1000, "stock": 500});
    body.as_object_mut()
        .unwrap()
        .extend(rules.as_object().unwrap().clone());
    let (status, product) = app
        .post("/api/v1/admin/products", Some(&app.admin), body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{product}");
    product["id"].as_i64().unwrap()
}

fn order(product: i64, quantity: i64) -> Value {
    json!({"items": [{"product_id": product, "quantity": quantity}], "payment": {"method": "POINT"}})
}

#[tokio::test]
async fn fifty_racing_orders_by_one_user_for_a_one_per_customer_drop_give_one_order() {
    let app = spawn_app().await;
    let product = drop_product(&app, json!({"max_per_user": 1})).await;
    let (user, token) = app.user_with_points("racer", 1_000_000).await;
    let attempts = (0..50).map(|_| {
        let (client, base, token) = (app.client.clone(), app.base.clone(), token.clone());
        async move {
            let res = client
                .post(format!("{base}/api/v1/orders"))
                .bearer_auth(token)
                .json(&order(product, 1))
                .send()
                .await
                .unwrap();
            let status = res.status();
            (status, res.json::<Value>().await.unwrap())
        }
    });
    let answers = futures::future::join_all(attempts).await;
    let created = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    let limited = answers
        .iter()
        .filter(|(s, b)| *s == StatusCode::CONFLICT && b["code"] == "PURCHASE_LIMIT_EXCEEDED")
        .count();
    assert_eq!((created, limited), (1, 49), "{answers:?}");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM orders WHERE user_id = {user}"
        ))
        .await,
        1
    );
    assert_eq!(app.stock(product).await, 499);
    assert_eq!(app.balance(user).await, 999_000);

    // Another customer has an allowance of their own; two units at once are above the limit.
    let (_, other) = app.user_with_points("other", 10_000).await;
    let (status, body) = app
        .post("/api/v1/orders", Some(&other), order(product, 2))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("PURCHASE_LIMIT_EXCEEDED"))
    );
    let (status, _) = app
        .post("/api/v1/orders", Some(&other), order(product, 1))
        .await;
    assert_eq!(status, StatusCode::CREATED);

    // Cancelling gives the allowance back.
    let id = answers
        .iter()
        .find(|(s, _)| *s == StatusCode::CREATED)
        .unwrap()
        .1["order_id"]
        .as_i64()
        .unwrap();
    let (status, _) = app
        .post(
            &format!("/api/v1/orders/{id}/cancel"),
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app
        .post("/api/v1/orders", Some(&token), order(product, 1))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(app.stock(product).await, 498);
}

#[tokio::test]
async fn outside_its_sale_window_a_product_cannot_be_ordered_and_the_detail_says_when() {
    let app = spawn_app().await;
    let product = drop_product(
        &app,
        json!({"sale_starts_at": "2999-01-01T10:00:00Z", "sale_ends_at": "2999-01-01T12:00:00Z", "max_per_user": 2}),
    )
    .await;
    let (_, detail) = app.get(&format!("/api/v1/products/{product}"), None).await;
    assert_eq!(
        (
            &detail["sale_starts_at"],
            &detail["sale_ends_at"],
            &detail["max_per_user"]
        ),
        (
            &json!("2999-01-01T10:00:00Z"),
            &json!("2999-01-01T12:00:00Z"),
            &json!(2)
        )
    );
    let (_, token) = app.user_with_points("early", 10_000).await;
    let (status, body) = app
        .post("/api/v1/orders", Some(&token), order(product, 1))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("PRODUCT_NOT_ON_SALE"))
    );

    // Ended: a window wholly in the past.
    let path = format!("/api/v1/admin/products/{product}");
    let patch = |body: Value| app.call(Method::PATCH, &path, Some(&app.admin), Some(body));
    let (status, body) = patch(
        json!({"sale_starts_at": "2020-01-01T00:00:00Z", "sale_ends_at": "2020-01-02T00:00:00Z"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .post("/api/v1/orders", Some(&token), order(product, 1))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("PRODUCT_NOT_ON_SALE"))
    );

    // An end before the start is refused, also against the current start.
    let (status, body) = patch(json!({"sale_ends_at": "2019-01-01T00:00:00Z"})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("VALIDATION_FAILED")),
        "{body}"
    );

    // null clears a rule: on sale again, with no end.
    let (status, body) = patch(json!({"sale_ends_at": null})).await;
    assert_eq!(
        (status, &body["sale_ends_at"]),
        (StatusCode::OK, &Value::Null),
        "{body}"
    );
    let (status, body) = app
        .post("/api/v1/orders", Some(&token), order(product, 2))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(app.stock(product).await, 498);
    assert_eq!(app.count("SELECT count(*) AS n FROM orders").await, 1);
}
