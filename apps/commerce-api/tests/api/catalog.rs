//! Brands, products, the list, caching and likes.

use std::sync::Arc;

use crate::support::spawn_app;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn brands_and_products_are_created_read_and_changed_with_events() {
    let app = spawn_app().await;
    let brand = app.brand().await;
    let (status, b) = app.get(&format!("/api/v1/brands/{brand}"), None).await;
    assert_eq!((status, b["name"].as_str()), (StatusCode::OK, Some("Acme")));
    let (status, body) = app.get("/api/v1/brands/424242", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("BRAND_NOT_FOUND"))
    );

    let product = app.product(brand, 2500, 7).await;
    let (status, p) = app.get(&format!("/api/v1/products/{product}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        p,
        json!({"id": product, "name": "Widget", "description": "", "brand_id": brand, "brand_name": "Acme",
               "partner_id": 1, "price": 2500, "stock": 7, "like_count": 0,
               "max_per_user": null, "sale_starts_at": null, "sale_ends_at": null})
    );

    let (status, changed) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/admin/products/{product}"),
            Some(&app.admin),
            Some(json!({"price": 3000})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["price"], 3000);
    // The detail cache was evicted by the change.
    let (_, p) = app.get(&format!("/api/v1/products/{product}"), None).await;
    assert_eq!(p["price"], 3000);
    assert_eq!(
        app.outbox_types().await,
        ["ProductCreated", "ProductUpdated"]
    );
    assert_eq!(
        app.count("SELECT (envelope->'payload'->>'version')::bigint AS n FROM outbox WHERE event_type = 'ProductUpdated'").await,
        2
    );
}

