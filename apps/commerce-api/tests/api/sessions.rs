//! Sessions that can end: refresh rotation, reuse detection, logout (one, all, by an admin),
//! each refused on every instance within a second, with Redis and without it.

use std::time::Duration;

use commerce_testkit::until;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{TestApp, spawn_app};

/// Signs `login` up once.
async fn sign_up(app: &TestApp, login: &str) {
    let (status, body) = app
        .post(
            "/api/v1/users",
            None,
            json!({"login_id": login, "password": format!("{login}-password"), "name": "S", "email": format!("{login}@example.com")}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// A login: a new session's tokens.
async fn login(app: &TestApp, login: &str) -> Value {
    let (status, body) = app
        .post(
            "/api/v1/auth/token",
            None,
            json!({"login_id": login, "password": format!("{login}-password")}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn refresh(app: &TestApp, token: &Value) -> (StatusCode, Value) {
    app.post(
        "/api/v1/auth/refresh",
        None,
        json!({"refresh_token": token["refresh_token"]}),
    )
    .await
}

/// `GET /api/v1/users/me` on the instance at `base` with `tokens`' access token.
async fn me(app: &TestApp, base: &str, tokens: &Value) -> StatusCode {
    app.client
        .get(format!("{base}/api/v1/users/me"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .status()
}

/// Waits (at most a second: the guarantee) until `tokens` are refused on the instance at `base`.
async fn refused_within_a_second(app: &TestApp, base: &str, tokens: &Value, what: &str) {
    until(what, Duration::from_secs(1), async || {
        me(app, base, tokens).await == StatusCode::UNAUTHORIZED
    })
    .await;
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_refresh_token_ends_its_session_on_every_instance() {
    let app = spawn_app().await;
    let other = app.another_instance(&[]).await;
    sign_up(&app, "rotating").await;
    let first = login(&app, "rotating").await;
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["expires_in"], 900);
    assert!(first["refresh_expires_in"].as_i64().unwrap() > 29 * 86_400);
    assert_eq!(me(&app, &other.base, &first).await, StatusCode::OK);

    // Rotation: a new pair, same session; the new access token works everywhere.
    let (status, second) = refresh(&app, &first).await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_eq!(second["session_id"], first["session_id"]);
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_eq!(me(&app, &other.base, &second).await, StatusCode::OK);
    let session = first["session_id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM refresh_tokens WHERE session_id = '{session}' AND used_at IS NOT NULL"
        ))
        .await,
        1
    );

    // The first refresh token again: somebody copied it. The whole session ends.
    let (status, body) = refresh(&app, &first).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("REFRESH_TOKEN_REUSED")),
        "{body}"
    );
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM auth_sessions WHERE id = '{session}' AND revoked_reason = 'REUSE'"
        ))
        .await,
        1
    );
    let (status, body) = refresh(&app, &second).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("UNAUTHENTICATED")),
        "the family's newest refresh token is refused too: {body}"
    );
    refused_within_a_second(
        &app,
        &other.base,
        &second,
        "the other instance refuses the session",
    )
    .await;
    assert_eq!(me(&app, &app.base, &first).await, StatusCode::UNAUTHORIZED);

    // Signing in again starts a new session.
    let again = login(&app, "rotating").await;
    assert_ne!(again["session_id"], first["session_id"]);
    assert_eq!(me(&app, &other.base, &again).await, StatusCode::OK);
}

#[tokio::test]
async fn logout_one_all_or_by_an_admin_is_refused_on_another_instance_within_a_second() {
    let app = spawn_app().await;
    let other = app.another_instance(&[]).await;
    // An instance whose Redis is gone learns of ended sessions from PostgreSQL.
    let blind = app
        .another_instance(&[("REDIS_URL", "redis://127.0.0.1:1")])
        .await;
    sign_up(&app, "leaving").await;
    let phone = login(&app, "leaving").await;
    let laptop = login(&app, "leaving").await;
    for base in [&other.base, &blind.base] {
        assert_eq!(me(&app, base, &phone).await, StatusCode::OK);
    }

    // Logout on this instance: the phone's session only.
    let (status, body) = app
        .call(
            reqwest::Method::POST,
            "/api/v1/auth/logout",
            phone["access_token"].as_str(),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    refused_within_a_second(
        &app,
        &other.base,
        &phone,
        "the other instance refuses the phone",
    )
    .await;
    refused_within_a_second(
        &app,
        &blind.base,
        &phone,
        "the instance without Redis refuses the phone",
    )
    .await;
    assert_eq!(me(&app, &other.base, &laptop).await, StatusCode::OK);
    let (status, _) = refresh(&app, &phone).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, list) = app
        .get("/api/v1/users/me/sessions", laptop["access_token"].as_str())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["content"].as_array().unwrap().len(), 1);
    assert_eq!(list["content"][0]["id"], laptop["session_id"]);

    // Logout everywhere.
    let tablet = login(&app, "leaving").await;
    let (status, body) = app
        .post(
            "/api/v1/auth/logout-all",
            laptop["access_token"].as_str(),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, body["ended"].as_i64()),
        (StatusCode::OK, Some(2)),
        "{body}"
    );
    refused_within_a_second(&app, &other.base, &laptop, "the laptop is refused").await;
    refused_within_a_second(&app, &blind.base, &tablet, "the tablet is refused").await;

    // An admin ends a user's sessions.
    let desktop = login(&app, "leaving").await;
    let user_id = {
        let (_, me) = app
            .get("/api/v1/users/me", desktop["access_token"].as_str())
            .await;
        me["id"].as_i64().unwrap()
    };
    let (status, body) = app
        .post(
            &format!("/api/v1/admin/users/{user_id}/sessions/end"),
            Some(&app.admin),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, body["ended"].as_i64()),
        (StatusCode::OK, Some(1)),
        "{body}"
    );
    refused_within_a_second(&app, &other.base, &desktop, "the admin's end is honoured").await;
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM auth_sessions WHERE user_id = {user_id} AND revoked_at IS NULL"
        ))
        .await,
        0
    );

    // What cannot be done.
    let (status, body) = app
        .post(
            "/api/v1/admin/users/999999/sessions/end",
            Some(&app.admin),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("USER_NOT_FOUND"))
    );
    let fresh = login(&app, "leaving").await;
    let (status, _) = app
        .post(
            &format!("/api/v1/admin/users/{user_id}/sessions/end"),
            fresh["access_token"].as_str(),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, sessionless) = app.user_with_points("no-session", 0).await;
    let (status, body) = app
        .post("/api/v1/auth/logout", Some(&sessionless), json!({}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("NO_SESSION"))
    );
    let (status, body) = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": "not-a-token"}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("UNAUTHENTICATED"))
    );
    let (status, _) = app
        .post("/api/v1/auth/refresh", None, json!({"token": "x"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
