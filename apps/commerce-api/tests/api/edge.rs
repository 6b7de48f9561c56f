//! The edge: rate limits and the client address they key by, the failed-login backoff, and the
//! bounded password-hashing queue.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestApp, spawn_app_with, start_api};

/// Limits on, with `overrides` on top, once the admin can log in.
async fn limited(overrides: &[(&str, &str)]) -> TestApp {
    spawn_app_with(&limits_on(overrides)).await
}

/// Limits on, with `overrides` on top, as soon as it listens: no token request has been made.
async fn limited_fresh(overrides: &[(&str, &str)]) -> TestApp {
    start_api(&limits_on(overrides)).await
}

fn limits_on<'a>(overrides: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut vars = vec![("RATE_LIMITS_ENABLED", "true")];
    vars.extend_from_slice(overrides);
    vars
}

/// POSTs `body` to `base` + `path` with extra headers; returns status, `Retry-After` and body.
async fn post_with(
    app: &TestApp,
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (StatusCode, Option<u64>, Value) {
    let mut req = app.client.post(format!("{base}{path}")).json(&body);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let res = req.send().await.expect("request sent");
    let status = res.status();
    let retry_after = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().expect("Retry-After in seconds"));
    let body = res.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

fn token_body(login_id: &str, password: &str) -> Value {
    json!({"login_id": login_id, "password": password})
}

fn sign_up_body(login_id: &str) -> Value {
    json!({"login_id": login_id, "password": "correct horse", "name": "N", "email": "n@example.com"})
}

#[tokio::test]
async fn sign_ups_beyond_the_per_address_rate_get_429_with_retry_after_and_create_nothing() {
    let app = limited(&[("RATE_LIMIT_SIGN_UP", "2/min")]).await;
    for login in ["first", "second"] {
        let (status, _, body) =
            post_with(&app, &app.base, "/api/v1/users", &[], sign_up_body(login)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, retry_after, body) =
        post_with(&app, &app.base, "/api/v1/users", &[], sign_up_body("third")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "RATE_LIMITED");
    // 2/min refills one every 30 s.
    let retry_after = retry_after.expect("a Retry-After header");
    assert!(
        (25..=30).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    assert_eq!(
        app.count("SELECT count(*) AS n FROM users WHERE login_id IN ('first', 'second', 'third')")
            .await,
        2
    );
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing() {
    // No trusted proxies: every request is keyed by the socket's address, whatever it claims.
    let app = limited_fresh(&[("RATE_LIMIT_TOKEN", "2/min")]).await;
    let mut statuses = Vec::new();
    for spoofed in ["198.51.100.1", "198.51.100.2", "198.51.100.3"] {
        let (status, _, _) = post_with(
            &app,
            &app.base,
            "/api/v1/auth/token",
            &[("x-forwarded-for", spoofed)],
            token_body("nobody", "whatever1"),
        )
        .await;
        statuses.push(status);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

#[tokio::test]
async fn behind_a_trusted_proxy_each_forwarded_client_has_its_own_allowance() {
    let app = limited_fresh(&[
        ("RATE_LIMIT_TOKEN", "1/min"),
        ("TRUSTED_PROXIES", "127.0.0.1"),
    ])
    .await;
    let attempt = async |forwarded: &str| {
        post_with(
            &app,
            &app.base,
            "/api/v1/auth/token",
            &[("x-forwarded-for", forwarded)],
            token_body("nobody", "whatever1"),
        )
        .await
        .0
    };
    assert_eq!(attempt("198.51.100.1").await, StatusCode::UNAUTHORIZED);
    assert_eq!(attempt("198.51.100.2").await, StatusCode::UNAUTHORIZED);
    assert_eq!(attempt("198.51.100.1").await, StatusCode::TOO_MANY_REQUESTS);
    // A client prepending its own entry is still keyed by the address the proxy saw.
    assert_eq!(
        attempt("203.0.113.50, 198.51.100.2").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn points_charges_orders_and_coupon_issues_are_limited_per_user() {
    let app = limited(&[
        ("RATE_LIMIT_POINTS_CHARGE", "2/min"),
        ("RATE_LIMIT_ORDERS", "1/min"),
        ("RATE_LIMIT_COUPON_ISSUE", "1/min"),
    ])
    .await;
    let (alice, alice_token) = app.user_with_points("alice", 1000).await;
    let (bob, bob_token) = app.user_with_points("bob", 0).await;
    // The allowance is spent before the request is read: a top-up without a card (refused)
    // counts like any other.
    let charge = json!({"amount": 1000});
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (status, _) = app
            .post("/api/v1/points/charge", Some(&alice_token), charge.clone())
            .await;
        statuses.push(status);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::BAD_REQUEST,
            StatusCode::BAD_REQUEST,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let (status, _) = app
        .post("/api/v1/points/charge", Some(&bob_token), charge)
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "another user has their own allowance"
    );
    assert_eq!(app.balance(alice).await, 1000);

    let product = app.product(app.brand().await, 100, 10).await;
    let order =
        json!({"items": [{"product_id": product, "quantity": 1}], "payment": {"method": "POINT"}});
    let (first, _) = app
        .post("/api/v1/orders", Some(&alice_token), order.clone())
        .await;
    let (second, body) = app.post("/api/v1/orders", Some(&alice_token), order).await;
    assert_eq!(
        (first, second),
        (StatusCode::CREATED, StatusCode::TOO_MANY_REQUESTS)
    );
    assert_eq!(body["code"], "RATE_LIMITED");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM orders WHERE user_id = {alice}"
        ))
        .await,
        1
    );
    assert_eq!(app.stock(product).await, 9);

    let mut coupons = Vec::new();
    for _ in 0..2 {
        let (status, coupon) = app
            .post(
                "/api/v1/admin/coupons",
                Some(&app.admin),
                json!({"name": "c", "discount_type": "FIXED", "discount_value": 100, "total_quantity": 10}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{coupon}");
        coupons.push(coupon["id"].as_i64().unwrap());
    }
    let (first, _) = app
        .post(
            &format!("/api/v1/coupons/{}/issue", coupons[0]),
            Some(&bob_token),
            json!({}),
        )
        .await;
    let (second, _) = app
        .post(
            &format!("/api/v1/coupons/{}/issue", coupons[1]),
            Some(&bob_token),
            json!({}),
        )
        .await;
    assert_eq!(
        (first, second),
        (StatusCode::CREATED, StatusCode::TOO_MANY_REQUESTS)
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM user_coupons WHERE user_id = {bob}"
        ))
        .await,
        1
    );
}

#[tokio::test]
async fn payment_callbacks_are_limited_per_address() {
    let app = limited(&[("RATE_LIMIT_PAYMENT_CALLBACK", "1/min")]).await;
    let callback = json!({"transaction_key": "tx-unknown", "order_id": "1", "status": "SUCCESS"});
    let (first, _, _) = post_with(
        &app,
        &app.base,
        "/api/v1/payments/callback",
        &[],
        callback.clone(),
    )
    .await;
    let (second, retry_after, body) =
        post_with(&app, &app.base, "/api/v1/payments/callback", &[], callback).await;
    assert_ne!(first, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(retry_after.is_some());
}

/// The failures recorded for `login_id`.
async fn failures(app: &TestApp, login_id: &str) -> i64 {
    app.count(&format!(
        "SELECT coalesce(sum(failures), 0)::bigint AS n FROM login_failures WHERE login_id = '{login_id}'"
    ))
    .await
}

#[tokio::test]
async fn failed_logins_back_off_across_instances_and_unknown_ids_back_off_alike() {
    let app = limited(&[]).await;
    let other = app
        .another_instance(&[("RATE_LIMITS_ENABLED", "true")])
        .await;
    let (status, _, _) =
        post_with(&app, &app.base, "/api/v1/users", &[], sign_up_body("carol")).await;
    assert_eq!(status, StatusCode::CREATED);

    for login in ["carol", "nobody-here"] {
        // Four wrong passwords on one instance, the fifth on the other: all plain 401s.
        for i in 0..5 {
            let base = if i < 4 { &app.base } else { &other.base };
            let (status, retry_after, _) = post_with(
                &app,
                base,
                "/api/v1/auth/token",
                &[],
                token_body(login, "wrong password"),
            )
            .await;
            assert_eq!(
                (status, retry_after),
                (StatusCode::UNAUTHORIZED, None),
                "{login} #{i}"
            );
        }
        assert_eq!(failures(&app, login).await, 5, "{login}");
        // The fifth failure blocked the login id for 1 s, on every instance, even for the right
        // password, and without checking it.
        let work = app.state.auth.password_work_done();
        let (status, retry_after, body) = post_with(
            &app,
            &app.base,
            "/api/v1/auth/token",
            &[],
            token_body(login, "correct horse"),
        )
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{login}: {body}");
        assert_eq!(body["code"], "LOGIN_THROTTLED");
        assert_eq!(retry_after, Some(1), "{login}");
        assert_eq!(
            app.state.auth.password_work_done(),
            work,
            "no hash while blocked"
        );
        assert_eq!(
            failures(&app, login).await,
            5,
            "a refused attempt is not a failure"
        );
    }

    // Once the block ends, the right password works and clears the count.
    let token =
        commerce_testkit::eventually("carol's block ends", Duration::from_secs(5), async || {
            let (status, _, body) = post_with(
                &app,
                &other.base,
                "/api/v1/auth/token",
                &[],
                token_body("carol", "correct horse"),
            )
            .await;
            match status {
                StatusCode::OK => Ok(body),
                StatusCode::TOO_MANY_REQUESTS => Err(body),
                other => panic!("unexpected {other}: {body}"),
            }
        })
        .await;
    assert!(token["access_token"].is_string());
    assert_eq!(failures(&app, "carol").await, 0);
    assert_eq!(failures(&app, "nobody-here").await, 5);
}

/// Failures recorded for `addr` whatever the login id.
async fn address_failures(app: &TestApp, addr: &str) -> i64 {
    app.count(&format!(
        "SELECT coalesce(sum(failures), 0)::bigint AS n FROM login_failures
          WHERE login_id = '' AND client_addr = '{addr}'"
    ))
    .await
}

#[tokio::test]
async fn a_stranger_flooding_wrong_passwords_never_blocks_the_owner_from_another_address() {
    // Addresses come from X-Forwarded-For, as behind the load balancer; the per-address rate
    // limit is off so only the failed-login backoff answers.
    let app = limited(&[
        ("TRUSTED_PROXIES", "127.0.0.1"),
        ("RATE_LIMIT_TOKEN", "off"),
    ])
    .await;
    let stranger = [("x-forwarded-for", "203.0.113.66")];
    let owner = [("x-forwarded-for", "198.51.100.7")];
    let (status, _, _) = post_with(
        &app,
        &app.base,
        "/api/v1/users",
        &[],
        sign_up_body("victim"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    let mut answers = Vec::new();
    for login in ["victim", "admin"] {
        for _ in 0..15 {
            let (status, _, body) = post_with(
                &app,
                &app.base,
                "/api/v1/auth/token",
                &stranger,
                token_body(login, "guessing wrong"),
            )
            .await;
            answers.push((login, status, body["code"].as_str().map(str::to_owned)));
        }
    }
    // Each login id's 5th failure from the stranger's address blocks that pair; the rest are
    // refused unchecked.
    let refused = answers
        .iter()
        .filter(|(_, s, c)| {
            *s == StatusCode::TOO_MANY_REQUESTS && c.as_deref() == Some("LOGIN_THROTTLED")
        })
        .count();
    let failed = answers
        .iter()
        .filter(|(_, s, _)| *s == StatusCode::UNAUTHORIZED)
        .count();
    assert_eq!(failed + refused, 30, "{answers:?}");
    assert!(failed >= 10 && refused >= 1, "{answers:?}");

    // The owners sign in from their own addresses at once, the admin included.
    let (status, _, body) = post_with(
        &app,
        &app.base,
        "/api/v1/auth/token",
        &owner,
        token_body("victim", "correct horse"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = post_with(
        &app,
        &app.base,
        "/api/v1/auth/token",
        &owner,
        token_body("admin", commerce_api::config::DEV_ADMIN_PASSWORD),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The stranger's address stays blocked for the victim, even with the right password.
    let (status, retry_after, body) = post_with(
        &app,
        &app.base,
        "/api/v1/auth/token",
        &stranger,
        token_body("victim", "correct horse"),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::TOO_MANY_REQUESTS, Some("LOGIN_THROTTLED"))
    );
    assert!(retry_after.is_some());
    assert_eq!(
        app.count(
            "SELECT count(*) AS n FROM login_failures
              WHERE client_addr = '198.51.100.7'"
        )
        .await,
        0,
        "the owners' address has no failures"
    );
}

#[tokio::test]
async fn one_address_cannot_try_many_login_ids_and_malformed_ids_touch_nothing() {
    let app = limited(&[
        ("TRUSTED_PROXIES", "127.0.0.1"),
        ("RATE_LIMIT_TOKEN", "off"),
    ])
    .await;
    let sprayer = [("x-forwarded-for", "203.0.113.99")];
    // Four tries each for many login ids: no pair blocks, but the address does at its 20th.
    let mut statuses = Vec::new();
    for n in 0..6 {
        for _ in 0..4 {
            let (status, _, _) = post_with(
                &app,
                &app.base,
                "/api/v1/auth/token",
                &sprayer,
                token_body(&format!("user-{n}"), "password1"),
            )
            .await;
            statuses.push(status);
        }
    }
    let unauthorized = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    assert_eq!(unauthorized, 20, "{statuses:?}");
    assert!(
        statuses[20..]
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert_eq!(address_failures(&app, "203.0.113.99").await, 20);

    // A malformed login id is refused before anything is counted or looked up.
    let before = app.count("SELECT count(*) AS n FROM login_failures").await;
    let work = app.state.auth.password_work_done();
    for bad in [
        "ab",
        "has space",
        "x".repeat(33).as_str(),
        "semi;colon",
        "ünïcode",
    ] {
        let (status, _, body) = post_with(
            &app,
            &app.base,
            "/api/v1/auth/token",
            &[("x-forwarded-for", "192.0.2.1")],
            token_body(bad, "whatever-password"),
        )
        .await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("VALIDATION_FAILED")),
            "{bad}: {body}"
        );
    }
    assert_eq!(
        app.count("SELECT count(*) AS n FROM login_failures").await,
        before
    );
    assert_eq!(app.state.auth.password_work_done(), work, "no hashing");
}

#[tokio::test]
async fn an_unknown_login_id_costs_the_same_hashing_as_a_wrong_password() {
    let app = limited(&[]).await;
    post_with(&app, &app.base, "/api/v1/users", &[], sign_up_body("dave")).await;
    for login in ["dave", "not-dave"] {
        let before = app.state.auth.password_work_done();
        let (status, _, _) = post_with(
            &app,
            &app.base,
            "/api/v1/auth/token",
            &[],
            token_body(login, "wrong password"),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            app.state.auth.password_work_done() - before,
            1,
            "{login}: one argon2 run"
        );
    }
}

#[tokio::test]
async fn a_login_flood_beyond_the_hashing_queue_is_refused_not_queued() {
    // One hashing thread, one waiting slot: of 40 simultaneous logins, the ones that find the
    // queue full are refused at once with 503 and cost no hashing.
    let app = limited(&[
        ("AUTH_HASH_THREADS", "1"),
        ("AUTH_HASH_QUEUE", "1"),
        ("RATE_LIMIT_TOKEN", "off"),
    ])
    .await;
    let before = app.state.auth.password_work_done();
    let attempts = (0..40).map(|i| {
        let app = &app;
        async move {
            post_with(
                app,
                &app.base,
                "/api/v1/auth/token",
                &[],
                token_body(&format!("flood-{i}"), "wrong password"),
            )
            .await
        }
    });
    let results = futures::future::join_all(attempts).await;
    let unauthorized = results
        .iter()
        .filter(|(s, ..)| *s == StatusCode::UNAUTHORIZED)
        .count();
    let busy: Vec<_> = results
        .iter()
        .filter(|(s, ..)| *s == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(unauthorized + busy.len(), 40, "{results:?}");
    assert!(!busy.is_empty(), "nothing was refused: {results:?}");
    for (_, retry_after, body) in &busy {
        assert_eq!(
            (body["code"].as_str(), *retry_after),
            (Some("AUTH_BUSY"), Some(1))
        );
    }
    assert_eq!(
        app.state.auth.password_work_done() - before,
        unauthorized as u64,
        "only the admitted logins were hashed"
    );
    assert_eq!(
        app.count("SELECT count(*) AS n FROM login_failures WHERE login_id LIKE 'flood-%'")
            .await,
        unauthorized as i64
    );
}

#[tokio::test]
async fn likes_are_limited_per_user() {
    let app = limited(&[("RATE_LIMIT_LIKES", "3/min")]).await;
    let (_, alice) = app.user_with_points("alice", 0).await;
    let (_, bob) = app.user_with_points("bob", 0).await;
    let product = app.product(app.brand().await, 100, 10).await;
    let path = format!("/api/v1/products/{product}/likes");
    let mut statuses = Vec::new();
    for i in 0..4 {
        let method = if i % 2 == 0 {
            reqwest::Method::POST
        } else {
            reqwest::Method::DELETE
        };
        let (status, _) = app.call(method, &path, Some(&alice), None).await;
        statuses.push(status);
    }
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    let (status, _) = app.post(&path, Some(&bob), json!({})).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "another user has their own allowance"
    );
    assert_eq!(
        app.count(&format!(
            "SELECT like_count AS n FROM products WHERE id = {product}"
        ))
        .await,
        2,
        "alice's like (the refused unlike changed nothing) and bob's"
    );
}
