//! Points are bought through the gateway or granted by an administrator; nothing else credits
//! them.

use std::time::Duration;

use pg_simulator::behaviour::Behaviour;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::payments::{CARD_NO, Gateway, api, assert_money_balances, reaches};
use crate::support::{TestApp, spawn_app};

fn top_up(amount: i64) -> Value {
    json!({"amount": amount, "card_type": "KB", "card_no": CARD_NO})
}

/// Posts a top-up with an idempotency key; returns the status and body.
async fn post_top_up(app: &TestApp, token: &str, key: &str, body: &Value) -> (StatusCode, Value) {
    let res = app
        .client
        .post(format!("{}/api/v1/points/charge", app.base))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap())
}

/// The user's ledger as `(kind, amount, order_id)`, oldest first.
async fn ledger(app: &TestApp, user: i64) -> Vec<(String, i64, Option<i64>)> {
    use commerce_api::infra::schema::point_ledger;
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    point_ledger::table
        .filter(point_ledger::user_id.eq(user))
        .order(point_ledger::id)
        .select((
            point_ledger::kind,
            point_ledger::amount,
            point_ledger::order_id,
        ))
        .load(&mut app.conn().await)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_charge_without_a_card_is_refused_and_changes_nothing() {
    let gw = Gateway::start(Behaviour::reliable()).await;
    let app = api(&gw, &[]).await;
    let (user, token) = app.user_with_points("saver", 0).await;
    for bad in [
        json!({"amount": 5000}),
        json!({"amount": 0, "card_type": "KB", "card_no": CARD_NO}),
        json!({"amount": 10_000_001, "card_type": "KB", "card_no": CARD_NO}),
        json!({"amount": 5000, "card_type": "VISA", "card_no": CARD_NO}),
        json!({"amount": 5000, "card_type": "KB", "card_no": "1234"}),
        json!({"amount": 1.5, "card_type": "KB", "card_no": CARD_NO}),
    ] {
        let (status, body) = app
            .post("/api/v1/points/charge", Some(&token), bad.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, body) = app
        .post(
            "/api/v1/points/charge",
            Some(&token),
            json!({"amount": 5000}),
        )
        .await;
    assert_eq!(body["code"], "VALIDATION_FAILED", "{status} {body}");
    assert_eq!(app.balance(user).await, 0);
    assert!(ledger(&app, user).await.is_empty());
    assert_eq!(app.count("SELECT count(*) AS n FROM orders").await, 0);
    assert_eq!(gw.count("SELECT count(*) AS n FROM payments").await, 0);
}

#[tokio::test]
async fn a_top_up_is_charged_once_credited_once_and_refunded_once() {
    let gw = Gateway::start(Behaviour::reliable()).await;
    let app = api(&gw, &[]).await;
    let (user, token) = app.user_with_points("buyer", 0).await;

    // Ten racing retries of one request: one order, one gateway payment.
    let body = top_up(5000);
    let answers =
        futures::future::join_all((0..10).map(|_| post_top_up(&app, &token, "top-up-1", &body)))
            .await;
    let id = answers[0].1["order_id"].as_i64().expect("an order id");
    for (status, answer) in &answers {
        assert_eq!(*status, StatusCode::CREATED, "{answer}");
        assert_eq!(
            (answer["order_id"].as_i64(), answer["kind"].as_str()),
            (Some(id), Some("POINT_TOP_UP")),
            "{answer}"
        );
        let text = answer.to_string();
        assert!(
            !text.contains("5678-9012") && !text.contains("56789012"),
            "{answer}"
        );
    }
    let paid = reaches(&app, &token, id, "PAID", Duration::from_secs(10)).await;
    assert_eq!(paid["final_amount"], 5000);
    assert_eq!(paid["items"], json!([]));
    assert_eq!(gw.payments_for(id).await, 1);
    assert_eq!(app.balance(user).await, 5000);
    assert_eq!(
        ledger(&app, user).await,
        [("TOP_UP".to_owned(), 5000, Some(id))]
    );
    let (status, body) = post_top_up(&app, &token, "top-up-1", &top_up(6000)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("IDEMPOTENCY_KEY_REUSED")
        )
    );
    // No sale for the collector: only the payment's event.
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM outbox
              WHERE (envelope->'payload'->>'order_id')::bigint = {id}
                AND event_type <> 'PaymentCompleted'"
        ))
        .await,
        0
    );
    assert_eq!(app.outbox_types().await, ["PaymentCompleted"]);

    // Cancelling it takes the points back and refunds the card, once.
    let path = format!("/api/v1/orders/{id}/cancel");
    let (status, body) = app.post(&path, Some(&token), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(app.balance(user).await, 0);
    reaches(&app, &token, id, "REFUNDED", Duration::from_secs(10)).await;
    let (status, _) = app.post(&path, Some(&token), json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ledger(&app, user).await,
        [
            ("TOP_UP".to_owned(), 5000, Some(id)),
            ("TOP_UP_REVERSED".to_owned(), -5000, Some(id)),
        ]
    );
    assert_eq!(app.balance(user).await, 0);
    assert_eq!(gw.count("SELECT count(*) AS n FROM refunds").await, 1);
    assert_eq!(
        app.outbox_types().await,
        ["PaymentCompleted", "PaymentRefunded"]
    );
    assert_money_balances(&app, &gw).await;
}

