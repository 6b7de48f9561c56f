//! Wishlists over HTTP against real PostgreSQL: idempotent adds and removes, a private paged
//! list, and refusals that change nothing.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::spawn_app;

#[tokio::test]
async fn a_wishlist_adds_and_removes_idempotently_and_lists_newest_first_for_its_owner_only() {
    let app = spawn_app().await;
    let brand = app.brand().await;
    let products = [
        app.product(brand, 1000, 0).await,
        app.product(brand, 2000, 3).await,
        app.product(brand, 3000, 1).await,
    ];
    let (user, token) = app.user_with_points("wisher", 0).await;
    let (_, other) = app.user_with_points("someone-else", 0).await;
    let wishlist = |product: i64| format!("/api/v1/users/me/wishlist/{product}");

    for product in products {
        let (status, body) = app
            .call(Method::PUT, &wishlist(product), Some(&token), None)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["product"]["id"], product);
    }
    // Again: the same item, unchanged.
    let (status, again) = app
        .call(Method::PUT, &wishlist(products[0]), Some(&token), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM wishlist_items WHERE user_id = {user}"
        ))
        .await,
        3
    );

    // Newest first, paged.
    let (status, first) = app
        .get("/api/v1/users/me/wishlist?page=0&size=2", Some(&token))
        .await;
    assert_eq!(status, StatusCode::OK, "{first}");
    let ids = |page: &Value| -> Vec<i64> {
        page["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["product"]["id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(ids(&first), vec![products[2], products[1]]);
    assert_eq!(first["total_elements"], 3);
    let (_, second) = app
        .get("/api/v1/users/me/wishlist?page=1&size=2", Some(&token))
        .await;
    assert_eq!(ids(&second), vec![products[0]]);
    assert_eq!(second["content"][0]["added_at"], again["added_at"]);

    // Private: another customer sees their own (empty) list.
    let (_, theirs) = app.get("/api/v1/users/me/wishlist", Some(&other)).await;
    assert_eq!(theirs["total_elements"], 0);

    // Removing is idempotent.
    for _ in 0..2 {
        let (status, _) = app
            .call(Method::DELETE, &wishlist(products[1]), Some(&token), None)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
    let (_, after) = app.get("/api/v1/users/me/wishlist", Some(&token)).await;
    assert_eq!(ids(&after), vec![products[2], products[0]]);
}

#[tokio::test]
async fn bad_wishlist_requests_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let (user, token) = app.user_with_points("careful", 0).await;
    let (status, body) = app
        .call(
            Method::PUT,
            "/api/v1/users/me/wishlist/999999",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "PRODUCT_NOT_FOUND");
    let (status, _) = app
        .call(Method::PUT, "/api/v1/users/me/wishlist/1", None, None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = app
        .get("/api/v1/users/me/wishlist?size=101", Some(&token))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "VALIDATION_FAILED");
    let (status, body) = app
        .call(
            Method::PUT,
            "/api/v1/users/me/wishlist/abc",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM wishlist_items WHERE user_id = {user}"
        ))
        .await,
        0
    );
}

#[tokio::test]
async fn a_full_wishlist_refuses_one_more_even_when_requests_race() {
    let app = spawn_app().await;
    let brand = app.brand().await;
    let (user, token) = app.user_with_points("collector", 0).await;
    let max = 500;
    // Fill it to one short of the limit directly, then race two additions for the last place.
    let mut products = Vec::new();
    for _ in 0..max + 1 {
        products.push(app.product(brand, 1000, 1).await);
    }
    app.count(&format!(
        "WITH w AS (INSERT INTO wishlist_items (user_id, product_id)
                    SELECT {user}, unnest(ARRAY{:?}::bigint[]) RETURNING 1)
         SELECT count(*) AS n FROM w",
        &products[..max - 1]
    ))
    .await;
    let add = |product: i64| {
        let (app, token) = (&app, &token);
        async move {
            app.call(
                Method::PUT,
                &format!("/api/v1/users/me/wishlist/{product}"),
                Some(token),
                None,
            )
            .await
        }
    };
    let (a, b) = tokio::join!(add(products[max - 1]), add(products[max]));
    let mut statuses = [a.0, b.0];
    statuses.sort();
    assert_eq!(statuses, [StatusCode::CREATED, StatusCode::CONFLICT]);
    let refused = if a.0 == StatusCode::CONFLICT {
        a.1
    } else {
        b.1
    };
    assert_eq!(refused["code"], "WISHLIST_FULL");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM wishlist_items WHERE user_id = {user}"
        ))
        .await,
        max as i64
    );
}
