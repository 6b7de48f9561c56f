//! First-come coupons: exact quantities under concurrency, with and without Redis.

use std::sync::Arc;

use crate::support::{TestApp, spawn_app, spawn_app_with};
use reqwest::StatusCode;
use serde_json::json;

async fn coupon(app: &TestApp, quantity: Option<i64>) -> i64 {
    let (status, body) = app
        .post(
            "/api/v1/admin/coupons",
            Some(&app.admin),
            json!({"name": "1000 off", "discount_type": "FIXED", "discount_value": 1000, "total_quantity": quantity}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_i64().unwrap()
}

async fn users(app: &TestApp, n: usize) -> Vec<String> {
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        tokens.push(app.user_with_points(&format!("user{i}"), 0).await.1);
    }
    tokens
}

/// Every token tries once, concurrently; returns (issued, sold out, already issued).
async fn rush(app: Arc<TestApp>, coupon_id: i64, tokens: Vec<String>) -> (usize, usize, usize) {
    let tasks: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            let app = app.clone();
            tokio::spawn(async move {
                app.post(
                    &format!("/api/v1/coupons/{coupon_id}/issue"),
                    Some(&token),
                    json!({}),
                )
                .await
            })
        })
        .collect();
    let mut counts = (0, 0, 0);
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match (status, body["code"].as_str()) {
            (StatusCode::CREATED, _) => counts.0 += 1,
            (StatusCode::CONFLICT, Some("COUPON_SOLD_OUT")) => counts.1 += 1,
            (StatusCode::CONFLICT, Some("COUPON_ALREADY_ISSUED")) => counts.2 += 1,
            other => panic!("unexpected {other:?}: {body}"),
        }
    }
    counts
}

/// One attempt to issue `coupon_id` with `token`.
async fn issue(app: &TestApp, coupon_id: i64, token: &str) -> (StatusCode, serde_json::Value) {
    app.post(
        &format!("/api/v1/coupons/{coupon_id}/issue"),
        Some(token),
        json!({}),
    )
    .await
}

async fn assert_db_issued(app: &TestApp, coupon_id: i64, expected: i64) {
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM user_coupons WHERE coupon_id = {coupon_id}"
        ))
        .await,
        expected
    );
    assert_eq!(
        app.count(&format!(
            "SELECT issued_count AS n FROM coupons WHERE id = {coupon_id}"
        ))
        .await,
        expected
    );
}

