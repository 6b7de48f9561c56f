//! The product page's stock is never stale beyond the in-process second: every change to a
//! product row evicts its detail on every instance, and concurrent misses load it once.

use std::time::Duration;

use commerce_api::infra::product_cache::ProductCache;
use pg_simulator::behaviour::Behaviour;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::payments::{Gateway, api, card_order, place, settled};
use crate::support::TestApp;

/// Waits until `base`'s detail of `product` shows `stock` (a positive signal), then returns it.
/// Without eviction the old figure would stay for the Redis TTL (30 s): the wait is far shorter.
async fn stock_on(app: &TestApp, base: &str, product: i64, stock: i64) {
    let url = format!("{base}/api/v1/products/{product}");
    let seen = commerce_testkit::eventually(
        &format!("{url} shows stock {stock}"),
        Duration::from_secs(3),
        async || {
            let body: serde_json::Value = app
                .client
                .get(&url)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            if body["stock"] == stock {
                Ok(body)
            } else {
                Err(body.to_string())
            }
        },
    )
    .await;
    assert_eq!(seen["stock"], stock);
}

#[tokio::test]
async fn orders_cancellations_failed_payments_and_edits_reach_another_instances_product_page() {
    let gw = Gateway::start(Behaviour {
        success_rate: 0.0,
        limit_exceeded_rate: 1.0,
        ..Behaviour::reliable()
    })
    .await;
    let app = api(&gw, &[]).await;
    let other = app.another_instance(&[("PG_BASE_URL", &gw.base)]).await;
    let product = app.product(app.brand().await, 1000, 20).await;
    let (_, token) = app.user_with_points("shopper", 100_000).await;
    // The other instance has the detail cached (L1 and Redis).
    stock_on(&app, &other.base, product, 20).await;

    // An order on this instance.
    let (status, order) = app
        .post(
            "/api/v1/orders",
            Some(&token),
            json!({"items": [{"product_id": product, "quantity": 5}], "payment": {"method": "POINT"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");
    stock_on(&app, &other.base, product, 15).await;

    // Its cancellation.
    let id = order["order_id"].as_i64().unwrap();
    let (status, body) = app
        .post(
            &format!("/api/v1/orders/{id}/cancel"),
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    stock_on(&app, &other.base, product, 20).await;

    // A card payment the gateway declines: the stock comes back when it settles, in the
    // background, wherever that happens.
    let order = place(&app, &token, card_order(product, 3, None)).await;
    stock_on(&app, &other.base, product, 17).await;
    let failed = settled(
        &app,
        &token,
        order["order_id"].as_i64().unwrap(),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(failed["status"], "PAYMENT_FAILED", "{failed}");
    stock_on(&app, &other.base, product, 20).await;

    // An admin edit.
    let (status, body) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/admin/products/{product}"),
            Some(&app.admin),
            Some(json!({"stock": 8})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    stock_on(&app, &other.base, product, 8).await;
    assert_eq!(app.stock(product).await, 8);
}

#[tokio::test]
async fn two_hundred_concurrent_misses_of_one_product_load_it_once() {
    let app = crate::support::spawn_app().await;
    let product = app.product(app.brand().await, 1000, 20).await;
    let before = app.state.product_cache.detail_loads();
    let url = format!("{}/api/v1/products/{product}", app.base);
    let reads = (0..200).map(|_| {
        let (client, url) = (app.client.clone(), url.clone());
        async move {
            let res = client.get(&url).send().await.unwrap();
            let status = res.status();
            let body: serde_json::Value = res.json().await.unwrap();
            (status, body["stock"].as_i64())
        }
    });
    let answers = futures::future::join_all(reads).await;
    assert!(
        answers.iter().all(|a| *a == (StatusCode::OK, Some(20))),
        "{answers:?}"
    );
    assert_eq!(app.state.product_cache.detail_loads() - before, 1);
}

#[tokio::test]
async fn a_fill_that_loaded_before_a_change_does_not_put_the_older_body_back() {
    let app = crate::support::spawn_app().await;
    let product = app.product(app.brand().await, 1000, 20).await;
    let cache = app.state.product_cache.clone();
    // A slow fill: it has read the old row when the product changes and is evicted.
    let old = cache
        .detail(product, || async {
            app.call(
                Method::PATCH,
                &format!("/api/v1/admin/products/{product}"),
                Some(&app.admin),
                Some(json!({"stock": 3})),
            )
            .await;
            // The edit has committed and evicted (moving the generation) before it answered.
            Ok::<_, ()>(bytes::Bytes::from_static(br#"{"stock":20}"#))
        })
        .await
        .unwrap();
    assert_eq!(
        &old[..],
        br#"{"stock":20}"#,
        "the slow fill's caller gets what it read"
    );
    stock_on(&app, &app.base, product, 3).await;
}

#[tokio::test]
async fn a_new_instance_starts_with_the_first_list_pages_and_the_most_liked_details_cached() {
    use redis::AsyncCommands;
    let app = crate::support::spawn_app().await;
    let brand = app.brand().await;
    let mut products = Vec::new();
    for stock in [5, 6, 7] {
        products.push(app.product(brand, 1000, stock).await);
    }
    let (_, token) = app.user_with_points("fan", 0).await;
    let (status, _) = app
        .post(
            &format!("/api/v1/products/{}/likes", products[1]),
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let cache = app.state.cache.clone();
    let mut conn = cache.conn().await.unwrap();
    for id in &products {
        let cached: Option<Vec<u8>> = conn
            .get(cache.key(&ProductCache::detail_key(*id)))
            .await
            .unwrap();
        assert!(cached.is_none(), "nothing has read product {id} yet");
    }

    let _deployed = app.another_instance(&[]).await;
    let details = commerce_testkit::eventually(
        "the new instance warmed the cache",
        Duration::from_secs(10),
        async || {
            let mut found = Vec::new();
            for id in &products {
                let cached: Option<Vec<u8>> = conn
                    .get(cache.key(&ProductCache::detail_key(*id)))
                    .await
                    .map_err(|e| e.to_string())?;
                found.push(cached.ok_or(format!("product {id} not warmed"))?);
            }
            Ok::<_, String>(found)
        },
    )
    .await;
    let stocks: Vec<i64> = details
        .iter()
        .map(|d| {
            serde_json::from_slice::<serde_json::Value>(d).unwrap()["stock"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(stocks, [5, 6, 7]);
    let generation: Option<u64> = conn.get(cache.key("products:list:gen")).await.unwrap();
    let list: Vec<u8> = conn
        .get(cache.key(&format!(
            "products:list:g{}:all:latest:0:20",
            generation.unwrap_or(0)
        )))
        .await
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&list).unwrap();
    let ids: Vec<i64> = list["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [products[2], products[1], products[0]]);
}

#[tokio::test]
async fn a_flood_of_random_list_queries_leaves_a_bounded_number_of_keys() {
    use redis::AsyncCommands;
    let app = crate::support::spawn_app().await;
    let brands = [app.brand().await, app.brand().await];
    for brand in brands {
        app.product(brand, 1000, 5).await;
    }
    let sorts = ["latest", "price_asc", "likes_desc"];
    // A deterministic stream of "random" queries: real brands, unknown ones, no brand; any size,
    // page and sort.
    let mut seed: u64 = 0x5eed;
    let mut next = |n: u64| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let (mut ok, mut unknown, mut too_deep) = (0, 0, 0);
    for _ in 0..600 {
        let brand = match next(4) {
            0 => format!("&brand_id={}", brands[0]),
            1 => format!("&brand_id={}", brands[1]),
            2 => format!("&brand_id={}", 1_000_000 + next(1_000_000)),
            _ => String::new(),
        };
        let path = format!(
            "/api/v1/products?sort={}&size={}&page={}{brand}",
            sorts[next(3) as usize],
            1 + next(100),
            next(400),
        );
        let (status, body) = app.get(&path, None).await;
        match (status, body["code"].as_str()) {
            (StatusCode::OK, _) => ok += 1,
            (StatusCode::NOT_FOUND, Some("BRAND_NOT_FOUND")) => unknown += 1,
            (StatusCode::BAD_REQUEST, Some("VALIDATION_FAILED")) => too_deep += 1,
            other => panic!("{path}: {other:?} {body}"),
        }
    }
    assert!(
        ok > 0 && unknown > 0 && too_deep > 0,
        "{ok} {unknown} {too_deep}"
    );
    let cache = app.state.cache.clone();
    let mut conn = cache.conn().await.unwrap();
    let keys: Vec<String> = conn.keys(cache.key("products:list:*")).await.unwrap();
    // (2 brands + all) × 3 sorts × 5 cached pages × 4 cached sizes, and the generation.
    assert!(keys.len() <= 3 * 3 * 5 * 4 + 1, "{} keys", keys.len());
    assert!(
        keys.iter().all(|k| !k.ends_with("products:list:index")),
        "no index grows with the pages"
    );
    let cached_brands: std::collections::BTreeSet<i64> = keys
        .iter()
        .flat_map(|k| k.split(':'))
        .filter_map(|part| part.strip_prefix('b')?.parse().ok())
        .collect();
    assert!(
        cached_brands.iter().all(|b| brands.contains(b)),
        "only brands that exist are cached: {cached_brands:?}"
    );

    // An admin edit retires every cached page at once: the next read shows it.
    let (_, before) = app.get("/api/v1/products?size=20", None).await;
    let first = before["content"][0]["id"].as_i64().unwrap();
    let (status, _) = app
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/products/{first}"),
            Some(&app.admin),
            Some(json!({"name": "Renamed"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, after) = app.get("/api/v1/products?size=20", None).await;
    assert_eq!(after["content"][0]["name"], "Renamed");
}

#[tokio::test]
async fn cursor_pages_walk_every_sort_to_any_depth_and_deep_offsets_are_refused() {
    let app = crate::support::spawn_app().await;
    let brand = app.brand().await;
    for i in 0..23 {
        // Repeated prices, so the id breaks ties.
        app.product(brand, 1000 + (i % 4) * 100, 5).await;
    }
    for sort in ["latest", "price_asc", "likes_desc"] {
        let (_, all) = app
            .get(&format!("/api/v1/products?sort={sort}&size=100"), None)
            .await;
        let expected: Vec<i64> = all["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_i64().unwrap())
            .collect();
        let mut walked = Vec::new();
        let mut path = format!("/api/v1/products?sort={sort}&size=10");
        loop {
            let (status, page) = app.get(&path, None).await;
            assert_eq!(status, StatusCode::OK, "{page}");
            walked.extend(
                page["content"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["id"].as_i64().unwrap()),
            );
            match page["next_cursor"].as_str() {
                Some(cursor) => {
                    path = format!("/api/v1/products?sort={sort}&size=10&cursor={cursor}")
                }
                None => break,
            }
        }
        assert_eq!(walked, expected, "{sort}");
    }
    let (_, first) = app.get("/api/v1/products?sort=latest&size=10", None).await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    for bad in [
        format!("/api/v1/products?sort=price_asc&cursor={cursor}"),
        format!("/api/v1/products?cursor={cursor}&page=1"),
        "/api/v1/products?cursor=not-a-cursor".to_owned(),
        "/api/v1/products?page=10000&size=100".to_owned(),
        "/api/v1/products?page=101&size=100".to_owned(),
    ] {
        let (status, body) = app.get(&bad, None).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("VALIDATION_FAILED")),
            "{bad}: {body}"
        );
    }
    let (status, _) = app.get("/api/v1/products?page=100&size=100", None).await;
    assert_eq!(status, StatusCode::OK, "the deepest offset allowed");
}
