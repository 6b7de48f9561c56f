//! The API on a real Redis Cluster (three masters with a replica each): the product cache and
//! the first-come coupon gate work there, and a master killed under load loses no coupon seat.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use commerce_api::infra::product_cache::ProductCache;
use commerce_testkit::{RedisCluster, eventually};
use redis::AsyncCommands;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{TestApp, spawn_app_with};

async fn on_cluster(cluster: &RedisCluster) -> TestApp {
    spawn_app_with(&[
        ("REDIS_URL", &cluster.url()),
        ("REDIS_CLUSTER", "true"),
        ("COUPON_GATE_RECONCILE_INTERVAL_MS", "300"),
    ])
    .await
}

#[tokio::test]
async fn product_details_are_cached_and_evicted_in_a_redis_cluster() {
    let cluster = RedisCluster::start().await;
    let app = on_cluster(&cluster).await;
    let brand = app.brand().await;
    let products: Vec<i64> = {
        let mut ids = Vec::new();
        for stock in 1..=12 {
            ids.push(app.product(brand, 1000, stock).await);
        }
        ids
    };
    let cache = cluster.cache(&app.state.config.redis_key_prefix);
    let mut redis = cache.conn().await.expect("the cluster answers");
    for (i, id) in products.iter().enumerate() {
        let (status, body) = app.get(&format!("/api/v1/products/{id}"), None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["stock"], i as i64 + 1);
        // The body is in the cluster, beside its generation (one slot per product).
        let cached: Vec<u8> = redis
            .get(cache.key(&ProductCache::detail_key(*id)))
            .await
            .expect("the detail is in the cluster");
        let cached: serde_json::Value = serde_json::from_slice(&cached).unwrap();
        assert_eq!(cached["stock"], i as i64 + 1, "product {id}");
    }
    let nodes: BTreeSet<usize> = {
        let mut nodes = BTreeSet::new();
        for id in &products {
            nodes.insert(
                cluster
                    .master_of(&cache.key(&ProductCache::detail_key(*id)))
                    .await,
            );
        }
        nodes
    };
    assert_eq!(
        nodes.len(),
        3,
        "twelve products spread over the three masters"
    );

    // An admin edit evicts the detail from the cluster; the next read caches the new one.
    let edited = products[5];
    let (status, body) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/admin/products/{edited}"),
            Some(&app.admin),
            Some(json!({"stock": 99})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let key = cache.key(&ProductCache::detail_key(edited));
    eventually(
        "the edit evicts the cached detail",
        Duration::from_secs(5),
        async || {
            let cached: Option<Vec<u8>> = redis.get(&key).await.map_err(|e| e.to_string())?;
            match cached {
                None => Ok(()),
                Some(body) => Err(String::from_utf8_lossy(&body).into_owned()),
            }
        },
    )
    .await;
    eventually(
        "the new stock is served",
        Duration::from_secs(3),
        async || {
            let (_, body) = app.get(&format!("/api/v1/products/{edited}"), None).await;
            if body["stock"] == 99 {
                Ok(())
            } else {
                Err(body)
            }
        },
    )
    .await;
    assert_eq!(
        commerce_testkit::metric(&app.base, "redis_errors_total{op=\"product_cache_get\"}").await,
        Some(0.0),
        "no cache read failed on the cluster"
    );
}

/// Attempts by every token, concurrently; the statuses and codes.
async fn attempts(app: &Arc<TestApp>, coupon: i64, tokens: &[String]) -> Vec<(StatusCode, String)> {
    let tasks: Vec<_> = tokens
        .iter()
        .cloned()
        .map(|token| {
            let app = app.clone();
            tokio::spawn(async move {
                let (status, body) = app
                    .post(
                        &format!("/api/v1/coupons/{coupon}/issue"),
                        Some(&token),
                        json!({}),
                    )
                    .await;
                (status, body["code"].as_str().unwrap_or_default().to_owned())
            })
        })
        .collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

#[tokio::test]
async fn a_master_failover_under_a_coupon_rush_loses_no_seat() {
    let mut cluster = RedisCluster::start().await;
    let app = Arc::new(on_cluster(&cluster).await);
    let (status, body) = app
        .post(
            "/api/v1/admin/coupons",
            Some(&app.admin),
            json!({"name": "drop", "discount_type": "FIXED", "discount_value": 1000, "total_quantity": 100}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let coupon = body["id"].as_i64().unwrap();
    let mut tokens = Vec::new();
    for i in 0..400 {
        tokens.push(app.user_with_points(&format!("rush{i}"), 0).await.1);
    }
    let cache = cluster.cache(&app.state.config.redis_key_prefix);
    let gate = cache.key(&format!("coupon:{coupon}:issued"));

    // A first wave through the gate.
    let mut results = attempts(&app, coupon, &tokens[..40]).await;
    assert!(
        results.iter().all(|(s, _)| *s == StatusCode::CREATED),
        "{results:?}"
    );
    let mut redis = cache.conn().await.unwrap();
    let members: i64 = redis.scard(&gate).await.unwrap();
    assert_eq!(members, 40, "the gate admitted the first wave");

    // The gate's master dies while the second wave is in flight.
    let master = cluster.master_of(&gate).await;
    let second = {
        let app = app.clone();
        let tokens = tokens[40..160].to_vec();
        tokio::spawn(async move { attempts(&app, coupon, &tokens).await })
    };
    cluster.kill(master);
    results.extend(second.await.unwrap());
    let taken_over = cluster.master_of(&gate).await;
    assert_ne!(taken_over, master, "a replica took the slot over");
    // The rest rush after the failover.
    results.extend(attempts(&app, coupon, &tokens[160..]).await);

    let issued = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    let sold_out = results
        .iter()
        .filter(|(s, c)| *s == StatusCode::CONFLICT && c == "COUPON_SOLD_OUT")
        .count();
    assert_eq!(
        (issued, sold_out),
        (100, 300),
        "every seat issued once, everyone else told it is sold out: {:?}",
        results
            .iter()
            .filter(|(s, c)| *s != StatusCode::CREATED && c != "COUPON_SOLD_OUT")
            .collect::<Vec<_>>()
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(DISTINCT user_id) AS n FROM user_coupons WHERE coupon_id = {coupon}"
        ))
        .await,
        100
    );
    assert_eq!(
        app.count(&format!(
            "SELECT issued_count AS n FROM coupons WHERE id = {coupon}"
        ))
        .await,
        100
    );
    // The gate in the new master agrees with the database again (reconciliation puts back
    // whatever the failover lost).
    let holders: BTreeSet<i64> = {
        use diesel::prelude::*;
        use diesel_async::RunQueryDsl;
        commerce_api::infra::schema::user_coupons::table
            .filter(commerce_api::infra::schema::user_coupons::coupon_id.eq(coupon))
            .select(commerce_api::infra::schema::user_coupons::user_id)
            .load::<i64>(&mut app.conn().await)
            .await
            .unwrap()
            .into_iter()
            .collect()
    };
    eventually(
        "the gate holds exactly the coupon's holders",
        Duration::from_secs(10),
        async || {
            let members: BTreeSet<i64> = redis.smembers(&gate).await.map_err(|e| e.to_string())?;
            if members == holders {
                Ok(())
            } else {
                Err(format!("{} members", members.len()))
            }
        },
    )
    .await;
    // And the gate answers again on the new master: a holder's second attempt is refused there.
    let series = r#"coupon_issue_total{result="already_issued",path="redis"}"#;
    let before = commerce_testkit::metric(&app.base, series)
        .await
        .unwrap_or(0.0);
    let (status, body) = app
        .post(
            &format!("/api/v1/coupons/{coupon}/issue"),
            Some(&tokens[0]),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "COUPON_ALREADY_ISSUED");
    assert_eq!(
        commerce_testkit::metric(&app.base, series).await,
        Some(before + 1.0),
        "refused by the gate, not the database"
    );
    cluster.restart(master).await;
}
