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