#[tokio::test]
async fn a_top_up_whose_points_are_spent_is_not_cancelled() {
    let gw = Gateway::start(Behaviour::reliable()).await;
    let app = api(&gw, &[]).await;
    let (user, token) = app.user_with_points("spender", 0).await;
    let product = app.product(app.brand().await, 600, 5).await;
    let (status, body) = post_top_up(&app, &token, "t-1", &top_up(1000)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["order_id"].as_i64().unwrap();
    reaches(&app, &token, id, "PAID", Duration::from_secs(10)).await;
    let (status, order) = app
        .post(
            "/api/v1/orders",
            Some(&token),
            json!({"items": [{"product_id": product, "quantity": 1}], "payment": {"method": "POINT"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{order}");

    let (status, body) = app
        .post(
            &format!("/api/v1/orders/{id}/cancel"),
            Some(&token),
            json!({}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("POINTS_ALREADY_SPENT")),
        "{body}"
    );
    let (_, now) = app.get(&format!("/api/v1/orders/{id}"), Some(&token)).await;
    assert_eq!(now["status"], "PAID");
    assert_eq!(app.balance(user).await, 400);
    assert_eq!(app.count("SELECT count(*) AS n FROM refunds").await, 0);
    assert_money_balances(&app, &gw).await;
}

#[tokio::test]
async fn a_declined_top_up_credits_nothing() {
    let gw = Gateway::start(Behaviour {
        success_rate: 0.0,
        limit_exceeded_rate: 1.0,
        ..Behaviour::reliable()
    })
    .await;
    let app = api(&gw, &[]).await;
    let (user, token) = app.user_with_points("declined", 0).await;
    let (status, body) = post_top_up(&app, &token, "t-1", &top_up(1000)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["order_id"].as_i64().unwrap();
    let failed = reaches(&app, &token, id, "PAYMENT_FAILED", Duration::from_secs(10)).await;
    assert_eq!(failed["payment"]["status"], "FAILED");
    assert_eq!(app.balance(user).await, 0);
    assert!(ledger(&app, user).await.is_empty());
    assert_eq!(app.outbox_types().await, ["PaymentFailed"]);
}

#[tokio::test]
async fn only_an_administrator_grants_points_with_a_reason_once_per_key() {
    let app = spawn_app().await;
    let (user, token) = app.user_with_points("lucky", 0).await;
    let path = format!("/api/v1/admin/users/{user}/points");
    let grant = json!({"amount": 3000, "reason": "goodwill for a late delivery"});

    let (status, _) = app.post(&path, Some(&token), grant.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = app
        .post(&path, Some(&app.admin), json!({"amount": 0, "reason": " "}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["amount", "reason"]);
    let (status, _) = app
        .post(&path, Some(&app.admin), json!({"amount": 3000}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = app
        .post(
            "/api/v1/admin/users/999999/points",
            Some(&app.admin),
            grant.clone(),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("USER_NOT_FOUND"))
    );
    assert_eq!(app.balance(user).await, 0);

    let send = |body: Value| {
        let (client, url, admin) = (
            app.client.clone(),
            format!("{}{path}", app.base),
            app.admin.clone(),
        );
        async move {
            let res = client
                .post(url)
                .bearer_auth(admin)
                .header("Idempotency-Key", "grant-1")
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = res.status();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    let answers = futures::future::join_all((0..10).map(|_| send(grant.clone()))).await;
    for (status, body) in &answers {
        assert_eq!(
            (*status, &body["balance"]),
            (StatusCode::OK, &json!(3000)),
            "{body}"
        );
    }
    let (status, body) = send(json!({"amount": 3000, "reason": "another reason"})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("IDEMPOTENCY_KEY_REUSED")
        )
    );
    assert_eq!(app.balance(user).await, 3000);
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) AS n FROM point_ledger l JOIN users a ON a.id = l.granted_by
              WHERE l.user_id = {user} AND l.kind = 'GRANT' AND l.amount = 3000
                AND l.note = 'goodwill for a late delivery' AND a.login_id = 'admin'"
        ))
        .await,
        1
    );
    assert_eq!(ledger(&app, user).await.len(), 1);
    let (_, history) = app.get("/api/v1/points/history", Some(&token)).await;
    assert_eq!(history["content"][0]["reason"], "GRANT");
    assert_eq!(
        history["content"][0]["note"],
        "goodwill for a late delivery"
    );
}
