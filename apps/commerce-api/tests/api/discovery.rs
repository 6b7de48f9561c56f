//! What a storefront lists: brands, the coupon campaigns open now, the caller's points ledger;
//! and points charges that a retry cannot charge twice.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestApp, spawn_app};

async fn coupon(app: &TestApp, body: Value) -> i64 {
    let (status, coupon) = app
        .post("/api/v1/admin/coupons", Some(&app.admin), body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{coupon}");
    coupon["id"].as_i64().unwrap()
}

#[tokio::test]
async fn brands_are_listed_in_pages() {
    let app = spawn_app().await;
    let ids = [app.brand().await, app.brand().await, app.brand().await];
    let (status, first) = app.get("/api/v1/brands?size=2", None).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(
        (
            first["total_elements"].as_i64(),
            first["total_pages"].as_i64()
        ),
        (Some(3), Some(2))
    );
    let listed: Vec<i64> = first["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, ids[..2]);
    let (_, second) = app.get("/api/v1/brands?page=1&size=2", None).await;
    assert_eq!(second["content"][0]["id"], ids[2]);
    let (status, body) = app.get("/api/v1/brands?size=0", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("VALIDATION_FAILED"))
    );
}

#[tokio::test]
async fn only_campaigns_open_now_are_listed_with_what_is_left() {
    let app = spawn_app().await;
    let fixed = |name: &str, quantity: Option<i64>| json!({"name": name, "discount_type": "FIXED", "discount_value": 1000, "min_order_amount": 5000, "total_quantity": quantity});
    let unlimited = coupon(&app, fixed("unlimited", None)).await;
    let limited = coupon(&app, fixed("limited", Some(3))).await;
    let sold_out = coupon(&app, fixed("sold out", Some(1))).await;
    let later = coupon(
        &app,
        json!({"name": "later", "discount_type": "RATE", "discount_value": 10, "valid_from": "2999-01-01T00:00:00Z"}),
    )
    .await;
    let ended = coupon(&app, fixed("ended", None)).await;
    app.count(&format!(
        "WITH e AS (UPDATE coupons SET valid_until = now() - interval '1 minute' WHERE id = {ended} RETURNING 1)
         SELECT count(*) AS n FROM e"
    ))
    .await;
    for (id, users) in [(limited, 2), (sold_out, 1)] {
        for i in 0..users {
            let (_, token) = app.user_with_points(&format!("u{id}-{i}"), 0).await;
            let (status, body) = app
                .post(
                    &format!("/api/v1/coupons/{id}/issue"),
                    Some(&token),
                    json!({}),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
        }
    }
    let (status, page) = app.get("/api/v1/coupons", None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let listed: Vec<(i64, Value)> = page["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["id"].as_i64().unwrap(), c["remaining_quantity"].clone()))
        .collect();
    assert_eq!(
        listed,
        [(limited, json!(1)), (unlimited, Value::Null)],
        "{page}"
    );
    assert_eq!(page["total_elements"], 2);
    let first = &page["content"][0];
    assert_eq!(
        (
            &first["discount_type"],
            &first["discount_value"],
            &first["min_order_amount"],
            &first["issued_count"]
        ),
        (&json!("FIXED"), &json!(1000), &json!(5000), &json!(2))
    );
    assert!(
        ![sold_out, later, ended]
            .iter()
            .any(|id| listed.iter().any(|(l, _)| l == id))
    );
}

#[tokio::test]
async fn the_points_history_shows_every_change_newest_first_with_the_balance_after_it() {
    let app = spawn_app().await;
    let (user, token) = app.user_with_points("saver", 0).await;
    let product = app.product(app.brand().await, 300, 10).await;
    let (status, _) = app
        .post(
            &format!("/api/v1/admin/users/{user}/points"),
            Some(&app.admin),
            json!({"amount": 1000, "reason": "welcome bonus"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, order) = app
        .post(
            "/api/v1/orders",
            Some(&token),
            json!({"items": [{"product_id": product, "quantity": 1}], "payment": {"method": "POINT"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    let order_id = order["order_id"].as_i64().unwrap();
    let (status, _) = app
        .post(
            &format!("/api/v1/orders/{order_id}/cancel"),
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (status, history) = app.get("/api/v1/points/history", Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    let entries: Vec<(i64, i64, &str, Option<i64>)> = history["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["amount"].as_i64().unwrap(),
                e["balance_after"].as_i64().unwrap(),
                e["reason"].as_str().unwrap(),
                e["order_id"].as_i64(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            (300, 1000, "REFUND", Some(order_id)),
            (-300, 700, "USE", Some(order_id)),
            (1000, 1000, "GRANT", None),
        ]
    );
    assert_eq!(app.balance(user).await, 1000);
    let (_, page) = app
        .get("/api/v1/points/history?page=1&size=2", Some(&token))
        .await;
    assert_eq!(page["content"][0]["reason"], "GRANT");
    assert_eq!(page["content"][0]["note"], "welcome bonus");
    assert_eq!(page["total_elements"], 3);
    let (status, _) = app.get("/api/v1/points/history", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
