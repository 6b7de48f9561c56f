//! Sign-up, tokens, auth rules and points.

use crate::support::spawn_app;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn sign_up_log_in_and_read_me() {
    let app = spawn_app().await;
    let (status, user) = app
        .post(
            "/api/v1/users",
            None,
            json!({"login_id": "alice", "password": "correct horse", "name": "Alice", "email": "alice@example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    assert_eq!(user["login_id"], "alice");
    assert!(user.get("password").is_none() && user.get("password_hash").is_none());

    let (status, body) = app
        .post("/api/v1/users", None, json!({"login_id": "alice", "password": "another one", "name": "A", "email": "a@example.com"}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("LOGIN_ID_TAKEN"))
    );

    let (status, token) = app
        .post(
            "/api/v1/auth/token",
            None,
            json!({"login_id": "alice", "password": "correct horse"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(token["token_type"], "Bearer");
    assert!(token["expires_in"].as_i64().unwrap() > 0);
    let token = token["access_token"].as_str().unwrap();

    let (status, me) = app.get("/api/v1/users/me", Some(token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["id"], user["id"]);
    assert_eq!(me["email"], "alice@example.com");

    let (status, _) = app
        .post(
            "/api/v1/auth/token",
            None,
            json!({"login_id": "alice", "password": "wrong password"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app
        .post(
            "/api/v1/auth/token",
            None,
            json!({"login_id": "nobody", "password": "whatever1"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn invalid_sign_ups_are_refused_field_by_field_and_store_nothing() {
    let app = spawn_app().await;
    let (status, body) = app
        .post(
            "/api/v1/users",
            None,
            json!({"login_id": "a", "password": "short", "name": "", "email": "not-an-email"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["login_id", "password", "name", "email"]);
    // Mass assignment: a body may not set the role or the balance.
    let (status, body) = app
        .post(
            "/api/v1/users",
            None,
            json!({"login_id": "mallory", "password": "long enough", "name": "M", "email": "m@example.com", "role": "ADMIN"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app
        .client
        .post(format!("{}/api/v1/users", app.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .map(|r| (r.status(), r))
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body.json::<serde_json::Value>().await.unwrap()["code"],
        "MALFORMED_JSON"
    );
    let huge = "x".repeat(200_000);
    let (status, _) = app
        .post(
            "/api/v1/users",
            None,
            json!({"login_id": huge, "password": "p", "name": "n", "email": "e"}),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        app.count("SELECT count(*) AS n FROM users WHERE role = 'USER'")
            .await,
        0
    );
}

#[tokio::test]
async fn admin_routes_need_the_admin_role() {
    let app = spawn_app().await;
    let (_, user) = app.user_with_points("plain", 0).await;
    let body = json!({"name": "Brand", "description": ""});
    let (status, problem) = app
        .post("/api/v1/admin/brands", Some(&user), body.clone())
        .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("FORBIDDEN"))
    );
    let (status, _) = app.post("/api/v1/admin/brands", None, body.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = app
        .post("/api/v1/admin/brands", Some(&app.admin), body)
        .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_deleted_users_token_is_refused() {
    let app = spawn_app().await;
    // A valid signature is not enough: the user must exist (checked at most every 10 s).
    let (id, token) = app.user_with_points("ghost", 0).await;
    app.count(&format!(
        "WITH d AS (DELETE FROM users WHERE id = {id} RETURNING 1) SELECT count(*) AS n FROM d"
    ))
    .await;
    assert_eq!(
        app.get("/api/v1/users/me", Some(&token)).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn openapi_describes_every_route_and_swagger_ui_is_served() {
    let app = spawn_app().await;
    let (status, spec) = app.get("/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let paths = spec["paths"].as_object().unwrap();
    for path in [
        "/api/v1/users",
        "/api/v1/auth/token",
        "/api/v1/users/me",
        "/api/v1/points",
        "/api/v1/points/charge",
        "/api/v1/admin/users/{id}/points",
        "/api/v1/admin/brands",
        "/api/v1/brands/{id}",
        "/api/v1/admin/products",
        "/api/v1/admin/products/{id}",
        "/api/v1/products",
        "/api/v1/products/{id}",
        "/api/v1/products/{id}/likes",
        "/api/v1/users/me/likes",
        "/api/v1/admin/coupons",
        "/api/v1/coupons/{id}/issue",
        "/api/v1/users/me/coupons",
        "/api/v1/orders",
        "/api/v1/orders/{id}",
        "/api/v1/orders/{id}/cancel",
    ] {
        assert!(paths.contains_key(path), "missing {path}");
    }
    let res = app
        .client
        .get(format!("{}/swagger-ui/", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.text().await.unwrap().contains("swagger"));
}

#[tokio::test]
async fn text_a_database_cannot_store_is_refused_before_any_handler_and_changes_nothing() {
    let app = spawn_app().await;
    let nul = "a\u{0}b";
    let (status, body) = app
        .post(
            "/api/v1/auth/token",
            None,
            json!({"login_id": nul, "password": "whatever-password"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "INVALID_TEXT");
    let (status, body) = app
        .post(
            "/api/v1/users",
            None,
            json!({"login_id": "nulname", "password": "correct horse", "name": nul,
                   "email": "nul@example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "INVALID_TEXT");
    assert_eq!(
        app.count("SELECT count(*) AS n FROM users WHERE login_id = 'nulname'")
            .await,
        0
    );
    let (status, body) = app.get("/api/v1/products?sort=%00", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "INVALID_TEXT");
    // A backslash before `u0000` is ordinary text.
    let (status, body) = app
        .post(
            "/api/v1/users",
            None,
            json!({"login_id": "backslash", "password": "correct horse", "name": "a\\u0000b",
                   "email": "bs@example.com"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// Logs `login_id` in with `password` on `base`; the status.
async fn log_in(
    app: &crate::support::TestApp,
    base: &str,
    login_id: &str,
    password: &str,
) -> StatusCode {
    app.client
        .post(format!("{base}/api/v1/auth/token"))
        .json(&json!({"login_id": login_id, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn a_rotated_admin_password_is_applied_when_an_instance_starts() {
    let app = spawn_app().await;
    let dev = commerce_api::config::DEV_ADMIN_PASSWORD;
    assert_eq!(log_in(&app, &app.base, "admin", dev).await, StatusCode::OK);
    // The operator rotates COMMERCE_ADMIN_PASSWORD and restarts: the new instance applies it.
    let rotated = app
        .another_instance(&[("COMMERCE_ADMIN_PASSWORD", "a-rotated-admin-password")])
        .await;
    let status = commerce_testkit::eventually(
        "the rotated password is applied",
        std::time::Duration::from_secs(10),
        async || match log_in(&app, &rotated.base, "admin", "a-rotated-admin-password").await {
            StatusCode::OK => Ok(StatusCode::OK),
            other => Err(other),
        },
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        log_in(&app, &app.base, "admin", dev).await,
        StatusCode::UNAUTHORIZED,
        "the old password is gone on every instance"
    );
    assert_eq!(
        app.count("SELECT count(*) AS n FROM users WHERE role = 'ADMIN'")
            .await,
        1
    );
}

#[tokio::test]
async fn production_refuses_to_start_while_an_admin_accepts_the_development_password() {
    // A database first started in development: `admin` has the development password.
    let app = spawn_app().await;
    let api = env!("CARGO_BIN_EXE_commerce-api");
    let production = |admin_login: &str| {
        let mut command = tokio::process::Command::new(api);
        command
            .env_clear()
            .arg("serve")
            .env("APP_PROFILE", "prod")
            .env("HTTP_ADDR", "127.0.0.1:0")
            .env("DATABASE_URL", &app.db.url)
            .env("REDIS_URL", commerce_testkit::redis_url())
            .env("REDIS_KEY_PREFIX", &app.state.config.redis_key_prefix)
            .env("KAFKA_BROKERS", &app.state.config.kafka.brokers)
            .env("OUTBOX_RELAY_ENABLED", "false")
            .env(
                "COMMERCE_JWT_SECRET",
                "a-production-jwt-secret-0123456789abcdef",
            )
            .env("COMMERCE_ADMIN_LOGIN_ID", admin_login)
            .env("COMMERCE_ADMIN_PASSWORD", "a-production-admin-password")
            .env(
                "PAYMENT_CARD_KEY",
                "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
            )
            .env("PG_API_KEY", "a-production-merchant-key")
            .env("ALERTS_FROM", "Shop <alerts@shop.example.com>")
            .env(
                "PG_CALLBACK_SECRETS",
                "a-production-callback-secret-0123456789",
            )
            // The test servers speak plain text.
            .env("DATABASE_ALLOW_PLAINTEXT", "true")
            .env("REDIS_ALLOW_PLAINTEXT", "true")
            .env("KAFKA_ALLOW_PLAINTEXT", "true")
            .kill_on_drop(true);
        command
    };
    // Another admin login configured: the old `admin` still has the development password.
    let refused = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        production("ops-admin").output(),
    )
    .await
    .expect("refused at once")
    .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("`admin` accepts the development password"),
        "{stderr}"
    );
    assert_eq!(
        app.count("SELECT count(*) AS n FROM users WHERE login_id = 'ops-admin'")
            .await,
        1,
        "the configured admin was created all the same"
    );

    // An instance that could not check at start (the database was down) checks in the
    // background, and stays unready, naming why.
    let unready = app
        .another_instance(&[
            ("APP_PROFILE", "prod"),
            (
                "COMMERCE_JWT_SECRET",
                "a-production-jwt-secret-0123456789abcdef",
            ),
            ("COMMERCE_ADMIN_LOGIN_ID", "ops-admin"),
            ("COMMERCE_ADMIN_PASSWORD", "a-production-admin-password"),
            (
                "PAYMENT_CARD_KEY",
                "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
            ),
            ("PG_API_KEY", "a-production-merchant-key"),
            ("ALERTS_FROM", "Shop <alerts@shop.example.com>"),
            (
                "PG_CALLBACK_SECRETS",
                "a-production-callback-secret-0123456789",
            ),
            ("DATABASE_ALLOW_PLAINTEXT", "true"),
            ("REDIS_ALLOW_PLAINTEXT", "true"),
            ("KAFKA_ALLOW_PLAINTEXT", "true"),
        ])
        .await;
    let ready: serde_json::Value = commerce_testkit::eventually(
        "the instance reports the development password",
        std::time::Duration::from_secs(20),
        async || {
            let res = reqwest::get(format!("{}/health/ready", unready.base))
                .await
                .unwrap();
            let status = res.status();
            let body: serde_json::Value = res.json().await.unwrap();
            let admin_down = body["checks"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["name"] == "admin_credentials" && c["status"] == "DOWN");
            if status == StatusCode::SERVICE_UNAVAILABLE && admin_down {
                Ok(body)
            } else {
                Err(body)
            }
        },
    )
    .await;
    assert_eq!(ready["status"], "DOWN", "{ready}");

    // The configured admin is `admin` itself: its password is applied, and production starts.
    let mut started = production("admin")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    commerce_testkit::until(
        "production applied its admin password",
        std::time::Duration::from_secs(30),
        async || {
            log_in(&app, &app.base, "admin", "a-production-admin-password").await == StatusCode::OK
        },
    )
    .await;
    assert!(started.try_wait().unwrap().is_none(), "still running");
    assert_eq!(
        log_in(
            &app,
            &app.base,
            "admin",
            commerce_api::config::DEV_ADMIN_PASSWORD
        )
        .await,
        StatusCode::UNAUTHORIZED
    );
    started.kill().await.unwrap();
}

#[tokio::test]
async fn a_jwt_key_rotation_logs_nobody_out_and_old_keys_stop_at_the_end() {
    const OLD: &str = "old-jwt-key-0123456789abcdef0123456789";
    const NEW: &str = "new-jwt-key-0123456789abcdef0123456789";
    let app = crate::support::spawn_app_with(&[("COMMERCE_JWT_SECRET", OLD)]).await;
    let (_, before) = app.user_with_points("rotating", 0).await;
    let kid = |token: &str| jsonwebtoken::decode_header(token).unwrap().kid;
    assert_eq!(
        kid(&before),
        Some(commerce_api::infra::auth::key_id(OLD.as_bytes())),
        "tokens name their key"
    );

    // Mid-rotation: an instance signs with the new key and still accepts the old one.
    let rotated = app
        .another_instance(&[
            ("COMMERCE_JWT_SECRET", NEW),
            ("COMMERCE_JWT_PREVIOUS_SECRETS", OLD),
        ])
        .await;
    let me = |base: &str, token: &str| {
        let (client, url, token) = (
            app.client.clone(),
            format!("{base}/api/v1/users/me"),
            token.to_owned(),
        );
        async move {
            client
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(
        me(&rotated.base, &before).await,
        200,
        "an old token still works"
    );
    let res = app
        .client
        .post(format!("{}/api/v1/auth/token", rotated.base))
        .json(&serde_json::json!({"login_id": "admin", "password": commerce_api::config::DEV_ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    let after = body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        kid(&after),
        Some(commerce_api::infra::auth::key_id(NEW.as_bytes()))
    );
    assert_eq!(me(&rotated.base, &after).await, 200);
    assert_eq!(
        me(&app.base, &after).await,
        401,
        "an instance that does not know the new key refuses its tokens"
    );

    // The rotation ends: the old key is dropped, and with it the tokens it signed.
    let done = app.another_instance(&[("COMMERCE_JWT_SECRET", NEW)]).await;
    assert_eq!(me(&done.base, &after).await, 200);
    assert_eq!(me(&done.base, &before).await, 401);
}