#[tokio::test]
async fn bad_catalog_input_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let brand = app.brand().await;
    let product = app.product(brand, 100, 1).await;
    for bad in [
        json!({"brand_id": brand, "name": "", "price": 1, "stock": 1}),
        json!({"brand_id": brand, "name": "x", "price": -1, "stock": 1}),
        json!({"brand_id": brand, "name": "x", "price": 1, "stock": 2_000_000_000}),
        json!({"brand_id": brand, "name": "x", "price": 1e30, "stock": 1}),
        json!({"brand_id": brand, "name": "x", "price": 1, "stock": 1, "like_count": 99}),
    ] {
        let (status, body) = app
            .post("/api/v1/admin/products", Some(&app.admin), bad.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, body) = app
        .post(
            "/api/v1/admin/products",
            Some(&app.admin),
            json!({"brand_id": 999_999, "name": "x", "price": 1, "stock": 1}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("BRAND_NOT_FOUND"))
    );
    let (status, _) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/admin/products/{product}"),
            Some(&app.admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app
        .call(
            Method::PATCH,
            "/api/v1/admin/products/999999",
            Some(&app.admin),
            Some(json!({"price": 5})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = app.get("/api/v1/products/not-a-number", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("VALIDATION_FAILED"))
    );
    assert_eq!(app.count("SELECT count(*) AS n FROM products").await, 1);
    assert_eq!(app.outbox_types().await, ["ProductCreated"]);
}

#[tokio::test]
async fn the_list_filters_sorts_and_pages() {
    let app = spawn_app().await;
    let a = app.brand().await;
    let b = app.brand().await;
    let p1 = app.product(a, 300, 1).await;
    let p2 = app.product(a, 100, 1).await;
    let p3 = app.product(b, 200, 1).await;

    let ids = |v: &serde_json::Value| -> Vec<i64> {
        v["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_i64().unwrap())
            .collect()
    };
    let (_, latest) = app.get("/api/v1/products", None).await;
    assert_eq!(ids(&latest), [p3, p2, p1]);
    assert_eq!(
        (
            latest["total_elements"].as_i64(),
            latest["total_pages"].as_i64()
        ),
        (Some(3), Some(1))
    );
    let (_, cheap) = app.get("/api/v1/products?sort=price_asc", None).await;
    assert_eq!(ids(&cheap), [p2, p3, p1]);
    let (_, brand_a) = app
        .get(
            &format!("/api/v1/products?brand_id={a}&size=1&page=1"),
            None,
        )
        .await;
    assert_eq!(ids(&brand_a), [p1]);
    assert_eq!(
        (
            brand_a["total_elements"].as_i64(),
            brand_a["total_pages"].as_i64()
        ),
        (Some(2), Some(2))
    );

    let (_, token) = app.user_with_points("fan", 0).await;
    app.post(
        &format!("/api/v1/products/{p1}/likes"),
        Some(&token),
        json!({}),
    )
    .await;
    // Cached pages are evicted when products change, not on likes: create one to evict.
    let p4 = app.product(b, 50, 1).await;
    let (_, liked) = app.get("/api/v1/products?sort=likes_desc", None).await;
    assert_eq!(ids(&liked)[0], p1);
    assert_eq!(ids(&liked).len(), 4);
    assert!(ids(&liked).contains(&p4));

    for bad in [
        "sort=random",
        "size=101",
        "size=0",
        "page=-1",
        "page=abc",
        "brand_id=x",
    ] {
        let (status, body) = app.get(&format!("/api/v1/products?{bad}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["code"], "VALIDATION_FAILED");
    }
}

#[tokio::test]
async fn likes_are_idempotent_and_emit_events_only_on_change() {
    let app = spawn_app().await;
    let product = app.product(app.brand().await, 100, 1).await;
    let (_, token) = app.user_with_points("fan", 0).await;
    let like = format!("/api/v1/products/{product}/likes");
    for _ in 0..2 {
        let (status, body) = app.post(&like, Some(&token), json!({})).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"product_id": product, "liked": true, "like_count": 1})
        );
    }
    let (_, mine) = app.get("/api/v1/users/me/likes", Some(&token)).await;
    assert_eq!(mine[0]["id"], product);
    for _ in 0..2 {
        let (status, body) = app.call(Method::DELETE, &like, Some(&token), None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"product_id": product, "liked": false, "like_count": 0})
        );
    }
    assert_eq!(
        app.outbox_types().await,
        ["ProductCreated", "ProductLiked", "ProductUnliked"]
    );
    let (status, _) = app
        .post("/api/v1/products/999999/likes", Some(&token), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.post(&like, None, json!({})).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn concurrent_likes_and_unlikes_keep_the_count_equal_to_the_likes_table() {
    let app = spawn_app().await;
    let product = app.product(app.brand().await, 100, 1).await;
    let mut users = Vec::new();
    for i in 0..40 {
        users.push(app.user_with_points(&format!("u{i}"), 0).await.1);
    }
    let app = Arc::new(app);
    let like = format!("/api/v1/products/{product}/likes");
    let mut tasks = Vec::new();
    for (i, token) in users.into_iter().enumerate() {
        for round in 0..4 {
            let (app, token, like) = (app.clone(), token.clone(), like.clone());
            tasks.push(tokio::spawn(async move {
                let method = if (i + round) % 2 == 0 {
                    Method::POST
                } else {
                    Method::DELETE
                };
                app.call(method, &like, Some(&token), None).await.0
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let likes = app
        .count(&format!(
            "SELECT count(*) AS n FROM product_likes WHERE product_id = {product}"
        ))
        .await;
    let counter = app
        .count(&format!(
            "SELECT like_count AS n FROM products WHERE id = {product}"
        ))
        .await;
    assert_eq!(counter, likes);
    let liked = app
        .count("SELECT count(*) AS n FROM outbox WHERE event_type = 'ProductLiked'")
        .await;
    let unliked = app
        .count("SELECT count(*) AS n FROM outbox WHERE event_type = 'ProductUnliked'")
        .await;
    assert_eq!(liked - unliked, likes, "events replay to the same count");
}

#[tokio::test]
async fn reads_keep_working_from_the_database_when_redis_is_down() {
    let app = crate::support::spawn_app_with(&[("REDIS_URL", "redis://127.0.0.1:1")]).await;
    let product = app.product(app.brand().await, 100, 3).await;
    for _ in 0..3 {
        let (status, body) = app.get(&format!("/api/v1/products/{product}"), None).await;
        assert_eq!((status, body["stock"].as_i64()), (StatusCode::OK, Some(3)));
        let (status, body) = app.get("/api/v1/products", None).await;
        assert_eq!(
            (status, body["total_elements"].as_i64()),
            (StatusCode::OK, Some(1))
        );
    }
}

#[tokio::test]
async fn the_product_list_sorts_by_units_sold_as_the_sale_events_count_them() {
    let app = spawn_app().await;
    let brand = app.brand().await;
    let (p1, p2, p3, p4) = (
        app.product(brand, 100, 50).await,
        app.product(brand, 100, 50).await,
        app.product(brand, 100, 50).await,
        app.product(brand, 100, 50).await,
    );
    let (_, token) = app.user_with_points("buyer", 100_000).await;
    let mut orders = Vec::new();
    for items in [
        json!([{"product_id": p2, "quantity": 3}]),
        json!([{"product_id": p1, "quantity": 2}, {"product_id": p3, "quantity": 1}]),
        json!([{"product_id": p4, "quantity": 1}]),
    ] {
        let (status, placed) = app
            .post(
                "/api/v1/orders",
                Some(&token),
                json!({"items": items, "payment": {"method": "POINT"}}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{placed}");
        orders.push(placed["order_id"].as_i64().unwrap());
    }
    // The first order's three units are given back: p2 sold none in the end.
    let (status, body) = app
        .post(
            &format!("/api/v1/orders/{}/cancel", orders[0]),
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Units sold, then the id (newest first) among equals.
    let expected = [(p1, 2), (p4, 1), (p3, 1), (p2, 0)];
    let (status, page) = app.get("/api/v1/products?sort=sales_desc", None).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let served: Vec<(i64, i64)> = page["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["id"].as_i64().unwrap(),
                p["sales_count"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(served, expected);

    // Keyset pages walk the same order.
    let mut walked = Vec::new();
    let mut next = "/api/v1/products?sort=sales_desc&size=1".to_owned();
    loop {
        let (status, page) = app.get(&next, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for p in page["content"].as_array().unwrap() {
            walked.push((
                p["id"].as_i64().unwrap(),
                p["sales_count"].as_i64().unwrap(),
            ));
        }
        match page["next_cursor"].as_str() {
            Some(cursor) => {
                next = format!("/api/v1/products?sort=sales_desc&size=1&cursor={cursor}")
            }
            None => break,
        }
    }
    assert_eq!(walked, expected);

    // The stored counts are what the outbox's sale events add up to (what the collector counts).
    for (product, units) in expected {
        let from_events = app
            .count(&format!(
                "SELECT coalesce(sum(CASE WHEN event_type = 'OrderPaid' THEN 1 ELSE -1 END
                                     * (line->>'quantity')::bigint), 0)::bigint AS n
                   FROM outbox, jsonb_array_elements(envelope->'payload'->'lines') AS line
                  WHERE (event_type = 'OrderPaid'
                         OR (event_type = 'OrderCancelled'
                             AND (envelope->'payload'->>'was_paid')::boolean))
                    AND (line->>'product_id')::bigint = {product}"
            ))
            .await;
        assert_eq!(from_events, units, "product {product}");
        assert_eq!(
            app.count(&format!(
                "SELECT sales_count AS n FROM products WHERE id = {product}"
            ))
            .await,
            units
        );
    }
}