#[tokio::test]
async fn issue_sold_out_already_issued_and_not_active() {
    let app = spawn_app().await;
    let id = coupon(&app, Some(1)).await;
    let tokens = users(&app, 2).await;
    let path = format!("/api/v1/coupons/{id}/issue");
    let (status, body) = app.post(&path, Some(&tokens[0]), json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["coupon_id"], id);
    assert_eq!(body["status"], "AVAILABLE");
    let (status, body) = app.post(&path, Some(&tokens[0]), json!({})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("COUPON_ALREADY_ISSUED"))
    );
    let (status, body) = app.post(&path, Some(&tokens[1]), json!({})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("COUPON_SOLD_OUT"))
    );

    let (_, expired) = app
        .post(
            "/api/v1/admin/coupons",
            Some(&app.admin),
            json!({"name": "old", "discount_type": "RATE", "discount_value": 5,
                   "valid_from": "2020-01-01T00:00:00Z", "valid_until": "2020-02-01T00:00:00Z"}),
        )
        .await;
    let (status, body) = app
        .post(
            &format!("/api/v1/coupons/{}/issue", expired["id"]),
            Some(&tokens[1]),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("COUPON_NOT_ACTIVE"))
    );
    let (status, _) = app
        .post("/api/v1/coupons/999999/issue", Some(&tokens[1]), json!({}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (_, mine) = app.get("/api/v1/users/me/coupons", Some(&tokens[0])).await;
    assert_eq!(mine.as_array().unwrap().len(), 1);
    assert_eq!(mine[0]["discount_type"], "FIXED");
}

#[tokio::test]
async fn invalid_coupons_are_refused() {
    let app = spawn_app().await;
    for bad in [
        json!({"name": "x", "discount_type": "RATE", "discount_value": 101}),
        json!({"name": "x", "discount_type": "RATE", "discount_value": 0}),
        json!({"name": "x", "discount_type": "BOGO", "discount_value": 1}),
        json!({"name": "x", "discount_type": "FIXED", "discount_value": 100, "total_quantity": 0}),
        json!({"name": "x", "discount_type": "FIXED", "discount_value": 100,
               "valid_from": "2030-01-02T00:00:00Z", "valid_until": "2030-01-01T00:00:00Z"}),
        json!({"name": "x", "discount_type": "FIXED", "discount_value": 100, "issued_count": 5}),
    ] {
        let (status, body) = app
            .post("/api/v1/admin/coupons", Some(&app.admin), bad.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    assert_eq!(app.count("SELECT count(*) AS n FROM coupons").await, 0);
}

#[tokio::test]
async fn a_thousand_users_racing_for_a_hundred_coupons_get_exactly_a_hundred() {
    let app = spawn_app().await;
    let id = coupon(&app, Some(100)).await;
    let tokens = users(&app, 1000).await;
    let app = Arc::new(app);
    let (issued, sold_out, already) = rush(app.clone(), id, tokens).await;
    assert_eq!((issued, sold_out, already), (100, 900, 0));
    assert_db_issued(&app, id, 100).await;
}

#[tokio::test]
async fn fifty_concurrent_attempts_by_one_user_issue_one() {
    let app = spawn_app().await;
    let id = coupon(&app, Some(10)).await;
    let token = users(&app, 1).await.remove(0);
    let app = Arc::new(app);
    let (issued, _, already) = rush(app.clone(), id, vec![token; 50]).await;
    assert_eq!((issued, already), (1, 49));
    assert_db_issued(&app, id, 1).await;
}

#[tokio::test]
async fn without_redis_the_database_alone_keeps_the_same_guarantees() {
    let app = spawn_app_with(&[("REDIS_URL", "redis://127.0.0.1:1")]).await;
    let id = coupon(&app, Some(100)).await;
    let tokens = users(&app, 1000).await;
    let app = Arc::new(app);
    let (issued, sold_out, _) = rush(app.clone(), id, tokens).await;
    assert_eq!((issued, sold_out), (100, 900));
    assert_db_issued(&app, id, 100).await;

    let id = coupon(&app, Some(10)).await;
    let (_, token) = app.user_with_points("eager", 0).await;
    let (issued, _, already) = rush(app.clone(), id, vec![token; 50]).await;
    assert_eq!((issued, already), (1, 49));
    assert_db_issued(&app, id, 1).await;
}

#[tokio::test]
async fn unlimited_coupons_issue_to_everyone_once() {
    let app = spawn_app().await;
    let id = coupon(&app, None).await;
    let tokens = users(&app, 30).await;
    let app = Arc::new(app);
    let (issued, _, _) = rush(app.clone(), id, tokens.clone()).await;
    assert_eq!(issued, 30);
    let (_, _, already) = rush(app.clone(), id, tokens).await;
    assert_eq!(already, 30);
    assert_db_issued(&app, id, 30).await;
}

/// The coupon's Redis gate: its members, sorted.
async fn gate(app: &TestApp, coupon_id: i64) -> Vec<i64> {
    let mut conn = app.state.cache.conn().await.expect("Redis answers");
    let mut members: Vec<i64> = redis::cmd("SMEMBERS")
        .arg(app.state.cache.key(&format!("coupon:{coupon_id}:issued")))
        .query_async(&mut conn)
        .await
        .unwrap();
    members.sort_unstable();
    members
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_issue_leaves_no_seat_without_a_coupon() {
    let app = spawn_app().await;
    let coupon_id = coupon(&app, Some(1)).await;
    let (user, token) = app.user_with_points("hangs-up", 0).await;
    let release = app.hold_row_lock("coupons", coupon_id).await;
    let hung_up = app
        .client
        .post(format!("{}/api/v1/coupons/{coupon_id}/issue", app.base))
        .bearer_auth(&token)
        .json(&json!({}))
        .timeout(std::time::Duration::from_millis(300))
        .send()
        .await;
    assert!(
        hung_up.is_err(),
        "the client gave up while the issue waited"
    );
    assert_eq!(
        gate(&app, coupon_id).await,
        vec![user],
        "the seat is taken meanwhile"
    );
    release.send(()).unwrap();
    // The issue the client abandoned still completes: the seat has its coupon.
    commerce_testkit::until(
        "the abandoned issue committed",
        std::time::Duration::from_secs(10),
        async || {
            app.count(&format!(
                "SELECT count(*) AS n FROM user_coupons WHERE coupon_id = {coupon_id} AND user_id = {user}"
            ))
            .await
                == 1
        },
    )
    .await;
    assert_db_issued(&app, coupon_id, 1).await;
    assert_eq!(gate(&app, coupon_id).await, vec![user]);
    let (_, other) = app.user_with_points("too-late", 0).await;
    let (status, body) = issue(&app, coupon_id, &other).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "COUPON_SOLD_OUT");
}

#[tokio::test]
async fn a_pool_timeout_gives_the_seat_back() {
    let app = Arc::new(spawn_app_with(&[("DATABASE_POOL_SIZE", "1")]).await);
    let coupon_id = coupon(&app, Some(2)).await;
    let (first, first_token) = app.user_with_points("holds-the-pool", 0).await;
    let (second, second_token) = app.user_with_points("waits-for-the-pool", 0).await;
    let release = app.hold_row_lock("coupons", coupon_id).await;
    // The first issue takes the pool's only connection and waits on the row lock.
    let holder = {
        let app = app.clone();
        tokio::spawn(async move { issue(&app, coupon_id, &first_token).await })
    };
    commerce_testkit::until(
        "the first issue is admitted",
        std::time::Duration::from_secs(5),
        async || gate(&app, coupon_id).await == vec![first],
    )
    .await;
    let (status, body) = issue(&app, coupon_id, &second_token).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        gate(&app, coupon_id).await,
        vec![first],
        "the second seat is back"
    );
    release.send(()).unwrap();
    let (status, body) = holder.await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = issue(&app, coupon_id, &second_token).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "the retry gets the seat: {body}"
    );
    assert_db_issued(&app, coupon_id, 2).await;
    let mut both = vec![first, second];
    both.sort_unstable();
    assert_eq!(gate(&app, coupon_id).await, both);
}

#[tokio::test]
async fn reconciliation_gives_back_seats_without_coupons_and_restores_lost_holders() {
    let app = spawn_app().await;
    let coupon_id = coupon(&app, Some(2)).await;
    let (holder, token) = app.user_with_points("holder", 0).await;
    let (status, body) = issue(&app, coupon_id, &token).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // What a crash and a Redis failover leave: a seat with no coupon, a coupon with no seat.
    let ghost = 987_654_321;
    {
        let mut conn = app.state.cache.conn().await.unwrap();
        let key = app.state.cache.key(&format!("coupon:{coupon_id}:issued"));
        let _: i64 = redis::cmd("SADD")
            .arg(&key)
            .arg(ghost)
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: i64 = redis::cmd("SREM")
            .arg(&key)
            .arg(holder)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let mut suspects = commerce_api::domain::coupons::GateSuspects::default();
    let released = app
        .state
        .coupons
        .reconcile_gates(&mut suspects)
        .await
        .unwrap();
    assert_eq!(
        released, 0,
        "a member without a coupon may still be committing"
    );
    let mut both = vec![holder, ghost];
    both.sort_unstable();
    assert_eq!(
        gate(&app, coupon_id).await,
        both,
        "the holder is back in the gate"
    );
    let released = app
        .state
        .coupons
        .reconcile_gates(&mut suspects)
        .await
        .unwrap();
    assert_eq!(
        released, 1,
        "still without a coupon a pass later: given back"
    );
    assert_eq!(gate(&app, coupon_id).await, vec![holder]);
    let (_, other) = app.user_with_points("gets-the-seat", 0).await;
    let (status, body) = issue(&app, coupon_id, &other).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_db_issued(&app, coupon_id, 2).await;
}

#[tokio::test]
async fn a_signed_token_of_a_user_the_database_lacks_gets_401_and_leaves_no_seat() {
    let app = spawn_app().await;
    let id = coupon(&app, Some(1)).await;
    // Signed with the app's key for a user id no row has.
    let stranger = app
        .state
        .auth
        .issue(i64::MAX - 7, commerce_api::infra::auth::Role::User)
        .unwrap();
    let (status, body) = issue(&app, id, &stranger).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["code"], "UNAUTHENTICATED", "{body}");
    assert_db_issued(&app, id, 0).await;
    // The seat it took in the gate was given back: the one coupon is still there for a user.
    assert_eq!(gate(&app, id).await, Vec::<i64>::new());
    let token = users(&app, 1).await.remove(0);
    let (status, body) = issue(&app, id, &token).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_db_issued(&app, id, 1).await;
}
